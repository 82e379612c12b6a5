"""Property tests for the ONC-RPC layer (nfsproxy.wire.rpc).

As in h11's fuzzer: bytes fed whole and then one byte at a time give the
same messages, or the same RpcDecodeError, and nothing else.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfsproxy.wire.rpc import (LAST_FRAGMENT, NEED_DATA, AcceptStat, AuthFlavor, AuthStat, AuthSys,
                          OpaqueAuth, RejectStat, ReplyStat, RpcCall, RpcDecodeError,
                          RpcMessageReader, RpcReply, encode_call, encode_reply,
                          frame_rpc_message, parse_message)
from strategies import values_for

_SETTINGS = settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])

MAX_MESSAGE = 64
ERROR = "RpcDecodeError"


def _read_whole(data: bytes, max_message_bytes: int = MAX_MESSAGE) -> list:
    reader = RpcMessageReader(max_message_bytes)
    out: list = []
    reader.receive(data)
    try:
        while (msg := reader.next_message()) is not NEED_DATA:
            out.append(bytes(msg))
    except RpcDecodeError:
        out.append(ERROR)
    return out


def _read_chunked(data: bytes, cuts: list[int], max_message_bytes: int = MAX_MESSAGE) -> list:
    reader = RpcMessageReader(max_message_bytes)
    out: list = []
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    try:
        for start, end in zip(bounds, bounds[1:]):
            reader.receive(data[start:end])
            while (msg := reader.next_message()) is not NEED_DATA:
                out.append(bytes(msg))
    except RpcDecodeError:
        out.append(ERROR)
    return out


def _fragment(last: bool, payload: bytes) -> bytes:
    return struct.pack(">I", (LAST_FRAGMENT if last else 0) | len(payload)) + payload


# A stream of mostly well-formed fragments (some oversized, some empty and
# non-final) with an optional random tail: random bytes alone almost always
# fail on the very first length.
_fragments = st.lists(st.tuples(st.booleans(), st.binary(max_size=40)), max_size=6)
_streams = st.one_of(
    st.binary(max_size=200),
    st.tuples(_fragments, st.binary(max_size=12)).map(
        lambda t: b"".join(_fragment(last, p) for last, p in t[0]) + t[1]),
)


@_SETTINGS
@given(data=_streams)
def test_reader_whole_equals_byte_at_a_time(data):
    whole = _read_whole(data)
    one_by_one = _read_chunked(data, list(range(len(data))))
    assert whole == one_by_one
    assert all(isinstance(m, bytes) or m == ERROR for m in whole)
    assert ERROR not in whole[:-1]


@_SETTINGS
@given(data=_streams, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_reader_any_chunking_is_the_same(data, cuts):
    assert _read_chunked(data, cuts) == _read_whole(data)


@_SETTINGS
@given(messages=st.lists(st.binary(max_size=MAX_MESSAGE), max_size=5),
       split=st.integers(1, 7), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_reader_reassembles_what_was_framed(messages, split, cuts):
    # Each message is sent as fragments of at most `split` bytes.
    stream = b""
    for m in messages:
        pieces = [m[i:i + split] for i in range(0, len(m), split)] or [b""]
        stream += b"".join(_fragment(i == len(pieces) - 1, p) for i, p in enumerate(pieces))
    assert _read_chunked(stream, cuts) == messages
    reader = RpcMessageReader(MAX_MESSAGE)
    reader.receive(b"".join(frame_rpc_message(len(m)) + m for m in messages))
    got = []
    while (msg := reader.next_message()) is not NEED_DATA:
        got.append(bytes(msg))
    assert got == messages
    assert reader.at_message_boundary


@_SETTINGS
@given(data=st.binary(max_size=200))
def test_parse_message_random_bytes(data):
    try:
        header, body = parse_message(data)
    except RpcDecodeError:
        return
    assert isinstance(header, (RpcCall, RpcReply))
    assert isinstance(body, memoryview)


_u32 = st.integers(0, 2**32 - 1)
_opaque_auth = st.builds(
    OpaqueAuth,
    st.integers(0, 2**32 - 1).filter(lambda f: f != AuthFlavor.AUTH_SYS),
    st.binary(max_size=40))


@st.composite
def _calls(draw):
    auth_sys = draw(st.none() | values_for(AuthSys.xdr))
    cred = auth_sys.to_opaque() if auth_sys is not None else draw(_opaque_auth)
    return RpcCall(draw(_u32), draw(_u32), draw(_u32), draw(_u32), cred, draw(_opaque_auth),
                   auth_sys, draw(_u32))


@st.composite
def _replies(draw):
    xid = draw(_u32)
    if draw(st.booleans()):
        stat = draw(st.sampled_from(list(AcceptStat)))
        mismatch = (draw(_u32), draw(_u32)) if stat is AcceptStat.PROG_MISMATCH else None
        return RpcReply(xid, ReplyStat.MSG_ACCEPTED, stat, draw(_opaque_auth), mismatch)
    reject = draw(st.sampled_from(list(RejectStat)))
    if reject is RejectStat.RPC_MISMATCH:
        return RpcReply(xid, ReplyStat.MSG_DENIED, None, OpaqueAuth.NONE,
                        (draw(_u32), draw(_u32)), reject)
    return RpcReply(xid, ReplyStat.MSG_DENIED, None, OpaqueAuth.NONE, None, reject,
                    draw(st.sampled_from(list(AuthStat))))


@_SETTINGS
@given(header=st.one_of(_calls(), _replies()), body=st.binary(max_size=32))
def test_header_roundtrip(header, body):
    encode = encode_call if isinstance(header, RpcCall) else encode_reply
    p = encode(header)
    p.raw(body)
    parsed, rest = parse_message(p.getvalue())
    assert parsed == header
    assert bytes(rest) == body


@_SETTINGS
@given(header=st.one_of(_calls(), _replies()),
       edits=st.lists(st.tuples(st.integers(0, 1 << 12), st.integers(0, 255)),
                      min_size=1, max_size=3),
       cut=st.integers(0, 1 << 12))
def test_parse_message_mutated_headers(header, edits, cut):
    encode = encode_call if isinstance(header, RpcCall) else encode_reply
    buf = bytearray(encode(header).getvalue())
    for where, byte in edits:
        buf[where % len(buf)] = byte
    if cut % 3 == 0:
        del buf[cut % (len(buf) + 1):]
    try:
        parsed, rest = parse_message(bytes(buf))
    except RpcDecodeError:
        return
    assert isinstance(parsed, (RpcCall, RpcReply))
