"""The gRPC server's shared machinery: error mapping and request logging.

Every handler is wrapped, once, as its service registers (``WrappingServer``),
so that ``berth.errdefs`` exceptions become the status codes containerd
returns, anything unexpected becomes UNKNOWN with its message (and a logged
traceback), and each request is logged at debug level with its namespace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from grpc import aio

from berth import errdefs, namespaces

log = logging.getLogger("berth.grpc")

_CODES = {c.value[0]: c for c in grpc.StatusCode}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime | int) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of a datetime (naive means UTC) or of epoch nanoseconds.

    Built from seconds and nanos directly: protobuf's ``FromDatetime`` does
    its calendar arithmetic in Python, a visible share of a small request.
    """
    if isinstance(value, int):
        seconds, nanos = divmod(value, 1_000_000_000)
        return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    d = value - _EPOCH
    return timestamp_pb2.Timestamp(seconds=d.days * 86400 + d.seconds, nanos=d.microseconds * 1000)


def status_code(exc: BaseException) -> grpc.StatusCode:
    return _CODES.get(errdefs.code_of(exc), grpc.StatusCode.UNKNOWN)


def namespace(context: aio.ServicerContext) -> str:
    """The request's validated namespace (FailedPrecondition when missing)."""
    return namespaces.required(context.invocation_metadata())


LEASE_HEADER = "containerd-lease"


def lease_from(context: aio.ServicerContext) -> str | None:
    """The lease a request works under (gRPC metadata ``containerd-lease``), or None.

    Resources the request creates (ingests, content, snapshots) are added to
    that lease, so GC leaves them alone until the lease goes.
    """
    for key, value in context.invocation_metadata() or ():
        if key.lower() == LEASE_HEADER:
            text = value.decode() if isinstance(value, bytes) else value
            return text or None
    return None


async def _abort(context: aio.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, errdefs.BerthError):
        await context.abort(status_code(exc), str(exc))
    log.error(
        "unexpected error in handler",
        exc_info=exc,
        extra={"fields": {"method": method}},
    )
    await context.abort(grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")


def _log_request(method: str, context: aio.ServicerContext, start: float, err: str | None) -> None:
    if not log.isEnabledFor(logging.DEBUG):
        return
    fields: dict[str, Any] = {
        "method": method,
        "namespace": namespaces.from_metadata(context.invocation_metadata()) or "",
        "duration_ms": round((time.monotonic() - start) * 1000, 3),
    }
    if err:
        fields["error"] = err
    log.debug("request", extra={"fields": fields})


def _wrap_unary(fn: Any, method: str) -> Any:
    async def unary(request: Any, context: aio.ServicerContext) -> Any:
        start = time.monotonic()
        err = None
        try:
            return await fn(request, context)
        except aio.AbortError:
            raise
        except Exception as exc:
            err = str(exc)
            await _abort(context, exc, method)
        finally:
            _log_request(method, context, start, err)

    return unary


def _wrap_stream(fn: Any, method: str) -> Any:
    async def stream(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        start = time.monotonic()
        err = None
        try:
            async for item in fn(request, context):
                yield item
        except aio.AbortError:
            raise
        except Exception as exc:
            err = str(exc)
            await _abort(context, exc, method)
        finally:
            _log_request(method, context, start, err)

    return stream


def wrap_handler(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """*handler* with errdefs mapping and request logging around its behaviour."""
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary, method), **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream(handler.unary_stream, method), **kw
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_wrap_unary(handler.stream_unary, method), **kw)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, method), **kw
        )
    return handler


class _WrappedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are wrapped once, on first use."""

    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner
        self._cache: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        try:
            return self._cache[method]
        except KeyError:
            pass
        handler = self._inner.service(details)
        wrapped = wrap_handler(handler, method) if handler is not None else None
        self._cache[method] = wrapped
        return wrapped


class _Dispatch(grpc.GenericRpcHandler):
    """Every registered service's wrapped handlers, found with one dict lookup."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self.handlers.get(details.method)


class WrappingServer:
    """Stands in for the grpc.aio server while services register.

    The generated ``add_*Servicer_to_server`` functions hand their method
    handlers to this object, which wraps each one once (errdefs mapping,
    request logging) before passing it on. A server interceptor would do the
    same work per request: an extra coroutine and four new handler objects on
    every call, a measurable share of berthd's CPU per ``ctr run``.

    The generated code offers each service twice: as a generic handler and
    as "registered methods". grpc.aio's registered-method path costs every
    call in proportion to how many methods are registered (measured: a
    trivial call took 300 µs of server CPU with one service, 465 µs with
    200 other methods registered), so registered methods go instead into one
    table served by a single generic handler, consulted before the generic
    handlers of any service that offers no table. One WrappingServer serves
    all services of a server.
    """

    def __init__(self, server: Any) -> None:
        self._server = server
        self._dispatch = _Dispatch()
        server.add_generic_rpc_handlers((self._dispatch,))

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(tuple(_WrappedGeneric(h) for h in handlers))

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, h in handlers.items():
            method = f"/{service}/{name}"
            self._dispatch.handlers[method] = wrap_handler(h, method)
