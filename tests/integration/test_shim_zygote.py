"""Shims forked by the per-daemon zygote behave like spawned ones: containers
start, exec and exit; they outlive a killed zygote; one zygote serves many
starts and goes away when idle, leaving nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2

from berth import errdefs
from berth.api.runtime.v2.task import shim_pb2 as api
from berth.api.types.task import task_pb2
from berth.shim import zygote
from berth.shim.main import _listener_pid
from tests.support.oci_bundle import (
    EventSink,
    ShimProcess,
    cleanup_base,
    make_bundle,
    process_spec,
    short_dir,
    spec,
)
from tests.support.procs import alive, ppid, processes_mentioning, wait_until

pytestmark = pytest.mark.integration

LINGER = "1"


def _cmdline(pid: int) -> list[bytes]:
    return [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


def _read_until(fd: int, want: bytes, timeout: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while want not in data and time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        if not chunk:
            time.sleep(0.01)
        data += chunk
    return data


class Env:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.sink = EventSink(str(base / "d.sock") + ".ttrpc")
        self.shims: list[ShimProcess] = []
        self.zygote_socket = zygote.zygote_path(str(base / "d.sock"), str(base))

    async def start(self, id: str, args: list[str], **kw: Any) -> tuple[Any, int]:
        """Start a shim and create the container; returns (task, shim pid)."""
        b = make_bundle(self.base, id, spec(args))
        shim = ShimProcess(base=self.base, bundle=b.path, id=id)
        await asyncio.to_thread(shim.start)
        self.shims.append(shim)
        task = await shim.connect()
        await task.Create(api.CreateTaskRequest(id=id, bundle=str(b.path), rootfs=b.rootfs, **kw))
        shim_pid = (await task.Connect(api.ConnectRequest(id=id))).shim_pid
        return task, shim_pid

    async def finish(self, task: Any, id: str) -> None:
        with_exit = await task.State(api.StateRequest(id=id))
        if with_exit.status == task_pb2.RUNNING:
            # A short-lived process may exit between State and Kill.
            with contextlib.suppress(errdefs.NotFound):
                await task.Kill(api.KillRequest(id=id, signal=signal.SIGKILL))
        await asyncio.wait_for(task.Wait(api.WaitRequest(id=id)), 15)
        await task.Delete(api.DeleteRequest(id=id))
        await task.Shutdown(api.ShutdownRequest(id=id))

    async def close(self) -> None:
        for shim in self.shims:
            await shim.close()
        await self.sink.stop()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    # The shim reads these from the environment its caller gives it.
    monkeypatch.setenv(zygote.DISABLE_ENV, "1")
    monkeypatch.setenv(zygote.LINGER_ENV, LINGER)
    base = short_dir()
    e = Env(base)
    try:
        yield e
    finally:
        # Everything under test exits by itself; wait for it, then clean.
        wait_until(lambda: not processes_mentioning(str(base)))
        cleanup_base(base)


def run(e: Env, body: Any) -> None:
    async def main() -> None:
        await e.sink.start()
        try:
            await asyncio.wait_for(body(), 90)
        finally:
            await e.close()

    asyncio.run(main())


def test_forked_shim_runs_execs_and_reports_exits(env: Env) -> None:
    async def body() -> None:
        b_out = env.base / "out"
        os.mkfifo(b_out)
        reader = os.open(b_out, os.O_RDONLY | os.O_NONBLOCK)
        task, shim_pid = await env.start(
            "z1", ["sh", "-c", "echo started; exec sleep 1000"], stdout=str(b_out)
        )
        zpid = ppid(shim_pid)
        assert _cmdline(zpid)[-1] == b"zygote"
        # The forked shim shows its own flags, as a spawned one does.
        title = _cmdline(shim_pid)
        assert title[0].startswith(b"/")
        assert b"containerd-shim-berth-v2" in b" ".join(title)
        assert title[title.index(b"-id") + 1] == b"z1"
        assert title[title.index(b"-namespace") + 1] == b"default"
        # Its own session, and a subreaper: runc's children are its own.
        assert os.getsid(shim_pid) == shim_pid

        started = await task.Start(api.StartRequest(id="z1"))
        assert ppid(started.pid) == shim_pid
        assert b"started" in _read_until(reader, b"started")

        eout = env.base / "eout"
        os.mkfifo(eout)
        ereader = os.open(eout, os.O_RDONLY | os.O_NONBLOCK)
        pspec = any_pb2.Any(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
            value=json.dumps(process_spec(["sh", "-c", "echo from-exec; exit 7"])).encode(),
        )
        await task.Exec(api.ExecProcessRequest(id="z1", exec_id="e1", stdout=str(eout), spec=pspec))
        await task.Start(api.StartRequest(id="z1", exec_id="e1"))
        done = await asyncio.wait_for(task.Wait(api.WaitRequest(id="z1", exec_id="e1")), 15)
        assert done.exit_status == 7
        assert b"from-exec" in _read_until(ereader, b"from-exec")
        await task.Delete(api.DeleteRequest(id="z1", exec_id="e1"))

        await task.Kill(api.KillRequest(id="z1", signal=signal.SIGKILL))
        assert (await asyncio.wait_for(task.Wait(api.WaitRequest(id="z1")), 15)).exit_status == 137
        await task.Delete(api.DeleteRequest(id="z1"))
        await task.Shutdown(api.ShutdownRequest(id="z1"))
        await env.sink.wait_for("/tasks/delete")
        assert env.sink.topics("z1") == [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/exit",
            "/tasks/delete",
        ]
        assert wait_until(lambda: not alive(shim_pid))
        os.close(reader)
        os.close(ereader)

    run(env, body)


def test_one_zygote_serves_every_start_then_leaves_when_idle(env: Env) -> None:
    async def body() -> None:
        started = [await env.start(f"r{n}", ["sleep", "1000"]) for n in range(3)]
        zygotes = {ppid(pid) for _, pid in started}
        assert len(zygotes) == 1
        (zpid,) = zygotes
        assert os.path.exists(env.zygote_socket)
        for n, (task, _) in enumerate(started):
            await task.Start(api.StartRequest(id=f"r{n}"))
        # While it has live shims, the zygote stays, whatever the linger.
        await asyncio.sleep(float(LINGER) * 2)
        assert alive(zpid)
        for n, (task, _) in enumerate(started):
            await env.finish(task, f"r{n}")
        # The last shim gone, it lingers, then exits and removes its socket.
        assert await asyncio.to_thread(wait_until, lambda: not alive(zpid))
        assert not os.path.exists(env.zygote_socket)
        assert not list((env.base / "s").iterdir())

    run(env, body)


def test_containers_survive_a_killed_zygote_and_a_new_one_takes_over(env: Env) -> None:
    async def body() -> None:
        task, shim_pid = await env.start("k1", ["sleep", "1000"])
        init = (await task.Start(api.StartRequest(id="k1"))).pid
        zpid = ppid(shim_pid)
        # The zygote was started on our behalf by `start`: end it by its pid.
        os.kill(zpid, signal.SIGKILL)
        assert await asyncio.to_thread(wait_until, lambda: not alive(zpid))

        state = await task.State(api.StateRequest(id="k1"))
        assert state.status == task_pb2.RUNNING and state.pid == init
        pspec = any_pb2.Any(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
            value=json.dumps(process_spec(["true"])).encode(),
        )
        await task.Exec(api.ExecProcessRequest(id="k1", exec_id="after", spec=pspec))
        await task.Start(api.StartRequest(id="k1", exec_id="after"))
        after = await asyncio.wait_for(task.Wait(api.WaitRequest(id="k1", exec_id="after")), 15)
        assert after.exit_status == 0

        # The dead zygote's socket is stale; the next start replaces it.
        task2, shim2 = await env.start("k2", ["sleep", "1000"])
        zpid2 = ppid(shim2)
        assert zpid2 != zpid and _cmdline(zpid2)[-1] == b"zygote"
        await task2.Start(api.StartRequest(id="k2"))
        await env.finish(task2, "k2")
        await env.finish(task, "k1")
        await env.sink.wait_for("/tasks/delete", 2)
        assert wait_until(lambda: not alive(shim_pid))

    run(env, body)


def _zygotes(base: Path) -> list[int]:
    """Live zygote processes of the daemon under ``base``, serving or not."""
    found = []
    for pid in processes_mentioning(str(base)):
        with contextlib.suppress(OSError):
            if b"zygote" in _cmdline(pid) and alive(pid):
                found.append(pid)
    return found


@pytest.mark.parametrize("stale", ["dead", "absent"])
def test_concurrent_starts_without_a_zygote_leave_exactly_one(
    env: Env, stale: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each start finds no zygote answering and spawns one. A zygote left
    # serving a socket another removed would stay for the whole linger
    # (with the shims it forked, longer): far beyond the wait below.
    monkeypatch.setenv(zygote.LINGER_ENV, "120")
    racers = 4
    if stale == "dead":
        # What a killed zygote leaves: a socket file nobody listens on.
        os.makedirs(os.path.dirname(env.zygote_socket), exist_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as dead:
            dead.bind(env.zygote_socket)
    shims = []
    for n in range(racers):
        bundle = env.base / "bundles" / f"race{n}"
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text("{}")
        shims.append(ShimProcess(base=env.base, bundle=bundle, id=f"race{n}"))
    env.shims += shims
    barrier = threading.Barrier(racers)

    def start(shim: ShimProcess) -> None:
        barrier.wait()
        shim.start()

    threads = [threading.Thread(target=start, args=(shim,)) for shim in shims]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(shim.address for shim in shims)
        # The zygotes that lost exit; the one left is the one the socket
        # leads to.
        assert wait_until(lambda: len(_zygotes(env.base)) == 1), _zygotes(env.base)
        (zpid,) = _zygotes(env.base)
        assert _listener_pid(env.zygote_socket) == zpid

        shim_pids: list[int] = []

        async def body() -> None:
            for shim in shims:
                task = await shim.connect()
                shim_pid = (await task.Connect(api.ConnectRequest(id=shim.id))).shim_pid
                # Forked by the one zygote: no start fell back to spawning.
                assert ppid(shim_pid) == zpid
                shim_pids.append(shim_pid)
                await task.Shutdown(api.ShutdownRequest(id=shim.id))

        run(env, body)
        assert wait_until(lambda: not any(alive(pid) for pid in shim_pids))
        assert _zygotes(env.base) == [zpid]
    finally:
        # The long linger keeps the zygote (started on our behalf): end it,
        # and any other, by pid.
        for pid in _zygotes(env.base):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not _zygotes(env.base))


def test_disabled_zygote_falls_back_to_a_spawned_shim(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(zygote.DISABLE_ENV, "0")

    async def body() -> None:
        task, shim_pid = await env.start("d1", ["true"])
        assert b"zygote" not in b" ".join(_cmdline(ppid(shim_pid)))
        assert not os.path.exists(env.zygote_socket)
        await task.Start(api.StartRequest(id="d1"))
        await env.finish(task, "d1")

    run(env, body)


def test_lifecycles_through_the_zygote_leak_nothing(env: Env) -> None:
    """The leak test's invariants, with every shim forked by one zygote."""
    cycles, parallel = 24, 4
    group = f"/berth-zleak-{os.getpid()}"
    parents: list[int] = []

    async def cycle(n: int) -> None:
        id = f"l{n}"
        b = make_bundle(env.base, id, spec(["true"], cgroups_path=f"{group}/{id}"))
        out = b.fifo("out")
        reader = os.open(out, os.O_RDONLY | os.O_NONBLOCK)
        shim = ShimProcess(base=env.base, bundle=b.path, id=id)
        await asyncio.to_thread(shim.start)
        task = await shim.connect()
        try:
            await task.Create(
                api.CreateTaskRequest(id=id, bundle=str(b.path), rootfs=b.rootfs, stdout=out)
            )
            shim_pid = (await task.Connect(api.ConnectRequest(id=id))).shim_pid
            parents.append(_zygote_parent(shim_pid))
            await task.Start(api.StartRequest(id=id))
            assert (await task.Wait(api.WaitRequest(id=id))).exit_status == 0
            await task.Delete(api.DeleteRequest(id=id))
            await task.Shutdown(api.ShutdownRequest(id=id))
        finally:
            await shim.close()
            os.close(reader)
            os.unlink(out)

    async def body() -> None:
        sem = asyncio.Semaphore(parallel)

        async def limited(n: int) -> None:
            async with sem:
                await cycle(n)

        await asyncio.gather(*(limited(n) for n in range(cycles)))
        await env.sink.wait_for("/tasks/delete", cycles, timeout=30)

    try:
        run(env, body)
        # Forked, not spawned, and all by one zygote (it never went idle).
        assert len(parents) == cycles and 0 not in parents
        assert len(set(parents)) == 1
        assert wait_until(lambda: not processes_mentioning(str(env.base)))
        base = env.base
        specials = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                mode = os.lstat(os.path.join(dirpath, name)).st_mode
                if (mode & 0o170000) in (0o010000, 0o140000):  # FIFO, socket
                    specials.append(os.path.join(dirpath, name))
        assert specials in ([], [f"{base}/d.sock.ttrpc"])
        assert not list((base / "s").iterdir())
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        assert [m for m in mounts if m.split()[4].startswith(str(base))] == []
        assert not list((base / "runc" / "default").iterdir())
        leftover = []
        for controller in os.listdir("/sys/fs/cgroup"):
            d = Path("/sys/fs/cgroup") / controller / group.strip("/")
            if d.is_dir():
                leftover += [p for p in d.iterdir() if p.is_dir()]
        assert leftover == []
    finally:
        for controller in os.listdir("/sys/fs/cgroup"):
            d = Path("/sys/fs/cgroup") / controller / group.strip("/")
            if d.is_dir():
                for child in d.iterdir():
                    if child.is_dir():
                        child.rmdir()
                d.rmdir()


def _zygote_parent(pid: int) -> int:
    try:
        parent = ppid(pid)
        return parent if b"zygote" in b" ".join(_cmdline(parent)) else 0
    except (OSError, ValueError):
        return 0
