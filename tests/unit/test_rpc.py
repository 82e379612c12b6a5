"""Unit tests for nfsproxy.wire.rpc: record marking, headers, credentials, bodies."""

from __future__ import annotations

import struct

import pytest

from nfsproxy.wire import nfs3
from nfsproxy.wire.programs import lookup
from nfsproxy.wire.rpc import (LAST_FRAGMENT, NEED_DATA, AcceptStat, AuthFlavor, AuthStat, AuthSys,
                          OpaqueAuth, RejectStat, ReplyStat, RpcCall, RpcDecodeError,
                          RpcMessageReader, RpcReply, decode_body, encode_call, encode_reply,
                          frame_rpc_message, parse_message, refusal)
from nfsproxy.wire.xdr import encode


def u32(*values: int) -> bytes:
    return b"".join(struct.pack(">I", v) for v in values)


def fragment(payload: bytes, last: bool = True) -> bytes:
    return u32((LAST_FRAGMENT if last else 0) | len(payload)) + payload


def drain(reader: RpcMessageReader) -> list[bytes]:
    out = []
    while (msg := reader.next_message()) is not NEED_DATA:
        out.append(bytes(msg))
    return out


# --------------------------------------------------------------------------
# Record marking


def test_single_fragment_message():
    reader = RpcMessageReader()
    reader.receive(frame_rpc_message(8) + b"abcdefgh")
    assert drain(reader) == [b"abcdefgh"]
    assert reader.at_message_boundary


def test_multi_fragment_reassembly_across_odd_chunks():
    stream = fragment(b"abc", last=False) + fragment(b"defgh", last=False) + fragment(b"ij")
    stream += fragment(b"second")
    reader = RpcMessageReader()
    got = []
    for i in range(0, len(stream), 5):
        reader.receive(stream[i:i + 5])
        got += drain(reader)
    assert got == [b"abcdefghij", b"second"]
    assert reader.at_message_boundary


def test_partial_message_needs_data():
    reader = RpcMessageReader()
    reader.receive(fragment(b"abcd", last=False) + fragment(b"ef")[:5])
    assert reader.next_message() is NEED_DATA
    assert not reader.at_message_boundary
    reader.receive(b"f")
    assert drain(reader) == [b"abcdef"]


def test_max_message_refused_from_header_alone():
    reader = RpcMessageReader(max_message_bytes=100)
    # Only the 4-byte header has arrived: the refusal must not wait for a body.
    reader.receive(u32(LAST_FRAGMENT | 101))
    with pytest.raises(RpcDecodeError):
        reader.next_message()


def test_max_message_counts_all_fragments():
    reader = RpcMessageReader(max_message_bytes=100)
    reader.receive(fragment(b"x" * 60, last=False))
    assert reader.next_message() is NEED_DATA
    reader.receive(u32(LAST_FRAGMENT | 41))
    with pytest.raises(RpcDecodeError):
        reader.next_message()


def test_message_of_exactly_max_is_accepted():
    reader = RpcMessageReader(max_message_bytes=100)
    reader.receive(fragment(b"y" * 40, last=False) + fragment(b"z" * 60))
    assert drain(reader) == [b"y" * 40 + b"z" * 60]


def test_hostile_length_is_refused_with_default_limit():
    reader = RpcMessageReader()
    reader.receive(u32(0xFFFFFFFF))
    with pytest.raises(RpcDecodeError):
        reader.next_message()


def test_empty_non_final_fragment_is_refused():
    reader = RpcMessageReader()
    reader.receive(u32(0))
    with pytest.raises(RpcDecodeError):
        reader.next_message()


def test_empty_final_fragment_is_an_empty_message():
    reader = RpcMessageReader()
    reader.receive(u32(LAST_FRAGMENT))
    assert drain(reader) == [b""]


def test_frame_rpc_message():
    assert frame_rpc_message(0x1234) == bytes.fromhex("80001234")
    with pytest.raises(ValueError):
        frame_rpc_message(1 << 31)


# --------------------------------------------------------------------------
# Reply headers


@pytest.mark.parametrize("stat", list(AcceptStat), ids=lambda s: s.name)
def test_accepted_reply_roundtrip(stat):
    mismatch = (3, 3) if stat is AcceptStat.PROG_MISMATCH else None
    verf = OpaqueAuth(AuthFlavor.AUTH_NONE, b"")
    reply = RpcReply(0xCAFE, ReplyStat.MSG_ACCEPTED, stat, verf, mismatch)
    p = encode_reply(reply)
    p.raw(b"BODY")
    parsed, body = parse_message(p.getvalue())
    assert parsed == reply
    assert parsed.success is (stat is AcceptStat.SUCCESS)
    assert bytes(body) == b"BODY"


def test_accepted_reply_wire_format():
    reply = RpcReply(7, ReplyStat.MSG_ACCEPTED, AcceptStat.PROG_MISMATCH, OpaqueAuth.NONE, (2, 3))
    assert encode_reply(reply).getvalue() == u32(7, 1, 0, 0, 0, 2, 2, 3)


def test_rpc_mismatch_reply_roundtrip():
    reply = RpcReply(9, ReplyStat.MSG_DENIED, None, OpaqueAuth.NONE, (2, 2),
                     RejectStat.RPC_MISMATCH)
    wire = encode_reply(reply).getvalue()
    assert wire == u32(9, 1, 1, 0, 2, 2)
    parsed, body = parse_message(wire)
    assert parsed == reply
    assert not parsed.success
    assert bytes(body) == b""


@pytest.mark.parametrize("auth_stat", list(AuthStat), ids=lambda s: s.name)
def test_auth_error_reply_roundtrip(auth_stat):
    reply = RpcReply(10, ReplyStat.MSG_DENIED, None, OpaqueAuth.NONE, None, RejectStat.AUTH_ERROR,
                     auth_stat)
    wire = encode_reply(reply).getvalue()
    assert wire == u32(10, 1, 1, 1, auth_stat)
    parsed, _ = parse_message(wire)
    assert parsed == reply


@pytest.mark.parametrize("wire", [
    u32(1, 2),                 # msg_type 2
    u32(1, 1, 2),              # reply_stat 2
    u32(1, 1, 0, 0, 0, 6),     # accept_stat 6
    u32(1, 1, 1, 2),           # reject_stat 2
    u32(1, 1, 1, 1, 99),       # auth_stat 99
    u32(1, 1, 0, 0, 0, 2, 3),  # PROG_MISMATCH missing high
    u32(1, 1, 0, 0, 401),      # verifier over MAX_AUTH_BYTES
    b"\0\0\0",
])
def test_bad_reply_headers(wire):
    with pytest.raises(RpcDecodeError):
        parse_message(wire)


# --------------------------------------------------------------------------
# Call headers and credentials


def test_auth_none_call():
    wire = u32(0x11, 0, 2, 100003, 3, 1, 0, 0, 0, 0) + b"args"
    call, body = parse_message(wire)
    assert call == RpcCall(0x11, 100003, 3, 1)
    assert call.cred == OpaqueAuth.NONE and call.verf == OpaqueAuth.NONE
    assert call.auth_sys is None
    assert bytes(body) == b"args"


def test_auth_sys_call_decodes_from_hand_built_bytes():
    cred_body = (u32(0x5EED) + u32(5) + b"host5\0\0\0"    # stamp, machine name
                 + u32(1000, 100) + u32(2, 10, 20))        # uid, gid, gids<16>
    wire = (u32(0x22, 0, 2, 100003, 3, 7)
            + u32(1, len(cred_body)) + cred_body           # cred: AUTH_SYS
            + u32(0, 0))                                   # verf: AUTH_NONE
    call, body = parse_message(wire)
    assert call.auth_sys == AuthSys(0x5EED, b"host5", 1000, 100, (10, 20))
    assert call.cred.flavor == AuthFlavor.AUTH_SYS
    assert call.cred.body == cred_body
    assert (call.xid, call.prog, call.vers, call.proc, call.rpcvers) == (0x22, 100003, 3, 7, 2)
    assert bytes(body) == b""
    assert encode_call(call).getvalue() == wire


def test_auth_sys_call_roundtrip():
    sys_cred = AuthSys(1, b"client.example", 0, 0, tuple(range(16)))
    call = RpcCall(5, 100005, 3, 1, auth_sys=sys_cred)
    parsed, _ = parse_message(encode_call(call).getvalue())
    assert parsed.auth_sys == sys_cred
    assert parsed.cred == sys_cred.to_opaque()


@pytest.mark.parametrize("cred_body", [
    u32(1) + u32(300) + b"x" * 300,      # machine name over 255
    u32(1, 0, 0, 0) + u32(17) + u32(*range(17)),  # 17 gids
    u32(1, 0, 0, 0, 0) + b"junk",        # trailing bytes in the credential
    u32(1, 0),                           # truncated
])
def test_bad_auth_sys_is_decode_error(cred_body):
    wire = u32(1, 0, 2, 100003, 3, 0, 1, len(cred_body)) + cred_body + u32(0, 0)
    with pytest.raises(RpcDecodeError):
        parse_message(wire)


def test_unknown_flavor_passed_through_opaque():
    cred = OpaqueAuth(390004, b"\x01\x02\x03\x04\x05")
    verf = OpaqueAuth(AuthFlavor.RPCSEC_GSS, b"token")
    call = RpcCall(3, 100003, 3, 0, cred, verf)
    parsed, _ = parse_message(encode_call(call).getvalue())
    assert parsed.cred == cred and parsed.verf == verf
    assert parsed.auth_sys is None


def test_call_wire_format():
    call = RpcCall(0x01020304, 100000, 2, 3)
    assert encode_call(call).getvalue() == u32(0x01020304, 0, 2, 100000, 2, 3, 0, 0, 0, 0)


# --------------------------------------------------------------------------
# Bodies


def _write_call_message() -> tuple[bytes, nfs3.WRITE3args]:
    args = nfs3.WRITE3args(b"\xfe" * 32, 4096, 11, nfs3.StableHow.UNSTABLE, b"hello world")
    p = encode_call(RpcCall(77, 100003, 3, nfs3.Proc3.WRITE))
    nfs3.WRITE3args.xdr.pack(p, args)
    return p.getvalue(), args


def test_write_decode_is_zero_copy_through_the_reader():
    message, expected = _write_call_message()
    reader = RpcMessageReader()
    reader.receive(frame_rpc_message(len(message)) + message)
    msg = reader.next_message()
    call, body = parse_message(msg)
    args = decode_body(lookup(nfs3.NFS_PROGRAM, nfs3.NFS_V3, call.proc).args, body)
    assert args == expected
    assert isinstance(args.data, memoryview)
    # The payload is a view of the message buffer, not a copy of it.
    assert args.data.obj is msg.obj
    assert isinstance(args.file, bytes)
    hash(args.file)


def test_write_decode_shares_caller_buffer():
    message, _ = _write_call_message()
    _, body = parse_message(message)
    args = decode_body(nfs3.WRITE3args.xdr, body)
    assert args.data.obj is message
    assert bytes(args.data) == b"hello world"


def test_decode_body_errors_are_rpc_decode_errors():
    args = encode(nfs3.GETATTR3args.xdr, nfs3.GETATTR3args(b"fh"))
    assert decode_body(nfs3.GETATTR3args.xdr, memoryview(args)) == nfs3.GETATTR3args(b"fh")
    with pytest.raises(RpcDecodeError):
        decode_body(nfs3.GETATTR3args.xdr, memoryview(args + b"\0\0\0\0"))
    with pytest.raises(RpcDecodeError):
        decode_body(nfs3.GETATTR3args.xdr, memoryview(args[:-1]))


# --------------------------------------------------------------------------
# refusal(): the one rule every server here refuses calls by

@pytest.mark.parametrize("stat, mismatch", [
    (AcceptStat.PROG_UNAVAIL, None), (AcceptStat.PROC_UNAVAIL, None),
    (AcceptStat.SYSTEM_ERR, None), (AcceptStat.PROG_MISMATCH, (3, 4)),
])
def test_refusal_accepted_round_trips(stat, mismatch):
    reply, body = parse_message(refusal(9, stat, mismatch))
    assert (reply.xid, reply.reply_stat, reply.accept_stat, reply.mismatch) == (
        9, ReplyStat.MSG_ACCEPTED, stat, mismatch)
    assert bytes(body) == b""


def test_refusal_denied_names_rpc_version_2_or_the_auth_stat():
    reply, _ = parse_message(refusal(10, RejectStat.RPC_MISMATCH))
    assert (reply.reply_stat, reply.reject_stat, reply.mismatch) == (
        ReplyStat.MSG_DENIED, RejectStat.RPC_MISMATCH, (2, 2))
    reply, _ = parse_message(refusal(11, AuthStat.AUTH_BADCRED))
    assert (reply.reject_stat, reply.auth_stat) == (RejectStat.AUTH_ERROR, AuthStat.AUTH_BADCRED)
    with pytest.raises(ValueError):
        refusal(12, RejectStat.AUTH_ERROR)

