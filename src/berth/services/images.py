"""containerd.services.images.v1.Images over the metadata image store.

Create, Update and Delete publish ``/images/create``, ``/images/update`` and
``/images/delete`` with containerd's event payloads. Delete with ``sync`` runs
a garbage collection before answering, so the image's blobs are gone when the
client gets its reply.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import empty_pb2, timestamp_pb2

from berth import errdefs, plugin
from berth.api.events import image_pb2 as events_pb
from berth.api.services.images.v1 import images_pb2 as pb
from berth.api.services.images.v1 import images_pb2_grpc as pb_grpc
from berth.api.types import descriptor_pb2
from berth.core import events
from berth.core.content import Descriptor
from berth.core.metadata.gc import Scheduler, collect_now
from berth.core.metadata.images import Image, ImageStore, make_target
from berth.core.metadata.plugin import Metadata
from berth.services.server import namespace, timestamp


def _ts(t: datetime | None) -> timestamp_pb2.Timestamp | None:
    return None if t is None else timestamp(t)


def image_to_pb(image: Image) -> pb.Image:
    t = image.target
    return pb.Image(
        name=image.name,
        labels=image.labels,
        target=descriptor_pb2.Descriptor(
            media_type=t.media_type,
            digest=str(t.digest),
            size=t.size,
            annotations=t.annotations,
        ),
        created_at=_ts(image.created_at),
        updated_at=_ts(image.updated_at),
    )


def target_from_pb(d: descriptor_pb2.Descriptor) -> Descriptor:
    """Validate a request's target (InvalidArgument, worded as containerd)."""
    return make_target(d.media_type, d.digest, d.size, dict(d.annotations))


class ImagesService(pb_grpc.ImagesServicer):
    def __init__(self, md: Metadata, scheduler: Scheduler | None) -> None:
        self.md = md
        self.store: ImageStore = md.images
        self.scheduler = scheduler

    def add_to_server(self, server: Any) -> None:
        pb_grpc.add_ImagesServicer_to_server(self, server)

    async def Get(self, request: pb.GetImageRequest, context: Any) -> pb.GetImageResponse:
        ns = namespace(context)
        image = await self.md.query(lambda: self.store.get(ns, request.name))
        return pb.GetImageResponse(image=image_to_pb(image))

    async def List(self, request: pb.ListImagesRequest, context: Any) -> pb.ListImagesResponse:
        ns = namespace(context)
        flts = list(request.filters)
        images = await self.md.run(lambda: self.store.list(ns, flts))
        return pb.ListImagesResponse(images=[image_to_pb(i) for i in images])

    async def Create(self, request: pb.CreateImageRequest, context: Any) -> pb.CreateImageResponse:
        ns = namespace(context)
        img = request.image
        if not img.name:
            raise errdefs.InvalidArgument("Image.Name required")
        image = Image(img.name, target_from_pb(img.target), dict(img.labels))
        created = await self.md.run(lambda: self.store.create(ns, image))
        out = image_to_pb(created)
        await events.publisher().publish(
            ns, "/images/create", events_pb.ImageCreate(name=out.name, labels=out.labels)
        )
        return pb.CreateImageResponse(image=out)

    async def Update(self, request: pb.UpdateImageRequest, context: Any) -> pb.UpdateImageResponse:
        ns = namespace(context)
        img = request.image
        if not img.name:
            raise errdefs.InvalidArgument("Image.Name required")
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        # The target is validated only when it is being written.
        target = target_from_pb(img.target) if not paths or "target" in paths else None
        lbls = dict(img.labels)
        annotations = dict(img.target.annotations)
        updated = await self.md.run(
            lambda: self.store.update(
                ns,
                img.name,
                labels=lbls,
                target=target,
                annotations=annotations,
                fieldpaths=paths,
            )
        )
        out = image_to_pb(updated)
        await events.publisher().publish(
            ns, "/images/update", events_pb.ImageUpdate(name=out.name, labels=out.labels)
        )
        return pb.UpdateImageResponse(image=out)

    async def Delete(self, request: pb.DeleteImageRequest, context: Any) -> empty_pb2.Empty:
        ns = namespace(context)
        name = request.name
        await self.md.run(lambda: self.store.delete(ns, name))
        await events.publisher().publish(ns, "/images/delete", events_pb.ImageDelete(name=name))
        if request.sync:
            await collect_now(self.scheduler, self.md.collector)
        return empty_pb2.Empty()


def _scheduler(ic: plugin.InitContext) -> Scheduler | None:
    try:
        sched: Scheduler = ic.get(plugin.GC)
    except errdefs.NotFound:
        return None  # GC plugin disabled: sync deletes collect directly
    return sched


def _init(ic: plugin.InitContext) -> ImagesService:
    return ImagesService(ic.get(plugin.METADATA), _scheduler(ic))


plugin.register(
    plugin.Registration(
        type=plugin.GRPC, id="images", init=_init, requires=(plugin.METADATA, plugin.GC)
    )
)
