"""Server-side unpack of stored images (Berth's Transfer.Unpack) against a real berthd.

`berth images import` unpacks by default, as `ctr images import` does; the
snapshots it leaves are checked with Debian's real ctr, the mounted tree with
`berth images mount` against the reference model (flatten_layers), and a
container runs from it with `berth run`. An image imported with --no-unpack
has no snapshots until `berth images mount`, `berth run` or `berth images
unpack` (or the SDK's ``images.unpack``) unpacks it. Bad input gets
containerd's codes.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth import errdefs
from berth.client import Client, LayerProgress
from berth.core import mount as mountmod
from berth.core import mountutil
from tests.support.daemon import Berthd, env_with_src, short_tmpdir
from tests.support.imagebuilder import (
    Dir,
    Entry,
    File,
    Hardlink,
    Image,
    Symlink,
    busybox_rootfs_spec,
    flatten_layers,
    sample_layer_specs,
    write_oci_layout,
)

pytestmark = pytest.mark.integration

IMAGE = "docker.io/library/berth-unpack:1"
# runc keeps container state per namespace host-wide: ids are unique per run.
RUN = secrets.token_hex(3)


def berth(d: Berthd, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "berth.cli.main", "--address", d.address, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env_with_src(),
    )


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def chains_of(image: Image) -> list[str]:
    from berth.core.images.rootfs import chain_ids

    return [str(c) for c in chain_ids(image.diff_ids)]


def snapshots(d: Berthd, sn: str = "overlayfs") -> dict[str, tuple[str, str]]:
    """``ctr snapshots ls``: key -> (parent, kind)."""
    out = d.ctr("snapshots", "--snapshotter", sn, "ls").stdout.splitlines()[1:]
    rows = [line.split() for line in out if line.strip()]
    return {r[0]: (r[1] if len(r) == 3 else "", r[-1]) for r in rows}


def assert_chain_committed(d: Berthd, chains: list[str], sn: str = "overlayfs") -> None:
    snaps = snapshots(d, sn)
    for i, chain in enumerate(chains):
        assert snaps.get(chain) == (chains[i - 1] if i else "", "Committed"), (chain, snaps)
    assert not [k for k in snaps if k.startswith("extract-")], snaps


def assert_tree_matches(root: Path, expected: dict[str, Entry]) -> None:
    """Paths, kinds, modes, owners, contents and links as the reference model says."""
    got: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            got[str(p.relative_to(root))] = p.lstat()
    assert sorted(got) == sorted(expected)
    for path, entry in expected.items():
        st = got[path]
        if isinstance(entry, Dir):
            assert stat.S_ISDIR(st.st_mode), path
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (
                entry.mode,
                entry.uid,
                entry.gid,
            ), path
        elif isinstance(entry, File):
            assert stat.S_ISREG(st.st_mode), path
            assert (root / path).read_bytes() == entry.content, path
            assert stat.S_IMODE(st.st_mode) == entry.mode, path
        elif isinstance(entry, Symlink):
            assert os.readlink(root / path) == entry.target, path
        elif isinstance(entry, Hardlink):
            assert st.st_ino == got[entry.target].st_ino, path


def collect_gc(d: Berthd) -> None:
    """Run a collection now: deleting a lease with --sync waits for one."""
    lease = f"gc-{secrets.token_hex(3)}"
    d.ctr("leases", "create", "--id", lease)
    d.ctr("leases", "rm", "--sync", lease)


@pytest.fixture
def target() -> Iterator[Path]:
    t = short_tmpdir("b.mnt.")
    yield t
    mountmod.unmount_all(t)
    t.rmdir()


@pytest.fixture(scope="module")
def archive(layered_image: Image) -> Iterator[Path]:
    base = short_tmpdir("b.tar.")
    path = write_oci_layout(base / "layered.tar", layered_image, image_name=IMAGE)
    yield path
    path.unlink()
    base.rmdir()


@pytest.fixture(scope="module")
def imported(shared_berthd: Berthd, archive: Path) -> Berthd:
    """The shared daemon after `berth images import` (which unpacks)."""
    out = ok(berth(shared_berthd, "images", "import", str(archive)))
    assert f"imported {IMAGE}" in out
    assert f"{IMAGE}: unpacked into overlayfs" in out
    return shared_berthd


EXPECTED = flatten_layers([busybox_rootfs_spec(), *sample_layer_specs()])


# --- import unpacks ------------------------------------------------------------------------


def test_import_unpacks_into_snapshots_named_by_chain_id(
    imported: Berthd, layered_image: Image
) -> None:
    chains = chains_of(layered_image)
    assert_chain_committed(imported, chains)
    # What containerd's unpack leaves on content: diff IDs on the layers, and
    # the GC root of the chain on the config.
    content = imported.ctr("content", "ls").stdout.splitlines()
    for layer in layered_image.layers:
        row = next(r for r in content if r.startswith(layer.digest))
        assert f"containerd.io/uncompressed={layer.diff_id}" in row
    cfg = next(r for r in content if r.startswith(layered_image.config_digest))
    assert f"containerd.io/gc.ref.snapshot.overlayfs={chains[-1]}" in cfg
    # The unpack's own lease is gone, and the image alone keeps the chain.
    assert imported.ctr("leases", "ls", "-q").stdout.split() == []
    collect_gc(imported)
    assert_chain_committed(imported, chains)


def test_mount_of_imported_image_shows_the_flattened_layers(
    imported: Berthd, layered_image: Image, target: Path
) -> None:
    out = ok(berth(imported, "images", "mount", IMAGE, str(target)))
    try:
        assert out.split() == [chains_of(layered_image)[-1], str(target)]
        assert_tree_matches(target, EXPECTED)
    finally:
        ok(berth(imported, "images", "unmount", "--rm", str(target)))
    assert mountutil.mount_points(target) == []


def test_run_of_imported_image_prints_hi(imported: Berthd) -> None:
    res = berth(imported, "run", "--rm", IMAGE, f"unpack-run-{RUN}", "echo", "hi")
    assert ok(res) == "hi\n"
    assert "unpacking" not in res.stderr  # it was unpacked at import


# --- unpacking again -----------------------------------------------------------------------


def test_unpack_of_unpacked_image_reports_exists_and_changes_nothing(
    imported: Berthd, layered_image: Image
) -> None:
    chains = chains_of(layered_image)
    before = snapshots(imported)
    for _ in range(2):
        out = ok(berth(imported, "images", "unpack", IMAGE))
        lines = out.splitlines()
        assert lines[:-1] == [f"{c}: exists" for c in chains]
        assert lines[-1] == f"{IMAGE}: already unpacked in overlayfs ({chains[-1]})"
        assert snapshots(imported) == before
    assert ok(berth(imported, "images", "unpack", "-q", IMAGE)).split() == [chains[-1]]


def test_sdk_unpack_into_another_snapshotter_reports_each_layer(
    imported: Berthd, layered_image: Image
) -> None:
    chains = chains_of(layered_image)
    seen: list[LayerProgress] = []
    with Client(imported.address) as c:
        first = c.images.unpack(IMAGE, snapshotter="native", on_progress=seen.append)
        last = {p.chain_id: p for p in seen}
        assert [last[ch].status for ch in chains] == ["unpacked"] * len(chains)
        assert [last[ch].digest for ch in chains] == [la.digest for la in layered_image.layers]
        assert first.unpacked and first.chain_id == chains[-1]
        assert first.snapshotter == "native" and first.name == IMAGE
        assert first.manifest.digest == layered_image.digest
        assert_chain_committed(imported, chains, "native")

        seen.clear()
        again = c.images.unpack(IMAGE, snapshotter="native", on_progress=seen.append)
        assert not again.unpacked and again.chain_id == chains[-1]
        assert {p.chain_id: p.status for p in seen} == dict.fromkeys(chains, "exists")


# --- --no-unpack, and the commands that unpack on demand ------------------------------------


def test_no_unpack_leaves_no_snapshots_until_mount_or_run_unpacks(
    berthd: Berthd, archive: Path, layered_image: Image, target: Path
) -> None:
    chains = chains_of(layered_image)
    out = ok(berth(berthd, "images", "import", "--no-unpack", str(archive)))
    assert out.splitlines() == [f"imported {IMAGE} ({layered_image.digest})"]
    assert snapshots(berthd) == {}
    assert snapshots(berthd, "native") == {}

    # mount unpacks first, as ctr's does, and prints only what it always does.
    out = ok(berth(berthd, "images", "mount", IMAGE, str(target)))
    try:
        assert out.split() == [chains[-1], str(target)]
        assert_tree_matches(target, EXPECTED)
    finally:
        ok(berth(berthd, "images", "unmount", "--rm", str(target)))
    assert_chain_committed(berthd, chains)

    # run unpacks into its snapshotter (native has nothing yet); the
    # progress goes to stderr, stdout is the container's.
    res = berth(
        berthd, "run", "--rm", "--snapshotter", "native", IMAGE, f"unpack-nat-{RUN}", "echo", "hi"
    )
    assert ok(res) == "hi\n"
    assert f"{IMAGE}: unpacked into native ({chains[-1]})" in res.stderr
    assert_chain_committed(berthd, chains, "native")


# --- bad input -------------------------------------------------------------------------------


def test_unpack_of_missing_image_is_not_found(imported: Berthd) -> None:
    with Client(imported.address) as c, pytest.raises(errdefs.NotFound) as info:
        c.images.unpack("docker.io/library/no-such-image:1")
    assert str(info.value) == 'image "docker.io/library/no-such-image:1": not found'
    res = berth(imported, "images", "unpack", "docker.io/library/no-such-image:1")
    assert res.returncode != 0
    assert 'image "docker.io/library/no-such-image:1": not found' in res.stderr


def test_unpack_into_unknown_snapshotter_is_invalid_argument(imported: Berthd) -> None:
    with Client(imported.address) as c, pytest.raises(errdefs.InvalidArgument) as info:
        c.images.unpack(IMAGE, snapshotter="no-such-snapshotter")
    assert str(info.value) == "snapshotter not loaded: no-such-snapshotter: invalid argument"


def test_import_into_unknown_snapshotter_fails_with_the_reason(
    imported: Berthd, archive: Path
) -> None:
    res = berth(imported, "images", "import", "--snapshotter", "bogus", str(archive))
    assert res.returncode != 0
    assert "snapshotter not loaded: bogus: invalid argument" in res.stderr


def test_unpack_bad_platform_and_empty_name_are_invalid_argument(imported: Berthd) -> None:
    with Client(imported.address) as c:
        with pytest.raises(errdefs.InvalidArgument, match="platform specifier"):
            c.images.unpack(IMAGE, platform="linux/!!")
        with pytest.raises(errdefs.InvalidArgument, match="image name must not be empty"):
            c.images.unpack("")


def test_unpack_for_platform_the_image_lacks_is_not_found(
    imported: Berthd, layered_image: Image
) -> None:
    other = "linux/arm64" if os.uname().machine != "aarch64" else "linux/amd64"
    with Client(imported.address) as c, pytest.raises(errdefs.NotFound, match="not found"):
        c.images.unpack(IMAGE, platform=other)
    # A failed unpack leaves no lease and no half-made snapshot behind.
    assert imported.ctr("leases", "ls", "-q").stdout.split() == []
    assert not [k for k in snapshots(imported) if k.startswith("extract-")]
