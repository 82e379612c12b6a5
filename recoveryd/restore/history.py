"""History: what changed one path, when, from which client and uid, between
two moments, with the paths each record named as they were when it was
stamped.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from logstore.pb.journal_pb2 import FileRequest, Op, Record, ScanRequest
from logstore.stamp import Stamp

from ..acl import to_text
from ..timespec import END_OF_NS, format_time
from ..tree import Tree, show_name
from .cut import complete_baselines
from .errors import RestoreRefused
from .namespace import TREE_OPS, clean_path

if TYPE_CHECKING:
    from .client import RestoreClient

__all__ = ["HistoryEntry", "history"]

_NFS3_ERRORS = {1: "PERM", 2: "NOENT", 5: "IO", 6: "NXIO", 13: "ACCES", 17: "EXIST", 18: "XDEV",
                19: "NODEV", 20: "NOTDIR", 21: "ISDIR", 22: "INVAL", 27: "FBIG", 28: "NOSPC",
                30: "ROFS", 31: "MLINK", 63: "NAMETOOLONG", 66: "NOTEMPTY", 69: "DQUOT",
                70: "STALE", 10001: "BADHANDLE", 10004: "NOTSUPP", 10006: "SERVERFAULT"}


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One record that names a path's object."""

    stamp: Stamp
    time: str            # ISO-8601 UTC with nanoseconds
    op: str              # WRITE, SETATTR, RENAME, ..., BIND, BASELINE
    client: str
    uid: int
    gid: int
    ok: bool
    status: int
    details: str

    @property
    def status_name(self) -> str:
        if self.status == 0:
            return "OK"
        return _NFS3_ERRORS.get(self.status, str(self.status))

    def to_dict(self) -> dict[str, Any]:
        return {"stamp": str(self.stamp), "time": self.time, "op": self.op, "client": self.client,
                "uid": self.uid, "gid": self.gid, "ok": self.ok, "status": self.status,
                "status_name": self.status_name, "details": self.details}


def history(client: RestoreClient, path: bytes | str, since: Stamp | None = None,
            until: Stamp | None = None) -> list[HistoryEntry]:
    """What changed ``path`` with stamps in (since, until] (until default: now).

    The path is resolved in the tree at ``until`` (an unproven cut is fine
    for a question), so it must exist then. Listed: every record that
    names its handle (failed calls too), the baseline's reading of it, and
    the names the proxy learned for it (BIND). A directory's history also
    holds the calls that changed its entries. Paths in the details are
    the paths as they were when each record was stamped (bare names
    before the baseline the cut starts from).
    """
    bound = until if until is not None else Stamp(time.time_ns(), *END_OF_NS)
    cut = client.cut(bound, allow_unproven=True)
    rel = clean_path(path)
    fh = client.tree(cut).lookup(rel)
    if fh is None:
        raise RestoreRefused(f"{show_name(b'/' + rel)} did not exist at {format_time(bound)} ({bound}); "
                             "give --until a moment when it did")
    request = FileRequest(fh=fh, after=since.to_bytes() if since is not None else b"",
                          until=bound.to_bytes(), with_data=False)
    # The tree as it was at each record: replayed alongside, up to just
    # before it, from the newest complete baseline that began by `since`
    # (the oldest one when there is no `since`), so that the paths of
    # records older than the cut's own baseline are known too.
    complete = complete_baselines(client.shards)
    start = complete[0]
    for b in complete:
        if since is not None and b.baseline_id <= since.to_bytes():
            start = b
    replay = dataclasses.replace(cut, baseline=start)
    after, until_raw = replay.window()
    tree = Tree(baseline_id=start.baseline_id)
    namespace = client.shards.scan(ScanRequest(after=after, until=until_raw, with_data=False,
                                             ops=sorted(TREE_OPS)))
    pending = next(namespace, None)
    out = []
    try:
        for record in client.shards.file_records(request):
            if record.op in (Op.BASELINE, Op.BIND) and record.fh != fh:
                continue  # a child read or named: its history, not this one's
            if record.op == Op.BASELINE and not record.baseline_first:
                continue  # content pieces after the first say nothing new
            while pending is not None and pending.stamp < record.stamp:
                tree.apply(pending)
                pending = next(namespace, None)
            out.append(_history_entry(record, fh, tree))
    finally:
        namespace.close()
    return out


def _acl_details(r: Record) -> str:
    """An ACL record's lists in getfacl's short form; "(none)" for an empty list."""
    parts = []
    if r.acl_mask & 0x1:
        parts.append(to_text(r.acl) or "(none)")
    if r.acl_mask & 0x4:
        parts.append(to_text(r.default_acl, "default:") or "default:(none)")
    return ",".join(parts)


def _history_entry(r: Record, fh: bytes, tree: Tree) -> HistoryEntry:
    def where(dir_fh: bytes, name: bytes) -> str:
        paths = tree.paths_of(dir_fh) if dir_fh else []
        base = b"/" + paths[0] if paths and paths[0] else b""
        return show_name(base + b"/" + name if paths else name)

    op = Op.Name(r.op) if r.op in Op.values() else str(r.op)
    details = ""
    if r.op in (Op.WRITE, Op.COMMIT):
        details = f"offset={r.offset} count={r.count}"
        if r.op == Op.WRITE and r.ok and r.reply_count != r.count:
            details += f" accepted={r.reply_count}"
    elif r.op == Op.SETATTR:
        s = r.set
        parts = [f"{n}={getattr(s, n):o}" if n == "mode" else f"{n}={getattr(s, n)}"
                 for n in ("mode", "uid", "gid", "size", "atime_ns", "mtime_ns") if s.HasField(n)]
        parts += [f"{n}=server" for n in ("atime", "mtime") if getattr(s, f"{n}_server")]
        details = " ".join(parts)
    elif r.op == Op.SETACL:
        details = _acl_details(r)
    elif r.op == Op.BIND:
        details = f"seen as {where(r.dir_fh, r.name)}"
    elif r.op in (Op.CREATE, Op.MKDIR, Op.SYMLINK, Op.MKNOD, Op.REMOVE, Op.RMDIR):
        details = where(r.dir_fh, r.name)
        if r.op == Op.SYMLINK:
            details += f" -> {show_name(r.symlink_target)}"
    elif r.op == Op.RENAME:
        details = f"{where(r.dir_fh, r.name)} -> {where(r.to_dir_fh, r.to_name)}"
    elif r.op == Op.LINK:
        details = f"new name {where(r.to_dir_fh, r.to_name)}"
    elif r.op == Op.BASELINE:
        details = f"baseline {Stamp.from_bytes(r.baseline_id) if r.baseline_id else '?'} read it"
        if r.dir_fh:
            details += f" as {where(r.dir_fh, r.name)}"
        if r.acl or r.default_acl:  # an object without ACLs needs no word on them
            details += f" acl {_acl_details(r)}"
    stamp = Stamp.from_bytes(r.stamp)
    return HistoryEntry(stamp, format_time(stamp), op, r.client, r.uid, r.gid, r.ok, r.status, details)
