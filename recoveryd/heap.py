"""A daemon's heap: keep freed memory for the next batch.

Every ingest batch brings a shard a few MiB of fresh buffers (the gRPC
message, a bytes object per record for RocksDB) that are freed once the
batch is written; a proxy's shippers read as much from the LOG for every
batch they send. glibc's malloc returns freed memory at the top of its heap to the
kernel as soon as more than 128 KiB lie free there (and, until it adapts,
serves buffers of 128 KiB and more with their own mmap); so every batch
faults its memory in again, each page (or huge page) zeroed by the kernel
(measured on the 2-core test VM: 5.6 us per 4 KiB record held for a
batch, 1.4 us with the heap kept; tests/unit/test_heap.py counts faults; a
proxy's shippers spent half as much CPU per GiB shipped with it). A shard
holds at most its read-ahead budget in batches (recoveryd.server), a
shipper its in-flight budget (nfsproxy.ship.stream), so keeping that much
is bounded.

The cyclic garbage collector is the other cost per batch: every record
leaves a few container objects behind (its index row, tuples), so a batch
of a thousand records starts several collections, and the older
generations' ones walk every object the imports made (grpc, protobuf,
RocksDB bindings). ``quiet_collector`` moves what exists at startup out of
the collector's sight (``gc.freeze``) and collects the young generation
less often; the objects of a batch form no cycles, so reference counting
frees them anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

__all__ = ["keep_freed_memory", "quiet_collector", "KEEP_BYTES"]

#: Free heap kept before glibc trims it, and the size from which buffers get
#: their own mmap (32 MiB: glibc's largest on 64-bit).
KEEP_BYTES = 256 << 20
_MMAP_THRESHOLD_BYTES = 32 << 20
_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module docstring says; False (and nothing
    changed) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES)) and \
        bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))


#: Young-generation threshold: allocations between collections (CPython's default is 700).
_YOUNG_THRESHOLD = 50_000


def quiet_collector(*, collect: bool = True) -> None:
    """Freeze the objects that exist now and collect the young generation
    less often (the module docstring says why). Call once, after startup;
    ``collect=False`` skips the collection first (a short-lived command's
    garbage does not matter, the time to find it does)."""
    if collect:
        gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNG_THRESHOLD, older, oldest)
