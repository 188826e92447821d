"""Run a real berthd in a throwaway root for tests, and drive ctr against it.

Sockets live under short /tmp/b.* directories because unix socket paths are
limited to 107 bytes and pytest's tmp_path can be longer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BERTHD = [sys.executable, "-m", "berth.daemon"]


class Berthd:
    """A berthd process with its own root, state and socket."""

    def __init__(self, base: Path, *, config: str | None = None, extra: Sequence[str] = ()) -> None:
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.address = str(base / "s.sock")
        self.log_path = base / "berthd.log"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = base / "config.toml"
            self.config_path.write_text(config)
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        args = [
            *BERTHD,
            "--root",
            str(self.root),
            "--state",
            str(self.state),
            "--address",
            self.address,
            "--log-level",
            "debug",
        ]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        return args + self.extra

    def start(self, timeout: float = 20.0) -> Berthd:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log, cwd=REPO)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"berthd exited with {self.proc.returncode}:\n{self.logs()}")
            if self.ready():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"berthd did not become ready in {timeout}s:\n{self.logs()}")

    def ready(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.address)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def ctr(
        self, *args: str, namespace: str = "default", check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run Debian's real ctr against this daemon."""
        cmd = ["ctr", "--address", self.address, "--namespace", namespace, *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}\n"
                f"--- berthd log ---\n{self.logs()[-4000:]}"
            )
        return res


def short_tmpdir(prefix: str = "b.") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@contextlib.contextmanager
def running_berthd(**kw: object) -> Iterator[Berthd]:
    base = short_tmpdir()
    d = Berthd(base, **kw)  # type: ignore[arg-type]
    try:
        d.start()
        yield d
    finally:
        d.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(base)


def env_with_src() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src")
    return env
