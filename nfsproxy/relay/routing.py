"""Where each incoming RPC call goes, and the replies the proxy makes itself.

Sans-IO. One proxy port serves NFS, MOUNT and a portmapper answer; the NAS
has NFS and MOUNT on separate ports. `route()` decides per call:

* MOUNT (any version the NAS offers) goes to the NAS's MOUNT port;
* NFSv3 and any other program we do not journal (NFSACL, ...) go to the NAS's
  NFS port untouched, so the NAS gives its own answer;
* NFS versions other than 3 are refused with PROG_MISMATCH(3, 3): relaying
  them would let mutations past the journal unrecorded;
* NLM and NSM (locking, `nfsproxy.wire.nlm`) go to the NAS's lock manager and
  status monitor, wherever the NAS's portmapper says they listen; their
  calls from the NAS to a client are routed to that client by the relay;
* portmapper v2, and rpcbind v3/v4 GETADDR, are answered here, pointing NFS,
  MOUNT, NFSACL v3, NLM and NSM at this port.

NFSACL is advertised whether or not the NAS serves it: its calls go to the
NAS's NFS port, so a NAS without it answers PROG_UNAVAIL, which clients
take as "no ACL support" (Linux then falls back to the mode bits, as with
a NAS that never registered it). Linux's client does not even ask: it
sends NFSACL on its NFS connection.
"""

from __future__ import annotations

from nfsproxy.wire import portmap
from nfsproxy.wire.mount import MOUNT_PROGRAM as MOUNT_PROG
from nfsproxy.wire.nfs3 import NFS_PROGRAM
from nfsproxy.wire.nfsacl import NFSACL_PROGRAM, NFSACL_V3
from nfsproxy.wire.nlm import NLM_PROGRAM, NLM_VERSIONS, NSM_PROGRAM, NSM_VERSION
from nfsproxy.wire.portmap import IPPROTO_TCP, IPPROTO_UDP, PMAP_PROG, PMAP_VERS, Mapping
from nfsproxy.wire.programs import RPCBIND_VERSIONS, Route, route_of
from nfsproxy.wire.rpc import AcceptStat, RejectStat, RpcCall, refusal, RPC_VERSION

__all__ = ["Route", "route", "NFS_PROGRAM", "reject", "answer_portmap"]

NFS_VERSION = 3
MOUNT_VERSIONS = (1, 3)


def route(call: RpcCall) -> Route:
    """Where `call` goes: the programs table's route for its program and version."""
    if call.rpcvers != RPC_VERSION:
        return Route.REJECT
    return route_of(call.prog, call.vers)


def reject(call: RpcCall) -> bytes:
    """The RPC-level refusal for a call that `route` sent to REJECT."""
    if call.rpcvers != RPC_VERSION:
        return refusal(call.xid, RejectStat.RPC_MISMATCH)
    served = RPCBIND_VERSIONS if call.prog == PMAP_PROG else (NFS_VERSION,)
    return refusal(call.xid, AcceptStat.PROG_MISMATCH, (served[0], served[-1]))


def _mappings(port: int) -> tuple[Mapping, ...]:
    return (*(Mapping(PMAP_PROG, v, IPPROTO_TCP, port) for v in RPCBIND_VERSIONS),
            Mapping(NFS_PROGRAM, NFS_VERSION, IPPROTO_TCP, port),
            *(Mapping(MOUNT_PROG, v, IPPROTO_TCP, port) for v in MOUNT_VERSIONS),
            Mapping(NFSACL_PROGRAM, NFSACL_V3, IPPROTO_TCP, port),
            *(Mapping(NLM_PROGRAM, v, IPPROTO_TCP, port) for v in NLM_VERSIONS),
            Mapping(NSM_PROGRAM, NSM_VERSION, IPPROTO_TCP, port),
            # Status monitors send SM_NOTIFY over UDP (nfs-utils' sm-notify does).
            Mapping(NSM_PROGRAM, NSM_VERSION, IPPROTO_UDP, port))


def answer_portmap(call: RpcCall, body: memoryview, port: int, host: str = "127.0.0.1") -> bytes:
    """Answer a portmapper v2 or rpcbind v3/v4 call: NFS v3, MOUNT, NFSACL v3, NLM
    and NSM over TCP live on `port`; `host` is this end of the caller's connection.

    Raises RpcDecodeError for malformed arguments.
    """
    if call.vers != PMAP_VERS:
        return portmap.answer_rpcbind(call, body, _mappings(port), host)
    return portmap.answer(call, body, _mappings(port))
