"""Turning results into the text table, the JSON document and the markdown summary.

Every cell shows ``median (min-max, n=N)``. A column without numbers shows
its status and a footnote with the reason, so a row is never silently empty.
The JSON keeps every raw sample; the table is only a view of it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.berthbench.measure import FLOOR, Column, RowResult

__all__ = [
    "DOCS_BEGIN",
    "DOCS_END",
    "fmt_value",
    "markdown_summary",
    "text_table",
    "update_docs",
]

DOCS_BEGIN = "<!-- berthbench:results:begin -->"
DOCS_END = "<!-- berthbench:results:end -->"

_STATUS_TEXT = {
    "unsupported": "not supported yet",
    "error": "failed",
    "skipped": "skipped",
}


def fmt_value(value: float) -> str:
    """About three significant digits, never in exponent notation."""
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


class _Notes:
    """Numbered footnotes, one number per distinct reason."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def ref(self, text: str) -> int:
        if text not in self.items:
            self.items.append(text)
        return self.items.index(text) + 1


def _cell(col: Column | None, name: str, notes: _Notes) -> str:
    if col is None:
        return "-"
    summary = col.summary()
    if summary is not None:
        return (
            f"{fmt_value(summary.median)} "
            f"({fmt_value(summary.min)}-{fmt_value(summary.max)}, n={summary.n})"
        )
    if col.status == "ok":
        return "no samples"
    text = _STATUS_TEXT.get(col.status, col.status)
    if col.reason:
        return f"{text} [{notes.ref(f'{name}: {col.reason}')}]"
    return text


def _ratio(row: RowResult) -> str:
    value = row.ratio
    return "-" if value is None else f"{value:.2f}"


def _tables(rows: Sequence[RowResult]) -> tuple[list[list[str]], list[list[str]], _Notes]:
    notes = _Notes()
    compare = [["row", "unit", "containerd", "berth", "berth/containerd"]]
    floors = [["floor", "unit", "median (min-max, n)"]]
    for row in rows:
        for text in row.notes:
            notes.ref(text)
        if row.spec.kind == "floor":
            floors.append([row.title, row.spec.unit, _cell(row.columns.get(FLOOR), "floor", notes)])
        else:
            compare.append(
                [
                    row.title,
                    row.spec.unit,
                    _cell(row.columns.get("containerd"), "containerd", notes),
                    _cell(row.columns.get("berth"), "berth", notes),
                    _ratio(row),
                ]
            )
    return compare, floors, notes


def _align(table: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    out = []
    for n, r in enumerate(table):
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def text_table(rows: Sequence[RowResult]) -> str:
    """The plain-text table printed at the end of a run."""
    compare, floors, notes = _tables(rows)
    lines: list[str] = []
    if len(compare) > 1:
        lines += _align(compare)
    if len(floors) > 1:
        lines += ["", *_align(floors)]
    if notes.items:
        lines += ["", *(f"[{i}] {text}" for i, text in enumerate(notes.items, 1))]
    return "\n".join(lines) + "\n"


def _md_table(table: list[list[str]]) -> list[str]:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    out = ["| " + " | ".join(esc(c) for c in table[0]) + " |"]
    out.append("|" + "|".join("---" for _ in table[0]) + "|")
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in table[1:]]
    return out


def markdown_summary(doc: dict[str, Any], rows: Sequence[RowResult]) -> str:
    """The run as markdown: machine, versions, date, command, tables, notes."""
    machine = doc["machine"]
    versions = doc["versions"]
    compare, floors, notes = _tables(rows)
    lines = [
        f"Measured {doc['started']} with `{doc['command']}`"
        f" ({doc['duration_s']:.0f} s; reps and warm-ups per row as in bench/berthbench/rows.py"
        f"{', overridden: ' + doc['settings_note'] if doc.get('settings_note') else ''}).",
        "",
        f"- Machine: {machine['cores']} cores ({machine['cpu']}), "
        f"{machine['memory_gib']:.1f} GiB, kernel {machine['kernel']}, {machine['os']}, "
        f"cgroups {machine['cgroups']}",
        f"- containerd {versions['containerd']}, runc {versions['runc']}, "
        f"berth {versions['berth']}, ctr {versions['ctr']}, Python {versions['python']}",
        "",
        "Cells are `median (min-max, n=samples)`; the ratio is Berth's median over"
        " containerd's (below 1: Berth is faster or smaller).",
        "",
    ]
    if len(compare) > 1:
        lines += _md_table(compare)
    if len(floors) > 1:
        lines += ["", *_md_table(floors)]
    if notes.items:
        lines += ["", *(f"{i}. {text}" for i, text in enumerate(notes.items, 1))]
    return "\n".join(lines) + "\n"


def update_docs(path: Path, summary: str) -> None:
    """Replace the text between the results markers in *path* with *summary*.

    Raises ValueError when the markers are missing, so a hand-edited page is
    never overwritten wholesale.
    """
    text = path.read_text()
    pattern = re.compile(re.escape(DOCS_BEGIN) + r".*?" + re.escape(DOCS_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{path} has no {DOCS_BEGIN} ... {DOCS_END} section")
    replacement = f"{DOCS_BEGIN}\n{summary}{DOCS_END}"
    path.write_text(pattern.sub(lambda _m: replacement, text, count=1))
