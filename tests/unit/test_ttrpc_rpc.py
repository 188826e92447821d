"""Server dispatch and client behaviour of berth.ttrpc, over an in-process socketpair."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from berth import errdefs
from berth.ttrpc import (
    CallContext,
    Client,
    PeerCredentials,
    Server,
    ServiceStub,
    UnaryMethod,
    require_same_user,
    status_error,
)
from berth.ttrpc import protocol as p
from berth.ttrpc.protocol import CODE_INTERNAL, CODE_RESOURCE_EXHAUSTED, Request, Response

SVC = "test.Echo"
StringValue = wrappers_pb2.StringValue


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


@asynccontextmanager
async def pair(server: Server) -> AsyncIterator[Client]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    await server.accept_socket(a)
    client = await Client.connect_socket(b)
    try:
        yield client
    finally:
        await client.close()
        await server.close()


def echo_server(**handlers: Callable[[CallContext, Any], Awaitable[Message]]) -> Server:
    server = Server()
    server.register(SVC, {name: UnaryMethod(StringValue, h) for name, h in handlers.items()})
    return server


async def echo(ctx: CallContext, req: StringValue) -> StringValue:
    return StringValue(value=req.value)


def test_unary_call_roundtrip() -> None:
    async def main() -> None:
        async with pair(echo_server(Echo=echo)) as client:
            resp = await client.call(SVC, "Echo", StringValue(value="hi"), StringValue)
            assert resp == StringValue(value="hi")

    run(main())


def test_metadata_and_deadline_reach_the_handler() -> None:
    seen: list[CallContext] = []

    async def handler(ctx: CallContext, req: StringValue) -> StringValue:
        seen.append(ctx)
        remaining = ctx.time_remaining()
        if ctx.deadline is not None:
            assert remaining is not None and 0 < remaining <= 5
        return StringValue(value=ctx.get("Containerd-Namespace-TTRPC") or "")

    async def main() -> None:
        async with pair(echo_server(Echo=handler)) as client:
            resp = await client.call(
                SVC,
                "Echo",
                StringValue(),
                StringValue,
                timeout=5,
                metadata={"containerd-namespace-ttrpc": "k8s.io", "Multi": ["a", "b"]},
            )
            assert resp.value == "k8s.io"
            assert seen[0].metadata["multi"] == ["a", "b"]
            # No timeout -> no deadline on the server either.
            await client.call(SVC, "Echo", StringValue(), StringValue)
            assert seen[1].deadline is None and seen[1].time_remaining() is None

    run(main())


@pytest.mark.parametrize(
    ("exc", "cls", "code", "message"),
    [
        (
            errdefs.NotFound("container c1: not found"),
            errdefs.NotFound,
            5,
            "container c1: not found",
        ),
        (errdefs.AlreadyExists("dup"), errdefs.AlreadyExists, 6, "dup"),
        (errdefs.FailedPrecondition("nope"), errdefs.FailedPrecondition, 9, "nope"),
        (errdefs.InvalidArgument("bad"), errdefs.InvalidArgument, 3, "bad"),
        (errdefs.Unavailable("away"), errdefs.Unavailable, 14, "away"),
        (errdefs.BerthError("generic"), errdefs.BerthError, 2, "generic"),
        (ValueError("boom"), errdefs.BerthError, 2, "boom"),
        (RuntimeError(), errdefs.BerthError, 2, "RuntimeError"),
    ],
)
def test_exceptions_map_to_status(
    exc: Exception, cls: type[errdefs.BerthError], code: int, message: str
) -> None:
    async def handler(ctx: CallContext, req: StringValue) -> StringValue:
        raise exc

    async def main() -> None:
        async with pair(echo_server(Fail=handler)) as client:
            with pytest.raises(errdefs.BerthError) as info:
                await client.call(SVC, "Fail", StringValue(), StringValue)
            assert type(info.value) is cls
            assert info.value.code == code
            assert info.value.message == message

    run(main())


def test_unknown_service_and_method_are_unimplemented() -> None:
    async def main() -> None:
        async with pair(echo_server(Echo=echo)) as client:
            with pytest.raises(errdefs.NotImplemented, match=r"^service nope\.Svc$"):
                await client.call("nope.Svc", "Echo", StringValue(), StringValue)
            with pytest.raises(errdefs.NotImplemented, match=r"^method Missing$"):
                await client.call(SVC, "Missing", StringValue(), StringValue)

    run(main())


def test_bad_handler_results_are_reported() -> None:
    async def returns_none(ctx: CallContext, req: StringValue) -> Any:
        return None

    async def returns_str(ctx: CallContext, req: StringValue) -> Any:
        return "not a message"

    async def main() -> None:
        async with pair(echo_server(Nil=returns_none, Str=returns_str)) as client:
            with pytest.raises(errdefs.BerthError, match="marshal called with nil") as info:
                await client.call(SVC, "Nil", StringValue(), StringValue)
            assert info.value.code == errdefs.CODE_UNKNOWN
            with pytest.raises(errdefs.BerthError, match="unsupported response type") as info:
                await client.call(SVC, "Str", StringValue(), StringValue)
            assert info.value.code == CODE_INTERNAL

    run(main())


def test_undecodable_payload_is_internal() -> None:
    async def main() -> None:
        async with pair(echo_server(Echo=echo)) as client:
            with pytest.raises(errdefs.BerthError, match="error unmarshalling payload") as info:
                await client.call_raw(SVC, "Echo", b"\x0a\x05")
            assert info.value.code == CODE_INTERNAL

    run(main())


def test_deadline_expiry_cancels_handler_and_reports_both_sides() -> None:
    cancelled = asyncio.Event()

    async def slow(ctx: CallContext, req: StringValue) -> StringValue:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return StringValue()

    async def main() -> None:
        async with pair(echo_server(Slow=slow, Echo=echo)) as client:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(errdefs.DeadlineExceeded, match="context deadline exceeded"):
                await client.call(SVC, "Slow", StringValue(), StringValue, timeout=0.1)
            assert loop.time() - start < 5
            await asyncio.wait_for(cancelled.wait(), 5)
            # The connection is still good afterwards.
            assert (
                await client.call(SVC, "Echo", StringValue(value="x"), StringValue)
            ).value == "x"
            with pytest.raises(errdefs.DeadlineExceeded):
                await client.call(SVC, "Echo", StringValue(), StringValue, timeout=0)

    run(main())


def test_server_enforces_timeout_nano_without_client_help() -> None:
    # Drive the server with a raw Request so only its own deadline applies.
    async def slow(ctx: CallContext, req: StringValue) -> StringValue:
        await asyncio.sleep(30)
        return StringValue()

    async def main() -> None:
        server = echo_server(Slow=slow)
        req = Request(SVC, "Slow", b"", timeout_nano=50_000_000)
        resp = await asyncio.wait_for(server._call(req, None), 5)
        assert resp == Response(
            code=errdefs.CODE_DEADLINE_EXCEEDED, message="context deadline exceeded"
        )
        expired = await server._call(Request(SVC, "Slow", b"", timeout_nano=-5), None)
        assert expired.code == errdefs.CODE_DEADLINE_EXCEEDED

    run(main())


def test_handler_timeout_error_of_its_own_is_not_a_deadline() -> None:
    async def raises_timeout(ctx: CallContext, req: StringValue) -> StringValue:
        raise TimeoutError("upstream timed out")

    async def main() -> None:
        server = echo_server(T=raises_timeout)
        resp = await server._call(Request(SVC, "T", b"", timeout_nano=10**10), None)
        assert resp == Response(code=errdefs.CODE_UNKNOWN, message="upstream timed out")

    run(main())


def test_concurrent_calls_complete_out_of_order() -> None:
    async def delayed(ctx: CallContext, req: StringValue) -> StringValue:
        await asyncio.sleep(float(req.value))
        return StringValue(value=req.value)

    async def main() -> None:
        async with pair(echo_server(Delay=delayed)) as client:
            delays = ["0.3", "0.1", "0.2", "0.0", "0.25"]
            finished: list[str] = []

            async def one(d: str) -> None:
                r = await client.call(SVC, "Delay", StringValue(value=d), StringValue)
                assert r.value == d
                finished.append(d)

            start = asyncio.get_running_loop().time()
            await asyncio.gather(*(one(d) for d in delays))
            assert asyncio.get_running_loop().time() - start < 0.3 + 0.5  # ran in parallel
            assert finished == sorted(delays, key=float)

    run(main())


def test_server_answers_protocol_errors_on_the_offending_stream() -> None:
    async def main() -> None:
        server = echo_server(Echo=echo)
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        await server.accept_socket(a)
        reader, writer = await asyncio.open_unix_connection(sock=b)
        garbage = b"\xff\xff\xff"
        writer.write(struct.pack(">IIBB", len(garbage), 11, 1, 0) + garbage)
        good = p.encode_request(Request(SVC, "Echo", StringValue(value="ok").SerializeToString()))
        writer.write(p.encode_frame(4, p.MessageType.REQUEST, good))  # even id
        writer.write(p.encode_frame(13, p.MessageType.REQUEST, good))
        got = {}
        for _ in range(3):
            hdr = await reader.readexactly(10)
            length, sid, mtype, _flags = struct.unpack(">IIBB", hdr)
            assert mtype == p.MessageType.RESPONSE
            got[sid] = p.decode_response(await reader.readexactly(length))
        assert got[11].code == errdefs.CODE_INVALID_ARGUMENT
        assert got[4].message == "StreamID must be odd for client initiated streams"
        assert got[13].ok and StringValue.FromString(got[13].payload).value == "ok"
        writer.close()
        await server.close()

    run(main())


def test_peer_disconnect_cancels_in_flight_handlers() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(ctx: CallContext, req: StringValue) -> StringValue:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return StringValue()

    async def main() -> None:
        async with pair(echo_server(Slow=slow)) as client:
            call = asyncio.create_task(client.call(SVC, "Slow", StringValue(), StringValue))
            await started.wait()
            await client.close()
            with pytest.raises(errdefs.Unavailable, match="ttrpc: closed"):
                await call
            await asyncio.wait_for(cancelled.wait(), 5)
            with pytest.raises(errdefs.Unavailable):
                await client.call(SVC, "Slow", StringValue(), StringValue)

    run(main())


def test_caller_cancellation_forgets_the_stream() -> None:
    release = asyncio.Event()

    async def gated(ctx: CallContext, req: StringValue) -> StringValue:
        await release.wait()
        return StringValue(value="late")

    async def main() -> None:
        async with pair(echo_server(Gated=gated, Echo=echo)) as client:
            task = asyncio.create_task(client.call(SVC, "Gated", StringValue(), StringValue))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            release.set()  # the late answer must be dropped quietly
            assert (
                await client.call(SVC, "Echo", StringValue(value="y"), StringValue)
            ).value == "y"
            assert client._protocol._pending == {}

    run(main())


def test_oversize_request_fails_locally() -> None:
    async def main() -> None:
        async with pair(echo_server(Echo=echo)) as client:
            big = StringValue(value="x" * p.MESSAGE_LENGTH_MAX)
            with pytest.raises(errdefs.BerthError, match="exceed maximum") as info:
                await client.call(SVC, "Echo", big, StringValue)
            assert info.value.code == CODE_RESOURCE_EXHAUSTED
            assert (
                await client.call(SVC, "Echo", StringValue(value="z"), StringValue)
            ).value == "z"

    run(main())


def test_status_error_keeps_codes_errdefs_lacks() -> None:
    err = status_error(CODE_RESOURCE_EXHAUSTED, "too big")
    assert type(err) is errdefs.BerthError and err.code == CODE_RESOURCE_EXHAUSTED
    assert isinstance(status_error(5, "x"), errdefs.NotFound)
    # The class attribute is untouched.
    assert errdefs.BerthError.code == errdefs.CODE_UNKNOWN


def test_register_service_from_descriptor_and_stub() -> None:
    from berth.api.runtime.v2.task import shim_pb2

    task = shim_pb2.DESCRIPTOR.services_by_name["Task"]

    class Impl:
        async def State(self, ctx: CallContext, req: shim_pb2.StateRequest) -> Message:
            assert isinstance(req, shim_pb2.StateRequest)
            return shim_pb2.StateResponse(id=req.id, pid=42, bundle="/b")

    async def main() -> None:
        server = Server()
        server.register_service(task, Impl())
        assert server.services == {"containerd.task.v2.Task": ["State"]}
        with pytest.raises(ValueError, match="duplicate service"):
            server.register_service(task, {})
        async with pair(server) as client:
            stub = ServiceStub(client, task)
            resp = await stub.State(shim_pb2.StateRequest(id="c1"))
            assert isinstance(resp, shim_pb2.StateResponse)
            assert (resp.id, resp.pid) == ("c1", 42)
            with pytest.raises(errdefs.NotImplemented, match="method Pids"):
                await stub.call("Pids", shim_pb2.PidsRequest(id="c1"))
            with pytest.raises(AttributeError):
                stub.NoSuchMethod  # noqa: B018
            with pytest.raises(errdefs.NotImplemented):
                await stub.call("NoSuchMethod", shim_pb2.PidsRequest())

    run(main())


def test_authorizer_refuses_connections() -> None:
    async def main() -> None:
        server = Server(authorize=lambda peer: False)
        server.register(SVC, {"Echo": UnaryMethod(StringValue, echo)})
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        await server.accept_socket(a)
        client = await Client.connect_socket(b)
        with pytest.raises(errdefs.Unavailable):
            await client.call(SVC, "Echo", StringValue(), StringValue)
        await client.close()
        await server.close()

    run(main())


def test_require_same_user_accepts_own_process() -> None:
    check = require_same_user()
    assert check(PeerCredentials(os.getpid(), os.geteuid(), os.getegid()))
    assert not check(PeerCredentials(1, os.geteuid() + 1, os.getegid()))
    assert not check(None)

    async def main() -> None:
        server = Server(authorize=check)
        server.register(SVC, {"Echo": UnaryMethod(StringValue, echo)})
        async with pair(server) as client:
            assert (
                await client.call(SVC, "Echo", StringValue(value="me"), StringValue)
            ).value == "me"

    run(main())
