"""ONC-RPC version 2 (RFC 5531), sans-IO.

Two layers, neither of which touches a socket:

* `RpcMessageReader` undoes TCP record marking (RFC 5531 section 11): feed
  it arbitrary chunks with `receive()`, then call `next_message()` until it
  returns `NEED_DATA`. Multi-fragment messages are reassembled; a message
  larger than `max_message_bytes` is refused with `RpcDecodeError` before it
  is buffered, so a hostile length cannot make us allocate.
* `parse_message()` splits one RPC message into its header (`RpcCall` or
  `RpcReply`) and a memoryview of the procedure body, which callers decode
  only when they need to (the proxy journals a few procedures and passes
  the rest through untouched).

Errors: `RpcDecodeError` means "the peer broke the protocol" and closes only
that peer's connection. `ValueError` from an encoder means the caller built
an invalid message. Anything else is a bug.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from typing import Final

from nfsproxy.wire.xdr import (Array, Opaque, Packer, String, U32, Unpacker, XdrError,
                  xdr_struct, xf)

__all__ = [
    "RpcDecodeError", "NEED_DATA", "RpcMessageReader", "frame_rpc_message",
    "MsgType", "ReplyStat", "AcceptStat", "RejectStat", "AuthStat", "AuthFlavor",
    "OpaqueAuth", "AuthSys", "RpcCall", "RpcReply", "parse_message",
    "encode_call", "encode_reply", "refusal", "decode_body", "MAX_AUTH_BYTES",
]

RPC_VERSION: Final = 2
MAX_AUTH_BYTES: Final = 400
LAST_FRAGMENT: Final = 0x80000000
DEFAULT_MAX_MESSAGE_BYTES: Final = 4 << 20  # 1 MiB WRITE plus generous headroom

_U32 = struct.Struct(">I")
_CALL_FIELDS = struct.Struct(">4I")


class RpcDecodeError(Exception):
    """The peer sent bytes that are not a valid RPC message; close its connection."""


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


class MsgType(enum.IntEnum):
    CALL = 0
    REPLY = 1


class ReplyStat(enum.IntEnum):
    MSG_ACCEPTED = 0
    MSG_DENIED = 1


class AcceptStat(enum.IntEnum):
    SUCCESS = 0
    PROG_UNAVAIL = 1
    PROG_MISMATCH = 2
    PROC_UNAVAIL = 3
    GARBAGE_ARGS = 4
    SYSTEM_ERR = 5


class RejectStat(enum.IntEnum):
    RPC_MISMATCH = 0
    AUTH_ERROR = 1


class AuthStat(enum.IntEnum):
    AUTH_OK = 0
    AUTH_BADCRED = 1
    AUTH_REJECTEDCRED = 2
    AUTH_BADVERF = 3
    AUTH_REJECTEDVERF = 4
    AUTH_TOOWEAK = 5
    AUTH_INVALIDRESP = 6
    AUTH_FAILED = 7
    AUTH_KERB_GENERIC = 8
    AUTH_TIMEEXPIRE = 9
    AUTH_TKT_FILE = 10
    AUTH_DECODE = 11
    AUTH_NET_ADDR = 12
    RPCSEC_GSS_CREDPROBLEM = 13
    RPCSEC_GSS_CTXPROBLEM = 14


class AuthFlavor(enum.IntEnum):
    AUTH_NONE = 0
    AUTH_SYS = 1
    AUTH_SHORT = 2
    AUTH_DH = 3
    RPCSEC_GSS = 6


# --------------------------------------------------------------------------
# Record marking


class RpcMessageReader:
    """Reassembles RPC messages from a TCP byte stream (record marking).

    Usage::

        reader.receive(chunk)
        while (msg := reader.next_message()) is not NEED_DATA:
            handle(msg)

    A single-fragment message is a `memoryview` into the bytes the caller
    passed to `receive` when it arrived whole in one chunk (no copy), or into
    a private buffer that gathered it across chunks (copied once, on
    arrival). Multi-fragment messages are joined once. Returned views stay
    valid for as long as the caller keeps them: a buffer is never changed
    after a view into it has been handed out (`_growable` tracks that).
    """

    __slots__ = ("max_message_bytes", "_buf", "_pos", "_growable", "_fragments", "_fragments_len")

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.max_message_bytes = max_message_bytes
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._growable = False  # _buf is our bytearray and no view of it is out
        self._fragments: list[bytes] = []
        self._fragments_len = 0

    def receive(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the peer (kept by reference when possible)."""
        pending = len(self._buf) - self._pos
        if not pending:
            self._buf, self._pos, self._growable = (
                (data, 0, False) if isinstance(data, bytes) else (bytearray(data), 0, True))
            return
        if not self._growable:
            # Start our own buffer with just the unfinished tail.
            self._buf = bytearray(memoryview(self._buf)[self._pos:])
            self._pos, self._growable = 0, True
        elif self._pos * 2 > len(self._buf):
            # Compact only when the consumed prefix dominates, so a stream of
            # small messages does not memmove the buffer on every message.
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf) - self._pos + self._fragments_len

    @property
    def at_message_boundary(self) -> bool:
        """True when no partial message is pending (a clean place for EOF)."""
        return self.buffered_bytes == 0

    def next_message(self) -> memoryview | _NeedData:
        """Return the next whole RPC message, or NEED_DATA."""
        while True:
            buf, pos = self._buf, self._pos
            if len(buf) - pos < 4:
                return NEED_DATA
            header = _U32.unpack_from(buf, pos)[0]
            size = header & ~LAST_FRAGMENT
            last = bool(header & LAST_FRAGMENT)
            if self._fragments_len + size > self.max_message_bytes:
                raise RpcDecodeError(
                    f"RPC message of at least {self._fragments_len + size} bytes "
                    f"exceeds the maximum of {self.max_message_bytes}")
            if not last and size == 0:
                raise RpcDecodeError("empty non-final RPC fragment")
            if len(buf) - pos - 4 < size:
                return NEED_DATA
            self._pos = end = pos + 4 + size
            if last and not self._fragments:
                self._growable = False  # a view of it is about to be out
                return memoryview(buf)[pos + 4:end]
            self._fragments.append(bytes(memoryview(buf)[pos + 4:end]))
            self._fragments_len += size
            if last:
                whole = b"".join(self._fragments)
                self._fragments.clear()
                self._fragments_len = 0
                return memoryview(whole)


def frame_rpc_message(size: int) -> bytes:
    """The record-marking header for a message of `size` bytes sent as one fragment."""
    if size > ~LAST_FRAGMENT & 0xFFFFFFFF:
        raise ValueError(f"RPC message of {size} bytes does not fit one fragment")
    return _U32.pack(LAST_FRAGMENT | size)


# --------------------------------------------------------------------------
# Message headers


@xdr_struct
class OpaqueAuth:
    """A credential or verifier whose flavor we do not interpret."""

    flavor: int = xf(U32)
    body: bytes = xf(Opaque(MAX_AUTH_BYTES, copy=True))


OpaqueAuth.NONE = OpaqueAuth(AuthFlavor.AUTH_NONE, b"")


@xdr_struct
class AuthSys:
    """AUTH_SYS credentials (RFC 5531 appendix A)."""

    stamp: int = xf(U32)
    machine_name: bytes = xf(String(255))
    uid: int = xf(U32)
    gid: int = xf(U32)
    gids: tuple[int, ...] = xf(Array(U32, 16))

    def to_opaque(self) -> OpaqueAuth:
        p = Packer()
        AuthSys.xdr.pack(p, self)
        return OpaqueAuth(AuthFlavor.AUTH_SYS, p.getvalue())


@dataclasses.dataclass(frozen=True, slots=True)
class RpcCall:
    """A call header. `auth_sys` is the decoded credential when its flavor is AUTH_SYS."""

    xid: int
    prog: int
    vers: int
    proc: int
    cred: OpaqueAuth = OpaqueAuth.NONE
    verf: OpaqueAuth = OpaqueAuth.NONE
    auth_sys: AuthSys | None = None
    rpcvers: int = RPC_VERSION


@dataclasses.dataclass(frozen=True, slots=True)
class RpcReply:
    """A reply header.

    Accepted replies carry `verf` and `accept_stat` (and `mismatch` for
    PROG_MISMATCH); denied ones carry `reject_stat` with `mismatch` for
    RPC_MISMATCH or `auth_stat` for AUTH_ERROR.
    """

    xid: int
    reply_stat: ReplyStat = ReplyStat.MSG_ACCEPTED
    accept_stat: AcceptStat | None = AcceptStat.SUCCESS
    verf: OpaqueAuth = OpaqueAuth.NONE
    mismatch: tuple[int, int] | None = None
    reject_stat: RejectStat | None = None
    auth_stat: AuthStat | None = None

    @property
    def success(self) -> bool:
        return self.reply_stat is ReplyStat.MSG_ACCEPTED and self.accept_stat is AcceptStat.SUCCESS


def _enum(cls: type[enum.IntEnum], raw: int) -> enum.IntEnum:
    try:
        return cls(raw)
    except ValueError:
        raise RpcDecodeError(f"{raw} is not a valid {cls.__name__}") from None


def _parse_call(u: Unpacker, xid: int) -> RpcCall:
    rpcvers, prog, vers, proc = _CALL_FIELDS.unpack_from(u._view, u._take(16))
    cred = OpaqueAuth.xdr.unpack(u)
    verf = OpaqueAuth.xdr.unpack(u)
    auth_sys = None
    if cred.flavor == AuthFlavor.AUTH_SYS:
        cu = Unpacker(cred.body)
        auth_sys = AuthSys.xdr.unpack(cu)
        cu.done()
    return RpcCall(xid, prog, vers, proc, cred, verf, auth_sys, rpcvers)


def _parse_reply(u: Unpacker, xid: int) -> RpcReply:
    reply_stat = _enum(ReplyStat, u.u32())
    if reply_stat is ReplyStat.MSG_DENIED:
        reject_stat = _enum(RejectStat, u.u32())
        if reject_stat is RejectStat.RPC_MISMATCH:
            return RpcReply(xid, reply_stat, None, OpaqueAuth.NONE, (u.u32(), u.u32()), reject_stat)
        return RpcReply(xid, reply_stat, None, OpaqueAuth.NONE, None, reject_stat,
                        _enum(AuthStat, u.u32()))
    verf = OpaqueAuth.xdr.unpack(u)
    accept_stat = _enum(AcceptStat, u.u32())
    mismatch = (u.u32(), u.u32()) if accept_stat is AcceptStat.PROG_MISMATCH else None
    return RpcReply(xid, reply_stat, accept_stat, verf, mismatch)


def parse_message(message: bytes | memoryview) -> tuple[RpcCall | RpcReply, memoryview]:
    """Split an RPC message into its header and the undecoded body that follows.

    Raises RpcDecodeError for anything that is not a well-formed header.
    """
    u = Unpacker(message)
    try:
        xid = u.u32()
        mtype = _enum(MsgType, u.u32())
        header = _parse_call(u, xid) if mtype is MsgType.CALL else _parse_reply(u, xid)
    except XdrError as e:
        raise RpcDecodeError(f"bad RPC header: {e}") from None
    return header, u.rest()


def encode_call(call: RpcCall, p: Packer | None = None) -> Packer:
    """Encode a call header; append the procedure's arguments to the returned Packer."""
    p = p if p is not None else Packer()  # an empty Packer is falsy
    p.u32(call.xid)
    p.u32(MsgType.CALL)
    for v in (call.rpcvers, call.prog, call.vers, call.proc):
        p.u32(v)
    cred = call.auth_sys.to_opaque() if call.auth_sys is not None else call.cred
    OpaqueAuth.xdr.pack(p, cred)
    OpaqueAuth.xdr.pack(p, call.verf)
    return p


def encode_reply(reply: RpcReply, p: Packer | None = None) -> Packer:
    """Encode a reply header; append the procedure's results to the returned Packer."""
    p = p if p is not None else Packer()  # an empty Packer is falsy
    p.u32(reply.xid)
    p.u32(MsgType.REPLY)
    p.u32(reply.reply_stat)
    if reply.reply_stat is ReplyStat.MSG_DENIED:
        p.u32(reply.reject_stat)
        if reply.reject_stat is RejectStat.RPC_MISMATCH:
            p.u32(reply.mismatch[0])
            p.u32(reply.mismatch[1])
        else:
            p.u32(reply.auth_stat)
        return p
    OpaqueAuth.xdr.pack(p, reply.verf)
    p.u32(reply.accept_stat)
    if reply.accept_stat is AcceptStat.PROG_MISMATCH:
        p.u32(reply.mismatch[0])
        p.u32(reply.mismatch[1])
    return p


def refusal(xid: int, stat: AcceptStat | RejectStat | AuthStat,
            mismatch: tuple[int, int] | None = None) -> bytes:
    """The whole reply to a call its receiver will not run, one rule for every
    server here (relay, export, lock routes).

    An AcceptStat gives an accepted reply (PROG_MISMATCH carries `mismatch`, the
    versions served); RejectStat.RPC_MISMATCH a denied one naming RPC version 2;
    an AuthStat a denied AUTH_ERROR.
    """
    if isinstance(stat, AcceptStat):
        reply = RpcReply(xid, accept_stat=stat, mismatch=mismatch)
    elif isinstance(stat, AuthStat):
        reply = RpcReply(xid, ReplyStat.MSG_DENIED, None, reject_stat=RejectStat.AUTH_ERROR, auth_stat=stat)
    elif stat is RejectStat.RPC_MISMATCH:
        reply = RpcReply(xid, ReplyStat.MSG_DENIED, None, mismatch=(RPC_VERSION, RPC_VERSION),
                         reject_stat=stat)
    else:
        raise ValueError(f"refusal: AUTH_ERROR is given by its AuthStat, not {stat!r}")
    return encode_reply(reply).getvalue()


def decode_body(codec, body: memoryview):
    """Decode a procedure body exactly (no trailing bytes), as RpcDecodeError on failure."""
    u = Unpacker(body)
    try:
        value = codec.unpack(u)
        u.done()
    except XdrError as e:
        raise RpcDecodeError(str(e)) from None
    return value

