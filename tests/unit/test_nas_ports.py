"""`NasPorts`: the NAS's lock ports from its portmapper, cached, asked again when one fails.

Real sockets on loopback: a tiny portmapper made of our codec, and listeners
standing for the NAS's lock manager before and after a restart.
"""

from __future__ import annotations

import asyncio

import pytest

from nfsproxy.relay.locks import NasPorts
from nfsproxy.wire.nlm import NLM_PROGRAM
from nfsproxy.wire.portmap import Mapping
from nfsproxy.wire.rpc import NEED_DATA, RpcMessageReader, RpcReply, encode_reply, frame_rpc_message, parse_message
from nfsproxy.wire.xdr import decode


class Portmapper:
    def __init__(self):
        self.port_of: dict[tuple[int, int], int] = {}
        self.asked = 0

    async def serve(self, reader, writer):
        messages = RpcMessageReader(1 << 16)
        while (message := messages.next_message()) is NEED_DATA:
            messages.receive(await reader.read(4096))
        call, body = parse_message(message)
        want = decode(Mapping.xdr, body)
        self.asked += 1
        p = encode_reply(RpcReply(call.xid))
        p.u32(self.port_of.get((want.prog, want.vers), 0))
        reply = p.getvalue()
        writer.write(frame_rpc_message(len(reply)) + reply)
        await writer.drain()
        writer.close()


async def _listener():
    return await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)


def test_a_lock_manager_that_moved_is_found_again_on_the_next_connect():
    async def run():
        pmap = Portmapper()
        server = await asyncio.start_server(pmap.serve, "127.0.0.1", 0)
        first = await _listener()
        pmap.port_of[(NLM_PROGRAM, 4)] = first.sockets[0].getsockname()[1]
        ports = NasPorts("127.0.0.1", pmap_port=server.sockets[0].getsockname()[1])
        transport, _ = await ports.connect(NLM_PROGRAM, 4, asyncio.Protocol)
        transport.close()
        transport, _ = await ports.connect(NLM_PROGRAM, 4, asyncio.Protocol)  # cached
        transport.close()
        assert pmap.asked == 1
        # The lock manager restarts on another port: the cached one refuses.
        first.close()
        await first.wait_closed()
        second = await _listener()
        pmap.port_of[(NLM_PROGRAM, 4)] = second.sockets[0].getsockname()[1]
        transport, _ = await ports.connect(NLM_PROGRAM, 4, asyncio.Protocol)
        assert transport.get_extra_info("peername")[1] == pmap.port_of[(NLM_PROGRAM, 4)]
        transport.close()
        assert pmap.asked == 2
        # Nothing registered: a clean error, and nothing cached.
        with pytest.raises(ConnectionError):
            await ports.connect(NLM_PROGRAM, 1, asyncio.Protocol)
        second.close()
        server.close()
    asyncio.run(run())
