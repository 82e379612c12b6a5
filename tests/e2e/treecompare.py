"""Snapshots of a local directory tree, and their differences, for end-to-end tests.

The NAS's export is a local directory (`nas.export_dir`), so the tests judge
what NFS calls did by reading it with plain `os.lstat` (reading is allowed
while ganesha serves; changing it is not, see TESTBED.md). Nothing here
speaks NFS: the check stays independent of the code under test.

Usage::

    a = snapshot(export / "direct")
    b = snapshot(export / "proxied")
    assert not (problems := diff(a, b)), "\n".join(problems)

What is compared, per path (relative, "/"-separated; the root itself is ""):

* type (`reg`, `dir`, `lnk`, `fifo`, `chr`, `blk`, `sock`), permission bits
  (`mode`, including setuid/setgid/sticky), `uid`, `gid`, link count;
* regular files: size and a SHA-256 of the content (holes read as zeros);
* symlinks: the target text (its size is the target's length);
* optionally mtime, in nanoseconds (`diff(..., mtimes=True)`);
* hard links: not the inode numbers (two trees never share them) but which
  paths share an inode. Each snapshot carries a `link_group`, the sorted
  paths that share the entry's inode within the tree; `diff` compares those.

Not compared: directory sizes (they depend on the file system's history of
the directory, not on its entries), atime and ctime (the tools that read the
tree touch them), inode numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from pathlib import Path
from typing import Iterable

__all__ = ["Entry", "snapshot", "diff", "hard_link_groups"]

_HASH_CHUNK_BYTES = 1 << 20

_TYPES = (
    (stat.S_ISREG, "reg"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "lnk"),
    (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chr"), (stat.S_ISBLK, "blk"),
    (stat.S_ISSOCK, "sock"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One path of a snapshot. `size`/`sha256`/`target` are None where they do not apply."""

    type: str
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int | None = None
    sha256: str | None = None
    target: str | None = None
    mtime_ns: int | None = None
    rdev: tuple[int, int] | None = None
    # Sorted paths in the same tree that share this entry's inode (just
    # this path when it has no other name in the tree). Files only.
    link_group: tuple[str, ...] = ()
    # Identity inside this one snapshot; never compared between trees.
    inode: tuple[int, int] = dataclasses.field(default=(0, 0), compare=False, repr=False)


def _type_name(st_mode: int) -> str:
    for test, name in _TYPES:
        if test(st_mode):
            return name
    return f"unknown({stat.S_IFMT(st_mode):o})"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _walk(root: Path) -> Iterable[tuple[str, Path]]:
    """("", root) then every path below it, parents before children, sorted."""
    yield "", root
    stack = [("", root)]
    while stack:
        rel, path = stack.pop()
        with os.scandir(path) as it:
            children = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
        subdirs = []
        for name, is_dir in children:
            child_rel = f"{rel}/{name}" if rel else name
            yield child_rel, path / name
            if is_dir:
                subdirs.append((child_rel, path / name))
        stack.extend(reversed(subdirs))


def snapshot(root: str | os.PathLike[str], *, mtimes: bool = False) -> dict[str, Entry]:
    """Every path under `root` (and `root` itself as "") with what `diff` compares.

    `mtimes=True` also records each entry's mtime in ns (symlinks included).
    """
    root = Path(root)
    raw: dict[str, tuple[os.stat_result, Path]] = {rel: (os.lstat(p), p) for rel, p in _walk(root)}
    by_inode: dict[tuple[int, int], list[str]] = {}
    for rel, (st, _) in raw.items():
        if not stat.S_ISDIR(st.st_mode):
            by_inode.setdefault((st.st_dev, st.st_ino), []).append(rel)
    out: dict[str, Entry] = {}
    for rel, (st, path) in raw.items():
        kind = _type_name(st.st_mode)
        inode = (st.st_dev, st.st_ino)
        fields: dict = dict(type=kind, mode=stat.S_IMODE(st.st_mode), nlink=st.st_nlink,
                            uid=st.st_uid, gid=st.st_gid, inode=inode)
        if kind == "reg":
            fields.update(size=st.st_size, sha256=_sha256(path))
        elif kind == "lnk":
            fields.update(size=st.st_size, target=os.readlink(path))
        elif kind in ("chr", "blk"):
            fields.update(rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)))
        if kind != "dir":
            fields.update(link_group=tuple(sorted(by_inode[inode])))
        if mtimes:
            fields.update(mtime_ns=st.st_mtime_ns)
        out[rel] = Entry(**fields)
    return out


def hard_link_groups(tree: dict[str, Entry]) -> set[tuple[str, ...]]:
    """The sets of paths (two or more) that are one inode within `tree`."""
    return {e.link_group for e in tree.values() if len(e.link_group) > 1}


def diff(a: dict[str, Entry], b: dict[str, Entry], *, mtimes: bool = False,
         names: tuple[str, str] = ("a", "b")) -> list[str]:
    """Human-readable differences between two snapshots; [] when they match.

    mtimes are compared only with `mtimes=True` (both snapshots must have
    been taken with `mtimes=True`). `names` label the two sides.
    """
    na, nb = names
    problems: list[str] = []
    for rel in sorted(a.keys() - b.keys()):
        problems.append(f"{rel or '.'}: only in {na} ({a[rel].type})")
    for rel in sorted(b.keys() - a.keys()):
        problems.append(f"{rel or '.'}: only in {nb} ({b[rel].type})")
    compared = ["type", "mode", "nlink", "uid", "gid", "size", "sha256", "target", "rdev",
                "link_group"]
    if mtimes:
        compared.append("mtime_ns")
    for rel in sorted(a.keys() & b.keys()):
        ea, eb = a[rel], b[rel]
        if ea.type != eb.type:
            problems.append(f"{rel or '.'}: type {ea.type} in {na}, {eb.type} in {nb}")
            continue
        for field in compared[1:]:
            va, vb = getattr(ea, field), getattr(eb, field)
            if va != vb:
                if field == "mode":
                    va, vb = f"{va:04o}", f"{vb:04o}"
                problems.append(f"{rel or '.'}: {field} {va!s} in {na}, {vb!s} in {nb}")
    return problems
