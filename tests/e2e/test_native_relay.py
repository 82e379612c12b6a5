"""The native relay (`nfsproxy._dataplane.Relay`) in front of a real ganesha.

The relay alone: framing, routing, portmapper answers, XID matching, the
FSINFO clamp and the isolation of bad clients, with the clients the rest of
the suite uses (nfs-rs, libnfs-utils, our codec client's raw layer). The
relay runs here without a journal (test_native_journal.py and the rest
of the suite, which runs the native plane, cover it journaling); the answers it makes itself are
compared byte for byte with what the Python relay's sans-IO code makes.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter

import pytest

from e2e.test_proxy_faults import (BAD_INPUTS, CRED, UNKNOWN_PROGRAM, address, block, call_message,
                                   closed_by_peer, direct_client, exchange, framed, nfs_null,
                                   nfs_rs_client, raw_connect)
from e2e.treecompare import diff, hard_link_groups, snapshot
from e2e.workload import SCRIPTED_ERRORS, run_workload
from nfsproxy import _dataplane
from nfsproxy.wire import xdr
from nfsproxy.nas.client import NfsClient, created_fh
from nfsproxy.wire.mount import MOUNT_PROGRAM
from nfsproxy.wire.nfs3 import (FSINFO3args, GETATTR3args, NFS_PROGRAM, Diropargs3, Nfsstat3, Proc3,
                           REMOVE3args, StableHow, WRITE3args)
from nfsproxy.wire.nfsacl import NFSACL_PROGRAM
from nfsproxy.wire.nlm import NLM_PROGRAM, NSM_PROGRAM
from nfsproxy.wire.portmap import IPPROTO_TCP, IPPROTO_UDP, PMAP_PROG, PMAPLIST, Mapping
from nfsproxy.relay.routing import answer_portmap, reject
from nfsproxy.wire.rpc import AcceptStat, RpcCall, RpcReply, encode_call, encode_reply, parse_message


pytestmark = pytest.mark.ganesha

MiB = 1 << 20
XID = 0x0BADC0DE
#: Bad inputs the relay refuses without a journal; the other two are WRITEs
#: whose arguments only capture decodes (test_proxy_faults.py runs them all).
RELAY_BAD_INPUTS = [b for b in BAD_INPUTS if not b.name.startswith("write_")]


class NativeRelay:
    """A native relay started in this process, shaped like the proxy fixture's."""

    def __init__(self, nas, **kwargs):
        self.nas = nas
        self.relay = _dataplane.Relay("127.0.0.1", nas.nfs_port, nas.mount_port, **kwargs)
        self.port = self.relay.port

    def url(self, path: str = "") -> str:
        return f"nfs://127.0.0.1/export{path}?version=3&nfsport={self.port}&mountport={self.port}"

    def counters(self) -> dict[str, int]:
        return self.relay.counters()

    def client(self, name: str = "nfsj-native") -> NfsClient:
        c = NfsClient("127.0.0.1", self.port, self.port, "/export", machine_name=name, timeout_s=30.0)
        c.mount()
        return c


@pytest.fixture
def relay(nas):
    r = NativeRelay(nas, threads=2)
    yield r
    r.relay.stop()


def test_workload_through_the_native_relay_leaves_the_same_tree(nas, relay, tmp_path):
    direct_errors = run_workload(nas.url(), "direct", 21, random_ops=150, tmp_dir=tmp_path)
    relayed_errors = run_workload(relay.url(), "relayed", 21, random_ops=150, tmp_dir=tmp_path)
    assert [(e.call, e.path, e.proc, e.code_name) for e in direct_errors[:len(SCRIPTED_ERRORS)]] \
        == list(SCRIPTED_ERRORS)
    assert relayed_errors == direct_errors
    direct, relayed = snapshot(nas.export_dir / "direct"), snapshot(nas.export_dir / "relayed")
    assert {"big/b2.bin", "many/f199", "libnfs/in.bin", "random"} <= direct.keys()
    assert hard_link_groups(direct)
    problems = diff(direct, relayed, names=("direct", "relayed"))
    assert not problems, "trees differ:\n" + "\n".join(problems)
    counters = relay.counters()
    # Transparent without dropping anyone: nfs-rs would hide a dropped connection by retrying.
    assert counters["protocol_errors_total"] == counters["backend_failures_total"] == 0
    assert counters["calls_total"] == counters["replies_total"] > 0


@pytest.mark.parametrize("direction", ["write", "read"])
def test_full_size_nfs_rs_transfers_pass_through(nas, relay, direction):
    """A 4 MiB WRITE call or READ reply is a message a little over 4 MiB: relayed whole."""
    data = bytes(range(256)) * (4 * MiB // 256)
    with nfs_rs_client(relay.url()) as client:
        if direction == "write":
            with client.open("big.bin", "wb") as f:
                f.write_at(data, 0)
        else:
            (nas.export_dir / "big.bin").write_bytes(data)
        with client.open("big.bin", "rb") as f:
            assert f.read_at(0, len(data)) == data
    assert (nas.export_dir / "big.bin").read_bytes() == data


@pytest.mark.parametrize("bad", RELAY_BAD_INPUTS, ids=[b.name for b in RELAY_BAD_INPUTS])
def test_a_protocol_breaker_is_disconnected_and_no_one_else(nas, relay, bad):
    before, after = block(1, 8192), block(2, 8192)
    good = nfs_rs_client(relay.url())
    try:
        with good.open("good.bin", "w+b") as f:
            f.write_at(before, 0)
        with direct_client(nas) as direct:
            fh = direct.lookup(direct.root_fh, "good.bin").object
        with raw_connect(relay.port) as bad_sock:
            nfs_null(bad_sock, 0xB00)  # a normal start: the session and its NAS link are up
            for chunk in bad.build(fh):
                try:
                    bad_sock.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
            assert closed_by_peer(bad_sock) == b"", "the relay answered a broken message"
        with good.open("good.bin", "r+b") as f:
            f.write_at(after, len(before))
            assert f.read_at(0, len(before) + len(after)) == before + after
        with raw_connect(relay.port) as again:
            nfs_null(again, 0xB01)
    finally:
        good.close()
    assert relay.counters()["protocol_errors_total"] == 1
    assert relay.counters()["sessions_total"] >= 3


def _pmap_call(proc: int, body: bytes, xid: int) -> bytes:
    return call_message(PMAP_PROG, 2, proc, body, xid=xid)


def test_the_answers_it_makes_itself_are_the_python_relays_byte_for_byte(relay):
    """Portmapper (every procedure) and the version refusals, compared with nfsproxy.relay.routing."""
    mapping = lambda prog, vers, prot=IPPROTO_TCP: xdr.encode(Mapping.xdr, Mapping(prog, vers, prot, 0))  # noqa: E731
    calls = [_pmap_call(0, b"", 1), _pmap_call(4, b"", 2), _pmap_call(5, b"\0" * 16, 3),
             _pmap_call(1, mapping(NFS_PROGRAM, 3), 4), _pmap_call(2, mapping(NFS_PROGRAM, 3), 5),
             call_message(NFS_PROGRAM, 4, 0, xid=6), call_message(NFS_PROGRAM, 2, 8, b"\0" * 40, xid=7),
             call_message(PMAP_PROG, 3, 3, xid=8), call_message(MOUNT_PROGRAM, 3, 0, xid=9, rpcvers=3)]
    calls += [_pmap_call(3, mapping(prog, vers, prot), 10 + n) for n, (prog, vers, prot) in enumerate(
        [(NFS_PROGRAM, 3, IPPROTO_TCP), (MOUNT_PROGRAM, 1, IPPROTO_TCP), (MOUNT_PROGRAM, 3, IPPROTO_TCP),
         (NFSACL_PROGRAM, 3, IPPROTO_TCP), (PMAP_PROG, 2, IPPROTO_TCP), (NFS_PROGRAM, 3, IPPROTO_UDP),
         (NFS_PROGRAM, 4, IPPROTO_TCP), (UNKNOWN_PROGRAM, 1, IPPROTO_TCP)])]
    with raw_connect(relay.port) as sock:
        for message in calls:
            sock.sendall(framed(message))
            mark = _recv_exactly(sock, 4)
            got = _recv_exactly(sock, struct.unpack(">I", mark)[0] & 0x7FFFFFFF)
            call, body = parse_message(message)
            if call.prog == PMAP_PROG and call.proc == 4 and call.vers == 2:
                # DUMP: the Python relay also lists NLM, NSM and rpcbind v3/v4, which the
                # native relay does not serve yet; the rest must be the same mappings.
                _, listed = parse_message(got)
                assert set(xdr.decode(PMAPLIST, listed)) == {
                    m for m in xdr.decode(PMAPLIST, parse_message(answer_portmap(call, body, relay.port))[1])
                    if m.prog not in (NLM_PROGRAM, NSM_PROGRAM) and (m.prog, m.vers) not in (
                        (PMAP_PROG, 3), (PMAP_PROG, 4))}, call
                continue
            want = answer_portmap(call, body, relay.port) if call.prog == PMAP_PROG and call.vers == 2 \
                and call.rpcvers == 2 else reject(call)
            if call.prog == PMAP_PROG and call.vers != 2 and call.rpcvers == 2:
                # The native relay serves portmapper v2 only (rpcbind v3/v4 come with NLM).
                want = encode_reply(RpcReply(call.xid, accept_stat=AcceptStat.PROG_MISMATCH,
                                             mismatch=(2, 2))).getvalue()
            assert got == want, call
        # None of it cost the connection.
        nfs_null(sock, 40)
        header, body = exchange(sock, call_message(MOUNT_PROGRAM, 3, 0, xid=41))
        assert header.success and bytes(body) == b""
        header, _ = exchange(sock, call_message(UNKNOWN_PROGRAM, 1, 0, xid=42))
        assert header.accept_stat == 1  # PROG_UNAVAIL, from the NAS


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, "the relay closed the connection"
        got += chunk
    return bytes(got)


def test_two_different_calls_under_one_xid_each_get_their_own_reply(relay, nas):
    with relay.client() as c:
        c.create(c.root, "present")
        remove = lambda name: c.call_message(Proc3.REMOVE, REMOVE3args(Diropargs3(c.root, name)), XID)  # noqa: E731
        c.send_messages([remove("absent"), remove("present")])
        got = [c.receive_reply() for _ in range(2)]
        assert [h.xid for h, _ in got] == [XID, XID]
        statuses = Counter(c.decode_reply(Proc3.REMOVE, body).status for _, body in got)
        assert statuses == Counter({Nfsstat3.NFS3ERR_NOENT: 1, Nfsstat3.NFS3_OK: 1})
    assert not (nas.export_dir / "present").exists()


def test_a_retransmission_in_flight_is_absorbed_and_answered_once(relay, nas):
    with relay.client() as c:
        fh = created_fh(c, c.create(c.root, "target"), c.root, "target")
        # Small enough that both copies arrive in one read, before any reply can.
        write = c.call_message(Proc3.WRITE, WRITE3args(fh, 0, 4096, StableHow.FILE_SYNC, block(3, 4096)), XID)
        fence = c.call_message(Proc3.GETATTR, GETATTR3args(c.root), XID + 1)
        c.send_messages([write, write, fence])
        xids = []
        while XID + 1 not in xids or XID not in xids:
            header, _ = c.receive_reply()
            xids.append(header.xid)
        c.null()  # a second answer to the retransmission would have come before this one
    assert Counter(xids)[XID] == 1, (xids, relay.counters())
    assert relay.counters()["retransmissions_absorbed_total"] == 1
    assert (nas.export_dir / "target").read_bytes() == block(3, 4096)


def test_fsinfo_is_clamped_to_what_the_relay_takes_and_nothing_else_changes(nas):
    relay = NativeRelay(nas, max_payload_bytes=MiB)
    try:
        with relay.client() as through, direct_client(nas) as direct:
            got = through._call(Proc3.FSINFO, FSINFO3args(through.root))
            want = direct._call(Proc3.FSINFO, FSINFO3args(direct.root_fh))
            assert want.wtmax > MiB  # ganesha offers more than the relay takes
            assert (got.rtmax, got.rtpref, got.wtmax, got.wtpref, got.dtpref) == tuple(
                min(v, MiB) for v in (want.rtmax, want.rtpref, want.wtmax, want.wtpref, want.dtpref))
            assert (got.rtmult, got.wtmult, got.maxfilesize, got.properties) == \
                (want.rtmult, want.wtmult, want.maxfilesize, want.properties)
        # The cap is real: a message past it closes its client.
        with raw_connect(relay.port) as sock:
            sock.sendall(struct.pack(">I", 0x80000000 | (MiB + (64 << 10) + 1)))
            assert closed_by_peer(sock) == b""
    finally:
        relay.relay.stop()


def test_pipelined_calls_from_many_clients_are_all_answered(relay, nas):
    """Clients spread over the relay's threads, each with 200 calls in flight at once."""
    clients = [relay.client(f"nfsj-many-{i}") for i in range(6)]
    try:
        for c in clients:
            c.send_messages([c.call_message(Proc3.GETATTR, GETATTR3args(c.root), XID + n)
                             for n in range(200)])
        for c in clients:
            xids = sorted(c.receive_reply()[0].xid for _ in range(200))
            assert xids == [XID + n for n in range(200)]
    finally:
        for c in clients:
            c.close()
    assert relay.counters()["sessions_total"] == 12  # each client: its NFS and its MOUNT connection


def test_stop_closes_clients_and_frees_the_port(nas):
    relay = NativeRelay(nas)
    sock = raw_connect(relay.port)
    nfs_null(sock, 1)
    relay.relay.stop()
    assert closed_by_peer(sock) == b""
    sock.close()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", relay.port))
    relay.relay.stop()  # idempotent
