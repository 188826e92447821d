"""Shim binaries: finding them, and running their ``start`` and ``delete`` commands.

Runtime names resolve to binaries as containerd resolves them: the last two
dot-separated parts of the name pick ``containerd-shim-<name>-<version>``
(``io.containerd.runc.v2`` -> ``containerd-shim-runc-v2``,
``io.containerd.berth.v2`` -> ``containerd-shim-berth-v2``), looked up on
``PATH`` and then beside the daemon's own executable (a virtualenv's ``bin``
holds both ``berthd`` and ``containerd-shim-berth-v2``). An absolute path
names a binary directly. containerd also tries the name relative to its
working directory; Berth does not, because a daemon's working directory is
not a place binaries should be picked up from.

The commands follow the shim v2 contract (``runtime/v2/shim`` in containerd
1.6): Go-style flags ``-namespace``, ``-address``, ``-publish-binary``, then
``-id ID [-debug] start`` with the bundle as working directory,
``TTRPC_ADDRESS`` in the environment and the runtime options (a serialized
``Any``) on stdin; the shim prints its socket address. Berth's own shim also
reads ``BERTH_SHIM_GROUP`` there: the shim server group the task joins when
its spec names none (see :mod:`.manager`). ``-id ID -bundle PATH
delete`` cleans up after a dead shim and prints a ``DeleteResponse``.

Shims are spawned on the event loop rather than from worker threads: a
daemon starting twenty tasks at once would otherwise tie up the small shared
thread pool that metadata and file work depend on. ``subprocess.Popen``
(vfork, ``close_fds``) starts them, and the loop reads their output and
watches a pidfd for their exit. Not asyncio's subprocess transports: under
uvloop those leave copies of the child's stdio pipes open in it, and a shim's
``start`` hands such copies on to the server it leaves running, so its
output never reaches end-of-file and the daemon waits forever (every fd
beyond 0-2 in the child must be one the shim asked for).

The ``log`` FIFO in the bundle is the shim's stderr (it opens the FIFO for
writing when it starts serving; Go shims refuse to start without it). The
daemon holds the read side open for the shim's lifetime and copies each line
into its own log; holding it open also keeps a shim's writes from failing
while nobody reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from berth import errdefs
from berth.core.runtime.bundle import Bundle

__all__ = ["ShimBinary", "ShimLog", "binary_name", "resolve_runtime_path"]

log = logging.getLogger("berth.runtime")
shim_log = logging.getLogger("berth.runtime.shimlog")

TTRPC_ADDRESS_ENV = "TTRPC_ADDRESS"
SHIM_GROUP_ENV = "BERTH_SHIM_GROUP"
START_TIMEOUT = 60.0


def binary_name(runtime: str) -> str:
    """``containerd-shim-<name>-<version>`` for a runtime name, "" if it has no two parts."""
    parts = runtime.split(".")
    if len(parts) < 2:
        return ""
    return f"containerd-shim-{parts[-2]}-{parts[-1]}"


def _self_dirs() -> list[str]:
    dirs = []
    for exe in (sys.executable, sys.argv[0] if sys.argv else ""):
        if exe and os.path.isabs(exe):
            d = os.path.dirname(exe)
            if d not in dirs:
                dirs.append(d)
    return dirs


def resolve_runtime_path(runtime: str, *, extra_dirs: Sequence[str] | None = None) -> str:
    """The absolute path of the shim binary for ``runtime``.

    ``extra_dirs`` are searched after ``PATH`` (default: the directories of
    the running interpreter and program). Raises ``errdefs.BerthError`` (the
    UNKNOWN code, as containerd returns) when the name is malformed or no
    binary is installed.
    """
    if not runtime:
        raise errdefs.BerthError("no runtime name")
    if os.path.isabs(runtime):
        try:
            os.stat(runtime)
        except OSError as exc:
            raise errdefs.BerthError(
                f"invalid custom binary path: stat {runtime}: {exc.strerror}"
            ) from None
        return runtime
    name = binary_name(runtime)
    if not name:
        raise errdefs.BerthError(
            f"invalid runtime name {runtime}, correct runtime name should be either format"
            " like `io.containerd.runc.v1` or a full path to the binary"
        )
    found = shutil.which(name)
    if found is None:
        for d in _self_dirs() if extra_dirs is None else extra_dirs:
            candidate = os.path.join(d, name)
            if os.access(candidate, os.X_OK):
                found = candidate
                break
    if found is None:
        raise errdefs.BerthError(
            f'runtime "{runtime}" binary not installed "{name}": file does not exist'
        )
    return os.path.abspath(found)


class ShimLog:
    """The read side of a bundle's ``log`` FIFO, copied line by line into our log."""

    def __init__(self, fd: int, *, namespace: str, id: str) -> None:
        self._fd = fd
        self._fields = {"namespace": namespace, "id": id}
        self._partial = b""
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def open(cls, bundle: Bundle) -> ShimLog:
        """Create (if needed) and open the FIFO. Blocking; call from a thread."""
        path = bundle.log_fifo
        try:
            if not stat.S_ISFIFO(os.lstat(path).st_mode):
                raise errdefs.FailedPrecondition(f"{path} exists and is not a FIFO")
        except FileNotFoundError:
            os.mkfifo(path, 0o700)
        # Read-write: opening never blocks for a writer, and the pipe never
        # reports EOF while the shim restarts its logging.
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        return cls(fd, namespace=bundle.namespace, id=bundle.id)

    def attach(self) -> None:
        """Start copying on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not data:
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > 65536:
            lines.append(self._partial)
            self._partial = b""
        for raw in lines:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            level = logging.DEBUG
            if "level=error" in line or "level=fatal" in line:
                level = logging.ERROR
            elif "level=warn" in line:
                level = logging.WARNING
            shim_log.log(level, line, extra={"fields": self._fields})

    def close(self) -> None:
        if self._fd < 0:
            return
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1


class ShimBinary:
    """The commands of one shim binary for one bundle."""

    def __init__(
        self,
        binary: str,
        bundle: Bundle,
        *,
        address: str,
        ttrpc_address: str,
        publish_binary: str,
        debug: bool = False,
    ) -> None:
        self.binary = binary
        self.bundle = bundle
        self.address = address
        self.ttrpc_address = ttrpc_address
        self.publish_binary = publish_binary
        self.debug = debug

    def _argv(self, *args: str) -> list[str]:
        return [
            self.binary,
            "-namespace",
            self.bundle.namespace,
            "-address",
            self.address,
            "-publish-binary",
            self.publish_binary,
            *args,
        ]

    def _env(self, group: str = "") -> dict[str, str]:
        env = dict(os.environ)
        env["GOMAXPROCS"] = "2"
        env[TTRPC_ADDRESS_ENV] = self.ttrpc_address
        # Never inherited from the daemon's own environment: only the
        # manager decides grouping.
        env.pop(SHIM_GROUP_ENV, None)
        if group:
            env[SHIM_GROUP_ENV] = group
        return env

    async def _run(
        self,
        argv: list[str],
        *,
        stdin: bytes | None,
        cwd: str,
        combined: bool,
        timeout: float,
        group: str = "",
    ) -> tuple[int, bytes, bytes]:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=self._env(group),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if combined else subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        try:
            async with asyncio.timeout(timeout):
                return await _communicate(proc, stdin)
        except BaseException:
            # Only our own child, by its pid; what it already spawned (a shim
            # server in its own session) is cleaned up by the caller.
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.shield(_wait(proc))
            raise
        finally:
            for f in (proc.stdin, proc.stdout, proc.stderr):
                if f is not None:
                    f.close()

    async def start(self, options: bytes | None, *, group: str = "") -> str:
        """Run ``start`` and return the address the shim printed.

        ``group`` (Berth's shim only) names the shim server group to join
        unless the spec names one. Raises ``errdefs.BerthError`` carrying the
        shim's output and exit status when it fails.
        """
        args = ["-id", self.bundle.id]
        if self.debug:
            args.append("-debug")
        args.append("start")
        try:
            rc, out, _ = await self._run(
                self._argv(*args),
                stdin=options,
                cwd=str(self.bundle.path),
                combined=True,
                timeout=START_TIMEOUT,
                group=group,
            )
        except TimeoutError:
            raise errdefs.DeadlineExceeded(
                f"shim {self.binary} did not start within {START_TIMEOUT:.0f}s"
            ) from None
        except OSError as exc:
            raise errdefs.BerthError(f"fork/exec {self.binary}: {exc.strerror}") from None
        text = out.decode(errors="replace").strip()
        if rc != 0:
            raise errdefs.BerthError(f"{text}: exit status {rc}")
        if not text:
            raise errdefs.BerthError(f"shim {self.binary} printed no address")
        return text

    async def delete(self, timeout: float) -> bytes:
        """Run ``delete`` (cleanup after a dead shim); return its stdout.

        The stdout is a serialized ``DeleteResponse``. Raises
        ``errdefs.BerthError`` with the shim's stderr when it fails, and
        DeadlineExceeded when it takes longer than ``timeout``.
        """
        cwd = str(self.bundle.path) if self.bundle.path.is_dir() else "/"
        argv = self._argv("-id", self.bundle.id, "-bundle", str(self.bundle.path), "delete")
        try:
            rc, out, err = await self._run(
                argv, stdin=None, cwd=cwd, combined=False, timeout=timeout
            )
        except TimeoutError:
            raise errdefs.DeadlineExceeded(
                f"shim delete for {self.bundle.id} timed out after {timeout:.0f}s"
            ) from None
        except OSError as exc:
            raise errdefs.BerthError(f"fork/exec {self.binary}: {exc.strerror}") from None
        warnings = err.decode(errors="replace").strip()
        if rc != 0:
            raise errdefs.BerthError(f"{warnings}: exit status {rc}")
        if warnings:
            log.warning(
                "cleanup warnings",
                extra={"fields": {"id": self.bundle.id, "warnings": warnings}},
            )
        return out


async def _read_all(fd: int) -> bytes:
    """Everything readable from ``fd`` until end-of-file, without blocking the loop."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            data = b""
            if not done.done():
                done.set_exception(exc)
        if data:
            chunks.append(data)
            return
        loop.remove_reader(fd)
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks)


async def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to ``fd`` without blocking the loop. A reader that goes away early (EPIPE) is not an error: its exit status
    tells what happened."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    view = memoryview(data)
    try:
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_writer(fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(fd)
    except (BrokenPipeError, ConnectionResetError):
        pass


async def wait_pid_exit(pid: int) -> None:
    """Return once process ``pid`` has exited, watching a pidfd on the loop.

    No child watcher is involved, so it works for any process (a shim that
    is not our child) and under any event loop. Returns at once when the
    process is already gone or cannot be watched.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # already gone (ESRCH), or not ours to watch
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_exit)
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


async def _wait(proc: subprocess.Popen[bytes]) -> int:
    """The exit status of our child ``proc``."""
    if proc.returncode is None:
        await wait_pid_exit(proc.pid)
    return proc.wait()


async def _communicate(
    proc: subprocess.Popen[bytes], stdin: bytes | None
) -> tuple[int, bytes, bytes]:
    """Feed ``stdin``, collect stdout and stderr, and wait for the exit."""
    jobs: list[asyncio.Future[bytes]] = []
    assert proc.stdout is not None
    jobs.append(asyncio.ensure_future(_read_all(proc.stdout.fileno())))
    if proc.stderr is not None:
        jobs.append(asyncio.ensure_future(_read_all(proc.stderr.fileno())))
    try:
        if proc.stdin is not None:
            await _write_all(proc.stdin.fileno(), stdin or b"")
            proc.stdin.close()
        outputs = await asyncio.gather(*jobs)
    except BaseException:
        for job in jobs:
            job.cancel()
        raise
    rc = await _wait(proc)
    return rc, outputs[0], outputs[1] if len(outputs) > 1 else b""


def default_publish_binary() -> str:
    """What shims are told to run to publish events: ``berthd`` when it can be found.

    Shims of containerd 1.6 forward events over ttrpc and never run it, but
    the flag is part of the command line contract.
    """
    for d in _self_dirs():
        candidate = Path(d) / "berthd"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("berthd") or sys.executable
