"""The Ingest stream's sans-IO state machine, driven without gRPC, LOG or clock."""

from __future__ import annotations

import dataclasses

import pytest

from logstore.pb import journal_pb2 as pb
from nfsproxy.ship.stream import (IngestStream, SendGap, SendHeartbeat, SendRange, ShardRefused,
                                  ShipperOptions, Wait)

# small_batch_records=1: these tests put batch after batch in flight (Nagle's
# rule has its own tests below).
OPTIONS = ShipperOptions(max_inflight_batches=2, max_inflight_bytes=1000, max_batch_bytes=600,
                         max_scan_records=100, heartbeat_interval_s=1.0, poll_interval_s=0.05,
                         ack_timeout_s=10.0, backoff_initial_s=0.5, backoff_max_s=4.0,
                         small_batch_records=1)


def ack(durable: int, error: str = "") -> pb.IngestAck:
    return pb.IngestAck(durable_seq=durable, error=error)


def resumed(durable: int = 0, options: ShipperOptions = OPTIONS) -> IngestStream:
    stream = IngestStream(0, options)
    stream.resume(ack(durable), log_last_seq=1000)
    return stream


def send(stream: IngestStream, through: int, nbytes: int, now: float = 0.0) -> SendRange:
    step = stream.next_step(now, first_seq=1, synced_seq=through)
    assert isinstance(step, SendRange)
    assert stream.range_read(step, through, 0, records=1, now=now)
    stream.sent(step.after_seq, through, nbytes, now)
    return step


def test_hello_resumes_after_the_shards_durable_position():
    stream = resumed(41)
    step = stream.next_step(0.0, first_seq=1, synced_seq=50)
    assert step == SendRange(after_seq=41, limit_seq=50, budget=600, allow_oversize=True,
                             epoch=stream.epoch)


def test_acks_match_batches_in_order_and_free_room():
    stream = resumed()
    send(stream, 10, 400)
    send(stream, 20, 400)
    assert not stream.room()  # two batches in flight is the bound
    stream.on_ack(ack(10), now=1.0)
    assert stream.acked_seq == 10 and stream.inflight_bytes == 400 and stream.room()


def test_an_ack_for_no_batch_breaks_the_protocol():
    with pytest.raises(ShardRefused):
        resumed().on_ack(ack(5), now=0.0)


def test_a_refusal_rewinds_and_acks_of_batches_sent_before_it_are_ignored():
    stream = resumed()
    send(stream, 10, 100)
    send(stream, 20, 100)
    stream.on_ack(ack(0, error="refused: bad clock"), now=1.0)
    assert stream.sent_seq == 0 and stream.rewinds_total == 1
    stream.on_ack(ack(0, error="refused: the range does not follow"), now=1.0)
    assert stream.rewinds_total == 1  # the second batch was sent before the rewind
    assert stream.next_step(1.0, first_seq=1, synced_seq=20).after_seq == 0


def test_refused_again_at_the_same_place_backs_off_instead_of_spinning():
    stream = resumed()
    send(stream, 10, 100)
    stream.on_ack(ack(0, error="refused"), now=1.0)
    send(stream, 10, 100, now=1.0)
    stream.on_ack(ack(0, error="refused"), now=2.0)
    step = stream.next_step(2.0, first_seq=1, synced_seq=10)
    assert isinstance(step, Wait) and step.holding and 0 < step.seconds <= OPTIONS.backoff_initial_s


def test_a_shard_that_holds_less_than_it_acked_is_resent_from_its_position():
    stream = resumed()
    send(stream, 10, 100)
    stream.on_ack(ack(4), now=1.0)  # acked the batch but holds only through 4
    assert stream.sent_seq == 4 and stream.rewinds_total == 1


def test_a_shard_ahead_of_what_was_sent_skips_ahead():
    stream = resumed()
    send(stream, 10, 100)
    stream.on_ack(ack(30), now=1.0)
    assert stream.sent_seq == 30


def test_a_trimmed_log_is_a_marked_gap_never_a_skip():
    stream = resumed(5)
    step = stream.next_step(0.0, first_seq=20, synced_seq=40)
    assert isinstance(step, SendGap) and (step.after_seq, step.through_seq) == (5, 19)
    assert stream.gaps_total == 1 and "5..19" in stream.gaps[0]


def test_idle_stream_heartbeats_at_its_position():
    stream = resumed(7)
    assert stream.next_step(5.0, first_seq=1, synced_seq=7) == SendHeartbeat(7, 7)
    stream.sent(7, 7, 0, now=5.0)
    step = stream.next_step(5.4, first_seq=1, synced_seq=7)
    assert isinstance(step, Wait) and not step.holding and step.seconds <= OPTIONS.poll_interval_s


def test_an_overdue_ack_ends_the_stream():
    stream = resumed()
    send(stream, 10, 100, now=0.0)
    with pytest.raises(TimeoutError):
        stream.next_step(OPTIONS.ack_timeout_s + 1, first_seq=1, synced_seq=10)


def test_a_read_after_a_rewind_is_not_sent():
    stream = resumed()
    send(stream, 10, 100)
    step = stream.next_step(0.0, first_seq=1, synced_seq=20)
    stream.on_ack(ack(0, error="refused"), now=0.0)
    assert not stream.range_read(step, 20, 0, records=3, now=0.0)


def test_a_record_too_big_for_the_room_left_waits_for_acks():
    stream = resumed(options=dataclasses.replace(OPTIONS, max_inflight_batches=8))
    send(stream, 10, 900)
    step = stream.next_step(0.0, first_seq=1, synced_seq=20)
    assert isinstance(step, SendRange) and step.budget == 100 and not step.allow_oversize
    assert not stream.range_read(step, 10, blocked_by=300, records=0, now=0.0)  # nothing fitted
    assert not stream.room()
    stream.on_ack(ack(10), now=0.0)
    assert stream.room()


def test_reconnecting_forgets_what_was_in_flight():
    stream = resumed()
    send(stream, 10, 100)
    stream.disconnected()
    assert not stream.connected and stream.inflight_bytes == 0 and not stream.pending
    stream.resume(ack(10), log_last_seq=100)
    assert stream.connected and stream.sent_seq == 10


def test_a_small_range_waits_for_the_batch_in_flight():
    stream = resumed(options=dataclasses.replace(OPTIONS, small_batch_records=10, linger_s=0.0))
    send(stream, 3, 100)  # nothing in flight: out at once, however small
    step = stream.next_step(0.001, first_seq=1, synced_seq=8)
    assert isinstance(step, Wait) and not step.holding  # 5 records, one batch in flight
    stream.on_ack(ack(3), now=0.002)
    assert send(stream, 8, 100, now=0.002).after_seq == 3  # acked: what gathered goes out


def test_a_small_range_lingers_then_goes_out_alone():
    stream = resumed(options=dataclasses.replace(OPTIONS, small_batch_records=10, linger_s=0.5))
    step = stream.next_step(10.0, first_seq=1, synced_seq=2)
    assert step == Wait(0.05)  # the poll interval: shorter than what is left of the linger
    assert stream.next_step(10.49, first_seq=1, synced_seq=2) == Wait(pytest.approx(0.01))
    assert send(stream, 4, 100, now=10.5).after_seq == 0  # lingered long enough, nothing in flight
    assert isinstance(stream.next_step(10.5, first_seq=1, synced_seq=20), SendRange)  # a backlog


def test_a_backlog_or_a_full_batch_does_not_wait():
    stream = resumed(options=dataclasses.replace(OPTIONS, small_batch_records=10, linger_s=0.0))
    send(stream, 3, 100)
    assert send(stream, 13, 100).after_seq == 3  # 10 records: not small
    assert isinstance(stream.next_step(0.0, first_seq=1, synced_seq=15), Wait)
    stream.on_ack(ack(3), now=0.0)
    stream.on_ack(ack(13), now=0.0)
    step = stream.next_step(0.0, first_seq=1, synced_seq=15)
    assert isinstance(step, SendRange)
    # The read stopped at the budget: the rest is ready and goes out without waiting.
    assert stream.range_read(step, 14, blocked_by=500, records=1, now=0.0)
    stream.sent(step.after_seq, 14, 100, 0.0)
    assert not isinstance(stream.next_step(0.0, first_seq=1, synced_seq=15), Wait)


def test_a_range_without_the_shards_records_waits_for_its_next_record():
    stream = resumed()
    send(stream, 10, 100, now=0.0)
    stream.on_ack(ack(10), now=0.1)
    step = stream.next_step(0.1, first_seq=1, synced_seq=30)
    assert (step.after_seq, step.read_from) == (10, 11)
    assert not stream.range_read(step, 30, 0, records=0, now=0.1)  # nothing for this shard
    assert isinstance(stream.next_step(0.1, first_seq=1, synced_seq=30), Wait)  # nothing new
    step = stream.next_step(0.2, first_seq=1, synced_seq=35)
    assert (step.after_seq, step.read_from) == (10, 31)  # reads on; the batch covers both
    assert stream.range_read(step, 35, 0, records=2, now=0.2)


def test_a_range_without_the_shards_records_goes_out_as_the_heartbeat():
    stream = resumed()
    send(stream, 10, 100, now=0.0)
    stream.on_ack(ack(10), now=0.1)
    step = stream.next_step(0.1, first_seq=1, synced_seq=30)
    assert not stream.range_read(step, 30, 0, records=0, now=0.1)
    wait = stream.next_step(0.5, first_seq=1, synced_seq=30)
    assert isinstance(wait, Wait) and wait.seconds == pytest.approx(0.05)
    assert stream.next_step(1.0, first_seq=1, synced_seq=30) == SendHeartbeat(10, 30)
    # Once the heartbeat is due, a range read without the shard's records goes out at once.
    stream.sent(10, 30, 0, now=1.0)
    stream.on_ack(ack(30), now=1.0)
    step = stream.next_step(2.5, first_seq=1, synced_seq=40)
    assert stream.range_read(step, 40, 0, records=0, now=2.5)


def test_a_rewind_forgets_a_range_read_without_the_shards_records():
    stream = resumed()
    send(stream, 10, 100, now=0.0)
    step = stream.next_step(0.1, first_seq=1, synced_seq=30)
    assert not stream.range_read(step, 30, 0, records=0, now=0.1)
    stream.on_ack(ack(0, error="refused"), now=0.2)
    step = stream.next_step(0.2, first_seq=1, synced_seq=30)
    assert (step.after_seq, step.read_from) == (0, 1)  # everything is read again


def held(applied: int, durable: int) -> pb.IngestAck:
    """The ack of a shard that holds through ``applied``, durable through ``durable``."""
    return pb.IngestAck(applied_seq=applied, durable_seq=durable)


def test_a_deferred_ack_paces_by_what_the_shard_holds_and_trims_by_what_is_durable():
    stream = resumed()
    send(stream, 10, 100)
    send(stream, 20, 100)
    stream.on_ack(held(10, 0), now=1.0)
    stream.on_ack(held(20, 0), now=1.0)
    assert stream.rewinds_total == 0 and stream.sent_seq == 20 and not stream.pending
    assert stream.acked_seq == 0  # nothing durable yet: the LOG keeps 1..20
    step = stream.next_step(2.0, first_seq=1, synced_seq=20)
    assert isinstance(step, SendHeartbeat) and (step.after_seq, step.through_seq) == (20, 20)
    stream.sent(20, 20, 0, 2.0)
    stream.on_ack(held(20, 20), now=2.0)  # the heartbeat's ack, after the shard's flush
    assert stream.acked_seq == 20 and stream.rewinds_total == 0


def test_a_shard_that_restarted_before_its_flush_is_resent_what_it_had_not_made_durable():
    stream = resumed()
    send(stream, 10, 100)
    send(stream, 20, 100)
    stream.on_ack(held(10, 10), now=1.0)
    stream.on_ack(held(20, 10), now=1.0)
    stream.disconnected()
    stream.resume(held(10, 10), log_last_seq=20)  # its flush of 11..20 never happened
    assert stream.rewinds_total == 0  # expected: nothing acked durable is missing
    step = stream.next_step(2.0, first_seq=1, synced_seq=20)
    assert isinstance(step, SendRange) and step.after_seq == 10


def test_a_shard_that_lost_what_it_acked_durable_counts_as_a_rewind():
    stream = resumed()
    send(stream, 10, 100)
    stream.on_ack(held(10, 10), now=1.0)
    stream.disconnected()
    stream.resume(held(4, 4), log_last_seq=10)
    assert stream.rewinds_total == 1 and stream.sent_seq == 4


def test_a_quiet_stream_whose_shard_holds_undurable_records_heartbeats_sooner():
    """The heartbeat is what makes such a shard flush and say so; without
    undurable records the stream heartbeats at its usual interval."""
    stream = resumed()
    send(stream, 10, 100)
    stream.on_ack(held(10, 0), now=0.0)
    step = stream.next_step(OPTIONS.quiet_heartbeat_s, first_seq=1, synced_seq=10)
    assert isinstance(step, SendHeartbeat) and (step.after_seq, step.through_seq) == (10, 10)
    stream.sent(10, 10, 0, OPTIONS.quiet_heartbeat_s)
    stream.on_ack(held(10, 10), now=OPTIONS.quiet_heartbeat_s)
    step = stream.next_step(2 * OPTIONS.quiet_heartbeat_s, first_seq=1, synced_seq=10)
    assert isinstance(step, Wait) and OPTIONS.heartbeat_interval_s > OPTIONS.quiet_heartbeat_s


NAGLE = dataclasses.replace(OPTIONS, small_batch_records=1024, max_scan_records=8192,
                            max_inflight_bytes=1 << 20, max_batch_bytes=1 << 20)


def ship(stream: IngestStream, now: float, synced: int, nbytes: int = 1000) -> SendRange:
    """The next step is a batch through ``synced`` (or its scan limit); send it."""
    step = stream.next_step(now, first_seq=1, synced_seq=synced)
    assert isinstance(step, SendRange)
    through = min(synced, step.limit_seq)
    assert stream.range_read(step, through, 0, records=through - step.after_seq, now=now)
    stream.sent(step.after_seq, through, nbytes, now)
    return step


def test_the_end_of_a_backlog_is_made_durable_at_once():
    """A backlog (the stream max_scan_records or more behind) goes out without
    lingering, its last small range included; once the shard holds it all but
    has not made it durable, nothing more is coming, so the heartbeat that
    makes it flush goes out at once, and only once."""
    stream = resumed(options=NAGLE)
    ship(stream, 0.0, 9000)                 # 8192 records: the scan limit
    ship(stream, 0.0, 9000)                 # the last 808 go out at once, a batch in flight
    stream.on_ack(held(8192, 0), now=0.01)
    stream.on_ack(held(9000, 0), now=0.01)
    step = stream.next_step(0.01, first_seq=1, synced_seq=9000)
    assert isinstance(step, SendHeartbeat) and (step.after_seq, step.through_seq) == (9000, 9000)
    stream.sent(9000, 9000, 0, 0.01)
    stream.on_ack(held(9000, 0), now=0.02)  # the shard did not flush (yet)
    step = stream.next_step(0.02, first_seq=1, synced_seq=9000)
    assert isinstance(step, Wait) and step.seconds > 0


def test_after_a_backlog_a_trickle_lingers_again():
    """Once the backlog is out, a trickle's small ranges wait for the batch in
    flight and the linger (Nagle's rule) even when acks are slow; the end of
    a trickle waits the quiet interval."""
    stream = resumed(options=NAGLE)
    ship(stream, 0.0, 9000)
    ship(stream, 0.0, 9000)
    now = 0.001
    for synced in range(9004, 9100, 4):     # 4 records a millisecond, acks far behind
        assert isinstance(stream.next_step(now, first_seq=1, synced_seq=synced), Wait)
        now += 0.001
    stream.on_ack(held(8192, 0), now=now)
    stream.on_ack(held(9000, 0), now=now)
    t = 0.001 + NAGLE.linger_s  # the first of them was seen at 0.001
    assert isinstance(stream.next_step(t - 0.001, first_seq=1, synced_seq=9100), Wait)
    ship(stream, t, 9100)
    stream.on_ack(held(9100, 0), now=t)
    for wait in (0.0, NAGLE.quiet_heartbeat_s / 2):
        assert isinstance(stream.next_step(t + wait, first_seq=1, synced_seq=9100), Wait)
    step = stream.next_step(t + NAGLE.quiet_heartbeat_s, first_seq=1, synced_seq=9100)
    assert isinstance(step, SendHeartbeat)


def test_a_workloads_bursts_are_no_backlog():
    """Bursts of a busy client (1,200 records every 50 ms, below the scan
    limit) go out at once by size, but the end of each does not make the
    shard flush at once: that waits for its own clock or a quiet stream."""
    stream = resumed(options=NAGLE)
    synced = 0
    for burst in range(3):
        now = burst * 0.05
        synced += 1200
        ship(stream, now, synced)
        stream.on_ack(held(synced, 0), now=now + 0.005)
        assert isinstance(stream.next_step(now + 0.005, first_seq=1, synced_seq=synced), Wait)
