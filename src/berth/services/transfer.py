"""berth.services.transfer.v1.Transfer: server-side pull, push and unpack with streamed progress.

Berth's own API (proto/berth/services/transfer/v1/transfer.proto), not
containerd's: the daemon talks to the registry itself and the client only
watches. The work is :class:`berth.core.transfer.Transfers`; this adapter
turns requests into options, batches progress into stream messages, publishes
the image events, and cancels the transfer when the client goes away. Unpack
publishes nothing: containerd has no event for it either.

Progress is coalesced: the transfer reports every chunk, but a message carries
only the latest state of each blob that changed, at most every
``PROGRESS_INTERVAL`` seconds, so a fast local pull is not slowed down by its
own progress reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from berth import errdefs, plugin
from berth.api.berth.services.transfer.v1 import transfer_pb2 as pb
from berth.api.berth.services.transfer.v1 import transfer_pb2_grpc as pb_grpc
from berth.api.events import image_pb2 as events_pb
from berth.api.types import descriptor_pb2
from berth.config import doc
from berth.core import events
from berth.core.content import Descriptor
from berth.core.metadata.plugin import Metadata
from berth.core.transfer import (
    UNPACKER_PLUGIN_TYPE,
    LayerUpdate,
    PullOptions,
    PushOptions,
    RegistryOptions,
    Transfers,
    UnpackerFactory,
    UnpackOptions,
    Update,
)
from berth.services.server import namespace

log = logging.getLogger("berth.transfer")

#: Shortest gap between two progress messages of one call, in seconds.
PROGRESS_INTERVAL = 0.1

T = TypeVar("T")
U = TypeVar("U")
M = TypeVar("M")


class _Latest(Generic[U, M]):
    """Latest update per item since the last message (fed on the event loop).

    ``key`` names the item an update is about (a blob, a layer); ``convert``
    turns the update into its stream message.
    """

    def __init__(self, key: Callable[[U], str], convert: Callable[[U], M]) -> None:
        self._key = key
        self._convert = convert
        self._pending: dict[str, U] = {}
        self.changed = asyncio.Event()

    def __call__(self, update: U) -> None:
        self._pending[self._key(update)] = update
        self.changed.set()

    def take(self) -> list[M]:
        pending, self._pending = self._pending, {}
        self.changed.clear()
        return [self._convert(u) for u in pending.values()]


def _blob_progress(u: Update) -> pb.BlobProgress:
    return pb.BlobProgress(
        key=u.key,
        digest=u.digest,
        media_type=u.media_type,
        status=u.status,
        offset=u.offset,
        total=u.total,
    )


class _Batch(_Latest[Update, pb.BlobProgress]):
    """Latest update per blob of a pull or push."""

    def __init__(self) -> None:
        super().__init__(lambda u: u.key, _blob_progress)


def _layer_progress(u: LayerUpdate) -> pb.LayerProgress:
    return pb.LayerProgress(
        chain_id=u.chain_id, digest=u.digest, media_type=u.media_type, size=u.size, status=u.status
    )


async def _progress_of(
    work: Awaitable[T], batch: _Latest[Any, M], box: list[T]
) -> AsyncIterator[list[M]]:
    """Run ``work``, yielding progress batches until it ends; its value lands in ``box``.

    If the consumer stops early (the client went away and gRPC cancelled the
    handler) the work is cancelled and awaited, so nothing outlives the call.
    """
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            changed = asyncio.ensure_future(batch.changed.wait())
            try:
                await asyncio.wait({task, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
            blobs = batch.take()
            if blobs:
                yield blobs
            if not task.done():
                await asyncio.wait({task}, timeout=PROGRESS_INTERVAL)
        box.append(task.result())
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _descriptor(d: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(
        media_type=d.media_type, digest=str(d.digest), size=d.size, annotations=d.annotations
    )


def _registry(r: pb.RegistryOptions) -> RegistryOptions:
    creds = r.credentials
    return RegistryOptions(
        plain_http=r.plain_http,
        hosts_dir=r.hosts_dir,
        username=creds.username,
        secret=creds.secret,
    )


def _count(value: int, what: str) -> int:
    if value < 0:
        raise errdefs.InvalidArgument(f"{what} must not be negative, got {value}")
    return value


class TransferService(pb_grpc.TransferServicer):
    def __init__(self, transfers: Transfers) -> None:
        self.transfers = transfers

    def add_to_server(self, server: Any) -> None:
        pb_grpc.add_TransferServicer_to_server(self, server)

    async def Pull(self, request: pb.PullRequest, context: Any) -> AsyncIterator[pb.PullProgress]:
        ns = namespace(context)
        if not request.ref:
            raise errdefs.InvalidArgument("ref must not be empty")
        opts = PullOptions(
            ref=request.ref,
            platforms=tuple(request.platforms),
            all_platforms=request.all_platforms,
            unpack=request.unpack,
            snapshotter=request.snapshotter,
            registry=_registry(request.registry),
            max_concurrent_downloads=_count(
                request.max_concurrent_downloads, "max_concurrent_downloads"
            ),
            labels=dict(request.labels),
        )
        log.info("pull", extra={"fields": {"namespace": ns, "ref": request.ref}})
        batch = _Batch()
        box: list[Any] = []
        async for blobs in _progress_of(self.transfers.pull(ns, opts, progress=batch), batch, box):
            yield pb.PullProgress(blobs=blobs)
        outcome = box[0]
        image = outcome.image
        if outcome.created:
            await events.publisher().publish(
                ns, "/images/create", events_pb.ImageCreate(name=image.name, labels=image.labels)
            )
        else:
            await events.publisher().publish(
                ns, "/images/update", events_pb.ImageUpdate(name=image.name, labels=image.labels)
            )
        yield pb.PullProgress(
            blobs=batch.take(),
            image=pb.ImageResult(
                name=image.name,
                target=_descriptor(image.target),
                unpacked=outcome.unpacked,
                snapshotter=outcome.snapshotter,
                warnings=list(outcome.warnings),
            ),
        )

    async def Push(self, request: pb.PushRequest, context: Any) -> AsyncIterator[pb.PushProgress]:
        ns = namespace(context)
        if not request.ref:
            raise errdefs.InvalidArgument("ref must not be empty")
        opts = PushOptions(
            ref=request.ref,
            source=request.source,
            platforms=tuple(request.platforms),
            registry=_registry(request.registry),
            max_concurrent_uploads=_count(request.max_concurrent_uploads, "max_concurrent_uploads"),
        )
        log.info("push", extra={"fields": {"namespace": ns, "ref": request.ref}})
        batch = _Batch()
        box: list[Any] = []
        async for blobs in _progress_of(self.transfers.push(ns, opts, progress=batch), batch, box):
            yield pb.PushProgress(blobs=blobs)
        outcome = box[0]
        yield pb.PushProgress(
            blobs=batch.take(),
            image=pb.ImageResult(name=outcome.name, target=_descriptor(outcome.target)),
        )

    async def Unpack(
        self, request: pb.UnpackRequest, context: Any
    ) -> AsyncIterator[pb.UnpackProgress]:
        ns = namespace(context)
        opts = UnpackOptions(
            name=request.name, platform=request.platform, snapshotter=request.snapshotter
        )
        log.info("unpack", extra={"fields": {"namespace": ns, "image": request.name}})
        batch: _Latest[LayerUpdate, pb.LayerProgress] = _Latest(
            lambda u: u.chain_id, _layer_progress
        )
        box: list[Any] = []
        async for layers in _progress_of(
            self.transfers.unpack(ns, opts, progress=batch), batch, box
        ):
            yield pb.UnpackProgress(layers=layers)
        outcome = box[0]
        yield pb.UnpackProgress(
            layers=batch.take(),
            result=pb.UnpackResult(
                name=outcome.image.name,
                snapshotter=outcome.snapshotter,
                chain_id=outcome.chain_id,
                unpacked=outcome.unpacked,
                manifest=_descriptor(outcome.manifest),
            ),
        )


@dataclass
class TransferConfig:
    config_path: str = doc(
        "Directory of registry host configuration (<dir>/<host>/hosts.toml), used when a "
        "request names none. Empty: none.",
        "",
    )
    max_concurrent_downloads: int = doc("Blobs a pull fetches at once, by default.", 3)
    snapshotter: str = doc("Snapshotter pulls unpack into when a request names none.", "overlayfs")

    def validate(self, file: str, prefix: str) -> None:
        from berth.config import ConfigError

        if self.max_concurrent_downloads < 1:
            raise ConfigError(
                f"{file}: {prefix}.max_concurrent_downloads: must be at least 1, "
                f"got {self.max_concurrent_downloads}"
            )


def _init(ic: plugin.InitContext) -> TransferService:
    md: Metadata = ic.get(plugin.METADATA)
    cfg: TransferConfig = ic.config or TransferConfig()
    plugins = ic.plugins

    def unpacker() -> UnpackerFactory | None:
        # Looked up per pull: the unpack subsystem may load after this plugin.
        try:
            factory: UnpackerFactory = plugins.get(UNPACKER_PLUGIN_TYPE)
        except errdefs.NotFound:
            return None
        return factory

    transfers = Transfers(
        md,
        unpacker=unpacker,
        default_hosts_dir=cfg.config_path,
        default_snapshotter=cfg.snapshotter,
        concurrency=cfg.max_concurrent_downloads,
    )
    return TransferService(transfers)


plugin.register(
    plugin.Registration(
        type=plugin.GRPC,
        id="transfer",
        init=_init,
        requires=(plugin.METADATA, plugin.GC),
        config=TransferConfig,
    )
)
