"""The asyncio client. Every method is a one-line twin of ``_sync``'s.

The work of each call lives in ``_core``; see its module docstring for why.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import timedelta
from types import TracebackType

from berth.client import _config, _core
from berth.client._transport import AsyncTransport
from berth.client.types import Lease, Namespace, Plugin, Resource, Version


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
