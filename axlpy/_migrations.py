"""Journal schema migrations: every schema change is one step here, never an edit of an
older step, so a journal written by any earlier axlpy opens in this one.

A journal's schema version is ``PRAGMA user_version``. :func:`migrate` applies, in order,
every step whose version is above it, **in one transaction** that also sets
``user_version`` to the last step's version: SQLite DDL is transactional and the version
lives in the database header, which the same commit writes, so a crash (or an error)
mid-migration leaves the journal exactly at its old version and the next open migrates
again. Under ``BEGIN IMMEDIATE`` the version is re-read, so two processes opening an old
journal at once migrate it once. A journal *newer* than :data:`SCHEMA_VERSION` is never
touched (``JournalError`` naming both versions). A fresh journal is created at version 1
and migrated in the same transaction, so a new and an upgraded journal have one schema.

Step history:

- 1: the original tables (``transfers``, ``files``, ``extents``, ``events``).
- 2: owner lease: ``transfers.owner_heartbeat_ns`` and ``transfers.owner_lease_ns``
  (:mod:`axlpy._lease`). An owned row gets its ``updated_ns`` (the owner's last commit)
  as heartbeat and the default lease, so a schema-1 transfer whose owner died on another
  host expires like any other instead of needing ``force``.
- 3: ``created_dirs`` (transfer, path, device, inode of each destination directory a run
  created; cancel removes them once empty). Journals written before this step by code
  that created the table on first use already hold it, with the same definition: the
  step keeps it and its rows (``IF NOT EXISTS``).
- 4: source identity: ``files.src_ctime_ns``, ``files.src_ino``, ``files.src_dev``
  (:mod:`axlpy._identity`), recorded at dispatch. Rows dispatched before are left NULL:
  their sources are checked by size and mtime, and on resume by re-reading the
  journaled extents.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from ._crashpoints import crash_point
from ._lease import DEFAULT_LEASE_S

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "apply_steps", "migrate"]


@dataclass(frozen=True)
class Migration:
    version: int  # the schema version this step produces
    title: str
    apply: Callable[[sqlite3.Connection], None]


def _v2_owner_lease(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE transfers ADD COLUMN owner_heartbeat_ns INTEGER")
    conn.execute("ALTER TABLE transfers ADD COLUMN owner_lease_ns INTEGER")
    conn.execute(
        "UPDATE transfers SET owner_heartbeat_ns = updated_ns, owner_lease_ns = ?"
        " WHERE owner_pid IS NOT NULL", (int(DEFAULT_LEASE_S * 1e9),),
    )


def _v3_created_dirs(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS created_dirs (transfer_id INTEGER NOT NULL REFERENCES"
        " transfers(id), path BLOB NOT NULL, dev INTEGER NOT NULL, ino INTEGER NOT NULL,"
        " PRIMARY KEY (transfer_id, path))")


def _v4_source_identity(conn: sqlite3.Connection) -> None:
    for col in ("src_ctime_ns", "src_ino", "src_dev"):
        conn.execute(f"ALTER TABLE files ADD COLUMN {col} INTEGER")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "owner lease (heartbeat time, lease length)", _v2_owner_lease),
    Migration(3, "created_dirs (directories a run created)", _v3_created_dirs),
    Migration(4, "source identity (ctime, inode, device)", _v4_source_identity),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def apply_steps(conn: sqlite3.Connection, current: int) -> list[int]:
    """Run every step above ``current`` and set ``user_version``, inside the caller's
    open transaction. Returns the versions applied."""
    done = []
    for step in MIGRATIONS:
        if step.version > current:
            step.apply(conn)
            done.append(step.version)
    if done:
        conn.execute(f"PRAGMA user_version={done[-1]}")
    return done


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Bring an older journal to :data:`SCHEMA_VERSION` in one durable transaction
    (``conn`` in autocommit mode, no transaction open). Returns the versions applied
    (empty if another process migrated it first). If this raises or the process dies,
    the journal is left at its old version, valid."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        done = apply_steps(conn, current)
        crash_point("migrate.before_commit")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if done:
        crash_point("migrate.after_commit")
    return done
