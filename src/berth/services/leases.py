"""containerd.services.leases.v1.Leases over the metadata store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import empty_pb2, timestamp_pb2

from berth import errdefs, filters, plugin
from berth.api.services.leases.v1 import leases_pb2 as pb
from berth.api.services.leases.v1 import leases_pb2_grpc as pb_grpc
from berth.core.metadata.db import DB
from berth.core.metadata.gc import Scheduler, collect_now
from berth.core.metadata.leases import Lease, LeaseStore, random_lease_id
from berth.services.server import namespace, timestamp


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp(ns)


def _to_pb(lease: Lease) -> pb.Lease:
    return pb.Lease(id=lease.id, created_at=_ts(lease.created_at), labels=lease.labels)


class _LeaseAdaptor:
    def __init__(self, lease: Lease) -> None:
        self.lease = lease

    def field(self, path: Sequence[str]) -> tuple[str, bool]:
        if not path:
            return "", False
        if path[0] == "id":
            return self.lease.id, bool(self.lease.id)
        if path[0] == "labels" and len(path) > 1:
            key = ".".join(path[1:])
            return self.lease.labels.get(key, ""), key in self.lease.labels
        return "", False


class LeasesService(pb_grpc.LeasesServicer):
    def __init__(self, db: DB, scheduler: Scheduler | None = None) -> None:
        self.db = db
        self.store = LeaseStore(db)
        self.scheduler = scheduler

    def add_to_server(self, server: Any) -> None:
        pb_grpc.add_LeasesServicer_to_server(self, server)

    async def Create(self, request: pb.CreateRequest, context: Any) -> pb.CreateResponse:
        ns = namespace(context)
        # An empty id asks the server to choose one, as containerd's service does.
        lease_id = request.id or random_lease_id()
        lease = await self.db.run(lambda: self.store.create(ns, lease_id, dict(request.labels)))
        return pb.CreateResponse(lease=_to_pb(lease))

    async def Delete(self, request: pb.DeleteRequest, context: Any) -> empty_pb2.Empty:
        ns = namespace(context)
        await self.db.run(lambda: self.store.delete(ns, request.id))
        collector = getattr(self.db, "collector", None)
        if collector is not None:
            # What the lease protected may now be garbage.
            collector.mutated(deletion=True)
            if request.sync:
                await collect_now(self.scheduler, collector)
        return empty_pb2.Empty()

    async def List(self, request: pb.ListRequest, context: Any) -> pb.ListResponse:
        ns = namespace(context)
        flt = filters.parse_all(list(request.filters))
        leases = await self.db.run(lambda: self.store.list(ns))
        return pb.ListResponse(leases=[_to_pb(le) for le in leases if flt.match(_LeaseAdaptor(le))])

    async def AddResource(self, request: pb.AddResourceRequest, context: Any) -> empty_pb2.Empty:
        ns = namespace(context)
        r = request.resource
        await self.db.run(lambda: self.store.add_resource(ns, request.id, r.type, r.id))
        return empty_pb2.Empty()

    async def DeleteResource(
        self, request: pb.DeleteResourceRequest, context: Any
    ) -> empty_pb2.Empty:
        ns = namespace(context)
        r = request.resource
        await self.db.run(lambda: self.store.delete_resource(ns, request.id, r.type, r.id))
        return empty_pb2.Empty()

    async def ListResources(
        self, request: pb.ListResourcesRequest, context: Any
    ) -> pb.ListResourcesResponse:
        ns = namespace(context)
        items = await self.db.run(lambda: self.store.list_resources(ns, request.id))
        return pb.ListResourcesResponse(resources=[pb.Resource(type=t, id=i) for t, i in items])


def _init(ic: plugin.InitContext) -> LeasesService:
    try:
        scheduler: Scheduler | None = ic.get(plugin.GC)
    except errdefs.NotFound:
        scheduler = None
    return LeasesService(ic.get(plugin.METADATA), scheduler)


plugin.register(
    plugin.Registration(
        type=plugin.GRPC, id="leases", init=_init, requires=(plugin.METADATA, plugin.GC)
    )
)
