"""The LOG format's cross-language vectors (tests/vectors/, logstore/FORMAT.md),
checked through the Python reader and writer. The native writer checks the
same vectors in nfsproxy/dataplane/tests/vectors.rs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from logstore.log import Log, LogCorruptError

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
CASES = sorted(p.name for p in VECTORS.iterdir() if (p / "expect.json").exists())


def load(name: str, tmp_path: Path) -> tuple[Path, dict]:
    directory = tmp_path / "log"
    shutil.copytree(VECTORS / name / "log", directory)
    return directory, json.loads((VECTORS / name / "expect.json").read_text())


def frames_json(log: Log) -> list[dict]:
    with log.read(log.first_seq) as cursor:
        return [{"seq": f.seq, "stamp": f.stamp.hex(), "route_kind": f.route_kind,
                 "route": f.route, "payload": bytes(f.payload).hex()} for f in cursor.frames()]


def test_there_are_vectors():
    assert len(CASES) >= 6


@pytest.mark.parametrize("name", CASES)
def test_vector_opens_as_specified(name, tmp_path):
    directory, expect = load(name, tmp_path)
    outcome = expect["open"]
    if outcome["outcome"] == "corrupt":
        with pytest.raises(LogCorruptError) as info:
            Log.open(directory)
        assert Path(info.value.path).name == outcome["segment"]
        assert info.value.offset == outcome["offset"]
        return
    with Log.open(directory) as log:
        assert frames_json(log) == expect["records"]
        assert (log.last_seq, log.next_seq) == (outcome["last_seq"], outcome["next_seq"])
        torn = [{"segment": Path(t.segment).name, "offset": t.offset,
                 "truncated_bytes": t.truncated_bytes, "after_seq": t.after_seq}
                for t in log.torn_tails]
        assert torn == outcome["torn"]
        # Whatever the vector was, the LOG goes on in the current format.
        seq = log.append(b"after", stamp=bytes(range(16)), route_kind=1, route=42)
    with Log.open(directory) as log:
        assert frames_json(log)[-1] == {"seq": seq, "stamp": bytes(range(16)).hex(),
                                        "route_kind": 1, "route": 42,
                                        "payload": b"after".hex()}


def test_python_writer_writes_the_vector_bytes(tmp_path):
    """The writer's bytes are the spec's: the first segment of v2-two-segments."""
    expect = json.loads((VECTORS / "v2-two-segments" / "expect.json").read_text())
    with Log.open(tmp_path) as log:
        for r in expect["records"][:3]:
            log.append(bytes.fromhex(r["payload"]), stamp=bytes.fromhex(r["stamp"]),
                       route_kind=r["route_kind"], route=r["route"])
    written = (tmp_path / f"{1:020d}.seg").read_bytes()
    assert written == (VECTORS / "v2-two-segments" / "log" / f"{1:020d}.seg").read_bytes()


def test_native_writer_writes_the_vector_bytes_and_python_reads_them(tmp_path):
    """The proxy's native writer, through its binding: same bytes, same frames."""
    from nfsproxy.native.log import NativeLog

    expect = json.loads((VECTORS / "v2-two-segments" / "expect.json").read_text())
    with NativeLog.open(tmp_path) as log:
        for r in expect["records"][:3]:
            log.append([bytes.fromhex(r["payload"])], stamp=bytes.fromhex(r["stamp"]),
                       route_kind=r["route_kind"], route=r["route"])
        assert frames_json(log) == expect["records"][:3]  # read while it is open
    written = (tmp_path / f"{1:020d}.seg").read_bytes()
    assert written == (VECTORS / "v2-two-segments" / "log" / f"{1:020d}.seg").read_bytes()
    with Log.open(tmp_path) as log:
        assert frames_json(log) == expect["records"][:3]


def test_a_torn_tails_gap_record_carries_its_stamp_and_route(tmp_path):
    """The proxy marks a torn tail with a GAP record: its frame says "every shard"."""
    from logstore.record import Op, Record
    from logstore.segment import ROUTE_EVERY_SHARD
    from nfsproxy.native.log import NativeLog

    directory, expect = load("v2-torn-tail", tmp_path)
    gap = Record(op=Op.GAP, ok=True, stamp=bytes(range(16)), gap_cause="torn_tail")
    with NativeLog.open(directory, torn_marker=lambda torn: gap) as log:
        marker = frames_json(log)[-1]
    assert marker == {"seq": len(expect["records"]) + 1, "stamp": bytes(range(16)).hex(),
                      "route_kind": ROUTE_EVERY_SHARD, "route": 0,
                      "payload": gap.SerializeToString().hex()}


def test_the_native_writer_finds_the_orphan_intents_specified(tmp_path):
    """After an unclean stop the proxy rebuilds the records of orphaned intents
    (logstore/FORMAT.md, "Intents"): the native scan finds exactly the vector's."""
    from nfsproxy.native.log import NativeLog

    cases = [name for name in CASES if "orphans" in json.loads((VECTORS / name / "expect.json").read_text())]
    assert cases
    for name in cases:
        directory, expect = load(name, tmp_path / name)
        with NativeLog.open(directory) as log:
            found = [{"seq": seq, "stamp": bytes(st).hex(), "payload": bytes(p).hex()}
                     for seq, st, p in log.orphan_intents(0)]
            assert found == expect["orphans"], name
            assert log.orphan_intents(expect["orphans"][-1]["seq"] + 1) == [], "intents before from_seq are settled"
