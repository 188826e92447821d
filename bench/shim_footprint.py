#!/usr/bin/env python3
"""Per-container memory of ``containerd-shim-berth-v2`` next to Debian's
``containerd-shim-runc-v2``, measured in one run.

Usage (root, from the repository)::

    .venv/bin/python bench/shim_footprint.py            # N=10 per runtime
    .venv/bin/python bench/shim_footprint.py -n 20 --json out.json
    .venv/bin/python bench/shim_footprint.py -n 20 --sets runc-v2,berthd,berthd-grouped

Up to five sets of N detached ``sleep`` containers run at the same time:

* ``runc-v2``: ``io.containerd.runc.v2`` (Go), the reference;
* ``berth``: ``io.containerd.berth.v2`` as it starts by default, each shim
  forked by the per-daemon zygote;
* ``berth-spawn``: the same shim with the zygote disabled
  (``BERTH_SHIM_ZYGOTE=0`` in its daemon's environment), one fresh
  interpreter per container, i.e. the behaviour before the zygote;
* ``berthd``: Berth's shim under berthd with its default configuration (one
  zygote-forked shim per container);
* ``berthd-grouped``: the same under a berthd configured with
  ``shim_group = "namespace"``, so all N containers share one shim server.

``berth-spawn`` and ``runc-v2`` share one containerd; ``berth`` runs under a
second one (the zygote switch is an environment variable the daemon passes
to its shims); each berthd set has its own berthd. The five sets are
selected with ``--sets``. Figures come from ``/proc/PID/smaps_rollup``. PSS charges each
page to the processes sharing it, so it is the fair per-container cost; note
that pages shared by *every* Python process on the machine (libpython, the
interpreter's own text) are split among all of them, including the other set.
The zygote is reported on its own and also amortised over its shims
("+zygote/N"), since it exists only to serve them. A shim serving k
containers is charged 1/k to each, so the per-container shim columns of a
grouped set are the shim's share.

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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.containerd_peer import Containerd, available  # noqa: E402
from tests.support.daemon import Berthd  # noqa: E402
from tests.support.imagebuilder import build_busybox_image, write_oci_layout  # noqa: E402
from tests.support.oci_bundle import cleanup_base, short_dir  # noqa: E402

IMAGE = "docker.io/library/busybox:latest"
MiB = 1024 * 1024
ZYGOTE_ENV = "BERTH_SHIM_ZYGOTE"
GROUPED_CONFIG = (
    'version = 2\n[plugins."io.containerd.runtime.v2.task"]\nshim_group = "namespace"\n'
)


@dataclass(frozen=True)
class Mem:
    rss: int
    pss: int

    def __add__(self, other: Mem) -> Mem:
        return Mem(self.rss + other.rss, self.pss + other.pss)

    def share(self, k: int) -> Mem:
        return Mem(self.rss // k, self.pss // k)


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


Daemon = Containerd | Berthd


def task_pids(daemon: Daemon) -> dict[str, int]:
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
        clear(daemon)
        daemon.stop()


@contextmanager
def berthd(base: Path, *, config: str | None) -> Iterator[Berthd]:
    # Info level: at debug level berthd would also start its shims with -debug.
    daemon = Berthd(base, config=config, extra=["--log-level", "info"]).start()
    try:
        yield daemon
    finally:
        clear(daemon)
        daemon.stop()


#: Daemons by key, each started on first use in a directory of its own.
DAEMONS: dict[str, Callable[[Path], AbstractContextManager[Daemon]]] = {
    "containerd": lambda p: containerd(p, zygote=False),
    "containerd-zygote": lambda p: containerd(p, zygote=True),
    "berthd": lambda p: berthd(p, config=None),
    "berthd-grouped": lambda p: berthd(p, config=GROUPED_CONFIG),
}
#: Sets by name: the daemon they run under and the runtime they ask for.
SETS = {
    "runc-v2": ("containerd", "io.containerd.runc.v2"),
    "berth": ("containerd-zygote", "io.containerd.berth.v2"),
    "berth-spawn": ("containerd", "io.containerd.berth.v2"),
    "berthd": ("berthd", "io.containerd.berth.v2"),
    "berthd-grouped": ("berthd-grouped", "io.containerd.berth.v2"),
}


def clear(daemon: Daemon) -> None:
    """Remove every task and container the run created."""
    for id in daemon.ctr("tasks", "ls", "-q", check=False).stdout.split():
        daemon.ctr("tasks", "kill", "-s", "SIGKILL", id, check=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and task_pids(daemon):
        time.sleep(0.1)
    for id in daemon.ctr("tasks", "ls", "-q", check=False).stdout.split():
        daemon.ctr("tasks", "delete", "-f", id, check=False)
    for id in daemon.ctr("containers", "ls", "-q", check=False).stdout.split():
        daemon.ctr("containers", "delete", id, check=False)


def run_set(daemon: Daemon, name: str, runtime: str, n: int) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.monotonic()
        daemon.ctr("run", "-d", "--runtime", runtime, IMAGE, f"{name}-{i}", "sleep", "100000")
        times.append((time.monotonic() - t0) * 1000)
    return times


def measure(daemon: Daemon, name: str, runtime: str, n: int, times: list[float]) -> Row:
    pids = {k: v for k, v in task_pids(daemon).items() if k.startswith(name + "-")}
    if len(pids) != n:
        raise RuntimeError(f"{name}: expected {n} running tasks, found {len(pids)}")
    shim_of = {init: ppid(init) for init in pids.values()}
    served = {shim: list(shim_of.values()).count(shim) for shim in set(shim_of.values())}
    shim_mem, both_mem, shims, parents = [], [], set(), set()
    for init, shim in shim_of.items():
        shims.add(shim)
        parents.add(ppid(shim))
        # A grouped shim's memory is split among the containers it serves.
        s, i = mem_of(shim).share(served[shim]), mem_of(init)
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
        f"{'set':<15} {'shim RSS':>9} {'shim PSS':>9} {'+init RSS':>10} {'+init PSS':>10} "
        f"{'+zygote/N':>10} {'PSS ratio':>10} {'shims':>6} {'start ms':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = r.pss_with_zygote / ref.pss_with_zygote if ref.pss_with_zygote else 0.0
        lines.append(
            f"{r.name:<15} {r.shim_rss:>9.2f} {r.shim_pss:>9.2f} {r.shim_init_rss:>10.2f} "
            f"{r.shim_init_pss:>10.2f} {r.pss_with_zygote:>10.2f} {ratio:>9.2f}x {r.shims:>6} "
            f"{r.start_ms:>9.0f}"
        )
    for r in rows:
        if r.zygote_rss:
            lines.append(f"{r.name} zygote: RSS {r.zygote_rss:.2f} MiB, PSS {r.zygote_pss:.2f} MiB")
    lines.append(
        "MiB per container, medians; a shim serving k containers counts 1/k for each; '+init' "
        "adds the container's init (sleep); '+zygote/N' is (sum of shim PSS + zygote PSS) / N; "
        "ratio is +zygote/N against runc-v2."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10, help="containers per set (default 10)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait before reading")
    parser.add_argument(
        "--sets",
        default="runc-v2,berth,berth-spawn",
        help=f"comma-separated sets to run, of {','.join(SETS)}",
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not available():
        print("needs root, containerd, ctr and runc", file=sys.stderr)
        return 2
    wanted = args.sets.split(",")
    unknown = sorted(set(wanted) - set(SETS))
    if unknown:
        parser.error(f"unknown sets {unknown}; choose from {','.join(SETS)}")
    base = short_dir("b.fp.")
    try:
        tar = write_oci_layout(base / "busybox.tar", build_busybox_image(), image_name=IMAGE)
        with ExitStack() as stack:
            daemons: dict[str, Daemon] = {}

            def daemon(key: str) -> Daemon:
                # Sets naming the same daemon key share that daemon.
                if key not in daemons:
                    (base / key).mkdir()
                    d = daemons[key] = stack.enter_context(DAEMONS[key](base / key))
                    d.ctr("images", "import", str(tar))
                return daemons[key]

            sets = [(daemon(key), name, rt) for name, (key, rt) in SETS.items() if name in wanted]
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
