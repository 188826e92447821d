"""Containers as live objects, their tasks and processes: the blocking forms.

``client.load_container(id)`` gives a :class:`ContainerHandle`; its
``new_task(io=...)`` creates a :class:`Task` (the container's init process,
not yet started) and ``task.exec(...)`` adds a :class:`Process`. Every
method is one call through ``_tasks_core``; ``_tasks_async`` holds the
asyncio twins, with the same names and signatures.

The order that never misses an exit, as containerd's clients use it::

    task = container.new_task(io=cio.stdio())
    exit_future = task.wait_in_background()   # Wait is in flight before Start
    task.start()
    status = exit_future.result()
    task.delete()                              # drains output, removes FIFOs
"""

from __future__ import annotations

import builtins
import concurrent.futures
import copy
import signal as _signal
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from berth import errdefs
from berth.client import _core, _tasks_core, cio

if TYPE_CHECKING:
    from berth.client._sync import Client
    from berth.client.types import (
        AnyValue,
        Container,
        ExitStatus,
        ProcessInfo,
        ProcessState,
        TaskMetric,
    )

#: How long delete waits for a stopped process's last output to be copied.
DRAIN_TIMEOUT = 5.0


def _io_config(state: ProcessState) -> cio.IOConfig:
    return cio.IOConfig(state.stdin, state.stdout, state.stderr, state.terminal)


def _process_spec(
    container: Container,
    args: Sequence[str] | None,
    terminal: bool,
    cwd: str | None,
    env: Sequence[str],
) -> dict[str, Any]:
    """The exec'd process: the container's own process spec with ``args``
    (and terminal, cwd, extra env) replaced, as ``ctr tasks exec`` builds it."""
    spec = container.spec_json
    if spec is None or not isinstance(spec.get("process"), dict):
        raise errdefs.FailedPrecondition(f"container {container.id} has no OCI process spec")
    process: dict[str, Any] = copy.deepcopy(spec["process"])  # type: ignore[arg-type]
    if args is not None:
        if not args:
            raise errdefs.InvalidArgument("exec needs a command: args must not be empty")
        process["args"] = list(args)
    process["terminal"] = terminal
    if cwd:
        process["cwd"] = cwd
    if env:
        from berth import oci

        process["env"] = oci.replace_or_append_env(process.get("env") or [], env)
    return process


def exit_future(wait: Any, name: str) -> concurrent.futures.Future[ExitStatus]:
    """Run the blocking ``wait`` on a daemon thread; its outcome lands in a Future."""
    fut: concurrent.futures.Future[ExitStatus] = concurrent.futures.Future()
    fut.set_running_or_notify_cancel()

    def run() -> None:
        try:
            fut.set_result(wait())
        except BaseException as exc:
            fut.set_exception(exc)

    threading.Thread(target=run, name=f"berth-wait-{name}", daemon=True).start()
    return fut


class Tasks:
    """The Tasks service: ``client.tasks`` (per-task calls live on :class:`Task`)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> builtins.list[ProcessState]:
        """Every task in the namespace (its init process's state), by id."""
        return self._client._run(_tasks_core.tasks_list())

    def get(self, container_id: str) -> ProcessState:
        """The state of one container's task. Raises NotFound (no container, or no task)."""
        return self._client._run(_tasks_core.task_get(container_id, ""))

    def metrics(self, filters: Sequence[str] = ()) -> builtins.list[TaskMetric]:
        """Resource statistics of the namespace's tasks matching any of ``filters`` (``id``)."""
        return self._client._run(_tasks_core.tasks_metrics(filters))


class ContainerHandle:
    """A container to run tasks in: ``client.load_container(id)``.

    ``info`` is the container record as loaded; :meth:`refresh` re-reads it.
    """

    def __init__(self, client: Client, info: Container) -> None:
        self._client = client
        self.info = info
        # The task last made or loaded through this handle: once it is
        # deleted through it, delete() knows there is no task to look for.
        self._task: Task | None = None

    @property
    def id(self) -> str:
        return self.info.id

    def __repr__(self) -> str:
        return f"ContainerHandle(id={self.id!r}, namespace={self._client.namespace!r})"

    def refresh(self) -> Container:
        """Re-read the container record. Raises NotFound."""
        self.info = self._client._run(_core.containers_get(self.id))
        return self.info

    def new_task(
        self,
        io: cio.Creator | None = None,
        *,
        terminal: bool = False,
        options: AnyValue | None = None,
        runtime_path: str = "",
    ) -> Task:
        """Create the container's task: its init process, created but not started.

        ``io`` makes the process's I/O (see :mod:`berth.client.cio`; default:
        none). ``terminal`` gives the process a pty (use a terminal creator,
        e.g. ``cio.stdio(terminal=True)``, to read it). ``options`` are
        runtime-specific task options; ``runtime_path`` names a shim binary.
        The rootfs is the snapshot named by :attr:`info` (see :meth:`refresh`).

        Raises NotFound (no container, or its snapshot is gone),
        AlreadyExists (the container has a task), and the runtime's errors
        (a missing binary in the image, a bad user...) as the daemon reports
        them. The IO is released if creation fails.
        """
        made = (io or cio.null_io)(self.id)
        try:
            pid = self._client._run(
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
            made.close()
            raise
        task = self._task = Task(self._client, self.id, pid, made)
        made._on_stdin_eof(task.close_io)
        return task

    def task(self, *, attach: cio.Attacher | None = None) -> Task:
        """The container's existing task; ``attach`` re-opens its I/O (see
        :func:`berth.client.cio.attach_streams`). Raises NotFound without one."""
        state = self._client._run(_tasks_core.task_get(self.id, ""))
        cfg = _io_config(state)
        made = attach(cfg) if attach is not None else cio.load(cfg, self.id)
        task = self._task = Task(self._client, self.id, state.pid, made)
        made._on_stdin_eof(task.close_io)
        return task

    def delete(self, *, snapshot_cleanup: bool = False) -> None:
        """Delete the container record; with ``snapshot_cleanup`` also its rootfs snapshot.

        Raises NotFound, or FailedPrecondition while it has a task (not
        looked for when the task this handle last made was deleted through it).
        """
        gone = self._task is not None and self._task._deleted
        op = _tasks_core.container_delete(self.info, snapshot_cleanup, task_gone=gone)
        self._client._run(op)


class Task:
    """A container's task: its init process (``id`` is the container id)."""

    def __init__(self, client: Client, container_id: str, pid: int, io: cio.IO) -> None:
        self._client = client
        self.id = container_id
        self.pid = pid
        self.io = io
        # Set once a Wait has returned (the process has stopped for good) and
        # once Delete has succeeded: each spares delete() a round trip.
        self._exited = False
        self._deleted = False

    def __repr__(self) -> str:
        return f"Task(id={self.id!r}, pid={self.pid})"

    def start(self) -> int:
        """Start the process; returns its pid. Raises the runtime's error on failure
        (such as the command not being found in the image)."""
        self.pid = self._client._run(_tasks_core.task_start(self.id, ""))
        return self.pid

    def wait(self, *, timeout: float | None = None) -> ExitStatus:
        """Block until the process exits; DeadlineExceeded after ``timeout`` seconds.

        The client's own per-call deadline does not apply: a task may run for days.
        """
        status = self._client.with_timeout(timeout)._run(_tasks_core.task_wait(self.id, ""))
        self._exited = True
        return status

    def wait_in_background(self) -> concurrent.futures.Future[ExitStatus]:
        """Start waiting now, on a thread; the Future holds the exit. Call it
        before :meth:`start` so even an instant exit is seen."""
        return exit_future(self.wait, self.id)

    def status(self) -> ProcessState:
        """The init process's current state. Raises NotFound once deleted."""
        return self._client._run(_tasks_core.task_get(self.id, ""))

    def kill(self, signal: int | str = _signal.SIGTERM, *, all: bool = False) -> None:
        """Send ``signal`` (a number or a name like ``"SIGKILL"``) to the init
        process, or with ``all`` to every process of the container.

        Raises NotFound when the task has gone, InvalidArgument for a bad signal.
        """
        sig = _tasks_core.parse_signal(signal)
        return self._client._run(_tasks_core.task_kill(self.id, "", sig, all))

    def pause(self) -> None:
        """Freeze every process of the task. Raises FailedPrecondition when not running."""
        return self._client._run(_tasks_core.task_pause(self.id))

    def resume(self) -> None:
        """Thaw a paused task."""
        return self._client._run(_tasks_core.task_resume(self.id))

    def pids(self) -> builtins.list[ProcessInfo]:
        """The host pids of every process in the task."""
        return self._client._run(_tasks_core.task_pids(self.id))

    def metrics(self) -> TaskMetric:
        """The task's resource statistics (cgroup counters). Raises NotFound."""
        found = self._client._run(_tasks_core.tasks_metrics([f"id=={self.id}"]))
        if not found:
            raise errdefs.NotFound(f"no metrics for task {self.id}: not found")
        return found[0]

    def resize(self, width: int, height: int) -> None:
        """Set the size of the task's pty (columns, rows)."""
        return self._client._run(_tasks_core.task_resize(self.id, "", width, height))

    def close_io(self) -> None:
        """Close the process's stdin: it reads EOF once buffered input is consumed."""
        return self._client._run(_tasks_core.task_close_stdin(self.id, ""))

    def update(
        self,
        *,
        resources: Mapping[str, Any] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """Change a running task's limits: ``resources`` is an OCI ``LinuxResources``
        dict (``{"memory": {"limit": 64 << 20}, "cpu": {"quota": 50000}}``)."""
        return self._client._run(_tasks_core.task_update(self.id, resources, annotations))

    def exec(
        self,
        exec_id: str,
        args: Sequence[str] | None = None,
        *,
        io: cio.Creator | None = None,
        process: Mapping[str, Any] | None = None,
        terminal: bool = False,
        cwd: str | None = None,
        env: Sequence[str] = (),
    ) -> Process:
        """Add process ``exec_id`` running ``args`` in the task; start it with
        :meth:`Process.start`.

        Without ``process`` (a whole OCI process spec) the container's own
        process spec is used with ``args``, ``terminal``, ``cwd`` and extra
        ``env`` replaced. Raises InvalidArgument (bad or empty exec id, no
        args), AlreadyExists (the exec id is taken), NotFound (no task).
        """
        if process is None:
            container = self._client._run(_core.containers_get(self.id))
            spec = _process_spec(container, args, terminal, cwd, env)
        else:
            spec = dict(process)
        made = (io or cio.null_io)(exec_id)
        try:
            self._client._run(
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
            made.close()
            raise
        proc = Process(self._client, self.id, exec_id, made)
        made._on_stdin_eof(proc.close_io)
        return proc

    def load_process(self, exec_id: str, *, attach: cio.Attacher | None = None) -> Process:
        """An exec'd process of this task; ``attach`` re-opens its I/O. Raises NotFound."""
        state = self._client._run(_tasks_core.task_get(self.id, exec_id))
        cfg = _io_config(state)
        made = attach(cfg) if attach is not None else cio.load(cfg, exec_id)
        proc = Process(self._client, self.id, exec_id, made, pid=state.pid)
        made._on_stdin_eof(proc.close_io)
        return proc

    def delete(self, *, force: bool = False) -> ExitStatus:
        """Delete the stopped task; returns its exit. Its output is drained and
        its FIFOs removed first.

        With ``force`` every process is SIGKILLed and waited for. Without it
        a task still running raises FailedPrecondition (``task must be
        stopped before deletion: running``).
        """
        if force:
            fut = self.wait_in_background()
            self._client._run(_tasks_core.kill_for_delete(self.id, ""))
            try:
                fut.result()
            except errdefs.NotFound:
                pass
        # After a Wait has returned the task has stopped: no need to ask.
        state = None if self._exited else self._client._run(_tasks_core.task_get(self.id, ""))
        if state is None or _tasks_core.deletable(state, self.pid):
            self.io.wait(DRAIN_TIMEOUT)
            self.io.close()
        op = _tasks_core.task_delete(self.id, self.pid, state, exited=self._exited)
        status = self._client._run(op)
        self._deleted = True
        return status


class Process:
    """A process exec'd in a task (``id`` is its exec id)."""

    def __init__(
        self, client: Client, container_id: str, exec_id: str, io: cio.IO, *, pid: int = 0
    ) -> None:
        self._client = client
        self.container_id = container_id
        self.id = exec_id
        self.pid = pid
        self.io = io

    def __repr__(self) -> str:
        return f"Process(container_id={self.container_id!r}, id={self.id!r}, pid={self.pid})"

    def start(self) -> int:
        """Start the process; returns its pid."""
        self.pid = self._client._run(_tasks_core.task_start(self.container_id, self.id))
        return self.pid

    def wait(self, *, timeout: float | None = None) -> ExitStatus:
        """Block until the process exits; DeadlineExceeded after ``timeout`` seconds."""
        op = _tasks_core.task_wait(self.container_id, self.id)
        return self._client.with_timeout(timeout)._run(op)

    def wait_in_background(self) -> concurrent.futures.Future[ExitStatus]:
        """Start waiting now, on a thread; call it before :meth:`start`."""
        return exit_future(self.wait, f"{self.container_id}-{self.id}")

    def status(self) -> ProcessState:
        """The process's current state. Raises NotFound once deleted."""
        return self._client._run(_tasks_core.task_get(self.container_id, self.id))

    def kill(self, signal: int | str = _signal.SIGTERM) -> None:
        """Send ``signal`` to the process."""
        sig = _tasks_core.parse_signal(signal)
        return self._client._run(_tasks_core.task_kill(self.container_id, self.id, sig, False))

    def resize(self, width: int, height: int) -> None:
        """Set the size of the process's pty (columns, rows)."""
        op = _tasks_core.task_resize(self.container_id, self.id, width, height)
        return self._client._run(op)

    def close_io(self) -> None:
        """Close the process's stdin."""
        return self._client._run(_tasks_core.task_close_stdin(self.container_id, self.id))

    def delete(self, *, force: bool = False) -> ExitStatus:
        """Delete the stopped process; returns its exit. ``force`` kills it first.

        Raises FailedPrecondition while it runs (without ``force``).
        """
        if force:
            fut = self.wait_in_background()
            self._client._run(_tasks_core.kill_for_delete(self.container_id, self.id))
            try:
                fut.result()
            except errdefs.NotFound:
                pass
        result = self._client._run(_tasks_core.process_delete(self.container_id, self.id))
        self.io.wait(DRAIN_TIMEOUT)
        self.io.close()
        return result
