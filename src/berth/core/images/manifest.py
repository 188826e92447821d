"""Image documents: descriptors, manifests, indexes and configs, parsed and validated.

Every parser here takes the raw bytes of a document as fetched and either
returns a typed value or raises :class:`berth.errdefs.InvalidArgument` with a
message that names the problem: not JSON, wrong shape, a digest that is not a
digest, a size that is not a size, a document bigger than
:data:`MAX_MANIFEST_SIZE`, a media type nobody knows, or a body whose own
``mediaType`` contradicts the type it was served as (containerd's
``validateMediaType``).

:class:`Descriptor` extends the content store's descriptor with the OCI
fields that only matter to images (``platform``, ``urls``), so it can be
handed to :func:`berth.core.content.copy_into` unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from berth import errdefs
from berth.core.content import Descriptor as ContentDescriptor
from berth.core.content import Digest
from berth.core.images import mediatypes as mt
from berth.core.images.platforms import Platform, normalize

#: Largest manifest or index accepted. This is containerd's MaxManifestSize,
#: ``4 * 1048 * 1048`` bytes (slightly over 4 MiB; the odd factor is theirs),
#: kept identical so the two daemons accept the same documents.
MAX_MANIFEST_SIZE = 4 * 1048 * 1048
#: Image configs are small too; a bound keeps a hostile registry from making
#: us buffer gigabytes of "JSON".
MAX_CONFIG_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Descriptor(ContentDescriptor):
    """An OCI descriptor with its image-level fields.

    A subclass of the content store's descriptor, so content APIs accept it.
    """

    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str = ""

    @classmethod
    def of(cls, desc: ContentDescriptor) -> Descriptor:
        """Promote a plain content descriptor (no platform, no URLs)."""
        if isinstance(desc, Descriptor):
            return desc
        return cls(desc.media_type, desc.digest, desc.size, dict(desc.annotations))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    @classmethod
    def from_json(cls, obj: object, *, where: str = "descriptor") -> Descriptor:
        """Parse an image-spec descriptor object.

        Raises InvalidArgument (naming ``where``) for a missing or invalid
        media type, digest or size, or malformed optional fields.
        """
        if not isinstance(obj, Mapping):
            raise errdefs.InvalidArgument(
                f"invalid {where}: expected a JSON object, got {_kind(obj)}"
            )
        media_type = obj.get("mediaType", "")
        if not isinstance(media_type, str):
            raise errdefs.InvalidArgument(f"invalid {where}: mediaType must be a string")
        raw_digest = obj.get("digest")
        if not isinstance(raw_digest, str):
            raise errdefs.InvalidArgument(f"invalid {where}: digest missing or not a string")
        try:
            digest = Digest.parse(raw_digest)
        except errdefs.InvalidArgument as exc:
            raise errdefs.InvalidArgument(f"invalid {where}: {exc}") from None
        size = obj.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise errdefs.InvalidArgument(
                f"invalid {where} {digest}: size must be a non-negative integer, got {size!r}"
            )
        annotations = obj.get("annotations") or {}
        if not isinstance(annotations, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise errdefs.InvalidArgument(f"invalid {where} {digest}: annotations must map strings")
        urls = obj.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise errdefs.InvalidArgument(f"invalid {where} {digest}: urls must be strings")
        platform = None
        if obj.get("platform") is not None:
            platform = Platform.from_json(obj["platform"])
        artifact_type = obj.get("artifactType") or ""
        if not isinstance(artifact_type, str):
            raise errdefs.InvalidArgument(
                f"invalid {where} {digest}: artifactType must be a string"
            )
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=dict(annotations),
            platform=platform,
            urls=tuple(urls),
            artifact_type=artifact_type,
        )


@dataclass(frozen=True, slots=True)
class Manifest:
    """A single-platform image manifest (Docker schema 2 or OCI)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None

    def children(self) -> list[Descriptor]:
        """Config first, then the layers in order (containerd's Children)."""
        return [self.config, *self.layers]


@dataclass(frozen=True, slots=True)
class Index:
    """A multi-platform index (OCI index or Docker manifest list)."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)

    def children(self) -> list[Descriptor]:
        return list(self.manifests)


@dataclass(frozen=True, slots=True)
class RootFS:
    type: str
    diff_ids: tuple[Digest, ...]


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The parts of an image config the runtime needs; ``raw`` keeps the rest.

    ``config`` is the runtime section (``Env``, ``Cmd``, ...) as parsed JSON.
    """

    platform: Platform
    rootfs: RootFS
    config: dict[str, Any]
    raw: dict[str, Any]

    @property
    def diff_ids(self) -> tuple[Digest, ...]:
        return self.rootfs.diff_ids


def _kind(obj: object) -> str:
    names: dict[type, str] = {dict: "object", list: "array", str: "string"}
    return names.get(type(obj), type(obj).__name__)


def _load_json(data: bytes, what: str, limit: int) -> dict[str, Any]:
    if len(data) > limit:
        raise errdefs.InvalidArgument(f"{what} is {len(data)} bytes, over the {limit} byte limit")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errdefs.InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise errdefs.InvalidArgument(f"{what} must be a JSON object, got {_kind(doc)}")
    return doc


def _check_schema_version(doc: Mapping[str, Any], what: str) -> None:
    version = doc.get("schemaVersion")
    if version == 1 or "fsLayers" in doc:
        raise errdefs.InvalidArgument(
            f"{what}: Docker schema 1 manifests are not supported (deprecated by the registry)"
        )
    if version != 2:
        raise errdefs.InvalidArgument(f"{what}: schemaVersion must be 2, got {version!r}")


def validate_media_type(doc: Mapping[str, Any], media_type: str, what: str) -> None:
    """Refuse a document whose shape contradicts ``media_type``.

    A manifest served with an index type (or the reverse) would otherwise be
    misread; containerd refuses it the same way.
    """
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise errdefs.InvalidArgument(f"{what}: mediaType must be a string")
    if mt.is_manifest(media_type):
        if "manifests" in doc or (declared is not None and mt.is_index(declared)):
            raise errdefs.InvalidArgument(
                f"{what}: media-type: expected manifest but found index ({media_type})"
            )
    elif mt.is_index(media_type):
        if (
            "config" in doc
            or "layers" in doc
            or (declared is not None and mt.is_manifest(declared))
        ):
            raise errdefs.InvalidArgument(
                f"{what}: media-type: expected index but found manifest ({media_type})"
            )
    if declared and declared != media_type and mt.is_manifest_or_index(declared):
        raise errdefs.InvalidArgument(
            f"{what}: served as {media_type} but declares mediaType {declared}"
        )


def check_manifest_media_type(media_type: str, what: str = "manifest") -> None:
    """Raise InvalidArgument unless ``media_type`` is one of the four manifest types."""
    if mt.is_manifest_or_index(media_type):
        return
    if mt.is_schema1(media_type):
        raise errdefs.InvalidArgument(
            f"{what}: Docker schema 1 manifests ({media_type}) are not supported"
        )
    accepted = ", ".join(mt.MANIFEST_ACCEPT)
    raise errdefs.InvalidArgument(
        f"{what}: unsupported media type {media_type!r} (expected one of: {accepted})"
    )


def parse_manifest(
    data: bytes, media_type: str | None = None, *, what: str = "manifest"
) -> Manifest:
    """Parse an image manifest served (or described) as ``media_type``.

    With ``media_type`` None the document's own ``mediaType`` (or OCI when
    absent) is used. Raises InvalidArgument on any defect.
    """
    doc = _load_json(data, what, MAX_MANIFEST_SIZE)
    _check_schema_version(doc, what)
    media_type = media_type or doc.get("mediaType") or mt.OCI_MANIFEST
    assert isinstance(media_type, str)
    if not mt.is_manifest(media_type):
        check_manifest_media_type(media_type, what)
        raise errdefs.InvalidArgument(f"{what}: {media_type} is an index, not a manifest")
    validate_media_type(doc, media_type, what)
    config = Descriptor.from_json(doc.get("config"), where=f"{what} config")
    layers_raw = doc.get("layers")
    if not isinstance(layers_raw, list):
        raise errdefs.InvalidArgument(f"{what}: layers must be an array, got {_kind(layers_raw)}")
    layers = tuple(
        Descriptor.from_json(item, where=f"{what} layer {i}") for i, item in enumerate(layers_raw)
    )
    subject = None
    if doc.get("subject") is not None:
        subject = Descriptor.from_json(doc["subject"], where=f"{what} subject")
    return Manifest(media_type, config, layers, _annotations(doc, what), subject)


def parse_index(data: bytes, media_type: str | None = None, *, what: str = "index") -> Index:
    """Parse an OCI index or Docker manifest list. Raises InvalidArgument on any defect."""
    doc = _load_json(data, what, MAX_MANIFEST_SIZE)
    _check_schema_version(doc, what)
    media_type = media_type or doc.get("mediaType") or mt.OCI_INDEX
    assert isinstance(media_type, str)
    if not mt.is_index(media_type):
        check_manifest_media_type(media_type, what)
        raise errdefs.InvalidArgument(f"{what}: {media_type} is a manifest, not an index")
    validate_media_type(doc, media_type, what)
    raw = doc.get("manifests")
    if not isinstance(raw, list):
        raise errdefs.InvalidArgument(f"{what}: manifests must be an array, got {_kind(raw)}")
    manifests = tuple(
        Descriptor.from_json(item, where=f"{what} entry {i}") for i, item in enumerate(raw)
    )
    return Index(media_type, manifests, _annotations(doc, what))


def parse_manifest_or_index(
    data: bytes, media_type: str, *, what: str = "manifest"
) -> Manifest | Index:
    """Dispatch on ``media_type``; raises InvalidArgument for any other type."""
    check_manifest_media_type(media_type, what)
    if mt.is_index(media_type):
        return parse_index(data, media_type, what=what)
    return parse_manifest(data, media_type, what=what)


def _annotations(doc: Mapping[str, Any], what: str) -> dict[str, str]:
    raw = doc.get("annotations") or {}
    if not isinstance(raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise errdefs.InvalidArgument(f"{what}: annotations must map strings to strings")
    return dict(raw)


def parse_config(data: bytes, *, what: str = "image config") -> ImageConfig:
    """Parse an image config (Docker or OCI; they share this shape).

    Raises InvalidArgument for bad JSON, a missing ``rootfs`` or diff IDs that
    are not digests.
    """
    doc = _load_json(data, what, MAX_CONFIG_SIZE)
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, Mapping):
        raise errdefs.InvalidArgument(f"{what}: rootfs missing or not an object")
    rtype = rootfs.get("type", "")
    if rtype != "layers":
        raise errdefs.InvalidArgument(f"{what}: rootfs type must be 'layers', got {rtype!r}")
    raw_ids = rootfs.get("diff_ids") or []
    if not isinstance(raw_ids, list):
        raise errdefs.InvalidArgument(f"{what}: rootfs.diff_ids must be an array")
    diff_ids = []
    for i, value in enumerate(raw_ids):
        if not isinstance(value, str):
            raise errdefs.InvalidArgument(f"{what}: diff_id {i} is not a string")
        try:
            diff_ids.append(Digest.parse(value))
        except errdefs.InvalidArgument as exc:
            raise errdefs.InvalidArgument(f"{what}: diff_id {i}: {exc}") from None
    runtime = doc.get("config") or {}
    if not isinstance(runtime, dict):
        raise errdefs.InvalidArgument(f"{what}: config must be an object")
    for key in ("os", "architecture", "variant"):
        if not isinstance(doc.get(key, ""), str):
            raise errdefs.InvalidArgument(f"{what}: {key} must be a string")
    platform = normalize(
        Platform(
            os=doc.get("os", ""),
            architecture=doc.get("architecture", ""),
            variant=doc.get("variant", ""),
        )
    )
    return ImageConfig(platform, RootFS("layers", tuple(diff_ids)), runtime, doc)


def children(desc: ContentDescriptor, data: bytes) -> list[Descriptor]:
    """The descriptors a manifest or index references, in document order.

    Layers and configs have none; other types have none we know how to find.
    Raises InvalidArgument if ``data`` does not parse as ``desc.media_type``.
    """
    if mt.is_manifest(desc.media_type):
        return parse_manifest(data, desc.media_type, what=f"manifest {desc.digest}").children()
    if mt.is_index(desc.media_type):
        return parse_index(data, desc.media_type, what=f"index {desc.digest}").children()
    return []


def manifest_json(manifest: Manifest) -> bytes:
    """Serialise a manifest (sorted keys, compact) — for building new images."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": manifest.media_type,
        "config": manifest.config.to_json(),
        "layers": [layer.to_json() for layer in manifest.layers],
    }
    if manifest.annotations:
        doc["annotations"] = manifest.annotations
    if manifest.subject is not None:
        doc["subject"] = manifest.subject.to_json()
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def index_json(index: Index) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": index.media_type,
        "manifests": [m.to_json() for m in index.manifests],
    }
    if index.annotations:
        doc["annotations"] = index.annotations
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def descriptors_by_digest(descs: Sequence[Descriptor]) -> dict[Digest, Descriptor]:
    """First descriptor per digest, preserving order (blobs shared by layers)."""
    out: dict[Digest, Descriptor] = {}
    for d in descs:
        out.setdefault(d.digest, d)
    return out
