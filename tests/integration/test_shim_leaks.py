"""200 quick container lifecycles, each with its own shim, leave nothing behind:
no processes, FIFOs, sockets, mounts, console-socket directories or cgroups."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from berth.api.runtime.v2.task import shim_pb2 as api
from tests.support.oci_bundle import (
    EventSink,
    ShimProcess,
    cleanup_base,
    make_bundle,
    short_dir,
    spec,
)
from tests.support.procs import processes_mentioning

pytestmark = pytest.mark.integration

CYCLES = 200
PARALLEL = 4


def _zombie_children() -> list[int]:
    me = str(os.getpid())
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and fields[1] == me:
            out.append(int(entry))
    return out


def _special_files(root: Path) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                out.append(os.path.join(dirpath, name))
    return out


def _pty_dirs() -> set[str]:
    return {e for e in os.listdir("/tmp") if e.startswith("pty")}


def _mounts_under(path: Path) -> list[str]:
    return [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(str(path))
    ]


def _cgroups_under(group: str) -> list[str]:
    out = []
    for controller in os.listdir("/sys/fs/cgroup"):
        d = Path("/sys/fs/cgroup") / controller / group.strip("/")
        if d.is_dir():
            out += [str(p) for p in d.iterdir() if p.is_dir()]
    return out


def test_two_hundred_lifecycles_leak_nothing() -> None:
    base = short_dir()
    group = f"/berth-leak-{os.getpid()}"
    ptys_before = _pty_dirs()

    async def cycle(n: int, sink: EventSink) -> None:
        id = f"l{n}"
        b = make_bundle(base, id, spec(["true"], cgroups_path=f"{group}/{id}"))
        out = b.fifo("out")
        reader = os.open(out, os.O_RDONLY | os.O_NONBLOCK)
        shim = ShimProcess(base=base, bundle=b.path, id=id)
        await asyncio.to_thread(shim.start)
        task = await shim.connect()
        try:
            await task.Create(
                api.CreateTaskRequest(id=id, bundle=str(b.path), rootfs=b.rootfs, stdout=out)
            )
            await task.Start(api.StartRequest(id=id))
            assert (await task.Wait(api.WaitRequest(id=id))).exit_status == 0
            await task.Delete(api.DeleteRequest(id=id))
            await task.Shutdown(api.ShutdownRequest(id=id))
        finally:
            await shim.close()
            os.close(reader)
            # The client owns its FIFOs (ctr removes them the same way).
            os.unlink(out)

    async def main() -> None:
        sink = EventSink(str(base / "d.sock") + ".ttrpc")
        await sink.start()
        sem = asyncio.Semaphore(PARALLEL)

        async def limited(n: int) -> None:
            async with sem:
                await cycle(n, sink)

        await asyncio.gather(*(limited(n) for n in range(CYCLES)))
        await sink.wait_for("/tasks/delete", CYCLES, timeout=30)
        await sink.stop()

    started = time.monotonic()
    try:
        asyncio.run(asyncio.wait_for(main(), 240))
        elapsed = time.monotonic() - started
        # Shims exit asynchronously after Shutdown answers.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and processes_mentioning(str(base)):
            time.sleep(0.05)
        assert processes_mentioning(str(base)) == []
        assert _zombie_children() == []
        assert _special_files(base) == [f"{base}/d.sock.ttrpc"] or _special_files(base) == []
        assert not list((base / "s").iterdir())
        assert _mounts_under(base) == []
        assert _pty_dirs() - ptys_before == set()
        assert _cgroups_under(group) == []
        assert not list((base / "runc" / "default").iterdir())
        print(f"{CYCLES} lifecycles in {elapsed:.1f}s")
    finally:
        cleanup_base(base)
        for controller in os.listdir("/sys/fs/cgroup"):
            d = Path("/sys/fs/cgroup") / controller / group.strip("/")
            if d.is_dir():
                for child in d.iterdir():
                    if child.is_dir():
                        child.rmdir()
                d.rmdir()
