"""The task calls ask the daemon nothing they already know.

A container handle's record names the rootfs snapshot, a Wait that returned
means the task has stopped, and a task deleted through its handle is gone:
each spares a round trip (``berth run --rm`` made four more before). Where
the SDK does not know, it still asks, so errors stay what they were. The
daemon's part is played by hand, as in the other SDK unit tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import empty_pb2

from berth import errdefs
from berth.api.services.snapshots.v1 import snapshots_pb2
from berth.api.services.tasks.v1 import tasks_pb2
from berth.api.types import mount_pb2
from berth.api.types.task import task_pb2
from berth.client import _core, _tasks_core, cio, types
from berth.client._tasks import ContainerHandle, Task
from berth.client._tasks_async import AsyncContainerHandle

BOX = types.Container(
    id="c1", runtime="io.containerd.runc.v2", snapshotter="native", snapshot_key="c1-snap"
)
OVERLAY = mount_pb2.Mount(type="bind", source="/r", options=["rbind"])
STOPPED = tasks_pb2.GetResponse(process=task_pb2.Process(id="c1", status=task_pb2.STOPPED))
RUNNING = tasks_pb2.GetResponse(process=task_pb2.Process(id="c1", pid=7, status=task_pb2.RUNNING))


def drive(op: _core.Op[Any], *replies: Any) -> tuple[list[str], Any]:
    """Run ``op``, answering its calls in order; an exception reply is thrown in."""
    methods: list[str] = []
    answers = iter(replies)
    step = _core.start(op)
    while not isinstance(step, _core.Done):
        methods.append(step.method)
        reply = next(answers)
        if isinstance(reply, BaseException):
            step = _core.resume(op, error=reply)
        else:
            step = _core.resume(op, reply)
    assert next(answers, None) is None, "operation made fewer calls than expected"
    return methods, step.value


class FakeDaemon:
    """Stands in for a client: answers each call by method name, records the order."""

    namespace = "default"

    def __init__(self, **replies: Any) -> None:
        self.replies = replies
        self.methods: list[str] = []

    def _answer(self, op: _core.Op[Any]) -> Any:
        step = _core.start(op)
        while not isinstance(step, _core.Done):
            self.methods.append(step.method)
            reply = self.replies[step.method]
            if isinstance(reply, BaseException):
                step = _core.resume(op, error=reply)
            else:
                step = _core.resume(op, reply)
        return step.value

    def _run(self, op: _core.Op[Any]) -> Any:
        return self._answer(op)

    def with_timeout(self, timeout: float | None) -> FakeDaemon:
        return self


class AsyncFakeDaemon(FakeDaemon):
    async def _run(self, op: _core.Op[Any]) -> Any:  # type: ignore[override]
        return self._answer(op)


# --- the operations -----------------------------------------------------------------------


def test_task_create_takes_the_rootfs_from_the_record_it_is_given() -> None:
    methods, pid = drive(
        _tasks_core.task_create(BOX, "", "/o", "/e", False, None, ""),
        snapshots_pb2.MountsResponse(mounts=[OVERLAY]),
        tasks_pb2.CreateTaskResponse(pid=42),
    )
    assert methods == ["Mounts", "Create"]
    assert pid == 42


def test_task_create_of_a_container_without_snapshot_sends_no_rootfs() -> None:
    bare = types.Container(id="c1", runtime="io.containerd.runc.v2")
    methods, _ = drive(
        _tasks_core.task_create(bare, "", "", "", False, None, ""),
        tasks_pb2.CreateTaskResponse(pid=1),
    )
    assert methods == ["Create"]


def test_task_delete_after_an_exit_asks_nothing_first() -> None:
    methods, status = drive(
        _tasks_core.task_delete("c1", 7, exited=True),
        tasks_pb2.DeleteResponse(exit_status=3),
    )
    assert methods == ["Delete"]
    assert status.code == 3


def test_task_delete_otherwise_still_refuses_a_running_task() -> None:
    with pytest.raises(errdefs.FailedPrecondition, match="must be stopped before deletion"):
        drive(_tasks_core.task_delete("c1", 7), RUNNING)


def test_container_delete_after_its_task_was_deleted_skips_the_task_lookup() -> None:
    methods, _ = drive(
        _tasks_core.container_delete(BOX, True, task_gone=True),
        empty_pb2.Empty(),
        empty_pb2.Empty(),
    )
    assert methods == ["Remove", "Delete"]


def test_container_delete_otherwise_still_refuses_a_container_with_a_task() -> None:
    with pytest.raises(errdefs.FailedPrecondition, match="cannot delete running task c1"):
        drive(_tasks_core.container_delete(BOX, True), RUNNING)


# --- the handles ---------------------------------------------------------------------------


def _daemon(factory: Callable[..., FakeDaemon] = FakeDaemon) -> FakeDaemon:
    return factory(
        Mounts=snapshots_pb2.MountsResponse(mounts=[OVERLAY]),
        Create=tasks_pb2.CreateTaskResponse(pid=7),
        Wait=tasks_pb2.WaitResponse(exit_status=0),
        Get=STOPPED,
        Delete=tasks_pb2.DeleteResponse(exit_status=0),
        Remove=empty_pb2.Empty(),
    )


def test_run_rm_through_a_handle_asks_only_what_it_must() -> None:
    daemon = _daemon()
    box = ContainerHandle(daemon, BOX)  # type: ignore[arg-type]
    task = box.new_task(io=cio.null_io)
    assert task.wait().code == 0
    task.delete()
    box.delete(snapshot_cleanup=True)
    assert daemon.methods == ["Mounts", "Create", "Wait", "Delete", "Remove", "Delete"]


def test_without_a_wait_delete_still_asks_the_task_state() -> None:
    daemon = _daemon()
    task = Task(daemon, "c1", 7, cio.null_io("c1"))  # type: ignore[arg-type]
    task.delete()
    assert daemon.methods == ["Get", "Delete"]


def test_a_handle_whose_task_was_not_deleted_through_it_still_looks_for_one() -> None:
    daemon = _daemon()
    daemon.replies["Get"] = RUNNING
    box = ContainerHandle(daemon, BOX)  # type: ignore[arg-type]
    box.new_task(io=cio.null_io)
    with pytest.raises(errdefs.FailedPrecondition, match="cannot delete running task"):
        box.delete(snapshot_cleanup=True)
    assert daemon.methods == ["Mounts", "Create", "Get"]


def test_the_async_handle_saves_the_same_round_trips() -> None:
    daemon = _daemon(AsyncFakeDaemon)

    async def main() -> None:
        box = AsyncContainerHandle(daemon, BOX)  # type: ignore[arg-type]
        task = await box.new_task(io=cio.null_io)
        assert (await task.wait()).code == 0
        await task.delete()
        await box.delete(snapshot_cleanup=True)

    asyncio.run(main())
    assert daemon.methods == ["Mounts", "Create", "Wait", "Delete", "Remove", "Delete"]
