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
from typing import Iterator, Sequence

import grpc

from logstore.pb import journal_pb2_grpc
from logstore.pb.journal_pb2 import BaselineInfo, FileRequest, Record, ScanRequest, ShardStatusRequest

from ..security import BearerToken, open_channel
from ..status import ShardReport
from .errors import RestoreRefused, ShardError

__all__ = ["Shards", "STATUS_TIMEOUT_S", "BASELINES_TIMEOUT_S", "MAX_MESSAGE_BYTES"]

STATUS_TIMEOUT_S = 5.0
BASELINES_TIMEOUT_S = 60.0
MAX_MESSAGE_BYTES = 512 << 20


class Shards:
    """gRPC channels to every recovery shard, in the proxy's ``--shard`` order.

    ``credentials``: ``grpc.ChannelCredentials`` for TLS/mTLS (None: plain
    text, for private networks). ``token``: a bearer token sent with every
    call, for shards that want one to restore (recoveryd/security.py). Close
    it (or use it as a context manager).
    """

    def __init__(self, addresses: Sequence[str], *, credentials: grpc.ChannelCredentials | None = None,
                 token: BearerToken | None = None,
                 status_timeout_s: float = STATUS_TIMEOUT_S) -> None:
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
        self._journal = [journal_pb2_grpc.JournalStub(c) for c in self._channels]
        self._no_chunks: set[int] = set()   # shards without FileRecordChunks

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
        return ShardError(f"{self.name(k)} {why} while {doing}" + (f": {details}" if details else ""))

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

    def scan(self, request: ScanRequest) -> Iterator[Record]:
        """Every shard's Scan merged in stamp order, equal stamps once."""
        return _merge([self._stream(k, self._restore[k].Scan, request, "scanning records")
                       for k in range(len(self))])

    def file_records(self, request: FileRequest) -> Iterator[Record]:
        """Every shard's FileRecords merged in stamp order, equal stamps once.

        Asked as ``FileRecordChunks`` (many records to a message); a shard
        that predates it is asked ``FileRecords``, one message per record."""
        return _merge([self._file_stream(k, request) for k in range(len(self))])

    def _file_stream(self, k: int, request: FileRequest) -> Iterator[Record]:
        doing = "reading a file's records"
        if k in self._no_chunks:
            yield from self._stream(k, self._restore[k].FileRecords, request, doing)
            return
        call = self._restore[k].FileRecordChunks(request)
        try:
            for chunk in call:
                for raw in chunk.records:
                    yield Record.FromString(raw)
        except grpc.RpcError as e:
            if e.code() is not grpc.StatusCode.UNIMPLEMENTED:
                raise self._error(k, e, doing) from None
            self._no_chunks.add(k)  # an older recoveryd: it failed before sending anything
            yield from self._stream(k, self._restore[k].FileRecords, request, doing)
        finally:
            call.cancel()

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


def _merge(streams: list[Iterator[Record]]) -> Iterator[Record]:
    last = None
    try:
        for record in heapq.merge(*streams, key=lambda r: r.stamp):
            if record.stamp == last:
                continue  # BASELINE_BEGIN/END: one record held by every shard
            last = record.stamp
            yield record
    finally:
        for s in streams:
            s.close()

