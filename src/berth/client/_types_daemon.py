"""The daemon's records of :mod:`berth.client.types`: version, plugins, namespaces, resources.

Private: import them from :mod:`berth.client.types`, which loads this module
the first time one of them is named.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The text containerd puts in a plugin's init error when the plugin chose not to
#: load (``plugin.ErrSkipPlugin``); ``ctr plugins ls`` shows such plugins as "skip".
_SKIP_PLUGIN = "skip plugin"


@dataclass(frozen=True, slots=True)
class Version:
    """What the daemon's Version service reports."""

    version: str
    revision: str


@dataclass(frozen=True, slots=True)
class Platform:
    """An OCI platform as the daemon reports it for a plugin."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        # containerd's platforms.Format: os/arch[/variant], "unknown" for a blank OS.
        parts = [self.os or "unknown", self.architecture]
        if self.variant:
            parts.append(self.variant)
        return "/".join(parts)


@dataclass(frozen=True, slots=True)
class PluginError:
    """Why a plugin failed to initialise: a gRPC status code and its message."""

    code: int
    message: str


@dataclass(frozen=True, slots=True)
class Plugin:
    """One plugin loaded (or not) by the daemon, as the Introspection service lists it."""

    type: str
    id: str
    requires: tuple[str, ...] = ()
    platforms: tuple[Platform, ...] = ()
    exports: dict[str, str] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ()
    init_error: PluginError | None = None

    @property
    def status(self) -> str:
        """``ok``, ``skip`` or ``error``, by the rule ``ctr plugins ls`` applies."""
        if self.init_error is None:
            return "ok"
        if _SKIP_PLUGIN in self.init_error.message:
            return "skip"
        return "error"


@dataclass(frozen=True, slots=True)
class Namespace:
    """A namespace and its labels."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource held by a lease.

    ``type`` is ``content`` (id: a digest), ``ingests`` (id: an ingest ref) or
    ``snapshots/<snapshotter>`` (id: a snapshot key).
    """

    id: str
    type: str


# Public under berth.client.types (see there): repr, pickle and type hints name that home.
for _cls in (Version, Platform, PluginError, Plugin, Namespace, Resource):
    _cls.__module__ = "berth.client.types"
del _cls
