"""One timestamp format: RFC 3339, UTC, microseconds, 'Z'; parsing accepts any offset."""

from __future__ import annotations

import pytest

from tenants.errors import BadRequest
from tenants.rfc3339 import format_time, parse_time


def test_format_is_utc_with_microseconds_and_z() -> None:
    assert format_time(0) == "1970-01-01T00:00:00.000000Z"
    assert format_time(1795514400.25) == "2026-11-24T10:00:00.250000Z"


@pytest.mark.parametrize("moment", [0.0, 1.5, 1795514400.123456, 4102444800.000001])
def test_round_trip_is_exact_to_the_microsecond(moment: float) -> None:
    assert parse_time(format_time(moment)) == pytest.approx(moment, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    ["2026-11-24T10:00:00Z", "2026-11-24T10:00:00z", "2026-11-24T11:00:00+01:00", "2026-11-24T05:30-04:30"],
)
def test_parse_takes_any_offset(text: str) -> None:
    assert parse_time(text) == 1795514400.0


@pytest.mark.parametrize("text", ["", "latest", "yesterday", "2026-13-01T00:00:00Z", "2026-11-24T25:00:00Z"])
def test_parse_refuses_what_is_not_a_time(text: str) -> None:
    with pytest.raises(BadRequest, match="not RFC 3339"):
        parse_time(text)


def test_parse_refuses_a_time_without_a_zone() -> None:
    with pytest.raises(BadRequest, match="needs a time zone"):
        parse_time("2026-11-24T10:00:00")
