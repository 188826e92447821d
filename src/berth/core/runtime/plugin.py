"""Registers the task manager with berthd as ``io.containerd.runtime.v2.task``.

The plugin id and type are containerd's, so ``ctr plugins ls`` lists the
runtime where clients expect it. Init restores the shims of a previous run
before the gRPC server starts, so the first request already sees every
surviving task.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from typing import Any

from berth import errdefs, plugin
from berth.config import doc
from berth.core.metadata.containers import ContainerStore
from berth.core.runtime.manager import SHIM_GROUPS, ManagerConfig, TaskManager

__all__ = ["PLUGIN_ID", "RuntimeConfig"]

PLUGIN_ID = "task"


@dataclass
class RuntimeConfig:
    default_runtime: str = doc(
        "Runtime used for a task whose container names none (a runtime name such as"
        " io.containerd.runc.v2, or an absolute path to a shim binary).",
        "io.containerd.berth.v2",
    )
    shim_debug: bool = doc(
        "Start shims with -debug; they also get it when berthd logs at debug level.", False
    )
    shim_group: str = doc(
        'How containers run by Berth\'s own shim share shim servers: "" (one shim per'
        ' container, as containerd) or "namespace" (one shim server per namespace). Grouping'
        " cuts shim memory per container to a fraction, but one shim's death ends the"
        " supervision of every container in its group: the daemon cleans each up as after"
        " any shim crash (runc delete --force stops it) and reports its task stopped with"
        " 137. Containers whose spec names a group (io.containerd.runc.v2.group) keep it."
        " Other shims ignore this.",
        "",
    )
    runc_root: str = doc(
        "Directory under which runc keeps container state (<runc_root>/<namespace>/<id>)"
        " for every shim that takes runc options, when the task's options name no Root."
        " Empty means runc beside berthd's socket, where Berth's own shim puts it. containerd's"
        " Go shim would otherwise use /run/containerd/runc, the directory of any containerd"
        " on the host, so the same container id under both daemons would collide. Set"
        " /run/containerd/runc only to let tools that look there (runc --root"
        " /run/containerd/runc/<namespace> list) see berthd's containers; ids must then"
        " not repeat across the two daemons.",
        "",
    )

    def validate(self, file: str, prefix: str) -> None:
        from berth.config import ConfigError

        if self.shim_group not in SHIM_GROUPS:
            choices = " or ".join(repr(g) for g in SHIM_GROUPS)
            raise ConfigError(f"{file}: {prefix}.shim_group: {self.shim_group!r} must be {choices}")
        if self.runc_root and not os.path.isabs(self.runc_root):
            raise ConfigError(
                f"{file}: {prefix}.runc_root: {self.runc_root!r} must be an absolute path"
            )


async def _init(ic: plugin.InitContext) -> TaskManager:
    cfg: RuntimeConfig = ic.config or RuntimeConfig()
    md: Any = ic.get(plugin.METADATA)
    for d in (ic.root, ic.state):
        d.mkdir(mode=0o711, parents=True, exist_ok=True)
    manager = TaskManager(
        ManagerConfig(
            root=ic.root,
            state=ic.state,
            address=ic.address,
            ttrpc_address=ic.ttrpc_address,
            default_runtime=cfg.default_runtime,
            shim_debug=cfg.shim_debug or logging.getLogger("berth").isEnabledFor(logging.DEBUG),
            shim_group=cfg.shim_group,
            runc_root=cfg.runc_root,
        )
    )
    containers = ContainerStore(md)

    def runtime_of(namespace: str, id: str) -> str | None:
        try:
            return containers.get(namespace, id).runtime.name
        except errdefs.NotFound:
            return None

    await manager.restore(runtime_of)
    ic.meta.exports["default_runtime"] = cfg.default_runtime
    # containerd's runtime advertises the platforms it runs, for ctr plugins ls.
    machine = platform.machine()
    ic.meta.platforms.append(
        ("linux", {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine), "")
    )
    return manager


async def _close(manager: TaskManager) -> None:
    await manager.close()


REGISTRATION = plugin.register(
    plugin.Registration(
        type=plugin.RUNTIME_V2,
        id=PLUGIN_ID,
        init=_init,
        requires=(plugin.EVENT, plugin.METADATA),
        config=RuntimeConfig,
        close=_close,
    )
)
