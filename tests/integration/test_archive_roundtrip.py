"""Image archives against a real berthd: the SDK, the real ctr, and skopeo as judges."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from berth import errdefs
from berth.cli._context import Globals
from berth.cli.images_archive import export_cmd, import_cmd
from berth.client import AsyncClient, Client
from tests.support.daemon import Berthd, short_tmpdir
from tests.support.imagebuilder import (
    Image,
    Index,
    build_image,
    host_platform,
    marker_layer_spec,
    write_docker_archive,
    write_oci_layout,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def work() -> Iterator[Path]:
    d = short_tmpdir("ba.")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def image() -> Image:
    return build_image([marker_layer_spec("archive-it")])


def _client(d: Berthd, ns: str) -> Client:
    return Client(d.address, namespace=ns)


def _ctr_images(d: Berthd, ns: str) -> dict[str, str]:
    out = d.ctr("images", "ls", namespace=ns).stdout.splitlines()[1:]
    return {line.split()[0]: line.split()[2] for line in out if line.strip()}


def test_sdk_export_then_import_keeps_every_digest(
    shared_berthd: Berthd, work: Path, image: Image
) -> None:
    src = write_oci_layout(work / "in.tar", image, ref_name="1", image_name="example.com/a/rt:1")
    with _client(shared_berthd, "arch-rt1") as c:
        records = c.import_archive(src)
        assert [(r.name, str(r.target.digest)) for r in records] == [
            ("example.com/a/rt:1", image.digest)
        ]
        assert _ctr_images(shared_berthd, "arch-rt1") == {"example.com/a/rt:1": image.digest}
        c.export_archive(work / "out.tar", ["example.com/a/rt:1"])
    with _client(shared_berthd, "arch-rt2") as c:
        again = c.import_archive(work / "out.tar")
    assert [(r.name, str(r.target.digest)) for r in again] == [("example.com/a/rt:1", image.digest)]
    listed = shared_berthd.ctr("content", "ls", "-q", namespace="arch-rt2").stdout.split()
    assert set(image.blobs()) <= set(listed)
    # The import's lease is gone; the images keep the content alive.
    assert shared_berthd.ctr("leases", "ls", "-q", namespace="arch-rt2").stdout.strip() == ""


def test_ctr_export_is_imported_by_berth_and_berth_export_by_ctr(
    shared_berthd: Berthd, work: Path, image: Image
) -> None:
    src = write_docker_archive(work / "d.tar", image, repo_tags=("arch/ctr:5",))
    # The real ctr imports a docker archive into berthd...
    shared_berthd.ctr("images", "import", "--no-unpack", str(src), namespace="arch-c1")
    ctr_digest = _ctr_images(shared_berthd, "arch-c1")["docker.io/arch/ctr:5"]
    # ...and berth's import of the same file synthesises byte-identical documents.
    with _client(shared_berthd, "arch-c2") as c:
        (rec,) = c.import_archive(src)
    assert (rec.name, str(rec.target.digest)) == ("docker.io/arch/ctr:5", ctr_digest)

    shared_berthd.ctr(
        "images", "export", str(work / "ctr.tar"), "docker.io/arch/ctr:5", namespace="arch-c1"
    )
    with _client(shared_berthd, "arch-c3") as c:
        (rec,) = c.import_archive(work / "ctr.tar")
        assert (rec.name, str(rec.target.digest)) == ("docker.io/arch/ctr:5", ctr_digest)
        c.export_archive(work / "berth.tar", ["docker.io/arch/ctr:5"])
    shared_berthd.ctr(
        "images", "import", "--no-unpack", str(work / "berth.tar"), namespace="arch-c4"
    )
    assert _ctr_images(shared_berthd, "arch-c4") == {"docker.io/arch/ctr:5": ctr_digest}
    # Same tar entries, same index and manifest.json as ctr's own export.
    ours, theirs = _members(work / "berth.tar"), _members(work / "ctr.tar")
    assert ours == theirs


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        return {
            m.name: (tf.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
            for m in tf.getmembers()
        }


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_accepts_berth_exports_as_oci_and_docker_archives(
    shared_berthd: Berthd, work: Path, image: Image
) -> None:
    src = write_oci_layout(work / "s.tar", image, ref_name="1", image_name="example.com/sk/o:1")
    with _client(shared_berthd, "arch-sk") as c:
        c.import_archive(src)
        c.export_archive(work / "out.tar", ["example.com/sk/o:1"])
    for transport in (f"oci-archive:{work / 'out.tar'}:1", f"docker-archive:{work / 'out.tar'}"):
        res = subprocess.run(
            ["skopeo", "inspect", "--raw", transport], capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0, (transport, res.stderr)
        doc = json.loads(res.stdout)
        if transport.startswith("oci"):
            assert doc == image.manifest_json
        else:
            # docker-archive: skopeo rebuilds a schema 2 manifest over the same config.
            assert doc["config"]["digest"] == image.config_digest


def test_all_platforms_round_trip_of_a_multiplatform_index(
    shared_berthd: Berthd, work: Path, multiplatform_index: Index
) -> None:
    src = write_oci_layout(work / "m.tar", multiplatform_index, image_name="example.com/multi:1")
    with _client(shared_berthd, "arch-mp1") as c:
        (rec,) = c.import_archive(src, all_platforms=True)
        assert str(rec.target.digest) == multiplatform_index.digest
        c.export_archive(work / "all.tar", ["example.com/multi:1"], all_platforms=True)
        c.export_archive(work / "host.tar", ["example.com/multi:1"])
    all_blobs = {n for n in _members(work / "all.tar") if n.count("/") == 2}
    assert {
        "blobs/sha256/" + d.removeprefix("sha256:") for d in multiplatform_index.blobs()
    } == all_blobs
    host_blobs = {n for n in _members(work / "host.tar") if n.count("/") == 2}
    host = multiplatform_index.image_for(host_platform())
    assert (
        {"blobs/sha256/" + d.removeprefix("sha256:") for d in host.blobs()} < host_blobs < all_blobs
    )
    with _client(shared_berthd, "arch-mp2") as c:
        (again,) = c.import_archive(work / "all.tar", all_platforms=True)
    assert str(again.target.digest) == multiplatform_index.digest
    listed = set(shared_berthd.ctr("content", "ls", "-q", namespace="arch-mp2").stdout.split())
    assert set(multiplatform_index.blobs()) <= listed
    # Exporting every platform from a namespace holding only the host's fails cleanly.
    with _client(shared_berthd, "arch-mp3") as c:
        c.import_archive(work / "host.tar")
        with pytest.raises(errdefs.NotFound, match="is not in the store"):
            c.export_archive(work / "fail.tar", ["example.com/multi:1"], all_platforms=True)
    assert not (work / "fail.tar").exists()


def test_hostile_archive_is_invalid_argument_and_creates_no_image(
    shared_berthd: Berthd, work: Path, image: Image
) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for digest, data in image.blobs().items():
            if digest == image.layers[0].digest:
                data = data[:-4] + b"evil"
            info = tarfile.TarInfo("blobs/sha256/" + digest.removeprefix("sha256:"))
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, data in (
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            (
                "index.json",
                json.dumps(
                    {
                        "schemaVersion": 2,
                        "manifests": [
                            image.descriptor(annotations={"io.containerd.image.name": "evil:1"})
                        ],
                    }
                ).encode(),
            ),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    buf.seek(0)
    with _client(shared_berthd, "arch-evil") as c:
        with pytest.raises(errdefs.InvalidArgument, match="does not match its digest"):
            c.import_archive(buf)
    assert shared_berthd.ctr("images", "ls", "-q", namespace="arch-evil").stdout.strip() == ""
    listed = shared_berthd.ctr("content", "ls", "-q", namespace="arch-evil").stdout.split()
    assert image.layers[0].digest not in listed


def test_cli_commands_import_and_export(shared_berthd: Berthd, work: Path, image: Image) -> None:
    group = click.Group("images", commands={"import": import_cmd, "export": export_cmd})
    src = write_oci_layout(work / "c.tar", image, ref_name="v9")
    runner = CliRunner()

    def obj() -> Globals:
        # Each invocation closes its client at exit, as a real `berth` run does.
        return Globals(address=shared_berthd.address, namespace="arch-cli")

    res = runner.invoke(
        group, ["import", "--no-unpack", "--base-name", "example.com/cli", str(src)], obj=obj()
    )
    assert res.exit_code == 0, res.output
    assert res.output == f"imported example.com/cli:v9 ({image.digest})\n"
    res = runner.invoke(
        group,
        ["export", "--skip-manifest-json", str(work / "x.tar"), "example.com/cli:v9"],
        obj=obj(),
    )
    assert res.exit_code == 0, res.output
    assert "manifest.json" not in _members(work / "x.tar")
    res = runner.invoke(group, ["import", "--skip-digest-for-named", str(src)], obj=obj())
    assert res.exit_code != 0
    assert "--skip-digest-for-named must be specified with --digests" in res.output


def test_async_client_imports_and_exports(shared_berthd: Berthd, work: Path, image: Image) -> None:
    src = write_oci_layout(work / "a.tar", image, image_name="example.com/async:1")

    async def go() -> list[str]:
        async with AsyncClient(shared_berthd.address, namespace="arch-async") as c:
            records = await c.import_archive(src)
            await c.export_archive(work / "a-out.tar", ["example.com/async:1"])
            return [str(r.target.digest) for r in records]

    assert asyncio.run(go()) == [image.digest]
    assert "index.json" in _members(work / "a-out.tar")
