"""The native record encoding (nfsproxy/dataplane/src/record.rs) against the
Python protobuf modules: every Op, every field, both directions."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import given, settings, strategies as st

from logstore.record import Op, Record
from logstore.segment import NO_STAMP
from nfsproxy import _dataplane
from logstore.sharding import frame_route

_SCALARS = {
    F.TYPE_BYTES: st.binary(max_size=64),
    F.TYPE_STRING: st.text(max_size=16),
    F.TYPE_BOOL: st.booleans(),
    F.TYPE_UINT32: st.integers(0, 2**32 - 1),
    F.TYPE_UINT64: st.integers(0, 2**64 - 1),
    F.TYPE_INT64: st.integers(-2**63, 2**63 - 1),
}


def _field(f) -> st.SearchStrategy:
    if f.type == F.TYPE_MESSAGE:
        one = _message(f.message_type)
    elif f.type == F.TYPE_ENUM:
        one = st.sampled_from([v.number for v in f.enum_type.values])
    else:
        one = _SCALARS[f.type]
    if f.is_repeated:
        return st.lists(one, max_size=3)
    return one


def _message(descriptor) -> st.SearchStrategy[dict]:
    optional = {f.name: _field(f) for f in descriptor.fields if f.name != "op"}
    return st.fixed_dictionaries({}, optional=optional)


def records() -> st.SearchStrategy[Record]:
    ops = st.sampled_from(list(Op.values()))
    stamps = st.one_of(st.just(b""), st.binary(min_size=16, max_size=16))
    return st.builds(lambda op, stamp, fields: Record(op=op, **{**fields, "stamp": stamp}),
                     ops, stamps, _message(Record.DESCRIPTOR))


@settings(max_examples=300, deadline=None)
@given(records())
def test_rust_encoding_parses_in_python_to_the_same_record(record):
    again = Record()
    again.ParseFromString(_dataplane.reencode_record(record.SerializeToString()))
    assert again == record


@settings(max_examples=300, deadline=None)
@given(records())
def test_native_routing_fields_match_the_python_sharding_rule(record):
    stamp, kind, route = _dataplane.record_routing(record.SerializeToString())
    assert stamp == (record.stamp if len(record.stamp) == 16 else NO_STAMP)
    assert (kind, route) == frame_route(record)


def test_every_op_is_covered():
    for op in Op.values():
        record = Record(op=op, ok=True, fh=b"f", dir_fh=b"d", to_dir_fh=b"t")
        again = Record()
        again.ParseFromString(_dataplane.reencode_record(record.SerializeToString()))
        assert again == record
        assert _dataplane.record_routing(record.SerializeToString())[1:] == frame_route(record)
