"""Start-up work (issue 14.5): what ``import axlpy`` and the CLI load, the io_uring probe
verdict cached per boot, buffers sized to the transfer, and where DEFAULT is chosen.

No timings: the import graph, the cache file and the chosen sizes are asserted instead.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import click
import pytest

import axlpy
from axlpy._journal import FileRow
from axlpy.cli._app import COMMAND_MODULES, COMMAND_ORDER
from axlpy.engines import (
    INLINE_MAX_BYTES,
    INLINE_MAX_FILES,
    MIN_CHUNK,
    StageTask,
    get_engine,
    stage_chunk_size,
)
from axlpy.io import _probe_cache
from axlpy.io._probe_cache import cache_path, cached_verdict, probe_key

HEAVY = ("sqlite_utils", "numpy", "pandas", "crc32c", "importlib.metadata", "liburing")


def _loaded_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json\n"
         f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))"],
        capture_output=True, text=True, check=True, env={**os.environ, **(env or {})},
    ).stdout
    loaded: list[str] = json.loads(out.strip().splitlines()[-1])
    return loaded


def test_import_axlpy_loads_no_heavy_module() -> None:
    assert _loaded_after("import axlpy") == []


def test_public_names_still_resolve_lazily() -> None:
    code = ("import axlpy, sys\n"
            "assert axlpy.Journal.__module__ == 'axlpy._transfer'\n"
            "assert axlpy.TransferType.DEFAULT.value == 'default'\n"
            "assert 'axlpy._transfer' in sys.modules\n"
            "from axlpy import *\n")
    # Touching the API loads the journal module, still without numpy/pandas/metadata.
    loaded = _loaded_after(code)
    assert "numpy" not in loaded and "pandas" not in loaded
    assert "importlib.metadata" not in loaded
    with pytest.raises(AttributeError, match="no_such_name"):
        axlpy.no_such_name  # noqa: B018


def test_cli_help_loads_no_journal_library() -> None:
    code = ("import sys\nfrom axlpy.cli import main\nsys.argv = ['axlpy', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n")
    assert _loaded_after(code) == []


def test_cli_ls_reads_the_journal_without_sqlite_utils(tmp_path: Path) -> None:
    journal = str(tmp_path / "j.db")
    with axlpy.Journal(journal) as j:
        j.create("t", axlpy.TransferType.SYNC)
    code = ("import sys\nfrom axlpy.cli import main\n"
            f"sys.argv = ['axlpy', '--journal', {journal!r}, 'ls']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n")
    assert _loaded_after(code) == []


def test_writing_a_journal_imports_no_sqlite_utils(tmp_path: Path) -> None:
    """sqlite-utils is imported only to create a journal's tables: every write of a
    transfer into an existing journal loads neither it nor the dateutil/numpy/pandas it
    would bring; creating a journal loads it without numpy/pandas."""
    (tmp_path / "src").write_bytes(b"abc")
    journal = str(tmp_path / "j.db")
    code = (f"import axlpy\nwith axlpy.Journal({journal!r}) as j:\n"
            "    t = j.create('t', 'sync')\n"
            f"    t.add({str(tmp_path / 'src')!r}, {str(tmp_path / 'dst')!r})\n"
            "    t.dispatch()\n    t.wait()\n    t.free()\n")
    assert _loaded_after(code) == ["sqlite_utils"]  # created the journal
    assert (tmp_path / "dst").read_bytes() == b"abc"
    (tmp_path / "dst").unlink()
    loaded = _loaded_after(code + "import sys\nassert 'dateutil' not in sys.modules\n")
    assert loaded == [], loaded
    assert (tmp_path / "dst").read_bytes() == b"abc"


# -- what each short command imports (python -m axlpy ...) ----------------------------------

#: never needed by ``--help``, ``ls`` or a one-file ``cp``: other engines and queues, MPI,
#: checkpoint lifecycle, gc/verify, the io_uring probe and its cache, and stdlib modules
#: the command path used to pull in (sqlite-utils and its dateutil: now only imported to
#: create a journal's tables; subprocess and ctypes.util for ldconfig; secrets/hashlib for
#: a random token; socket for a hostname)
NEVER = {
    "sqlite_utils", "dateutil", "numpy", "pandas", "importlib.metadata", "crc32c",
    "liburing", "mpi4py", "pyverbs", "axlpy.io._uring", "axlpy.io._rdma",
    "axlpy.io._probe_cache", "axlpy.engines.uring", "axlpy.engines.threaded",
    "axlpy._lifecycle", "axlpy.mpi", "axlpy._gc", "axlpy._verify", "axlpy._manifest",
    "axlpy._drain", "subprocess", "ctypes.util", "secrets", "hashlib", "socket",
}
#: the journal, engines and IO queues: not for ``--help``
JOURNAL = {"sqlite3", "axlpy._journal", "axlpy._transfer"}
RUN = {"axlpy._driver", "axlpy._admission", "axlpy._checksum", "axlpy.engines", "axlpy.io"}


#: runs ``python -m axlpy ARGS`` (runpy, as the interpreter does) and writes the names in
#: ``sys.modules`` at exit to the file named by the first argument
_AS_MAIN = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def dump():
    with open(out, "w") as f:
        f.write("\\n".join(sys.modules))
atexit.register(dump)
if sys.argv[1:]:
    runpy.run_module("axlpy", run_name="__main__", alter_sys=True)
"""


def _imported(args: list[str], tmp_path: Path) -> set[str]:
    """Every module ``python -m axlpy ARGS`` has imported when it exits, beyond what an
    empty run of the same launcher has (site, sitecustomize: not axlpy's doing); the
    command must succeed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AXLPY_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    out = tmp_path / "modules.txt"

    def run(argv: list[str]) -> set[str]:
        p = subprocess.run([sys.executable, "-c", _AS_MAIN, str(out), *argv], env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        return set(out.read_text().split("\n"))

    return run(args) - run([])


def test_help_ls_and_one_file_cp_import_only_what_they_use(tmp_path: Path) -> None:
    journal = str(tmp_path / "journal" / "j.db")
    (tmp_path / "journal").mkdir(mode=0o700)
    (tmp_path / "src").write_bytes(b"abc")
    axlpy.Journal(journal).close()  # a copy into an existing journal (creating one
    # imports sqlite-utils for its tables, once)
    cp = _imported(["--journal", journal, "cp", "--progress", "none",
                    str(tmp_path / "src"), str(tmp_path / "dst")], tmp_path)
    assert (tmp_path / "dst").read_bytes() == b"abc"
    assert cp >= RUN | JOURNAL  # what a copy needs was seen: the parsing works
    assert cp & NEVER == set()
    # only the command's own module of the CLI
    others = {f"axlpy.cli.{m}" for m in COMMAND_MODULES.values()}
    assert cp & others == {"axlpy.cli.transfers"}
    ls = _imported(["--journal", journal, "ls"], tmp_path)
    assert ls >= JOURNAL
    assert ls & (NEVER | RUN) == set()
    assert ls & others == {"axlpy.cli.status"}
    helped = _imported(["--help"], tmp_path)
    assert "click" in helped and others <= helped  # every command's summary line
    assert helped & (NEVER | RUN | JOURNAL) == set()


def test_each_command_is_registered_by_the_module_that_loads_it() -> None:
    """The map the console script imports one command module by is complete and right
    (a command missing from it would be unknown to ``axlpy CMD``)."""
    from axlpy.cli import cli

    assert isinstance(cli, click.Group)
    assert set(cli.commands) == set(COMMAND_MODULES) == set(COMMAND_ORDER)
    for name, cmd in cli.commands.items():
        assert cmd.callback is not None
        assert cmd.callback.__module__ == f"axlpy.cli.{COMMAND_MODULES[name]}", name


def test_crc32c_without_package_init_is_the_real_function() -> None:
    from axlpy._checksum import crc32c

    assert crc32c(b"123456789") == 0xE3069283  # the CRC32C check value
    assert crc32c(b"56789", crc32c(b"1234")) == 0xE3069283


# -- the io_uring probe verdict, cached per boot -------------------------------------------

KEY = {"boot_id": "b", "lib_version": "2024.5.3", "python": "py", "probe": "p", "uid": "0"}


class Probe:
    def __init__(self, verdict: str | None) -> None:
        self.verdict = verdict
        self.calls = 0

    def __call__(self) -> str | None:
        self.calls += 1
        return self.verdict


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(_probe_cache.ENV_PROBE_CACHE, raising=False)
    return tmp_path / "cache"


def test_verdict_is_stored_privately_and_reused(cache_home: Path) -> None:
    probe = Probe(None)
    assert cached_verdict("uring", KEY, probe) is None
    assert cached_verdict("uring", KEY, probe) is None
    assert probe.calls == 1
    path = Path(cache_path("uring"))
    assert path.parent == cache_home / "axlpy"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"key": KEY, "verdict": None}
    # a negative verdict is cached too, and a new key (another boot) probes again
    assert cached_verdict("uring", {**KEY, "boot_id": "c"}, Probe("no ring")) == "no ring"
    again = Probe(None)
    assert cached_verdict("uring", {**KEY, "boot_id": "c"}, again) == "no ring"
    assert again.calls == 0


@pytest.mark.parametrize("content", [
    b"", b"not json", b"[]", b'{"key": {}, "verdict": null}',
    b'{"key": KEY, "verdict": 7}', b'{"key": KEY, "verdict": null, "extra": 1}',
    b'{"key": KEY}',
])
def test_a_bad_entry_costs_a_reprobe_never_a_wrong_verdict(cache_home: Path,
                                                          content: bytes) -> None:
    path = Path(cache_path("uring"))
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_bytes(content.replace(b"KEY", json.dumps(KEY).encode()))
    path.chmod(0o600)
    probe = Probe("the real verdict")
    assert cached_verdict("uring", KEY, probe) == "the real verdict"
    assert probe.calls == 1
    assert json.loads(path.read_text()) == {"key": KEY, "verdict": "the real verdict"}


def test_entry_others_could_have_written_is_ignored(cache_home: Path) -> None:
    path = Path(cache_path("uring"))
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_text(json.dumps({"key": KEY, "verdict": None}))
    path.chmod(0o644)  # group/other could have... no: readable by others is enough to doubt
    path.chmod(0o622)
    probe = Probe("reason")
    assert cached_verdict("uring", KEY, probe) == "reason"
    assert probe.calls == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # rewritten privately


def test_symlinked_entry_is_not_followed(cache_home: Path, tmp_path: Path) -> None:
    target = tmp_path / "planted.json"
    target.write_text(json.dumps({"key": KEY, "verdict": None}))
    target.chmod(0o600)
    path = Path(cache_path("uring"))
    path.parent.mkdir(parents=True, mode=0o700)
    path.symlink_to(target)
    probe = Probe("reason")
    assert cached_verdict("uring", KEY, probe) == "reason"
    assert probe.calls == 1
    assert json.loads(target.read_text())["verdict"] is None  # the target was not written
    assert not path.is_symlink()


def test_shared_cache_directory_is_not_written(cache_home: Path) -> None:
    d = Path(cache_path("uring")).parent
    d.mkdir(parents=True)
    d.chmod(0o777)
    probe = Probe(None)
    assert cached_verdict("uring", KEY, probe) is None
    assert cached_verdict("uring", KEY, probe) is None
    assert probe.calls == 2
    assert os.listdir(d) == []


def test_unrunnable_probe_and_disabled_cache_are_not_stored(
        cache_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cached_verdict("uring", KEY, Probe("probe failed to run: timeout")).startswith(
        "probe failed")
    assert not Path(cache_path("uring")).exists()
    monkeypatch.setenv(_probe_cache.ENV_PROBE_CACHE, "0")
    probe = Probe(None)
    cached_verdict("uring", KEY, probe)
    cached_verdict("uring", KEY, probe)
    assert probe.calls == 2 and not Path(cache_path("uring")).exists()
    assert cached_verdict("uring", None, Probe("x")) == "x"  # no boot id: never cached


def test_key_names_boot_library_and_probe() -> None:
    key = probe_key("2024.5.3", "code")
    if key is None:
        pytest.skip("no /proc/sys/kernel/random/boot_id here")
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert key["boot_id"] == f.read().strip()
    assert key["lib_version"] == "2024.5.3"
    assert probe_key("2024.5.3", "other code") != key
    assert probe_key("2026.1.7", "code") != key


def test_uring_probe_runs_once_per_boot_across_processes(tmp_path: Path) -> None:
    """Two processes: the second one takes the verdict from the cache (no child probe)."""
    from axlpy.io import _check_liburing_version

    try:
        _check_liburing_version()
    except axlpy.BackendUnavailableError as exc:
        pytest.skip(f"liburing is not usable here: {exc}")
    env = {"XDG_CACHE_HOME": str(tmp_path / "c")}
    code = ("import subprocess\nruns = []\norig = subprocess.run\n"
            "subprocess.run = lambda *a, **k: runs.append(a) or orig(*a, **k)\n"
            "from axlpy.io import probe_queue\nv = probe_queue('uring')\n"
            "print(len(runs), repr(v))\n")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={**os.environ, **env}).stdout.split()
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env={**os.environ, **env}).stdout.split()
    assert first[0] == "1" and second[0] == "0"
    assert first[1:] == second[1:]


# -- buffers sized to the transfer; DEFAULT chosen in one place -----------------------------


def _task(size: int, resume_from: int = 0) -> StageTask:
    row = FileRow(*([None] * len(FileRow.__dataclass_fields__)))  # type: ignore[arg-type]
    row.size = size
    return StageTask(row, -1, b"t", resume_from=resume_from)


def test_buffer_is_sized_to_the_biggest_file() -> None:
    eight = 8 << 20
    assert stage_chunk_size(eight, [_task(3)]) == MIN_CHUNK
    assert stage_chunk_size(eight, [_task(3), _task(100_000)]) == 128 << 10
    assert stage_chunk_size(eight, [_task(5 << 20)]) == eight
    assert stage_chunk_size(eight, [_task(1 << 30)]) == eight
    assert stage_chunk_size(eight, [_task(1 << 30, resume_from=(1 << 30) - 10)]) == MIN_CHUNK
    assert stage_chunk_size(eight, []) == MIN_CHUNK
    # always a divisor of the configured size (so of extent_size too)
    assert stage_chunk_size(3 << 20, [_task(3)]) == 3 << 11
    assert stage_chunk_size(12345, [_task(3)]) == 12345


def test_a_three_byte_copy_stages_with_a_small_buffer(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from axlpy import _driver

    seen: list[int] = []
    real = _driver.StageContext

    def spy(*args: object, **kwargs: object) -> object:
        ctx = real(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(ctx.chunk_size)
        return ctx

    monkeypatch.setattr(_driver, "StageContext", spy)
    (tmp_path / "src").write_bytes(b"abc")
    with axlpy.Journal(tmp_path / "j.db") as j:
        t = j.create("t", axlpy.TransferType.DEFAULT)
        t.add(tmp_path / "src", tmp_path / "dst")
        t.dispatch()
        t.wait()
        assert t.state is axlpy.TransferState.COMPLETED
    assert (tmp_path / "dst").read_bytes() == b"abc"
    assert seen == [MIN_CHUNK]


def test_default_engine_is_chosen_by_size_and_filesystem(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import axlpy.io
    from axlpy.engines._fs import all_memory_backed
    from axlpy.engines.sync import BackgroundSyncEngine
    from axlpy.engines.threaded import PthreadEngine

    def no_probe(name: str) -> str | None:
        raise AssertionError("choosing DEFAULT's engine must not probe io_uring")

    monkeypatch.setattr(axlpy.io, "probe_queue", no_probe)
    small = get_engine("default", files=1, nbytes=3, roots=[str(tmp_path)])
    assert isinstance(small, BackgroundSyncEngine)
    assert small.background  # DEFAULT's dispatch() still returns at once
    assert small.queue_name == "posix"
    big = INLINE_MAX_BYTES + 1
    if all_memory_backed([str(tmp_path)]):
        pytest.skip("the test's temp directory is on tmpfs: no disk destination to try")
    # several small files on a disk: threads overlap their fsyncs
    assert type(get_engine("default", files=INLINE_MAX_FILES + 1, nbytes=2,
                           roots=[str(tmp_path)])) is PthreadEngine
    assert type(get_engine("default", files=1, nbytes=big, roots=[str(tmp_path)])) \
        is PthreadEngine
    assert type(get_engine("default", files=64, nbytes=big, roots=[str(tmp_path)])) \
        is PthreadEngine
    assert type(get_engine("default")) is PthreadEngine  # nothing known yet
    shm = "/dev/shm"
    if os.path.isdir(shm) and all_memory_backed([shm]):
        on_tmpfs = get_engine("default", files=10_000, nbytes=big, roots=[shm + "/x/y"])
        assert isinstance(on_tmpfs, BackgroundSyncEngine)
        mixed = get_engine("default", files=10_000, nbytes=big,
                           roots=[shm + "/x", str(tmp_path)])
        assert type(mixed) is PthreadEngine


def test_memory_filesystem_detection_reads_the_mount_table(tmp_path: Path) -> None:
    from axlpy.engines._fs import all_memory_backed

    assert all_memory_backed([]) is False
    assert all_memory_backed([str(tmp_path / "not" / "made" / "yet")]) == all_memory_backed(
        [str(tmp_path)])
    with open("/proc/self/mountinfo") as f:
        tmpfs_mounts = [ln.split()[4] for ln in f if " - tmpfs " in ln]
    for mnt in tmpfs_mounts[:3]:
        assert all_memory_backed([mnt]), mnt
