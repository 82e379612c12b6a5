"""NLM (program 100021, versions 1, 3, 4) and NSM (program 100024 v1), sans-IO.

Locks are not mutations: the proxy journals nothing of them. It relays a
client's lock calls to the NAS's lock manager and parses only what it needs
to route the calls that go the other way. Lock calls (NLM) and status
monitor calls (NSM) go from client to server, but some come back:

* the NAS's NLM_GRANTED / NLM_GRANTED_MSG for a blocked lock, and its
  *_RES replies to a client's *_MSG calls, are calls from the NAS to "the
  client", which is the proxy from where the NAS sits;
* the NAS's SM_NOTIFY (it rebooted) goes to every host it monitors: again
  the proxy, on behalf of every client that holds locks through it.

And a client's own SM_NOTIFY (it rebooted, so its locks are void) cannot
simply go on to the NAS: the NAS monitors the proxy's address, which stands
for every client behind it. The proxy releases that client's locks itself.

This module is the codec; `nfsproxy.relay.lock_routes` keeps who locked
what, to route those calls.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Final

from nfsproxy.wire.rpc import RpcDecodeError
from nfsproxy.wire.xdr import I32, Packer, Unpacker, XdrError

__all__ = ["NLM_PROGRAM", "NLM_VERSIONS", "NSM_PROGRAM", "NSM_VERSION", "NlmProc", "SmProc",
           "TOWARD_CLIENT", "LockOwner", "parse_lock_args", "parse_cookie", "nlm_proc", "MSG_CALLS", "encode_sm_notify", "decode_sm_notify",
           "encode_unlock", "PROCEDURE_NAMES"]

NLM_PROGRAM: Final = 100021
NLM_VERSIONS: Final = (1, 3, 4)
NSM_PROGRAM: Final = 100024
NSM_VERSION: Final = 1

LM_MAXSTRLEN: Final = 1024  # caller_name, mon_name
MAXNETOBJ_SZ: Final = 1024  # cookie, fh, oh


class NlmProc(enum.IntEnum):
    """NLM procedure numbers (the same in versions 1, 3 and 4)."""

    NULL = 0
    TEST = 1
    LOCK = 2
    CANCEL = 3
    UNLOCK = 4
    GRANTED = 5
    TEST_MSG = 6
    LOCK_MSG = 7
    CANCEL_MSG = 8
    UNLOCK_MSG = 9
    GRANTED_MSG = 10
    TEST_RES = 11
    LOCK_RES = 12
    CANCEL_RES = 13
    UNLOCK_RES = 14
    GRANTED_RES = 15
    SHARE = 20
    UNSHARE = 21
    NM_LOCK = 22
    FREE_ALL = 23


class SmProc(enum.IntEnum):
    """NSM (status monitor) procedure numbers."""

    NULL = 0
    STAT = 1
    MON = 2
    UNMON = 3
    UNMON_ALL = 4
    SIMU_CRASH = 5
    NOTIFY = 6


#: NLM procedures a server calls on a client (callbacks and async replies).
TOWARD_CLIENT: Final = frozenset({NlmProc.GRANTED, NlmProc.GRANTED_MSG, NlmProc.TEST_RES,
                                  NlmProc.LOCK_RES, NlmProc.CANCEL_RES, NlmProc.UNLOCK_RES})

#: Procedures whose arguments hold a lock (after the cookie and these booleans).
LOCK_ARGS: Final = {NlmProc.TEST: 1, NlmProc.TEST_MSG: 1, NlmProc.LOCK: 2, NlmProc.LOCK_MSG: 2,
                     NlmProc.CANCEL: 2, NlmProc.CANCEL_MSG: 2, NlmProc.UNLOCK: 0,
                     NlmProc.UNLOCK_MSG: 0, NlmProc.GRANTED: 1, NlmProc.GRANTED_MSG: 1}
#: Client calls whose answer comes back as a *_RES call carrying their cookie.
MSG_CALLS: Final = frozenset({NlmProc.TEST_MSG, NlmProc.LOCK_MSG, NlmProc.CANCEL_MSG,
                               NlmProc.UNLOCK_MSG})

#: (program, procedure) -> name, for metrics labels.
PROCEDURE_NAMES: Final = {**{(NLM_PROGRAM, int(p)): p.name for p in NlmProc},
                          **{(NSM_PROGRAM, int(p)): p.name for p in SmProc}}


@dataclasses.dataclass(frozen=True, slots=True)
class LockOwner:
    """Who asks for a lock on which file: what a GRANTED callback names."""

    caller_name: bytes
    fh: bytes
    oh: bytes
    svid: int


def parse_lock_args(proc: NlmProc, body: memoryview) -> tuple[bytes, LockOwner]:
    """The cookie and the lock owner of a call in `LOCK_ARGS` (any NLM version:
    the fields before the range are the same in all)."""
    u = Unpacker(body)
    try:
        cookie = bytes(u.var(MAXNETOBJ_SZ))
        for _ in range(LOCK_ARGS[proc]):
            u.u32()  # block, exclusive
        caller = bytes(u.var(LM_MAXSTRLEN))
        fh = bytes(u.var(MAXNETOBJ_SZ))
        oh = bytes(u.var(MAXNETOBJ_SZ))
        svid = u.i32()
    except XdrError as e:
        raise RpcDecodeError(f"bad NLM {proc.name} arguments: {e}") from None
    return cookie, LockOwner(caller, fh, oh, svid)


def encode_unlock(vers: int, owner: LockOwner, cookie: bytes) -> bytes:
    """NLM UNLOCK arguments that release every lock `owner` holds on its file
    (offset 0, length 0: to the end of the file)."""
    p = Packer()
    p.var(cookie, MAXNETOBJ_SZ)
    p.var(owner.caller_name, LM_MAXSTRLEN)
    p.var(owner.fh, MAXNETOBJ_SZ)
    p.var(owner.oh, MAXNETOBJ_SZ)
    I32.pack(p, owner.svid)
    for _ in range(2):
        (p.u64 if vers == 4 else p.u32)(0)
    return p.getvalue()


def parse_cookie(body: memoryview) -> bytes:
    try:
        return bytes(Unpacker(body).var(MAXNETOBJ_SZ))
    except XdrError as e:
        raise RpcDecodeError(f"bad NLM result arguments: {e}") from None


def decode_sm_notify(body: memoryview) -> tuple[bytes, int]:
    """SM_NOTIFY's (mon_name, state); RpcDecodeError when malformed."""
    u = Unpacker(body)
    try:
        name = bytes(u.var(LM_MAXSTRLEN))
        state = u.i32()
        u.done()
    except XdrError as e:
        raise RpcDecodeError(f"bad SM_NOTIFY arguments: {e}") from None
    return name, state


def encode_sm_notify(mon_name: bytes, state: int) -> bytes:
    """SM_NOTIFY's arguments."""
    p = Packer()
    p.var(mon_name, LM_MAXSTRLEN)
    I32.pack(p, state)
    return p.getvalue()


def nlm_proc(proc: int) -> NlmProc | None:
    try:
        return NlmProc(proc)
    except ValueError:
        return None
