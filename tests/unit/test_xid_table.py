"""XidTable: replies matched to calls one to one, whatever XIDs a client reuses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfsproxy.wire.rpc import frame_rpc_message, parse_message
from nfsproxy.relay.xid_table import XidInUse, XidTable, framed_with_xid, nas_xid_counter


def message(xid: int, body: bytes) -> memoryview:
    return memoryview(xid.to_bytes(4, "big") + body)


def test_same_xid_different_calls_get_their_own_nas_xids():
    table = XidTable(nas_xid_counter(100))
    a = table.admit(7, message(7, b"remove a"))
    b = table.admit(7, message(7, b"remove b"))
    assert (a.nas_xid, b.nas_xid) == (100, 101)
    assert table.match(101) is b and table.match(100) is a
    table.finish(b)
    assert table.match(101) is None and table.match(100) is a
    assert len(table) == 1 and table.client_xids() == 1


def test_an_identical_call_in_flight_is_a_retransmission():
    table = XidTable(nas_xid_counter(0))
    first = table.admit(7, message(7, b"remove a"))
    assert table.admit(7, message(7, b"remove a")) is None
    assert first.retransmissions == 1 and len(table) == 1
    table.finish(first)
    again = table.admit(7, message(7, b"remove a"))  # answered already: a new call
    assert again is not None and again.nas_xid != first.nas_xid


def test_nas_xids_in_flight_are_never_reused_after_wrapping():
    table = XidTable(nas_xid_counter(0xFFFFFFFF))
    stuck = table.admit(1, message(1, b"x"))
    assert stuck.nas_xid == 0xFFFFFFFF
    assert table.admit(2, message(2, b"y")).nas_xid == 0


def test_framed_with_xid_replaces_only_the_xid():
    original = message(7, b"\x00\x00\x00\x01rest of the reply")
    head, tail = framed_with_xid(0xABCD, original)
    assert head[:4] == frame_rpc_message(len(original))
    rewritten = head[4:] + bytes(tail)
    assert rewritten == (0xABCD).to_bytes(4, "big") + bytes(original[4:])
    assert tail.obj is original.obj  # the body is a view, not a copy


def test_clear_returns_every_call():
    table = XidTable(nas_xid_counter(0))
    calls = [table.admit(x % 3, message(x % 3, bytes([x]))) for x in range(9)]
    assert set(map(id, table.clear())) == set(map(id, calls))
    assert len(table) == 0 and table.client_xids() == 0


# A client's calls: (xid, body) from small sets, so reuse and identical copies are frequent;
# interleaved with NAS replies in any order (an index into the calls still in flight).
steps = st.lists(st.one_of(
    st.tuples(st.just("call"), st.integers(0, 3), st.integers(0, 2)),
    st.tuples(st.just("reply"), st.integers(0, 50)),
    st.tuples(st.just("drop"), st.integers(0, 50))), max_size=120)


@settings(max_examples=400)
@given(steps=steps)
def test_every_call_gets_exactly_one_outcome(steps):
    table = XidTable(nas_xid_counter(0xFFFFFFF0))
    in_flight: list = []
    answered: list = []
    for step in steps:
        if step[0] == "call":
            _, xid, body = step
            m = message(xid, bytes([body]) * 3)
            identical = [c for c in in_flight if c.client_xid == xid and bytes(c.message) == bytes(m)]
            call = table.admit(xid, m)
            if identical:
                assert call is None, "a retransmission in flight went to the NAS again"
            else:
                assert call is not None
                assert call.nas_xid not in {c.nas_xid for c in in_flight}
                in_flight.append(call)
        elif in_flight:
            call = in_flight.pop(step[1] % len(in_flight))
            assert table.match(call.nas_xid) is call
            table.finish(call)
            assert table.match(call.nas_xid) is None
            answered.append(call)
        assert len(table) == len(in_flight)
        assert table.client_xids() == len({c.client_xid for c in in_flight})
    assert set(map(id, table.clear())) == set(map(id, in_flight))
    assert len(table) == 0


def test_a_reply_decodes_after_the_xid_is_put_back():
    reply = bytes.fromhex("00000063 00000001 00000000 00000000 00000000 00000000".replace(" ", ""))
    head, tail = framed_with_xid(7, reply)
    header, _ = parse_message(head[4:] + bytes(tail))
    assert header.xid == 7


def test_a_call_that_keeps_its_xid_goes_to_the_nas_unchanged():
    table = XidTable(nas_xid_counter(500))
    gss = table.admit(7, message(7, b"gss call"), keep_xid=True)
    assert gss.nas_xid == 7
    assert table.admit(7, message(7, b"gss call"), keep_xid=True) is None  # a retransmission
    with pytest.raises(XidInUse):
        table.admit(7, message(7, b"another gss call"), keep_xid=True)
    assert table.admit(7, message(7, b"an auth_sys call")).nas_xid == 500
    table.finish(gss)
    assert table.admit(7, message(7, b"another gss call"), keep_xid=True).nas_xid == 7


def test_counter_xids_step_around_a_kept_one():
    table = XidTable(nas_xid_counter(7))
    table.admit(7, message(7, b"gss"), keep_xid=True)
    assert table.admit(1, message(1, b"sys")).nas_xid == 8


def test_thousands_of_calls_under_one_xid_cost_one_digest_each():
    table = XidTable(nas_xid_counter(0))
    calls = [table.admit(7, message(7, i.to_bytes(4, "big") * 64)) for i in range(20_000)]
    assert all(c is not None for c in calls) and len(table) == 20_000
    assert table.admit(7, message(7, (12345).to_bytes(4, "big") * 64)) is None
    for call in calls:
        table.finish(call)
    assert len(table) == 0 and table.client_xids() == 0


def test_finish_twice_leaves_a_later_call_alone():
    table = XidTable(nas_xid_counter(0))
    first = table.admit(7, message(7, b"a"), keep_xid=True)
    table.finish(first)
    later = table.admit(7, message(7, b"b"), keep_xid=True)
    assert later.nas_xid == first.nas_xid
    table.finish(first)
    assert table.match(7) is later and len(table) == 1
