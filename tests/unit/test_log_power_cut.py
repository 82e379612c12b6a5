"""Power cuts: the LOG recovers from a copy of its files as a crash would leave them.

``PowerCut`` watches every fsync/fdatasync the LOG makes and remembers what
each file (and each directory's entries) held at its last one. ``crash_copy``
then builds the directory a power cut could leave: durable content intact;
past it, the file may be any length up to what was written, and each page
there may hold the new data, zeros or garbage (pages are written back in any
order, and unwritten extents read as zeros); a page written over since (a
spare made a new segment) holds its old or its new data, sector by sector;
an entry never made durable by a directory fsync may be missing. Recovery must open every such copy, keep
every record reported synced, and refuse damage inside the synced region.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logstore import Log, LogCorruptError
from nfsproxy import _dataplane
from logstore.segment import HEADER, HEADER_BYTES, NO_STAMP, SEGMENT_HEADER_BYTES

PAGE = 4096
SECTOR = 512
FATES = ("new", "zeros", "garbage")


@pytest.fixture(autouse=True, params=["python", "native"])
def writer(request, monkeypatch):
    """Every power cut hits logstore's writer and the native one (the proxy's)."""
    if request.param == "native":
        from nfsproxy.native.log import NativeLog
        monkeypatch.setitem(globals(), "Log", NativeLog)
    yield request.param
    _dataplane._set_fsync_observer(None)


class PowerCut:
    """Records what the disk durably holds, from the LOG's own fsyncs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.content: dict[int, bytes] = {}      # inode -> bytes at its last fsync (renames keep it)
        self.entries: dict[str, set[str]] = {}   # directory -> names at its last fsync
        real_fsync, real_fdatasync = os.fsync, os.fdatasync

        def record(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if os.path.isdir(path):
                self.entries[path] = set(os.listdir(path))
            else:
                self.content[os.fstat(fd).st_ino] = Path(path).read_bytes()

        def fsync(fd: int) -> None:
            real_fsync(fd)
            record(fd)

        def fdatasync(fd: int) -> None:
            real_fdatasync(fd)
            record(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        _dataplane._set_fsync_observer(record)  # the native writer's fsyncs

    def crash_copy(self, src: Path, dst: Path, rng: random.Random,
                   fates: tuple[str, ...] = FATES, keep_new_entries: bool | None = None) -> None:
        """Write to ``dst`` what a power cut could leave of ``src``."""
        dst.mkdir()
        durable_names = self.entries.get(str(src), set())
        for name in sorted(os.listdir(src)):
            keep = keep_new_entries if keep_new_entries is not None else rng.random() < 0.5
            if name not in durable_names and not keep:
                continue
            path = str(src / name)
            durable = self.content.get(os.stat(path).st_ino, b"")
            current = Path(path).read_bytes()
            (dst / name).write_bytes(_crashed(durable, current, rng, fates))


def _crashed(durable: bytes, current: bytes, rng: random.Random, fates: tuple[str, ...]) -> bytes:
    if len(current) <= SECTOR and not current.startswith(durable):
        return rng.choice([durable, current])  # the sync mark: one sector, old or new
    if len(current) < len(durable):  # cut short since: old length or new
        return rng.choice([durable, current])
    same = next((i for i, (a, b) in enumerate(zip(durable, current)) if a != b), len(durable))
    length = rng.randint(len(durable), len(current))
    out = bytearray(current[:length])
    for sector in range(same // SECTOR, len(durable) // SECTOR + 1):  # written over
        lo, hi = sector * SECTOR, min((sector + 1) * SECTOR, len(durable))
        if lo < hi and rng.random() < 0.5:
            out[lo:hi] = durable[lo:hi]
    first_page = len(durable) // PAGE
    for page in range(first_page, (length + PAGE - 1) // PAGE):
        lo, hi = max(page * PAGE, len(durable)), min((page + 1) * PAGE, length)
        fate = rng.choice(fates)
        if fate == "zeros":
            out[lo:hi] = bytes(hi - lo)
        elif fate == "garbage":
            out[lo:hi] = rng.randbytes(hi - lo)
    return bytes(out)


def payload_for(seq: int, uniform: bool = False) -> bytes:
    """The record for ``seq``; ``uniform``: all of one length, so frames written
    over a spare start where its older frames did (as 4 KiB WRITEs do)."""
    if uniform:
        return f"record {seq:09d} ".encode() * 40
    return (f"record {seq} ".encode() * (1 + seq * 37 % 90))[:1500]


def read_all(log: Log) -> list[tuple[int, bytes]]:
    with log.read(log.first_seq) as cursor:
        return [(seq, bytes(p)) for seq, p in cursor]


def assert_recovered(directory: Path, synced_seq: int, uniform: bool = False,
                     **open_args) -> Log:
    """Open a crash copy: every record through ``synced_seq`` must be there, intact."""
    log = Log.open(directory, **open_args)
    records = read_all(log)
    assert [seq for seq, _ in records] == list(range(log.first_seq, log.last_seq + 1))
    assert log.last_seq >= synced_seq
    for seq, payload in records:
        if not payload.startswith(b"GAP"):
            assert payload == payload_for(seq, uniform), seq
    return log


@contextmanager
def temp_dir():
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


# -- deterministic cases ------------------------------------------------------------


def test_a_rolled_segment_counts_as_synced_only_once_its_entry_is_durable(tmp_path, monkeypatch):
    cut = PowerCut(monkeypatch)
    src = tmp_path / "log"
    log = Log.open(src, segment_bytes=8 << 10)
    for seq in range(1, 80):  # several rolls, no sync() in between
        log.append(payload_for(seq))
    synced = log.synced_seq
    assert len(log.segments) > 3 and synced > 0
    # The power goes: directory entries that were never fsynced are lost.
    cut.crash_copy(src, tmp_path / "crash", random.Random(1), fates=("zeros",),
                   keep_new_entries=False)
    log.close()
    with assert_recovered(tmp_path / "crash", synced) as recovered:
        assert recovered.last_seq >= synced


def test_zeros_then_frames_never_synced_are_a_torn_tail(tmp_path, monkeypatch):
    cut = PowerCut(monkeypatch)
    src = tmp_path / "log"
    log = Log.open(src, mark_interval_s=0)
    for seq in range(1, 6):
        log.append(payload_for(seq))
    synced = log.sync()
    for seq in range(6, 30):  # many pages, never synced
        log.append(payload_for(seq))
    durable_len = len(cut.content[os.stat(src / f"{1:020d}.seg").st_ino])
    rng = random.Random(7)

    class FirstPageZeroed(random.Random):  # zeros on the first unsynced page, then real frames
        def choice(self, seq):
            return "zeros" if seq == FATES else rng.choice(seq)

        def randint(self, a, b):
            return b

    cut.crash_copy(src, tmp_path / "crash", FirstPageZeroed(), keep_new_entries=True)
    log.close()
    crash_seg = tmp_path / "crash" / f"{1:020d}.seg"
    assert crash_seg.read_bytes()[durable_len:durable_len + HEADER_BYTES] == bytes(HEADER_BYTES)
    markers = []
    with assert_recovered(tmp_path / "crash", synced,
                          torn_marker=lambda t: markers.append(t) or b"GAP " + str(t).encode()) as log:
        assert log.recovered_truncated_bytes > 0
        assert log.last_seq == synced + 1  # the survivors, then the gap marker
        assert read_all(log)[-1][1].startswith(b"GAP ")
        assert len(markers) == 1 and markers[0].after_seq == synced
    with Log.open(tmp_path / "crash", torn_marker=lambda t: b"GAP again") as log:
        assert log.last_seq == synced + 1 and log.torn_tails == ()  # noted once, marked once


def test_a_torn_tail_is_noted_until_a_marker_can_be_written(tmp_path):
    with Log.open(tmp_path, mark_interval_s=0) as log:
        for seq in range(1, 4):
            log.append(payload_for(seq))
    with open(tmp_path / f"{1:020d}.seg", "ab") as f:
        f.write(b"\x00" * 100 + HEADER.pack(3, 0, 4, NO_STAMP, 0, 0) + b"abc")
    # Cut, but opened without a marker: nothing is written, the note stays.
    import crc32c
    from logstore.log import _MARK, _MARK_MAGIC
    size = os.path.getsize(tmp_path / f"{1:020d}.seg") - 100 - HEADER_BYTES - 3
    body = _MARK.pack(_MARK_MAGIC, 1, size, 3, 0)[:-4]
    (tmp_path / "SYNCED").write_bytes(body + crc32c.crc32c(body).to_bytes(4, "big"))
    with Log.open(tmp_path) as log:
        assert log.last_seq == 3 and len(log.torn_tails) == 1
    with Log.open(tmp_path, torn_marker=lambda t: b"GAP " + str(t).encode()) as log:
        assert log.last_seq == 4 and read_all(log)[-1][1].startswith(f"GAP {100 + HEADER_BYTES + 3} bytes".encode())
    assert not (tmp_path / "TORN").exists()


def test_corruption_inside_the_synced_region_is_refused(tmp_path, monkeypatch):
    cut = PowerCut(monkeypatch)
    src = tmp_path / "log"
    log = Log.open(src, mark_interval_s=0)
    for seq in range(1, 10):
        log.append(payload_for(seq))
    synced = log.sync()
    for seq in range(10, 14):
        log.append(payload_for(seq))
    cut.crash_copy(src, tmp_path / "crash", random.Random(3), fates=("new",))
    log.close()
    assert synced == 9
    path = tmp_path / "crash" / f"{1:020d}.seg"
    blob = bytearray(path.read_bytes())
    offsets, pos = [], SEGMENT_HEADER_BYTES
    while pos < len(blob):
        offsets.append(pos)
        pos += HEADER_BYTES + HEADER.unpack_from(blob, pos)[0]
    blob[offsets[4] + HEADER_BYTES + 5] ^= 0x41  # seq 5: synced
    path.write_bytes(bytes(blob))
    with pytest.raises(LogCorruptError) as info:
        Log.open(tmp_path / "crash")
    assert info.value.path == str(path) and info.value.offset == offsets[4]
    assert "inside the region the LOG had synced" in str(info.value)
    assert path.stat().st_size == len(blob)


def test_a_synced_file_cut_short_is_refused(tmp_path):
    with Log.open(tmp_path) as log:
        for seq in range(1, 10):
            log.append(payload_for(seq))
    path = tmp_path / f"{1:020d}.seg"
    os.truncate(path, path.stat().st_size - 10)
    with pytest.raises(LogCorruptError, match="the LOG had synced it through offset"):
        Log.open(tmp_path)


# -- any power cut ----------------------------------------------------------------------

ops = st.lists(st.one_of(st.integers(1, 40).map(lambda n: ("append", n)), st.just(("sync", 0)),
                         st.just(("trim", 0))),
               min_size=1, max_size=25)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(ops=ops, segment_bytes=st.sampled_from([3000, 9000, 1 << 20]),
       mark_interval_s=st.sampled_from([0.0, 3600.0]), seed=st.integers(0, 1 << 30),
       uniform=st.booleans())
def test_any_power_cut_keeps_every_synced_record(monkeypatch, ops, segment_bytes,
                                                 mark_interval_s, seed, uniform):
    with temp_dir() as tmp, monkeypatch.context() as patch:
        cut = PowerCut(patch)
        src = tmp / "log"
        log = Log.open(src, segment_bytes=segment_bytes, mark_interval_s=mark_interval_s)
        seq = 0
        for op, n in ops:
            if op == "sync":
                log.sync()
                continue
            if op == "trim":  # the native writer keeps spares and writes new segments over them
                log.trim(log.segments[-1].first_seq)
                continue
            for _ in range(n):
                seq += 1
                log.append(payload_for(seq, uniform))
        synced = log.synced_seq
        cut.crash_copy(src, tmp / "crash", random.Random(seed))
        log.close()
        with assert_recovered(tmp / "crash", synced, uniform,
                              torn_marker=lambda t: b"GAP") as recovered:
            if recovered.recovered_truncated_bytes:
                assert read_all(recovered)[-1][1] == b"GAP"
