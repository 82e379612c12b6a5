"""One LOG segment file: frame encoding, writing, validated reading, tail recovery.

A segment is a segment header followed by back-to-back frames; the byte
layout is specified in ``logstore/FORMAT.md`` (and checked against the
cross-language vectors in ``tests/vectors/``). Format version 2 frames carry
the record's routing fields (stamp, route), so a shipper can route a record
without parsing it; version 1 segments (no segment header, 16-byte frame
headers) are still read. This module knows a single file; ``logstore.log``
strings segments together and decides policy (which segment is active, what
a bad frame means where).
"""

from __future__ import annotations

import bisect
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import crc32c

__all__ = [
    "HEADER", "HEADER_BYTES", "HEADER_V1", "SEGMENT_HEADER", "SEGMENT_HEADER_BYTES",
    "FORMAT_VERSION", "ROUTE_UNKNOWN", "ROUTE_HANDLE", "ROUTE_EVERY_SHARD", "ROUTE_INTENT", "NO_STAMP",
    "Frame", "LogError", "LogCorruptError", "Segment", "SegmentReader",
    "ScanResult", "Buffer", "Payload", "frame_crc", "encode_frame", "payload_parts",
    "segment_name", "parse_segment_name", "scan_segment", "find_valid_frame",
    "read_segment_version",
]

FORMAT_VERSION = 2
# payload_len, crc32c(header[8:] | payload), seq, stamp, route, route_kind, 3 zero bytes
HEADER = struct.Struct(">IIQ16sIB3x")
HEADER_BYTES = HEADER.size
HEADER_V1 = struct.Struct(">IIQ")  # payload_len, crc32c(seq | payload), seq
_SEGMENT_MAGIC = b"NJLOGSEG"
# magic, format version, frame header bytes, reserved (zero)
_SEGMENT_HEADER = struct.Struct(">8sHHI")
SEGMENT_HEADER = _SEGMENT_HEADER.pack(_SEGMENT_MAGIC, FORMAT_VERSION, HEADER_BYTES, 0)
SEGMENT_HEADER_BYTES = len(SEGMENT_HEADER)
_HEADERS = {1: HEADER_V1, 2: HEADER}
_DATA_START = {1: 0, 2: SEGMENT_HEADER_BYTES}
MAX_PAYLOAD_BYTES = (1 << 32) - 1
NO_STAMP = bytes(16)
# route_kind: how a shipper routes the frame without parsing its payload.
ROUTE_UNKNOWN = 0  # the writer gave no route: parse the record to route it
ROUTE_HANDLE = 1  # route is crc32c(routing file handle); shard = route % n_shards
ROUTE_EVERY_SHARD = 2  # the record goes to every shard (route is 0)
ROUTE_INTENT = 3  # a write-ahead intent: stays in this LOG, no shard gets it (route is 0)
_ROUTE_KINDS = (ROUTE_UNKNOWN, ROUTE_HANDLE, ROUTE_EVERY_SHARD, ROUTE_INTENT)
_SEQ = struct.Struct(">Q")
_SEQ_AT = 8  # the seq's offset in a frame header, in both versions
_NAME = re.compile(r"([0-9]{20})\.seg")
_NONZERO = re.compile(rb"[^\x00]")
MAX_PARTS = 1000  # pwritev takes at most IOV_MAX (1024) buffers, one is the header

Buffer = bytes | bytearray | memoryview
Payload = Buffer | Sequence[Buffer]  # one buffer, or a list/tuple of parts
READ_CHUNK_BYTES = 1 << 20
# A sparse seq -> offset index lets a cursor start near its seq instead of at 0.
INDEX_INTERVAL_BYTES = 64 << 10


class LogError(Exception):
    """Base class of every LOG failure."""


class LogCorruptError(LogError):
    """The LOG on disk is not what this code wrote: a frame failed validation
    where a crash cannot explain it. ``path`` and ``offset`` locate the frame."""

    def __init__(self, path: str, offset: int, reason: str, *, discontinuity: bool = False):
        super().__init__(f"{path}: corrupt LOG frame at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason
        # A well-formed frame with the wrong seq: never a torn write.
        self.discontinuity = discontinuity


def segment_name(base_seq: int) -> str:
    """File name of the segment whose first seq is ``base_seq``; sorts in seq order."""
    return f"{base_seq:020d}.seg"


def parse_segment_name(name: str) -> int | None:
    """Base seq encoded in a segment file name, or None if ``name`` is not a segment."""
    match = _NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def frame_crc(covered: Buffer, *parts: Buffer) -> int:
    """CRC32C over the frame header's bytes after the CRC field (``covered``),
    then the payload parts, without joining them."""
    crc = crc32c.crc32c(covered)
    for part in parts:
        crc = crc32c.crc32c(part, crc)
    return crc


class Frame(NamedTuple):
    """One validated frame: its seq, payload and routing fields.

    ``stamp`` is the record's 16-byte stamp (``NO_STAMP`` when the writer gave
    none, and for version 1 frames); ``route_kind``/``route`` say which shard
    takes the record (``ROUTE_*``). ``whole`` is the frame as stored, header
    and payload (version 2 only; None for version 1): a shipper sends it on
    as it is (``logstore.shipped``).
    """

    seq: int
    payload: memoryview
    stamp: bytes = NO_STAMP
    route_kind: int = ROUTE_UNKNOWN
    route: int = 0
    whole: memoryview | None = None


def _frame_header(seq: int, nbytes: int, parts: Sequence[Buffer], stamp: bytes,
                  route_kind: int, route: int) -> bytes:
    if len(stamp) != 16:
        raise ValueError(f"a frame's stamp is 16 bytes, got {len(stamp)}")
    if route_kind not in _ROUTE_KINDS:
        raise ValueError(f"unknown route_kind {route_kind}")
    covered = HEADER.pack(0, 0, seq, stamp, route, route_kind)[_SEQ_AT:]
    return struct.pack(">II", nbytes, frame_crc(covered, *parts)) + covered


def encode_frame(seq: int, payload: Buffer, stamp: bytes = NO_STAMP,
                 route_kind: int = ROUTE_UNKNOWN, route: int = 0, *, version: int = 2) -> bytes:
    """One whole frame as bytes (tests and test vectors; the LOG writes parts)."""
    if version == 1:
        return HEADER_V1.pack(len(payload), frame_crc(_SEQ.pack(seq), payload), seq) + \
            bytes(payload)
    return _frame_header(seq, len(payload), (payload,), stamp, route_kind, route) + \
        bytes(payload)


def payload_parts(payload: Payload) -> tuple[Sequence[Buffer], int]:
    """``(parts, total bytes)`` of a payload given whole or as a list/tuple of parts.

    Parts let a caller frame a record around a large buffer it does not own
    (e.g. NFS WRITE data) without joining them into a new bytes.
    """
    parts = payload if isinstance(payload, (list, tuple)) else (payload,)
    if len(parts) > MAX_PARTS:
        raise ValueError(f"a payload has at most {MAX_PARTS} parts, got {len(parts)}")
    return parts, sum(memoryview(part).nbytes for part in parts)


class Segment:
    """Bookkeeping for one segment file, and its write handle while active.

    ``size`` counts only complete frames: readers never read past it, so they
    never see a frame that is half written.
    """

    __slots__ = ("path", "base_seq", "size", "last_seq", "sealed", "version", "_fd", "_index")

    def __init__(self, path: str, base_seq: int, size: int, *, last_seq: int | None,
                 sealed: bool, fd: int | None = None,
                 index: list[tuple[int, int]] | None = None, version: int = FORMAT_VERSION):
        self.path = path
        self.base_seq = base_seq
        self.size = size
        self.last_seq = last_seq  # None for a sealed segment not scanned in this process
        self.sealed = sealed
        self.version = version
        self._fd = fd
        self._index = index if index is not None else []

    @classmethod
    def create(cls, directory: str, base_seq: int) -> Segment:
        """Create a new active segment file holding only its header (fails if it exists)."""
        path = os.path.join(directory, segment_name(base_seq))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _pwrite_all(fd, [SEGMENT_HEADER], 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, base_seq, SEGMENT_HEADER_BYTES, last_seq=base_seq - 1, sealed=False,
                   fd=fd)

    @property
    def data_start(self) -> int:
        """Offset of the first frame (after the segment header, if any)."""
        return _DATA_START[self.version]

    @property
    def has_frames(self) -> bool:
        return self.size > self.data_start

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise LogError(f"{self.path} is not open for writing")
        return self._fd

    def append(self, seq: int, parts: Sequence[Buffer], nbytes: int, stamp: bytes = NO_STAMP,
               route_kind: int = ROUTE_UNKNOWN, route: int = 0) -> int:
        """Write one frame whose payload is ``parts`` (``nbytes`` in all) at the
        end, with the record's routing fields; return the frame's size in bytes.

        On a failed or short write the file is cut back to the last complete
        frame, so the next append does not land behind a partial one.
        """
        if self.version != FORMAT_VERSION:
            raise LogError(f"{self.path} is a version {self.version} segment; only "
                           f"version {FORMAT_VERSION} is written")
        header = _frame_header(seq, nbytes, parts, stamp, route_kind, route)
        try:
            _pwrite_all(self.fd, [header, *parts], self.size)
        except BaseException:
            os.ftruncate(self.fd, self.size)
            raise
        if not self._index or self.size - self._index[-1][1] >= INDEX_INTERVAL_BYTES:
            self._index.append((seq, self.size))
        self.size += HEADER_BYTES + nbytes
        self.last_seq = seq
        return HEADER_BYTES + nbytes

    def datasync(self) -> None:
        os.fdatasync(self.fd)

    def seal(self) -> None:
        """Stop writing to this segment; its size and content are final."""
        self.sealed = True
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def start_for(self, seq: int) -> tuple[int, int]:
        """``(start_seq, offset)`` of the indexed frame nearest below ``seq``."""
        i = bisect.bisect_right(self._index, seq, key=lambda entry: entry[0])
        return self._index[i - 1] if i else (self.base_seq, self.data_start)


def _pwrite_all(fd: int, buffers: list[Buffer], offset: int) -> None:
    # One vectored write: the payload goes to the kernel straight from the
    # caller's buffers, never copied into a joined frame. Loops on short writes.
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        written = os.pwritev(fd, views, offset)
        if written == 0:
            raise OSError(f"pwritev wrote nothing at offset {offset}")
        offset += written
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if views:
            views[0] = views[0][written:]


class SegmentReader:
    """Reads and validates frames of one segment file, in order, from a frame boundary.

    Every frame is checked: it lies within the data, its CRC matches, and its seq
    is the one expected. Any failure raises ``LogCorruptError``. Payloads are
    memoryviews into a read chunk, so iteration copies nothing per record.
    """

    def __init__(self, path: str, offset: int, expect_seq: int, version: int = FORMAT_VERSION):
        self.path = path
        self.offset = offset  # of the next frame
        self.expect_seq = expect_seq  # seq the next frame must carry
        self.version = version
        self._header = _HEADERS[version]
        self._zero_header = bytes(self._header.size)
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115  closed by close()/GC
        self._chunk = memoryview(b"")
        self._chunk_offset = offset

    def next_frame(self, end: int) -> Frame | None:
        """The next frame entirely before ``end``; None at ``end``."""
        pos = self.offset
        if pos >= end:
            return None
        size = self._header.size
        if end - pos < size:
            raise self._corrupt(pos, f"{end - pos} bytes left, less than a frame header")
        header = self._view(pos, size, end)
        if header == self._zero_header:
            raise self._corrupt(pos, "zeroed frame header")
        length, crc, seq, *routing = self._header.unpack(header)
        if pos + size + length > end:
            raise self._corrupt(
                pos, f"frame of {length} payload bytes runs past the end of data at {end}")
        # Header and payload in one view, so the frame can be sent on whole.
        whole = self._view(pos, size + length, end)
        payload = whole[size:]
        actual = frame_crc(whole[_SEQ_AT:])
        if actual != crc:
            raise self._corrupt(pos, f"CRC mismatch (stored {crc:#010x}, computed {actual:#010x})")
        if routing and routing[2] not in _ROUTE_KINDS:
            raise self._corrupt(pos, f"unknown route kind {routing[2]}")
        if seq != self.expect_seq:
            raise LogCorruptError(self.path, pos, f"seq discontinuity: expected seq "
                                  f"{self.expect_seq}, found {seq}", discontinuity=True)
        self.offset = pos + size + length
        self.expect_seq = seq + 1
        if routing:
            return Frame(seq, payload, routing[0], routing[2], routing[1], whole)
        return Frame(seq, payload)

    def fileno(self) -> int:
        """The segment's open descriptor (valid until ``close``)."""
        return self._file.fileno()

    def skip_to(self, offset: int, expect_seq: int) -> None:
        """Go on at ``offset``, where the frame carrying ``expect_seq`` starts:
        another reader validated the frames before it (a shipper's native walk)."""
        self.offset = offset
        self.expect_seq = expect_seq

    def close(self) -> None:
        self._file.close()
        self._chunk = memoryview(b"")

    def _corrupt(self, pos: int, reason: str) -> LogCorruptError:
        return LogCorruptError(self.path, pos, reason)

    def _view(self, pos: int, nbytes: int, end: int) -> memoryview:
        start = pos - self._chunk_offset
        if start < 0 or start + nbytes > len(self._chunk):
            self._refill(pos, nbytes, end)
            start = 0
        return self._chunk[start:start + nbytes]

    def _refill(self, pos: int, nbytes: int, end: int) -> None:
        want = min(max(nbytes, READ_CHUNK_BYTES), end - pos)
        data = os.pread(self._file.fileno(), want, pos)
        if len(data) < nbytes:
            raise self._corrupt(pos, f"file ends at {pos + len(data)}, before the end of "
                                f"data this LOG wrote ({end})")
        self._chunk = memoryview(data)
        self._chunk_offset = pos


def read_segment_version(path: str) -> int | None:
    """The format version of a segment file, from its first bytes.

    None when the file is a torn version 2 header (shorter than the header
    and a prefix of it, or empty): a segment whose creation a crash cut
    short. A file that does not start with the magic is version 1 (it began
    with a frame). Raises ``LogCorruptError`` for a header it cannot read.
    """
    with open(path, "rb") as f:
        head = f.read(SEGMENT_HEADER_BYTES)
    if len(head) < SEGMENT_HEADER_BYTES and SEGMENT_HEADER.startswith(head):
        return None
    if not head.startswith(_SEGMENT_MAGIC):
        return 1
    if len(head) < SEGMENT_HEADER_BYTES:
        raise LogCorruptError(path, 0, f"segment header cut at {len(head)} bytes")
    _, version, header_bytes, reserved = _SEGMENT_HEADER.unpack(head)
    if version not in _HEADERS or version == 1:
        raise LogCorruptError(path, 0, f"unsupported LOG format version {version}")
    if header_bytes != _HEADERS[version].size or reserved:
        raise LogCorruptError(path, 0, f"segment header does not match format version "
                              f"{version}: {head.hex()}")
    return version


@dataclass
class ScanResult:
    """What a full scan of one segment file found."""

    file_size: int
    valid_end: int  # offset just past the last good frame (or the segment header)
    last_seq: int  # base_seq - 1 if no good frame
    records: int
    index: list[tuple[int, int]] = field(default_factory=list)
    bad: LogCorruptError | None = None  # the first bad frame, if any
    version: int | None = FORMAT_VERSION  # None: the segment header itself is torn


def scan_segment(path: str, base_seq: int) -> ScanResult:
    """Validate every frame of a segment file, stopping at the first bad one."""
    file_size = os.stat(path).st_size
    try:
        version = read_segment_version(path)
    except LogCorruptError as exc:
        return ScanResult(file_size, 0, base_seq - 1, 0, bad=exc, version=None)
    if version == 1 and not _starts_with_frame(path, base_seq, file_size):
        # No header and no version 1 frame either: a header never written back.
        version = None
    if version is None:
        bad = None if file_size == 0 else LogCorruptError(path, 0, "torn segment header")
        return ScanResult(file_size, 0, base_seq - 1, 0, bad=bad, version=None)
    start = _DATA_START[version]
    reader = SegmentReader(path, start, base_seq, version)
    result = ScanResult(file_size, start, base_seq - 1, 0, version=version)
    try:
        while (frame := reader.next_frame(file_size)) is not None:
            if not result.index or result.valid_end - result.index[-1][1] >= INDEX_INTERVAL_BYTES:
                result.index.append((frame[0], result.valid_end))
            result.valid_end = reader.offset
            result.last_seq = frame[0]
            result.records += 1
    except LogCorruptError as exc:
        result.bad = exc
    finally:
        reader.close()
    return result


def _starts_with_frame(path: str, base_seq: int, file_size: int) -> bool:
    reader = SegmentReader(path, 0, base_seq, 1)
    try:
        return reader.next_frame(file_size) is not None
    except LogCorruptError:
        return False
    finally:
        reader.close()


def frame_seq_at(path: str, offset: int, version: int = FORMAT_VERSION) -> int:
    """The seq field of the frame header at ``offset`` (a whole header lies there)."""
    with open(path, "rb") as f:
        raw = os.pread(f.fileno(), _HEADERS[version].size, offset)
    return _SEQ.unpack_from(raw, _SEQ_AT)[0]


def find_valid_frame(path: str, start: int, min_seq: int,
                     version: int = FORMAT_VERSION, *,
                     next_seq: int | None = None) -> tuple[int, int] | None:
    """First ``(offset, seq)`` at or after ``start`` holding a well-formed frame
    with ``seq >= min_seq``, or None. Seqs go up to ``next_seq`` (default
    ``min_seq``) plus the number of frames that fit after ``start``: the
    highest a frame there could carry, were the frames before it in sequence.

    Tells a torn tail (nothing good after the damage: a crash) from corruption
    (good frames after the damage: never caused by a crash). Considers every
    byte offset, because damage may have destroyed the frame lengths.
    """
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    n = len(data)
    # Each frame takes at least HEADER_BYTES, so a frame in this region cannot
    # carry a seq beyond max_seq. All candidate seqs share their leading bytes;
    # searching for those (in C) skips garbage far faster than testing each offset.
    header = _HEADERS[version]
    max_seq = (min_seq if next_seq is None else next_seq) + n // header.size
    prefix = os.path.commonprefix([_SEQ.pack(min_seq), _SEQ.pack(max_seq)])
    o = 0
    while (hit := data.find(prefix, o + _SEQ_AT)) >= 0 and hit + _SEQ.size <= n:
        o = hit - _SEQ_AT
        if o + header.size <= n and not _NONZERO.search(data, o, o + header.size):
            o = _skip_zeros(data, o, header.size)
            continue
        if (seq := _frame_seq_at(data, o, min_seq, max_seq, header)) is not None:
            return start + o, seq
        o += 1
    return None


def _frame_seq_at(data: bytes, o: int, min_seq: int, max_seq: int,
                  header: struct.Struct) -> int | None:
    if o + header.size > len(data):
        return None
    length, crc, seq = HEADER_V1.unpack_from(data, o)
    end = o + header.size + length
    if min_seq <= seq <= max_seq and end <= len(data) and \
            frame_crc(data[o + _SEQ_AT:o + header.size], memoryview(data)[o + header.size:end]) == crc:
        return seq
    return None


def _skip_zeros(data: bytes, o: int, header_bytes: int) -> int:
    # Preallocated or zero-filled tails are common after a crash; a header must
    # contain a nonzero byte (seq >= 1), so jump to the first place one could start.
    match = _NONZERO.search(data, o)
    if match is None:
        return len(data)
    return max(o + 1, match.start() - header_bytes + 1)
