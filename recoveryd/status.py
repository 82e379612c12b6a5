"""What the shards (and a proxy) can prove right now: the library behind `nfsj status`.

Two sources, either may be missing:

* the shards, asked over gRPC (``Journal.Status``, proto/journal.proto):
  ``fetch_status`` asks all of them at once and reports a shard that does not
  answer as *down*, with the error, instead of failing;
* a proxy's ``status.json``, which the proxy rewrites in its LOG directory
  every second (``write_proxy_status``; read with ``read_proxy_status``). It
  says how far the proxy's shippers got, so ``nfsj status`` can show lag
  growing even while every shard is down.

``consistent_point_of`` computes the consistent point from them, as a value
(stamp, held back by which shard and stream, and why): the one place it is
computed, which restores and exports take as it is. ``overall`` renders it,
with everything else, into one plain dict (the ``--json`` output). The point
is ``recoveryd.frontier.consistent_point`` over the streams of every shard.
It is only known when every shard answered: a shard that is down may be the
one holding it back, so then it is ``None`` and the reason
says which shard. It is never guessed. A gap no baseline has healed lowers
it to the gap's start (``frontier.limit_by_gaps``, over the baselines every
shard holds the END of), and ``gaps`` lists every gap. When a proxy status is given, that
proxy's stream counts even if no shard has heard of it yet (it then proves
nothing), since ``consistent_point`` only sees the streams some shard knows.

Proxy status file (``<LOG dir>/status.json``), keys::

    node_id, log_id             the proxy's stream (HLC node id, LOG identity)
    data_plane                  the relay serving clients: native or python
    last_seq, synced_seq        the LOG's last and last fsynced sequence
    newest                      the newest stamp the proxy handed out (stamp text)
    shards: [ {address, connected, acked_seq, frontier, lag_records,
               lag_seconds, gaps_total}, ... ]   one per shipper, in --shard order
    gaps_total, gaps, unmarked_gaps   records that may be missing, by cause; the
                                      newest GAP records' text; 1 while a gap
                                      waits for its GAP record

``write_proxy_status`` adds ``written_unix_ns``; ``read_proxy_status`` adds
``age_seconds`` (how long ago the file was written: a dead proxy's file
stops aging well).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, NamedTuple

import grpc

from logstore.pb import journal_pb2_grpc
from logstore.pb.journal_pb2 import ShardStatus, ShardStatusRequest, StreamStatus
from logstore.stamp import Stamp

from .frontier import (Gap, StreamKey, StreamState, consistent_point, healed_by, limit_by_gaps,
                       stream_gaps)
from .security import BearerToken, open_channel

__all__ = ["ShardReport", "ProxyStatusError", "PROXY_STATUS_FILE", "DEFAULT_TIMEOUT_S",
           "fetch_status", "overall", "write_proxy_status", "read_proxy_status", "stamp_view",
           "report_gaps", "complete_baselines", "ConsistentPoint", "HeldBackBy",
           "consistent_point_of", "shard_frontier_of"]

PROXY_STATUS_FILE = "status.json"
DEFAULT_TIMEOUT_S = 3.0


class ProxyStatusError(Exception):
    """A proxy status file is missing or unreadable; the message says which and why."""


@dataclasses.dataclass(frozen=True, slots=True)
class ShardReport:
    """One shard's answer to ``Journal.Status``, or why there is none."""

    address: str
    status: ShardStatus | None   # None: the shard is down (see error)
    error: str = ""

    @property
    def up(self) -> bool:
        return self.status is not None


# -- asking the shards ----------------------------------------------------------


def fetch_status(addresses: list[str], timeout_s: float = DEFAULT_TIMEOUT_S, *,
                 credentials: grpc.ChannelCredentials | None = None,
                 token: BearerToken | None = None) -> list[ShardReport]:
    """Ask every shard for its ``ShardStatus``, all at once, each within ``timeout_s``.

    ``credentials``: TLS/mTLS channel credentials (recoveryd/security.py;
    None: plaintext). ``token``: a bearer token (restore or ingest); a shard
    that wants credentials shows its streams only with one.

    Returns one report per address, in order. A shard that cannot be reached,
    times out or fails the call is reported down with the gRPC status; this
    never raises for a shard's sake.
    """
    channels: list[grpc.Channel] = []
    pending: list[tuple[str, Any, str]] = []
    try:
        for address in addresses:
            try:
                channel = open_channel(address, credentials=credentials, token=token)
            except Exception as e:  # noqa: BLE001  a target grpc cannot even parse
                pending.append((address, None, f"cannot connect to {address!r}: {e}"))
                continue
            channels.append(channel)
            stub = journal_pb2_grpc.JournalStub(channel)
            pending.append((address, stub.Status.future(ShardStatusRequest(), timeout=timeout_s), ""))
        reports = []
        for address, future, error in pending:
            if future is None:
                reports.append(ShardReport(address, None, error))
                continue
            try:
                reports.append(ShardReport(address, future.result()))
            except grpc.RpcError as e:
                reports.append(ShardReport(address, None, _rpc_error(e, timeout_s)))
        return reports
    finally:
        for channel in channels:
            channel.close()


def _rpc_error(e: grpc.RpcError, timeout_s: float) -> str:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"DEADLINE_EXCEEDED: no answer within {timeout_s:g} s"
    name = code.name if code is not None else "ERROR"
    return f"{name}: {details}" if details else name


# -- the overall view -------------------------------------------------------------


def stamp_view(stamp: Stamp | None) -> dict[str, str | None] | None:
    """A stamp as ``{"stamp": <text>, "time": <ISO-8601>}``; None stays None.

    ``Stamp.ZERO`` ("nothing proven") has no time.
    """
    if stamp is None:
        return None
    return {"stamp": str(stamp), "time": stamp.iso() if stamp != Stamp.ZERO else None}


def _stamp(raw: bytes) -> Stamp:
    return Stamp.from_bytes(raw) if raw else Stamp.ZERO


def _state(pb: StreamStatus) -> StreamState:
    return StreamState(durable_seq=pb.durable_seq, frontier=_stamp(pb.frontier),
                       gaps=stream_gaps(pb), newest=_stamp(pb.newest))


def report_gaps(reports: list[ShardReport]) -> list[tuple[ShardReport, StreamKey, Gap]]:
    """Every gap every answering shard holds, with where it was found."""
    out = []
    for report in reports:
        if report.status is None:
            continue
        for pb in report.status.streams:
            key = StreamKey(pb.stream.node_id, pb.stream.log_id)
            out.extend((report, key, gap) for gap in stream_gaps(pb))
    return out


def complete_baselines(reports: list[ShardReport]) -> list[tuple[Stamp, Stamp]]:
    """``(begin, end)`` of the baselines every shard holds the END of, oldest first."""
    held = [{(b.baseline_id, b.end) for b in r.status.baselines if b.end}
            for r in reports if r.status is not None]
    if not held or len(held) < len(reports):
        return []
    common = set.intersection(*held)
    return sorted((_stamp(begin), _stamp(end)) for begin, end in common)


def _lag_seconds(state: StreamState) -> float | None:
    """How far the frontier trails the newest stamp the proxy reported (None: no frontier yet)."""
    if state.frontier == Stamp.ZERO:
        return None
    if state.newest == Stamp.ZERO:
        return 0.0
    return max(0.0, (state.newest.wall_ns - state.frontier.wall_ns) / 1e9)


def _age_seconds(stamp: Stamp, now_ns: int) -> float | None:
    if stamp == Stamp.ZERO:
        return None
    return max(0.0, (now_ns - stamp.wall_ns) / 1e9)


def _max_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _shard_view(report: ShardReport, now_ns: int) -> dict[str, Any]:
    if report.status is None:
        return {"address": report.address, "up": False, "error": report.error,
                "shard_id": None, "data_id": None, "frontier": None,
                "frontier_age_seconds": None, "records": None, "bytes": None,
                "lag_seconds": None, "gaps": [], "streams": []}
    status = report.status
    streams = []
    for pb in status.streams:
        key = StreamKey(pb.stream.node_id, pb.stream.log_id)
        state = _state(pb)
        streams.append({
            "stream": str(key), "node_id": key.node_id, "log_id": key.log_id,
            "durable_seq": state.durable_seq,
            "frontier": stamp_view(state.frontier), "newest": stamp_view(state.newest),
            "lag_seconds": _lag_seconds(state),
            "gaps": [str(g) for g in state.gaps], "records": pb.records,
            "updated_unix_ns": pb.updated_unix_ns,
        })
    frontier = shard_frontier_of(report)
    lags = [s["lag_seconds"] for s in streams]
    return {
        "address": report.address, "up": True, "error": "",
        "shard_id": status.shard_id, "data_id": status.data_id,
        "frontier": stamp_view(frontier),
        "frontier_age_seconds": _age_seconds(frontier, now_ns) if frontier is not None else None,
        "records": status.records, "bytes": status.bytes,
        # A stream with no frontier yet trails without bound: then the lag is unknown.
        "lag_seconds": None if any(lag is None for lag in lags) else _max_or_none(lags),
        "gaps": [f"{s['stream']} {g}" for s in streams for g in s["gaps"]],
        "streams": streams,
    }


def _proxy_stream(proxy_status: dict[str, Any] | None) -> StreamKey | None:
    if not proxy_status:
        return None
    try:
        return StreamKey(int(proxy_status["node_id"]), str(proxy_status["log_id"]))
    except (KeyError, TypeError, ValueError):
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class HeldBackBy:
    """Where the consistent point is held back: a shard and one of its streams
    (``stream`` None when the shard hides its streams from the caller)."""

    address: str
    shard_id: int
    stream: StreamKey | None
    known: bool = True          # the shard holds the stream at all
    gap: Gap | None = None      # an unhealed gap in that stream holds it back


class ConsistentPoint(NamedTuple):
    """The consistent point as a value: the least frontier over every shard and
    stream, lowered to the start of any unhealed gap. ``stamp`` is None while
    nothing is proven (a shard down, no streams, a member not registered);
    ``held_back_by`` says which (shard, stream) holds it where it is, and
    ``reason`` says why in words, for people."""

    stamp: Stamp | None
    held_back_by: HeldBackBy | None
    reason: str


def consistent_point_of(reports: list[ShardReport],
                        proxy_status: dict[str, Any] | None = None) -> ConsistentPoint:
    """The consistent point over ``reports`` (every shard's ``ShardStatus``; a
    down shard makes it unknown), counting the stream of ``proxy_status`` (a
    proxy's status file) even if no shard has heard of it yet. The one place
    it is computed: ``nfsj status`` renders it, restores and exports take it."""
    down = [r for r in reports if not r.up]
    if not reports:
        return ConsistentPoint(None, None, "no shard was asked: pass --shard (or --log of a proxy "
                                           "that ships to shards)")
    if down:
        names = ", ".join(r.address for r in down)
        return ConsistentPoint(None, None, f"unknown: {len(down)} of {len(reports)} shard(s) down "
                               f"({names}), and a shard that does not answer may be the one "
                               "holding it back")
    if any(r.status.streams_hidden for r in reports):
        # Without stream keys neither the streams nor their gaps can be
        # compared, so no point can be proven; the least shard frontier is
        # only an upper bound (a gap may hold the point below it).
        lowest = min(reports, key=lambda r: _stamp(r.status.frontier) if r.status.frontier else Stamp.ZERO)
        bound = _stamp(lowest.status.frontier) if lowest.status.frontier else Stamp.ZERO
        return ConsistentPoint(None, HeldBackBy(lowest.address, lowest.status.shard_id, None), (
            f"unknown: stream keys and gaps are hidden from callers without credentials "
            f"(pass --token-file); it is at most {bound}, the frontier of shard "
            f"{lowest.status.shard_id} ({lowest.address})"))
    held: list[dict[StreamKey, StreamState]] = [
        {StreamKey(pb.stream.node_id, pb.stream.log_id): _state(pb) for pb in r.status.streams}
        for r in reports]
    members = set().union(*held)
    proxy_key = _proxy_stream(proxy_status)
    if proxy_key is not None:
        members.add(proxy_key)
    expected = set().union(*(r.status.members for r in reports))
    absent = sorted(expected - {key.node_id for key in members})
    if absent:
        return ConsistentPoint(None, None, f"nothing is proven yet: member node {absent[0]} has "
                               "no stream on any shard (its proxy has not registered)")
    if not members:
        return ConsistentPoint(None, None, "nothing is proven yet: no shard holds any stream")
    # A roster that knows every member at MAX: a shard lacking a
    # member (the proxy's, say) then counts ZERO for it.
    roster = {key: StreamState(frontier=Stamp.MAX) for key in members}
    point = consistent_point([*held, roster])
    held_back_by = None
    for report, streams in zip(reports, held):
        for key in sorted(members):
            state = streams.get(key)
            frontier = state.frontier if state is not None else Stamp.ZERO
            if frontier == point and held_back_by is None:
                held_back_by = HeldBackBy(report.address, report.status.shard_id, key, state is not None)
    found = report_gaps(reports)
    limited, gap = limit_by_gaps(point, [g for _, _, g in found], complete_baselines(reports))
    if gap is not None:
        where, key = next((r, k) for r, k, g in found if g is gap)
        point = limited
        held_back_by = HeldBackBy(where.address, where.status.shard_id, key, True, gap)
    reason = _held_back_reason(point, held_back_by)
    return ConsistentPoint(point if point != Stamp.ZERO else None, held_back_by, reason)


def _held_back_view(by: HeldBackBy | None) -> dict[str, Any] | None:
    if by is None:
        return None
    return {"address": by.address, "shard_id": by.shard_id,
            "stream": str(by.stream) if by.stream is not None else None, "known": by.known,
            "gap": _gap_view(by.stream, by.gap, None) if by.gap is not None else None}


def shard_frontier_of(report: ShardReport) -> Stamp | None:
    """A shard's frontier as it reports it (None: down, or no stream yet)."""
    if report.status is None:
        return None
    if report.status.frontier:
        return _stamp(report.status.frontier)
    return min((_state(pb).frontier for pb in report.status.streams), default=None)


def overall(reports: list[ShardReport], proxy_status: dict[str, Any] | None = None, *,
            now_ns: int | None = None) -> dict[str, Any]:
    """Everything ``nfsj status`` shows, as a JSON-ready dict.

    Keys: ``consistent_point`` (``{"stamp", "time"}`` or None),
    ``consistent_point_reason`` (why it is None, or what holds it back),
    ``held_back_by`` (the shard and stream whose frontier it is, or None;
    ``gap`` says when a gap holds it back), ``gaps`` (every gap: stream,
    shards, LOG range, ``from``/``through`` stamps, cause, reason and
    ``healed_by``, the end of the baseline that made later cuts provable
    again, or None),
    ``shards`` (per shard: address, up, error, shard_id, data_id, frontier,
    frontier_age_seconds, records, bytes, lag_seconds, gaps, streams),
    ``shards_up``, ``shards_down``, ``warnings`` and ``proxy`` (the proxy
    status as given, or None). ``now_ns`` (default: the wall clock) is only
    used for ages.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    shards = [_shard_view(r, now_ns) for r in reports]
    down = [r for r in reports if not r.up]
    warnings = _warnings(reports)

    point = consistent_point_of(reports, proxy_status)
    return {
        "consistent_point": stamp_view(point.stamp),
        "consistent_point_reason": point.reason,
        "held_back_by": _held_back_view(point.held_back_by),
        "gaps": _gaps_view(reports),
        "shards": shards,
        "shards_up": len(reports) - len(down),
        "shards_down": len(down),
        "warnings": warnings,
        "proxy": proxy_status,
    }


def _held_back_reason(point: Stamp, by: HeldBackBy | None) -> str:
    if by is None:
        return ""
    where = f"stream {by.stream} on shard {by.shard_id} ({by.address})"
    if not by.known:
        return f"nothing is proven yet: {where} has not received anything"
    if by.gap is not None:
        gap = by.gap
        return (f"held back by a gap in {where}: {gap.reason} ({gap.cause}, LOG seqs "
                f"{gap.after_seq}..{gap.through_seq}); records stamped from {gap.from_stamp} "
                f"through {gap.through} may be missing; a baseline started after "
                f"{gap.through} makes later moments provable again (`nfsj baseline`)")
    if point == Stamp.ZERO:
        return f"nothing is proven yet: {where} has no frontier"
    return f"held back by {where}"


def _gap_view(key: StreamKey, gap: Gap, healed: Stamp | None) -> dict[str, Any]:
    return {"stream": str(key), "after_seq": gap.after_seq, "through_seq": gap.through_seq,
            "from": stamp_view(gap.from_stamp), "through": stamp_view(gap.through),
            "cause": gap.cause, "reason": gap.reason, "healed_by": stamp_view(healed)}


def _gaps_view(reports: list[ShardReport]) -> list[dict[str, Any]]:
    """Every gap once (a GAP marker reaches every shard), with the shards that hold it."""
    baselines = complete_baselines(reports)
    views: dict[tuple, dict[str, Any]] = {}
    for report, key, gap in report_gaps(reports):
        ident = (str(key), gap.after_seq, gap.through_seq, gap.cause, gap.through)
        view = views.get(ident)
        if view is None:
            view = views[ident] = _gap_view(key, gap, healed_by(gap, baselines))
            view["shards"] = []
        elif gap.from_stamp < Stamp.parse(view["from"]["stamp"]):
            view["from"] = stamp_view(gap.from_stamp)
        view["shards"].append(report.status.shard_id)
    return list(views.values())


def _warnings(reports: list[ShardReport]) -> list[str]:
    out = []
    by_id: dict[int, list[str]] = {}
    by_data: dict[str, list[str]] = {}
    for r in reports:
        if r.status is not None:
            by_id.setdefault(r.status.shard_id, []).append(r.address)
            if r.status.data_id:
                by_data.setdefault(r.status.data_id, []).append(r.address)
    for data_id, addresses in by_data.items():
        if len(addresses) > 1:
            out.append(f"{', '.join(addresses)} are the same shard (data id {data_id})")
    for shard_id, addresses in by_id.items():
        if len(addresses) > 1 and len({r.status.data_id for r in reports
                                        if r.address in addresses and r.status}) > 1:
            out.append(f"{', '.join(addresses)} all claim shard id {shard_id}")
    return out


# -- the proxy's status file ---------------------------------------------------------


def write_proxy_status(path: str | os.PathLike[str], status: dict[str, Any]) -> None:
    """Replace ``path`` with ``status`` as JSON, atomically (temp file + rename).

    Stamps may be given as ``Stamp`` (written as text). Not fsynced: the file
    is rewritten every second and only informs; after a power loss a reader
    may find it old or empty, and ``read_proxy_status`` says so.
    """
    path = os.fspath(path)
    body = dict(status)
    body.setdefault("written_unix_ns", time.time_ns())
    data = json.dumps(body, default=str, sort_keys=True, indent=1) + "\n"
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_proxy_status(log_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The status a proxy last wrote into its LOG directory, plus ``age_seconds``.

    Raises ``ProxyStatusError`` if there is no readable status file.
    """
    path = os.path.join(os.fspath(log_dir), PROXY_STATUS_FILE)
    try:
        with open(path, "rb") as f:
            raw = f.read()
            mtime_ns = os.fstat(f.fileno()).st_mtime_ns
    except FileNotFoundError:
        if not os.path.isdir(log_dir):
            raise ProxyStatusError(f"{log_dir} is not a directory") from None
        raise ProxyStatusError(f"no {PROXY_STATUS_FILE} in {log_dir}: is it a proxy's --log "
                               "directory, and has that proxy run?") from None
    except OSError as e:
        raise ProxyStatusError(f"cannot read {path}: {e.strerror}") from None
    try:
        status = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProxyStatusError(f"{path} is not valid JSON ({e}); the proxy rewrites it "
                               "every second") from None
    if not isinstance(status, dict):
        raise ProxyStatusError(f"{path} does not hold a JSON object")
    written_ns = status.get("written_unix_ns")
    if not isinstance(written_ns, int):
        written_ns = mtime_ns
    status["age_seconds"] = max(0.0, (time.time_ns() - written_ns) / 1e9)
    return status
