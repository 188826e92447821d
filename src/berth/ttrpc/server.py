"""asyncio ttrpc server over unix sockets.

Owns service registration, per-connection request dispatch, deadlines, the
mapping of handler outcomes to ``google.rpc.Status`` codes, and graceful
shutdown. Framing and message encoding live in :mod:`berth.ttrpc.protocol`.

Semantics follow Go's ttrpc v1.1 server, which containerd 1.6 talks to:

* each request runs in its own task, so one slow call does not hold up the
  others on the same connection; responses go out in completion order;
* ``timeout_nano`` becomes a deadline; when it passes the handler is cancelled
  and the caller gets DEADLINE_EXCEEDED "context deadline exceeded";
* when the peer disconnects, its in-flight handlers are cancelled (Go cancels
  their contexts); wrap work that must finish in ``asyncio.shield``;
* unknown service/method -> UNIMPLEMENTED "service X" / "method X";
  ``berth.errdefs.BerthError`` -> its code and message; anything else ->
  UNKNOWN with ``str(exc)`` (and a logged traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, EncodeError, Message
from google.protobuf.message_factory import GetMessageClass

from berth import errdefs
from berth.ttrpc._transport import (
    FlowControlProtocol,
    PeerCredentials,
    peer_credentials,
    socket_path,
)
from berth.ttrpc.protocol import (
    CODE_INTERNAL,
    Connection,
    ProtocolError,
    Request,
    RequestReceived,
    Response,
    Role,
)

__all__ = [
    "CallContext",
    "Handler",
    "PeerCredentials",
    "Server",
    "UnaryMethod",
    "require_same_user",
]

log = logging.getLogger(__name__)

Handler = Callable[["CallContext", Any], Awaitable[Message]]
"""``async def handler(ctx, request) -> response``."""

Authorizer = Callable[[PeerCredentials | None], bool]


@dataclass(frozen=True, slots=True)
class UnaryMethod:
    """A handler plus the message type its request payload decodes into."""

    request_type: type[Message]
    handler: Handler


class CallContext:
    """What a handler knows about the call besides its request message."""

    __slots__ = ("deadline", "metadata", "method", "peer", "service")

    def __init__(
        self,
        service: str,
        method: str,
        metadata: dict[str, list[str]],
        deadline: float | None,
        peer: PeerCredentials | None,
    ) -> None:
        self.service = service
        self.method = method
        #: All metadata, keys as sent, values in arrival order.
        self.metadata = metadata
        #: Absolute deadline on the event loop's clock, or None.
        self.deadline = deadline
        #: The calling process (SO_PEERCRED), where the socket tells.
        self.peer = peer

    def get(self, key: str) -> str | None:
        """First value for ``key`` (case-insensitive, like Go's ``MD.Get``)."""
        values = self.metadata.get(key.lower())
        if values is None:
            for k, v in self.metadata.items():
                if k.lower() == key.lower():
                    values = v
                    break
        return values[0] if values else None

    def time_remaining(self) -> float | None:
        """Seconds until the deadline (may be negative), or None without one."""
        if self.deadline is None:
            return None
        return self.deadline - asyncio.get_running_loop().time()

    def __repr__(self) -> str:
        return f"CallContext(/{self.service}/{self.method}, deadline={self.deadline})"


def require_same_user() -> Authorizer:
    """Accept only peers with this process's effective uid and gid.

    The counterpart of Go's ``UnixSocketRequireSameUser``, which containerd's
    shims install; useful when the socket is abstract and anyone could dial it.
    """
    euid, egid = os.geteuid(), os.getegid()

    def check(peer: PeerCredentials | None) -> bool:
        return peer is not None and peer.uid == euid and peer.gid == egid

    return check


class Server:
    """A ttrpc server; one instance may listen on several sockets.

    Typical use::

        server = Server()
        server.register_service(shim_pb2.DESCRIPTOR.services_by_name["Task"], TaskImpl())
        await server.start("/run/berth/s/abc")
        ...
        await server.shutdown(timeout=5)
    """

    def __init__(self, *, authorize: Authorizer | None = None) -> None:
        self._services: dict[str, dict[str, UnaryMethod]] = {}
        self._authorize = authorize
        self._listeners: list[tuple[asyncio.AbstractServer, str | None]] = []
        self._connections: set[_ServerConnection] = set()
        self._closing_listeners: list[asyncio.AbstractServer] = []
        self._shutting_down = False

    # -- registration ---------------------------------------------------------

    def register(self, service: str, methods: Mapping[str, UnaryMethod]) -> None:
        """Register ``methods`` under the wire name ``service``.

        Raises ``ValueError`` for a duplicate service, as Go panics there.
        """
        if service in self._services:
            raise ValueError(f"duplicate service {service} registered")
        self._services[service] = dict(methods)

    def register_service(
        self, descriptor: ServiceDescriptor, impl: object | Mapping[str, Handler]
    ) -> None:
        """Register a protobuf service by its descriptor.

        ``impl`` is either a mapping from method name (``"State"``) to handler
        or an object whose attributes of those names are the handlers, like a
        gRPC servicer. Methods ``impl`` lacks are left unregistered and answer
        UNIMPLEMENTED. Requests decode into each method's input type; handlers
        should return its output type.
        """
        methods: dict[str, UnaryMethod] = {}
        for m in descriptor.methods:
            if isinstance(impl, Mapping):
                handler = impl.get(m.name)
            else:
                handler = getattr(impl, m.name, None)
            if handler is None:
                continue
            if not callable(handler):
                raise TypeError(f"{descriptor.full_name}.{m.name} handler is not callable")
            methods[m.name] = UnaryMethod(GetMessageClass(m.input_type), handler)
        self.register(descriptor.full_name, methods)

    @property
    def services(self) -> dict[str, list[str]]:
        """Registered service names and their method names."""
        return {name: sorted(methods) for name, methods in self._services.items()}

    # -- lifecycle ------------------------------------------------------------

    async def start(
        self,
        path: str | None = None,
        *,
        sock: socket.socket | None = None,
        mode: int | None = None,
    ) -> None:
        """Listen on ``path`` (a filesystem or ``unix://`` address) or on an
        already bound and listening ``sock`` (e.g. one inherited from the
        process that spawned a shim). ``mode`` chmods a newly created socket.
        Returns once listening; connections are served in the background.
        """
        if self._shutting_down:
            raise errdefs.FailedPrecondition("ttrpc: server closed")
        if (path is None) == (sock is None):
            raise ValueError("pass exactly one of path or sock")
        loop = asyncio.get_running_loop()
        owned_path: str | None = None
        if path is not None:
            addr = socket_path(path)
            aserver = await loop.create_unix_server(self._new_connection, addr)
            if not addr.startswith("\0"):
                owned_path = addr
                if mode is not None:
                    os.chmod(addr, mode)
        else:
            aserver = await loop.create_unix_server(self._new_connection, sock=sock)
        self._listeners.append((aserver, owned_path))

    async def accept_socket(self, sock: socket.socket) -> None:
        """Serve one already connected stream socket (e.g. one end of a socketpair)."""
        if self._shutting_down:
            raise errdefs.FailedPrecondition("ttrpc: server closed")
        await asyncio.get_running_loop().connect_accepted_socket(self._new_connection, sock)

    async def shutdown(self, timeout: float | None = None) -> bool:
        """Stop accepting, let in-flight calls finish, then close.

        Idle connections close at once; busy ones close as soon as their last
        call has answered (calls arriving meanwhile are still served, as in
        Go). After ``timeout`` seconds the rest are cut off and their handlers
        cancelled. Returns True when everything drained in time.
        """
        self._shutting_down = True
        self._close_listeners()
        for conn in list(self._connections):
            conn.close_when_idle()
        pending = [c.closed for c in self._connections]
        graceful = True
        if pending:
            _, not_done = await asyncio.wait(pending, timeout=timeout)
            graceful = not not_done
        if not graceful:
            await self.close()
        await self._wait_listeners_closed()
        return graceful

    async def close(self) -> None:
        """Stop at once: close listeners and connections, cancel handlers."""
        self._shutting_down = True
        self._close_listeners()
        conns = list(self._connections)
        for conn in conns:
            conn.abort()
        await asyncio.gather(*(c.closed for c in conns), return_exceptions=True)
        await self._wait_listeners_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    def _close_listeners(self) -> None:
        for aserver, owned_path in self._listeners:
            aserver.close()
            if owned_path is not None:
                # asyncio (before 3.13) leaves the socket file behind; a stale
                # one would make clients see ECONNREFUSED instead of ENOENT.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(owned_path)
        self._closing_listeners.extend(a for a, _ in self._listeners)
        self._listeners = []

    async def _wait_listeners_closed(self) -> None:
        closing, self._closing_listeners = self._closing_listeners, []
        for aserver in closing:
            await aserver.wait_closed()

    def _new_connection(self) -> _ServerConnection:
        return _ServerConnection(self)

    # -- dispatch -------------------------------------------------------------

    async def _call(self, request: Request, peer: PeerCredentials | None) -> Response:
        """Run one request to completion and produce its response.

        Only cancellation of the surrounding task escapes; every other outcome
        is turned into a status here.
        """
        methods = self._services.get(request.service)
        if methods is None:
            return Response(code=errdefs.CODE_UNIMPLEMENTED, message=f"service {request.service}")
        method = methods.get(request.method)
        if method is None:
            return Response(code=errdefs.CODE_UNIMPLEMENTED, message=f"method {request.method}")

        loop = asyncio.get_running_loop()
        deadline: float | None = None
        if request.timeout_nano != 0:
            deadline = loop.time() + request.timeout_nano / 1e9
            if request.timeout_nano < 0:
                # Go hands the handler an already-expired context; a handler
                # that honours it fails the same way, so skip running it.
                return _deadline_exceeded()

        try:
            message = method.request_type.FromString(request.payload)
        except DecodeError as exc:
            return Response(
                code=CODE_INTERNAL, message=f"ttrpc: error unmarshalling payload: {exc}"
            )

        ctx = CallContext(request.service, request.method, request.metadata_dict(), deadline, peer)
        timeout = asyncio.timeout_at(deadline)
        try:
            async with timeout:
                result = await method.handler(ctx, message)
        except TimeoutError as exc:
            if timeout.expired():
                return _deadline_exceeded()
            return _error_response(exc, request)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being torn down: the connection is gone
            # The handler itself saw a cancellation (e.g. awaited a cancelled
            # future); report it the way Go reports context.Canceled.
            return Response(code=errdefs.CODE_CANCELLED, message="context canceled")
        except Exception as exc:
            return _error_response(exc, request)

        if result is None:
            return Response(code=errdefs.CODE_UNKNOWN, message="ttrpc: marshal called with nil")
        if not isinstance(result, Message):
            return Response(
                code=CODE_INTERNAL,
                message=f"ttrpc: error unsupported response type: {type(result).__name__}",
            )
        try:
            payload = result.SerializeToString()
        except EncodeError as exc:
            return Response(code=CODE_INTERNAL, message=f"ttrpc: error marshaling payload: {exc}")
        return Response(payload=payload)


def _deadline_exceeded() -> Response:
    return Response(code=errdefs.CODE_DEADLINE_EXCEEDED, message="context deadline exceeded")


def _error_response(exc: Exception, request: Request) -> Response:
    if isinstance(exc, errdefs.BerthError):
        return Response(code=exc.code, message=exc.message)
    log.error(
        "ttrpc: /%s/%s failed with an unexpected error",
        request.service,
        request.method,
        exc_info=exc,
    )
    return Response(code=errdefs.CODE_UNKNOWN, message=str(exc) or type(exc).__name__)


class _ServerConnection(FlowControlProtocol):
    """One accepted client: feeds bytes to the protocol and runs its calls."""

    def __init__(self, server: Server) -> None:
        super().__init__()
        self._server = server
        self._conn = Connection(Role.SERVER)
        self._transport: asyncio.Transport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._close_when_idle = False
        self.peer: PeerCredentials | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.peer = peer_credentials(transport)
        authorize = self._server._authorize
        if authorize is not None and not authorize(self.peer):
            log.warning("ttrpc: refusing connection from %s: credential check failed", self.peer)
            self._transport.abort()
            return
        self._server._connections.add(self)
        if self._server._shutting_down:
            # Accepted in the instant between shutdown() and the listener closing.
            self.close_when_idle()

    def data_received(self, data: bytes) -> None:
        for event in self._conn.receive_data(data):
            if isinstance(event, RequestReceived):
                self._spawn(event.stream_id, event.request)
            elif isinstance(event, ProtocolError):
                self._protocol_error(event)

    def eof_received(self) -> bool:
        for event in self._conn.receive_eof():
            if isinstance(event, ProtocolError):
                log.debug("ttrpc: %s", event.message)
        # A client that stops sending is gone, as Go sees it: close our side too.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._server._connections.discard(self)
        for task in list(self._tasks):
            task.cancel()
        if not self.closed.done():
            self.closed.set_result(None)

    # control from the server

    def close_when_idle(self) -> None:
        self._close_when_idle = True
        if not self._tasks and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._transport is not None:
            self._transport.abort()

    # internals

    def _protocol_error(self, event: ProtocolError) -> None:
        log.debug("ttrpc: protocol error on stream %s: %s", event.stream_id, event.message)
        if event.fatal:
            if self._transport is not None:
                self._transport.abort()
            return
        if event.reply and event.stream_id is not None:
            self._write(
                self._conn.send_response(
                    event.stream_id, Response(code=event.code, message=event.message)
                )
            )

    def _spawn(self, stream_id: int, request: Request) -> None:
        task = asyncio.get_running_loop().create_task(
            self._run(stream_id, request), name=f"ttrpc:/{request.service}/{request.method}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ttrpc: request task failed", exc_info=task.exception())
        if self._close_when_idle and not self._tasks and self._transport is not None:
            self._transport.close()

    async def _run(self, stream_id: int, request: Request) -> None:
        response = await self._server._call(request, self.peer)
        if self._write(self._conn.send_response(stream_id, response)):
            with contextlib.suppress(ConnectionError):
                await self.drain()

    def _write(self, data: bytes) -> bool:
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        transport.write(data)
        return True
