"""Importing image archives: OCI image-layout tars and ``docker save`` tars.

Design notes
------------
The archive is read once, as a stream (a pipe or a socket works, nothing
seeks), so entries come in whatever order the writer chose: containerd's
exporter puts ``blobs/`` before ``index.json``, ``docker save`` writes
``manifest.json`` near the end. Every regular file is therefore written
into the content store as it passes, as containerd's importer does, and the
image structure is read afterwards from the store:

* a file under ``blobs/<alg>/<hex>`` is written with that digest as the
  expected one; its bytes are hashed on the way and a mismatch aborts the
  ingest and fails the import, so a wrong blob is never committed;
* ``oci-layout``, ``index.json`` and ``manifest.json`` are small documents
  kept in memory (refused above a size limit before a byte is buffered);
* any other file (a Docker archive's config and ``layer.tar`` files) is
  written under the digest of its bytes.

Then an OCI layout's ``index.json``, or an OCI index synthesised from
``manifest.json`` (one Docker schema 2 manifest per entry, serialised byte
for byte as containerd does, so both daemons derive the same digests), is
walked: image records are collected from the index annotations, the
platforms asked for are selected, GC reference labels are set from parents
to children, and every blob the selected images need must be present. Only
then does the caller get records to turn into images.

What a failed import leaves: blobs that were verified against their digest
and committed before the failure was noticed, held only by the caller's
lease (so the next garbage collection after the lease ends removes them),
and no image records. Hostile input (entries escaping the archive root,
hard links, device nodes, symbolic links other than Docker's in-archive
layer aliases, duplicate entries, wrong digests, oversized documents,
references to blobs the archive lacks) fails with InvalidArgument.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import posixpath
import secrets
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, cast

from berth import errdefs
from berth.core.archive import _gojson
from berth.core.archive.names import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    normalize_reference,
    oci_reference_name,
)
from berth.core.archive.store import ArchiveStore, leased, read_all
from berth.core.content import CANONICAL, Digest, Digester, Info, SupportsRead
from berth.core.images import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    MatchComparer,
    Platform,
    child_gc_labels,
    default,
    normalize,
    parse_index,
    parse_manifest,
)
from berth.core.images import (
    mediatypes as mt,
)
from berth.core.images.gclabels import UNCOMPRESSED_LABEL

#: Largest ``index.json`` / ``manifest.json`` accepted (4 MiB).
MAX_DOCUMENT_SIZE = 4 << 20
#: Largest ``oci-layout`` file accepted; the real one is 30 bytes.
MAX_LAYOUT_SIZE = 64 << 10
#: Largest image config read to find an image's platform.
MAX_CONFIG_SIZE = 16 << 20
#: The only image-layout version there is.
OCI_LAYOUT_VERSION = "1.0.0"

_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b\x08"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_NESTING_LIMIT = 8


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """An image an import found: create (or retarget) image ``name`` at ``target``."""

    name: str
    target: Descriptor


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportOptions:
    """How to name and select what an archive holds (``ctr images import`` flags).

    ``ref_translator`` maps an ``org.opencontainers.image.ref.name`` value to
    an image name ("" drops it); see :func:`~berth.core.archive.names.add_ref_prefix`
    and :func:`~berth.core.archive.names.filter_ref_prefix`. Without it the
    value is used as is. ``io.containerd.image.name`` is always used as is.
    ``digest_ref`` also names each index entry by digest (``--digests``),
    except named ones when ``skip_digest_for_named``. ``index_name`` keeps the
    archive's index itself as an image. ``platforms`` (default: the host and
    what it runs) selects which entries' content must be present and gets GC
    labels; ``all_platforms`` selects all. ``compress_blobs`` gzips
    uncompressed Docker layers (``--compress-blobs``).
    """

    ref_translator: Callable[[str], str] | None = None
    digest_ref: Callable[[Digest], str] | None = None
    skip_digest_for_named: bool = False
    index_name: str = ""
    platforms: MatchComparer | None = None
    all_platforms: bool = False
    compress_blobs: bool = False


@dataclass
class _DockerEntry:
    config: str
    repo_tags: list[str]
    layers: list[str]


@dataclass
class _Scan:
    """What one pass over the tar found."""

    layout_version: str | None = None
    index_json: bytes | None = None
    docker: list[_DockerEntry] | None = None
    blobs: dict[str, Descriptor] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)


def import_archive(
    reader: SupportsRead,
    store: ArchiveStore,
    *,
    lease: str | None = None,
    options: ImportOptions | None = None,
) -> list[ImageRecord]:
    """Read an OCI layout or Docker archive tar from ``reader`` into ``store``.

    Returns the images to create, in index order (then the digest names),
    with ``options.index_name`` first when set. Nothing is created here: the
    caller creates or updates the images (containerd updates the target of an
    existing image, else creates it) while still holding ``lease``.

    ``lease`` binds the store's writes to that lease (the store must offer
    ``with_lease``; the metadata and gRPC adapters do); pass None for a store
    without garbage collection, or one already bound. ``reader`` is read to
    the end of the archive and not closed; gzip-compressed tars are accepted.

    Raises:
        InvalidArgument: not a tar; an unsafe or malformed entry; a blob whose
            bytes do not match its name; an oversized or invalid document;
            an unsupported layout version; an unrecognised format; a blob the
            selected images need missing from both the archive and the store.
        NotFound: no index entry matched the platforms asked for.
        Unavailable: the store refused a write because an ingest is locked.
    """
    opts = options or ImportOptions()
    store = leased(store, lease)
    session = secrets.token_hex(6)
    scan = _scan(reader, store, session)
    index = _index_descriptor(scan, store, session, opts)
    return _collect(store, index, opts)


# --- reading the tar ---------------------------------------------------------------


def _scan(reader: SupportsRead, store: ArchiveStore, session: str) -> _Scan:
    scan = _Scan()
    seen: set[str] = set()
    try:
        tf = tarfile.open(fileobj=cast(IO[bytes], reader), mode="r|*")
    except tarfile.TarError as exc:
        raise errdefs.InvalidArgument(f"not a tar archive: {exc}") from None
    try:
        with tf:
            for member in tf:
                _entry(tf, member, scan, seen, store, session)
    except tarfile.TarError as exc:
        raise errdefs.InvalidArgument(f"malformed archive: {exc}") from None
    except EOFError as exc:
        raise errdefs.InvalidArgument(f"archive truncated: {exc}") from None
    return scan


def safe_name(raw: str) -> str:
    """The normalised name of an archive entry; InvalidArgument if it could
    point outside the archive (absolute, ``..``) or is empty."""
    if not raw or "\x00" in raw:
        raise errdefs.InvalidArgument(f"invalid entry name {raw!r} in archive")
    if raw.startswith("/"):
        raise errdefs.InvalidArgument(
            f"entry {raw!r}: absolute paths are not allowed in an archive"
        )
    if ".." in raw.split("/"):
        raise errdefs.InvalidArgument(f"entry {raw!r}: path escapes the archive root")
    return posixpath.normpath(raw)


def _entry(
    tf: tarfile.TarFile,
    member: tarfile.TarInfo,
    scan: _Scan,
    seen: set[str],
    store: ArchiveStore,
    session: str,
) -> None:
    name = safe_name(member.name)
    if member.isdir():
        return
    if member.islnk():
        raise errdefs.InvalidArgument(
            f"entry {member.name!r}: hard links are not allowed in an image archive"
        )
    if member.issym():
        scan.symlinks[name] = _symlink_target(name, member.linkname)
        return
    if not member.isreg():
        raise errdefs.InvalidArgument(
            f"entry {member.name!r}: unsupported entry type {member.type!r} in an image archive"
        )
    if name in seen:
        raise errdefs.InvalidArgument(f"entry {name!r} appears twice in the archive")
    seen.add(name)
    src = tf.extractfile(member)
    assert src is not None  # regular members always have data
    if name == "oci-layout":
        doc = _load_json(src, member.size, MAX_LAYOUT_SIZE, name)
        version = doc.get("imageLayoutVersion") if isinstance(doc, dict) else None
        if not isinstance(version, str) or not version:
            raise errdefs.InvalidArgument("oci-layout: imageLayoutVersion missing or not a string")
        scan.layout_version = version
    elif name == "index.json":
        scan.index_json = _read_small(src, member.size, MAX_DOCUMENT_SIZE, name)
    elif name == "manifest.json":
        scan.docker = _docker_manifest(_load_json(src, member.size, MAX_DOCUMENT_SIZE, name))
    elif name == "repositories":
        return  # docker's legacy name map; RepoTags in manifest.json supersede it
    else:
        expected = _blob_path_digest(name)
        ref = f"import-{session}-{name}"
        digest = ingest(store, ref, src, member.size, expected, what=f"entry {name!r}")
        scan.blobs[name] = Descriptor("", digest, member.size)


def _symlink_target(name: str, link: str) -> str:
    # docker save links a layer seen twice to its first copy
    # ("<id>/layer.tar -> ../<other>/layer.tar"). Such a link is only an alias
    # for another entry of the archive; nothing is ever followed on disk, but
    # a link pointing outside the archive is still hostile.
    if not link or link.startswith("/"):
        raise errdefs.InvalidArgument(
            f"entry {name!r}: symbolic link to {link!r} points outside the archive"
        )
    target = posixpath.normpath(posixpath.join(posixpath.dirname(name), link))
    if target == ".." or target.startswith("../"):
        raise errdefs.InvalidArgument(
            f"entry {name!r}: symbolic link to {link!r} points outside the archive"
        )
    return target


def _blob_path_digest(name: str) -> Digest | None:
    """The digest a ``blobs/<alg>/<hex>`` path promises; None for other paths."""
    parts = name.split("/")
    if parts[0] != "blobs":
        return None
    if len(parts) != 3:
        raise errdefs.InvalidArgument(f"entry {name!r}: expected blobs/<algorithm>/<hex>")
    try:
        return Digest.parse(f"{parts[1]}:{parts[2]}")
    except errdefs.InvalidArgument as exc:
        raise errdefs.InvalidArgument(f"entry {name!r}: not a blob path: {exc}") from None


def _read_small(src: IO[bytes], size: int, limit: int, what: str) -> bytes:
    if size > limit:
        raise errdefs.InvalidArgument(f"{what} is {size} bytes, over the {limit} byte limit")
    return src.read(size)


def _load_json(src: IO[bytes], size: int, limit: int, what: str) -> Any:
    data = _read_small(src, size, limit, what)
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errdefs.InvalidArgument(f"{what} is not valid JSON: {exc}") from None


def _docker_manifest(doc: Any) -> list[_DockerEntry]:
    if not isinstance(doc, list):
        raise errdefs.InvalidArgument("manifest.json must be a JSON array")
    out = []
    for i, item in enumerate(doc):
        if not isinstance(item, dict):
            raise errdefs.InvalidArgument(f"manifest.json entry {i} must be an object")
        config = item.get("Config")
        tags = item.get("RepoTags") or []
        layers = item.get("Layers") or []
        if not isinstance(config, str) or not config:
            raise errdefs.InvalidArgument(f"manifest.json entry {i}: Config must be a file name")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise errdefs.InvalidArgument(f"manifest.json entry {i}: RepoTags must be strings")
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise errdefs.InvalidArgument(f"manifest.json entry {i}: Layers must be file names")
        out.append(_DockerEntry(config, list(tags), list(layers)))
    return out


def ingest(
    store: ArchiveStore,
    ref: str,
    src: SupportsRead,
    size: int,
    expected: Digest | None,
    *,
    what: str,
) -> Digest:
    """Copy exactly ``size`` bytes of ``src`` into the store and return their digest.

    With ``expected``, the bytes must hash to it (checked before committing;
    on a mismatch the ingest is aborted and InvalidArgument raised). A blob
    already stored is not written again, but the source is still read and
    checked, so the outcome never depends on what the store held before.
    """
    algorithm = expected.algorithm if expected is not None else CANONICAL
    digester = Digester(algorithm)
    try:
        writer = store.open_writer(ref, total=size, expected=expected)
    except errdefs.AlreadyExists:
        _drain(src, size, digester, None, what)
        _check(digester.digest(), expected, what)
        assert expected is not None  # only an expected digest can already exist
        return expected
    committed = False
    try:
        with writer:
            _drain(src, size, digester, writer, what)
            actual = digester.digest()
            _check(actual, expected, what)
            try:
                writer.commit(size, actual)
            except errdefs.AlreadyExists:
                pass  # stored meanwhile, or (no expected digest) stored before
            committed = True
            return actual
    finally:
        if not committed:
            with contextlib.suppress(errdefs.NotFound, errdefs.FailedPrecondition):
                store.abort(ref)


def _drain(src: SupportsRead, size: int, digester: Digester, writer: Any | None, what: str) -> None:
    remaining = size
    while remaining > 0:
        chunk = src.read(min(_CHUNK, remaining))
        if not chunk:
            raise errdefs.InvalidArgument(
                f"{what}: archive ended after {size - remaining} of {size} bytes"
            )
        digester.update(chunk)
        if writer is not None:
            writer.write(chunk)
        remaining -= len(chunk)


def _check(actual: Digest, expected: Digest | None, what: str) -> None:
    if expected is not None and actual != expected:
        raise errdefs.InvalidArgument(
            f"{what}: content does not match its digest: got {actual}, want {expected}"
        )


# --- the index ---------------------------------------------------------------------------


def _index_descriptor(
    scan: _Scan, store: ArchiveStore, session: str, opts: ImportOptions
) -> Descriptor:
    """The archive's index, stored: index.json for OCI, synthesised for Docker."""
    if scan.layout_version is not None:
        if scan.layout_version != OCI_LAYOUT_VERSION:
            raise errdefs.InvalidArgument(f"unsupported OCI version {scan.layout_version}")
        if scan.index_json is None:
            raise errdefs.InvalidArgument(f"missing index.json in OCI layout {OCI_LAYOUT_VERSION}")
        declared = _declared_type(scan.index_json)
        media_type = declared if mt.is_index(declared) else mt.OCI_INDEX
        parse_index(scan.index_json, media_type, what="index.json")
        return _write_document(store, scan.index_json, media_type)
    if scan.docker is None:
        if scan.index_json is not None:
            raise errdefs.InvalidArgument(
                "index.json without oci-layout: unrecognized image format"
            )
        raise errdefs.InvalidArgument(
            "unrecognized image format: no oci-layout or manifest.json in the archive"
        )
    if not scan.docker:
        raise errdefs.InvalidArgument("manifest.json lists no images")
    for name, target in scan.symlinks.items():
        if target not in scan.blobs:
            raise errdefs.InvalidArgument(
                f"no target for symlink layer from {name!r} to {target!r}"
            )
        scan.blobs[name] = scan.blobs[target]
    manifests: list[dict[str, Any]] = []
    for entry in scan.docker:
        desc = _docker_image(entry, scan, store, session, opts)
        if not entry.repo_tags:
            manifests.append(_gojson.descriptor(desc))
        for tag in entry.repo_tags:
            normalized = normalize_reference(tag)
            annotations = {
                ANNOTATION_IMAGE_NAME: normalized,
                ANNOTATION_REF_NAME: oci_reference_name(normalized),
            }
            manifests.append(_gojson.descriptor(_with_annotations(desc, annotations)))
    index = _gojson.dumps({"schemaVersion": 2, "manifests": manifests})
    return _write_document(store, index, mt.OCI_INDEX)


def _declared_type(doc: bytes) -> str:
    try:
        value = json.loads(doc).get("mediaType", "")
    except (ValueError, AttributeError):
        return ""  # parse_index reports the real problem
    return value if isinstance(value, str) else ""


def _with_annotations(desc: Descriptor, annotations: dict[str, str]) -> Descriptor:
    return Descriptor(
        desc.media_type,
        desc.digest,
        desc.size,
        annotations,
        platform=desc.platform,
        urls=desc.urls,
        artifact_type=desc.artifact_type,
    )


def _write_document(store: ArchiveStore, data: bytes, media_type: str) -> Descriptor:
    digest = Digest.from_bytes(data)
    src = _BytesSource(data)
    ingest(store, f"manifest-{digest}", src, len(data), digest, what=f"{media_type} {digest}")
    return Descriptor(media_type, digest, len(data))


class _BytesSource:
    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def read(self, n: int = -1, /) -> bytes:
        end = len(self._view) if n < 0 else min(len(self._view), self._pos + n)
        out = bytes(self._view[self._pos : end])
        self._pos = end
        return out


def _docker_image(
    entry: _DockerEntry, scan: _Scan, store: ArchiveStore, session: str, opts: ImportOptions
) -> Descriptor:
    """Write the Docker schema 2 manifest for one manifest.json entry."""
    found = scan.blobs.get(safe_name(entry.config))
    if found is None:
        raise errdefs.InvalidArgument(f"image config {entry.config!r} not found in the archive")
    config = Descriptor(mt.DOCKER_CONFIG, found.digest, found.size)
    layers = _resolve_layers(entry.layers, scan, store, session, opts)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": _gojson.descriptor(config),
        "layers": [_gojson.descriptor(layer) for layer in layers],
    }
    desc = _write_document(store, _gojson.dumps(manifest), mt.DOCKER_MANIFEST)
    return Descriptor(
        desc.media_type, desc.digest, desc.size, platform=_config_platform(store, config)
    )


def _config_platform(store: ArchiveStore, config: Descriptor) -> Platform:
    # containerd takes only OS and architecture from the config here (not the
    # variant), normalised; an index entry carries that as its platform.
    data = read_all(store, config.digest, MAX_CONFIG_SIZE, "image config")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errdefs.InvalidArgument(f"image config {config.digest} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise errdefs.InvalidArgument(f"image config {config.digest} must be a JSON object")
    os_name, arch = doc.get("os", ""), doc.get("architecture", "")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        raise errdefs.InvalidArgument(f"image config {config.digest}: os/architecture not strings")
    p = normalize(Platform(os=os_name, architecture=arch))
    if not os_name:
        # berth's normalize reads an empty OS as linux; containerd keeps it empty.
        p = Platform(os="", architecture=p.architecture, variant=p.variant)
    return p


def _resolve_layers(
    files: list[str], scan: _Scan, store: ArchiveStore, session: str, opts: ImportOptions
) -> list[Descriptor]:
    layers: list[Descriptor] = []
    for f in files:
        found = scan.blobs.get(safe_name(f))
        if found is None:
            raise errdefs.InvalidArgument(f"layer {f!r} not found in the archive")
        layers.append(found)
    # A compressed copy made by an earlier --compress-blobs import is reused,
    # as containerd does: found through its uncompressed label.
    wanted = {str(layer.digest) for layer in layers}
    replaced: dict[str, Descriptor] = {}

    def substitute(info: Info) -> None:
        media_type = _sniff_layer_type(store, info.digest)
        replaced[info.labels[UNCOMPRESSED_LABEL]] = Descriptor(media_type, info.digest, info.size)

    if wanted:
        store.walk(substitute, lambda info: info.labels.get(UNCOMPRESSED_LABEL, "") in wanted)
    out = []
    for layer in layers:
        if str(layer.digest) in replaced:
            out.append(replaced[str(layer.digest)])
            continue
        media_type = _sniff_layer_type(store, layer.digest)
        if media_type == mt.DOCKER_LAYER and opts.compress_blobs:
            out.append(_compress(store, layer, session))
        else:
            out.append(Descriptor(media_type, layer.digest, layer.size))
    return out


def _sniff_layer_type(store: ArchiveStore, digest: Digest) -> str:
    with store.reader_at(digest) as ra:
        head = ra.read_at(0, 10)
    if head.startswith(_GZIP_MAGIC):
        return mt.DOCKER_LAYER_GZIP
    if head.startswith(_ZSTD_MAGIC):
        # containerd labels any compressed layer gzip; naming zstd truthfully
        # keeps the image unpackable by both daemons.
        return mt.OCI_LAYER_ZSTD
    return mt.DOCKER_LAYER


class _WriterSink:
    """File-like front of a writer for gzip, hashing what passes."""

    def __init__(self, writer: Any, digester: Digester) -> None:
        self._writer = writer
        self._digester = digester
        self.size = 0

    def write(self, data: bytes) -> int:
        self._writer.write(data)
        self._digester.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _compress(store: ArchiveStore, layer: Descriptor, session: str) -> Descriptor:
    """gzip an uncompressed layer into a new blob labelled with its origin."""
    ref = f"compress-{session}-{layer.digest.algorithm.value}-{layer.digest.hex}"
    digester = Digester()
    committed = False
    try:
        with store.open_writer(ref) as writer:
            sink = _WriterSink(writer, digester)
            # mtime 0 and no name: the same input always gives the same blob.
            with gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0) as gz:  # type: ignore[arg-type]
                with store.reader_at(layer.digest) as ra:
                    for chunk in ra.iter_chunks():
                        gz.write(chunk)
            digest = digester.digest()
            try:
                writer.commit(sink.size, digest, {UNCOMPRESSED_LABEL: str(layer.digest)})
            except errdefs.AlreadyExists:
                pass
            committed = True
    finally:
        if not committed:
            with contextlib.suppress(errdefs.NotFound, errdefs.FailedPrecondition):
                store.abort(ref)
    return Descriptor(mt.DOCKER_LAYER_GZIP, digest, sink.size)


# --- walking: names, platforms, GC labels, completeness -------------------------------------


def _collect(store: ArchiveStore, index: Descriptor, opts: ImportOptions) -> list[ImageRecord]:
    records: list[ImageRecord] = []
    if opts.index_name:
        records.append(ImageRecord(opts.index_name, index))
    matcher: MatchComparer | None = None if opts.all_platforms else (opts.platforms or default())
    any_children = False
    visited: set[Digest] = set()

    def filtered(descs: list[Descriptor]) -> list[Descriptor]:
        if matcher is None:
            return descs
        return [d for d in descs if d.platform is None or matcher.match(d.platform)]

    def visit(desc: Descriptor, depth: int, parent: Descriptor | None) -> None:
        nonlocal any_children
        if depth > _NESTING_LIMIT:
            raise errdefs.InvalidArgument(f"index nesting too deep at {desc.digest}")
        _require(store, desc, parent)
        if desc.digest in visited:
            return
        visited.add(desc.digest)
        if desc.digest == index.digest and depth == 0:
            idx = parse_index(_document(store, desc), desc.media_type, what="archive index")
            kids = list(idx.manifests)
            records.extend(_names(kids, opts))
            kids = filtered(kids)
        elif mt.is_index(desc.media_type):
            kids = filtered(
                list(
                    parse_index(
                        _document(store, desc), desc.media_type, what=f"index {desc.digest}"
                    ).manifests
                )
            )
        elif mt.is_manifest(desc.media_type):
            kids = parse_manifest(
                _document(store, desc), desc.media_type, what=f"manifest {desc.digest}"
            ).children()
        else:
            kids = []
        if not kids:
            return
        any_children = True
        labels = child_gc_labels(kids)
        info = store.info(desc.digest)
        store.update(
            Info(info.digest, info.size, info.created_at, info.updated_at, labels),
            [f"labels.{k}" for k in labels],
        )
        for kid in kids:
            visit(kid, depth + 1, desc)

    visit(index, 0, None)
    if not any_children:
        raise errdefs.NotFound("image might be filtered out: no content in the archive matches")
    return records


def _names(entries: list[Descriptor], opts: ImportOptions) -> list[ImageRecord]:
    out = []
    for m in entries:
        name = m.annotations.get(ANNOTATION_IMAGE_NAME, "")
        if not name:
            name = m.annotations.get(ANNOTATION_REF_NAME, "")
            if name and opts.ref_translator is not None:
                name = opts.ref_translator(name)
        if name:
            out.append(ImageRecord(name, m))
        if opts.skip_digest_for_named and name:
            continue
        if opts.digest_ref is not None:
            ref = opts.digest_ref(m.digest)
            if ref:
                out.append(ImageRecord(ref, m))
    return out


def _document(store: ArchiveStore, desc: Descriptor) -> bytes:
    return read_all(store, desc.digest, MAX_MANIFEST_SIZE, desc.media_type or "document")


def _require(store: ArchiveStore, desc: Descriptor, parent: Descriptor | None) -> None:
    """Fail unless ``desc`` is stored (non-distributable layers may be absent)."""
    try:
        info = store.info(desc.digest)
    except errdefs.NotFound:
        if mt.is_layer(desc.media_type) and mt.is_non_distributable(desc.media_type):
            return
        where = f" referenced by {parent.digest}" if parent is not None else ""
        raise errdefs.InvalidArgument(
            f"archive is missing blob {desc.digest} ({desc.media_type or 'unknown type'}){where}"
        ) from None
    if desc.size and info.size != desc.size:
        raise errdefs.InvalidArgument(
            f"blob {desc.digest} is {info.size} bytes, but its descriptor says {desc.size}"
        )
