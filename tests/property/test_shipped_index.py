"""A shard's native indexing of shipped frames (``_dataplane.index_shipped_frames``,
used by ``recoveryd.store._parse_frames``) against its Python reference
(``_parse_frames_here``): any record, any op, data or none, data that holds
the data field's own tag, split or whole; and damaged batches. Where the
native path takes a batch it must index it exactly as the reference does;
where it gives up, the reference decides."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from logstore.pb.journal_pb2 import IngestBatch
from logstore.record import Record, record_parts
from logstore.segment import ROUTE_HANDLE, encode_frame
from recoveryd import store

from test_native_record import records

NODE = 7


def _stamped(record: Record, i: int, node: int = NODE) -> Record:
    record.stamp = (1_700_000_000_000_000_000 + i).to_bytes(8, "big") + bytes(4) + node.to_bytes(4, "big")
    return record


def _frames(records: list[Record], split: list[bool], first_seq: int = 1) -> bytes:
    out = []
    for seq, (record, cut) in enumerate(zip(records, split), first_seq):
        if cut and record.data:  # as the LOG writer lays it out: head, then the data field
            data, head = record.data, Record()
            head.CopyFrom(record)
            head.ClearField("data")
            payload = b"".join(record_parts(head, data))
        else:
            payload = record.SerializeToString()
        out.append(encode_frame(seq, payload, record.stamp, ROUTE_HANDLE, 1))
    return b"".join(out)


def _outcome(parse, frames: bytes, after: int, through: int, node: int = NODE):
    rows, markers = {}, []
    try:
        parse(IngestBatch(after_seq=after, through_seq=through), frames, node, rows, markers)
    except ValueError as e:
        return type(e).__name__, str(e)
    return ({k: (r.value, frozenset(r.handles), r.op, r.meta) for k, r in rows.items()},
            list(markers))


tricky_data = st.one_of(st.binary(max_size=64), st.just(b"\x8a\x02\x05tag!!"),
                        st.binary(max_size=8).map(lambda b: b + b"\x8a\x02\x01x"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(records(), tricky_data, st.booleans()), min_size=1, max_size=6))
def test_native_indexing_matches_the_reference(items):
    batch = []
    for i, (record, data, cut) in enumerate(items):
        record.data = data
        batch.append((_stamped(record, i), cut))
    frames = _frames([r for r, _ in batch], [c for _, c in batch])
    through = len(batch)
    assert _outcome(store._parse_frames, frames, 0, through) == \
        _outcome(store._parse_frames_here, frames, 0, through)


@pytest.mark.parametrize("seed", range(20))
def test_damaged_or_foreign_batches_are_judged_by_the_reference(seed: int):
    rng = random.Random(seed)
    batch = [_stamped(Record(op=1, ok=True, fh=b"F%d" % i, data=rng.randbytes(40)), i,
                      NODE if rng.random() < 0.9 else NODE + 1) for i in range(5)]
    frames = bytearray(_frames(batch, [True] * 5))
    for _ in range(rng.choice([0, 1, 3])):
        frames[rng.randrange(len(frames))] ^= 1 << rng.randrange(8)
    after, through = rng.choice([(0, 5), (0, 4), (1, 5)])
    native = _outcome(store._parse_frames, bytes(frames), after, through)
    assert native == _outcome(store._parse_frames_here, bytes(frames), after, through)
