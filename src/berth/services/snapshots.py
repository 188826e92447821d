"""containerd.services.snapshots.v1.Snapshots over the namespaced snapshotters.

The request's ``snapshotter`` field picks the backend by name, as ctr sends it
(``--snapshotter``, default ``overlayfs``); an empty or unknown name is
InvalidArgument, as in containerd. Every call runs the blocking snapshotter
work on a thread. Prepare, Commit and Remove publish ``/snapshot/prepare``,
``/snapshot/commit`` and ``/snapshot/remove`` after they succeed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from google.protobuf import empty_pb2, timestamp_pb2

from berth import plugin
from berth.api.events import snapshot_pb2 as events_pb
from berth.api.services.snapshots.v1 import snapshots_pb2 as pb
from berth.api.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from berth.api.types import mount_pb2
from berth.core import events
from berth.core.mount import Mount
from berth.core.snapshots import Info, Kind, Snapshotter
from berth.core.snapshots.plugin import SERVICE_ID, Snapshotters
from berth.services.server import lease_from, namespace, timestamp

T = TypeVar("T")

# containerd streams List results in blocks of this many.
LIST_BATCH = 100


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp(ns)


def info_to_pb(info: Info) -> pb.Info:
    return pb.Info(
        name=info.name,
        parent=info.parent,
        kind=int(info.kind),  # type: ignore[arg-type]
        created_at=_ts(info.created),
        updated_at=_ts(info.updated),
        labels=info.labels,
    )


def info_from_pb(msg: pb.Info) -> Info:
    kind = Kind(msg.kind) if msg.kind in tuple(Kind) else Kind.UNKNOWN
    return Info(
        name=msg.name,
        kind=kind,
        parent=msg.parent,
        labels=dict(msg.labels),
        created=msg.created_at.ToNanoseconds(),
        updated=msg.updated_at.ToNanoseconds(),
    )


def mounts_to_pb(mounts: list[Mount]) -> list[mount_pb2.Mount]:
    # containerd 1.6's Mount has no target field; sub-path mounts never leave
    # the daemon.
    return [mount_pb2.Mount(type=m.type, source=m.source, options=m.options) for m in mounts]


class SnapshotsService(pb_grpc.SnapshotsServicer):
    def __init__(self, snapshotters: Snapshotters) -> None:
        self.snapshotters = snapshotters

    def add_to_server(self, server: Any) -> None:
        pb_grpc.add_SnapshotsServicer_to_server(self, server)

    def _sn(self, name: str, context: Any) -> tuple[str, Snapshotter]:
        ns = namespace(context)
        owner = self.snapshotters.get_required(name)
        return ns, owner.namespaced(ns, lease=lease_from(context))

    @staticmethod
    async def _run(fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    async def Prepare(
        self, request: pb.PrepareSnapshotRequest, context: Any
    ) -> pb.PrepareSnapshotResponse:
        ns, sn = self._sn(request.snapshotter, context)
        labels = dict(request.labels)
        mounts = await self._run(lambda: sn.prepare(request.key, request.parent, labels=labels))
        await events.publisher().publish(
            ns,
            "/snapshot/prepare",
            events_pb.SnapshotPrepare(key=request.key, parent=request.parent),
        )
        return pb.PrepareSnapshotResponse(mounts=mounts_to_pb(mounts))

    async def View(self, request: pb.ViewSnapshotRequest, context: Any) -> pb.ViewSnapshotResponse:
        _, sn = self._sn(request.snapshotter, context)
        labels = dict(request.labels)
        mounts = await self._run(lambda: sn.view(request.key, request.parent, labels=labels))
        return pb.ViewSnapshotResponse(mounts=mounts_to_pb(mounts))

    async def Mounts(self, request: pb.MountsRequest, context: Any) -> pb.MountsResponse:
        _, sn = self._sn(request.snapshotter, context)
        mounts = await self._run(lambda: sn.mounts(request.key))
        return pb.MountsResponse(mounts=mounts_to_pb(mounts))

    async def Commit(self, request: pb.CommitSnapshotRequest, context: Any) -> empty_pb2.Empty:
        ns, sn = self._sn(request.snapshotter, context)
        labels = dict(request.labels)
        await self._run(lambda: sn.commit(request.name, request.key, labels=labels))
        await events.publisher().publish(
            ns, "/snapshot/commit", events_pb.SnapshotCommit(key=request.key, name=request.name)
        )
        return empty_pb2.Empty()

    async def Remove(self, request: pb.RemoveSnapshotRequest, context: Any) -> empty_pb2.Empty:
        ns, sn = self._sn(request.snapshotter, context)
        await self._run(lambda: sn.remove(request.key))
        await events.publisher().publish(
            ns, "/snapshot/remove", events_pb.SnapshotRemove(key=request.key)
        )
        return empty_pb2.Empty()

    async def Stat(self, request: pb.StatSnapshotRequest, context: Any) -> pb.StatSnapshotResponse:
        _, sn = self._sn(request.snapshotter, context)
        info = await self._run(lambda: sn.stat(request.key))
        return pb.StatSnapshotResponse(info=info_to_pb(info))

    async def Update(
        self, request: pb.UpdateSnapshotRequest, context: Any
    ) -> pb.UpdateSnapshotResponse:
        _, sn = self._sn(request.snapshotter, context)
        info = info_from_pb(request.info)
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        updated = await self._run(lambda: sn.update(info, paths))
        return pb.UpdateSnapshotResponse(info=info_to_pb(updated))

    async def List(
        self, request: pb.ListSnapshotsRequest, context: Any
    ) -> AsyncIterator[pb.ListSnapshotsResponse]:
        _, sn = self._sn(request.snapshotter, context)
        fs = list(request.filters)
        infos = await self._run(lambda: sn.walk(fs))
        for i in range(0, len(infos), LIST_BATCH):
            yield pb.ListSnapshotsResponse(info=[info_to_pb(x) for x in infos[i : i + LIST_BATCH]])

    async def Usage(self, request: pb.UsageRequest, context: Any) -> pb.UsageResponse:
        _, sn = self._sn(request.snapshotter, context)
        usage = await self._run(lambda: sn.usage(request.key))
        return pb.UsageResponse(size=usage.size, inodes=usage.inodes)

    async def Cleanup(self, request: pb.CleanupRequest, context: Any) -> empty_pb2.Empty:
        _, sn = self._sn(request.snapshotter, context)
        await self._run(sn.cleanup)
        return empty_pb2.Empty()


def _init(ic: plugin.InitContext) -> SnapshotsService:
    return SnapshotsService(ic.get_by_id(plugin.SERVICE, SERVICE_ID))


plugin.register(
    plugin.Registration(type=plugin.GRPC, id="snapshots", init=_init, requires=(plugin.SERVICE,))
)
