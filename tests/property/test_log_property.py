"""Property tests of logstore: stamp encodings, LOG round trips, torn-tail recovery."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from logstore import Log, LogCorruptError, LogGapError, Stamp
from logstore.segment import HEADER, HEADER_BYTES, SEGMENT_HEADER_BYTES

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

u64 = st.integers(0, (1 << 64) - 1)
u32 = st.integers(0, (1 << 32) - 1)
stamps = st.builds(Stamp, u64, u32, u32)
payloads = st.lists(st.binary(max_size=300), min_size=1, max_size=40)


@pytest.fixture(scope="module", params=["python", "native"])
def writer(request):
    # (The state machine below is a unittest TestCase: it gets its own native twin.)
    """Every test runs against logstore's writer and the native one (the proxy's)."""
    global Log
    python_log = Log
    if request.param == "native":
        from nfsproxy.native.log import NativeLog
        Log = NativeLog
    yield request.param
    Log = python_log


@contextmanager
def temp_dir():
    # Hypothesis reruns the body many times; tmp_path would be shared between runs.
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


def write_log(directory: Path, records: list[bytes], segment_bytes: int) -> None:
    with Log.open(directory, segment_bytes=segment_bytes) as log:
        for record in records:
            log.append(record)


def read_all(log: Log, from_seq: int) -> list[tuple[int, bytes]]:
    with log.read(from_seq) as cursor:
        return [(seq, bytes(p)) for seq, p in cursor]


def newest_segment(directory: Path) -> Path:
    return sorted(directory.glob("*.seg"))[-1]


def unsync_from(directory: Path, path: Path, offset: int, seq: int, *,
                closed: bool = False) -> None:
    """Set the sync mark as if the last sync ended at ``offset`` (after ``seq``)
    of ``path``, or (``closed``) a clean close did."""
    import crc32c
    from logstore.log import _CLOSE_MARK_MAGIC, _MARK, _MARK_MAGIC
    magic = _CLOSE_MARK_MAGIC if closed else _MARK_MAGIC
    body = _MARK.pack(magic, int(path.stem), offset, seq, 0)[:-4]
    (directory / "SYNCED").write_bytes(body + crc32c.crc32c(body).to_bytes(4, "big"))


def frame_offsets(path: Path) -> list[int]:
    data = path.read_bytes()
    offsets, pos = [], SEGMENT_HEADER_BYTES
    while pos < len(data):
        offsets.append(pos)
        pos += HEADER_BYTES + HEADER.unpack_from(data, pos)[0]
    return offsets


# -- Stamp ---------------------------------------------------------------------


@given(stamps, stamps)
def test_stamp_byte_order_is_stamp_order(a, b):
    assert (a < b) == (a.to_bytes() < b.to_bytes())
    assert (a == b) == (a.to_bytes() == b.to_bytes())


@given(stamps)
def test_stamp_encodings_round_trip(stamp):
    assert Stamp.from_bytes(stamp.to_bytes()) == stamp
    assert Stamp.parse(str(stamp)) == stamp


@given(st.text(max_size=40))
def test_stamp_parse_gives_a_stamp_or_value_error(text):
    try:
        stamp = Stamp.parse(text)
    except ValueError:
        return
    assert str(stamp) == text or Stamp.parse(str(stamp)) == stamp


# -- LOG -----------------------------------------------------------------------


@pytest.mark.usefixtures("writer")
@SETTINGS
@given(records=payloads, segment_bytes=st.integers(HEADER_BYTES + 1, 2048), data=st.data())
def test_round_trip_across_rolls_and_reopen(records, segment_bytes, data):
    with temp_dir() as directory:
        write_log(directory, records, segment_bytes)
        with Log.open(directory, segment_bytes=segment_bytes) as log:
            assert log.last_seq == len(records)
            start = data.draw(st.integers(1, len(records) + 1), label="from_seq")
            expected = list(enumerate(records, 1))[start - 1:]
            assert read_all(log, start) == expected
            assert log.verify() == len(records)


@pytest.mark.usefixtures("writer")
@SETTINGS
@given(records=st.lists(st.lists(st.binary(max_size=80), max_size=5), min_size=1, max_size=20),
       segment_bytes=st.integers(64, 1024))
def test_parts_are_stored_as_their_concatenation(records, segment_bytes):
    with temp_dir() as directory:
        with Log.open(directory, segment_bytes=segment_bytes) as log:
            for parts in records:
                log.append([memoryview(p) for p in parts])
        with Log.open(directory, segment_bytes=segment_bytes) as log:
            assert read_all(log, 1) == [(seq, b"".join(parts))
                                        for seq, parts in enumerate(records, 1)]


@pytest.mark.usefixtures("writer")
@SETTINGS
@given(records=payloads, segment_bytes=st.integers(64, 1024), data=st.data())
def test_torn_last_frame_is_cut_at_any_point(records, segment_bytes, data):
    with temp_dir() as directory:
        write_log(directory, records, segment_bytes)
        path = newest_segment(directory)
        last = frame_offsets(path)[-1]
        size = path.stat().st_size
        cut = data.draw(st.integers(last, size - 1), label="cut")
        unsync_from(directory, path, last, len(records) - 1)  # a crash: the last frame was unsynced
        os.truncate(path, cut)
        with Log.open(directory, segment_bytes=segment_bytes) as log:
            assert log.recovered_truncated_bytes == cut - last
            assert log.last_seq == len(records) - 1
            assert read_all(log, log.first_seq) == list(enumerate(records[:-1], 1))
            assert log.append(b"again") == len(records)


@pytest.mark.usefixtures("writer")
@SETTINGS
@given(records=payloads, garbage=st.binary(min_size=1, max_size=600),
       segment_bytes=st.integers(64, 1024))
def test_garbage_after_the_last_frame_is_cut(records, garbage, segment_bytes):
    with temp_dir() as directory:
        write_log(directory, records, segment_bytes)
        path = newest_segment(directory)
        size = path.stat().st_size
        # As a crash after the last sync leaves it: a sync mark, not a close mark.
        unsync_from(directory, path, size, len(records))
        with open(path, "ab") as f:
            f.write(garbage)
        with Log.open(directory, segment_bytes=segment_bytes) as log:
            assert log.recovered_truncated_bytes == len(garbage)
            assert read_all(log, 1) == list(enumerate(records, 1))


@pytest.mark.usefixtures("writer")
@SETTINGS
@given(records=payloads, garbage=st.binary(min_size=1, max_size=600), more=payloads,
       segment_bytes=st.integers(64, 1024))
def test_bytes_past_a_clean_close_are_never_records_nor_a_gap(records, garbage, more,
                                                              segment_bytes):
    with temp_dir() as directory:
        write_log(directory, records, segment_bytes)
        path = newest_segment(directory)
        unsync_from(directory, path, path.stat().st_size, len(records), closed=True)
        with open(path, "ab") as f:
            f.write(garbage)  # what a spare held before it was written over
        with Log.open(directory, segment_bytes=segment_bytes) as log:
            assert log.recovered_truncated_bytes == 0 and not log.torn_tails
            assert read_all(log, 1) == list(enumerate(records, 1))
            for record in more:
                log.append(record)
        with Log.open(directory, segment_bytes=segment_bytes) as log:
            assert not log.torn_tails
            assert read_all(log, 1) == list(enumerate(records + more, 1))


@pytest.mark.usefixtures("writer")
@SETTINGS
@given(records=st.lists(st.binary(max_size=100), min_size=2, max_size=30), data=st.data())
def test_damage_before_a_valid_frame_is_never_truncated(records, data):
    with temp_dir() as directory:
        write_log(directory, records, 1 << 20)
        path = newest_segment(directory)
        offsets = frame_offsets(path)
        victim = data.draw(st.integers(0, len(offsets) - 2), label="victim frame")
        end = offsets[victim + 1]
        where = data.draw(st.integers(offsets[victim], end - 1), label="byte")
        mask = data.draw(st.integers(1, 255), label="xor")
        blob = bytearray(path.read_bytes())
        blob[where] ^= mask
        path.write_bytes(bytes(blob))
        with pytest.raises(LogCorruptError) as info:
            Log.open(directory)
        assert info.value.offset == offsets[victim]
        assert str(path) in str(info.value) and f"offset {offsets[victim]}" in str(info.value)
        assert path.stat().st_size == len(blob)


class LogMachine(RuleBasedStateMachine):
    log_class = Log
    """A LOG against a list model, through appends, syncs, reopens, trims, reads."""

    @initialize(segment_bytes=st.integers(64, 1024))
    def open_log(self, segment_bytes):
        self.tmp = tempfile.TemporaryDirectory()
        self.segment_bytes = segment_bytes
        self.log = self.log_class.open(self.tmp.name, segment_bytes=segment_bytes)
        self.model: dict[int, bytes] = {}
        self.first_seq = 1
        self.cursor = self.log.read(1)
        self.cursor_seen: list[int] = []

    @rule(payload=st.binary(max_size=200))
    def append(self, payload):
        seq = self.log.append(payload)
        assert seq == len(self.model) + 1
        self.model[seq] = payload

    @rule()
    def sync(self):
        assert self.log.sync() == len(self.model) == self.log.synced_seq

    @rule()
    def reopen(self):
        self.cursor.close()
        self.log.close()
        self.log = self.log_class.open(self.tmp.name, segment_bytes=self.segment_bytes)
        assert self.log.recovered_truncated_bytes == 0
        self.cursor = self.log.read(self.log.first_seq)
        self.cursor_seen = list(range(1, self.log.first_seq))

    @rule(data=st.data())
    def trim(self, data):
        below = data.draw(st.integers(1, len(self.model) + 2))
        self.log.trim(below)
        first = self.log.first_seq
        assert self.first_seq <= first <= max(below, self.first_seq)
        self.first_seq = first

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def read_from(self, data):
        start = data.draw(st.integers(1, len(self.model) + 1))
        if start < self.first_seq:
            with pytest.raises(LogGapError):
                self.log.read(start)
            return
        expected = [(s, self.model[s]) for s in range(start, len(self.model) + 1)]
        assert read_all(self.log, start) == expected

    @rule()
    def follow(self):
        try:
            self.cursor_seen.extend(seq for seq, _ in self.cursor)
        except LogGapError:  # a trim overtook this tailing cursor
            self.cursor = self.log.read(self.first_seq)
            self.cursor_seen = list(range(1, self.first_seq))
            self.cursor_seen.extend(seq for seq, _ in self.cursor)
        assert self.cursor_seen == list(range(1, len(self.model) + 1))

    @invariant()
    def seqs_agree(self):
        if hasattr(self, "log"):
            assert self.log.last_seq == len(self.model)
            assert self.log.first_seq == self.first_seq
            segments = self.log.segments
            assert sorted(Path(s.path) for s in segments) == sorted(Path(self.tmp.name).glob("*.seg"))
            assert self.log.size_bytes == sum(s.size_bytes for s in segments)
            for s in segments:  # the active one may be a spare written over: longer
                size = Path(s.path).stat().st_size
                assert size == s.size_bytes or s.active and size > s.size_bytes

    def teardown(self):
        if hasattr(self, "log"):
            self.cursor.close()
            self.log.close()
            self.tmp.cleanup()


LogMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30,
                                        deadline=None)
test_log_machine = LogMachine.TestCase


class NativeLogMachine(LogMachine):
    """The same rules against the native writer (the proxy's)."""

    @property
    def log_class(self):
        from nfsproxy.native.log import NativeLog
        return NativeLog


NativeLogMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30,
                                        deadline=None)
test_native_log_machine = NativeLogMachine.TestCase
