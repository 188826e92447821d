"""The records the SDK returns: plain dataclasses, never protobuf messages.

Callers can compare, copy, pickle and print them without knowing the wire
format, and the wire format can change (containerd 2 APIs) without breaking
them. This module imports nothing heavy, so the CLI can use it for type hints
and rendering without loading gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

#: The label containerd's garbage collector reads to expire a lease (RFC 3339).
LEASE_EXPIRE_LABEL = "containerd.io/gc.expire"

#: The text containerd puts in a plugin's init error when the plugin chose not to
#: load (``plugin.ErrSkipPlugin``); ``ctr plugins ls`` shows such plugins as "skip".
_SKIP_PLUGIN = "skip plugin"


@dataclass(frozen=True, slots=True)
class Version:
    """What the daemon's Version service reports."""

    version: str
    revision: str


@dataclass(frozen=True, slots=True)
class Platform:
    """An OCI platform as the daemon reports it for a plugin."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        # containerd's platforms.Format: os/arch[/variant], "unknown" for a blank OS.
        parts = [self.os or "unknown", self.architecture]
        if self.variant:
            parts.append(self.variant)
        return "/".join(parts)


@dataclass(frozen=True, slots=True)
class PluginError:
    """Why a plugin failed to initialise: a gRPC status code and its message."""

    code: int
    message: str


@dataclass(frozen=True, slots=True)
class Plugin:
    """One plugin loaded (or not) by the daemon, as the Introspection service lists it."""

    type: str
    id: str
    requires: tuple[str, ...] = ()
    platforms: tuple[Platform, ...] = ()
    exports: dict[str, str] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ()
    init_error: PluginError | None = None

    @property
    def status(self) -> str:
        """``ok``, ``skip`` or ``error``, by the rule ``ctr plugins ls`` applies."""
        if self.init_error is None:
            return "ok"
        if _SKIP_PLUGIN in self.init_error.message:
            return "skip"
        return "error"


@dataclass(frozen=True, slots=True)
class Namespace:
    """A namespace and its labels."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease: a named hold that keeps resources from garbage collection."""

    id: str
    created_at: datetime
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def expires_at(self) -> datetime | None:
        """When the lease stops protecting anything, or None if it never expires.

        A label the daemon cannot parse either is reported as None here too.
        """
        value = self.labels.get(LEASE_EXPIRE_LABEL)
        if not value:
            return None
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource held by a lease.

    ``type`` is ``content`` (id: a digest), ``ingests`` (id: an ingest ref) or
    ``snapshots/<snapshotter>`` (id: a snapshot key).
    """

    id: str
    type: str


#: The type URL containerd gives an OCI runtime spec stored in a container.
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


@dataclass(frozen=True, slots=True)
class AnyValue:
    """An opaque typed payload (a protobuf ``Any``): its type URL and bytes."""

    type_url: str
    value: bytes = b""


@dataclass(frozen=True, slots=True)
class Container:
    """A container record: what a task will be created from.

    ``spec`` is the stored OCI spec; :attr:`spec_json` decodes it when it has
    containerd's spec type. ``runtime_options`` and ``extensions`` stay opaque.
    """

    id: str
    runtime: str
    spec: AnyValue | None = None
    labels: dict[str, str] = field(default_factory=dict)
    image: str = ""
    snapshotter: str = ""
    snapshot_key: str = ""
    runtime_options: AnyValue | None = None
    extensions: dict[str, AnyValue] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def spec_json(self) -> dict[str, object] | None:
        """The OCI spec as parsed JSON, or None if absent or of another type."""
        import json

        if self.spec is None or self.spec.type_url != SPEC_TYPE_URL:
            return None
        decoded: dict[str, object] = json.loads(self.spec.value or b"{}")
        return decoded


@dataclass(frozen=True, slots=True)
class Mount:
    """A mount a snapshotter hands out (containerd's ``types.Mount``)."""

    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """An image's config for one platform, as containers are made from it.

    ``config`` is the whole config document (``config.Env``, ``config.Cmd``,
    ``rootfs.diff_ids``...); ``chain_id`` names the snapshot an unpacked image
    leaves behind (empty for an image without layers).
    """

    name: str
    manifest_digest: str
    config_digest: str
    config: dict[str, object]
    diff_ids: tuple[str, ...]
    chain_id: str


# --- images, content and transfers -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI descriptor: what a blob is, its digest and size."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Image:
    """An image record: a name pointing at a root descriptor (manifest or index)."""

    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PulledImage(Image):
    """What a pull returns: the image record, plus whether the daemon unpacked it.

    ``warnings`` are things that did not fail the pull but that the caller
    should know, such as "not unpacked: no unpacker loaded".
    """

    unpacked: bool = False
    snapshotter: str = ""
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LayerProgress:
    """The latest state of one layer while an image is unpacked.

    ``chain_id`` names the snapshot the layer becomes; ``digest`` and
    ``size`` are the layer blob's. ``status``: unpacking, unpacked (applied
    by this call) or exists (already unpacked, left alone).
    """

    chain_id: str
    digest: str
    media_type: str
    size: int
    status: str

    @property
    def finished(self) -> bool:
        return self.status in ("unpacked", "exists")


@dataclass(frozen=True, slots=True)
class UnpackedImage:
    """What unpacking an image did.

    ``chain_id`` is the top layer's (the parent of a container's snapshot;
    empty for an image without layers). ``unpacked`` is True when this call
    applied at least one layer, False when the image was already unpacked.
    ``manifest`` is the manifest chosen for the platform.
    """

    name: str
    snapshotter: str
    chain_id: str
    unpacked: bool
    manifest: Descriptor


@dataclass(frozen=True, slots=True)
class ContentInfo:
    """One blob the namespace has."""

    digest: str
    size: int
    created_at: datetime
    updated_at: datetime
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IngestStatus:
    """An ingest (a write in progress): ``offset`` of ``total`` bytes written."""

    ref: str
    offset: int
    total: int
    expected: str
    started_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """The latest state of one blob in a pull or push (or a layer being unpacked).

    ``key`` is the blob's ingest ref as ctr shows it (``layer-sha256:...``).
    ``status``: waiting, downloading, uploading, exists, mounted, done,
    unpacking or unpacked. ``offset`` of ``total`` bytes have moved.
    """

    key: str
    digest: str
    media_type: str
    status: str
    offset: int
    total: int

    @property
    def finished(self) -> bool:
        return self.status in ("exists", "mounted", "done", "unpacked")


@dataclass(frozen=True, slots=True)
class ImageDetails:
    """An image's documents as stored: ``index`` (None for a single manifest),
    the ``manifest`` chosen for the platform, and its ``config``, all parsed JSON.
    ``manifest_descriptor`` names the manifest that was chosen."""

    image: Image
    index: dict[str, object] | None
    manifest_descriptor: Descriptor
    manifest: dict[str, object]
    config: dict[str, object]


@dataclass(frozen=True, slots=True)
class ImageSummary:
    """What ``images ls`` shows besides the record: the size for the host
    platform (manifest, config and layers) and every platform the image has."""

    size: int
    platforms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BlobCheck:
    """One blob of an image (or of the store) checked by reading it back.

    ``status``: ``ok``; ``missing`` (not in the store); ``corrupt`` (its bytes
    hash to ``actual`` or their size differs).
    """

    digest: str
    size: int
    media_type: str
    status: str
    actual: str = ""


@dataclass(frozen=True, slots=True)
class ImageCheck:
    """The outcome of checking one image's content, as ``ctr images check``.

    ``required`` are the blobs the host platform needs; ``blobs`` says what was
    found for each. ``available`` is False when a missing manifest or index
    means the full list of required blobs cannot be known.
    """

    image: Image
    available: bool
    blobs: tuple[BlobCheck, ...]

    @property
    def required(self) -> tuple[BlobCheck, ...]:
        """The config and layers: what ``ctr images check`` counts (manifests
        and indexes are verified too, but not counted)."""
        return tuple(b for b in self.blobs if not _is_document(b.media_type))

    @property
    def present(self) -> tuple[BlobCheck, ...]:
        """The counted blobs that are present and intact."""
        return tuple(b for b in self.required if b.status == "ok")

    @property
    def complete(self) -> bool:
        return self.available and all(b.status == "ok" for b in self.blobs)

    @property
    def status(self) -> str:
        """``complete``, ``incomplete``, ``corrupt`` or ``unavailable`` (ctr's words plus corrupt)."""
        if any(b.status == "corrupt" for b in self.blobs):
            return "corrupt"
        if not self.available:
            return "unavailable"
        return "complete" if self.complete else "incomplete"


def _is_document(media_type: str) -> bool:
    return media_type.endswith(
        ("manifest.v1+json", "index.v1+json", "manifest.v2+json", "manifest.list.v2+json")
    )


# --- tasks and processes -------------------------------------------------------------------

#: The exit code containerd reports when a process's real one cannot be known.
UNKNOWN_EXIT_STATUS = 255

#: The type URL containerd gives LinuxResources in a task Update.
RESOURCES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"

#: The type URL of an OCI process spec, as an exec request carries it.
PROCESS_SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended: its exit ``code`` and when.

    ``code`` is 128+N for a process killed by signal N, as a shell reports
    it; :data:`UNKNOWN_EXIT_STATUS` (255) when the daemon could not know.
    """

    code: int
    exited_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ProcessState:
    """A task's init process or an exec'd process, as the daemon reports it.

    ``id`` is the container id for the init process, else the exec id.
    ``status``: ``created``, ``running``, ``stopped``, ``paused``,
    ``pausing`` or ``unknown`` (containerd's words). ``stdin``/``stdout``/
    ``stderr`` are the paths or URIs the process's I/O was created with.
    """

    container_id: str
    id: str
    pid: int
    status: str
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False
    exit_status: int = 0
    exited_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One host pid of a task (``ctr tasks ps``); ``info`` is the runtime's
    decoded detail for it (runc: ``{"exec_id": ...}`` for exec'd processes)."""

    pid: int
    info: dict[str, object] | None = None


@dataclass(frozen=True, slots=True)
class TaskMetric:
    """One task's resource statistics.

    ``stats`` is the decoded cgroup statistics (cgroups v1 or v2 metrics, as
    protobuf field names) or None for a type this SDK does not know; ``data``
    keeps the raw typed payload either way.
    """

    id: str
    timestamp: datetime | None
    type_url: str
    stats: dict[str, object] | None
    data: AnyValue | None = None


# --- snapshots ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One snapshot as its snapshotter reports it (``ctr snapshots info``).

    ``kind`` is ``"View"``, ``"Active"`` or ``"Committed"`` (``"Unknown"``
    for anything else), spelled as ctr prints it; ``parent`` is empty for a
    snapshot with no parent.
    """

    name: str
    kind: str
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SnapshotUsage:
    """The disk a snapshot uses of its own (not its parents'): bytes and inodes."""

    size: int
    inodes: int
