"""The consistent cut, tested against a model of proxies, LOGs, shippers and shards.

DESIGN.md, "Ordering and the consistent cut": if stamp(a) < stamp(b), no
restore ever shows b without a. A restore is only allowed at or below the
consistent point C, so the property is: every record stamped below C is
durably held by its shard. (Equivalently, for stamped a < b, no cut at or
below C contains b without a: if a < b <= C then a < C, so a is held.)

The model (a Hypothesis ``RuleBasedStateMachine``; every rule is one thing
that can happen in any order):

* P proxies, each with its own ``logstore.hlc.HLC`` on an injected physical
  clock ``true time + offset``; offsets are skewed and jump back and forth.
  A call is stamped when it *arrives*; calls *complete* in any order and only
  then is the record appended to the proxy's LOG, so LOG order is not stamp
  order. The proxy's stable stamp is the lowest stamp still in flight (a
  frontier means "everything *below* it"), else ``now()``.
* Records route to S shards by a hash of their file handle. One shipper per
  (proxy, shard) sends batches over LOG ranges ``(after_seq, through_seq]``
  holding only that shard's records, pipelined without waiting for acks.
  Stable stamps are sampled as pairs ``(E, H)`` (E: LOG end when H was
  taken) and a batch carries the best H whose E <= through_seq; a batch with
  nothing new is a heartbeat ``(pos, pos]``.
* Batches and acks are reordered, duplicated, delayed and dropped.
* A shard applies a batch to its in-memory state with
  ``recoveryd.frontier.apply`` (refusals are answered at once with the
  shard's *durable* position, and the shipper rewinds there); accepted
  batches wait for a group commit, which makes the batch's records and its
  state durable together and only then acks. A crash loses every batch not
  yet committed. A wipe resets the durable state to empty: the shipper is
  refused, rewinds to 0 and resends from its LOG.
* A proxy trims its LOG below the lowest ack over its shippers. A shipper
  whose shard needs trimmed records (only possible after a wipe, since acks
  report durable positions) sends a gap batch; with no baseline in the model,
  the gap holds C at its start for good.
* HLCs are exchanged as in production: a shard updates its clock from the
  stamps in each batch, a proxy from the shard stamp in each ack; refusals of
  stamps too far ahead are part of the model.

Checked after every step:

* every record (in flight, in the LOG, or trimmed) stamped below C is held
  durably by its shard;
* C never moves back unless a shard was wiped since the last step; the raw
  ``consistent_point`` (no membership) never moves back unless a shard was
  wiped or a stream appeared that no shard knew; a stream's frontier on a
  shard never moves back unless that shard was wiped;
* a shard durably holds exactly its records of a stream's prefix
  ``(0, durable_seq]`` minus reported gaps; C is at most the start of any gap;
* a shard that was never wiped never has a gap (trimming below durable acks
  loses nothing, even across crashes: "kill -9 loses no acknowledged record").

At the end of every run (``teardown``) delivery becomes reliable, all calls
complete, time passes (and, where shards refuse batches from clocks beyond
max offset, clocks are fixed), and the shippers run until every shard holds
every LOG; the checks above run again. Then, in the liveness test, C must
pass every stamp unless a stream has a gap (then C must not exceed the
gap's start). It found the heartbeat bug (see
``test_idle_proxy_lets_consistent_point_move``).

Membership: C here is ``consistent_point`` with the consistency group's
streams known up front (``proven_point``). The raw ``consistent_point`` only
counts streams some shard has seen, so a proxy no shard has heard of yet
(or that only a wiped shard knew) does not hold C back; see
``test_unknown_stream_holds_back_consistent_point``.

Profiles: ``NFSJ_HYPOTHESIS_PROFILE=default|ci|thorough`` picks how many runs
and steps (default: a few seconds).
"""

from __future__ import annotations

import dataclasses
import os
import zlib

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from logstore.hlc import HLC, ClockStamp, UntrustworthyStampError
from logstore.stamp import Stamp
from recoveryd.frontier import (BatchRefused, StreamKey, StreamState, apply, consistent_point,
                                limit_by_gaps, restore_baseline)

# -- profiles ------------------------------------------------------------------

PROFILE_ENV = "NFSJ_HYPOTHESIS_PROFILE"
_PROFILES = {
    # name: (max_examples, stateful_step_count)
    "default": (120, 60),
    "ci": (600, 80),
    "thorough": (5000, 120),
}
for _name, (_examples, _steps) in _PROFILES.items():
    settings.register_profile(
        f"nfsj-cut-{_name}", max_examples=_examples, stateful_step_count=_steps,
        deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _profile() -> settings:
    name = os.environ.get(PROFILE_ENV, "default")
    if name not in _PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r}: expected one of {', '.join(_PROFILES)}")
    return settings.get_profile(f"nfsj-cut-{name}")


# -- model values --------------------------------------------------------------

BASE_NS = 1_700_000_000_000_000_000
SAMPLES_KEPT = 6
SETTLE_ROUNDS = 50
SKEW_BAND_NS = 5_000           # every clock's offset from true time stays within +-band
SETTLE_TICK_NS = 4 * SKEW_BAND_NS  # time passing per settle round: past any skew


def plain(stamp: Stamp) -> Stamp:
    """A stable stamp is a derived bound, not a clock reading: it must never move a clock."""
    return Stamp(stamp.wall_ns, stamp.logical, stamp.node_id)


def route(fh: int, n_shards: int) -> int:
    return zlib.crc32(fh.to_bytes(4, "big")) % n_shards


def proven_point(durable: list[dict[StreamKey, StreamState]], members: list[StreamKey]) -> Stamp:
    """``consistent_point`` when the consistency group's streams are known.

    A roster "shard" that knows every member at ``Stamp.MAX`` makes every
    real shard that lacks a member count ``Stamp.ZERO`` for it, without
    lowering anything itself.
    """
    roster = {key: StreamState(frontier=Stamp.MAX) for key in members}
    point = consistent_point([*durable, roster])
    # No baseline in this model: a gap holds the point at its start for good.
    gaps = [g for shard in durable for state in shard.values() for g in state.gaps]
    return limit_by_gaps(point, gaps, [])[0]


def gap_ranges(state: StreamState) -> list[tuple[int, int]]:
    """The LOG ranges of ``state.gaps``."""
    return [(g.after_seq, g.through_seq) for g in state.gaps]


@dataclasses.dataclass(frozen=True, slots=True)
class Rec:
    """One journaled call. ``seq`` is 0 while the call is in flight."""

    proxy: int
    stamp: ClockStamp
    shard: int
    seq: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    proxy: int
    shard: int
    key: StreamKey
    after_seq: int
    through_seq: int
    records: tuple[Rec, ...]
    stable: Stamp | None
    gap: bool
    newest: Stamp
    sent_stamp: ClockStamp


@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    proxy: int
    shard: int
    durable_seq: int
    frontier: Stamp
    error: str
    shard_stamp: ClockStamp


class World:
    def __init__(self) -> None:
        self.true_ns = BASE_NS


class Shipper:
    """One (proxy, shard) stream's sending side."""

    def __init__(self) -> None:
        self.send_pos = 0    # the next batch starts after this LOG seq
        self.acked_seq = 0   # the shard's durable position, as last acked


class Proxy:
    def __init__(self, index: int, world: World, offset_ns: int, max_offset_ns: int,
                 n_shards: int) -> None:
        self.index = index
        self.world = world
        self.offset_ns = offset_ns
        self.hlc = HLC(index + 1, physical_clock=self._physical, max_offset_ns=max_offset_ns)
        self.key = StreamKey(index + 1, f"log-{index + 1}")
        self.inflight: list[Rec] = []
        self.log: list[Rec] = []          # log[i].seq == i + 1; trimmed records stay here
        self.trimmed_through = 0          # the LOG no longer holds (0, trimmed_through]
        self.samples: list[tuple[int, Stamp]] = []
        self.shippers = [Shipper() for _ in range(n_shards)]
        self.acks: list[Ack] = []         # the ack stream from all shards (network)
        self.newest: Stamp = Stamp.ZERO

    def _physical(self) -> int:
        return self.world.true_ns + self.offset_ns

    def arrive(self, fh: int, n_shards: int) -> Rec:
        rec = Rec(self.index, self.hlc.now(), route(fh, n_shards))
        self.inflight.append(rec)
        self.newest = max(self.newest, rec.stamp)
        return rec

    def complete(self, i: int) -> Rec:
        rec = dataclasses.replace(self.inflight.pop(i), seq=len(self.log) + 1)
        self.log.append(rec)
        return rec

    def sample(self) -> None:
        # Stable stamp first, LOG end second: a call completing between the
        # two then lands at or below E. (The other order would let it land
        # past E while H already passed it.) One step here, so atomic anyway.
        stable = min(r.stamp for r in self.inflight) if self.inflight else self.hlc.now()
        self.samples.append((len(self.log), plain(stable)))
        del self.samples[:-SAMPLES_KEPT]

    def batch_for(self, shard: int, limit: int) -> Batch:
        sh = self.shippers[shard]
        if sh.send_pos < self.trimmed_through:
            after, through = sh.send_pos, self.trimmed_through
            records, stable, gap = (), None, True
        else:
            after = sh.send_pos
            through = min(len(self.log), after + limit)
            records = tuple(r for r in self.log[after:through] if r.shard == shard)
            stable = max((h for e, h in self.samples if e <= through), default=None)
            gap = False
        sh.send_pos = through
        if gap:
            event("gap sent")
        return Batch(self.index, shard, self.key, after, through, records, stable, gap,
                     self.newest, self.hlc.now())

    def receive_ack(self, ack: Ack) -> None:
        try:
            self.hlc.update(ack.shard_stamp)
        except UntrustworthyStampError:
            event("proxy refused a shard stamp")
        sh = self.shippers[ack.shard]
        if ack.error:
            # Refused: resume where the shard durably is (may be 0 after a wipe).
            sh.send_pos = ack.durable_seq
            sh.acked_seq = ack.durable_seq
        else:
            sh.acked_seq = max(sh.acked_seq, ack.durable_seq)

    def trim(self, keep: int) -> None:
        """Drop the LOG below the lowest ack, keeping `keep` more records (the retention window)."""
        limit = min(sh.acked_seq for sh in self.shippers)
        self.trimmed_through = max(self.trimmed_through, limit - keep)


class Shard:
    def __init__(self, index: int, world: World, offset_ns: int, max_offset_ns: int,
                 refuse_far_ahead: bool) -> None:
        self.index = index
        # recoveryd/server.py refuses a batch whose sent_stamp is beyond max
        # offset; logstore/hlc.py says such a batch is still stored. Both run.
        self.refuse_far_ahead = refuse_far_ahead
        self.world = world
        self.offset_ns = offset_ns
        self.hlc = HLC(10_000 + index, physical_clock=lambda: world.true_ns + self.offset_ns,
                       max_offset_ns=max_offset_ns)
        self.durable: dict[StreamKey, StreamState] = {}
        self.held: dict[StreamKey, set[int]] = {}     # durable record seqs per stream
        self.memory: dict[StreamKey, StreamState] = {}
        self.pending: list[tuple[Batch, StreamState]] = []
        self.inbox: list[Batch] = []                  # the network towards this shard
        self.wipes = 0

    def receive(self, batch: Batch) -> Ack | None:
        state = self.memory.get(batch.key, StreamState())
        for stamp in (batch.sent_stamp, max((r.stamp for r in batch.records), default=None)):
            if stamp is None:
                continue
            try:
                self.hlc.update(stamp)
            except UntrustworthyStampError as e:
                event("shard refused a proxy stamp")
                if self.refuse_far_ahead:
                    return self.refusal(batch, f"sent_stamp: {e}")
        try:
            new = apply(state, batch.after_seq, batch.through_seq, batch.stable,
                        gap=batch.gap, newest=batch.newest)
        except BatchRefused as e:
            event("batch refused")
            assert e.state == state
            return self.refusal(batch, str(e))
        if batch.gap and new is not state:
            event("gap applied")
        self.memory[batch.key] = new
        self.pending.append((batch, new))
        return None

    def refusal(self, batch: Batch, error: str) -> Ack:
        # The durable position, not the in-memory one: the proxy trims by acks.
        durable = self.durable.get(batch.key, StreamState())
        return Ack(batch.proxy, self.index, durable.durable_seq, durable.frontier, error,
                   self.hlc.now())

    def commit(self, n: int) -> list[Ack]:
        """Group commit of the first n pending batches: records and state together."""
        done, self.pending = self.pending[:n], self.pending[n:]
        acks = []
        for batch, state in done:
            self.durable[batch.key] = state
            self.held.setdefault(batch.key, set()).update(r.seq for r in batch.records)
            acks.append(Ack(batch.proxy, self.index, state.durable_seq, state.frontier, "",
                            self.hlc.now()))
        return acks

    def crash(self) -> None:
        self.pending.clear()
        self.memory = dict(self.durable)

    def wipe(self) -> None:
        self.durable, self.held, self.memory, self.pending = {}, {}, {}, []
        self.wipes += 1


# -- the machine ---------------------------------------------------------------

index = st.integers(0, 7)


class ConsistentCut(RuleBasedStateMachine):
    CHECK_LIVENESS = False

    @initialize(n_proxies=st.integers(1, 3), n_shards=st.integers(1, 3),
                max_offset_ns=st.integers(200, 5_000), refuse_far_ahead=st.booleans(),
                data=st.data())
    def setup(self, n_proxies: int, n_shards: int, max_offset_ns: int, refuse_far_ahead: bool,
              data) -> None:
        self.world = World()
        self.refuse_far_ahead = refuse_far_ahead
        offsets = st.integers(-3_000, 3_000)
        self.proxies = [Proxy(i, self.world, data.draw(offsets, label=f"proxy {i} offset"),
                              max_offset_ns, n_shards) for i in range(n_proxies)]
        self.shards = [Shard(s, self.world, data.draw(offsets, label=f"shard {s} offset"),
                             max_offset_ns, refuse_far_ahead) for s in range(n_shards)]
        self.members = [p.key for p in self.proxies]
        self.last_point = self.last_raw = Stamp.ZERO
        self.last_known: frozenset[StreamKey] = frozenset()
        self.last_frontiers: dict[tuple[int, StreamKey], Stamp] = {}
        self.last_wipes = [0] * n_shards

    # -- time and clocks

    @rule(dt_ns=st.integers(0, 2_000))
    def tick(self, dt_ns: int) -> None:
        self.world.true_ns += dt_ns

    @rule(p=index, jump_ns=st.integers(-4_000, 4_000))
    def clock_jump(self, p: int, jump_ns: int) -> None:
        proxy = self.proxy(p)
        proxy.offset_ns = max(-SKEW_BAND_NS, min(SKEW_BAND_NS, proxy.offset_ns + jump_ns))

    # -- proxies

    @rule(p=index, fhs=st.lists(st.integers(0, 31), min_size=1, max_size=4))
    def arrive(self, p: int, fhs: list[int]) -> None:
        self._arrive(p, fhs)

    def _arrive(self, p: int, fhs: list[int]) -> None:
        for fh in fhs:
            self.proxy(p).arrive(fh, len(self.shards))

    @precondition(lambda self: any(p.inflight for p in self.proxies))
    @rule(p=index, picks=st.lists(st.integers(0, 15), min_size=1, max_size=3))
    def complete(self, p: int, picks: list[int]) -> None:
        """Calls complete in any order; each lands at the LOG's end."""
        self._complete(p, picks)

    def _complete(self, p: int, picks: list[int]) -> None:
        if not any(x.inflight for x in self.proxies):
            return
        proxy = self.pick(self.proxies, p, lambda x: bool(x.inflight))
        for i in picks:
            if proxy.inflight:
                proxy.complete(i % len(proxy.inflight))

    @rule(p=index, fhs=st.lists(st.integers(0, 31), min_size=1, max_size=4),
          picks=st.lists(st.integers(0, 15), max_size=4))
    def traffic(self, p: int, fhs: list[int], picks: list[int]) -> None:
        """Calls arrive, and some in-flight ones complete. (Also in `arrive` and
        `complete`: Hypothesis switches rules off at random per run, and most
        runs should still see records.)"""
        self._arrive(p, fhs)
        self._complete(p, picks)

    @rule(p=index)
    def sample(self, p: int) -> None:
        self.proxy(p).sample()

    @rule(p=index, s=index, limit=st.integers(0, 6), fresh=st.booleans())
    def ship(self, p: int, s: int, limit: int, fresh: bool) -> None:
        proxy = self.proxy(p)
        if fresh:
            proxy.sample()
        batch = proxy.batch_for(s % len(self.shards), limit)
        if batch.after_seq == batch.through_seq:
            event("heartbeat sent")
        self.shards[batch.shard].inbox.append(batch)

    @rule(p=index, limit=st.integers(0, 6))
    def ship_all(self, p: int, limit: int) -> None:
        proxy = self.proxy(p)
        proxy.sample()
        for shard in self.shards:
            shard.inbox.append(proxy.batch_for(shard.index, limit))

    @rule(p=index, keep=st.integers(0, 3))
    def trim(self, p: int, keep: int) -> None:
        self._trim(p, keep)

    def _trim(self, p: int, keep: int) -> None:
        proxy = self.proxy(p)
        before = proxy.trimmed_through
        proxy.trim(keep)
        if proxy.trimmed_through > before:
            event("LOG trimmed")

    # -- network

    @precondition(lambda self: any(s.inbox for s in self.shards))
    @rule(s=index, i=st.integers(0, 15),
          how=st.sampled_from(["deliver", "deliver", "deliver", "duplicate", "drop"]))
    def deliver_batch(self, s: int, i: int, how: str) -> None:
        shard = self.pick(self.shards, s, lambda x: bool(x.inbox))
        i %= len(shard.inbox)
        batch = shard.inbox[i] if how == "duplicate" else shard.inbox.pop(i)
        if how != "drop":
            self.deliver(shard, batch)

    @precondition(lambda self: any(p.acks for p in self.proxies))
    @rule(p=index, i=st.integers(0, 15),
          how=st.sampled_from(["deliver", "deliver", "deliver", "duplicate", "drop"]))
    def deliver_ack(self, p: int, i: int, how: str) -> None:
        proxy = self.pick(self.proxies, p, lambda x: bool(x.acks))
        i %= len(proxy.acks)
        ack = proxy.acks[i] if how == "duplicate" else proxy.acks.pop(i)
        if how != "drop":
            proxy.receive_ack(ack)

    @precondition(lambda self: any(s.inbox for s in self.shards))
    @rule(s=index)
    def pump(self, s: int) -> None:
        """The network towards one shard works for a moment: deliver all, in order, and commit."""
        shard = self.pick(self.shards, s, lambda x: bool(x.inbox))
        while shard.inbox:
            self.deliver(shard, shard.inbox.pop(0))
        self.commit_all(shard)

    @precondition(lambda self: any(p.acks for p in self.proxies))
    @rule(p=index, trim=st.booleans())
    def pump_acks(self, p: int, trim: bool) -> None:
        proxy = self.pick(self.proxies, p, lambda x: bool(x.acks))
        while proxy.acks:
            proxy.receive_ack(proxy.acks.pop(0))
        if trim:
            self._trim(self.proxies.index(proxy), 0)

    @rule(p=index, limit=st.integers(1, 6), keep=st.integers(0, 2))
    def healthy_round(self, p: int, limit: int, keep: int) -> None:
        """A moment of working network for one proxy: ship to every shard,
        deliver everything in order, commit, ack, and trim the LOG."""
        proxy = self.proxy(p)
        self.ship_all(p, limit)
        for shard in self.shards:
            while shard.inbox:
                self.deliver(shard, shard.inbox.pop(0))
            self.commit_all(shard)
        while proxy.acks:
            proxy.receive_ack(proxy.acks.pop(0))
        self._trim(p, keep)

    # -- shards

    @precondition(lambda self: any(s.pending for s in self.shards))
    @rule(s=index, n=st.integers(1, 8))
    def commit(self, s: int, n: int) -> None:
        shard = self.pick(self.shards, s, lambda x: bool(x.pending))
        for ack in shard.commit(n):
            self.proxies[ack.proxy].acks.append(ack)

    def commit_all(self, shard: Shard) -> None:
        for ack in shard.commit(len(shard.pending)):
            self.proxies[ack.proxy].acks.append(ack)

    @rule(s=index, how=st.sampled_from(["crash", "crash", "crash", "wipe"]))
    def crash(self, s: int, how: str) -> None:
        shard = self.shards[s % len(self.shards)]
        if how == "wipe":
            event("shard wiped")
            shard.wipe()
        else:
            shard.crash()

    # -- helpers

    def proxy(self, p: int) -> Proxy:
        return self.proxies[p % len(self.proxies)]

    @staticmethod
    def pick(items, i, ok):
        # Take the i-th item (mod) that satisfies ok; shrinks towards the first.
        eligible = [x for x in items if ok(x)]
        return eligible[i % len(eligible)]

    def deliver(self, shard: Shard, batch: Batch) -> None:
        ack = shard.receive(batch)
        if ack is not None:
            self.proxies[ack.proxy].acks.append(ack)

    def point(self) -> Stamp:
        return proven_point([s.durable for s in self.shards], self.members)

    def all_records(self):
        for proxy in self.proxies:
            yield from proxy.log
            yield from proxy.inflight

    # -- the guarantee

    @invariant()
    def cut_is_consistent(self) -> None:
        point = self.point()
        for rec in self.all_records():
            if rec.stamp < point:
                key = self.proxies[rec.proxy].key
                held = rec.seq and rec.seq in self.shards[rec.shard].held.get(key, ())
                assert held, (
                    f"consistent point {point} passed record {rec.stamp} of proxy {rec.proxy} "
                    f"(seq {rec.seq or 'in flight'}), which shard {rec.shard} does not hold: "
                    f"durable states {[s.durable for s in self.shards]}")
        if point > Stamp.ZERO:
            event("consistent point advanced")

    @invariant()
    def nothing_moves_back(self) -> None:
        point = self.point()
        wiped = [s.wipes for s in self.shards] != self.last_wipes
        if not wiped:
            assert point >= self.last_point, f"consistent point moved back: {self.last_point} -> {point}"
        # consistent_point() itself, without membership: it may claim more
        # (see test_unknown_stream_holds_back_consistent_point), and moves back
        # when a stream no shard knew appears; otherwise only on a wipe.
        raw = consistent_point([s.durable for s in self.shards])
        known = frozenset(key for s in self.shards for key in s.durable)
        assert raw >= point
        if not wiped and known == self.last_known:
            assert raw >= self.last_raw, f"consistent_point() moved back: {self.last_raw} -> {raw}"
        frontiers = {(s.index, key): state.frontier
                     for s in self.shards for key, state in s.durable.items()}
        for (s, key), before in self.last_frontiers.items():
            if self.shards[s].wipes == self.last_wipes[s]:
                after = frontiers.get((s, key), Stamp.ZERO)
                assert after >= before, f"shard {s} stream {key}: frontier moved back {before} -> {after}"
        self.last_point, self.last_frontiers = point, frontiers
        self.last_raw, self.last_known = raw, known
        self.last_wipes = [s.wipes for s in self.shards]

    @invariant()
    def shards_hold_prefixes(self) -> None:
        point = self.point()
        for shard in self.shards:
            for key, state in shard.durable.items():
                proxy = self.proxies[key.node_id - 1]
                gaps = gap_ranges(state)
                mine = {r.seq for r in proxy.log[:state.durable_seq] if r.shard == shard.index}
                expected = {q for q in mine if not any(a < q <= b for a, b in gaps)}
                held = shard.held.get(key, set())
                assert expected <= held <= mine, (
                    f"shard {shard.index} stream {key} through {state.durable_seq}: "
                    f"holds {sorted(held)}, should hold {sorted(expected)}")
                for gap in state.gaps:
                    assert point <= gap.from_stamp
                if shard.wipes == 0:
                    assert not state.gaps, (
                        f"shard {shard.index} was never wiped but lost records: {state.gaps}")

    # -- eventually

    def teardown(self) -> None:
        if not hasattr(self, "proxies"):
            return
        self.settle()
        self.cut_is_consistent()
        self.shards_hold_prefixes()
        if self.CHECK_LIVENESS:
            self.check_liveness()

    def settle(self) -> None:
        """Reliable delivery from now on: complete every call, ship until every shard holds every LOG."""
        for proxy in self.proxies:
            while proxy.inflight:
                proxy.complete(0)
        if self.refuse_far_ahead:
            # Shards refuse every batch of a proxy whose clock is beyond max
            # offset: nothing moves until its clock is fixed.
            for node in (*self.proxies, *self.shards):
                node.offset_ns = 0
        caught_up_rounds = 0
        for _ in range(SETTLE_ROUNDS):
            # Time passes too: a proxy whose clock lags, and which refused the
            # stamps of faster clocks, stamps past them once physical time does.
            self.world.true_ns += SETTLE_TICK_NS
            for proxy in self.proxies:
                proxy.sample()
                for s in range(len(self.shards)):
                    self.shards[s].inbox.append(proxy.batch_for(s, len(proxy.log)))
            for shard in self.shards:
                while shard.inbox:
                    self.deliver(shard, shard.inbox.pop(0))
                self.commit_all(shard)
            for proxy in self.proxies:
                while proxy.acks:
                    proxy.receive_ack(proxy.acks.pop(0))
            caught_up = all(s.durable.get(p.key, StreamState()).durable_seq == len(p.log)
                            for s in self.shards for p in self.proxies)
            caught_up_rounds = caught_up_rounds + 1 if caught_up else 0
            if caught_up_rounds >= 2:  # one more round of heartbeats after catching up
                return
        raise AssertionError(f"shippers did not catch up in {SETTLE_ROUNDS} reliable rounds")

    def check_liveness(self) -> None:
        point = self.point()
        starts = [g.from_stamp for s in self.shards for state in s.durable.values() for g in state.gaps]
        if starts:
            event("settled with a gap")
            assert point <= min(starts)
            return
        for rec in self.all_records():
            assert rec.stamp < point, (
                f"after settling, consistent point {point} has not passed record {rec.stamp} "
                f"of proxy {rec.proxy} (seq {rec.seq}); frontiers: "
                f"{[{str(k): str(v.frontier) for k, v in s.durable.items()} for s in self.shards]}")


ConsistentCut.TestCase.settings = _profile()
TestConsistentCut = ConsistentCut.TestCase


class ConsistentCutLiveness(ConsistentCut):
    CHECK_LIVENESS = True


# Liveness found a bug in recoveryd.frontier.apply (fixed in ebcc3ec): a
# heartbeat (pos, pos] at the durable position was taken for a duplicate and
# its stable stamp dropped, so a frontier moved only when new LOG positions
# arrived. Smallest run: two proxies, one shard; proxy 0 journals one call,
# proxy 1 none; every batch of proxy 1 is (0, 0], so C stayed 0.0@0 forever.
ConsistentCutLiveness.TestCase.settings = _profile()
TestConsistentCutLiveness = ConsistentCutLiveness.TestCase


# -- minimal examples ----------------------------------------------------------

P1 = StreamKey(1, "log-1")
P2 = StreamKey(2, "log-2")


def s(wall_ns: int, node_id: int = 1) -> Stamp:
    return Stamp(wall_ns, 0, node_id)


def test_heartbeat_moves_frontier() -> None:
    # A proxy shipped seq 1 while a call stamped 10 was still in flight
    # (stable 10); the call then completed as seq 2 and went out with the same
    # sample. Now idle, it says: nothing new, everything below 30 is sent.
    state = apply(StreamState(), 0, 1, s(10))
    state = apply(state, 1, 2, s(10))
    state = apply(state, 2, 2, s(30), newest=s(12))
    assert state.frontier == s(30)
    assert state.newest == s(12)


def test_idle_proxy_lets_consistent_point_move() -> None:
    # Proxy 2 has journaled nothing yet (a standby proxy, or reads only):
    # all it can send is (0, 0] with its stable stamp.
    shard = {P1: apply(StreamState(), 0, 1, s(20)),
             P2: apply(StreamState(), 0, 0, s(25, node_id=2))}
    assert consistent_point([shard]) == s(20)


def test_a_gap_holds_the_point_at_its_start_until_a_later_baseline_ends() -> None:
    state = apply(StreamState(), 0, 3, s(10))
    state = apply(state, 3, 9, None, gap=True, sent=s(20))
    state = apply(state, 9, 9, s(50))
    state = apply(state, 9, 12, s(60))
    (gap,) = state.gaps
    assert state.frontier == s(60) and (gap.from_stamp, gap.through) == (s(10), s(20))
    assert limit_by_gaps(state.frontier, state.gaps, []) == (s(10), gap)
    assert limit_by_gaps(state.frontier, state.gaps, [(s(15), s(30))]) == (s(10), gap)  # began inside
    assert limit_by_gaps(state.frontier, state.gaps, [(s(25), s(30))]) == (s(60), None)
    assert restore_baseline(s(28), state.gaps, [(s(25), s(30))]) is None   # before its end
    assert restore_baseline(s(35), state.gaps, [(s(1), s(2)), (s(25), s(30))]) == (s(25), s(30))
    assert restore_baseline(s(5), state.gaps, [(s(1), s(2))]) == (s(1), s(2))  # before the gap


def test_duplicate_and_refused_batches_change_nothing() -> None:
    state = apply(StreamState(), 0, 5, s(10))
    assert apply(state, 0, 5, s(10)) == state
    assert apply(state, 2, 4, None) == state
    for after, through in ((4, 6), (6, 8), (0, 7)):
        with pytest.raises(BatchRefused) as refused:
            apply(state, after, through, s(99))
        assert refused.value.state == state


def test_wiped_shard_holds_consistent_point_back() -> None:
    held = {P1: StreamState(5, s(10))}
    assert consistent_point([held, {}]) == Stamp.ZERO
    assert consistent_point([held, {P1: StreamState(5, s(20))}]) == s(10)


def test_unknown_stream_holds_back_consistent_point() -> None:
    # Proxy 2 stamped a record at 5, but no shard knows its stream yet: its
    # shipper has not got through (shard unreachable from it, proxy just
    # started), or the only shard that knew it was wiped and proxy 1 got
    # there first. Proxy 1 shipped later records with stable 20. A restore at
    # consistent_point() = 20 would show proxy 1's records without proxy 2's
    # earlier one. The shards' member list (proxy node ids) closes this.
    shard = {P1: StreamState(3, s(20))}
    assert consistent_point([shard], members={P1.node_id, P2.node_id}) <= s(5, node_id=2)
    assert consistent_point([shard], members={P1.node_id}) == s(20)
    # The model's roster gives the same answer.
    assert proven_point([shard], [P1, P2]) == Stamp.ZERO
