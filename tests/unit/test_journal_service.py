"""The Journal gRPC service over a real channel on loopback, and `nfsj recoveryd`
as a real process (kill -9, restart). Real RocksDB, real gRPC, no mocks."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from logstore.hlc import HLC, ClockStamp
from logstore.pb.journal_pb2 import (IngestAck, IngestBatch, Op, Record, ShardStatusRequest,
                                     ShippedRecord, StreamId)
from logstore.pb.journal_pb2_grpc import JournalStub
from logstore.stamp import Stamp
from recoveryd.server import JOURNAL_SERVICE, JournalServer, start_server
from recoveryd.store import DEFERRED_WRITE_BYTES, ShardStore

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE = 21
LOG_ID = "log-1"
ZERO16 = bytes(16)


def now_stamp(node: int = NODE, ahead_ns: int = 0) -> Stamp:
    return Stamp(time.time_ns() + ahead_ns, 0, node)


def write_record(s: Stamp, fh: bytes = b"F", data: bytes = b"d" * 128) -> Record:
    return Record(stamp=s.to_bytes(), op=Op.WRITE, ok=True, fh=fh, count=len(data), data=data)


def batch(after: int, through: int, records: list[tuple[int, Record]] = (), *,
          stable: Stamp | None = None, sent: Stamp | None = None, node: int = NODE,
          log_id: str = LOG_ID, named: bool = True) -> IngestBatch:
    b = IngestBatch(after_seq=after, through_seq=through,
                    records=[ShippedRecord(seq=q, record=r.SerializeToString()) for q, r in records],
                    stable=stable.to_bytes() if stable else b"",
                    sent_stamp=(sent or now_stamp(node)).to_bytes())
    if named:
        b.stream.CopyFrom(StreamId(node_id=node, log_id=log_id))
    return b


def hello(after: int = 0, **kw) -> IngestBatch:
    return batch(after, after, **kw)


class Shard:
    """A shard server (store + HLC + grpc.aio server) on its own event-loop thread."""

    def __init__(self, path: Path, shard_id: int = 1, max_offset_ns: int = 500_000_000):
        self.path, self.shard_id = path, shard_id
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.store = ShardStore(path, shard_id)
        self.hlc = HLC(self.store.node_id, max_offset_ns=max_offset_ns)
        self.server: JournalServer = self._run(start_server(self.store, self.hlc, "127.0.0.1", 0))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.stub = JournalStub(self.channel)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        self.channel.close()
        self._run(self.server.stop(1.0))
        self.store.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Session:
    """One Ingest call driven step by step: send a batch, wait for its ack."""

    def __init__(self, stub: JournalStub):
        self._outbox: queue.Queue = queue.Queue()
        self._acks: Iterator[IngestAck] = stub.Ingest(iter(self._outbox.get, None), timeout=30)

    def send(self, b: IngestBatch) -> IngestAck:
        self._outbox.put(b)
        return next(self._acks)

    def close(self) -> None:
        self._outbox.put(None)
        self._acks.cancel()


@pytest.fixture
def shard(tmp_path: Path):
    s = Shard(tmp_path / "shard")
    yield s
    s.stop()


@pytest.fixture
def session(shard: Shard):
    s = Session(shard.stub)
    yield s
    s.close()


def test_hello_answers_durable_zero(shard: Shard, session: Session) -> None:
    ack = session.send(hello())
    assert ack.error == ""
    assert (ack.durable_seq, ack.frontier, ack.shard_id) == (0, ZERO16, 1)
    assert ack.stream == StreamId(node_id=NODE, log_id=LOG_ID)
    assert len(ack.shard_stamp) == 16 and ClockStamp.from_bytes(ack.shard_stamp).node_id == shard.store.node_id


def test_hello_at_any_position_gets_the_durable_one(shard: Shard, session: Session) -> None:
    # A shipper that believes the shard holds through 40 (the shard was wiped)
    # is told 0, without an error: it rewinds.
    ack = session.send(hello(40))
    assert (ack.error, ack.durable_seq) == ("", 0)


def test_batches_chain_and_acks_follow(shard: Shard, session: Session) -> None:
    session.send(hello())
    s1, s2, s3 = now_stamp(), now_stamp(), now_stamp()
    ack = session.send(batch(0, 2, [(1, write_record(s1)), (2, write_record(s2))], stable=s2))
    assert (ack.error, ack.durable_seq, ack.frontier) == ("", 2, s2.to_bytes())
    ack = session.send(batch(2, 5, [(4, write_record(s3))], stable=s3))
    assert (ack.error, ack.durable_seq, ack.frontier) == ("", 5, s3.to_bytes())
    assert shard.store.records_total == 3
    # the shard's clock moved past the proxy's sent stamps, and acks carry it
    assert ClockStamp.from_bytes(ack.shard_stamp) > s3


def deferred(b: IngestBatch) -> IngestBatch:
    b.defer_durable = True
    return b


def test_a_deferring_shipper_is_acked_what_the_shard_holds_and_told_when_it_is_durable(
        shard: Shard, session: Session) -> None:
    """With defer_durable, a large batch is acked once held (applied_seq) and made
    durable by a later flush: at once when a heartbeat says the stream went
    quiet, else within DEFERRED_FLUSH_S. A batch without the flag is acked
    durable, as from shippers before it."""
    session.send(hello())
    s1, s2, s3 = now_stamp(), now_stamp(), now_stamp()
    big = b"d" * DEFERRED_WRITE_BYTES  # smaller groups go through the WAL while none waits
    ack = session.send(deferred(batch(0, 2, [(1, write_record(s1, data=big)), (2, write_record(s2))],
                                      stable=s2)))
    assert (ack.error, ack.applied_seq, ack.durable_seq, ack.frontier) == ("", 2, 0, s2.to_bytes())
    assert [r.stamp for r in shard.store.file_records(b"F")] == [s1.to_bytes(), s2.to_bytes()]
    ack = session.send(deferred(batch(2, 2, stable=s2)))  # a heartbeat
    assert (ack.error, ack.applied_seq, ack.durable_seq) == ("", 2, 2)

    ack = session.send(deferred(batch(2, 3, [(3, write_record(s3, data=big))], stable=s3)))
    assert (ack.applied_seq, ack.durable_seq) == (3, 2)
    deadline = time.monotonic() + 30
    while shard.store.durable_seq(shard.store.streams().popitem()[0]) < 3:  # the shard's own clock
        assert time.monotonic() < deadline, "no flush within 30 s"
        time.sleep(0.05)
    ack = session.send(batch(3, 4, [(4, write_record(now_stamp()))]))  # no flag: durable when acked
    assert (ack.applied_seq, ack.durable_seq) == (4, 4)


def test_non_chaining_batch_is_refused_and_the_stream_goes_on(shard: Shard, session: Session) -> None:
    session.send(hello())
    session.send(batch(0, 5, [(3, write_record(now_stamp()))]))
    ack = session.send(batch(9, 12, [(10, write_record(now_stamp()))]))
    assert ack.durable_seq == 5 and "refused" in ack.error and "holds through 5" in ack.error
    assert shard.store.records_total == 1
    # the shipper rewinds to durable_seq on the same call
    ack = session.send(batch(5, 12, [(10, write_record(now_stamp()))]))
    assert (ack.error, ack.durable_seq) == ("", 12)
    assert shard.server.servicer.counters.refusals_total == 1


def test_duplicate_resend_after_lost_ack_is_idempotent(shard: Shard) -> None:
    recs = [(q, write_record(now_stamp())) for q in (1, 2, 3)]
    first = Session(shard.stub)
    first.send(hello())
    assert first.send(batch(0, 3, recs)).durable_seq == 3
    first.close()  # the ack "was lost": the shipper reconnects and resends
    totals = (shard.store.records_total, shard.store.bytes_total)
    second = Session(shard.stub)
    try:
        assert second.send(hello()).durable_seq == 3
        ack = second.send(batch(0, 3, recs))
        assert (ack.error, ack.durable_seq) == ("", 3)
        assert (shard.store.records_total, shard.store.bytes_total) == totals
        assert second.send(batch(3, 4, [(4, write_record(now_stamp()))])).durable_seq == 4
    finally:
        second.close()


def test_clock_too_far_ahead_is_refused_and_counted(shard: Shard, session: Session) -> None:
    session.send(hello())
    ahead = now_stamp(ahead_ns=10_000_000_000)  # 10 s, max offset is 0.5 s
    ack = session.send(batch(0, 1, [(1, write_record(now_stamp()))], sent=ahead))
    assert ack.durable_seq == 0 and "refused" in ack.error and "ahead" in ack.error
    assert shard.store.records_total == 0
    assert shard.server.servicer.counters.clock_refusals_total == 1
    assert shard.hlc.rejections_total == 1
    assert ClockStamp.from_bytes(ack.shard_stamp) < ahead  # the clock did not follow
    # a sane clock goes on on the same call
    ack = session.send(batch(0, 1, [(1, write_record(now_stamp()))]))
    assert (ack.error, ack.durable_seq) == ("", 1)


def test_batch_for_another_stream_on_the_same_call_is_refused(shard: Shard, session: Session) -> None:
    session.send(hello())
    ack = session.send(batch(0, 1, log_id="other"))
    assert "needs its own call" in ack.error and ack.durable_seq == 0
    # later messages may leave the stream out: the call's stream applies
    ack = session.send(batch(0, 1, [(1, write_record(now_stamp()))], named=False))
    assert (ack.error, ack.durable_seq) == ("", 1)


def test_first_message_must_name_the_stream(shard: Shard) -> None:
    acks = shard.stub.Ingest(iter([batch(0, 0, named=False)]), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        list(acks)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_parallel_streams(shard: Shard) -> None:
    errors: list[BaseException] = []

    def ship(node: int) -> None:
        try:
            s = Session(shard.stub)
            assert s.send(hello(node=node)).durable_seq == 0
            for k in range(20):
                recs = [(k * 4 + j, write_record(now_stamp(node))) for j in (1, 2, 3, 4)]
                ack = s.send(batch(k * 4, k * 4 + 4, recs, node=node, stable=now_stamp(node)))
                assert (ack.error, ack.durable_seq) == ("", k * 4 + 4)
            s.close()
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=ship, args=(n,)) for n in (31, 32, 33, 34)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert errors == []
    assert shard.store.records_total == 4 * 80
    assert {k.node_id: s.durable_seq for k, s in shard.store.streams().items()} == \
        {31: 80, 32: 80, 33: 80, 34: 80}


def test_status_numbers(shard: Shard, session: Session) -> None:
    status = shard.stub.Status(ShardStatusRequest(), timeout=10)
    assert (status.shard_id, status.records, status.bytes, status.frontier) == (1, 0, 0, b"")
    assert status.data_id == shard.store.data_id and list(status.streams) == []
    session.send(hello())
    recs = [(1, write_record(now_stamp(), b"A")), (2, write_record(now_stamp(), b"B"))]
    stable = now_stamp()
    session.send(batch(0, 2, recs, stable=stable))
    other = Session(shard.stub)
    other.send(hello(node=99))
    recs99 = [(1, write_record(now_stamp(99), b"C"))]
    other.send(batch(0, 1, recs99, node=99))  # no stable claim
    other.close()
    status = shard.stub.Status(ShardStatusRequest(), timeout=10)
    assert status.records == 3 == shard.store.records_total
    assert status.bytes == sum(len(r.SerializeToString()) for _, r in recs + recs99) == shard.store.bytes_total
    assert status.frontier == ZERO16  # node 99 has proven nothing yet
    by_node = {s.stream.node_id: s for s in status.streams}
    assert (by_node[NODE].durable_seq, by_node[NODE].frontier, by_node[NODE].records) == (2, stable.to_bytes(), 2)
    assert (by_node[99].durable_seq, by_node[99].records) == (1, 1)
    assert by_node[NODE].updated_unix_ns > 0
    assert len(status.shard_stamp) == 16


def test_health_serving(shard: Shard) -> None:
    health = health_pb2_grpc.HealthStub(shard.channel)
    for service in ("", JOURNAL_SERVICE):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_restart_keeps_position(tmp_path: Path) -> None:
    s = Shard(tmp_path / "shard", shard_id=4)
    sess = Session(s.stub)
    sess.send(hello())
    sess.send(batch(0, 7, [(7, write_record(now_stamp()))]))
    sess.close()
    s.stop()
    s = Shard(tmp_path / "shard", shard_id=4)
    try:
        sess = Session(s.stub)
        ack = sess.send(hello())
        assert (ack.durable_seq, ack.shard_id) == (7, 4)
        sess.close()
    finally:
        s.stop()


# -- `nfsj recoveryd` as a process --------------------------------------------

_READY = re.compile(r"^nfsj recoveryd: shard (\d+) serving on 127\.0\.0\.1:(\d+), data (.+?), metrics (\S+)$")


def start_daemon(data: Path, shard_id: int, listen: str = "127.0.0.1:0") -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nfsproxy", "recoveryd", "--listen", listen, "--data", str(data),
         "--shard-id", str(shard_id)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    line = proc.stdout.readline()
    m = _READY.match(line.strip())
    if not m:
        proc.kill()
        raise AssertionError(f"no ready line: {line!r}; stderr: {proc.stderr.read()}")
    assert int(m.group(1)) == shard_id and m.group(3) == str(data)
    return proc, int(m.group(2))


def run_daemon(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nfsproxy", "recoveryd", *args], capture_output=True,
                          text=True, timeout=30, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


def test_daemon_survives_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "shard-7"
    proc, port = start_daemon(data, 7)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            sess = Session(JournalStub(channel))
            assert sess.send(hello()).durable_seq == 0
            seq = 0
            for k in range(10):
                recs = [(seq + j, write_record(now_stamp(), b"F%d" % j, b"x" * 4096)) for j in range(1, 9)]
                ack = sess.send(batch(seq, seq + 8, recs, stable=now_stamp()))
                assert ack.error == ""
                seq = ack.durable_seq
            frontier = ack.frontier
            status = JournalStub(channel).Status(ShardStatusRequest(), timeout=10)
            sess.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert seq == 80 and status.records == 80
    proc, port = start_daemon(data, 7)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            sess = Session(JournalStub(channel))
            ack = sess.send(hello())
            assert (ack.durable_seq, ack.frontier, ack.shard_id) == (80, frontier, 7)
            after = JournalStub(channel).Status(ShardStatusRequest(), timeout=10)
            assert (after.records, after.bytes, after.data_id) == (80, status.bytes, status.data_id)
            # SIGTERM with a shipper's call still open: a clean, prompt stop
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            assert time.monotonic() - started < 10
            sess.close()
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_daemon_refuses_another_shards_data(tmp_path: Path) -> None:
    data = tmp_path / "shard"
    proc, _ = start_daemon(data, 1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    result = run_daemon("--listen", "127.0.0.1:0", "--data", str(data), "--shard-id", "2")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[-1]] and lines[0].startswith("nfsj: error: ")
    assert "belongs to shard 1" in lines[0] and "not shard 2" in lines[0]


def test_daemon_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_daemon("--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "d"), "--shard-id", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == f"nfsj: error: cannot listen on 127.0.0.1:{port}: the port is in use"
