"""RDMA queue: chunks sent over an RC queue pair to a peer axlpy process (pyverbs).

Some facts about verbs completions: a work request (WR) posted on a queue pair (QP)
completes on its completion queue (CQ) as a work completion (WC) carrying our
``wr_id`` and a ``status``; only ``IBV_WC_SUCCESS`` means the bytes arrived. WCs of one
QP's send queue come back in posting order, but a SEND completing says only that the
peer's adapter acknowledged it, not that the peer wrote anything: the peer's answer
arrives as a RECV on our side. A RECV must already be posted when the peer's SEND
lands, or the RC QP retries (``rnr_retry``) and then breaks. ``ibv_post_send`` fails as a
whole for the WR it names (ENOMEM: send queue full) and the QP goes to the error state
on the first failed WC; every WR after it completes with ``IBV_WC_WR_FLUSH_ERR``. A
memory region (MR) pins its pages; SEND/RECV need the local key (lkey) of the MR the
scatter/gather entry points into, so every byte passes through pre-registered slots.

Wire protocol (two-sided SEND/RECV, one slot per request, ``depth`` slots each way):
the client SENDs ``header + payload`` (write) or ``header`` (read); the peer runs
pwrite/pread on a descriptor it opened for the client (see :meth:`VerbsIOQueue.open_remote`)
and SENDs back ``header`` (result = bytes moved or -errno) plus the data for a read.
Queue-pair numbers, LIDs, GIDs and PSNs are exchanged once over a TCP control socket,
which also carries ``open``/``close`` of remote files as JSON lines.

Not exercised here: no RDMA device exists on the machine this was written on, so
everything past :func:`probe_rdma` (device open, PD, MR, CQ, QP transitions, posting
and polling) is written against pyverbs' documented API and has never run.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from .._errors import BackendUnavailableError
from ._base import Completion, IOOp, IOQueue, IORequest, SubmitError

__all__ = ["VerbsIOQueue", "VerbsPeer", "probe_rdma"]

_HINT = (
    "pip install 'axlpy[rdma]' with pyverbs built for the system's libibverbs "
    "(on Debian 12: apt install python3-pyverbs), and an RDMA device"
)
#: op (B), status/result (q), slot (I), fd (q), offset (Q), length (I)
_HEADER = struct.Struct("<BqIqQI")
_OP_READ, _OP_WRITE = 1, 2
_PORT = 1
_GID_INDEX = 0


def probe_rdma() -> str | None:
    """``None`` if an RDMA device and a working pyverbs exist, else why not."""
    if not os.path.isdir("/sys/class/infiniband") or not os.listdir("/sys/class/infiniband"):
        return "no RDMA device (/sys/class/infiniband is empty or missing)"
    try:
        _verbs()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


def _verbs() -> dict[str, Any]:
    """Import the pyverbs modules used here, or raise BackendUnavailableError."""
    try:
        import pyverbs.addr as addr
        import pyverbs.cq as cq
        import pyverbs.device as device
        import pyverbs.mr as mr
        import pyverbs.pd as pd
        import pyverbs.qp as qp
        import pyverbs.wr as wr
        from pyverbs.pyverbs_error import PyverbsError

        try:
            import pyverbs.libibverbs_enums as enums  # rdma-core >= 50
        except ImportError:
            import pyverbs.enums as enums  # rdma-core 44 (Debian 12)
    except ImportError as exc:
        # pyverbs from PyPI bundles rdma-core 59 and needs IBVERBS_PRIVATE_59 from the
        # system libibverbs; older systems fail right here.
        raise BackendUnavailableError(f"pyverbs cannot be loaded ({exc}): {_HINT}") from exc
    try:
        devices = device.get_device_list()
    except PyverbsError as exc:
        raise BackendUnavailableError(f"no RDMA device ({exc})") from exc
    if not devices:
        raise BackendUnavailableError("no RDMA device")
    return {
        "addr": addr,
        "cq": cq,
        "device": device,
        "mr": mr,
        "pd": pd,
        "qp": qp,
        "wr": wr,
        "e": enums,
        "error": PyverbsError,
        "devices": devices,
    }


@dataclass
class _Endpoint:
    """The RC queue pair and its registered slots, shared by client and peer."""

    v: dict[str, Any]
    ctx: Any
    pd: Any
    cq: Any
    qp: Any
    send_mr: Any
    recv_mr: Any
    slot_size: int
    depth: int

    @classmethod
    def open(cls, device_name: str | None, depth: int, chunk: int) -> _Endpoint:
        v = _verbs()
        e = v["e"]
        name = device_name or v["devices"][0].name.decode()
        ctx = v["device"].Context(name=name)
        pd = v["pd"].PD(ctx)
        slot = _HEADER.size + chunk
        access = e.IBV_ACCESS_LOCAL_WRITE
        send_mr = v["mr"].MR(pd, slot * depth, access)
        recv_mr = v["mr"].MR(pd, slot * depth, access)
        cq = v["cq"].CQ(ctx, 2 * depth + 2, None, None, 0)
        cap = v["qp"].QPCap(max_send_wr=depth, max_recv_wr=depth, max_send_sge=1, max_recv_sge=1)
        init = v["qp"].QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap, sq_sig_all=1)
        qp = v["qp"].QP(pd, init)
        return cls(v, ctx, pd, cq, qp, send_mr, recv_mr, slot, depth)

    def local_info(self) -> dict[str, Any]:
        port = self.ctx.query_port(_PORT)
        gid = self.ctx.query_gid(_PORT, _GID_INDEX)
        return {"qpn": self.qp.qp_num, "lid": port.lid, "gid": str(gid.gid), "psn": 0}

    def connect(self, remote: dict[str, Any]) -> None:
        """Move the QP through INIT -> RTR -> RTS towards the peer described by ``remote``."""
        v, e = self.v, self.v["e"]
        attr = v["qp"].QPAttr(qp_state=e.IBV_QPS_INIT, cur_qp_state=e.IBV_QPS_RESET)
        attr.port_num = _PORT
        attr.qp_access_flags = e.IBV_ACCESS_LOCAL_WRITE
        self.qp.to_init(attr)
        gr = v["addr"].GlobalRoute(dgid=v["addr"].GID(remote["gid"]), sgid_index=_GID_INDEX)
        ah = v["addr"].AHAttr(port_num=_PORT, is_global=1, gr=gr, dlid=remote["lid"])
        attr = v["qp"].QPAttr(qp_state=e.IBV_QPS_RTR, cur_qp_state=e.IBV_QPS_INIT)
        attr.ah_attr = ah
        attr.dest_qp_num = remote["qpn"]
        attr.rq_psn = remote["psn"]
        attr.path_mtu = e.IBV_MTU_1024
        attr.max_dest_rd_atomic = 1
        attr.min_rnr_timer = 12
        self.qp.to_rtr(attr)
        attr.qp_state = e.IBV_QPS_RTS
        attr.sq_psn = 0
        attr.timeout = 14
        attr.retry_cnt = 7
        attr.rnr_retry = 7
        attr.max_rd_atomic = 1
        self.qp.to_rts(attr)
        for slot in range(self.depth):
            self.post_recv(slot)

    def post_recv(self, slot: int) -> None:
        sge = self.v["wr"].SGE(
            self.recv_mr.buf + slot * self.slot_size, self.slot_size, self.recv_mr.lkey
        )
        self.qp.post_recv(self.v["wr"].RecvWR(wr_id=slot, num_sge=1, sg=[sge]))

    def post_send(self, slot: int, nbytes: int) -> None:
        e = self.v["e"]
        sge = self.v["wr"].SGE(self.send_mr.buf + slot * self.slot_size, nbytes, self.send_mr.lkey)
        wr = self.v["wr"].SendWR(
            wr_id=slot | (1 << 32),  # bit 32 tells send WCs from recv WCs
            opcode=e.IBV_WR_SEND,
            num_sge=1,
            sg=[sge],
            send_flags=e.IBV_SEND_SIGNALED,
        )
        self.qp.post_send(wr)

    def poll(self, n: int) -> list[Any]:
        npolled, wcs = self.cq.poll(num_entries=n)
        return list(wcs[:npolled]) if npolled > 0 else []

    def close(self) -> None:
        for obj in (self.qp, self.cq, self.send_mr, self.recv_mr, self.pd, self.ctx):
            obj.close()


def _exchange(sock: socket.socket, msg: dict[str, Any]) -> dict[str, Any]:
    f = sock.makefile("rwb", buffering=0)
    f.write(json.dumps(msg).encode() + b"\n")
    reply: dict[str, Any] = json.loads(f.readline())
    return reply


class VerbsIOQueue(IOQueue):
    """Reads and writes of a peer's files over RDMA SEND/RECV (never exercised here).

    The descriptors in requests are the peer's, returned by :meth:`open_remote`; a
    request is at most ``chunk`` bytes (larger ones are not :meth:`accepts`-ed, so a
    :class:`FallbackIOQueue` never moves one here).

    Args:
        peer: ``(host, port)`` of a :class:`VerbsPeer`'s control socket.
        depth: requests in flight (send/recv slots registered on both sides).
        chunk: the most bytes one request moves.
        device: the RDMA device name (the first one by default).

    Raises:
        BackendUnavailableError: pyverbs cannot be loaded or there is no RDMA device.
    """

    name = "rdma"
    thread_safe = False

    def __init__(
        self,
        peer: tuple[str, int],
        depth: int = 64,
        *,
        chunk: int = 4 << 20,
        device: str | None = None,
    ) -> None:
        reason = probe_rdma()
        if reason is not None:
            raise BackendUnavailableError(reason)
        self._ep = _Endpoint.open(device, depth, chunk)
        self._chunk = chunk
        self._depth = depth
        self._sock = socket.create_connection(peer)
        remote = _exchange(
            self._sock, {"hello": self._ep.local_info(), "depth": depth, "chunk": chunk}
        )
        self._ep.connect(remote["hello"])
        self._remote_fds: set[int] = set()
        self._free = deque(range(depth))
        self._prepared: list[IORequest] = []
        self._slots: dict[int, IORequest] = {}
        self._done: deque[Completion] = deque()
        self._closed = False

    def open_remote(self, path: str, flags: int, mode: int = 0o644) -> int:
        """Open ``path`` on the peer; return its descriptor for use in requests."""
        reply = _exchange(self._sock, {"open": path, "flags": flags, "mode": mode})
        if "errno" in reply:
            raise OSError(reply["errno"], os.strerror(reply["errno"]), path)
        fd = int(reply["fd"])
        self._remote_fds.add(fd)
        return fd

    def close_remote(self, fd: int) -> None:
        """Close a descriptor :meth:`open_remote` returned."""
        _exchange(self._sock, {"close": fd})
        self._remote_fds.discard(fd)

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def in_flight(self) -> int:
        return len(self._prepared) + len(self._slots) + len(self._done)

    def accepts(self, request: IORequest) -> bool:
        return request.fd in self._remote_fds and request.length <= self._chunk

    def prep(self, request: IORequest) -> None:
        if self._closed:
            raise ValueError("IO queue is closed")
        if request.length > self._chunk:
            raise ValueError(f"rdma requests are at most {self._chunk} bytes")
        if self.in_flight >= self._depth:
            raise BlockingIOError(f"rdma queue full ({self._depth} in flight)")
        request.backend = self.name
        self._prepared.append(request)

    def submit(self) -> int:
        if self._closed:
            raise ValueError("IO queue is closed")
        todo, self._prepared = self._prepared, []
        for i, req in enumerate(todo):
            slot = self._free.popleft()
            op = _OP_READ if req.op is IOOp.READ else _OP_WRITE
            header = _HEADER.pack(op, 0, slot, req.fd, req.offset, req.length)
            base = slot * self._ep.slot_size
            self._ep.send_mr.write(header, len(header), base)
            nbytes = len(header)
            if op == _OP_WRITE and req.length:
                payload = bytes(req.buf)
                self._ep.send_mr.write(payload, len(payload), base + len(header))
                nbytes += len(payload)
            try:
                self._ep.post_send(slot, nbytes)
            except self._ep.v["error"] as exc:
                self._free.appendleft(slot)
                err = getattr(exc, "error_code", 0) or errno.EIO
                raise SubmitError(
                    err, f"ibv_post_send failed: {exc}", taken=i, dropped=todo[i:]
                ) from exc
            self._slots[slot] = req
        return len(todo)

    def reap(self, min_complete: int = 1, timeout: float | None = None) -> list[Completion]:
        out = list(self._done)
        self._done.clear()
        want = min(min_complete, len(out) + len(self._slots))
        deadline = None if timeout is None else time.monotonic() + timeout
        e = self._ep.v["e"]
        while True:
            for wc in self._ep.poll(2 * self._depth):
                if wc.wr_id >> 32:  # our SEND was acknowledged; the answer is a RECV
                    if wc.status != e.IBV_WC_SUCCESS:
                        self._finish(wc.wr_id & 0xFFFFFFFF, -errno.EIO, out)
                    continue
                slot = wc.wr_id
                if wc.status != e.IBV_WC_SUCCESS:
                    self._finish(slot, -errno.EIO, out)
                    continue
                base = slot * self._ep.slot_size
                _, result, req_slot, _, _, _ = _HEADER.unpack(
                    self._ep.recv_mr.read(_HEADER.size, base)
                )
                req = self._slots.get(req_slot)
                if req is not None and req.op is IOOp.READ and result > 0:
                    req.buf[:result] = self._ep.recv_mr.read(result, base + _HEADER.size)
                self._ep.post_recv(slot)
                self._finish(req_slot, result, out)
            if len(out) >= want:
                return out
            if deadline is not None and time.monotonic() >= deadline:
                return out
            time.sleep(0.00005)  # polling; a completion channel would let us sleep

    def _finish(self, slot: int, result: int, out: list[Completion]) -> None:
        req = self._slots.pop(slot, None)
        if req is None:
            return  # already finished by its other WC
        self._free.append(slot)
        out.append(Completion(req, result))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.close()
        finally:
            self._ep.close()


class VerbsPeer:
    """The receiving side: runs the file IO a :class:`VerbsIOQueue` sends it.

    ``python -m axlpy.io._rdma --port 18515`` runs one; it serves one client at a time.
    """

    def __init__(
        self, port: int = 18515, *, depth: int = 64, chunk: int = 4 << 20, device: str | None = None
    ) -> None:
        reason = probe_rdma()
        if reason is not None:
            raise BackendUnavailableError(reason)
        self._listener = socket.create_server(("", port))
        self._depth, self._chunk, self._device = depth, chunk, device

    def serve_one(self) -> None:
        """Accept one client and serve it until it disconnects."""
        conn, _ = self._listener.accept()
        ep = _Endpoint.open(self._device, self._depth, self._chunk)
        f = conn.makefile("rwb", buffering=0)
        fds: set[int] = set()
        try:
            hello = json.loads(f.readline())
            f.write(json.dumps({"hello": ep.local_info()}).encode() + b"\n")
            ep.connect(hello["hello"])
            conn.setblocking(False)
            while self._serve_control(conn, f, fds):
                self._serve_data(ep)
        finally:
            for fd in fds:
                os.close(fd)
            ep.close()
            conn.close()

    def _serve_control(self, conn: socket.socket, f: Any, fds: set[int]) -> bool:
        try:
            line = f.readline()
        except BlockingIOError:
            return True
        if not line:
            return False  # the client hung up
        msg = json.loads(line)
        reply: dict[str, Any]
        if "open" in msg:
            try:
                fd = os.open(msg["open"], msg["flags"] | os.O_CLOEXEC, msg["mode"])
                fds.add(fd)
                reply = {"fd": fd}
            except OSError as exc:
                reply = {"errno": exc.errno}
        else:
            fd = int(msg["close"])
            if fd in fds:
                fds.discard(fd)
                os.close(fd)
            reply = {}
        conn.setblocking(True)
        f.write(json.dumps(reply).encode() + b"\n")
        conn.setblocking(False)
        return True

    def _serve_data(self, ep: _Endpoint) -> None:
        e = ep.v["e"]
        for wc in ep.poll(2 * ep.depth):
            if wc.wr_id >> 32 or wc.status != e.IBV_WC_SUCCESS:
                continue  # our answer went out (or the QP broke; the client sees it)
            slot = wc.wr_id
            base = slot * ep.slot_size
            op, _, req_slot, fd, offset, length = _HEADER.unpack(
                ep.recv_mr.read(_HEADER.size, base)
            )
            data = b""
            try:
                if op == _OP_WRITE:
                    result = _pwrite_all(fd, ep.recv_mr.read(length, base + _HEADER.size), offset)
                else:
                    data = os.pread(fd, length, offset)
                    result = len(data)
            except OSError as exc:
                result = -(exc.errno or errno.EIO)
            ep.post_recv(slot)
            header = _HEADER.pack(op, result, req_slot, fd, offset, length)
            ep.send_mr.write(header, len(header), base)
            if data:
                ep.send_mr.write(data, len(data), base + _HEADER.size)
            ep.post_send(slot, _HEADER.size + len(data))


def _pwrite_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    done = 0
    while done < len(data):
        done += os.pwrite(fd, view[done:], offset + done)
    return done


if __name__ == "__main__":  # pragma: no cover - needs an RDMA device
    import argparse

    ap = argparse.ArgumentParser(description="serve axlpy RDMA transfers")
    ap.add_argument("--port", type=int, default=18515)
    ap.add_argument("--device")
    args = ap.parse_args()
    peer = VerbsPeer(args.port, device=args.device)
    while True:
        peer.serve_one()
