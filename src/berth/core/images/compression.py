"""Streaming decompression of layer blobs: gzip, zstd or none, declared or sniffed.

:func:`open_layer` is what an unpacker calls with a layer's blob stream and
media type; it returns a binary reader of the uncompressed tar. When the
media type does not say (Docker's ``...diff.tar`` is regularly used for gzip
data) the first bytes are sniffed, as containerd's ``DecompressStream`` does.

gzip goes through python-isal when it is installed: ``igzip_threaded``
inflates on a worker thread, so decompression overlaps with whatever the
caller does with the output (creating files, the slow part of unpacking on
this kind of machine), and isal's inflate is several times faster than
zlib's. Without isal the standard ``gzip`` module is used. zstd uses the
``zstandard`` package.
"""

from __future__ import annotations

import gzip
import io
from enum import StrEnum
from typing import IO, Any, cast

from berth import errdefs
from berth.core.content import ReaderAt, SupportsRead
from berth.core.images.mediatypes import LayerCompression, layer_compression

_GZIP_MAGIC = b"\x1f\x8b\x08"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SNIFF = 4


class Compression(StrEnum):
    UNCOMPRESSED = "uncompressed"
    GZIP = "gzip"
    ZSTD = "zstd"


def detect_compression(head: bytes) -> Compression:
    """Guess from the first bytes of a stream (4 suffice)."""
    if head.startswith(_GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(_ZSTD_MAGIC):
        return Compression.ZSTD
    return Compression.UNCOMPRESSED


class _Replay(io.RawIOBase):
    """A read-only stream that yields ``head`` and then the rest of ``source``."""

    def __init__(self, head: bytes, source: SupportsRead) -> None:
        self._head = head
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._source.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            close = getattr(self._source, "close", None)
            if callable(close):
                close()
        super().close()


class ReaderAtStream(io.RawIOBase):
    """A sequential, readable view of a content store ``ReaderAt`` (e.g. a layer
    blob), for :func:`open_layer`. Closing it closes the reader."""

    def __init__(self, reader: ReaderAt, offset: int = 0) -> None:
        self._reader = reader
        self._pos = offset

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._reader.read_at(self._pos, len(view))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
        super().close()


def _read_head(source: SupportsRead) -> bytes:
    head = b""
    while len(head) < _SNIFF:
        chunk = source.read(_SNIFF - len(head))
        if not chunk:
            break
        head += chunk
    return head


def open_decompressed(
    source: SupportsRead,
    compression: Compression | None = None,
    *,
    threads: int = 1,
) -> IO[bytes]:
    """A binary reader of ``source`` decompressed.

    ``compression`` None sniffs the first bytes. ``threads`` > 0 inflates gzip
    on that many worker threads (isal only; 0 inflates on the reading
    thread). Closing the reader closes ``source``. Corrupt data surfaces from
    ``read`` as the codec's exception (``OSError``/``EOFError``/
    ``zstandard.ZstdError``); :func:`open_layer` callers usually let it end
    the unpack.
    """
    head = b""
    if compression is None:
        head = _read_head(source)
        compression = detect_compression(head)
    # Always a RawIOBase: the codecs want readinto, which plain sources lack.
    raw = _Replay(head, source)
    if compression is Compression.UNCOMPRESSED:
        return io.BufferedReader(raw)
    if compression is Compression.GZIP:
        return _open_gzip(raw, threads)
    import zstandard

    # read_across_frames: a layer may be several concatenated frames.
    reader = zstandard.ZstdDecompressor().stream_reader(
        cast(IO[bytes], raw), read_across_frames=True, closefd=True
    )
    return cast(IO[bytes], io.BufferedReader(cast(Any, reader)))


def _open_gzip(raw: SupportsRead, threads: int) -> IO[bytes]:
    try:
        from isal import igzip, igzip_threaded
    except ImportError:  # pragma: no cover - isal is a declared dependency
        return cast(IO[bytes], _Closing(gzip.GzipFile(fileobj=cast(Any, raw), mode="rb"), raw))
    if threads > 0:
        return cast(IO[bytes], _Closing(igzip_threaded.open(raw, "rb", threads=threads), raw))
    return cast(IO[bytes], _Closing(igzip.IGzipFile(fileobj=cast(Any, raw), mode="rb"), raw))


class _Closing(io.BufferedIOBase):
    """Delegates reads to ``inner`` and, on close, closes ``inner`` and ``source``
    (gzip readers leave a passed-in file object open)."""

    def __init__(self, inner: Any, source: SupportsRead) -> None:
        self._inner = inner
        self._source = source

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._inner.read(-1 if size is None else size)
        return data

    def read1(self, size: int = -1) -> bytes:
        read1 = getattr(self._inner, "read1", None)
        data: bytes = read1(size) if callable(read1) else self._inner.read(size)
        return data

    def readinto(self, buffer: Any) -> int:
        n: int = self._inner.readinto(buffer)
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._inner.close()
            finally:
                close = getattr(self._source, "close", None)
                if callable(close):
                    close()
        super().close()


def compression_of_media_type(media_type: str) -> Compression | None:
    """The compression a layer media type declares; None means "sniff it".

    Raises NotImplemented for a type that is no layer, and InvalidArgument for
    a wrapped layer type (e.g. encrypted) that this package cannot read.
    """
    declared = layer_compression(media_type)
    if declared is None:
        raise errdefs.InvalidArgument(
            f"layer media type {media_type!r} is wrapped (e.g. encrypted) and cannot be decompressed"
        )
    if declared is LayerCompression.UNKNOWN:
        return None
    return Compression(declared.value)


def open_layer(source: SupportsRead, media_type: str, *, threads: int = 1) -> IO[bytes]:
    """The uncompressed tar stream of a layer blob of ``media_type``.

    Raises as :func:`compression_of_media_type` does for unsupported types.
    """
    return open_decompressed(source, compression_of_media_type(media_type), threads=threads)
