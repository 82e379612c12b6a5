"""The shard's Restore service (proto/journal.proto, ``service Restore``): read
access to the records one shard holds, for ``recoveryd.restore`` to merge.

* ``Scan``: the shard's records with ``after < stamp <= until`` in stamp
  order, only the ``ops`` asked for (all when empty), ``data`` left out
  unless ``with_data``. A tree rebuild asks for namespace ops and baseline
  pieces without data, so a file written 10,000 times costs the wire nothing.
* ``FileRecords``: every record naming one handle (as ``fh``, ``dir_fh``,
  ``to_dir_fh`` or ``object_fh``) in the same window, through the per-file
  index (``ShardStore.file_records``).
* ``FileRecordChunks``: the same records, serialized, many to a message
  (``RecordChunk``): a file written 10,000 times is a few messages, not
  10,000, and records with data go out as stored, not parsed and
  serialized again.
* ``Baselines``: the baselines whose ``BASELINE_BEGIN`` this shard holds,
  oldest first, with their ``BASELINE_END`` when held. Markers go to every
  shard (nfsproxy/ship/sharding.py); a baseline is complete only when *every*
  shard holds its END, which the client decides.

Blocking RocksDB reads run on the server's executor, a chunk of records at
a time, so a long scan neither blocks the event loop nor holds a thread
while the client is slow to read. A cancelled call closes its iterator
(an open iterator keeps RocksDB open).

Finding baselines without reading every record each time: markers have no
handle, so the per-file index does not hold them. ``_BaselineIndex`` scans
once, then only from the shard's frontier as it was before its previous
scan. That is exact: while the set of streams stays the same, every record
stamped below a stream's frontier was already held when the frontier was
read (frontier.py), so a later scan can only find new records at or above
it. A new stream (or a stream whose position went back: a rebuilt shard)
may bring records of any stamp, so it triggers a full scan.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
from typing import TYPE_CHECKING, AsyncIterator, Iterator

import grpc

from logstore.pb import journal_pb2_grpc
from logstore.pb.journal_pb2 import (BaselineInfo, BaselineList, FileRequest, Op, Record,
                                     RecordChunk, ScanRequest, ShardStatusRequest)
from logstore.stamp import Stamp

if TYPE_CHECKING:  # restore clients import this module for `predecessor`: no RocksDB for them
    from .store import ShardStore

__all__ = ["RestoreServicer", "RESTORE_SERVICE", "CHUNK_RECORDS", "predecessor"]

logger = logging.getLogger(__name__)

RESTORE_SERVICE = "nfsj.journal.v1.Restore"
CHUNK_RECORDS = 256          # records read per executor call
CHUNK_BYTES = 8 << 20        # ... or fewer once their data passes this
RECORD_CHUNK_RECORDS = 4096  # records in one RecordChunk message
RECORD_CHUNK_BYTES = 2 << 20 # ... or fewer once their bytes pass this

def predecessor(stamp: Stamp) -> Stamp | None:
    """The greatest stamp below `stamp` (None below ZERO): turns an inclusive
    lower bound into the exclusive one ``ShardStore.records`` takes."""
    wall, logical, node = stamp.wall_ns, stamp.logical, stamp.node_id
    if node:
        return Stamp(wall, logical, node - 1)
    if logical:
        return Stamp(wall, logical - 1, (1 << 32) - 1)
    if wall:
        return Stamp(wall - 1, (1 << 32) - 1, (1 << 32) - 1)
    return None


class _BadRequest(ValueError):
    pass


def _bound(raw: bytes, what: str) -> Stamp | None:
    if not raw:
        return None
    try:
        return Stamp.from_bytes(raw)
    except ValueError as e:
        raise _BadRequest(f"{what}: {e}") from None


@dataclasses.dataclass
class ServedCounters:
    """What restore clients read from this shard (nfsj_restore_served_*)."""

    records_total: int = 0
    bytes_total: int = 0


class RestoreServicer(journal_pb2_grpc.RestoreServicer):
    """Restore over one ``ShardStore``; blocking reads run on ``executor``."""

    def __init__(self, store: ShardStore, executor: concurrent.futures.Executor) -> None:
        self._store = store
        self._executor = executor
        self._baselines = _BaselineIndex(store)
        self.counters = ServedCounters()

    async def Scan(self, request: ScanRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[Record]:
        try:
            lo, hi = _bound(request.after, "after"), _bound(request.until, "until")
            ops = frozenset(request.ops)
            bad = [op for op in ops if op not in Op.values()]
            if bad:
                raise _BadRequest(f"unknown op(s) {bad}")
        except _BadRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        records = self._store.records(lo, hi)
        async for record in self._stream(records, ops, request.with_data, request.limit):
            yield record

    async def FileRecords(self, request: FileRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[Record]:
        lo, hi = await _file_window(request, context)
        records = self._store.file_records(request.fh, hi, lo=lo)
        async for record in self._stream(records, frozenset(), request.with_data):
            yield record

    async def FileRecordChunks(self, request: FileRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[RecordChunk]:
        lo, hi = await _file_window(request, context)
        loop = asyncio.get_running_loop()
        reader = _ChunkReader(self._store.file_record_values(request.fh, hi, lo=lo), request.with_data)
        try:
            while True:
                chunk, done = await loop.run_in_executor(self._executor, reader.next_chunk)
                if chunk:
                    self.counters.records_total += len(chunk)
                    self.counters.bytes_total += sum(len(r) for r in chunk)
                    yield RecordChunk(records=chunk)
                if done:
                    return
        finally:
            await asyncio.shield(loop.run_in_executor(self._executor, reader.close))

    async def Baselines(self, request: ShardStatusRequest, context: grpc.aio.ServicerContext) -> BaselineList:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._baselines.list)

    async def _stream(self, records: Iterator[Record], ops: frozenset[int],
                      with_data: bool, limit: int = 0) -> AsyncIterator[Record]:
        loop = asyncio.get_running_loop()
        reader = _Reader(records, ops, with_data, limit)
        try:
            while True:
                chunk, done = await loop.run_in_executor(self._executor, reader.next_chunk)
                self.counters.records_total += len(chunk)
                self.counters.bytes_total += sum(r.ByteSize() for r in chunk)
                for record in chunk:
                    yield record
                if done:
                    return
        finally:
            # A cancelled call may leave a read running in the executor;
            # close() waits for it (the lock), then frees the RocksDB iterator,
            # which otherwise keeps the store open.
            await asyncio.shield(loop.run_in_executor(self._executor, reader.close))

    def baselines(self) -> BaselineList:
        """The Baselines answer (blocking)."""
        return self._baselines.list()


async def _file_window(request: FileRequest, context) -> tuple[Stamp | None, Stamp | None]:
    try:
        lo, hi = _bound(request.after, "after"), _bound(request.until, "until")
        if not request.fh:
            raise _BadRequest("fh is empty: name the file handle whose records you want")
    except _BadRequest as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    return lo, hi


class _Reader:
    """A store iterator read a chunk at a time from executor threads."""

    def __init__(self, records: Iterator[Record], ops: frozenset[int], with_data: bool,
                 limit: int = 0) -> None:
        self._records = records
        self._ops = ops
        self._with_data = with_data
        self._left = limit or -1   # records still to send (-1: no limit)
        self._lock = threading.Lock()

    def next_chunk(self) -> tuple[list[Record], bool]:
        """The next records to send, and whether the iterator is exhausted."""
        out: list[Record] = []
        nbytes = 0
        with self._lock:
            if self._left == 0:
                return out, True
            for record in self._records:
                if self._ops and record.op not in self._ops:
                    continue
                if not self._with_data and record.data:
                    record.ClearField("data")
                nbytes += len(record.data)
                out.append(record)
                self._left -= 1
                if self._left == 0:
                    return out, True
                if len(out) >= CHUNK_RECORDS or nbytes >= CHUNK_BYTES:
                    return out, False
        return out, True

    def close(self) -> None:
        with self._lock:
            self._records.close()


class _ChunkReader:
    """(record, stored bytes) pairs gathered into RecordChunk payloads from executor threads."""

    def __init__(self, values: Iterator[tuple[Record, bytes]], with_data: bool) -> None:
        self._values = values
        self._with_data = with_data
        self._lock = threading.Lock()

    def next_chunk(self) -> tuple[list[bytes], bool]:
        """The next serialized records to send, and whether the iterator is exhausted."""
        out: list[bytes] = []
        nbytes = 0
        with self._lock:
            for record, raw in self._values:
                if not self._with_data and record.data:
                    record.ClearField("data")
                    raw = record.SerializeToString()
                out.append(raw)
                nbytes += len(raw)
                if len(out) >= RECORD_CHUNK_RECORDS or nbytes >= RECORD_CHUNK_BYTES:
                    return out, False
        return out, True

    def close(self) -> None:
        with self._lock:
            self._values.close()


@dataclasses.dataclass(slots=True)
class _Found:
    begin: bytes
    end: bytes = b""
    files: int = 0
    bytes: int = 0


class _BaselineIndex:
    """The baselines a shard holds, kept current by scanning only what may be new."""

    def __init__(self, store: ShardStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._found: dict[bytes, _Found] = {}
        self._streams: dict = {}        # stream key -> durable_seq at the last scan
        self._scanned_below: Stamp | None = None  # every record below this was scanned
        self.full_scans = 0

    def list(self) -> BaselineList:
        with self._lock:
            self._refresh()
            return BaselineList(baselines=[
                BaselineInfo(baseline_id=f.begin, end=f.end, files=f.files, bytes=f.bytes)
                for _, f in sorted(self._found.items()) if f.begin])

    def _refresh(self) -> None:
        states = self._store.streams()
        streams = {k: s.durable_seq for k, s in states.items()}
        frontier = min((s.frontier for s in states.values()), default=Stamp.ZERO)
        same_streams = streams.keys() == self._streams.keys() and all(
            streams[k] >= self._streams[k] for k in streams)
        lo = None
        if same_streams and self._scanned_below is not None:
            lo = predecessor(self._scanned_below)
        else:
            self._found.clear()
            self.full_scans += 1
        for record in self._store.records(lo, None):
            if record.op == Op.BASELINE_BEGIN:
                found = self._found.setdefault(record.stamp, _Found(record.stamp))
                found.begin = record.stamp
            elif record.op == Op.BASELINE_END and record.baseline_id:
                found = self._found.setdefault(record.baseline_id, _Found(b""))
                found.end, found.files, found.bytes = (record.stamp, record.baseline_files,
                                                       record.baseline_bytes)
        self._streams = streams
        # The frontier was read before the scan: everything below it was held then.
        self._scanned_below = frontier
