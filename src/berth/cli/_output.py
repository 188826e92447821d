"""Rendering and argument parsing shared by every command.

Tables follow ctr's look (left-aligned columns padded with spaces), so people
moving from ctr read them at a glance; ``--format json`` gives scripts a stable
shape instead of parsing columns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

FORMATS = ("table", "json")


def format_option(fn: F) -> F:
    """The ``--format table|json`` option every listing command takes."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output as an aligned table for people or as JSON for scripts.",
    )(fn)


def quiet_option(what: str) -> Callable[[F], F]:
    """The ``-q/--quiet`` option: print only one identifier per line."""

    def deco(fn: F) -> F:
        return click.option(
            "--quiet", "-q", is_flag=True, help=f"Print only the {what}, one per line."
        )(fn)

    return deco


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, padding: int = 1) -> str:
    """Columns padded to their widest cell plus ``padding``, as Go's tabwriter does."""
    body = [list(headers), *([str(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in body) for i in range(len(headers))]
    lines = []
    for row in body:
        cells = [cell.ljust(widths[i] + padding) for i, cell in enumerate(row)]
        lines.append("".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def echo_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, padding: int = 1) -> None:
    click.echo(table(headers, rows, padding=padding), nl=False)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def rfc3339(moment: datetime, *, local: bool = False) -> str:
    """A timestamp as RFC 3339: UTC with ``Z`` for JSON, local time for tables (as ctr)."""
    if local:
        text = moment.astimezone().replace(microsecond=0).isoformat()
    else:
        text = moment.astimezone(UTC).isoformat()
    # Go writes a zero offset as "Z"; so does berth, so outputs compare equal.
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def label_string(labels: dict[str, str], *, empty: str = "") -> str:
    """``k=v,k2=v2`` sorted, as ctr prints labels; ``empty`` when there are none."""
    if not labels:
        return empty
    return ",".join(sorted(f"{k}={v}" for k, v in labels.items()))


def parse_labels(args: Iterable[str], *, bare: str) -> dict[str, str]:
    """``key=value`` arguments to a dict; a bare ``key`` gets the value ``bare``.

    ctr is not consistent here (namespaces give a bare key "true", leases give
    it ""), and berth follows ctr per command so scripts behave the same.
    """
    out: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not key:
            raise click.BadParameter(
                f"{arg!r}: a label needs a key before '='", param_hint="LABELS"
            )
        out[key] = value if sep else bare
    return out


_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> timedelta:
    """A Go duration (``1h30m``, ``500ms``, ``0``) or a plain number of seconds.

    Raises ValueError for anything else, including negative values.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    # Go accepts a sign; a negative duration never makes sense here.
    negative = s[0] == "-"
    if s[0] in "+-":
        s = s[1:]
    if _NUMBER.fullmatch(s):
        seconds = float(s)
    else:
        pos, seconds = 0, 0.0
        for m in _DURATION_PART.finditer(s):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
        if pos != len(s) or pos == 0:
            raise ValueError(
                f"invalid duration {text!r}: use a number of seconds or units such as 30s, 5m, 1h30m"
            )
    if negative and seconds > 0:
        raise ValueError(f"invalid duration {text!r}: must not be negative")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: too long") from None


class Duration(click.ParamType):
    """A click parameter taking :func:`parse_duration` syntax."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()
