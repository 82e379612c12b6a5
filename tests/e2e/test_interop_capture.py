"""Interop: our codecs against the exact bytes real clients exchange with real ganesha.

Two independent NFSv3 clients (nfs-rs, and libnfs through nfs-cp / nfs-ls /
nfs-cat) run a workload against ganesha through a small recording TCP relay,
one relay per service (NFS and MOUNT). The relay appends every chunk it
forwards to that connection's per-direction list; nothing is parsed while the
clients run, so the capture cannot be shaped by the code under test.

Then each recorded stream is fed, chunk by chunk as it was received, to
`RpcMessageReader`; every message is split with `parse_message`, calls are
looked up in `programs.lookup` and decoded with their argument codec, replies
are matched to calls by XID and decoded with the result codec. Every message
must decode, and encoding the decoded header and body must give back the
original bytes exactly.

A recording relay rather than tshark: tshark is not part of the CI install,
needs capture rights, and a relay gives each TCP direction as one clean
stream without reassembly.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from nfsproxy.wire import programs, xdr
from nfsproxy.demo.ganesha import GaneshaInstance, start_ganesha
from nfsproxy.wire.rpc import (NEED_DATA, RpcCall, RpcDecodeError, RpcMessageReader, RpcReply,
                          decode_body, encode_call, encode_reply, parse_message)

pytestmark = pytest.mark.ganesha

NFS_PROGRAM = 100003
MOUNT_PROGRAM = 100005
PROGRAM_NAMES = {100000: "PORTMAP", NFS_PROGRAM: "NFS", MOUNT_PROGRAM: "MOUNT", 100227: "NFSACL"}
TOOL_TIMEOUT_S = 120
RELAY_DRAIN_TIMEOUT_S = 20


# --------------------------------------------------------------------------
# The recording relay


@dataclasses.dataclass(eq=False)
class RecordedConnection:
    """One client connection through the relay: the chunks each way, in order."""

    service: str
    index: int
    to_server: list[bytes] = dataclasses.field(default_factory=list)
    to_client: list[bytes] = dataclasses.field(default_factory=list)
    cut: bool = False  # still open at relay shutdown: its streams may end mid-message

    @property
    def label(self) -> str:
        return f"{self.service}#{self.index}"


class RecordingRelay:
    """A TCP relay from 127.0.0.1:<port> to an upstream port that records what it forwards."""

    def __init__(self, service: str, upstream_port: int, host: str = "127.0.0.1"):
        self.service = service
        self.host = host
        self.upstream_port = upstream_port
        self.connections: list[RecordedConnection] = []
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._pumps: list[tuple[threading.Thread, RecordedConnection]] = []
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"relay-{service}",
                                          daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                server = socket.create_connection((self.host, self.upstream_port), timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                conn = RecordedConnection(self.service, len(self.connections))
                self.connections.append(conn)
                self._sockets += (client, server)
                for src, dst, chunks in ((client, server, conn.to_server),
                                         (server, client, conn.to_client)):
                    t = threading.Thread(target=self._pump, args=(src, dst, chunks),
                                         name=f"relay-{conn.label}", daemon=True)
                    self._pumps.append((t, conn))
                    t.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, chunks: list[bytes]) -> None:
        try:
            while data := src.recv(1 << 20):
                chunks.append(data)
                dst.sendall(data)
        except OSError:
            pass  # a reset ends the stream like a FIN; what arrived is recorded
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        """Stop accepting, let open connections drain, then close everything."""
        self._closing.set()
        self._acceptor.join()
        self._listener.close()
        with self._lock:
            pumps = list(self._pumps)
        for t, conn in pumps:
            t.join(RELAY_DRAIN_TIMEOUT_S)
            if t.is_alive():
                conn.cut = True
        if any(t.is_alive() for t, _ in pumps):
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            for t, _ in pumps:
                t.join(5)
        for s in self._sockets:
            s.close()

    def __enter__(self) -> RecordingRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def relay_url(nfs: RecordingRelay, mount: RecordingRelay, path: str = "") -> str:
    sub = "/" + path.lstrip("/") if path else ""
    return (f"nfs://127.0.0.1/export{sub}?version=3"
            f"&nfsport={nfs.port}&mountport={mount.port}")


# --------------------------------------------------------------------------
# Workloads


def nfs_rs_workload(nfs: RecordingRelay, mount: RecordingRelay) -> dict:
    """Exercise every NFSv3 procedure nfs-rs can reach; return what the tree should hold."""
    import nfs_rs

    timeouts = dict(connect_timeout=5.0, operation_timeout=30.0)
    exports = nfs_rs.list_exports("127.0.0.1", mount_port=mount.port, nfs_port=nfs.port,
                                  **timeouts)
    assert [e.path for e in exports] == ["/export"]

    expected: dict[str, bytes] = {}
    # Small directory replies, so that listing `many/` takes several READDIRPLUS pages.
    with nfs_rs.Client.connect(relay_url(nfs, mount), readdir_buffer=(2048, 8192),
                               **timeouts) as c:
        c.fs_info()
        c.fs_stat()
        c.mkdir("work")
        c.mkdir("work/sub", 0o750)

        data = bytearray(os.urandom(200_000))
        with c.open("work/data.bin", "wb") as f:
            f.write(bytes(data))
        with c.open("work/data.bin", "r+b") as f:
            f.write_at(b"x" * 4096, 8192)
            f.write_at(b"tail", 300_000)  # past EOF: leaves a hole
        data[8192:8192 + 4096] = b"x" * 4096
        data += bytes(300_000 - len(data)) + b"tail"
        with c.open("work/data.bin", "rb") as f:
            assert f.read() == data
            assert f.read_at(8190, 10) == bytes(data[8190:8200])

        c.chmod("work/data.bin", 0o640)
        c.chown("work/data.bin", 1234, 5678)
        c.utime("work/data.bin", ns=(1_600_000_000_123_456_789, 1_600_000_001_987_654_321))
        c.truncate("work/data.bin", 100_000)
        del data[100_000:]
        info = c.stat("work/data.bin")
        assert (info.size, info.mode & 0o7777, info.uid, info.gid) == (100_000, 0o640, 1234, 5678)
        assert c.access("work/data.bin", os.R_OK | os.W_OK)

        c.symlink("data.bin", "work/link")
        assert c.readlink("work/link") == "data.bin"
        c.symlink("../../outside/target with spaces", "work/sub/dangling")
        c.link("work/data.bin", "work/hard")
        c.rename("work/hard", "work/sub/hard2")
        assert c.stat("work/data.bin").nlink == 2
        c.touch("work/empty")

        odd = "work/ünïcödé ✓ name.txt"
        with c.open(odd, "wb") as f:
            f.write(b"odd name")
        long_name = "work/" + "L" * 255
        with c.open(long_name, "wb") as f:
            f.write(b"long name")

        big = os.urandom(3 * 1024 * 1024 + 17)  # several WRITEs, then COMMIT
        with c.open("work/big.bin", "wb") as f:
            f.write(big)
        with c.open("work/big.bin", "rb") as f:
            assert f.read() == big

        c.mkdir("many")
        for i in range(300):
            with c.open(f"many/file-{i:04d}-{'p' * 40}", "wb") as f:
                f.write(i.to_bytes(2, "big"))
        assert len(c.listdir("many")) == 300
        names = {e.name for e in c.scandir("work")}
        assert {"data.bin", "link", "sub", "empty", "big.bin"} <= names
        for i in range(0, 300, 2):
            c.remove(f"many/file-{i:04d}-{'p' * 40}")

        # Failures: their replies take the resfail arms.
        assert not c.exists("work/missing")
        with pytest.raises(nfs_rs.NfsError):
            c.mkdir("work/sub")  # NFS3ERR_EXIST
        with pytest.raises(nfs_rs.NfsError):
            c.rmdir("work")  # NFS3ERR_NOTEMPTY
        with pytest.raises(nfs_rs.NfsError):
            c.readlink("work/data.bin")  # NFS3ERR_INVAL
        with pytest.raises(nfs_rs.NfsError):
            c.remove("work/missing")  # NFS3ERR_NOENT
        with pytest.raises(nfs_rs.NfsError):
            c.rename("work/missing", "work/other")  # NFS3ERR_NOENT

        c.mkdir("gone")
        c.rmdir("gone")
        c.remove("work/empty")

    expected.update({
        "work/data.bin": bytes(data),
        "work/sub/hard2": bytes(data),
        "work/ünïcödé ✓ name.txt": b"odd name",
        long_name: b"long name",
        "work/big.bin": big,
    })
    for i in range(1, 300, 2):
        expected[f"many/file-{i:04d}-{'p' * 40}"] = i.to_bytes(2, "big")
    return expected


def libnfs_workload(nfs: RecordingRelay, mount: RecordingRelay, tmp: Path,
                    tools: dict[str, str]) -> dict:
    """nfs-cp a multi-MiB file in and out, nfs-ls, nfs-cat; return what the tree should hold."""
    def run(*argv: str) -> bytes:
        done = subprocess.run(argv, capture_output=True, timeout=TOOL_TIMEOUT_S)
        assert done.returncode == 0, f"{argv}: {done.returncode} {done.stderr[-2000:]!r}"
        return done.stdout

    src = tmp / "libnfs-in.bin"
    src.write_bytes(os.urandom(5 * 1024 * 1024 + 4321))
    run(tools["nfs-cp"], str(src), relay_url(nfs, mount, "libnfs.bin"))
    listing = run(tools["nfs-ls"], relay_url(nfs, mount)).decode(errors="replace")
    assert "libnfs.bin" in listing and "work" in listing
    work_listing = run(tools["nfs-ls"], relay_url(nfs, mount, "work"))
    assert b"data.bin" in work_listing
    assert run(tools["nfs-cat"], relay_url(nfs, mount, "work/ünïcödé ✓ name.txt")) == b"odd name"
    back = tmp / "libnfs-out.bin"
    run(tools["nfs-cp"], relay_url(nfs, mount, "libnfs.bin"), str(back))
    assert back.read_bytes() == src.read_bytes()
    return {"libnfs.bin": src.read_bytes()}


# --------------------------------------------------------------------------
# Decoding


@dataclasses.dataclass
class Exchange:
    """One decoded call and its reply."""

    connection: str
    call: RpcCall
    procedure: programs.Procedure | None
    args: object = None
    reply: RpcReply | None = None
    res: object = None


@dataclasses.dataclass
class Decoded:
    exchanges: list[Exchange] = dataclasses.field(default_factory=list)
    messages: int = 0
    bytes: int = 0
    unknown_calls: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    failures: list[str] = dataclasses.field(default_factory=list)

    def counts(self, prog: int) -> collections.Counter:
        return collections.Counter(x.procedure.name for x in self.exchanges
                                   if x.procedure is not None and x.call.prog == prog)


def split_messages(chunks: list[bytes]) -> tuple[list[bytes], int]:
    """Feed chunks as they arrived; return the messages and the bytes left over."""
    reader = RpcMessageReader()
    out = []
    for chunk in chunks:
        reader.receive(chunk)
        while (m := reader.next_message()) is not NEED_DATA:
            out.append(bytes(m))
    return out, reader.buffered_bytes


def decode_capture(connections: list[RecordedConnection]) -> Decoded:
    d = Decoded()
    fail = d.failures.append
    for conn in connections:
        calls, leftover = split_messages(conn.to_server)
        replies, leftover_back = split_messages(conn.to_client)
        if (leftover or leftover_back) and not conn.cut:
            fail(f"{conn.label}: stream ends inside a message ({leftover}/{leftover_back} bytes)")
        pending: dict[int, Exchange] = {}

        for raw in calls:
            d.messages += 1
            d.bytes += len(raw)
            try:
                header, body = parse_message(raw)
            except RpcDecodeError as e:
                fail(f"{conn.label}: bad call header: {e}; starts {raw[:64].hex()}")
                continue
            if not isinstance(header, RpcCall):
                fail(f"{conn.label}: client sent a reply (xid {header.xid:#x})")
                continue
            proc = programs.lookup(header.prog, header.vers, header.proc)
            x = Exchange(conn.label, header, proc)
            if header.xid in pending:
                fail(f"{conn.label}: xid {header.xid:#x} reused while in flight")
            pending[header.xid] = x
            p = encode_call(header)
            if proc is None:
                d.unknown_calls[(header.prog, header.vers, header.proc)] += 1
                p.raw(body)
            else:
                try:
                    x.args = decode_body(proc.args, body)
                except RpcDecodeError as e:
                    fail(f"{conn.label}: call {_name(header, proc)} xid {header.xid:#x}: {e}; "
                         f"body starts {bytes(body[:64]).hex()}")
                    continue
                p.raw(xdr.encode(proc.args, x.args))
            if p.getvalue() != raw:
                fail(f"{conn.label}: call {_name(header, proc)} xid {header.xid:#x} "
                     f"re-encodes differently")
            d.exchanges.append(x)

        for raw in replies:
            d.messages += 1
            d.bytes += len(raw)
            try:
                header, body = parse_message(raw)
            except RpcDecodeError as e:
                fail(f"{conn.label}: bad reply header: {e}; starts {raw[:64].hex()}")
                continue
            if not isinstance(header, RpcReply):
                fail(f"{conn.label}: server sent a call (xid {header.xid:#x})")
                continue
            x = pending.pop(header.xid, None)
            if x is None:
                fail(f"{conn.label}: reply xid {header.xid:#x} matches no call")
                continue
            x.reply = header
            p = encode_reply(header)
            if header.success and x.procedure is not None:
                try:
                    x.res = decode_body(x.procedure.res, body)
                except RpcDecodeError as e:
                    fail(f"{conn.label}: reply to {_name(x.call, x.procedure)} xid "
                         f"{header.xid:#x}: {e}; body starts {bytes(body[:64]).hex()}")
                    continue
                p.raw(xdr.encode(x.procedure.res, x.res))
            else:
                # A refused call's reply says all in its header (even PROG_MISMATCH).
                if not header.success and len(body):
                    fail(f"{conn.label}: {header} carries {len(body)} unexpected body bytes")
                p.raw(body)
            if p.getvalue() != raw:
                fail(f"{conn.label}: reply to {_name(x.call, x.procedure)} xid {header.xid:#x} "
                     f"re-encodes differently")
        if pending and not conn.cut:
            fail(f"{conn.label}: {len(pending)} calls never answered")
    return d


def _name(call: RpcCall, proc: programs.Procedure | None) -> str:
    prog = PROGRAM_NAMES.get(call.prog, str(call.prog))
    return f"{prog}v{call.vers}.{proc.name if proc else call.proc}"


# --------------------------------------------------------------------------
# The capture (once per module) and the assertions on it


@dataclasses.dataclass
class Capture:
    nas: GaneshaInstance
    connections: list[RecordedConnection]
    decoded: Decoded


@pytest.fixture(scope="module")
def capture(tmp_path_factory, libnfs_utils) -> Capture:
    root = tmp_path_factory.mktemp("interop")
    nas = start_ganesha(root / "export", root / "ganesha")
    try:
        with RecordingRelay("nfs", nas.nfs_port) as nfs, \
                RecordingRelay("mount", nas.mount_port) as mount:
            expected = nfs_rs_workload(nfs, mount)
            expected.update(libnfs_workload(nfs, mount, root, libnfs_utils))
        # The workload did what it meant to: compare with the exported directory.
        for rel, content in expected.items():
            assert (nas.export_dir / rel).read_bytes() == content, rel
        assert os.readlink(nas.export_dir / "work" / "link") == "data.bin"
        assert not (nas.export_dir / "gone").exists()
    finally:
        nas.stop()
    connections = nfs.connections + mount.connections
    return Capture(nas, connections, decode_capture(connections))


def test_capture_went_through_the_relays(capture):
    services = collections.Counter(c.service for c in capture.connections)
    # nfs-rs list_exports + client, then 5 libnfs runs: each mounts and connects.
    assert services["mount"] >= 2 and services["nfs"] >= 2, services
    assert not [c.label for c in capture.connections if c.cut]
    assert capture.decoded.messages > 1000
    assert capture.decoded.bytes > 2 * (3 + 5) * 1024 * 1024  # the big files went in and out


def test_every_message_decodes_and_reencodes_exactly(capture):
    d = capture.decoded
    assert d.failures == []
    assert all(x.reply is not None for x in d.exchanges)
    known = [x for x in d.exchanges if x.procedure is not None]
    assert all(x.args is not None or x.procedure.args is xdr.VOID for x in known)
    answered = [x for x in known if x.reply.success]
    assert answered and all(x.res is not None or x.procedure.res is xdr.VOID for x in answered)


def test_capture_covers_many_procedures(capture):
    d = capture.decoded
    nfs = d.counts(NFS_PROGRAM)
    mount = d.counts(MOUNT_PROGRAM)
    unknown = {f"{PROGRAM_NAMES.get(p, p)}v{v}.{n}": k for (p, v, n), k in d.unknown_calls.items()}
    print(f"\nNFSv3 procedures seen ({len(nfs)}): {dict(sorted(nfs.items()))}")
    print(f"MOUNTv3 procedures seen ({len(mount)}): {dict(sorted(mount.items()))}")
    print(f"calls of programs our codecs do not cover: {unknown or 'none'}")
    print(f"{d.messages} messages, {d.bytes} bytes in {len(capture.connections)} connections")

    required = {"GETATTR", "SETATTR", "LOOKUP", "ACCESS", "READLINK", "READ", "WRITE", "CREATE",
                "MKDIR", "SYMLINK", "REMOVE", "RMDIR", "RENAME", "LINK", "READDIRPLUS",
                "FSSTAT", "FSINFO", "COMMIT"}
    assert required <= set(nfs), required - set(nfs)
    assert len(nfs) >= 18
    assert {"MNT", "EXPORT"} <= set(mount)
    # Only programs we do not claim to cover may be unknown (e.g. NFSACL 100227).
    assert not [k for k in d.unknown_calls if k[0] in (NFS_PROGRAM, MOUNT_PROGRAM)]


def test_failures_decode_as_resfail(capture):
    """Error replies (EXIST, NOTEMPTY, INVAL, NOENT) took the union's failure arm."""
    statuses = collections.Counter()
    for x in capture.decoded.exchanges:
        if x.call.prog == NFS_PROGRAM and x.res is not None:
            statuses[(x.procedure.name, x.res.status.name)] += 1
    print(f"\nNFSv3 (procedure, status) pairs: {dict(sorted(statuses.items()))}")
    for want in [("MKDIR", "NFS3ERR_EXIST"), ("RMDIR", "NFS3ERR_NOTEMPTY"),
                 ("LOOKUP", "NFS3ERR_NOENT")]:
        assert statuses[want], want
    assert any(s.endswith("NFS3ERR_INVAL") for p, s in statuses if p == "READLINK")


def test_decoded_values_match_the_workload(capture):
    """Spot-check that the decoded values mean what the clients did."""
    ex = capture.decoded.exchanges
    written = sum(len(x.args.data) for x in ex if x.procedure and x.call.prog == NFS_PROGRAM
                  and x.procedure.name == "WRITE")
    assert written >= (3 + 5) * 1024 * 1024
    lookups = {x.args.what.name for x in ex if x.procedure and x.call.prog == NFS_PROGRAM
               and x.procedure.name == "LOOKUP"}
    assert "ünïcödé ✓ name.txt".encode() in lookups or any(
        x.procedure and x.procedure.name == "CREATE"
        and x.args.where.name == "ünïcödé ✓ name.txt".encode()
        for x in ex if x.call.prog == NFS_PROGRAM)
    symlinks = [x for x in ex if x.procedure and x.call.prog == NFS_PROGRAM
                and x.procedure.name == "SYMLINK"]
    assert {x.args.symlink.symlink_data for x in symlinks} == {
        b"data.bin", b"../../outside/target with spaces"}
    pages = [x for x in ex if x.procedure and x.call.prog == NFS_PROGRAM
             and x.procedure.name == "READDIRPLUS"]
    assert any(x.args.cookie != 0 for x in pages), "no READDIRPLUS continued a listing"
    mnt = [x for x in ex if x.procedure and x.call.prog == MOUNT_PROGRAM
           and x.procedure.name == "MNT"]
    # libnfs first tries to mount the whole URL path (e.g. /export/work).
    assert {x.args for x in mnt if x.res.status.name == "MNT3_OK"} >= {b"/export"}
    assert all(x.args.startswith(b"/export") for x in mnt), [x.args for x in mnt]
