"""POSIX ACLs end to end: NFSACL v3 through a real `nfsj proxy` in front of a
real ganesha with NFSACL enabled, journaled, shipped to a real shard, read by
the baseline, restored to a directory, pushed back, shown by `nfsj history`.

What ganesha 4.3 (Debian) really does, and these tests assert as found:
GETACL works but answers an empty ACL even for a file that has a POSIX ACL
on the exported file system (its VFS FSAL is built without POSIX ACLs), and
every SETACL is refused with GARBAGE_ARGS ("Bad xdr_free for NFSACL_SETACL"
in its log). So the path "a SETACL that succeeded is restored" is tested
with hand-made records fed to real shards, the way the Restore service's
contract tests feed them. The last test has the Linux kernel client's own
`setfacl` (Debian's acl tools added to the guest) go through the proxy: it
gets EIO, and each of the kernel's three tries (it retries GARBAGE_ARGS
twice) is journaled as a failed SETACL.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import time
from pathlib import Path

import pytest

from e2e.proxy_fixture import ProxyProcess
from e2e.test_restore import (ShardProcess, _stamp, ingest, nfsj, now_bound, run_baseline,
                              shard_args, shipped, wait_proven)
from logstore.pb.journal_pb2 import AclEntry, Attr, Op, Record, ScanRequest
from logstore.stamp import Stamp
from nfsproxy.wire import nfsacl
from nfsproxy.nas.client import NfsClient, RpcError, created_fh
from nfsproxy.demo.ganesha import start_ganesha
from nfsproxy.nas.pushback import push_to_nas
from nfsproxy.wire.rpc import AcceptStat
from recoveryd.acl import XATTR_ACCESS, XATTR_DEFAULT, aces, from_xattr, to_xattr
from recoveryd.restore import RestoreClient, Shards

pytestmark = pytest.mark.ganesha

U = 0xFFFFFFFF
# user::rw-, user:1234:r--, group::r--, mask::r--, other::r--
FILE_ACL = [(1, U, 6), (2, 1234, 4), (4, U, 4), (0x10, U, 4), (0x20, U, 4)]
# default: user::rwx, group:77:r-x, group::r-x, mask::r-x, other::---
DIR_DEFAULT = [(1, U, 7), (8, 77, 5), (4, U, 5), (0x10, U, 5), (0x20, U, 0)]


def _xattr(entries) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, i, p in sorted(entries))


def _read_acl(path: Path, name: str) -> tuple:
    """The ACL held in `name` at `path` (empty when there is none)."""
    try:
        return from_xattr(os.getxattr(path, name, follow_symlinks=False))
    except OSError as e:
        if e.errno == errno.ENODATA:
            return ()
        raise


def _aclents(entries, default: bool = False):
    flag = nfsacl.NFS_ACL_DEFAULT if default else 0
    return tuple(nfsacl.Aclent(t | flag, i, p) for t, i, p in entries)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nfsacl")
    export = tmp / "export"
    export.mkdir()
    (export / "f").write_bytes(b"acl file\n")
    (export / "d").mkdir()
    (export / "d" / "inner").write_bytes(b"inner\n")
    # ACLs on the exported file system before the NAS serves it.
    os.setxattr(export / "f", XATTR_ACCESS, _xattr(FILE_ACL))
    os.setxattr(export / "d", XATTR_DEFAULT, _xattr(DIR_DEFAULT))
    nas = start_ganesha(export, tmp / "ganesha", nfsacl=True)
    shard = proxy = None
    try:
        shard = ShardProcess(tmp / "shard0", 0)
        proxy = ProxyProcess(nas, tmp / "log", extra=shard_args([shard.address])).start()
        _, baseline_end = run_baseline(proxy.log_dir)
        yield tmp, nas, proxy, shard.address, baseline_end
    finally:
        if proxy is not None:
            proxy.stop()
        if shard is not None:
            shard.stop()
        nas.stop()


def _client(host: str, port: int, mount_port: int) -> NfsClient:
    c = NfsClient(host, port, mount_port, "/export")
    c.mount()
    return c


def test_getacl_through_the_proxy_is_what_the_nas_answers(stack):
    _, nas, proxy, _, _ = stack
    with _client(nas.host, nas.nfs_port, nas.mount_port) as direct, \
            _client("127.0.0.1", proxy.port, proxy.port) as relayed:
        for path in ("", "f", "d", "d/inner"):
            want = direct.getacl(direct.lookup_path(path) if path else direct.root)
            got = relayed.getacl(relayed.lookup_path(path) if path else relayed.root)
            assert (got.mask, got.acl, got.default_acl) == (want.mask, want.acl, want.default_acl), path


def test_baseline_reads_the_nas_acls_and_restore_sets_them(stack, tmp_path):
    _, nas, proxy, shard, baseline_end = stack
    with _client(nas.host, nas.nfs_port, nas.mount_port) as direct:
        served = {p: direct.getacl(direct.lookup_path(p)) for p in ("f", "d")}
    at = now_bound()
    wait_proven([shard], at)
    with Shards([shard]) as shards:
        pieces = {r.name: r for r in shards.scan(ScanRequest(ops=[Op.BASELINE]))
                  if r.baseline_first and r.name}
    # The baseline asked (acl_mask says so) and kept what the NAS answered.
    assert pieces[b"f"].acl_mask == nfsacl.NFS_ACL
    assert aces(pieces[b"f"].acl) == aces(served["f"].acl.entries)
    assert pieces[b"d"].acl_mask == nfsacl.NFS_ACL | nfsacl.NFS_DFACL
    assert aces(pieces[b"d"].default_acl) == aces(
        nfsacl.Aclent(e.type & ~nfsacl.NFS_ACL_DEFAULT, e.id, e.perm) for e in served["d"].default_acl.entries)

    dest = tmp_path / "restored"
    done = nfsj("restore", "--at", str(at), "--to", str(dest), "--quiet", *shard_args([shard]))
    assert done.returncode == 0, done.stderr.decode()
    # The restore has exactly the ACLs the NAS serves over NFSACL ...
    assert _read_acl(dest / "f", XATTR_ACCESS) == aces(served["f"].acl.entries)
    assert _read_acl(dest / "d", XATTR_DEFAULT) == aces(
        nfsacl.Aclent(e.type & ~nfsacl.NFS_ACL_DEFAULT, e.id, e.perm) for e in served["d"].default_acl.entries)
    # ... which, where the NAS exposes them, are those of its file system.
    if served["f"].acl.entries:
        assert _read_acl(dest / "f", XATTR_ACCESS) == _read_acl(nas.export_dir / "f", XATTR_ACCESS)
    else:
        # ganesha 4.3: the exported file has an ACL, GETACL says none.
        assert _read_acl(nas.export_dir / "f", XATTR_ACCESS) == aces(
            AclEntry(type=t, id=i, perm=p) for t, i, p in FILE_ACL)


def test_setacl_through_the_proxy_is_journaled_with_its_real_outcome(stack, tmp_path):
    _, nas, proxy, shard, _ = stack
    with _client("127.0.0.1", proxy.port, proxy.port) as c:
        fh = created_fh(c, c.create(c.root, "g2", 0o644), c.root, "g2")
        before = now_bound()
        try:
            c.setacl(fh, _aclents(FILE_ACL))
            outcome = (True, 0)
        except RpcError as e:
            outcome = (False, 0x10000 + int(e.reply.accept_stat))
        # The connection still serves after the NAS's answer.
        assert c.getattr(fh).obj_attributes.size == 0
    at = now_bound()
    wait_proven([shard], at)
    with Shards([shard]) as shards:
        records = [r for r in shards.scan(ScanRequest(ops=[Op.SETACL], after=before.to_bytes()))]
    assert len(records) == 1
    r = records[0]
    assert r.fh == fh and r.acl_mask == nfsacl.NFS_ACL
    assert [(e.type, e.id, e.perm) for e in r.acl] == FILE_ACL
    assert (r.ok, r.status) == outcome
    if not r.ok:
        # ganesha 4.3 refuses every SETACL.
        assert r.status == 0x10000 + AcceptStat.GARBAGE_ARGS
    # A restore applies it only if the NAS did.
    dest = tmp_path / "restored"
    done = nfsj("restore", "--at", str(at), "--to", str(dest), "--quiet", *shard_args([shard]))
    assert done.returncode == 0, done.stderr.decode()
    expected = aces(AclEntry(type=t, id=i, perm=p) for t, i, p in FILE_ACL) if r.ok else ()
    assert _read_acl(dest / "g2", XATTR_ACCESS) == expected
    assert _read_acl(dest / "g2", XATTR_ACCESS) == _read_acl(nas.export_dir / "g2", XATTR_ACCESS)

    # `nfsj history` shows it, with the ACL as getfacl writes it.
    done = nfsj("history", "g2", "--json", *shard_args([shard]))
    assert done.returncode == 0, done.stderr.decode()
    entries = [json.loads(line) for line in done.stdout.decode().splitlines()]
    setacls = [e for e in entries if e["op"] == "SETACL"]
    assert len(setacls) == 1 and setacls[0]["ok"] == r.ok
    assert setacls[0]["details"] == "user::rw-,user:1234:r--,group::r--,mask::r--,other::r--"
    done = nfsj("history", "g2", *shard_args([shard]))
    assert "SETACL" in done.stdout.decode() and "user:1234:r--" in done.stdout.decode()


# -- a SETACL the NAS applied (hand-made records on a real shard) -------------------------------


def test_a_successful_setacl_is_restored_and_pushed_back(tmp_path):
    shard = ShardProcess(tmp_path / "shard0", 0)
    nas = start_ganesha(tmp_path / "export", tmp_path / "ganesha", nfsacl=True)
    try:
        base = _stamp(100)
        file_acl = [AclEntry(type=t, id=i, perm=p) for t, i, p in FILE_ACL]
        dir_default = [AclEntry(type=t, id=i, perm=p) for t, i, p in DIR_DEFAULT]
        now = time.time_ns()
        records = [
            Record(stamp=base, op=Op.BASELINE_BEGIN, ok=True, baseline_id=base),
            Record(stamp=_stamp(110), op=Op.BASELINE, ok=True, fh=b"R", baseline_id=base,
                   baseline_first=True, attr=Attr(type=2, mode=0o755, mtime_ns=now, atime_ns=now)),
            Record(stamp=_stamp(120), op=Op.BASELINE, ok=True, fh=b"D", dir_fh=b"R", name=b"d",
                   baseline_id=base, baseline_first=True, acl_mask=nfsacl.NFS_ACL | nfsacl.NFS_DFACL,
                   attr=Attr(type=2, mode=0o755, mtime_ns=now, atime_ns=now)),
            Record(stamp=_stamp(130), op=Op.BASELINE, ok=True, fh=b"F", dir_fh=b"R", name=b"f",
                   baseline_id=base, baseline_first=True, data=b"x", acl_mask=nfsacl.NFS_ACL,
                   attr=Attr(type=1, size=1, mode=0o644, mtime_ns=now, atime_ns=now)),
            Record(stamp=_stamp(140), op=Op.BASELINE_END, ok=True, baseline_id=base,
                   baseline_files=1, baseline_bytes=1),
            # The NAS applied these two ...
            Record(stamp=_stamp(150), op=Op.SETACL, ok=True, fh=b"F", acl_mask=nfsacl.NFS_ACL,
                   acl=file_acl, attr=Attr(type=1, size=1, mode=0o644, mtime_ns=now, atime_ns=now,
                                           ctime_ns=1)),
            Record(stamp=_stamp(160), op=Op.SETACL, ok=True, fh=b"D", acl_mask=nfsacl.NFS_DFACL,
                   default_acl=dir_default),
            # ... and refused this one: never applied.
            Record(stamp=_stamp(170), op=Op.SETACL, ok=False, status=0x10004, fh=b"F",
                   acl_mask=nfsacl.NFS_ACL, acl=[AclEntry(type=t, id=i, perm=p) for t, i, p in
                                                  [(1, U, 7), (4, U, 7), (0x20, U, 7)]]),
        ]
        ingest(shard.address, [shipped(0, records, 500)])
        with Shards([shard.address]) as shards, RestoreClient(shards) as client:
            cut = client.cut(Stamp(400, 0, 0))
            dest = tmp_path / "restored"
            summary = client.restore_to_dir(cut, dest)
            assert summary.acls == 2 and not summary.acls_refused, str(summary)
            assert os.getxattr(dest / "f", XATTR_ACCESS) == to_xattr(file_acl)
            assert os.getxattr(dest / "d", XATTR_DEFAULT) == to_xattr(dir_default)
            assert _read_acl(dest / "d", XATTR_ACCESS) == ()
            history = client.history("f", until=Stamp(400, 0, 0))
            assert [(e.op, e.ok, e.details) for e in history if e.op == "SETACL"] == [
                ("SETACL", True, "user::rw-,user:1234:r--,group::r--,mask::r--,other::r--"),
                ("SETACL", False, "user::rwx,group::rwx,other::rwx")]
            [d_setacl] = [e for e in client.history("d", until=Stamp(400, 0, 0)) if e.op == "SETACL"]
            assert d_setacl.details == ("default:user::rwx,default:group::r-x,default:group:77:r-x,"
                                        "default:mask::r-x,default:other::---")

            # Push-back: SETACL through NFSACL; ganesha 4.3 refuses it, and that is
            # reported with a count, never silently.
            with _client(nas.host, nas.nfs_port, nas.mount_port) as nfs:
                result = push_to_nas(client, cut, nfs, into="back")
            assert result.acls + result.acls_not_set == 2, str(result)
            if result.acls_not_set:
                assert "POSIX ACLs NOT set on" in str(result)
                assert any("POSIX ACLs" in w for w in result.warnings)
            else:
                assert _read_acl(nas.export_dir / "back" / "f", XATTR_ACCESS) == aces(file_acl)
            assert (nas.export_dir / "back" / "f").read_bytes() == b"x"
    finally:
        nas.stop()
        shard.stop()


# -- the Linux kernel client's own setfacl/getfacl ----------------------------------------------

KERNEL_SCRIPT = r"""
echo kernel-acl > /mnt/k
getfacl -n /mnt/k && echo getfacl-ok
if setfacl -m u:1234:r /mnt/k; then echo setfacl-exit=0; else echo setfacl-exit=$?; fi
echo acl-script-done
"""


def test_kernel_setfacl_through_the_proxy_is_journaled(kernel_image, tmp_path):
    from kernel_guest import Guest, mount_line
    nas = start_ganesha(tmp_path / "export", tmp_path / "ganesha", nfsacl=True)
    shard = ShardProcess(tmp_path / "shard0", 0)
    proxy = None
    try:
        proxy = ProxyProcess(nas, tmp_path / "log", extra=shard_args([shard.address])).start()
        run_baseline(proxy.log_dir)
        guest = Guest(kernel_image, tmp_path / "guest")
        before = now_bound()
        result = guest.run(KERNEL_SCRIPT, [mount_line(proxy.port, "/mnt")])
        assert result.exit_code == 0 and "acl-script-done" in result.console, result.console[-4000:]
        assert "getfacl-ok" in result.console, result.console[-4000:]
        applied = "setfacl-exit=0" in result.console
        at = now_bound()
        wait_proven([shard.address], at)
        with Shards([shard.address]) as shards:
            records = list(shards.scan(ScanRequest(ops=[Op.SETACL], after=before.to_bytes())))
        assert records, result.console[-4000:]
        # setfacl -m sends the whole new ACL: the named user is in it.
        for r in records:
            assert r.acl_mask & nfsacl.NFS_ACL
            assert (2, 1234, 4) in [(e.type, e.id, e.perm) for e in r.acl]
        assert any(r.ok for r in records) == applied
        if not applied:  # ganesha 4.3: every SETACL is refused, setfacl fails
            assert all(r.status == 0x10000 + AcceptStat.GARBAGE_ARGS for r in records)
        dest = tmp_path / "restored"
        done = nfsj("restore", "--at", str(at), "--to", str(dest), "--quiet",
                    *shard_args([shard.address]))
        assert done.returncode == 0, done.stderr.decode()
        assert _read_acl(dest / "k", XATTR_ACCESS) == _read_acl(nas.export_dir / "k", XATTR_ACCESS)
    finally:
        if proxy is not None:
            proxy.stop()
        shard.stop()
        nas.stop()
