"""Berth's Python SDK: talk to berthd (or containerd 1.6) over its gRPC API.

Layering: ``types`` holds the plain records every call returns and
``_config`` the address and namespace defaults (neither imports gRPC);
``_core`` holds each API call once, as an I/O-free operation; ``_transport``
runs operations on a blocking or an asyncio gRPC channel; ``_sync`` and
``_async`` are the thin public twins, :class:`Client` and :class:`AsyncClient`.
The SDK speaks only gRPC; it never imports the daemon's code.

    >>> from berth.client import Client
    >>> with Client(namespace="demo") as c:
    ...     c.namespaces.create("demo", {"team": "infra"})
    ...     with c.lease(expires=3600) as leased:
    ...         ...  # what leased's calls create is protected until the block ends

Errors are the classes of :mod:`berth.errdefs` (``NotFound``,
``AlreadyExists``, ``InvalidArgument``, ``FailedPrecondition``,
``Unavailable``...), carrying the server's message.

The public names are loaded on first use, so importing ``berth.client.types``
or ``berth.client._config`` (as the CLI does to print its help) does not pull
in gRPC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from berth import lazy

if TYPE_CHECKING:
    from berth.client._async import (
        AsyncClient,
        AsyncContainers,
        AsyncContent,
        AsyncImages,
        AsyncLeases,
        AsyncNamespaces,
    )
    from berth.client._config import (
        DEFAULT_ADDRESS,
        DEFAULT_NAMESPACE,
        LEASE_HEADER,
        NAMESPACE_HEADER,
        resolve_address,
        resolve_namespace,
    )
    from berth.client._content_store import ImageRecord
    from berth.client._snapshots import AsyncSnapshots, Snapshots
    from berth.client._sync import Client, Containers, Content, Images, Leases, Namespaces
    from berth.client._tasks import ContainerHandle, Process, Task, Tasks
    from berth.client._tasks_async import AsyncContainerHandle, AsyncProcess, AsyncTask, AsyncTasks
    from berth.client.types import (
        LEASE_EXPIRE_LABEL,
        SPEC_TYPE_URL,
        UNKNOWN_EXIT_STATUS,
        AnyValue,
        BlobCheck,
        Container,
        ContentInfo,
        Descriptor,
        ExitStatus,
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
        Platform,
        Plugin,
        PluginError,
        ProcessInfo,
        ProcessState,
        PulledImage,
        Resource,
        SnapshotInfo,
        SnapshotUsage,
        TaskMetric,
        TransferProgress,
        UnpackedImage,
        Version,
    )

_HOMES = {
    "Snapshots": "_snapshots",
    "AsyncSnapshots": "_snapshots",
    "SnapshotInfo": "types",
    "SnapshotUsage": "types",
    "ContainerHandle": "_tasks",
    "Task": "_tasks",
    "Process": "_tasks",
    "Tasks": "_tasks",
    "AsyncContainerHandle": "_tasks_async",
    "AsyncTask": "_tasks_async",
    "AsyncProcess": "_tasks_async",
    "AsyncTasks": "_tasks_async",
    "ExitStatus": "types",
    "ProcessState": "types",
    "ProcessInfo": "types",
    "TaskMetric": "types",
    "UNKNOWN_EXIT_STATUS": "types",
    "ImageRecord": "_content_store",
    "BlobCheck": "types",
    "ContentInfo": "types",
    "Descriptor": "types",
    "Image": "types",
    "ImageCheck": "types",
    "ImageDetails": "types",
    "ImageSummary": "types",
    "IngestStatus": "types",
    "PulledImage": "types",
    "TransferProgress": "types",
    "LayerProgress": "types",
    "UnpackedImage": "types",
    "Images": "_sync",
    "Content": "_sync",
    "AsyncImages": "_async",
    "AsyncContent": "_async",
    "AsyncClient": "_async",
    "AsyncContainers": "_async",
    "Containers": "_sync",
    "SPEC_TYPE_URL": "types",
    "AnyValue": "types",
    "Container": "types",
    "ImageConfig": "types",
    "Mount": "types",
    "AsyncLeases": "_async",
    "AsyncNamespaces": "_async",
    "Client": "_sync",
    "Leases": "_sync",
    "Namespaces": "_sync",
    "DEFAULT_ADDRESS": "_config",
    "DEFAULT_NAMESPACE": "_config",
    "LEASE_HEADER": "_config",
    "NAMESPACE_HEADER": "_config",
    "resolve_address": "_config",
    "resolve_namespace": "_config",
    "LEASE_EXPIRE_LABEL": "types",
    "Lease": "types",
    "Namespace": "types",
    "Platform": "types",
    "Plugin": "types",
    "PluginError": "types",
    "Resource": "types",
    "Version": "types",
}

# Spelled out (not derived from _HOMES) so linters and readers see the API;
# tests/unit/test_cli_sdk_surface.py checks the two agree.
__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_NAMESPACE",
    "LEASE_EXPIRE_LABEL",
    "LEASE_HEADER",
    "NAMESPACE_HEADER",
    "SPEC_TYPE_URL",
    "UNKNOWN_EXIT_STATUS",
    "AnyValue",
    "AsyncClient",
    "AsyncContainerHandle",
    "AsyncContainers",
    "AsyncContent",
    "AsyncImages",
    "AsyncLeases",
    "AsyncNamespaces",
    "AsyncProcess",
    "AsyncSnapshots",
    "AsyncTask",
    "AsyncTasks",
    "BlobCheck",
    "Client",
    "Container",
    "ContainerHandle",
    "Containers",
    "Content",
    "ContentInfo",
    "Descriptor",
    "ExitStatus",
    "Image",
    "ImageCheck",
    "ImageConfig",
    "ImageDetails",
    "ImageRecord",
    "ImageSummary",
    "Images",
    "IngestStatus",
    "LayerProgress",
    "Lease",
    "Leases",
    "Mount",
    "Namespace",
    "Namespaces",
    "Platform",
    "Plugin",
    "PluginError",
    "Process",
    "ProcessInfo",
    "ProcessState",
    "PulledImage",
    "Resource",
    "SnapshotInfo",
    "SnapshotUsage",
    "Snapshots",
    "Task",
    "TaskMetric",
    "Tasks",
    "TransferProgress",
    "UnpackedImage",
    "Version",
    "resolve_address",
    "resolve_namespace",
]


__getattr__ = lazy.attributes(__name__, _HOMES, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
