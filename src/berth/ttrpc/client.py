"""asyncio ttrpc client over a unix socket.

Owns one connection to a ttrpc server: multiplexing concurrent calls by
stream id, client-side deadlines (sent as ``timeout_nano`` and enforced
locally), and turning statuses back into ``berth.errdefs`` exceptions. Like
Go's ``ttrpc.Client`` it does not reconnect: when the connection drops every
pending and later call fails with ``errdefs.Unavailable("ttrpc: closed")``,
and the owner dials a new :class:`Client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from berth import errdefs
from berth.ttrpc._transport import FlowControlProtocol, socket_path
from berth.ttrpc.protocol import (
    CODE_RESOURCE_EXHAUSTED,
    Connection,
    ProtocolError,
    Request,
    Response,
    ResponseReceived,
    Role,
    normalize_metadata,
)

__all__ = ["Client", "Metadata", "ServiceStub", "status_error"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

Metadata = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]
"""Call metadata: ``{"key": "v"}``, ``{"key": ["v1", "v2"]}`` or (key, value) pairs."""

CLOSED_MESSAGE = "ttrpc: closed"


def status_error(code: int, message: str) -> errdefs.BerthError:
    """The errdefs exception for a non-OK status received from a peer.

    Codes errdefs has no class for (RESOURCE_EXHAUSTED, INTERNAL, ...) come
    back as a plain ``BerthError`` whose ``code`` still holds the wire code,
    so a proxy can pass it on unchanged.
    """
    err = errdefs.from_code(code, message)
    if err.code != code:
        err.code = code
    return err


class Client:
    """A ttrpc connection. Create with ``await Client.connect(path)``."""

    def __init__(self, transport: asyncio.Transport, protocol: _ClientProtocol) -> None:
        # Use Client.connect(); this is the already-connected pair.
        self._transport = transport
        self._protocol = protocol

    @classmethod
    async def connect(
        cls,
        path: str,
        *,
        timeout: float | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> Client:
        """Dial ``path`` (a filesystem path, ``unix://`` address or ``@abstract``).

        ``on_close`` runs once when the connection ends for any reason, like
        Go's ``WithOnClose``. Failure to connect raises ``errdefs.Unavailable``
        (``errdefs.DeadlineExceeded`` if ``timeout`` passes first).
        """
        addr = socket_path(path)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_unix_connection(
                    lambda: _ClientProtocol(on_close), addr
                )
        except TimeoutError:
            raise errdefs.DeadlineExceeded(f"ttrpc: timed out connecting to {path}") from None
        except OSError as exc:
            raise errdefs.Unavailable(f"ttrpc: dial {path}: {exc.strerror or exc}") from exc
        # uvloop's transports provide the interface without subclassing it.
        return cls(cast(asyncio.Transport, transport), protocol)

    @classmethod
    async def connect_socket(
        cls, sock: socket.socket, *, on_close: Callable[[], None] | None = None
    ) -> Client:
        """Wrap an already connected stream socket (e.g. one end of a socketpair)."""
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_unix_connection(
            lambda: _ClientProtocol(on_close), sock=sock
        )
        # uvloop's transports provide the interface without subclassing it.
        return cls(cast(asyncio.Transport, transport), protocol)

    @property
    def closed(self) -> bool:
        return self._protocol.closed.done()

    async def wait_closed(self) -> None:
        """Return once the connection has ended."""
        await asyncio.shield(self._protocol.closed)

    async def close(self) -> None:
        """Close the connection; pending calls fail with Unavailable."""
        self._transport.close()
        await self.wait_closed()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> M:
        """Call ``/service/method`` and decode the reply into ``response_type``.

        ``timeout`` (seconds) is sent to the server as the call's deadline and
        enforced here too: when it passes the call raises
        ``errdefs.DeadlineExceeded``. A non-OK status raises the matching
        ``errdefs`` exception (see :func:`status_error`).
        """
        payload = await self.call_raw(
            service,
            method,
            request.SerializeToString(),
            timeout=timeout,
            metadata=metadata,
        )
        try:
            return response_type.FromString(payload)
        except DecodeError as exc:
            raise errdefs.BerthError(f"ttrpc: cannot decode {method} response: {exc}") from exc

    async def call_raw(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> bytes:
        """:meth:`call` with already-serialized request and response payloads."""
        timeout_nano = 0
        if timeout is not None:
            if timeout <= 0:
                raise errdefs.DeadlineExceeded("context deadline exceeded")
            # 0 would mean "no deadline" on the wire; never round down to it.
            timeout_nano = max(1, int(timeout * 1e9))
        response = await self._protocol.call(
            Request(
                service=service,
                method=method,
                payload=payload,
                timeout_nano=timeout_nano,
                metadata=normalize_metadata(metadata),
            ),
            timeout,
        )
        if not response.ok:
            raise status_error(response.code, response.message)
        return response.payload


class _ClientProtocol(FlowControlProtocol):
    def __init__(self, on_close: Callable[[], None] | None) -> None:
        super().__init__()
        loop = asyncio.get_running_loop()
        self._conn = Connection(Role.CLIENT)
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._on_close = on_close
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        for event in self._conn.receive_data(data):
            if isinstance(event, ResponseReceived):
                fut = self._pending.pop(event.stream_id, None)
                if fut is None:
                    # Go logs and drops these too: typically the answer to a
                    # call whose caller already gave up on its deadline.
                    log.debug("ttrpc: response for unknown stream %d", event.stream_id)
                elif not fut.done():
                    fut.set_result(event.response)
            elif isinstance(event, ProtocolError):
                self._protocol_error(event)

    def eof_received(self) -> bool:
        for event in self._conn.receive_eof():
            if isinstance(event, ProtocolError):
                log.debug("ttrpc: %s", event.message)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(errdefs.Unavailable(CLOSED_MESSAGE))
        if not self.closed.done():
            self.closed.set_result(None)
            if self._on_close is not None:
                try:
                    self._on_close()
                except Exception:
                    log.exception("ttrpc: on_close callback failed")

    def _protocol_error(self, event: ProtocolError) -> None:
        log.debug("ttrpc: protocol error on stream %s: %s", event.stream_id, event.message)
        if event.fatal:
            if self._transport is not None:
                self._transport.abort()
            return
        if event.stream_id is None:
            return
        fut = self._pending.pop(event.stream_id, None)
        if fut is not None and not fut.done():
            fut.set_exception(status_error(event.code, event.message))

    async def call(self, request: Request, timeout: float | None) -> Response:
        transport = self._transport
        if transport is None or transport.is_closing() or self.closed.done():
            raise errdefs.Unavailable(CLOSED_MESSAGE)
        try:
            stream_id, data = self._conn.send_request(request)
        except ValueError as exc:
            raise status_error(CODE_RESOURCE_EXHAUSTED, str(exc)) from None
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = fut
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                transport.write(data)
                try:
                    await self.drain()
                except ConnectionError:
                    # connection_lost has failed (or will fail) the future.
                    pass
                return await fut
        except TimeoutError:
            if deadline.expired():
                raise errdefs.DeadlineExceeded("context deadline exceeded") from None
            raise
        finally:
            # On timeout or caller cancellation the server may still answer;
            # forgetting the stream makes that late response a no-op.
            self._pending.pop(stream_id, None)
            if fut.done() and not fut.cancelled():
                # Mark any stored exception as retrieved to keep asyncio quiet.
                with contextlib.suppress(BaseException):
                    fut.exception()


class ServiceStub:
    """Client-side view of one protobuf service, from its descriptor.

    ``await stub.call("State", StateRequest(id="c1"))`` or, dynamically,
    ``await stub.State(StateRequest(id="c1"))``; either returns the method's
    declared output type.
    """

    def __init__(self, client: Client, descriptor: ServiceDescriptor) -> None:
        self._client = client
        self._service = descriptor.full_name
        self._methods: dict[str, type[Message]] = {
            m.name: GetMessageClass(m.output_type) for m in descriptor.methods
        }

    @property
    def service(self) -> str:
        return self._service

    async def call(
        self,
        method: str,
        request: Message,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Any:
        response_type = self._methods.get(method)
        if response_type is None:
            raise errdefs.NotImplemented(f"{self._service} has no method {method}")
        return await self._client.call(
            self._service, method, request, response_type, timeout=timeout, metadata=metadata
        )

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if name.startswith("_") or name not in self._methods:
            raise AttributeError(name)

        async def bound(
            request: Message, *, timeout: float | None = None, metadata: Metadata | None = None
        ) -> Any:
            return await self.call(name, request, timeout=timeout, metadata=metadata)

        return bound
