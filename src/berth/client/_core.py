"""The SDK's one copy of every API call: request building and response decoding.

Design note: how the sync and async clients share code
======================================================

``Client`` and ``AsyncClient`` expose the same methods. Two shapes were
considered for keeping them from drifting apart:

1. Write the client once with ``grpc.aio`` and make the sync client run each
   coroutine on a private event-loop thread.
2. Write the *translation* once (build the request, name the RPC, decode the
   reply, decide what to do on an error) and let each client call the stub in
   its own mode.

Berth uses (2). Every operation here is a generator: it yields a :class:`Call`
(stub class, method name, request message), receives the decoded-from-wire
response (or has the mapped ``berth.errdefs`` exception thrown into it), and
finally returns a plain dataclass from :mod:`berth.client.types`. It performs no
I/O itself. ``_transport`` drives the same generator with a blocking channel or
with an ``asyncio`` channel. An operation needing several round trips (list,
then look each item up) is still one generator, written once.

Why not (1): a hidden loop thread doubles the thread hops per call, makes the
sync client unsafe to use after ``fork()``, surprises users whose own code runs
in an event loop, and hides which thread a callback runs on. With (2) each
public method is a one-line twin (``return self._run(op)`` / ``return await
self._run(op)``) that carries its full signature, so type checkers and IDEs see
real signatures on both clients; ``tests/unit/test_cli_sdk_surface.py`` fails if
the twins' signatures ever differ.

Streaming RPCs use a second call kind, :class:`StreamCall`: the operation
hands the driver a plain callback that receives each reply message (the
driver iterates the stream in its own mode), and is resumed once the stream
has ended. The operation keeps whatever it gathers in its own closure, so it
stays I/O-free; client-streaming calls (content Write) pass an iterable of
request messages instead of one request.

Endless streams (event subscriptions) are not operations at all: an
:class:`OpenStream` describes one, and the driver hands the caller an
iterator that reads and decodes one reply per step until the caller closes it.

Nothing in this module opens a connection; it names generated messages and
stub classes only so that a :class:`Call` can carry them, and each service's
generated modules are imported the first time one of its calls is built (see
``_lazy``), so importing the SDK costs no protobuf work at all.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from berth import errdefs
from berth.client import types
from berth.client._config import LEASE_HEADER, NAMESPACE_HEADER
from berth.client._lazy import LazyModule

# The generated modules are imported on first use, per service (see _lazy): a
# command pays only for the services it calls. Type checkers see the real ones.
if TYPE_CHECKING:
    from google.protobuf import any_pb2, empty_pb2, field_mask_pb2

    from berth.api.services.containers.v1 import containers_pb2 as containers_pb
    from berth.api.services.containers.v1 import containers_pb2_grpc as containers_grpc
    from berth.api.services.content.v1 import content_pb2 as content_pb
    from berth.api.services.content.v1 import content_pb2_grpc as content_grpc
    from berth.api.services.events.v1 import events_pb2 as events_pb
    from berth.api.services.events.v1 import events_pb2_grpc as events_grpc
    from berth.api.services.images.v1 import images_pb2 as images_pb
    from berth.api.services.images.v1 import images_pb2_grpc as images_grpc
    from berth.api.services.introspection.v1 import introspection_pb2 as intro_pb
    from berth.api.services.introspection.v1 import introspection_pb2_grpc as intro_grpc
    from berth.api.services.leases.v1 import leases_pb2 as leases_pb
    from berth.api.services.leases.v1 import leases_pb2_grpc as leases_grpc
    from berth.api.services.namespaces.v1 import namespace_pb2 as ns_pb
    from berth.api.services.namespaces.v1 import namespace_pb2_grpc as ns_grpc
    from berth.api.services.snapshots.v1 import snapshots_pb2 as snapshots_pb
    from berth.api.services.snapshots.v1 import snapshots_pb2_grpc as snapshots_grpc
    from berth.api.services.version.v1 import version_pb2_grpc
else:
    any_pb2 = LazyModule("google.protobuf.any_pb2")
    empty_pb2 = LazyModule("google.protobuf.empty_pb2")
    field_mask_pb2 = LazyModule("google.protobuf.field_mask_pb2")
    _API = "berth.api.services"
    containers_pb = LazyModule(f"{_API}.containers.v1.containers_pb2")
    containers_grpc = LazyModule(f"{_API}.containers.v1.containers_pb2_grpc")
    content_pb = LazyModule(f"{_API}.content.v1.content_pb2")
    content_grpc = LazyModule(f"{_API}.content.v1.content_pb2_grpc")
    events_pb = LazyModule(f"{_API}.events.v1.events_pb2")
    events_grpc = LazyModule(f"{_API}.events.v1.events_pb2_grpc")
    images_pb = LazyModule(f"{_API}.images.v1.images_pb2")
    images_grpc = LazyModule(f"{_API}.images.v1.images_pb2_grpc")
    intro_pb = LazyModule(f"{_API}.introspection.v1.introspection_pb2")
    intro_grpc = LazyModule(f"{_API}.introspection.v1.introspection_pb2_grpc")
    leases_pb = LazyModule(f"{_API}.leases.v1.leases_pb2")
    leases_grpc = LazyModule(f"{_API}.leases.v1.leases_pb2_grpc")
    ns_pb = LazyModule(f"{_API}.namespaces.v1.namespace_pb2")
    ns_grpc = LazyModule(f"{_API}.namespaces.v1.namespace_pb2_grpc")
    snapshots_pb = LazyModule(f"{_API}.snapshots.v1.snapshots_pb2")
    snapshots_grpc = LazyModule(f"{_API}.snapshots.v1.snapshots_pb2_grpc")
    version_pb2_grpc = LazyModule(f"{_API}.version.v1.version_pb2_grpc")

T = TypeVar("T")

# containerd's client raises the default 4 MiB gRPC message limit to 16 MiB;
# large List replies (images, content) need it.
MAX_MESSAGE_BYTES = 16 << 20
# ctr's default for `leases create --expires` and for Client.WithLease.
DEFAULT_LEASE_EXPIRY = timedelta(hours=24)
# What ctr uses when a container names no runtime or snapshotter.
DEFAULT_RUNTIME = "io.containerd.runc.v2"
DEFAULT_SNAPSHOTTER = "overlayfs"


@dataclass(frozen=True, slots=True)
class Call:
    """One unary RPC an operation asks its driver to make."""

    stub: type
    method: str
    request: Any


@dataclass(frozen=True, slots=True)
class StreamCall:
    """One streaming RPC: ``on_message`` gets each reply, in order.

    With ``request_stream`` the ``request`` is an iterable of request
    messages (a client- or bidirectional stream), else one message. When the
    stream ends the operation is resumed with None; a failed stream (or one
    whose ``on_message`` raised) is resumed with the error. An error raised by
    ``on_message`` cancels the call.
    """

    stub: type
    method: str
    request: Any
    on_message: Callable[[Any], None]
    request_stream: bool = False


#: An operation: yields Calls, is sent their responses, returns a T.
Op = Generator[Call | StreamCall, Any, T]


def grpc_target(address: str) -> str:
    """Turn a daemon address into a gRPC target.

    A plain path (absolute or relative) is a unix socket, as with ctr; a
    ``unix:``/``unix://`` address passes through, as does anything naming a
    scheme (``dns:``, ``ipv4:``...), for daemons served over TCP.
    """
    if address.startswith("unix:") or "://" in address:
        return address
    if address.startswith(("/", ".")) or ":" not in address:
        return "unix:" + os.path.abspath(address)
    return address


def metadata(namespace: str, lease: str | None) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata every call carries."""
    if lease:
        return ((NAMESPACE_HEADER, namespace), (LEASE_HEADER, lease))
    return ((NAMESPACE_HEADER, namespace),)


_CONNECT_REASON = re.compile(r"error: ([^:]+)$")


def rpc_error(code: int, details: str, address: str) -> errdefs.BerthError:
    """The ``berth.errdefs`` exception for a failed call.

    A failure to reach the daemon at all is also UNAVAILABLE, but its message
    (gRPC's own) says nothing about which daemon; it is reworded to name it.
    """
    if code == errdefs.CODE_UNAVAILABLE and "failed to connect" in details:
        # gRPC's text ends with the OS reason ("... error: No such file or
        # directory"); that reason is what a person needs.
        reason = _CONNECT_REASON.search(details)
        why = reason.group(1) if reason else details
        return errdefs.Unavailable(f"cannot connect to berthd at {address}: {why}")
    return errdefs.from_code(code, details)


# --- stepping an operation --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Done:
    """An operation finished with ``value``."""

    value: Any


def start(op: Op[Any]) -> Call | StreamCall | Done:
    """Run an operation up to its first call."""
    try:
        return next(op)
    except StopIteration as stop:
        return Done(stop.value)


def resume(
    op: Op[Any], response: Any = None, error: BaseException | None = None
) -> Call | StreamCall | Done:
    """Give an operation the outcome of its last call and run it to its next one.

    ``error`` is raised inside the operation, which may handle it (deleting
    something already gone) or let it propagate to the caller.
    """
    try:
        if error is not None:
            return op.throw(error)
        return op.send(response)
    except StopIteration as stop:
        return Done(stop.value)


# --- decoding ----------------------------------------------------------------------------


def _datetime(ts: Any) -> datetime:
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)


def _plugin(p: intro_pb.Plugin) -> types.Plugin:
    err = None
    if p.HasField("init_err"):
        err = types.PluginError(code=p.init_err.code, message=p.init_err.message)
    return types.Plugin(
        type=p.type,
        id=p.id,
        requires=tuple(p.requires),
        platforms=tuple(
            types.Platform(os=x.os, architecture=x.architecture, variant=x.variant)
            for x in p.platforms
        ),
        exports=dict(p.exports),
        capabilities=tuple(p.capabilities),
        init_error=err,
    )


def _namespace(n: ns_pb.Namespace) -> types.Namespace:
    return types.Namespace(name=n.name, labels=dict(n.labels))


def _lease(le: leases_pb.Lease) -> types.Lease:
    return types.Lease(id=le.id, created_at=_datetime(le.created_at), labels=dict(le.labels))


# --- version and introspection ------------------------------------------------------------


def version() -> Op[types.Version]:
    resp = yield Call(version_pb2_grpc.VersionStub, "Version", empty_pb2.Empty())
    return types.Version(version=resp.version, revision=resp.revision)


def server_uuid() -> Op[str]:
    resp = yield Call(intro_grpc.IntrospectionStub, "Server", empty_pb2.Empty())
    return str(resp.uuid)


def plugins(filters: Iterable[str]) -> Op[list[types.Plugin]]:
    req = intro_pb.PluginsRequest(filters=_strings(filters, "filters"))
    resp = yield Call(intro_grpc.IntrospectionStub, "Plugins", req)
    return [_plugin(p) for p in resp.plugins]


# --- namespaces ----------------------------------------------------------------------------


def namespaces_list() -> Op[list[types.Namespace]]:
    resp = yield Call(ns_grpc.NamespacesStub, "List", ns_pb.ListNamespacesRequest())
    return sorted((_namespace(n) for n in resp.namespaces), key=lambda n: n.name)


def namespaces_get(name: str) -> Op[types.Namespace]:
    resp = yield Call(ns_grpc.NamespacesStub, "Get", ns_pb.GetNamespaceRequest(name=name))
    return _namespace(resp.namespace)


def namespaces_create(name: str, labels: Mapping[str, str] | None) -> Op[types.Namespace]:
    req = ns_pb.CreateNamespaceRequest(
        namespace=ns_pb.Namespace(name=name, labels=dict(labels or {}))
    )
    resp = yield Call(ns_grpc.NamespacesStub, "Create", req)
    return _namespace(resp.namespace)


def namespaces_label(name: str, labels: Mapping[str, str]) -> Op[types.Namespace]:
    # One Update whose mask names each label: containerd sets each listed label
    # to the request's value, and an empty value removes it. Labels not listed
    # stay as they are.
    if not labels:
        # An empty mask would mean "replace all labels" to the server.
        return (yield from namespaces_get(name))
    req = ns_pb.UpdateNamespaceRequest(
        namespace=ns_pb.Namespace(name=name, labels=dict(labels)),
        update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
    )
    resp = yield Call(ns_grpc.NamespacesStub, "Update", req)
    if resp.namespace.name:
        return _namespace(resp.namespace)
    # containerd answers Update with an empty message; ask for the result.
    return (yield from namespaces_get(name))


def namespaces_replace_labels(name: str, labels: Mapping[str, str]) -> Op[types.Namespace]:
    # Without a mask, containerd replaces the whole label set.
    req = ns_pb.UpdateNamespaceRequest(namespace=ns_pb.Namespace(name=name, labels=dict(labels)))
    resp = yield Call(ns_grpc.NamespacesStub, "Update", req)
    if resp.namespace.name:
        return _namespace(resp.namespace)
    return (yield from namespaces_get(name))


def namespaces_delete(name: str) -> Op[None]:
    yield Call(ns_grpc.NamespacesStub, "Delete", ns_pb.DeleteNamespaceRequest(name=name))


# --- leases ----------------------------------------------------------------------------------


def new_lease_id() -> str:
    """A fresh lease id that passes containerd's identifier rules.

    containerd's server invents an id when none is given; generating it here
    works with any server and lets the caller log the id before the call.
    """
    return f"{time.time_ns()}-{os.urandom(3).hex()}"


def expiry_label(expires: timedelta | float, *, now: datetime | None = None) -> str:
    """The ``containerd.io/gc.expire`` value for a lease lasting ``expires``."""
    delta = expires if isinstance(expires, timedelta) else timedelta(seconds=expires)
    at = (now or datetime.now(UTC)) + delta
    # RFC 3339 in UTC, second precision, as Go's time.RFC3339 writes it.
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def leases_create(
    lease_id: str | None,
    expires: timedelta | float | None,
    labels: Mapping[str, str] | None,
) -> Op[types.Lease]:
    all_labels = dict(labels or {})
    if expires is not None and _positive(expires):
        all_labels[types.LEASE_EXPIRE_LABEL] = expiry_label(expires)
    req = leases_pb.CreateRequest(id=lease_id or new_lease_id(), labels=all_labels)
    resp = yield Call(leases_grpc.LeasesStub, "Create", req)
    return _lease(resp.lease)


def leases_list(filters: Iterable[str]) -> Op[list[types.Lease]]:
    req = leases_pb.ListRequest(filters=_strings(filters, "filters"))
    resp = yield Call(leases_grpc.LeasesStub, "List", req)
    return [_lease(le) for le in resp.leases]


def leases_delete(lease_id: str, sync: bool) -> Op[None]:
    yield Call(leases_grpc.LeasesStub, "Delete", leases_pb.DeleteRequest(id=lease_id, sync=sync))


def leases_delete_quietly(lease_id: str) -> Op[None]:
    """Delete a lease, treating "already gone" as success (context-manager exit)."""
    try:
        yield from leases_delete(lease_id, False)
    except errdefs.NotFound:
        pass


def leases_add_resource(lease_id: str, resource: types.Resource) -> Op[None]:
    req = leases_pb.AddResourceRequest(
        id=lease_id, resource=leases_pb.Resource(id=resource.id, type=resource.type)
    )
    yield Call(leases_grpc.LeasesStub, "AddResource", req)


def leases_delete_resource(lease_id: str, resource: types.Resource) -> Op[None]:
    req = leases_pb.DeleteResourceRequest(
        id=lease_id, resource=leases_pb.Resource(id=resource.id, type=resource.type)
    )
    yield Call(leases_grpc.LeasesStub, "DeleteResource", req)


def leases_list_resources(lease_id: str) -> Op[list[types.Resource]]:
    req = leases_pb.ListResourcesRequest(id=lease_id)
    resp = yield Call(leases_grpc.LeasesStub, "ListResources", req)
    return [types.Resource(id=r.id, type=r.type) for r in resp.resources]


# --- argument checks ---------------------------------------------------------------------------


def _strings(values: Iterable[str], what: str) -> list[str]:
    # A bare string is iterable too; taking "id==x" as five one-letter filters
    # would silently match nothing, so refuse it.
    if isinstance(values, str | bytes):
        raise TypeError(f"{what} must be a sequence of strings, not a single string")
    return list(values)


def _positive(expires: timedelta | float) -> bool:
    if isinstance(expires, timedelta):
        return expires > timedelta(0)
    return expires > 0


# --- containers ---------------------------------------------------------------------------


def _any_out(a: any_pb2.Any) -> types.AnyValue:
    return types.AnyValue(type_url=a.type_url, value=a.value)


def _any_in(a: types.AnyValue | None) -> any_pb2.Any | None:
    return None if a is None else any_pb2.Any(type_url=a.type_url, value=a.value)


def _container(c: containers_pb.Container) -> types.Container:
    r = c.runtime
    return types.Container(
        id=c.id,
        runtime=r.name,
        runtime_options=_any_out(r.options) if r.HasField("options") else None,
        spec=_any_out(c.spec) if c.HasField("spec") else None,
        labels=dict(c.labels),
        image=c.image,
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        extensions={k: _any_out(v) for k, v in c.extensions.items()},
        created_at=_datetime(c.created_at) if c.HasField("created_at") else None,
        updated_at=_datetime(c.updated_at) if c.HasField("updated_at") else None,
    )


def containers_list(filters: Iterable[str]) -> Op[list[types.Container]]:
    req = containers_pb.ListContainersRequest(filters=_strings(filters, "filters"))
    resp = yield Call(containers_grpc.ContainersStub, "List", req)
    return [_container(c) for c in resp.containers]


def containers_get(container_id: str) -> Op[types.Container]:
    req = containers_pb.GetContainerRequest(id=container_id)
    resp = yield Call(containers_grpc.ContainersStub, "Get", req)
    return _container(resp.container)


def spec_value(spec: Mapping[str, Any] | bytes | types.AnyValue) -> types.AnyValue:
    """A spec as the stored Any: a dict is JSON-encoded, bytes are taken as JSON."""
    if isinstance(spec, types.AnyValue):
        return spec
    if isinstance(spec, bytes):
        return types.AnyValue(types.SPEC_TYPE_URL, spec)
    import json

    return types.AnyValue(types.SPEC_TYPE_URL, json.dumps(spec, separators=(",", ":")).encode())


def containers_create(
    container_id: str,
    spec: Mapping[str, Any] | bytes | types.AnyValue,
    runtime: str,
    runtime_options: types.AnyValue | None,
    image: str,
    labels: Mapping[str, str] | None,
    snapshotter: str,
    snapshot_key: str,
    extensions: Mapping[str, types.AnyValue] | None,
) -> Op[types.Container]:
    req = containers_pb.CreateContainerRequest(
        container=containers_pb.Container(
            id=container_id,
            runtime=containers_pb.Container.Runtime(name=runtime, options=_any_in(runtime_options)),
            spec=_any_in(spec_value(spec)),
            labels=dict(labels or {}),
            image=image,
            snapshotter=snapshotter,
            snapshot_key=snapshot_key,
            extensions={
                k: any_pb2.Any(type_url=v.type_url, value=v.value)
                for k, v in (extensions or {}).items()
            },
        )
    )
    resp = yield Call(containers_grpc.ContainersStub, "Create", req)
    return _container(resp.container)


def containers_label(container_id: str, labels: Mapping[str, str]) -> Op[types.Container]:
    # As ctr does: one masked Update naming each label; "" removes one.
    if not labels:
        return (yield from containers_get(container_id))
    req = containers_pb.UpdateContainerRequest(
        container=containers_pb.Container(id=container_id, labels=dict(labels)),
        update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
    )
    resp = yield Call(containers_grpc.ContainersStub, "Update", req)
    return _container(resp.container)


def containers_delete(container_id: str) -> Op[None]:
    req = containers_pb.DeleteContainerRequest(id=container_id)
    yield Call(containers_grpc.ContainersStub, "Delete", req)


# --- what containers are made from: image configs and rootfs snapshots ------------------

# Manifests and configs are small; refuse to buffer anything claiming more.
_MAX_DOCUMENT = 16 << 20


def _read_blob(digest: str, size: int) -> Op[bytes]:
    if size > _MAX_DOCUMENT:
        raise errdefs.InvalidArgument(f"{digest}: {size} bytes is too large for an image document")
    chunks: list[bytes] = []
    req = content_pb.ReadContentRequest(digest=digest)
    yield StreamCall(content_grpc.ContentStub, "Read", req, lambda m: chunks.append(m.data))
    return b"".join(chunks)


def image_config(name: str, platform: str | None) -> Op[types.ImageConfig]:
    """Resolve ``name`` to its config for ``platform`` (default: the host's).

    Follows indexes as containerd's ``images.Config`` does: the best index
    entry for the platform, or a bare manifest whose config names a matching
    platform. Raises NotFound for a missing image, blob or platform.
    """
    # Pure parsing code shared with the daemon; imported here so that the
    # rest of the SDK never pays for it.
    from berth.core import images as im
    from berth.core.content import Digest
    from berth.core.images.walk import filter_platforms

    matcher = im.matcher_for([platform]) if platform else im.default()
    resp = yield Call(images_grpc.ImagesStub, "Get", images_pb.GetImageRequest(name=name))
    t = resp.image.target
    desc = im.Descriptor(t.media_type, Digest.parse(t.digest), t.size)
    for _ in range(8):  # nesting bound, as the daemon's walker has
        data = yield from _read_blob(str(desc.digest), desc.size)
        if im.mediatypes.is_index(desc.media_type):
            index = im.parse_index(data, desc.media_type, what=f"index {desc.digest}")
            entries = filter_platforms(list(index.manifests), matcher, limit=1)
            if not entries:
                raise errdefs.NotFound(f"no match for platform in manifest {desc.digest}")
            desc = entries[0]
            continue
        manifest = im.parse_manifest(data, desc.media_type, what=f"manifest {desc.digest}")
        cfg_desc = manifest.config
        raw = yield from _read_blob(str(cfg_desc.digest), cfg_desc.size)
        cfg = im.parse_config(raw, what=f"image config {cfg_desc.digest}")
        if desc.platform is None and not matcher.match(cfg.platform):
            raise errdefs.NotFound(f"no match for platform in manifest {desc.digest}")
        return types.ImageConfig(
            name=name,
            manifest_digest=str(desc.digest),
            config_digest=str(cfg_desc.digest),
            config=cfg.raw,
            diff_ids=tuple(str(d) for d in cfg.diff_ids),
            chain_id=str(im.chain_id(cfg.diff_ids)) if cfg.diff_ids else "",
        )
    raise errdefs.InvalidArgument(f"image {name}: index nesting too deep")


def prepare_rootfs(
    image: types.ImageConfig, snapshotter: str, key: str, labels: Mapping[str, str] | None
) -> Op[list[types.Mount]]:
    """Prepare snapshot ``key`` on top of the unpacked image's chain ID.

    Raises FailedPrecondition when the image is not unpacked for
    ``snapshotter``, AlreadyExists when ``key`` is taken.
    """
    if image.chain_id:
        try:
            yield Call(
                snapshots_grpc.SnapshotsStub,
                "Stat",
                snapshots_pb.StatSnapshotRequest(snapshotter=snapshotter, key=image.chain_id),
            )
        except errdefs.NotFound:
            raise errdefs.FailedPrecondition(
                f"image {image.name} is not unpacked for snapshotter {snapshotter}:"
                " run berth images pull / unpack"
            ) from None
    req = snapshots_pb.PrepareSnapshotRequest(
        snapshotter=snapshotter, key=key, parent=image.chain_id, labels=dict(labels or {})
    )
    resp = yield Call(snapshots_grpc.SnapshotsStub, "Prepare", req)
    return [
        types.Mount(type=m.type, source=m.source, target=m.target, options=tuple(m.options))
        for m in resp.mounts
    ]


# --- images ---------------------------------------------------------------------------------
# Images and content are containerd's v1 services; pull and push are Berth's own
# Transfer service (the daemon talks to the registry, the client watches).


def _descriptor(d: Any) -> types.Descriptor:
    return types.Descriptor(
        media_type=d.media_type, digest=d.digest, size=d.size, annotations=dict(d.annotations)
    )


def _image(i: Any) -> types.Image:
    return types.Image(
        name=i.name,
        target=_descriptor(i.target),
        labels=dict(i.labels),
        created_at=_datetime(i.created_at) if i.HasField("created_at") else None,
        updated_at=_datetime(i.updated_at) if i.HasField("updated_at") else None,
    )


def images_list(filters: Iterable[str]) -> Op[list[types.Image]]:
    req = images_pb.ListImagesRequest(filters=_strings(filters, "filters"))
    resp = yield Call(images_grpc.ImagesStub, "List", req)
    return [_image(i) for i in resp.images]


def images_get(name: str) -> Op[types.Image]:
    resp = yield Call(images_grpc.ImagesStub, "Get", images_pb.GetImageRequest(name=name))
    return _image(resp.image)


def images_delete(name: str, sync: bool) -> Op[None]:
    yield Call(images_grpc.ImagesStub, "Delete", images_pb.DeleteImageRequest(name=name, sync=sync))


def images_tag(source: str, target: str, force: bool) -> Op[types.Image]:
    """A new image named ``target`` with ``source``'s target and labels (``ctr images tag``)."""
    src = yield from images_get(source)
    t = src.target
    req = images_pb.CreateImageRequest(
        image=images_pb.Image(
            name=target,
            labels=src.labels,
            target=_pb_descriptor(t),
        )
    )
    try:
        resp = yield Call(images_grpc.ImagesStub, "Create", req)
    except errdefs.AlreadyExists:
        if not force:
            raise
        # As ctr --force: replace whatever the name pointed at.
        yield from images_delete(target, False)
        resp = yield Call(images_grpc.ImagesStub, "Create", req)
    return _image(resp.image)


def _pb_descriptor(t: types.Descriptor) -> Any:
    from berth.api.types import descriptor_pb2

    return descriptor_pb2.Descriptor(
        media_type=t.media_type, digest=t.digest, size=t.size, annotations=t.annotations
    )


def _read_all(digest: str, limit: int) -> Op[bytes]:
    """A whole blob (manifests, configs); InvalidArgument past ``limit`` bytes."""
    chunks: list[bytes] = []
    total = 0

    def take(m: Any) -> None:
        nonlocal total
        total += len(m.data)
        if total > limit:
            raise errdefs.InvalidArgument(f"{digest}: larger than {limit} bytes")
        chunks.append(m.data)

    yield StreamCall(
        content_grpc.ContentStub, "Read", content_pb.ReadContentRequest(digest=digest), take
    )
    return b"".join(chunks)


def _document(desc: types.Descriptor) -> Op[tuple[bytes, dict[str, Any]]]:
    import json

    data = yield from _read_all(desc.digest, _MAX_DOCUMENT)
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise errdefs.InvalidArgument(f"{desc.digest} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise errdefs.InvalidArgument(f"{desc.digest} is not a JSON object")
    return data, doc


def _is_index(media_type: str) -> bool:
    return media_type in (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )


def _child(obj: Any) -> types.Descriptor:
    if not isinstance(obj, dict):
        raise errdefs.InvalidArgument(f"invalid descriptor {obj!r}")
    return types.Descriptor(
        media_type=str(obj.get("mediaType", "")),
        digest=str(obj.get("digest", "")),
        size=int(obj.get("size", 0)),
        annotations=dict(obj.get("annotations") or {}),
    )


def _platform_text(obj: Any) -> str:
    if not isinstance(obj, dict):
        return ""
    parts = [str(obj.get("os") or "unknown"), str(obj.get("architecture") or "")]
    if obj.get("variant"):
        parts.append(str(obj["variant"]))
    return "/".join(p for p in parts if p)


def _pick(entries: list[dict[str, Any]], platform: str | None) -> dict[str, Any] | None:
    """The index entry ``platform`` (default: the host's) prefers, as containerd ranks them."""
    from berth.core.images import platforms as pf

    matcher = pf.matcher_for([platform]) if platform else pf.default()
    best: tuple[pf.Platform, dict[str, Any]] | None = None
    for entry in entries:
        obj = entry.get("platform")
        if not isinstance(obj, dict):
            continue
        try:
            p = pf.Platform.from_json(obj)
        except errdefs.InvalidArgument:
            continue
        # The first of equally good entries wins, as in containerd.
        if matcher.match(p) and (best is None or matcher.less(p, best[0])):
            best = (p, entry)
    return best[1] if best else None


def images_inspect(name: str, platform: str | None) -> Op[types.ImageDetails]:
    image = yield from images_get(name)
    desc = image.target
    index = None
    if _is_index(desc.media_type):
        _, index = yield from _document(desc)
        entries = [e for e in index.get("manifests") or [] if isinstance(e, dict)]
        chosen = _pick(entries, platform)
        if chosen is None:
            raise errdefs.NotFound(
                f"no manifest of {name} matches platform {platform or 'of this host'}"
            )
        desc = _child(chosen)
    _, manifest = yield from _document(desc)
    config_desc = _child(manifest.get("config"))
    _, config = yield from _document(config_desc)
    return types.ImageDetails(
        image=image, index=index, manifest_descriptor=desc, manifest=manifest, config=config
    )


def images_summary(image: types.Image) -> Op[types.ImageSummary]:
    """Size for the host platform and the platforms of ``image`` (``ctr images ls``).

    Content that is missing counts as zero bytes, as ctr shows partly pulled images.
    """
    platforms: set[str] = set()
    desc = image.target
    size = 0
    try:
        if _is_index(desc.media_type):
            data, index = yield from _document(desc)
            size += len(data)
            entries = [e for e in index.get("manifests") or [] if isinstance(e, dict)]
            platforms.update(p for p in (_platform_text(e.get("platform")) for e in entries) if p)
            chosen = _pick(entries, None)
            if chosen is None:
                return types.ImageSummary(size, tuple(sorted(platforms)))
            desc = _child(chosen)
        data, manifest = yield from _document(desc)
        size += len(data)
        config_desc = _child(manifest.get("config"))
        size += config_desc.size
        size += sum(_child(layer).size for layer in manifest.get("layers") or [])
        if not platforms:
            _, config = yield from _document(config_desc)
            text = _platform_text(config)
            if text:
                platforms.add(text)
    except errdefs.NotFound:
        pass
    return types.ImageSummary(size, tuple(sorted(platforms)))


def _verify(desc: types.Descriptor) -> Op[types.BlobCheck]:
    """Read a blob back and hash it: ok, missing or corrupt."""
    import hashlib

    alg, _, _ = desc.digest.partition(":")
    try:
        h = hashlib.new(alg)
    except ValueError:
        raise errdefs.InvalidArgument(f"{desc.digest}: unsupported digest algorithm") from None
    size = 0

    def feed(m: Any) -> None:
        nonlocal size
        h.update(m.data)
        size += len(m.data)

    req = content_pb.ReadContentRequest(digest=desc.digest)
    try:
        yield StreamCall(content_grpc.ContentStub, "Read", req, feed)
    except errdefs.NotFound:
        return types.BlobCheck(desc.digest, desc.size, desc.media_type, "missing")
    actual = f"{alg}:{h.hexdigest()}"
    if actual != desc.digest or (desc.size and size != desc.size):
        return types.BlobCheck(desc.digest, desc.size, desc.media_type, "corrupt", actual)
    return types.BlobCheck(desc.digest, desc.size, desc.media_type, "ok")


def images_check(image: types.Image, platform: str | None) -> Op[types.ImageCheck]:
    """Verify every blob the image needs for ``platform`` (default: the host's).

    Like ``ctr images check`` it walks the index entry for the platform, its
    manifest, config and layers; unlike it, every blob is read back and
    hashed, so a corrupted file is found, not only a missing one.
    """
    import json

    checks: list[types.BlobCheck] = []
    available = True
    pending = [image.target]
    while pending:
        desc = pending.pop(0)
        check = yield from _verify(desc)
        checks.append(check)
        if not (_is_index(desc.media_type) or "manifest" in desc.media_type):
            continue
        if check.status != "ok":
            available = False  # its children cannot be known
            continue
        data = yield from _read_all(desc.digest, _MAX_DOCUMENT)
        try:
            doc = json.loads(data)
        except ValueError:
            available = False
            continue
        if _is_index(desc.media_type):
            entries = [e for e in doc.get("manifests") or [] if isinstance(e, dict)]
            chosen = _pick(entries, platform)
            if chosen is None:
                available = False
            else:
                pending.append(_child(chosen))
        else:
            pending.append(_child(doc.get("config")))
            pending.extend(_child(layer) for layer in doc.get("layers") or [])
    return types.ImageCheck(image=image, available=available, blobs=tuple(checks))


# --- content ----------------------------------------------------------------------------------


def _content_info(i: Any) -> types.ContentInfo:
    return types.ContentInfo(
        digest=i.digest,
        size=i.size,
        created_at=_datetime(i.created_at),
        updated_at=_datetime(i.updated_at),
        labels=dict(i.labels),
    )


def _ingest_status(s: Any) -> types.IngestStatus:
    return types.IngestStatus(
        ref=s.ref,
        offset=s.offset,
        total=s.total,
        expected=s.expected,
        started_at=_datetime(s.started_at),
        updated_at=_datetime(s.updated_at),
    )


def content_list(filters: Iterable[str]) -> Op[list[types.ContentInfo]]:
    out: list[types.ContentInfo] = []
    req = content_pb.ListContentRequest(filters=_strings(filters, "filters"))
    yield StreamCall(
        content_grpc.ContentStub, "List", req, lambda m: out.extend(map(_content_info, m.info))
    )
    return out


def content_info(digest: str) -> Op[types.ContentInfo]:
    resp = yield Call(content_grpc.ContentStub, "Info", content_pb.InfoRequest(digest=digest))
    return _content_info(resp.info)


def content_read(digest: str, offset: int, size: int, sink: Callable[[bytes], Any]) -> Op[int]:
    """Stream ``size`` bytes (<= 0: to the end) from ``offset`` into ``sink``."""
    written = 0

    def take(m: Any) -> None:
        nonlocal written
        sink(m.data)
        written += len(m.data)

    req = content_pb.ReadContentRequest(digest=digest, offset=offset, size=max(size, 0))
    yield StreamCall(content_grpc.ContentStub, "Read", req, take)
    return written


def content_delete(digest: str) -> Op[None]:
    yield Call(content_grpc.ContentStub, "Delete", content_pb.DeleteContentRequest(digest=digest))


def content_active(filters: Iterable[str]) -> Op[list[types.IngestStatus]]:
    req = content_pb.ListStatusesRequest(filters=_strings(filters, "filters"))
    resp = yield Call(content_grpc.ContentStub, "ListStatuses", req)
    return [_ingest_status(s) for s in resp.statuses]


def content_abort(ref: str) -> Op[None]:
    yield Call(content_grpc.ContentStub, "Abort", content_pb.AbortRequest(ref=ref))


def content_ingest(
    ref: str,
    chunks: Iterable[bytes],
    expected: str | None,
    total: int,
    labels: Mapping[str, str] | None,
) -> Op[str]:
    """Write ``chunks`` as ingest ``ref`` and commit; returns the digest.

    The first write is at offset 0, which restarts any earlier ingest of
    ``ref`` (containerd's Write semantics).
    """
    if not ref:
        raise errdefs.InvalidArgument("ref must not be empty")
    digest = ""

    def requests() -> Iterable[Any]:
        offset = 0
        for chunk in chunks:
            if not chunk:
                continue
            yield content_pb.WriteContentRequest(
                action=content_pb.WRITE,
                ref=ref,
                total=total,
                expected=expected or "",
                offset=offset,
                data=chunk,
            )
            offset += len(chunk)
        yield content_pb.WriteContentRequest(
            action=content_pb.COMMIT,
            ref=ref,
            total=total or offset,
            expected=expected or "",
            offset=offset,
            labels=dict(labels or {}),
        )

    def take(m: Any) -> None:
        nonlocal digest
        if m.action == content_pb.COMMIT:
            digest = m.digest

    yield StreamCall(content_grpc.ContentStub, "Write", requests(), take, request_stream=True)
    return digest


def content_check(filters: Iterable[str]) -> Op[list[types.BlobCheck]]:
    """Read back every blob matching ``filters`` and verify its digest and size."""
    infos = yield from content_list(filters)
    out = []
    for info in infos:
        check = yield from _verify(types.Descriptor("", info.digest, info.size))
        out.append(check)
    return out


# --- transfers (berth.services.transfer.v1) ----------------------------------------------


def split_user(user: str | None, password: str | None) -> tuple[str, str]:
    """``USER[:PASSWORD]`` (ctr's --user) plus an optional separate password."""
    if not user:
        return "", password or ""
    name, sep, secret = user.partition(":")
    return name, (secret if sep else (password or ""))


def _registry_pb(plain_http: bool, hosts_dir: str | None, user: str, secret: str) -> Any:
    from berth.api.berth.services.transfer.v1 import transfer_pb2 as tr_pb

    creds = tr_pb.Credentials(username=user, secret=secret) if (user or secret) else None
    return tr_pb.RegistryOptions(
        plain_http=plain_http, hosts_dir=hosts_dir or "", credentials=creds
    )


def _platforms(platform: str | Iterable[str] | None) -> list[str]:
    if platform is None:
        return []
    if isinstance(platform, str):
        return [platform]
    return list(platform)


def _progress(b: Any) -> types.TransferProgress:
    return types.TransferProgress(
        key=b.key,
        digest=b.digest,
        media_type=b.media_type,
        status=b.status,
        offset=b.offset,
        total=b.total,
    )


def _deliver(on_progress: Callable[[types.TransferProgress], Any] | None, m: Any) -> None:
    if on_progress is not None:
        for b in m.blobs:
            on_progress(_progress(b))


def transfer_pull(
    ref: str,
    platform: str | Iterable[str] | None,
    all_platforms: bool,
    unpack: bool,
    snapshotter: str,
    plain_http: bool,
    hosts_dir: str | None,
    user: str,
    secret: str,
    max_concurrent_downloads: int,
    labels: Mapping[str, str] | None,
    on_progress: Callable[[types.TransferProgress], Any] | None,
) -> Op[types.PulledImage]:
    from berth.api.berth.services.transfer.v1 import transfer_pb2 as tr_pb
    from berth.api.berth.services.transfer.v1 import transfer_pb2_grpc as tr_grpc

    req = tr_pb.PullRequest(
        ref=ref,
        platforms=_platforms(platform),
        all_platforms=all_platforms,
        unpack=unpack,
        snapshotter=snapshotter,
        registry=_registry_pb(plain_http, hosts_dir, user, secret),
        max_concurrent_downloads=max_concurrent_downloads,
        labels=dict(labels or {}),
    )
    final: list[Any] = []

    def take(m: Any) -> None:
        _deliver(on_progress, m)
        if m.HasField("image"):
            final.append(m.image)

    yield StreamCall(tr_grpc.TransferStub, "Pull", req, take)
    if not final:
        raise errdefs.BerthError(f"pull of {ref}: the daemon ended the stream without a result")
    result = final[-1]
    image = yield from images_get(result.name)
    return types.PulledImage(
        name=image.name,
        target=image.target,
        labels=image.labels,
        created_at=image.created_at,
        updated_at=image.updated_at,
        unpacked=result.unpacked,
        snapshotter=result.snapshotter,
        warnings=tuple(result.warnings),
    )


def transfer_push(
    ref: str,
    source: str | None,
    platform: str | Iterable[str] | None,
    plain_http: bool,
    hosts_dir: str | None,
    user: str,
    secret: str,
    max_concurrent_uploads: int,
    on_progress: Callable[[types.TransferProgress], Any] | None,
) -> Op[types.Descriptor]:
    from berth.api.berth.services.transfer.v1 import transfer_pb2 as tr_pb
    from berth.api.berth.services.transfer.v1 import transfer_pb2_grpc as tr_grpc

    req = tr_pb.PushRequest(
        ref=ref,
        source=source or "",
        platforms=_platforms(platform),
        registry=_registry_pb(plain_http, hosts_dir, user, secret),
        max_concurrent_uploads=max_concurrent_uploads,
    )
    final: list[Any] = []

    def take(m: Any) -> None:
        _deliver(on_progress, m)
        if m.HasField("image"):
            final.append(m.image)

    yield StreamCall(tr_grpc.TransferStub, "Push", req, take)
    if not final:
        raise errdefs.BerthError(f"push of {ref}: the daemon ended the stream without a result")
    return _descriptor(final[-1].target)


def images_unpack(
    name: str,
    snapshotter: str,
    platform: str | None,
    on_progress: Callable[[types.LayerProgress], Any] | None,
) -> Op[types.UnpackedImage]:
    """Have the daemon unpack the stored image ``name`` (Berth's Transfer.Unpack)."""
    from berth.api.berth.services.transfer.v1 import transfer_pb2 as tr_pb
    from berth.api.berth.services.transfer.v1 import transfer_pb2_grpc as tr_grpc

    req = tr_pb.UnpackRequest(name=name, platform=platform or "", snapshotter=snapshotter)
    final: list[Any] = []

    def take(m: Any) -> None:
        if on_progress is not None:
            for layer in m.layers:
                on_progress(
                    types.LayerProgress(
                        chain_id=layer.chain_id,
                        digest=layer.digest,
                        media_type=layer.media_type,
                        size=layer.size,
                        status=layer.status,
                    )
                )
        if m.HasField("result"):
            final.append(m.result)

    yield StreamCall(tr_grpc.TransferStub, "Unpack", req, take)
    if not final:
        raise errdefs.BerthError(f"unpack of {name}: the daemon ended the stream without a result")
    result = final[-1]
    return types.UnpackedImage(
        name=result.name,
        snapshotter=result.snapshotter,
        chain_id=result.chain_id,
        unpacked=result.unpacked,
        manifest=_descriptor(result.manifest),
    )


# --- events --------------------------------------------------------------------------------
# Event and OpenStream are records/call kinds like those in ``types`` and above;
# they sit here while ``types`` is being extended by another change.


@dataclass(frozen=True, slots=True)
class Event:
    """One event from the daemon's exchange, as ``ctr events`` shows it.

    ``payload`` is the decoded event (``{"container_id": ..., "pid": ...}``,
    protobuf field names, timestamps as RFC 3339 strings, unset fields left
    out), or None when the event carries no payload or one of a type this SDK
    does not know; ``type_url`` and ``raw`` then still say what arrived.
    """

    timestamp: datetime
    namespace: str
    topic: str
    type_url: str
    payload: dict[str, Any] | None
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class OpenStream(Generic[T]):
    """A server stream read lazily, item by item, for as long as the caller wants.

    ``decode`` turns each reply message into what the caller's iterator yields.
    """

    stub: type
    method: str
    request: Any
    decode: Callable[[Any], T]


def _event_payload(value: any_pb2.Any) -> dict[str, Any] | None:
    from google.protobuf import descriptor_pool, json_format
    from google.protobuf.message import DecodeError
    from google.protobuf.message_factory import GetMessageClass

    # containerd names event types by their bare protobuf name; importing
    # berth.api.events puts every containerd event type in the pool.
    _register_event_types()
    try:
        desc = descriptor_pool.Default().FindMessageTypeByName(value.type_url)
    except KeyError:
        return None
    msg = GetMessageClass(desc)()
    try:
        msg.ParseFromString(value.value)
        decoded: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    except (DecodeError, json_format.Error, TypeError, KeyError):
        return None
    return decoded


def _register_event_types() -> None:
    from berth.api.events import (  # noqa: F401  (registers the event types for decoding)
        container_pb2,
        content_pb2,
        image_pb2,
        namespace_pb2,
        snapshot_pb2,
        task_pb2,
    )


def event_from_pb(env: events_pb.Envelope) -> Event:
    has_event = env.HasField("event")
    return Event(
        timestamp=_datetime(env.timestamp),
        namespace=env.namespace,
        topic=env.topic,
        type_url=env.event.type_url if has_event else "",
        payload=_event_payload(env.event) if has_event else None,
        raw=env.event.value if has_event else b"",
    )


def events_subscribe(filters: Iterable[str]) -> OpenStream[Event]:
    req = events_pb.SubscribeRequest(filters=_strings(filters, "filters"))
    return OpenStream(events_grpc.EventsStub, "Subscribe", req, event_from_pb)


# --- images, as archive import and export need them ----------------------------------------


def _target_to_pb(target: Any) -> Any:
    from berth.api.types import descriptor_pb2

    return descriptor_pb2.Descriptor(
        media_type=target.media_type,
        digest=str(target.digest),
        size=target.size,
        annotations=dict(target.annotations),
    )


def images_put_target(name: str, target: Any) -> Op[None]:
    """Point image ``name`` at ``target`` (a ``berth.core.images.Descriptor``),
    creating the image if it does not exist: what ``ctr images import`` does
    with each image it found (update the target, keep the labels)."""
    from berth.api.services.images.v1 import images_pb2 as images_pb
    from berth.api.services.images.v1 import images_pb2_grpc as images_grpc

    image = images_pb.Image(name=name, target=_target_to_pb(target))
    try:
        yield Call(
            images_grpc.ImagesStub,
            "Update",
            images_pb.UpdateImageRequest(
                image=image, update_mask=field_mask_pb2.FieldMask(paths=["target"])
            ),
        )
    except errdefs.NotFound:
        yield Call(images_grpc.ImagesStub, "Create", images_pb.CreateImageRequest(image=image))


def images_get_target(name: str) -> Op[Any]:
    """The target of image ``name`` as a ``berth.core.images.Descriptor``. Raises NotFound."""
    from berth.api.services.images.v1 import images_pb2 as images_pb
    from berth.api.services.images.v1 import images_pb2_grpc as images_grpc
    from berth.core.content import Digest
    from berth.core.images import Descriptor

    resp = yield Call(images_grpc.ImagesStub, "Get", images_pb.GetImageRequest(name=name))
    t = resp.image.target
    return Descriptor(t.media_type, Digest.parse(t.digest), t.size, dict(t.annotations))
