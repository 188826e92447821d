"""The apply pipeline's plumbing: the block reader tarfile parses from, and the
read-ahead thread that inflates and hashes a layer for the extractor."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest
import zstandard

from berth import errdefs
from berth.core.content import Descriptor, Digest, LocalStore, MemoryLabelStore
from berth.core.diff.archive import _TarSource, apply_tar
from berth.core.diff.walking import WalkingDiffer
from berth.core.images import mediatypes as mt
from berth.core.mount import Mount


class Trickle(io.RawIOBase):
    """Hands out at most ``step`` bytes per read, as a slow pipe would."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        k = self._step if n < 0 else min(n, self._step)
        out, self._data = bytes(self._data[:k]), self._data[k:]
        return out


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "berth-diff-read"]


def test_block_reader_reads_and_seeks_like_a_file_across_blocks() -> None:
    data = bytes(range(256)) * 40
    src = _TarSource(Trickle(data, 33), block=100)
    ref = io.BytesIO(data)
    for n in (0, 1, 99, 100, 101, 512, 3):
        assert src.read(n) == ref.read(n)
        assert src.tell() == ref.tell()
    # Forward seeks skip, within and across blocks.
    for pos in (src.tell() + 10, src.tell() + 700):
        assert src.seek(pos) == pos
        ref.seek(pos)
        assert src.read(7) == ref.read(7)
    # A step back inside the block in hand works.
    src.read(1)
    ref.read(1)
    back = src.tell() - 1
    assert src.seek(back) == back
    ref.seek(back)
    assert src.read(5) == ref.read(5)
    assert src.read() == ref.read()
    assert src.read(10) == b""
    with pytest.raises(OSError, match="backwards"):
        src.seek(0)


def test_block_reader_seek_past_the_end_then_reads_nothing() -> None:
    src = _TarSource(io.BytesIO(b"abc"), block=2)
    src.seek(10)
    assert src.read(1) == b""


def test_apply_from_a_trickling_stream_matches_the_tar(tmp_path: Path) -> None:
    buf = io.BytesIO()
    files = {
        "a/" + "long-name-" * 20: b"x" * 5000,  # PAX long name
        "a/big": os.urandom(3 << 20),  # streamed by the parser, across blocks
        "a/empty": b"",
        "b/c": b"hello",
    }
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    stats = apply_tar(Trickle(buf.getvalue(), 4099), tmp_path)
    assert stats.entries == len(files)
    for name, body in files.items():
        assert (tmp_path / name).read_bytes() == body


def _put(store: LocalStore, data: bytes, media_type: str) -> Descriptor:
    digest = Digest.from_bytes(data)
    with store.open_writer(f"t-{digest.hex}", total=len(data)) as w:
        w.write(data)
        w.commit(len(data), digest)
    return Descriptor(media_type, digest, len(data))


def _layer(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, body in entries:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def test_large_layer_digest_and_size_come_from_the_read_ahead(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "content", MemoryLabelStore())
    raw = _layer([(f"d/f{i}", os.urandom(300_000)) for i in range(60)]) + b"\0" * 10_000
    desc = _put(store, zstandard.ZstdCompressor().compress(raw), mt.OCI_LAYER_ZSTD)
    target = tmp_path / "t"
    target.mkdir()
    applied = WalkingDiffer(store).apply(desc, [Mount("bind", str(target), ["rbind", "rw"])])
    assert str(applied.digest) == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert applied.size == len(raw)
    assert len(os.listdir(target / "d")) == 60
    assert _reader_threads() == []


def test_hostile_entry_early_in_a_large_layer_stops_the_read_ahead(tmp_path: Path) -> None:
    # The extractor fails on the first entry while the read-ahead thread is
    # still far from the end (blocked on a full queue): it must be stopped.
    store = LocalStore(tmp_path / "content", MemoryLabelStore())
    raw = _layer([("../escape", b"x")] + [(f"f{i}", os.urandom(1 << 20)) for i in range(24)])
    desc = _put(store, gzip.compress(raw, compresslevel=1), mt.OCI_LAYER_GZIP)
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(errdefs.InvalidArgument, match="escape"):
        WalkingDiffer(store).apply(desc, [Mount("bind", str(target), ["rbind", "rw"])])
    assert _reader_threads() == []


def test_corrupt_zstd_is_invalid_argument(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "content", MemoryLabelStore())
    data = zstandard.ZstdCompressor().compress(_layer([("a", os.urandom(2 << 20))]))
    broken = data[:1000] + bytes(b ^ 0x5A for b in data[1000:])
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(errdefs.InvalidArgument, match="corrupt or truncated compressed data"):
        WalkingDiffer(store).apply(
            _put(store, broken, mt.OCI_LAYER_ZSTD),
            [Mount("bind", str(target), ["rbind", "rw"])],
        )
    assert _reader_threads() == []
