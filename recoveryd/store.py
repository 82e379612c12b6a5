"""A shard's durable store: records, the per-file index and stream state, in RocksDB.

One RocksDB (through rocksdict, raw bytes) per shard, with two column
families: the records, and the rest (the default one); a third holds one key
and exists to flush the others (``_write_group``). Every key is fixed-width
big-endian after its prefix, so byte order is stamp order and every scan is a
seek plus an iterate upper bound:

* ``r/<stamp16>``              -> a serialized ``Record``, as shipped; in a
  column family of its own (``records``), so that compaction moves its files
  down the levels instead of rewriting them (``store_options``). Format 3;
  a format-2 store's records are moved there when it is opened
  (``_move_records``);
* ``f/<fhkey8>/<stamp16>``     -> the per-file index: the stamps of the
  records that name a handle (as ``fh``, ``dir_fh``, ``to_dir_fh`` or
  ``object_fh``), so one file's history is one prefix scan (RocksDB's
  "multimap" prefix-seek case). One entry per file per ingest group: the
  key holds the least of its stamps, the value all of them, sorted and
  packed (16 bytes each), or ``b""`` for the key's stamp alone (all a
  format-3 store has). An entry's stamps lie within ``FILE_ENTRY_SPAN_NS``
  of its key, so a scan from ``lo`` seeks that far back and no further;
  entries may overlap, and readers merge them (``_file_stamps``). One
  entry per record, as before format 4, cost a third of a shard's ingest
  (three RocksDB puts per record instead of two). ``fhkey8`` is
  ``fh_key(fh)``, the first 8 bytes of blake2b(fh); a collision only costs
  a wasted read, since ``file_records`` checks the handle on the record itself;
* ``p/<op u32>/<stamp16>``     -> the record without its ``data``: the operation
  index, so that a scan of some ops (a namespace rebuild, the baseline
  markers) reads neither the other ops nor any file data, and a scan of
  every op without data reads no file data either. A record whose data
  field ends it (as the proxy journals it) is split there
  (``logstore.record.split_data``): the value is its own bytes up to there
  and only they are parsed; otherwise the record is parsed whole and
  re-serialized without its data. (Older shippers' ``ShippedRecord`` may
  say where the data starts: ``_split_record`` checks that against the
  bytes.) Added in format 2; a format-1 store
  is indexed when it is opened (``_index_operations``) and reads on as before;
* ``s/<node_id u32><log_id>``  -> a ``StreamStatus``: how far this shard
  holds one proxy LOG (see ``recoveryd.frontier``) and how many
  records it brought;
* ``o/<node_id u32>``          -> the identity that owns a proxy node id (utf-8,
  e.g. ``cert:proxy-a``): bound by the first authenticated registration, so
  no other identity can ship streams of that node (``bind_owner``);
* ``x/<node_id u32><log_id>``  -> a retired stream: the ``StreamStatus`` it had
  when ``retire`` removed it from the frontier; batches for it are refused;
* ``m/<name>``                 -> meta: ``shard_id`` (u32), ``data_id`` (a
  uuid made when the store is created), ``node_id`` (u32, the shard's HLC node
  id), ``format`` (u32), and the ``records``/``bytes`` counters (u64).

Durability: ``ingest`` writes a batch's records, their index entries, the
stream's new state and the counters in ONE WriteBatch, durable before it
returns, so after any crash the stream state never runs ahead of the records
it describes (the invariant ``recoveryd.frontier`` relies on). One batch, or
a small group, goes through the WAL with sync; a group of several batches
holding ``UNLOGGED_WRITE_BYTES`` or more skips the WAL, and every column
family is flushed at once (``_write_group``). A deferred group
(``defer=True``, for a shipper that keeps its records until they are durable
here) of ``DEFERRED_WRITE_BYTES`` or more, or any while others wait, skips
the WAL too, and is flushed with the others that came in ``DEFERRED_FLUSH_S``
or ``DEFERRED_FLUSH_BYTES``, or at the server's word; ``durable_seq`` says how far
each stream is durable meanwhile. Flushes are atomic across the column
families, so a crash loses whole groups from the end, never the stream's
state without its records. A durable write while deferred ones wait flushes
them all. A record that arrives twice (its
``r/`` key already exists, or it repeats within a batch) is neither rewritten
nor counted again: resends after a lost ack are harmless. A record under a
stamp already held with *different* bytes is refused with its whole batch and
counted (``conflicts_total``): the first write must not silently hide the
second. A record whose stamp's node id is not its stream's is refused: a proxy
stamps only with its own node id.

Range reads follow the Restore API's convention (``ScanRequest``): stamps
strictly above ``lo`` and at or below ``hi``; ``None`` means unbounded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import os
import struct
import threading
import time
import logging
import mmap
import uuid
from typing import Callable, Collection, Iterable, Iterator, NamedTuple

from rocksdict import (ColumnFamily, CompactOptions, Options, Rdict, ReadOptions, WriteBatch,
                       WriteOptions)

from logstore.pb.journal_pb2 import IngestBatch, Op, Record, StreamGap, StreamId, StreamStatus
from logstore.record import is_data_tail, split_data
from logstore.segment import NO_STAMP as _NO_STAMP
from logstore.shipped import ReceivedBatch, frames_size, iter_frames
from logstore.stamp import Stamp
from nfsproxy._dataplane import index_shipped_frames  # a compiled leaf (tests/unit/test_layering.py)

from .frontier import (BatchRefused, Gap, GapMarker, StreamKey, StreamState, apply, shard_frontier,
                       stream_gaps)

__all__ = [
    "ShardStore", "StoreError", "StreamInfo", "fh_key", "stream_key", "stream_id",
    "stream_status", "gap_pb", "FORMAT", "FILE_ENTRY_SPAN_NS", "RetireRefused", "shipped_size",
    "ParsedGroup", "store_options", "supports_direct_io", "UNLOGGED_WRITE_BYTES",
    "DEFERRED_FLUSH_BYTES", "DEFERRED_FLUSH_S", "DEFERRED_WRITE_BYTES",
]

FORMAT = 4  # m/format; bump (and migrate or refuse) when the key layout changes
#: Formats this version opens, migrating them to FORMAT (1: no operation index;
#: 2: records in the default column family; 3: one per-file index entry per
#: record, which format 4 reads as it is: only the mark changes, so that an
#: older shard, which would read a packed entry as one stamp, refuses it).
_MIGRATES = frozenset({1, 2, 3})
#: How far apart (wall time) the stamps of one per-file index entry may lie.
#: Part of the format: readers seek this far back, so lowering it without a
#: format bump would make reads from ``lo`` miss stamps of older entries.
FILE_ENTRY_SPAN_NS = 10_000_000_000
#: At most this many stamps per per-file index entry (a 64 KiB value).
_FILE_ENTRY_STAMPS = 4096
#: The column family of the records themselves (``r/<stamp>``); everything else
#: (indexes, streams, meta) lives in the default one.
_RECORDS_CF = "records"
#: A column family holding one key, written with every unlogged write: a
#: manual compaction of it is how the store flushes every column family at
#: once (``ShardStore._write_group``).
_FLUSH_CF = "flush"
_FLUSH_KEY = b"flush"

logger = logging.getLogger(__name__)

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_STAMP_BYTES = Stamp.BYTES

_RECORD = b"r/"
_FILE = b"f/"
_OPERATION = b"p/"
_STREAM = b"s/"
_OWNER = b"o/"
_RETIRED = b"x/"
_META_SHARD_ID = b"m/shard_id"
_META_DATA_ID = b"m/data_id"
_META_NODE_ID = b"m/node_id"
_META_FORMAT = b"m/format"
_META_RECORDS = b"m/records"
_META_BYTES = b"m/bytes"

_MULTIGET_CHUNK = 256
_ABOVE_EVERY_STAMP = b"\xff" * (_STAMP_BYTES + 1)  # ends the merge in ``_file_stamps``
_INDEX_BATCH_BYTES = 4 << 20   # per WriteBatch when indexing a format-1 store
_ALL_OPS = tuple(sorted(Op.values()))
_GAP = Op.GAP  # an attribute of the enum wrapper costs a lookup per use


class StoreError(Exception):
    """The store cannot be opened or used as asked; the message says why."""


class RetireRefused(Exception):
    """A stream cannot be retired (not held through the asked seq, unknown, or gapped)."""


class _Conflict(ValueError):
    """A record under a stamp already held with other bytes."""


@dataclasses.dataclass(frozen=True, slots=True)
class StreamInfo:
    """A stream's state plus what status reports about it."""

    state: StreamState
    records: int = 0              # distinct records this stream brought to this shard
    updated_unix_ns: int = 0      # when its state last changed


def fh_key(fh: bytes) -> bytes:
    """The 8-byte index key of a file handle: the first 8 bytes of blake2b(fh)."""
    return hashlib.blake2b(fh).digest()[:8]


def stream_key(pb: StreamId) -> StreamKey:
    return StreamKey(pb.node_id, pb.log_id)


def stream_id(key: StreamKey) -> StreamId:
    return StreamId(node_id=key.node_id, log_id=key.log_id)


def stream_status(key: StreamKey, info: StreamInfo) -> StreamStatus:
    """The wire (and on-disk) form of a stream's state."""
    s = info.state
    return StreamStatus(stream=stream_id(key), durable_seq=s.durable_seq,
                        frontier=s.frontier.to_bytes(), newest=s.newest.to_bytes(),
                        gaps=[str(g) for g in s.gaps], records=info.records,
                        updated_unix_ns=info.updated_unix_ns,
                        gap_ranges=[gap_pb(g) for g in s.gaps])


def gap_pb(gap: Gap) -> StreamGap:
    return StreamGap(after_seq=gap.after_seq, through_seq=gap.through_seq,
                     **{"from": gap.from_stamp.to_bytes()}, through=gap.through.to_bytes(),
                     cause=gap.cause, reason=gap.reason)


def _stream_info(pb: StreamStatus) -> StreamInfo:
    state = StreamState(durable_seq=pb.durable_seq, frontier=_stamp_or_zero(pb.frontier),
                        gaps=stream_gaps(pb), newest=_stamp_or_zero(pb.newest))
    return StreamInfo(state, pb.records, pb.updated_unix_ns)


def _stamp_or_zero(raw: bytes) -> Stamp:
    return Stamp.from_bytes(raw) if raw else Stamp.ZERO


def _stream_row_key(key: StreamKey) -> bytes:
    return _STREAM + _U32.pack(key.node_id) + key.log_id.encode("utf-8")


def _op_prefix(op: int) -> bytes:
    return _OPERATION + _U32.pack(op) + b"/"


def _without_data(record: Record, raw: bytes) -> bytes:
    """The operation index's value: ``record`` (parsed from ``raw``) without its data.
    Clears the field on ``record``."""
    if not record.data:
        return raw
    record.ClearField("data")
    return record.SerializeToString()


class _Row(NamedTuple):
    value: bytes          # the record as shipped
    handles: Collection[bytes]  # the distinct handles it names (the per-file index)
    op: int
    meta: bytes           # ... without its data (the operation index)


_OP_PREFIXES = {op: _op_prefix(op) for op in _ALL_OPS}


def _prefix_end(prefix: bytes) -> bytes:
    """The least key above every key starting with ``prefix`` (prefix never ends in 0xff here)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _after(prefix: bytes, lo: Stamp | None) -> bytes:
    # Keys are fixed width, so key + b"\0" is the least key above key.
    return prefix if lo is None else prefix + lo.to_bytes() + b"\0"


def _through(prefix: bytes, hi: Stamp | None) -> bytes:
    return _prefix_end(prefix) if hi is None else prefix + hi.to_bytes() + b"\0"


# The WAL size past which RocksDB flushes the column family holding the
# oldest WAL file, so that small writes do not keep WAL files alive for long
# (the index's memtable fills far slower than the records').
_MAX_WAL_BYTES = 64 << 20
#: An ingest write of at least this many bytes of records, of a shard that is
#: behind, skips the WAL and is flushed instead (``ShardStore._write_group``).
#: RocksDB's WAL costs a copy and a CRC32C per byte (in software: rocksdict's
#: build has no SSE4.2 path), and every byte is written again at flush anyway;
#: a flush costs about 0.6 ms of CPU whatever its size, against 0.04 ms for a
#: small synced WAL write, so small writes keep the WAL.
UNLOGGED_WRITE_BYTES = 1 << 20
#: Deferred durability (``IngestBatch.defer_durable``): a shipper that keeps
#: its records until the shard says they are durable lets the shard write its
#: groups without the WAL and flush them together, once this many bytes wait
#: or ``DEFERRED_FLUSH_S`` after the first of them. Each group through the
#: WAL cost a software CRC, a second copy of every byte and an fsync on a
#: disk the NAS may share. Measured side by side: the two shards' CPU per
#: proxied 4 KiB write 26-27 -> 13.5-14 us; a backlog 45k -> 63k records/s.
DEFERRED_FLUSH_BYTES = 32 << 20
DEFERRED_FLUSH_S = 1.0
#: A smaller group is deferred only while others wait for their flush; alone
#: it goes through the WAL: a flush costs 0.6-1.9 ms of CPU and a table file
#: in each column family, about what the WAL costs for this many bytes, so a
#: trickle of small batches does not flush each one.
DEFERRED_WRITE_BYTES = 256 << 10
# Each unlogged write leaves a small table file of index entries in L0 of the
# default column family, and every L0 compaction there rewrote the whole
# index below it: at RocksDB's trigger of 4 files, 11 times over, 1.37 s of
# compaction CPU per 150,000 records of 4 KiB; at 16, 0.56 s. A scan of the
# index seeks in each L0 file, so not more.
_L0_COMPACTION_FILES = 16


def store_options(path: str | os.PathLike[str]) -> Options:
    """The RocksDB options of the shard store at ``path`` (its column families
    take the defaults).

    The records have a column family of their own. Their keys are stamps, so
    each memtable flushed mostly holds a range above the ones before it.
    Mixed with the per-file index, whose keys lead with file handles, every
    file overlapped every other and each byte of file data was rewritten at
    every level. Apart, consecutive flushes still overlap at their edges (the
    LOG's order is not quite stamp order), so compaction does rewrite some
    records: measured, 166 MB of a 544 MiB ingest of 1 MiB writes, 12% of
    the shard's CPU. The family keeps RocksDB's default L0 trigger (4 files):
    it is made with default options, and a family keeps the options it was
    made with.

    A shard writes far more than it reads, so what it writes stays out of
    the page cache: flushes and compactions use direct I/O where the file
    system takes it (``supports_direct_io``). Restores read through the
    page cache as before.

    Large ingest writes of a shard that is behind skip the WAL and are
    flushed at once (``UNLOGGED_WRITE_BYTES``). Flushes are atomic across
    the column families, as RocksDB asks when some writes have no WAL: no
    flush, the store's or one RocksDB starts itself (a full memtable), may
    make a stream's state durable without the records it counts. RocksDB
    refuses writes without the WAL when it recycles WAL files, so it does
    not recycle them.
    """
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.increase_parallelism(max(2, os.cpu_count() or 2))
    options.set_keep_log_file_num(5)
    options.set_max_total_wal_size(_MAX_WAL_BYTES)
    options.set_atomic_flush(True)
    options.set_level_zero_file_num_compaction_trigger(_L0_COMPACTION_FILES)
    options.set_level_zero_slowdown_writes_trigger(3 * _L0_COMPACTION_FILES)
    options.set_level_zero_stop_writes_trigger(4 * _L0_COMPACTION_FILES)
    if supports_direct_io(path):
        options.set_use_direct_io_for_flush_and_compaction(True)
    return options


def supports_direct_io(path: str | os.PathLike[str]) -> bool:
    """Whether files in directory ``path`` (created if missing) take O_DIRECT
    writes. Asked with direct I/O where the file system refuses it (ramfs,
    some FUSE file systems), RocksDB refuses to open the store at all. The
    question is put to an unnamed temporary file, which leaves nothing
    behind, even in a crash."""
    os.makedirs(path, exist_ok=True)
    if not (hasattr(os, "O_TMPFILE") and hasattr(os, "O_DIRECT")):
        return False  # not Linux: buffered, RocksDB's default
    try:
        fd = os.open(path, os.O_TMPFILE | os.O_WRONLY | os.O_DIRECT, 0o600)
    except OSError:
        return False
    try:
        with mmap.mmap(-1, mmap.PAGESIZE) as block:  # page-aligned, as O_DIRECT needs
            return os.write(fd, block) == mmap.PAGESIZE
    except OSError:
        return False
    finally:
        os.close(fd)


class ShardStore:
    """The RocksDB store of recovery shard ``shard_id`` at ``path`` (a directory).

    Creates the store if ``path`` is missing or empty. Raises ``StoreError`` if
    ``path`` holds another shard's store, something that is not a shard store,
    or a store another process has open. Thread-safe: ``ingest`` calls are
    serialized; reads may run alongside them.

    ``sync=False`` skips the fsync of each write (benchmarks only: a crash
    may then lose acknowledged batches). ``members``: the proxy node ids this
    shard expects; ``frontier()`` counts ``Stamp.ZERO`` for a member it holds
    no stream of (a wiped store does not forget who ships to it).
    """

    def __init__(self, path: str | os.PathLike[str], shard_id: int, *, sync: bool = True,
                 members: frozenset[int] | set[int] = frozenset()) -> None:
        if not 0 <= shard_id <= 0xFFFF_FFFF:
            raise StoreError(f"shard id {shard_id} does not fit in u32")
        self._path = os.fspath(path)
        self._shard_id = shard_id
        self._write_lock = threading.Lock()   # one ingest at a time: read state, apply, write
        self._mem_lock = threading.Lock()     # guards the in-memory mirror below
        self._closed = False
        self._members = frozenset(members)
        self.conflicts_total = 0  # records refused: their stamp is held with other bytes
        self.node_refusals_total = 0  # records refused: stamped by another node than the stream's
        _check_data_dir(self._path)

        try:
            self._db = Rdict(self._path, store_options(self._path))  # opens every column family
        except Exception as e:  # rocksdict raises a bare Exception for RocksDB errors
            if "lock" in str(e).lower():
                raise StoreError(f"shard store {self._path} is in use by another process "
                                 f"(RocksDB LOCK held): {e}") from None
            raise StoreError(f"cannot open shard store {self._path}: {e}") from None
        self._records: Rdict | None = None
        self._records_cf: ColumnFamily | None = None
        self._flusher: Rdict | None = None
        self._flusher_cf: ColumnFamily | None = None
        self._write_opts = WriteOptions()
        self._write_opts.sync = sync
        self._sync = sync
        self._unlogged_opts = WriteOptions()
        self._unlogged_opts.disable_wal = True
        self._flush_opts = CompactOptions()
        self._flush_opts.set_exclusive_manual_compaction(False)  # RocksDB's own compactions go on
        # Set by a failed flush: RocksDB may hold records it did not make durable.
        self._failure: str | None = None
        # Deferred writes no flush has made durable yet: their bytes, when the
        # first was written, and each stream's durable position before them.
        self._deferred_bytes = 0
        self._deferred_since: float | None = None
        self._durable_seqs: dict[StreamKey, int] = {}
        # A deferred flush runs without the write lock, one at a time
        # (``flush_deferred``); while it runs, writes are deferred too.
        self._flush_lock = threading.Lock()
        self._flushing = False
        self.flushes_total = 0
        try:
            self._open_meta()
            self._streams: dict[StreamKey, StreamInfo] = self._load_streams()
            self._owners: dict[int, str] = self._load_owners()
            self._retired: dict[StreamKey, StreamInfo] = self._load_streams(_RETIRED)
        except BaseException:
            self._close_db()
            raise

    # -- opening ---------------------------------------------------------------

    def _open_meta(self) -> None:
        raw = self._db.get([_META_SHARD_ID, _META_DATA_ID, _META_NODE_ID, _META_FORMAT,
                            _META_RECORDS, _META_BYTES])
        shard_raw, data_raw, node_raw, format_raw, records_raw, bytes_raw = raw
        if shard_raw is None:
            if not self._is_empty():
                raise StoreError(f"{self._path} holds a RocksDB database that is not an "
                                 "nfs-journal shard store (no shard id); refusing to use it")
            self._create_meta()
            self._open_records()
            return
        owner = _U32.unpack(shard_raw)[0]
        data_id = data_raw.decode("ascii") if data_raw else "?"
        if owner != self._shard_id:
            raise StoreError(f"{self._path} belongs to shard {owner} (data id {data_id}), "
                             f"not shard {self._shard_id}; give it --shard-id {owner} or use "
                             "another data directory")
        fmt = _U32.unpack(format_raw)[0] if format_raw else None
        if fmt in _MIGRATES or fmt == FORMAT:
            # Only now, known to be a shard store: a store of another program
            # is refused unchanged. A format-3 store without the column family
            # was stopped between its meta and its first record.
            self._open_records()
        if fmt == 1:
            self._index_operations()
            fmt = 2
        if fmt == 2:
            self._move_records()
            fmt = 3
        if fmt == 3:
            self._db.put(_META_FORMAT, _U32.pack(FORMAT), self._sync_opts())
            fmt = FORMAT
        if fmt != FORMAT:
            raise StoreError(f"{self._path} has store format {fmt}; this version reads "
                             f"format {FORMAT} only")
        if data_raw is None or node_raw is None or records_raw is None or bytes_raw is None:
            raise StoreError(f"{self._path}: shard store meta is incomplete; refusing to guess")
        self._data_id = data_id
        self._node_id = _U32.unpack(node_raw)[0]
        self._records_total = _U64.unpack(records_raw)[0]
        self._bytes_total = _U64.unpack(bytes_raw)[0]

    def _open_records(self) -> None:
        try:
            self._records = self._db.get_column_family(_RECORDS_CF)
        except Exception:  # rocksdict raises a bare Exception for a missing column family
            self._records = self._db.create_column_family(_RECORDS_CF, Options(raw_mode=True))
        self._records_cf = self._db.get_column_family_handle(_RECORDS_CF)
        try:
            self._flusher = self._db.get_column_family(_FLUSH_CF)
        except Exception:  # a store from before unlogged writes
            self._flusher = self._db.create_column_family(_FLUSH_CF, Options(raw_mode=True))
        self._flusher_cf = self._db.get_column_family_handle(_FLUSH_CF)

    def _index_operations(self) -> None:
        """Build the operation index of a format-1 store from its records, then
        mark it format 2. Index entries are idempotent: a crash in between
        leaves format 1, and the next open indexes again."""
        wb, pending = WriteBatch(raw_mode=True), 0
        for key, value in self._scan(_RECORD, _prefix_end(_RECORD), self._db):
            record = Record.FromString(value)
            meta = _without_data(record, value)
            wb.put(_op_prefix(record.op) + key[len(_RECORD):], meta)
            pending += len(meta)
            if pending >= _INDEX_BATCH_BYTES:
                self._db.write(wb, self._write_opts)
                wb, pending = WriteBatch(raw_mode=True), 0
        wb.put(_META_FORMAT, _U32.pack(2))
        self._db.write(wb, self._sync_opts())

    def _move_records(self) -> None:
        """Move a format-2 store's records into their column family, then mark
        it format 3 (which reads as format 4). Each batch puts records there
        and deletes them here atomically: a crash in between leaves format 2
        with some records moved, and the next open moves the rest. It reads
        and writes every record once: the shard serves only after it."""
        logger.warning("%s: moving the records of a format-2 store into their column family "
                       "(once; the shard serves when it is done)", self._path)
        started, count, nbytes = time.monotonic(), 0, 0
        wb, pending = WriteBatch(raw_mode=True), 0
        for key, value in self._scan(_RECORD, _prefix_end(_RECORD), self._db):
            wb.put(key, value, self._records_cf)
            wb.delete(key)
            pending += len(value)
            count, nbytes = count + 1, nbytes + len(value)
            if pending >= _INDEX_BATCH_BYTES:
                self._db.write(wb, self._write_opts)
                wb, pending = WriteBatch(raw_mode=True), 0
        wb.put(_META_FORMAT, _U32.pack(3))
        self._db.write(wb, self._sync_opts())
        logger.warning("%s: moved %d records (%d bytes) in %.1f s; store format %d",
                       self._path, count, nbytes, time.monotonic() - started, FORMAT)

    def _is_empty(self) -> bool:
        it = self._db.iter()
        try:
            it.seek_to_first()
            return not it.valid()
        finally:
            del it

    def _create_meta(self) -> None:
        self._data_id = uuid.uuid4().hex
        self._node_id = int.from_bytes(os.urandom(4), "big")
        self._records_total = self._bytes_total = 0
        wb = WriteBatch(raw_mode=True)
        wb.put(_META_SHARD_ID, _U32.pack(self._shard_id))
        wb.put(_META_DATA_ID, self._data_id.encode("ascii"))
        wb.put(_META_NODE_ID, _U32.pack(self._node_id))
        wb.put(_META_FORMAT, _U32.pack(FORMAT))
        wb.put(_META_RECORDS, _U64.pack(0))
        wb.put(_META_BYTES, _U64.pack(0))
        self._db.write(wb, self._sync_opts())

    def _sync_opts(self) -> WriteOptions:
        opts = WriteOptions()
        opts.sync = True
        return opts

    def _load_streams(self, prefix: bytes = _STREAM) -> dict[StreamKey, StreamInfo]:
        streams = {}
        for _, value in self._scan(prefix, _prefix_end(prefix)):
            pb = StreamStatus.FromString(value)
            streams[stream_key(pb.stream)] = _stream_info(pb)
        return streams

    def _load_owners(self) -> dict[int, str]:
        return {_U32.unpack(key[len(_OWNER):])[0]: value.decode("utf-8")
                for key, value in self._scan(_OWNER, _prefix_end(_OWNER))}

    # -- identity and totals ---------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @property
    def shard_id(self) -> int:
        return self._shard_id

    @property
    def data_id(self) -> str:
        """This data directory's identity (a uuid made when the store was created)."""
        return self._data_id

    @property
    def node_id(self) -> int:
        """The shard's HLC node id (random, made with the store)."""
        return self._node_id

    @property
    def records_total(self) -> int:
        """Distinct records held."""
        return self._records_total

    @property
    def bytes_total(self) -> int:
        """Bytes of the serialized records held."""
        return self._bytes_total

    def streams(self) -> dict[StreamKey, StreamState]:
        with self._mem_lock:
            return {k: v.state for k, v in self._streams.items()}

    def stream_infos(self) -> dict[StreamKey, StreamInfo]:
        with self._mem_lock:
            return dict(self._streams)

    def stream_state(self, key: StreamKey) -> StreamState:
        """The stream's state; a stream never seen is at seq 0 with frontier ZERO."""
        with self._mem_lock:
            info = self._streams.get(key)
        return info.state if info is not None else StreamState()

    @property
    def members(self) -> frozenset[int]:
        """The proxy node ids this shard expects (configured; may be empty)."""
        return self._members

    def expect(self, members) -> None:
        """Add proxy node ids to the members this shard expects."""
        self._members = self._members | frozenset(members)

    def missing_members(self) -> list[int]:
        """Members of which this shard holds no stream (each holds the frontier at ZERO)."""
        nodes = {key.node_id for key in self.streams()}
        return sorted(self._members - nodes)

    def frontier(self) -> Stamp | None:
        """The shard's frontier: the least over its streams, ZERO while a
        member has no stream here (None: no stream and no member)."""
        if self.missing_members():
            return Stamp.ZERO
        return shard_frontier(self.streams().values())

    def owner(self, node_id: int) -> str | None:
        """The identity bound to a proxy node id (None: not bound yet)."""
        with self._mem_lock:
            return self._owners.get(node_id)

    def retired(self) -> dict[StreamKey, StreamInfo]:
        """Retired streams, with the state each had when it was retired."""
        with self._mem_lock:
            return dict(self._retired)

    def is_retired(self, key: StreamKey) -> bool:
        with self._mem_lock:
            return key in self._retired

    # -- writing ---------------------------------------------------------------

    def bind_owner(self, node_id: int, identity: str) -> str:
        """Bind ``node_id`` to ``identity`` durably unless it is bound already;
        returns the identity it is bound to (compare it with yours)."""
        self._check_writable()
        with self._write_lock:
            with self._mem_lock:
                bound = self._owners.get(node_id)
            if bound is not None:
                return bound
            self._write_durably(_one(_OWNER + _U32.pack(node_id), identity.encode("utf-8")))
            with self._mem_lock:
                self._owners[node_id] = identity
            return identity

    def retire(self, stream: StreamKey, through_seq: int) -> StreamInfo:
        """Remove ``stream`` from the frontier for good, once it is held through
        ``through_seq`` (the last seq its LOG ever had) and has no gap.

        Its records stay. Later batches for it are refused. Raises
        ``RetireRefused`` saying why it cannot; retiring twice is a no-op.
        """
        self._check_writable()
        with self._write_lock:
            with self._mem_lock:
                info = self._streams.get(stream)
                retired = self._retired.get(stream)
            if info is None:
                if retired is not None:
                    return retired
                raise RetireRefused(f"shard {self._shard_id} has no stream {stream}")
            state = info.state
            if state.durable_seq < through_seq:
                raise RetireRefused(
                    f"shard {self._shard_id} holds stream {stream} only through seq "
                    f"{state.durable_seq}, not through {through_seq}: records it sent are "
                    "not all held; let its shipper finish first")
            if state.gaps:
                raise RetireRefused(
                    f"shard {self._shard_id}: stream {stream} has gaps ({'; '.join(map(str, state.gaps))}): "
                    "records it stamped may be missing; retiring it would hide that")
            wb = WriteBatch(raw_mode=True)
            wb.delete(_stream_row_key(stream))
            wb.put(_RETIRED + _stream_row_key(stream)[len(_STREAM):],
                   stream_status(stream, info).SerializeToString())
            self._write_durably(wb)
            with self._mem_lock:
                del self._streams[stream]
                self._retired[stream] = info
            return info

    def register(self, stream: StreamKey) -> StreamState:
        """Make the stream known durably (an empty state if new); return its
        state. A retired stream is not registered again: its last state is
        returned."""
        self._check_writable()
        with self._write_lock:
            with self._mem_lock:
                info = self._streams.get(stream) or self._retired.get(stream)
            if info is not None:
                return info.state
            info = StreamInfo(StreamState(), 0, time.time_ns())
            wb = WriteBatch(raw_mode=True)
            wb.put(_stream_row_key(stream), stream_status(stream, info).SerializeToString())
            self._write_durably(wb)
            with self._mem_lock:
                self._streams[stream] = info
            return info.state

    def ingest(self, stream: StreamKey, batch: IngestBatch | ReceivedBatch) -> StreamState:
        """Make ``batch`` durable and return the stream's new state.

        Raises ``BatchRefused`` (carrying the unchanged state) when the batch
        does not continue the stream (``frontier.apply``) or is malformed: a
        record outside ``(after_seq, through_seq]``, a record that does not
        parse or has no 16-byte stamp, a bad ``stable``/``newest`` stamp.
        Nothing of a refused batch is written.
        """
        outcome = self.ingest_many(stream, [batch])[0]
        if isinstance(outcome, BatchRefused):
            raise outcome
        return outcome

    def ingest_many(self, stream: StreamKey, batches: list[IngestBatch | ReceivedBatch], *,
                    defer: bool = False) -> list[StreamState | BatchRefused]:
        """Group commit: apply consecutive batches of one stream with ONE synced write.

        Each batch is checked against the state the batches before it left
        (so a refused one makes the rest refuse too, as they no longer chain).
        Returns, per batch, its resulting state or the BatchRefused it earned;
        all accepted batches become durable together, or (on an I/O error,
        raised) none does. With ``defer``, a group of ``DEFERRED_WRITE_BYTES``
        or more, or any while deferred ones wait, is held and readable when
        it returns and durable only by a later flush (``durable_seq``).
        The same as ``apply_group(stream, parse_group(...), defer=defer)``.
        """
        return self.apply_group(stream, self.parse_group(stream, batches), defer=defer)

    def parse_group(self, stream: StreamKey, batches: list[IngestBatch | ReceivedBatch]
                    ) -> ParsedGroup:
        """The first half of ``ingest_many``: check and index the batches'
        records and prepare their rows, reading no state and taking no lock.

        Reading nothing a write changes, it may run while an earlier group
        of the same stream is being written: the rows are prepared for the
        common case (every batch accepted, no record held yet) and
        ``apply_group`` checks that case against the state of its moment.
        (The server runs the halves back to back: RocksDB's write holds the
        GIL, so parsing meanwhile measured no faster.)"""
        self._check_open()
        frames_of = [b.frames for b in batches]  # read once: each read of the field copies
        batches = [b.batch if isinstance(b, ReceivedBatch) else b for b in batches]
        parsed: list = []
        for batch, frames in zip(batches, frames_of):
            try:
                parsed.append(_parse_batch(batch, frames, stream.node_id))
            except _ForeignStamp as e:
                self.node_refusals_total += 1
                parsed.append(e)
            except ValueError as e:
                parsed.append(e)
        return ParsedGroup(batches, parsed, _prepared_rows(parsed, self._records_cf))

    def apply_group(self, stream: StreamKey, group: ParsedGroup, *,
                    defer: bool = False) -> list[StreamState | BatchRefused]:
        """The second half of ``ingest_many``: check the parsed batches
        against the stream's state and write the accepted ones with one
        synced write (with ``defer``, one write a later flush makes durable).
        Groups of one stream must be applied in their order."""
        with self._write_lock:
            self._check_writable()
            with self._mem_lock:
                if stream in self._retired:
                    info = self._retired[stream]
                    return [BatchRefused(info.state, f"stream {stream} was retired "
                                         "(nfsj retire); it may not ship again")] * len(group.batches)
                old = self._streams.get(stream) or StreamInfo(StreamState())
            fast = self._apply_prepared(old.state, group)
            if fast is not None:
                state, outcomes, wb = fast
                new_records, new_bytes = group.prepared.count, group.prepared.nbytes
            else:
                state, outcomes, wb, new_records, new_bytes = self._apply_each(old.state, group)
            if new_records == 0 and state == old.state:
                return outcomes  # resends of what is already held: nothing to write
            info = StreamInfo(state, old.records + new_records, time.time_ns())
            records_total = self._records_total + new_records
            bytes_total = self._bytes_total + new_bytes
            wb.put(_stream_row_key(stream), stream_status(stream, info).SerializeToString())
            wb.put(_META_RECORDS, _U64.pack(records_total))
            wb.put(_META_BYTES, _U64.pack(bytes_total))
            if defer and self._sync and (new_bytes >= DEFERRED_WRITE_BYTES or self._deferring()):
                self._write_deferred(wb, new_bytes, stream, old.state.durable_seq)
            else:
                self._write_group(wb, new_bytes, len(group.batches))
            with self._mem_lock:
                self._streams[stream] = info
                self._records_total, self._bytes_total = records_total, bytes_total
            return outcomes

    def _write_group(self, wb: WriteBatch, nbytes: int, batches: int) -> None:
        """Write an ingest group of ``batches`` batches holding ``nbytes``
        bytes of new records, durably unless the store was opened with
        ``sync=False``. Called with the write lock held, so no other write
        lands between a write without the WAL and its flush: when the lock is
        released, every write is durable, in the WAL or in a table file.

        Only a group of several batches skips the WAL: the server groups the
        batches that queued up while it wrote, so it is behind (a backlog
        after a restart, a burst). A shard that keeps up writes each batch
        through the WAL: a flush's table file, its fsyncs and its CPU landed
        in the middle of the NAS's own work on shared hosts (one at a time
        4 KiB writes through the proxy: p50 111-119 -> 133-142 us)."""
        if self._sync and nbytes >= UNLOGGED_WRITE_BYTES and batches >= 2:
            self._write_and_flush(wb)
        else:
            self._write_durably(wb)

    def _write_durably(self, wb: WriteBatch) -> None:
        """Write ``wb`` durably (with the write lock held). Through the WAL,
        unless deferred writes wait: WAL replay after a crash would then bring
        back this write without the ones before it, so all are flushed."""
        if self._deferring():
            self._write_and_flush(wb)
        else:
            self._db.write(wb, self._write_opts)

    def _deferring(self) -> bool:
        """Whether writes wait for a flush, or one is under way (write lock held)."""
        return self._deferred_since is not None or self._flushing

    def _write_deferred(self, wb: WriteBatch, nbytes: int, stream: StreamKey,
                        durable_seq: int) -> None:
        """Write an ingest group of ``stream``, until now durable through
        ``durable_seq``, without the WAL; a later flush makes it durable
        (``flush_due``, ``flush_deferred``). With the write lock held."""
        self._write_unlogged(wb)
        with self._mem_lock:
            self._durable_seqs.setdefault(stream, durable_seq)
        if self._deferred_since is None:
            self._deferred_since = time.monotonic()
        self._deferred_bytes += nbytes

    def _write_and_flush(self, wb: WriteBatch) -> None:
        self._write_unlogged(wb)
        self._flush()

    def _write_unlogged(self, wb: WriteBatch) -> None:
        wb.put(_FLUSH_KEY, b"", self._flusher_cf)  # what the next flush compacts (``_flush``)
        self._db.write(wb, self._unlogged_opts)

    def _flush(self) -> None:
        """Make every write so far durable in table files, all column
        families in one commit (with the write lock held; the one-key
        ``flush`` family must hold a write since the last flush)."""
        self._compact_flush()
        self.flushes_total += 1
        self._deferred_bytes, self._deferred_since = 0, None
        with self._mem_lock:
            self._durable_seqs.clear()

    def _compact_flush(self) -> None:
        try:
            # The records, their index and the stream's state must become
            # durable together, but rocksdict flushes one column family at a
            # time (``Rdict.flush``): a crash between two flushes left records
            # held whose index entries were lost, and a resend skips held
            # records. A manual compaction of a range a memtable holds
            # flushes first, and with ``atomic_flush`` that flush takes every
            # column family in one commit; compacting the one-key family
            # after it costs next to nothing.
            self._flusher.compact_range(_FLUSH_KEY, _FLUSH_KEY, self._flush_opts)
        except Exception as e:  # rocksdict raises a bare Exception for RocksDB errors
            self._failure = (f"shard store {self._path}: a flush failed, so records it holds may "
                             f"not be durable; restart the shard: {e}")
            raise StoreError(self._failure) from None

    def durable_seq(self, stream: StreamKey) -> int:
        """How far ``stream`` is durable here: its position
        (``stream_state``), or less while deferred writes wait for a flush."""
        with self._mem_lock:
            if stream in self._durable_seqs:
                return self._durable_seqs[stream]
            info = self._streams.get(stream) or self._retired.get(stream)
        return info.state.durable_seq if info is not None else 0

    def flush_due(self, now: float) -> bool:
        """Whether deferred writes have waited ``DEFERRED_FLUSH_S`` at ``now``
        (``time.monotonic()``), or ``DEFERRED_FLUSH_BYTES`` of them: the
        caller then runs ``flush_deferred``."""
        since = self._deferred_since
        return since is not None and (now - since >= DEFERRED_FLUSH_S
                                      or self._deferred_bytes >= DEFERRED_FLUSH_BYTES)

    def flush_deferred(self, stream: StreamKey | None = None) -> bool:
        """Make the deferred writes so far durable (blocking: run it off the
        event loop); False if none waited (with ``stream``: none of that
        stream's, so a quiet stream does not flush a busy one's). Ingest
        goes on meanwhile: its writes wait for the next flush (RocksDB
        switches every column family's memtable at once, between two writes)."""
        with self._flush_lock:
            with self._write_lock:
                if self._deferred_since is None or self._closed:
                    return False
                if stream is not None and stream not in self._durable_seqs:
                    return False
                self._check_writable()
                with self._mem_lock:  # how far this flush makes each stream durable
                    covered = {k: self._streams[k].state.durable_seq for k in self._durable_seqs
                               if k in self._streams}
                self._deferred_bytes, self._deferred_since = 0, None
                self._flushing = True
            try:
                self._compact_flush()
            finally:
                with self._write_lock:
                    self._flushing = False
            with self._write_lock, self._mem_lock:
                self.flushes_total += 1
                for key, seq in covered.items():
                    if key not in self._durable_seqs:
                        continue  # a flush under the write lock came since and took all
                    if self._streams[key].state.durable_seq == seq:
                        del self._durable_seqs[key]  # nothing written since
                    else:
                        self._durable_seqs[key] = max(self._durable_seqs[key], seq)
            return True

    def _check_writable(self) -> None:
        self._check_open()
        if self._failure is not None:
            raise StoreError(self._failure)

    def _apply_prepared(self, state: StreamState, group: ParsedGroup):
        """``(state, outcomes, write batch)`` when every batch chains on and
        none of its records is held yet, so the rows ``parse_group`` prepared
        are exactly what to write; else None (``_apply_each`` decides batch
        by batch)."""
        prepared = group.prepared
        if prepared is None:
            return None
        outcomes = []
        for batch, (_, stable, newest, markers) in zip(group.batches, group.parsed):
            try:
                state = apply(state, batch.after_seq, batch.through_seq, stable, gap=batch.gap,
                              newest=newest, markers=markers, sent=_sent_stamp(batch))
            except BatchRefused:
                return None
            outcomes.append(state)
        keys = prepared.keys
        for i in range(0, len(keys), _MULTIGET_CHUNK):
            if any(have is not None for have in self._records.get(keys[i:i + _MULTIGET_CHUNK])):
                return None  # a resend of what is held: compare it row by row
        return state, outcomes, prepared.batch

    def _apply_each(self, state: StreamState, group: ParsedGroup):
        """``(state, outcomes, write batch, records, bytes)``, batch by batch:
        a batch that does not chain on, or holds a record already held with
        other bytes, is refused; records already held are not written again."""
        wb = WriteBatch(raw_mode=True)
        written: dict[bytes, bytes] = {}
        outcomes: list[StreamState | BatchRefused] = []
        new_records = new_bytes = 0
        for batch, item in zip(group.batches, group.parsed):
            if isinstance(item, ValueError):
                outcomes.append(BatchRefused(state, f"malformed batch: {item}"))
                continue
            rows, stable, newest, markers = item
            try:
                new_state = apply(state, batch.after_seq, batch.through_seq, stable,
                                  gap=batch.gap, newest=newest, markers=markers,
                                  sent=_sent_stamp(batch))
            except BatchRefused as refused:
                outcomes.append(refused)
                continue
            try:
                n, nbytes = self._put_new(wb, rows, written)
            except _Conflict as e:
                self.conflicts_total += 1
                outcomes.append(BatchRefused(state, str(e)))
                continue
            state = new_state
            new_records += n
            new_bytes += nbytes
            outcomes.append(state)
        return state, outcomes, wb, new_records, new_bytes

    def _put_new(self, wb: WriteBatch, rows, written: dict[bytes, bytes]) -> tuple[int, int]:
        """Add the records (and index entries) not yet held to `wb`; returns
        (count, bytes). Raises ``_Conflict`` (adding nothing) when a stamp is
        already held, or written earlier in this group, with other bytes."""
        keys = [_RECORD + stamp for stamp in rows]
        present: list = []
        for i in range(0, len(keys), _MULTIGET_CHUNK):
            present.extend(self._records.get(keys[i:i + _MULTIGET_CHUNK]))
        for key, row, have in zip(keys, rows.values(), present):
            held = have if have is not None else written.get(key)
            if held is not None and held != row.value:
                raise _Conflict(f"a record under stamp {Stamp.from_bytes(key[len(_RECORD):])} is "
                                "already held with different contents; refusing the batch")
        new = {}
        for key, (stamp, row), have in zip(keys, rows.items(), present):
            if have is None and key not in written:
                written[key] = row.value
                new[stamp] = row
        return _put_rows(wb, new, self._records_cf, held=self._db.get)

    # -- reading ---------------------------------------------------------------

    def records(self, lo: Stamp | None = None, hi: Stamp | None = None) -> Iterator[Record]:
        """Records with ``lo < stamp <= hi``, in stamp order (``None``: unbounded).

        Reads one RocksDB snapshot (taken at the first ``next()``).
        """
        self._check_open()
        for _, value in self._scan(_after(_RECORD, lo), _through(_RECORD, hi), self._records):
            yield Record.FromString(value)

    def op_records(self, ops: Iterable[int], lo: Stamp | None = None,
                   hi: Stamp | None = None) -> Iterator[Record]:
        """Records of ``ops`` (every op when empty) with ``lo < stamp <= hi``, in
        stamp order, without their data, from the operation index alone."""
        for value in self.op_values(ops, lo, hi, with_data=False):
            yield Record.FromString(value)

    def op_values(self, ops: Iterable[int], lo: Stamp | None = None, hi: Stamp | None = None, *,
                  with_data: bool) -> Iterator[bytes]:
        """``op_records`` serialized, as stored: without data from the operation
        index; ``with_data``, the records as shipped (every op: one range of
        ``r/``; some: the index's stamps, then the records by key)."""
        self._check_open()
        ops = sorted(set(ops))
        if with_data and not ops:
            for _, value in self._scan(_after(_RECORD, lo), _through(_RECORD, hi), self._records):
                yield value
            return
        scans = [self._op_scan(op, lo, hi) for op in ops or _ALL_OPS]
        merged = heapq.merge(*scans) if len(scans) > 1 else scans[0]
        try:
            if not with_data:
                for _, value in merged:
                    yield value
                return
            keys: list[bytes] = []
            for stamp, _ in merged:
                keys.append(_RECORD + stamp)
                if len(keys) == _MULTIGET_CHUNK:
                    yield from (v for v in self._records.get(keys) if v is not None)
                    keys = []
            if keys:
                yield from (v for v in self._records.get(keys) if v is not None)
        finally:
            for scan in scans:
                scan.close()

    def _op_scan(self, op: int, lo: Stamp | None, hi: Stamp | None) -> Iterator[tuple[bytes, bytes]]:
        """(stamp, record without data) of one op, in stamp order."""
        prefix = _op_prefix(op)
        skip = len(prefix)
        for key, value in self._scan(_after(prefix, lo), _through(prefix, hi)):
            yield key[skip:], value

    def file_records(self, fh: bytes, hi: Stamp | None = None, *,
                     lo: Stamp | None = None) -> Iterator[Record]:
        """Every record naming ``fh`` (as fh, dir_fh, to_dir_fh or object_fh)
        with ``lo < stamp <= hi``, in stamp order, through the per-file index."""
        for record, _ in self.file_record_values(fh, hi, lo=lo):
            yield record

    def file_record_values(self, fh: bytes, hi: Stamp | None = None, *,
                           lo: Stamp | None = None) -> Iterator[tuple[Record, bytes]]:
        """``file_records``, each with its bytes as stored (to send on unchanged)."""
        self._check_open()
        if not fh:
            raise ValueError("file_records needs a non-empty file handle")
        keys: list[bytes] = []
        for stamp in self._file_stamps(fh, lo, hi):
            keys.append(_RECORD + stamp)
            if len(keys) == _MULTIGET_CHUNK:
                yield from self._fetch_naming(keys, fh)
                keys = []
        if keys:
            yield from self._fetch_naming(keys, fh)

    def files_record_values(self, fhs: Iterable[bytes], hi: Stamp | None = None, *,
                            lo: Stamp | None = None) -> Iterator[bytes]:
        """Every record naming any of ``fhs`` with ``lo < stamp <= hi``, each once,
        in stamp order, as stored, through the per-file index. Not parsed here:
        a record found through another handle's colliding ``fh_key`` may be
        among them (the reader matches handles on the records themselves)."""
        self._check_open()
        stamps: set[bytes] = set()
        for fh in set(fhs):
            stamps.update(self._file_stamps(fh, lo, hi))
        keys = [_RECORD + stamp for stamp in sorted(stamps)]
        for i in range(0, len(keys), _MULTIGET_CHUNK):
            yield from (v for v in self._records.get(keys[i:i + _MULTIGET_CHUNK]) if v is not None)

    def _file_stamps(self, fh: bytes, lo: Stamp | None, hi: Stamp | None) -> Iterator[bytes]:
        """The stamps under ``fh``'s per-file index entries with ``lo < stamp
        <= hi``, in order, each once. Entries are ordered by their least
        stamp and may overlap, so a stamp is let out once no later entry can
        hold a smaller one: when the next entry starts above it."""
        prefix = _FILE + fh_key(fh) + b"/"
        skip = len(prefix)
        above = b"" if lo is None else lo.to_bytes()
        through = None if hi is None else hi.to_bytes()
        entries = ((key[skip:], value)
                   for key, value in self._scan(_entries_from(prefix, lo), _through(prefix, hi)))
        pending: list[bytes] = []  # a heap
        last = b""
        for least, value in itertools.chain(entries, [(_ABOVE_EVERY_STAMP, b"")]):
            while pending and pending[0] < least:
                stamp = heapq.heappop(pending)
                if stamp != last:
                    yield stamp
                    last = stamp
            if least is _ABOVE_EVERY_STAMP:
                break
            for stamp in _entry_stamps(least, value):
                if stamp > above and (through is None or stamp <= through):
                    heapq.heappush(pending, stamp)

    def _fetch_naming(self, keys: list[bytes], fh: bytes) -> Iterator[tuple[Record, bytes]]:
        for value in self._records.get(keys):
            if value is None:  # an index entry is written with its record; never expected
                continue
            record = Record.FromString(value)
            if fh in _handles(record):  # an fh_key collision names another file
                yield record, value

    def _scan(self, start: bytes, end: bytes, db: Rdict | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Keys and values in ``[start, end)`` of ``db`` (the default column
        family when None)."""
        read_opts = ReadOptions()
        read_opts.set_iterate_upper_bound(end)
        it = (self._db if db is None else db).iter(read_opts)
        try:
            it.seek(start)
            while it.valid():
                yield it.key(), it.value()
                it.next()
            it.status()  # raises if the iteration stopped on an error, not at the end
        finally:
            # An open iterator keeps RocksDB open (and its LOCK held) after close().
            del it

    # -- lifecycle ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"shard store {self._path} is closed")

    def close(self) -> None:
        """Close the store; idempotent. Finish or drop every iterator from
        ``records``/``file_records`` first: a live one keeps RocksDB open."""
        with self._flush_lock, self._write_lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._deferred_since is not None and self._failure is None:
                    self._flush()  # what a restart would otherwise ask the shipper to resend
            finally:
                self._close_db()

    def _close_db(self) -> None:
        # The column family's view and handle keep RocksDB open (and its LOCK
        # held) until they are gone.
        for view in (self._records, self._flusher):
            if view is not None:
                view.close()
        self._records = self._records_cf = self._flusher = self._flusher_cf = None
        self._db.close()

    def __enter__(self) -> ShardStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShardStore({self._path!r}, shard_id={self._shard_id})"


def _handles(record: Record) -> set[bytes]:
    return {h for h in (record.fh, record.dir_fh, record.to_dir_fh, record.object_fh) if h}


class _ForeignStamp(ValueError):
    """A record stamped by another node than its stream's proxy."""


def _one(key: bytes, value: bytes) -> WriteBatch:
    wb = WriteBatch(raw_mode=True)
    wb.put(key, value)
    return wb


def shipped_size(batch: IngestBatch | ReceivedBatch) -> tuple[int, int]:
    """(records, bytes of serialized records) a batch carries, as frames or as records."""
    if isinstance(batch, ReceivedBatch):
        batch, frames = batch.batch, batch.frames
    else:
        frames = batch.frames
    if frames:
        return frames_size(frames)
    return len(batch.records), sum(len(r.record) for r in batch.records)


def _sent_stamp(batch: IngestBatch) -> Stamp | None:
    try:
        return Stamp.from_bytes(batch.sent_stamp) if batch.sent_stamp else None
    except ValueError:
        return None


class PreparedRows(NamedTuple):
    """A group's rows in a write batch, for when every batch is accepted and
    no record is held yet (``ShardStore.parse_group``)."""

    batch: WriteBatch
    keys: list[bytes]   # the records' keys, to check that none is held
    count: int
    nbytes: int


class ParsedGroup(NamedTuple):
    """Batches of one stream, parsed (``ShardStore.parse_group``): per batch,
    its index or the ValueError that refuses it; ``prepared`` is None when
    some batch is malformed or two batches share a stamp."""

    batches: list[IngestBatch]
    parsed: list
    prepared: PreparedRows | None


def _prepared_rows(parsed: list, records_cf: ColumnFamily) -> PreparedRows | None:
    rows: dict[bytes, _Row] = {}
    for item in parsed:
        if isinstance(item, ValueError):
            return None
        batch_rows = item[0]
        before = len(rows)
        rows.update(batch_rows)
        if len(rows) != before + len(batch_rows):
            return None  # a stamp in two batches: ``_put_new`` compares their bytes
    wb = WriteBatch(raw_mode=True)
    count, nbytes = _put_rows(wb, rows, records_cf)
    return PreparedRows(wb, [_RECORD + stamp for stamp in rows], count, nbytes)


def _put_rows(wb: WriteBatch, rows: dict[bytes, _Row], records_cf: ColumnFamily,
              held: Callable[[list[bytes]], list[bytes | None]] | None = None) -> tuple[int, int]:
    """Put each record (into ``records_cf``), its operation index entry, and
    the per-file index entries of them all into ``wb``; (count, bytes).

    With ``held`` (a multi-get), a per-file entry that exists under the same
    key is merged in rather than overwritten: a resend into a store that lost
    a record but kept the entry its stamp keys would otherwise drop the
    entry's other stamps from the index. Resends take this path
    (``_put_new``); a group none of whose records is held does not look."""
    nbytes = 0
    by_file: dict[bytes, list[bytes]] = {}  # a group's records mostly name a few files
    for stamp, row in rows.items():
        wb.put(_RECORD + stamp, row.value, records_cf)
        for fh in row.handles:
            stamps = by_file.get(fh)
            if stamps is None:
                by_file[fh] = [stamp]
            else:
                stamps.append(stamp)
        wb.put((_OP_PREFIXES.get(row.op) or _op_prefix(row.op)) + stamp, row.meta)
        nbytes += len(row.value)
    by_key: dict[bytes, list[bytes]] = {}  # two handles may share an fh_key
    for fh, stamps in by_file.items():
        prefix = _FILE + fh_key(fh) + b"/"
        if prefix in by_key:
            by_key[prefix] = list(set(by_key[prefix]).union(stamps))  # _file_entries sorts
        else:
            by_key[prefix] = stamps
    entries = [(prefix, entry) for prefix, stamps in by_key.items()
               for entry in _file_entries(stamps)]
    if held is not None:
        entries = _merge_held(entries, held)
    for prefix, entry in entries:
        wb.put(prefix + entry[0], b"".join(entry) if len(entry) > 1 else b"")
    return len(rows), nbytes


def _merge_held(entries: list[tuple[bytes, list[bytes]]],
                held: Callable[[list[bytes]], list[bytes | None]]
                ) -> list[tuple[bytes, list[bytes]]]:
    """``entries`` with the stamps of entries already stored under their keys
    merged in (and cut again)."""
    values = held([prefix + entry[0] for prefix, entry in entries])
    out = []
    for (prefix, entry), value in zip(entries, values):
        if value is None:
            out.append((prefix, entry))
            continue
        merged = set(entry).union(_entry_stamps(entry[0], value))
        out.extend((prefix, piece) for piece in _file_entries(list(merged)))
    return out


def _file_entries(stamps: list[bytes]) -> Iterator[list[bytes]]:
    """``stamps`` (distinct) sorted and cut into per-file index entries: each
    within ``FILE_ENTRY_SPAN_NS`` of its first, and of at most
    ``_FILE_ENTRY_STAMPS``."""
    stamps = sorted(stamps)
    start = 0
    while start < len(stamps):
        limit = _wall(stamps[start]) + FILE_ENTRY_SPAN_NS
        end = min(start + _FILE_ENTRY_STAMPS, len(stamps))
        if _wall(stamps[end - 1]) > limit:
            end = next(i for i in range(start + 1, end) if _wall(stamps[i]) > limit)
        yield stamps[start:end]
        start = end


def _wall(stamp: bytes) -> int:
    return _U64.unpack_from(stamp)[0]


def _entry_stamps(least: bytes, value: bytes) -> list[bytes]:
    """The stamps of one per-file index entry (key stamp ``least``)."""
    if not value:
        return [least]
    return [value[i:i + _STAMP_BYTES] for i in range(0, len(value), _STAMP_BYTES)]


def _entries_from(prefix: bytes, lo: Stamp | None) -> bytes:
    """Where a scan of a per-file index for stamps above ``lo`` starts: at
    the entries whose least stamp lies within ``FILE_ENTRY_SPAN_NS`` before it."""
    if lo is None or lo.wall_ns < FILE_ENTRY_SPAN_NS:
        return prefix
    return prefix + Stamp(lo.wall_ns - FILE_ENTRY_SPAN_NS, 0, 0).to_bytes()


def _parse_batch(batch: IngestBatch, frames: bytes | memoryview, node_id: int
                 ) -> tuple[dict[bytes, _Row], Stamp | None, Stamp | None,
                            tuple[GapMarker, ...]]:
    """Check a batch of stream node ``node_id`` (its frames given apart:
    ``ReceivedBatch``), index its records by stamp and pick out its gap
    markers; raises ValueError naming the fault.

    Runs once per record at the ingest rate: fields are read once into
    locals and a Stamp is built only for what needs one (errors, gaps)."""
    stable = Stamp.from_bytes(batch.stable) if batch.stable else None
    newest = Stamp.from_bytes(batch.newest) if batch.newest else None
    rows: dict[bytes, _Row] = {}
    markers: list[GapMarker] = []
    if frames:
        if batch.records:
            raise ValueError("a batch carries its records as frames or as ShippedRecords, "
                             "not both")
        _parse_frames(batch, frames, node_id, rows, markers)
    else:
        _parse_shipped_records(batch, node_id, rows, markers)
    return rows, stable, newest, tuple(markers)


def _parse_frames(batch: IngestBatch, frames: bytes | memoryview, node_id: int,
                  rows: dict[bytes, _Row], markers: list[GapMarker]) -> None:
    """Index the records of ``batch.frames`` (``logstore.shipped``) into ``rows``.

    The native indexer (``_dataplane.index_shipped_frames``) checks and
    splits a batch as ``_parse_frames_here`` does, several times faster;
    on anything unusual it gives up and this module's own walk decides, so
    the faults it names and the batches it accepts are this module's."""
    indexed = index_shipped_frames(frames, batch.after_seq, batch.through_seq, node_id)
    if indexed is None:
        _parse_frames_here(batch, frames, node_id, rows, markers)
        return
    for seq, key, raw, head_len, op, handles, gap in indexed:
        held = rows.get(key)
        if held is not None:
            if held.value != raw:
                raise ValueError(f"two different records under stamp {Stamp.from_bytes(key)} in "
                                 "one batch")
            continue
        rows[key] = _Row(raw, handles, op, raw[:head_len])
        if gap is not None:
            markers.append(GapMarker(seq, Stamp.from_bytes(key), gap[0] or "unknown", gap[1]))


def _parse_frames_here(batch: IngestBatch, frames: bytes | memoryview, node_id: int,
                       rows: dict[bytes, _Row], markers: list[GapMarker]) -> None:
    """``_parse_frames`` in Python: the reference the native indexer follows.

    Each frame's CRC is checked (it covers seq, stamp and record, as the
    proxy's LOG wrote them); the record is split at its data field
    (``split_data``) so only the part before it is parsed, and the stamp in
    the record must be the frame's."""
    after, through = batch.after_seq, batch.through_seq
    node = _U32.pack(node_id)
    for seq, key, start, end in iter_frames(frames, after):
        if seq > through:
            raise ValueError(f"record seq {seq} lies outside ({after}, {through}]")
        raw = bytes(frames[start:end])  # RocksDB's raw mode takes bytes: the one copy
        split = split_data(raw)
        if split is None:
            try:
                record = Record.FromString(raw)
            except Exception as e:  # google.protobuf.message.DecodeError
                raise ValueError(f"record at seq {seq} does not parse: {e}") from None
            meta = _without_data(record, raw)
        else:
            record, meta = split
        if key == _NO_STAMP:  # a frame made for a record of a version 1 segment
            key = record.stamp
            if len(key) != _STAMP_BYTES:
                raise ValueError(f"record at seq {seq} has a {len(key)}-byte stamp, "
                                 f"not {_STAMP_BYTES}")
        elif record.stamp != key:
            raise ValueError(f"record at seq {seq}: the stamp in its frame header is not the "
                             "stamp in its bytes")
        _add_row(rows, markers, node, node_id, seq, key, raw, record, meta)


def _add_row(rows: dict[bytes, _Row], markers: list[GapMarker], node: bytes, node_id: int,
             seq: int, key: bytes, raw: bytes, record: Record, meta: bytes) -> None:
    if key[12:] != node:
        stamp = Stamp.from_bytes(key)
        raise _ForeignStamp(f"record at seq {seq} is stamped {stamp} by node "
                            f"{stamp.node_id}, not by this stream's node {node_id}")
    held = rows.get(key)
    op = record.op
    if held is not None:
        if held.value != raw:
            raise ValueError(f"two different records under stamp {Stamp.from_bytes(key)} in "
                             "one batch")
    else:
        rows[key] = _Row(raw, _handles(record), op, meta)
    if op == _GAP:
        markers.append(GapMarker(seq, Stamp.from_bytes(key), record.gap_cause or "unknown",
                                 record.gap_reason))


def _parse_shipped_records(batch: IngestBatch, node_id: int, rows: dict[bytes, _Row],
                           markers: list[GapMarker]) -> None:
    """Index the records of ``batch.records`` (older shippers' form) into ``rows``."""
    after, through = batch.after_seq, batch.through_seq
    node = _U32.pack(node_id)
    for shipped in batch.records:
        seq = shipped.seq
        if not after < seq <= through:
            raise ValueError(f"record seq {seq} lies outside ({after}, {through}]")
        raw = shipped.record
        if shipped.data_at:
            record, meta = _split_record(shipped, raw)
        else:
            try:
                record = Record.FromString(raw)
            except Exception as e:  # google.protobuf.message.DecodeError
                raise ValueError(f"record at seq {seq} does not parse: {e}") from None
            meta = None
        key = record.stamp
        if len(key) != _STAMP_BYTES:
            raise ValueError(f"record at seq {seq} has a {len(key)}-byte stamp, "
                             f"not {_STAMP_BYTES}")
        if meta is None:
            meta = _without_data(record, raw)
        _add_row(rows, markers, node, node_id, seq, key, raw, record, meta)


def _split_record(shipped, raw: bytes) -> tuple[Record, bytes]:
    """(the record without its data, its bytes) from the shipper's split point
    ``data_at``; raises ValueError when the side fields disagree with ``raw``.

    Only the head is parsed, so the data is neither copied nor re-serialized.
    Nothing the side fields say is taken on trust: the tail must be exactly
    one data field, the head must parse (a cut inside a field truncates it)
    and hold no data, and its stamp must be ``stamp``. Then ``raw`` parses
    as the head plus that data (protobuf merges fields), so the handles and
    op read from the head are the record's own.
    """
    at = shipped.data_at
    if len(shipped.stamp) != _STAMP_BYTES:
        raise ValueError(f"record at seq {shipped.seq} has a {len(shipped.stamp)}-byte side "
                         f"stamp, not {_STAMP_BYTES}")
    if at > len(raw) or not is_data_tail(raw, at):
        raise ValueError(f"record at seq {shipped.seq}: its bytes from data_at {at} on are not "
                         "one data field")
    meta = raw[:at]
    try:
        record = Record.FromString(meta)
    except Exception as e:  # google.protobuf.message.DecodeError
        raise ValueError(f"record at seq {shipped.seq}: its bytes before data_at {at} do not "
                         f"parse: {e}") from None
    if record.data:
        raise ValueError(f"record at seq {shipped.seq} holds data before data_at {at}")
    if record.stamp != shipped.stamp:
        raise ValueError(f"record at seq {shipped.seq}: its side stamp is not the stamp in its "
                         "bytes")
    return record, meta


def _check_data_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise StoreError(f"shard data path {path} is not a directory")
    if os.path.isdir(path) and os.listdir(path) and not os.path.exists(os.path.join(path, "CURRENT")):
        raise StoreError(f"{path} is not empty and holds no shard store; "
                         "give an empty or new directory")
