"""Hostile and broken layers pulled through berthd: ctr's client-side unpack
(Diff.Apply over gRPC) and berthd's own pull (the transfer service's unpack
hook). Each must fail with a message naming the problem, write nothing
outside the snapshot, and leave no active extraction snapshot behind."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from berth import errdefs
from berth.client import Client
from berth.core.images.rootfs import chain_ids
from tests.support.daemon import Berthd, running_berthd, short_tmpdir
from tests.support.fixtures import PushedImage
from tests.support.imagebuilder import (
    Compression,
    File,
    Image,
    Layer,
    LayerSpec,
    build_image,
    build_layer,
)

pytestmark = pytest.mark.integration

OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@pytest.fixture(scope="module")
def d() -> Iterator[Berthd]:
    with running_berthd() as daemon:
        yield daemon


@pytest.fixture(scope="module")
def outside() -> Iterator[Path]:
    """A host directory hostile layers aim at; it must stay untouched."""
    path = short_tmpdir("b.out.")
    (path / "victim").write_bytes(b"precious")
    yield path
    (path / "victim").unlink()
    path.rmdir()


def raw_layer(
    members: list[tuple[tarfile.TarInfo, bytes | None]], *, data: bytes | None = None
) -> Layer:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, body in members:
            tf.addfile(info, io.BytesIO(body) if body is not None else None)
    tar = buf.getvalue()
    blob = data if data is not None else gzip.compress(tar, mtime=0)
    return Layer(media_type=OCI_GZIP, data=blob, tar=tar, compression=Compression.GZIP)


def entry(
    name: str, kind: bytes = tarfile.REGTYPE, body: bytes | None = None, **kw: str
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o644
    info.size = len(body or b"")
    for k, v in kw.items():
        setattr(info, k, v)
    return info, body


def hostile_layers(outside: Path) -> dict[str, tuple[Layer, str]]:
    """name -> (layer, text the error must contain)."""
    good = gzip.compress(raw_layer([entry("f", body=b"x" * 50_000)]).tar, mtime=0)
    return {
        "dotdot": (
            raw_layer([entry(f"../../../../../..{outside}/victim", body=b"pwned")]),
            "path escapes the root",
        ),
        "hardlink-outside": (
            raw_layer([entry("h", tarfile.LNKTYPE, linkname=f"../../../../../..{outside}/victim")]),
            "escapes the root",
        ),
        "whiteout-dotdot": (raw_layer([entry("etc/.wh..")]), "invalid whiteout name"),
        "broken-gzip": (
            raw_layer([entry("f", body=b"x" * 50_000)], data=good[: len(good) // 2]),
            "corrupt or truncated compressed data",
        ),
    }


def extract_keys(d: Berthd, sn: str = "overlayfs") -> list[str]:
    out = d.ctr("snapshots", "--snapshotter", sn, "ls").stdout.splitlines()[1:]
    return [line.split()[0] for line in out if line.startswith("extract-")]


def _image(bad: Layer) -> Image:
    base = build_layer(LayerSpec([File("base.txt", b"base\n")]))
    return build_image([base, bad])


@pytest.mark.parametrize("case", ["dotdot", "hardlink-outside", "whiteout-dotdot", "broken-gzip"])
def test_ctr_pull_of_hostile_layer_fails_cleanly(
    d: Berthd,
    registry: object,
    push_image: Callable[..., PushedImage],
    repo_name: str,
    outside: Path,
    case: str,
) -> None:
    bad, message = hostile_layers(outside)[case]
    image = _image(bad)
    pushed = push_image(image, repo_name)
    res = d.ctr("images", "pull", "--plain-http", pushed.ref, check=False, timeout=120)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr
    assert os.listdir(outside) == ["victim"]
    assert (outside / "victim").read_bytes() == b"precious"
    assert extract_keys(d) == []
    # The hostile layer never committed. (The good base layer was, but with
    # no image record referencing it, GC may take it once the lease is gone.)
    chains = [str(c) for c in chain_ids(image.diff_ids)]
    assert chains[1] not in d.ctr("snapshots", "ls").stdout


def test_diff_apply_error_codes_over_grpc(d: Berthd) -> None:
    """Apply itself: InvalidArgument for hostile input, NotFound for a missing
    blob, UNKNOWN for an unknown media type (as containerd)."""
    import grpc

    from berth.api.services.diff.v1 import diff_pb2, diff_pb2_grpc
    from berth.api.types import descriptor_pb2

    md = (("containerd-namespace", "grpc-apply"),)
    with grpc.insecure_channel(f"unix://{d.address}") as ch:
        stub = diff_pb2_grpc.DiffStub(ch)
        missing = descriptor_pb2.Descriptor(
            media_type=OCI_GZIP, digest="sha256:" + "0" * 64, size=10
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.Apply(diff_pb2.ApplyRequest(diff=missing), metadata=md)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        bad_digest = descriptor_pb2.Descriptor(media_type=OCI_GZIP, digest="sha256:nope")
        with pytest.raises(grpc.RpcError) as info:
            stub.Apply(diff_pb2.ApplyRequest(diff=bad_digest), metadata=md)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        odd = descriptor_pb2.Descriptor(media_type="text/plain", digest="sha256:" + "0" * 64)
        with pytest.raises(grpc.RpcError) as info:
            stub.Apply(diff_pb2.ApplyRequest(diff=odd), metadata=md)
        assert info.value.code() == grpc.StatusCode.UNKNOWN
        assert "no processor for media-type" in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as info:
            stub.Diff(diff_pb2.DiffRequest(media_type="application/x-nope"), metadata=md)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


# -- berthd's own pull: the transfer service's unpack hook ---------------------


def test_daemon_pull_unpacks_and_labels_like_ctr(
    d: Berthd,
    registry: object,
    push_image: Callable[..., PushedImage],
    layered_image: Image,
    repo_name: str,
) -> None:
    pushed = push_image(layered_image, repo_name)
    client = Client(d.address, namespace="daemon-pull")
    pulled = client.pull(pushed.ref, plain_http=True)
    assert pulled.unpacked, pulled.warnings
    chains = [str(c) for c in chain_ids(layered_image.diff_ids)]
    listed = d.ctr("snapshots", "ls", namespace="daemon-pull").stdout
    for c in chains:
        assert c in listed
    assert "extract-" not in listed
    cfg = next(
        r
        for r in d.ctr("content", "ls", namespace="daemon-pull").stdout.splitlines()
        if r.startswith(layered_image.config_digest)
    )
    assert f"containerd.io/gc.ref.snapshot.overlayfs={chains[-1]}" in cfg
    # ctr can run on what the daemon unpacked: mount it.
    target = short_tmpdir("b.mnt.")
    try:
        d.ctr("images", "mount", pushed.ref, str(target), namespace="daemon-pull")
        assert (target / "data/keep.txt").read_bytes() == b"v2\n"
        assert not (target / "data/gone.txt").exists()
        assert sorted(os.listdir(target / "opaque")) == ["new.txt"]
    finally:
        d.ctr("images", "unmount", "--rm", str(target), namespace="daemon-pull")
        target.rmdir()


def test_daemon_pull_of_hostile_layer_fails_and_cleans_up(
    d: Berthd,
    registry: object,
    push_image: Callable[..., PushedImage],
    repo_name: str,
    outside: Path,
) -> None:
    bad, message = hostile_layers(outside)["dotdot"]
    pushed = push_image(_image(bad), repo_name)
    client = Client(d.address, namespace="daemon-hostile")
    with pytest.raises(errdefs.InvalidArgument, match=message):
        client.pull(pushed.ref, plain_http=True)
    assert os.listdir(outside) == ["victim"]
    listed = d.ctr("snapshots", "ls", namespace="daemon-hostile").stdout
    assert "extract-" not in listed
