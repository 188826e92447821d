"""Placing processes in cgroups, on v1 (per-controller hierarchies) and v2 hosts."""

from __future__ import annotations

import os
from pathlib import Path

from berth import errdefs

CGROUP_ROOT = Path("/sys/fs/cgroup")


def is_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def v1_hierarchies() -> list[Path]:
    """Mounted v1 controller directories (each once, skipping co-mount links)."""
    seen: set[str] = set()
    out: list[Path] = []
    for entry in sorted(CGROUP_ROOT.iterdir()):
        if entry.name == "unified" or not entry.is_dir():
            continue
        real = os.path.realpath(entry)
        if real in seen or not (Path(real) / "cgroup.procs").exists():
            continue
        seen.add(real)
        out.append(Path(real))
    return out


def move_self(path: str, pid: int | None = None) -> None:
    """Move ``pid`` (default: this process) into cgroup ``path``, creating it.

    Raises FailedPrecondition when the cgroup cannot be created or joined.
    """
    rel = path.strip("/")
    if not rel:
        raise errdefs.InvalidArgument("cgroup path must not be empty")
    pid = pid or os.getpid()
    targets = [CGROUP_ROOT / rel] if is_v2() else [h / rel for h in v1_hierarchies()]
    for target in targets:
        try:
            target.mkdir(parents=True, exist_ok=True)
            (target / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            raise errdefs.FailedPrecondition(
                f"cannot join cgroup {target}: {exc.strerror}"
            ) from None
