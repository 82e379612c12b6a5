"""The proxy's own baselines after gaps (nfsproxy/daemon/heal.py): when one is
due, which gaps a baseline heals, and what survives a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nfsproxy.daemon.heal import HEAL_FILE, RETRY_S, Healer, HealPlan


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


def test_a_failed_heal_is_tried_again_later():
    plan = HealPlan(5.0)
    plan.saw_gaps(1, 0.0)
    assert plan.due(5.0)
    plan.failed(5.0)
    assert not plan.due(5.0 + RETRY_S - 1) and plan.due(5.0 + RETRY_S)


def test_a_heal_owed_at_start_is_due_after_the_delay():
    plan = HealPlan(30.0, owed=True, now=100.0)
    assert plan.owed and not plan.due(129.0) and plan.due(130.0)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _healer(tmp_path: Path, gaps: list[int], *, dropping: list[bool] | None = None,
            enabled: bool = True, delay_s: float = 10.0, clock: _Clock | None = None) -> Healer:
    return Healer(str(tmp_path), delay_s, lambda: gaps[0], lambda: bool(dropping and dropping[0]),
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
        for enabled, dropping in ((True, [True]), (False, [False])):
            d = tmp_path / str(enabled)
            d.mkdir()
            clock, runs = _Clock(), []
            healer = _healer(d, [1], dropping=dropping, enabled=enabled, clock=clock)

            async def run_baseline(healer=healer, runs=runs, clock=clock) -> bool:
                runs.append(clock.now)
                healer.ended(healer.began())
                return True

            healer.start(run_baseline)
            await _settle()  # the gap seen at 0
            clock.now = 100.0
            await _settle()
            assert runs == [] and healer.plan.owed and (d / HEAL_FILE).exists()
            if enabled:  # the passthrough policy stops dropping: the heal goes ahead
                dropping[0] = False
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
