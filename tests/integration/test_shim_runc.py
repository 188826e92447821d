"""The shim driving real runc, spoken to over ttrpc as containerd would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2

from berth import errdefs
from berth.api.cgroups.stats.v1 import metrics_pb2
from berth.api.events import task_pb2 as events
from berth.api.runtime.v2.runc.options import oci_pb2
from berth.api.runtime.v2.task import shim_pb2 as api
from berth.api.types.task import task_pb2
from tests.support.oci_bundle import (
    Bundle,
    EventSink,
    ShimProcess,
    cleanup_base,
    make_bundle,
    process_spec,
    short_dir,
    spec,
)

pytestmark = pytest.mark.integration


class Env:
    """One shim (per test) plus a fake daemon events endpoint."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.sink = EventSink(str(base / "d.sock") + ".ttrpc")
        self.shims: list[ShimProcess] = []

    def bundle(self, id: str, doc: dict[str, Any]) -> Bundle:
        return make_bundle(self.base, id, doc)

    async def shim(self, b: Bundle, id: str) -> Any:
        shim = ShimProcess(base=self.base, bundle=b.path, id=id)
        shim.start()
        self.shims.append(shim)
        return await shim.connect()

    async def create(self, id: str, doc: dict[str, Any], **kw: Any) -> tuple[Any, Bundle]:
        b = self.bundle(id, doc)
        task = await self.shim(b, id)
        await task.Create(api.CreateTaskRequest(id=id, bundle=str(b.path), rootfs=b.rootfs, **kw))
        return task, b

    async def close(self) -> None:
        """Take down whatever a test left running, then every shim, and
        check each shim process really exits."""
        for shim in self.shims:
            task = shim.task
            if task is not None:
                shim_pid = 0
                with _suppress_all():
                    shim_pid = (await task.Connect(api.ConnectRequest(id=shim.id))).shim_pid
                with _suppress_all():
                    for p in (await task.Pids(api.PidsRequest(id=shim.id))).processes:
                        os.kill(p.pid, signal.SIGKILL)
                with _suppress_all():
                    await _wait_exit(task, shim.id)
                with _suppress_all():
                    await task.Delete(api.DeleteRequest(id=shim.id))
                with _suppress_all():
                    await task.Shutdown(api.ShutdownRequest(id=shim.id))
                if shim_pid:
                    _wait_gone(shim_pid)
            await shim.close()
        await self.sink.stop()


class _suppress_all:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


async def _wait_exit(task: Any, id: str, exec_id: str = "") -> api.WaitResponse:
    return await asyncio.wait_for(task.Wait(api.WaitRequest(id=id, exec_id=exec_id)), 20)


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} still alive")


@pytest.fixture
def env_run() -> Iterator[Callable[[Callable[[Env], Awaitable[None]]], None]]:
    base = short_dir()

    def run(body: Callable[[Env], Awaitable[None]]) -> None:
        async def main() -> None:
            env = Env(base)
            await env.sink.start()
            try:
                await asyncio.wait_for(body(env), 90)
            finally:
                await env.close()

        asyncio.run(main())

    yield run
    cleanup_base(base)
    for controller in Path("/sys/fs/cgroup").iterdir():
        with contextlib.suppress(OSError):
            (controller / "berth-test").rmdir()


def _read_fifo(fd: int, until: bytes = b"", timeout: float = 10.0) -> bytes:
    """Read a non-blocking FIFO until EOF (or ``until`` appears)."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            if until and until in data:
                return data
            time.sleep(0.01)
            continue
        if not chunk:
            if data:
                return data
            time.sleep(0.01)
            continue
        data += chunk
        if until and until in data:
            return data
    return data


def test_create_start_wait_reports_exit_code_and_events_in_order(env_run: Any) -> None:
    async def body(env: Env) -> None:
        b = env.bundle("c1", spec(["sh", "-c", "echo out; echo err >&2; exit 7"]))
        task = await env.shim(b, "c1")
        out, err = b.fifo("out"), b.fifo("err")
        rout = os.open(out, os.O_RDONLY | os.O_NONBLOCK)
        rerr = os.open(err, os.O_RDONLY | os.O_NONBLOCK)
        created = await task.Create(
            api.CreateTaskRequest(
                id="c1", bundle=str(b.path), rootfs=b.rootfs, stdout=out, stderr=err
            )
        )
        assert created.pid > 0
        state = await task.State(api.StateRequest(id="c1"))
        assert state.status == task_pb2.CREATED and state.pid == created.pid
        assert state.stdout == out and state.bundle == str(b.path)
        started = await task.Start(api.StartRequest(id="c1"))
        assert started.pid == created.pid
        waited = await _wait_exit(task, "c1")
        assert waited.exit_status == 7
        assert waited.exited_at.seconds > 0
        assert _read_fifo(rout, b"out\n") == b"out\n"
        assert _read_fifo(rerr, b"err\n") == b"err\n"
        state = await task.State(api.StateRequest(id="c1"))
        assert state.status == task_pb2.STOPPED and state.exit_status == 7
        deleted = await task.Delete(api.DeleteRequest(id="c1"))
        assert deleted.exit_status == 7 and deleted.pid == created.pid
        await env.sink.wait_for("/tasks/delete")
        assert env.sink.topics() == [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete",
        ]
        exit_ev = events.TaskExit.FromString(env.sink.envelopes[2].event.value)
        assert env.sink.envelopes[2].event.type_url == "containerd.events.TaskExit"
        assert env.sink.envelopes[2].namespace == "default"
        assert (exit_ev.container_id, exit_ev.id, exit_ev.exit_status) == ("c1", "c1", 7)
        # The rootfs overlay is gone once the task is deleted.
        assert str(b.path / "rootfs") not in Path("/proc/self/mounts").read_text()
        with pytest.raises(errdefs.NotFound, match="container not created: not found"):
            await task.State(api.StateRequest(id="c1"))
        os.close(rout)
        os.close(rerr)

    env_run(body)


def test_exec_with_stdin_and_stdout_fifos(env_run: Any) -> None:
    async def body(env: Env) -> None:
        task, b = await env.create("c2", spec(["sleep", "1000"]))
        await task.Start(api.StartRequest(id="c2"))
        stdin, stdout = b.fifo("in"), b.fifo("eout")
        rout = os.open(stdout, os.O_RDONLY | os.O_NONBLOCK)
        pspec = any_pb2.Any(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
            value=json.dumps(process_spec(["sh", "-c", "tr a-z A-Z; echo done"])).encode(),
        )
        await task.Exec(
            api.ExecProcessRequest(id="c2", exec_id="e1", stdin=stdin, stdout=stdout, spec=pspec)
        )
        with pytest.raises(errdefs.AlreadyExists, match="id e1: already exists"):
            await task.Exec(api.ExecProcessRequest(id="c2", exec_id="e1", spec=pspec))
        state = await task.State(api.StateRequest(id="c2", exec_id="e1"))
        assert state.status == task_pb2.CREATED and state.pid == 0
        started = await task.Start(api.StartRequest(id="c2", exec_id="e1"))
        pids = await task.Pids(api.PidsRequest(id="c2"))
        infos = {p.pid: p.info for p in pids.processes}
        assert started.pid in infos
        assert infos[started.pid].type_url == "containerd.runc.v1.ProcessDetails"
        assert oci_pb2.ProcessDetails.FromString(infos[started.pid].value).exec_id == "e1"
        wfd = os.open(stdin, os.O_WRONLY)
        os.write(wfd, b"hello shim\n")
        os.close(wfd)
        await task.CloseIO(api.CloseIORequest(id="c2", exec_id="e1", stdin=True))
        waited = await _wait_exit(task, "c2", "e1")
        assert waited.exit_status == 0
        assert _read_fifo(rout, b"done\n") == b"HELLO SHIM\ndone\n"
        os.close(rout)
        deleted = await task.Delete(api.DeleteRequest(id="c2", exec_id="e1"))
        assert deleted.pid == started.pid
        with pytest.raises(errdefs.NotFound, match="process does not exist e1"):
            await task.State(api.StateRequest(id="c2", exec_id="e1"))
        with pytest.raises(errdefs.NotFound, match="process does not exist nope"):
            await task.Wait(api.WaitRequest(id="c2", exec_id="nope"))
        await env.sink.wait_for("/tasks/exit")
        topics = env.sink.topics()
        assert topics.index("/tasks/exec-added") < topics.index("/tasks/exec-started")
        assert topics.index("/tasks/exec-started") < topics.index("/tasks/exit")

    env_run(body)


def test_terminal_resize_is_seen_inside(env_run: Any) -> None:
    async def body(env: Env) -> None:
        b = env.bundle("c3", spec(["sh", "-c", "stty size; sleep 1000"], terminal=True))
        task = await env.shim(b, "c3")
        out = b.fifo("tty")
        rout = os.open(out, os.O_RDONLY | os.O_NONBLOCK)
        await task.Create(
            api.CreateTaskRequest(
                id="c3", bundle=str(b.path), rootfs=b.rootfs, stdout=out, terminal=True
            )
        )
        await task.ResizePty(api.ResizePtyRequest(id="c3", width=100, height=40))
        await task.Start(api.StartRequest(id="c3"))
        assert b"40 100" in _read_fifo(rout, b"40 100")
        # An exec'd terminal gets its own pty, resized independently.
        pspec = any_pb2.Any(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
            value=json.dumps(
                process_spec(["sh", "-c", "sleep 0.5; stty size"], terminal=True)
            ).encode(),
        )
        eout = b.fifo("etty")
        reout = os.open(eout, os.O_RDONLY | os.O_NONBLOCK)
        await task.Exec(
            api.ExecProcessRequest(id="c3", exec_id="t1", stdout=eout, terminal=True, spec=pspec)
        )
        await task.Start(api.StartRequest(id="c3", exec_id="t1"))
        await task.ResizePty(api.ResizePtyRequest(id="c3", exec_id="t1", width=132, height=50))
        assert (await _wait_exit(task, "c3", "t1")).exit_status == 0
        assert b"50 132" in _read_fifo(reout, b"50 132")
        with pytest.raises(errdefs.FailedPrecondition, match="cannot resize a stopped container"):
            await task.ResizePty(api.ResizePtyRequest(id="c3", exec_id="t1", width=1, height=1))
        os.close(rout)
        os.close(reout)

    env_run(body)


def test_pause_resume_kill_delete_states_and_errors(env_run: Any) -> None:
    async def body(env: Env) -> None:
        task, _ = await env.create("c4", spec(["sleep", "1000"]))
        with pytest.raises(errdefs.FailedPrecondition, match="cannot pause task in created state"):
            await task.Pause(api.PauseRequest(id="c4"))
        with pytest.raises(errdefs.FailedPrecondition, match="cannot exec in a created state"):
            await task.Exec(api.ExecProcessRequest(id="c4", exec_id="x"))
        await task.Start(api.StartRequest(id="c4"))
        with pytest.raises(errdefs.FailedPrecondition, match="cannot start a running process"):
            await task.Start(api.StartRequest(id="c4"))
        await task.Pause(api.PauseRequest(id="c4"))
        assert (await task.State(api.StateRequest(id="c4"))).status == task_pb2.PAUSED
        with pytest.raises(errdefs.FailedPrecondition, match="cannot delete a paused process"):
            await task.Delete(api.DeleteRequest(id="c4"))
        await task.Resume(api.ResumeRequest(id="c4"))
        assert (await task.State(api.StateRequest(id="c4"))).status == task_pb2.RUNNING
        with pytest.raises(errdefs.FailedPrecondition, match="cannot delete a running process"):
            await task.Delete(api.DeleteRequest(id="c4"))
        # sleep is the pid namespace's init: only SIGKILL can end it.
        await task.Kill(api.KillRequest(id="c4", signal=signal.SIGKILL))
        assert (await _wait_exit(task, "c4")).exit_status == 128 + signal.SIGKILL
        with pytest.raises(errdefs.NotFound, match="process already finished"):
            await task.Kill(api.KillRequest(id="c4", signal=signal.SIGKILL))
        with pytest.raises(errdefs.FailedPrecondition, match="cannot resume a stopped container"):
            await task.Resume(api.ResumeRequest(id="c4"))
        await task.Delete(api.DeleteRequest(id="c4"))
        await env.sink.wait_for("/tasks/delete")
        topics = env.sink.topics()
        assert topics.index("/tasks/paused") < topics.index("/tasks/resumed")

    env_run(body)


def test_create_failure_reports_runc_error_and_leaves_nothing_mounted(env_run: Any) -> None:
    async def body(env: Env) -> None:
        b = env.bundle("c5", spec(["/no/such/binary"]))
        task = await env.shim(b, "c5")
        with pytest.raises(errdefs.BerthError) as info:
            await task.Create(api.CreateTaskRequest(id="c5", bundle=str(b.path), rootfs=b.rootfs))
        # containerd's wording, with runc's own error after it.
        assert info.value.code == errdefs.CODE_UNKNOWN
        assert str(info.value).startswith("OCI runtime create failed: ")
        assert 'exec: "/no/such/binary"' in str(info.value)
        assert str(b.path / "rootfs") not in Path("/proc/self/mounts").read_text()
        with pytest.raises(errdefs.NotFound):
            await task.State(api.StateRequest(id="c5"))

    env_run(body)


def test_oom_kill_publishes_task_oom_and_stats_decode(env_run: Any) -> None:
    async def body(env: Env) -> None:
        cg = f"/berth-test/oom-{os.getpid()}"
        task, _ = await env.create(
            "c6",
            spec(["sh", "-c", "sleep 0.3; tail /dev/zero"], cgroups_path=cg, memory_limit=16 << 20),
        )
        await task.Start(api.StartRequest(id="c6"))
        stats = await task.Stats(api.StatsRequest(id="c6"))
        assert stats.stats.type_url == "io.containerd.cgroups.v1.Metrics"
        m = metrics_pb2.Metrics.FromString(stats.stats.value)
        assert m.memory.usage.limit == 16 << 20
        assert m.pids.current >= 1
        assert m.cpu.usage.total > 0
        waited = await _wait_exit(task, "c6")
        assert waited.exit_status == 128 + signal.SIGKILL
        await env.sink.wait_for("/tasks/oom")
        oom = next(e for e in env.sink.envelopes if e.topic == "/tasks/oom")
        assert events.TaskOOM.FromString(oom.event.value).container_id == "c6"
        await task.Delete(api.DeleteRequest(id="c6"))
        assert not Path(f"/sys/fs/cgroup/memory{cg}").exists()

    env_run(body)


def test_update_changes_the_cgroup(env_run: Any) -> None:
    async def body(env: Env) -> None:
        cg = f"/berth-test/upd-{os.getpid()}"
        task, _ = await env.create("c7", spec(["sleep", "1000"], cgroups_path=cg))
        await task.Start(api.StartRequest(id="c7"))
        resources = {"memory": {"limit": 64 << 20}}
        await task.Update(
            api.UpdateTaskRequest(
                id="c7",
                resources=any_pb2.Any(
                    type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
                    value=json.dumps(resources).encode(),
                ),
            )
        )
        limit = Path(f"/sys/fs/cgroup/memory{cg}/memory.limit_in_bytes").read_text()
        assert int(limit) == 64 << 20
        with pytest.raises(errdefs.InvalidArgument, match="invalid linux resources"):
            await task.Update(
                api.UpdateTaskRequest(id="c7", resources=any_pb2.Any(value=b"{not json"))
            )

    env_run(body)


def test_logging_uris_file_and_binary(env_run: Any) -> None:
    async def body(env: Env) -> None:
        log_path = env.base / "logs" / "c8.log"
        task, _ = await env.create(
            "c8", spec(["sh", "-c", "echo to-file"]), stdout=f"file://{log_path}"
        )
        await task.Start(api.StartRequest(id="c8"))
        await _wait_exit(task, "c8")
        assert log_path.read_text() == "to-file\n"
        # binary://: the logger reads fds 3 and 4 and signals readiness on fd 5.
        logger = env.base / "logger.sh"
        sink = env.base / "binary.log"
        logger.write_text(
            f'#!/bin/sh\necho "$CONTAINER_NAMESPACE/$CONTAINER_ID $1" > {sink}\n'
            f"exec 5>&-\ncat <&3 >> {sink}\n"
        )
        logger.chmod(0o755)
        task2, _ = await env.create(
            "c9", spec(["sh", "-c", "echo to-binary"]), stdout=f"binary://{logger}?tag=x"
        )
        await task2.Start(api.StartRequest(id="c9"))
        await _wait_exit(task2, "c9")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "to-binary" not in sink.read_text():
            await asyncio.sleep(0.02)
        assert sink.read_text() == "default/c9 tag\nto-binary\n"

    env_run(body)


def test_shim_survives_its_caller_and_serves_reconnects(env_run: Any) -> None:
    async def body(env: Env) -> None:
        b = env.bundle("c10", spec(["sleep", "1000"]))
        shim = ShimProcess(base=env.base, bundle=b.path, id="c10")
        env.shims.append(shim)
        # The caller is a shell killed right after `start` returns.
        caller = subprocess.Popen(
            ["sh", "-c", f"{' '.join(shim.argv('start'))} > {env.base}/addr; sleep 1000"],
            cwd=b.path,
            env=dict(os.environ, TTRPC_ADDRESS=shim.daemon_address + ".ttrpc"),
        )
        addr_file = env.base / "addr"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (addr_file.exists() and addr_file.read_text()):
            await asyncio.sleep(0.02)
        caller.kill()
        caller.wait()
        shim.address = addr_file.read_text()
        assert (b.path / "address").read_text() == shim.address
        task = await shim.connect()
        conn = await task.Connect(api.ConnectRequest(id="c10"))
        shim_pid = conn.shim_pid
        assert os.getsid(shim_pid) == shim_pid  # its own session
        await task.Create(api.CreateTaskRequest(id="c10", bundle=str(b.path), rootfs=b.rootfs))
        await task.Start(api.StartRequest(id="c10"))
        # The caller drops its connection mid-Wait and reconnects.
        waiter = asyncio.ensure_future(task.Wait(api.WaitRequest(id="c10")))
        await asyncio.sleep(0.1)
        await shim.close()
        with pytest.raises(errdefs.Unavailable):
            await waiter
        task = await shim.connect()
        assert (await task.Connect(api.ConnectRequest(id="c10"))).task_pid > 0
        assert (await task.State(api.StateRequest(id="c10"))).status == task_pb2.RUNNING
        waiter = asyncio.ensure_future(task.Wait(api.WaitRequest(id="c10")))
        await task.Kill(api.KillRequest(id="c10", signal=signal.SIGKILL))
        assert (await asyncio.wait_for(waiter, 10)).exit_status == 137

    env_run(body)


def test_delete_command_cleans_up_after_a_killed_shim(env_run: Any) -> None:
    async def body(env: Env) -> None:
        task, b = await env.create("c11", spec(["sleep", "1000"]))
        started = await task.Start(api.StartRequest(id="c11"))
        shim = env.shims[-1]
        shim_pid = (await task.Connect(api.ConnectRequest(id="c11"))).shim_pid
        os.kill(shim_pid, signal.SIGKILL)
        _wait_gone(shim_pid)
        await shim.close()
        shim.task = None
        socket_path = shim.address.removeprefix("unix://")
        assert os.path.exists(socket_path)
        resp = shim.delete_command()
        assert resp.exit_status == 128 + signal.SIGKILL
        assert resp.pid == started.pid
        assert resp.exited_at.seconds > 0
        _wait_gone(started.pid)
        assert str(b.path / "rootfs") not in Path("/proc/self/mounts").read_text()
        assert not os.path.exists(socket_path)
        runc_root = env.base / "runc" / "default" / "c11"
        assert not runc_root.exists()

    env_run(body)


def test_shutdown_with_live_containers_is_ignored(env_run: Any) -> None:
    async def body(env: Env) -> None:
        task, _ = await env.create("c12", spec(["sleep", "1000"]))
        await task.Shutdown(api.ShutdownRequest(id="c12"))
        assert (await task.State(api.StateRequest(id="c12"))).status == task_pb2.CREATED
        with pytest.raises(errdefs.AlreadyExists):
            b = env.bundle("c12b", spec(["true"]))
            await task.Create(api.CreateTaskRequest(id="c12", bundle=str(b.path)))
        with pytest.raises(errdefs.InvalidArgument, match="bundle must be an absolute path"):
            await task.Create(api.CreateTaskRequest(id="zz", bundle="relative"))
        with pytest.raises(errdefs.InvalidArgument, match="unsupported runtime options type"):
            await task.Create(
                api.CreateTaskRequest(
                    id="zz", bundle="/tmp", options=any_pb2.Any(type_url="foo.Bar")
                )
            )

    env_run(body)


def test_group_annotation_shares_one_shim(env_run: Any) -> None:
    async def body(env: Env) -> None:
        group = {"io.containerd.runc.v2.group": "pod-a"}
        b1 = env.bundle("g1", spec(["sleep", "1000"], annotations=group))
        b2 = env.bundle("g2", spec(["sleep", "1000"], annotations=group))
        s1 = ShimProcess(base=env.base, bundle=b1.path, id="g1")
        s2 = ShimProcess(base=env.base, bundle=b2.path, id="g2")
        assert s1.start() == s2.start()
        assert (b2.path / "address").read_text() == s1.address
        env.shims += [s1, s2]
        t1, t2 = await s1.connect(), await s2.connect()
        for task, b, id in ((t1, b1, "g1"), (t2, b2, "g2")):
            await task.Create(api.CreateTaskRequest(id=id, bundle=str(b.path), rootfs=b.rootfs))
            await task.Start(api.StartRequest(id=id))
        c1 = await t1.Connect(api.ConnectRequest(id="g1"))
        c2 = await t2.Connect(api.ConnectRequest(id="g2"))
        assert c1.shim_pid == c2.shim_pid and c1.task_pid != c2.task_pid
        # One container going away leaves the shim serving the other.
        await t1.Kill(api.KillRequest(id="g1", signal=signal.SIGKILL))
        await _wait_exit(t1, "g1")
        await t1.Delete(api.DeleteRequest(id="g1"))
        await t1.Shutdown(api.ShutdownRequest(id="g1"))
        assert (await t2.State(api.StateRequest(id="g2"))).status == task_pb2.RUNNING
        s1.task = None

    env_run(body)
