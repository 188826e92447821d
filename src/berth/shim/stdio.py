"""A task process's standard I/O: FIFOs, files, logging binaries, terminals.

Owns opening what the client named in CreateTaskRequest/ExecProcessRequest,
handing descriptors to runc, and whatever the shim must keep running for the
process's lifetime.

Without a terminal nothing is copied: the container gets the client's FIFO
(or log file, or the pipes of a ``binary://`` logger) directly as its
descriptors, so output costs no shim CPU at all. Two holders keep the
containerd semantics that copying would otherwise give:

* stdin: the shim keeps a write end of the stdin FIFO open, so the process
  does not see EOF before the client attaches; CloseIO drops it, and EOF
  arrives once the client's writer is gone too;
* stdout/stderr: the shim keeps a read end open, so a process whose client
  went away blocks on a full FIFO instead of dying of SIGPIPE, and a client
  can re-attach.

With a terminal the container's side is a pty whose master runc sends over a
console socket (SCM_RIGHTS); the shim pumps bytes between the master and the
FIFOs with non-blocking reads and writes on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import stat
import struct
import tempfile
import termios
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from berth import errdefs
from berth.shim.reaper import Reaper, kill_quietly
from berth.shim.runc import Stdio

__all__ = [
    "Console",
    "ConsoleSocket",
    "ProcessIO",
    "StdioConfig",
    "open_io",
]

log = logging.getLogger(__name__)

LOGGER_READY_TIMEOUT = 10.0
LOGGER_STOP_TIMEOUT = 12.0


@dataclass(frozen=True, slots=True)
class StdioConfig:
    """What the client asked for (paths or URIs, '' for none)."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False

    @property
    def is_null(self) -> bool:
        return not (self.stdin or self.stdout or self.stderr)


def _close(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


@dataclass
class ProcessIO:
    """Descriptors for runc plus what the shim holds while the process lives."""

    stdio: Stdio = field(default_factory=Stdio)
    #: The shim's write end of the stdin FIFO (closed by CloseIO).
    stdin_writer: int | None = None
    #: Read ends kept open on output FIFOs (closed at delete).
    holders: list[int] = field(default_factory=list)
    logger_pid: int | None = None
    logger_exit: asyncio.Future[int] | None = None
    _given: list[int] = field(default_factory=list)

    def close_after_start(self) -> None:
        """Drop the shim's copies of the descriptors runc passed on."""
        for fd in self._given:
            _close(fd)
        self._given.clear()
        self.stdio = Stdio()

    def close_stdin(self) -> None:
        _close(self.stdin_writer)
        self.stdin_writer = None

    async def close(self) -> None:
        """Release everything; stops a logging binary (SIGTERM, then SIGKILL)."""
        self.close_after_start()
        self.close_stdin()
        for fd in self.holders:
            _close(fd)
        self.holders.clear()
        pid, fut = self.logger_pid, self.logger_exit
        self.logger_pid = self.logger_exit = None
        if pid is not None and fut is not None and not fut.done():
            kill_quietly(pid, 15)
            try:
                async with asyncio.timeout(LOGGER_STOP_TIMEOUT):
                    await asyncio.shield(fut)
            except TimeoutError:
                log.warning("logging binary %d ignored SIGTERM, killing it", pid)
                kill_quietly(pid, 9)


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def _open_output(path: str, pio: ProcessIO) -> int:
    """Open an output path for the container; returns the fd to hand over."""
    if _is_fifo(path):
        # The read holder first: with a reader present, the non-blocking
        # write open cannot fail with ENXIO.
        holder = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        pio.holders.append(holder)
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(fd, True)
        return fd
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except OSError as exc:
        raise errdefs.FailedPrecondition(
            f"containerd-shim: opening w/o fifo {path!r} failed: {exc.strerror}"
        ) from None


def _open_stdin(path: str, pio: ProcessIO) -> int:
    if _is_fifo(path):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        pio.stdin_writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(fd, True)
        return fd
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise errdefs.FailedPrecondition(
            f"failed to open stdin fifo {path}: {exc.strerror}"
        ) from None


async def open_io(reaper: Reaper, cfg: StdioConfig, *, id: str, namespace: str) -> ProcessIO:
    """Prepare non-terminal I/O for one process.

    Raises FailedPrecondition when a path cannot be opened and
    InvalidArgument for an unknown URI scheme.
    """
    pio = ProcessIO()
    try:
        await _open_io(reaper, cfg, pio, id=id, namespace=namespace)
    except BaseException:
        await pio.close()
        raise
    return pio


async def _open_io(
    reaper: Reaper, cfg: StdioConfig, pio: ProcessIO, *, id: str, namespace: str
) -> None:
    if cfg.is_null:
        return
    uri = urlsplit(cfg.stdout) if cfg.stdout else None
    scheme = uri.scheme if uri is not None and uri.scheme else "fifo"
    if cfg.stdin:
        fd = _open_stdin(cfg.stdin, pio)
        pio._given.append(fd)
        pio.stdio.stdin = fd
    if scheme == "fifo":
        out = err = None
        if cfg.stdout:
            out = _open_output(cfg.stdout, pio)
            pio._given.append(out)
        if cfg.stderr:
            if cfg.stderr == cfg.stdout and out is not None:
                err = out
            else:
                err = _open_output(cfg.stderr, pio)
                pio._given.append(err)
        pio.stdio.stdout, pio.stdio.stderr = out, err
    elif scheme == "file":
        assert uri is not None
        path = uri.path
        try:
            os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise errdefs.FailedPrecondition(
                f"containerd-shim: opening file {path!r} failed: {exc.strerror}"
            ) from None
        pio._given.append(fd)
        pio.stdio.stdout = pio.stdio.stderr = fd
    elif scheme == "binary":
        assert uri is not None
        await _start_logger(reaper, uri.path, uri.query, pio, id=id, namespace=namespace)
    else:
        raise errdefs.InvalidArgument(f"unknown STDIO scheme {scheme}")


async def _start_logger(
    reaper: Reaper, path: str, query: str, pio: ProcessIO, *, id: str, namespace: str
) -> None:
    """Start a ``binary://`` logger: it reads the container's stdout on fd 3
    and stderr on fd 4, and closes (or writes to) fd 5 once it is ready."""
    argv = [path]
    for key, value in parse_qsl(query, keep_blank_values=True):
        argv.append(key)
        if value:
            argv.append(value)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pio._given += [out_w, err_w]
    try:
        try:
            pid, fut = reaper.spawn(
                argv,
                extra_fds=(out_r, err_r, ready_w),
                # As containerd does: the logger sees only these two variables.
                env={"CONTAINER_ID": id, "CONTAINER_NAMESPACE": namespace},
            )
        except OSError as exc:
            raise errdefs.FailedPrecondition(
                f"failed to start binary process: {exc.strerror}"
            ) from None
        pio.logger_pid, pio.logger_exit = pid, fut
        _close(ready_w)
        ready_w = -1
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def on_ready() -> None:
            if not ready.done():
                ready.set_result(None)

        os.set_blocking(ready_r, False)
        loop.add_reader(ready_r, on_ready)
        try:
            async with asyncio.timeout(LOGGER_READY_TIMEOUT):
                await ready
        except TimeoutError:
            raise errdefs.FailedPrecondition(
                f"failed to read from logging binary: not ready after {LOGGER_READY_TIMEOUT:g}s"
            ) from None
        finally:
            loop.remove_reader(ready_r)
    finally:
        for fd in (out_r, err_r, ready_r, ready_w):
            _close(fd)
    pio.stdio.stdout, pio.stdio.stderr = out_w, err_w


# -- terminals ------------------------------------------------------------------


class ConsoleSocket:
    """A listening unix socket for runc's ``--console-socket``.

    Lives in a fresh short directory under /tmp: bundle paths can exceed the
    107-byte socket path limit.
    """

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="pty", dir="/tmp")
        self.path = os.path.join(self._dir, "pty.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(1)
        self._sock.setblocking(False)

    async def receive_master(self) -> int:
        """Wait for runc to connect and send the pty master; returns its fd."""
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self._sock)
        with conn:
            conn.setblocking(False)
            fut: asyncio.Future[int] = loop.create_future()

            def readable() -> None:
                try:
                    _, fds, _, _ = socket.recv_fds(conn, 4096, 4)
                except BlockingIOError:
                    return
                except OSError as exc:
                    if not fut.done():
                        fut.set_exception(exc)
                    return
                if not fut.done():
                    if fds:
                        for extra in fds[1:]:
                            _close(extra)
                        fut.set_result(fds[0])
                    else:
                        fut.set_exception(
                            errdefs.FailedPrecondition("console socket: no descriptor received")
                        )

            loop.add_reader(conn.fileno(), readable)
            try:
                return await fut
            finally:
                loop.remove_reader(conn.fileno())

    def close(self) -> None:
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class _Pump:
    """Copy bytes from one non-blocking fd to another on the event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        src: int,
        dst: int,
        on_done: Callable[[_Pump], None],
    ) -> None:
        self._loop = loop
        self.src, self.dst = src, dst
        self._pending = b""
        self._on_done = on_done
        self.done = False
        loop.add_reader(src, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.src, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: the pty's last slave closed
        if not data:
            self.stop()
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            n = os.write(self.dst, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EIO, errno.EBADF):
                self.stop()
                return
            raise
        if n < len(data):
            self._pending = data[n:]
            self._loop.remove_reader(self.src)
            self._loop.add_writer(self.dst, self._writable)

    def _writable(self) -> None:
        data, self._pending = self._pending, b""
        self._loop.remove_writer(self.dst)
        if data:
            self._write(data)
        if not self._pending and not self.done:
            self._loop.add_reader(self.src, self._readable)

    def stop(self) -> None:
        if self.done:
            return
        self.done = True
        self._loop.remove_reader(self.src)
        self._loop.remove_writer(self.dst)
        self._on_done(self)


class Console:
    """A pty master wired to the client's FIFOs."""

    def __init__(self, master: int) -> None:
        self.master = master
        os.set_blocking(master, False)
        self._fds: list[int] = []
        self.stdin_writer: int | None = None
        self._pumps: list[_Pump] = []
        self._output_done = asyncio.get_running_loop().create_future()

    def start(self, cfg: StdioConfig) -> None:
        """Begin copying stdin FIFO -> master and master -> stdout FIFO."""
        loop = asyncio.get_running_loop()
        if cfg.stdin:
            src = os.open(cfg.stdin, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            self._fds.append(src)
            if _is_fifo(cfg.stdin):
                self.stdin_writer = os.open(cfg.stdin, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            self._pumps.append(_Pump(loop, src, self.master, self._pump_done))
        if cfg.stdout:
            if _is_fifo(cfg.stdout):
                self._fds.append(os.open(cfg.stdout, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
                dst = os.open(cfg.stdout, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            else:
                dst = os.open(cfg.stdout, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                os.set_blocking(dst, False)
            self._fds.append(dst)
            self._out = _Pump(loop, self.master, dst, self._pump_done)
            self._pumps.append(self._out)
        else:
            self._output_done.set_result(None)

    def _pump_done(self, pump: _Pump) -> None:
        if pump.dst != self.master:
            # Output finished: let the client's reader see EOF now.
            _close(pump.dst)
            with contextlib.suppress(ValueError):
                self._fds.remove(pump.dst)
            if not self._output_done.done():
                self._output_done.set_result(None)

    def resize(self, width: int, height: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    def close_stdin(self) -> None:
        _close(self.stdin_writer)
        self.stdin_writer = None

    async def wait_output(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._output_done)

    def close(self) -> None:
        for pump in self._pumps:
            pump.stop()
        self._pumps.clear()
        self.close_stdin()
        for fd in self._fds:
            _close(fd)
        self._fds.clear()
        _close(self.master)
        self.master = -1
