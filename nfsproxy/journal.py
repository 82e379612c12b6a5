"""The proxy's side of the LOG: appending records under a quota policy.

Durability (sync or async) is the group committer's business; this module
adds what happens when the LOG is over its disk quota:

* ``block`` (fail closed): the record waits for space, and so does the
  client's reply. Clients stall; nothing goes unjournaled.
* ``passthrough`` (fail open): the NAS keeps serving, records are dropped and
  counted, and `passthrough_active` raises an alert until space returns.
  The journal has a hole from then on; only a new baseline closes it.
"""

from __future__ import annotations

import asyncio
import enum
import logging

from logstore.commit import GroupCommitter
from logstore.record import Record, record_parts

__all__ = ["QuotaPolicy", "QuotaWait", "Journal"]

logger = logging.getLogger(__name__)


class QuotaWait(Exception):
    """The LOG is over quota: this record must take the policy's slow path."""


class QuotaPolicy(str, enum.Enum):
    BLOCK = "block"
    PASSTHROUGH = "passthrough"


class Journal:
    """Appends records to the LOG through a `GroupCommitter`."""

    def __init__(self, committer: GroupCommitter, policy: QuotaPolicy | str = QuotaPolicy.BLOCK):
        self.committer = committer
        self.policy = QuotaPolicy(policy)
        self.records_total = 0
        self.dropped_total = 0
        self.blocked_now = 0
        self.passthrough_active = False

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
        _, durable = self.committer.append_nowait(record_parts(record, data))
        self.records_total += 1
        return durable

    async def append(self, record: Record, data: memoryview | None = None) -> int | None:
        """Journal one record; returns its LOG seq, or None if the quota dropped it.

        Returns when the committer's durability says the record is safe.
        """
        if self.committer.over_quota:
            if self.policy is QuotaPolicy.PASSTHROUGH:
                return self._drop()
            await self._wait_for_space()
        elif self.passthrough_active:
            logger.warning("LOG back under quota; journaling resumed (a baseline closes the hole)")
            self.passthrough_active = False
        seq = await self.committer.append(record_parts(record, data))
        self.records_total += 1
        return seq

    def _drop(self) -> None:
        if not self.passthrough_active:
            logger.error("LOG over quota (%d bytes): passthrough policy, records are NOT journaled",
                         self.committer.quota_bytes)
            self.passthrough_active = True
        self.dropped_total += 1
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
