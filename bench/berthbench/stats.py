"""Summaries of repeated measurements, and the parsing of durations ctr prints.

Medians, not means: the machines are shared and noisy, and one slow outlier
should not move the number we quote. Ratios are Berth over containerd, so a
value below 1 means Berth is cheaper (faster, or smaller in memory).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Summary", "parse_go_duration", "ratio"]


@dataclass(frozen=True)
class Summary:
    """n, min, median and max of a non-empty list of samples."""

    n: int
    min: float
    median: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        """Summarise *samples*; raises ValueError when there are none."""
        if not samples:
            raise ValueError("no samples to summarise")
        return cls(
            n=len(samples),
            min=min(samples),
            median=float(statistics.median(samples)),
            max=max(samples),
        )


def ratio(berth: Summary | None, containerd: Summary | None) -> float | None:
    """Berth's median over containerd's, or None when either side has no number."""
    if berth is None or containerd is None or containerd.median == 0:
        return None
    return berth.median / containerd.median


# Go's time.Duration.String(): "1h2m3.5s", "812.345ms", "15.2µs", "0s".
_GO_UNITS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ns": 1e-9,
}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string such as ``1m2.5s`` or ``812.3ms``.

    Raises ValueError for anything else, so a change in ctr's output is
    noticed instead of silently read as zero.
    """
    text = text.strip()
    if text == "0" or text == "0s":
        return 0.0
    pos = 0
    total = 0.0
    for match in _GO_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"not a Go duration: {text!r}")
    return total
