"""Transfer-size limits the proxy advertises (sans-IO).

The proxy holds each RPC message whole while it parses and journals it, so
it caps message size. A NAS may advertise transfers far larger than that
(ganesha offers 64 MiB), and clients size their READs and WRITEs from
FSINFO. So the proxy clamps the FSINFO reply it relays to what it accepts,
the one reply it changes: clients then never send a call, or ask for a
reply, that the proxy would have to refuse.
"""

from __future__ import annotations

import dataclasses

from nfsproxy.wire.nfs3 import FSINFO3res, Nfsstat3
from nfsproxy.wire.rpc import RpcReply, decode_body, encode_reply
from nfsproxy.wire.xdr import Packer

__all__ = ["HEADER_ROOM_BYTES", "max_message_bytes", "clamp_fsinfo_reply"]

#: Room for the RPC header, credentials and arguments around a payload.
HEADER_ROOM_BYTES = 64 << 10


def max_message_bytes(max_payload_bytes: int) -> int:
    return max_payload_bytes + HEADER_ROOM_BYTES


def clamp_fsinfo_reply(reply: RpcReply, body: memoryview, max_payload_bytes: int) -> bytes | None:
    """The FSINFO reply with rtmax/wtmax/rtpref/wtpref/dtpref clamped, or None if unchanged.

    Raises RpcDecodeError if the body is not an FSINFO result.
    """
    res = decode_body(FSINFO3res.xdr, body)
    if res.status is not Nfsstat3.NFS3_OK:
        return None
    ok = res.body
    clamped = dataclasses.replace(
        ok, rtmax=min(ok.rtmax, max_payload_bytes), rtpref=min(ok.rtpref, max_payload_bytes),
        wtmax=min(ok.wtmax, max_payload_bytes), wtpref=min(ok.wtpref, max_payload_bytes),
        dtpref=min(ok.dtpref, max_payload_bytes))
    if clamped == ok:
        return None
    p: Packer = encode_reply(reply)
    FSINFO3res.xdr.pack(p, FSINFO3res(res.status, clamped))
    return p.getvalue()
