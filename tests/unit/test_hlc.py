"""Unit tests for nfsproxy.hlc, driven by a manual physical clock.

The table tests follow CockroachDB's hlc_test.go: each step sets the physical
clock, performs a send (``now()``) or a receive (``update(input)`` then
``now()``), and names the stamp that must come out.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import pytest

from logstore.stamp import Stamp
from nfsproxy.hlc import HLC, ClockStamp, UntrustworthyStampError

MS = 1_000_000
S = 1_000 * MS
T0 = 1_700_000_000 * S  # an ordinary epoch time, far from zero


class ManualClock:
    """A physical clock that moves only when told to."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns

    def set(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def advance(self, delta_ns: int) -> None:
        self.now_ns += delta_ns


SEND, RECV = "send", "recv"


@dataclass(frozen=True)
class Step:
    physical_ns: int
    op: str
    input: ClockStamp | None
    expected: tuple[int, int]  # (wall_ns, logical); node_id is the clock's own


def run_steps(clock: HLC, manual: ManualClock, steps: list[Step]) -> None:
    for i, step in enumerate(steps):
        manual.set(step.physical_ns)
        if step.op == RECV:
            assert step.input is not None
            clock.update(step.input)
        got = clock.now()
        assert isinstance(got, ClockStamp)
        assert (got.wall_ns, got.logical, got.node_id) == (*step.expected, clock.node_id), \
            f"step {i}: {step}"


def test_send_receive_table() -> None:
    manual = ManualClock(1)
    clock = HLC(1, physical_clock=manual, max_offset_ns=1000)
    peer = 2
    run_steps(clock, manual, [
        # A few plain sends: the wall follows the physical clock.
        Step(5, SEND, None, (5, 0)),
        Step(6, SEND, None, (6, 0)),
        # Physical clock stalls: the logical part ticks.
        Step(6, SEND, None, (6, 1)),
        # A remote stamp ahead of us (within max offset) is adopted and passed.
        Step(10, RECV, ClockStamp(10, 5, peer), (10, 6)),
        # Our physical clock jumps back: the wall holds, logical ticks.
        Step(7, SEND, None, (10, 7)),
        # Wall times coincide and the local logical part is higher: it wins.
        Step(8, RECV, ClockStamp(10, 4, peer), (10, 8)),
        # Wall times coincide and the remote logical part is higher: it wins.
        Step(10, RECV, ClockStamp(10, 99, peer), (10, 100)),
        # The physical clock catches up and takes over; logical restarts.
        Step(11, RECV, ClockStamp(10, 31, peer), (11, 1)),
        Step(11, SEND, None, (11, 2)),
        Step(12, SEND, None, (12, 0)),
        # A remote stamp from the past changes nothing but the tick.
        Step(12, RECV, ClockStamp(3, 7, peer), (12, 1)),
        # Remote wall ahead: its logical part is taken and passed.
        Step(13, RECV, ClockStamp(20, 3, peer), (20, 4)),
        Step(14, SEND, None, (20, 5)),
        Step(25, SEND, None, (25, 0)),
        # A remote logical part at the u32 limit carries into the wall.
        Step(25, RECV, ClockStamp(30, 0xFFFF_FFFF, peer), (31, 0)),
        Step(25, SEND, None, (31, 1)),
        # Exactly max_offset ahead is still accepted.
        Step(100, RECV, ClockStamp(1100, 0, peer), (1100, 1)),
    ])


def test_update_echo_of_own_stamp_is_harmless() -> None:
    manual = ManualClock(T0)
    clock = HLC(7, physical_clock=manual)
    a = clock.now()
    clock.update(a)  # e.g. a shard ack that echoes the highest record stamp
    assert clock.now() > a


@pytest.mark.parametrize("lead_ns, accepted", [
    (-10 * S, True),
    (0, True),
    (499 * MS, True),
    (500 * MS, True),
    (500 * MS + 1, False),
    (1 * S, False),
    (3600 * S, False),
])
def test_max_offset_refusal(lead_ns: int, accepted: bool) -> None:
    manual = ManualClock(T0)
    clock = HLC(1, physical_clock=manual, max_offset_ns=500 * MS)
    before = clock.now()
    remote = ClockStamp(T0 + lead_ns, 3, 2)
    if accepted:
        clock.update(remote)
        assert clock.rejections_total == 0
        assert clock.now() > remote
        return
    with pytest.raises(UntrustworthyStampError) as info:
        clock.update(remote)
    err = info.value
    assert err.offset_ns == lead_ns
    assert err.max_offset_ns == 500 * MS
    assert err.physical_ns == T0
    assert err.remote == remote
    assert clock.rejections_total == 1
    # The clock did not move: the next stamp is what it would have been anyway.
    assert clock.now() == ClockStamp(before.wall_ns, before.logical + 1, 1)
    assert clock.offset_ns == 0


def test_refusal_is_measured_against_physical_time_not_logical() -> None:
    # A clock that already adopted a stamp 400 ms ahead still refuses one that
    # is 600 ms ahead of its *physical* clock: leads must not compound.
    manual = ManualClock(T0)
    clock = HLC(1, physical_clock=manual, max_offset_ns=500 * MS)
    clock.update(ClockStamp(T0 + 400 * MS, 0, 2))
    with pytest.raises(UntrustworthyStampError):
        clock.update(ClockStamp(T0 + 600 * MS, 0, 3))
    assert clock.now() == ClockStamp(T0 + 400 * MS, 1, 1)


# -- capability ------------------------------------------------------------

def test_now_returns_clock_stamp() -> None:
    clock = HLC(4, physical_clock=ManualClock(T0))
    s = clock.now()
    assert type(s) is ClockStamp
    assert isinstance(s, Stamp)
    assert s == Stamp(T0, 0, 4)


@pytest.mark.parametrize("bound", [
    Stamp(T0 + 1, 0, 2),
    Stamp.parse(f"{T0 + 1}.0@2"),   # what `nfsj restore --at <stamp>` yields
    Stamp.from_bytes(Stamp(T0 + 1, 0, 2).to_bytes()),  # a heartbeat's stable stamp
])
def test_update_refuses_plain_stamps(bound: Stamp) -> None:
    manual = ManualClock(T0)
    clock = HLC(1, physical_clock=manual)
    with pytest.raises(TypeError, match="ClockStamp"):
        clock.update(bound)  # type: ignore[arg-type]
    assert clock.now() == ClockStamp(T0, 0, 1)
    assert clock.rejections_total == 0  # a type error is a bug, not a refusal


def test_update_refuses_non_stamps() -> None:
    clock = HLC(1, physical_clock=ManualClock(T0))
    with pytest.raises(TypeError):
        clock.update((T0, 0, 2))  # type: ignore[arg-type]


def test_clock_stamp_cannot_be_parsed_from_text() -> None:
    with pytest.raises(TypeError, match="query bound"):
        ClockStamp.parse(f"{T0}.0@2")


def test_clock_stamp_wire_round_trip_keeps_capability() -> None:
    clock = HLC(9, physical_clock=ManualClock(T0))
    s = clock.now()
    back = ClockStamp.from_bytes(s.to_bytes())
    assert type(back) is ClockStamp and back == s
    assert str(back) == str(s) == f"{T0}.0@9"
    other = HLC(10, physical_clock=ManualClock(T0))
    other.update(back)
    assert other.now() > s


def test_clock_stamp_mixes_with_plain_stamps() -> None:
    c = ClockStamp(T0, 5, 1)
    plain = c.to_stamp()
    assert type(plain) is Stamp
    assert plain == c and c == plain
    assert hash(plain) == hash(c)
    assert len({plain, c}) == 1
    assert not c < plain and c <= plain and c >= plain
    later = Stamp(T0, 6, 1)
    assert c < later and later > c and plain < later
    assert c > Stamp(T0, 4, 9) and Stamp(T0, 4, 9) < c
    assert sorted([later, c, Stamp(T0 - 1, 0, 0)]) == [Stamp(T0 - 1, 0, 0), c, later]
    assert c != (T0, 5, 1)


# -- physical clock jumps ----------------------------------------------------

def test_backward_jumps_counted_with_biggest() -> None:
    manual = ManualClock(T0)
    clock = HLC(1, physical_clock=manual, max_offset_ns=500 * MS)
    a = clock.now()
    manual.advance(-110)
    b = clock.now()
    assert (clock.backward_jumps_total, clock.max_backward_jump_ns) == (1, 110)
    manual.advance(-3 * S)
    c = clock.now()
    manual.advance(10)  # moving forward again is not a jump
    d = clock.now()
    manual.advance(-20)
    clock.update(ClockStamp(T0 - 5 * S, 0, 2))  # every reading is checked
    assert (clock.backward_jumps_total, clock.max_backward_jump_ns) == (3, 3 * S)
    assert a < b < c < d
    assert d.wall_ns == T0  # the wall held through all of it
    assert clock.forward_jumps_total == 0


def test_forward_jumps_counted_above_threshold() -> None:
    manual = ManualClock(T0)
    clock = HLC(1, physical_clock=manual, max_offset_ns=500 * MS,
                forward_jump_threshold_ns=250 * MS)
    clock.now()
    manual.advance(250 * MS)  # at the threshold: tolerated
    clock.now()
    assert clock.forward_jumps_total == 0
    manual.advance(250 * MS + 1)
    s = clock.now()
    assert clock.forward_jumps_total == 1
    assert s.wall_ns == manual.now_ns  # counted, not corrected
    assert clock.backward_jumps_total == 0


def test_forward_jump_threshold_defaults_to_max_offset() -> None:
    manual = ManualClock(T0)
    clock = HLC(1, physical_clock=manual, max_offset_ns=100)
    clock.now()
    manual.advance(100)
    clock.now()
    manual.advance(101)
    clock.now()
    assert clock.forward_jumps_total == 1


def test_check_physical_keeps_idle_time_from_looking_like_a_jump() -> None:
    manual = ManualClock(T0)
    clock = HLC(1, physical_clock=manual, max_offset_ns=500 * MS)
    clock.now()
    for _ in range(10):  # a timer ticking every 200 ms across 2 s of idleness
        manual.advance(200 * MS)
        clock.check_physical()
    clock.now()
    assert clock.forward_jumps_total == 0


def test_offset_tracks_lead_over_physical_time_and_decays() -> None:
    manual = ManualClock(T0)
    clock = HLC(1, physical_clock=manual, max_offset_ns=500 * MS)
    clock.now()
    assert clock.offset_ns == 0
    clock.update(ClockStamp(T0 + 300 * MS, 0, 2))
    assert clock.offset_ns == 300 * MS
    manual.advance(100 * MS)
    clock.now()
    assert clock.offset_ns == 200 * MS
    manual.advance(100 * MS)
    clock.check_physical()
    assert clock.offset_ns == 100 * MS
    manual.advance(150 * MS)
    s = clock.now()
    assert clock.offset_ns == 0 and s == ClockStamp(manual.now_ns, 0, 1)
    # Self-stabilized: back on physical time, logical restarted from zero.


# -- persisted upper bound ---------------------------------------------------

def test_restart_after_clock_steps_back_stays_monotonic(tmp_path) -> None:
    path = str(tmp_path / "hlc.bound")
    manual = ManualClock(T0)
    first = HLC(1, physical_clock=manual, persist_path=path, persist_interval_ns=1 * S)
    stamps = []
    for _ in range(50):
        manual.advance(37 * MS)
        stamps.append(first.now())
    last = stamps[-1]
    assert all(s.wall_ns < first.persisted_bound_ns for s in stamps)

    # The process dies; while it is down the clock is stepped back an hour.
    del first
    manual.set(T0 - 3600 * S)
    second = HLC(1, physical_clock=manual, persist_path=path, persist_interval_ns=1 * S)
    bound = int(open(path).read())
    assert bound > last.wall_ns
    s = second.now()
    assert s > last
    assert s == ClockStamp(bound, 1, 1)  # starts at the bound, not at pt
    assert second.offset_ns == bound - manual.now_ns
    # A bound above that stamp is durable before it is handed out; while pt is
    # behind, one past it is enough (see the crash-loop test).
    assert second.persisted_bound_ns == bound + 1
    assert int(open(path).read()) == bound + 1
    assert second.now() > s
    # Once physical time passes the old bound, the clock follows it again.
    manual.set(bound + 5)
    assert second.now() == ClockStamp(bound + 5, 0, 1)
    assert second.persisted_bound_ns == bound + 5 + 1 * S


def test_crash_loop_does_not_ratchet_the_clock_ahead(tmp_path) -> None:
    path = tmp_path / "b"
    manual = ManualClock(T0)
    last = None
    for restart in range(30):  # crashing every 10 ms, each after one stamp
        clock = HLC(1, physical_clock=manual, persist_path=path, persist_interval_ns=1 * S)
        s = clock.now()
        assert last is None or s > last
        assert s.wall_ns - manual.now_ns <= 1 * S
        last = s
        manual.advance(10 * MS)
    # And with the physical clock frozen across restarts: one ns per restart.
    for i in range(31):
        clock = HLC(1, physical_clock=manual, persist_path=path, persist_interval_ns=1 * S)
        s = clock.now()
        assert s > last
        last = s
        if i == 0:
            start = int(path.read_text())
    assert int(path.read_text()) == start + 30


def test_restart_with_correct_clock_resumes_from_physical_time(tmp_path) -> None:
    path = tmp_path / "hlc.bound"
    manual = ManualClock(T0)
    first = HLC(1, physical_clock=manual, persist_path=path, persist_interval_ns=1 * S)
    last = first.now()
    manual.advance(5 * S)  # down for longer than the interval
    second = HLC(1, physical_clock=manual, persist_path=path, persist_interval_ns=1 * S)
    s = second.now()
    assert s > last and s == ClockStamp(T0 + 5 * S, 0, 1)


def test_persistence_happens_once_per_interval(tmp_path) -> None:
    # The clock is native: each write shows as a new bound, on disk and in
    # persisted_bound_ns.
    writes = []
    manual = ManualClock(T0)
    path = tmp_path / "b"
    clock = HLC(1, physical_clock=manual, persist_path=str(path),
                persist_interval_ns=1 * S)
    for _ in range(1000):  # 10 s of stamps, one every 10 ms
        clock.now()
        if not writes or writes[-1] != clock.persisted_bound_ns:
            writes.append(clock.persisted_bound_ns)
            assert int(path.read_text()) == writes[-1]
        manual.advance(10 * MS)
    assert 9 <= len(writes) <= 11
    assert writes == sorted(writes)
    assert not os.path.exists(str(tmp_path / "b") + ".tmp")


@pytest.mark.parametrize("interval_ns, expected_bound", [
    # The usual case: an adopted lead stays inside the interval; no write.
    (1 * S, T0 + 1 * S),
    # A lead beyond the interval: the bound must move past it first.
    (100 * MS, T0 + 400 * MS + 1),
])
def test_remote_stamp_beyond_bound_is_persisted_before_handed_out(
        tmp_path, interval_ns, expected_bound) -> None:
    path = tmp_path / "b"
    manual = ManualClock(T0)
    clock = HLC(1, physical_clock=manual, persist_path=path,
                persist_interval_ns=interval_ns, max_offset_ns=500 * MS)
    clock.now()
    clock.update(ClockStamp(T0 + 400 * MS, 0, 2))
    for _ in range(5):
        s = clock.now()
        assert s.wall_ns < int(path.read_text()) == expected_bound


def test_persist_failure_hands_out_nothing(tmp_path) -> None:
    manual = ManualClock(T0)
    clock = HLC(1, physical_clock=manual,
                persist_path=str(tmp_path / "missing-dir" / "b"))
    with pytest.raises(OSError) as info:
        clock.now()
    assert any("persisting HLC upper bound" in n for n in info.value.__notes__)
    (tmp_path / "missing-dir").mkdir()
    assert clock.now() == ClockStamp(T0, 0, 1)  # nothing was skipped or reused


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"-5\n", b"\xff\xfe"])
def test_corrupt_bound_file_refuses_to_start(tmp_path, content) -> None:
    path = tmp_path / "b"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="corrupt"):
        HLC(1, physical_clock=ManualClock(T0), persist_path=path)


# -- construction and concurrency -------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(node_id=-1), dict(node_id=2**32), dict(max_offset_ns=0),
    dict(persist_interval_ns=0), dict(forward_jump_threshold_ns=-1),
])
def test_invalid_configuration(kwargs) -> None:
    args = dict(node_id=1)
    args.update(kwargs)
    node_id = args.pop("node_id")
    with pytest.raises(ValueError):
        HLC(node_id, physical_clock=ManualClock(T0), **args)


def test_logical_overflow_on_stalled_clock_carries_into_wall() -> None:
    manual = ManualClock(T0)
    clock = HLC(1, physical_clock=manual)
    clock.update(ClockStamp(T0, 0xFFFF_FFFE, 2))
    assert clock.now() == ClockStamp(T0, 0xFFFF_FFFF, 1)
    assert clock.now() == ClockStamp(T0 + 1, 0, 1)


def test_concurrent_now_gives_unique_increasing_stamps() -> None:
    clock = HLC(1)  # the real physical clock
    per_thread: list[list[ClockStamp]] = [[] for _ in range(8)]

    def work(out: list[ClockStamp]) -> None:
        for _ in range(2000):
            out.append(clock.now())

    threads = [threading.Thread(target=work, args=(out,)) for out in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [s for out in per_thread for s in out]
    assert len(set(everything)) == len(everything)
    for out in per_thread:
        assert all(a < b for a, b in zip(out, out[1:]))
