"""Group commit: asyncio appends to a ``Log`` that share fsyncs.

``sync`` durability (RPO 0): ``await append()`` resolves only once its record
is fsynced. Appends write at once on the event loop (a page-cache write); one
fsync at a time runs in a worker thread, and every record written while it runs
waits for the next one. So under load each fsync covers a whole batch, and the
batch grows by itself as the disk gets slower.

``async`` durability: ``await append()`` resolves right after the write, and
a background flusher fsyncs ``flush_interval_s`` after the first unsynced
record. The records not yet fsynced are the RPO window; ``unsynced_records``,
``unsynced_bytes`` and ``oldest_unsynced_age_s`` measure it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from concurrent.futures import ThreadPoolExecutor

from logstore.log import Log, LogClosedError
from logstore.segment import Payload, payload_parts

__all__ = ["Durability", "GroupCommitter"]

logger = logging.getLogger(__name__)


class Durability(str, enum.Enum):
    """When ``GroupCommitter.append`` resolves: after the fsync, or after the write."""

    SYNC = "sync"
    ASYNC = "async"


class GroupCommitter:
    """Asyncio front of a ``Log``: group commit, RPO accounting, quota.

    All coroutines must run on one event loop. The committer does not own the
    LOG: ``close()`` syncs and stops it, and the caller closes the LOG after.
    """

    def __init__(self, log: Log, *, durability: Durability | str = Durability.SYNC,
                 flush_interval_s: float = 0.01, quota_bytes: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if flush_interval_s < 0:
            raise ValueError(f"flush_interval_s must be >= 0, got {flush_interval_s}")
        self._log = log
        self._durability = Durability(durability)
        self._flush_interval_s = flush_interval_s
        self.quota_bytes = quota_bytes
        self._clock = clock
        # Counters; metrics read them.
        self.appends_total = 0
        self.fsyncs_total = 0
        self.appended_bytes_total = 0
        # (seq, nbytes, appended_at) of each record not yet known durable, oldest first.
        self._unsynced: deque[tuple[int, int, float]] = deque()
        self._unsynced_bytes = 0
        self._waiters: deque[tuple[int, asyncio.Future[int]]] = deque()  # seq order
        self._space_waiters: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: asyncio.Event | None = None  # unsynced records exist
        self._urgent: asyncio.Event | None = None  # someone awaits an fsync
        self._failure: BaseException | None = None
        self._closing = False
        log.add_trim_listener(self._on_trim)

    # -- appending ------------------------------------------------------------

    async def append(self, payload: Payload, **routing: Any) -> int:
        """Append one record and return its seq; in ``sync`` durability, only
        once it is durable. ``payload`` and ``routing`` (stamp, route_kind,
        route) are as for ``Log.append``; the payload is written before the
        first await, so the caller may reuse its buffers as soon as this
        coroutine is suspended.
        """
        seq, durable = self.append_nowait(payload, **routing)
        if durable is not None:
            await durable
        return seq

    def append_nowait(self, payload: Payload,
                      **routing: Any) -> tuple[int, asyncio.Future[int] | None]:
        """Append one record now (on the loop's thread) without a coroutine.

        Returns its seq and, in ``sync`` durability, a future that resolves
        once it is durable (None in ``async``). The relay uses this to release
        a reply from a callback instead of a task per record.
        """
        self._check_usable()
        self._start()
        nbytes = payload_parts(payload)[1]
        seq = self._log.append(payload, **routing)
        self.appends_total += 1
        self.appended_bytes_total += nbytes
        self._unsynced.append((seq, nbytes, self._clock()))
        self._unsynced_bytes += nbytes
        assert self._pending is not None
        self._pending.set()
        if self._durability is Durability.ASYNC:
            return seq, None
        return seq, self._durable_future(seq)

    def _durable_future(self, seq: int) -> asyncio.Future[int]:
        assert self._loop is not None and self._urgent is not None
        future: asyncio.Future[int] = self._loop.create_future()
        if self._log.synced_seq >= seq:
            future.set_result(seq)
            return future
        self._waiters.append((seq, future))
        self._urgent.set()
        return future

    async def flush(self) -> int:
        """Fsync everything appended so far, now; return the synced seq."""
        self._check_usable()
        self._start()
        await self._wait_synced(self._log.last_seq)
        return self._log.synced_seq

    async def _wait_synced(self, seq: int) -> None:
        if self._log.synced_seq >= seq:
            return
        assert self._pending is not None
        self._pending.set()
        await self._durable_future(seq)

    # -- the flusher ----------------------------------------------------------

    def _start(self) -> None:
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._pending = asyncio.Event()
        self._urgent = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nfsj-fsync")
        self._task = self._loop.create_task(self._run(), name="logstore-group-commit")

    async def _run(self) -> None:
        assert self._pending is not None and self._urgent is not None
        try:
            while True:
                await self._pending.wait()
                if not self._urgent.is_set():
                    # Async durability: let a window of records gather first.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._urgent.wait(), self._flush_interval_s)
                self._pending.clear()
                self._urgent.clear()
                if self._log.synced_seq < self._log.last_seq:
                    await self._sync_once()
                self._settle()
                if self._closing and self._log.synced_seq >= self._log.last_seq:
                    return
        except asyncio.CancelledError as exc:
            self._fail(exc)
            raise
        except Exception as exc:  # noqa: BLE001  handed to every waiter, and to close()
            self._fail(exc)

    async def _sync_once(self) -> None:
        assert self._loop is not None
        # Appends keep running on the loop while this thread fsyncs; they queue
        # for the next round.
        await self._loop.run_in_executor(self._executor, self._log.sync)
        self.fsyncs_total += 1

    def _settle(self) -> None:
        """Resolve waiters and drop accounting for everything now durable."""
        synced = self._log.synced_seq
        while self._waiters and self._waiters[0][0] <= synced:
            seq, future = self._waiters.popleft()
            if not future.done():  # a caller may have been cancelled
                future.set_result(seq)
        self._forget_synced(synced)

    def _forget_synced(self, synced: int) -> None:
        while self._unsynced and self._unsynced[0][0] <= synced:
            self._unsynced_bytes -= self._unsynced.popleft()[1]

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            exc = LogClosedError("the group committer was cancelled")
        self._failure = exc
        logger.error("group commit failed: %s", exc)
        while self._waiters:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_exception(exc)

    # -- RPO window -----------------------------------------------------------

    @property
    def unsynced_records(self) -> int:
        """Records appended but not known durable."""
        self._forget_synced(self._log.synced_seq)
        return len(self._unsynced)

    @property
    def unsynced_bytes(self) -> int:
        """Payload bytes appended but not known durable."""
        self._forget_synced(self._log.synced_seq)
        return self._unsynced_bytes

    @property
    def oldest_unsynced_age_s(self) -> float:
        """Age of the oldest record not known durable (0.0 if none): the RPO window."""
        self._forget_synced(self._log.synced_seq)
        if not self._unsynced:
            return 0.0
        return max(0.0, self._clock() - self._unsynced[0][2])

    # -- quota ----------------------------------------------------------------

    @property
    def over_quota(self) -> bool:
        """True when the LOG's size on disk exceeds ``quota_bytes``. The policy
        (block or pass through) is the caller's."""
        return self.quota_bytes is not None and self._log.size_bytes > self.quota_bytes

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
        """``Log.trim``: delete whole segments below ``below_seq``; wakes space waiters."""
        return self._log.trim(below_seq)

    def _on_trim(self) -> None:
        # Called from whichever thread trimmed.
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
    def log(self) -> Log:
        return self._log

    @property
    def durability(self) -> Durability:
        return self._durability

    async def close(self) -> None:
        """Refuse new appends, fsync everything appended, stop the flusher.

        Does not close the LOG. Raises the flusher's failure, if it had one.
        """
        if self._closing:
            return
        self._closing = True
        self._log.remove_trim_listener(self._on_trim)
        self._wake_space_waiters(LogClosedError("the group committer is closed"))
        if self._task is None:
            if not self._log.closed:
                self._log.sync()
            return
        assert self._pending is not None and self._urgent is not None
        self._pending.set()
        self._urgent.set()
        try:
            await self._task
        finally:
            assert self._executor is not None
            self._executor.shutdown(wait=False)
        if self._failure is not None:
            raise LogClosedError(f"group commit failed: {self._failure}") from self._failure

    async def __aenter__(self) -> GroupCommitter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise LogClosedError(f"group commit failed earlier: {self._failure}")
        if self._closing:
            raise LogClosedError("the group committer is closed")

    def __repr__(self) -> str:
        return (f"<GroupCommitter {self._durability.value} appends={self.appends_total} "
                f"fsyncs={self.fsyncs_total} unsynced={len(self._unsynced)} {self._log!r}>")
