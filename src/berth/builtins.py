"""The plugins compiled into berthd. Importing a module registers its plugins."""

from __future__ import annotations

import importlib

MODULES = (
    "berth.core.events.plugin",
    "berth.core.metadata.plugin",
    "berth.services.version",
    "berth.services.namespaces",
    "berth.services.leases",
    "berth.services.content",
    "berth.services.images",
    "berth.services.transfer",
    "berth.core.snapshots.plugin",
    "berth.services.snapshots",
    "berth.core.diff.plugin",
    "berth.services.diff",
    "berth.core.unpack",
    "berth.core.metadata.containers",
    "berth.services.containers",
    "berth.services.events",
    "berth.core.runtime.plugin",
    "berth.services.tasks",
    "berth.services.introspection",
)


def load() -> None:
    for name in MODULES:
        importlib.import_module(name)
