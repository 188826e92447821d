"""The two daemons under test, each isolated in its own corner of one temp dir.

Both are driven with Debian's real ``ctr`` (berthd speaks containerd's API),
so the client side of every measurement is the same binary. Each daemon gets:

* its own root, state and socket below the run's temporary directory (short
  paths: unix sockets allow 107 bytes);
* containerd: Debian's ``/usr/bin/containerd`` with a generated config that
  disables the CRI plugin, opens no TCP port and keeps the ``opt`` plugin's
  directory inside the temp dir;
* berthd: ``python -m berth.daemon --root --state --address`` with the
  harness's own interpreter (the project's venv).

Stopping deletes every task and container in the namespaces the run used,
sends SIGTERM to the daemon's PID, then ends any process still naming the
run's directory in its command line (shims outlive their daemon by design),
and finally unmounts whatever is left below the directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.berthbench import procs

__all__ = [
    "SNAPSHOTTER",
    "Berthd",
    "CommandError",
    "Containerd",
    "Daemon",
    "NotSupported",
    "is_unimplemented",
]

REPO = Path(__file__).resolve().parents[2]
CTR = os.environ.get("BERTHBENCH_CTR", "ctr")
CONTAINERD = os.environ.get("BERTHBENCH_CONTAINERD", "/usr/bin/containerd")
# Both daemons unpack into overlayfs so that unpack and run rows compare the
# same kind of work; ctr reads the choice from this variable.
SNAPSHOTTER = "overlayfs"

# gRPC plugin ids (type io.containerd.grpc.v1) a berth row may need.
GRPC = "io.containerd.grpc.v1"

# How an unimplemented RPC looks through ctr (gRPC UNIMPLEMENTED).
_UNIMPLEMENTED_MARKERS = ("not implemented", "unimplemented", "method not found", "unknown service")


class CommandError(RuntimeError):
    """A command the harness ran failed; the message carries its stderr."""

    def __init__(self, argv: Sequence[str], code: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.code = code
        self.stdout = stdout
        self.stderr = stderr
        detail = (stderr.strip() or stdout.strip()).splitlines()
        tail = detail[-1] if detail else ""
        super().__init__(f"`{' '.join(self.argv[-6:])}` exited {code}: {tail[:300]}")


class NotSupported(RuntimeError):
    """The daemon cannot do what a row needs yet; the message says what is missing."""


def is_unimplemented(exc: BaseException) -> bool:
    """True when a failure is the daemon answering 'not implemented'."""
    text = str(exc).lower()
    if isinstance(exc, CommandError):
        text += " " + exc.stderr.lower()
    return any(marker in text for marker in _UNIMPLEMENTED_MARKERS)


def _socket_ready(path: str) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


class Daemon:
    """One daemon process plus the ``ctr`` calls the harness makes against it."""

    name = "daemon"
    short = "d"

    def __init__(self, base: Path) -> None:
        self.base = base / self.short
        self.root = self.base / "root"
        self.state = self.base / "state"
        self.address = str(self.base / "s.sock")
        self.log_path = self.base / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.namespaces_used: set[str] = set()
        self._plugins: dict[str, str] | None = None

    # -- lifecycle -------------------------------------------------------------
    def argv(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create directories and config before the process starts."""
        self.base.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 30.0) -> None:
        """Start the daemon and wait until ``ctr version`` answers.

        Raises RuntimeError with the daemon's log tail when it exits or does
        not answer within *timeout* seconds.
        """
        self.prepare()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=REPO,
                start_new_session=True,  # ^C goes to the harness, which stops us in order
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if _socket_ready(self.address):
                res = self.ctr("version", check=False, timeout=10)
                if res.returncode == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer within {timeout}s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.proc.pid

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except FileNotFoundError:
            return ""

    def stop(self) -> list[str]:
        """Remove our containers, stop the daemon and its strays; returns problems seen."""
        problems: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            for ns in sorted(self.namespaces_used):
                try:
                    self.remove_all_containers(ns)
                except (CommandError, subprocess.TimeoutExpired) as exc:
                    if not is_unimplemented(exc):
                        problems.append(f"{self.name}: cleaning namespace {ns}: {exc}")
            procs.end_pid(self.proc.pid, grace=10.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(1)
        # Shims (and their containers) deliberately survive their daemon.
        for pid in procs.pids_mentioning(str(self.base) + "/"):
            problems.append(f"{self.name}: ended stray process {pid} ({procs.comm(pid)})")
            procs.end_pid(pid)
        left = procs.unmount_under(self.base)
        problems.extend(f"{self.name}: could not unmount {p}" for p in left)
        return problems

    # -- ctr ----------------------------------------------------------------------
    def ctr_argv(self, *args: str, ns: str = "default") -> list[str]:
        return [CTR, "--address", self.address, "--namespace", ns, *args]

    def ctr(
        self, *args: str, ns: str = "default", check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ctr against this daemon; raises CommandError when *check* and it fails."""
        if ns != "default":
            self.namespaces_used.add(ns)
        argv = self.ctr_argv(*args, ns=ns)
        res = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=ctr_env(),
        )
        if check and res.returncode != 0:
            raise CommandError(argv, res.returncode, res.stdout, res.stderr)
        return res

    def plugins(self) -> dict[str, str]:
        """``{"<type> <id>": status}`` from ``ctr plugins ls`` (cached per run)."""
        if self._plugins is None:
            out = self.ctr("plugins", "ls", timeout=30).stdout
            found: dict[str, str] = {}
            for line in out.splitlines()[1:]:
                fields = line.split()
                if len(fields) >= 4:
                    found[f"{fields[0]} {fields[1]}"] = fields[-1]
            self._plugins = found
        return self._plugins

    def forget_plugins(self) -> None:
        self._plugins = None

    def require(self, grpc_ids: Sequence[str]) -> None:
        """Raise NotSupported naming the gRPC services this daemon does not serve."""
        have = self.plugins()
        missing = [i for i in grpc_ids if have.get(f"{GRPC} {i}") != "ok"]
        if missing:
            raise NotSupported(f"no {', '.join(missing)} gRPC service")

    def server_version(self) -> str:
        out = self.ctr("version", timeout=30).stdout
        section = out.split("Server:", 1)[-1]
        for line in section.splitlines():
            key, _, value = line.strip().partition(":")
            if key == "Version":
                return value.strip()
        return "unknown"

    def memory(self) -> procs.Mem:
        """RSS/PSS of the daemon and its helpers, shims and containers excluded."""
        total = procs.Mem()
        for pid in procs.descendants(self.pid, prune=_is_shim):
            with contextlib.suppress(ProcessLookupError):
                total = total + procs.mem_of(pid)
        return total

    def task_pids(self, ns: str) -> dict[str, int]:
        """``{container id: init pid}`` of the running tasks in *ns*."""
        out = self.ctr("tasks", "ls", ns=ns, timeout=60).stdout
        pids: dict[str, int] = {}
        for line in out.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "RUNNING":
                pids[fields[0]] = int(fields[1])
        return pids

    def remove_all_containers(self, ns: str) -> None:
        """Force-delete every task, then every container, in *ns*."""
        tasks = self.ctr("tasks", "ls", "-q", ns=ns, check=False, timeout=60)
        if tasks.returncode == 0:
            for cid in tasks.stdout.split():
                self.ctr("tasks", "rm", "-f", cid, ns=ns, check=False, timeout=60)
        containers = self.ctr("containers", "ls", "-q", ns=ns, timeout=60)
        for cid in containers.stdout.split():
            self.ctr("containers", "rm", cid, ns=ns, timeout=60)

    # -- the project's own command line ------------------------------------------
    def own_cli_run_rm(self, ns: str, ref: str, cid: str, command: Sequence[str]) -> list[str]:
        """argv of ``run --rm`` through this project's own CLI; raises NotSupported."""
        raise NotImplementedError

    def own_cli_pull(self, ns: str, ref: str) -> list[str]:
        """argv of a plain-HTTP pull through this project's own CLI; raises NotSupported."""
        raise NotImplementedError


def _is_shim(pid: int) -> bool:
    # comm is cut to 15 characters: "containerd-shim" for every shim v2 binary.
    return procs.comm(pid).startswith("containerd-shim")


def ctr_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
    env["CONTAINERD_SNAPSHOTTER"] = SNAPSHOTTER
    return env


class Containerd(Daemon):
    """Debian's containerd 1.6 with a private root, state, socket and config."""

    name = "containerd"
    short = "c"

    @property
    def config_path(self) -> Path:
        return self.base / "config.toml"

    def prepare(self) -> None:
        super().prepare()
        for d in (self.root, self.state, self.base / "opt"):
            d.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            "\n".join(
                [
                    "version = 2",
                    f'root = "{self.root}"',
                    f'state = "{self.state}"',
                    # The CRI plugin would start a stream server, CNI and a
                    # sandbox image pull; none of it is measured here.
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                    "",
                    "[grpc]",
                    f'  address = "{self.address}"',
                    '  tcp_address = ""',
                    "",
                    "[debug]",
                    '  address = ""',
                    '  level = "warn"',
                    "",
                    "[metrics]",
                    '  address = ""',
                    "",
                    '[plugins."io.containerd.internal.v1.opt"]',
                    f'  path = "{self.base / "opt"}"',
                    "",
                ]
            )
        )

    def argv(self) -> list[str]:
        return [CONTAINERD, "--config", str(self.config_path)]

    def own_cli_run_rm(self, ns: str, ref: str, cid: str, command: Sequence[str]) -> list[str]:
        self.namespaces_used.add(ns)
        return self.ctr_argv("run", "--rm", ref, cid, *command, ns=ns)

    def own_cli_pull(self, ns: str, ref: str) -> list[str]:
        self.namespaces_used.add(ns)
        return self.ctr_argv("images", "pull", "--plain-http", ref, ns=ns)


class Berthd(Daemon):
    """This checkout's berthd, run with the harness's interpreter."""

    name = "berth"
    short = "b"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self._cli_checked: dict[tuple[str, ...], str] = {}

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "berth.daemon",
            "--root",
            str(self.root),
            "--state",
            str(self.state),
            "--address",
            self.address,
            # Debug logging would tax berth with work containerd is not doing.
            "--log-level",
            "info",
        ]

    def cli(self, *command: str) -> str:
        """Path of the ``berth`` CLI; raises NotSupported when it lacks *command*
        (default ``run``) yet."""
        command = command or ("run",)
        exe = Path(sys.executable).with_name("berth")
        path = str(exe) if exe.exists() else shutil.which("berth")
        if path is None:
            raise NotSupported("no berth CLI installed")
        if command not in self._cli_checked:
            res = subprocess.run(
                [path, *command, "--help"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if res.returncode != 0:
                tail = (res.stderr.strip() or res.stdout.strip()).splitlines()
                self._cli_checked[command] = (
                    f"`berth {' '.join(command)}` is not available"
                    f" ({tail[-1][:160] if tail else res.returncode})"
                )
            else:
                self._cli_checked[command] = ""
        if self._cli_checked[command]:
            raise NotSupported(self._cli_checked[command])
        return path

    def own_cli_run_rm(self, ns: str, ref: str, cid: str, command: Sequence[str]) -> list[str]:
        # The berth CLI mirrors ctr's global flags and `run` arguments.
        self.namespaces_used.add(ns)
        return [
            self.cli(),
            "--address",
            self.address,
            "--namespace",
            ns,
            "run",
            "--rm",
            ref,
            cid,
            *command,
        ]

    def own_cli_pull(self, ns: str, ref: str) -> list[str]:
        self.namespaces_used.add(ns)
        return [
            self.cli("images", "pull"),
            "--address",
            self.address,
            "--namespace",
            ns,
            "images",
            "pull",
            "--plain-http",
            "--quiet",
            ref,
        ]
