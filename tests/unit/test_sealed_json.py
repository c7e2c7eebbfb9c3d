"""The self-checked JSON files (commit marker, latest pointer) go through one pair of
functions, ``_durable.seal_json``/``unseal_json``, and keep their on-disk format: files
written by the code before that change (byte-for-byte fixtures in tests/fixtures/sealed)
still read, and the same content is written as the very same bytes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from axlpy._durable import seal_json, sealed_crc, unseal_json
from axlpy._lifecycle import POINTER, Pointer, _write_pointer, read_pointer
from axlpy._manifest import MARKER, InvalidCheckpointError, read_manifest, write_manifest
from tests.fixtures.sealed import generate as fx

FIXTURES = Path(fx.__file__).parent


def _place(tmp_path: Path) -> Path:
    """The fixtures as a checkpoints directory: ``<tmp>/<NAME>/_AXLPY_COMMIT.json`` and
    ``<tmp>/_AXLPY_LATEST.json``."""
    (tmp_path / fx.NAME).mkdir()
    shutil.copyfile(FIXTURES / MARKER, tmp_path / fx.NAME / MARKER)
    shutil.copyfile(FIXTURES / POINTER, tmp_path / POINTER)
    return tmp_path


def test_marker_written_by_old_code_reads(tmp_path: Path) -> None:
    m = read_manifest(_place(tmp_path) / fx.NAME)
    want = fx.manifest()
    assert m == want
    assert m.entries[-1].path == "rank1/éclair \udcff.bin"  # any byte name round-trips
    assert (m.step, m.total_bytes, m.meta["nested"]) == (42, 1 << 20, fx.META["nested"])


def test_pointer_written_by_old_code_reads_and_names_its_marker(tmp_path: Path) -> None:
    d = _place(tmp_path)
    ptr = read_pointer(d)
    assert ptr == Pointer(fx.NAME, fx.STEP, fx.COMMITTED_NS, 3327180138, fx.UPDATED_NS)
    # The pointer names the marker by the marker's body CRC32C, computed the new way.
    assert ptr.names(read_manifest(d / fx.NAME), fx.NAME)
    assert ptr.marker_crc32c == sealed_crc(fx.manifest().body())


def test_same_content_is_written_as_the_same_bytes(tmp_path: Path) -> None:
    (tmp_path / fx.NAME).mkdir()
    m = write_manifest(tmp_path / fx.NAME, fx.manifest())
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _write_pointer(dfd, Pointer(fx.NAME, fx.STEP, m.committed_ns,
                                    sealed_crc(m.body()), fx.UPDATED_NS))
    finally:
        os.close(dfd)
    assert (tmp_path / fx.NAME / MARKER).read_bytes() == (FIXTURES / MARKER).read_bytes()
    assert (tmp_path / POINTER).read_bytes() == (FIXTURES / POINTER).read_bytes()
    assert sorted(os.listdir(tmp_path)) == sorted([fx.NAME, POINTER])  # no temp left


@pytest.mark.parametrize("name", [MARKER, POINTER])
def test_damaged_fixture_is_refused(tmp_path: Path, name: str) -> None:
    d = _place(tmp_path)
    path = d / fx.NAME / MARKER if name == MARKER else d / POINTER
    raw = path.read_bytes()
    # One digit of committed_ns changed: still valid JSON, the CRC no longer matches.
    path.write_bytes(raw.replace(b"1764500000123456789", b"1764500000123456788"))
    what = "marker" if name == MARKER else "pointer"
    with pytest.raises(InvalidCheckpointError, match=f"torn or damaged {what}"):
        read_manifest(d / fx.NAME) if name == MARKER else read_pointer(d)


def test_seal_unseal_round_trip_and_refusals() -> None:
    body = {"format": "x/1", "a": [1, "é"], "b": None}
    raw = seal_json(body)
    assert raw.endswith(b"}\n")
    assert json.loads(raw)["body_crc32c"] == sealed_crc(body)
    assert unseal_json(raw, "x/1", "thing") == body
    with pytest.raises(ValueError, match="format is not 'y/1'"):
        unseal_json(raw, "y/1", "thing")
    with pytest.raises(ValueError, match="torn or damaged thing"):
        unseal_json(raw.replace(b'"b": null', b'"b": 0'), "x/1", "thing")
    with pytest.raises(KeyError):
        unseal_json(json.dumps(body).encode(), "x/1", "thing")
    with pytest.raises(json.JSONDecodeError):
        unseal_json(raw[:-5], "x/1", "thing")  # torn: not JSON
    with pytest.raises(ValueError, match="format is not"):
        unseal_json(b"[1, 2]", "x/1", "thing")
