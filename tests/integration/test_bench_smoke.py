"""The benchmark harness runs end to end and writes the JSON it promises.

Timings never gate anything here: the test runs one repetition of four cheap
rows (idle daemon RSS, which needs both daemons; the bare gRPC server's RSS
and CPU per call, which start a server of their own; and the raw runc floor,
which needs the registry and the busybox image) and checks the document's shape,
that every column has numbers or says why not, and that the run cleaned up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _check_column(name: str, col: dict[str, object]) -> None:
    if col["status"] == "ok":
        n, lo, mid, hi = col["n"], col["min"], col["median"], col["max"]
        assert n == 1, (name, col)
        assert isinstance(lo, float) and isinstance(mid, float) and isinstance(hi, float)
        assert 0 < lo <= mid <= hi, (name, col)
        assert col["samples"] == [mid]
    else:
        # Anything but a number must come with the reason.
        assert col["status"] in {"unsupported", "error"}, (name, col)
        assert isinstance(col["reason"], str) and col["reason"], (name, col)


def test_quick_run_of_small_rows_writes_json_table_and_cleans_up(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.berthbench",
            "--quick",
            "--rows",
            "idle_rss,floor_grpc_rss,floor_grpc_call,floor_runc",
            "--output-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"

    (json_path,) = tmp_path.glob("*.json")
    (md_path,) = tmp_path.glob("*.md")
    doc = json.loads(json_path.read_text())

    assert doc["schema"] == "berthbench/1"
    assert doc["settings"]["quick"] is True
    assert doc["settings"]["reps_per_row"] == {
        "idle_rss": 1,
        "floor_grpc_rss": 1,
        "floor_grpc_call": 1,
        "floor_runc": 1,
    }
    for key in ("cores", "memory_gib", "kernel", "cgroups"):
        assert doc["machine"][key], key
    for key in ("containerd", "runc", "berth", "containerd_server", "berth_server"):
        assert doc["versions"][key], key
    assert doc["images"]["busybox"]["layers"] == 1
    assert doc["problems"] == []

    rows = {row["id"]: row for row in doc["rows"]}
    assert list(rows) == ["idle_rss", "floor_grpc_rss", "floor_grpc_call", "floor_runc"]

    idle = rows["idle_rss"]
    assert idle["kind"] == "compare" and idle["unit"] == "MiB"
    assert set(idle["results"]) == {"containerd", "berth"}
    for name, col in idle["results"].items():
        _check_column(name, col)
    # containerd is the reference: it must always produce a number.
    assert idle["results"]["containerd"]["status"] == "ok"
    if idle["results"]["berth"]["status"] == "ok":
        expected = idle["results"]["berth"]["median"] / idle["results"]["containerd"]["median"]
        assert idle["ratio"] == pytest.approx(expected)
    else:
        assert idle["ratio"] is None

    for row_id, unit in (
        ("floor_runc", "ms"),
        ("floor_grpc_rss", "MiB"),
        ("floor_grpc_call", "µs"),
    ):
        floor = rows[row_id]
        assert floor["kind"] == "floor" and floor["unit"] == unit, row_id
        assert set(floor["results"]) == {"floor"}
        assert floor["results"]["floor"]["status"] == "ok", floor["results"]
        _check_column("floor", floor["results"]["floor"])
        assert floor["ratio"] is None

    # The table on stdout and the markdown summary carry the same rows.
    assert "daemon RSS, idle" in res.stdout and "floor: raw runc run" in res.stdout
    summary = md_path.read_text()
    assert "| row | unit | containerd | berth | berth/containerd |" in summary
    assert "floor: raw runc run /bin/true" in summary

    # Everything the run created is gone.
    assert not Path(doc["workdir"]).exists()
