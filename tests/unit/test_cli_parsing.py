"""The CLI's pure helpers: durations, labels, tables, timestamps, usage errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
import pytest

from berth.cli import _output
from berth.cli.main import run


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", timedelta(0)),
        ("30", timedelta(seconds=30)),
        ("1.5", timedelta(seconds=1.5)),
        ("500ms", timedelta(milliseconds=500)),
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("24h", timedelta(hours=24)),
        ("1.5h", timedelta(minutes=90)),
        ("2h45m30s", timedelta(hours=2, minutes=45, seconds=30)),
        ("10us", timedelta(microseconds=10)),
        ("+2s", timedelta(seconds=2)),
        ("-0", timedelta(0)),
    ],
)
def test_parse_duration_accepts_go_syntax_and_seconds(text: str, expected: timedelta) -> None:
    assert _output.parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "h", "5x", "1h 30m", "-5s", "-1", "1hh", "m5", "nan", "inf", "1e3", "-", "99999999999h"],
)
def test_parse_duration_rejects_malformed_or_negative(text: str) -> None:
    with pytest.raises(ValueError):
        _output.parse_duration(text)


def test_parse_labels_bare_key_value_depends_on_command() -> None:
    assert _output.parse_labels(["a=b", "c", "d=", "e=x=y"], bare="true") == {
        "a": "b",
        "c": "true",
        "d": "",
        "e": "x=y",
    }
    assert _output.parse_labels(["c"], bare="") == {"c": ""}


def test_parse_labels_rejects_missing_key() -> None:
    with pytest.raises(click.BadParameter, match="needs a key"):
        _output.parse_labels(["=v"], bare="")


def test_table_pads_columns_like_tabwriter() -> None:
    text = _output.table(("NAME", "LABELS"), [("default", ""), ("n", "a=b")])
    assert text.splitlines() == ["NAME    LABELS", "default", "n       a=b"]
    wide = _output.table(("A", "B"), [("xx", "y")], padding=4)
    assert wide.splitlines() == ["A     B", "xx    y"]


def test_label_string_sorts_and_marks_empty() -> None:
    assert _output.label_string({"b": "2", "a": "1"}) == "a=1,b=2"
    assert _output.label_string({}, empty="-") == "-"


def test_rfc3339_json_form_is_utc_with_z() -> None:
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert _output.rfc3339(moment) == "2024-05-06T07:08:09.123456Z"
    local = _output.rfc3339(moment, local=True)
    assert datetime.fromisoformat(local) == moment.replace(microsecond=0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bogus"], "No such command 'bogus'"),
        (["ns", "create"], "Missing argument 'NAME'"),
        (["leases", "rm"], "Missing argument 'IDS...'"),
        (["--timeout", "soon", "version"], "invalid duration 'soon'"),
        (["leases", "create", "--expires", "-1s"], "must not be negative"),
        (["ns", "ls", "--format", "yaml"], "'yaml' is not one of"),
        (["ns", "create", "x", "=v"], "needs a key"),
    ],
)
def test_usage_errors_exit_2_with_one_berth_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # None of these reach the daemon: the address is never dialled.
    assert run(["-a", "/nonexistent/berth.sock", *argv]) == 2
    err = capsys.readouterr().err
    berth_lines = [line for line in err.splitlines() if line.startswith("berth: ")]
    assert len(berth_lines) == 1, err
    assert message in berth_lines[0]
    assert "Try 'berth" in err


def test_bare_group_prints_help_and_succeeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["leases"]) == 0
    out = capsys.readouterr().out
    assert "Usage: berth leases" in out and "create" in out
