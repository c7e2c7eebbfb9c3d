"""What a script and a person can trust in the CLI's output (issue 12): the exit code is
0 only for a COMPLETED transfer, names never reach the terminal raw, and errors say
what to do (which journal, which flag) and never advise a resume that cannot work."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from axlpy import Transfer
from tests.cli.clitools import child_env, run_runner, run_sub
from tests.conftest import requires_uring, type_params

#: the background types; ``uring`` is skipped (with the probe's reason) where io_uring or
#: liburing is missing, as everywhere else in the suite
BACKGROUND = type_params(["default", "pthread", "uring"])


def _unwritable_dst(tmp_path: Path) -> Path:
    """A destination whose parent is a regular file: add() accepts it, and the copy fails
    when it creates the parent directory, before writing any byte (also as root)."""
    (tmp_path / "afile").write_bytes(b"")
    return tmp_path / "afile" / "sub" / "dst"


@pytest.fixture
def worker_ends_first(monkeypatch):
    """dispatch()/resume() return only once the background worker has ended: the order
    that, racing, made `cp` miss the failure (it waited only `if t.running`)."""
    for meth in ("dispatch", "resume"):
        orig = getattr(Transfer, meth)

        def gated(self, *a, _orig=orig, **kw):
            _orig(self, *a, **kw)
            assert self._done.wait(120), "the worker did not end"

        monkeypatch.setattr(Transfer, meth, gated)


# -- item 1: exit codes --------------------------------------------------------------------


@pytest.mark.parametrize("ttype", BACKGROUND)
def test_cp_of_a_transfer_that_fails_before_writing_exits_1_with_the_error(
        jpath, tmp_path, worker_ends_first, ttype):
    src = tmp_path / "src"
    src.write_bytes(b"payload\n")
    dst = _unwritable_dst(tmp_path)
    r = run_runner(jpath, "cp", "--type", ttype, "--name", "f", src, dst)
    assert r.code == 1, (r.code, r.err)
    assert "Not a directory" in r.err  # the stored error, not only a summary line
    assert "COMPLETED" not in r.err
    st = json.loads(run_runner(jpath, "status", "--json", "f").out)["transfer"]
    assert st["state"] == "FAILED" and "Not a directory" in st["error"]
    assert src.read_bytes() == b"payload\n"


@pytest.mark.parametrize("ttype", BACKGROUND)
def test_resume_that_fails_again_exits_1_with_the_error(jpath, tmp_path, worker_ends_first,
                                                        ttype):
    src = tmp_path / "src"
    src.write_bytes(b"payload\n")
    dst = _unwritable_dst(tmp_path)
    assert run_runner(jpath, "cp", "--type", ttype, "--name", "f", src, dst).code == 1
    r = run_runner(jpath, "resume", "f")
    assert r.code == 1, (r.code, r.err)
    assert "Not a directory" in r.err
    # fixed cause: resume completes, exit 0
    (tmp_path / "afile").unlink()
    r = run_runner(jpath, "resume", "f")
    assert r.code == 0, r.err
    assert dst.read_bytes() == b"payload\n"


def test_cp_and_rm_script_is_safe(jpath, tmp_path):
    """`axlpy cp a b && rm -rf a` as a real shell line keeps the source on failure."""
    src = tmp_path / "a"
    src.mkdir()
    (src / "f").write_bytes(b"keep me")
    dst = _unwritable_dst(tmp_path)
    import subprocess

    p = subprocess.run(["sh", "-c", f'"{sys.executable}" -m axlpy cp "$1" "$2" && rm -rf "$1"',
                        "sh", str(src), str(dst)], env=child_env(jpath), capture_output=True)
    assert p.returncode == 1, p.stderr
    assert (src / "f").read_bytes() == b"keep me"


# -- item 7: terminal-safe output ----------------------------------------------------------

EVIL = ["red\x1b[31mname", "two\nlines", "ctl\x01char", "bidi\u202eevil"]
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f\u202e]")  # anything raw but the line breaks


def _no_raw_controls(text: str) -> None:
    assert not RAW.search(text), repr(text)


def test_names_with_control_characters_never_reach_the_terminal_raw(jpath, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for n in EVIL:
        (src / n).write_bytes(n.encode())
    dst = tmp_path / "dst"
    name = "job\x1b]0;pwned\x07\nx"
    r = run_runner(jpath, "cp", "--type", "sync", "--name", name, "--progress", "none",
                   src, dst)
    assert r.code == 0, r.err
    _no_raw_controls(r.err)
    outputs = [run_runner(jpath, "ls"), run_runner(jpath, "status", "--files", "--events", name)]
    (dst / "two\nlines").write_bytes(b"changed!!")  # same size: a CRC mismatch
    outputs.append(run_runner(jpath, "verify", name))
    assert outputs[-1].code == 1
    for o in outputs:
        _no_raw_controls(o.out)
        _no_raw_controls(o.err)
    ls_out, status_out, verify_out = (o.out for o in outputs)
    assert "job\\x1b]0;pwned\\x07\\nx" in ls_out
    assert len(ls_out.splitlines()) == 2  # header + one row: the \n did not split it
    assert "red\\x1b[31mname" in status_out and "two\\nlines" in status_out
    assert "ctl\\x01char" in status_out and "bidi\\u202eevil" in status_out
    rows = [ln for ln in status_out.splitlines() if ln.startswith("PUBLISHED ")]
    assert len(rows) == 1 + len(EVIL)  # the directory, one row per file: none split
    # the printed next step is still one pasteable shell word
    assert "$'job\\x1b]0;pwned\\x07\\nx'" in status_out
    assert "MISMATCH" in verify_out and "two\\nlines: CRC32C" in verify_out
    # JSON stays exact
    doc = json.loads(run_runner(jpath, "status", "--json", name).out)
    assert doc["transfer"]["name"] == name
    assert {os.path.basename(f["dst"]) for f in doc["files"]} >= set(EVIL)


def test_printed_resume_command_with_control_characters_runs_as_printed(jpath, tmp_path):
    """The `$'...'` word printed for a name with a newline is what bash reads back."""
    import shutil
    import subprocess

    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    from axlpy.cli import _quote

    for name in ["job\x1b[1m\nx", "it's\\here\x01"]:
        word = _quote(name)
        _no_raw_controls(word)
        echoed = subprocess.run(["bash", "-c", f"printf %s {word}"], capture_output=True,
                                text=True, check=True).stdout
        assert echoed == name


# -- item 8: messages that help --------------------------------------------------------------


def test_unusable_default_journal_names_it_and_the_ways_to_choose_another(tmp_path):
    home = tmp_path / "home-is-a-file"
    home.write_bytes(b"")
    src = tmp_path / "src"
    src.write_bytes(b"x")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AXLPY_") and k != "XDG_STATE_HOME"}
    env.update(HOME=str(home), PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    import subprocess

    p = subprocess.run([sys.executable, "-m", "axlpy", "cp", src, tmp_path / "dst"],
                       env=env, capture_output=True, text=True)
    assert p.returncode == 1
    err = p.stderr
    assert "Traceback" not in err
    assert f"{home}/.local/state/axlpy/journal.db" in err, err
    assert "--journal" in err and "$AXLPY_JOURNAL" in err, err


@pytest.mark.parametrize("cmd", [["ls"], ["cp", "SRC", "DST"], ["status", "x"]])
def test_journal_that_is_a_directory_says_so(tmp_path, cmd):
    d = tmp_path / "jdir"
    d.mkdir(mode=0o700)
    (tmp_path / "src").write_bytes(b"x")
    args = [str(tmp_path / "src") if a == "SRC" else str(tmp_path / "dst") if a == "DST"
            else a for a in cmd]
    r = run_sub(d / "unused.db", "--journal", d, *args)
    assert r.code in (1, 2), r.err
    assert f"journal {d} is a directory" in r.err, r.err
    assert "Traceback" not in r.err


def test_journal_in_a_world_writable_directory_gives_the_command_line_words(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    jp = shared / "journal.db"
    (tmp_path / "src").write_bytes(b"x")
    r = run_sub(jp, "cp", tmp_path / "src", tmp_path / "dst")
    assert r.code == 1
    assert "--allow-shared-journal" in r.err and "AXLPY_ALLOW_SHARED_JOURNAL=1" in r.err
    assert "Journal(..., allow_shared=True)" not in r.err, r.err
    assert not (tmp_path / "dst").exists()
    # the flag it names works, and so does the environment variable
    r = run_sub(jp, "--allow-shared-journal", "cp", tmp_path / "src", tmp_path / "dst")
    assert r.code == 0, r.err
    r = run_sub(jp, "ls", env=child_env(jp, AXLPY_ALLOW_SHARED_JOURNAL="1"))
    assert r.code == 0, r.err


def test_one_file_is_not_one_files(jpath, tmp_path):
    (tmp_path / "src").write_bytes(b"x")
    r = run_sub(jpath, "cp", "--name", "one", tmp_path / "src", tmp_path / "dst")
    assert r.code == 0, r.err
    assert "COMPLETED: 1 file," in r.err, r.err


def test_missing_optional_dependency_at_dispatch_does_not_advise_resume(jpath, tmp_path,
                                                                        monkeypatch):
    from axlpy import BackendUnavailableError
    from axlpy.io import _uring

    def missing() -> None:
        raise BackendUnavailableError("io_uring needs liburing: pip install "
                                      "liburing==2024.5.3")

    monkeypatch.setattr(_uring, "load_liburing", missing)
    (tmp_path / "src").write_bytes(b"x")
    r = run_runner(jpath, "cp", "--type", "uring", "--name", "u", tmp_path / "src",
                   tmp_path / "dst")
    assert r.code == 1
    assert "liburing" in r.err
    assert "resume" not in r.err, r.err
    assert "--type" in r.err


@requires_uring  # needs liburing installed: the shim shadows a real install
def test_unimportable_engine_library_at_dispatch_does_not_advise_resume(jpath, tmp_path):
    """A broken install: liburing's metadata is present but importing it fails (a
    module that raises ImportError shadows it). The copy fails at dispatch."""
    shim = tmp_path / "shim" / "liburing"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('liburing is broken (test)')\n")
    (tmp_path / "src").write_bytes(b"x")
    env = child_env(jpath)
    env["PYTHONPATH"] = f"{shim.parent}{os.pathsep}{env['PYTHONPATH']}"
    r = run_sub(jpath, "cp", "--type", "uring", "--name", "u", tmp_path / "src",
                tmp_path / "dst", env=env)
    assert r.code == 1, r.err
    assert "liburing is broken" in r.err
    assert "resume" not in r.err, r.err
    assert "--type" in r.err
