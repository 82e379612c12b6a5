"""The cut and its proof: which moment a restore may deliver, from which baseline,
and the frontiers that prove every shard holds every record up to it.

A restore at ``T`` delivers every record stamped at or below ``T`` and none
above: the *cut* at ``T``. ``take_cut`` decides whether ``T`` can be
delivered, and proves it:

* a *complete* baseline must have ended at or before ``T``. Complete means
  every shard holds its ``BASELINE_END`` (the markers go to every shard;
  shipping is in LOG order, so a shard holding the END holds every earlier
  piece of it). The restore starts from the newest such baseline. Before the
  first one ended nothing can be restored: the journal alone holds only
  changes. Refused, naming the valid range.
* ``T`` must lie below the *consistent point*, the least frontier over every
  shard and stream (recoveryd/status.py, ``consistent_point_of``): only then
  does every shard provably hold every record stamped at or below ``T``.
  Refused, naming the valid range, unless the caller allows an *unproven*
  cut, which says so in every report.
* past a *gap* (records that may be missing: recoveryd/frontier.py), ``T``
  is proven only from a baseline that began after the gap and ended at or
  before ``T`` (``frontier.restore_baseline``); the restore starts from the
  newest such baseline. Otherwise it is refused the same way.

A ``Cut`` carries the frontiers that proved it; ``str(cut)`` prints the cut
and its proof in one line, which every restore shows its user at the end.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from logstore.pb.journal_pb2 import BaselineInfo, FileRequest, Op, Record
from logstore.stamp import Stamp, predecessor

from ..frontier import restore_baseline
from ..status import consistent_point_of, report_gaps, shard_frontier_of
from ..timespec import END_OF_NS, format_time
from .errors import RestoreRefused, ShardError
from .shards import Shards

__all__ = ["Cut", "take_cut", "complete_baselines", "cut_records"]

_BASELINE = int(Op.BASELINE)


def _iso(stamp: Stamp) -> str:
    return format_time(stamp)


def _last_proven(point: Stamp) -> Stamp:
    """The greatest whole-nanosecond bound below the consistent point: printed as
    the end of the valid range, so that pasting its ISO form back is accepted."""
    return Stamp(max(point.wall_ns - 1, 0), *END_OF_NS) if point.wall_ns else Stamp.ZERO


@dataclasses.dataclass(frozen=True, eq=False)
class Cut:
    """The point a restore delivers, and its proof.

    ``at``: every record stamped at or below it, none above. ``baseline``:
    the BaselineInfo restored from. ``consistent_point``: the least frontier
    when the cut was taken (None: unknown). ``frontiers``: each shard's
    frontier, by address. ``unproven``: ``at`` lies at or above the
    consistent point (allowed only on request).
    """

    at: Stamp
    baseline: BaselineInfo
    consistent_point: Stamp | None
    frontiers: dict[str, Stamp | None]
    unproven: bool = False

    @property
    def baseline_id(self) -> Stamp:
        return Stamp.from_bytes(self.baseline.baseline_id)

    @property
    def baseline_end(self) -> Stamp:
        return Stamp.from_bytes(self.baseline.end)

    @property
    def key(self) -> tuple[bytes, bytes]:
        """What identifies the cut's content (for caches)."""
        return (self.at.to_bytes(), self.baseline.baseline_id)

    def window(self) -> tuple[bytes, bytes]:
        """(after, until) of the Restore requests: stamps in [baseline_id, at]."""
        lo = predecessor(self.baseline_id)
        return (lo.to_bytes() if lo is not None else b"", self.at.to_bytes())

    def describe(self) -> dict[str, Any]:
        """The cut as a JSON-ready dict."""
        cp = self.consistent_point
        return {
            "at": {"stamp": str(self.at), "time": _iso(self.at)},
            "baseline": {"id": str(self.baseline_id), "end": str(self.baseline_end),
                         "end_time": _iso(self.baseline_end), "files": self.baseline.files,
                         "bytes": self.baseline.bytes},
            "consistent_point": {"stamp": str(cp), "time": _iso(cp)} if cp else None,
            "frontiers": {a: (str(f) if f is not None else None) for a, f in self.frontiers.items()},
            "unproven": self.unproven,
        }

    def __str__(self) -> str:
        cp = self.consistent_point
        point = f"{cp} ({_iso(cp)})" if cp else "unknown"
        proof = ("UNPROVEN: at or after the consistent point, records may be missing"
                 if self.unproven else "proven: below the consistent point")
        frontiers = ", ".join(f"{a}={f if f is not None else '-'}" for a, f in self.frontiers.items())
        return (f"cut {self.at} ({_iso(self.at)}); baseline {self.baseline_id} ended "
                f"{self.baseline_end} ({_iso(self.baseline_end)}); consistent point {point}; "
                f"{proof}; frontiers {frontiers}")


def take_cut(shards: Shards, at: Stamp, allow_unproven: bool = False) -> Cut:
    """The cut at ``at``, or RestoreRefused naming the valid range (ShardError: a shard is down)."""
    reports = shards.status()
    down = [r for r in reports if not r.up]
    if down:
        raise ShardError(down[0].error if len(down) == 1 else
                         f"{len(down)} shards do not answer: " + "; ".join(r.error for r in down))
    consistent = consistent_point_of(reports)
    point = consistent.stamp
    frontiers = {r.address: shard_frontier_of(r) for r in reports}

    complete = complete_baselines(shards)
    if not complete:
        raise RestoreRefused(_no_baseline_reason(shards))
    earliest = Stamp.from_bytes(complete[0].end)
    if point is not None and point > earliest:
        valid = (f"valid range: {_iso(earliest)} .. {_iso(_last_proven(point))} "
                 f"(stamps {earliest} .. {predecessor(point)})")
    elif point is not None:
        valid = (f"nothing is restorable yet: the consistent point {point} ({_iso(point)}) has "
                 f"not passed the end of the first baseline {earliest} ({_iso(earliest)})")
    else:
        valid = (f"the earliest restorable moment is {_iso(earliest)} ({earliest}); nothing is "
                 f"proven yet ({consistent.reason})")
    if at < earliest:
        raise RestoreRefused(f"{_iso(at)} ({at}) is before the earliest restorable moment "
                             f"(the end of the first complete baseline); {valid}")
    unproven = point is None or at >= point
    if unproven and not allow_unproven:
        where = (f"at or after the consistent point {point} ({_iso(point)})" if point is not None
                 else "beyond anything proven")
        raise RestoreRefused(f"{_iso(at)} ({at}) is {where}: not every shard provably holds "
                             f"every record up to it; {valid}; --allow-unproven restores it anyway")
    gaps = [g for _, _, g in report_gaps(reports)]
    by_begin = {Stamp.from_bytes(b.baseline_id): b for b in complete}
    proven = restore_baseline(at, gaps, [(begin, Stamp.from_bytes(b.end))
                                         for begin, b in by_begin.items()])
    if proven is None:
        gap = max((g for g in gaps if g.from_stamp <= at), key=lambda g: g.through)
        if not allow_unproven:
            raise RestoreRefused(
                f"{_iso(at)} ({at}) lies past a gap: {gap.reason} ({gap.cause}); records stamped "
                f"from {gap.from_stamp} through {gap.through} may be missing, and no baseline "
                f"that began after {gap.through} ended by then; take a baseline (`nfsj "
                f"baseline`) and restore after its end; --allow-unproven restores it anyway")
        unproven = True
        baseline = [b for b in complete if Stamp.from_bytes(b.end) <= at][-1]
    else:
        baseline = by_begin[proven[0]]
    return Cut(at, baseline, point, frontiers, unproven)


def complete_baselines(shards: Shards) -> list[BaselineInfo]:
    """Baselines every shard holds the END of, oldest first."""
    per_shard = shards.baselines()
    ends: list[dict[bytes, BaselineInfo]] = [{b.baseline_id: b for b in lst if b.end}
                                             for lst in per_shard]
    common = set(ends[0]).intersection(*ends[1:])
    # Every shard stores the same END record; files/bytes are the same everywhere.
    return sorted((ends[0][i] for i in common), key=lambda b: b.end)


def _no_baseline_reason(shards: Shards) -> str:
    per_shard = shards.baselines()
    started = {b.baseline_id for lst in per_shard for b in lst}
    if not started:
        return ("there is no baseline yet, so nothing can be restored: run `nfsj baseline` "
                "(the earliest restorable moment is the end of the first baseline)")
    newest = max(started)
    missing = [shards.name(k) for k, lst in enumerate(per_shard)
               if not any(b.baseline_id == newest and b.end for b in lst)]
    return (f"no baseline is complete yet (baseline {Stamp.from_bytes(newest)} has not reached "
            f"{', '.join(missing)}): wait for it to finish and ship, or run `nfsj baseline`")


def cut_records(shards: Shards, cut: Cut, fh: bytes, *, with_data: bool = True,
                until: Stamp | None = None) -> Iterator[Record]:
    """Every record naming ``fh`` with a stamp in [baseline_id, at] (or up to
    ``until``, below ``at``), in stamp order, from every shard (pieces of
    other baselines left out)."""
    after, until = cut.window() if until is None else (cut.window()[0], until.to_bytes())
    baseline_id = cut.baseline.baseline_id
    for record in shards.file_records(FileRequest(fh=fh, after=after, until=until,
                                                  with_data=with_data)):
        if record.op == _BASELINE and record.baseline_id != baseline_id:
            continue
        yield record
