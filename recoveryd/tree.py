"""The namespace and attributes of the export, rebuilt from records. Sans-IO.

A ``Tree`` is fed records in stamp order (``apply``) and knows, for every
file handle it has seen: the object's type, its attributes, a symlink's
target, a device's numbers, a directory's entries (name -> handle) and the
names (directory handle, name) the object is bound under. It reads no
socket, no disk and no clock: ``recoveryd.restore`` feeds it the records of
a cut, the read-only export and ``history`` ask it for paths.

Rules (README.md "How it works"; proto/journal.proto, Op):

* Only records with ``ok`` change anything: a failed call changed nothing on
  the NAS.
* ``BASELINE`` (one piece of a baseline) binds ``(dir_fh, name) -> fh``; the
  piece with an empty ``dir_fh`` and name is the export root. A piece with
  ``baseline_first`` starts the object afresh: its type comes from its
  attributes, a directory's entries are reset (the baseline lists the
  directory after its own piece, so the entries it saw come as later pieces
  and every change stamped in between is replayed on top), a symlink's target
  comes from the piece. Content pieces after the first carry no binding. With
  ``Tree(baseline_id=...)`` pieces of any other baseline are ignored: a later
  baseline cut off in the middle of a directory would otherwise empty it.
* ``CREATE``/``MKDIR``/``SYMLINK``/``MKNOD`` bind ``(dir_fh, name) -> fh``
  (``fh`` from the reply; without one nothing can be bound). MKDIR, SYMLINK
  and MKNOD always make a new object; CREATE makes one afresh unless the
  handle is a file still bound somewhere (an UNCHECKED create of an existing
  file returns that file).
* ``REMOVE``/``RMDIR`` unbind the name.
* ``RENAME`` moves the entry to ``(to_dir_fh, to_name)``, replacing whatever
  that name held; when the source name is unknown (the tree never saw it)
  but the proxy knew the object (``object_fh``), that object is moved. As in
  POSIX, renaming a name onto another name of the same object changes
  nothing.
* ``LINK`` binds ``(to_dir_fh, to_name) -> fh``.
* Names, paths and symlink targets are ``bytes``, exactly as the NAS has
  them (never assumed UTF-8); ``lookup`` also takes a ``str`` path and
  ``os.fsencode``s it. ``show_name`` makes one readable, for people only.
* A name that no POSIX file system holds ("", ".", "..", or one containing
  "/" or NUL) is never bound: such a record is corrupt, and a restore must not
  be steered outside its destination by it.
* ``BIND`` changes nothing: a BIND is stamped when its LOOKUP/READDIRPLUS
  *reply* arrived, after calls that may have removed or renamed the name in
  the meantime, so replaying it could resurrect a removed name (and its
  attributes may be older than its stamp). Only ``history`` shows BINDs.
* Attributes: ``attr`` belongs to ``fh``, ``dir_attr`` to ``dir_fh``,
  ``to_dir_attr`` to ``to_dir_fh``. The newest attributes of an object win,
  where "newest" is the NAS's own change time (``ctime_ns``) first and the
  stamp second. Departure from plain stamp order, on purpose: a stamp is
  taken when the *call* arrives, but post-op attributes describe the object
  when the NAS *applied* it, and concurrent calls (a kernel client's
  parallel WRITEs) are applied in another order than they arrived. The
  ctime is the NAS's order; with equal ctimes (or none, as in hand-made
  records) it is exactly stamp order. A ``baseline_first`` piece sets the
  attributes unconditionally (it starts the object afresh).

* ACLs (``SETACL``, and baseline pieces read where the NAS serves NFSACL):
  ``acl_mask`` says which of the access ACL (0x1) and the default ACL (0x4)
  a record holds; those replace the node's, the others stay. A
  ``baseline_first`` piece sets both (unknown, ``None``, when it holds
  none), a new object starts with none known. An empty list means "no
  ACL": only the mode bits. ACLs a new object inherits from its
  directory's default ACL on the NAS are not journaled (no call carries
  them): they are known only once a baseline has read them.

Link counts are counted from the names the tree holds (``link_count``), as
the restored file system will count them: a regular file has one per name,
a directory 2 plus one per subdirectory.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

from logstore.pb.journal_pb2 import Attr, Op, Record

from .acl import Ace, aces

__all__ = ["Tree", "Node", "REG", "DIR", "BLK", "CHR", "LNK", "SOCK", "FIFO", "TYPE_NAMES",
           "attr_key", "NAMESPACE_OPS", "show_name", "ACL_ACCESS", "ACL_DEFAULT"]

# ftype3 (RFC 1813), as in Attr.type.
REG, DIR, BLK, CHR, LNK, SOCK, FIFO = 1, 2, 3, 4, 5, 6, 7
TYPE_NAMES = {0: "unknown", REG: "reg", DIR: "dir", BLK: "blk", CHR: "chr", LNK: "lnk",
              SOCK: "sock", FIFO: "fifo"}

_CREATING = {Op.CREATE: REG, Op.MKDIR: DIR, Op.SYMLINK: LNK}

#: Record.acl_mask bits (NFSACL's): the access ACL, the default ACL.
ACL_ACCESS, ACL_DEFAULT = 0x1, 0x4

#: Ops that change the namespace (what a tree rebuild must see besides baseline pieces).
NAMESPACE_OPS = frozenset({Op.CREATE, Op.MKDIR, Op.SYMLINK, Op.MKNOD, Op.REMOVE, Op.RMDIR,
                           Op.RENAME, Op.LINK})


def attr_key(attr: Attr, stamp: bytes) -> tuple[int, bytes]:
    """How attributes are ordered: the NAS's ctime, then the record's stamp."""
    return (attr.ctime_ns, stamp)


@dataclasses.dataclass(slots=True, eq=False)
class Node:
    """One object (file handle) as the tree knows it."""

    fh: bytes
    type: int = 0                           # ftype3; 0: not known (seen only as a handle)
    attr: Attr | None = None                # the newest attributes (see the module rules)
    attr_key: tuple[int, bytes] = (0, b"")  # ... and their place in attr_key order
    symlink_target: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    entries: dict[bytes, bytes] = dataclasses.field(default_factory=dict)  # directories
    names: set[tuple[bytes, bytes]] = dataclasses.field(default_factory=set)
    acl: tuple[Ace, ...] | None = None          # the access ACL (None: not known)
    default_acl: tuple[Ace, ...] | None = None  # the default ACL (directories; None: not known)

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type, f"type{self.type}")

    @property
    def is_dir(self) -> bool:
        return self.type == DIR

    @property
    def size(self) -> int | None:
        """The size its newest attributes give (None: it has none)."""
        return self.attr.size if self.attr is not None else None


class Tree:
    """The namespace and attributes rebuilt from records applied in stamp order."""

    def __init__(self, baseline_id: bytes | None = None) -> None:
        self.baseline_id = baseline_id
        self.nodes: dict[bytes, Node] = {}
        self.root: bytes | None = None
        self.applied = 0                # records that changed (or could have changed) state
        self.last_stamp = b""

    # -- feeding ------------------------------------------------------------------

    def apply(self, record: Record) -> None:
        """Apply one record; records must come in stamp order."""
        if record.stamp < self.last_stamp:
            raise ValueError("records must be applied in stamp order")
        self.last_stamp = record.stamp
        if not record.ok or record.op == Op.BIND:
            return
        op = record.op
        if op == Op.BASELINE:
            if self.baseline_id is not None and record.baseline_id != self.baseline_id:
                return
            self._baseline(record)
        elif op in _CREATING or op == Op.MKNOD:
            self._create(record)
        elif op in (Op.REMOVE, Op.RMDIR):
            self._unbind(record.dir_fh, record.name)
        elif op == Op.RENAME:
            self._rename(record)
        elif op == Op.LINK:
            if record.fh and record.to_dir_fh:
                self._bind(record.to_dir_fh, record.to_name, record.fh)
        elif op == Op.SETACL:
            if record.fh:
                _set_acls(self._node(record.fh), record)
        elif op in (Op.BASELINE_BEGIN, Op.BASELINE_END, Op.GAP):
            return
        self.applied += 1
        if op in (Op.WRITE, Op.SETATTR) and not record.HasField("attr"):
            self._resized(record)
        self._attributes(record)

    def _baseline(self, r: Record) -> None:
        if not r.fh:
            return
        node = self._node(r.fh)
        if r.baseline_first:
            node.type = r.attr.type if r.HasField("attr") else node.type
            node.entries.clear()
            node.symlink_target = r.symlink_target
            node.rdev = (r.attr.rdev_major, r.attr.rdev_minor)
            if r.HasField("attr"):
                node.attr = _copy(r.attr)
                node.attr_key = attr_key(r.attr, r.stamp)
            node.acl = node.default_acl = None
            _set_acls(node, r)
        if not r.dir_fh:
            # The root's piece has no binding; a file's content pieces after
            # its first carry none either (and are no directory).
            if not r.name and (r.baseline_first or node.type == DIR):
                self.root = r.fh
                node.type = node.type or DIR
            return
        self._bind(r.dir_fh, r.name, r.fh)

    def _create(self, r: Record) -> None:
        if not r.fh or not r.dir_fh:
            return  # the NAS did not return the new handle: nothing to bind
        node = self._node(r.fh)
        kind = _CREATING.get(r.op, r.mknod_type)
        fresh = r.op != Op.CREATE or node.type != REG or not node.names
        if fresh:
            node.type = kind
            node.entries.clear()
            node.attr, node.attr_key = None, (0, b"")
            node.symlink_target = r.symlink_target if r.op == Op.SYMLINK else b""
            node.rdev = (r.rdev_major, r.rdev_minor) if r.op == Op.MKNOD else (0, 0)
            node.acl = node.default_acl = None
        self._bind(r.dir_fh, r.name, r.fh)

    def _rename(self, r: Record) -> None:
        src_dir = self.nodes.get(r.dir_fh)
        fh = src_dir.entries.get(r.name) if src_dir is not None else None
        if fh is None:
            fh = r.object_fh or None
        if not r.to_dir_fh:
            return
        dst_dir = self.nodes.get(r.to_dir_fh)
        if fh is not None and dst_dir is not None and dst_dir.entries.get(r.to_name) == fh:
            return  # source and target are the same object: POSIX rename does nothing
        if fh is None:
            # An object the tree never knew took the target name: whatever
            # the name held is gone, and nothing can be bound in its place.
            self._unbind(r.to_dir_fh, r.to_name)
            return
        self._unbind(r.dir_fh, r.name)
        self._bind(r.to_dir_fh, r.to_name, fh)

    def _resized(self, r: Record) -> None:
        """A WRITE or a size-setting SETATTR that came back without post-op
        attributes still moves the file's size: NFSv3 lets a NAS omit them,
        and a record rebuilt from its write-ahead intent has none (the file's
        replay, ``recoveryd.restore.replay``, keeps the size it made)."""
        node = self.nodes.get(r.fh)
        if node is None or node.attr is None:
            return
        if r.op == Op.WRITE:
            size = max(node.attr.size, r.offset + (r.reply_count or r.count))
        elif r.set.HasField("size"):
            size = r.set.size
        else:
            return
        if size != node.attr.size:
            node.attr = _copy(node.attr)
            node.attr.size = size

    def _attributes(self, r: Record) -> None:
        for field, fh in (("attr", r.fh), ("dir_attr", r.dir_fh), ("to_dir_attr", r.to_dir_fh)):
            if fh and r.HasField(field):
                attr = getattr(r, field)
                node = self._node(fh)
                key = attr_key(attr, r.stamp)
                if node.attr is None or key >= node.attr_key:
                    node.attr, node.attr_key = _copy(attr), key
                    if not node.type:
                        node.type = attr.type
                    if node.type in (CHR, BLK) and attr.type == node.type:
                        node.rdev = (attr.rdev_major, attr.rdev_minor)

    # -- the namespace --------------------------------------------------------------

    def _node(self, fh: bytes) -> Node:
        node = self.nodes.get(fh)
        if node is None:
            node = self.nodes[fh] = Node(fh)
        return node

    def _bind(self, dir_fh: bytes, name: bytes, fh: bytes) -> None:
        if not _valid_name(name):
            return  # no NAS accepts it: a corrupt record, and a restore must never write outside its root
        directory = self._node(dir_fh)
        if not directory.type:
            directory.type = DIR  # only a directory has entries
        old = directory.entries.get(name)
        if old == fh:
            return
        if old is not None:
            self._node(old).names.discard((dir_fh, name))
        directory.entries[name] = fh
        self._node(fh).names.add((dir_fh, name))

    def _unbind(self, dir_fh: bytes, name: bytes) -> None:
        directory = self.nodes.get(dir_fh)
        if directory is None:
            return
        fh = directory.entries.pop(name, None)
        if fh is not None:
            self.nodes[fh].names.discard((dir_fh, name))

    # -- questions ---------------------------------------------------------------------

    def node(self, fh: bytes) -> Node | None:
        return self.nodes.get(fh)

    def __contains__(self, fh: bytes) -> bool:
        return fh in self.nodes

    def lookup(self, path: bytes | str) -> bytes | None:
        """The handle at `path` ("/"-separated, relative to the export root; "" or
        "/" is the root), without following symlinks; None if there is none."""
        fh = self.root
        if fh is None:
            return None
        for part in os.fsencode(path).split(b"/"):
            if part in (b"", b"."):
                continue
            node = self.nodes.get(fh)
            if node is None or node.type != DIR:
                return None
            if part == b"..":
                parents = sorted(node.names)
                fh = parents[0][0] if parents and fh != self.root else fh
                continue
            fh = node.entries.get(part)
            if fh is None:
                return None
        return fh

    def paths_of(self, fh: bytes) -> list[bytes]:
        """Every path (relative, "/"-separated; b"" is the root) that names `fh`, sorted."""
        out: list[bytes] = []
        self._paths(fh, b"", set(), out)
        return sorted(out)

    def _paths(self, fh: bytes, suffix: bytes, seen: set[bytes], out: list[bytes]) -> None:
        if fh == self.root:
            out.append(suffix)
            return
        if fh in seen:
            return  # a cycle: not reachable from the root this way
        node = self.nodes.get(fh)
        if node is None:
            return
        seen = seen | {fh}
        for dir_fh, name in node.names:
            self._paths(dir_fh, name + b"/" + suffix if suffix else name, seen, out)

    def walk(self, fh: bytes | None = None, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes, Node]]:
        """(relpath, fh, node) for `fh` (default: the root) and everything below
        it, parents before children, names sorted. An object with several names
        comes once per name; a directory's subtree is walked once.

        `prefix` is the path given to `fh` itself (b"" by default)."""
        start = self.root if fh is None else fh
        if start is None or start not in self.nodes:
            return
        seen: set[bytes] = {start}
        stack = [(prefix, start)]
        while stack:
            rel, cur = stack.pop()
            node = self.nodes[cur]
            yield rel, cur, node
            if node.type != DIR:
                continue
            children = []
            for name in sorted(node.entries, reverse=True):
                child = node.entries[name]
                child_rel = rel + b"/" + name if rel else name
                child_node = self.nodes[child]
                if child_node.type == DIR:
                    if child in seen:
                        continue
                    seen.add(child)
                children.append((child_rel, child))
            stack.extend(children)

    def link_count(self, fh: bytes) -> int:
        """Names of a non-directory; 2 + subdirectories for a directory."""
        node = self.nodes.get(fh)
        if node is None:
            return 0
        if node.type == DIR:
            return 2 + sum(1 for c in node.entries.values() if self.nodes[c].type == DIR)
        return len(node.names)


def _set_acls(node: Node, r: Record) -> None:
    if r.acl_mask & ACL_ACCESS:
        node.acl = aces(r.acl)
    if r.acl_mask & ACL_DEFAULT:
        node.default_acl = aces(r.default_acl)


def _valid_name(name: bytes) -> bool:
    return name not in (b"", b".", b"..") and b"/" not in name and b"\0" not in name


# Bytes that are not UTF-8 (surrogates after surrogateescape), control
# characters and the backslash itself are all escaped, so that two different
# names never look the same.
_SHOWN = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {
    0xDC00 + c: f"\\x{c:02x}" for c in range(0x80, 0x100)} | {
    ord("\\"): "\\\\", ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"}


def show_name(name: bytes | str) -> str:
    """A name, path or symlink target for people (messages, `history`, progress):
    UTF-8 shown as is, any other byte as ``\\xNN``, backslashes doubled and
    control characters escaped. Never use it where the name is data."""
    if isinstance(name, str):
        name = os.fsencode(name)
    return name.decode("utf-8", "surrogateescape").translate(_SHOWN)


def _copy(attr: Attr) -> Attr:
    out = Attr()
    out.CopyFrom(attr)
    return out
