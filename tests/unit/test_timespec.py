"""recoveryd.timespec: the moments users type, as query-bound stamps."""

from __future__ import annotations

import pytest

from logstore.stamp import Stamp
from recoveryd.timespec import END_OF_NS, format_time, parse_time

NOW_NS = 1_767_610_800_000_000_000  # 2026-01-05T11:00:00Z
M = (1 << 32) - 1


def end(wall_ns: int) -> Stamp:
    return Stamp(wall_ns, M, M)


@pytest.mark.parametrize("text, wall_ns", [
    ("2026-01-05T11:00:00Z", NOW_NS),
    ("2026-01-05T11:00:00+00:00", NOW_NS),
    ("2026-01-05T13:00:00+02:00", NOW_NS),
    ("2026-01-05T11:00:00", NOW_NS),             # naive means UTC
    ("2026-01-05 11:00", NOW_NS),
    ("2026-01-05T11:00:00.5Z", NOW_NS + 500_000_000),
    ("2026-01-05T11:00:00.123456789Z", NOW_NS + 123_456_789),  # all nine digits kept
    ("2026-01-05T11:00:00,000000001", NOW_NS + 1),
    ("2026-01-05", NOW_NS - 11 * 3600 * 10**9),
    ("  2026-01-05T11:00:00Z  ", NOW_NS),
])
def test_iso(text, wall_ns):
    assert parse_time(text, NOW_NS) == end(wall_ns)


@pytest.mark.parametrize("text, back_ns", [
    ("-30s", 30 * 10**9), ("-10m", 600 * 10**9), ("-2h", 7200 * 10**9),
    ("-1d", 86400 * 10**9), ("-1h30m", 5400 * 10**9), ("-0s", 0), ("-1w", 7 * 86400 * 10**9),
])
def test_relative(text, back_ns):
    assert parse_time(text, NOW_NS) == end(NOW_NS - back_ns)


def test_now():
    assert parse_time("now", NOW_NS) == end(NOW_NS)
    assert parse_time("NOW", NOW_NS) == end(NOW_NS)


def test_now_defaults_to_the_wall_clock():
    import time
    before = time.time_ns()
    got = parse_time("now")
    assert before <= got.wall_ns <= time.time_ns()


def test_exact_stamp_is_exact():
    assert parse_time("1700000000123456789.7@3") == Stamp(1700000000123456789, 7, 3)


def test_a_time_covers_its_whole_nanosecond():
    bound = parse_time("2026-01-05T11:00:00.000000001Z")
    assert (bound.logical, bound.node_id) == END_OF_NS
    assert Stamp(NOW_NS + 1, 123, 9) <= bound < Stamp(NOW_NS + 2, 0, 0)


def test_format_time_round_trips_to_a_bound_at_or_above():
    for stamp in (Stamp(NOW_NS + 123_456_789, 5, 7), Stamp(NOW_NS, 0, 0), Stamp(NOW_NS, M, M)):
        text = format_time(stamp)
        assert text == "2026-01-05T11:00:00.%09dZ" % (stamp.wall_ns - NOW_NS)
        assert parse_time(text) >= stamp
        assert parse_time(text).wall_ns == stamp.wall_ns


@pytest.mark.parametrize("text", [
    "", "yesterday", "-10", "-10x", "10m", "+10m", "2026-13-01", "2026-01-05T25:00",
    "1.2", "1.2@", "1.2@99999999999", "2026-01-05T11:00:00.1234567891Z", "1960-01-01",
    "-100000000d",
])
def test_errors_are_one_line_listing_the_forms(text):
    with pytest.raises(ValueError) as info:
        parse_time(text, NOW_NS)
    message = str(info.value)
    assert "\n" not in message
    assert "ISO-8601" in message and "-10m" in message and "now" in message
    assert "<wall_ns>.<logical>@<node>" in message
    assert "UTC" in message


def test_not_text():
    with pytest.raises(ValueError):
        parse_time(None)  # type: ignore[arg-type]


def test_a_parsed_time_is_a_plain_stamp_not_a_clock_stamp():
    # A query bound must never be able to move a clock (STYLE.md, "Types mark capability").
    assert type(parse_time("now", NOW_NS)) is Stamp
    assert type(parse_time("1.2@3")) is Stamp
