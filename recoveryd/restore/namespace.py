"""The tree builder: the namespace and attributes at a cut, rebuilt from the
shards' records (``build_tree``), or one path resolved from the records of
the directories on its way (``resolve_path``).

With the baseline ``B`` (BEGIN stamp ``b``) and the bound ``T``, the tree
merges every shard's ``Scan`` of the stamps in ``[b, T]`` and applies them to
a ``recoveryd.tree.Tree``. It asks only for namespace ops, SETATTR (so
directories' and symlinks' modes are current) and baseline pieces, without
data: a file written 10,000 times costs nothing here. ``file_sizes=True``
also asks for WRITE and COMMIT (still without data), so that every regular
file's size and mtime are the ones its content has at the cut: what the
read-only export and push-back show before they read a byte. Pieces of
baselines other than ``B`` are skipped: a later baseline cut off in the
middle would reset objects it never finished reading.

An object the tree never saw created or read (moved into the export's
scanned part mid-baseline, say) has no type; a restore skips it and says so.
"""

from __future__ import annotations

import os
from typing import Callable

from logstore.pb.journal_pb2 import Op, Record, ScanRequest
from logstore.stamp import Stamp, predecessor

from ..tree import DIR, NAMESPACE_OPS, Node, Tree, show_name
from .cut import Cut, cut_records
from .errors import RestoreError, RestoreRefused
from .shards import Shards

__all__ = ["TREE_OPS", "FILE_SIZE_OPS", "build_tree", "resolve_path", "clean_path", "found"]

#: What a tree rebuild asks the shards for.
TREE_OPS = frozenset(NAMESPACE_OPS | {Op.SETATTR, Op.SETACL, Op.BASELINE, Op.BASELINE_BEGIN,
                                      Op.BASELINE_END})
#: ... and what it also asks for to know every file's size at the cut.
FILE_SIZE_OPS = frozenset({Op.WRITE, Op.COMMIT})

#: Renames into a directory whose object is looked up in the source directory,
#: nested this deep, before resolving a path falls back to the whole tree.
_MAX_RENAME_CHAIN = 8


class _NeedTree(Exception):
    """A directory's own records do not tell its entries: rebuild the whole tree."""


def build_tree(shards: Shards, cut: Cut, *, file_sizes: bool = False) -> Tree:
    """The namespace and attributes at ``cut``; with ``file_sizes`` every regular
    file's attributes are as of the cut too (see the module docstring)."""
    after, until = cut.window()
    ops = TREE_OPS | FILE_SIZE_OPS if file_sizes else TREE_OPS
    tree = Tree(baseline_id=cut.baseline.baseline_id)
    for record in shards.scan(ScanRequest(after=after, until=until, with_data=False, ops=sorted(ops))):
        tree.apply(record)
    if tree.root is None:
        raise RestoreError(f"baseline {cut.baseline_id} holds no export root: the shards do "
                           "not hold its pieces (a wiped shard not yet rebuilt?)")
    return tree


def resolve_path(shards: Shards, cut: Cut, rel: bytes,
                 whole_tree: Callable[[], Tree]) -> tuple[bytes, int] | None:
    """(handle, type) of what ``rel`` named at ``cut`` (None: nothing), as
    ``build_tree(...).lookup`` finds it, but reading only the records of the
    directories on the way. The type is as the parent directory's records
    show it (0: they do not say; the object's own records do). ``whole_tree``
    is asked when the directories' records cannot tell.

    Every change to a directory's entries names that directory (``dir_fh``
    or ``to_dir_fh``), and so does every baseline piece of an entry, so
    a directory's own records (the per-file index) give its entries at
    the cut. A RENAME into it from another directory that does not say
    which object moved (``object_fh`` empty) is looked up in the source
    directory's own records as they were just before it.
    """
    fh = _root(shards, cut)
    if fh is None:
        return found(whole_tree(), rel)
    kind = DIR
    for part in rel.split(b"/") if rel else ():
        try:
            tree, directory = _directory(shards, cut, fh)
        except _NeedTree:
            return found(whole_tree(), rel)
        if directory is None or directory.type != DIR:
            return None
        fh = directory.entries.get(part)
        if fh is None:
            return None
        kind = tree.nodes[fh].type
    return fh, kind


def _root(shards: Shards, cut: Cut) -> bytes | None:
    """The export root's handle: its piece is the baseline's first (recoveryd.tree)."""
    after, until = cut.window()
    request = ScanRequest(after=after, until=until, with_data=False, ops=[Op.BASELINE], limit=1)
    records = shards.scan(request)
    try:
        for record in records:
            if record.baseline_id != cut.baseline.baseline_id:
                continue
            if record.ok and not record.dir_fh and not record.name and record.baseline_first:
                return record.fh
            return None
    finally:
        records.close()
    return None


def _directory(shards: Shards, cut: Cut, fh: bytes, until: Stamp | None = None,
               depth: int = 0) -> tuple[Tree, Node | None]:
    """A tree of ``fh``'s own records at ``cut`` (or up to ``until``), and its
    node there (type, entries)."""
    tree = Tree(baseline_id=cut.baseline.baseline_id)
    for record in cut_records(shards, cut, fh, with_data=False, until=until):
        if record.op == Op.RENAME and record.to_dir_fh == fh and record.dir_fh != fh and record.ok:
            # Moved in from another directory, whose entries are not known
            # here: the object is the record's object_fh, or else the one the
            # source directory's own records bound to the name just before.
            moved = Record()
            moved.CopyFrom(record)
            moved.ClearField("dir_fh")
            if not moved.object_fh:
                moved.object_fh = _entry_before(shards, cut, record.dir_fh, record.name,
                                                Stamp.from_bytes(record.stamp), depth + 1) or b""
            record = moved
        tree.apply(record)
    return tree, tree.node(fh)


def _entry_before(shards: Shards, cut: Cut, dir_fh: bytes, name: bytes, stamp: Stamp,
                  depth: int) -> bytes | None:
    if depth > _MAX_RENAME_CHAIN:
        raise _NeedTree()
    _, node = _directory(shards, cut, dir_fh, predecessor(stamp), depth)
    return node.entries.get(name) if node is not None else None


def found(tree: Tree, rel: bytes) -> tuple[bytes, int] | None:
    """(handle, type) at ``rel`` in ``tree``, or None."""
    fh = tree.lookup(rel)
    return None if fh is None else (fh, tree.nodes[fh].type)


def clean_path(path: bytes | str | None) -> bytes:
    """A path from the export root as bytes (a str from a command line is
    os.fsencoded back into the bytes the user typed)."""
    parts = [p for p in os.fsencode(path or b"").split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise RestoreRefused(f"path {show_name(path)} contains '..': give a path from the export root")
    return b"/".join(parts)
