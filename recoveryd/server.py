"""The shard's gRPC face: the Journal service (ingest, status) and health.

Thin asyncio layer over ``ShardStore`` (durability) and ``recoveryd.frontier``
(what a batch may do to a stream). The contract is the comment block on
``service Journal`` in proto/journal.proto; in short:

* One ``Ingest`` call carries one stream, named by its first message.
  Every ``IngestBatch`` gets exactly one ``IngestAck``, in order, sent once
  the batch is durable (a synced WAL write, or, for a large group of a shard
  that is behind, a flush: ``ShardStore``) or refused. A batch whose shipper
  sets ``defer_durable`` is acked once it is held and readable
  (``applied_seq``); a flush at most ``DEFERRED_FLUSH_S`` later makes it
  durable, or sooner: a heartbeat (a batch without records: the stream went
  quiet) is acked after one. Every ack says how far that has come
  (``durable_seq``). Batches of a call are applied one at a time,
  in order; the blocking RocksDB write runs in a thread so the event loop
  keeps serving other streams, Status and health.
* The first message may be a *hello*: an empty batch (``after_seq ==
  through_seq``, no records). It is not applied; its ack tells the shipper the
  position to resume from (after a restart, what the shard had made
  durable), whatever position the hello names.
* A refused batch (it does not chain, it is malformed, or its ``sent_stamp``
  is more than max offset ahead of this shard's clock) is answered with
  ``error`` set and the stream's unchanged ``durable_seq``; nothing of it is
  stored and the call goes on: the shipper rewinds to ``durable_seq``.
* Who may ship (recoveryd/security.py, ``IngestAuth``): a call without any
  valid ingest credential is refused before anything is read (when ingest
  credentials are configured); the stream its first message names must
  belong to a member node the caller holds a credential for, and a
  certificate identity is bound to the node at first use. Refusals abort
  the call (UNAUTHENTICATED, PERMISSION_DENIED) and are counted. Records
  stamped by another node, and records whose stamp is held with other bytes,
  are refused with their batch (recoveryd/store.py).
* Memory: a message is at most ``MAX_INGEST_MESSAGE_BYTES``; batches read
  ahead of the one being written are bounded in bytes per call
  (``READ_AHEAD_BYTES``) and over all calls (``SHARD_READ_AHEAD_BYTES``), so
  gRPC flow control holds back a peer that sends faster than the disk.
* ``Status`` shows stream keys and members only to callers that may restore
  or hold an ingest credential; others get frontiers and counters.
* Clocks (logstore/hlc.py, channel 2): the shard updates its HLC from each
  batch's ``sent_stamp`` and every ack carries the shard's ``now()``. A stamp
  too far ahead is refused and counted (``clock_refusals_total`` here,
  ``rejections_total`` on the HLC): the batch is not stored, so a proxy
  with a bad clock stops advancing the consistent point instead of silently
  ordering its records wrongly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import AsyncIterator, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from logstore.hlc import HLC, ClockStamp, UntrustworthyStampError
from logstore.pb import journal_pb2_grpc
from logstore.shipped import ReceivedBatch, receive_batch
from logstore.pb.journal_pb2 import (BaselineList, IngestAck, IngestBatch, RetireRequest, ShardStatus,
                                     ShardStatusRequest, StreamStatus)

from .frontier import BatchRefused, StreamKey, StreamState
from .bulk_server import BulkServer
from .restore_service import RestoreServicer, add_restore_service
from .security import (IngestAuth, RestoreAuth, SecurityError, TlsOptions, server_credentials,
                       server_ssl_context)
from .store import (RetireRefused, ShardStore, shipped_size, stream_id, stream_key,
                    stream_status)

__all__ = ["JournalServicer", "JournalServer", "IngestCounters", "ServeError", "SecurityError",
           "JOURNAL_SERVICE", "MAX_MESSAGE_BYTES", "MAX_INGEST_MESSAGE_BYTES", "READ_AHEAD_BYTES",
           "SHARD_READ_AHEAD_BYTES", "is_hello", "start_server"]

logger = logging.getLogger(__name__)

JOURNAL_SERVICE = "nfsj.journal.v1.Journal"
# The largest IngestBatch accepted: 256 NFS WRITEs of 1 MiB fit. Shippers
# should cut batches well below this.
MAX_MESSAGE_BYTES = 512 << 20
# What a shard accepts from any one peer in one message: a shipper's batch
# (4 MiB by default; one record up to the LOG's 16 MiB goes alone) with room.
MAX_INGEST_MESSAGE_BYTES = 64 << 20
#: Bytes of batches read ahead of the one being written: per Ingest call, and
#: over all calls of the shard. Past them the call's reads wait (gRPC flow
#: control then stops the peer), so a peer cannot fill the shard's memory.
READ_AHEAD_BYTES = 64 << 20
SHARD_READ_AHEAD_BYTES = 256 << 20


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
    auth_refusals_total: int = 0  # Ingest calls refused: no credential, wrong node, not a member
    retired_total: int = 0        # streams retired (nfsj retire)


#: Batches read ahead of the one being written, and the most written together.
_READ_AHEAD_BATCHES = 16
_GROUP_BATCHES = 16
#: How often the flush task looks whether deferred writes are due for a
#: flush (``ShardStore.flush_due``): a backlog brings 32 MiB in about this.
_FLUSH_CHECK_S = 0.05


class _Budget:
    """Bytes that may be held at once; ``acquire`` waits for room. A request
    larger than the whole budget waits until nothing else is held.
    ``release`` is synchronous, so a call's cleanup never awaits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._waiters: list[asyncio.Future[None]] = []

    async def acquire(self, n: int) -> None:
        while self.held and self.held + n > self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.held += n

    def release(self, n: int) -> None:
        self.held -= n
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:  # each checks again for room
            if not waiter.done():
                waiter.set_result(None)


class _ReadAhead:
    """One Ingest call's read-ahead bytes: bounded by its own budget and by
    the shard's, which it gives back whole when the call ends."""

    def __init__(self, shard: _Budget) -> None:
        self._own = _Budget(READ_AHEAD_BYTES)
        self._shard = shard
        self.held = 0   # bytes this call holds of the shard's budget

    async def acquire(self, n: int) -> None:
        await self._own.acquire(n)
        await self._shard.acquire(n)
        self.held += n

    def release(self, n: int) -> None:
        self.held -= n
        self._own.release(n)
        self._shard.release(n)

    def close(self) -> None:
        held, self.held = self.held, 0
        if held:
            self._shard.release(held)


def is_hello(received: ReceivedBatch) -> bool:
    """An empty batch that only names its stream and asks where to resume."""
    batch = received.batch
    return (batch.after_seq == batch.through_seq and not batch.records and not received.frames
            and not batch.gap)


class JournalServicer(journal_pb2_grpc.JournalServicer):
    """The Journal service over one ``ShardStore`` and the shard's ``HLC``.

    Blocking work (RocksDB writes with fsync, the HLC's bound file) runs on
    ``executor``; the servicer does not own the store, the clock or the executor.
    """

    def __init__(self, store: ShardStore, hlc: HLC, executor: concurrent.futures.Executor, *,
                 ingest_auth: IngestAuth | None = None,
                 restore_auth: RestoreAuth | None = None) -> None:
        self._store = store
        self._hlc = hlc
        self._executor = executor
        self._ingest_auth = ingest_auth or IngestAuth()
        self._restore_auth = restore_auth
        self._counters = IngestCounters()
        self._counters_lock = threading.Lock()
        self._shard_budget = _Budget(SHARD_READ_AHEAD_BYTES)
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

    async def Ingest(self, request_iterator: AsyncIterator[ReceivedBatch],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[IngestAck]:
        """One stream per call. Batches are read ahead while earlier ones are
        being written, and every batch that queued up meanwhile is written
        with them in one synced write (group commit); each still gets its own
        ack, in order."""
        loop = asyncio.get_running_loop()
        peer = context.peer()
        metadata = context.invocation_metadata() or ()
        auth_context = context.auth_context() or {}
        if self._ingest_auth.enabled and not self._ingest_auth.authenticated(metadata, auth_context):
            await self._refuse(context, peer, None, grpc.StatusCode.UNAUTHENTICATED,
                               "missing credentials: ingest needs a valid ingest token (nfsj proxy "
                               "--ingest-token-file FILE) or a client certificate")
        queue: asyncio.Queue[ReceivedBatch | None] = asyncio.Queue(maxsize=_READ_AHEAD_BATCHES)
        budget = _ReadAhead(self._shard_budget)
        reader = loop.create_task(self._read_ahead(request_iterator, queue, budget))
        key: StreamKey | None = None
        self._count(streams_open=1)
        try:
            while (item := await queue.get()) is not None:
                batch = item.batch
                if key is None:
                    if not batch.HasField("stream") or not batch.stream.log_id:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                            "the first IngestBatch of a call must name its stream "
                                            "(node_id and log_id)")
                    key = stream_key(batch.stream)
                    await self._admit(context, peer, key, metadata, auth_context)
                    logger.info("stream %s: ingest from %s", key, peer)
                    if is_hello(item):
                        yield await loop.run_in_executor(self._executor, self._hello, key, batch)
                        budget.release(item.nbytes)
                        continue
                group = [item]
                while len(group) < _GROUP_BATCHES and not queue.empty():
                    if (more := queue.get_nowait()) is None:
                        queue.put_nowait(None)  # the end: seen again by the outer loop
                        break
                    group.append(more)
                try:
                    acks = await loop.run_in_executor(self._executor, self._handle_group, key, group)
                except Exception as e:  # the store failed (disk full, I/O error): not the peer's fault
                    logger.exception("stream %s: storing %d batch(es) from (%d, ...] failed", key,
                                     len(group), group[0].batch.after_seq)
                    await context.abort(grpc.StatusCode.UNAVAILABLE,
                                        f"shard {self._store.shard_id} could not store the batch: {e}")
                budget.release(sum(received.nbytes for received in group))
                for ack in acks:
                    yield ack
        finally:
            reader.cancel()
            budget.close()
            self._count(streams_open=-1)
            if key is not None:
                logger.info("stream %s: ingest from %s ended", key, peer)

    async def _admit(self, context: grpc.aio.ServicerContext, peer: str, key: StreamKey,
                     metadata, auth_context) -> None:
        """Abort the call unless the caller may ship ``key`` (binding a
        certificate identity to the node at first use)."""
        admission = self._ingest_auth.admit(key.node_id, metadata, auth_context)
        if admission.refusal is not None:
            code = (grpc.StatusCode.UNAUTHENTICATED if admission.refusal.startswith(("missing", "wrong"))
                    else grpc.StatusCode.PERMISSION_DENIED)
            await self._refuse(context, peer, key, code, admission.refusal)
        if admission.bind:
            bound = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._store.bind_owner, key.node_id, admission.identity)
            if bound != admission.identity:
                await self._refuse(context, peer, key, grpc.StatusCode.PERMISSION_DENIED,
                                   f"node {key.node_id} is bound to another identity; "
                                   f"{admission.identity} may not ship its streams")

    async def _refuse(self, context: grpc.aio.ServicerContext, peer: str, key: StreamKey | None,
                      code: grpc.StatusCode, why: str) -> None:
        self._count(auth_refusals_total=1)
        logger.warning("refused an Ingest call from %s%s: %s", peer,
                       f" for stream {key}" if key is not None else "", why)
        await context.abort(code, why)

    async def _read_ahead(self, request_iterator: AsyncIterator[ReceivedBatch],
                          queue: asyncio.Queue[ReceivedBatch | None],
                          budget: _ReadAhead) -> None:
        cancelled = False
        try:
            async for received in request_iterator:
                await budget.acquire(received.nbytes)
                await queue.put(received)
        except asyncio.CancelledError:
            cancelled = True  # the call is over: nobody reads the queue any more
            raise
        finally:
            if not cancelled:
                await queue.put(None)

    def _handle_group(self, key: StreamKey, group: list[ReceivedBatch]) -> list[IngestAck]:
        """Apply consecutive batches of one stream with one synced write (in the executor)."""
        acks: list[IngestAck | None] = [None] * len(group)
        accepted: list[int] = []
        for i, received in enumerate(group):
            batch = received.batch
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
        defer = all(group[i].batch.defer_durable for i in accepted)
        outcomes = (self._store.ingest_many(key, [group[i] for i in accepted], defer=defer)
                    if accepted else [])
        if defer and _is_heartbeat(group[-1]):
            # The stream went quiet: make what it has waiting durable now,
            # and say so in this ack, rather than DEFERRED_FLUSH_S after it came.
            self._store.flush_deferred(key)
        for i, outcome in zip(accepted, outcomes):
            batch = group[i].batch
            if isinstance(outcome, BatchRefused):
                self._count(refusals_total=1)
                logger.warning("stream %s: refused batch (%d, %d]: %s", key, batch.after_seq,
                               batch.through_seq, outcome)
                acks[i] = self._ack(key, outcome.state, f"refused: {outcome}")
            else:
                records, nbytes = shipped_size(group[i])
                self._count(batches_total=1, records_total=records, bytes_total=nbytes)
                acks[i] = self._ack(key, outcome)
        return acks

    def _hello(self, key: StreamKey, batch: IngestBatch) -> IngestAck:
        """Answer a hello (in the executor) with the stream's position.

        A hello registers the stream durably before it is answered: from then
        on this shard's frontier counts the proxy even before any record
        arrives (see recoveryd/frontier.py and nfsproxy/daemon/proxyd.py). A retired
        stream is not registered again; the ack says it is retired.
        """
        self._count(hellos_total=1)
        try:
            if batch.sent_stamp:
                self._hlc.update(ClockStamp.from_bytes(batch.sent_stamp))
        except (UntrustworthyStampError, ValueError) as e:
            self._count(clock_refusals_total=1)
            logger.warning("stream %s: hello with an unusable sent_stamp: %s", key, e)
        state = self._store.register(key)
        if self._store.is_retired(key):
            return self._ack(key, state, f"stream {key} was retired (nfsj retire); it may not ship again")
        return self._ack(key, state)

    def _ack(self, key: StreamKey, state: StreamState, error: str = "") -> IngestAck:
        durable = min(state.durable_seq, self._store.durable_seq(key))
        return IngestAck(stream=stream_id(key), durable_seq=durable, applied_seq=state.durable_seq,
                         frontier=state.frontier.to_bytes(), shard_stamp=self._hlc.now().to_bytes(),
                         error=error, shard_id=self._store.shard_id, reads_frames=True)

    def _authenticated(self, context: grpc.aio.ServicerContext) -> bool:
        """Whether the caller may see stream keys: it may restore (or Restore
        is open to all), or it holds an ingest credential."""
        metadata = context.invocation_metadata() or ()
        auth_context = context.auth_context() or {}
        restore = self._restore_auth
        if restore is None or not restore.enabled or restore.refusal(metadata, auth_context) is None:
            return True
        return self._ingest_auth.authenticated(metadata, auth_context)

    async def Status(self, request: ShardStatusRequest,
                     context: grpc.aio.ServicerContext) -> ShardStatus:
        reveal = self._authenticated(context)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.status, reveal)

    def status(self, reveal: bool = True) -> ShardStatus:
        """The shard's status (blocking: reads the clock, which may fsync its
        bound). ``reveal`` False leaves out stream keys and members."""
        store = self._store
        infos = store.stream_infos() if reveal else {}
        frontier = store.frontier()
        return ShardStatus(
            shard_id=store.shard_id,
            streams=[stream_status(k, infos[k]) for k in sorted(infos)],
            records=store.records_total, bytes=store.bytes_total,
            frontier=frontier.to_bytes() if frontier is not None else b"",
            shard_stamp=self._hlc.now().to_bytes(), data_id=store.data_id,
            members=sorted(store.members) if reveal else [], streams_hidden=not reveal,
            baselines=[b for b in self.baselines().baselines if b.end] if self.baselines else [])

    async def Retire(self, request: RetireRequest, context: grpc.aio.ServicerContext) -> StreamStatus:
        """Retire a stream held in full (``ShardStore.retire``); needs the
        credentials that reveal stream keys."""
        if not self._authenticated(context):
            self._count(auth_refusals_total=1)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing credentials: retiring a stream needs a restore token, an "
                                "ingest token or a client certificate (--token-file FILE)")
        if not request.HasField("stream") or not request.stream.log_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name the stream (node_id and log_id)")
        key = stream_key(request.stream)
        if key not in self._store.streams() and not self._store.is_retired(key):
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"shard {self._store.shard_id} has no stream {key}")
        try:
            info = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._store.retire, key, request.through_seq)
        except RetireRefused as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        self._count(retired_total=1)
        logger.warning("stream %s retired through seq %d (asked by %s): it no longer holds the "
                       "frontier back, and may not ship again", key, request.through_seq, context.peer())
        return stream_status(key, info)


class JournalServer:
    """A running grpc.aio server with the Journal and health services."""

    def __init__(self, server: grpc.aio.Server, servicer: JournalServicer,
                 health_servicer: health.aio.HealthServicer, port: int,
                 executor: concurrent.futures.ThreadPoolExecutor, tasks: list[asyncio.Task],
                 restore_auth: RestoreAuth | None = None, security: str = "plaintext",
                 bulk: BulkServer | None = None) -> None:
        self.server = server
        self.servicer = servicer
        self.health = health_servicer
        self.port = port
        self.restore_auth = restore_auth
        self.security = security  # one line: transport and who may restore
        self.bulk = bulk          # the bulk port (bulk_server.py), when served
        self._executor = executor
        self._tasks = tasks
        self._stopped = False

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop listening, let calls finish for ``grace_s``, cancel the rest, and
        wait for every write already started. The store is the caller's to close."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        await self.server.stop(grace_s)
        if self.bulk is not None:   # its streams read the store, which closes next
            await asyncio.get_running_loop().run_in_executor(None, self.bulk.stop)
        # A cancelled call's write may still be running in a thread; it must
        # finish before the store closes.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)


async def start_server(store: ShardStore, hlc: HLC, host: str, port: int, *,
                       workers: int = 8, tls: TlsOptions | None = None,
                       restore_tokens: str | None = None,
                       restore_identities: tuple[str, ...] | list[str] = (),
                       ingest_tokens: str | None = None, bulk_port: int | None = 0) -> JournalServer:
    """Serve Journal, Restore and grpc.health.v1 on ``host:port`` (port 0: any free port),
    and the bulk port (bulk_server.py) on ``host:bulk_port`` (0: any free
    port; None: none, restores then read through gRPC alone).

    ``tls``: serve TLS, and with ``tls.require_client_cert`` only to clients
    whose certificate chains to ``tls.ca`` (mTLS). ``restore_tokens`` (a
    tokens file) and ``restore_identities`` (client certificate names; empty:
    any verified one) say who may call Restore (recoveryd/security.py). With
    neither tokens nor mTLS, Restore is open and a WARNING says so.
    ``ingest_tokens`` (a file of ``NODE_ID TOKEN`` lines) and mTLS say who may
    ship which proxy's streams; the store's ``members`` are the expected
    proxies (with the tokens file's nodes). With neither, ingest is open and
    a WARNING says so.

    Raises ``ServeError`` if the address cannot be bound, ``SecurityError``
    for TLS or token settings that cannot work.
    """
    credentials = server_credentials(tls)
    bulk_tls = server_ssl_context(tls) if bulk_port is not None else None
    mtls = credentials is not None and tls is not None and tls.require_client_cert
    auth = RestoreAuth(restore_tokens, restore_identities, verified_client_certs=mtls)
    ingest_auth = IngestAuth(ingest_tokens, verified_client_certs=mtls, members=store.members)
    store.expect(ingest_auth.members)
    server = grpc.aio.server(interceptors=[auth] if auth.enabled else None, options=[
        # Without this, gRPC sets SO_REUSEPORT and a second shard on the same
        # port would start "fine" and split the traffic.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", MAX_INGEST_MESSAGE_BYTES),
    ])
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                     thread_name_prefix=f"shard{store.shard_id}")
    servicer = JournalServicer(store, hlc, executor, ingest_auth=ingest_auth,
                               restore_auth=auth if auth.enabled else None)
    _add_journal_service(servicer, server)
    restore = RestoreServicer(store, executor)
    add_restore_service(restore, server)
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
    if bulk_port is not None:
        try:
            restore.bulk = BulkServer(host, bulk_port, restore.counters, tls=bulk_tls)
        except OSError as e:
            executor.shutdown(wait=False)
            raise ServeError(f"cannot serve the bulk port on {host}:{bulk_port} ({e.strerror or e}); "
                             "pick a free one with --bulk-port, or --no-bulk") from None
    try:
        await server.start()
    except BaseException:
        if restore.bulk is not None:
            restore.bulk.stop()
        executor.shutdown(wait=False)
        raise
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
    if not ingest_auth.enabled:
        logger.warning("INGEST IS OPEN: Journal ingest is not authenticated; anyone who can reach %s "
                       "can register streams and add records that restores will replay, or hold "
                       "the consistent point back (give --ingest-tokens FILE with a token per "
                       "proxy node, or --tls-cert, --tls-key and --tls-ca for client certificates)",
                       where)
    elif ingest_tokens and credentials is None:
        logger.warning("ingest tokens travel in clear text to %s: anyone on the network path can "
                       "copy them (give --tls-cert and --tls-key)", where)
    if not ingest_auth.members:
        logger.warning("no member list: a proxy no shard has heard of yet does not hold the "
                       "consistent point back (give --member NODE_ID for each proxy, or "
                       "--ingest-tokens)")
    security = f"{(tls or TlsOptions()).describe(server=True)}, {auth.describe()}"
    tasks = [asyncio.create_task(_watch_clock(hlc), name="hlc-check-physical"),
             asyncio.create_task(_flush_deferred(store, executor), name="flush-deferred")]
    running = JournalServer(server, servicer, health_servicer, bound, executor, tasks,
                            auth if auth.enabled else None, security, restore.bulk)
    running.restore_counters = restore.counters  # read by recoveryd.metrics
    running.ingest_security = ingest_auth.describe()
    return running


def _is_heartbeat(received: ReceivedBatch) -> bool:
    return not received.frames and not received.batch.records and not received.batch.gap


def _add_journal_service(servicer: JournalServicer, server: grpc.aio.Server) -> None:
    """``journal_pb2_grpc.add_JournalServicer_to_server``, but Ingest's batches
    are decoded by ``receive_batch``: their frames stay in the message's bytes."""
    handlers = {
        "Ingest": grpc.stream_stream_rpc_method_handler(
            servicer.Ingest, request_deserializer=receive_batch,
            response_serializer=IngestAck.SerializeToString),
        "Status": grpc.unary_unary_rpc_method_handler(
            servicer.Status, request_deserializer=ShardStatusRequest.FromString,
            response_serializer=ShardStatus.SerializeToString),
        "Retire": grpc.unary_unary_rpc_method_handler(
            servicer.Retire, request_deserializer=RetireRequest.FromString,
            response_serializer=StreamStatus.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(JOURNAL_SERVICE, handlers),))
    server.add_registered_method_handlers(JOURNAL_SERVICE, handlers)


async def _flush_deferred(store: ShardStore, executor: concurrent.futures.Executor) -> None:
    # Deferred groups (IngestBatch.defer_durable) wait at most
    # DEFERRED_FLUSH_S, or DEFERRED_FLUSH_BYTES of them, for a flush; then
    # acks and heartbeats carry the new durable position, and the proxies may
    # trim their LOGs. Ingest goes on while it runs.
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(_FLUSH_CHECK_S)
        if store.flush_due(time.monotonic()):
            try:
                await loop.run_in_executor(executor, store.flush_deferred)
            except Exception:  # the store refuses writes from now on and says why
                logger.exception("shard %d: flushing deferred writes failed", store.shard_id)
                return


async def _watch_clock(hlc: HLC) -> None:
    # logstore/hlc.py: read the physical clock every half jump threshold so
    # idle time is not counted as a forward jump.
    interval_s = hlc.max_offset_ns / 2e9
    while True:
        await asyncio.sleep(interval_s)
        hlc.check_physical()
