"""The content store interface: what the gRPC content service and metadata layer rely on.

A content store holds immutable blobs addressed by digest and the in-progress
writes ("ingests") that produce them. Everything here is blocking I/O; async
callers run it in an executor. Every error is a :mod:`berth.errdefs` class (or
:class:`~berth.core.content.errors.OutOfRange`), except unexpected operating
system failures, which surface as :class:`OSError`.

Digest arguments accept a :class:`Digest` or its string form; strings are
parsed first, so any call taking a digest can raise ``InvalidArgument``.

Labels are not a concern of the blob layer itself: containerd stores them in
its metadata database, which wraps the store. :class:`LabelStore` is the thin
seam for that; a store built without one reports empty labels and refuses
:meth:`Store.update`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from berth.core.content.digest import Digest
from berth.core.content.model import Descriptor, Info, Status

#: Callback for :meth:`Store.walk`. An exception raised by it stops the walk
#: and propagates to the caller.
WalkFn = Callable[[Info], None]
#: Predicate selecting blobs in :meth:`Store.walk`.
InfoFilter = Callable[[Info], bool]
#: Predicate selecting ingests in :meth:`Store.list_statuses`.
StatusFilter = Callable[[Status], bool]


@runtime_checkable
class ReaderAt(Protocol):
    """Random access to one committed blob. Safe to share between threads."""

    @property
    def size(self) -> int:
        """Size of the blob in bytes, fixed when the reader was opened."""
        ...

    def read_at(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes starting at ``offset``; fewer only at end of blob.

        Raises InvalidArgument for a negative offset or ``n``. Cost: one
        positioned read (no shared file position, hence thread-safe).
        """
        ...

    def iter_chunks(
        self, offset: int = 0, size: int = -1, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        """Yield the range ``[offset, offset+size)`` (to the end if ``size < 0``) in chunks.

        Meant for streaming large blobs without holding them in memory.
        """
        ...

    def close(self) -> None:
        """Release the file handle. Idempotent."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class Writer(Protocol):
    """An exclusive handle on one ingest, identified by its ref.

    Holding a writer holds the ref's lock; :meth:`close` or :meth:`commit`
    release it. Not meant to be driven from several threads at once, but calls
    are serialised internally so doing so cannot corrupt the ingest.
    """

    @property
    def ref(self) -> str: ...

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data`` at the current offset and return ``len(data)``.

        Raises FailedPrecondition if the writer is closed. Cost: one
        unbuffered write plus hashing; no fsync.
        """
        ...

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write with an explicit offset, with containerd's Write-RPC semantics.

        ``offset`` equal to the current offset appends; ``offset == 0`` on a
        non-empty ingest truncates it to empty first (a client restarting an
        upload). Any other offset raises OutOfRange ("write @N must occur at
        current offset M"); negative raises InvalidArgument. ``data`` may be
        empty, so ``write_at(0, b"")`` alone truncates, exactly as a containerd
        WRITE/COMMIT message with offset 0 does.
        """
        ...

    def truncate(self, size: int) -> None:
        """Cut the ingest back to ``size`` bytes (``0 <= size <= offset``).

        Raises InvalidArgument otherwise. Cost: re-hashes the first ``size``
        bytes (containerd supports only ``size == 0``; this is a superset).
        """
        ...

    def digest(self) -> Digest:
        """Digest of the bytes written so far. Cheap (copies the hash state)."""
        ...

    def status(self) -> Status:
        """In-memory status of this writer. Cheap; never raises."""
        ...

    def commit(
        self,
        size: int = 0,
        expected: Digest | str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Digest:
        """Verify the ingest and publish it as a blob; returns its digest.

        ``size`` <= 0 and ``expected`` None fall back to the total and digest
        given to ``open_writer``; when those are unknown too, that check is
        skipped. The writer is closed (lock released) whatever the outcome.

        Raises:
            FailedPrecondition: the writer was already closed; or
                "unexpected commit size" / "unexpected commit digest": nothing
                is published and the ingest is kept intact, so it can be
                resumed, inspected or aborted (containerd behaves the same).
            AlreadyExists: a blob with this digest is already present; the
                ingest is removed, as in containerd.
            NotFound: the ingest was aborted underneath the writer.

        Cost: fsync of the data, an atomic rename into ``blobs/``, an
        fsync of the blob directory. If ``expected`` uses a different
        algorithm than the writer hashed with, one extra read of the data.
        """
        ...

    def close(self) -> None:
        """Flush, persist ``updatedat`` and release the lock, keeping the ingest
        for later resumption. Idempotent. Cost: one fsync.
        """
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class Store(Protocol):
    """Blob storage plus ingest management (containerd's ``content.Store``)."""

    # -- blobs -------------------------------------------------------------

    def info(self, digest: Digest | str) -> Info:
        """Size, timestamps and labels of a blob.

        Raises NotFound if absent. Cost: one stat (+ a label-store lookup).
        """
        ...

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Replace labels: all of them (no fieldpaths, or ``"labels"``), or only
        the keys named ``"labels.<key>"`` (an empty value deletes the key).

        Raises FailedPrecondition if the store keeps no labels, NotFound if
        the blob is absent, InvalidArgument for any other fieldpath.
        """
        ...

    def walk(self, fn: WalkFn, filter_fn: InfoFilter | None = None) -> None:
        """Call ``fn`` for every blob (in digest order) that ``filter_fn`` accepts.

        Blobs deleted during the walk are skipped. Exceptions from ``fn``
        propagate and end the walk. Cost: a directory scan and one stat per blob.
        """
        ...

    def delete(self, digest: Digest | str) -> None:
        """Remove a blob. Readers already open keep working.

        Raises NotFound if absent. Cost: one unlink.
        """
        ...

    def reader_at(self, target: Descriptor | Digest | str) -> ReaderAt:
        """Open a blob for random reads; only the digest of a descriptor is used.

        Raises NotFound if absent. The caller must close the reader.
        """
        ...

    def read_blob(self, digest: Digest | str, offset: int = 0, size: int = -1) -> bytes:
        """Read ``size`` bytes (all remaining if ``size < 0``) from ``offset``.

        A range running past the end is clipped. Raises NotFound if absent,
        InvalidArgument for a negative offset, OutOfRange if ``offset`` is
        beyond the blob's size. Loads the range into memory: stream big
        blobs with :meth:`ReaderAt.iter_chunks` instead. (containerd's Read
        RPC treats size 0 as "to the end"; map that to -1.)
        """
        ...

    # -- ingests -----------------------------------------------------------

    def open_writer(
        self, ref: str, *, total: int = 0, expected: Digest | str | None = None
    ) -> Writer:
        """Start, or resume, the ingest named ``ref`` and lock it.

        ``total`` (<= 0: unknown) and ``expected`` are recorded and reported by
        :meth:`status`. Resuming re-hashes the existing data and continues at
        its end; if a different non-zero ``total`` was recorded, or the ingest's
        metadata is unreadable, the ingest restarts empty.

        Raises InvalidArgument for an empty ref or bad digest; Unavailable
        ("ref X locked ...") if another writer holds the ref (no waiting: retry
        with backoff if you want to wait); AlreadyExists if ``expected`` is
        already stored. Cost: a few small metadata files, plus reading the
        whole existing data when resuming.
        """
        ...

    def status(self, ref: str) -> Status:
        """Status of an ingest from disk, whether or not a writer holds it.

        Raises NotFound if there is no such ingest. Cost: a few small reads.
        """
        ...

    def list_statuses(self, filter_fn: StatusFilter | None = None) -> list[Status]:
        """Statuses of all ingests ``filter_fn`` accepts, ordered by ref.

        Ingests vanishing or half-created during the scan are skipped.
        """
        ...

    def abort(self, ref: str) -> None:
        """Discard an ingest and its data, even one a writer currently holds
        (that writer's commit then fails with NotFound).

        Raises NotFound if there is no such ingest.
        """
        ...


class LabelStore(Protocol):
    """Where a standalone store keeps mutable labels (containerd ``LabelStore``).

    Implementations must be thread-safe.
    """

    def get(self, digest: Digest) -> dict[str, str]:
        """All labels of ``digest`` (empty if none)."""
        ...

    def set(self, digest: Digest, labels: Mapping[str, str]) -> None:
        """Replace all labels of ``digest``."""
        ...

    def update(self, digest: Digest, labels: Mapping[str, str]) -> dict[str, str]:
        """Merge ``labels`` into those of ``digest``; an empty value removes the
        key. Returns the resulting labels."""
        ...
