"""Namespace context: how a request names the namespace it works in.

Clients send it in gRPC metadata under ``containerd-namespace`` (ttrpc uses the
same key), exactly as containerd does, so ``ctr -n foo`` works unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

from berth import errdefs, identifiers

GRPC_HEADER = "containerd-namespace"
TTRPC_HEADER = "containerd-namespace-ttrpc"
DEFAULT = "default"
ENV = "CONTAINERD_NAMESPACE"


def from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """Return the namespace carried in request metadata, or None."""
    for key, value in metadata or ():
        if key.lower() == GRPC_HEADER:
            return value.decode() if isinstance(value, bytes) else value
    return None


def required(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The validated namespace of a request.

    Raises FailedPrecondition when absent (containerd's "namespace is required")
    and InvalidArgument when the name breaks the identifier rules.
    """
    ns = from_metadata(metadata)
    if not ns:
        raise errdefs.FailedPrecondition(
            "namespace is required: set it with -n or CONTAINERD_NAMESPACE"
        )
    if ns in _VALID:
        return ns
    try:
        identifiers.validate(ns)
    except errdefs.InvalidArgument as exc:
        raise errdefs.InvalidArgument(f"namespace validation: {exc}") from None
    if len(_VALID) >= _VALID_MAX:
        _VALID.clear()
    _VALID.add(ns)
    return ns


# Every request names its namespace, and a host has a handful: remember the
# names that passed validation rather than re-match the pattern each time.
_VALID: set[str] = set()
_VALID_MAX = 1024
