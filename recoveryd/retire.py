"""Retiring a stream: the library behind `nfsj retire`.

A stream is one proxy LOG as seen by the shards. A LOG that will never send
again (a proxy moved to a new LOG, or was decommissioned) still holds the
consistent point at its last frontier, because the shards cannot tell a
silent LOG from a slow one. Retiring it says "this LOG has ended at seq N".
Nothing is lost by that only when every shard holds the stream through N
with no gap, so ``retire`` first asks every shard (``Journal.Status``) and
refuses unless each one does; then each shard checks again as it retires
(``Journal.Retire``, ``ShardStore.retire``). Records stay; the stream only
stops counting in the frontier, and may not ship again.
"""

from __future__ import annotations

import dataclasses
import os

import grpc

from logstore.pb import journal_pb2_grpc
from logstore.pb.journal_pb2 import RetireRequest

from .frontier import StreamKey
from .security import BearerToken, open_channel
from .status import DEFAULT_TIMEOUT_S, ProxyStatusError, fetch_status, read_proxy_status
from .store import stream_id

__all__ = ["RetireError", "RetireOutcome", "parse_stream", "log_end", "retire"]

#: A running (or crashed) proxy's mark in its LOG directory (nfsproxy/daemon/proxyd.py).
RUNNING_MARK = "RUNNING"


class RetireError(Exception):
    """The stream cannot be retired; the message says which shard and why."""


@dataclasses.dataclass(frozen=True, slots=True)
class RetireOutcome:
    address: str
    shard_id: int
    held_seq: int       # the stream's durable seq on that shard
    records: int        # records of the stream it holds


def parse_stream(text: str) -> StreamKey:
    """``NODE_ID/LOG_ID`` (as ``nfsj status`` prints streams) -> StreamKey."""
    node, sep, log_id = text.partition("/")
    if not sep or not node.isdigit() or not log_id or int(node) > 0xFFFF_FFFF:
        raise RetireError(f"{text!r} is not a stream: write NODE_ID/LOG_ID, as `nfsj status` shows it")
    return StreamKey(int(node), log_id)


def log_end(log_dir: str) -> tuple[StreamKey, int]:
    """The stream of a stopped proxy's LOG directory and its last seq.

    Opens the LOG (which fails while a proxy still has it open: a LOG in use
    has not ended)."""
    from logstore.log import Log, LogError  # only this command reads a LOG

    if not os.path.isdir(log_dir):
        raise RetireError(f"{log_dir} is not a directory")
    if os.path.exists(os.path.join(log_dir, RUNNING_MARK)):
        # Its next start marks the unclean stop's gap and rebuilds the records
        # of write-ahead intents the crash left alone; retired first, it never would.
        raise RetireError(f"the proxy did not stop cleanly on {log_dir}: start `nfsj proxy` on this "
                          "LOG once (it marks the gap and rebuilds what the stop left), stop it, "
                          "then retire it")
    node_id = _node_id(log_dir)
    try:
        log = Log.open(log_dir)
    except (LogError, OSError) as e:
        raise RetireError(f"cannot open the LOG in {log_dir} ({e}); a proxy still using it has "
                          "not stopped sending") from None
    try:
        return StreamKey(node_id, log.log_id), log.last_seq
    finally:
        log.close()


def _node_id(log_dir: str) -> int:
    """The proxy's node id: its node_id file (a generated id), else the
    status it last wrote (an id given with --node-id)."""
    try:
        with open(os.path.join(log_dir, "node_id")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        pass
    try:
        return int(read_proxy_status(log_dir)["node_id"])
    except (ProxyStatusError, KeyError, TypeError, ValueError) as e:
        raise RetireError(f"{log_dir}: neither a node_id file nor a status.json naming the "
                          f"proxy's node id ({e}); is it a proxy's --log directory? Name the "
                          "stream with --stream NODE_ID/LOG_ID instead") from None


def retire(addresses: list[str], key: StreamKey, through_seq: int, *,
           credentials: grpc.ChannelCredentials | None = None, token: BearerToken | None = None,
           timeout_s: float = DEFAULT_TIMEOUT_S) -> list[RetireOutcome]:
    """Retire ``key`` on every shard once each holds it through ``through_seq``.

    Raises ``RetireError`` (retiring nothing) when a shard is down, hides its
    streams (no credentials), or does not hold the stream through
    ``through_seq`` without a gap; a shard that never had the stream is fine
    only when the LOG ended at seq 0 (nothing was ever sent).
    """
    if not addresses:
        raise RetireError("no shards given: name every recovery shard (--shard HOST:PORT)")
    reports = fetch_status(addresses, timeout_s, credentials=credentials, token=token)
    problems, holders = [], []
    for report in reports:
        if report.status is None:
            problems.append(f"{report.address} is down ({report.error})")
            continue
        if report.status.streams_hidden:
            problems.append(f"{report.address} shows its streams only to authenticated callers "
                            "(--token-file FILE)")
            continue
        state = next((s for s in report.status.streams
                      if s.stream.node_id == key.node_id and s.stream.log_id == key.log_id), None)
        if state is None:
            if through_seq:
                problems.append(f"shard {report.status.shard_id} ({report.address}) has no stream "
                                f"{key} (or retired it already), but the LOG ran to seq {through_seq}")
            continue
        if state.durable_seq < through_seq:
            problems.append(f"shard {report.status.shard_id} ({report.address}) holds {key} only "
                            f"through seq {state.durable_seq}, not {through_seq}")
        elif state.gaps:
            problems.append(f"shard {report.status.shard_id} ({report.address}): {key} has gaps "
                            f"({'; '.join(state.gaps)})")
        else:
            holders.append(report)
    if problems:
        raise RetireError(f"not retiring {key}: " + "; ".join(problems))
    outcomes = []
    for report in holders:
        with open_channel(report.address, credentials=credentials, token=token) as channel:
            try:
                pb = journal_pb2_grpc.JournalStub(channel).Retire(
                    RetireRequest(stream=stream_id(key), through_seq=through_seq), timeout=timeout_s)
            except grpc.RpcError as e:
                raise RetireError(f"shard {report.status.shard_id} ({report.address}) refused to "
                                  f"retire {key}: {e.details() if hasattr(e, 'details') else e}") from None
        outcomes.append(RetireOutcome(report.address, report.status.shard_id, pb.durable_seq,
                                      pb.records))
    return outcomes
