"""Unit tests for berth.core.images: platforms, manifest parsing, GC labels,
chain IDs and layer decompression."""

from __future__ import annotations

import gzip
import hashlib
import io
import json

import pytest
import zstandard

from berth import errdefs
from berth.core.content import Descriptor as ContentDescriptor
from berth.core.content import Digest
from berth.core.images import (
    MAX_MANIFEST_SIZE,
    Compression,
    Descriptor,
    Platform,
    append_distribution_source,
    chain_id,
    chain_ids,
    child_gc_labels,
    detect_compression,
    distribution_source_key,
    matcher_for,
    mount_candidate,
    normalize,
    only,
    only_strict,
    open_decompressed,
    open_layer,
    parse_config,
    parse_index,
    parse_manifest,
    parse_platform,
)
from berth.core.images import mediatypes as mt
from berth.core.images.platforms import _arm_variant, default_spec

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- platforms -------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("linux/arm64", Platform("linux", "arm64")),
        ("linux/armhf", Platform("linux", "arm", "")),
        ("linux/arm/7", Platform("linux", "arm", "v7")),
        ("linux/arm/v6", Platform("linux", "arm", "v6")),
        ("Linux/AMD64", Platform("linux", "amd64")),
        ("linux/i386", Platform("linux", "386")),
        ("darwin", Platform("darwin", default_spec().architecture, "")),
        ("arm64", Platform("linux", "arm64")),
    ],
)
def test_parse_platform(spec: str, expected: Platform) -> None:
    assert parse_platform(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("linux/*", "wildcards"),
        ("linux/am d64", "invalid component"),
        ("plan10", "unknown operating system or architecture"),
        ("a/b/c/d", "cannot parse"),
    ],
)
def test_parse_platform_errors(spec: str, message: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=message):
        parse_platform(spec)


def test_normalize_arm64_variant_and_arm_default() -> None:
    assert normalize(Platform("linux", "arm64", "v8")) == Platform("linux", "arm64", "")
    assert normalize(Platform("linux", "arm", "")) == Platform("linux", "arm", "v7")
    assert normalize(Platform("", "x86_64", "v1")) == Platform("linux", "amd64", "")


def test_only_matches_compatible_platforms_in_preference_order() -> None:
    m = only(Platform("linux", "amd64"))
    assert m.match(Platform("linux", "amd64")) and m.match(Platform("linux", "386"))
    assert not m.match(Platform("linux", "arm64"))
    assert m.less(Platform("linux", "amd64"), Platform("linux", "386"))
    arm = only(Platform("linux", "arm64", "v8"))
    assert arm.match(Platform("linux", "arm64")) and arm.match(Platform("linux", "arm64", "v8"))
    assert arm.match(Platform("linux", "arm", "v7")) and arm.match(Platform("linux", "arm", "v5"))
    v7 = only(Platform("linux", "arm", "v7"))
    assert v7.match(Platform("linux", "arm", "v6")) and not v7.match(Platform("linux", "arm", "v8"))
    strict = only_strict(Platform("linux", "amd64"))
    assert not strict.match(Platform("linux", "386"))
    amd64v3 = only(Platform("linux", "amd64", "v3"))
    assert amd64v3.match(Platform("linux", "amd64", "v2")) and amd64v3.match(
        Platform("linux", "amd64")
    )


def test_matcher_for_several_platforms() -> None:
    m = matcher_for(["linux/arm64", "linux/s390x"])
    assert m.match(Platform("linux", "s390x")) and m.match(Platform("linux", "arm64", "v8"))
    assert not m.match(Platform("linux", "ppc64le"))


def test_arm_variant_from_cpuinfo() -> None:
    assert _arm_variant("arm64", "processor : 0\nCPU architecture: 8\n") == "v8"
    assert (
        _arm_variant("arm", "CPU architecture: 7\nmodel name : ARMv6-compatible processor\n")
        == "v6"
    )
    assert _arm_variant("arm", "CPU architecture: 7\n") == "v7"


# -- manifests ---------------------------------------------------------------


def manifest_doc(**over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": D1, "size": 10},
        "layers": [
            {"mediaType": mt.OCI_LAYER_GZIP, "digest": D2, "size": 20},
            {"mediaType": mt.OCI_LAYER_ZSTD, "digest": D3, "size": 30, "urls": ["https://x/y"]},
        ],
    }
    doc.update(over)
    return doc


def test_parse_manifest_roundtrip() -> None:
    m = parse_manifest(json.dumps(manifest_doc()).encode(), mt.OCI_MANIFEST)
    assert [str(c.digest) for c in m.children()] == [D1, D2, D3]
    assert m.layers[1].urls == ("https://x/y",)
    assert isinstance(m.config, ContentDescriptor)


@pytest.mark.parametrize(
    ("data", "media_type", "message"),
    [
        (b"not json", mt.OCI_MANIFEST, "is not valid JSON"),
        (b"[]", mt.OCI_MANIFEST, "must be a JSON object, got array"),
        (json.dumps(manifest_doc(schemaVersion=1)).encode(), mt.OCI_MANIFEST, "schema 1"),
        (json.dumps(manifest_doc(layers="x")).encode(), mt.OCI_MANIFEST, "layers must be an array"),
        (
            json.dumps(
                manifest_doc(
                    config={"mediaType": mt.OCI_CONFIG, "digest": "sha1:" + "a" * 40, "size": 1}
                )
            ).encode(),
            mt.OCI_MANIFEST,
            "unsupported digest algorithm 'sha1'",
        ),
        (
            json.dumps(
                manifest_doc(config={"mediaType": mt.OCI_CONFIG, "digest": D1, "size": -1})
            ).encode(),
            mt.OCI_MANIFEST,
            "size must be a non-negative integer",
        ),
        (
            json.dumps(manifest_doc(manifests=[])).encode(),
            mt.OCI_MANIFEST,
            "expected manifest but found index",
        ),
        (
            json.dumps(manifest_doc()).encode(),
            "application/x-unknown",
            "unsupported media type 'application/x-unknown'",
        ),
        (json.dumps(manifest_doc()).encode(), mt.DOCKER_MANIFEST, "declares mediaType"),
        (b"{" + b" " * MAX_MANIFEST_SIZE + b"}", mt.OCI_MANIFEST, "byte limit"),
    ],
)
def test_parse_manifest_rejects(data: bytes, media_type: str, message: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match=message):
        parse_manifest(data, media_type)


def test_parse_index_with_platforms_and_type_confusion() -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": D1,
                "size": 1,
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
            },
            {"mediaType": mt.OCI_MANIFEST, "digest": D2, "size": 2},
        ],
    }
    idx = parse_index(json.dumps(doc).encode(), mt.OCI_INDEX)
    assert idx.manifests[0].platform == Platform("linux", "arm64", "v8")
    assert idx.manifests[1].platform is None
    with pytest.raises(errdefs.InvalidArgument, match="expected index but found manifest"):
        parse_index(json.dumps(manifest_doc(mediaType=None)).encode(), mt.OCI_INDEX)


def test_descriptor_json_roundtrip() -> None:
    d = Descriptor(mt.OCI_MANIFEST, Digest.parse(D1), 5, {"a": "b"}, Platform("linux", "amd64"))
    assert Descriptor.from_json(d.to_json()) == d


def test_parse_config() -> None:
    cfg = parse_config(
        json.dumps(
            {
                "architecture": "aarch64",
                "os": "linux",
                "config": {"Env": ["A=1"]},
                "rootfs": {"type": "layers", "diff_ids": [D1, D2]},
            }
        ).encode()
    )
    assert cfg.platform == Platform("linux", "arm64")
    assert [str(d) for d in cfg.diff_ids] == [D1, D2]
    assert cfg.config == {"Env": ["A=1"]}
    with pytest.raises(errdefs.InvalidArgument, match="rootfs missing"):
        parse_config(b'{"os":"linux"}')
    with pytest.raises(errdefs.InvalidArgument, match="diff_id 0"):
        parse_config(b'{"rootfs":{"type":"layers","diff_ids":["nope"]}}')


# -- labels and chain IDs ---------------------------------------------------


def test_child_gc_labels_like_containerd() -> None:
    m = parse_manifest(json.dumps(manifest_doc()).encode(), mt.OCI_MANIFEST)
    assert child_gc_labels(m.children()) == {
        "containerd.io/gc.ref.content.config": D1,
        "containerd.io/gc.ref.content.l.0": D2,
        "containerd.io/gc.ref.content.l.1": D3,
    }
    index_children = [
        ContentDescriptor(mt.OCI_MANIFEST, Digest.parse(D1), 1),
        ContentDescriptor(mt.DOCKER_MANIFEST, Digest.parse(D2), 1),
        ContentDescriptor(mt.OCI_INDEX, Digest.parse(D3), 1),
    ]
    assert child_gc_labels(index_children) == {
        "containerd.io/gc.ref.content.m.0": D1,
        "containerd.io/gc.ref.content.m.1": D2,
        "containerd.io/gc.ref.content.0": D3,
    }


def test_distribution_source_labels_and_mount_candidates() -> None:
    assert (
        distribution_source_key("127.0.0.1:5000") == "containerd.io/distribution.source.127.0.0.1"
    )
    assert distribution_source_key("docker.io") == "containerd.io/distribution.source.docker.io"
    assert append_distribution_source("b/x,c", "a/y") == "a/y,b/x,c"
    assert append_distribution_source("a,b", "a") == "a,b"
    labels = {distribution_source_key("r:1"): "team/base,other/thing,team/app"}
    assert mount_candidate(labels, "r:1", "team/app") == "team/base"
    assert mount_candidate(labels, "elsewhere", "team/app") is None


def test_chain_ids() -> None:
    a, b, c = (Digest.from_bytes(x) for x in (b"a", b"b", b"c"))
    ids = chain_ids([a, b, c])
    assert ids[0] == a
    assert ids[1] == Digest.from_bytes(f"{a} {b}".encode())
    assert ids[2] == Digest.from_bytes(f"{ids[1]} {c}".encode())
    assert chain_id([str(a), str(b), str(c)]) == ids[2]
    with pytest.raises(errdefs.InvalidArgument):
        chain_id([])


# -- compression ------------------------------------------------------------

PAYLOAD = b"layer tar bytes " * 5000


@pytest.mark.parametrize(
    ("blob", "kind"),
    [
        (gzip.compress(PAYLOAD), Compression.GZIP),
        (zstandard.ZstdCompressor().compress(PAYLOAD), Compression.ZSTD),
        (PAYLOAD, Compression.UNCOMPRESSED),
    ],
)
def test_detect_and_decompress(blob: bytes, kind: Compression) -> None:
    assert detect_compression(blob[:4]) is kind
    for declared in (None, kind):
        for threads in (0, 1):
            with open_decompressed(io.BytesIO(blob), declared, threads=threads) as r:
                assert r.read() == PAYLOAD


def test_open_layer_uses_media_type_and_sniffs_docker_uncompressed() -> None:
    blob = gzip.compress(PAYLOAD)
    with open_layer(io.BytesIO(blob), mt.DOCKER_LAYER) as r:  # mislabelled gzip
        assert r.read() == PAYLOAD
    with open_layer(io.BytesIO(blob), mt.OCI_LAYER_GZIP) as r:
        assert r.read() == PAYLOAD
    with pytest.raises(errdefs.InvalidArgument, match="wrapped"):
        open_layer(io.BytesIO(blob), mt.OCI_LAYER_GZIP + "+encrypted")
    with pytest.raises(errdefs.NotImplemented):
        open_layer(io.BytesIO(blob), mt.OCI_CONFIG)


def test_media_type_predicates() -> None:
    assert mt.is_layer(mt.DOCKER_LAYER_FOREIGN_GZIP) and mt.is_non_distributable(
        mt.DOCKER_LAYER_FOREIGN
    )
    assert mt.is_non_distributable(mt.OCI_LAYER_NONDISTRIBUTABLE_ZSTD)
    assert not mt.is_layer(mt.OCI_CONFIG)
    assert mt.layer_compression(mt.OCI_LAYER_ZSTD) is mt.LayerCompression.ZSTD
    assert mt.layer_compression(mt.DOCKER_LAYER) is mt.LayerCompression.UNKNOWN
