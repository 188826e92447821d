"""Importing OCI layouts and Docker archives into a content store, hostile input included."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from berth import errdefs
from berth.core.archive import (
    ImageRecord,
    ImportOptions,
    NamespacedStore,
    add_ref_prefix,
    digest_translator,
    filter_ref_prefix,
    import_archive,
)
from berth.core.content import Digest, LocalStore, MemoryLabelStore
from berth.core.images import mediatypes as mt
from berth.core.images.platforms import Platform, only_strict
from berth.core.metadata.leases import LeaseStore
from berth.core.metadata.plugin import Metadata
from tests.support.imagebuilder import (
    Compression,
    Image,
    build_busybox_image,
    build_image,
    build_multiplatform_index,
    host_platform,
    marker_layer_spec,
    write_docker_archive,
    write_oci_layout,
)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "cs", MemoryLabelStore())


@pytest.fixture(scope="module")
def small() -> Image:
    return build_image([marker_layer_spec("small")])


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _layout(
    files: Mapping[str, bytes], extra: Sequence[tuple[tarfile.TarInfo, bytes | None]] = ()
) -> io.BytesIO:
    return _tar([_file(n, d) for n, d in files.items()] + list(extra))


def _oci_files(image: Image, annotations: Mapping[str, str] | None = None) -> dict[str, bytes]:
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
    for digest, data in image.blobs().items():
        files["blobs/sha256/" + digest.removeprefix("sha256:")] = data
    desc = image.descriptor()
    if annotations:
        desc["annotations"] = dict(annotations)
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode()
    return files


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blobs(store: LocalStore) -> set[str]:
    found: set[str] = set()
    store.walk(lambda info: found.add(str(info.digest)))
    return found


# --- OCI layouts --------------------------------------------------------------------------------


def test_oci_layout_tar_imports_every_blob_and_names_the_image(
    tmp_path: Path, store: LocalStore, small: Image
) -> None:
    path = write_oci_layout(
        tmp_path / "img.tar", small, ref_name="latest", image_name="docker.io/library/small:1"
    )
    with path.open("rb") as f:
        records = import_archive(f, store)
    assert [r.name for r in records] == ["docker.io/library/small:1"]
    target = records[0].target
    assert (str(target.digest), target.media_type) == (small.digest, mt.OCI_MANIFEST)
    assert set(small.blobs()) <= _blobs(store)
    # GC labels tie the manifest to its config and layer.
    labels = store.info(Digest.parse(small.digest)).labels
    assert labels["containerd.io/gc.ref.content.config"] == small.config_digest
    assert labels["containerd.io/gc.ref.content.l.0"] == small.layers[0].digest


def test_ref_name_only_is_translated_like_ctr(
    tmp_path: Path, store: LocalStore, small: Image
) -> None:
    path = write_oci_layout(tmp_path / "img.tar", small, ref_name="v1")
    with path.open("rb") as f:
        records = import_archive(
            f, store, options=ImportOptions(ref_translator=add_ref_prefix("import-2024-01-01"))
        )
    assert [r.name for r in records] == ["import-2024-01-01:v1"]


def test_base_name_filters_foreign_full_names(store: LocalStore, small: Image) -> None:
    files = _oci_files(small, {"org.opencontainers.image.ref.name": "docker.io/other/x:1"})
    opts = ImportOptions(ref_translator=filter_ref_prefix("example.com/mine"))
    assert import_archive(_layout(files), store, options=opts) == []


def test_digest_names_and_index_name(store: LocalStore, small: Image) -> None:
    files = _oci_files(small, {"org.opencontainers.image.ref.name": "latest"})
    opts = ImportOptions(
        ref_translator=add_ref_prefix("base"),
        digest_ref=digest_translator("base"),
        index_name="the-index",
    )
    records = import_archive(_layout(files), store, options=opts)
    assert [r.name for r in records] == ["the-index", "base:latest", f"base@{small.digest}"]
    assert records[0].target.media_type == mt.OCI_INDEX
    assert str(records[0].target.digest) == _digest(files["index.json"])
    opts = ImportOptions(
        ref_translator=add_ref_prefix("base"),
        digest_ref=digest_translator("base"),
        skip_digest_for_named=True,
    )
    assert [r.name for r in import_archive(_layout(files), store, options=opts)] == ["base:latest"]


def test_blob_order_does_not_matter_and_gzip_tars_are_read(store: LocalStore, small: Image) -> None:
    files = _oci_files(small, {"io.containerd.image.name": "x/y:z"})
    order = ["index.json", "oci-layout", *sorted(n for n in files if n.startswith("blobs/"))]
    raw = _tar([_file(n, files[n]) for n in order]).getvalue()
    records = import_archive(io.BytesIO(gzip.compress(raw)), store)
    assert [r.name for r in records] == ["x/y:z"]


def test_multiplatform_index_imports_host_content_and_all_platforms_needs_everything(
    tmp_path: Path, store: LocalStore
) -> None:
    index = build_multiplatform_index()
    host = index.image_for(host_platform())
    other = next(i for i in index.images if i is not host)
    files = {
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        "index.json": json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [index.descriptor(annotations={"io.containerd.image.name": "m:1"})],
            }
        ).encode(),
    }
    for digest, data in index.blobs().items():
        if digest not in other.blobs() or digest == index.digest:
            files["blobs/sha256/" + digest.removeprefix("sha256:")] = data
    # The other platform's manifest is there, but not its config and layer.
    files["blobs/sha256/" + other.digest.removeprefix("sha256:")] = other.manifest
    records = import_archive(_layout(files), store)
    assert [(r.name, str(r.target.digest)) for r in records] == [("m:1", index.digest)]
    idx_labels = store.info(Digest.parse(index.digest)).labels
    assert host.digest in idx_labels.values()
    assert other.digest not in idx_labels.values()
    with pytest.raises(errdefs.InvalidArgument, match="missing blob"):
        import_archive(_layout(files), store, options=ImportOptions(all_platforms=True))


def test_platform_that_matches_nothing_is_not_found(store: LocalStore, small: Image) -> None:
    files = _oci_files(small, {"io.containerd.image.name": "a:b"})
    opts = ImportOptions(platforms=only_strict(Platform("windows", "s390x")))
    with pytest.raises(errdefs.NotFound, match="filtered out"):
        import_archive(_layout(files), store, options=opts)


# --- Docker archives ----------------------------------------------------------------------------


def test_docker_archive_becomes_a_schema2_manifest_in_an_index(
    tmp_path: Path, store: LocalStore
) -> None:
    image = build_image([marker_layer_spec("d")], compression=Compression.NONE)
    path = write_docker_archive(tmp_path / "d.tar", image, repo_tags=("busybox:latest", "a/b:2"))
    with path.open("rb") as f:
        records = import_archive(f, store)
    assert [r.name for r in records] == [
        "docker.io/library/busybox:latest",
        "docker.io/a/b:2",
    ]
    target = records[0].target
    assert target.media_type == mt.DOCKER_MANIFEST
    assert target.platform == host_platform_normalized()
    assert target.annotations == {
        "io.containerd.image.name": "docker.io/library/busybox:latest",
        "org.opencontainers.image.ref.name": "latest",
    }
    manifest = json.loads(store.read_blob(target.digest))
    assert manifest["config"] == {
        "mediaType": mt.DOCKER_CONFIG,
        "digest": image.config_digest,
        "size": len(image.config),
    }
    assert manifest["layers"] == [
        {
            "mediaType": mt.DOCKER_LAYER,
            "digest": image.layers[0].digest,
            "size": image.layers[0].size,
        }
    ]
    # Byte layout of Go's encoding/json, so digests agree with ctr's import.
    assert store.read_blob(target.digest).startswith(
        b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        b'"config":{"mediaType":'
    )


def host_platform_normalized() -> Platform:
    p = host_platform()
    return Platform(p.os, p.architecture)


def test_docker_gzip_layers_get_the_gzip_type_and_compress_blobs_gzips_plain_ones(
    tmp_path: Path, store: LocalStore
) -> None:
    gz = build_image([marker_layer_spec("g")], compression=Compression.GZIP)
    manifest = [{"Config": "c.json", "RepoTags": ["g:1"], "Layers": ["l/layer.tar"]}]
    buf = _tar(
        [
            _file("c.json", gz.config),
            _file("l/layer.tar", gz.layers[0].data),
            _file("manifest.json", json.dumps(manifest).encode()),
        ]
    )
    (rec,) = import_archive(buf, store)
    layer = json.loads(store.read_blob(rec.target.digest))["layers"][0]
    assert layer["mediaType"] == mt.DOCKER_LAYER_GZIP

    plain = build_image([marker_layer_spec("p")], compression=Compression.NONE)
    path = write_docker_archive(tmp_path / "p.tar", plain, repo_tags=("p:1",))
    with path.open("rb") as f:
        (rec,) = import_archive(f, store, options=ImportOptions(compress_blobs=True))
    layer = json.loads(store.read_blob(rec.target.digest))["layers"][0]
    assert layer["mediaType"] == mt.DOCKER_LAYER_GZIP
    compressed = store.read_blob(layer["digest"])
    assert gzip.decompress(compressed) == plain.layers[0].data
    info = store.info(layer["digest"])
    assert info.labels["containerd.io/uncompressed"] == plain.layers[0].digest
    # A second import finds the compressed copy through its label.
    with path.open("rb") as f:
        (again,) = import_archive(f, store)
    assert again.target.digest == rec.target.digest


def test_docker_archive_with_several_images_and_a_layer_symlink(store: LocalStore) -> None:
    a = build_image([marker_layer_spec("shared")], compression=Compression.NONE)
    cfg_a = a.config
    cfg_b = json.dumps({**a.config_json, "author": "b"}).encode()
    layer = a.layers[0].data
    link = tarfile.TarInfo("l2/layer.tar")
    link.type = tarfile.SYMTYPE
    link.linkname = "../l1/layer.tar"
    manifest = [
        {"Config": "a.json", "RepoTags": ["a:1"], "Layers": ["l1/layer.tar"]},
        {"Config": "b.json", "RepoTags": None, "Layers": ["l2/layer.tar"]},
    ]
    buf = _tar(
        [
            _file("a.json", cfg_a),
            _file("b.json", cfg_b),
            _file("l1/layer.tar", layer),
            (link, None),
            _file("manifest.json", json.dumps(manifest).encode()),
        ]
    )
    records = import_archive(buf, store, options=ImportOptions(index_name="all"))
    assert [r.name for r in records] == ["all", "docker.io/library/a:1"]
    index = json.loads(store.read_blob(records[0].target.digest))
    assert len(index["manifests"]) == 2
    assert "annotations" not in index["manifests"][1]
    second = json.loads(store.read_blob(index["manifests"][1]["digest"]))
    assert second["layers"][0]["digest"] == a.layers[0].digest


# --- hostile archives ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "blobs/../../x", "a/../../b"])
def test_entries_escaping_the_archive_are_refused(store: LocalStore, name: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=r"absolute|escapes"):
        import_archive(_tar([_file(name, b"x")]), store)
    assert _blobs(store) == set()


def test_blob_with_wrong_digest_is_refused_and_nothing_wrong_is_committed(
    store: LocalStore, small: Image
) -> None:
    files = _oci_files(small)
    layer_path = "blobs/sha256/" + small.layers[0].digest.removeprefix("sha256:")
    corrupt = bytearray(files[layer_path])
    corrupt[len(corrupt) // 2] ^= 0xFF
    files[layer_path] = bytes(corrupt)
    with pytest.raises(errdefs.InvalidArgument, match="does not match its digest"):
        import_archive(_layout(files), store)
    bad = _digest(files[layer_path])
    assert bad not in _blobs(store)
    assert small.layers[0].digest not in _blobs(store)
    assert store.list_statuses() == []


def test_a_bad_blob_is_refused_even_when_the_store_has_the_right_one(
    store: LocalStore, small: Image
) -> None:
    import_archive(_layout(_oci_files(small)), store)
    files = _oci_files(small)
    cfg_path = "blobs/sha256/" + small.config_digest.removeprefix("sha256:")
    files[cfg_path] = b"{}"
    with pytest.raises(errdefs.InvalidArgument, match="does not match its digest"):
        import_archive(_layout(files), store)


def test_missing_blob_is_refused(store: LocalStore, small: Image) -> None:
    files = _oci_files(small, {"io.containerd.image.name": "a:b"})
    del files["blobs/sha256/" + small.layers[0].digest.removeprefix("sha256:")]
    with pytest.raises(errdefs.InvalidArgument, match=f"missing blob {small.layers[0].digest}"):
        import_archive(_layout(files), store)


@pytest.mark.parametrize("doc", ["index.json", "manifest.json"])
def test_oversized_documents_are_refused_before_buffering(store: LocalStore, doc: str) -> None:
    info = tarfile.TarInfo(doc)
    info.size = 5 << 20
    data = b" " * info.size
    with pytest.raises(errdefs.InvalidArgument, match="over the 4194304 byte limit"):
        import_archive(_tar([(info, data)]), store)


@pytest.mark.parametrize("kind", [tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_hardlinks_and_special_files_are_refused(store: LocalStore, kind: bytes) -> None:
    info = tarfile.TarInfo("blobs/sha256/x")
    info.type = kind
    info.linkname = "oci-layout"
    with pytest.raises(errdefs.InvalidArgument, match=r"hard links|unsupported entry type"):
        import_archive(_tar([(info, None), _file("oci-layout", b"{}")]), store)


@pytest.mark.parametrize("target", ["/etc/shadow", "../../outside", "a/../../../x"])
def test_symlinks_leaving_the_archive_are_refused(store: LocalStore, target: str) -> None:
    link = tarfile.TarInfo("l/layer.tar")
    link.type = tarfile.SYMTYPE
    link.linkname = target
    with pytest.raises(errdefs.InvalidArgument, match="points outside the archive"):
        import_archive(_tar([(link, None)]), store)


def test_dangling_layer_symlink_is_refused(store: LocalStore) -> None:
    link = tarfile.TarInfo("l/layer.tar")
    link.type = tarfile.SYMTYPE
    link.linkname = "../m/layer.tar"
    manifest = [{"Config": "c.json", "RepoTags": [], "Layers": ["l/layer.tar"]}]
    buf = _tar(
        [
            (link, None),
            _file("c.json", b"{}"),
            _file("manifest.json", json.dumps(manifest).encode()),
        ]
    )
    with pytest.raises(errdefs.InvalidArgument, match="no target for symlink"):
        import_archive(buf, store)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"README": b"hi"}, "unrecognized image format"),
        ({"oci-layout": b'{"imageLayoutVersion":"2.0.0"}'}, "unsupported OCI version 2.0.0"),
        ({"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}, "missing index.json"),
        ({"oci-layout": b"nope"}, "not valid JSON"),
        ({"manifest.json": b"{}"}, "must be a JSON array"),
        ({"manifest.json": b"[]"}, "lists no images"),
        (
            {"manifest.json": b'[{"Config":"c.json","Layers":[]}]'},
            "image config 'c.json' not found",
        ),
        ({"blobs/sha256/zz": b"x"}, "not a blob path"),
        ({"blobs/x": b"x"}, "expected blobs/<algorithm>/<hex>"),
    ],
)
def test_malformed_archives_are_invalid_arguments(
    store: LocalStore, files: dict[str, bytes], message: str
) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=message):
        import_archive(_layout(files), store)


def test_duplicate_entries_are_refused(store: LocalStore) -> None:
    buf = _tar([_file("a", b"1"), _file("a", b"2")])
    with pytest.raises(errdefs.InvalidArgument, match="appears twice"):
        import_archive(buf, store)


def test_not_a_tar_and_truncated_tar_are_invalid(store: LocalStore, small: Image) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=r"not a tar|malformed"):
        import_archive(io.BytesIO(b"this is not a tar archive at all" * 40), store)
    raw = _layout(_oci_files(small)).getvalue()
    cut = raw.index(small.layers[0].data) + 10
    with pytest.raises(errdefs.InvalidArgument, match=r"truncated|ended|malformed"):
        import_archive(io.BytesIO(raw[:cut]), store)
    assert store.list_statuses() == []


def test_non_stream_reader_is_read_sequentially(store: LocalStore, small: Image) -> None:
    raw = _layout(_oci_files(small, {"io.containerd.image.name": "s:1"})).getvalue()

    class Pipe:
        """Only read(): what a pipe or socket offers."""

        def __init__(self) -> None:
            self._buf = io.BytesIO(raw)

        def read(self, n: int = -1, /) -> bytes:
            return self._buf.read(min(n, 7000) if n > 0 else 7000)

    assert [r.name for r in import_archive(Pipe(), store)] == ["s:1"]


# --- leases, over the daemon's metadata store ---------------------------------------------------


@pytest.fixture
def md(tmp_path: Path) -> Iterator[Metadata]:
    m = Metadata(tmp_path / "meta.db", LocalStore(tmp_path / "content"))
    yield m
    m.close()


def test_namespaced_import_puts_every_blob_under_the_lease(md: Metadata, small: Image) -> None:
    leases = LeaseStore(md)
    leases.create("ns", "imp", {})
    store = NamespacedStore(md.require_content(), "ns")
    files = _oci_files(small, {"io.containerd.image.name": "a:b"})
    records = import_archive(_layout(files), store, lease="imp")
    assert records == [ImageRecord("a:b", records[0].target)]
    held = {rid for rtype, rid in leases.list_resources("ns", "imp") if rtype == "content"}
    assert set(small.blobs()) | {_digest(files["index.json"])} <= held
    # A second import of the same content under another lease is held too.
    leases.create("ns", "again", {})
    import_archive(_layout(files), store, lease="again")
    held2 = {rid for rtype, rid in leases.list_resources("ns", "again") if rtype == "content"}
    assert set(small.blobs()) <= held2


def test_a_lease_needs_a_store_that_can_hold_one(store: LocalStore, small: Image) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="cannot hold writes under a lease"):
        import_archive(_layout(_oci_files(small)), store, lease="x")


def test_busybox_oci_archive_from_the_image_builder(tmp_path: Path, store: LocalStore) -> None:
    image = build_busybox_image()
    path = write_oci_layout(tmp_path / "bb.tar", image, ref_name="latest")
    with path.open("rb") as f:
        (rec,) = import_archive(
            f, store, options=ImportOptions(ref_translator=add_ref_prefix("bb"))
        )
    assert (rec.name, str(rec.target.digest)) == ("bb:latest", image.digest)
