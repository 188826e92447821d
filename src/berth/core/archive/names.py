"""Image names inside archives: the reference rules of ``ctr images import/export``.

An archive names its images in three ways, each with its own rule:

* ``manifest.json`` ``RepoTags`` (Docker) are short names (``busybox:latest``)
  that import normalises to full references (``docker.io/library/busybox:latest``);
* ``index.json`` annotations ``io.containerd.image.name`` (a full name, used as
  is) and ``org.opencontainers.image.ref.name`` (often only a tag, which the
  importer passes through a translator: add a base name, or filter by one);
* export writes both annotations, and familiar names back into ``RepoTags``.

All functions are pure and raise only :class:`berth.errdefs.InvalidArgument`.
"""

from __future__ import annotations

from collections.abc import Callable

from berth import errdefs
from berth.core.content import Digest
from berth.core.remotes.reference import DEFAULT_DOMAIN, parse_reference

#: Annotation carrying the full image name, as containerd writes and reads it.
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
#: The OCI annotation for a reference name (a tag, or a full reference).
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"


def normalize_reference(ref: str) -> str:
    """A Docker-style name made canonical: ``busybox`` -> ``docker.io/library/busybox:latest``.

    A reference with both tag and digest keeps only the digest, as Docker's
    ``ParseDockerRef`` does. Raises InvalidArgument for an unparseable name.
    """
    try:
        parsed = parse_reference(ref)
    except errdefs.InvalidArgument as exc:
        raise errdefs.InvalidArgument(f"normalize image ref {ref!r}: {exc}") from None
    if parsed.digest is not None and parsed.tag:
        return f"{parsed.name}@{parsed.digest}"
    return str(parsed)


def familiarize_reference(ref: str) -> str:
    """The short form Docker shows: ``docker.io/library/busybox:latest`` -> ``busybox:latest``.

    A name without tag or digest gets ``:latest``. Raises InvalidArgument.
    """
    try:
        parsed = parse_reference(ref)
    except errdefs.InvalidArgument as exc:
        raise errdefs.InvalidArgument(f"failed to parse {ref!r}: {exc}") from None
    name = parsed.name
    if parsed.domain == DEFAULT_DOMAIN:
        path = parsed.path
        # Only the official-image prefix is dropped, and only for one-level names.
        if path.startswith("library/") and path.count("/") == 1:
            path = path.removeprefix("library/")
        name = path
    out = name
    if parsed.tag:
        out += f":{parsed.tag}"
    if parsed.digest is not None:
        out += f"@{parsed.digest}"
    return out


def oci_reference_name(name: str) -> str:
    """What containerd puts in ``org.opencontainers.image.ref.name`` for ``name``.

    The part after the repository (``latest`` for ``docker.io/library/busybox:latest``,
    ``@sha256:...`` for a digest reference). containerd parses the name as a
    URL authority plus path; when that fails (no host part it can read, or a
    ``host:port`` whose port is not a number) the whole name is used instead.
    """
    if "://" in name:
        return name
    host, sep, path = name.partition("/")
    if not host or not _valid_authority(host):
        return name
    if not sep:
        return ""
    for i, ch in enumerate(path):
        if ch in ":@":
            obj = path[i:]
            return obj[1:] if obj.startswith(":") else obj
    return ""


def _valid_authority(host: str) -> bool:
    if "@" in host:
        return False
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return False
        rest = host[end + 1 :]
        return not rest or (rest.startswith(":") and (rest == ":" or rest[1:].isdigit()))
    _, colon, port = host.rpartition(":")
    return not colon or port == "" or port.isdigit()


def add_ref_prefix(image: str) -> Callable[[str], str]:
    """Translator for ``ref.name`` values: a bare tag ``t`` becomes ``image:t``;
    anything already containing ``/``, ``:`` or ``@`` is kept (``ctr import``
    without ``--base-name``, where ``image`` is ``import-<date>``)."""

    def translate(ref: str) -> str:
        if any(c in ref for c in "/:@"):
            return ref
        return f"{image}:{ref}"

    return translate


def filter_ref_prefix(image: str) -> Callable[[str], str]:
    """Like :func:`add_ref_prefix`, but full names not under ``image`` are
    dropped (translated to ``""``): ``ctr import --base-name``."""

    def translate(ref: str) -> str:
        if any(c in ref for c in "/:@"):
            return ref if _has_image_prefix(ref, image) else ""
        return f"{image}:{ref}"

    return translate


def _has_image_prefix(ref: str, prefix: str) -> bool:
    if not ref.startswith(prefix):
        return False
    return len(ref) == len(prefix) or ref[len(prefix)] in "/:@"


def digest_translator(prefix: str) -> Callable[[Digest], str]:
    """Names digest images ``prefix@<digest>`` (``ctr import --digests``)."""

    def translate(digest: Digest) -> str:
        return f"{prefix}@{digest}"

    return translate
