"""Containers as live objects, their tasks and processes: the asyncio twins.

Each class mirrors one in ``_tasks`` method for method (a unit test checks
the signatures). Calls go through ``_tasks_core`` on the asyncio transport;
the copying of I/O runs on :mod:`berth.client.cio`'s threads, and what blocks
here (making FIFOs, draining output) is awaited in a worker thread.

    task = await container.new_task(io=cio.stdio())
    exited = task.wait_in_background()   # an asyncio.Task, in flight before Start
    await task.start()
    status = await exited
    await task.delete()
"""

from __future__ import annotations

import asyncio
import builtins
import signal as _signal
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from berth import errdefs
from berth.client import _core, _tasks_core, cio
from berth.client._tasks import DRAIN_TIMEOUT, _io_config, _process_spec

if TYPE_CHECKING:
    from berth.client._async import AsyncClient
    from berth.client.types import (
        AnyValue,
        Container,
        ExitStatus,
        ProcessInfo,
        ProcessState,
        TaskMetric,
    )


async def _finish_io(io: cio.IO) -> None:
    await asyncio.to_thread(io.wait, DRAIN_TIMEOUT)
    await asyncio.to_thread(io.close)


class AsyncTasks:
    """The Tasks service: ``client.tasks`` (per-task calls live on :class:`AsyncTask`)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> builtins.list[ProcessState]:
        """Every task in the namespace (its init process's state), by id."""
        return await self._client._run(_tasks_core.tasks_list())

    async def get(self, container_id: str) -> ProcessState:
        """The state of one container's task. Raises NotFound (no container, or no task)."""
        return await self._client._run(_tasks_core.task_get(container_id, ""))

    async def metrics(self, filters: Sequence[str] = ()) -> builtins.list[TaskMetric]:
        """Resource statistics of the namespace's tasks matching any of ``filters`` (``id``)."""
        return await self._client._run(_tasks_core.tasks_metrics(filters))


class AsyncContainerHandle:
    """A container to run tasks in: ``await client.load_container(id)``."""

    def __init__(self, client: AsyncClient, info: Container) -> None:
        self._client = client
        self.info = info
        self._task: AsyncTask | None = None  # as ContainerHandle._task

    @property
    def id(self) -> str:
        return self.info.id

    def __repr__(self) -> str:
        return f"AsyncContainerHandle(id={self.id!r}, namespace={self._client.namespace!r})"

    async def refresh(self) -> Container:
        """Re-read the container record. Raises NotFound."""
        self.info = await self._client._run(_core.containers_get(self.id))
        return self.info

    async def new_task(
        self,
        io: cio.Creator | None = None,
        *,
        terminal: bool = False,
        options: AnyValue | None = None,
        runtime_path: str = "",
    ) -> AsyncTask:
        """Create the container's task (not started); see ``ContainerHandle.new_task``."""
        made = await asyncio.to_thread(io or cio.null_io, self.id)
        try:
            pid = await self._client._run(
                _tasks_core.task_create(
                    self.info,
                    made.config.stdin,
                    made.config.stdout,
                    made.config.stderr,
                    terminal or made.config.terminal,
                    options,
                    runtime_path,
                )
            )
        except BaseException:
            await asyncio.to_thread(made.close)
            raise
        task = self._task = AsyncTask(self._client, self.id, pid, made)
        made._on_stdin_eof(task._close_io_from_thread)
        return task

    async def task(self, *, attach: cio.Attacher | None = None) -> AsyncTask:
        """The container's existing task; ``attach`` re-opens its I/O. Raises NotFound."""
        state = await self._client._run(_tasks_core.task_get(self.id, ""))
        cfg = _io_config(state)
        if attach is not None:
            made = await asyncio.to_thread(attach, cfg)
        else:
            made = cio.load(cfg, self.id)
        task = self._task = AsyncTask(self._client, self.id, state.pid, made)
        made._on_stdin_eof(task._close_io_from_thread)
        return task

    async def delete(self, *, snapshot_cleanup: bool = False) -> None:
        """Delete the container record; with ``snapshot_cleanup`` also its rootfs snapshot."""
        gone = self._task is not None and self._task._deleted
        op = _tasks_core.container_delete(self.info, snapshot_cleanup, task_gone=gone)
        await self._client._run(op)


class _Bridge:
    """Runs a coroutine on the owner's event loop from a copying thread.

    The stdin copier finishes on a thread; the CloseIO it then needs must be
    made on the loop that owns the asyncio channel.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()

    def call(self, make: Any) -> None:
        if self._loop.is_closed():
            return
        fut = asyncio.run_coroutine_threadsafe(make(), self._loop)
        fut.result(30)


class AsyncTask:
    """A container's task: its init process (``id`` is the container id)."""

    def __init__(self, client: AsyncClient, container_id: str, pid: int, io: cio.IO) -> None:
        self._client = client
        self.id = container_id
        self.pid = pid
        self.io = io
        self._bridge = _Bridge()
        self._exited = False  # as Task._exited and Task._deleted
        self._deleted = False

    def __repr__(self) -> str:
        return f"AsyncTask(id={self.id!r}, pid={self.pid})"

    def _close_io_from_thread(self) -> None:
        self._bridge.call(self.close_io)

    async def start(self) -> int:
        """Start the process; returns its pid."""
        self.pid = await self._client._run(_tasks_core.task_start(self.id, ""))
        return self.pid

    async def wait(self, *, timeout: float | None = None) -> ExitStatus:
        """Until the process exits; DeadlineExceeded after ``timeout`` seconds."""
        op = _tasks_core.task_wait(self.id, "")
        status = await self._client.with_timeout(timeout)._run(op)
        self._exited = True
        return status

    def wait_in_background(self) -> asyncio.Task[ExitStatus]:
        """Start waiting now; await the returned task for the exit. Call before start."""
        return asyncio.ensure_future(self.wait())

    async def status(self) -> ProcessState:
        """The init process's current state. Raises NotFound once deleted."""
        return await self._client._run(_tasks_core.task_get(self.id, ""))

    async def kill(self, signal: int | str = _signal.SIGTERM, *, all: bool = False) -> None:
        """Send ``signal`` to the init process, or with ``all`` to every process."""
        sig = _tasks_core.parse_signal(signal)
        return await self._client._run(_tasks_core.task_kill(self.id, "", sig, all))

    async def pause(self) -> None:
        """Freeze every process of the task."""
        return await self._client._run(_tasks_core.task_pause(self.id))

    async def resume(self) -> None:
        """Thaw a paused task."""
        return await self._client._run(_tasks_core.task_resume(self.id))

    async def pids(self) -> builtins.list[ProcessInfo]:
        """The host pids of every process in the task."""
        return await self._client._run(_tasks_core.task_pids(self.id))

    async def metrics(self) -> TaskMetric:
        """The task's resource statistics. Raises NotFound."""
        found = await self._client._run(_tasks_core.tasks_metrics([f"id=={self.id}"]))
        if not found:
            raise errdefs.NotFound(f"no metrics for task {self.id}: not found")
        return found[0]

    async def resize(self, width: int, height: int) -> None:
        """Set the size of the task's pty (columns, rows)."""
        return await self._client._run(_tasks_core.task_resize(self.id, "", width, height))

    async def close_io(self) -> None:
        """Close the process's stdin."""
        return await self._client._run(_tasks_core.task_close_stdin(self.id, ""))

    async def update(
        self,
        *,
        resources: Mapping[str, Any] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """Change a running task's limits (an OCI ``LinuxResources`` dict)."""
        return await self._client._run(_tasks_core.task_update(self.id, resources, annotations))

    async def exec(
        self,
        exec_id: str,
        args: Sequence[str] | None = None,
        *,
        io: cio.Creator | None = None,
        process: Mapping[str, Any] | None = None,
        terminal: bool = False,
        cwd: str | None = None,
        env: Sequence[str] = (),
    ) -> AsyncProcess:
        """Add process ``exec_id`` running ``args``; see ``Task.exec``."""
        if process is None:
            container = await self._client._run(_core.containers_get(self.id))
            spec = _process_spec(container, args, terminal, cwd, env)
        else:
            spec = dict(process)
        made = await asyncio.to_thread(io or cio.null_io, exec_id)
        try:
            await self._client._run(
                _tasks_core.task_exec(
                    self.id,
                    exec_id,
                    spec,
                    made.config.stdin,
                    made.config.stdout,
                    made.config.stderr,
                    bool(spec.get("terminal")) or made.config.terminal,
                )
            )
        except BaseException:
            await asyncio.to_thread(made.close)
            raise
        proc = AsyncProcess(self._client, self.id, exec_id, made)
        made._on_stdin_eof(proc._close_io_from_thread)
        return proc

    async def load_process(
        self, exec_id: str, *, attach: cio.Attacher | None = None
    ) -> AsyncProcess:
        """An exec'd process of this task; ``attach`` re-opens its I/O. Raises NotFound."""
        state = await self._client._run(_tasks_core.task_get(self.id, exec_id))
        cfg = _io_config(state)
        if attach is not None:
            made = await asyncio.to_thread(attach, cfg)
        else:
            made = cio.load(cfg, exec_id)
        proc = AsyncProcess(self._client, self.id, exec_id, made, pid=state.pid)
        made._on_stdin_eof(proc._close_io_from_thread)
        return proc

    async def delete(self, *, force: bool = False) -> ExitStatus:
        """Delete the stopped task; see ``Task.delete``."""
        if force:
            waiting = self.wait_in_background()
            await self._client._run(_tasks_core.kill_for_delete(self.id, ""))
            try:
                await waiting
            except errdefs.NotFound:
                pass
        # After a Wait has returned the task has stopped: no need to ask.
        state = None
        if not self._exited:
            state = await self._client._run(_tasks_core.task_get(self.id, ""))
        if state is None or _tasks_core.deletable(state, self.pid):
            await _finish_io(self.io)
        op = _tasks_core.task_delete(self.id, self.pid, state, exited=self._exited)
        status = await self._client._run(op)
        self._deleted = True
        return status


class AsyncProcess:
    """A process exec'd in a task (``id`` is its exec id)."""

    def __init__(
        self, client: AsyncClient, container_id: str, exec_id: str, io: cio.IO, *, pid: int = 0
    ) -> None:
        self._client = client
        self.container_id = container_id
        self.id = exec_id
        self.pid = pid
        self.io = io
        self._bridge = _Bridge()

    def __repr__(self) -> str:
        return f"AsyncProcess(container_id={self.container_id!r}, id={self.id!r}, pid={self.pid})"

    def _close_io_from_thread(self) -> None:
        self._bridge.call(self.close_io)

    async def start(self) -> int:
        """Start the process; returns its pid."""
        self.pid = await self._client._run(_tasks_core.task_start(self.container_id, self.id))
        return self.pid

    async def wait(self, *, timeout: float | None = None) -> ExitStatus:
        """Until the process exits; DeadlineExceeded after ``timeout`` seconds."""
        op = _tasks_core.task_wait(self.container_id, self.id)
        return await self._client.with_timeout(timeout)._run(op)

    def wait_in_background(self) -> asyncio.Task[ExitStatus]:
        """Start waiting now; await the returned task for the exit. Call before start."""
        return asyncio.ensure_future(self.wait())

    async def status(self) -> ProcessState:
        """The process's current state. Raises NotFound once deleted."""
        return await self._client._run(_tasks_core.task_get(self.container_id, self.id))

    async def kill(self, signal: int | str = _signal.SIGTERM) -> None:
        """Send ``signal`` to the process."""
        sig = _tasks_core.parse_signal(signal)
        op = _tasks_core.task_kill(self.container_id, self.id, sig, False)
        return await self._client._run(op)

    async def resize(self, width: int, height: int) -> None:
        """Set the size of the process's pty (columns, rows)."""
        op = _tasks_core.task_resize(self.container_id, self.id, width, height)
        return await self._client._run(op)

    async def close_io(self) -> None:
        """Close the process's stdin."""
        op = _tasks_core.task_close_stdin(self.container_id, self.id)
        return await self._client._run(op)

    async def delete(self, *, force: bool = False) -> ExitStatus:
        """Delete the stopped process; see ``Process.delete``."""
        if force:
            waiting = self.wait_in_background()
            await self._client._run(_tasks_core.kill_for_delete(self.container_id, self.id))
            try:
                await waiting
            except errdefs.NotFound:
                pass
        result = await self._client._run(_tasks_core.process_delete(self.container_id, self.id))
        await _finish_io(self.io)
        return result
