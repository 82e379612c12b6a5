"""A proxy heals its own gaps (nfsproxy/daemon/heal.py): after an unclean
stop it runs a baseline by itself, so restores past the gap are proven again
without an operator; `--no-heal` leaves that to `nfsj baseline`; a heal owed
when the proxy stops is owed when it starts again."""

from __future__ import annotations

import os

import pytest

from e2e.test_gaps import GapStack, frozen, nfsj, now_bound, wait_for
from e2e.treecompare import diff, snapshot
from logstore.stamp import Stamp
from nfsproxy.daemon.heal import HEAL_FILE

pytestmark = pytest.mark.ganesha


@pytest.fixture
def shard(shard_factory):
    return shard_factory(0)


def unclean_stop_gap(stack: GapStack, *, healed: bool) -> dict:
    def probe():
        gaps = [g for g in stack.status()["gaps"] if g["cause"] == "unclean_stop"]
        return gaps[0] if gaps and (gaps[0]["healed_by"] is not None) == healed else None
    return wait_for(f"an unclean stop's gap, {'healed' if healed else 'unhealed'}", probe)


def human_status(stack: GapStack) -> str:
    return nfsj("status", "--log", str(stack.proxy.log_dir), "--shard", stack.shard.address).stdout


def killed_and_restarted(stack: GapStack, proxy_factory, log_dir, extra: list[str]) -> None:
    stack.proxy.kill()
    stack.proxy = proxy_factory(extra=[*stack.extra, *extra], log_dir=log_dir)
    assert "did not stop cleanly" in stack.proxy.stderr_text()


def test_a_killed_proxy_heals_its_gap_with_a_baseline_of_its_own(nas, shard, proxy_factory, tmp_path):
    log_dir = tmp_path / "log"
    stack = GapStack(nas, shard, proxy_factory, log_dir=log_dir)
    stack.write_file("before", b"before the crash\n" * 1000)
    stack.baseline()
    stack.write_file("during", os.urandom(300_000))
    killed_and_restarted(stack, proxy_factory, log_dir, ["--heal-delay", "0"])

    gap = unclean_stop_gap(stack, healed=True)
    healed_end = Stamp.parse(gap["healed_by"]["stamp"])
    assert Stamp.parse(gap["through"]["stamp"]) < healed_end
    assert stack.metric("nfsj_heal_baselines_total") == 1
    assert stack.metric("nfsj_heal_owed") == 0 and stack.metric("nfsj_heal_failures_total") == 0
    assert not (log_dir / HEAL_FILE).exists()

    stack.write_file("after", b"after the heal\n")
    later = now_bound(past=healed_end)
    stack.proven_past(later)
    done = stack.restore(later, tmp_path / "restored")  # proven: no --allow-unproven
    assert done.returncode == 0, done.stderr
    assert "UNPROVEN" not in done.stdout + done.stderr
    assert diff(snapshot(nas.export_dir), snapshot(tmp_path / "restored"),
                names=("NAS", "restore")) == []


def test_with_no_heal_the_gap_waits_for_an_operator(nas, shard, proxy_factory, tmp_path):
    log_dir = tmp_path / "log"
    stack = GapStack(nas, shard, proxy_factory, log_dir=log_dir)
    stack.write_file("before", b"before the crash\n")
    stack.baseline()
    killed_and_restarted(stack, proxy_factory, log_dir, ["--no-heal", "--heal-delay", "0"])
    unclean_stop_gap(stack, healed=False)
    # Well past the delay: the proxy ran nothing, and says a heal is owed.
    wait_for("the proxy to report the heal it owes", lambda: stack.metric("nfsj_heal_owed") == 1)
    assert stack.metric("nfsj_heal_baselines_total") == 0
    assert (log_dir / HEAL_FILE).exists()
    assert "runs none (--no-heal): run `nfsj baseline`" in human_status(stack)
    refused = stack.restore(now_bound(), tmp_path / "refused")
    assert refused.returncode != 0 and "--allow-unproven" in refused.stderr, refused.stderr
    # The operator's baseline heals it, and the proxy owes nothing more.
    stack.baseline()
    unclean_stop_gap(stack, healed=True)
    wait_for("the heal owed to be settled", lambda: stack.metric("nfsj_heal_owed") == 0)
    assert not (log_dir / HEAL_FILE).exists()


def test_a_heal_owed_at_a_clean_stop_is_owed_at_the_next_start(nas, shard, proxy_factory, tmp_path):
    log_dir = tmp_path / "log"
    stack = GapStack(nas, shard, proxy_factory, log_dir=log_dir)
    stack.write_file("before", b"before the crash\n")
    stack.baseline()
    killed_and_restarted(stack, proxy_factory, log_dir, ["--heal-delay", "3600"])
    wait_for("HEAL beside the LOG", lambda: (log_dir / HEAL_FILE).exists())
    wait_for("`nfsj status` to say when the heal begins",
             lambda: "this proxy begins one in " in human_status(stack))
    assert stack.proxy.stop() == 0
    # A clean start: no new gap, but the old one still waits for its baseline.
    stack.proxy = proxy_factory(extra=[*stack.extra, "--heal-delay", "0"], log_dir=log_dir)
    assert stack.metric("nfsj_journal_gaps_total", 'cause="unclean_stop"') == 0
    unclean_stop_gap(stack, healed=True)
    assert stack.metric("nfsj_heal_baselines_total") == 1
    wait_for("HEAL gone", lambda: not (log_dir / HEAL_FILE).exists())


@pytest.mark.parametrize("plane", ["native", "python"])
def test_a_gap_a_clean_stop_marks_is_healed_after_the_next_start(nas, shard, proxy_factory, tmp_path,
                                                                 plane):
    """A call still at the NAS when the proxy stops becomes a gap at the stop
    itself (after the drain), the last thing before the LOG closes: HEAL must
    say so, or the next start owes nothing."""
    log_dir = tmp_path / "log"
    base = ["--data-plane", plane, "--drain-timeout", "1"]
    stack = GapStack(nas, shard, proxy_factory, log_dir=log_dir, extra=[*base, "--heal-delay", "3600"])
    stack.write_file("before", b"before the stop\n")
    stack.baseline()
    with stack.client(timeout_s=2.0) as c:
        root = c.mount()
        with frozen(nas):
            with pytest.raises(Exception):  # the NAS is frozen: no reply
                c.create(root, "unanswered", 0o644)
            assert stack.proxy.stop() == 0, stack.proxy.stderr_text()[-3000:]
    assert (log_dir / HEAL_FILE).exists(), "the stop's own gap is owed a heal"
    stack.proxy = proxy_factory(extra=[*stack.extra[:-2], "--heal-delay", "0"], log_dir=log_dir)
    assert stack.metric("nfsj_journal_gaps_total", 'cause="unclean_stop"') == 0
    def healed():
        gaps = [g for g in stack.status()["gaps"] if g["cause"] == "no_reply"]
        return gaps and gaps[0]["healed_by"] is not None
    wait_for("the stop's no_reply gap healed by the proxy's own baseline", healed)
    assert stack.metric("nfsj_heal_baselines_total") == 1
