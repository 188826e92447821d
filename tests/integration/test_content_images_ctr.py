"""Debian's real ctr against berthd: content, images, registry fetch, GC, namespaces."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Berthd, running_berthd
from tests.support.fixtures import PushedImage
from tests.support.imagebuilder import Image, write_oci_layout
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

CONTENT_ROOT = "io.containerd.content.v1.content"

# `ctr content ingest` writes without a lease, so its blobs are garbage to the
# first collection that runs (containerd behaves the same). Tests that ingest
# and then inspect use a daemon that collects only when asked to.
MANUAL_GC = """
version = 2
[plugins."io.containerd.gc.v1.scheduler"]
  startup_delay = "0s"
  deletion_threshold = 1000000
  mutation_threshold = 0
"""


@pytest.fixture(scope="module")
def manual_gc_berthd() -> Iterator[Berthd]:
    with running_berthd(config=MANUAL_GC) as d:
        yield d


def blob_file(d: Berthd, digest: str) -> Path:
    alg, _, hexpart = digest.partition(":")
    return d.root / CONTENT_ROOT / "blobs" / alg / hexpart


def force_gc(d: Berthd, namespace: str = "default") -> None:
    """Run a collection now: deleting any lease with --sync collects before returning."""
    d.ctr("leases", "create", "--id", "gc-trigger", namespace=namespace)
    d.ctr("leases", "rm", "--sync", "gc-trigger", namespace=namespace)


def content_digests(d: Berthd, namespace: str = "default") -> set[str]:
    out = d.ctr("content", "ls", "-q", namespace=namespace).stdout
    return set(out.split())


def ingest(
    d: Berthd, ref: str, data: bytes, *args: str, namespace: str = "default", check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """``ctr content ingest`` with ``data`` on stdin.

    stdin is a regular file, not a pipe: ctr seeks it to resume an ingest the
    daemon already holds bytes for (as with shared content), and a pipe cannot seek.
    """
    src = d.base / f"ingest-{hashlib.sha256(ref.encode()).hexdigest()[:12]}"
    src.write_bytes(data)
    cmd = ["ctr", "--address", d.address, "--namespace", namespace, "content", "ingest", *args, ref]
    with open(src, "rb") as stdin:
        res = subprocess.run(cmd, stdin=stdin, capture_output=True, timeout=60)
    if check:
        assert res.returncode == 0, res.stderr.decode() + d.logs()[-3000:]
    return res


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_ctr_content_ingest_get_label_rm(manual_gc_berthd: Berthd) -> None:
    d = manual_gc_berthd
    data = b"ctr content lifecycle\n" * 1000
    ingest(d, "lifecycle", data, "--expected-size", str(len(data)))
    dg = digest_of(data)
    assert dg not in content_digests(d, "elsewhere")
    ls = d.ctr("content", "ls").stdout
    row = next(line for line in ls.splitlines() if line.startswith(dg))
    assert "\t22kB\t" in row  # ctr prints decimal units: 22000 bytes

    got = subprocess.run(
        ["ctr", "--address", d.address, "-n", "default", "content", "get", dg],
        capture_output=True,
        timeout=60,
    )
    assert got.returncode == 0 and got.stdout == data

    d.ctr("content", "label", dg, "team=blue", "containerd.io/gc.root=yes")
    row = next(ln for ln in d.ctr("content", "ls").stdout.splitlines() if ln.startswith(dg))
    assert "team=blue" in row
    assert d.ctr("content", "ls", "-q", "labels.team==blue").stdout.split() == [dg]
    d.ctr("content", "label", dg, "team=")
    row = next(ln for ln in d.ctr("content", "ls").stdout.splitlines() if ln.startswith(dg))
    assert "team=" not in row

    # gc.root keeps it through a collection.
    force_gc(d)
    assert dg in content_digests(d)

    d.ctr("content", "rm", dg)
    assert dg not in content_digests(d)
    force_gc(d)
    assert not blob_file(d, dg).exists()


def test_ctr_content_ingest_wrong_digest_commits_nothing(manual_gc_berthd: Berthd) -> None:
    d = manual_gc_berthd
    data = b"not what you expected"
    wrong = "sha256:" + "ab" * 32
    res = ingest(d, "wrong-digest", data, "--expected-digest", wrong, check=False)
    assert res.returncode != 0
    assert b"unexpected commit digest" in res.stderr
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    assert actual not in content_digests(d)
    assert not blob_file(d, actual).exists()
    # The ingest is kept for inspection or resumption, as containerd keeps it.
    assert "wrong-digest" in d.ctr("content", "active").stdout


def test_ctr_images_import_ls_export_rm_frees_blobs(
    berthd: Berthd, busybox_image: Image, tmp_path: Path
) -> None:
    d = berthd
    work = tmp_path
    name = "docker.io/library/berth-import:1"
    layout = write_oci_layout(work / "in.tar", busybox_image, image_name=name)
    d.ctr("images", "import", "--no-unpack", str(layout))

    ls = d.ctr("images", "ls").stdout
    row = next(line for line in ls.splitlines() if line.startswith(name))
    assert busybox_image.digest in row
    assert d.ctr("images", "ls", "-q", f"target.digest=={busybox_image.digest}").stdout.split() == [
        name
    ]
    blobs = set(busybox_image.blobs())
    assert blobs <= content_digests(d)
    for dg in blobs:
        assert blob_file(d, dg).exists()

    out = work / "out.tar"
    d.ctr("images", "export", str(out), name)
    with tarfile.open(out) as tar:
        names = tar.getnames()
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        for dg in blobs:
            member = "blobs/sha256/" + dg.removeprefix("sha256:")
            assert member in names
            body = tar.extractfile(member).read()  # type: ignore[union-attr]
            assert "sha256:" + hashlib.sha256(body).hexdigest() == dg
    assert [m["digest"] for m in index["manifests"]] == [busybox_image.digest]

    d.ctr("images", "rm", "--sync", name)
    assert name not in d.ctr("images", "ls", "-q").stdout.split()
    assert not blobs & content_digests(d)
    for dg in blobs:
        assert not blob_file(d, dg).exists(), dg


def test_ctr_content_fetch_from_registry(
    berthd: Berthd,
    registry: Registry,
    push_image: Callable[..., PushedImage],
    busybox_image: Image,
    repo_name: str,
) -> None:
    # `ctr images pull` always unpacks, which needs the snapshot and diff
    # services; `ctr content fetch` is the same fetch without the unpack.
    d = berthd
    pushed = push_image(busybox_image, repo_name)
    d.ctr("content", "fetch", "--plain-http", pushed.ref, timeout=120)
    ls = d.ctr("images", "ls").stdout
    row = next(line for line in ls.splitlines() if line.startswith(pushed.ref))
    assert pushed.digest in row
    assert set(busybox_image.blobs()) <= content_digests(d)
    manifest_row = next(
        ln for ln in d.ctr("content", "ls").stdout.splitlines() if ln.startswith(pushed.digest)
    )
    assert "containerd.io/gc.ref.content.config=" + busybox_image.config_digest in manifest_row
    assert "containerd.io/distribution.source." in manifest_row
    # The fetch lease is gone, yet the image keeps everything through GC.
    force_gc(d)
    assert set(busybox_image.blobs()) <= content_digests(d)


def test_ctr_refuses_to_delete_a_namespace_with_content(manual_gc_berthd: Berthd) -> None:
    d = manual_gc_berthd
    data = b"keeps the namespace busy"
    ingest(d, "ns-blob", data, namespace="busy-content")
    dg = digest_of(data)
    res = d.ctr("namespaces", "rm", "busy-content", check=False)
    assert res.returncode != 0
    assert "must be empty" in res.stderr and "blobs" in res.stderr
    d.ctr("content", "rm", dg, namespace="busy-content")
    d.ctr("namespaces", "rm", "busy-content")


def test_content_is_shared_across_namespaces_but_listed_per_namespace(
    manual_gc_berthd: Berthd,
) -> None:
    d = manual_gc_berthd
    data = b"one blob, two namespaces"
    ingest(d, "share", data, namespace="share-a")
    dg = digest_of(data)
    assert dg not in content_digests(d, "share-b")
    ingest(d, "share", data, "--expected-digest", dg, namespace="share-b")
    assert dg in content_digests(d, "share-b")
    # Unreferenced content is garbage in every namespace: root it in share-b.
    d.ctr("content", "label", dg, "containerd.io/gc.root=test", namespace="share-b")
    d.ctr("content", "rm", dg, namespace="share-a")
    force_gc(d, "share-a")
    assert blob_file(d, dg).exists()  # share-b still has it
    assert dg not in content_digests(d, "share-a")
    assert dg in content_digests(d, "share-b")
    d.ctr("content", "rm", dg, namespace="share-b")
    force_gc(d, "share-b")
    assert not blob_file(d, dg).exists()


def test_deleting_content_schedules_a_collection_by_default(berthd: Berthd) -> None:
    d = berthd
    force_gc(d)  # the start-up collection is behind us
    data = b"collected without being asked"
    ingest(d, "auto", data)
    dg = digest_of(data)
    assert blob_file(d, dg).exists()
    d.ctr("content", "rm", dg)
    deadline = time.monotonic() + 10
    while blob_file(d, dg).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not blob_file(d, dg).exists(), "a deletion must trigger a collection"
