"""Frontiers and the consistent point: what a shard can prove it holds.

Sans-IO; the store persists `StreamState` atomically with the records it
describes, so after any crash the state and the records agree.

Definitions (README.md, "The guarantee"):

* A *stream* is one proxy LOG as seen by one shard. Its position is a LOG
  sequence number; batches cover ranges ``(after_seq, through_seq]`` and
  must chain exactly (`apply` refuses anything else), so a shard never
  holds a later part of a stream without every earlier part.
* A batch may carry a *stable* stamp ``H``: every record its proxy stamped
  below ``H`` lies at or below ``through_seq``. When the batch is durable the
  stream's *frontier* becomes ``H``: the shard holds every record of that
  proxy (for this shard) stamped below it.
* A *gap* batch says the proxy's LOG no longer holds a range. The position
  moves past it (shipping continues) but the frontier is pinned where the
  gap began, forever: never guess continuity. A new baseline is the only
  thing that can make later moments provable again.
* The *consistent point* is the minimum frontier over every shard and every
  stream any shard has seen. A shard that has not seen a stream another
  shard knows contributes ``Stamp.ZERO`` for it: it proves nothing. The
  proxies a deployment expects (*members*, by node id) count even before
  any shard has seen a stream of theirs: such a member holds the point at
  ``Stamp.ZERO`` (a proxy that has not got through, or a wiped shard).
  A retired stream (``nfsj retire``: an old LOG that will never send
  again, held in full) no longer counts.

Invariant (tested in tests/property/test_consistent_cut.py): for stamps
a < b, a cut at or below the consistent point that contains b contains a.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from logstore.stamp import Stamp

__all__ = ["StreamKey", "StreamState", "BatchRefused", "apply", "shard_frontier", "consistent_point"]


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class StreamKey:
    """A proxy LOG: the proxy's HLC node id and the LOG's identity."""

    node_id: int
    log_id: str

    def __str__(self) -> str:
        return f"{self.node_id}/{self.log_id}"


@dataclasses.dataclass(frozen=True, slots=True)
class StreamState:
    """How far a shard durably holds one stream."""

    durable_seq: int = 0
    frontier: Stamp = Stamp.ZERO
    pinned: bool = False           # a gap was reported: the frontier may never move again
    gaps: tuple[str, ...] = ()     # "after..through: reason", for status
    newest: Stamp = Stamp.ZERO     # the proxy's newest stamp as last reported (for lag)


class BatchRefused(Exception):
    """A batch does not continue the stream; the ack tells the shipper where to resume."""

    def __init__(self, state: StreamState, reason: str):
        super().__init__(reason)
        self.state = state


def apply(state: StreamState, after_seq: int, through_seq: int, stable: Stamp | None,
          *, gap: bool = False, newest: Stamp | None = None) -> StreamState:
    """The stream's state once the batch ``(after_seq, through_seq]`` is durable.

    Raises BatchRefused when the batch does not start at the durable position.
    A batch that starts below it and ends at or below it is a harmless
    duplicate and changes nothing (its records are idempotent puts). An empty
    batch at the durable position is a heartbeat: only its stable stamp counts.
    """
    if through_seq < after_seq:
        raise BatchRefused(state, f"backwards range ({after_seq}, {through_seq}]")
    if after_seq != state.durable_seq and through_seq <= state.durable_seq:
        return state  # already held: a resend after a lost ack, or a stale heartbeat
    if after_seq != state.durable_seq:
        raise BatchRefused(state, f"batch starts after seq {after_seq}, shard holds through {state.durable_seq}")
    frontier, pinned, gaps = state.frontier, state.pinned, state.gaps
    if gap:
        pinned = True
        gaps = gaps + (f"{after_seq}..{through_seq}: the proxy LOG no longer holds these records",)
    elif stable is not None and not pinned and stable > frontier:
        frontier = stable
    newest_seen = max(state.newest, newest) if newest is not None else state.newest
    return StreamState(through_seq, frontier, pinned, gaps, newest_seen)


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
