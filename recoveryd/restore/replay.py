"""Per-file replay: one regular file's bytes and attributes at a cut, from its
records in stamp order, written onto an open file descriptor. No sockets: the
records come from the caller.

A baseline piece that starts the file truncates it, pieces and WRITEs are
written at their offsets (a WRITE only as far as the NAS accepted it), SETATTR
sizes and CREATEs truncate, and at the end the file gets the size of its
newest post-op attributes (the NAS's truth; ``recoveryd.tree.attr_key``
orders them).

A record stamped *before* a baseline piece but applied by the NAS *after* the
piece's read (a call still in flight when the baseline read the file) is
replayed before the piece and so is lost under it. The baseline prevents this
by reading a file only once the proxy's stable stamp has passed the piece's
stamp (nfsproxy/nas/baseline.py).
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

from logstore.pb.journal_pb2 import Attr, Op, Record

from ..tree import attr_key

__all__ = ["DATA_OPS", "replay", "newest_attr"]

#: Ops that change a regular file's bytes or size.
DATA_OPS = frozenset({Op.BASELINE, Op.WRITE, Op.SETATTR, Op.CREATE})
# Plain ints for the per-record loops (an enum wrapper's attribute costs a call).
_BASELINE, _WRITE, _SETATTR, _CREATE = int(Op.BASELINE), int(Op.WRITE), int(Op.SETATTR), int(Op.CREATE)


def replay(records: Iterable[Record], fh: bytes, fd: int,
           seen: Callable[[Record], None] | None = None) -> tuple[int, Attr | None]:
    """Replay ``fh``'s ``records`` (stamp order, the cut's baseline only) onto the
    open file ``fd``; returns its size and newest attributes (None if no record
    carried any). ``seen`` is shown every record on the way (``Tree.apply``,
    say, to learn the object's type in the same pass)."""
    attr: Attr | None = None
    key = (0, b"")
    for record in records:
        if seen is not None:
            seen(record)
        if not record.ok:
            continue
        if record.fh == fh and record.HasField("attr"):
            k = attr_key(record.attr, record.stamp)
            if attr is None or k >= key or (record.op == _BASELINE and record.baseline_first):
                attr, key = record.attr, k
        if record.fh != fh or record.op not in DATA_OPS:
            continue
        op = record.op
        if op == _BASELINE:
            if record.baseline_first:
                os.ftruncate(fd, 0)
            if record.data:
                _pwrite_all(fd, record.data, record.offset)
        elif op == _WRITE:
            data = record.data
            if 0 < record.reply_count < len(data):
                data = data[:record.reply_count]  # the NAS accepted only this much
            if data:
                _pwrite_all(fd, data, record.offset)
        elif op == _SETATTR:
            if record.set.HasField("size"):
                os.ftruncate(fd, record.set.size)
        elif op == _CREATE:
            if record.HasField("attr"):
                os.ftruncate(fd, record.attr.size)
            elif record.set.HasField("size"):
                os.ftruncate(fd, record.set.size)
    if attr is not None:
        os.ftruncate(fd, attr.size)
        return attr.size, attr
    return os.fstat(fd).st_size, None


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def newest_attr(fh: bytes, records: Iterable[Record]) -> Attr | None:
    """The newest attributes of ``fh`` any of ``records`` carries (None: none does)."""
    attr, key = None, (0, b"")
    for record in records:
        if record.ok and record.fh == fh and record.HasField("attr"):
            k = attr_key(record.attr, record.stamp)
            if attr is None or k >= key or (record.op == Op.BASELINE and record.baseline_first):
                attr, key = record.attr, k
        for field, other in (("dir_attr", record.dir_fh), ("to_dir_attr", record.to_dir_fh)):
            if record.ok and other == fh and record.HasField(field):
                a = getattr(record, field)
                k = attr_key(a, record.stamp)
                if attr is None or k >= key:
                    attr, key = a, k
    return attr

