"""One container as the shim sees it: its init process, its exec'd
processes, their states, and the runc calls that move them between states.

This module is the shim's domain layer: it knows runc, mounts, I/O and
cgroups, but no protobuf. :mod:`berth.shim.service` translates requests into
these calls and turns outcomes into events.

State machines follow containerd's runc shim (``pkg/process``): an init
process is created -> running <-> paused -> stopped -> deleted (a created one
may also go straight to stopped or deleted); an exec'd process is created ->
running -> stopped -> deleted. Operations in the wrong state fail with
FailedPrecondition and containerd's wording.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from berth import errdefs
from berth.shim import mount as mountlib
from berth.shim.cgroups import Cgroup
from berth.shim.reaper import Exit, Reaper
from berth.shim.runc import Runc, RuncError, Stdio
from berth.shim.stdio import Console, ConsoleSocket, ProcessIO, StdioConfig, open_io

__all__ = [
    "CheckpointConfig",
    "Container",
    "Process",
    "RuntimeOptions",
    "default_runc_root",
]

log = logging.getLogger(__name__)

INIT_PID_FILE = "init.pid"
OPTIONS_FILE = "options.json"
RUNTIME_FILE = "runtime"
IO_DRAIN_TIMEOUT = 2.0

CREATED, RUNNING, PAUSING, PAUSED, STOPPED, DELETED = (
    "created",
    "running",
    "pausing",
    "paused",
    "stopped",
    "deleted",
)


def default_runc_root(state_dir: str) -> str:
    """Where runc keeps state when the runtime options name no ``Root``."""
    return os.path.join(state_dir, "runc")


@dataclass(slots=True)
class RuntimeOptions:
    """``containerd.runc.v1.Options``, the fields the shim acts on."""

    binary_name: str = ""
    root: str = ""
    systemd_cgroup: bool = False
    no_pivot_root: bool = False
    no_new_keyring: bool = False
    criu_path: str = ""
    criu_work_path: str = ""
    io_uid: int = 0
    io_gid: int = 0
    shim_cgroup: str = ""

    def to_json(self) -> dict[str, Any]:
        # The Go struct's field names, as containerd writes options.json.
        return {
            "NoPivotRoot": self.no_pivot_root,
            "NoNewKeyring": self.no_new_keyring,
            "ShimCgroup": self.shim_cgroup,
            "IoUid": self.io_uid,
            "IoGid": self.io_gid,
            "BinaryName": self.binary_name,
            "Root": self.root,
            "CriuPath": self.criu_path,
            "SystemdCgroup": self.systemd_cgroup,
            "CriuWorkPath": self.criu_work_path,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RuntimeOptions:
        return cls(
            binary_name=str(data.get("BinaryName") or ""),
            root=str(data.get("Root") or ""),
            systemd_cgroup=bool(data.get("SystemdCgroup")),
            no_pivot_root=bool(data.get("NoPivotRoot")),
            no_new_keyring=bool(data.get("NoNewKeyring")),
            criu_path=str(data.get("CriuPath") or ""),
            criu_work_path=str(data.get("CriuWorkPath") or ""),
            io_uid=int(data.get("IoUid") or 0),
            io_gid=int(data.get("IoGid") or 0),
            shim_cgroup=str(data.get("ShimCgroup") or ""),
        )

    @classmethod
    def read(cls, bundle: str) -> RuntimeOptions | None:
        try:
            with open(os.path.join(bundle, OPTIONS_FILE)) as f:
                return cls.from_json(json.load(f))
        except FileNotFoundError:
            return None

    def write(self, bundle: str) -> None:
        with open(os.path.join(bundle, OPTIONS_FILE), "w") as f:
            json.dump(self.to_json(), f)
        with open(os.path.join(bundle, RUNTIME_FILE), "w") as f:
            f.write(self.binary_name)


@dataclass(slots=True)
class CheckpointConfig:
    path: str
    exit: bool = False
    open_tcp: bool = False
    external_unix_sockets: bool = False
    terminal: bool = False
    file_locks: bool = False
    empty_namespaces: tuple[str, ...] = ()
    work_path: str = ""


def _fail(message: str) -> errdefs.FailedPrecondition:
    return errdefs.FailedPrecondition(message)


def runtime_error(exc: RuncError, message: str) -> errdefs.BerthError:
    """containerd's wording: ``<what failed>: <runc's last logged error>``."""
    detail = exc.log_error or exc.output or str(exc)
    return errdefs.BerthError(f"{message}: {detail}")


def kill_error(exc: RuncError | OSError) -> errdefs.BerthError:
    text = str(exc)
    lowered = text.lower()
    if (
        "os: process already finished" in text
        or "container not running" in text
        or "no such process" in lowered
        or (isinstance(exc, OSError) and exc.errno == 3)
    ):
        return errdefs.NotFound("process already finished: not found")
    if "does not exist" in text:
        return errdefs.NotFound("no such container: not found")
    return errdefs.BerthError(f"unknown error after kill: {text}")


def _read_pid(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip())


@dataclass(eq=False)
class Process:
    """An init or exec'd process and its exit."""

    container: Container
    exec_id: str
    stdio: StdioConfig
    spec: bytes = b""
    pid: int = 0
    state: str = CREATED
    exit_status: int = 0
    exited_at: float | None = None
    io: ProcessIO | None = None
    console: Console | None = None
    #: Set while Start runs; exits arriving meanwhile wait in pending_exit so
    #: that the start event always precedes the exit event.
    starting: bool = False
    pending_exit: Exit | None = None
    _exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> str:
        return self.exec_id or self.container.id

    @property
    def is_init(self) -> bool:
        return not self.exec_id

    @property
    def status(self) -> str:
        return self.state

    def set_exited(self, status: int, timestamp: float) -> None:
        if self.exited_at is not None:
            return
        self.exit_status = status
        self.exited_at = timestamp
        if self.state not in (DELETED,):
            self.state = STOPPED
        self._exited.set()

    async def wait(self) -> None:
        await self._exited.wait()

    def close_stdin(self) -> None:
        if self.io is not None:
            self.io.close_stdin()
        if self.console is not None:
            self.console.close_stdin()

    def resize(self, width: int, height: int) -> None:
        if self.state == DELETED:
            raise _fail("cannot resize a deleted process")
        if not self.is_init and self.state == STOPPED:
            raise _fail("cannot resize a stopped container")
        if self.console is not None:
            self.console.resize(width, height)

    async def release_io(self) -> None:
        if self.console is not None:
            await self.console.wait_output(IO_DRAIN_TIMEOUT)
            self.console.close()
            self.console = None
        if self.io is not None:
            await self.io.close()
            self.io = None

    async def kill(self, sig: int, all: bool) -> None:
        if self.state == DELETED:
            raise errdefs.NotFound("cannot kill a deleted process: not found")
        if self.is_init:
            try:
                await self.container.runc.kill(self.container.id, sig, all=all)
            except RuncError as exc:
                raise kill_error(exc) from None
            return
        if self.pid == 0:
            raise _fail("process not created: failed precondition")
        if self.exited_at is not None:
            raise errdefs.NotFound("process already finished: not found")
        try:
            os.kill(self.pid, sig)
        except OSError as exc:
            raise kill_error(exc) from None


class Container:
    """A runc container managed by this shim."""

    def __init__(
        self,
        *,
        id: str,
        bundle: str,
        namespace: str,
        reaper: Reaper,
        options: RuntimeOptions,
        state_dir: str,
        stdio: StdioConfig,
        rootfs_mounts: list[mountlib.Mount],
        checkpoint: str = "",
        parent_checkpoint: str = "",
    ) -> None:
        self.id = id
        self.bundle = bundle
        self.namespace = namespace
        self.reaper = reaper
        self.options = options
        root = options.root or default_runc_root(state_dir)
        self.runc = Runc(
            reaper,
            root=os.path.join(root, namespace),
            log=os.path.join(bundle, "log.json"),
            binary=options.binary_name or "runc",
            systemd_cgroup=options.systemd_cgroup,
            criu=options.criu_path,
        )
        self.rootfs_mounts = rootfs_mounts
        self.rootfs = os.path.join(bundle, "rootfs") if rootfs_mounts else ""
        self.init = Process(self, "", stdio)
        self.execs: dict[str, Process] = {}
        self._reserved: set[str] = set()
        self.cgroup: Cgroup | None = None
        self.checkpoint = checkpoint
        self.parent_checkpoint = parent_checkpoint
        self.kill_all_on_exit = False
        self.work_dir = os.path.join(bundle, "work")
        self._mounted = False

    # -- lookup ----------------------------------------------------------------

    def process(self, exec_id: str) -> Process:
        if not exec_id:
            return self.init
        p = self.execs.get(exec_id)
        if p is None:
            raise errdefs.NotFound(f"process does not exist {exec_id}: not found")
        return p

    def all_processes(self) -> list[Process]:
        return [self.init, *self.execs.values()]

    def find_pid(self, pid: int) -> Process | None:
        for p in self.all_processes():
            if p.pid == pid and p.exited_at is None:
                return p
        return None

    # -- create ----------------------------------------------------------------

    async def create(self) -> None:
        """Mount the rootfs, set up I/O and run ``runc create`` (or prepare a
        restore). Everything done is undone when it fails."""
        try:
            await self._create()
        except BaseException:
            await self._abort_create()
            raise

    async def _create(self) -> None:
        opts = self.options
        await asyncio.to_thread(self._prepare_bundle)
        self.kill_all_on_exit = _should_kill_all_on_exit(self.bundle)
        init = self.init
        if self.checkpoint:
            # Restore happens at Start; only I/O is prepared now.
            if not init.stdio.terminal:
                init.io = await open_io(
                    self.reaper, init.stdio, id=self.id, namespace=self.namespace
                )
            return
        pid_file = os.path.join(self.bundle, INIT_PID_FILE)
        await self._run_with_io(
            init,
            lambda stdio, sock: self.runc.create(
                self.id,
                self.bundle,
                pid_file=pid_file,
                stdio=stdio,
                console_socket=sock,
                no_pivot=opts.no_pivot_root,
                no_new_keyring=opts.no_new_keyring,
            ),
            "OCI runtime create failed",
        )
        init.pid = _read_pid(pid_file)
        self.cgroup = Cgroup.of_pid(init.pid)

    def _prepare_bundle(self) -> None:
        self.options.write(self.bundle)
        if not self.rootfs:
            return
        os.makedirs(self.rootfs, mode=0o711, exist_ok=True)
        # On failure mount_rootfs has already undone its partial work.
        mountlib.mount_rootfs(self.rootfs_mounts, self.rootfs)
        self._mounted = True

    async def _abort_create(self) -> None:
        await self.init.release_io()
        if self._mounted:
            with contextlib.suppress(mountlib.MountError):
                await asyncio.to_thread(mountlib.unmount_rootfs, self.rootfs)
            self._mounted = False

    async def _run_with_io(self, p: Process, call: Any, what: str) -> None:
        """Run a runc call that starts ``p``: with a pty from a console
        socket when ``p`` has a terminal, else with its opened I/O."""
        if p.stdio.terminal:
            sock = ConsoleSocket()
            try:
                receive = asyncio.ensure_future(sock.receive_master())
                try:
                    await call(Stdio(), sock.path)
                except RuncError as exc:
                    receive.cancel()
                    raise runtime_error(exc, what) from None
                except BaseException:
                    receive.cancel()
                    raise
                if not receive.done():
                    # runc sends the master before it exits; give a slow
                    # kernel a moment, then give up.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(5):
                            await asyncio.wait({receive})
                if not receive.done():
                    receive.cancel()
                    await asyncio.wait({receive})
                try:
                    master = receive.result()
                except (asyncio.CancelledError, OSError, errdefs.BerthError) as exc:
                    raise errdefs.BerthError(f"failed to retrieve console master: {exc}") from None
                p.console = Console(master)
                try:
                    p.console.start(p.stdio)
                except OSError as exc:
                    raise errdefs.BerthError(f"failed to start console copy: {exc}") from None
            finally:
                sock.close()
            return
        if p.io is None:
            p.io = await open_io(self.reaper, p.stdio, id=self.id, namespace=self.namespace)
        try:
            await call(p.io.stdio, None)
        except RuncError as exc:
            raise runtime_error(exc, what) from None
        finally:
            p.io.close_after_start()

    # -- start -----------------------------------------------------------------

    async def start(self, exec_id: str) -> Process:
        """Start the init (``runc start``, or ``runc restore``) or an exec'd
        process (``runc exec``). The caller must call :meth:`started` after
        publishing its start event."""
        p = self.process(exec_id)
        _check_start(p)
        p.starting = True
        try:
            if p.is_init:
                await self._start_init(p)
            else:
                await self._start_exec(p)
        except BaseException:
            p.starting = False
            raise
        p.state = RUNNING if p.exited_at is None else STOPPED
        return p

    async def _start_init(self, p: Process) -> None:
        if not self.checkpoint:
            try:
                await self.runc.start(self.id)
            except RuncError as exc:
                raise runtime_error(exc, "OCI runtime start failed") from None
            if self.cgroup is None:
                self.cgroup = Cgroup.of_pid(p.pid)
            return
        pid_file = os.path.join(self.bundle, INIT_PID_FILE)
        since = time.monotonic()
        work = self.options.criu_work_path or self.work_dir
        os.makedirs(work, exist_ok=True)
        await self._run_with_io(
            p,
            lambda stdio, sock: self.runc.restore(
                self.id,
                self.bundle,
                image_path=self.checkpoint,
                work_path=work,
                pid_file=pid_file,
                stdio=stdio,
                console_socket=sock,
                parent_path=self.parent_checkpoint,
                no_pivot=self.options.no_pivot_root,
            ),
            "OCI runtime restore failed",
        )
        p.pid = _read_pid(pid_file)
        self.cgroup = Cgroup.of_pid(p.pid)
        self._claim_early_exit(p, since)

    async def _start_exec(self, p: Process) -> None:
        if self.init.state != RUNNING:
            raise _fail(f"cannot exec in a {self.init.state} state")
        try:
            spec = json.loads(p.spec or b"{}")
        except ValueError as exc:
            raise errdefs.InvalidArgument(f"invalid process spec: {exc}") from None
        spec["terminal"] = p.stdio.terminal
        fd, spec_path = tempfile.mkstemp(prefix=".process-", suffix=".json", dir=self.bundle)
        pid_file = self._exec_pid_file(p.exec_id)
        since = time.monotonic()
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(spec, f)
            await self._run_with_io(
                p,
                lambda stdio, sock: self.runc.exec(
                    self.id, spec_path, pid_file=pid_file, stdio=stdio, console_socket=sock
                ),
                "OCI runtime exec failed",
            )
            p.pid = _read_pid(pid_file)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spec_path)
        self._claim_early_exit(p, since)

    def _claim_early_exit(self, p: Process, since: float) -> None:
        early = self.reaper.claim(p.pid, since=since)
        if early is not None:
            p.pending_exit = early

    def _exec_pid_file(self, exec_id: str) -> str:
        return os.path.join(self.bundle, f"{exec_id}.pid")

    def started(self, p: Process) -> Exit | None:
        """End the start window; returns an exit that arrived during it."""
        p.starting = False
        ex, p.pending_exit = p.pending_exit, None
        return ex

    # -- exec ------------------------------------------------------------------

    def add_exec(self, exec_id: str, stdio: StdioConfig, spec: bytes) -> Process:
        """Register an exec'd process (it runs at Start).

        Raises AlreadyExists for a duplicate id and FailedPrecondition when
        the init is not running.
        """
        if exec_id in self.execs or exec_id in self._reserved:
            raise errdefs.AlreadyExists(f"id {exec_id}: already exists")
        state = self.init.state
        if state == PAUSING:
            state = PAUSED
        if state != RUNNING:
            raise _fail(f"cannot exec in a {state} state")
        p = Process(self, exec_id, stdio, spec=spec)
        self.execs[exec_id] = p
        return p

    # -- delete ----------------------------------------------------------------

    async def delete(self, exec_id: str) -> Process:
        p = self.process(exec_id)
        state = p.state
        if state == DELETED:
            raise errdefs.NotFound("cannot delete a deleted process: not found")
        if state in (RUNNING, PAUSED, PAUSING):
            raise _fail(f"cannot delete a {'running' if state == RUNNING else 'paused'} process")
        if p.is_init:
            await self._delete_init(p)
        else:
            await p.release_io()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._exec_pid_file(p.exec_id))
            self.execs.pop(p.exec_id, None)
        p.state = DELETED
        return p

    async def _delete_init(self, p: Process) -> None:
        await p.release_io()
        error: errdefs.BerthError | None = None
        try:
            await self.runc.delete(self.id, force=p.state == CREATED)
        except RuncError as exc:
            if "does not exist" not in str(exc) and "does not exist" not in exc.log_error:
                error = runtime_error(exc, "failed to delete task")
        for ex in list(self.execs.values()):
            await ex.release_io()
        try:
            await asyncio.to_thread(self.cleanup_files)
        except mountlib.MountError as exc:
            log.warning("failed to clean up rootfs mount: %s", exc)
            if error is None:
                error = errdefs.BerthError(f"failed rootfs umount: {os.strerror(exc.errno)}")
        if error is not None:
            raise error

    def cleanup_files(self) -> None:
        """Unmount the rootfs and remove the shim's scratch files. Blocking."""
        if self.rootfs:
            mountlib.unmount_rootfs(self.rootfs)
        shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- the rest ------------------------------------------------------------------

    async def pause(self) -> None:
        p = self.init
        errors = {
            CREATED: "cannot pause task in created state",
            PAUSED: "cannot pause a paused container",
            PAUSING: "cannot pause a paused container",
            STOPPED: "cannot pause a stopped container",
            DELETED: "cannot pause a deleted process",
        }
        if p.state in errors:
            raise _fail(errors[p.state])
        p.state = PAUSING
        try:
            await self.runc.pause(self.id)
        except RuncError as exc:
            if p.state == PAUSING:
                p.state = RUNNING
            raise runtime_error(exc, "OCI runtime pause failed") from None
        if p.state == PAUSING:
            p.state = PAUSED

    async def resume(self) -> None:
        p = self.init
        errors = {
            CREATED: "cannot resume task in created state",
            RUNNING: "cannot resume a running process",
            STOPPED: "cannot resume a stopped container",
            DELETED: "cannot resume a deleted process",
        }
        if p.state in errors:
            raise _fail(errors[p.state])
        try:
            await self.runc.resume(self.id)
        except RuncError as exc:
            raise runtime_error(exc, "OCI runtime resume failed") from None
        if p.state in (PAUSED, PAUSING):
            p.state = RUNNING

    async def update(self, resources: bytes) -> None:
        state = self.init.state
        if state in (STOPPED, DELETED):
            raise _fail(f"cannot update a {state} {'container' if state == STOPPED else 'process'}")
        try:
            json.loads(resources or b"{}")
        except ValueError as exc:
            raise errdefs.InvalidArgument(f"invalid linux resources: {exc}") from None
        try:
            await self.runc.update(self.id, resources)
        except RuncError as exc:
            raise runtime_error(exc, "OCI runtime update failed") from None

    async def pids(self) -> list[int]:
        try:
            return await self.runc.ps(self.id)
        except RuncError as exc:
            raise runtime_error(exc, "OCI runtime ps failed") from None

    async def checkpoint_to(self, cfg: CheckpointConfig) -> None:
        state = self.init.state
        errors = {
            CREATED: "cannot checkpoint a task in created state",
            STOPPED: "cannot checkpoint a stopped container",
            DELETED: "cannot checkpoint a deleted process",
        }
        if state in errors:
            raise _fail(errors[state])
        criu = self.options.criu_path or shutil.which("criu")
        if not criu:
            raise _fail("checkpoint needs CRIU, and no criu binary was found in PATH")
        work = cfg.work_path
        scratch = not work
        if scratch:
            work = os.path.join(self.work_dir, "criu-work")
        os.makedirs(work, exist_ok=True)
        try:
            await self.runc.checkpoint(
                self.id,
                image_path=cfg.path,
                work_path=work,
                leave_running=not cfg.exit,
                open_tcp=cfg.open_tcp,
                external_unix_sockets=cfg.external_unix_sockets,
                terminal=cfg.terminal,
                file_locks=cfg.file_locks,
                empty_namespaces=cfg.empty_namespaces,
            )
        except RuncError as exc:
            dump_log = os.path.join(self.bundle, "criu-dump.log")
            with contextlib.suppress(OSError):
                shutil.copyfile(os.path.join(work, "dump.log"), dump_log)
            first = (exc.log_error or exc.output or str(exc)).splitlines()[0]
            criu_said = _last_criu_error(dump_log)
            hint = f" (criu: {criu_said})" if criu_said else ""
            raise errdefs.BerthError(f"{first}{hint} path= {dump_log}") from None
        finally:
            if scratch:
                shutil.rmtree(work, ignore_errors=True)

    async def kill_all(self) -> None:
        try:
            await self.runc.kill(self.id, signal.SIGKILL, all=True)
        except RuncError as exc:
            log.warning("failed to kill init's children: %s", exc)


def _check_start(p: Process) -> None:
    state = p.state
    if state == CREATED:
        return
    if state == PAUSING:
        state = PAUSED
    raise _fail(f"cannot start a {state} process")


def _last_criu_error(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line.split(": ", 1)[-1].strip() if ": " in line else line.strip()
    return ""


def _should_kill_all_on_exit(bundle: str) -> bool:
    """Without its own pid namespace a container's processes outlive its
    init; containerd kills them when the init exits."""
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            spec = json.load(f)
    except (OSError, ValueError):
        return True
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "pid":
            return bool(ns.get("path"))
    return True
