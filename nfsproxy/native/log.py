"""The proxy's LOG, written by the native core, and its asyncio group commit.

``NativeLog`` has ``logstore.log.Log``'s interface: the native writer
(``nfsproxy._dataplane.NativeLog``: append, roll, sync marks, recovery,
trim) writes the format in logstore/FORMAT.md, and reads go through
logstore's own ``LogCursor``, the Python reader the shippers use.
``NativeCommitter`` is the asyncio face of the native group committer
(``logstore.commit.Durability`` says when an append counts): one fsync thread shares fsyncs among all appends, and
durability reaches the event loop through an eventfd (``loop.add_reader``),
never by polling and never taking a thread per record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any

from logstore.commit import Durability
from logstore.log import (
    DEFAULT_MARK_INTERVAL_S, DEFAULT_MAX_RECORD_BYTES, DEFAULT_SEGMENT_BYTES, LogClosedError,
    LogCursor, LogGapError, SegmentInfo, TornTail,
)
from logstore.record import Record
from logstore.segment import (
    HEADER_BYTES, MAX_PAYLOAD_BYTES, NO_STAMP, SEGMENT_HEADER_BYTES, LogCorruptError, LogError,
    Payload,
)
from nfsproxy import _dataplane
from logstore.sharding import frame_route

DEFAULT_SPARE_SEGMENTS: int = _dataplane.DEFAULT_SPARE_SEGMENTS

__all__ = ["NativeLog", "NativeCommitter"]

logger = logging.getLogger(__name__)


def _translate(exc: BaseException) -> BaseException:
    """logstore's exception for a native one (others pass unchanged)."""
    if isinstance(exc, _dataplane.NativeLogCorruptError):
        path, offset, reason, discontinuity = exc.args
        return LogCorruptError(path, offset, reason, discontinuity=discontinuity)
    if isinstance(exc, _dataplane.NativeLogClosedError):
        return LogClosedError(*exc.args)
    if isinstance(exc, _dataplane.NativeLogError):
        return LogError(*exc.args)
    return exc


@contextlib.contextmanager
def _native_errors():
    try:
        yield
    except _dataplane.NativeLogError as exc:
        raise _translate(exc) from None


class _SegmentView:
    """What ``LogCursor`` needs of a segment: where it is and how to read it."""

    __slots__ = ("path", "base_seq", "version")

    def __init__(self, path: str, base_seq: int, version: int):
        self.path = path
        self.base_seq = base_seq
        self.version = version

    @property
    def data_start(self) -> int:
        return SEGMENT_HEADER_BYTES if self.version >= 2 else 0


class NativeLog:
    """``logstore.log.Log`` with the native writer. Use ``NativeLog.open``."""

    def __init__(self, native: _dataplane.NativeLog, directory: str):
        self._native = native
        self._directory = directory
        self._trim_listeners: list[Callable[[], None]] = []
        self.log_id = native.log_id
        self.torn_tails: tuple[TornTail, ...] = tuple(
            TornTail(*torn) for torn in native.torn_tails)

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *,
             segment_bytes: int = DEFAULT_SEGMENT_BYTES,
             max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
             verify_all: bool = False,
             torn_marker: Callable[[TornTail], Payload | Record] | None = None,
             mark_interval_s: float = DEFAULT_MARK_INTERVAL_S,
             spare_segments: int = DEFAULT_SPARE_SEGMENTS) -> NativeLog:
        """As ``logstore.log.Log.open``: open (creating) and recover the LOG.

        ``torn_marker`` may also return a ``Record``: then its frame carries
        the record's stamp and route. ``spare_segments``: how many trimmed
        segments to keep and write new segments over (logstore/FORMAT.md,
        "Spares"); 0 deletes every trimmed segment.
        """
        if spare_segments < 0:
            raise ValueError(f"spare_segments must be >= 0, got {spare_segments}")
        if segment_bytes <= HEADER_BYTES:
            raise ValueError(f"segment_bytes must exceed {HEADER_BYTES}, got {segment_bytes}")
        if not 0 <= max_record_bytes <= MAX_PAYLOAD_BYTES:
            raise ValueError(f"max_record_bytes must be in [0, {MAX_PAYLOAD_BYTES}], "
                             f"got {max_record_bytes}")
        directory = os.fspath(directory)
        with _native_errors():
            native = _dataplane.NativeLog(
                directory, segment_bytes=segment_bytes, max_record_bytes=max_record_bytes,
                mark_interval_s=mark_interval_s, spare_segments=spare_segments)
        log = cls(native, directory)
        try:
            for torn in log.torn_tails:
                logger.warning("%s: truncated torn tail (%s)", directory, torn)
            if torn_marker is not None and log.torn_tails:
                markers = [_marker(torn_marker(t)) for t in log.torn_tails]
                with _native_errors():
                    native.mark_torn_tails(markers)
            if verify_all:
                log.verify()
        except BaseException:
            log.close()
            raise
        return log

    def orphan_intents(self, from_seq: int) -> list[tuple[int, bytes, bytes]]:
        """``(seq, stamp, payload)`` of every write-ahead intent from ``from_seq``
        on that no record with its stamp followed, in LOG order: after an
        unclean stop, the mutations whose replies may have gone out while
        their records were lost (logstore/FORMAT.md, "Intents")."""
        with _native_errors():
            return self._native.orphan_intents(from_seq)

    # -- writing --------------------------------------------------------------

    def append(self, payload: Payload, *, stamp: bytes = b"", route_kind: int = 0,
               route: int = 0) -> int:
        """As ``Log.append``: write one record (not yet durable), return its seq."""
        with _native_errors():
            return self._native.append(payload, stamp, route_kind, route)

    def sync(self) -> int:
        """Make every record appended so far durable; return ``synced_seq``."""
        with _native_errors():
            return self._native.sync()

    def trim(self, below_seq: int) -> int:
        """Delete whole segments below ``below_seq``, then call trim listeners."""
        with _native_errors():
            deleted = self._native.trim(below_seq)
        if deleted:
            logger.info("%s: trimmed %d segment(s) below seq %d", self._directory, deleted,
                        below_seq)
        for listener in list(self._trim_listeners):
            try:
                listener()
            except Exception:  # one broken listener must not break retention
                logger.exception("trim listener %r failed", listener)
        return deleted

    def add_trim_listener(self, listener: Callable[[], None]) -> None:
        self._trim_listeners.append(listener)

    def remove_trim_listener(self, listener: Callable[[], None]) -> None:
        if listener in self._trim_listeners:
            self._trim_listeners.remove(listener)

    # -- reading (logstore's reader) ------------------------------------------

    def read(self, from_seq: int) -> LogCursor:
        """A ``LogCursor`` yielding ``(seq, payload)`` (or ``frames()``) from ``from_seq``."""
        if from_seq < 1:
            raise ValueError(f"seqs start at 1, got {from_seq}")
        self._locate(from_seq)
        return LogCursor(self, from_seq)  # type: ignore[arg-type]

    def verify(self) -> int:
        """Read and check every frame of every segment; return the record count."""
        with self.read(self.first_seq) as cursor:
            return sum(1 for _ in cursor)

    def _locate(self, seq: int) -> tuple[_SegmentView, int, int]:
        self._check_open()
        found = self._native.locate(seq)
        if found is None:
            raise LogGapError(seq, self.first_seq, self.next_seq)
        path, base_seq, version, offset, start_seq = found
        return _SegmentView(path, base_seq, version), offset, start_seq

    def _extent(self, segment: _SegmentView) -> tuple[int, bool]:
        self._check_open()
        extent = self._native.extent(segment.base_seq)
        if extent is None:
            # Trimmed while read. The file may be a spare by now, written over
            # by a new segment: it has nothing more to give. The cursor moves
            # on to the successor, or raises LogGapError if it still needed
            # records of the trimmed segment.
            return 0, True
        return extent

    def _successor(self, finished: _SegmentView, expect_seq: int) -> _SegmentView:
        self._check_open()
        for path, first, _last, _size, _active, version in self._native.segments():
            if first == expect_seq:
                return _SegmentView(path, first, version)
        if expect_seq < self.first_seq:
            raise LogGapError(expect_seq, self.first_seq, self.next_seq)
        raise LogCorruptError(finished.path, os.path.getsize(finished.path),
                              f"seq discontinuity: segment ends before seq {expect_seq} "
                              "but no segment starts there", discontinuity=True)

    # -- state ----------------------------------------------------------------

    @property
    def directory(self) -> str:
        return self._directory

    @property
    def first_seq(self) -> int:
        return self._native.first_seq

    @property
    def last_seq(self) -> int:
        return self._native.last_seq

    @property
    def next_seq(self) -> int:
        return self._native.last_seq + 1

    @property
    def synced_seq(self) -> int:
        return self._native.synced_seq

    @property
    def size_bytes(self) -> int:
        return self._native.size_bytes

    @property
    def spare_segments(self) -> int:
        """Trimmed segments kept to write new segments over (not in ``size_bytes``)."""
        return self._native.spare_segments

    @property
    def recycled_segments(self) -> int:
        """New segments written over spares since open."""
        return self._native.recycled_segments

    @property
    def recovered_truncated_bytes(self) -> int:
        return self._native.recovered_truncated_bytes

    @property
    def segments(self) -> list[SegmentInfo]:
        return [SegmentInfo(path, first, last, size, active)
                for path, first, last, size, active, _version in self._native.segments()]

    @property
    def closed(self) -> bool:
        return self._native.closed

    @property
    def native(self) -> _dataplane.NativeLog:
        """The native LOG, for the native relay to append to."""
        return self._native

    def __repr__(self) -> str:
        return (f"<Log {self._directory!r} seqs {self.first_seq}..{self.last_seq} "
                f"synced {self.synced_seq}, {len(self._native.segments())} segment(s), "
                f"{self.size_bytes} bytes{', closed' if self.closed else ''}>")

    # -- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        """Sync what was appended (unless the LOG failed), then release the directory."""
        with _native_errors():
            self._native.close()

    def __enter__(self) -> NativeLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._native.closed:
            raise LogClosedError(f"{self._directory}: the LOG is closed")


def _marker(marker: Payload | Record) -> tuple[bytes, bytes, int, int]:
    """``(payload, stamp, route_kind, route)`` of a torn tail's marker."""
    if isinstance(marker, Record):
        stamp = marker.stamp if len(marker.stamp) == len(NO_STAMP) else NO_STAMP
        return (marker.SerializeToString(), stamp, *frame_route(marker))
    parts = marker if isinstance(marker, (list, tuple)) else (marker,)
    return b"".join(bytes(p) for p in parts), b"", 0, 0


class NativeCommitter:
    """Asyncio group commit over the native committer: ``append`` (or
    ``append_nowait``'s durable future) resolves per durability, plus RPO
    accounting and the quota.

    All coroutines must run on one event loop. Does not own the LOG:
    ``close()`` syncs and stops the flusher; the caller closes the LOG after.
    """

    def __init__(self, log: NativeLog, *, durability: Durability | str = Durability.SYNC,
                 flush_interval_s: float = 0.01, quota_bytes: int | None = None):
        if flush_interval_s < 0:
            raise ValueError(f"flush_interval_s must be >= 0, got {flush_interval_s}")
        self._log = log
        self._durability = Durability(durability)
        # Urgency is per append: this wrapper's own appends (baseline pieces,
        # gap marks, the Python plane's records) ask for an fsync at once in
        # sync and strict, while the native relay asks only for records whose
        # reply waits. A committer in "sync" would fsync every append, an
        # UNSTABLE write's too, whose reply promises nothing.
        self._urgent = self._durability is not Durability.ASYNC
        with _native_errors():
            self._native = _dataplane.NativeCommitter(log.native, "async", flush_interval_s)
        self.quota_bytes = quota_bytes
        self._waiters: deque[tuple[int, asyncio.Future[int]]] = deque()  # seq order
        self._space_waiters: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        log.add_trim_listener(self._on_trim)

    # -- appending ------------------------------------------------------------

    async def append(self, payload: Payload, **routing: Any) -> int:
        """Append one record; in ``sync`` durability return only once it is durable."""
        seq, durable = self.append_nowait(payload, **routing)
        if durable is not None:
            await durable
        return seq

    def append_nowait(self, payload: Payload,
                      **routing: Any) -> tuple[int, asyncio.Future[int] | None]:
        """Append one record now; returns its seq and, in ``sync`` durability, a
        future resolved once it is durable (None in ``async``)."""
        self._check_usable()
        self._start()
        with _native_errors():
            seq = self._native.append(payload, routing.get("stamp", b""),
                                      routing.get("route_kind", 0), routing.get("route", 0),
                                      self._urgent)
        if self._durability is Durability.ASYNC:
            return seq, None
        return seq, self._durable_future(seq)

    def _durable_future(self, seq: int) -> asyncio.Future[int]:
        assert self._loop is not None
        future: asyncio.Future[int] = self._loop.create_future()
        if self._native.synced_seq >= seq:
            future.set_result(seq)
        else:
            self._waiters.append((seq, future))
        return future

    async def flush(self) -> int:
        """Fsync everything appended so far, now; return the synced seq."""
        self._check_usable()
        self._start()
        target = self._log.last_seq
        if self._native.synced_seq < target:
            future = self._durable_future(target)
            self._native.request_sync()
            await future
        return self._native.synced_seq

    def _start(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._native.notify_fd(), self._on_synced)

    def _on_synced(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._native.notify_fd(), 8)
        synced = self._native.synced_seq
        while self._waiters and self._waiters[0][0] <= synced:
            seq, future = self._waiters.popleft()
            if not future.done():  # a caller may have been cancelled
                future.set_result(seq)
        failure = self._native.failure
        if failure is not None:
            exc = LogClosedError(f"group commit failed: {failure}")
            logger.error("group commit failed: %s", failure)
            while self._waiters:
                _, future = self._waiters.popleft()
                if not future.done():
                    future.set_exception(exc)

    # -- counters and the RPO window -----------------------------------------

    @property
    def appends_total(self) -> int:
        return self._native.appends_total

    @property
    def fsyncs_total(self) -> int:
        return self._native.fsyncs_total

    @property
    def appended_bytes_total(self) -> int:
        return self._native.appended_bytes_total

    @property
    def unsynced_records(self) -> int:
        return self._native.unsynced()[0]

    @property
    def unsynced_bytes(self) -> int:
        return self._native.unsynced()[1]

    @property
    def oldest_unsynced_age_s(self) -> float:
        return self._native.unsynced()[2]

    # -- quota ----------------------------------------------------------------

    @property
    def quota_bytes(self) -> int | None:
        return self._native.quota_bytes

    @quota_bytes.setter
    def quota_bytes(self, quota: int | None) -> None:
        self._native.quota_bytes = quota

    @property
    def over_quota(self) -> bool:
        """True when the LOG's size on disk exceeds ``quota_bytes``."""
        return self._native.over_quota

    async def wait_for_space(self) -> None:
        """Return once the LOG is within its quota; trims wake it up."""
        loop = asyncio.get_running_loop()
        self._loop = self._loop or loop
        while self.over_quota:
            self._check_usable()
            future: asyncio.Future[None] = loop.create_future()
            self._space_waiters.append(future)
            await future

    def trim(self, below_seq: int) -> int:
        """``Log.trim``; wakes space waiters."""
        return self._log.trim(below_seq)

    def _on_trim(self) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._wake_space_waiters)

    def _wake_space_waiters(self, exc: BaseException | None = None) -> None:
        waiters, self._space_waiters = self._space_waiters, []
        for future in waiters:
            if future.done():
                continue
            if exc is None:
                future.set_result(None)
            else:
                future.set_exception(exc)

    # -- state and lifecycle --------------------------------------------------

    @property
    def log(self) -> NativeLog:
        return self._log

    @property
    def durability(self) -> Durability:
        return self._durability

    @property
    def native(self) -> _dataplane.NativeCommitter:
        """The native committer, for the native relay to journal through."""
        return self._native

    async def close(self) -> None:
        """Refuse new appends, fsync everything appended, stop the flusher.

        Does not close the LOG. Raises the flusher's failure, if it had one.
        """
        if self._closing:
            return
        self._closing = True
        self._log.remove_trim_listener(self._on_trim)
        self._wake_space_waiters(LogClosedError("the group committer is closed"))
        try:
            with _native_errors():
                await asyncio.to_thread(self._native.close)
        finally:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._native.notify_fd())
                    self._on_synced()

    async def __aenter__(self) -> NativeCommitter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_usable(self) -> None:
        failure = self._native.failure
        if failure is not None:
            raise LogClosedError(f"group commit failed earlier: {failure}")
        if self._closing:
            raise LogClosedError("the group committer is closed")

    def __repr__(self) -> str:
        return (f"<NativeCommitter {self._durability.value} appends={self.appends_total} "
                f"fsyncs={self.fsyncs_total} {self._log!r}>")
