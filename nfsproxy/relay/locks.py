"""The proxy's own RPC calls for locking: the NAS's lock ports, callbacks to clients.

A thin asyncio shell over `nfsproxy.wire.nlm` and the RPC codec. The NAS's NLM and
NSM listen wherever its portmapper says (`NasPorts`, cached, asked again when
a connection fails). A callback from the NAS (NLM_GRANTED and friends) is
passed to its client as a fresh call on a fresh connection to the port the
client's own portmapper names (`call_client`); the reply goes back. The NAS's
SM_NOTIFY goes on to every client that locked through the proxy, and a
client's SM_NOTIFY releases that client's locks on the NAS (`LockRelay`).
SM_NOTIFY travels over UDP (`LockDatagrams`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
from typing import Callable

from nfsproxy.relay.lock_routes import LockRoutes
from nfsproxy.wire.nlm import (NLM_PROGRAM, NSM_PROGRAM, NSM_VERSION, LockOwner, NlmProc, SmProc,
                               decode_sm_notify, encode_sm_notify, encode_unlock)
from nfsproxy.wire.portmap import IPPROTO_TCP, PMAP_PORT, PMAP_PROG, PMAP_VERS, Mapping, PmapProc
from nfsproxy.relay.routing import Route, answer_portmap, route
from nfsproxy.wire.rpc import (NEED_DATA, AcceptStat, AuthSys, RpcCall, RpcDecodeError, RpcMessageReader,
                  RpcReply, decode_body, encode_call, encode_reply, parse_message, refusal)
from nfsproxy.wire.xdr import U32
from nfsproxy.relay.xid_table import framed_with_xid

__all__ = ["NasPorts", "exchange", "getport", "call_client", "LockRelay", "LockDatagrams"]

logger = logging.getLogger(__name__)

#: How long one callback or portmapper exchange may take.
CALL_TIMEOUT_S = 10.0
_MAX_REPLY_BYTES = 1 << 20


async def exchange(host: str, port: int, message: bytes | memoryview, xid: int,
                   own: set[tuple[str, int]] | None = None,
                   timeout_s: float = CALL_TIMEOUT_S) -> memoryview:
    """Send one RPC call (under `xid`) on a new TCP connection; return the reply message.

    This end's address is in `own` while the call is out (the relay uses it
    to recognise its own callbacks coming back to it).
    Raises OSError, asyncio.TimeoutError or RpcDecodeError.
    """
    async def run() -> memoryview:
        reader, writer = await asyncio.open_connection(host, port)
        sockname = writer.get_extra_info("sockname")[:2]
        if own is not None:
            own.add(sockname)
        try:
            writer.writelines(framed_with_xid(xid, message))
            messages = RpcMessageReader(_MAX_REPLY_BYTES)
            while True:
                while (reply := messages.next_message()) is not NEED_DATA:
                    header, _ = parse_message(reply)
                    if isinstance(header, RpcReply) and header.xid == xid:
                        return reply
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError(f"{host}:{port} closed the connection before replying")
                messages.receive(chunk)
        finally:
            writer.close()
            if own is not None:
                own.discard(sockname)
    return await asyncio.wait_for(run(), timeout_s)


async def getport(host: str, prog: int, vers: int, timeout_s: float = CALL_TIMEOUT_S,
                  pmap_port: int = PMAP_PORT) -> int:
    """Ask `host`'s portmapper where `prog`/`vers` listens over TCP (0: nowhere)."""
    xid = secrets.randbits(32)
    call = encode_call(RpcCall(xid, PMAP_PROG, PMAP_VERS, PmapProc.GETPORT))
    Mapping.xdr.pack(call, Mapping(prog, vers, IPPROTO_TCP, 0))
    reply = await exchange(host, pmap_port, call.getvalue(), xid, timeout_s=timeout_s)
    header, body = parse_message(reply)
    if not header.success:
        raise ConnectionError(f"{host}'s portmapper refused GETPORT: {header}")
    return decode_body(U32, body)


async def call_client(host: str, call: RpcCall, message: memoryview,
                      own: set[tuple[str, int]] | None = None) -> memoryview:
    """Pass a call the NAS made (as it arrived, any XID) to the client at `host`,
    at the port its portmapper gives for the call's program and version; the reply."""
    port = await getport(host, call.prog, call.vers)
    if not port:
        raise ConnectionError(f"{host} has no program {call.prog} v{call.vers} over TCP registered")
    return await exchange(host, port, message, secrets.randbits(32), own)


class NasPorts:
    """Where the NAS's lock manager and status monitor listen, as its portmapper says."""

    def __init__(self, host: str, pmap_port: int = PMAP_PORT):
        self.host = host
        self.pmap_port = pmap_port
        self._ports: dict[tuple[int, int], int] = {}

    async def connect(self, prog: int, vers: int, protocol_factory) -> tuple:
        """Connect to the NAS's `prog`/`vers`. A cached port that fails (the NAS's lock
        manager restarted elsewhere) is forgotten and asked for again, once."""
        loop = asyncio.get_running_loop()
        cached = (prog, vers) in self._ports
        try:
            return await loop.create_connection(protocol_factory, self.host, await self.port(prog, vers))
        except OSError:
            self.forget(prog, vers)
            if not cached:
                raise
        return await loop.create_connection(protocol_factory, self.host, await self.port(prog, vers))

    async def port(self, prog: int, vers: int) -> int:
        """The NAS's TCP port for `prog`/`vers`; ConnectionError when it has none."""
        found = self._ports.get((prog, vers))
        if found is None:
            found = await getport(self.host, prog, vers, pmap_port=self.pmap_port)
            if not found:
                raise ConnectionError(f"the NAS {self.host} has no program {prog} v{vers} "
                                      "over TCP registered (is its lock manager on?)")
            self._ports[(prog, vers)] = found
        return found

    def forget(self, prog: int, vers: int) -> None:
        """A connection to the cached port failed: ask the portmapper again next time."""
        self._ports.pop((prog, vers), None)


def _with_xid(message: bytes | memoryview, xid: int) -> bytes:
    return struct.pack(">I", xid) + bytes(message[4:])


def _refusal(call: RpcCall) -> bytes:
    return refusal(call.xid, AcceptStat.SYSTEM_ERR)


class LockRelay:
    """The lock traffic that is more than a client call relayed to the NAS.

    Each method returns the reply message (under the caller's XID) to send
    back: a failure to reach a client is the NAS's SYSTEM_ERR, as if that
    client were down.
    """

    def __init__(self, backend_host: str, stats, next_xid: Callable[[], int]):
        self.routes = LockRoutes()
        self.nas_ports = NasPorts(backend_host)
        self.nas_hosts: set[str] = {backend_host}  # calls from these are the NAS's
        #: This end of each call the proxy has out to a client: one that comes back
        #: to the proxy itself (a client behind NAT on the proxy's host names the
        #: proxy's portmapper) is refused, not passed on again.
        self.own: set[tuple[str, int]] = set()
        self.stats = stats
        self.next_xid = next_xid

    async def pass_callback(self, call: RpcCall, message: bytes, host: str | None,
                            came_from: tuple[str, int]) -> bytes:
        """The NAS's NLM callback (GRANTED, a *_RES) to the client `host` it is for."""
        if host is None or came_from in self.own:
            why = ("it is not from the NAS, or names no lock a client asked for" if host is None
                   else "it came back to the proxy")
            logger.warning("NLM %s from %s:%d not passed on: %s", call.proc, *came_from, why)
            self.stats.lock_callback(call.prog, call.proc, "unrouted")
            return _refusal(call)
        try:
            reply = await call_client(host, call, memoryview(message), self.own)
        except (OSError, asyncio.TimeoutError, RpcDecodeError) as e:
            logger.warning("NLM %s for client %s failed: %s", call.proc, host, e)
            self.stats.lock_callback(call.prog, call.proc, "failed")
            return _refusal(call)
        self.stats.lock_callback(call.prog, call.proc, "passed")
        return _with_xid(reply, call.xid)

    async def nas_rebooted(self, call: RpcCall, state: int) -> bytes:
        """SM_NOTIFY from the NAS: tell each client that locked through the proxy
        that the proxy, under the address that client knows, rebooted."""
        clients = list(self.routes.clients.items())
        results = await asyncio.gather(*(self._notify(host, proxy_host, state)
                                         for host, proxy_host in clients), return_exceptions=True)
        for (host, _), result in zip(clients, results):
            ok = not isinstance(result, BaseException)
            if not ok:
                logger.warning("SM_NOTIFY to client %s failed: %s", host, result)
            self.stats.lock_callback(call.prog, call.proc, "passed" if ok else "failed")
        return encode_reply(RpcReply(call.xid)).getvalue()

    async def _notify(self, host: str, proxy_host: str, state: int) -> None:
        port = await getport(host, NSM_PROGRAM, NSM_VERSION)
        if not port:
            raise ConnectionError(f"{host} has no status monitor registered")
        xid = self.next_xid()
        p = encode_call(RpcCall(xid, NSM_PROGRAM, NSM_VERSION, SmProc.NOTIFY))
        p.raw(encode_sm_notify(proxy_host.encode(), state))
        await exchange(host, port, p.getvalue(), xid, self.own)

    async def client_rebooted(self, call: RpcCall, host: str, name: bytes) -> bytes:
        """SM_NOTIFY from the client `name` at `host`: its locks died with it. The NAS
        monitors the proxy, not that client, so the proxy unlocks them on the NAS."""
        for owner, vers in self.routes.forget_client(host, name):
            try:
                await self._unlock(owner, vers)
            except (OSError, asyncio.TimeoutError, RpcDecodeError) as e:
                logger.warning("could not release a lock of rebooted client %s (%r): %s", host, name, e)
                continue
            self.stats.reboot_unlocks_total += 1
        return encode_reply(RpcReply(call.xid)).getvalue()

    async def _unlock(self, owner: LockOwner, vers: int) -> None:
        port = await self.nas_ports.port(NLM_PROGRAM, vers)
        xid = self.next_xid()
        p = encode_call(RpcCall(xid, NLM_PROGRAM, vers, NlmProc.UNLOCK,
                                auth_sys=AuthSys(0, owner.caller_name[:255], 0, 0, ())))
        p.raw(encode_unlock(vers, owner, b"nfsj-reboot"))
        await exchange(self.nas_ports.host, port, p.getvalue(), xid)


class LockDatagrams(asyncio.DatagramProtocol):
    """UDP beside the proxy's TCP ports: status monitors look up and send SM_NOTIFY
    over UDP. Portmap questions are answered; SM_NOTIFY goes to `LockRelay`."""

    def __init__(self, locks: LockRelay, port: int, spawn: Callable):
        self.locks = locks
        self.port = port  # where the proxy's services are (its main port)
        self.spawn = spawn
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.DatagramTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            call, body = parse_message(data)
            if not isinstance(call, RpcCall):
                return
            where = route(call)
            if where is Route.PORTMAP:
                local = self.transport.get_extra_info("sockname")[0]
                self._send(answer_portmap(call, body, self.port, local), addr)
            elif where is Route.NSM and call.proc == SmProc.NOTIFY:
                name, state = decode_sm_notify(body)
                if addr[0] in self.locks.nas_hosts:
                    self.spawn(self._reply(self.locks.nas_rebooted(call, state), addr))
                else:
                    self.spawn(self._reply(self.locks.client_rebooted(call, addr[0], name), addr))
            else:
                self._send(refusal(call.xid, AcceptStat.PROG_UNAVAIL), addr)
        except RpcDecodeError as e:
            logger.warning("UDP datagram from %s dropped: %s", addr[0], e)

    async def _reply(self, answer, addr: tuple) -> None:
        self._send(await answer, addr)

    def _send(self, message: bytes, addr: tuple) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(message, addr)
