"""Frontiers and the consistent point: what a shard can prove it holds.

Sans-IO; the store persists `StreamState` atomically with the records it
describes, so after any crash the state and the records agree.

Definitions (README.md, "The guarantee"):

* A *stream* is one proxy LOG as seen by one shard. Its position is a LOG
  sequence number; batches cover ranges ``(after_seq, through_seq]`` and
  must chain exactly (`apply` refuses anything else), so a shard never
  holds a later part of a stream without every earlier part.
* A batch may carry a *stable* stamp ``H``: every record its proxy stamped
  below ``H`` lies at or below ``through_seq``. When the batch is held the
  stream's *frontier* becomes ``H``: the shard holds every record of that
  proxy (for this shard) stamped below it.
* A *gap* says the proxy's LOG may lack records: a ``gap`` batch (the LOG
  was trimmed before this shard held a range) or a GAP record in a batch
  (the proxy could not journal a record, dropped it under its quota, lost a
  torn tail, or relayed a call whose reply never came). A ``Gap`` spans the
  stamps ``[from, through]``: ``from`` is the stream's frontier where the gap
  lies (every record stamped below it is held: frontier claims only cover
  positions before the gap), ``through`` a stamp taken after every record it
  may hide was stamped. The frontier goes on moving (it proves what the LOG
  holds); the gap is remembered, never guessed away.
* A gap is *healed* by a baseline that began after its ``through`` and has
  ended on every shard (``healed_by``): a restore from that baseline needs no
  record stamped before it began. Cuts in ``[from, healed_by)`` stay
  unproven; from the baseline's end the stream is proven again.
* The *consistent point* is the minimum frontier over every shard and every
  stream any shard has seen, lowered to the ``from`` of the earliest gap no
  baseline has healed (``limit_by_gaps``). A shard that has not seen a
  stream another shard knows contributes ``Stamp.ZERO`` for it: it proves
  nothing. The proxies a deployment expects (*members*, by node id) count
  even before any shard has seen a stream of theirs: such a member holds the
  point at ``Stamp.ZERO`` (a proxy that has not got through, or a wiped
  shard). A retired stream (``nfsj retire``: an old LOG that will never send
  again, held in full) no longer counts. A restore at ``T`` below the point
  is proven only from a baseline that began after every gap with
  ``from <= T`` (``restore_baseline``).

Invariant (tested in tests/property/test_consistent_cut.py): for stamps
a < b, a cut at or below the consistent point that contains b contains a.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from logstore.stamp import Stamp

__all__ = ["StreamKey", "StreamState", "Gap", "GapMarker", "BatchRefused", "apply",
           "shard_frontier", "consistent_point", "healed_by", "limit_by_gaps", "restore_baseline",
           "stream_gaps"]


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class StreamKey:
    """A proxy LOG: the proxy's HLC node id and the LOG's identity."""

    node_id: int
    log_id: str

    def __str__(self) -> str:
        return f"{self.node_id}/{self.log_id}"


@dataclasses.dataclass(frozen=True, slots=True)
class Gap:
    """Records stamped in ``[from_stamp, through]`` may be missing from a stream."""

    after_seq: int                 # the LOG range it was learned in
    through_seq: int
    from_stamp: Stamp
    through: Stamp
    cause: str                     # trimmed, log_write_failed, quota_drop, torn_tail, no_reply
    reason: str

    def __str__(self) -> str:
        return f"{self.after_seq}..{self.through_seq}: {self.reason}"


@dataclasses.dataclass(frozen=True, slots=True)
class GapMarker:
    """A GAP record found in a batch: everything stamped at or below ``through``
    may be missing."""

    seq: int
    through: Stamp
    cause: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class StreamState:
    """How far a shard holds one stream. ``durable_seq`` is its position: the
    records through it are held, durable unless deferred writes still wait
    for their flush (``ShardStore.durable_seq`` says how far is durable)."""

    durable_seq: int = 0
    frontier: Stamp = Stamp.ZERO   # below it, every record the proxy's LOG holds is held here
    gaps: tuple[Gap, ...] = ()     # where the LOG itself may lack records, oldest first
    newest: Stamp = Stamp.ZERO     # the proxy's newest stamp as last reported (for lag)


class BatchRefused(Exception):
    """A batch does not continue the stream; the ack tells the shipper where to resume."""

    def __init__(self, state: StreamState, reason: str):
        super().__init__(reason)
        self.state = state


def apply(state: StreamState, after_seq: int, through_seq: int, stable: Stamp | None,
          *, gap: bool = False, newest: Stamp | None = None, sent: Stamp | None = None,
          markers: tuple[GapMarker, ...] = ()) -> StreamState:
    """The stream's state once the batch ``(after_seq, through_seq]`` is durable.

    Raises BatchRefused when the batch does not start at the durable position.
    A batch that starts below it and ends at or below it is a harmless
    duplicate and changes nothing (its records are idempotent puts). An empty
    batch at the durable position is a heartbeat: only its stable stamp counts.
    A ``gap`` batch (the range was trimmed) becomes a gap through ``sent``, its
    sent stamp (``Stamp.MAX`` if it has none: then no baseline heals it); each
    of ``markers`` (GAP records in the batch) becomes a gap through its stamp.
    Gaps start at the frontier before the batch: a stable claim only ever
    covers positions before what it claims for.
    """
    if through_seq < after_seq:
        raise BatchRefused(state, f"backwards range ({after_seq}, {through_seq}]")
    if after_seq != state.durable_seq and through_seq <= state.durable_seq:
        return state  # already held: a resend after a lost ack, or a stale heartbeat
    if after_seq != state.durable_seq:
        raise BatchRefused(state, f"batch starts after seq {after_seq}, shard holds through {state.durable_seq}")
    frontier, gaps = state.frontier, list(state.gaps)
    if gap:
        gaps.append(Gap(after_seq, through_seq, frontier, sent if sent is not None else Stamp.MAX,
                        "trimmed", "the proxy LOG no longer holds these records"))
    for marker in markers:
        gaps.append(Gap(marker.seq - 1, marker.seq, frontier, marker.through, marker.cause,
                        marker.reason))
    if not gap and stable is not None and stable > frontier:
        frontier = stable
    newest_seen = max(state.newest, newest) if newest is not None else state.newest
    return StreamState(through_seq, frontier, tuple(gaps), newest_seen)


def shard_frontier(streams: Iterable[StreamState]) -> Stamp | None:
    """The shard's frontier: the least over its streams (None: no stream yet)."""
    return min((s.frontier for s in streams), default=None)


def consistent_point(shards: Iterable[dict[StreamKey, StreamState]],
                     members: Iterable[int] = ()) -> Stamp:
    """The minimum frontier over all shards and every stream any shard knows;
    ``Stamp.ZERO`` while a member node id has no stream on any shard."""
    shards = list(shards)
    known = set().union(*(s.keys() for s in shards)) if shards else set()
    if not known or set(members) - {key.node_id for key in known}:
        return Stamp.ZERO
    return min(shard.get(key, StreamState()).frontier for shard in shards for key in known)


def healed_by(gap: Gap, baselines: Iterable[tuple[Stamp, Stamp]]) -> Stamp | None:
    """The end of the first baseline that began after ``gap`` (None: none yet).

    ``baselines`` are ``(begin, end)`` of baselines every shard holds the end of.
    """
    ends = [end for begin, end in baselines if begin > gap.through]
    return min(ends, default=None)


def limit_by_gaps(point: Stamp, gaps: Iterable[Gap],
                  baselines: Iterable[tuple[Stamp, Stamp]]) -> tuple[Stamp, Gap | None]:
    """``point`` lowered to the start of the earliest unhealed gap below it,
    and that gap (None if no gap holds it back)."""
    baselines = list(baselines)
    held: Gap | None = None
    for gap in gaps:
        if gap.from_stamp < point and healed_by(gap, baselines) is None:
            point, held = gap.from_stamp, gap
    return point, held


def restore_baseline(at: Stamp, gaps: Iterable[Gap],
                     baselines: Iterable[tuple[Stamp, Stamp]]) -> tuple[Stamp, Stamp] | None:
    """The newest baseline a proven restore at ``at`` may start from: ended at
    or before ``at`` and begun after every gap that starts at or below ``at``.
    None: no such baseline (a cut at ``at`` is unproven)."""
    floor = max((g.through for g in gaps if g.from_stamp <= at), default=None)
    usable = [(b, e) for b, e in baselines if e <= at and (floor is None or b > floor)]
    return max(usable, key=lambda be: be[1], default=None)


def stream_gaps(pb) -> tuple[Gap, ...]:
    """The gaps of a StreamStatus message (duck-typed: this module stays free of
    protobuf). Gaps stored before they had stamps (text only) are taken as the
    old rule had them: from ZERO, never healed."""
    if pb.gap_ranges:
        return tuple(Gap(g.after_seq, g.through_seq, _stamp_or_zero(getattr(g, "from")),
                         _stamp_or_zero(g.through), g.cause, g.reason) for g in pb.gap_ranges)
    out = []
    for text in pb.gaps:
        seqs, _, reason = text.partition(": ")
        after, _, through = seqs.partition("..")
        try:
            out.append(Gap(int(after), int(through), Stamp.ZERO, Stamp.MAX, "trimmed", reason))
        except ValueError:
            out.append(Gap(0, 0, Stamp.ZERO, Stamp.MAX, "unknown", text))
    return tuple(out)


def _stamp_or_zero(raw: bytes) -> Stamp:
    return Stamp.from_bytes(raw) if raw else Stamp.ZERO
