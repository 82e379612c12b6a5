"""Push-back: write the tree as of a cut back onto the NAS, over NFS.

`push_to_nas(client, cut, nfs, path=..., into=...)` takes the tree of a cut
from the Restore API (`RestoreClient.tree`), reads each file's content
through it (`RestoreClient.read`; a read-ahead fetches the contents in bulk
fills, in the order the files are pushed, a bounded amount ahead, and each
file leaves the read cache once written) and recreates everything with our NFS
client (`nfsproxy.nas.client.NfsClient`): MKDIR, CREATE GUARDED, WRITE in 1 MiB
chunks (UNSTABLE, then one COMMIT per file, rewriting the file if the write
verifier changed in between; a file of one WRITE is written FILE_SYNC,
with no COMMIT), SYMLINK, LINK for a second name of an object already
pushed, MKNOD for FIFOs, sockets and devices. Attributes come last: one
SETATTR of owner, mode and times (owner first, on its own, when the mode has
setuid or setgid bits, which a chown clears), for each object after its
content (writes change mtime), and for directories bottom-up once
everything inside them exists (a new entry changes its directory's mtime).
Objects are created owner-only (0700 directories, 0600 files) until then,
so a read-only mode in the tree cannot stop its own restore. Names are made
in order by the caller's thread; with `connect`, files are filled (content,
COMMIT, attributes) by several threads, each over its own connection.

Where it goes (nothing live is ever overwritten):

* `into=SUBDIR`: a new directory SUBDIR of the export (its parent must
  exist; SUBDIR must not). A directory's content goes straight into it; a
  single non-directory goes into it under its own name.
* otherwise the original place of `path`: the path must not exist on the
  NAS (its missing parent directories are created, with their attributes at
  the cut). The export root always exists, so restoring all of it needs
  `into`.

The top object is made with a call that fails if the name exists (MKDIR, or
CREATE GUARDED), so the "does not exist" check cannot race with the NAS.
The NFS client may talk to the NAS itself or to a proxy in front of it
(`--nas HOST:PORT:PORT:/EXPORT` with the proxy's port): then the push-back is
journaled like any other change.

Errors: `PushbackError` (a one-line message saying what to do) for what the
user can fix; `NfsError`/`OSError` from the NAS mid-way propagate after
naming the path they were about. Attribute changes the NAS refuses (an
owner change on a root-squashed export, times on a symlink) do not stop the
restore: they are counted in `PushResult.warnings`.

POSIX ACLs the tree knows (journaled SETACLs, ACLs a baseline read) are set
with NFSACL v3 SETACL before the mode (a mode change then rewrites the
ACL's owner, mask and other entries as the NAS's own mode did). A NAS
without NFSACL, or one that fails SETACL (ganesha 4.3 refuses every SETACL
with GARBAGE_ARGS), gets the objects without their ACLs: counted in
`PushResult.acls_not_set` and reported, never silently.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import threading
from typing import Any, Callable, Final, Iterator

from recoveryd.restore.bulk import fills
from recoveryd.tree import BLK, CHR, DIR, FIFO, LNK, REG, SOCK, show_name

from nfsproxy.wire import nfsacl
from nfsproxy.nas.client import ClientError, NfsClient, NfsError, ProtocolError, RpcError, created_fh, sattr3
from nfsproxy.wire.nfs3 import Ftype3, Nfsstat3, StableHow
from nfsproxy.nas.target import PushbackError, nas_target
from nfsproxy.relay.session import BackendAddress
from nfsproxy.wire.rpc import AcceptStat

__all__ = ["push_to_nas", "PushbackError", "PushResult", "CHUNK_BYTES", "FILLERS", "nas_target",
           "connect_nas"]

logger = logging.getLogger(__name__)

#: Bytes per WRITE (the Linux client's largest wsize).
CHUNK_BYTES: Final = 1 << 20
_CLEARED_BY_CHOWN: Final = 0o6000  # setuid, setgid
#: Files filled at once, each over a connection of its own (push_to_nas's `connect`).
FILLERS: Final = 8
#: The contents are fetched FILL_BYTES a bulk fill, at most READ_AHEAD_BYTES
#: ahead of the fillers (held in the read cache until written).
FILL_BYTES: Final = 64 << 20
READ_AHEAD_BYTES: Final = 192 << 20
_COMMIT_ATTEMPTS: Final = 3
_DIR_MODE_WHILE_FILLING: Final = 0o700
_FILE_MODE_WHILE_FILLING: Final = 0o600

_MKNOD_TYPES: Final = {FIFO: Ftype3.NF3FIFO, SOCK: Ftype3.NF3SOCK, CHR: Ftype3.NF3CHR,
                       BLK: Ftype3.NF3BLK}
_TYPE_NAMES: Final = {REG: "file", DIR: "directory", LNK: "symlink", FIFO: "fifo", SOCK: "socket",
                      CHR: "character device", BLK: "block device"}


@dataclasses.dataclass(slots=True)
class PushResult:
    """What a push-back did. `target` is the path on the export it wrote."""

    target: str
    dirs: int = 0
    files: int = 0
    symlinks: int = 0
    specials: int = 0
    hard_links: int = 0
    bytes: int = 0
    skipped: int = 0            # names whose object's type the journal never saw
    acls: int = 0               # objects whose POSIX ACLs were set (NFSACL SETACL)
    acls_not_set: int = 0       # objects whose ACLs the NAS did not take (no NFSACL, or SETACL failed)
    warnings: list[str] = dataclasses.field(default_factory=list)

    nas: str = ""               # the NAS, as --nas names it

    @property
    def objects(self) -> int:
        return self.dirs + self.files + self.symlinks + self.specials + self.hard_links

    def __str__(self) -> str:
        parts = [f"{self.files} files ({self.bytes} bytes)", f"{self.dirs} directories",
                 f"{self.symlinks} symlinks"]
        if self.specials:
            parts.append(f"{self.specials} special files")
        if self.hard_links:
            parts.append(f"{self.hard_links} extra hard links")
        where = f"{self.nas.rstrip('/')}/{self.target}" if self.nas else f"/{self.target}"
        text = f"pushed {', '.join(parts)} onto the NAS at {where}"
        if self.skipped:
            text += f"; skipped {self.skipped} of unknown type"
        if self.acls:
            text += f"; POSIX ACLs set on {self.acls}"
        if self.acls_not_set:
            text += f"; POSIX ACLs NOT set on {self.acls_not_set} object(s)"
        if self.warnings:
            text += f"; {len(self.warnings)} attribute(s) not set (first: {self.warnings[0]})"
        return text


def _split(path: bytes | str) -> list[bytes]:
    # Names are bytes; a path from a command line is os.fsencoded back into them.
    parts = [p for p in os.fsencode(path).split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise PushbackError(f"{show_name(path)}: '..' is not allowed in a push-back path")
    return parts


def push_to_nas(client: Any, cut: Any, nfs: NfsClient, *, path: bytes | str | None = None,
                into: bytes | str | None = None,
                progress: Callable[..., None] | None = None, tree: Any = None,
                connect: Callable[[], NfsClient] | None = None,
                fillers: int = FILLERS) -> PushResult:
    """Write the tree as of `cut` (or the subtree at `path`) back onto the NAS.

    `client` is a `recoveryd.restore.RestoreClient`; `nfs` an `NfsClient` of
    the NAS's export (mounted here if it is not yet). `progress(files, bytes,
    current_path)` is called as objects are written. `tree` may be passed
    when the caller already has the cut's tree. `connect()` opens another
    client of the same export: with it, `fillers` threads, each with its own
    connection, fill the files (content, COMMIT, attributes) while the names
    are made here, in order. Returns a `PushResult`.
    """
    if tree is None:
        tree = client.tree(cut, file_sizes=True)  # with files' attributes as of the cut
    src_parts = _split(path or b"")
    src_rel = b"/".join(src_parts)
    src_fh = tree.lookup(src_rel)
    if src_fh is None or tree.node(src_fh) is None or not tree.node(src_fh).type:
        raise PushbackError(f"{show_name(b'/' + src_rel)} did not exist at the cut "
                            f"{getattr(cut, 'at', cut)}; "
                            "nothing to push back")
    pusher = _Pusher(client, cut, nfs, tree, progress, _Fillers(nfs, connect, fillers))
    pusher.top = src_fh
    try:
        with pusher.fillers:
            return _push(pusher, src_fh, src_parts, src_rel, into)
    except _FillFailed as e:
        if not isinstance(e.error, (NfsError, ClientError, OSError)):
            raise e.error from None  # a PushbackError, a shard's error: as the caller's thread raises them
        left = f"; {pusher.result.target} on the NAS is incomplete" if pusher.result.target else ""
        raise PushbackError(f"the NAS failed at {show_name(e.rel)}: {e.error}{left}") from None
    except (NfsError, ClientError, OSError) as e:
        where = f" at {show_name(pusher.current)}" if pusher.current else ""
        left = f"; {pusher.result.target} on the NAS is incomplete" if pusher.result.target else ""
        raise PushbackError(f"the NAS failed{where}: {e}{left}") from None
    finally:
        if pusher.ahead is not None:
            pusher.ahead.stop()


def _push(pusher: "_Pusher", src_fh: bytes, src_parts: list[bytes], src_rel: bytes,
          into: bytes | str | None) -> PushResult:
    nfs, tree = pusher.nfs, pusher.tree
    src = tree.node(src_fh)
    if nfs.root_fh is None:
        nfs.mount()

    if into is not None:
        into_parts = _split(into)
        if not into_parts:
            raise PushbackError("--into needs a subdirectory name, e.g. --into restored-2024-05-01")
        parent = pusher.existing_dir(into_parts[:-1], "--into's parent")
        name = into_parts[-1]
        target = b"/".join(into_parts)
        try:
            top = nfs.mkdir(parent, name, _DIR_MODE_WHILE_FILLING)
        except NfsError as e:
            if e.status is Nfsstat3.NFS3ERR_EXIST:
                raise PushbackError(f"{show_name(target)} already exists on the NAS; --into needs a new "
                                    "name, so that nothing there is overwritten") from None
            raise
        top_fh = created_fh(nfs, top, parent, name)
        pusher.result.target = show_name(target)
        if src.type == DIR:
            pusher.dir_attrs.append((src_fh, top_fh, target))
            pusher.push_children(src_fh, top_fh, target)
        else:
            pusher.push_object(src_fh, top_fh, src_parts[-1], target + b"/" + src_parts[-1])
            pusher.fillers.wait()
            pusher._setattr(nfs, top_fh, target, "mode", mode=0o755)  # a plain holder for one object
        pusher.finish()
        return pusher.result

    if not src_parts:
        raise PushbackError("the export root exists on the NAS and would be overwritten; "
                            "push it into a new subdirectory with --into SUBDIR, or name a "
                            "deleted subtree with --path")
    parent = pusher.make_parents(src_parts[:-1])
    pusher.result.target = show_name(src_rel)
    try:
        pusher.push_object(src_fh, parent, src_parts[-1], src_rel, guard_top=True)
    except _Exists:
        raise PushbackError(f"{show_name(src_rel)} exists on the NAS and would be overwritten; move it "
                            "away first, or push beside it with --into SUBDIR") from None
    pusher.finish()
    return pusher.result


class _Exists(Exception):
    pass


class _FillFailed(Exception):
    """A file's filling failed on a filler thread."""

    def __init__(self, rel: bytes, error: BaseException) -> None:
        super().__init__(rel, error)
        self.rel, self.error = rel, error


class _Fillers:
    """Threads that fill files made by the pusher, each with a connection of
    its own (a blocking NFS client makes one call at a time, and a file's
    WRITEs, COMMIT and SETATTRs are mostly waiting on the NAS). Without
    `connect`, or with one filler, files are filled in the caller's thread
    on `nfs`, in order."""

    def __init__(self, nfs: NfsClient, connect: Callable[[], NfsClient] | None, n: int) -> None:
        self._nfs = nfs
        self._connect = connect if n > 1 else None
        self._n = n
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._clients: list[NfsClient] = []
        self._lock = threading.Lock()
        self._pending: collections.deque[tuple[bytes, concurrent.futures.Future]] = collections.deque()

    def submit(self, rel: bytes, fill: Callable[[NfsClient], None]) -> None:
        """Run `fill(nfs)` for the file at `rel`, here or on a filler thread."""
        if self._connect is None:
            fill(self._nfs)
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self._n, thread_name_prefix="nfsj-push-fill")
        self._pending.append((rel, self._pool.submit(self._run, fill)))
        while len(self._pending) > 4 * self._n:  # a bounded backlog; an error shows soon
            self._settle(*self._pending.popleft())
        while self._pending and self._pending[0][1].done():
            self._settle(*self._pending.popleft())

    def wait(self) -> None:
        """Every file submitted so far filled; raises _FillFailed for the first that failed."""
        while self._pending:
            self._settle(*self._pending.popleft())

    def _run(self, fill: Callable[[NfsClient], None]) -> None:
        nfs = getattr(self._local, "nfs", None)
        if nfs is None:
            nfs = self._local.nfs = self._connect()
            with self._lock:
                self._clients.append(nfs)
        fill(nfs)

    @staticmethod
    def _settle(rel: bytes, future: concurrent.futures.Future) -> None:
        error = future.exception()
        if error is not None:
            raise _FillFailed(rel, error)

    def __enter__(self) -> _Fillers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            for _, future in self._pending:
                future.cancel()
            self._pool.shutdown(wait=True)
        for nfs in self._clients:
            nfs.close()


class _ReadAhead:
    """The files' contents fetched in bulk, in the order they are pushed,
    FILL_BYTES a fill, at most READ_AHEAD_BYTES ahead of what the fillers
    have written (which they drop from the read cache as they go): a tree of
    any size streams through bounded memory, and a filler finds its file
    fetched or on its way, not to be fetched alone."""

    def __init__(self, client: Any, cut: Any, files: list[tuple[bytes, int]]) -> None:
        self._client, self._cut = client, cut
        self._cond = threading.Condition()
        self._consumed = 0
        self._stopped = False
        batches = fills(files, FILL_BYTES)
        first = next(batches, None)
        if first is not None:   # on its way before the first filler asks for it
            client.prefetch(cut, first[0], budget=first[1], wait=False)
        self._thread = threading.Thread(target=self._run, args=(batches, first[1] if first else 0),
                                        daemon=True, name="nfsj-push-read-ahead")
        self._thread.start()

    def consumed(self, nbytes: int) -> None:
        with self._cond:
            self._consumed += nbytes
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()

    def _run(self, batches: Iterator[tuple[list[bytes], int]], fetched: int) -> None:
        try:
            for batch, nbytes in batches:
                with self._cond:
                    room = max(0, READ_AHEAD_BYTES - nbytes)
                    self._cond.wait_for(lambda: self._stopped or fetched - self._consumed <= room)
                    if self._stopped:
                        return
                self._client.prefetch(self._cut, batch, budget=nbytes, wait=False)
                fetched += nbytes
        except Exception as e:  # noqa: BLE001  each read then fetches its file itself
            logger.info("the push-back's read-ahead stopped: %s", e)


class _Pusher:
    def __init__(self, client: Any, cut: Any, nfs: NfsClient, tree: Any,
                 progress: Callable[..., None] | None, fillers: _Fillers):
        self.client = client
        self.cut = cut
        self.nfs = nfs
        self.tree = tree
        self.progress = progress
        self.fillers = fillers
        self._lock = threading.Lock()  # the result and progress, updated by fillers too
        self.result = PushResult("")
        self.current = b""
        self.pushed: dict[bytes, bytes] = {}   # tree handle -> NAS handle (hard links)
        # (tree handle, NAS handle, path) of every directory made, parents first
        self.dir_attrs: list[tuple[bytes, bytes, bytes]] = []
        self.nas_has_nfsacl = True  # until it answers PROG_UNAVAIL/PROG_MISMATCH
        self.top: bytes | None = None  # the tree handle pushed (for the prefetch)
        self.ahead: _ReadAhead | None = None

    # -- where ------------------------------------------------------------------

    def existing_dir(self, parts: list[bytes], what: str) -> bytes:
        path = b"/".join(parts)
        try:
            fh = self.nfs.lookup_path(path)
            attrs = self.nfs.getattr(fh).obj_attributes
        except NfsError as e:
            if e.status in (Nfsstat3.NFS3ERR_NOENT, Nfsstat3.NFS3ERR_NOTDIR):
                raise PushbackError(
                    f"{what} {show_name(b'/' + path)} does not exist on the NAS") from None
            raise
        if attrs.type is not Ftype3.NF3DIR:
            raise PushbackError(f"{what} {show_name(b'/' + path)} is not a directory on the NAS")
        return fh

    def make_parents(self, parts: list[bytes]) -> bytes:
        """The NAS handle of the directory `parts`, making what is missing (with the
        tree's attributes, applied at the end)."""
        fh = self.nfs.root
        for i, name in enumerate(parts):
            rel = b"/".join(parts[:i + 1])
            try:
                fh = self.nfs.lookup(fh, name).object
                continue
            except NfsError as e:
                if e.status is not Nfsstat3.NFS3ERR_NOENT:
                    raise
            made = self.nfs.mkdir(fh, name, _DIR_MODE_WHILE_FILLING)
            new_fh = created_fh(self.nfs, made, fh, name)
            tree_fh = self.tree.lookup(rel)
            if tree_fh is not None:
                self.dir_attrs.append((tree_fh, new_fh, rel))
            self.result.dirs += 1
            fh = new_fh
        return fh

    # -- what ---------------------------------------------------------------------

    def push_children(self, dir_fh: bytes, nas_dir: bytes, rel: bytes) -> None:
        """Everything below the directory `dir_fh`, whose NAS copy is `nas_dir`."""
        stack = [(dir_fh, nas_dir, rel)]
        while stack:
            d, nas_d, d_rel = stack.pop()
            node = self.tree.node(d)
            subdirs = []
            for name in sorted(node.entries):
                child = node.entries[name]
                child_rel = d_rel + b"/" + name if d_rel else name
                made = self.push_object(child, nas_d, name, child_rel)
                if made is not None:
                    subdirs.append((child, made, child_rel))
            stack.extend(reversed(subdirs))

    def push_object(self, fh: bytes, nas_dir: bytes, name: bytes, rel: bytes, *,
                    guard_top: bool = False) -> bytes | None:
        """Make `name` in `nas_dir` for the tree's object `fh`. Returns the NAS handle of
        a directory made (its children are pushed by the caller), else None."""
        self.current = rel
        node = self.tree.node(fh)
        kind = node.type if node is not None else 0
        if kind not in _TYPE_NAMES or (kind == DIR and fh in self.pushed):
            # An object the journal never described, or a directory's second name.
            self.result.skipped += 1
            logger.warning("%s: skipped (%s)", show_name(rel), "type unknown at the cut"
                           if kind not in _TYPE_NAMES else "a second name of a directory")
            return None
        try:
            if kind != DIR and fh in self.pushed:
                self.nfs.link(self.pushed[fh], nas_dir, name)
                self.result.hard_links += 1
                self._progress(rel)
                return None
            if kind == DIR:
                made = self.nfs.mkdir(nas_dir, name, _DIR_MODE_WHILE_FILLING)
            elif kind == REG:
                made = self.nfs.create(nas_dir, name, _FILE_MODE_WHILE_FILLING)
            elif kind == LNK:
                made = self.nfs.symlink(nas_dir, name, node.symlink_target)
            else:
                spec = node.rdev if kind in (CHR, BLK) else (0, 0)
                made = self.nfs.mknod(nas_dir, name, _MKNOD_TYPES[kind],
                                      _FILE_MODE_WHILE_FILLING, spec)
        except NfsError as e:
            if guard_top and e.status is Nfsstat3.NFS3ERR_EXIST:
                raise _Exists() from None
            raise PushbackError(
                f"{show_name(rel)}: the NAS refused to create it ({e.status.name})") from None
        nas_fh = created_fh(self.nfs, made, nas_dir, name)
        self.pushed[fh] = nas_fh
        if kind == DIR:
            self.dir_attrs.append((fh, nas_fh, rel))
            self.result.dirs += 1
            self._progress(rel)
            if guard_top:
                self.push_children(fh, nas_fh, rel)
                return None
            return nas_fh
        if kind == REG:
            self._prefetch()
            self.fillers.submit(rel, lambda nfs: self._fill(nfs, fh, node, nas_fh, rel))
            return None
        with self._lock:
            if kind == LNK:
                self.result.symlinks += 1
            else:
                self.result.specials += 1
        self._set_attrs(self.nfs, node, nas_fh, rel)
        self._progress(rel)
        return None

    def _prefetch(self) -> None:
        if self.ahead is None:
            files = dict.fromkeys(f for _, f, n in self.tree.walk(self.top) if n.type == REG)
            self.ahead = _ReadAhead(self.client, self.cut,
                                    [(f, self.tree.node(f).size or 0) for f in files])

    def _fill(self, nfs: NfsClient, fh: bytes, node: Any, nas_fh: bytes, rel: bytes) -> None:
        """A regular file's content, then its attributes (writes change mtime)."""
        try:
            self._write_content(nfs, fh, nas_fh, rel)
        finally:
            self.client.forget(self.cut, fh)
            if self.ahead is not None:
                self.ahead.consumed(node.size or 0)
        with self._lock:
            self.result.files += 1
        self._set_attrs(nfs, node, nas_fh, rel)
        self._progress(rel)

    def _write_content(self, nfs: NfsClient, fh: bytes, nas_fh: bytes, rel: bytes) -> None:
        # The content as RestoreClient materialises it has the file's size at
        # the cut (holes read as zeros), so it is written whole.
        for _ in range(_COMMIT_ATTEMPTS):
            verfs: set[bytes] = set()
            offset, need_commit = 0, False
            while True:
                # Not its directory's other files as well: the read-ahead brings
                # them, paced; a file it has not reached yet is fetched alone.
                data = self.client.read(self.cut, fh, offset, CHUNK_BYTES)
                if not data:
                    break
                # A file that is one WRITE is written FILE_SYNC: the NAS syncs
                # it as a COMMIT would, and the COMMIT's round trip is saved
                # (most files of a tree are smaller than a WRITE).
                stable = StableHow.FILE_SYNC if offset == 0 and len(data) < CHUNK_BYTES \
                    else StableHow.UNSTABLE
                view = memoryview(data)
                done = 0
                while done < len(view):
                    res = nfs.write(nas_fh, offset + done, view[done:], stable)
                    if res.count == 0:
                        raise ProtocolError(f"{show_name(rel)}: WRITE at {offset + done} wrote nothing")
                    done += res.count
                    verfs.add(res.verf)
                    need_commit |= res.committed is not StableHow.FILE_SYNC
                offset += len(data)
                if len(data) < CHUNK_BYTES:
                    break
            if not need_commit or verfs == {nfs.commit(nas_fh).verf}:
                with self._lock:
                    self.result.bytes += offset
                return
            logger.info("%s: the NAS's write verifier changed before COMMIT; writing it again",
                        show_name(rel))
        raise PushbackError(f"{show_name(rel)}: the NAS kept losing uncommitted writes (its write "
                            f"verifier changed {_COMMIT_ATTEMPTS} times); is it restarting?")

    def _set_attrs(self, nfs: NfsClient, node: Any, nas_fh: bytes, rel: bytes) -> None:
        attr = node.attr
        if attr is None:
            self._warn(f"{show_name(rel)}: no attributes at the cut; left as created")
            return
        if node.type != LNK:
            self._set_acls(nfs, node, nas_fh, rel)
        mode = None if node.type == LNK else attr.mode & 0o7777  # a symlink's mode is meaningless
        times = {"atime": max(attr.atime_ns, 0), "mtime": max(attr.mtime_ns, 0)}
        if mode is not None and mode & _CLEARED_BY_CHOWN:
            # Owner first: a chown clears setuid/setgid bits, the mode after restores them.
            self._setattr(nfs, nas_fh, rel, "owner", uid=attr.uid, gid=attr.gid)
            self._setattr(nfs, nas_fh, rel, "mode and times", mode=mode, **times)
            return
        self._setattr(nfs, nas_fh, rel, "owner, mode and times", uid=attr.uid, gid=attr.gid,
                      mode=mode, **times)

    def _warn(self, message: str) -> None:
        with self._lock:
            self.result.warnings.append(message)

    def _set_acls(self, nfs: NfsClient, node: Any, nas_fh: bytes, rel: bytes) -> None:
        """SETACL of the ACLs the tree knows (an object made here has none of its own)."""
        acl = node.acl or ()
        default = (node.default_acl or ()) if node.type == DIR else ()
        if not acl and not default:
            return
        if not self.nas_has_nfsacl:
            with self._lock:
                self.result.acls_not_set += 1
            return
        entries = tuple(nfsacl.Aclent(a.type, a.id, a.perm) for a in acl)
        dflt = tuple(nfsacl.Aclent(a.type | nfsacl.NFS_ACL_DEFAULT, a.id, a.perm) for a in default)
        try:
            nfs.setacl(nas_fh, entries, dflt if node.type == DIR else None)
        except (RpcError, NfsError) as e:
            with self._lock:
                self.result.acls_not_set += 1
            if isinstance(e, RpcError) and e.reply.accept_stat in (AcceptStat.PROG_UNAVAIL,
                                                                    AcceptStat.PROG_MISMATCH):
                self.nas_has_nfsacl = False
                message = f"the NAS does not serve NFSACL v3 ({e}): POSIX ACLs are not set"
            else:
                message = f"{show_name(rel)}: the NAS refused to set its POSIX ACLs ({e})"
            logger.warning("%s", message)
            self._warn(message)
            return
        with self._lock:
            self.result.acls += 1

    def _setattr(self, nfs: NfsClient, nas_fh: bytes, rel: bytes, what: str, **attrs: Any) -> None:
        try:
            nfs.setattr(nas_fh, sattr3(**attrs))
        except NfsError as e:
            message = f"{show_name(rel)}: the NAS refused to set its {what} ({e.status.name})"
            logger.warning("%s", message)
            self._warn(message)

    def _progress(self, rel: bytes) -> None:
        if self.progress is not None:
            with self._lock:
                self.progress(self.result.objects, self.result.bytes, show_name(rel))

    def finish(self) -> None:
        """Every file filled, then directory attributes, bottom-up (children
        were listed after their parents)."""
        self.fillers.wait()
        for fh, nas_fh, rel in reversed(self.dir_attrs):
            self._set_attrs(self.nfs, self.tree.node(fh), nas_fh, rel)


# --------------------------------------------------------------------------
# The command line's part: `nfsj restore --to-nas --nas ... [--into SUBDIR]`


def connect_nas(address: BackendAddress, *, timeout_s: float = 30.0) -> NfsClient:
    """An NfsClient of the NAS's export, as root (owners are restored), from a reserved
    port when we may bind one (a NAS exporting with `secure` insists)."""
    return NfsClient(address.host, address.nfs_port, address.mount_port, address.export,
                     uid=0, gid=0, timeout_s=timeout_s, privileged_port=os.geteuid() == 0)
