"""The long-running shim server: one asyncio loop serving the Task API.

Owns process-wide setup (subreaper, signals, the shim log, the listening
socket) and the shutdown sequence: remove the socket file, stop serving,
deliver queued events, exit.

The socket file is removed once, and while the server still listens: after
that the path may be claimed by a new server of the same group (``start``
replaces only sockets nobody listens on), so a second removal, or one after
the listener closed, could take the path from a live server.

Footprint notes: the server imports protobuf and the generated task/event
modules once, keeps no thread pool unless a blocking call needs one (mounts),
and does not copy non-terminal I/O at all (see :mod:`berth.shim.stdio`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import sys

from berth.shim.main import SHIM_SOCKET_ENV, TTRPC_ADDRESS_ENV, Flags, state_dir

__all__ = ["serve"]

log = logging.getLogger("berth.shim")

SHUTDOWN_FLUSH_TIMEOUT = 5.0


def _open_log(debug: bool) -> None:
    """containerd opens a FIFO named ``log`` in the bundle and copies what
    the shim writes there into its own log; use it as stderr when present."""
    try:
        if stat.S_ISFIFO(os.stat("log").st_mode):
            fd = os.open("log", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.set_blocking(fd, True)
            os.dup2(fd, 2)
            os.close(fd)
    except OSError:
        pass  # nobody reading: keep /dev/null
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if debug else logging.INFO,
        format="time=%(asctime)s level=%(levelname)s msg=%(message)r runtime=io.containerd.berth.v2",
    )


def serve(flags: Flags, *, sock: socket.socket | None = None) -> int:
    """Serve until shut down. The listening socket is ``sock`` when given
    (a shim forked by :mod:`berth.shim.zygote`), else ``-socket`` or fd 3."""
    _open_log(flags.debug)
    return asyncio.run(_serve(flags, sock))


def _remove_socket(path: str) -> None:
    """Unlink the shim's socket file (see the module notes for when)."""
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)


async def _serve(flags: Flags, sock: socket.socket | None = None) -> int:
    from berth.shim.events import Publisher
    from berth.shim.reaper import Reaper, set_child_subreaper
    from berth.shim.service import SERVICE, TaskService
    from berth.ttrpc import Server

    loop = asyncio.get_running_loop()
    set_child_subreaper()
    reaper = Reaper()
    reaper.install()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    listen_path = ""

    def unpublish() -> None:
        nonlocal listen_path
        _remove_socket(listen_path)
        listen_path = ""

    def on_shutdown() -> None:
        unpublish()
        stop.set()

    ttrpc_address = os.environ.get(TTRPC_ADDRESS_ENV) or (
        flags.address + ".ttrpc" if flags.address else ""
    )
    publisher = Publisher(ttrpc_address, flags.namespace)
    service = TaskService(
        namespace=flags.namespace,
        reaper=reaper,
        publisher=publisher,
        state_dir=state_dir(flags.address),
        on_shutdown=on_shutdown,
    )
    server = Server()
    server.register_service(SERVICE, service)
    if flags.socket and sock is None:
        await server.start(flags.socket)
        listen_path = flags.socket.removeprefix("unix://")
    else:
        if sock is None:
            sock = socket.socket(fileno=3)
        sock.setblocking(False)
        # ``start`` published the socket under another name than its own
        # and says which; the environment is passed on to runc, so it goes.
        name = os.environ.pop(SHIM_SOCKET_ENV, "") or sock.getsockname()
        listen_path = name if isinstance(name, str) and not name.startswith("\0") else ""
        await server.start(sock=sock)
    log.debug("serving shim api, pid %d", os.getpid())

    await stop.wait()

    # Still listening (a signal may have stopped us): nobody can have taken
    # the path over yet.
    unpublish()
    await server.shutdown(timeout=2.0)
    service.close()
    await publisher.close(SHUTDOWN_FLUSH_TIMEOUT)
    reaper.close()
    return 0
