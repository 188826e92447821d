"""The image, content and transfer records of :mod:`berth.client.types`.

Private: import them from :mod:`berth.client.types`, which loads this module
the first time one of them is named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI descriptor: what a blob is, its digest and size."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Image:
    """An image record: a name pointing at a root descriptor (manifest or index)."""

    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PulledImage(Image):
    """What a pull returns: the image record, plus whether the daemon unpacked it.

    ``warnings`` are things that did not fail the pull but that the caller
    should know, such as "not unpacked: no unpacker loaded".
    """

    unpacked: bool = False
    snapshotter: str = ""
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LayerProgress:
    """The latest state of one layer while an image is unpacked.

    ``chain_id`` names the snapshot the layer becomes; ``digest`` and
    ``size`` are the layer blob's. ``status``: unpacking, unpacked (applied
    by this call) or exists (already unpacked, left alone).
    """

    chain_id: str
    digest: str
    media_type: str
    size: int
    status: str

    @property
    def finished(self) -> bool:
        return self.status in ("unpacked", "exists")


@dataclass(frozen=True, slots=True)
class UnpackedImage:
    """What unpacking an image did.

    ``chain_id`` is the top layer's (the parent of a container's snapshot;
    empty for an image without layers). ``unpacked`` is True when this call
    applied at least one layer, False when the image was already unpacked.
    ``manifest`` is the manifest chosen for the platform.
    """

    name: str
    snapshotter: str
    chain_id: str
    unpacked: bool
    manifest: Descriptor


@dataclass(frozen=True, slots=True)
class ContentInfo:
    """One blob the namespace has."""

    digest: str
    size: int
    created_at: datetime
    updated_at: datetime
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IngestStatus:
    """An ingest (a write in progress): ``offset`` of ``total`` bytes written."""

    ref: str
    offset: int
    total: int
    expected: str
    started_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """The latest state of one blob in a pull or push (or a layer being unpacked).

    ``key`` is the blob's ingest ref as ctr shows it (``layer-sha256:...``).
    ``status``: waiting, downloading, uploading, exists, mounted, done,
    unpacking or unpacked. ``offset`` of ``total`` bytes have moved.
    """

    key: str
    digest: str
    media_type: str
    status: str
    offset: int
    total: int

    @property
    def finished(self) -> bool:
        return self.status in ("exists", "mounted", "done", "unpacked")


@dataclass(frozen=True, slots=True)
class ImageDetails:
    """An image's documents as stored: ``index`` (None for a single manifest),
    the ``manifest`` chosen for the platform, and its ``config``, all parsed JSON.
    ``manifest_descriptor`` names the manifest that was chosen."""

    image: Image
    index: dict[str, object] | None
    manifest_descriptor: Descriptor
    manifest: dict[str, object]
    config: dict[str, object]


@dataclass(frozen=True, slots=True)
class ImageSummary:
    """What ``images ls`` shows besides the record: the size for the host
    platform (manifest, config and layers) and every platform the image has."""

    size: int
    platforms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BlobCheck:
    """One blob of an image (or of the store) checked by reading it back.

    ``status``: ``ok``; ``missing`` (not in the store); ``corrupt`` (its bytes
    hash to ``actual`` or their size differs).
    """

    digest: str
    size: int
    media_type: str
    status: str
    actual: str = ""


@dataclass(frozen=True, slots=True)
class ImageCheck:
    """The outcome of checking one image's content, as ``ctr images check``.

    ``required`` are the blobs the host platform needs; ``blobs`` says what was
    found for each. ``available`` is False when a missing manifest or index
    means the full list of required blobs cannot be known.
    """

    image: Image
    available: bool
    blobs: tuple[BlobCheck, ...]

    @property
    def required(self) -> tuple[BlobCheck, ...]:
        """The config and layers: what ``ctr images check`` counts (manifests
        and indexes are verified too, but not counted)."""
        return tuple(b for b in self.blobs if not _is_document(b.media_type))

    @property
    def present(self) -> tuple[BlobCheck, ...]:
        """The counted blobs that are present and intact."""
        return tuple(b for b in self.required if b.status == "ok")

    @property
    def complete(self) -> bool:
        return self.available and all(b.status == "ok" for b in self.blobs)

    @property
    def status(self) -> str:
        """``complete``, ``incomplete``, ``corrupt`` or ``unavailable`` (ctr's words plus corrupt)."""
        if any(b.status == "corrupt" for b in self.blobs):
            return "corrupt"
        if not self.available:
            return "unavailable"
        return "complete" if self.complete else "incomplete"


def _is_document(media_type: str) -> bool:
    return media_type.endswith(
        ("manifest.v1+json", "index.v1+json", "manifest.v2+json", "manifest.list.v2+json")
    )


# Public under berth.client.types (see there): repr, pickle and type hints name that home.
for _cls in (
    Descriptor,
    Image,
    PulledImage,
    LayerProgress,
    UnpackedImage,
    ContentInfo,
    IngestStatus,
    TransferProgress,
    ImageDetails,
    ImageSummary,
    BlobCheck,
    ImageCheck,
):
    _cls.__module__ = "berth.client.types"
del _cls
