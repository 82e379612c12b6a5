"""Capture: turning an NFSv3 (or NFSACL v3 SETACL) call and the NAS's reply into journal records.

Sans-IO. The relay hands over the decoded call header and the raw body at
call time (`begin`), and the reply header and raw body at reply time
(`complete`); capture returns the `Record`s to journal. Nothing here reads a
socket or a clock: the stamp is taken by the caller when the call arrives.

Which calls matter is the programs table's say (`nfsproxy.wire.programs`):
`mutating` calls are journaled, `binder` calls' replies teach us
`fh -> (dir fh, name)`.
NFSACL's SETACL (program 100227, on the NFS port) is journaled as a change
of the object's ACLs: op SETACL, `fh` the object, the ACLs it set.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Callable

from logstore.pb.journal_pb2 import AclEntry
from logstore.record import Attr, Op, Record, SetAttr

from nfsproxy.wire import nfs3, nfsacl
from nfsproxy.wire.nfs3 import NFS_PROGRAM, CreateMode, Fattr3, Ftype3, Nfsstat3, Proc3, Sattr3, TimeHow
from nfsproxy.wire.programs import lookup
from nfsproxy.wire.rpc import RpcCall, RpcReply, decode_body

__all__ = ["Capture", "Pending", "BindingCache", "fattr_to_attr", "set_acl_fields", "ACL_PARTS",
           "RPC_FAILURE_BASE"]

#: Record.status for replies the RPC layer refused: base + accept_stat (or + 0x100 + reject_stat).
RPC_FAILURE_BASE = 0x10000



@dataclasses.dataclass(slots=True)
class Pending:
    """A call we are waiting on: what the reply must complete."""

    proc: Proc3 | nfsacl.AclProc3
    args: object
    record: Record | None  # None for binders: they journal only what they teach
    data: memoryview | None = None
    prog: int = NFS_PROGRAM


class BindingCache:
    """Which name each file handle was last seen under, bounded (LRU).

    Used to journal a BIND only when a binding is new or changed, so that a
    client listing the same directory all day adds nothing to the LOG.
    Both directions (handle -> name, name -> handle) hold at most `capacity`
    bindings each: a workload that makes and renames files forever (write a
    temporary name, rename it over the real one) must not grow either.
    """

    def __init__(self, capacity: int = 1 << 20):
        self.capacity = capacity
        self._names: OrderedDict[bytes, tuple[bytes, bytes]] = OrderedDict()
        self._handles: OrderedDict[tuple[bytes, bytes], bytes] = OrderedDict()

    def learn(self, fh: bytes, dir_fh: bytes, name: bytes) -> bool:
        """Remember fh's name; True when it is news worth journaling."""
        key = (dir_fh, name)
        replaced = self._handles.get(key)
        if replaced is not None and replaced != fh and self._names.get(replaced) == key:
            del self._names[replaced]  # that handle lost this name: seeing it here again is news
        self._handles[key] = fh
        self._handles.move_to_end(key)
        if len(self._handles) > self.capacity:
            self._evict(*self._handles.popitem(last=False))
        if self._names.get(fh) == key:
            self._names.move_to_end(fh)
            return False
        self._names[fh] = key
        if len(self._names) > self.capacity:
            old_fh, old_key = self._names.popitem(last=False)
            if self._handles.get(old_key) == old_fh:
                del self._handles[old_key]
        return True

    def _evict(self, key: tuple[bytes, bytes], fh: bytes) -> None:
        if self._names.get(fh) == key:
            del self._names[fh]

    def unbind(self, dir_fh: bytes, name: bytes) -> None:
        """The name is gone (removed, or renamed away): forget what it named."""
        fh = self._handles.pop((dir_fh, name), None)
        if fh is not None:
            self._evict((dir_fh, name), fh)

    def handle_of(self, dir_fh: bytes, name: bytes) -> bytes | None:
        """The handle last seen under `name` in `dir_fh`, if any."""
        return self._handles.get((dir_fh, name))

    def __len__(self) -> int:
        """How many handles have a known name."""
        return len(self._names)

    @property
    def names_known(self) -> int:
        """How many names have a known handle (at most `capacity`, like `len()`)."""
        return len(self._handles)


class Capture:
    """Builds records from NFSv3 calls and replies; one per proxy."""

    def __init__(self, bindings: BindingCache | None = None):
        self.bindings = bindings if bindings is not None else BindingCache()  # an empty cache is falsy

    def begin(self, call: RpcCall, body: memoryview, stamp: bytes, client: str) -> Pending | None:
        """Decode a call worth watching. Raises RpcDecodeError for bad arguments.

        Returns None for calls that neither mutate nor teach names.
        """
        procedure = lookup(call.prog, call.vers, call.proc)
        if procedure is None or not (procedure.mutating or procedure.binder):
            return None
        if call.prog == nfsacl.NFSACL_PROGRAM:
            return self._begin_setacl(call, body, stamp, client)
        proc = Proc3(call.proc)
        args = decode_body(procedure.args, body)
        if procedure.binder:
            return Pending(proc, args, None)
        record = _new_record(call, int(proc), stamp, client)
        _CALLS[proc](record, args)
        if proc in (Proc3.REMOVE, Proc3.RMDIR, Proc3.RENAME):
            # Lets one object's history (per-file index) include its renames and removal.
            named = self.bindings.handle_of(record.dir_fh, record.name)
            if named is not None:
                record.object_fh = named
        data = args.data if proc is Proc3.WRITE else None
        return Pending(proc, args, record, data)

    def _begin_setacl(self, call: RpcCall, body: memoryview, stamp: bytes, client: str) -> Pending:
        proc = nfsacl.AclProc3.SETACL
        args = decode_body(lookup(call.prog, call.vers, proc).args, body)
        record = _new_record(call, Op.SETACL, stamp, client)
        record.fh = args.fh
        set_acl_fields(record, args.mask, args.acl.entries, args.default_acl.entries)
        return Pending(proc, args, record, None, nfsacl.NFSACL_PROGRAM)

    def complete(self, pending: Pending, reply: RpcReply, body: memoryview,
                 stamp: Callable[[], bytes]) -> list[tuple[Record, memoryview | None]]:
        """Finish a pending call with its reply: the records to journal, in order.

        `stamp` is called once per BIND record (bindings are learned when the
        reply arrives, so they are stamped then).
        """
        if not reply.success:
            if pending.record is None:
                return []
            pending.record.ok = False
            pending.record.status = _rpc_failure(reply)
            return [(pending.record, None)]
        res = decode_body(lookup(pending.prog, 3, pending.proc).res, body)
        if pending.record is None:
            return [(r, None) for r in self._bindings_from(pending, res, stamp)]
        record = pending.record
        record.status = int(res.status)
        record.ok = res.status is Nfsstat3.NFS3_OK
        if pending.prog == nfsacl.NFSACL_PROGRAM:
            after = res.body.attr if record.ok else res.body  # post-op attributes either way
            if after is not None:
                fattr_to_attr(record.attr, after)
        else:
            _REPLIES[pending.proc](record, res.body, record.ok)
        out = [(record, pending.data if record.ok else None)]
        self._learn_from_mutation(record)
        return out

    # -- names --------------------------------------------------------------

    def _bindings_from(self, pending: Pending, res, stamp: Callable[[], bytes]) -> list[Record]:
        if res.status is not Nfsstat3.NFS3_OK:
            return []
        if pending.proc is Proc3.LOOKUP:
            what = pending.args.what
            found = [(res.body.object, what.dir, what.name, res.body.obj_attributes)]
        else:
            found = [(e.name_handle, pending.args.dir, e.name, e.name_attributes)
                     for e in res.body.reply.entries
                     if e.name_handle is not None and e.name not in (b".", b"..")]
        records = []
        for fh, dir_fh, name, attrs in found:
            if self.bindings.learn(fh, dir_fh, name):
                record = Record(stamp=stamp(), op=Op.BIND, ok=True, fh=fh, dir_fh=dir_fh, name=name)
                if attrs is not None:
                    fattr_to_attr(record.attr, attrs)
                records.append(record)
        return records

    def _learn_from_mutation(self, record: Record) -> None:
        # The mutation record itself carries the binding; only keep the cache
        # current so a later LOOKUP of the same name is not journaled again.
        if not record.ok:
            return
        if record.op in (Op.REMOVE, Op.RMDIR, Op.RENAME):
            self.bindings.unbind(record.dir_fh, record.name)
        if record.op in (Op.CREATE, Op.MKDIR, Op.SYMLINK, Op.MKNOD) and record.fh:
            self.bindings.learn(record.fh, record.dir_fh, record.name)
        elif record.op == Op.LINK:
            self.bindings.learn(record.fh, record.to_dir_fh, record.to_name)
        elif record.op == Op.RENAME and record.object_fh:
            self.bindings.learn(record.object_fh, record.to_dir_fh, record.to_name)


def _new_record(call: RpcCall, op: int, stamp: bytes, client: str) -> Record:
    record = Record(stamp=stamp, op=op, client=client, xid=call.xid)
    if call.auth_sys is not None:
        a = call.auth_sys
        record.uid, record.gid, record.machine_name = a.uid, a.gid, a.machine_name
        record.gids.extend(a.gids)
    return record


#: The ACL parts a record can hold (NFSACL mask bits); the counts bits say nothing of their own.
ACL_PARTS = nfsacl.NFS_ACL | nfsacl.NFS_DFACL


def set_acl_fields(record: Record, mask: int, acl, default_acl) -> None:
    """Put NFSACL ACLs (`Aclent`s) into a record: the parts `mask` names."""
    record.acl_mask = mask & ACL_PARTS
    if mask & nfsacl.NFS_ACL:
        record.acl.extend(AclEntry(type=e.type, id=e.id, perm=e.perm) for e in acl)
    if mask & nfsacl.NFS_DFACL:
        # Linux marks default entries with NFS_ACL_DEFAULT on the wire; the list says it already.
        record.default_acl.extend(AclEntry(type=e.type & ~nfsacl.NFS_ACL_DEFAULT, id=e.id, perm=e.perm)
                                  for e in default_acl)


def _rpc_failure(reply: RpcReply) -> int:
    if reply.accept_stat is not None:
        return RPC_FAILURE_BASE + int(reply.accept_stat)
    return RPC_FAILURE_BASE + 0x100 + int(reply.reject_stat)


# -- argument capture ---------------------------------------------------------


def _ns(t: nfs3.Nfstime3) -> int:
    return t.seconds * 1_000_000_000 + t.nseconds


def fattr_to_attr(out: Attr, a: Fattr3) -> None:
    """Copy NFS attributes into a record's Attr (times in ns)."""
    out.type = int(a.type)
    out.mode, out.nlink, out.uid, out.gid = a.mode, a.nlink, a.uid, a.gid
    out.size, out.used = a.size, a.used
    out.rdev_major, out.rdev_minor = a.rdev.specdata1, a.rdev.specdata2
    out.fsid, out.fileid = a.fsid, a.fileid
    out.atime_ns, out.mtime_ns, out.ctime_ns = _ns(a.atime), _ns(a.mtime), _ns(a.ctime)


def _sattr(out: SetAttr, s: Sattr3) -> None:
    for name in ("mode", "uid", "gid", "size"):
        value = getattr(s, name)
        if value is not None:
            setattr(out, name, value)
    if s.atime.set_it is TimeHow.SET_TO_CLIENT_TIME:
        out.atime_ns = _ns(s.atime.atime)
    out.atime_server = s.atime.set_it is TimeHow.SET_TO_SERVER_TIME
    if s.mtime.set_it is TimeHow.SET_TO_CLIENT_TIME:
        out.mtime_ns = _ns(s.mtime.mtime)
    out.mtime_server = s.mtime.set_it is TimeHow.SET_TO_SERVER_TIME


def _where(r: Record, d: nfs3.Diropargs3) -> None:
    r.dir_fh, r.name = d.dir, d.name


def _call_setattr(r: Record, a: nfs3.SETATTR3args) -> None:
    r.fh = a.object
    _sattr(r.set, a.new_attributes)
    if a.guard is not None:
        r.guard_ctime_ns = _ns(a.guard)


def _call_write(r: Record, a: nfs3.WRITE3args) -> None:
    r.fh, r.offset, r.count, r.stable = a.file, a.offset, a.count, int(a.stable)


def _call_create(r: Record, a: nfs3.CREATE3args) -> None:
    _where(r, a.where)
    r.create_mode = int(a.how.mode)
    if a.how.mode is CreateMode.EXCLUSIVE:
        r.verifier = a.how.body
    else:
        _sattr(r.set, a.how.body)


def _call_mkdir(r: Record, a: nfs3.MKDIR3args) -> None:
    _where(r, a.where)
    _sattr(r.set, a.attributes)


def _call_symlink(r: Record, a: nfs3.SYMLINK3args) -> None:
    _where(r, a.where)
    _sattr(r.set, a.symlink.symlink_attributes)
    r.symlink_target = a.symlink.symlink_data


def _call_mknod(r: Record, a: nfs3.MKNOD3args) -> None:
    _where(r, a.where)
    r.mknod_type = int(a.what.type)
    if a.what.type in (Ftype3.NF3CHR, Ftype3.NF3BLK):
        _sattr(r.set, a.what.body.dev_attributes)
        r.rdev_major, r.rdev_minor = a.what.body.spec.specdata1, a.what.body.spec.specdata2
    elif a.what.type in (Ftype3.NF3SOCK, Ftype3.NF3FIFO):
        _sattr(r.set, a.what.body)


def _call_remove(r: Record, a) -> None:
    _where(r, a.object)


def _call_rename(r: Record, a: nfs3.RENAME3args) -> None:
    _where(r, a.from_)
    r.to_dir_fh, r.to_name = a.to.dir, a.to.name


def _call_link(r: Record, a: nfs3.LINK3args) -> None:
    r.fh = a.file
    r.to_dir_fh, r.to_name = a.link.dir, a.link.name


def _call_commit(r: Record, a: nfs3.COMMIT3args) -> None:
    r.fh, r.offset, r.count = a.file, a.offset, a.count


_CALLS: dict[Proc3, Callable[[Record, object], None]] = {
    Proc3.SETATTR: _call_setattr, Proc3.WRITE: _call_write, Proc3.CREATE: _call_create,
    Proc3.MKDIR: _call_mkdir, Proc3.SYMLINK: _call_symlink, Proc3.MKNOD: _call_mknod,
    Proc3.REMOVE: _call_remove, Proc3.RMDIR: _call_remove, Proc3.RENAME: _call_rename,
    Proc3.LINK: _call_link, Proc3.COMMIT: _call_commit,
}


# -- reply capture --------------------------------------------------------------
# Each takes the result body (resok when ok, resfail otherwise): the post-op
# attributes are what lets a restore set sizes and times exactly.


def _wcc_after(out: Attr, wcc: nfs3.WccData) -> None:
    if wcc.after is not None:
        fattr_to_attr(out, wcc.after)


def _reply_obj_wcc(r: Record, body, ok: bool) -> None:
    _wcc_after(r.attr, body.obj_wcc)


def _reply_write(r: Record, body, ok: bool) -> None:
    _wcc_after(r.attr, body.file_wcc)
    if ok:
        r.reply_count = body.count


def _reply_created(r: Record, body, ok: bool) -> None:
    _wcc_after(r.dir_attr, body.dir_wcc)
    if ok:
        if body.obj is not None:
            r.fh = body.obj
        if body.obj_attributes is not None:
            fattr_to_attr(r.attr, body.obj_attributes)


def _reply_dir_wcc(r: Record, body, ok: bool) -> None:
    _wcc_after(r.dir_attr, body.dir_wcc)


def _reply_rename(r: Record, body, ok: bool) -> None:
    _wcc_after(r.dir_attr, body.fromdir_wcc)
    _wcc_after(r.to_dir_attr, body.todir_wcc)


def _reply_link(r: Record, body, ok: bool) -> None:
    if body.file_attributes is not None:
        fattr_to_attr(r.attr, body.file_attributes)
    _wcc_after(r.to_dir_attr, body.linkdir_wcc)


def _reply_commit(r: Record, body, ok: bool) -> None:
    _wcc_after(r.attr, body.file_wcc)


_REPLIES: dict[Proc3, Callable[[Record, object, bool], None]] = {
    Proc3.SETATTR: _reply_obj_wcc, Proc3.WRITE: _reply_write, Proc3.CREATE: _reply_created,
    Proc3.MKDIR: _reply_created, Proc3.SYMLINK: _reply_created, Proc3.MKNOD: _reply_created,
    Proc3.REMOVE: _reply_dir_wcc, Proc3.RMDIR: _reply_dir_wcc, Proc3.RENAME: _reply_rename,
    Proc3.LINK: _reply_link, Proc3.COMMIT: _reply_commit,
}
