"""One LOG segment file: frame encoding, writing, validated reading, tail recovery.

A segment is a file of back-to-back frames (format in ``logstore.log``). This
module knows a single file; ``logstore.log`` strings segments together and
decides policy (which segment is active, what a bad frame means where).
"""

from __future__ import annotations

import bisect
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import crc32c

__all__ = [
    "HEADER", "HEADER_BYTES", "LogError", "LogCorruptError", "Segment", "SegmentReader",
    "ScanResult", "Buffer", "Payload", "frame_crc", "payload_parts", "segment_name",
    "parse_segment_name", "scan_segment", "find_valid_frame",
]

HEADER = struct.Struct(">IIQ")  # payload_len, crc32c(seq | payload), seq
HEADER_BYTES = HEADER.size
MAX_PAYLOAD_BYTES = (1 << 32) - 1
_SEQ = struct.Struct(">Q")
_NAME = re.compile(r"([0-9]{20})\.seg")
_NONZERO = re.compile(rb"[^\x00]")
_ZERO_HEADER = bytes(HEADER_BYTES)
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


def frame_crc(seq: int, *parts: Buffer) -> int:
    """CRC32C over the big-endian seq then the payload parts, without joining them."""
    crc = crc32c.crc32c(_SEQ.pack(seq))
    for part in parts:
        crc = crc32c.crc32c(part, crc)
    return crc


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

    __slots__ = ("path", "base_seq", "size", "last_seq", "sealed", "_fd", "_index")

    def __init__(self, path: str, base_seq: int, size: int, *, last_seq: int | None,
                 sealed: bool, fd: int | None = None,
                 index: list[tuple[int, int]] | None = None):
        self.path = path
        self.base_seq = base_seq
        self.size = size
        self.last_seq = last_seq  # None for a sealed segment not scanned in this process
        self.sealed = sealed
        self._fd = fd
        self._index = index if index is not None else []

    @classmethod
    def create(cls, directory: str, base_seq: int) -> Segment:
        """Create a new, empty, active segment file (fails if it exists)."""
        path = os.path.join(directory, segment_name(base_seq))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        return cls(path, base_seq, 0, last_seq=base_seq - 1, sealed=False, fd=fd)

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise LogError(f"{self.path} is not open for writing")
        return self._fd

    def append(self, seq: int, parts: Sequence[Buffer], nbytes: int) -> int:
        """Write one frame whose payload is ``parts`` (``nbytes`` in all) at the
        end; return the frame's size in bytes.

        On a failed or short write the file is cut back to the last complete
        frame, so the next append does not land behind a partial one.
        """
        header = HEADER.pack(nbytes, frame_crc(seq, *parts), seq)
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
        return self._index[i - 1] if i else (self.base_seq, 0)


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

    def __init__(self, path: str, offset: int, expect_seq: int):
        self.path = path
        self.offset = offset  # of the next frame
        self.expect_seq = expect_seq  # seq the next frame must carry
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115  closed by close()/GC
        self._chunk = memoryview(b"")
        self._chunk_offset = offset

    def next_frame(self, end: int) -> tuple[int, memoryview] | None:
        """The next frame entirely before ``end`` as ``(seq, payload)``; None at ``end``."""
        pos = self.offset
        if pos >= end:
            return None
        if end - pos < HEADER_BYTES:
            raise self._corrupt(pos, f"{end - pos} bytes left, less than a frame header")
        header = self._view(pos, HEADER_BYTES, end)
        if header == _ZERO_HEADER:
            raise self._corrupt(pos, "zeroed frame header")
        length, crc, seq = HEADER.unpack(header)
        if pos + HEADER_BYTES + length > end:
            raise self._corrupt(
                pos, f"frame of {length} payload bytes runs past the end of data at {end}")
        payload = self._view(pos + HEADER_BYTES, length, end)
        actual = frame_crc(seq, payload)
        if actual != crc:
            raise self._corrupt(pos, f"CRC mismatch (stored {crc:#010x}, computed {actual:#010x})")
        if seq != self.expect_seq:
            raise LogCorruptError(self.path, pos, f"seq discontinuity: expected seq "
                                  f"{self.expect_seq}, found {seq}", discontinuity=True)
        self.offset = pos + HEADER_BYTES + length
        self.expect_seq = seq + 1
        return seq, payload

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


@dataclass
class ScanResult:
    """What a full scan of one segment file found."""

    file_size: int
    valid_end: int  # offset just past the last good frame
    last_seq: int  # base_seq - 1 if no good frame
    records: int
    index: list[tuple[int, int]] = field(default_factory=list)
    bad: LogCorruptError | None = None  # the first bad frame, if any


def scan_segment(path: str, base_seq: int) -> ScanResult:
    """Validate every frame of a segment file, stopping at the first bad one."""
    file_size = os.stat(path).st_size
    reader = SegmentReader(path, 0, base_seq)
    result = ScanResult(file_size, 0, base_seq - 1, 0)
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


def find_valid_frame(path: str, start: int, min_seq: int) -> tuple[int, int] | None:
    """First ``(offset, seq)`` at or after ``start`` holding a well-formed frame
    with ``seq >= min_seq``, or None.

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
    max_seq = min_seq + n // HEADER_BYTES
    prefix = os.path.commonprefix([_SEQ.pack(min_seq), _SEQ.pack(max_seq)])
    seq_at = HEADER_BYTES - _SEQ.size
    o = 0
    while (hit := data.find(prefix, o + seq_at)) >= 0 and hit + _SEQ.size <= n:
        o = hit - seq_at
        if data[o:o + HEADER_BYTES] == _ZERO_HEADER:
            o = _skip_zeros(data, o)
            continue
        if (seq := _frame_seq_at(data, o, min_seq, max_seq)) is not None:
            return start + o, seq
        o += 1
    return None


def _frame_seq_at(data: bytes, o: int, min_seq: int, max_seq: int) -> int | None:
    length, crc, seq = HEADER.unpack_from(data, o)
    end = o + HEADER_BYTES + length
    if min_seq <= seq <= max_seq and end <= len(data) and \
            frame_crc(seq, memoryview(data)[o + HEADER_BYTES:end]) == crc:
        return seq
    return None


def _skip_zeros(data: bytes, o: int) -> int:
    # Preallocated or zero-filled tails are common after a crash; a header must
    # contain a nonzero byte (seq >= 1), so jump to the first place one could start.
    match = _NONZERO.search(data, o)
    if match is None:
        return len(data)
    return max(o + 1, match.start() - HEADER_BYTES + 1)
