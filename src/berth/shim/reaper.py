"""Child subreaping and process spawning for the shim.

The shim is a child subreaper: every process runc forks for a container (the
container's init, exec'd processes, and whatever they orphan) is re-parented
to the shim when its parent exits, and the shim must collect them all, or they
linger as zombies.

Design (the trade-off): exactly one component may call ``waitpid``. Python's
``subprocess`` and asyncio's child watchers each wait for their own pids, and a
``waitpid(-1)`` loop racing them would steal exit statuses (a runc invocation
would then look as if it failed). So nothing in the shim uses ``subprocess``;
processes are started with :meth:`Reaper.spawn` (``posix_spawn``), and a single
SIGCHLD handler reaps everything and dispatches each exit by pid:

* to the future of a spawned helper (runc, a logging binary) that asked for it;
* otherwise to the exit handler (the task service, which owns container
  processes and knows their pids);
* an exit nobody claims yet is kept for a while, because a container process
  can exit before its pid is known (``runc exec --detach`` returns, the pid
  file is read, but the process already ran to completion). The service claims
  such early exits once it learns the pid.

Spawning and registering the future happen in one event-loop callback, and the
SIGCHLD handler also runs as a loop callback, so an exit can never slip between
the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Exit", "Reaper", "exit_status", "kill_quietly", "set_child_subreaper"]

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36

# Exits nobody claimed are forgotten after this long; a claim normally comes
# within milliseconds (the time to read a pid file).
UNCLAIMED_TTL = 60.0
UNCLAIMED_MAX = 4096


@dataclass(frozen=True, slots=True)
class Exit:
    pid: int
    status: int
    #: Wall-clock time of the exit (seconds since the epoch).
    timestamp: float
    #: Monotonic time of the exit, for ordering against spawn times.
    monotonic: float


def exit_status(wait_status: int) -> int:
    """A wait status as containerd reports it: the exit code, or 128+signal."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    return wait_status


def set_child_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants.

    Raises ``OSError`` when the kernel refuses.
    """
    import ctypes  # only the serving shim needs it

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


ExitHandler = Callable[[Exit], bool]
"""Called for exits of pids nobody spawned through the reaper; returns True
when it recognised the pid."""


class Reaper:
    """The shim's only ``waitpid`` caller. Install it once on the running loop."""

    def __init__(self) -> None:
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._unclaimed: dict[int, Exit] = {}
        self._handler: ExitHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, handler: ExitHandler | None = None) -> None:
        """Start reaping on SIGCHLD; ``handler`` receives unspawned exits."""
        self._loop = asyncio.get_running_loop()
        self._handler = handler
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)
        # Children may have exited before the handler existed.
        self._loop.call_soon(self.reap)

    def set_handler(self, handler: ExitHandler | None) -> None:
        self._handler = handler

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGCHLD)
            self._loop = None

    # -- spawning -------------------------------------------------------------

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        extra_fds: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        setsid: bool = False,
        wait: bool = True,
    ) -> tuple[int, asyncio.Future[int] | None]:
        """Start ``argv`` with the given descriptors as 0, 1, 2 (``/dev/null``
        when None) and ``extra_fds`` as 3, 4, ...; nothing else is inherited.

        Returns the pid and, with ``wait``, a future for its exit status
        (:func:`exit_status` form). Children run in the shim's working
        directory (the bundle). Raises ``OSError`` when the exec fails.
        """
        if self._loop is None:
            raise RuntimeError("reaper not installed")
        wanted = [stdin, stdout, stderr, *extra_fds]
        null: int | None = None
        temps: list[int] = []
        actions: list[tuple[int, ...]] = []
        try:
            for target, fd in enumerate(wanted):
                if fd is None:
                    if null is None:
                        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    fd = null
                # Copy every source above the target range first, so one
                # dup2 can never clobber a source another still needs.
                tmp = os.dup(fd)
                temps.append(tmp)
                actions.append((os.POSIX_SPAWN_DUP2, tmp, target))
            child_env = dict(os.environ if env is None else env)
            pid = os.posix_spawnp(
                argv[0],
                list(argv),
                child_env,
                file_actions=actions,
                setsid=setsid,
                # Python ignores SIGPIPE and SIGXFSZ; ignored dispositions
                # survive exec, and a container must start with defaults.
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        finally:
            for fd in temps:
                os.close(fd)
            if null is not None:
                os.close(null)
        fut: asyncio.Future[int] | None = None
        if wait:
            fut = self._loop.create_future()
            self._waiters[pid] = fut
        return pid, fut

    # -- reaping ---------------------------------------------------------------

    def reap(self) -> None:
        """Collect every exited child and dispatch the exits."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            self._dispatch(Exit(pid, exit_status(status), time.time(), time.monotonic()))

    def _dispatch(self, ex: Exit) -> None:
        fut = self._waiters.pop(ex.pid, None)
        if fut is not None:
            if not fut.done():
                fut.set_result(ex.status)
            return
        handled = False
        if self._handler is not None:
            try:
                handled = self._handler(ex)
            except Exception:
                log.exception("exit handler failed for pid %d", ex.pid)
                handled = True
        if not handled:
            self._remember(ex)

    def _remember(self, ex: Exit) -> None:
        now = time.monotonic()
        if len(self._unclaimed) >= UNCLAIMED_MAX or self._unclaimed:
            stale = [p for p, e in self._unclaimed.items() if now - e.monotonic > UNCLAIMED_TTL]
            for p in stale:
                del self._unclaimed[p]
            while len(self._unclaimed) >= UNCLAIMED_MAX:
                del self._unclaimed[next(iter(self._unclaimed))]
        self._unclaimed[ex.pid] = ex

    def claim(self, pid: int, *, since: float) -> Exit | None:
        """Take an early exit of ``pid`` that happened after monotonic time
        ``since`` (older ones belong to an earlier process with that pid)."""
        ex = self._unclaimed.get(pid)
        if ex is None or ex.monotonic < since:
            return None
        del self._unclaimed[pid]
        return ex

    async def wait(self, fut: asyncio.Future[int]) -> int:
        """Await a spawned process's exit status, surviving cancellation of
        the caller (the status is still collected by the reaper)."""
        return await asyncio.shield(fut)


def kill_quietly(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
