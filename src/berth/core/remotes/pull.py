"""The pull pipeline: registry -> content store, with labels, progress and an unpack hook.

:func:`pull` resolves a reference, then walks the image tree from the
registry the way containerd's ``Client.Pull`` does:

1. each manifest or index is downloaded whole, checked against its digest,
   parsed and validated *before* it is committed (so a corrupt or hostile
   document never enters the store), then labelled with GC references to
   all its children (``containerd.io/gc.ref.content.m.<i>`` ...);
2. index entries are filtered by the platform matcher (best match only,
   unless ``all_platforms``);
3. for an image manifest the config is fetched first, then all layers
   concurrently (at most ``max_concurrent_downloads`` blobs at a time across
   the whole pull); every blob is streamed into the store by
   :func:`berth.core.content.copy_into`, which resumes a leftover ingest
   (via an HTTP Range request) and verifies size and digest on commit;
4. every fetched descriptor gets the
   ``containerd.io/distribution.source.<host>`` label so a later push can
   mount it across repositories;
5. if an ``unpack`` callback is given, it is called for layer 0, 1, ... in
   order, each as soon as that layer is committed and the previous call
   returned, so applying layer N overlaps with downloading N+1.

Blocking store work runs on a small thread pool owned by the pull; the
thread streaming a blob pulls its bytes from the event loop, so the network
stays on the loop and the disk stays off it. An interrupted pull (error or
cancellation) waits for those threads to stop, leaving only ingests that the
next pull resumes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from berth import errdefs
from berth.core.content import Descriptor as ContentDescriptor
from berth.core.content import Digest, Store, copy_into
from berth.core.images import mediatypes as mt
from berth.core.images.gclabels import child_gc_labels, distribution_source_update
from berth.core.images.manifest import (
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageConfig,
    Manifest,
    parse_config,
    parse_index,
    parse_manifest,
)
from berth.core.images.platforms import ALL, MatchComparer, Platform, default
from berth.core.images.rootfs import chain_ids
from berth.core.images.walk import filter_platforms
from berth.core.remotes.errors import first_error
from berth.core.remotes.progress import Labeler, NoLabels, Progress, ProgressFn, ref_key, report
from berth.core.remotes.reference import Reference
from berth.core.remotes.resolver import BlobStream, Fetcher, Resolver, verify_bytes

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LayerToUnpack:
    """What the unpack hook gets for each layer, in order.

    ``chain_id`` identifies the filesystem after applying this layer on top
    of ``parent_chain_id`` (None for the first layer): snapshot keys.
    """

    image: Descriptor
    config: Descriptor
    platform: Platform
    index: int
    layer: Descriptor
    diff_id: Digest
    chain_id: Digest
    parent_chain_id: Digest | None


UnpackFn = Callable[[LayerToUnpack], Awaitable[None]]


@dataclass(slots=True)
class PullResult:
    """The outcome of :func:`pull`.

    ``target`` is the image's root descriptor (what an image record points
    at); ``manifests`` the image manifests fetched (one per platform pulled);
    ``content`` every descriptor fetched or found present, each once.
    """

    name: str
    target: Descriptor
    manifests: list[Descriptor] = field(default_factory=list)
    content: list[Descriptor] = field(default_factory=list)


async def pull(
    resolver: Resolver,
    ref: str | Reference,
    store: Store,
    *,
    platform: MatchComparer | None = None,
    all_platforms: bool = False,
    labeler: Labeler | None = None,
    progress: ProgressFn | None = None,
    unpack: UnpackFn | None = None,
    unpack_platform: MatchComparer | None = None,
    max_concurrent_downloads: int = 3,
) -> PullResult:
    """Fetch the image ``ref`` names into ``store`` and return its target.

    ``platform`` (default: the host and what it can run) picks one manifest
    from an index; ``all_platforms`` fetches every one. ``labeler`` receives
    the GC and distribution-source labels (default: none kept).
    ``unpack`` is called per layer of the manifest chosen for
    ``unpack_platform`` (default: ``platform``, or the host when pulling
    all platforms).

    Raises InvalidArgument (bad reference, invalid manifest or config,
    unsupported media type, oversized document), NotFound (unknown tag,
    missing blob, no manifest for the platform), FailedPrecondition (content
    not matching its digest or size: nothing is committed), the registry
    errors of :mod:`berth.core.remotes.errors`, and whatever ``unpack``
    raises.
    """
    if max_concurrent_downloads < 1:
        raise errdefs.InvalidArgument("max_concurrent_downloads must be at least 1")
    name, target = await resolver.resolve(ref)
    spec = Reference.parse(name)
    matcher = ALL if all_platforms else (platform or default())
    if unpack_platform is None:
        unpack_platform = default() if all_platforms else matcher
    puller = _Puller(
        spec=spec,
        fetcher=resolver.fetcher(spec),
        store=store,
        matcher=matcher,
        limit=0 if all_platforms else 1,
        labeler=labeler or NoLabels(),
        progress=progress,
        unpack=unpack,
        unpack_platform=unpack_platform,
        concurrency=max_concurrent_downloads,
    )
    result = PullResult(name=name, target=target)
    try:
        await puller.handle(target, unpack_root=True)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    finally:
        puller.close()
    result.manifests = puller.manifests
    result.content = list(puller.seen.values())
    return result


class _Puller:
    def __init__(
        self,
        *,
        spec: Reference,
        fetcher: Fetcher,
        store: Store,
        matcher: MatchComparer,
        limit: int,
        labeler: Labeler,
        progress: ProgressFn | None,
        unpack: UnpackFn | None,
        unpack_platform: MatchComparer,
        concurrency: int,
    ) -> None:
        self.spec = spec
        self.fetcher = fetcher
        self.store = store
        self.matcher = matcher
        self.limit = limit
        self.labeler = labeler
        self.progress = progress
        self.unpack = unpack
        self.unpack_platform = unpack_platform
        self.sem = asyncio.Semaphore(concurrency)
        # Blob streams block their thread on the loop; give them their own
        # pool so they can never starve the default executor, plus one for
        # small store calls.
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency + 1, thread_name_prefix="berth-pull"
        )
        self.blobs: dict[Digest, asyncio.Future[None]] = {}
        self.seen: dict[Digest, Descriptor] = {}
        self.manifests: list[Descriptor] = []

    def close(self) -> None:
        self.pool.shutdown(wait=False)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def _report(self, desc: ContentDescriptor, status: Any, offset: int) -> None:
        report(self.progress, Progress(ref_key(desc), desc, status, offset, desc.size))

    # -- tree walk ------------------------------------------------------------

    async def handle(self, desc: Descriptor, *, unpack_root: bool = False) -> None:
        self.seen.setdefault(desc.digest, desc)
        if mt.is_index(desc.media_type):
            data = await self._document(desc)
            index = parse_index(data, desc.media_type, what=f"index {desc.digest}")
            await self._label(desc, child_gc_labels(index.manifests))
            chosen = filter_platforms(list(index.manifests), self.matcher, limit=self.limit)
            if not chosen:
                raise errdefs.NotFound(
                    f"no match for platform in manifest {desc.digest} (wanted {self.matcher})"
                )
            best = filter_platforms(list(index.manifests), self.unpack_platform, limit=1)
            unpack_digest = best[0].digest if best and unpack_root else None
            async with asyncio.TaskGroup() as tg:
                for child in chosen:
                    tg.create_task(self.handle(child, unpack_root=child.digest == unpack_digest))
        elif mt.is_manifest(desc.media_type):
            data = await self._document(desc)
            manifest = parse_manifest(data, desc.media_type, what=f"manifest {desc.digest}")
            await self._label(desc, child_gc_labels(manifest.children()))
            self.manifests.append(desc)
            await self._image(desc, manifest, unpack=unpack_root and self.unpack is not None)
        else:
            await self._blob(desc)

    async def _image(self, desc: Descriptor, manifest: Manifest, *, unpack: bool) -> None:
        await self._blob(manifest.config)
        config: ImageConfig | None = None
        if unpack:
            data = await self._run(self.store.read_blob, manifest.config.digest)
            if len(data) > MAX_CONFIG_SIZE:
                raise errdefs.InvalidArgument(f"image config {manifest.config.digest} is too large")
            config = parse_config(data, what=f"image config {manifest.config.digest}")
            if len(config.diff_ids) != len(manifest.layers):
                raise errdefs.InvalidArgument(
                    f"image config {manifest.config.digest} lists {len(config.diff_ids)} "
                    f"diff_ids but manifest {desc.digest} has {len(manifest.layers)} layers"
                )
        async with asyncio.TaskGroup() as tg:
            done = [tg.create_task(self._blob(layer)) for layer in manifest.layers]
            if config is not None:
                tg.create_task(self._unpack_in_order(desc, manifest, config, done))

    async def _unpack_in_order(
        self,
        desc: Descriptor,
        manifest: Manifest,
        config: ImageConfig,
        done: list[asyncio.Task[None]],
    ) -> None:
        assert self.unpack is not None
        chains = chain_ids(config.diff_ids)
        for i, layer in enumerate(manifest.layers):
            await done[i]
            await self.unpack(
                LayerToUnpack(
                    image=desc,
                    config=manifest.config,
                    platform=desc.platform or config.platform,
                    index=i,
                    layer=layer,
                    diff_id=config.diff_ids[i],
                    chain_id=chains[i],
                    parent_chain_id=chains[i - 1] if i else None,
                )
            )

    # -- documents ------------------------------------------------------------

    async def _document(self, desc: Descriptor) -> bytes:
        """A manifest or index: from the store if present, else fetched,
        verified and validated, then committed."""
        try:
            data = await self._run(self.store.read_blob, desc.digest)
        except errdefs.NotFound:
            pass
        else:
            self._report(desc, "exists", desc.size)
            await self._label(desc, {})
            return data
        if desc.size > MAX_MANIFEST_SIZE:
            raise errdefs.InvalidArgument(
                f"rejecting {desc.size} byte manifest {desc.digest}: over the "
                f"{MAX_MANIFEST_SIZE} byte limit"
            )
        async with self.sem:
            self._report(desc, "downloading", 0)
            data = await self.fetcher.fetch_bytes(desc, limit=MAX_MANIFEST_SIZE)
        verify_bytes(desc, data)
        # Parse before committing: an invalid document must never be stored.
        if mt.is_index(desc.media_type):
            parse_index(data, desc.media_type, what=f"index {desc.digest}")
        else:
            parse_manifest(data, desc.media_type, what=f"manifest {desc.digest}")
        await self._run(copy_into, self.store, ref_key(desc), io.BytesIO(data), desc)
        self._report(desc, "done", desc.size)
        return data

    # -- blobs ----------------------------------------------------------------

    async def _blob(self, desc: Descriptor) -> None:
        """Fetch ``desc`` once per pull, however many manifests share it."""
        self.seen.setdefault(desc.digest, desc)
        fut = self.blobs.get(desc.digest)
        if fut is None:
            fut = asyncio.ensure_future(self._fetch_blob(desc))
            self.blobs[desc.digest] = fut
        # Sharing one future is safe to cancel: a pull is only ever cancelled
        # as a whole, so every waiter of a shared fetch is being cancelled too.
        await fut

    async def _fetch_blob(self, desc: Descriptor) -> None:
        if mt.is_manifest_or_index(desc.media_type):
            await self.handle(desc)
            return
        self._report(desc, "waiting", 0)
        async with self.sem:
            committed = await self._copy(desc)
        self._report(desc, "done" if committed else "exists", desc.size)
        await self._label(desc, {})

    async def _copy(self, desc: Descriptor) -> bool:
        try:
            await self._run(self.store.info, desc.digest)
        except errdefs.NotFound:
            pass
        else:
            return False
        if desc.size == 0:
            raise errdefs.InvalidArgument(
                f"unable to fetch descriptor ({desc.digest}) which reports content size of zero"
            )
        loop = asyncio.get_running_loop()
        bridge = _Bridge(loop, self.fetcher, desc, self._report)
        fut = loop.run_in_executor(
            self.pool,
            lambda: copy_into(self.store, ref_key(desc), None, desc, open_at=bridge.open_at),
        )
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            bridge.cancel()
            # Let the thread finish closing its writer so the ingest is
            # consistent (and unlocked) before the caller sees the cancel.
            with contextlib.suppress(BaseException):
                await fut
            raise
        except errdefs.FailedPrecondition as exc:
            raise errdefs.FailedPrecondition(
                f"content {desc.digest} from {self.spec.name} failed verification "
                f"(nothing was committed): {exc}"
            ) from None
        finally:
            await bridge.aclose_all()

    # -- labels ---------------------------------------------------------------

    async def _label(self, desc: Descriptor, labels: dict[str, str]) -> None:
        current = await self.labeler.labels(desc.digest)
        update = dict(labels)
        update.update(distribution_source_update(current, self.spec.domain, self.spec.repository))
        update = {k: v for k, v in update.items() if current.get(k) != v}
        if update:
            await self.labeler.update(desc.digest, update)


class _Bridge:
    """Lets ``copy_into`` (on a worker thread) read a download driven by the loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fetcher: Fetcher,
        desc: Descriptor,
        report_fn: Callable[[ContentDescriptor, Any, int], None],
    ) -> None:
        self._loop = loop
        self._fetcher = fetcher
        self._desc = desc
        self._report = report_fn
        self._cancelled = threading.Event()
        self._inflight: concurrent.futures.Future[Any] | None = None
        self._streams: list[BlobStream] = []
        self._mu = threading.Lock()

    def _call(self, coro: Awaitable[T]) -> T:
        if self._cancelled.is_set():
            raise errdefs.Canceled(f"download of {self._desc.digest} canceled")
        cf: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            coro,  # type: ignore[arg-type]
            self._loop,
        )
        with self._mu:
            self._inflight = cf
        try:
            return cf.result()
        except concurrent.futures.CancelledError:
            raise errdefs.Canceled(f"download of {self._desc.digest} canceled") from None
        finally:
            with self._mu:
                self._inflight = None

    def cancel(self) -> None:
        """Called on the loop: make the worker's next (or current) read fail."""
        self._cancelled.set()
        with self._mu:
            if self._inflight is not None:
                self._inflight.cancel()

    def open_at(self, offset: int) -> _ThreadReader:
        """``copy_into``'s ``open_at``: start the download at ``offset`` (worker thread)."""
        return _ThreadReader(self, self._call(self._open(offset)))

    async def _open(self, offset: int) -> BlobStream:
        stream = await self._fetcher.open(self._desc, offset)
        self._streams.append(stream)
        if offset:
            log.info("resuming download of %s at byte %d", self._desc.digest, offset)
        self._report(self._desc, "downloading", offset)
        return stream

    async def _read(self, stream: BlobStream) -> bytes:
        chunk = await stream.read()
        if chunk:
            self._report(self._desc, "downloading", stream.offset)
        return chunk

    async def aclose_all(self) -> None:
        """Close the downloads, once the worker thread is done with them."""
        streams, self._streams = self._streams, []
        for stream in streams:
            with contextlib.suppress(Exception):
                await stream.aclose()


class _ThreadReader:
    """The ``SupportsRead`` handed to ``copy_into``; runs on the worker thread."""

    def __init__(self, bridge: _Bridge, stream: BlobStream) -> None:
        self._bridge = bridge
        self._stream = stream
        self._buf = b""

    def read(self, n: int = -1, /) -> bytes:
        if not self._buf:
            self._buf = self._bridge._call(self._bridge._read(self._stream))
        if n < 0 or n >= len(self._buf):
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def close(self) -> None:
        # The loop closes the stream (close_all); closing here would need a
        # loop round trip from a thread that may be unwinding a cancel.
        return None
