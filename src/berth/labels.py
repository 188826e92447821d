"""Label limits shared by every labelled object.

containerd caps each label's key plus value at 4096 bytes; clients rely on the
same limit being enforced here so objects stay portable between the two.
"""

from __future__ import annotations

from collections.abc import Mapping

from berth import errdefs

MAX_SIZE = 4096


def validate(labels: Mapping[str, str]) -> None:
    """Raise ``errdefs.InvalidArgument`` for an empty key or an oversized label."""
    for key, value in labels.items():
        if not key:
            raise errdefs.InvalidArgument("label key must not be empty")
        size = len(key.encode()) + len(value.encode())
        if size > MAX_SIZE:
            raise errdefs.InvalidArgument(
                f"label key and value length ({size} bytes) greater than maximum size"
                f" ({MAX_SIZE} bytes): {key[:64]!r}"
            )
