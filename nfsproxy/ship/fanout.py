"""One reader of the LOG for every shard's shipper.

Without it, each of a proxy's N shippers reads and checks the whole LOG to
find its shard's frames: N reads of every byte. ``LogFanout`` reads a region
once, checks its frames once, and queues each frame for the shards it
belongs to (``_dataplane.ShardFanout``, nfsproxy/dataplane/src/log/fanout.rs);
each shipper takes its batch from its queue.

The queues never decide what a shard is sent. Each shard's queue holds all
its frames from some seq up to the reader's position. A shipper asks for
the batch from the seq its stream needs next; below its queue's window (a
rewind, a reconnect), ``take`` answers with a seq instead, and the shipper
reads the LOG alone up to there, as without this reader, and is served from
its queue after. A queue whose frames are left too long (its shard is down,
or slower than the others) is emptied once the regions kept pass
``cap_bytes``, and starts again at the reader's position. Where the reader
cannot go on (a version 1 segment, a frame it cannot route by its header,
damage, a trimmed range), the shards that need that part read alone, and
meet the damage or the gap themselves.
"""

from __future__ import annotations

import logging
import threading

from logstore.log import Log, LogCursor, LogError
from nfsproxy import _dataplane

__all__ = ["LogFanout", "DEFAULT_FANOUT_BYTES", "FanoutBatch", "shared_reader"]

logger = logging.getLogger(__name__)

#: Read regions kept for shards that have not taken their frames yet.
DEFAULT_FANOUT_BYTES = 64 << 20

#: ``take``'s answer for "read the LOG yourself, as far as you like".
_ALONE = (1 << 64) - 1

#: ``(frames, records, nbytes, through_seq, newest, blocked_by)``, as
#: ``_dataplane.select_shard_frames`` names them.
FanoutBatch = tuple[bytes, int, int, int, bytes, int]


def shared_reader(log: Log, n_shards: int) -> LogFanout | None:
    """The reader a proxy's shippers share; None for one shard, which reads alone anyway."""
    return LogFanout(log, n_shards) if n_shards > 1 else None


class LogFanout:
    """The shared reader of ``log`` for the shippers of ``n_shards`` shards.

    ``take`` is called from the shippers' worker threads, any number at
    once; reads run one at a time. ``close()`` after the shippers stopped.
    """

    def __init__(self, log: Log, n_shards: int, cap_bytes: int = DEFAULT_FANOUT_BYTES):
        self._log = log
        self._native = _dataplane.ShardFanout(n_shards, cap_bytes)
        self._reading = threading.Lock()  # the one reader: its cursor and its fills
        self._cursor: LogCursor | None = None
        self._closed = False

    def take(self, shard_id: int, from_seq: int, limit_seq: int, budget: int, max_records: int,
             allow_oversize: bool) -> FanoutBatch | int:
        """Shard ``shard_id``'s next batch from LOG seq ``from_seq`` on, as
        ``select_shard_frames`` would select it with the same limits; or an
        int: read the LOG yourself, up to that seq at most."""
        if self._closed:
            return _ALONE
        may_fill = True
        while True:
            kind, got = self._native.take(shard_id, from_seq, limit_seq, budget, max_records,
                                          allow_oversize, may_fill)
            if kind != "fill":
                return got
            may_fill = self._fill(shard_id, got, limit_seq)

    def is_served(self, shard_id: int) -> bool:
        """Whether the shard's last batch came from this reader."""
        return self._native.is_served(shard_id)

    def stats(self) -> dict[str, int]:
        """Shards whose last batch it served, bytes kept queued, regions read,
        batches served, queues emptied for holding past the cap, and read
        buffers allocated (each is fresh memory; up to the cap's worth are
        kept and used again)."""
        served, kept_bytes, fills, batches, evictions, allocated = self._native.stats()
        return {"served": served, "kept_bytes": kept_bytes, "reads_total": fills,
                "batches_total": batches, "evictions_total": evictions,
                "buffers_allocated_total": allocated}

    def close(self) -> None:
        """Stop reading; shippers still asking are sent to read alone."""
        with self._reading:
            self._closed = True
            self._native.reset()
            self._close_cursor()

    def _fill(self, shard_id: int, at: int, limit_seq: int) -> bool:
        """Read for every shard from seq ``at``, as shard ``shard_id`` asks;
        False if the reader could not move on."""
        with self._reading:
            if self._native.position() != at:
                return True  # another shipper's read moved it meanwhile
            if self._closed:
                return False
            try:
                return self._read(shard_id, at, limit_seq)
            except (LogError, OSError) as e:
                # The shards that need this part read it alone and meet the error there.
                logger.debug("shared LOG reader stops at seq %d: %s", at, e)
                self._native.stuck_at(at)
                self._close_cursor()
                return False

    def _read(self, shard_id: int, at: int, limit_seq: int) -> bool:
        cursor = self._cursor_at(at)
        while True:
            span = cursor.span()
            if span is None:
                return False  # the LOG's end
            if span.version < 2:
                self._native.stuck_at(at)
                return False
            offset, next_seq, stop = self._native.fill(shard_id, span.fd, span.path, span.offset,
                                                       span.end, span.expect_seq, at, limit_seq)
            cursor.consumed(offset, next_seq)
            if self._native.position() != at:
                return True
            if stop != "done" or offset == span.offset:
                return False
            # Only frames below `at` were passed over (the cursor opened at an index point before it).

    def _cursor_at(self, seq: int) -> LogCursor:
        if self._cursor is None or self._cursor.next_seq != seq:
            self._close_cursor()
            self._cursor = self._log.read(seq)
        return self._cursor

    def _close_cursor(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None
