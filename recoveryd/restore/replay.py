"""Per-file replay: one regular file's bytes and attributes at a cut, from its
records in stamp order, written onto an open file descriptor. No sockets: the
records come from the caller.

A baseline piece that starts the file truncates it, pieces and WRITEs are
written at their offsets (a WRITE only as far as the NAS accepted it), SETATTR
sizes and CREATEs truncate, and at the end the file gets the size of its
newest post-op attributes (the NAS's truth; ``recoveryd.tree.attr_key``
orders them), moved by any WRITE or size-setting SETATTR or CREATE without
attributes that came after them: NFSv3 replies may omit post-op
attributes, and a record rebuilt from its write-ahead intent has none.

A record stamped *before* a baseline piece but applied by the NAS *after* the
piece's read (a call still in flight when the baseline read the file) is
replayed before the piece and so is lost under it. The baseline prevents this
by reading a file only once the proxy's stable stamp has passed the piece's
stamp (nfsproxy/nas/baseline.py).
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Protocol

from logstore.pb.journal_pb2 import Attr, Op, Record

from ..tree import attr_key

__all__ = ["DATA_OPS", "FileReplay", "FileOut", "FdOut", "BufferOut", "replay", "replay_onto",
           "pwrite_all"]

#: Ops that change a regular file's bytes or size.
DATA_OPS = frozenset({Op.BASELINE, Op.WRITE, Op.SETATTR, Op.CREATE})
# Plain ints for the per-record loops (an enum wrapper's attribute costs a call).
_BASELINE, _WRITE, _SETATTR, _CREATE = int(Op.BASELINE), int(Op.WRITE), int(Op.SETATTR), int(Op.CREATE)


class FileReplay:
    """One file's replay, a record at a time: ``apply`` each record naming it in
    stamp order, then ``finish``. What it decides goes to ``out`` (a
    ``FileOut``: the file itself, or a queue to a writer thread); ``size`` is
    the file's size when the replay starts (0: a new file).

    The replay keeps the file's size itself, so that it never truncates a
    file to the size it already has: on ext4 a truncate to 0 of a file that
    is then written makes its close start writeback (``auto_da_alloc``),
    which a restore of thousands of files must not pay per file."""

    __slots__ = ("fh", "_out", "attr", "_key", "size", "_attr_size")

    def __init__(self, fh: bytes, out: FileOut, size: int = 0) -> None:
        self.fh = fh
        self._out = out
        self.attr: Attr | None = None
        self._key = (0, b"")
        self.size = size
        self._attr_size = 0  # ``attr``'s size, moved by changes without attributes after it

    def apply(self, record: Record, data: bytes | memoryview | None = None) -> int:
        """Apply one record (records that do not name this file as ``fh`` change
        nothing); returns the bytes it wrote. ``data``: the record's data, when
        it came apart from the record (``Shards.scan_apart``)."""
        if not record.ok or record.fh != self.fh:
            return 0
        op = record.op
        has_attr = record.HasField("attr")
        if has_attr:
            k = attr_key(record.attr, record.stamp)
            if self.attr is None or k >= self._key or (op == _BASELINE and record.baseline_first):
                self.attr, self._key, self._attr_size = record.attr, k, record.attr.size
        if op == _BASELINE or op == _WRITE:
            if data is None:
                data = record.data  # a copy at each access: once
            if op == _BASELINE and record.baseline_first:
                self._truncate(0)
            elif op == _WRITE and 0 < record.reply_count < len(data):
                data = data[:record.reply_count]  # the NAS accepted only this much
            if data:
                self._write(data, record.offset)
                if op == _WRITE and not has_attr:
                    self._attr_size = max(self._attr_size, record.offset + len(data))
            return len(data)
        if op == _SETATTR:
            if record.set.HasField("size"):
                self._truncate(record.set.size)
                if not has_attr:
                    self._attr_size = record.set.size
        elif op == _CREATE:
            if has_attr:
                self._truncate(record.attr.size)
            elif record.set.HasField("size"):
                self._truncate(record.set.size)
                self._attr_size = record.set.size
        return 0

    def finish(self) -> tuple[int, Attr | None]:
        """The file's size and newest attributes (None if no record carried any);
        the file is cut to the size of those attributes, the NAS's truth, as
        changes without attributes since moved it."""
        if self.attr is not None:
            self._truncate(self._attr_size)
        return self.size, self.attr

    def _truncate(self, size: int) -> None:
        if size != self.size:
            self._out.truncate(size)
            self.size = size

    def _write(self, data: bytes, offset: int) -> None:
        self._out.write(data, offset)
        self.size = max(self.size, offset + len(data))


class FileOut(Protocol):
    """Where a ``FileReplay`` puts one file's bytes."""

    def truncate(self, size: int) -> None: ...

    def write(self, data: bytes, offset: int) -> None: ...


class FdOut:
    """A ``FileOut`` writing straight to an open file descriptor."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def write(self, data: bytes, offset: int) -> None:
        pwrite_all(self.fd, data, offset)


class BufferOut:
    """A ``FileOut`` in memory: the file's bytes in ``buf``, holes as zeros,
    as a file written and truncated the same way would read."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def truncate(self, size: int) -> None:
        if size < len(self.buf):
            del self.buf[size:]
        else:
            self.buf.extend(bytes(size - len(self.buf)))

    def write(self, data: bytes, offset: int) -> None:
        if not data:
            return   # as pwrite: writing nothing extends nothing
        if offset > len(self.buf):
            self.buf.extend(bytes(offset - len(self.buf)))
        self.buf[offset:offset + len(data)] = data


def replay(records: Iterable[Record], fh: bytes, fd: int,
           seen: Callable[[Record], None] | None = None) -> tuple[int, Attr | None]:
    """Replay ``fh``'s ``records`` (stamp order, the cut's baseline only) onto the
    open file ``fd``; returns its size and newest attributes (None if no record
    carried any). ``seen`` is shown every record on the way (``Tree.apply``,
    say, to learn the object's type in the same pass)."""
    return replay_onto(records, fh, FdOut(fd), os.fstat(fd).st_size, seen)


def replay_onto(records: Iterable[Record], fh: bytes, out: FileOut, size: int = 0,
                seen: Callable[[Record], None] | None = None) -> tuple[int, Attr | None]:
    """``replay`` onto any ``FileOut`` (``size``: what it holds now)."""
    file = FileReplay(fh, out, size)
    for record in records:
        if seen is not None:
            seen(record)
        file.apply(record)
    return file.finish()


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (pwrite may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n

