"""containerd.services.namespaces.v1.Namespaces over the metadata store."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

from berth import errdefs, identifiers, namespaces, plugin
from berth.api.events import namespace_pb2 as events_pb
from berth.api.services.namespaces.v1 import namespace_pb2 as pb
from berth.api.services.namespaces.v1 import namespace_pb2_grpc as pb_grpc
from berth.core import events
from berth.core.metadata.db import DB
from berth.core.metadata.namespaces import NamespaceStore


def _event_namespace(context: Any, fallback: str) -> str:
    """The namespace a namespace event is published in: the request's own.

    containerd publishes create and update events in the namespace the
    request names in its metadata (ctr always sends one). A request without
    a valid one would make containerd fail *after* the change was made; Berth
    publishes under the affected namespace instead.
    """
    ns = namespaces.from_metadata(context.invocation_metadata())
    if not ns:
        return fallback
    try:
        identifiers.validate(ns)
    except errdefs.InvalidArgument:
        return fallback
    return ns


class NamespacesService(pb_grpc.NamespacesServicer):
    def __init__(self, db: DB) -> None:
        self.db = db
        self.store = NamespaceStore(db)

    def add_to_server(self, server: Any) -> None:
        pb_grpc.add_NamespacesServicer_to_server(self, server)

    async def Get(self, request: pb.GetNamespaceRequest, context: Any) -> pb.GetNamespaceResponse:
        lbls = await self.db.query(lambda: self.store.labels(request.name))
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
        await events.publisher().publish(
            _event_namespace(context, ns.name),
            "/namespaces/create",
            events_pb.NamespaceCreate(name=ns.name, labels=ns.labels),
        )
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
        # containerd's event carries the request's labels, not the result.
        await events.publisher().publish(
            _event_namespace(context, ns.name),
            "/namespaces/update",
            events_pb.NamespaceUpdate(name=ns.name, labels=ns.labels),
        )
        return pb.UpdateNamespaceResponse(namespace=pb.Namespace(name=ns.name, labels=lbls))

    async def Delete(self, request: pb.DeleteNamespaceRequest, context: Any) -> empty_pb2.Empty:
        await self.db.run(lambda: self.store.delete(request.name))
        # Published in the deleted namespace itself, as containerd does.
        await events.publisher().publish(
            request.name, "/namespaces/delete", events_pb.NamespaceDelete(name=request.name)
        )
        return empty_pb2.Empty()


def _init(ic: plugin.InitContext) -> NamespacesService:
    return NamespacesService(ic.get(plugin.METADATA))


plugin.register(
    plugin.Registration(type=plugin.GRPC, id="namespaces", init=_init, requires=(plugin.METADATA,))
)
