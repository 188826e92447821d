"""`berth snapshots` and `berth images mount/unmount` against a real berthd, cross-checked with ctr.

Every snapshotter the daemon runs by default (overlayfs and native) goes
through the same steps. What berth creates, the real ctr must see and be able
to undo, and the other way round; mounts are real kernel mounts, and the
module fails if any is left behind.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from berth.client import Client, Descriptor, Mount
from berth.core import mount as mountmod
from berth.core import mountutil
from tests.integration.test_unpack_ctr import assert_tree_matches, tree
from tests.support.daemon import Berthd, env_with_src, running_berthd, short_tmpdir
from tests.support.fixtures import PushedImage
from tests.support.imagebuilder import (
    Image,
    busybox_rootfs_spec,
    flatten_layers,
    sample_layer_specs,
)

pytestmark = pytest.mark.integration

SNAPSHOTTERS = ["overlayfs", "native"]
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


@pytest.fixture(scope="module")
def d() -> Iterator[Berthd]:
    with running_berthd() as daemon:
        yield daemon
        leaked = mountutil.mount_points(daemon.base)
        assert leaked == [], f"mounts left under {daemon.base}: {leaked}"


@pytest.fixture
def mnt() -> Iterator[Path]:
    """An empty directory to mount on; nothing may stay mounted on it."""
    t = short_tmpdir("b.mnt.")
    yield t
    leaked = mountutil.mount_points(t)
    mountmod.unmount_all(t)
    t.rmdir()
    assert leaked == [], f"mounts left on {t}: {leaked}"


def berth(
    d: Berthd, *args: str, namespace: str = "default", check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "berth.cli.main", "--address", d.address, "-n", namespace, *args]
    res = subprocess.run(cmd, capture_output=True, timeout=120, env=env_with_src())
    if check and res.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({res.returncode}):\n{res.stdout!r}\n{res.stderr.decode()}\n"
            f"--- berthd log ---\n{d.logs()[-3000:]}"
        )
    return res


def text(res: subprocess.CompletedProcess[bytes]) -> str:
    return res.stdout.decode()


def ctr_rows(d: Berthd, ns: str, sn: str) -> dict[str, tuple[str, str]]:
    """``ctr snapshots ls``: key -> (parent, kind)."""
    lines = d.ctr("snapshots", "--snapshotter", sn, "ls", namespace=ns).stdout.splitlines()[1:]
    rows = [line.split() for line in lines if line.strip()]
    return {r[0]: (r[1] if len(r) == 3 else "", r[-1]) for r in rows}


def berth_rows(d: Berthd, ns: str, sn: str) -> dict[str, tuple[str, str]]:
    listed = json.loads(
        text(berth(d, "snapshots", "--snapshotter", sn, "ls", "--format", "json", namespace=ns))
    )
    return {i["name"]: (i["parent"], i["kind"]) for i in listed}


def run_mount_commands(lines: str) -> None:
    """Run what `snapshots mounts` / `prepare --target` printed, as a person would."""
    commands = [line for line in lines.splitlines() if line.startswith("mount ")]
    assert commands, lines
    for command in commands:
        subprocess.run(["sh", "-c", command], check=True, timeout=30)


def tar_members(layer: bytes) -> dict[str, bytes | None]:
    """A layer's entries: name -> file content (None for anything but a regular file)."""
    raw = gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer
    out: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        for m in tf.getmembers():
            f = tf.extractfile(m) if m.isreg() else None
            out[m.name.rstrip("/")] = f.read() if f else None
    return out


# --- images mount / unmount --------------------------------------------------------------


@pytest.mark.parametrize("sn", SNAPSHOTTERS)
def test_pull_unpacks_then_images_mount_shows_exactly_the_image(
    d: Berthd,
    push_image: Callable[..., PushedImage],
    layered_image: Image,
    repo_name: str,
    mnt: Path,
    sn: str,
) -> None:
    ns = f"mount-{sn}"
    pushed = push_image(layered_image, repo_name)
    pulled = text(
        berth(d, "images", "pull", "--plain-http", "--snapshotter", sn, pushed.ref, namespace=ns)
    )
    assert f"unpacked into {sn}" in pulled
    assert ctr_rows(d, ns, sn)[layered_image.chain_id][1] == "Committed"

    out = text(berth(d, "images", "mount", "--snapshotter", sn, pushed.ref, str(mnt), namespace=ns))
    assert out.splitlines() == [layered_image.chain_id, str(mnt)]
    try:
        assert_tree_matches(mnt, flatten_layers([busybox_rootfs_spec(), *sample_layer_specs()]))
        # Read-only by default, as ctr: a view held by a lease named after the target.
        with pytest.raises(OSError):
            (mnt / "written").write_text("x")
        assert ctr_rows(d, ns, sn)[str(mnt)] == (layered_image.chain_id, "View")
        leases = d.ctr("leases", "ls", namespace=ns).stdout
        assert str(mnt) in leases and f"containerd.io/gc.ref.snapshot.{sn}={mnt}" in leases
        # Mounting again on the same target reuses the snapshot (and stacks a mount).
        berth(d, "images", "mount", "--snapshotter", sn, pushed.ref, str(mnt), namespace=ns)
    finally:
        res = berth(d, "images", "unmount", "--snapshotter", sn, "--rm", str(mnt), namespace=ns)
    assert text(res).strip() == str(mnt)
    assert mountutil.mount_points(mnt) == []
    assert str(mnt) not in ctr_rows(d, ns, sn)
    assert str(mnt) not in d.ctr("leases", "ls", namespace=ns).stdout
    assert layered_image.chain_id in ctr_rows(d, ns, sn)  # the image itself stays


def test_rw_mount_by_berth_is_undone_by_ctr_and_ctr_mount_by_berth(
    d: Berthd,
    push_image: Callable[..., PushedImage],
    busybox_image: Image,
    repo_name: str,
    mnt: Path,
) -> None:
    ns = "mount-cross"
    pushed = push_image(busybox_image, repo_name)
    berth(d, "images", "pull", "--plain-http", pushed.ref, namespace=ns)

    berth(d, "images", "mount", "--rw", pushed.ref, str(mnt), namespace=ns)
    (mnt / "written").write_text("rw\n")
    assert ctr_rows(d, ns, "overlayfs")[str(mnt)] == (busybox_image.chain_id, "Active")
    d.ctr("images", "unmount", "--snapshotter", "overlayfs", "--rm", str(mnt), namespace=ns)
    assert mountutil.mount_points(mnt) == [] and not (mnt / "written").exists()
    assert str(mnt) not in ctr_rows(d, ns, "overlayfs")

    d.ctr("images", "mount", pushed.ref, str(mnt), namespace=ns)
    assert (mnt / "bin" / "busybox").is_file()
    berth(d, "images", "unmount", "--rm", str(mnt), namespace=ns)
    assert mountutil.mount_points(mnt) == []
    assert str(mnt) not in ctr_rows(d, ns, "overlayfs")
    assert str(mnt) not in d.ctr("leases", "ls", namespace=ns).stdout


# --- snapshot commands ----------------------------------------------------------------------


@pytest.mark.parametrize("sn", SNAPSHOTTERS)
def test_snapshot_lifecycle_agrees_with_ctr(d: Berthd, mnt: Path, sn: str) -> None:
    ns = f"snap-{sn}"

    def b(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return berth(d, "snapshots", "--snapshotter", sn, *args, namespace=ns, check=check)

    def c(*args: str) -> str:
        return d.ctr("snapshots", "--snapshotter", sn, *args, namespace=ns).stdout

    # prepare: the mounts it prints as JSON are the ones `mounts` prints as commands.
    as_json = json.loads(text(b("prepare", "--mounts", "base")))
    assert ctr_rows(d, ns, sn) == {"base": ("", "Active")}
    assert "containerd.io/gc.root" in json.loads(c("info", "base"))["Labels"]
    commands = text(b("mounts", str(mnt), "base"))
    assert commands.splitlines() == [
        f"mount -t {m['type']} {m['source']} {mnt} -o {','.join(m['options'])}" for m in as_json
    ]
    assert commands == c("mounts", str(mnt), "base")
    run_mount_commands(commands)
    try:
        (mnt / "etc").mkdir()
        (mnt / "etc" / "hostname").write_text("base\n")
        (mnt / "gone").write_text("soon\n")
    finally:
        mountmod.unmount_all(mnt)

    b("commit", "base-c", "base")
    d.ctr("snapshots", "--snapshotter", sn, "prepare", "top", "base-c", namespace=ns)
    assert berth_rows(d, ns, sn) == {"base-c": ("", "Committed"), "top": ("base-c", "Active")}
    assert berth_rows(d, ns, sn) == {k: (p, kind) for k, (p, kind) in ctr_rows(d, ns, sn).items()}
    assert text(b("tree")) == c("tree")
    info = json.loads(text(b("info", "top")))
    assert (info["name"], info["parent"], info["kind"]) == ("top", "base-c", "Active")

    # Labels set by either tool are seen by the other.
    assert "owner=ci" in text(b("label", "top", "owner=ci", "flag"))
    assert json.loads(c("info", "top"))["Labels"]["flag"] == "true"
    d.ctr("snapshots", "--snapshotter", sn, "label", "top", "owner=", namespace=ns)
    assert "owner" not in json.loads(text(b("info", "top")))["labels"]

    usage = text(b("usage", "-b", "base-c")).splitlines()[1].split()
    assert usage == c("usage", "-b", "base-c").splitlines()[1].split()
    assert usage[0] == "base-c" and int(usage[1]) > 0 and int(usage[2]) >= 3

    # view --target prints commands that mount the committed contents.
    run_mount_commands(text(b("view", "--target", str(mnt), "look", "base-c")))
    try:
        assert (mnt / "etc" / "hostname").read_text() == "base\n"
    finally:
        mountmod.unmount_all(mnt)
    assert ctr_rows(d, ns, sn)["look"] == ("base-c", "View")

    # rm stops at the first failure: a parent still has children.
    busy = b("rm", "base-c", check=False)
    assert busy.returncode == 1
    assert b'failed to remove "base-c"' in busy.stderr
    b("rm", "look", "top", "base-c")
    assert ctr_rows(d, ns, sn) == {} == berth_rows(d, ns, sn)


@pytest.mark.parametrize("sn", SNAPSHOTTERS)
def test_snapshot_diff_is_a_layer_that_reproduces_the_change(d: Berthd, mnt: Path, sn: str) -> None:
    ns = f"diff-{sn}"
    with Client(d.address, namespace=ns) as client:
        snaps = client.snapshots.with_snapshotter(sn)
        labels = {"containerd.io/gc.root": "test"}
        base = snaps.prepare("base", labels=labels)
        with mountutil.with_temp_mount(core_mounts(base)) as root:
            (root / "keep").write_text("kept\n")
            (root / "change").write_text("old\n")
            (root / "remove").write_text("bye\n")
            (root / "dir").mkdir()
            (root / "dir" / "inner").write_text("in\n")
        snaps.commit("base-c", "base", labels=labels)
        top = snaps.prepare("top", "base-c", labels=labels)
        with mountutil.with_temp_mount(core_mounts(top)) as root:
            (root / "change").write_text("new\n")
            (root / "remove").unlink()
            (root / "added").write_text("hello\n")
            os.symlink("keep", root / "link")

        layer = berth(d, "snapshots", "--snapshotter", sn, "diff", "top", namespace=ns).stdout
        members = tar_members(layer)
        assert members["change"] == b"new\n" and members["added"] == b"hello\n"
        assert ".wh.remove" in members
        assert "keep" not in members and "dir/inner" not in members
        # The same changes as ctr computes, and as the two-snapshot form gives.
        ctr_layer = subprocess.run(
            ["ctr", "-a", d.address, "-n", ns, "snapshots", "--snapshotter", sn, "diff", "top"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        assert tar_members(ctr_layer) == members
        two = berth(
            d,
            "snapshots",
            "--snapshotter",
            sn,
            "diff",
            "--media-type",
            LAYER_TAR,
            "base-c",
            "top",
            namespace=ns,
        ).stdout
        assert tar_members(two) == members

        # Nothing is kept without --keep (once a collection has run: deleting
        # a lease with sync forces one); with it the blob stays, rooted.
        client.leases.delete(client.leases.create().id, sync=True)
        assert client.content.list() == []
        kept = berth(
            d,
            "snapshots",
            "--snapshotter",
            sn,
            "diff",
            "--keep",
            "--label",
            "who=test",
            "top",
            namespace=ns,
        ).stdout
        [blob] = client.content.list()
        assert blob.labels["who"] == "test" and "containerd.io/gc.root" in blob.labels
        assert blob.size == len(kept)

        # Applying the layer on the base reproduces top exactly.
        snaps.prepare("again", "base-c", labels=labels)
        applied = snaps.apply("again", Descriptor(snaps_media(kept), blob.digest, blob.size))
        assert applied.media_type == LAYER_TAR
        snaps.commit("again-c", "again", labels=labels)
        snaps.commit("top-c", "top", labels=labels)
        views = {}
        for name in ("again-c", "top-c"):
            # Rooted, or a collection triggered by earlier deletions may take it.
            view = snaps.view(f"{name}-v", name, labels=labels)
            with mountutil.with_temp_mount(core_mounts(view)) as root:
                views[name] = contents(root)
            snaps.remove(f"{name}-v")
        assert views["again-c"] == views["top-c"]
        assert views["top-c"]["link"] == ("link", "keep") and "remove" not in views["top-c"]
        for key in ("again-c", "top-c", "base-c"):
            snaps.remove(key)
        client.content.delete(blob.digest)


def snaps_media(blob: bytes) -> str:
    return LAYER_TAR + "+gzip" if blob[:2] == b"\x1f\x8b" else LAYER_TAR


def core_mounts(mounts: list[Mount]) -> list[mountmod.Mount]:
    return [mountmod.Mount(m.type, m.source, list(m.options)) for m in mounts]


def contents(root: Path) -> dict[str, tuple[str, object]]:
    """A tree as (kind, payload): file bytes, link targets, directories' modes."""
    out: dict[str, tuple[str, object]] = {}
    for path, st in tree(root).items():
        full = root / path
        if stat.S_ISLNK(st.st_mode):
            out[path] = ("link", os.readlink(full))
        elif stat.S_ISREG(st.st_mode):
            out[path] = ("file", full.read_bytes())
        else:
            out[path] = ("other", stat.S_IMODE(st.st_mode))
    return out


# --- errors -------------------------------------------------------------------------------


def test_unknown_snapshotter_and_missing_keys_fail_clearly(d: Berthd, mnt: Path) -> None:
    res = berth(d, "snapshots", "--snapshotter", "nope", "ls", check=False)
    assert res.returncode == 1
    err = res.stderr.decode()
    assert "snapshotter not loaded: nope" in err and "berth plugins ls" in err
    res = berth(
        d, "images", "mount", "--snapshotter", "nope", "no/such:image", str(mnt), check=False
    )
    assert res.returncode == 1 and b"not found" in res.stderr

    for args in (
        ("info", "missing"),
        ("mounts", "/tmp/x", "missing"),
        ("usage", "missing"),
        ("label", "missing", "a=b"),
        ("commit", "new", "missing"),
        ("prepare", "child", "missing"),
        ("diff", "missing"),
    ):
        res = berth(d, "snapshots", *args, check=False)
        assert res.returncode == 1, args
        assert b"berth: " in res.stderr and b"not found" in res.stderr, (args, res.stderr)
    res = berth(d, "snapshots", "rm", "missing", check=False)
    assert res.returncode == 1
    assert res.stderr.decode().startswith('berth: failed to remove "missing": ')

    # Committed snapshots have no mounts, as in containerd.
    berth(d, "snapshots", "prepare", "err-a")
    berth(d, "snapshots", "commit", "err-c", "err-a")
    res = berth(d, "snapshots", "mounts", "/tmp/x", "err-c", check=False)
    assert res.returncode == 1
    berth(d, "snapshots", "rm", "err-c")


def test_images_mount_unpacks_on_demand_and_refuses_a_missing_target(
    d: Berthd,
    push_image: Callable[..., PushedImage],
    busybox_image: Image,
    repo_name: str,
    mnt: Path,
) -> None:
    ns = "mount-errors"
    pushed = push_image(busybox_image, repo_name)
    berth(d, "images", "pull", "--plain-http", "--no-unpack", pushed.ref, namespace=ns)
    # An image pulled without unpacking is unpacked on demand, as ctr does.
    berth(d, "images", "mount", pushed.ref, str(mnt), namespace=ns)
    assert (mnt / "bin" / "busybox").exists()
    berth(d, "images", "unmount", "--rm", str(mnt), namespace=ns)
    res = berth(d, "images", "mount", pushed.ref, str(mnt / "absent"), namespace=ns, check=False)
    assert res.returncode == 1 and b"not a directory" in res.stderr
    assert d.ctr("leases", "ls", "-q", namespace=ns).stdout.strip() == ""
    assert mountutil.mount_points(mnt) == []
    # Unmounting what is not mounted, with nothing to remove, is fine (as ctr).
    assert text(berth(d, "images", "unmount", "--rm", str(mnt), namespace=ns)).strip() == str(mnt)
