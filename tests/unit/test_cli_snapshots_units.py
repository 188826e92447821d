"""Snapshots in the SDK and CLI without a daemon: operations played by hand, rendering, parsing."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import timestamp_pb2

from berth import errdefs
from berth.api.services.diff.v1 import diff_pb2
from berth.api.services.snapshots.v1 import snapshots_pb2 as pb
from berth.api.types import descriptor_pb2, mount_pb2
from berth.cli import snapshots as cli_snapshots
from berth.cli.main import run
from berth.client import AsyncSnapshots, Client, Snapshots, _core, _snapshots, types


def drive(op: _core.Op[Any], *replies: Any) -> tuple[list[Any], Any]:
    """Run ``op``, answering its calls in order; an exception reply is thrown in.

    A stream call's reply is a list of messages handed to its callback.
    """
    calls: list[Any] = []
    answers: Iterator[Any] = iter(replies)
    step = _core.start(op)
    while not isinstance(step, _core.Done):
        calls.append(step)
        reply = next(answers)
        if isinstance(reply, BaseException):
            step = _core.resume(op, error=reply)
        elif isinstance(step, _core.StreamCall):
            for message in reply:
                step.on_message(message)
            step = _core.resume(op, None)
        else:
            step = _core.resume(op, reply)
    assert next(answers, None) is None, "operation made fewer calls than expected"
    return calls, step.value


def _info(name: str, kind: int, parent: str = "") -> pb.Info:
    return pb.Info(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        parent=parent,
        labels={"a": "b"},
        created_at=timestamp_pb2.Timestamp(seconds=1_700_000_000),
    )


OVERLAY = mount_pb2.Mount(type="overlay", source="overlay", options=["lowerdir=/l"])
LAYER = descriptor_pb2.Descriptor(
    media_type=_snapshots.DEFAULT_DIFF_MEDIA_TYPE, digest="sha256:" + "a" * 64, size=10
)


# --- operations ----------------------------------------------------------------------------


def test_stat_decodes_kind_as_ctr_spells_it_and_times() -> None:
    calls, info = drive(_snapshots.stat("native", "k"), pb.StatSnapshotResponse(info=_info("k", 3)))
    assert calls[0].method == "Stat"
    assert (calls[0].request.snapshotter, calls[0].request.key) == ("native", "k")
    assert info.kind == "Committed" and info.labels == {"a": "b"}
    assert info.created_at is not None and info.created_at.year == 2023
    assert info.updated_at is None


def test_label_sends_one_mask_path_per_key_and_drops_empty_values() -> None:
    reply = pb.UpdateSnapshotResponse(info=_info("k", 2))
    calls, info = drive(_snapshots.label("overlayfs", "k", {"x": "1", "gone": ""}), reply)
    req = calls[0].request
    assert calls[0].method == "Update"
    assert sorted(req.update_mask.paths) == ["labels.gone", "labels.x"]
    assert dict(req.info.labels) == {"x": "1"}
    assert info.kind == "Active"


def test_label_with_nothing_to_change_is_a_stat_never_an_empty_mask() -> None:
    calls, _ = drive(
        _snapshots.label("overlayfs", "k", {}), pb.StatSnapshotResponse(info=_info("k", 1))
    )
    assert [c.method for c in calls] == ["Stat"]


def test_list_gathers_every_streamed_batch() -> None:
    batches = [
        pb.ListSnapshotsResponse(info=[_info("a", 3)]),
        pb.ListSnapshotsResponse(info=[_info("b", 2, "a")]),
    ]
    calls, infos = drive(_snapshots.list_("native", ["kind==active"]), batches)
    assert list(calls[0].request.filters) == ["kind==active"]
    assert [(i.name, i.parent) for i in infos] == [("a", ""), ("b", "a")]


def test_list_refuses_one_string_as_filters() -> None:
    with pytest.raises(TypeError):
        drive(_snapshots.list_("native", "kind==active"))


def test_diff_of_a_committed_snapshot_views_it_and_its_parent_then_removes_both() -> None:
    diff_reply = diff_pb2.DiffResponse(diff=LAYER)
    calls, desc = drive(
        _snapshots.diff("overlayfs", "top", None, "", "", {"l": "v"}),
        pb.StatSnapshotResponse(info=_info("top", 3, "base")),
        pb.ViewSnapshotResponse(mounts=[OVERLAY]),
        pb.ViewSnapshotResponse(mounts=[OVERLAY]),
        diff_reply,
        None,
        None,
    )
    methods = [c.method for c in calls]
    assert methods == ["Stat", "View", "View", "Diff", "Remove", "Remove"]
    parent_view, top_view = calls[1].request, calls[2].request
    assert parent_view.parent == "base" and top_view.parent == "top"
    removed = {calls[4].request.key, calls[5].request.key}
    assert removed == {parent_view.key, top_view.key}
    assert dict(calls[3].request.labels) == {"l": "v"}
    assert desc.digest == LAYER.digest


def test_diff_of_an_active_snapshot_without_parent_compares_against_nothing() -> None:
    calls, _ = drive(
        _snapshots.diff("overlayfs", "work", None, "", "", None),
        pb.StatSnapshotResponse(info=_info("work", 2)),
        pb.MountsResponse(mounts=[OVERLAY]),
        diff_pb2.DiffResponse(diff=LAYER),
    )
    assert [c.method for c in calls] == ["Stat", "Mounts", "Diff"]
    assert list(calls[2].request.left) == [] and list(calls[2].request.right) == [OVERLAY]


def test_diff_removes_its_views_when_the_differ_fails_and_reports_that_error() -> None:
    with pytest.raises(errdefs.NotImplemented):
        drive(
            _snapshots.diff("overlayfs", "top", "base", "application/zstd", "", None),
            pb.StatSnapshotResponse(info=_info("top", 3, "base")),
            pb.StatSnapshotResponse(info=_info("base", 3)),
            pb.ViewSnapshotResponse(mounts=[OVERLAY]),
            pb.ViewSnapshotResponse(mounts=[OVERLAY]),
            errdefs.NotImplemented("unsupported diff media type"),
            # Clean-up failures are swallowed: the collector takes leftover views.
            errdefs.NotFound("gone"),
            None,
        )


def test_apply_sends_the_active_snapshots_mounts_with_the_layer() -> None:
    applied = descriptor_pb2.Descriptor(media_type="application/vnd.oci.image.layer.v1.tar")
    calls, desc = drive(
        _snapshots.apply(
            "native", "k", types.Descriptor(LAYER.media_type, LAYER.digest, LAYER.size)
        ),
        pb.MountsResponse(mounts=[OVERLAY]),
        diff_pb2.ApplyResponse(applied=applied),
    )
    assert [c.method for c in calls] == ["Mounts", "Apply"]
    assert calls[1].request.diff.digest == LAYER.digest
    assert list(calls[1].request.mounts) == [OVERLAY]
    assert desc.media_type == applied.media_type


# --- the public surface -------------------------------------------------------------------


def _public(cls: type) -> dict[str, Any]:
    return {n: m for n, m in vars(cls).items() if not n.startswith("_") and callable(m)}


def test_sync_and_async_snapshots_are_twins() -> None:
    sync, asyn = _public(Snapshots), _public(AsyncSnapshots)
    assert set(sync) == set(asyn)
    for name in sync:
        s = list(inspect.signature(sync[name]).parameters.values())
        a = list(inspect.signature(asyn[name]).parameters.values())
        assert s == a, name
        if not name.startswith("with_"):
            assert inspect.iscoroutinefunction(asyn[name]), name


def test_client_snapshots_default_to_overlayfs_and_switch_without_connecting() -> None:
    with Client("/nonexistent/b.sock") as c:
        assert c.snapshots.snapshotter == "overlayfs"
        assert c.snapshots.with_snapshotter("native").snapshotter == "native"


# --- rendering ------------------------------------------------------------------------------


def _si(name: str, parent: str = "") -> types.SnapshotInfo:
    return types.SnapshotInfo(name=name, kind="Committed", parent=parent)


def test_tree_nests_children_under_parents_in_listed_order() -> None:
    infos = [_si("a"), _si("b", "a"), _si("c", "b"), _si("d", "a"), _si("e")]
    assert cli_snapshots.tree_lines(infos) == [" a", "  \\_ b", "    \\_ c", "  \\_ d", " e"]


def test_tree_shows_an_unlisted_parent_as_a_root() -> None:
    # A child listed before its parent, and a parent never listed at all.
    infos = [_si("b", "a"), _si("a"), _si("y", "x")]
    assert cli_snapshots.tree_lines(infos) == [" a", "  \\_ b", " x", "  \\_ y"]


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0.0 B"),
        (1023, "1023.0 B"),
        (1024, "1.0 KiB"),
        (12288, "12.0 KiB"),
        (5 << 30, "5.0 GiB"),
    ],
)
def test_usage_sizes_read_as_ctr_prints_them(size: int, text: str) -> None:
    assert cli_snapshots.ctr_size(size) == text


def test_mount_commands_are_worded_as_ctr_prints_them() -> None:
    m = types.Mount(type="bind", source="/s", options=("rw", "rbind"))
    assert cli_snapshots.mount_commands("/t", [m]) == ["mount -t bind /s /t -o rw,rbind"]


# --- command-line parsing (exit 2 happens before any daemon is contacted) ---------------


@pytest.mark.parametrize(
    "argv",
    [
        ["snapshots", "prepare"],
        ["snapshots", "prepare", "a", "b", "c"],
        ["snapshots", "mounts", "/t"],
        ["snapshots", "commit", "only-one"],
        ["snapshots", "rm"],
        ["snapshots", "diff"],
        ["snapshots", "info"],
        ["images", "mount", "ref-only"],
        ["images", "unmount"],
    ],
)
def test_missing_or_extra_arguments_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["--address", "/nonexistent/b.sock", *argv]) == 2
    assert "berth:" in capsys.readouterr().err


def test_unreachable_daemon_fails_with_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--address", "/nonexistent/b.sock", "snapshot", "ls"]) == 1
    assert "cannot connect to berthd" in capsys.readouterr().err
