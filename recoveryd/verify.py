"""Verify: the journal's view of the export against the live NAS. Sans-IO.

``nfsj verify`` (nfsproxy/nas/verify.py reads both sides; nfsproxy/cli/verify.py
is the command) describes the same paths twice, as the journal holds them at
a proven cut ``C`` and as the NAS holds them now, and asks ``compare`` what
differs. Nothing here reads a socket, a disk or a clock.

* A ``Described`` object is what both sides can say about one path: its
  handle, type, permission bits, owner, group, size, mtime, a symlink's
  target, a device's numbers and (for regular files, when the caller read
  it) a SHA-256 of the content. Paths are ``bytes`` relative to the export
  root (``b""`` is the root), never assumed UTF-8; reports show them with
  ``show_name``.
* The *window* (``Window.from_records``) is what the journal says changed
  after ``C``: records stamped above ``C`` (up to a bound after the NAS was
  read, once the consistent point has passed it). The NAS may legitimately
  differ there, so such objects are skipped, not compared: an object a
  record names (its content, attributes) and a directory entry a record
  adds, removes or renames, with everything below it (a renamed directory's
  subtree has other paths on each side). A directory whose entries changed
  keeps its own attributes out of the comparison, while its unchanged
  entries are still compared. Records that change nothing (BIND, baseline
  pieces and markers) leave nothing out.
* Everything else must be equal: a difference is a write that bypassed the
  proxy, a record a shard lost, or a replay bug.

Not compared: atime and ctime (reading touches atime; ctime is not
journaled by every call), link counts (a REMOVE reply carries no attributes
of the object that lost a name), directory sizes (file-system history, not
content).

The result of a run is also written for metrics: ``write_result`` puts a
small JSON file (``VERIFY_RESULT_FILE``) in the proxy's LOG directory, where
``nfsj proxy`` reads it when /metrics is scraped (``read_result``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from typing import Any, Iterable, Mapping

from logstore.pb.journal_pb2 import Attr, Op, Record

from .tree import DIR, LNK, REG, BLK, CHR, TYPE_NAMES, Tree, show_name

__all__ = ["Described", "Window", "Difference", "Comparison", "compare", "describe_attr",
           "describe_tree", "needs_content", "VERIFY_RESULT_FILE", "write_result", "read_result"]

#: Records that change nothing on the NAS: they never put an object in the window.
_NO_CHANGE = frozenset({Op.BIND, Op.BASELINE, Op.BASELINE_BEGIN, Op.BASELINE_END})

VERIFY_RESULT_FILE = "verify.json"


@dataclasses.dataclass(frozen=True, slots=True)
class Described:
    """One path as one side sees it. ``binding`` is the (directory handle, name)
    it is found under (``(b"", b"")`` for the root)."""

    fh: bytes
    type: int
    binding: tuple[bytes, bytes] = (b"", b"")
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    target: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    sha256: str | None = None

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type, f"type{self.type}")


def describe_attr(fh: bytes, kind: int, attr: Attr | None, *, binding: tuple[bytes, bytes] = (b"", b""),
                  target: bytes = b"", rdev: tuple[int, int] | None = None) -> Described:
    """A ``Described`` from journaled attributes (None: only the type is known)."""
    if attr is None:
        return Described(fh, kind, binding, target=target, rdev=rdev or (0, 0))
    return Described(fh, kind, binding, mode=stat.S_IMODE(attr.mode), uid=attr.uid, gid=attr.gid,
                     size=attr.size, mtime_ns=attr.mtime_ns, target=target,
                     rdev=rdev if rdev is not None else (attr.rdev_major, attr.rdev_minor))


def describe_tree(tree: Tree, start: bytes = b"") -> dict[bytes, Described]:
    """Every path at and below ``start`` in the journal's tree.

    Regular files get the tree's attributes, which are those of namespace
    calls and SETATTRs only (WRITEs are not in a tree): the caller replaces
    them with the file's own newest attributes before comparing.
    """
    fh = tree.lookup(start)
    if fh is None:
        return {}
    out: dict[bytes, Described] = {}
    root_binding = _binding_of(tree, fh, start)
    for rel, obj, node in tree.walk(fh, start):
        binding = root_binding if rel == start else _binding_of(tree, obj, rel)
        out[rel] = describe_attr(obj, node.type, node.attr, binding=binding, target=node.symlink_target,
                                 rdev=node.rdev if node.type in (CHR, BLK) else None)
    return out


def _binding_of(tree: Tree, fh: bytes, rel: bytes) -> tuple[bytes, bytes]:
    if not rel:
        return (b"", b"")
    parent, _, name = rel.rpartition(b"/")
    return (tree.lookup(parent) or b"", name)


@dataclasses.dataclass(slots=True)
class Window:
    """What records stamped after the cut changed: ``objects`` (handles whose
    content or attributes changed) and ``bindings`` ((directory handle, name)
    pairs that were added, removed or renamed)."""

    objects: set[bytes] = dataclasses.field(default_factory=set)
    bindings: set[tuple[bytes, bytes]] = dataclasses.field(default_factory=set)
    records: int = 0

    @classmethod
    def from_records(cls, records: Iterable[Record]) -> Window:
        window = cls()
        for record in records:
            window.add(record)
        return window

    def add(self, r: Record) -> None:
        """Take one record of the window into account. Failed calls count too:
        a reply that never came is journaled as failed, yet the NAS may have
        applied the call."""
        if r.op in _NO_CHANGE:
            return
        self.records += 1
        for fh in (r.fh, r.object_fh):
            if fh:
                self.objects.add(fh)
        for dir_fh, name in ((r.dir_fh, r.name), (r.to_dir_fh, r.to_name)):
            if dir_fh:
                self.objects.add(dir_fh)  # its mtime moves with its entries
                if name:
                    self.bindings.add((dir_fh, name))

    def merge(self, other: Window) -> None:
        self.objects |= other.objects
        self.bindings |= other.bindings
        self.records += other.records


@dataclasses.dataclass(frozen=True, slots=True)
class Difference:
    """One path that differs: ``what`` says how, in words (the path is bytes)."""

    path: bytes
    what: str

    def __str__(self) -> str:
        return f"{show_name(b'/' + self.path)}: {self.what}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": show_name(b"/" + self.path), "what": self.what}


@dataclasses.dataclass(slots=True)
class Comparison:
    """What ``compare`` found: paths compared, paths skipped (changed after the
    cut), and the differences, sorted by path."""

    checked: int = 0
    skipped: int = 0
    differences: list[Difference] = dataclasses.field(default_factory=list)


def _prefixes(path: bytes) -> list[bytes]:
    """The path and its ancestors below the root, shortest first."""
    parts = path.split(b"/") if path else []
    return [b"/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _in_window(path: bytes, sides: tuple[Mapping[bytes, Described], ...], window: Window) -> bool:
    """Whether a name on the way to ``path`` (or its own) changed after the cut."""
    for prefix in _prefixes(path):
        for side in sides:
            d = side.get(prefix)
            if d is not None and d.binding in window.bindings:
                return True
    return False


def _below(path: bytes, tops: set[bytes]) -> bool:
    """Whether ``path`` lies below one of ``tops`` (b"", the root, is above
    every path): its ancestors are looked up, so many scattered missing
    paths cost each path its depth, not the number reported before it."""
    if b"" in tops:
        return True
    at = path.find(b"/")
    while at != -1:
        if path[:at] in tops:
            return True
        at = path.find(b"/", at + 1)
    return False


def compare(journal: Mapping[bytes, Described], nas: Mapping[bytes, Described], window: Window,
            paths: Iterable[bytes] | None = None) -> Comparison:
    """Compare the two sides at ``paths`` (default: every path either side has).

    The sides may hold more paths than are compared (the ancestors of sampled
    files): they tell which directory entries lead to a path. A path missing
    on one side is reported once, at the top of what is missing.
    """
    out = Comparison()
    wanted = sorted(set(journal) | set(nas) if paths is None else set(paths))
    missing_tops: set[bytes] = set()
    for path in wanted:
        j, n = journal.get(path), nas.get(path)
        if _in_window(path, (journal, nas), window):
            out.skipped += 1
            continue
        if j is None or n is None:
            if _below(path, missing_tops):
                continue  # below a directory already reported missing
            missing_tops.add(path)
            out.checked += 1
            here = n if j is None else j
            where = "on the NAS but not in the journal" if j is None else "in the journal but not on the NAS"
            out.differences.append(Difference(path, f"{here.type_name} {where}"))
            continue
        if j.type != DIR and (j.fh in window.objects or n.fh in window.objects):
            out.skipped += 1
            continue
        out.checked += 1
        what = _differs(j, n, attributes=j.type != DIR or j.fh not in window.objects)
        if what:
            out.differences.append(Difference(path, what))
    return out


def _differs(j: Described, n: Described, *, attributes: bool) -> str:
    """How ``n`` (the NAS) differs from ``j`` (the journal), or ""."""
    if j.type != n.type:
        return f"type {j.type_name} in the journal, {n.type_name} on the NAS"
    problems = []
    if j.fh != n.fh:
        problems.append("another object on the NAS (its file handle differs: replaced outside the journal)")
    if attributes:
        if j.mode != n.mode:
            problems.append(f"mode {j.mode:04o} in the journal, {n.mode:04o} on the NAS")
        for field in ("uid", "gid"):
            if getattr(j, field) != getattr(n, field):
                problems.append(f"{field} {getattr(j, field)} in the journal, {getattr(n, field)} on the NAS")
        if j.type == REG and j.size != n.size:
            problems.append(f"size {j.size} in the journal, {n.size} on the NAS")
        if j.mtime_ns != n.mtime_ns:
            problems.append(f"mtime {j.mtime_ns} in the journal, {n.mtime_ns} on the NAS")
        if j.type in (CHR, BLK) and j.rdev != n.rdev:
            problems.append(f"device {j.rdev[0]},{j.rdev[1]} in the journal, {n.rdev[0]},{n.rdev[1]} on the NAS")
    if j.type == LNK and j.target != n.target:
        problems.append(f"symlink target '{show_name(j.target)}' in the journal, "
                        f"'{show_name(n.target)}' on the NAS")
    if j.type == REG and j.sha256 is not None and n.sha256 is not None and j.sha256 != n.sha256:
        problems.append("content differs (SHA-256 "
                        f"{j.sha256[:16]}... in the journal, {n.sha256[:16]}... on the NAS)")
    return "; ".join(problems)


def needs_content(journal: Mapping[bytes, Described], nas: Mapping[bytes, Described], window: Window,
                  paths: Iterable[bytes] | None = None) -> list[bytes]:
    """The regular files whose content must be read on both sides: present on
    both, not in the window, of the same size (a size difference says enough)."""
    wanted = sorted(set(journal) & set(nas) if paths is None else set(paths))
    out = []
    for path in wanted:
        j, n = journal.get(path), nas.get(path)
        if (j is not None and n is not None and j.type == REG and n.type == REG and j.size == n.size
                and j.fh not in window.objects and n.fh not in window.objects
                and not _in_window(path, (journal, nas), window)):
            out.append(path)
    return out


# -- the result, for metrics ----------------------------------------------------------------------


def write_result(log_dir: str | os.PathLike[str], result: Mapping[str, Any]) -> str:
    """Write a verify's result (``finished_unix_ns``, ``checked``, ``skipped``,
    ``differences``, ...) to ``<log_dir>/verify.json`` atomically; returns the path."""
    path = os.path.join(os.fspath(log_dir), VERIFY_RESULT_FILE)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(dict(result), f, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_result(log_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The last verify's result in ``log_dir`` (None: none, or unreadable)."""
    try:
        with open(os.path.join(os.fspath(log_dir), VERIFY_RESULT_FILE), "rb") as f:
            result = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None
