"""The local writer: the export (or one subtree) at a cut written to a local
directory, built in a temporary directory beside the destination and moved
into place at the end, so that the destination appears complete or not at
all and nothing that exists there is ever replaced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from logstore.pb.journal_pb2 import Attr

from ..acl import XATTR_ACCESS, XATTR_DEFAULT, to_xattr
from ..timespec import format_time
from ..tree import BLK, CHR, DIR, FIFO, LNK, REG, SOCK, TYPE_NAMES, Tree, show_name
from .bulk import write_contents
from .cut import Cut
from .errors import RestoreError, RestoreRefused
from .namespace import clean_path

if TYPE_CHECKING:
    from .client import RestoreClient

__all__ = ["RestoreProgress", "RestoreSummary", "restore_to_dir", "check_dest", "rename_noreplace"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class RestoreProgress:
    """Where a ``restore_to_dir`` is; handed to its ``progress`` callback."""

    files_total: int = 0
    files_done: int = 0
    bytes_done: int = 0
    bytes_hint: int = 0     # sum of the sizes the tree knows (writes may change it)
    current: str = ""
    phase: str = "tree"     # tree, files, attributes, done


@dataclasses.dataclass(slots=True)
class RestoreSummary:
    """What ``restore_to_dir`` made."""

    dest: str
    cut: Cut
    path: str = ""
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    specials: int = 0
    hard_links: int = 0      # extra names made with link()
    bytes: int = 0
    owners: bool = True      # uid/gid were restored (only root can)
    acls: int = 0            # POSIX ACLs set (access and default count apart)
    acls_refused: int = 0    # ACLs the destination's file system would not take (EOPNOTSUPP)
    skipped: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{self.files} files ({self.bytes} bytes)", f"{self.dirs} directories",
                 f"{self.symlinks} symlinks"]
        if self.specials:
            parts.append(f"{self.specials} special files")
        if self.hard_links:
            parts.append(f"{self.hard_links} extra hard links")
        text = f"restored {', '.join(parts)} to {self.dest}"
        if self.acls:
            text += f", {self.acls} POSIX ACLs"
        if not self.owners:
            text += " (owners not restored: not running as root)"
        if self.acls_refused:
            text += (f"; {self.acls_refused} POSIX ACLs NOT restored: the destination's file "
                     "system does not support them")
        if self.skipped:
            text += f"; skipped {len(self.skipped)}: {', '.join(self.skipped[:5])}"
        return text


def restore_to_dir(client: RestoreClient, cut: Cut, dest: str | os.PathLike[str],
                   path: bytes | str | None = None,
                   progress: Callable[[RestoreProgress], None] | None = None) -> RestoreSummary:
    """Write the export (or the subtree at ``path``) as it was at ``cut`` to ``dest``.

    ``dest`` must not exist or be an empty directory: a restore never
    overwrites. It is built in ``<dest>.nfsj-tmp-*`` beside it and renamed
    into place at the end, so ``dest`` appears complete or not at all.
    """
    dest = Path(os.path.abspath(dest))
    check_dest(dest)
    report = progress or (lambda p: None)
    state = RestoreProgress()
    report(state)
    tree = client.tree(cut)
    rel = clean_path(path)
    start = tree.lookup(rel)
    if start is None:
        raise RestoreRefused(f"{show_name(b'/' + rel)} did not exist at {format_time(cut.at)} ({cut.at})")
    start_node = tree.nodes[start]
    summary = RestoreSummary(str(dest), cut, path=show_name(b"/" + rel), owners=os.geteuid() == 0)
    tmp: Path | None = None
    empty_dir_given = dest.is_dir() and not dest.is_symlink()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.nfsj-tmp-", dir=dest.parent))
        if start_node.type == DIR:
            _build(client, cut, tree, start, tmp, summary, state, report)
            _place(tmp, dest, over_empty_dir=empty_dir_given)
            _set_attrs(dest, start_node.attr, DIR, summary.owners)  # rename leaves it, but be sure
        else:
            # One non-directory: built inside the temporary directory, then moved.
            _build(client, cut, tree, start, tmp / "object", summary, state, report, single=True)
            if empty_dir_given:
                raise RestoreRefused(f"{dest} is a directory and /{rel} is not; give a path "
                                     "that does not exist for one object")
            _place(tmp / "object", dest, over_empty_dir=False)
            tmp.rmdir()
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            where = f" ({e.filename})" if e.filename else ""
            raise RestoreError(f"restoring to {dest} failed: {e.strerror or e}{where}; "
                               "nothing was left behind") from e
        raise
    state.phase, state.current = "done", ""
    report(state)
    return summary


def _build(client: RestoreClient, cut: Cut, tree: Tree, start: bytes, root: Path,
           summary: RestoreSummary, state: RestoreProgress, report: Callable[[RestoreProgress], None], *,
           single: bool = False) -> None:
    """The namespace first (directories, empty files, links, symlinks, special
    files), then every regular file's contents at once (``bulk``), then the
    files' attributes, then the directories' bottom-up."""
    entries = list(tree.walk(start))
    files = {fh for _, fh, node in entries if node.type == REG}
    state.files_total = len(files)
    state.bytes_hint = sum(tree.nodes[fh].size or 0 for fh in files)
    state.phase = "files"
    report(state)
    first_path: dict[bytes, Path] = {}
    shown: dict[bytes, bytes] = {}
    links: list[tuple[bytes, Path]] = []
    dirs: list[tuple[Path, Any]] = []
    for rel, fh, node in entries:
        # Names are bytes; os.fsdecode gives the str that the OS turns back into exactly them.
        target = root / os.fsdecode(rel) if rel else root
        if node.type == DIR:
            if rel or single:
                target.mkdir(mode=0o700)
            dirs.append((target, node))
            summary.dirs += 1
            continue
        if fh in first_path:
            if node.type == REG:
                links.append((fh, target))  # once the file is made, with its contents
            else:
                os.link(first_path[fh], target, follow_symlinks=False)  # a symlink's own inode
            summary.hard_links += 1
            continue
        if node.type == REG:
            pass  # made with its contents
        elif node.type == LNK:
            os.symlink(node.symlink_target, target)
            _set_attrs(target, node.attr, LNK, summary.owners)
            summary.symlinks += 1
        elif node.type in (FIFO, SOCK, CHR, BLK):
            kind = {FIFO: stat.S_IFIFO, SOCK: stat.S_IFSOCK, CHR: stat.S_IFCHR, BLK: stat.S_IFBLK}[node.type]
            rdev = os.makedev(*node.rdev) if node.type in (CHR, BLK) else 0
            try:
                os.mknod(target, kind | 0o600, rdev)
            except PermissionError:
                summary.skipped.append(
                    f"{show_name(b'/' + rel)} ({TYPE_NAMES[node.type]}: mknod needs root)")
                continue
            _set_acls(target, node, summary)
            _set_attrs(target, node.attr, node.type, summary.owners)
            summary.specials += 1
        else:
            summary.skipped.append(f"{show_name(b'/' + rel)} (type unknown: never created or read "
                                   "in this cut)")
            continue
        first_path[fh] = target
        shown[fh] = rel
    _write_files(client, cut, tree, {fh: first_path[fh] for fh in files}, start == tree.root, shown,
                 summary, state, report)
    for fh, target in links:
        os.link(first_path[fh], target)
    # Directories last and bottom-up: entries made inside a directory
    # change its mtime, so it is set after all of them.
    state.phase, state.current = "attributes", ""
    report(state)
    for target, node in reversed(dirs):
        _set_acls(target, node, summary)
        _set_attrs(target, node.attr, DIR, summary.owners)


def _write_files(client: RestoreClient, cut: Cut, tree: Tree, targets: dict[bytes, Path],
                 whole: bool, shown: dict[bytes, bytes], summary: RestoreSummary, state: RestoreProgress,
                 report: Callable[[RestoreProgress], None]) -> None:
    """Every regular file made with its contents, then its ACLs and attributes
    (after the bytes: writing changes the mtime), by the thread that wrote it.
    ``whole``: they are all the cut's files."""
    def done(fh: bytes, size: int) -> None:
        state.files_done += 1
        state.current = show_name(b"/" + shown[fh])
        report(state)

    def wrote(nbytes: int) -> None:
        state.bytes_done += nbytes
        report(state)

    inherited = _default_acl_at(next(iter(targets.values())).parent) if targets else False
    lock = threading.Lock()  # the summary's ACL counts

    def finished(fh: bytes, size: int, attr: Attr | None) -> None:
        target, node = targets[fh], tree.nodes[fh]
        if node.acl is not None and (node.acl or inherited):
            with lock:
                _set_acls(target, node, summary, inherited=inherited)
        _set_attrs(target, attr or node.attr, REG, summary.owners)

    written = write_contents(client.shards, cut, targets, whole=whole, done=done, wrote=wrote,
                             file_records=lambda fh: client.file_records(cut, fh), finished=finished)
    summary.files += len(written)
    summary.bytes += sum(size for size, _ in written.values())


def _default_acl_at(directory: Path) -> bool:
    """Whether what is made in ``directory`` may inherit ACLs (it has a default ACL)."""
    try:
        os.getxattr(directory, XATTR_DEFAULT)
    except OSError:
        return False  # none (ENODATA), or no ACLs on this file system
    return True


def check_dest(dest: str | os.PathLike[str]) -> None:
    """Refuse (RestoreRefused) a restore destination that exists and is not an
    empty directory: a restore never overwrites."""
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise RestoreRefused(f"{dest} exists and is not a directory; a restore never overwrites: "
                             "give a new or empty directory")
    if dest.is_dir():
        try:
            empty = next(os.scandir(dest), None) is None
        except OSError as e:
            raise RestoreRefused(f"cannot read {dest}: {e.strerror}") from None
        if not empty:
            raise RestoreRefused(f"{dest} is not empty; a restore never overwrites: give a new "
                                 "or empty directory")


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


@functools.cache
def _renameat2():
    """glibc's renameat2 (None where libc lacks it); looked up on first use."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn



def rename_noreplace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move ``src`` to ``dst`` in one step that fails (FileExistsError) if ``dst``
    exists, however late it appeared: a restore never replaces what someone
    created meanwhile. renameat2(RENAME_NOREPLACE) where the kernel and file
    system have it; else link + unlink for a non-directory (link refuses an
    existing name just as atomically), mkdir + rename for a directory (the
    rename then replaces only the empty directory it just made, and fails if
    anything was put in it)."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        import ctypes
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # EINVAL: the flag is not supported
            raise OSError(err, os.strerror(err), os.fsdecode(dst))
    if os.path.isdir(src) and not os.path.islink(src):
        os.mkdir(dst, 0o700)
        try:
            os.rename(src, dst)
        except OSError:
            with contextlib.suppress(OSError):
                os.rmdir(dst)  # ours, unless someone filled it (then rmdir fails, as it should)
            raise
    else:
        os.link(src, dst, follow_symlinks=False)
        os.unlink(src)


def _place(built: Path, dest: Path, *, over_empty_dir: bool) -> None:
    """Move the finished restore into place without ever replacing anything but
    the empty directory the user gave (a rename fails if it is no longer empty)."""
    try:
        if over_empty_dir:
            os.rename(built, dest)
        else:
            rename_noreplace(built, dest)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise RestoreRefused(f"{dest} appeared (or was filled) while restoring; a restore never "
                                 "overwrites: give a new or empty directory") from None
        raise



def _set_acls(path: Path, node: Any, summary: RestoreSummary, *, inherited: bool = True) -> None:
    """Set the POSIX ACLs the tree knows for ``node`` (before its mode: a chmod
    then rewrites the owner, mask and other entries as the NAS's mode says).
    A file system without ACLs (EOPNOTSUPP) is warned about once and counted.
    ``inherited``: the object may have inherited ACLs where it was made (else
    "no ACL" needs nothing done)."""
    for name, acl in ((XATTR_ACCESS, node.acl),
                      (XATTR_DEFAULT, node.default_acl if node.type == DIR else None)):
        if acl is None:
            continue  # not known
        if not acl:
            if not inherited:
                continue
            # None on the NAS; one may have been inherited from the destination's parent.
            with contextlib.suppress(OSError):
                os.removexattr(path, name, follow_symlinks=False)
            continue
        try:
            os.setxattr(path, name, to_xattr(acl), follow_symlinks=False)
            summary.acls += 1
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            if not summary.acls_refused:
                logger.warning("%s does not support POSIX ACLs: restoring without them",
                               path.parent)
            summary.acls_refused += 1


def _set_attrs(path: Path, attr: Attr | None, kind: int, owners: bool) -> None:
    """Owner, then mode (chown clears setuid/setgid), then times; symlinks keep their mode."""
    if attr is None:
        return
    if owners:
        os.chown(path, attr.uid, attr.gid, follow_symlinks=False)
    if kind != LNK:
        os.chmod(path, stat.S_IMODE(attr.mode))
    os.utime(path, ns=(attr.atime_ns, attr.mtime_ns), follow_symlinks=False)

