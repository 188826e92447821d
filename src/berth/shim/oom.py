"""Noticing OOM kills in a container's memory cgroup.

cgroup v1: an eventfd registered through ``cgroup.event_control`` against
``memory.oom_control`` fires on every OOM in the group (and once more when
the group is removed, which is how a watch ends). cgroup v2 has no such
notification; ``memory.events``'s ``oom_kill`` counter is polled instead,
once a second, only for v2 containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from berth.shim.cgroups import Cgroup, read_kv

__all__ = ["OOMWatcher"]

log = logging.getLogger(__name__)

V2_POLL_INTERVAL = 1.0


class OOMWatcher:
    """Calls ``on_oom(container_id)`` for every OOM kill in a watched cgroup."""

    def __init__(self, on_oom: Callable[[str], None]) -> None:
        self._on_oom = on_oom
        self._v1: dict[str, tuple[int, int]] = {}  # id -> (eventfd, oom_control fd)
        self._v2: dict[str, asyncio.Task[None]] = {}

    def add(self, container_id: str, cgroup: Cgroup) -> None:
        """Start watching; failures are logged, never raised (as containerd)."""
        self.remove(container_id)
        memory = cgroup.dir("memory")
        if memory is None:
            return
        try:
            if cgroup.unified:
                self._v2[container_id] = asyncio.get_running_loop().create_task(
                    self._poll_v2(container_id, memory)
                )
            else:
                self._add_v1(container_id, memory)
        except OSError as exc:
            log.error("cannot watch %s for OOM: %s", container_id, exc)

    def _add_v1(self, container_id: str, memory: str) -> None:
        oom_fd = os.open(os.path.join(memory, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except OSError:
            os.close(oom_fd)
            raise
        try:
            with open(os.path.join(memory, "cgroup.event_control"), "w") as f:
                f.write(f"{efd} {oom_fd}")
        except OSError:
            os.close(efd)
            os.close(oom_fd)
            raise
        self._v1[container_id] = (efd, oom_fd)
        asyncio.get_running_loop().add_reader(efd, self._v1_event, container_id, efd, memory)

    def _v1_event(self, container_id: str, efd: int, memory: str) -> None:
        try:
            os.eventfd_read(efd)
        except BlockingIOError:
            return
        except OSError:
            self.remove(container_id)
            return
        if not os.path.isdir(memory):
            # The group was removed: that is the last notification.
            self.remove(container_id)
            return
        self._on_oom(container_id)

    async def _poll_v2(self, container_id: str, memory: str) -> None:
        path = os.path.join(memory, "memory.events")
        last = read_kv(path).get("oom_kill", 0)
        while os.path.exists(path):
            await asyncio.sleep(V2_POLL_INTERVAL)
            now = read_kv(path).get("oom_kill", 0)
            if now > last:
                self._on_oom(container_id)
            last = now

    def remove(self, container_id: str) -> None:
        fds = self._v1.pop(container_id, None)
        if fds is not None:
            efd = fds[0]
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(efd)
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        task = self._v2.pop(container_id, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        for cid in list(self._v1) + list(self._v2):
            self.remove(cid)
