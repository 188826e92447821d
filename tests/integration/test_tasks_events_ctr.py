"""`ctr events` against berthd shows a container's whole task lifecycle.

Debian's ctr subscribes while ctr drives a container through create, start,
exec, pause, resume, kill and delete, on both shims; every topic must arrive
decoded (ctr prints the payload as JSON, not raw bytes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest

from tests.support.daemon import Berthd
from tests.support.imagebuilder import Image, write_oci_layout

pytestmark = pytest.mark.integration

IMAGE = "docker.io/library/berth-events:1"

EXPECTED = (
    "/containers/create",
    "/tasks/create",
    "/tasks/start",
    "/tasks/exec-added",
    "/tasks/exec-started",
    "/tasks/paused",
    "/tasks/resumed",
    "/tasks/exit",
    "/tasks/delete",
    "/containers/delete",
)


@pytest.mark.parametrize("runtime", ["io.containerd.berth.v2", "io.containerd.runc.v2"])
def test_ctr_events_shows_the_task_lifecycle(
    berthd: Berthd, busybox_image: Image, runtime: str
) -> None:
    layout = write_oci_layout(berthd.base / "bb.tar", busybox_image, image_name=IMAGE)
    berthd.ctr("images", "import", str(layout))
    cid = f"ev-{uuid.uuid4().hex[:8]}"  # runc state is shared by every daemon on the host
    events = subprocess.Popen(
        ["ctr", "--address", berthd.address, "events"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)  # let the subscription reach the daemon
        berthd.ctr("run", "-d", "--runtime", runtime, IMAGE, cid, "sleep", "300")
        berthd.ctr("tasks", "exec", "--exec-id", "e1", cid, "true")
        berthd.ctr("tasks", "pause", cid)
        berthd.ctr("tasks", "resume", cid)
        berthd.ctr("tasks", "kill", "-s", "SIGKILL", cid)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            out = berthd.ctr("tasks", "ls").stdout
            if cid not in out or "STOPPED" in out:
                break
            time.sleep(0.1)
        berthd.ctr("tasks", "rm", cid)
        berthd.ctr("containers", "rm", cid)
        time.sleep(0.5)  # the last events are in flight
    finally:
        events.send_signal(signal.SIGINT)
        try:
            out, err = events.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            events.kill()
            out, err = events.communicate()
    lines = [line for line in out.splitlines() if cid in line or "/containers/" in line]
    # ctr prints: DATE TIME ZONE UTC NAMESPACE TOPIC PAYLOAD
    seen = {tok for line in out.splitlines() for tok in line.split()[4:6] if tok.startswith("/")}
    missing = [t for t in EXPECTED if t not in seen]
    assert not missing, f"missing {missing} in ctr events output:\n{out}\n{err}"
    for line in lines:
        # ctr prints a decoded payload as a JSON object; undecodable ones are raw.
        assert line.rstrip().endswith("}"), line
    assert os.path.exists(berthd.address)
