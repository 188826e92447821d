"""Where a task's cgroups are, read from the kernel rather than the spec.

The spec's ``linux.cgroupsPath`` may be relative, systemd-style
(``slice:prefix:name``) or absent; ``/proc/<pid>/cgroup`` of the container's
init says where runc actually put it, on v1 (one directory per controller) and
on v2 (one unified directory) alike. Reading these small kernel files is done
inline: they never block on storage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["CGROUP_ROOT", "Cgroup", "is_unified", "read_int", "read_kv", "read_text"]

CGROUP_ROOT = "/sys/fs/cgroup"


def is_unified(root: str = CGROUP_ROOT) -> bool:
    """True on a pure cgroup v2 host."""
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


@dataclass(frozen=True, slots=True)
class Cgroup:
    """A process's cgroup: ``dirs`` maps v1 controller names (or ``""`` for
    the v2 unified hierarchy) to absolute directories."""

    unified: bool
    dirs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_pid(cls, pid: int, *, root: str = CGROUP_ROOT) -> Cgroup | None:
        """The cgroup of ``pid``, or None when the process is gone."""
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                text = f.read()
        except OSError:
            return None
        return cls.parse(text, unified=is_unified(root), root=root)

    @classmethod
    def parse(cls, text: str, *, unified: bool, root: str = CGROUP_ROOT) -> Cgroup:
        dirs: dict[str, str] = {}
        for line in text.splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            _, controllers, path = parts
            rel = path.lstrip("/")
            if unified:
                if controllers == "":
                    dirs[""] = os.path.join(root, rel)
                continue
            if controllers == "":
                continue  # the hybrid host's empty v2 tree
            for name in controllers.split(","):
                name = name.removeprefix("name=")
                dirs[name] = os.path.join(root, name, rel)
        return cls(unified=unified, dirs=dirs)

    def dir(self, controller: str) -> str | None:
        return self.dirs.get("" if self.unified else controller)

    def exists(self) -> bool:
        d = self.dir("memory")
        return d is not None and os.path.isdir(d)


def read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def read_int(path: str) -> int:
    """An integer file; ``max`` reads as 0 (unlimited), missing as 0."""
    text = read_text(path)
    if text is None:
        return 0
    text = text.strip().split()[0] if text.strip() else ""
    if not text or text == "max":
        return 0
    try:
        return int(text)
    except ValueError:
        return 0


def read_kv(path: str) -> dict[str, int]:
    """A flat keyed file (``key value`` per line)."""
    out: dict[str, int] = {}
    text = read_text(path)
    if text is None:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out
