"""containerd.services.containers.v1.Containers over the metadata container store.

Create, Update and Delete publish ``/containers/create``, ``/containers/update``
and ``/containers/delete`` with containerd's event payloads. ``Any`` values
(spec, runtime options, extensions) cross into the domain as
:class:`~berth.core.metadata.containers.AnyValue` pairs, untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2

from berth import errdefs, plugin
from berth.api.events import container_pb2 as events_pb
from berth.api.services.containers.v1 import containers_pb2 as pb
from berth.api.services.containers.v1 import containers_pb2_grpc as pb_grpc
from berth.core import events
from berth.core.metadata.containers import (
    SERVICE_ID,
    AnyValue,
    Container,
    ContainerStore,
    Runtime,
)
from berth.services.server import namespace, timestamp


def _ts(t: datetime | None) -> timestamp_pb2.Timestamp | None:
    return None if t is None else timestamp(t)


def _any_to_pb(a: AnyValue | None) -> any_pb2.Any | None:
    if a is None:
        return None
    return any_pb2.Any(type_url=a.type_url, value=a.value)


def _any_from_pb(a: any_pb2.Any) -> AnyValue:
    return AnyValue(a.type_url, a.value)


def container_to_pb(c: Container) -> pb.Container:
    return pb.Container(
        id=c.id,
        labels=c.labels,
        image=c.image,
        runtime=pb.Container.Runtime(name=c.runtime.name, options=_any_to_pb(c.runtime.options)),
        spec=_any_to_pb(c.spec),
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        created_at=_ts(c.created_at),
        updated_at=_ts(c.updated_at),
        extensions={
            k: any_pb2.Any(type_url=v.type_url, value=v.value) for k, v in c.extensions.items()
        },
    )


def container_from_pb(c: pb.Container) -> Container:
    """The domain record of a request's container. Presence matters: an unset
    spec is "no spec" (a validation error), an unset runtime has no name."""
    runtime = Runtime("")
    if c.HasField("runtime"):
        r = c.runtime
        runtime = Runtime(r.name, _any_from_pb(r.options) if r.HasField("options") else None)
    return Container(
        id=c.id,
        runtime=runtime,
        spec=_any_from_pb(c.spec) if c.HasField("spec") else None,
        labels=dict(c.labels),
        image=c.image,
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        extensions={k: _any_from_pb(v) for k, v in c.extensions.items()},
    )


class ContainersService(pb_grpc.ContainersServicer):
    def __init__(self, store: ContainerStore) -> None:
        self.store = store
        self.db = store.db

    def add_to_server(self, server: Any) -> None:
        pb_grpc.add_ContainersServicer_to_server(self, server)

    async def Get(self, request: pb.GetContainerRequest, context: Any) -> pb.GetContainerResponse:
        ns = namespace(context)
        c = await self.db.query(lambda: self.store.get(ns, request.id))
        return pb.GetContainerResponse(container=container_to_pb(c))

    async def List(
        self, request: pb.ListContainersRequest, context: Any
    ) -> pb.ListContainersResponse:
        ns = namespace(context)
        flts = list(request.filters)
        items = await self.db.run(lambda: self.store.list(ns, flts))
        return pb.ListContainersResponse(containers=[container_to_pb(c) for c in items])

    async def ListStream(
        self, request: pb.ListContainersRequest, context: Any
    ) -> AsyncIterator[pb.ListContainerMessage]:
        ns = namespace(context)
        flts = list(request.filters)
        # One message per container keeps each below the gRPC size limit,
        # which is the point of the stream; the snapshot is taken at once.
        items = await self.db.run(lambda: self.store.list(ns, flts))
        for c in items:
            yield pb.ListContainerMessage(container=container_to_pb(c))

    async def Create(
        self, request: pb.CreateContainerRequest, context: Any
    ) -> pb.CreateContainerResponse:
        ns = namespace(context)
        container = container_from_pb(request.container)
        created = await self.db.run(lambda: self.store.create(ns, container))
        out = container_to_pb(created)
        await events.publisher().publish(
            ns,
            "/containers/create",
            events_pb.ContainerCreate(
                id=out.id,
                image=out.image,
                runtime=events_pb.ContainerCreate.Runtime(
                    name=out.runtime.name,
                    options=out.runtime.options if out.runtime.HasField("options") else None,
                ),
            ),
        )
        return pb.CreateContainerResponse(container=out)

    async def Update(
        self, request: pb.UpdateContainerRequest, context: Any
    ) -> pb.UpdateContainerResponse:
        ns = namespace(context)
        if not request.container.id:
            raise errdefs.InvalidArgument("Container.ID required")
        container = container_from_pb(request.container)
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        updated = await self.db.run(lambda: self.store.update(ns, container, paths))
        out = container_to_pb(updated)
        await events.publisher().publish(
            ns,
            "/containers/update",
            events_pb.ContainerUpdate(
                id=out.id, image=out.image, labels=out.labels, snapshot_key=out.snapshot_key
            ),
        )
        return pb.UpdateContainerResponse(container=out)

    async def Delete(self, request: pb.DeleteContainerRequest, context: Any) -> empty_pb2.Empty:
        ns = namespace(context)
        container_id = request.id
        await self.db.run(lambda: self.store.delete(ns, container_id))
        await events.publisher().publish(
            ns, "/containers/delete", events_pb.ContainerDelete(id=container_id)
        )
        return empty_pb2.Empty()


def _init(ic: plugin.InitContext) -> ContainersService:
    store: ContainerStore = ic.get_by_id(plugin.SERVICE, SERVICE_ID)
    return ContainersService(store)


plugin.register(
    plugin.Registration(type=plugin.GRPC, id="containers", init=_init, requires=(plugin.SERVICE,))
)
