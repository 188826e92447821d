"""Snapshots and layer diffs: ``client.snapshots``, sync and async.

One :class:`Snapshots` (or :class:`AsyncSnapshots`) object speaks for one
snapshotter, as containerd's ``client.SnapshotService(name)`` does; it starts
as ``overlayfs`` and :meth:`Snapshots.with_snapshotter` picks another. The
calls are containerd's Snapshots service plus two that also use the Diff
service, composed on the client side exactly as ctr composes them:

* :meth:`Snapshots.diff` views whatever is not active (the parent, a
  committed snapshot) under a throwaway key, asks the Diff service to compare
  the two mount lists into a layer blob, and removes the views again;
* :meth:`Snapshots.apply` hands an active snapshot's mounts and a layer
  descriptor to the Diff service, as an unpacker does.

The operations are I/O-free generators like those in ``_core`` (see its
design note); the two classes below are one-line twins over them.

Clean-up calls (removing a temporary view) run only when the operation ends
normally or with an ordinary exception: a generator being closed (the caller
was interrupted) must not yield again, and the daemon's garbage collector
removes a leftover view, which carries no GC root, in time.
"""

from __future__ import annotations

import builtins
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from berth import errdefs
from berth.client import types
from berth.client._core import (
    DEFAULT_SNAPSHOTTER,
    Call,
    Op,
    StreamCall,
    _datetime,
    _descriptor,
    _pb_descriptor,
)
from berth.client._lazy import LazyModule

# Imported on first use, as in _core (see _lazy): a run stats and prepares
# snapshots but never diffs. Type checkers see the real modules.
if TYPE_CHECKING:
    from google.protobuf import field_mask_pb2

    from berth.api.services.diff.v1 import diff_pb2 as diff_pb
    from berth.api.services.diff.v1 import diff_pb2_grpc as diff_grpc
    from berth.api.services.snapshots.v1 import snapshots_pb2 as pb
    from berth.api.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
    from berth.api.types import mount_pb2
    from berth.client._async import AsyncClient
    from berth.client._sync import Client
else:
    field_mask_pb2 = LazyModule("google.protobuf.field_mask_pb2")
    diff_pb = LazyModule("berth.api.services.diff.v1.diff_pb2")
    diff_grpc = LazyModule("berth.api.services.diff.v1.diff_pb2_grpc")
    pb = LazyModule("berth.api.services.snapshots.v1.snapshots_pb2")
    pb_grpc = LazyModule("berth.api.services.snapshots.v1.snapshots_pb2_grpc")
    mount_pb2 = LazyModule("berth.api.types.mount_pb2")

#: What ``ctr snapshots diff`` produces unless told otherwise.
DEFAULT_DIFF_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"

# The wire's Kind enum (VIEW=1, ACTIVE=2, COMMITTED=3), spelled as ctr prints it.
_KINDS = {1: "View", 2: "Active", 3: "Committed"}


# --- decoding and encoding -------------------------------------------------------------


def _info(i: Any) -> types.SnapshotInfo:
    return types.SnapshotInfo(
        name=i.name,
        kind=_KINDS.get(int(i.kind), "Unknown"),
        parent=i.parent,
        labels=dict(i.labels),
        created_at=_datetime(i.created_at) if i.HasField("created_at") else None,
        updated_at=_datetime(i.updated_at) if i.HasField("updated_at") else None,
    )


def _mounts(ms: Iterable[Any]) -> list[types.Mount]:
    return [types.Mount(type=m.type, source=m.source, options=tuple(m.options)) for m in ms]


def _mounts_pb(ms: Iterable[types.Mount]) -> list[mount_pb2.Mount]:
    # containerd 1.6's Mount has no target; a sub-path mount cannot travel.
    return [mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options)) for m in ms]


def _key(what: str) -> str:
    """A throwaway snapshot key no one else picks (ctr: time plus randomness)."""
    return f"{what}-{time.time_ns()}-{secrets.token_hex(4)}"


# --- operations -------------------------------------------------------------------------


def prepare(
    sn: str, key: str, parent: str, labels: Mapping[str, str] | None
) -> Op[list[types.Mount]]:
    req = pb.PrepareSnapshotRequest(snapshotter=sn, key=key, parent=parent, labels=labels or {})
    resp = yield Call(pb_grpc.SnapshotsStub, "Prepare", req)
    return _mounts(resp.mounts)


def view(sn: str, key: str, parent: str, labels: Mapping[str, str] | None) -> Op[list[types.Mount]]:
    req = pb.ViewSnapshotRequest(snapshotter=sn, key=key, parent=parent, labels=labels or {})
    resp = yield Call(pb_grpc.SnapshotsStub, "View", req)
    return _mounts(resp.mounts)


def mounts(sn: str, key: str) -> Op[list[types.Mount]]:
    resp = yield Call(pb_grpc.SnapshotsStub, "Mounts", pb.MountsRequest(snapshotter=sn, key=key))
    return _mounts(resp.mounts)


def commit(sn: str, name: str, key: str, labels: Mapping[str, str] | None) -> Op[None]:
    req = pb.CommitSnapshotRequest(snapshotter=sn, name=name, key=key, labels=labels or {})
    yield Call(pb_grpc.SnapshotsStub, "Commit", req)


def remove(sn: str, key: str) -> Op[None]:
    yield Call(pb_grpc.SnapshotsStub, "Remove", pb.RemoveSnapshotRequest(snapshotter=sn, key=key))


def stat(sn: str, key: str) -> Op[types.SnapshotInfo]:
    resp = yield Call(
        pb_grpc.SnapshotsStub, "Stat", pb.StatSnapshotRequest(snapshotter=sn, key=key)
    )
    return _info(resp.info)


def label(sn: str, key: str, labels: Mapping[str, str]) -> Op[types.SnapshotInfo]:
    """Set ``labels`` (an empty value removes one); the rest stay.

    With nothing to change it is a Stat, as ctr does it, because an Update
    with an empty mask would replace every label.
    """
    if not labels:
        return (yield from stat(sn, key))
    keep = {k: v for k, v in labels.items() if v}
    req = pb.UpdateSnapshotRequest(
        snapshotter=sn,
        info=pb.Info(name=key, labels=keep),
        update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
    )
    resp = yield Call(pb_grpc.SnapshotsStub, "Update", req)
    return _info(resp.info)


def list_(sn: str, filters: Iterable[str]) -> Op[list[types.SnapshotInfo]]:
    out: list[types.SnapshotInfo] = []
    if isinstance(filters, str):
        raise TypeError("filters must be a list of strings, not one string")
    req = pb.ListSnapshotsRequest(snapshotter=sn, filters=list(filters))
    yield StreamCall(
        pb_grpc.SnapshotsStub, "List", req, lambda m: out.extend(_info(i) for i in m.info)
    )
    return out


def usage(sn: str, key: str) -> Op[types.SnapshotUsage]:
    resp = yield Call(pb_grpc.SnapshotsStub, "Usage", pb.UsageRequest(snapshotter=sn, key=key))
    return types.SnapshotUsage(size=resp.size, inodes=resp.inodes)


def cleanup(sn: str) -> Op[None]:
    yield Call(pb_grpc.SnapshotsStub, "Cleanup", pb.CleanupRequest(snapshotter=sn))


def _readable(sn: str, info: types.SnapshotInfo) -> Op[tuple[list[types.Mount], str]]:
    """Mounts showing ``info``'s contents, and the temporary view key to remove ("" if none).

    An active snapshot has mounts of its own; anything else is viewed.
    """
    if info.kind == "Active":
        return (yield from mounts(sn, info.name)), ""
    key = _key(f"{info.name}-view")
    return (yield from view(sn, key, info.name, None)), key


def diff(
    sn: str,
    key: str,
    against: str | None,
    media_type: str,
    ref: str,
    labels: Mapping[str, str] | None,
) -> Op[types.Descriptor]:
    """The layer turning ``against`` (default: ``key``'s parent) into ``key``."""
    info = yield from stat(sn, key)
    temporary: list[str] = []
    try:
        if against is None:
            lower: list[types.Mount] = []
            if info.parent:
                # A parent is committed, so it is always viewed.
                view_key = _key(f"{info.parent}-parent-view")
                lower = yield from view(sn, view_key, info.parent, None)
                temporary.append(view_key)
        else:
            lower, view_key = yield from _readable(sn, (yield from stat(sn, against)))
            if view_key:
                temporary.append(view_key)
        upper, view_key = yield from _readable(sn, info)
        if view_key:
            temporary.append(view_key)
        req = diff_pb.DiffRequest(
            left=_mounts_pb(lower),
            right=_mounts_pb(upper),
            media_type=media_type,
            ref=ref,
            labels=labels or {},
        )
        resp = yield Call(diff_grpc.DiffStub, "Diff", req)
    except Exception:
        yield from _remove_quietly(sn, temporary)
        raise
    yield from _remove_quietly(sn, temporary)
    return _descriptor(resp.diff)


def _remove_quietly(sn: str, keys: Iterable[str]) -> Op[None]:
    for k in reversed(list(keys)):
        try:
            yield from remove(sn, k)
        except errdefs.BerthError:
            # Best effort, as ctr's deferred Remove: a leftover view has no GC
            # root, so the collector takes it.
            pass


def apply(sn: str, key: str, layer: types.Descriptor) -> Op[types.Descriptor]:
    ms = yield from mounts(sn, key)
    req = diff_pb.ApplyRequest(diff=_pb_descriptor(layer), mounts=_mounts_pb(ms))
    resp = yield Call(diff_grpc.DiffStub, "Apply", req)
    return _descriptor(resp.applied)


# --- the public twins --------------------------------------------------------------------


class Snapshots:
    """One snapshotter's snapshots: ``client.snapshots`` (``overlayfs`` to start with).

    Every call raises NotFound for a missing key, AlreadyExists for a key
    already taken, FailedPrecondition for the wrong kind of snapshot (a
    committed one has no mounts; a parent must be committed), and
    InvalidArgument when the daemon has no snapshotter of this name.
    """

    def __init__(self, client: Client, snapshotter: str = DEFAULT_SNAPSHOTTER) -> None:
        self._client = client
        self.snapshotter = snapshotter

    def __repr__(self) -> str:
        return f"Snapshots(snapshotter={self.snapshotter!r})"

    def with_snapshotter(self, snapshotter: str) -> Snapshots:
        """The same calls against another snapshotter (``native``, ``overlayfs``...)."""
        return Snapshots(self._client, snapshotter)

    def prepare(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> builtins.list[types.Mount]:
        """Create the active (writable) snapshot ``key`` on ``parent``; return its mounts.

        Without a GC root label (``containerd.io/gc.root``) or a lease the
        snapshot is garbage at the next collection.
        """
        return self._client._run(prepare(self.snapshotter, key, parent, labels))

    def view(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> builtins.list[types.Mount]:
        """Create the read-only snapshot ``key`` of ``parent``; return its mounts."""
        return self._client._run(view(self.snapshotter, key, parent, labels))

    def mounts(self, key: str) -> builtins.list[types.Mount]:
        """The mounts of an active or view snapshot."""
        return self._client._run(mounts(self.snapshotter, key))

    def commit(self, name: str, key: str, *, labels: Mapping[str, str] | None = None) -> None:
        """Turn the active snapshot ``key`` into the committed snapshot ``name``."""
        return self._client._run(commit(self.snapshotter, name, key, labels))

    def remove(self, key: str) -> None:
        """Remove a snapshot. Raises FailedPrecondition while it has children."""
        return self._client._run(remove(self.snapshotter, key))

    def stat(self, key: str) -> types.SnapshotInfo:
        """One snapshot's record."""
        return self._client._run(stat(self.snapshotter, key))

    def label(self, key: str, labels: Mapping[str, str]) -> types.SnapshotInfo:
        """Set the given labels (an empty value removes one); others stay.

        Returns the snapshot as it is afterwards.
        """
        return self._client._run(label(self.snapshotter, key, labels))

    def list(self, filters: Iterable[str] = ()) -> builtins.list[types.SnapshotInfo]:
        """The namespace's snapshots matching any of ``filters``.

        Fields: ``name``, ``parent``, ``kind``, ``labels.<key>``. A malformed
        filter raises InvalidArgument.
        """
        return self._client._run(list_(self.snapshotter, filters))

    def usage(self, key: str) -> types.SnapshotUsage:
        """The disk space and inodes ``key`` uses itself, without its parents."""
        return self._client._run(usage(self.snapshotter, key))

    def cleanup(self) -> None:
        """Ask the snapshotter to free disk left by removed snapshots."""
        return self._client._run(cleanup(self.snapshotter))

    def diff(
        self,
        key: str,
        *,
        against: str | None = None,
        media_type: str = DEFAULT_DIFF_MEDIA_TYPE,
        ref: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> types.Descriptor:
        """Write the changes from ``against`` (default: ``key``'s parent) to ``key``
        as a layer blob in the content store, and return its descriptor.

        Either snapshot may be active or committed. ``ref`` names the content
        ingest; ``labels`` go on the blob. Call it under a lease
        (:meth:`Client.lease`), or give the blob a GC root label, or it is
        garbage at the next collection. Raises NotImplemented for an
        unsupported ``media_type``.
        """
        return self._client._run(diff(self.snapshotter, key, against, media_type, ref, labels))

    def apply(self, key: str, layer: types.Descriptor) -> types.Descriptor:
        """Unpack the layer blob ``layer`` into the active snapshot ``key``.

        Returns the applied (uncompressed) layer's descriptor. Raises
        NotFound for a blob not in the content store.
        """
        return self._client._run(apply(self.snapshotter, key, layer))


class AsyncSnapshots:
    """The asyncio twin of :class:`Snapshots`: ``async_client.snapshots``."""

    def __init__(self, client: AsyncClient, snapshotter: str = DEFAULT_SNAPSHOTTER) -> None:
        self._client = client
        self.snapshotter = snapshotter

    def __repr__(self) -> str:
        return f"AsyncSnapshots(snapshotter={self.snapshotter!r})"

    def with_snapshotter(self, snapshotter: str) -> AsyncSnapshots:
        """The same calls against another snapshotter (``native``, ``overlayfs``...)."""
        return AsyncSnapshots(self._client, snapshotter)

    async def prepare(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> builtins.list[types.Mount]:
        """See :meth:`Snapshots.prepare`."""
        return await self._client._run(prepare(self.snapshotter, key, parent, labels))

    async def view(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> builtins.list[types.Mount]:
        """See :meth:`Snapshots.view`."""
        return await self._client._run(view(self.snapshotter, key, parent, labels))

    async def mounts(self, key: str) -> builtins.list[types.Mount]:
        """See :meth:`Snapshots.mounts`."""
        return await self._client._run(mounts(self.snapshotter, key))

    async def commit(self, name: str, key: str, *, labels: Mapping[str, str] | None = None) -> None:
        """See :meth:`Snapshots.commit`."""
        return await self._client._run(commit(self.snapshotter, name, key, labels))

    async def remove(self, key: str) -> None:
        """See :meth:`Snapshots.remove`."""
        return await self._client._run(remove(self.snapshotter, key))

    async def stat(self, key: str) -> types.SnapshotInfo:
        """See :meth:`Snapshots.stat`."""
        return await self._client._run(stat(self.snapshotter, key))

    async def label(self, key: str, labels: Mapping[str, str]) -> types.SnapshotInfo:
        """See :meth:`Snapshots.label`."""
        return await self._client._run(label(self.snapshotter, key, labels))

    async def list(self, filters: Iterable[str] = ()) -> builtins.list[types.SnapshotInfo]:
        """See :meth:`Snapshots.list`."""
        return await self._client._run(list_(self.snapshotter, filters))

    async def usage(self, key: str) -> types.SnapshotUsage:
        """See :meth:`Snapshots.usage`."""
        return await self._client._run(usage(self.snapshotter, key))

    async def cleanup(self) -> None:
        """See :meth:`Snapshots.cleanup`."""
        return await self._client._run(cleanup(self.snapshotter))

    async def diff(
        self,
        key: str,
        *,
        against: str | None = None,
        media_type: str = DEFAULT_DIFF_MEDIA_TYPE,
        ref: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> types.Descriptor:
        """See :meth:`Snapshots.diff`."""
        return await self._client._run(
            diff(self.snapshotter, key, against, media_type, ref, labels)
        )

    async def apply(self, key: str, layer: types.Descriptor) -> types.Descriptor:
        """See :meth:`Snapshots.apply`."""
        return await self._client._run(apply(self.snapshotter, key, layer))
