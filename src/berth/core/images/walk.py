"""Walking an image held in a content store: children, platform selection, blob lists.

Blocking (it reads the store); async callers run these in a thread. The
equivalents of containerd's ``images.Children``, ``images.Manifest`` and
``images.Platforms`` for a :class:`~berth.core.content.Store`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from berth import errdefs
from berth.core.content import Descriptor as ContentDescriptor
from berth.core.content import Store
from berth.core.images import mediatypes as mt
from berth.core.images.manifest import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageConfig,
    Manifest,
    children,
    parse_config,
    parse_index,
    parse_manifest,
)
from berth.core.images.platforms import MatchComparer, Platform, sort_by_preference


def read_document(store: Store, desc: ContentDescriptor, limit: int = MAX_MANIFEST_SIZE) -> bytes:
    """The bytes of a manifest, index or config. Raises NotFound if absent,
    InvalidArgument if the stored blob is larger than ``limit``."""
    info = store.info(desc.digest)
    if info.size > limit:
        raise errdefs.InvalidArgument(
            f"{desc.media_type} {desc.digest} is {info.size} bytes, over the {limit} byte limit"
        )
    return store.read_blob(desc.digest)


def store_children(store: Store, desc: ContentDescriptor) -> list[Descriptor]:
    """Children of ``desc`` read from ``store`` (none for layers and configs)."""
    if not mt.is_manifest_or_index(desc.media_type):
        return []
    return children(desc, read_document(store, desc))


def filter_platforms(
    descs: list[Descriptor], matcher: MatchComparer | None, *, limit: int = 0
) -> list[Descriptor]:
    """Index entries ``matcher`` accepts (entries without a platform always
    pass), best match first; at most ``limit`` when it is positive."""
    if matcher is None:
        return descs
    kept = [d for d in descs if d.platform is None or matcher.match(d.platform)]
    ordered: list[Descriptor] = sort_by_preference(kept, _platform_of, matcher)
    return ordered[:limit] if limit > 0 else ordered


def _platform_of(d: Descriptor) -> Platform | None:
    return d.platform


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """One platform's manifest out of an image target."""

    descriptor: Descriptor
    manifest: Manifest


def manifest_for_platform(
    store: Store, target: ContentDescriptor, matcher: MatchComparer
) -> ResolvedImage:
    """The best manifest for ``matcher`` under ``target`` (following nested indexes).

    A manifest whose config says another platform is skipped when the
    manifest was reached without an index entry naming its platform.
    Raises NotFound ("no match for platform in manifest ...") if nothing
    matches, or if ``target`` is absent.
    """
    found: list[ResolvedImage] = []
    was_index = False

    def visit(desc: Descriptor, depth: int) -> None:
        nonlocal was_index
        if depth > 8:
            raise errdefs.InvalidArgument(f"index nesting too deep at {desc.digest}")
        if mt.is_manifest(desc.media_type):
            m = parse_manifest(
                read_document(store, desc), desc.media_type, what=f"manifest {desc.digest}"
            )
            if desc.platform is None:
                cfg = image_config(store, m.config)
                if not matcher.match(cfg.platform):
                    return
            found.append(ResolvedImage(desc, m))
        elif mt.is_index(desc.media_type):
            idx = parse_index(
                read_document(store, desc), desc.media_type, what=f"index {desc.digest}"
            )
            was_index = True
            for child in filter_platforms(list(idx.manifests), matcher):
                visit(child, depth + 1)
                if found:
                    return
        else:
            raise errdefs.NotFound(f"unexpected media type {desc.media_type} for {desc.digest}")

    visit(Descriptor.of(target), 0)
    if not found:
        if was_index:
            raise errdefs.NotFound(f"no match for platform in manifest {target.digest}")
        raise errdefs.NotFound(f"manifest {target.digest}: not found")
    return found[0]


def image_config(store: Store, config: ContentDescriptor) -> ImageConfig:
    """Parse the config blob ``config`` from ``store``."""
    return parse_config(
        read_document(store, config, limit=16 * 1024 * 1024), what=f"image config {config.digest}"
    )


def walk(
    store: Store,
    target: ContentDescriptor,
    *,
    matcher: MatchComparer | None = None,
    visit: Callable[[Descriptor], None] | None = None,
) -> list[Descriptor]:
    """Every descriptor reachable from ``target`` (depth-first, parents before
    children, each digest once), index entries filtered by ``matcher``.

    Raises NotFound if a manifest or index on the way is absent.
    """
    out: list[Descriptor] = []
    seen: set[str] = set()

    def go(desc: Descriptor) -> None:
        key = str(desc.digest)
        if key in seen:
            return
        seen.add(key)
        out.append(desc)
        if visit is not None:
            visit(desc)
        try:
            kids = store_children(store, desc)
        except errdefs.NotFound:
            if desc.digest == target.digest:
                raise
            raise errdefs.NotFound(
                f"content {desc.digest} ({desc.media_type}) is not in the store; "
                "was the image pulled for this platform only? (select platforms to push)"
            ) from None
        if mt.is_index(desc.media_type):
            kids = filter_platforms(kids, matcher)
        for kid in kids:
            go(kid)

    go(Descriptor.of(target))
    return out
