"""berthd killed with SIGKILL and restarted: running tasks are adopted, not lost.

Twenty containers run, half on Berth's shim and half on Debian's Go shim.
While the daemon is down one task of each kind exits on its own (status 7)
and one shim of each kind is killed. After the restart every task is listed;
the running ones answer exec and stop normally, the ones that exited report
their real status, and the ones whose shim died report 128+SIGKILL and have
been cleaned up. Adopted tasks of both shims also stop the ordinary way: a
plain ``ctr tasks kill`` (SIGTERM, or SIGKILL for one that ignores it), then
``ctr tasks rm`` and ``ctr containers rm`` without ``--force``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from berth.api.services.tasks.v1 import tasks_pb2 as pb
from berth.api.services.tasks.v1 import tasks_pb2_grpc as pb_grpc
from berth.api.types.task import task_pb2
from tests.support.daemon import Berthd, short_tmpdir
from tests.support.imagebuilder import Image, write_oci_layout
from tests.support.procs import alive, ppid

pytestmark = pytest.mark.integration

IMAGE = "docker.io/library/berth-restart:1"
BERTH = "io.containerd.berth.v2"
RUNC = "io.containerd.runc.v2"
N = 20
MD = (("containerd-namespace", "default"),)
# PID 1 in a container only gets signals it handles: trap TERM and exit 7.
EXITS_ON_TERM = ["sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.1; done"]
# ...and this one exits as a process without a handler would elsewhere.
DIES_OF_TERM = ["sh", "-c", "trap 'exit 143' TERM; while :; do sleep 0.1; done"]


@pytest.fixture
def d() -> Iterator[Berthd]:
    base = short_tmpdir()
    daemon = Berthd(base)
    daemon.start()
    try:
        yield daemon
    finally:
        with contextlib.suppress(Exception):
            cleanup_all(daemon)
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


def cleanup_all(d: Berthd) -> None:
    for line in d.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]:
        id = line.split()[0]
        d.ctr("tasks", "rm", "--force", id, check=False)
    for id in d.ctr("containers", "ls", "-q", check=False).stdout.split():
        d.ctr("containers", "rm", id, check=False)


def task_status(d: Berthd, id: str) -> str:
    """The STATUS column of ``ctr tasks ls`` for ``id``; "" when it has no task."""
    for line in d.ctr("tasks", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == id:
            return fields[2]
    return ""


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_tasks_survive_daemon_sigkill_and_restart(d: Berthd, busybox_image: Image) -> None:
    layout = write_oci_layout(d.base / "busybox.tar", busybox_image, image_name=IMAGE)
    d.ctr("images", "import", str(layout))
    ids = [f"r{i:02d}" for i in range(N)]
    runtime = {id: BERTH if i % 2 == 0 else RUNC for i, id in enumerate(ids)}
    exits_while_down = {"r00", "r01"}
    shim_killed_while_down = {"r02", "r03"}
    # Stopped after the restart: (signal, exit status); one of each per shim.
    stopped_plainly = {
        "r04": ("SIGTERM", 143),
        "r05": ("SIGTERM", 143),
        "r06": ("SIGKILL", 137),
        "r07": ("SIGKILL", 137),
    }
    for id in ids:
        args = ["sleep", "1000"]
        if id in exits_while_down:
            args = EXITS_ON_TERM
        elif stopped_plainly.get(id, ("",))[0] == "SIGTERM":
            args = DIES_OF_TERM
        d.ctr("run", "-d", "--runtime", runtime[id], IMAGE, id, *args)

    with grpc.insecure_channel(f"unix://{d.address}") as ch:
        listed = pb_grpc.TasksStub(ch).List(pb.ListTasksRequest(), metadata=MD).tasks
    pids = {t.id: t.pid for t in listed}
    assert sorted(pids) == ids
    shims = {id: ppid(pid) for id, pid in pids.items()}

    d.kill9()
    for id in exits_while_down:
        os.kill(pids[id], signal.SIGTERM)
    for id in shim_killed_while_down:
        os.kill(shims[id], signal.SIGKILL)
    for id in exits_while_down:
        eventually(lambda id=id: not alive(pids[id]))  # type: ignore[misc]
    for id in shim_killed_while_down:
        eventually(lambda id=id: not alive(shims[id]))  # type: ignore[misc]

    d.start()
    with grpc.insecure_channel(f"unix://{d.address}") as ch:
        tasks = pb_grpc.TasksStub(ch)
        procs = {t.id: t for t in tasks.List(pb.ListTasksRequest(), metadata=MD).tasks}
        assert sorted(procs) == ids, d.logs()[-3000:]
        for id in exits_while_down:
            assert procs[id].status == task_pb2.STOPPED
            assert procs[id].exit_status == 7
            assert tasks.Wait(pb.WaitRequest(container_id=id), metadata=MD).exit_status == 7
        for id in shim_killed_while_down:
            assert procs[id].status == task_pb2.STOPPED
            assert procs[id].exit_status == 137
            bundle = d.state / "io.containerd.runtime.v2.task" / "default" / id
            assert not bundle.exists()
            # runc delete --force, run by the cleanup, took the process down.
            eventually(lambda id=id: not alive(pids[id]))  # type: ignore[misc]
        running = [id for id in ids if id not in exits_while_down | shim_killed_while_down]
        for id in running:
            assert procs[id].status == task_pb2.RUNNING, id
            assert procs[id].pid == pids[id]
            d.ctr("tasks", "exec", "--exec-id", "after-restart", id, "true")

        # Adopted tasks stop the ordinary way, through the shim berthd reconnected to.
        for id, (sig, _) in stopped_plainly.items():
            kill = ["tasks", "kill", id] if sig == "SIGTERM" else ["tasks", "kill", "-s", sig, id]
            d.ctr(*kill)
        for id, (_, code) in stopped_plainly.items():
            eventually(lambda id=id: task_status(d, id) == "STOPPED")  # type: ignore[misc]
            assert tasks.Wait(pb.WaitRequest(container_id=id), metadata=MD).exit_status == code
            rm = d.ctr("tasks", "rm", id)
            assert f"exit code {code}" in rm.stderr, (runtime[id], rm.stderr)
            d.ctr("containers", "rm", id)
            assert task_status(d, id) == ""
            assert not (d.state / "io.containerd.runtime.v2.task" / "default" / id).exists()
            assert not alive(pids[id])
            eventually(lambda id=id: not alive(shims[id]))  # type: ignore[misc]
        assert {runtime[id] for id in stopped_plainly} == {BERTH, RUNC}

    # Everything else stops and goes away as usual.
    for id in running:
        if id not in stopped_plainly:
            d.ctr("tasks", "kill", "--signal", "SIGKILL", id)
    for id in ids:
        if id not in stopped_plainly:
            d.ctr("tasks", "rm", "--force", id)
            d.ctr("containers", "rm", id)
    assert d.ctr("tasks", "ls").stdout.splitlines()[1:] == []
    bundles = d.state / "io.containerd.runtime.v2.task" / "default"
    assert list(bundles.iterdir()) == []
    assert list((d.root / "io.containerd.runtime.v2.task" / "default").iterdir()) == []
    for shim in shims.values():
        eventually(lambda shim=shim: not alive(shim))  # type: ignore[misc]
    for pid in pids.values():
        assert not alive(pid)
    # The exits nobody could have observed were published at boot.
    boot_log = d.logs().rsplit("berthd successfully booted", 2)[-2]
    assert boot_log.count("topic=/tasks/exit") >= len(shim_killed_while_down)
