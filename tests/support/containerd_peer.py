"""Debian's real containerd 1.6, run isolated for cross-compatibility tests.

Everything lives under one short /tmp directory (root, state, sockets), the
CRI and other host-touching plugins are disabled, and PATH puts this
checkout's ``containerd-shim-berth-v2`` first, so ``--runtime
io.containerd.berth.v2`` resolves to the shim under test. The daemon is
stopped by its own PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"

_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{address}"

[debug]
  level = "debug"

[plugins."io.containerd.runtime.v1.linux"]
  shim_debug = true
"""


class Containerd:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.address = str(base / "c.sock")
        self.log_path = base / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> Containerd:
        config = self.base / "config.toml"
        config.write_text(
            _CONFIG.format(root=self.base / "root", state=self.base / "state", address=self.address)
        )
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [CONTAINERD, "--config", str(config)], stdout=log, stderr=log, env=env
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {self.logs()[-2000:]}")
            if os.path.exists(self.address):
                probe = self.ctr("version", check=False)
                if probe.returncode == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"containerd did not come up: {self.logs()[-2000:]}")

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 60.0, input: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [CTR, "--address", self.address, "--namespace", "berth-test", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input.decode() if input is not None else None,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"ctr {' '.join(args)} failed ({result.returncode}): {result.stderr}\n"
                f"containerd log tail:\n{self.logs()[-3000:]}"
            )
        return result

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def available() -> bool:
    return os.access(CONTAINERD, os.X_OK) and os.access(CTR, os.X_OK) and bool(shutil.which("runc"))
