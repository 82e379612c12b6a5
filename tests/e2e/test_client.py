"""Our codecs as a tiny NFSv3 client (`nfsproxy.nas.client`) against real ganesha.

Every change made through `NfsClient` is checked twice, independently of our
code: through nfs-rs (a separate NFS client implementation) and on the local
disk behind the export (read only, as TESTBED.md asks).
"""

from __future__ import annotations

import os
import stat
import time

import pytest

from nfsproxy.nas.client import (SERVER_TIME, MountError, NfsClient, NfsError, RpcError, created_fh,
                             nfstime3_ns, sattr3)
from nfsproxy.wire.mount import Mountstat3
from nfsproxy.wire.nfs3 import (ACCESS3_LOOKUP, ACCESS3_MODIFY, ACCESS3_READ, CreateMode, Ftype3,
                           NFS_PROGRAM, Nfsstat3, Nfstime3, StableHow)
from nfsproxy.wire.programs import Procedure
from nfsproxy.wire.rpc import AcceptStat
from nfsproxy.wire.xdr import VOID

pytestmark = pytest.mark.ganesha

TIMEOUT_S = 15.0
MiB = 1 << 20


@pytest.fixture
def client(nas):
    with NfsClient(nas.host, nas.nfs_port, nas.mount_port, nas.export_path,
                   machine_name="nfsj-test", timeout_s=TIMEOUT_S) as c:
        c.mount()
        yield c


def _new_file(client: NfsClient, dir_fh: bytes, name: str, mode: int = 0o644) -> bytes:
    resok = client.create(dir_fh, name, mode, CreateMode.GUARDED)
    return created_fh(client, resok, dir_fh, name)


def _new_dir(client: NfsClient, dir_fh: bytes, name: str, mode: int = 0o755) -> bytes:
    resok = client.mkdir(dir_fh, name, mode)
    return created_fh(client, resok, dir_fh, name)


def _nfs_rs_read(nfs_rs_client, path: str) -> bytes:
    with nfs_rs_client.open(path, "rb") as f:
        return f.read()


def _apply(buf: bytearray, offset: int, data: bytes) -> None:
    """What a WRITE does to a file's bytes (holes read as zeros)."""
    if len(buf) < offset:
        buf.extend(bytes(offset - len(buf)))
    buf[offset:offset + len(data)] = data


# --------------------------------------------------------------------------
# MOUNT and file-system information


def test_mount_root_and_fs_info(nas, client, nfs_rs_client):
    root = client.root
    assert isinstance(root, bytes) and 0 < len(root) <= 64
    attrs = client.getattr(root).obj_attributes
    local = os.stat(nas.export_dir)
    assert attrs.type is Ftype3.NF3DIR
    assert attrs.fileid == local.st_ino == nfs_rs_client.stat(".").fileid
    assert attrs.mode == stat.S_IMODE(local.st_mode)

    info = client.fsinfo()
    assert info.rtmax > 0 and info.wtmax > 0 and info.rtpref > 0 and info.wtpref > 0
    assert info.maxfilesize > 0
    assert client.fsstat().tbytes > 0
    assert client.pathconf(root).name_max >= 255
    granted = client.access(root, ACCESS3_READ | ACCESS3_LOOKUP | ACCESS3_MODIFY).access
    assert granted == ACCESS3_READ | ACCESS3_LOOKUP | ACCESS3_MODIFY  # we are root
    client.null()

    # UMNT then MNT again: the same export, the same root handle.
    client.umount()
    assert client.mount() == root


def test_mount_of_unknown_export_fails(nas):
    c = NfsClient(nas.host, nas.nfs_port, nas.mount_port, "/no-such-export", timeout_s=TIMEOUT_S)
    with pytest.raises(MountError) as err:
        c.mount()
    assert err.value.status is not Mountstat3.MNT3_OK
    c.close()


def test_privileged_source_port(nas):
    """ganesha does not demand a port < 1024 here, but the option must work too."""
    with NfsClient(nas.host, nas.nfs_port, nas.mount_port, nas.export_path,
                   privileged_port=True, timeout_s=TIMEOUT_S) as c:
        root = c.mount()
        assert c.getattr(root).obj_attributes.type is Ftype3.NF3DIR
        assert c._nfs._sock.getsockname()[1] < 1024


# --------------------------------------------------------------------------
# CREATE, WRITE, COMMIT, READ


def test_create_write_commit_read(nas, client, nfs_rs_client):
    root = client.root
    created = client.create(root, "data.bin", 0o640, CreateMode.GUARDED)
    assert created.obj is not None
    fh = created.obj
    assert created.obj_attributes.type is Ftype3.NF3REG
    assert created.obj_attributes.size == 0
    assert client.lookup(root, "data.bin").object == fh

    expected = bytearray()
    steps = [
        (0, b"A" * 100, StableHow.FILE_SYNC),
        (10_000, os.urandom(4096), StableHow.FILE_SYNC),    # leaves a hole
        (50, b"B" * 200, StableHow.DATA_SYNC),             # overlaps the first write
        (20_000, os.urandom(MiB), StableHow.FILE_SYNC),    # one 1 MiB WRITE
    ]
    for offset, data, stable in steps:
        resok = client.write(fh, offset, data, stable)
        assert resok.count == len(data)
        assert resok.committed >= stable
        _apply(expected, offset, data)

    # UNSTABLE writes, then COMMIT: the verifier must not change in between.
    verfs = set()
    for offset in (2 * MiB, 2 * MiB + 65536):
        data = os.urandom(65536)
        resok = client.write(fh, offset, data, StableHow.UNSTABLE)
        assert resok.count == len(data)
        verfs.add(resok.verf)
        _apply(expected, offset, data)
    committed = client.commit(fh, 2 * MiB, 2 * 65536)
    assert verfs == {committed.verf}
    assert committed.file_wcc.after.size == len(expected)

    expected = bytes(expected)
    assert client.getattr(fh).obj_attributes.size == len(expected)
    assert client.read_all(fh) == expected
    part = client.read(fh, 10_000, 4096)
    assert part.count == 4096 and bytes(part.data) == expected[10_000:14_096]
    tail = client.read(fh, len(expected) - 10, 1000)
    assert tail.eof and bytes(tail.data) == expected[-10:]
    past = client.read(fh, len(expected) + 5, 100)
    assert past.eof and past.count == 0

    info = nfs_rs_client.stat("data.bin")
    assert info.type.value == "file"
    assert info.size == len(expected)
    assert stat.S_IMODE(info.mode) == 0o640
    assert _nfs_rs_read(nfs_rs_client, "data.bin") == expected

    local = nas.export_dir / "data.bin"
    assert local.read_bytes() == expected
    assert stat.S_IMODE(local.stat().st_mode) == 0o640


def test_write_all_read_all_chunked(nas, client, nfs_rs_client):
    payload = os.urandom(3 * MiB + 12345)
    fh = _new_file(client, client.root, "big.bin")
    assert client.write_all(fh, payload, chunk_bytes=256 * 1024) == len(payload)
    assert client.read_all(fh, chunk_bytes=300_000) == payload
    assert client.read_all(fh) == payload
    # FILE_SYNC needs no COMMIT; a non-zero start offset extends the file.
    assert client.write_all(fh, b"tail", len(payload), stable=StableHow.FILE_SYNC) == 4
    payload += b"tail"
    assert nfs_rs_client.stat("big.bin").size == len(payload)
    assert _nfs_rs_read(nfs_rs_client, "big.bin") == payload
    assert (nas.export_dir / "big.bin").read_bytes() == payload


def test_create_exclusive_is_idempotent_per_verifier(nas, client, nfs_rs_client):
    root = client.root
    first = client.create(root, "excl", how=CreateMode.EXCLUSIVE, verf=b"verifier")
    # A retransmission with the same verifier succeeds on the same file ...
    again = client.create(root, "excl", how=CreateMode.EXCLUSIVE, verf=b"verifier")
    assert created_fh(client, again, root, "excl") == created_fh(client, first, root, "excl")
    # ... another verifier means someone else created it.
    with pytest.raises(NfsError) as err:
        client.create(root, "excl", how=CreateMode.EXCLUSIVE, verf=b"VERIFIER")
    assert err.value.status is Nfsstat3.NFS3ERR_EXIST
    # EXCLUSIVE carries no attributes: set them afterwards, as RFC 1813 says.
    client.setattr(created_fh(client, first, root, "excl"), sattr3(mode=0o604))
    assert stat.S_IMODE(nfs_rs_client.stat("excl").mode) == 0o604
    assert stat.S_IMODE((nas.export_dir / "excl").stat().st_mode) == 0o604


# --------------------------------------------------------------------------
# READDIRPLUS / READDIR over several pages


def test_readdirplus_and_readdir_over_many_pages(nas, client, nfs_rs_client):
    dir_fh = _new_dir(client, client.root, "many")
    names = []
    for i in range(240):
        name = f"entry-{i:04d}-" + "n" * 40
        fh = _new_file(client, dir_fh, name)
        if i % 7:
            client.write(fh, 0, bytes([i % 256]) * i, StableHow.UNSTABLE)
        names.append(name)
    _new_dir(client, dir_fh, "subdir")
    client.symlink(dir_fh, "link", "entry-0001")
    names += ["subdir", "link"]

    pages = []
    page = client.readdirplus_page

    def counting_page(*args):
        resok = page(*args)
        pages.append(len(resok.reply.entries))
        return resok

    client.readdirplus_page = counting_page  # spy on the paging, same client
    entries = list(client.readdirplus(dir_fh, dircount=1024, maxcount=4096))
    del client.readdirplus_page
    assert len(pages) > 3, pages

    got = [e.name.decode() for e in entries]
    assert len(got) == len(set(got)), "an entry came back twice"
    assert set(got) == set(names)
    assert set(nfs_rs_client.listdir("many")) - {".", ".."} == set(names)
    assert set(os.listdir(nas.export_dir / "many")) == set(names)

    by_type = {"subdir": Ftype3.NF3DIR, "link": Ftype3.NF3LNK}
    for e in entries:
        local = os.lstat(nas.export_dir / "many" / e.name.decode())
        assert e.fileid == local.st_ino
        assert e.name_attributes is not None and e.name_handle is not None
        assert e.name_attributes.type is by_type.get(e.name.decode(), Ftype3.NF3REG)
        assert e.name_attributes.fileid == local.st_ino
        if e.name_attributes.type is Ftype3.NF3REG:
            assert e.name_attributes.size == local.st_size
            assert e.name_attributes.size == nfs_rs_client.stat(f"many/{e.name.decode()}").size
    # The handles READDIRPLUS hands out are live.
    for e in entries[::37]:
        assert client.getattr(e.name_handle).obj_attributes.fileid == e.fileid

    with_dots = {e.name.decode() for e in client.readdirplus(dir_fh, dircount=1024, maxcount=4096,
                                                    dots=True)}
    assert with_dots - {".", ".."} == set(names)

    first = client.readdir_page(dir_fh, count=1024)
    assert not first.reply.eof  # READDIR pages too
    plain = list(client.readdir(dir_fh, count=1024))
    assert sorted(e.name.decode() for e in plain) == sorted(names)
    assert {e.name: e.fileid for e in plain} == {e.name: e.fileid for e in entries}


# --------------------------------------------------------------------------
# SETATTR


def test_setattr_mode_size_owner_times(nas, client, nfs_rs_client):
    fh = _new_file(client, client.root, "attrs", 0o644)
    client.write(fh, 0, os.urandom(1000), StableHow.FILE_SYNC)
    mtime_ns = 1_600_000_000_123_456_789
    atime_ns = 1_500_000_000_000_000_001
    resok = client.setattr(fh, sattr3(mode=0o600, uid=1234, gid=5678, size=300,
                                      atime=atime_ns, mtime=mtime_ns))
    after = resok.obj_wcc.after
    assert after is not None
    assert (stat.S_IMODE(after.mode), after.uid, after.gid, after.size) == (0o600, 1234, 5678, 300)
    assert nfstime3_ns(after.mtime) == mtime_ns
    assert resok.obj_wcc.before is None or resok.obj_wcc.before.size == 1000

    info = nfs_rs_client.stat("attrs")
    assert (stat.S_IMODE(info.mode), info.uid, info.gid, info.size) == (0o600, 1234, 5678, 300)
    assert info.mtime == mtime_ns and info.atime == atime_ns

    local = os.stat(nas.export_dir / "attrs")
    assert (stat.S_IMODE(local.st_mode), local.st_uid, local.st_gid, local.st_size) == (
        0o600, 1234, 5678, 300)
    assert local.st_mtime_ns == mtime_ns and local.st_atime_ns == atime_ns

    # Server time: close to the local clock (server and test share a machine).
    client.setattr(fh, sattr3(mtime=SERVER_TIME))
    assert abs(nfs_rs_client.stat("attrs").mtime - time.time_ns()) < 60 * 10**9

    # A guard that does not match the current ctime is refused and changes nothing.
    with pytest.raises(NfsError) as err:
        client.setattr(fh, sattr3(mode=0o777), guard=Nfstime3(1, 0))
    assert err.value.status is Nfsstat3.NFS3ERR_NOT_SYNC
    ctime = client.getattr(fh).obj_attributes.ctime
    client.setattr(fh, sattr3(mode=0o640), guard=ctime)
    assert stat.S_IMODE((nas.export_dir / "attrs").stat().st_mode) == 0o640


# --------------------------------------------------------------------------
# Namespace: RENAME, LINK, SYMLINK/READLINK, MKNOD, REMOVE, RMDIR


def test_rename_and_link(nas, client, nfs_rs_client):
    root = client.root
    a = _new_dir(client, root, "a")
    b = _new_dir(client, root, "b")
    one = _new_file(client, a, "one")
    content = os.urandom(5000)
    client.write_all(one, content)

    client.rename(a, "one", b, "two")               # across directories
    with pytest.raises(NfsError) as err:
        client.lookup(a, "one")
    assert err.value.status is Nfsstat3.NFS3ERR_NOENT
    assert client.lookup_path("b/two") == client.lookup(b, "two").object
    client.rename(b, "two", b, "three")              # within a directory
    three = client.lookup_path("/b/./three")
    assert client.read_all(three) == content
    assert not nfs_rs_client.exists("a/one") and not nfs_rs_client.exists("b/two")
    assert _nfs_rs_read(nfs_rs_client, "b/three") == content
    assert sorted(os.listdir(nas.export_dir / "a")) == []
    assert sorted(os.listdir(nas.export_dir / "b")) == ["three"]

    linked = client.link(three, a, "hard")
    assert linked.file_attributes.nlink == 2
    assert nfs_rs_client.stat("a/hard").fileid == nfs_rs_client.stat("b/three").fileid
    assert nfs_rs_client.stat("b/three").nlink == 2
    assert os.path.samefile(nas.export_dir / "a" / "hard", nas.export_dir / "b" / "three")

    # RENAME onto an existing name replaces it.
    _new_file(client, b, "victim")
    client.rename(a, "hard", b, "victim")
    assert _nfs_rs_read(nfs_rs_client, "b/victim") == content
    assert sorted(nfs_rs_client.listdir("b")) == ["three", "victim"]
    assert os.path.samefile(nas.export_dir / "b" / "victim", nas.export_dir / "b" / "three")
    assert os.listdir(nas.export_dir / "a") == []


def test_symlink_readlink(nas, client, nfs_rs_client):
    target = "../some where/target"
    resok = client.symlink(client.root, "ln", target)
    fh = created_fh(client, resok, client.root, "ln")
    assert client.getattr(fh).obj_attributes.type is Ftype3.NF3LNK
    assert client.readlink(fh).data == target.encode()
    assert nfs_rs_client.readlink("ln") == target
    assert nfs_rs_client.stat("ln").type.value == "symlink"
    assert os.readlink(nas.export_dir / "ln") == target


def test_mknod_fifo(nas, client, nfs_rs_client):
    resok = client.mknod(client.root, "pipe", Ftype3.NF3FIFO, 0o600)
    fh = created_fh(client, resok, client.root, "pipe")
    assert client.getattr(fh).obj_attributes.type is Ftype3.NF3FIFO
    assert nfs_rs_client.stat("pipe").type.value == "fifo"
    assert stat.S_ISFIFO(os.lstat(nas.export_dir / "pipe").st_mode)
    with pytest.raises(ValueError):
        client.mknod(client.root, "nope", Ftype3.NF3REG)


def test_remove_and_rmdir(nas, client, nfs_rs_client):
    root = client.root
    d = _new_dir(client, root, "d")
    _new_file(client, d, "f")
    sub = _new_dir(client, d, "sub")
    client.symlink(sub, "s", "x")
    assert sorted(nfs_rs_client.listdir("d")) == ["f", "sub"]

    client.remove(d, "f")
    client.remove(sub, "s")
    client.rmdir(d, "sub")
    client.rmdir(root, "d")
    assert not nfs_rs_client.exists("d")
    assert not (nas.export_dir / "d").exists()
    assert nfs_rs_client.listdir() == []
    with pytest.raises(NfsError) as err:
        client.lookup(root, "d")
    assert err.value.status is Nfsstat3.NFS3ERR_NOENT


# --------------------------------------------------------------------------
# Errors


def test_lookup_missing_is_noent(client):
    with pytest.raises(NfsError) as err:
        client.lookup(client.root, "missing")
    assert err.value.status is Nfsstat3.NFS3ERR_NOENT
    assert err.value.status.name == "NFS3ERR_NOENT"
    assert err.value.proc.name == "LOOKUP"
    assert "missing" in str(err.value)
    with pytest.raises(NfsError) as err:
        client.lookup_path("no/such/path")
    assert err.value.status is Nfsstat3.NFS3ERR_NOENT
    client.null()  # an NFS error leaves the connection usable


def test_create_guarded_existing_is_exist(nas, client):
    fh = _new_file(client, client.root, "taken")
    client.write(fh, 0, b"keep me", StableHow.FILE_SYNC)
    with pytest.raises(NfsError) as err:
        client.create(client.root, "taken", 0o644, CreateMode.GUARDED)
    assert err.value.status is Nfsstat3.NFS3ERR_EXIST
    with pytest.raises(NfsError) as err:
        client.mkdir(client.root, "taken")
    assert err.value.status is Nfsstat3.NFS3ERR_EXIST
    # UNCHECKED opens the existing file instead (without a size, it is not truncated).
    again = client.create(client.root, "taken", sattr3(), CreateMode.UNCHECKED)
    assert created_fh(client, again, client.root, "taken") == fh
    assert (nas.export_dir / "taken").read_bytes() == b"keep me"


def test_rmdir_nonempty_is_notempty(nas, client, nfs_rs_client):
    d = _new_dir(client, client.root, "full")
    _new_file(client, d, "inside")
    with pytest.raises(NfsError) as err:
        client.rmdir(client.root, "full")
    assert err.value.status is Nfsstat3.NFS3ERR_NOTEMPTY
    assert nfs_rs_client.listdir("full") == ["inside"]
    assert os.listdir(nas.export_dir / "full") == ["inside"]


def test_wrong_type_errors(client):
    f = _new_file(client, client.root, "plain")
    with pytest.raises(NfsError) as err:
        client.lookup(f, "x")
    assert err.value.status is Nfsstat3.NFS3ERR_NOTDIR
    with pytest.raises(NfsError) as err:
        client.rmdir(client.root, "plain")
    assert err.value.status is Nfsstat3.NFS3ERR_NOTDIR
    with pytest.raises(NfsError) as err:
        client.remove(client.root, "missing")
    assert err.value.status is Nfsstat3.NFS3ERR_NOENT


def test_rpc_level_errors_carry_the_reply(client):
    with pytest.raises(RpcError) as err:
        client.rpc(Procedure(NFS_PROGRAM, 2, 0, "NULL", VOID, VOID), None)
    reply = err.value.reply
    assert reply.accept_stat is AcceptStat.PROG_MISMATCH
    assert reply.mismatch[0] <= 3 <= reply.mismatch[1]
    with pytest.raises(RpcError) as err:
        client.rpc(Procedure(NFS_PROGRAM + 1000, 1, 0, "NULL", VOID, VOID), None)
    assert err.value.reply.accept_stat is AcceptStat.PROG_UNAVAIL
    client.null()  # the connection is still usable
