"""Validation of object names (namespaces, containers, leases, ...).

The rules are containerd's, so that a name one accepts the other accepts too:
alphanumeric runs joined by single '.', '_' or '-', at most 76 characters.
"""

from __future__ import annotations

import re

from berth import errdefs

MAX_LENGTH = 76
_PATTERN = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")


def validate(name: str) -> None:
    """Raise ``errdefs.InvalidArgument`` unless ``name`` is a valid identifier."""
    if not name:
        raise errdefs.InvalidArgument("identifier must not be empty")
    if len(name) > MAX_LENGTH:
        raise errdefs.InvalidArgument(
            f"identifier {name!r} greater than maximum length ({MAX_LENGTH} characters)"
        )
    if not _PATTERN.match(name):
        raise errdefs.InvalidArgument(
            f"identifier {name!r} must match {_PATTERN.pattern}: letters and digits,"
            " optionally joined by single '.', '_' or '-'"
        )
