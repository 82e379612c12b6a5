"""LOG frames as an ingest batch carries them: back to back, exactly as stored.

A shipper sends the records of a batch as one ``bytes`` field
(``IngestBatch.frames``): each record's version 2 LOG frame (40-byte header,
then the serialized ``Record``; ``logstore/FORMAT.md``), one after the
other, copied from the segment file without being parsed. The frame header
already says what a shard needs before it parses anything: the record's LOG
seq, its stamp, and a CRC that covers both and the record's bytes. So the
records cross gRPC as one buffer (not one protobuf message each), and the
shard checks each one end to end, from the proxy's disk to its own, with
the CRC the proxy's LOG writer computed.

``iter_frames`` is the shard's side: it walks a buffer and refuses it
(``ShippedFramesError``) at the first frame that is cut short, fails its
CRC, or whose seq does not rise. ``receive_batch`` decodes an IngestBatch
as gRPC hands it over, leaving the frames where they lie in the message's
bytes (a protobuf parse would copy them, and each read of the field again).
``serialize_batch`` is its mirror on the shipper's side: the frames are
appended after the batch's other fields, not set into the message first.
``frame_of`` is the shipper's side for a frame that has no version 2 form
on disk (a version 1 segment).
"""

from __future__ import annotations

import struct
from typing import Iterator, NamedTuple

import crc32c

from .pb.journal_pb2 import IngestBatch
from .segment import HEADER, HEADER_BYTES, NO_STAMP, ROUTE_UNKNOWN, Frame, encode_frame

__all__ = ["ShippedFramesError", "ReceivedBatch", "receive_batch", "SentBatch", "serialize_batch",
           "iter_frames", "frames_size", "frame_of", "FRAME_HEADER_BYTES"]

FRAME_HEADER_BYTES = HEADER_BYTES
# payload_len, crc, seq, stamp: the fields a shard reads (route is the shipper's).
_HEAD = struct.Struct(">IIQ16s")
_CRC_FROM = 8  # the CRC covers the header from the seq on, then the payload
if HEADER.size != 40 or _HEAD.size != 32:  # pragma: no cover  (FORMAT.md's layout)
    raise ImportError("logstore.shipped expects FORMAT.md's 40-byte frame header")


class ShippedFramesError(ValueError):
    """A buffer of shipped frames is malformed; the message says where and how."""


class ReceivedBatch(NamedTuple):
    """An IngestBatch as received: ``batch`` holds every field but the frames,
    which are ``frames`` (a view of the message's bytes); ``nbytes`` is the
    message's size."""

    batch: IngestBatch
    frames: memoryview | bytes
    nbytes: int


_FRAMES_KEY = IngestBatch.DESCRIPTOR.fields_by_name["frames"].number << 3 | 2  # length-delimited


class SentBatch(NamedTuple):
    """An IngestBatch to send: ``batch`` holds every field but the frames
    (left empty), which are ``frames``."""

    batch: IngestBatch
    frames: bytes | memoryview


def serialize_batch(message: IngestBatch | SentBatch) -> bytes:
    """The wire form of a batch (a gRPC request serializer). A SentBatch's
    frames follow its other fields as the frames field, the layout a
    serializer writes and ``receive_batch`` reads, so its megabytes are copied
    once, here, not into the message and again out of it."""
    if isinstance(message, IngestBatch):
        return message.SerializeToString()
    batch, frames = message
    if batch.frames:
        raise ValueError("SentBatch.batch.frames must be empty: the frames go in SentBatch.frames")
    head = batch.SerializeToString()
    if not frames:
        return head
    return b"".join((head, _varint_bytes(_FRAMES_KEY), _varint_bytes(len(frames)), frames))


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def receive_batch(wire: bytes) -> ReceivedBatch:
    """Decode a serialized IngestBatch, its frames left in ``wire``.

    A serializer writes fields in number order, so the frames (the highest
    number) come last: the fields before them are parsed as usual and the
    frames are a view of the rest. Any other layout (a frames field that is
    not last, or given twice) is parsed whole. Raises what the protobuf
    parser raises for a message that does not parse."""
    view = memoryview(wire)
    at = _last_field_at(view, _FRAMES_KEY)
    if at is None:
        batch = IngestBatch.FromString(wire)
        return ReceivedBatch(batch, batch.frames, len(wire))
    tag_at, start = at
    return ReceivedBatch(IngestBatch.FromString(view[:tag_at]), view[start:], len(wire))


def _last_field_at(view: memoryview, key: int) -> tuple[int, int] | None:
    """(where its tag starts, where its bytes start) when the last top-level
    field of ``view`` is the length-delimited field ``key`` and no field
    before it is; else None. Walks the top level only (a batch has a few
    fields besides its frames)."""
    pos, end = 0, len(view)
    while pos < end:
        tag_at = pos
        field_key, pos = _varint(view, pos)
        wire_type = field_key & 7
        if wire_type == 0:
            _, pos = _varint(view, pos)
        elif wire_type == 2:
            length, pos = _varint(view, pos)
            if field_key == key:
                return (tag_at, pos) if pos + length == end else None
            pos += length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            return None
    return None


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    end = len(view)
    while pos < end and shift < 64:
        b = view[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
    return -1, end + 1  # cut short: the caller's walk ends and parses the message whole


def frame_of(frame: Frame, stamp: bytes = NO_STAMP) -> bytes | memoryview:
    """``frame`` as shipped: its stored bytes when it is a version 2 frame,
    else a version 2 frame made for it (with ``stamp`` when known)."""
    if frame.whole is not None:
        return frame.whole
    return encode_frame(frame.seq, frame.payload, stamp or NO_STAMP, ROUTE_UNKNOWN, 0)


def iter_frames(frames: bytes, after_seq: int = 0) -> Iterator[tuple[int, bytes, int, int]]:
    """``(seq, stamp, start, end)`` of each frame in ``frames``: its payload is
    ``frames[start:end]``. Seqs must rise above ``after_seq``, one frame to
    the next; every CRC must match. Raises ``ShippedFramesError`` at the
    first fault (frames before it have been yielded: a caller that must not
    act on part of a batch collects first)."""
    view = memoryview(frames)
    total = len(view)
    pos, last = 0, after_seq
    head = _HEAD.unpack_from
    crc = crc32c.crc32c
    while pos < total:
        start = pos + HEADER_BYTES
        if start > total:
            raise ShippedFramesError(f"frame at byte {pos}: {total - pos} bytes left, less "
                                     f"than a frame header")
        length, stored, seq, stamp = head(view, pos)
        end = start + length
        if end > total:
            raise ShippedFramesError(f"frame at byte {pos} (seq {seq}): its {length}-byte record "
                                     f"runs past the end of the batch")
        if crc(view[pos + _CRC_FROM:end]) != stored:
            raise ShippedFramesError(f"frame at byte {pos} (seq {seq}): CRC mismatch")
        if seq <= last:
            raise ShippedFramesError(f"frame at byte {pos}: seq {seq} does not follow seq {last}")
        last = seq
        yield seq, stamp, start, end
        pos = end


def frames_size(frames: bytes) -> tuple[int, int]:
    """(frames, payload bytes) in a buffer of frames, from their headers alone
    (for counters: nothing is checked; a malformed tail counts as it reads)."""
    total, pos, count, nbytes = len(frames), 0, 0, 0
    length_at = struct.Struct(">I").unpack_from
    while pos + HEADER_BYTES <= total:
        length = length_at(frames, pos)[0]
        count += 1
        nbytes += length
        pos += HEADER_BYTES + length
    return count, nbytes
