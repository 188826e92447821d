"""The README's main-job command runs end to end (CI keeps it honest): berthd
starts, ctr talks to it, and a first container prints its greeting."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.daemon import REPO, short_tmpdir

pytestmark = pytest.mark.integration


def test_demo_script_starts_berthd_and_runs_a_first_container() -> None:
    base = short_tmpdir()
    pidfile = base / "berthd.pid"
    env = dict(
        os.environ,
        BERTH_ROOT=str(base / "root"),
        BERTH_STATE=str(base / "state"),
        BERTH_ADDRESS=str(base / "b.sock"),
        BERTH_LOG=str(base / "berthd.log"),
        BERTH_PIDFILE=str(pidfile),
        BERTH_SKIP_SETUP="1",  # the suite itself runs after setup.sh
    )
    try:
        res = subprocess.run(
            [str(REPO / "scripts" / "demo.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert "Server:" in res.stdout and "io.containerd.grpc.v1" in res.stdout
        assert "demo" in res.stdout and "purpose=first-run" in res.stdout
        # The offline busybox image was imported, and the container's own
        # output reached the terminal as a line of its own.
        assert "docker.io/library/busybox:berth-demo" in res.stdout
        assert "Hello from Berth" in res.stdout.splitlines(), res.stdout + res.stderr
    finally:
        if pidfile.exists():
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
        shutil.rmtree(base, ignore_errors=True)
