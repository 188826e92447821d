"""Connections to berthd, and the two drivers that run ``_core`` operations on them.

``SyncTransport`` uses a blocking ``grpc.Channel``; ``AsyncTransport`` uses a
``grpc.aio.Channel``. The generated stub classes accept either kind of channel,
so both drivers build stubs from the same :class:`~berth.client._core.Call`.
Each driver's only jobs are making the call with the right metadata and
deadline, and turning ``grpc.RpcError`` into ``berth.errdefs`` exceptions.
"""

from __future__ import annotations

import logging
import time
from typing import Any

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


def _log_call(call: _core.Call, start: float, error: errdefs.BerthError | None) -> None:
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
        while isinstance(step, _core.Call):
            method = getattr(self._stub(step.stub), step.method)
            response, error = None, None
            start = time.monotonic()
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
        while isinstance(step, _core.Call):
            method = getattr(self._stub(step.stub), step.method)
            response, error = None, None
            start = time.monotonic()
            try:
                response = await method(step.request, metadata=md, timeout=timeout)
            except grpc.RpcError as exc:
                error = _mapped(exc, self.address)
            _log_call(step, start, error)
            step = _core.resume(op, response, error)
        value: _core.T = step.value
        return value
