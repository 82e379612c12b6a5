"""Unit tests of recoveryd.store: a real RocksDB in a temp dir, no mocks."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from logstore.pb.journal_pb2 import IngestBatch, Op, Record, ShippedRecord, StreamId
from logstore.stamp import Stamp
from recoveryd.frontier import BatchRefused, StreamKey, StreamState
from recoveryd.store import (DEFERRED_FLUSH_S, DEFERRED_WRITE_BYTES, FILE_ENTRY_SPAN_NS, FORMAT,
                             ShardStore, StoreError, fh_key, supports_direct_io)

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE = 11
STREAM = StreamKey(NODE, "log-a")
WALL0 = 1_700_000_000_000_000_000


def stamp(i: int, node: int = NODE) -> Stamp:
    return Stamp(WALL0 + i * 1000, 0, node)


def write_record(i: int, fh: bytes, data: bytes = b"x" * 64, node: int = NODE) -> Record:
    return Record(stamp=stamp(i, node).to_bytes(), op=Op.WRITE, ok=True, fh=fh,
                  offset=i * len(data), count=len(data), data=data)


def batch(after: int, through: int, records: list[tuple[int, Record]] = (), *,
          stable: Stamp | None = None, gap: bool = False, newest: Stamp | None = None,
          stream: StreamKey = STREAM) -> IngestBatch:
    return IngestBatch(
        stream=StreamId(node_id=stream.node_id, log_id=stream.log_id),
        after_seq=after, through_seq=through,
        records=[ShippedRecord(seq=seq, record=r.SerializeToString()) for seq, r in records],
        stable=stable.to_bytes() if stable else b"", gap=gap,
        newest=newest.to_bytes() if newest else b"")


def stamps_of(records) -> list[Stamp]:
    return [Stamp.from_bytes(r.stamp) for r in records]


@pytest.fixture
def store(tmp_path: Path):
    s = ShardStore(tmp_path / "shard", 3)
    yield s
    s.close()


def test_new_store_identity(tmp_path: Path, store: ShardStore) -> None:
    assert store.shard_id == 3
    assert len(store.data_id) == 32 and int(store.data_id, 16) >= 0
    assert store.records_total == 0 and store.bytes_total == 0
    assert store.streams() == {} and store.frontier() is None
    assert store.stream_state(STREAM) == StreamState()
    assert list(store.records()) == []


def test_ingest_chains_and_counts(store: ShardStore) -> None:
    r1, r3, r4 = write_record(1, b"A"), write_record(3, b"B"), write_record(4, b"A")
    # (0, 3] holds LOG seqs 1..3, of which seq 2 belongs to another shard.
    s1 = store.ingest(STREAM, batch(0, 3, [(1, r1), (3, r3)], stable=stamp(2), newest=stamp(3)))
    assert (s1.durable_seq, s1.frontier, s1.newest) == (3, stamp(2), stamp(3))
    s2 = store.ingest(STREAM, batch(3, 5, [(5, r4)], stable=stamp(5)))
    assert (s2.durable_seq, s2.frontier) == (5, stamp(5))
    assert store.streams() == {STREAM: s2}
    assert store.frontier() == stamp(5)
    assert store.records_total == 3
    assert store.bytes_total == sum(len(r.SerializeToString()) for r in (r1, r3, r4))
    assert list(store.records()) == [r1, r3, r4]
    assert store.stream_infos()[STREAM].records == 3


def test_refused_batch_writes_nothing(store: ShardStore) -> None:
    store.ingest(STREAM, batch(0, 5, [(1, write_record(1, b"A"))]))
    with pytest.raises(BatchRefused) as info:
        store.ingest(STREAM, batch(7, 9, [(8, write_record(8, b"A"))], stable=stamp(9)))
    assert info.value.state.durable_seq == 5
    assert "shard holds through 5" in str(info.value)
    assert store.records_total == 1 and len(list(store.records())) == 1
    assert store.stream_state(STREAM).durable_seq == 5


@pytest.mark.parametrize("bad, reason", [
    (batch(0, 3, [(4, write_record(1, b"A"))]), "outside (0, 3]"),
    (batch(0, 3, [(0, write_record(1, b"A"))]), "outside (0, 3]"),
    (batch(0, 3, [(2, Record(stamp=b"short", fh=b"A"))]), "5-byte stamp"),
    (IngestBatch(after_seq=0, through_seq=1, records=[ShippedRecord(seq=1, record=b"\xff\xff")]),
     "does not parse"),
    (IngestBatch(after_seq=0, through_seq=1, stable=b"123"), "a stamp is 16 bytes"),
])
def test_malformed_batch_refused(store: ShardStore, bad: IngestBatch, reason: str) -> None:
    with pytest.raises(BatchRefused, match="malformed batch") as info:
        store.ingest(STREAM, bad)
    assert reason in str(info.value)
    assert info.value.state == StreamState()
    assert store.records_total == 0 and store.streams() == {}


def test_resend_after_lost_ack_is_idempotent(store: ShardStore) -> None:
    recs = [(i, write_record(i, b"A")) for i in range(1, 5)]
    first = store.ingest(STREAM, batch(0, 4, recs, stable=stamp(3)))
    total, nbytes = store.records_total, store.bytes_total
    again = store.ingest(STREAM, batch(0, 4, recs, stable=stamp(3)))
    assert again == first
    assert (store.records_total, store.bytes_total) == (total, nbytes)
    assert len(list(store.records())) == 4
    assert len(list(store.file_records(b"A"))) == 4


def test_duplicate_records_counted_once(store: ShardStore) -> None:
    r1 = write_record(1, b"A")
    # The same stamp twice in one batch is one record.
    store.ingest(STREAM, batch(0, 2, [(1, r1), (2, r1)]))
    assert store.records_total == 1
    # A record already held arriving on another stream is not stored twice.
    other = StreamKey(NODE, "log-b")
    store.ingest(other, batch(0, 2, [(1, r1), (2, write_record(2, b"A"))], stream=other))
    assert store.records_total == 2
    assert store.stream_infos()[other].records == 1
    assert stamps_of(store.records()) == [stamp(1), stamp(2)]
    assert stamps_of(store.file_records(b"A")) == [stamp(1), stamp(2)]


def test_a_group_parsed_while_the_one_before_is_written_still_chains(store: ShardStore) -> None:
    # The ingest pipeline parses group k+1 before group k is written: what
    # parse_group prepared must be checked again when it is applied.
    first = [(1, write_record(1, b"F")), (2, write_record(2, b"G"))]
    group1 = store.parse_group(STREAM, [batch(0, 2, first)])
    group2 = store.parse_group(STREAM, [batch(2, 3, [(3, write_record(3, b"F"))])])
    resend = store.parse_group(STREAM, [batch(0, 2, first)])  # a rewind's resend, parsed early
    [state1] = store.apply_group(STREAM, group1)
    assert state1.durable_seq == 2 and store.records_total == 2
    [again] = store.apply_group(STREAM, resend)
    assert not isinstance(again, BatchRefused) and again.durable_seq == 2
    assert store.records_total == 2  # held already: not counted (or written) twice
    [state2] = store.apply_group(STREAM, group2)
    assert state2.durable_seq == 3 and store.records_total == 3
    assert [r.offset for r in store.file_records(b"F")] == [64, 192]


def test_a_group_applied_out_of_order_is_refused_and_writes_nothing(store: ShardStore) -> None:
    group1 = store.parse_group(STREAM, [batch(0, 1, [(1, write_record(1, b"F"))])])
    group2 = store.parse_group(STREAM, [batch(1, 2, [(2, write_record(2, b"F"))])])
    [refused] = store.apply_group(STREAM, group2)
    assert isinstance(refused, BatchRefused) and store.records_total == 0
    assert store.apply_group(STREAM, group1)[0].durable_seq == 1
    assert store.apply_group(STREAM, group2)[0].durable_seq == 2


def test_gap_is_remembered_with_its_stamps_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "shard"
    with ShardStore(path, 1) as s:
        s.ingest(STREAM, batch(0, 2, stable=stamp(2)))
        gap_batch = batch(2, 6, gap=True)
        gap_batch.sent_stamp = stamp(5).to_bytes()
        gapped = s.ingest(STREAM, gap_batch)
        (gap,) = gapped.gaps
        assert (gap.from_stamp, gap.through, gap.cause) == (stamp(2), stamp(5), "trimmed")
        assert gapped.frontier == stamp(2) and gapped.durable_seq == 6
        after = s.ingest(STREAM, batch(6, 8, [(7, write_record(7, b"A"))], stable=stamp(8)))
        assert after.frontier == stamp(8)  # the frontier goes on; the gap stays on record
        assert after.gaps == gapped.gaps
    with ShardStore(path, 1) as s:
        assert s.streams() == {STREAM: after}


def test_a_gap_record_in_a_batch_is_a_gap_from_the_frontier_before_it(tmp_path: Path) -> None:
    from logstore.record import Op
    with ShardStore(tmp_path / "shard", 1) as s:
        s.ingest(STREAM, batch(0, 2, stable=stamp(2)))
        marker = Record(op=Op.GAP, ok=True, stamp=stamp(9).to_bytes(), gap_cause="quota_drop",
                        gap_reason="dropped")
        state = s.ingest(STREAM, batch(2, 4, [(3, write_record(3, b"A")), (4, marker)],
                                       stable=stamp(10)))
        (gap,) = state.gaps
        assert (gap.after_seq, gap.through_seq, gap.from_stamp, gap.through) == (3, 4, stamp(2), stamp(9))
        assert (gap.cause, gap.reason, state.frontier) == ("quota_drop", "dropped", stamp(10))


def test_reopen_after_close(tmp_path: Path) -> None:
    path = tmp_path / "shard"
    s = ShardStore(path, 5)
    data_id, node_id = s.data_id, s.node_id
    recs = [(i, write_record(i, bytes([i % 3]))) for i in range(1, 21)]
    s.ingest(STREAM, batch(0, 10, recs[:10], stable=stamp(9)))
    state = s.ingest(STREAM, batch(10, 20, recs[10:], stable=stamp(19), newest=stamp(20)))
    totals = (s.records_total, s.bytes_total)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.ingest(STREAM, batch(20, 21))
    with ShardStore(path, 5) as s:
        assert (s.data_id, s.node_id) == (data_id, node_id)
        assert (s.records_total, s.bytes_total) == totals
        assert s.streams() == {STREAM: state}
        assert s.stream_infos()[STREAM].records == 20
        assert [r.SerializeToString() for r in s.records()] == [r.SerializeToString() for _, r in recs]
        # and it goes on from where it was
        assert s.ingest(STREAM, batch(20, 21)).durable_seq == 21


def test_refuses_another_shards_data(tmp_path: Path) -> None:
    path = tmp_path / "shard"
    with ShardStore(path, 1) as s:
        data_id = s.data_id
    with pytest.raises(StoreError) as info:
        ShardStore(path, 2)
    message = str(info.value)
    assert "belongs to shard 1" in message and "not shard 2" in message and data_id in message
    with ShardStore(path, 1) as s:  # still fine for its owner
        assert s.data_id == data_id


def test_refuses_store_in_use(store: ShardStore) -> None:
    with pytest.raises(StoreError, match="in use"):
        ShardStore(store.path, 3)


def test_refuses_a_directory_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not empty and holds no shard store"):
        ShardStore(tmp_path, 1)
    assert os.listdir(tmp_path) == ["precious.txt"]


def test_per_file_index_1000_records_over_10_files(store: ShardStore) -> None:
    rng = random.Random(7)
    files = [f"fh-{k}".encode() * 4 for k in range(10)]
    # Stamps are assigned in one order, LOG seqs in another: records reach
    # the LOG (and the shard) out of stamp order.
    by_stamp = [(i, rng.choice(files)) for i in range(1000)]
    shipped = by_stamp[:]
    rng.shuffle(shipped)
    seq = 0
    for start in range(0, 1000, 100):
        chunk = [(seq + 1 + j, write_record(i, fh, data=os.urandom(32))) for j, (i, fh) in enumerate(shipped[start:start + 100])]
        store.ingest(STREAM, batch(seq, seq + 100, chunk))
        seq += 100
    assert store.records_total == 1000
    for fh in files:
        expected = sorted(stamp(i) for i, f in by_stamp if f == fh)
        got = list(store.file_records(fh))
        assert stamps_of(got) == expected
        assert all(r.fh == fh for r in got)
        # bounds: lo < stamp <= hi
        lo, hi = expected[len(expected) // 4], expected[3 * len(expected) // 4]
        assert stamps_of(store.file_records(fh, hi, lo=lo)) == [s for s in expected if lo < s <= hi]
        assert stamps_of(store.file_records(fh, expected[0])) == [expected[0]]
    assert list(store.file_records(b"no-such-file")) == []
    assert stamps_of(store.records()) == sorted(stamp(i) for i in range(1000))


def test_index_covers_every_handle_a_record_names(store: ShardStore) -> None:
    rename = Record(stamp=stamp(1).to_bytes(), op=Op.RENAME, ok=True, dir_fh=b"D1", name=b"a",
                    to_dir_fh=b"D2", to_name=b"b", object_fh=b"F")
    create = Record(stamp=stamp(2).to_bytes(), op=Op.CREATE, ok=True, fh=b"G", dir_fh=b"D1", name=b"g")
    write = write_record(3, b"F")
    store.ingest(STREAM, batch(0, 3, [(1, rename), (2, create), (3, write)]))
    assert list(store.file_records(b"D1")) == [rename, create]
    assert list(store.file_records(b"D2")) == [rename]
    assert list(store.file_records(b"F")) == [rename, write]
    assert list(store.file_records(b"G")) == [create]


def test_records_range_is_after_lo_through_hi(store: ShardStore) -> None:
    recs = [(i, write_record(i, b"A")) for i in range(1, 11)]
    store.ingest(STREAM, batch(0, 10, recs))
    assert stamps_of(store.records(stamp(3), stamp(6))) == [stamp(4), stamp(5), stamp(6)]
    assert stamps_of(store.records(hi=stamp(2))) == [stamp(1), stamp(2)]
    assert stamps_of(store.records(lo=stamp(9))) == [stamp(10)]
    assert list(store.records(stamp(6), stamp(6))) == []
    assert stamps_of(store.records(Stamp.ZERO, Stamp.MAX)) == [stamp(i) for i in range(1, 11)]
    assert fh_key(b"A") == __import__("hashlib").blake2b(b"A").digest()[:8]


_WRITER = textwrap.dedent("""
    import sys
    from logstore.pb.journal_pb2 import IngestBatch, Op, Record, ShippedRecord, StreamId
    from logstore.stamp import Stamp
    from recoveryd.frontier import StreamKey
    from recoveryd.store import ShardStore

    store = ShardStore(sys.argv[1], 9)
    sizes = [int(n) for n in sys.argv[2].split(",")]  # data bytes per record, batch by batch
    key = StreamKey(4, "L")
    seq = store.stream_state(key).durable_seq
    def batch(after):
        data = b"d" * sizes[after // 16 % len(sizes)]
        records = [ShippedRecord(seq=after + j, record=Record(
            stamp=Stamp(1_700_000_000_000_000_000 + after + j, 0, 4).to_bytes(), op=Op.WRITE,
            fh=b"F%d" % ((after + j) % 5), data=data).SerializeToString()) for j in range(1, 17)]
        return IngestBatch(stream=StreamId(node_id=4, log_id="L"), after_seq=after,
                           through_seq=after + 16, records=records)

    mode = sys.argv[3]
    n = 0
    if mode == "deferred-flushed-aside":  # as the server's flush task: beside ingest
        import threading, time
        def flush():
            while True:
                store.flush_deferred()
                time.sleep(0.002)
        threading.Thread(target=flush, daemon=True).start()
    while True:
        # Two batches a group, as a shard that is behind writes them.
        n += 1
        defer = mode.startswith("deferred") and (mode != "deferred-and-wal" or n % 4)
        *_, state = store.ingest_many(key, [batch(seq), batch(seq + 16)], defer=defer)
        seq = state.durable_seq
        if mode == "deferred" and n % 3 == 0:
            store.flush_deferred()  # as the server does, DEFERRED_FLUSH_S after the first
        print(store.durable_seq(key), flush=True)  # acknowledged: durable
""")


# 16 records a batch, two batches a write. Of 4 KiB: every write goes through
# the WAL. Of 64 KiB (2 MiB a write): every write is flushed without the WAL,
# 100 MiB a round. Alternating 2 MiB and 64 KiB writes: WAL writes land
# between flushed ones. Deferred (as for a shipper that sets defer_durable):
# no write goes through the WAL, a flush every third write makes them
# durable; only what a flush made durable is acknowledged. Deferred and WAL:
# every fourth write is a durable one, which must flush the deferred before it.
# Deferred, flushed aside: a thread flushes while the writer goes on.
@pytest.mark.parametrize("data_bytes, batches, mode", [
    ("4096", (3, 20), "wal"), ("65536", (50, 55), "wal"), ("65536,65536,4096,1", (10, 30), "wal"),
    ("4096,65536", (20, 60), "deferred"), ("4096", (20, 60), "deferred-and-wal"),
    ("65536,4096", (20, 60), "deferred-flushed-aside")],
    ids=["small", "flushed", "wal-and-flushed", "deferred", "deferred-and-wal", "deferred-flushed-aside"])
def test_state_never_ahead_of_records_after_kill_9(tmp_path: Path, data_bytes: str,
                                                   batches: tuple[int, int], mode: str) -> None:
    path = tmp_path / "shard"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    rng = random.Random(3)
    acked = 0
    for round_ in range(4 if data_bytes == "4096" else 6):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), data_bytes, mode],
                                stdout=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
        try:
            for _ in range(rng.randint(*batches)):
                line = proc.stdout.readline()
                assert line, "the writer died"
                acked = int(line)
            time.sleep(rng.random() * 0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        with ShardStore(path, 9) as s:
            state = s.stream_state(StreamKey(4, "L"))
            # Nothing acknowledged is lost ...
            assert state.durable_seq >= acked
            # ... and the state never claims more than the records held: every
            # record through durable_seq is there, none beyond, and the
            # counters agree with what is stored.
            held = [r.stamp for r in s.records()]
            assert [Stamp.from_bytes(st).wall_ns - 1_700_000_000_000_000_000 for st in held] == \
                list(range(1, state.durable_seq + 1))
            assert s.records_total == len(held) == state.durable_seq
            assert s.bytes_total == sum(len(r.SerializeToString()) for r in s.records())
            for k in range(5):
                assert len(list(s.file_records(b"F%d" % k))) == len([q for q in range(1, state.durable_seq + 1) if q % 5 == k])


def test_a_store_keeps_its_writes_out_of_the_page_cache(tmp_path: Path) -> None:
    """Flushes and compactions bypass the page cache where the file system
    allows it, and flushes are atomic across column families
    (``store_options``), as RocksDB itself recorded the options it opened with."""
    with ShardStore(tmp_path / "shard", 3) as s:
        s.ingest(STREAM, batch(0, 1, [(1, write_record(1, b"A"))]))
    options = max((tmp_path / "shard").glob("OPTIONS-*")).read_text()
    assert supports_direct_io(tmp_path / "shard")
    assert "use_direct_io_for_flush_and_compaction=true" in options
    assert "atomic_flush=true" in options
    # Each large write leaves a small file of index entries in L0; compacting
    # at 4 files rewrote the whole index below it 11 times per 150,000 records.
    assert "level0_file_num_compaction_trigger=16" in options


def test_a_shard_behind_writes_large_groups_once_not_through_the_wal_too(tmp_path: Path) -> None:
    """Groups of several batches (a shard that is behind) holding a MiB or
    more of records are flushed to table files instead of being written to
    the WAL and again at flush; a single batch, however large, and small
    groups keep the WAL."""
    path = tmp_path / "shard"
    big = b"b" * (128 << 10)
    seq = 0

    def large(s: ShardStore, batches: int) -> None:
        nonlocal seq
        group = []
        for _ in range(batches):  # 8 records of 128 KiB a batch: 1 MiB
            recs = [(seq + j, write_record(seq + j, b"F", data=big)) for j in range(1, 9)]
            group.append(batch(seq, seq + 8, recs))
            seq += 8
        assert not any(isinstance(o, BatchRefused) for o in s.ingest_many(STREAM, group))

    def wal_bytes() -> int:
        return sum(f.stat().st_size for f in path.glob("*.log"))

    with ShardStore(path, 3) as s:
        for _ in range(8):  # groups of 2 batches: 16 MiB
            large(s, 2)
        assert wal_bytes() < 1 << 20, f"{wal_bytes()} bytes in the WAL after 16 MiB of large groups"
        before = wal_bytes()
        large(s, 1)  # one batch: the shard keeps up
        assert wal_bytes() > before + (1 << 20)
        s.ingest(STREAM, batch(seq, seq + 1, [(seq + 1, write_record(seq + 1, b"F", data=b"s" * 4096))]))
        assert s.stream_state(STREAM).durable_seq == seq + 1
    with ShardStore(path, 3) as s:
        assert [len(r.data) for r in s.file_records(b"F")] == [len(big)] * seq + [4096]


def test_a_deferred_group_is_held_at_once_and_durable_after_its_flush(tmp_path: Path) -> None:
    """A deferred group (``defer=True``: the shipper keeps its records until
    they are durable) of DEFERRED_WRITE_BYTES or more is readable when ingest
    returns, goes nowhere near the WAL, and counts as durable
    (``durable_seq``) only once a flush made it so: the one due
    ``DEFERRED_FLUSH_S`` after it, or one a durable write forces. Smaller
    groups join it while it waits; alone they go through the WAL, durable
    when ingest returns, so a trickle does not cost a flush a batch."""
    path = tmp_path / "shard"
    other = StreamKey(NODE, "log-b")
    data = b"w" * 4096

    def put(seq: int, defer: bool = True, n: int = 1) -> StreamState:
        recs = [(q, write_record(q, b"F", data=data)) for q in range(seq - n + 1, seq + 1)]
        [state] = s.ingest_many(STREAM, [batch(seq - n, seq, recs)], defer=defer)
        return state

    with ShardStore(path, 3) as s:
        put(1, defer=False)
        assert put(2).durable_seq == s.durable_seq(STREAM) == 2  # small and alone: the WAL
        assert put(66, n=64).durable_seq == 66  # 256 KiB: deferred
        for seq in range(67, 200):  # small ones join it
            assert put(seq).durable_seq == seq
        assert [r.offset for r in s.file_records(b"F")] == [i * 4096 for i in range(1, 200)]
        assert s.durable_seq(STREAM) == 2
        assert sum(f.stat().st_size for f in path.glob("*.log")) < 64 << 10  # 788 KiB held
        assert not s.flush_due(time.monotonic())
        assert s.flush_due(time.monotonic() + DEFERRED_FLUSH_S)
        assert not s.flush_deferred(other)  # a quiet stream flushes only its own
        assert s.durable_seq(STREAM) == 2
        assert s.flush_deferred()
        assert s.durable_seq(STREAM) == 199
        assert not s.flush_deferred()  # nothing waits

        put(263, n=64)
        assert s.durable_seq(STREAM) == 199
        s.register(other)  # a durable write: WAL replay must not bring it back without 200..263
        assert s.durable_seq(STREAM) == 263
        assert s.durable_seq(other) == 0
    with ShardStore(path, 3) as s:
        assert s.stream_state(STREAM).durable_seq == 263
        assert len(list(s.file_records(b"F"))) == 263


def test_a_store_closed_with_deferred_groups_makes_them_durable_first(tmp_path: Path) -> None:
    path = tmp_path / "shard"
    big = b"b" * DEFERRED_WRITE_BYTES
    with ShardStore(path, 3) as s:
        s.ingest_many(STREAM, [batch(0, 1, [(1, write_record(1, b"F", data=big))])], defer=True)
        assert s.durable_seq(STREAM) == 0
    with ShardStore(path, 3) as s:
        assert s.stream_state(STREAM).durable_seq == s.durable_seq(STREAM) == 1


@pytest.fixture
def ramfs(tmp_path: Path):
    """A ramfs mount: a file system that refuses O_DIRECT (needs root)."""
    where = tmp_path / "ramfs"
    where.mkdir()
    if subprocess.run(["mount", "-t", "ramfs", "ramfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount ramfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_store_where_direct_io_is_refused_writes_through_the_page_cache(ramfs: Path) -> None:
    """O_DIRECT is asked of the file system first: asked to use it there,
    RocksDB refuses to open the store ("Direct I/O is not supported")."""
    path = ramfs / "shard"
    assert not supports_direct_io(path)
    with ShardStore(path, 3) as s:
        s.ingest(STREAM, batch(0, 1, [(1, write_record(1, b"A"))]))
        s._db.flush()
        s.ingest(STREAM, batch(1, 2, [(2, write_record(2, b"A"))]))
    with ShardStore(path, 3) as s:
        assert stamps_of(s.records()) == [stamp(1), stamp(2)]


def mixed_records() -> list[Record]:
    """Writes with data, creates and baseline pieces interleaved in stamp order."""
    out = []
    for i in range(1, 61):
        if i % 3 == 0:
            out.append(Record(stamp=stamp(i).to_bytes(), op=Op.CREATE, ok=True, dir_fh=b"D",
                              name=b"n%d" % i, fh=b"C%d" % i))
        elif i % 3 == 1:
            out.append(write_record(i, b"W", data=os.urandom(1000)))
        else:
            out.append(Record(stamp=stamp(i).to_bytes(), op=Op.BASELINE, ok=True, fh=b"B%d" % i,
                              baseline_first=True, data=os.urandom(500)))
    return out


def without_data(record: Record) -> Record:
    copy = Record()
    copy.CopyFrom(record)
    copy.ClearField("data")
    return copy


def test_operation_index_gives_some_ops_without_reading_data(store: ShardStore) -> None:
    records = mixed_records()
    store.ingest(STREAM, batch(0, len(records), list(enumerate(records, 1))))
    wanted = [r for r in records if r.op in (Op.CREATE, Op.BASELINE)]
    assert list(store.op_records([Op.CREATE, Op.BASELINE])) == [without_data(r) for r in wanted]
    assert list(store.op_records([])) == [without_data(r) for r in records]
    assert list(store.op_records([Op.WRITE], stamp(10), stamp(20))) == [
        without_data(r) for r in records if r.op == Op.WRITE and stamp(10) < Stamp.from_bytes(r.stamp) <= stamp(20)]
    with_data = [Record.FromString(v) for v in store.op_values([Op.BASELINE], with_data=True)]
    assert with_data == [r for r in records if r.op == Op.BASELINE]
    assert [Record.FromString(v) for v in store.op_values([], stamp(5), with_data=True)] == records[5:]


def as_older_format(path: Path, fmt: int, *, left_moved: int = 0) -> None:
    """Make a current store what format ``fmt`` wrote: records in the default
    column family (and, for format 1, no operation index). ``left_moved``
    records stay in their column family, as a move stopped by a crash leaves them."""
    from rocksdict import Options, Rdict

    db = Rdict(str(path), Options(raw_mode=True))
    try:
        records = db.get_column_family("records")
        moved = list(records.items())
        for key, value in moved[left_moved:]:
            db[key] = value
            del records[key]
        records.close()
        del records
        if not left_moved:
            db.drop_column_family("records")
        if fmt == 1:
            for key in [k for k, _ in db.items(from_key=b"p/") if k.startswith(b"p/")]:
                del db[key]
        db[b"m/format"] = fmt.to_bytes(4, "big")
    finally:
        db.close()


def test_a_format_1_store_is_indexed_when_opened(tmp_path: Path) -> None:
    records = mixed_records()
    with ShardStore(tmp_path / "shard", 3) as s:
        s.ingest(STREAM, batch(0, len(records), list(enumerate(records, 1))))
    as_older_format(tmp_path / "shard", 1)
    with ShardStore(tmp_path / "shard", 3) as s:
        assert list(s.op_records([Op.CREATE])) == [without_data(r) for r in records if r.op == Op.CREATE]
        assert list(s.records()) == records  # the records themselves read on as before


@pytest.mark.parametrize("left_moved", [0, 5], ids=["whole", "after-a-crash-mid-move"])
def test_a_format_2_store_gets_its_records_column_family_when_opened(tmp_path: Path, left_moved) -> None:
    from rocksdict import Options, Rdict

    records = mixed_records()
    with ShardStore(tmp_path / "shard", 3) as s:
        s.ingest(STREAM, batch(0, len(records), list(enumerate(records, 1))))
    as_older_format(tmp_path / "shard", 2, left_moved=left_moved)
    with ShardStore(tmp_path / "shard", 3) as s:
        assert list(s.records()) == records
        assert [Record.FromString(v) for v in s.op_values([], with_data=True)] == records
        assert list(s.file_records(b"W")) == [r for r in records if b"W" in (r.fh, r.dir_fh)]
        more = Record(stamp=stamp(500).to_bytes(), op=Op.WRITE, ok=True, fh=b"W", data=b"later")
        s.ingest(STREAM, batch(len(records), len(records) + 1, [(len(records) + 1, more)]))
        assert list(s.records())[-1] == more
    db = Rdict(str(tmp_path / "shard"), Options(raw_mode=True))
    try:
        assert not [k for k, _ in db.items(from_key=b"r/") if k.startswith(b"r/")]  # none left behind
        assert db[b"m/format"] == FORMAT.to_bytes(4, "big")
    finally:
        db.close()


def test_many_files_records_come_each_once_in_stamp_order(store: ShardStore) -> None:
    records = mixed_records()
    rename = Record(stamp=stamp(70).to_bytes(), op=Op.RENAME, ok=True, dir_fh=b"D", name=b"n3",
                    to_dir_fh=b"D", to_name=b"m3", object_fh=b"C3")
    records.append(rename)
    store.ingest(STREAM, batch(0, len(records), list(enumerate(records, 1))))
    wanted = {b"C3", b"W", b"B2", b"D"}
    got = [Record.FromString(v) for v in store.files_record_values([b"C3", b"W", b"B2", b"D", b"W"])]
    expect = [r for r in records if wanted & {r.fh, r.dir_fh, r.to_dir_fh, r.object_fh}]
    assert got == expect  # the RENAME names D and C3: sent once
    got = [Record.FromString(v) for v in store.files_record_values([b"W"], stamp(30), lo=stamp(10))]
    assert got == [r for r in records if r.fh == b"W" and stamp(10) < Stamp.from_bytes(r.stamp) <= stamp(30)]



# -- the per-file index: one entry per file per group ---------------------------------


def file_index_entries(store: ShardStore) -> list[tuple[bytes, bytes]]:
    return [kv for kv in store._scan(b"f/", b"f0")]


def scattered_history(rng: random.Random, n: int = 400) -> list[Record]:
    """Records of two files and their directory, over 40 s (so groups span
    more than one index entry may), in stamp order."""
    out = []
    for i in range(1, n + 1):
        at = Stamp(WALL0 + i * 100_000_000 + rng.randrange(1000), rng.randrange(3), NODE)
        kind = rng.randrange(4)
        if kind == 0:
            out.append(Record(stamp=at.to_bytes(), op=Op.CREATE, ok=True, dir_fh=b"D",
                              name=b"n%d" % i, fh=b"A"))
        elif kind == 1:
            out.append(Record(stamp=at.to_bytes(), op=Op.RENAME, ok=True, dir_fh=b"D", name=b"a",
                              to_dir_fh=b"E", to_name=b"b", object_fh=b"B"))
        else:
            out.append(Record(stamp=at.to_bytes(), op=Op.WRITE, ok=True,
                              fh=b"AB"[kind - 2:kind - 1], data=b"d%d" % i))
    out.sort(key=lambda r: r.stamp)
    return out


def naming(records: list[Record], fh: bytes, lo: Stamp | None = None,
           hi: Stamp | None = None) -> list[Record]:
    return [r for r in records if fh in (r.fh, r.dir_fh, r.to_dir_fh, r.object_fh)
            and (lo is None or Stamp.from_bytes(r.stamp) > lo)
            and (hi is None or Stamp.from_bytes(r.stamp) <= hi)]


@pytest.mark.parametrize("collide", [False, True], ids=["own-keys", "every-fh_key-colliding"])
def test_a_files_history_reads_whole_however_its_groups_overlap(tmp_path: Path, monkeypatch,
                                                                collide: bool) -> None:
    """Batches ship records out of stamp order (the LOG holds them in reply
    order), so one group's index entry for a file may overlap the next
    group's, and a group spanning more than FILE_ENTRY_SPAN_NS splits. Every
    window of every file's history must still come whole, in order, once;
    also when every handle shares one fh_key."""
    if collide:
        monkeypatch.setattr("recoveryd.store.fh_key", lambda fh: b"\0" * 8)
    rng = random.Random(7)
    records = scattered_history(rng)
    shipped = records[:]
    for i in range(0, len(shipped) - 6, 5):  # reply order: neighbours swap
        j = i + rng.randrange(1, 6)
        shipped[i], shipped[j] = shipped[j], shipped[i]
    with ShardStore(tmp_path / "shard", 3) as store:
        seq = 0
        while seq < len(shipped):
            size = rng.choice([1, 3, 17, 120])
            part = shipped[seq:seq + size]
            store.ingest(STREAM, batch(seq, seq + len(part),
                                       list(enumerate(part, seq + 1))))
            seq += len(part)
        assert len(file_index_entries(store)) < len(records)
        stamps = stamps_of(records)
        for fh in (b"A", b"B", b"D", b"E"):
            assert list(store.file_records(fh)) == naming(records, fh)
            for _ in range(40):
                lo, hi = sorted(rng.sample(stamps, 2))
                lo = rng.choice([lo, None])
                assert list(store.file_records(fh, hi, lo=lo)) == naming(records, fh, lo, hi)
        got = [Record.FromString(v) for v in store.files_record_values([b"A", b"E"], lo=stamps[99])]
        assert [r for r in got if {b"A", b"E"} & {r.fh, r.dir_fh, r.to_dir_fh, r.object_fh}] == [
            r for r in records[100:] if {b"A", b"E"} & {r.fh, r.dir_fh, r.to_dir_fh, r.object_fh}]


def test_a_groups_records_of_one_file_share_one_index_entry(store: ShardStore) -> None:
    """The point of the packed index: one RocksDB put per file per group, not
    per record; a group spanning more than FILE_ENTRY_SPAN_NS takes one more."""
    near = [write_record(i, b"W") for i in range(1, 101)]
    store.ingest(STREAM, batch(0, 100, list(enumerate(near, 1))))
    assert len(file_index_entries(store)) == 1
    late = Stamp(stamp(200).wall_ns + FILE_ENTRY_SPAN_NS + 1, 0, NODE)
    far = [write_record(i, b"W") for i in range(101, 111)]
    far[-1].stamp = late.to_bytes()
    store.ingest(STREAM, batch(100, 110, list(enumerate(far, 101))))
    assert len(file_index_entries(store)) == 3
    assert list(store.file_records(b"W")) == near + far
    assert list(store.file_records(b"W", lo=stamp(150))) == [far[-1]]


def test_a_resend_into_a_store_that_lost_a_record_keeps_the_files_other_entries(
        store: ShardStore) -> None:
    """The first record of a file's entry is lost from the records (a damaged
    store, as nfsj verify's tests make one) while its entry stays; a resend
    of the batch writes that record again, and its entry must keep the
    stamps of the records still held rather than be overwritten."""
    records = [write_record(i, b"W") for i in range(1, 6)]
    store.ingest(STREAM, batch(0, 5, list(enumerate(records, 1))))
    del store._records[b"r/" + records[0].stamp]
    assert list(store.file_records(b"W")) == records[1:]
    store.ingest(STREAM, batch(0, 5, list(enumerate(records, 1))))
    assert list(store.file_records(b"W")) == records
    assert len(file_index_entries(store)) == 1


def test_a_format_3_stores_index_reads_on_beside_packed_entries(tmp_path: Path) -> None:
    """Format 3 indexed each record on its own (an empty value under its
    stamp): opened by this version it is marked format 4 (so an older shard,
    which would take a packed entry for one stamp, refuses it) and reads on,
    old and new entries together."""
    from rocksdict import Options, Rdict

    records = [write_record(i, b"W") for i in range(1, 41)]
    with ShardStore(tmp_path / "shard", 3) as s:
        s.ingest(STREAM, batch(0, 20, list(enumerate(records[:20], 1))))
    db = Rdict(str(tmp_path / "shard"), Options(raw_mode=True))
    try:
        (key, value), = [kv for kv in db.items(from_key=b"f/") if kv[0].startswith(b"f/")]
        del db[key]
        prefix = key[:-16]
        for i in range(0, len(value), 16):
            db[prefix + value[i:i + 16]] = b""
        db[b"m/format"] = (3).to_bytes(4, "big")
    finally:
        db.close()
    with ShardStore(tmp_path / "shard", 3) as s:
        s.ingest(STREAM, batch(20, 40, list(enumerate(records[20:], 21))))
        assert list(s.file_records(b"W")) == records
        assert list(s.file_records(b"W", stamp(30), lo=stamp(10))) == records[10:30]
        assert len(file_index_entries(s)) == 21
    db = Rdict(str(tmp_path / "shard"), Options(raw_mode=True))
    try:
        assert db[b"m/format"] == FORMAT.to_bytes(4, "big") == (4).to_bytes(4, "big")
    finally:
        db.close()


# -- records shipped with their stamp and data split (ShippedRecord.stamp, data_at)


def split_shipped(seq: int, rec: Record, **override) -> ShippedRecord:
    """``record`` as the shipper sends a LOG payload written by ``record_parts``."""
    from logstore.record import record_parts
    head = Record()
    head.CopyFrom(rec)
    head.ClearField("data")
    raw = b"".join(record_parts(head, rec.data))
    fields = dict(seq=seq, record=raw, stamp=rec.stamp, data_at=len(head.SerializeToString()))
    fields.update(override)
    return ShippedRecord(**fields)


def test_a_split_record_is_stored_and_indexed_as_a_parsed_one(store: ShardStore) -> None:
    r1, r2 = write_record(1, b"A", data=b"d" * 5000), write_record(2, b"B")
    r2.dir_fh, r2.object_fh = b"D", b"O"
    b = batch(0, 2, stable=stamp(3))
    b.records.extend([split_shipped(1, r1), split_shipped(2, r2)])
    store.ingest(STREAM, b)
    assert list(store.records()) == [r1, r2]
    assert [r.stamp for r in store.file_records(b"A")] == [r1.stamp]
    assert [r.stamp for r in store.file_records(b"O")] == [r2.stamp]
    assert [r.stamp for r in store.file_records(b"D")] == [r2.stamp]
    without = [Record.FromString(v) for v in store.op_values([Op.WRITE], with_data=False)]
    assert [w.data for w in without] == [b"", b""]
    assert [w.fh for w in without] == [b"A", b"B"]


@pytest.mark.parametrize("fault", ["short_stamp", "other_stamp", "past_end", "mid_field",
                                   "not_a_data_tail", "data_in_head"])
def test_side_fields_that_disagree_with_the_record_refuse_the_batch(store: ShardStore,
                                                                    fault: str) -> None:
    r1 = write_record(1, b"A", data=b"d" * 300)
    good = split_shipped(1, r1)
    raw, at = good.record, good.data_at
    bad = {
        "short_stamp": dict(stamp=r1.stamp[:15]),
        "other_stamp": dict(stamp=stamp(9).to_bytes()),
        "past_end": dict(data_at=len(raw) + 1),
        # a data field tag inside the fh's bytes: the head then ends mid-field
        "mid_field": dict(record=_with_tag_in_fh(r1), data_at=_tag_in_fh_at(_with_tag_in_fh(r1))),
        "not_a_data_tail": dict(data_at=at - 1),
        "data_in_head": dict(record=_data_twice(r1), data_at=len(r1.SerializeToString())),
    }[fault]
    b = batch(0, 1, stable=stamp(2))
    b.records.append(split_shipped(1, r1, **bad))
    with pytest.raises(BatchRefused, match="malformed batch"):
        store.ingest(STREAM, b)
    assert list(store.records()) == [] and store.stream_state(STREAM) == StreamState()


def _with_tag_in_fh(r: Record) -> bytes:
    """``r`` as shipped, its fh ending in what looks like a data field that runs to the end."""
    from logstore.record import record_parts
    head = Record()
    head.CopyFrom(r)
    head.ClearField("data")
    length = 200  # any 2-byte varint: the fh's size does not depend on it
    for _ in range(2):
        head.fh = b"A\x8a\x02" + bytes([length & 0x7F | 0x80, length >> 7])
        raw = b"".join(record_parts(head, r.data))
        length = len(raw) - (_tag_in_fh_at(raw) + 4)
    assert 128 <= length < 1 << 14
    return raw


def _tag_in_fh_at(raw: bytes) -> int:
    return raw.index(b"\x8a\x02")


def _data_twice(r: Record) -> bytes:
    """``r`` serialized with its data, then its data once more as a trailing field."""
    from logstore.record import record_parts
    return r.SerializeToString() + b"".join(record_parts(Record(), r.data))
