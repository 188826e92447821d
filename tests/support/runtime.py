"""A task manager for unit tests: one working under a temporary directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from berth.core.runtime.manager import ManagerConfig, TaskManager


def task_manager(base: Path, sock: str = "d.sock", **settings: Any) -> TaskManager:
    """A TaskManager rooted in ``base``, serving the socket ``base/sock``, that
    tells shims to publish through /usr/bin/true; ``settings`` are further
    ManagerConfig fields (shim_group, runc_root, ...)."""
    return TaskManager(
        ManagerConfig(
            root=base / "root",
            state=base / "state",
            address=str(base / sock),
            ttrpc_address=str(base / f"{sock}.ttrpc"),
            publish_binary="/usr/bin/true",
            **settings,
        )
    )
