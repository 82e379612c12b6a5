"""logstore.record: the split between a record and its trailing data field."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from logstore.record import Op, Record, data_field_at, is_data_tail, record_and_data, record_parts

TAG = b"\x8a\x02"  # the data field's tag
# Bytes rich in the data tag and in varints, so false matches are common.
tricky = st.lists(st.sampled_from([TAG, b"\x80", b"\x01", b"\x05", b"\xff", b"a", b"\x00"]),
                  max_size=12).map(b"".join)


@given(name=tricky, fh=tricky, data=tricky, xid=st.integers(0, 2**32 - 1))
def test_the_split_is_the_records_own_data_field(name: bytes, fh: bytes, data: bytes,
                                                 xid: int) -> None:
    head = Record(stamp=bytes(range(16)), op=Op.WRITE, name=name, fh=fh, xid=xid)
    raw = b"".join(record_parts(head, data))
    at = data_field_at(raw)
    if data:
        assert at == len(head.SerializeToString())
        assert is_data_tail(raw, at)
    else:
        assert at is None


@given(name=tricky, attr_size=st.integers(0, 2**40))
def test_a_record_whose_data_is_not_last_gives_no_split(name: bytes, attr_size: int) -> None:
    # data (33) serializes before attr (50): no data field ends the record,
    # whatever the client-chosen name holds.
    record = Record(stamp=bytes(16), op=Op.CREATE, name=name, data=b"xy")
    record.attr.size = attr_size
    assert data_field_at(record.SerializeToString()) is None


def test_a_fake_data_field_inside_a_name_is_not_taken() -> None:
    head = Record(stamp=bytes(16), op=Op.WRITE)
    data = b"z" * 300
    for _ in range(2):  # the name's size does not depend on the length it claims
        length = 200
        head.name = TAG + bytes([length & 0x7F | 0x80, length >> 7])
        raw = b"".join(record_parts(head, data))
        length = len(raw) - (raw.index(TAG) + 4)
        head.name = TAG + bytes([length & 0x7F | 0x80, length >> 7])
        raw = b"".join(record_parts(head, data))
    assert is_data_tail(raw, raw.index(TAG))  # the fake one reaches the end too
    assert data_field_at(raw) == len(head.SerializeToString())


@given(name=tricky, fh=tricky, data=tricky, before=tricky, after=tricky,
       attr_size=st.one_of(st.none(), st.integers(0, 2**40)))
def test_a_record_comes_apart_from_its_data_wherever_it_lies(name: bytes, fh: bytes, data: bytes,
                                                             before: bytes, after: bytes,
                                                             attr_size: int | None) -> None:
    """What a bulk reader gets from a chunk of many records: the record as
    parsed whole, less its data, and exactly its data, however it was
    serialized, whatever lies around it."""
    record = Record(stamp=bytes(range(16)), op=Op.WRITE, name=name, fh=fh)
    if attr_size is None:
        raw = b"".join(record_parts(record, data))      # data last: split, not copied
    else:
        record.attr.size = attr_size
        record.data = data
        raw = record.SerializeToString()               # data before attr: parsed whole
        record.ClearField("data")
    buf = before + raw + after
    head, got = record_and_data(buf, len(before), len(before) + len(raw))
    assert bytes(got) == data
    head.ClearField("data")
    assert head == record
    if attr_size is None and data:
        assert isinstance(got, memoryview) and got.obj is buf
