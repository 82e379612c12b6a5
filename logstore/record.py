"""The journal record format: a protobuf `Record` whose data bytes ride along
without being copied.

Protobuf parsers merge repeated occurrences of a message's fields, so a
serialized Record *without* its `data` field, followed by a hand-written
`data` field (tag, varint length, raw bytes), parses as one Record with
`data` set. `record_parts` uses that to hand the LOG a list of buffers in
which the WRITE payload is the caller's own memoryview: the bytes travel
from the client's socket buffer to the segment file with one copy (the
kernel's).
"""

from __future__ import annotations

from logstore.pb.journal_pb2 import Attr, Op, Record, SetAttr
from logstore.stamp import Stamp

__all__ = ["Record", "Attr", "SetAttr", "Op", "record_parts", "parse_record", "record_stamp"]

def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_DATA_TAG = _varint(Record.DESCRIPTOR.fields_by_name["data"].number << 3 | 2)  # wire type 2: bytes


def record_parts(record: Record, data: bytes | memoryview | None = None) -> list[bytes | memoryview]:
    """Serialize `record`, appending `data` as its data field without copying it.

    `record.data` must be empty when `data` is given.
    """
    head = record.SerializeToString()
    if not data:
        return [head]
    if record.data:
        raise ValueError("record.data is already set; pass the payload once")
    return [head, _DATA_TAG + _varint(len(data)), data]


def parse_record(payload: bytes | memoryview, seq: int = 0) -> Record:
    """Parse a LOG payload back into a Record, noting its LOG sequence."""
    record = Record()
    record.ParseFromString(payload)
    if seq:
        record.seq = seq
    return record


def record_stamp(record: Record) -> Stamp:
    return Stamp.from_bytes(record.stamp)
