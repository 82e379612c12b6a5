"""What a LOG append costs: logstore's Python writer vs the native one, side by
side in one run (a script, not a test).

    python3 tests/bench/bench_log.py [--records N] [--size BYTES]

* append: CPU microseconds per ``Log.append`` (page-cache write, no fsync),
  for each writer, same payloads, same directory kind;
* group commit: records per second and records per fsync when 64 asyncio
  tasks each append and await durability in a loop (the native committer;
  the Python one is gone), with the CPU the process used per record.

Rounds are interleaved and the median is shown; no thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from logstore.log import Log  # noqa: E402
from nfsproxy.native.log import NativeCommitter, NativeLog  # noqa: E402


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def append_us(log_class, records: int, payload: bytes) -> float:
    with tempfile.TemporaryDirectory(dir=os.environ.get("NFSJ_BENCH_DIR")) as d:
        with log_class.open(d) as log:
            stamp = bytes(range(16))
            start = cpu()
            for _ in range(records):
                log.append([payload], stamp=stamp, route_kind=1, route=7)
            return (cpu() - start) / records * 1e6


async def group_commit(records: int, payload: bytes) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory(dir=os.environ.get("NFSJ_BENCH_DIR")) as d:
        log = NativeLog.open(d)
        committer = NativeCommitter(log, durability="sync")
        per_task = records // 64

        async def task():
            for _ in range(per_task):
                await committer.append([payload])

        started, cpu0 = time.monotonic(), cpu()
        await asyncio.gather(*(task() for _ in range(64)))
        elapsed, used = time.monotonic() - started, cpu() - cpu0
        n = per_task * 64
        fsyncs = committer.fsyncs_total
        await committer.close()
        log.close()
        return n / elapsed, n / max(fsyncs, 1), used / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--size", type=int, default=4096 + 120)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    payload = os.urandom(args.size)
    print(f"{args.records} records of {args.size} bytes, {args.rounds} interleaved rounds, "
          f"directory {os.environ.get('NFSJ_BENCH_DIR', tempfile.gettempdir())}")
    py, native, gc = [], [], []
    for _ in range(args.rounds):
        py.append(append_us(Log, args.records, payload))
        native.append(append_us(NativeLog, args.records, payload))
        gc.append(asyncio.run(group_commit(args.records // 4, payload)))
    print(f"append, Python writer: {statistics.median(py):7.2f} CPU us/record")
    print(f"append, native writer: {statistics.median(native):7.2f} CPU us/record "
          f"(ratio {statistics.median(native) / statistics.median(py):.2f})")
    rate, per_fsync, us = (statistics.median(x) for x in zip(*gc))
    print(f"group commit (native, sync, 64 tasks): {rate:,.0f} records/s, "
          f"{per_fsync:.1f} records/fsync, {us:.1f} CPU us/record (Python side included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
