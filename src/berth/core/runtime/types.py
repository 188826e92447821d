"""The runtime's records: what goes into a task and what comes back out.

Plain dataclasses, free of protobuf: opaque payloads (the OCI spec, runtime
options, resources, statistics, process info) travel as
:class:`~berth.core.metadata.containers.AnyValue` pairs, and timestamps as
integer nanoseconds since the epoch (0 meaning "not set"), so the gRPC adapter
converts at its edge and nothing is lost on the way.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from berth.core.metadata.containers import AnyValue
from berth.core.mount import Mount

__all__ = [
    "IO",
    "CreateOpts",
    "ExecOpts",
    "Exit",
    "ProcessInfo",
    "State",
    "Status",
]


class Status(enum.IntEnum):
    """A process's status; the values are containerd's ``types.task.Status``."""

    UNKNOWN = 0
    CREATED = 1
    RUNNING = 2
    STOPPED = 3
    PAUSED = 4
    PAUSING = 5


@dataclass(frozen=True, slots=True)
class IO:
    """Where a process's stdio goes: paths (FIFOs, files, URIs) the shim opens."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


@dataclass(frozen=True)
class CreateOpts:
    """Everything a new task needs.

    ``runtime`` is a runtime name (``io.containerd.runc.v2``) or an absolute
    path to a shim binary. ``task_options`` (from the create request) win over
    ``runtime_options`` (from the container record), as in containerd.
    """

    spec: AnyValue
    runtime: str
    rootfs: list[Mount] = field(default_factory=list)
    io: IO = IO()
    checkpoint: str = ""
    runtime_options: AnyValue | None = None
    task_options: AnyValue | None = None

    @property
    def shim_options(self) -> AnyValue | None:
        return self.task_options if self.task_options is not None else self.runtime_options


@dataclass(frozen=True)
class ExecOpts:
    """An additional process: its OCI process spec (an Any) and stdio."""

    spec: AnyValue | None
    io: IO = IO()


@dataclass(frozen=True, slots=True)
class Exit:
    """How a process ended."""

    pid: int
    status: int
    exited_at_ns: int = 0


@dataclass(frozen=True, slots=True)
class State:
    """A process as the shim reports it."""

    id: str
    pid: int
    status: Status
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False
    exit_status: int = 0
    exited_at_ns: int = 0


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One pid in a task, with the shim's optional details about it."""

    pid: int
    info: AnyValue | None = None
