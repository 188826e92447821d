"""berth.ttrpc over real unix sockets: our client and server, and Go's shim."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest
from google.protobuf import empty_pb2

from berth import errdefs
from berth.api.runtime.v2.task import shim_pb2
from berth.ttrpc import CallContext, Client, Server, ServiceStub
from berth.ttrpc import protocol as p

pytestmark = pytest.mark.integration

TASK = shim_pb2.DESCRIPTOR.services_by_name["Task"]
TASK_NAME = "containerd.task.v2.Task"


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short path: sun_path holds at most 107 bytes.
    d = tempfile.mkdtemp(prefix="b.", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


class FakeTask:
    """A few shim Task methods; the rest stay unregistered (UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.namespaces: list[str | None] = []

    async def State(self, ctx: CallContext, req: shim_pb2.StateRequest) -> shim_pb2.StateResponse:
        self.namespaces.append(ctx.get("containerd-namespace-ttrpc"))
        if req.id == "missing":
            raise errdefs.NotFound(f"container {req.id}: not found")
        return shim_pb2.StateResponse(id=req.id, bundle=f"/run/b/{req.id}", pid=1234)

    async def Pids(self, ctx: CallContext, req: shim_pb2.PidsRequest) -> shim_pb2.PidsResponse:
        # Echo the request id back as a pid after an id-dependent delay, so
        # concurrent calls finish in a different order than they were sent.
        n = int(req.id)
        await asyncio.sleep((n % 7) / 100)
        return shim_pb2.PidsResponse(processes=[{"pid": n}])

    async def Wait(self, ctx: CallContext, req: shim_pb2.WaitRequest) -> shim_pb2.WaitResponse:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return shim_pb2.WaitResponse(exit_status=7)


async def start_task_server(path: Path, impl: FakeTask) -> Server:
    server = Server()
    server.register_service(TASK, impl)
    await server.start(str(path), mode=0o600)
    return server


def test_shim_task_state_over_socket(sock_dir: Path) -> None:
    path = sock_dir / "s"

    async def main() -> None:
        impl = FakeTask()
        server = await start_task_server(path, impl)
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        async with await Client.connect(f"unix://{path}") as client:
            resp = await client.call(
                TASK_NAME,
                "State",
                shim_pb2.StateRequest(id="c1"),
                shim_pb2.StateResponse,
                timeout=5,
                metadata={"containerd-namespace-ttrpc": "default"},
            )
            assert (resp.id, resp.bundle, resp.pid) == ("c1", "/run/b/c1", 1234)
            assert impl.namespaces == ["default"]

            stub = ServiceStub(client, TASK)
            with pytest.raises(errdefs.NotFound, match="container missing: not found"):
                await stub.State(shim_pb2.StateRequest(id="missing"))
            with pytest.raises(errdefs.NotImplemented, match="method Create"):
                await stub.Create(shim_pb2.CreateTaskRequest(id="c1"))
        assert await server.shutdown(timeout=5)
        assert not path.exists()  # the socket file is cleaned up

    run(main())


def test_concurrent_calls_multiplexed(sock_dir: Path) -> None:
    path = sock_dir / "s"

    async def main() -> None:
        server = await start_task_server(path, FakeTask())
        async with await Client.connect(str(path)) as client:
            stub = ServiceStub(client, TASK)
            results = await asyncio.gather(
                *(stub.Pids(shim_pb2.PidsRequest(id=str(i)), timeout=10) for i in range(200))
            )
            assert [r.processes[0].pid for r in results] == list(range(200))
        # Several clients at once, too.
        clients = [await Client.connect(str(path)) for _ in range(5)]
        results = await asyncio.gather(
            *(
                c.call(TASK_NAME, "Pids", shim_pb2.PidsRequest(id=str(i)), shim_pb2.PidsResponse)
                for i, c in enumerate(clients * 4)
            )
        )
        assert [r.processes[0].pid for r in results] == list(range(20))
        for c in clients:
            await c.close()
        await server.close()

    run(main())


def test_large_messages_near_the_limit(sock_dir: Path) -> None:
    path = sock_dir / "s"

    async def main() -> None:
        server = Server()

        async def echo(ctx: CallContext, req: shim_pb2.StateRequest) -> shim_pb2.StateResponse:
            return shim_pb2.StateResponse(id=req.id)

        server.register_service(TASK, {"State": echo})
        await server.start(str(path))
        async with await Client.connect(str(path)) as client:
            big = "x" * (p.MESSAGE_LENGTH_MAX - 200)
            resp = await client.call(
                TASK_NAME, "State", shim_pb2.StateRequest(id=big), shim_pb2.StateResponse
            )
            assert resp.id == big
        await server.close()

    run(main())


def test_oversize_frame_from_peer_is_skipped_and_answered(sock_dir: Path) -> None:
    path = sock_dir / "s"

    async def main() -> None:
        server = await start_task_server(path, FakeTask())
        reader, writer = await asyncio.open_unix_connection(str(path))
        length = p.MESSAGE_LENGTH_MAX + 100
        writer.write(struct.pack(">IIBB", length, 1, p.MessageType.REQUEST, 0))
        writer.write(b"\0" * length)
        state = shim_pb2.StateRequest(id="after").SerializeToString()
        writer.write(
            p.encode_frame(
                3, p.MessageType.REQUEST, p.encode_request(p.Request(TASK_NAME, "State", state))
            )
        )
        await writer.drain()
        answers = {}
        for _ in range(2):
            n, sid, _t, _f = struct.unpack(">IIBB", await reader.readexactly(10))
            answers[sid] = p.decode_response(await reader.readexactly(n))
        assert answers[1].code == p.CODE_RESOURCE_EXHAUSTED
        assert answers[1].message == (
            f"message length {length} exceed maximum message size of {p.MESSAGE_LENGTH_MAX}"
        )
        assert shim_pb2.StateResponse.FromString(answers[3].payload).id == "after"
        writer.close()
        await server.close()

    run(main())


def test_deadline_exceeded(sock_dir: Path) -> None:
    path = sock_dir / "s"

    async def main() -> None:
        impl = FakeTask()
        server = await start_task_server(path, impl)
        async with await Client.connect(str(path)) as client:
            with pytest.raises(errdefs.DeadlineExceeded):
                await client.call(
                    TASK_NAME,
                    "Wait",
                    shim_pb2.WaitRequest(id="c1"),
                    shim_pb2.WaitResponse,
                    timeout=0.2,
                )
            # The server's own deadline cancelled the handler.
            await asyncio.wait_for(impl.cancelled.wait(), 5)
            assert not client.closed
        await server.close()

    run(main())


def test_shutdown_lets_in_flight_call_finish(sock_dir: Path) -> None:
    path = sock_dir / "s"

    async def main() -> None:
        impl = FakeTask()
        server = await start_task_server(path, impl)
        busy = await Client.connect(str(path))
        idle = await Client.connect(str(path))
        call = asyncio.create_task(
            busy.call(TASK_NAME, "Wait", shim_pb2.WaitRequest(id="c1"), shim_pb2.WaitResponse)
        )
        await impl.started.wait()
        shutdown = asyncio.create_task(server.shutdown(timeout=10))
        await asyncio.sleep(0.1)
        # Not accepting any more, and idle connections are closed at once.
        with pytest.raises(errdefs.Unavailable):
            await Client.connect(str(path))
        await asyncio.wait_for(idle.wait_closed(), 5)
        assert not shutdown.done()
        impl.release.set()
        assert (await call).exit_status == 7
        assert await shutdown is True
        await asyncio.wait_for(busy.wait_closed(), 5)
        assert server.active_connections == 0

    run(main())


def test_shutdown_timeout_cuts_off_stuck_calls(sock_dir: Path) -> None:
    path = sock_dir / "s"

    async def main() -> None:
        impl = FakeTask()
        server = await start_task_server(path, impl)
        client = await Client.connect(str(path))
        call = asyncio.create_task(
            client.call(TASK_NAME, "Wait", shim_pb2.WaitRequest(id="c1"), shim_pb2.WaitResponse)
        )
        await impl.started.wait()
        assert await server.shutdown(timeout=0.2) is False
        await asyncio.wait_for(impl.cancelled.wait(), 5)
        with pytest.raises(errdefs.Unavailable, match="ttrpc: closed"):
            await call
        assert client.closed

    run(main())


def test_client_reconnects_after_server_restart(sock_dir: Path) -> None:
    path = sock_dir / "s"

    async def main() -> None:
        impl = FakeTask()
        server = await start_task_server(path, impl)
        closed_calls: list[str] = []
        client = await Client.connect(str(path), on_close=lambda: closed_calls.append("x"))
        pending = asyncio.create_task(
            client.call(TASK_NAME, "Wait", shim_pb2.WaitRequest(id="c1"), shim_pb2.WaitResponse)
        )
        await impl.started.wait()
        await server.close()  # the peer disappears under a pending call
        with pytest.raises(errdefs.Unavailable):
            await pending
        await client.wait_closed()
        assert closed_calls == ["x"]
        with pytest.raises(errdefs.Unavailable):
            await client.call(
                TASK_NAME, "State", shim_pb2.StateRequest(id="c1"), shim_pb2.StateResponse
            )
        with pytest.raises(errdefs.Unavailable):
            await Client.connect(str(path))

        server = await start_task_server(path, FakeTask())
        client = await Client.connect(str(path))
        resp = await client.call(
            TASK_NAME, "State", shim_pb2.StateRequest(id="c2"), shim_pb2.StateResponse
        )
        assert resp.id == "c2"
        await client.close()
        await server.shutdown(timeout=5)

    run(main())


def test_listen_on_inherited_socket(sock_dir: Path) -> None:
    # The way a shim gets its socket: bound and listening before the server starts.
    path = sock_dir / "s"

    async def main() -> None:
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(str(path))
        lsock.listen()
        server = Server()
        server.register_service(TASK, FakeTask())
        await server.start(sock=lsock)
        async with await Client.connect(str(path)) as client:
            resp = await ServiceStub(client, TASK).State(shim_pb2.StateRequest(id="inh"))
            assert resp.id == "inh"
        await server.close()

    run(main())


# -- interoperability with Go's ttrpc --------------------------------------------

GO_SHIM = shutil.which("containerd-shim-runc-v2")


@contextlib.contextmanager
def go_shim(d: Path) -> Iterator[Path]:
    """Run containerd's runc shim serving on a socket of our choosing."""
    assert GO_SHIM is not None
    os.mkfifo(d / "log")  # the shim dup2s its log fifo over stderr
    log_fd = os.open(d / "log", os.O_RDONLY | os.O_NONBLOCK)
    sock = d / "shim.sock"
    proc = subprocess.Popen(
        [
            GO_SHIM,
            "-namespace",
            "berthtest",
            "-id",
            "c1",
            "-socket",
            str(sock),
            "-address",
            str(d / "containerd.sock"),
        ],
        cwd=d,
        env={**os.environ, "TTRPC_ADDRESS": str(d / "containerd.sock.ttrpc")},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield sock
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        os.close(log_fd)


@pytest.mark.skipif(GO_SHIM is None, reason="containerd-shim-runc-v2 not installed")
def test_interop_with_go_shim(sock_dir: Path) -> None:
    async def main(sock: Path) -> None:
        for _ in range(200):
            if sock.exists():
                break
            await asyncio.sleep(0.025)
        async with await Client.connect(str(sock)) as client:
            stub = ServiceStub(client, TASK)
            md = {"containerd-namespace-ttrpc": "berthtest"}
            connected = await stub.Connect(shim_pb2.ConnectRequest(id="c1"), metadata=md, timeout=5)
            assert connected.shim_pid > 0
            # Go's errdefs -> status -> our errdefs.
            with pytest.raises(errdefs.NotFound, match="not found"):
                await stub.State(shim_pb2.StateRequest(id="c1"), timeout=5)
            # Go's own "unknown service/method" statuses read the same as ours.
            with pytest.raises(errdefs.NotImplemented, match=r"^service no\.Such$"):
                await client.call("no.Such", "X", empty_pb2.Empty(), empty_pb2.Empty)
            with pytest.raises(errdefs.NotImplemented, match=r"^method X$"):
                await client.call(TASK_NAME, "X", empty_pb2.Empty(), empty_pb2.Empty)
            # Concurrency against Go's multiplexer.
            results = await asyncio.gather(
                *(stub.Connect(shim_pb2.ConnectRequest(id="c1"), timeout=5) for _ in range(20))
            )
            assert {r.shim_pid for r in results} == {connected.shim_pid}
            await stub.Shutdown(shim_pb2.ShutdownRequest(id="c1", now=True), timeout=5)

    with go_shim(sock_dir) as sock:
        run(main(sock))
