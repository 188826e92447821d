"""A task as one shim serves it: the ``containerd.task.v2.Task`` ttrpc client.

This is the one module of the runtime that speaks the shim's wire messages.
The shim API *is* protobuf over ttrpc, so the dependency on the generated
``shim_pb2`` types is the honest one (as ``berth.core.events.typeurl`` depends
on the event types); so is the one on runc's runtime options (``oci_pb2``),
which are part of what runc shims read on ``start`` and in ``Create``. Nothing
here touches gRPC, and everything this module returns is a plain record from
:mod:`berth.core.runtime.types`.

Every call carries the task's namespace in the ``containerd-namespace-ttrpc``
header, as containerd's client does: Go shims read it from their context.

A task whose shim died is kept as a *tombstone*: :attr:`ShimTask.dead` holds
the exit the cleanup determined (128+SIGKILL unless the shim's ``delete``
said otherwise), state queries report it stopped with that status, waiters
are released with it, and anything that would need the shim fails with
NotFound. containerd forgets such a task at once; keeping it until it is
deleted lets ``ctr tasks ls`` show what happened, lets a client blocked in
``Wait`` get an exit status instead of a transport error, and keeps the
container from being removed while its task is still listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import DecodeError

from berth import errdefs, namespaces
from berth.api.events import task_pb2 as events_pb
from berth.api.runtime.v2.runc.options import oci_pb2
from berth.api.runtime.v2.task import shim_pb2 as api
from berth.api.types import mount_pb2
from berth.core.metadata.containers import AnyValue
from berth.core.runtime.binary import ShimBinary, ShimLog, wait_pid_exit
from berth.core.runtime.bundle import Bundle
from berth.core.runtime.types import (
    CreateOpts,
    ExecOpts,
    Exit,
    ProcessInfo,
    State,
    Status,
)
from berth.ttrpc import Client, ServiceStub

__all__ = [
    "RUNC_OPTIONS_TYPE",
    "SIGKILL_EXIT",
    "ShimTask",
    "decode_delete_response",
    "is_runc_options",
    "task_delete_event",
    "task_exit_event",
    "with_runc_root",
]

SERVICE = api.DESCRIPTOR.services_by_name["Task"]
#: runc's runtime options, ``containerd.runc.v1.Options``. containerd's clients
#: put the bare message name in an Any's type URL, and the Go shim resolves
#: only that form, so options Berth makes up carry it too.
RUNC_OPTIONS_TYPE = oci_pb2.Options.DESCRIPTOR.full_name
SIGKILL_EXIT = 128 + 9
STATE_TIMEOUT = 2.0
SHUTDOWN_TIMEOUT = 3.0
LOAD_TIMEOUT = 5.0


def _ts_ns(ts: timestamp_pb2.Timestamp) -> int:
    return int(ts.seconds) * 1_000_000_000 + int(ts.nanos)


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def _any(v: AnyValue | None) -> any_pb2.Any | None:
    if v is None:
        return None
    return any_pb2.Any(type_url=v.type_url, value=v.value)


def _from_any(a: any_pb2.Any) -> AnyValue:
    return AnyValue(a.type_url, a.value)


def encode_options(options: AnyValue | None) -> bytes | None:
    """Runtime options as the ``start`` command reads them on stdin."""
    opts = _any(options)
    return opts.SerializeToString() if opts is not None else None


def is_runc_options(options: AnyValue | None) -> bool:
    """Whether ``options`` are runc's ``Options`` (with or without a URL prefix)."""
    return options is not None and options.type_url.rsplit("/", 1)[-1] == RUNC_OPTIONS_TYPE


def with_runc_root(options: AnyValue | None, root: str) -> AnyValue:
    """``options`` with runc's state directory defaulted to ``root``.

    ``None`` becomes runc ``Options`` holding only ``Root``; runc ``Options``
    with an empty ``Root`` get ``root`` and keep every other field (unknown
    ones included) and their type URL. Options that name a ``Root``, options
    of another type, and runc ``Options`` that do not decode come back as they
    were: the shim reports the latter as it would under containerd.
    """
    if options is None:
        return AnyValue(RUNC_OPTIONS_TYPE, oci_pb2.Options(root=root).SerializeToString())
    if not is_runc_options(options):
        return options
    try:
        msg = oci_pb2.Options.FromString(options.value)
    except DecodeError:
        return options
    if msg.root:
        return options
    msg.root = root
    return AnyValue(options.type_url, msg.SerializeToString())


def decode_delete_response(data: bytes) -> Exit:
    """The exit a shim's ``delete`` command printed. Raises BerthError if garbled."""
    try:
        r = api.DeleteResponse.FromString(data)
    except DecodeError as exc:
        raise errdefs.BerthError(f"cannot decode shim delete response: {exc}") from None
    return Exit(pid=r.pid, status=r.exit_status, exited_at_ns=_ts_ns(r.exited_at))


def task_exit_event(id: str, exit: Exit) -> events_pb.TaskExit:
    return events_pb.TaskExit(
        container_id=id,
        id=id,
        pid=exit.pid,
        exit_status=exit.status,
        exited_at=_timestamp(exit.exited_at_ns),
    )


def task_delete_event(id: str, exit: Exit) -> events_pb.TaskDelete:
    return events_pb.TaskDelete(
        container_id=id,
        pid=exit.pid,
        exit_status=exit.status,
        exited_at=_timestamp(exit.exited_at_ns),
    )


def _state(r: api.StateResponse) -> State:
    try:
        status = Status(r.status)
    except ValueError:
        status = Status.UNKNOWN
    return State(
        id=r.exec_id or r.id,
        pid=r.pid,
        status=status,
        stdin=r.stdin,
        stdout=r.stdout,
        stderr=r.stderr,
        terminal=r.terminal,
        exit_status=r.exit_status,
        exited_at_ns=_ts_ns(r.exited_at),
    )


def now_ns() -> int:
    return time.time_ns()


class ShimTask:
    """A task and its shim connection.

    Created by the task manager (after ``start`` or at restore); callers get
    it from :meth:`TaskManager.get`. Methods raise the errdefs error the shim
    returned, ``errdefs.Unavailable`` if the connection dropped mid-call, and
    NotFound once the shim is known dead (except where a tombstone can answer).
    """

    def __init__(
        self,
        bundle: Bundle,
        client: Client,
        binary: ShimBinary,
        shim_log: ShimLog | None = None,
    ) -> None:
        self.bundle = bundle
        self.binary = binary
        self._client = client
        self._stub = ServiceStub(client, SERVICE)
        self._md = {namespaces.TTRPC_HEADER: bundle.namespace}
        self._log = shim_log
        #: Set once the shim is known dead and cleaned up: the tombstone exit.
        self.dead: Exit | None = None
        self._dead_event = asyncio.Event()
        #: True once the owner closes the connection on purpose.
        self.closing = False
        #: The init process's exit, once a waiter observed it.
        self.exit: Exit | None = None
        #: The shim server's pid, once a ``Connect`` told us (0 until then).
        self.shim_pid = 0
        #: The shim's socket address (shared by the tasks of a grouped shim).
        self.address = ""
        #: The shim group the manager started (or restored) the task in; "" for none.
        self.group = ""

    @property
    def id(self) -> str:
        return self.bundle.id

    @property
    def namespace(self) -> str:
        return self.bundle.namespace

    @property
    def client(self) -> Client:
        return self._client

    # -- plumbing ------------------------------------------------------------------

    def _gone(self) -> errdefs.NotFound:
        return errdefs.NotFound(f"task {self.id}: shim exited, process already finished")

    async def _call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        if self.dead is not None:
            raise self._gone()
        return await self._stub.call(method, request, timeout=timeout, metadata=self._md)

    def mark_dead(self, exit: Exit) -> None:
        """Turn this task into a tombstone reporting ``exit``; wakes waiters."""
        if self.dead is None:
            self.dead = exit
        self._dead_event.set()

    async def close(self) -> None:
        """Close the connection on purpose (no dead-shim handling follows)."""
        self.closing = True
        await self._client.close()
        if self._log is not None:
            self._log.close()

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()

    # -- task calls ----------------------------------------------------------------

    async def connect(self, timeout: float | None = LOAD_TIMEOUT) -> int:
        """Check the shim answers; returns the task's pid (0 before create)."""
        r = await self._call("Connect", api.ConnectRequest(id=self.id), timeout=timeout)
        self.shim_pid = int(r.shim_pid)
        return int(r.task_pid)

    async def create(self, opts: CreateOpts) -> int:
        req = api.CreateTaskRequest(
            id=self.id,
            bundle=str(self.bundle.path),
            rootfs=[
                mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options))
                for m in opts.rootfs
            ],
            stdin=opts.io.stdin,
            stdout=opts.io.stdout,
            stderr=opts.io.stderr,
            terminal=opts.io.terminal,
            checkpoint=opts.checkpoint,
            options=_any(opts.shim_options),
        )
        r = await self._call("Create", req)
        return int(r.pid)

    async def state(self, exec_id: str = "", *, timeout: float | None = STATE_TIMEOUT) -> State:
        if self.dead is not None:
            if exec_id:
                raise self._gone()
            return State(
                id=self.id,
                pid=self.dead.pid,
                status=Status.STOPPED,
                exit_status=self.dead.status,
                exited_at_ns=self.dead.exited_at_ns,
            )
        try:
            r = await self._call(
                "State", api.StateRequest(id=self.id, exec_id=exec_id), timeout=timeout
            )
        except errdefs.Unavailable:
            if self._client.closed:
                # The shim went away under us: as good as not there.
                raise self._gone() from None
            raise
        return _state(r)

    async def start(self, exec_id: str = "") -> int:
        r = await self._call("Start", api.StartRequest(id=self.id, exec_id=exec_id))
        return int(r.pid)

    async def kill(self, signal: int, *, all: bool = False, exec_id: str = "") -> None:
        await self._call(
            "Kill", api.KillRequest(id=self.id, exec_id=exec_id, signal=signal, all=all)
        )

    async def exec(self, exec_id: str, opts: ExecOpts) -> None:
        await self._call(
            "Exec",
            api.ExecProcessRequest(
                id=self.id,
                exec_id=exec_id,
                terminal=opts.io.terminal,
                stdin=opts.io.stdin,
                stdout=opts.io.stdout,
                stderr=opts.io.stderr,
                spec=_any(opts.spec),
            ),
        )

    async def delete_process(self, exec_id: str) -> Exit:
        r = await self._call("Delete", api.DeleteRequest(id=self.id, exec_id=exec_id))
        return Exit(pid=r.pid, status=r.exit_status, exited_at_ns=_ts_ns(r.exited_at))

    async def delete_task(self) -> Exit:
        """Ask the shim to delete the init process (the task itself)."""
        return await self.delete_process("")

    async def pids(self) -> list[ProcessInfo]:
        r = await self._call("Pids", api.PidsRequest(id=self.id))
        return [
            ProcessInfo(pid=p.pid, info=_from_any(p.info) if p.HasField("info") else None)
            for p in r.processes
        ]

    async def pause(self) -> None:
        await self._call("Pause", api.PauseRequest(id=self.id))

    async def resume(self) -> None:
        await self._call("Resume", api.ResumeRequest(id=self.id))

    async def checkpoint(self, path: str, options: AnyValue | None) -> None:
        await self._call(
            "Checkpoint",
            api.CheckpointTaskRequest(id=self.id, path=path, options=_any(options)),
        )

    async def update(self, resources: AnyValue | None, annotations: Mapping[str, str]) -> None:
        await self._call(
            "Update",
            api.UpdateTaskRequest(
                id=self.id, resources=_any(resources), annotations=dict(annotations)
            ),
        )

    async def stats(self) -> AnyValue:
        r = await self._call("Stats", api.StatsRequest(id=self.id))
        return _from_any(r.stats)

    async def resize_pty(self, width: int, height: int, *, exec_id: str = "") -> None:
        await self._call(
            "ResizePty",
            api.ResizePtyRequest(id=self.id, exec_id=exec_id, width=width, height=height),
        )

    async def close_io(self, *, exec_id: str = "") -> None:
        await self._call("CloseIO", api.CloseIORequest(id=self.id, exec_id=exec_id, stdin=True))

    async def wait(self, exec_id: str = "") -> Exit:
        """Block until the process exits. A tombstone answers at once; a waiter
        whose shim dies meanwhile gets the tombstone's exit once cleanup is done."""
        if self.dead is not None:
            if exec_id:
                raise self._gone()
            return self.dead
        pid = 0
        if not exec_id:
            pid = await self.connect(timeout=None)
        try:
            r = await self._stub.call(
                "Wait", api.WaitRequest(id=self.id, exec_id=exec_id), metadata=self._md
            )
        except errdefs.Unavailable:
            if exec_id or self.closing or not self._client.closed:
                raise
            await self._dead_event.wait()
            assert self.dead is not None
            return self.dead
        return Exit(pid=pid, status=r.exit_status, exited_at_ns=_ts_ns(r.exited_at))

    async def wait_shim_exit(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the shim process to be gone.

        A shim finishes its own cleanup (removing its socket) after answering
        ``Shutdown``, reading what it needs from the bundle; removing the
        bundle under it would leave its socket behind.
        """
        if self.shim_pid <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await wait_pid_exit(self.shim_pid)

    async def shutdown(self) -> None:
        """Ask the shim to exit once it serves nothing; a closed connection is fine."""
        try:
            await self._call("Shutdown", api.ShutdownRequest(id=self.id), timeout=SHUTDOWN_TIMEOUT)
        except errdefs.Unavailable:
            pass
