"""Unit tests of logstore: Stamp, the segmented LOG, recovery, trim, group commit, kill -9."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from logstore import (
    Durability, Log, LogClosedError, LogCorruptError, LogError, LogGapError, Stamp,
)
from nfsproxy.native.log import NativeCommitter as GroupCommitter
from logstore.segment import HEADER, HEADER_BYTES, NO_STAMP, SEGMENT_HEADER_BYTES, encode_frame

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, params=["python", "native"])
def writer(request, monkeypatch) -> str:
    """Every test runs against logstore's writer and the native one (the proxy's);
    group commit is native only."""
    if request.param == "native":
        from nfsproxy.native.log import NativeLog
        monkeypatch.setitem(globals(), "Log", NativeLog)
    elif request.node.get_closest_marker("native_only"):
        pytest.skip("native only")
    return request.param


def payload_for(seq: int) -> bytes:
    """A payload that can be recomputed from its seq, of varying length."""
    return hashlib.sha256(str(seq).encode()).digest() * (1 + seq % 40)


def fill(log: Log, count: int) -> None:
    for _ in range(count):
        seq = log.next_seq
        assert log.append(payload_for(seq)) == seq


def read_all(log: Log, from_seq: int | None = None) -> list[tuple[int, bytes]]:
    start = log.first_seq if from_seq is None else from_seq
    with log.read(start) as cursor:
        return [(seq, bytes(payload)) for seq, payload in cursor]


def assert_intact(log: Log, first: int, last: int) -> None:
    records = read_all(log)
    assert [seq for seq, _ in records] == list(range(first, last + 1))
    assert all(payload == payload_for(seq) for seq, payload in records)


def frame_offsets(path: str) -> list[int]:
    """Byte offset of every frame in a well-formed segment file."""
    data = Path(path).read_bytes()
    offsets, pos = [], SEGMENT_HEADER_BYTES
    while pos < len(data):
        offsets.append(pos)
        pos += HEADER_BYTES + HEADER.unpack_from(data, pos)[0]
    return offsets


def flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x5A]))


def append_bytes(path: str, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


# -- Stamp ---------------------------------------------------------------------


def test_stamp_orders_lexicographically_and_bytes_agree():
    stamps = [Stamp(5, 0, 9), Stamp(5, 1, 0), Stamp(6, 0, 0), Stamp(5, 0, 10), Stamp.ZERO,
              Stamp.MAX]
    assert sorted(stamps) == sorted(stamps, key=lambda s: (s.wall_ns, s.logical, s.node_id))
    assert sorted(stamps) == sorted(stamps, key=Stamp.to_bytes)
    assert Stamp.ZERO < Stamp(0, 0, 1) < Stamp.MAX


def test_stamp_text_and_bytes_round_trip():
    stamp = Stamp(1_700_000_000_123_456_789, 3, 42)
    assert str(stamp) == "1700000000123456789.3@42"
    assert Stamp.parse(str(stamp)) == stamp
    assert len(stamp.to_bytes()) == 16
    assert Stamp.from_bytes(stamp.to_bytes()) == stamp
    assert Stamp.parse(str(Stamp.MAX)) == Stamp.MAX


def test_stamp_iso_is_utc_with_microseconds():
    assert Stamp(1_700_000_000_123_456_789, 0, 0).iso() == "2023-11-14T22:13:20.123456Z"
    assert Stamp.ZERO.iso() == "1970-01-01T00:00:00.000000Z"


@pytest.mark.parametrize("text", ["", "1.2", "1@2", "a.0@1", "1.0@1 ", "-1.0@1", "1.0.0@1",
                                  f"{1 << 64}.0@1", f"1.{1 << 32}@1"])
def test_stamp_parse_rejects_bad_text(text):
    with pytest.raises(ValueError, match="invalid stamp"):
        Stamp.parse(text)


@pytest.mark.parametrize("fields", [(-1, 0, 0), (1 << 64, 0, 0), (0, 1 << 32, 0),
                                    (0, 0, 1 << 32), (0, 0, -1)])
def test_stamp_checks_ranges(fields):
    with pytest.raises(ValueError):
        Stamp(*fields)


def test_stamp_rejects_non_ints_and_wrong_byte_length():
    with pytest.raises(TypeError):
        Stamp(1.0, 0, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Stamp(1, True, 0)
    with pytest.raises(ValueError, match="16 bytes"):
        Stamp.from_bytes(b"\x00" * 15)


# -- appending and reading -----------------------------------------------------


def test_fresh_log_starts_at_seq_1(tmp_path):
    with Log.open(tmp_path) as log:
        assert (log.first_seq, log.last_seq, log.next_seq, log.synced_seq) == (1, 0, 1, 0)
        assert read_all(log) == []
        assert log.append(b"first") == 1
        assert [p.path for p in log.segments] == [str(tmp_path / "00000000000000000001.seg")]


def test_round_trip_across_segment_rolls_and_reopen(tmp_path):
    with Log.open(tmp_path, segment_bytes=1024) as log:
        fill(log, 300)
        assert len(log.segments) > 10
        assert_intact(log, 1, 300)
        assert read_all(log, 123)[0] == (123, payload_for(123))
        assert log.size_bytes == sum(f.stat().st_size for f in tmp_path.glob("*.seg"))
    names = sorted(p.name for p in tmp_path.glob("*.seg"))
    assert all(len(name) == 24 for name in names)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert (log.first_seq, log.last_seq, log.synced_seq) == (1, 300, 300)
        assert log.recovered_truncated_bytes == 0
        assert_intact(log, 1, 300)
        fill(log, 5)
        assert_intact(log, 1, 305)
        assert log.verify() == 305


def test_segment_info_describes_each_segment(tmp_path):
    with Log.open(tmp_path, segment_bytes=1024) as log:
        fill(log, 50)
        infos = log.segments
        assert infos[0].first_seq == 1 and infos[-1].last_seq == 50 and infos[-1].active
        for before, after in zip(infos, infos[1:]):
            assert after.first_seq == before.last_seq + 1 and not before.active
            assert Path(before.path).name == f"{before.first_seq:020d}.seg"


def test_record_larger_than_segment_gets_its_own_segment(tmp_path):
    with Log.open(tmp_path, segment_bytes=256) as log:
        log.append(b"a")
        big = bytes(range(256)) * 8
        seq = log.append(memoryview(big))
        log.append(b"b")
        assert [(s.first_seq, s.last_seq) for s in log.segments] == [(1, 1), (2, 2), (3, 3)]
        assert read_all(log)[1] == (seq, big)


def test_append_accepts_memoryview_and_bytearray(tmp_path):
    with Log.open(tmp_path) as log:
        buf = bytearray(b"0123456789")
        log.append(memoryview(buf)[2:6])
        log.append(buf)
        log.append(b"")
        assert read_all(log) == [(1, b"2345"), (2, b"0123456789"), (3, b"")]


@pytest.mark.native_only
def test_append_of_parts_writes_one_record_without_joining(tmp_path):
    data = bytearray(b"D" * 5000)
    with Log.open(tmp_path, max_record_bytes=6000) as log:
        assert log.append([b"head", b"\x12", memoryview(data)[:4000]]) == 1
        assert log.append((b"solo",)) == 2
        assert log.append([]) == 3
        with pytest.raises(ValueError, match="max_record_bytes"):
            log.append([b"x" * 3000, b"y" * 3001])
        with pytest.raises(ValueError, match="parts"):
            log.append([b"x"] * 1001)
        assert read_all(log) == [(1, b"head\x12" + b"D" * 4000), (2, b"solo"), (3, b"")]

    async def via_committer():
        with Log.open(tmp_path) as log:
            async with GroupCommitter(log) as committer:
                assert await committer.append([b"a", memoryview(b"bc")]) == 4
                assert committer.appended_bytes_total == 3
            assert read_all(log, 4) == [(4, b"abc")]

    asyncio.run(via_committer())


def test_max_record_bytes_is_enforced(tmp_path):
    with Log.open(tmp_path, max_record_bytes=10) as log:
        log.append(b"x" * 10)
        with pytest.raises(ValueError, match="max_record_bytes"):
            log.append(b"x" * 11)
        assert log.last_seq == 1


def test_sync_advances_synced_seq(tmp_path):
    with Log.open(tmp_path, segment_bytes=512) as log:
        fill(log, 3)
        assert log.synced_seq < log.last_seq
        assert log.sync() == 3 == log.synced_seq
        fill(log, 40)  # rolls fsync the segments they seal
        assert log.synced_seq >= 3
        assert log.sync() == log.last_seq


def test_cursor_follows_appends_and_resumes(tmp_path):
    with Log.open(tmp_path, segment_bytes=512) as log:
        cursor = log.read(1)
        assert list(cursor) == []
        fill(log, 3)
        got = [seq for seq, _ in cursor]
        assert got == [1, 2, 3]
        fill(log, 40)  # rolls several times after the cursor was made
        got = [(seq, bytes(p)) for seq, p in cursor]
        assert [seq for seq, _ in got] == list(range(4, 44))
        assert all(p == payload_for(s) for s, p in got)
        assert cursor.next_seq == 44
        cursor.close()


def test_cursor_interleaved_with_appends_on_active_segment(tmp_path):
    with Log.open(tmp_path, segment_bytes=600) as log:
        cursor = log.read(log.next_seq)
        seen = []
        for _ in range(100):
            fill(log, 1)
            seen.extend(seq for seq, _ in cursor)
        assert seen == list(range(1, 101))


def test_read_outside_the_log_raises_gap(tmp_path):
    with Log.open(tmp_path) as log:
        fill(log, 3)
        assert list(log.read(4)) == []
        with pytest.raises(LogGapError, match="never written"):
            log.read(5)
        with pytest.raises(ValueError):
            log.read(0)


def test_second_open_of_same_directory_is_refused(tmp_path):
    with Log.open(tmp_path):
        with pytest.raises(LogError, match="already open"):
            Log.open(tmp_path)
    Log.open(tmp_path).close()


def test_closed_log_refuses_use(tmp_path):
    log = Log.open(tmp_path)
    fill(log, 1)
    log.close()
    log.close()
    with pytest.raises(LogClosedError):
        log.append(b"x")
    with pytest.raises(LogClosedError):
        log.read(1)


def test_repr_names_directory_and_seqs(tmp_path):
    with Log.open(tmp_path) as log:
        fill(log, 2)
        log.sync()
        assert repr(log) == f"<Log {str(tmp_path)!r} seqs 1..2 synced 2, 1 segment(s), " \
                            f"{log.size_bytes} bytes>"


# -- recovery ------------------------------------------------------------------


def newest_segment(directory: Path) -> str:
    return str(sorted(directory.glob("*.seg"))[-1])


@pytest.mark.parametrize("tail", [
    pytest.param(b"\x00" * 5000, id="zeros"),
    pytest.param(b"\x07" * 10, id="short-garbage"),
    pytest.param(os.urandom(3000), id="random-garbage"),
    pytest.param(HEADER.pack(100, 0xDEAD, 21, NO_STAMP, 0, 0), id="header-without-payload"),
    pytest.param(HEADER.pack(3, 0xDEAD, 21, NO_STAMP, 0, 0) + b"abc", id="bad-crc"),
])
def test_torn_tail_is_truncated_and_reported(tmp_path, caplog, tail):
    with Log.open(tmp_path, segment_bytes=4096) as log:
        fill(log, 20)
        newest = log.segments[-1]
    path = newest_segment(tmp_path)
    size = os.path.getsize(path)
    # As a crash after the last sync leaves it: a sync mark, not a close mark.
    write_mark(tmp_path, newest.first_seq, newest.size_bytes, newest.last_seq)
    append_bytes(path, tail)
    with caplog.at_level(logging.WARNING, logger="logstore.log"):
        log = Log.open(tmp_path, segment_bytes=4096)
    with log:
        assert log.recovered_truncated_bytes == len(tail)
        assert os.path.getsize(path) == size
        assert "torn tail" in caplog.text and path in caplog.text
        assert_intact(log, 1, 20)
        assert log.append(payload_for(21)) == 21
    with Log.open(tmp_path, segment_bytes=4096) as log:
        assert log.recovered_truncated_bytes == 0
        assert_intact(log, 1, 21)


def write_mark(directory: Path, base_seq: int, offset: int, seq: int, *,
               closed: bool = False) -> None:
    """Set the sync mark as an earlier sync left it, or (``closed``) as a
    clean close leaves it (logstore/FORMAT.md, "Sync mark")."""
    from logstore.log import _CLOSE_MARK_MAGIC, _MARK, _MARK_MAGIC
    import crc32c
    magic = _CLOSE_MARK_MAGIC if closed else _MARK_MAGIC
    body = _MARK.pack(magic, base_seq, offset, seq, 0)[:-4]
    (directory / "SYNCED").write_bytes(body + crc32c.crc32c(body).to_bytes(4, "big"))


@pytest.mark.parametrize("closed", [True, False], ids=["close-mark", "sync-mark"])
def test_a_spares_older_frames_past_the_end_are_cut_and_a_gap_only_after_a_crash(tmp_path,
                                                                                 closed):
    with Log.open(tmp_path, segment_bytes=1024) as log:
        fill(log, 30)
        newest = log.segments[-1]
    assert newest.first_seq > 3
    path = newest_segment(tmp_path)
    # The bytes of an older segment this file held before it was written over.
    append_bytes(path, encode_frame(2, payload_for(2)) + encode_frame(3, payload_for(3)))
    write_mark(tmp_path, newest.first_seq, newest.size_bytes, newest.last_seq, closed=closed)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        # After a crash, the LOG cannot tell where writing stopped: a gap.
        assert len(log.torn_tails) == (0 if closed else 1)
        assert_intact(log, 1, 30)
        assert log.append(payload_for(31)) == 31
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert not log.torn_tails or not closed
        assert_intact(log, 1, 31)


def test_a_frame_of_the_segment_itself_past_a_clean_close_is_corruption(tmp_path):
    with Log.open(tmp_path, segment_bytes=1024) as log:
        fill(log, 30)
        newest = log.segments[-1]
    path = newest_segment(tmp_path)
    # No spare holds it (its frames are all older): not what a writer left.
    append_bytes(path, b"\x00" * 7 + encode_frame(newest.first_seq, b"x"))
    write_mark(tmp_path, newest.first_seq, newest.size_bytes, newest.last_seq, closed=True)
    with pytest.raises(LogCorruptError, match="lies past the clean close") as info:
        Log.open(tmp_path, segment_bytes=1024)
    assert info.value.offset == newest.size_bytes


def test_a_close_mark_does_not_outlive_the_next_open(tmp_path):
    src = tmp_path / "log"
    with Log.open(src, segment_bytes=1024) as log:
        fill(log, 30)
        newest = log.segments[-1]
    write_mark(src, newest.first_seq, newest.size_bytes, newest.last_seq, closed=True)
    with Log.open(src, segment_bytes=1024):
        # What a crash right after this open leaves, with an append torn.
        image = tmp_path / "image"
        shutil.copytree(src, image)
    append_bytes(newest_segment(image), b"\x07" * 100)
    with Log.open(image, segment_bytes=1024) as log:
        assert len(log.torn_tails) == 1, "appends after a clean close's mark are never a spare's"
        assert_intact(log, 1, 30)


def test_torn_first_frame_of_new_segment_leaves_it_empty(tmp_path):
    with Log.open(tmp_path, segment_bytes=1024) as log:
        fill(log, 30)
        previous, newest = log.segments[-2:]
    # As a crash leaves it: the last sync was before the roll, the new segment's first frame is torn.
    write_mark(tmp_path, previous.first_seq, previous.size_bytes, previous.last_seq)
    with open(newest.path, "r+b") as f:
        f.truncate(SEGMENT_HEADER_BYTES + HEADER_BYTES + 3)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert log.last_seq == newest.first_seq - 1
        assert os.path.getsize(newest.path) == SEGMENT_HEADER_BYTES
        assert log.append(b"next") == newest.first_seq
        assert read_all(log)[-1] == (newest.first_seq, b"next")


def test_empty_trailing_segment_is_fine(tmp_path):
    with Log.open(tmp_path) as log:
        fill(log, 4)
    (tmp_path / f"{5:020d}.seg").touch()
    with Log.open(tmp_path) as log:
        assert (log.last_seq, log.next_seq, len(log.segments)) == (4, 5, 2)
        assert log.append(payload_for(5)) == 5
        assert_intact(log, 1, 5)


@pytest.mark.parametrize("where", [0, 3, 6, 8, 12, 16, 40])
def test_corrupt_middle_frame_raises_naming_file_and_offset(tmp_path, where):
    with Log.open(tmp_path) as log:
        fill(log, 10)
    path = newest_segment(tmp_path)
    offset = frame_offsets(path)[4]
    size = os.path.getsize(path)
    flip_byte(path, offset + where)
    with pytest.raises(LogCorruptError) as info:
        Log.open(tmp_path)
    assert info.value.path == path and info.value.offset == offset
    assert path in str(info.value) and f"offset {offset}" in str(info.value)
    assert os.path.getsize(path) == size  # corruption is never "repaired" by truncation


def test_wellformed_frame_with_wrong_seq_is_corruption(tmp_path):
    with Log.open(tmp_path) as log:
        fill(log, 3)
    path = newest_segment(tmp_path)
    append_bytes(path, encode_frame(7, b"x"))
    with pytest.raises(LogCorruptError, match="seq discontinuity: expected seq 4, found 7"):
        Log.open(tmp_path)


def test_corrupt_sealed_segment_raises_on_read_and_verify(tmp_path):
    with Log.open(tmp_path, segment_bytes=1024) as log:
        fill(log, 60)
        sealed = log.segments[1]
    offset = frame_offsets(sealed.path)[1]
    flip_byte(sealed.path, offset + HEADER_BYTES + 2)
    with Log.open(tmp_path, segment_bytes=1024) as log:  # only the newest is scanned
        with pytest.raises(LogCorruptError) as info:
            read_all(log, 1)
        assert info.value.path == sealed.path and info.value.offset == offset
        assert sealed.path in str(info.value) and f"offset {offset}" in str(info.value)
        # Records before the damage are still readable.
        assert read_all(log, sealed.last_seq + 1)[0][0] == sealed.last_seq + 1
    with pytest.raises(LogCorruptError, match=f"offset {offset}"):
        Log.open(tmp_path, segment_bytes=1024, verify_all=True)


def test_missing_middle_segment_is_a_seq_discontinuity(tmp_path):
    with Log.open(tmp_path, segment_bytes=1024) as log:
        fill(log, 60)
        infos = log.segments
    os.unlink(infos[1].path)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        with pytest.raises(LogCorruptError, match="seq discontinuity") as info:
            read_all(log, 1)
        assert info.value.path == infos[0].path


# -- trim ----------------------------------------------------------------------


def test_trim_deletes_whole_segments_and_keeps_numbering(tmp_path):
    with Log.open(tmp_path, segment_bytes=1024) as log:
        fill(log, 100)
        calls = []
        log.add_trim_listener(lambda: calls.append(log.first_seq))
        infos = log.segments
        size_before = log.size_bytes
        cut = infos[3].first_seq + 1  # inside segment 3: it must survive
        assert log.trim(cut) == 3
        assert log.first_seq == infos[3].first_seq
        assert calls == [infos[3].first_seq]
        assert log.size_bytes == size_before - sum(i.size_bytes for i in infos[:3])
        assert not os.path.exists(infos[0].path)
        with pytest.raises(LogGapError, match="trimmed"):
            log.read(infos[3].first_seq - 1)
        assert_intact(log, infos[3].first_seq, 100)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert log.first_seq == infos[3].first_seq
        assert_intact(log, infos[3].first_seq, 100)


def test_trim_everything_never_reuses_seqs(tmp_path):
    with Log.open(tmp_path, segment_bytes=512) as log:
        fill(log, 40)
        log.trim(10**9)
        assert len(log.segments) == 1  # the active segment stays
        active = log.segments[0]
        assert log.first_seq == active.first_seq > 1
        assert log.append(b"after") == 41
    with Log.open(tmp_path, segment_bytes=512) as log:
        assert log.last_seq == 41 and log.next_seq == 42


def test_cursor_in_trimmed_segment_ends_in_a_gap(tmp_path):
    with Log.open(tmp_path, segment_bytes=1024) as log:
        fill(log, 60)
        cursor = log.read(1)
        assert next(cursor)[0] == 1
        log.trim(log.segments[-1].first_seq)
        with pytest.raises(LogGapError):
            list(cursor)
        cursor.close()


@pytest.mark.native_only
def test_a_trimmed_segment_is_kept_as_a_spare_and_a_new_segment_written_over_it(tmp_path):
    log = Log.open(tmp_path, segment_bytes=1024, spare_segments=1)
    with log:
        fill(log, 60)
        infos = log.segments
        inode = os.stat(infos[0].path).st_ino
        assert log.trim(infos[2].first_seq) == 2
        spares = sorted(tmp_path.glob("*.spare"))
        assert [os.stat(p).st_ino for p in spares] == [inode], "one spare kept, one deleted"
        assert not any(os.path.exists(i.path) for i in infos[:2])
        assert (log.spare_segments, log.recycled_segments) == (1, 0)
        while len(log.segments) == len(infos) - 2:
            fill(log, 1)
        assert os.stat(log.segments[-1].path).st_ino == inode
        assert not list(tmp_path.glob("*.spare"))
        assert (log.spare_segments, log.recycled_segments) == (0, 1)
        fill(log, 3)
        assert_intact(log, infos[2].first_seq, log.last_seq)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert not log.torn_tails
        assert_intact(log, infos[2].first_seq, log.last_seq)


@pytest.mark.native_only
def test_a_spare_no_longer_cached_is_deleted_not_written_over(tmp_path):
    with Log.open(tmp_path, segment_bytes=1024, spare_segments=1) as log:
        fill(log, 60)
        count = len(log.segments)
        log.trim(log.segments[1].first_seq)
        [spare] = tmp_path.glob("*.spare")
        fd = os.open(spare, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # as memory pressure would
        os.close(fd)
        while len(log.segments) == count - 1:
            fill(log, 1)
        # Writing part of a page that is not cached reads it from disk first.
        assert not spare.exists()
        newest = log.segments[-1]
        assert os.path.getsize(newest.path) == newest.size_bytes, "a new file, no older bytes"


@pytest.mark.native_only
def test_a_cursor_never_reads_a_trimmed_segment_written_over(tmp_path):
    with Log.open(tmp_path, segment_bytes=1024, spare_segments=1) as log:
        fill(log, 60)
        cursor = log.read(1)
        assert next(cursor)[0] == 1
        first = log.segments[0]
        log.trim(log.segments[1].first_seq)
        while os.path.exists(tmp_path / f"{first.first_seq:020d}.spare"):
            fill(log, 1)
        fill(log, 20)  # the spare, now the newest segment, written over past the cursor
        with pytest.raises(LogGapError):
            list(cursor)
        cursor.close()


# -- group commit --------------------------------------------------------------


@pytest.mark.native_only
def test_group_commit_shares_fsyncs(tmp_path):
    async def main():
        log = Log.open(tmp_path, segment_bytes=8192)
        committer = GroupCommitter(log, durability="sync")

        async def one(i):
            seq = await committer.append(payload_for(i + 1))
            assert log.synced_seq >= seq  # resolved only once durable
            return seq

        seqs = await asyncio.gather(*(one(i) for i in range(200)))
        assert sorted(seqs) == list(range(1, 201))
        assert committer.appends_total == 200
        assert 1 <= committer.fsyncs_total < 200
        assert committer.appended_bytes_total == sum(len(payload_for(s)) for s in seqs)
        assert committer.unsynced_records == 0 and committer.unsynced_bytes == 0
        await committer.close()
        log.close()

    asyncio.run(main())
    with Log.open(tmp_path, segment_bytes=8192) as log:
        assert_intact(log, 1, 200)


@pytest.mark.native_only
def test_group_commit_batches_appends_arriving_during_fsync(tmp_path):
    async def main():
        with Log.open(tmp_path) as log:
            async with GroupCommitter(log) as committer:
                async def writer(k):
                    for _ in range(25):
                        await committer.append(b"r%d" % k)
                await asyncio.gather(*(writer(k) for k in range(16)))
                assert committer.appends_total == 400
                assert committer.fsyncs_total < 400
                assert log.synced_seq == 400

    asyncio.run(main())


@pytest.mark.native_only
def test_async_durability_tracks_the_rpo_window(tmp_path):
    async def main():
        with Log.open(tmp_path) as log:
            committer = GroupCommitter(log, durability=Durability.ASYNC, flush_interval_s=3600)
            started = time.monotonic()
            assert await committer.append(b"abc") == 1
            await asyncio.sleep(0.01)
            assert await committer.append(b"defg") == 2
            assert committer.unsynced_records == 2
            assert committer.unsynced_bytes == 7
            # The age is the native clock's: between the sleep and all that elapsed.
            assert 0.01 <= committer.oldest_unsynced_age_s <= time.monotonic() - started
            assert log.synced_seq == 0
            assert await committer.flush() == 2
            assert committer.fsyncs_total == 1
            assert (committer.unsynced_records, committer.unsynced_bytes) == (0, 0)
            assert committer.oldest_unsynced_age_s == 0.0
            await committer.append(b"h")
            await committer.close()  # syncs what is left
            assert log.synced_seq == 3
            with pytest.raises(LogClosedError):
                await committer.append(b"late")

    asyncio.run(main())


@pytest.mark.native_only
def test_async_durability_background_flusher_syncs(tmp_path):
    async def main():
        with Log.open(tmp_path) as log:
            async with GroupCommitter(log, durability="async", flush_interval_s=0.001) as c:
                for i in range(50):
                    await c.append(payload_for(i + 1))
                while log.synced_seq < 50:  # the flusher gets there on its own
                    await asyncio.sleep(0.001)
                assert 1 <= c.fsyncs_total <= 50
                assert c.unsynced_records == 0

    asyncio.run(main())


@pytest.mark.native_only
def test_cancelled_appender_does_not_disturb_others(tmp_path):
    async def main():
        with Log.open(tmp_path) as log:
            async with GroupCommitter(log) as committer:
                doomed = asyncio.create_task(committer.append(b"doomed"))
                others = [asyncio.create_task(committer.append(b"ok")) for _ in range(5)]
                await asyncio.sleep(0)
                doomed.cancel()
                assert sorted(await asyncio.gather(*others)) == [2, 3, 4, 5, 6]
        with Log.open(tmp_path) as log:
            assert [bytes(p) for _, p in log.read(1)] == [b"doomed"] + [b"ok"] * 5

    asyncio.run(main())


@pytest.mark.native_only
def test_quota_and_wait_for_space(tmp_path):
    async def main():
        with Log.open(tmp_path, segment_bytes=1024) as log:
            committer = GroupCommitter(log, durability="async", quota_bytes=4096)
            assert not committer.over_quota
            await committer.wait_for_space()  # under quota: returns at once
            while log.size_bytes < 4096 + 2048:
                await committer.append(payload_for(log.next_seq))
            assert committer.over_quota
            waiter = asyncio.create_task(committer.wait_for_space())
            await asyncio.sleep(0)
            assert not waiter.done()
            assert log.trim(log.segments[1].first_seq) == 1  # not enough: still over quota
            for _ in range(5):
                await asyncio.sleep(0)
            assert committer.over_quota and not waiter.done()
            # Trim from another thread, as a retention loop might.
            await asyncio.to_thread(log.trim, log.segments[-1].first_seq)
            await waiter
            assert not committer.over_quota
            await committer.close()
            assert GroupCommitter(log, quota_bytes=None).over_quota is False

    asyncio.run(main())


# -- kill -9 -------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import asyncio, hashlib, sys
    sys.path.insert(0, sys.argv[2])
    from nfsproxy.native.log import NativeCommitter as GroupCommitter, NativeLog as Log

    def payload_for(seq):
        return hashlib.sha256(str(seq).encode()).digest() * (1 + seq % 40)

    async def main(directory):
        log = Log.open(directory, segment_bytes=16 << 10)
        committer = GroupCommitter(log, durability="sync")

        async def writer():
            while True:
                seq = log.next_seq  # append() writes before its first await
                got = await committer.append(payload_for(seq))
                assert got == seq, (got, seq)
                sys.stdout.write(f"{seq}\\n")  # one write: a line is whole or absent
                sys.stdout.flush()

        await asyncio.gather(*(writer() for _ in range(8)))

    asyncio.run(main(sys.argv[1]))
""")


@pytest.mark.native_only
@pytest.mark.parametrize("run", range(4))
def test_kill_9_loses_no_acknowledged_record(tmp_path, run):
    rng = random.Random(run)
    directory = tmp_path / "log"
    acked: list[int] = []
    for _ in range(2):  # the second child recovers what the first left behind
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(directory), str(REPO_ROOT)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = child.stdout.readline()
        assert first, child.stderr.read().decode()
        time.sleep(rng.uniform(0.0, 0.3))
        assert child.poll() is None, child.stderr.read().decode()
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()
        lines = (first + rest).split(b"\n")[:-1]  # a torn last line is not an ack
        acked.extend(int(line) for line in lines)
    assert len(acked) == len(set(acked)) > 0
    with Log.open(directory) as log:
        records = dict(read_all(log))
        assert list(records) == list(range(1, log.last_seq + 1))
        for seq in acked:
            assert records[seq] == payload_for(seq), seq
        assert all(payload == payload_for(seq) for seq, payload in records.items())
