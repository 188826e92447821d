"""The benchmark harness's pure parts: statistics, row selection, report rendering."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.berthbench.harness import main
from bench.berthbench.images import chain_ids
from bench.berthbench.measure import Column, RowResult, Settings
from bench.berthbench.procs import _unescape_mountinfo
from bench.berthbench.report import (
    DOCS_BEGIN,
    DOCS_END,
    fmt_value,
    markdown_summary,
    text_table,
    update_docs,
)
from bench.berthbench.rows import ROWS, select_rows
from bench.berthbench.stats import Summary, parse_go_duration, ratio
from tests.support.imagebuilder import build_layered_image


def test_summary_reports_n_min_median_max() -> None:
    assert Summary.of([3.0, 1.0, 2.0, 10.0]) == Summary(n=4, min=1.0, median=2.5, max=10.0)


def test_summary_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        Summary.of([])


def test_ratio_is_berth_median_over_containerd_median() -> None:
    assert ratio(Summary.of([2.0]), Summary.of([4.0])) == 0.5
    assert ratio(None, Summary.of([4.0])) is None
    assert ratio(Summary.of([2.0]), None) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6.512345678s", 6.512345678),
        ("812.5ms", 0.8125),
        ("1m2.5s", 62.5),
        ("15µs", 15e-6),
        ("0s", 0.0),
        (" 2s\t", 2.0),
    ],
)
def test_go_durations_printed_by_ctr_are_parsed(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "fast", "12", "1.5 s", "3sx"])
def test_anything_else_is_not_read_as_a_duration(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_row_selection_takes_ids_globs_and_commas_in_catalogue_order() -> None:
    chosen = select_rows(["floor_runc,idle_rss", "pull_debian*"])
    assert [r.id for r in chosen] == [
        "idle_rss",
        "pull_debian",
        "pull_debian_zstd",
        "pull_debian_own_cli",
        "floor_runc",
    ]
    assert select_rows(None) == list(ROWS)


def test_unknown_row_is_refused_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"no row matches 'nope'.*idle_rss"):
        select_rows(["nope"])


def test_command_line_refuses_unknown_rows_before_starting_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--rows", "no_such_row"])
    assert exc.value.code == 2
    assert "no row matches 'no_such_row'" in capsys.readouterr().err


def test_command_line_refuses_zero_repetitions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--reps", "0"])
    assert exc.value.code == 2
    assert "--reps must be at least 1" in capsys.readouterr().err


def test_row_ids_are_unique_and_compare_rows_name_what_berth_needs() -> None:
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids))
    for row in ROWS:
        if row.kind == "compare" and row.id != "idle_rss":
            assert row.needs, row.id


def test_quick_settings_use_one_rep_and_no_warmup_unless_told() -> None:
    spec = select_rows(["run_rm_ctr"])[0]
    assert Settings(quick=True).reps_for(spec) == 1
    assert Settings(quick=True).warmups_for(spec) == 0
    assert Settings().reps_for(spec) == spec.reps
    assert Settings(quick=True, reps=4, warmups=2).reps_for(spec) == 4
    assert Settings(quick=True, reps=4, warmups=2).warmups_for(spec) == 2


def test_chain_ids_match_the_image_builder() -> None:
    image = build_layered_image()
    chain = chain_ids(image.diff_ids)
    assert len(chain) == len(image.layers)
    assert chain[0] == image.diff_ids[0]
    assert chain[-1] == image.chain_id


def test_mountinfo_octal_escapes_are_decoded() -> None:
    assert _unescape_mountinfo(r"/tmp/bb.x/a\040b\134c") == "/tmp/bb.x/a b\\c"


@pytest.mark.parametrize(
    ("value", "text"), [(0.1234, "0.123"), (1.0, "1.00"), (51.27, "51.3"), (140.6, "141")]
)
def test_values_show_about_three_significant_digits(value: float, text: str) -> None:
    assert fmt_value(value) == text


def _rows() -> list[RowResult]:
    idle, pull, floor = select_rows(["idle_rss", "pull_busybox", "floor_runc"])
    ok = RowResult(idle, idle.title, {"containerd": Column(samples=[50.0]), "berth": Column()})
    ok.columns["berth"].samples.append(40.0)
    missing = RowResult(pull, pull.title, {"containerd": Column(samples=[0.2]), "berth": Column()})
    missing.columns["berth"].fail("unsupported", "not supported yet (no diff gRPC service)")
    runc = RowResult(floor, floor.title, {"floor": Column(samples=[30.0, 36.0, 33.0])})
    return [ok, missing, runc]


def test_table_shows_ratio_and_a_footnoted_reason_instead_of_a_number() -> None:
    table = text_table(_rows())
    idle_line = next(line for line in table.splitlines() if line.startswith("daemon RSS"))
    assert "50.0 (50.0-50.0, n=1)" in idle_line and idle_line.endswith("0.80")
    pull_line = next(line for line in table.splitlines() if line.startswith("cold pull"))
    assert "not supported yet [1]" in pull_line
    assert "[1] berth: not supported yet (no diff gRPC service)" in table
    assert "33.0 (30.0-36.0, n=3)" in table


def test_json_of_a_row_without_numbers_carries_the_reason() -> None:
    doc = _rows()[1].to_json()
    assert doc["results"]["berth"] == {
        "status": "unsupported",
        "reason": "not supported yet (no diff gRPC service)",
    }
    assert doc["results"]["containerd"]["n"] == 1
    assert doc["ratio"] is None


def _doc() -> dict[str, object]:
    return {
        "started": "2026-01-01T00:00:00Z",
        "command": "./bench/run.sh",
        "duration_s": 600.0,
        "settings_note": "",
        "machine": {
            "cores": 2,
            "cpu": "cpu",
            "memory_gib": 24.0,
            "kernel": "6.1",
            "os": "Debian",
            "cgroups": "v1 (hybrid)",
        },
        "versions": {
            "containerd": "1.6.20",
            "runc": "1.1.5",
            "berth": "0.1.0",
            "ctr": "1.6.20",
            "python": "3.11",
        },
    }


def test_docs_section_between_markers_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Title\n\nprose\n\n{DOCS_BEGIN}\nold table\n{DOCS_END}\n\nmore prose\n")
    update_docs(page, markdown_summary(_doc(), _rows()))
    text = page.read_text()
    assert text.startswith("# Title\n\nprose\n\n")
    assert text.endswith(f"{DOCS_END}\n\nmore prose\n")
    assert "old table" not in text
    assert "`./bench/run.sh`" in text and "| daemon RSS, idle | MiB |" in text


def test_docs_without_markers_are_not_overwritten(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("hand written\n")
    with pytest.raises(ValueError, match=r"no .* section"):
        update_docs(page, "table\n")
    assert page.read_text() == "hand written\n"
