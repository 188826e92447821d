"""One namespace's content, seen through the plain content-store interface.

The differ, the unpacker and the image walkers (``berth.core.images.walk``)
are written against :class:`berth.core.content.Store`, which has no notion of
namespaces; the metadata layer's :class:`~berth.core.metadata.content.ContentStore`
takes the namespace (and lease) on every call. :class:`NamespacedStore` binds
the two, so a blob written here is a resource of the lease and visible in the
namespace, exactly as if a client had written it over gRPC.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from berth.core.content import (
    Descriptor,
    Digest,
    Info,
    InfoFilter,
    ReaderAt,
    Status,
    StatusFilter,
    WalkFn,
    Writer,
)
from berth.core.metadata.content import ContentStore


class NamespacedStore:
    """A :class:`berth.core.content.Store` over ``namespace`` of ``store``.

    Every method costs what the matching :class:`ContentStore` method costs
    (a SQLite lookup plus the blob I/O) and raises what it raises.
    """

    def __init__(self, store: ContentStore, namespace: str, *, lease: str | None = None) -> None:
        self.store = store
        self.namespace = namespace
        self.lease = lease

    def info(self, digest: Digest | str) -> Info:
        return self.store.info(self.namespace, digest)

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        return self.store.update(self.namespace, info.digest, info.labels, fieldpaths)

    def walk(self, fn: WalkFn, filter_fn: InfoFilter | None = None) -> None:
        for info in self.store.list(self.namespace):
            if filter_fn is None or filter_fn(info):
                fn(info)

    def delete(self, digest: Digest | str) -> None:
        self.store.delete(self.namespace, digest, lease=self.lease)

    def reader_at(self, target: Descriptor | Digest | str) -> ReaderAt:
        digest = target.digest if isinstance(target, Descriptor) else target
        return self.store.reader_at(self.namespace, digest)

    def read_blob(self, digest: Digest | str, offset: int = 0, size: int = -1) -> bytes:
        with self.reader_at(digest) as ra:
            n = ra.size - offset if size < 0 else min(size, ra.size - offset)
            return ra.read_at(offset, max(n, 0))

    def open_writer(
        self, ref: str, *, total: int = 0, expected: Digest | str | None = None
    ) -> Writer:
        w: Any = self.store.writer(
            self.namespace, ref, total=total, expected=expected, lease=self.lease
        )
        return w  # NamespacedWriter implements the Writer protocol

    def status(self, ref: str) -> Status:
        return self.store.status(self.namespace, ref)

    def list_statuses(self, filter_fn: StatusFilter | None = None) -> list[Status]:
        return [
            s for s in self.store.list_statuses(self.namespace) if filter_fn is None or filter_fn(s)
        ]

    def abort(self, ref: str) -> None:
        self.store.abort(self.namespace, ref, lease=self.lease)


class ReaderStream(io.RawIOBase):
    """A sequential, read-only file object over a :class:`ReaderAt` (positioned
    reads, so it never disturbs other readers of the same blob)."""

    def __init__(self, ra: ReaderAt) -> None:
        self._ra = ra
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._ra.read_at(self._pos, len(view))
        n = len(data)
        view[:n] = data
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._ra.close()
        super().close()
