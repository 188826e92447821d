"""containerd.services.tasks.v1.Tasks over the task manager.

Wire-compatible with containerd 1.6's task service (``services/tasks``):
requests name a container, which is loaded from metadata first (NotFound
``container "x" in namespace "ns": not found``), then its task (NotFound
``task x not found``). Process state, exit codes and errors are the shim's,
passed through.

Events: the service publishes none itself. ``/tasks/create``, ``/tasks/start``,
``/tasks/exec-added``, ``/tasks/exec-started``, ``/tasks/paused``,
``/tasks/resumed``, ``/tasks/exit``, ``/tasks/oom``, ``/tasks/checkpointed`` and
``/tasks/delete`` come from the shim, forwarded over ttrpc, exactly as in
containerd; the task manager adds ``/tasks/exit`` and ``/tasks/delete`` for a
shim that died. Publishing here too would deliver each event twice.

Differences from containerd, deliberate:

* Create without rootfs mounts, for a container that names a snapshot, mounts
  that snapshot (containerd's clients always send the mounts; other clients
  need not). A snapshot that was removed is NotFound, saying so.
* The temporary directory a checkpoint is restored from is removed once the
  task exists (containerd leaves it behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from typing import Any

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.protobuf.message import DecodeError

from berth import errdefs, filters, identifiers, plugin
from berth.api.runtime.v2.runc.options import oci_pb2
from berth.api.services.tasks.v1 import tasks_pb2 as pb
from berth.api.services.tasks.v1 import tasks_pb2_grpc as pb_grpc
from berth.api.types import descriptor_pb2, metrics_pb2
from berth.api.types.task import task_pb2
from berth.core.metadata.containers import AnyValue, Container, ContainerStore
from berth.core.mount import Mount
from berth.core.runtime import (
    IO,
    CreateOpts,
    ExecOpts,
    Exit,
    ShimTask,
    State,
    Status,
    TaskManager,
)
from berth.services.server import namespace, timestamp

__all__ = ["TasksService"]

log = logging.getLogger("berth.services.tasks")

_RUNC_OPTIONS = oci_pb2.Options.DESCRIPTOR.full_name
_RUNC_CHECKPOINT_OPTIONS = oci_pb2.CheckpointOptions.DESCRIPTOR.full_name
_EMPTY = empty_pb2.Empty()


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp(ns)


def _any_in(msg: Any, field: str) -> AnyValue | None:
    if not msg.HasField(field):
        return None
    a = getattr(msg, field)
    return AnyValue(a.type_url, a.value)


def _any_out(v: AnyValue | None) -> any_pb2.Any | None:
    return any_pb2.Any(type_url=v.type_url, value=v.value) if v is not None else None


def _type_name(v: AnyValue) -> str:
    return v.type_url.rsplit("/", 1)[-1]


def _process(container_id: str, st: State) -> task_pb2.Process:
    return task_pb2.Process(
        container_id=container_id,
        id=st.id,
        pid=st.pid,
        status=int(st.status),  # type: ignore[arg-type]
        stdin=st.stdin,
        stdout=st.stdout,
        stderr=st.stderr,
        terminal=st.terminal,
        exit_status=st.exit_status,
        exited_at=_ts(st.exited_at_ns),
    )


def _delete_response(id: str, exit: Exit) -> pb.DeleteResponse:
    return pb.DeleteResponse(
        id=id, pid=exit.pid, exit_status=exit.status, exited_at=_ts(exit.exited_at_ns)
    )


def restore_path(options: AnyValue | None) -> str:
    """The CRIU image a create request restores from (runc ``Options.criu_image_path``)."""
    if options is None or _type_name(options) != _RUNC_OPTIONS:
        return ""
    try:
        return oci_pb2.Options.FromString(options.value).criu_image_path
    except DecodeError as exc:
        raise errdefs.InvalidArgument(f"invalid task create option: {exc}") from None


def checkpoint_path(options: AnyValue | None) -> str:
    """Where a checkpoint request wants the image (runc ``CheckpointOptions.image_path``)."""
    if options is None or _type_name(options) != _RUNC_CHECKPOINT_OPTIONS:
        return ""
    try:
        return oci_pb2.CheckpointOptions.FromString(options.value).image_path
    except DecodeError as exc:
        raise errdefs.InvalidArgument(f"invalid task checkpoint option: {exc}") from None


def metrics_adaptor(task: ShimTask) -> filters.Adaptor:
    """The fields a Metrics filter sees: ``id`` and ``namespace``, as in containerd."""
    return filters.adapt_mapping({"id": task.id, "namespace": task.namespace})


class _BlobSink:
    """A file-like ``write`` into a content writer, for streaming a tar."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.size = 0
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.writer.write(data)
        self.hash.update(data)
        self.size += len(data)
        return len(data)


class TasksService(pb_grpc.TasksServicer):
    def __init__(
        self,
        manager: TaskManager,
        md: Any,
        *,
        snapshotters: Any = None,
    ) -> None:
        self.manager = manager
        self.md = md
        self.containers = ContainerStore(md)
        self.snapshotters = snapshotters

    def add_to_server(self, server: Any) -> None:
        pb_grpc.add_TasksServicer_to_server(self, server)

    # -- lookups -------------------------------------------------------------------

    async def _container(self, ns: str, id: str) -> Container:
        return await self.containers.db.query(lambda: self.containers.get(ns, id))

    async def _task(self, ns: str, id: str) -> ShimTask:
        await self._container(ns, id)
        return self.manager.get(ns, id)

    async def _state(self, task: ShimTask, exec_id: str = "") -> State | None:
        """State as containerd's getProcessState reports it: None when the
        process is gone, UNKNOWN (and a log line) when the shim fails to say."""
        try:
            return await task.state(exec_id)
        except errdefs.NotFound:
            return None
        except (errdefs.BerthError, OSError) as exc:
            log.error(
                "get state failed",
                extra={"fields": {"id": task.id, "exec_id": exec_id, "error": str(exc)}},
            )
            return State(id=exec_id or task.id, pid=0, status=Status.UNKNOWN)

    async def _rootfs(self, ns: str, container: Container, request: Any) -> list[Mount]:
        if request.rootfs:
            return [Mount(m.type, m.source, list(m.options)) for m in request.rootfs]
        if not container.snapshot_key:
            return []
        if self.snapshotters is None:
            raise errdefs.FailedPrecondition("no snapshotters are loaded to mount the rootfs")
        sn = self.snapshotters.get_required(container.snapshotter).namespaced(ns)
        try:
            mounts: list[Mount] = await asyncio.to_thread(sn.mounts, container.snapshot_key)
        except errdefs.NotFound:
            raise errdefs.NotFound(
                f"container {container.id}: its snapshot {container.snapshot_key!r}"
                f" ({container.snapshotter}) does not exist: it was removed, so the task has"
                " no root filesystem: not found"
            ) from None
        return mounts

    # -- create / start / delete -----------------------------------------------------

    async def Create(self, request: pb.CreateTaskRequest, context: Any) -> pb.CreateTaskResponse:
        ns = namespace(context)
        container = await self._container(ns, request.container_id)
        task_options = _any_in(request, "options")
        checkpoint = restore_path(task_options)
        temp_checkpoint = ""
        if not checkpoint and request.HasField("checkpoint"):
            checkpoint = temp_checkpoint = await self._restore_checkpoint(ns, request.checkpoint)
        try:
            if container.spec is None:
                raise errdefs.InvalidArgument(f"container {container.id} has no spec")
            rootfs = await self._rootfs(ns, container, request)
            opts = CreateOpts(
                spec=container.spec,
                runtime=request.runtime_path or container.runtime.name,
                rootfs=rootfs,
                io=IO(request.stdin, request.stdout, request.stderr, request.terminal),
                checkpoint=checkpoint,
                runtime_options=container.runtime.options,
                task_options=task_options,
            )
            _, pid = await self.manager.create(ns, request.container_id, opts)
        finally:
            if temp_checkpoint:
                await asyncio.to_thread(shutil.rmtree, temp_checkpoint, True)
        return pb.CreateTaskResponse(container_id=request.container_id, pid=pid)

    async def _restore_checkpoint(self, ns: str, desc: descriptor_pb2.Descriptor) -> str:
        # Checkpoint paths only: tarfile and the image package stay unloaded
        # in a daemon that never checkpoints.
        import tarfile

        from berth.core.images.mediatypes import CONTAINERD_CHECKPOINT

        if desc.media_type != CONTAINERD_CHECKPOINT:
            raise errdefs.BerthError(f'unsupported checkpoint type "{desc.media_type}"')
        content = self.md.require_content()

        def extract() -> str:
            path = tempfile.mkdtemp(prefix="ctrd-checkpoint")
            try:
                reader = content.reader_at(ns, desc.digest)
                with reader, tempfile.TemporaryFile() as buf:
                    for chunk in reader.iter_chunks():
                        buf.write(chunk)
                    buf.seek(0)
                    with tarfile.open(fileobj=buf, mode="r:*") as tar:
                        tar.extractall(path, filter="data")
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
            return path

        return await asyncio.to_thread(extract)

    async def Start(self, request: pb.StartRequest, context: Any) -> pb.StartResponse:
        ns = namespace(context)
        task = await self._task(ns, request.container_id)
        pid = await task.start(request.exec_id)
        return pb.StartResponse(pid=pid)

    async def Delete(self, request: pb.DeleteTaskRequest, context: Any) -> pb.DeleteResponse:
        ns = namespace(context)
        await self._container(ns, request.container_id)
        exit = await self.manager.delete(ns, request.container_id)
        return _delete_response("", exit)

    async def DeleteProcess(
        self, request: pb.DeleteProcessRequest, context: Any
    ) -> pb.DeleteResponse:
        ns = namespace(context)
        task = await self._task(ns, request.container_id)
        exit = await task.delete_process(request.exec_id)
        return _delete_response(request.exec_id, exit)

    # -- queries -------------------------------------------------------------------

    async def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:
        ns = namespace(context)
        task = await self._task(ns, request.container_id)
        st = await self._state(task, request.exec_id)
        if st is None:
            raise errdefs.NotFound(f"process {request.exec_id or request.container_id} not found")
        return pb.GetResponse(process=_process(task.id, st))

    async def List(self, request: pb.ListTasksRequest, context: Any) -> pb.ListTasksResponse:
        ns = namespace(context)
        tasks = self.manager.list(ns)
        states = await asyncio.gather(*(self._state(t) for t in tasks))
        return pb.ListTasksResponse(
            tasks=[_process(t.id, st) for t, st in zip(tasks, states, strict=True) if st]
        )

    async def ListPids(self, request: pb.ListPidsRequest, context: Any) -> pb.ListPidsResponse:
        ns = namespace(context)
        task = await self._task(ns, request.container_id)
        procs = await task.pids()
        return pb.ListPidsResponse(
            processes=[task_pb2.ProcessInfo(pid=p.pid, info=_any_out(p.info)) for p in procs]
        )

    async def Metrics(self, request: pb.MetricsRequest, context: Any) -> pb.MetricsResponse:
        ns = namespace(context)
        flt = filters.parse_all(list(request.filters))
        tasks = [t for t in self.manager.list(ns) if flt.match(metrics_adaptor(t))]

        async def collect(t: ShimTask) -> Any:
            collected = _ts(time.time_ns())
            try:
                data = await t.stats()
            except errdefs.NotFound:
                return None
            except (errdefs.BerthError, OSError) as exc:
                log.error(
                    "collecting metrics failed",
                    extra={"fields": {"id": t.id, "error": str(exc)}},
                )
                return None
            return metrics_pb2.Metric(timestamp=collected, id=t.id, data=_any_out(data))

        metrics = await asyncio.gather(*(collect(t) for t in tasks))
        return pb.MetricsResponse(metrics=[m for m in metrics if m is not None])

    async def Wait(self, request: pb.WaitRequest, context: Any) -> pb.WaitResponse:
        ns = namespace(context)
        task = await self._task(ns, request.container_id)
        exit = await task.wait(request.exec_id)
        return pb.WaitResponse(exit_status=exit.status, exited_at=_ts(exit.exited_at_ns))

    # -- process control -----------------------------------------------------------

    async def Kill(self, request: pb.KillRequest, context: Any) -> empty_pb2.Empty:
        ns = namespace(context)
        task = await self._task(ns, request.container_id)
        if request.exec_id:
            # ``all`` means every process of the container; it has no meaning
            # for one exec'd process, so containerd drops it there too.
            await task.kill(request.signal, exec_id=request.exec_id)
        else:
            await task.kill(request.signal, all=request.all)
        return _EMPTY

    async def Exec(self, request: pb.ExecProcessRequest, context: Any) -> empty_pb2.Empty:
        ns = namespace(context)
        if not request.exec_id:
            raise errdefs.InvalidArgument("exec id cannot be empty")
        task = await self._task(ns, request.container_id)
        try:
            identifiers.validate(request.exec_id)
        except errdefs.InvalidArgument as exc:
            raise errdefs.InvalidArgument(f"invalid exec id {request.exec_id}: {exc}") from None
        await task.exec(
            request.exec_id,
            ExecOpts(
                spec=_any_in(request, "spec"),
                io=IO(request.stdin, request.stdout, request.stderr, request.terminal),
            ),
        )
        return _EMPTY

    async def ResizePty(self, request: pb.ResizePtyRequest, context: Any) -> empty_pb2.Empty:
        ns = namespace(context)
        task = await self._task(ns, request.container_id)
        await task.resize_pty(request.width, request.height, exec_id=request.exec_id)
        return _EMPTY

    async def CloseIO(self, request: pb.CloseIORequest, context: Any) -> empty_pb2.Empty:
        ns = namespace(context)
        task = await self._task(ns, request.container_id)
        if request.stdin:
            await task.close_io(exec_id=request.exec_id)
        return _EMPTY

    async def Pause(self, request: pb.PauseTaskRequest, context: Any) -> empty_pb2.Empty:
        ns = namespace(context)
        task = await self._task(ns, request.container_id)
        await task.pause()
        return _EMPTY

    async def Resume(self, request: pb.ResumeTaskRequest, context: Any) -> empty_pb2.Empty:
        ns = namespace(context)
        task = await self._task(ns, request.container_id)
        await task.resume()
        return _EMPTY

    async def Update(self, request: pb.UpdateTaskRequest, context: Any) -> empty_pb2.Empty:
        ns = namespace(context)
        task = await self._task(ns, request.container_id)
        await task.update(_any_in(request, "resources"), request.annotations)
        return _EMPTY

    # -- checkpoint ----------------------------------------------------------------

    async def Checkpoint(
        self, request: pb.CheckpointTaskRequest, context: Any
    ) -> pb.CheckpointTaskResponse:

        ns = namespace(context)
        container = await self._container(ns, request.container_id)
        task = self.manager.get(ns, container.id)
        options = _any_in(request, "options")
        image = checkpoint_path(options)
        if image:
            # The caller keeps the image where it asked for it.
            await task.checkpoint(image, options)
            return pb.CheckpointTaskResponse()
        image = await asyncio.to_thread(tempfile.mkdtemp, prefix="ctd-checkpoint")
        try:
            await task.checkpoint(image, options)
            descriptors = await asyncio.to_thread(self._store_checkpoint, ns, container, image)
        finally:
            await asyncio.to_thread(shutil.rmtree, image, True)
        return pb.CheckpointTaskResponse(descriptors=descriptors)

    def _store_checkpoint(
        self, ns: str, container: Container, image: str
    ) -> list[descriptor_pb2.Descriptor]:
        import tarfile

        from berth.core.images.mediatypes import CONTAINERD_CHECKPOINT, CONTAINERD_CHECKPOINT_CONFIG

        content = self.md.require_content()

        def write(ref: str, media_type: str, produce: Any) -> descriptor_pb2.Descriptor:
            w = content.writer(ns, ref)
            sink = _BlobSink(w)
            try:
                produce(sink)
                digest = "sha256:" + sink.hash.hexdigest()
                with contextlib.suppress(errdefs.AlreadyExists):
                    w.commit(sink.size, digest)
            finally:
                with contextlib.suppress(Exception):
                    w.close()
            return descriptor_pb2.Descriptor(media_type=media_type, digest=digest, size=sink.size)

        def tar_image(sink: _BlobSink) -> None:
            with tarfile.open(fileobj=sink, mode="w|") as tar:  # type: ignore[call-overload]
                for name in sorted(os.listdir(image)):
                    tar.add(os.path.join(image, name), arcname=name)

        spec = container.spec or AnyValue("")
        spec_bytes = any_pb2.Any(type_url=spec.type_url, value=spec.value).SerializeToString()
        return [
            write(f"checkpoint-{container.id}-{os.getpid()}", CONTAINERD_CHECKPOINT, tar_image),
            write(
                f"checkpoint-config-{container.id}-{os.getpid()}",
                CONTAINERD_CHECKPOINT_CONFIG,
                lambda sink: sink.write(spec_bytes),
            ),
        ]


def _init(ic: plugin.InitContext) -> TasksService:
    manager = ic.get_by_id(plugin.RUNTIME_V2, "task")
    md = ic.get(plugin.METADATA)
    try:
        snapshotters = ic.get_by_id(plugin.SERVICE, "snapshots-service")
    except errdefs.BerthError:
        snapshotters = None
    return TasksService(manager, md, snapshotters=snapshotters)


plugin.register(
    plugin.Registration(
        type=plugin.GRPC,
        id="tasks",
        init=_init,
        requires=(plugin.RUNTIME_V2, plugin.METADATA, plugin.SERVICE, plugin.EVENT),
    )
)
