"""The default OCI runtime spec, and the types every spec option works with.

A spec is kept as plain JSON-shaped data (``dict``/``list``/``str``/``int``),
the same tree ``config.json`` holds, so it can go to runc, through the
containers service (as a JSON ``Any``) and back without a translation layer.
Keys that Go's ``encoding/json`` leaves out (``omitempty`` on an empty value)
are left out here too, so a spec serialised by Berth reads like one from
containerd.

:func:`default_spec` is what a Linux container starts from before any option
applies. Its facts are containerd 1.6's, gathered from the four pieces that
``ctr run --seccomp`` puts together for an ordinary container:

* the base Unix spec (capabilities, rlimits, masked and read-only paths,
  namespaces, mounts, the namespaced cgroup path, a deny-all device rule),
* the standard device allow-list ``ctr`` adds to every container,
* the default seccomp profile (:mod:`berth.oci.seccomp`; ``--seccomp`` in
  ctr, ``runtime/default`` in CRI), built for the capabilities the spec ends
  up with, and
* a default ``PATH`` in the environment, which containerd only adds when the
  image config has none; having it here keeps an image-less spec runnable
  (see ``with_image_config`` for how it gives way to the image's own).
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from berth import errdefs, identifiers
from berth.oci.seccomp import default_profile

__all__ = [
    "DEFAULT_CAPABILITIES",
    "DEFAULT_ENV",
    "DEFAULT_MASKED_PATHS",
    "DEFAULT_READONLY_PATHS",
    "DEFAULT_ROOTFS",
    "OCI_VERSION",
    "STOP_SIGNAL_LABEL",
    "Context",
    "SeccompMode",
    "Spec",
    "SpecOpt",
    "apply_opts",
    "default_devices",
    "default_mounts",
    "default_namespaces",
    "default_spec",
    "dumps",
]

Spec: TypeAlias = dict[str, Any]
"""A runtime spec as the JSON tree of ``config.json``."""

# The runtime-spec version containerd 1.6 vendors (a 1.0.2 development
# snapshot); runc 1.1 reports the same string.
OCI_VERSION = "1.0.2-dev"
DEFAULT_ROOTFS = "rootfs"
DEFAULT_ENV: tuple[str, ...] = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
)

# Container label under which the image's stop signal is kept (the tasks
# service reads it when stopping); the same key containerd uses.
STOP_SIGNAL_LABEL = "io.containerd.image.config.stop-signal"

# The fourteen capabilities a default container keeps; the order is
# containerd's, so specs compare equal as lists.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# Kernel interfaces that leak host information or allow host-wide changes:
# runc covers each with /dev/null (files) or an empty read-only tmpfs (dirs).
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)

# Still visible, but remounted read-only.
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

_TMPFS_64M = "size=65536k"


def default_mounts() -> list[dict[str, Any]]:
    """The seven mounts every Linux container gets, in containerd's order."""
    return [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", _TMPFS_64M],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            # gid 5 is the conventional "tty" group.
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", _TMPFS_64M],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/run",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", _TMPFS_64M],
        },
    ]


def default_namespaces() -> list[dict[str, str]]:
    """New pid, ipc, uts, mount and network namespaces (no user or cgroup ns)."""
    return [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")]


def _char(major: int, minor: int | None) -> dict[str, Any]:
    rule: dict[str, Any] = {"allow": True, "type": "c", "major": major}
    if minor is not None:  # absent minor means "every minor" (the pty range)
        rule["minor"] = minor
    rule["access"] = "rwm"
    return rule


def default_devices() -> list[dict[str, Any]]:
    """The device cgroup rules: deny everything, then allow the usual nodes.

    The allowed nodes are null (1:3), random (1:8), full (1:7), tty (5:0),
    zero (1:5), urandom (1:9), console (5:1), every pty slave (136:*) and
    ptmx (5:2), in the order containerd lists them.
    """
    return [
        {"allow": False, "access": "rwm"},
        _char(1, 3),
        _char(1, 8),
        _char(1, 7),
        _char(5, 0),
        _char(1, 5),
        _char(1, 9),
        _char(5, 1),
        _char(136, None),
        _char(5, 2),
    ]


def _validate_names(container_id: str, namespace: str) -> None:
    if not namespace:
        # containerd's NamespaceRequired error, which maps to FailedPrecondition.
        raise errdefs.FailedPrecondition("namespace is required")
    identifiers.validate(namespace)
    identifiers.validate(container_id)


def default_spec(container_id: str, namespace: str) -> Spec:
    """The runtime spec a Linux container starts from, equal to containerd's.

    The cgroup path is ``/<namespace>/<container_id>`` (cgroupfs form). The
    seccomp profile is the default one for the default capabilities;
    :func:`berth.oci.generate` rebuilds it after options change them.

    Raises FailedPrecondition for an empty namespace and InvalidArgument when
    either name breaks the identifier rules (it becomes a cgroup path).
    """
    _validate_names(container_id, namespace)
    spec: Spec = {
        "ociVersion": OCI_VERSION,
        "process": {
            "user": {"uid": 0, "gid": 0},
            "env": list(DEFAULT_ENV),
            "cwd": "/",
            "capabilities": {
                "bounding": list(DEFAULT_CAPABILITIES),
                "effective": list(DEFAULT_CAPABILITIES),
                "permitted": list(DEFAULT_CAPABILITIES),
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": DEFAULT_ROOTFS},
        "mounts": default_mounts(),
        "linux": {
            "resources": {"devices": default_devices()},
            "cgroupsPath": posixpath.join("/", namespace, container_id),
            "namespaces": default_namespaces(),
            "maskedPaths": list(DEFAULT_MASKED_PATHS),
            "readonlyPaths": list(DEFAULT_READONLY_PATHS),
        },
    }
    spec["linux"]["seccomp"] = default_profile(spec)
    return spec


SeccompMode: TypeAlias = Literal["default", "unconfined", "custom"]


@dataclass
class Context:
    """What options may consult or record besides the spec itself.

    ``rootfs`` is the host path of the container's root filesystem, already
    mounted, used to resolve user and group names; when it is None, an
    absolute ``root.path`` in the spec is used instead (containerd's rule for
    containers without a snapshot). ``labels`` collects container labels that
    options derive (the image stop signal); the caller stores them.
    ``seccomp`` says what :func:`berth.oci.generate` does with the profile once
    every option has run: rebuild the default for the final capabilities,
    drop it, or keep what an option installed.
    """

    container_id: str
    namespace: str
    rootfs: str | None = None
    labels: MutableMapping[str, str] = field(default_factory=dict)
    seccomp: SeccompMode = "default"

    def root_path(self, spec: Spec) -> str:
        """The host directory of the container's rootfs for file lookups.

        Raises InvalidArgument when neither the context nor the spec names an
        absolute one (containerd: "rootfs absolute path is required").
        """
        if self.rootfs is not None:
            root = os.fspath(self.rootfs)
        else:
            root = str(spec.get("root", {}).get("path", ""))
        if not os.path.isabs(root):
            raise errdefs.InvalidArgument(
                "rootfs absolute path is required to resolve users and groups"
            )
        return root


SpecOpt: TypeAlias = Callable[[Spec, Context], None]
"""An option: edits the spec in place, raising an ``errdefs`` error on bad input."""


def apply_opts(spec: Spec, ctx: Context, opts: Iterable[SpecOpt]) -> None:
    """Apply ``opts`` in order; the first error stops the rest."""
    for opt in opts:
        opt(spec, ctx)


def dumps(spec: Spec) -> bytes:
    """Serialise a spec as ``config.json`` bytes (stable key order, UTF-8)."""
    return json.dumps(spec, indent=2, sort_keys=False).encode()
