"""Exporting images as an OCI image-layout tar, with Docker's ``manifest.json`` too.

The archive matches what ``ctr images export`` writes, entry for entry:
``oci-layout``; ``index.json`` listing each exported image's target with the
``io.containerd.image.name`` and ``org.opencontainers.image.ref.name``
annotations; every blob the selected platforms need under
``blobs/<alg>/<hex>``; and, unless disabled, a ``manifest.json`` in
``docker save`` form (one entry per single-platform manifest, with familiar
``RepoTags``) so ``docker load`` accepts the file too. Entries are sorted by
name and written once each, with containerd's modes.

Everything that can fail is checked before the first byte is written: the
targets' types, the documents, and that every blob is in the store (a
missing non-distributable layer is left out, as it cannot be shared
anyway). Blob bytes are verified against their digests while they stream.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Protocol, cast

from berth import errdefs
from berth.core.archive import _gojson
from berth.core.archive.importer import ImageRecord
from berth.core.archive.names import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    familiarize_reference,
    oci_reference_name,
)
from berth.core.archive.store import ArchiveStore, read_all
from berth.core.content import Digest, Digester
from berth.core.images import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    MatchComparer,
    default_spec,
    only_strict,
    parse_index,
    parse_manifest,
)
from berth.core.images import (
    mediatypes as mt,
)
from berth.core.images.platforms import sort_by_preference

_OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
_CHUNK = 1 << 20


class SupportsWrite(Protocol):
    """A binary sink: a file, a pipe, a socket file."""

    def write(self, data: bytes, /) -> int | None: ...


@dataclass
class _Entry:
    name: str
    mode: int
    data: bytes | None = None
    blob: Descriptor | None = None
    directory: bool = False

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        return self.blob.size if self.blob is not None else 0


@dataclass
class _DockerImage:
    manifest: Descriptor
    names: list[str] = field(default_factory=list)


def export_archive(
    writer: SupportsWrite,
    store: ArchiveStore,
    images: Sequence[ImageRecord],
    *,
    platforms: MatchComparer | None = None,
    all_platforms: bool = False,
    docker_manifest: bool = True,
    skip_non_distributable: bool = False,
) -> None:
    """Write ``images`` from ``store`` to ``writer`` as an OCI layout tar.

    Each record's ``target`` must be a manifest or an index; a record with
    an empty ``name`` is exported unnamed. ``platforms`` chooses which index
    entries go in (default: exactly the host platform, as ``ctr images
    export`` does) and which one the Docker ``manifest.json`` points at;
    ``all_platforms`` adds the content of every entry (``index.json`` still
    lists the original targets). ``docker_manifest`` False leaves
    ``manifest.json`` out. ``skip_non_distributable`` leaves out layers that
    registries must not receive; such a layer is also left out, silently,
    when the store does not have it. ``writer`` is not closed.

    Raises:
        InvalidArgument: a target is neither a manifest nor an index, or a
            name cannot be written as a Docker RepoTag.
        NotFound: content is missing from the store, or no index entry
            matches ``platforms`` (when a Docker manifest is wanted).
        FailedPrecondition: a stored blob does not match its digest.
    """
    matcher = platforms if platforms is not None else only_strict(default_spec())
    targets = [_named(r) for r in images]
    entries: list[_Entry] = [
        _Entry("oci-layout", 0o444, data=_OCI_LAYOUT),
        _Entry(
            "index.json",
            0o644,
            data=_gojson.dumps(
                {"schemaVersion": 2, "manifests": [_gojson.descriptor(t) for t in targets]}
            ),
        ),
    ]
    docker: dict[Digest, _DockerImage] = {}
    resolved: dict[Digest, Digest | None] = {}
    algorithms: set[str] = set()

    def blobs_of(desc: Descriptor) -> None:
        for d in _walk(store, desc):
            if skip_non_distributable and mt.is_non_distributable(d.media_type):
                continue
            entries.append(_Entry(_blob_path(d.digest), 0o444, blob=d))
            algorithms.add(d.digest.algorithm.value)

    for desc in targets:
        name = desc.annotations.get(ANNOTATION_IMAGE_NAME, "")
        if mt.is_manifest(desc.media_type):
            image = docker.get(desc.digest)
            if image is None:
                blobs_of(desc)
                image = docker[desc.digest] = _DockerImage(desc)
            if name and docker_manifest:
                image.names.append(name)
        elif mt.is_index(desc.media_type):
            if desc.digest not in resolved:
                resolved[desc.digest] = _export_index(
                    store, desc, matcher, all_platforms, docker_manifest, docker, entries, blobs_of
                )
            chosen = resolved[desc.digest]
            if chosen is not None and name:
                docker[chosen].names.append(name)
        else:
            raise errdefs.InvalidArgument(
                f"only manifests may be exported: {desc.digest} is {desc.media_type or 'untyped'}"
            )

    if docker and docker_manifest:
        entries.append(_Entry("manifest.json", 0o644, data=_docker_manifest_json(store, docker)))
    if algorithms:
        entries.append(_Entry("blobs/", 0o755, directory=True))
        entries.extend(_Entry(f"blobs/{a}/", 0o755, directory=True) for a in algorithms)

    records = _dedupe(entries)
    records = [e for e in records if e.blob is None or _present(store, e.blob)]
    _write_tar(writer, store, records)


def _named(record: ImageRecord) -> Descriptor:
    t = record.target
    if not record.name:
        return t
    annotations = dict(t.annotations)
    annotations[ANNOTATION_IMAGE_NAME] = record.name
    annotations[ANNOTATION_REF_NAME] = oci_reference_name(record.name)
    return Descriptor(
        t.media_type,
        t.digest,
        t.size,
        annotations,
        platform=t.platform,
        urls=t.urls,
        artifact_type=t.artifact_type,
    )


def _export_index(
    store: ArchiveStore,
    desc: Descriptor,
    matcher: MatchComparer,
    all_platforms: bool,
    docker_manifest: bool,
    docker: dict[Digest, _DockerImage],
    entries: list[_Entry],
    add: Callable[[Descriptor], None],
) -> Digest | None:
    """Add an index and its selected entries; return the manifest Docker's
    ``manifest.json`` should name for it (the best platform match)."""
    entries.append(_Entry(_blob_path(desc.digest), 0o444, blob=desc))
    index = parse_index(_document(store, desc), desc.media_type, what=f"index {desc.digest}")
    matching: list[Descriptor] = []
    for m in index.manifests:
        if m.platform is None or matcher.match(m.platform):
            matching.append(m)
        elif not all_platforms:
            continue
        add(m)
    if not docker_manifest:
        return None
    if not matching:
        raise errdefs.NotFound(f"no manifest found for platform in index {desc.digest}")
    best = sort_by_preference(matching, lambda d: d.platform, matcher)[0]
    docker.setdefault(best.digest, _DockerImage(best))
    return best.digest


def _walk(store: ArchiveStore, root: Descriptor) -> list[Descriptor]:
    """``root`` and everything below it (manifests: config and layers; indexes: all entries)."""
    out: list[Descriptor] = []

    def go(desc: Descriptor, depth: int) -> None:
        if depth > 8:
            raise errdefs.InvalidArgument(f"index nesting too deep at {desc.digest}")
        out.append(desc)
        if mt.is_manifest(desc.media_type):
            kids = parse_manifest(
                _document(store, desc), desc.media_type, what=f"manifest {desc.digest}"
            ).children()
        elif mt.is_index(desc.media_type):
            kids = list(
                parse_index(
                    _document(store, desc), desc.media_type, what=f"index {desc.digest}"
                ).manifests
            )
        else:
            kids = []
        for kid in kids:
            go(kid, depth + 1)

    go(root, 0)
    return out


def _document(store: ArchiveStore, desc: Descriptor) -> bytes:
    try:
        return read_all(store, desc.digest, MAX_MANIFEST_SIZE, desc.media_type)
    except errdefs.NotFound:
        raise errdefs.NotFound(
            f"content {desc.digest} ({desc.media_type}) is not in the store"
        ) from None


def _blob_path(d: Digest) -> str:
    return f"blobs/{d.algorithm.value}/{d.hex}"


def _docker_manifest_json(store: ArchiveStore, docker: dict[Digest, _DockerImage]) -> bytes:
    items = []
    for image in docker.values():
        m = parse_manifest(
            _document(store, image.manifest),
            image.manifest.media_type,
            what=f"manifest {image.manifest.digest}",
        )
        tags = [familiarize_reference(n) for n in image.names]
        items.append(
            {
                "Config": _blob_path(m.config.digest),
                # Go writes a nil slice as null; docker load accepts both.
                "RepoTags": tags or None,
                "Layers": [_blob_path(layer.digest) for layer in m.layers] or None,
            }
        )
    return _gojson.dumps(items)


def _dedupe(entries: list[_Entry]) -> list[_Entry]:
    out: list[_Entry] = []
    seen: set[str] = set()
    for e in sorted(entries, key=lambda e: e.name):
        if e.name in seen:
            continue
        seen.add(e.name)
        out.append(e)
    return out


def _present(store: ArchiveStore, desc: Descriptor) -> bool:
    """Whether to write ``desc``: stored, or else a non-distributable layer to leave out."""
    try:
        info = store.info(desc.digest)
    except errdefs.NotFound:
        if mt.is_non_distributable(desc.media_type):
            return False
        raise errdefs.NotFound(
            f"content {desc.digest} ({desc.media_type}) is not in the store; "
            "was the image pulled for this platform only? (use platforms or all_platforms)"
        ) from None
    if info.size != desc.size:
        raise errdefs.FailedPrecondition(
            f"content {desc.digest} is {info.size} bytes in the store, {desc.size} in its descriptor"
        )
    return True


class _VerifyingReader(io.RawIOBase):
    """Reads a stored blob sequentially, hashing it, for ``tarfile.addfile``."""

    def __init__(self, store: ArchiveStore, desc: Descriptor) -> None:
        self._ra = store.reader_at(desc.digest)
        self._pos = 0
        self.digester = Digester(desc.digest.algorithm)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1, /) -> bytes:
        if n < 0:
            n = self._ra.size - self._pos
        data = self._ra.read_at(self._pos, min(n, _CHUNK)) if n else b""
        self._pos += len(data)
        self.digester.update(data)
        return data

    def close(self) -> None:
        self._ra.close()
        super().close()


def _write_tar(writer: SupportsWrite, store: ArchiveStore, entries: list[_Entry]) -> None:
    with tarfile.open(fileobj=cast(IO[bytes], writer), mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name.rstrip("/") if e.directory else e.name)
            ti.mode = e.mode
            ti.mtime = 0
            if e.directory:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
                continue
            ti.size = e.size
            if e.data is not None:
                tf.addfile(ti, io.BytesIO(e.data))
                continue
            assert e.blob is not None
            src = _VerifyingReader(store, e.blob)
            try:
                tf.addfile(ti, src)
            except OSError as exc:
                raise errdefs.FailedPrecondition(
                    f"content {e.blob.digest} ended early while exporting: {exc}"
                ) from None
            finally:
                src.close()
            actual = src.digester.digest()
            if actual != e.blob.digest:
                raise errdefs.FailedPrecondition(
                    f"content {e.blob.digest} does not match its digest (read {actual})"
                )
