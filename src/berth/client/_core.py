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

Streaming RPCs (content reads, events) will add a call kind whose drivers
return an iterator or async iterator of decoded items; unary calls need nothing
more than what is here.

Nothing in this module opens a connection; it imports generated messages and
stub classes only so that a :class:`Call` can name them.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf import empty_pb2, field_mask_pb2

from berth import errdefs
from berth.api.services.introspection.v1 import introspection_pb2 as intro_pb
from berth.api.services.introspection.v1 import introspection_pb2_grpc as intro_grpc
from berth.api.services.leases.v1 import leases_pb2 as leases_pb
from berth.api.services.leases.v1 import leases_pb2_grpc as leases_grpc
from berth.api.services.namespaces.v1 import namespace_pb2 as ns_pb
from berth.api.services.namespaces.v1 import namespace_pb2_grpc as ns_grpc
from berth.api.services.version.v1 import version_pb2_grpc
from berth.client import types
from berth.client._config import LEASE_HEADER, NAMESPACE_HEADER

T = TypeVar("T")

# containerd's client raises the default 4 MiB gRPC message limit to 16 MiB;
# large List replies (images, content) need it.
MAX_MESSAGE_BYTES = 16 << 20
# ctr's default for `leases create --expires` and for Client.WithLease.
DEFAULT_LEASE_EXPIRY = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Call:
    """One unary RPC an operation asks its driver to make."""

    stub: type
    method: str
    request: Any


#: An operation: yields Calls, is sent their responses, returns a T.
Op = Generator[Call, Any, T]


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


def start(op: Op[Any]) -> Call | Done:
    """Run an operation up to its first call."""
    try:
        return next(op)
    except StopIteration as stop:
        return Done(stop.value)


def resume(op: Op[Any], response: Any = None, error: BaseException | None = None) -> Call | Done:
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
    return f"{time.time_ns()}-{secrets.token_hex(3)}"


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
