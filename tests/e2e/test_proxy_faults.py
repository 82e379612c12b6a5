"""What bad input and faults get (DESIGN.md), against a real `nfsj proxy` and real ganesha.

* A client that breaks the RPC protocol has its connection closed; nothing of
  it is journaled; a well-behaved client (nfs-rs) on the same proxy keeps
  working, and the proxy keeps running.
* The proxy answers portmapper GETPORT itself, refuses NFS versions it cannot
  journal, and relays programs it does not know to the NAS.
* The NAS going away closes its clients; a new NAS on the same ports serves
  new clients through the same proxy.
* Past the LOG quota, `passthrough` keeps serving and stops journaling;
  `block` holds replies.

The misbehaving clients speak over raw sockets, with messages built by our
codecs (`nfsproxy.wire.rpc`, `nfsproxy.wire.xdr`), so each breaks exactly one rule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import random
import signal
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Callable

import nfs_rs
import pytest

from e2e.proxy_fixture import read_log
from e2e.test_metrics import _free_port, scrape, value
from logstore.record import Op
from nfsproxy.wire import nfs3, xdr
from nfsproxy.nas.client import ClientError, NfsClient
from nfsproxy.demo.ganesha import start_ganesha
from nfsproxy.relay.limits import max_message_bytes
from nfsproxy.wire.mount import MOUNT_PROGRAM
from nfsproxy.wire.nfs3 import NFS_PROGRAM, Proc3, StableHow
from nfsproxy.wire.portmap import IPPROTO_TCP, IPPROTO_UDP, PMAP_PROG, Mapping, PmapProc
from nfsproxy.relay.session import Proxy
from nfsproxy.wire.rpc import (NEED_DATA, AcceptStat, AuthSys, RejectStat, ReplyStat, RpcCall,
                          RpcMessageReader, RpcReply, decode_body, encode_call, encode_reply,
                          frame_rpc_message, parse_message)

pytestmark = pytest.mark.ganesha

MiB = 1 << 20
# The largest RPC message `nfsj proxy` takes: its default payload cap plus header room.
MAX_MESSAGE_BYTES = max_message_bytes(
    inspect.signature(Proxy).parameters["max_payload_bytes"].default)
# Timeouts only detect hangs; no assertion is about speed.
SOCKET_TIMEOUT_S = 20.0
NFS_RS_CONNECT_TIMEOUT_S = 3.0
NFS_RS_OPERATION_TIMEOUT_S = 10.0
CRED = AuthSys(1, "nfsj-fault-test", 0, 0, ())
UNKNOWN_PROGRAM = 0x20000F17  # user-defined range: nobody serves it


# --------------------------------------------------------------------------
# Raw RPC over TCP


def raw_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def address(sock: socket.socket) -> str:
    """The client address the proxy sees (and journals) for this socket."""
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def framed(message: bytes) -> bytes:
    return frame_rpc_message(len(message)) + message


def call_message(prog: int, vers: int, proc: int, body: bytes = b"", *, xid: int,
                 rpcvers: int = 2) -> bytes:
    return encode_call(RpcCall(xid, prog, vers, proc, auth_sys=CRED, rpcvers=rpcvers)).getvalue() + body


def exchange(sock: socket.socket, message: bytes) -> tuple[RpcReply, memoryview]:
    """Send one call and return the reply to it (the proxy answers in order here)."""
    sock.sendall(framed(message))
    reader = RpcMessageReader()
    while (reply := reader.next_message()) is NEED_DATA:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the proxy closed the connection instead of replying")
        reader.receive(chunk)
    header, body = parse_message(reply)
    assert isinstance(header, RpcReply)
    assert header.xid == struct.unpack_from(">I", message)[0]
    return header, body


def closed_by_peer(sock: socket.socket) -> bytes:
    """Read until the proxy closes the connection; return whatever came before."""
    got = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(got)
        except TimeoutError:
            raise AssertionError(f"the proxy kept the connection open ({len(got)} bytes received)") from None
        if not chunk:
            return bytes(got)
        got += chunk


def nfs_null(sock: socket.socket, xid: int) -> RpcReply:
    header, body = exchange(sock, call_message(NFS_PROGRAM, 3, 0, xid=xid))
    assert header.success and bytes(body) == b""
    return header


def nfs_rs_client(url: str):
    return nfs_rs.Client.connect(url, connect_timeout=NFS_RS_CONNECT_TIMEOUT_S,
                                 operation_timeout=NFS_RS_OPERATION_TIMEOUT_S)


def direct_client(nas) -> NfsClient:
    """Our client straight to ganesha (not through the proxy: it journals nothing)."""
    client = NfsClient(nas.host, nas.nfs_port, nas.mount_port, nas.export_path,
                       machine_name="nfsj-direct", timeout_s=SOCKET_TIMEOUT_S)
    client.mount()
    return client


def block(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# --------------------------------------------------------------------------
# Clients that break the protocol


def _write_call(fh: bytes, xid: int, payload: bytes) -> bytes:
    args = nfs3.WRITE3args(fh, 0, len(payload), StableHow.FILE_SYNC, payload)
    return call_message(NFS_PROGRAM, 3, Proc3.WRITE, xdr.encode(nfs3.WRITE3args.xdr, args), xid=xid)


def _http(fh: bytes) -> list[bytes]:
    # A stray HTTP client: "GET " reads as a 1.2 GB non-final fragment.
    return [b"GET /export HTTP/1.1\r\nHost: nas\r\n\r\n"]


def _random_bytes(fh: bytes) -> list[bytes]:
    return [block(20240611, 4096)]


def _empty_fragment(fh: bytes) -> list[bytes]:
    return [struct.pack(">I", 0) + b"\0" * 60]


def _oversized_header(fh: bytes) -> list[bytes]:
    # Only the header: the proxy must refuse before any of the body arrives.
    return [struct.pack(">I", 0x80000000 | (MAX_MESSAGE_BYTES + 1))]


def _huge_header(fh: bytes) -> list[bytes]:
    return [struct.pack(">I", 0xFFFFFFFF)]


def _oversized_in_fragments(fh: bytes) -> list[bytes]:
    # Each fragment is small enough; their sum is not.
    first = MAX_MESSAGE_BYTES - MiB
    return [struct.pack(">I", first) + bytes(first), struct.pack(">I", 0x80000000 | (MiB + 1))]


def _bad_message_type(fh: bytes) -> list[bytes]:
    return [framed(struct.pack(">III", 0x1234, 2, 2) + b"\0" * 36)]


def _cut_call_header(fh: bytes) -> list[bytes]:
    return [framed(call_message(NFS_PROGRAM, 3, Proc3.WRITE, xid=0x1235)[:22])]


def _credential_too_long(fh: bytes) -> list[bytes]:
    header = struct.pack(">IIIIII", 0x1236, 0, 2, NFS_PROGRAM, 3, Proc3.GETATTR)
    cred = struct.pack(">II", 1, 404) + b"\0" * 404  # over MAX_AUTH_BYTES (400)
    return [framed(header + cred + struct.pack(">II", 0, 0))]


def _xid_only(fh: bytes) -> list[bytes]:
    return [framed(struct.pack(">I", 0x1237))]


def _reply_not_call(fh: bytes) -> list[bytes]:
    return [framed(encode_reply(RpcReply(0x1238)).getvalue())]


def _truncated_write(fh: bytes) -> list[bytes]:
    # A well-framed WRITE whose opaque data says 4096 bytes and carries 100.
    message = _write_call(fh, 0x1239, block(7, 4096))
    return [framed(message[:len(message) - 3996])]


def _write_with_trailing_bytes(fh: bytes) -> list[bytes]:
    return [framed(_write_call(fh, 0x123A, b"trailing") + b"\0" * 8)]


@dataclasses.dataclass(frozen=True)
class BadInput:
    name: str
    build: Callable[[bytes], list[bytes]]


BAD_INPUTS = [
    BadInput("garbage_http", _http),
    BadInput("garbage_random", _random_bytes),
    BadInput("garbage_empty_nonfinal_fragment", _empty_fragment),
    BadInput("oversized_fragment_header", _oversized_header),
    BadInput("oversized_max_u32_header", _huge_header),
    BadInput("oversized_over_fragments", _oversized_in_fragments),
    BadInput("garbage_rpc_bad_msg_type", _bad_message_type),
    BadInput("garbage_rpc_cut_call_header", _cut_call_header),
    BadInput("garbage_rpc_credential_too_long", _credential_too_long),
    BadInput("garbage_rpc_xid_only", _xid_only),
    BadInput("reply_instead_of_call", _reply_not_call),
    BadInput("write_truncated_arguments", _truncated_write),
    BadInput("write_trailing_bytes", _write_with_trailing_bytes),
]


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[b.name for b in BAD_INPUTS])
def test_protocol_breaker_is_disconnected_and_nothing_of_it_is_journaled(nas, proxy, bad: BadInput):
    before, after = block(1, 8192), block(2, 8192)
    good = nfs_rs_client(proxy.url())
    try:
        with good.open("good.bin", "w+b") as f:
            f.write_at(before, 0)
        with direct_client(nas) as direct:
            fh = direct.lookup(direct.root_fh, "good.bin").object

        bad_sock = raw_connect(proxy.port)
        try:
            bad_address = address(bad_sock)
            nfs_null(bad_sock, 0xB00)  # a normal start: the session and its NAS link are up
            for chunk in bad.build(fh):
                try:
                    bad_sock.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break  # already cut off mid-send: that is the point
            assert closed_by_peer(bad_sock) == b"", "the proxy answered a broken message"
        finally:
            bad_sock.close()

        assert proxy.alive(), proxy.stderr_text()
        # The well-behaved client, connected all along, is still served.
        with good.open("good.bin", "r+b") as f:
            f.write_at(after, len(before))
            assert f.read_at(0, len(before) + len(after)) == before + after
        # The broken WRITEs never reached the NAS.
        assert (nas.export_dir / "good.bin").read_bytes() == before + after
        # And a new client is welcome.
        again = raw_connect(proxy.port)
        with again:
            nfs_null(again, 0xB01)
    finally:
        good.close()

    assert proxy.stop() == 0, proxy.stderr_text()
    records = [r for _, r in read_log(proxy.log_dir)]
    assert not [r for r in records if r.client == bad_address]
    # The LOG is not empty by accident: the good client's writes are there, data and all.
    writes = [r for r in records if r.op == Op.WRITE and r.ok]
    assert [(r.offset, bytes(r.data)) for r in writes] == [(0, before), (len(before), after)]
    # One address for both: the good client's connection was never dropped.
    assert len({r.client for r in writes}) == 1
    assert "broke the RPC protocol" in proxy.stderr_text()


# --------------------------------------------------------------------------
# Portmapper and version routing


def getport(sock: socket.socket, prog: int, vers: int, prot: int = IPPROTO_TCP, *, xid: int) -> int:
    body = xdr.encode(Mapping.xdr, Mapping(prog, vers, prot, 0))
    header, result = exchange(sock, call_message(PMAP_PROG, 2, PmapProc.GETPORT, body, xid=xid))
    assert header.success, header
    return decode_body(xdr.U32, result)


def test_portmap_getport_and_version_refusals(nas, proxy):
    with raw_connect(proxy.port) as sock:
        # GETPORT over TCP to the proxy's own port names the proxy for NFS v3 and MOUNT v3.
        assert getport(sock, NFS_PROGRAM, 3, xid=1) == proxy.port
        assert getport(sock, MOUNT_PROGRAM, 3, xid=2) == proxy.port
        assert getport(sock, PMAP_PROG, 2, xid=3) == proxy.port
        # Not what it serves: UDP, other NFS versions, other programs.
        assert getport(sock, NFS_PROGRAM, 3, IPPROTO_UDP, xid=4) == 0
        assert getport(sock, NFS_PROGRAM, 4, xid=5) == 0
        assert getport(sock, UNKNOWN_PROGRAM, 1, xid=6) == 0

        # NFSv4 and NFSv2 would bypass the journal: PROG_MISMATCH(3, 3), whatever the procedure.
        for n, (vers, proc, body) in enumerate([(4, 0, b""), (4, 1, b"\0" * 24), (2, 0, b""),
                                                (2, 8, b"\0" * 40)]):
            header, rest = exchange(sock, call_message(NFS_PROGRAM, vers, proc, body, xid=10 + n))
            assert header.reply_stat is ReplyStat.MSG_ACCEPTED
            assert header.accept_stat is AcceptStat.PROG_MISMATCH, (vers, proc)
            assert header.mismatch == (3, 3)
            assert bytes(rest) == b""

        # RPC version 3 is not ONC RPC v2: RPC_MISMATCH(2, 2).
        for n, prog in enumerate([NFS_PROGRAM, PMAP_PROG, MOUNT_PROGRAM]):
            header, _ = exchange(sock, call_message(prog, 3, 0, xid=20 + n, rpcvers=3))
            assert header.reply_stat is ReplyStat.MSG_DENIED
            assert header.reject_stat is RejectStat.RPC_MISMATCH
            assert header.mismatch == (2, 2)

        # A program the proxy does not know goes to the NAS, which does not serve it either.
        header, _ = exchange(sock, call_message(UNKNOWN_PROGRAM, 1, 0, xid=30))
        assert header.reply_stat is ReplyStat.MSG_ACCEPTED
        assert header.accept_stat is AcceptStat.PROG_UNAVAIL

        # None of it cost the connection: NFSv3 and MOUNT v3 are relayed on it as usual.
        nfs_null(sock, 40)
        header, body = exchange(sock, call_message(MOUNT_PROGRAM, 3, 0, xid=41))
        assert header.success and bytes(body) == b""
        assert getport(sock, MOUNT_PROGRAM, 3, xid=42) == proxy.port
    assert proxy.alive()


# --------------------------------------------------------------------------
# The NAS goes away and comes back


def failure_of(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except nfs_rs.NfsError as e:
        return e
    raise AssertionError("the call succeeded with the NAS down")


def test_nas_restart_closes_clients_and_the_proxy_serves_the_new_nas(nas, proxy, tmp_path: Path):
    first = block(3, 4096)
    # nfs-rs retries a dead server until its operation deadline: keep that short.
    client = nfs_rs.Client.connect(proxy.url(), connect_timeout=2.0, operation_timeout=3.0)
    direct = nfs_rs.Client.connect(nas.url(), connect_timeout=2.0, operation_timeout=3.0)
    watcher = raw_connect(proxy.port)
    second_nas = None
    try:
        with client.open("before.bin", "w+b") as f:
            f.write_at(first, 0)
        nfs_null(watcher, 0xA00)  # this session's NFS link to the NAS is open
        direct.stat("before.bin")

        nas.stop()
        # The proxy closes the client whose NAS connection died ...
        assert closed_by_peer(watcher) == b""
        # ... so the client's next call fails, as it does against the dead NAS itself.
        through_proxy = failure_of(lambda: client.stat("before.bin"))
        without_proxy = failure_of(lambda: direct.stat("before.bin"))
        assert type(through_proxy) is type(without_proxy), (through_proxy, without_proxy)
        # A new connection is accepted, but with no NAS to relay to it is closed unanswered.
        with raw_connect(proxy.port) as late:
            late.sendall(framed(call_message(NFS_PROGRAM, 3, 0, xid=0xA01)))
            assert closed_by_peer(late) == b""
        assert proxy.alive(), proxy.stderr_text()

        second_nas = start_ganesha(nas.export_dir, tmp_path / "ganesha-again",
                                   nfs_port=nas.nfs_port, mount_port=nas.mount_port)
        fresh = nfs_rs_client(proxy.url())
        try:
            with fresh.open("before.bin", "rb") as f:
                assert f.read() == first
            third = block(4, 4096)
            with fresh.open("after.bin", "w+b") as f:
                f.write_at(third, 0)
                assert f.read_at(0, len(third)) == third
        finally:
            fresh.close()
    finally:
        watcher.close()
        for old in (client, direct):
            with contextlib.suppress(nfs_rs.NfsError):  # closing may need the old NAS
                old.close()
        if second_nas is not None:
            assert proxy.stop() == 0, proxy.stderr_text()
            second_nas.stop()

    assert (nas.export_dir / "after.bin").read_bytes() == third
    records = [r for _, r in read_log(proxy.log_dir)]
    writes = [(r.offset, bytes(r.data)) for r in records if r.op == Op.WRITE and r.ok]
    assert writes == [(0, first), (0, third)]


# --------------------------------------------------------------------------
# LOG quota


CHUNK = 128 * 1024


def log_bytes(log_dir: Path) -> int:
    return sum(p.stat().st_size for p in log_dir.glob("*.seg"))


def open_through(proxy, name: str, *, timeout_s: float = SOCKET_TIMEOUT_S) -> tuple[NfsClient, bytes]:
    client = NfsClient("127.0.0.1", proxy.port, proxy.port, "/export", machine_name="nfsj-quota",
                       timeout_s=timeout_s)
    root = client.mount()
    fh = client.create(root, name, 0o644).obj
    assert fh is not None
    return client, bytes(fh)


def test_quota_passthrough_keeps_serving_and_stops_journaling(nas, proxy_factory):
    quota = 2 * MiB
    proxy = proxy_factory(extra=["--quota", "2M", "--quota-policy", "passthrough",
                                 "--segment-size", "1M"])
    chunks = [block(100 + i, CHUNK) for i in range(48)]  # 6 MiB, three times the quota
    client, fh = open_through(proxy, "passthrough.bin")
    with client:
        for i, chunk in enumerate(chunks):
            resok = client.write(fh, i * CHUNK, chunk, StableHow.FILE_SYNC)
            assert resok.count == CHUNK
        assert client.read(fh, 0, 16).data == chunks[0][:16]
    # Every write reached the NAS ...
    assert (nas.export_dir / "passthrough.bin").read_bytes() == b"".join(chunks)
    assert proxy.alive()
    assert proxy.stop() == 0, proxy.stderr_text()

    # ... but the LOG stopped near the quota: past it, records were dropped.
    assert log_bytes(proxy.log_dir) <= quota + CHUNK + 4096
    writes = [r for _, r in read_log(proxy.log_dir) if r.op == Op.WRITE]
    assert 0 < len(writes) < len(chunks)
    # What was journaled is exact, and it is the writes that came before the quota ran out.
    assert [(r.offset, bytes(r.data)) for r in writes] == \
        [(i * CHUNK, chunks[i]) for i in range(len(writes))]
    # The quota counts write-ahead intents too (sync on the native plane): a
    # FILE_SYNC WRITE's data is in its intent and in its record.
    intents = [r for _, r in read_log(proxy.log_dir, intents=True) if r.op == Op.WRITE]
    assert (len(writes) + len(intents)) * CHUNK >= quota - 2 * CHUNK
    assert "passthrough" in proxy.stderr_text()  # the operator was alerted


def test_quota_block_holds_the_reply_of_a_write_past_the_quota(nas, proxy_factory):
    quota = 1 * MiB
    metrics_port = _free_port()
    proxy = proxy_factory(extra=["--quota", "1M", "--quota-policy", "block", "--segment-size", "1M",
                                 "--metrics", f"127.0.0.1:{metrics_port}"])
    chunks = [block(200 + i, CHUNK) for i in range(32)]  # 4 MiB, four times the quota
    # A long client timeout: the blocked call must be held by the proxy, not given up on by us.
    client, fh = open_through(proxy, "blocked.bin", timeout_s=300.0)
    acked: list[int] = []
    failure: list[BaseException] = []

    def writer() -> None:
        try:
            for i, chunk in enumerate(chunks):
                client.write(fh, i * CHUNK, chunk, StableHow.FILE_SYNC)
                acked.append(i)
        except (OSError, ClientError) as e:
            failure.append(e)

    thread = threading.Thread(target=writer, name="quota-writer", daemon=True)
    thread.start()
    try:
        # Wait until the writer stops making progress (a deadline only to detect a hang).
        deadline = time.monotonic() + 120
        seen, still_since = -1, time.monotonic()
        while time.monotonic() < deadline and thread.is_alive():
            if len(acked) != seen:
                seen, still_since = len(acked), time.monotonic()
            elif time.monotonic() - still_since > 3.0:
                break
            time.sleep(0.05)
        assert thread.is_alive(), f"every write completed ({len(acked)} acked, {failure}): block let them past the quota"
        assert not failure
        assert len(acked) < len(chunks)
        # It did not block early either; intents count (see the passthrough test).
        per_write = 2 if value(scrape(metrics_port), "nfsj_journal_intents_total") >= len(acked) else 1
        assert len(acked) * CHUNK * per_write >= quota - 2 * CHUNK
        blocked_at = len(acked)
        time.sleep(2.0)
        assert thread.is_alive() and len(acked) == blocked_at, "the blocked write returned"
        assert proxy.alive()
        assert value(scrape(metrics_port), "nfsj_journal_blocked_calls") == 1
    finally:
        # Shutting the proxy down ends the wait: the held call fails, it is never acknowledged.
        proxy.stop()
        thread.join(timeout=60)
        client.close()
    assert not thread.is_alive(), "the writer still waits after the proxy stopped"
    assert len(acked) == blocked_at
    assert failure, "the held write was acknowledged"

    writes = [r for _, r in read_log(proxy.log_dir) if r.op == Op.WRITE]
    # Every acknowledged write is journaled, exactly; the held one is not.
    assert [(r.offset, bytes(r.data)) for r in writes] == \
        [(i * CHUNK, chunks[i]) for i in acked]
    assert log_bytes(proxy.log_dir) <= quota + CHUNK + 4096


@pytest.mark.parametrize("then", ["disconnect", "garbage"])
def test_write_relayed_before_the_client_vanished_is_journaled(nas, proxy, then):
    """A WRITE the proxy already relayed reaches the NAS even when its client is gone
    before the reply; the LOG must still get its record, or a restore misses the change."""
    with direct_client(nas) as direct:
        fh = bytes(direct.create(direct.root_fh, "vanish.bin", 0o644).obj)
    data = block(98, 4096)
    sock = raw_connect(proxy.port)
    nfs_null(sock, 1)  # the session's NAS link is up
    tail = b"GET / HTTP/1.1\r\n\r\n" if then == "garbage" else b""
    sock.sendall(framed(_write_call(fh, 0x77, data)) + tail)
    if then == "garbage":
        closed_by_peer(sock)
    sock.close()
    deadline = time.monotonic() + 20
    while (nas.export_dir / "vanish.bin").read_bytes() != data and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (nas.export_dir / "vanish.bin").read_bytes() == data  # the NAS applied it
    assert proxy.stop() == 0
    writes = [r for _, r in read_log(proxy.log_dir) if r.op == Op.WRITE]
    assert [(r.offset, bytes(r.data)) for r in writes] == [(0, data)]


def test_a_stop_waits_for_the_mutations_it_relayed(nas, proxy):
    """A routine stop (SIGTERM) lets a call already relayed to the NAS finish:
    its client gets the reply and the LOG its record, so a restart makes no
    gap. The NAS is frozen while the stop begins, so the call is in flight."""
    with direct_client(nas) as direct:
        fh = bytes(direct.create(direct.root_fh, "in-flight.bin", 0o644).obj)
    data = block(77, 4096)
    client = NfsClient("127.0.0.1", proxy.port, proxy.port, "/export", timeout_s=30.0)
    client.mount()
    outcome: list[object] = []
    writer = threading.Thread(target=lambda: outcome.append(_try(
        lambda: client.write(fh, 0, data, StableHow.FILE_SYNC))))
    os.kill(nas.pid, signal.SIGSTOP)
    try:
        writer.start()
        time.sleep(0.5)  # relayed, and held by the frozen NAS
        stopped: list[int] = []
        stopper = threading.Thread(target=lambda: stopped.append(proxy.stop()))
        stopper.start()
        time.sleep(1.0)
        assert proxy.alive(), "the stop did not wait for the relayed WRITE"
    finally:
        os.kill(nas.pid, signal.SIGCONT)
    stopper.join(timeout=30)
    writer.join(timeout=30)
    client.close()
    assert stopped == [0]
    assert outcome and not isinstance(outcome[0], BaseException), f"the client got no reply: {outcome}"
    entries = [r for _, r in read_log(proxy.log_dir)]
    assert [(r.offset, bytes(r.data)) for r in entries if r.op == Op.WRITE] == [(0, data)]
    assert not [r for r in entries if r.op == Op.GAP], "a stop that waited marks no gap"


def _try(call: Callable[[], object]) -> object:
    try:
        return call()
    except BaseException as e:  # noqa: BLE001  the test reports it
        return e
