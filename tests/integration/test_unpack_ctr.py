"""The real ctr pulling images through berthd's diff and snapshots services.

``ctr images pull`` fetches through the content service, then unpacks on the
client side: Prepare a snapshot, Apply each layer with berthd's Diff service,
Commit it as the chain ID. These tests check the resulting snapshots with
``ctr snapshots`` and the mounted tree with ``ctr images mount`` against the
reference model of the test image builder (``flatten_layers``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from berth.core import mount as mountmod
from berth.core import mountutil
from tests.support.daemon import Berthd, running_berthd, short_tmpdir
from tests.support.fixtures import PushedImage
from tests.support.imagebuilder import (
    Device,
    Dir,
    Entry,
    Fifo,
    File,
    Hardlink,
    Image,
    LayerSpec,
    Symlink,
    build_image,
    busybox_rootfs_spec,
    flatten_layers,
    sample_layer_specs,
)

pytestmark = pytest.mark.integration

SNAPSHOTTERS = ["overlayfs", "native"]


@pytest.fixture(scope="module")
def d() -> Iterator[Berthd]:
    with running_berthd() as daemon:
        yield daemon
        leaked = mountutil.mount_points(daemon.base)
        assert leaked == [], f"mounts left under {daemon.base}: {leaked}"


@pytest.fixture
def target() -> Iterator[Path]:
    t = short_tmpdir("b.mnt.")
    yield t
    mountmod.unmount_all(t)
    t.rmdir()


def snapshots(d: Berthd, sn: str) -> dict[str, tuple[str, str]]:
    """``ctr snapshots ls``: key -> (parent, kind)."""
    out = d.ctr("snapshots", "--snapshotter", sn, "ls").stdout.splitlines()[1:]
    rows = [line.split() for line in out if line.strip()]
    return {r[0]: (r[1] if len(r) == 3 else "", r[-1]) for r in rows}


def tree(root: Path) -> dict[str, os.stat_result]:
    out: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = p.lstat()
    return out


def assert_tree_matches(root: Path, expected: dict[str, Entry]) -> None:
    """Paths, types, modes, owners, contents and links exactly as expected."""
    got = tree(root)
    assert sorted(got) == sorted(expected)
    for path, entry in expected.items():
        st = got[path]
        full = root / path
        if isinstance(entry, Dir):
            assert stat.S_ISDIR(st.st_mode), path
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (
                entry.mode,
                entry.uid,
                entry.gid,
            ), path
        elif isinstance(entry, File):
            assert stat.S_ISREG(st.st_mode), path
            assert full.read_bytes() == entry.content, path
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (
                entry.mode,
                entry.uid,
                entry.gid,
            ), path
        elif isinstance(entry, Symlink):
            assert stat.S_ISLNK(st.st_mode), path
            assert os.readlink(full) == entry.target, path
        elif isinstance(entry, Hardlink):
            assert st.st_ino == got[entry.target].st_ino, path
        elif isinstance(entry, Fifo):
            assert stat.S_ISFIFO(st.st_mode), path
        elif isinstance(entry, Device):
            assert stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode), path
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (entry.major, entry.minor)


def content_labels(d: Berthd, digest: str) -> str:
    rows = d.ctr("content", "ls").stdout.splitlines()
    return next(r for r in rows if r.startswith(digest))


@pytest.mark.parametrize("sn", SNAPSHOTTERS)
def test_ctr_pull_unpacks_layered_image_into_snapshots(
    d: Berthd,
    registry: object,
    push_image: Callable[..., PushedImage],
    layered_image: Image,
    repo_name: str,
    target: Path,
    sn: str,
) -> None:
    pushed = push_image(layered_image, f"{repo_name}-{sn}")
    d.ctr("images", "pull", "--plain-http", "--snapshotter", sn, pushed.ref, timeout=120)

    chains = _chain_ids(layered_image)
    snaps = snapshots(d, sn)
    for i, chain in enumerate(chains):
        assert snaps[chain] == (chains[i - 1] if i else "", "Committed")
    assert not [k for k in snaps if k.startswith("extract-")], snaps
    usage = d.ctr("snapshots", "--snapshotter", sn, "usage", chains[-1]).stdout
    assert chains[-1] in usage
    mounts = d.ctr("snapshots", "--snapshotter", sn, "mounts", "/tmp/x", chains[-1], check=False)
    assert mounts.returncode != 0  # committed snapshots have no mounts, as in containerd

    # Labels unpacking leaves on content: diff IDs on layers, the GC root of
    # the snapshot chain on the config.
    for layer in layered_image.layers:
        assert f"containerd.io/uncompressed={layer.diff_id}" in content_labels(d, layer.digest)
    cfg = content_labels(d, layered_image.config_digest)
    assert f"containerd.io/gc.ref.snapshot.{sn}={chains[-1]}" in cfg

    d.ctr("images", "mount", "--snapshotter", sn, pushed.ref, str(target))
    try:
        expected = flatten_layers([busybox_rootfs_spec(), *sample_layer_specs()])
        assert_tree_matches(target, expected)
    finally:
        d.ctr("images", "unmount", "--snapshotter", sn, "--rm", str(target))
    assert mountutil.mount_points(target) == []

    # Removing the image chain works top-down, as with containerd.
    d.ctr("images", "rm", "--sync", pushed.ref)
    for chain in reversed(chains):
        d.ctr("snapshots", "--snapshotter", sn, "rm", chain, check=False)
    assert not set(chains) & set(snapshots(d, sn))


def _chain_ids(image: Image) -> list[str]:
    from berth.core.images.rootfs import chain_ids

    return [str(c) for c in chain_ids(image.diff_ids)]


def test_ctr_pull_reuses_existing_base_layers(
    d: Berthd,
    registry: object,
    push_image: Callable[..., PushedImage],
    repo_name: str,
) -> None:
    base = LayerSpec([File("base.txt", b"base\n")])
    one = build_image([base, LayerSpec([File("one.txt", b"1\n")])])
    two = build_image([base, LayerSpec([File("two.txt", b"2\n")])])
    p1 = push_image(one, repo_name + "-one")
    p2 = push_image(two, repo_name + "-two")
    d.ctr("images", "pull", "--plain-http", p1.ref, timeout=120)
    before = snapshots(d, "overlayfs")
    base_chain = _chain_ids(one)[0]
    d.ctr("images", "pull", "--plain-http", p2.ref, timeout=120)
    after = snapshots(d, "overlayfs")
    # The shared base is one snapshot; only the top of the second image is new.
    assert set(after) - set(before) == {_chain_ids(two)[1]}
    assert after[_chain_ids(two)[1]] == (base_chain, "Committed")


def test_ctr_pull_of_128_layer_image_mounts(
    d: Berthd,
    registry: object,
    push_image: Callable[..., PushedImage],
    repo_name: str,
    target: Path,
) -> None:
    specs = [LayerSpec([File(f"layers/{i:03d}", f"{i}\n".encode())]) for i in range(128)]
    specs.append(LayerSpec([File("layers/000", b"top\n")]))
    image = build_image(specs)
    pushed = push_image(image, repo_name)
    d.ctr("images", "pull", "--plain-http", pushed.ref, timeout=300)
    d.ctr("images", "mount", pushed.ref, str(target))
    try:
        assert (target / "layers/000").read_bytes() == b"top\n"
        assert (target / "layers/127").read_bytes() == b"127\n"
        assert len(os.listdir(target / "layers")) == 128
    finally:
        d.ctr("images", "unmount", "--rm", str(target))
