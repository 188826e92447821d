"""The typed plugin registry: how berthd is assembled.

Every subsystem registers itself under a containerd-style type and id (for
example ``io.containerd.grpc.v1.namespaces``), names the plugin *types* it
requires, and supplies an init function. berthd orders the registrations so
that requirements come first, initialises each with an ``InitContext`` (its own
root and state dirs, its config section, access to what is already loaded), and
records the outcome. A plugin that is disabled, or whose init fails, is recorded
as skipped or errored and boot goes on, unless the config lists it as required.
That is what ``ctr plugins ls`` shows.
"""

from __future__ import annotations

import builtins
import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berth import errdefs

log = logging.getLogger("berth.plugin")

# Plugin types, named as containerd names them so introspection output matches.
INTERNAL = "io.containerd.internal.v1"
RUNTIME_V2 = "io.containerd.runtime.v2"
SERVICE = "io.containerd.service.v1"
GRPC = "io.containerd.grpc.v1"
SNAPSHOT = "io.containerd.snapshotter.v1"
TASK_MONITOR = "io.containerd.monitor.v1"
DIFF = "io.containerd.differ.v1"
METADATA = "io.containerd.metadata.v1"
CONTENT = "io.containerd.content.v1"
GC = "io.containerd.gc.v1"
EVENT = "io.containerd.event.v1"
LEASE = "io.containerd.lease.v1"

ALL = "*"  # a requirement on every other plugin type (used by introspection)

SKIP_MESSAGE = "skip plugin"  # ctr keys its "skip" status on this text


class SkipPlugin(errdefs.FailedPrecondition):
    """Raised by an init function when the plugin does not apply on this host."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{SKIP_MESSAGE}: {reason}")


@dataclass(frozen=True)
class Registration:
    """A plugin's static description."""

    type: str
    id: str
    init: Callable[[InitContext], Any | Awaitable[Any]]
    requires: tuple[str, ...] = ()
    # A dataclass whose defaults are the plugin's default config section.
    config: builtins.type | None = None
    # Closes the instance at shutdown, when the instance needs it.
    close: Callable[[Any], Any | Awaitable[Any]] | None = None

    @property
    def uri(self) -> str:
        return f"{self.type}.{self.id}"


@dataclass
class Plugin:
    """A registration's outcome: its instance or its init error."""

    registration: Registration
    instance: Any = None
    error: BaseException | None = None
    exports: dict[str, str] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)
    platforms: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class InitContext:
    """What an init function may use."""

    registration: Registration
    root: Path
    state: Path
    config: Any
    address: str
    ttrpc_address: str
    plugins: PluginSet
    meta: Plugin

    def get(self, type_: str) -> Any:
        """The first loaded plugin instance of ``type_``; NotFound if none loaded."""
        return self.plugins.get(type_)

    def get_by_id(self, type_: str, id_: str) -> Any:
        return self.plugins.get_by_id(type_, id_)

    def get_all(self, type_: str) -> dict[str, Any]:
        return self.plugins.get_all(type_)


class PluginSet:
    """The plugins initialised so far, in init order."""

    def __init__(self) -> None:
        self.ordered: list[Plugin] = []

    def add(self, p: Plugin) -> None:
        self.ordered.append(p)

    def get(self, type_: str) -> Any:
        for p in self.ordered:
            if p.registration.type == type_ and p.ok:
                return p.instance
        raise errdefs.NotFound(f"no plugins registered for {type_}")

    def get_by_id(self, type_: str, id_: str) -> Any:
        for p in self.ordered:
            if p.registration.type == type_ and p.registration.id == id_:
                if not p.ok:
                    raise errdefs.FailedPrecondition(
                        f"plugin {p.registration.uri} failed: {p.error}"
                    )
                return p.instance
        raise errdefs.NotFound(f"plugin {type_}.{id_} not found")

    def get_all(self, type_: str) -> dict[str, Any]:
        return {
            p.registration.id: p.instance
            for p in self.ordered
            if p.registration.type == type_ and p.ok
        }


_registry: list[Registration] = []


def register(reg: Registration) -> Registration:
    """Add a registration; ids are unique per type."""
    if not reg.type or not reg.id:
        raise errdefs.InvalidArgument("plugin type and id are required")
    for r in _registry:
        if r.uri == reg.uri:
            raise errdefs.AlreadyExists(f"plugin {reg.uri} already registered")
    _registry.append(reg)
    return reg


def registrations() -> list[Registration]:
    return list(_registry)


def ordered(regs: Iterable[Registration]) -> list[Registration]:
    """Order registrations so that every plugin follows the types it requires.

    Like containerd, requirements name types, not ids, and registration order
    breaks ties. ``*`` puts a plugin after every other one. Unsatisfiable or
    circular requirements raise InvalidArgument.
    """
    pending = list(regs)
    done: list[Registration] = []
    while pending:
        progressed = False
        for reg in list(pending):
            others = [r for r in pending if r is not reg]
            if ALL in reg.requires:
                blocked = any(ALL not in r.requires for r in others)
            else:
                blocked = any(r.type in reg.requires for r in others)
            if not blocked:
                done.append(reg)
                pending.remove(reg)
                progressed = True
                break
        if not progressed:
            names = ", ".join(r.uri for r in pending)
            raise errdefs.InvalidArgument(f"circular plugin requirements among: {names}")
    return done


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


async def load(
    regs: Iterable[Registration],
    *,
    root: Path,
    state: Path,
    address: str,
    ttrpc_address: str,
    configs: dict[str, Any],
    disabled: Iterable[str] = (),
    required: Iterable[str] = (),
) -> PluginSet:
    """Initialise ``regs`` in dependency order and return the resulting set.

    ``configs`` maps plugin URIs to config objects (defaults are used for the
    rest). Raises FailedPrecondition when a required plugin is disabled or fails.
    """
    disabled_set = set(disabled)
    required_set = set(required)
    plugins = PluginSet()
    for reg in ordered(regs):
        meta = Plugin(reg)
        if reg.uri in disabled_set:
            # Disabled plugins are not loaded at all, as in containerd, but are
            # still visible so an operator can see why something is missing.
            meta.error = SkipPlugin("disabled in configuration")
            plugins.add(meta)
            log.info("plugin disabled", extra={"fields": {"id": reg.uri}})
            continue
        cfg = configs.get(reg.uri)
        if cfg is None and reg.config is not None:
            cfg = reg.config()
        ctx = InitContext(
            registration=reg,
            root=root / reg.uri,
            state=state / reg.uri,
            config=cfg,
            address=address,
            ttrpc_address=ttrpc_address,
            plugins=plugins,
            meta=meta,
        )
        log.debug("loading plugin", extra={"fields": {"id": reg.uri}})
        try:
            meta.instance = await _maybe_await(reg.init(ctx))
        except SkipPlugin as exc:
            meta.error = exc
            log.info("skip loading plugin", extra={"fields": {"id": reg.uri, "reason": str(exc)}})
        except Exception as exc:
            # A bare exception (an assert, a KeyError) has no useful str():
            # name its type so `ctr plugins ls -d` and the log still say something.
            meta.error = exc if str(exc) else RuntimeError(f"{type(exc).__name__} in {reg.uri}")
            log.warning(
                "failed to load plugin",
                exc_info=not isinstance(exc, errdefs.BerthError),
                extra={"fields": {"id": reg.uri, "error": str(meta.error)}},
            )
        plugins.add(meta)
    missing = []
    for uri in sorted(required_set):
        found = [p for p in plugins.ordered if p.registration.uri == uri]
        if not found:
            missing.append(f"{uri} (not registered)")
        elif not found[0].ok:
            missing.append(f"{uri} ({found[0].error})")
    if missing:
        await close_all(plugins)
        raise errdefs.FailedPrecondition("required plugins failed to load: " + "; ".join(missing))
    return plugins


async def close_all(plugins: PluginSet) -> None:
    """Close loaded instances in reverse init order; errors are logged, not raised."""
    for p in reversed(plugins.ordered):
        if p.ok and p.registration.close is not None and p.instance is not None:
            try:
                await _maybe_await(p.registration.close(p.instance))
            except Exception as exc:
                log.warning(
                    "failed to close plugin",
                    extra={"fields": {"id": p.registration.uri, "error": str(exc)}},
                )


def config_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of a plugin config dataclass (helper for config rendering)."""
    return list(dataclasses.fields(cls))
