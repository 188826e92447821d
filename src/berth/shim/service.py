"""``containerd.task.v2.Task`` over ttrpc: protobuf in, container calls, events out.

Owns the translation between the shim API's messages and
:mod:`berth.shim.container`, the error wording containerd's runc shim uses
for requests about unknown containers and processes, event publication,
routing process exits from the reaper to the processes they belong to, and
when a ``Shutdown`` is accepted (never while a container is served or being
created; after it, ``Create`` is refused as Unavailable).

Event order is part of the contract: TaskCreate before TaskStart before
TaskExit for a process, TaskExecAdded before TaskExecStarted. Exits that race
a Start are held back until the start event has been queued (see
``Process.starting``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError

from berth import errdefs
from berth.api.events import task_pb2 as events
from berth.api.runtime.v2.runc.options import oci_pb2
from berth.api.runtime.v2.task import shim_pb2 as api
from berth.api.types.task import task_pb2
from berth.shim import stats
from berth.shim.container import CheckpointConfig, Container, Process, RuntimeOptions
from berth.shim.events import Publisher, pack_any, timestamp
from berth.shim.mount import Mount
from berth.shim.oom import OOMWatcher
from berth.shim.reaper import Exit, Reaper
from berth.shim.stdio import StdioConfig
from berth.ttrpc import CallContext

__all__ = ["SERVICE", "TaskService", "parse_runtime_options"]

log = logging.getLogger(__name__)

SERVICE = api.DESCRIPTOR.services_by_name["Task"]
VERSION = "berth-shim-v2"

_STATUS = {
    "created": task_pb2.CREATED,
    "running": task_pb2.RUNNING,
    "stopped": task_pb2.STOPPED,
    "paused": task_pb2.PAUSED,
    "pausing": task_pb2.PAUSING,
}

_EMPTY = empty_pb2.Empty()


def parse_runtime_options(any_msg: object) -> RuntimeOptions:
    """Decode the ``options`` Any of a CreateTaskRequest (or the start
    command's stdin). Empty means defaults; a foreign type is an error."""
    type_url = getattr(any_msg, "type_url", "")
    value = getattr(any_msg, "value", b"")
    if not type_url:
        return RuntimeOptions()
    name = type_url.rsplit("/", 1)[-1]
    if name not in ("containerd.runc.v1.Options", "containerd.runtime.linux.runc.v1.Options"):
        raise errdefs.InvalidArgument(f"unsupported runtime options type {type_url}")
    try:
        o = oci_pb2.Options.FromString(value)
    except DecodeError as exc:
        raise errdefs.InvalidArgument(f"invalid runtime options: {exc}") from None
    return RuntimeOptions(
        binary_name=o.binary_name,
        root=o.root,
        systemd_cgroup=o.systemd_cgroup,
        no_pivot_root=o.no_pivot_root,
        no_new_keyring=o.no_new_keyring,
        criu_path=o.criu_path,
        criu_work_path=o.criu_work_path,
        io_uid=o.io_uid,
        io_gid=o.io_gid,
        shim_cgroup=o.shim_cgroup,
    )


def _ts(t: float | None) -> object:
    return timestamp(t) if t is not None else None


class TaskService:
    """The shim's Task service; one instance may serve several containers
    (shim grouping)."""

    def __init__(
        self,
        *,
        namespace: str,
        reaper: Reaper,
        publisher: Publisher,
        state_dir: str,
        on_shutdown: Callable[[], None],
    ) -> None:
        self.namespace = namespace
        self.reaper = reaper
        self.publisher = publisher
        self.state_dir = state_dir
        self.containers: dict[str, Container] = {}
        self._creating: set[str] = set()
        self._on_shutdown = on_shutdown
        # Set once a Shutdown is accepted: the server is about to exit, so a
        # Create that still reaches it (on a connection opened before) would
        # start a container nobody could manage.
        self._shutting_down = False
        self.oom = OOMWatcher(self._oom)
        reaper.set_handler(self.on_exit)

    # -- helpers -----------------------------------------------------------------

    def _container(self, id: str) -> Container:
        c = self.containers.get(id)
        if c is None:
            raise errdefs.NotFound("container not created: not found")
        return c

    def _publish(self, event: object, when: float | None = None) -> None:
        self.publisher.publish(event, when=when)  # type: ignore[arg-type]

    def _oom(self, container_id: str) -> None:
        self._publish(events.TaskOOM(container_id=container_id))

    # -- exits -------------------------------------------------------------------

    def on_exit(self, ex: Exit) -> bool:
        """Reaper callback: True when the pid belonged to one of our processes."""
        for c in self.containers.values():
            p = c.find_pid(ex.pid)
            if p is None:
                continue
            if p.starting:
                p.pending_exit = ex
            else:
                self._process_exited(c, p, ex)
            return True
        return False

    def _process_exited(self, c: Container, p: Process, ex: Exit) -> None:
        if p.is_init and c.kill_all_on_exit:
            # Orphans of a container without its own pid namespace outlive
            # the init; take them down, as containerd does.
            asyncio.get_running_loop().create_task(c.kill_all())
        p.set_exited(ex.status, ex.timestamp)
        self._publish(
            events.TaskExit(
                container_id=c.id,
                id=p.id,
                pid=ex.pid,
                exit_status=ex.status,
                exited_at=timestamp(ex.timestamp),
            )
        )

    # -- Task API ----------------------------------------------------------------

    async def State(self, ctx: CallContext, r: api.StateRequest) -> api.StateResponse:
        c = self._container(r.id)
        p = c.process(r.exec_id)
        resp = api.StateResponse(
            id=p.id,
            bundle=c.bundle,
            pid=p.pid,
            status=_STATUS.get(p.status, task_pb2.UNKNOWN),
            stdin=p.stdio.stdin,
            stdout=p.stdio.stdout,
            stderr=p.stdio.stderr,
            terminal=p.stdio.terminal,
            exit_status=p.exit_status,
            exec_id=r.exec_id,
        )
        if p.exited_at is not None:
            resp.exited_at.CopyFrom(timestamp(p.exited_at))
        return resp

    async def Create(self, ctx: CallContext, r: api.CreateTaskRequest) -> api.CreateTaskResponse:
        if self._shutting_down:
            # Unavailable, as a call to a shim that has gone is: the caller
            # may start a new server and try again there.
            raise errdefs.Unavailable("shim is shutting down")
        if not r.id:
            raise errdefs.InvalidArgument("id must not be empty")
        if not r.bundle or not os.path.isabs(r.bundle):
            raise errdefs.InvalidArgument(f"bundle must be an absolute path, got {r.bundle!r}")
        if r.id in self.containers or r.id in self._creating:
            raise errdefs.AlreadyExists(f"container {r.id}: already exists")
        options = parse_runtime_options(r.options)
        c = Container(
            id=r.id,
            bundle=r.bundle,
            namespace=self.namespace,
            reaper=self.reaper,
            options=options,
            state_dir=self.state_dir,
            stdio=StdioConfig(r.stdin, r.stdout, r.stderr, r.terminal),
            rootfs_mounts=[Mount(m.type, m.source, list(m.options)) for m in r.rootfs],
            checkpoint=r.checkpoint,
            parent_checkpoint=r.parent_checkpoint,
        )
        self._creating.add(r.id)
        try:
            # A cancelled call (client gone) must not leave half a container.
            await asyncio.shield(c.create())
        finally:
            self._creating.discard(r.id)
        self.containers[r.id] = c
        self._publish(
            events.TaskCreate(
                container_id=r.id,
                bundle=r.bundle,
                rootfs=r.rootfs,
                io=events.TaskIO(
                    stdin=r.stdin, stdout=r.stdout, stderr=r.stderr, terminal=r.terminal
                ),
                checkpoint=r.checkpoint,
                pid=c.init.pid,
            )
        )
        return api.CreateTaskResponse(pid=c.init.pid)

    async def Start(self, ctx: CallContext, r: api.StartRequest) -> api.StartResponse:
        c = self._container(r.id)
        p = await asyncio.shield(c.start(r.exec_id))
        if p.is_init:
            if c.cgroup is not None:
                self.oom.add(c.id, c.cgroup)
            self._publish(events.TaskStart(container_id=c.id, pid=p.pid))
        else:
            self._publish(events.TaskExecStarted(container_id=c.id, exec_id=p.exec_id, pid=p.pid))
        early = c.started(p)
        if early is not None:
            self._process_exited(c, p, early)
        return api.StartResponse(pid=p.pid)

    async def Delete(self, ctx: CallContext, r: api.DeleteRequest) -> api.DeleteResponse:
        c = self._container(r.id)
        p = await asyncio.shield(c.delete(r.exec_id))
        if p.is_init:
            self.containers.pop(c.id, None)
            self.oom.remove(c.id)
            self._publish(
                events.TaskDelete(
                    container_id=c.id,
                    pid=p.pid,
                    exit_status=p.exit_status,
                    exited_at=_ts(p.exited_at),  # type: ignore[arg-type]
                )
            )
        return api.DeleteResponse(
            pid=p.pid,
            exit_status=p.exit_status,
            exited_at=_ts(p.exited_at),  # type: ignore[arg-type]
        )

    async def Pids(self, ctx: CallContext, r: api.PidsRequest) -> api.PidsResponse:
        c = self._container(r.id)
        pids = await c.pids()
        by_pid = {p.pid: p for p in c.execs.values() if p.pid}
        out = []
        for pid in pids:
            info = task_pb2.ProcessInfo(pid=pid)
            p = by_pid.get(pid)
            if p is not None:
                info.info.CopyFrom(pack_any(oci_pb2.ProcessDetails(exec_id=p.exec_id)))
            out.append(info)
        return api.PidsResponse(processes=out)

    async def Pause(self, ctx: CallContext, r: api.PauseRequest) -> empty_pb2.Empty:
        c = self._container(r.id)
        await c.pause()
        self._publish(events.TaskPaused(container_id=c.id))
        return _EMPTY

    async def Resume(self, ctx: CallContext, r: api.ResumeRequest) -> empty_pb2.Empty:
        c = self._container(r.id)
        await c.resume()
        self._publish(events.TaskResumed(container_id=c.id))
        return _EMPTY

    async def Checkpoint(self, ctx: CallContext, r: api.CheckpointTaskRequest) -> empty_pb2.Empty:
        c = self._container(r.id)
        cfg = CheckpointConfig(path=r.path)
        if r.options.type_url:
            name = r.options.type_url.rsplit("/", 1)[-1]
            if name != "containerd.runc.v1.CheckpointOptions":
                raise errdefs.InvalidArgument(
                    f"unsupported checkpoint options type {r.options.type_url}"
                )
            o = oci_pb2.CheckpointOptions.FromString(r.options.value)
            cfg = CheckpointConfig(
                path=r.path or o.image_path,
                exit=o.exit,
                open_tcp=o.open_tcp,
                external_unix_sockets=o.external_unix_sockets,
                terminal=o.terminal,
                file_locks=o.file_locks,
                empty_namespaces=tuple(o.empty_namespaces),
                work_path=o.work_path,
            )
        if not cfg.path:
            raise errdefs.InvalidArgument("checkpoint image path must not be empty")
        await c.checkpoint_to(cfg)
        return _EMPTY

    async def Kill(self, ctx: CallContext, r: api.KillRequest) -> empty_pb2.Empty:
        c = self._container(r.id)
        p = c.process(r.exec_id)
        await p.kill(r.signal, r.all)
        return _EMPTY

    async def Exec(self, ctx: CallContext, r: api.ExecProcessRequest) -> empty_pb2.Empty:
        c = self._container(r.id)
        if not r.exec_id:
            raise errdefs.InvalidArgument("exec id must not be empty")
        if "/" in r.exec_id or r.exec_id in (".", ".."):
            raise errdefs.InvalidArgument(f"invalid exec id {r.exec_id!r}")
        c.add_exec(
            r.exec_id,
            StdioConfig(r.stdin, r.stdout, r.stderr, r.terminal),
            r.spec.value,
        )
        self._publish(events.TaskExecAdded(container_id=c.id, exec_id=r.exec_id))
        return _EMPTY

    async def ResizePty(self, ctx: CallContext, r: api.ResizePtyRequest) -> empty_pb2.Empty:
        c = self._container(r.id)
        c.process(r.exec_id).resize(r.width, r.height)
        return _EMPTY

    async def CloseIO(self, ctx: CallContext, r: api.CloseIORequest) -> empty_pb2.Empty:
        c = self._container(r.id)
        p = c.process(r.exec_id)
        if r.stdin:
            p.close_stdin()
        return _EMPTY

    async def Update(self, ctx: CallContext, r: api.UpdateTaskRequest) -> empty_pb2.Empty:
        c = self._container(r.id)
        await c.update(r.resources.value)
        return _EMPTY

    async def Wait(self, ctx: CallContext, r: api.WaitRequest) -> api.WaitResponse:
        c = self._container(r.id)
        p = c.process(r.exec_id)
        await p.wait()
        return api.WaitResponse(
            exit_status=p.exit_status,
            exited_at=_ts(p.exited_at),  # type: ignore[arg-type]
        )

    async def Stats(self, ctx: CallContext, r: api.StatsRequest) -> api.StatsResponse:
        c = self._container(r.id)
        if c.cgroup is None:
            raise errdefs.NotFound("cgroup does not exist: not found")
        return api.StatsResponse(stats=pack_any(stats.metrics(c.cgroup)))

    async def Connect(self, ctx: CallContext, r: api.ConnectRequest) -> api.ConnectResponse:
        c = self.containers.get(r.id)
        return api.ConnectResponse(
            shim_pid=os.getpid(), task_pid=c.init.pid if c else 0, version=VERSION
        )

    async def Shutdown(self, ctx: CallContext, r: api.ShutdownRequest) -> empty_pb2.Empty:
        if self.containers or self._creating or self._shutting_down:
            return _EMPTY
        self._shutting_down = True
        # Answer first; the server stops right after.
        asyncio.get_running_loop().call_soon(self._on_shutdown)
        return _EMPTY

    # -- teardown ------------------------------------------------------------------

    def close(self) -> None:
        self.oom.close()
        self.reaper.set_handler(None)
