"""The catalogue of measurements ("rows") and the ``--rows`` selection rules.

A row is one line of the results table. ``compare`` rows are measured against
both daemons in the same run; ``floor`` rows measure what no runtime can beat
(raw runc, raw tar) and have a single column. Rows that share set-up share a
``group``: every fleet row comes from the same cycles of starting and removing
N containers, so asking for one of them runs the cycle.

``needs`` lists the gRPC services (``io.containerd.grpc.v1.<id>``) Berth must
serve for the row; rows Berth cannot do yet say so instead of being dropped.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["ROWS", "RowSpec", "select_rows"]

Kind = Literal["compare", "floor"]

PULL_NEEDS = ("content", "images", "leases", "snapshots", "diff")
RUN_NEEDS = (*PULL_NEEDS, "containers", "tasks")


@dataclass(frozen=True)
class RowSpec:
    id: str
    title: str  # may use {n} (fleet size) and {p} (parallelism)
    unit: str  # "s", "ms" or "MiB"
    kind: Kind
    group: str
    what: str  # one sentence for the docs: what exactly is timed or read
    needs: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    heavy: bool = False  # left out by --quick
    reps: int = 5
    warmups: int = 1

    def label(self, *, fleet: int, parallel: int) -> str:
        return self.title.format(n=fleet, p=parallel)


def _pull(name: str, desc: str, *, heavy: bool, reps: int) -> RowSpec:
    return RowSpec(
        id=f"pull_{name.replace('-', '_')}",
        title=f"cold pull+unpack {name} ({desc})",
        unit="s",
        kind="compare",
        group="pull",
        what=(
            f"`ctr images pull` of {name} after the image was removed, garbage collected and "
            "its blobs and snapshots were checked absent"
        ),
        needs=PULL_NEEDS,
        images=(name,),
        heavy=heavy,
        reps=reps,
    )


def _pull_own(name: str, desc: str, *, heavy: bool, reps: int) -> RowSpec:
    return RowSpec(
        id=f"pull_{name.replace('-', '_')}_own_cli",
        title=f"cold pull+unpack {name} ({desc}), own CLI",
        unit="s",
        kind="compare",
        group="pull_own",
        what=(
            f"pull of {name} through each project's own CLI (`ctr images pull` for containerd, "
            "`berth images pull`, a server-side pull that unpacks as layers land, for Berth), "
            "from the same cold start as the `ctr` pull rows"
        ),
        needs=(*PULL_NEEDS, "transfer"),
        images=(name,),
        heavy=heavy,
        reps=reps,
    )


def _unpack(name: str, *, heavy: bool, reps: int) -> RowSpec:
    return RowSpec(
        id=f"unpack_{name.replace('-', '_')}",
        title=f"unpack {name}, content already local",
        unit="s",
        kind="compare",
        group="unpack",
        what=(
            "the unpack phase `ctr images pull` reports ('done: ...') after the image's "
            "snapshots were removed but its blobs kept"
        ),
        needs=PULL_NEEDS,
        images=(name,),
        heavy=heavy,
        reps=reps,
    )


def _fleet(row_id: str, title: str, unit: str, what: str) -> RowSpec:
    return RowSpec(
        id=row_id,
        title=title,
        unit=unit,
        kind="compare",
        group="fleet",
        what=what,
        needs=RUN_NEEDS,
        images=("busybox",),
        reps=3,
    )


ROWS: tuple[RowSpec, ...] = (
    RowSpec(
        id="idle_rss",
        title="daemon RSS, idle",
        unit="MiB",
        kind="compare",
        group="idle",
        what="RSS of the daemon (and any helper it forked) after start-up, before any work",
        warmups=0,
    ),
    _pull("busybox", "1 layer, 1 MiB", heavy=False, reps=5),
    _pull("layered", "6 layers, 21 MiB", heavy=False, reps=5),
    _pull("wide", "101 small layers", heavy=True, reps=3),
    _pull("debian", "minbase, 1 gzip layer", heavy=True, reps=3),
    _pull("debian-zstd", "minbase, 1 zstd layer", heavy=True, reps=3),
    _pull_own("layered", "6 layers, 21 MiB", heavy=False, reps=5),
    _pull_own("debian", "minbase, 1 gzip layer", heavy=True, reps=3),
    _unpack("busybox", heavy=False, reps=5),
    _unpack("debian", heavy=True, reps=3),
    RowSpec(
        id="export_layered",
        title="images export layered",
        unit="s",
        kind="compare",
        group="export",
        what="`ctr images export` of the layered image (fetched, not unpacked) to a tar file",
        needs=("content", "images", "leases"),
        images=("layered",),
    ),
    RowSpec(
        id="import_layered",
        title="images import layered (+unpack)",
        unit="s",
        kind="compare",
        group="import",
        what=(
            "`ctr images import` (which also unpacks) of an OCI archive of the layered "
            "image, into a namespace checked empty of it"
        ),
        needs=PULL_NEEDS,
        images=("layered",),
    ),
    RowSpec(
        id="run_rm_cli",
        title="run --rm busybox /bin/true, own CLI",
        unit="ms",
        kind="compare",
        group="run_rm_cli",
        what="wall time of `ctr run --rm` (containerd) and `berth run --rm` (Berth)",
        needs=RUN_NEEDS,
        images=("busybox",),
        reps=10,
        warmups=2,
    ),
    RowSpec(
        id="run_rm_ctr",
        title="run --rm busybox /bin/true, ctr",
        unit="ms",
        kind="compare",
        group="run_rm_ctr",
        what="wall time of `ctr run --rm` against each daemon",
        needs=RUN_NEEDS,
        images=("busybox",),
        reps=10,
        warmups=2,
    ),
    _fleet(
        "run_d_seq",
        "{n}x run -d, sequential",
        "s",
        "total wall time of N `ctr run -d --null-io busybox sleep` one after another",
    ),
    _fleet(
        "run_d_cpu",
        "daemon CPU per run -d",
        "ms",
        (
            "the daemon's own CPU time (user+system, all threads; shims excluded) over the "
            "N sequential `ctr run -d`, divided by N"
        ),
    ),
    _fleet(
        "rss_running",
        "daemon RSS, {n} running",
        "MiB",
        "daemon RSS (shims excluded) with the N sequentially started containers running",
    ),
    _fleet(
        "container_rss",
        "per container RSS (shim+init)",
        "MiB",
        (
            "RSS of each container's shim plus its init process, from smaps_rollup "
            "(a shim serving k containers counts 1/k per container)"
        ),
    ),
    _fleet(
        "container_pss",
        "per container PSS (shim+init)",
        "MiB",
        "as above, with PSS: shared pages are split among the processes mapping them",
    ),
    _fleet(
        "kill_rm",
        "kill+rm {n} containers, sequential",
        "s",
        "total wall time of `ctr tasks rm -f` then `ctr containers rm` for each of the N",
    ),
    _fleet(
        "run_d_par",
        "{n}x run -d, {p} in parallel",
        "s",
        "total wall time of N `ctr run -d` with P running at once",
    ),
    RowSpec(
        id="rpc_version_cpu",
        title="daemon CPU per Version call",
        unit="µs",
        kind="compare",
        group="rpc",
        what=(
            "the daemon's CPU time over 2000 `Version` calls on one connection from a Python "
            "gRPC client, divided by 2000: the per-call cost of the gRPC runtime"
        ),
        needs=("version",),
        reps=3,
    ),
    RowSpec(
        id="rpc_info_cpu",
        title="daemon CPU per Content.Info call",
        unit="µs",
        kind="compare",
        group="rpc",
        what="as above, for `Content.Info` of busybox's manifest (a keyed metadata read)",
        needs=("version", "content"),
        images=("busybox",),
        reps=3,
    ),
    RowSpec(
        id="floor_grpc_rss",
        title="floor: bare grpc.aio server RSS",
        unit="MiB",
        kind="floor",
        group="floor_grpc",
        what=(
            "RSS of a `grpc.aio` server on uvloop serving one do-nothing method "
            "(bench/berthbench/grpc_floor.py), after start-up: a Python daemon's size before "
            "any work of its own"
        ),
        reps=3,
        warmups=0,
    ),
    RowSpec(
        id="floor_grpc_call",
        title="floor: bare grpc.aio server CPU per call",
        unit="µs",
        kind="floor",
        group="floor_grpc",
        what="that server's CPU time per call over 2000 calls, measured as the `rpc_*` rows are",
        reps=3,
        warmups=0,
    ),
    RowSpec(
        id="floor_runc",
        title="floor: raw runc run /bin/true",
        unit="ms",
        kind="floor",
        group="floor_runc",
        what="`runc run` of a busybox bundle on disk: no daemon, no shim, no snapshot",
        images=("busybox",),
        reps=10,
        warmups=2,
    ),
    RowSpec(
        id="floor_tar",
        title="floor: raw tar -xzf debian layer",
        unit="s",
        kind="floor",
        group="floor_tar",
        what="GNU `tar -xzf` of the debian layer into an empty directory on the same disk",
        images=("debian",),
        heavy=True,
        reps=3,
    ),
)

_BY_ID = {row.id: row for row in ROWS}


def select_rows(patterns: Iterable[str] | None) -> list[RowSpec]:
    """Rows matching any of *patterns* (ids or shell globs, comma-separated
    allowed), in catalogue order; all rows when *patterns* is empty.

    Raises ValueError naming any pattern that matches nothing.
    """
    words = [w.strip() for p in (patterns or ()) for w in p.split(",") if w.strip()]
    if not words:
        return list(ROWS)
    chosen: set[str] = set()
    for word in words:
        hits = [row.id for row in ROWS if fnmatch.fnmatchcase(row.id, word)]
        if not hits:
            raise ValueError(f"no row matches {word!r}; rows are: {', '.join(_BY_ID)}")
        chosen.update(hits)
    return [row for row in ROWS if row.id in chosen]
