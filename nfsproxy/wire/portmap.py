"""Portmapper version 2 (RFC 1833 section 3) as XDR schemas, sans-IO.

Program 100000, version 2: enough for the proxy to answer GETPORT for the
programs it serves on its one port. `pmaplist` decodes to a tuple of
`Mapping`. CALLIT's `args` and `res` are opaque bodies of another program,
kept as zero-copy memoryviews. `answer` is the one portmapper the proxy and
the export both run: it answers from a fixed list of mappings;
`answer_rpcbind` does the same for rpcbind v3/v4 (RFC 1833), whose GETADDR
Linux's lock manager asks.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Final

from nfsproxy.wire.rpc import AcceptStat, RpcCall, RpcReply, decode_body, encode_reply
from nfsproxy.wire.xdr import BOOL, U32, VOID, Codec, LinkedList, Opaque, Packer, String, xdr_struct, xf

__all__ = [
    "PMAP_PROG", "PMAP_VERS", "PMAP_PORT", "IPPROTO_TCP", "IPPROTO_UDP", "PmapProc",
    "Mapping", "PMAPLIST", "CallArgs", "CallResult", "CODECS", "answer", "answer_rpcbind", "Rpcb", "universal_address",
]

PMAP_PROG: Final = 100000
PMAP_VERS: Final = 2
PMAP_PORT: Final = 111

IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17


class PmapProc(enum.IntEnum):
    """Portmapper v2 procedure numbers."""

    NULL = 0
    SET = 1
    UNSET = 2
    GETPORT = 3
    DUMP = 4
    CALLIT = 5


@xdr_struct
class Mapping:
    """A (program, version, protocol) -> port mapping; `prot` is IPPROTO_*."""

    prog: int = xf(U32)
    vers: int = xf(U32)
    prot: int = xf(U32)
    port: int = xf(U32)


PMAPLIST: Codec = LinkedList(Mapping.xdr)
"""pmaplist: a tuple of Mapping."""


@xdr_struct
class CallArgs:
    """CALLIT arguments (the RFC's call_args); `args` is the callee's encoded arguments."""

    prog: int = xf(U32)
    vers: int = xf(U32)
    proc: int = xf(U32)
    args: memoryview = xf(Opaque())


@xdr_struct
class CallResult:
    """CALLIT result (the RFC's call_result); `res` is the callee's encoded results."""

    port: int = xf(U32)
    res: memoryview = xf(Opaque())


CODECS: Final[dict[PmapProc, tuple[Codec, Codec]]] = {
    PmapProc.NULL: (VOID, VOID),
    PmapProc.SET: (Mapping.xdr, BOOL),
    PmapProc.UNSET: (Mapping.xdr, BOOL),
    PmapProc.GETPORT: (Mapping.xdr, U32),
    PmapProc.DUMP: (VOID, PMAPLIST),
    PmapProc.CALLIT: (CallArgs.xdr, CallResult.xdr),
}



def answer(call: RpcCall, body: memoryview | bytes, mappings: Sequence[Mapping]) -> bytes:
    """The encoded reply to portmapper v2 call `call`, served from `mappings`.

    GETPORT finds a mapping by (prog, vers, prot) and answers its port, or 0;
    SET and UNSET are refused (registrations belong to the host's own
    portmapper). Raises RpcDecodeError for malformed arguments.
    """
    p = Packer()
    header = RpcReply(call.xid)
    if call.proc == PmapProc.NULL:
        decode_body(VOID, body)
        encode_reply(header, p)
    elif call.proc == PmapProc.GETPORT:
        want = decode_body(Mapping.xdr, body)
        port = next((m.port for m in mappings
                     if (m.prog, m.vers, m.prot) == (want.prog, want.vers, want.prot)), 0)
        encode_reply(header, p)
        U32.pack(p, port)
    elif call.proc == PmapProc.DUMP:
        decode_body(VOID, body)
        encode_reply(header, p)
        PMAPLIST.pack(p, tuple(mappings))
    elif call.proc in (PmapProc.SET, PmapProc.UNSET):
        decode_body(Mapping.xdr, body)
        encode_reply(header, p)
        BOOL.pack(p, False)
    else:
        encode_reply(RpcReply(call.xid, accept_stat=AcceptStat.PROC_UNAVAIL), p)
    return p.getvalue()


_NETIDS: Final = {b"tcp": IPPROTO_TCP, b"tcp6": IPPROTO_TCP, b"udp": IPPROTO_UDP, b"udp6": IPPROTO_UDP}
_RPCB_GETVERSADDR: Final = 9  # rpcbind v4


@xdr_struct
class Rpcb:
    """rpcbind v3/v4 arguments (RFC 1833 section 2.1: struct rpcb)."""

    prog: int = xf(U32)
    vers: int = xf(U32)
    netid: bytes = xf(String(255))
    addr: bytes = xf(String(255))
    owner: bytes = xf(String(255))


def universal_address(host: str, port: int) -> bytes:
    """RFC 5665 universal address of an IPv4 or IPv6 `host` and `port`."""
    host = host.removeprefix("::ffff:") if "." in host else host
    return f"{host}.{port >> 8}.{port & 0xFF}".encode()


def answer_rpcbind(call: RpcCall, body: memoryview | bytes, mappings: Sequence[Mapping], host: str) -> bytes:
    """The encoded reply to rpcbind v3/v4 call `call`, served from `mappings`.

    GETADDR (and v4's GETVERSADDR) answers the universal address of `host`
    (this end of the caller's connection) at the mapping's port, or "".
    Raises RpcDecodeError for malformed arguments.
    """
    p = Packer()
    header = RpcReply(call.xid)
    if call.proc == PmapProc.NULL:
        decode_body(VOID, body)
        encode_reply(header, p)
    elif call.proc in (PmapProc.GETPORT, _RPCB_GETVERSADDR):  # GETADDR is procedure 3 too
        want = decode_body(Rpcb.xdr, body)
        prot = _NETIDS.get(want.netid, -1)
        port = next((m.port for m in mappings if (m.prog, m.vers, m.prot) == (want.prog, want.vers, prot)), 0)
        encode_reply(header, p)
        String().pack(p, universal_address(host, port) if port else b"")
    elif call.proc in (PmapProc.SET, PmapProc.UNSET):
        decode_body(Rpcb.xdr, body)
        encode_reply(header, p)
        BOOL.pack(p, False)
    else:
        encode_reply(RpcReply(call.xid, accept_stat=AcceptStat.PROC_UNAVAIL), p)
    return p.getvalue()
