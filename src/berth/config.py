"""berthd's config.toml: containerd's ``version = 2`` schema where it applies.

The schema is a tree of dataclasses whose field metadata carries the
documentation, so the same source yields validation (unknown keys and bad values
fail with the file, the key and why), ``berthd config default`` (every key with
its default and a comment) and ``berthd config dump`` (the effective config).
Plugin sections live under ``[plugins."<type>.<id>"]`` and are checked against
each plugin's own config dataclass.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berth import errdefs
from berth.plugin import Registration

DEFAULT_ROOT = "/var/lib/berth"
DEFAULT_STATE = "/run/berth"
DEFAULT_ADDRESS = "/run/berth/berth.sock"
DEFAULT_CONFIG_PATH = "/etc/berth/config.toml"
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "panic")


def doc(text: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A dataclass field carrying its documentation for ``config default``."""
    if default is dataclasses.MISSING:
        return field(metadata={"doc": text}, **kw)
    return field(default=default, metadata={"doc": text}, **kw)


class ConfigError(errdefs.InvalidArgument):
    """A config file that cannot be used; the message names file, key and reason."""


@dataclass
class GRPCConfig:
    address: str = doc("Unix socket the gRPC API listens on.", DEFAULT_ADDRESS)
    uid: int = doc("Owner uid of the socket.", 0)
    gid: int = doc("Group of the socket; members may use the API (mode 0660).", 0)
    max_recv_message_size: int = doc("Largest request accepted, in bytes.", 16 << 20)
    max_send_message_size: int = doc("Largest response sent, in bytes.", 16 << 20)


@dataclass
class TTRPCConfig:
    address: str = doc(
        "Unix socket shims publish events to; empty means the gRPC address plus '.ttrpc'.", ""
    )
    uid: int = doc("Owner uid of the ttrpc socket.", 0)
    gid: int = doc("Group of the ttrpc socket.", 0)


@dataclass
class DebugConfig:
    level: str = doc("Log level: trace, debug, info, warn, error.", "info")
    format: str = doc("Log format: text (logfmt) or json.", "text")


@dataclass
class MetricsConfig:
    address: str = doc("host:port for a Prometheus /v1/metrics endpoint; empty disables it.", "")
    grpc_histogram: bool = doc("Record gRPC latency histograms.", False)


@dataclass
class CgroupConfig:
    path: str = doc("cgroup the daemon moves itself into; empty leaves it where it is.", "")


@dataclass
class ProxyPlugin:
    type: str = doc("Plugin kind served by the proxy: snapshot or content.", "")
    address: str = doc("Unix socket of the gRPC server that implements it.", "")


@dataclass
class Config:
    version: int = doc("Schema version; Berth reads containerd's version 2.", 2)
    root: str = doc("Persistent data: content, snapshots, metadata (mode 0700).", DEFAULT_ROOT)
    state: str = doc("Transient state: sockets, bundles (mode 0711).", DEFAULT_STATE)
    temp: str = doc("Directory for temporary mounts and files; empty means the OS default.", "")
    oom_score: int = doc("OOM score adjustment applied to berthd itself.", 0)
    disabled_plugins: list[str] = doc("Plugins (by full id) not to load.", default_factory=list)
    required_plugins: list[str] = doc(
        "Plugins (by full id) that must load, or berthd refuses to start.", default_factory=list
    )
    grpc: GRPCConfig = doc("gRPC API socket.", default_factory=GRPCConfig)
    ttrpc: TTRPCConfig = doc("ttrpc socket for shim events.", default_factory=TTRPCConfig)
    debug: DebugConfig = doc("Logging.", default_factory=DebugConfig)
    metrics: MetricsConfig = doc("Prometheus metrics.", default_factory=MetricsConfig)
    cgroup: CgroupConfig = doc("The daemon's own cgroup.", default_factory=CgroupConfig)
    timeouts: dict[str, str] = doc(
        'Named timeouts, as Go-style durations (e.g. "io.containerd.timeout.shim.cleanup" = "5s").',
        default_factory=dict,
    )
    proxy_plugins: dict[str, ProxyPlugin] = doc(
        "External plugins reached over gRPC, by name.", default_factory=dict
    )
    # Not a schema field of its own: filled from [plugins."<uri>"] by load().
    plugins: dict[str, Any] = field(default_factory=dict, metadata={"doc": "", "plugins": True})

    @property
    def ttrpc_address(self) -> str:
        return self.ttrpc.address or self.grpc.address + ".ttrpc"


# ---------------------------------------------------------------------------
# decoding


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return "list of " + _type_name(typing.get_args(tp)[0]) + "s"
    if origin is dict:
        return "table"
    if dataclasses.is_dataclass(tp):
        return "table"
    return {str: "string", int: "integer", bool: "boolean", float: "number"}.get(tp, str(tp))


def _decode(tp: Any, value: Any, key: str, file: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{file}: {key}: expected a table, got {type(value).__name__}")
        return decode(tp, value, key, file)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{file}: {key}: expected {_type_name(tp)}, got {value!r}")
        return [_decode(item, v, f"{key}[{i}]", file) for i, v in enumerate(value)]
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{file}: {key}: expected a table, got {value!r}")
        return {k: _decode(vt, v, f"{key}.{k}", file) for k, v in value.items()}
    # bool is an int subclass in Python but never a valid int in TOML terms.
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{file}: {key}: expected an integer, got {value!r}")
    if tp is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{file}: {key}: expected a number, got {value!r}")
    if tp in (str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{file}: {key}: expected a {_type_name(tp)}, got {value!r}")
    return value


def decode(cls: type, data: dict[str, Any], prefix: str, file: str) -> Any:
    """Build dataclass ``cls`` from a TOML table, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("plugins")}
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{file}: unknown key {key!r} (known keys here: {known})")
        kwargs[k] = _decode(hints[k], v, key, file)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(file, prefix)
    return obj


def load(
    path: str | Path | None,
    registrations: Iterable[Registration],
    *,
    must_exist: bool = False,
) -> Config:
    """Read ``path`` (or use defaults when it is absent) and validate it.

    Raises ConfigError naming the file and key for anything unusable.
    """
    data: dict[str, Any] = {}
    file = str(path) if path else "<defaults>"
    if path is not None:
        p = Path(path)
        if p.exists():
            # Only a daemon with a config file pays for the TOML parser.
            import tomllib

            try:
                data = tomllib.loads(p.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{file}: not valid TOML: {exc}") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{file}: cannot read: {exc}") from None
        elif must_exist:
            raise ConfigError(f"{file}: config file does not exist")
    plugin_tables = data.pop("plugins", {})
    if not isinstance(plugin_tables, dict):
        raise ConfigError(f"{file}: plugins: expected a table of plugin sections")
    cfg: Config = decode(Config, data, "", file)
    if cfg.version != 2:
        raise ConfigError(
            f"{file}: version: {cfg.version} is not supported; Berth reads containerd's"
            " version = 2 schema"
        )
    level = cfg.debug.level.lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{file}: debug.level: {cfg.debug.level!r} is not one of {LOG_LEVELS}")
    if cfg.debug.format not in ("text", "json"):
        raise ConfigError(f"{file}: debug.format: {cfg.debug.format!r} must be text or json")
    for name, pp in cfg.proxy_plugins.items():
        if pp.type not in ("snapshot", "content"):
            raise ConfigError(
                f"{file}: proxy_plugins.{name}.type: {pp.type!r} must be snapshot or content"
            )
        if not pp.address:
            raise ConfigError(f"{file}: proxy_plugins.{name}.address: must be set")
    regs = {r.uri: r for r in registrations}
    for uri in [*cfg.disabled_plugins, *cfg.required_plugins]:
        if uri not in regs:
            raise ConfigError(f"{file}: unknown plugin {uri!r} (see `berth plugins ls`)")
    for uri, table in plugin_tables.items():
        reg = regs.get(uri)
        if reg is None:
            raise ConfigError(
                f"{file}: plugins.{json.dumps(uri)}: unknown plugin (known: {', '.join(sorted(regs))})"
            )
        if reg.config is None:
            if table:
                raise ConfigError(
                    f"{file}: plugins.{json.dumps(uri)}: this plugin takes no settings"
                )
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: plugins.{json.dumps(uri)}: expected a table")
        cfg.plugins[uri] = decode(reg.config, table, f"plugins.{json.dumps(uri)}", file)
    for uri, reg in regs.items():
        if uri not in cfg.plugins and reg.config is not None:
            cfg.plugins[uri] = reg.config()
    return cfg


# ---------------------------------------------------------------------------
# rendering


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot render {v!r}")


def _render_table(
    obj: Any, header: str | None, out: list[str], comments: bool, *, blank: bool = True
) -> None:
    scalars: list[tuple[dataclasses.Field[Any], Any]] = []
    tables: list[tuple[dataclasses.Field[Any], Any]] = []
    for f in dataclasses.fields(obj):
        if f.metadata.get("plugins"):
            continue
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            tables.append((f, v))
        elif isinstance(v, dict) and v and all(dataclasses.is_dataclass(x) for x in v.values()):
            tables.append((f, v))
        else:
            scalars.append((f, v))
    if header is not None:
        if blank:
            out.append("")
        out.append(f"[{header}]")
    for f, v in scalars:
        indent = "  " if header else ""
        if comments and f.metadata.get("doc"):
            out.append(f"{indent}# {f.metadata['doc']}")
        if isinstance(v, dict) and not v:
            out.append(f"  {f.name} = {{}}" if header else f"{f.name} = {{}}")
            continue
        line = f"{f.name} = {_toml_value(v)}"
        out.append(f"  {line}" if header else line)
    for f, v in tables:
        sub = f"{header}.{f.name}" if header else f.name
        if isinstance(v, dict):
            for name, item in v.items():
                _render_table(item, f"{sub}.{json.dumps(name)}", out, comments)
        else:
            if comments and f.metadata.get("doc"):
                out.append("")
                out.append(f"# {f.metadata['doc']}")
            _render_table(v, sub, out, comments, blank=not comments)


def render(cfg: Config, *, comments: bool = True) -> str:
    """The config as TOML; with comments it documents every key."""
    out: list[str] = []
    if comments:
        out.append("# berthd configuration (containerd version 2 schema).")
        out.append("# Every key is shown with its default; remove what you do not change.")
    _render_table(cfg, None, out, comments)
    if cfg.plugins:
        out.append("")
        if comments:
            out.append("# Per-plugin settings, keyed by the plugin's full id.")
        out.append("[plugins]")
        for uri in sorted(cfg.plugins):
            _render_table(cfg.plugins[uri], f"plugins.{json.dumps(uri)}", out, comments)
    return "\n".join(out) + "\n"
