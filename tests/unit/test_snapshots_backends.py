"""Backend snapshotters (overlayfs, native) without mounting: records, errors, layout."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth import errdefs
from berth.core.snapshots import Info, Kind, Snapshotter, Usage
from berth.core.snapshots.backend import BackendSnapshotter
from berth.core.snapshots.fsutil import copy_tree, disk_usage
from berth.core.snapshots.native import NativeSnapshotter
from berth.core.snapshots.overlay import OverlaySnapshotter


@pytest.fixture(params=["overlayfs", "native"])
def sn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendSnapshotter]:
    cls = OverlaySnapshotter if request.param == "overlayfs" else NativeSnapshotter
    s = cls(tmp_path / request.param)
    yield s
    s.close()


def _dir(sn: Snapshotter, key: str) -> Path:
    """The writable directory of an active snapshot, from its mounts."""
    (m,) = sn.mounts(key)
    if m.type == "bind":
        return Path(m.source)
    upper = next(o for o in m.options if o.startswith("upperdir="))
    return Path(upper.split("=", 1)[1])


def test_prepare_commit_chain_records_parents_and_kinds(sn: BackendSnapshotter) -> None:
    sn.prepare("a")
    sn.commit("a-c", "a", labels={"x": "1"})
    sn.prepare("b", "a-c")
    sn.view("v", "a-c")
    assert sn.stat("a-c") == Info(
        "a-c", Kind.COMMITTED, "", {"x": "1"}, sn.stat("a-c").created, sn.stat("a-c").updated
    )
    assert sn.stat("b").kind is Kind.ACTIVE and sn.stat("b").parent == "a-c"
    assert sn.stat("v").kind is Kind.VIEW
    with pytest.raises(errdefs.NotFound):
        sn.stat("a")  # the active key is gone after commit
    assert [i.name for i in sn.walk()] == ["a-c", "b", "v"]
    assert [i.name for i in sn.walk(["kind==active"])] == ["b"]
    # Commas join selectors with AND; separate filter strings are alternatives.
    assert [i.name for i in sn.walk(['parent=="a-c",name~=^v'])] == ["v"]
    assert [i.name for i in sn.walk(["name==b", "name==v"])] == ["b", "v"]


def test_duplicate_key_is_already_exists(sn: BackendSnapshotter) -> None:
    sn.prepare("k")
    with pytest.raises(errdefs.AlreadyExists):
        sn.prepare("k")


def test_missing_parent_is_not_found(sn: BackendSnapshotter) -> None:
    with pytest.raises(errdefs.NotFound, match="parent"):
        sn.prepare("k", "nope")


def test_active_parent_is_invalid_argument(sn: BackendSnapshotter) -> None:
    sn.prepare("active")
    with pytest.raises(errdefs.InvalidArgument, match="not committed"):
        sn.prepare("k", "active")


def test_remove_with_children_fails_precondition(sn: BackendSnapshotter) -> None:
    sn.prepare("p")
    sn.commit("p-c", "p")
    sn.prepare("child", "p-c")
    with pytest.raises(errdefs.FailedPrecondition, match="child"):
        sn.remove("p-c")
    sn.remove("child")
    sn.remove("p-c")
    assert sn.walk() == []


def test_commit_of_view_or_committed_fails_precondition(sn: BackendSnapshotter) -> None:
    sn.prepare("p")
    sn.commit("p-c", "p")
    sn.view("v", "p-c")
    with pytest.raises(errdefs.FailedPrecondition, match="not active"):
        sn.commit("x", "v")
    with pytest.raises(errdefs.FailedPrecondition, match="not active"):
        sn.commit("y", "p-c")


def test_commit_to_taken_name_is_already_exists(sn: BackendSnapshotter) -> None:
    sn.prepare("p")
    sn.commit("p-c", "p")
    sn.prepare("q")
    with pytest.raises(errdefs.AlreadyExists):
        sn.commit("p-c", "q")
    assert sn.stat("q").kind is Kind.ACTIVE


def test_mounts_of_committed_snapshot_fail_precondition(sn: BackendSnapshotter) -> None:
    sn.prepare("p")
    sn.commit("p-c", "p")
    with pytest.raises(errdefs.FailedPrecondition):
        sn.mounts("p-c")
    with pytest.raises(errdefs.NotFound):
        sn.mounts("missing")


def test_update_labels_by_field_path(sn: BackendSnapshotter) -> None:
    sn.prepare("k", labels={"a": "1", "b": "2"})
    out = sn.update(Info("k", labels={"a": "", "c": "3"}), ["labels.a", "labels.c"])
    assert out.labels == {"b": "2", "c": "3"}
    out = sn.update(Info("k", labels={"only": "x"}))
    assert out.labels == {"only": "x"}
    with pytest.raises(
        errdefs.InvalidArgument, match='cannot update "parent" field on snapshot "k"'
    ):
        sn.update(Info("k"), ["parent"])


def test_usage_measured_live_for_active_and_stored_at_commit(sn: BackendSnapshotter) -> None:
    sn.prepare("k")
    (_dir(sn, "k") / "data").write_bytes(b"x" * 10000)
    live = sn.usage("k")
    assert live.inodes == 2 and live.size >= 10000
    sn.commit("k-c", "k")
    assert sn.usage("k-c") == live


def test_child_sees_parent_files_only_through_its_mounts(sn: BackendSnapshotter) -> None:
    sn.prepare("p")
    (_dir(sn, "p") / "from-parent").write_text("p")
    sn.commit("p-c", "p")
    mounts = sn.prepare("c", "p-c")
    if isinstance(sn, NativeSnapshotter):
        # native copies the parent into the child
        assert (Path(mounts[0].source) / "from-parent").read_text() == "p"
        assert mounts[0].options == ["rbind", "rw"]
    else:
        (m,) = mounts
        assert m.type == "overlay"
        lower = next(o for o in m.options if o.startswith("lowerdir="))
        assert lower.endswith("/fs") and ":" not in lower


def test_overlay_mount_shapes_match_containerd(tmp_path: Path) -> None:
    sn = OverlaySnapshotter(tmp_path / "o")
    (m,) = sn.prepare("base")
    assert (m.type, m.options) == ("bind", ["rw", "rbind"])
    sn.commit("l1", "base")
    sn.prepare("x", "l1")
    sn.commit("l2", "x")
    (v1,) = sn.view("v1", "l1")
    assert (v1.type, v1.options) == ("bind", ["ro", "rbind"])
    (v2,) = sn.view("v2", "l2")
    assert v2.type == "overlay"
    lowers = next(o for o in v2.options if o.startswith("lowerdir="))[len("lowerdir=") :]
    # nearest parent first
    ids = [p.split("/")[-2] for p in lowers.split(":")]
    assert ids == [str(_id(sn, "l2")), str(_id(sn, "l1"))]
    assert not any(o.startswith("upperdir=") for o in v2.options)
    (a,) = sn.prepare("a", "l2")
    assert any(o.startswith("upperdir=") for o in a.options)
    assert ("index=off" in a.options) == sn.index_off
    sn.close()


def _id(sn: BackendSnapshotter, key: str) -> int:
    from berth.core.snapshots import storage

    with sn.ms.read() as cur:
        return int(storage.get_info(cur, key)[0])


def test_remove_deletes_directory_and_cleanup_reclaims_orphans(sn: BackendSnapshotter) -> None:
    sn.prepare("k")
    d = sn.snapshot_dir(str(_id(sn, "k")))
    assert d.is_dir()
    sn.remove("k")
    assert not d.exists()
    orphan = sn.snapshots_dir / "999"
    orphan.mkdir()
    (orphan / "f").write_text("x")
    sn.prepare("kept")
    sn.cleanup()
    assert not orphan.exists()
    assert sn.snapshot_dir(str(_id(sn, "kept"))).is_dir()


def test_failed_create_leaves_no_directory(sn: BackendSnapshotter) -> None:
    sn.prepare("k")
    before = sorted(os.listdir(sn.snapshots_dir))
    with pytest.raises(errdefs.AlreadyExists):
        sn.prepare("k")
    assert sorted(os.listdir(sn.snapshots_dir)) == before


def test_ids_are_never_reused(sn: BackendSnapshotter) -> None:
    sn.prepare("a")
    first = _id(sn, "a")
    sn.remove("a")
    sn.prepare("a")
    assert _id(sn, "a") > first


def test_native_view_of_committed_needs_no_copy(tmp_path: Path) -> None:
    sn = NativeSnapshotter(tmp_path / "n")
    sn.prepare("p")
    sn.commit("p-c", "p")
    before = sorted(os.listdir(sn.snapshots_dir))
    (m,) = sn.view("v", "p-c")
    assert sorted(os.listdir(sn.snapshots_dir)) == before
    assert m.source == str(sn.snapshot_dir(str(_id(sn, "p-c"))))
    assert m.options == ["rbind", "ro"]
    sn.close()


def test_copy_tree_preserves_owners_modes_links_devices_and_holes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    os.chmod(src, 0o751)
    (src / "f").write_text("data")
    os.chown(src / "f", 1234, 5678)
    os.chmod(src / "f", 0o4755)
    os.link(src / "f", src / "hard")
    os.symlink("f", src / "link")
    os.mknod(src / "null", 0o666 | 0o020000, os.makedev(1, 3))
    with open(src / "sparse", "wb") as f:
        f.truncate(64 << 20)
    os.setxattr(src / "f", "user.berth", b"v")
    copy_tree(src, dst)
    st = os.stat(dst / "f")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 5678, 0o4755)
    assert os.stat(dst).st_mode & 0o777 == 0o751
    assert os.stat(dst / "hard").st_ino == st.st_ino
    assert os.readlink(dst / "link") == "f"
    assert os.stat(dst / "null").st_rdev == os.makedev(1, 3)
    assert os.stat(dst / "sparse").st_blocks == 0
    assert os.getxattr(dst / "f", "user.berth") == b"v"


def test_disk_usage_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 8192)
    os.link(tmp_path / "a", tmp_path / "b")
    u = disk_usage(tmp_path)
    assert u.inodes == 2
    assert u.size == os.stat(tmp_path).st_blocks * 512 + os.stat(tmp_path / "a").st_blocks * 512
    assert isinstance(u, Usage)
