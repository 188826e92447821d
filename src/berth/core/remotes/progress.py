"""Progress reports and the label seam shared by the pull and push pipelines."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from berth.core.content import Descriptor as ContentDescriptor
from berth.core.content import Digest, Info, Store
from berth.core.images import mediatypes as mt

log = logging.getLogger(__name__)

#: waiting: queued behind the concurrency limit; downloading/uploading: bytes
#: moving (``offset`` of ``total``); exists: nothing to transfer; mounted:
#: the registry linked it from another repository; done: transferred and
#: verified (committed, for pulls).
Status = Literal["waiting", "downloading", "uploading", "exists", "mounted", "done"]


@dataclass(frozen=True, slots=True)
class Progress:
    """One progress report for one blob.

    ``key`` is the blob's ingest ref (``layer-sha256:...``), the name
    ``ctr`` shows for it. Reports for one blob arrive in order; ``offset``
    only grows, except that a resumed download may start above zero.
    """

    key: str
    descriptor: ContentDescriptor
    status: Status
    offset: int
    total: int


ProgressFn = Callable[[Progress], None]


def ref_key(desc: ContentDescriptor) -> str:
    """The ingest ref for ``desc``, named like containerd's ``MakeRefKey``."""
    name = desc.annotations.get("org.opencontainers.image.ref.name") if desc.annotations else None
    key = f"{name}@{desc.digest}" if name else str(desc.digest)
    media_type = desc.media_type
    if mt.is_manifest(media_type):
        return f"manifest-{key}"
    if mt.is_index(media_type):
        return f"index-{key}"
    if mt.is_layer(media_type):
        return f"layer-{key}"
    if mt.is_known_config(media_type):
        return f"config-{key}"
    return f"unknown-{key}"


class Labeler(Protocol):
    """Where content labels live (the metadata layer, in the daemon).

    Both calls refer to committed content; both may raise NotFound.
    """

    async def labels(self, digest: Digest) -> dict[str, str]:
        """Current labels of ``digest``."""
        ...

    async def update(self, digest: Digest, labels: Mapping[str, str]) -> None:
        """Merge ``labels`` into those of ``digest`` (an empty value deletes a key)."""
        ...


class StoreLabeler:
    """A :class:`Labeler` over a :class:`~berth.core.content.Store` that keeps labels
    (a ``LocalStore`` with a label store, or the metadata layer's store)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def labels(self, digest: Digest) -> dict[str, str]:
        info = await asyncio.to_thread(self._store.info, digest)
        return dict(info.labels)

    async def update(self, digest: Digest, labels: Mapping[str, str]) -> None:
        if not labels:
            return
        fields = [f"labels.{key}" for key in labels]

        def apply() -> None:
            current = self._store.info(digest)
            self._store.update(
                Info(
                    digest=current.digest,
                    size=current.size,
                    created_at=current.created_at,
                    updated_at=current.updated_at,
                    labels=dict(labels),
                ),
                fields,
            )

        await asyncio.to_thread(apply)


class NoLabels:
    """A :class:`Labeler` that keeps nothing: for stores without labels."""

    async def labels(self, digest: Digest) -> dict[str, str]:
        return {}

    async def update(self, digest: Digest, labels: Mapping[str, str]) -> None:
        return None


def report(fn: ProgressFn | None, progress: Progress) -> None:
    """Deliver ``progress``; a failing callback must not break a transfer."""
    if fn is None:
        return
    try:
        fn(progress)
    except Exception:  # a UI bug is no reason to abort a pull
        log.warning("progress callback failed for %s", progress.key, exc_info=True)
