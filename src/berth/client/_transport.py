"""Connections to berthd, and the two drivers that run ``_core`` operations on them.

``SyncTransport`` uses a blocking ``grpc.Channel``; ``AsyncTransport`` uses a
``grpc.aio.Channel``. The generated stub classes accept either kind of channel,
so both drivers build stubs from the same :class:`~berth.client._core.Call`.
Each driver's only jobs are making the call with the right metadata and
deadline, and turning ``grpc.RpcError`` into ``berth.errdefs`` exceptions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

import grpc
from grpc import aio

from berth import errdefs
from berth.client import _core

log = logging.getLogger("berth.client")

_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", _core.MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _core.MAX_MESSAGE_BYTES),
    # The daemon is local; an http_proxy variable in the environment must never
    # reroute a TCP address through a proxy.
    ("grpc.enable_http_proxy", 0),
)


def _log_call(call: _core.Call | _core.StreamCall, start: float, error: Exception | None) -> None:
    if log.isEnabledFor(logging.DEBUG):
        service = call.stub.__name__.removesuffix("Stub")
        took = (time.monotonic() - start) * 1000
        outcome = f"{type(error).__name__}: {error}" if error is not None else "ok"
        log.debug("%s.%s %.1fms %s", service, call.method, took, outcome)


def _mapped(exc: grpc.RpcError, address: str) -> errdefs.BerthError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return _core.rpc_error(code.value[0], details or code.name.lower(), address)


class SyncTransport:
    """A blocking channel to one daemon, shared by a client and its views."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel = grpc.insecure_channel(_core.grpc_target(address), options=_CHANNEL_OPTIONS)
        self._stubs: dict[type, Any] = {}

    def close(self) -> None:
        self._channel.close()

    def _stub(self, cls: type) -> Any:
        stub = self._stubs.get(cls)
        if stub is None:
            stub = self._stubs[cls] = cls(self._channel)
        return stub

    def run(
        self, op: _core.Op[_core.T], md: tuple[tuple[str, str], ...], timeout: float | None
    ) -> _core.T:
        step = _core.start(op)
        while not isinstance(step, _core.Done):
            method = getattr(self._stub(step.stub), step.method)
            response: Any = None
            error: Exception | None = None
            start = time.monotonic()
            if isinstance(step, _core.StreamCall):
                error = self._stream(method, step, md, timeout)
            else:
                try:
                    response = method(step.request, metadata=md, timeout=timeout)
                except grpc.RpcError as exc:
                    error = _mapped(exc, self.address)
            _log_call(step, start, error)
            # Resumed outside the except block, so an error the caller sees is
            # not chained to gRPC's internal exception.
            step = _core.resume(op, response, error)
        value: _core.T = step.value
        return value

    def _stream(
        self,
        method: Any,
        step: _core.StreamCall,
        md: tuple[tuple[str, str], ...],
        timeout: float | None,
    ) -> Exception | None:
        request = iter(step.request) if step.request_stream else step.request
        call = method(request, metadata=md, timeout=timeout)
        try:
            for message in call:
                step.on_message(message)
        except grpc.RpcError as exc:
            return _mapped(exc, self.address)
        except BaseException as exc:
            # The callback failed, or the user pressed ^C: stop the server's
            # work rather than leave it streaming to nobody.
            call.cancel()
            if isinstance(exc, Exception):
                return exc
            raise
        return None


class AsyncTransport:
    """An asyncio channel to one daemon, shared by a client and its views."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel = aio.insecure_channel(_core.grpc_target(address), options=_CHANNEL_OPTIONS)
        self._stubs: dict[type, Any] = {}

    async def close(self) -> None:
        await self._channel.close()

    def _stub(self, cls: type) -> Any:
        stub = self._stubs.get(cls)
        if stub is None:
            stub = self._stubs[cls] = cls(self._channel)
        return stub

    async def run(
        self, op: _core.Op[_core.T], md: tuple[tuple[str, str], ...], timeout: float | None
    ) -> _core.T:
        step = _core.start(op)
        while not isinstance(step, _core.Done):
            method = getattr(self._stub(step.stub), step.method)
            response: Any = None
            error: Exception | None = None
            start = time.monotonic()
            if isinstance(step, _core.StreamCall):
                error = await self._stream(method, step, md, timeout)
            else:
                try:
                    response = await method(step.request, metadata=md, timeout=timeout)
                except grpc.RpcError as exc:
                    error = _mapped(exc, self.address)
            _log_call(step, start, error)
            step = _core.resume(op, response, error)
        value: _core.T = step.value
        return value

    async def _stream(
        self,
        method: Any,
        step: _core.StreamCall,
        md: tuple[tuple[str, str], ...],
        timeout: float | None,
    ) -> Exception | None:
        # grpc.aio takes a plain iterable of requests for streaming calls.
        request = iter(step.request) if step.request_stream else step.request
        call = method(request, metadata=md, timeout=timeout)
        try:
            async for message in call:
                step.on_message(message)
        except grpc.RpcError as exc:
            return _mapped(exc, self.address)
        except BaseException as exc:
            # A failing callback, or this task being cancelled: end the call
            # so the server stops its work too.
            call.cancel()
            if isinstance(exc, Exception):
                return exc
            raise
        return None


# --- endless server streams: event subscriptions ------------------------------------------

S = TypeVar("S")


class SyncStream(Generic[S]):
    """The decoded replies of one server stream, read as the caller iterates.

    Iteration ends when the server ends the stream or after :meth:`close`
    (which cancels the call); a failed stream raises the ``berth.errdefs``
    exception for its status. Use it as a context manager to close it.
    """

    def __init__(self, call: Any, decode: Callable[[Any], S], address: str) -> None:
        self._call = call
        self._decode = decode
        self._address = address
        self._closed = False

    def __iter__(self) -> SyncStream[S]:
        return self

    def __next__(self) -> S:
        if self._closed:
            raise StopIteration
        try:
            reply = next(self._call)
        except StopIteration:
            self._closed = True
            raise
        except grpc.RpcError as exc:
            if self._closed:
                raise StopIteration from None  # closed from another thread meanwhile
            self._closed = True
            error = _mapped(exc, self._address)
        else:
            return self._decode(reply)
        # Raised outside the except block so gRPC's exception is not chained.
        raise error

    def close(self) -> None:
        """Cancel the stream; iteration stops. Safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._call.cancel()

    def __enter__(self) -> SyncStream[S]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncStream(Generic[S]):
    """The asyncio twin of :class:`SyncStream`: ``async for``, ``async with``."""

    def __init__(self, call: Any, decode: Callable[[Any], S], address: str) -> None:
        self._call = call
        self._decode = decode
        self._address = address
        self._closed = False

    def __aiter__(self) -> AsyncStream[S]:
        return self

    async def __anext__(self) -> S:
        if self._closed:
            raise StopAsyncIteration
        try:
            reply = await self._call.read()
        except asyncio.CancelledError:
            if self._closed:
                raise StopAsyncIteration from None  # close() while we were waiting
            raise
        except grpc.RpcError as exc:
            if self._closed:
                raise StopAsyncIteration from None
            self._closed = True
            error = _mapped(exc, self._address)
        else:
            if reply is aio.EOF:
                self._closed = True
                raise StopAsyncIteration
            return self._decode(reply)
        raise error

    def close(self) -> None:
        """Cancel the stream; iteration stops. Safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._call.cancel()

    async def __aenter__(self) -> AsyncStream[S]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_sync_stream(
    transport: SyncTransport, stream: _core.OpenStream[S], md: tuple[tuple[str, str], ...]
) -> SyncStream[S]:
    """Start ``stream`` on a blocking channel. No deadline: it lasts until closed."""
    method = getattr(transport._stub(stream.stub), stream.method)
    log.debug("%s.%s stream opened", stream.stub.__name__.removesuffix("Stub"), stream.method)
    return SyncStream(method(stream.request, metadata=md), stream.decode, transport.address)


def open_async_stream(
    transport: AsyncTransport, stream: _core.OpenStream[S], md: tuple[tuple[str, str], ...]
) -> AsyncStream[S]:
    """Start ``stream`` on an asyncio channel. No deadline: it lasts until closed."""
    method = getattr(transport._stub(stream.stub), stream.method)
    log.debug("%s.%s stream opened", stream.stub.__name__.removesuffix("Stub"), stream.method)
    return AsyncStream(method(stream.request, metadata=md), stream.decode, transport.address)
