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
