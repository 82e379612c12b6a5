"""Matching the NAS's replies to one client's calls, sans-IO.

A client may reuse an XID while its first call is still in flight: a
retransmission, a buggy client, or a hostile one. Keyed by the client's XID,
a second call would overwrite the first, and the NAS's duplicate request
cache (DRC) makes it worse: a DRC such as ganesha's drops a same-XID call
that arrives while the first is in progress, or answers it from the cache
without running it, so "first reply answers the oldest call with that XID" can leave
a call waiting forever or journal an outcome the NAS never produced.

So the relay never lets the NAS see a client's XID. Every call gets its own
XID on the NAS connection (`XidTable.admit` rewrites the 4 XID bytes going
out; `Call.client_xid` maps the reply back), unique among the calls in
flight and taken from a proxy-wide counter, so the NAS's DRC never sees a
duplicate: each NAS reply is one real execution of exactly one call, and
matching is a dict lookup that cannot overwrite anything.

What the DRC did for the client is then the proxy's job: a byte-identical
retransmission of a call still in flight is not sent again; the original's
reply answers it (ganesha does the same for an in-progress duplicate). A
retransmission that arrives after the reply went out is relayed as a new
call and journaled with whatever outcome the NAS gives it, so the journal
stays true even where a DRC would have hidden the second execution.

One exception: an RPCSEC_GSS call's verifier is a checksum over its header,
XID included, so its XID must reach the NAS unchanged (`keep_xid`). Such a
call may not reuse an XID still in flight with another call: a client that
does so is refused (`XidInUse`), as no reply could be told apart.

`XidTable` is per client connection and holds only calls in flight: a call
leaves it when its reply is matched or it is dropped unsent (`finish`), or
when the session ends (`clear`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
import struct
from typing import Any, Callable, Iterator

from nfsproxy.wire.rpc import RpcDecodeError

__all__ = ["Call", "XidTable", "XidInUse", "nas_xid_counter", "framed_with_xid"]

_MARK_AND_XID = struct.Struct(">II")
_LAST_FRAGMENT = 0x80000000
MAX_FRAGMENT_BYTES = _LAST_FRAGMENT - 1


class XidInUse(RpcDecodeError):
    """A call that must keep its XID reuses one still in flight: close that client."""


@dataclasses.dataclass(slots=True, eq=False)
class Call:
    """One client call on its way to the NAS, or waiting for its reply."""

    client_xid: int
    nas_xid: int
    message: memoryview          # as the client sent it (kept, not copied, until the reply)
    route: Any = None            # which NAS connection carries it
    pending: Any = None          # what capture must complete (None: not watched)
    proc_key: tuple[int, int] = (0, 0)   # (program, procedure), for the stats
    arrival_s: float = 0.0       # when the call arrived (perf_counter), for latency
    clamp_fsinfo: bool = False   # an FSINFO whose reply gets clamped
    sent: bool = False           # handed to the NAS connection
    retransmissions: int = 0     # identical copies absorbed while in flight
    digest: bytes | None = None  # of `message`, once another call in flight shares its XID

def nas_xid_counter(start: int | None = None) -> Callable[[], int]:
    """A source of NAS-side XIDs, one per proxy.

    It starts at a random point so that a restarted proxy, whose new NAS
    connection may reuse an old source port (a NAS may keep a closed TCP
    connection's DRC for its address), does not replay old XIDs into it.
    """
    counter = itertools.count(random.getrandbits(32) if start is None else start)
    return lambda: next(counter) & 0xFFFFFFFF


def framed_with_xid(xid: int, message: bytes | memoryview) -> tuple[bytes, bytes | memoryview]:
    """`message` (an RPC message, at most `MAX_FRAGMENT_BYTES`) framed for TCP
    with its XID replaced, as two parts: the record mark and the new XID, then
    the rest of the message (a view when `message` is one: no copy)."""
    return _MARK_AND_XID.pack(_LAST_FRAGMENT | len(message), xid), message[4:]


class _SameXid:
    """The calls in flight under one client XID, once there is more than one.

    Retransmissions are then found by digest, in a dict: a client sending
    thousands of calls under one XID costs one digest each, not a
    comparison with every earlier one. The common path (an XID alone in
    flight) never reads a body twice.
    """

    __slots__ = ("calls", "by_digest")

    def __init__(self, alone: Call) -> None:
        alone.digest = _digest(alone.message)
        self.calls: dict[int, Call] = {alone.nas_xid: alone}
        self.by_digest: dict[bytes, Call] = {alone.digest: alone}


class XidTable:
    """The calls of one client connection that the NAS has not answered yet."""

    def __init__(self, next_nas_xid: Callable[[], int]):
        self._next_nas_xid = next_nas_xid
        self._by_nas: dict[int, Call] = {}
        self._by_client: dict[int, Call | _SameXid] = {}  # a lone call, or several

    def admit(self, client_xid: int, message: memoryview, route: Any = None, pending: Any = None,
              proc_key: tuple[int, int] = (0, 0), arrival_s: float = 0.0, clamp_fsinfo: bool = False,
              keep_xid: bool = False) -> Call | None:
        """Take a call in; None when it is a retransmission of a call in flight.

        A retransmission is byte-identical to a call in flight with the same
        XID (counted on that call). Anything else, the same XID included,
        is a new call with a NAS XID of its own; with `keep_xid` that is the
        client's XID, and XidInUse is raised when it is in flight already.
        """
        same = self._by_client.get(client_xid)
        digest = None
        if same is not None:
            if type(same) is Call:
                same = self._by_client[client_xid] = _SameXid(same)
            digest = _digest(message)
            earlier = same.by_digest.get(digest)
            if earlier is not None:
                earlier.retransmissions += 1
                return None
        if keep_xid:
            nas_xid = client_xid
            if nas_xid in self._by_nas:
                raise XidInUse(f"XID {client_xid:#010x} is still in flight with another call")
        else:
            nas_xid = self._next_nas_xid()
            while nas_xid in self._by_nas:  # after 2^32 calls, or a kept XID in the way
                nas_xid = self._next_nas_xid()
        call = Call(client_xid, nas_xid, message, route, pending, proc_key, arrival_s, clamp_fsinfo)
        self._by_nas[nas_xid] = call
        if same is None:
            self._by_client[client_xid] = call
        else:
            call.digest = digest
            same.calls[nas_xid] = call
            same.by_digest[digest] = call
        return call

    def match(self, nas_xid: int) -> Call | None:
        """The call a NAS reply answers (still in the table until `finish`)."""
        return self._by_nas.get(nas_xid)

    def finish(self, call: Call) -> None:
        """The call is answered (or given up): forget it."""
        if self._by_nas.get(call.nas_xid) is not call:
            return  # finished already
        del self._by_nas[call.nas_xid]
        same = self._by_client[call.client_xid]
        if same is call:
            del self._by_client[call.client_xid]
            return
        del same.calls[call.nas_xid]
        if same.by_digest.get(call.digest) is call:
            del same.by_digest[call.digest]
        if not same.calls:
            del self._by_client[call.client_xid]

    def clear(self) -> list[Call]:
        """Forget every call; returns them (the session is over)."""
        calls = list(self._by_nas.values())
        self._by_nas.clear()
        self._by_client.clear()
        return calls

    def __iter__(self) -> Iterator[Call]:
        return iter(list(self._by_nas.values()))

    def __len__(self) -> int:
        return len(self._by_nas)

    def client_xids(self) -> int:
        """How many distinct client XIDs are in flight (for checks: never above len())."""
        return len(self._by_client)


def _digest(message: memoryview) -> bytes:
    # A cryptographic digest: a client cannot make two different calls look alike.
    return hashlib.blake2b(message, digest_size=16).digest()
