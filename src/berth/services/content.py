"""containerd.services.content.v1.Content over the namespaced content store.

Behaviour follows containerd's content server message for message: List is
streamed in batches of 100, Read in 1 MiB chunks (size 0 meaning "to the
end", an offset past the end OUT_OF_RANGE), and Write is the STAT/WRITE/COMMIT
conversation on one stream holding the ref's lock until the stream ends.

One deliberate difference: an ``expected`` digest that is not a valid digest
(unknown algorithm, wrong length) is refused with INVALID_ARGUMENT when it
arrives, where containerd only notices at commit time and answers
FAILED_PRECONDITION ("unexpected commit digest").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from google.protobuf import empty_pb2, timestamp_pb2

from berth import errdefs, plugin
from berth.api.events import content_pb2 as events_pb
from berth.api.services.content.v1 import content_pb2 as pb
from berth.api.services.content.v1 import content_pb2_grpc as pb_grpc
from berth.core import events
from berth.core.content import Digest, Info, ReaderAt, Status
from berth.core.metadata.content import ContentStore, NamespacedWriter
from berth.core.metadata.plugin import Metadata
from berth.services.server import lease_from, namespace, timestamp

LIST_BATCH = 100
READ_CHUNK = 1 << 20
#: Blobs up to this size are kept in memory once read (see _SmallBlobs).
SMALL_BLOB = 64 << 10
SMALL_BLOBS_TOTAL = 2 << 20


class _SmallBlobs:
    """Recently read small blobs (indexes, manifests, configs), by digest.

    ``ctr run`` reads the same three or four small blobs on every run, each
    read a thread hand-off that costs more than the read. Content is named
    by its digest, so cached bytes can never be stale; whether a namespace
    may read them is still asked of the metadata store on every request,
    so a deleted blob is NotFound at once. Bounded by ``SMALL_BLOBS_TOTAL``
    bytes, least recently used out first.
    """

    def __init__(self, limit: int = SMALL_BLOBS_TOTAL) -> None:
        self._limit = limit
        self._size = 0
        self._blobs: dict[str, bytes] = {}

    def get(self, digest: str) -> bytes | None:
        data = self._blobs.pop(digest, None)
        if data is not None:
            self._blobs[digest] = data  # most recent last
        return data

    def put(self, digest: str, data: bytes) -> None:
        if len(data) > SMALL_BLOB or digest in self._blobs:
            return
        self._blobs[digest] = data
        self._size += len(data)
        while self._size > self._limit:
            oldest = next(iter(self._blobs))
            self._size -= len(self._blobs.pop(oldest))


def _ts(t: datetime) -> timestamp_pb2.Timestamp:
    return timestamp(t)


def _info_to_pb(info: Info) -> pb.Info:
    return pb.Info(
        digest=str(info.digest),
        size=info.size,
        created_at=_ts(info.created_at),
        updated_at=_ts(info.updated_at),
        labels=info.labels,
    )


def _status_to_pb(st: Status) -> pb.Status:
    return pb.Status(
        started_at=_ts(st.started_at),
        updated_at=_ts(st.updated_at),
        ref=st.ref,
        offset=st.offset,
        total=st.total,
        expected=str(st.expected) if st.expected is not None else "",
    )


def _read_end(offset: int, size: int, total: int) -> int:
    """Where a Read of ``size`` bytes (0 or less: all) from ``offset`` of a
    ``total``-byte blob ends; OutOfRange past the end, as containerd says."""
    if offset > total:
        raise errdefs.OutOfRange(f"read past object length {total} bytes")
    return total if size <= 0 else min(total, offset + size)


def _digest(value: str, fmt: str) -> Digest:
    """Parse a request digest; InvalidArgument worded as ``fmt`` (``{d}``, ``{err}``)."""
    try:
        return Digest.parse(value)
    except errdefs.InvalidArgument as exc:
        raise errdefs.InvalidArgument(fmt.format(d=value, err=exc)) from None


class ContentService(pb_grpc.ContentServicer):
    def __init__(self, md: Metadata) -> None:
        self.md = md
        self.store: ContentStore = md.require_content()
        self._small = _SmallBlobs()

    def add_to_server(self, server: Any) -> None:
        pb_grpc.add_ContentServicer_to_server(self, server)

    async def Info(self, request: pb.InfoRequest, context: Any) -> pb.InfoResponse:
        ns = namespace(context)
        d = _digest(request.digest, '"{d}" failed validation: {err}')
        info = await self.md.query(lambda: self.store.info(ns, d))
        return pb.InfoResponse(info=_info_to_pb(info))

    async def Update(self, request: pb.UpdateRequest, context: Any) -> pb.UpdateResponse:
        ns = namespace(context)
        d = _digest(request.info.digest, '"{d}" failed validation: {err}')
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        lbls = dict(request.info.labels)
        info = await self.md.run(lambda: self.store.update(ns, d, lbls, paths))
        return pb.UpdateResponse(info=_info_to_pb(info))

    async def List(
        self, request: pb.ListContentRequest, context: Any
    ) -> AsyncIterator[pb.ListContentResponse]:
        ns = namespace(context)
        flts = list(request.filters)
        infos = await self.md.run(lambda: self.store.list(ns, flts))
        for start in range(0, len(infos), LIST_BATCH):
            yield pb.ListContentResponse(
                info=[_info_to_pb(i) for i in infos[start : start + LIST_BATCH]]
            )

    async def Delete(self, request: pb.DeleteContentRequest, context: Any) -> empty_pb2.Empty:
        ns = namespace(context)
        lease = lease_from(context)
        d = _digest(request.digest, "{err}")
        await self.md.run(lambda: self.store.delete(ns, d, lease=lease))
        await events.publisher().publish(
            ns, "/content/delete", events_pb.ContentDelete(digest=str(d))
        )
        return empty_pb2.Empty()

    async def Read(
        self, request: pb.ReadContentRequest, context: Any
    ) -> AsyncIterator[pb.ReadContentResponse]:
        ns = namespace(context)
        d = _digest(request.digest, "{d}: {err}")
        offset = max(request.offset, 0)
        cached = self._small.get(str(d))
        if cached is not None:
            info = await self.md.query(lambda: self.store.info(ns, d))  # access check
            end = _read_end(offset, request.size, info.size)
            if offset < end:
                yield pb.ReadContentResponse(offset=offset, data=cached[offset:end])
            return

        def open_and_read_first() -> tuple[ReaderAt, int, bytes, bytes | None]:
            # One hand-off to a thread for the lookup, the open and the first
            # chunk: most reads (manifests, configs) are a single chunk, and
            # each hand-off costs more than the work itself.
            info = self.store.info(ns, d)
            end = _read_end(offset, request.size, info.size)
            size = end - offset
            ra = self.store.reader_at(ns, d)
            whole = None
            try:
                if info.size <= SMALL_BLOB:
                    whole = ra.read_at(0, info.size)
                    first = whole[offset:end]
                    if len(whole) != info.size:
                        whole = None  # short: serve what was read, keep nothing
                else:
                    first = ra.read_at(offset, min(READ_CHUNK, size)) if size > 0 else b""
            except BaseException:
                ra.close()
                raise
            return ra, end, first, whole

        ra, end, data, whole = await self.md.run(open_and_read_first)
        if whole is not None:
            # Verified against its digest when it was committed; put here, on
            # the loop thread, because the cache has no lock.
            self._small.put(str(d), whole)

        try:
            pos = offset
            while data:
                yield pb.ReadContentResponse(offset=pos, data=data)
                pos += len(data)
                if pos >= end:
                    break
                data = await asyncio.to_thread(ra.read_at, pos, min(READ_CHUNK, end - pos))
        finally:
            ra.close()

    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        ns = namespace(context)
        ref = request.ref
        try:
            st = await self.md.run(lambda: self.store.status(ns, ref))
        except errdefs.BerthError as exc:
            raise type(exc)(f"could not get status for ref {ref!r}: {exc}") from None
        return pb.StatusResponse(status=_status_to_pb(st))

    async def ListStatuses(
        self, request: pb.ListStatusesRequest, context: Any
    ) -> pb.ListStatusesResponse:
        ns = namespace(context)
        flts = list(request.filters)
        statuses = await self.md.run(lambda: self.store.list_statuses(ns, flts))
        return pb.ListStatusesResponse(statuses=[_status_to_pb(s) for s in statuses])

    async def Abort(self, request: pb.AbortRequest, context: Any) -> empty_pb2.Empty:
        ns = namespace(context)
        lease = lease_from(context)
        await self.md.run(lambda: self.store.abort(ns, request.ref, lease=lease))
        return empty_pb2.Empty()

    async def Write(
        self, request_iterator: AsyncIterator[pb.WriteContentRequest], context: Any
    ) -> AsyncIterator[pb.WriteContentResponse]:
        ns = namespace(context)
        lease = lease_from(context)
        requests = aiter(request_iterator)
        try:
            req = await anext(requests)
        except StopAsyncIteration:
            return
        ref = req.ref
        if not ref:
            raise errdefs.InvalidArgument("first message must have a reference")
        total = req.total
        expected = req.expected
        if expected:
            _digest(expected, "invalid expected digest {d!r}: {err}")
        wr: NamespacedWriter = await self.md.run(
            lambda: self.store.writer(ns, ref, total=total, expected=expected or None, lease=lease)
        )
        try:
            while True:
                msg = await self._handle(ns, ref, wr, req, total, expected)
                if req.expected:
                    expected = req.expected
                if req.total > 0:
                    total = req.total
                yield msg
                if req.action == pb.COMMIT:
                    return
                try:
                    req = await anext(requests)
                except StopAsyncIteration:
                    return
        finally:
            await asyncio.to_thread(wr.close)

    async def _handle(
        self,
        ns: str,
        ref: str,
        wr: NamespacedWriter,
        req: pb.WriteContentRequest,
        total: int,
        expected: str,
    ) -> pb.WriteContentResponse:
        """One message of a Write stream: validate, apply, and build the reply."""
        msg = pb.WriteContentResponse(action=req.action)
        ws = await asyncio.to_thread(wr.status)
        msg.offset = ws.offset
        if req.expected:
            want = _digest(req.expected, "invalid expected digest {d!r}: {err}")
            expected = req.expected
            try:
                await self.md.run(lambda: self.store.info(ns, want))
            except errdefs.NotFound:
                pass
            else:
                await asyncio.to_thread(wr.close)
                with contextlib.suppress(errdefs.BerthError):
                    await self.md.run(lambda: self.store.abort(ns, ref))
                raise errdefs.AlreadyExists(f"blob with expected digest {want} exists")
        if req.total > 0:
            total = req.total

        if req.action == pb.STAT:
            msg.digest = str(await asyncio.to_thread(wr.digest))
            msg.started_at.CopyFrom(_ts(ws.started_at))
            msg.updated_at.CopyFrom(_ts(ws.updated_at))
            msg.total = total
        elif req.action in (pb.WRITE, pb.COMMIT):
            if req.offset > 0 and req.offset != ws.offset:
                raise errdefs.OutOfRange(
                    f"write @{req.offset} must occur at current offset {ws.offset}"
                )
            if req.offset == 0 and ws.offset > 0:
                # A client restarting an upload from the beginning.
                await asyncio.to_thread(wr.truncate, 0)
                msg.offset = 0
            if req.data:
                n = await asyncio.to_thread(wr.write, req.data)
                msg.offset += n
            if req.action == pb.COMMIT:
                lbls = dict(req.labels) or None
                want_total = total
                want_digest = expected or None
                await self.md.run(lambda: wr.commit(want_total, want_digest, lbls))
            msg.digest = str(await asyncio.to_thread(wr.digest))
        else:
            raise errdefs.InvalidArgument(f"unknown write action {req.action}")
        return msg


def _init(ic: plugin.InitContext) -> ContentService:
    return ContentService(ic.get(plugin.METADATA))


plugin.register(
    plugin.Registration(type=plugin.GRPC, id="content", init=_init, requires=(plugin.METADATA,))
)
