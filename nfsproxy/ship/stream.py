"""One Ingest stream's protocol state, sans-IO: positions, epochs, acks, rewinds, gaps.

The shipper (``nfsproxy.ship.shipper``) is the thin driver around this: it
owns the gRPC call, reads the LOG and the clock, and asks ``IngestStream``
what to do next. Nothing here reads a socket, a file or a clock; every
method that needs the time takes ``now`` (``time.monotonic()`` seconds).
The protocol itself (hello, batches over LOG ranges, one ack per batch,
rewinds, gaps, stable claims) is described in ``nfsproxy.ship.shipper``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import deque

from logstore.pb import journal_pb2 as pb
from logstore.stamp import Stamp

__all__ = ["IngestStream", "ShipperOptions", "StableClaims", "Backoff", "ShardRefused",
           "SendGap", "SendRange", "SendHeartbeat", "Wait", "Step"]

logger = logging.getLogger("nfsproxy.ship.shipper")

# A single record larger than this still goes out alone, so a shard must
# accept messages of at least the LOG's max record size (recoveryd.server
# accepts far more than both; gRPC's own default limit is 4 MiB).
DEFAULT_MAX_BATCH_BYTES = 4 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class ShipperOptions:
    """Tunables of one shipper; the defaults suit production."""

    # Batches are sized by bytes (max_batch_bytes); the record count only
    # bounds batches of tiny records.
    max_batch_records: int = 8192
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    max_scan_records: int = 8192
    max_inflight_bytes: int = 16 << 20
    max_inflight_batches: int = 64
    # A range of fewer synced records than small_batch_records waits while a
    # batch is in flight (Nagle's rule) and until it is linger_s old, so a
    # steady stream of small writes ships a batch per shard round trip and
    # linger, not one per LOG fsync (each batch costs the shard a synced
    # write). It delays only the shard's copy: the LOG already holds them.
    # A backlog goes out at once, its last, smaller batch included. Measured
    # against 64 records and 10 ms (3 rounds, 2 shards): shard CPU -60% for a
    # CREATE/SETATTR/REMOVE mix and -55% for 4 KiB FILE_SYNC writes, whose
    # throughput rose 5-20%.
    small_batch_records: int = 1024
    linger_s: float = 0.05
    sample_interval_s: float = 0.1
    # A range that holds none of the shard's records is not sent on its own:
    # it waits for the shard's next record or for the heartbeat, whichever
    # comes first. With N shards, most ranges hold nothing for most of
    # them, and each batch costs the shard a synced write and both sides a
    # gRPC message.
    heartbeat_interval_s: float = 0.2
    # A shard that holds records it has not made durable yet flushes them
    # when a heartbeat comes (the stream went quiet), and its ack says so:
    # the shipper sends that heartbeat this long after its last batch, so
    # a burst is durable, and the LOG may drop it, soon after it ends. A
    # steady stream of small writes sends a batch every linger_s and so
    # never waits this long: its shard flushes on its own clock.
    quiet_heartbeat_s: float = 0.1
    poll_interval_s: float = 0.02    # how often an idle shipper looks at log.synced_seq
    hello_timeout_s: float = 10.0
    ack_timeout_s: float = 60.0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    max_samples: int = 4096

    def __post_init__(self) -> None:
        for name in ("max_batch_records", "max_batch_bytes", "max_scan_records",
                     "max_inflight_bytes", "max_inflight_batches", "small_batch_records",
                     "max_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"ShipperOptions.{name} must be >= 1")
        if self.linger_s < 0 or self.quiet_heartbeat_s < 0:
            raise ValueError("ShipperOptions.linger_s and quiet_heartbeat_s must be >= 0")
        if self.max_samples < 2:
            raise ValueError("ShipperOptions.max_samples must be >= 2")


class StableClaims:
    """Samples ``(E, H)``: every record stamped below ``H`` lies at a seq ``<= E``.

    Sans-IO. ``claim(through_seq)`` is the highest ``H`` whose ``E`` is at or
    below ``through_seq`` (None: no sample qualifies yet). Samples are
    kept in ``E`` order with ``H`` made non-decreasing (a claim that holds
    for ``E`` holds for every larger ``E`` too). Samples a claim has passed
    are folded into one ``floor``; past ``max_samples`` every other sample
    is dropped, which only makes claims coarser, never wrong.
    """

    def __init__(self, max_samples: int = 4096):
        self._samples: deque[tuple[int, Stamp]] = deque()
        self._floor: tuple[int, Stamp] | None = None
        self._max = max_samples

    def observe(self, last_seq: int, stable: Stamp) -> None:
        newest = self._samples[-1] if self._samples else self._floor
        if newest is not None:
            if last_seq < newest[0]:
                raise ValueError(f"LOG position went back from {newest[0]} to {last_seq}")
            stable = max(stable, newest[1])
            if last_seq == newest[0]:
                if self._samples:
                    self._samples[-1] = (last_seq, stable)
                else:
                    self._floor = (last_seq, stable)
                return
        self._samples.append((last_seq, stable))
        if len(self._samples) > self._max:
            kept = list(self._samples)[1::2]  # ends with the newest when the length is even
            if kept[-1] != self._samples[-1]:
                kept.append(self._samples[-1])
            self._samples = deque(kept)

    def claim(self, through_seq: int) -> Stamp | None:
        while self._samples and self._samples[0][0] <= through_seq:
            self._floor = self._samples.popleft()
        if self._floor is not None and self._floor[0] <= through_seq:
            return self._floor[1]
        return None

    def __len__(self) -> int:
        return len(self._samples) + (self._floor is not None)


class Backoff:
    """Exponential backoff with full jitter between ``initial_s`` and ``max_s``."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None):
        self.initial_s, self.max_s = initial_s, max_s
        self._next = initial_s
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = self._next
        self._next = min(self.max_s, self._next * 2)
        return self.initial_s + self._rng.random() * (ceiling - self.initial_s)

    def reset(self) -> None:
        self._next = self.initial_s


class ShardRefused(Exception):
    """The shard broke the Ingest protocol; the stream is dropped and redone."""


# -- what the driver does next ------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SendGap:
    """Send a gap batch over ``(after_seq, through_seq]``: the LOG no longer holds it."""

    after_seq: int
    through_seq: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class SendRange:
    """Read LOG seqs ``read_from .. limit_seq`` (at most ``budget`` payload bytes,
    or one record of any size when ``allow_oversize``) and send them as a batch
    over ``(after_seq, through]``: the seqs between ``after_seq`` and
    ``read_from`` were read before and hold none of the shard's records."""

    after_seq: int
    limit_seq: int
    budget: int
    allow_oversize: bool
    epoch: int
    read_from: int = 0  # 0: after_seq + 1

    def __post_init__(self) -> None:
        if not self.read_from:
            object.__setattr__(self, "read_from", self.after_seq + 1)


@dataclasses.dataclass(frozen=True, slots=True)
class SendHeartbeat:
    """Send a batch without records over ``(after_seq, through_seq]`` (``(P, P]``
    at an idle position P; a read range that held none of the shard's records
    otherwise), carrying the newest stable claim."""

    after_seq: int
    through_seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do for ``seconds`` (or until an ack or a LOG sync wakes the driver)."""

    seconds: float
    holding: bool = False  # True: held back after a rewind; sleep, don't wait for a wake-up


Step = SendGap | SendRange | SendHeartbeat | Wait


@dataclasses.dataclass(slots=True)
class _Sent:
    after_seq: int
    through_seq: int
    nbytes: int
    epoch: int
    sent_at: float


def _applied(ack: pb.IngestAck) -> int:
    """The shard's position in ``ack``: ``applied_seq``, or ``durable_seq``
    from shards that ack only what is durable (they leave it 0)."""
    return max(ack.applied_seq, ack.durable_seq)


class IngestStream:
    """The proxy's side of one Ingest stream to one shard.

    The driver calls ``resume`` with the hello's ack, then loops on
    ``next_step``, reporting each batch it writes with ``sent`` and each ack
    it reads with ``on_ack``; ``disconnected`` when the call ends. Batches
    sent before a rewind or reconnection carry an older ``epoch``: their
    acks are matched and ignored.
    """

    def __init__(self, shard_id: int, options: ShipperOptions):
        self.shard_id = shard_id
        self.options = options
        self.acked_seq = 0                   # durable on the shard: the LOG may drop it
        self.applied_seq = 0                 # held by the shard, durable or not yet
        self.ever_acked = False
        self.sent_seq = 0
        self.epoch = 0                       # bumped by every rewind and reconnection
        self.pending: deque[_Sent] = deque()  # batches sent on this call, awaiting their ack
        self.inflight_bytes = 0
        self.blocked_by = 0                  # bytes the next record needs in flight (0: unknown)
        self._ready_since: float | None = None  # when unread records were first seen synced
        # A backlog: the stream was max_scan_records or more behind the LOG,
        # last with the LOG synced through _backlog_end. Its ranges, the last
        # small one included, go out at once (no linger), and while _burst
        # the heartbeat that makes the shard flush it goes out as soon as the
        # stream runs dry (``_heartbeat_interval``).
        self._backlog_end = 0
        self._burst = False
        # (epoch, seq): (sent_seq, seq] was read and holds none of the shard's
        # records; it goes out with the next batch or heartbeat. A new epoch
        # (rewind, reconnection, skip) forgets it.
        self._empty: tuple[int, int] = (-1, 0)
        self.frontier = Stamp.ZERO
        self.connected = False
        self.last_send_at = 0.0
        self._last_rewind_to = -1            # seq of the last rewind, until progress past it
        self._hold_until = 0.0               # no sending before this, after rewinds
        self._rewind_backoff = Backoff(options.backoff_initial_s, options.backoff_max_s)
        self.rewinds_total = 0
        self.gaps: list[str] = []
        self.gaps_total = 0

    # -- connection ------------------------------------------------------------------

    def resume(self, ack: pb.IngestAck, log_last_seq: int) -> None:
        """The shard answered the hello: resume after its position.

        A shard that restarted may hold less than it acked: what it had not
        made durable yet (``applied_seq`` above ``durable_seq``) is resent
        from this LOG, which kept it. Less than it acked durable means it
        lost or wiped data."""
        held = _applied(ack)
        if ack.error:
            logger.warning("shard %d answered the hello with an error (%s); resuming after "
                           "seq %d", self.shard_id, ack.error, held)
        if self.ever_acked and held < self.acked_seq:
            self.rewinds_total += 1
            logger.warning("shard %d holds this stream only through seq %d, below the %d it "
                           "acked durable before: it lost or wiped data; resending from seq %d",
                           self.shard_id, held, self.acked_seq, held + 1)
        elif self.ever_acked and held < self.applied_seq:
            logger.info("shard %d restarted before seqs %d..%d were durable there; resending "
                        "them", self.shard_id, held + 1, self.applied_seq)
        if held > log_last_seq:
            logger.error("shard %d holds this stream through seq %d, but this LOG ends at "
                         "seq %d; waiting for the LOG to pass it", self.shard_id, held,
                         log_last_seq)
        self._set_acked(ack)
        self.pending.clear()
        self.inflight_bytes = 0
        self.epoch += 1
        self.sent_seq = held
        self.connected = True
        self.last_send_at = 0.0

    def disconnected(self) -> None:
        self.connected = False
        self._ready_since = None
        self.pending.clear()
        self.inflight_bytes = 0
        self.blocked_by = 0
        self.epoch += 1

    # -- acks --------------------------------------------------------------------------

    def on_ack(self, ack: pb.IngestAck, now: float) -> None:
        """Match an ack to the oldest batch in flight. Raises ShardRefused for an ack of nothing."""
        if not self.pending:
            raise ShardRefused(f"an ack (durable seq {ack.durable_seq}) for no batch")
        sent = self.pending.popleft()
        self.inflight_bytes -= sent.nbytes
        previous = self.acked_seq
        held = _applied(ack)
        self._set_acked(ack)
        if sent.epoch != self.epoch:
            return  # a batch sent before a rewind: its refusal is expected
        if ack.error or held < sent.through_seq:
            if ack.error:
                reason = f"the shard refused ({sent.after_seq}, {sent.through_seq}]: {ack.error}"
            else:
                reason = (f"the shard acked ({sent.after_seq}, {sent.through_seq}] but holds "
                          f"only through seq {held}")
            if ack.durable_seq < previous:
                reason += (f"; its durable position went back from {previous} to "
                           f"{ack.durable_seq}: it lost or wiped data")
            self._rewind(held, reason, now)
            return
        if held > self._last_rewind_to:
            self._last_rewind_to = -1  # progress since the last rewind
        if held > self.sent_seq:
            self._skip_ahead(held)

    def _skip_ahead(self, held: int) -> None:
        # The shard already holds more than was sent (it got it earlier).
        logger.info("shard %d holds through seq %d, past what was sent; skipping ahead",
                    self.shard_id, held)
        self.epoch += 1
        self.sent_seq = held

    def _set_acked(self, ack: pb.IngestAck) -> None:
        self.acked_seq = ack.durable_seq
        self.applied_seq = _applied(ack)
        self.ever_acked = True
        if ack.frontier:
            try:
                self.frontier = Stamp.from_bytes(ack.frontier)
            except ValueError as e:
                logger.warning("shard %d sent a malformed frontier (%s)", self.shard_id, e)

    def _rewind(self, durable: int, reason: str, now: float) -> None:
        self.rewinds_total += 1
        self.epoch += 1
        self.sent_seq = durable
        self.blocked_by = 0
        delay = 0.0
        if durable == self._last_rewind_to:
            # Refused again at the same place without progress (e.g. the shard
            # refuses our clock): resending at once would spin. Back off.
            delay = self._rewind_backoff.next_delay()
            self._hold_until = now + delay
        else:
            self._rewind_backoff.reset()
        self._last_rewind_to = durable
        log = logger.warning if delay == 0.0 or self.rewinds_total % 50 == 0 else logger.debug
        log("shard %d: rewinding to resend from seq %d%s: %s", self.shard_id, durable + 1,
            f" in {delay:.2f}s" if delay else "", reason)

    # -- sending -----------------------------------------------------------------------

    def next_step(self, now: float, first_seq: int, synced_seq: int) -> Step:
        """What to do next, given the LOG's extent. Raises TimeoutError when an ack is overdue."""
        opts = self.options
        if self.pending and now - self.pending[0].sent_at > opts.ack_timeout_s:
            raise TimeoutError(f"no ack for {opts.ack_timeout_s:g}s")
        if now < self._hold_until:
            return Wait(self._hold_until - now, holding=True)
        if self.sent_seq + 1 < first_seq:
            return self._gap(first_seq - 1)
        read = self._read_through()
        if synced_seq - read >= opts.max_scan_records:
            self._backlog_end, self._burst = synced_seq, True
        elif self._burst and synced_seq <= read and not self.pending and not self._undurable():
            self._burst = False  # the backlog ended durable: nothing to hurry
        if synced_seq > read:
            if self._ready_since is None:
                self._ready_since = now
            if self.room() and (read < self._backlog_end or not self._lingers(now, synced_seq, read)):
                if read >= self._backlog_end and synced_seq - read < opts.small_batch_records:
                    self._burst = False  # a trickle's lingered range: the backlog is over
                return SendRange(self.sent_seq, min(synced_seq, read + opts.max_scan_records),
                                 min(opts.max_batch_bytes, opts.max_inflight_bytes - self.inflight_bytes),
                                 not self.pending, self.epoch, read + 1)
        elif now - self.last_send_at >= self._heartbeat_interval():
            self._burst = False
            return SendHeartbeat(self.sent_seq, read)
        wait_s = opts.poll_interval_s
        if synced_seq <= read:
            wait_s = min(wait_s, max(0.0, self.last_send_at + self._heartbeat_interval() - now))
        elif self._ready_since is not None and not self.pending:
            wait_s = min(wait_s, max(0.0, self._ready_since + opts.linger_s - now))
        return Wait(wait_s)

    def _heartbeat_interval(self) -> float:
        """How long after the last batch a heartbeat goes out: sooner while
        the shard holds records it has not made durable (``quiet_heartbeat_s``),
        and at once when those are the end of a backlog (a proxy's start, a
        shard's return) that no trickle followed: nothing more is coming, so
        waiting would only delay the flush that makes them durable (a backlog
        of 60,000 4 KiB records: 0.09-0.11 s of its 0.9-1.3 s). Bursts of a
        workload are no backlog (each would cost the shard a flush), and only
        one heartbeat per backlog goes out at once, in case the shard keeps
        them undurable."""
        opts = self.options
        if self._undurable() and not self.pending:
            return 0.0 if self._burst else min(opts.quiet_heartbeat_s, opts.heartbeat_interval_s)
        return opts.heartbeat_interval_s

    def _undurable(self) -> bool:
        """Whether the shard holds records it has not made durable yet."""
        return self.applied_seq > self.acked_seq

    def _read_through(self) -> int:
        """The last seq read: ``sent_seq``, or the end of a range read since that
        held none of the shard's records."""
        epoch, seq = self._empty
        return seq if epoch == self.epoch and seq > self.sent_seq else self.sent_seq

    def _lingers(self, now: float, synced_seq: int, read: int) -> bool:
        """Whether a small range waits (``ShipperOptions.small_batch_records``)."""
        opts = self.options
        if self.blocked_by or synced_seq - read >= opts.small_batch_records:
            return False
        assert self._ready_since is not None
        return bool(self.pending) or now - self._ready_since < opts.linger_s

    def room(self) -> bool:
        """Whether a batch may go out now without passing the in-flight bounds."""
        if not self.pending:
            return True
        opts = self.options
        need = max(1, self.blocked_by)
        return (len(self.pending) < opts.max_inflight_batches
                and self.inflight_bytes + need <= opts.max_inflight_bytes
                and need <= opts.max_batch_bytes)

    def _gap(self, through_seq: int) -> SendGap:
        after = self.sent_seq
        gap = (f"{after}..{through_seq}: the LOG was trimmed to seq {through_seq + 1} "
               f"before shard {self.shard_id} held these")
        self.gaps.append(gap)
        del self.gaps[:-100]
        self.gaps_total += 1
        logger.error("shard %d needs LOG seqs %d..%d, but the LOG now starts at seq %d: "
                     "sending a gap (restores past it are unproven until a baseline begun "
                     "after it has ended)", self.shard_id, after + 1,
                     through_seq, through_seq + 1)
        return SendGap(after, through_seq, gap)

    def range_read(self, step: SendRange, through_seq: int, blocked_by: int, *, records: int,
                   now: float) -> bool:
        """A LOG read for ``step`` ended at ``through_seq`` with ``records`` of
        the shard's; True if its batch should go out.

        False when the stream rewound meanwhile, when the next record waits
        for in-flight room (``blocked_by`` is its size) and nothing was
        read, or when the range holds none of the shard's records and the
        heartbeat is not due (it is remembered and sent later).
        """
        if step.epoch != self.epoch:
            return False
        self.blocked_by = blocked_by
        if through_seq < step.read_from:
            return False
        if (not records and not blocked_by
                and now - self.last_send_at < self.options.heartbeat_interval_s):
            self._empty = (self.epoch, through_seq)
            self._ready_since = None
            return False
        return True

    def sent(self, after_seq: int, through_seq: int, nbytes: int, now: float) -> None:
        """A batch over ``(after_seq, through_seq]`` with ``nbytes`` of payload went out."""
        self.pending.append(_Sent(after_seq, through_seq, nbytes, self.epoch, now))
        self.inflight_bytes += nbytes
        self.sent_seq = through_seq
        self.last_send_at = now
        self._ready_since = None
