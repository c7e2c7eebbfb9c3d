"""The ordering audit (sweep d) on fixed ``strace -f`` logs: several threads commit to the
journal (the io_uring engine's sync threads journal extents while the driver thread
journals STAGED and PUBLISHED), so another thread's commit can sit between a commit and
its crash-point marker. Those interleavings are correct and must pass; a commit that was
not durable on its own thread, or a STAGED commit that began before the temp's fsync
returned, must still be reported. The logs are the interleavings recorded in real runs
of ``move/default`` that the audit used to flag."""

from __future__ import annotations

from fault_injection.ordering import audit
from fault_injection.strace_log import parse

R = "/r"
WAL = f"{R}/journal/j.db-wal"
TRACE = f"{R}/trace"
TMP = f"{R}/dst/.f.axlpy-0156bb83-1-2"
DRIVER, SYNC = 100, 101


def wal_write(tid: int) -> str:
    return f'{tid} pwrite64(4<{WAL}>, "\\0\\0\\0\\2"..., 4096, 0) = 4096'


def wal_sync(tid: int) -> str:
    return f"{tid} fdatasync(4<{WAL}>) = 0"


def mark(tid: int, name: str) -> str:
    return f'{tid} write(6<{TRACE}>, "{name}\\n", {len(name) + 1}) = {len(name) + 1}'


def commit(tid: int, name: str) -> list[str]:
    return [wal_write(tid), wal_sync(tid), mark(tid, name)]


DISPATCHED = commit(DRIVER, "dispatch.after_commit")
CREATE = [f'{DRIVER} openat(AT_FDCWD<{R}>, "{TMP}", O_RDWR|O_CREAT|O_EXCL, 0600)'
          f" = 7<{TMP}>"]
TEMP_FSYNC = [f"{SYNC} fsync(7<{TMP}>) = 0"]
PUBLISH = [f'{DRIVER} renameat(AT_FDCWD<{R}>, "{TMP}", AT_FDCWD<{R}>, "{R}/dst/f") = 0',
           f"{DRIVER} fsync(8<{R}/dst>) = 0", *commit(DRIVER, "publish.after_commit")]


def run(lines: list[str]) -> list[str]:
    return audit(parse("\n".join(lines) + "\n"), f"{R}/journal/j.db", TRACE, f"{R}/src",
                 move=False)


def test_other_threads_commit_between_a_commit_and_its_marker_passes() -> None:
    # sync thread: extent commit durable; the driver's next commit writes the WAL before
    # the sync thread's marker, and the driver's marker follows its own fsync
    lines = [*DISPATCHED, *CREATE, f"{SYNC} fdatasync(7<{TMP}>) = 0",
             wal_write(SYNC), wal_sync(SYNC), wal_write(DRIVER),
             mark(SYNC, "stage.after_extent_commit"),
             *TEMP_FSYNC, wal_sync(DRIVER), wal_write(SYNC),
             mark(DRIVER, "stage.after_admission_commit"), wal_sync(SYNC),
             mark(SYNC, "stage.after_extent_commit"),
             *commit(DRIVER, "stage.after_commit"), *PUBLISH]
    assert run(lines) == []


def test_commit_not_fsynced_on_its_own_thread_is_reported() -> None:
    # the sync thread's WAL write is never fsynced by that thread; a WAL fsync on the
    # driver that merely completes in between does not vouch for it
    lines = [*DISPATCHED, wal_write(DRIVER), wal_write(SYNC), wal_sync(DRIVER),
             mark(SYNC, "stage.after_extent_commit"), mark(DRIVER, "stage.after_mkdir_commit")]
    assert run(lines) == ["rule 5: stage.after_extent_commit reached but the WAL written at "
                          "call 4 was not fsynced (commit not durable)"]


def test_staged_marker_of_an_earlier_group_does_not_count_for_a_later_temp() -> None:
    # the first STAGED marker after the temp's fsync closes a commit made before that
    # fsync returned (another group); the temp's own STAGED commit comes next
    lines = [*DISPATCHED, *CREATE, wal_write(DRIVER), wal_sync(DRIVER), *TEMP_FSYNC,
             mark(DRIVER, "stage.after_commit"), *commit(DRIVER, "stage.after_commit"),
             *PUBLISH]
    assert run(lines) == []


def test_staged_commit_begun_before_the_temp_fsync_returned_is_reported() -> None:
    # the only STAGED commit's WAL write precedes the temp's fsync (its WAL fsync after
    # it): the record vouches for data that was not durable when it was written
    lines = [*DISPATCHED, *CREATE, wal_write(DRIVER), *TEMP_FSYNC, wal_sync(DRIVER),
             mark(DRIVER, "stage.after_commit"), *PUBLISH]
    assert run(lines) == [f"rule 2: {R}/dst/f renamed before its STAGED record was "
                          "committed"]


def test_rename_without_a_staged_commit_is_reported() -> None:
    lines = [*DISPATCHED, *CREATE, *TEMP_FSYNC, *PUBLISH]
    assert run(lines) == [f"rule 2: {R}/dst/f renamed before its STAGED record was "
                          "committed"]


MKDIR = [f'{SYNC} mkdirat(AT_FDCWD<{R}>, "{R}/dst/a", 0700) = 0']
PARENT_FSYNC = [f"{SYNC} fsync(9<{R}/dst>) = 0"]


def test_commit_on_another_thread_between_mkdir_and_parent_fsync_passes() -> None:
    # a worker creates a directory; the driver commits STAGED for another file before the
    # worker fsyncs the parent and journals the directory
    lines = [*DISPATCHED, *MKDIR, *commit(DRIVER, "stage.after_commit"), *PARENT_FSYNC,
             *commit(SYNC, "stage.after_mkdir_commit")]
    assert run(lines) == []


def test_mkdir_committed_before_its_parent_fsync_is_reported() -> None:
    lines = [*DISPATCHED, *MKDIR, *commit(SYNC, "stage.after_mkdir_commit"),
             *PARENT_FSYNC]
    assert run(lines) == [f"rule 4: parent {R}/dst of new directory a not fsynced (nor its "
                          "filesystem synced) before the commit recording it"]


# Batched durability: one syncfs of the temps' filesystem covers every temp written
# before it (the paths here do not exist: every one resolves to the filesystem of "/").
SYNCFS = [f"{DRIVER} syncfs(9<{R}/dst>) = 0"]
WRITE = [f'{DRIVER} pwrite64(7<{TMP}>, "data", 4, 0) = 4']


def test_syncfs_before_staged_commit_covers_the_temp() -> None:
    lines = [*DISPATCHED, *CREATE, *WRITE, *SYNCFS, *commit(DRIVER, "stage.after_commit"),
             *PUBLISH]
    assert run(lines) == []


def test_rename_before_syncfs_is_reported() -> None:
    ren, dsync, *pub = PUBLISH
    lines = [*DISPATCHED, *CREATE, *WRITE, *commit(DRIVER, "stage.after_commit"), ren,
             dsync, *SYNCFS, *pub]
    bad = run(lines)
    assert len(bad) == 1 and bad[0].startswith("rule 1:"), bad


def test_syncfs_before_the_last_write_does_not_cover_it() -> None:
    lines = [*DISPATCHED, *CREATE, *SYNCFS, *WRITE, *commit(DRIVER, "stage.after_commit"),
             *PUBLISH]
    bad = run(lines)
    assert len(bad) == 1 and bad[0].startswith("rule 1:"), bad


def test_new_directory_covered_by_syncfs_before_its_record() -> None:
    mk = [f'{DRIVER} mkdirat(AT_FDCWD<{R}>, "{R}/dst/sub", 0700) = 0']
    ok = [*DISPATCHED, *mk, *SYNCFS, *commit(DRIVER, "stage.after_mkdir_commit")]
    assert run(ok) == []
    late = [*DISPATCHED, *mk, *commit(DRIVER, "stage.after_mkdir_commit"), *SYNCFS]
    bad = run(late)
    assert len(bad) == 1 and bad[0].startswith("rule 4:"), bad
