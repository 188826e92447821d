"""Streaming helpers on top of a :class:`~berth.core.content.store.Store`.

:func:`copy_into` is the Python counterpart of containerd's
``content.WriteBlob``/``content.Copy``: it fills an ingest from a byte source,
resuming where a previous attempt stopped, and commits with verification.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol, runtime_checkable

from berth import errdefs
from berth.core.content.errors import ShortRead
from berth.core.content.model import Descriptor
from berth.core.content.store import Store, Writer

_CHUNK = 1 << 20


@runtime_checkable
class SupportsRead(Protocol):
    """A binary stream: file objects, ``httpx`` raw streams and the like."""

    def read(self, n: int = -1, /) -> bytes: ...


#: Anything :func:`copy_into` can consume: a readable stream or an iterable of
#: byte chunks (e.g. ``response.iter_bytes()``).
Source = SupportsRead | Iterable[bytes]
#: Opens the source positioned at a byte offset (an HTTP Range request, say).
OpenAt = Callable[[int], Source]


def open_writer_waiting(
    store: Store,
    ref: str,
    *,
    total: int = 0,
    expected: Descriptor | None = None,
    timeout: float | None = None,
) -> Writer:
    """``store.open_writer`` that waits, with jittered backoff, while the ref is locked.

    ``timeout`` None waits indefinitely (as containerd's ``OpenWriter`` does
    until its context ends); otherwise the last Unavailable is re-raised once
    it elapses. Other errors (AlreadyExists included) propagate at once.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.001
    digest = expected.digest if expected is not None else None
    while True:
        try:
            return store.open_writer(ref, total=total, expected=digest)
        except errdefs.Unavailable:
            if deadline is not None and time.monotonic() >= deadline:
                raise
        # Jitter keeps a crowd of waiters from retrying in lockstep.
        pause = random.uniform(0, delay)
        if deadline is not None:
            pause = max(0.0, min(pause, deadline - time.monotonic()))
        time.sleep(pause)
        delay = min(delay * 2, 0.5)


def copy_into(
    store: Store,
    ref: str,
    reader: Source | None,
    expected: Descriptor,
    *,
    open_at: OpenAt | None = None,
    labels: Mapping[str, str] | None = None,
    lock_timeout: float | None = None,
    chunk_size: int = _CHUNK,
) -> bool:
    """Write a blob from ``reader`` into ``store`` under ``ref`` and commit it.

    Returns True if this call committed the blob, False if it was already
    present (then ``reader`` is not consumed).

    Resuming: if the ingest already holds ``k`` bytes, the source is wanted
    from offset ``k``: ``open_at(k)`` when given (the returned source is
    closed afterwards if it has ``close``), else ``reader.seek(k)`` when it is
    seekable, else the first ``k`` bytes of ``reader`` are read and dropped.
    ``reader`` may be None only when ``open_at`` is given (``open_at(0)`` is
    then used for a fresh ingest too). ``reader`` itself is never closed.

    Verification: size (when ``expected.size > 0``) and digest. On a mismatch
    the ingest is discarded, because resuming bad bytes could never succeed,
    and FailedPrecondition ("unexpected commit size/digest") is raised.

    Raises:
        ShortRead: the source ended early; the bytes so far stay in the
            ingest and a retry resumes after them.
        FailedPrecondition: size or digest mismatch (ingest discarded).
        Unavailable: the ref stayed locked for ``lock_timeout`` seconds.
        InvalidArgument: neither ``reader`` nor ``open_at`` given.
    """
    if reader is None and open_at is None:
        raise errdefs.InvalidArgument("copy_into needs a reader or an open_at callable")
    if chunk_size <= 0:
        raise errdefs.InvalidArgument(f"invalid chunk size {chunk_size}")
    size = expected.size
    try:
        writer = open_writer_waiting(
            store, ref, total=size, expected=expected, timeout=lock_timeout
        )
    except errdefs.AlreadyExists:
        return False

    with writer:
        offset = writer.status().offset
        if size > 0 and offset > size:
            # Longer than the blob can be: the ingest is garbage.
            writer.truncate(0)
            offset = 0
        if size <= 0 or offset < size:
            _fill(writer, reader, open_at, offset, size, chunk_size)

        written = writer.status().offset
        if size > 0 and written < size:
            raise ShortRead(
                f"ref {ref}: source ended after {written} of {size} bytes (unexpected EOF)"
            )
        actual = writer.digest()
        bad_size = size > 0 and written != size
        if bad_size or actual != expected.digest:
            # Empty the ingest while still holding the lock, so a resume can
            # never continue from these bytes, then remove it.
            writer.truncate(0)
            writer.close()
            with contextlib.suppress(errdefs.NotFound):
                store.abort(ref)
            if bad_size:
                raise errdefs.FailedPrecondition(
                    f"unexpected commit size {written}, expected {size}"
                )
            raise errdefs.FailedPrecondition(
                f"unexpected commit digest {actual}, expected {expected.digest}"
            )
        try:
            writer.commit(size, expected.digest, labels)
        except errdefs.AlreadyExists:
            return False  # someone else committed the same content first
        return True


def _fill(
    writer: Writer,
    reader: Source | None,
    open_at: OpenAt | None,
    offset: int,
    size: int,
    chunk_size: int,
) -> None:
    """Stream the source, from ``offset``, into ``writer``."""
    opened: Source | None = None
    skip = 0
    if offset > 0 and open_at is not None:
        opened = source = open_at(offset)
    elif reader is None:
        # copy_into guarantees open_at here, and offset is 0 (handled above otherwise).
        assert open_at is not None
        opened = source = open_at(0)
    else:
        source = reader
        if offset > 0 and not _seek(source, offset):
            skip = offset
    try:
        chunks = _chunks(source, chunk_size)
        if skip:
            chunks = _skip(chunks, skip, writer.ref)
        for chunk in chunks:
            writer.write(chunk)
            # A source longer than announced: stop reading, the size check fails.
            if 0 < size < writer.status().offset:
                break
    finally:
        close = getattr(opened, "close", None)
        if callable(close):
            close()


def _seek(source: Source, offset: int) -> bool:
    seekable = getattr(source, "seekable", None)
    seek = getattr(source, "seek", None)
    if callable(seekable) and callable(seek) and seekable():
        seek(offset)
        return True
    return False


def _chunks(source: Source, chunk_size: int) -> Iterator[bytes]:
    if isinstance(source, SupportsRead):
        while True:
            chunk = source.read(chunk_size)
            if not chunk:
                return
            yield chunk
    else:
        for chunk in source:
            if chunk:
                yield chunk


def _skip(chunks: Iterator[bytes], n: int, ref: str) -> Iterator[bytes]:
    """Drop the first ``n`` bytes of a chunk stream."""
    remaining = n
    for chunk in chunks:
        if remaining >= len(chunk):
            remaining -= len(chunk)
            continue
        yield chunk[remaining:] if remaining else chunk
        remaining = 0
    if remaining:
        raise ShortRead(f"ref {ref}: source ended while skipping to resume offset {n}")
