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


# A restarted shard's first groups, written from a worker thread as its
# executor does: 8 MiB WriteBatches of 4 KiB records into its RocksDB.
# Prints the minor page faults they took.
_FIRST_GROUPS = textwrap.dedent("""
    import os, resource, sys, tempfile, threading
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from recoveryd import heap
    assert heap.warm_heap() if sys.argv[1] == "warm" else heap.keep_freed_memory()
    from rocksdict import Rdict, WriteBatch
    from recoveryd.store import store_options
    value = os.urandom(4096)
    def first_groups(path, out):
        db = Rdict(path, store_options(Path(path)))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for g in range(4):
            wb = WriteBatch(raw_mode=True)
            held = [bytes(value) for _ in range(2048)]
            for i, v in enumerate(held):
                wb.put(b"r/%d/%d" % (g, i), v)
            db.write(wb)
            del held, wb
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        db.close()
    out = []
    with tempfile.TemporaryDirectory() as d:
        worker = threading.Thread(target=first_groups, args=(d, out))
        worker.start()
        worker.join()
    print(out[0])
""").format(repo=str(REPO))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_warmed_shards_first_groups_fault_in_almost_nothing():
    # Kept freed memory helps only from the second batch on, and only in the
    # thread (arena) that freed it; a warmed heap serves the first groups of
    # a fresh process, from any thread (measured: about 11,000 faults, and 2).
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _FIRST_GROUPS, mode], capture_output=True,
                             text=True, check=True, timeout=120)
        return int(out.stdout.strip())
    assert faults("keep") > 2_000
    assert faults("warm") < 200


def test_warm_heap_refuses_what_the_heap_would_not_keep():
    from recoveryd.heap import KEEP_BYTES, warm_heap
    with pytest.raises(ValueError):
        warm_heap(KEEP_BYTES)
