"""Pull and push against a real registry (Debian's docker-registry on 127.0.0.1).

Images come from the offline builder in ``tests/support``; the content side
is a LocalStore in a temporary directory, with an in-memory label store so
the GC and distribution-source labels can be checked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from berth.core.content import Digest, LocalStore, MemoryLabelStore
from berth.core.images import (
    ALL,
    ReaderAtStream,
    chain_ids,
    default,
    image_config,
    manifest_for_platform,
    only,
    open_layer,
    parse_platform,
)
from berth.core.remotes import (
    LayerToUnpack,
    Progress,
    PullResult,
    Resolver,
    StoreLabeler,
    Unauthorized,
    docker_config_credentials,
    pull,
    push,
)
from tests.support.fixtures import TEST_PASSWORD, TEST_USER, PushedImage, push_to
from tests.support.imagebuilder import (
    Compression,
    Image,
    Index,
    Platform,
    build_busybox_image,
)
from tests.support.registry import Registry

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "content", MemoryLabelStore())


def run(fn: Callable[[Resolver], Any], **kwargs: Any) -> Any:
    async def main() -> Any:
        async with Resolver(**kwargs) as resolver:
            return await fn(resolver)

    return asyncio.run(main())


def assert_blob(store: LocalStore, digest: str, data: bytes) -> None:
    stored = store.read_blob(digest)
    assert stored == data
    assert "sha256:" + hashlib.sha256(stored).hexdigest() == digest


def assert_image_in_store(store: LocalStore, image: Image) -> None:
    for digest, data in image.blobs().items():
        assert_blob(store, digest, data)


def test_pull_busybox_verifies_every_blob_and_labels_them(
    push_image: Callable[..., PushedImage], busybox_image: Image, repo_name: str, store: LocalStore
) -> None:
    pushed = push_image(busybox_image, repo_name)
    events: list[Progress] = []
    result: PullResult = run(
        lambda r: pull(r, pushed.ref, store, labeler=StoreLabeler(store), progress=events.append)
    )
    assert result.name == pushed.ref
    assert str(result.target.digest) == busybox_image.digest
    assert result.target.media_type == busybox_image.manifest_media_type
    assert_image_in_store(store, busybox_image)
    assert store.list_statuses() == []

    labels = store.info(busybox_image.digest).labels
    assert labels["containerd.io/gc.ref.content.config"] == busybox_image.config_digest
    assert labels["containerd.io/gc.ref.content.l.0"] == busybox_image.layers[0].digest
    source = "containerd.io/distribution.source.127.0.0.1"
    for digest in busybox_image.blobs():
        assert store.info(digest).labels[source] == repo_name

    layer_key = f"layer-{busybox_image.layers[0].digest}"
    statuses = [e.status for e in events if e.key == layer_key]
    assert statuses[0] == "waiting" and statuses[-1] == "done" and "downloading" in statuses
    assert events[-1].offset == events[-1].total

    # A second pull finds everything present and transfers nothing.
    again: list[Progress] = []
    run(lambda r: pull(r, pushed.ref, store, progress=again.append))
    assert {e.status for e in again} == {"exists", "waiting"}


def test_pull_by_digest(
    push_image: Callable[..., PushedImage], busybox_image: Image, repo_name: str, store: LocalStore
) -> None:
    pushed = push_image(busybox_image, repo_name)
    result = run(lambda r: pull(r, pushed.ref_by_digest, store))
    assert str(result.target.digest) == busybox_image.digest
    assert_image_in_store(store, busybox_image)


def test_layered_image_unpack_hook_runs_in_layer_order(
    push_image: Callable[..., PushedImage], layered_image: Image, repo_name: str, store: LocalStore
) -> None:
    pushed = push_image(layered_image, repo_name)
    seen: list[LayerToUnpack] = []

    async def unpack(layer: LayerToUnpack) -> None:
        # The hook may rely on the layer being committed when it is called.
        assert store.info(layer.layer.digest).size == layer.layer.size
        seen.append(layer)

    run(lambda r: pull(r, pushed.ref, store, unpack=unpack, max_concurrent_downloads=2))
    assert [u.index for u in seen] == list(range(len(layered_image.layers)))
    assert [str(u.layer.digest) for u in seen] == [layer.digest for layer in layered_image.layers]
    assert [str(u.diff_id) for u in seen] == layered_image.diff_ids
    assert str(seen[-1].chain_id) == layered_image.chain_id
    assert seen[0].parent_chain_id is None
    assert [u.parent_chain_id for u in seen[1:]] == [u.chain_id for u in seen[:-1]]
    assert [str(c) for c in chain_ids(layered_image.diff_ids)] == [str(u.chain_id) for u in seen]
    assert_image_in_store(store, layered_image)


def test_multiplatform_index_selects_the_host_platform(
    push_image: Callable[..., PushedImage],
    multiplatform_index: Index,
    repo_name: str,
    store: LocalStore,
) -> None:
    pushed = push_image(multiplatform_index, repo_name)
    host, foreign = multiplatform_index.images
    result = run(lambda r: pull(r, pushed.ref, store, labeler=StoreLabeler(store)))
    assert str(result.target.digest) == multiplatform_index.digest
    assert [str(m.digest) for m in result.manifests] == [host.digest]
    assert_image_in_store(store, host)
    for digest in foreign.blobs():
        with pytest.raises(Exception, match="not found"):
            store.info(digest)
    # The index references every platform for GC, pulled or not.
    labels = store.info(multiplatform_index.digest).labels
    assert labels["containerd.io/gc.ref.content.m.0"] == host.digest
    assert labels["containerd.io/gc.ref.content.m.1"] == foreign.digest
    # And the store can answer "which manifest for this platform" afterwards.
    chosen = manifest_for_platform(store, result.target, default())
    assert str(chosen.descriptor.digest) == host.digest
    config = image_config(store, chosen.manifest.config)
    assert [str(d) for d in config.diff_ids] == host.diff_ids


def test_multiplatform_explicit_platform_and_all_platforms(
    push_image: Callable[..., PushedImage],
    multiplatform_index: Index,
    repo_name: str,
    tmp_path: Path,
) -> None:
    pushed = push_image(multiplatform_index, repo_name)
    host, foreign = multiplatform_index.images

    only_foreign = LocalStore(tmp_path / "foreign")
    matcher = only(parse_platform(str(foreign.platform)))
    result = run(lambda r: pull(r, pushed.ref, only_foreign, platform=matcher))
    assert [str(m.digest) for m in result.manifests] == [foreign.digest]
    assert_image_in_store(only_foreign, foreign)

    everything = LocalStore(tmp_path / "all")
    result = run(lambda r: pull(r, pushed.ref, everything, all_platforms=True))
    assert sorted(str(m.digest) for m in result.manifests) == sorted([host.digest, foreign.digest])
    assert_image_in_store(everything, host)
    assert_image_in_store(everything, foreign)


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD, Compression.NONE])
def test_layer_compressions_pull_and_decompress(
    registry: Registry, compression: Compression, repo_name: str, store: LocalStore
) -> None:
    image = build_busybox_image(compression=compression)
    pushed = push_to(registry, image, repo_name)
    run(lambda r: pull(r, pushed.ref, store))
    layer = image.layers[0]
    assert_blob(store, layer.digest, layer.data)
    stream = ReaderAtStream(store.reader_at(layer.digest))
    with open_layer(stream, layer.media_type) as tar:
        assert tar.read() == layer.tar
    assert stream.closed


def test_docker_schema2_image(registry: Registry, repo_name: str, store: LocalStore) -> None:
    image = build_busybox_image(fmt="docker")
    pushed = push_to(registry, image, repo_name)
    result = run(lambda r: pull(r, pushed.ref, store))
    assert result.target.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert_image_in_store(store, image)


def _skopeo_digest(ref: str, *extra: str) -> str:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (apt-get install skopeo)")
    out = subprocess.run(
        ["skopeo", "inspect", "--raw", *extra, f"docker://{ref}"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return "sha256:" + hashlib.sha256(out).hexdigest()


def test_push_to_new_repo_mounts_blobs_and_reresolves(
    registry: Registry, multiplatform_index: Index, repo_name: str, store: LocalStore
) -> None:
    source = push_to(registry, multiplatform_index, repo_name)
    labeler = StoreLabeler(store)
    pulled = run(lambda r: pull(r, source.ref, store, all_platforms=True, labeler=labeler))
    target_ref = f"{registry.host}/{repo_name}-copy:v1"
    events: list[Progress] = []
    run(
        lambda r: push(r, target_ref, store, pulled.target, labeler=labeler, progress=events.append)
    )

    final = {e.key: e.status for e in events}
    # Every blob came across by cross-repository mount, not by upload.
    blob_keys = [k for k in final if k.startswith(("layer-", "config-"))]
    assert blob_keys and all(final[k] == "mounted" for k in blob_keys)
    assert final[f"index-{multiplatform_index.digest}"] == "done"

    _, desc = run(lambda r: r.resolve(target_ref))
    assert str(desc.digest) == multiplatform_index.digest
    assert _skopeo_digest(target_ref, "--tls-verify=false") == multiplatform_index.digest


def test_push_uploads_monolithic_and_chunked(
    registry: Registry, layered_image: Image, repo_name: str, store: LocalStore, tmp_path: Path
) -> None:
    source = push_to(registry, layered_image, repo_name)
    pulled = run(lambda r: pull(r, source.ref, store))
    for suffix, chunk in (("mono", 0), ("chunked", 256 * 1024)):
        ref = f"{registry.host}/{repo_name}-{suffix}:latest"
        events: list[Progress] = []
        # No labeler: no mount sources are known, so every blob is uploaded.
        run(lambda r: push(r, ref, store, pulled.target, chunk_size=chunk, progress=events.append))  # noqa: B023
        done = {e.key for e in events if e.status == "done"}
        assert f"layer-{layered_image.layers[0].digest}" in done
        uploading = [
            e.offset
            for e in events
            if e.key == f"layer-{layered_image.layers[0].digest}" and e.status == "uploading"
        ]
        assert uploading[-1] == layered_image.layers[0].size
        assert _skopeo_digest(ref, "--tls-verify=false") == layered_image.digest
        check = LocalStore(tmp_path / f"check-{suffix}")
        run(lambda r: pull(r, ref, check))  # noqa: B023
        assert_image_in_store(check, layered_image)


def _hosts_toml(config: Path, registry: Registry, body: str) -> None:
    host_dir = config / f"{registry.host.rsplit(':', 1)[0]}_{registry.port}_"
    host_dir.mkdir(parents=True)
    (host_dir / "hosts.toml").write_text(body)


def test_tls_registry_with_test_ca_via_hosts_toml(
    tls_registry: Registry, busybox_image: Image, repo_name: str, store: LocalStore, tmp_path: Path
) -> None:
    pushed = push_to(tls_registry, busybox_image, repo_name)
    config = tmp_path / "certs.d"
    assert tls_registry.ca_cert is not None
    _hosts_toml(
        config,
        tls_registry,
        f'server = "https://{tls_registry.host}"\n'
        f'[host."https://{tls_registry.host}"]\n'
        f'  capabilities = ["pull", "resolve", "push"]\n'
        f'  ca = "{tls_registry.ca_cert}"\n',
    )
    result = run(lambda r: pull(r, pushed.ref, store), config_path=str(config))
    assert str(result.target.digest) == busybox_image.digest
    assert_image_in_store(store, busybox_image)

    # Without the CA the certificate is not trusted, and the error says so.
    untrusted = tmp_path / "untrusted"
    _hosts_toml(untrusted, tls_registry, f'server = "https://{tls_registry.host}"\n')
    with pytest.raises(Exception, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        run(lambda r: r.resolve(pushed.ref), config_path=str(untrusted))

    # skip_verify trusts anything, as containerd's option does.
    insecure = tmp_path / "insecure"
    _hosts_toml(
        insecure, tls_registry, f'server = "https://{tls_registry.host}"\nskip_verify = true\n'
    )
    _, desc = run(lambda r: r.resolve(pushed.ref), config_path=str(insecure))
    assert str(desc.digest) == busybox_image.digest


def test_basic_auth_with_docker_config_json(
    auth_registry: Registry,
    busybox_image: Image,
    repo_name: str,
    store: LocalStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pushed = push_to(auth_registry, busybox_image, repo_name)
    config = tmp_path / "certs.d"
    _hosts_toml(
        config,
        auth_registry,
        f'server = "https://{auth_registry.host}"\nca = "{auth_registry.ca_cert}"\n',
    )

    with pytest.raises(Unauthorized) as info:
        run(lambda r: r.resolve(pushed.ref), config_path=str(config))
    assert auth_registry.host in str(info.value) and "credentials" in str(info.value)

    docker_config = tmp_path / "config.json"
    encoded = base64.b64encode(f"{TEST_USER}:{TEST_PASSWORD}".encode()).decode()
    docker_config.write_text(json.dumps({"auths": {auth_registry.host: {"auth": encoded}}}))
    caplog.set_level(logging.DEBUG)
    creds = docker_config_credentials(str(docker_config))
    result = run(lambda r: pull(r, pushed.ref, store), config_path=str(config), credentials=creds)
    assert str(result.target.digest) == busybox_image.digest
    assert_image_in_store(store, busybox_image)
    assert TEST_PASSWORD not in caplog.text and encoded not in caplog.text

    # Pushing with the same credentials works too.
    target_ref = f"{auth_registry.host}/{repo_name}-pushed:v2"
    run(
        lambda r: push(r, target_ref, store, result.target),
        config_path=str(config),
        credentials=creds,
    )
    _, desc = run(lambda r: r.resolve(target_ref), config_path=str(config), credentials=creds)
    assert desc.digest == Digest.parse(busybox_image.digest)
    assert TEST_PASSWORD not in caplog.text and encoded not in caplog.text


def test_platform_matchers_agree_with_the_builder(multiplatform_index: Index) -> None:
    host, foreign = multiplatform_index.images
    assert default().match(parse_platform(str(host.platform)))
    assert not default().match(parse_platform(str(foreign.platform)))
    assert ALL.match(parse_platform(str(foreign.platform)))
    assert isinstance(host.platform, Platform)
