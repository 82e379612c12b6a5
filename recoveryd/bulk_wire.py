"""The bulk stream's wire format, without I/O: what a restore client and a
shard's bulk port say to each other (recoveryd/bulk_server.py serves it,
recoveryd/restore/bulk_stream.py reads it).

A bulk stream carries the records of one ``ScanChunks`` or
``FilesRecordChunks`` request on a TCP connection of its own, where each
byte is copied once into the kernel and once out of it. gRPC, for the same
bytes, copies them into its slices, its HTTP/2 frames and a Python object on
each side; on a restore those copies cost more than the disk.

The client speaks first and once::

    HELLO = b"NFSJBULK" | version (1 byte) | ticket (32 bytes)

The ticket came from ``Restore.OpenBulk``, the call that was authorized.
The shard then sends frames, each ``kind (1 byte) | length (4 bytes, big
endian) | payload``:

* ``D``: records, in stamp order, as a ``RecordChunk`` in wire form (each
  record as field 1, length-delimited), the same bytes as a ``ScanChunks``
  message;
* ``E``: the end: ``frames (8 bytes) | bytes (8 bytes)``, the number of
  ``D`` frames and of their payload bytes. Only this makes a stream
  complete: a connection that closes before its end frame was cut short,
  and the client says so rather than restoring less than the journal holds;
* ``X``: the shard refuses or failed: UTF-8 text, one line. Nothing follows.
"""

from __future__ import annotations

import struct

__all__ = ["MAGIC", "VERSION", "TICKET_BYTES", "HELLO_BYTES", "HEADER_BYTES", "END_BYTES",
           "DATA", "END", "ERROR", "MAX_FRAME_BYTES", "MAX_ERROR_BYTES", "BulkWireError",
           "hello", "parse_hello", "header", "parse_header", "end_payload", "parse_end",
           "error_payload"]

MAGIC = b"NFSJBULK"
VERSION = 1
TICKET_BYTES = 32
HELLO_BYTES = len(MAGIC) + 1 + TICKET_BYTES
HEADER_BYTES = 5
END_BYTES = 16
DATA, END, ERROR = b"D"[0], b"E"[0], b"X"[0]
#: A frame longer than this is refused unread: a D frame is 4 MiB of records
#: and at most one more (a record is at most an ingest message, 64 MiB).
MAX_FRAME_BYTES = 128 << 20
MAX_ERROR_BYTES = 4096

_HEADER = struct.Struct(">BI")
_END = struct.Struct(">QQ")


class BulkWireError(ValueError):
    """Bytes that are not the bulk protocol; the message says what was wrong."""


def hello(ticket: bytes) -> bytes:
    """The client's first and only message."""
    if len(ticket) != TICKET_BYTES:
        raise BulkWireError(f"a ticket is {TICKET_BYTES} bytes, not {len(ticket)}")
    return MAGIC + bytes((VERSION,)) + ticket


def parse_hello(raw: bytes) -> bytes:
    """The ticket of a client's hello (exactly HELLO_BYTES)."""
    if len(raw) != HELLO_BYTES or raw[:len(MAGIC)] != MAGIC:
        raise BulkWireError("not a bulk stream hello")
    if raw[len(MAGIC)] != VERSION:
        raise BulkWireError(f"bulk protocol version {raw[len(MAGIC)]} is not served "
                            f"(this shard speaks {VERSION})")
    return bytes(raw[len(MAGIC) + 1:])


def header(kind: int, length: int) -> bytes:
    return _HEADER.pack(kind, length)


def parse_header(raw: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(kind, payload length) of a frame header (exactly HEADER_BYTES)."""
    if len(raw) != HEADER_BYTES:
        raise BulkWireError("a frame header is cut short")
    kind, length = _HEADER.unpack(raw)
    if kind == DATA:
        if length > MAX_FRAME_BYTES:
            raise BulkWireError(f"a frame of {length} bytes (at most {MAX_FRAME_BYTES})")
    elif kind == END:
        if length != END_BYTES:
            raise BulkWireError(f"an end frame of {length} bytes (not {END_BYTES})")
    elif kind == ERROR:
        if length > MAX_ERROR_BYTES:
            raise BulkWireError(f"an error frame of {length} bytes (at most {MAX_ERROR_BYTES})")
    else:
        raise BulkWireError(f"unknown frame kind {kind:#04x}")
    return kind, length


def end_payload(frames: int, nbytes: int) -> bytes:
    return _END.pack(frames, nbytes)


def parse_end(raw: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(D frames, their payload bytes) that an end frame says were sent."""
    if len(raw) != END_BYTES:
        raise BulkWireError("an end frame is cut short")
    return _END.unpack(raw)


def error_payload(text: str) -> bytes:
    """One line of UTF-8, cut to MAX_ERROR_BYTES."""
    line = " ".join(text.split()) or "error"
    return line.encode("utf-8", "replace")[:MAX_ERROR_BYTES]
