"""Layer identities: diff IDs and chain IDs.

A layer's *diff ID* is the digest of its uncompressed tar; the *chain ID* of
a stack of layers identifies the filesystem they produce together (OCI
image-spec ``config.md``): the chain ID of one layer is its diff ID, and
``ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))``.
Snapshotters key committed layers by chain ID.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from berth import errdefs
from berth.core.content import Digest


def chain_ids(diff_ids: Iterable[Digest | str]) -> list[Digest]:
    """The chain ID of every prefix of ``diff_ids`` (same length, in order).

    Raises InvalidArgument for a string that is not a digest.
    """
    out: list[Digest] = []
    for raw in diff_ids:
        diff_id = Digest.parse(raw)
        if not out:
            out.append(diff_id)
        else:
            out.append(Digest.from_bytes(f"{out[-1]} {diff_id}".encode()))
    return out


def chain_id(diff_ids: Sequence[Digest | str]) -> Digest:
    """The chain ID of the whole stack. Raises InvalidArgument if it is empty."""
    if not diff_ids:
        raise errdefs.InvalidArgument("chain ID of an empty layer stack is undefined")
    return chain_ids(diff_ids)[-1]
