"""The native capture makes the Python capture's records, byte for byte.

Every kind of watched call (the 11 NFSv3 mutations, NFSACL SETACL, LOOKUP
and READDIRPLUS), each succeeding and failing, goes to a real ganesha; each
call message and the NAS's reply message go through both captures
(`nfsproxy.relay.capture.Capture` and `nfsproxy._dataplane.Capture`, one
instance each for the whole run, so their binding caches must stay the
same too), and the LOG payloads they give must be equal. Then the calls and
replies are damaged at random: both captures must refuse the same ones and
agree on the rest.
"""

from __future__ import annotations

import random

import pytest

from logstore.record import Op, parse_record, record_parts
from nfsproxy import _dataplane
from nfsproxy.wire import nfsacl
from nfsproxy.relay.capture import Capture
from nfsproxy.nas.client import NfsClient, sattr3
from nfsproxy.wire.nfs3 import GETATTR3args, TimeHow
from nfsproxy.wire.nfs3 import (COMMIT3args, CREATE3args, Createhow3, CreateMode, Devicedata3, Diropargs3,
                           Ftype3, LINK3args, LOOKUP3args, MKDIR3args, MKNOD3args, Mknoddata3,
                           Nfstime3, Proc3, READDIRPLUS3args, REMOVE3args, RENAME3args, RMDIR3args,
                           SETATTR3args, Specdata3, StableHow, SYMLINK3args, Symlinkdata3, WRITE3args)
from nfsproxy.wire.programs import Procedure, lookup
from nfsproxy.wire.rpc import RpcCall, RpcDecodeError, RpcReply, encode_call, parse_message

pytestmark = pytest.mark.ganesha

SERVER_TIME = TimeHow.SET_TO_SERVER_TIME
STAMP = bytes(range(16))
BIND_STAMP = bytes(range(16, 32))
CLIENT = "127.0.0.1:777"
MUTATION_OPS = {Op.SETATTR, Op.WRITE, Op.CREATE, Op.MKDIR, Op.SYMLINK, Op.MKNOD, Op.REMOVE, Op.RMDIR,
                Op.RENAME, Op.LINK, Op.COMMIT}


class Twin:
    """Both captures, fed the same messages."""

    def __init__(self):
        self.python = Capture()
        self.native = _dataplane.Capture()

    def begin(self, call: bytes):
        header, body = parse_message(call)
        try:
            pending = self.python.begin(header, body, STAMP, CLIENT)
        except RpcDecodeError:
            pending = "refused"
        try:
            token = self.native.begin(call, CLIENT, STAMP)
        except ValueError:
            token = "refused"
        assert (pending == "refused") == (token == "refused"), (pending, token)
        assert (pending is None) == (token is None)
        return pending, token

    def complete(self, begun, reply: bytes) -> list[bytes] | str:
        pending, token = begun
        if pending is None or pending == "refused":
            return []
        header, body = parse_message(reply)
        try:
            records = self.python.complete(pending, header, body, lambda: BIND_STAMP)
            want = [b"".join(bytes(p) for p in record_parts(r, d)) for r, d in records]
        except RpcDecodeError:
            want = "refused"
        try:
            got = [bytes(p) for p in self.native.complete(token, reply, BIND_STAMP)]
        except ValueError:
            got = "refused"
        assert got == want
        return got


def exchange(c: NfsClient, message: bytes) -> bytes:
    c.send_messages([message])
    return bytes(c._nfs._receive_message(c._nfs._sock))


def acl_call(c: NfsClient, fh: bytes, entries, default=()) -> bytes:
    proc: Procedure = lookup(nfsacl.NFSACL_PROGRAM, nfsacl.NFSACL_V3, nfsacl.AclProc3.SETACL)
    p = encode_call(RpcCall(0x5E7AC1, proc.prog, proc.vers, proc.proc, cred=c._cred))
    args = nfsacl.SETACL3args(fh, nfsacl.NFS_ACL | nfsacl.NFS_DFACL,
                              nfsacl.Acl(len(entries), tuple(entries)),
                              nfsacl.Acl(len(default), tuple(default)))
    proc.args.pack(p, args)
    return p.getvalue()


def workload(c: NfsClient) -> list[bytes]:
    """Call messages for every watched kind, built as the previous replies allow."""
    root = c.root
    t = Nfstime3(1_700_000_000, 123)
    unchecked = Createhow3(CreateMode.UNCHECKED, sattr3(mode=0o640, uid=0, gid=0))
    f = lambda: c.lookup(root, "f").object  # noqa: E731
    d = lambda: c.lookup(root, "d").object  # noqa: E731
    calls = [
        lambda: c.call_message(Proc3.CREATE, CREATE3args(Diropargs3(root, "f"), unchecked)),
        lambda: c.call_message(Proc3.CREATE, CREATE3args(Diropargs3(root, "f"), Createhow3(
            CreateMode.GUARDED, sattr3(mode=0o600)))),  # EXIST
        lambda: c.call_message(Proc3.CREATE, CREATE3args(Diropargs3(root, b"x\xff\xfe"), Createhow3(
            CreateMode.EXCLUSIVE, b"verifier"))),
        lambda: c.call_message(Proc3.MKDIR, MKDIR3args(Diropargs3(root, "d"), sattr3(mode=0o755))),
        lambda: c.call_message(Proc3.SYMLINK, SYMLINK3args(Diropargs3(root, "s"), Symlinkdata3(
            sattr3(mode=0o777), b"target/\xff"))),
        lambda: c.call_message(Proc3.MKNOD, MKNOD3args(Diropargs3(d(), "fifo"), Mknoddata3(
            Ftype3.NF3FIFO, sattr3(mode=0o600)))),
        lambda: c.call_message(Proc3.MKNOD, MKNOD3args(Diropargs3(d(), "chr"), Mknoddata3(
            Ftype3.NF3CHR, Devicedata3(sattr3(mode=0o600), Specdata3(1, 3))))),
        lambda: c.call_message(Proc3.MKNOD, MKNOD3args(Diropargs3(d(), "reg"), Mknoddata3(
            Ftype3.NF3REG, None))),  # BADTYPE
        lambda: c.call_message(Proc3.WRITE, WRITE3args(f(), 0, 5000, StableHow.UNSTABLE, b"a" * 5000)),
        lambda: c.call_message(Proc3.WRITE, WRITE3args(f(), 5000, 3, StableHow.FILE_SYNC, b"xyz")),
        lambda: c.call_message(Proc3.WRITE, WRITE3args(f(), 9, 0, StableHow.DATA_SYNC, b"")),
        lambda: c.call_message(Proc3.WRITE, WRITE3args(d(), 0, 1, StableHow.FILE_SYNC, b"z")),  # ISDIR
        lambda: c.call_message(Proc3.COMMIT, COMMIT3args(f(), 0, 0)),
        lambda: c.call_message(Proc3.SETATTR, SETATTR3args(f(), sattr3(mode=0o600, size=10, atime=t,
                                                                      mtime=SERVER_TIME), None)),
        lambda: c.call_message(Proc3.SETATTR, SETATTR3args(f(), sattr3(uid=0), t)),  # NOT_SYNC
        lambda: c.call_message(Proc3.LOOKUP, LOOKUP3args(Diropargs3(root, "f"))),
        lambda: c.call_message(Proc3.LOOKUP, LOOKUP3args(Diropargs3(root, "f"))),  # not news
        lambda: c.call_message(Proc3.LOOKUP, LOOKUP3args(Diropargs3(root, "missing"))),
        lambda: c.call_message(Proc3.READDIRPLUS, READDIRPLUS3args(root, 0, bytes(8), 4096, 65536)),
        lambda: c.call_message(Proc3.READDIRPLUS, READDIRPLUS3args(d(), 0, bytes(8), 4096, 65536)),
        lambda: c.call_message(Proc3.LINK, LINK3args(f(), Diropargs3(d(), "hard"))),
        lambda: c.call_message(Proc3.LINK, LINK3args(f(), Diropargs3(d(), "hard"))),  # EXIST
        lambda: c.call_message(Proc3.RENAME, RENAME3args(Diropargs3(root, "f"), Diropargs3(d(), "g"))),
        lambda: c.call_message(Proc3.RENAME, RENAME3args(Diropargs3(root, "f"), Diropargs3(d(), "g"))),
        lambda: c.call_message(Proc3.REMOVE, REMOVE3args(Diropargs3(root, "s"))),
        lambda: c.call_message(Proc3.REMOVE, REMOVE3args(Diropargs3(root, "s"))),  # NOENT
        lambda: c.call_message(Proc3.RMDIR, RMDIR3args(Diropargs3(root, "d"))),  # NOTEMPTY
        lambda: acl_call(c, d(), [nfsacl.Aclent(1, 0, 7), nfsacl.Aclent(4, 0, 5), nfsacl.Aclent(0x20, 0, 5)],
                         [nfsacl.Aclent(0x1001, 0, 7), nfsacl.Aclent(0x1004, 0, 5),
                          nfsacl.Aclent(0x1020, 0, 0)]),
        lambda: c.call_message(Proc3.GETATTR, GETATTR3args(root)),  # not watched
    ]
    return calls


def test_every_watched_call_is_captured_the_same(nas):
    twin = Twin()
    pairs, payloads = [], []
    (nas.export_dir / "outside").write_bytes(b"made on the NAS: READDIRPLUS binds it")
    with NfsClient(nas.host, nas.nfs_port, nas.mount_port, nas.export_path, machine_name=b"m\xffx",
                   timeout_s=20.0) as c:
        c.mount()
        for build in workload(c):
            call = build()
            reply = exchange(c, call)
            pairs.append((call, reply))
            payloads += twin.complete(twin.begin(call), reply)
    # The workload made records of every kind, failures included (agreeing on nothing proves nothing).
    records = [parse_record(p) for p in payloads]
    assert {r.op for r in records} == MUTATION_OPS | {Op.BIND, Op.SETACL}
    assert {r.op for r in records if not r.ok} >= {Op.CREATE, Op.MKNOD, Op.WRITE, Op.SETATTR, Op.LINK,
                                                 Op.RENAME, Op.REMOVE, Op.RMDIR}
    assert any(r.op == Op.WRITE and r.data == b"xyz" for r in records)
    damaged(pairs)


def damaged(pairs, rounds: int = 300) -> None:
    """Random damage to calls and replies: refused by both, or captured the same by both."""
    rng = random.Random(1813)
    twin = Twin()
    outcomes = {"refused": 0, "captured": 0}
    for _ in range(rounds):
        for call, reply in pairs:
            call, reply = bytearray(call), bytearray(reply)
            target = call if rng.random() < 0.5 else reply
            for _ in range(rng.randint(1, 3)):
                if not target:
                    break
                at = rng.randrange(len(target))
                kind = rng.random()
                if kind < 0.6:
                    target[at] = rng.randrange(256)
                elif kind < 0.8:
                    del target[at:]
                else:
                    target[at:at] = bytes(rng.randrange(4) * 4)
            try:
                headers = parse_message(bytes(call))[0], parse_message(bytes(reply))[0]
            except RpcDecodeError:
                continue  # the relay refuses the header before capture sees it
            if not (isinstance(headers[0], RpcCall) and isinstance(headers[1], RpcReply)):
                continue  # likewise
            begun = twin.begin(bytes(call))
            got = "refused" if begun[1] == "refused" else twin.complete(begun, bytes(reply))
            outcomes["refused" if got == "refused" else "captured"] += 1
    # The damage reached capture both ways (not all stopped at the RPC header).
    assert min(outcomes.values()) > rounds, outcomes
