"""Unit tests of nfsproxy.ship.shipper against an in-memory fake shard.

The fake shard is a real grpc.aio `Journal` server on loopback (a fake
transport peer, as STYLE.md allows in unit tests) that keeps the chaining
rule with `recoveryd.frontier.apply`. Nothing here is mocked: the shipper
reads a real LOG, talks real gRPC, and updates a real HLC. No assertion has
a time limit: waits poll until their condition holds (pytest-timeout guards
against hangs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import random
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest

from nfsproxy.native.log import NativeCommitter as GroupCommitter
from nfsproxy.native.log import NativeLog
from logstore.hlc import HLC, ClockStamp, UntrustworthyStampError
from logstore.log import Log
from logstore.pb import journal_pb2 as pb
from logstore.pb import journal_pb2_grpc as pb_grpc
from logstore.record import Op, Record, parse_record, record_parts
from logstore.stamp import Stamp
from nfsproxy.daemon.proxyd import ProxyOptions, start_proxy
from nfsproxy.relay.journal import frame_fields
from nfsproxy.relay.session import BackendAddress, Proxy
from nfsproxy.ship.retention import RetentionLoop, RetentionPolicy
from logstore.segment import NO_STAMP
from logstore.sharding import shards_of
from logstore.shipped import iter_frames
from nfsproxy.ship.shipper import Backoff, Shipper, ShipperOptions, StableClaims
from recoveryd.frontier import BatchRefused, StreamKey, StreamState, apply

pytestmark = pytest.mark.timeout(120)

FAST = ShipperOptions(sample_interval_s=0.01, heartbeat_interval_s=0.02, poll_interval_s=0.005,
                      backoff_initial_s=0.01, backoff_max_s=0.1)
NO_NAS = BackendAddress("127.0.0.1", 1, 1, "/export")  # never contacted: no client connects


# -- the fake shard --------------------------------------------------------------


def _heartbeat(state: StreamState, stable: Stamp | None, newest: Stamp | None) -> StreamState:
    """An empty batch at the durable position with a stable stamp.

    `frontier.apply` takes `(P, P]` at the durable position P for a harmless
    duplicate and drops its stable stamp, so heartbeats could never move an
    idle stream's frontier; the fake applies them here instead.
    """
    frontier = state.frontier
    if stable is not None and stable > frontier:
        frontier = stable
    seen = max(state.newest, newest) if newest is not None else state.newest
    return dataclasses.replace(state, frontier=frontier, newest=seen)


def shipped(batch: pb.IngestBatch) -> list[tuple[int, bytes, bytes]]:
    """(seq, header stamp, record bytes) of each frame a batch carries."""
    frames = batch.frames
    return [(seq, stamp, frames[start:end])
            for seq, stamp, start, end in iter_frames(frames, batch.after_seq)]


class FakeShard(pb_grpc.JournalServicer):
    """An in-memory recovery shard: the Ingest contract of proto/journal.proto.
    ``reads_frames`` False plays a shard from before IngestBatch.frames."""

    def __init__(self, shard_id: int = 0, reads_frames: bool = True):
        self.shard_id = shard_id
        self.reads_frames = reads_frames
        self.clock = HLC(1000 + shard_id)
        self.streams: dict[StreamKey, StreamState] = {}
        self.records: dict[StreamKey, dict[int, bytes]] = {}
        self.batches: list[pb.IngestBatch] = []
        self.ack_delay_s = 0.0
        self.refuse = ""  # set: refuse every batch that covers a range, with this reason
        self.acks_open = asyncio.Event()
        self.acks_open.set()
        self.unacked_bytes = 0
        self.max_unacked_bytes = 0
        self.server: grpc.aio.Server | None = None
        self.port = 0

    # -- serving

    async def start(self, port: int = 0) -> str:
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
        pb_grpc.add_JournalServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()
        return self.address

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=None)
            self.server = None

    async def Ingest(self, request_iterator, context):
        queue: asyncio.Queue[tuple[pb.IngestBatch, int] | None] = asyncio.Queue()

        async def pump() -> None:  # read eagerly, so "unacked" counts what the shipper sent
            async for batch in request_iterator:
                nbytes = sum(len(record) for _, _, record in shipped(batch))
                self.unacked_bytes += nbytes
                self.max_unacked_bytes = max(self.max_unacked_bytes, self.unacked_bytes)
                await queue.put((batch, nbytes))
            await queue.put(None)

        reader = asyncio.create_task(pump())
        try:
            while (item := await queue.get()) is not None:
                batch, nbytes = item
                await self.acks_open.wait()
                if self.ack_delay_s:
                    await asyncio.sleep(self.ack_delay_s)
                ack = self.ingest(batch)
                self.unacked_bytes -= nbytes
                await context.write(ack)
        finally:
            reader.cancel()

    def ingest(self, batch: pb.IngestBatch) -> pb.IngestAck:
        self.batches.append(batch)
        if batch.sent_stamp:
            try:
                self.clock.update(ClockStamp.from_bytes(batch.sent_stamp))
            except UntrustworthyStampError:
                pass
        key = StreamKey(batch.stream.node_id, batch.stream.log_id)
        state = self.streams.get(key, StreamState())
        stable = Stamp.from_bytes(batch.stable) if batch.stable else None
        newest = Stamp.from_bytes(batch.newest) if batch.newest else None
        error = ""
        try:
            if self.refuse and batch.through_seq > batch.after_seq:
                raise BatchRefused(state, self.refuse)
            if batch.after_seq == batch.through_seq == state.durable_seq and not batch.gap:
                new = _heartbeat(state, stable, newest)
            else:
                new = apply(state, batch.after_seq, batch.through_seq, stable, gap=batch.gap,
                            newest=newest, sent=Stamp.from_bytes(batch.sent_stamp))
            if new.durable_seq > state.durable_seq:
                held = self.records.setdefault(key, {})
                for seq, _, record in shipped(batch):
                    assert batch.after_seq < seq <= batch.through_seq
                    held[seq] = record
            self.streams[key] = new
        except BatchRefused as e:
            new, error = e.state, str(e)
        return pb.IngestAck(stream=batch.stream, durable_seq=new.durable_seq,
                            frontier=new.frontier.to_bytes(), shard_stamp=self.clock.now().to_bytes(),
                            error=error, shard_id=self.shard_id, reads_frames=self.reads_frames)

    # -- inspection

    def lose_everything(self) -> None:
        """The shard's disk is gone: it remembers nothing."""
        self.streams.clear()
        self.records.clear()

    def state_of(self, log: Log, clock: HLC) -> StreamState:
        return self.streams.get(StreamKey(clock.node_id, log.log_id), StreamState())

    def held(self, log: Log, clock: HLC) -> dict[int, bytes]:
        return self.records.get(StreamKey(clock.node_id, log.log_id), {})


# -- helpers -----------------------------------------------------------------------


def run_async(test):
    """Run an `async def` test on a fresh event loop (no pytest plugin needed)."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))
    return wrapper


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until `condition()` holds (no deadline: pytest-timeout catches hangs)."""
    while not condition():
        await asyncio.sleep(0.005)


OPS = [Op.WRITE, Op.SETATTR, Op.COMMIT, Op.CREATE, Op.MKDIR, Op.SYMLINK, Op.MKNOD, Op.REMOVE,
       Op.RMDIR, Op.RENAME, Op.LINK, Op.BIND, Op.BASELINE]


def make_record(rng: random.Random, clock: HLC, *, data_bytes: int = 0,
                op: int | None = None) -> Record:
    op = rng.choice(OPS) if op is None else op
    handle = lambda: rng.randbytes(rng.choice((8, 28, 32)))  # noqa: E731
    record = Record(stamp=clock.now().to_bytes(), op=op, ok=True, fh=handle(), dir_fh=handle(),
                    name=b"n%d" % rng.randrange(1000))
    if op == Op.LINK:
        record.to_dir_fh, record.to_name = handle(), b"linked"
    if op in (Op.WRITE, Op.BASELINE):
        record.data = rng.randbytes(data_bytes) if data_bytes else b"x" * rng.randrange(64)
    return record


def append_records(log: Log, clock: HLC, count: int, *, seed: int = 0, data_bytes: int = 0,
                   ops: list[int] | None = None) -> list[int]:
    rng = random.Random(seed)
    seqs = [log.append(make_record(rng, clock, data_bytes=data_bytes,
                                   op=rng.choice(ops) if ops else None).SerializeToString())
            for _ in range(count)]
    log.sync()
    return seqs


def log_payloads(log: Log) -> dict[int, bytes]:
    with log.read(log.first_seq) as cursor:
        return {seq: bytes(payload) for seq, payload in cursor}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def log(tmp_path: Path):
    with Log.open(tmp_path / "log", segment_bytes=16 << 10) as opened:
        yield opened


@pytest.fixture
def clock() -> HLC:
    return HLC(7)


@pytest.fixture
def proxy(clock: HLC) -> Proxy:
    """A real relay, never started: the source of stable stamps."""
    return Proxy(NO_NAS, None, clock)


def shipper_for(shard_address: str, log: Log, proxy: Proxy, *, shard_id: int = 0,
                n_shards: int = 1, options: ShipperOptions = FAST) -> Shipper:
    return Shipper(shard_address, shard_id=shard_id, n_shards=n_shards, log=log, clock=proxy.clock,
                   stable_stamp=proxy.stable_stamp, options=options)


async def stop_all(shippers: list[Shipper], shards: list[FakeShard]) -> None:
    """Stop the shippers, then the shards they ship to."""
    for shipper in shippers:
        await shipper.stop()
    for shard in shards:
        await shard.stop()


def caught_up(shard: FakeShard, log: Log, clock: HLC) -> Callable[[], bool]:
    return lambda: shard.state_of(log, clock).durable_seq == log.last_seq


# -- StableClaims and Backoff (sans-IO) ------------------------------------------------


def S(wall: int) -> Stamp:
    return Stamp(wall, 0, 7)


def test_claims_need_the_batch_to_reach_the_sampled_log_end():
    claims = StableClaims()
    assert claims.claim(100) is None
    claims.observe(10, S(100))
    claims.observe(20, S(200))
    assert claims.claim(9) is None
    assert claims.claim(10) == S(100)
    assert claims.claim(19) == S(100)
    assert claims.claim(25) == S(200)
    # A rewind asks for a lower range again: claims are facts about the LOG,
    # so a high enough range still gets the best one; a lower range none.
    assert claims.claim(15) is None
    assert claims.claim(20) == S(200)


def test_claims_never_go_back_and_idle_samples_coalesce():
    claims = StableClaims()
    claims.observe(5, S(300))
    claims.observe(5, S(400))
    claims.observe(6, S(350))  # a lower H at a later E: the earlier claim still holds there
    assert len(claims) == 2
    assert claims.claim(5) == S(400)
    assert claims.claim(6) == S(400)
    with pytest.raises(ValueError):
        claims.observe(4, S(500))


def test_claims_thin_out_but_stay_correct():
    claims = StableClaims(max_samples=8)
    for e in range(1, 101):
        claims.observe(e, S(e * 10))
    assert len(claims) <= 9
    for through in range(0, 101):
        got = claims.claim(through)
        # Never claims more than the truth for that range (H = 10 * E for E <= through).
        assert got is None or got <= S(through * 10)
    assert claims.claim(100) == S(1000)


def test_backoff_grows_to_its_cap_with_jitter():
    backoff = Backoff(0.1, 5.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(12)]
    assert delays[0] == 0.1
    assert all(0.1 <= d <= 5.0 for d in delays)
    assert max(delays[6:]) > 1.0
    backoff.reset()
    assert backoff.next_delay() == 0.1


def test_options_are_checked():
    with pytest.raises(ValueError):
        ShipperOptions(max_batch_records=0)


# -- shipping ------------------------------------------------------------------------


@run_async
async def test_every_record_reaches_exactly_its_shard(log: Log, clock: HLC, proxy: Proxy):
    shards = [FakeShard(0), FakeShard(1)]
    for shard in shards:
        await shard.start()
    seqs = append_records(log, clock, 600)
    marker = log.append(Record(stamp=clock.now().to_bytes(), op=Op.BASELINE_BEGIN,
                               ok=True).SerializeToString())
    log.sync()
    shippers = [shipper_for(s.address, log, proxy, shard_id=k, n_shards=2)
                for k, s in enumerate(shards)]
    try:
        for shipper in shippers:
            shipper.start()
        for shard in shards:
            await eventually(caught_up(shard, log, clock))
        payloads = log_payloads(log)
        held = [shard.held(log, clock) for shard in shards]
        for seq in seqs:
            expect = list(shards_of(parse_record(payloads[seq]), 2))
            assert len(expect) == 1
            assert [k for k in (0, 1) if seq in held[k]] == expect
            assert held[expect[0]][seq] == payloads[seq]
        assert marker in held[0] and marker in held[1]  # markers go to every shard
        assert 150 < len(held[0]) < 450  # both shards got a real share
        # Batches chain and cover the whole LOG on each shard.
        for shard in shards:
            ranges = [(b.after_seq, b.through_seq) for b in shard.batches
                      if b.through_seq > b.after_seq]
            assert ranges[0][0] == 0
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        # Once idle, heartbeats bring every frontier past every record.
        newest = max(Stamp.from_bytes(parse_record(p).stamp) for p in payloads.values())
        for shard, shipper in zip(shards, shippers):
            await eventually(lambda: shard.state_of(log, clock).frontier > newest)
            await eventually(lambda: shipper.frontier > newest)
            state = shipper.state()
            assert state.connected and state.acked_seq == log.last_seq
            assert state.lag_records == 0 and state.lag_seconds is not None
            assert state.records_sent_total == len(shard.held(log, clock))
            assert state.gaps_total == 0 and state.rewinds_total == 0
        assert shards[0].state_of(log, clock).newest == newest
    finally:
        await stop_all(shippers, shards)


@run_async
async def test_a_shard_that_loses_its_data_gets_everything_again(log: Log, clock: HLC, proxy: Proxy):
    shard = FakeShard()
    await shard.start()
    append_records(log, clock, 300)
    shipper = shipper_for(shard.address, log, proxy)
    shipper.start()
    try:
        await eventually(caught_up(shard, log, clock))
        assert shipper.state().rewinds_total == 0
        shard.lose_everything()  # the stream stays up; the next heartbeat is refused
        await eventually(caught_up(shard, log, clock))
        assert shard.held(log, clock) == log_payloads(log)
        assert shipper.state().rewinds_total >= 1
        # More records after the rewind ship as usual.
        append_records(log, clock, 50, seed=1)
        await eventually(caught_up(shard, log, clock))
        assert shard.held(log, clock) == log_payloads(log)
    finally:
        await shipper.stop()
        await shard.stop()


@run_async
async def test_a_shard_that_restarts_empty_is_rebuilt_after_the_hello(log: Log, clock: HLC,
                                                                      proxy: Proxy):
    shard = FakeShard()
    address = await shard.start()
    append_records(log, clock, 200)
    shipper = shipper_for(address, log, proxy)
    shipper.start()
    try:
        await eventually(caught_up(shard, log, clock))
        await shard.stop()
        await eventually(lambda: not shipper.connected)
        append_records(log, clock, 100, seed=2)  # the LOG grows while the shard is down
        replacement = FakeShard()
        await replacement.start(shard.port)
        shard = replacement
        await eventually(caught_up(shard, log, clock))
        assert shard.held(log, clock) == log_payloads(log)
        state = shipper.state()
        assert state.rewinds_total == 1 and state.reconnects_total >= 1
        hellos = [b for b in shard.batches if b.after_seq == b.through_seq == 0 and not b.stable]
        assert hellos and shard.batches[0] is hellos[0]
    finally:
        await shipper.stop()
        await shard.stop()


@run_async
async def test_gap_when_the_log_was_trimmed_past_the_shard(log: Log, clock: HLC, proxy: Proxy):
    append_records(log, clock, 400, data_bytes=200)
    log.trim(150)
    first = log.first_seq
    assert 1 < first <= 150
    shard = FakeShard()
    await shard.start()
    shipper = shipper_for(shard.address, log, proxy)
    shipper.start()
    try:
        await eventually(caught_up(shard, log, clock))
        stream = shard.state_of(log, clock)
        # The gap starts where the stream's frontier was (nothing held yet: ZERO) and
        # reaches the gap batch's sent stamp; the frontier goes on past it.
        (gap,) = stream.gaps
        assert str(gap) == f"0..{first - 1}: the proxy LOG no longer holds these records"
        assert gap.from_stamp == Stamp.ZERO and gap.cause == "trimmed"
        gap_batch = next(b for b in shard.batches if b.gap)
        assert gap.through == Stamp.from_bytes(gap_batch.sent_stamp)
        assert stream.frontier > gap.from_stamp  # not pinned: it moved on past the gap
        gaps = [b for b in shard.batches if b.gap]
        assert [(b.after_seq, b.through_seq, len(shipped(b)), b.stable) for b in gaps] == \
            [(0, first - 1, 0, b"")]
        assert shard.held(log, clock) == log_payloads(log)  # everything from first_seq on
        state = shipper.state()
        assert state.gaps_total == 1
        assert state.gaps[0].startswith(f"0..{first - 1}:")
    finally:
        await shipper.stop()
        await shard.stop()


@run_async
async def test_heartbeats_move_the_frontier_only_past_calls_no_longer_in_flight(
        log: Log, clock: HLC, proxy: Proxy):
    shard = FakeShard()
    await shard.start()
    shipper = shipper_for(shard.address, log, proxy)
    shipper.start()
    try:
        before = clock.now()
        await eventually(lambda: shard.state_of(log, clock).frontier > before)
        assert shard.state_of(log, clock).durable_seq == 0  # an empty LOG: heartbeats only

        # A call arrives and is stamped; its reply (and record) is slow.
        slow = Stamp.from_bytes(proxy.stamp_call(1))
        # Later calls complete and are journaled meanwhile.
        append_records(log, clock, 20)
        await eventually(caught_up(shard, log, clock))
        seen = len(shard.batches)
        await eventually(lambda: len(shard.batches) > seen + 10)  # many heartbeats later
        assert shard.state_of(log, clock).frontier < slow

        # The slow call's record lands in the LOG, then leaves flight.
        record = Record(stamp=slow.to_bytes(), op=Op.WRITE, ok=True, fh=b"slow-file")
        seq = log.append(record.SerializeToString())
        log.sync()
        proxy.release(1)
        await eventually(lambda: shard.state_of(log, clock).frontier > slow)
        assert seq in shard.held(log, clock)
        assert shipper.state().heartbeats_sent_total > 10
    finally:
        await shipper.stop()
        await shard.stop()


@run_async
async def test_a_shard_that_none_of_the_records_belong_to_gets_heartbeats_only(
        log: Log, clock: HLC, proxy: Proxy):
    """Every wave of records is one file's, so it belongs to one of the two
    shards; the other gets a batch per heartbeat, not one per wave, and is
    still brought to the LOG's end."""
    shards = [FakeShard(0), FakeShard(1)]
    for shard in shards:
        await shard.start()
    heartbeat_s = 1.0
    options = dataclasses.replace(FAST, heartbeat_interval_s=heartbeat_s, linger_s=0.0)
    shippers = [shipper_for(s.address, log, proxy, shard_id=k, n_shards=2, options=options)
                for k, s in enumerate(shards)]
    fh = b"one-file"
    probe = Record(stamp=clock.now().to_bytes(), op=Op.WRITE, ok=True, fh=fh, data=b"x")
    (busy,) = shards_of(probe, 2)
    busy_shard, idle_shard = shards[busy], shards[1 - busy]
    try:
        for shipper in shippers:
            shipper.start()
        started = time.monotonic()
        waves = 40
        for _ in range(waves):
            for _ in range(5):
                log.append(Record(stamp=clock.now().to_bytes(), op=Op.WRITE, ok=True, fh=fh,
                                  data=b"x").SerializeToString())
            log.sync()
            await eventually(caught_up(busy_shard, log, clock))
        elapsed = time.monotonic() - started
        ranges = [b for b in idle_shard.batches if b.through_seq > b.after_seq]
        # At most one per heartbeat interval, plus the first and one in progress.
        assert len(ranges) <= 2 + elapsed / heartbeat_s, (len(ranges), elapsed)
        assert len([b for b in busy_shard.batches if b.through_seq > b.after_seq]) >= waves
        await eventually(caught_up(idle_shard, log, clock))
        assert idle_shard.held(log, clock) == {}
        newest = Stamp.from_bytes(parse_record(log_payloads(log)[log.last_seq]).stamp)
        await eventually(lambda: idle_shard.state_of(log, clock).frontier > newest)
    finally:
        await stop_all(shippers, shards)


@run_async
async def test_a_steady_trickle_of_records_ships_a_batch_per_linger_not_per_log_sync(
        log: Log, clock: HLC, proxy: Proxy):
    """With the default options, records synced a few at a time wait up to
    50 ms (README, "How it works") to travel together, as each batch costs
    the shard a synced write: at most one batch per 50 ms, plus the first."""
    shard = FakeShard()
    await shard.start()
    shipper = shipper_for(shard.address, log, proxy, options=ShipperOptions())
    try:
        shipper.start()
        started = time.monotonic()
        syncs = 60
        for _ in range(syncs):
            append_records(log, clock, 3)
            await asyncio.sleep(0.002)
        await eventually(caught_up(shard, log, clock))
        elapsed = time.monotonic() - started
        with_records = [b for b in shard.batches if b.frames]
        assert len(with_records) <= 2 + elapsed / 0.05, (len(with_records), elapsed)
        assert len(shard.held(log, clock)) == 3 * syncs
    finally:
        await shipper.stop()
        await shard.stop()


@run_async
async def test_repeated_refusals_back_off_then_recover(log: Log, clock: HLC, proxy: Proxy, caplog):
    caplog.set_level(logging.DEBUG, logger="nfsproxy.ship.shipper")
    shard = FakeShard()
    shard.refuse = "sent_stamp too far ahead"  # as a shard refuses a proxy's bad clock
    await shard.start()
    append_records(log, clock, 50)
    shipper = shipper_for(shard.address, log, proxy)
    shipper.start()
    try:
        await eventually(lambda: shipper.state().rewinds_total >= 5)
        delays = [float(m.group(1)) for r in caplog.records
                  if (m := re.search(r"from seq 1 in ([0-9.]+)s", r.getMessage()))]
        # Every refusal after the first waits (Backoff's growth is tested above).
        assert len(delays) >= 4 and min(delays) >= FAST.backoff_initial_s
        assert shard.state_of(log, clock).durable_seq == 0
        shard.refuse = ""
        await eventually(caught_up(shard, log, clock))
        assert shard.held(log, clock) == log_payloads(log)
    finally:
        await shipper.stop()
        await shard.stop()


@run_async
async def test_only_synced_records_are_shipped(log: Log, clock: HLC, proxy: Proxy):
    shard = FakeShard()
    await shard.start()
    append_records(log, clock, 10)
    shipper = shipper_for(shard.address, log, proxy)
    shipper.start()
    try:
        await eventually(caught_up(shard, log, clock))
        rng = random.Random(3)
        for _ in range(5):
            log.append(make_record(rng, clock).SerializeToString())  # written, not fsynced
        seen = len(shard.batches)
        await eventually(lambda: len(shard.batches) > seen + 10)
        assert shard.state_of(log, clock).durable_seq == 10 < log.last_seq
        assert max(b.through_seq for b in shard.batches) == 10
        log.sync()
        await eventually(caught_up(shard, log, clock))
    finally:
        await shipper.stop()
        await shard.stop()


@run_async
async def test_a_shard_down_at_start_catches_up_when_it_comes_up(log: Log, clock: HLC,
                                                                 proxy: Proxy):
    port = free_port()
    shipper = shipper_for(f"127.0.0.1:{port}", log, proxy)
    shipper.start()
    shard = FakeShard()
    try:
        append_records(log, clock, 100)
        await eventually(lambda: shipper.state().reconnects_total >= 3)
        state = shipper.state()
        assert not state.connected and state.acked_seq == 0 and state.lag_records == 100
        assert state.last_error
        append_records(log, clock, 100, seed=1)  # the LOG keeps growing meanwhile
        await shard.start(port)
        await eventually(caught_up(shard, log, clock))
        assert shard.held(log, clock) == log_payloads(log)
        assert shipper.connected
    finally:
        await shipper.stop()
        await shard.stop()


@run_async
async def test_unacked_bytes_stay_within_the_in_flight_bound(log: Log, clock: HLC, proxy: Proxy):
    options = dataclasses.replace(FAST, max_inflight_bytes=64 << 10, max_batch_bytes=16 << 10)
    shard = FakeShard()
    await shard.start()
    shipper = shipper_for(shard.address, log, proxy, options=options)
    shipper.start()
    try:
        await eventually(lambda: shipper.connected)
        shard.acks_open.clear()  # from now on the shard takes batches but acks none
        append_records(log, clock, 300, data_bytes=4096, ops=[Op.WRITE])
        record_bytes = max(len(p) for p in log_payloads(log).values())
        # The shipper fills its window, then waits.
        await eventually(lambda: shard.unacked_bytes > options.max_inflight_bytes - record_bytes)
        assert shard.max_unacked_bytes <= options.max_inflight_bytes
        assert shipper.state().inflight_bytes <= options.max_inflight_bytes
        # Acks come back slowly; the window slides but never grows past the bound.
        shard.ack_delay_s = 0.002
        shard.acks_open.set()
        await eventually(caught_up(shard, log, clock))
        assert shard.max_unacked_bytes <= options.max_inflight_bytes
        assert shard.held(log, clock) == log_payloads(log)
        sizes = [sum(len(record) for _, _, record in shipped(b)) for b in shard.batches]
        assert max(sizes) <= options.max_batch_bytes
    finally:
        await shipper.stop()
        await shard.stop()


@run_async
async def test_a_record_larger_than_a_batch_goes_alone(log: Log, clock: HLC, proxy: Proxy):
    options = dataclasses.replace(FAST, max_inflight_bytes=8 << 10, max_batch_bytes=4 << 10)
    append_records(log, clock, 3, data_bytes=100, ops=[Op.WRITE])
    append_records(log, clock, 1, data_bytes=12 << 10, ops=[Op.WRITE], seed=1)
    append_records(log, clock, 3, data_bytes=100, ops=[Op.WRITE], seed=2)
    shard = FakeShard()
    await shard.start()
    shipper = shipper_for(shard.address, log, proxy, options=options)
    shipper.start()
    try:
        await eventually(caught_up(shard, log, clock))
        assert shard.held(log, clock) == log_payloads(log)
        big = [b for b in shard.batches if any(len(r) > 4 << 10 for _, _, r in shipped(b))]
        assert len(big) == 1 and len(shipped(big[0])) == 1
    finally:
        await shipper.stop()
        await shard.stop()


@run_async
async def test_acks_update_the_proxy_clock(log: Log, clock: HLC, proxy: Proxy):
    shard = FakeShard()
    ahead_ns = 100_000_000  # within max_offset: a shard clock 100 ms ahead is trusted
    shard.clock = HLC(1000, physical_clock=lambda: time.time_ns() + ahead_ns)
    await shard.start()
    shipper = shipper_for(shard.address, log, proxy)
    shipper.start()
    try:
        await eventually(lambda: len(shard.batches) > 3)
        mark = shard.clock.now()
        await eventually(lambda: len(shard.batches) > 6)
        assert clock.now() > mark
        assert shipper.state().hlc_rejections_total == 0
    finally:
        await shipper.stop()
        await shard.stop()


@run_async
async def test_an_untrustworthy_shard_clock_is_refused_and_counted(log: Log, clock: HLC,
                                                                   proxy: Proxy):
    shard = FakeShard()
    shard.clock = HLC(1000, physical_clock=lambda: time.time_ns() + 3_600_000_000_000)
    await shard.start()
    shipper = shipper_for(shard.address, log, proxy)
    shipper.start()
    try:
        append_records(log, clock, 5)
        await eventually(caught_up(shard, log, clock))
        await eventually(lambda: shipper.state().hlc_rejections_total >= 2)
        assert clock.now().wall_ns < shard.clock.now().wall_ns - 1_000_000_000_000
    finally:
        await shipper.stop()
        await shard.stop()


# -- retention with real shippers ----------------------------------------------------------


@run_async
async def test_retention_trims_only_what_every_shard_acked(tmp_path: Path, clock: HLC,
                                                           proxy: Proxy):
    log = NativeLog.open(tmp_path / "log", segment_bytes=8 << 10)
    committer = GroupCommitter(log)
    up = FakeShard(0)
    await up.start()
    down_port = free_port()
    shippers = [shipper_for(up.address, log, proxy, shard_id=0, n_shards=2),
                shipper_for(f"127.0.0.1:{down_port}", log, proxy, shard_id=1, n_shards=2)]
    acked = lambda: [s.acked_seq for s in shippers]  # noqa: E731
    later = lambda: time.time() + 1.0  # noqa: E731  every segment is past a 0 s window
    no_window = RetentionLoop(committer, acked, RetentionPolicy(0.0, 0), wall_clock=later)
    late = FakeShard(1)
    try:
        append_records(log, clock, 400, data_bytes=100)
        assert len(log.segments) > 5
        for shipper in shippers:
            shipper.start()
        await eventually(caught_up(up, log, clock))
        # Shard 1 is down and has acked nothing: nothing may go.
        assert await no_window.run_once() == 0
        assert log.first_seq == 1
        await late.start(down_port)
        await eventually(caught_up(late, log, clock))
        await eventually(lambda: min(acked()) == log.last_seq)  # the acks reached the shippers
        # Within an hour's window nothing goes either.
        hour = RetentionLoop(committer, acked, RetentionPolicy(3600.0, 0), wall_clock=later)
        assert await hour.run_once() == 0
        # Past the window, everything acked by both goes (whole segments, never the active one).
        assert await no_window.run_once() > 0
        assert log.first_seq == log.segments[-1].first_seq
        assert log.first_seq <= min(acked()) + 1
    finally:
        for shipper in shippers:
            await shipper.stop()
        await up.stop()
        await late.stop()
        await committer.close()
        log.close()


# -- wiring ---------------------------------------------------------------------------------


@run_async
async def test_start_proxy_ships_to_every_shard_and_stops_cleanly(tmp_path: Path):
    shards = [FakeShard(0), FakeShard(1)]
    for shard in shards:
        await shard.start()
    opts = ProxyOptions("127.0.0.1", 0, "unused:/export", str(tmp_path / "log"),
                        shards=[s.address for s in shards], log_retain="1h,1G")
    running = await start_proxy(opts, NO_NAS)
    try:
        assert [s.address for s in running.shippers] == opts.shards
        assert running.retention is not None
        rng = random.Random(5)
        for _ in range(100):
            await running.committer.append(make_record(rng, running.proxy.clock).SerializeToString())
        for shard in shards:
            await eventually(caught_up(shard, running.log, running.proxy.clock))
        total = sum(len(s.held(running.log, running.proxy.clock)) for s in shards)
        assert total == 100
    finally:
        await running.stop()
        for shard in shards:
            await shard.stop()
    assert running.log.closed
    assert all(not s.connected for s in running.shippers)


@run_async
async def test_start_proxy_without_shards_journals_only(tmp_path: Path):
    opts = ProxyOptions("127.0.0.1", 0, "unused:/export", str(tmp_path / "log"))
    running = await start_proxy(opts, NO_NAS)
    try:
        assert running.shippers == [] and running.retention is None
    finally:
        await running.stop()


@run_async
async def test_frames_are_routed_by_their_header_without_parsing(log: Log, clock: HLC,
                                                                proxy: Proxy):
    """A v2 frame's header (stamp, route) decides its shard; its payload is not
    parsed, so a payload that is no Record still goes where the header says.
    Frames without a route (version 1 style) are parsed as before."""
    from logstore.record import record_parts
    from logstore.segment import ROUTE_HANDLE
    from nfsproxy.relay.journal import frame_fields

    shards = [FakeShard(0), FakeShard(1)]
    for shard in shards:
        await shard.start()
    rng = random.Random(5)
    routed, bare = {}, {}
    for _ in range(200):
        record = make_record(rng, clock, data_bytes=100, op=Op.WRITE)
        data, record.data = record.data, b""
        payload = b"".join(record_parts(record, data))
        routed[log.append(payload, **frame_fields(record))] = record
        record.data = data
    for _ in range(50):
        record = make_record(rng, clock)
        bare[log.append(record.SerializeToString())] = record
    # Not a Record at all, but its header routes it to shard 1 with a stamp.
    garbage = log.append(b"\xff\xff not a record", stamp=clock.now().to_bytes(),
                         route_kind=ROUTE_HANDLE, route=7)
    log.sync()
    shippers = [shipper_for(s.address, log, proxy, shard_id=k, n_shards=2)
                for k, s in enumerate(shards)]
    try:
        for shipper in shippers:
            shipper.start()
        for shard in shards:
            await eventually(caught_up(shard, log, clock))
        held = [shard.held(log, clock) for shard in shards]
        for seq, record in {**routed, **bare}.items():
            assert [k for k in (0, 1) if seq in held[k]] == list(shards_of(record, 2))
        assert garbage in held[1] and garbage not in held[0]
        assert all(s.unroutable_total == 0 for s in shippers)
        # Records cross as their LOG frames: the header's stamp where the writer gave one.
        stamps = {seq: stamp for shard in shards for b in shard.batches
                  for seq, stamp, _ in shipped(b)}
        assert all(stamps[seq] == record.stamp for seq, record in routed.items())
        assert all(stamps[seq] == NO_STAMP for seq in bare)
    finally:
        await stop_all(shippers, shards)


@run_async
async def test_a_shard_that_does_not_read_frames_gets_nothing(log: Log, clock: HLC, proxy: Proxy):
    """A shard from before IngestBatch.frames would take a batch of frames for
    a range without records: the shipper ships nothing to it and says why."""
    shard = FakeShard(reads_frames=False)
    await shard.start()
    append_records(log, clock, 20)
    shipper = shipper_for(shard.address, log, proxy)
    try:
        shipper.start()
        await eventually(lambda: "upgrade the shards before the proxies" in shipper.state().last_error)
        assert [b for b in shard.batches if b.through_seq > b.after_seq] == []
        assert shipper.acked_seq == 0 and not shipper.connected
    finally:
        await shipper.stop()
        await shard.stop()


@run_async
async def test_a_batch_cut_for_room_does_not_reopen_the_log(log: Log, clock: HLC, proxy: Proxy,
                                                          monkeypatch):
    """The record a full batch stopped before starts the next batch from
    memory: reopening the LOG would re-read it from the index point before it
    (every frame in between read and CRC-checked again)."""
    shard = FakeShard()
    await shard.start()
    append_records(log, clock, 300, data_bytes=1000, ops=[Op.WRITE])
    opened = []
    real_read = log.read
    monkeypatch.setattr(log, "read", lambda seq: opened.append(seq) or real_read(seq))
    shipper = shipper_for(shard.address, log, proxy,
                          options=dataclasses.replace(FAST, max_batch_bytes=10_000))
    try:
        shipper.start()
        await eventually(caught_up(shard, log, clock))
        assert len([b for b in shard.batches if b.frames]) >= 25  # many batches cut for room
        assert opened == [1]
        assert sorted(shard.held(log, clock)) == list(range(1, 301))
    finally:
        await shipper.stop()
        await shard.stop()


# -- the native walk of LOG frames ------------------------------------------------------


def _ranges(shipper: Shipper, budgets: list[int]) -> list:
    """Every batch ``_read_range`` cuts the LOG into, as the stream would ask for them."""
    out, after, oversize = [], 0, False
    log = shipper._log
    for budget in budgets:
        if after >= log.last_seq:
            break
        got = shipper._read_range(after + 1, log.last_seq, budget, oversize)
        out.append(got)
        oversize = got.blocked_by > budget  # the next batch may hold it alone
        after = got.through_seq
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_native_walk_cuts_the_same_batches_as_the_python_one(tmp_path: Path, seed: int,
                                                                  monkeypatch) -> None:
    """Routed, unrouted and every-shard frames over many small segments, with
    budgets from below one record to many: both walks give the same batches,
    frame for frame, for each shard."""
    rng = random.Random(seed)
    clock = HLC(7)
    with Log.open(tmp_path / "log", segment_bytes=16 << 10) as log:
        for _ in range(300):
            record = make_record(rng, clock, data_bytes=rng.choice([0, 50, 700, 5000]))
            if rng.random() < 0.2:
                log.append(record.SerializeToString())  # no routing fields: parsed to route
            else:
                data, record.data = record.data, b""
                log.append(b"".join(record_parts(record, data)), **frame_fields(record))
        log.sync()
        budgets = [rng.choice([10, 900, 4 << 10, 64 << 10, 1 << 20]) for _ in range(400)]
        native, python = [], []
        for shard_id in (0, 1):
            options = dataclasses.replace(FAST, max_batch_records=rng.choice([3, 50, 8192]))
            native.append(_ranges(Shipper("127.0.0.1:1", shard_id=shard_id, n_shards=2, log=log,
                                          clock=clock, stable_stamp=lambda: Stamp.ZERO,
                                          options=options), budgets))
            with monkeypatch.context() as m:
                m.setattr(Shipper, "_select", lambda self, batch, limit: False)
                python.append(_ranges(Shipper("127.0.0.1:1", shard_id=shard_id, n_shards=2,
                                              log=log, clock=clock,
                                              stable_stamp=lambda: Stamp.ZERO,
                                              options=options), budgets))
        assert native == python
        assert all(r[-1].through_seq == log.last_seq for r in native)


@pytest.mark.parametrize("seed", range(2))
def test_the_native_walk_matches_across_reads_of_many_mib(tmp_path: Path, seed: int,
                                                          monkeypatch) -> None:
    """The native walk reads a segment 4 MiB at a time: batches that span
    several reads, and records larger than one read, come out as the Python
    walk cuts them, frame for frame."""
    rng = random.Random(seed)
    clock = HLC(7)
    with Log.open(tmp_path / "log") as log:
        for _ in range(40):
            record = make_record(rng, clock, data_bytes=rng.choice([50, 700 << 10, 3 << 20, 6 << 20]),
                                 op=Op.WRITE)
            data, record.data = record.data, b""
            log.append(b"".join(record_parts(record, data)), **frame_fields(record))
        log.sync()
        budgets = [rng.choice([1 << 20, 5 << 20, 9 << 20, 20 << 20]) for _ in range(100)]
        for shard_id in (0, 1):
            walks = []
            for native in (True, False):
                with monkeypatch.context() as m:
                    if not native:
                        m.setattr(Shipper, "_select", lambda self, batch, limit: False)
                    walks.append(_ranges(Shipper("127.0.0.1:1", shard_id=shard_id, n_shards=2,
                                                 log=log, clock=clock,
                                                 stable_stamp=lambda: Stamp.ZERO, options=FAST),
                                         budgets))
            assert walks[0] == walks[1]
            assert walks[0][-1].through_seq == log.last_seq
            assert any(len(r.frames) > 4 << 20 for r in walks[0])
