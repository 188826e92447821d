"""The task manager against a fake shim: an in-process ttrpc Task server and a
shell-script "binary" that prints its address on ``start`` and a canned
``DeleteResponse`` on ``delete``. No runc, no containers: what is checked is
the manager's side of the contract (command lines, bundles, error handling,
dead shims, restore)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import empty_pb2

from berth import errdefs
from berth.api.events import task_pb2 as events_pb
from berth.api.runtime.v2.task import shim_pb2 as api
from berth.api.types.task import task_pb2
from berth.core import events
from berth.core.metadata.containers import AnyValue
from berth.core.mount import Mount
from berth.core.runtime import IO, CreateOpts, Status, TaskManager
from berth.core.runtime import binary as binary_mod
from berth.ttrpc import CallContext, Server
from tests.support.daemon import short_tmpdir
from tests.support.runtime import task_manager

SERVICE = api.DESCRIPTOR.services_by_name["Task"]
RUNTIME_OPTS = AnyValue("containerd.runc.v1.Options", b"\x32\x04runc")


class FakeTask:
    """Just enough of containerd.task.v2.Task for the manager."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.status = task_pb2.CREATED
        self.exit_status = 0
        self.exited = asyncio.Event()
        self.create_error: Exception | None = None

    async def Connect(self, ctx: CallContext, r: api.ConnectRequest) -> api.ConnectResponse:
        self.calls.append(("Connect", r))
        return api.ConnectResponse(shim_pid=0, task_pid=4242)

    async def Create(self, ctx: CallContext, r: api.CreateTaskRequest) -> api.CreateTaskResponse:
        self.calls.append(("Create", r))
        if self.create_error is not None:
            raise self.create_error
        return api.CreateTaskResponse(pid=4242)

    async def State(self, ctx: CallContext, r: api.StateRequest) -> api.StateResponse:
        return api.StateResponse(
            id=r.id, pid=4242, status=self.status, exit_status=self.exit_status
        )

    async def Wait(self, ctx: CallContext, r: api.WaitRequest) -> api.WaitResponse:
        await self.exited.wait()
        return api.WaitResponse(exit_status=self.exit_status)

    async def Delete(self, ctx: CallContext, r: api.DeleteRequest) -> api.DeleteResponse:
        self.calls.append(("Delete", r))
        return api.DeleteResponse(pid=4242, exit_status=self.exit_status)

    async def Shutdown(self, ctx: CallContext, r: api.ShutdownRequest) -> empty_pb2.Empty:
        self.calls.append(("Shutdown", r))
        return empty_pb2.Empty()

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []

    async def publish(self, namespace: str, topic: str, event: object) -> None:
        self.events.append((namespace, topic, event))

    def exits(self) -> list[events_pb.TaskExit]:
        return [
            e for _, t, e in self.events if isinstance(e, events_pb.TaskExit) and t == "/tasks/exit"
        ]


SCRIPT = """#!/bin/sh
printf '%s\\n' "$*" >> {log}
printf 'cwd=%s ttrpc=%s\\n' "$PWD" "$TTRPC_ADDRESS" >> {log}
for last; do :; done
case "$last" in
  start) cat > {stdin}; [ -e {fail} ] && {{ echo "shim broke"; exit 1; }}; printf 'unix://{sock}' > address; cat address; if [ -e {slow} ]; then exec sleep 30; fi ;;
  delete) cat {delete_response} ;;
esac
"""


class Env:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.sock = base / "shim.sock"
        self.log = base / "calls.log"
        self.stdin = base / "stdin.bin"
        self.fail = base / "fail-start"
        self.slow = base / "slow-start"
        self.delete_response = base / "delete.bin"
        self.delete_response.write_bytes(
            api.DeleteResponse(pid=4242, exit_status=137).SerializeToString()
        )
        self.binary = base / "containerd-shim-fake-v1"
        self.binary.write_text(
            SCRIPT.format(
                log=self.log,
                stdin=self.stdin,
                fail=self.fail,
                slow=self.slow,
                sock=self.sock,
                delete_response=self.delete_response,
            )
        )
        self.binary.chmod(0o755)
        self.fake = FakeTask()
        self.server: Server | None = None
        self.recorder = Recorder()

    async def serve(self) -> None:
        self.fake = FakeTask() if self.server is not None else self.fake
        self.server = Server()
        self.server.register_service(SERVICE, self.fake)
        await self.server.start(str(self.sock))

    def manager(self) -> TaskManager:
        return task_manager(self.base, "berthd.sock")

    def opts(self) -> CreateOpts:
        return CreateOpts(
            spec=AnyValue.spec(json.dumps({"ociVersion": "1.0.2"}).encode()),
            runtime=str(self.binary),
            rootfs=[Mount("bind", "/somewhere", ["rbind", "ro"])],
            io=IO(stdout="/tmp/out-fifo"),
            runtime_options=RUNTIME_OPTS,
        )

    def bundle(self, id: str = "t1") -> Path:
        return self.base / "state" / "ns" / id


@pytest.fixture
def env() -> Iterator[Env]:
    base = short_tmpdir("b.rt.")
    try:
        yield Env(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def with_shim(
    fn: Callable[[Env], Coroutine[Any, Any, None]],
) -> Callable[[Env], None]:
    """Run the async test body with the fake shim serving and events recorded."""

    def test(env: Env) -> None:
        async def body() -> None:
            await env.serve()
            env.recorder = Recorder()
            events.set_publisher(env.recorder)
            try:
                await asyncio.wait_for(fn(env), 30)
            finally:
                events.set_publisher(None)
                if env.server is not None:
                    await env.server.close()

        asyncio.run(body())

    # Not functools.wraps: pytest would follow __wrapped__ to the async
    # signature and look for a fixture named after its parameter.
    test.__name__ = fn.__name__
    test.__doc__ = fn.__doc__
    return test


@with_shim
async def test_create_runs_start_with_containerd_flags_and_creates_the_task(served: Env) -> None:
    m = served.manager()
    task, pid = await m.create("ns", "t1", served.opts())
    assert pid == 4242
    assert m.get("ns", "t1") is task and [t.id for t in m.list("ns")] == ["t1"]

    argv, where = served.log.read_text().splitlines()[:2]
    assert argv == (
        f"-namespace ns -address {served.base}/berthd.sock -publish-binary /usr/bin/true"
        " -id t1 start"
    )
    assert where == f"cwd={served.bundle()} ttrpc={served.base}/berthd.sock.ttrpc"
    # Runtime options reach the start command as a serialized Any on stdin.
    assert b"containerd.runc.v1.Options" in served.stdin.read_bytes()

    bundle = served.bundle()
    assert json.loads((bundle / "config.json").read_text()) == {"ociVersion": "1.0.2"}
    assert (bundle / "rootfs").is_dir()
    assert os.readlink(bundle / "work") == str(served.base / "root" / "ns" / "t1")
    assert (bundle / "shim-binary-path").read_text() == str(served.binary)
    assert stat.S_ISFIFO(os.stat(bundle / "log").st_mode)

    create = dict(served.fake.calls)["Create"]
    assert create.bundle == str(bundle) and create.stdout == "/tmp/out-fifo"
    assert [(r.type, r.source, list(r.options)) for r in create.rootfs] == [
        ("bind", "/somewhere", ["rbind", "ro"])
    ]
    assert create.options.type_url == "containerd.runc.v1.Options"

    with pytest.raises(errdefs.AlreadyExists, match="task t1: already exists"):
        await m.create("ns", "t1", served.opts())
    await m.close()


@with_shim
async def test_delete_asks_the_shim_then_removes_bundle_and_work_dir(served: Env) -> None:
    m = served.manager()
    await m.create("ns", "t1", served.opts())
    served.fake.exit_status = 3
    exit = await m.delete("ns", "t1")
    assert (exit.pid, exit.status) == (4242, 3)
    names = [n for n in served.fake.names() if n != "Connect"]
    assert names[-2:] == ["Delete", "Shutdown"]
    assert not served.bundle().exists()
    assert not (served.base / "root" / "ns" / "t1").exists()
    with pytest.raises(errdefs.NotFound, match="task t1 not found"):
        m.get("ns", "t1")
    # A deliberate close is not a dead shim: no delete command ran.
    assert "delete" not in served.log.read_text()
    await m.close()


@with_shim
async def test_failed_shim_create_is_undone(served: Env) -> None:
    served.fake.create_error = errdefs.InvalidArgument("bad spec")
    m = served.manager()
    with pytest.raises(errdefs.InvalidArgument, match="failed to create shim task: bad spec"):
        await m.create("ns", "t1", served.opts())
    assert not served.bundle().exists()
    assert m.list("ns") == []
    await m.close()


@with_shim
async def test_failed_start_reports_shim_output_and_leaves_nothing(served: Env) -> None:
    served.fail.touch()
    m = served.manager()
    with pytest.raises(errdefs.BerthError, match="shim broke: exit status 1"):
        await m.create("ns", "t1", served.opts())
    assert not served.bundle().exists()
    assert not (served.base / "root" / "ns" / "t1").exists()
    await m.close()


@with_shim
async def test_a_shim_left_serving_by_a_start_that_timed_out_is_shut_down(
    served: Env,
) -> None:
    """The shim is up (it wrote its address) but ``start`` never finished:
    the undo must still tell that shim to go, or it would serve nothing for ever."""
    served.slow.touch()
    m = served.manager()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(binary_mod, "START_TIMEOUT", 0.5)
        with pytest.raises(errdefs.DeadlineExceeded, match="did not start"):
            await m.create("ns", "t1", served.opts())
    assert "Shutdown" in served.fake.names()
    assert "Create" not in served.fake.names()
    assert not served.bundle().exists()
    assert m.list("ns") == []
    await m.close()


@with_shim
async def test_missing_runtime_binary_fails_before_any_bundle(served: Env) -> None:
    m = served.manager()
    opts = CreateOpts(spec=served.opts().spec, runtime="io.containerd.nosuch.v9")
    with pytest.raises(errdefs.BerthError) as err:
        await m.create("ns", "t1", opts)
    assert err.value.code == errdefs.CODE_UNKNOWN
    assert 'binary not installed "containerd-shim-nosuch-v9"' in str(err.value)
    assert str(err.value).startswith("failed to start shim: failed to resolve runtime path:")
    assert not served.bundle().exists()


@with_shim
async def test_dead_shim_is_cleaned_up_and_reported_stopped(served: Env) -> None:
    m = served.manager()
    task, _ = await m.create("ns", "t1", served.opts())
    waiter = asyncio.create_task(task.wait())
    await asyncio.sleep(0.05)
    assert served.server is not None
    await served.server.close()  # the shim "dies"

    exit = await asyncio.wait_for(waiter, 10)
    assert exit.status == 137
    assert "-id t1 -bundle " in served.log.read_text()  # the delete command ran
    assert not served.bundle().exists()
    state = await task.state()
    assert (state.status, state.exit_status) == (Status.STOPPED, 137)
    topics = [(ns, topic) for ns, topic, _ in served.recorder.events]
    assert topics == [("ns", "/tasks/exit"), ("ns", "/tasks/delete")]
    ev = served.recorder.events[0][2]
    assert isinstance(ev, events_pb.TaskExit)
    assert (ev.container_id, ev.id, ev.pid, ev.exit_status) == ("t1", "t1", 4242, 137)
    with pytest.raises(errdefs.NotFound):
        await task.kill(9)

    gone = await m.delete("ns", "t1")
    assert gone.status == 137 and m.list("ns") == []
    await m.close()


@with_shim
async def test_restore_adopts_live_shims_and_buries_dead_ones(served: Env) -> None:
    first = served.manager()
    await first.create("ns", "live", served.opts())
    await first.create("ns", "dead", served.opts())
    await first.close()  # the daemon goes away; shims stay
    # The "dead" task's shim address now leads nowhere.
    (served.bundle("dead") / "address").write_text(f"unix://{served.base}/nobody.sock")
    (served.base / "state" / "ns" / "empty").mkdir()
    (served.base / "root" / "ns" / "orphan-work").mkdir(parents=True)

    second = served.manager()
    await second.restore(lambda ns, id: None)
    assert [t.id for t in second.list("ns")] == ["dead", "live"]
    live = second.get("ns", "live")
    assert (await live.state()).status == Status.CREATED
    dead = await second.get("ns", "dead").state()
    assert (dead.status, dead.exit_status) == (Status.STOPPED, 137)
    assert not served.bundle("dead").exists()
    assert not (served.base / "state" / "ns" / "empty").exists()
    assert not (served.base / "root" / "ns" / "orphan-work").exists()
    assert (served.base / "root" / "ns" / "live").exists()
    exits = served.recorder.exits()
    assert [e.container_id for e in exits] == ["dead"]
    await second.close()


@with_shim
async def test_restore_publishes_an_unobserved_exit_of_a_foreign_shim(served: Env) -> None:
    first = served.manager()
    await first.create("ns", "t1", served.opts())
    await first.close()
    served.fake.status = task_pb2.STOPPED
    served.fake.exit_status = 5

    second = served.manager()
    await second.restore(lambda ns, id: None)
    state = await second.get("ns", "t1").state()
    assert (state.status, state.exit_status) == (Status.STOPPED, 5)
    exits = served.recorder.exits()
    assert [(e.container_id, e.exit_status) for e in exits] == [("t1", 5)]
    await second.close()

    # Once marked as seen, a later restart does not publish it again.
    third = served.manager()
    await third.restore(lambda ns, id: None)
    exits = served.recorder.exits()
    assert len(exits) == 1
    await third.close()
