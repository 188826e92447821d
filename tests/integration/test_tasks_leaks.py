"""Hundreds of ``ctr run --rm`` cycles leave nothing behind.

300 cycles in all: 150 on Berth's shim and 150 on Debian's Go shim, the two
runtimes in parallel so the daemon also handles concurrent creates and
deletes. Afterwards nothing that a task owns may remain: shim processes,
shim sockets, mounts, FIFOs, cgroups, bundle and work directories,
containers or snapshots (only the image's own layer snapshot stays).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import time
from pathlib import Path

import pytest

from tests.support.daemon import Berthd
from tests.support.imagebuilder import Image, write_oci_layout

pytestmark = pytest.mark.integration

IMAGE = "docker.io/library/berth-leaks:1"
CYCLES_PER_RUNTIME = 150
RUNTIMES = {"b": "io.containerd.berth.v2", "g": "io.containerd.runc.v2"}
TASK_DIR = "io.containerd.runtime.v2.task"


def shim_pids(address: str) -> list[int]:
    """Shims started for this daemon: their command line names its socket.

    Berth's shim zygote (one per daemon, forking shims; it lingers a few
    seconds after the last shim) is not a per-task resource and is left out.
    """
    needle = f"\0-address\0{address}\0".encode()  # not berthd's own --address
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and not cmdline.endswith(b"\0zygote\0"):
            found.append(int(entry))
    return found


def socket_paths(d: Berthd, id: str) -> list[Path]:
    digest = hashlib.sha256(os.path.join(d.address, "default", id).encode()).hexdigest()
    # Berth's shim keeps sockets beside the daemon's; the Go shim under /run/containerd.
    return [d.base / "s" / digest, Path("/run/containerd/s") / digest]


def cycle(d: Berthd, tag: str, runtime: str) -> list[str]:
    ids = []
    for i in range(CYCLES_PER_RUNTIME):
        id = f"leak-{tag}-{i}"
        d.ctr("run", "--rm", "--runtime", runtime, IMAGE, id, "/bin/true")
        ids.append(id)
    return ids


def test_run_rm_cycles_leak_nothing(berthd: Berthd, busybox_image: Image) -> None:
    d = berthd
    layout = write_oci_layout(d.base / "bb.tar", busybox_image, image_name=IMAGE)
    d.ctr("images", "import", str(layout))
    snapshots_before = d.ctr("snapshots", "ls").stdout.splitlines()
    mounts_before = Path("/proc/self/mountinfo").read_text().count(str(d.base))

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(RUNTIMES)) as pool:
        futures = [pool.submit(cycle, d, tag, rt) for tag, rt in RUNTIMES.items()]
        ids = [id for f in futures for id in f.result()]
    elapsed = time.monotonic() - start
    assert len(ids) == 2 * CYCLES_PER_RUNTIME
    print(f"{len(ids)} run/rm cycles in {elapsed:.1f}s")

    # Shims exit right after their task is deleted; give the last ones a moment.
    deadline = time.monotonic() + 10
    while shim_pids(d.address) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes() for p in shim_pids(d.address)}
    assert left == {}, left

    assert d.ctr("containers", "ls", "-q").stdout.split() == []
    assert d.ctr("tasks", "ls").stdout.splitlines()[1:] == []
    assert d.ctr("snapshots", "ls").stdout.splitlines() == snapshots_before
    assert Path("/proc/self/mountinfo").read_text().count(str(d.base)) == mounts_before
    assert list((d.state / TASK_DIR / "default").iterdir()) == []
    assert list((d.root / TASK_DIR / "default").iterdir()) == []

    wanted = set(ids)
    leftovers = []
    for id in ids:
        leftovers += [str(p) for p in socket_paths(d, id) if p.exists()]
    fifo_root = Path("/run/containerd/fifo")
    if fifo_root.is_dir():
        for sub in fifo_root.iterdir():
            with_ids = [f.name for f in sub.iterdir() if f.name.rsplit("-", 1)[0] in wanted]
            leftovers += [str(sub / n) for n in with_ids]
    cgroup_root = Path("/sys/fs/cgroup")
    for controller in cgroup_root.iterdir():
        ns_dir = controller / "default"
        if ns_dir.is_dir():
            leftovers += [str(c) for c in ns_dir.iterdir() if c.name in wanted]
    assert leftovers == [], leftovers[:5]
