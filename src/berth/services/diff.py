"""containerd.services.diff.v1.Diff over the diff service (the walking differ).

``ctr images pull`` (and any containerd client unpacking an image) prepares a
snapshot, calls Apply with its mounts and the layer descriptor, and commits
the snapshot under the layer's chain ID; Diff is the reverse (``ctr snapshots
diff``). Both run the blocking differ on a thread. Apply ``payloads`` are for
stream processors, which Berth does not run; they are accepted and ignored,
as containerd ignores payloads no processor asks for.
"""

from __future__ import annotations

import asyncio
from typing import Any

from berth import errdefs, plugin
from berth.api.services.diff.v1 import diff_pb2 as pb
from berth.api.services.diff.v1 import diff_pb2_grpc as pb_grpc
from berth.api.types import descriptor_pb2
from berth.core.content import Descriptor, Digest
from berth.core.diff.plugin import SERVICE_ID, DiffService
from berth.core.mount import Mount
from berth.services.server import lease_from, namespace


def descriptor_from_pb(d: descriptor_pb2.Descriptor) -> Descriptor:
    """Raises InvalidArgument for a missing or malformed digest."""
    if not d.digest:
        raise errdefs.InvalidArgument("diff descriptor has no digest: invalid argument")
    return Descriptor(
        media_type=d.media_type,
        digest=Digest.parse(d.digest),
        size=d.size,
        annotations=dict(d.annotations),
    )


def descriptor_to_pb(d: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(
        media_type=d.media_type, digest=str(d.digest), size=d.size, annotations=d.annotations
    )


def mounts_from_pb(mounts: Any) -> list[Mount]:
    return [Mount(m.type, m.source, list(m.options)) for m in mounts]


class DiffGRPC(pb_grpc.DiffServicer):
    def __init__(self, service: DiffService) -> None:
        self.service = service

    def add_to_server(self, server: Any) -> None:
        pb_grpc.add_DiffServicer_to_server(self, server)

    async def Apply(self, request: pb.ApplyRequest, context: Any) -> pb.ApplyResponse:
        differ = self.service.differ(namespace(context), lease=lease_from(context))
        desc = descriptor_from_pb(request.diff)
        mounts = mounts_from_pb(request.mounts)
        applied = await asyncio.to_thread(differ.apply, desc, mounts)
        return pb.ApplyResponse(applied=descriptor_to_pb(applied))

    async def Diff(self, request: pb.DiffRequest, context: Any) -> pb.DiffResponse:
        differ = self.service.differ(namespace(context), lease=lease_from(context))
        left = mounts_from_pb(request.left)
        right = mounts_from_pb(request.right)
        labels = dict(request.labels)
        desc = await asyncio.to_thread(
            lambda: differ.compare(
                left, right, media_type=request.media_type, ref=request.ref, labels=labels
            )
        )
        return pb.DiffResponse(diff=descriptor_to_pb(desc))


def _init(ic: plugin.InitContext) -> DiffGRPC:
    return DiffGRPC(ic.get_by_id(plugin.SERVICE, SERVICE_ID))


plugin.register(
    plugin.Registration(type=plugin.GRPC, id="diff", init=_init, requires=(plugin.SERVICE,))
)
