"""`nfsproxy.relay.capture.Capture`, sans-IO: encoded NFSv3 calls and replies in, Records out.

Every message is built the way a client and the NAS would send it: the RPC
header with `rpc.encode_call` / `rpc.encode_reply`, the body with
`xdr.encode` over the `nfs3` dataclasses, then split again with
`parse_message`, exactly as the relay does before it calls `begin` and
`complete`.
"""

from __future__ import annotations

import itertools

import pytest

from logstore.record import Op, Record
from logstore.stamp import Stamp
from nfsproxy.wire import nfs3, xdr
from nfsproxy.wire.programs import lookup as procedure_of
from nfsproxy.relay.capture import RPC_FAILURE_BASE, BindingCache, Capture, Pending
from nfsproxy.nas.client import SERVER_TIME, nfstime3, sattr3
from nfsproxy.wire.mount import MOUNT_PROGRAM
from nfsproxy.wire.nfs3 import (CreateMode, Diropargs3, Fattr3, Ftype3, NFS_PROGRAM, Nfsstat3, Nfstime3,
                           Proc3, Specdata3, StableHow, WccAttr, WccData)
from nfsproxy.wire.rpc import (AcceptStat, AuthStat, AuthSys, RejectStat, ReplyStat, RpcCall,
                          RpcDecodeError, RpcReply, encode_call, encode_reply, parse_message)

CLIENT = "192.0.2.7:871"
CRED = AuthSys(1700000000, b"client-a", 1000, 100, (100, 4, 27))
CALL_STAMP = Stamp(1_700_000_000_000_000_000, 3, 42).to_bytes()

DIR = b"\x01dir-handle"
DIR2 = b"\x02other-dir"
FILE = b"\x10file-handle-0123456789"
FILE2 = b"\x11second-file"

T_A = 1_700_000_001_111_111_111
T_M = 1_700_000_002_222_222_222
T_C = 1_700_000_003_333_333_333


# --------------------------------------------------------------------------
# Building messages


def fattr(type: Ftype3 = Ftype3.NF3REG, *, mode: int = 0o644, size: int = 0, fileid: int = 77,
          rdev: tuple[int, int] = (0, 0), base_ns: int = 0) -> Fattr3:
    return Fattr3(type, mode, 1, 1000, 100, size, size + 4096, Specdata3(*rdev), 0xF5, fileid,
                  nfstime3(T_A + base_ns), nfstime3(T_M + base_ns), nfstime3(T_C + base_ns))


def wcc(after: Fattr3 | None) -> WccData:
    before = WccAttr(1, Nfstime3(1, 2), Nfstime3(3, 4))
    return WccData(before, after)


def call_message(proc: Proc3, args, xid: int, *, prog: int = NFS_PROGRAM, vers: int = 3,
                 auth: AuthSys | None = CRED) -> bytes:
    header = encode_call(RpcCall(xid, prog, vers, int(proc), auth_sys=auth)).getvalue()
    body = xdr.encode(procedure_of(nfs3.NFS_PROGRAM, nfs3.NFS_V3, proc).args, args) if args is not None else b""
    return header + body


def reply_message(xid: int, proc: Proc3, res) -> bytes:
    return encode_reply(RpcReply(xid)).getvalue() + xdr.encode(procedure_of(nfs3.NFS_PROGRAM, nfs3.NFS_V3, proc).res, res)


class Driver:
    """One Capture fed the way the relay feeds it; stamps for BINDs count up."""

    def __init__(self, capture: Capture | None = None):
        self.capture = capture or Capture()
        self.xids = itertools.count(0x1000)
        self.bind_stamps: list[bytes] = []
        self.messages: list[bytes | bytearray] = []  # calls, kept alive like the relay does

    def _stamp(self) -> bytes:
        stamp = Stamp(1_800_000_000_000_000_000 + len(self.bind_stamps), 0, 42).to_bytes()
        self.bind_stamps.append(stamp)
        return stamp

    def begin(self, proc: Proc3, args, *, message: bytes | bytearray | None = None,
              xid: int | None = None, **call_kw) -> tuple[int, Pending | None]:
        xid = next(self.xids) if xid is None else xid
        if message is None:
            message = call_message(proc, args, xid, **call_kw)
        self.messages.append(message)
        call, body = parse_message(message)
        assert isinstance(call, RpcCall)
        return xid, self.capture.begin(call, body, CALL_STAMP, CLIENT)

    def complete(self, xid: int, pending: Pending, proc: Proc3, res) -> list[tuple[Record, memoryview | None]]:
        reply, body = parse_message(reply_message(xid, proc, res))
        assert isinstance(reply, RpcReply)
        return self.capture.complete(pending, reply, body, self._stamp)

    def complete_rpc(self, pending: Pending, reply: RpcReply) -> list[tuple[Record, memoryview | None]]:
        header, body = parse_message(encode_reply(reply).getvalue())
        return self.capture.complete(pending, header, body, self._stamp)

    def roundtrip(self, proc: Proc3, args, res) -> tuple[Record, memoryview | None]:
        xid, pending = self.begin(proc, args)
        assert pending is not None and pending.record is not None
        out = self.complete(xid, pending, proc, res)
        assert len(out) == 1
        return out[0]


@pytest.fixture
def drv() -> Driver:
    return Driver()


def assert_attr(attr, expected: Fattr3) -> None:
    assert attr.type == int(expected.type)
    assert (attr.mode, attr.nlink, attr.uid, attr.gid) == (expected.mode, expected.nlink,
                                                           expected.uid, expected.gid)
    assert (attr.size, attr.used) == (expected.size, expected.used)
    assert (attr.rdev_major, attr.rdev_minor) == (expected.rdev.specdata1, expected.rdev.specdata2)
    assert (attr.fsid, attr.fileid) == (expected.fsid, expected.fileid)
    ns = lambda t: t.seconds * 1_000_000_000 + t.nseconds  # noqa: E731
    assert (attr.atime_ns, attr.mtime_ns, attr.ctime_ns) == (ns(expected.atime), ns(expected.mtime),
                                                             ns(expected.ctime))


def assert_who(record: Record, op: Op, xid: int | None = None) -> None:
    assert record.op == op
    assert record.stamp == CALL_STAMP
    assert record.client == CLIENT
    assert (record.uid, record.gid, list(record.gids)) == (CRED.uid, CRED.gid, list(CRED.gids))
    assert record.machine_name == CRED.machine_name
    if xid is not None:
        assert record.xid == xid


def assert_ok(record: Record) -> None:
    assert record.ok is True
    assert record.status == Nfsstat3.NFS3_OK


def assert_failed(record: Record, status: Nfsstat3) -> None:
    assert record.ok is False
    assert record.status == int(status)


# --------------------------------------------------------------------------
# Mutations, one by one


def test_setattr_records_handle_every_attribute_guard_and_post_op_attr(drv: Driver):
    new = sattr3(mode=0o4750, uid=12, gid=34, size=4096, atime=T_A, mtime=SERVER_TIME)
    args = nfs3.SETATTR3args(FILE, new, nfstime3(T_C))
    after = fattr(mode=0o4750, size=4096)
    xid, pending = drv.begin(Proc3.SETATTR, args)
    [(record, data)] = drv.complete(xid, pending, Proc3.SETATTR,
                                    nfs3.SETATTR3res(Nfsstat3.NFS3_OK, nfs3.SETATTR3resok(wcc(after))))
    assert data is None
    assert_who(record, Op.SETATTR, xid)
    assert_ok(record)
    assert record.fh == FILE
    assert (record.set.mode, record.set.uid, record.set.gid, record.set.size) == (0o4750, 12, 34, 4096)
    assert record.set.HasField("atime_ns") and record.set.atime_ns == T_A
    assert record.set.atime_server is False
    assert not record.set.HasField("mtime_ns")
    assert record.set.mtime_server is True
    assert record.HasField("guard_ctime_ns") and record.guard_ctime_ns == T_C
    assert_attr(record.attr, after)


def test_setattr_without_changes_or_guard_leaves_optional_fields_unset(drv: Driver):
    record, _ = drv.roundtrip(Proc3.SETATTR, nfs3.SETATTR3args(FILE, sattr3(), None),
                              nfs3.SETATTR3res(Nfsstat3.NFS3_OK, nfs3.SETATTR3resok(wcc(None))))
    assert_ok(record)
    for name in ("mode", "uid", "gid", "size", "atime_ns", "mtime_ns"):
        assert not record.set.HasField(name), name
    assert (record.set.atime_server, record.set.mtime_server) == (False, False)
    assert not record.HasField("guard_ctime_ns")
    assert not record.HasField("attr")  # the reply carried no post-op attributes


def test_setattr_failure_keeps_the_request_and_the_status(drv: Driver):
    after = fattr(mode=0o644)
    record, data = drv.roundtrip(
        Proc3.SETATTR, nfs3.SETATTR3args(FILE, sattr3(mode=0o600), nfstime3(T_C)),
        nfs3.SETATTR3res(Nfsstat3.NFS3ERR_NOT_SYNC, nfs3.SETATTR3resfail(wcc(after))))
    assert_failed(record, Nfsstat3.NFS3ERR_NOT_SYNC)
    assert data is None
    assert record.set.mode == 0o600
    assert_attr(record.attr, after)


@pytest.mark.parametrize("stable", list(StableHow))
def test_write_records_offset_count_stable_data_and_reply(drv: Driver, stable: StableHow):
    payload = bytes(range(256)) * 16 + b"tail"  # 4100 bytes: the XDR pads it
    args = nfs3.WRITE3args(FILE, (5 << 32) + 123, len(payload), stable, payload)
    after = fattr(size=(5 << 32) + 123 + len(payload))
    xid, pending = drv.begin(Proc3.WRITE, args)
    res = nfs3.WRITE3res(Nfsstat3.NFS3_OK, nfs3.WRITE3resok(wcc(after), 4000, StableHow.FILE_SYNC,
                                                            b"verf0001"))
    [(record, data)] = drv.complete(xid, pending, Proc3.WRITE, res)
    assert_who(record, Op.WRITE, xid)
    assert_ok(record)
    assert record.fh == FILE
    assert (record.offset, record.count, record.stable) == ((5 << 32) + 123, len(payload), int(stable))
    assert record.reply_count == 4000
    assert_attr(record.attr, after)
    # The payload rides beside the record (the LOG appends it without a copy).
    assert record.data == b""
    assert bytes(data) == payload


def test_write_data_is_a_zero_copy_view_into_the_call_message(drv: Driver):
    payload = b"0123456789abcdef" * 256
    xid = 0xABCD
    message = bytearray(call_message(
        Proc3.WRITE, nfs3.WRITE3args(FILE, 0, len(payload), StableHow.UNSTABLE, payload), xid))
    _, pending = drv.begin(Proc3.WRITE, None, message=message, xid=xid)
    [(record, data)] = drv.complete(xid, pending, Proc3.WRITE, nfs3.WRITE3res(
        Nfsstat3.NFS3_OK, nfs3.WRITE3resok(wcc(None), len(payload), StableHow.UNSTABLE, b"verf0001")))
    assert isinstance(data, memoryview)
    assert data.obj is message  # a view of the call's own buffer, not a copy
    assert bytes(data) == payload
    start = message.find(payload)
    assert start > 0 and message.find(payload, start + 1) == -1
    message[start] ^= 0xFF  # a change to the message shows through the view
    assert data[0] == payload[0] ^ 0xFF


def test_write_data_view_of_an_immutable_message_is_not_copied_either(drv: Driver):
    payload = b"x" * 8192
    xid = 0xABCE
    message = call_message(Proc3.WRITE, nfs3.WRITE3args(FILE, 0, len(payload), StableHow.FILE_SYNC,
                                                        payload), xid)
    _, pending = drv.begin(Proc3.WRITE, None, message=message, xid=xid)
    assert pending.data.obj is message
    [(_, data)] = drv.complete(xid, pending, Proc3.WRITE, nfs3.WRITE3res(
        Nfsstat3.NFS3_OK, nfs3.WRITE3resok(wcc(None), len(payload), StableHow.FILE_SYNC, b"verf0001")))
    assert data.obj is message and data.nbytes == len(payload)


def test_failed_write_is_journaled_without_its_data(drv: Driver):
    after = fattr(size=10)
    record, data = drv.roundtrip(
        Proc3.WRITE, nfs3.WRITE3args(FILE, 10, 3, StableHow.FILE_SYNC, b"abc"),
        nfs3.WRITE3res(Nfsstat3.NFS3ERR_NOSPC, nfs3.WRITE3resfail(wcc(after))))
    assert_failed(record, Nfsstat3.NFS3ERR_NOSPC)
    assert data is None and record.data == b""
    assert (record.fh, record.offset, record.count) == (FILE, 10, 3)
    assert record.reply_count == 0
    assert_attr(record.attr, after)


@pytest.mark.parametrize("mode", [CreateMode.UNCHECKED, CreateMode.GUARDED])
def test_create_records_the_name_attributes_and_the_new_handle(drv: Driver, mode: CreateMode):
    how = nfs3.Createhow3(mode, sattr3(mode=0o640, uid=7, gid=8, size=0))
    obj, dir_after = fattr(mode=0o640), fattr(Ftype3.NF3DIR, mode=0o755, fileid=2)
    xid, pending = drv.begin(Proc3.CREATE, nfs3.CREATE3args(Diropargs3(DIR, "new.txt"), how))
    [(record, data)] = drv.complete(xid, pending, Proc3.CREATE, nfs3.CREATE3res(
        Nfsstat3.NFS3_OK, nfs3.CREATE3resok(FILE, obj, wcc(dir_after))))
    assert data is None
    assert_who(record, Op.CREATE, xid)
    assert_ok(record)
    assert (record.dir_fh, record.name, record.fh) == (DIR, b"new.txt", FILE)
    assert record.create_mode == int(mode)
    assert (record.set.mode, record.set.uid, record.set.gid, record.set.size) == (0o640, 7, 8, 0)
    assert record.verifier == b""
    assert_attr(record.attr, obj)
    assert_attr(record.dir_attr, dir_after)


def test_exclusive_create_records_the_verifier_and_no_attributes(drv: Driver):
    how = nfs3.Createhow3(CreateMode.EXCLUSIVE, b"\x00verif\xff!")
    record, _ = drv.roundtrip(
        Proc3.CREATE, nfs3.CREATE3args(Diropargs3(DIR, "excl"), how),
        nfs3.CREATE3res(Nfsstat3.NFS3_OK, nfs3.CREATE3resok(None, None, wcc(None))))
    assert_ok(record)
    assert record.create_mode == CreateMode.EXCLUSIVE
    assert record.verifier == b"\x00verif\xff!"
    assert not record.HasField("set")
    assert record.fh == b""  # the reply named no handle (post_op_fh3 absent)
    assert not record.HasField("attr") and not record.HasField("dir_attr")


def test_create_of_an_existing_name_fails_with_the_dir_attributes(drv: Driver):
    dir_after = fattr(Ftype3.NF3DIR, mode=0o755, fileid=2)
    record, data = drv.roundtrip(
        Proc3.CREATE, nfs3.CREATE3args(Diropargs3(DIR, "taken"),
                                       nfs3.Createhow3(CreateMode.GUARDED, sattr3(mode=0o600))),
        nfs3.CREATE3res(Nfsstat3.NFS3ERR_EXIST, nfs3.CREATE3resfail(wcc(dir_after))))
    assert_failed(record, Nfsstat3.NFS3ERR_EXIST)
    assert data is None
    assert (record.dir_fh, record.name, record.fh) == (DIR, b"taken", b"")
    assert_attr(record.dir_attr, dir_after)


def test_mkdir(drv: Driver):
    obj, dir_after = fattr(Ftype3.NF3DIR, mode=0o750, fileid=9), fattr(Ftype3.NF3DIR, fileid=2)
    record, _ = drv.roundtrip(
        Proc3.MKDIR, nfs3.MKDIR3args(Diropargs3(DIR, "sub"), sattr3(mode=0o750, mtime=T_M)),
        nfs3.MKDIR3res(Nfsstat3.NFS3_OK, nfs3.MKDIR3resok(FILE2, obj, wcc(dir_after))))
    assert_who(record, Op.MKDIR)
    assert_ok(record)
    assert (record.dir_fh, record.name, record.fh) == (DIR, b"sub", FILE2)
    assert record.set.mode == 0o750 and record.set.mtime_ns == T_M
    assert not record.set.HasField("uid")
    assert_attr(record.attr, obj)
    assert_attr(record.dir_attr, dir_after)


def test_symlink_records_its_target(drv: Driver):
    obj = fattr(Ftype3.NF3LNK, mode=0o777, size=11, fileid=10)
    args = nfs3.SYMLINK3args(Diropargs3(DIR, "link"),
                             nfs3.Symlinkdata3(sattr3(mode=0o777), "../target ü"))
    record, _ = drv.roundtrip(
        Proc3.SYMLINK, args,
        nfs3.SYMLINK3res(Nfsstat3.NFS3_OK, nfs3.SYMLINK3resok(FILE2, obj, wcc(None))))
    assert_who(record, Op.SYMLINK)
    assert_ok(record)
    assert (record.dir_fh, record.name, record.fh) == (DIR, b"link", FILE2)
    assert record.symlink_target == "../target ü".encode()
    assert record.set.mode == 0o777
    assert_attr(record.attr, obj)


@pytest.mark.parametrize("kind", [Ftype3.NF3CHR, Ftype3.NF3BLK])
def test_mknod_device_records_type_and_rdev(drv: Driver, kind: Ftype3):
    what = nfs3.Mknoddata3(kind, nfs3.Devicedata3(sattr3(mode=0o660, gid=6), Specdata3(8, 17)))
    obj = fattr(kind, mode=0o660, rdev=(8, 17), fileid=11)
    record, _ = drv.roundtrip(
        Proc3.MKNOD, nfs3.MKNOD3args(Diropargs3(DIR, "dev"), what),
        nfs3.MKNOD3res(Nfsstat3.NFS3_OK, nfs3.MKNOD3resok(FILE2, obj, wcc(None))))
    assert_who(record, Op.MKNOD)
    assert_ok(record)
    assert (record.dir_fh, record.name, record.fh) == (DIR, b"dev", FILE2)
    assert record.mknod_type == int(kind)
    assert (record.rdev_major, record.rdev_minor) == (8, 17)
    assert record.set.mode == 0o660 and record.set.gid == 6
    assert_attr(record.attr, obj)


@pytest.mark.parametrize("kind", [Ftype3.NF3FIFO, Ftype3.NF3SOCK])
def test_mknod_fifo_and_socket_record_type_and_attributes(drv: Driver, kind: Ftype3):
    what = nfs3.Mknoddata3(kind, sattr3(mode=0o600))
    record, _ = drv.roundtrip(
        Proc3.MKNOD, nfs3.MKNOD3args(Diropargs3(DIR, "pipe"), what),
        nfs3.MKNOD3res(Nfsstat3.NFS3_OK, nfs3.MKNOD3resok(FILE2, None, wcc(None))))
    assert_ok(record)
    assert record.mknod_type == int(kind)
    assert (record.rdev_major, record.rdev_minor) == (0, 0)
    assert record.set.mode == 0o600


def test_mknod_of_a_regular_file_is_refused_by_the_nas_and_journaled_as_failed(drv: Driver):
    record, _ = drv.roundtrip(
        Proc3.MKNOD, nfs3.MKNOD3args(Diropargs3(DIR, "reg"), nfs3.Mknoddata3(Ftype3.NF3REG)),
        nfs3.MKNOD3res(Nfsstat3.NFS3ERR_BADTYPE, nfs3.MKNOD3resfail(wcc(None))))
    assert_failed(record, Nfsstat3.NFS3ERR_BADTYPE)
    assert record.mknod_type == Ftype3.NF3REG
    assert not record.HasField("set")


@pytest.mark.parametrize("proc, args_cls, res_cls, ok_cls, fail_cls, op", [
    (Proc3.REMOVE, nfs3.REMOVE3args, nfs3.REMOVE3res, nfs3.REMOVE3resok, nfs3.REMOVE3resfail, Op.REMOVE),
    (Proc3.RMDIR, nfs3.RMDIR3args, nfs3.RMDIR3res, nfs3.RMDIR3resok, nfs3.RMDIR3resfail, Op.RMDIR),
])
def test_remove_and_rmdir_success_and_noent(drv: Driver, proc, args_cls, res_cls, ok_cls, fail_cls, op):
    dir_after = fattr(Ftype3.NF3DIR, fileid=2, size=4096)
    record, data = drv.roundtrip(proc, args_cls(Diropargs3(DIR, "gone")),
                                 res_cls(Nfsstat3.NFS3_OK, ok_cls(wcc(dir_after))))
    assert_who(record, op)
    assert_ok(record)
    assert data is None
    assert (record.dir_fh, record.name, record.fh) == (DIR, b"gone", b"")
    assert_attr(record.dir_attr, dir_after)

    record, data = drv.roundtrip(proc, args_cls(Diropargs3(DIR, "never-was")),
                                 res_cls(Nfsstat3.NFS3ERR_NOENT, fail_cls(wcc(dir_after))))
    assert_who(record, op)
    assert_failed(record, Nfsstat3.NFS3ERR_NOENT)
    assert data is None
    assert (record.dir_fh, record.name) == (DIR, b"never-was")
    assert_attr(record.dir_attr, dir_after)


def test_rename_records_both_entries_and_both_directories(drv: Driver):
    from_after, to_after = fattr(Ftype3.NF3DIR, fileid=2), fattr(Ftype3.NF3DIR, fileid=3, base_ns=5)
    args = nfs3.RENAME3args(Diropargs3(DIR, "old"), Diropargs3(DIR2, "new"))
    record, _ = drv.roundtrip(Proc3.RENAME, args, nfs3.RENAME3res(
        Nfsstat3.NFS3_OK, nfs3.RENAME3resok(wcc(from_after), wcc(to_after))))
    assert_who(record, Op.RENAME)
    assert_ok(record)
    assert (record.dir_fh, record.name, record.to_dir_fh, record.to_name) == (DIR, b"old", DIR2, b"new")
    assert_attr(record.dir_attr, from_after)
    assert_attr(record.to_dir_attr, to_after)

    record, _ = drv.roundtrip(Proc3.RENAME, args, nfs3.RENAME3res(
        Nfsstat3.NFS3ERR_NOENT, nfs3.RENAME3resfail(wcc(None), wcc(to_after))))
    assert_failed(record, Nfsstat3.NFS3ERR_NOENT)
    assert not record.HasField("dir_attr")
    assert_attr(record.to_dir_attr, to_after)


def test_link_records_the_file_and_the_new_name(drv: Driver):
    file_after, dir_after = fattr(fileid=77), fattr(Ftype3.NF3DIR, fileid=3)
    record, _ = drv.roundtrip(
        Proc3.LINK, nfs3.LINK3args(FILE, Diropargs3(DIR2, "hard")),
        nfs3.LINK3res(Nfsstat3.NFS3_OK, nfs3.LINK3resok(file_after, wcc(dir_after))))
    assert_who(record, Op.LINK)
    assert_ok(record)
    assert (record.fh, record.to_dir_fh, record.to_name) == (FILE, DIR2, b"hard")
    assert (record.dir_fh, record.name) == (b"", b"")
    assert_attr(record.attr, file_after)
    assert_attr(record.to_dir_attr, dir_after)


def test_commit_records_the_range_and_post_op_attr(drv: Driver):
    after = fattr(size=1 << 20)
    record, data = drv.roundtrip(
        Proc3.COMMIT, nfs3.COMMIT3args(FILE, 4096, 65536),
        nfs3.COMMIT3res(Nfsstat3.NFS3_OK, nfs3.COMMIT3resok(wcc(after), b"verf0002")))
    assert_who(record, Op.COMMIT)
    assert_ok(record)
    assert data is None
    assert (record.fh, record.offset, record.count) == (FILE, 4096, 65536)
    assert_attr(record.attr, after)


def test_every_mutation_has_a_capture_and_only_mutations_are_journaled(drv: Driver):
    from nfsproxy.wire.programs import PROGRAMS
    journaled = {p.proc for p in PROGRAMS.values() if p.mutating and p.prog == nfs3.NFS_PROGRAM}
    assert journaled == set(nfs3.MUTATING)
    for proc in nfs3.MUTATING:  # op == proc for every journaled call
        assert Op.Name(int(proc)) == proc.name


# --------------------------------------------------------------------------
# Failures at the RPC level, and calls capture ignores


@pytest.mark.parametrize("reply, status", [
    (RpcReply(0, accept_stat=AcceptStat.GARBAGE_ARGS), RPC_FAILURE_BASE + AcceptStat.GARBAGE_ARGS),
    (RpcReply(0, accept_stat=AcceptStat.SYSTEM_ERR), RPC_FAILURE_BASE + AcceptStat.SYSTEM_ERR),
    (RpcReply(0, accept_stat=AcceptStat.PROC_UNAVAIL), RPC_FAILURE_BASE + AcceptStat.PROC_UNAVAIL),
    (RpcReply(0, ReplyStat.MSG_DENIED, None, reject_stat=RejectStat.AUTH_ERROR,
              auth_stat=AuthStat.AUTH_TOOWEAK), RPC_FAILURE_BASE + 0x100 + RejectStat.AUTH_ERROR),
    (RpcReply(0, ReplyStat.MSG_DENIED, None, mismatch=(2, 2), reject_stat=RejectStat.RPC_MISMATCH),
     RPC_FAILURE_BASE + 0x100 + RejectStat.RPC_MISMATCH),
], ids=["garbage_args", "system_err", "proc_unavail", "auth_error", "rpc_mismatch"])
def test_rpc_level_failure_is_journaled_as_failed_without_data(drv: Driver, reply: RpcReply, status: int):
    xid, pending = drv.begin(Proc3.WRITE, nfs3.WRITE3args(FILE, 0, 5, StableHow.FILE_SYNC, b"hello"))
    reply = RpcReply(xid, reply.reply_stat, reply.accept_stat, reply.verf, reply.mismatch,
                     reply.reject_stat, reply.auth_stat)
    [(record, data)] = drv.complete_rpc(pending, reply)
    assert record.ok is False
    assert record.status == status
    assert data is None
    assert (record.fh, record.offset, record.count) == (FILE, 0, 5)
    assert not record.HasField("attr")


@pytest.mark.parametrize("proc, args", [
    (Proc3.NULL, None),
    (Proc3.GETATTR, nfs3.GETATTR3args(FILE)),
    (Proc3.READ, nfs3.READ3args(FILE, 0, 4096)),
    (Proc3.ACCESS, nfs3.ACCESS3args(FILE, 0x3F)),
    (Proc3.READDIR, nfs3.READDIR3args(DIR, 0, bytes(8), 4096)),
    (Proc3.FSINFO, nfs3.FSINFO3args(DIR)),
], ids=lambda v: v.name if isinstance(v, Proc3) else "")
def test_reads_are_not_watched(drv: Driver, proc, args):
    _, pending = drv.begin(proc, args)
    assert pending is None


def test_other_programs_and_versions_are_not_watched(drv: Driver):
    write = nfs3.WRITE3args(FILE, 0, 1, StableHow.FILE_SYNC, b"x")
    # Same procedure number, other program or version: not an NFSv3 WRITE.
    message = call_message(Proc3.WRITE, write, 1, prog=MOUNT_PROGRAM, vers=3)
    assert drv.begin(Proc3.WRITE, None, message=message, xid=1)[1] is None
    message = call_message(Proc3.WRITE, write, 2, vers=2)
    assert drv.begin(Proc3.WRITE, None, message=message, xid=2)[1] is None


def test_call_without_auth_sys_has_no_identity(drv: Driver):
    record, _ = drv.roundtrip(Proc3.REMOVE, nfs3.REMOVE3args(Diropargs3(DIR, "x")),
                              nfs3.REMOVE3res(Nfsstat3.NFS3_OK, nfs3.REMOVE3resok(wcc(None))))
    assert record.uid == CRED.uid
    xid, pending = drv.begin(Proc3.REMOVE, nfs3.REMOVE3args(Diropargs3(DIR, "y")), auth=None)
    [(record, _)] = drv.complete(xid, pending, Proc3.REMOVE,
                                 nfs3.REMOVE3res(Nfsstat3.NFS3_OK, nfs3.REMOVE3resok(wcc(None))))
    assert (record.uid, record.gid, list(record.gids), record.machine_name) == (0, 0, [], b"")
    assert record.client == CLIENT


@pytest.mark.parametrize("cut", [4, 12, 20, 60])
def test_truncated_write_arguments_raise_rpc_decode_error(drv: Driver, cut: int):
    payload = b"p" * 100
    message = call_message(Proc3.WRITE, nfs3.WRITE3args(FILE, 0, 100, StableHow.FILE_SYNC, payload), 9)
    call, body = parse_message(message)
    with pytest.raises(RpcDecodeError):
        drv.capture.begin(call, body[:len(body) - cut], CALL_STAMP, CLIENT)


def test_trailing_bytes_after_arguments_raise_rpc_decode_error(drv: Driver):
    message = call_message(Proc3.REMOVE, nfs3.REMOVE3args(Diropargs3(DIR, "x")), 9) + b"\0\0\0\0"
    call, body = parse_message(message)
    with pytest.raises(RpcDecodeError):
        drv.capture.begin(call, body, CALL_STAMP, CLIENT)


# --------------------------------------------------------------------------
# Name bindings: BIND records from LOOKUP and READDIRPLUS


def lookup(drv: Driver, dir_fh: bytes, name: str, res) -> list[tuple[Record, memoryview | None]]:
    xid, pending = drv.begin(Proc3.LOOKUP, nfs3.LOOKUP3args(Diropargs3(dir_fh, name)))
    assert pending is not None and pending.record is None
    return drv.complete(xid, pending, Proc3.LOOKUP, res)


def lookup_ok(fh: bytes, attrs: Fattr3 | None = None):
    return nfs3.LOOKUP3res(Nfsstat3.NFS3_OK, nfs3.LOOKUP3resok(fh, attrs, fattr(Ftype3.NF3DIR)))


def test_lookup_binds_the_handle_to_its_name_once(drv: Driver):
    attrs = fattr(size=99)
    [(record, data)] = lookup(drv, DIR, "a.txt", lookup_ok(FILE, attrs))
    assert data is None
    assert record.op == Op.BIND and record.ok is True
    assert (record.fh, record.dir_fh, record.name) == (FILE, DIR, b"a.txt")
    assert record.stamp == drv.bind_stamps[0]  # stamped at reply time, not call time
    assert_attr(record.attr, attrs)
    assert record.client == ""  # a binding is a fact about the NAS, not about who asked

    # The BindingCache dedupes: the same name again is no news.
    assert lookup(drv, DIR, "a.txt", lookup_ok(FILE, attrs)) == []
    assert lookup(drv, DIR, "a.txt", lookup_ok(FILE, None)) == []
    assert len(drv.bind_stamps) == 1
    # The same handle under another name (a rename seen from outside) is news again.
    [(moved, _)] = lookup(drv, DIR2, "b.txt", lookup_ok(FILE))
    assert (moved.fh, moved.dir_fh, moved.name) == (FILE, DIR2, b"b.txt")
    assert not moved.HasField("attr")
    assert moved.stamp == drv.bind_stamps[1] and moved.stamp != record.stamp


def test_failed_lookups_bind_nothing(drv: Driver):
    noent = nfs3.LOOKUP3res(Nfsstat3.NFS3ERR_NOENT, nfs3.LOOKUP3resfail(fattr(Ftype3.NF3DIR)))
    assert lookup(drv, DIR, "missing", noent) == []
    xid, pending = drv.begin(Proc3.LOOKUP, nfs3.LOOKUP3args(Diropargs3(DIR, "x")))
    assert drv.complete_rpc(pending, RpcReply(xid, accept_stat=AcceptStat.GARBAGE_ARGS)) == []
    assert drv.bind_stamps == []


def test_readdirplus_binds_each_named_entry_with_a_handle(drv: Driver):
    entries = (
        nfs3.Entryplus3(1, ".", 1, fattr(Ftype3.NF3DIR), DIR),
        nfs3.Entryplus3(2, "..", 2, fattr(Ftype3.NF3DIR), DIR2),
        nfs3.Entryplus3(77, "one", 3, fattr(size=1), FILE),
        nfs3.Entryplus3(78, "no-handle", 4, fattr(size=2), None),
        nfs3.Entryplus3(79, "two", 5, None, FILE2),
    )
    res = nfs3.READDIRPLUS3res(Nfsstat3.NFS3_OK, nfs3.READDIRPLUS3resok(
        fattr(Ftype3.NF3DIR), bytes(8), nfs3.Dirlistplus3(entries, True)))
    args = nfs3.READDIRPLUS3args(DIR, 0, bytes(8), 4096, 65536)
    xid, pending = drv.begin(Proc3.READDIRPLUS, args)
    out = drv.complete(xid, pending, Proc3.READDIRPLUS, res)
    records = [r for r, _ in out]
    assert [(r.op, r.fh, r.dir_fh, r.name) for r in records] == [
        (Op.BIND, FILE, DIR, b"one"), (Op.BIND, FILE2, DIR, b"two")]
    assert [r.stamp for r in records] == drv.bind_stamps  # one fresh stamp each
    assert len(set(drv.bind_stamps)) == 2
    assert_attr(records[0].attr, fattr(size=1))
    assert not records[1].HasField("attr")

    # Listing the same directory again journals nothing; a LOOKUP of a listed name neither.
    xid, pending = drv.begin(Proc3.READDIRPLUS, args)
    assert drv.complete(xid, pending, Proc3.READDIRPLUS, res) == []
    assert lookup(drv, DIR, "two", lookup_ok(FILE2)) == []


def test_a_mutation_that_names_a_handle_teaches_the_binding_cache(drv: Driver):
    drv.roundtrip(Proc3.CREATE,
                  nfs3.CREATE3args(Diropargs3(DIR, "made"), nfs3.Createhow3(CreateMode.GUARDED, sattr3())),
                  nfs3.CREATE3res(Nfsstat3.NFS3_OK, nfs3.CREATE3resok(FILE, None, wcc(None))))
    assert lookup(drv, DIR, "made", lookup_ok(FILE)) == []  # the CREATE record already says it
    drv.roundtrip(Proc3.LINK, nfs3.LINK3args(FILE, Diropargs3(DIR2, "alias")),
                  nfs3.LINK3res(Nfsstat3.NFS3_OK, nfs3.LINK3resok(None, wcc(None))))
    assert lookup(drv, DIR2, "alias", lookup_ok(FILE)) == []
    # A failed CREATE teaches nothing.
    drv.roundtrip(Proc3.MKDIR, nfs3.MKDIR3args(Diropargs3(DIR, "d"), sattr3()),
                  nfs3.MKDIR3res(Nfsstat3.NFS3ERR_EXIST, nfs3.MKDIR3resfail(wcc(None))))
    assert len(lookup(drv, DIR, "d", lookup_ok(FILE2))) == 1


def test_binding_cache_is_a_bounded_lru():
    cache = BindingCache(capacity=2)
    assert cache.learn(b"a", DIR, "a") is True
    assert cache.learn(b"b", DIR, "b") is True
    assert cache.learn(b"a", DIR, "a") is False  # refreshes a
    assert cache.learn(b"c", DIR, "c") is True  # evicts b, the least recently used
    assert len(cache) == 2
    assert cache.learn(b"a", DIR, "a") is False
    assert cache.learn(b"b", DIR, "b") is True


def test_capture_shares_one_binding_cache_across_clients():
    cache = BindingCache()
    first, second = Driver(Capture(cache)), Driver(Capture(cache))
    assert len(lookup(first, DIR, "shared", lookup_ok(FILE))) == 1
    assert lookup(second, DIR, "shared", lookup_ok(FILE)) == []
