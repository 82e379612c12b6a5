"""The relay's shell on every path that takes a stamp, against a scripted NAS.

A real `Proxy` on loopback, a real LOG, and in front of it a tiny RPC server
that answers the way a test needs (garbage, a reply to no call, nothing at
all), which real ganesha cannot be made to do. Each test checks that the
proxy leaves no stamp in flight afterwards (its stable stamp moves past a
moment taken after the test's calls), and that the client is never left
hanging on a session that reads nothing.
"""

from __future__ import annotations

import asyncio
import errno
import struct
import time
from typing import Callable

import pytest

from nfsproxy.native.log import NativeCommitter as GroupCommitter
from nfsproxy.native.log import NativeLog
from logstore.log import Log, LogClosedError
from logstore.stamp import Stamp
from nfsproxy.relay import session as relay
from logstore.hlc import HLC
from nfsproxy.relay.journal import Journal
from nfsproxy.wire.nfs3 import NFS_PROGRAM, Diropargs3, Proc3, REMOVE3args
from nfsproxy.wire.nfs3 import CODECS as NFS3
from nfsproxy.relay.session import BackendAddress, Proxy
from nfsproxy.wire.rpc import (NEED_DATA, AuthFlavor, AuthSys, OpaqueAuth, RpcCall, RpcMessageReader, RpcReply, encode_call,
                          encode_reply, frame_rpc_message, parse_message)

HANG_S = 10.0
ROOT = b"\x01" * 16
CRED = AuthSys(1, "unit", 0, 0, ())
REMOVE_OK_BODY = struct.pack(">III", 0, 0, 0)  # NFS3_OK, no pre-op and no post-op attributes

Answer = Callable[[RpcCall, memoryview], "bytes | None"]


def remove_call(xid: int, name: str) -> bytes:
    p = encode_call(RpcCall(xid, NFS_PROGRAM, 3, Proc3.REMOVE, auth_sys=CRED))
    NFS3[Proc3.REMOVE][0].pack(p, REMOVE3args(Diropargs3(ROOT, name)))
    return p.getvalue()


def reply(xid: int, body: bytes) -> bytes:
    return encode_reply(RpcReply(xid)).getvalue() + body


class ScriptedNas:
    """An RPC server that answers each call with `answer(call, body)` (None: no answer)."""

    def __init__(self, answer: Answer):
        self.answer = answer
        self.calls: list[RpcCall] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> "ScriptedNas":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def send(self, message: bytes) -> None:
        """Send a reply now (on the latest connection)."""
        self._writer.write(frame_rpc_message(len(message)) + message)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        messages = RpcMessageReader()
        while data := await reader.read(65536):
            messages.receive(data)
            while (message := messages.next_message()) is not NEED_DATA:
                call, body = parse_message(message)
                self.calls.append(call)
                out = self.answer(call, body)
                if out is not None:
                    self.send(out)
        writer.close()

    def close(self) -> None:
        self._server.close()


class Client:
    """A raw RPC client connection to the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.messages = RpcMessageReader()

    @classmethod
    async def connect(cls, port: int) -> "Client":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, *messages: bytes) -> None:
        self.writer.write(b"".join(frame_rpc_message(len(m)) + m for m in messages))

    async def replies(self, n: int) -> list[tuple[RpcReply, memoryview]]:
        out = []
        while len(out) < n:
            message = self.messages.next_message()
            if message is NEED_DATA:
                data = await asyncio.wait_for(self.reader.read(65536), HANG_S)
                assert data, f"the proxy closed the connection after {len(out)} of {n} replies"
                self.messages.receive(data)
                continue
            out.append(parse_message(message))
        return out

    async def closed_by_proxy(self) -> bool:
        """True once the proxy closes the connection (replies read meanwhile are dropped)."""
        while await asyncio.wait_for(self.reader.read(65536), HANG_S):
            pass
        return True


class FailingJournal(Journal):
    """A journal whose LOG append fails, as with a full disk."""

    def append_nowait(self, record, data=None):
        raise OSError(errno.ENOSPC, "No space left on device")


class HeldJournal(Journal):
    """Block quota policy, over quota: mutations wait; `fail()` makes the wait fail."""

    def __init__(self, committer: GroupCommitter):
        super().__init__(committer)
        self.failed = asyncio.Event()

    def must_hold(self) -> bool:
        return True

    async def wait_until_journaling(self) -> None:
        await self.failed.wait()
        raise LogClosedError("group commit failed: simulated")


async def started(tmp_path, answer: Answer, journal_class=Journal):
    nas = await ScriptedNas(answer).start()
    log = NativeLog.open(str(tmp_path / "log"))
    committer = GroupCommitter(log, durability="sync")
    proxy = Proxy(BackendAddress("127.0.0.1", nas.port, nas.port, "/export"),
                  journal_class(committer), HLC(7))
    await proxy.start("127.0.0.1", 0)

    async def stop():
        await proxy.close(timeout_s=1.0)
        await committer.close()
        log.close()
        nas.close()
    return nas, proxy, stop


async def settled(proxy: Proxy) -> Stamp:
    """Wait until nothing is in flight; the stable stamp then passes a moment taken now."""
    moment = proxy.clock.now().to_stamp()
    deadline = time.monotonic() + HANG_S
    while proxy._inflight or proxy.stable_stamp() <= moment:
        assert time.monotonic() < deadline, f"a stamp stays in flight: {proxy._inflight}"
        await asyncio.sleep(0.01)
    return proxy.stable_stamp()


def answer_ok(call: RpcCall, body: memoryview) -> bytes:
    return reply(call.xid, REMOVE_OK_BODY)


# -- matching ---------------------------------------------------------------------------


def test_each_call_has_its_own_nas_xid_and_the_client_gets_its_own_back(tmp_path):
    async def run():
        nas, proxy, stop = await started(tmp_path, answer_ok)
        try:
            client = await Client.connect(proxy.port)
            client.send(remove_call(7, "a"), remove_call(7, "b"), remove_call(8, "c"))
            got = await client.replies(3)
            assert sorted(r.xid for r, _ in got) == [7, 7, 8]
            assert len({c.xid for c in nas.calls}) == 3, "the NAS saw an XID twice"
            await settled(proxy)
            assert proxy.journal.records_total == 3
        finally:
            await stop()
    asyncio.run(run())


def test_a_retransmission_in_flight_is_answered_once_and_not_sent_again(tmp_path):
    async def run():
        nas, proxy, stop = await started(tmp_path, lambda call, body: None)
        try:
            client = await Client.connect(proxy.port)
            client.send(remove_call(7, "a"), remove_call(7, "a"), remove_call(8, "b"))
            while len(nas.calls) < 2:
                await asyncio.sleep(0.01)
            assert [c.proc for c in nas.calls] == [Proc3.REMOVE] * 2
            assert proxy.stats.retransmissions_absorbed_total == 1
            for call in nas.calls:
                nas.send(reply(call.xid, REMOVE_OK_BODY))
            got = await client.replies(2)
            assert sorted(r.xid for r, _ in got) == [7, 8]
            await asyncio.sleep(0.05)
            assert client.messages.next_message() is NEED_DATA and client.reader._buffer == b""
            await settled(proxy)
            assert proxy.journal.records_total == 2
        finally:
            await stop()
    asyncio.run(run())


def test_a_reply_to_no_call_is_dropped(tmp_path):
    async def run():
        def answer(call: RpcCall, body: memoryview) -> bytes:
            first = len(nas.calls) == 1
            return reply(call.xid ^ 0x5A5A if first else call.xid, REMOVE_OK_BODY)

        nas, proxy, stop = await started(tmp_path, answer)
        try:
            client = await Client.connect(proxy.port)
            client.send(remove_call(7, "a"))
            await asyncio.sleep(0.1)
            client.send(remove_call(8, "b"))
            (r, _), = await client.replies(1)
            assert r.xid == 8
            assert proxy.stats.unmatched_replies_total == 1
        finally:
            await stop()
    asyncio.run(run())


# -- no stamp stays in flight -------------------------------------------------------------


def test_an_undecodable_reply_releases_its_stamp_and_closes_the_client(tmp_path):
    async def run():
        nas, proxy, stop = await started(tmp_path, lambda call, body: reply(call.xid, b"\x00\x00"))
        try:
            client = await Client.connect(proxy.port)
            client.send(remove_call(7, "a"))
            assert await client.closed_by_proxy()
            await settled(proxy)
            assert proxy.journal.records_total == 0
        finally:
            await stop()
    asyncio.run(run())


def test_a_failed_journal_write_releases_its_stamp_and_closes_the_client(tmp_path):
    async def run():
        nas, proxy, stop = await started(tmp_path, answer_ok, FailingJournal)
        try:
            client = await Client.connect(proxy.port)
            client.send(remove_call(7, "a"))
            assert await client.closed_by_proxy()
            await settled(proxy)
        finally:
            await stop()
    asyncio.run(run())


def test_a_failed_wait_for_log_space_closes_the_held_session(tmp_path):
    """Block policy holds a mutation; when the LOG then fails, the session must not
    stay paused forever: it is closed, the call never reaches the NAS, its stamp goes."""
    async def run():
        nas, proxy, stop = await started(tmp_path, answer_ok, HeldJournal)
        try:
            client = await Client.connect(proxy.port)
            client.send(remove_call(7, "a"), remove_call(8, "b"))
            while not proxy._inflight:
                await asyncio.sleep(0.01)
            proxy.journal.failed.set()
            assert await client.closed_by_proxy()
            await settled(proxy)
            assert nas.calls == [], "a call reached the NAS while its record could not be journaled"
        finally:
            await stop()
    asyncio.run(run())


def test_a_client_gone_while_its_call_is_held_leaves_no_stamp(tmp_path):
    async def run():
        nas, proxy, stop = await started(tmp_path, answer_ok, HeldJournal)
        try:
            client = await Client.connect(proxy.port)
            client.send(remove_call(7, "a"))
            while not proxy._inflight:
                await asyncio.sleep(0.01)
            client.writer.close()
            await settled(proxy)  # at once, not after the drain timeout
            assert nas.calls == []
        finally:
            await stop()
    asyncio.run(run())


def test_a_client_gone_before_the_nas_answers_is_released_after_the_drain(tmp_path, monkeypatch):
    monkeypatch.setattr(relay, "DRAIN_TIMEOUT_S", 0.2)

    async def run():
        nas, proxy, stop = await started(tmp_path, lambda call, body: None)
        try:
            client = await Client.connect(proxy.port)
            client.send(remove_call(7, "a"), remove_call(7, "b"))
            while len(nas.calls) < 2:
                await asyncio.sleep(0.01)
            client.writer.close()
            await settled(proxy)
            session_tables = [len(s.calls) for s in proxy.sessions]
            assert session_tables in ([], [0])
        finally:
            await stop()
    asyncio.run(run())


def test_a_client_gone_is_drained_then_its_replies_are_journaled(tmp_path):
    async def run():
        answers: list[RpcCall] = []
        nas, proxy, stop = await started(tmp_path, lambda call, body: answers.append(call))
        try:
            client = await Client.connect(proxy.port)
            client.send(remove_call(7, "a"), remove_call(7, "b"))
            while len(nas.calls) < 2:
                await asyncio.sleep(0.01)
            client.writer.close()
            while proxy.sessions:
                await asyncio.sleep(0.01)
            for call in answers:  # the session is draining: its NAS replies are journaled
                nas.send(reply(call.xid, REMOVE_OK_BODY))
            await settled(proxy)
            assert proxy.journal.records_total == 2
        finally:
            await stop()
    asyncio.run(run())


def test_an_rpcsec_gss_call_reaches_the_nas_under_its_own_xid(tmp_path):
    """Its verifier is a checksum over the header, XID included: the XID must not change."""
    gss = OpaqueAuth(AuthFlavor.RPCSEC_GSS, b"\x00\x00\x00\x01" + bytes(16))
    call = encode_call(RpcCall(0xC0FFEE, NFS_PROGRAM, 3, Proc3.NULL, cred=gss,
                               verf=OpaqueAuth(AuthFlavor.RPCSEC_GSS, b"mic!"))).getvalue()

    async def run():
        nas, proxy, stop = await started(tmp_path, lambda c, body: reply(c.xid, b""))
        try:
            client = await Client.connect(proxy.port)
            client.send(call)
            (r, _), = await client.replies(1)
            assert r.xid == 0xC0FFEE and [c.xid for c in nas.calls] == [0xC0FFEE]
        finally:
            await stop()
    asyncio.run(run())
