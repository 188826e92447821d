"""services.server.timestamp gives what protobuf's own conversions give."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2

from berth.services.server import timestamp


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 11, 22, 21, 42, 24, 123456, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 7, 20, 20, 17, 40, 5, tzinfo=UTC),
        datetime(2026, 11, 22, 23, 0, 0, 999999, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2026, 11, 22, 21, 42, 24, 500000),  # naive: taken as UTC
    ],
)
def test_datetimes_match_from_datetime(value: datetime) -> None:
    want = timestamp_pb2.Timestamp()
    want.FromDatetime(value)
    assert timestamp(value) == want


@pytest.mark.parametrize("ns", [0, 1, 999_999_999, 1_763_847_744_123_456_789, -1, -1_500_000_000])
def test_nanoseconds_match_from_nanoseconds(ns: int) -> None:
    want = timestamp_pb2.Timestamp()
    want.FromNanoseconds(ns)
    assert timestamp(ns) == want
