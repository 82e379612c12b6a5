"""POSIX ACLs, sans-IO: NFSACL SETACL capture, conflict claims, the tree's ACLs,
and the Linux xattr encoding a restore writes (recoveryd/acl.py)."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, strategies as st

from logstore.pb.journal_pb2 import AclEntry, Attr, Op, Record
from logstore.stamp import Stamp
from nfsproxy.wire import nfsacl, xdr
from nfsproxy.wire.programs import lookup
from nfsproxy.relay.capture import RPC_FAILURE_BASE, Capture
from nfsproxy.relay.conflict import Claims, ConflictTable, claims_of
from nfsproxy.wire.nfs3 import Fattr3, Ftype3, Nfsstat3, Specdata3
from nfsproxy.nas.client import nfstime3
from nfsproxy.wire.rpc import AcceptStat, AuthSys, RpcCall, RpcReply, encode_call, encode_reply, parse_message
from logstore.sharding import routing_handle
from recoveryd.acl import XATTR_ACCESS, Ace, aces, from_xattr, to_text, to_xattr
from recoveryd.tree import DIR, REG, Tree

U = 0xFFFFFFFF
FILE = b"\x10file-handle"
STAMP = Stamp(1_700_000_000_000_000_000, 0, 42).to_bytes()
CRED = AuthSys(1, b"host", 1000, 100, ())
ACCESS = ((1, 0, 6), (2, 1234, 4), (4, 0, 4), (0x10, 0, 4), (0x20, 0, 4))
DEFAULT = ((1, 0, 7), (4, 0, 5), (0x20, 0, 0))


def _aclent(entries, flag: int = 0):
    return nfsacl.Acl(len(entries), tuple(nfsacl.Aclent(t | flag, i, p) for t, i, p in entries))


def _setacl_roundtrip(res, *, mask: int = nfsacl.NFS_ACL | nfsacl.NFS_DFACL, reply: RpcReply | None = None):
    proc = lookup(nfsacl.NFSACL_PROGRAM, nfsacl.NFSACL_V3, nfsacl.AclProc3.SETACL)
    args = nfsacl.SETACL3args(FILE, mask, _aclent(ACCESS), _aclent(DEFAULT, nfsacl.NFS_ACL_DEFAULT))
    message = encode_call(RpcCall(9, nfsacl.NFSACL_PROGRAM, 3, 2, auth_sys=CRED)).getvalue() + \
        xdr.encode(proc.args, args)
    capture = Capture()
    call, body = parse_message(message)
    pending = capture.begin(call, body, STAMP, "192.0.2.1:800")
    assert pending is not None and pending.record is not None
    if reply is None:
        reply_bytes = encode_reply(RpcReply(9)).getvalue() + xdr.encode(proc.res, res)
    else:
        reply_bytes = encode_reply(reply).getvalue()
    header, rbody = parse_message(reply_bytes)
    [(record, data)] = capture.complete(pending, header, rbody, lambda: b"")
    assert data is None
    return record


def _fattr(mode: int = 0o640) -> Fattr3:
    t = nfstime3(1_700_000_001_000_000_000)
    return Fattr3(Ftype3.NF3REG, mode, 1, 0, 0, 5, 4096, Specdata3(0, 0), 1, 2, t, t, t)


def test_setacl_is_journaled_as_a_mutation_of_the_object_with_its_acls():
    record = _setacl_roundtrip(nfsacl.SETACL3res(Nfsstat3.NFS3_OK, nfsacl.SETACL3resok(_fattr())))
    assert record.op == Op.SETACL and record.ok and record.status == 0
    assert record.fh == FILE and record.uid == 1000 and record.stamp == STAMP
    assert record.acl_mask == nfsacl.NFS_ACL | nfsacl.NFS_DFACL
    assert [(e.type, e.id, e.perm) for e in record.acl] == list(ACCESS)
    # NFS_ACL_DEFAULT is the wire's mark of a default entry; the record's list says it.
    assert [(e.type, e.id, e.perm) for e in record.default_acl] == list(DEFAULT)
    assert record.attr.mode == 0o640
    assert routing_handle(record) == FILE


def test_failed_setacl_is_journaled_as_failed_with_its_post_op_attributes():
    record = _setacl_roundtrip(nfsacl.SETACL3res(Nfsstat3.NFS3ERR_PERM, _fattr(0o600)))
    assert not record.ok and record.status == Nfsstat3.NFS3ERR_PERM
    assert record.attr.mode == 0o600 and len(record.acl) == 5


def test_setacl_refused_at_the_rpc_level_is_journaled_as_failed():
    record = _setacl_roundtrip(None, reply=RpcReply(9, accept_stat=AcceptStat.GARBAGE_ARGS))
    assert not record.ok and record.status == RPC_FAILURE_BASE + AcceptStat.GARBAGE_ARGS


def test_setacl_of_the_access_acl_only_keeps_only_that_part():
    record = _setacl_roundtrip(nfsacl.SETACL3res(Nfsstat3.NFS3_OK, nfsacl.SETACL3resok(None)),
                               mask=nfsacl.NFS_ACL)
    assert record.acl_mask == nfsacl.NFS_ACL and len(record.acl) == 5 and not record.default_acl
    assert not record.HasField("attr")


def test_getacl_is_not_journaled():
    message = encode_call(RpcCall(3, nfsacl.NFSACL_PROGRAM, 3, 1)).getvalue() + \
        xdr.encode(nfsacl.GETACL3args.xdr, nfsacl.GETACL3args(FILE, 15))
    call, body = parse_message(message)
    assert Capture().begin(call, body, STAMP, "c") is None


def test_setacls_of_one_file_conflict_and_nothing_else_waits_for_them():
    def setacl(fh: bytes, mask: int) -> Claims:
        return claims_of(Record(op=Op.SETACL, fh=fh, acl_mask=mask))
    a = setacl(FILE, nfsacl.NFS_ACL)
    assert a.conflicts(setacl(FILE, nfsacl.NFS_ACL | nfsacl.NFS_DFACL))
    assert not a.conflicts(setacl(FILE, nfsacl.NFS_DFACL))
    assert not a.conflicts(setacl(b"other", nfsacl.NFS_ACL))
    write = claims_of(Record(op=Op.WRITE, fh=FILE, offset=0, count=10))
    assert not a.conflicts(write) and not write.conflicts(a)
    table = ConflictTable()
    assert table.admit("first", a)
    assert table.admit("write", write)
    assert not table.admit("second", setacl(FILE, nfsacl.NFS_ACL))
    assert table.release("first") == ["second"]
    assert table.release("second") == [] and table.release("write") == []
    assert len(table) == 0


# -- the tree ---------------------------------------------------------------------------


class Feed:
    def __init__(self) -> None:
        self.tree = Tree()
        self.wall = itertools.count(1000)

    def __call__(self, op: int, ok: bool = True, **fields) -> None:
        self.tree.apply(Record(stamp=Stamp(next(self.wall), 0, 1).to_bytes(), op=op, ok=ok, **fields))


def _entries(entries) -> list[AclEntry]:
    return [AclEntry(type=t, id=i, perm=p) for t, i, p in entries]


def test_tree_keeps_acls_from_the_baseline_and_setacl_records():
    feed = Feed()
    feed(Op.BASELINE, fh=b"R", baseline_first=True, attr=Attr(type=DIR))
    feed(Op.BASELINE, fh=b"D", dir_fh=b"R", name=b"d", baseline_first=True, attr=Attr(type=DIR),
         acl_mask=nfsacl.NFS_ACL | nfsacl.NFS_DFACL, default_acl=_entries(DEFAULT))
    feed(Op.BASELINE, fh=b"F", dir_fh=b"R", name=b"f", baseline_first=True, attr=Attr(type=REG))
    d, f = feed.tree.nodes[b"D"], feed.tree.nodes[b"F"]
    assert d.acl == () and d.default_acl == aces(_entries(DEFAULT))
    assert f.acl is None and f.default_acl is None  # the baseline did not read it: unknown
    feed(Op.SETACL, fh=b"F", acl_mask=nfsacl.NFS_ACL, acl=_entries(ACCESS))
    assert f.acl == aces(_entries(ACCESS))
    feed(Op.SETACL, ok=False, fh=b"F", acl_mask=nfsacl.NFS_ACL, acl=_entries(DEFAULT))
    assert f.acl == aces(_entries(ACCESS))  # the NAS refused it: nothing changed
    feed(Op.SETACL, fh=b"D", acl_mask=nfsacl.NFS_ACL, acl=_entries(DEFAULT))
    assert d.acl == aces(_entries(DEFAULT)) and d.default_acl == aces(_entries(DEFAULT))
    feed(Op.SETACL, fh=b"D", acl_mask=nfsacl.NFS_DFACL)
    assert d.default_acl == ()  # removed
    # A name made anew is a new object: no ACL known.
    feed(Op.REMOVE, dir_fh=b"R", name=b"f")
    feed(Op.CREATE, fh=b"F", dir_fh=b"R", name=b"f", attr=Attr(type=REG))
    assert f.acl is None


# -- the xattr encoding -------------------------------------------------------------------


def test_xattr_is_linux_posix_acl_format():
    value = to_xattr(_entries([(0x20, 5, 4), (2, 1234, 6), (1, 9, 7), (4, 0, 4), (0x10, 0, 6)]))
    header, = struct.unpack_from("<I", value)
    assert header == 2
    body = [struct.unpack_from("<HHI", value, 4 + 8 * k) for k in range((len(value) - 4) // 8)]
    # sorted by tag, the id of all but USER and GROUP entries ACL_UNDEFINED_ID
    assert body == [(1, 7, U), (2, 6, 1234), (4, 4, U), (0x10, 6, U), (0x20, 4, U)]


def test_xattr_text_is_getfacl_short_form():
    assert to_text(_entries(ACCESS)) == "user::rw-,user:1234:r--,group::r--,mask::r--,other::r--"
    assert to_text(_entries(DEFAULT), "default:") == "default:user::rwx,default:group::r-x,default:other::---"
    assert to_text([]) == ""


_ace = st.builds(lambda t, i, p: AclEntry(type=t, id=i, perm=p),
                 st.sampled_from([1, 2, 4, 8, 0x10, 0x20]), st.integers(0, U), st.integers(0, 7))


@given(st.lists(_ace, max_size=20))
def test_xattr_round_trips(entries):
    assert from_xattr(to_xattr(entries)) == aces(entries)
    assert all(isinstance(a, Ace) for a in from_xattr(to_xattr(entries)))


@pytest.mark.parametrize("value", [b"", b"\x02\x00\x00", b"\x01\x00\x00\x00", b"\x02\x00\x00\x00\x01"])
def test_bad_xattr_values_are_refused(value):
    with pytest.raises(ValueError):
        from_xattr(value)


def test_restore_sets_the_xattr_where_the_file_system_has_acls(tmp_path):
    import errno
    import os
    path = tmp_path / "f"
    path.write_bytes(b"")
    try:
        os.setxattr(path, XATTR_ACCESS, to_xattr(_entries(ACCESS)))
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            pytest.skip("this file system has no POSIX ACLs")
        raise
    assert from_xattr(os.getxattr(path, XATTR_ACCESS)) == aces(_entries(ACCESS))
    assert os.stat(path).st_mode & 0o777 == 0o644  # group bits are the mask's


def test_a_file_system_without_acls_is_warned_about_once_and_counted(tmp_path, monkeypatch, caplog):
    import errno
    import os
    from recoveryd.restore import local as restore
    from recoveryd.tree import Node

    def refuse(*args, **kwargs):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")
    monkeypatch.setattr(restore.os, "setxattr", refuse)
    summary = restore.RestoreSummary(str(tmp_path), cut=None)
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(b"")
        node = Node(name.encode(), type=REG, acl=aces(_entries(ACCESS)))
        restore._set_acls(tmp_path / name, node, summary)
    assert summary.acls == 0 and summary.acls_refused == 2
    assert len([r for r in caplog.records if "POSIX ACLs" in r.getMessage()]) == 1
    assert "2 POSIX ACLs NOT restored" in str(summary)


@given(st.binary(max_size=200))
def test_any_setacl_body_gives_a_record_or_a_clean_rejection(body):
    from nfsproxy.wire.rpc import RpcDecodeError
    message = encode_call(RpcCall(5, nfsacl.NFSACL_PROGRAM, 3, 2)).getvalue() + body
    call, parsed = parse_message(message)
    try:
        pending = Capture().begin(call, parsed, STAMP, "c")
    except RpcDecodeError:
        return
    assert pending.record.op == Op.SETACL and pending.record.acl_mask & ~0x5 == 0


@given(st.lists(st.tuples(st.sampled_from([1, 2, 4, 8, 0x10, 0x20]), st.integers(0, U),
                          st.integers(0, 7)), max_size=8),
       st.sampled_from([nfsacl.NFS_ACL, nfsacl.NFS_DFACL, nfsacl.NFS_ACL | nfsacl.NFS_DFACL]))
def test_setacl_records_hold_exactly_the_parts_the_mask_names(entries, mask):
    proc = lookup(nfsacl.NFSACL_PROGRAM, nfsacl.NFSACL_V3, nfsacl.AclProc3.SETACL)
    acl = _aclent(entries)
    args = nfsacl.SETACL3args(FILE, mask, acl, _aclent(entries, nfsacl.NFS_ACL_DEFAULT))
    message = encode_call(RpcCall(5, nfsacl.NFSACL_PROGRAM, 3, 2)).getvalue() + xdr.encode(proc.args, args)
    call, body = parse_message(message)
    record = Capture().begin(call, body, STAMP, "c").record
    want = [tuple(e) for e in entries]
    assert [(e.type, e.id, e.perm) for e in record.acl] == (want if mask & nfsacl.NFS_ACL else [])
    assert [(e.type, e.id, e.perm) for e in record.default_acl] == (want if mask & nfsacl.NFS_DFACL else [])
