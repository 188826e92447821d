"""JSON bytes exactly as containerd's Go code marshals them.

The manifest and index an import synthesises are content-addressed: a single
byte of difference changes their digests. Writing them the way Go's
``encoding/json`` does (struct fields in declaration order, empty optional
fields omitted, map keys sorted, no spaces, ``<``, ``>``, ``&``, U+2028 and
U+2029 escaped) gives the same digests as ``ctr images import`` of the same
archive, so images imported by either daemon are interchangeable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from berth.core.images import Descriptor, Platform

_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def dumps(obj: Any) -> bytes:
    """Compact JSON with Go's HTML-safe escaping. Key order is the caller's."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    # These characters can only occur inside strings, so replacing them in
    # the serialised text is the same as Go escaping them while encoding.
    for raw, escaped in _GO_ESCAPES.items():
        if raw in text:
            text = text.replace(raw, escaped)
    return text.encode()


def platform(p: Platform) -> dict[str, Any]:
    """An image-spec platform in Go's field order."""
    out: dict[str, Any] = {"architecture": p.architecture, "os": p.os}
    if p.os_version:
        out["os.version"] = p.os_version
    if p.os_features:
        out["os.features"] = list(p.os_features)
    if p.variant:
        out["variant"] = p.variant
    return out


def descriptor(d: Descriptor) -> dict[str, Any]:
    """An image-spec descriptor in Go's field order."""
    out: dict[str, Any] = {}
    if d.media_type:
        out["mediaType"] = d.media_type
    out["digest"] = str(d.digest)
    out["size"] = d.size
    if d.urls:
        out["urls"] = list(d.urls)
    if d.annotations:
        out["annotations"] = sorted_map(d.annotations)
    if d.platform is not None:
        out["platform"] = platform(d.platform)
    if d.artifact_type:
        out["artifactType"] = d.artifact_type
    return out


def sorted_map(m: Mapping[str, str]) -> dict[str, str]:
    # Go sorts map keys by their UTF-8 bytes; for str that is code point order.
    return {k: m[k] for k in sorted(m)}
