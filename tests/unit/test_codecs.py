"""Golden encodings worked out by hand from RFC 1813 / RFC 1833, plus the
dispatch table.

Round-trip properties cannot catch a mistake made symmetrically in encoder
and decoder (a swapped field, a missing pad); these byte strings can.
"""

from __future__ import annotations

import struct

import pytest

from nfsproxy.wire import mount, nfs3, portmap
from nfsproxy.wire.nfs3 import CreateMode, Ftype3, Nfsstat3, Proc3, StableHow, TimeHow
from nfsproxy.wire.programs import PROGRAMS, Procedure, lookup
from nfsproxy.wire.xdr import XdrError, decode, encode


def hx(text: str) -> bytes:
    """Hex with whitespace and '#' comments, one XDR unit per line as written."""
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()))


def check(codec, value, wire: bytes) -> None:
    assert encode(codec, value) == wire
    assert decode(codec, wire) == value


# --------------------------------------------------------------------------
# NFSv3


def test_write3args_golden():
    args = nfs3.WRITE3args(file=b"\x01\x02\x03", offset=0x0000000100000002, count=5,
                           stable=StableHow.FILE_SYNC, data=b"hello")
    wire = hx("""
        00000003 01020300     # file: nfs_fh3 opaque<64>, 3 bytes + 1 pad
        00000001 00000002     # offset: uint64
        00000005              # count
        00000002              # stable: FILE_SYNC
        00000005 68656c6c 6f000000  # data: opaque<>, 5 bytes + 3 pad
    """)
    check(nfs3.WRITE3args.xdr, args, wire)
    assert isinstance(decode(nfs3.WRITE3args.xdr, wire).data, memoryview)


_FATTR = nfs3.Fattr3(
    type=Ftype3.NF3REG, mode=0o644, nlink=1, uid=1000, gid=100, size=0x1234, used=4096,
    rdev=nfs3.Specdata3(8, 1), fsid=7, fileid=42, atime=nfs3.Nfstime3(1, 2),
    mtime=nfs3.Nfstime3(3, 4), ctime=nfs3.Nfstime3(5, 6))

_FATTR_WIRE = """
    00000001              # type: NF3REG
    000001a4              # mode: 0644
    00000001              # nlink
    000003e8              # uid 1000
    00000064              # gid 100
    00000000 00001234     # size
    00000000 00001000     # used
    00000008 00000001     # rdev: specdata3
    00000000 00000007     # fsid
    00000000 0000002a     # fileid 42
    00000001 00000002     # atime
    00000003 00000004     # mtime
    00000005 00000006     # ctime
"""


def test_getattr3res_ok_golden():
    res = nfs3.GETATTR3res(Nfsstat3.NFS3_OK, nfs3.GETATTR3resok(_FATTR))
    wire = hx("00000000  # NFS3_OK\n" + _FATTR_WIRE)
    assert len(wire) == 4 + 84
    check(nfs3.GETATTR3res.xdr, res, wire)
    assert decode(nfs3.GETATTR3res.xdr, wire).body.obj_attributes.type is Ftype3.NF3REG


def test_getattr3res_fail_is_status_only():
    check(nfs3.GETATTR3res.xdr, nfs3.GETATTR3res(Nfsstat3.NFS3ERR_STALE), hx("00000046"))
    check(nfs3.GETATTR3res.xdr, nfs3.GETATTR3res(Nfsstat3.NFS3ERR_JUKEBOX), hx("00002718"))


def test_readdirplus3res_golden():
    res = nfs3.READDIRPLUS3res(Nfsstat3.NFS3_OK, nfs3.READDIRPLUS3resok(
        dir_attributes=None,
        cookieverf=bytes.fromhex("0102030405060708"),
        reply=nfs3.Dirlistplus3(entries=(
            nfs3.Entryplus3(5, b"a", 1, None, bytes.fromhex("deadbeef")),
            nfs3.Entryplus3(6, b"bcde", 2, None, None),
        ), eof=True)))
    wire = hx("""
        00000000              # NFS3_OK
        00000000              # dir_attributes: attributes_follow FALSE
        01020304 05060708     # cookieverf3 [8]
        00000001              # entries: pointer follows
        00000000 00000005     #   fileid
        00000001 61000000     #   name "a" + 3 pad
        00000000 00000001     #   cookie
        00000000              #   name_attributes: none
        00000001 00000004 deadbeef  # name_handle: handle_follows, nfs_fh3
        00000001              #   nextentry follows
        00000000 00000006     #   fileid
        00000004 62636465     #   name "bcde", no pad
        00000000 00000002     #   cookie
        00000000              #   name_attributes: none
        00000000              #   name_handle: none
        00000000              #   nextentry: NULL
        00000001              # eof TRUE
    """)
    check(nfs3.READDIRPLUS3res.xdr, res, wire)


def test_readdirplus3res_with_attributes_and_failure():
    entry = nfs3.Entryplus3(9, b"f", 3, _FATTR, b"\x0a")
    res = nfs3.READDIRPLUS3res(Nfsstat3.NFS3_OK, nfs3.READDIRPLUS3resok(
        _FATTR, b"\0" * 8, nfs3.Dirlistplus3((entry,), False)))
    wire = hx("00000000 00000001" + _FATTR_WIRE + """
        00000000 00000000     # cookieverf
        00000001              # entry follows
        00000000 00000009 00000001 66000000 00000000 00000003
        00000001""" + _FATTR_WIRE + """
        00000001 00000001 0a000000  # handle of 1 byte
        00000000 00000000     # end of list, eof FALSE
    """)
    check(nfs3.READDIRPLUS3res.xdr, res, wire)
    fail = nfs3.READDIRPLUS3res(Nfsstat3.NFS3ERR_BAD_COOKIE, nfs3.READDIRPLUS3resfail(None))
    check(nfs3.READDIRPLUS3res.xdr, fail, hx("00002713 00000000"))


def test_setattr3args_golden():
    args = nfs3.SETATTR3args(
        object=b"\xaa" * 4,
        new_attributes=nfs3.Sattr3(
            mode=0o755, uid=None, gid=None, size=0,
            atime=nfs3.SetAtime(TimeHow.SET_TO_SERVER_TIME),
            mtime=nfs3.SetMtime(TimeHow.SET_TO_CLIENT_TIME, nfs3.Nfstime3(7, 8))),
        guard=None)
    wire = hx("""
        00000004 aaaaaaaa     # object
        00000001 000001ed     # mode: set_it TRUE, 0755
        00000000              # uid: not set
        00000000              # gid: not set
        00000001 00000000 00000000  # size: set to 0
        00000001              # atime: SET_TO_SERVER_TIME
        00000002 00000007 00000008  # mtime: SET_TO_CLIENT_TIME, nfstime3
        00000000              # guard: check FALSE
    """)
    check(nfs3.SETATTR3args.xdr, args, wire)


def test_create3args_exclusive_golden():
    args = nfs3.CREATE3args(nfs3.Diropargs3(b"\x01", b"f"),
                            nfs3.Createhow3(CreateMode.EXCLUSIVE, b"12345678"))
    wire = hx("""
        00000001 01000000     # where.dir
        00000001 66000000     # where.name "f"
        00000002              # how: EXCLUSIVE
        31323334 35363738     # createverf3 [8]
    """)
    check(nfs3.CREATE3args.xdr, args, wire)


def test_mknod3args_arms():
    where = hx("00000001 01000000 00000001 66000000")
    regular = nfs3.MKNOD3args(nfs3.Diropargs3(b"\x01", b"f"), nfs3.Mknoddata3(Ftype3.NF3REG))
    check(nfs3.MKNOD3args.xdr, regular, where + hx("00000001"))
    empty = nfs3.Sattr3(None, None, None, None, nfs3.SetAtime(TimeHow.DONT_CHANGE),
                        nfs3.SetMtime(TimeHow.DONT_CHANGE))
    chr_dev = nfs3.MKNOD3args(nfs3.Diropargs3(b"\x01", b"f"), nfs3.Mknoddata3(
        Ftype3.NF3CHR, nfs3.Devicedata3(empty, nfs3.Specdata3(4, 64))))
    check(nfs3.MKNOD3args.xdr, chr_dev,
          where + hx("00000004" + "00000000" * 6 + "00000004 00000040"))
    fifo = nfs3.MKNOD3args(nfs3.Diropargs3(b"\x01", b"f"), nfs3.Mknoddata3(Ftype3.NF3FIFO, empty))
    check(nfs3.MKNOD3args.xdr, fifo, where + hx("00000007" + "00000000" * 6))


def test_write3res_ok_golden():
    res = nfs3.WRITE3res(Nfsstat3.NFS3_OK, nfs3.WRITE3resok(
        nfs3.WccData(nfs3.WccAttr(10, nfs3.Nfstime3(1, 0), nfs3.Nfstime3(2, 0)), None),
        count=5, committed=StableHow.DATA_SYNC, verf=b"VERIFIER"))
    wire = hx("""
        00000000              # NFS3_OK
        00000001 00000000 0000000a 00000001 00000000 00000002 00000000  # pre_op_attr
        00000000              # post_op_attr: none
        00000005              # count
        00000001              # committed: DATA_SYNC
        56455249 46494552     # writeverf3 "VERIFIER"
    """)
    check(nfs3.WRITE3res.xdr, res, wire)


def test_rename3args_from_is_first():
    args = nfs3.RENAME3args(nfs3.Diropargs3(b"A", b"x"), nfs3.Diropargs3(b"B", b"y"))
    check(nfs3.RENAME3args.xdr, args,
          hx("00000001 41000000 00000001 78000000 00000001 42000000 00000001 79000000"))


@pytest.mark.parametrize(("codec", "wire"), [
    (nfs3.GETATTR3res.xdr, "00000003"),                     # 3 is not an nfsstat3
    (nfs3.GETATTR3args.xdr, "00000041" + "00" * 68),         # handle of 65 bytes
    (nfs3.CREATE3args.xdr, "00000000 00000000 00000003"),    # createmode3 3
    (nfs3.MKNOD3args.xdr, "00000000 00000000 00000008"),     # ftype3 8
    (nfs3.ACCESS3res.xdr, "00000001 00000002"),              # bool 2
    (nfs3.READ3res.xdr, "00000000 00000000 00000001 00000000 ffffffff"),  # huge data length
    (nfs3.READDIR3res.xdr, "00000000 00000000 0000000000000000 00000001"),  # truncated entry
])
def test_malformed_nfs3_is_xdr_error(codec, wire):
    with pytest.raises(XdrError):
        decode(codec, hx(wire))


def test_handles_are_hashable_bytes():
    res = decode(nfs3.LOOKUP3res.xdr, hx("00000000 00000002 abcd0000 00000000 00000000"))
    assert res.status is Nfsstat3.NFS3_OK
    assert type(res.body.object) is bytes
    assert {res.body.object: 1}[b"\xab\xcd"] == 1


def test_read3resok_data_is_memoryview():
    wire = hx("00000000 00000000 00000003 00000001 00000003 78797a00")
    res = decode(nfs3.READ3res.xdr, wire)
    assert isinstance(res.body.data, memoryview)
    assert res.body.data == b"xyz" and res.body.eof is True


def test_nfsstat3_is_complete():
    assert len(Nfsstat3) == 29
    assert [s.value for s in Nfsstat3 if s.value > 10000] == list(range(10001, 10009))
    assert Nfsstat3.NFS3ERR_JUKEBOX == 10008 and Nfsstat3.NFS3ERR_BADHANDLE == 10001


def test_names_are_bytes_never_assumed_utf8():
    # b"caf\xe9" is Latin-1: not UTF-8, and decoded as the very same bytes.
    args = nfs3.LOOKUP3args(nfs3.Diropargs3(b"\x01", b"caf\xe9"))
    check(nfs3.LOOKUP3args.xdr, args, hx("""
        00000001 01000000     # dir
        00000004 636166e9     # name, 4 bytes, no pad
    """))
    # A str packs as UTF-8 (surrogateescape: an os.fsdecode'd name gives its bytes back).
    assert encode(nfs3.FILENAME3, "caf\udce9") == encode(nfs3.FILENAME3, b"caf\xe9")
    assert encode(nfs3.FILENAME3, "é") == encode(nfs3.FILENAME3, b"\xc3\xa9")


# --------------------------------------------------------------------------
# MOUNT and portmap


def test_mount_mnt_golden():
    check(mount.DIRPATH, b"/export", hx("00000007 2f657870 6f727400"))
    ok = mount.Mountres3(mount.Mountstat3.MNT3_OK, mount.Mountres3Ok(b"\xab\xcd", (1, 0)))
    check(mount.Mountres3.xdr, ok, hx("""
        00000000              # MNT3_OK
        00000002 abcd0000     # fhandle3
        00000002 00000001 00000000  # auth_flavors<>: AUTH_SYS, AUTH_NONE
    """))
    check(mount.Mountres3.xdr, mount.Mountres3(mount.Mountstat3.MNT3ERR_ACCES), hx("0000000d"))


def test_mount_export_golden():
    exports = (mount.Exportnode(b"/a", (b"g1", b"host")), mount.Exportnode(b"/b", ()))
    check(mount.EXPORTS, exports, hx("""
        00000001              # exportnode follows
        00000002 2f610000     # ex_dir "/a"
        00000001 00000002 67310000  # group "g1"
        00000001 00000004 686f7374  # group "host"
        00000000              # end of groups
        00000001              # exportnode follows
        00000002 2f620000     # ex_dir "/b"
        00000000              # no groups
        00000000              # end of exports
    """))


def test_mount_dump_golden():
    rows = (mount.Mountbody(b"c1", b"/x"),)
    check(mount.MOUNTLIST, rows, hx("00000001 00000002 63310000 00000002 2f780000 00000000"))


def test_portmap_golden():
    m = portmap.Mapping(100003, 3, portmap.IPPROTO_TCP, 2049)
    check(portmap.Mapping.xdr, m, hx("000186a3 00000003 00000006 00000801"))
    check(portmap.PMAPLIST, (m,), hx("00000001 000186a3 00000003 00000006 00000801 00000000"))
    check(portmap.CallArgs.xdr, portmap.CallArgs(100005, 3, 0, b""),
          hx("000186a5 00000003 00000000 00000000"))
    check(portmap.CallResult.xdr, portmap.CallResult(2049, b"ab"), hx("00000801 00000002 61620000"))


# --------------------------------------------------------------------------
# The dispatch table

_NFS_MUTATING = {"SETATTR", "WRITE", "CREATE", "MKDIR", "SYMLINK", "MKNOD", "REMOVE", "RMDIR",
                 "RENAME", "LINK", "COMMIT"}


def test_programs_cover_every_procedure():
    assert {k for k in PROGRAMS if k[0] == 100003} == {(100003, 3, p) for p in range(22)}
    assert {k for k in PROGRAMS if k[0] == 100005} == {(100005, 3, p) for p in range(6)}
    assert {k for k in PROGRAMS if k[0] == 100000} == {(100000, 2, p) for p in range(6)}
    assert {k for k in PROGRAMS if k[0] == 100227} == {(100227, 3, p) for p in range(3)}
    assert len(PROGRAMS) == 37
    for key, proc in PROGRAMS.items():
        assert isinstance(proc, Procedure)
        assert (proc.prog, proc.vers, proc.proc) == key


def test_only_nfs3_mutations_and_nfsacl_setacl_are_journaled():
    mutating = {(p.prog, p.name) for p in PROGRAMS.values() if p.mutating}
    assert mutating == {(100003, name) for name in _NFS_MUTATING} | {(100227, "SETACL")}
    assert not lookup(100005, 3, mount.MountProc3.MNT).mutating


def test_lookup():
    write = lookup(100003, 3, 7)
    assert write is lookup(nfs3.NFS_PROGRAM, nfs3.NFS_V3, Proc3.WRITE)
    assert write.name == "WRITE" and write.args is nfs3.WRITE3args.xdr
    assert write.res is nfs3.WRITE3res.xdr
    assert lookup(100003, 3, 22) is None
    assert lookup(100003, 4, 0) is None
    assert lookup(100227, 3, 3) is None
    assert lookup(100227, 3, 2).name == "SETACL"


def test_procedure_is_frozen():
    with pytest.raises(AttributeError):
        lookup(100003, 3, 0).mutating = True  # type: ignore[misc]


def test_a_failed_nfsacl_reply_without_attributes_decodes():
    # ganesha 4.3 sends a failed GETACL/SETACL as the status alone (its XDR's
    # default arm is void); Linux adds post-op attributes. Both must decode,
    # or a baseline racing a REMOVE fails on an "undecodable" reply.
    from nfsproxy.wire import nfsacl
    from nfsproxy.wire.nfs3 import Nfsstat3
    for res in (nfsacl.GETACL3res, nfsacl.SETACL3res):
        bare = decode(res.xdr, struct.pack(">I", Nfsstat3.NFS3ERR_STALE))
        assert bare.status is Nfsstat3.NFS3ERR_STALE and bare.body is None
        linux = decode(res.xdr, struct.pack(">II", Nfsstat3.NFS3ERR_STALE, 0))
        assert linux == bare


def test_the_programs_table_says_where_each_call_goes():
    from nfsproxy.wire.programs import Route, route_of
    assert lookup(100003, 3, 7).route is Route.NFS
    assert lookup(100005, 3, 1).route is Route.MOUNT
    assert lookup(100000, 2, 3).route is Route.PORTMAP
    assert lookup(100227, 3, 2).route is Route.NFS  # NFSACL rides the NFS port
    assert route_of(100003, 4) is Route.REJECT  # would let mutations pass unjournaled
    assert route_of(100005, 1) is Route.MOUNT
    assert (route_of(100021, 4), route_of(100024, 1)) == (Route.NLM, Route.NSM)
    assert route_of(100000, 5) is Route.REJECT
    assert route_of(400000, 1) is Route.NFS  # unknown programs: the NAS answers
