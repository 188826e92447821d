"""Registers the differs with berthd, under containerd's names.

* ``io.containerd.differ.v1.walking``: a :class:`WalkingDiffs` over the
  metadata store's namespaced content; config ``workers`` (extraction
  threads) and ``allow_device_nodes``.
* ``io.containerd.service.v1.diff-service``: a :class:`DiffService` trying the
  differs named in its ``default`` list in order (containerd's config key),
  moving on when one raises NotImplemented. The gRPC ``diff`` service and the
  unpacker use this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from berth import errdefs, plugin
from berth.config import doc
from berth.core.content import Descriptor
from berth.core.diff import Differ, ProgressFn
from berth.core.diff.content import NamespacedStore
from berth.core.mount import Mount

SERVICE_ID = "diff-service"


class DifferFactory(Protocol):
    """A loaded diff plugin: it hands out a :class:`Differ` per namespace."""

    def differ(self, namespace: str, *, lease: str | None = None) -> Differ: ...


@dataclass
class WalkingConfig:
    workers: int = doc("Threads creating files while a layer is applied (0: none).", 4)
    allow_device_nodes: bool = doc("Whether layers may create device nodes.", True)


class WalkingDiffs:
    """The walking differ for any namespace of the metadata content store."""

    def __init__(self, content: Any, config: WalkingConfig) -> None:
        self.content = content
        self.config = config

    def differ(self, namespace: str, *, lease: str | None = None) -> Differ:
        # The extractor (tarfile, the inflaters) loads with the first diff,
        # not at boot: an idle daemon never needs it.
        from berth.core.diff.walking import WalkingDiffer

        store = NamespacedStore(self.content, namespace, lease=lease)
        return WalkingDiffer(
            store, workers=self.config.workers, allow_devices=self.config.allow_device_nodes
        )


class _Ordered(Differ):
    """One namespace's differs, in order of preference.

    They are made at the first apply or compare, which callers run on worker
    threads: making the first walking differ imports the extractor (about
    40 ms), which must not stall the event loop.
    """

    def __init__(
        self, factories: Sequence[DifferFactory], namespace: str, lease: str | None
    ) -> None:
        self._factories = factories
        self._namespace = namespace
        self._lease = lease
        self._differs: list[Differ] | None = None

    @property
    def differs(self) -> list[Differ]:
        if self._differs is None:
            self._differs = [f.differ(self._namespace, lease=self._lease) for f in self._factories]
        return self._differs

    def apply(
        self, desc: Descriptor, mounts: Sequence[Mount], *, on_progress: ProgressFn | None = None
    ) -> Descriptor:
        err: errdefs.NotImplemented | None = None
        for d in self.differs:
            try:
                return d.apply(desc, mounts, on_progress=on_progress)
            except errdefs.NotImplemented as exc:
                err = exc
        raise err or errdefs.NotImplemented("no differ is loaded: not implemented")

    def compare(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        *,
        media_type: str = "",
        ref: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Descriptor:
        err: errdefs.NotImplemented | None = None
        for d in self.differs:
            try:
                return d.compare(lower, upper, media_type=media_type, ref=ref, labels=labels)
            except errdefs.NotImplemented as exc:
                err = exc
        raise err or errdefs.NotImplemented("no differ is loaded: not implemented")


class DiffService:
    """The differs in order of preference."""

    def __init__(self, factories: Sequence[DifferFactory]) -> None:
        self.factories = list(factories)

    def differ(self, namespace: str, *, lease: str | None = None) -> Differ:
        """A :class:`Differ` for ``namespace`` whose writes join ``lease``."""
        return _Ordered(self.factories, namespace, lease)


@dataclass
class DiffServiceConfig:
    default: list[str] = doc("Differs to try, in order.", default_factory=lambda: ["walking"])


def _init_walking(ic: plugin.InitContext) -> WalkingDiffs:
    md: Any = ic.get(plugin.METADATA)
    content = md.require_content()
    ic.meta.platforms.append(("linux", _arch(), ""))
    return WalkingDiffs(content, ic.config or WalkingConfig())


def _init_service(ic: plugin.InitContext) -> DiffService:
    cfg: DiffServiceConfig = ic.config or DiffServiceConfig()
    loaded = ic.get_all(plugin.DIFF)
    ordered = []
    for name in cfg.default:
        if name not in loaded:
            raise errdefs.FailedPrecondition(f"needed differ not loaded: {name}")
        ordered.append(loaded[name])
    return DiffService(ordered)


def _arch() -> str:
    import platform

    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


WALKING_REGISTRATION = plugin.register(
    plugin.Registration(
        type=plugin.DIFF,
        id="walking",
        init=_init_walking,
        requires=(plugin.METADATA,),
        config=WalkingConfig,
    )
)

SERVICE_REGISTRATION = plugin.register(
    plugin.Registration(
        type=plugin.SERVICE,
        id=SERVICE_ID,
        init=_init_service,
        requires=(plugin.DIFF,),
        config=DiffServiceConfig,
    )
)
