"""`Proxy.settle_below`: the baseline waits for the calls stamped before its piece.

It must be woken by the `release` of the last call it waits for, in the same
turn of the event loop, and not by a timer: a poll costs a wake-up every
half millisecond for as long as a baseline runs, and adds its period to
every piece.
"""

from __future__ import annotations

import asyncio

import pytest

from logstore.hlc import HLC
from nfsproxy.relay.session import BackendAddress, Proxy

NO_NAS = BackendAddress("127.0.0.1", 1, 1, "/export")


def proxy() -> Proxy:
    return Proxy(NO_NAS, None, HLC(7))


async def one_turn() -> None:
    """Let every callback already scheduled run once (timers that are not yet due do not)."""
    await asyncio.sleep(0)


def timers(loop: asyncio.AbstractEventLoop) -> int:
    """Timer callbacks the loop holds (a poll would keep one scheduled)."""
    return len(loop._scheduled)  # noqa: SLF001  (asyncio.BaseEventLoop keeps them there)


def run(coro) -> None:
    asyncio.run(coro)


def test_settle_below_wakes_on_the_last_release_without_a_timer():
    async def scenario() -> None:
        p = proxy()
        p.stamp_call(1)
        p.stamp_call(2)
        mine = p.stamp_call(3)
        waiting = asyncio.create_task(p.settle_below(mine, own_key=3))
        for _ in range(5):
            await one_turn()
        assert not waiting.done()
        assert timers(asyncio.get_running_loop()) == 0, "settle_below polls with a timer"
        p.release(1)
        await one_turn()
        assert not waiting.done()  # call 2 is still in flight
        p.release(2)
        await one_turn()
        assert waiting.done() and waiting.exception() is None
    run(scenario())


def test_settle_below_ignores_later_calls_and_its_own():
    async def scenario() -> None:
        p = proxy()
        mine = p.stamp_call(1)
        p.stamp_call(2)  # stamped after the piece: replayed on top of it
        await asyncio.wait_for(p.settle_below(mine, own_key=1), timeout=10)
    run(scenario())


def test_settle_below_waits_for_a_key_held_below_it_meanwhile():
    async def scenario() -> None:
        p = proxy()
        early = p.stamp_call(1)
        mine = p.stamp_call(2)
        p.release(1)
        p.stamp_call(3)
        waiting = asyncio.create_task(p.settle_below(mine, own_key=2))
        await one_turn()
        assert waiting.done()
        p.release(2)
        p.release(3)
        # A key held below the piece while it waits is waited for too.
        p.stamp_call(4)
        waiting = asyncio.create_task(p.settle_below(p.stamp_call(5), own_key=5))
        await one_turn()
        p.hold(6, early)
        p.release(4)
        await one_turn()
        assert not waiting.done()
        p.release(6)
        await one_turn()
        assert waiting.done()
    run(scenario())


def test_a_cancelled_settle_below_leaves_no_waiter():
    async def scenario() -> None:
        p = proxy()
        p.stamp_call(1)
        waiting = asyncio.create_task(p.settle_below(p.stamp_call(2), own_key=2))
        await one_turn()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert p._settling == []  # noqa: SLF001
        p.release(1)
    run(scenario())


def test_many_waiters_each_wake_when_their_own_calls_are_released():
    async def scenario() -> None:
        p = proxy()
        keys = list(range(100))
        stamps = [p.stamp_call(k) for k in keys]
        waiters = [asyncio.create_task(p.settle_below(s)) for s in stamps]
        await one_turn()
        for k in keys:
            p.release(k)
            await one_turn()
            # settle_below(stamps[j]) waits for keys < j: released now up to k.
            assert [w.done() for w in waiters] == [j <= k + 1 for j in keys]
    run(scenario())
