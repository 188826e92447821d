"""Exporting images as OCI layout tars, and the reference rules archives use."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from berth import errdefs
from berth.core.archive import (
    ImageRecord,
    export_archive,
    familiarize_reference,
    import_archive,
    normalize_reference,
    oci_reference_name,
)
from berth.core.content import Digest, LocalStore, MemoryLabelStore
from berth.core.images import Descriptor
from berth.core.images import mediatypes as mt
from berth.core.images.platforms import ALL, Platform, only_strict
from tests.support.imagebuilder import (
    Image,
    build_image,
    build_multiplatform_index,
    host_platform,
    marker_layer_spec,
)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "cs", MemoryLabelStore())


def _put(store: LocalStore, blobs: dict[str, bytes]) -> None:
    for digest, data in blobs.items():
        with store.open_writer(f"put-{digest}") as w:
            w.write(data)
            try:
                w.commit(len(data), digest)
            except errdefs.AlreadyExists:
                pass


def _desc(target: Image | object, media_type: str, digest: str, size: int) -> Descriptor:
    return Descriptor(media_type, Digest.parse(digest), size)


def _image_desc(image: Image) -> Descriptor:
    return Descriptor(image.manifest_media_type, Digest.parse(image.digest), len(image.manifest))


def _export(store: LocalStore, records: list[ImageRecord], **kw: object) -> tarfile.TarFile:
    buf = io.BytesIO()
    export_archive(buf, store, records, **kw)  # type: ignore[arg-type]
    buf.seek(0)
    return tarfile.open(fileobj=buf)


def test_export_writes_ctr_layout_with_names_and_docker_manifest(store: LocalStore) -> None:
    image = build_image([marker_layer_spec("e")])
    _put(store, image.blobs())
    tf = _export(store, [ImageRecord("docker.io/library/e:1", _image_desc(image))])
    members = tf.getmembers()
    names = [m.name for m in members]
    blob_names = sorted("blobs/sha256/" + d.removeprefix("sha256:") for d in image.blobs())
    assert names == [
        "blobs",
        "blobs/sha256",
        *blob_names,
        "index.json",
        "manifest.json",
        "oci-layout",
    ]
    modes = {m.name: m.mode for m in members}
    assert modes["oci-layout"] == 0o444 and modes["index.json"] == 0o644
    assert all(modes[n] == 0o444 for n in blob_names)
    assert all(m.mtime == 0 for m in members)
    index = json.loads(tf.extractfile("index.json").read())  # type: ignore[union-attr]
    assert index == {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": image.digest,
                "size": len(image.manifest),
                "annotations": {
                    "io.containerd.image.name": "docker.io/library/e:1",
                    "org.opencontainers.image.ref.name": "1",
                },
            }
        ],
    }
    docker = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert docker == [
        {
            "Config": "blobs/sha256/" + image.config_digest.removeprefix("sha256:"),
            "RepoTags": ["e:1"],
            "Layers": ["blobs/sha256/" + image.layers[0].digest.removeprefix("sha256:")],
        }
    ]
    for digest, data in image.blobs().items():
        assert tf.extractfile("blobs/sha256/" + digest.removeprefix("sha256:")).read() == data  # type: ignore[union-attr]


def test_export_then_import_gives_the_same_digests(tmp_path: Path, store: LocalStore) -> None:
    image = build_image([marker_layer_spec("rt")])
    _put(store, image.blobs())
    buf = io.BytesIO()
    export_archive(buf, store, [ImageRecord("example.com/rt:2", _image_desc(image))])
    other = LocalStore(tmp_path / "other", MemoryLabelStore())
    buf.seek(0)
    (rec,) = import_archive(buf, other)
    assert (rec.name, str(rec.target.digest)) == ("example.com/rt:2", image.digest)
    for digest, data in image.blobs().items():
        assert other.read_blob(digest) == data


def test_skip_docker_manifest_and_unnamed_targets(store: LocalStore) -> None:
    image = build_image([marker_layer_spec("u")])
    _put(store, image.blobs())
    tf = _export(store, [ImageRecord("", _image_desc(image))], docker_manifest=False)
    assert "manifest.json" not in tf.getnames()
    index = json.loads(tf.extractfile("index.json").read())  # type: ignore[union-attr]
    assert "annotations" not in index["manifests"][0]


def test_index_export_selects_the_host_platform_unless_all_platforms(store: LocalStore) -> None:
    index = build_multiplatform_index()
    host = index.image_for(host_platform())
    other = next(i for i in index.images if i is not host)
    _put(store, {d: b for d, b in index.blobs().items() if d not in other.blobs()})
    _put(store, {other.digest: other.manifest})
    target = Descriptor(mt.OCI_INDEX, Digest.parse(index.digest), len(index.manifest))
    tf = _export(store, [ImageRecord("m:1", target)])
    names = set(tf.getnames())
    assert "blobs/sha256/" + host.layers[0].digest.removeprefix("sha256:") in names
    assert "blobs/sha256/" + other.digest.removeprefix("sha256:") not in names
    docker = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert docker[0]["Config"].endswith(host.config_digest.removeprefix("sha256:"))
    assert docker[0]["RepoTags"] == ["m:1"]
    # All platforms needs the other image's content, which is missing.
    with pytest.raises(errdefs.NotFound, match="is not in the store"):
        _export(store, [ImageRecord("m:1", target)], all_platforms=True)
    _put(store, other.blobs())
    tf = _export(store, [ImageRecord("m:1", target)], all_platforms=True)
    assert set(index.blobs()) == {
        "sha256:" + n.rsplit("/", 1)[1] for n in tf.getnames() if n.count("/") == 2
    }
    # A platform nothing matches is NotFound when a Docker manifest is wanted.
    with pytest.raises(errdefs.NotFound, match="no manifest found for platform"):
        _export(
            store, [ImageRecord("m:1", target)], platforms=only_strict(Platform("linux", "s390x"))
        )
    tf = _export(store, [ImageRecord("m:1", target)], platforms=ALL)
    assert len(json.loads(tf.extractfile("manifest.json").read())) == 1  # type: ignore[union-attr]


def test_only_manifests_and_indexes_can_be_exported(store: LocalStore) -> None:
    image = build_image([marker_layer_spec("c")])
    _put(store, image.blobs())
    cfg = Descriptor(mt.OCI_CONFIG, Digest.parse(image.config_digest), len(image.config))
    with pytest.raises(errdefs.InvalidArgument, match="only manifests may be exported"):
        _export(store, [ImageRecord("x:1", cfg)])


def test_missing_content_fails_before_anything_is_written(store: LocalStore) -> None:
    image = build_image([marker_layer_spec("m")])
    _put(store, {d: b for d, b in image.blobs().items() if d != image.layers[0].digest})
    buf = io.BytesIO()
    with pytest.raises(errdefs.NotFound, match=image.layers[0].digest):
        export_archive(buf, store, [ImageRecord("x:1", _image_desc(image))])
    assert buf.getvalue() == b""


def _foreign_image(store: LocalStore, *, store_layer: bool) -> tuple[Descriptor, str]:
    layer = b"foreign layer bytes"
    layer_digest = str(Digest.from_bytes(layer))
    config = json.dumps(
        {
            "architecture": host_platform().architecture,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {
                "mediaType": mt.OCI_CONFIG,
                "digest": str(Digest.from_bytes(config)),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": mt.OCI_LAYER_NONDISTRIBUTABLE,
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    blobs = {str(Digest.from_bytes(config)): config, str(Digest.from_bytes(manifest)): manifest}
    if store_layer:
        blobs[layer_digest] = layer
    _put(store, blobs)
    return Descriptor(mt.OCI_MANIFEST, Digest.from_bytes(manifest), len(manifest)), layer_digest


def test_non_distributable_layers_are_skipped_when_missing_or_asked(store: LocalStore) -> None:
    target, layer = _foreign_image(store, store_layer=False)
    path = "blobs/sha256/" + layer.removeprefix("sha256:")
    assert path not in _export(store, [ImageRecord("f:1", target)]).getnames()
    _put(store, {layer: b"foreign layer bytes"})
    assert path in _export(store, [ImageRecord("f:1", target)]).getnames()
    tf = _export(store, [ImageRecord("f:1", target)], skip_non_distributable=True)
    assert path not in tf.getnames()


def test_a_corrupted_stored_blob_is_detected_while_streaming(
    tmp_path: Path, store: LocalStore
) -> None:
    image = build_image([marker_layer_spec("corrupt")])
    _put(store, image.blobs())
    blob = tmp_path / "cs" / "blobs" / "sha256" / image.layers[0].digest.removeprefix("sha256:")
    data = bytearray(blob.read_bytes())
    data[5] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(errdefs.FailedPrecondition, match="does not match its digest"):
        _export(store, [ImageRecord("c:1", _image_desc(image))])


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "normalized", "familiar", "oci"),
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest", "latest"),
        ("busybox:1", "docker.io/library/busybox:1", "busybox:1", "1"),
        ("a/b:2", "docker.io/a/b:2", "a/b:2", "2"),
        ("localhost:5000/x/y:z", "localhost:5000/x/y:z", "localhost:5000/x/y:z", "z"),
        (
            "busybox:1@sha256:" + "a" * 64,
            "docker.io/library/busybox@sha256:" + "a" * 64,
            "busybox@sha256:" + "a" * 64,
            "@sha256:" + "a" * 64,
        ),
    ],
)
def test_reference_rules(ref: str, normalized: str, familiar: str, oci: str) -> None:
    assert normalize_reference(ref) == normalized
    assert familiarize_reference(normalized) == familiar
    assert oci_reference_name(normalized) == oci


def test_oci_reference_name_keeps_names_it_cannot_split() -> None:
    # A host:port whose port is no number is not a URL authority for containerd.
    assert oci_reference_name("import-2024-01-01:v1") == "import-2024-01-01:v1"
    assert oci_reference_name("plain") == ""


def test_bad_repo_tag_is_an_invalid_argument() -> None:
    with pytest.raises(errdefs.InvalidArgument, match="normalize image ref"):
        normalize_reference("a/Upper:1")
