"""One file's replay (recoveryd.restore.replay): the size it ends with."""

from __future__ import annotations

import os
import tempfile

from hypothesis import given, strategies as st

from logstore.record import Attr, Op, Record
from recoveryd.restore.replay import BufferOut, FdOut, replay


def stamp(n: int) -> bytes:
    return n.to_bytes(8, "big") + bytes(8)


def write(n: int, offset: int, data: bytes, attr: Attr | None = None) -> Record:
    r = Record(op=Op.WRITE, ok=True, stamp=stamp(n), fh=b"f", offset=offset, count=len(data), data=data)
    if attr is not None:
        r.attr.CopyFrom(attr)
    return r


def replayed(tmp_path, records: list[Record]) -> bytes:
    path = tmp_path / "file"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        replay(records, b"f", fd)
    finally:
        os.close(fd)
    return path.read_bytes()


def test_the_newest_attributes_set_the_size(tmp_path):
    """The NAS's truth: a file the NAS cut shorter than its writes ends at its attributes' size."""
    records = [write(1, 0, b"a" * 100, Attr(type=1, size=100, ctime_ns=1)),
               write(2, 100, b"b" * 100, Attr(type=1, size=50, ctime_ns=2))]
    assert replayed(tmp_path, records) == b"a" * 50


def test_a_write_without_attributes_after_them_is_not_cut_off(tmp_path):
    """NFSv3 replies may omit post-op attributes, and a record rebuilt from its
    write-ahead intent has none: older attributes must not cut its bytes off."""
    records = [write(1, 0, b"a" * 100, Attr(type=1, size=100, ctime_ns=1)),
               write(2, 100, b"b" * 100)]
    assert replayed(tmp_path, records) == b"a" * 100 + b"b" * 100


def test_newer_attributes_count_again(tmp_path):
    records = [write(1, 0, b"a" * 100, Attr(type=1, size=100, ctime_ns=1)),
               write(2, 100, b"b" * 100),
               write(3, 0, b"c" * 10, Attr(type=1, size=150, ctime_ns=3))]
    assert replayed(tmp_path, records) == b"c" * 10 + b"a" * 90 + b"b" * 50


def test_a_trailing_hole_the_attributes_tell_survives_a_later_write_without_them(tmp_path):
    """A baseline reads no bytes from a trailing hole; only its attributes tell
    the size. A later WRITE without attributes inside the file leaves it."""
    piece = Record(op=Op.BASELINE, ok=True, stamp=stamp(1), fh=b"f", offset=0, data=b"a" * 10,
                   baseline_first=True)
    piece.attr.CopyFrom(Attr(type=1, size=100, ctime_ns=1))
    assert replayed(tmp_path, [piece, write(2, 0, b"b" * 5)]) == b"b" * 5 + b"a" * 5 + bytes(90)


def test_a_setattr_without_attributes_sets_the_size(tmp_path):
    records = [write(1, 0, b"a" * 100, Attr(type=1, size=100, ctime_ns=1)),
               Record(op=Op.SETATTR, ok=True, stamp=stamp(2), fh=b"f", set={"size": 30})]
    assert replayed(tmp_path, records) == b"a" * 30


@given(st.lists(st.one_of(
    st.tuples(st.just("write"), st.binary(min_size=0, max_size=64), st.integers(0, 200)),
    st.tuples(st.just("truncate"), st.just(b""), st.integers(0, 300))), max_size=20))
def test_a_buffer_reads_as_a_file_written_and_truncated_the_same_way(steps):
    """BufferOut (a fill held in memory) and FdOut (a file) end with the same bytes."""
    buffer = BufferOut()
    fd, path = tempfile.mkstemp()
    try:
        file = FdOut(fd)
        for op, data, n in steps:
            for out in (buffer, file):
                out.write(data, n) if op == "write" else out.truncate(n)
        assert bytes(buffer.buf) == os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)
        os.unlink(path)
