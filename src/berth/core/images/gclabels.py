"""The labels containerd puts on content during a pull, computed as plain data.

Two families:

* GC references from a parent to its children, so garbage collection keeps
  a pulled image's blobs alive through its root: an index gets
  ``containerd.io/gc.ref.content.m.<i>`` per manifest, a manifest gets
  ``containerd.io/gc.ref.content.config`` and ``containerd.io/gc.ref.content.l.<i>``
  per layer (:func:`child_gc_labels`);
* ``containerd.io/distribution.source.<registry host>`` = comma-separated,
  sorted repositories the blob is known to exist in, which a later push uses
  to mount the blob across repositories instead of uploading it
  (:func:`append_distribution_source`, :func:`mount_candidate`).

The host in that key is the registry's host name without the port, exactly
as containerd derives it, so both daemons read each other's labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from berth import labels as label_rules
from berth.core.content import Descriptor
from berth.core.images import mediatypes as mt

DISTRIBUTION_SOURCE_PREFIX = "containerd.io/distribution.source."
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"


def child_gc_labels(children: Sequence[Descriptor]) -> dict[str, str]:
    """GC reference labels for a parent whose children are ``children`` (in order).

    Each child's key comes from :func:`mediatypes.gc_ref_prefix`; a key ending
    in ``.`` is numbered by the position among children sharing it, and a
    repeated non-dotted key gets a number from its second use on.
    """
    out: dict[str, str] = {}
    seen: dict[str, int] = {}
    for child in children:
        key = mt.gc_ref_prefix(child.media_type)
        n = seen.get(key, 0)
        seen[key] = n + 1
        if n > 0 or key.endswith("."):
            key = f"{key}{n}"
        out[key] = str(child.digest)
    return out


def distribution_source_key(registry_host: str) -> str:
    """``containerd.io/distribution.source.<host>``, the port dropped."""
    return DISTRIBUTION_SOURCE_PREFIX + _hostname(registry_host)


def _hostname(host: str) -> str:
    if host.startswith("["):  # [v6]:port
        end = host.find("]")
        return host[1:end] if end > 0 else host
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name
    return host


def append_distribution_source(existing: str, repository: str) -> str:
    """Add ``repository`` to a label value: sorted, de-duplicated, comma-joined."""
    repos = {r for r in existing.split(",") if r} if existing else set()
    repos.add(repository)
    return ",".join(sorted(repos))


def distribution_source_update(
    current: Mapping[str, str], registry_host: str, repository: str
) -> dict[str, str]:
    """The label update recording that a blob exists in ``host/repository``.

    Empty when the resulting label would break the label size limit, which
    happens for very common layers; containerd then skips it too.
    """
    key = distribution_source_key(registry_host)
    value = append_distribution_source(current.get(key, ""), repository)
    try:
        label_rules.validate({key: value})
    except Exception:
        return {}
    return {key: value}


def distribution_sources(labels: Mapping[str, str]) -> dict[str, str]:
    """Just the distribution-source labels of ``labels``."""
    return {k: v for k, v in labels.items() if k.startswith(DISTRIBUTION_SOURCE_PREFIX)}


def mount_candidate(
    labels: Mapping[str, str], registry_host: str, target_repository: str
) -> str | None:
    """The repository on ``registry_host`` to mount a blob from when pushing to
    ``target_repository``: the known one sharing the longest path prefix with
    the target (later ones win ties, as in containerd), never the target."""
    value = labels.get(distribution_source_key(registry_host), "")
    best: str | None = None
    best_len = 0
    target = target_repository.split("/")
    for repo in value.split(","):
        if not repo or repo == target_repository:
            continue
        n = _common_prefix(target, repo.split("/"))
        if n >= best_len:
            best, best_len = repo, n
    return best


def _common_prefix(a: Iterable[str], b: Iterable[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
