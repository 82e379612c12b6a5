"""The journaling relay: the thin asyncio shell around the sans-IO parts.

Each client connection (`ClientSession`) gets its own connections to the
NAS (`BackendLink`, one for NFS and one for MOUNT, opened on first use).
RPC messages are relayed both ways byte for byte; the proxy only parses the
call header, the arguments of calls it watches, and their replies (matched
by XID). A mutation's record is stamped when the call arrives and journaled
when the reply arrives; with `sync` durability the reply reaches the client
only after its record is fsynced.

Flow control follows uvicorn: a peer whose write buffer passes the
high-water mark pauses reading on the other side until it drains.

A protocol error from a client closes that client alone. A NAS connection
that fails or closes closes its client, which retries as it would against
the NAS itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Callable

from logstore.record import Op, Record
from logstore.stamp import Stamp

from .capture import Capture, Pending
from .hlc import HLC
from .journal import Journal, QuotaWait
from .limits import clamp_fsinfo_reply, max_message_bytes
from .nfs3 import NFS_PROGRAM, Proc3
from .stats import RelayStats
from .routing import Route, answer_portmap, reject, route
from .rpc import (RpcCall, RpcDecodeError, RpcMessageReader, RpcReply, NEED_DATA,
                  frame_rpc_message, parse_message)

__all__ = ["BackendAddress", "Proxy", "ClientSession"]

logger = logging.getLogger(__name__)

#: How long a closed client's relayed mutations may take to be answered and journaled.
DRAIN_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class BackendAddress:
    """Where the NAS serves NFS and MOUNT, and which export clients mount."""

    host: str
    nfs_port: int
    mount_port: int
    export: str

    def __str__(self) -> str:
        return f"{self.host}:{self.nfs_port}:{self.mount_port}:{self.export}"


class Proxy:
    """Accepts clients and relays them to the NAS, journaling mutations."""

    def __init__(self, backend: BackendAddress, journal: Journal | None, clock: HLC,
                 *, capture: Capture | None = None, max_payload_bytes: int = 4 << 20):
        self.backend = backend
        self.journal = journal
        self.clock = clock
        self.capture = capture or Capture()
        self.max_payload_bytes = max_payload_bytes
        self.max_message_bytes = max_message_bytes(max_payload_bytes)
        self.drain_timeout_s = DRAIN_TIMEOUT_S  # a closed client's relayed mutations get this long
        self.port = 0
        self.stats = RelayStats()
        self.sessions: set[ClientSession] = set()
        self._inflight: dict[int, bytes] = {}  # id(pending) -> stamp bytes, not yet in the LOG
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None
        #: Called with every successful RENAME/LINK record (a running baseline listens).
        self.namespace_watchers: set[Callable[[Record], None]] = set()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: ClientSession(self), host, port,
                                                reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("proxy listening on %s:%d, NAS %s", host, self.port, self.backend)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop listening, close clients, wait for journal writes, cancel the rest."""
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.close()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in late:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    # -- stamps ----------------------------------------------------------------

    def stamp_call(self, key: int) -> bytes:
        """Stamp a call on arrival; the stamp counts as in flight until released."""
        stamp = self.clock.now().to_bytes()
        self._inflight[key] = stamp
        return stamp

    def hold(self, key: int, stamp: bytes) -> None:
        """Keep `stamp` (or an older one already held under `key`) in flight."""
        self._inflight[key] = min(stamp, self._inflight.get(key, stamp))

    def release(self, key: int) -> None:
        self._inflight.pop(key, None)

    async def settle_below(self, stamp: bytes, own_key: int | None = None) -> None:
        """Wait until every call stamped below `stamp` (but `own_key`'s) has its reply.

        The baseline reads an object only after this: a call stamped before
        the piece is then applied on the NAS and visible in what it reads.
        Calls stamped later are replayed on top of the piece at restore time.
        """
        while any(s < stamp for k, s in self._inflight.items() if k != own_key):
            await asyncio.sleep(0.0005)

    def stable_stamp(self) -> Stamp:
        """A stamp below every stamp not yet in the LOG: heartbeats may carry it."""
        now = self.clock.now()
        if not self._inflight:
            return now.to_stamp()
        low = Stamp.from_bytes(min(self._inflight.values()))
        if low.logical:
            return Stamp(low.wall_ns, low.logical - 1, low.node_id)
        return Stamp(low.wall_ns - 1, 0xFFFFFFFF, low.node_id)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class _Peer(asyncio.Protocol):
    """A transport whose outgoing RPC messages are coalesced per loop turn.

    Messages sent while handling one read (or one turn of the loop) leave in
    one `writelines`, so a burst of pipelined calls costs one send() instead
    of one per message. Large messages are written one by one: the transport
    sends a buffer straight from the memoryview when it can, where
    `writelines` would first join (copy) them.
    """

    transport: asyncio.Transport | None = None
    _COALESCE_BYTES = 256 << 10

    def __init__(self) -> None:
        self._out: list[bytes | memoryview] = []
        self._out_bytes = 0
        self._flush_scheduled = False

    def _queue_out(self, message: bytes | memoryview) -> None:
        self._out.append(frame_rpc_message(len(message)))
        self._out.append(message)
        self._out_bytes += len(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        big, self._out_bytes = self._out_bytes >= self._COALESCE_BYTES, 0
        if not out or self.transport is None or self.transport.is_closing():
            return
        if big:
            for part in out:
                self.transport.write(part)
        else:
            self.transport.writelines(out)


class ClientSession(_Peer):
    """One client connection and its NAS connections."""

    def __init__(self, proxy: Proxy):
        super().__init__()
        self.proxy = proxy
        self.reader = RpcMessageReader(proxy.max_message_bytes)
        self.pending: dict[int, Pending] = {}
        self.fsinfo_xids: set[int] = set()  # FSINFO calls whose replies get clamped
        self.timings: dict[int, tuple[tuple[int, int], float]] = {}  # xid -> (prog, proc), arrival
        self.links: dict[Route, BackendLink] = {}
        self.peer = "?"
        self.closed = False
        self.held = False  # a call waits for LOG space; later calls wait behind it

    # -- client side -------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = f"{host}:{port}"
        self.proxy.sessions.add(self)
        self.proxy.stats.sessions_total += 1
        self.proxy.stats.sessions_open += 1

    def data_received(self, data: bytes) -> None:
        self.reader.receive(data)
        self._process()

    def _process(self) -> None:
        try:
            while not self.held and (message := self.reader.next_message()) is not NEED_DATA:
                self._on_call(message)
        except RpcDecodeError as e:
            self.proxy.stats.protocol_errors_total += 1
            logger.warning("client %s broke the RPC protocol (%s); closing its connection", self.peer, e)
            self.close()

    def _on_call(self, message: memoryview) -> None:
        call, body = parse_message(message)
        if not isinstance(call, RpcCall):
            raise RpcDecodeError("a client sent a REPLY")
        key = (call.prog, call.proc)
        self.proxy.stats.call(key, len(message))
        where = route(call)
        if where is Route.REJECT:
            self.send(reject(call))
        elif where is Route.PORTMAP:
            self.send(answer_portmap(call, body, self.proxy.port))
        else:
            self._relay(where, call, body, message)

    def _relay(self, where: Route, call: RpcCall, body: memoryview, message: memoryview) -> None:
        proxy = self.proxy
        self.timings[call.xid] = (call.prog, call.proc), time.perf_counter()
        if call.prog == NFS_PROGRAM and call.proc == Proc3.FSINFO:
            self.fsinfo_xids.add(call.xid)
        pending = proxy.capture.begin(call, body, b"", self.peer)
        if pending is not None:
            if pending.record is not None:
                pending.record.stamp = proxy.stamp_call(id(pending))
            self.pending[call.xid] = pending
        link = self.links.get(where)
        if link is None:
            link = self.links[where] = BackendLink(self, where)
        if pending is not None and pending.record is not None and proxy.journal is not None \
                and proxy.journal.must_hold():
            # Block policy: a mutation must not reach the NAS while its record
            # could not be journaled. Hold it, and read nothing more meanwhile.
            self.held = True
            self.transport.pause_reading()
            proxy.spawn(self._send_when_space(link, message))
            return
        link.send(message)

    async def _send_when_space(self, link: "BackendLink", message: memoryview) -> None:
        await self.proxy.journal.wait_until_journaling()
        if self.closed:
            return
        link.send(message)
        self.held = False
        self.transport.resume_reading()
        self._process()

    def send(self, message: bytes | memoryview, timing: tuple[tuple[int, int], float] | None = None) -> None:
        """Send a reply; `timing` (the call's key and arrival) records client-seen latency."""
        if self.transport is not None and not self.closed:
            self._queue_out(message)
            if timing is not None:
                self.proxy.stats.client_reply(timing[0], time.perf_counter() - timing[1])

    # -- replies -------------------------------------------------------------------

    def on_reply(self, message: memoryview) -> None:
        reply, body = parse_message(message)
        if not isinstance(reply, RpcReply):
            raise RpcDecodeError("the NAS sent a CALL")
        timing = self.timings.pop(reply.xid, None)
        if timing is not None:
            self.proxy.stats.backend_reply(timing[0], len(message), time.perf_counter() - timing[1])
        pending = self.pending.pop(reply.xid, None)
        if pending is None:
            if self.fsinfo_xids and reply.xid in self.fsinfo_xids:
                self.fsinfo_xids.discard(reply.xid)
                if reply.success:
                    message = clamp_fsinfo_reply(reply, body, self.proxy.max_payload_bytes) or message
            self.send(message, timing)
            return
        proxy = self.proxy
        records = proxy.capture.complete(pending, reply, body, lambda: proxy.clock.now().to_bytes())
        if not records or proxy.journal is None:
            proxy.release(id(pending))
            self.send(message, timing)
            return
        if proxy.namespace_watchers:
            for record, _ in records:
                if record.ok and record.op in (Op.RENAME, Op.LINK):
                    for watch in list(proxy.namespace_watchers):
                        watch(record)
        proxy.hold(id(pending), min(record.stamp for record, _ in records))
        try:
            durable = self._journal_now(records)
        except QuotaWait:
            proxy.spawn(self._journal_then_reply(pending, records, message, timing))
            return
        except Exception:
            logger.exception("journaling failed; closing client %s", self.peer)
            proxy.release(id(pending))
            self.close()
            return
        proxy.release(id(pending))  # written: the stamp is in the LOG now
        if durable is None:
            self.send(message, timing)
        else:
            durable.add_done_callback(lambda f: self._reply_if_durable(f, message, timing))

    def _journal_now(self, records: list[tuple[Record, memoryview | None]]) -> asyncio.Future | None:
        """The fast path: append without a task; the last record's durability covers all."""
        if not self.proxy.journal.fast_path_open:
            raise QuotaWait()
        durable = None
        stats = self.proxy.stats
        for record, data in records:
            durable = self.proxy.journal.append_nowait(record, data)
            stats.records_total += 1
            if not record.ok:
                stats.failed_mutations_total += 1
        return durable

    def _reply_if_durable(self, durable: asyncio.Future, message: memoryview, timing) -> None:
        if durable.cancelled() or durable.exception() is not None:
            logger.error("LOG fsync failed (%s); closing client %s without its reply",
                         durable.exception() if not durable.cancelled() else "cancelled", self.peer)
            self.close()
            return
        self.send(message, timing)

    async def _journal_then_reply(self, pending: Pending, records: list[tuple[Record, memoryview | None]],
                                  message: memoryview, timing) -> None:
        proxy = self.proxy
        try:
            for record, data in records:
                await proxy.journal.append(record, data)
                proxy.stats.records_total += 1
                if not record.ok:
                    proxy.stats.failed_mutations_total += 1
        except Exception:
            # Without a journaled record the client must not see success:
            # drop the connection so it retries (and we retry journaling).
            logger.exception("journaling failed; closing client %s", self.peer)
            self.close()
            return
        finally:
            proxy.release(id(pending))
        self.send(message, timing)

    # -- lifecycle -------------------------------------------------------------------

    def backend_failed(self, where: Route, error: BaseException | None) -> None:
        if not self.closed:
            self.proxy.stats.backend_failures_total += 1
            logger.warning("NAS %s connection for client %s ended (%s); closing the client",
                           where.value, self.peer, error or "closed by the NAS")
        self.close()

    def close(self) -> None:
        """Close the client. Mutations already relayed still run on the NAS, so
        their NAS connections stay open until the replies are journaled."""
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        if self._mutations_in_flight():
            self.proxy.spawn(self._drain())
        else:
            self._close_links()

    def _mutations_in_flight(self) -> bool:
        return any(p.record is not None for p in self.pending.values()) and \
            any(not link.closed for link in self.links.values())

    async def _drain(self) -> None:
        deadline = asyncio.get_running_loop().time() + self.proxy.drain_timeout_s
        try:
            while self._mutations_in_flight() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
        finally:  # also when shutdown cancels the wait: what is still out becomes a gap
            self._close_links()

    def _close_links(self) -> None:
        for link in self.links.values():
            link.close()
        lost = [p for p in self.pending.values() if p.record is not None]
        if lost:
            logger.error("client %s: %d relayed mutation(s) got no NAS reply; their outcome is "
                         "unknown and they are not journaled: marking a gap", self.peer, len(lost))
            if self.proxy.journal is not None:
                for pending in lost:  # held in flight by the journal until its GAP record is written
                    self.proxy.journal.mark_gap(
                        pending.record.stamp, "no_reply",
                        f"a {Op.Name(pending.record.op)} from client {self.peer} was relayed to "
                        "the NAS, but its reply never came: its outcome is unknown")
        for pending in self.pending.values():
            self.proxy.release(id(pending))
        self.pending.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        self.proxy.sessions.discard(self)
        self.proxy.stats.sessions_open -= 1

    def pause_writing(self) -> None:
        for link in self.links.values():
            link.pause_reading()

    def resume_writing(self) -> None:
        for link in self.links.values():
            link.resume_reading()


class BackendLink(_Peer):
    """One connection to the NAS on behalf of one client session."""

    def __init__(self, session: ClientSession, where: Route):
        super().__init__()
        self.session = session
        self.where = where
        self.reader = RpcMessageReader(session.proxy.max_message_bytes)
        self.queue: list[memoryview] | None = []  # messages sent before the connection is up
        self.closed = False
        self.paused = False
        session.proxy.spawn(self._connect())

    async def _connect(self) -> None:
        backend = self.session.proxy.backend
        port = backend.mount_port if self.where is Route.MOUNT else backend.nfs_port
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: self, backend.host, port)
        except OSError as e:
            self.session.backend_failed(self.where, e)

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        if self.closed:
            transport.close()
            return
        queued, self.queue = self.queue, None
        for message in queued:
            self.send(message)
        if self.paused:
            transport.pause_reading()

    def send(self, message: memoryview) -> None:
        if self.queue is not None:
            self.queue.append(message)
        elif not self.closed:
            self._queue_out(message)

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.receive(data)
            while (message := self.reader.next_message()) is not NEED_DATA:
                self.session.on_reply(message)
        except RpcDecodeError as e:
            self.session.backend_failed(self.where, e)

    def pause_writing(self) -> None:
        if self.session.transport is not None:
            self.session.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.session.transport is not None and not self.session.closed:
            self.session.transport.resume_reading()

    def pause_reading(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed, self.closed = self.closed, True
        if not was_closed:
            self.session.backend_failed(self.where, exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
