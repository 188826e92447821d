"""What import and export need of a content store, and the daemon-side adapter.

:class:`ArchiveStore` is the slice of :class:`berth.core.content.Store` the
archive code uses, so three very different stores fit it: a plain
:class:`~berth.core.content.LocalStore` (tests, tools), :class:`NamespacedStore`
over the daemon's metadata :class:`~berth.core.metadata.content.ContentStore`,
and the SDK's adapter over the gRPC Content service
(``berth.client._content_store``). All calls block; async callers run the
archive functions in a thread.

Leases are not part of the content-store interface (containerd carries them
in the request context). A store that can write under a lease offers
:meth:`LeaseScoped.with_lease`, returning a view whose writes the lease holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from berth import errdefs
from berth.core.content import Descriptor, Digest, Info, ReaderAt

if TYPE_CHECKING:
    from berth.core.metadata.content import ContentStore, NamespacedWriter


class IngestWriter(Protocol):
    """The part of :class:`berth.core.content.Writer` the archive code drives."""

    def write(self, data: bytes | bytearray | memoryview) -> int: ...

    def commit(
        self,
        size: int = 0,
        expected: Digest | str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Digest:
        """Publish the ingest; AlreadyExists when the blob is already there."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class ArchiveStore(Protocol):
    """A content store as import and export use it (see the module docstring)."""

    def info(self, digest: Digest) -> Info:
        """Raises NotFound if absent."""
        ...

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Set labels (``labels.<key>`` field paths). Raises NotFound."""
        ...

    def walk(
        self, fn: Callable[[Info], None], filter_fn: Callable[[Info], bool] | None = None
    ) -> None: ...

    def reader_at(self, target: Digest) -> ReaderAt:
        """Raises NotFound if absent; the caller closes the reader."""
        ...

    def open_writer(
        self, ref: str, *, total: int = 0, expected: Digest | None = None
    ) -> IngestWriter:
        """Raises AlreadyExists when ``expected`` is already stored (and, for a
        leased store, adds it to the lease first), Unavailable if ``ref`` is locked."""
        ...

    def abort(self, ref: str) -> None:
        """Raises NotFound if there is no such ingest."""
        ...


@runtime_checkable
class LeaseScoped(Protocol):
    """A store that can write under a lease (see the module docstring)."""

    def with_lease(self, lease: str) -> ArchiveStore: ...


class NamespacedStore:
    """One namespace of the daemon's metadata content store, as an :class:`ArchiveStore`.

    What berthd's own import/export (the transfer service) hands to
    :func:`berth.core.archive.import_archive`: ``NamespacedStore(md.content, ns)``.
    Writes are held by ``lease`` when one is given (or bound later with
    :meth:`with_lease`).
    """

    def __init__(self, content: ContentStore, namespace: str, *, lease: str | None = None) -> None:
        self.content = content
        self.namespace = namespace
        self.lease = lease

    def with_lease(self, lease: str) -> NamespacedStore:
        return NamespacedStore(self.content, self.namespace, lease=lease)

    def info(self, digest: Digest) -> Info:
        return self.content.info(self.namespace, digest)

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        return self.content.update(self.namespace, info.digest, info.labels, fieldpaths)

    def walk(
        self, fn: Callable[[Info], None], filter_fn: Callable[[Info], bool] | None = None
    ) -> None:
        for info in self.content.list(self.namespace):
            if filter_fn is None or filter_fn(info):
                fn(info)

    def reader_at(self, target: Descriptor | Digest) -> ReaderAt:
        digest = target.digest if isinstance(target, Descriptor) else target
        return self.content.reader_at(self.namespace, digest)

    def open_writer(
        self, ref: str, *, total: int = 0, expected: Digest | None = None
    ) -> NamespacedWriter:
        return self.content.writer(
            self.namespace, ref, total=total, expected=expected, lease=self.lease
        )

    def abort(self, ref: str) -> None:
        self.content.abort(self.namespace, ref, lease=self.lease)


def leased(store: ArchiveStore, lease: str | None) -> ArchiveStore:
    """``store`` bound to ``lease`` (unchanged when ``lease`` is None).

    Raises InvalidArgument when a lease is asked of a store that has none.
    """
    if lease is None:
        return store
    if not isinstance(store, LeaseScoped):
        raise errdefs.InvalidArgument(
            f"lease {lease!r} given, but {type(store).__name__} cannot hold writes under a lease"
        )
    return store.with_lease(lease)


def read_all(store: ArchiveStore, digest: Digest, limit: int, what: str) -> bytes:
    """A whole (small) blob. NotFound if absent; InvalidArgument if over ``limit``."""
    with store.reader_at(digest) as ra:
        if ra.size > limit:
            raise errdefs.InvalidArgument(
                f"{what} {digest} is {ra.size} bytes, over the {limit} byte limit"
            )
        return b"".join(ra.iter_chunks())


def iter_blob(store: ArchiveStore, digest: Digest, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Stream a blob in chunks; the reader is closed when the iterator ends."""
    with store.reader_at(digest) as ra:
        yield from ra.iter_chunks(chunk_size=chunk)
