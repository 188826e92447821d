"""Content digests: the ``<algorithm>:<hex>`` strings that name every blob.

Validation follows the OCI ``go-digest`` rules containerd applies: the
algorithm must be one we can compute (``sha256``, the canonical one, or
``sha512``) and the encoded part must be exactly the hash length in lowercase
hexadecimal. Anything else is :class:`berth.errdefs.InvalidArgument`, because a
malformed digest always comes from the caller.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from berth import errdefs


class Algorithm(StrEnum):
    """Digest algorithms the content store can compute and verify."""

    SHA256 = "sha256"
    SHA512 = "sha512"

    @property
    def hex_length(self) -> int:
        """Number of hex characters in an encoded digest of this algorithm."""
        return _HEX_LENGTH[self]

    def hasher(self) -> Hasher:
        """A fresh incremental hash object for this algorithm."""
        return hashlib.new(self.value)


_HEX_LENGTH = {Algorithm.SHA256: 64, Algorithm.SHA512: 128}

#: The algorithm used when the caller does not ask for another, as in containerd.
CANONICAL = Algorithm.SHA256

# Grammar from the OCI image spec (descriptor.md): algorithm components joined
# by separators, then a colon, then the encoded part. Checked before the
# algorithm-specific rules so a structurally broken string gets a message that
# says so rather than "unsupported algorithm".
_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_LOWER_HEX = re.compile(r"[0-9a-f]+")


class Hasher(Protocol):
    """The part of a :mod:`hashlib` object the store relies on."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...

    def copy(self) -> Hasher: ...


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated content digest. ``str(d)`` gives the canonical ``alg:hex`` form.

    Construct through :meth:`parse` or :meth:`from_bytes`; the constructor also
    validates, so an invalid ``Digest`` value cannot exist.
    """

    algorithm: Algorithm
    hex: str

    def __post_init__(self) -> None:
        want = self.algorithm.hex_length
        if len(self.hex) != want:
            raise errdefs.InvalidArgument(
                f"invalid digest {self.algorithm.value}:{self.hex}: {self.algorithm.value} "
                f"needs {want} hex characters, got {len(self.hex)}"
            )
        if not _LOWER_HEX.fullmatch(self.hex):
            raise errdefs.InvalidArgument(
                f"invalid digest {self.algorithm.value}:{self.hex}: "
                "encoded part must be lowercase hexadecimal"
            )

    @classmethod
    def parse(cls, value: str | Digest) -> Digest:
        """Parse and validate ``value``; a :class:`Digest` is returned unchanged.

        Raises :class:`errdefs.InvalidArgument` naming the problem: empty,
        not ``alg:hex``, unsupported algorithm, wrong length, or not hex.
        """
        if isinstance(value, Digest):
            return value
        if not isinstance(value, str):
            raise errdefs.InvalidArgument(
                f"invalid digest {value!r}: expected a string, got {type(value).__name__}"
            )
        if not value:
            raise errdefs.InvalidArgument("invalid digest: empty string")
        if not _GRAMMAR.fullmatch(value):
            raise errdefs.InvalidArgument(
                f"invalid digest {value!r}: expected <algorithm>:<hex>, e.g. sha256:<64 hex>"
            )
        alg_name, _, encoded = value.partition(":")
        try:
            algorithm = Algorithm(alg_name)
        except ValueError:
            supported = ", ".join(a.value for a in Algorithm)
            raise errdefs.InvalidArgument(
                f"invalid digest {value!r}: unsupported digest algorithm {alg_name!r} "
                f"(supported: {supported})"
            ) from None
        return cls(algorithm, encoded)

    @classmethod
    def from_bytes(
        cls, data: bytes | bytearray | memoryview, algorithm: Algorithm = CANONICAL
    ) -> Digest:
        """The digest of ``data``. Costs one pass of ``algorithm`` over the bytes."""
        h = algorithm.hasher()
        h.update(data)
        return cls(algorithm, h.hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm.value}:{self.hex}"


def parse_digest(value: str | Digest) -> Digest:
    """Shorthand for :meth:`Digest.parse`."""
    return Digest.parse(value)


class Digester:
    """Incrementally computes a :class:`Digest` over written bytes."""

    __slots__ = ("_algorithm", "_hasher")

    def __init__(self, algorithm: Algorithm = CANONICAL) -> None:
        self._algorithm = algorithm
        self._hasher = algorithm.hasher()

    @property
    def algorithm(self) -> Algorithm:
        return self._algorithm

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hasher.update(data)

    def reset(self) -> None:
        self._hasher = self._algorithm.hasher()

    def digest(self) -> Digest:
        """The digest of everything written so far; does not disturb the state."""
        return Digest(self._algorithm, self._hasher.hexdigest())
