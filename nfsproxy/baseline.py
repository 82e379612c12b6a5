"""Baseline: a full read of the export, journaled like any mutation.

A journal alone holds only changes; a restore needs a starting point. The
baseline walks the export straight on the NAS (READDIRPLUS + READ with our
own client, not through the relay) while clients keep writing through the
proxy, and appends what it reads to the proxy's LOG as BASELINE records, so
it is stamped by the same clock, shipped by the same shippers and exactly
as durable as the journal (a wiped shard is rebuilt from the LOG with its
baseline).

Stamping rule: each piece is stamped *before* its bytes are read and is in
flight (holding back the proxy's stable stamp) until it is in the LOG. Any
change the NAS applied after that stamp has a later stamp, so a restore
replays it on top of the piece; writes and truncates replayed over a state
they partly produced give the same result (see proto/journal.proto, Op
BASELINE).

Layout of one baseline in the LOG: BASELINE_BEGIN (its stamp is the
baseline's id), the root, then for every entry a piece with the binding
(dir fh, name) and attributes, file contents in pieces of at most
`chunk_bytes`, and BASELINE_END with the counts. A restore may start from a
baseline only once its END is held (it "ended" at the END's stamp).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from typing import Callable

from logstore.record import Op, Record
from recoveryd.tree import show_name

from .capture import fattr_to_attr
from .client import NfsClient, NfsError
from .nfs3 import Ftype3

__all__ = ["BaselineProgress", "run_baseline"]

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 1 << 20


@dataclasses.dataclass(slots=True)
class BaselineProgress:
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    current: str = ""
    baseline_id: bytes = b""
    end: bytes = b""
    done: bool = False


async def run_baseline(proxy, client_factory: Callable[[], NfsClient], *,
                       chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                       progress: Callable[[BaselineProgress], None] = lambda p: None) -> BaselineProgress:
    """Scan the whole export into the proxy's LOG.

    `proxy` is the running `nfsproxy.relay.Proxy` (its clock and journal);
    `client_factory` opens an NfsClient straight to the NAS.
    """
    scan = _Scan(proxy, chunk_bytes, progress)
    client = await asyncio.to_thread(client_factory)
    try:
        root = await asyncio.to_thread(client.mount)
        await scan.begin()
        await scan.walk(client, root)
        await scan.end()
    finally:
        await asyncio.to_thread(client.close)
    return scan.state


class _Scan:
    def __init__(self, proxy, chunk_bytes: int, progress: Callable[[BaselineProgress], None]):
        self.proxy = proxy
        self.chunk_bytes = chunk_bytes
        self.progress = progress
        self.state = BaselineProgress()
        self._seen_fileids: set[int] = set()

    async def _journal(self, record: Record, data: memoryview | bytes | None = None, key: object = None) -> None:
        """Append `record` (already stamped under `key`, or stamped now) and release its stamp."""
        key = key if key is not None else object()
        if not record.stamp:
            record.stamp = self.proxy.stamp_call(id(key))
        try:
            await self.proxy.journal.append(record, data)
        finally:
            self.proxy.release(id(key))

    def _stamp(self, key: object) -> bytes:
        return self.proxy.stamp_call(id(key))

    async def begin(self) -> None:
        record = Record(op=Op.BASELINE_BEGIN, ok=True)
        key = object()
        record.stamp = self._stamp(key)
        record.baseline_id = record.stamp
        self.state.baseline_id = record.stamp
        await self._journal(record, key=key)

    async def end(self) -> None:
        s = self.state
        record = Record(op=Op.BASELINE_END, ok=True, baseline_id=s.baseline_id,
                        baseline_files=s.files, baseline_bytes=s.bytes)
        key = object()
        record.stamp = self._stamp(key)
        s.end = record.stamp
        await self._journal(record, key=key)
        s.done = True
        self.progress(s)

    async def walk(self, client: NfsClient, start_fh: bytes) -> None:
        """Breadth-first over the export, then over whatever moved into
        directories already listed while the walk went on (see `_catch_moves`)."""
        attrs = (await asyncio.to_thread(client.getattr, start_fh)).obj_attributes
        root_stamp = await self._piece(client, start_fh, b"", b"", attrs, b"/")
        dirs: deque[tuple[bytes, bytes, bytes]] = deque([(start_fh, b"", root_stamp)])
        moved: list[tuple[bytes, bytes]] = []
        watch = lambda record: moved.append((record.to_dir_fh, record.to_name))  # noqa: E731
        self.proxy.namespace_watchers.add(watch)
        try:
            await self._walk(client, dirs)
            while moved:
                batch, moved[:] = list(moved), []
                await self._catch_moves(client, batch, dirs)
                await self._walk(client, dirs)
        finally:
            self.proxy.namespace_watchers.discard(watch)

    async def _walk(self, client: NfsClient, dirs: deque[tuple[bytes, bytes, bytes]]) -> None:
        while dirs:
            dir_fh, dir_path, piece_stamp = dirs.popleft()
            self.state.dirs += 1
            # The directory's piece (which resets its entries at restore) is
            # older than this listing: let every call stamped before it land first.
            await self.proxy.settle_below(piece_stamp)
            try:
                entries = await asyncio.to_thread(lambda: list(client.readdirplus(dir_fh)))
            except NfsError as e:
                if e.status.name != "NFS3ERR_STALE":
                    raise
                continue  # removed since its piece: the RMDIR is in the journal
            for entry in entries:
                if entry.name_handle is None:
                    continue
                await self._entry(client, dirs, dir_fh, entry.name, entry.name_handle,
                                  entry.name_attributes, dir_path + b"/" + entry.name)

    async def _entry(self, client: NfsClient, dirs, dir_fh: bytes, name: bytes, fh: bytes, attrs,
                     path: bytes) -> None:
        if attrs is None:
            attrs = (await asyncio.to_thread(client.getattr, fh)).obj_attributes
        stamp = await self._piece(client, fh, dir_fh, name, attrs, path)
        if stamp is not None and attrs.type is Ftype3.NF3DIR:
            dirs.append((fh, path, stamp))

    async def _catch_moves(self, client: NfsClient, moved: list[tuple[bytes, bytes]], dirs) -> None:
        """An object renamed (or linked) during the walk from a directory not yet
        listed into one already listed would be in neither listing. Read every
        such target once more; objects already read are only bound again."""
        for dir_fh, name in moved:
            try:
                found = await asyncio.to_thread(client.lookup, dir_fh, name)
            except NfsError:
                continue  # gone again: the journal has what happened to it
            await self._entry(client, dirs, dir_fh, name, found.object, found.obj_attributes,
                              b"(moved)/" + name)

    async def _piece(self, client: NfsClient, fh: bytes, dir_fh: bytes, name: bytes, attrs,
                     path: bytes) -> bytes | None:
        """Journal one entry: its binding and attributes, and its content if it is new.

        Returns the stamp of its (first) piece, or None if it vanished first."""
        s = self.state
        s.current = show_name(path)  # for people: progress goes out as a proto string
        first = attrs.fileid not in self._seen_fileids
        self._seen_fileids.add(attrs.fileid)
        record = Record(op=Op.BASELINE, ok=True, fh=fh, dir_fh=dir_fh, name=name,
                        baseline_id=s.baseline_id, baseline_first=first)
        key = object()
        record.stamp = stamp = self._stamp(key)
        if not (first and attrs.type is Ftype3.NF3REG):
            # The listing's attributes predate this stamp: a SETATTR stamped
            # in between would be replayed first and then overwritten by them.
            # Read them again once every call stamped before the piece landed.
            await self.proxy.settle_below(stamp, id(key))
            try:
                attrs = (await asyncio.to_thread(client.getattr, fh)).obj_attributes
                if first and attrs.type is Ftype3.NF3LNK:
                    record.symlink_target = (await asyncio.to_thread(client.readlink, fh)).data
            except NfsError as e:
                self.proxy.release(id(key))
                if e.status.name != "NFS3ERR_STALE":
                    raise
                return None  # removed since the listing: its REMOVE is in the journal
            fattr_to_attr(record.attr, attrs)
            await self._journal(record, key=key)
            self.progress(s)
            return stamp
        s.files += 1
        await self._file(client, record, key, attrs)
        return stamp

    async def _file(self, client: NfsClient, record: Record, key: object, attrs) -> None:
        """Journal a regular file's content in pieces, each stamped before its read."""
        s = self.state
        offset = 0
        while True:
            await self.proxy.settle_below(record.stamp, id(key))
            res = await asyncio.to_thread(client.read, record.fh, offset, self.chunk_bytes)
            fattr_to_attr(record.attr, res.file_attributes or attrs)
            record.offset = offset
            await self._journal(record, res.data, key=key)
            s.bytes += len(res.data)
            offset += len(res.data)
            self.progress(s)
            if res.eof or not res.data:
                return
            key = object()
            record = Record(op=Op.BASELINE, ok=True, fh=record.fh, baseline_id=s.baseline_id,
                            stamp=self._stamp(key))
