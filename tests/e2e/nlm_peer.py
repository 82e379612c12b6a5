"""A minimal NLM v4 client host, made of our own codecs, for the locking tests.

Run as a program inside a host (a network namespace), at its own address:

    python nlm_peer.py ADDRESS NAME SERVER_PORT FILE MODE

It serves what a client host's lock manager and status monitor serve: a
portmapper on ADDRESS:111 naming its callback port, where NLM and NSM calls
are printed (`callback PROC svid=N`, `callback NOTIFY mon_name=M`) and
answered. Then it asks the
NFS server at 127.0.0.1:SERVER_PORT (the proxy) for an exclusive lock on
FILE of its /export (its handle looked up with our NFS client), as owner NAME:

* MODE `hold`: a non-blocking lock; prints `held` when granted, then waits
  for a line on stdin, unlocks, prints `released`, serves callbacks for two
  more seconds and prints `callbacks N`;
* MODE `wait`: a blocking lock; prints `blocked` when the server says so,
  then waits for the server's NLM_GRANTED_MSG, answers it with
  NLM_GRANTED_RES as a client does, and prints `granted by callback`;
* MODE `reboot`: no lock; tells the server it rebooted as nfs-utils'
  sm-notify does (portmap GETPORT for NSM over UDP at port 111 of the
  server's address, then SM_NOTIFY naming NAME over UDP), prints `notified`;
* MODE `forge`: sends the server an NLM_GRANTED_MSG as if from a lock
  manager, for the lock MODE `wait` asks for as owner NAME; prints
  `accepted` or `refused` as the server answers it.

Every line is flushed at once; the exit status is 0 when all went as said.
"""

from __future__ import annotations

import asyncio
import sys

from nfsproxy.nas.client import NfsClient
from nfsproxy.wire.nlm import NLM_PROGRAM, NSM_PROGRAM, NlmProc, SmProc, decode_sm_notify, encode_sm_notify
from nfsproxy.wire.portmap import IPPROTO_UDP, PMAP_PROG, PmapProc
from nfsproxy.wire.rpc import (NEED_DATA, AuthSys, RpcCall, RpcMessageReader, RpcReply, encode_call,
                          encode_reply, frame_rpc_message, parse_message)
from nfsproxy.wire.xdr import Packer, Unpacker

NLM4 = 4
GRANTED, BLOCKED = 0, 3


def say(line: str) -> None:
    print(line, flush=True)


def lock_body(proc: NlmProc, name: str, fh: bytes, svid: int, cookie: bytes, block: bool) -> bytes:
    p = Packer()
    p.var(cookie, 1024)
    if proc is NlmProc.LOCK:
        p.u32(int(block))
    if proc in (NlmProc.LOCK, NlmProc.GRANTED_MSG):
        p.u32(1)  # exclusive
    p.var(name.encode(), 1024)
    p.var(fh, 1024)
    p.var(f"{svid}@{name}".encode(), 1024)
    p.i32(svid)
    p.u64(0)
    p.u64(0)  # to the end of the file
    if proc is NlmProc.LOCK:
        p.u32(0)  # not a reclaim
        p.i32(1)  # NSM state
    return p.getvalue()


def framed(message: bytes) -> bytes:
    return frame_rpc_message(len(message)) + message


async def read_message(reader: asyncio.StreamReader, messages: RpcMessageReader) -> memoryview:
    while (message := messages.next_message()) is NEED_DATA:
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        messages.receive(chunk)
    return message


class Peer:
    def __init__(self, address: str, name: str):
        self.address, self.name = address, name
        self.callbacks: asyncio.Queue = asyncio.Queue()
        self.nlm_port = 0
        self.xid = 0x4E4C0000

    async def serve(self) -> None:
        nlm = await asyncio.start_server(self._serve_nlm, self.address, 0)
        self.nlm_port = nlm.sockets[0].getsockname()[1]
        await asyncio.start_server(self._serve_portmap, self.address, 111)

    async def _serve(self, reader, writer, answer) -> None:
        messages = RpcMessageReader(1 << 20)
        try:
            while True:
                call, body = parse_message(await read_message(reader, messages))
                writer.write(framed(answer(call, body)))
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _serve_portmap(self, reader, writer):
        def answer(call: RpcCall, body: memoryview) -> bytes:
            p = encode_reply(RpcReply(call.xid))
            if call.proc == PmapProc.GETPORT:
                u = Unpacker(body)
                prog, vers = u.u32(), u.u32()
                p.u32(self.nlm_port if (prog, vers) in ((NLM_PROGRAM, NLM4), (NSM_PROGRAM, 1)) else 0)
            return p.getvalue()
        return self._serve(reader, writer, answer)

    def _serve_nlm(self, reader, writer):
        def answer(call: RpcCall, body: memoryview) -> bytes:
            if call.prog == NSM_PROGRAM:
                say(f"callback NOTIFY mon_name={decode_sm_notify(body)[0].decode()}")
                return encode_reply(RpcReply(call.xid)).getvalue()
            proc = NlmProc(call.proc)
            u = Unpacker(body)
            cookie = bytes(u.var(1024))
            svid = None
            if proc in (NlmProc.GRANTED, NlmProc.GRANTED_MSG):
                u.u32()
                u.var(1024), u.var(1024), u.var(1024)
                svid = u.i32()
            say(f"callback {proc.name} svid={svid} cookie={cookie.hex()}")
            self.callbacks.put_nowait((proc, cookie, svid))
            p = encode_reply(RpcReply(call.xid))
            if proc is NlmProc.GRANTED:
                p.var(cookie, 1024)
                p.u32(GRANTED)
            return p.getvalue()
        return self._serve(reader, writer, answer)

    async def call(self, server, proc: NlmProc, body: bytes) -> memoryview:
        reader, writer, messages = server
        self.xid += 1
        p = encode_call(RpcCall(self.xid, NLM_PROGRAM, NLM4, int(proc),
                                auth_sys=AuthSys(1, self.name, 0, 0, ())))
        p.raw(body)
        writer.write(framed(p.getvalue()))
        if proc is NlmProc.GRANTED_RES:
            return memoryview(b"")  # a message: its answer is only the RPC's void
        while True:
            reply, result = parse_message(await read_message(reader, messages))
            if isinstance(reply, RpcReply) and reply.xid == self.xid:
                assert reply.success, reply
                return result


def stat_of(result: memoryview) -> int:
    u = Unpacker(result)
    u.var(1024)
    return u.u32()


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self):
        self.replies: asyncio.Queue = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.replies.put_nowait(data)


async def udp_call(address: str, server: tuple[str, int], message: bytes) -> memoryview:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Datagram, local_addr=(address, 0),
                                                              remote_addr=server)
    try:
        transport.sendto(message)
        reply, body = parse_message(await asyncio.wait_for(protocol.replies.get(), 10))
        assert isinstance(reply, RpcReply) and reply.success, reply
        return body
    finally:
        transport.close()


async def reboot(address: str, name: str) -> int:
    p = encode_call(RpcCall(1, PMAP_PROG, 2, PmapProc.GETPORT))
    for field in (NSM_PROGRAM, 1, IPPROTO_UDP, 0):
        p.u32(field)
    port = Unpacker(await udp_call(address, ("127.0.0.1", 111), p.getvalue())).u32()
    if not port:
        say("the server has no status monitor over UDP")
        return 1
    p = encode_call(RpcCall(2, NSM_PROGRAM, 1, SmProc.NOTIFY))
    p.raw(encode_sm_notify(name.encode(), 3))
    await udp_call(address, ("127.0.0.1", port), p.getvalue())
    say("notified")
    return 0


async def main(address: str, name: str, server_port: int, fh: bytes, mode: str) -> int:
    if mode == "reboot":
        return await reboot(address, name)
    if mode == "forge":
        reader, writer = await asyncio.open_connection("127.0.0.1", server_port, local_addr=(address, 0))
        p = encode_call(RpcCall(9, NLM_PROGRAM, NLM4, NlmProc.GRANTED_MSG))
        p.raw(lock_body(NlmProc.GRANTED_MSG, name, fh, 8, b"forged", False))
        writer.write(framed(p.getvalue()))
        reply, _ = parse_message(await read_message(reader, RpcMessageReader(1 << 20)))
        say("accepted" if reply.success else "refused")
        return 0
    peer = Peer(address, name)
    await peer.serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", server_port, local_addr=(address, 0))
    server = (reader, writer, RpcMessageReader(1 << 20))
    svid = 7 if mode == "hold" else 8
    if mode == "hold":
        stat = stat_of(await peer.call(server, NlmProc.LOCK,
                                       lock_body(NlmProc.LOCK, name, fh, svid, b"h1", False)))
        if stat != GRANTED:
            say(f"lock refused: {stat}")
            return 1
        say("held")
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        stat = stat_of(await peer.call(server, NlmProc.UNLOCK,
                                       lock_body(NlmProc.UNLOCK, name, fh, svid, b"h2", False)))
        say(f"released {stat}")
        await asyncio.sleep(2)
        say(f"callbacks {peer.callbacks.qsize()}")
        return 0 if stat == GRANTED else 1
    stat = stat_of(await peer.call(server, NlmProc.LOCK,
                                   lock_body(NlmProc.LOCK, name, fh, svid, b"w1", True)))
    if stat != BLOCKED:
        say(f"expected to block, got {stat}")
        return 1
    say("blocked")
    proc, cookie, got_svid = await asyncio.wait_for(peer.callbacks.get(), 60)
    if proc not in (NlmProc.GRANTED_MSG, NlmProc.GRANTED) or got_svid != svid:
        say(f"unexpected callback {proc} svid={got_svid}")
        return 1
    if proc is NlmProc.GRANTED_MSG:
        p = Packer()
        p.var(cookie, 1024)
        p.u32(GRANTED)
        await peer.call(server, NlmProc.GRANTED_RES, p.getvalue())
    say("granted by callback")
    await asyncio.sleep(1)
    return 0


if __name__ == "__main__":
    address, name, port, file, mode = sys.argv[1:6]
    with NfsClient("127.0.0.1", int(port), int(port), "/export") as nfs:
        handle = nfs.lookup(nfs.mount(), file).object
    sys.exit(asyncio.run(main(address, name, int(port), handle, mode)))
