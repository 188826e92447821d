"""The "walking" differ: layers from the content store onto mounts, and back.

:class:`WalkingDiffer` implements :class:`berth.core.diff.Differ` for one
namespace's content (any :class:`berth.core.content.Store`; berthd passes a
:class:`~berth.core.diff.content.NamespacedStore` bound to the request's
namespace and lease). It is what containerd's ``walking`` diff plugin is:
``diff/apply`` for Apply, ``diff/walking`` for Compare.

Where an apply goes, following containerd's ``diff/apply`` on Linux:

* one ``overlay`` mount with an ``upperdir``: straight into the upper
  directory, with overlay whiteouts, resolving paths through the lowerdirs;
* one read-write ``bind`` mount: straight into its source directory (the
  first layer of an overlayfs chain, or a native snapshot), skipping a
  mount/unmount pair that would only add latency;
* anything else: mounted on a temporary directory, with real deletions;
* no mounts at all: nothing is written, but the stream is still read and
  hashed, so the result (the diff ID) is the same.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import queue
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, cast

from berth import errdefs
from berth.core.content import Descriptor, Digester, Store
from berth.core.content.digest import Digest
from berth.core.diff import UNCOMPRESSED_LABEL, Differ, ProgressFn
from berth.core.diff.archive import ApplyOptions, Whiteouts, apply_tar
from berth.core.diff.changes import write_diff
from berth.core.diff.content import ReaderStream
from berth.core.images import compression
from berth.core.images import mediatypes as mt
from berth.core.mount import Mount
from berth.core.mountutil import with_temp_mount

_READ = 1 << 20
_AHEAD = 8  # blocks of _READ bytes the pump may run ahead of the extractor
_PROGRESS_EVERY = 4 << 20

#: Media types :meth:`WalkingDiffer.compare` can produce.
DIFF_MEDIA_TYPES = (mt.OCI_LAYER, mt.OCI_LAYER_GZIP, mt.OCI_LAYER_ZSTD)


def _codec_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError, zlib.error]
    with contextlib.suppress(ImportError):
        from isal import isal_zlib

        errors.append(cast(type[BaseException], isal_zlib.error))
    with contextlib.suppress(ImportError):
        import zstandard

        errors.append(zstandard.ZstdError)
    return tuple(errors)


_CODEC_ERRORS = _codec_errors()


class _HashingReader(io.RawIOBase):
    """The inflated tar, read ahead on a thread of its own, hashed and counted.

    The extractor's thread is the one that parses headers and hands files to
    the creators; every millisecond it spends elsewhere delays them. So a
    pump thread pulls 1 MiB blocks from the decompressor (so inflating, which
    releases the GIL in isal and zstandard, runs on that thread), feeds them
    to SHA-256 (which releases the GIL on blocks this size too) and queues
    them, at most ``_AHEAD`` blocks ahead. Codec failures become
    InvalidArgument naming the layer, raised to the reader.

    :meth:`close` stops the pump and waits for it, so the caller may close
    the decompressor afterwards.
    """

    def __init__(self, inner: IO[bytes], what: str, on_progress: ProgressFn | None) -> None:
        self._inner = inner
        self._what = what
        self._progress = on_progress
        self._next_report = _PROGRESS_EVERY
        self.digester = Digester()
        self.count = 0  # bytes read from the decompressor (pump thread)
        self._consumed = 0  # bytes handed to the reader (reader thread)
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(_AHEAD)
        self._stop = threading.Event()
        self._buf = b""
        self._end: BaseException | bool | None = False  # False: not at the end yet
        self._thread = threading.Thread(target=self._pump, name="berth-diff-read", daemon=True)
        self._thread.start()

    def readable(self) -> bool:
        return True

    def _fail(self, exc: BaseException) -> errdefs.InvalidArgument:
        return errdefs.InvalidArgument(
            f"failed to read layer {self._what}: corrupt or truncated compressed data"
            f" ({type(exc).__name__}: {exc}): invalid argument"
        )

    def _put(self, item: bytes | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _pump(self) -> None:
        end: BaseException | None = None
        try:
            while not self._stop.is_set():
                data = self._inner.read(_READ)
                if not data:
                    break
                self.digester.update(data)
                self.count += len(data)
                if not self._put(data):
                    return
        except errdefs.BerthError as exc:
            end = exc
        except _CODEC_ERRORS as exc:
            end = self._fail(exc)
        except BaseException as exc:  # handed to the reader, who decides
            end = exc
        self._put(end)

    def _next_block(self) -> bytes:
        if self._end is not False:
            if isinstance(self._end, BaseException):
                raise self._end
            return b""
        item = self._queue.get()
        if item is None or isinstance(item, BaseException):
            self._end = item
            return self._next_block()
        return item

    def read(self, size: int = -1) -> bytes:
        if not self._buf:
            self._buf = self._next_block()
        if size < 0 or size >= len(self._buf):
            data, self._buf = self._buf, b""
        else:
            data, self._buf = self._buf[:size], self._buf[size:]
        if data:
            self._consumed += len(data)
            if self._progress is not None and self._consumed >= self._next_report:
                self._next_report = self._consumed + _PROGRESS_EVERY
                self._progress(self._consumed)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read to the end (trailing bytes count towards the diff ID too)."""
        while self.read(_READ):
            pass
        if self._progress is not None:
            self._progress(self._consumed)

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            # Unblock a pump waiting for room, then wait for it to let go of
            # the decompressor.
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
            self._thread.join()
        super().close()


def _overlay_dirs(options: Sequence[str]) -> tuple[str, list[str]]:
    upper = ""
    lowers: list[str] = []
    for opt in options:
        if opt.startswith("upperdir="):
            upper = opt[len("upperdir=") :]
        elif opt.startswith("lowerdir="):
            lowers = opt[len("lowerdir=") :].split(":")
    return upper, lowers


@contextlib.contextmanager
def _target(mounts: Sequence[Mount]) -> Iterator[tuple[str, ApplyOptions]]:
    """Where to extract for ``mounts``, and how (see the module notes)."""
    if len(mounts) == 1:
        m = mounts[0]
        if m.type == "overlay":
            upper, lowers = _overlay_dirs(m.options)
            if upper and os.path.isabs(upper) and all(os.path.isabs(p) for p in lowers):
                yield upper, ApplyOptions(whiteouts=Whiteouts.OVERLAY, lowers=tuple(lowers))
                return
        elif m.type == "bind" and "ro" not in m.options and not m.target:
            if os.path.isdir(m.source):
                yield m.source, ApplyOptions()
                return
    with with_temp_mount(mounts) as root:
        yield str(root), ApplyOptions()


def unique_ref() -> str:
    """A content ref nobody else will pick, in containerd's style."""
    return f"{time.time_ns()}-{base64.urlsafe_b64encode(secrets.token_bytes(3)).decode()}"


class _Sink(io.RawIOBase):
    """Hashes and counts the uncompressed tar on its way to ``out``."""

    def __init__(self, out: Callable[[bytes], object]) -> None:
        self._out = out
        self.digester = Digester()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        b = bytes(data)
        self.digester.update(b)
        self._out(b)
        return len(b)


class _WriterFile(io.RawIOBase):
    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        b = bytes(data)
        self._write(b)
        return len(b)


class WalkingDiffer(Differ):
    """The walking differ over ``store`` (one namespace's content).

    ``workers`` and ``allow_devices`` go to the extractor
    (:class:`~berth.core.diff.archive.ApplyOptions`).
    """

    def __init__(self, store: Store, *, workers: int = 4, allow_devices: bool = True) -> None:
        self.store = store
        self.workers = workers
        self.allow_devices = allow_devices

    # -- apply -----------------------------------------------------------------

    def apply(
        self,
        desc: Descriptor,
        mounts: Sequence[Mount],
        *,
        on_progress: ProgressFn | None = None,
    ) -> Descriptor:
        try:
            mt.layer_compression(desc.media_type)
        except errdefs.NotImplemented:
            # containerd wraps a plain error here, so the code is UNKNOWN.
            raise errdefs.BerthError(
                f"failed to get stream processor for {desc.media_type}: no processor for media-type"
            ) from None
        try:
            ra = self.store.reader_at(desc)
        except errdefs.NotFound as exc:
            raise errdefs.NotFound(f"failed to get reader from content store: {exc}") from None
        # Always sniff, as containerd does: Docker's "diff.tar" is often
        # gzip, and a mislabelled blob still applies.
        # threads=0: gzip inflates on the read-ahead thread below, as zstd
        # does, rather than on one more thread of isal's.
        src = compression.open_decompressed(
            io.BufferedReader(ReaderStream(ra), _READ), None, threads=0
        )
        reader = _HashingReader(src, str(desc.digest), on_progress)
        try:
            if mounts:
                with _target(mounts) as (root, opts):
                    opts = ApplyOptions(
                        whiteouts=opts.whiteouts,
                        lowers=opts.lowers,
                        allow_devices=self.allow_devices,
                        workers=self.workers,
                    )
                    apply_tar(cast(IO[bytes], reader), root, opts)
            # Trailing bytes after the end-of-archive marker are part of the
            # diff ID too.
            reader.drain()
        finally:
            reader.close()
            src.close()
        return Descriptor(
            media_type=mt.OCI_LAYER, digest=reader.digester.digest(), size=reader.count
        )

    # -- compare ---------------------------------------------------------------

    def compare(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        *,
        media_type: str = "",
        ref: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Descriptor:
        media_type = media_type or mt.OCI_LAYER_GZIP
        if media_type not in DIFF_MEDIA_TYPES:
            raise errdefs.NotImplemented(
                f"unsupported diff media type: {media_type}: not implemented"
            )
        if not upper:
            raise errdefs.InvalidArgument("no upper mounts to compare: invalid argument")
        with (
            with_temp_mount(lower, read_only=True) as lroot,
            with_temp_mount(upper, read_only=True) as uroot,
        ):
            return self._write(str(lroot), str(uroot), media_type, ref, dict(labels or {}))

    def _write(
        self, lower: str, upper: str, media_type: str, ref: str, labels: dict[str, str]
    ) -> Descriptor:
        new_ref = not ref
        ref = ref or unique_ref()
        w = self.store.open_writer(ref)
        committed = False
        try:
            if not new_ref:
                w.truncate(0)
            sink, closer = self._compressor(media_type, w.write)
            write_diff(lower, upper, cast(IO[bytes], sink))
            closer()
            if media_type != mt.OCI_LAYER:
                labels[UNCOMPRESSED_LABEL] = str(sink.digester.digest())
            digest = w.digest()
            try:
                w.commit(0, digest, labels)
            except errdefs.AlreadyExists:
                pass
            committed = True
        finally:
            if not committed:
                w.close()
                if new_ref:
                    with contextlib.suppress(errdefs.NotFound):
                        self.store.abort(ref)
        info = self.store.info(digest)
        if UNCOMPRESSED_LABEL in labels and UNCOMPRESSED_LABEL not in info.labels:
            info.labels[UNCOMPRESSED_LABEL] = labels[UNCOMPRESSED_LABEL]
            info = self.store.update(info, ["labels." + UNCOMPRESSED_LABEL])
        return Descriptor(media_type=media_type, digest=Digest.parse(digest), size=info.size)

    @staticmethod
    def _compressor(
        media_type: str, write: Callable[[bytes], object]
    ) -> tuple[_Sink, Callable[[], None]]:
        """A sink for the tar (hashing it) and how to flush it into ``write``."""
        if media_type == mt.OCI_LAYER:
            return _Sink(write), lambda: None
        if media_type == mt.OCI_LAYER_ZSTD:
            import zstandard

            zw = zstandard.ZstdCompressor(level=3).stream_writer(
                cast(IO[bytes], _WriterFile(write)), closefd=False
            )
            return _Sink(zw.write), lambda: zw.close()
        try:
            from isal import igzip

            gz: Any = igzip.IGzipFile(
                fileobj=_WriterFile(write), mode="wb", compresslevel=2, mtime=0
            )
        except ImportError:  # pragma: no cover - isal is a dependency
            import gzip

            gz = gzip.GzipFile(fileobj=_WriterFile(write), mode="wb", mtime=0)
        return _Sink(gz.write), lambda: gz.close()
