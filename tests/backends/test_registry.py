"""The registry: names, lazy imports, install hints, the default choice."""

from __future__ import annotations

import pytest

from axlpy import BackendUnavailableError, UsageError
from axlpy.io import (
    REGISTRY,
    FallbackIOQueue,
    MemoryIOQueue,
    PosixIOQueue,
    available_queues,
    default_queue_name,
    get_queue_class,
    open_default_queue,
    open_queue,
    probe_queue,
)
from tests.conftest import requires_uring


def test_registry_names():
    assert sorted(REGISTRY) == ["fallback", "memory", "posix", "rdma", "uring"]


@pytest.mark.parametrize(("name", "cls"), [("posix", PosixIOQueue), ("memory", MemoryIOQueue)])
def test_open_queue_by_name(name, cls):
    q = open_queue(name, depth=4)
    assert type(q) is cls
    assert q.depth == 4
    q.close()


def test_unknown_queue_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown IO queue 'nope'"):
        open_queue("nope")


def test_rdma_without_device_is_unavailable_with_reason():
    reason = probe_queue("rdma")
    assert reason is not None and "no RDMA device" in reason
    with pytest.raises(BackendUnavailableError, match="no RDMA device"):
        open_queue("rdma", peer=("127.0.0.1", 1))
    assert "rdma" not in available_queues()


def test_missing_module_gives_install_hint(monkeypatch):
    monkeypatch.setitem(REGISTRY, "uring", {**REGISTRY["uring"], "class": "no_such_mod.Q"})
    with pytest.raises(BackendUnavailableError, match=r"pip install 'axlpy\[uring\]'"):
        get_queue_class("uring")


def test_thread_safety_is_declared():
    from axlpy.io._uring import UringIOQueue

    assert PosixIOQueue.thread_safe is True
    assert MemoryIOQueue.thread_safe is True
    assert UringIOQueue.thread_safe is False
    assert FallbackIOQueue.thread_safe is False


@requires_uring
def test_default_is_uring_with_posix_fallback(monkeypatch):
    monkeypatch.delenv("AXLPY_IO_QUEUE", raising=False)
    assert "uring" in available_queues()
    assert default_queue_name() == "uring"
    q = open_default_queue(depth=8)
    assert isinstance(q, FallbackIOQueue)
    assert q.primary.name == "uring"
    assert q.fallback.name == "posix"
    q.close()
    q = open_queue("fallback", depth=4)
    assert isinstance(q, FallbackIOQueue)
    assert q.depth == 4
    q.close()


def test_default_falls_back_to_posix_when_uring_is_unavailable(monkeypatch):
    monkeypatch.delenv("AXLPY_IO_QUEUE", raising=False)
    monkeypatch.setattr("axlpy.io.probe_queue", lambda name: "no" if name == "uring" else None)
    assert default_queue_name() == "posix"
    q = open_default_queue(depth=8)
    assert type(q) is PosixIOQueue
    q.close()


def test_env_overrides_default(monkeypatch):
    monkeypatch.setenv("AXLPY_IO_QUEUE", "posix")
    assert default_queue_name() == "posix"
    monkeypatch.setenv("AXLPY_IO_QUEUE", "bogus")
    with pytest.raises(UsageError, match="AXLPY_IO_QUEUE"):
        default_queue_name()
