"""berthd: boots the plugins, serves the API socket, and shuts down cleanly.

Start-up checks everything it can before it creates anything, so that a bad
config, a socket path that is a directory, or an unwritable root fails with a
clear message and leaves nothing half-made. A lock on the root keeps a second
daemon off the same data; a socket left by a crashed daemon is replaced, but a
socket some live process still answers on is not.

Footprint: berthd caps glibc's malloc arenas before any thread starts (every
gRPC, executor and extraction thread would otherwise get an arena of its own
that keeps its peak size), hands freed heap pages back to the kernel as soon
as a burst of work is over (glibc keeps what a layer extraction freed), and
once booted freezes the objects that live for the whole process out of the
cyclic GC, so full collections walk only what requests allocate. Plugins
keep their heavy dependencies (the registry client, the layer extractor) out
of boot and load them at first use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth import config as configmod
from berth import errdefs

log = logging.getLogger("berth.daemon")

MAX_UNIX_PATH = 107

#: glibc's ``M_ARENA_MAX`` mallopt parameter, and the cap berthd applies.
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2
#: Seconds between two looks at the daemon's CPU time (see TrimSchedule).
TRIM_POLL = 1.0
#: CPU seconds within one poll from which the daemon counts as busy; idle
#: berthd uses well under a millisecond a second.
TRIM_BUSY_CPU = 0.01
#: Most seconds between two trims while work goes on (each trim costs
#: 0.05-0.6 ms, measured).
TRIM_INTERVAL = 15.0


class StartupError(Exception):
    """A reason berthd cannot start; printed as is, exit status 1."""


@dataclass
class Paths:
    root: Path
    state: Path
    address: Path
    ttrpc_address: Path


def _check_socket_path(path: Path) -> None:
    if len(str(path).encode()) > MAX_UNIX_PATH:
        raise StartupError(
            f"socket path {path} is {len(str(path).encode())} bytes; unix sockets allow at most"
            f" {MAX_UNIX_PATH}: choose a shorter --address"
        )
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise StartupError(
            f"socket path {path} is a directory: remove it or choose another --address"
        )
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"socket path {path} exists and is not a socket: refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return  # stale: nobody listens, it will be replaced
    finally:
        probe.close()
    raise StartupError(f"socket {path} is in use by another process: is another berthd running?")


def _make_dir(path: Path, mode: int, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        os.chmod(path, mode)
    except OSError as exc:
        raise StartupError(f"cannot create {what} directory {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise StartupError(f"{what} directory {path} is not writable")
    # mkdir succeeding on an existing dir says nothing about a read-only mount.
    probe = path / f".berth-write-test-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise StartupError(f"{what} directory {path} is not writable: {exc.strerror}") from None


class RootLock:
    """An exclusive flock on ``<root>/berthd.lock`` for the daemon's lifetime."""

    def __init__(self, root: Path) -> None:
        self.path = root / "berthd.lock"
        self.fd = -1

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StartupError(
                f"another berthd (pid {holder}) is already using root {self.path.parent};"
                " stop it or start this one with a different --root"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Daemon:
    def __init__(self, cfg: configmod.Config) -> None:
        self.cfg = cfg
        self.paths = Paths(
            root=Path(cfg.root),
            state=Path(cfg.state),
            address=Path(cfg.grpc.address),
            ttrpc_address=Path(cfg.ttrpc_address),
        )
        self.lock = RootLock(self.paths.root)
        self.server: Any = None
        self.plugins: Any = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        from grpc import aio

        from berth import builtins, plugin
        from berth.services.server import WrappingServer

        p = self.paths
        _check_socket_path(p.address)
        _check_socket_path(p.ttrpc_address)  # shims' events socket (shim-events plugin)
        _make_dir(p.root, 0o700, "root")
        _make_dir(p.state, 0o711, "state")
        self.lock.acquire()
        try:
            self._apply_process_settings()
            p.address.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
            with contextlib.suppress(FileNotFoundError):
                p.address.unlink()
            builtins.load()
            self.plugins = await plugin.load(
                plugin.registrations(),
                root=p.root,
                state=p.state,
                address=str(p.address),
                ttrpc_address=str(p.ttrpc_address),
                configs=self.cfg.plugins,
                disabled=self.cfg.disabled_plugins,
                required=self.cfg.required_plugins,
            )
            self._record_proxy_plugins()
            with contextlib.suppress(FileNotFoundError):
                # The shim-events plugin created it 0660; give it its configured owner.
                os.chown(p.ttrpc_address, self.cfg.ttrpc.uid, self.cfg.ttrpc.gid)
            self.server = aio.server(
                options=[
                    ("grpc.max_receive_message_length", self.cfg.grpc.max_recv_message_size),
                    ("grpc.max_send_message_length", self.cfg.grpc.max_send_message_size),
                ],
            )
            services = WrappingServer(self.server)
            for pl in self.plugins.ordered:
                add = getattr(pl.instance, "add_to_server", None)
                if pl.ok and add is not None:
                    add(services)
            old = os.umask(0o117)  # socket born 0660: no window where others may connect
            try:
                self.server.add_insecure_port(f"unix://{p.address}")
                await self.server.start()
            finally:
                os.umask(old)
            os.chmod(p.address, 0o660)
            os.chown(p.address, self.cfg.grpc.uid, self.cfg.grpc.gid)
            if self.cfg.metrics.address:
                self._start_metrics(self.cfg.metrics.address)
        except BaseException:
            await self._teardown()
            raise
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        log.info(
            "berthd successfully booted",
            extra={"fields": {"address": str(p.address), "root": str(p.root), "loop": loop}},
        )

    def _record_proxy_plugins(self) -> None:
        """List configured proxy plugins as errored rather than ignoring them.

        Serving snapshotters or content stores from an external gRPC process is
        not implemented; saying so in ``ctr plugins ls`` beats a silent no-op.
        """
        from berth import plugin

        kinds = {"snapshot": plugin.SNAPSHOT, "content": plugin.CONTENT}
        for name, pp in self.cfg.proxy_plugins.items():
            reg = plugin.Registration(type=kinds[pp.type], id=name, init=lambda ic: None)
            meta = plugin.Plugin(reg)
            meta.error = errdefs.NotImplemented(
                f"proxy plugin {name!r} at {pp.address}: proxy plugins are not supported by this"
                " berthd; remove the [proxy_plugins] entry"
            )
            self.plugins.add(meta)
            log.warning(
                "proxy plugin not loaded",
                extra={"fields": {"name": name, "address": pp.address}},
            )

    def _apply_process_settings(self) -> None:
        cfg = self.cfg
        if cfg.temp:
            _make_dir(Path(cfg.temp), 0o700, "temp")
            os.environ["TMPDIR"] = cfg.temp
        if cfg.oom_score:
            try:
                Path("/proc/self/oom_score_adj").write_text(str(cfg.oom_score))
            except OSError as exc:
                # Lowering the score needs CAP_SYS_RESOURCE; without it the daemon
                # still works, so say so rather than refuse to start.
                log.warning(
                    "cannot set oom_score",
                    extra={"fields": {"oom_score": cfg.oom_score, "error": exc.strerror}},
                )
        if cfg.cgroup.path:
            from berth.core import cgroups

            cgroups.move_self(cfg.cgroup.path)

    def _start_metrics(self, address: str) -> None:
        import prometheus_client

        host, _, port = address.rpartition(":")
        try:
            prometheus_client.start_http_server(int(port), addr=host or "127.0.0.1")
        except (ValueError, OSError) as exc:
            raise StartupError(f"metrics.address {address!r}: {exc}") from None

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def _teardown(self) -> None:
        from berth import plugin

        if self.server is not None:
            # Endless streams (event subscriptions) would hold the whole grace
            # period; services offering `end_streams` finish them first.
            for pl in self.plugins.ordered if self.plugins is not None else ():
                end_streams = getattr(pl.instance, "end_streams", None)
                if pl.ok and end_streams is not None:
                    end_streams()
            await self.server.stop(grace=5)
            self.server = None
        if self.plugins is not None:
            await plugin.close_all(self.plugins)
            self.plugins = None
        with contextlib.suppress(FileNotFoundError):
            if self.lock.fd >= 0:
                self.paths.address.unlink()
        self.lock.release()

    async def stop(self) -> None:
        log.info("stopping berthd")
        await self._teardown()
        log.info("berthd stopped")


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``arenas``, as ``MALLOC_ARENA_MAX`` does.

    glibc gives each thread that contends for the heap an arena of its own
    (up to eight per core) and rarely returns an arena's memory to the kernel,
    so the daemon's thread pools would leave RSS at its busiest level; with
    two arenas a busy pull measured 2.5 MiB less RSS here, idle unchanged.
    Arenas are chosen when a thread first allocates, so this must run before
    any thread starts. An operator's ``MALLOC_ARENA_MAX`` wins. Returns
    whether the cap was applied (False off glibc, or when the variable is set).
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own libc
    except (OSError, AttributeError):
        return False  # not glibc: nothing to tune
    return bool(mallopt(_M_ARENA_MAX, arenas))


class TrimSchedule:
    """When to hand free heap pages back to the kernel.

    Work leaves freed memory in the heap, and the moment it is all freed is
    when the work is over. So the daemon's own CPU time is read every poll:
    a poll that used at least ``busy_cpu`` seconds was work, and the first
    quiet poll after work trims. Work that goes on trims every
    ``interval`` seconds too; a daemon that stays idle never trims, having
    freed nothing. Boot counts as work. Pure bookkeeping: the caller reads
    the clocks and trims.
    """

    def __init__(
        self,
        *,
        now: float,
        cpu: float,
        busy_cpu: float = TRIM_BUSY_CPU,
        interval: float = TRIM_INTERVAL,
    ) -> None:
        self._busy_cpu = busy_cpu
        self._interval = interval
        self._cpu = cpu
        self._last = now
        self._dirty = True

    def due(self, now: float, cpu: float) -> bool:
        """Whether to trim now, given the monotonic time and the CPU seconds
        the process has used so far."""
        busy = cpu - self._cpu >= self._busy_cpu
        self._cpu = cpu
        if busy:
            self._dirty = True
            if now - self._last < self._interval:
                return False
        elif not self._dirty:
            return False
        self._dirty = busy  # work still going on will free more
        self._last = now
        return True

    def trimmed(self, cpu: float) -> None:
        """Record the CPU time after a trim, so the trim is not taken for work."""
        self._cpu = cpu


async def trim_heap_forever(
    *,
    poll: float = TRIM_POLL,
    trim: Callable[[int], object] | None = None,
    cpu: Callable[[], float] = time.process_time,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Return free heap pages to the kernel soon after work, as :class:`TrimSchedule` says.

    glibc gives memory back only from the top of the main heap; what a layer
    extraction or a big gRPC message freed in the middle of a heap, or in
    another thread's arena, stays resident until ``malloc_trim``. Measured
    here, RSS after a Debian image import fell from 74 to 60 MiB with a
    trim; trimming at the first quiet second rather than every 15 s gives
    that back about 10 s sooner. A fixed ``M_MMAP_THRESHOLD`` would also
    avoid it, but makes every 1 MiB read buffer a fresh mmap (9 times slower
    to allocate), so berthd trims instead. ``trim`` defaults to glibc's
    ``malloc_trim``; off glibc this returns at once. Runs until cancelled.
    """
    if trim is None:
        import ctypes

        try:
            trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            return
    schedule = TrimSchedule(now=clock(), cpu=cpu())
    while True:
        await asyncio.sleep(poll)
        if schedule.due(clock(), cpu()):
            # It takes the arena locks: off the loop, so a busy arena never stalls it.
            await asyncio.to_thread(trim, 0)
            schedule.trimmed(cpu())


async def serve(cfg: configmod.Config) -> None:
    d = Daemon(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, d.request_stop)
    await d.start()
    # What boot made (modules, stubs, plugin instances: about 35,000 objects)
    # lives as long as the process; frozen, it is no longer walked by every
    # full collection (14 ms each, measured, on the event loop).
    gc.collect()
    gc.freeze()
    trimmer = asyncio.create_task(trim_heap_forever())
    try:
        await d.wait()
    finally:
        trimmer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trimmer
        await d.stop()


def _registrations() -> list[Any]:
    from berth import builtins, plugin

    builtins.load()
    return plugin.registrations()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="berthd",
        description="Berth container runtime daemon: serves containerd's v1 gRPC API on a unix socket.",
        epilog="Subcommands: `berthd config default` prints the full default config with comments;"
        " `berthd config dump` prints the effective config after the file and flags.",
    )
    ap.add_argument("-c", "--config", help=f"config file (default {configmod.DEFAULT_CONFIG_PATH})")
    ap.add_argument("--root", help=f"persistent data directory (default {configmod.DEFAULT_ROOT})")
    ap.add_argument(
        "--state", help=f"transient state directory (default {configmod.DEFAULT_STATE})"
    )
    ap.add_argument("-a", "--address", help=f"gRPC socket (default {configmod.DEFAULT_ADDRESS})")
    ap.add_argument("-l", "--log-level", help="trace, debug, info, warn or error (default info)")
    sub = ap.add_subparsers(dest="command")
    c = sub.add_parser("config", help="print configuration")
    c.add_argument(
        "action", choices=["default", "dump"], help="default: documented defaults; dump: effective"
    )
    return ap


def effective_config(args: argparse.Namespace) -> configmod.Config:
    path = args.config or configmod.DEFAULT_CONFIG_PATH
    cfg = configmod.load(path, _registrations(), must_exist=bool(args.config))
    if args.root:
        cfg.root = args.root
    if args.state:
        cfg.state = args.state
    if args.address:
        cfg.grpc.address = args.address
    if args.log_level:
        if args.log_level.lower() not in configmod.LOG_LEVELS:
            raise configmod.ConfigError(
                f"--log-level: {args.log_level!r} is not one of {', '.join(configmod.LOG_LEVELS)}"
            )
        cfg.debug.level = args.log_level
    return cfg


def _run_loop(main_coro: Any) -> None:
    """Run the daemon's event loop: uvloop when installed, else asyncio's own.

    Every request crosses the loop several times (gRPC callbacks, executor
    hand-offs, shim connections); uvloop cuts berthd's CPU per request by
    about a quarter. Nothing in berthd may use the loop's subprocess support
    (see :mod:`berth.core.runtime.binary` for why shims are spawned with
    ``subprocess.Popen``). Without uvloop (it is a declared dependency, but a
    distribution may lack it) asyncio's own loop serves the same code.
    """
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main_coro)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "config" and args.action == "default":
            cfg = configmod.load(None, _registrations())
            sys.stdout.write(configmod.render(cfg))
            return 0
        cfg = effective_config(args)
        if args.command == "config":
            sys.stdout.write(configmod.render(cfg, comments=False))
            return 0
    except errdefs.BerthError as exc:
        print(f"berthd: {exc}", file=sys.stderr)
        return 1
    from berth import log as logsetup

    logsetup.setup(cfg.debug.level, cfg.debug.format)
    limit_malloc_arenas()
    try:
        _run_loop(serve(cfg))
    except StartupError as exc:
        print(f"berthd: {exc}", file=sys.stderr)
        return 1
    except errdefs.BerthError as exc:
        print(f"berthd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
