"""Filesystem-backed content store, the equivalent of containerd's ``content/local``.

On-disk layout under ``root`` (identical to containerd's, so either daemon can
read a store the other wrote; ``expected`` is Berth's only addition)::

    blobs/<algorithm>/<hex>        committed blob, read-only, named by its digest
    ingest/<sha256-hex-of-ref>/    one directory per in-progress write
        data                       the bytes written so far
        ref                        the ref, verbatim (the dir name is its hash)
        startedat                  RFC 3339 timestamp (UTC, microseconds)
        updatedat                  RFC 3339 timestamp, refreshed on close
        total                      decimal expected size; absent when unknown
        expected                   expected digest; absent when unknown

Crash safety: data only reaches ``blobs/`` by an fsync followed by an atomic
rename, and the directory is fsynced afterwards, so a crash leaves either a
complete blob or an ingest, never a partial blob. Metadata files are written to
a temporary name, fsynced and renamed. A leftover ingest is resumed by the next
``open_writer`` with the same ref, which re-hashes its data; an ingest whose
metadata is incomplete (a crash while it was being created) starts over.

Concurrency: one writer per ref, enforced by an in-process lock table keyed by
(real path of root, ref), so even two ``LocalStore`` objects on the same root
exclude each other. Locks are not shared across processes, as in containerd:
one daemon owns a root. Readers use positioned reads and need no locks.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Self

from berth import errdefs
from berth.core.content.digest import CANONICAL, Algorithm, Digest, Digester
from berth.core.content.errors import OutOfRange
from berth.core.content.model import Descriptor, Info, Status
from berth.core.content.store import InfoFilter, LabelStore, StatusFilter, WalkFn

if TYPE_CHECKING:
    from berth.core.content.store import ReaderAt, Store, Writer

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_TMP_SUFFIX = ".tmp"

# ---------------------------------------------------------------------------
# Ref locks


@dataclass(frozen=True, slots=True)
class _Lock:
    since: datetime
    since_monotonic: float


_locks: dict[tuple[str, str], _Lock] = {}
_locks_mu = threading.Lock()

# Serialises the "does the blob exist? then rename" step of commits in this
# process, so two writers of the same content cannot both report success.
_publish_mu = threading.Lock()


def _try_lock(root: str, ref: str) -> None:
    with _locks_mu:
        held = _locks.get((root, ref))
        if held is not None:
            # The age tells a stuck writer (long) from plain contention (short).
            age = time.monotonic() - held.since_monotonic
            raise errdefs.Unavailable(
                f"ref {ref} locked for {age:.3f}s (since {held.since.isoformat()})"
            )
        _locks[(root, ref)] = _Lock(datetime.now(UTC), time.monotonic())


def _unlock(root: str, ref: str) -> None:
    with _locks_mu:
        _locks.pop((root, ref), None)


# ---------------------------------------------------------------------------
# Small file helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _from_ns(ns: int) -> datetime:
    seconds, rest = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=rest // 1000)


def _format_time(t: datetime) -> str:
    # RFC 3339 in UTC; Go's time.UnmarshalText (containerd) accepts it.
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Go writes RFC 3339 with up to nine fractional digits; Python keeps six.
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")


class _CorruptIngest(Exception):
    """Ingest metadata exists but cannot be understood."""


def _parse_time(text: str) -> datetime:
    m = _RFC3339.fullmatch(text.strip())
    if m is None:
        raise _CorruptIngest(f"bad timestamp {text!r}")
    base, frac, zone = m.groups()
    micro = (frac or "0")[:6].ljust(6, "0")
    zone = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(f"{base}.{micro}{zone}").astimezone(UTC)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + _TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _write_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
    """pwrite all of ``data`` at ``offset``; returns bytes written."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_fd(fd: int, algorithm: Algorithm, length: int) -> Digester:
    """Digest of the first ``length`` bytes of ``fd``, read with pread."""
    digester = Digester(algorithm)
    pos = 0
    while pos < length:
        chunk = os.pread(fd, min(_CHUNK, length - pos), pos)
        if not chunk:
            break
        digester.update(chunk)
        pos += len(chunk)
    return digester


@dataclass(frozen=True, slots=True)
class _IngestMeta:
    ref: str
    started_at: datetime
    updated_at: datetime
    total: int
    expected: Digest | None


# ---------------------------------------------------------------------------
# Reader


class LocalReaderAt:
    """A committed blob opened for positioned reads (see :class:`ReaderAt`)."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd: int | None = fd
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def _handle(self) -> int:
        fd = self._fd
        if fd is None:
            raise errdefs.FailedPrecondition("reader is closed")
        return fd

    def read_at(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0:
            raise errdefs.InvalidArgument(f"invalid read range: offset {offset}, length {n}")
        fd = self._handle()
        parts: list[bytes] = []
        remaining = n
        pos = offset
        # pread may return short counts; loop until satisfied or end of file.
        while remaining > 0:
            chunk = os.pread(fd, remaining, pos)
            if not chunk:
                break
            parts.append(chunk)
            pos += len(chunk)
            remaining -= len(chunk)
        return b"".join(parts)

    def iter_chunks(
        self, offset: int = 0, size: int = -1, chunk_size: int = _CHUNK
    ) -> Iterator[bytes]:
        if offset < 0:
            raise errdefs.InvalidArgument(f"invalid read offset {offset}")
        if chunk_size <= 0:
            raise errdefs.InvalidArgument(f"invalid chunk size {chunk_size}")
        end = self._size if size < 0 else min(self._size, offset + size)
        pos = offset
        while pos < end:
            chunk = self.read_at(pos, min(chunk_size, end - pos))
            if not chunk:
                return
            yield chunk
            pos += len(chunk)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Writer


class LocalWriter:
    """The writer returned by :meth:`LocalStore.open_writer` (see :class:`Writer`)."""

    def __init__(
        self,
        store: LocalStore,
        ref: str,
        path: str,
        fd: int,
        offset: int,
        total: int,
        expected: Digest | None,
        digester: Digester,
        started_at: datetime,
        updated_at: datetime,
    ) -> None:
        self._store = store
        self._ref = ref
        self._path = path
        self._fd: int | None = fd
        self._offset = offset
        self._total = total
        self._expected = expected
        self._digester = digester
        self._started_at = started_at
        self._updated_at = updated_at
        self._mu = threading.Lock()

    @property
    def ref(self) -> str:
        return self._ref

    def _handle(self) -> int:
        if self._fd is None:
            raise errdefs.FailedPrecondition(f"writer for ref {self._ref} is closed")
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> int:
        with self._mu:
            return self._write_locked(data)

    def _write_locked(self, data: bytes | bytearray | memoryview) -> int:
        fd = self._handle()
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                n = os.pwrite(fd, view[done:], self._offset + done)
                # Hash exactly what reached the file so that offset and digest
                # stay consistent even if a later pwrite fails (disk full).
                self._digester.update(view[done : done + n])
                done += n
        finally:
            self._offset += done
            if done:
                self._updated_at = _now()
        return done

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        with self._mu:
            self._handle()
            if offset < 0:
                raise errdefs.InvalidArgument(f"invalid write offset {offset}")
            if offset != self._offset:
                if offset != 0:
                    raise OutOfRange(f"write @{offset} must occur at current offset {self._offset}")
                # containerd's service restarts the upload on offset 0.
                self._truncate_locked(0)
            return self._write_locked(data)

    def truncate(self, size: int) -> None:
        with self._mu:
            self._handle()
            if size < 0 or size > self._offset:
                raise errdefs.InvalidArgument(
                    f"cannot truncate ref {self._ref} to {size}: current offset is {self._offset}"
                )
            self._truncate_locked(size)

    def _truncate_locked(self, size: int) -> None:
        fd = self._handle()
        os.ftruncate(fd, size)
        self._digester = _hash_fd(fd, self._digester.algorithm, size)
        self._offset = size
        self._updated_at = _now()

    def digest(self) -> Digest:
        with self._mu:
            return self._digester.digest()

    def status(self) -> Status:
        with self._mu:
            return Status(
                ref=self._ref,
                offset=self._offset,
                total=self._total,
                expected=self._expected,
                started_at=self._started_at,
                updated_at=self._updated_at,
            )

    def commit(
        self,
        size: int = 0,
        expected: Digest | str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Digest:
        with self._mu:
            fd = self._handle()
            published = False
            try:
                want_digest = Digest.parse(expected) if expected is not None else self._expected
                os.fsync(fd)
                actual_size = os.fstat(fd).st_size
                want_size = size if size > 0 else self._total
                if want_size > 0 and actual_size != want_size:
                    raise errdefs.FailedPrecondition(
                        f"unexpected commit size {actual_size}, expected {want_size}"
                    )
                digester = self._digester
                if want_digest is not None and want_digest.algorithm != digester.algorithm:
                    # The writer hashed with another algorithm; the only way
                    # to verify is to read the data once more.
                    digester = _hash_fd(fd, want_digest.algorithm, actual_size)
                dgst = digester.digest()
                if want_digest is not None and dgst != want_digest:
                    raise errdefs.FailedPrecondition(
                        f"unexpected commit digest {dgst}, expected {want_digest}"
                    )
                self._store._publish(self._path, self._ref, dgst, labels)
                published = True
                return dgst
            finally:
                # Commit always ends the writer, as in containerd; on failure
                # the ingest stays on disk for resume or abort.
                self._fd = None
                os.close(fd)
                if not published:
                    self._persist_updated_at()
                _unlock(self._store._lock_key, self._ref)

    def close(self) -> None:
        with self._mu:
            fd = self._fd
            if fd is None:
                return
            self._fd = None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
                self._persist_updated_at()
                _unlock(self._store._lock_key, self._ref)

    def _persist_updated_at(self) -> None:
        try:
            _write_atomic(
                os.path.join(self._path, "updatedat"), _format_time(self._updated_at).encode()
            )
        except FileNotFoundError:
            pass  # the ingest was aborted underneath us; nothing to record
        except OSError:
            # Only a timestamp: status() falls back to the data file's mtime.
            log.warning("could not record updatedat for ref %s", self._ref, exc_info=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Store


class LocalStore:
    """Content store rooted at a directory (see the module docstring for layout).

    ``label_store`` is optional: without it ``info`` reports no labels,
    ``commit`` ignores labels and ``update`` raises FailedPrecondition, which
    is how containerd runs its local store beneath the metadata database.
    """

    def __init__(self, root: str | os.PathLike[str], label_store: LabelStore | None = None) -> None:
        self._root = os.fspath(root)
        self._blobs = os.path.join(self._root, "blobs")
        self._ingest = os.path.join(self._root, "ingest")
        os.makedirs(self._blobs, exist_ok=True)
        os.makedirs(self._ingest, exist_ok=True)
        self._labels = label_store
        # Real path, so that two stores opened through different spellings of
        # the same directory share ref locks.
        self._lock_key = os.path.realpath(self._root)

    @property
    def root(self) -> str:
        return self._root

    # -- paths -------------------------------------------------------------

    def blob_path(self, digest: Digest | str) -> str:
        """Where the blob for ``digest`` lives (whether or not it exists)."""
        d = Digest.parse(digest)
        return os.path.join(self._blobs, d.algorithm.value, d.hex)

    def ingest_path(self, ref: str) -> str:
        """The ingest directory for ``ref``: a hash keeps names fixed-length and safe."""
        return os.path.join(self._ingest, hashlib.sha256(ref.encode()).hexdigest())

    # -- blobs -------------------------------------------------------------

    def _info_from_stat(self, digest: Digest, st: os.stat_result) -> Info:
        labels = self._labels.get(digest) if self._labels is not None else {}
        return Info(
            digest=digest,
            size=st.st_size,
            created_at=_from_ns(st.st_mtime_ns),
            updated_at=_from_ns(st.st_atime_ns),
            labels=labels,
        )

    def _stat_blob(self, digest: Digest) -> os.stat_result:
        try:
            return os.stat(self.blob_path(digest))
        except FileNotFoundError:
            raise errdefs.NotFound(f"content {digest}: not found") from None

    def info(self, digest: Digest | str) -> Info:
        d = Digest.parse(digest)
        return self._info_from_stat(d, self._stat_blob(d))

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        if self._labels is None:
            raise errdefs.FailedPrecondition("update not supported on immutable content store")
        d = info.digest
        path = self.blob_path(d)
        st = self._stat_blob(d)
        replace_all = not fieldpaths
        partial: dict[str, str] = {}
        for fp in fieldpaths:
            if fp == "labels":
                replace_all = True
            elif fp.startswith("labels."):
                key = fp.removeprefix("labels.")
                partial[key] = info.labels.get(key, "")
            else:
                raise errdefs.InvalidArgument(f'cannot update "{fp}" field on content info "{d}"')
        if replace_all:
            self._labels.set(d, info.labels)
            labels = dict(info.labels)
        else:
            labels = self._labels.update(d, partial)
        updated = _now()
        # containerd records the label update time as the blob's atime.
        try:
            os.utime(path, ns=(_to_ns(updated), st.st_mtime_ns))
        except OSError:
            log.warning("could not set access time of %s", d, exc_info=True)
        return Info(
            digest=d,
            size=st.st_size,
            created_at=_from_ns(st.st_mtime_ns),
            updated_at=updated,
            labels=labels,
        )

    def walk(self, fn: WalkFn, filter_fn: InfoFilter | None = None) -> None:
        try:
            alg_dirs = sorted(os.listdir(self._blobs))
        except FileNotFoundError:
            return
        for alg_name in alg_dirs:
            try:
                algorithm = Algorithm(alg_name)
            except ValueError:
                continue  # not a digest algorithm we know: not ours to report
            alg_dir = os.path.join(self._blobs, alg_name)
            try:
                names = sorted(os.listdir(alg_dir))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                try:
                    d = Digest(algorithm, name)
                except errdefs.InvalidArgument:
                    log.warning("ignoring unexpected file in blob store: %s/%s", alg_dir, name)
                    continue
                try:
                    st = os.stat(os.path.join(alg_dir, name))
                except FileNotFoundError:
                    continue  # deleted while walking
                if not stat.S_ISREG(st.st_mode):
                    continue
                info = self._info_from_stat(d, st)
                if filter_fn is None or filter_fn(info):
                    fn(info)

    def delete(self, digest: Digest | str) -> None:
        d = Digest.parse(digest)
        try:
            os.unlink(self.blob_path(d))
        except FileNotFoundError:
            raise errdefs.NotFound(f"content {d}: not found") from None

    def reader_at(self, target: Descriptor | Digest | str) -> LocalReaderAt:
        d = target.digest if isinstance(target, Descriptor) else Digest.parse(target)
        try:
            fd = os.open(self.blob_path(d), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise errdefs.NotFound(f"content {d}: not found") from None
        try:
            size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        return LocalReaderAt(fd, size)

    def read_blob(self, digest: Digest | str, offset: int = 0, size: int = -1) -> bytes:
        if offset < 0:
            raise errdefs.InvalidArgument(f"invalid read offset {offset}")
        with self.reader_at(digest) as ra:
            if offset > ra.size:
                raise OutOfRange(f"read past object length {ra.size} bytes")
            n = ra.size - offset if size < 0 else min(size, ra.size - offset)
            return ra.read_at(offset, n)

    # -- ingests -----------------------------------------------------------

    def open_writer(
        self, ref: str, *, total: int = 0, expected: Digest | str | None = None
    ) -> LocalWriter:
        if not ref:
            raise errdefs.InvalidArgument("ref must not be empty")
        want = Digest.parse(expected) if expected is not None else None
        total = max(total, 0)  # containerd treats negative sizes as unknown
        _try_lock(self._lock_key, ref)
        try:
            if want is not None and os.path.exists(self.blob_path(want)):
                raise errdefs.AlreadyExists(f"content {want}: already exists")
            return self._open_ingest(ref, total, want)
        except BaseException:
            _unlock(self._lock_key, ref)
            raise

    def _open_ingest(self, ref: str, total: int, expected: Digest | None) -> LocalWriter:
        path = self.ingest_path(ref)
        data_path = os.path.join(path, "data")
        os.makedirs(self._ingest, exist_ok=True)
        try:
            os.mkdir(path)
            meta: _IngestMeta | None = None
        except FileExistsError:
            meta = self._resumable(path, ref, total)

        if meta is None:
            return self._start_ingest(path, ref, total, expected)

        if expected is not None and expected != meta.expected:
            _write_atomic(os.path.join(path, "expected"), str(expected).encode())
        if total > 0 and meta.total <= 0:
            _write_atomic(os.path.join(path, "total"), str(total).encode())
        expected = expected if expected is not None else meta.expected
        total = total if total > 0 else meta.total

        fd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            # Re-hash what is there; the hash state is not persisted.
            length = os.fstat(fd).st_size
            algorithm = expected.algorithm if expected is not None else CANONICAL
            digester = _hash_fd(fd, algorithm, length)
        except BaseException:
            os.close(fd)
            raise
        log.debug("resuming ingest %s at offset %d", ref, length)
        return LocalWriter(
            self, ref, path, fd, length, total, expected, digester, meta.started_at, meta.updated_at
        )

    def _resumable(self, path: str, ref: str, total: int) -> _IngestMeta | None:
        """Metadata of an existing ingest worth resuming, or None to start over."""
        try:
            meta = self._read_meta(path)
        except (FileNotFoundError, _CorruptIngest) as exc:
            log.info("restarting unreadable ingest for ref %s: %s", ref, exc)
            return None
        if meta.ref != ref:
            # Only possible with a corrupted layout (or a sha256 collision).
            log.warning("ingest %s holds ref %r, not %r; restarting it", path, meta.ref, ref)
            return None
        if total > 0 and meta.total > 0 and total != meta.total:
            log.info(
                "restarting ingest for ref %s: total changed from %d to %d",
                ref,
                meta.total,
                total,
            )
            return None
        return meta

    def _start_ingest(
        self, path: str, ref: str, total: int, expected: Digest | None
    ) -> LocalWriter:
        now = _now()
        stamp = _format_time(now).encode()
        _write_atomic(os.path.join(path, "ref"), ref.encode())
        _write_atomic(os.path.join(path, "startedat"), stamp)
        _write_atomic(os.path.join(path, "updatedat"), stamp)
        for name, value in (("total", total or None), ("expected", expected)):
            file = os.path.join(path, name)
            if value is not None:
                _write_atomic(file, str(value).encode())
            else:
                # A restarted ingest must not inherit stale expectations.
                try:
                    os.unlink(file)
                except FileNotFoundError:
                    pass
        # The data file comes last: an ingest without it counts as half-made.
        fd = os.open(
            os.path.join(path, "data"), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644
        )
        algorithm = expected.algorithm if expected is not None else CANONICAL
        return LocalWriter(self, ref, path, fd, 0, total, expected, Digester(algorithm), now, now)

    def _read_meta(self, path: str) -> _IngestMeta:
        ref = _read_text(os.path.join(path, "ref"))
        started = _parse_time(_read_text(os.path.join(path, "startedat")))
        updated = _parse_time(_read_text(os.path.join(path, "updatedat")))
        try:
            total_text = _read_text(os.path.join(path, "total")).strip()
        except FileNotFoundError:
            total = 0
        else:
            try:
                total = int(total_text)
            except ValueError:
                raise _CorruptIngest(f"bad total {total_text!r}") from None
        try:
            expected_text = _read_text(os.path.join(path, "expected")).strip()
        except FileNotFoundError:
            expected = None
        else:
            try:
                expected = Digest.parse(expected_text)
            except errdefs.InvalidArgument as exc:
                raise _CorruptIngest(str(exc)) from None
        if not os.path.exists(os.path.join(path, "data")):
            raise FileNotFoundError(errno.ENOENT, "ingest has no data file", path)
        return _IngestMeta(ref, started, updated, total, expected)

    def _read_status(self, path: str) -> Status:
        meta = self._read_meta(path)
        st = os.stat(os.path.join(path, "data"))
        # updatedat is only rewritten on close; the data mtime is fresher
        # while a writer is active.
        updated = max(meta.updated_at, _from_ns(st.st_mtime_ns))
        return Status(
            ref=meta.ref,
            offset=st.st_size,
            total=meta.total,
            expected=meta.expected,
            started_at=meta.started_at,
            updated_at=updated,
        )

    def status(self, ref: str) -> Status:
        try:
            status = self._read_status(self.ingest_path(ref))
        except FileNotFoundError:
            raise errdefs.NotFound(f"ingest ref {ref!r}: not found") from None
        except _CorruptIngest as exc:
            raise errdefs.FailedPrecondition(
                f"ingest ref {ref!r} is corrupt ({exc}); reopen or abort it"
            ) from None
        if status.ref != ref:
            raise errdefs.NotFound(f"ingest ref {ref!r}: not found")
        return status

    def list_statuses(self, filter_fn: StatusFilter | None = None) -> list[Status]:
        try:
            names = os.listdir(self._ingest)
        except FileNotFoundError:
            return []
        statuses: list[Status] = []
        for name in names:
            try:
                status = self._read_status(os.path.join(self._ingest, name))
            except (FileNotFoundError, NotADirectoryError):
                continue  # committed or aborted meanwhile, or still being created
            except _CorruptIngest as exc:
                log.warning("skipping corrupt ingest %s: %s", name, exc)
                continue
            if filter_fn is None or filter_fn(status):
                statuses.append(status)
        statuses.sort(key=lambda s: s.ref)
        return statuses

    def abort(self, ref: str) -> None:
        path = self.ingest_path(ref)
        if not os.path.isdir(path):
            raise errdefs.NotFound(f"ingest ref {ref!r}: not found")
        shutil.rmtree(path, ignore_errors=True)

    # -- commit (called by LocalWriter with its ref lock held) --------------

    def _publish(
        self, ingest: str, ref: str, digest: Digest, labels: Mapping[str, str] | None
    ) -> None:
        target = self.blob_path(digest)
        alg_dir = os.path.dirname(target)
        if not os.path.isdir(alg_dir):
            os.makedirs(alg_dir, exist_ok=True)
            _fsync_dir(self._blobs)
        with _publish_mu:
            if os.path.exists(target):
                shutil.rmtree(ingest, ignore_errors=True)
                raise errdefs.AlreadyExists(f"content {digest}: already exists")
            try:
                # The data was fsynced by the caller, so after this rename the
                # blob is complete; same filesystem, so the rename is atomic.
                os.rename(os.path.join(ingest, "data"), target)
            except FileNotFoundError:
                raise errdefs.NotFound(f"ingest ref {ref!r} was aborted before commit") from None
        _fsync_dir(alg_dir)

        # The blob is published; what follows is bookkeeping whose failure
        # must not be reported as a failed commit, since it cannot be undone.
        shutil.rmtree(ingest, ignore_errors=True)
        try:
            st = os.stat(target)
            now_ns = time.time_ns()
            os.utime(target, ns=(now_ns, now_ns))
            # Read-only blobs: a stray writer cannot alter committed content.
            os.chmod(target, stat.S_IMODE(st.st_mode) & ~0o333)
        except OSError:
            log.warning("could not finalise permissions/times of %s", digest, exc_info=True)
        if self._labels is not None and labels is not None:
            try:
                self._labels.set(digest, labels)
            except Exception:
                log.warning("could not set labels of %s", digest, exc_info=True)


def _to_ns(t: datetime) -> int:
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


if TYPE_CHECKING:

    def _conforms(
        store: LocalStore, writer: LocalWriter, reader: LocalReaderAt
    ) -> tuple[Store, Writer, ReaderAt]:
        # Makes mypy prove the local classes implement the protocols.
        return store, writer, reader
