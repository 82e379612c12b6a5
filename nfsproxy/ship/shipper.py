"""Shipping the LOG to recovery shards (README.md, "How it works").

One ``Shipper`` per shard runs as asyncio tasks in the proxy process. It
tails the LOG, keeps the records that belong to its shard (``sharding``),
and streams them over the bidirectional gRPC call ``Journal.Ingest``
(proto/journal.proto holds the contract; this docstring says how the
proxy side keeps it).

Positions
---------
A stream is this proxy's LOG as seen by one shard, named
``StreamId(node_id=<proxy HLC node id>, log_id=<LOG identity>)``. Each batch
covers a LOG range ``(after_seq, through_seq]`` and carries exactly the
records of that range that belong to the shard. A range holding none of
them is not sent on its own: it joins the shard's next batch, or goes out
as the next heartbeat, so the shard's position (and frontier) moves on
within ``heartbeat_interval_s`` and contiguity is checked on ranges. Only
records up to ``log.synced_seq`` are shipped: a shard never holds a record
the LOG could still lose in a crash.

Every (re)connection starts with a *hello*: an empty batch ``(0, 0]``. The
shard answers with its position ``D`` for the stream, and shipping
resumes at ``D + 1``. The shard answers every batch with one ack, in order;
an ack that refuses a batch (``error``) or reports a position below
the batch's end (the shard lost or wiped data) *rewinds* the shipper to the
ack's position: it resends from there down the same path as normal
shipping, which is also how a wiped shard is rebuilt. Batches sent before a
rewind are stale: their acks are matched and ignored. If the LOG was trimmed
past what the shard needs (``D + 1 < log.first_seq``) the shipper sends a
``gap`` batch over the missing range, logs an error and counts it; the
shard records a gap there (recoveryd/frontier.py): cuts past it are unproven
until a baseline begun after it has ended. Nothing is ever skipped silently.

Batches say ``defer_durable``: the shard acks a batch once it holds it
(``applied_seq``, which paces the shipper) and makes it durable with a
flush a moment later (``durable_seq``, at most ``DEFERRED_FLUSH_S`` behind
in every later ack and heartbeat). The LOG is trimmed only below every
shard's ``durable_seq`` (``acked_seq`` here, and the backlog metric counts
from it), so a shard that crashes before its flush gets what it lost from
the LOG again: its hello answers the position it had made durable.

Stable stamps and heartbeats
----------------------------
A record is stamped when its call arrives and lands in the LOG when the NAS
replies, so LOG order is not stamp order. ``Proxy.stable_stamp()`` is below
every stamp not yet in the LOG. Every ``sample_interval_s`` (and right
before each heartbeat) the shipper samples, on the event loop and with no
await in between, ``H = stable_stamp()`` and *then* ``E = log.last_seq``.
Every record stamped below ``H`` was in the LOG when ``H`` was taken, so at a
seq ``<= E``. Hence a batch whose ``through_seq >= E`` may claim
``stable = H``; it carries the highest such ``H`` (``StableClaims``). When
there is nothing to send, a batch without records carries the newest claim
every ``heartbeat_interval_s``: ``(P, P]`` at the current position P, or
the range read since that held none of the shard's records. It is the
heartbeat that moves an idle shard's frontier. A stable stamp is never a
clock reading: it never moves a clock (logstore.hlc, channel 3).

Clocks: each batch's ``sent_stamp`` is ``clock.now()``; each ack's
``shard_stamp`` updates the proxy clock (refusals are counted and logged,
channel 2). ``newest`` is the newest record stamp the shipper has read from
the LOG.

Routing: a version-2 LOG frame's header carries the record's stamp and route,
so a record is routed without parsing it; other frames are parsed. The
version 2 frames are walked natively, checked, routed and the shard's
copied out without the GIL. With more than one shard, the shippers share one
reader (``nfsproxy.ship.fanout``): it walks each region once and queues every
frame for its shards, so N shards cost one walk of the LOG, not N; a shipper
whose next seq its queue does not hold walks that part alone
(``_dataplane.select_shard_frames``), as a single shard's always does. A batch
carries its records as their LOG frames, back to back, as the LOG stores
them (``IngestBatch.frames``, ``logstore.shipped``): one buffer through
gRPC, whose frame headers tell the shard each record's seq and stamp and
whose CRCs it checks. Only a shard whose hello ack says ``reads_frames``
gets them; one that does not (older than this format) would take a batch of
frames for an empty range, so the shipper refuses to ship to it and says so.

Flow control: a batch holds at most ``max_batch_bytes`` of the shard's
payloads (one larger record gets a batch of its own) and
``max_batch_records`` records (a bound for tiny records only), and scans at
most ``max_scan_records`` LOG records.
Unacked payload bytes stay under ``max_inflight_bytes`` (and batches under
``max_inflight_batches``); past that the shipper waits for acks. A shard
that is down is retried with exponential backoff and jitter
(``backoff_initial_s`` .. ``backoff_max_s``); meanwhile the proxy serves
clients and the LOG grows (up to its quota). A stream that gets no ack for
``ack_timeout_s`` is dropped and reconnected.

``Shipper.state()`` is the per-shard status for ``nfsj status`` and metrics.

The positions, epochs, acks, rewinds and gaps above are kept by the sans-IO
``nfsproxy.ship.stream.IngestStream``; ``Shipper`` is its driver: the gRPC
call, the LOG reads (in a worker thread), the clock and the stable-stamp
samples.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from logstore.hlc import HLC, ClockStamp, UntrustworthyStampError
from logstore.log import FrameSpan, Log, LogCorruptError, LogCursor, LogError, LogGapError
from logstore.segment import NO_STAMP, ROUTE_EVERY_SHARD, ROUTE_HANDLE, ROUTE_INTENT, Frame
from logstore.shipped import SentBatch, frame_of, serialize_batch
from logstore.pb import journal_pb2 as pb
from logstore.record import parse_record
from logstore.stamp import Stamp

from logstore.sharding import UnroutableRecordError, belongs_to
from nfsproxy import _dataplane
from nfsproxy.ship.fanout import LogFanout
from nfsproxy.ship.stream import (Backoff, IngestStream, SendGap, SendHeartbeat, SendRange,
                                  ShardRefused, ShipperOptions, StableClaims, Wait)

__all__ = ["Shipper", "ShipperOptions", "ShipperState", "StableClaims", "Backoff"]

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True, slots=True)
class ShipperState:
    """One shard as its shipper sees it (for status and metrics)."""

    address: str
    shard_id: int
    connected: bool
    acked_seq: int               # the shard's durable position, as last acked
    applied_seq: int             # how far the shard holds the stream, durable or not yet
    sent_seq: int                # end of the last range sent on this connection
    frontier: Stamp              # the stream's frontier on the shard, as last acked
    lag_records: int             # log.last_seq - acked_seq
    lag_seconds: float | None    # now - frontier's wall time (None: no frontier yet)
    gaps_total: int
    gaps: tuple[str, ...]        # "after..through: reason", newest last
    reconnects_total: int
    rewinds_total: int
    bytes_sent_total: int
    records_sent_total: int
    batches_sent_total: int
    heartbeats_sent_total: int
    hlc_rejections_total: int
    unroutable_total: int
    inflight_bytes: int
    last_error: str


@dataclasses.dataclass(slots=True)
class _Range:
    """A LOG range read for a batch (built in a worker thread)."""

    through_seq: int
    frames: bytes  # the shard's records, as LOG frames back to back (IngestBatch.frames)
    records: int
    nbytes: int    # of their payloads (flow control counts these)
    newest: Stamp
    unroutable: int
    blocked_by: int  # size of the record the batch stopped before for lack of room (0: none)


class _Batch:
    """A batch being read (``Shipper._read_range``): its frames and counts."""

    __slots__ = ("seq", "budget", "allow_oversize", "max_records", "parts", "records", "nbytes",
                 "through", "newest", "unroutable", "blocked_by")

    def __init__(self, from_seq: int, budget: int, allow_oversize: bool, max_records: int):
        self.seq = from_seq  # the next seq to read
        self.budget, self.allow_oversize, self.max_records = budget, allow_oversize, max_records
        self.parts: list[bytes | memoryview] = []  # no copy until the batch is joined
        self.records = self.nbytes = self.unroutable = self.blocked_by = 0
        self.through = from_seq - 1
        self.newest = b""  # stamps as bytes: big-endian, so bytes order is stamp order

    def add(self, frames: bytes | memoryview, records: int, nbytes: int, through: int,
            newest: bytes) -> None:
        if records:
            self.parts.append(frames)
            self.records += records
            self.nbytes += nbytes
        if through >= self.seq:
            self.through, self.seq = through, through + 1
        if newest > self.newest:
            self.newest = newest

    def done(self) -> _Range:
        newest = Stamp.from_bytes(self.newest) if self.newest else Stamp.ZERO
        return _Range(self.through, b"".join(self.parts), self.records, self.nbytes, newest,
                      self.unroutable, self.blocked_by)


#: Journal.Ingest's gRPC method path (proto/journal.proto).
INGEST_METHOD = f"/{pb.DESCRIPTOR.services_by_name['Journal'].full_name}/Ingest"


class ShardTooOld(ConnectionError):
    """The shard does not read IngestBatch.frames; shipping to it would lose records."""


class Shipper:
    """Ships this proxy's LOG to one recovery shard (see the module docstring).

    ``shard_id`` is the shard's index among ``n_shards`` (the k-th
    ``--shard``). ``stable_stamp`` is ``Proxy.stable_stamp``. ``start()``
    needs a running event loop; ``stop()`` ends the tasks and waits for any
    LOG read in progress, so the LOG may be closed right after.
    """

    def __init__(self, address: str, *, shard_id: int, n_shards: int, log: Log, clock: HLC,
                 stable_stamp: Callable[[], Stamp], options: ShipperOptions | None = None,
                 credentials: grpc.ChannelCredentials | None = None, token=None,
                 fanout: LogFanout | None = None):
        if not 0 <= shard_id < n_shards:
            raise ValueError(f"shard_id {shard_id} is not in [0, {n_shards})")
        self.address = address
        self.shard_id = shard_id
        self.n_shards = n_shards
        self.options = options or ShipperOptions()
        self._log = log
        self._fanout = fanout  # the reader shared with the other shards' shippers, if any
        self._clock = clock
        self._stable_stamp = stable_stamp
        self._credentials = credentials
        # The ingest token (recoveryd.security.BearerToken): shards with
        # --ingest-tokens admit this proxy's stream only with it.
        self._metadata = token.metadata if token is not None else None
        self.stream = pb.StreamId(node_id=clock.node_id, log_id=log.log_id)
        self._claims = StableClaims(self.options.max_samples)
        self._stream = IngestStream(shard_id, self.options)  # position and flow control
        self._newest = Stamp.ZERO
        self.registered = asyncio.Event()    # the shard durably knows this stream (hello acked)
        self._cursor: LogCursor | None = None  # used only inside _read_range (one at a time)
        self._held: Frame | None = None  # read, but left out of the last batch for lack of room
        # Counters; state() and metrics read them.
        self.reconnects_total = 0
        self.bytes_sent_total = 0
        self.records_sent_total = 0
        self.batches_sent_total = 0
        self.heartbeats_sent_total = 0
        self.hlc_rejections_total = 0
        self.unroutable_total = 0
        self.last_error = ""
        self._last_rejection_log = 0.0
        # Runtime.
        self._channel: grpc.aio.Channel | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake: asyncio.Event | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._reading: concurrent.futures.Future[_Range | None] | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start shipping (on the running loop); returns at once."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"nfsj-ship-{self.shard_id}")
        backoff_ms = int(self.options.backoff_initial_s * 1000)
        channel_options = [
            # Our own backoff paces retries; keep gRPC's from adding a longer one.
            ("grpc.initial_reconnect_backoff_ms", backoff_ms),
            ("grpc.min_reconnect_backoff_ms", backoff_ms),
            ("grpc.max_reconnect_backoff_ms", int(self.options.backoff_max_s * 1000)),
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
        ]
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(self.address, options=channel_options)
        else:
            self._channel = grpc.aio.secure_channel(self.address, self._credentials,
                                                    options=channel_options)
        self._sample()
        self._tasks = [
            loop.create_task(self._run(), name=f"nfsj-shipper-{self.shard_id}"),
            loop.create_task(self._sample_forever(), name=f"nfsj-shipper-{self.shard_id}-samples"),
        ]

    async def stop(self) -> None:
        """Stop shipping; waits for a LOG read in progress and closes the channel."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # noqa: BLE001  already failed; shutting down anyway
                logger.exception("shipper for shard %d failed", self.shard_id)
        if self._reading is not None and not self._reading.done():
            await asyncio.wrap_future(self._reading)  # the LOG must outlive the read
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._close_cursor()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        self._stream.connected = False

    # -- state ------------------------------------------------------------------

    @property
    def acked_seq(self) -> int:
        """The shard's durable position for this stream, as last acked (0: unknown yet)."""
        return self._stream.acked_seq

    @property
    def connected(self) -> bool:
        return self._stream.connected

    @property
    def frontier(self) -> Stamp:
        return self._stream.frontier

    def state(self) -> ShipperState:
        stream = self._stream
        lag_seconds = None
        if stream.frontier != Stamp.ZERO:
            lag_seconds = max(0.0, (time.time_ns() - stream.frontier.wall_ns) / 1e9)
        return ShipperState(
            address=self.address, shard_id=self.shard_id, connected=stream.connected,
            acked_seq=stream.acked_seq, applied_seq=stream.applied_seq, sent_seq=stream.sent_seq,
            frontier=stream.frontier,
            lag_records=max(0, self._log.last_seq - stream.acked_seq), lag_seconds=lag_seconds,
            gaps_total=stream.gaps_total, gaps=tuple(stream.gaps),
            reconnects_total=self.reconnects_total, rewinds_total=stream.rewinds_total,
            bytes_sent_total=self.bytes_sent_total, records_sent_total=self.records_sent_total,
            batches_sent_total=self.batches_sent_total,
            heartbeats_sent_total=self.heartbeats_sent_total,
            hlc_rejections_total=self.hlc_rejections_total,
            unroutable_total=self.unroutable_total, inflight_bytes=stream.inflight_bytes,
            last_error=self.last_error)

    def __repr__(self) -> str:
        return (f"<Shipper shard {self.shard_id} {self.address} "
                f"{'connected' if self.connected else 'down'} acked {self.acked_seq} "
                f"sent {self._stream.sent_seq} frontier {self.frontier}>")

    # -- stable stamps -------------------------------------------------------------

    def _sample(self) -> None:
        # H before E, with no await between: every record stamped below H is
        # in the LOG by now, so at a seq <= E even if another thread appends.
        stable = self._stable_stamp()
        self._claims.observe(self._log.last_seq, stable)

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.sample_interval_s)
            try:
                self._sample()
            except Exception:  # noqa: BLE001  e.g. the HLC bound could not be persisted
                logger.exception("shard %d: sampling the stable stamp failed", self.shard_id)

    # -- connection loop ---------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(self.options.backoff_initial_s, self.options.backoff_max_s)
        failures_in_row = 0
        while True:
            try:
                await self._session()
                reason = "the shard ended the stream"
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                reason = f"{e.code().name}: {e.details()}"
                if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    reason += " (the shard refuses this proxy's stream: check --ingest-token-file)"
                if e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    reason += (" (a batch exceeded the shard's message size limit: lower "
                               "max_batch_bytes or raise grpc.max_receive_message_length there)")
            except (ShardRefused, ConnectionError, TimeoutError, LogError,
                    grpc.aio.UsageError, asyncio.InvalidStateError) as e:
                reason = f"{type(e).__name__}: {e}"
            except Exception as e:  # noqa: BLE001  a bug; keep the proxy serving and retry
                logger.exception("shard %d: shipper failed", self.shard_id)
                reason = f"{type(e).__name__}: {e}"
            was_connected = self.connected
            self._stream.disconnected()
            self.reconnects_total += 1
            self.last_error = reason
            if was_connected:
                backoff.reset()
                failures_in_row = 0
            failures_in_row += 1
            delay = backoff.next_delay()
            log = logger.warning if failures_in_row == 1 or failures_in_row % 50 == 0 else logger.debug
            log("shard %d at %s: %s; retrying in %.2fs (acked through seq %d, %d record(s) behind)",
                self.shard_id, self.address, reason, delay, self.acked_seq,
                max(0, self._log.last_seq - self.acked_seq))
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        assert self._channel is not None
        # The stub's method, with a serializer that appends a batch's frames
        # rather than copying them into the message (logstore.shipped).
        call = self._channel.stream_stream(INGEST_METHOD, request_serializer=serialize_batch,
                                           response_deserializer=pb.IngestAck.FromString)(
            metadata=self._metadata)
        try:
            hello = self._batch(0, 0, claim=False)
            hello.sent_stamp = self._clock.now().to_bytes()
            await call.write(hello)
            try:
                ack = await asyncio.wait_for(call.read(), self.options.hello_timeout_s)
            except TimeoutError:
                raise TimeoutError(f"no answer to the hello for "
                                   f"{self.options.hello_timeout_s:g}s") from None
            if ack is grpc.aio.EOF:
                raise ConnectionError("the shard closed the stream before answering the hello")
            self._resume(ack)
            reader = asyncio.create_task(self._read_acks(call))
            writer = asyncio.create_task(self._write_batches(call))
            try:
                done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reader, writer):
                    task.cancel()
                await asyncio.gather(reader, writer, return_exceptions=True)
            for task in (reader, writer):  # the reader's error says more when both failed
                if task in done:
                    task.result()  # raises what ended the session
        finally:
            call.cancel()

    def _resume(self, ack: pb.IngestAck) -> None:
        if not ack.reads_frames:
            raise ShardTooOld(f"shard {self.shard_id} at {self.address} does not read batches of "
                              "LOG frames (it is older than this proxy): upgrade the shards "
                              "before the proxies; nothing is shipped to it meanwhile")
        self._update_clock(ack)
        self._stream.resume(ack, self._log.last_seq)
        self.registered.set()
        logger.info("shipping to shard %d at %s: resuming after seq %d (frontier %s)",
                    self.shard_id, self.address, self._stream.sent_seq, self.frontier)

    # -- acks ------------------------------------------------------------------------

    async def _read_acks(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            ack = await call.read()
            if ack is grpc.aio.EOF:
                raise ConnectionError("the shard ended the stream")
            self._on_ack(ack)

    def _on_ack(self, ack: pb.IngestAck) -> None:
        self._stream.on_ack(ack, time.monotonic())
        self._update_clock(ack)
        assert self._wake is not None
        self._wake.set()

    def _update_clock(self, ack: pb.IngestAck) -> None:
        if not ack.shard_stamp:
            return
        try:
            self._clock.update(ClockStamp.from_bytes(ack.shard_stamp))
        except UntrustworthyStampError as e:
            self.hlc_rejections_total += 1
            now = time.monotonic()
            if now - self._last_rejection_log >= 60.0:
                self._last_rejection_log = now
                logger.warning("shard %d: %s (%d refused so far)", self.shard_id, e,
                               self.hlc_rejections_total)
        except ValueError as e:
            logger.warning("shard %d sent a malformed shard_stamp (%s)", self.shard_id, e)

    # -- sending ---------------------------------------------------------------------

    async def _write_batches(self, call: grpc.aio.StreamStreamCall) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            step = self._stream.next_step(time.monotonic(), self._log.first_seq, self._log.synced_seq)
            if isinstance(step, SendRange):
                if await self._send_range(call, step):
                    continue
                step = Wait(self.options.poll_interval_s)
            if isinstance(step, SendGap):
                batch = self._batch(step.after_seq, step.through_seq, claim=False)
                batch.gap = True
                await self._send(call, batch, 0)
            elif isinstance(step, SendHeartbeat):
                self._sample()
                await self._send(call, self._batch(step.after_seq, step.through_seq), 0)
                self.heartbeats_sent_total += 1
            elif step.holding:
                await asyncio.sleep(step.seconds)
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), step.seconds)
                except TimeoutError:
                    pass

    async def _send_range(self, call: grpc.aio.StreamStreamCall, step: SendRange) -> bool:
        """Read and send the next batch; False if nothing could be sent now."""
        assert self._executor is not None
        self._reading = self._executor.submit(self._read_range, step.read_from, step.limit_seq,
                                              step.budget, step.allow_oversize)
        try:
            got = await asyncio.wrap_future(self._reading)
        except LogGapError:
            return False  # trimmed meanwhile: the next round sends a gap
        if step.epoch == self._stream.epoch:
            self.unroutable_total += got.unroutable
            if got.newest > self._newest:
                self._newest = got.newest
        if not self._stream.range_read(step, got.through_seq, got.blocked_by, records=got.records,
                                       now=time.monotonic()):
            return False
        batch = self._batch(step.after_seq, got.through_seq)
        await self._send(call, batch, got.nbytes, got.frames)
        self.records_sent_total += got.records
        self.bytes_sent_total += got.nbytes
        return True

    def _read_range(self, from_seq: int, limit_seq: int, budget: int,
                    allow_oversize: bool) -> _Range | None:
        """Read LOG records ``from_seq..limit_seq`` for one batch (in the worker thread).

        With a shared reader, the batch comes from this shard's queue there;
        where the queue does not hold ``from_seq``, this shipper reads alone,
        up to the seq the reader answers. Alone, version 2 frames are walked
        natively (``select_shard_frames``: checked, routed by their headers
        and copied out without the GIL); a frame without routing fields, a
        version 1 segment and a frame held back by the last batch go through
        ``_frame`` and ``_route`` one at a time."""
        batch = _Batch(from_seq, budget, allow_oversize, self.options.max_batch_records)
        if self._fanout is not None and self._held is None:
            got = self._fanout.take(self.shard_id, from_seq, limit_seq, budget, batch.max_records,
                                    allow_oversize)
            if not isinstance(got, int):
                self._close_cursor()  # not needed while the shared reader serves this shard
                frames, records, nbytes, through, newest, batch.blocked_by = got
                batch.add(frames, records, nbytes, through, newest)
                return batch.done()
            limit_seq = min(limit_seq, got)  # alone up to where its queue there starts
        while batch.seq <= limit_seq and batch.records < batch.max_records:
            if self._held is None and self._select(batch, limit_seq):
                continue
            if batch.blocked_by:
                break
            frame = self._frame(batch.seq)
            if frame is None or not self._take(batch, frame):
                break
        return batch.done()

    def _select(self, batch: _Batch, limit_seq: int) -> bool:
        """Add the shard's frames natively from where the cursor is; False
        when the next frame needs ``_frame`` (or the LOG ends there)."""
        span = self._span(batch.seq)
        if span is None or span.version < 2:
            return False
        try:
            (frames, records, nbytes, offset, next_seq, through, newest, stop,
             blocked_by) = _dataplane.select_shard_frames(
                span.fd, span.path, span.offset, span.end, span.expect_seq, batch.seq, limit_seq,
                self.shard_id, self.n_shards, max(0, batch.budget - batch.nbytes),
                batch.max_records - batch.records, batch.allow_oversize and not batch.records)
        except _dataplane.NativeLogCorruptError as e:
            raise LogCorruptError(*e.args[:3], discontinuity=e.args[3]) from None
        assert self._cursor is not None
        self._cursor.consumed(offset, next_seq)
        batch.add(frames, records, nbytes, through, newest)
        if stop == "budget":
            batch.blocked_by = blocked_by
            return False
        return stop == "done" and offset > span.offset

    def _span(self, seq: int) -> FrameSpan | None:
        """Where this shipper's cursor reads next, at ``seq``."""
        return self._cursor_at(seq).span()

    def _cursor_at(self, seq: int) -> LogCursor:
        """This shipper's cursor, reopened unless it is at ``seq``."""
        cursor = self._cursor
        if cursor is None or cursor.next_seq != seq:
            self._close_cursor()
            cursor = self._cursor = self._log.read(seq)
        return cursor

    def _close_cursor(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None

    def _take(self, batch: _Batch, frame: Frame) -> bool:
        """Add ``frame`` (read by ``_frame``) to the batch if it is the
        shard's; False when it does not fit (it is held for the next batch)."""
        mine, stamp, bad = self._route(frame)
        batch.unroutable += bad
        if mine:
            size = len(frame.payload)
            if batch.nbytes + size > batch.budget and not (batch.allow_oversize and not batch.records):
                # It does not fit: the batch ends before it, and the next
                # read starts with it (reopening the cursor would re-read
                # the LOG from the index point before it).
                batch.blocked_by = size
                self._held = frame
                return False
            batch.add(frame_of(frame, stamp), 1, size, frame.seq, stamp)
        else:
            batch.add(b"", 0, 0, frame.seq, stamp)
        return True

    def _frame(self, seq: int) -> Frame | None:
        """LOG frame ``seq`` from this shipper's cursor (None: past the LOG's end)."""
        held, self._held = self._held, None
        if held is not None and held.seq == seq:
            return held
        try:
            return self._cursor_at(seq).next_frame()
        except StopIteration:
            return None

    def _route(self, frame: Frame) -> tuple[bool, bytes, int]:
        """(belongs to this shard, its 16-byte stamp or b"", 1 if it could not be routed).

        A version-2 frame says both in its header; other frames (version 1,
        or a writer that gave no route) are parsed.
        """
        if frame.route_kind == ROUTE_HANDLE and frame.stamp != NO_STAMP:
            return frame.route % self.n_shards == self.shard_id, frame.stamp, 0
        if frame.route_kind == ROUTE_EVERY_SHARD and frame.stamp != NO_STAMP:
            return True, frame.stamp, 0
        if frame.route_kind == ROUTE_INTENT:
            return False, b"", 0
        return self._route_parsed(frame.seq, frame.payload)

    def _route_parsed(self, seq: int, payload: bytes) -> tuple[bool, bytes, int]:
        try:
            record = parse_record(payload)
        except DecodeError as e:
            logger.error("LOG seq %d is not a Record (%s); shipping it to shard 0", seq, e)
            return self.shard_id == 0, b"", 1
        stamp = record.stamp if len(record.stamp) == Stamp.BYTES else b""
        try:
            return belongs_to(record, self.shard_id, self.n_shards), stamp, 0
        except UnroutableRecordError as e:
            # Never drop it: give it a fixed home so it is stored exactly once.
            logger.error("LOG seq %d: %s; shipping it to shard 0", seq, e)
            return self.shard_id == 0, stamp, 1

    def _batch(self, after_seq: int, through_seq: int, *, claim: bool = True) -> pb.IngestBatch:
        """The batch for ``(after_seq, through_seq]``, without records."""
        batch = pb.IngestBatch()
        batch.stream.CopyFrom(self.stream)
        batch.after_seq, batch.through_seq = after_seq, through_seq
        batch.defer_durable = True  # acked_seq (durable) bounds what the LOG may drop
        if claim:
            stable = self._claims.claim(through_seq)
            if stable is not None:
                batch.stable = stable.to_bytes()
        if self._newest != Stamp.ZERO:
            batch.newest = self._newest.to_bytes()
        return batch

    async def _send(self, call: grpc.aio.StreamStreamCall, batch: pb.IngestBatch,
                    nbytes: int, frames: bytes = b"") -> None:
        batch.sent_stamp = self._clock.now().to_bytes()
        self._stream.sent(batch.after_seq, batch.through_seq, nbytes, time.monotonic())
        self.batches_sent_total += 1
        await call.write(SentBatch(batch, frames) if frames else batch)
