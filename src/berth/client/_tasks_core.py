"""The Tasks service's calls, written once as I/O-free operations (see ``_core``).

Each function here is an operation generator, driven by the blocking or the
asyncio transport exactly like those in ``_core``. What containerd's Go
client does on the client side, beyond the RPC itself, is done here too, so
the SDK behaves the same against berthd and containerd:

* creating a task sends the container's rootfs mounts, read from its
  snapshotter (containerd's server expects them from the client);
* deleting a task or process first checks it has stopped (FailedPrecondition
  ``task must be stopped before deletion: running``), and a forced delete
  kills everything and waits for the exit first;
* exit statuses, process states, pids and metrics are decoded into the
  plain records of :mod:`berth.client.types`.
"""

from __future__ import annotations

import json
import signal as _signal
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from berth import errdefs
from berth.client import types
from berth.client._core import Call, Op, containers_delete
from berth.client._lazy import LazyModule

# Imported on first use, as in _core (see _lazy); type checkers see the real modules.
if TYPE_CHECKING:
    from google.protobuf import any_pb2

    from berth.api.services.snapshots.v1 import snapshots_pb2 as snapshots_pb
    from berth.api.services.snapshots.v1 import snapshots_pb2_grpc as snapshots_grpc
    from berth.api.services.tasks.v1 import tasks_pb2 as pb
    from berth.api.services.tasks.v1 import tasks_pb2_grpc as pb_grpc
    from berth.api.types import mount_pb2
else:
    any_pb2 = LazyModule("google.protobuf.any_pb2")
    snapshots_pb = LazyModule("berth.api.services.snapshots.v1.snapshots_pb2")
    snapshots_grpc = LazyModule("berth.api.services.snapshots.v1.snapshots_pb2_grpc")
    pb = LazyModule("berth.api.services.tasks.v1.tasks_pb2")
    pb_grpc = LazyModule("berth.api.services.tasks.v1.tasks_pb2_grpc")
    mount_pb2 = LazyModule("berth.api.types.mount_pb2")

_STATUS = {0: "unknown", 1: "created", 2: "running", 3: "stopped", 4: "paused", 5: "pausing"}


# --- decoding ------------------------------------------------------------------------------


def _time(ts: Any) -> datetime | None:
    # An unset exited_at arrives as the zero timestamp (gogo non-nullable).
    if ts.seconds <= 0 and ts.nanos == 0:
        return None
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)


def _decode_any(value: Any) -> dict[str, Any] | None:
    """A typed payload as a dict of protobuf field names, or None if its type is unknown."""
    from google.protobuf import descriptor_pool, json_format
    from google.protobuf.message import DecodeError
    from google.protobuf.message_factory import GetMessageClass

    # What these payloads may be: cgroups v1/v2 metrics and runc's options.
    from berth.api.cgroups.stats.v1 import metrics_pb2 as _cg1  # noqa: F401
    from berth.api.cgroups.v2.stats import metrics_pb2 as _cg2  # noqa: F401
    from berth.api.runtime.v2.runc.options import oci_pb2 as _runc  # noqa: F401

    name = value.type_url.rsplit("/", 1)[-1]
    try:
        desc = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return None
    msg = GetMessageClass(desc)()
    try:
        msg.ParseFromString(value.value)
        decoded: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    except (DecodeError, json_format.Error, TypeError, KeyError):
        return None
    return decoded


def _state(p: Any) -> types.ProcessState:
    return types.ProcessState(
        container_id=p.container_id,
        id=p.id,
        pid=p.pid,
        status=_STATUS.get(int(p.status), "unknown"),
        stdin=p.stdin,
        stdout=p.stdout,
        stderr=p.stderr,
        terminal=p.terminal,
        exit_status=p.exit_status,
        exited_at=_time(p.exited_at),
    )


def _exit(r: Any) -> types.ExitStatus:
    return types.ExitStatus(code=r.exit_status, exited_at=_time(r.exited_at))


def parse_signal(text: str | int) -> int:
    """A signal number from ``9``, ``KILL``, ``SIGKILL`` or ``sigkill``.

    Raises InvalidArgument for anything else, with ctr's wording.
    """
    if isinstance(text, int):
        if 0 < text < _signal.NSIG:
            return text
        raise errdefs.InvalidArgument(f"invalid signal {text}")
    s = text.strip()
    if s.isdigit():
        n = int(s)
        if 0 < n < _signal.NSIG:
            return n
        raise errdefs.InvalidArgument(f"invalid signal {text}")
    name = s.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    sig = getattr(_signal.Signals, name, None) if name.isidentifier() else None
    if sig is None:
        raise errdefs.InvalidArgument(f"unknown signal {text!r}")
    return int(sig)


# --- create, start, wait --------------------------------------------------------------------


def task_create(
    container: types.Container,
    stdin: str,
    stdout: str,
    stderr: str,
    terminal: bool,
    options: types.AnyValue | None,
    runtime_path: str,
) -> Op[int]:
    """Create the container's task; returns its init pid (not started yet).

    As containerd's client does, the rootfs mounts come from the
    container's snapshotter, so the server gets them with the request.
    ``container`` is the caller's record (a handle's ``info``), used as it
    is: containerd's client reads it again first, which costs a round trip
    to learn what the handle was just given.
    """
    container_id = container.id
    rootfs: list[Any] = []
    if container.snapshot_key:
        resp = yield Call(
            snapshots_grpc.SnapshotsStub,
            "Mounts",
            snapshots_pb.MountsRequest(
                snapshotter=container.snapshotter, key=container.snapshot_key
            ),
        )
        rootfs = list(resp.mounts)
    req = pb.CreateTaskRequest(
        container_id=container_id,
        rootfs=[mount_pb2.Mount(type=m.type, source=m.source, options=m.options) for m in rootfs],
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        terminal=terminal,
        options=any_pb2.Any(type_url=options.type_url, value=options.value) if options else None,
        runtime_path=runtime_path,
    )
    created = yield Call(pb_grpc.TasksStub, "Create", req)
    return int(created.pid)


def task_start(container_id: str, exec_id: str) -> Op[int]:
    resp = yield Call(
        pb_grpc.TasksStub, "Start", pb.StartRequest(container_id=container_id, exec_id=exec_id)
    )
    return int(resp.pid)


def task_wait(container_id: str, exec_id: str) -> Op[types.ExitStatus]:
    resp = yield Call(
        pb_grpc.TasksStub, "Wait", pb.WaitRequest(container_id=container_id, exec_id=exec_id)
    )
    return _exit(resp)


def task_get(container_id: str, exec_id: str) -> Op[types.ProcessState]:
    resp = yield Call(
        pb_grpc.TasksStub, "Get", pb.GetRequest(container_id=container_id, exec_id=exec_id)
    )
    return _state(resp.process)


def tasks_list() -> Op[list[types.ProcessState]]:
    resp = yield Call(pb_grpc.TasksStub, "List", pb.ListTasksRequest())
    return sorted((_state(p) for p in resp.tasks), key=lambda s: s.id)


# --- control ------------------------------------------------------------------------------


def task_kill(container_id: str, exec_id: str, signal: int, all: bool) -> Op[None]:
    if all and exec_id:
        raise errdefs.InvalidArgument("specify an exec-id or all; not both")
    req = pb.KillRequest(container_id=container_id, exec_id=exec_id, signal=signal, all=all)
    yield Call(pb_grpc.TasksStub, "Kill", req)


def task_pause(container_id: str) -> Op[None]:
    yield Call(pb_grpc.TasksStub, "Pause", pb.PauseTaskRequest(container_id=container_id))


def task_resume(container_id: str) -> Op[None]:
    yield Call(pb_grpc.TasksStub, "Resume", pb.ResumeTaskRequest(container_id=container_id))


def task_resize(container_id: str, exec_id: str, width: int, height: int) -> Op[None]:
    req = pb.ResizePtyRequest(
        container_id=container_id, exec_id=exec_id, width=width, height=height
    )
    yield Call(pb_grpc.TasksStub, "ResizePty", req)


def task_close_stdin(container_id: str, exec_id: str) -> Op[None]:
    req = pb.CloseIORequest(container_id=container_id, exec_id=exec_id, stdin=True)
    yield Call(pb_grpc.TasksStub, "CloseIO", req)


def task_update(
    container_id: str,
    resources: Mapping[str, Any] | None,
    annotations: Mapping[str, str] | None,
) -> Op[None]:
    """Update the running task's resources (an OCI ``LinuxResources`` dict)."""
    any_res = None
    if resources is not None:
        body = json.dumps(dict(resources), separators=(",", ":")).encode()
        any_res = any_pb2.Any(type_url=types.RESOURCES_TYPE_URL, value=body)
    req = pb.UpdateTaskRequest(
        container_id=container_id, resources=any_res, annotations=dict(annotations or {})
    )
    yield Call(pb_grpc.TasksStub, "Update", req)


def task_pids(container_id: str) -> Op[list[types.ProcessInfo]]:
    resp = yield Call(pb_grpc.TasksStub, "ListPids", pb.ListPidsRequest(container_id=container_id))
    return [
        types.ProcessInfo(pid=p.pid, info=_decode_any(p.info) if p.HasField("info") else None)
        for p in resp.processes
    ]


def tasks_metrics(filters: Iterable[str]) -> Op[list[types.TaskMetric]]:
    if isinstance(filters, str | bytes):
        raise TypeError("filters must be a sequence of strings, not a single string")
    resp = yield Call(pb_grpc.TasksStub, "Metrics", pb.MetricsRequest(filters=list(filters)))
    out = []
    for m in resp.metrics:
        has = m.HasField("data")
        out.append(
            types.TaskMetric(
                id=m.id,
                timestamp=_time(m.timestamp) if m.HasField("timestamp") else None,
                type_url=m.data.type_url if has else "",
                stats=_decode_any(m.data) if has else None,
                data=types.AnyValue(m.data.type_url, m.data.value) if has else None,
            )
        )
    return out


def task_exec(
    container_id: str,
    exec_id: str,
    process_spec: Mapping[str, Any],
    stdin: str,
    stdout: str,
    stderr: str,
    terminal: bool,
) -> Op[None]:
    """Add process ``exec_id`` (an OCI ``process`` dict) to the task; start it separately."""
    body = json.dumps(dict(process_spec), separators=(",", ":")).encode()
    req = pb.ExecProcessRequest(
        container_id=container_id,
        exec_id=exec_id,
        spec=any_pb2.Any(type_url=types.PROCESS_SPEC_TYPE_URL, value=body),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        terminal=terminal,
    )
    yield Call(pb_grpc.TasksStub, "Exec", req)


# --- delete -----------------------------------------------------------------------------------

# What may be deleted without being forced, as containerd's client decides.
_DELETABLE = ("stopped", "unknown", "")


def deletable(state: types.ProcessState, pid: int) -> bool:
    """Whether a task may be deleted unforced: stopped, or created with pid 0."""
    return state.status in _DELETABLE or (state.status == "created" and pid == 0)


def task_delete(
    container_id: str, pid: int, state: types.ProcessState | None = None, *, exited: bool = False
) -> Op[types.ExitStatus]:
    """Delete a stopped task (or a created one whose pid is 0); returns its exit.

    ``state`` is the task's state when the caller has just read it (to drain
    its I/O first), so it is not asked for twice; containerd's client also
    checks the status once per delete. ``exited`` says the caller saw the
    process's Wait return: it has stopped, so the status is not asked at all.
    """
    if not exited:
        st = state if state is not None else (yield from task_get(container_id, ""))
        if not deletable(st, pid):
            raise errdefs.FailedPrecondition(
                f"task must be stopped before deletion: {st.status}: failed precondition"
            )
    resp = yield Call(pb_grpc.TasksStub, "Delete", pb.DeleteTaskRequest(container_id=container_id))
    return _exit(resp)


def process_delete(container_id: str, exec_id: str) -> Op[types.ExitStatus]:
    st = yield from task_get(container_id, exec_id)
    if st.status in ("running", "paused", "pausing"):
        raise errdefs.FailedPrecondition(
            f"current process state: {st.status}, process must be stopped before deletion:"
            " failed precondition"
        )
    req = pb.DeleteProcessRequest(container_id=container_id, exec_id=exec_id)
    resp = yield Call(pb_grpc.TasksStub, "DeleteProcess", req)
    return _exit(resp)


def kill_for_delete(container_id: str, exec_id: str) -> Op[None]:
    """SIGKILL every process (``WithProcessKill``): a process already gone, or
    one that cannot be signalled because it has stopped, counts as killed."""
    try:
        yield from task_kill(container_id, exec_id, int(_signal.SIGKILL), not exec_id)
    except (errdefs.NotFound, errdefs.FailedPrecondition):
        pass


def container_delete(
    container: types.Container, snapshot_cleanup: bool, *, task_gone: bool = False
) -> Op[None]:
    """Delete a container that has no task; ``snapshot_cleanup`` also removes
    its rootfs snapshot (containerd's ``WithSnapshotCleanup``). ``task_gone``
    says the caller has just deleted the container's task itself, so the
    check for one is skipped."""
    if not task_gone:
        try:
            yield from task_get(container.id, "")
        except errdefs.NotFound:
            pass
        else:
            raise errdefs.FailedPrecondition(
                f"cannot delete running task {container.id}: failed precondition"
            )
    if snapshot_cleanup and container.snapshotter and container.snapshot_key:
        req = snapshots_pb.RemoveSnapshotRequest(
            snapshotter=container.snapshotter, key=container.snapshot_key
        )
        try:
            yield Call(snapshots_grpc.SnapshotsStub, "Remove", req)
        except errdefs.NotFound:
            pass
    yield from containers_delete(container.id)
