"""Spec options: small composable edits of a runtime spec, after containerd's SpecOpts.

Each ``with_*`` function returns a :data:`~berth.oci.spec.SpecOpt`, a callable
``(spec, ctx) -> None`` that edits the spec in place. Arguments are checked
when the option is built where that needs nothing else (so a bad ``--memory``
fails before any I/O), and when it is applied otherwise (user names need the
rootfs). Bad input raises ``errdefs.InvalidArgument``, the code containerd
returns for it; a user or group missing from the image raises
``errdefs.NotFound`` (see :mod:`berth.oci.users`).

Options that read files (users and groups from the rootfs, ``/dev`` for
privileged containers, ``/proc/self`` for capabilities and the OOM score)
block; async callers run the whole generation in a thread.

Where Berth differs from containerd, on purpose:

* ``with_mounts`` refuses relative destinations, ``..`` components and
  relative bind sources, where containerd passes them on to the runtime.
* ``with_image_config`` lets the image's ``PATH`` replace the default one
  :func:`~berth.oci.spec.default_spec` put in (containerd's base spec has no
  env at all); any other env set before it still wins over the image's.
* ``with_tty`` sets ``TERM=xterm`` once instead of appending a duplicate.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from berth import errdefs
from berth.oci import caps as _caps
from berth.oci import users
from berth.oci.spec import (
    DEFAULT_ENV,
    STOP_SIGNAL_LABEL,
    Context,
    Spec,
    SpecOpt,
)

__all__ = [
    "HOOK_KINDS",
    "NAMESPACE_TYPES",
    "RLIMIT_TYPES",
    "Hook",
    "Mount",
    "Rlimit",
    "compose",
    "host_devices",
    "replace_or_append_env",
    "validate_mount",
    "with_added_capabilities",
    "with_additional_groups",
    "with_all_devices_allowed",
    "with_annotations",
    "with_capabilities",
    "with_capability_set",
    "with_cgroup",
    "with_cgroup_parent",
    "with_cpu",
    "with_cpu_limit",
    "with_dropped_capabilities",
    "with_env",
    "with_hooks",
    "with_host_devices",
    "with_host_namespace",
    "with_host_network",
    "with_hostname",
    "with_image_config",
    "with_linux_namespace",
    "with_memory_limit",
    "with_mounts",
    "with_new_privileges",
    "with_oom_score_adj",
    "with_pids_limit",
    "with_privileged",
    "with_process_args",
    "with_process_cwd",
    "with_readonly_rootfs",
    "with_rlimits",
    "with_rootfs_path",
    "with_seccomp_profile",
    "with_seccomp_unconfined",
    "with_tty",
    "with_user",
]


# --------------------------------------------------------------------------
# Small helpers over the JSON tree
# --------------------------------------------------------------------------


def _process(spec: Spec) -> dict[str, Any]:
    proc: dict[str, Any] = spec.setdefault("process", {})
    proc.setdefault("user", {"uid": 0, "gid": 0})
    proc.setdefault("cwd", "/")
    return proc


def _linux(spec: Spec) -> dict[str, Any]:
    linux: dict[str, Any] = spec.setdefault("linux", {})
    return linux


def _resources(spec: Spec) -> dict[str, Any]:
    res: dict[str, Any] = _linux(spec).setdefault("resources", {})
    return res


def _capabilities(spec: Spec) -> dict[str, Any]:
    capset: dict[str, Any] = _process(spec).setdefault("capabilities", {})
    return capset


_CAP_SETS = ("bounding", "effective", "permitted")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise errdefs.InvalidArgument(message)


def _no_nul(value: str, what: str) -> None:
    _check("\x00" not in value, f"{what} must not contain NUL bytes")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def compose(*opts: SpecOpt) -> SpecOpt:
    """One option applying ``opts`` in order."""

    def apply(spec: Spec, ctx: Context) -> None:
        for opt in opts:
            opt(spec, ctx)

    return apply


# --------------------------------------------------------------------------
# Process: args, env, cwd, terminal, user
# --------------------------------------------------------------------------


def replace_or_append_env(defaults: Iterable[str], overrides: Iterable[str]) -> list[str]:
    """Merge env lists the way containerd does.

    An override ``K=V`` replaces the default for ``K`` in place or is
    appended; a bare ``K`` (no ``=``) removes ``K`` from the defaults.
    """
    result: list[str | None] = []
    index: dict[str, int] = {}
    for entry in defaults:
        index[entry.split("=", 1)[0]] = len(result)
        result.append(entry)
    for entry in overrides:
        key, sep, _ = entry.partition("=")
        if not sep:
            if key in index:
                result[index[key]] = None
            continue
        if key in index and result[index[key]] is not None:
            result[index[key]] = entry
        else:
            index[key] = len(result)
            result.append(entry)
    return [e for e in result if e is not None]


def _check_env(env: Sequence[str]) -> list[str]:
    _check(not isinstance(env, str), "env must be a list of KEY=VALUE strings, not one string")
    out = []
    for entry in env:
        _check(isinstance(entry, str), f"env entry {entry!r} is not a string")
        _no_nul(entry, "env entries")
        _check(not entry.startswith("="), f"env entry {entry!r} has an empty name")
        out.append(entry)
    return out


def with_env(env: Sequence[str]) -> SpecOpt:
    """Set variables (``K=V``) or remove them (bare ``K``) in the process env."""
    entries = _check_env(env)

    def apply(spec: Spec, ctx: Context) -> None:
        if entries:
            proc = _process(spec)
            proc["env"] = replace_or_append_env(proc.get("env") or [], entries)

    return apply


def with_process_args(*args: str) -> SpecOpt:
    """Run ``args`` (replacing the image's entrypoint and command)."""
    _check(len(args) > 0, "process args must not be empty")
    for arg in args:
        _check(isinstance(arg, str), f"process arg {arg!r} is not a string")
        _no_nul(arg, "process args")

    def apply(spec: Spec, ctx: Context) -> None:
        proc = _process(spec)
        proc["args"] = list(args)
        proc.pop("commandLine", None)

    return apply


def with_process_cwd(cwd: str) -> SpecOpt:
    """Start the process in ``cwd`` (an absolute path inside the container)."""
    _check(cwd.startswith("/"), f"working directory {cwd!r} must be an absolute path")
    _no_nul(cwd, "working directory")

    def apply(spec: Spec, ctx: Context) -> None:
        _process(spec)["cwd"] = cwd

    return apply


def with_tty(spec: Spec, ctx: Context) -> None:
    """Give the process a terminal (and ``TERM=xterm``, as containerd does)."""
    proc = _process(spec)
    proc["terminal"] = True
    proc["env"] = replace_or_append_env(proc.get("env") or [], ["TERM=xterm"])


def _ensure_primary_gid(proc: dict[str, Any], extra: Iterable[int] = ()) -> None:
    """Additional gids with the primary gid first, as containerd always lists it."""
    user = proc["user"]
    gids: list[int] = []
    for gid in extra:
        if gid not in gids:
            gids.append(gid)
    if user["gid"] not in gids:
        gids.insert(0, user["gid"])
    user["additionalGids"] = gids


def _optional_root(spec: Spec, ctx: Context) -> str | None:
    try:
        return ctx.root_path(spec)
    except errdefs.InvalidArgument:
        return None


def with_user(user: str, *, supplementary: bool = True) -> SpecOpt:
    """Run as ``user``: ``name``, ``uid``, ``name:group``, ``uid:gid`` and mixes.

    Names are resolved in the rootfs (``ctx.rootfs``, or an absolute
    ``root.path``) without leaving it. With ``supplementary`` the groups that
    list the user as a member in ``/etc/group`` are added, as containerd does
    for an image's ``USER``; that needs the rootfs and is skipped for a
    numeric ``uid:gid`` when there is none.

    Raises InvalidArgument for a malformed string or a missing rootfs, and
    NotFound for a user or group the image does not define.
    """
    _check(isinstance(user, str), f"user {user!r} is not a string")
    _no_nul(user, "user")

    def apply(spec: Spec, ctx: Context) -> None:
        root = _optional_root(spec, ctx)
        resolved = users.resolve_user(root, user)
        proc = _process(spec)
        proc["user"] = {"uid": resolved.uid, "gid": resolved.gid}
        extra: list[int] = []
        if supplementary and root is not None:
            extra = users.supplementary_gids(root, resolved.name or resolved.uid)
        _ensure_primary_gid(proc, extra)

    return apply


def with_additional_groups(*groups: str) -> SpecOpt:
    """Add supplementary groups by gid or by name from the rootfs's ``/etc/group``.

    Raises NotFound for a name the image does not define.
    """
    for group in groups:
        _no_nul(group, "group")

    def apply(spec: Spec, ctx: Context) -> None:
        proc = _process(spec)
        numeric = [int(g) for g in groups if g.isdigit()]
        if len(numeric) == len(groups):
            gids = numeric
        else:
            gids = users.append_groups(ctx.root_path(spec), list(groups))
        _ensure_primary_gid(proc, [*proc["user"].get("additionalGids", []), *gids])

    return apply


# --------------------------------------------------------------------------
# Image config
# --------------------------------------------------------------------------


def _string_list(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise errdefs.InvalidArgument(f"image config {what} must be a list of strings")
    return list(value)


def _string(value: object, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise errdefs.InvalidArgument(f"image config {what} must be a string")
    return value


def with_image_config(
    image_config: Mapping[str, Any],
    *,
    args: Sequence[str] | None = None,
    default_stop_signal: str = "SIGTERM",
) -> SpecOpt:
    """Take the process from an image config (the JSON blob an image points at).

    * args: ``Entrypoint`` + (``args`` if given, else ``Cmd``);
    * env: the image's ``Env`` (or the default ``PATH``), with any env set
      earlier on the spec winning;
    * cwd: ``WorkingDir`` or ``/``;
    * user: ``User`` resolved in the rootfs (see :func:`with_user`), else
      root, with supplementary groups from ``/etc/group``;
    * ``ctx.labels[STOP_SIGNAL_LABEL]``: ``StopSignal`` or
      ``default_stop_signal``.

    Resolving groups needs the rootfs (``ctx.rootfs`` or an absolute
    ``root.path``): InvalidArgument without it, as in containerd.
    """
    _check(isinstance(image_config, Mapping), "image config must be a JSON object")
    config = image_config.get("config")
    if config is None:
        config = {}
    _check(isinstance(config, Mapping), "image config 'config' must be a JSON object")
    env = _check_env(_string_list(config.get("Env"), "Env"))
    entrypoint = _string_list(config.get("Entrypoint"), "Entrypoint")
    cmd = _string_list(config.get("Cmd"), "Cmd")
    workdir = _string(config.get("WorkingDir"), "WorkingDir")
    user = _string(config.get("User"), "User")
    stop_signal = _string(config.get("StopSignal"), "StopSignal") or default_stop_signal
    chosen = list(args) if args else cmd

    def apply(spec: Spec, ctx: Context) -> None:
        proc = _process(spec)
        # The default PATH from default_spec is a placeholder for images
        # without env; only what was set on purpose overrides the image.
        earlier = [e for e in proc.get("env") or [] if e not in DEFAULT_ENV]
        proc["env"] = replace_or_append_env(env or DEFAULT_ENV, earlier)
        proc["args"] = entrypoint + chosen
        proc.pop("commandLine", None)
        proc["cwd"] = workdir or "/"
        ctx.labels[STOP_SIGNAL_LABEL] = stop_signal
        root = ctx.root_path(spec)
        if user:
            resolved = users.resolve_user(root, user)
            proc["user"] = {"uid": resolved.uid, "gid": resolved.gid}
            member: str | int = resolved.uid
        else:
            proc["user"] = {"uid": 0, "gid": 0}
            member = "root"
        _ensure_primary_gid(proc, users.supplementary_gids(root, member))

    return apply


# --------------------------------------------------------------------------
# Root filesystem, hostname, mounts
# --------------------------------------------------------------------------


def with_rootfs_path(path: str) -> SpecOpt:
    """Use ``path`` as ``root.path`` (relative to the bundle, or absolute)."""
    _check(bool(path), "rootfs path must not be empty")
    _no_nul(path, "rootfs path")

    def apply(spec: Spec, ctx: Context) -> None:
        spec.setdefault("root", {})["path"] = path

    return apply


def with_readonly_rootfs(spec: Spec, ctx: Context) -> None:
    """Mount the container's root filesystem read-only."""
    spec.setdefault("root", {"path": "rootfs"})["readonly"] = True


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,62})?")


def with_hostname(name: str) -> SpecOpt:
    """Set the UTS hostname (letters, digits, ``.``, ``_``, ``-``; at most 64)."""
    _check(
        bool(_HOSTNAME.fullmatch(name)),
        f"invalid hostname {name!r}: want at most 64 letters, digits, '.', '_' or '-'",
    )

    def apply(spec: Spec, ctx: Context) -> None:
        spec["hostname"] = name

    return apply


@dataclass(frozen=True)
class Mount:
    """One runtime-spec mount; ``options`` as the kernel/runc spell them."""

    destination: str
    type: str = ""
    source: str = ""
    options: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Mount:
        """Build from runtime-spec JSON; InvalidArgument for wrong shapes."""
        _check(isinstance(data, Mapping), f"mount {data!r} is not an object")
        unknown = set(data) - {"destination", "type", "source", "options", "uidMappings"}
        _check(not unknown, f"mount has unknown fields {sorted(unknown)}")
        options = data.get("options") or []
        _check(
            isinstance(options, list | tuple) and all(isinstance(o, str) for o in options),
            "mount options must be a list of strings",
        )
        for key in ("destination", "type", "source"):
            _check(isinstance(data.get(key, ""), str), f"mount {key} must be a string")
        return cls(
            destination=data.get("destination", ""),
            type=data.get("type", ""),
            source=data.get("source", ""),
            options=tuple(options),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"destination": self.destination}
        if self.type:
            out["type"] = self.type
        if self.source:
            out["source"] = self.source
        if self.options:
            out["options"] = list(self.options)
        return out

    @property
    def is_bind(self) -> bool:
        return self.type == "bind" or any(o in ("bind", "rbind") for o in self.options)


def _has_dotdot(path: str) -> bool:
    return ".." in path.split("/")


def validate_mount(mount: Mount) -> None:
    """Refuse mounts that could reach outside the container or confuse runc.

    The destination must be absolute, not ``/``, and free of ``..``; a bind
    source must be an absolute host path free of ``..``. Raises
    InvalidArgument naming the problem.
    """
    dest = mount.destination
    _check(bool(dest), "mount destination must not be empty")
    for name, value in (
        ("destination", dest),
        ("source", mount.source),
        ("type", mount.type),
        *(("option", o) for o in mount.options),
    ):
        _no_nul(value, f"mount {name}")
    _check(dest.startswith("/"), f"mount destination {dest!r} must be an absolute path")
    _check(not _has_dotdot(dest), f"mount destination {dest!r} must not contain '..'")
    _check(
        any(p not in ("", ".") for p in dest.split("/")),
        "mount destination must not be the container root",
    )
    if mount.is_bind:
        src = mount.source
        _check(src.startswith("/"), f"bind mount source {src!r} must be an absolute host path")
        _check(not _has_dotdot(src), f"bind mount source {src!r} must not contain '..'")


def with_mounts(mounts: Iterable[Mount | Mapping[str, Any]]) -> SpecOpt:
    """Append mounts (after the defaults, so they win at the same destination).

    Each is checked by :func:`validate_mount`; InvalidArgument on the first
    bad one, before anything is added.
    """
    checked: list[Mount] = []
    for m in mounts:
        mount = m if isinstance(m, Mount) else Mount.from_dict(m)
        validate_mount(mount)
        checked.append(mount)

    def apply(spec: Spec, ctx: Context) -> None:
        spec.setdefault("mounts", []).extend(m.to_dict() for m in checked)

    return apply


# --------------------------------------------------------------------------
# Namespaces, network, cgroups
# --------------------------------------------------------------------------

NAMESPACE_TYPES = frozenset({"pid", "network", "mount", "ipc", "uts", "user", "cgroup"})


def _check_ns_type(ns_type: str) -> None:
    _check(
        ns_type in NAMESPACE_TYPES,
        f"unknown namespace type {ns_type!r}: want one of {sorted(NAMESPACE_TYPES)}",
    )


def with_host_namespace(ns_type: str) -> SpecOpt:
    """Share the host's namespace of ``ns_type`` (drop it from the spec)."""
    _check_ns_type(ns_type)

    def apply(spec: Spec, ctx: Context) -> None:
        linux = _linux(spec)
        linux["namespaces"] = [n for n in linux.get("namespaces", []) if n["type"] != ns_type]

    return apply


def with_linux_namespace(ns_type: str, path: str = "") -> SpecOpt:
    """Use a new namespace of ``ns_type``, or join the one at ``path``."""
    _check_ns_type(ns_type)
    _check(not path or path.startswith("/"), f"namespace path {path!r} must be absolute")
    _no_nul(path, "namespace path")

    def apply(spec: Spec, ctx: Context) -> None:
        entry = {"type": ns_type, **({"path": path} if path else {})}
        namespaces = _linux(spec).setdefault("namespaces", [])
        for i, ns in enumerate(namespaces):
            if ns["type"] == ns_type:
                namespaces[i] = entry
                return
        namespaces.append(entry)

    return apply


def _host_bind(path: str) -> dict[str, Any]:
    return {"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]}


def with_host_network(spec: Spec, ctx: Context) -> None:
    """Share the host network, with its ``/etc/hosts`` and ``/etc/resolv.conf``."""
    with_host_namespace("network")(spec, ctx)
    spec.setdefault("mounts", []).extend([_host_bind("/etc/hosts"), _host_bind("/etc/resolv.conf")])


def _check_cgroup_path(path: str) -> None:
    _no_nul(path, "cgroup path")
    _check(not _has_dotdot(path.replace(":", "/")), f"cgroup path {path!r} must not contain '..'")


def with_cgroup(path: str) -> SpecOpt:
    """Use exactly ``path`` as ``linux.cgroupsPath`` (``/a/b``, or systemd's ``slice:prefix:name``)."""
    _check(bool(path), "cgroup path must not be empty")
    _check_cgroup_path(path)

    def apply(spec: Spec, ctx: Context) -> None:
        _linux(spec)["cgroupsPath"] = path

    return apply


def with_cgroup_parent(parent: str, *, systemd_prefix: str = "berth") -> SpecOpt:
    """Place the container under ``parent``, as the CRI plugin does.

    A parent ending in ``.slice`` gives systemd's ``<slice>:<prefix>:<id>``
    form; any other gives the cgroupfs path ``<parent>/<id>``.
    """
    _check(bool(parent), "cgroup parent must not be empty")
    _check_cgroup_path(parent)

    def apply(spec: Spec, ctx: Context) -> None:
        base = posixpath.basename(parent.rstrip("/"))
        if base.endswith(".slice"):
            path = f"{base}:{systemd_prefix}:{ctx.container_id}"
        else:
            path = posixpath.join(parent, ctx.container_id)
        _linux(spec)["cgroupsPath"] = path

    return apply


# --------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------


def with_memory_limit(limit: int) -> SpecOpt:
    """Limit memory to ``limit`` bytes (``memory.limit_in_bytes`` / ``memory.max``)."""
    _check(
        _is_int(limit) and limit > 0, f"memory limit must be a positive byte count, not {limit!r}"
    )

    def apply(spec: Spec, ctx: Context) -> None:
        _resources(spec).setdefault("memory", {})["limit"] = limit

    return apply


_CPUSET = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*")


def with_cpu(
    *,
    shares: int | None = None,
    quota: int | None = None,
    period: int | None = None,
    cpus: str | None = None,
    mems: str | None = None,
) -> SpecOpt:
    """Set CPU controls: weight (``shares``), CFS ``quota``/``period`` in µs, cpusets.

    ``quota`` -1 means unlimited. ``cpus``/``mems`` are cpuset lists such as
    ``0-2,4``. Only the given fields change.
    """
    _check(
        shares is None or (_is_int(shares) and shares > 0),
        f"cpu shares must be > 0, not {shares!r}",
    )
    _check(
        quota is None or (_is_int(quota) and (quota == -1 or quota > 0)),
        f"cpu quota must be -1 or > 0, not {quota!r}",
    )
    _check(
        period is None or (_is_int(period) and period > 0),
        f"cpu period must be > 0, not {period!r}",
    )
    for name, value in (("cpus", cpus), ("mems", mems)):
        _check(
            value is None or bool(_CPUSET.fullmatch(value)),
            f"cpuset {name} {value!r} must look like '0-2,4'",
        )
    fields = {"shares": shares, "quota": quota, "period": period, "cpus": cpus, "mems": mems}

    def apply(spec: Spec, ctx: Context) -> None:
        cpu = _resources(spec).setdefault("cpu", {})
        cpu.update({k: v for k, v in fields.items() if v is not None})

    return apply


def with_cpu_limit(cpus: float) -> SpecOpt:
    """Limit to ``cpus`` CPUs' worth of time (ctr's ``--cpus``): quota over a 100 ms period.

    InvalidArgument when the quota would fall under the kernel's 1 ms minimum.
    """
    period = 100_000
    quota = int(cpus * period) if cpus > 0 else 0
    _check(quota >= 1000, f"cpu limit {cpus!r} is below the minimum of 0.01 CPUs")
    return with_cpu(quota=quota, period=period)


def with_pids_limit(limit: int) -> SpecOpt:
    """Allow at most ``limit`` tasks in the container (-1: unlimited)."""
    _check(
        _is_int(limit) and (limit == -1 or limit > 0),
        f"pids limit must be -1 or > 0, not {limit!r}",
    )

    def apply(spec: Spec, ctx: Context) -> None:
        _resources(spec)["pids"] = {"limit": limit}

    return apply


# Keep in step with runc's list (the runtime spec's POSIX rlimits on Linux).
RLIMIT_TYPES = frozenset(
    "RLIMIT_" + n
    for n in (
        "AS CORE CPU DATA FSIZE LOCKS MEMLOCK MSGQUEUE NICE NOFILE NPROC RSS RTPRIO "
        "RTTIME SIGPENDING STACK"
    ).split()
)
_RLIM_MAX = 2**64 - 1  # RLIM_INFINITY as the runtime spec's uint64


@dataclass(frozen=True)
class Rlimit:
    type: str
    soft: int
    hard: int


def with_rlimits(rlimits: Iterable[Rlimit] | Mapping[str, tuple[int, int]]) -> SpecOpt:
    """Set process rlimits, replacing an existing entry of the same type.

    A mapping gives ``{"RLIMIT_NOFILE": (soft, hard)}``. Without
    CAP_SYS_RESOURCE the runtime cannot raise a hard limit above its own.
    Raises InvalidArgument for unknown types or soft > hard.
    """
    items = (
        [Rlimit(t, s, h) for t, (s, h) in rlimits.items()]
        if isinstance(rlimits, Mapping)
        else list(rlimits)
    )
    for r in items:
        _check(r.type in RLIMIT_TYPES, f"unknown rlimit type {r.type!r}")
        for value in (r.soft, r.hard):
            _check(
                _is_int(value) and 0 <= value <= _RLIM_MAX,
                f"{r.type} values must be integers in 0..2^64-1, not {value!r}",
            )
        _check(r.soft <= r.hard, f"{r.type}: soft limit {r.soft} is above hard limit {r.hard}")

    def apply(spec: Spec, ctx: Context) -> None:
        current = _process(spec).setdefault("rlimits", [])
        for r in items:
            entry = {"type": r.type, "hard": r.hard, "soft": r.soft}
            for i, old in enumerate(current):
                if old["type"] == r.type:
                    current[i] = entry
                    break
            else:
                current.append(entry)

    return apply


OOM_SCORE_ADJ_MIN = -1000
OOM_SCORE_ADJ_MAX = 1000


def _own_oom_score_adj() -> int:
    with open("/proc/self/oom_score_adj", encoding="ascii") as f:
        return int(f.read().strip())


def with_oom_score_adj(score: int, *, restrict: bool = True, current: int | None = None) -> SpecOpt:
    """Set ``process.oomScoreAdj`` (-1000..1000).

    With ``restrict`` (containerd's ``restrict_oom_score_adj``) the value is
    raised to the caller's own when lower: lowering it needs
    CAP_SYS_RESOURCE, and without it runc fails to start the container.
    ``current`` overrides the caller's value (read from
    ``/proc/self/oom_score_adj`` when applied).
    """
    _check(
        _is_int(score) and OOM_SCORE_ADJ_MIN <= score <= OOM_SCORE_ADJ_MAX,
        f"oom score adj {score!r} out of range {OOM_SCORE_ADJ_MIN}..{OOM_SCORE_ADJ_MAX}",
    )

    def apply(spec: Spec, ctx: Context) -> None:
        value = score
        if restrict:
            own = current if current is not None else _own_oom_score_adj()
            value = max(value, own)
        _process(spec)["oomScoreAdj"] = value

    return apply


# --------------------------------------------------------------------------
# Hooks, annotations
# --------------------------------------------------------------------------

HOOK_KINDS = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)


@dataclass(frozen=True)
class Hook:
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        if self.args:
            out["args"] = list(self.args)
        if self.env:
            out["env"] = list(self.env)
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out


def _hook(value: Hook | Mapping[str, Any]) -> Hook:
    if isinstance(value, Hook):
        hook = value
    else:
        _check(isinstance(value, Mapping), f"hook {value!r} is not an object")
        hook = Hook(
            path=value.get("path", ""),
            args=tuple(value.get("args") or ()),
            env=tuple(value.get("env") or ()),
            timeout=value.get("timeout"),
        )
    _check(
        isinstance(hook.path, str) and hook.path.startswith("/"),
        f"hook path {hook.path!r} must be absolute",
    )
    for item in (hook.path, *hook.args, *hook.env):
        _check(isinstance(item, str), f"hook field {item!r} is not a string")
        _no_nul(item, "hook fields")
    _check(
        hook.timeout is None or (_is_int(hook.timeout) and hook.timeout > 0),
        f"hook timeout must be > 0 seconds, not {hook.timeout!r}",
    )
    return hook


def with_hooks(hooks: Mapping[str, Iterable[Hook | Mapping[str, Any]]]) -> SpecOpt:
    """Append lifecycle hooks by kind (``prestart``, ``createRuntime``, ... ``poststop``)."""
    checked: dict[str, list[Hook]] = {}
    for kind, entries in hooks.items():
        _check(kind in HOOK_KINDS, f"unknown hook kind {kind!r}: want one of {list(HOOK_KINDS)}")
        checked[kind] = [_hook(h) for h in entries]

    def apply(spec: Spec, ctx: Context) -> None:
        table = spec.setdefault("hooks", {})
        for kind, entries in checked.items():
            table.setdefault(kind, []).extend(h.to_dict() for h in entries)

    return apply


def with_annotations(annotations: Mapping[str, str]) -> SpecOpt:
    """Add (or overwrite) spec annotations."""
    for key, value in annotations.items():
        _check(isinstance(key, str) and bool(key), "annotation keys must be non-empty strings")
        _check(isinstance(value, str), f"annotation {key!r} value must be a string")
    items = dict(annotations)

    def apply(spec: Spec, ctx: Context) -> None:
        spec.setdefault("annotations", {}).update(items)

    return apply


# --------------------------------------------------------------------------
# Capabilities, seccomp, privileges, devices
# --------------------------------------------------------------------------


def with_capability_set(capabilities: Iterable[str]) -> SpecOpt:
    """Give exactly ``capabilities`` (bounding, effective and permitted)."""
    names = [c for c in _caps.normalize(capabilities) if c != "ALL"]

    def apply(spec: Spec, ctx: Context) -> None:
        capset = _capabilities(spec)
        for key in _CAP_SETS:
            capset[key] = list(names)

    return apply


def with_added_capabilities(capabilities: Iterable[str]) -> SpecOpt:
    """Add capabilities to the bounding, effective and permitted sets."""
    names = _caps.normalize(capabilities)

    def apply(spec: Spec, ctx: Context) -> None:
        capset = _capabilities(spec)
        for key in _CAP_SETS:
            current = capset.setdefault(key, [])
            current.extend(n for n in names if n not in current)

    return apply


def with_dropped_capabilities(capabilities: Iterable[str]) -> SpecOpt:
    """Remove capabilities from the bounding, effective and permitted sets."""
    names = set(_caps.normalize(capabilities))

    def apply(spec: Spec, ctx: Context) -> None:
        capset = _capabilities(spec)
        for key in _CAP_SETS:
            capset[key] = [c for c in capset.get(key, []) if c not in names]

    return apply


def with_capabilities(*, add: Iterable[str] = (), drop: Iterable[str] = ()) -> SpecOpt:
    """Add and drop capabilities with the CRI's rules.

    Names may omit ``CAP_`` and be any case. ``ALL`` in ``add`` starts from
    every known capability, ``ALL`` in ``drop`` from none; then the named
    additions apply, then the named drops (so ``add=["ALL"],
    drop=["CHOWN"]`` is everything but CAP_CHOWN). The default seccomp
    profile follows the result. InvalidArgument for unknown names.
    """
    added = _caps.normalize(add)
    dropped = _caps.normalize(drop)
    steps: list[SpecOpt] = []
    if "ALL" in added:
        steps.append(with_capability_set(_caps.KNOWN_CAPABILITIES))
    if "ALL" in dropped:
        steps.append(with_capability_set(()))
    steps.append(with_added_capabilities([c for c in added if c != "ALL"]))
    steps.append(with_dropped_capabilities([c for c in dropped if c != "ALL"]))
    return compose(*steps)


def with_seccomp_unconfined(spec: Spec, ctx: Context) -> None:
    """Run without a seccomp filter."""
    _linux(spec).pop("seccomp", None)
    ctx.seccomp = "unconfined"


def with_seccomp_profile(profile: Mapping[str, Any]) -> SpecOpt:
    """Use ``profile`` (runtime-spec ``linux.seccomp`` JSON) instead of the default."""
    _check(isinstance(profile, Mapping), "seccomp profile must be a JSON object")
    _check(
        isinstance(profile.get("defaultAction"), str),
        "seccomp profile needs a string 'defaultAction'",
    )
    _check(
        isinstance(profile.get("syscalls", []), list),
        "seccomp profile 'syscalls' must be a list",
    )
    chosen = dict(profile)

    def apply(spec: Spec, ctx: Context) -> None:
        _linux(spec)["seccomp"] = dict(chosen)
        ctx.seccomp = "custom"

    return apply


def with_new_privileges(spec: Spec, ctx: Context) -> None:
    """Let the process gain privileges through setuid binaries (clears noNewPrivileges)."""
    # Absent means false, and is how Go writes a false flag.
    _process(spec).pop("noNewPrivileges", None)


def with_all_devices_allowed(spec: Spec, ctx: Context) -> None:
    """Allow every device in the device cgroup."""
    _resources(spec)["devices"] = [{"allow": True, "access": "rwm"}]


# Directories under /dev that hold no device nodes to pass through.
_SKIP_DEV_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})


def host_devices(path: str = "/dev") -> list[dict[str, Any]]:
    """The host's device nodes under ``path`` as ``linux.devices`` entries.

    Skips the pseudo-directories a container gets its own of, ``console``
    and FIFOs, and nodes that vanish while scanning.
    """
    out: list[dict[str, Any]] = []
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except FileNotFoundError:
        return out
    for entry in entries:
        full = os.path.join(path, entry.name)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if entry.name not in _SKIP_DEV_DIRS:
                out.extend(host_devices(full))
            continue
        if entry.name == "console":
            continue
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        else:
            continue
        out.append(
            {
                "path": full,
                "type": kind,
                "major": os.major(st.st_rdev),
                "minor": os.minor(st.st_rdev),
                "fileMode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
            }
        )
    return out


def with_host_devices(spec: Spec, ctx: Context) -> None:
    """Create every host device node in the container (privileged containers)."""
    _linux(spec).setdefault("devices", []).extend(host_devices())


def _writable(spec: Spec, mount_type: str) -> None:
    for mount in spec.get("mounts", []):
        if mount.get("type") == mount_type:
            mount["options"] = ["rw" if o == "ro" else o for o in mount.get("options", [])]


def with_privileged(*, host_devices: bool = True) -> SpecOpt:
    """Everything ``ctr run --privileged`` gives.

    All of the caller's own capabilities (not CAP_SYS_RESOURCE where the
    daemon lacks it), no masked or read-only paths, writable sysfs and
    cgroupfs, no seccomp, SELinux or AppArmor confinement, every device
    allowed and, with ``host_devices``, the host's device nodes created.
    """

    def apply(spec: Spec, ctx: Context) -> None:
        with_capability_set(_caps.current())(spec, ctx)
        linux = _linux(spec)
        linux.pop("maskedPaths", None)
        linux.pop("readonlyPaths", None)
        _writable(spec, "sysfs")
        _writable(spec, "cgroup")
        proc = _process(spec)
        proc.pop("selinuxLabel", None)
        proc.pop("apparmorProfile", None)
        with_seccomp_unconfined(spec, ctx)
        with_all_devices_allowed(spec, ctx)
        if host_devices:
            with_host_devices(spec, ctx)

    return apply
