"""``python tests/cli/gated_axlpy.py ARGS``: the real ``axlpy`` command line with a gated IO
queue, so a test can interrupt a copy that is certainly mid-way (tests only).

Environment:
  GATE_DIR   flag files are written here: ``midway`` (holding the native thread id of the
             worker that reached the gate) once a write at or past GATE_AT is reached;
             ``interrupted`` when ``Transfer.interrupt`` (what Ctrl-C calls) runs
  GATE_AT    byte offset: writes at or past it wait for the gate
  GATE_MODE  ``sleep`` (the worker blocks) or ``spin`` (the worker burns CPU, as a busy
             copy does)
The gate opens only when ``Transfer.interrupt`` runs, after it has set the cancel flag:
a Ctrl-C that is not honoured leaves the copy stuck (the test sees it), and one that is
honoured stops the copy at its next chunk.
"""

from __future__ import annotations

import os
import sys
import threading
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from axlpy import Journal, Transfer
from axlpy.cli import main
from axlpy.io import IOOp, IORequest
from tests.conftest import PosixWrapperQueue

GATE_DIR = Path(os.environ["GATE_DIR"])
GATE_AT = int(os.environ["GATE_AT"])
SPIN = os.environ.get("GATE_MODE", "sleep") == "spin"
RELEASE = threading.Event()
_first = threading.Lock()


class GatedQueue(PosixWrapperQueue):
    def prep(self, request: IORequest) -> None:
        if request.op is IOOp.WRITE and request.offset >= GATE_AT and not RELEASE.is_set():
            if _first.acquire(blocking=False):
                (GATE_DIR / "midway.tmp").write_text(str(threading.get_native_id()))
                os.rename(GATE_DIR / "midway.tmp", GATE_DIR / "midway")
            if SPIN:
                buf = os.urandom(1 << 16)
                while not RELEASE.is_set():
                    zlib.crc32(buf)
            else:
                RELEASE.wait()
        PosixWrapperQueue.prep(self, request)


_create, _open, _interrupt = Journal.create, Journal.open, Transfer.interrupt


def create(self: Journal, *a: object, **kw: object) -> Transfer:
    kw.setdefault("queue_factory", GatedQueue)
    return _create(self, *a, **kw)  # type: ignore[arg-type]


def open_(self: Journal, *a: object, **kw: object) -> Transfer:
    kw.setdefault("queue_factory", GatedQueue)
    return _open(self, *a, **kw)  # type: ignore[arg-type]


def interrupt(self: Transfer, timeout: float | None = None) -> None:
    self._interrupted = True
    self._cancel.set()
    (GATE_DIR / "interrupted").touch()
    RELEASE.set()
    _interrupt(self, timeout)


Journal.create = create  # type: ignore[method-assign]
Journal.open = open_  # type: ignore[method-assign]
Transfer.interrupt = interrupt  # type: ignore[method-assign]

if __name__ == "__main__":
    main(sys.argv[1:])
