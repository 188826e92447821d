"""OCI bundles and shim plumbing for shim tests.

* :func:`busybox_lower` extracts the offline busybox layer once per session;
  :func:`overlay_rootfs` gives each container an overlay over it (so a test
  container costs a mount, not 400 file creations);
* :func:`write_spec` writes a minimal, correct ``config.json`` (namespaces,
  /proc, /dev, /sys, no terminal unless asked);
* :class:`ShimProcess` runs ``containerd-shim-berth-v2 start`` and connects a
  ttrpc client; :class:`EventSink` is a fake daemon events endpoint on
  ``<address>.ttrpc`` that records forwarded envelopes.

The spec writer lives here, not in ``berth.oci``: spec generation is a later
issue and these tests must not depend on it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import empty_pb2

from berth.api.runtime.v2.task import shim_pb2
from berth.api.services.ttrpc.events.v1 import events_pb2
from berth.api.types import mount_pb2
from berth.ttrpc import CallContext, Client, Server, ServiceStub

SHIM_BINARY = str(Path(sys.executable).with_name("containerd-shim-berth-v2"))
TASK_SERVICE = shim_pb2.DESCRIPTOR.services_by_name["Task"]

_lower_cache: dict[str, Path] = {}


def short_dir(prefix: str = "b.") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def busybox_lower() -> Path:
    """The busybox layer extracted once (per process) under /tmp."""
    if "busybox" not in _lower_cache:
        from tests.support.imagebuilder import build_busybox_image

        image = build_busybox_image()
        dest = short_dir("b.lower.")
        with tarfile.open(fileobj=io.BytesIO(image.layers[0].tar)) as tf:
            tf.extractall(dest, filter="tar")
        _lower_cache["busybox"] = dest
        atexit.register(shutil.rmtree, dest, True)
    return _lower_cache["busybox"]


def overlay_rootfs(scratch: Path) -> list[mount_pb2.Mount]:
    """An overlay mount over the busybox lower dir, upper/work in ``scratch``."""
    upper, work = scratch / "upper", scratch / "work"
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    return [
        mount_pb2.Mount(
            type="overlay",
            source="overlay",
            options=[f"lowerdir={busybox_lower()}", f"upperdir={upper}", f"workdir={work}"],
        )
    ]


def spec(
    args: Sequence[str],
    *,
    terminal: bool = False,
    cgroups_path: str = "",
    memory_limit: int | None = None,
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
    pid_namespace: bool = True,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A minimal runtime spec for a busybox rootfs at ``rootfs``."""
    namespaces = [{"type": t} for t in ("mount", "ipc", "uts", "network")]
    if pid_namespace:
        namespaces.append({"type": "pid"})
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
        "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
    }
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    if memory_limit is not None:
        linux["resources"] = {"memory": {"limit": memory_limit, "swap": memory_limit}}
    caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID", "CAP_SETUID"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": list(env),
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs"},
        "hostname": "berth-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
        ],
        "annotations": annotations or {},
        "linux": linux,
    }


def process_spec(args: Sequence[str], *, terminal: bool = False) -> dict[str, Any]:
    return {
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": list(args),
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "cwd": "/",
    }


def write_spec(bundle: Path, doc: dict[str, Any]) -> None:
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(doc))


@dataclass
class Bundle:
    """A bundle directory plus the overlay scratch it mounts."""

    path: Path
    scratch: Path
    rootfs: list[mount_pb2.Mount] = field(default_factory=list)

    def fifo(self, name: str) -> str:
        p = self.scratch / name
        os.mkfifo(p)
        return str(p)


def make_bundle(base: Path, id: str, doc: dict[str, Any]) -> Bundle:
    bundle = base / "bundles" / id
    scratch = base / "scratch" / id
    write_spec(bundle, doc)
    scratch.mkdir(parents=True, exist_ok=True)
    return Bundle(bundle, scratch, overlay_rootfs(scratch))


class ShimProcess:
    """A shim started the way containerd starts one."""

    def __init__(self, *, base: Path, bundle: Path, id: str, namespace: str = "default") -> None:
        self.base = base
        self.bundle = bundle
        self.id = id
        self.namespace = namespace
        self.daemon_address = str(base / "d.sock")
        self.address = ""
        self.client: Client | None = None
        self.task: Any = None

    def argv(self, action: str) -> list[str]:
        return [
            SHIM_BINARY,
            "-namespace",
            self.namespace,
            "-address",
            self.daemon_address,
            "-publish-binary",
            "/bin/false",
            "-id",
            self.id,
            action,
        ]

    def start(self, stdin: bytes = b"") -> str:
        env = dict(os.environ, TTRPC_ADDRESS=self.daemon_address + ".ttrpc")
        out = subprocess.run(
            self.argv("start"),
            cwd=self.bundle,
            input=stdin,
            capture_output=True,
            env=env,
            timeout=30,
            check=True,
        )
        self.address = out.stdout.decode()
        return self.address

    async def connect(self) -> Any:
        self.client = await Client.connect(self.address, timeout=5)
        self.task = ServiceStub(self.client, TASK_SERVICE)
        return self.task

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    def delete_command(self) -> shim_pb2.DeleteResponse:
        out = subprocess.run(
            [*self.argv("delete")[:-1], "-bundle", str(self.bundle), "delete"],
            cwd=self.bundle,
            capture_output=True,
            timeout=30,
            check=True,
        )
        return shim_pb2.DeleteResponse.FromString(out.stdout)


class EventSink:
    """A stand-in for the daemon's ttrpc events endpoint."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.envelopes: list[events_pb2.Envelope] = []
        self._changed = asyncio.Event()
        self.server: Server | None = None

    async def Forward(self, ctx: CallContext, req: events_pb2.ForwardRequest) -> empty_pb2.Empty:
        self.envelopes.append(req.envelope)
        self._changed.set()
        return empty_pb2.Empty()

    async def start(self) -> None:
        self.server = Server()
        self.server.register_service(events_pb2.DESCRIPTOR.services_by_name["Events"], self)
        await self.server.start(self.path)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None

    def topics(self, container_id: str | None = None) -> list[str]:
        return [
            e.topic
            for e in self.envelopes
            if container_id is None or container_id.encode() in e.event.value
        ]

    async def wait_for(self, topic: str, count: int = 1, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while sum(1 for e in self.envelopes if e.topic == topic) < count:
                self._changed.clear()
                await self._changed.wait()


def cleanup_base(base: Path) -> None:
    """Unmount anything left under ``base`` and remove it."""
    with contextlib.suppress(OSError):
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        for line in reversed(mounts):
            target = line.split()[1]
            if target.startswith(str(base)):
                subprocess.run(["umount", "-l", target], check=False)
    shutil.rmtree(base, ignore_errors=True)
