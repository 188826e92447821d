"""The runtime: tasks, the shims that run them, their bundles, restore at boot.

Layering, from the bottom:

* :mod:`.types` - the protobuf-free records callers exchange with the runtime;
* :mod:`.bundle` - bundle and work directories on disk (blocking calls);
* :mod:`.binary` - resolving runtime names to shim binaries, running their
  ``start``/``delete`` commands, copying their log FIFO;
* :mod:`.shim` - :class:`ShimTask`, one task over its shim's ttrpc API (the
  only module here that speaks the shim's protobuf messages);
* :mod:`.manager` - :class:`TaskManager`: create, delete, dead-shim cleanup,
  restore;
* :mod:`.plugin` - the ``io.containerd.runtime.v2.task`` registration (import
  it to register; nothing here imports it).
"""

from berth.core.runtime.binary import binary_name, resolve_runtime_path
from berth.core.runtime.bundle import Bundle
from berth.core.runtime.manager import ManagerConfig, TaskManager
from berth.core.runtime.shim import ShimTask
from berth.core.runtime.types import IO, CreateOpts, ExecOpts, Exit, ProcessInfo, State, Status

__all__ = [
    "IO",
    "Bundle",
    "CreateOpts",
    "ExecOpts",
    "Exit",
    "ManagerConfig",
    "ProcessInfo",
    "ShimTask",
    "State",
    "Status",
    "TaskManager",
    "binary_name",
    "resolve_runtime_path",
]
