"""`nfsproxy.wire.nlm`: which client a callback of the NAS is for, and the NSM codec."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from nfsproxy.relay.lock_routes import LockRoutes
from nfsproxy.wire.nlm import (TOWARD_CLIENT, LockOwner, NlmProc, decode_sm_notify, encode_sm_notify,
                               encode_unlock, parse_lock_args)
from nfsproxy.wire.rpc import RpcDecodeError
from nfsproxy.wire.xdr import Packer


def lock_args(proc: NlmProc, *, cookie=b"c1", caller=b"guest-a", fh=b"\x01fh", oh=b"7@guest-a",
              svid=7, v4=True) -> memoryview:
    """Arguments of an NLM call that carries a lock (the cookie first, then its booleans)."""
    p = Packer()
    p.var(cookie, 1024)
    flags = {NlmProc.LOCK: 2, NlmProc.CANCEL: 2, NlmProc.TEST: 1, NlmProc.GRANTED: 1,
             NlmProc.GRANTED_MSG: 1, NlmProc.LOCK_MSG: 2, NlmProc.UNLOCK: 0}[proc]
    for _ in range(flags):
        p.u32(1)
    p.var(caller, 1024)
    p.var(fh, 1024)
    p.var(oh, 1024)
    p.i32(svid)
    if v4:
        p.u64(0)
        p.u64(0)
    else:
        p.u32(0)
        p.u32(0)
    if proc in (NlmProc.LOCK, NlmProc.LOCK_MSG):
        p.u32(0)  # reclaim
        p.i32(3)  # state
    return memoryview(p.getvalue())


def res_args(cookie: bytes) -> memoryview:
    p = Packer()
    p.var(cookie, 1024)
    p.u32(0)
    return memoryview(p.getvalue())


@pytest.mark.parametrize("v4", [True, False])
def test_a_granted_callback_goes_to_the_client_that_asked_for_that_lock(v4: bool):
    routes = LockRoutes()
    routes.note_call(NlmProc.LOCK, lock_args(NlmProc.LOCK, v4=v4), "10.0.0.5", "10.0.0.1")
    routes.note_call(NlmProc.LOCK, lock_args(NlmProc.LOCK, caller=b"guest-b", oh=b"7@guest-b", v4=v4),
                     "10.0.0.6", "10.0.0.1")
    for proc in (NlmProc.GRANTED, NlmProc.GRANTED_MSG):
        # The NAS's cookie is its own: only the lock names the client.
        assert routes.client_for(proc, lock_args(proc, cookie=b"nas", v4=v4)) == "10.0.0.5"
        assert routes.client_for(proc, lock_args(proc, caller=b"guest-b", oh=b"7@guest-b",
                                                 v4=v4)) == "10.0.0.6"
        assert routes.client_for(proc, lock_args(proc, svid=8, v4=v4)) is None
        assert routes.client_for(proc, lock_args(proc, fh=b"other", v4=v4)) is None


def test_an_async_reply_goes_to_the_client_whose_msg_call_had_its_cookie_once():
    routes = LockRoutes()
    routes.note_call(NlmProc.LOCK_MSG, lock_args(NlmProc.LOCK_MSG, cookie=b"k9"), "10.0.0.5", "p")
    assert routes.client_for(NlmProc.LOCK_RES, res_args(b"k9")) == "10.0.0.5"
    assert routes.client_for(NlmProc.LOCK_RES, res_args(b"k9")) is None  # answered
    assert routes.client_for(NlmProc.UNLOCK_RES, res_args(b"zz")) is None


def test_clients_are_remembered_with_the_address_they_reached_the_proxy_at():
    routes = LockRoutes()
    routes.note_call(NlmProc.NULL, memoryview(b""), "10.0.0.5", "10.0.0.1")
    routes.note_call(NlmProc.UNLOCK, lock_args(NlmProc.UNLOCK), "127.0.0.1", "127.0.0.1")
    assert dict(routes.clients) == {"10.0.0.5": "10.0.0.1", "127.0.0.1": "127.0.0.1"}


def test_the_tables_are_bounded_and_keep_the_newest():
    routes = LockRoutes(max_entries=2)
    for svid in range(5):
        routes.note_call(NlmProc.LOCK, lock_args(NlmProc.LOCK, svid=svid), f"10.0.0.{svid}", "p")
    assert routes.client_for(NlmProc.GRANTED, lock_args(NlmProc.GRANTED, svid=4)) == "10.0.0.4"
    assert routes.client_for(NlmProc.GRANTED, lock_args(NlmProc.GRANTED, svid=0)) is None
    assert len(routes.clients) == 2


def test_sm_notify_round_trips():
    assert decode_sm_notify(memoryview(encode_sm_notify(b"10.0.0.1", 5))) == (b"10.0.0.1", 5)
    with pytest.raises(RpcDecodeError):
        decode_sm_notify(memoryview(encode_sm_notify(b"x", 5) + b"\0\0\0\0"))


@given(proc=st.sampled_from(list(NlmProc)), body=st.binary(max_size=80))
def test_garbage_arguments_are_a_decode_error_never_a_crash(proc: NlmProc, body: bytes):
    routes = LockRoutes()
    for step in (lambda: routes.note_call(proc, memoryview(body), "h", "p"),
                 lambda: routes.client_for(proc, memoryview(body))):
        try:
            step()
        except RpcDecodeError:
            pass


def test_callbacks_are_the_server_to_client_procedures():
    assert NlmProc.GRANTED_RES not in TOWARD_CLIENT  # the client's answer to GRANTED_MSG
    assert {NlmProc.GRANTED, NlmProc.GRANTED_MSG, NlmProc.LOCK_RES} <= TOWARD_CLIENT


def test_a_rebooted_client_gives_up_the_owners_it_locked_with_and_only_those():
    routes = LockRoutes()
    routes.note_call(NlmProc.LOCK, lock_args(NlmProc.LOCK), "127.0.0.1", "p", vers=4)
    routes.note_call(NlmProc.LOCK, lock_args(NlmProc.LOCK, svid=9, v4=False), "127.0.0.1", "p", vers=3)
    routes.note_call(NlmProc.LOCK, lock_args(NlmProc.LOCK, caller=b"guest-b"), "127.0.0.1", "p")
    routes.note_call(NlmProc.UNLOCK, lock_args(NlmProc.UNLOCK, svid=5), "127.0.0.1", "p")
    gone = routes.forget_client("127.0.0.1", b"guest-a")
    assert sorted((owner.svid, vers) for owner, vers in gone) == [(7, 4), (9, 3)]
    assert routes.forget_client("127.0.0.1", b"guest-a") == []
    assert [o.caller_name for o, _ in routes.forget_client("127.0.0.1", b"guest-b")] == [b"guest-b"]


@pytest.mark.parametrize("vers, range_bytes", [(4, 16), (1, 8)])
def test_unlock_releases_the_owners_whole_file(vers: int, range_bytes: int):
    owner = LockOwner(b"guest-a", b"\x01fh", b"7@guest-a", 7)
    body = encode_unlock(vers, owner, b"ck")
    assert body.endswith(b"\0" * range_bytes)
    assert parse_lock_args(NlmProc.UNLOCK, memoryview(body)) == (b"ck", owner)
