"""Image references: ``[host[:port]/]path[:tag][@digest]``.

The grammar is the distribution project's (lowercase path components joined
by ``/``, separators ``.``, ``_``, ``__``, ``-``; tags of up to 128 word
characters). Normalisation follows Docker's rules, which containerd applies
to user input through ``ParseDockerRef``: the first component is a registry
host only if it contains ``.`` or ``:`` or is ``localhost``; otherwise the
host is ``docker.io`` and a single-component name gets ``library/``. A name
with neither tag nor digest gets ``:latest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from berth import errdefs
from berth.core.content import Digest

DEFAULT_DOMAIN = "docker.io"
DEFAULT_TAG = "latest"
_LEGACY_DOMAIN = "index.docker.io"
_MAX_NAME = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-zA-Z=_-]+")


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed, normalised image reference.

    ``str(ref)`` is the full form (``docker.io/library/busybox:latest``);
    ``repository`` is the path inside the registry (``library/busybox``).
    """

    domain: str
    path: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def name(self) -> str:
        """``domain/path`` (containerd calls this the locator)."""
        return f"{self.domain}/{self.path}"

    @property
    def repository(self) -> str:
        return self.path

    @property
    def hostname(self) -> str:
        """The domain as used to look up registry hosts (port kept)."""
        return self.domain

    @property
    def object(self) -> str:
        """What follows the name: ``tag``, ``tag@digest`` or ``@digest``."""
        out = self.tag or ""
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def with_tag(self, tag: str) -> Reference:
        if not _TAG.fullmatch(tag):
            raise errdefs.InvalidArgument(f"invalid tag {tag!r}")
        return replace(self, tag=tag)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    @classmethod
    def parse(cls, text: str, *, default_tag: bool = True) -> Reference:
        """Parse and normalise ``text``; see the module docstring for the rules.

        ``default_tag`` False leaves a name without tag or digest untagged.
        Raises InvalidArgument naming what is wrong: empty, a scheme
        (``https://``), uppercase or otherwise invalid repository, a bad
        tag, a bad or unsupported digest, a name over 255 characters.
        """
        return parse_reference(text, default_tag=default_tag)


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """See :meth:`Reference.parse`."""
    if not text:
        raise errdefs.InvalidArgument("invalid reference: empty string")
    if "://" in text:
        raise errdefs.InvalidArgument(
            f"invalid reference {text!r}: give host/repository[:tag], without a URL scheme"
        )
    rest = text
    digest: Digest | None = None
    if "@" in rest:
        rest, _, raw_digest = rest.partition("@")
        if not _DIGEST_SHAPE.fullmatch(raw_digest):
            raise errdefs.InvalidArgument(f"invalid reference {text!r}: bad digest {raw_digest!r}")
        try:
            digest = Digest.parse(raw_digest)
        except errdefs.InvalidArgument as exc:
            raise errdefs.InvalidArgument(f"invalid reference {text!r}: {exc}") from None
    tag: str | None = None
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise errdefs.InvalidArgument(f"invalid reference {text!r}: bad tag {tag!r}")
    if not rest:
        raise errdefs.InvalidArgument(f"invalid reference {text!r}: repository name missing")

    domain, path = _split_domain(rest)
    if not _DOMAIN.fullmatch(domain):
        raise errdefs.InvalidArgument(f"invalid reference {text!r}: bad registry host {domain!r}")
    if path.lower() == path and not all(_PATH_COMPONENT.fullmatch(c) for c in path.split("/")):
        raise errdefs.InvalidArgument(f"invalid reference {text!r}: bad repository name {path!r}")
    if path.lower() != path:
        raise errdefs.InvalidArgument(
            f"invalid reference {text!r}: repository name must be lowercase"
        )
    if len(f"{domain}/{path}") > _MAX_NAME:
        raise errdefs.InvalidArgument(
            f"invalid reference {text[:64]!r}...: repository name must not exceed {_MAX_NAME} characters"
        )
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, remainder = name.partition("/")
    if not sep or (
        "." not in first and ":" not in first and first != "localhost" and first.lower() == first
    ):
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, remainder
    if domain == _LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    return domain, path
