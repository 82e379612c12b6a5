"""`nfsj status` and recoveryd.status: the overall view, the proxy status file, the CLI.

The last test is a real round trip: `nfsj recoveryd` in a subprocess, a batch
shipped over gRPC Ingest, and `fetch_status` / `nfsj status` reading it back.
"""

from __future__ import annotations

import contextlib

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from typer.testing import CliRunner

from logstore.pb import journal_pb2_grpc
from logstore.pb.journal_pb2 import (IngestBatch, Record, ShardStatus, ShippedRecord, StreamId,
                                     StreamStatus)
from logstore.stamp import Stamp
from nfsproxy.cli import app
from recoveryd.frontier import StreamKey
from recoveryd.status import (PROXY_STATUS_FILE, ConsistentPoint, HeldBackBy, ProxyStatusError,
                              ShardReport, consistent_point_of, fetch_status, overall,
                              read_proxy_status, write_proxy_status)

T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
S = 1_000_000_000


def st(wall_ns: int, node_id: int = 1) -> Stamp:
    return Stamp(wall_ns, 0, node_id)


def stream(node_id: int, log_id: str, *, durable_seq: int, frontier: Stamp | None,
           newest: Stamp | None = None, gaps: tuple[str, ...] = (), records: int = 0) -> StreamStatus:
    return StreamStatus(stream=StreamId(node_id=node_id, log_id=log_id), durable_seq=durable_seq,
                        frontier=frontier.to_bytes() if frontier else b"",
                        newest=newest.to_bytes() if newest else b"", gaps=list(gaps),
                        records=records)


def shard(shard_id: int, *streams: StreamStatus, records: int = 0, nbytes: int = 0,
          data_id: str | None = None) -> ShardStatus:
    frontier = min((Stamp.from_bytes(s.frontier) if s.frontier else Stamp.ZERO for s in streams),
                   default=None)
    return ShardStatus(shard_id=shard_id, streams=list(streams), records=records, bytes=nbytes,
                       frontier=frontier.to_bytes() if frontier is not None else b"",
                       data_id=data_id or f"data-{shard_id}")


def up(address: str, status: ShardStatus) -> ShardReport:
    return ShardReport(address, status)


# -- overall() -------------------------------------------------------------------


def test_consistent_point_is_the_least_frontier_with_lag_and_sizes() -> None:
    a = shard(0, stream(1, "L1", durable_seq=10, frontier=st(T0 + 5 * S), newest=st(T0 + 7 * S)),
              stream(2, "L2", durable_seq=4, frontier=st(T0 + 3 * S, 2), newest=st(T0 + 3 * S, 2)),
              records=14, nbytes=4096)
    b = shard(1, stream(1, "L1", durable_seq=10, frontier=st(T0 + 6 * S), newest=st(T0 + 7 * S)),
              stream(2, "L2", durable_seq=4, frontier=st(T0 + 4 * S, 2)))
    view = overall([up("h:1", a), up("h:2", b)], now_ns=T0 + 10 * S)

    assert view["consistent_point"] == {"stamp": str(st(T0 + 3 * S, 2)),
                                        "time": "2023-11-14T22:13:23.000000Z"}
    assert view["held_back_by"]["stream"] == "2/L2" and view["held_back_by"]["address"] == "h:1"
    assert "held back by stream 2/L2 on shard 0" in view["consistent_point_reason"]
    assert (view["shards_up"], view["shards_down"]) == (2, 0)
    s0, s1 = view["shards"]
    assert (s0["address"], s0["up"], s0["shard_id"], s0["records"], s0["bytes"]) == ("h:1", True, 0, 14, 4096)
    assert s0["frontier"]["stamp"] == str(st(T0 + 3 * S, 2))
    assert s0["frontier_age_seconds"] == pytest.approx(7.0)
    assert s0["lag_seconds"] == pytest.approx(2.0)     # stream 1/L1: newest 7 s, frontier 5 s
    assert s1["lag_seconds"] == pytest.approx(1.0)     # 1/L1: 7 - 6; 2/L2 reported no newest
    assert [x["stream"] for x in s0["streams"]] == ["1/L1", "2/L2"]
    assert s0["gaps"] == [] and view["warnings"] == []
    json.dumps(view)  # JSON-ready as is


def test_the_consistent_point_is_a_value_that_status_renders() -> None:
    a = shard(0, stream(1, "L1", durable_seq=10, frontier=st(T0 + 5 * S)),
              stream(2, "L2", durable_seq=4, frontier=st(T0 + 3 * S, 2)))
    b = shard(1, stream(1, "L1", durable_seq=10, frontier=st(T0 + 6 * S)),
              stream(2, "L2", durable_seq=4, frontier=st(T0 + 4 * S, 2)))
    reports = [up("h:1", a), up("h:2", b)]
    point = consistent_point_of(reports)
    stamp, held_back_by, reason = point
    assert isinstance(point, ConsistentPoint) and stamp == st(T0 + 3 * S, 2)
    assert held_back_by == HeldBackBy("h:1", 0, StreamKey(2, "L2"), known=True, gap=None)
    view = overall(reports)
    assert view["consistent_point"]["stamp"] == str(stamp)
    assert view["consistent_point_reason"] == reason
    assert view["held_back_by"]["stream"] == str(held_back_by.stream)
    down = consistent_point_of([up("h:1", a), ShardReport("h:2", None, "UNAVAILABLE")])
    assert down.stamp is None and down.held_back_by is None and "h:2" in down.reason


def test_restores_take_the_value_never_a_rendering() -> None:
    # The cut, export and history read the consistent point as a value; a
    # rendering parsed back (Stamp.parse of status text) would drift from it.
    root = Path(__file__).resolve().parents[2] / "recoveryd" / "restore"
    for path in root.glob("*.py"):
        text = path.read_text()
        assert "overall(" not in text and "Stamp.parse(" not in text, path.name


def test_a_down_shard_makes_the_consistent_point_unknown() -> None:
    a = shard(0, stream(1, "L1", durable_seq=3, frontier=st(T0 + 5 * S)))
    view = overall([up("h:1", a), ShardReport("h:2", None, "UNAVAILABLE: connection refused")])
    assert view["consistent_point"] is None
    assert "unknown" in view["consistent_point_reason"] and "h:2" in view["consistent_point_reason"]
    assert view["shards_down"] == 1
    down = view["shards"][1]
    assert down == {**down, "up": False, "error": "UNAVAILABLE: connection refused",
                    "frontier": None, "records": None, "lag_seconds": None}
    # The up shard is still shown in full.
    assert view["shards"][0]["frontier"]["stamp"] == str(st(T0 + 5 * S))


def test_a_gap_holds_the_consistent_point_until_a_later_baseline_ends() -> None:
    from logstore.pb.journal_pb2 import BaselineInfo, StreamGap
    gap = StreamGap(after_seq=7, through_seq=12, through=st(T0 + 3 * S).to_bytes(), cause="trimmed",
                    reason="the proxy LOG no longer holds these records",
                    **{"from": st(T0 + 2 * S).to_bytes()})
    text = "7..12: the proxy LOG no longer holds these records"

    def shards(*baselines):
        a = shard(0, stream(1, "L1", durable_seq=12, frontier=st(T0 + 9 * S), gaps=(text,)))
        a.streams[0].gap_ranges.append(gap)
        b = shard(1, stream(1, "L1", durable_seq=12, frontier=st(T0 + 9 * S)))
        for s in (a, b):
            s.baselines.extend(BaselineInfo(baseline_id=st(b0).to_bytes(), end=st(e).to_bytes())
                               for b0, e in baselines)
        return [up("h:1", a), up("h:2", b)]

    view = overall(shards())
    assert view["consistent_point"]["stamp"] == str(st(T0 + 2 * S))
    assert view["held_back_by"]["gap"]["cause"] == "trimmed"
    assert "held back by a gap" in view["consistent_point_reason"]
    assert view["shards"][0]["gaps"] == [f"1/L1 {text}"]
    (g,) = view["gaps"]
    assert g["healed_by"] is None and g["shards"] == [0]
    # A baseline that began before the gap's end heals nothing ...
    view = overall(shards((T0 + 1 * S, T0 + 4 * S)))
    assert view["consistent_point"]["stamp"] == str(st(T0 + 2 * S))
    # ... one that began after it does, from its end on.
    view = overall(shards((T0 + 1 * S, T0 + 4 * S), (T0 + 5 * S, T0 + 6 * S)))
    assert view["consistent_point"]["stamp"] == str(st(T0 + 9 * S))
    assert view["gaps"][0]["healed_by"]["stamp"] == str(st(T0 + 6 * S))
    assert view["held_back_by"]["gap"] is None


def test_a_stream_one_shard_lacks_proves_nothing() -> None:
    a = shard(0, stream(1, "L1", durable_seq=3, frontier=st(T0 + 5 * S)))
    b = shard(1)  # wiped, or not reached yet by that proxy
    view = overall([up("h:1", a), up("h:2", b)])
    assert view["consistent_point"] is None
    assert "nothing is proven yet" in view["consistent_point_reason"]
    assert view["held_back_by"] == {"address": "h:2", "shard_id": 1, "stream": "1/L1",
                                    "known": False, "gap": None}
    assert view["shards"][1]["frontier"] is None


def test_the_proxy_stream_counts_even_if_no_shard_knows_it() -> None:
    # consistent_point() alone would say 5 s: it only sees streams some shard knows.
    a = shard(0, stream(1, "L1", durable_seq=3, frontier=st(T0 + 5 * S)))
    proxy = {"node_id": 2, "log_id": "L2", "last_seq": 9, "synced_seq": 9,
             "newest": str(st(T0 + 4 * S, 2)), "shards": []}
    assert overall([up("h:1", a)])["consistent_point"] is not None
    view = overall([up("h:1", a)], proxy)
    assert view["consistent_point"] is None
    assert view["held_back_by"]["stream"] == "2/L2"
    assert view["proxy"] is proxy


def test_no_shard_and_empty_shards() -> None:
    view = overall([], {"node_id": 1, "log_id": "L", "shards": []})
    assert view["consistent_point"] is None and "no shard" in view["consistent_point_reason"]
    view = overall([up("h:1", shard(0))])
    assert view["consistent_point"] is None
    assert view["consistent_point_reason"].startswith("nothing is proven yet")
    assert view["shards"][0]["frontier"] is None


def test_the_same_shard_twice_is_a_warning() -> None:
    a = shard(0, stream(1, "L1", durable_seq=3, frontier=st(T0)), data_id="abc")
    view = overall([up("h:1", a), up("h:1b", a)])
    assert view["warnings"] == ["h:1, h:1b are the same shard (data id abc)"]


# -- the proxy status file -------------------------------------------------------------


def proxy_status(address: str = "127.0.0.1:1") -> dict:
    return {"node_id": 7, "log_id": "L7", "last_seq": 120, "synced_seq": 118,
            "newest": st(T0 + 60 * S, 7), "stable": str(st(T0 + 59 * S, 7)), "log_bytes": 3 << 20,
            "shards": [{"address": address, "connected": False, "acked_seq": 40, "applied_seq": 45,
                        "frontier": str(st(T0 + 20 * S, 7)), "lag_records": 80,
                        "lag_seconds": 40.0, "gaps_total": 0}]}


def test_proxy_status_file_round_trip(tmp_path: Path) -> None:
    write_proxy_status(tmp_path / PROXY_STATUS_FILE, proxy_status())
    got = read_proxy_status(tmp_path)
    assert got["newest"] == str(st(T0 + 60 * S, 7))      # a Stamp is written as its text
    assert got["shards"][0]["lag_records"] == 80
    assert 0 <= got["age_seconds"] < 60
    assert [p.name for p in tmp_path.iterdir()] == [PROXY_STATUS_FILE]  # no temp file left
    write_proxy_status(tmp_path / PROXY_STATUS_FILE, {**proxy_status(), "last_seq": 121})
    assert read_proxy_status(tmp_path)["last_seq"] == 121


def test_the_proxy_goes_on_writing_its_status_after_a_gather_fails(tmp_path: Path, caplog) -> None:
    # A status file that stops changing tells every reader an old story
    # (lag, acked seqs, gaps) as if it were today's.
    import asyncio
    from types import SimpleNamespace

    from nfsproxy.daemon.proxyd import RunningProxy

    class Flaky(RunningProxy):
        gathers = 0

        def status(self) -> dict:
            self.gathers += 1
            if self.gathers == 1:
                raise RuntimeError("deque mutated during iteration")
            return {**proxy_status(), "last_seq": 100 + self.gathers}

    running = Flaky.__new__(Flaky)
    running.log = SimpleNamespace(directory=str(tmp_path))

    async def run() -> None:
        task = asyncio.create_task(running._write_status(interval_s=0.01))
        while running.gathers < 3 and not task.done():
            await asyncio.sleep(0.01)
        assert not task.done(), task.exception()  # the writer died with the first failure
        task.cancel()

    asyncio.run(run())
    assert read_proxy_status(tmp_path)["last_seq"] >= 102
    assert "deque mutated during iteration" in caplog.text


def test_proxy_status_errors(tmp_path: Path) -> None:
    with pytest.raises(ProxyStatusError, match="no status.json"):
        read_proxy_status(tmp_path)
    with pytest.raises(ProxyStatusError, match="not a directory"):
        read_proxy_status(tmp_path / "missing")
    (tmp_path / PROXY_STATUS_FILE).write_bytes(b"")  # e.g. after a power loss
    with pytest.raises(ProxyStatusError, match="not valid JSON"):
        read_proxy_status(tmp_path)


# -- the CLI -------------------------------------------------------------------------


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_status_needs_a_shard_or_a_log(runner: CliRunner) -> None:
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2
    assert "--shard" in result.output and "--log" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_status_json_shape(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    a = shard(0, stream(1, "L1", durable_seq=10, frontier=st(T0 + 5 * S), newest=st(T0 + 8 * S)),
              records=10, nbytes=1000)
    asked = []

    def fake_fetch(addresses, timeout_s, credentials=None, token=None):
        assert credentials is None  # no --tls-ca: plaintext
        asked.append((list(addresses), timeout_s))
        return [up(addresses[0], a)]

    import recoveryd.status  # the command imports it when it runs

    monkeypatch.setattr(recoveryd.status, "fetch_status", fake_fetch)
    result = runner.invoke(app, ["status", "--shard", "h:1", "--json", "--timeout", "0.5"])
    assert result.exit_code == 0, result.output
    assert asked == [(["h:1"], 0.5)]
    view = json.loads(result.output)
    assert set(view) == {"consistent_point", "consistent_point_reason", "held_back_by", "shards",
                         "shards_up", "shards_down", "warnings", "proxy", "gaps"}
    assert view["consistent_point"] == {"stamp": str(st(T0 + 5 * S)), "time": st(T0 + 5 * S).iso()}
    (s0,) = view["shards"]
    assert {"address", "up", "error", "shard_id", "frontier", "records", "bytes", "lag_seconds",
            "gaps", "streams"} <= set(s0)
    assert s0["lag_seconds"] == pytest.approx(3.0)
    assert view["proxy"] is None

    human = runner.invoke(app, ["status", "--shard", "h:1"])
    assert human.exit_code == 0
    assert f"consistent point: {st(T0 + 5 * S)}" in human.output
    assert re.search(r"^0\s+h:1\s+up\s+", human.output, re.M)


def test_status_from_the_proxy_log_while_every_shard_is_down(runner: CliRunner, tmp_path: Path) -> None:
    # The address of a port nobody listens on: the shard is down.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    write_proxy_status(tmp_path / PROXY_STATUS_FILE, proxy_status(dead))
    result = runner.invoke(app, ["status", "--log", str(tmp_path), "--json", "--timeout", "2"])
    assert result.exit_code == 1, result.output   # a shard is down
    view = json.loads(result.output)
    assert view["consistent_point"] is None
    assert view["shards"][0]["address"] == dead and not view["shards"][0]["up"]
    assert view["shards"][0]["error"]
    assert view["proxy"]["shards"][0]["lag_records"] == 80
    human = runner.invoke(app, ["status", "--log", str(tmp_path), "--timeout", "2"])
    assert human.exit_code == 1
    assert "consistent point: none (unknown" in human.output
    assert "DOWN" in human.output and "proxy node 7 LOG L7" in human.output
    assert f"stable {st(T0 + 59 * S, 7)}, LOG size 3.0MiB" in human.output
    # durable through 40, held through 45 (5 wait for the shard's flush)
    assert re.search(rf"^{re.escape(dead)}\s+NO\s+40\s+45\s+{re.escape(str(st(T0 + 20 * S, 7)))}\s+80\s+40.0s",
                     human.output, re.M)


def test_fetch_status_reports_unreachable_shards_as_down() -> None:
    started = time.monotonic()
    reports = fetch_status(["127.0.0.1:1", "no such host name:99", "127.0.0.1:1"], timeout_s=1.0)
    assert [r.up for r in reports] == [False, False, False]
    assert all(r.error for r in reports)
    assert time.monotonic() - started < 5  # asked at once, not one after another


# -- a real shard -------------------------------------------------------------------------


@contextlib.contextmanager
def recoveryd(data: Path, *extra: str, shard_id: int = 3) -> Iterator[str]:
    """`nfsj recoveryd` on a free port; yields its address."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nfsproxy", "recoveryd", "--listen", "127.0.0.1:0",
         "--data", str(data), "--shard-id", str(shard_id), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        match = re.search(r"serving on (\S+):(\d+)", line)
        if match is None:
            proc.kill()
            pytest.fail(f"nfsj recoveryd did not start: {line!r} {proc.stderr.read()}")
        yield f"127.0.0.1:{match.group(2)}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def live_shard(tmp_path: Path) -> Iterator[str]:
    with recoveryd(tmp_path / "shard") as address:
        yield address


def test_round_trip_with_a_real_shard(live_shard: str, runner: CliRunner) -> None:
    key = StreamId(node_id=5, log_id="L5")
    records = [Record(stamp=st(T0 + i * S, 5).to_bytes(), op=7, ok=True, fh=b"fh%d" % i,
                      data=b"x" * 10) for i in (1, 2)]
    batches = [
        IngestBatch(stream=key, after_seq=0, through_seq=0),  # hello
        IngestBatch(stream=key, after_seq=0, through_seq=2,
                    records=[ShippedRecord(seq=i + 1, record=r.SerializeToString())
                             for i, r in enumerate(records)],
                    stable=st(T0 + 3 * S, 5).to_bytes(), newest=st(T0 + 4 * S, 5).to_bytes()),
    ]
    with grpc.insecure_channel(live_shard) as channel:
        acks = list(journal_pb2_grpc.JournalStub(channel).Ingest(iter(batches), timeout=10))
    assert [a.error for a in acks] == ["", ""] and acks[-1].durable_seq == 2

    (report,) = fetch_status([live_shard], timeout_s=5)
    assert report.up, report.error
    view = overall([report], now_ns=T0 + 10 * S)
    assert view["consistent_point"]["stamp"] == str(st(T0 + 3 * S, 5))
    (s,) = view["shards"]
    assert (s["shard_id"], s["records"]) == (3, 2)
    assert s["bytes"] == sum(len(r.SerializeToString()) for r in records)
    assert s["lag_seconds"] == pytest.approx(1.0)
    assert s["streams"][0]["durable_seq"] == 2

    result = runner.invoke(app, ["status", "--shard", live_shard, "--json"])
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    assert view["consistent_point"]["stamp"] == str(st(T0 + 3 * S, 5))
    assert view["shards"][0]["bulk"] == "" and view["warnings"] == []   # its bulk port served
    human = runner.invoke(app, ["status", "--shard", live_shard])
    assert re.search(r"^SHARD .* BULK$", human.output, re.M)
    assert re.search(rf"^3\s+{re.escape(live_shard)}\s+up\s.*\sok$", human.output, re.M)


def test_status_names_a_shard_whose_bulk_port_this_host_cannot_use(tmp_path: Path, runner: CliRunner) -> None:
    """Restores from this host would read that shard's file contents through
    gRPC, with more CPU on both ends: status says so and why, and it is no
    failure (the shard is up, restores work)."""
    with recoveryd(tmp_path / "a") as served, recoveryd(tmp_path / "b", "--no-bulk", shard_id=4) as unserved:
        result = runner.invoke(app, ["status", "--shard", served, "--shard", unserved, "--json"])
        human = runner.invoke(app, ["status", "--shard", served, "--shard", unserved])
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    assert [s["bulk"] for s in view["shards"]] == ["", "it serves no bulk port"]
    assert view["warnings"] == [f"{unserved}: restores from this host read file contents through gRPC, "
                                "with more CPU on both ends: it serves no bulk port"]
    assert human.exit_code == 0
    assert re.search(rf"^4\s+{re.escape(unserved)}\s+up\s.*\sNO$", human.output, re.M)
    assert f"warning: {unserved}: restores from this host" in human.output


def test_the_nfsj_command_ends_status_with_all_its_output_and_its_exit_code() -> None:
    """`nfsj status` ends without the interpreter's teardown (``skip_teardown``);
    what it printed into a pipe (block-buffered) still arrives whole, and a
    shard that is down still makes it exit 1."""
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "nfsproxy", "status", "--shard", "127.0.0.1:1",
                           "--json", "--timeout", "0.3"], capture_output=True, text=True, cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo)}, timeout=60)
    assert done.returncode == 1, done.stderr
    view = json.loads(done.stdout)
    assert view["shards_down"] == 1 and view["shards"][0]["address"] == "127.0.0.1:1"
