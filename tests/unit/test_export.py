"""The read-only point-in-time export's protocol (`nfsproxy.export.handler`), sans-IO.

A hand-built `recoveryd.tree.Tree` (fed baseline pieces, as a restore feeds
it) and a fake content reader stand in for the Restore API. Calls are
encoded with our codecs, handed to `ExportHandler.handle`, and the reply
bytes decoded again, so every answer is checked as it goes on the wire.

The last tests run the asyncio shell (`nfsproxy.export.server`) on loopback and
walk the tree with our blocking `NfsClient`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import socket
import struct
import threading
from typing import Any

import pytest

from logstore.pb.journal_pb2 import Attr, Op, Record
from logstore.stamp import Stamp
from nfsproxy.wire import mount, nfs3
from nfsproxy.wire.programs import lookup as procedure_of
from nfsproxy.nas.client import NfsClient, NfsError, sattr3
from nfsproxy.export.handler import RTMAX_BYTES, ExportHandler, cookieverf_for
from nfsproxy.export.server import ExportServer
from nfsproxy.wire.mount import MOUNT_PROGRAM, MountProc3, Mountstat3
from nfsproxy.wire.nfs3 import (ACCESS3_DELETE, ACCESS3_EXECUTE, ACCESS3_EXTEND, ACCESS3_LOOKUP,
                           ACCESS3_MODIFY, ACCESS3_READ, FSF3_CANSETTIME, NFS_PROGRAM,
                           Createhow3, CreateMode, Diropargs3, Ftype3, Mknoddata3, Nfsstat3,
                           Proc3, StableHow, Symlinkdata3)
from nfsproxy.wire.portmap import IPPROTO_TCP, PMAP_PROG, Mapping, PmapProc
from nfsproxy.wire.rpc import (NEED_DATA, AcceptStat, AuthFlavor, AuthStat, AuthSys, OpaqueAuth,
                          RejectStat, ReplyStat, RpcCall, RpcDecodeError, RpcMessageReader,
                          RpcReply, decode_body, encode_call, frame_rpc_message, parse_message)
from nfsproxy.wire.xdr import U32, VOID, Packer
from recoveryd.tree import Tree

CRED = AuthSys(1, "client", 1000, 1000, ())
CUT = Stamp(1_700_000_000_000_000_000, 0, 7).to_bytes()
PORT = 20491
MiB = 1 << 20
FSID = 0x1234
N_MANY = 500


def fh(name: str) -> bytes:
    """A NAS-like handle: 28 bytes derived from a name."""
    return b"\x01\x00" + hashlib.sha256(name.encode()).digest()[:26]


ROOT, A, B, DEEP, HELLO, RUNSH, LINK, BIG, MANY, FIFO, EMPTY = (
    fh(n) for n in ("root", "a", "a/b", "a/b/deep", "hello", "run.sh", "link", "big", "many",
                    "fifo", "empty"))
MANY_FILES = [fh(f"many/{i}") for i in range(N_MANY)]

CONTENT: dict[bytes, bytes] = {
    DEEP: b"deep down\n",
    HELLO: b"hello",
    RUNSH: b"#!/bin/sh\necho hi\n",
    BIG: bytes(range(256)) * (3 * MiB // 256) + b"tail",
    EMPTY: b"",
    **{f: f"file {i}\n".encode() for i, f in enumerate(MANY_FILES)},
}
FILEIDS: dict[bytes, int] = {}


def _attr(handle: bytes, kind: int, mode: int, size: int = 0, nlink: int = 1) -> Attr:
    fileid = FILEIDS.setdefault(handle, 1000 + len(FILEIDS))
    return Attr(type=kind, mode=mode, nlink=nlink, uid=1000, gid=100, size=size, used=size,
                fsid=FSID, fileid=fileid, atime_ns=1_600_000_000_111_111_111,
                mtime_ns=1_600_000_000_222_222_222, ctime_ns=1_600_000_000_333_333_333)


class _Pieces:
    """Baseline pieces in stamp order."""

    def __init__(self) -> None:
        self.tree = Tree()
        self.n = 0

    def add(self, handle: bytes, parent: bytes | None, name: str, kind: int, mode: int,
            size: int = 0, target: str = "") -> None:
        self.n += 1
        self.tree.apply(Record(
            stamp=Stamp(1_600_000_000_000_000_000 + self.n, 0, 7).to_bytes(), op=Op.BASELINE,
            ok=True, fh=handle, dir_fh=parent or b"", name=name.encode() if parent else b"",
            attr=_attr(handle, kind, mode, size), baseline_first=True, symlink_target=target.encode()))

    def link(self, handle: bytes, parent: bytes, name: str) -> None:
        self.n += 1
        self.tree.apply(Record(stamp=Stamp(1_600_000_000_000_000_000 + self.n, 0, 7).to_bytes(),
                               op=Op.LINK, ok=True, fh=handle, to_dir_fh=parent, to_name=name.encode()))


def build_tree() -> Tree:
    p = _Pieces()
    p.add(ROOT, None, "", 2, 0o755, 4096)
    p.add(A, ROOT, "a", 2, 0o750, 4096)
    p.add(B, A, "b", 2, 0o700, 4096)
    p.add(DEEP, B, "deep.txt", 1, 0o600, len(CONTENT[DEEP]))
    p.add(HELLO, ROOT, "hello.txt", 1, 0o644, len(CONTENT[HELLO]))
    p.link(HELLO, A, "hard")
    p.add(RUNSH, ROOT, "run.sh", 1, 0o755, len(CONTENT[RUNSH]))
    p.add(LINK, ROOT, "link", 5, 0o777, 9, target="hello.txt")
    p.add(BIG, ROOT, "big.bin", 1, 0o644, len(CONTENT[BIG]))
    p.add(EMPTY, ROOT, "empty", 1, 0o644, 0)
    p.add(FIFO, ROOT, "fifo", 7, 0o644)
    p.add(MANY, ROOT, "many", 2, 0o755, 16384)
    for i, f in enumerate(MANY_FILES):
        p.add(f, MANY, f"f{i:04d}", 1, 0o644, len(CONTENT[f]))
    return p.tree


class FakeReader:
    """The Restore API's `read(cut, fh, offset, count)`, for one cut."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, int, int]] = []
        self.fail = False

    def __call__(self, handle: bytes, offset: int, count: int) -> bytes:
        self.calls.append((handle, offset, count))
        if self.fail:
            raise OSError("shard down")
        return CONTENT[handle][offset:offset + count]


@pytest.fixture(scope="module")
def tree() -> Tree:
    return build_tree()


@pytest.fixture
def reader() -> FakeReader:
    return FakeReader()


@pytest.fixture
def handler(tree, reader) -> ExportHandler:
    return ExportHandler(tree, reader, cut_id=CUT, port=PORT)


# -- calling it -------------------------------------------------------------------

_xid = 0


def raw(handler: ExportHandler, prog: int, vers: int, proc: int, body: bytes = b"", *,
        cred: OpaqueAuth | None = None, rpcvers: int = 2) -> tuple[RpcReply, memoryview]:
    global _xid
    _xid += 1
    header = RpcCall(_xid, prog, vers, proc, auth_sys=None if cred else CRED,
                     cred=cred or OpaqueAuth.NONE, rpcvers=rpcvers)
    message = encode_call(header).getvalue() + body
    call, call_body = parse_message(message)
    reply, reply_body = parse_message(handler.handle(call, call_body))
    assert isinstance(reply, RpcReply) and reply.xid == _xid
    return reply, reply_body


def _encode(codec, value) -> bytes:
    p = Packer()
    codec.pack(p, value)
    return p.getvalue()


def nfs(handler: ExportHandler, proc: Proc3, args: Any) -> Any:
    procedure = procedure_of(nfs3.NFS_PROGRAM, nfs3.NFS_V3, proc)
    reply, reply_body = raw(handler, NFS_PROGRAM, 3, proc, _encode(procedure.args, args))
    assert reply.success, reply
    return decode_body(procedure.res, reply_body)


def mnt(handler: ExportHandler, proc: MountProc3, args: Any = None) -> Any:
    procedure = procedure_of(mount.MOUNT_PROGRAM, mount.MOUNT_V3, proc)
    reply, body = raw(handler, MOUNT_PROGRAM, 3, proc, _encode(procedure.args, args))
    assert reply.success, reply
    return decode_body(procedure.res, body)


def ok(res: Any) -> Any:
    assert res.status is Nfsstat3.NFS3_OK, res
    return res.body


def lookup(handler: ExportHandler, path: str) -> bytes:
    cur = ROOT
    for name in path.split("/"):
        cur = ok(nfs(handler, Proc3.LOOKUP, nfs3.LOOKUP3args(Diropargs3(cur, name)))).object
    return cur


# -- MOUNT ----------------------------------------------------------------------------


@pytest.mark.parametrize("path, expected", [
    ("/export", ROOT), ("/", ROOT), ("", ROOT), ("/anything/at/all", ROOT),
    ("/export/a/b", B), ("/a/b", B), ("/a", A), ("/export/hello.txt", ROOT),
])
def test_mnt_answers_the_root_or_the_directory_named(handler, path, expected):
    res = mnt(handler, MountProc3.MNT, path)
    assert res.status is Mountstat3.MNT3_OK
    assert res.body.fhandle == expected
    assert AuthFlavor.AUTH_SYS in res.body.auth_flavors


def test_mount_export_dump_umnt(handler):
    exports = mnt(handler, MountProc3.EXPORT)
    assert [(e.ex_dir, e.ex_groups) for e in exports] == [(b"/", ())]
    assert mnt(handler, MountProc3.DUMP) == ()
    assert mnt(handler, MountProc3.UMNT, "/export") is None
    assert mnt(handler, MountProc3.UMNTALL) is None
    assert mnt(handler, MountProc3.NULL) is None


# -- attributes, lookup, access, readlink ------------------------------------------------


def test_getattr_comes_from_the_tree(handler):
    root = ok(nfs(handler, Proc3.GETATTR, nfs3.GETATTR3args(ROOT))).obj_attributes
    assert root.type is Ftype3.NF3DIR and root.mode == 0o755
    assert root.nlink == 4  # ., and "a" and "many" below it
    assert (root.fsid, root.fileid) == (FSID, FILEIDS[ROOT])
    hello = ok(nfs(handler, Proc3.GETATTR, nfs3.GETATTR3args(HELLO))).obj_attributes
    assert hello.type is Ftype3.NF3REG and hello.mode == 0o644 and hello.size == 5
    assert hello.nlink == 2  # hello.txt and a/hard
    assert (hello.uid, hello.gid, hello.fileid) == (1000, 100, FILEIDS[HELLO])
    assert (hello.mtime.seconds, hello.mtime.nseconds) == (1_600_000_000, 222_222_222)
    assert (hello.atime.seconds, hello.ctime.nseconds) == (1_600_000_000, 333_333_333)
    link = ok(nfs(handler, Proc3.GETATTR, nfs3.GETATTR3args(LINK))).obj_attributes
    assert link.type is Ftype3.NF3LNK and link.size == len("hello.txt")
    assert ok(nfs(handler, Proc3.GETATTR, nfs3.GETATTR3args(FIFO))).obj_attributes.type \
        is Ftype3.NF3FIFO


def test_unknown_handle_is_stale(handler):
    stale = fh("never existed")
    for proc, args in [
        (Proc3.GETATTR, nfs3.GETATTR3args(stale)),
        (Proc3.LOOKUP, nfs3.LOOKUP3args(Diropargs3(stale, "x"))),
        (Proc3.ACCESS, nfs3.ACCESS3args(stale, ACCESS3_READ)),
        (Proc3.READLINK, nfs3.READLINK3args(stale)),
        (Proc3.READ, nfs3.READ3args(stale, 0, 10)),
        (Proc3.READDIR, nfs3.READDIR3args(stale, 0, bytes(8), 4096)),
        (Proc3.READDIRPLUS, nfs3.READDIRPLUS3args(stale, 0, bytes(8), 4096, 4096)),
        (Proc3.FSSTAT, nfs3.FSSTAT3args(stale)),
        (Proc3.FSINFO, nfs3.FSINFO3args(stale)),
        (Proc3.PATHCONF, nfs3.PATHCONF3args(stale)),
        (Proc3.WRITE, nfs3.WRITE3args(stale, 0, 1, StableHow.FILE_SYNC, b"x")),
    ]:
        assert nfs(handler, proc, args).status is Nfsstat3.NFS3ERR_STALE, proc


def test_lookup(handler):
    res = ok(nfs(handler, Proc3.LOOKUP, nfs3.LOOKUP3args(Diropargs3(ROOT, "a"))))
    assert res.object == A and res.obj_attributes.mode == 0o750
    assert res.dir_attributes.fileid == FILEIDS[ROOT]
    assert lookup(handler, "a/b/deep.txt") == DEEP
    assert lookup(handler, "a/hard") == HELLO
    assert lookup(handler, "a/.") == A
    assert lookup(handler, "a/b/..") == A
    assert lookup(handler, "..") == ROOT
    missing = nfs(handler, Proc3.LOOKUP, nfs3.LOOKUP3args(Diropargs3(A, "nope")))
    assert missing.status is Nfsstat3.NFS3ERR_NOENT
    assert missing.body.dir_attributes.fileid == FILEIDS[A]
    notdir = nfs(handler, Proc3.LOOKUP, nfs3.LOOKUP3args(Diropargs3(HELLO, "x")))
    assert notdir.status is Nfsstat3.NFS3ERR_NOTDIR


def test_access_grants_reading_only(handler):
    everything = (ACCESS3_READ | ACCESS3_LOOKUP | ACCESS3_MODIFY | ACCESS3_EXTEND
                  | ACCESS3_DELETE | ACCESS3_EXECUTE)
    grant = lambda h: ok(nfs(handler, Proc3.ACCESS, nfs3.ACCESS3args(h, everything))).access  # noqa: E731
    assert grant(ROOT) == ACCESS3_READ | ACCESS3_LOOKUP | ACCESS3_EXECUTE
    assert grant(HELLO) == ACCESS3_READ | ACCESS3_LOOKUP  # lookup is meaningless on a file
    assert grant(RUNSH) == ACCESS3_READ | ACCESS3_LOOKUP | ACCESS3_EXECUTE
    asked = ok(nfs(handler, Proc3.ACCESS, nfs3.ACCESS3args(ROOT, ACCESS3_MODIFY | ACCESS3_READ)))
    assert asked.access == ACCESS3_READ  # never more than asked
    assert asked.obj_attributes.fileid == FILEIDS[ROOT]


def test_readlink(handler):
    assert ok(nfs(handler, Proc3.READLINK, nfs3.READLINK3args(LINK))).data == b"hello.txt"
    assert nfs(handler, Proc3.READLINK, nfs3.READLINK3args(HELLO)).status is Nfsstat3.NFS3ERR_INVAL


# -- READ -------------------------------------------------------------------------------


def test_read_whole_small_file(handler, reader):
    res = ok(nfs(handler, Proc3.READ, nfs3.READ3args(HELLO, 0, 4096)))
    assert (bytes(res.data), res.count, res.eof) == (b"hello", 5, True)
    assert res.file_attributes.size == 5
    assert reader.calls == [(HELLO, 0, 5)]  # never asks past the end of the file


def test_read_middle_and_past_the_end(handler, reader):
    res = ok(nfs(handler, Proc3.READ, nfs3.READ3args(HELLO, 1, 2)))
    assert (bytes(res.data), res.eof) == (b"el", False)
    res = ok(nfs(handler, Proc3.READ, nfs3.READ3args(HELLO, 5, 10)))
    assert (bytes(res.data), res.count, res.eof) == (b"", 0, True)
    res = ok(nfs(handler, Proc3.READ, nfs3.READ3args(HELLO, 1 << 40, 10)))
    assert (res.count, res.eof) == (0, True)
    res = ok(nfs(handler, Proc3.READ, nfs3.READ3args(EMPTY, 0, 10)))
    assert (res.count, res.eof) == (0, True)
    assert reader.calls == [(HELLO, 1, 2)]


def test_read_big_file_in_chunks_capped_at_rtmax(handler):
    big = CONTENT[BIG]
    out = bytearray()
    while True:
        res = ok(nfs(handler, Proc3.READ, nfs3.READ3args(BIG, len(out), 4 * MiB)))
        assert res.count <= RTMAX_BYTES
        out += res.data
        if res.eof:
            break
    assert bytes(out) == big


def test_read_of_a_directory_or_a_fifo_and_a_failing_reader(handler, reader):
    assert nfs(handler, Proc3.READ, nfs3.READ3args(A, 0, 10)).status is Nfsstat3.NFS3ERR_ISDIR
    assert nfs(handler, Proc3.READ, nfs3.READ3args(FIFO, 0, 10)).status is Nfsstat3.NFS3ERR_INVAL
    reader.fail = True
    res = nfs(handler, Proc3.READ, nfs3.READ3args(HELLO, 0, 10))
    assert res.status is Nfsstat3.NFS3ERR_IO and res.body.file_attributes.size == 5


def _packed_read(handle: bytes) -> bytes:
    return _encode(procedure_of(nfs3.NFS_PROGRAM, nfs3.NFS_V3, Proc3.READ).args,
                   nfs3.READ3args(handle, 0, 10))


def test_only_read_is_blocking(handler):
    args = _packed_read(HELLO)
    assert handler.blocking(RpcCall(1, NFS_PROGRAM, 3, Proc3.READ), args)
    assert not handler.blocking(RpcCall(1, NFS_PROGRAM, 3, Proc3.GETATTR), args)
    assert not handler.blocking(RpcCall(1, NFS_PROGRAM, 4, Proc3.READ), args)
    assert not handler.blocking(RpcCall(1, MOUNT_PROGRAM, 3, Proc3.READ), args)


def test_a_read_of_content_at_hand_is_answered_on_the_loop(tree, reader):
    at_hand: set[bytes] = set()
    handler = ExportHandler(tree, reader, cut_id=CUT, ready=lambda fh: fh in at_hand)
    read = RpcCall(1, NFS_PROGRAM, 3, Proc3.READ)
    assert handler.blocking(read, _packed_read(HELLO))          # not at hand yet: off the loop
    at_hand.add(handler.objects[HELLO].fh)
    assert not handler.blocking(read, _packed_read(HELLO))      # at hand: a local read
    assert not handler.blocking(read, _packed_read(A))          # a directory: refused at once
    assert not handler.blocking(read, b"\x00\x00")               # too short: refused at once


# -- READDIR and READDIRPLUS --------------------------------------------------------------


def _readdir_all(handler, directory: bytes, count: int):
    cookie, verf, names, pages = 0, bytes(8), [], 0
    while True:
        res = ok(nfs(handler, Proc3.READDIR, nfs3.READDIR3args(directory, cookie, verf, count)))
        pages += 1
        for e in res.reply.entries:
            names.append((e.name, e.cookie, e.fileid))
        if res.reply.eof:
            return names, pages
        cookie, verf = res.reply.entries[-1].cookie, res.cookieverf


def test_readdir_lists_dots_then_sorted_names_with_index_cookies(handler):
    names, pages = _readdir_all(handler, ROOT, 65536)
    assert pages == 1
    assert [n for n, _, _ in names] == [b".", b"..", b"a", b"big.bin", b"empty", b"fifo", b"hello.txt",
                                        b"link", b"many", b"run.sh"]
    assert [c for _, c, _ in names] == list(range(1, len(names) + 1))
    assert names[0][2] == FILEIDS[ROOT] and names[1][2] == FILEIDS[ROOT]
    sub, _ = _readdir_all(handler, B, 65536)
    assert [(n, f) for n, _, f in sub] == [(b".", FILEIDS[B]), (b"..", FILEIDS[A]),
                                           (b"deep.txt", FILEIDS[DEEP])]


@pytest.mark.parametrize("count", [200, 1024, 4096])
def test_readdir_pages_a_large_directory_within_count(handler, count):
    names, pages = _readdir_all(handler, MANY, count)
    assert [n for n, _, _ in names] == [b".", b".."] + [f"f{i:04d}".encode() for i in range(N_MANY)]
    assert pages > 1
    # And each page's reply really fits in count.
    res = nfs(handler, Proc3.READDIR, nfs3.READDIR3args(MANY, 0, bytes(8), count))
    p = _encode(nfs3.READDIR3res.xdr, res)
    assert len(p) <= count


class CountedNames(tuple):
    """A directory's names that count how many are looked at."""

    looked = 0

    def __getitem__(self, i):
        CountedNames.looked += 1
        return super().__getitem__(i)

    def __iter__(self):
        for name in super().__iter__():
            CountedNames.looked += 1
            yield name


@pytest.mark.parametrize("proc, args", [
    (Proc3.READDIR, lambda cookie, verf: nfs3.READDIR3args(MANY, cookie, verf, 1024)),
    (Proc3.READDIRPLUS, lambda cookie, verf: nfs3.READDIRPLUS3args(MANY, cookie, verf, 1024, 2048)),
])
def test_a_page_of_a_directory_looks_at_its_own_entries_only(handler, monkeypatch, proc, args):
    """A listing of E entries in pages of p must not cost E per page (E²/p
    for the whole directory, on the loop every client of the export waits on)."""
    d = handler.objects[MANY]
    monkeypatch.setitem(handler.objects, MANY, dataclasses.replace(d, names=CountedNames(d.names)))
    CountedNames.looked = 0
    page = ok(nfs(handler, proc, args(102, cookieverf_for(CUT))))
    listed = len(page.reply.entries)
    assert 0 < listed < N_MANY // 4
    assert CountedNames.looked <= listed + 1, f"{CountedNames.looked} names looked at for {listed} listed"


def test_readdir_resumes_at_any_cookie_and_checks_the_verifier(handler):
    verf = cookieverf_for(CUT)
    res = ok(nfs(handler, Proc3.READDIR, nfs3.READDIR3args(MANY, 102, verf, 65536)))
    assert res.cookieverf == verf
    assert res.reply.entries[0].name == b"f0100" and res.reply.entries[0].cookie == 103
    last = ok(nfs(handler, Proc3.READDIR, nfs3.READDIR3args(MANY, N_MANY + 2, verf, 4096)))
    assert last.reply.entries == () and last.reply.eof
    # A zero verifier is accepted (some clients never send one back).
    assert ok(nfs(handler, Proc3.READDIR, nfs3.READDIR3args(MANY, 102, bytes(8), 4096)))
    bad = nfs(handler, Proc3.READDIR, nfs3.READDIR3args(MANY, 102, b"12345678", 4096))
    assert bad.status is Nfsstat3.NFS3ERR_BAD_COOKIE
    beyond = nfs(handler, Proc3.READDIR, nfs3.READDIR3args(MANY, N_MANY + 3, verf, 4096))
    assert beyond.status is Nfsstat3.NFS3ERR_BAD_COOKIE
    too_small = nfs(handler, Proc3.READDIR, nfs3.READDIR3args(MANY, 0, verf, 50))
    assert too_small.status is Nfsstat3.NFS3ERR_TOOSMALL
    assert nfs(handler, Proc3.READDIR, nfs3.READDIR3args(HELLO, 0, verf, 4096)).status \
        is Nfsstat3.NFS3ERR_NOTDIR


def test_cookieverf_is_stable_per_cut():
    assert cookieverf_for(CUT) == cookieverf_for(CUT)
    assert cookieverf_for(CUT) != cookieverf_for(Stamp(1, 0, 7).to_bytes())
    assert len(cookieverf_for(CUT)) == 8


@pytest.mark.parametrize("dircount, maxcount", [(0, 8192), (512, 65536), (8192, 4096), (65536, 65536)])
def test_readdirplus_pages_with_handles_and_attributes(handler, dircount, maxcount):
    cookie, verf, got, pages = 0, bytes(8), [], 0
    while True:
        res = nfs(handler, Proc3.READDIRPLUS,
                  nfs3.READDIRPLUS3args(MANY, cookie, verf, dircount, maxcount))
        assert len(_encode(nfs3.READDIRPLUS3res.xdr, res)) <= maxcount
        body = ok(res)
        pages += 1
        got += body.reply.entries
        if body.reply.eof:
            break
        cookie, verf = body.reply.entries[-1].cookie, body.cookieverf
    assert [e.name for e in got] == [b".", b".."] + [f"f{i:04d}".encode() for i in range(N_MANY)]
    assert [e.cookie for e in got] == list(range(1, N_MANY + 3))
    assert got[0].name_handle == MANY and got[1].name_handle == ROOT
    for i, e in enumerate(got[2:]):
        assert e.name_handle == MANY_FILES[i]
        assert e.name_attributes.size == len(CONTENT[MANY_FILES[i]])
        assert e.fileid == e.name_attributes.fileid == FILEIDS[MANY_FILES[i]]
    assert pages > 1
    if dircount:
        # The directory part of a page (entry3 sizes) stays within dircount.
        first = ok(nfs(handler, Proc3.READDIRPLUS, nfs3.READDIRPLUS3args(MANY, 0, bytes(8),
                                                                          dircount, maxcount)))
        assert sum(24 + ((len(e.name) + 3) & ~3) for e in first.reply.entries) <= dircount


# -- file system information ----------------------------------------------------------------


def test_fsinfo_fsstat_pathconf(handler):
    info = ok(nfs(handler, Proc3.FSINFO, nfs3.FSINFO3args(ROOT)))
    assert info.rtmax == RTMAX_BYTES == 1 << 20 and info.rtpref <= info.rtmax
    assert not info.properties & FSF3_CANSETTIME
    assert info.obj_attributes.fileid == FILEIDS[ROOT]
    st = ok(nfs(handler, Proc3.FSSTAT, nfs3.FSSTAT3args(ROOT)))
    assert st.fbytes == st.abytes == st.ffiles == st.afiles == 0
    assert st.tfiles == 11 + N_MANY
    assert st.tbytes >= sum(len(c) for c in CONTENT.values())
    pc = ok(nfs(handler, Proc3.PATHCONF, nfs3.PATHCONF3args(HELLO)))
    assert pc.name_max == 255 and pc.no_trunc and pc.case_preserving and not pc.case_insensitive


# -- everything that would change something -----------------------------------------------

_SATTR = sattr3(mode=0o600)
MUTATIONS = {
    Proc3.SETATTR: nfs3.SETATTR3args(HELLO, _SATTR, None),
    Proc3.WRITE: nfs3.WRITE3args(HELLO, 0, 3, StableHow.UNSTABLE, b"abc"),
    Proc3.CREATE: nfs3.CREATE3args(Diropargs3(A, "new"), Createhow3(CreateMode.GUARDED, _SATTR)),
    Proc3.MKDIR: nfs3.MKDIR3args(Diropargs3(A, "new"), _SATTR),
    Proc3.SYMLINK: nfs3.SYMLINK3args(Diropargs3(A, "new"), Symlinkdata3(_SATTR, "x")),
    Proc3.MKNOD: nfs3.MKNOD3args(Diropargs3(A, "new"), Mknoddata3(Ftype3.NF3FIFO, _SATTR)),
    Proc3.REMOVE: nfs3.REMOVE3args(Diropargs3(A, "hard")),
    Proc3.RMDIR: nfs3.RMDIR3args(Diropargs3(A, "b")),
    Proc3.RENAME: nfs3.RENAME3args(Diropargs3(A, "hard"), Diropargs3(B, "moved")),
    Proc3.LINK: nfs3.LINK3args(HELLO, Diropargs3(B, "again")),
    Proc3.COMMIT: nfs3.COMMIT3args(HELLO, 0, 0),
}


def test_mutations_table_covers_every_mutating_procedure():
    assert set(MUTATIONS) == set(nfs3.MUTATING)


@pytest.mark.parametrize("proc", sorted(MUTATIONS), ids=lambda p: p.name)
def test_every_mutation_is_refused_read_only_with_wcc_data(handler, proc):
    res = nfs(handler, proc, MUTATIONS[proc])
    assert res.status is Nfsstat3.NFS3ERR_ROFS
    body = res.body
    wccs = [getattr(body, f) for f in ("obj_wcc", "file_wcc", "dir_wcc", "fromdir_wcc",
                                       "todir_wcc", "linkdir_wcc") if hasattr(body, f)]
    assert wccs
    for wcc in wccs:
        assert wcc.before is not None and wcc.after is not None
        assert wcc.before.size == wcc.after.size
        assert wcc.before.mtime == wcc.after.mtime and wcc.before.ctime == wcc.after.ctime
    if proc is Proc3.SETATTR or proc in (Proc3.WRITE, Proc3.COMMIT):
        assert wccs[0].after.fileid == FILEIDS[HELLO]
    if proc in (Proc3.CREATE, Proc3.MKDIR, Proc3.SYMLINK, Proc3.MKNOD, Proc3.REMOVE, Proc3.RMDIR):
        assert wccs[0].after.fileid == FILEIDS[A]
    if proc is Proc3.RENAME:
        assert (body.fromdir_wcc.after.fileid, body.todir_wcc.after.fileid) == (FILEIDS[A], FILEIDS[B])
    if proc is Proc3.LINK:
        assert body.file_attributes.fileid == FILEIDS[HELLO]
        assert body.linkdir_wcc.after.fileid == FILEIDS[B]
    # And nothing changed.
    assert lookup(handler, "a/hard") == HELLO
    assert ok(nfs(handler, Proc3.GETATTR, nfs3.GETATTR3args(HELLO))).obj_attributes.mode == 0o644


def test_a_mutation_on_an_unknown_handle_is_stale(handler):
    res = nfs(handler, Proc3.MKDIR, nfs3.MKDIR3args(Diropargs3(fh("gone"), "x"), _SATTR))
    assert res.status is Nfsstat3.NFS3ERR_STALE
    assert res.body.dir_wcc.before is None and res.body.dir_wcc.after is None


# -- the RPC layer --------------------------------------------------------------------------


def test_null_procedures(handler):
    reply, body = raw(handler, NFS_PROGRAM, 3, Proc3.NULL)
    assert reply.success and bytes(body) == b""


@pytest.mark.parametrize("prog, vers, proc, accept_stat, mismatch", [
    (100021, 4, 0, AcceptStat.PROG_UNAVAIL, None),          # NLM: not served
    (100227, 3, 0, AcceptStat.PROG_UNAVAIL, None),          # NFSACL
    (NFS_PROGRAM, 4, 0, AcceptStat.PROG_MISMATCH, (3, 3)),
    (NFS_PROGRAM, 2, 1, AcceptStat.PROG_MISMATCH, (3, 3)),
    (MOUNT_PROGRAM, 1, 1, AcceptStat.PROG_MISMATCH, (3, 3)),
    (PMAP_PROG, 4, 3, AcceptStat.PROG_MISMATCH, (2, 2)),
    (NFS_PROGRAM, 3, 22, AcceptStat.PROC_UNAVAIL, None),
    (MOUNT_PROGRAM, 3, 6, AcceptStat.PROC_UNAVAIL, None),
    (PMAP_PROG, 2, 99, AcceptStat.PROC_UNAVAIL, None),
])
def test_unknown_programs_versions_and_procedures_are_rejected(handler, prog, vers, proc,
                                                                accept_stat, mismatch):
    reply, body = raw(handler, prog, vers, proc)
    assert reply.reply_stat is ReplyStat.MSG_ACCEPTED
    assert reply.accept_stat is accept_stat
    assert reply.mismatch == mismatch
    assert bytes(body) == b""


def test_export_refuses_a_wrong_rpc_version_as_the_relay_does(handler):
    from nfsproxy.relay.routing import reject

    call = RpcCall(77, NFS_PROGRAM, 3, 0, rpcvers=3)
    assert handler.handle(call, b"") == reject(call)


def test_rpc_version_and_credentials(handler):
    reply, _ = raw(handler, NFS_PROGRAM, 3, 0, rpcvers=3)
    assert reply.reply_stat is ReplyStat.MSG_DENIED and reply.reject_stat is RejectStat.RPC_MISMATCH
    assert reply.mismatch == (2, 2)
    reply, _ = raw(handler, NFS_PROGRAM, 3, 0, cred=OpaqueAuth(AuthFlavor.AUTH_DH, b"x" * 8))
    assert reply.reject_stat is RejectStat.AUTH_ERROR and reply.auth_stat is AuthStat.AUTH_BADCRED
    reply, _ = raw(handler, NFS_PROGRAM, 3, 0, cred=OpaqueAuth.NONE)
    assert reply.success


@pytest.mark.parametrize("body", [b"", b"\x00\x00\x00\x40" + b"\x00" * 10, b"\x00" * 200])
def test_garbage_arguments_raise_rpc_decode_error(handler, body):
    with pytest.raises(RpcDecodeError):
        raw(handler, NFS_PROGRAM, 3, Proc3.GETATTR, body)


def test_garbage_write_arguments_raise_too(handler):
    with pytest.raises(RpcDecodeError):
        raw(handler, NFS_PROGRAM, 3, Proc3.WRITE, b"\x00\x00\x00\x04abcd")


def test_portmap_points_nfs_and_mount_v3_here(handler):
    def getport(prog, vers, prot=IPPROTO_TCP):
        reply, body = raw(handler, PMAP_PROG, 2, PmapProc.GETPORT,
                          _encode(Mapping.xdr, Mapping(prog, vers, prot, 0)))
        assert reply.success
        return decode_body(U32, body)
    assert getport(NFS_PROGRAM, 3) == PORT
    assert getport(MOUNT_PROGRAM, 3) == PORT
    assert getport(MOUNT_PROGRAM, 1) == 0  # MOUNT v1 is not served
    assert getport(NFS_PROGRAM, 4) == 0
    assert getport(NFS_PROGRAM, 3, 17) == 0  # no UDP
    reply, body = raw(handler, PMAP_PROG, 2, PmapProc.NULL)
    assert reply.success and decode_body(VOID, body) is None


# -- the asyncio shell, on loopback ------------------------------------------------------------


class _ServerThread:
    """An ExportServer on its own loop in a thread (the client under test blocks)."""

    def __init__(self, handler: ExportHandler):
        self.loop = asyncio.new_event_loop()
        self.server = ExportServer(handler)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", 0), self.loop).result(10)

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def served(tree, reader):
    s = _ServerThread(ExportHandler(tree, reader, cut_id=CUT))
    yield s
    s.stop()


def _client(port: int) -> NfsClient:
    c = NfsClient("127.0.0.1", port, port, "/export", timeout_s=10)
    c.mount()
    return c


def test_shell_serves_the_tree_to_an_nfs_client(served):
    with _client(served.port) as c:
        assert c.root == ROOT
        seen = {}
        stack = [("", ROOT)]
        while stack:
            path, d = stack.pop()
            for e in c.readdirplus(d, maxcount=2048):
                rel = f"{path}/{e.name.decode()}" if path else e.name.decode()
                seen[rel] = e
                if e.name_attributes.type is Ftype3.NF3DIR:
                    stack.append((rel, e.name_handle))
        assert len([p for p in seen if p.startswith("many/")]) == N_MANY
        assert c.read_all(seen["big.bin"].name_handle) == CONTENT[BIG]
        assert c.read_all(seen["a/b/deep.txt"].name_handle) == CONTENT[DEEP]
        assert c.readlink(seen["link"].name_handle).data == b"hello.txt"
        assert c.getattr(seen["a/hard"].name_handle).obj_attributes.nlink == 2
        with pytest.raises(NfsError) as e:
            c.write(seen["hello.txt"].name_handle, 0, b"x" * MiB)  # a 1 MiB WRITE is refused, not dropped
        assert e.value.status is Nfsstat3.NFS3ERR_ROFS
        with pytest.raises(NfsError) as e:
            c.mkdir(ROOT, "new")
        assert e.value.status is Nfsstat3.NFS3ERR_ROFS
        c.null()


def test_shell_closes_only_a_client_that_breaks_the_protocol(served):
    with _client(served.port) as good:
        bad = socket.create_connection(("127.0.0.1", served.port), timeout=5)
        try:
            bad.sendall(struct.pack(">I", 0x80000000 | 8) + b"\x00" * 8)  # not an RPC call
            assert bad.recv(100) == b""  # closed by the server
        finally:
            bad.close()
        assert good.getattr(ROOT).obj_attributes.type is Ftype3.NF3DIR
    assert served.server.protocol_errors_total == 1


def test_shell_answers_many_reads_in_flight(served):
    """Pipelined READs (as a kernel client sends them) all come back, matched by XID."""
    n = 100
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    try:
        out = []
        for xid in range(1, n + 1):
            p = encode_call(RpcCall(xid, NFS_PROGRAM, 3, Proc3.READ, auth_sys=CRED))
            nfs3.READ3args.xdr.pack(p, nfs3.READ3args(BIG, (xid % 3) * MiB, 65536))
            message = p.getvalue()
            out.append(frame_rpc_message(len(message)) + message)
        sock.sendall(b"".join(out))
        reader, got = RpcMessageReader(), {}
        while len(got) < n:
            reader.receive(sock.recv(1 << 20))
            while (m := reader.next_message()) is not NEED_DATA:
                reply, body = parse_message(m)
                res = decode_body(nfs3.READ3res.xdr, body)
                got[reply.xid] = bytes(res.body.data)
        for xid, data in got.items():
            off = (xid % 3) * MiB
            assert data == CONTENT[BIG][off:off + 65536]
    finally:
        sock.close()


def test_names_of_objects_of_unknown_type_are_left_out(reader):
    p = _Pieces()
    p.add(ROOT, None, "", 2, 0o755)
    p.add(HELLO, ROOT, "hello.txt", 1, 0o644, 5)
    # A LINK of a handle the journal never described: a name without a type.
    p.link(fh("unknown"), ROOT, "mystery")
    h = ExportHandler(p.tree, reader, cut_id=CUT)
    names, _ = _readdir_all(h, ROOT, 65536)
    assert [n for n, _, _ in names] == [b".", b"..", b"hello.txt"]
    assert nfs(h, Proc3.LOOKUP, nfs3.LOOKUP3args(Diropargs3(ROOT, "mystery"))).status \
        is Nfsstat3.NFS3ERR_NOENT
    assert nfs(h, Proc3.GETATTR, nfs3.GETATTR3args(fh("unknown"))).status is Nfsstat3.NFS3ERR_STALE


def test_a_tree_without_a_root_is_refused(reader):
    with pytest.raises(ValueError, match="no root"):
        ExportHandler(Tree(), reader)
