"""Unit tests of logstore.sharding: which shard stores which record."""

from __future__ import annotations

import random
from collections import Counter

import crc32c
import pytest

from logstore.record import Op, Record
from logstore.sharding import (
    EVERY_SHARD, ROUTING_FIELD, UnroutableRecordError, belongs_to, routing_handle, shard_of,
    shard_of_handle, shards_of,
)

FH, DIR, TO_DIR = b"object-handle", b"directory-handle", b"target-directory"


def record(op: int) -> Record:
    return Record(op=op, fh=FH, dir_fh=DIR, name=b"a", to_dir_fh=TO_DIR, to_name=b"b")


@pytest.mark.parametrize("op, handle", [
    (Op.WRITE, FH), (Op.SETATTR, FH), (Op.COMMIT, FH),
    (Op.CREATE, DIR), (Op.MKDIR, DIR), (Op.SYMLINK, DIR), (Op.MKNOD, DIR),
    (Op.REMOVE, DIR), (Op.RMDIR, DIR), (Op.RENAME, DIR),
    (Op.LINK, TO_DIR),
    (Op.BIND, DIR),
    (Op.BASELINE, FH),
])
def test_each_op_routes_by_its_handle(op, handle):
    assert routing_handle(record(op)) == handle
    for n in (1, 2, 3, 7):
        assert shard_of(record(op), n) == crc32c.crc32c(handle) % n
        assert list(shards_of(record(op), n)) == [shard_of(record(op), n)]


@pytest.mark.parametrize("op", [Op.BASELINE_BEGIN, Op.BASELINE_END])
def test_baseline_markers_go_to_every_shard(op):
    assert list(shards_of(record(op), 3)) == [0, 1, 2]
    assert all(belongs_to(record(op), k, 3) for k in range(3))
    with pytest.raises(UnroutableRecordError, match="every shard"):
        shard_of(record(op), 3)


def test_every_op_has_a_rule():
    """A new Op must get a line in ROUTING_FIELD (this fails until it does)."""
    missing = [Op.Name(v) for v in Op.values() if v != Op.OP_UNSPECIFIED and v not in ROUTING_FIELD]
    assert missing == []
    assert all(f == EVERY_SHARD or f in Record.DESCRIPTOR.fields_by_name
               for f in ROUTING_FIELD.values())


def test_an_op_without_a_rule_is_refused():
    with pytest.raises(UnroutableRecordError, match="OP_UNSPECIFIED"):
        shard_of(Record(fh=FH), 2)
    with pytest.raises(UnroutableRecordError, match="unknown"):
        shard_of(Record(op=99, fh=FH), 2)


def test_the_hash_is_stable():
    """crc32c, not hash(): the same handle lands on the same shard in every process."""
    assert crc32c.crc32c(b"") == 0
    assert shard_of_handle(b"", 5) == 0
    assert shard_of_handle(b"123456789", 1 << 32) == 0xE3069283  # the CRC-32C check value


def test_a_file_and_its_namespace_stay_together():
    file_fh, dir_fh = b"file-1", b"dir-1"
    write = Record(op=Op.WRITE, fh=file_fh)
    setattr_ = Record(op=Op.SETATTR, fh=file_fh)
    create = Record(op=Op.CREATE, dir_fh=dir_fh, name=b"f", fh=file_fh)
    remove = Record(op=Op.REMOVE, dir_fh=dir_fh, name=b"f")
    bind = Record(op=Op.BIND, dir_fh=dir_fh, name=b"f", fh=file_fh)
    for n in (2, 5):
        assert shard_of(write, n) == shard_of(setattr_, n) == shard_of_handle(file_fh, n)
        assert shard_of(create, n) == shard_of(remove, n) == shard_of(bind, n) == shard_of_handle(dir_fh, n)


def test_handles_spread_over_shards():
    rng = random.Random(0)
    counts = Counter(shard_of_handle(rng.randbytes(32), 4) for _ in range(4000))
    assert sorted(counts) == [0, 1, 2, 3]
    assert all(800 < c < 1200 for c in counts.values())


def test_the_shard_count_is_checked():
    with pytest.raises(ValueError):
        shard_of_handle(FH, 0)
    with pytest.raises(ValueError):
        shards_of(record(Op.BASELINE_BEGIN), 0)
