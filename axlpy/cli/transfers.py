"""``axlpy cp``, ``resume``, ``cancel``, ``free``: start, finish, undo and forget
transfers.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time

import click

from .._errors import AxlError, UsageError
from .._state import TransferType
from ._app import (
    _F,
    _T,
    EXIT_CODES_HELP,
    _cmd,
    _common_options,
    _handle_errors,
    _open_journal,
    _transfer,
    cli,
    log,
)
from ._progress import _PROGRESS_HELP, _Reporter, _run_transfer
from ._render import _safe, _say, _show


def _plan_copy(srcs: list[bytes], dst: bytes) -> list[tuple[bytes, bytes]]:
    """``cp -r`` rules: into DST/basename(SRC) when DST is an existing directory, ends
    in '/', or there are several sources; otherwise SRC becomes DST."""
    into = len(srcs) > 1 or dst.endswith(b"/") or os.path.isdir(dst)
    if len(srcs) > 1 and os.path.exists(dst) and not os.path.isdir(dst):
        raise click.UsageError(f"target {_show(dst)!r} is not a directory (several "
                               "sources are copied into a directory)")
    if not into:
        return [(srcs[0], dst)]
    out = []
    for s in srcs:
        base = os.path.basename(os.path.normpath(os.path.abspath(s)))
        if not base:
            raise click.UsageError(f"cannot copy {_show(s)!r} into a directory: it has "
                                   "no name (name the destination instead)")
        out.append((s, os.path.join(dst, base)))
    return out


def _default_name() -> str:
    return f"cp-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--type", "ttype", type=click.Choice([t.value for t in TransferType]),
              default=TransferType.DEFAULT.value, show_default=True,
              help="How bytes move (see docs/backends.md).")
@click.option("--move", is_flag=True, help="Delete each source once every file is "
              "published (sources are deleted only after the whole copy is durable).")
@click.option("--metadata", "-a", "--archive", "metadata", is_flag=True,
              help="Keep what `cp -a` keeps: mode with set-id bits, mtime, owner and group "
              "(as root), xattrs (user.*, trusted.* as root) and POSIX ACLs, for files, "
              "directories and symlinks. Without it modes are masked by the umask, "
              "like `cp -r`.")
@click.option("--no-hard-links", "no_hard_links", is_flag=True,
              help="Copy each name of a hard-linked source separately (by default names "
              "of one source inode inside the copy are recreated as hard links, like "
              "`cp -a`).")
@click.option("--name", help="Transfer name (unique in the journal) [default: "
              "cp-<date>-<time>-<pid>, printed].")
@click.option("--progress", type=click.Choice(["auto", "bar", "lines", "none"]),
              default="auto", show_default=True, help=_PROGRESS_HELP)
@click.argument("paths", nargs=-1, required=True, metavar="SRC... DST")
@_common_options
@_handle_errors
def cp(ttype: str, move: bool, metadata: bool, no_hard_links: bool, name: str | None,
       progress: str, paths: tuple[str, ...]) -> None:
    """Copy files and directory trees, like `cp -r`, crash-safely.

    One SRC and a DST that is not an existing directory: SRC is copied to DST. Otherwise
    each SRC is copied to DST/basename(SRC) (DST is created if needed).

    Each file is written to a hidden temp beside its destination, fsynced, checksummed
    (CRC32C) and only then renamed into place. Ctrl-C stops cleanly and prints the
    commands to resume or cancel (exit code 3).
    """
    if len(paths) < 2:
        raise click.UsageError("give at least one SRC and a DST")
    srcs = [os.fsencode(p) for p in paths[:-1]]
    dst = os.fsencode(paths[-1])
    plan = _plan_copy(srcs, dst)
    name = name or _default_name()
    reporter = _Reporter(name, progress)
    with _open_journal(create=True) as j:
        t = j.create(name, ttype, on_progress=reporter,
                     move=True if move else None, metadata=True if metadata else None,
                     hard_links=False if no_hard_links else None)
        _say(f"axlpy: transfer {_safe(name)} ({t.type}) in journal {_safe(j.path)}",
             err=True)
        try:
            for s, d in plan:
                n = t.add(s, d)
                log.info("added %s -> %s (%d entries)", _show(s), _show(d), n)
        except BaseException:
            # Nothing was written yet: forget the transfer so it does not linger in `ls`.
            with contextlib.suppress(AxlError):
                t.free()
            raise
        _run_transfer(t, reporter, t.dispatch)


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("name")
@click.option("--force", is_flag=True, help="Take over a transfer whose owner runs on "
              "another host before its lease expires (only if you know that process is "
              "dead).")
@click.option("--no-recheck-source", "no_recheck", is_flag=True, help="Do not re-read "
              "the source bytes of extents a kept temp holds (their CRC32C is compared "
              "with the journal's by default); the source's size, mtime, ctime and inode "
              "are still checked.")
@click.option("--progress", type=click.Choice(["auto", "bar", "lines", "none"]),
              default="auto", show_default=True, help=_PROGRESS_HELP)
@_common_options
@_handle_errors
def resume(name: str, force: bool, no_recheck: bool, progress: str) -> None:
    """Finish an interrupted or failed transfer, from the journal alone.

    Takes ownership (refused while the owner is alive), verifies every staged and
    published file against its journaled size and CRC32C, keeps verified parts of temps,
    recopies what it cannot trust and completes. Ctrl-C stops cleanly (exit code 3).
    """
    with _open_journal(create=False) as j:
        st = _transfer(j, name).status()
        if st.state is _T.COMPLETED:
            _say(f"axlpy: {_safe(name)}: already COMPLETED; nothing to do", err=True)
            return
        if st.state is _T.CREATED:
            raise UsageError(f"transfer {name!r} was never dispatched: nothing was copied, "
                             f"so there is nothing to resume; `{_cmd('free', name)}` "
                             "forgets it, then copy again")
        published = sum(r.size for r in j.open(name).files([_F.PUBLISHED])
                        if r.kind == "file")
        reporter = _Reporter(name, progress, baseline=st.bytes_done, published=published)
        t = j.open(name, on_progress=reporter)
        _say(f"axlpy: resuming {_safe(name)} ({st.state.value})", err=True)
        _run_transfer(t, reporter, functools.partial(t.resume, force=force,
                                                     recheck_source=not no_recheck))


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("name")
@click.option("--force", is_flag=True, help="Take over a transfer whose owner runs on "
              "another host before its lease expires (only if you know that process is "
              "dead).")
@_common_options
@_handle_errors
def cancel(name: str, force: bool) -> None:
    """Undo a transfer: remove its temps, the files it published and the empty
    directories it created; keep sources.

    A published file is removed only if it is still byte-for-byte what this transfer
    wrote (CRC32C); prints what was removed and each file or directory kept, and why
    (the journal's events list every entry). Refused while another live process owns
    the transfer, and for a move that is already deleting its sources (resume it
    instead). Safe to repeat.
    """
    with _open_journal(create=False) as j:
        report = _transfer(j, name).cancel(force=force)
        lines = report.lines(limit=20)
        _say(f"cancelled {_safe(name)}: {_safe(lines[0])}; sources untouched. "
             f"`{_cmd('free', name)}` forgets it.")
        for line in lines[1:]:
            _say(f"  {_safe(line)}")


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("name")
@_common_options
@_handle_errors
def free(name: str) -> None:
    """Forget a COMPLETED, CANCELLED or never-dispatched transfer (journal rows only).

    Refused for a transfer that could still be resumed, so nothing resumable is lost.
    Files on disk are not touched.
    """
    with _open_journal(create=False) as j:
        _transfer(j, name).free()
        _say(f"freed {_safe(name)}")
