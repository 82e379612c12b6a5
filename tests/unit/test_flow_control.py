"""FlowControl: a connection reads again only when no reason to pause is left."""

from __future__ import annotations

from hypothesis import given, strategies as st

from nfsproxy.relay.flow import FlowControl


class Transport:
    """Records what the flow control asked of it, as asyncio's transports take it."""

    def __init__(self) -> None:
        self.reading = True
        self.closing = False
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False
        self.calls.append("pause")

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True
        self.calls.append("resume")

    def is_closing(self) -> bool:
        return self.closing


def test_one_reason_clearing_never_undoes_another():
    # The case that matters: a NAS buffer drains while a call is held for LOG
    # space; the client must stay unread until the LOG has room.
    t, flow = Transport(), FlowControl()
    flow.attach(t)
    flow.pause("nas link")
    flow.pause("held for LOG space")
    flow.resume("nas link")
    assert not t.reading and flow.paused
    flow.resume("held for LOG space")
    assert t.reading and t.calls == ["pause", "resume"]


def test_reasons_given_before_the_connection_exists_apply_when_it_does():
    t, flow = Transport(), FlowControl()
    flow.pause("client write buffer full")
    flow.attach(t)
    assert not t.reading
    flow.resume("client write buffer full")
    assert t.reading


def test_a_closing_transport_is_left_alone_and_unknown_reasons_are_ignored():
    t, flow = Transport(), FlowControl()
    flow.attach(t)
    flow.resume("never paused")
    assert t.calls == []
    flow.pause("x")
    t.closing = True
    flow.resume("x")
    assert t.calls == ["pause"] and not flow.paused


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abc")), max_size=40))
def test_reading_iff_no_reason_is_held(steps):
    t, flow = Transport(), FlowControl()
    flow.attach(t)
    held: set[str] = set()
    for pause, reason in steps:
        if pause:
            flow.pause(reason)
            held.add(reason)
        else:
            flow.resume(reason)
            held.discard(reason)
        assert t.reading == (not held) == (not flow.paused)
