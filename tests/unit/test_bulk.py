"""recoveryd.restore.bulk: many files' records replayed at once by writer threads.

The shards are stood in for by their merged record stream (what
`Shards.scan` gives); the files are real, in a temp dir.
"""

from __future__ import annotations

import os
import threading

import pytest

from logstore.pb.journal_pb2 import Attr, BaselineInfo, Op, Record
from logstore.stamp import Stamp
from recoveryd.restore import bulk
from recoveryd.restore.cut import Cut

BASELINE = Stamp(1_000, 0, 1)


def stamp(i: int) -> bytes:
    return Stamp(2_000 + i, 0, 1).to_bytes()


class Stream:
    """A stand-in for `Shards`: the merged stream of the cut's window."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def scan_apart(self, request, *, prefetch: int = 0):
        yield from ((r, r.data) for r in self.records)


def piece(i: int, fh: bytes, data: bytes, offset: int = 0, *, first: bool = True,
          baseline: Stamp = BASELINE, size: int | None = None) -> Record:
    return Record(stamp=stamp(i), op=Op.BASELINE, ok=True, fh=fh, data=data, offset=offset,
                  baseline_first=first, baseline_id=baseline.to_bytes(),
                  attr=Attr(type=1, size=len(data) + offset if size is None else size, ctime_ns=i))


def cut() -> Cut:
    info = BaselineInfo(baseline_id=BASELINE.to_bytes(), end=Stamp(1_500, 0, 1).to_bytes())
    return Cut(Stamp(10_000, 0, 1), info, None, {})


def test_every_file_gets_its_own_records_in_order(tmp_path):
    records = [
        piece(1, b"A", b"a" * 10, size=20),
        piece(2, b"B", b"bbbb"),
        piece(3, b"A", b"A" * 10, 10, first=False, size=20),
        piece(4, b"X", b"not wanted"),
        piece(5, b"B", b"old baseline", baseline=Stamp(500, 0, 1)),
        Record(stamp=stamp(6), op=Op.WRITE, ok=True, fh=b"B", offset=2, count=4, data=b"WXYZ",
               attr=Attr(type=1, size=6, ctime_ns=6)),
        Record(stamp=stamp(7), op=Op.WRITE, ok=False, fh=b"B", offset=0, data=b"failed"),
        Record(stamp=stamp(8), op=Op.CREATE, ok=True, dir_fh=b"D", name=b"c", fh=b"C",
               attr=Attr(type=1, size=0, ctime_ns=8)),
    ]
    targets = {fh: tmp_path / fh.decode() for fh in (b"A", b"B", b"C")}
    finished, done = {}, []
    lock = threading.Lock()

    def on_finished(fh, size, attr):
        with lock:
            finished[fh] = (size, attr.size, os.path.exists(targets[fh]))

    out = bulk.write_contents(Stream(records), cut(), targets, whole=True, finished=on_finished,
                              done=lambda fh, size: done.append(fh))
    assert (tmp_path / "A").read_bytes() == b"a" * 10 + b"A" * 10
    assert (tmp_path / "B").read_bytes() == b"bbWXYZ"
    assert (tmp_path / "C").read_bytes() == b""   # made, though nothing was written to it
    assert not (tmp_path / "X").exists()
    assert {fh: size for fh, (size, _) in out.items()} == {b"A": 20, b"B": 6, b"C": 0}
    assert finished == {b"A": (20, 20, True), b"B": (6, 6, True), b"C": (0, 0, True)}
    assert sorted(done) == [b"A", b"B", b"C"]


def test_a_file_that_cannot_be_made_fails_the_whole_and_stops_the_writers(tmp_path):
    records = [piece(i, b"F%d" % i, os.urandom(1000)) for i in range(50)]
    targets = {r.fh: tmp_path / r.fh.decode() for r in records}
    (tmp_path / "F7").write_bytes(b"someone else's")  # a restore never writes over a file
    before = threading.active_count()
    with pytest.raises(FileExistsError):
        bulk.write_contents(Stream(records), cut(), targets, whole=True)
    assert (tmp_path / "F7").read_bytes() == b"someone else's"
    assert threading.active_count() == before


class FilesStream(Stream):
    """... and of some files (what `Shards.files_records` gives), asked in parts."""

    def __init__(self, records: list[Record]) -> None:
        super().__init__(records)
        self.asked: list[list[bytes]] = []

    def files_records(self, request, *, prefetch: int = 0, apart: bool = False):
        assert apart
        self.asked.append(list(request.fhs))
        yield from ((r, r.data) for r in self.records if r.fh in set(request.fhs))


def test_some_files_are_asked_for_by_handle_in_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(bulk, "FILES_PER_CALL", 7)
    records = [piece(i, b"F%02d" % i, b"%d" % i * 100) for i in range(40)]
    wanted = [r.fh for r in records[:20]]
    stream = FilesStream(records)
    out = bulk.write_contents(stream, cut(), {fh: tmp_path / fh.decode() for fh in wanted}, whole=False)
    assert sorted(out) == sorted(wanted)
    assert [len(part) for part in stream.asked] == [7, 7, 6]
    assert sorted(os.listdir(tmp_path)) == sorted(fh.decode() for fh in wanted)
    assert (tmp_path / "F13").read_bytes() == b"13" * 100


def test_fills_are_runs_in_order_bounded_by_bytes_and_files():
    files = [(b"a", 40), (b"b", 50), (b"c", 20), (b"big", 500), (b"d", 1), (b"e", 1), (b"f", 1)]
    assert list(bulk.fills(files, 100, most_files=2)) == [
        ([b"a", b"b"], 90), ([b"c"], 20), ([b"big"], 500), ([b"d", b"e"], 2), ([b"f"], 1)]
    assert list(bulk.fills([], 100)) == []
    assert [n for _, n in bulk.fills(files, 1 << 30)] == [sum(size for _, size in files)]
