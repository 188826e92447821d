"""The SDK's container operations, driven without a daemon, and their twins."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
from google.protobuf import any_pb2

from berth import errdefs
from berth.api.services.containers.v1 import containers_pb2 as pb
from berth.api.services.snapshots.v1 import snapshots_pb2 as snap_pb
from berth.api.types import mount_pb2
from berth.client import AsyncContainers, Containers, _core, types


def _public(cls: type) -> dict[str, object]:
    return {n: m for n, m in vars(cls).items() if not n.startswith("_")}


def test_sync_and_async_containers_are_twins() -> None:
    sync, asynchronous = _public(Containers), _public(AsyncContainers)
    assert set(sync) == set(asynchronous)
    for name, member in sync.items():
        s = inspect.signature(member)  # type: ignore[arg-type]
        a = inspect.signature(asynchronous[name])  # type: ignore[arg-type]
        assert list(s.parameters.values()) == list(a.parameters.values()), name
        assert inspect.iscoroutinefunction(asynchronous[name]), name


def drive(op: _core.Op[Any], *responses: Any) -> tuple[list[Any], Any]:
    """Run ``op`` against canned responses (an exception is thrown in)."""
    calls: list[Any] = []
    step = _core.start(op)
    replies = list(responses)
    while not isinstance(step, _core.Done):
        calls.append(step)
        reply = replies.pop(0)
        if isinstance(reply, BaseException):
            step = _core.resume(op, error=reply)
        else:
            step = _core.resume(op, reply)
    return calls, step.value


def test_create_stores_a_dict_spec_as_containerds_typed_json() -> None:
    made = pb.Container(
        id="c",
        runtime=pb.Container.Runtime(name="rt"),
        spec=any_pb2.Any(type_url=types.SPEC_TYPE_URL, value=b'{"a":1}'),
    )
    op = _core.containers_create("c", {"a": 1}, "rt", None, "img", {"k": "v"}, "", "", None)
    calls, result = drive(op, pb.CreateContainerResponse(container=made))
    req = calls[0].request
    assert (calls[0].method, req.container.spec.type_url) == ("Create", types.SPEC_TYPE_URL)
    assert json.loads(req.container.spec.value) == {"a": 1}
    assert not req.container.runtime.HasField("options")
    assert result.spec_json == {"a": 1}
    assert result.runtime_options is None and result.created_at is None


def test_label_sends_one_masked_update() -> None:
    op = _core.containers_label("c", {"a": "1", "gone": ""})
    calls, result = drive(op, pb.UpdateContainerResponse(container=pb.Container(id="c")))
    assert list(calls[0].request.update_mask.paths) == ["labels.a", "labels.gone"]
    assert result.id == "c"


def test_prepare_rootfs_turns_a_missing_chain_into_a_clear_precondition() -> None:
    cfg = types.ImageConfig("img:1", "sha256:m", "sha256:c", {}, ("sha256:d",), "sha256:d")
    op = _core.prepare_rootfs(cfg, "overlayfs", "key", None)
    with pytest.raises(errdefs.FailedPrecondition) as exc:
        drive(op, errdefs.NotFound("snapshot sha256:d does not exist: not found"))
    assert str(exc.value) == (
        "image img:1 is not unpacked for snapshotter overlayfs: run berth images pull / unpack"
    )


def test_prepare_rootfs_stacks_on_the_chain_id() -> None:
    cfg = types.ImageConfig("img:1", "sha256:m", "sha256:c", {}, ("sha256:d",), "sha256:d")
    mounts = [mount_pb2.Mount(type="bind", source="/x", options=["rbind", "rw"])]
    calls, result = drive(
        _core.prepare_rootfs(cfg, "native", "key", {"l": "v"}),
        snap_pb.StatSnapshotResponse(),
        snap_pb.PrepareSnapshotResponse(mounts=mounts),
    )
    assert [c.method for c in calls] == ["Stat", "Prepare"]
    assert (calls[1].request.parent, calls[1].request.key) == ("sha256:d", "key")
    assert result == [types.Mount("bind", "/x", "", ("rbind", "rw"))]


def test_an_image_without_layers_prepares_without_a_parent() -> None:
    cfg = types.ImageConfig("scratch:1", "sha256:m", "sha256:c", {}, (), "")
    calls, _ = drive(
        _core.prepare_rootfs(cfg, "native", "key", None), snap_pb.PrepareSnapshotResponse()
    )
    assert [c.method for c in calls] == ["Prepare"]
    assert calls[0].request.parent == ""


def test_a_single_string_filter_is_refused() -> None:
    with pytest.raises(TypeError, match="filters must be a sequence"):
        drive(_core.containers_list("id==x"))
