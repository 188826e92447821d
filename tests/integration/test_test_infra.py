"""Checks that the test infrastructure itself is sound.

The registry fixture and the image builder are what every later test and the
benchmark stand on, so they are verified here against independent tools:
skopeo reads what we push and what we write to disk, and the busybox rootfs
is proven to run under a real chroot.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.daemon import Berthd
from tests.support.fixtures import TEST_PASSWORD, TEST_USER, push_to
from tests.support.imagebuilder import (
    Compression,
    Dir,
    File,
    Format,
    Hardlink,
    Image,
    Index,
    LayerSpec,
    MediaType,
    OpaqueDir,
    Platform,
    Symlink,
    Whiteout,
    build_busybox_image,
    build_image,
    build_layered_image,
    build_multiplatform_index,
    flatten_layers,
    host_platform,
    sample_layer_specs,
    write_docker_archive,
    write_oci_layout,
)
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

FORMATS: tuple[Format, ...] = ("oci", "docker")
REPO_ROOT = Path(__file__).resolve().parents[2]

needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")


def skopeo(*args: str) -> str:
    proc = subprocess.run(
        ["skopeo", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"skopeo {' '.join(args)} failed:\n{proc.stderr}"
    return proc.stdout


def skopeo_json(*args: str) -> Any:
    return json.loads(skopeo(*args))


# -- registry ---------------------------------------------------------------


def test_registry_answers_v2(registry: Registry) -> None:
    resp = httpx.get(f"{registry.url}/v2/", timeout=5)
    assert resp.status_code == 200
    assert resp.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert registry.host.startswith("127.0.0.1:")


def test_registry_stop_kills_its_process() -> None:
    reg = Registry().start()
    url, root = reg.url, reg.root
    assert root is not None and root.exists()
    reg.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/v2/", timeout=2)
    assert not root.exists()
    reg.stop()  # idempotent


def test_registry_retries_when_its_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from tests.support import registry as registry_module

    # Simulate losing the bind race: the first port offered is already in use.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_free_port = registry_module._free_port
        offered = iter([taken])
        monkeypatch.setattr(
            registry_module, "_free_port", lambda: next(offered, None) or real_free_port()
        )
        with Registry() as reg:
            assert reg.port != taken
            assert httpx.get(f"{reg.url}/v2/", timeout=5).status_code == 200


def test_tls_registry_with_auth(auth_registry: Registry, repo_name: str) -> None:
    assert auth_registry.url.startswith("https://")
    # No credentials: the registry must refuse, proving auth is enforced.
    anon = httpx.get(f"{auth_registry.url}/v2/", verify=auth_registry.verify, timeout=5)
    assert anon.status_code == 401
    small = build_image([LayerSpec([File("hello", b"hi\n")])])
    pushed = push_to(auth_registry, small, repo_name, "v1")
    assert auth_registry.certs_dir is not None
    info = skopeo_json(
        "inspect",
        "--cert-dir",
        str(auth_registry.certs_dir),
        "--creds",
        f"{TEST_USER}:{TEST_PASSWORD}",
        f"docker://{pushed.ref}",
    )
    assert info["Digest"] == small.digest


def test_tls_registry_rejects_untrusted_clients(tls_registry: Registry) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls_registry.url}/v2/", verify=True, timeout=5)
    assert httpx.get(f"{tls_registry.url}/v2/", verify=tls_registry.verify).status_code == 200


# -- pushing, verified by skopeo ---------------------------------------------


@needs_skopeo
def test_busybox_push_verified_by_skopeo(
    registry: Registry, busybox_image: Image, push_image: Any, repo_name: str, tmp_path: Path
) -> None:
    pushed = push_image(busybox_image, repo_name, "latest")
    assert pushed.digest == busybox_image.digest

    ref = f"docker://{pushed.ref}"
    raw = skopeo("inspect", "--tls-verify=false", "--raw", ref)
    assert raw.encode() == busybox_image.manifest
    info = skopeo_json("inspect", "--tls-verify=false", ref)
    assert info["Digest"] == busybox_image.digest
    assert info["Architecture"] == host_platform().architecture
    assert info["Layers"] == [layer.digest for layer in busybox_image.layers]

    # Pull back with skopeo and compare every digest it stored.
    skopeo(
        "copy",
        "--src-tls-verify=false",
        "--preserve-digests",
        ref,
        f"oci:{tmp_path / 'oci'}:latest",
    )
    index = json.loads((tmp_path / "oci" / "index.json").read_bytes())
    assert index["manifests"][0]["digest"] == busybox_image.digest
    blobs = tmp_path / "oci" / "blobs" / "sha256"
    for digest, data in busybox_image.blobs().items():
        assert (blobs / digest.removeprefix("sha256:")).read_bytes() == data


@needs_skopeo
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("compression", list(Compression))
def test_variants_push(
    registry: Registry, push_image: Any, repo_name: str, fmt: Format, compression: Compression
) -> None:
    if fmt == "docker" and compression is Compression.ZSTD:
        with pytest.raises(ValueError, match="zstd"):
            build_busybox_image(compression=compression, fmt=fmt)
        return
    image = build_busybox_image(compression=compression, fmt=fmt)
    pushed = push_image(image, repo_name)
    raw = json.loads(skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{pushed.ref}"))
    assert raw["mediaType"] == image.manifest_media_type
    assert raw["layers"][0]["mediaType"] == image.layers[0].media_type
    # Full inspect makes skopeo parse the config and layer media types too.
    info = skopeo_json("inspect", "--tls-verify=false", f"docker://{pushed.ref}")
    assert info["Layers"] == [layer.digest for layer in image.layers]
    if compression is Compression.NONE:
        assert image.layers[0].digest == image.layers[0].diff_id


@needs_skopeo
def test_multiplatform_index_push(
    registry: Registry, multiplatform_index: Index, push_image: Any, repo_name: str
) -> None:
    pushed = push_image(multiplatform_index, repo_name)
    assert pushed.digest == multiplatform_index.digest
    ref = f"docker://{pushed.ref}"
    raw = json.loads(skopeo("inspect", "--tls-verify=false", "--raw", ref))
    assert raw["mediaType"] == MediaType.OCI_INDEX
    platforms = {(m["platform"]["os"], m["platform"]["architecture"]) for m in raw["manifests"]}
    assert ("linux", host_platform().architecture) in platforms
    assert len(platforms) == 2
    for image in multiplatform_index.images:
        info = skopeo_json(
            "inspect",
            "--tls-verify=false",
            "--override-arch",
            image.platform.architecture,
            ref,
        )
        assert info["Architecture"] == image.platform.architecture
        # "Digest" is the index's; the layers identify the chosen child.
        assert info["Layers"] == [layer.digest for layer in image.layers]


@needs_skopeo
def test_docker_manifest_list_push(push_image: Any, repo_name: str) -> None:
    index = build_multiplatform_index(fmt="docker")
    pushed = push_image(index, repo_name)
    raw = json.loads(skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{pushed.ref}"))
    assert raw["mediaType"] == MediaType.DOCKER_MANIFEST_LIST


@needs_skopeo
def test_layered_image_push(layered_image: Image, push_image: Any, repo_name: str) -> None:
    pushed = push_image(layered_image, repo_name, "layered")
    info = skopeo_json("inspect", "--tls-verify=false", f"docker://{pushed.ref}")
    assert len(info["Layers"]) == 1 + len(sample_layer_specs())
    assert info["Digest"] == layered_image.digest


# -- on-disk formats -----------------------------------------------------------


@needs_skopeo
def test_oci_layout_tar_accepted_by_skopeo(busybox_image: Image, tmp_path: Path) -> None:
    tar = write_oci_layout(
        tmp_path / "busybox.tar", busybox_image, image_name="docker.io/library/busybox:latest"
    )
    info = skopeo_json("inspect", f"oci-archive:{tar}:latest")
    assert info["Digest"] == busybox_image.digest
    # A full copy makes skopeo read and verify every blob, not just the manifest.
    skopeo("copy", f"oci-archive:{tar}:latest", f"oci:{tmp_path / 'copy'}:latest")


@needs_skopeo
def test_oci_layout_dir_with_index(multiplatform_index: Index, tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "layout", multiplatform_index, ref_name="multi")
    assert (layout / "oci-layout").is_file()
    raw = json.loads(skopeo("inspect", "--raw", f"oci:{layout}:multi"))
    assert raw["mediaType"] == MediaType.OCI_INDEX
    info = skopeo_json("inspect", f"oci:{layout}:multi")
    assert info["Architecture"] == host_platform().architecture


@needs_skopeo
def test_docker_archive_accepted_by_skopeo(busybox_image: Image, tmp_path: Path) -> None:
    tar = write_docker_archive(tmp_path / "save.tar", busybox_image, repo_tags=["busybox:latest"])
    info = skopeo_json("inspect", f"docker-archive:{tar}")
    # docker save stores uncompressed layers, so skopeo reports diff_ids.
    assert info["Layers"] == busybox_image.diff_ids
    skopeo("copy", f"docker-archive:{tar}", f"oci:{tmp_path / 'copy'}:latest")


def test_ctr_imports_oci_tar(busybox_image: Image, tmp_path: Path, berthd: Berthd) -> None:
    # The builder's archives must satisfy the real ctr, here against berthd.
    name = "docker.io/berth-test/busybox:latest"
    tar = write_oci_layout(tmp_path / "busybox.tar", busybox_image, image_name=name)
    berthd.ctr("images", "import", str(tar), namespace="berth-test-infra", timeout=120)
    listing = berthd.ctr("images", "ls", "-q", namespace="berth-test-infra").stdout
    assert name in listing.split()
    berthd.ctr("images", "rm", name, namespace="berth-test-infra")


# -- determinism and content ---------------------------------------------------


def test_builder_is_deterministic() -> None:
    for compression in Compression:
        for fmt in FORMATS:
            if fmt == "docker" and compression is Compression.ZSTD:
                continue
            first = build_busybox_image(compression=compression, fmt=fmt)
            second = build_busybox_image(compression=compression, fmt=fmt)
            assert first.digest == second.digest
            assert first.layers[0].data == second.layers[0].data
    assert build_layered_image().digest == build_layered_image().digest
    assert build_multiplatform_index().digest == build_multiplatform_index().digest
    # Same tar regardless of compression: diff_ids agree.
    assert (
        build_busybox_image(compression=Compression.GZIP).diff_ids
        == build_busybox_image(compression=Compression.ZSTD).diff_ids
    )


def test_cli_output_is_reproducible_across_processes(tmp_path: Path) -> None:
    script = REPO_ROOT / "scripts" / "build-test-image"
    outputs = []
    for i in range(2):
        out = tmp_path / f"img{i}.tar"
        subprocess.run([str(script), "--oci-tar", str(out)], check=True, timeout=60)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    with tarfile.open(tmp_path / "img0.tar") as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert index["manifests"][0]["digest"] == build_busybox_image().digest


def test_busybox_layer_contents(busybox_image: Image) -> None:
    layer = busybox_image.layers[0]
    with tarfile.open(fileobj=io.BytesIO(layer.tar)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    names = list(members)
    applets = subprocess.run(
        ["/bin/busybox", "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "bin/busybox":
            assert members[applet].issym(), applet
    assert members["tmp"].mode == 0o1777
    assert members["bin/busybox"].mode == 0o755
    assert all(m.mtime == members["bin/busybox"].mtime for m in members.values())
    assert all((m.uid, m.gid) == (0, 0) for n, m in members.items() if n != "home/berth")
    assert (members["home/berth"].uid, members["home/berth"].gid) == (1000, 1000)
    for name in ("dev", "proc", "sys", "root", "etc/passwd", "etc/group"):
        assert name in members
    # Parents precede children in the stream (unpackers rely on it).
    seen: set[str] = set()
    for name in names:
        parent = os.path.dirname(name)
        assert not parent or parent in seen, name
        seen.add(name)
    assert busybox_image.config_json["rootfs"]["diff_ids"] == [layer.diff_id]
    assert busybox_image.config_json["config"]["Cmd"] == ["sh"]


def test_layer_spec_entries_and_flatten_model() -> None:
    base = LayerSpec([Dir("a"), File("a/x", b"1"), File("a/y", b"2"), File("b", b"b")])
    top = LayerSpec(
        [
            Whiteout("a/x"),
            OpaqueDir("c"),
            File("c/new", b"n", mode=0o600, uid=5, gid=6),
            Symlink("s", "b"),
            Hardlink("c/hl", "c/new"),
        ]
    )
    image = build_image([base, top], compression=Compression.NONE)
    with tarfile.open(fileobj=io.BytesIO(image.layers[1].tar)) as tar:
        names = tar.getnames()
    assert "a/.wh.x" in names
    assert "c/.wh..wh..opq" in names
    assert names[-1] == "c/hl"  # hard links come after their targets
    tree = flatten_layers([base, top])
    assert "a/x" not in tree and tree["a/y"] == File("a/y", b"2")
    assert tree["c/new"] == File("c/new", b"n", 0o600, 5, 6)
    assert tree["s"] == Symlink("s", "b")

    tree = flatten_layers(
        [
            LayerSpec([File("opaque/old", b"o"), File("d/f", b"f")]),
            LayerSpec([OpaqueDir("opaque"), File("opaque/new", b"n"), File("d", b"now a file")]),
        ]
    )
    assert "opaque/old" not in tree and "opaque/new" in tree
    assert "d/f" not in tree and isinstance(tree["d"], File)


def test_sample_layers_flatten_as_documented() -> None:
    from tests.support.imagebuilder import busybox_rootfs_spec

    tree = flatten_layers([busybox_rootfs_spec(), *sample_layer_specs()])
    assert tree["data/keep.txt"] == File("data/keep.txt", b"v2\n")
    assert "data/gone.txt" not in tree
    assert "bin/vi" not in tree and "bin/sh" in tree
    assert sorted(k for k in tree if k.startswith("opaque/")) == ["opaque/new.txt"]
    assert tree["data/hard"] == Hardlink("data/hard", "data/orig")
    assert tree["data/link"] == Symlink("data/link", "keep.txt")
    owned = tree["data/owned"]
    assert isinstance(owned, File) and (owned.uid, owned.gid) == (1000, 1000)


def test_foreign_platform_image() -> None:
    index = build_multiplatform_index()
    other = next(i for i in index.images if i.platform != host_platform())
    assert other.config_json["architecture"] == other.platform.architecture
    assert index.image_for(other.platform) is other
    assert Platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "v8")


# -- the rootfs really runs ------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_busybox_rootfs_runs_in_chroot(busybox_image: Image, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    with tarfile.open(fileobj=io.BytesIO(busybox_image.layers[0].data)) as tar:
        # The image is our own, so keep modes (1777 /tmp) and links as built.
        tar.extractall(rootfs, filter="fully_trusted")
    env = {"PATH": "/bin:/sbin:/usr/bin:/usr/sbin"}
    out = subprocess.run(
        ["chroot", str(rootfs), "/bin/sh", "-c", "echo ok; id -un"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    ).stdout
    assert out == "ok\nroot\n"
    out = subprocess.run(
        ["chroot", "--userspec=1000:1000", str(rootfs), "/bin/sh", "-c", "id -un; id -gn"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    ).stdout
    assert out == "berth\nberth\n"
    assert (rootfs / "tmp").stat().st_mode & 0o7777 == 0o1777
