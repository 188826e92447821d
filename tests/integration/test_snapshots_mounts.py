"""Snapshotters against the real kernel: overlayfs and bind mounts, as root."""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth import errdefs
from berth.core import mount as mountmod
from berth.core import mountutil
from berth.core.snapshots.backend import BackendSnapshotter
from berth.core.snapshots.native import NativeSnapshotter
from berth.core.snapshots.overlay import OverlaySnapshotter
from tests.support.daemon import short_tmpdir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    d = short_tmpdir("b.sn.")
    yield d
    leaked = mountutil.mount_points(d)
    for p in reversed(leaked):
        mountmod.unmount_all(p, mountmod.MNT_DETACH)
    shutil.rmtree(d, ignore_errors=True)
    assert leaked == [], f"mounts leaked under {d}: {leaked}"


@pytest.fixture(params=["overlayfs", "native"])
def sn(request: pytest.FixtureRequest, base: Path) -> Iterator[BackendSnapshotter]:
    cls = OverlaySnapshotter if request.param == "overlayfs" else NativeSnapshotter
    s = cls(base / f"{request.param}-{time.monotonic_ns()}")
    yield s
    s.close()
    assert mountutil.mount_points(s.root) == []


def _write_layer(sn: BackendSnapshotter, key: str, parent: str, files: dict[str, str]) -> None:
    """Prepare ``key`` on ``parent``, write ``files`` through its real mounts, commit."""
    mounts = sn.prepare(f"{key}-active", parent)
    with mountutil.with_temp_mount(mounts) as root:
        for name, text in files.items():
            (root / name).write_text(text)
    sn.commit(key, f"{key}-active")


def test_chain_writes_land_in_upper_and_views_read_all_layers(sn: BackendSnapshotter) -> None:
    _write_layer(sn, "l1", "", {"a": "1", "shadowed": "old"})
    _write_layer(sn, "l2", "l1", {"b": "2", "shadowed": "new"})
    mounts = sn.prepare("work", "l2")
    with mountutil.with_temp_mount(mounts) as root:
        assert (root / "a").read_text() == "1"
        assert (root / "shadowed").read_text() == "new"
        (root / "c").write_text("3")
        (root / "a").unlink()
    if isinstance(sn, OverlaySnapshotter):
        upper = Path(next(o for o in mounts[0].options if o.startswith("upperdir="))[9:])
        assert (upper / "c").read_text() == "3"
        # the deletion is a whiteout in the upper dir; the lower layer is intact
        wh = os.lstat(upper / "a")
        assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    sn.commit("l3", "work")
    with mountutil.with_temp_mount(sn.view("v", "l3")) as root:
        assert sorted(os.listdir(root)) == ["b", "c", "shadowed"]
        with pytest.raises(OSError):
            (root / "new").write_text("x")  # views are read-only
    with mountutil.with_temp_mount(sn.view("v1", "l1")) as root:
        assert sorted(os.listdir(root)) == ["a", "shadowed"]


def test_commit_of_non_active_and_remove_with_children_fail(sn: BackendSnapshotter) -> None:
    _write_layer(sn, "l1", "", {"a": "1"})
    sn.view("v", "l1")
    with pytest.raises(errdefs.FailedPrecondition):
        sn.commit("nope", "v")
    with pytest.raises(errdefs.FailedPrecondition):
        sn.remove("l1")
    sn.remove("v")
    sn.remove("l1")


def test_read_only_temp_mount_of_active_snapshot(sn: BackendSnapshotter) -> None:
    _write_layer(sn, "l1", "", {"a": "1"})
    mounts = sn.prepare("w", "l1")
    with mountutil.with_temp_mount(mounts, read_only=True) as root:
        assert (root / "a").read_text() == "1"
        with pytest.raises(OSError):
            (root / "x").write_text("no")


@pytest.mark.parametrize("depth", [128])
def test_deep_chain_mounts_and_shows_every_layer(base: Path, depth: int) -> None:
    sn = OverlaySnapshotter(base / f"deep-{depth}")
    parent = ""
    for i in range(depth):
        # Write straight into each layer's upper dir: mounting 128 times to
        # build the chain would only re-test the small case.
        sn.prepare(f"a{i}", parent)
        (m,) = sn.mounts(f"a{i}")
        upper = (
            Path(m.source)
            if m.type == "bind"
            else Path(next(o for o in m.options if o.startswith("upperdir="))[9:])
        )
        (upper / f"layer{i}").write_text(str(i))
        sn.commit(f"l{i}", f"a{i}")
        parent = f"l{i}"
    mounts = sn.prepare("top", parent)
    (m,) = mounts
    assert sum(len(o) + 1 for o in m.options) > mountmod.PAGE_SIZE  # needs compaction
    with mountutil.with_temp_mount(mounts) as root:
        names = set(os.listdir(root))
        assert names == {f"layer{i}" for i in range(depth)}
        assert (root / "layer0").read_text() == "0"
        (root / "written").write_text("top")
    with mountutil.with_temp_mount(sn.view("deepview", parent)) as root:
        assert len(os.listdir(root)) == depth
    assert mountutil.mount_points(sn.root) == []
    sn.close()


def test_native_copy_keeps_metadata_through_mounts(base: Path) -> None:
    sn = NativeSnapshotter(base / "native-meta")
    mounts = sn.prepare("a")
    with mountutil.with_temp_mount(mounts) as root:
        (root / "f").write_text("x")
        os.chown(root / "f", 1000, 1000)
        os.chmod(root / "f", 0o640)
        os.link(root / "f", root / "g")
    sn.commit("a-c", "a")
    with mountutil.with_temp_mount(sn.prepare("b", "a-c")) as root:
        st = os.stat(root / "f")
        assert (st.st_uid, st.st_mode & 0o777) == (1000, 0o640)
        assert os.stat(root / "g").st_ino == st.st_ino
        (root / "f").write_text("changed")
    with mountutil.with_temp_mount(sn.view("v", "a-c")) as root:
        assert (root / "f").read_text() == "x"  # the copy isolated the change
    sn.close()


def test_tmpfs_and_bind_mounts_and_unmount_all(base: Path) -> None:
    target = base / "stack"
    target.mkdir()
    src = base / "bsrc"
    src.mkdir()
    (src / "file").write_text("bound")
    mountmod.mount(mountmod.Mount("tmpfs", "tmpfs", ["size=1m", "mode=0755"]), target)
    mountmod.mount(mountmod.Mount("bind", str(src), ["rbind", "ro"]), target)
    assert (target / "file").read_text() == "bound"
    with pytest.raises(OSError):
        (target / "x").write_text("ro")
    assert mountutil.mount_points(target) == [str(target), str(target)]
    mountmod.unmount_all(target)
    assert mountutil.mount_points(target) == []


def test_mount_failure_reports_errno(base: Path) -> None:
    with pytest.raises(mountmod.MountError) as ei:
        mountmod.mount(mountmod.Mount("bind", str(base / "missing"), ["rbind"]), base)
    assert ei.value.errno == 2 and "No such file" in str(ei.value)
