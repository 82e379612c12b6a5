"""The read cache: files materialised once per (cut, handle), read from there
by offset, the least recently used evicted past a byte budget. What lets
the read-only export and a push-back answer READs at any offset without
replaying a file's records for each of them.

A bulk fill's files up to MEMORY_FILE_BYTES are held in memory while the
memory budget lasts, the rest in a private directory: a tree of small
files costs no file made, written, read back and deleted per file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Hashable

from .errors import RestoreError
from .replay import BufferOut

__all__ = ["FileCache", "DEFAULT_CACHE_BYTES", "DEFAULT_MEMORY_BYTES", "MEMORY_FILE_BYTES"]

DEFAULT_CACHE_BYTES = 1 << 30
#: Of the cache's budget, how much a bulk fill may hold in memory ...
DEFAULT_MEMORY_BYTES = 256 << 20
#: ... in files of at most this size.
MEMORY_FILE_BYTES = 4 << 20
#: Files go into subdirectories named by the first hex digits of their name (256 of them).
_SPREAD_CHARS = 2


class FileCache:
    """Materialised files under ``cache_dir`` (default a new temporary one,
    removed by ``close``) and in memory (at most ``memory_bytes``), at most
    ``cache_bytes`` of them in all. Thread-safe; each key is built once,
    however many readers ask for it at once."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        self._own_cache_dir = cache_dir is None
        self._cache_dir = Path(tempfile.mkdtemp(prefix="nfsj-restore-cache-") if cache_dir is None
                               else cache_dir)
        self._cache_bytes = cache_bytes
        self._cache: OrderedDict[Hashable, tuple[Path | bytearray, int]] = OrderedDict()
        self._cache_used = 0
        self._memory_bytes = memory_bytes
        self._memory_used = 0   # held in memory, and set aside for buffers being filled
        self._staged: dict[Hashable, tuple[BufferOut, int]] = {}   # (buffer, bytes set aside)
        self._lock = threading.Lock()
        self._building: dict[Hashable, threading.Lock] = {}
        self._promised: dict[Hashable, threading.Event] = {}   # a bulk fill is making these
        self._dirs: dict[Path, bool] = {}   # subdirectory -> made here (removed by ``close``)

    def read(self, key: Hashable, offset: int, count: int, build: Callable[[int], int]) -> bytes:
        """``count`` bytes at ``offset`` of the file ``key`` (fewer at the end);
        ``build(fd)`` writes the whole file onto ``fd`` and returns its size,
        once, when the cache does not hold it."""
        for _ in range(3):
            path = self._materialise(key, build)
            if not isinstance(path, Path):
                return bytes(memoryview(path)[offset:offset + count])
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # evicted meanwhile: build it again
            try:
                return os.pread(fd, count, offset)
            finally:
                os.close(fd)
        raise RestoreError(f"the restore cache {self._cache_dir} is too small to hold one file")

    def _materialise(self, key: Hashable, build: Callable[[int], int]) -> Path | bytearray:
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
                return entry[0]
            promised = self._promised.get(key)
        if promised is not None:
            # A bulk fill is on its way to this file: far cheaper to wait for
            # it than to ask the shards for this one file alone.
            promised.wait()
            with self._lock:
                entry = self._cache.get(key)
                if entry is not None:
                    return entry[0]
        with self._lock:
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                entry = self._cache.get(key)
                if entry is not None:
                    return entry[0]
            tmp, path = self._paths(key)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                size = build(fd)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            os.close(fd)
            self._add(key, tmp, path, size)
            return path

    # -- filled from outside (a bulk prefetch) -----------------------------------------

    def holds(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._cache

    def expects(self, key: Hashable) -> bool:
        """Whether the cache holds ``key`` or a bulk fill has promised it."""
        with self._lock:
            return key in self._cache or key in self._promised

    @property
    def budget(self) -> int:
        """Bytes the cache may hold."""
        return self._cache_bytes

    def staging(self, key: Hashable, size: int | None = None) -> Path | BufferOut:
        """Where to make the file of ``key`` before ``add``: a buffer in
        memory when ``size`` (what the file is expected to hold) is small and
        the memory budget has room for it, else a path that does not exist."""
        if size is not None and size <= MEMORY_FILE_BYTES:
            with self._lock:
                if self._memory_used + size <= self._memory_bytes and key not in self._staged:
                    self._memory_used += size
                    out = BufferOut()
                    self._staged[key] = (out, size)
                    return out
        tmp = self._paths(key, ".bulk")[0]  # apart from a READ's own build of it
        tmp.unlink(missing_ok=True)
        return tmp

    def add(self, key: Hashable, size: int) -> None:
        """Take the file made at ``staging(key)`` into the cache."""
        with self._lock:
            staged = self._staged.pop(key, None)
            if staged is not None:
                self._memory_used -= staged[1]
        if staged is not None:
            self._keep(key, staged[0].buf, size)
            return
        tmp, path = self._paths(key, ".bulk")
        self._add(key, tmp, path, size)

    def promise(self, keys: list[Hashable]) -> list[Hashable]:
        """A bulk fill will ``add`` these: a read of one waits for it (or for
        ``settle``) instead of building the file itself. Returns the keys
        promised now, in order: those the cache neither holds nor has been
        promised already (the fill makes only these)."""
        with self._lock:
            fresh = [key for key in dict.fromkeys(keys)
                     if key not in self._cache and key not in self._promised]
            for key in fresh:
                self._promised[key] = threading.Event()
        return fresh

    def settle(self, keys: list[Hashable]) -> None:
        """The bulk fill of ``keys`` is over (done or failed): a read of one it
        did not add builds the file itself."""
        with self._lock:
            events = [self._promised.pop(key) for key in keys if key in self._promised]
            for key in keys:   # buffers of files the fill did not finish
                staged = self._staged.pop(key, None)
                if staged is not None:
                    self._memory_used -= staged[1]
        for event in events:
            event.set()

    def _paths(self, key: Hashable, suffix: str = ".tmp") -> tuple[Path, Path]:
        name = hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()
        # Spread over subdirectories: every create, rename and unlink takes
        # its directory's lock, and with one directory the threads filling
        # the cache queued on it (5% of a push-back's samples spinning there).
        directory = self._cache_dir / name[:_SPREAD_CHARS]
        if directory not in self._dirs:
            with self._lock:
                if directory not in self._dirs:
                    try:
                        directory.mkdir()
                        self._dirs[directory] = True
                    except FileExistsError:  # the caller's, in a directory it gave
                        self._dirs[directory] = False
        return directory / f"{name}{suffix}", directory / name

    def drop(self, key: Hashable) -> None:
        """Forget ``key``'s file (a later read builds it again)."""
        with self._lock:
            entry = self._cache.pop(key, None)
            if entry is not None:
                self._forget(*entry)

    def _add(self, key: Hashable, tmp: Path, path: Path, size: int) -> None:
        os.replace(tmp, path)
        self._keep(key, path, size)

    def _keep(self, key: Hashable, entry: Path | bytearray, size: int) -> None:
        """``key`` is in the cache now (``entry``: its file, or its bytes in
        memory); the least recently used go past the budget."""
        with self._lock:
            old = self._cache.pop(key, None)
            if old is not None:
                self._forget(*old)
            self._cache[key] = (entry, size)
            self._cache_used += size
            if not isinstance(entry, Path):
                self._memory_used += size
            self._building.pop(key, None)
            promised = self._promised.pop(key, None)
            if promised is not None:
                promised.set()
            while self._cache_used > self._cache_bytes and len(self._cache) > 1:
                old_key = next(iter(self._cache))
                if old_key == key:
                    break
                self._forget(*self._cache.pop(old_key))

    def _forget(self, entry: Path | bytearray, size: int) -> None:
        self._cache_used -= size
        if isinstance(entry, Path):
            entry.unlink(missing_ok=True)
        else:
            self._memory_used -= size

    def close(self) -> None:
        """Drop every file (and the directory, if this cache made it). In a
        directory the caller gave, only what the cache made goes: its files
        and the subdirectories it made, if nothing else is in them."""
        with self._lock:
            paths = [path for path, _ in self._cache.values() if isinstance(path, Path)]
            made = [directory for directory, ours in self._dirs.items() if ours]
            self._cache.clear()
            self._cache_used = 0
            self._memory_used = 0
            self._staged.clear()
            self._dirs.clear()
        if self._own_cache_dir:
            shutil.rmtree(self._cache_dir, ignore_errors=True)
            return
        for path in paths:
            path.unlink(missing_ok=True)
        for directory in made:
            try:
                directory.rmdir()
            except OSError:
                pass  # not empty: a file still being built when the cache closed
