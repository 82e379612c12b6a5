"""Write the LOG format's cross-language test vectors (logstore/FORMAT.md).

Each vector is a directory ``<name>/`` holding ``log/`` (a LOG directory as
it lies on disk: segments, and a SYNCED mark where the case needs one) and
``expect.json``, what every reader and every writer's recovery must make of
it. The Python reader checks them in tests/unit/test_log_vectors.py, the
native writer in nfsproxy/dataplane/tests/vectors.rs. The bytes are built
here by hand from the specification, not by the LOG writer, so the vectors
hold the writer to the spec rather than to itself.

Run ``python3 tests/vectors/make_vectors.py`` to regenerate (deterministic).

expect.json::

    {"description": str,
     "records": [{"seq", "stamp" (hex), "route_kind", "route", "payload" (hex)}],
                             # what a reader sees after a successful open, in order;
                             # for "corrupt", the frames before the damage
     "open": {"outcome": "ok", "last_seq": int, "next_seq": int,
              "torn": [{"segment": name, "offset", "truncated_bytes", "after_seq"}]}
           | {"outcome": "corrupt", "segment": name, "offset": int},
     "orphans": [{"seq", "stamp" (hex), "payload" (hex)}]}
                             # write-ahead intents no record followed (FORMAT.md,
                             # "Intents"); only where the vector has intents
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import crc32c

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from logstore.pb.journal_pb2 import Attr, Op, Record  # noqa: E402

MAGIC = b"NJLOGSEG"
SEGMENT_HEADER = struct.pack(">8sHHI", MAGIC, 2, 40, 0)
MARK = struct.Struct(">4sQQQ")


def stamp(wall_ns: int, logical: int, node_id: int) -> bytes:
    return struct.pack(">QII", wall_ns, logical, node_id)


def frame_v2(seq: int, payload: bytes, stamp_bytes: bytes = bytes(16), route_kind: int = 0,
             route: int = 0) -> bytes:
    covered = struct.pack(">Q16sIB3x", seq, stamp_bytes, route, route_kind)
    return struct.pack(">II", len(payload), crc32c.crc32c(covered + payload)) + covered + payload


def frame_v1(seq: int, payload: bytes) -> bytes:
    covered = struct.pack(">Q", seq)
    return struct.pack(">II", len(payload), crc32c.crc32c(covered + payload)) + covered + payload


def mark(base_seq: int, offset: int, seq: int, closed: bool = False) -> bytes:
    body = MARK.pack(b"NJSC" if closed else b"NJSM", base_seq, offset, seq)
    return body + struct.pack(">I", crc32c.crc32c(body))


def name(base_seq: int) -> str:
    return f"{base_seq:020d}.seg"


def sample_records() -> list[tuple[bytes, int, int, bytes]]:
    """(stamp, route_kind, route, payload) of a few real journal records."""
    fh, dir_fh = b"\x01\x00\x07fh-file", b"\x01\x00\x07fh-dir"
    write = Record(op=Op.WRITE, ok=True, stamp=stamp(1_700_000_000_000_000_001, 0, 3), fh=fh,
                   offset=4096, data=b"hello, world\n" * 3, attr=Attr(type=1, size=4135))
    create = Record(op=Op.CREATE, ok=True, stamp=stamp(1_700_000_000_000_000_001, 1, 3),
                    dir_fh=dir_fh, name=b"caf\xc3\xa9-\xff.txt", fh=fh)
    gap = Record(op=Op.GAP, ok=True, stamp=stamp(1_700_000_000_500_000_000, 0, 3),
                 gap_cause="torn_tail", gap_reason="test vector")
    return [
        (write.stamp, 1, crc32c.crc32c(fh), write.SerializeToString()),
        (create.stamp, 1, crc32c.crc32c(dir_fh), create.SerializeToString()),
        (gap.stamp, 2, 0, gap.SerializeToString()),
        (bytes(16), 0, 0, b""),  # no stamp, no route, empty payload
        (stamp(1_700_000_001_000_000_000, 7, 0xFFFFFFFF), 1, 0xFFFFFFFF, bytes(range(256))),
    ]


def record_json(seq: int, st: bytes, kind: int, route: int, payload: bytes) -> dict:
    return {"seq": seq, "stamp": st.hex(), "route_kind": kind, "route": route,
            "payload": payload.hex()}


class Vector:
    def __init__(self, vector_name: str, description: str):
        self.dir = HERE / vector_name
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "log").mkdir(parents=True)
        self.description = description

    def file(self, file_name: str, data: bytes) -> None:
        (self.dir / "log" / file_name).write_bytes(data)

    def expect(self, records: list[dict], open_: dict, orphans: list[dict] | None = None) -> None:
        body = {"description": self.description, "records": records, "open": open_}
        if orphans is not None:
            body["orphans"] = orphans
        (self.dir / "expect.json").write_text(json.dumps(body, indent=1) + "\n")


def ok(records: list[dict], torn: list[dict] | None = None, next_seq: int | None = None) -> dict:
    last = records[-1]["seq"] if records else 0
    return {"outcome": "ok", "last_seq": last, "next_seq": next_seq or last + 1,
            "torn": torn or []}


def main() -> None:
    samples = sample_records()

    # Two sealed-and-active segments, every route kind, a clean stop (exact mark).
    v = Vector("v2-two-segments", "two segments, every route kind, exact sync mark")
    first = SEGMENT_HEADER + b"".join(frame_v2(i + 1, p, s, k, r)
                                      for i, (s, k, r, p) in enumerate(samples[:3]))
    second = SEGMENT_HEADER + b"".join(frame_v2(i + 4, p, s, k, r)
                                       for i, (s, k, r, p) in enumerate(samples[3:]))
    v.file(name(1), first)
    v.file(name(4), second)
    v.file("SYNCED", mark(4, len(second), 5))
    records = [record_json(i + 1, s, k, r, p) for i, (s, k, r, p) in enumerate(samples)]
    v.expect(records, ok(records))

    # A torn tail past the mark: zeros, then a frame that was never synced.
    v = Vector("v2-torn-tail", "damage after the sync mark is a torn tail, even with frames after it")
    good = SEGMENT_HEADER + b"".join(frame_v2(i + 1, p, s, k, r)
                                     for i, (s, k, r, p) in enumerate(samples[:3]))
    tail = bytes(100) + frame_v2(4, b"never synced")
    v.file(name(1), good + tail)
    v.file("SYNCED", mark(1, len(good), 3))
    records = [record_json(i + 1, s, k, r, p) for i, (s, k, r, p) in enumerate(samples[:3])]
    v.expect(records, ok(records, [{"segment": name(1), "offset": len(good),
                                    "truncated_bytes": len(tail), "after_seq": 3}]))

    # Damage inside the synced region is corruption, never cut.
    v = Vector("v2-corrupt-synced", "a CRC mismatch before the sync mark is corruption")
    frames = [frame_v2(i + 1, p, s, k, r) for i, (s, k, r, p) in enumerate(samples)]
    data = bytearray(SEGMENT_HEADER + b"".join(frames))
    bad_at = len(SEGMENT_HEADER) + len(frames[0]) + len(frames[1])
    data[bad_at + 45] ^= 0x41  # in frame 3's payload
    v.file(name(1), bytes(data))
    v.file("SYNCED", mark(1, len(data), 5))
    records = [record_json(i + 1, s, k, r, p) for i, (s, k, r, p) in enumerate(samples[:2])]
    v.expect(records, {"outcome": "corrupt", "segment": name(1), "offset": bad_at})

    # A well-formed frame with the wrong seq is never a crash.
    v = Vector("v2-seq-discontinuity", "a valid frame carrying the wrong seq is corruption")
    data = SEGMENT_HEADER + frame_v2(1, b"one") + frame_v2(2, b"two") + frame_v2(7, b"seven")
    v.file(name(1), data)
    v.file("SYNCED", mark(1, 0, 0))
    records = [record_json(1, bytes(16), 0, 0, b"one"), record_json(2, bytes(16), 0, 0, b"two")]
    v.expect(records, {"outcome": "corrupt", "segment": name(1),
                       "offset": len(SEGMENT_HEADER) + 2 * (40 + 3)})

    # A segment whose header never reached the disk (created after the last sync).
    v = Vector("v2-torn-segment-header", "the newest segment's header is garbage: a torn creation")
    first = SEGMENT_HEADER + frame_v2(1, b"one") + frame_v2(2, b"two")
    v.file(name(1), first)
    v.file(name(3), b"\x5a" * 16 + frame_v2(3, b"three"))
    v.file("SYNCED", mark(1, len(first), 2))
    records = [record_json(1, bytes(16), 0, 0, b"one"), record_json(2, bytes(16), 0, 0, b"two")]
    v.expect(records, ok(records, [{"segment": name(3), "offset": 0,
                                    "truncated_bytes": 16 + 40 + 5, "after_seq": 2}]))

    # Spares: a trimmed segment's file written over by a newer segment. Its
    # older frames (seqs 1-6) lie past the newer ones (seqs 10 and 11).
    older = SEGMENT_HEADER + b"".join(frame_v2(i, bytes([0x30 + i]) * 20) for i in range(1, 7))
    newer = SEGMENT_HEADER + frame_v2(10, b"ten") + frame_v2(11, b"eleven")
    on_frame = SEGMENT_HEADER + frame_v2(10, b"ten".ljust(20, b".")) + frame_v2(11, b"eleven".ljust(20, b"."))
    assert len(on_frame) == len(SEGMENT_HEADER) + 2 * (40 + 20)  # ends where frame 3 starts
    records = [record_json(10, bytes(16), 0, 0, b"ten"), record_json(11, bytes(16), 0, 0, b"eleven")]

    v = Vector("v2-spare-closed", "a spare written over, then a clean close: the older bytes past "
               "the close mark are no torn tail")
    v.file(name(10), newer + older[len(newer):])
    v.file("SYNCED", mark(10, len(newer), 11, closed=True))
    v.expect(records, ok(records))

    v = Vector("v2-spare-crash", "a spare written over, then a crash: an older segment's frame "
               "past the sync mark is a torn tail, not a discontinuity")
    v.file(name(10), on_frame + older[len(on_frame):])
    v.file("SYNCED", mark(10, len(SEGMENT_HEADER) + 40 + 9, 10))
    records3 = [record_json(10, bytes(16), 0, 0, b"ten".ljust(20, b".")),
                record_json(11, bytes(16), 0, 0, b"eleven".ljust(20, b"."))]
    v.expect(records3, ok(records3, [{"segment": name(10), "offset": len(on_frame),
                                      "truncated_bytes": len(older) - len(on_frame),
                                      "after_seq": 11}]))

    v = Vector("v2-spare-synced", "an older segment's frame inside the synced region is corruption")
    v.file(name(10), on_frame + older[len(on_frame):])
    v.file("SYNCED", mark(10, len(older), 13))
    v.expect(records3, {"outcome": "corrupt", "segment": name(10), "offset": len(on_frame)})

    # Write-ahead intents (route_kind 3): two answered by their records (one in
    # the next segment), one left an orphan by a crash, one answered by a GAP.
    v = Vector("v2-intents", "write-ahead intents: an intent no frame with its stamp follows is an orphan")
    fh = b"\x01\x00\x07fh-file"
    calls = [Record(op=Op.WRITE, stamp=stamp(1_700_000_002_000_000_000, i, 3), fh=fh, offset=4096 * i,
                    stable=2, data=bytes([0x41 + i]) * 8) for i in range(4)]
    done = [Record(op=Op.WRITE, ok=True, stamp=c.stamp, fh=fh, offset=c.offset, stable=2, data=c.data,
                   reply_count=8) for c in calls]
    gap = Record(op=Op.GAP, ok=True, stamp=calls[3].stamp, gap_cause="no_reply")
    rows = [(calls[0].stamp, 3, 0, calls[0].SerializeToString()),
            (calls[1].stamp, 3, 0, calls[1].SerializeToString()),
            (done[0].stamp, 1, crc32c.crc32c(fh), done[0].SerializeToString()),
            (calls[2].stamp, 3, 0, calls[2].SerializeToString()),
            (calls[3].stamp, 3, 0, calls[3].SerializeToString()),
            (done[1].stamp, 1, crc32c.crc32c(fh), done[1].SerializeToString()),
            (gap.stamp, 2, 0, gap.SerializeToString())]
    first = SEGMENT_HEADER + b"".join(frame_v2(i + 1, p, s, k, r) for i, (s, k, r, p) in enumerate(rows[:4]))
    second = SEGMENT_HEADER + b"".join(frame_v2(i + 5, p, s, k, r) for i, (s, k, r, p) in enumerate(rows[4:]))
    v.file(name(1), first)
    v.file(name(5), second)
    v.file("SYNCED", mark(5, len(second), 7))
    records = [record_json(i + 1, s, k, r, p) for i, (s, k, r, p) in enumerate(rows)]
    v.expect(records, ok(records), [{"seq": 4, "stamp": calls[2].stamp.hex(),
                                     "payload": calls[2].SerializeToString().hex()}])

    # Format version 1 (no segment header, 16-byte frame headers) is still read.
    v = Vector("v1-legacy", "a version 1 LOG: read as is; a writer goes on in a new segment")
    payloads = [b"alpha", b"", b"gamma" * 40]
    data = b"".join(frame_v1(i + 1, p) for i, p in enumerate(payloads))
    v.file(name(1), data)
    v.file("SYNCED", mark(1, len(data), 3))
    records = [record_json(i + 1, bytes(16), 0, 0, p) for i, p in enumerate(payloads)]
    v.expect(records, ok(records))


if __name__ == "__main__":
    main()
