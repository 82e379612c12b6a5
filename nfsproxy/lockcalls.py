"""The proxy's own RPC calls for locking: the NAS's lock ports, and callbacks to clients.

A thin asyncio shell over `nfsproxy.nlm` and the RPC codec. The NAS's NLM and
NSM listen wherever its portmapper says (`NasPorts`, cached, asked again when
a connection fails). A callback from the NAS (NLM_GRANTED and friends,
SM_NOTIFY) is passed to a client as a fresh call on a fresh connection to the
port the client's own portmapper names (`call_client`); its reply goes back.
"""

from __future__ import annotations

import asyncio
import secrets

from .portmap import IPPROTO_TCP, PMAP_PORT, PMAP_PROG, PMAP_VERS, Mapping, PmapProc
from .rpc import (NEED_DATA, RpcCall, RpcDecodeError, RpcMessageReader, RpcReply, decode_body,
                  encode_call, frame_rpc_message, parse_message)
from .xdr import U32
from .xid_table import framed_with_xid

__all__ = ["NasPorts", "exchange", "getport", "call_client"]

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


async def getport(host: str, prog: int, vers: int, timeout_s: float = CALL_TIMEOUT_S) -> int:
    """Ask `host`'s portmapper where `prog`/`vers` listens over TCP (0: nowhere)."""
    xid = secrets.randbits(32)
    call = encode_call(RpcCall(xid, PMAP_PROG, PMAP_VERS, PmapProc.GETPORT))
    Mapping.xdr.pack(call, Mapping(prog, vers, IPPROTO_TCP, 0))
    reply = await exchange(host, PMAP_PORT, call.getvalue(), xid, timeout_s=timeout_s)
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

    def __init__(self, host: str):
        self.host = host
        self._ports: dict[tuple[int, int], int] = {}

    async def port(self, prog: int, vers: int) -> int:
        """The NAS's TCP port for `prog`/`vers`; ConnectionError when it has none."""
        found = self._ports.get((prog, vers))
        if found is None:
            found = await getport(self.host, prog, vers)
            if not found:
                raise ConnectionError(f"the NAS {self.host} has no program {prog} v{vers} "
                                      "over TCP registered (is its lock manager on?)")
            self._ports[(prog, vers)] = found
        return found

    def forget(self, prog: int, vers: int) -> None:
        """A connection to the cached port failed: ask the portmapper again next time."""
        self._ports.pop((prog, vers), None)
