"""Which client a lock callback from the NAS is for, sans-IO.

`LockRoutes` remembers, from the client calls it sees, which client host a
lock owner or a *_MSG cookie belongs to, so that a callback (NLM_GRANTED,
*_RES) can be sent on to the one client it is for, and which owners each
client locked with, so that they can be unlocked when it reboots. Its
tables are bounded: a callback for an owner it has forgotten goes nowhere,
and the client's own retry of a blocked lock (Linux: every 30 s) still gets
the lock.
"""

from __future__ import annotations

import collections

from nfsproxy.wire.nlm import (LOCK_ARGS, MSG_CALLS, TOWARD_CLIENT, LockOwner, NlmProc, nlm_proc, parse_cookie,
                               parse_lock_args)


__all__ = ["LockRoutes"]


class LockRoutes:
    """Which client host each lock owner and *_MSG cookie belongs to (bounded, newest kept).

    Also the client hosts that have used NLM through the proxy, each with the
    address it reached the proxy at: where the NAS's SM_NOTIFY is passed on,
    naming the proxy as that client knows it.
    """

    def __init__(self, max_entries: int = 65536):
        self.max_entries = max_entries
        self._owners: collections.OrderedDict[LockOwner, str] = collections.OrderedDict()
        self._cookies: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        #: client host -> the proxy's address as that client reached it
        self.clients: collections.OrderedDict[str, str] = collections.OrderedDict()
        #: (client host, owner) -> the NLM version it locked with
        self._lockers: collections.OrderedDict[tuple[str, LockOwner], int] = collections.OrderedDict()

    def _remember(self, table: collections.OrderedDict, key, host: str) -> None:
        table[key] = host
        table.move_to_end(key)
        while len(table) > self.max_entries:
            table.popitem(last=False)

    def note_call(self, proc: int, body: memoryview, client_host: str, proxy_host: str,
                  vers: int = 4) -> None:
        """A client's NLM call on its way to the NAS. RpcDecodeError when malformed."""
        self._remember(self.clients, client_host, proxy_host)
        p = nlm_proc(proc)
        if p is None or p not in LOCK_ARGS or p in TOWARD_CLIENT:
            return
        cookie, owner = parse_lock_args(p, body)
        self._remember(self._owners, owner, client_host)
        if p in MSG_CALLS:
            self._remember(self._cookies, cookie, client_host)
        if p in (NlmProc.LOCK, NlmProc.LOCK_MSG):
            self._remember(self._lockers, (client_host, owner), vers)

    def forget_client(self, client_host: str, name: bytes) -> list[tuple[LockOwner, int]]:
        """The client `name` at `client_host` rebooted: the owners (and their NLM
        versions) it locked with, to be unlocked; forgotten here."""
        gone = [key for key in self._lockers if key[0] == client_host and key[1].caller_name == name]
        return [(key[1], self._lockers.pop(key)) for key in gone]

    def client_for(self, proc: int, body: memoryview) -> str | None:
        """The client host a NAS-to-client NLM call is for; None when unknown.
        RpcDecodeError when malformed."""
        p = nlm_proc(proc)
        if p in (NlmProc.GRANTED, NlmProc.GRANTED_MSG):
            return self._owners.get(parse_lock_args(p, body)[1])
        if p in TOWARD_CLIENT:
            return self._cookies.pop(parse_cookie(body), None)
        return None
