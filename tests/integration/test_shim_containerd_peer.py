"""Wire compatibility with the real peer: Debian's containerd 1.6 runs
containers through ``containerd-shim-berth-v2`` and ``ctr`` drives them."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.containerd_peer import Containerd, available
from tests.support.imagebuilder import build_busybox_image, write_oci_layout
from tests.support.oci_bundle import cleanup_base, short_dir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available(), reason="containerd, ctr or runc not installed"),
]


def _cmdline(p: Path) -> bytes:
    try:
        return (p / "cmdline").read_bytes()
    except OSError:
        return b""


IMAGE = "docker.io/library/busybox:latest"
RUNTIME = "io.containerd.berth.v2"


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    base = short_dir("b.cd.")
    daemon = Containerd(base).start()
    try:
        tar = write_oci_layout(base / "busybox.tar", build_busybox_image(), image_name=IMAGE)
        daemon.ctr("images", "import", str(tar))
        yield daemon
    finally:
        for line in daemon.ctr("tasks", "ls", "-q", check=False).stdout.split():
            daemon.ctr("tasks", "kill", "-s", "SIGKILL", line, check=False)
        time.sleep(0.5)
        for line in daemon.ctr("tasks", "ls", "-q", check=False).stdout.split():
            daemon.ctr("tasks", "delete", "-f", line, check=False)
        for line in daemon.ctr("containers", "ls", "-q", check=False).stdout.split():
            daemon.ctr("containers", "delete", line, check=False)
        daemon.stop()
        cleanup_base(base)


def test_ctr_run_rm_prints_output_and_exit_code(containerd: Containerd) -> None:
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, IMAGE, "once", "echo", "hello")
    assert out.stdout == "hello\n"
    failed = containerd.ctr(
        "run", "--rm", "--runtime", RUNTIME, IMAGE, "fails", "sh", "-c", "exit 3", check=False
    )
    assert failed.returncode == 3


def test_ctr_exec_ps_metrics_kill_on_a_detached_task(containerd: Containerd) -> None:
    containerd.ctr("run", "-d", "--runtime", RUNTIME, IMAGE, "peer1", "sleep", "1000")
    tasks = containerd.ctr("tasks", "ls").stdout
    assert re.search(r"peer1\s+\d+\s+RUNNING", tasks), tasks
    info = json.loads(containerd.ctr("containers", "info", "peer1").stdout)
    assert info["Runtime"]["Name"] == RUNTIME
    # The task really runs under our shim, not containerd's runc shim.
    shims = [
        p
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
        and _cmdline(p).startswith(b"/")
        and b"containerd-shim-berth-v2" in _cmdline(p)
        and b"peer1" in _cmdline(p)
    ]
    assert shims, "no containerd-shim-berth-v2 process for peer1"

    out = containerd.ctr(
        "tasks", "exec", "--exec-id", "e1", "peer1", "sh", "-c", "echo in; exit 4", check=False
    )
    assert out.stdout == "in\n" and out.returncode == 4
    piped = containerd.ctr(
        "tasks", "exec", "--exec-id", "e2", "peer1", "cat", input=b"through stdin\n"
    )
    assert piped.stdout == "through stdin\n"

    ps = containerd.ctr("tasks", "ps", "peer1").stdout
    assert re.search(r"^\d+\s", ps.splitlines()[1]), ps

    metrics = containerd.ctr("tasks", "metrics", "--format", "json", "peer1").stdout
    doc = json.loads(metrics)
    assert doc["memory"]["usage"]["usage"] > 0, doc
    table = containerd.ctr("tasks", "metrics", "peer1").stdout
    assert "memory.usage_in_bytes" in table

    containerd.ctr("tasks", "pause", "peer1")
    assert re.search(r"peer1\s+\d+\s+PAUSED", containerd.ctr("tasks", "ls").stdout)
    containerd.ctr("tasks", "resume", "peer1")

    containerd.ctr("tasks", "kill", "-s", "SIGKILL", "peer1")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if re.search(r"peer1\s+\d+\s+STOPPED", containerd.ctr("tasks", "ls").stdout):
            break
        time.sleep(0.1)
    assert re.search(r"peer1\s+\d+\s+STOPPED", containerd.ctr("tasks", "ls").stdout)
    deleted = containerd.ctr("tasks", "delete", "peer1").stdout
    assert "137" in deleted or deleted == ""
    containerd.ctr("containers", "delete", "peer1")
    assert "peer1" not in containerd.ctr("tasks", "ls").stdout
