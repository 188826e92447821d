"""The records the SDK returns: plain dataclasses, never protobuf messages.

Callers can compare, copy, pickle and print them without knowing the wire
format, and the wire format can change (containerd 2 APIs) without breaking
them. This module imports nothing heavy, so the CLI can use it for type hints
and rendering without loading gRPC.

Creating a frozen dataclass costs about a millisecond (its methods are
generated and compiled), and ``berth run`` needs only the eight records
defined here of the SDK's twenty-nine. The rest live in private modules
(``_types_daemon``, ``_types_images``, ``_types_tasks``) that this module
imports the first time one of their names is read from it (PEP 562), and
binds here, so ``berth.client.types.Image`` works as if defined here. Those
records say ``berth.client.types`` as their ``__module__``, so reprs,
pickles and ``typing.get_type_hints`` all name and find them here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # The records __getattr__ below loads on first use, as type checkers see them.
    from berth.client._types_daemon import (
        Namespace,
        Platform,
        Plugin,
        PluginError,
        Resource,
        Version,
    )
    from berth.client._types_images import (
        BlobCheck,
        ContentInfo,
        Descriptor,
        Image,
        ImageCheck,
        ImageDetails,
        ImageSummary,
        IngestStatus,
        LayerProgress,
        PulledImage,
        TransferProgress,
        UnpackedImage,
    )
    from berth.client._types_tasks import (
        ProcessInfo,
        SnapshotUsage,
        TaskMetric,
    )

__all__ = [
    "LEASE_EXPIRE_LABEL",
    "PROCESS_SPEC_TYPE_URL",
    "RESOURCES_TYPE_URL",
    "SPEC_TYPE_URL",
    "UNKNOWN_EXIT_STATUS",
    "AnyValue",
    "BlobCheck",
    "Container",
    "ContentInfo",
    "Descriptor",
    "ExitStatus",
    "Image",
    "ImageCheck",
    "ImageConfig",
    "ImageDetails",
    "ImageSummary",
    "IngestStatus",
    "LayerProgress",
    "Lease",
    "Mount",
    "Namespace",
    "Platform",
    "Plugin",
    "PluginError",
    "ProcessInfo",
    "ProcessState",
    "PulledImage",
    "Resource",
    "SnapshotInfo",
    "SnapshotUsage",
    "TaskMetric",
    "TransferProgress",
    "UnpackedImage",
    "Version",
]

#: The label containerd's garbage collector reads to expire a lease (RFC 3339).
LEASE_EXPIRE_LABEL = "containerd.io/gc.expire"

#: The type URL containerd gives an OCI runtime spec stored in a container.
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"

#: The exit code containerd reports when a process's real one cannot be known.
UNKNOWN_EXIT_STATUS = 255

#: The type URL containerd gives LinuxResources in a task Update.
RESOURCES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"

#: The type URL of an OCI process spec, as an exec request carries it.
PROCESS_SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"

#: Record name -> the private module defining it, loaded on first use.
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        ("Version", "Platform", "PluginError", "Plugin", "Namespace", "Resource"), "_types_daemon"
    ),
    **dict.fromkeys(
        (
            "Descriptor",
            "Image",
            "PulledImage",
            "LayerProgress",
            "UnpackedImage",
            "ContentInfo",
            "IngestStatus",
            "TransferProgress",
            "ImageDetails",
            "ImageSummary",
            "BlobCheck",
            "ImageCheck",
        ),
        "_types_images",
    ),
    **dict.fromkeys(("ProcessInfo", "TaskMetric", "SnapshotUsage"), "_types_tasks"),
}


# Hidden from type checkers, which would otherwise accept any name read from
# this module; they see the records through the imports above instead.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        home = _LAZY.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        module = importlib.import_module(f"berth.client.{home}")
        # Bind the whole module's records: later reads are plain lookups, and
        # get_type_hints finds the names their annotations use (Image's
        # Descriptor) in this module's namespace.
        for other, other_home in _LAZY.items():
            if other_home == home:
                globals()[other] = getattr(module, other)
        return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# --- leases and containers ---------------------------------------------------------------


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


# --- tasks and processes -------------------------------------------------------------------


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
