"""The harness's command line: set up, measure both daemons, report, tear down.

Everything the run creates lives under one ``/tmp/bb.XXXXXX`` directory (plus
the registry's own temp dir, and the per-namespace directories containerd's
shims make under /run/containerd and the cgroup hierarchies). Teardown runs
on success, failure, ^C and SIGTERM: containers are removed, daemons and the
registry are stopped by PID, mounts below the directory are unmounted, the
directory is deleted, and the empty directories the run caused elsewhere are
removed again.

Exit status: 0 when every column has numbers or a stated reason for having
none; 1 when some measurement failed (the report says which); 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench.berthbench import procs
from bench.berthbench.daemons import CTR, Berthd, Containerd, Daemon
from bench.berthbench.images import BenchImage, build_images
from bench.berthbench.measure import NS_PULL, NS_RUN, Bench, RowResult, Settings
from bench.berthbench.report import markdown_summary, text_table, update_docs
from bench.berthbench.rows import ROWS, RowSpec, select_rows
from tests.support.registry import Registry

__all__ = ["main", "run"]

BENCH_DIR = Path(__file__).resolve().parents[1]
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DOCS_PAGE = REPO / "docs" / "benchmarks.md"
SCHEMA = "berthbench/1"

# Directories containerd's shims create outside the run's temp dir; removed
# afterwards when the run created them and they are empty again.
_RUN_DIRS = (
    Path("/run/containerd"),
    Path("/run/containerd/s"),
    Path("/run/containerd/fifo"),
    Path("/run/containerd/runc"),
    Path("/run/containerd/runc") / NS_RUN,
    Path("/run/containerd/runc") / NS_PULL,
)


def _log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bench/run.sh",
        description="Measure Berth and containerd side by side, in one run.",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 repetition, no warm-up, 10 containers, heavy rows skipped",
    )
    ap.add_argument(
        "--rows",
        action="append",
        metavar="ID[,ID...]",
        help="only these rows (ids or shell globs, e.g. pull_*); see --list",
    )
    ap.add_argument("--reps", type=int, metavar="N", help="repetitions per row (default: per row)")
    ap.add_argument("--warmups", type=int, metavar="N", help="warm-ups per row and daemon")
    ap.add_argument("--fleet", type=int, metavar="N", help="containers in the fleet rows (50)")
    ap.add_argument("--parallel", type=int, default=8, metavar="P", help="run -d at once (8)")
    ap.add_argument(
        "--output-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where <timestamp>.json and .md go (default bench/results)",
    )
    ap.add_argument(
        "--update-docs",
        action="store_true",
        help=f"rewrite the results section of {DOCS_PAGE.relative_to(REPO)}",
    )
    ap.add_argument("--list", action="store_true", help="list the rows and exit")
    return ap


def _positive(ap: argparse.ArgumentParser, name: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        ap.error(f"--{name} must be at least {minimum}")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args = ap.parse_args(args_list)
    try:
        specs = select_rows(args.rows)
    except ValueError as exc:
        ap.error(str(exc))
    if args.list:
        for spec in ROWS:
            heavy = " (heavy: skipped by --quick)" if spec.heavy else ""
            print(f"{spec.id:16} {spec.label(fleet=50, parallel=8)}{heavy}")
        return 0
    _positive(ap, "reps", args.reps, 1)
    _positive(ap, "warmups", args.warmups, 0)
    _positive(ap, "fleet", args.fleet, 1)
    _positive(ap, "parallel", args.parallel, 1)
    if os.geteuid() != 0:
        print("bench: must run as root (containers, mounts, cgroups)", file=sys.stderr)
        return 2
    settings = Settings(
        quick=args.quick,
        reps=args.reps,
        warmups=args.warmups,
        fleet=args.fleet or (10 if args.quick else 50),
        parallel=args.parallel,
    )
    entry = os.environ.get("BERTHBENCH_ENTRY", "python -m bench.berthbench")
    command = " ".join([entry, shlex.join(args_list)]).strip()
    try:
        doc, rows = run(specs, settings, command=command)
    except (KeyboardInterrupt, _Terminated):
        print("bench: interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = doc["started"].replace(":", "").replace("-", "")
    json_path = args.output_dir / f"{stem}.json"
    md_path = args.output_dir / f"{stem}.md"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    summary = markdown_summary(doc, rows)
    md_path.write_text(summary)
    print(text_table(rows), end="")
    for problem in doc["problems"]:
        print(f"cleanup: {problem}", file=sys.stderr)
    print(f"\nresults: {json_path}\nsummary: {md_path}")
    if args.update_docs:
        update_docs(DOCS_PAGE, summary)
        print(f"updated: {DOCS_PAGE}")
    failed = [r.spec.id for r in rows if any(c.status == "error" for c in r.columns.values())]
    if failed:
        print(f"failed rows: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so teardown still runs."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(
    specs: Sequence[RowSpec], settings: Settings, *, command: str
) -> tuple[dict[str, Any], list[RowResult]]:
    """Measure *specs*; returns the JSON document and the row results.

    Always tears down what it started, even when interrupted.
    """
    started = _dt.datetime.now(_dt.UTC)
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bb.", dir="/tmp"))
    active = [s for s in specs if not (settings.quick and s.heavy)]
    image_names = {name for s in active for name in s.images}
    need_daemons = any(s.kind == "compare" for s in specs)
    before = _outside_dirs()
    problems: list[str] = []
    registry: Registry | None = None
    daemons: list[Daemon] = []
    images: dict[str, BenchImage] = {}
    unavailable: dict[str, str] = {}
    versions = _tool_versions()
    _log(f"workdir {workdir}; rows: {', '.join(s.id for s in specs)}")
    with _sigterm_unwinds():
        try:
            if image_names:
                registry = Registry().start()
                _log(f"registry at {registry.host}; building {', '.join(sorted(image_names))}")
                images = build_images(image_names, registry.host, _log)
            if need_daemons:
                kinds: tuple[type[Daemon], ...] = (Containerd, Berthd)
                for cls in kinds:
                    daemon = cls(workdir)
                    daemons.append(daemon)
                    try:
                        daemon.start()
                        versions[f"{daemon.name}_server"] = daemon.server_version()
                    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                        unavailable[daemon.name] = f"{daemon.name} did not start: {exc}"[:400]
                        _log(unavailable[daemon.name])
                # Idle memory is read after both have settled, not mid-boot.
                time.sleep(1.0)
            bench = Bench(
                settings,
                [d for d in daemons if d.name not in unavailable],
                images,
                workdir,
                _log,
                unavailable=unavailable,
            )
            rows = bench.run(specs)
        finally:
            for daemon in reversed(daemons):
                problems.extend(daemon.stop())
            if registry is not None:
                registry.stop()
            problems.extend(f"could not unmount {p}" for p in procs.unmount_under(workdir))
            shutil.rmtree(workdir, ignore_errors=True)
            if workdir.exists():
                problems.append(f"could not remove {workdir}")
            _remove_outside_dirs(before)
    finished = _dt.datetime.now(_dt.UTC)
    overridden = []
    if settings.reps is not None:
        overridden.append(f"reps={settings.reps}")
    if settings.warmups is not None:
        overridden.append(f"warmups={settings.warmups}")
    if settings.quick:
        overridden.append("--quick")
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "started": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "finished": finished.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "duration_s": round(time.monotonic() - t0, 1),
        "command": command,
        "settings": {
            "quick": settings.quick,
            "reps": settings.reps,
            "warmups": settings.warmups,
            "fleet": settings.fleet,
            "parallel": settings.parallel,
            "reps_per_row": {s.id: settings.reps_for(s) for s in specs},
            "warmups_per_row": {s.id: settings.warmups_for(s) for s in specs},
        },
        "settings_note": ", ".join(overridden),
        "machine": machine_info(),
        "versions": versions,
        "images": {name: img.describe() for name, img in images.items()},
        "workdir": str(workdir),
        "rows": [row.to_json() for row in rows],
        "problems": problems,
    }
    return doc, rows


def _outside_dirs() -> set[Path]:
    existing = {p for p in _RUN_DIRS if p.exists()}
    for ns in (NS_RUN, NS_PULL):
        existing |= {p for p in Path("/sys/fs/cgroup").glob(f"*/{ns}") if p.is_dir()}
    return existing


def _remove_outside_dirs(before: set[Path]) -> None:
    """rmdir (never rm -r) the directories the run caused and that are empty now."""
    candidates = set(_RUN_DIRS)
    for ns in (NS_RUN, NS_PULL):
        candidates |= set(Path("/sys/fs/cgroup").glob(f"*/{ns}"))
    for path in sorted(candidates - before, key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            path.rmdir()


def _first_line(argv: Sequence[str]) -> str:
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "not installed"
    lines = (res.stdout or res.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def _tool_versions() -> dict[str, str]:
    from importlib import metadata

    containerd = _first_line(["containerd", "--version"]).split()
    runc = _first_line(["runc", "--version"]).split()
    ctr = _first_line([CTR, "--version"]).split()
    try:
        berth = metadata.version("berth")
    except metadata.PackageNotFoundError:
        berth = "unknown"
    rev = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if rev and " " not in rev:
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        berth += f" ({rev}{', modified' if dirty else ''})"
    return {
        "containerd": containerd[2] if len(containerd) >= 3 else " ".join(containerd),
        "runc": runc[2] if len(runc) >= 3 else " ".join(runc),
        "ctr": ctr[2] if len(ctr) >= 3 else " ".join(ctr),
        "berth": berth,
        "python": platform.python_version(),
    }


def machine_info() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text()
    kib = next(
        (int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:")), 0
    )
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    os_name = platform.system()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    cgroups = "v1"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[1] == "/sys/fs/cgroup":
                cgroups = "v2" if fields[2] == "cgroup2" else "v1 (hybrid)"
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": kib / 1024 / 1024,
        "kernel": platform.release(),
        "os": os_name,
        "cgroups": cgroups,
    }
