"""Batches of LOG frames (logstore.shipped): what a shipper builds from a real
LOG, what a shard makes of it, and batches that are cut short or damaged.

The store and gRPC tests use a real RocksDB and a real server on loopback.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore.hlc import HLC
from logstore.log import Log
from logstore.pb.journal_pb2 import IngestBatch, Op, Record, ShippedRecord, StreamId
from logstore.pb.journal_pb2_grpc import JournalStub
from logstore.record import record_parts
from logstore.segment import NO_STAMP, ROUTE_HANDLE, encode_frame
from logstore.shipped import (SentBatch, ShippedFramesError, frames_size, iter_frames, receive_batch,
                               serialize_batch)
from logstore.stamp import Stamp
from recoveryd.frontier import BatchRefused, StreamKey
from recoveryd.server import start_server
from recoveryd.store import ShardStore

NODE = 7
STREAM = StreamKey(NODE, "log-f")
WALL0 = 1_700_000_000_000_000_000


def stamp(i: int, node: int = NODE) -> bytes:
    return Stamp(WALL0 + i * 1000, 0, node).to_bytes()


def write_record(i: int, fh: bytes = b"F", data: bytes = b"d" * 300, node: int = NODE) -> Record:
    return Record(stamp=stamp(i, node), op=Op.WRITE, ok=True, fh=fh, offset=i, count=len(data),
                  data=data)


def payload_of(record: Record) -> bytes:
    """The record as the proxy journals it: its data last (record_parts)."""
    head = Record()
    head.CopyFrom(record)
    head.ClearField("data")
    return b"".join(record_parts(head, record.data))


def frames_of(records: list[tuple[int, Record]]) -> bytes:
    return b"".join(encode_frame(seq, payload_of(r), r.stamp, ROUTE_HANDLE, 1) for seq, r in records)


def frames_batch(after: int, through: int, frames: bytes, node: int = NODE) -> IngestBatch:
    return IngestBatch(stream=StreamId(node_id=node, log_id=STREAM.log_id), after_seq=after,
                       through_seq=through, frames=frames)


# -- the buffer ------------------------------------------------------------------------


def test_frames_from_a_real_log_read_back_as_written(tmp_path: Path) -> None:
    from logstore.shipped import frame_of
    records = [write_record(i, data=bytes([i]) * (i * 37)) for i in range(1, 30)]
    with Log.open(tmp_path / "log") as log:
        for r in records:
            log.append(payload_of(r), stamp=r.stamp, route_kind=ROUTE_HANDLE, route=1)
        log.sync()
        with log.read(1) as cursor:
            frames = b"".join(bytes(frame_of(f)) for f in cursor.frames())
    got = [(seq, st, frames[a:b]) for seq, st, a, b in iter_frames(frames)]
    assert got == [(i, r.stamp, payload_of(r)) for i, r in enumerate(records, 1)]
    assert frames_size(frames) == (len(records), sum(len(payload_of(r)) for r in records))


@given(st.lists(st.tuples(st.binary(min_size=16, max_size=16), st.binary(max_size=600)),
                max_size=12),
       st.integers(0, 1 << 40))
def test_frames_round_trip(items: list[tuple[bytes, bytes]], after: int) -> None:
    frames = b"".join(encode_frame(after + k, p, s, ROUTE_HANDLE, 3)
                      for k, (s, p) in enumerate(items, 1))
    got = [(seq, s, frames[a:b]) for seq, s, a, b in iter_frames(frames, after)]
    assert got == [(after + k, s, p) for k, (s, p) in enumerate(items, 1)]


def _frames_for_damage() -> bytes:
    return frames_of([(seq, write_record(seq, data=bytes(range(seq * 10)))) for seq in (1, 2, 3)])


@given(st.data())
def test_a_damaged_byte_is_refused(data) -> None:
    frames = bytearray(_frames_for_damage())
    at = data.draw(st.integers(0, len(frames) - 1))
    frames[at] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ShippedFramesError):
        list(iter_frames(bytes(frames)))


@given(st.data())
def test_a_cut_batch_is_refused_or_ends_on_a_frame(data) -> None:
    whole = _frames_for_damage()
    cut = data.draw(st.integers(0, len(whole) - 1))
    ends = [0] + [b for _, _, _, b in iter_frames(whole)]
    if cut in ends:
        assert len(list(iter_frames(whole[:cut]))) == ends.index(cut)
    else:
        with pytest.raises(ShippedFramesError):
            list(iter_frames(whole[:cut]))


def test_seqs_must_rise_above_the_batch_start() -> None:
    r = write_record(1)
    with pytest.raises(ShippedFramesError, match="does not follow"):
        list(iter_frames(frames_of([(5, r), (5, r)])))
    with pytest.raises(ShippedFramesError, match="does not follow"):
        list(iter_frames(frames_of([(5, r)]), after_seq=5))


# -- the message -----------------------------------------------------------------------


@given(st.binary(max_size=300), st.integers(0, 1 << 63), st.integers(0, 1 << 63),
       st.binary(max_size=16), st.booleans(), st.text(max_size=20))
def test_receive_batch_leaves_the_frames_in_the_message(frames, after, through, stable, gap, log_id):
    sent = IngestBatch(stream=StreamId(node_id=3, log_id=log_id), after_seq=after,
                       through_seq=through, stable=stable, gap=gap, frames=frames,
                       sent_stamp=b"s" * 16)
    wire = sent.SerializeToString()
    got = receive_batch(wire)
    assert bytes(got.frames) == frames and got.nbytes == len(wire)
    rest = IngestBatch()
    rest.CopyFrom(sent)
    rest.ClearField("frames")
    assert got.batch == rest


@given(frames=st.binary(max_size=3000), after=st.integers(0, 2**64 - 1), stable=st.binary(max_size=16),
       log_id=st.text(max_size=16))
def test_a_sent_batch_is_the_message_protobuf_would_write(frames, after, stable, log_id):
    """serialize_batch appends the frames; what it writes is what a protobuf
    serializer writes for the same message, and receive_batch reads it back."""
    head = IngestBatch(stream=StreamId(node_id=3, log_id=log_id), after_seq=after, stable=stable,
                       sent_stamp=b"s" * 16)
    whole = IngestBatch()
    whole.CopyFrom(head)
    whole.frames = frames
    wire = serialize_batch(SentBatch(head, frames))
    assert wire == whole.SerializeToString()
    got = receive_batch(wire)
    assert bytes(got.frames) == frames and got.batch == head
    assert serialize_batch(head) == head.SerializeToString()
    if frames:
        with pytest.raises(ValueError):
            serialize_batch(SentBatch(whole, frames))   # frames given twice


def test_receive_batch_parses_other_layouts_whole() -> None:
    head = IngestBatch(after_seq=1, through_seq=2).SerializeToString()
    frames_first = IngestBatch(frames=b"abc").SerializeToString() + head
    got = receive_batch(frames_first)
    assert (bytes(got.frames), got.batch.after_seq, got.batch.through_seq) == (b"abc", 1, 2)
    twice = IngestBatch(frames=b"ab").SerializeToString() + IngestBatch(frames=b"c").SerializeToString()
    assert bytes(receive_batch(twice).frames) == b"c"  # protobuf: the last one wins
    with pytest.raises(Exception):
        receive_batch(head + b"\x4a\x10ab")  # a frames field cut short does not parse


# -- the store -------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path):
    s = ShardStore(tmp_path / "shard", 1)
    yield s
    s.close()


def test_frames_are_stored_and_indexed_as_shipped_records_are(tmp_path: Path) -> None:
    r1, r2 = write_record(1, b"A", data=b"x" * 5000), write_record(2, b"B")
    r2.dir_fh, r2.object_fh = b"D", b"O"
    r3 = Record(stamp=stamp(3), op=Op.CREATE, ok=True, dir_fh=b"D", name=b"n", fh=b"C")
    gap = Record(stamp=stamp(4), op=Op.GAP, gap_cause="torn_tail", gap_reason="why")
    records = [(1, r1), (2, r2), (3, r3), (4, gap)]
    as_records = IngestBatch(
        stream=StreamId(node_id=NODE, log_id=STREAM.log_id), after_seq=0, through_seq=5,
        records=[ShippedRecord(seq=seq, record=payload_of(r)) for seq, r in records])
    stores = [ShardStore(tmp_path / name, 1) for name in ("frames", "records")]
    try:
        states = [stores[0].ingest(STREAM, frames_batch(0, 5, frames_of(records))),
                  stores[1].ingest(STREAM, as_records)]
        assert states[0] == states[1] and states[0].durable_seq == 5
        assert [g.cause for g in states[0].gaps] == ["torn_tail"]
        for s in stores:
            assert list(s.records()) == [r for _, r in records]
            assert [r.stamp for r in s.file_records(b"D")] == [r2.stamp, r3.stamp]
            assert [r.stamp for r in s.file_records(b"O")] == [r2.stamp]
            without = [Record.FromString(v) for v in s.op_values([], with_data=False)]
            assert [w.data for w in without] == [b""] * 4
        held = [[kv for kv in [*s._scan(b"", b"\xff"), *s._scan(b"", b"\xff", s._records)]
                 if kv[0][:2] in (b"r/", b"f/", b"p/")] for s in stores]
        assert held[0] == held[1] and len(held[0]) == 4 + 5 + 4  # records, files named, ops
    finally:
        for s in stores:
            s.close()


def test_a_record_without_its_data_last_is_split_by_a_whole_parse(store: ShardStore) -> None:
    r = write_record(1, data=b"z" * 100)
    r.attr.size = 100  # serialized whole, attr follows data
    frames = encode_frame(1, r.SerializeToString(), r.stamp, ROUTE_HANDLE, 1)
    store.ingest(STREAM, frames_batch(0, 1, frames))
    assert list(store.records()) == [r]
    (meta,) = store.op_values([Op.WRITE], with_data=False)
    assert Record.FromString(meta).data == b"" and Record.FromString(meta).attr.size == 100


def test_a_frame_without_a_header_stamp_takes_the_records(store: ShardStore) -> None:
    r = write_record(1)
    store.ingest(STREAM, frames_batch(0, 1, encode_frame(1, payload_of(r), NO_STAMP)))
    assert list(store.records()) == [r]


@pytest.mark.parametrize("fault", ["crc", "cut", "seq_outside", "seq_repeats", "other_stamp",
                                   "not_a_record", "other_node", "records_too"])
def test_a_bad_batch_is_refused_whole_and_the_stream_goes_on(store: ShardStore, fault: str) -> None:
    good = [(1, write_record(1)), (2, write_record(2))]
    frames = frames_of(good)
    through = 2
    if fault == "crc":
        frames = frames[:-1] + bytes([frames[-1] ^ 1])
    elif fault == "cut":
        frames = frames[:-1]
    elif fault == "seq_outside":
        through = 1
    elif fault == "seq_repeats":
        frames = frames_of([good[0], good[0]])
    elif fault == "other_stamp":
        r = good[1][1]
        frames = frames_of(good[:1]) + encode_frame(2, payload_of(r), stamp(9), ROUTE_HANDLE, 1)
    elif fault == "not_a_record":
        frames = frames_of(good[:1]) + encode_frame(2, b"\xff\xff\xff", stamp(2), ROUTE_HANDLE, 1)
    elif fault == "other_node":
        frames = frames_of([good[0], (2, write_record(2, node=NODE + 1))])
    bad = frames_batch(0, through, frames)
    if fault == "records_too":
        bad.records.add(seq=1, record=payload_of(good[0][1]))
    with pytest.raises(BatchRefused, match="malformed batch|stamped .* by node"):
        store.ingest(STREAM, bad)
    assert list(store.records()) == [] and store.stream_state(STREAM).durable_seq == 0
    assert store.node_refusals_total == (1 if fault == "other_node" else 0)
    # The same range, sent again intact, is taken.
    assert store.ingest(STREAM, frames_batch(0, 2, frames_of(good))).durable_seq == 2
    assert list(store.records()) == [r for _, r in good]


# -- over gRPC ---------------------------------------------------------------------------


def test_a_shard_refuses_a_damaged_batch_in_its_ack_and_takes_the_next(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    store = ShardStore(tmp_path / "shard", 1)
    hlc = HLC(store.node_id)
    server = asyncio.run_coroutine_threadsafe(start_server(store, hlc, "127.0.0.1", 0), loop).result(30)
    try:
        good = [(1, write_record(1)), (2, write_record(2, b"G"))]
        frames = frames_of(good)
        now = Stamp(time.time_ns(), 0, NODE).to_bytes()
        batches = [frames_batch(0, 0, b""), frames_batch(0, 2, frames[:-3]),
                   frames_batch(0, 2, frames)]
        for b in batches:
            b.sent_stamp = now
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            acks = list(JournalStub(channel).Ingest(iter(batches), timeout=30))
        assert acks[0].reads_frames and acks[0].error == ""
        assert "malformed batch" in acks[1].error and acks[1].durable_seq == 0
        assert acks[2].error == "" and acks[2].durable_seq == 2
        assert list(store.records()) == [r for _, r in good]
        counters = server.servicer.counters
        assert (counters.records_total, counters.refusals_total) == (2, 1)
        assert counters.bytes_total == sum(len(payload_of(r)) for _, r in good)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(1.0), loop).result(30)
        store.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
