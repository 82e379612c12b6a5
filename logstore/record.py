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

from google.protobuf.message import DecodeError

from logstore.pb.journal_pb2 import Attr, Op, Record, SetAttr
from logstore.stamp import Stamp

__all__ = ["Record", "Attr", "SetAttr", "Op", "record_parts", "parse_record", "record_stamp",
           "data_field_at", "split_data", "is_data_tail", "record_and_data"]

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


def is_data_tail(raw: bytes, at: int) -> bool:
    """Whether ``raw[at:]`` is empty or exactly one ``data`` field (tag, length, bytes)."""
    return at == len(raw) or _data_start(raw, at, len(raw)) >= 0


def _data_start(raw: bytes, at: int, end: int) -> int:
    """Where the bytes of the ``data`` field at ``raw[at:end]`` start, if that
    field runs exactly to ``end``; -1 if it does not."""
    if raw[at:at + 2] != _DATA_TAG:
        return -1
    # The length varint, inline: this runs once per record.
    i, value, shift = at + 2, 0, 0
    while i < end and shift < 64:
        b = raw[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return i if i + value == end else -1
        shift += 7
    return -1


def data_field_at(raw: bytes) -> int | None:
    """Where the ``data`` field that ends a serialized Record starts (``record_parts``
    puts it last), so ``raw[:at]`` is the record without its data; None when
    no data field ends it (no data, or data not last: parse to split it).

    The field's tag may also occur inside another field's bytes (a name, a
    handle, the data itself: any bytes a client sends), so a match counts
    only if its length reaches exactly the end and ``raw[:at]`` parses
    without data: a cut inside a field truncates that field and the parse
    fails, so the match found is the record's own last field. Only the head
    is parsed; the data is neither parsed nor copied.
    """
    split = split_data(raw)
    return None if split is None else len(split[1])


def split_data(raw: bytes) -> tuple[Record, bytes] | None:
    """``data_field_at`` with the head it found: ``(head parsed, head)`` where
    ``head`` is ``raw[:at]``; None when no data field ends ``raw``.

    A record from ``record_parts`` splits with one parse of its head, which
    is what a reader that indexes it parses anyway."""
    at = raw.find(_DATA_TAG)
    while at >= 0:
        if is_data_tail(raw, at):
            head_bytes = raw[:at]
            try:
                head = Record.FromString(head_bytes)
            except DecodeError:
                head = None
            if head is not None and not head.data:
                return head, head_bytes
        at = raw.find(_DATA_TAG, at + 1)
    return None


def record_and_data(buf: bytes, start: int, end: int) -> tuple[Record, bytes | memoryview]:
    """The record serialized at ``buf[start:end]`` and its data: a record
    whose ``data`` field ends it (as ``record_parts`` writes it, and as a
    shard stores it) is parsed without its data, which comes back as a view
    of ``buf``, not copied; any other record is parsed whole (its data, if
    any, is then ``record.data``). Raises DecodeError as parsing does."""
    view = memoryview(buf)
    at = buf.find(_DATA_TAG, start, end)
    while at >= 0:
        data_start = _data_start(buf, at, end)
        if data_start >= 0:
            try:
                head = Record.FromString(view[start:at])
            except DecodeError:
                head = None
            if head is not None and not head.data:
                return head, view[data_start:end]
        at = buf.find(_DATA_TAG, at + 1, end)
    record = Record.FromString(view[start:end])
    return record, record.data
