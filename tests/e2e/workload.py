"""A deterministic NFSv3 workload, driven by independent clients, for end-to-end tests.

`run_workload(url, root=..., seed=...)` makes a known set of changes below
`root` of the export at `url` (an `nfs://` URL as `nas.url()` or
`proxy.url()` gives it) and returns the errors it provoked on purpose. Run it
twice with the same arguments against two equal, empty starting points (say
once straight at the NAS and once through the proxy, each with its own
`root`) and the two subtrees must come out identical, and so must the
returned error lists. That is the transparency test; the capture test reads
the proxy's LOG after the same workload.

The clients are nfs-rs (most of the work) and libnfs-utils (`nfs-cp`,
`nfs-ls`), neither of which shares code with nfs-journal. Every part writes
below its own directory of `root`:

=============  ==============================================================
``tree/``      nested mkdir, symlinks (relative, dangling, to a directory),
               hard links, renames within a directory, across directories,
               over an existing target, of a directory; remove, rmdir
``data/``      writes at offsets with sparse holes, overwrites, truncate to
               shrink and to extend (SETATTR size), chmod (incl. setgid and
               sticky), chown, utime
``big/``       `BIG_FILES`: 3 x 4 MiB, each created empty then written only by
               1 MiB `write_at` calls through `open(..., "r+b")`, in a
               shuffled chunk order
``many/``      `SMALL_FILE_COUNT` small files; every fourth removed again
``libnfs/``    `nfs-cp` of a local multi-MiB file in (`LIBNFS_IN`), `nfs-cp`
               of it and of a big file out (compared), `nfs-ls`
``errors/``    the failures provoked on purpose (`ProvokedError`)
``random/``    optional: `random_ops` seeded random operations (see below)
=============  ==============================================================

Determinism. All content comes from `random.Random` seeded with `seed` and
the part's name, so each part's bytes do not depend on the others. Clients
are used one call at a time.

Transfer sizes. Every nfs-rs read and write moves at most `MAX_IO_BYTES`
(1 MiB, the largest rsize/wsize of the Linux kernel client), well under
nfs-rs's own 4 MiB limit, so nfs-rs sends exactly one READ or WRITE per
call and never has several in flight (nfs-cp may; only `libnfs/` sees
that). Transfers of nfs-rs's full 4 MiB are a separate test.

Errors. nfs-rs's exception class does not always match the NFS status
(TESTBED.md), so `ProvokedError.code_name` is the exception's `.code_name`
(e.g. ``NFS3ERR_NOENT``). A provoked call that unexpectedly succeeds is
recorded with ``NFS3_OK`` rather than raised, so both runs' outcomes can be
compared as they are. Any other failure (a transport error, a call meant to
succeed) propagates.

Random variant. `random_ops > 0` adds a seeded random sequence of namespace
and data operations under ``random/``, steered by a model of what exists,
so that most calls succeed and some fail on purpose (missing names,
non-empty directories, renames into a directory's own subtree, ...). The
model only picks the next call; the outcome is whatever the server says,
recorded in the returned list (with `proc=None`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import nfs_rs

__all__ = [
    "ProvokedError", "run_workload", "url_with_path", "connect", "MAX_IO_BYTES",
    "BIG_FILES", "BIG_FILE_BYTES", "BIG_CHUNK_BYTES", "SMALL_FILE_COUNT",
    "LIBNFS_IN", "LIBNFS_IN_BYTES", "SCRIPTED_ERRORS",
]

MiB = 1 << 20
MAX_IO_BYTES = 1 * MiB

BIG_FILES = ("big/b0.bin", "big/b1.bin", "big/b2.bin")
BIG_FILE_BYTES = 4 * MiB
BIG_CHUNK_BYTES = 1 * MiB
SMALL_FILE_COUNT = 200
LIBNFS_IN = "libnfs/in.bin"
LIBNFS_IN_BYTES = 5 * MiB + 4321

#: What the scripted part of ``errors/`` provokes: (call, path, NFSv3
#: procedure carrying the failure, status), in order. A test can compare
#: the returned list against this.
SCRIPTED_ERRORS = (
    ("mkdir", "errors/dir", "MKDIR", "NFS3ERR_EXIST"),
    ("remove", "errors/missing", "REMOVE", "NFS3ERR_NOENT"),
    ("rmdir", "errors/dir", "RMDIR", "NFS3ERR_NOTEMPTY"),
    ("stat", "errors/missing", "LOOKUP", "NFS3ERR_NOENT"),
    ("stat", "errors/no/such/path", "LOOKUP", "NFS3ERR_NOENT"),
    ("rename", "errors/missing", "RENAME", "NFS3ERR_NOENT"),
    ("link", "errors/dir/file", "LINK", "NFS3ERR_EXIST"),
    ("rmdir", "errors/dir/file", "RMDIR", "NFS3ERR_NOTDIR"),
)

CONNECT_TIMEOUT_S = 5.0
OPERATION_TIMEOUT_S = 30.0
TOOL_TIMEOUT_S = 120.0


@dataclasses.dataclass(frozen=True, slots=True)
class ProvokedError:
    """One failure the workload caused on purpose (or a random call that failed).

    `call` is the nfs-rs method; `path` (relative to the workload's root) is
    the name the failure is about: the source of a rename, the new name of
    a link, else the one path the call takes. `proc` is the NFSv3 procedure
    whose reply carries the failure (None when not known, as in the random
    part, where a missing parent fails the LOOKUP before the call proper);
    `code_name` is what the client reported, e.g. ``NFS3ERR_EXIST``.
    """

    call: str
    path: str
    proc: str | None
    code_name: str


def url_with_path(url: str, path: str) -> str:
    """`url` (``nfs://host/export?query``) with `path` appended to the export path."""
    base, sep, query = url.partition("?")
    path = path.strip("/")
    return f"{base.rstrip('/')}/{path}{sep}{query}" if path else url


def connect(url: str) -> nfs_rs.Client:
    """An nfs-rs client of `url` with short deadlines (a dead server otherwise hangs)."""
    return nfs_rs.Client.connect(url, connect_timeout=CONNECT_TIMEOUT_S,
                                 operation_timeout=OPERATION_TIMEOUT_S)


def run_workload(url: str, root: str = "workload", seed: int = 0, *, random_ops: int = 0,
                 libnfs: bool = True, tmp_dir: str | os.PathLike[str] | None = None,
                 ) -> list[ProvokedError]:
    """Run the workload below `root` of the export at `url`.

    `root` is created by the workload (its parent must exist, it must not).

    Returns the provoked errors, in the order they happened. `libnfs=False`
    leaves out the libnfs-utils part; `tmp_dir` is where that part keeps its
    local files (a temporary directory by default). Raises whatever a call
    meant to succeed raises, and RuntimeError when a libnfs tool fails.
    """
    root = root.strip("/")
    if not root:
        raise ValueError("the workload needs its own root directory, not the export root")
    with connect(url) as client, contextlib.ExitStack() as stack:
        if tmp_dir is None:
            tmp_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="nfsj-workload-"))
        w = _Workload(url, client, root, seed, Path(tmp_dir))
        client.mkdir(root, 0o755)
        w.tree()
        w.data()
        w.big_files()
        w.small_files()
        if libnfs:
            w.libnfs()
        w.scripted_errors()
        if random_ops:
            w.random_ops(random_ops)
        return w.errors


# --------------------------------------------------------------------------
# The parts


class _Workload:
    def __init__(self, url: str, client: nfs_rs.Client, root: str, seed: int, tmp_dir: Path):
        self.url = url
        self.c = client
        self.root = root
        self.seed = seed
        self.tmp_dir = tmp_dir
        self.errors: list[ProvokedError] = []

    def p(self, rel: str) -> str:
        """A workload-relative path as an export path."""
        return f"{self.root}/{rel}"

    def rng(self, part: str) -> random.Random:
        return random.Random(f"{self.seed}:{part}")

    # -- helpers ------------------------------------------------------------

    def write_file(self, rel: str, data: bytes) -> None:
        """Create (or truncate) and write a whole file, `MAX_IO_BYTES` per WRITE."""
        with self.c.open(self.p(rel), "wb") as f:
            for pos in range(0, len(data), MAX_IO_BYTES):
                f.write_at(data[pos:pos + MAX_IO_BYTES], pos)

    def read_file(self, rel: str) -> bytes:
        """A whole file, `MAX_IO_BYTES` per READ."""
        out = bytearray()
        with self.c.open(self.p(rel), "rb") as f:
            while chunk := f.read_at(len(out), MAX_IO_BYTES):
                out += chunk
        return bytes(out)

    def write_at(self, rel: str, data: bytes, offset: int) -> None:
        with self.c.open(self.p(rel), "r+b") as f:
            f.write_at(data, offset)

    def provoke(self, call: str, rel: str, proc: str | None, action: Callable[[], object]) -> None:
        """Run a call meant to fail and record how it failed (NFS3_OK if it did not)."""
        try:
            action()
        except nfs_rs.NfsError as e:
            if e.code_name is None:
                raise  # not an NFS status: a transport or client failure
            code = e.code_name
        else:
            code = "NFS3_OK"
        self.errors.append(ProvokedError(call, rel, proc, code))

    # -- tree/: namespace ---------------------------------------------------

    def tree(self) -> None:
        c, p = self.c, self.p
        rng = self.rng("tree")
        c.mkdir(p("tree"), 0o755)
        c.mkdir(p("tree/a"), 0o750)
        c.mkdir(p("tree/a/b"), 0o700)
        c.mkdir(p("tree/a/b/c"), 0o755)
        c.mkdir(p("tree/x"), 0o755)
        for name in ("one", "two", "three", "victim", "linked"):
            self.write_file(f"tree/a/{name}", rng.randbytes(rng.randrange(1, 9000)))

        # Symlinks: to a sibling, dangling, absolute, to a directory.
        c.symlink("one", p("tree/a/to-one"))
        c.symlink("../../nowhere/at all", p("tree/a/b/dangling"))
        c.symlink("/absolute/target", p("tree/x/absolute"))
        c.symlink("a/b", p("tree/to-dir"))

        # Hard links: three names for one file across two directories, then one
        # name removed (nlink 3 -> 2) and one renamed.
        c.link(p("tree/a/linked"), p("tree/a/linked-2"))
        c.link(p("tree/a/linked"), p("tree/x/linked-3"))
        c.remove(p("tree/a/linked-2"))
        c.rename(p("tree/x/linked-3"), p("tree/x/linked-renamed"))

        # Renames: within a directory, across directories, over an existing
        # file, and of a directory (with content) across directories.
        c.rename(p("tree/a/one"), p("tree/a/uno"))
        c.rename(p("tree/a/two"), p("tree/a/b/c/two"))
        c.rename(p("tree/a/three"), p("tree/a/victim"))
        c.mkdir(p("tree/a/moving"), 0o755)
        self.write_file("tree/a/moving/inside", b"moved with its directory\n")
        c.rename(p("tree/a/moving"), p("tree/x/moved"))

        # Remove and rmdir.
        self.write_file("tree/x/doomed", b"short-lived\n")
        c.remove(p("tree/x/doomed"))
        c.mkdir(p("tree/x/empty-then-gone"), 0o755)
        c.rmdir(p("tree/x/empty-then-gone"))

    # -- data/: writes, holes, truncate, attributes ---------------------------

    def data(self) -> None:
        c, p = self.c, self.p
        rng = self.rng("data")
        c.mkdir(p("data"), 0o755)

        # Writes at offsets leaving holes, overwrites across a hole's edge.
        with c.open(p("data/sparse.bin"), "wb") as f:
            f.write_at(rng.randbytes(4096), 0)
            f.write_at(rng.randbytes(5000), MiB + 7)
            f.write_at(rng.randbytes(100), 3 * MiB)  # a hole of almost 2 MiB before it
        self.write_at("data/sparse.bin", rng.randbytes(8192), 2048)  # overwrite 2048..10240
        self.write_at("data/sparse.bin", b"\xff" * 300, MiB)  # overlaps the second write's start

        # Truncate: shrink, then extend past the old end (a hole at the end).
        self.write_file("data/shrink-grow.bin", rng.randbytes(300_000))
        c.truncate(p("data/shrink-grow.bin"), 123_457)
        c.truncate(p("data/shrink-grow.bin"), 2 * MiB + 1)
        self.write_at("data/shrink-grow.bin", b"end", 2 * MiB - 2)  # straddles the new end

        self.write_file("data/to-empty.bin", rng.randbytes(20_000))
        c.truncate(p("data/to-empty.bin"), 0)
        c.touch(p("data/touched"))
        c.truncate(p("data/touched"), 4096)  # a file that is all hole

        # Attributes.
        self.write_file("data/attrs.bin", b"attributes\n")
        c.chmod(p("data/attrs.bin"), 0o640)
        c.chown(p("data/attrs.bin"), 1234, 5678)
        c.utime(p("data/attrs.bin"), ns=(1_600_000_000_123_456_789, 1_600_000_001_987_654_321))
        self.write_file("data/setgid.bin", b"#!/bin/sh\n")
        c.chown(p("data/setgid.bin"), -1, 4321)  # group only (before chmod: chown clears setgid)
        c.chmod(p("data/setgid.bin"), 0o2755)
        c.mkdir(p("data/sticky"), 0o755)
        c.chmod(p("data/sticky"), 0o1777)
        c.chown(p("data/sticky"), 1000, 1000)
        c.utime(p("data/sticky"), ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))

    # -- big/: multi-MiB files written only by WRITE ----------------------------

    def big_files(self) -> None:
        c, p = self.c, self.p
        rng = self.rng("big")
        c.mkdir(p("big"), 0o755)
        chunks = BIG_FILE_BYTES // BIG_CHUNK_BYTES
        for rel in BIG_FILES:
            with c.open(p(rel), "wb"):
                pass  # create it empty
            order = list(range(chunks))
            rng.shuffle(order)
            with c.open(p(rel), "r+b") as f:
                for i in order:
                    f.write_at(rng.randbytes(BIG_CHUNK_BYTES), i * BIG_CHUNK_BYTES)

    # -- many/: small files ------------------------------------------------------

    def small_files(self) -> None:
        c, p = self.c, self.p
        rng = self.rng("many")
        c.mkdir(p("many"), 0o755)
        for i in range(SMALL_FILE_COUNT):
            self.write_file(f"many/f{i:03d}", rng.randbytes(rng.randrange(0, 2000)))
        names = c.listdir(p("many"))
        if len(names) != SMALL_FILE_COUNT:
            raise AssertionError(f"many/ lists {len(names)} names, expected {SMALL_FILE_COUNT}")
        for i in range(0, SMALL_FILE_COUNT, 4):
            c.remove(p(f"many/f{i:03d}"))

    # -- libnfs/: nfs-cp and nfs-ls --------------------------------------------

    def libnfs(self) -> None:
        tools = {name: shutil.which(name) for name in ("nfs-cp", "nfs-ls")}
        missing = [name for name, path in tools.items() if path is None]
        if missing:
            raise RuntimeError(f"{', '.join(missing)} not found (apt-get install libnfs-utils)")
        rng = self.rng("libnfs")
        self.c.mkdir(self.p("libnfs"), 0o755)
        local_in = self.tmp_dir / f"{self.root.replace('/', '_')}-in.bin"
        local_in.write_bytes(rng.randbytes(LIBNFS_IN_BYTES))
        self._tool(tools["nfs-cp"], str(local_in), url_with_path(self.url, self.p(LIBNFS_IN)))

        for rel in (LIBNFS_IN, BIG_FILES[0]):
            local_out = self.tmp_dir / f"{self.root.replace('/', '_')}-out.bin"
            self._tool(tools["nfs-cp"], url_with_path(self.url, self.p(rel)), str(local_out))
            if local_out.read_bytes() != self.read_file(rel):
                raise AssertionError(f"nfs-cp copied {rel} out with other bytes than nfs-rs reads")
            local_out.unlink()

        listing = self._tool(tools["nfs-ls"], url_with_path(self.url, self.p("libnfs")))
        if b"in.bin" not in listing:
            raise AssertionError(f"nfs-ls of libnfs/ does not show in.bin: {listing[-2000:]!r}")

    @staticmethod
    def _tool(*argv: str) -> bytes:
        done = subprocess.run(argv, capture_output=True, timeout=TOOL_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr[-2000:]!r}")
        return done.stdout

    # -- errors/: failures on purpose ------------------------------------------

    def scripted_errors(self) -> None:
        c, p = self.c, self.p
        c.mkdir(p("errors"), 0o755)
        c.mkdir(p("errors/dir"), 0o755)
        self.write_file("errors/dir/file", b"keeps errors/dir non-empty\n")
        actions: dict[tuple[str, str], Callable[[], object]] = {
            ("mkdir", "errors/dir"): lambda: c.mkdir(p("errors/dir"), 0o755),
            ("remove", "errors/missing"): lambda: c.remove(p("errors/missing")),
            ("rmdir", "errors/dir"): lambda: c.rmdir(p("errors/dir")),
            ("stat", "errors/missing"): lambda: c.stat(p("errors/missing")),
            ("stat", "errors/no/such/path"): lambda: c.stat(p("errors/no/such/path")),
            ("rename", "errors/missing"): lambda: c.rename(p("errors/missing"), p("errors/other")),
            ("link", "errors/dir/file"): lambda: c.link(p("errors/dir/file"), p("errors/dir/file")),
            ("rmdir", "errors/dir/file"): lambda: c.rmdir(p("errors/dir/file")),
        }
        for call, rel, proc, _ in SCRIPTED_ERRORS:
            self.provoke(call, rel, proc, actions[call, rel])

    # -- random/: seeded random operations ---------------------------------------

    def random_ops(self, count: int) -> None:
        _RandomOps(self, count).run()


class _RandomOps:
    """Random calls under ``random/``, chosen with a model of what exists.

    The model (`kinds`: path -> "dir" | "file" | "lnk") is updated only from
    calls that succeeded, so it stays what the server holds whatever the
    outcomes are; the same seed therefore gives the same calls against any
    server that behaves the same.
    """

    _MODES = (0o600, 0o640, 0o644, 0o664, 0o700, 0o750, 0o755, 0o777)

    def __init__(self, w: _Workload, count: int):
        self.w = w
        self.count = count
        self.rng = w.rng("random")
        self.kinds: dict[str, str] = {"random": "dir"}
        self.serial = 0

    def run(self) -> None:
        self.w.c.mkdir(self.w.p("random"), 0o755)
        ops = [self.mkdir, self.create, self.write, self.truncate, self.chmod, self.rename,
               self.link, self.symlink, self.remove, self.rmdir]
        weights = [3, 5, 5, 2, 2, 4, 2, 1, 3, 2]
        for _ in range(self.count):
            self.rng.choices(ops, weights)[0]()

    # -- picking -----------------------------------------------------------------

    def _pick(self, kind: str | None = None) -> str | None:
        paths = sorted(p for p, k in self.kinds.items() if kind is None or k == kind)
        return self.rng.choice(paths) if paths else None

    def _new_name(self, parent: str) -> str:
        self.serial += 1
        return f"{parent}/n{self.serial}"

    def _missing(self) -> str:
        return self._new_name(self._pick("dir"))

    def _call(self, call: str, rel: str, action: Callable[[], object]) -> bool:
        """Run `action`; True if it worked, else record the failure."""
        try:
            action()
        except nfs_rs.NfsError as e:
            if e.code_name is None:
                raise
            self.w.errors.append(ProvokedError(call, rel, None, e.code_name))
            return False
        return True

    def _subtree(self, rel: str) -> Iterator[str]:
        prefix = rel + "/"
        return (p for p in list(self.kinds) if p == rel or p.startswith(prefix))

    # -- operations ----------------------------------------------------------------

    def mkdir(self) -> None:
        # Mostly a new name; sometimes an existing one (NFS3ERR_EXIST).
        rel = self._pick() if self.rng.random() < 0.1 else self._new_name(self._pick("dir"))
        mode = self.rng.choice(self._MODES)
        if self._call("mkdir", rel, lambda: self.w.c.mkdir(self.w.p(rel), mode)):
            self.kinds[rel] = "dir"

    def create(self) -> None:
        rel = self._new_name(self._pick("dir"))
        data = self.rng.randbytes(self.rng.randrange(0, 64 * 1024))
        if self._call("create", rel, lambda: self.w.write_file(rel, data)):
            self.kinds[rel] = "file"

    def write(self) -> None:
        rel = self._pick("file")
        if rel is None:
            return self.create()
        data = self.rng.randbytes(self.rng.randrange(1, 32 * 1024))
        offset = self.rng.randrange(0, 256 * 1024)
        self._call("write", rel, lambda: self.w.write_at(rel, data, offset))

    def truncate(self) -> None:
        rel = self._pick("file")
        if rel is None:
            return self.create()
        size = self.rng.randrange(0, 200 * 1024)
        self._call("truncate", rel, lambda: self.w.c.truncate(self.w.p(rel), size))

    def chmod(self) -> None:
        rel = self._pick()
        if self.kinds[rel] == "lnk":
            return  # nfs-rs reports success on symlinks but changes nothing (TESTBED.md)
        mode = self.rng.choice(self._MODES)
        if rel == "random":
            mode |= 0o700  # keep the part's own root usable
        self._call("chmod", rel, lambda: self.w.c.chmod(self.w.p(rel), mode))

    def rename(self) -> None:
        src = self._pick()
        if src == "random":
            src = self._missing()  # NFS3ERR_NOENT
        # An existing target (replaced, or refused: EXIST, NOTEMPTY, ISDIR,
        # INVAL into its own subtree) or a new name in some directory.
        dst = self._pick() if self.rng.random() < 0.3 else self._new_name(self._pick("dir"))
        if dst == "random":
            dst = self._new_name("random")
        if self._call("rename", src, lambda: self.w.c.rename(self.w.p(src), self.w.p(dst))):
            # POSIX: renaming a name onto itself, or onto another hard link of
            # the same file, succeeds and changes nothing. The model does not
            # know inodes and may then lose `src`; a later call on it fails and
            # is recorded, the same way in every run.
            if src == dst:
                return
            for old in list(self._subtree(dst)):
                del self.kinds[old]
            for old in list(self._subtree(src)):
                self.kinds[dst + old[len(src):]] = self.kinds.pop(old)

    def link(self) -> None:
        src = self._pick("file")
        if src is None:
            return self.create()
        dst = self._pick() if self.rng.random() < 0.15 else self._new_name(self._pick("dir"))
        if self._call("link", dst, lambda: self.w.c.link(self.w.p(src), self.w.p(dst))):
            self.kinds[dst] = "file"

    def symlink(self) -> None:
        rel = self._new_name(self._pick("dir"))
        target = self.rng.choice(["n1", "../n2", "/abs/path", "a b/c", "x" * 100])
        if self._call("symlink", rel, lambda: self.w.c.symlink(target, self.w.p(rel))):
            self.kinds[rel] = "lnk"

    def remove(self) -> None:
        # Files and symlinks; sometimes a missing name (NOENT) or a directory.
        roll = self.rng.random()
        if roll < 0.1:
            rel = self._missing()
        elif roll < 0.15:
            rel = self._pick("dir")
        else:
            rel = self._pick("file") or self._pick("lnk") or self._missing()
        if rel == "random":
            return
        if self._call("remove", rel, lambda: self.w.c.remove(self.w.p(rel))):
            del self.kinds[rel]

    def rmdir(self) -> None:
        rel = self._pick("dir")
        if rel == "random":
            rel = self._missing()
        if self._call("rmdir", rel, lambda: self.w.c.rmdir(self.w.p(rel))):
            del self.kinds[rel]
