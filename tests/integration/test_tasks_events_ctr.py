"""`ctr events` against berthd shows a container's whole task lifecycle.

Debian's ctr subscribes (provably: a marker event shows up in its output
first) while ctr drives a container through create, start, label, exec,
pause, resume, kill and delete, and while a process in a container runs out
of memory, on both shims. Every topic must arrive decoded (ctr prints the
payload as JSON, not raw bytes), carrying the fields containerd's shim fills.
"""

from __future__ import annotations

import os
import uuid

import pytest

from tests.integration.test_events_ctr import watching
from tests.support.daemon import Berthd
from tests.support.imagebuilder import Image, write_oci_layout

pytestmark = pytest.mark.integration

IMAGE = "docker.io/library/berth-events:1"
RUNTIMES = ("io.containerd.berth.v2", "io.containerd.runc.v2")


@pytest.fixture
def image(berthd: Berthd, busybox_image: Image) -> str:
    layout = write_oci_layout(berthd.base / "bb.tar", busybox_image, image_name=IMAGE)
    berthd.ctr("images", "import", str(layout))
    return IMAGE


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"  # runc state is shared by every daemon on the host


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_ctr_events_shows_the_task_lifecycle(berthd: Berthd, image: str, runtime: str) -> None:
    cid = _unique("ev")
    with watching(berthd) as w:
        berthd.ctr("run", "-d", "--runtime", runtime, image, cid, "sleep", "300")
        assert w.expect("/containers/create", id=cid).payload["runtime"]["name"] == runtime
        assert w.expect("/tasks/create", container_id=cid).payload["bundle"].endswith(cid)
        pid = w.expect("/tasks/start", container_id=cid).payload["pid"]
        assert pid > 0

        berthd.ctr("containers", "label", cid, "stage=events")
        updated = w.expect("/containers/update", id=cid).payload
        assert updated["labels"]["stage"] == "events"
        assert (updated["image"], updated["snapshot_key"]) == (image, cid)

        berthd.ctr("tasks", "exec", "--exec-id", "e1", cid, "true")
        w.expect("/tasks/exec-added", container_id=cid, exec_id="e1")
        exec_pid = w.expect("/tasks/exec-started", container_id=cid, exec_id="e1").payload["pid"]
        exec_exit = w.expect("/tasks/exit", container_id=cid, id="e1").payload
        assert exec_exit["pid"] == exec_pid and exec_exit.get("exit_status", 0) == 0

        berthd.ctr("tasks", "pause", cid)
        w.expect("/tasks/paused", container_id=cid)
        berthd.ctr("tasks", "resume", cid)
        w.expect("/tasks/resumed", container_id=cid)

        berthd.ctr("tasks", "kill", "-s", "SIGKILL", cid)
        exited = w.expect("/tasks/exit", container_id=cid, id=cid).payload
        assert (exited["pid"], exited["exit_status"]) == (pid, 137)
        berthd.ctr("tasks", "rm", cid)
        deleted = w.expect("/tasks/delete", container_id=cid).payload
        # containerd's shim leaves TaskDelete's id empty (ctr omits it).
        assert deleted == {
            "container_id": cid,
            "pid": pid,
            "exit_status": 137,
            "exited_at": exited["exited_at"],
        }
        berthd.ctr("containers", "rm", cid)
        w.expect("/containers/delete", id=cid)
    # ctr deleted the exec after it exited; as in containerd that is not
    # announced. A shim sends its events in order, so such an event would
    # have been printed before the init's /tasks/delete.
    deletes = [ln for ln in w.lines if ln.topic == "/tasks/delete"]
    assert [ln.payload["container_id"] for ln in deletes] == [cid]
    assert all(isinstance(ln.payload, dict) and ln.payload for ln in w.lines)
    assert os.path.exists(berthd.address)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_ctr_events_reports_an_oom_kill(berthd: Berthd, image: str, runtime: str) -> None:
    cid = _unique("oom")
    limit = 8 << 20
    # The hog runs as an exec: the shim watches the memory cgroup from the
    # moment the task started, so the kill cannot come before the watch.
    berthd.ctr(
        "run", "-d", "--runtime", runtime, "--memory-limit", str(limit), image, cid, "sleep", "300"
    )
    try:
        with watching(berthd) as w:
            hog = berthd.ctr(
                "tasks", "exec", "--exec-id", "hog", cid, "tail", "/dev/zero", check=False
            )
            assert hog.returncode == 137, hog.stderr
            assert w.expect("/tasks/oom", container_id=cid).payload == {"container_id": cid}
            assert w.expect("/tasks/exit", container_id=cid, id="hog").payload["exit_status"] == 137
    finally:
        berthd.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
        berthd.ctr("tasks", "rm", "-f", cid, check=False)
        berthd.ctr("containers", "rm", cid, check=False)
    assert cid not in berthd.ctr("containers", "ls", "-q").stdout.split()
