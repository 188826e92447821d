"""A shim killed with SIGKILL: the task is reported stopped and everything is reclaimed.

The daemon notices the shim's connection dropping, runs the shim binary's
``delete`` (``runc delete --force`` and unmounting), removes the bundle,
publishes ``/tasks/exit`` and ``/tasks/delete``, and reports the task as
stopped with 128+SIGKILL until it is deleted. A client blocked in ``Wait``
gets that exit status instead of a transport error. The container's cgroups
go with it.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from berth.api.services.tasks.v1 import tasks_pb2 as pb
from berth.api.services.tasks.v1 import tasks_pb2_grpc as pb_grpc
from berth.api.types.task import task_pb2
from tests.support.daemon import Berthd
from tests.support.imagebuilder import Image, write_oci_layout
from tests.support.procs import alive, ppid

pytestmark = pytest.mark.integration

IMAGE = "docker.io/library/berth-shim-death:1"
RUNTIMES = [
    pytest.param("io.containerd.berth.v2", id="berth-shim"),
    pytest.param("io.containerd.runc.v2", id="runc-shim"),
]
MD = (("containerd-namespace", "default"),)
# Cgroups are named <namespace>/<id> host-wide: another run of these tests on
# the host must not share this one's.
RUN = secrets.token_hex(3)


@pytest.fixture(scope="module")
def d(shared_berthd: Berthd, busybox_image: Image) -> Berthd:
    layout = write_oci_layout(shared_berthd.base / "busybox.tar", busybox_image, image_name=IMAGE)
    shared_berthd.ctr("images", "import", str(layout))
    return shared_berthd


@pytest.fixture(scope="module")
def tasks(d: Berthd) -> Iterator[pb_grpc.TasksStub]:
    with grpc.insecure_channel(f"unix://{d.address}") as ch:
        yield pb_grpc.TasksStub(ch)


def cgroup_dirs(pid: int) -> list[Path]:
    """The directories of ``pid``'s own cgroups, one per mounted hierarchy.

    The root cgroup of a hierarchy (the host's) is left out; on a v1 host the
    unified v2 hierarchy, if mounted, is under ``unified``.
    """
    dirs = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if path == "/":
            continue
        if not controllers:
            mount = "unified" if os.path.isdir("/sys/fs/cgroup/unified") else ""
        else:
            mount = controllers.split(",")[0].removeprefix("name=")
        where = Path("/sys/fs/cgroup", mount) / path.lstrip("/")
        if where.is_dir():
            dirs.append(where)
    return dirs


def eventually(check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_killed_shim_reports_exit_137_and_reclaims_everything(
    d: Berthd, tasks: pb_grpc.TasksStub, runtime: str
) -> None:
    id = f"victim-{runtime.split('.')[-2]}-{RUN}"
    d.ctr("run", "-d", "--runtime", runtime, IMAGE, id, "sleep", "1000")
    bundle = d.state / "io.containerd.runtime.v2.task" / "default" / id
    assert bundle.is_dir()
    task_pid = tasks.Get(pb.GetRequest(container_id=id), metadata=MD).process.pid
    shim_pid = ppid(task_pid)
    assert "containerd-shim" in Path(f"/proc/{shim_pid}/cmdline").read_text()
    cgroups = cgroup_dirs(task_pid)
    assert any(id in str(c) for c in cgroups), cgroups

    watcher = subprocess.Popen(
        ["ctr", "--address", d.address, "events"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        time.sleep(0.3)  # let the subscription start
        waiting = pool.submit(tasks.Wait, pb.WaitRequest(container_id=id), metadata=MD, timeout=30)
        time.sleep(0.2)
        os.kill(shim_pid, signal.SIGKILL)

        assert waiting.result(timeout=30).exit_status == 137

        def stopped() -> bool:
            p = tasks.Get(pb.GetRequest(container_id=id), metadata=MD).process
            return p.status == task_pb2.STOPPED

        eventually(stopped)
        got = tasks.Get(pb.GetRequest(container_id=id), metadata=MD).process
        assert got.exit_status == 137
        eventually(lambda: not bundle.exists())
        # runc delete --force took the orphaned container process down too.
        eventually(lambda: not alive(task_pid))
        mounts = Path("/proc/self/mountinfo").read_text()
        assert str(bundle) not in mounts
        eventually(lambda: not any(c.exists() for c in cgroups))
        time.sleep(0.3)
    finally:
        os.kill(watcher.pid, signal.SIGTERM)
        out, _ = watcher.communicate(timeout=10)
        pool.shutdown()

    # ctr prints "<timestamp with spaces> <namespace> <topic> <json>".
    seen = {}
    for line in out.splitlines():
        for topic in ("/tasks/exit", "/tasks/delete"):
            marker = f" default {topic} "
            if marker in line:
                payload = json.loads(line.split(marker, 1)[1])
                if payload.get("container_id") == id:
                    seen[topic] = payload
    assert seen["/tasks/exit"]["exit_status"] == 137
    assert seen["/tasks/delete"]["exit_status"] == 137

    listing = d.ctr("tasks", "ls").stdout
    assert any(line.split()[:1] == [id] and "STOPPED" in line for line in listing.splitlines())
    rm = d.ctr("tasks", "rm", id)
    assert "137" in rm.stderr
    assert id not in d.ctr("tasks", "ls").stdout
    d.ctr("containers", "rm", id)
