"""Who may ship what to a shard (issue 10, items 6 and 7), sans-IO and on a
real RocksDB: IngestAuth's decisions, the store's refusals of foreign stamps
and differing duplicates, node-owner binding, members and retirement, and
the status view when stream keys are hidden or a member is missing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from logstore.pb.journal_pb2 import (IngestBatch, Op, Record, ShardStatus, ShippedRecord,
                                     StreamId, StreamStatus)
from logstore.stamp import Stamp
from recoveryd.frontier import BatchRefused, StreamKey
from recoveryd.security import IngestAuth, SecurityError
from recoveryd.server import _Budget
from recoveryd.status import ShardReport, overall
from recoveryd.store import RetireRefused, ShardStore

NODE = 11
OTHER = 12
STREAM = StreamKey(NODE, "log-a")
WALL0 = 1_700_000_000_000_000_000
TOKEN_A = "token-for-node-11-0123456789abcdef"
TOKEN_B = "token-for-node-12-0123456789abcdef"


def stamp(i: int, node: int = NODE) -> Stamp:
    return Stamp(WALL0 + i * 1000, 0, node)


def shipped(seq: int, s: Stamp, data: bytes = b"x") -> ShippedRecord:
    return ShippedRecord(seq=seq, record=Record(stamp=s.to_bytes(), op=Op.WRITE, ok=True, fh=b"F",
                                                count=len(data), data=data).SerializeToString())


def batch(after: int, through: int, records=(), *, stable: Stamp | None = None,
          stream: StreamKey = STREAM) -> IngestBatch:
    return IngestBatch(stream=StreamId(node_id=stream.node_id, log_id=stream.log_id),
                       after_seq=after, through_seq=through, records=list(records),
                       stable=stable.to_bytes() if stable else b"")


@pytest.fixture
def store(tmp_path: Path):
    s = ShardStore(tmp_path / "shard", 0)
    yield s
    s.close()


# -- IngestAuth ---------------------------------------------------------------------------


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "ingest-tokens"
    path.write_text(f"# proxies\n{NODE} {TOKEN_A}\n{OTHER} {TOKEN_B} expires=2000-01-01T00:00:00Z\n")
    path.chmod(0o600)
    return path


def test_open_ingest_admits_anyone_but_keeps_members(tmp_path: Path) -> None:
    assert IngestAuth().admit(NODE, (), {}).refusal is None
    auth = IngestAuth(members=[NODE])
    assert auth.admit(NODE, (), {}).refusal is None
    assert "not a member" in auth.admit(99, (), {}).refusal


def test_tokens_admit_only_their_own_node(tmp_path: Path) -> None:
    auth = IngestAuth(tokens_file(tmp_path))
    assert auth.enabled and auth.members == {NODE, OTHER}
    assert auth.admit(NODE, bearer(TOKEN_A), {}).identity == f"token:{NODE}"
    assert "missing credentials" in auth.admit(NODE, (), {}).refusal
    assert f"not node {OTHER}" in auth.admit(OTHER, bearer(TOKEN_A), {}).refusal
    assert "missing credentials" in auth.admit(OTHER, bearer(TOKEN_B), {}).refusal  # expired
    assert "missing credentials" in auth.admit(NODE, bearer("x" * 40), {}).refusal
    assert auth.authenticated(bearer(TOKEN_A), {}) and not auth.authenticated(bearer(TOKEN_B), {})


def test_certificates_bind_nodes_without_tokens(tmp_path: Path) -> None:
    auth = IngestAuth(tokens_file(tmp_path), verified_client_certs=True, members=[7])
    cert = {"x509_common_name": [b"proxy-a"]}
    admitted = auth.admit(7, (), cert)
    assert admitted.identity == "cert:proxy-a" and admitted.bind
    # A node with a token listed needs its token; a certificate is not enough.
    assert "ingest token" in auth.admit(NODE, (), cert).refusal


def test_bad_tokens_file_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_text(f"{TOKEN_A}\n")  # no node id
    path.chmod(0o600)
    with pytest.raises(SecurityError, match="NODE_ID TOKEN"):
        IngestAuth(path)


# -- the store ------------------------------------------------------------------------------


def test_records_stamped_by_another_node_are_refused(store: ShardStore) -> None:
    [outcome] = store.ingest_many(STREAM, [batch(0, 1, [shipped(1, stamp(1, OTHER))], stable=stamp(9))])
    assert isinstance(outcome, BatchRefused) and "not by this stream's node" in str(outcome)
    assert store.records_total == 0 and store.streams() == {} and store.node_refusals_total == 1


def test_a_differing_duplicate_is_refused_and_counted(store: ShardStore) -> None:
    store.ingest(STREAM, batch(0, 1, [shipped(1, stamp(1), b"real")], stable=stamp(2)))
    store.ingest(STREAM, batch(0, 1, [shipped(1, stamp(1), b"real")]))  # an exact resend is fine
    second = StreamKey(NODE, "log-b")
    [outcome] = store.ingest_many(second, [batch(0, 1, [shipped(1, stamp(1), b"fake")], stream=second)])
    assert isinstance(outcome, BatchRefused) and "different contents" in str(outcome)
    assert store.conflicts_total == 1 and second not in store.streams()
    assert [r.data for r in store.records()] == [b"real"]
    with pytest.raises(BatchRefused, match="two different records"):
        store.ingest(STREAM, batch(1, 3, [shipped(2, stamp(5), b"a"), shipped(3, stamp(5), b"b")]))


def test_a_conflict_in_a_group_refuses_only_from_that_batch_on(store: ShardStore) -> None:
    store.ingest(STREAM, batch(0, 1, [shipped(1, stamp(1), b"real")]))
    outcomes = store.ingest_many(STREAM, [batch(1, 2, [shipped(2, stamp(2), b"ok")]),
                                          batch(2, 3, [shipped(3, stamp(1), b"fake")]),
                                          batch(3, 4, [shipped(4, stamp(4), b"later")])])
    assert outcomes[0].durable_seq == 2
    assert all(isinstance(o, BatchRefused) for o in outcomes[1:])
    assert store.stream_state(STREAM).durable_seq == 2


def test_owner_binding_is_first_use_and_survives_reopen(tmp_path: Path) -> None:
    with ShardStore(tmp_path / "s", 0) as store:
        assert store.bind_owner(NODE, "cert:a") == "cert:a"
        assert store.bind_owner(NODE, "cert:b") == "cert:a"
    with ShardStore(tmp_path / "s", 0) as store:
        assert store.owner(NODE) == "cert:a" and store.owner(OTHER) is None


def test_a_member_without_a_stream_holds_the_frontier_at_zero(tmp_path: Path) -> None:
    with ShardStore(tmp_path / "s", 0, members={NODE, OTHER}) as store:
        assert store.frontier() == Stamp.ZERO and store.missing_members() == [NODE, OTHER]
        store.ingest(STREAM, batch(0, 1, [shipped(1, stamp(1))], stable=stamp(5)))
        assert store.frontier() == Stamp.ZERO and store.missing_members() == [OTHER]
        other = StreamKey(OTHER, "log-o")
        store.ingest(other, batch(0, 0, stable=stamp(9, OTHER), stream=other))
        assert store.frontier() == stamp(5)


def test_retire_needs_every_record_held_and_no_gap(tmp_path: Path) -> None:
    with ShardStore(tmp_path / "s", 0) as store:
        store.ingest(STREAM, batch(0, 3, [shipped(2, stamp(2))], stable=stamp(3)))
        with pytest.raises(RetireRefused, match="only through seq 3"):
            store.retire(STREAM, 5)
        with pytest.raises(RetireRefused, match="no stream"):
            store.retire(StreamKey(NODE, "never"), 0)
        store.retire(STREAM, 3)
        assert store.streams() == {} and store.frontier() is None
        assert store.retire(STREAM, 3).state.durable_seq == 3  # twice: a no-op
        [outcome] = store.ingest_many(STREAM, [batch(3, 4, stable=stamp(9))])
        assert isinstance(outcome, BatchRefused) and "retired" in str(outcome)
        assert store.register(STREAM).durable_seq == 3 and store.streams() == {}
        gapped = StreamKey(NODE, "gapped")
        store.ingest(gapped, IngestBatch(stream=StreamId(node_id=NODE, log_id="gapped"),
                                         after_seq=0, through_seq=4, gap=True))
        with pytest.raises(RetireRefused, match="gaps"):
            store.retire(gapped, 4)
    with ShardStore(tmp_path / "s", 0) as store:  # retirement is durable
        assert store.is_retired(STREAM) and store.records_total == 1


# -- read-ahead budget ---------------------------------------------------------------------


def test_budget_waits_for_room_and_admits_one_oversized_request() -> None:
    async def run() -> list[str]:
        budget, order = _Budget(100), []

        async def take(name: str, n: int) -> None:
            await budget.acquire(n)
            order.append(name)

        await budget.acquire(80)
        waiting = asyncio.create_task(take("second", 30))
        await asyncio.sleep(0.01)
        assert order == [] and budget.held == 80
        budget.release(80)
        await waiting
        budget.release(30)
        await take("huge", 500)  # alone it may exceed the budget
        return order

    assert asyncio.run(run()) == ["second", "huge"]


# -- status views ------------------------------------------------------------------------------


def shard_status(frontier: Stamp, streams=(), members=(), hidden: bool = False) -> ShardStatus:
    return ShardStatus(shard_id=0, frontier=frontier.to_bytes(), streams=list(streams),
                       members=list(members), streams_hidden=hidden)


def stream_status(key: StreamKey, frontier: Stamp) -> StreamStatus:
    return StreamStatus(stream=StreamId(node_id=key.node_id, log_id=key.log_id), durable_seq=1,
                        frontier=frontier.to_bytes())


def test_status_counts_members_no_shard_has_seen() -> None:
    report = ShardReport("h:1", shard_status(stamp(5), [stream_status(STREAM, stamp(5))],
                                             members=[NODE, OTHER]))
    view = overall([report])
    assert view["consistent_point"] is None and "member node 12" in view["consistent_point_reason"]
    report = ShardReport("h:1", shard_status(stamp(5), [stream_status(STREAM, stamp(5))], members=[NODE]))
    assert overall([report])["consistent_point"]["stamp"] == str(stamp(5))


def test_status_without_stream_keys_proves_nothing() -> None:
    # Hidden streams hide their gaps too: the least shard frontier is only an upper bound.
    reports = [ShardReport("h:1", shard_status(stamp(7), hidden=True)),
               ShardReport("h:2", shard_status(stamp(4), hidden=True))]
    view = overall(reports)
    assert view["consistent_point"] is None
    reason = view["consistent_point_reason"]
    assert "hidden" in reason and str(stamp(4)) in reason and "--token-file" in reason
    assert view["held_back_by"]["address"] == "h:2"
