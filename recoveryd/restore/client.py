"""The restore client: one object that gives the past back, tying the pieces
together (the shards, the cut, the tree builder, per-file replay, the read
cache, the local writer and history) for the CLI, the read-only export,
push-back and verify.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from logstore.pb.journal_pb2 import Attr, Record
from logstore.stamp import Stamp

from ..tree import REG, Tree
from .cache import DEFAULT_CACHE_BYTES, FileCache
from .cut import Cut, cut_records, take_cut
from .namespace import build_tree, clean_path, found, resolve_path
from .replay import replay
from .shards import Shards

if TYPE_CHECKING:  # the bulk path, the tree writer and history load when used
    from .history import HistoryEntry
    from .local import RestoreProgress, RestoreSummary

__all__ = ["RestoreClient"]

logger = logging.getLogger(__name__)

#: Trees kept per client (a tree of a million objects is large).
_TREES_KEPT = 4
#: Bytes of a directory's files a cache miss brings at once (``read``).
NEIGHBOURS_BYTES = 64 << 20


class RestoreClient:
    """Rebuilds the export at a cut from every shard's records.

    Thread-safe. ``read`` keeps materialised files in a private cache
    directory (``cache_dir``, default a new temporary one) of at most
    ``cache_bytes``; ``close()`` removes it.
    """

    def __init__(self, shards: Shards, *, cache_dir: str | os.PathLike[str] | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.shards = shards
        self._cache = FileCache(cache_dir, cache_bytes)
        self._lock = threading.Lock()
        self._regular: weakref.WeakKeyDictionary[Tree, frozenset[bytes]] = weakref.WeakKeyDictionary()
        self._directories: weakref.WeakKeyDictionary[
            Tree, dict[bytes, tuple[list[bytes], dict[bytes, int]]]] = weakref.WeakKeyDictionary()
        self._trees: OrderedDict[tuple, Tree] = OrderedDict()

    # -- the cut --------------------------------------------------------------------------

    def cut(self, at: Stamp, allow_unproven: bool = False) -> Cut:
        """The cut at ``at``, or RestoreRefused naming the valid range."""
        return take_cut(self.shards, at, allow_unproven)

    # -- the namespace ----------------------------------------------------------------------

    def tree(self, cut: Cut, *, file_sizes: bool = False) -> Tree:
        """The namespace and attributes at ``cut`` (cached per cut; do not change
        it). ``file_sizes``: every regular file's size and times as of the cut
        too (``namespace.build_tree``)."""
        key = (cut.key, file_sizes)
        with self._lock:
            tree = self._trees.get(key)
            if tree is not None:
                self._trees.move_to_end(key)
                return tree
        tree = build_tree(self.shards, cut, file_sizes=file_sizes)
        with self._lock:
            self._trees[key] = tree
            while len(self._trees) > _TREES_KEPT:
                self._trees.popitem(last=False)
        return tree

    def resolve(self, cut: Cut, path: bytes | str) -> tuple[bytes, int] | None:
        """(handle, type) of what ``path`` named at ``cut`` (None: nothing),
        reading only the records of the directories on the way when no tree
        of the cut is at hand (``namespace.resolve_path``)."""
        rel = clean_path(path)
        with self._lock:
            cached = self._trees.get((cut.key, False)) or self._trees.get((cut.key, True))
        if cached is not None:
            return found(cached, rel)
        return resolve_path(self.shards, cut, rel, lambda: self.tree(cut))

    # -- one file -----------------------------------------------------------------------------

    def file_records(self, cut: Cut, fh: bytes, *, with_data: bool = True,
                     until: Stamp | None = None) -> Iterator[Record]:
        """Every record naming ``fh`` with a stamp in [baseline_id, at] (or up to
        ``until``, below ``at``), in stamp order, from every shard (pieces of
        other baselines left out)."""
        return cut_records(self.shards, cut, fh, with_data=with_data, until=until)

    def write_file(self, cut: Cut, fh: bytes, fd: int,
                   seen: Callable[[Record], None] | None = None) -> int:
        """Replay ``fh``'s content at ``cut`` onto the open file ``fd``; returns its size.
        ``seen`` is shown every record on the way (``Tree.apply``, say, to learn
        the object's type in the same pass)."""
        return replay(self.file_records(cut, fh), fh, fd, seen)[0]

    def replay_file(self, cut: Cut, fh: bytes, fd: int) -> tuple[int, Attr | None]:
        """``write_file``, also returning the file's newest attributes at ``cut``
        (None if no record carried any): one pass over its records for both."""
        return replay(self.file_records(cut, fh), fh, fd)

    def read(self, cut: Cut, fh: bytes, offset: int, count: int, *,
             neighbours: bool = False) -> bytes:
        """``count`` bytes at ``offset`` of ``fh`` at ``cut`` (fewer at the end).

        The file is materialised once per (cut, fh) into the private cache and
        read from there. ``neighbours`` (for readers of whole trees: an
        export, a push-back): when the cut's tree is at hand, a file the
        cache lacks is built alone, and the other files of its directory not
        yet cached follow in one bulk fill in the background
        (``NEIGHBOURS_BYTES`` at most), as whoever reads one file of a
        directory there tends to read the rest."""
        if neighbours and not self._cache.expects((cut.key, fh)):
            self._neighbours_follow(cut, fh)
        return self._cache.read((cut.key, fh), offset, count,
                                lambda fd: self.write_file(cut, fh, fd))

    def _neighbours_follow(self, cut: Cut, fh: bytes) -> None:
        with self._lock:
            tree = self._trees.get((cut.key, True)) or self._trees.get((cut.key, False))
        node = tree.nodes.get(fh) if tree is not None else None
        if node is None or not node.names:
            return
        files, place = self._directory_files(tree, min(node.names)[0])
        at = place.get(fh)
        if at is None:
            return
        # The files after this one in name order first (readers of a
        # directory go through it in that order), then those before it.
        n = len(files)
        others = (files[k % n] for k in range(at + 1, at + n))
        fill = self._claim(cut, tree, others, min(NEIGHBOURS_BYTES, self._cache.budget // 4))
        if fill is not None:
            threading.Thread(target=self._fill_quietly, args=(cut, *fill), daemon=True,
                             name="nfsj-restore-neighbours").start()

    def holds(self, cut: Cut, fh: bytes) -> bool:
        """Whether ``read`` of ``fh`` at ``cut`` is served from the cache now."""
        return self._cache.holds((cut.key, fh))

    def prefetch(self, cut: Cut, fhs: Iterable[bytes], *, budget: int | None = None,
                 wait: bool = True) -> int:
        """Materialise the regular files ``fhs`` at ``cut`` into the read cache
        together, through the bulk path (``bulk.write_contents``), so that
        ``read`` serves them from the cache: as many as fit in ``budget``
        bytes (default: half the cache), in the order given, leaving out
        those cached or on their way already. Returns how many were made;
        with ``wait=False``, how many are on their way, made by a thread of
        their own (if that fill fails, each read builds its file itself).
        Meanwhile a ``read`` of one of them waits for it rather than
        fetching it alone."""
        tree = self._any_tree(cut)
        fill = self._claim(cut, tree, fhs, self._cache.budget // 2 if budget is None else budget)
        if fill is None:
            return 0
        if wait:
            return self._fill(cut, *fill)
        threading.Thread(target=self._fill_quietly, args=(cut, *fill), daemon=True,
                         name="nfsj-restore-prefetch").start()
        return len(fill[0])

    def forget(self, cut: Cut, fh: bytes) -> None:
        """Drop ``fh`` at ``cut`` from the read cache (a reader done with it:
        its memory or disk goes to the files still to come)."""
        self._cache.drop((cut.key, fh))

    def _claim(self, cut: Cut, tree: Tree, fhs: Iterable[bytes],
               budget: int) -> tuple[list, bool] | None:
        """Promise the regular files of ``fhs`` that fit in ``budget`` and are
        neither cached nor promised; (their keys, whether they are every file
        of the cut) for ``_fill``, or None when there are none."""
        chosen: dict[bytes, None] = {}
        total = 0
        for fh in fhs:   # lazily: a directory's neighbours go on past what one fill takes
            node = tree.nodes.get(fh)
            if fh in chosen or node is None or node.type != REG or self._cache.expects((cut.key, fh)):
                continue
            size = node.size or 0
            if total + size > budget:
                break
            chosen[fh] = None
            total += size
        keys = self._cache.promise([(cut.key, fh) for fh in chosen])
        if not keys:
            return None
        return keys, {fh for _, fh in keys} == self._regular_files(tree)

    def _directory_files(self, tree: Tree, dir_fh: bytes) -> tuple[list[bytes], dict[bytes, int]]:
        """The regular files of directory ``dir_fh`` in ``tree`` (a cached
        tree), in name order, and each one's place there; found once per
        directory, as a reader misses the cache once per fill of it."""
        with self._lock:
            known = self._directories.setdefault(tree, {}).get(dir_fh)
        if known is None:
            directory = tree.nodes.get(dir_fh)
            entries = directory.entries if directory is not None else {}
            files = [fh for _, fh in sorted(entries.items())
                     if (node := tree.nodes.get(fh)) is not None and node.type == REG]
            known = files, {fh: k for k, fh in enumerate(files)}
            with self._lock:
                self._directories[tree][dir_fh] = known
        return known

    def _regular_files(self, tree: Tree) -> frozenset[bytes]:
        """Every regular file of ``tree`` (a cached tree), found once per
        tree: a directory's fill asks, and walking the whole tree for each
        directory read would cost the square of its size."""
        with self._lock:
            every = self._regular.get(tree)
        if every is None:
            every = frozenset(fh for _, fh, node in tree.walk() if node.type == REG)
            with self._lock:
                self._regular[tree] = every
        return every

    def _fill(self, cut: Cut, keys: list, whole: bool) -> int:
        """Make the promised ``keys`` in one bulk fill; every promise is settled."""
        from .bulk import write_contents

        try:
            nodes = self._any_tree(cut).nodes
            targets = {key[1]: self._cache.staging(key, node.size if (node := nodes.get(key[1])) else None)
                       for key in keys}
            # A file is readable once its part of the stream is written
            # (``finished``), not when the whole fill is.
            written = write_contents(self.shards, cut, targets, whole=whole,
                                     file_records=lambda fh: self.file_records(cut, fh),
                                     finished=lambda fh, size, attr: self._cache.add((cut.key, fh), size))
        finally:
            self._cache.settle(keys)
        return len(written)

    def _fill_quietly(self, cut: Cut, keys: list, whole: bool) -> None:
        try:
            self._fill(cut, keys, whole)
        except Exception as e:  # noqa: BLE001  each read then builds its file itself
            logger.info("a directory's files were not fetched together: %s", e)

    def _any_tree(self, cut: Cut) -> Tree:
        with self._lock:
            tree = self._trees.get((cut.key, True)) or self._trees.get((cut.key, False))
        return tree if tree is not None else self.tree(cut)

    # -- a whole tree, history -------------------------------------------------------------------

    def restore_to_dir(self, cut: Cut, dest: str | os.PathLike[str], path: bytes | str | None = None,
                       progress: Callable[[RestoreProgress], None] | None = None) -> RestoreSummary:
        """Write the export (or the subtree at ``path``) as it was at ``cut`` to
        ``dest`` (``local.restore_to_dir``)."""
        from .local import restore_to_dir

        return restore_to_dir(self, cut, dest, path, progress)

    def history(self, path: bytes | str, since: Stamp | None = None,
                until: Stamp | None = None) -> list[HistoryEntry]:
        """What changed ``path`` with stamps in (since, until] (``history.history``)."""
        from .history import history

        return history(self, path, since, until)

    # -- lifecycle ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Drop the read cache (and its directory, if this client made it)."""
        self._cache.close()
        with self._lock:
            self._trees.clear()

    def __enter__(self) -> RestoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
