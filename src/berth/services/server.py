"""The gRPC server's shared machinery: error mapping and request logging.

Every handler is wrapped so that ``berth.errdefs`` exceptions become the status
codes containerd returns, anything unexpected becomes UNKNOWN with its message
(and a logged traceback), and each request is logged at debug level with its
namespace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from berth import errdefs, namespaces

log = logging.getLogger("berth.grpc")

_CODES = {c.value[0]: c for c in grpc.StatusCode}


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


class ErrorInterceptor(aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method

        def wrap_unary(fn: Any) -> Any:
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

        def wrap_stream(fn: Any) -> Any:
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

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary(handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                wrap_stream(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
