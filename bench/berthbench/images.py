"""The benchmark's fixture images, built offline and pushed to a local registry.

* ``busybox`` -- the test suite's one-layer busybox image (about 1 MiB).
* ``layered`` -- busybox plus five layers of 4 MiB each. The data comes from a
  seeded PRNG so it does not compress away and every run pulls the same bytes.
* ``wide`` -- busybox plus 100 tiny layers: per-layer overhead, not bytes.
* ``debian`` -- a real Debian root (``debootstrap --variant=minbase
  bookworm``) as one gzip layer of about 47 MiB and 6,700 entries. Building it
  takes a minute and needs Debian's package mirror, so the compressed layer is
  cached under ``bench/cache/`` and reused.
* ``debian-zstd`` -- the same tar compressed with zstd.

The builders come from ``tests/support/imagebuilder.py``; this module only
decides contents and caches the Debian root.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from bench.berthbench import procs
from tests.support.imagebuilder import (
    Compression,
    File,
    Image,
    ImageConfig,
    Layer,
    LayerSpec,
    MediaType,
    build_busybox_image,
    build_image,
    build_layered_image,
    push,
    sha256_digest,
)

__all__ = [
    "CACHE_DIR",
    "IMAGE_BUILDERS",
    "BenchImage",
    "DebianRoot",
    "apt_mirror",
    "build_images",
    "chain_ids",
]

CACHE_DIR = Path(__file__).resolve().parents[1] / "cache"
SEED = 20231114
MiB = 1024 * 1024


@dataclass
class BenchImage:
    """A fixture image and where it was pushed."""

    name: str
    image: Image
    ref: str = ""
    digest: str = ""
    chain: list[str] = field(default_factory=list)

    @property
    def blob_digests(self) -> set[str]:
        return set(self.image.blobs())

    @property
    def compressed_bytes(self) -> int:
        return sum(layer.size for layer in self.image.layers)

    @property
    def uncompressed_bytes(self) -> int:
        return sum(len(layer.tar) for layer in self.image.layers)

    def describe(self) -> dict[str, object]:
        return {
            "ref": self.ref,
            "digest": self.digest,
            "layers": len(self.image.layers),
            "compressed_bytes": self.compressed_bytes,
            "uncompressed_bytes": self.uncompressed_bytes,
            "layer_media_type": self.image.layers[-1].media_type,
        }


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The chain ID of every prefix of the layer stack (snapshot keys, bottom first)."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else sha256_digest(f"{out[-1]} {diff_id}".encode()))
    return out


def _busybox() -> Image:
    return build_busybox_image()


def _layered() -> Image:
    rng = random.Random(SEED)
    extra = [
        LayerSpec(
            [File(f"bench/layer{i}/blob{j}", rng.randbytes(MiB)) for j in range(4)],
            created_by=f"berthbench: 4 MiB of seeded random data #{i}",
        )
        for i in range(5)
    ]
    return build_layered_image(extra)


def _wide() -> Image:
    rng = random.Random(SEED + 1)
    extra = [
        LayerSpec(
            [
                File(f"wide/{i:03d}/data", rng.randbytes(2048)),
                File(f"wide/{i:03d}/note", f"layer {i}\n".encode()),
            ],
            created_by=f"berthbench: tiny layer {i}",
        )
        for i in range(100)
    ]
    return build_layered_image(extra)


# --------------------------------------------------------------------------
# Debian minbase, cached
# --------------------------------------------------------------------------

_SUITE = "bookworm"
_DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Left out of the layer: package downloads and index files debootstrap leaves
# behind (an image build would delete them), and the device nodes and virtual
# filesystems a runtime provides itself.
_EXCLUDES = (
    "./var/cache/apt/archives/*.deb",
    "./var/lib/apt/lists/*",
    "./dev/*",
    "./proc/*",
    "./sys/*",
)


def apt_mirror() -> str:
    """The Debian mirror apt is configured with (deb822 or one-line sources)."""
    sources = Path("/etc/apt")
    candidates: list[str] = []
    for path in sorted((sources / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text(errors="replace").split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            suites = fields.get("suites", "").split()
            if "deb" in fields.get("types", "").split() and _SUITE in suites:
                candidates.extend(fields.get("uris", "").split())
    lists = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and _SUITE in words:
                uri = next((w for w in words[1:] if "://" in w), None)
                if uri:
                    candidates.append(uri)
    for uri in candidates:
        if "security" not in uri:
            return uri.rstrip("/")
    return _DEFAULT_MIRROR


@dataclass(frozen=True)
class DebianRoot:
    """The cached Debian minbase layer: ``<cache>/debian-bookworm-minbase.tar.gz``."""

    cache_dir: Path = CACHE_DIR

    @property
    def layer_path(self) -> Path:
        return self.cache_dir / f"debian-{_SUITE}-minbase.tar.gz"

    @property
    def meta_path(self) -> Path:
        return self.cache_dir / f"debian-{_SUITE}-minbase.json"

    def ensure(self, log: Callable[[str], None]) -> Path:
        """Return the cached gzip layer, running debootstrap first when it is missing.

        Raises RuntimeError when debootstrap or tar fails.
        """
        if self.layer_path.exists() and self.meta_path.exists():
            return self.layer_path
        if shutil.which("debootstrap") is None:
            raise RuntimeError("debootstrap is not installed (scripts/setup.sh installs it)")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # The cache is machine-local; a self-ignoring .gitignore keeps it out
        # of commits even where the repository's own ignore list lacks it.
        ignore = self.cache_dir / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")
        mirror = apt_mirror()
        work = Path(tempfile.mkdtemp(prefix="bb-deb.", dir="/tmp"))
        try:
            root = work / "root"
            log(f"debootstrap --variant=minbase {_SUITE} from {mirror} (cached afterwards)")
            res = subprocess.run(
                ["debootstrap", "--variant=minbase", _SUITE, str(root), mirror],
                capture_output=True,
                text=True,
                check=False,
            )
            if res.returncode != 0:
                raise RuntimeError(
                    f"debootstrap failed ({res.returncode}):\n{(res.stdout + res.stderr)[-3000:]}"
                )
            tar_path = work / "layer.tar"
            excludes = [f"--exclude={pattern}" for pattern in _EXCLUDES]
            subprocess.run(
                [
                    "tar",
                    "--create",
                    "--file",
                    str(tar_path),
                    "--directory",
                    str(root),
                    "--sort=name",
                    "--numeric-owner",
                    "--xattrs",
                    "--format=posix",
                    "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
                    *excludes,
                    ".",
                ],
                check=True,
                capture_output=True,
            )
            tmp = self.layer_path.with_suffix(".tmp")
            # mtime=0 and no file name: the same tar always gives the same blob.
            with tar_path.open("rb") as src, tmp.open("wb") as raw:
                with gzip.GzipFile(
                    filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6
                ) as gz:
                    shutil.copyfileobj(src, gz, 4 * MiB)
            tmp.rename(self.layer_path)
            self.meta_path.write_text(
                json.dumps(
                    {
                        "suite": _SUITE,
                        "variant": "minbase",
                        "mirror": mirror,
                        "built": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                        "tar_bytes": tar_path.stat().st_size,
                        "gzip_bytes": self.layer_path.stat().st_size,
                    },
                    indent=2,
                )
                + "\n"
            )
            return self.layer_path
        finally:
            procs.unmount_under(work)
            shutil.rmtree(work, ignore_errors=True)

    def layers(self, log: Callable[[str], None]) -> tuple[Layer, Layer]:
        """The gzip layer from the cache and a zstd layer of the same tar."""
        gz = self.ensure(log).read_bytes()
        tar = gzip.decompress(gz)
        zst = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(tar)
        created = "berthbench: debootstrap --variant=minbase bookworm"
        return (
            Layer(MediaType.OCI_LAYER_GZIP, gz, tar, Compression.GZIP, created),
            Layer(MediaType.OCI_LAYER_ZSTD, zst, tar, Compression.ZSTD, created),
        )


_DEBIAN_CONFIG = ImageConfig(cmd=("bash",))

IMAGE_BUILDERS: dict[str, Callable[[], Image]] = {
    "busybox": _busybox,
    "layered": _layered,
    "wide": _wide,
}
DEBIAN_IMAGES = ("debian", "debian-zstd")


def build_images(
    names: set[str],
    registry_host: str,
    log: Callable[[str], None],
    *,
    cache: DebianRoot | None = None,
) -> dict[str, BenchImage]:
    """Build the images in *names* and push each to ``<host>/bench/<name>:latest``."""
    built: dict[str, Image] = {}
    for name in sorted(names):
        if name in IMAGE_BUILDERS:
            built[name] = IMAGE_BUILDERS[name]()
    if names & set(DEBIAN_IMAGES):
        gz_layer, zst_layer = (cache or DebianRoot()).layers(log)
        if "debian" in names:
            built["debian"] = build_image([gz_layer], config=_DEBIAN_CONFIG)
        if "debian-zstd" in names:
            built["debian-zstd"] = build_image([zst_layer], config=_DEBIAN_CONFIG)
    unknown = names - set(built)
    if unknown:
        raise ValueError(f"unknown images: {', '.join(sorted(unknown))}")
    out: dict[str, BenchImage] = {}
    for name, image in built.items():
        repo = f"bench/{name}"
        digest = push(image, registry_host, repo, "latest", plain_http=True)
        out[name] = BenchImage(
            name=name,
            image=image,
            ref=f"{registry_host}/{repo}:latest",
            digest=digest,
            chain=chain_ids(image.diff_ids),
        )
    return out
