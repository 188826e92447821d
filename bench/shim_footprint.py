#!/usr/bin/env python3
"""Per-container memory of ``containerd-shim-berth-v2`` next to Debian's
``containerd-shim-runc-v2``, measured in one run under Debian's containerd.

Usage (root, from the repository)::

    .venv/bin/python bench/shim_footprint.py            # N=10 per runtime
    .venv/bin/python bench/shim_footprint.py -n 20 --json out.json

Three sets of N detached ``sleep`` containers run at the same time:

* ``runc-v2``: ``io.containerd.runc.v2`` (Go), the reference;
* ``berth``: ``io.containerd.berth.v2`` as it starts by default, each shim
  forked by the per-daemon zygote;
* ``berth-spawn``: the same shim with the zygote disabled
  (``BERTH_SHIM_ZYGOTE=0`` in its daemon's environment), one fresh
  interpreter per container, i.e. the behaviour before the zygote.

``berth-spawn`` and ``runc-v2`` share one containerd; ``berth`` runs under a
second one (the zygote switch is an environment variable the daemon passes
to its shims). Figures come from ``/proc/PID/smaps_rollup``. PSS charges each
page to the processes sharing it, so it is the fair per-container cost; note
that pages shared by *every* Python process on the machine (libpython, the
interpreter's own text) are split among all of them, including the other set.
The zygote is reported on its own and also amortised over its shims
("+zygote/N"), since it exists only to serve them.

The shim is found as the parent of the container's init (a v2 shim is its
containers' subreaper). Nothing here asserts: it prints a table and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.containerd_peer import Containerd, available  # noqa: E402
from tests.support.imagebuilder import build_busybox_image, write_oci_layout  # noqa: E402
from tests.support.oci_bundle import cleanup_base, short_dir  # noqa: E402

IMAGE = "docker.io/library/busybox:latest"
MiB = 1024 * 1024
ZYGOTE_ENV = "BERTH_SHIM_ZYGOTE"


@dataclass(frozen=True)
class Mem:
    rss: int
    pss: int

    def __add__(self, other: Mem) -> Mem:
        return Mem(self.rss + other.rss, self.pss + other.pss)


@dataclass
class Row:
    name: str
    runtime: str
    n: int
    shim_rss: float
    shim_pss: float
    shim_init_rss: float
    shim_init_pss: float
    shims: int
    zygote_rss: float
    zygote_pss: float
    pss_with_zygote: float
    start_ms: float


def mem_of(pid: int) -> Mem:
    """RSS and PSS in bytes from smaps_rollup."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key == "Rss":
                rss = int(rest.split()[0]) * 1024
            elif key == "Pss":
                pss = int(rest.split()[0]) * 1024
    return Mem(rss, pss)


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def task_pids(daemon: Containerd) -> dict[str, int]:
    out = daemon.ctr("tasks", "ls").stdout.splitlines()[1:]
    pids = {}
    for line in out:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "RUNNING":
            pids[fields[0]] = int(fields[1])
    return pids


@contextmanager
def containerd(base: Path, *, zygote: bool) -> Iterator[Containerd]:
    saved = os.environ.get(ZYGOTE_ENV)
    os.environ[ZYGOTE_ENV] = "1" if zygote else "0"
    try:
        daemon = Containerd(base).start()
    finally:
        if saved is None:
            del os.environ[ZYGOTE_ENV]
        else:
            os.environ[ZYGOTE_ENV] = saved
    try:
        yield daemon
    finally:
        for id in daemon.ctr("tasks", "ls", "-q", check=False).stdout.split():
            daemon.ctr("tasks", "kill", "-s", "SIGKILL", id, check=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and task_pids(daemon):
            time.sleep(0.1)
        for id in daemon.ctr("tasks", "ls", "-q", check=False).stdout.split():
            daemon.ctr("tasks", "delete", "-f", id, check=False)
        for id in daemon.ctr("containers", "ls", "-q", check=False).stdout.split():
            daemon.ctr("containers", "delete", id, check=False)
        daemon.stop()


def run_set(daemon: Containerd, name: str, runtime: str, n: int) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.monotonic()
        daemon.ctr("run", "-d", "--runtime", runtime, IMAGE, f"{name}-{i}", "sleep", "100000")
        times.append((time.monotonic() - t0) * 1000)
    return times


def measure(daemon: Containerd, name: str, runtime: str, n: int, times: list[float]) -> Row:
    pids = {k: v for k, v in task_pids(daemon).items() if k.startswith(name + "-")}
    if len(pids) != n:
        raise RuntimeError(f"{name}: expected {n} running tasks, found {len(pids)}")
    shim_mem, both_mem, shims, parents = [], [], set(), set()
    for init in pids.values():
        shim = ppid(init)
        shims.add(shim)
        parents.add(ppid(shim))
        s, i = mem_of(shim), mem_of(init)
        shim_mem.append(s)
        both_mem.append(s + i)
    zygote = Mem(0, 0)
    for p in parents:
        if "zygote" in cmdline(p):
            zygote = zygote + mem_of(p)
    total_pss = sum(mem_of(s).pss for s in shims) + zygote.pss
    return Row(
        name=name,
        runtime=runtime,
        n=n,
        shim_rss=statistics.median(m.rss for m in shim_mem) / MiB,
        shim_pss=statistics.median(m.pss for m in shim_mem) / MiB,
        shim_init_rss=statistics.median(m.rss for m in both_mem) / MiB,
        shim_init_pss=statistics.median(m.pss for m in both_mem) / MiB,
        shims=len(shims),
        zygote_rss=zygote.rss / MiB,
        zygote_pss=zygote.pss / MiB,
        pss_with_zygote=total_pss / n / MiB,
        start_ms=statistics.median(times),
    )


def table(rows: list[Row]) -> str:
    ref = next((r for r in rows if r.name == "runc-v2"), rows[0])
    head = (
        f"{'set':<12} {'shim RSS':>9} {'shim PSS':>9} {'+init RSS':>10} {'+init PSS':>10} "
        f"{'+zygote/N':>10} {'PSS ratio':>10} {'shims':>6} {'start ms':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = r.pss_with_zygote / ref.pss_with_zygote if ref.pss_with_zygote else 0.0
        lines.append(
            f"{r.name:<12} {r.shim_rss:>9.2f} {r.shim_pss:>9.2f} {r.shim_init_rss:>10.2f} "
            f"{r.shim_init_pss:>10.2f} {r.pss_with_zygote:>10.2f} {ratio:>9.2f}x {r.shims:>6} "
            f"{r.start_ms:>9.0f}"
        )
    for r in rows:
        if r.zygote_rss:
            lines.append(f"{r.name} zygote: RSS {r.zygote_rss:.2f} MiB, PSS {r.zygote_pss:.2f} MiB")
    lines.append(
        "MiB per container, medians; '+init' adds the container's init (sleep); '+zygote/N' is "
        "(sum of shim PSS + zygote PSS) / N; ratio is +zygote/N against runc-v2."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10, help="containers per set (default 10)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait before reading")
    parser.add_argument(
        "--sets", default="runc-v2,berth,berth-spawn", help="comma-separated sets to run"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not available():
        print("needs root, containerd, ctr and runc", file=sys.stderr)
        return 2
    base = short_dir("b.fp.")
    try:
        tar = write_oci_layout(base / "busybox.tar", build_busybox_image(), image_name=IMAGE)
        (base / "a").mkdir()
        (base / "b").mkdir()
        with (
            containerd(base / "a", zygote=False) as plain,
            containerd(base / "b", zygote=True) as zy,
        ):
            plain.ctr("images", "import", str(tar))
            zy.ctr("images", "import", str(tar))
            wanted = args.sets.split(",")
            sets = [
                s
                for s in [
                    (plain, "runc-v2", "io.containerd.runc.v2"),
                    (zy, "berth", "io.containerd.berth.v2"),
                    (plain, "berth-spawn", "io.containerd.berth.v2"),
                ]
                if s[1] in wanted
            ]
            times = {name: run_set(d, name, rt, args.n) for d, name, rt in sets}
            time.sleep(args.settle)
            rows = [measure(d, name, rt, args.n, times[name]) for d, name, rt in sets]
        print(table(rows))
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    finally:
        cleanup_base(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
