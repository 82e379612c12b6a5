"""The shippers' shared LOG reader (nfsproxy.ship.fanout).

Two kinds of check: the batches a shipper cuts through the shared reader
hold, frame for frame, what its own walk of the same range gives (for
random LOGs, budgets, rewinds and interleavings of shards); and shipping
through it over real gRPC to fake shards gets every record to exactly its
shard, while a shard that is down or lost its data is served alone and gets
everything too.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import threading
import time
from pathlib import Path

import pytest

from logstore.hlc import HLC
from logstore.log import Log
from logstore.record import parse_record, record_parts
from logstore.sharding import shards_of
from logstore.stamp import Stamp
from nfsproxy import _dataplane
from nfsproxy.native.log import NativeLog
from nfsproxy.relay.journal import frame_fields
from nfsproxy.relay.session import Proxy
from nfsproxy.ship.fanout import LogFanout
from nfsproxy.ship.shipper import Shipper, ShipperOptions
from unit.test_shipper import (FAST, NO_NAS, FakeShard, caught_up, eventually, free_port,
                               log_payloads, make_record, run_async, stop_all)

pytestmark = pytest.mark.timeout(180)

VECTORS = Path(__file__).parent.parent / "vectors"


def append_routed(log: Log, clock: HLC, count: int, *, rng: random.Random,
                  unrouted: float = 0.0, sizes=(0, 50, 700, 5000)) -> None:
    """Records as the proxy writes them: routing fields in the frame header
    (a share ``unrouted`` without, which only a parse routes)."""
    for _ in range(count):
        record = make_record(rng, clock, data_bytes=rng.choice(sizes))
        if rng.random() < unrouted:
            log.append(record.SerializeToString())
            continue
        data, record.data = record.data, b""
        log.append(b"".join(record_parts(record, data)), **frame_fields(record))
    log.sync()


def reader(log: Log, shard_id: int, n_shards: int, fanout: LogFanout | None,
           options: ShipperOptions = FAST) -> Shipper:
    """A shipper used only for its LOG reads (``_read_range``)."""
    return Shipper("127.0.0.1:1", shard_id=shard_id, n_shards=n_shards, log=log, clock=HLC(7),
                   stable_stamp=lambda: Stamp.ZERO, options=options, fanout=fanout)


def alone_frames(log: Log, shard_id: int, n_shards: int, from_seq: int, through_seq: int) -> bytes:
    """The shard's frames in ``from_seq..through_seq``, by its own walk."""
    walker = reader(log, shard_id, n_shards, None)
    got = walker._read_range(from_seq, through_seq, 1 << 40, True)
    assert got.through_seq == through_seq
    return got.frames


def read_in_steps(log: Log, shipper: Shipper, shard_id: int, n_shards: int, step: int = 20) -> None:
    """Read the whole LOG as the shard's batches, ``step`` records of LOG at
    most each, checking each against the shard's own walk."""
    after = 0
    while after < log.last_seq:
        got = shipper._read_range(after + 1, min(after + step, log.last_seq), 1 << 20, False)
        assert got.frames == alone_frames(log, shard_id, n_shards, after + 1, got.through_seq)
        after = got.through_seq


@pytest.mark.parametrize("seed", range(8))
def test_batches_through_the_shared_reader_hold_what_each_shards_own_walk_finds(
        tmp_path: Path, seed: int) -> None:
    """Three shards interleaved at random, each with its own budgets and
    record limits, one of them rewinding now and then: every batch holds
    exactly the shard's frames of its range, within its limits, and the
    batches chain to the LOG's end; the LOG is walked far fewer times than
    once per shard and batch."""
    rng = random.Random(seed)
    clock = HLC(7)
    n_shards = 3
    with Log.open(tmp_path / "log", segment_bytes=rng.choice([16 << 10, 256 << 10])) as log:
        append_routed(log, clock, 600, rng=rng, unrouted=rng.choice([0.0, 0.0, 0.02]))
        fanout = LogFanout(log, n_shards, cap_bytes=rng.choice([64 << 10, 64 << 20]))
        options = [dataclasses.replace(FAST, max_batch_records=rng.choice([3, 50, 8192]))
                   for _ in range(n_shards)]
        shippers = [reader(log, k, n_shards, fanout, options[k]) for k in range(n_shards)]
        after = [0] * n_shards
        oversize = [False] * n_shards
        batches = 0
        while min(after) < log.last_seq:
            k = rng.choice([s for s in range(n_shards) if after[s] < log.last_seq])
            if k == 2 and rng.random() < 0.03:
                after[k] = rng.randrange(0, after[k] + 1)  # a rewind: the shard lost data
            budget = rng.choice([10, 900, 4 << 10, 64 << 10, 1 << 20])
            limit = min(log.last_seq, after[k] + rng.choice([5, 100, 10_000]))
            got = shippers[k]._read_range(after[k] + 1, limit, budget, oversize[k])
            batches += 1
            if got.through_seq <= after[k]:
                assert got.records == 0 and got.blocked_by > budget and not oversize[k]
                oversize[k] = True  # the stream lets the next batch hold it alone
                continue
            assert got.through_seq <= limit
            assert got.frames == alone_frames(log, k, n_shards, after[k] + 1, got.through_seq)
            assert got.records <= options[k].max_batch_records
            assert got.nbytes <= budget or (oversize[k] and got.records == 1)
            oversize[k] = False
            after[k] = got.through_seq
        assert fanout.stats()["batches_total"] > 0
        fanout.close()


@pytest.mark.parametrize("seed", range(3))
def test_shippers_on_threads_while_the_log_grows_each_get_their_own_frames(
        tmp_path: Path, seed: int) -> None:
    """Three shippers' reads on threads of their own, as a proxy runs them,
    while records are appended and synced: every batch holds what the shard's
    own walk of its range finds, rewinds and small caps included."""
    rng = random.Random(seed)
    clock = HLC(7)
    n_shards, total = 3, 1500
    errors: list[str] = []
    with Log.open(tmp_path / "log", segment_bytes=rng.choice([16 << 10, 128 << 10])) as log:
        append_routed(log, clock, 200, rng=rng, unrouted=rng.choice([0.0, 0.01]))
        fanout = LogFanout(log, n_shards, cap_bytes=rng.choice([8 << 10, 64 << 10, 64 << 20]))
        appended = threading.Event()

        def append() -> None:
            more = random.Random(seed + 1000)
            while log.last_seq < total:
                append_routed(log, clock, more.randrange(1, 30), rng=more)
                time.sleep(0.0005)
            appended.set()

        def ship(k: int) -> None:
            r = random.Random(seed * 10 + k)
            shipper = reader(log, k, n_shards, fanout,
                             dataclasses.replace(FAST, max_batch_records=r.choice([3, 50, 8192])))
            after, oversize = 0, False
            try:
                while not (appended.is_set() and after >= log.synced_seq):
                    synced = log.synced_seq
                    if after >= synced:
                        time.sleep(0.0005)
                        continue
                    if r.random() < 0.02:
                        after = r.randrange(0, after + 1)  # a rewind
                    budget = r.choice([10, 900, 4 << 10, 64 << 10, 1 << 20])
                    limit = min(synced, after + r.choice([5, 100, 10_000]))
                    got = shipper._read_range(after + 1, limit, budget, oversize)
                    if got.through_seq <= after:
                        assert got.records == 0 and got.blocked_by > budget and not oversize
                        oversize = True
                        continue
                    assert got.through_seq <= limit
                    assert got.frames == alone_frames(log, k, n_shards, after + 1, got.through_seq)
                    assert got.nbytes <= budget or (oversize and got.records == 1)
                    oversize, after = False, got.through_seq
            except BaseException as e:  # noqa: BLE001  reported by the test thread
                errors.append(f"shard {k}: {e!r}")

        threads = [threading.Thread(target=ship, args=(k,)) for k in range(n_shards)]
        threads.append(threading.Thread(target=append))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        fanout.close()
    assert not errors, errors
    assert fanout.stats()["batches_total"] > 0


def test_shards_in_step_take_every_batch_from_one_read_of_the_log(tmp_path: Path) -> None:
    """Three shards shipping side by side, as a proxy's do: each region of
    the LOG is read once for all of them, and every batch comes from it."""
    rng = random.Random(11)
    clock = HLC(7)
    with Log.open(tmp_path / "log", segment_bytes=256 << 10) as log:
        append_routed(log, clock, 2000, rng=rng)
        segments = len(list((tmp_path / "log").glob("*.seg")))
        fanout = LogFanout(log, 3)
        shippers = [reader(log, k, 3, fanout) for k in range(3)]
        after = [0, 0, 0]
        served = 0
        while min(after) < log.last_seq:
            for k in range(3):
                got = shippers[k]._read_range(after[k] + 1, min(log.last_seq, after[k] + 300),
                                              64 << 10, False)
                assert got.frames == alone_frames(log, k, 3, after[k] + 1, got.through_seq)
                served += got.records > 0
                after[k] = got.through_seq
        stats = fanout.stats()
        assert stats["batches_total"] == served
        # Each read ends at a segment's end or at the scan limit (300 records):
        # the LOG is read once, where three shards alone would read it thrice.
        assert stats["reads_total"] <= segments + log.last_seq // 300 + 1, (stats, segments)
        assert stats["evictions_total"] == 0
        fanout.close()


def test_a_frame_without_routing_fields_is_passed_by_each_shard_alone(tmp_path: Path) -> None:
    rng = random.Random(3)
    clock = HLC(7)
    with Log.open(tmp_path / "log") as log:
        append_routed(log, clock, 50, rng=rng)
        log.append(make_record(rng, clock).SerializeToString())  # routed only by a parse
        unrouted_seq = log.last_seq
        append_routed(log, clock, 50, rng=rng)
        fanout = LogFanout(log, 2)
        shippers = [reader(log, k, 2, fanout) for k in range(2)]
        for k, shipper in enumerate(shippers):
            read_in_steps(log, shipper, k, 2)
        assert all(fanout.is_served(k) for k in range(2)), "served again past the frame"
        assert 0 < unrouted_seq < log.last_seq and fanout.stats()["reads_total"] >= 2
        fanout.close()


def test_a_version_1_segment_is_read_by_each_shard_alone(tmp_path: Path) -> None:
    """A LOG from before routing fields (tests/vectors/v1-legacy) that goes on
    in version 2 segments: the old part is read alone, the new one shared."""
    shutil.copytree(VECTORS / "v1-legacy" / "log", tmp_path / "log")
    rng = random.Random(4)
    clock = HLC(7)
    with Log.open(tmp_path / "log") as log:
        legacy_end = log.last_seq
        append_routed(log, clock, 100, rng=rng)
        fanout = LogFanout(log, 2)
        for k in range(2):
            read_in_steps(log, reader(log, k, 2, fanout), k, 2)
        assert legacy_end > 0 and fanout.stats()["batches_total"] > 0
        fanout.close()


# -- shipping over gRPC through the shared reader -------------------------------------------


def fanout_shippers(log: Log, proxy: Proxy, shards: list[FakeShard],
                    fanout: LogFanout) -> list[Shipper]:
    return [Shipper(s.address, shard_id=k, n_shards=len(shards), log=log, clock=proxy.clock,
                    stable_stamp=proxy.stable_stamp, options=FAST, fanout=fanout)
            for k, s in enumerate(shards)]


@run_async
async def test_every_record_reaches_exactly_its_shard_through_the_shared_reader(
        tmp_path: Path) -> None:
    clock = HLC(7)
    proxy = Proxy(NO_NAS, None, clock)
    rng = random.Random(5)
    with Log.open(tmp_path / "log", segment_bytes=64 << 10) as log:
        append_routed(log, clock, 400, rng=rng)
        fanout = LogFanout(log, 3)
        shards = [FakeShard(k) for k in range(3)]
        for shard in shards:
            await shard.start()
        shippers = fanout_shippers(log, proxy, shards, fanout)
        try:
            for shipper in shippers:
                shipper.start()
            append_routed(log, clock, 400, rng=rng)  # more while they ship
            for shard in shards:
                await eventually(caught_up(shard, log, clock))
            payloads = log_payloads(log)
            held = [shard.held(log, clock) for shard in shards]
            for seq, payload in payloads.items():
                expect = set(shards_of(parse_record(payload), 3))
                assert {k for k in range(3) if seq in held[k]} == expect, seq
                assert all(held[k][seq] == payload for k in expect)
            assert fanout.stats()["batches_total"] > 0
        finally:
            await stop_all(shippers, shards)
            fanout.close()


@run_async
async def test_a_shard_down_has_its_queue_emptied_at_the_cap_and_catches_up_alone(tmp_path: Path) -> None:
    """Shard 1 is down while 2 MiB of records pass: the shared reader keeps
    its frames only up to the cap, then empties its queue, and shard 0 ships
    on. Shard 1 comes up, catches up alone and is served by the reader again."""
    clock = HLC(7)
    proxy = Proxy(NO_NAS, None, clock)
    rng = random.Random(6)
    with Log.open(tmp_path / "log") as log:
        fanout = LogFanout(log, 2, cap_bytes=256 << 10)
        shards = [FakeShard(0), FakeShard(1)]
        await shards[0].start()
        shards[1].port = free_port()
        shippers = fanout_shippers(log, proxy, shards, fanout)
        try:
            for shipper in shippers:
                shipper.start()
            for _ in range(8):
                append_routed(log, clock, 64, rng=rng, sizes=(4096,))
                await eventually(caught_up(shards[0], log, clock))
            assert fanout.stats()["kept_bytes"] <= 256 << 10
            assert fanout.stats()["evictions_total"] >= 1  # shard 1's queue, untaken
            await shards[1].start(shards[1].port)
            await eventually(caught_up(shards[1], log, clock))
            append_routed(log, clock, 64, rng=rng, sizes=(4096,))
            for shard in shards:
                await eventually(caught_up(shard, log, clock))
            payloads = log_payloads(log)
            for k, shard in enumerate(shards):
                mine = {seq: p for seq, p in payloads.items()
                        if k in shards_of(parse_record(p), 2)}
                assert shard.held(log, clock) == mine
            await eventually(lambda: fanout.is_served(0) and fanout.is_served(1))
        finally:
            await stop_all(shippers, shards)
            fanout.close()


@pytest.mark.parametrize("native", [False, True], ids=["python-log", "native-log"])
def test_a_log_trimmed_and_written_over_under_the_reader_gives_no_other_frames(
        tmp_path: Path, native: bool) -> None:
    """A size-bounded retention trims past both shards and the reader's
    position, and new segments are written over the trimmed ones (the
    native LOG keeps them as spares): after the gap the stream sends, each
    shard's batches are still what its own walk of the LOG finds."""
    rng = random.Random(9)
    clock = HLC(7)
    opened = (NativeLog.open(tmp_path / "log", segment_bytes=64 << 10, spare_segments=2)
              if native else Log.open(tmp_path / "log", segment_bytes=64 << 10))
    with opened as log:
        append_routed(log, clock, 300, rng=rng)
        fanout = LogFanout(log, 2)
        shippers = [reader(log, k, 2, fanout) for k in range(2)]
        after = [0, 0]

        def read(k: int, records: int) -> None:
            got = shippers[k]._read_range(after[k] + 1, min(log.synced_seq, after[k] + records),
                                          1 << 20, False)
            assert got.frames == alone_frames(log, k, 2, after[k] + 1, got.through_seq)
            after[k] = got.through_seq

        read(0, 150)
        read(1, 20)
        log.trim(200)
        trimmed_to = log.first_seq
        assert trimmed_to > 151
        append_routed(log, clock, 300, rng=rng)
        for k in range(2):
            after[k] = trimmed_to - 1  # the gap batch the stream sends over what was trimmed
            while after[k] < log.synced_seq:
                read(k, 50)
        if native:
            assert log.recycled_segments > 0, "new segments were written over trimmed ones"
        fanout.close()


def test_a_closed_reader_sends_every_shard_to_read_alone(tmp_path: Path) -> None:
    with Log.open(tmp_path / "log") as log:
        append_routed(log, HLC(7), 30, rng=random.Random(8))
        fanout = LogFanout(log, 2)
        fanout.close()
        for k in range(2):
            got = reader(log, k, 2, fanout)._read_range(1, log.last_seq, 1 << 20, False)
            assert got.through_seq == log.last_seq
            assert got.frames == alone_frames(log, k, 2, 1, log.last_seq)


def test_the_native_reader_refuses_nothing_it_cannot_serve() -> None:
    """Asked for a shard it does not have, or seq 0, the reader sends the
    shipper to read alone instead of failing."""
    fanout = _dataplane.ShardFanout(2, 1 << 20)
    assert fanout.take(5, 1, 10, 1 << 20, 100, False, True) == ("alone", 2**64 - 1)
    assert fanout.take(0, 0, 10, 1 << 20, 100, False, True) == ("alone", 2**64 - 1)
    assert fanout.take(0, 1, 10, 1 << 20, 100, False, True) == ("fill", 1)
    assert fanout.take(0, 1, 10, 1 << 20, 100, False, False)[0] == "batch"
