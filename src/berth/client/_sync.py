"""The blocking client. Every method is a one-line twin of ``_async``'s.

The work of each call lives in ``_core``; see its module docstring for why.
"""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

from berth.client import _config, _core
from berth.client._transport import SyncStream, SyncTransport, open_sync_stream

if TYPE_CHECKING:
    from berth.client._content_store import ImageRecord
    from berth.client._snapshots import Snapshots
    from berth.client._tasks import ContainerHandle, Tasks
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


class Client:
    """A blocking connection to berthd (or containerd) over its gRPC API.

    ``address`` is the daemon's unix socket path (or a ``unix:``/gRPC target);
    when omitted it comes from ``$BERTH_ADDRESS``, then ``$CONTAINERD_ADDRESS``,
    then ``/run/berth/berth.sock``. ``namespace`` defaults to
    ``$CONTAINERD_NAMESPACE``, then ``default``. ``timeout`` is a per-call
    deadline in seconds (None: no deadline). ``lease`` attaches a lease id to
    every call (the ``containerd-lease`` header).

    Connecting is lazy: creating a client never fails for an absent daemon; the
    first call raises ``berth.errdefs.Unavailable`` instead. Every failed call
    raises the ``berth.errdefs`` exception matching its gRPC status code, with
    the server's message.

    The client is thread-safe. Use it as a context manager, or call
    :meth:`close`, to release the connection. Views made by ``with_*`` share
    the connection and need no closing of their own.
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
        self._transport = SyncTransport(self.address)
        self._owner = True
        self.namespaces = Namespaces(self)
        self.leases = Leases(self)
        self.events = Events(self)
        self.containers = Containers(self)
        self.images = Images(self)
        self.content = Content(self)

    def __repr__(self) -> str:
        return f"Client(address={self.address!r}, namespace={self.namespace!r})"

    # --- lifecycle and views ---

    def close(self) -> None:
        """Close the connection (a no-op on a view)."""
        if self._owner:
            self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _view(self, namespace: str, lease: str | None, timeout: float | None) -> Client:
        view = object.__new__(Client)
        view.address = self.address
        view.namespace = namespace
        view.timeout = timeout
        view.lease_id = lease
        view._transport = self._transport
        view._owner = False
        view.namespaces = Namespaces(view)
        view.leases = Leases(view)
        view.events = Events(view)
        view.containers = Containers(view)
        view.images = Images(view)
        view.content = Content(view)
        return view

    def with_namespace(self, namespace: str) -> Client:
        """A view of this client working in ``namespace``."""
        return self._view(namespace, self.lease_id, self.timeout)

    def with_lease(self, lease_id: str | None) -> Client:
        """A view of this client whose calls carry ``lease_id`` (None: no lease)."""
        return self._view(self.namespace, lease_id, self.timeout)

    def with_timeout(self, timeout: float | None) -> Client:
        """A view of this client with a different per-call deadline, in seconds."""
        return self._view(self.namespace, self.lease_id, timeout)

    def _run(self, op: _core.Op[_core.T]) -> _core.T:
        md = _core.metadata(self.namespace, self.lease_id)
        return self._transport.run(op, md, self.timeout)

    # --- containers as live objects: tasks and processes (see berth.client._tasks) ---

    @property
    def tasks(self) -> Tasks:
        """The Tasks service: list tasks and collect metrics."""
        from berth.client._tasks import Tasks

        return Tasks(self)

    def load_container(self, container_id: str) -> ContainerHandle:
        """A container to create or load tasks in (``new_task``, ``task``). Raises NotFound."""
        from berth.client._tasks import ContainerHandle

        return ContainerHandle(self, self._run(_core.containers_get(container_id)))

    # --- snapshots and layer diffs (see berth.client._snapshots) ---

    @property
    def snapshots(self) -> Snapshots:
        """The Snapshots service for ``overlayfs``; ``.with_snapshotter(name)`` picks another."""
        from berth.client._snapshots import Snapshots

        return Snapshots(self)

    # --- daemon ---

    def version(self) -> Version:
        """The daemon's version and revision."""
        return self._run(_core.version())

    def server_uuid(self) -> str:
        """The daemon's persistent identity (what ``ctr version`` shows as UUID)."""
        return self._run(_core.server_uuid())

    def plugins(self, filters: Iterable[str] = ()) -> builtins.list[Plugin]:
        """The daemon's plugins, in load order, matching any of ``filters``.

        Filters use containerd's syntax over the fields ``type`` and ``id``,
        e.g. ``["type==io.containerd.grpc.v1"]``. A malformed filter raises
        InvalidArgument.
        """
        return self._run(_core.plugins(filters))

    # --- image transfers (the daemon talks to the registry; see berth.services.transfer) ---

    def pull(
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
        return self._run(
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

    def push(
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
        return self._run(
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

    @contextlib.contextmanager
    def lease(
        self,
        lease_id: str | None = None,
        *,
        expires: timedelta | float | None = _core.DEFAULT_LEASE_EXPIRY,
        labels: Mapping[str, str] | None = None,
    ) -> Iterator[Client]:
        """Hold a lease for the length of a ``with`` block.

        Yields a view of this client whose calls carry the new lease, so what
        they create is protected from garbage collection until the block ends;
        the lease is then deleted (already gone counts as deleted). The lease
        expires after ``expires`` (default 24 hours, as containerd's
        ``WithLease``; None or 0: never) in case this process dies first. If
        this client already carries a lease, that one is reused and nothing is
        created or deleted, as in containerd.
        """
        if self.lease_id:
            yield self
            return
        created = self.leases.create(lease_id, expires=expires, labels=labels)
        try:
            yield self.with_lease(created.id)
        finally:
            self._run(_core.leases_delete_quietly(created.id))

    # --- image archives (run here, as ctr does; see berth.client._content_store) ---

    def import_archive(
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
        """Import an OCI layout or ``docker save`` tar (a path or a binary stream).

        Blobs go to the daemon's content store under a fresh lease; then each
        image found is created, or retargeted if it exists, and the records are
        returned. Naming follows ``ctr images import``: index entries named by
        ``org.opencontainers.image.ref.name`` get ``base_name`` (default
        ``import-<date>``) as their repository; with ``base_name``, full names
        outside it are skipped. ``digests`` adds ``<base>@<digest>`` images
        (``skip_digest_for_named``: only for unnamed entries); ``index_name``
        keeps the archive's index as an image. ``platform`` (default: the
        host's) or ``all_platforms`` selects the content that must be present.
        ``compress_blobs`` gzips uncompressed Docker layers.

        Raises InvalidArgument for a malformed or hostile archive (nothing is
        created then), NotFound when no content matches the platform.
        """
        from berth.client import _content_store

        return _content_store.import_from(
            self,
            source,
            base_name=base_name,
            digests=digests,
            skip_digest_for_named=skip_digest_for_named,
            index_name=index_name,
            all_platforms=all_platforms,
            platform=platform,
            compress_blobs=compress_blobs,
        )

    def export_archive(
        self,
        dest: str | os.PathLike[str] | BinaryIO,
        names: Iterable[str],
        *,
        platforms: Sequence[str] = (),
        all_platforms: bool = False,
        docker_manifest: bool = True,
        skip_non_distributable: bool = False,
    ) -> None:
        """Export images ``names`` as an OCI layout tar, as ``ctr images export`` does.

        ``dest`` is a path (written to a temporary name, then renamed) or a
        binary stream. ``platforms`` selects index entries (default: exactly
        the host platform); ``all_platforms`` exports every entry.
        ``docker_manifest`` adds Docker's ``manifest.json`` so ``docker load``
        reads the file too. Raises NotFound for an unknown image or missing
        content, InvalidArgument for a bad platform.
        """
        from berth.client import _content_store

        return _content_store.export_to(
            self,
            dest,
            names,
            platforms=platforms,
            all_platforms=all_platforms,
            docker_manifest=docker_manifest,
            skip_non_distributable=skip_non_distributable,
        )


class Namespaces:
    """The Namespaces service: ``client.namespaces``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> builtins.list[Namespace]:
        """Every namespace with its labels, sorted by name."""
        return self._client._run(_core.namespaces_list())

    def get(self, name: str) -> Namespace:
        """One namespace. Raises NotFound if it does not exist."""
        return self._client._run(_core.namespaces_get(name))

    def create(self, name: str, labels: Mapping[str, str] | None = None) -> Namespace:
        """Create a namespace. Raises AlreadyExists, or InvalidArgument for a bad name or label."""
        return self._client._run(_core.namespaces_create(name, labels))

    def label(self, name: str, labels: Mapping[str, str]) -> Namespace:
        """Set the given labels (an empty value removes that label); others stay.

        Returns the namespace as it is afterwards. Raises NotFound.
        """
        return self._client._run(_core.namespaces_label(name, labels))

    def replace_labels(self, name: str, labels: Mapping[str, str]) -> Namespace:
        """Make ``labels`` the namespace's whole label set. Raises NotFound."""
        return self._client._run(_core.namespaces_replace_labels(name, labels))

    def delete(self, name: str) -> None:
        """Delete an empty namespace.

        Raises NotFound, or FailedPrecondition while it still holds objects.
        """
        return self._client._run(_core.namespaces_delete(name))


class Leases:
    """The Leases service: ``client.leases``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        lease_id: str | None = None,
        *,
        expires: timedelta | float | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Lease:
        """Create a lease in the client's namespace.

        ``lease_id`` defaults to a fresh unique id. ``expires`` (a timedelta or
        seconds; None or 0: never) sets the ``containerd.io/gc.expire`` label.
        Raises AlreadyExists, or InvalidArgument for a bad id or label.
        """
        return self._client._run(_core.leases_create(lease_id, expires, labels))

    def list(self, filters: Iterable[str] = ()) -> builtins.list[Lease]:
        """The namespace's leases matching any of ``filters`` (fields: ``id``, ``labels.<key>``)."""
        return self._client._run(_core.leases_list(filters))

    def delete(self, lease_id: str, *, sync: bool = False) -> None:
        """Delete a lease; ``sync`` asks the daemon to collect garbage before returning.

        Raises NotFound.
        """
        return self._client._run(_core.leases_delete(lease_id, sync))

    def add_resource(self, lease_id: str, resource: Resource) -> None:
        """Make the lease hold ``resource``. Raises NotFound, or InvalidArgument for a bad type."""
        return self._client._run(_core.leases_add_resource(lease_id, resource))

    def delete_resource(self, lease_id: str, resource: Resource) -> None:
        """Stop the lease holding ``resource``. Raises NotFound for an unknown lease."""
        return self._client._run(_core.leases_delete_resource(lease_id, resource))

    def list_resources(self, lease_id: str) -> builtins.list[Resource]:
        """The resources a lease holds. Raises NotFound."""
        return self._client._run(_core.leases_list_resources(lease_id))


class Containers:
    """The Containers service: ``client.containers``.

    Also resolves what a container is made from: an image's config for a
    platform (:meth:`image_config`) and a rootfs snapshot on top of the
    unpacked image (:meth:`prepare_rootfs`).
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, filters: Iterable[str] = ()) -> builtins.list[Container]:
        """The namespace's containers matching any of ``filters``, by id.

        Fields: ``id``, ``image``, ``runtime.name``, ``labels.<key>``. A
        malformed filter raises InvalidArgument.
        """
        return self._client._run(_core.containers_list(filters))

    def get(self, container_id: str) -> Container:
        """One container. Raises NotFound."""
        return self._client._run(_core.containers_get(container_id))

    def create(
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
        return self._client._run(
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

    def label(self, container_id: str, labels: Mapping[str, str]) -> Container:
        """Set the given labels (an empty value removes one); others stay.

        Returns the container as it is afterwards. Raises NotFound.
        """
        return self._client._run(_core.containers_label(container_id, labels))

    def delete(self, container_id: str) -> None:
        """Delete the record; its snapshot is left to garbage collection. Raises NotFound."""
        return self._client._run(_core.containers_delete(container_id))

    def image_config(self, image: str, *, platform: str | None = None) -> ImageConfig:
        """The config of image ``image`` for ``platform`` (default: this host's).

        Raises NotFound for a missing image or blob, or when no manifest
        matches the platform.
        """
        return self._client._run(_core.image_config(image, platform))

    def prepare_rootfs(
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
        lease (:meth:`Client.lease`) until a container references the key.
        """
        return self._client._run(_core.prepare_rootfs(image, snapshotter, key, labels))


class Images:
    """The Images service: ``client.images`` (pulling is :meth:`Client.pull`)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, filters: Iterable[str] = ()) -> builtins.list[Image]:
        """The namespace's images matching any of ``filters``, by name.

        Fields: ``name``, ``target.digest``, ``target.mediatype``,
        ``labels.<key>``. A malformed filter raises InvalidArgument.
        """
        return self._client._run(_core.images_list(filters))

    def get(self, name: str) -> Image:
        """One image record. Raises NotFound."""
        return self._client._run(_core.images_get(name))

    def delete(self, name: str, *, sync: bool = False) -> None:
        """Delete an image record; ``sync`` waits until its unreferenced content is collected.

        Raises NotFound.
        """
        return self._client._run(_core.images_delete(name, sync))

    def tag(self, source: str, target: str, *, force: bool = False) -> Image:
        """Name ``target`` the image ``source`` is (same target and labels).

        Raises NotFound for ``source``; AlreadyExists for ``target`` unless
        ``force``, which replaces it.
        """
        return self._client._run(_core.images_tag(source, target, force))

    def inspect(self, name: str, *, platform: str | None = None) -> ImageDetails:
        """The image's index (if any), manifest for ``platform`` (default: this
        host's) and config, read from the content store and parsed.

        Raises NotFound (image, blob, or no manifest for the platform),
        InvalidArgument (a document that is not JSON).
        """
        return self._client._run(_core.images_inspect(name, platform))

    def summary(self, image: Image) -> ImageSummary:
        """Size for this host's platform and all platforms of ``image`` (as ``ctr images ls``)."""
        return self._client._run(_core.images_summary(image))

    def check(self, image: Image, *, platform: str | None = None) -> ImageCheck:
        """Read back every blob ``image`` needs for ``platform`` and verify its digest.

        Missing and corrupt blobs are reported in the result, not raised.
        """
        return self._client._run(_core.images_check(image, platform))

    def unpack(
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
        return self._client._run(_core.images_unpack(name, snapshotter, platform, on_progress))


class Content:
    """The Content service: ``client.content``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, filters: Iterable[str] = ()) -> builtins.list[ContentInfo]:
        """The namespace's blobs matching any of ``filters`` (``digest``, ``size``, ``labels.<key>``)."""
        return self._client._run(_core.content_list(filters))

    def info(self, digest: str) -> ContentInfo:
        """One blob's record. Raises NotFound, InvalidArgument for a bad digest."""
        return self._client._run(_core.content_info(digest))

    def get(
        self, digest: str, out: Callable[[bytes], Any], *, offset: int = 0, size: int = 0
    ) -> int:
        """Stream a blob into ``out`` (called with each chunk, e.g. ``file.write``).

        ``size`` <= 0 reads to the end. Returns the bytes delivered. Raises
        NotFound, OutOfRange for an offset past the end.
        """
        return self._client._run(_core.content_read(digest, offset, size, out))

    def read(self, digest: str) -> bytes:
        """A whole blob in memory (meant for manifests and configs). Raises NotFound."""
        chunks: builtins.list[bytes] = []
        self._client._run(_core.content_read(digest, 0, 0, chunks.append))
        return b"".join(chunks)

    def delete(self, digest: str) -> None:
        """Remove the namespace's record of a blob; the file goes at the next GC. Raises NotFound."""
        return self._client._run(_core.content_delete(digest))

    def active(self, filters: Iterable[str] = ()) -> builtins.list[IngestStatus]:
        """Ingests in progress (field ``ref``)."""
        return self._client._run(_core.content_active(filters))

    def abort(self, ref: str) -> None:
        """Discard an ingest. Raises NotFound."""
        return self._client._run(_core.content_abort(ref))

    def ingest(
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
        return self._client._run(_core.content_ingest(ref, chunks, expected, size, labels))

    def check(self, filters: Iterable[str] = ()) -> builtins.list[BlobCheck]:
        """Read back every blob matching ``filters`` and verify its digest and size."""
        return self._client._run(_core.content_check(filters))


class Events:
    """The Events service: ``client.events``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def subscribe(self, filters: Iterable[str] = ()) -> SyncStream[_core.Event]:
        """Stream the daemon's events, in every namespace, matching any of ``filters``.

        Filters use containerd's syntax over ``topic``, ``namespace`` and
        ``event.<field>`` (e.g. ``['topic~="^/tasks/"']``,
        ``['event.container_id==web']``); none means every event. Returns at
        once; iterate the stream to receive events as they happen, and close
        it (or use ``with``) to stop::

            with client.events.subscribe(['topic~="/images/"']) as stream:
                for event in stream:
                    print(event.topic, event.payload)

        The client's per-call timeout does not apply: a subscription lasts
        until closed. A malformed filter raises ``berth.errdefs.BerthError``
        (status UNKNOWN, as containerd reports it) on the first read; a
        subscriber that reads too slowly is disconnected by berthd.
        """
        c = self._client
        md = _core.metadata(c.namespace, c.lease_id)
        return open_sync_stream(c._transport, _core.events_subscribe(filters), md)
