"""One axlpy operation in its own process: ``python -m fault_injection.child '<json spec>'``.

Spec keys: ``journal``, ``name``, ``type``, ``options``, ``pairs`` ([[src, dst], ...]),
``op`` (``start`` = create + add + dispatch + wait; ``resume``; ``cancel``), ``ack`` (path),
optional ``die_after_ack`` (SIGKILL self right after acknowledging, so nothing is closed
cleanly), optional ``pause`` (``{"at": point, "hit": n, "file": path}``: on the n-th
``crash_point(at)`` write ``file`` and SIGSTOP self; the harness mutates, then SIGCONTs).

Before the operation starts the child calls ``access("/axlpy-fi-start-marker")``, so a
syscall trace can tell Python's start-up from the operation. When the operation returned
success it writes the acknowledgement file ``ack`` (fsynced, with its directory), which is
what a caller would have reported to the outside world.

Exit status: 0 success; 3 an :class:`axlpy.AxlError` was raised (a reported failure);
4 any other exception; killed by a signal when a crash point or strace killed it. The last
line on stdout is a JSON result ``{"ok", "state", "error_type", "error"}``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from typing import Any

MARKER = "/axlpy-fi-start-marker"
#: called once the acknowledgement is durable: what follows is interpreter teardown
ACKED_MARKER = "/axlpy-fi-acked-marker"

__all__ = ["ACKED_MARKER", "MARKER", "POWERFS_SYNCFS_ENV", "main", "run"]


def _install_pause(at: str, hit: int, flag: str) -> None:
    """Wrap ``crash_point`` in every loaded axlpy module so the child stops at ``at``."""
    import axlpy._crashpoints as cp

    orig = cp.crash_point
    count = {"n": 0}

    def paused(name: str) -> None:
        orig(name)
        if name == at:
            count["n"] += 1
            if count["n"] == hit:
                with open(flag, "w") as f:
                    f.write(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGSTOP)

    for mod in list(sys.modules.values()):
        if (getattr(mod, "__name__", "") or "").startswith("axlpy") and \
                getattr(mod, "crash_point", None) is orig:
            mod.crash_point = paused  # type: ignore[attr-defined]


#: set by the power-loss sweep to powerfs's state directory (see _install_powerfs_syncfs)
POWERFS_SYNCFS_ENV = "FI_POWERFS_CONTROL"


def _install_powerfs_syncfs(control: str) -> None:
    """Make axlpy's ``syncfs`` do on powerfs what it does on a local disk.

    FUSE does not pass ``syncfs(2)`` to a ``/dev/fuse`` server (the kernel sends
    ``FUSE_SYNCFS`` to virtiofs only; checked on Linux 6.18: the daemon's debug log shows
    no request at all), so on powerfs a real ``syncfs`` makes nothing durable. After each
    real call returns, the child asks the daemon to ``sync``: every dirty file and
    directory entry of the mount becomes durable — what ``syncfs`` does on ext4, xfs and
    btrfs. A ``syncfs`` the code skips (planted bug ``syncfs_skipped``) or makes too late
    (``rename_before_syncfs``) is skipped or late here too. The sweep also sets
    ``AXLPY_SYNCFS=on`` so the FUSE mount takes the batched path."""
    import axlpy._groupsync as gs

    from .powerfs import send_command

    real = gs.syncfs

    def syncfs(fd: int) -> None:
        real(fd)
        send_command(control, "sync")

    gs.syncfs = syncfs


def _ack(path: str, payload: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(payload).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the operation; returns the result dict (raises what axlpy raised)."""
    import axlpy

    op = spec["op"]
    if op.startswith("lc-"):  # checkpoint lifecycle: see fault_injection.lifecycle
        from .lifecycle import run_op

        return run_op(spec)
    j = axlpy.Journal(spec["journal"])
    if op == "start":
        t = j.create(spec["name"], spec["type"], **spec.get("options", {}))
        for src, dst in spec["pairs"]:
            t.add(src, dst)
        t.dispatch()
        t.wait()
    elif op == "resume":
        t = j.open(spec["name"])
        t.resume()
        t.wait()
    elif op == "cancel":
        t = j.open(spec["name"])
        t.cancel()
    else:
        raise SystemExit(f"unknown op {op!r}")
    return {"ok": True, "state": t.state.value, "error_type": None, "error": None}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(args[0])
    pause = spec.get("pause")
    import axlpy
    import axlpy._transfer  # noqa: F401

    if pause:
        _install_pause(pause["at"], int(pause.get("hit", 1)), pause["file"])
    if os.environ.get(POWERFS_SYNCFS_ENV):
        _install_powerfs_syncfs(os.environ[POWERFS_SYNCFS_ENV])
    os.access(MARKER, os.F_OK)
    from axlpy import AxlError

    try:
        res = run(spec)
    except AxlError as exc:
        print(json.dumps({"ok": False, "state": None, "error_type": type(exc).__name__,
                          "error": str(exc)}), flush=True)
        return 3
    except Exception as exc:
        traceback.print_exc()
        print(json.dumps({"ok": False, "state": None, "error_type": type(exc).__name__,
                          "error": str(exc)}), flush=True)
        return 4
    if spec.get("ack") and res["state"] in ("COMPLETED", "CANCELLED"):
        _ack(spec["ack"], {"op": spec["op"], "state": res["state"],
                           "tag": spec.get("ack_tag")})
    os.access(ACKED_MARKER, os.F_OK)
    print(json.dumps(res), flush=True)
    if spec.get("die_after_ack"):
        os.kill(os.getpid(), signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
