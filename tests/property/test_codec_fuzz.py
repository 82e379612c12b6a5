"""Decoders given hostile bytes return a value or raise XdrError, nothing else.

Two sources of input: plain random bytes (exercise the first few fields and
the length checks) and valid encodings with a few bytes flipped, inserted or
removed (reach deep into nested structs, unions and lists).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfsproxy.wire.programs import PROGRAMS
from nfsproxy.wire.xdr import XdrError, decode, encode
from strategies import values_for

CODECS = [(p, side) for _, p in sorted(PROGRAMS.items()) for side in ("args", "res")]
IDS = [f"{p.prog}.{p.vers}.{p.name}-{side}" for p, side in CODECS]

_SETTINGS = settings(max_examples=30, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def _decode_or_xdr_error(codec, data: bytes) -> None:
    try:
        value = decode(codec, data)
    except XdrError:
        return
    # Whatever decodes must be a value we can encode and read back unchanged
    # (the bytes themselves may differ: non-zero padding is tolerated).
    assert decode(codec, encode(codec, value)) == value


@pytest.mark.parametrize(("procedure", "side"), CODECS, ids=IDS)
@_SETTINGS
@given(data=st.binary(max_size=256))
def test_random_bytes(procedure, side, data):
    _decode_or_xdr_error(getattr(procedure, side), data)


def _mutate(wire: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(wire)
    for kind, where, byte in edits:
        pos = where % (len(buf) + 1)
        if kind == 0 and pos < len(buf):
            buf[pos] = byte
        elif kind == 1:
            buf.insert(pos, byte)
        elif kind == 2 and pos < len(buf):
            del buf[pos]
    return bytes(buf)


_EDITS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1 << 16), st.integers(0, 255)),
                  min_size=1, max_size=4)


@pytest.mark.parametrize(("procedure", "side"), CODECS, ids=IDS)
@_SETTINGS
@given(data=st.data(), edits=_EDITS)
def test_mutated_encodings(procedure, side, data, edits):
    codec = getattr(procedure, side)
    wire = encode(codec, data.draw(values_for(codec), label="value"))
    _decode_or_xdr_error(codec, _mutate(wire, edits))
