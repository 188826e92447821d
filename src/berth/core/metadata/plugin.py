"""Registers the metadata store and the plugins it is built from and drives.

* ``io.containerd.content.v1.content``: the blob store (a
  :class:`~berth.core.content.LocalStore` rooted at the plugin's own
  directory, so ``blobs/`` and ``ingest/`` sit where containerd puts them).
* ``io.containerd.metadata.v1.sqlite``: a :class:`Metadata` -- the SQLite
  database together with the namespaced stores over it (content, images) and
  the garbage :class:`~berth.core.metadata.gc.Collector`. It is a ``DB``, so
  services written against the plain database keep working.
* ``io.containerd.gc.v1.scheduler``: decides when to collect, with
  containerd's configuration keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from berth import plugin
from berth.config import doc
from berth.core.content import LocalStore
from berth.core.metadata.content import ContentKind, ContentStore, IngestKind
from berth.core.metadata.db import DB
from berth.core.metadata.gc import Collector, LeaseKind, Scheduler, SchedulerConfig, parse_duration
from berth.core.metadata.images import ImageKind, ImageStore


class Metadata(DB):
    """The metadata plugin's instance: the database and what is built on it.

    ``content`` is None only when no content plugin loaded. Other subsystems
    join garbage collection with ``metadata.collector.register(kind)``.
    """

    def __init__(self, path: Path, backend: LocalStore | None, *, shared: bool = True) -> None:
        super().__init__(path)
        self.collector = Collector(self)
        self.content: ContentStore | None = None
        if backend is not None:
            self.content = ContentStore(self, backend, shared=shared, collector=self.collector)
            self.collector.register(ContentKind(self.content))
            self.collector.register(IngestKind(self.content))
        self.images = ImageStore(self, collector=self.collector)
        self.collector.register(ImageKind())
        self.collector.register(LeaseKind())

    def require_content(self) -> ContentStore:
        """The namespaced content store; FailedPrecondition if none is loaded."""
        from berth import errdefs

        if self.content is None:
            raise errdefs.FailedPrecondition("no content store plugin is loaded")
        return self.content


@dataclass
class MetadataConfig:
    # containerd names this "content_sharing_policy"; the value set matches.
    content_sharing_policy: str = doc(
        "Whether blobs are shared across namespaces: shared or isolated.", "shared"
    )

    def validate(self, file: str, prefix: str) -> None:
        from berth.config import ConfigError

        if self.content_sharing_policy not in ("shared", "isolated"):
            raise ConfigError(
                f"{file}: {prefix}.content_sharing_policy: {self.content_sharing_policy!r}"
                " must be shared or isolated"
            )


def _init_content(ic: plugin.InitContext) -> LocalStore:
    ic.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return LocalStore(ic.root)


def _init(ic: plugin.InitContext) -> Metadata:
    ic.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    backend: LocalStore | None
    try:
        backend = ic.get(plugin.CONTENT)
    except Exception:
        backend = None  # disabled or failed content plugin: metadata still serves
    cfg: MetadataConfig = ic.config or MetadataConfig()
    return Metadata(ic.root / "meta.db", backend, shared=cfg.content_sharing_policy == "shared")


def _close(db: DB) -> None:
    db.close()


CONTENT_REGISTRATION = plugin.register(
    plugin.Registration(type=plugin.CONTENT, id="content", init=_init_content)
)

REGISTRATION = plugin.register(
    plugin.Registration(
        type=plugin.METADATA,
        id="sqlite",
        init=_init,
        requires=(plugin.CONTENT, plugin.EVENT, plugin.SNAPSHOT),
        config=MetadataConfig,
        close=_close,
    )
)


@dataclass
class GCConfig:
    pause_threshold: float = doc(
        "Largest fraction of time scheduled collections may take (at most 0.5).", 0.02
    )
    deletion_threshold: int = doc(
        "Deletions that force a collection; 0: any deletion schedules one.", 0
    )
    mutation_threshold: int = doc(
        "Writes after which the next scheduled check collects; 0 disables.", 100
    )
    schedule_delay: str = doc("Delay before a triggered collection (Go duration).", "0ms")
    startup_delay: str = doc("Delay before the first collection after start.", "100ms")

    def validate(self, file: str, prefix: str) -> None:
        from berth.config import ConfigError

        for key in ("schedule_delay", "startup_delay"):
            try:
                parse_duration(getattr(self, key))
            except ValueError as exc:
                raise ConfigError(f"{file}: {prefix}.{key}: {exc}") from None

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(
            pause_threshold=self.pause_threshold,
            deletion_threshold=self.deletion_threshold,
            mutation_threshold=self.mutation_threshold,
            schedule_delay=parse_duration(self.schedule_delay),
            startup_delay=parse_duration(self.startup_delay),
        )


def _init_gc(ic: plugin.InitContext) -> Scheduler:
    md: Metadata = ic.get(plugin.METADATA)
    cfg: GCConfig = ic.config or GCConfig()
    sched = Scheduler(md.collector.collect, cfg.scheduler_config())
    md.collector.register_mutation_callback(sched.on_mutation)
    ic.meta.exports = sched.exports()
    sched.start()
    return sched


async def _close_gc(sched: Scheduler) -> None:
    await sched.close()


GC_REGISTRATION = plugin.register(
    plugin.Registration(
        type=plugin.GC,
        id="scheduler",
        init=_init_gc,
        requires=(plugin.METADATA,),
        config=GCConfig,
        close=_close_gc,
    )
)
