"""The shard's gRPC face: the Journal service (ingest, status) and health.

Thin asyncio layer over ``ShardStore`` (durability) and ``recoveryd.frontier``
(what a batch may do to a stream). The contract is the comment block on
``service Journal`` in proto/journal.proto; in short:

* One ``Ingest`` call carries one stream, named by its first message.
  Every ``IngestBatch`` gets exactly one ``IngestAck``, in order, sent once
  the batch is durable (fsynced) or refused. Batches of a call are applied one
  at a time, in order; the blocking RocksDB write runs in a thread so the event
  loop keeps serving other streams, Status and health.
* The first message may be a *hello*: an empty batch (``after_seq ==
  through_seq``, no records). It is not applied; its ack tells the shipper the
  durable position to resume from, whatever position the hello names.
* A refused batch (it does not chain, it is malformed, or its ``sent_stamp``
  is more than max offset ahead of this shard's clock) is answered with
  ``error`` set and the stream's unchanged ``durable_seq``; nothing of it is
  stored and the call goes on: the shipper rewinds to ``durable_seq``.
* Clocks (logstore/hlc.py, channel 2): the shard updates its HLC from each
  batch's ``sent_stamp`` and every ack carries the shard's ``now()``. A stamp
  too far ahead is refused and counted (``clock_refusals_total`` here,
  ``rejections_total`` on the HLC). Note: hlc.py's docstring says such a
  batch is still stored; this server follows the shard's brief and refuses
  it, so a proxy with a bad clock stops advancing the consistent point
  instead of silently ordering its records wrongly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
from typing import AsyncIterator, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from logstore.hlc import HLC, ClockStamp, UntrustworthyStampError
from logstore.pb import journal_pb2_grpc
from logstore.pb.journal_pb2 import (BaselineList, IngestAck, IngestBatch, ShardStatus,
                                     ShardStatusRequest)

from .frontier import BatchRefused, StreamKey, StreamState
from .restore_service import RestoreServicer
from .security import RestoreAuth, SecurityError, TlsOptions, server_credentials
from .store import ShardStore, stream_id, stream_key, stream_status

__all__ = ["JournalServicer", "JournalServer", "IngestCounters", "ServeError", "SecurityError",
           "JOURNAL_SERVICE", "MAX_MESSAGE_BYTES", "is_hello", "start_server"]

logger = logging.getLogger(__name__)

JOURNAL_SERVICE = "nfsj.journal.v1.Journal"
# The largest IngestBatch accepted: 256 NFS WRITEs of 1 MiB fit. Shippers
# should cut batches well below this.
MAX_MESSAGE_BYTES = 512 << 20


class ServeError(Exception):
    """The server cannot start as asked (e.g. the port is taken)."""


@dataclasses.dataclass(slots=True)
class IngestCounters:
    """Plain counters, for /metrics later (nfsj_shard_*_total)."""

    batches_total: int = 0        # batches applied (hellos and refusals excluded)
    records_total: int = 0        # records received in applied batches (duplicates included)
    bytes_total: int = 0          # their serialized bytes
    refusals_total: int = 0       # batches refused, for any reason
    clock_refusals_total: int = 0  # ... of which because sent_stamp was beyond max offset
    hellos_total: int = 0
    streams_open: int = 0         # Ingest calls in progress


#: Batches read ahead of the one being written, and the most written together.
_READ_AHEAD_BATCHES = 16
_GROUP_BATCHES = 16


def is_hello(batch: IngestBatch) -> bool:
    """An empty batch that only names its stream and asks where to resume."""
    return batch.after_seq == batch.through_seq and not batch.records and not batch.gap


class JournalServicer(journal_pb2_grpc.JournalServicer):
    """The Journal service over one ``ShardStore`` and the shard's ``HLC``.

    Blocking work (RocksDB writes with fsync, the HLC's bound file) runs on
    ``executor``; the servicer does not own the store, the clock or the executor.
    """

    def __init__(self, store: ShardStore, hlc: HLC, executor: concurrent.futures.Executor) -> None:
        self._store = store
        self._hlc = hlc
        self._executor = executor
        self._counters = IngestCounters()
        self._counters_lock = threading.Lock()
        # The baselines this shard holds (set by start_server): status reports them,
        # so whoever computes the consistent point can tell which gaps are healed.
        self.baselines: Callable[[], BaselineList] | None = None

    @property
    def counters(self) -> IngestCounters:
        """A copy of the counters."""
        with self._counters_lock:
            return dataclasses.replace(self._counters)

    def _count(self, **deltas: int) -> None:
        with self._counters_lock:
            for name, delta in deltas.items():
                setattr(self._counters, name, getattr(self._counters, name) + delta)

    async def Ingest(self, request_iterator: AsyncIterator[IngestBatch],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[IngestAck]:
        """One stream per call. Batches are read ahead while earlier ones are
        being written, and every batch that queued up meanwhile is written
        with them in one synced write (group commit); each still gets its own
        ack, in order."""
        loop = asyncio.get_running_loop()
        peer = context.peer()
        queue: asyncio.Queue[IngestBatch | None] = asyncio.Queue(maxsize=_READ_AHEAD_BATCHES)
        reader = loop.create_task(self._read_ahead(request_iterator, queue))
        key: StreamKey | None = None
        self._count(streams_open=1)
        try:
            while (batch := await queue.get()) is not None:
                if key is None:
                    if not batch.HasField("stream") or not batch.stream.log_id:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                            "the first IngestBatch of a call must name its stream "
                                            "(node_id and log_id)")
                    key = stream_key(batch.stream)
                    logger.info("stream %s: ingest from %s", key, peer)
                    if is_hello(batch):
                        yield await loop.run_in_executor(self._executor, self._hello, key, batch)
                        continue
                group = [batch]
                while len(group) < _GROUP_BATCHES and not queue.empty():
                    if (more := queue.get_nowait()) is None:
                        queue.put_nowait(None)  # the end: seen again by the outer loop
                        break
                    group.append(more)
                try:
                    acks = await loop.run_in_executor(self._executor, self._handle_group, key, group)
                except Exception as e:  # the store failed (disk full, I/O error): not the peer's fault
                    logger.exception("stream %s: storing %d batch(es) from (%d, ...] failed", key,
                                     len(group), group[0].after_seq)
                    await context.abort(grpc.StatusCode.UNAVAILABLE,
                                        f"shard {self._store.shard_id} could not store the batch: {e}")
                for ack in acks:
                    yield ack
        finally:
            reader.cancel()
            self._count(streams_open=-1)
            if key is not None:
                logger.info("stream %s: ingest from %s ended", key, peer)

    @staticmethod
    async def _read_ahead(request_iterator: AsyncIterator[IngestBatch],
                          queue: asyncio.Queue[IngestBatch | None]) -> None:
        try:
            async for batch in request_iterator:
                await queue.put(batch)
        finally:
            await queue.put(None)

    def _handle_group(self, key: StreamKey, group: list[IngestBatch]) -> list[IngestAck]:
        """Apply consecutive batches of one stream with one synced write (in the executor)."""
        acks: list[IngestAck | None] = [None] * len(group)
        accepted: list[int] = []
        for i, batch in enumerate(group):
            if batch.HasField("stream") and stream_key(batch.stream) != key:
                self._count(refusals_total=1)
                acks[i] = self._ack(key, self._store.stream_state(key),
                                    f"this Ingest call carries stream {key}; a batch for stream "
                                    f"{stream_key(batch.stream)} needs its own call")
                continue
            try:
                if batch.sent_stamp:
                    self._hlc.update(ClockStamp.from_bytes(batch.sent_stamp))
            except UntrustworthyStampError as e:
                self._count(refusals_total=1, clock_refusals_total=1)
                acks[i] = self._ack(key, self._store.stream_state(key), f"refused: sent_stamp: {e}")
                continue
            except ValueError as e:  # a sent_stamp that is not 16 bytes
                self._count(refusals_total=1)
                acks[i] = self._ack(key, self._store.stream_state(key), f"refused: sent_stamp: {e}")
                continue
            accepted.append(i)
        outcomes = self._store.ingest_many(key, [group[i] for i in accepted]) if accepted else []
        for i, outcome in zip(accepted, outcomes):
            batch = group[i]
            if isinstance(outcome, BatchRefused):
                self._count(refusals_total=1)
                logger.warning("stream %s: refused batch (%d, %d]: %s", key, batch.after_seq,
                               batch.through_seq, outcome)
                acks[i] = self._ack(key, outcome.state, f"refused: {outcome}")
            else:
                self._count(batches_total=1, records_total=len(batch.records),
                            bytes_total=sum(len(r.record) for r in batch.records))
                acks[i] = self._ack(key, outcome)
        return acks

    def _hello(self, key: StreamKey, batch: IngestBatch) -> IngestAck:
        """Answer a hello (in the executor) with the stream's durable position.

        A hello registers the stream durably before it is answered: from then
        on this shard's frontier counts the proxy even before any record
        arrives (see recoveryd/frontier.py and nfsproxy/proxyd.py).
        """
        self._count(hellos_total=1)
        try:
            if batch.sent_stamp:
                self._hlc.update(ClockStamp.from_bytes(batch.sent_stamp))
        except (UntrustworthyStampError, ValueError) as e:
            self._count(clock_refusals_total=1)
            logger.warning("stream %s: hello with an unusable sent_stamp: %s", key, e)
        return self._ack(key, self._store.register(key))

    def _ack(self, key: StreamKey, state: StreamState, error: str = "") -> IngestAck:
        return IngestAck(stream=stream_id(key), durable_seq=state.durable_seq,
                         frontier=state.frontier.to_bytes(), shard_stamp=self._hlc.now().to_bytes(),
                         error=error, shard_id=self._store.shard_id)

    async def Status(self, request: ShardStatusRequest,
                     context: grpc.aio.ServicerContext) -> ShardStatus:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.status)

    def status(self) -> ShardStatus:
        """The shard's status (blocking: reads the clock, which may fsync its bound)."""
        store = self._store
        infos = store.stream_infos()
        frontier = store.frontier()
        return ShardStatus(
            shard_id=store.shard_id,
            streams=[stream_status(k, infos[k]) for k in sorted(infos)],
            records=store.records_total, bytes=store.bytes_total,
            frontier=frontier.to_bytes() if frontier is not None else b"",
            shard_stamp=self._hlc.now().to_bytes(), data_id=store.data_id,
            baselines=[b for b in self.baselines().baselines if b.end] if self.baselines else [])


class JournalServer:
    """A running grpc.aio server with the Journal and health services."""

    def __init__(self, server: grpc.aio.Server, servicer: JournalServicer,
                 health_servicer: health.aio.HealthServicer, port: int,
                 executor: concurrent.futures.ThreadPoolExecutor, clock_task: asyncio.Task,
                 restore_auth: RestoreAuth | None = None, security: str = "plaintext") -> None:
        self.server = server
        self.servicer = servicer
        self.health = health_servicer
        self.port = port
        self.restore_auth = restore_auth
        self.security = security  # one line: transport and who may restore
        self._executor = executor
        self._clock_task = clock_task
        self._stopped = False

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop listening, let calls finish for ``grace_s``, cancel the rest, and
        wait for every write already started. The store is the caller's to close."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        self._clock_task.cancel()
        await self.server.stop(grace_s)
        # A cancelled call's write may still be running in a thread; it must
        # finish before the store closes.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)


async def start_server(store: ShardStore, hlc: HLC, host: str, port: int, *,
                       workers: int = 8, tls: TlsOptions | None = None,
                       restore_tokens: str | None = None,
                       restore_identities: tuple[str, ...] | list[str] = ()) -> JournalServer:
    """Serve Journal, Restore and grpc.health.v1 on ``host:port`` (port 0: any free port).

    ``tls``: serve TLS, and with ``tls.require_client_cert`` only to clients
    whose certificate chains to ``tls.ca`` (mTLS). ``restore_tokens`` (a
    tokens file) and ``restore_identities`` (client certificate names; empty:
    any verified one) say who may call Restore (recoveryd/security.py). With
    neither tokens nor mTLS, Restore is open and a WARNING says so.

    Raises ``ServeError`` if the address cannot be bound, ``SecurityError``
    for TLS or token settings that cannot work.
    """
    credentials = server_credentials(tls)
    mtls = credentials is not None and tls is not None and tls.require_client_cert
    auth = RestoreAuth(restore_tokens, restore_identities, verified_client_certs=mtls)
    server = grpc.aio.server(interceptors=[auth] if auth.enabled else None, options=[
        # Without this, gRPC sets SO_REUSEPORT and a second shard on the same
        # port would start "fine" and split the traffic.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ])
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                     thread_name_prefix=f"shard{store.shard_id}")
    servicer = JournalServicer(store, hlc, executor)
    journal_pb2_grpc.add_JournalServicer_to_server(servicer, server)
    restore = RestoreServicer(store, executor)
    journal_pb2_grpc.add_RestoreServicer_to_server(restore, server)
    servicer.baselines = restore.baselines
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = (server.add_secure_port(address, credentials) if credentials is not None
                 else server.add_insecure_port(address))
    except RuntimeError as e:
        executor.shutdown(wait=False)
        raise ServeError(f"cannot listen on {address}: the address is in use or not local "
                         f"({e.args[0].split(';')[0] if e.args else e})") from None
    if bound == 0:
        executor.shutdown(wait=False)
        raise ServeError(f"cannot listen on {address}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(JOURNAL_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    where = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    if not auth.enabled:
        logger.warning("Restore is not authenticated; anyone who can reach %s can read every byte "
                       "written to the NAS (give --restore-tokens FILE, or --tls-ca FILE for client "
                       "certificates)", where)
    elif restore_tokens and credentials is None:
        logger.warning("restore tokens travel in clear text to %s: anyone on the network path can "
                       "copy them (give --tls-cert and --tls-key)", where)
    if not mtls:
        logger.warning("Journal ingest is not authenticated; anyone who can reach %s can add records "
                       "that restores will replay (give --tls-cert, --tls-key and --tls-ca so that "
                       "only proxies with a certificate can ship)", where)
    security = f"{(tls or TlsOptions()).describe(server=True)}, {auth.describe()}"
    clock_task = asyncio.create_task(_watch_clock(hlc), name="hlc-check-physical")
    running = JournalServer(server, servicer, health_servicer, bound, executor, clock_task,
                            auth if auth.enabled else None, security)
    running.restore_counters = restore.counters  # read by recoveryd.metrics
    return running


async def _watch_clock(hlc: HLC) -> None:
    # logstore/hlc.py: read the physical clock every half jump threshold so
    # idle time is not counted as a forward jump.
    interval_s = hlc.max_offset_ns / 2e9
    while True:
        await asyncio.sleep(interval_s)
        hlc.check_physical()
