"""Registers the snapshotters with berthd, and the namespaced map over them.

* ``io.containerd.snapshotter.v1.overlayfs`` and ``io.containerd.snapshotter.v1.native``:
  backends rooted at their plugin directory (or ``root_path``), as in
  containerd. overlayfs is skipped on hosts without overlay support.
* ``io.containerd.service.v1.snapshots-service``: a :class:`Snapshotters`
  mapping of snapshotter name to :class:`MetadataSnapshotter`. This is what
  every consumer (the gRPC service, unpacking, containers) uses; it also joins
  the snapshots to garbage collection when the metadata store has a collector.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth import errdefs, plugin
from berth.config import doc
from berth.core.snapshots import Snapshotter
from berth.core.snapshots.metadata import MetadataSnapshotter, SnapshotKind
from berth.core.snapshots.native import NativeSnapshotter
from berth.core.snapshots.overlay import OverlaySnapshotter

SERVICE_ID = "snapshots-service"
DEFAULT_SNAPSHOTTER = "overlayfs"


@dataclass
class SnapshotterConfig:
    root_path: str = doc("Directory for this snapshotter's data; empty means its plugin dir.", "")


def _root(ic: plugin.InitContext) -> Path:
    cfg: SnapshotterConfig = ic.config or SnapshotterConfig()
    root = Path(cfg.root_path) if cfg.root_path else ic.root
    ic.meta.exports["root"] = str(root)
    return root


def _overlay_supported() -> bool:
    try:
        with open("/proc/filesystems", encoding="ascii") as f:
            return any(line.split()[-1] == "overlay" for line in f if line.strip())
    except OSError:
        return False


def _init_overlay(ic: plugin.InitContext) -> OverlaySnapshotter:
    if not _overlay_supported():
        # The module may still autoload; try it once before giving up.
        import subprocess

        subprocess.run(["modprobe", "overlay"], capture_output=True, check=False)
        if not _overlay_supported():
            raise plugin.SkipPlugin("overlayfs is not supported by this kernel")
    ic.meta.platforms.append(("linux", _arch(), ""))
    return OverlaySnapshotter(_root(ic))


def _init_native(ic: plugin.InitContext) -> NativeSnapshotter:
    ic.meta.platforms.append(("linux", _arch(), ""))
    return NativeSnapshotter(_root(ic))


def _arch() -> str:
    import platform

    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _close(sn: Snapshotter) -> None:
    sn.close()


class Snapshotters(Mapping[str, MetadataSnapshotter]):
    """Loaded snapshotters by name (``overlayfs``, ``native``)."""

    def __init__(self, items: Mapping[str, MetadataSnapshotter]) -> None:
        self._items = dict(items)

    def __getitem__(self, name: str) -> MetadataSnapshotter:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get_required(self, name: str) -> MetadataSnapshotter:
        """The snapshotter ``name``, with containerd's InvalidArgument errors."""
        if not name:
            raise errdefs.InvalidArgument("snapshotter argument missing: invalid argument")
        sn = self._items.get(name)
        if sn is None:
            raise errdefs.InvalidArgument(f"snapshotter not loaded: {name}: invalid argument")
        return sn


def _init_service(ic: plugin.InitContext) -> Snapshotters:
    md: Any = ic.get(plugin.METADATA)
    collector = getattr(md, "collector", None)
    items = {
        name: MetadataSnapshotter(md, name, backend, collector=collector)
        for name, backend in ic.get_all(plugin.SNAPSHOT).items()
    }
    if collector is not None:
        collector.register(SnapshotKind(items))
    return Snapshotters(items)


for _id, _init in (("overlayfs", _init_overlay), ("native", _init_native)):
    plugin.register(
        plugin.Registration(
            type=plugin.SNAPSHOT,
            id=_id,
            init=_init,
            config=SnapshotterConfig,
            close=_close,
        )
    )

SERVICE_REGISTRATION = plugin.register(
    plugin.Registration(
        type=plugin.SERVICE,
        id=SERVICE_ID,
        init=_init_service,
        requires=(plugin.METADATA, plugin.SNAPSHOT),
    )
)
