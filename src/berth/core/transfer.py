"""Daemon-side image transfers: pull a registry image into a namespace, push one out.

This module owns the glue between the registry client (:mod:`berth.core.remotes`)
and the metadata store (:mod:`berth.core.metadata`): it is what berthd runs when
a client asks it to pull or push, instead of moving every byte through the
Content service as containerd 1.6's clients do.

Design notes
------------
*Leases.* A pull runs under a lease of its own, created with a
``containerd.io/gc.expire`` label and deleted when the pull ends, whatever the
outcome (as containerd's ``Client.Pull`` does with ``WithLease``). Everything
the pull writes -- ingests, and content once committed -- is a resource of
that lease, and content the pull finds already present is added to it too, so
a collection running mid-pull cannot take anything the image will reference.
If berthd dies mid-pull, the lease outlives it until it expires: its ingests
survive, and the next pull of the same image resumes them (the ingest refs are
deterministic, ``layer-sha256:...``). Once the image record exists it is what
keeps the content, and the lease can go.

*Namespaces.* The registry client works against the plain
:class:`~berth.core.content.Store` interface; :class:`LeasedContent` adapts the
namespaced, lease-aware metadata store to it for one namespace and lease, and
:class:`MetadataLabeler` gives the pipeline the namespace's labels (GC
references between manifests and their children, distribution sources).

*Unpacking* is a seam: an :data:`UnpackerFactory` (registered by the unpack
subsystem) is asked for a per-layer :data:`~berth.core.remotes.UnpackFn` for
one pull; the pipeline calls it in layer order as layers land, so applying
layer N overlaps downloading N+1. Without a factory a pull still succeeds and
says that nothing was unpacked.

*Unpacking what is already stored.* :meth:`Transfers.unpack` is the
server side of containerd's client-side ``Image.Unpack``: for an image that
was imported (or pulled without unpacking) it walks the manifest for one
platform and applies each missing layer, under a lease of its own for the
same reason a pull has one. It needs more of the unpack subsystem than the
per-layer callback: an :class:`ImageUnpackers` (the registered factory's
``unpacker`` method), so it can ask layer by layer whether the chain ID
already exists and report ``exists`` rather than redo work. A layer being
applied when the caller goes away is finished before the lease is dropped,
so no snapshot is ever committed under a lease that no longer exists.

*Secrets.* Registry credentials only ever live in :class:`RegistryOptions`
(whose ``repr`` hides the secret) and the resolver's credential lookup; they
are never logged or put in a lease, label or error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol, TypeVar, cast, runtime_checkable

from berth import errdefs
from berth.core.content import Descriptor, Digest, Info, ReaderAt, Status, Store, Writer
from berth.core.content.errors import OutOfRange
from berth.core.content.store import InfoFilter, StatusFilter, WalkFn
from berth.core.metadata.content import ContentStore
from berth.core.metadata.gc import LABEL_EXPIRE
from berth.core.metadata.images import Image
from berth.core.metadata.leases import LeaseStore, random_lease_id
from berth.core.metadata.plugin import Metadata

if TYPE_CHECKING:
    # The registry client (and httpx under it) loads at the first pull or
    # push, and the image model (manifests, platforms) with it or at the
    # first unpack, not when berthd registers and starts this plugin: an idle
    # daemon never needs them. See "Daemon footprint" in docs/architecture.md.
    from berth.core.images.platforms import MatchComparer
    from berth.core.images.walk import ResolvedImage
    from berth.core.remotes import LayerToUnpack, Progress, Reference, Resolver, UnpackFn
    from berth.core.unpack import Unpacker

log = logging.getLogger("berth.transfer")

#: How long a pull's lease protects its work if berthd dies before deleting it
#: (containerd's client uses the same default for its leases).
DEFAULT_LEASE_EXPIRY = timedelta(hours=24)
DEFAULT_CONCURRENCY = 3
#: The plugin type under which the unpack subsystem registers its
#: :data:`UnpackerFactory` instance; the transfer service looks it up at each pull.
UNPACKER_PLUGIN_TYPE = "io.berth.unpacker.v1"
#: Set on each pull's lease so an operator can tell what it belongs to.
LEASE_PURPOSE_LABEL = "berth.io/transfer"

__all__ = [
    "DEFAULT_LEASE_EXPIRY",
    "UNPACKER_PLUGIN_TYPE",
    "ImageUnpackers",
    "LayerUpdate",
    "LayerUpdateFn",
    "LeasedContent",
    "MetadataLabeler",
    "PullOptions",
    "PullOutcome",
    "PushOptions",
    "PushOutcome",
    "RegistryOptions",
    "Transfers",
    "UnpackContext",
    "UnpackOptions",
    "UnpackOutcome",
    "UnpackerFactory",
    "Update",
    "UpdateFn",
]


# ---------------------------------------------------------------------------
# Requests and results


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach a registry. ``secret`` is kept out of ``repr``."""

    plain_http: bool = False
    hosts_dir: str = ""
    username: str = ""
    secret: str = field(default="", repr=False)

    def resolver(self, ref: Reference, *, default_hosts_dir: str = "") -> Resolver:
        """A resolver for ``ref``'s registry with these options."""
        from berth.core.remotes import Resolver, static_credentials

        creds = None
        if self.username or self.secret:
            creds = static_credentials(ref.domain, self.username, self.secret)
        return Resolver(
            config_path=self.hosts_dir or default_hosts_dir or None,
            plain_http=self.plain_http,
            credentials=creds,
        )


@dataclass(frozen=True)
class PullOptions:
    ref: str
    platforms: tuple[str, ...] = ()
    all_platforms: bool = False
    unpack: bool = True
    snapshotter: str = ""
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    max_concurrent_downloads: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PushOptions:
    ref: str
    source: str = ""
    platforms: tuple[str, ...] = ()
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    max_concurrent_uploads: int = 0


@dataclass(frozen=True)
class PullOutcome:
    """``created`` is False when an existing image record was updated."""

    image: Image
    created: bool
    unpacked: bool
    snapshotter: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class PushOutcome:
    name: str
    target: Descriptor


@dataclass(frozen=True)
class UnpackOptions:
    """Unpack image ``name`` for ``platform`` (one specifier; empty: the
    host's) into ``snapshotter`` (empty: the daemon's default)."""

    name: str
    platform: str = ""
    snapshotter: str = ""


@dataclass(frozen=True)
class UnpackOutcome:
    """What :meth:`Transfers.unpack` did. ``chain_id`` is the top layer's
    (empty for an image without layers); ``applied`` lists the chain IDs this
    call created, in layer order: empty when the image was unpacked before."""

    image: Image
    manifest: Descriptor
    snapshotter: str
    chain_id: str
    applied: tuple[str, ...]

    @property
    def unpacked(self) -> bool:
        return bool(self.applied)


@dataclass(frozen=True, slots=True)
class LayerUpdate:
    """The latest state of one layer of an unpack: ``unpacking``, then
    ``unpacked`` (applied now) or ``exists`` (its chain ID was already there)."""

    chain_id: str
    digest: str
    media_type: str
    size: int
    status: str


LayerUpdateFn = Callable[[LayerUpdate], None]


@dataclass(frozen=True, slots=True)
class Update:
    """One progress update: the latest state of one blob, or of a layer being unpacked.

    ``status`` is one of the registry pipeline's (waiting, downloading,
    uploading, exists, mounted, done) or unpacking/unpacked.
    """

    key: str
    digest: str
    media_type: str
    status: str
    offset: int
    total: int


UpdateFn = Callable[[Update], None]


@dataclass(frozen=True)
class UnpackContext:
    """What an unpacker gets for one pull: where to write, under which lease."""

    namespace: str
    snapshotter: str
    lease: str
    content: LeasedContent
    labeler: MetadataLabeler


#: Builds the per-layer unpack callback for one pull.
UnpackerFactory = Callable[[UnpackContext], "UnpackFn"]


@runtime_checkable
class ImageUnpackers(Protocol):
    """What :meth:`Transfers.unpack` needs of the registered unpacker factory
    (:class:`berth.core.unpack.UnpackerFactory` is one): an
    :class:`~berth.core.unpack.Unpacker` bound to a namespace, snapshotter,
    content view and lease. Raises InvalidArgument for an unknown snapshotter.
    Cheap: no I/O until the unpacker is used."""

    def unpacker(
        self, namespace: str, snapshotter: str, content: Store, *, lease: str | None = None
    ) -> Unpacker: ...


# ---------------------------------------------------------------------------
# The metadata store seen as a plain content Store


class LeasedContent:
    """A :class:`~berth.core.content.Store` over one namespace of the metadata
    content store, creating everything under ``lease`` (may be None).

    Under a lease, looking content up (``info``, ``read_blob``, ``reader_at``)
    also adds it to the lease, so content a transfer found present stays until
    the transfer is done with it. Blocking, like every Store.
    """

    def __init__(self, content: ContentStore, namespace: str, lease: str | None) -> None:
        self.content = content
        self.namespace = namespace
        self.lease = lease
        self._leases = LeaseStore(content.db)

    def _hold(self, digest: Digest | str) -> None:
        if self.lease:
            # Added before the lookup: a digest that turns out to be absent
            # costs one harmless row, and one that is present cannot be
            # collected between the lookup and the hold.
            self._leases.add_resource(self.namespace, self.lease, "content", str(digest))

    def info(self, digest: Digest | str) -> Info:
        d = Digest.parse(digest)
        self._hold(d)
        return self.content.info(self.namespace, d)

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        return self.content.update(self.namespace, info.digest, info.labels, fieldpaths)

    def walk(self, fn: WalkFn, filter_fn: InfoFilter | None = None) -> None:
        for info in self.content.list(self.namespace):
            if filter_fn is None or filter_fn(info):
                fn(info)

    def delete(self, digest: Digest | str) -> None:
        self.content.delete(self.namespace, digest, lease=self.lease)

    def reader_at(self, target: Descriptor | Digest | str) -> ReaderAt:
        d = target.digest if isinstance(target, Descriptor) else Digest.parse(target)
        self._hold(d)
        return self.content.reader_at(self.namespace, d)

    def read_blob(self, digest: Digest | str, offset: int = 0, size: int = -1) -> bytes:
        if offset < 0:
            raise errdefs.InvalidArgument(f"invalid read offset {offset}")
        with self.reader_at(digest) as ra:
            if offset > ra.size:
                raise OutOfRange(f"read past object length {ra.size} bytes")
            n = ra.size - offset if size < 0 else min(size, ra.size - offset)
            return ra.read_at(offset, n)

    def open_writer(
        self, ref: str, *, total: int = 0, expected: Digest | str | None = None
    ) -> Writer:
        w = self.content.writer(
            self.namespace, ref, total=total, expected=expected, lease=self.lease
        )
        # The namespaced writer offers what copy_into drives (write, truncate,
        # digest, status, commit, close) but not write_at, which only the
        # Content service's Write conversation needs.
        return cast(Writer, w)

    def status(self, ref: str) -> Status:
        return self.content.status(self.namespace, ref)

    def list_statuses(self, filter_fn: StatusFilter | None = None) -> list[Status]:
        return [
            s for s in self.content.list_statuses(self.namespace) if not filter_fn or filter_fn(s)
        ]

    def abort(self, ref: str) -> None:
        self.content.abort(self.namespace, ref, lease=self.lease)


class MetadataLabeler:
    """A :class:`~berth.core.remotes.Labeler` over one namespace's content labels."""

    def __init__(self, content: ContentStore, namespace: str) -> None:
        self._content = content
        self._namespace = namespace

    async def labels(self, digest: Digest) -> dict[str, str]:
        info = await asyncio.to_thread(self._content.info, self._namespace, digest)
        return dict(info.labels)

    async def update(self, digest: Digest, labels: Mapping[str, str]) -> None:
        if not labels:
            return
        paths = [f"labels.{key}" for key in labels]
        await asyncio.to_thread(self._content.update, self._namespace, digest, dict(labels), paths)


# ---------------------------------------------------------------------------
# Transfers


def _matcher(platforms: Sequence[str]) -> MatchComparer | None:
    """The matcher for ``--platform`` values, None for none (the host default)."""
    if not platforms:
        return None
    from berth.core.images.platforms import matcher_for  # loaded by _load_remotes already

    return matcher_for(platforms)


async def _load_remotes() -> None:
    """Import the registry client on a worker thread (a no-op once loaded).

    The first time costs about 0.2 s of imports (httpx and what its package
    pulls in); on the event loop that would stall every other request.
    """
    if "berth.core.remotes" not in sys.modules:
        await asyncio.to_thread(importlib.import_module, "berth.core.remotes")


async def _load_images() -> None:
    """Import the image model on a worker thread (a no-op once loaded).

    Manifests and platforms are needed by the first pull, push or unpack,
    not by an idle daemon; a pull loads them with the registry client.
    """
    if "berth.core.images" not in sys.modules:
        await asyncio.to_thread(importlib.import_module, "berth.core.images")


def _update_of(p: Progress) -> Update:
    d = p.descriptor
    return Update(p.key, str(d.digest), d.media_type, p.status, p.offset, p.total)


class Transfers:
    """Pull and push for berthd, over the metadata plugin's stores.

    ``unpacker`` returns the factory of per-layer unpack callbacks, or None
    when no unpacker is loaded; it is asked at each pull, so a subsystem
    that loads after this one is still found. ``default_hosts_dir`` is the
    daemon's own ``hosts.toml`` directory, used when a request names none.
    """

    def __init__(
        self,
        md: Metadata,
        *,
        unpacker: Callable[[], UnpackerFactory | None] | None = None,
        default_hosts_dir: str = "",
        default_snapshotter: str = "overlayfs",
        concurrency: int = DEFAULT_CONCURRENCY,
        lease_expiry: timedelta = DEFAULT_LEASE_EXPIRY,
    ) -> None:
        self.md = md
        self.content = md.require_content()
        self._unpacker = unpacker or (lambda: None)
        self.default_hosts_dir = default_hosts_dir
        self.default_snapshotter = default_snapshotter
        self.concurrency = concurrency
        self.lease_expiry = lease_expiry
        self._leases = LeaseStore(md)

    # -- leases ----------------------------------------------------------------

    async def _create_lease(self, namespace: str, purpose: str) -> str:
        lease_id = random_lease_id()
        expires = datetime.now(UTC) + self.lease_expiry
        labels = {
            # RFC 3339 in UTC, as Go's time.RFC3339 writes it (what GC parses).
            LABEL_EXPIRE: expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            LEASE_PURPOSE_LABEL: purpose,
        }
        await self.md.run(lambda: self._leases.create(namespace, lease_id, labels))
        return lease_id

    async def _delete_lease(self, namespace: str, lease_id: str) -> None:
        with contextlib.suppress(errdefs.NotFound):
            await self.md.run(lambda: self._leases.delete(namespace, lease_id))
        # What only the lease held (a failed pull's leftovers) is garbage now.
        self.md.collector.mutated(deletion=True)

    # -- pull --------------------------------------------------------------------

    async def pull(
        self, namespace: str, opts: PullOptions, *, progress: UpdateFn | None = None
    ) -> PullOutcome:
        """Pull ``opts.ref`` into ``namespace``, record the image, unpack if asked.

        Raises InvalidArgument (bad reference, platform or option; invalid
        manifests), NotFound (no such tag, blob or platform), the registry
        errors of :mod:`berth.core.remotes` (Unauthorized: credentials
        missing or refused), FailedPrecondition (content not matching its
        digest), and whatever the unpacker raises. Cancellation stops the
        transfer; completed blobs and partial ingests are kept only as long
        as the lease (which is deleted), as with containerd.
        """
        await _load_remotes()
        from berth.core.remotes import Reference
        from berth.core.remotes import pull as remote_pull

        spec = Reference.parse(opts.ref)
        matcher = _matcher(opts.platforms)
        if opts.all_platforms and opts.platforms:
            raise errdefs.InvalidArgument("--platform and --all-platforms are mutually exclusive")
        limit = opts.max_concurrent_downloads or self.concurrency
        if limit < 1:
            raise errdefs.InvalidArgument("max_concurrent_downloads must be at least 1")
        snapshotter = opts.snapshotter or self.default_snapshotter
        emit = progress or (lambda _u: None)

        warnings: list[str] = []
        lease = await self._create_lease(namespace, f"pull {spec}")
        try:
            store = LeasedContent(self.content, namespace, lease)
            labeler = MetadataLabeler(self.content, namespace)
            unpack_fn: UnpackFn | None = None
            if opts.unpack:
                factory = self._unpacker()
                if factory is None:
                    warnings.append(
                        "image not unpacked: berthd has no unpacker loaded "
                        "(its content is stored; `berth plugins ls` shows what runs)"
                    )
                else:
                    ctx = UnpackContext(namespace, snapshotter, lease, store, labeler)
                    unpack_fn = _reporting_unpack(factory(ctx), emit)
            async with opts.registry.resolver(
                spec, default_hosts_dir=self.default_hosts_dir
            ) as resolver:
                result = await remote_pull(
                    resolver,
                    spec,
                    store,
                    platform=matcher,
                    all_platforms=opts.all_platforms,
                    labeler=labeler,
                    progress=lambda p: emit(_update_of(p)),
                    unpack=unpack_fn,
                    max_concurrent_downloads=limit,
                )
            # The record stores a plain descriptor (no platform or URLs).
            t = result.target
            image = Image(
                result.name,
                Descriptor(t.media_type, t.digest, t.size, dict(t.annotations)),
                dict(opts.labels),
            )
            saved, created = await self.md.run(lambda: self._record(namespace, image))
        finally:
            await self._delete_lease(namespace, lease)
        return PullOutcome(
            image=saved,
            created=created,
            unpacked=unpack_fn is not None,
            snapshotter=snapshotter,
            warnings=tuple(warnings),
        )

    def _record(self, namespace: str, image: Image) -> tuple[Image, bool]:
        """Create the image record, or update it if the name exists (containerd's
        ``createNewImage``). Blocking."""
        try:
            return self.md.images.create(namespace, image), True
        except errdefs.AlreadyExists:
            updated = self.md.images.update(
                namespace, image.name, labels=image.labels, target=image.target
            )
            return updated, False

    # -- push --------------------------------------------------------------------

    async def push(
        self, namespace: str, opts: PushOptions, *, progress: UpdateFn | None = None
    ) -> PushOutcome:
        """Push the local image ``opts.source`` (default: ``opts.ref``) to ``opts.ref``.

        Raises NotFound (no such image, or content missing locally),
        InvalidArgument (bad reference or platform), and the registry errors.
        """
        await _load_remotes()
        from berth.core.remotes import Reference
        from berth.core.remotes import push as remote_push

        spec = Reference.parse(opts.ref, default_tag=False)
        matcher = _matcher(opts.platforms)
        limit = opts.max_concurrent_uploads or self.concurrency
        if limit < 1:
            raise errdefs.InvalidArgument("max_concurrent_uploads must be at least 1")
        source = opts.source or opts.ref
        image = await self.md.run(lambda: self.md.images.get(namespace, source))
        store = LeasedContent(self.content, namespace, None)
        emit = progress or (lambda _u: None)
        async with opts.registry.resolver(
            spec, default_hosts_dir=self.default_hosts_dir
        ) as resolver:
            target = await remote_push(
                resolver,
                spec,
                store,
                image.target,
                platform=matcher,
                labeler=MetadataLabeler(self.content, namespace),
                progress=lambda p: emit(_update_of(p)),
                max_concurrent_uploads=limit,
            )
        return PushOutcome(str(spec), target)

    # -- unpack ------------------------------------------------------------------

    async def unpack(
        self, namespace: str, opts: UnpackOptions, *, progress: LayerUpdateFn | None = None
    ) -> UnpackOutcome:
        """Unpack the stored image ``opts.name`` into a snapshotter.

        Checks in containerd's order: the image record (NotFound: 'image
        "NAME": not found'), the platform specifier (InvalidArgument), the
        manifest and config for the platform (NotFound when absent), then
        the snapshotter (InvalidArgument: "snapshotter not loaded: NAME").
        Layers already present as snapshots are reported ``exists`` and
        skipped; the others are applied bottom-up (InvalidArgument for a
        hostile or corrupt layer, or a diff ID not matching the config). The
        image config then gets ``containerd.io/gc.ref.snapshot.<snapshotter>``
        so the chain lives as long as the image. NotImplemented when berthd
        has no unpacker loaded.
        """
        if not opts.name:
            raise errdefs.InvalidArgument("image name must not be empty")
        image = await self.md.run(lambda: self.md.images.get(namespace, opts.name))
        await _load_images()
        from berth.core.images.platforms import default, matcher_for
        from berth.core.images.rootfs import chain_ids
        from berth.core.images.walk import image_config, manifest_for_platform

        matcher = matcher_for([opts.platform]) if opts.platform else default()
        factory = self._unpacker()
        if not isinstance(factory, ImageUnpackers):
            raise errdefs.NotImplemented(
                "unpack is not available: berthd has no unpacker loaded "
                "(`berth plugins ls` shows what runs)"
            )
        snapshotter = opts.snapshotter or self.default_snapshotter
        emit = progress or (lambda _u: None)

        lease = await self._create_lease(namespace, f"unpack {opts.name}")
        try:
            store = LeasedContent(self.content, namespace, lease)

            def resolve() -> tuple[ResolvedImage, list[Digest], Unpacker]:
                resolved = manifest_for_platform(store, image.target, matcher)
                config = image_config(store, resolved.manifest.config)
                unpacker = factory.unpacker(namespace, snapshotter, store, lease=lease)
                return resolved, [Digest.parse(d) for d in config.diff_ids], unpacker

            resolved, diff_ids, unpacker = await asyncio.to_thread(resolve)
            layers = list(resolved.manifest.layers)
            if len(layers) != len(diff_ids):
                raise errdefs.InvalidArgument(
                    f"image {opts.name}: number of layers and diffIDs don't match: "
                    f"{len(layers)} != {len(diff_ids)}"
                )
            chains = chain_ids(diff_ids)
            applied: list[str] = []
            for i, layer in enumerate(layers):
                chain = chains[i]
                parent = chains[i - 1] if i else None

                def update(status: str, layer: Descriptor = layer, chain: Digest = chain) -> None:
                    emit(
                        LayerUpdate(
                            str(chain), str(layer.digest), layer.media_type, layer.size, status
                        )
                    )

                if await _finish(asyncio.to_thread(_snapshot_exists, unpacker, chain)):
                    update("exists")
                    continue
                update("unpacking")
                done = await _finish(
                    asyncio.to_thread(unpacker.apply_layer, layer, diff_ids[i], chain, parent)
                )
                # False: another unpack committed the same chain meanwhile.
                update("unpacked" if done else "exists")
                if done:
                    applied.append(str(chain))
            if chains:
                # Set even when every layer existed: the chain may have come
                # from another image, and this one must keep it alive too.
                await _finish(
                    asyncio.to_thread(unpacker.mark_image, resolved.manifest.config, chains[-1])
                )
        finally:
            await self._delete_lease(namespace, lease)
        d = resolved.descriptor
        return UnpackOutcome(
            image=image,
            manifest=Descriptor(d.media_type, d.digest, d.size, dict(d.annotations)),
            snapshotter=snapshotter,
            chain_id=str(chains[-1]) if chains else "",
            applied=tuple(applied),
        )


T = TypeVar("T")


async def _finish(work: Awaitable[T]) -> T:
    """Await ``work`` (a worker-thread call); if the caller is cancelled
    meanwhile, let it finish before the cancellation goes on.

    A thread cannot be stopped, and a layer it commits after the unpack's
    lease is gone would belong to nothing: the lease is deleted only once
    the thread is done.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await task
        raise


def _snapshot_exists(unpacker: Unpacker, chain_id: Digest) -> bool:
    """Whether ``chain_id`` is already a snapshot (unpacked by this image or another)."""
    try:
        unpacker.sn.stat(str(chain_id))
    except errdefs.NotFound:
        return False
    return True


def _reporting_unpack(fn: UnpackFn, emit: UpdateFn) -> UnpackFn:
    """Wrap an unpack callback so each layer reports unpacking/unpacked."""

    async def unpack(layer: LayerToUnpack) -> None:
        d = layer.layer
        key = f"layer-{d.digest}"
        emit(Update(key, str(d.digest), d.media_type, "unpacking", 0, d.size))
        await fn(layer)
        emit(Update(key, str(d.digest), d.media_type, "unpacked", d.size, d.size))

    return unpack
