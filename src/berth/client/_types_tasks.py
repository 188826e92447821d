"""The task and snapshot records of :mod:`berth.client.types` that ``run`` never needs.

Private: import them from :mod:`berth.client.types`, which loads this module
the first time one of them is named.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from berth.client.types import AnyValue


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One host pid of a task (``ctr tasks ps``); ``info`` is the runtime's
    decoded detail for it (runc: ``{"exec_id": ...}`` for exec'd processes)."""

    pid: int
    info: dict[str, object] | None = None


@dataclass(frozen=True, slots=True)
class TaskMetric:
    """One task's resource statistics.

    ``stats`` is the decoded cgroup statistics (cgroups v1 or v2 metrics, as
    protobuf field names) or None for a type this SDK does not know; ``data``
    keeps the raw typed payload either way.
    """

    id: str
    timestamp: datetime | None
    type_url: str
    stats: dict[str, object] | None
    data: AnyValue | None = None


@dataclass(frozen=True, slots=True)
class SnapshotUsage:
    """The disk a snapshot uses of its own (not its parents'): bytes and inodes."""

    size: int
    inodes: int


# Public under berth.client.types (see there): repr, pickle and type hints name that home.
for _cls in (ProcessInfo, TaskMetric, SnapshotUsage):
    _cls.__module__ = "berth.client.types"
del _cls
