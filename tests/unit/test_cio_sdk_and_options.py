"""The task SDK's twins, signal names, and run's option parsing, without a daemon."""

from __future__ import annotations

import inspect
import signal

import click
import pytest

from berth import errdefs
from berth.cli.run import parse_mount
from berth.cli.tasks import parse_bytes
from berth.client import (
    AsyncContainerHandle,
    AsyncProcess,
    AsyncTask,
    AsyncTasks,
    ContainerHandle,
    Process,
    Task,
    Tasks,
)
from berth.client._tasks_core import deletable, parse_signal
from berth.client.types import ProcessState

TWINS = [
    (Tasks, AsyncTasks),
    (ContainerHandle, AsyncContainerHandle),
    (Task, AsyncTask),
    (Process, AsyncProcess),
]


def _public(cls: type) -> dict[str, object]:
    return {n: m for n, m in vars(cls).items() if not n.startswith("_") and callable(m)}


@pytest.mark.parametrize(("sync_cls", "async_cls"), TWINS, ids=lambda c: c.__name__)
def test_task_objects_have_twin_methods_and_signatures(sync_cls: type, async_cls: type) -> None:
    assert set(_public(sync_cls)) == set(_public(async_cls))
    for name in _public(sync_cls):
        s = inspect.signature(getattr(sync_cls, name))
        a = inspect.signature(getattr(async_cls, name))
        assert list(s.parameters.values()) == list(a.parameters.values()), name


@pytest.mark.parametrize("async_cls", [a for _, a in TWINS], ids=lambda c: c.__name__)
def test_async_task_calls_are_coroutines(async_cls: type) -> None:
    for name, member in _public(async_cls).items():
        if name == "wait_in_background":
            assert not inspect.iscoroutinefunction(member)  # returns a running asyncio.Task
        else:
            assert inspect.iscoroutinefunction(member), name


@pytest.mark.parametrize(
    ("text", "number"),
    [("9", 9), ("SIGKILL", 9), ("kill", 9), ("sigterm", 15), ("HUP", 1), (15, 15)],
)
def test_signals_by_name_or_number(text: str | int, number: int) -> None:
    assert parse_signal(text) == number


@pytest.mark.parametrize("text", ["SIGNOPE", "0", "999", "", "SIG KILL", -1])
def test_bad_signals_are_invalid_argument(text: str | int) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        parse_signal(text)


def test_only_stopped_tasks_or_pidless_created_ones_delete_unforced() -> None:
    def st(status: str) -> ProcessState:
        return ProcessState(container_id="c", id="c", pid=5, status=status)

    assert deletable(st("stopped"), 5) and deletable(st("unknown"), 5)
    assert not deletable(st("running"), 5) and not deletable(st("paused"), 5)
    assert not deletable(st("created"), 5) and deletable(st("created"), 0)
    assert signal.SIGKILL == 9


def test_mount_flags_in_ctrs_syntax() -> None:
    assert parse_mount("type=bind,src=/a,dst=/b,options=rbind:ro") == {
        "type": "bind",
        "source": "/a",
        "destination": "/b",
        "options": ["rbind", "ro"],
    }
    # A bind mount without bind/rbind in its options gets rbind, as ctr's users expect.
    assert parse_mount("src=/a,dst=/b,options=ro")["options"] == ["rbind", "ro"]
    assert parse_mount("type=tmpfs,source=tmpfs,destination=/t")["options"] == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("src=/a", "has no dst"),
        ("type=bind,dst", "not KEY=VALUE"),
        ("colour=red,dst=/x", "unknown key"),
    ],
)
def test_bad_mount_flags(text: str, why: str) -> None:
    with pytest.raises(click.BadParameter, match=why):
        parse_mount(text)


@pytest.mark.parametrize(
    ("text", "n"),
    [("67108864", 64 << 20), ("64m", 64 << 20), ("64MiB", 64 << 20), ("1g", 1 << 30), ("2k", 2048)],
)
def test_byte_counts(text: str, n: int) -> None:
    assert parse_bytes(text) == n


@pytest.mark.parametrize("text", ["", "-1", "1.5g", "64 apples"])
def test_bad_byte_counts(text: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_bytes(text)
