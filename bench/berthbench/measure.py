"""The measurements: each row group, run against both daemons in one run.

How a group is measured
-----------------------
1. Berth's capability is checked first (``ctr plugins ls`` must list every
   gRPC service the row needs as ``ok``; the ``berth`` CLI must have ``run``).
   A missing piece makes Berth's column say ``not supported yet (...)``.
2. Untimed set-up per daemon (e.g. pull the busybox image the run rows use).
3. Warm-ups, one per daemon, discarded.
4. Repetitions alternate the order of the daemons (A B, B A, A B, ...), so
   slow drift of the machine (page cache, thermal, neighbours) falls on both.
5. A failure stops that daemon's column for the row and is reported; an
   answer of "not implemented" from a daemon counts as "not supported yet".
   Nothing is retried into a good number, and nothing is dropped.

Cold means cold: before each timed pull or import, every image in the pull
namespace is deleted with ``ctr images rm --sync`` (a synchronous GC); then
the namespace's content and snapshots are listed and anything left over is
removed explicitly (and noted in the row). The sample is only taken once the
namespace is verified empty. After a pull, the image's top snapshot must exist.
Before each timed pull, unpack, import or tar, dirty pages are flushed
(``sync``, untimed): otherwise the previous sample's writeback, or the GC's
deletions, would be charged to whichever daemon happens to come next.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.berthbench import procs
from bench.berthbench.daemons import (
    Berthd,
    CommandError,
    Daemon,
    NotSupported,
    ctr_env,
    is_unimplemented,
)
from bench.berthbench.images import BenchImage
from bench.berthbench.rows import RowSpec
from bench.berthbench.stats import Summary, parse_go_duration, ratio
from tests.support.imagebuilder import write_oci_layout

__all__ = ["Bench", "Column", "RowResult", "Settings"]

MiB = 1024 * 1024
NS_PULL = "berthbench-pull"  # only the image under test lives here; emptied between samples
NS_RUN = "berthbench"  # the busybox image the run rows use
IMPORT_NAME = "127.0.0.1/berthbench/import:latest"
FLOOR = "floor"

Status = Literal["ok", "unsupported", "error", "skipped"]


@dataclass
class Column:
    """One daemon's (or the floor's) result for a row."""

    status: Status = "ok"
    samples: list[float] = field(default_factory=list)
    reason: str = ""

    def fail(self, status: Status, reason: str) -> None:
        # The first failure explains the column; later ones are consequences.
        if self.status == "ok":
            self.status = status
            self.reason = reason

    def summary(self) -> Summary | None:
        if self.status != "ok" or not self.samples:
            return None
        return Summary.of(self.samples)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        summary = self.summary()
        if summary is not None:
            out.update(
                n=summary.n,
                min=summary.min,
                median=summary.median,
                max=summary.max,
                samples=self.samples,
            )
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class RowResult:
    spec: RowSpec
    title: str
    columns: dict[str, Column]
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.spec.kind != "compare":
            return None
        berth = self.columns.get("berth")
        containerd = self.columns.get("containerd")
        return ratio(
            berth.summary() if berth else None, containerd.summary() if containerd else None
        )

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.spec.id,
            "title": self.title,
            "unit": self.spec.unit,
            "kind": self.spec.kind,
            "what": self.spec.what,
            "results": {name: col.to_json() for name, col in self.columns.items()},
            "ratio": self.ratio,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Settings:
    quick: bool = False
    reps: int | None = None  # None: each row's own default (1 with --quick)
    warmups: int | None = None  # None: each row's own default (0 with --quick)
    fleet: int = 50
    parallel: int = 8

    def reps_for(self, spec: RowSpec) -> int:
        if self.reps is not None:
            return self.reps
        return 1 if self.quick else spec.reps

    def warmups_for(self, spec: RowSpec) -> int:
        if self.warmups is not None:
            return self.warmups
        return 0 if self.quick else spec.warmups


Sample = dict[str, list[float]]


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:400]


def _timed(argv: Sequence[str], *, timeout: float = 600) -> tuple[float, str]:
    """Run *argv*, return (seconds, stdout); raises CommandError on failure."""
    start = time.perf_counter()
    res = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ctr_env(),
    )
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        raise CommandError(argv, res.returncode, res.stdout, res.stderr)
    return elapsed, res.stdout


class Bench:
    """Runs row groups against *daemons* (containerd first, then berth)."""

    def __init__(
        self,
        settings: Settings,
        daemons: Sequence[Daemon],
        images: dict[str, BenchImage],
        workdir: Path,
        log: Callable[[str], None],
        *,
        unavailable: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.daemons = list(daemons)
        self.images = images
        self.workdir = workdir
        self.log = log
        # Daemons that could not even start: every row says why.
        self.unavailable = dict(unavailable or {})
        self._counter = itertools.count()
        self._run_image_ready: dict[str, BaseException | None] = {}

    # -- public -------------------------------------------------------------------
    def run(self, specs: Sequence[RowSpec]) -> list[RowResult]:
        """Measure *specs* group by group, in catalogue order."""
        results: list[RowResult] = []
        groups: dict[tuple[str, str], list[RowSpec]] = {}
        for spec in specs:
            # Pull, unpack, export and import rows are one image each.
            key = (spec.group, spec.id if spec.group != "fleet" else "")
            groups.setdefault(key, []).append(spec)
        for (group, _), members in groups.items():
            rows = [self._new_row(spec) for spec in members]
            if self.settings.quick and any(spec.heavy for spec in members):
                for row in rows:
                    for col in row.columns.values():
                        col.fail("skipped", "left out by --quick")
                results.extend(rows)
                continue
            self.log(f"measuring {', '.join(r.spec.id for r in rows)}")
            started = time.monotonic()
            getattr(self, f"_group_{group}")(rows)
            self.log(f"  ... {time.monotonic() - started:.1f}s")
            results.extend(rows)
        return results

    # -- machinery ----------------------------------------------------------------
    def _new_row(self, spec: RowSpec) -> RowResult:
        title = spec.label(fleet=self.settings.fleet, parallel=self.settings.parallel)
        if spec.kind == "floor":
            return RowResult(spec, title, {FLOOR: Column()})
        columns = {d.name: Column() for d in self.daemons}
        for name, reason in self.unavailable.items():
            columns.setdefault(name, Column()).fail("error", reason)
        return RowResult(spec, title, columns)

    def _gate(
        self, rows: Sequence[RowResult], extra: Callable[[Daemon], None] | None = None
    ) -> list[Daemon]:
        """Daemons able to run *rows*; the others' columns say what is missing."""
        usable = []
        spec = rows[0].spec
        for d in self.daemons:
            if rows[0].columns[d.name].status != "ok":
                continue
            try:
                if isinstance(d, Berthd):
                    d.require(spec.needs)
                if extra is not None:
                    extra(d)
            except NotSupported as exc:
                self._fail(rows, d, "unsupported", f"not supported yet ({exc})")
                continue
            except (CommandError, subprocess.TimeoutExpired) as exc:
                self._fail(rows, d, "error", _short(exc))
                continue
            usable.append(d)
        return usable

    def _fail(self, rows: Iterable[RowResult], d: Daemon, status: Status, reason: str) -> None:
        for row in rows:
            row.columns[d.name].fail(status, reason)

    def _attempt(
        self, rows: Sequence[RowResult], d: Daemon, fn: Callable[[Daemon], Sample], *, keep: bool
    ) -> None:
        if rows[0].columns[d.name].status != "ok":
            return
        try:
            sample = fn(d)
        except NotSupported as exc:
            self._fail(rows, d, "unsupported", f"not supported yet ({exc})")
        except (CommandError, RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
            if is_unimplemented(exc):
                self._fail(rows, d, "unsupported", f"not supported yet ({_short(exc)})")
            else:
                self._fail(rows, d, "error", _short(exc))
                self.log(f"  {d.name}: {_short(exc)}")
        else:
            if keep:
                for row in rows:
                    row.columns[d.name].samples.extend(sample.get(row.spec.id, []))

    def _ab(
        self,
        rows: Sequence[RowResult],
        daemons: Sequence[Daemon],
        fn: Callable[[Daemon], Sample],
        *,
        warm: Callable[[Daemon], Sample] | None = None,
    ) -> None:
        """Warm-ups, then repetitions alternating the daemons' order."""
        spec = rows[0].spec
        for _ in range(self.settings.warmups_for(spec)):
            for d in daemons:
                self._attempt(rows, d, warm or fn, keep=False)
        for rep in range(self.settings.reps_for(spec)):
            order = list(daemons) if rep % 2 == 0 else list(reversed(daemons))
            for d in order:
                self._attempt(rows, d, fn, keep=True)

    def _setup(
        self, rows: Sequence[RowResult], daemons: Sequence[Daemon], fn: Callable[[Daemon], None]
    ) -> list[Daemon]:
        """Run untimed per-daemon set-up; returns the daemons it worked for."""
        ok = []

        def run_setup(d: Daemon) -> Sample:
            fn(d)
            return {}

        for d in daemons:
            self._attempt(rows, d, run_setup, keep=False)
            if rows[0].columns[d.name].status == "ok":
                ok.append(d)
        return ok

    def _uid(self, d: Daemon, what: str) -> str:
        return f"{d.short}-{what}-{next(self._counter)}"

    # -- namespace hygiene --------------------------------------------------------
    def _snapshots(self, d: Daemon, ns: str) -> dict[str, str]:
        """``{key: parent}`` of every snapshot in *ns* (parent "" for a base)."""
        out = d.ctr("snapshots", "ls", ns=ns, timeout=120).stdout
        found: dict[str, str] = {}
        for line in out.splitlines()[1:]:
            fields = line.split()
            if len(fields) == 3:
                found[fields[0]] = fields[1]
            elif len(fields) == 2:
                found[fields[0]] = ""
        return found

    def _content(self, d: Daemon, ns: str) -> set[str]:
        return set(d.ctr("content", "ls", "-q", ns=ns, timeout=120).stdout.split())

    def _empty_namespace(self, d: Daemon, ns: str, row: RowResult | None = None) -> None:
        """Delete every image in *ns*, GC, and verify no content or snapshot is left.

        Raises RuntimeError when something survives explicit removal too.
        """
        names = d.ctr("images", "ls", "-q", ns=ns, timeout=120).stdout.split()
        if names:
            d.ctr("images", "rm", "--sync", *names, ns=ns, timeout=300)
        snaps = self._snapshots(d, ns)
        blobs = self._content(d, ns)
        if not snaps and not blobs:
            return
        if row is not None:
            row.note(
                f"{d.name}: `images rm --sync` left {len(blobs)} blobs and {len(snaps)} "
                "snapshots; the harness removed them before timing"
            )
        self._remove_snapshots(d, ns, snaps)
        if blobs:
            d.ctr("content", "rm", *sorted(blobs), ns=ns, check=False, timeout=300)
        snaps = self._snapshots(d, ns)
        blobs = self._content(d, ns)
        if snaps or blobs:
            raise RuntimeError(
                f"namespace {ns} still holds {len(blobs)} blobs and {len(snaps)} snapshots"
                " after removal: cannot measure a cold start"
            )

    def _remove_snapshots(self, d: Daemon, ns: str, snaps: dict[str, str]) -> None:
        """Remove *snaps* children first (a parent cannot go before its children)."""
        remaining = dict(snaps)
        while remaining:
            parents = set(remaining.values())
            leaves = sorted(k for k in remaining if k not in parents)
            if not leaves:  # a cycle cannot happen; do not spin if it does
                raise RuntimeError(f"cannot order snapshots for removal: {sorted(remaining)}")
            d.ctr("snapshots", "rm", *leaves, ns=ns, timeout=300)
            for key in leaves:
                del remaining[key]

    def _check_unpacked(self, d: Daemon, ns: str, img: BenchImage) -> None:
        if img.chain[-1] not in self._snapshots(d, ns):
            raise RuntimeError(f"{img.name} reported pulled but its top snapshot is missing")

    def _pull(self, d: Daemon, ns: str, img: BenchImage) -> tuple[float, str]:
        return _timed(d.ctr_argv("images", "pull", "--plain-http", img.ref, ns=ns))

    def _fetch(self, d: Daemon, ns: str, img: BenchImage) -> None:
        """Fetch *img*'s blobs and create the image, without unpacking (untimed)."""
        d.ctr("content", "fetch", "--plain-http", img.ref, ns=ns, timeout=600)

    def _ensure_run_image(self, d: Daemon) -> None:
        """Pull busybox into the run namespace once per daemon (untimed)."""
        if d.name not in self._run_image_ready:
            try:
                d.namespaces_used.add(NS_RUN)
                self._pull(d, NS_RUN, self.images["busybox"])
                self._check_unpacked(d, NS_RUN, self.images["busybox"])
            except BaseException as exc:
                self._run_image_ready[d.name] = exc
                raise
            self._run_image_ready[d.name] = None
        failure = self._run_image_ready[d.name]
        if failure is not None:
            raise RuntimeError(f"busybox could not be pulled: {_short(failure)}")

    # -- groups -------------------------------------------------------------------
    def _group_idle(self, rows: list[RowResult]) -> None:
        daemons = self._gate(rows)

        def sample(d: Daemon) -> Sample:
            time.sleep(0.2)
            return {rows[0].spec.id: [d.memory().rss / MiB]}

        self._ab(rows, daemons, sample)

    def _group_pull(self, rows: list[RowResult]) -> None:
        row = rows[0]
        img = self.images[row.spec.images[0]]
        daemons = self._gate(rows)

        def sample(d: Daemon) -> Sample:
            self._empty_namespace(d, NS_PULL, row)
            _settle_disk()
            elapsed, _ = self._pull(d, NS_PULL, img)
            self._check_unpacked(d, NS_PULL, img)
            return {row.spec.id: [elapsed]}

        self._ab(rows, daemons, sample)
        self._leave_clean(daemons)

    def _group_pull_own(self, rows: list[RowResult]) -> None:
        row = rows[0]
        img = self.images[row.spec.images[0]]

        def cli_check(d: Daemon) -> None:
            d.own_cli_pull(NS_PULL, img.ref)

        daemons = self._gate(rows, cli_check)

        def sample(d: Daemon) -> Sample:
            self._empty_namespace(d, NS_PULL, row)
            _settle_disk()
            elapsed, _ = _timed(d.own_cli_pull(NS_PULL, img.ref))
            self._check_unpacked(d, NS_PULL, img)
            return {row.spec.id: [elapsed]}

        self._ab(rows, daemons, sample)
        self._leave_clean(daemons)

    def _group_unpack(self, rows: list[RowResult]) -> None:
        row = rows[0]
        img = self.images[row.spec.images[0]]

        def warm_content(d: Daemon) -> None:
            self._empty_namespace(d, NS_PULL, row)
            self._fetch(d, NS_PULL, img)

        daemons = self._setup(rows, self._gate(rows), warm_content)

        def sample(d: Daemon) -> Sample:
            snaps = self._snapshots(d, NS_PULL)
            self._remove_snapshots(d, NS_PULL, snaps)
            if self._snapshots(d, NS_PULL):
                raise RuntimeError("snapshots survived removal: cannot measure unpack")
            missing = img.blob_digests - self._content(d, NS_PULL)
            if missing:
                raise RuntimeError(f"{len(missing)} blobs vanished from the content store")
            _settle_disk()
            _, out = self._pull(d, NS_PULL, img)
            self._check_unpacked(d, NS_PULL, img)
            for line in out.splitlines():
                if line.startswith("done:"):
                    return {row.spec.id: [parse_go_duration(line.split(":", 1)[1])]}
            raise RuntimeError("ctr images pull printed no 'done: <duration>' line")

        self._ab(rows, daemons, sample)
        self._leave_clean(daemons)

    def _group_export(self, rows: list[RowResult]) -> None:
        row = rows[0]
        img = self.images[row.spec.images[0]]

        def have_image(d: Daemon) -> None:
            self._empty_namespace(d, NS_PULL, row)
            self._fetch(d, NS_PULL, img)

        daemons = self._setup(rows, self._gate(rows), have_image)

        def sample(d: Daemon) -> Sample:
            out = self.workdir / f"export-{d.short}.tar"
            try:
                elapsed, _ = _timed(d.ctr_argv("images", "export", str(out), img.ref, ns=NS_PULL))
                if out.stat().st_size < img.compressed_bytes:
                    raise RuntimeError(
                        f"export wrote {out.stat().st_size} bytes, less than the image's layers"
                    )
            finally:
                out.unlink(missing_ok=True)
            return {row.spec.id: [elapsed]}

        self._ab(rows, daemons, sample)
        self._leave_clean(daemons)

    def _group_import(self, rows: list[RowResult]) -> None:
        row = rows[0]
        img = self.images[row.spec.images[0]]
        archive = self.workdir / "import.tar"
        write_oci_layout(archive, img.image, image_name=IMPORT_NAME)
        daemons = self._gate(rows)

        def sample(d: Daemon) -> Sample:
            self._empty_namespace(d, NS_PULL, row)
            _settle_disk()
            elapsed, _ = _timed(d.ctr_argv("images", "import", str(archive), ns=NS_PULL))
            names = d.ctr("images", "ls", "-q", ns=NS_PULL).stdout.split()
            if IMPORT_NAME not in names:
                raise RuntimeError(f"import did not create {IMPORT_NAME} (images: {names})")
            self._check_unpacked(d, NS_PULL, img)
            return {row.spec.id: [elapsed]}

        try:
            self._ab(rows, daemons, sample)
            self._leave_clean(daemons)
        finally:
            archive.unlink(missing_ok=True)

    def _leave_clean(self, daemons: Sequence[Daemon]) -> None:
        for d in daemons:
            with contextlib.suppress(CommandError, RuntimeError, subprocess.TimeoutExpired):
                self._empty_namespace(d, NS_PULL)

    def _run_rm(self, rows: list[RowResult], *, own_cli: bool) -> None:
        row = rows[0]
        img = self.images["busybox"]

        def cli_check(d: Daemon) -> None:
            if own_cli and isinstance(d, Berthd):
                d.cli()

        daemons = self._setup(rows, self._gate(rows, cli_check), self._ensure_run_image)

        def sample(d: Daemon) -> Sample:
            cid = self._uid(d, "rm")
            if own_cli:
                argv = d.own_cli_run_rm(NS_RUN, img.ref, cid, ["/bin/true"])
            else:
                argv = d.ctr_argv("run", "--rm", img.ref, cid, "/bin/true", ns=NS_RUN)
            elapsed, _ = _timed(argv, timeout=120)
            return {row.spec.id: [elapsed * 1000]}

        self._ab(rows, daemons, sample)

    def _group_run_rm_cli(self, rows: list[RowResult]) -> None:
        self._run_rm(rows, own_cli=True)

    def _group_run_rm_ctr(self, rows: list[RowResult]) -> None:
        self._run_rm(rows, own_cli=False)

    # -- the fleet: N containers started, measured, removed ------------------------
    def _group_fleet(self, rows: list[RowResult]) -> None:
        img = self.images["busybox"]
        n, parallel = self.settings.fleet, self.settings.parallel
        daemons = self._setup(rows, self._gate(rows), self._ensure_run_image)

        def start(d: Daemon, cid: str) -> None:
            d.ctr("run", "-d", "--null-io", img.ref, cid, "sleep", "3600", ns=NS_RUN, timeout=120)

        def remove(d: Daemon, cid: str) -> None:
            d.ctr("tasks", "rm", "-f", cid, ns=NS_RUN, timeout=120)
            d.ctr("containers", "rm", cid, ns=NS_RUN, timeout=120)

        def expect_running(d: Daemon, ids: Sequence[str]) -> dict[str, int]:
            pids = d.task_pids(NS_RUN)
            missing = [cid for cid in ids if cid not in pids]
            if missing:
                raise RuntimeError(f"{len(missing)} of {len(ids)} containers are not running")
            return pids

        def warm(d: Daemon) -> Sample:
            ids = [self._uid(d, "warm") for _ in range(2)]
            for cid in ids:
                start(d, cid)
            expect_running(d, ids)
            for cid in ids:
                remove(d, cid)
            return {}

        def cycle(d: Daemon) -> Sample:
            out: Sample = {}
            try:
                ids = [self._uid(d, "seq") for _ in range(n)]
                cpu0 = procs.cpu_seconds(d.pid)
                t0 = time.perf_counter()
                for cid in ids:
                    start(d, cid)
                out["run_d_seq"] = [time.perf_counter() - t0]
                out["run_d_cpu"] = [(procs.cpu_seconds(d.pid) - cpu0) * 1000 / n]
                pids = expect_running(d, ids)
                time.sleep(1.0)  # let start-up allocations settle before reading memory
                out["rss_running"] = [d.memory().rss / MiB]
                per = container_memory([pids[cid] for cid in ids])
                out["container_rss"] = [m.rss / MiB for m in per]
                out["container_pss"] = [m.pss / MiB for m in per]
                t0 = time.perf_counter()
                for cid in ids:
                    remove(d, cid)
                out["kill_rm"] = [time.perf_counter() - t0]

                ids = [self._uid(d, "par") for _ in range(n)]
                t0 = time.perf_counter()
                with ThreadPoolExecutor(parallel) as pool:
                    list(pool.map(lambda cid: start(d, cid), ids))
                out["run_d_par"] = [time.perf_counter() - t0]
                expect_running(d, ids)
                with ThreadPoolExecutor(parallel) as pool:
                    list(pool.map(lambda cid: remove(d, cid), ids))
                return out
            finally:
                # A failed cycle must not leave containers for the next one.
                with contextlib.suppress(CommandError, subprocess.TimeoutExpired):
                    d.remove_all_containers(NS_RUN)

        self._ab(rows, daemons, cycle, warm=warm)

    # -- the cost of one small request ------------------------------------------------
    def _group_rpc(self, rows: list[RowResult]) -> None:
        # A Python gRPC client in this process: its own cost is not measured,
        # only the daemon's CPU time while it answers.
        import grpc
        from google.protobuf import empty_pb2

        from berth.api.services.content.v1 import content_pb2, content_pb2_grpc
        from berth.api.services.images.v1 import images_pb2, images_pb2_grpc
        from berth.api.services.version.v1 import version_pb2_grpc

        want = {row.spec.id for row in rows}
        needs_image = "rpc_info_cpu" in want
        daemons = self._gate(rows)
        if needs_image:
            daemons = self._setup(rows, daemons, self._ensure_run_image)
        md = (("containerd-namespace", NS_RUN),)

        def sample(d: Daemon) -> Sample:
            out: Sample = {}
            with grpc.insecure_channel(f"unix://{d.address}") as ch:
                if "rpc_version_cpu" in want:
                    version = version_pb2_grpc.VersionStub(ch)
                    out["rpc_version_cpu"] = [
                        _cpu_per_call(d.pid, lambda: version.Version(empty_pb2.Empty()))
                    ]
                if needs_image:
                    ref = self.images["busybox"].ref  # only fixed up when a row needs it
                    image = images_pb2_grpc.ImagesStub(ch).Get(
                        images_pb2.GetImageRequest(name=ref), metadata=md
                    )
                    content = content_pb2_grpc.ContentStub(ch)
                    req = content_pb2.InfoRequest(digest=image.image.target.digest)
                    out["rpc_info_cpu"] = [
                        _cpu_per_call(d.pid, lambda: content.Info(req, metadata=md))
                    ]
            return out

        self._ab(rows, daemons, sample)

    # -- floors -------------------------------------------------------------------
    def _group_floor_grpc(self, rows: list[RowResult]) -> None:
        import grpc
        from google.protobuf import empty_pb2

        from berth.api.services.version.v1 import version_pb2_grpc

        wanted = {row.spec.id: row for row in rows}
        socket = self.workdir / "floor-grpc.sock"
        reps = max(self.settings.reps_for(row.spec) for row in rows)
        try:
            for _ in range(reps):
                socket.unlink(missing_ok=True)
                server = subprocess.Popen(
                    [sys.executable, "-m", "bench.berthbench.grpc_floor", str(socket)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                try:
                    assert server.stdout is not None
                    if server.stdout.readline().strip() != "ready":
                        raise RuntimeError(f"the floor server exited with {server.wait(10)}")
                    time.sleep(0.2)  # settle, as the idle row does
                    if "floor_grpc_rss" in wanted:
                        rss = procs.mem_of(server.pid).rss / MiB
                        wanted["floor_grpc_rss"].columns[FLOOR].samples.append(rss)
                    if "floor_grpc_call" in wanted:
                        with grpc.insecure_channel(f"unix://{socket}") as ch:
                            call = functools.partial(
                                version_pb2_grpc.VersionStub(ch).Version, empty_pb2.Empty()
                            )
                            cpu = _cpu_per_call(server.pid, call)
                        wanted["floor_grpc_call"].columns[FLOOR].samples.append(cpu)
                finally:
                    procs.end_pid(server.pid)
                    server.wait()
        except (RuntimeError, OSError, ProcessLookupError, grpc.RpcError) as exc:
            for row in rows:
                row.columns[FLOOR].fail("error", _short(exc))
        finally:
            socket.unlink(missing_ok=True)

    def _group_floor_runc(self, rows: list[RowResult]) -> None:
        row = rows[0]
        col = row.columns[FLOOR]
        floor = self.workdir / "floor"
        bundle = floor / "bundle"
        state = floor / "runc"
        try:
            make_bundle(bundle, self.images["busybox"], ["/bin/true"])
        except (OSError, subprocess.CalledProcessError, ValueError) as exc:
            col.fail("error", f"cannot build the bundle: {_short(exc)}")
            return

        def once() -> float:
            cid = f"berthbench-floor-{os.getpid()}-{next(self._counter)}"
            elapsed, _ = _timed(
                ["runc", "--root", str(state), "run", "--bundle", str(bundle), cid], timeout=60
            )
            return elapsed * 1000

        self._floor(row, once)

    def _group_floor_tar(self, rows: list[RowResult]) -> None:
        row = rows[0]
        floor = self.workdir / "floor"
        floor.mkdir(parents=True, exist_ok=True)
        layer = floor / "debian.tar.gz"
        layer.write_bytes(self.images["debian"].image.layers[0].data)

        def once() -> float:
            dest = floor / f"x{next(self._counter)}"
            dest.mkdir()
            _settle_disk()
            try:
                elapsed, _ = _timed(["tar", "-xzf", str(layer), "-C", str(dest)])
            finally:
                subprocess.run(["rm", "-rf", str(dest)], check=False)
            return elapsed

        try:
            self._floor(row, once)
        finally:
            layer.unlink(missing_ok=True)

    def _floor(self, row: RowResult, once: Callable[[], float]) -> None:
        col = row.columns[FLOOR]
        try:
            for _ in range(self.settings.warmups_for(row.spec)):
                once()
            for _ in range(self.settings.reps_for(row.spec)):
                col.samples.append(once())
        except (CommandError, OSError, subprocess.TimeoutExpired) as exc:
            col.fail("error", _short(exc))


def _cpu_per_call(pid: int, call: Callable[[], object], calls: int = 2000) -> float:
    """Process *pid*'s CPU time per *call*, in µs, over *calls* calls after 100 warm-ups
    (the connection, and the server's caches)."""
    for _ in range(100):
        call()
    cpu0 = procs.cpu_seconds(pid)
    for _ in range(calls):
        call()
    return (procs.cpu_seconds(pid) - cpu0) * 1e6 / calls


def _settle_disk() -> None:
    """Flush dirty pages (untimed) so one sample's writeback does not tax the next."""
    os.sync()


def container_memory(init_pids: Sequence[int]) -> list[procs.Mem]:
    """Memory per container: its init plus its shim, a shared shim split evenly.

    The shim is the init's parent (runc leaves the container's init with the
    shim as its parent, the shim being a child subreaper).
    """
    shims: dict[int, int] = {}
    parent_of: dict[int, int] = {}
    for pid in init_pids:
        shim = procs.ppid(pid)
        parent_of[pid] = shim
        shims[shim] = shims.get(shim, 0) + 1
    shim_mem = {shim: procs.mem_of(shim) for shim in shims}
    return [
        procs.mem_of(pid) + shim_mem[parent_of[pid]].scaled(1 / shims[parent_of[pid]])
        for pid in init_pids
    ]


def make_bundle(bundle: Path, img: BenchImage, args: Sequence[str]) -> None:
    """An OCI bundle of *img*'s flattened layers with ``runc spec`` defaults."""
    if bundle.exists():
        shutil.rmtree(bundle)
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    for layer in img.image.layers:
        subprocess.run(
            ["tar", "-x", "-C", str(rootfs)], input=layer.tar, check=True, capture_output=True
        )
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True, capture_output=True)
    config_path = bundle / "config.json"
    spec = json.loads(config_path.read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = list(args)
    spec["root"] = {"path": "rootfs", "readonly": True}
    config_path.write_text(json.dumps(spec, indent=2))
