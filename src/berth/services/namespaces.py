"""containerd.services.namespaces.v1.Namespaces over the metadata store."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

from berth import errdefs, plugin
from berth.api.services.namespaces.v1 import namespace_pb2 as pb
from berth.api.services.namespaces.v1 import namespace_pb2_grpc as pb_grpc
from berth.core.metadata.db import DB
from berth.core.metadata.namespaces import NamespaceStore


class NamespacesService(pb_grpc.NamespacesServicer):
    def __init__(self, db: DB) -> None:
        self.db = db
        self.store = NamespaceStore(db)

    def add_to_server(self, server: Any) -> None:
        pb_grpc.add_NamespacesServicer_to_server(self, server)

    async def Get(self, request: pb.GetNamespaceRequest, context: Any) -> pb.GetNamespaceResponse:
        lbls = await self.db.run(lambda: self.store.labels(request.name))
        return pb.GetNamespaceResponse(namespace=pb.Namespace(name=request.name, labels=lbls))

    async def List(
        self, request: pb.ListNamespacesRequest, context: Any
    ) -> pb.ListNamespacesResponse:
        items = await self.db.run(self.store.list)
        return pb.ListNamespacesResponse(
            namespaces=[pb.Namespace(name=n, labels=lbls) for n, lbls in items]
        )

    async def Create(
        self, request: pb.CreateNamespaceRequest, context: Any
    ) -> pb.CreateNamespaceResponse:
        ns = request.namespace
        await self.db.run(lambda: self.store.create(ns.name, dict(ns.labels)))
        return pb.CreateNamespaceResponse(namespace=ns)

    async def Update(
        self, request: pb.UpdateNamespaceRequest, context: Any
    ) -> pb.UpdateNamespaceResponse:
        ns = request.namespace
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        changes: dict[str, str] = {}
        for path in paths:
            if path.startswith("labels."):
                key = path[len("labels.") :]
                changes[key] = ns.labels.get(key, "")
            else:
                raise errdefs.InvalidArgument(f"cannot update {path!r} field")
        if paths:
            lbls = await self.db.run(lambda: self.store.set_labels(ns.name, changes, replace=False))
        else:
            # No mask: the request's labels replace the existing set, as in containerd.
            lbls = await self.db.run(
                lambda: self.store.set_labels(ns.name, dict(ns.labels), replace=True)
            )
        return pb.UpdateNamespaceResponse(namespace=pb.Namespace(name=ns.name, labels=lbls))

    async def Delete(self, request: pb.DeleteNamespaceRequest, context: Any) -> empty_pb2.Empty:
        await self.db.run(lambda: self.store.delete(request.name))
        return empty_pb2.Empty()


def _init(ic: plugin.InitContext) -> NamespacesService:
    return NamespacesService(ic.get(plugin.METADATA))


plugin.register(
    plugin.Registration(type=plugin.GRPC, id="namespaces", init=_init, requires=(plugin.METADATA,))
)
