"""Offline, deterministic OCI / Docker image builder for tests and the demo.

Everything is made from the host's ``/bin/busybox`` (Debian ``busybox-static``)
without network access, and byte-for-byte reproducibly: tar entries are
sorted, owned by 0:0 unless asked otherwise, carry one fixed mtime and no user
or group names, gzip streams have no timestamp or file name, and JSON is
serialised with sorted keys. Two builds with the same inputs (and the same
compressor libraries) therefore give the same digests.

Main entry points::

    img = build_busybox_image()                        # Image (OCI, gzip)
    img = build_layered_image(extra_layers=[LayerSpec([...]), ...])
    idx = build_index([img, other])                    # or build_multiplatform_index()
    digest = push(img, "127.0.0.1:5000", "busybox", "latest")
    write_oci_layout(Path("out.tar"), img, image_name="docker.io/library/busybox:latest")
    write_docker_archive(Path("save.tar"), img, repo_tags=["busybox:latest"])

Layer contents are described with :class:`LayerSpec` entries (:class:`File`,
:class:`Dir`, :class:`Symlink`, :class:`Hardlink`, :class:`Whiteout`,
:class:`OpaqueDir`, :class:`Fifo`, :class:`Device`); :func:`flatten_layers`
is a pure-Python model of how a stack of them unpacks, usable as the expected
value in snapshot tests.

Run ``python -m tests.support.imagebuilder --help`` (or
``scripts/build-test-image --help``) for the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import hashlib
import io
import json
import platform as _platform
import posixpath
import ssl
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

__all__ = [
    "BUSYBOX_PATH",
    "DEFAULT_ENV",
    "FIXED_MTIME",
    "Blob",
    "Compression",
    "Device",
    "Dir",
    "Entry",
    "Fifo",
    "File",
    "Format",
    "Hardlink",
    "Image",
    "ImageConfig",
    "Index",
    "Layer",
    "LayerSpec",
    "MediaType",
    "OpaqueDir",
    "Platform",
    "Symlink",
    "Target",
    "Verify",
    "Whiteout",
    "build_busybox_image",
    "build_image",
    "build_index",
    "build_layer",
    "build_layered_image",
    "build_multiplatform_index",
    "busybox_rootfs_spec",
    "flatten_layers",
    "host_platform",
    "layer_tar",
    "marker_layer_spec",
    "push",
    "push_blob",
    "push_manifest",
    "sample_layer_specs",
    "sha256_digest",
    "write_docker_archive",
    "write_oci_layout",
]

BUSYBOX_PATH = Path("/bin/busybox")
# 2023-11-14T22:13:20Z; any constant works, a non-zero one avoids tools that
# treat mtime 0 as "unset".
FIXED_MTIME = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


class MediaType:
    """Media type strings used by OCI and Docker schema 2 images."""

    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


Format: TypeAlias = Literal["oci", "docker"]


class Compression(enum.StrEnum):
    GZIP = "gzip"
    ZSTD = "zstd"
    NONE = "none"


_LAYER_MEDIA_TYPES: dict[tuple[str, Compression], str] = {
    ("oci", Compression.GZIP): MediaType.OCI_LAYER_GZIP,
    ("oci", Compression.ZSTD): MediaType.OCI_LAYER_ZSTD,
    ("oci", Compression.NONE): MediaType.OCI_LAYER,
    ("docker", Compression.GZIP): MediaType.DOCKER_LAYER_GZIP,
    ("docker", Compression.NONE): MediaType.DOCKER_LAYER,
}


def _layer_media_type(fmt: Format, compression: Compression) -> str:
    try:
        return _LAYER_MEDIA_TYPES[(fmt, compression)]
    except KeyError:
        # Docker schema 2 has no zstd layer type (containerd 1.6 and skopeo
        # reject the unofficial ...diff.tar.zstd); zstd needs OCI manifests.
        raise ValueError(f"{fmt} images cannot have {compression} layers") from None


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# --------------------------------------------------------------------------
# Platforms
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]`` (e.g. ``linux/arm64/v8``)."""
        parts = text.split("/")
        if len(parts) not in (2, 3):
            raise ValueError(f"bad platform {text!r}; want os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


_GOARCH = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


def host_platform() -> Platform:
    """The host as an OCI platform (Go GOARCH naming, like containerd's default)."""
    machine = _platform.machine().lower()
    arch, variant = _GOARCH.get(machine, (machine, None))
    return Platform("linux", arch, variant)


# --------------------------------------------------------------------------
# Layer content description
# --------------------------------------------------------------------------


def _norm(path: str) -> str:
    """Normalise to the relative, slash-separated form used inside layer tars."""
    clean = posixpath.normpath("/" + path.strip()).lstrip("/")
    if not clean or clean == ".":
        raise ValueError(f"invalid layer path {path!r}")
    return clean


@dataclass(frozen=True)
class File:
    path: str
    content: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Hardlink:
    """A hard link to *target*, a path earlier in the same layer."""

    path: str
    target: str


@dataclass(frozen=True)
class Fifo:
    path: str
    mode: int = 0o644


@dataclass(frozen=True)
class Device:
    path: str
    kind: Literal["char", "block"] = "char"
    major: int = 1
    minor: int = 3
    mode: int = 0o666


@dataclass(frozen=True)
class Whiteout:
    """Deletes *path* from lower layers (written as ``dir/.wh.name``)."""

    path: str


@dataclass(frozen=True)
class OpaqueDir:
    """Makes directory *path* opaque: lower layers' contents of it are hidden.

    Written as the directory entry plus ``path/.wh..wh..opq``; add entries
    for the new contents separately.
    """

    path: str
    mode: int = 0o755


Entry: TypeAlias = File | Dir | Symlink | Hardlink | Fifo | Device | Whiteout | OpaqueDir


@dataclass(frozen=True)
class LayerSpec:
    """The contents of one layer.

    ``implicit_parents`` adds 0755 root-owned directory entries for parents
    not listed explicitly, as ``docker build`` does; turn it off to produce
    layers that rely on lower layers for their directories.
    """

    entries: Sequence[Entry]
    created_by: str = ""
    implicit_parents: bool = True


def _xattr_pax(xattrs: Mapping[str, bytes]) -> dict[str, str]:
    # tarfile writes PAX values as UTF-8 and switches the record to binary
    # (hdrcharset=BINARY) when surrogate escapes appear, so arbitrary bytes
    # round-trip.
    return {
        f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in sorted(xattrs.items())
    }


def _tarinfo(path: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = FIXED_MTIME
    return info


def _members(spec: LayerSpec) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Turn a spec into sorted tar members (hard links after everything else)."""
    regular: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    links: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    explicit_dirs: set[str] = set()

    def put(info: tarfile.TarInfo, data: bytes | None = None) -> None:
        target = links if info.type == tarfile.LNKTYPE else regular
        if info.name in regular or info.name in links:
            raise ValueError(f"duplicate entry {info.name!r} in layer spec")
        target[info.name] = (info, data)

    for entry in spec.entries:
        path = _norm(entry.path)
        if isinstance(entry, File):
            info = _tarinfo(path, tarfile.REGTYPE, entry.mode, entry.uid, entry.gid)
            info.size = len(entry.content)
            info.pax_headers = _xattr_pax(entry.xattrs)
            put(info, entry.content)
        elif isinstance(entry, Dir):
            info = _tarinfo(path, tarfile.DIRTYPE, entry.mode, entry.uid, entry.gid)
            info.pax_headers = _xattr_pax(entry.xattrs)
            put(info)
            explicit_dirs.add(path)
        elif isinstance(entry, Symlink):
            info = _tarinfo(path, tarfile.SYMTYPE, 0o777, entry.uid, entry.gid)
            info.linkname = entry.target
            put(info)
        elif isinstance(entry, Hardlink):
            info = _tarinfo(path, tarfile.LNKTYPE, 0o644)
            info.linkname = _norm(entry.target)
            put(info)
        elif isinstance(entry, Fifo):
            put(_tarinfo(path, tarfile.FIFOTYPE, entry.mode))
        elif isinstance(entry, Device):
            kind = tarfile.CHRTYPE if entry.kind == "char" else tarfile.BLKTYPE
            info = _tarinfo(path, kind, entry.mode)
            info.devmajor, info.devminor = entry.major, entry.minor
            put(info)
        elif isinstance(entry, Whiteout):
            parent, name = posixpath.split(path)
            wh = posixpath.join(parent, WHITEOUT_PREFIX + name)
            put(_tarinfo(wh, tarfile.REGTYPE, 0o644))
        elif isinstance(entry, OpaqueDir):
            if path not in regular:
                put(_tarinfo(path, tarfile.DIRTYPE, entry.mode))
                explicit_dirs.add(path)
            put(_tarinfo(posixpath.join(path, OPAQUE_MARKER), tarfile.REGTYPE, 0o644))
        else:  # pragma: no cover - guarded by the Entry union
            raise TypeError(f"unknown layer entry {entry!r}")

    if spec.implicit_parents:
        for name in list(regular) + list(links):
            parent = posixpath.dirname(name)
            while parent and parent not in regular:
                regular[parent] = (_tarinfo(parent, tarfile.DIRTYPE, 0o755), None)
                parent = posixpath.dirname(parent)

    for name, (info, _) in links.items():
        if info.linkname not in regular and info.linkname not in links:
            # Allowed (links into lower layers are tolerated by some unpackers)
            # but almost always a mistake in a test spec.
            raise ValueError(f"hard link {name!r} -> {info.linkname!r}: target not in layer")
    # Sorting by path puts every directory before its children ('a' < 'a/x');
    # hard links go last so their targets are already extracted.
    return [regular[k] for k in sorted(regular)] + [links[k] for k in sorted(links)]


def layer_tar(spec: LayerSpec) -> bytes:
    """The uncompressed, deterministic tar stream for *spec*."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in _members(spec):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


# --------------------------------------------------------------------------
# Blobs, layers, images
# --------------------------------------------------------------------------


def _compress(data: bytes, compression: Compression) -> bytes:
    if compression is Compression.NONE:
        return data
    if compression is Compression.ZSTD:
        import zstandard

        # Single-threaded with a fixed level so the frame is reproducible.
        return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(data)
    # wbits=31 makes a gzip member with mtime 0 and no file name, unlike the
    # gzip module, which stamps the current time.
    try:
        from isal import isal_zlib
    except ImportError:
        zobj = zlib.compressobj(6, zlib.DEFLATED, 31)
        return zobj.compress(data) + zobj.flush()
    iobj = isal_zlib.compressobj(2, isal_zlib.DEFLATED, 31)
    return bytes(iobj.compress(data) + iobj.flush())


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Layer(Blob):
    """A layer blob plus its uncompressed tar (``tar``) and ``diff_id``."""

    tar: bytes = field(default=b"", repr=False)
    compression: Compression = Compression.GZIP
    created_by: str = ""

    @property
    def diff_id(self) -> str:
        return sha256_digest(self.tar)


def build_layer(
    spec: LayerSpec, compression: Compression = Compression.GZIP, fmt: Format = "oci"
) -> Layer:
    tar = layer_tar(spec)
    return Layer(
        media_type=_layer_media_type(fmt, compression),
        data=_compress(tar, compression),
        tar=tar,
        compression=compression,
        created_by=spec.created_by,
    )


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part (``config``) of an image config."""

    env: Sequence[str] = DEFAULT_ENV
    cmd: Sequence[str] | None = ("sh",)
    entrypoint: Sequence[str] | None = None
    working_dir: str = "/"
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    exposed_ports: Sequence[str] = ()
    volumes: Sequence[str] = ()
    stop_signal: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Env": list(self.env)}
        if self.cmd is not None:
            out["Cmd"] = list(self.cmd)
        if self.entrypoint is not None:
            out["Entrypoint"] = list(self.entrypoint)
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.user:
            out["User"] = self.user
        if self.labels:
            out["Labels"] = dict(self.labels)
        if self.exposed_ports:
            out["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.volumes:
            out["Volumes"] = {v: {} for v in self.volumes}
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        return out


@dataclass(frozen=True)
class Image:
    """A single-platform image: manifest, config and layer blobs."""

    manifest: bytes = field(repr=False)
    manifest_media_type: str
    config: bytes = field(repr=False)
    config_media_type: str
    layers: tuple[Layer, ...]
    platform: Platform

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    @property
    def chain_id(self) -> str:
        """The OCI ChainID of the layer stack (what snapshotters key on)."""
        chain = ""
        for diff_id in self.diff_ids:
            chain = diff_id if not chain else sha256_digest(f"{chain} {diff_id}".encode())
        return chain

    @property
    def format(self) -> Format:
        return "docker" if self.manifest_media_type == MediaType.DOCKER_MANIFEST else "oci"

    @property
    def manifest_json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.manifest)
        return result

    @property
    def config_json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.config)
        return result

    def descriptor(self, *, with_platform: bool = True, **extra: Any) -> dict[str, Any]:
        desc: dict[str, Any] = {
            "mediaType": self.manifest_media_type,
            "digest": self.digest,
            "size": len(self.manifest),
        }
        if with_platform:
            desc["platform"] = self.platform.to_json()
        desc.update(extra)
        return desc

    def blobs(self) -> dict[str, bytes]:
        """Every blob by digest, manifest included."""
        out = {self.config_digest: self.config, self.digest: self.manifest}
        for layer in self.layers:
            out[layer.digest] = layer.data
        return out


@dataclass(frozen=True)
class Index:
    """An OCI image index or Docker manifest list over several images."""

    manifest: bytes = field(repr=False)
    media_type: str
    images: tuple[Image, ...]

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def manifest_media_type(self) -> str:
        return self.media_type

    @property
    def manifest_json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.manifest)
        return result

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.manifest),
            **extra,
        }

    def image_for(self, platform: Platform) -> Image:
        for image in self.images:
            if image.platform == platform:
                return image
        raise KeyError(str(platform))

    def blobs(self) -> dict[str, bytes]:
        out = {self.digest: self.manifest}
        for image in self.images:
            out.update(image.blobs())
        return out


Target: TypeAlias = Image | Index
Verify: TypeAlias = bool | str | ssl.SSLContext


def build_image(
    layers: Sequence[LayerSpec | Layer],
    *,
    compression: Compression = Compression.GZIP,
    fmt: Format = "oci",
    platform: Platform | None = None,
    config: ImageConfig | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Image:
    """Assemble an image from layer specs (built with *compression*) or prebuilt layers."""
    platform = platform or host_platform()
    config = config or ImageConfig()
    built = tuple(
        item if isinstance(item, Layer) else build_layer(item, compression, fmt) for item in layers
    )
    if fmt == "docker":
        # Prebuilt OCI layers keep their bytes; only the label changes.
        built = tuple(
            dataclasses.replace(layer, media_type=_layer_media_type("docker", layer.compression))
            for layer in built
        )
    config_doc: dict[str, Any] = {
        "created": CREATED,
        "architecture": platform.architecture,
        "os": platform.os,
        "config": config.to_json(),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in built]},
        "history": [
            {"created": CREATED, "created_by": layer.created_by or f"berth-test layer {i}"}
            for i, layer in enumerate(built)
        ],
    }
    if platform.variant:
        config_doc["variant"] = platform.variant
    config_bytes = _canonical_json(config_doc)
    if fmt == "docker":
        manifest_type, config_type = MediaType.DOCKER_MANIFEST, MediaType.DOCKER_CONFIG
    else:
        manifest_type, config_type = MediaType.OCI_MANIFEST, MediaType.OCI_CONFIG
    manifest_doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": Blob(config_type, config_bytes).descriptor(),
        "layers": [layer.descriptor() for layer in built],
    }
    if annotations:
        if fmt == "docker":
            raise ValueError("Docker schema2 manifests have no annotations")
        manifest_doc["annotations"] = dict(annotations)
    return Image(
        manifest=_canonical_json(manifest_doc),
        manifest_media_type=manifest_type,
        config=config_bytes,
        config_media_type=config_type,
        layers=built,
        platform=platform,
    )


def build_index(
    images: Sequence[Image], *, fmt: Format = "oci", annotations: Mapping[str, str] | None = None
) -> Index:
    """An OCI index (``fmt="oci"``) or Docker manifest list over *images*."""
    media_type = MediaType.DOCKER_MANIFEST_LIST if fmt == "docker" else MediaType.OCI_INDEX
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [image.descriptor() for image in images],
    }
    if annotations:
        doc["annotations"] = dict(annotations)
    return Index(manifest=_canonical_json(doc), media_type=media_type, images=tuple(images))


# --------------------------------------------------------------------------
# Canned contents
# --------------------------------------------------------------------------

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "berth:x:1000:1000:berth test user:/home/berth:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nberth:x:1000:\nnogroup:x:65534:\n"


def _busybox_applets(busybox: Path) -> list[str]:
    out = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=True
    ).stdout
    return sorted({line.strip() for line in out.splitlines() if line.strip()})


def busybox_rootfs_spec(busybox: Path = BUSYBOX_PATH) -> LayerSpec:
    """A minimal root filesystem: busybox, every applet as a relative symlink,
    passwd/group with root, ``berth`` (1000:1000) and nobody, and the usual
    empty mount-point directories."""
    entries: list[Entry] = [
        File("bin/busybox", busybox.read_bytes(), mode=0o755),
        File("etc/passwd", PASSWD.encode()),
        File("etc/group", GROUP.encode()),
        File("etc/hostname", b"berth-test\n"),
        Dir("tmp", mode=0o1777),
        Dir("root", mode=0o700),
        Dir("home/berth", uid=1000, gid=1000),
        Dir("dev"),
        Dir("proc", mode=0o555),
        Dir("sys", mode=0o555),
        Dir("etc"),
        Dir("var"),
        Dir("run"),
        Dir("usr/local/bin"),
    ]
    for applet in _busybox_applets(busybox):
        path = _norm(applet)
        if path == "bin/busybox":
            continue
        # Relative links resolve inside an extracted rootfs even when it is
        # inspected from the host (an absolute /bin/busybox would silently hit
        # the host's binary).
        target = posixpath.relpath("bin/busybox", posixpath.dirname(path) or ".")
        entries.append(Symlink(path, target))
    return LayerSpec(entries, created_by="berth-test: busybox rootfs")


def marker_layer_spec(name: str) -> LayerSpec:
    """A tiny layer holding only ``/berth-marker`` (used for foreign platforms)."""
    return LayerSpec([File("berth-marker", f"{name}\n".encode())], created_by=f"marker {name}")


def sample_layer_specs() -> list[LayerSpec]:
    """Layers on top of busybox that exercise every unpack rule.

    After applying all three over :func:`busybox_rootfs_spec`:

    * ``/data/keep.txt`` = ``b"v2\\n"`` (overwritten), ``/data/gone.txt`` deleted,
    * ``/opaque`` contains only ``new.txt`` (``old1``/``old2``/``sub`` hidden),
    * ``/data/link`` -> ``keep.txt`` symlink, ``/data/hard`` hardlink of ``/data/orig``,
    * ``/bin/vi`` deleted (whiteout of a lower-layer symlink),
    * ``/data/exec.sh`` mode 0755, ``/data/owned`` owned by 1000:1000.
    """
    return [
        LayerSpec(
            [
                File("data/keep.txt", b"v1\n"),
                File("data/gone.txt", b"bye\n"),
                File("data/orig", b"linked\n"),
                Hardlink("data/hard", "data/orig"),
                File("opaque/old1", b"1\n"),
                File("opaque/old2", b"2\n"),
                File("opaque/sub/deep", b"deep\n"),
                File("data/exec.sh", b"#!/bin/sh\necho hi\n", mode=0o755),
            ],
            created_by="berth-test: add data",
        ),
        LayerSpec(
            [
                File("data/keep.txt", b"v2\n"),
                Whiteout("data/gone.txt"),
                Whiteout("bin/vi"),
                Symlink("data/link", "keep.txt"),
            ],
            created_by="berth-test: modify and delete",
        ),
        LayerSpec(
            [
                OpaqueDir("opaque"),
                File("opaque/new.txt", b"new\n"),
                File("data/owned", b"mine\n", uid=1000, gid=1000),
            ],
            created_by="berth-test: opaque dir",
        ),
    ]


_busybox_spec_cache: dict[Path, LayerSpec] = {}


def _cached_busybox_spec(busybox: Path) -> LayerSpec:
    # Reading the 2 MB binary and running --list-full is the slow part of a
    # build; tests build several variants per session.
    key = busybox.resolve()
    if key not in _busybox_spec_cache:
        _busybox_spec_cache[key] = busybox_rootfs_spec(busybox)
    return _busybox_spec_cache[key]


def build_busybox_image(
    *,
    compression: Compression = Compression.GZIP,
    fmt: Format = "oci",
    platform: Platform | None = None,
    config: ImageConfig | None = None,
    busybox: Path = BUSYBOX_PATH,
    annotations: Mapping[str, str] | None = None,
) -> Image:
    """The single-layer busybox image for the host (or a stated) platform."""
    return build_image(
        [_cached_busybox_spec(busybox)],
        compression=compression,
        fmt=fmt,
        platform=platform,
        config=config,
        annotations=annotations,
    )


def build_layered_image(
    extra_layers: Sequence[LayerSpec | Layer] | None = None,
    *,
    compression: Compression = Compression.GZIP,
    fmt: Format = "oci",
    platform: Platform | None = None,
    config: ImageConfig | None = None,
    busybox: Path = BUSYBOX_PATH,
) -> Image:
    """Busybox plus *extra_layers* (default: :func:`sample_layer_specs`)."""
    extra = list(sample_layer_specs() if extra_layers is None else extra_layers)
    return build_image(
        [_cached_busybox_spec(busybox), *extra],
        compression=compression,
        fmt=fmt,
        platform=platform,
        config=config,
    )


def build_multiplatform_index(
    *,
    compression: Compression = Compression.GZIP,
    fmt: Format = "oci",
    other: Platform | None = None,
) -> Index:
    """Index of the real busybox image for the host plus a marker-only image
    for another platform (linux/arm64, or linux/amd64 on arm64 hosts)."""
    host = host_platform()
    if other is None:
        other = (
            Platform("linux", "arm64")
            if host.architecture != "arm64"
            else Platform("linux", "amd64")
        )
    real = build_busybox_image(compression=compression, fmt=fmt, platform=host)
    fake = build_image(
        [marker_layer_spec(str(other))], compression=compression, fmt=fmt, platform=other
    )
    return build_index([real, fake], fmt=fmt)


# --------------------------------------------------------------------------
# Reference model of layer application
# --------------------------------------------------------------------------


def flatten_layers(specs: Iterable[LayerSpec]) -> dict[str, Entry]:
    """What a correct unpacker leaves behind, as ``{path: entry}``.

    Applies OCI rules in order: entries replace same-path entries, a
    non-directory replacing a directory drops its subtree, whiteouts delete
    a path and its subtree, opaque markers drop the lower contents of a
    directory. Implicit parent directories appear as :class:`Dir` entries.
    Whiteout and opaque markers themselves never appear in the result.
    """
    tree: dict[str, Entry] = {}

    def drop_subtree(path: str, include_self: bool) -> None:
        prefix = path + "/"
        for key in [k for k in tree if k.startswith(prefix) or (include_self and k == path)]:
            del tree[key]

    for spec in specs:
        members = _members(spec)
        # Opaque markers hide only what lower layers had, so they are applied
        # before this layer's own entries regardless of their tar position.
        for info, _ in members:
            if posixpath.basename(info.name) == OPAQUE_MARKER:
                drop_subtree(posixpath.dirname(info.name), include_self=False)
        for info, data in members:
            parent, base = posixpath.split(info.name)
            if base == OPAQUE_MARKER:
                continue
            if base.startswith(WHITEOUT_PREFIX):
                drop_subtree(posixpath.join(parent, base[len(WHITEOUT_PREFIX) :]), True)
                continue
            entry = _entry_from_tarinfo(info, data)
            if not isinstance(entry, Dir):
                drop_subtree(info.name, include_self=False)
            tree[info.name] = entry
    return dict(sorted(tree.items()))


def _entry_from_tarinfo(info: tarfile.TarInfo, data: bytes | None) -> Entry:
    if info.isdir():
        return Dir(info.name, info.mode, info.uid, info.gid)
    if info.issym():
        return Symlink(info.name, info.linkname, info.uid, info.gid)
    if info.islnk():
        return Hardlink(info.name, info.linkname)
    if info.isfifo():
        return Fifo(info.name, info.mode)
    if info.ischr() or info.isblk():
        kind: Literal["char", "block"] = "char" if info.ischr() else "block"
        return Device(info.name, kind, info.devmajor, info.devminor, info.mode)
    return File(info.name, data or b"", info.mode, info.uid, info.gid)


# --------------------------------------------------------------------------
# Registry push (distribution API v2)
# --------------------------------------------------------------------------


def _registry_client(auth: tuple[str, str] | None, verify: Verify) -> Any:
    import httpx

    if isinstance(verify, str):
        # httpx deprecates CA paths in verify=; give it a context instead.
        verify = ssl.create_default_context(cafile=verify)
    return httpx.Client(
        auth=httpx.BasicAuth(*auth) if auth else None,
        verify=verify,
        timeout=60.0,
        follow_redirects=True,
    )


def _base(registry_host: str, plain_http: bool) -> str:
    return f"{'http' if plain_http else 'https'}://{registry_host}"


def _push_blob(client: Any, base: str, repo: str, digest: str, data: bytes) -> None:
    import httpx

    head = client.head(f"{base}/v2/{repo}/blobs/{digest}")
    if head.status_code == 200:
        return
    start = client.post(f"{base}/v2/{repo}/blobs/uploads/")
    if start.status_code != 202:
        raise RuntimeError(f"blob upload start for {repo}: {start.status_code} {start.text}")
    # Location may be relative and already carry query state (_state=...).
    location = httpx.URL(base).join(start.headers["Location"])
    location = location.copy_merge_params({"digest": digest})
    put = client.put(
        location,
        content=data,
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
    )
    if put.status_code != 201:
        raise RuntimeError(f"blob upload {digest} to {repo}: {put.status_code} {put.text}")


def _push_manifest(
    client: Any, base: str, repo: str, reference: str, media_type: str, body: bytes
) -> str:
    resp = client.put(
        f"{base}/v2/{repo}/manifests/{reference}",
        content=body,
        headers={"Content-Type": media_type},
    )
    if resp.status_code != 201:
        raise RuntimeError(f"manifest PUT {repo}:{reference}: {resp.status_code} {resp.text}")
    digest = sha256_digest(body)
    returned = resp.headers.get("Docker-Content-Digest")
    if returned and returned != digest:
        raise RuntimeError(f"registry stored manifest as {returned}, expected {digest}")
    return digest


def push_blob(
    data: bytes,
    registry_host: str,
    repo: str,
    *,
    plain_http: bool = True,
    auth: tuple[str, str] | None = None,
    verify: Verify = True,
) -> str:
    """Upload one blob (POST + monolithic PUT); returns its digest."""
    digest = sha256_digest(data)
    with _registry_client(auth, verify) as client:
        _push_blob(client, _base(registry_host, plain_http), repo, digest, data)
    return digest


def push_manifest(
    body: bytes,
    media_type: str,
    registry_host: str,
    repo: str,
    reference: str,
    *,
    plain_http: bool = True,
    auth: tuple[str, str] | None = None,
    verify: Verify = True,
) -> str:
    """PUT raw manifest bytes under *reference* (tag or digest); returns the digest."""
    with _registry_client(auth, verify) as client:
        return _push_manifest(
            client, _base(registry_host, plain_http), repo, reference, media_type, body
        )


def push(
    target: Target,
    registry_host: str,
    repo: str,
    tag: str | None = "latest",
    *,
    plain_http: bool = True,
    auth: tuple[str, str] | None = None,
    verify: Verify = True,
) -> str:
    """Push an image or index (children first) and tag it; returns the manifest digest.

    With ``tag=None`` the top manifest is pushed by digest only. *verify* is
    True, False, a CA bundle path or an ``ssl.SSLContext`` (``Registry.verify``).
    """
    base = _base(registry_host, plain_http)
    images = target.images if isinstance(target, Index) else (target,)
    with _registry_client(auth, verify) as client:
        for image in images:
            for layer in image.layers:
                _push_blob(client, base, repo, layer.digest, layer.data)
            _push_blob(client, base, repo, image.config_digest, image.config)
            if isinstance(target, Index):
                # The registry refuses an index whose children it does not have.
                _push_manifest(
                    client, base, repo, image.digest, image.manifest_media_type, image.manifest
                )
        return _push_manifest(
            client, base, repo, tag or target.digest, target.manifest_media_type, target.manifest
        )


# --------------------------------------------------------------------------
# On-disk formats: OCI image layout and docker save archives
# --------------------------------------------------------------------------


def _tar_file_info(name: str, size: int, mode: int = 0o644) -> tarfile.TarInfo:
    info = _tarinfo(name, tarfile.REGTYPE, mode)
    info.size = size
    return info


def _write_tree(dest: Path, files: Mapping[str, bytes], as_tar: bool) -> None:
    """Write ``{relpath: bytes}`` as a directory or a deterministic tar."""
    if as_tar:
        dirs = sorted({posixpath.dirname(p) for p in files} - {""})
        all_dirs: set[str] = set()
        for d in dirs:
            while d:
                all_dirs.add(d)
                d = posixpath.dirname(d)
        with tarfile.open(dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(set(files) | all_dirs):
                if name in all_dirs:
                    tar.addfile(_tarinfo(name, tarfile.DIRTYPE, 0o755))
                else:
                    tar.addfile(_tar_file_info(name, len(files[name])), io.BytesIO(files[name]))
        return
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _is_tar_path(dest: Path, as_tar: bool | None) -> bool:
    return as_tar if as_tar is not None else dest.name.endswith(".tar")


def write_oci_layout(
    dest: Path,
    target: Target | Sequence[tuple[Target, str]],
    *,
    ref_name: str | None = "latest",
    image_name: str | None = None,
    as_tar: bool | None = None,
) -> Path:
    """Write an OCI image layout (directory, or tar when *dest* ends in ``.tar``).

    ``index.json`` gets one descriptor per target with
    ``org.opencontainers.image.ref.name`` = *ref_name* (skopeo's
    ``oci:DIR:REF``) and, when *image_name* is given, ``io.containerd.image.name``
    (the full reference ``ctr images import`` uses). Pass a list of
    ``(target, ref_name)`` pairs for several entries.
    """
    pairs: list[tuple[Target, str | None]]
    if isinstance(target, Image | Index):
        pairs = [(target, ref_name)]
    else:
        pairs = [(t, r) for t, r in target]
    files: dict[str, bytes] = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
    manifests = []
    for item, ref in pairs:
        for digest, data in item.blobs().items():
            files["blobs/sha256/" + digest.removeprefix("sha256:")] = data
        annotations = {}
        if ref:
            annotations["org.opencontainers.image.ref.name"] = ref
        if image_name and len(pairs) == 1:
            annotations["io.containerd.image.name"] = image_name
        desc = item.descriptor()
        if annotations:
            desc["annotations"] = annotations
        manifests.append(desc)
    files["index.json"] = _canonical_json(
        {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": manifests}
    )
    _write_tree(dest, files, _is_tar_path(dest, as_tar))
    return dest


def write_docker_archive(
    dest: Path,
    image: Image,
    *,
    repo_tags: Sequence[str] = ("berth-test/busybox:latest",),
    as_tar: bool | None = None,
) -> Path:
    """Write a ``docker save`` style archive (manifest.json, config, layer tars).

    Layers are stored uncompressed, as ``docker save`` does; a legacy
    ``repositories`` file is included for older loaders.
    """
    config_name = image.config_digest.removeprefix("sha256:") + ".json"
    files: dict[str, bytes] = {config_name: image.config}
    layer_paths = []
    for layer in image.layers:
        layer_id = layer.diff_id.removeprefix("sha256:")
        path = f"{layer_id}/layer.tar"
        files[path] = layer.tar
        files[f"{layer_id}/VERSION"] = b"1.0"
        layer_paths.append(path)
    files["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": list(repo_tags), "Layers": layer_paths}]
    ).encode()
    repositories: dict[str, dict[str, str]] = {}
    last = layer_paths[-1].split("/")[0] if layer_paths else ""
    for ref in repo_tags:
        name, _, tag = ref.rpartition(":")
        repositories.setdefault(name, {})[tag] = last
    files["repositories"] = _canonical_json(repositories)
    _write_tree(dest, files, _is_tar_path(dest, as_tar))
    return dest


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _split_ref(ref: str) -> tuple[str, str, str]:
    """``HOST[:PORT]/REPO[:TAG]`` -> (host, repo, tag)."""
    host, sep, rest = ref.partition("/")
    if not sep or not rest:
        raise argparse.ArgumentTypeError(f"{ref!r}: want HOST[:PORT]/REPO[:TAG]")
    repo, tag = rest, "latest"
    if ":" in rest.rsplit("/", 1)[-1]:
        repo, _, tag = rest.rpartition(":")
    return host, repo, tag


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="build-test-image",
        description="Build Berth's offline busybox test image and push it or write it out.",
    )
    parser.add_argument("--compression", choices=[c.value for c in Compression], default="gzip")
    parser.add_argument("--format", choices=["oci", "docker"], default="oci", dest="fmt")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--multiplatform", action="store_true", help="index: host image + arm64/amd64 marker"
    )
    kind.add_argument(
        "--layered", action="store_true", help="busybox + sample whiteout/opaque layers"
    )
    parser.add_argument("--busybox", type=Path, default=BUSYBOX_PATH)
    parser.add_argument(
        "--push", action="append", default=[], metavar="HOST/REPO:TAG", type=_split_ref
    )
    parser.add_argument("--tls", action="store_true", help="push over HTTPS (default plain HTTP)")
    parser.add_argument("--ca", help="CA bundle for --tls pushes")
    parser.add_argument("--insecure", action="store_true", help="skip TLS verification")
    parser.add_argument("--user", help="basic auth USER:PASSWORD")
    parser.add_argument("--oci-tar", type=Path, metavar="PATH", help="write an OCI layout tar")
    parser.add_argument("--oci-dir", type=Path, metavar="DIR", help="write an OCI layout dir")
    parser.add_argument("--docker-tar", type=Path, metavar="PATH", help="write a docker save tar")
    parser.add_argument(
        "--name",
        default="docker.io/library/busybox:latest",
        help="image name recorded in OCI layouts / docker archives",
    )
    args = parser.parse_args(argv)

    compression = Compression(args.compression)
    target: Target
    if args.multiplatform:
        target = build_multiplatform_index(compression=compression, fmt=args.fmt)
    elif args.layered:
        target = build_layered_image(compression=compression, fmt=args.fmt, busybox=args.busybox)
    else:
        target = build_busybox_image(compression=compression, fmt=args.fmt, busybox=args.busybox)
    if not (args.push or args.oci_tar or args.oci_dir or args.docker_tar):
        parser.error("nothing to do: give --push, --oci-tar, --oci-dir or --docker-tar")

    tag = args.name.rpartition(":")[2] if ":" in args.name.rsplit("/", 1)[-1] else "latest"
    auth: tuple[str, str] | None = None
    if args.user:
        user, _, password = args.user.partition(":")
        auth = (user, password)
    verify: Verify = False if args.insecure else (args.ca or True)
    for host, repo, push_tag in args.push:
        digest = push(
            target,
            host,
            repo,
            push_tag,
            plain_http=not args.tls,
            auth=auth,
            verify=verify,
        )
        print(f"pushed {host}/{repo}:{push_tag}@{digest}")
    for path, as_tar in ((args.oci_tar, True), (args.oci_dir, False)):
        if path:
            write_oci_layout(path, target, ref_name=tag, image_name=args.name, as_tar=as_tar)
            print(f"wrote OCI layout {path} ({target.digest})")
    if args.docker_tar:
        if not isinstance(target, Image):
            parser.error("--docker-tar needs a single-platform image")
        write_docker_archive(args.docker_tar, target, repo_tags=[args.name])
        print(f"wrote docker archive {args.docker_tar} ({target.digest})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_main())
    except (OSError, RuntimeError, ValueError) as exc:
        # Registry refusals, I/O problems, impossible option combinations:
        # one line, not a traceback.
        sys.exit(f"build-test-image: error: {exc}")
    except Exception as exc:  # httpx transport errors are not OSErrors
        if type(exc).__module__.startswith("httpx"):
            sys.exit(f"build-test-image: error: {exc}")
        raise
