"""The proxy's side of the LOG: appending records under a quota policy.

Durability (sync or async) is the group committer's business; this module
adds what happens when the LOG is over its disk quota:

* ``block`` (fail closed): the record waits for space, and so does the
  client's reply. Clients stall; nothing goes unjournaled.
* ``passthrough`` (fail open): the NAS keeps serving, records are dropped and
  counted, and `passthrough_active` raises an alert until space returns.

Gaps are never silent. A record that may be missing (dropped under the
quota, a LOG write that failed, e.g. ENOSPC, a call relayed to the NAS whose
reply never came) is handed to ``mark_gap``. Its stamp stays in flight (so
no heartbeat claims past it) until a GAP record is in the LOG: stamped after
every record it stands for, with the cause and reason, shipped to every
shard like any record (recoveryd/frontier.py says what a gap does to the
consistent point). Gaps marked close together share one GAP record: at
most one per ``gap_interval_s``. If even the GAP record cannot be written
(the disk is still full) it is retried until it can; meanwhile the stamp
holds the stable stamp back, so nothing past the gap is called proven.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import Counter, deque

from logstore.record import Op, Record, record_parts
from logstore.segment import NO_STAMP
from nfsproxy.native.log import NativeCommitter
from logstore.sharding import frame_route

__all__ = ["QuotaPolicy", "QuotaWait", "Journal", "gap_record", "frame_fields"]

logger = logging.getLogger(__name__)


class QuotaWait(Exception):
    """The LOG is over quota: this record must take the policy's slow path."""


class QuotaPolicy(str, enum.Enum):
    BLOCK = "block"
    PASSTHROUGH = "passthrough"


def gap_record(stamp: bytes, cause: str, reason: str, from_stamp: bytes = b"") -> Record:
    """A GAP record: records stamped at or below ``stamp`` may be missing."""
    return Record(op=Op.GAP, ok=True, stamp=stamp, gap_from=from_stamp, gap_cause=cause,
                  gap_reason=reason)


def frame_fields(record: Record) -> dict:
    """The routing fields ``Log.append`` puts in ``record``'s frame header."""
    route_kind, route = frame_route(record)
    stamp = record.stamp if len(record.stamp) == len(NO_STAMP) else NO_STAMP
    return {"stamp": stamp, "route_kind": route_kind, "route": route}


class _OpenGap:
    """Gaps marked but not yet in the LOG: one GAP record will stand for all."""

    def __init__(self, stamp: bytes | None, cause: str, reason: str):
        self.from_stamp = stamp or b""
        self.causes: Counter[str] = Counter({cause: 1})
        self.reason = reason

    def add(self, stamp: bytes | None, cause: str) -> None:
        if stamp and (not self.from_stamp or stamp < self.from_stamp):
            self.from_stamp = stamp
        self.causes[cause] += 1

    def describe(self) -> tuple[str, str]:
        cause = self.causes.most_common(1)[0][0]
        count = sum(self.causes.values())
        more = f" (and {count - 1} more record(s) that may be missing)" if count > 1 else ""
        return cause, self.reason + more


class Journal:
    """Appends records to the LOG through the native group committer."""

    def __init__(self, committer: NativeCommitter, policy: QuotaPolicy | str = QuotaPolicy.BLOCK,
                 *, gap_interval_s: float = 1.0):
        self.committer = committer
        self.policy = QuotaPolicy(policy)
        self.gap_interval_s = gap_interval_s
        self.records_total = 0
        self.dropped_total = 0
        self.blocked_now = 0
        self.passthrough_active = False
        self.gaps_total: Counter[str] = Counter()   # records that may be missing, by cause
        self.gap_records_total = 0                  # GAP records written
        self.intents_total = 0                      # write-ahead intents (the native relay's own count)
        self.intents_rebuilt = 0                    # records rebuilt from orphaned intents at start
        self.intents_kept = 0                       # intents not yet settled (the native relay's own)
        self.gaps: deque[str] = deque(maxlen=100)   # "stamp cause: reason", newest last
        self._proxy = None        # hold/release/clock/spawn: see attach()
        self._open: _OpenGap | None = None
        self._flusher: asyncio.Task | None = None

    def attach(self, proxy) -> None:
        """Use ``proxy`` (nfsproxy.relay.session.Proxy) for the clock and in-flight stamps."""
        self._proxy = proxy

    # -- gaps ------------------------------------------------------------------

    def mark_gap(self, stamp: bytes | None, cause: str, reason: str) -> None:
        """A record stamped ``stamp`` may be missing (see the module docstring)."""
        self.gaps_total[cause] += 1
        if self._open is None:
            logger.error("journal gap (%s): %s", cause, reason)
            self._open = _OpenGap(stamp, cause, reason)
        else:
            self._open.add(stamp, cause)
        if self._proxy is not None and self._open.from_stamp:
            self._proxy.hold(id(self._open), self._open.from_stamp)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_gaps())

    def count_gap(self, cause: str, text: str) -> None:
        """Count a gap whose GAP record is already in the LOG (a torn tail)."""
        self.gaps_total[cause] += 1
        self.gap_records_total += 1
        self.gaps.append(text)

    @property
    def unmarked_gaps(self) -> int:
        """1 while a gap waits for its GAP record to reach the LOG."""
        return 0 if self._open is None else 1

    async def _flush_gaps(self) -> None:
        retry_s = 0.05
        while self._open is not None:
            if self._write_gap():
                await asyncio.sleep(self.gap_interval_s)  # later gaps share the next record
                continue
            await asyncio.sleep(retry_s)
            retry_s = min(retry_s * 2, 1.0)

    def _write_gap(self) -> bool:
        """Append the open gap's GAP record (quota or not); True once it is in the LOG."""
        gap = self._open
        if gap is None:
            return True
        cause, reason = gap.describe()
        stamp = self._proxy.clock.now().to_bytes() if self._proxy is not None else gap.from_stamp
        record = gap_record(stamp, cause, reason, gap.from_stamp)
        try:
            self.committer.append_nowait(record_parts(record), **frame_fields(record))
        except Exception as e:  # noqa: BLE001  ENOSPC, or a LOG that failed: the stamp stays held
            logger.error("cannot write the GAP record yet (%s); retrying", e)
            return False
        self.gap_records_total += 1
        self.gaps.append(f"{cause}: {reason}")
        self._open = None
        if self._proxy is not None:
            self._proxy.release(id(gap))  # the GAP record is in the LOG, past every claim before it
        return True

    async def close(self) -> None:
        """Write any gap still open (the committer closes after this)."""
        if self._flusher is not None:
            self._flusher.cancel()
        try:
            self._write_gap()
        except Exception:  # noqa: BLE001  closing anyway; the stamp stays unproven
            logger.exception("could not write the last GAP record")

    def must_hold(self) -> bool:
        """True when a mutation must wait before reaching the NAS (block policy, over quota)."""
        return self.policy is QuotaPolicy.BLOCK and self.committer.over_quota

    async def wait_until_journaling(self) -> None:
        """Return once a mutation may proceed under the quota policy."""
        if self.must_hold():
            await self._wait_for_space()

    @property
    def fast_path_open(self) -> bool:
        """True when records may be appended without consulting the quota policy."""
        return not (self.committer.over_quota or self.passthrough_active)

    def append_nowait(self, record: Record, data: memoryview | None = None) -> asyncio.Future[int] | None:
        """Journal one record now, when the quota allows it without waiting.

        Returns a future that resolves once the record is durable (sync
        durability) or None (async: it already counts as journaled). Raise
        `QuotaWait` when the caller must take the waiting path (`append`).
        """
        if not self.fast_path_open:
            raise QuotaWait()
        try:
            _, durable = self.committer.append_nowait(record_parts(record, data),
                                                      **frame_fields(record))
        except OSError as e:
            self._write_failed(record, e)
            raise
        self.records_total += 1
        return durable

    def _write_failed(self, record: Record, error: OSError) -> None:
        self.mark_gap(record.stamp, "log_write_failed",
                      f"the LOG could not write a {Op.Name(record.op)} record: "
                      f"{error.strerror or error}")

    async def append(self, record: Record, data: memoryview | None = None) -> int | None:
        """Journal one record; returns its LOG seq, or None if the quota dropped it.

        Returns when the committer's durability says the record is safe.
        """
        if self.committer.over_quota:
            if self.policy is QuotaPolicy.PASSTHROUGH:
                return self._drop(record)
            await self._wait_for_space()
        elif self.passthrough_active:
            logger.warning("LOG back under quota; journaling resumed (a baseline closes the gap)")
            self.passthrough_active = False
        try:
            seq = await self.committer.append(record_parts(record, data), **frame_fields(record))
        except OSError as e:
            self._write_failed(record, e)
            raise
        self.records_total += 1
        return seq

    def _drop(self, record: Record) -> None:
        if not self.passthrough_active:
            logger.error("LOG over quota (%d bytes): passthrough policy, records are NOT journaled",
                         self.committer.quota_bytes)
            self.passthrough_active = True
        self.dropped_total += 1
        self.mark_gap(record.stamp, "quota_drop", "the LOG was over its quota (passthrough "
                      "policy): records were not journaled")
        return None

    async def _wait_for_space(self) -> None:
        if not self.blocked_now:
            logger.error("LOG over quota (%d bytes): block policy, holding replies until it is trimmed",
                         self.committer.quota_bytes)
        self.blocked_now += 1
        try:
            while self.committer.over_quota:
                await self.committer.wait_for_space()
        finally:
            self.blocked_now -= 1
