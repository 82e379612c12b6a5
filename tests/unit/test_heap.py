"""recoveryd.heap: a shard's batches reuse freed memory instead of faulting it in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Batch after batch: a 4 MiB message, and a bytes object per 4 KiB record held
# until the batch is written, as a shard ingests. Prints the minor page faults.
_BATCHES = textwrap.dedent("""
    import os, resource, sys
    sys.path.insert(0, {repo!r})
    if sys.argv[1] == "keep":
        from recoveryd.heap import keep_freed_memory
        assert keep_freed_memory()
    message = memoryview(os.urandom(4 << 20))
    def batch():
        wire = bytes(message)
        held = [bytes(message[i:i + 4200]) for i in range(0, len(message) - 4200, 4200)]
        del held, wire
    batch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        batch()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""").format(repo=str(REPO))


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _BATCHES, mode], capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_batches_after_the_first_fault_in_almost_nothing():
    # Without the tuning, glibc gives the freed heap back after every batch and
    # the next one faults it in again (thousands of faults, each zeroing a page,
    # or a 2 MiB huge page); with it, the first batch's memory serves the rest.
    assert _faults("default") > 1_000
    assert _faults("keep") < 100


_COLLECTIONS = textwrap.dedent("""
    import gc, sys
    sys.path.insert(0, {repo!r})
    import grpc, rocksdict  # a shard's imports: what a full collection would walk
    if sys.argv[1] == "quiet":
        from recoveryd.heap import quiet_collector
        quiet_collector()
    before = sum(s["collections"] for s in gc.get_stats())
    for _ in range(20):  # batches of a thousand records' rows, as a shard indexes them
        rows = {{i.to_bytes(16, "big"): (b"r", (i,), i, [i]) for i in range(1000)}}
        del rows
    print(sum(s["collections"] for s in gc.get_stats()) - before, gc.get_freeze_count())
""").format(repo=str(REPO))


def test_the_quiet_collector_freezes_startup_and_collects_rarely():
    def run(mode: str) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", _COLLECTIONS, mode], capture_output=True,
                             text=True, check=True, timeout=120)
        collections, frozen = out.stdout.split()
        return int(collections), int(frozen)
    default, quiet = run("default"), run("quiet")
    assert default[0] >= 20 and default[1] == 0
    assert quiet[0] <= 2 and quiet[1] > 10_000
