"""Differential test of LOG recovery: whatever a crash or a disk does to a LOG,
the Python reader's recovery (logstore.log) and the native writer's
(nfsproxy/dataplane/src/log/recover.rs) reach the same verdict: the same
records, the same torn tails, or corruption at the same file and offset."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from logstore.log import Log, LogCorruptError
from nfsproxy.native.log import NativeLog

payloads = st.lists(st.binary(max_size=200), min_size=1, max_size=30)
damages = st.sampled_from(["none", "truncate", "zeros", "flip", "garbage"])
marks = st.sampled_from(["exact", "earlier", "none", "missing", "damaged"])


def write(directory: Path, records: list[bytes], segment_bytes: int,
          synced: int) -> tuple[bytes, bytes]:
    """Write ``records`` natively; returns the sync mark as it was right after
    seq ``synced`` was synced (empty: never), and the exact one of a clean stop."""
    earlier = b""
    with NativeLog.open(directory, segment_bytes=segment_bytes, mark_interval_s=0) as log:
        for i, record in enumerate(records, 1):
            log.append([record], stamp=i.to_bytes(16, "big"), route_kind=1, route=i)
            if i == synced:
                log.sync()
                earlier = (directory / "SYNCED").read_bytes()
    return earlier, (directory / "SYNCED").read_bytes()


def verdict(log_class, directory: Path):
    try:
        log = log_class.open(directory)
    except LogCorruptError as e:
        return ("corrupt", Path(e.path).name, e.offset)
    with log:
        with log.read(log.first_seq) as cursor:
            frames = [(f.seq, bytes(f.payload), f.stamp, f.route_kind, f.route)
                      for f in cursor.frames()]
        torn = [(Path(t.segment).name, t.offset, t.truncated_bytes, t.after_seq)
                for t in log.torn_tails]
        return ("ok", frames, torn, log.recovered_truncated_bytes, log.next_seq)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=payloads, segment_bytes=st.integers(100, 2048), data=st.data(),
       damage=damages, mark=marks)
def test_python_and_native_recovery_agree(records, segment_bytes, data, damage, mark):
    with tempfile.TemporaryDirectory() as d:
        base = Path(d) / "base"
        synced = data.draw(st.integers(0, len(records)), label="synced through")
        earlier, exact = write(base, records, segment_bytes, synced)
        mark_file = base / "SYNCED"
        if mark == "missing":
            mark_file.unlink()
        elif mark == "damaged":
            mark_file.write_bytes(b"NJSM" + bytes(28))
        elif mark == "earlier":  # a crash after that sync: what followed is unsynced
            mark_file.write_bytes(earlier)
        else:
            assert mark_file.read_bytes() == exact
        newest = sorted(base.glob("*.seg"))[-1]
        blob = bytearray(newest.read_bytes())
        if damage != "none" and blob:
            at = data.draw(st.integers(0, len(blob) - 1), label="damage offset")
            if damage == "truncate":
                del blob[at:]
            elif damage == "zeros":
                blob[at:] = bytes(len(blob) - at)
            elif damage == "flip":
                blob[at] ^= data.draw(st.integers(1, 255), label="flip")
            else:
                blob[at:] = data.draw(st.binary(min_size=1, max_size=120), label="garbage")
        newest.write_bytes(bytes(blob))
        python_dir, native_dir = Path(d) / "python", Path(d) / "native"
        shutil.copytree(base, python_dir)
        shutil.copytree(base, native_dir)
        found = verdict(Log, python_dir)
        event(f"{found[0]}, torn tail" if found[0] == "ok" and found[2] else found[0])
        assert found == verdict(NativeLog, native_dir)
