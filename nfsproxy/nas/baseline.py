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

Every stamp the scan takes is released on every path: journaled, the object
gone (`NFS3ERR_STALE`/`NOENT` between listing and reading: skipped and
counted, its REMOVE is in the journal), an NFS or transport error (the
baseline fails), or a cancelled baseline. A stamp left in flight would hold
the proxy's stable stamp, and so the consistent point, back for good.

POSIX ACLs: where the NAS serves NFSACL v3 (asked once, with the first
object's GETACL: PROG_UNAVAIL or PROG_MISMATCH means it has none, and the
scan goes on without), each object's first piece also carries its access
ACL, and a directory's its default ACL (Record.acl_mask says which), read
after its attributes, so that ACLs that exist on the NAS are restorable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from typing import Any, Callable

from logstore.record import Op, Record
from recoveryd.tree import show_name

from nfsproxy.wire import nfsacl
from nfsproxy.relay.capture import fattr_to_attr, set_acl_fields
from nfsproxy.nas.client import NfsClient, NfsError, RpcError
from nfsproxy.wire.nfs3 import Ftype3, Nfsstat3
from nfsproxy.wire.rpc import AcceptStat

__all__ = ["BaselineProgress", "run_baseline"]

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 1 << 20

#: What the NAS answers for an object removed since it was listed.
_GONE = (Nfsstat3.NFS3ERR_STALE, Nfsstat3.NFS3ERR_NOENT)


def _gone(e: NfsError) -> bool:
    return e.status in _GONE


@dataclasses.dataclass(slots=True)
class BaselineProgress:
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    current: str = ""
    baseline_id: bytes = b""
    end: bytes = b""
    done: bool = False
    vanished: int = 0  # objects removed between their listing and their read: skipped
    acls: bool | None = None  # the NAS serves NFSACL (None: not asked yet)


async def run_baseline(proxy, client_factory: Callable[[], NfsClient], *,
                       chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                       progress: Callable[[BaselineProgress], None] = lambda p: None) -> BaselineProgress:
    """Scan the whole export into the proxy's LOG.

    `proxy` is the running `nfsproxy.relay.session.Proxy` (its clock and journal);
    `client_factory` opens an NfsClient straight to the NAS. Cancelling the
    task stops the scan and releases every stamp it holds; the baseline then
    has no END and no restore starts from it.
    """
    scan = _Scan(proxy, chunk_bytes, progress)
    client = await asyncio.to_thread(client_factory)
    try:
        root = await scan.nfs(client.mount)
        await scan.begin()
        await scan.walk(client, root)
        await scan.end()
    finally:
        scan.release_all()
        await asyncio.to_thread(client.close)
    return scan.state


class _Scan:
    def __init__(self, proxy, chunk_bytes: int, progress: Callable[[BaselineProgress], None]):
        self.proxy = proxy
        self.chunk_bytes = chunk_bytes
        self.progress = progress
        self.state = BaselineProgress()
        self._seen_fileids: set[int] = set()
        # Stamps in flight, by key; the key objects stay alive so that their
        # ids cannot be reused by the relay's calls while they are held.
        self._held: dict[int, object] = {}

    # -- stamps and NFS calls ---------------------------------------------------

    def _stamp(self) -> tuple[int, bytes]:
        """A fresh stamp, in flight under the returned key until `_release`."""
        token = object()
        key = id(token)
        self._held[key] = token
        return key, self.proxy.stamp_call(key)

    def _release(self, key: int) -> None:
        self._held.pop(key, None)
        self.proxy.release(key)

    def release_all(self) -> None:
        """Release every stamp still held (the scan failed or was cancelled)."""
        for key in list(self._held):
            self._release(key)

    async def nfs(self, call: Callable[..., Any], *args: Any) -> Any:
        """Run one blocking NFS call in a thread. On cancellation, wait for the
        call to end first: the client must not be closed (its socket's fd
        reused) under a thread still reading from it."""
        running = asyncio.ensure_future(asyncio.to_thread(call, *args))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            await asyncio.wait([running])
            raise

    async def _journal(self, record: Record, key: int, data: memoryview | bytes | None = None) -> None:
        """Append `record` (stamped under `key`) and release its stamp. A
        record the quota dropped (passthrough) ends the baseline: an END
        after it would stand for an image the journal does not hold."""
        try:
            seq = await self.proxy.journal.append(record, data)
        finally:
            self._release(key)
        if seq is None:
            raise RuntimeError("the LOG is over its quota (passthrough policy) and dropped the "
                               "baseline's records; free LOG space (--quota, --log-retain) and run "
                               "it again")

    def _vanished(self, path: bytes) -> None:
        self.state.vanished += 1
        logger.debug("baseline: %s was removed before it was read; skipped", show_name(path))

    # -- the walk -----------------------------------------------------------------

    async def begin(self) -> None:
        key, stamp = self._stamp()
        record = Record(op=Op.BASELINE_BEGIN, ok=True, stamp=stamp, baseline_id=stamp)
        self.state.baseline_id = stamp
        await self._journal(record, key)

    async def end(self) -> None:
        s = self.state
        key, stamp = self._stamp()
        record = Record(op=Op.BASELINE_END, ok=True, stamp=stamp, baseline_id=s.baseline_id,
                        baseline_files=s.files, baseline_bytes=s.bytes)
        s.end = stamp
        await self._journal(record, key)
        s.done = True
        self.progress(s)

    async def walk(self, client: NfsClient, start_fh: bytes) -> None:
        """Breadth-first over the export, then over whatever moved into
        directories already listed while the walk went on (see `_catch_moves`)."""
        attrs = (await self.nfs(client.getattr, start_fh)).obj_attributes
        root_stamp = await self._piece(client, start_fh, b"", b"", attrs, b"/")
        if root_stamp is None:
            raise RuntimeError("the export's root vanished during the baseline")
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
                entries = await self.nfs(lambda: list(client.readdirplus(dir_fh)))
            except NfsError as e:
                if not _gone(e):
                    raise
                self._vanished(dir_path or b"/")  # its RMDIR is in the journal
                continue
            for entry in entries:
                if entry.name_handle is None:
                    continue
                await self._entry(client, dirs, dir_fh, entry.name, entry.name_handle,
                                  entry.name_attributes, dir_path + b"/" + entry.name)

    async def _entry(self, client: NfsClient, dirs, dir_fh: bytes, name: bytes, fh: bytes, attrs,
                     path: bytes) -> None:
        if attrs is None:
            try:
                attrs = (await self.nfs(client.getattr, fh)).obj_attributes
            except NfsError as e:
                if not _gone(e):
                    raise
                self._vanished(path)
                return
        stamp = await self._piece(client, fh, dir_fh, name, attrs, path)
        if stamp is not None and attrs.type is Ftype3.NF3DIR:
            dirs.append((fh, path, stamp))

    async def _catch_moves(self, client: NfsClient, moved: list[tuple[bytes, bytes]], dirs) -> None:
        """An object renamed (or linked) during the walk from a directory not yet
        listed into one already listed would be in neither listing. Read every
        such target once more; objects already read are only bound again."""
        for dir_fh, name in moved:
            try:
                found = await self.nfs(client.lookup, dir_fh, name)
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
        key, stamp = self._stamp()
        record = Record(op=Op.BASELINE, ok=True, stamp=stamp, fh=fh, dir_fh=dir_fh, name=name,
                        baseline_id=s.baseline_id, baseline_first=first)
        try:
            if first and attrs.type is Ftype3.NF3REG:
                return stamp if await self._file(client, record, key, attrs, path) else None
            if not await self._attributes(client, record, key, first, path):
                return None
        finally:
            self._release(key)  # a no-op once journaled
        self.progress(s)
        return stamp

    async def _attributes(self, client: NfsClient, record: Record, key: int, first: bool,
                          path: bytes) -> bool:
        """Journal a piece holding the object's attributes (and a new symlink's
        target); False if the object is gone."""
        # The listing's attributes predate this stamp: a SETATTR stamped
        # in between would be replayed first and then overwritten by them.
        # Read them again once every call stamped before the piece landed.
        await self.proxy.settle_below(record.stamp, key)
        try:
            attrs = (await self.nfs(client.getattr, record.fh)).obj_attributes
            if first and attrs.type is Ftype3.NF3LNK:
                record.symlink_target = (await self.nfs(client.readlink, record.fh)).data
            if first and attrs.type is not Ftype3.NF3LNK:  # a symlink has no ACL of its own
                await self._acls(client, record, attrs.type is Ftype3.NF3DIR)
        except NfsError as e:
            if not _gone(e):
                raise
            self._vanished(path)  # its REMOVE is in the journal
            return False
        fattr_to_attr(record.attr, attrs)
        await self._journal(record, key)
        return True

    async def _acls(self, client: NfsClient, record: Record, is_dir: bool) -> None:
        """Put the object's POSIX ACLs into its first piece, where the NAS has NFSACL.

        Raises NfsError for an object that is gone (the caller skips it);
        another NFS failure leaves the piece without ACLs (none known)."""
        if self.state.acls is False:
            return
        mask = nfsacl.NFS_ACL | nfsacl.NFS_ACLCNT
        if is_dir:
            mask |= nfsacl.NFS_DFACL | nfsacl.NFS_DFACLCNT
        try:
            res = await self.nfs(client.getacl, record.fh, mask)
        except RpcError as e:  # NFSACL is asked on the NFS connection, as Linux does
            if e.reply.accept_stat in (AcceptStat.PROG_UNAVAIL, AcceptStat.PROG_MISMATCH):
                self.state.acls = False
                logger.info("baseline: the NAS does not serve NFSACL v3 (%s); reading no ACLs", e)
                return
            raise
        except NfsError as e:
            if _gone(e):
                raise
            logger.debug("baseline: GETACL of %s failed (%s); its ACLs stay unknown",
                         record.fh.hex(), e.status.name)
            return
        self.state.acls = True
        set_acl_fields(record, res.mask & mask, res.acl.entries, res.default_acl.entries)

    async def _file(self, client: NfsClient, record: Record, key: int, attrs, path: bytes) -> bool:
        """Journal a regular file's content in pieces, each stamped before its read.

        False if it was gone before its first piece. Gone later, it keeps the
        pieces already journaled: its REMOVE is stamped after them."""
        s = self.state
        offset = 0
        while True:
            await self.proxy.settle_below(record.stamp, key)
            try:
                res = await self.nfs(client.read, record.fh, offset, self.chunk_bytes)
                if offset == 0 and record.baseline_first:
                    await self._acls(client, record, False)
            except NfsError as e:
                if not _gone(e):
                    raise
                self._release(key)
                self._vanished(path)
                return offset > 0
            if offset == 0:
                s.files += 1
            fattr_to_attr(record.attr, res.file_attributes or attrs)
            record.offset = offset
            await self._journal(record, key, res.data)
            s.bytes += len(res.data)
            offset += len(res.data)
            self.progress(s)
            if res.eof or not res.data:
                return True
            key, stamp = self._stamp()
            record = Record(op=Op.BASELINE, ok=True, fh=record.fh, baseline_id=s.baseline_id,
                            stamp=stamp)
