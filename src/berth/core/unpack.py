"""Unpacking images: layer blobs into committed snapshots keyed by chain ID.

For each layer, in order (containerd's ``unpacker.go`` / ``rootfs.ApplyLayer``):

1. if a snapshot named by the layer's chain ID exists, the layer is already
   unpacked (by this image or another sharing its base) and is skipped;
2. otherwise an active snapshot ``extract-<unique> <chainID>`` is prepared
   over the parent chain ID, labelled ``containerd.io/snapshot.ref=<chainID>``
   (plus any ``containerd.io/snapshot/*`` annotations of the layer);
3. the differ applies the blob onto its mounts; the diff ID it computes must
   equal the one in the image config;
4. the active snapshot is committed as the chain ID, and the layer's content
   gets ``containerd.io/uncompressed=<diffID>``.

Any failure removes the active snapshot, so a hostile or corrupt layer leaves
nothing half-applied behind. Losing a race (another unpack committed the same
chain ID first) is not an error.

Finally the image config gets ``containerd.io/gc.ref.snapshot.<snapshotter>=
<top chainID>``, the label containerd sets, which keeps the snapshot chain
alive as long as the image is. During a pull this label is moved up after
every layer, so a partly unpacked image also protects what it has.

Two entry points: :meth:`Unpacker.unpack` for an image already in the content
store, and :meth:`Unpacker.layer_hook` for the pull pipeline, which calls it as
each layer lands so layer N is applied while N+1 downloads. The module also
registers the ``io.berth.unpacker.v1`` plugin through which berthd's transfer
service finds it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from berth import errdefs, plugin
from berth.core.content import Descriptor, Digest, Info, Store
from berth.core.diff import UNCOMPRESSED_LABEL, Differ
from berth.core.metadata.gc import LABEL_REF_SNAPSHOT
from berth.core.snapshots import INHERITED_LABEL_PREFIX, SNAPSHOT_REF_LABEL, Snapshotter

if TYPE_CHECKING:
    # Only named in annotations: importing the registry client (httpx) or the
    # image model (manifests, platforms) at plugin registration would load
    # them into an idle daemon; they load with the first pull or unpack, on
    # the worker thread doing it.
    from berth.core.images.platforms import MatchComparer
    from berth.core.remotes import LayerToUnpack, UnpackFn

log = logging.getLogger("berth.unpack")

#: containerd's ``snapshots.UnpackKeyPrefix``: keys of snapshots being unpacked.
UNPACK_KEY_PREFIX = "extract"
_PREPARE_TRIES = 3

__all__ = ["UNPACK_KEY_PREFIX", "UnpackResult", "Unpacker", "unpack_key"]


def unpack_key(chain_id: Digest | str) -> str:
    """A fresh active-snapshot key for unpacking ``chain_id`` (containerd's format)."""
    unique = f"{time.time_ns() % 1_000_000_000}-{base64.urlsafe_b64encode(secrets.token_bytes(3)).decode()}"
    return f"{UNPACK_KEY_PREFIX}-{unique} {chain_id}"


@dataclass(frozen=True)
class UnpackResult:
    """What :meth:`Unpacker.unpack` did: the top chain ID, and which layers
    were applied (the others already existed)."""

    chain_id: Digest
    applied: tuple[Digest, ...]


class Unpacker:
    """Unpacks into one namespace's ``snapshotter`` (named ``snapshotter_name``).

    ``snapshotter`` and ``differ`` should be bound to the same namespace and
    lease as ``content``, so everything created is protected until the image
    record (or the lease) keeps it. Methods block; see :meth:`layer_hook`
    for the async one.
    """

    def __init__(
        self,
        *,
        snapshotter: Snapshotter,
        snapshotter_name: str,
        differ: Differ,
        content: Store,
    ) -> None:
        self.sn = snapshotter
        self.sn_name = snapshotter_name
        self.differ = differ
        self.content = content

    # -- one layer -------------------------------------------------------------

    def _exists(self, chain_id: Digest) -> bool:
        try:
            self.sn.stat(str(chain_id))
        except errdefs.NotFound:
            return False
        return True

    def apply_layer(
        self,
        layer: Descriptor,
        diff_id: Digest,
        chain_id: Digest,
        parent: Digest | None,
    ) -> bool:
        """Make committed snapshot ``chain_id`` from ``parent`` plus ``layer``.

        Returns False when it already existed (nothing applied). Raises what
        preparing, applying (InvalidArgument for hostile or corrupt layers)
        and committing raise; InvalidArgument if the computed diff ID is not
        ``diff_id``. After an error no active snapshot is left behind.
        """
        if self._exists(chain_id):
            return False
        labels = {
            k: v for k, v in layer.annotations.items() if k.startswith(INHERITED_LABEL_PREFIX)
        }
        labels[SNAPSHOT_REF_LABEL] = str(chain_id)
        key = ""
        mounts = None
        for _ in range(_PREPARE_TRIES):
            key = unpack_key(chain_id)
            try:
                mounts = self.sn.prepare(key, str(parent) if parent else "", labels=labels)
                break
            except errdefs.AlreadyExists:
                # Either our random key clashed, or someone else unpacked the
                # layer meanwhile (the target-ref label makes prepare say so).
                if self._exists(chain_id):
                    return False
        if mounts is None:
            raise errdefs.FailedPrecondition(
                f"unable to prepare extraction snapshot for {chain_id}: keys kept clashing"
            )
        try:
            applied = self.differ.apply(layer, mounts)
            if applied.digest != diff_id:
                raise errdefs.InvalidArgument(
                    f"wrong diff id calculated on extraction of layer {layer.digest}: "
                    f"the image config says {diff_id}, the layer holds {applied.digest}"
                )
            self.sn.commit(str(chain_id), key, labels=labels)
        except errdefs.AlreadyExists:
            self._abort(key)
            return False
        except BaseException:
            self._abort(key)
            raise
        self._label(layer.digest, UNCOMPRESSED_LABEL, str(diff_id))
        return True

    def _abort(self, key: str) -> None:
        try:
            self.sn.remove(key)
        except Exception as exc:  # the original error matters more
            log.error("failed to remove extraction snapshot %r: %s", key, exc)

    def _label(self, digest: Digest, key: str, value: str) -> None:
        now = datetime.now(UTC)
        self.content.update(Info(digest, 0, now, now, {key: value}), [f"labels.{key}"])

    def mark_image(self, config: Descriptor | Digest, chain_id: Digest) -> None:
        """Label the image config so GC keeps snapshot ``chain_id`` (and its
        parents) as long as the image: ``containerd.io/gc.ref.snapshot.<sn>``."""
        digest = config.digest if isinstance(config, Descriptor) else config
        self._label(digest, LABEL_REF_SNAPSHOT + self.sn_name, str(chain_id))

    # -- whole images ------------------------------------------------------------

    def unpack_layers(
        self, layers: Sequence[Descriptor], diff_ids: Sequence[Digest], config: Descriptor
    ) -> UnpackResult:
        """Apply ``layers`` (bottom first) and mark ``config``. Blocking."""
        if len(layers) != len(diff_ids):
            raise errdefs.InvalidArgument(
                f"number of layers and diffIDs don't match: {len(layers)} != {len(diff_ids)}"
            )
        if not layers:
            raise errdefs.InvalidArgument("image has no layers to unpack")
        from berth.core.images.rootfs import chain_ids

        chains = chain_ids(diff_ids)
        applied: list[Digest] = []
        for i, layer in enumerate(layers):
            parent = chains[i - 1] if i else None
            if self.apply_layer(layer, Digest.parse(diff_ids[i]), chains[i], parent):
                applied.append(chains[i])
        self.mark_image(config, chains[-1])
        return UnpackResult(chains[-1], tuple(applied))

    def unpack(self, target: Descriptor, platform: MatchComparer) -> UnpackResult:
        """Unpack the image ``target`` (a manifest or index in the content
        store) for ``platform``. Blocking. Raises NotFound (no manifest for
        the platform, missing content) and what :meth:`apply_layer` raises."""
        from berth.core.images.walk import image_config, manifest_for_platform

        resolved = manifest_for_platform(self.content, target, platform)
        config = image_config(self.content, resolved.manifest.config)
        return self.unpack_layers(
            list(resolved.manifest.layers), list(config.diff_ids), resolved.manifest.config
        )

    # -- the pull pipeline -----------------------------------------------------

    async def layer_hook(self, item: LayerToUnpack) -> None:
        """The pull pipeline's per-layer callback (:data:`berth.core.remotes.UnpackFn`)."""

        def run() -> None:
            self.apply_layer(item.layer, item.diff_id, item.chain_id, item.parent_chain_id)
            self.mark_image(item.config, item.chain_id)

        await asyncio.to_thread(run)


# ---------------------------------------------------------------------------
# Registration: the factory berthd's transfer service asks for per pull.

UNPACKER_PLUGIN_TYPE = "io.berth.unpacker.v1"  # berth.core.transfer's seam


class UnpackerFactory:
    """Builds the per-layer callback for one pull (``berth.core.transfer``'s
    ``UnpackerFactory``), and :class:`Unpacker` objects for other callers."""

    def __init__(self, snapshotters: Mapping[str, Any], diffs: Any) -> None:
        self.snapshotters = snapshotters
        self.diffs = diffs

    def unpacker(
        self, namespace: str, snapshotter: str, content: Store, *, lease: str | None = None
    ) -> Unpacker:
        """Raises InvalidArgument for an unknown snapshotter."""
        owner = self.snapshotters.get(snapshotter)
        if owner is None:
            raise errdefs.InvalidArgument(
                f"snapshotter not loaded: {snapshotter}: invalid argument"
            )
        return Unpacker(
            snapshotter=owner.namespaced(namespace, lease=lease),
            snapshotter_name=snapshotter,
            differ=self.diffs.differ(namespace, lease=lease),
            content=content,
        )

    def __call__(self, ctx: Any) -> UnpackFn:
        """``ctx`` is a ``berth.core.transfer.UnpackContext``."""
        u = self.unpacker(ctx.namespace, ctx.snapshotter, ctx.content, lease=ctx.lease)
        return u.layer_hook


def _init(ic: plugin.InitContext) -> UnpackerFactory:
    from berth.core.diff.plugin import SERVICE_ID as DIFF_SERVICE
    from berth.core.snapshots.plugin import SERVICE_ID as SNAPSHOTS_SERVICE

    return UnpackerFactory(
        ic.get_by_id(plugin.SERVICE, SNAPSHOTS_SERVICE), ic.get_by_id(plugin.SERVICE, DIFF_SERVICE)
    )


REGISTRATION = plugin.register(
    plugin.Registration(
        type=UNPACKER_PLUGIN_TYPE, id="unpacker", init=_init, requires=(plugin.SERVICE,)
    )
)
