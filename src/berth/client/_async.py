"""The asyncio client. Every method is a one-line twin of ``_sync``'s.

The work of each call lives in ``_core``; see its module docstring for why.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

from berth.client import _config, _core
from berth.client._transport import AsyncStream, AsyncTransport, open_async_stream

if TYPE_CHECKING:
    from berth.client._content_store import ImageRecord
    from berth.client._snapshots import AsyncSnapshots
    from berth.client._sync import Client
    from berth.client._tasks_async import AsyncContainerHandle, AsyncTasks
    from berth.client.types import (
        AnyValue,
        BlobCheck,
        Container,
        ContentInfo,
        Descriptor,
        Image,
        ImageCheck,
        ImageConfig,
        ImageDetails,
        ImageSummary,
        IngestStatus,
        LayerProgress,
        Lease,
        Mount,
        Namespace,
        Plugin,
        PulledImage,
        Resource,
        TransferProgress,
        UnpackedImage,
        Version,
    )


class AsyncClient:
    """An asyncio connection to berthd (or containerd) over its gRPC API.

    The same surface as :class:`berth.client.Client`, with coroutines: arguments,
    defaults, environment variables and raised exceptions are identical. Create
    and use it inside one running event loop; ``async with`` closes it.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        namespace: str | None = None,
        timeout: float | None = None,
        lease: str | None = None,
    ) -> None:
        self.address = _config.resolve_address(address)
        self.namespace = _config.resolve_namespace(namespace)
        self.timeout = timeout
        self.lease_id = lease
        self._transport = AsyncTransport(self.address)
        self._owner = True
        self.namespaces = AsyncNamespaces(self)
        self.leases = AsyncLeases(self)
        self.events = AsyncEvents(self)
        self.containers = AsyncContainers(self)
        self.images = AsyncImages(self)
        self.content = AsyncContent(self)

    def __repr__(self) -> str:
        return f"AsyncClient(address={self.address!r}, namespace={self.namespace!r})"

    # --- lifecycle and views ---

    async def close(self) -> None:
        """Close the connection (a no-op on a view)."""
        if self._owner:
            await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _view(self, namespace: str, lease: str | None, timeout: float | None) -> AsyncClient:
        view = object.__new__(AsyncClient)
        view.address = self.address
        view.namespace = namespace
        view.timeout = timeout
        view.lease_id = lease
        view._transport = self._transport
        view._owner = False
        view.namespaces = AsyncNamespaces(view)
        view.leases = AsyncLeases(view)
        view.events = AsyncEvents(view)
        view.containers = AsyncContainers(view)
        view.images = AsyncImages(view)
        view.content = AsyncContent(view)
        return view

    def with_namespace(self, namespace: str) -> AsyncClient:
        """A view of this client working in ``namespace``."""
        return self._view(namespace, self.lease_id, self.timeout)

    def with_lease(self, lease_id: str | None) -> AsyncClient:
        """A view of this client whose calls carry ``lease_id`` (None: no lease)."""
        return self._view(self.namespace, lease_id, self.timeout)

    def with_timeout(self, timeout: float | None) -> AsyncClient:
        """A view of this client with a different per-call deadline, in seconds."""
        return self._view(self.namespace, self.lease_id, timeout)

    async def _run(self, op: _core.Op[_core.T]) -> _core.T:
        md = _core.metadata(self.namespace, self.lease_id)
        return await self._transport.run(op, md, self.timeout)

    # --- containers as live objects: tasks and processes (see berth.client._tasks_async) ---

    @property
    def tasks(self) -> AsyncTasks:
        """The Tasks service: list tasks and collect metrics."""
        from berth.client._tasks_async import AsyncTasks

        return AsyncTasks(self)

    async def load_container(self, container_id: str) -> AsyncContainerHandle:
        """A container to create or load tasks in (``new_task``, ``task``). Raises NotFound."""
        from berth.client._tasks_async import AsyncContainerHandle

        info = await self._run(_core.containers_get(container_id))
        return AsyncContainerHandle(self, info)

    # --- snapshots and layer diffs (see berth.client._snapshots) ---

    @property
    def snapshots(self) -> AsyncSnapshots:
        """The Snapshots service for ``overlayfs``; ``.with_snapshotter(name)`` picks another."""
        from berth.client._snapshots import AsyncSnapshots

        return AsyncSnapshots(self)

    # --- daemon ---

    async def version(self) -> Version:
        """The daemon's version and revision."""
        return await self._run(_core.version())

    async def server_uuid(self) -> str:
        """The daemon's persistent identity (what ``ctr version`` shows as UUID)."""
        return await self._run(_core.server_uuid())

    async def plugins(self, filters: Iterable[str] = ()) -> builtins.list[Plugin]:
        """The daemon's plugins, in load order, matching any of ``filters``."""
        return await self._run(_core.plugins(filters))

    # --- image transfers (the daemon talks to the registry; see berth.services.transfer) ---

    async def pull(
        self,
        ref: str,
        *,
        platform: str | Iterable[str] | None = None,
        all_platforms: bool = False,
        unpack: bool = True,
        snapshotter: str = _core.DEFAULT_SNAPSHOTTER,
        plain_http: bool = False,
        hosts_dir: str | None = None,
        user: str | None = None,
        password: str | None = None,
        max_concurrent_downloads: int = 0,
        labels: Mapping[str, str] | None = None,
        on_progress: Callable[[TransferProgress], Any] | None = None,
    ) -> PulledImage:
        """Have the daemon pull ``ref`` (``host/repo:tag`` or ``@digest``) and record it.

        ``platform`` (one specifier or several, e.g. ``"linux/arm64"``) picks
        the manifests of an index (default: the daemon's platform);
        ``all_platforms`` fetches all. With ``unpack`` the layers are also
        unpacked into ``snapshotter`` as they arrive (see the result's
        ``unpacked`` and ``warnings``). ``hosts_dir`` is a containerd
        ``hosts.toml`` directory on the daemon's host; ``user`` is
        ``USER[:PASSWORD]`` (or give ``password``). ``on_progress`` receives
        each blob's latest :class:`TransferProgress`, batched by the daemon.

        Raises NotFound (no such tag, blob or platform), InvalidArgument (bad
        reference, platform or manifest), FailedPrecondition (content not
        matching its digest), and BerthError with the registry's reason when
        it refuses access (e.g. "unauthorized: ..."). Cancelling the call (an
        exception in ``on_progress``, ^C, task cancellation) cancels the pull.
        """
        name, secret = _core.split_user(user, password)
        return await self._run(
            _core.transfer_pull(
                ref,
                platform,
                all_platforms,
                unpack,
                snapshotter,
                plain_http,
                hosts_dir,
                name,
                secret,
                max_concurrent_downloads,
                labels,
                on_progress,
            )
        )

    async def push(
        self,
        ref: str,
        *,
        source: str | None = None,
        platform: str | Iterable[str] | None = None,
        plain_http: bool = False,
        hosts_dir: str | None = None,
        user: str | None = None,
        password: str | None = None,
        max_concurrent_uploads: int = 0,
        on_progress: Callable[[TransferProgress], Any] | None = None,
    ) -> Descriptor:
        """Have the daemon push the local image ``source`` (default: ``ref``) to ``ref``.

        ``platform`` limits which manifests of an index are pushed (default:
        all). Returns the pushed root descriptor. Raises NotFound (no such
        local image, or content missing), InvalidArgument, and the registry's
        refusals as for :meth:`pull`.
        """
        name, secret = _core.split_user(user, password)
        return await self._run(
            _core.transfer_push(
                ref,
                source,
                platform,
                plain_http,
                hosts_dir,
                name,
                secret,
                max_concurrent_uploads,
                on_progress,
            )
        )

    @contextlib.asynccontextmanager
    async def lease(
        self,
        lease_id: str | None = None,
        *,
        expires: timedelta | float | None = _core.DEFAULT_LEASE_EXPIRY,
        labels: Mapping[str, str] | None = None,
    ) -> AsyncIterator[AsyncClient]:
        """Hold a lease for the length of an ``async with`` block (see ``Client.lease``)."""
        if self.lease_id:
            yield self
            return
        created = await self.leases.create(lease_id, expires=expires, labels=labels)
        try:
            yield self.with_lease(created.id)
        finally:
            await self._run(_core.leases_delete_quietly(created.id))

    # --- image archives (run here, as ctr does; see berth.client._content_store) ---

    async def import_archive(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        *,
        base_name: str | None = None,
        digests: bool = False,
        skip_digest_for_named: bool = False,
        index_name: str | None = None,
        all_platforms: bool = False,
        platform: str | None = None,
        compress_blobs: bool = False,
    ) -> builtins.list[ImageRecord]:
        """Import an OCI layout or ``docker save`` tar (see ``Client.import_archive``).

        The archive code blocks, so it runs in a worker thread over a blocking
        connection of its own, opened for this call.
        """
        from berth.client import _content_store

        def work() -> builtins.list[ImageRecord]:
            with self._blocking_twin() as client:
                return _content_store.import_from(
                    client,
                    source,
                    base_name=base_name,
                    digests=digests,
                    skip_digest_for_named=skip_digest_for_named,
                    index_name=index_name,
                    all_platforms=all_platforms,
                    platform=platform,
                    compress_blobs=compress_blobs,
                )

        return await asyncio.to_thread(work)

    async def export_archive(
        self,
        dest: str | os.PathLike[str] | BinaryIO,
        names: Iterable[str],
        *,
        platforms: Sequence[str] = (),
        all_platforms: bool = False,
        docker_manifest: bool = True,
        skip_non_distributable: bool = False,
    ) -> None:
        """Export images as an OCI layout tar (see ``Client.export_archive``)."""
        from berth.client import _content_store

        def work() -> None:
            with self._blocking_twin() as client:
                _content_store.export_to(
                    client,
                    dest,
                    names,
                    platforms=platforms,
                    all_platforms=all_platforms,
                    docker_manifest=docker_manifest,
                    skip_non_distributable=skip_non_distributable,
                )

        await asyncio.to_thread(work)

    def _blocking_twin(self) -> Client:
        from berth.client._sync import Client

        return Client(
            self.address, namespace=self.namespace, timeout=self.timeout, lease=self.lease_id
        )


class AsyncNamespaces:
    """The Namespaces service: ``client.namespaces``."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> builtins.list[Namespace]:
        """Every namespace with its labels, sorted by name."""
        return await self._client._run(_core.namespaces_list())

    async def get(self, name: str) -> Namespace:
        """One namespace. Raises NotFound if it does not exist."""
        return await self._client._run(_core.namespaces_get(name))

    async def create(self, name: str, labels: Mapping[str, str] | None = None) -> Namespace:
        """Create a namespace. Raises AlreadyExists, or InvalidArgument for a bad name or label."""
        return await self._client._run(_core.namespaces_create(name, labels))

    async def label(self, name: str, labels: Mapping[str, str]) -> Namespace:
        """Set the given labels (an empty value removes that label); others stay."""
        return await self._client._run(_core.namespaces_label(name, labels))

    async def replace_labels(self, name: str, labels: Mapping[str, str]) -> Namespace:
        """Make ``labels`` the namespace's whole label set. Raises NotFound."""
        return await self._client._run(_core.namespaces_replace_labels(name, labels))

    async def delete(self, name: str) -> None:
        """Delete an empty namespace. Raises NotFound, or FailedPrecondition while in use."""
        return await self._client._run(_core.namespaces_delete(name))


class AsyncLeases:
    """The Leases service: ``client.leases``."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        lease_id: str | None = None,
        *,
        expires: timedelta | float | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Lease:
        """Create a lease in the client's namespace (see ``Leases.create``)."""
        return await self._client._run(_core.leases_create(lease_id, expires, labels))

    async def list(self, filters: Iterable[str] = ()) -> builtins.list[Lease]:
        """The namespace's leases matching any of ``filters``."""
        return await self._client._run(_core.leases_list(filters))

    async def delete(self, lease_id: str, *, sync: bool = False) -> None:
        """Delete a lease. Raises NotFound."""
        return await self._client._run(_core.leases_delete(lease_id, sync))

    async def add_resource(self, lease_id: str, resource: Resource) -> None:
        """Make the lease hold ``resource``."""
        return await self._client._run(_core.leases_add_resource(lease_id, resource))

    async def delete_resource(self, lease_id: str, resource: Resource) -> None:
        """Stop the lease holding ``resource``."""
        return await self._client._run(_core.leases_delete_resource(lease_id, resource))

    async def list_resources(self, lease_id: str) -> builtins.list[Resource]:
        """The resources a lease holds. Raises NotFound."""
        return await self._client._run(_core.leases_list_resources(lease_id))


class AsyncContainers:
    """The Containers service: ``AsyncClient.containers``.

    Also resolves what a container is made from: an image's config for a
    platform (:meth:`image_config`) and a rootfs snapshot on top of the
    unpacked image (:meth:`prepare_rootfs`).
    """

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, filters: Iterable[str] = ()) -> builtins.list[Container]:
        """The namespace's containers matching any of ``filters``, by id.

        Fields: ``id``, ``image``, ``runtime.name``, ``labels.<key>``. A
        malformed filter raises InvalidArgument.
        """
        return await self._client._run(_core.containers_list(filters))

    async def get(self, container_id: str) -> Container:
        """One container. Raises NotFound."""
        return await self._client._run(_core.containers_get(container_id))

    async def create(
        self,
        container_id: str,
        *,
        spec: Mapping[str, Any] | bytes | AnyValue,
        runtime: str = _core.DEFAULT_RUNTIME,
        runtime_options: AnyValue | None = None,
        image: str = "",
        labels: Mapping[str, str] | None = None,
        snapshotter: str = "",
        snapshot_key: str = "",
        extensions: Mapping[str, AnyValue] | None = None,
    ) -> Container:
        """Create a container record (no task is started).

        ``spec`` is the OCI spec as a dict or JSON bytes (stored with
        containerd's spec type URL), or an already typed :class:`AnyValue`.
        Raises AlreadyExists, or InvalidArgument for a bad id, label, a
        missing runtime, or a snapshot key without a snapshotter.
        """
        return await self._client._run(
            _core.containers_create(
                container_id,
                spec,
                runtime,
                runtime_options,
                image,
                labels,
                snapshotter,
                snapshot_key,
                extensions,
            )
        )

    async def label(self, container_id: str, labels: Mapping[str, str]) -> Container:
        """Set the given labels (an empty value removes one); others stay.

        Returns the container as it is afterwards. Raises NotFound.
        """
        return await self._client._run(_core.containers_label(container_id, labels))

    async def delete(self, container_id: str) -> None:
        """Delete the record; its snapshot is left to garbage collection. Raises NotFound."""
        return await self._client._run(_core.containers_delete(container_id))

    async def image_config(self, image: str, *, platform: str | None = None) -> ImageConfig:
        """The config of image ``image`` for ``platform`` (default: this host's).

        Raises NotFound for a missing image or blob, or when no manifest
        matches the platform.
        """
        return await self._client._run(_core.image_config(image, platform))

    async def prepare_rootfs(
        self,
        key: str,
        image: ImageConfig,
        *,
        snapshotter: str = _core.DEFAULT_SNAPSHOTTER,
        labels: Mapping[str, str] | None = None,
    ) -> builtins.list[Mount]:
        """Prepare snapshot ``key`` over the unpacked ``image``; return its mounts.

        Raises FailedPrecondition if the image is not unpacked for
        ``snapshotter``, AlreadyExists if ``key`` is taken. Call it under a
        lease (:meth:`AsyncClient.lease`) until a container references the key.
        """
        return await self._client._run(_core.prepare_rootfs(image, snapshotter, key, labels))


class AsyncImages:
    """The Images service: ``client.images`` (pulling is :meth:`AsyncClient.pull`)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, filters: Iterable[str] = ()) -> builtins.list[Image]:
        """The namespace's images matching any of ``filters``, by name.

        Fields: ``name``, ``target.digest``, ``target.mediatype``,
        ``labels.<key>``. A malformed filter raises InvalidArgument.
        """
        return await self._client._run(_core.images_list(filters))

    async def get(self, name: str) -> Image:
        """One image record. Raises NotFound."""
        return await self._client._run(_core.images_get(name))

    async def delete(self, name: str, *, sync: bool = False) -> None:
        """Delete an image record; ``sync`` waits until its unreferenced content is collected.

        Raises NotFound.
        """
        return await self._client._run(_core.images_delete(name, sync))

    async def tag(self, source: str, target: str, *, force: bool = False) -> Image:
        """Name ``target`` the image ``source`` is (same target and labels).

        Raises NotFound for ``source``; AlreadyExists for ``target`` unless
        ``force``, which replaces it.
        """
        return await self._client._run(_core.images_tag(source, target, force))

    async def inspect(self, name: str, *, platform: str | None = None) -> ImageDetails:
        """The image's index (if any), manifest for ``platform`` (default: this
        host's) and config, read from the content store and parsed.

        Raises NotFound (image, blob, or no manifest for the platform),
        InvalidArgument (a document that is not JSON).
        """
        return await self._client._run(_core.images_inspect(name, platform))

    async def summary(self, image: Image) -> ImageSummary:
        """Size for this host's platform and all platforms of ``image`` (as ``ctr images ls``)."""
        return await self._client._run(_core.images_summary(image))

    async def check(self, image: Image, *, platform: str | None = None) -> ImageCheck:
        """Read back every blob ``image`` needs for ``platform`` and verify its digest.

        Missing and corrupt blobs are reported in the result, not raised.
        """
        return await self._client._run(_core.images_check(image, platform))

    async def unpack(
        self,
        name: str,
        *,
        snapshotter: str = _core.DEFAULT_SNAPSHOTTER,
        platform: str | None = None,
        on_progress: Callable[[LayerProgress], Any] | None = None,
    ) -> UnpackedImage:
        """Have the daemon unpack the stored image ``name`` into ``snapshotter``.

        For images imported (or pulled with ``unpack=False``): the layers of
        the manifest for ``platform`` (default: the daemon's) become
        committed snapshots named by chain ID, as ``ctr images import`` and
        containerd's ``Image.Unpack`` leave them. Layers already unpacked
        are reported as ``exists`` and left alone, so calling it again is
        cheap and harmless. ``on_progress`` receives each layer's latest
        :class:`LayerProgress`; ``""`` as ``snapshotter`` means the
        daemon's default.

        Raises NotFound (no such image; no manifest for the platform;
        missing content), InvalidArgument (unknown snapshotter, bad
        platform, a corrupt or hostile layer), NotImplemented (the daemon
        has no unpacker, or is containerd, which has no Transfer service).
        """
        return await self._client._run(
            _core.images_unpack(name, snapshotter, platform, on_progress)
        )


class AsyncContent:
    """The Content service: ``client.content``."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, filters: Iterable[str] = ()) -> builtins.list[ContentInfo]:
        """The namespace's blobs matching any of ``filters`` (``digest``, ``size``, ``labels.<key>``)."""
        return await self._client._run(_core.content_list(filters))

    async def info(self, digest: str) -> ContentInfo:
        """One blob's record. Raises NotFound, InvalidArgument for a bad digest."""
        return await self._client._run(_core.content_info(digest))

    async def get(
        self, digest: str, out: Callable[[bytes], Any], *, offset: int = 0, size: int = 0
    ) -> int:
        """Stream a blob into ``out`` (called with each chunk, e.g. ``file.write``).

        ``size`` <= 0 reads to the end. Returns the bytes delivered. Raises
        NotFound, OutOfRange for an offset past the end.
        """
        return await self._client._run(_core.content_read(digest, offset, size, out))

    async def read(self, digest: str) -> bytes:
        """A whole blob in memory (meant for manifests and configs). Raises NotFound."""
        chunks: builtins.list[bytes] = []
        await self._client._run(_core.content_read(digest, 0, 0, chunks.append))
        return b"".join(chunks)

    async def delete(self, digest: str) -> None:
        """Remove the namespace's record of a blob; the file goes at the next GC. Raises NotFound."""
        return await self._client._run(_core.content_delete(digest))

    async def active(self, filters: Iterable[str] = ()) -> builtins.list[IngestStatus]:
        """Ingests in progress (field ``ref``)."""
        return await self._client._run(_core.content_active(filters))

    async def abort(self, ref: str) -> None:
        """Discard an ingest. Raises NotFound."""
        return await self._client._run(_core.content_abort(ref))

    async def ingest(
        self,
        ref: str,
        chunks: Iterable[bytes],
        *,
        expected: str | None = None,
        size: int = 0,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Write ``chunks`` as the ingest ``ref``, commit it and return its digest.

        ``expected`` and ``size`` (0: unknown) are verified at commit (FailedPrecondition
        on a mismatch). Call it under a lease, or the blob is garbage at the next
        collection. Raises AlreadyExists if ``expected`` is already present.
        """
        return await self._client._run(_core.content_ingest(ref, chunks, expected, size, labels))

    async def check(self, filters: Iterable[str] = ()) -> builtins.list[BlobCheck]:
        """Read back every blob matching ``filters`` and verify its digest and size."""
        return await self._client._run(_core.content_check(filters))


class AsyncEvents:
    """The Events service: ``client.events``."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def subscribe(self, filters: Iterable[str] = ()) -> AsyncStream[_core.Event]:
        """Stream the daemon's events matching any of ``filters`` (see ``Events.subscribe``).

        Not a coroutine: it returns the stream at once; read it with
        ``async for`` and close it with ``async with`` or ``close()``.
        """
        c = self._client
        md = _core.metadata(c.namespace, c.lease_id)
        return open_async_stream(c._transport, _core.events_subscribe(filters), md)
