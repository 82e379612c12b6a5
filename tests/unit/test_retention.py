"""Unit tests of nfsproxy.ship.retention: what may be trimmed, and the loop that trims."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from nfsproxy.native.log import NativeCommitter as GroupCommitter
from nfsproxy.native.log import NativeLog
from logstore.log import Log
from nfsproxy.ship.retention import (
    RetentionLoop, RetentionPolicy, SegmentFacts, parse_retention, segment_facts,
    segments_to_trim,
)

NOW = 1_000_000.0
HOUR = 3600.0


def segs(*specs: tuple[int, int, int, float]) -> list[SegmentFacts]:
    """(first_seq, last_seq, size_bytes, age_s); the last one is active."""
    return [SegmentFacts(first, last, size, NOW - age, i == len(specs) - 1)
            for i, (first, last, size, age) in enumerate(specs)]


# Four segments of 100 records and 1000 bytes each, 4h, 3h, 2h old and active.
LOG = segs((1, 100, 1000, 4 * HOUR), (101, 200, 1000, 3 * HOUR), (201, 300, 1000, 2 * HOUR),
           (301, 350, 500, 0.0))


@pytest.mark.parametrize("min_acked, age_s, size, below", [
    # Only what every shard acked: a segment goes once its last seq is acked.
    (0, 0, 0, 1),
    (99, 0, 0, 1),
    (100, 0, 0, 101),
    (250, 0, 0, 201),
    (350, 0, 0, 301),         # never the active segment
    # The age window keeps segments whose newest record is younger than it.
    (350, 1 * HOUR, 0, 301),
    (350, 2.5 * HOUR, 0, 201),
    (350, 3 * HOUR, 0, 101),  # exactly 3h old is still inside a 3h window
    (350, 5 * HOUR, 0, 1),
    # The size window keeps at least that many bytes on disk (3500 in all).
    (350, 0, 500, 301),
    (350, 0, 501, 201),
    (350, 0, 1500, 201),
    (350, 0, 1501, 101),
    (350, 0, 2500, 101),
    (350, 0, 3600, 1),
    # Both: keep what either asks for.
    (350, 2.5 * HOUR, 500, 201),
    (350, 1 * HOUR, 2500, 101),
    # The lowest ack still wins over a generous window.
    (150, 0, 0, 101),
])
def test_segments_to_trim(min_acked, age_s, size, below):
    assert segments_to_trim(LOG, min_acked, NOW, age_s, size) == below


def test_only_a_prefix_of_whole_segments_goes():
    # The second segment is young (a clock step?): it keeps every later one too.
    log = segs((1, 10, 100, 5 * HOUR), (11, 20, 100, 0.0), (21, 30, 100, 5 * HOUR),
               (31, 31, 10, 0.0))
    assert segments_to_trim(log, 31, NOW, HOUR, 0) == 11


def test_nothing_to_trim_in_an_empty_list():
    assert segments_to_trim([], 100, NOW, 0, 0) == 0


@pytest.mark.parametrize("text, policy", [
    ("1h", RetentionPolicy(3600.0, 0)),
    ("10G", RetentionPolicy(0.0, 10 << 30)),
    ("1h,10G", RetentionPolicy(3600.0, 10 << 30)),
    ("10G, 1h", RetentionPolicy(3600.0, 10 << 30)),
    ("30m", RetentionPolicy(1800.0, 0)),
    ("15min", RetentionPolicy(900.0, 0)),
    ("90s", RetentionPolicy(90.0, 0)),
    ("7d", RetentionPolicy(7 * 86400.0, 0)),
    ("2w", RetentionPolicy(14 * 86400.0, 0)),
    ("512M", RetentionPolicy(0.0, 512 << 20)),
    ("512MB", RetentionPolicy(0.0, 512 << 20)),
    ("512MiB", RetentionPolicy(0.0, 512 << 20)),
    ("1.5G", RetentionPolicy(0.0, 3 << 29)),
    ("1T", RetentionPolicy(0.0, 1 << 40)),
    ("100K", RetentionPolicy(0.0, 100 << 10)),
    ("4096B", RetentionPolicy(0.0, 4096)),
    ("0", RetentionPolicy(0.0, 0)),
])
def test_parse_retention(text, policy):
    assert parse_retention(text) == policy


@pytest.mark.parametrize("text", ["", "1", "h", "1x", "1h,2h", "1G,2G", "1h,", ",1h", "1h,1G,1d",
                                  "-1h", "1 hour"])
def test_parse_retention_refuses_with_a_hint(text):
    with pytest.raises(ValueError, match="--log-retain"):
        parse_retention(text)


# -- the loop over a real LOG ------------------------------------------------------------


def fill(log: Log, count: int) -> None:
    for i in range(count):
        log.append(b"r" * 200 + str(i).encode())
    log.sync()


def age_segments(log: Log, age_s: float) -> None:
    for info in log.segments:
        past = NOW - age_s
        os.utime(info.path, (past, past))


def test_the_loop_trims_below_the_lowest_ack(tmp_path: Path):
    async def main() -> None:
        log = NativeLog.open(tmp_path / "log", segment_bytes=4 << 10)
        committer = GroupCommitter(log)
        acked = [0, 0]
        loop = RetentionLoop(committer, lambda: acked, RetentionPolicy(HOUR, 0),
                             wall_clock=lambda: NOW)
        try:
            fill(log, 200)
            segments_before = len(log.segments)
            assert segments_before > 5
            age_segments(log, 2 * HOUR)
            assert await loop.run_once() == 0  # no shard acked anything
            acked[:] = [150, 60]
            deleted = await loop.run_once()
            assert deleted > 0
            assert log.first_seq <= 61  # every record shard 1 still needs is kept
            assert all(s.last_seq > 60 for s in log.segments)
            acked[:] = [200, 200]
            await loop.run_once()
            assert log.first_seq == log.segments[-1].first_seq  # all but the active segment
            assert loop.trimmed_segments_total == segments_before - len(log.segments)
        finally:
            await committer.close()
            log.close()

    asyncio.run(main())


def test_the_loop_keeps_the_window(tmp_path: Path):
    async def main() -> None:
        log = NativeLog.open(tmp_path / "log", segment_bytes=4 << 10)
        committer = GroupCommitter(log)
        try:
            fill(log, 200)
            age_segments(log, 0.5 * HOUR)
            facts = segment_facts(log)
            assert [f.first_seq for f in facts] == [s.first_seq for s in log.segments]
            by_age = RetentionLoop(committer, lambda: [200], RetentionPolicy(HOUR, 0),
                                   wall_clock=lambda: NOW)
            assert await by_age.run_once() == 0
            total = log.size_bytes
            by_size = RetentionLoop(committer, lambda: [200], RetentionPolicy(0.0, total - 1),
                                    wall_clock=lambda: NOW)
            assert await by_size.run_once() == 0  # deleting any segment would leave too little
            half = RetentionLoop(committer, lambda: [200], RetentionPolicy(0.0, total // 2),
                                 wall_clock=lambda: NOW)
            assert await half.run_once() > 0
            assert total // 2 <= log.size_bytes < total
        finally:
            await committer.close()
            log.close()

    asyncio.run(main())


def test_a_trim_wakes_appends_waiting_for_quota(tmp_path: Path):
    async def main() -> None:
        log = NativeLog.open(tmp_path / "log", segment_bytes=4 << 10)
        fill(log, 200)
        age_segments(log, HOUR)
        committer = GroupCommitter(log, quota_bytes=log.size_bytes // 2)
        loop = RetentionLoop(committer, lambda: [200], RetentionPolicy(0.0, 0),
                             wall_clock=lambda: NOW)
        try:
            assert committer.over_quota
            waiting = asyncio.ensure_future(committer.wait_for_space())
            await asyncio.sleep(0)
            assert not waiting.done()
            await loop.run_once()
            await waiting
            assert not committer.over_quota
        finally:
            await committer.close()
            log.close()

    asyncio.run(main())


def test_the_loop_runs_periodically_and_survives_failures(tmp_path: Path):
    async def main() -> None:
        log = NativeLog.open(tmp_path / "log", segment_bytes=4 << 10)
        committer = GroupCommitter(log)
        fill(log, 200)
        age_segments(log, HOUR)
        calls = []

        def acked() -> list[int]:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a shipper state went missing")
            return [200]

        loop = RetentionLoop(committer, acked, RetentionPolicy(0.0, 0), interval_s=0.001,
                             wall_clock=lambda: NOW)
        loop.start()
        try:
            while len(log.segments) > 1:
                await asyncio.sleep(0.001)
            assert loop.failures_total == 1
        finally:
            await loop.stop()
            await committer.close()
            log.close()

    asyncio.run(main())
