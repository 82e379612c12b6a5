"""The durable LOG: an append-only sequence of opaque record payloads.

Every record gets a LOG sequence number, ``seq``: contiguous, starting at 1
for a fresh LOG, never reused (not even after everything has been trimmed).
Shippers resume from a seq; a seq is the LOG's only notion of position.

On-disk format
==============

The byte layout (directory, segment header, frame, sync mark, torn-tail
notes) is specified once, for every language that reads or writes a LOG,
in ``logstore/FORMAT.md``; ``tests/vectors/`` holds LOGs with what they hold,
checked by the Python reader and the native (Rust) writer alike. In short:
segments are named after the first seq they hold (20 digits, ``.seg``), start
with a 16-byte segment header, then hold back-to-back frames, each a 40-byte
header (payload length, CRC32C, seq, the record's stamp and route) and the
payload (a serialized protobuf record).

Frame seqs are contiguous within a segment, the first equals the number in the
file name, and each segment starts at the seq after the previous segment's last.
The newest segment is the active one; appends go there until the next frame
would push it past ``segment_bytes``, then a new segment is started (a single
record larger than that gets a segment of its own).

Durability and recovery
=======================

``append`` writes the frame to the file (the page cache); ``sync`` makes every
appended frame durable. A segment counts as synced only once its directory
entry is fsynced too: a roll fsyncs the old segment, and the directory if a
segment was created since its last fsync, before the new one exists. So only
the newest segment can have an unsynced tail after a crash, and ``Log.open``
scans just that one.

To tell a torn tail from corruption, the LOG keeps a *sync mark*: the file
``SYNCED`` holds one position (segment, byte offset, seq) that was durable
when it was written. It is rewritten after every sync without an fsync of its
own (so every version the disk may hold is a position that *was* synced),
and fsynced at most every ``mark_interval_s`` and on close (exact then).
Why not an exact synced position: that needs a second fsync in every group
commit, doubling the latency of every stable reply. The lazy mark bounds the
doubt to the last interval before an unclean stop, where a crash explains
damage far better than a failing disk, and what recovery cuts there is
marked as a gap (below), never dropped silently.

Recovery of the newest segment, with ``L`` the mark's offset in it (0 when
the mark names an older segment):

* damage (a frame that is short, zeroed or fails its CRC) at or after ``L``
  is a torn tail, even when frames follow it: pages written back out of
  order after a power cut leave zeros or garbage followed by frames that were
  never synced. The tail is truncated, logged, and counted in
  ``recovered_truncated_bytes``;
* damage before ``L``, a file shorter than ``L``, or a well-formed frame with
  the wrong seq anywhere, cannot be explained by a crash and raises
  ``LogCorruptError`` naming the file and byte offset. A frame of an older
  segment (a seq below the segment's base) counts as damage, not as a wrong
  seq: the native writer writes new segments over trimmed ones (spares), and
  a crash can stop it before it wrote over all the old bytes;
* after a clean close (a close mark at exactly where the frames end), what
  follows is a spare's older bytes: cut, and no torn tail;
* without a readable mark (a LOG written before marks existed) damage with
  a valid frame after it is refused, as before.

Records in a cut tail were never reported synced, but a client may have
seen its reply (``async`` durability), so the cut is a gap in the journal.
Before truncating, recovery notes the torn tail in ``TORN`` (fsynced). If
``Log.open`` is given ``torn_marker``, it appends the payload that function
makes for each noted tail (the proxy's gap record), syncs, and only then
forgets the notes; otherwise they wait for an open that can write them, so a
second crash cannot lose the fact. Sealed segments are checked frame by
frame whenever they are read (and all at once by ``verify()`` or
``Log.open(verify_all=True)``); there a bad frame is always corruption.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import logging
import os
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import crc32c

from logstore.segment import (
    FORMAT_VERSION, HEADER_BYTES, MAX_PAYLOAD_BYTES, NO_STAMP, ROUTE_UNKNOWN, SEGMENT_HEADER,
    SEGMENT_HEADER_BYTES, Frame, LogCorruptError, LogError, Payload, Segment, SegmentReader,
    find_valid_frame, frame_seq_at, parse_segment_name, payload_parts, read_segment_version,
    scan_segment, segment_name,
)

__all__ = [
    "Log", "LogCursor", "FrameSpan", "LogError", "LogCorruptError", "LogGapError", "LogClosedError",
    "SegmentInfo", "TornTail", "DEFAULT_SEGMENT_BYTES", "DEFAULT_MAX_RECORD_BYTES",
    "DEFAULT_MARK_INTERVAL_S",
]

logger = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 64 << 20
# NFSv3 WRITEs are at most a few MiB; a record much larger than that is a bug upstream.
DEFAULT_MAX_RECORD_BYTES = 16 << 20
DEFAULT_MARK_INTERVAL_S = 1.0
_LOCK_NAME = "LOCK"
_ID_NAME = "LOG_ID"
_MARK_NAME = "SYNCED"
_TORN_NAME = "TORN"
# The sync mark: magic, segment base seq, byte offset in it, seq, CRC32C of the rest.
_MARK = struct.Struct(">4sQQQI")
_MARK_MAGIC = b"NJSM"
_CLOSE_MARK_MAGIC = b"NJSC"  # a clean close's: the native writer's (FORMAT.md, "Spares")


class LogGapError(LogError):
    """A read asked for a seq the LOG does not hold: trimmed away (below
    ``first_seq``) or never written (beyond ``next_seq``)."""

    def __init__(self, from_seq: int, first_seq: int, next_seq: int):
        where = ("was trimmed; the LOG now starts at seq" if from_seq < first_seq
                 else "was never written; the next seq will be")
        bound = first_seq if from_seq < first_seq else next_seq
        super().__init__(f"seq {from_seq} {where} {bound}")
        self.from_seq = from_seq
        self.first_seq = first_seq
        self.next_seq = next_seq


class LogClosedError(LogError):
    """The LOG (or its committer) is closed, or failed and must be reopened."""


@dataclass(frozen=True, slots=True)
class TornTail:
    """A torn tail that recovery cut from the newest segment: records appended
    after ``after_seq`` that were never reported synced, and are now gone."""

    segment: str          # the segment file's path
    offset: int           # where the cut was made
    truncated_bytes: int
    after_seq: int        # the last record that survived

    def __str__(self) -> str:
        return (f"{self.truncated_bytes} bytes of torn tail cut from {self.segment} at offset "
                f"{self.offset}, after seq {self.after_seq}")


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """One segment as listed by ``Log.segments``."""

    path: str
    first_seq: int
    last_seq: int  # first_seq - 1 when empty
    size_bytes: int
    active: bool


class Log:
    """An append-only, crash-safe LOG of opaque payloads in a directory.

    Thread-safe: one thread may append while another syncs or reads. Only one process may have a LOG open; ``open`` fails otherwise.
    Use ``Log.open``, not the constructor.
    """

    def __init__(self, directory: str, segments: list[Segment], *, segment_bytes: int,
                 max_record_bytes: int, dir_fd: int, lock_fd: int,
                 recovered_truncated_bytes: int, mark_fd: int,
                 mark_interval_s: float = DEFAULT_MARK_INTERVAL_S):
        self._directory = directory
        self._segments = segments  # ordered by base_seq; the last one is active
        self._segment_bytes = segment_bytes
        self._max_record_bytes = max_record_bytes
        self._dir_fd = dir_fd
        self._lock_fd = lock_fd
        self._recovered_truncated_bytes = recovered_truncated_bytes
        self._last_seq = segments[-1].last_seq
        self._synced_seq = self._last_seq
        self._size_bytes = sum(s.size for s in segments)
        self._dir_dirty = False  # a segment was created since the last directory fsync
        self._closed = False
        self._failure: BaseException | None = None
        self._lock = threading.Lock()  # guards all state above
        self.log_id = ""  # set by open(): see _log_identity
        self._sync_lock = threading.Lock()  # one sync at a time; close waits for it
        self._trim_listeners: list[Callable[[], None]] = []
        self._mark_fd = mark_fd  # the SYNCED file
        self._mark_interval_s = mark_interval_s
        self._mark_synced_at = float("-inf")
        self.torn_tails: tuple[TornTail, ...] = ()  # set by open(): the tails it found noted

    # -- opening and recovery -------------------------------------------------

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *,
             segment_bytes: int = DEFAULT_SEGMENT_BYTES,
             max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
             verify_all: bool = False,
             torn_marker: Callable[[TornTail], Payload] | None = None,
             mark_interval_s: float = DEFAULT_MARK_INTERVAL_S) -> Log:
        """Open (creating if needed) the LOG in ``directory`` and recover it.

        Recovery truncates a torn tail of the newest segment and raises
        ``LogCorruptError`` for damage a crash cannot explain (see the module
        docstring). With ``verify_all`` every sealed segment is read and checked
        too, which costs a full read of the LOG. ``torn_marker`` makes the
        payload appended (and synced) for every torn tail noted so far;
        ``torn_tails`` lists them. ``mark_interval_s`` is how often the sync
        mark is fsynced (0: with every sync).
        """
        if segment_bytes <= HEADER_BYTES:
            raise ValueError(f"segment_bytes must exceed {HEADER_BYTES}, got {segment_bytes}")
        if not 0 <= max_record_bytes <= MAX_PAYLOAD_BYTES:
            raise ValueError(f"max_record_bytes must be in [0, {MAX_PAYLOAD_BYTES}], "
                             f"got {max_record_bytes}")
        directory = os.fspath(directory)
        _make_durable_directory(directory)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        lock_fd = mark_fd = -1
        try:
            lock_fd = _lock_directory(directory)
            log_id = _log_identity(directory, dir_fd)
            segments, truncated = _recover(directory, dir_fd, _read_mark(directory))
            mark_fd = os.open(os.path.join(directory, _MARK_NAME),
                              os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            # What survived recovery is durable. A close mark must not outlive
            # this open: appends after it would pass for a spare's older bytes.
            newest = segments[-1]
            os.pwrite(mark_fd, _encode_mark(newest.base_seq, newest.size, newest.last_seq), 0)
            os.fdatasync(mark_fd)
            os.fsync(dir_fd)  # the mark's entry, should it be new
        except BaseException:
            for fd in (dir_fd, lock_fd):
                if fd >= 0:
                    os.close(fd)
            raise
        log = cls(directory, segments, segment_bytes=segment_bytes,
                  max_record_bytes=max_record_bytes, dir_fd=dir_fd, lock_fd=lock_fd,
                  recovered_truncated_bytes=truncated, mark_fd=mark_fd,
                  mark_interval_s=mark_interval_s)
        log.log_id = log_id
        try:
            log.torn_tails = _read_torn(directory)
            if torn_marker is not None and log.torn_tails:
                log._mark_torn_tails(torn_marker)
            if verify_all:
                log.verify()
        except BaseException:
            log.close()
            raise
        return log

    def _mark_torn_tails(self, torn_marker: Callable[[TornTail], Payload]) -> None:
        # The notes go only once their markers are durable: a crash in
        # between writes the markers again (a duplicate gap, never a lost one).
        for torn in self.torn_tails:
            self.append(torn_marker(torn))
        self.sync()
        os.unlink(os.path.join(self._directory, _TORN_NAME))
        os.fsync(self._dir_fd)

    # -- writing --------------------------------------------------------------

    def append(self, payload: Payload, *, stamp: bytes = NO_STAMP,
               route_kind: int = ROUTE_UNKNOWN, route: int = 0) -> int:
        """Write one record (not yet durable; see ``sync``) and return its seq.

        ``payload`` is a bytes-like object, or a list/tuple of them that form
        the record when concatenated (they are written as one frame, without
        being joined). It is written straight from the caller's buffers, which
        must not change until this returns. ``stamp`` (16 bytes), ``route_kind``
        and ``route`` go into the frame header, so readers can route the
        record without parsing it (``logstore/FORMAT.md``).
        """
        parts, nbytes = payload_parts(payload)
        if nbytes > self._max_record_bytes:
            raise ValueError(f"record of {nbytes} bytes exceeds max_record_bytes "
                             f"({self._max_record_bytes})")
        with self._lock:
            self._check_usable()
            segment = self._segments[-1]
            if segment.has_frames and \
                    segment.size + HEADER_BYTES + nbytes > self._segment_bytes:
                segment = self._roll()
            seq = self._last_seq + 1
            self._size_bytes += segment.append(seq, parts, nbytes, stamp, route_kind, route)
            self._last_seq = seq
        return seq

    def _roll(self) -> Segment:
        # Fsync the old segment before its successor exists: recovery then only
        # ever has to repair the newest segment.
        old = self._segments[-1]
        self._durably(old.datasync)
        if self._dir_dirty:
            # The old segment may be new itself: its records count as synced
            # only once its directory entry is durable too.
            self._durably(lambda: os.fsync(self._dir_fd))
            self._dir_dirty = False
        new = Segment.create(self._directory, self._last_seq + 1)
        old.seal()  # only now: if create failed, the old segment stays active
        self._synced_seq = max(self._synced_seq, old.last_seq)
        self._write_mark(old.base_seq, old.size, old.last_seq)
        self._segments.append(new)
        self._size_bytes += new.size
        self._dir_dirty = True
        return new

    def sync(self) -> int:
        """Make every record appended so far durable; return ``synced_seq``.

        Blocks for an fsync; records may be appended from other threads
        meanwhile (they are covered by the next sync). If an fsync fails the LOG
        refuses further use: after a failed fsync the kernel may have dropped
        the dirty pages, so a retry could report success for lost data.
        """
        with self._sync_lock:
            with self._lock:
                self._check_usable()
                target = self._last_seq
                if target == self._synced_seq and not self._dir_dirty:
                    return target
                # A private fd: a concurrent roll may close the segment's own fd.
                active = self._segments[-1]
                fd = os.dup(active.fd)
                position = (active.base_seq, active.size, target)
                dir_dirty, self._dir_dirty = self._dir_dirty, False
            try:
                self._durably(lambda: os.fdatasync(fd))
                if dir_dirty:
                    self._durably(lambda: os.fsync(self._dir_fd))
            finally:
                os.close(fd)
            with self._lock:
                if target >= self._synced_seq:
                    self._write_mark(*position)
            now = time.monotonic()
            if now - self._mark_synced_at >= self._mark_interval_s:
                self._mark_synced_at = now
                self._durably(lambda: os.fdatasync(self._mark_fd))
            with self._lock:
                self._synced_seq = max(self._synced_seq, target)
                return self._synced_seq

    def _write_mark(self, base_seq: int, offset: int, seq: int) -> None:
        """Record a durable position in the sync mark (under ``_lock``).

        Only positions already durable are written, so whatever version of the
        mark survives a crash is a lower bound of what was synced; its own
        fsync is rationed and done by ``sync`` outside the lock (see the
        module docstring).
        """
        os.pwrite(self._mark_fd, _encode_mark(base_seq, offset, seq), 0)

    def _durably(self, fsync: Callable[[], None]) -> None:
        try:
            fsync()
        except OSError as exc:
            self._failure = exc
            raise LogError(f"{self._directory}: fsync failed; the LOG must be "
                           f"reopened: {exc}") from exc

    # -- reading --------------------------------------------------------------

    def read(self, from_seq: int) -> LogCursor:
        """A cursor yielding ``(seq, payload)`` from ``from_seq`` to the current end.

        Raises ``LogGapError`` if ``from_seq`` is below ``first_seq`` or beyond
        ``next_seq``. See ``LogCursor`` for how it follows new appends.
        """
        if from_seq < 1:
            raise ValueError(f"seqs start at 1, got {from_seq}")
        self._locate(from_seq)  # fail now, not on first next()
        return LogCursor(self, from_seq)

    def verify(self) -> int:
        """Read and check every frame of every segment; return the record count.

        Raises ``LogCorruptError`` at the first bad frame or seq discontinuity.
        """
        with self.read(self.first_seq) as cursor:
            return sum(1 for _ in cursor)

    def _locate(self, seq: int) -> tuple[Segment, int, int]:
        """``(segment, offset, start_seq)`` from which a reader reaches ``seq``."""
        with self._lock:
            self._check_open()
            first, next_seq = self._segments[0].base_seq, self._last_seq + 1
            if not first <= seq <= next_seq:
                raise LogGapError(seq, first, next_seq)
            i = bisect.bisect_right(self._segments, seq, key=lambda s: s.base_seq) - 1
            segment = self._segments[i]
            if seq == next_seq and not segment.sealed:
                return segment, segment.size, seq
            start_seq, offset = segment.start_for(seq)
            return segment, offset, start_seq

    def _successor(self, finished: Segment, expect_seq: int) -> Segment:
        """The segment after the sealed segment ``finished``, which must start at
        ``expect_seq``."""
        with self._lock:
            self._check_open()
            first = self._segments[0].base_seq
            i = bisect.bisect_left(self._segments, expect_seq, key=lambda s: s.base_seq)
            if i < len(self._segments) and self._segments[i].base_seq == expect_seq:
                return self._segments[i]
            if expect_seq < first:
                raise LogGapError(expect_seq, first, self._last_seq + 1)
            found = (f"the next segment starts at seq {self._segments[i].base_seq}"
                     if i < len(self._segments) else "no segment follows")
            raise LogCorruptError(finished.path, finished.size,
                                  f"seq discontinuity: segment ends before seq {expect_seq} "
                                  f"but {found}", discontinuity=True)

    def _extent(self, segment: Segment) -> tuple[int, bool]:
        """``(readable end, sealed)`` of a segment, as one consistent snapshot."""
        with self._lock:
            self._check_open()
            return segment.size, segment.sealed

    # -- trimming -------------------------------------------------------------

    def trim(self, below_seq: int) -> int:
        """Delete whole segments whose records are all below ``below_seq``.

        Never deletes the active segment, so seqs keep counting up. Returns the
        number of segments deleted and then notifies trim listeners. Open
        cursors already reading a deleted segment finish it (POSIX unlink).
        """
        with self._lock:
            self._check_open()
            deleted = 0
            while len(self._segments) > 1 and self._segments[1].base_seq <= below_seq:
                victim = self._segments[0]
                os.unlink(victim.path)
                self._segments.pop(0)
                self._size_bytes -= victim.size
                deleted += 1
            if deleted:
                # A power cut must not bring back a segment whose successor
                # was trimmed: the LOG would have a hole.
                os.fsync(self._dir_fd)
            listeners = list(self._trim_listeners)
        if deleted:
            logger.info("%s: trimmed %d segment(s) below seq %d", self._directory, deleted,
                        below_seq)
        for listener in listeners:
            try:
                listener()
            except Exception:  # one broken listener must not break retention
                logger.exception("trim listener %r failed", listener)
        return deleted

    def add_trim_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (from the trimming thread) after every ``trim``."""
        with self._lock:
            self._trim_listeners.append(listener)

    def remove_trim_listener(self, listener: Callable[[], None]) -> None:
        with self._lock:
            if listener in self._trim_listeners:
                self._trim_listeners.remove(listener)

    # -- state ----------------------------------------------------------------

    @property
    def directory(self) -> str:
        return self._directory

    @property
    def first_seq(self) -> int:
        """Lowest seq still held; equals ``next_seq`` when the LOG holds none."""
        with self._lock:
            return self._segments[0].base_seq

    @property
    def last_seq(self) -> int:
        """Highest seq appended (0 for a fresh LOG)."""
        return self._last_seq

    @property
    def next_seq(self) -> int:
        """The seq the next ``append`` will return."""
        return self._last_seq + 1

    @property
    def synced_seq(self) -> int:
        """Highest seq known to be durable."""
        return self._synced_seq

    @property
    def size_bytes(self) -> int:
        """Total bytes of all segment files."""
        return self._size_bytes

    @property
    def recovered_truncated_bytes(self) -> int:
        """Bytes of torn tail that ``open`` cut from the newest segment."""
        return self._recovered_truncated_bytes

    @property
    def segments(self) -> list[SegmentInfo]:
        """The segments on disk, oldest first; the last one is active."""
        with self._lock:
            segments = list(self._segments)
            last_seq = self._last_seq
        infos = []
        for i, s in enumerate(segments):
            end = segments[i + 1].base_seq - 1 if i + 1 < len(segments) else last_seq
            infos.append(SegmentInfo(s.path, s.base_seq, end, s.size, i + 1 == len(segments)))
        return infos

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return (f"<Log {self._directory!r} seqs {self.first_seq}..{self._last_seq} "
                f"synced {self._synced_seq}, {len(self._segments)} segment(s), "
                f"{self._size_bytes} bytes{', closed' if self._closed else ''}>")

    # -- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        """Sync what was appended (unless the LOG failed), then release the directory."""
        if self._closed:
            return
        try:
            if self._failure is None:
                self.sync()
                with self._lock:
                    # A clean stop leaves an exact mark: then any damage is corruption.
                    active = self._segments[-1]
                    self._write_mark(active.base_seq, active.size, self._synced_seq)
                self._durably(lambda: os.fdatasync(self._mark_fd))
        finally:
            with self._sync_lock, self._lock:
                if not self._closed:
                    self._closed = True
                    self._segments[-1].close()
                    os.close(self._dir_fd)
                    if self._mark_fd >= 0:
                        os.close(self._mark_fd)
                    os.close(self._lock_fd)  # releases the flock

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"{self._directory}: the LOG is closed")

    def _check_usable(self) -> None:
        self._check_open()
        if self._failure is not None:
            raise LogClosedError(f"{self._directory}: the LOG failed and must be reopened: "
                                 f"{self._failure}")


class FrameSpan(NamedTuple):
    """Whole frames of one segment a cursor reads next (``LogCursor.span``):
    the segment's path and open descriptor, its format version, the frames'
    offsets and the seq the first one carries."""

    path: str
    fd: int
    version: int
    offset: int
    end: int
    expect_seq: int


class LogCursor:
    """Iterator of ``(seq, payload)`` over a LOG, starting at a given seq.

    Reads through segment boundaries and sees records appended after it was
    created. Iteration stops at the LOG's current end; iterating the same
    cursor again later resumes at ``next_seq`` and picks up newer records.
    Payloads are memoryviews valid as long as they are referenced. Every
    frame is validated; damage raises ``LogCorruptError``. One cursor must not
    be shared between threads.
    """

    def __init__(self, log: Log, from_seq: int):
        self._log = log
        self.next_seq = from_seq  # the seq the next item will carry
        self._segment: Segment | None = None
        self._reader: SegmentReader | None = None

    def __iter__(self) -> Iterator[tuple[int, memoryview]]:
        return self

    def __next__(self) -> tuple[int, memoryview]:
        frame = self.next_frame()
        return frame.seq, frame.payload

    def frames(self) -> Iterator[Frame]:
        """Like iterating the cursor, but each item is the whole ``Frame``, whose
        routing fields (stamp, route) route a record without parsing it."""
        while True:
            try:
                yield self.next_frame()
            except StopIteration:
                return

    def next_frame(self) -> Frame:
        """The next ``Frame``; raises ``StopIteration`` at the LOG's current end."""
        while True:
            if self._reader is None:
                self._open_at(*self._log._locate(self.next_seq))
            assert self._segment is not None and self._reader is not None
            end, sealed = self._log._extent(self._segment)
            frame = self._reader.next_frame(end)
            if frame is None:
                if not sealed:
                    raise StopIteration
                self._advance()
                continue
            if frame[0] >= self.next_seq:  # below it: skipping from an index point
                self.next_seq = frame[0] + 1
                return frame

    def span(self) -> FrameSpan | None:
        """Where the cursor's next frames lie, for a reader that walks them
        itself (a shipper's native walk, which then calls ``consumed``): whole
        frames of one segment from ``offset`` to ``end``, the first carrying
        ``expect_seq`` (below ``next_seq`` when the cursor started at an index
        point before it). Moves on to the next segment when this one is sealed
        and read; None at the LOG's current end."""
        while True:
            if self._reader is None:
                self._open_at(*self._log._locate(self.next_seq))
            assert self._segment is not None and self._reader is not None
            end, sealed = self._log._extent(self._segment)
            reader = self._reader
            if reader.offset < end:
                return FrameSpan(reader.path, reader.fileno(), reader.version, reader.offset, end,
                                 reader.expect_seq)
            if not sealed:
                return None
            self._advance()

    def consumed(self, offset: int, next_seq: int) -> None:
        """The frames of the last ``span`` before ``offset`` were read; the
        frame there carries ``next_seq``."""
        assert self._reader is not None
        self._reader.skip_to(offset, next_seq)
        self.next_seq = max(self.next_seq, next_seq)

    def _open_at(self, segment: Segment, offset: int, start_seq: int) -> None:
        self._segment = segment
        self._reader = SegmentReader(segment.path, offset, start_seq, segment.version)

    def _advance(self) -> None:
        assert self._segment is not None and self._reader is not None
        expect = self._reader.expect_seq
        successor = self._log._successor(self._segment, expect)
        self._reader.close()
        self._reader = None
        self._open_at(successor, successor.data_start, expect)

    def close(self) -> None:
        """Release the open segment file."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> LogCursor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LogCursor {self._log.directory!r} next_seq {self.next_seq}>"


def _make_durable_directory(directory: str) -> None:
    if os.path.isdir(directory):
        return
    os.makedirs(directory)
    # The new directory's own entry must survive a crash too, not just its files.
    parent = os.open(os.path.dirname(os.path.abspath(directory)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(parent)
    finally:
        os.close(parent)


def _lock_directory(directory: str) -> int:
    fd = os.open(os.path.join(directory, _LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LogError(f"{directory}: the LOG is already open (by this or another "
                       "process)") from None
    return fd


def _recover(directory: str, dir_fd: int,
             mark: tuple[int, int, int, bool] | None) -> tuple[list[Segment], int]:
    """Load the segment list, repairing the newest segment's tail; returns
    ``(segments, truncated_bytes)``. Creates segment 1 in an empty directory.
    ``mark`` is the sync mark ``(base_seq, offset, seq, closed)`` (None: none
    readable)."""
    bases = sorted(b for name in os.listdir(directory)
                   if (b := parse_segment_name(name)) is not None)
    if not bases:
        segment = Segment.create(directory, 1)
        segment.datasync()
        os.fsync(dir_fd)
        return [segment], 0
    if bases[0] < 1:
        raise LogCorruptError(os.path.join(directory, segment_name(bases[0])), 0,
                              "segment names start at seq 1")
    sealed = [_sealed_segment(directory, base) for base in bases[:-1]]
    synced_offset, closed = None, False
    if mark is not None:
        mark_base, mark_offset, mark_seq, mark_closed = mark
        if mark_base > bases[-1]:
            raise LogCorruptError(os.path.join(directory, segment_name(mark_base)), mark_offset,
                                  f"segment missing, yet the LOG had synced it through seq "
                                  f"{mark_seq}")
        synced_offset = mark_offset if mark_base == bases[-1] else 0
        closed = mark_closed and mark_base == bases[-1]
    active, truncated = _recover_newest(directory, dir_fd, bases[-1], synced_offset, closed)
    segments = sealed + [active]
    if active.version != FORMAT_VERSION:
        # Only the current version is written: a LOG from an older version
        # goes on in a new segment, and its old segments stay readable.
        active.seal()
        segments.append(Segment.create(directory, active.last_seq + 1))
        segments[-1].datasync()
    os.fsync(dir_fd)
    return segments, truncated


def _sealed_segment(directory: str, base: int) -> Segment:
    path = os.path.join(directory, segment_name(base))
    size = os.stat(path).st_size
    version = read_segment_version(path)
    if version is None or size <= SEGMENT_HEADER_BYTES and version == FORMAT_VERSION:
        # The newest segment is the only one a crash can leave without frames.
        raise LogCorruptError(path, 0, "sealed segment holds no frame")
    return Segment(path, base, size, last_seq=None, sealed=True, version=version)


def _recover_newest(directory: str, dir_fd: int, base: int, synced_offset: int | None,
                    closed: bool) -> tuple[Segment, int]:
    """Repair the newest segment; ``closed``: the mark is a clean close's,
    in this segment at ``synced_offset``."""
    path = os.path.join(directory, segment_name(base))
    scan = scan_segment(path, base)
    if synced_offset is not None and scan.file_size < synced_offset:
        raise LogCorruptError(path, scan.file_size, f"the file ends here, but the LOG had "
                              f"synced it through offset {synced_offset}")
    truncated = stale = 0
    size = scan.valid_end
    if scan.version is None:
        # The segment's header never reached the disk: nothing in it was synced.
        if synced_offset:
            raise LogCorruptError(path, 0, f"{scan.bad.reason if scan.bad else 'empty'}, yet "
                                  f"the LOG had synced it through offset {synced_offset}")
        size = SEGMENT_HEADER_BYTES
        if scan.file_size > SEGMENT_HEADER_BYTES:  # frames may have been appended behind it
            truncated = scan.file_size
            logger.warning("%s: truncated torn tail of %d bytes at offset 0 after seq %d (%s)",
                           path, truncated, scan.last_seq, "torn segment header")
            _note_torn(directory, dir_fd, TornTail(path, 0, truncated, scan.last_seq))
    elif scan.bad is not None and not _judge_bad_frame(
            path, scan.bad, (base, scan.last_seq + 1), synced_offset, closed, scan.version):
        # A clean close ended the LOG here: what follows is a spare's older
        # bytes. This writer does not write over them: cut, but no torn tail.
        stale = scan.file_size - scan.valid_end
    elif scan.bad is not None:
        truncated = scan.file_size - scan.valid_end
        logger.warning("%s: truncated torn tail of %d bytes at offset %d after seq %d (%s)",
                       path, truncated, scan.valid_end, scan.last_seq, scan.bad.reason)
        _note_torn(directory, dir_fd, TornTail(path, scan.valid_end, truncated, scan.last_seq))
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if truncated or stale:
            os.ftruncate(fd, scan.valid_end)
        if scan.version is None:
            os.pwrite(fd, SEGMENT_HEADER, 0)
        # Whatever survived is now durable, so synced_seq may start at last_seq.
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    segment = Segment(path, base, size, last_seq=scan.last_seq, sealed=False,
                      fd=fd, index=scan.index, version=scan.version or FORMAT_VERSION)
    return segment, truncated


def _judge_bad_frame(path: str, bad: LogCorruptError, seqs: tuple[int, int],
                     synced_offset: int | None, closed: bool, version: int) -> bool:
    """True if ``bad`` starts a torn tail: damage past the sync mark, or (no
    mark) damage with nothing valid after it; False if it starts a spare's
    older bytes right where a clean close (``closed``) ended the LOG; raises
    for corruption. ``seqs`` is ``(base, expected)``: a frame with a seq
    below the segment's base is a spare's older bytes, damage rather than a
    discontinuity."""
    base, expect_seq = seqs
    if bad.discontinuity and frame_seq_at(path, bad.offset, version) >= base:
        raise bad
    if synced_offset is not None:
        if bad.offset < synced_offset:
            raise LogCorruptError(path, bad.offset, f"{bad.reason}, inside the region the LOG "
                                  f"had synced (through offset {synced_offset})") from bad
        if not (closed and bad.offset == synced_offset):
            return True
        # A spare's frames are all older: one of this segment's was never written over.
        found = find_valid_frame(path, bad.offset, base, version, next_seq=expect_seq)
        if found is not None:
            offset, seq = found
            raise LogCorruptError(path, bad.offset, f"a frame of this segment (seq {seq}, at "
                                  f"offset {offset}) lies past the clean close at offset "
                                  f"{synced_offset}") from bad
        return False
    follower = find_valid_frame(path, bad.offset + 1, expect_seq, version)
    if follower is not None:
        offset, seq = follower
        raise LogCorruptError(path, bad.offset, f"{bad.reason}, yet a valid frame "
                              f"(seq {seq}) follows at offset {offset}") from bad
    return True


def _log_identity(directory: str, dir_fd: int) -> str:
    """This LOG's identity, made once when the LOG is created.

    Shards key their streams by it: a LOG that restarts empty (a wiped or new
    directory) gets a new identity, so no shard mistakes it for the old one.
    """
    path = os.path.join(directory, _ID_NAME)
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        pass
    log_id = uuid.uuid4().hex
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(log_id + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    os.fsync(dir_fd)
    return log_id


def _encode_mark(base_seq: int, offset: int, seq: int) -> bytes:
    body = _MARK.pack(_MARK_MAGIC, base_seq, offset, seq, 0)[:-4]
    return body + struct.pack(">I", crc32c.crc32c(body))


def _read_mark(directory: str) -> tuple[int, int, int, bool] | None:
    """The sync mark ``(base_seq, offset, seq, closed)``, or None if missing;
    ``(0, 0, 0, False)`` if empty or torn."""
    try:
        with open(os.path.join(directory, _MARK_NAME), "rb") as f:
            raw = f.read(_MARK.size)
    except FileNotFoundError:
        return None  # a LOG from before sync marks: recovery keeps the older, stricter rule
    if not raw:
        return 0, 0, 0, False  # no sync was ever marked: nothing is known synced
    magic, base, offset, seq, crc = _MARK.unpack(raw.ljust(_MARK.size, b"\0"))
    if magic not in (_MARK_MAGIC, _CLOSE_MARK_MAGIC) or crc != crc32c.crc32c(raw[:_MARK.size - 4]):
        logger.warning("%s: the sync mark is damaged; recovery trusts no part of the newest "
                       "segment as synced", directory)
        return 0, 0, 0, False
    return base, offset, seq, magic == _CLOSE_MARK_MAGIC


def _note_torn(directory: str, dir_fd: int, torn: TornTail) -> None:
    """Durably note a torn tail before it is cut (see ``Log.open``'s ``torn_marker``)."""
    path = os.path.join(directory, _TORN_NAME)
    line = json.dumps({"segment": torn.segment, "offset": torn.offset,
                       "truncated_bytes": torn.truncated_bytes, "after_seq": torn.after_seq})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.fsync(dir_fd)


def _read_torn(directory: str) -> tuple[TornTail, ...]:
    try:
        with open(os.path.join(directory, _TORN_NAME), "rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return ()
    out = []
    for line in lines:
        try:
            d = json.loads(line.decode("utf-8"))
            out.append(TornTail(str(d["segment"]), int(d["offset"]), int(d["truncated_bytes"]),
                                int(d["after_seq"])))
        except (ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
            continue  # a line torn by a crash while it was noted: its tail is noted again
    return tuple(out)
