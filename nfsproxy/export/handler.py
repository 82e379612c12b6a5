"""The read-only NFS export of a moment in the past, sans-IO.

`nfsj export --at T` serves the file tree as it was at a cut (README.md,
"The guarantee") over NFSv3 and MOUNT v3,
with a portmapper GETPORT answer on the same port, like the proxy. The tree
comes from the Restore API (`RestoreClient.tree(cut)`); file content is read
through `RestoreClient.read(cut, fh, offset, count)` when a client READs it.
Nothing is written out first.

This module is the protocol: `ExportHandler.handle(call, body)` takes one
decoded call header and its undecoded body and returns the encoded reply
message (without record marking). No socket, loop or clock; the one thing it
calls out to is the injected content reader, for READ. `nfsproxy.export.server` is
the thin asyncio shell around it.

Semantics, in the order a client meets them:

* RPC: version 2 only (else RPC_MISMATCH); AUTH_NONE and AUTH_SYS (else
  AUTH_ERROR/AUTH_BADCRED); programs NFS v3, MOUNT v3 and portmapper v2
  (another version: PROG_MISMATCH with the one we serve; another program:
  PROG_UNAVAIL; an unknown procedure: PROC_UNAVAIL). Arguments that do not
  decode raise `RpcDecodeError`: the shell closes that client.
* MOUNT: MNT of any path answers the root handle, or the handle of the
  directory the path names in the tree (with or without the NAS's export
  name in front: "/export/a/b" and "/a/b" both find "a/b"). EXPORT lists
  "/". DUMP is empty, UMNT and UMNTALL are accepted.
* NFS: handles are the NAS's own (a tree is keyed by them), so a handle a
  client got from the NAS works here for the same object. A handle the tree
  does not hold gets NFS3ERR_STALE. Attributes are the NAS's as of the cut
  (fsid and fileid included); link counts are the tree's. ACCESS grants
  read, lookup and execute (execute of a regular file only when a mode bit
  allows it), never modify, extend or delete. Every mutating procedure gets
  NFS3ERR_ROFS with the object's (unchanged) attributes as wcc data.
* READDIR/READDIRPLUS list ".", ".." and then the names in sorted order;
  the cookie of an entry is its index in that list plus one, and the cookie
  verifier is derived from the cut, so cookies stay valid for the life of
  the export. Replies honour `count` (READDIR) and `dircount`/`maxcount`
  (READDIRPLUS) so that large directories come in pages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import stat
from typing import Any, Callable, Final, Iterable

from nfsproxy.wire import nfs3
from nfsproxy.wire.mount import MOUNT_PROGRAM, MOUNT_V3, Exportnode, Mountres3, Mountres3Ok, Mountstat3
from nfsproxy.wire.nfs3 import (ACCESS3_EXECUTE, ACCESS3_LOOKUP, ACCESS3_READ, FSF3_HOMOGENEOUS, FSF3_LINK,
                   FSF3_SYMLINK, NFS_PROGRAM, NFS_V3, ACCESS3res, ACCESS3resfail, ACCESS3resok,
                   COMMIT3res, COMMIT3resfail, CREATE3res, CREATE3resfail, Dirlist3,
                   Dirlistplus3, Entry3, Entryplus3, FSINFO3res, FSINFO3resfail, FSINFO3resok,
                   FSSTAT3res, FSSTAT3resfail, FSSTAT3resok, Fattr3, Ftype3, GETATTR3res,
                   GETATTR3resok, LINK3res, LINK3resfail, LOOKUP3res, LOOKUP3resfail,
                   LOOKUP3resok, MKDIR3res, MKDIR3resfail, MKNOD3res, MKNOD3resfail, Nfsstat3,
                   Nfstime3, PATHCONF3res, PATHCONF3resfail, PATHCONF3resok, Proc3, READ3res,
                   READ3resfail, READ3resok, READDIR3res, READDIR3resfail, READDIR3resok,
                   READDIRPLUS3res, READDIRPLUS3resfail, READDIRPLUS3resok, READLINK3res,
                   READLINK3resfail, READLINK3resok, REMOVE3res, REMOVE3resfail, RENAME3res,
                   RENAME3resfail, RMDIR3res, RMDIR3resfail, SETATTR3res, SETATTR3resfail,
                   SYMLINK3res, SYMLINK3resfail, Specdata3, WRITE3res, WRITE3resfail, WccAttr,
                   WccData)
from nfsproxy.wire import portmap
from nfsproxy.wire.programs import PROGRAMS
from nfsproxy.wire.portmap import IPPROTO_TCP, PMAP_PROG, PMAP_VERS, Mapping
from nfsproxy.wire.rpc import (RPC_VERSION, AcceptStat, AuthFlavor, AuthStat, RejectStat,
                  RpcCall, RpcReply, decode_body, encode_reply, refusal)
from nfsproxy.wire.xdr import Codec

__all__ = ["ExportHandler", "ExportObject", "ContentReader", "index_tree", "cookieverf_for",
           "RTMAX_BYTES", "EXPORT_PATH"]

logger = logging.getLogger(__name__)

ContentReader = Callable[[bytes, int, int], bytes]
"""`read(fh, offset, count) -> bytes`: up to `count` bytes of the file's content at the cut."""


def _leading_handle(body: memoryview | bytes) -> bytes:
    """The nfs_fh3 that starts a call's arguments (RFC 1813: opaque<64>), or
    b"" when the body is too short to hold it (``handle`` then refuses it)."""
    if len(body) < 4:
        return b""
    length = int.from_bytes(body[:4], "big")
    return bytes(body[4:4 + length]) if length <= 64 and len(body) >= 4 + length else b""


#: The largest READ we answer, and what FSINFO advertises (the Linux client's largest rsize).
RTMAX_BYTES: Final = 1 << 20
#: What FSINFO advertises for writes: a read-only server still gives a sane size.
WTMAX_BYTES: Final = 1 << 20
DTPREF_BYTES: Final = 64 << 10
#: The one path EXPORT lists.
EXPORT_PATH: Final = "/"
NAME_MAX: Final = 255
LINK_MAX: Final = 0xFFFF_FFFF
#: FSSTAT invarsec: the tree of a cut never changes.
INVARSEC: Final = 0xFFFF_FFFF

_U32_MAX: Final = 0xFFFF_FFFF
_READ_ONLY_GRANT: Final = ACCESS3_READ | ACCESS3_LOOKUP | ACCESS3_EXECUTE
_ANY_EXEC: Final = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
_AUTH_FLAVORS: Final = (int(AuthFlavor.AUTH_SYS), int(AuthFlavor.AUTH_NONE))

# Encoded sizes used to fill directory replies up to the client's count.
_FATTR3_BYTES: Final = 84
_POST_OP_ATTR_BYTES: Final = 4 + _FATTR3_BYTES
# status, dir_attributes, cookieverf; then "no more entries" and eof.
_DIR_REPLY_OVERHEAD: Final = 4 + _POST_OP_ATTR_BYTES + 8 + 4 + 4


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def _entry_bytes(name_len: int) -> int:
    """An entry3 on the wire: value-follows, fileid, name, cookie."""
    return 4 + 8 + 4 + _pad4(name_len) + 8


def _entryplus_bytes(name_len: int, fh_len: int) -> int:
    """An entryplus3: an entry3 plus post_op_attr and post_op_fh3."""
    return _entry_bytes(name_len) + _POST_OP_ATTR_BYTES + 4 + 4 + _pad4(fh_len)


def _time(ns: int) -> Nfstime3:
    """nfstime3 from signed ns since the epoch, clamped to what nfstime3 can say."""
    if ns <= 0:
        return Nfstime3(0, 0)
    seconds, nseconds = divmod(ns, 1_000_000_000)
    if seconds > _U32_MAX:
        return Nfstime3(_U32_MAX, 999_999_999)
    return Nfstime3(seconds, nseconds)


def cookieverf_for(cut_id: bytes) -> bytes:
    """The READDIR cookie verifier of a cut: stable for the cut, different between cuts."""
    return hashlib.blake2b(cut_id, digest_size=8, person=b"nfsj-export").digest()


def _fileid_for(fh: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(fh, digest_size=8).digest(), "big") or 1


# --------------------------------------------------------------------------
# The objects served


@dataclasses.dataclass(frozen=True, slots=True)
class ExportObject:
    """One object of the served tree, with everything a reply needs precomputed.

    `entries` (directories) maps names to handles in the order READDIR lists
    them; `parent` is the handle ".." resolves to (the root is its own).
    """

    fh: bytes
    attr: Fattr3
    parent: bytes
    target: bytes | None = None
    entries: dict[bytes, bytes] = dataclasses.field(default_factory=dict)
    names: tuple[bytes, ...] = ()

    @property
    def type(self) -> Ftype3:
        return self.attr.type

    @property
    def wcc_attr(self) -> WccAttr:
        return WccAttr(self.attr.size, self.attr.mtime, self.attr.ctime)


_DEFAULT_MODES: Final = {Ftype3.NF3DIR: 0o755, Ftype3.NF3LNK: 0o777}


def _fattr3(kind: Ftype3, attr: Any, fh: bytes, nlink: int, size: int | None,
            rdev: tuple[int, int]) -> Fattr3:
    """fattr3 from a journal `Attr` (protobuf) as of the cut; None gives plain defaults."""
    if attr is None:  # an object the journal named but never described
        size = size or 0
        return Fattr3(kind, _DEFAULT_MODES.get(kind, 0o644), nlink, 0, 0, size, size,
                      Specdata3(*rdev), 0, _fileid_for(fh), _time(0), _time(0), _time(0))
    if size is None:
        size = attr.size
    used = attr.used if attr.used else size
    fileid = attr.fileid or _fileid_for(fh)
    return Fattr3(kind, attr.mode & 0o7777, min(nlink, _U32_MAX), attr.uid, attr.gid, size, used,
                  Specdata3(*rdev), attr.fsid, fileid,
                  _time(attr.atime_ns), _time(attr.mtime_ns), _time(attr.ctime_ns))


def _kind(node: Any) -> Ftype3 | None:
    try:
        return Ftype3(node.type)
    except ValueError:
        return None  # type not known: the journal saw only the handle


def index_tree(tree: Any) -> tuple[bytes, dict[bytes, ExportObject]]:
    """(root handle, handle -> ExportObject) for every object reachable from the root.

    This is the one place that reads a `recoveryd.tree.Tree`. Names whose
    object has no known type are left out (nothing could be served for
    them). Link counts are those of the served tree: one per name for a
    non-directory, 2 plus one per subdirectory for a directory.
    """
    root = tree.root
    if root is None or _kind(tree.nodes[root]) != Ftype3.NF3DIR:
        raise ValueError("the tree has no root directory (no baseline before the cut?)")
    nodes = tree.nodes
    parents: dict[bytes, bytes] = {root: root}
    listed: dict[bytes, tuple[bytes, ...]] = {}
    links: dict[bytes, int] = {}
    subdirs: dict[bytes, int] = {}
    order = [root]
    i = 0
    while i < len(order):  # breadth first: parents before children
        fh = order[i]
        i += 1
        node = nodes[fh]
        if _kind(node) != Ftype3.NF3DIR:
            continue
        names = []
        for name in sorted(node.entries):
            child = node.entries[name]
            kind = _kind(nodes[child]) if child in nodes else None
            if kind is None:
                continue
            if kind == Ftype3.NF3DIR:
                if child in parents:
                    continue  # a directory has one name; a second would make a cycle
                subdirs[fh] = subdirs.get(fh, 0) + 1
            names.append(name)
            links[child] = links.get(child, 0) + 1
            if child not in parents:
                parents[child] = fh
                order.append(child)
        listed[fh] = tuple(names)
    out: dict[bytes, ExportObject] = {}
    for fh in order:
        node = nodes[fh]
        kind = _kind(node)
        if kind == Ftype3.NF3DIR:
            names = listed[fh]
            attr = _fattr3(kind, node.attr, fh, 2 + subdirs.get(fh, 0), None, (0, 0))
            out[fh] = ExportObject(fh, attr, parents[fh], None,
                                   {n: node.entries[n] for n in names}, names)
        elif kind == Ftype3.NF3LNK:
            target = node.symlink_target
            out[fh] = ExportObject(fh, _fattr3(kind, node.attr, fh, links[fh], len(target), (0, 0)),
                                   parents[fh], target)
        else:
            rdev = node.rdev if kind in (Ftype3.NF3CHR, Ftype3.NF3BLK) else (0, 0)
            out[fh] = ExportObject(fh, _fattr3(kind, node.attr, fh, links[fh], None, rdev),
                                   parents[fh])
    return root, out


# --------------------------------------------------------------------------
# The handler


def _reply(xid: int, codec: Codec, value: Any) -> bytes:
    p = encode_reply(RpcReply(xid))
    codec.pack(p, value)
    return p.getvalue()


_NO_WCC: Final = WccData(None, None)


class ExportHandler:
    """Answers NFSv3, MOUNT v3 and portmapper calls from one tree, read-only.

    `read` supplies file content; `cut_id` (the cut's stamp bytes) seeds the
    READDIR cookie verifier; `port` is the TCP port GETPORT answers with (set
    it once the shell has bound its socket). Safe to share between threads:
    nothing changes after construction except `port`.
    """

    def __init__(self, tree: Any, read: ContentReader, *, cut_id: bytes = b"", port: int = 0,
                 ready: Callable[[bytes], bool] | None = None):
        self.root, self.objects = index_tree(tree)
        self.read = read
        self.ready = ready
        self.port = port
        self.cookieverf = cookieverf_for(cut_id)
        self._fs_bytes = sum(o.attr.used for o in self.objects.values())
        self._dispatch: dict[tuple[int, int, int], tuple[Codec, Codec, Callable[[Any], Any]]] = {}
        for key, procedure in PROGRAMS.items():
            if key[:2] == (NFS_PROGRAM, NFS_V3):
                method = (self._nfs_rofs(Proc3(procedure.proc)) if procedure.mutating
                          else getattr(self, f"_nfs_{procedure.name.lower()}"))
            elif key[:2] == (MOUNT_PROGRAM, MOUNT_V3):
                method = getattr(self, f"_mount_{procedure.name.lower()}")
            else:
                continue
            self._dispatch[key] = (procedure.args, procedure.res, method)

    # -- entry points ----------------------------------------------------------

    def blocking(self, call: RpcCall, body: memoryview | bytes) -> bool:
        """True for calls whose answer may wait for file content: READs of a
        file that ``ready(handle)`` (given to the constructor) does not say is
        at hand. The shell runs those off its loop; a READ of a file at hand
        is a read of a local file, answered at once (a thread hop would cost
        more than the read)."""
        if not (call.prog == NFS_PROGRAM and call.vers == NFS_V3 and call.proc == Proc3.READ):
            return False
        if self.ready is None:
            return True
        obj = self.objects.get(_leading_handle(body))
        return obj is not None and obj.type == Ftype3.NF3REG and not self.ready(obj.fh)

    def handle(self, call: RpcCall, body: memoryview | bytes) -> bytes:
        """The encoded reply message to `call`. Raises RpcDecodeError for bad arguments."""
        xid = call.xid
        if call.rpcvers != RPC_VERSION:
            return refusal(xid, RejectStat.RPC_MISMATCH)
        if call.cred.flavor not in _AUTH_FLAVORS:
            return refusal(xid, AuthStat.AUTH_BADCRED)
        if call.prog == PMAP_PROG:
            if call.vers != PMAP_VERS:
                return refusal(xid, AcceptStat.PROG_MISMATCH, (PMAP_VERS, PMAP_VERS))
            return portmap.answer(call, body, self.mappings())
        served = {NFS_PROGRAM: NFS_V3, MOUNT_PROGRAM: MOUNT_V3}.get(call.prog)
        if served is None:
            return refusal(xid, AcceptStat.PROG_UNAVAIL)
        if call.vers != served:
            return refusal(xid, AcceptStat.PROG_MISMATCH, (served, served))
        entry = self._dispatch.get((call.prog, call.vers, call.proc))
        if entry is None:
            return refusal(xid, AcceptStat.PROC_UNAVAIL)
        args_codec, res_codec, method = entry
        args = decode_body(args_codec, body)
        return _reply(xid, res_codec, method(args))

    # -- portmapper ------------------------------------------------------------

    def mappings(self) -> tuple[Mapping, ...]:
        port = self.port
        return (Mapping(PMAP_PROG, PMAP_VERS, IPPROTO_TCP, port),
                Mapping(NFS_PROGRAM, NFS_V3, IPPROTO_TCP, port),
                Mapping(MOUNT_PROGRAM, MOUNT_V3, IPPROTO_TCP, port))

    # -- MOUNT v3 -----------------------------------------------------------------

    def _mount_null(self, _: None) -> None:
        return None

    def mount_handle(self, path: bytes | str) -> bytes:
        """The handle MNT answers for `path`: the directory it names, else the root.

        The path is tried whole and then without leading components, so the
        NAS's export name in front ("/export/a") is optional.
        """
        if isinstance(path, str):
            path = path.encode("utf-8", "surrogateescape")
        parts = [p for p in path.split(b"/") if p not in (b"", b".")]
        for start in range(len(parts)):
            fh = self._walk(parts[start:])
            if fh is not None and self.objects[fh].type == Ftype3.NF3DIR:
                return fh
        return self.root

    def _walk(self, parts: Iterable[bytes]) -> bytes | None:
        fh = self.root
        for name in parts:
            obj = self.objects[fh]
            if obj.type != Ftype3.NF3DIR:
                return None
            fh = obj.parent if name == b".." else obj.entries.get(name)
            if fh is None:
                return None
        return fh

    def _mount_mnt(self, path: bytes) -> Mountres3:
        return Mountres3(Mountstat3.MNT3_OK, Mountres3Ok(self.mount_handle(path), _AUTH_FLAVORS))

    def _mount_dump(self, _: None) -> tuple:
        return ()  # we keep no mount list: it is advisory (RFC 1813 appendix I)

    def _mount_umnt(self, _: bytes) -> None:
        return None

    def _mount_umntall(self, _: None) -> None:
        return None

    def _mount_export(self, _: None) -> tuple[Exportnode, ...]:
        return (Exportnode(EXPORT_PATH, ()),)

    # -- NFSv3: reading -------------------------------------------------------------

    def _nfs_null(self, _: None) -> None:
        return None

    def _nfs_getattr(self, a: nfs3.GETATTR3args) -> GETATTR3res:
        obj = self.objects.get(a.object)
        if obj is None:
            return GETATTR3res(Nfsstat3.NFS3ERR_STALE, None)
        return GETATTR3res(Nfsstat3.NFS3_OK, GETATTR3resok(obj.attr))

    def _nfs_lookup(self, a: nfs3.LOOKUP3args) -> LOOKUP3res:
        d = self.objects.get(a.what.dir)
        if d is None:
            return LOOKUP3res(Nfsstat3.NFS3ERR_STALE, LOOKUP3resfail(None))
        if d.type != Ftype3.NF3DIR:
            return LOOKUP3res(Nfsstat3.NFS3ERR_NOTDIR, LOOKUP3resfail(d.attr))
        name = a.what.name
        if len(name) > NAME_MAX:
            return LOOKUP3res(Nfsstat3.NFS3ERR_NAMETOOLONG, LOOKUP3resfail(d.attr))
        if name == b".":
            fh = d.fh
        elif name == b"..":
            fh = d.parent
        else:
            fh = d.entries.get(name)
        if fh is None:
            return LOOKUP3res(Nfsstat3.NFS3ERR_NOENT, LOOKUP3resfail(d.attr))
        return LOOKUP3res(Nfsstat3.NFS3_OK, LOOKUP3resok(fh, self.objects[fh].attr, d.attr))

    def _nfs_access(self, a: nfs3.ACCESS3args) -> ACCESS3res:
        obj = self.objects.get(a.object)
        if obj is None:
            return ACCESS3res(Nfsstat3.NFS3ERR_STALE, ACCESS3resfail(None))
        grant = _READ_ONLY_GRANT
        if obj.type != Ftype3.NF3DIR and not obj.attr.mode & _ANY_EXEC:
            grant &= ~ACCESS3_EXECUTE
        return ACCESS3res(Nfsstat3.NFS3_OK, ACCESS3resok(obj.attr, a.access & grant))

    def _nfs_readlink(self, a: nfs3.READLINK3args) -> READLINK3res:
        obj = self.objects.get(a.symlink)
        if obj is None:
            return READLINK3res(Nfsstat3.NFS3ERR_STALE, READLINK3resfail(None))
        if obj.type != Ftype3.NF3LNK:
            return READLINK3res(Nfsstat3.NFS3ERR_INVAL, READLINK3resfail(obj.attr))
        return READLINK3res(Nfsstat3.NFS3_OK, READLINK3resok(obj.attr, obj.target))

    def _nfs_read(self, a: nfs3.READ3args) -> READ3res:
        obj = self.objects.get(a.file)
        if obj is None:
            return READ3res(Nfsstat3.NFS3ERR_STALE, READ3resfail(None))
        if obj.type == Ftype3.NF3DIR:
            return READ3res(Nfsstat3.NFS3ERR_ISDIR, READ3resfail(obj.attr))
        if obj.type != Ftype3.NF3REG:
            return READ3res(Nfsstat3.NFS3ERR_INVAL, READ3resfail(obj.attr))
        size = obj.attr.size
        want = min(a.count, RTMAX_BYTES, max(0, size - a.offset))
        data = b""
        if want:
            try:
                data = self.read(obj.fh, a.offset, want)
            except Exception:
                logger.exception("reading %d bytes at %d of %s through the Restore API failed",
                                 want, a.offset, obj.fh.hex())
                return READ3res(Nfsstat3.NFS3ERR_IO, READ3resfail(obj.attr))
            data = data[:want]
        eof = a.offset + len(data) >= size or len(data) < want
        return READ3res(Nfsstat3.NFS3_OK, READ3resok(obj.attr, len(data), eof, data))

    @staticmethod
    def _entry(d: ExportObject, i: int) -> tuple[bytes, bytes]:
        """Entry ``i`` of ``d``'s listing (``.``, ``..``, then its names): a
        page of a huge directory costs its own entries, not the directory's."""
        if i >= 2:
            name = d.names[i - 2]
            return name, d.entries[name]
        return (b".", d.fh) if i == 0 else (b"..", d.parent)

    def _start(self, d: ExportObject, cookie: int, cookieverf: bytes) -> int | None:
        """The index of the first entry to list after `cookie`, or None for a bad cookie."""
        if cookie == 0:
            return 0
        if cookieverf != self.cookieverf and any(cookieverf):
            return None
        if cookie > len(d.names) + 2:
            return None
        return cookie

    def _nfs_readdir(self, a: nfs3.READDIR3args) -> READDIR3res:
        d = self.objects.get(a.dir)
        if d is None:
            return READDIR3res(Nfsstat3.NFS3ERR_STALE, READDIR3resfail(None))
        if d.type != Ftype3.NF3DIR:
            return READDIR3res(Nfsstat3.NFS3ERR_NOTDIR, READDIR3resfail(d.attr))
        start = self._start(d, a.cookie, a.cookieverf)
        if start is None:
            return READDIR3res(Nfsstat3.NFS3ERR_BAD_COOKIE, READDIR3resfail(d.attr))
        listed = len(d.names) + 2
        used = _DIR_REPLY_OVERHEAD
        entries: list[Entry3] = []
        for i in range(start, listed):
            name, fh = self._entry(d, i)
            cost = _entry_bytes(len(name))
            if used + cost > a.count:
                break
            used += cost
            entries.append(Entry3(self.objects[fh].attr.fileid, name, i + 1))
        eof = start + len(entries) == listed
        if not entries and not eof:
            return READDIR3res(Nfsstat3.NFS3ERR_TOOSMALL, READDIR3resfail(d.attr))
        return READDIR3res(Nfsstat3.NFS3_OK,
                           READDIR3resok(d.attr, self.cookieverf, Dirlist3(tuple(entries), eof)))

    def _nfs_readdirplus(self, a: nfs3.READDIRPLUS3args) -> READDIRPLUS3res:
        d = self.objects.get(a.dir)
        if d is None:
            return READDIRPLUS3res(Nfsstat3.NFS3ERR_STALE, READDIRPLUS3resfail(None))
        if d.type != Ftype3.NF3DIR:
            return READDIRPLUS3res(Nfsstat3.NFS3ERR_NOTDIR, READDIRPLUS3resfail(d.attr))
        start = self._start(d, a.cookie, a.cookieverf)
        if start is None:
            return READDIRPLUS3res(Nfsstat3.NFS3ERR_BAD_COOKIE, READDIRPLUS3resfail(d.attr))
        listed = len(d.names) + 2
        used, dir_used = _DIR_REPLY_OVERHEAD, 0
        entries: list[Entryplus3] = []
        for i in range(start, listed):
            name, fh = self._entry(d, i)
            name_len = len(name)
            cost = _entryplus_bytes(name_len, len(fh))
            dir_cost = _entry_bytes(name_len)
            if used + cost > a.maxcount:
                break
            # dircount is a hint (RFC 1813 3.3.17): honour it, but always make progress.
            if entries and a.dircount and dir_used + dir_cost > a.dircount:
                break
            used += cost
            dir_used += dir_cost
            attr = self.objects[fh].attr
            entries.append(Entryplus3(attr.fileid, name, i + 1, attr, fh))
        eof = start + len(entries) == listed
        if not entries and not eof:
            return READDIRPLUS3res(Nfsstat3.NFS3ERR_TOOSMALL, READDIRPLUS3resfail(d.attr))
        return READDIRPLUS3res(Nfsstat3.NFS3_OK, READDIRPLUS3resok(
            d.attr, self.cookieverf, Dirlistplus3(tuple(entries), eof)))

    def _nfs_fsstat(self, a: nfs3.FSSTAT3args) -> FSSTAT3res:
        obj = self.objects.get(a.fsroot)
        if obj is None:
            return FSSTAT3res(Nfsstat3.NFS3ERR_STALE, FSSTAT3resfail(None))
        return FSSTAT3res(Nfsstat3.NFS3_OK, FSSTAT3resok(
            obj.attr, self._fs_bytes, 0, 0, len(self.objects), 0, 0, INVARSEC))

    def _nfs_fsinfo(self, a: nfs3.FSINFO3args) -> FSINFO3res:
        obj = self.objects.get(a.fsroot)
        if obj is None:
            return FSINFO3res(Nfsstat3.NFS3ERR_STALE, FSINFO3resfail(None))
        # No FSF3_CANSETTIME: nothing can be set here.
        return FSINFO3res(Nfsstat3.NFS3_OK, FSINFO3resok(
            obj.attr, RTMAX_BYTES, RTMAX_BYTES, 4096, WTMAX_BYTES, WTMAX_BYTES, 4096, DTPREF_BYTES,
            (1 << 63) - 1, Nfstime3(0, 1), FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS))

    def _nfs_pathconf(self, a: nfs3.PATHCONF3args) -> PATHCONF3res:
        obj = self.objects.get(a.object)
        if obj is None:
            return PATHCONF3res(Nfsstat3.NFS3ERR_STALE, PATHCONF3resfail(None))
        return PATHCONF3res(Nfsstat3.NFS3_OK, PATHCONF3resok(
            obj.attr, LINK_MAX, NAME_MAX, True, True, False, True))

    # -- NFSv3: everything that would change something ---------------------------------

    def _wcc(self, fh: bytes) -> WccData:
        obj = self.objects.get(fh)
        return _NO_WCC if obj is None else WccData(obj.wcc_attr, obj.attr)

    def _refuse(self, fh: bytes) -> Nfsstat3:
        return Nfsstat3.NFS3ERR_ROFS if fh in self.objects else Nfsstat3.NFS3ERR_STALE

    def _nfs_rofs(self, proc: Proc3) -> Callable[[Any], Any]:
        """The handler of a mutating procedure: NFS3ERR_ROFS (STALE for an unknown
        handle), with the wcc data of the objects it names, unchanged."""
        refusals: dict[Proc3, Callable[[Any], Any]] = {
            Proc3.SETATTR: lambda a: SETATTR3res(self._refuse(a.object),
                                                 SETATTR3resfail(self._wcc(a.object))),
            Proc3.WRITE: lambda a: WRITE3res(self._refuse(a.file), WRITE3resfail(self._wcc(a.file))),
            Proc3.COMMIT: lambda a: COMMIT3res(self._refuse(a.file), COMMIT3resfail(self._wcc(a.file))),
            Proc3.CREATE: lambda a: CREATE3res(self._refuse(a.where.dir),
                                               CREATE3resfail(self._wcc(a.where.dir))),
            Proc3.MKDIR: lambda a: MKDIR3res(self._refuse(a.where.dir),
                                             MKDIR3resfail(self._wcc(a.where.dir))),
            Proc3.SYMLINK: lambda a: SYMLINK3res(self._refuse(a.where.dir),
                                                 SYMLINK3resfail(self._wcc(a.where.dir))),
            Proc3.MKNOD: lambda a: MKNOD3res(self._refuse(a.where.dir),
                                             MKNOD3resfail(self._wcc(a.where.dir))),
            Proc3.REMOVE: lambda a: REMOVE3res(self._refuse(a.object.dir),
                                               REMOVE3resfail(self._wcc(a.object.dir))),
            Proc3.RMDIR: lambda a: RMDIR3res(self._refuse(a.object.dir),
                                             RMDIR3resfail(self._wcc(a.object.dir))),
            Proc3.RENAME: lambda a: RENAME3res(
                self._refuse(a.from_.dir) if a.from_.dir not in self.objects
                else self._refuse(a.to.dir),
                RENAME3resfail(self._wcc(a.from_.dir), self._wcc(a.to.dir))),
            Proc3.LINK: lambda a: LINK3res(
                self._refuse(a.file) if a.file not in self.objects else self._refuse(a.link.dir),
                LINK3resfail(self._wcc(a.file).after, self._wcc(a.link.dir))),
        }
        if proc not in refusals:
            raise AssertionError(f"no handler for NFSv3 {proc.name}")
        return refusals[proc]
