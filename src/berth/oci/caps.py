"""Linux capability names: the known set, the caller's own, and name checks."""

from __future__ import annotations

from collections.abc import Iterable

from berth import errdefs

__all__ = ["KNOWN_CAPABILITIES", "current", "from_bitmap", "normalize"]

# Indexed by capability number (CAP_CHOWN is 0 ... CAP_CHECKPOINT_RESTORE 40),
# the set containerd 1.6 knows.
KNOWN_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
_KNOWN = frozenset(KNOWN_CAPABILITIES)


def from_bitmap(mask: int) -> list[str]:
    """Names of the known capabilities set in ``mask``, lowest bit first."""
    return [name for bit, name in enumerate(KNOWN_CAPABILITIES) if mask >> bit & 1]


def current(status_path: str = "/proc/self/status") -> list[str]:
    """The effective capabilities of this process (what a privileged container gets).

    A daemon without CAP_SYS_RESOURCE, for instance, cannot hand it on, so a
    privileged spec must not ask for it.
    """
    with open(status_path, encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key == "CapEff":
                return from_bitmap(int(value.strip(), 16))
    raise errdefs.FailedPrecondition(f"{status_path} has no CapEff line")


def normalize(names: Iterable[str]) -> list[str]:
    """Canonical ``CAP_*`` names, accepting ``net_admin`` or ``CAP_NET_ADMIN``.

    ``ALL`` passes through unchanged for callers that give it a meaning.
    Raises InvalidArgument for a name that is not a known capability.
    """
    out: list[str] = []
    for raw in names:
        name = raw.strip().upper()
        if name == "ALL":
            out.append(name)
            continue
        if not name.startswith("CAP_"):
            name = "CAP_" + name
        if name not in _KNOWN:
            raise errdefs.InvalidArgument(f"unknown capability {raw!r}")
        out.append(name)
    return out
