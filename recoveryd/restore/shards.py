"""The shards fan-out and merge: gRPC channels to every recovery shard, each
call asked of all of them at once, their record streams merged in stamp order.

Every shard's Restore service (proto/journal.proto, recoveryd/restore_service.py)
answers for the records it holds; a namespace record lies on the shard of its
directory, a file's data on the shard of its handle, and the baseline markers
on every shard. Merging by stamp (``heapq.merge``) gives one stream in stamp
order; equal stamps are one record (a marker every shard holds).
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from typing import Callable, Iterator, Sequence

import grpc

from logstore.pb import journal_pb2_grpc
from logstore.pb.journal_pb2 import (BaselineInfo, BulkRequest, FileRequest, FilesRequest, Record,
                                     ScanRequest, ShardStatusRequest)
from logstore.record import record_and_data

from ..security import RESTORE_SERVICE, BearerToken, TlsOptions, client_ssl_context, open_channel
from ..status import ShardReport
from .bulk_stream import BulkUnavailable, open_stream
from .errors import RestoreRefused, ShardError, ShardRefusedClient

__all__ = ["Shards", "RecordData", "STATUS_TIMEOUT_S", "BASELINES_TIMEOUT_S", "MAX_MESSAGE_BYTES",
           "BULK_RETRY_S"]

logger = logging.getLogger(__name__)

#: A record parsed without its data, and its data (a view of the message it came in).
RecordData = tuple[Record, "bytes | memoryview"]

STATUS_TIMEOUT_S = 5.0
#: OpenBulk is a lookup and a ticket; past this the data is read through gRPC.
BULK_OPEN_TIMEOUT_S = 30.0
#: A bulk port that failed for a reason that may pass (busy, unreachable) is tried again after this.
BULK_RETRY_S = 60.0
BASELINES_TIMEOUT_S = 60.0
MAX_MESSAGE_BYTES = 512 << 20


class Shards:
    """gRPC channels to every recovery shard, in the proxy's ``--shard`` order.

    ``credentials``: ``grpc.ChannelCredentials`` for TLS/mTLS (None: plain
    text, for private networks). ``token``: a bearer token sent with every
    call, for shards that want one to restore (recoveryd/security.py). Close
    it (or use it as a context manager).

    Reads with data go to each shard's bulk port (``bulk_stream``) when it
    serves one and it can be reached; else, and with ``bulk`` False,
    through gRPC. Over TLS the bulk port is verified as the channel is,
    which needs the files behind ``credentials``: ``tls``. Given
    ``credentials`` without ``tls``, reads stay on gRPC.
    """

    def __init__(self, addresses: Sequence[str], *, credentials: grpc.ChannelCredentials | None = None,
                 token: BearerToken | None = None,
                 status_timeout_s: float = STATUS_TIMEOUT_S, tls: TlsOptions | None = None,
                 bulk: bool = True) -> None:
        self.addresses = list(addresses)
        if not self.addresses:
            raise RestoreRefused("no shards given: name every recovery shard (--shard HOST:PORT, "
                                 "once per shard, in the same order as the proxy's --shard)")
        self.status_timeout_s = status_timeout_s
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        self._channels: list[grpc.Channel] = []
        for address in self.addresses:
            try:
                channel = open_channel(address, credentials=credentials, token=token, options=options)
            except Exception as e:  # noqa: BLE001  a target grpc cannot parse
                self.close()
                raise ShardError(f"shard {len(self._channels)} ({address}): cannot connect: {e}") from None
            self._channels.append(channel)
        self._restore = [journal_pb2_grpc.RestoreStub(c) for c in self._channels]
        # The chunk streams unparsed: their records are cut out of the message
        # in place (``_records_in``), not copied into a RecordChunk first.
        self._raw = [{name: c.unary_stream(f"/{RESTORE_SERVICE}/{name}",
                                           request_serializer=kind.SerializeToString,
                                           response_deserializer=None)
                      for name, kind in _CHUNKED.items()} for c in self._channels]
        self._journal = [journal_pb2_grpc.JournalStub(c) for c in self._channels]
        self._unimplemented: set[tuple[int, str]] = set()   # (shard, chunked method it lacks)
        self._bulk_tls = client_ssl_context(tls) if tls is not None else None
        self._bulk = bulk
        self._secure = credentials is not None
        self._no_bulk: dict[int, str] = {}   # shard -> why it is read through gRPC
        self._bulk_retry_at: dict[int, float] = {}   # ... until then (absent: for good)
        self._warned_bulk: set[int] = set()
        if credentials is not None and self._bulk_tls is None:
            self._no_bulk = dict.fromkeys(range(len(self.addresses)),
                                          "its TLS files were not given for the bulk port")

    def __len__(self) -> int:
        return len(self.addresses)

    def name(self, k: int) -> str:
        return f"shard {k} ({self.addresses[k]})"

    def _error(self, k: int, e: grpc.RpcError, doing: str) -> ShardError:
        code = e.code() if hasattr(e, "code") else None
        details = (e.details() if hasattr(e, "details") else "") or ""
        details = details.splitlines()[0] if details else ""
        if code is grpc.StatusCode.UNAVAILABLE:
            why = _unavailable(details)
        elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
            why = "did not answer in time"
        elif code is grpc.StatusCode.UNIMPLEMENTED:
            why = "does not serve the Restore API (an older recoveryd?)"
        elif code is grpc.StatusCode.UNAUTHENTICATED:
            why = "refused the call"
        else:
            why = f"failed: {code.name if code else 'error'}"
        refused = code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
        return (ShardRefusedClient if refused else ShardError)(
            f"{self.name(k)} {why} while {doing}" + (f": {details}" if details else ""))

    def status(self) -> list[ShardReport]:
        """Every shard's ``Journal.Status``, asked at once; a shard that fails is
        reported down (``ShardReport.error``), never raised."""
        futures = [stub.Status.future(ShardStatusRequest(), timeout=self.status_timeout_s)
                   for stub in self._journal]
        reports = []
        for k, future in enumerate(futures):
            try:
                reports.append(ShardReport(self.addresses[k], future.result()))
            except grpc.RpcError as e:
                reports.append(ShardReport(self.addresses[k], None, str(self._error(k, e, "asked for its status"))))
        return reports

    def baselines(self) -> list[list[BaselineInfo]]:
        """Every shard's baselines; raises ShardError naming a shard that fails."""
        futures = [stub.Baselines.future(ShardStatusRequest(), timeout=BASELINES_TIMEOUT_S)
                   for stub in self._restore]
        out = []
        for k, future in enumerate(futures):
            try:
                out.append(list(future.result().baselines))
            except grpc.RpcError as e:
                raise self._error(k, e, "listing baselines") from None
        return out

    def scan(self, request: ScanRequest, *, prefetch: int = 0) -> Iterator[Record]:
        """Every shard's Scan merged in stamp order, equal stamps once.

        Asked as ``ScanChunks`` (many records to a message, as the shard
        stores them); a shard that predates it is asked ``Scan``. With
        ``prefetch``, each shard's stream is read by its own thread, up to
        that many records ahead of the caller, so that every shard keeps
        sending while the caller works on what came."""
        return _merge(self._scans(request, prefetch, apart=False))

    def scan_apart(self, request: ScanRequest, *, prefetch: int = 0) -> Iterator[RecordData]:
        """``scan``, each record with its data apart: ``(record, data)``, the
        record parsed without its data and the data a view of the message it
        came in (``logstore.record.record_and_data``): a bulk reader's bytes
        are not copied on their way to the file."""
        return _merge(self._scans(request, prefetch, apart=True), key=_first_stamp)

    def _scans(self, request: ScanRequest, prefetch: int, *, apart: bool) -> list[Iterator]:
        streams = [self._chunked(k, "ScanChunks", "Scan", request, "scanning records", apart=apart)
                   for k in range(len(self))]
        return [_ahead(s, prefetch) for s in streams] if prefetch else streams

    def file_records(self, request: FileRequest) -> Iterator[Record]:
        """Every shard's FileRecords merged in stamp order, equal stamps once.

        Asked as ``FileRecordChunks`` (many records to a message); a shard
        that predates it is asked ``FileRecords``, one message per record."""
        return _merge([self._chunked(k, "FileRecordChunks", "FileRecords", request,
                                     "reading a file's records") for k in range(len(self))])

    def files_records(self, request: FilesRequest, *, prefetch: int = 0,
                      apart: bool = False) -> Iterator[Record] | Iterator[RecordData]:
        """Every shard's records naming any of ``request.fhs``, merged in stamp
        order, each once (``FilesRecordChunks``). A shard that predates it is
        asked ``FileRecords`` file by file; records then come in stamp order
        per file, not over all of them, each with its own file as ``fh``.
        ``apart``: ``(record, data)`` pairs, as ``scan_apart`` gives."""
        streams = [self._files_stream(k, request, apart) for k in range(len(self))]
        if prefetch:
            streams = [_ahead(s, prefetch) for s in streams]
        return _merge(streams, key=_first_stamp if apart else _stamp)

    def _files_stream(self, k: int, request: FilesRequest, apart: bool) -> Iterator:
        if (k, "FilesRecordChunks") not in self._unimplemented:
            stream = self._chunked(k, "FilesRecordChunks", "", request, "reading files' records",
                                   apart=apart)
            try:
                yield from stream
                return
            except _Unimplemented:
                pass
            finally:
                stream.close()
        for fh in request.fhs:
            one = FileRequest(fh=fh, after=request.after, until=request.until, with_data=request.with_data)
            doing = "reading a file's records"
            for item in self._chunked(k, "FileRecordChunks", "FileRecords", one, doing, apart=apart):
                if (item[0] if apart else item).fh == fh:
                    yield item

    def _chunked(self, k: int, chunked: str, plain: str, request, doing: str, *,
                 apart: bool = False) -> Iterator:
        parse = record_and_data if apart else _record
        chunks = self._open_bulk(k, chunked, request, doing)
        if chunks is not None:
            try:
                for chunk in chunks:
                    yield from _records_in(chunk, self.name(k), parse)
            finally:
                chunks.close()
            return
        stub = self._restore[k]
        if (k, chunked) in self._unimplemented:
            yield from _plain(self._stream(k, getattr(stub, plain), request, doing), apart)
            return
        call = self._raw[k][chunked](request)
        try:
            for chunk in call:
                yield from _records_in(chunk, self.name(k), parse)
        except grpc.RpcError as e:
            if e.code() is not grpc.StatusCode.UNIMPLEMENTED:
                raise self._error(k, e, doing) from None
            self._unimplemented.add((k, chunked))  # an older recoveryd: it failed before sending anything
            if not plain:
                raise _Unimplemented() from None
            yield from _plain(self._stream(k, getattr(stub, plain), request, doing), apart)
        finally:
            call.cancel()

    def probe_bulk(self, k: int) -> str | None:
        """Whether shard ``k``'s bulk port serves this client: "" when a stream
        (of no records) came through it in full, else why reads with data
        from that shard would go through gRPC; None when the shard refuses
        this client's credentials (it may not restore at all). Warns of nothing."""
        nothing = ScanRequest(until=bytes(16), with_data=True)   # no record is stamped at zero
        try:
            chunks = self._open_bulk(k, "ScanChunks", nothing, "probing its bulk port", warn=False)
            if chunks is None:
                return self._no_bulk.get(k) or "this client reads it through gRPC"
            try:
                for _ in chunks:
                    pass
            finally:
                chunks.close()
        except ShardRefusedClient:
            return None
        except ShardError as e:
            return str(e)
        return ""

    def _open_bulk(self, k: int, chunked: str, request, doing: str, *,
                   warn: bool = True) -> Iterator[bytes] | None:
        """The D frames of shard ``k``'s bulk stream for ``request``, or None:
        read it through gRPC (no data asked for, no bulk port, not reachable)."""
        which = _BULK_KINDS.get(chunked)
        if which is None or not request.with_data or not self._bulk or self._bulk_off(k):
            return None
        try:
            ticket = self._restore[k].OpenBulk(BulkRequest(**{which: request}),
                                               timeout=BULK_OPEN_TIMEOUT_S)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.FAILED_PRECONDITION):
                self._no_bulk[k] = "it serves no bulk port"
                return None
            if e.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                self._bulk_later(k, "it did not hand out a bulk ticket in time", warn)
                return None
            raise self._error(k, e, doing) from None
        if self._secure and not ticket.tls:
            # Over TLS, never in clear: a shard behind something that ends
            # TLS in front of it says so truthfully.
            self._no_bulk[k] = "its bulk port speaks no TLS, and its gRPC channel does"
            return None
        if ticket.tls and self._bulk_tls is None:
            self._no_bulk[k] = "its bulk port speaks TLS and this client has no TLS files for it"
            return None
        try:
            return open_stream(_host(self.addresses[k]), ticket.port, ticket.ticket, self.name(k),
                               tls=self._bulk_tls if ticket.tls else None)
        except BulkUnavailable as e:
            self._bulk_later(k, str(e), warn)
            return None

    def _bulk_off(self, k: int) -> bool:
        """Shard ``k`` is read through gRPC: for good, or until its retry time."""
        if k not in self._no_bulk:
            return False
        retry = self._bulk_retry_at.get(k)
        if retry is not None and time.monotonic() >= retry:
            del self._no_bulk[k], self._bulk_retry_at[k]
            return False
        return True

    def _bulk_later(self, k: int, why: str, warn: bool = True) -> None:
        """Read shard ``k`` through gRPC for BULK_RETRY_S (it may be busy, or
        its port closed to this client), and say so once."""
        if warn and k not in self._warned_bulk:
            self._warned_bulk.add(k)
            hint = ("open that port to this client, or pin it with recoveryd --bulk-port"
                    if "cannot reach" in why else "the next read tries it again")
            logger.warning("%s: %s; reading through gRPC (more CPU on both ends): %s", self.name(k), why, hint)
        self._no_bulk[k] = why
        self._bulk_retry_at[k] = time.monotonic() + BULK_RETRY_S

    def bulk_status(self) -> dict[int, str]:
        """Shards read through gRPC for data, and why (reasons learnt so far)."""
        return dict(self._no_bulk)

    def _stream(self, k: int, method, request, doing: str) -> Iterator[Record]:
        call = method(request)
        try:
            yield from call
        except grpc.RpcError as e:
            raise self._error(k, e, doing) from None
        finally:
            call.cancel()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels = []

    def __enter__(self) -> Shards:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unavailable(details: str) -> str:
    text = details.lower()
    if "handshake" in text or "ssl" in text or "certificate" in text:
        return ("failed the TLS handshake (check --tls-ca, and --tls-cert/--tls-key, against the "
                "shard's certificates)")
    if "socket closed" in text or "connection reset" in text:
        return ("closed the connection (does it serve TLS? then pass --tls-ca, and --tls-cert/"
                "--tls-key if it wants client certificates)")
    return "does not answer (is `nfsj recoveryd` running there?)"


_CHUNKED = {"ScanChunks": ScanRequest, "FileRecordChunks": FileRequest,
            "FilesRecordChunks": FilesRequest}
#: The chunked calls a bulk stream can stand for, and BulkRequest's field for each.
_BULK_KINDS = {"ScanChunks": "scan", "FilesRecordChunks": "files"}


def _host(address: str) -> str:
    """The host of a gRPC target ``HOST:PORT`` (``[v6]:PORT`` too), as dialled."""
    target = address.split("///", 1)[-1]
    host = target.rpartition(":")[0] or target
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _record(chunk: bytes, start: int, end: int) -> Record:
    return Record.FromString(memoryview(chunk)[start:end])


def _plain(records: Iterator[Record], apart: bool) -> Iterator:
    """A stream of whole records in the shape asked for."""
    return ((r, r.data) for r in records) if apart else records


def _records_in(chunk: bytes, shard: str, parse: Callable = _record) -> Iterator:
    """The records of a RecordChunk in wire form (field 1, length-delimited,
    repeated), each parsed by ``parse(chunk, start, end)`` from where it lies."""
    view = memoryview(chunk)
    pos, end = 0, len(view)
    while pos < end:
        if view[pos] != 0x0A:
            raise ShardError(f"{shard} sent a malformed record chunk (byte {pos})")
        length, shift, pos = 0, 0, pos + 1
        while True:
            if pos >= end or shift > 63:
                raise ShardError(f"{shard} sent a malformed record chunk (byte {pos})")
            byte = view[pos]
            length |= (byte & 0x7F) << shift
            pos += 1
            if byte < 0x80:
                break
            shift += 7
        if pos + length > end:
            raise ShardError(f"{shard} sent a truncated record chunk")
        try:
            yield parse(chunk, pos, pos + length)
        except Exception:  # noqa: BLE001  google.protobuf.message.DecodeError
            raise ShardError(f"{shard} sent a record that does not parse") from None
        pos += length


class _Unimplemented(Exception):
    """A shard does not serve a call (an older recoveryd), and it has no plain form."""


_BATCH = 256  # records handed over between threads at a time
#: ... or fewer once the data apart from them (RecordData) passes this: what
#: a reader holds ahead is bounded in bytes, not only in records. Each view
#: of data holds the whole message it came in, and a bulk restore's records
#: are files (4,096 records of 100 KiB held 400 MiB per shard: fresh memory,
#: faulted in page by page, for nothing the writers could take sooner).
_BATCH_BYTES = 1 << 20


def _ahead(records: Iterator, limit: int) -> Iterator:
    """``records``, read by a thread of its own up to ``limit`` records ahead
    (and, for RecordData, about ``limit / _BATCH`` MiB of data). An error in
    the stream is raised here; closing this stops the thread."""
    ready: queue.Queue = queue.Queue(max(1, limit // _BATCH))
    stop = threading.Event()

    def pump() -> None:
        batch: list = []
        nbytes = 0
        try:
            for record in records:
                batch.append(record)
                if type(record) is tuple:
                    nbytes += len(record[1])
                if len(batch) >= _BATCH or nbytes >= _BATCH_BYTES:
                    if not _put(ready, batch, stop):
                        return
                    batch, nbytes = [], 0
            _put(ready, batch, stop)
            _put(ready, None, stop)
        except BaseException as e:  # noqa: BLE001  handed to the reader
            _put(ready, e, stop)
        finally:
            records.close()

    thread = threading.Thread(target=pump, name="nfsj-restore-ahead", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield from item
    finally:
        stop.set()


def _put(ready: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _stamp(record: Record) -> bytes:
    return record.stamp


def _first_stamp(item: RecordData) -> bytes:
    return item[0].stamp


def _merge(streams: list[Iterator], key: Callable = _stamp) -> Iterator:
    last = None
    try:
        for item in heapq.merge(*streams, key=key):
            stamp = key(item)
            if stamp == last:
                continue  # BASELINE_BEGIN/END: one record held by every shard
            last = stamp
            yield item
    finally:
        for s in streams:
            s.close()

