"""Healing gaps: the proxy's own baseline after any gap it sees.

A gap (records that may be missing: an unclean stop, a torn tail, a call
whose reply never came, a LOG range trimmed before a shard held it, a
passthrough drop) holds every shard's consistent point at its start until a
baseline begun after it ends (``recoveryd.frontier.healed_by``). Left to an
operator, every restore past it is refused until someone notices and runs
`nfsj baseline`: after a crash at night, all of the next day is unproven.
Litestream, losing its WAL's continuity, starts a new generation from a
snapshot by itself; this proxy likewise runs a baseline ``delay_s`` after the
latest gap it saw (a burst of gaps gets one baseline, after it ends), unless
a baseline that began after that gap has ended by then, whoever asked for it.

A heal still owed survives a restart: HEAL beside the LOG says so (written
as soon as a gap is on record, and once more after a stop has marked its
last ones), and a proxy that finds it owes one again. No heal starts while
the LOG is over its quota: the baseline would be held back (block policy)
or dropped (passthrough). A steady trickle of gaps postpones the heal at
most ``MAX_POSTPONE`` delays past the first one it owes.

``HealPlan`` is the bookkeeping alone (no I/O, no clock of its own);
``Healer`` runs it on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Awaitable, Callable

__all__ = ["HealPlan", "Healer", "DEFAULT_HEAL_DELAY_S", "HEAL_FILE"]

logger = logging.getLogger(__name__)

#: How long after the latest gap the proxy's own baseline starts: a burst of
#: gaps (a flapping client, a crash loop) gets one baseline, not one each.
DEFAULT_HEAL_DELAY_S = 60.0
#: Beside the LOG while a heal is owed.
HEAL_FILE = "HEAL"
#: A heal whose baseline failed is tried again after at least this long.
RETRY_S = 60.0
#: New gaps push the heal back by the delay each, to at most this many
#: delays after the first gap it owes (a flapping client's gaps never end).
MAX_POSTPONE = 10


class HealPlan:
    """Which gaps a baseline has yet to heal, and when the next one is due.

    Gaps are numbered in the order they are seen (``saw_gaps``); a baseline
    heals every gap seen before it began (``began`` gives that number,
    ``ended`` takes it back when the baseline completed). A heal is due
    ``delay_s`` after the latest gap still owed, at most ``MAX_POSTPONE``
    delays after the oldest, and never sooner than a failed one's retry."""

    def __init__(self, delay_s: float, *, owed: bool = False, now: float = 0.0) -> None:
        self.delay_s = delay_s
        self._seen_total = 0        # gaps counted so far (the callers' running total)
        self._newest = 1 if owed else 0  # number of the newest gap
        self._owed: dict[int, float] = {1: now} if owed else {}  # gaps not yet healed: when seen
        self._retry_at: float | None = None

    @property
    def owed(self) -> bool:
        """Whether some gap waits for a baseline begun after it."""
        return bool(self._owed)

    @property
    def due_at(self) -> float | None:
        """When the next heal is due (None: none is owed)."""
        if not self._owed:
            return None
        seen = self._owed.values()
        at = min(max(seen) + self.delay_s, min(seen) + MAX_POSTPONE * self.delay_s)
        return at if self._retry_at is None else max(at, self._retry_at)

    def saw_gaps(self, total: int, now: float) -> bool:
        """``total`` gaps counted so far; True when some are new."""
        if total <= self._seen_total:
            return False
        self._seen_total = total
        self._newest += 1
        self._owed[self._newest] = now
        return True

    def due(self, now: float) -> bool:
        """Whether the proxy should start its own baseline now."""
        at = self.due_at
        return at is not None and now >= at

    def began(self) -> int:
        """A baseline begins: the mark it heals up to when it ends."""
        return self._newest

    def ended(self, mark: int) -> None:
        """The baseline that began at ``mark`` completed (it has an END): the
        gaps seen after it began are owed, timed from when they were seen."""
        self._owed = {n: seen for n, seen in self._owed.items() if n > mark}
        self._retry_at = None

    def failed(self, now: float) -> None:
        """The proxy's own baseline failed: no heal again before a retry interval."""
        if self.owed:
            self._retry_at = now + max(self.delay_s, RETRY_S)


class Healer:
    """Runs a ``HealPlan``: counts gaps, keeps HEAL beside the LOG, and starts
    a baseline through ``run_baseline`` (which takes the control API's
    one-at-a-time lock and reports to ``began``/``ended``) when one is due.

    ``gaps_total()``: the gaps this proxy has on record (GAP records in its
    LOG, ranges its shippers found trimmed); ``over_quota()``: whether the
    LOG is over its quota."""

    def __init__(self, log_dir: str, delay_s: float, gaps_total: Callable[[], int],
                 over_quota: Callable[[], bool], *, enabled: bool = True,
                 poll_s: float = 1.0, clock: Callable[[], float] | None = None) -> None:
        self.enabled = enabled
        self._path = os.path.join(log_dir, HEAL_FILE)
        self._clock = clock or asyncio.get_running_loop().time
        self.plan = HealPlan(delay_s, owed=os.path.exists(self._path), now=self._clock())
        self._gaps_total = gaps_total
        self._over_quota = over_quota
        self._poll_s = poll_s
        self._task: asyncio.Task | None = None
        self._healing: asyncio.Task | None = None
        self._marked = self.plan.owed
        self.baselines_total = 0    # baselines this proxy began on its own to heal gaps
        self.failures_total = 0

    def start(self, run_baseline: Callable[[], Awaitable[bool | None]]) -> None:
        """Watch for gaps; ``run_baseline()`` runs one baseline in its turn if
        one is still due then (``due``): None if not, else whether it ended."""
        self._task = asyncio.get_running_loop().create_task(self._run(run_baseline))

    async def stop(self) -> None:
        """Stop watching, and any heal under way (its baseline then has no END)."""
        for task in (self._task, self._healing):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def settle(self) -> None:
        """Count the gaps marked since the last look (a stopping proxy's
        last ones), so that HEAL says whether the next start owes a heal."""
        try:
            self.plan.saw_gaps(self._gaps_total(), self._clock())
        except Exception:  # noqa: BLE001  stopping anyway; the alert still sees the gap
            logger.exception("healing gaps: cannot count the gaps this stop marked")
        self._keep_mark()

    def began(self) -> int:
        """A baseline begins (any: asked for or the proxy's own)."""
        self.plan.saw_gaps(self._gaps_total(), self._clock())  # it heals exactly those counted
        return self.plan.began()

    def ended(self, mark: int) -> None:
        """The baseline whose ``began`` gave ``mark`` ended."""
        self.plan.ended(mark)
        self._keep_mark()

    def status(self) -> dict:
        """The healer in the proxy's status (``nfsj status --log``)."""
        due_at = self.plan.due_at
        return {"enabled": self.enabled, "owed": self.plan.owed,
                "due_in_s": None if due_at is None or not self.enabled else max(0.0, due_at - self._clock()),
                "over_quota": bool(self.plan.owed and self._over_quota()),
                "baselines_total": self.baselines_total, "failures_total": self.failures_total}

    def due(self) -> bool:
        """Whether a heal should start now (asked again once the lock is held)."""
        return self.enabled and self.plan.due(self._clock()) and not self._over_quota()

    async def _run(self, run_baseline: Callable[[], Awaitable[bool | None]]) -> None:
        while True:
            try:
                self._look(run_baseline)
            except Exception:  # noqa: BLE001  a bad look must not end the watch
                logger.exception("healing gaps: looking for gaps failed; looking again")
            await asyncio.sleep(self._poll_s)

    def _look(self, run_baseline: Callable[[], Awaitable[bool | None]]) -> None:
        """Count new gaps, keep HEAL, and start a heal when one is due. The
        heal runs in a task of its own, so gaps keep being counted (and
        written down) while its baseline takes hours."""
        if self.plan.saw_gaps(self._gaps_total(), self._clock()):
            if self.enabled:
                logger.warning("a gap is on record: this proxy begins a baseline to heal it %.0f s "
                               "after the latest one, unless one begins sooner (restores past the "
                               "gap are unproven until it ends)", self.plan.delay_s)
            else:
                logger.warning("a gap is on record: restores past it are unproven until a baseline "
                               "begun after it ends; run `nfsj baseline` (--no-heal)")
        self._keep_mark()
        if (self._healing is None or self._healing.done()) and self.due():
            self._healing = asyncio.get_running_loop().create_task(self._heal(run_baseline))

    async def _heal(self, run_baseline: Callable[[], Awaitable[bool | None]]) -> None:
        try:
            outcome = await run_baseline()
        except Exception:  # noqa: BLE001  counted as a failure, tried again later
            logger.exception("healing gaps: the baseline could not run")
            outcome = False
        if outcome is not None:
            self.baselines_total += 1
        if outcome is False:
            self.failures_total += 1
            self.plan.failed(self._clock())
        self._keep_mark()

    def _keep_mark(self) -> None:
        """HEAL exists exactly while a heal is owed (best effort: without it,
        a restart forgets the heal and the unhealed-gap alert stays)."""
        owed = self.plan.owed
        if owed == self._marked:
            return
        try:
            if owed:
                with open(self._path, "w") as f:
                    f.write("a gap waits for a baseline begun after it\n")
                    f.flush()
                    os.fsync(f.fileno())
            else:
                os.unlink(self._path)
            self._marked = owed
        except FileNotFoundError:
            self._marked = owed
        except OSError as e:
            logger.warning("cannot %s %s: %s", "write" if owed else "remove", self._path, e)
