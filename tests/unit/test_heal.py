"""The proxy's own baselines after gaps (nfsproxy/daemon/heal.py): when one is
due, which gaps a baseline heals, and what survives a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nfsproxy.daemon.heal import HEAL_FILE, MAX_POSTPONE, RETRY_S, Healer, HealPlan


def test_a_gap_makes_a_baseline_due_after_the_delay():
    plan = HealPlan(60.0)
    assert not plan.owed and not plan.due(1e6)
    assert not plan.saw_gaps(0, 10.0)
    assert plan.saw_gaps(1, 10.0)
    assert plan.owed and not plan.due(69.9) and plan.due(70.0)


def test_a_burst_of_gaps_gets_one_baseline_after_the_last():
    plan = HealPlan(60.0)
    plan.saw_gaps(1, 0.0)
    plan.saw_gaps(3, 50.0)   # two more, counted at once
    assert not plan.due(100.0) and plan.due(110.0)
    assert not plan.saw_gaps(3, 120.0), "the same total is no new gap"
    assert plan.due(120.0)


def test_a_baseline_heals_only_the_gaps_seen_before_it_began():
    plan = HealPlan(0.0)
    plan.saw_gaps(1, 0.0)
    mark = plan.began()
    plan.saw_gaps(2, 1.0)    # a gap while it runs: its BEGIN is older
    plan.ended(mark)
    assert plan.owed and plan.due(1.0)
    plan.ended(plan.began())
    assert not plan.owed and not plan.due(1e6) and plan.due_at is None


def test_an_older_baseline_ending_late_heals_no_newer_gap():
    plan = HealPlan(0.0)
    plan.saw_gaps(1, 0.0)
    old = plan.began()
    plan.saw_gaps(2, 1.0)
    new = plan.began()
    plan.ended(new)
    plan.ended(old)
    assert not plan.owed


def test_a_steady_trickle_of_gaps_postpones_the_heal_only_so_long():
    plan = HealPlan(10.0)
    for k in range(1, 100):  # a new gap every 5 s, forever
        plan.saw_gaps(k, 5.0 * k)
        if plan.due(5.0 * k):
            break
    assert 5.0 * k == 5.0 + MAX_POSTPONE * 10.0
    plan.ended(plan.began())
    plan.saw_gaps(1000, 1000.0)  # the next gap starts a new wait
    assert not plan.due(1009.0) and plan.due(1010.0)


def test_a_failed_heal_is_tried_again_later():
    plan = HealPlan(5.0)
    plan.saw_gaps(1, 0.0)
    assert plan.due(5.0)
    plan.failed(5.0)
    assert not plan.due(5.0 + RETRY_S - 1) and plan.due(5.0 + RETRY_S)


def test_a_gap_after_a_failed_heal_does_not_cut_its_retry_short():
    plan = HealPlan(0.0)
    plan.saw_gaps(1, 0.0)
    plan.failed(0.0)
    plan.saw_gaps(2, 1.0)   # a NAS outage: lost replies while its baselines fail
    assert not plan.due(RETRY_S - 1) and plan.due(RETRY_S)
    plan.ended(plan.began())
    plan.saw_gaps(3, 100.0)
    assert plan.due(100.0), "a baseline that ended clears the retry"


def test_gaps_seen_during_a_baseline_are_owed_from_when_they_were_seen():
    plan = HealPlan(60.0)
    plan.saw_gaps(1, 0.0)
    mark = plan.began()     # at 60, for hours
    plan.saw_gaps(2, 5000.0)
    plan.ended(mark)        # at 7000
    assert plan.owed and not plan.due(5059.0) and plan.due(5060.0)
    plan = HealPlan(60.0)
    plan.saw_gaps(1, 0.0)
    mark = plan.began()
    plan.saw_gaps(2, 6990.0)
    plan.ended(mark)        # the cap counts from the gap still owed, not the healed one
    assert not plan.due(7000.0) and plan.due(7050.0)


def test_a_heal_owed_at_start_is_due_after_the_delay():
    plan = HealPlan(30.0, owed=True, now=100.0)
    assert plan.owed and not plan.due(129.0) and plan.due(130.0)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _healer(tmp_path: Path, gaps: list[int], *, over_quota: list[bool] | None = None,
            enabled: bool = True, delay_s: float = 10.0, clock: _Clock | None = None) -> Healer:
    return Healer(str(tmp_path), delay_s, lambda: gaps[0], lambda: bool(over_quota and over_quota[0]),
                  enabled=enabled, poll_s=0.001, clock=clock or _Clock())


async def _settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0.002)


def test_the_healer_runs_a_baseline_once_due_and_keeps_heal_beside_the_log(tmp_path):
    async def main() -> None:
        clock, gaps, runs = _Clock(), [0], []
        healer = _healer(tmp_path, gaps, clock=clock)

        async def run_baseline() -> bool:
            assert healer.due()
            runs.append(clock.now)
            healer.ended(healer.began())
            return True

        healer.start(run_baseline)
        await _settle()
        assert not (tmp_path / HEAL_FILE).exists() and runs == []
        gaps[0] = 1
        await _settle()
        assert (tmp_path / HEAL_FILE).exists(), "a heal owed is written down at once"
        assert runs == [] and healer.status()["owed"] and healer.status()["due_in_s"] == 10.0
        clock.now = 10.0
        await _settle()
        assert runs == [10.0] and healer.baselines_total == 1
        assert not (tmp_path / HEAL_FILE).exists() and not healer.status()["owed"]
        await healer.stop()

    asyncio.run(main())


def test_a_heal_owed_before_a_restart_is_owed_after_it(tmp_path):
    async def main() -> None:
        (tmp_path / HEAL_FILE).write_text("owed\n")
        clock, runs = _Clock(), []
        healer = _healer(tmp_path, [0], clock=clock, delay_s=5.0)

        async def run_baseline() -> bool:
            runs.append(clock.now)
            healer.ended(healer.began())
            return True

        healer.start(run_baseline)
        await _settle()
        assert runs == [] and healer.plan.owed
        clock.now = 5.0
        await _settle()
        assert runs == [5.0] and not (tmp_path / HEAL_FILE).exists()
        await healer.stop()

    asyncio.run(main())


def test_no_heal_starts_while_mutations_are_dropped_or_when_disabled(tmp_path):
    async def main() -> None:
        for enabled, over_quota in ((True, [True]), (False, [False])):
            d = tmp_path / str(enabled)
            d.mkdir()
            clock, runs = _Clock(), []
            healer = _healer(d, [1], over_quota=over_quota, enabled=enabled, clock=clock)

            async def run_baseline(healer=healer, runs=runs, clock=clock) -> bool:
                runs.append(clock.now)
                healer.ended(healer.began())
                return True

            healer.start(run_baseline)
            await _settle()  # the gap seen at 0
            clock.now = 100.0
            await _settle()
            assert runs == [] and healer.plan.owed and (d / HEAL_FILE).exists()
            if enabled:  # the LOG is back under its quota: the heal goes ahead
                over_quota[0] = False
                await _settle()
                assert runs == [100.0]
            await healer.stop()

    asyncio.run(main())


def test_a_failed_heal_counts_and_waits(tmp_path):
    async def main() -> None:
        clock, outcomes = _Clock(), [False, True]
        healer = _healer(tmp_path, [1], clock=clock, delay_s=0.0)
        seen = []

        async def run_baseline() -> bool:
            seen.append(clock.now)
            ok = outcomes.pop(0)
            if ok:
                healer.ended(healer.began())
            return ok

        healer.start(run_baseline)
        await _settle()
        assert seen == [0.0] and healer.failures_total == 1 and healer.plan.owed
        clock.now = RETRY_S
        await _settle()
        assert seen == [0.0, RETRY_S] and not healer.plan.owed and healer.baselines_total == 2
        await healer.stop()

    asyncio.run(main())


def test_gaps_keep_being_counted_and_written_down_while_a_heal_runs(tmp_path):
    async def main() -> None:
        clock, gaps, release = _Clock(), [1], asyncio.Event()
        healer = _healer(tmp_path, gaps, clock=clock, delay_s=0.0)
        marks = []

        async def run_baseline() -> bool:
            marks.append(healer.began())
            await release.wait()   # a baseline of hours
            healer.ended(marks[-1])
            return True

        healer.start(run_baseline)
        await _settle()
        assert len(marks) == 1
        gaps[0] = 2   # a gap after its BEGIN: this baseline does not heal it
        await _settle()
        assert healer.plan.began() > marks[0]
        release.set()
        await _settle()
        await _settle()
        assert len(marks) == 2 and healer.baselines_total == 2 and not healer.plan.owed, \
            "the gap after the first BEGIN got a baseline of its own"
        await healer.stop()

    asyncio.run(main())


def test_a_stop_writes_down_the_gaps_it_marked_last(tmp_path):
    async def main() -> None:
        gaps = [0]
        healer = _healer(tmp_path, gaps, delay_s=3600.0)
        healer.start(lambda: asyncio.sleep(0, result=True))
        await _settle()
        await healer.stop()
        gaps[0] = 1   # marked by the stop itself (a reply that never came)
        assert not (tmp_path / HEAL_FILE).exists()
        healer.settle()
        assert (tmp_path / HEAL_FILE).exists()

    asyncio.run(main())
    async def restarted() -> bool:
        return Healer(str(tmp_path), 1.0, lambda: 0, lambda: False).plan.owed
    assert asyncio.run(restarted())


def test_the_watch_survives_a_failing_look(tmp_path):
    async def main() -> None:
        calls = [0]

        def gaps_total() -> int:
            calls[0] += 1
            if calls[0] == 1:
                raise RuntimeError("a shipper's state could not be read")
            return 1

        runs = []
        healer = Healer(str(tmp_path), 0.0, gaps_total, lambda: False, poll_s=0.001, clock=_Clock())

        async def run_baseline() -> bool:
            runs.append(1)
            healer.ended(healer.began())
            return True

        healer.start(run_baseline)
        await _settle()
        assert calls[0] > 2 and runs == [1]
        await healer.stop()

    asyncio.run(main())
