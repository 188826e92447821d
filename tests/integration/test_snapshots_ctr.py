"""The real ctr (Debian's containerd client) driving berthd's snapshots service."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from berth.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from berth.api.services.snapshots.v1 import snapshots_pb2 as pb
from berth.api.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from berth.core import mount as mountmod
from berth.core import mountutil
from tests.support.daemon import Berthd, running_berthd, short_tmpdir

pytestmark = pytest.mark.integration

SNAPSHOTTERS = ["overlayfs", "native"]

# GC would collect the unlabelled views ctr creates (as containerd's would)
# whenever some deletion triggers it; these tests are about the API.
CONFIG = 'version = 2\ndisabled_plugins = ["io.containerd.gc.v1.scheduler"]\n'


@pytest.fixture(scope="module")
def d() -> Iterator[Berthd]:
    with running_berthd(config=CONFIG) as daemon:
        yield daemon
        leaked = mountutil.mount_points(daemon.base)
        assert leaked == [], f"mounts left under {daemon.base}: {leaked}"


@pytest.fixture
def target() -> Iterator[Path]:
    t = short_tmpdir("b.mnt.")
    yield t
    mountmod.unmount_all(t)
    t.rmdir()


@pytest.fixture(scope="module")
def stub(d: Berthd) -> Iterator[pb_grpc.SnapshotsStub]:
    with grpc.insecure_channel(f"unix://{d.address}") as ch:
        yield pb_grpc.SnapshotsStub(ch)


def snap(d: Berthd, sn: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return d.ctr("snapshots", "--snapshotter", sn, *args, check=check)


def run_printed_mounts(output: str) -> None:
    """Run the ``mount ...`` lines ctr printed, exactly as a user would."""
    lines = [line for line in output.splitlines() if line.startswith("mount ")]
    assert lines, output
    for line in lines:
        subprocess.run(shlex.split(line), check=True, capture_output=True, text=True)


@pytest.mark.parametrize("sn", SNAPSHOTTERS)
def test_ctr_snapshot_lifecycle(d: Berthd, sn: str, target: Path) -> None:
    p = f"{sn}-"
    # prepare prints the mount command with --target; run it and write a file.
    out = snap(d, sn, "prepare", "--target", str(target), f"{p}a").stdout
    run_printed_mounts(out)
    (target / "hello").write_text("from layer one")
    mountmod.unmount_all(target)

    snap(d, sn, "commit", f"{p}l1", f"{p}a")
    snap(d, sn, "prepare", f"{p}b", f"{p}l1")
    snap(d, sn, "view", f"{p}v", f"{p}l1")

    rows = {
        line.split()[0]: line.split()[1:]
        for line in snap(d, sn, "ls").stdout.splitlines()[1:]
        if line.startswith(p)
    }
    assert rows == {
        f"{p}l1": ["Committed"],
        f"{p}b": [f"{p}l1", "Active"],
        f"{p}v": [f"{p}l1", "View"],
    }

    tree = snap(d, sn, "tree").stdout
    assert re.search(rf"^ {p}l1\n(  \\_ {p}(b|v)\n){{2}}", tree, re.M), tree

    info = json.loads(snap(d, sn, "info", f"{p}b").stdout)
    assert info["Kind"] == "Active" and info["Parent"] == f"{p}l1"
    assert "containerd.io/gc.root" in info["Labels"]  # ctr prepare sets it

    # the active snapshot's printed mounts show the parent's file and take writes
    run_printed_mounts(snap(d, sn, "mounts", str(target), f"{p}b").stdout)
    assert (target / "hello").read_text() == "from layer one"
    (target / "more").write_bytes(b"x" * 20000)
    mountmod.unmount_all(target)

    usage = {
        line.split()[0]: line.split()[1:]
        for line in snap(d, sn, "usage", "-b").stdout.splitlines()[1:]
        if line.startswith(p)
    }
    assert int(usage[f"{p}b"][0]) >= 20000
    assert int(usage[f"{p}l1"][1]) >= 2  # the layer's dir and "hello"

    # the view is read-only and shows the committed layer
    run_printed_mounts(snap(d, sn, "mounts", str(target), f"{p}v").stdout)
    assert (target / "hello").read_text() == "from layer one"
    assert not (target / "more").exists()
    with pytest.raises(OSError):
        (target / "nope").write_text("x")
    mountmod.unmount_all(target)

    labels = snap(d, sn, "label", f"{p}l1", "team=berth").stdout.strip()
    assert "team=berth" in labels.split(",")
    labels = snap(d, sn, "label", f"{p}l1", "team=").stdout.strip()
    assert "team=" not in labels

    res = snap(d, sn, "rm", f"{p}l1", check=False)
    assert res.returncode != 0 and "cannot remove snapshot with child" in res.stderr
    res = snap(d, sn, "commit", f"{p}x", f"{p}v", check=False)
    assert res.returncode != 0 and "not active" in res.stderr

    snap(d, sn, "rm", f"{p}b", f"{p}v")
    snap(d, sn, "rm", f"{p}l1")
    assert not [line for line in snap(d, sn, "ls").stdout.splitlines() if line.startswith(p)]
    # nothing of it is left on disk either
    root = d.root / f"io.containerd.snapshotter.v1.{sn}" / "snapshots"
    assert list(root.iterdir()) == []


def test_ctr_unknown_snapshotter_is_rejected(d: Berthd) -> None:
    res = snap(d, "zfs-nope", "ls", check=False)
    assert res.returncode != 0
    assert "snapshotter not loaded: zfs-nope" in res.stderr


def test_snapshotters_are_listed_as_plugins(d: Berthd) -> None:
    out = d.ctr("plugins", "ls").stdout
    for sn in SNAPSHOTTERS:
        assert re.search(rf"io\.containerd\.snapshotter\.v1\s+{sn}\s+linux/\w+\s+ok", out), out
    assert re.search(r"io\.containerd\.grpc\.v1\s+snapshots\s+-\s+ok", out), out


MD = (("containerd-namespace", "codes"),)


def _code(fn: object, request: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as ei:
        out = fn(request, metadata=MD)  # type: ignore[operator]
        if hasattr(out, "__next__"):
            list(out)  # a stream fails when read
    err = ei.value
    return err.code(), err.details()  # type: ignore[attr-defined]


@pytest.mark.parametrize("sn", SNAPSHOTTERS)
def test_bad_input_gets_containerds_codes(stub: pb_grpc.SnapshotsStub, sn: str) -> None:
    C = grpc.StatusCode
    assert (
        _code(stub.Stat, pb.StatSnapshotRequest(snapshotter="", key="k"))[0] is C.INVALID_ARGUMENT
    )
    code, msg = _code(stub.List, pb.ListSnapshotsRequest(snapshotter="nope"))
    assert code is C.INVALID_ARGUMENT and "snapshotter not loaded: nope" in msg
    code, msg = _code(stub.Stat, pb.StatSnapshotRequest(snapshotter=sn, key="missing"))
    assert code is C.NOT_FOUND and "missing" in msg
    assert _code(stub.Mounts, pb.MountsRequest(snapshotter=sn, key="missing"))[0] is C.NOT_FOUND
    assert _code(stub.Usage, pb.UsageRequest(snapshotter=sn, key="missing"))[0] is C.NOT_FOUND
    assert (
        _code(stub.Remove, pb.RemoveSnapshotRequest(snapshotter=sn, key="missing"))[0]
        is C.NOT_FOUND
    )

    stub.Prepare(pb.PrepareSnapshotRequest(snapshotter=sn, key="dup"), metadata=MD)
    code, msg = _code(stub.Prepare, pb.PrepareSnapshotRequest(snapshotter=sn, key="dup"))
    assert code is C.ALREADY_EXISTS and "dup" in msg
    code, msg = _code(
        stub.Prepare, pb.PrepareSnapshotRequest(snapshotter=sn, key="k", parent="no-such")
    )
    assert code is C.NOT_FOUND and "parent" in msg
    code, msg = _code(
        stub.Prepare, pb.PrepareSnapshotRequest(snapshotter=sn, key="k", parent="dup")
    )
    assert code is C.INVALID_ARGUMENT and "not committed" in msg
    code, msg = _code(stub.List, pb.ListSnapshotsRequest(snapshotter=sn, filters=["name=="]))
    assert code is C.INVALID_ARGUMENT
    code, msg = _code(
        stub.Update,
        pb.UpdateSnapshotRequest(
            snapshotter=sn, info=pb.Info(name="dup"), update_mask={"paths": ["parent"]}
        ),
    )
    assert code is C.INVALID_ARGUMENT and "cannot update" in msg

    stub.Commit(pb.CommitSnapshotRequest(snapshotter=sn, name="dup-c", key="dup"), metadata=MD)
    stub.Prepare(pb.PrepareSnapshotRequest(snapshotter=sn, key="kid", parent="dup-c"), metadata=MD)
    code, msg = _code(stub.Remove, pb.RemoveSnapshotRequest(snapshotter=sn, key="dup-c"))
    assert code is C.FAILED_PRECONDITION and "child" in msg
    code, _ = _code(stub.Commit, pb.CommitSnapshotRequest(snapshotter=sn, name="x", key="dup-c"))
    assert code is C.FAILED_PRECONDITION
    code, _ = _code(stub.Mounts, pb.MountsRequest(snapshotter=sn, key="dup-c"))
    assert code is C.FAILED_PRECONDITION
    code, _ = _code(stub.Commit, pb.CommitSnapshotRequest(snapshotter=sn, name="dup-c", key="kid"))
    assert code is C.ALREADY_EXISTS
    for key in ("kid", "dup-c"):
        stub.Remove(pb.RemoveSnapshotRequest(snapshotter=sn, key=key), metadata=MD)


def test_list_streams_in_batches_of_100(d: Berthd, stub: pb_grpc.SnapshotsStub) -> None:
    md = (("containerd-namespace", "many"),)
    for i in range(130):
        stub.View(pb.ViewSnapshotRequest(snapshotter="overlayfs", key=f"v{i:03}"), metadata=md)
    replies = list(stub.List(pb.ListSnapshotsRequest(snapshotter="overlayfs"), metadata=md))
    assert [len(r.info) for r in replies] == [100, 30]
    assert [i.name for r in replies for i in r.info] == [f"v{i:03}" for i in range(130)]
    assert all(i.kind == pb.VIEW for r in replies for i in r.info)
    # another namespace sees none of them
    assert snap(d, "overlayfs", "ls").stdout.count("v0") == 0
    for i in range(130):
        stub.Remove(pb.RemoveSnapshotRequest(snapshotter="overlayfs", key=f"v{i:03}"), metadata=md)


def test_lease_header_adds_snapshots_to_the_lease(d: Berthd) -> None:
    d.ctr("leases", "create", "--id", "unpack-1", namespace="leased")
    with grpc.insecure_channel(f"unix://{d.address}") as ch:
        snaps = pb_grpc.SnapshotsStub(ch)
        leases = leases_pb2_grpc.LeasesStub(ch)
        md = (("containerd-namespace", "leased"), ("containerd-lease", "unpack-1"))
        snaps.Prepare(pb.PrepareSnapshotRequest(snapshotter="native", key="ex"), metadata=md)
        snaps.Commit(
            pb.CommitSnapshotRequest(snapshotter="native", name="layer", key="ex"), metadata=md
        )
        res = leases.ListResources(
            leases_pb2.ListResourcesRequest(id="unpack-1"),
            metadata=(("containerd-namespace", "leased"),),
        )
        assert [(r.type, r.id) for r in res.resources] == [("snapshots/native", "layer")]
        bad = (("containerd-namespace", "leased"), ("containerd-lease", "no-such-lease"))
        with pytest.raises(grpc.RpcError) as ei:
            snaps.Prepare(pb.PrepareSnapshotRequest(snapshotter="native", key="x"), metadata=bad)
        assert ei.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        snaps.Remove(
            pb.RemoveSnapshotRequest(snapshotter="native", key="layer"),
            metadata=(("containerd-namespace", "leased"),),
        )


def test_gc_collects_unrooted_snapshots_and_their_directories(berthd: Berthd) -> None:
    d = berthd

    def force_gc() -> None:
        # Deleting a lease with --sync runs a collection before returning.
        d.ctr("leases", "create", "--id", "gc-trigger")
        d.ctr("leases", "rm", "--sync", "gc-trigger")

    force_gc()  # after this, only deletions schedule collections
    snap(d, "overlayfs", "prepare", "a")  # ctr labels it containerd.io/gc.root
    snap(d, "overlayfs", "commit", "kept", "a")
    snap(d, "overlayfs", "view", "doomed", "kept")  # no root, no lease
    root = d.root / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
    assert len(list(root.iterdir())) == 2
    force_gc()
    keys = [line.split()[0] for line in snap(d, "overlayfs", "ls").stdout.splitlines()[1:]]
    assert keys == ["kept"]
    assert len(list(root.iterdir())) == 1
