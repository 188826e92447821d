"""Media types of image content and the rules that classify them.

The Docker schema 2 and OCI image-spec names a runtime meets, and predicates
over them in the spirit of containerd's ``images`` package: which types are
manifests, indexes, configs and layers, how a layer is compressed, and which
layers must not be pushed (non-distributable / "foreign" layers).
"""

from __future__ import annotations

from enum import StrEnum

from berth import errdefs

# Docker schema 2
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
#: Schema 1 is recognised only so it can be refused with a clear message.
DOCKER_MANIFEST_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_MANIFEST_SCHEMA1_UNSIGNED = "application/vnd.docker.distribution.manifest.v1+json"

# OCI image-spec v1
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDISTRIBUTABLE_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

# containerd checkpoint types that count as configs for GC labelling.
CONTAINERD_CHECKPOINT = "application/vnd.containerd.container.criu.checkpoint.criu.tar"
CONTAINERD_CHECKPOINT_CONFIG = "application/vnd.containerd.container.checkpoint.config.v1+proto"

MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
CONFIG_TYPES = frozenset({DOCKER_CONFIG, OCI_CONFIG})
#: What a registry may answer when asked for a manifest by tag or digest.
MANIFEST_ACCEPT = (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX)

_DOCKER_LAYER_BASES = frozenset(
    {DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN, DOCKER_LAYER_FOREIGN_GZIP}
)


class LayerCompression(StrEnum):
    """How a layer blob is encoded, as its media type declares it."""

    UNCOMPRESSED = "uncompressed"
    GZIP = "gzip"
    ZSTD = "zstd"
    #: Docker's uncompressed type is often (wrongly) used for gzip data: sniff it.
    UNKNOWN = "unknown"


def split_media_type(media_type: str) -> tuple[str, list[str]]:
    """``base+ext1+ext2`` -> ``(base, sorted([ext1, ext2]))``."""
    base, *ext = media_type.split("+")
    return base, sorted(ext)


def is_manifest(media_type: str) -> bool:
    """A single-platform image manifest (Docker schema 2 or OCI)."""
    return media_type in MANIFEST_TYPES


def is_index(media_type: str) -> bool:
    """A multi-platform index (OCI index or Docker manifest list)."""
    return media_type in INDEX_TYPES


def is_manifest_or_index(media_type: str) -> bool:
    return media_type in MANIFEST_TYPES or media_type in INDEX_TYPES


def is_config(media_type: str) -> bool:
    """An image config (not counting containerd checkpoint configs)."""
    return media_type in CONFIG_TYPES


def is_known_config(media_type: str) -> bool:
    """Image configs plus the checkpoint configs containerd labels as configs."""
    return media_type in CONFIG_TYPES or media_type in (
        CONTAINERD_CHECKPOINT,
        CONTAINERD_CHECKPOINT_CONFIG,
    )


def is_layer(media_type: str) -> bool:
    """Any OCI layer type, or a Docker layer type with any ``+suffix``."""
    if media_type.startswith("application/vnd.oci.image.layer."):
        return True
    base, _ = split_media_type(media_type)
    return base in _DOCKER_LAYER_BASES


def is_non_distributable(media_type: str) -> bool:
    """Layers a registry must not receive (they are fetched from their URLs)."""
    return media_type.startswith(
        (
            "application/vnd.oci.image.layer.nondistributable.",
            "application/vnd.docker.image.rootfs.foreign.",
        )
    )


def is_docker(media_type: str) -> bool:
    return media_type.startswith("application/vnd.docker.")


def is_schema1(media_type: str) -> bool:
    return media_type in (DOCKER_MANIFEST_SCHEMA1, DOCKER_MANIFEST_SCHEMA1_UNSIGNED)


def layer_compression(media_type: str) -> LayerCompression | None:
    """The compression a layer media type declares.

    Returns None for a wrapped type (e.g. ``+encrypted``) that needs a
    processor before it can be read. Raises NotImplemented (as containerd's
    ``DiffCompression`` does) when ``media_type`` is no layer type at all.
    """
    base, ext = split_media_type(media_type)
    if base in (DOCKER_LAYER, DOCKER_LAYER_FOREIGN):
        return None if ext else LayerCompression.UNKNOWN
    if base in (DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN_GZIP):
        return None if ext else LayerCompression.GZIP
    if base in (OCI_LAYER, OCI_LAYER_NONDISTRIBUTABLE):
        if not ext:
            return LayerCompression.UNCOMPRESSED
        # The last (sorted) suffix names the encoding; anything else is a wrapper.
        last = ext[-1]
        if last == "gzip" and len(ext) == 1:
            return LayerCompression.GZIP
        if last == "zstd" and len(ext) == 1:
            return LayerCompression.ZSTD
        return None
    raise errdefs.NotImplemented(f"unrecognised layer media type {media_type!r}")


def gc_ref_prefix(media_type: str) -> str:
    """The GC label containerd puts on a parent for a child of this type.

    A key ending in ``.`` gets the child's position appended
    (``containerd.io/gc.ref.content.l.0``); the config key is used as is.
    """
    if is_known_config(media_type):
        return "containerd.io/gc.ref.content.config"
    if is_manifest(media_type):
        return "containerd.io/gc.ref.content.m."
    if is_layer(media_type):
        return "containerd.io/gc.ref.content.l."
    return "containerd.io/gc.ref.content."
