"""`berth containers` and the SDK's container calls against a real berthd.

Images are placed in berthd the way a pull leaves them, without depending on
the pull and unpack code: blobs go in through Debian's ``ctr content ingest``,
the image record through the Images API, and the "unpacked" layer snapshot
is made by hand (prepare, extract the layer tar into the mounted snapshot,
commit under the chain ID) -- exactly the state unpacking produces.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import subprocess
import tarfile
from collections.abc import Iterator

import grpc
import pytest

from berth import errdefs
from berth.api.services.images.v1 import images_pb2, images_pb2_grpc
from berth.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from berth.api.services.snapshots.v1 import snapshots_pb2 as snap_pb
from berth.api.services.snapshots.v1 import snapshots_pb2_grpc as snap_grpc
from berth.api.types import descriptor_pb2
from berth.client import AsyncClient, Client
from berth.core import mount as mountmod
from berth.core import mountutil
from berth.oci import STOP_SIGNAL_LABEL as STOP
from tests.integration.test_cli_commands import assert_one_line_error, berth
from tests.support.daemon import Berthd
from tests.support.imagebuilder import Image, Index

pytestmark = pytest.mark.integration

# GC must not take the hand-made layer snapshot (no image label references
# it) between the steps of these tests.
CONFIG = 'version = 2\ndisabled_plugins = ["io.containerd.gc.v1.scheduler"]\n'


@pytest.fixture(scope="module")
def d() -> Iterator[Berthd]:
    from tests.support.daemon import running_berthd

    with running_berthd(config=CONFIG) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def channel(d: Berthd) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"unix://{d.address}") as ch:
        yield ch


def md(lease: str | None = None) -> tuple[tuple[str, str], ...]:
    base = (("containerd-namespace", "default"),)
    return base + ((("containerd-lease", lease),) if lease else ())


def load(d: Berthd, channel: grpc.Channel, name: str, target: Image | Index) -> None:
    """Put ``target``'s blobs and an image record named ``name`` into berthd."""
    blobs: dict[str, bytes] = {}
    if isinstance(target, Index):
        blobs[target.digest] = target.manifest
        for img in target.images:
            blobs.update(img.blobs())
    else:
        blobs.update(target.blobs())
    for digest, data in blobs.items():
        cmd = ["ctr", "--address", d.address, "content", "ingest"]
        cmd += ["--expected-digest", digest, "--expected-size", str(len(data)), f"ingest-{digest}"]
        subprocess.run(cmd, input=data, check=True, capture_output=True, timeout=60)
    desc = target.descriptor()
    images_pb2_grpc.ImagesStub(channel).Create(
        images_pb2.CreateImageRequest(
            image=images_pb2.Image(
                name=name,
                target=descriptor_pb2.Descriptor(
                    media_type=desc["mediaType"], digest=desc["digest"], size=desc["size"]
                ),
            )
        ),
        metadata=md(),
    )


def unpack_native(channel: grpc.Channel, image: Image) -> None:
    """Leave ``image``'s layers committed under their chain IDs on ``native``."""
    leases = leases_pb2_grpc.LeasesStub(channel)
    snaps = snap_grpc.SnapshotsStub(channel)
    leases.Create(leases_pb2.CreateRequest(id="unpack"), metadata=md())
    parent, chain = "", ""
    for i, layer in enumerate(image.layers):
        diff_id = image.diff_ids[i]
        chain = diff_id if not chain else _chain(chain, diff_id)
        key = f"extract-{i}"
        resp = snaps.Prepare(
            snap_pb.PrepareSnapshotRequest(snapshotter="native", key=key, parent=parent),
            metadata=md("unpack"),
        )
        mounts = [mountmod.Mount(m.type, m.source, list(m.options)) for m in resp.mounts]
        with mountutil.with_temp_mount(mounts) as root:
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.data))) as tar:
                tar.extractall(root, filter="tar")
        snaps.Commit(
            snap_pb.CommitSnapshotRequest(snapshotter="native", name=chain, key=key),
            metadata=md("unpack"),
        )
        parent = chain
    # The committed layers stay: the GC plugin is off in this daemon.
    leases.Delete(leases_pb2.DeleteRequest(id="unpack"), metadata=md())


def _chain(parent: str, diff_id: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def test_create_needs_an_unpacked_image(
    d: Berthd, channel: grpc.Channel, busybox_image: Image
) -> None:
    load(d, channel, "test/notunpacked:1", busybox_image)
    res = berth(d, "containers", "create", "test/notunpacked:1", "nu", check=False)
    lines = assert_one_line_error(res, "image test/notunpacked:1 is not unpacked")
    assert "for snapshotter overlayfs: run berth images pull / unpack" in lines[0]
    # Nothing was left behind.
    assert berth(d, "c", "ls", "-q").stdout.split() == []
    res = berth(d, "containers", "create", "test/missing:1", "nu", check=False)
    assert_one_line_error(res, "not found")


def test_create_from_an_unpacked_image_and_manage_it(
    d: Berthd, channel: grpc.Channel, busybox_image: Image
) -> None:
    load(d, channel, "test/busybox:1", busybox_image)
    unpack_native(channel, busybox_image)

    out = berth(
        d,
        "containers",
        "create",
        "--snapshotter",
        "native",
        "--label",
        "team=web",
        "--env",
        "GREETING=hi",
        "test/busybox:1",
        "web",
        "echo",
        "hello",
    ).stdout
    assert out.strip() == "web"
    berth(d, "c", "create", "--snapshotter", "native", "test/busybox:1", "plain")

    # ctr sees what berth made, spec included.
    info = json.loads(d.ctr("containers", "info", "web").stdout)
    assert info["Image"] == "test/busybox:1"
    assert (info["Snapshotter"], info["SnapshotKey"]) == ("native", "web")
    assert info["Runtime"]["Name"] == "io.containerd.runc.v2"
    # As containerd's WithImageConfig does, the image's stop signal becomes a label.
    assert info["Labels"] == {"team": "web", STOP: "SIGTERM"}
    proc = info["Spec"]["process"]
    assert proc["args"] == ["echo", "hello"]
    assert "GREETING=hi" in proc["env"]
    assert proc["user"]["uid"] == 0 and proc["cwd"] == "/"
    plain = json.loads(berth(d, "c", "info", "--spec", "plain").stdout)
    assert plain["process"]["args"] == busybox_image.config_json["config"]["Cmd"]
    # The rootfs snapshot sits on the image's chain ID.
    snap = json.loads(d.ctr("snapshots", "--snapshotter", "native", "info", "web").stdout)
    assert snap["Parent"] == busybox_image.chain_id and snap["Kind"] == "Active"

    rows = [line.split() for line in berth(d, "containers", "ls").stdout.splitlines()]
    assert rows[0] == ["CONTAINER", "IMAGE", "RUNTIME", "LABELS"]
    labels_cell = f"{STOP}=SIGTERM,team=web"
    assert ["web", "test/busybox:1", "io.containerd.runc.v2", labels_cell] in rows
    listed = json.loads(berth(d, "c", "ls", "--format", "json", "labels.team==web").stdout)
    assert [c["id"] for c in listed] == ["web"]

    labelled = berth(d, "c", "label", "web", "team=", "tier=front").stdout.strip()
    assert labelled == f"{STOP}=SIGTERM,tier=front"
    assert json.loads(d.ctr("c", "info", "web").stdout)["Labels"] == {
        "tier": "front",
        STOP: "SIGTERM",
    }

    dup = berth(d, "c", "create", "--snapshotter", "native", "test/busybox:1", "web", check=False)
    assert_one_line_error(dup, "already exists")

    assert berth(d, "c", "rm", "web", "plain").stdout.split() == ["web", "plain"]
    assert berth(d, "c", "ls", "-q").stdout.split() == []
    assert_one_line_error(berth(d, "c", "rm", "web", check=False), "not found")
    assert_one_line_error(berth(d, "c", "info", "web", check=False), "not found")


def test_sdk_resolves_an_index_for_the_host_platform(
    d: Berthd, channel: grpc.Channel, multiplatform_index: Index
) -> None:
    load(d, channel, "test/multi:1", multiplatform_index)
    host = multiplatform_index.images[0]
    with Client(d.address, namespace="default") as c:
        cfg = c.containers.image_config("test/multi:1")
        assert cfg.config_digest == host.config_digest
        assert cfg.manifest_digest == host.digest
        assert cfg.chain_id == host.chain_id
        assert list(cfg.diff_ids) == host.diff_ids
        with pytest.raises(errdefs.NotFound, match="no match for platform"):
            c.containers.image_config("test/multi:1", platform="windows/s390x")

    async def via_async() -> str:
        async with AsyncClient(d.address, namespace="default") as ac:
            made = await ac.containers.create(
                "sdk-async", spec={"ociVersion": "1.0.2-dev"}, labels={"a": "1"}
            )
            assert made.spec_json == {"ociVersion": "1.0.2-dev"}
            got = await ac.containers.label("sdk-async", {"a": "", "b": "2"})
            await ac.containers.delete("sdk-async")
            return ",".join(f"{k}={v}" for k, v in got.labels.items())

    assert asyncio.run(via_async()) == "b=2"
