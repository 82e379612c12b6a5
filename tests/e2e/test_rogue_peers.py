"""A rogue peer cannot inject, skip or hide records on a shard (issue 10, item 6).

Real nfs-ganesha, a real `nfsj recoveryd` with --ingest-tokens (who may ship
for which proxy node) and --restore-tokens, a real `nfsj proxy` shipping with
its --ingest-token-file, and a rogue gRPC client (the generated stubs) that
tries every attack in turn:

* skip ahead: an empty batch (D, 10^6] with a stable stamp of MAX on the
  real proxy's stream, with no credential and with another member's token;
* plant: a record stamped with the real proxy's node id (a future stamp, and
  the stamp of a record the shard holds) sent on the rogue's own stream;
* hide: a record under a held stamp with other bytes, on a second stream of
  the real node (the proxy's own token): a differing duplicate;
* register: a stray hello for a node that is no member;
* exhaust: one 70 MiB message.

Every attack is refused; the real proxy's stream goes on, the consistent
point passes a moment after later writes, and a restore at that moment
equals the NAS. `nfsj status` without credentials shows no stream keys.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from e2e.journal_cli import baseline, moment, nfsj, restore, status, wait_proven
from e2e.treecompare import diff, snapshot
from e2e.workload import connect
from logstore.pb.journal_pb2 import (IngestBatch, Op, Record, ScanRequest, ShardStatusRequest,
                                     ShippedRecord, StreamId)
from logstore.pb.journal_pb2_grpc import JournalStub, RestoreStub
from logstore.stamp import Stamp
from recoveryd.status import read_proxy_status

pytestmark = [pytest.mark.ganesha, pytest.mark.timeout(600)]

PROXY_NODE = 4242
ROGUE_NODE = 77          # a member gone rogue: it holds a token, for its own node only
PROXY_TOKEN = "proxy-ingest-token-0123456789abcdef"
ROGUE_TOKEN = "rogue-ingest-token-0123456789abcdef"
RESTORE_TOKEN = "restore-token-0123456789abcdef0123"
M32 = (1 << 32) - 1


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def ingest(address: str, batches: list[IngestBatch], token: str | None = None,
           **channel_options) -> list:
    """Send `batches` on one Ingest call; the acks, or the RpcError that ended it."""
    with grpc.insecure_channel(address, options=list(channel_options.items())) as channel:
        try:
            return list(JournalStub(channel).Ingest(iter(batches), timeout=30,
                                                    metadata=bearer(token) if token else None))
        except grpc.RpcError as e:
            return [e]


def refused(outcome: list, code: grpc.StatusCode) -> str:
    assert len(outcome) == 1 and isinstance(outcome[0], grpc.RpcError), outcome
    assert outcome[0].code() is code, (outcome[0].code(), outcome[0].details())
    return outcome[0].details()


def record(stamp: Stamp, data: bytes) -> bytes:
    return Record(stamp=stamp.to_bytes(), op=Op.WRITE, ok=True, fh=b"rogue-fh", offset=0,
                  count=len(data), data=data).SerializeToString()


def write_files(proxy, files: dict[str, bytes]) -> None:
    with connect(proxy.url()) as client:
        for path, data in files.items():
            with client.open(path, "w+b") as f:
                f.write_at(data, 0)


def test_rogue_peers_are_refused(nas, shard_factory, proxy_factory, tmp_path: Path):
    ingest_tokens = tmp_path / "ingest-tokens"
    ingest_tokens.write_text(f"{PROXY_NODE} {PROXY_TOKEN}\n{ROGUE_NODE} {ROGUE_TOKEN}\n")
    ingest_tokens.chmod(0o600)
    restore_tokens = tmp_path / "restore-tokens"
    restore_tokens.write_text(f"{RESTORE_TOKEN}\n")
    restore_tokens.chmod(0o600)
    proxy_token, restore_token = tmp_path / "proxy-token", tmp_path / "restore-token"
    proxy_token.write_text(f"{PROXY_TOKEN}\n")
    restore_token.write_text(f"{RESTORE_TOKEN}\n")

    shard = shard_factory(0, extra=["--ingest-tokens", str(ingest_tokens),
                                    "--restore-tokens", str(restore_tokens)])
    assert "INGEST IS OPEN" not in shard.stderr_text()
    shard_args = ["--shard", shard.address]
    auth = ["--token-file", str(restore_token)]
    proxy = proxy_factory(extra=[*shard_args, "--node-id", str(PROXY_NODE),
                                 "--ingest-token-file", str(proxy_token)])
    stream = read_proxy_status(proxy.log_dir)
    real = StreamId(node_id=PROXY_NODE, log_id=stream["log_id"])
    assert stream["node_id"] == PROXY_NODE

    # A member holds the consistent point back until it has a stream here.
    assert "member node 77" in status(shard_args, *auth)["consistent_point_reason"]
    # The rogue member registers its own stream honestly: with nothing of its
    # own to ship, it may claim MAX for itself, and that only frees the point.
    rogue = StreamId(node_id=ROGUE_NODE, log_id="rogue-log")
    acks = ingest(shard.address, [IngestBatch(stream=rogue), IngestBatch(
        stream=rogue, after_seq=0, through_seq=0, stable=Stamp.MAX.to_bytes())], ROGUE_TOKEN)
    assert [a.error for a in acks] == ["", ""], acks

    baseline(proxy.log_dir)
    write_files(proxy, {f"before-{i}": bytes([65 + i]) * 5000 for i in range(4)})
    wait_proven(shard_args, moment(), *auth)

    view = status(shard_args, *auth)
    held = {s["stream"]: s for s in view["shards"][0]["streams"]}
    durable = held[f"{PROXY_NODE}/{real.log_id}"]["durable_seq"]
    skip = IngestBatch(stream=real, after_seq=durable, through_seq=10**6, stable=Stamp.MAX.to_bytes())

    # 1. Skip ahead on the real stream: no credential, then another node's token.
    details = refused(ingest(shard.address, [skip]), grpc.StatusCode.UNAUTHENTICATED)
    assert "missing credentials" in details
    details = refused(ingest(shard.address, [skip], ROGUE_TOKEN), grpc.StatusCode.UNAUTHENTICATED)
    assert f"not node {PROXY_NODE}" in details

    # 2. Plant records under the real node's stamps on the rogue's own stream:
    #    a future stamp, and the stamp of a record the shard already holds.
    with grpc.insecure_channel(shard.address) as channel:
        held_records = list(RestoreStub(channel).Scan(ScanRequest(with_data=True),
                                                      metadata=bearer(RESTORE_TOKEN)))
    victim = next(r for r in held_records if r.op == Op.WRITE)
    victim_stamp = Stamp.from_bytes(victim.stamp)
    future = Stamp(time.time_ns() + 3_600_000_000_000, 0, PROXY_NODE)
    for stamp in (future, victim_stamp):
        acks = ingest(shard.address, [IngestBatch(
            stream=rogue, after_seq=0, through_seq=1,
            records=[ShippedRecord(seq=1, record=record(stamp, b"planted"))])], ROGUE_TOKEN)
        assert len(acks) == 1 and "not by this stream's node" in acks[0].error, acks

    # 3. Hide a held record: a differing duplicate under its stamp, on a new
    #    stream of the real node (even with the real node's own token).
    second = StreamId(node_id=PROXY_NODE, log_id="second-log")
    acks = ingest(shard.address, [IngestBatch(
        stream=second, after_seq=0, through_seq=1,
        records=[ShippedRecord(seq=1, record=record(victim_stamp, b"hidden"))])], PROXY_TOKEN)
    assert len(acks) == 1 and "different contents" in acks[0].error, acks

    # 4. A stray hello for a node that is no member: refused, nothing registered.
    stray = StreamId(node_id=999, log_id="stray")
    refused(ingest(shard.address, [IngestBatch(stream=stray)]), grpc.StatusCode.UNAUTHENTICATED)
    details = refused(ingest(shard.address, [IngestBatch(stream=stray)], ROGUE_TOKEN),
                      grpc.StatusCode.PERMISSION_DENIED)
    assert "not a member" in details

    # 5. One huge message.
    huge = IngestBatch(stream=rogue, after_seq=1, through_seq=2,
                       records=[ShippedRecord(seq=2, record=b"\0" * (70 << 20))])
    refused(ingest(shard.address, [huge], ROGUE_TOKEN, **{"grpc.max_send_message_length": -1}),
            grpc.StatusCode.RESOURCE_EXHAUSTED)

    # Status without credentials: frontiers and counters, no stream keys.
    with grpc.insecure_channel(shard.address) as channel:
        anonymous = JournalStub(channel).Status(ShardStatusRequest(), timeout=10)
    assert anonymous.streams_hidden and not anonymous.streams and not anonymous.members
    assert anonymous.frontier
    view = status(shard_args)
    assert view["shards"][0]["streams"] == []
    assert real.log_id not in json.dumps(view)

    # The real stream and the consistent point are unaffected: only the two
    # honest streams exist, the victim record is intact, later writes are
    # proven, and a restore equals the NAS.
    write_files(proxy, {f"after-{i}": bytes([97 + i]) * 7000 for i in range(4)})
    at = moment()
    truth = snapshot(nas.export_dir)
    view = wait_proven(shard_args, at, *auth)
    streams = {s["stream"] for s in view["shards"][0]["streams"]}
    assert streams == {f"{PROXY_NODE}/{real.log_id}", f"{ROGUE_NODE}/rogue-log"}, streams
    assert Stamp.parse(view["consistent_point"]["stamp"]) < Stamp.MAX
    with grpc.insecure_channel(shard.address) as channel:
        again = {r.stamp: r for r in RestoreStub(channel).Scan(
            ScanRequest(with_data=True), metadata=bearer(RESTORE_TOKEN))}
    assert again[victim.stamp] == victim
    assert future.to_bytes() not in again
    restore(shard_args, at, tmp_path / "restored", *auth)
    assert diff(truth, snapshot(tmp_path / "restored"), names=("NAS", "restore")) == []

    # The proxy's LOG reached the shard whole: its shipper never skipped. The
    # proxy rewrites its status file once a second, so only a file written after
    # the shard was asked can be held against the shard's answer.
    view = status(shard_args, *auth)
    held = {s["stream"]: s for s in view["shards"][0]["streams"]}
    asked_ns = time.time_ns()
    deadline = time.monotonic() + 60
    while True:
        proxy_view = read_proxy_status(proxy.log_dir)
        if (proxy_view["written_unix_ns"] > asked_ns
                and proxy_view["shards"][0]["acked_seq"] == proxy_view["last_seq"]):
            break
        assert time.monotonic() < deadline, (proxy_view, proxy.stderr_text())
        time.sleep(0.2)
    assert held[f"{PROXY_NODE}/{real.log_id}"]["durable_seq"] <= proxy_view["last_seq"] < 10**6
    assert "refused an Ingest call" in shard.stderr_text()
