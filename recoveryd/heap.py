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

A restarted shard is a fresh process: until its first batches have grown
the heap, each one faults in new pages (a 50,000-record backlog took about
45,000 faults). ``warm_heap`` touches that memory once, at startup, and
leaves it to the heap; one arena for every thread lets the ingest threads,
RocksDB's memtable and gRPC's buffers all reuse it (glibc otherwise gives
each thread an arena of its own, which the warmed one cannot serve).

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

__all__ = ["keep_freed_memory", "warm_heap", "quiet_collector", "KEEP_BYTES", "WARM_BYTES"]

#: Free heap kept before glibc trims it, and the size from which buffers get
#: their own mmap (32 MiB: glibc's largest on 64-bit).
KEEP_BYTES = 256 << 20
_MMAP_THRESHOLD_BYTES = 32 << 20
#: What ``warm_heap`` touches: a group being written (its WriteBatch), the
#: memtables it fills until a flush, and the batches read ahead. Below
#: KEEP_BYTES, or glibc would trim it straight back.
WARM_BYTES = 128 << 20
_WARM_CHUNK_BYTES = 4 << 20  # below the mmap threshold: from the heap
_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module docstring says; False (and nothing
    changed) where the C library is not glibc."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES)) and \
        bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))


#: Young-generation threshold: allocations between collections (CPython's default is 700).
_YOUNG_THRESHOLD = 50_000


def warm_heap(nbytes: int = WARM_BYTES) -> bool:
    """Fault ``nbytes`` of heap in now and keep it for every thread (the
    module docstring says why), with ``keep_freed_memory``'s tuning; before
    the daemon's threads start. False (nothing done) where the C library is
    not glibc. Costs ``nbytes`` of resident memory from the start."""
    if not 0 < nbytes < KEEP_BYTES:
        raise ValueError(f"warm_heap: {nbytes} bytes is not between 0 and KEEP_BYTES")
    if not keep_freed_memory():
        return False
    libc = _libc()
    assert libc is not None  # keep_freed_memory found it
    if not libc.mallopt(_M_ARENA_MAX, 1):
        return False
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    chunks = [libc.malloc(_WARM_CHUNK_BYTES) for _ in range(nbytes // _WARM_CHUNK_BYTES)]
    for chunk in chunks:
        if chunk:
            ctypes.memset(chunk, 0, _WARM_CHUNK_BYTES)
    for chunk in reversed(chunks):  # freed top down, they merge into one free block the heap keeps
        libc.free(chunk)
    return all(chunks)


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
