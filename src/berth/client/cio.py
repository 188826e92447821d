"""Client-side task I/O, as containerd's ``cio`` package does it.

A task's standard streams do not travel over gRPC. The client makes FIFOs
(``<dir>/<id>-stdin``, ``-stdout``, ``-stderr`` in a fresh 0700 directory),
names them in CreateTaskRequest/ExecProcessRequest, and copies bytes between
them and its own streams; the shim opens the other ends. Instead of FIFOs a
task may be given a log URI (``file:///path``, ``binary:///path?k=v``) that
the shim handles alone, or nothing at all.

What a caller hands to ``new_task``/``exec`` is a *creator*: a callable
taking the process id and returning an :class:`IO`. The creators here:

* :func:`stdio` -- this process's stdin/stdout/stderr (``ctr run``'s default);
* :func:`streams` -- given binary streams (``io.BytesIO``, files, sockets...);
* :func:`null_io` -- nothing (the process gets /dev/null);
* :func:`log_file` / :func:`log_uri` / :func:`binary_logger` -- the shim
  writes output itself; nothing is copied here.

Re-attaching to a running task reuses the FIFOs its process was created
with: pass :func:`attach_streams` (or :func:`attach_stdio`) as ``attach=``
when loading the task.

Design note: threads, not asyncio
=================================

Copying runs on small daemon threads for both the blocking and the asyncio
SDK. The streams being copied (a terminal, a pipe, a Python file object) are
blocking objects owned by the caller, and one implementation serves both
clients; the asyncio client only awaits :meth:`IO.wait` in a worker thread.
Every FIFO descriptor is non-blocking and every wait is a ``poll`` that also
watches a wake-up pipe, so :meth:`IO.cancel` stops all copying promptly (a
thread blocked in ``open`` or ``write`` could not be stopped).

The read ends of the output FIFOs are opened when the IO is made, before the
task exists: on Linux a reader that was present before any writer is told
about EOF only after a writer has come and gone, so a process that exits at
once is still read to its end. The stdin FIFO is opened for writing once the
shim has opened it for reading (retrying ENXIO), and at EOF of the source the
write end is closed and the ``on_stdin_eof`` hook (the task's CloseIO) runs,
as ``ctr`` does, since a shim may hold a write end of its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO as _PyIO
from typing import Any, Protocol

__all__ = [
    "DEFAULT_FIFO_DIR",
    "IO",
    "Attacher",
    "Creator",
    "IOConfig",
    "attach_stdio",
    "attach_streams",
    "binary_logger",
    "load",
    "log_file",
    "log_uri",
    "null_io",
    "raw_terminal",
    "stdio",
    "streams",
    "terminal_size",
]

#: Where FIFO directories are made when the caller is root and names none
#: (containerd uses /run/containerd/fifo); others get the temp directory.
DEFAULT_FIFO_DIR = "/run/berth/fifo"

_CHUNK = 32 * 1024
# How often a stdin writer retries while the shim has not opened its end yet.
_OPEN_RETRY = 0.005


class _Reader(Protocol):
    def read(self, n: int = ..., /) -> bytes: ...


class _Writer(Protocol):
    def write(self, data: bytes, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class IOConfig:
    """What the daemon is told about a process's I/O: paths or URIs (empty: none)."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


class IO:
    """The client side of one process's I/O.

    :attr:`config` goes in the create/exec request. :meth:`wait` returns once
    all output has been copied (the process and everything holding its
    stdout has gone); :meth:`cancel` stops copying at once; :meth:`close`
    cancels and removes the FIFOs. Tasks and processes call these for you
    on delete. Safe to call from any thread, and more than once.
    """

    def __init__(self, config: IOConfig) -> None:
        self.config = config
        self._closed = False

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until output is fully copied; False if ``timeout`` passed first."""
        return True

    def cancel(self) -> None:
        """Stop copying now (output still in flight is dropped)."""

    def close(self) -> None:
        """Cancel, then release the FIFOs and their directory."""
        self._closed = True

    def _on_stdin_eof(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once the stdin source has reached EOF (now, if it already has)."""


#: Makes the IO for a new process from its id (container id or exec id).
Creator = Callable[[str], IO]
#: Makes the IO for an existing process from what it was created with.
Attacher = Callable[[IOConfig], IO]


# --- FIFO copying ------------------------------------------------------------------------


# The standard library's tempfile and shutil are not used on the paths every
# `berth run` takes: importing them costs more than what is used of them.


def _fifo_root(fifo_dir: str | None) -> str:
    if fifo_dir:
        return fifo_dir
    if os.geteuid() == 0:
        return DEFAULT_FIFO_DIR
    import tempfile

    return tempfile.gettempdir()


def _make_dir(root: str) -> str:
    """A new directory under ``root`` with a random name, mode 0700 (as mkdtemp)."""
    while True:
        d = os.path.join(root, "io-" + os.urandom(8).hex())
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        return d


def _remove_dir(d: str) -> None:
    """Remove a FIFO directory: the FIFOs in it, then it. Never raises."""
    try:
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)
    except FileNotFoundError:
        pass
    except OSError:
        # Something other than our FIFOs is in there: remove whatever it is.
        import shutil

        shutil.rmtree(d, ignore_errors=True)


def _make_fifos(
    id: str, fifo_dir: str | None, stdin: bool, stdout: bool, stderr: bool
) -> tuple[str, IOConfig]:
    root = _fifo_root(fifo_dir)
    os.makedirs(root, mode=0o700, exist_ok=True)
    d = _make_dir(root)  # 0700: only root reaches the FIFOs
    paths = {}
    for name, wanted in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
        if wanted:
            paths[name] = os.path.join(d, f"{id}-{name}")
            os.mkfifo(paths[name], 0o700)
    return d, IOConfig(paths.get("stdin", ""), paths.get("stdout", ""), paths.get("stderr", ""))


class _FifoIO(IO):
    """Copies between FIFOs and caller streams on daemon threads."""

    def __init__(
        self,
        config: IOConfig,
        *,
        directory: str | None,
        stdin: _Reader | None,
        stdout: _Writer | None,
        stderr: _Writer | None,
    ) -> None:
        super().__init__(config)
        self._dir = directory
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._stdin_hook: Callable[[], None] | None = None
        self._stdin_done = False
        self._output: list[threading.Thread] = []
        self._threads: list[threading.Thread] = []
        # Output read ends first, before any writer can exist (see the module note).
        outs: list[tuple[int, _Writer]] = []
        try:
            if config.stdout and stdout is not None:
                outs.append((_open_read(config.stdout), stdout))
            if config.stderr and stderr is not None and not config.terminal:
                outs.append((_open_read(config.stderr), stderr))
        except BaseException:
            for fd, _ in outs:
                os.close(fd)
            self._release()
            raise
        for fd, dst in outs:
            t = threading.Thread(target=self._copy_out, args=(fd, dst), daemon=True)
            self._output.append(t)
        if config.stdin and stdin is not None:
            self._threads.append(
                threading.Thread(target=self._copy_in, args=(config.stdin, stdin), daemon=True)
            )
        else:
            self._stdin_done = True
        for t in [*self._output, *self._threads]:
            t.name = f"berth-cio-{t.name}"
            t.start()

    # -- copying --

    def _poll(self, fd: int, events: int) -> bool:
        """Wait for ``events`` on ``fd``; False once cancelled."""
        p = select.poll()
        p.register(fd, events)
        p.register(self._wake_r, select.POLLIN)
        while True:
            ready = dict(p.poll())
            if self._wake_r in ready or self._cancelled.is_set():
                return False
            if fd in ready:
                return True

    def _copy_out(self, fd: int, dst: _Writer) -> None:
        flush = getattr(dst, "flush", None)
        try:
            while self._poll(fd, select.POLLIN):
                try:
                    data = os.read(fd, _CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    return  # every writer has gone: the output is complete
                dst.write(data)
                if flush is not None:
                    flush()
        except (OSError, ValueError):
            return  # the destination was closed under us: stop quietly
        finally:
            os.close(fd)

    def _copy_in(self, path: str, src: _Reader) -> None:
        fd = self._open_write(path)
        if fd is None:
            return
        try:
            src_fd = _fileno(src)
            while True:
                if src_fd is not None:
                    if not self._poll(src_fd, select.POLLIN):
                        return
                    try:
                        data = os.read(src_fd, _CHUNK)
                    except BlockingIOError:
                        continue
                else:
                    data = src.read(_CHUNK)
                if self._cancelled.is_set():
                    return
                if not data:
                    break
                if not self._write_all(fd, data):
                    return
        except (OSError, ValueError):
            return  # the process closed its stdin, or the source broke
        finally:
            os.close(fd)
        self._stdin_eof()

    def _open_write(self, path: str) -> int | None:
        while not self._cancelled.is_set():
            try:
                return os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    return None  # the FIFO is gone: the IO was closed
            # No reader yet: the shim opens its end while creating the process.
            self._cancelled.wait(_OPEN_RETRY)
        return None

    def _write_all(self, fd: int, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            if not self._poll(fd, select.POLLOUT):
                return False
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                continue
            view = view[n:]
        return True

    def _stdin_eof(self) -> None:
        with self._lock:
            self._stdin_done = True
            hook = self._stdin_hook
        if hook is not None:
            _run_hook(hook)

    def _on_stdin_eof(self, hook: Callable[[], None]) -> None:
        with self._lock:
            self._stdin_hook = hook
            done = self._stdin_done and bool(self.config.stdin) and not self._cancelled.is_set()
        if done and self._threads:
            _run_hook(hook)

    # -- lifecycle --

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._output:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            t.join(left)
            if t.is_alive():
                return False
        return True

    def cancel(self) -> None:
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        self.cancel()
        current = threading.current_thread()
        for t in [*self._output, *self._threads]:
            if t is not current:
                # A stdin thread blocked reading a source without a file
                # descriptor cannot be woken; it is a daemon and ends with the
                # next read, so it is not waited for.
                t.join(0.5 if t in self._threads else 5.0)
        if not self._closed:
            self._closed = True
            self._release()

    def _release(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._dir:
            _remove_dir(self._dir)


def _run_hook(hook: Callable[[], None]) -> None:
    # The hook is an RPC (CloseIO); a process already gone has nothing to close.
    with contextlib.suppress(Exception):
        hook()


def _open_read(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)


def _fileno(stream: object) -> int | None:
    fileno = getattr(stream, "fileno", None)
    if fileno is None:
        return None
    try:
        return int(fileno())
    except (OSError, ValueError, TypeError):
        return None  # io.BytesIO and friends have no descriptor


# --- creators ------------------------------------------------------------------------------


class _Discard:
    """A destination that drops what it is given."""

    def write(self, data: bytes) -> int:
        return len(data)


def streams(
    stdin: _Reader | None = None,
    stdout: _Writer | None = None,
    stderr: _Writer | None = None,
    *,
    terminal: bool = False,
    fifo_dir: str | None = None,
) -> Creator:
    """Copy between FIFOs and the given binary streams.

    A stream left None gets no FIFO (the process's end is /dev/null). With
    ``terminal`` the process gets a pty: its output, stdout and stderr
    together, arrives on ``stdout``, and ``stderr`` is unused. ``fifo_dir``
    is where the FIFO directory is made (default :data:`DEFAULT_FIFO_DIR`
    for root, else the temp directory).
    """

    def create(id: str) -> IO:
        # Without a terminal, stdout and stderr come as a pair: containerd's
        # Go shim refuses one FIFO without the other, so the unwanted one is
        # made too and read into nothing.
        out, err = stdout, None if terminal else stderr
        if not terminal and (out is not None or err is not None):
            out = out if out is not None else _Discard()
            err = err if err is not None else _Discard()
        d, cfg = _make_fifos(id, fifo_dir, stdin is not None, out is not None, err is not None)
        cfg = IOConfig(cfg.stdin, cfg.stdout, cfg.stderr, terminal)
        try:
            return _FifoIO(cfg, directory=d, stdin=stdin, stdout=out, stderr=err)
        except BaseException:
            _remove_dir(d)
            raise

    return create


def stdio(*, stdin: bool = True, terminal: bool = False, fifo_dir: str | None = None) -> Creator:
    """This process's own stdin, stdout and stderr (``stdin=False``: no input)."""
    return streams(
        sys.stdin.buffer if stdin else None,
        sys.stdout.buffer,
        None if terminal else sys.stderr.buffer,
        terminal=terminal,
        fifo_dir=fifo_dir,
    )


def null_io(id: str) -> IO:
    """A creator giving the process no I/O at all (``ctr run --null-io``)."""
    return IO(IOConfig())


def log_uri(uri: str) -> Creator:
    """Let the shim send stdout and stderr to ``uri`` (``file://``, ``binary://``...).

    Nothing is copied by this process, and there is no stdin.
    """

    def create(id: str) -> IO:
        return IO(IOConfig(stdout=uri, stderr=uri))

    return create


def log_file(path: str | os.PathLike[str]) -> Creator:
    """Let the shim append stdout and stderr to the file ``path`` (made absolute)."""
    from urllib.parse import quote

    return log_uri("file://" + quote(os.path.abspath(os.fspath(path))))


def binary_logger(path: str | os.PathLike[str], args: Mapping[str, str] | None = None) -> Creator:
    """Let the shim start the logging binary ``path`` and feed it the output.

    ``args`` become the URI's query (containerd passes them on to the binary).
    """
    from urllib.parse import quote, urlencode

    uri = "binary://" + quote(os.path.abspath(os.fspath(path)))
    if args:
        uri += "?" + urlencode(sorted(args.items()))
    return log_uri(uri)


def attach_streams(
    stdin: _Reader | None = None,
    stdout: _Writer | None = None,
    stderr: _Writer | None = None,
) -> Attacher:
    """Re-open an existing process's FIFOs and copy with the given streams.

    Only FIFOs are attached; a process created with a log URI or without
    I/O gets an IO that copies nothing. The FIFOs are left in place when
    this IO closes; deleting the process removes them.
    """

    def attach(cfg: IOConfig) -> IO:
        fifo = IOConfig(
            _fifo_or_empty(cfg.stdin),
            _fifo_or_empty(cfg.stdout),
            _fifo_or_empty(cfg.stderr),
            cfg.terminal,
        )
        return _FifoIO(fifo, directory=None, stdin=stdin, stdout=stdout, stderr=stderr)

    return attach


def attach_stdio(*, stdin: bool = True) -> Attacher:
    """:func:`attach_streams` with this process's stdin, stdout and stderr."""
    return attach_streams(sys.stdin.buffer if stdin else None, sys.stdout.buffer, sys.stderr.buffer)


def _fifo_or_empty(path: str) -> str:
    import stat

    if not path or "://" in path:
        return ""
    try:
        return path if stat.S_ISFIFO(os.stat(path).st_mode) else ""
    except OSError:
        return ""


# --- the local terminal ------------------------------------------------------------------


def terminal_size(fd: int | _PyIO[Any] | None = None) -> tuple[int, int]:
    """``(columns, rows)`` of the terminal on ``fd`` (default: stdin)."""
    if fd is None:
        fd = sys.stdin.fileno()
    elif not isinstance(fd, int):
        fd = fd.fileno()
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return cols, rows


@contextlib.contextmanager
def raw_terminal(fd: int | None = None) -> Iterator[None]:
    """Put the terminal on ``fd`` (default: stdin) in raw mode for the block.

    Keys then reach the container as typed (^C included); the previous mode
    is restored on exit, whatever happens.
    """
    import tty

    if fd is None:
        fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class _Loaded(IO):
    """A process's FIFOs known only by path (a task loaded without attaching):
    nothing is copied, and closing removes the directory ``streams`` made."""

    def __init__(self, config: IOConfig, directory: str | None) -> None:
        super().__init__(config)
        self._dir = directory

    def close(self) -> None:
        if not self._closed and self._dir:
            _remove_dir(self._dir)
        self._closed = True


def load(config: IOConfig, id: str) -> IO:
    """The IO of an existing process ``id`` without copying (containerd's ``cio.Load``).

    Closing it removes the FIFO directory, but only one this module made:
    every FIFO named ``<id>-stdin``/``-stdout``/``-stderr`` in one directory.
    """
    paths = [p for p in (config.stdin, config.stdout, config.stderr) if p]
    dirs = {os.path.dirname(p) for p in paths}
    ours = (
        len(dirs) == 1
        and all("://" not in p for p in paths)
        and all(
            os.path.basename(p) in (f"{id}-stdin", f"{id}-stdout", f"{id}-stderr") for p in paths
        )
    )
    return _Loaded(config, dirs.pop() if ours else None)
