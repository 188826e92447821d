"""Image archives on the client side: the daemon's Content service as an archive store.

``ctr images import`` and ``ctr images export`` do their work in the client:
they read or write the tar locally and move blobs through the Content
service (``Read``, ``Write``, ``Info``, ``Update``, ``List``), then create the
images through the Images service. The SDK does the same, with the domain
code of :mod:`berth.core.archive` running here over :class:`GrpcContentStore`,
so it works against berthd and containerd alike.

Everything here blocks; :class:`~berth.client.AsyncClient` runs it in a
worker thread on a blocking channel of its own. Streams (``Read``, ``Write``)
carry no deadline, since a blob may take longer than any per-call timeout;
unary calls use the client's timeout.

The Write protocol is lock-step: each request gets exactly one response
(``STAT`` first, then ``WRITE`` per chunk, then ``COMMIT``), which is how
containerd's own client drives it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Self

import grpc
from google.protobuf import field_mask_pb2

from berth import errdefs
from berth.api.services.content.v1 import content_pb2 as pb
from berth.api.services.content.v1 import content_pb2_grpc as content_grpc
from berth.api.services.leases.v1 import leases_pb2 as leases_pb
from berth.api.services.leases.v1 import leases_pb2_grpc as leases_grpc
from berth.client import _core
from berth.client._transport import SyncTransport, _mapped
from berth.core.archive import (
    ImageRecord,
    ImportOptions,
    add_ref_prefix,
    digest_translator,
    export_archive,
    filter_ref_prefix,
    import_archive,
)
from berth.core.content import Digest, Info
from berth.core.images import MatchComparer, default_spec, only_strict, parse_platform
from berth.core.images.platforms import Ordered, normalize

if TYPE_CHECKING:
    from berth.client._sync import Client

__all__ = ["GrpcContentStore", "ImageRecord", "export_to", "import_from"]

#: Bytes per Write message: well under gRPC's default 4 MiB receive limit.
WRITE_CHUNK = 1 << 20

#: What ``import_archive``/``export_archive`` accept as their file argument.
Source = str | os.PathLike[str] | BinaryIO | IO[bytes]


def _datetime(ts: Any) -> datetime:
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)


def _info(msg: pb.Info) -> Info:
    return Info(
        digest=Digest.parse(msg.digest),
        size=msg.size,
        created_at=_datetime(msg.created_at),
        updated_at=_datetime(msg.updated_at),
        labels=dict(msg.labels),
    )


class GrpcContentStore:
    """The Content service of one namespace as a :class:`berth.core.archive.ArchiveStore`.

    ``lease`` rides on every call (the ``containerd-lease`` header), so what
    is written is held by it.
    """

    def __init__(
        self,
        transport: SyncTransport,
        namespace: str,
        *,
        lease: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.transport = transport
        self.namespace = namespace
        self.lease = lease
        self.timeout = timeout
        self._stub = transport._stub(content_grpc.ContentStub)

    def with_lease(self, lease: str) -> GrpcContentStore:
        return GrpcContentStore(self.transport, self.namespace, lease=lease, timeout=self.timeout)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return _core.metadata(self.namespace, self.lease)

    def _unary(self, method: str, request: Any, stub: Any = None) -> Any:
        try:
            return getattr(stub or self._stub, method)(
                request, metadata=self.metadata, timeout=self.timeout
            )
        except grpc.RpcError as exc:
            error = _mapped(exc, self.transport.address)
        raise error

    def info(self, digest: Digest) -> Info:
        return _info(self._unary("Info", pb.InfoRequest(digest=str(digest))).info)

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        req = pb.UpdateRequest(
            info=pb.Info(digest=str(info.digest), labels=dict(info.labels)),
            update_mask=field_mask_pb2.FieldMask(paths=list(fieldpaths)),
        )
        return _info(self._unary("Update", req).info)

    def walk(
        self, fn: Callable[[Info], None], filter_fn: Callable[[Info], bool] | None = None
    ) -> None:
        try:
            replies = list(self._stub.List(pb.ListContentRequest(), metadata=self.metadata))
        except grpc.RpcError as exc:
            error = _mapped(exc, self.transport.address)
            raise error from None
        for reply in replies:
            for msg in reply.info:
                info = _info(msg)
                if filter_fn is None or filter_fn(info):
                    fn(info)

    def reader_at(self, target: Digest) -> GrpcReaderAt:
        return GrpcReaderAt(self, target, self.info(target).size)

    def open_writer(
        self, ref: str, *, total: int = 0, expected: Digest | None = None
    ) -> GrpcWriter:
        return GrpcWriter(self, ref, total, expected)

    def abort(self, ref: str) -> None:
        self._unary("Abort", pb.AbortRequest(ref=ref))

    def hold(self, digest: Digest) -> None:
        """Add ``digest`` to this store's lease (no-op without one)."""
        if not self.lease:
            return
        stub = self.transport._stub(leases_grpc.LeasesStub)
        req = leases_pb.AddResourceRequest(
            id=self.lease, resource=leases_pb.Resource(id=str(digest), type="content")
        )
        self._unary("AddResource", req, stub)


class GrpcReaderAt:
    """Random reads of one blob through the Read stream."""

    def __init__(self, store: GrpcContentStore, digest: Digest, size: int) -> None:
        self._store = store
        self._digest = digest
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def iter_chunks(
        self, offset: int = 0, size: int = -1, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        if offset < 0:
            raise errdefs.InvalidArgument(f"negative offset {offset}")
        if offset >= self._size or size == 0:
            return
        # Size 0 asks containerd for "to the end".
        req = pb.ReadContentRequest(digest=str(self._digest), offset=offset, size=max(size, 0))
        try:
            for reply in self._store._stub.Read(req, metadata=self._store.metadata):
                if reply.data:
                    yield reply.data
        except grpc.RpcError as exc:
            error = _mapped(exc, self._store.transport.address)
            raise error from None

    def read_at(self, offset: int, n: int) -> bytes:
        if n < 0:
            raise errdefs.InvalidArgument(f"negative size {n}")
        return b"".join(self.iter_chunks(offset, n))

    def close(self) -> None:
        pass  # each read is its own stream; nothing stays open

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class GrpcWriter:
    """One ingest driven over a Write stream (see the module docstring)."""

    def __init__(
        self, store: GrpcContentStore, ref: str, total: int, expected: Digest | None
    ) -> None:
        self._store = store
        self.ref = ref
        self._requests: queue.SimpleQueue[pb.WriteContentRequest | None] = queue.SimpleQueue()
        self._offset = 0
        self._done = False
        self._responses = store._stub.Write(self._feed(), metadata=store.metadata)
        try:
            self._send(
                pb.WriteContentRequest(
                    action=pb.STAT, ref=ref, total=max(total, 0), expected=str(expected or "")
                )
            )
        except BaseException:
            self.close()
            raise

    def _feed(self) -> Iterator[pb.WriteContentRequest]:
        while True:
            req = self._requests.get()
            if req is None:
                return
            yield req

    def _send(self, req: pb.WriteContentRequest) -> pb.WriteContentResponse:
        if self._done:
            raise errdefs.FailedPrecondition(f"writer for {self.ref} is closed")
        self._requests.put(req)
        try:
            reply: pb.WriteContentResponse = next(self._responses)
        except grpc.RpcError as exc:
            self._done = True
            error = _mapped(exc, self._store.transport.address)
            raise error from None
        except StopIteration:
            self._done = True
            raise errdefs.Unavailable(f"write stream for {self.ref} ended early") from None
        return reply

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        for start in range(0, len(view), WRITE_CHUNK):
            chunk = bytes(view[start : start + WRITE_CHUNK])
            self._send(pb.WriteContentRequest(action=pb.WRITE, offset=self._offset, data=chunk))
            self._offset += len(chunk)
        return len(view)

    def commit(
        self,
        size: int = 0,
        expected: Digest | str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Digest:
        """Commit; AlreadyExists if the namespace has the blob (it is then
        added to the store's lease, so the caller's lease still holds it)."""
        req = pb.WriteContentRequest(
            action=pb.COMMIT,
            offset=self._offset,
            total=max(size, 0),
            expected=str(expected or ""),
            labels=dict(labels or {}),
        )
        try:
            reply = self._send(req)
        except errdefs.AlreadyExists:
            if expected:
                self._store.hold(Digest.parse(expected))
            raise
        finally:
            self.close()
        return Digest.parse(reply.digest)

    def close(self) -> None:
        self._done = True
        self._requests.put(None)
        with contextlib.suppress(Exception):
            self._responses.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- the SDK operations ------------------------------------------------------------------


def import_from(
    client: Client,
    source: Source,
    *,
    base_name: str | None,
    digests: bool,
    skip_digest_for_named: bool,
    index_name: str | None,
    all_platforms: bool,
    platform: str | None,
    compress_blobs: bool,
) -> list[ImageRecord]:
    """``Client.import_archive``: see its docstring."""
    if skip_digest_for_named and not digests:
        raise errdefs.InvalidArgument("skip_digest_for_named needs digests=True")
    prefix = base_name or f"import-{datetime.now().strftime('%Y-%m-%d')}"
    translator = filter_ref_prefix(prefix) if base_name else add_ref_prefix(prefix)
    options = ImportOptions(
        ref_translator=translator,
        digest_ref=digest_translator(prefix) if digests else None,
        skip_digest_for_named=skip_digest_for_named,
        index_name=index_name or "",
        platforms=only_strict(parse_platform(platform)) if platform else None,
        all_platforms=all_platforms,
        compress_blobs=compress_blobs,
    )
    with client.lease() as leased, _opened(source, "rb") as stream:
        store = GrpcContentStore(client._transport, client.namespace, timeout=client.timeout)
        records = import_archive(stream, store, lease=leased.lease_id, options=options)
        for record in records:
            leased._run(_core.images_put_target(record.name, record.target))
    return records


def export_to(
    client: Client,
    dest: Source,
    names: Iterable[str],
    *,
    platforms: Sequence[str],
    all_platforms: bool,
    docker_manifest: bool,
    skip_non_distributable: bool,
) -> None:
    """``Client.export_archive``: see its docstring."""
    wanted = _core._strings(names, "names")
    if not wanted:
        raise errdefs.InvalidArgument("give at least one image name to export")
    matcher: MatchComparer
    if platforms:
        parsed = [parse_platform(p) for p in _core._strings(platforms, "platforms")]
        matcher = Ordered(tuple(normalize(p) for p in parsed))
    else:
        matcher = only_strict(default_spec())
    records = [ImageRecord(n, client._run(_core.images_get_target(n))) for n in wanted]
    store = GrpcContentStore(client._transport, client.namespace, timeout=client.timeout)

    def write(stream: IO[bytes]) -> None:
        export_archive(
            stream,
            store,
            records,
            platforms=matcher,
            all_platforms=all_platforms,
            docker_manifest=docker_manifest,
            skip_non_distributable=skip_non_distributable,
        )

    if isinstance(dest, str | os.PathLike):
        _write_atomically(os.fspath(dest), write)
    else:
        write(dest)


@contextlib.contextmanager
def _opened(source: Source, mode: str) -> Iterator[IO[bytes]]:
    if isinstance(source, str | os.PathLike):
        with open(source, mode) as f:
            yield f
    else:
        yield source


def _write_atomically(path: str, write: Callable[[IO[bytes]], None]) -> None:
    # A failed export leaves no half-written archive behind under the name
    # asked for.
    # Created like any new file (0666 less the umask), as ctr's os.Create does.
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
