"""The shard's Restore service (proto/journal.proto, ``service Restore``): read
access to the records one shard holds, for ``recoveryd.restore`` to merge.

* ``Scan``: the shard's records with ``after < stamp <= until`` in stamp
  order, only the ``ops`` asked for (all when empty), ``data`` left out
  unless ``with_data``. A tree rebuild asks for namespace ops and baseline
  pieces without data, so a file written 10,000 times costs the wire nothing.
  Without data, the records come from the operation index
  (recoveryd/store.py): file data is never read.
* ``ScanChunks``: the same records, serialized, many to a message, as stored
  (the shard parses nothing): with data, the bulk path of a whole-tree
  restore, which streams every record of the window in a few large messages.
* ``FilesRecordChunks``: ``FileRecordChunks`` of many handles in one call,
  each record once (a restore of a subtree: its files' records, and no other
  file's).
* ``FileRecords``: every record naming one handle (as ``fh``, ``dir_fh``,
  ``to_dir_fh`` or ``object_fh``) in the same window, through the per-file
  index (``ShardStore.file_records``).
* ``FileRecordChunks``: the same records, serialized, many to a message
  (``RecordChunk``): a file written 10,000 times is a few messages, not
  10,000, and records with data go out as stored, not parsed and
  serialized again.
* ``OpenBulk``: a ticket for the records a ``ScanChunks`` or
  ``FilesRecordChunks`` request names, served on the shard's bulk port
  (bulk_server.py) rather than through gRPC; the request is checked here,
  where the call was authorized, and read when the ticket's connection comes.
* ``Baselines``: the baselines whose ``BASELINE_BEGIN`` this shard holds,
  oldest first, with their ``BASELINE_END`` when held. Markers go to every
  shard (logstore/sharding.py); a baseline is complete only when *every*
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
import functools
import itertools
import logging
import threading
from typing import TYPE_CHECKING, AsyncIterator, Iterator

import grpc

from logstore.pb import journal_pb2_grpc
from logstore.pb.journal_pb2 import (BaselineInfo, BaselineList, BulkRequest, BulkTicket, FileRequest,
                                     FilesRequest, Op, Record, ScanRequest, ShardStatusRequest)
from logstore.stamp import Stamp, predecessor

from .security import RESTORE_SERVICE

if TYPE_CHECKING:  # no RocksDB on import: the servicer is handed an open store
    from .bulk_server import BulkServer
    from .store import ShardStore

__all__ = ["RestoreServicer", "RESTORE_SERVICE", "CHUNK_RECORDS", "predecessor", "add_restore_service"]

logger = logging.getLogger(__name__)

CHUNK_RECORDS = 256          # records read per executor call
CHUNK_BYTES = 8 << 20        # ... or fewer once their data passes this
RECORD_CHUNK_RECORDS = 4096  # records in one RecordChunk message
RECORD_CHUNK_BYTES = 2 << 20 # ... or fewer once their bytes pass this
SCAN_CHUNK_BYTES = 4 << 20   # a RecordChunk of ScanChunks with data (the bulk path)

def add_restore_service(servicer: RestoreServicer, server) -> None:
    """Serve ``servicer`` as the Restore service on ``server``, its chunk streams
    as built: a RecordChunk on the wire is its stored records, each framed
    (field 1, length), so the shard joins them (``_framed``) instead of
    building a message and serializing it, which copies every byte twice."""
    captured = _Handlers()
    journal_pb2_grpc.add_RestoreServicer_to_server(servicer, captured)
    handlers = dict(captured.handlers)
    for name in _FRAMED:
        handler = handlers[name]
        handlers[name] = grpc.unary_stream_rpc_method_handler(
            handler.unary_stream, request_deserializer=handler.request_deserializer,
            response_serializer=None)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(RESTORE_SERVICE, handlers),))
    server.add_registered_method_handlers(RESTORE_SERVICE, handlers)


#: Methods whose servicer yields RecordChunks in wire form.
_FRAMED = ("ScanChunks", "FileRecordChunks", "FilesRecordChunks")


class _Handlers:
    """Takes the method handlers the generated code registers (a stand-in server)."""

    handlers: dict = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.handlers = handlers


def _framed(records: list[bytes]) -> bytes:
    """``RecordChunk(records=records)`` serialized, by concatenation."""
    return b"".join(chunk_parts(records))


def chunk_parts(records: list[bytes]) -> list[bytes]:
    """``RecordChunk(records=records)`` serialized, in pieces: each record's
    tag and length, then the record itself (not copied)."""
    parts = []
    for raw in records:
        parts.append(b"\x0a" + _varint(len(raw)))
        parts.append(raw)
    return parts


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


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
    """What restore clients read from this shard (nfsj_restore_served_*),
    counted by the event loop and by bulk streams' threads."""

    records_total: int = 0
    bytes_total: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def add(self, records: int, nbytes: int) -> None:
        with self._lock:
            self.records_total += records
            self.bytes_total += nbytes


class RestoreServicer(journal_pb2_grpc.RestoreServicer):
    """Restore over one ``ShardStore``; blocking reads run on ``executor``."""

    def __init__(self, store: ShardStore, executor: concurrent.futures.Executor) -> None:
        self._store = store
        self._executor = executor
        self._baselines = _BaselineIndex(store)
        self.counters = ServedCounters()
        self.bulk: BulkServer | None = None   # the shard's bulk port, when it serves one

    async def Scan(self, request: ScanRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[Record]:
        try:
            lo, hi = _bound(request.after, "after"), _bound(request.until, "until")
            ops = frozenset(request.ops)
            bad = [op for op in ops if op not in Op.values()]
            if bad:
                raise _BadRequest(f"unknown op(s) {bad}")
        except _BadRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if request.with_data:
            records = self._store.records(lo, hi)
        else:
            records = self._store.op_records(ops, lo, hi)
        async for record in self._stream(records, ops, request.with_data, request.limit):
            yield record

    async def ScanChunks(self, request: ScanRequest,
                         context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        try:
            values = self._scan_values(request)
        except _BadRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        async for chunk in self._chunks(_ValueReader(values, request.limit,
                                                     SCAN_CHUNK_BYTES if request.with_data
                                                     else RECORD_CHUNK_BYTES)):
            yield chunk

    def _scan_values(self, request: ScanRequest) -> Iterator[bytes]:
        """ScanChunks' records as stored (raises _BadRequest); ``limit`` is the caller's."""
        lo, hi = _bound(request.after, "after"), _bound(request.until, "until")
        ops = frozenset(request.ops)
        bad = [op for op in ops if op not in Op.values()]
        if bad:
            raise _BadRequest(f"unknown op(s) {bad}")
        return self._store.op_values(ops, lo, hi, with_data=request.with_data)

    async def FileRecords(self, request: FileRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[Record]:
        lo, hi = await _file_window(request, context)
        records = self._store.file_records(request.fh, hi, lo=lo)
        async for record in self._stream(records, frozenset(), request.with_data):
            yield record

    async def FileRecordChunks(self, request: FileRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        lo, hi = await _file_window(request, context)
        reader = _ChunkReader(self._store.file_record_values(request.fh, hi, lo=lo), request.with_data)
        async for chunk in self._chunks(reader):
            yield chunk

    async def FilesRecordChunks(self, request: FilesRequest,
                                context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        try:
            values = self._files_values(request)
        except _BadRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        async for chunk in self._chunks(_ValueReader(values, 0, SCAN_CHUNK_BYTES)):
            yield chunk

    def _files_values(self, request: FilesRequest) -> Iterator[bytes]:
        """FilesRecordChunks' records as stored (raises _BadRequest)."""
        lo, hi = _bound(request.after, "after"), _bound(request.until, "until")
        if not request.fhs or not all(request.fhs):
            raise _BadRequest("fhs: name at least one file handle, none empty")
        values = self._store.files_record_values(list(request.fhs), hi, lo=lo)
        return values if request.with_data else (_stripped(v) for v in values)

    async def OpenBulk(self, request: BulkRequest, context: grpc.aio.ServicerContext) -> BulkTicket:
        """A ticket for the records of ``request`` on the bulk port (bulk_server.py)."""
        if self.bulk is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this shard serves no bulk port")
        which = request.WhichOneof("what")
        try:
            if which == "scan":
                # Checked now, read when the connection comes.
                self._scan_values(request.scan).close()
                scan = request.scan
                opener = lambda: _limited(self._scan_values(scan), scan.limit)  # noqa: E731
            elif which == "files":
                self._files_values(request.files).close()
                opener = functools.partial(self._files_values, request.files)
            else:
                raise _BadRequest("what: ask for a scan or for files")
        except _BadRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return BulkTicket(ticket=self.bulk.admit(opener), port=self.bulk.port, tls=self.bulk.tls)

    async def _chunks(self, reader) -> AsyncIterator[bytes]:
        """A reader's chunks as RecordChunk messages in wire form (``add_restore_service``)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                chunk, done = await loop.run_in_executor(self._executor, reader.next_chunk)
                if chunk:
                    self.counters.add(len(chunk), sum(len(r) for r in chunk))
                    yield _framed(chunk)
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
                self.counters.add(len(chunk), sum(r.ByteSize() for r in chunk))
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


def _limited(values: Iterator[bytes], limit: int) -> Iterator[bytes]:
    """At most ``limit`` of ``values`` (0: all); closing it closes them."""
    if not limit:
        return values
    return _closing_islice(values, limit)


def _closing_islice(values: Iterator[bytes], limit: int) -> Iterator[bytes]:
    try:
        yield from itertools.islice(values, limit)
    finally:
        values.close()


def _stripped(raw: bytes) -> bytes:
    record = Record.FromString(raw)
    if not record.data:
        return raw
    record.ClearField("data")
    return record.SerializeToString()


class _ValueReader:
    """Stored records gathered into RecordChunk payloads from executor threads."""

    def __init__(self, values: Iterator[bytes], limit: int, chunk_bytes: int) -> None:
        self._values = values
        self._left = limit or -1   # records still to send (-1: no limit)
        self._chunk_bytes = chunk_bytes
        self._lock = threading.Lock()

    def next_chunk(self) -> tuple[list[bytes], bool]:
        """The next serialized records to send, and whether the iterator is exhausted."""
        out: list[bytes] = []
        nbytes = 0
        with self._lock:
            if self._left == 0:
                return out, True
            for raw in self._values:
                out.append(raw)
                nbytes += len(raw)
                self._left -= 1
                if self._left == 0:
                    return out, True
                if len(out) >= RECORD_CHUNK_RECORDS or nbytes >= self._chunk_bytes:
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
        for record in self._store.op_records((Op.BASELINE_BEGIN, Op.BASELINE_END), lo, None):
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
