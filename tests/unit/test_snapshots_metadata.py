"""The namespaced snapshot layer: isolation, labels, leases and garbage collection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from berth import errdefs
from berth.core.metadata.db import DB
from berth.core.metadata.gc import Collector, LeaseKind
from berth.core.metadata.leases import LeaseStore
from berth.core.metadata.namespaces import NamespaceStore
from berth.core.snapshots import Info, Kind
from berth.core.snapshots.metadata import MetadataSnapshotter, SnapshotKind, records
from berth.core.snapshots.native import NativeSnapshotter


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[DB, MetadataSnapshotter, Collector]]:
    db = DB(tmp_path / "meta.db")
    collector = Collector(db)
    backend = NativeSnapshotter(tmp_path / "native")
    ms = MetadataSnapshotter(db, "native", backend, collector=collector)
    collector.register(LeaseKind())
    collector.register(SnapshotKind({"native": ms}))
    yield db, ms, collector
    backend.close()
    db.close()


def test_same_key_in_two_namespaces_is_two_snapshots(
    env: tuple[DB, MetadataSnapshotter, Collector],
) -> None:
    _, ms, _ = env
    a, b = ms.namespaced("a"), ms.namespaced("b")
    a.prepare("k", labels={"who": "a"})
    b.prepare("k", labels={"who": "b"})
    assert a.stat("k").labels == {"who": "a"}
    assert b.stat("k").labels == {"who": "b"}
    a.remove("k")
    assert [i.name for i in b.walk()] == ["k"]
    assert a.walk() == []
    with pytest.raises(errdefs.NotFound):
        a.stat("k")


def test_errors_use_the_clients_keys(env: tuple[DB, MetadataSnapshotter, Collector]) -> None:
    _, ms, _ = env
    sn = ms.namespaced("ns")
    sn.prepare("p")
    with pytest.raises(errdefs.AlreadyExists, match=r'^snapshot "p": already exists$'):
        sn.prepare("p")
    with pytest.raises(errdefs.NotFound, match="parent snapshot nope"):
        sn.prepare("k", "nope")
    with pytest.raises(errdefs.InvalidArgument, match="not committed"):
        sn.prepare("k", "p")
    sn.commit("p-c", "p")
    sn.view("v", "p-c")
    with pytest.raises(errdefs.FailedPrecondition, match='snapshot "v" is not active'):
        sn.commit("v-c", "v")
    with pytest.raises(errdefs.FailedPrecondition, match="child"):
        sn.remove("p-c")
    with pytest.raises(errdefs.NotFound):
        sn.commit("x", "missing")
    with pytest.raises(errdefs.InvalidArgument):
        sn.prepare("")
    # failed creates leave nothing behind, in records or backend
    assert sorted(i.name for i in sn.walk()) == ["p-c", "v"]
    assert len(ms.backend.walk()) == 2


def test_commit_keeps_parent_and_replaces_labels(
    env: tuple[DB, MetadataSnapshotter, Collector],
) -> None:
    _, ms, _ = env
    sn = ms.namespaced("ns")
    sn.prepare("base")
    sn.commit("l1", "base")
    sn.prepare("a", "l1", labels={"old": "1"})
    sn.commit("l2", "a", labels={"new": "2", "containerd.io/snapshot/x": "y"})
    info = sn.stat("l2")
    assert (info.kind, info.parent) == (Kind.COMMITTED, "l1")
    assert info.labels == {"new": "2", "containerd.io/snapshot/x": "y"}
    # only inherited labels reach the backend
    (binfo,) = [i for i in ms.backend.walk() if i.name.endswith("/l2")]
    assert binfo.labels == {"containerd.io/snapshot/x": "y"}
    assert binfo.name.startswith("ns/")


def test_update_validates_paths_and_label_size(
    env: tuple[DB, MetadataSnapshotter, Collector],
) -> None:
    _, ms, _ = env
    sn = ms.namespaced("ns")
    sn.prepare("k", labels={"a": "1"})
    out = sn.update(Info("k", labels={"b": "2"}), ["labels.b"])
    assert out.labels == {"a": "1", "b": "2"} and out.updated >= out.created
    with pytest.raises(errdefs.InvalidArgument, match='cannot update "kind" field on snapshot "k"'):
        sn.update(Info("k"), ["kind"])
    with pytest.raises(errdefs.InvalidArgument, match="maximum size"):
        sn.update(Info("k", labels={"big": "x" * 5000}), ["labels.big"])
    with pytest.raises(errdefs.InvalidArgument):
        sn.prepare("k2", labels={"big": "x" * 5000})
    with pytest.raises(errdefs.NotFound):
        sn.update(Info("missing", labels={}), [])
    assert sn.stat("k").labels == {"a": "1", "b": "2"}


def test_target_reference_label_that_exists_is_already_exists(
    env: tuple[DB, MetadataSnapshotter, Collector],
) -> None:
    _, ms, _ = env
    sn = ms.namespaced("ns")
    sn.prepare("x")
    sn.commit("sha256:layer", "x")
    with pytest.raises(errdefs.AlreadyExists, match="target snapshot"):
        sn.prepare("extract-1 sha256:layer", labels={"containerd.io/snapshot.ref": "sha256:layer"})


def test_lease_in_request_holds_created_snapshots(
    env: tuple[DB, MetadataSnapshotter, Collector],
) -> None:
    db, ms, _ = env
    leases = LeaseStore(db)
    leases.create("ns", "L", {})
    sn = ms.namespaced("ns", lease="L")
    sn.prepare("act")
    sn.commit("done", "act")
    assert leases.list_resources("ns", "L") == [("snapshots/native", "done")]
    with pytest.raises(errdefs.NotFound, match="lease"):
        ms.namespaced("ns", lease="gone").prepare("k")
    assert [i.name for i in ms.namespaced("ns").walk()] == ["done"]


def test_namespace_with_snapshots_cannot_be_deleted(
    env: tuple[DB, MetadataSnapshotter, Collector],
) -> None:
    db, ms, _ = env
    ms.namespaced("busy").prepare("k")
    with pytest.raises(errdefs.FailedPrecondition, match="snapshots"):
        NamespaceStore(db).delete("busy")
    ms.namespaced("busy").remove("k")
    NamespaceStore(db).delete("busy")


def test_gc_removes_unreferenced_and_keeps_rooted_chains(
    env: tuple[DB, MetadataSnapshotter, Collector],
) -> None:
    db, ms, collector = env
    sn = ms.namespaced("ns")
    sn.prepare("base")
    sn.commit("l1", "base")
    sn.prepare("top", "l1", labels={"containerd.io/gc.root": "now"})
    sn.prepare("orphan")
    sn.prepare("ref-target")
    sn.prepare(
        "refs",
        labels={
            "containerd.io/gc.root": "x",
            "containerd.io/gc.ref.snapshot.native": "ref-target",
        },
    )
    leases = LeaseStore(db)
    leases.create("ns", "L", {})
    ms.namespaced("ns", lease="L").prepare("leased")
    stats = collector.collect()
    assert stats.removed.get("snapshot") == 1
    assert sorted(i.name for i in sn.walk()) == ["l1", "leased", "ref-target", "refs", "top"]
    # the orphan's backend snapshot and directory are gone as well
    assert len(ms.backend.walk()) == 5
    with db.read() as cur:
        assert len(records(cur, "native")) == 5
    # dropping the root frees the chain on the next collection
    sn.update(Info("top", labels={}), ["labels.containerd.io/gc.root"])
    collector.collect()
    assert sorted(i.name for i in sn.walk()) == ["leased", "ref-target", "refs"]


def test_collect_reclaims_backend_snapshots_without_records(
    env: tuple[DB, MetadataSnapshotter, Collector],
) -> None:
    _, ms, _ = env
    ms.backend.prepare("stray")
    ms.namespaced("ns").prepare("kept")
    assert ms.collect() == ["stray"]
    assert [i.name for i in ms.namespaced("ns").walk()] == ["kept"]
