"""Registers the metadata store as plugin ``io.containerd.metadata.v1.sqlite``."""

from __future__ import annotations

from dataclasses import dataclass

from berth import plugin
from berth.config import doc
from berth.core.metadata.db import DB


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


def _init(ic: plugin.InitContext) -> DB:
    ic.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return DB(ic.root / "meta.db")


def _close(db: DB) -> None:
    db.close()


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
