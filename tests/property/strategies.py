"""Hypothesis strategies derived from XDR codecs.

`values_for(codec)` walks the codec tree (the same schema that drives
encoding and decoding) and returns a strategy for valid values of it, so a
new struct or procedure is covered by the property tests without writing a
strategy by hand. Sizes are kept small: the point is to hit every arm and
shape, not to stress memory.
"""

from __future__ import annotations

from hypothesis import strategies as st

from nfsproxy.wire import xdr

__all__ = ["values_for", "MAX_BYTES", "MAX_ITEMS"]

MAX_BYTES = 24
"""Largest opaque/string drawn (per value)."""
MAX_ITEMS = 3
"""Longest array or linked list drawn."""

_INTS = {
    id(xdr.U32): st.integers(0, 2**32 - 1),
    id(xdr.I32): st.integers(-(2**31), 2**31 - 1),
    id(xdr.U64): st.integers(0, 2**64 - 1),
    id(xdr.I64): st.integers(-(2**63), 2**63 - 1),
    id(xdr.BOOL): st.booleans(),
    id(xdr.VOID): st.none(),
}

_cache: dict[int, st.SearchStrategy] = {}


def _strings(maxlen: int) -> st.SearchStrategy[bytes]:
    cap = min(maxlen, MAX_BYTES)
    # Strings are bytes on the wire and after decoding (names are never
    # assumed UTF-8): any bytes, and encoded text for multi-byte UTF-8.
    text = st.text(max_size=cap).map(lambda s: s.encode("utf-8")).filter(lambda b: len(b) <= cap)
    return st.one_of(st.binary(max_size=cap), text)


def _opaque(codec: xdr.Opaque) -> st.SearchStrategy:
    data = st.binary(max_size=min(codec.maxlen, MAX_BYTES))
    if codec.copy:
        return data
    # Zero-copy fields are memoryviews after decoding; encoders must take both.
    return st.one_of(data, data.map(memoryview))


def _union(codec: xdr.Union) -> st.SearchStrategy:
    # Explicit arms and the default arm are drawn with equal weight, so that a
    # result's NFS3_OK arm is not drowned out by the many error statuses.
    choices = [st.sampled_from(list(codec.arms))] if codec.arms else []
    if codec.default is not None:
        tag_codec = codec.tag
        if isinstance(tag_codec, xdr.Enum):
            others = [m for m in tag_codec.cls if m not in codec.arms]
            if others:
                choices.append(st.sampled_from(others))
        elif tag_codec is xdr.BOOL:
            others = [b for b in (False, True) if b not in codec.arms]
            if others:
                choices.append(st.sampled_from(others))
        else:
            choices.append(values_for(tag_codec).filter(lambda t: t not in codec.arms))
    return st.one_of(choices).flatmap(lambda tag: _union_value(codec, tag))


def _union_value(codec: xdr.Union, tag) -> st.SearchStrategy:
    return values_for(codec.arm(tag)).map(lambda body: codec.cls(tag, body))


def _build(codec: xdr.Codec) -> st.SearchStrategy:
    if id(codec) in _INTS:
        return _INTS[id(codec)]
    if isinstance(codec, xdr.Struct):
        return st.builds(codec.cls, *[values_for(c) for _, c in codec.fields])
    if isinstance(codec, xdr.Union):
        return _union(codec)
    if isinstance(codec, xdr.Optional):
        return st.one_of(st.none(), values_for(codec.inner))
    if isinstance(codec, xdr.Array):
        return st.lists(values_for(codec.inner), max_size=min(codec.maxlen, MAX_ITEMS)).map(tuple)
    if isinstance(codec, xdr.LinkedList):
        return st.lists(values_for(codec.inner), max_size=MAX_ITEMS).map(tuple)
    if isinstance(codec, xdr.Opaque):
        return _opaque(codec)
    if isinstance(codec, xdr.FixedOpaque):
        return st.binary(min_size=codec.size, max_size=codec.size)
    if isinstance(codec, xdr.String):
        return _strings(codec.maxlen)
    if isinstance(codec, xdr.Enum):
        return st.sampled_from(list(codec.cls))
    raise TypeError(f"no strategy for codec {codec!r}")


def values_for(codec: xdr.Codec) -> st.SearchStrategy:
    """A strategy for valid values of `codec` (encodable, and equal to
    themselves after an encode/decode round trip)."""
    key = id(codec)
    strategy = _cache.get(key)
    if strategy is None:
        # deferred() keeps construction lazy and lets codec trees share nodes.
        strategy = _cache[key] = st.deferred(lambda: _build(codec))
    return strategy
