"""Hybrid logical clock (HLC): the source of every stamp in nfs-journal.

This docstring is the specification. The algorithm is the one in S. Kulkarni,
M. Demirbas, D. Madeppa, B. Avva, M. Leone, "Logical Physical Clocks and
Consistent Snapshots in Globally Distributed Databases" (OPODIS 2014; tech
report http://www.cse.buffalo.edu/tech-reports/2014-04.pdf). The shape of the
implementation (injected physical clock, ClockTimestamp capability, marked
refusal, jump counters, persisted upper bound) follows CockroachDB's
``pkg/util/hlc``.

A stamp is ``Stamp(wall_ns, logical, node_id)`` (``logstore.stamp``),
compared lexicographically. ``wall_ns`` is the paper's ``l`` (the largest
physical time this node has heard of), ``logical`` is the paper's ``c``, and
``node_id`` makes stamps from different nodes unique. ``pt`` below is a
reading of the node's physical clock (``time.time_ns`` in production).

Properties
----------
Causality
    If event e happens before event f (same node, or e's stamp reached f's
    node through a channel below that *updates* a clock), then
    ``stamp(e) < stamp(f)``. Within a node this is monotonicity; across nodes
    it is ``update(m)`` followed by ``now()``, which returns a stamp greater
    than ``m``. Events linked only outside the system (a client that gets a
    reply through proxy A and then calls proxy B) are ordered by physical
    time alone: correctly when the real time between them exceeds the offset
    between A's and B's clocks. See HAZARD.
Monotonicity, also across restarts
    ``now()`` is strictly increasing on a node, whatever its physical clock
    does. With ``persist_path`` this holds across process restarts too: before
    handing out a stamp with ``wall_ns >= B`` the clock durably writes a new
    bound ``B' = max(pt + persist_interval_ns, wall_ns + 1)`` (in steady
    state ``wall_ns == pt``), and a restarted clock starts at ``(B, 0)``.
    Every stamp handed out has ``wall_ns`` strictly below the bound on disk,
    so the first stamp after a restart is greater than every stamp before
    it, even if the physical clock was stepped back meanwhile. Writes come
    once per ``persist_interval_ns - offset_ns`` of physical time, so keep
    the interval well above ``max_offset_ns`` (the largest lead an update
    can cause); a restart costs one more write and adds at most 1 ns of
    lead, so crash loops do not ratchet the clock ahead.
l >= pt
    Every stamp's ``wall_ns`` is at least the physical reading taken for it:
    a call that arrives after 10:00 on a proxy's clock is never stamped
    before 10:00, so a restore "at 10:00" does not show it.
Bounded l - pt
    ``wall_ns`` only ever takes a value that was some clock's physical
    reading or a persisted bound (or 1 ns past one, see below). Let ``eps``
    be the most any reading exceeds a reading taken at the same moment or
    later, on any node: the largest skew between two clocks, widened by any
    backward step. Then ``0 <= wall_ns - pt <= eps``. Restarts add up to
    ``persist_interval_ns``, plus 1 ns per restart made before physical time
    reached the bound. A single ``update()`` never moves ``wall_ns`` more
    than ``max_offset_ns`` ahead of ``pt``; stamps beyond that are refused.
    The current lead is exported as ``offset_ns``. ``logical`` stays small
    (the paper bounds it by the number of events within such a lead); if it
    would pass 2**32 - 1 the wall advances by 1 ns instead, so stamps keep
    their 16-byte wire form.
Self-stabilization
    A stray stamp ahead of physical time (within ``max_offset_ns``) moves a
    clock at most that far; once physical time passes it, ``wall_ns == pt``
    again and ``logical`` restarts from 0, without coordination. Stamps
    further ahead are refused at every receiver, so they cannot spread from
    clock to clock.

Channels that carry stamps
--------------------------
Only a ``ClockStamp`` can update a clock. ``HLC.now()`` returns one; the
other sanctioned sources are ``ClockStamp.from_bytes`` / ``ClockStamp(...)``
at the decoding boundary of a channel marked "updates" below. Everything else
is a plain ``Stamp``, and ``HLC.update()`` raises ``TypeError`` for it.

1. Stamping an NFS call on arrival (nfsproxy relay; also baseline reads in
   ``nfsj baseline``). The proxy calls ``now()`` when a mutating call
   arrives, before forwarding it to the NAS. Local event: ticks the clock.
2. Records and shard acks (gRPC Journal stream, proxy <-> recoveryd). Records
   carry the ``ClockStamp`` from 1; a shard updates its clock from the
   highest stamp in each batch. Each ack carries the shard's ``now()``, and
   the proxy calls ``update()`` with it. This is how several proxies in front
   of one NAS form one consistency group: a proxy's clock catches up with
   every stamp that reached the shards it writes to. UPDATES a clock (both
   directions). A shard refuses a batch whose ``sent_stamp`` is beyond
   ``max_offset_ns``: it stores none of its records, counts the refusal
   (``clock_refusals_total``) and acks with an error at its old position, so
   the proxy rewinds and resends, and its frontier (hence the consistent
   point) stays where it was until its clock is back in range. A proxy that
   gets such an ack keeps its clock still and counts ``rejections_total``.
3. Heartbeats (same stream). They carry the proxy's *stable stamp*: a derived
   bound below every stamp still in flight, not a clock reading. They move a
   shard's frontier and never a clock: "improving" a stable stamp would let a
   frontier pass a slow call's record.
4. Query bounds: ``nfsj restore/export --at``, ``nfsj history`` ranges, the
   Restore API's request fields, and the cut, consistent point and frontiers
   a restore reports. Plain ``Stamp``; never update a clock. A user asking
   for ``--at 2099-01-01`` must not drag every clock (and, through the
   persisted bound, every future stamp) decades ahead.
5. The persisted bound (``persist_path``): a channel from a node's past to
   its future. Read once, at construction.

Jumps of the physical clock are counted, never corrected: a reading below the
previous one adds to ``backward_jumps_total`` (``max_backward_jump_ns`` keeps
the biggest); one more than ``forward_jump_threshold_ns`` above it adds to
``forward_jumps_total``. Idle time between readings looks like a forward jump,
so a daemon calls ``check_physical()`` from a timer every half threshold or
so. Intended metric names: ``nfsj_hlc_offset_seconds``,
``nfsj_hlc_rejections_total``, ``nfsj_hlc_backward_jumps_total``,
``nfsj_hlc_forward_jumps_total``, ``nfsj_hlc_max_backward_jump_seconds``.

HAZARD
------
The consistent cut promises that a restore never shows b without a when
``stamp(a) < stamp(b)``. That matches what users saw only where stamp order
matches causal order. Causality carried by the channels above always holds.
Causality that travels outside them (a client, or two clients talking to
each other, moving between proxies) is ordered by physical time only, and is
inverted when the two events are closer in real time than the skew between
the proxies' clocks. Within ``max_offset_ns`` that window is at most
``max_offset_ns`` wide and closes as acks spread the faster clock. Beyond it:

* A proxy whose clock runs more than ``max_offset_ns`` *ahead* has its stamps
  refused by the shards (``rejections_total`` rises there), so the other
  proxies do not follow it. Its records are stamped late: a write it relays
  at real time t carries t + d. A client that reads that write and then
  writes through another proxy gets a *smaller* stamp for the later write,
  and a restore between the two shows the effect without its cause.
* A proxy whose clock runs more than ``max_offset_ns`` *behind* refuses every
  ack (its ``rejections_total`` rises) and so never catches up; its records
  sort before writes they followed. Same breakage, mirrored.
* A receiver that skipped the check (or a too large ``max_offset_ns``) lets
  one bad clock drag every clock ahead. Monotonicity then makes it permanent
  until physical time catches up: the persisted bound keeps the lead across
  restarts, stamps stop meaning wall time, and ``--at <ISO time>`` restores
  pick the wrong records. Undoing it means deleting the bound file, which
  knowingly gives up monotonicity.
* A node whose own clock steps back by more than ``max_offset_ns`` keeps its
  stamps monotonic (``wall_ns`` stalls, ``logical`` counts), but for that
  long its stamps run ahead of its physical time by more than peers accept,
  and they are refused. The same happens, in small, after every restart: a
  restarted clock starts at the persisted bound, up to
  ``persist_interval_ns`` ahead, so peers refuse its stamps for up to
  ``persist_interval_ns - max_offset_ns`` (0.5 s with the defaults) unless
  it was down longer. That is the price of not waiting for physical time to
  pass the bound at startup, as CockroachDB does; a shorter interval would
  shrink it but make writes more frequent (see Monotonicity).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Final

from logstore.stamp import Stamp

__all__ = [
    "HLC", "ClockStamp", "UntrustworthyStampError",
    "DEFAULT_MAX_OFFSET_NS", "DEFAULT_PERSIST_INTERVAL_NS",
]

DEFAULT_MAX_OFFSET_NS: Final = 500_000_000
DEFAULT_PERSIST_INTERVAL_NS: Final = 1_000_000_000

_LOGICAL_MAX: Final = 0xFFFF_FFFF  # u32 in the 16-byte wire form
_NODE_ID_MAX: Final = 0xFFFF_FFFF


def _key(s: Stamp) -> tuple[int, int, int]:
    return (s.wall_ns, s.logical, s.node_id)


class ClockStamp(Stamp):
    """A stamp read from a clock: the only kind ``HLC.update()`` accepts.

    It is a ``Stamp`` in every other respect (same fields, bytes, text) and
    compares and hashes equal to the plain ``Stamp`` with the same fields, so
    it can go anywhere a ``Stamp`` goes. The type marks a capability, as
    CockroachDB's ``ClockTimestamp`` does: construct one directly or with
    ``from_bytes`` only when decoding a channel whose stamps are clock
    readings (see the module docstring). Text never makes one: ``parse`` is
    for query bounds and refuses.
    """

    __slots__ = ()

    # Stamp's generated comparisons may insist on an identical class; compare
    # by value so record stamps and plain bounds (frontiers, --at) mix. These
    # also serve ``Stamp < ClockStamp``: Python tries a subclass's reflected
    # method first.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, Stamp):
            return _key(self) == _key(other)
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        if isinstance(other, Stamp):
            return _key(self) != _key(other)
        return NotImplemented

    def __lt__(self, other: object) -> bool:
        if isinstance(other, Stamp):
            return _key(self) < _key(other)
        return NotImplemented

    def __le__(self, other: object) -> bool:
        if isinstance(other, Stamp):
            return _key(self) <= _key(other)
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        if isinstance(other, Stamp):
            return _key(self) > _key(other)
        return NotImplemented

    def __ge__(self, other: object) -> bool:
        if isinstance(other, Stamp):
            return _key(self) >= _key(other)
        return NotImplemented

    # Defining __eq__ would otherwise set __hash__ to None; equal values must
    # hash alike across the two classes.
    __hash__ = Stamp.__hash__

    def __repr__(self) -> str:
        return (f"ClockStamp(wall_ns={self.wall_ns}, logical={self.logical}, "
                f"node_id={self.node_id})")

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> ClockStamp:
        """Decode a peer's clock reading from its 16-byte wire form."""
        s = Stamp.from_bytes(data)
        return cls(s.wall_ns, s.logical, s.node_id)

    @classmethod
    def parse(cls, text: str) -> ClockStamp:  # type: ignore[override]
        """Refused: a stamp typed by a user is a query bound, never a clock
        reading. Use ``Stamp.parse``."""
        raise TypeError(
            f"ClockStamp.parse({text!r}): a stamp read from text is a query "
            "bound and must never move a clock; use Stamp.parse")

    def to_stamp(self) -> Stamp:
        """The same point as a plain ``Stamp``, without the capability."""
        return Stamp(self.wall_ns, self.logical, self.node_id)


class UntrustworthyStampError(Exception):
    """A remote stamp is more than ``max_offset_ns`` ahead of our physical
    clock; the clock was not moved.

    Attributes: ``remote`` (the refused stamp), ``physical_ns`` (our reading),
    ``offset_ns`` (``remote.wall_ns - physical_ns``), ``max_offset_ns``.
    """

    def __init__(self, remote: ClockStamp, physical_ns: int, offset_ns: int,
                 max_offset_ns: int) -> None:
        super().__init__(
            f"remote stamp {remote} is {offset_ns} ns ahead of the physical "
            f"clock ({physical_ns}); more than max_offset {max_offset_ns} ns "
            "is too far to be trustworthy")
        self.remote = remote
        self.physical_ns = physical_ns
        self.offset_ns = offset_ns
        self.max_offset_ns = max_offset_ns


class HLC:
    """A hybrid logical clock for one node. Thread-safe.

    ``physical_clock`` returns nanoseconds since the epoch (injected so tests
    can drive it). ``max_offset_ns`` is the largest lead of a remote stamp
    over our physical clock that ``update()`` accepts. With ``persist_path``
    the clock keeps a durable upper bound on every stamp it has handed out,
    ``persist_interval_ns`` ahead, and starts above it after a restart.
    ``forward_jump_threshold_ns`` (default ``max_offset_ns``) is the gap
    between two physical readings counted as a forward jump.

    Raises ``ValueError`` if the bound file exists but cannot be read as one.
    """

    def __init__(
        self,
        node_id: int,
        *,
        physical_clock: Callable[[], int] = time.time_ns,
        max_offset_ns: int = DEFAULT_MAX_OFFSET_NS,
        persist_path: str | os.PathLike[str] | None = None,
        persist_interval_ns: int = DEFAULT_PERSIST_INTERVAL_NS,
        forward_jump_threshold_ns: int | None = None,
    ) -> None:
        if not 0 <= node_id <= _NODE_ID_MAX:
            raise ValueError(f"node_id {node_id} does not fit in u32")
        if max_offset_ns <= 0:
            raise ValueError(f"max_offset_ns must be > 0, got {max_offset_ns}")
        if persist_interval_ns <= 0:
            raise ValueError(
                f"persist_interval_ns must be > 0, got {persist_interval_ns}")
        if forward_jump_threshold_ns is None:
            forward_jump_threshold_ns = max_offset_ns
        if forward_jump_threshold_ns <= 0:
            raise ValueError("forward_jump_threshold_ns must be > 0, "
                             f"got {forward_jump_threshold_ns}")

        self._node_id = node_id
        self._physical_clock = physical_clock
        self._max_offset_ns = max_offset_ns
        self._persist_path = os.fspath(persist_path) if persist_path is not None else None
        self._persist_interval_ns = persist_interval_ns
        self._forward_jump_threshold_ns = forward_jump_threshold_ns

        self._lock = threading.Lock()
        # The paper's (l, c). Not itself a handed-out stamp: now() ticks it first.
        self._wall_ns = 0
        self._logical = 0
        self._last_physical_ns: int | None = None
        self._offset_ns = 0

        self._rejections_total = 0
        self._backward_jumps_total = 0
        self._max_backward_jump_ns = 0
        self._forward_jumps_total = 0

        # Every stamp handed out has wall_ns < _persisted_bound_ns. 0 with no
        # file yet: the first now() then persists before handing anything out.
        self._persisted_bound_ns: int | None = None
        if self._persist_path is not None:
            bound = _read_bound(self._persist_path)
            self._persisted_bound_ns = 0 if bound is None else bound
            # Older stamps all had wall_ns < bound, so (bound, 0) is above
            # them and now() ticks from there, whatever pt says.
            self._wall_ns = self._persisted_bound_ns

    # -- the two HLC operations -------------------------------------------

    def now(self) -> ClockStamp:
        """Stamp a local or send event; strictly greater than every stamp this
        clock handed out before (and, with ``persist_path``, before a restart).

        Raises ``OSError`` if the upper bound must be persisted and cannot be;
        no stamp is handed out then.
        """
        with self._lock:
            pt = self._read_physical_locked()
            if self._wall_ns >= pt:
                wall_ns, logical = self._wall_ns, self._logical + 1
                if logical > _LOGICAL_MAX:
                    # Carry into the wall rather than outgrow the u32 wire
                    # field; costs 1 ns of lead over pt.
                    wall_ns, logical = wall_ns + 1, 0
            else:
                wall_ns, logical = pt, 0
            if self._persisted_bound_ns is not None and wall_ns >= self._persisted_bound_ns:
                # Durable before handed out, or a crash could let a restarted
                # clock repeat it. Under the lock, once per interval: callers
                # wait for one fsync a second instead of racing past the bound.
                # Measured from pt, not from wall_ns: right after a restart
                # wall_ns *is* the old bound, and wall_ns + interval would add
                # an interval of lead per restart (per crash of a crash loop,
                # and again each time a peer adopts such a stamp and restarts).
                self._persist_locked(max(pt + self._persist_interval_ns, wall_ns + 1))
            self._wall_ns, self._logical = wall_ns, logical
            self._offset_ns = wall_ns - pt
            return ClockStamp(wall_ns, logical, self._node_id)

    def update(self, remote: ClockStamp) -> None:
        """Receive rule: merge a peer's clock reading, so that the next
        ``now()`` is greater than ``remote``.

        Raises ``TypeError`` unless ``remote`` is a ``ClockStamp``, and
        ``UntrustworthyStampError`` (counted in ``rejections_total``, clock
        unchanged) if it is more than ``max_offset_ns`` ahead of our physical
        clock.
        """
        if not isinstance(remote, ClockStamp):
            raise TypeError(
                f"HLC.update() takes a ClockStamp, not {type(remote).__name__} "
                f"({remote!s}): only clock readings may move a clock, and a "
                "plain Stamp (a query bound, a stable stamp) never does")
        with self._lock:
            pt = self._read_physical_locked()
            offset_ns = remote.wall_ns - pt
            if offset_ns > self._max_offset_ns:
                self._rejections_total += 1
                raise UntrustworthyStampError(remote, pt, offset_ns, self._max_offset_ns)
            if (remote.wall_ns, remote.logical) > (self._wall_ns, self._logical):
                self._wall_ns, self._logical = remote.wall_ns, remote.logical
            # Also take pt, as the paper's receive rule does, so l >= pt holds
            # for the state too and offset_ns never goes negative.
            if pt > self._wall_ns:
                self._wall_ns, self._logical = pt, 0
            self._offset_ns = self._wall_ns - pt

    def check_physical(self) -> None:
        """Read the physical clock for jump detection and ``offset_ns`` only.

        Call from a timer (about every ``forward_jump_threshold_ns / 2``) so
        that an idle spell is not mistaken for a forward jump.
        """
        with self._lock:
            pt = self._read_physical_locked()
            self._offset_ns = max(0, self._wall_ns - pt)

    # -- observation -------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self._node_id

    @property
    def max_offset_ns(self) -> int:
        return self._max_offset_ns

    @property
    def offset_ns(self) -> int:
        """How far logical time ran ahead of physical time at the last
        reading: ``wall_ns - pt``, never negative."""
        return self._offset_ns

    @property
    def rejections_total(self) -> int:
        """Remote stamps refused by ``update()`` as too far ahead."""
        return self._rejections_total

    @property
    def backward_jumps_total(self) -> int:
        """Physical readings below the previous reading."""
        return self._backward_jumps_total

    @property
    def max_backward_jump_ns(self) -> int:
        """The biggest backward step seen between two physical readings."""
        return self._max_backward_jump_ns

    @property
    def forward_jumps_total(self) -> int:
        """Physical readings more than ``forward_jump_threshold_ns`` above the
        previous reading."""
        return self._forward_jumps_total

    @property
    def persisted_bound_ns(self) -> int | None:
        """The durable upper bound (exclusive) on handed-out ``wall_ns``;
        ``None`` without ``persist_path``, 0 before the first write."""
        return self._persisted_bound_ns

    # -- internals ---------------------------------------------------------

    def _read_physical_locked(self) -> int:
        # Read under the lock: readings from racing threads would otherwise
        # reach the jump check out of order and look like backward jumps.
        pt = self._physical_clock()
        last = self._last_physical_ns
        if last is not None:
            delta = pt - last
            if delta < 0:
                self._backward_jumps_total += 1
                self._max_backward_jump_ns = max(self._max_backward_jump_ns, -delta)
            elif delta > self._forward_jump_threshold_ns:
                self._forward_jumps_total += 1
        self._last_physical_ns = pt
        return pt

    def _persist_locked(self, bound_ns: int) -> None:
        assert self._persist_path is not None
        try:
            _write_bound(self._persist_path, bound_ns)
        except OSError as e:
            e.add_note(f"persisting HLC upper bound {bound_ns} to {self._persist_path}")
            raise
        self._persisted_bound_ns = bound_ns


def _read_bound(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        bound = int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        bound = -1
    if bound < 0:
        # Written only by rename after fsync, so it is never torn by a crash.
        # Guessing would risk repeating stamps; refuse and say why.
        raise ValueError(f"HLC upper bound file {path} is corrupt: {raw[:64]!r}")
    return bound


def _write_bound(path: str, bound_ns: int) -> None:
    # One writer per path, so a fixed temp name is enough, and a leftover from
    # a crash is simply overwritten.
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{bound_ns}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    # The rename itself must survive a crash too.
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
