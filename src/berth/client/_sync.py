"""The blocking client. Every method is a one-line twin of ``_async``'s.

The work of each call lives in ``_core``; see its module docstring for why.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from types import TracebackType

from berth.client import _config, _core
from berth.client._transport import SyncTransport
from berth.client.types import Lease, Namespace, Plugin, Resource, Version


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
