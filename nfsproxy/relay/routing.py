"""Where each incoming RPC call goes, and the replies the proxy makes itself.

Sans-IO. One proxy port serves NFS, MOUNT and a portmapper answer; the NAS
has NFS and MOUNT on separate ports. `route()` decides per call:

* MOUNT (any version the NAS offers) goes to the NAS's MOUNT port;
* NFSv3 and any program we do not journal (NLM, NFSACL, ...) go to the NAS's
  NFS port untouched, so the NAS gives its own answer;
* NFS versions other than 3 are refused with PROG_MISMATCH(3, 3): relaying
  them would let mutations past the journal unrecorded;
* portmapper v2 is answered here, pointing NFS, MOUNT and NFSACL v3 at this
  port.

NFSACL is advertised whether or not the NAS serves it: its calls go to the
NAS's NFS port, so a NAS without it answers PROG_UNAVAIL, which clients
take as "no ACL support" (Linux then falls back to the mode bits, as with
a NAS that never registered it). Linux's client does not even ask: it
sends NFSACL on its NFS connection.
"""

from __future__ import annotations

import enum

from nfsproxy.wire.mount import MOUNT_PROGRAM as MOUNT_PROG
from nfsproxy.wire import portmap
from nfsproxy.wire.portmap import IPPROTO_TCP, PMAP_PROG, PMAP_VERS, Mapping
from nfsproxy.wire.rpc import AcceptStat, RejectStat, RpcCall, RpcReply, ReplyStat, encode_reply, RPC_VERSION

__all__ = ["Route", "route", "NFS_PROGRAM", "reject", "answer_portmap"]

from nfsproxy.wire.nfs3 import NFS_PROGRAM
from nfsproxy.wire.nfsacl import NFSACL_PROGRAM, NFSACL_V3
NFS_VERSION = 3
MOUNT_VERSIONS = (1, 3)


class Route(enum.Enum):
    NFS = "nfs"
    MOUNT = "mount"
    PORTMAP = "portmap"
    REJECT = "reject"


def route(call: RpcCall) -> Route:
    if call.rpcvers != RPC_VERSION:
        return Route.REJECT
    if call.prog == MOUNT_PROG:
        return Route.MOUNT
    if call.prog == PMAP_PROG:
        return Route.PORTMAP if call.vers == PMAP_VERS else Route.REJECT
    if call.prog == NFS_PROGRAM and call.vers != NFS_VERSION:
        return Route.REJECT
    return Route.NFS


def reject(call: RpcCall) -> bytes:
    """The RPC-level refusal for a call that `route` sent to REJECT."""
    if call.rpcvers != RPC_VERSION:
        reply = RpcReply(call.xid, ReplyStat.MSG_DENIED, None, mismatch=(RPC_VERSION, RPC_VERSION),
                         reject_stat=RejectStat.RPC_MISMATCH)
    elif call.prog == PMAP_PROG:
        reply = RpcReply(call.xid, accept_stat=AcceptStat.PROG_MISMATCH, mismatch=(PMAP_VERS, PMAP_VERS))
    else:
        reply = RpcReply(call.xid, accept_stat=AcceptStat.PROG_MISMATCH,
                         mismatch=(NFS_VERSION, NFS_VERSION))
    return encode_reply(reply).getvalue()


def _mappings(port: int) -> tuple[Mapping, ...]:
    return (Mapping(PMAP_PROG, PMAP_VERS, IPPROTO_TCP, port),
            Mapping(NFS_PROGRAM, NFS_VERSION, IPPROTO_TCP, port),
            *(Mapping(MOUNT_PROG, v, IPPROTO_TCP, port) for v in MOUNT_VERSIONS),
            Mapping(NFSACL_PROGRAM, NFSACL_V3, IPPROTO_TCP, port))


def answer_portmap(call: RpcCall, body: memoryview, port: int) -> bytes:
    """Answer a portmapper v2 call: NFS v3, MOUNT and NFSACL v3 over TCP live on `port`.

    Raises RpcDecodeError for malformed arguments.
    """
    return portmap.answer(call, body, _mappings(port))
