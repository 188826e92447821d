"""Server-side pull and push (Berth's Transfer service) against real registries.

Each test drives a real berthd through the SDK, with Debian's docker-registry
on 127.0.0.1, and checks the result with independent tools: ctr, skopeo, and
the blob files on disk hashed here.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from berth import errdefs
from berth.client import Client, TransferProgress
from tests.support.daemon import Berthd
from tests.support.fixtures import TEST_PASSWORD, TEST_USER, PushedImage, push_to
from tests.support.imagebuilder import (
    Compression,
    Image,
    Index,
    build_busybox_image,
)
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

CONTENT_ROOT = "io.containerd.content.v1.content"


@pytest.fixture
def client(shared_berthd: Berthd) -> Iterator[Client]:
    with Client(shared_berthd.address, namespace="default") as c:
        yield c


def blob_path(d: Berthd, digest: str) -> Path:
    alg, _, hexpart = digest.partition(":")
    return d.root / CONTENT_ROOT / "blobs" / alg / hexpart


def assert_blobs_intact(d: Berthd, blobs: dict[str, bytes]) -> None:
    """Every blob is on disk and hashes to its digest (checked here, not by berthd)."""
    for digest, data in blobs.items():
        on_disk = blob_path(d, digest).read_bytes()
        assert "sha256:" + hashlib.sha256(on_disk).hexdigest() == digest
        assert on_disk == data


def ns_client(d: Berthd, namespace: str) -> Client:
    return Client(d.address, namespace=namespace)


def test_pull_multi_layer_image_records_it_and_ctr_sees_it(
    shared_berthd: Berthd,
    client: Client,
    layered_image: Image,
    push_image: Callable[..., PushedImage],
    repo_name: str,
) -> None:
    pushed = push_image(layered_image, repo_name)
    seen: list[TransferProgress] = []
    image = client.pull(pushed.ref, on_progress=seen.append)

    assert image.name == pushed.ref
    assert image.target.digest == layered_image.digest
    assert_blobs_intact(shared_berthd, layered_image.blobs())
    # Progress named every layer by ctr's ingest key; each ended unpacked.
    final = {p.key: p for p in seen}
    assert image.unpacked and image.snapshotter == "overlayfs", image.warnings
    for layer in layered_image.layers:
        p = final[f"layer-{layer.digest}"]
        assert p.status == "unpacked" and p.offset == p.total == layer.size
    snapshots = shared_berthd.ctr("snapshots", "ls").stdout
    assert layered_image.chain_id in snapshots
    # The real ctr reads the record and the content berthd wrote.
    rows = shared_berthd.ctr("images", "ls").stdout
    assert pushed.ref in rows and layered_image.digest in rows
    check = shared_berthd.ctr("images", "check", f"name=={pushed.ref}").stdout
    n = len(layered_image.layers) + 1  # ctr counts the config and layers
    assert f"complete ({n}/{n})" in check and "true" in check  # unpacked, says ctr
    # The manifest carries GC references to its children (what keeps them).
    info = client.content.info(layered_image.digest)
    refs = {v for k, v in info.labels.items() if k.startswith("containerd.io/gc.ref.content")}
    assert layered_image.config_digest in refs
    assert {layer.digest for layer in layered_image.layers} <= refs
    host = pushed.host.split(":")[0]
    layer_labels = client.content.info(layered_image.layers[0].digest).labels
    assert layer_labels[f"containerd.io/distribution.source.{host}"] == repo_name
    # The pull's lease is gone once it is done.
    assert not [le for le in client.leases.list() if "berth.io/transfer" in le.labels]


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_pull_gzip_and_zstd_layers(
    shared_berthd: Berthd,
    push_image: Callable[..., PushedImage],
    repo_name: str,
    compression: Compression,
) -> None:
    img = build_busybox_image(compression=compression)
    pushed = push_image(img, repo_name)
    with ns_client(shared_berthd, f"comp-{compression}") as c:
        image = c.pull(pushed.ref, unpack=False)
        assert image.target.digest == img.digest
        assert c.images.check(image).status == "complete"
    assert_blobs_intact(shared_berthd, img.blobs())


def test_pull_one_platform_then_all_platforms_of_an_index(
    shared_berthd: Berthd,
    multiplatform_index: Index,
    push_image: Callable[..., PushedImage],
    repo_name: str,
) -> None:
    pushed = push_image(multiplatform_index, repo_name)
    host, other = (i for i in multiplatform_index.images)
    with ns_client(shared_berthd, "mp-one") as c:
        c.pull(pushed.ref, platform=str(other.platform), unpack=False)
        have = {i.digest for i in c.content.list()}
        assert other.digest in have and other.layers[0].digest in have
        assert host.digest not in have and host.layers[0].digest not in have
        details = c.images.inspect(pushed.ref, platform=str(other.platform))
        assert details.manifest_descriptor.digest == other.digest
        assert details.index is not None
    with ns_client(shared_berthd, "mp-all") as c:
        c.pull(pushed.ref, all_platforms=True, unpack=False)
        have = {i.digest for i in c.content.list()}
        assert set(multiplatform_index.blobs()) <= have
        summary = c.images.summary(c.images.get(pushed.ref))
        assert set(summary.platforms) == {str(host.platform), str(other.platform)}


def test_pull_rejects_platform_together_with_all_platforms(client: Client) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="mutually exclusive"):
        client.pull("127.0.0.1:1/x:1", platform="linux/arm64", all_platforms=True)


def test_push_to_new_repo_then_repull_and_skopeo_sees_it(
    shared_berthd: Berthd,
    registry: Registry,
    layered_image: Image,
    push_image: Callable[..., PushedImage],
    repo_name: str,
) -> None:
    pushed = push_image(layered_image, repo_name)
    with ns_client(shared_berthd, "push-src") as c:
        c.pull(pushed.ref, unpack=False)
        dest = f"{registry.host}/{repo_name}-copy:v2"
        events: list[TransferProgress] = []
        target = c.push(dest, source=pushed.ref, on_progress=events.append)
        assert target.digest == layered_image.digest
        # Same registry: layers are mounted from the source repository.
        statuses = {p.key: p.status for p in events}
        layer_key = f"layer-{layered_image.layers[0].digest}"
        assert statuses[layer_key] in ("mounted", "exists", "done")
    res = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{dest}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert hashlib.sha256(res.stdout.encode()).hexdigest() == layered_image.digest.split(":")[1]
    with ns_client(shared_berthd, "push-back") as c:
        again = c.pull(dest, unpack=False)
        assert again.target.digest == layered_image.digest
        assert c.images.check(again).complete


def test_tag_then_push_under_the_new_name(
    shared_berthd: Berthd,
    registry: Registry,
    busybox_image: Image,
    push_image: Callable[..., PushedImage],
    repo_name: str,
) -> None:
    pushed = push_image(busybox_image, repo_name)
    new_name = f"{registry.host}/{repo_name}-tagged:stable"
    with ns_client(shared_berthd, "tag-push") as c:
        c.pull(pushed.ref, unpack=False)
        tagged = c.images.tag(pushed.ref, new_name)
        assert tagged.target == c.images.get(pushed.ref).target
        with pytest.raises(errdefs.AlreadyExists):
            c.images.tag(pushed.ref, new_name)
        c.push(new_name)
    with registry.client() as http:
        resp = http.get(
            f"/v2/{repo_name}-tagged/manifests/stable",
            headers={"Accept": busybox_image.manifest_media_type},
        )
        assert resp.status_code == 200
        assert resp.headers["Docker-Content-Digest"] == busybox_image.digest


def test_pull_from_auth_registry_needs_and_uses_credentials(
    shared_berthd: Berthd,
    auth_registry: Registry,
    busybox_image: Image,
    repo_name: str,
    tmp_path: Path,
) -> None:
    pushed = push_to(auth_registry, busybox_image, repo_name)
    hosts = _hosts_dir(auth_registry, tmp_path)
    with ns_client(shared_berthd, "auth") as c:
        # No credentials: the daemon's refusal names the host and how to log in.
        with pytest.raises(errdefs.BerthError, match="unauthorized") as err:
            c.pull(pushed.ref, hosts_dir=str(hosts), unpack=False)
        assert err.value.code == errdefs.CODE_UNKNOWN  # what containerd answers
        assert auth_registry.host.split(":")[0] in str(err.value)
        with pytest.raises(errdefs.BerthError, match="refused") as err:
            c.pull(pushed.ref, hosts_dir=str(hosts), user=f"{TEST_USER}:wrong", unpack=False)
        assert "wrong" not in str(err.value)  # a secret never comes back
        image = c.pull(pushed.ref, hosts_dir=str(hosts), user=TEST_USER, password=TEST_PASSWORD)
        assert image.target.digest == busybox_image.digest
    assert TEST_PASSWORD not in shared_berthd.logs()


def _hosts_dir(reg: Registry, base: Path) -> Path:
    """A containerd hosts directory under ``base`` trusting the registry's CA."""
    assert reg.ca_cert is not None
    host_dir = base / reg.host
    host_dir.mkdir(parents=True)
    (host_dir / "hosts.toml").write_text(
        f'server = "https://{reg.host}"\n\n[host."https://{reg.host}"]\n'
        f'  capabilities = ["pull", "resolve", "push"]\n  ca = "{reg.ca_cert}"\n'
    )
    return base


def test_pull_and_push_over_tls_with_hosts_dir(
    shared_berthd: Berthd,
    tls_registry: Registry,
    busybox_image: Image,
    repo_name: str,
    tmp_path: Path,
) -> None:
    pushed = push_to(tls_registry, busybox_image, repo_name)
    hosts = _hosts_dir(tls_registry, tmp_path)
    with ns_client(shared_berthd, "tls") as c:
        # Without the hosts dir a loopback registry is spoken to in plain
        # HTTP, as containerd does, which a TLS registry refuses.
        with pytest.raises(errdefs.BerthError, match="400 Bad Request"):
            c.pull(pushed.ref, unpack=False)
        image = c.pull(pushed.ref, hosts_dir=str(hosts), unpack=False)
        assert image.target.digest == busybox_image.digest
        c.push(f"{tls_registry.host}/{repo_name}-back:1", source=pushed.ref, hosts_dir=str(hosts))


def test_missing_tag_is_not_found_with_the_reference(
    client: Client, registry: Registry, repo_name: str
) -> None:
    ref = f"{registry.host}/{repo_name}:does-not-exist"
    with pytest.raises(errdefs.NotFound, match="not found") as err:
        client.pull(ref)
    assert "does-not-exist" in str(err.value)


def test_bad_reference_and_platform_are_invalid_argument(client: Client) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        client.pull("UPPER/Case:bad tag")
    with pytest.raises(errdefs.InvalidArgument):
        client.pull("127.0.0.1:1/x:1", platform="not a platform!")
    with pytest.raises(errdefs.InvalidArgument, match="ref must not be empty"):
        client.pull("")


def test_push_of_unknown_image_is_not_found(client: Client, registry: Registry) -> None:
    with pytest.raises(errdefs.NotFound, match="nope"):
        client.push(f"{registry.host}/x/nope:1")


def test_pull_records_image_labels_and_updates_an_existing_record(
    client: Client, busybox_image: Image, push_image: Callable[..., PushedImage], repo_name: str
) -> None:
    pushed = push_image(busybox_image, repo_name)
    first = client.pull(pushed.ref, unpack=False, labels={"team": "a"})
    assert first.labels == {"team": "a"}
    second = client.pull(pushed.ref, unpack=False, labels={"team": "b"})
    assert second.labels == {"team": "b"}
    assert second.created_at == first.created_at


def test_ctr_content_fetch_against_berthd(
    shared_berthd: Berthd,
    busybox_image: Image,
    push_image: Callable[..., PushedImage],
    repo_name: str,
) -> None:
    # The real ctr pulls client-side through the Content service.
    pushed = push_image(busybox_image, repo_name)
    shared_berthd.ctr("content", "fetch", "--plain-http", pushed.ref, namespace="ctr-fetch")
    with ns_client(shared_berthd, "ctr-fetch") as c:
        assert c.images.check(c.images.get(pushed.ref)).complete
    assert_blobs_intact(shared_berthd, busybox_image.blobs())


def test_pull_progress_json_reports_match_the_image(
    shared_berthd: Berthd,
    busybox_image: Image,
    push_image: Callable[..., PushedImage],
    repo_name: str,
) -> None:
    pushed = push_image(busybox_image, repo_name)
    with ns_client(shared_berthd, "progress") as c:
        seen: list[TransferProgress] = []
        c.pull(pushed.ref, unpack=False, on_progress=seen.append)
        keys = {p.key for p in seen}
        assert f"manifest-{busybox_image.digest}" in keys
        assert f"config-{busybox_image.config_digest}" in keys
        assert all(0 <= p.offset <= p.total for p in seen)
        assert {p.status for p in seen} <= {"waiting", "downloading", "exists", "done"}


def test_real_ctr_images_pull_against_berthd_unpacks(
    shared_berthd: Berthd,
    layered_image: Image,
    push_image: Callable[..., PushedImage],
    repo_name: str,
) -> None:
    # containerd's own client-side pull: content over gRPC, then the diff service.
    pushed = push_image(layered_image, repo_name)
    res = shared_berthd.ctr("images", "pull", "--plain-http", pushed.ref, namespace="ctr-pull")
    assert "done" in res.stdout
    assert (
        layered_image.chain_id in shared_berthd.ctr("snapshots", "ls", namespace="ctr-pull").stdout
    )
    with ns_client(shared_berthd, "ctr-pull") as c:
        assert c.images.check(c.images.get(pushed.ref)).complete
