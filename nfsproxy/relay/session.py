"""The journaling relay: the thin asyncio shell around the sans-IO parts.

Each client connection (`ClientSession`) gets its own connections to the
NAS (`BackendLink`, one for NFS and one for MOUNT, opened on first use).
RPC messages are relayed both ways byte for byte but for the XID: each call
gets its own XID on the NAS connection, so replies match calls one to one
even when a client reuses an XID (`xid_table` says why). The proxy only
parses the call header, the arguments of calls it watches, and their
replies. A mutation's record is stamped when the call arrives and journaled
when the reply arrives; with `sync` durability the reply reaches the client
only after its record is fsynced. A mutation that conflicts with one still in
flight waits for that one's reply and is stamped when it leaves
(`nfsproxy.relay.conflict`), so stamp order is the NAS's order for conflicting calls.

Flow control follows uvicorn: a peer whose write buffer passes the
high-water mark pauses reading on the other side until it drains; each
connection's reasons to pause live in one `FlowControl`.

A protocol error from a client closes that client alone. A NAS connection
that fails or closes closes its client, which retries as it would against
the NAS itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from typing import Callable

from logstore.record import Op, Record
from logstore.stamp import Stamp

from nfsproxy.relay.capture import Capture
from nfsproxy.relay.conflict import ConflictTable, claims_of
from nfsproxy.relay.flow import FlowControl
from logstore.hlc import HLC
from nfsproxy.relay.journal import Journal, QuotaWait
from nfsproxy.relay.limits import clamp_fsinfo_reply, max_message_bytes
from nfsproxy.relay.locks import LockDatagrams, LockRelay
from nfsproxy.wire.nlm import TOWARD_CLIENT, SmProc, decode_sm_notify
from nfsproxy.wire.nfs3 import NFS_PROGRAM, Proc3
from nfsproxy.relay.stats import RelayStats
from nfsproxy.relay.xid_table import Call, XidTable, framed_with_xid, nas_xid_counter
from nfsproxy.relay.routing import Route, answer_portmap, reject, route
from nfsproxy.wire.rpc import (AuthFlavor, RpcCall, RpcDecodeError, RpcMessageReader, RpcReply, NEED_DATA,
                  frame_rpc_message, parse_message)

__all__ = ["BackendAddress", "Proxy", "ClientSession"]

logger = logging.getLogger(__name__)

# FlowControl reasons besides a NAS link (which is its own reason on its client).
_HELD_FOR_LOG_SPACE = "held for LOG space"
_CLIENT_FULL = "client write buffer full"

#: How long a closed client's relayed mutations may take to be answered and journaled.
DRAIN_TIMEOUT_S = 30.0

#: Routes whose NAS port is asked from the NAS's portmapper, per program version.
_LOCK_ROUTES = (Route.NLM, Route.NSM)


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
        self.next_nas_xid = nas_xid_counter()  # proxy-wide: no NAS connection sees an XID twice
        #: Mutations of all sessions in flight or held behind a conflicting one (nfsproxy.relay.conflict).
        self.conflicts = ConflictTable()
        self._held_calls: dict[int, tuple[ClientSession, Call, BackendLink]] = {}
        self._settling: list[_Settling] = []  # settle_below calls waiting for releases
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None
        #: Called with every successful RENAME/LINK record (a running baseline listens).
        self.namespace_watchers: set[Callable[[Record], None]] = set()
        #: Locking: which client a callback of the NAS is for, where the NAS's NLM/NSM are.
        self.locks = LockRelay(backend.host, self.stats, self.next_nas_xid)
        self._portmap_servers: list[asyncio.Server] = []
        self._datagrams: list[asyncio.DatagramTransport] = []

    async def start(self, host: str, port: int, portmap: tuple[tuple[str, int], ...] = ()) -> None:
        """Serve on `host`:`port`, and also on each `portmap` address (normally port 111,
        where lock managers ask for NLM: the same service, answering GETPORT there)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: ClientSession(self), host, port,
                                                reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        for pm_host, pm_port in portmap:
            self._portmap_servers.append(await loop.create_server(
                lambda: ClientSession(self), pm_host, pm_port, reuse_address=True))
        # Status monitors send SM_NOTIFY over UDP: the same ports serve it there.
        for udp_host, udp_port in ((host, self.port), *portmap):
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: LockDatagrams(self.locks, self.port, self.spawn), (udp_host, udp_port))
            except OSError as e:  # locking works without; only reboot notices are lost
                logger.warning("no SM_NOTIFY over UDP on %s:%d (%s): status monitors' reboot "
                               "notices will not reach the proxy there", udp_host, udp_port, e.strerror)
                continue
            self._datagrams.append(transport)
        self.locks.nas_hosts |= await _addresses_of(self.backend.host)
        logger.info("proxy listening on %s:%d, NAS %s", host, self.port, self.backend)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop listening, close clients, wait for journal writes, cancel the rest."""
        for server in self._portmap_servers:
            server.close()
        for transport in self._datagrams:
            transport.close()
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.close()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in late:
                task.cancel()
            # A cancelled task marks its call's gap on its way out: let it,
            # before the journal writes its last GAP record and closes.
            await asyncio.gather(*late, return_exceptions=True)
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
        held = self._inflight[key] = min(stamp, self._inflight.get(key, stamp))
        for waiter in self._settling:
            if held < waiter.below and key != waiter.own_key:
                waiter.blockers.add(key)

    def release(self, key: int) -> None:
        """The stamp held under `key` is in the LOG (or will never be): wake whoever waited on it."""
        self._inflight.pop(key, None)
        for waiter in self._settling:
            waiter.blockers.discard(key)
            if not waiter.blockers and not waiter.woken.done():
                waiter.woken.set_result(None)

    async def settle_below(self, stamp: bytes, own_key: int | None = None) -> None:
        """Wait until every call stamped below `stamp` (but `own_key`'s) has its reply.

        The baseline reads an object only after this: a call stamped before
        the piece is then applied on the NAS and visible in what it reads.
        Calls stamped later are replayed on top of the piece at restore time.
        Woken by `release` of the last such call, never by polling.
        """
        while True:
            blockers = {k for k, s in self._inflight.items() if s < stamp and k != own_key}
            if not blockers:
                return
            # Stamps taken from now on are above `stamp` (the clock is monotonic),
            # so only these keys can hold it back; `hold` adds any lowered below it.
            # Looking again after the wake-up covers a key set some other way.
            waiter = _Settling(stamp, own_key, blockers, asyncio.get_running_loop().create_future())
            self._settling.append(waiter)
            try:
                await waiter.woken
            finally:
                self._settling.remove(waiter)

    def release_conflicts(self, key: int) -> None:
        """A mutation's reply is back (or it is abandoned): send the calls held behind it."""
        self._held_calls.pop(key, None)  # abandoned while held
        for freed in self.conflicts.release(key):
            session, call, link = self._held_calls.pop(freed)
            session.send_released(call, link)

    def stamps_in_flight(self) -> int:
        """How many stamps are taken and not yet released (calls awaiting reply or LOG)."""
        return len(self._inflight)

    def intent_floor(self) -> int | None:
        """None: this relay writes no intents ahead (its replies wait for their records)."""
        return None

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


async def _addresses_of(host: str) -> set[str]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    return {info[4][0] for info in infos}


@dataclasses.dataclass(eq=False, slots=True)
class _Settling:
    """One `settle_below` call: woken once every key in `blockers` is released."""

    below: bytes
    own_key: int | None
    blockers: set[int]
    woken: asyncio.Future


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
        self.flow = FlowControl()
        self._out: list[bytes | memoryview] = []
        self._out_bytes = 0
        self._flush_scheduled = False

    def _queue_out(self, message: bytes | memoryview, xid: int | None = None) -> None:
        """Queue one message; with `xid`, its XID is replaced on the way out."""
        if xid is None:
            self._out.append(frame_rpc_message(len(message)))
            self._out.append(message)
        else:
            self._out.extend(framed_with_xid(xid, message))
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
        self.calls = XidTable(proxy.next_nas_xid)  # relayed calls not yet answered
        self.links: dict[Route | tuple[Route, int], BackendLink] = {}  # lock routes: per version
        self.peer = "?"
        self.peer_host = "?"
        self.peer_address: tuple[str, int] = ("?", 0)
        self.local_host = "127.0.0.1"  # this end of the connection: the proxy as the client knows it
        self.from_nas = False  # the NAS calling back (lock callbacks, SM_NOTIFY)
        self.closed = False
        self.held = False  # a call waits for LOG space; later calls wait behind it

    # -- client side -------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.flow.attach(transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = f"{host}:{port}"
        self.peer_host = host
        self.local_host = transport.get_extra_info("sockname")[0]
        self.peer_address = (host, port)
        self.from_nas = host in self.proxy.locks.nas_hosts
        self.proxy.sessions.add(self)
        self.proxy.stats.sessions_total += 1
        self.proxy.stats.sessions_open += 1

    def data_received(self, data: bytes) -> None:
        self.reader.receive(data)
        self._process()
        if self.held and self.reader.buffered_bytes > self.proxy.max_message_bytes:
            # Calls queue behind a held one; past one message's worth, stop reading.
            # Reading on until then lets a client that hangs up be noticed (and its
            # held call dropped) instead of waiting for LOG space that may never come.
            self.flow.pause(_HELD_FOR_LOG_SPACE)

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
            self.send(answer_portmap(call, body, self.proxy.port, self.local_host))
        elif where in _LOCK_ROUTES:
            self._lock_call(where, call, body, message)
        else:
            self._relay(where, call, body, message)

    # -- locking ---------------------------------------------------------------

    def _lock_call(self, where: Route, call: RpcCall, body: memoryview, message: memoryview) -> None:
        """NLM and NSM: a client's call goes to the NAS; the NAS's callbacks go to their
        client; SM_NOTIFY is handled by the proxy (`nfsproxy.relay.locks.LockRelay`)."""
        locks = self.proxy.locks
        if where is Route.NLM and call.proc in TOWARD_CLIENT:
            # Only the NAS may grant: a client's forged GRANTED would reach another
            # client from its server's address, which that client believes.
            host = locks.routes.client_for(call.proc, body) if self.from_nas else None
            # Copied: the read buffer moves on while the callback is out.
            self._reply_later(locks.pass_callback(call, bytes(message), host, self.peer_address))
        elif where is Route.NSM and call.proc == SmProc.NOTIFY:
            name, state = decode_sm_notify(body)
            self._reply_later(locks.nas_rebooted(call, state) if self.from_nas
                              else locks.client_rebooted(call, self.peer_host, name))
        else:
            if where is Route.NLM:
                locks.routes.note_call(call.proc, body, self.peer_host, self.local_host, call.vers)
            self._relay(where, call, body, message)

    def _reply_later(self, answer) -> None:
        async def send() -> None:
            self.send(await answer)
        self.proxy.spawn(send())

    # -- relaying ----------------------------------------------------------------

    def _relay(self, where: Route, rpc_call: RpcCall, body: memoryview, message: memoryview) -> None:
        proxy = self.proxy
        pending = proxy.capture.begin(rpc_call, body, b"", self.peer)
        call = self.calls.admit(
            rpc_call.xid, message, route=where, pending=pending,
            keep_xid=rpc_call.cred.flavor == AuthFlavor.RPCSEC_GSS,
            proc_key=(rpc_call.prog, rpc_call.proc), arrival_s=time.perf_counter(),
            clamp_fsinfo=rpc_call.prog == NFS_PROGRAM and rpc_call.proc == Proc3.FSINFO)
        if call is None:
            proxy.stats.retransmissions_absorbed_total += 1
            return
        if pending is not None and pending.record is not None:
            pending.record.stamp = proxy.stamp_call(id(pending))
        key = (where, rpc_call.vers) if where in _LOCK_ROUTES else where
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = BackendLink(self, where, rpc_call.prog, rpc_call.vers)
        if pending is not None and pending.record is not None and self._held_back(call, link):
            return
        if pending is not None and pending.record is not None and proxy.journal is not None \
                and proxy.journal.must_hold():
            # Block policy: a mutation must not reach the NAS while its record
            # could not be journaled. Hold it, and later calls behind it.
            self.held = True
            proxy.spawn(self._send_when_space(link, call))
            return
        self._send_call(link, call)

    def _send_call(self, link: "BackendLink", call: Call) -> None:
        call.sent = True
        link.send(call.message, call.nas_xid)

    def _held_back(self, call: Call, link: "BackendLink") -> bool:
        """Hold a mutation that conflicts with one in flight, until that one's reply is back.

        Its arrival stamp is dropped: `send_released` stamps it when it leaves,
        after the NAS applied the earlier call, so for conflicting calls stamp
        order is the NAS's order. Later calls of this session keep flowing.
        """
        proxy, pending = self.proxy, call.pending
        if proxy.conflicts.admit(id(pending), claims_of(pending.record, proxy.capture.bindings.handle_of)):
            return False
        proxy.release(id(pending))
        proxy._held_calls[id(pending)] = (self, call, link)
        proxy.stats.conflict_holds_total += 1
        return True

    def send_released(self, call: Call, link: "BackendLink") -> None:
        """Send a held mutation whose earlier conflicting calls are all answered.

        A held call of a client that left was dropped with its stamp when it
        closed (`_drop_unsent`): it never reached the NAS, and the client,
        which got no reply, retries it. If the NAS link is closed, likewise.
        """
        proxy, pending = self.proxy, call.pending
        if link.closed:
            self.calls.finish(call)
            proxy.release_conflicts(id(pending))
            return
        pending.record.stamp = proxy.stamp_call(id(pending))
        if proxy.journal is not None and proxy.journal.must_hold():
            proxy.spawn(self._send_released_when_space(call, link))
            return
        self._send_call(link, call)

    async def _send_released_when_space(self, call: Call, link: "BackendLink") -> None:
        # Block policy: as in `_send_when_space`, nothing reaches the NAS unjournaled.
        try:
            await self.proxy.journal.wait_until_journaling()
        except Exception:  # noqa: BLE001  the LOG failed: nothing can be journaled
            logger.exception("cannot journal; closing client %s with a call held unsent", self.peer)
            self.close()
            return
        if self.closed:
            return  # close() dropped the call and released its stamp
        if link.closed:
            self.calls.finish(call)
            self._release(call)
            return
        self._send_call(link, call)

    async def _send_when_space(self, link: "BackendLink", call: Call) -> None:
        try:
            await self.proxy.journal.wait_until_journaling()
        except Exception:  # noqa: BLE001  the LOG failed: nothing can be journaled
            # The call never reached the NAS; close() drops it and its stamp,
            # and the client retries on a new connection.
            logger.exception("cannot journal; closing client %s with a call held unsent", self.peer)
            self.close()
            return
        if self.closed:
            return  # close() dropped the call and released its stamp
        self._send_call(link, call)
        self.held = False
        self.flow.resume(_HELD_FOR_LOG_SPACE)
        self._process()

    def send(self, message: bytes | memoryview) -> None:
        """Send a message the proxy made itself (a refusal, a portmap answer)."""
        if self.transport is not None and not self.closed:
            self._queue_out(message)

    def _answer(self, call: Call, message: bytes | memoryview) -> None:
        """Send the NAS's reply to `call` under the client's XID; record client-seen latency."""
        if self.transport is not None and not self.closed:
            self._queue_out(message, call.client_xid)
            self.proxy.stats.client_reply(call.proc_key, time.perf_counter() - call.arrival_s)

    # -- replies -------------------------------------------------------------------

    def on_reply(self, message: memoryview) -> None:
        """Match a NAS reply to its call, journal what it completes, answer the client.

        Raises RpcDecodeError when the reply does not decode; its call then
        stays in the table, as a call without a reply (outcome unknown).
        """
        reply, body = parse_message(message)
        if not isinstance(reply, RpcReply):
            raise RpcDecodeError("the NAS sent a CALL")
        call = self.calls.match(reply.xid)
        if call is None:
            # Every call has its own NAS XID: this reply answers nothing we sent.
            self.proxy.stats.unmatched_replies_total += 1
            logger.warning("NAS reply to XID %#010x matches no call of client %s; dropped",
                           reply.xid, self.peer)
            return
        self.proxy.stats.backend_reply(call.proc_key, len(message), time.perf_counter() - call.arrival_s)
        if call.pending is not None and call.pending.record is not None:
            self.proxy.release_conflicts(id(call.pending))  # the NAS applied it: held calls may go
        if call.pending is None:
            self.calls.finish(call)
            if call.clamp_fsinfo and reply.success:
                message = clamp_fsinfo_reply(reply, body, self.proxy.max_payload_bytes) or message
            self._answer(call, message)
            return
        proxy = self.proxy
        records = proxy.capture.complete(call.pending, reply, body, lambda: proxy.clock.now().to_bytes())
        self.calls.finish(call)
        try:
            self._journal_reply(call, records, message)
        except Exception:
            logger.exception("journaling failed; closing client %s", self.peer)
            proxy.release(id(call.pending))
            self.close()

    def _journal_reply(self, call: Call, records: list[tuple[Record, memoryview | None]],
                       message: memoryview) -> None:
        proxy, pending = self.proxy, call.pending
        if not records or proxy.journal is None:
            proxy.release(id(pending))
            self._answer(call, message)
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
            proxy.spawn(self._journal_then_reply(call, records, message))
            return
        proxy.release(id(pending))  # written: the stamp is in the LOG now
        if durable is None:
            self._answer(call, message)
        else:
            durable.add_done_callback(lambda f: self._reply_if_durable(f, call, message))

    def _journal_now(self, records: list[tuple[Record, memoryview | None]]) -> asyncio.Future | None:
        """The fast path: append without a task; the last record's durability covers all."""
        if not self.proxy.journal.fast_path_open:
            raise QuotaWait()
        durable = None
        stats = self.proxy.stats
        for record, data in records:
            durable = self.proxy.journal.append_nowait(record, data)
            if not record.ok:
                stats.failed_mutations_total += 1
        return durable

    def _reply_if_durable(self, durable: asyncio.Future, call: Call, message: memoryview) -> None:
        if durable.cancelled() or durable.exception() is not None:
            logger.error("LOG fsync failed (%s); closing client %s without its reply",
                         durable.exception() if not durable.cancelled() else "cancelled", self.peer)
            self.close()
            return
        self._answer(call, message)

    async def _journal_then_reply(self, call: Call, records: list[tuple[Record, memoryview | None]],
                                  message: memoryview) -> None:
        proxy = self.proxy
        try:
            for record, data in records:
                await proxy.journal.append(record, data)
                if not record.ok:
                    proxy.stats.failed_mutations_total += 1
        except Exception:
            # Without a journaled record the client must not see success:
            # drop the connection so it retries (and we retry journaling).
            logger.exception("journaling failed; closing client %s", self.peer)
            self.close()
            return
        finally:
            proxy.release(id(call.pending))
        self._answer(call, message)

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
        self._drop_unsent()
        if self._mutations_in_flight():
            self.proxy.spawn(self._drain())
        else:
            self._close_links()

    def _drop_unsent(self) -> None:
        # A call held back (block quota) never reached the NAS: nothing to wait for.
        for call in self.calls:
            if not call.sent:
                self.calls.finish(call)
                self._release(call)

    def _mutations_in_flight(self) -> bool:
        """True while a relayed mutation may still get its reply (its NAS connection is open)."""
        for call in self.calls:
            if call.pending is not None and call.pending.record is not None:
                link = self.links.get(call.route)
                if link is not None and not link.closed:
                    return True
        return False

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
        calls = self.calls.clear()
        lost = [c for c in calls if c.pending is not None and c.pending.record is not None]
        if lost:
            logger.error("client %s: %d relayed mutation(s) got no NAS reply; their outcome is "
                         "unknown and they are not journaled: marking a gap", self.peer, len(lost))
            if self.proxy.journal is not None:
                for call in lost:  # held in flight by the journal until its GAP record is written
                    record = call.pending.record
                    self.proxy.journal.mark_gap(
                        record.stamp, "no_reply",
                        f"a {Op.Name(record.op)} from client {self.peer} was relayed to "
                        "the NAS, but its reply never came: its outcome is unknown")
        for call in calls:
            self._release(call)

    def _release(self, call: Call) -> None:
        if call.pending is not None:
            self.proxy.release(id(call.pending))
            if call.pending.record is not None:
                self.proxy.release_conflicts(id(call.pending))  # calls held behind it may go

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        self.proxy.sessions.discard(self)
        self.proxy.stats.sessions_open -= 1

    def pause_writing(self) -> None:
        for link in self.links.values():
            link.flow.pause(_CLIENT_FULL)

    def resume_writing(self) -> None:
        for link in self.links.values():
            link.flow.resume(_CLIENT_FULL)


class BackendLink(_Peer):
    """One connection to the NAS on behalf of one client session."""

    def __init__(self, session: ClientSession, where: Route, prog: int = 0, vers: int = 0):
        super().__init__()
        self.session = session
        self.where = where
        self.prog, self.vers = prog, vers  # asked from the NAS's portmapper for lock routes
        self.reader = RpcMessageReader(session.proxy.max_message_bytes)
        self.queue: list[tuple[memoryview, int]] | None = []  # calls sent before the connection is up
        self.closed = False
        session.proxy.spawn(self._connect())

    async def _connect(self) -> None:
        proxy = self.session.proxy
        backend = proxy.backend
        port = backend.mount_port if self.where is Route.MOUNT else backend.nfs_port
        loop = asyncio.get_running_loop()
        try:
            if self.where in _LOCK_ROUTES:
                await proxy.locks.nas_ports.connect(self.prog, self.vers, lambda: self)
            else:
                await loop.create_connection(lambda: self, backend.host, port)
        except (OSError, asyncio.TimeoutError, RpcDecodeError) as e:
            self.closed = True  # nothing will answer: the session must not drain for it
            self.session.backend_failed(self.where, e)

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        if self.closed:
            transport.close()
            return
        queued, self.queue = self.queue, None
        for message, xid in queued:
            self.send(message, xid)
        self.flow.attach(transport)

    def send(self, message: memoryview, xid: int) -> None:
        """Send a call under `xid` (the NAS-side XID the session gave it)."""
        if self.queue is not None:
            self.queue.append((message, xid))
        elif not self.closed:
            self._queue_out(message, xid)

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.receive(data)
            while (message := self.reader.next_message()) is not NEED_DATA:
                self.session.on_reply(message)
        except RpcDecodeError as e:
            # The NAS broke the protocol: nothing more from this connection can be
            # trusted, so the calls still waiting on it will get no reply.
            self.close()
            self.session.backend_failed(self.where, e)

    def pause_writing(self) -> None:
        self.session.flow.pause(self)  # this NAS connection's buffer is full

    def resume_writing(self) -> None:
        self.session.flow.resume(self)

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed, self.closed = self.closed, True
        if not was_closed:
            self.session.backend_failed(self.where, exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
