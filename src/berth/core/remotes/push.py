"""The push pipeline: an image in a content store -> a registry repository.

Like containerd's ``remotes.PushContent``: walk the image from its target
(index entries filtered by an optional platform matcher), upload every
non-manifest blob first (concurrently, bounded), skipping those the registry
has and mounting those a ``containerd.io/distribution.source.<host>`` label
says live in another repository of the same registry, then put the
manifests children-first, the root last under the reference's tag, so the
registry never sees a manifest whose content it lacks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from berth import errdefs
from berth.core.content import Descriptor as ContentDescriptor
from berth.core.content import Store
from berth.core.images import mediatypes as mt
from berth.core.images.gclabels import mount_candidate
from berth.core.images.manifest import Descriptor
from berth.core.images.platforms import MatchComparer
from berth.core.images.walk import walk
from berth.core.remotes.progress import Labeler, NoLabels, Progress, ProgressFn, ref_key, report
from berth.core.remotes.reference import Reference
from berth.core.remotes.resolver import Pusher, Resolver, gather_limited

_READ_CHUNK = 1 << 20


async def push(
    resolver: Resolver,
    ref: str | Reference,
    store: Store,
    target: ContentDescriptor,
    *,
    platform: MatchComparer | None = None,
    labeler: Labeler | None = None,
    progress: ProgressFn | None = None,
    max_concurrent_uploads: int = 3,
    chunk_size: int = 0,
    skip_non_distributable: bool = True,
) -> Descriptor:
    """Push the image rooted at ``target`` from ``store`` to ``ref``; returns ``target``.

    ``platform`` limits which index entries are pushed (default: all).
    ``labeler`` supplies distribution-source labels for cross-repository
    mounts. ``chunk_size`` > 0 uploads blobs in chunks of that many bytes.
    Non-distributable layers are skipped unless ``skip_non_distributable``
    is False.

    Raises InvalidArgument (bad reference, or a digest reference that does
    not name ``target``), NotFound (content missing from the store), and the
    registry errors of :mod:`berth.core.remotes.errors`.
    """
    spec = ref if isinstance(ref, Reference) else Reference.parse(ref, default_tag=False)
    if spec.digest is not None and spec.digest != target.digest:
        raise errdefs.InvalidArgument(
            f"cannot push {target.digest} to {spec}: the reference pins another digest"
        )
    if max_concurrent_uploads < 1:
        raise errdefs.InvalidArgument("max_concurrent_uploads must be at least 1")
    labeler = labeler or NoLabels()
    descs = await asyncio.to_thread(walk, store, target, matcher=platform)
    manifests = [d for d in descs if mt.is_manifest_or_index(d.media_type)]
    blobs = [
        d
        for d in descs
        if not mt.is_manifest_or_index(d.media_type)
        and not (skip_non_distributable and mt.is_non_distributable(d.media_type))
    ]
    pusher = resolver.pusher(spec)

    def _report(desc: ContentDescriptor, status: Any, offset: int) -> None:
        report(progress, Progress(ref_key(desc), desc, status, offset, desc.size))

    for desc in blobs:
        _report(desc, "waiting", 0)

    async def push_one(desc: Descriptor) -> None:
        labels = await labeler.labels(desc.digest)
        source = mount_candidate(labels, spec.domain, spec.repository)
        _report(desc, "uploading", 0)
        outcome = await pusher.push_blob(
            desc,
            _store_reader(store, desc),
            mount_from=source,
            chunk_size=chunk_size,
            on_bytes=lambda n: _report(desc, "uploading", n),
        )
        _report(desc, "done" if outcome == "uploaded" else outcome, desc.size)

    await gather_limited(
        max_concurrent_uploads,
        [lambda d=d: push_one(d) for d in blobs],  # type: ignore[misc]
    )
    # Children before parents: the walk lists parents first.
    for desc in reversed(manifests):
        await _push_manifest(store, pusher, desc, target, spec, _report)
    return Descriptor.of(target)


async def _push_manifest(
    store: Store,
    pusher: Pusher,
    desc: Descriptor,
    target: ContentDescriptor,
    spec: Reference,
    report_fn: Any,
) -> None:
    is_root = desc.digest == target.digest
    tag = spec.tag if is_root else None
    if tag is None and await pusher.exists(desc):
        report_fn(desc, "exists", desc.size)
        return
    data = await asyncio.to_thread(store.read_blob, desc.digest)
    report_fn(desc, "uploading", 0)
    await pusher.push_manifest(desc, data, tag=tag)
    report_fn(desc, "done", desc.size)


def _store_reader(store: Store, desc: ContentDescriptor) -> Any:
    """A ``BlobReader`` streaming ``desc`` from ``store`` via worker threads."""

    async def read(offset: int, length: int) -> AsyncIterator[bytes]:
        ra = await asyncio.to_thread(store.reader_at, desc)
        try:
            pos, end = offset, offset + length
            while pos < end:
                chunk = await asyncio.to_thread(ra.read_at, pos, min(_READ_CHUNK, end - pos))
                if not chunk:
                    raise errdefs.FailedPrecondition(
                        f"content {desc.digest} in the store is shorter than {desc.size} bytes"
                    )
                pos += len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(ra.close)

    return read
