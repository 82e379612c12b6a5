"""The acceptance test a user would run: record a randomized workload, then get
every moment of it back, through every way the past is offered.

Real processes only: nfs-ganesha on loopback (the NAS), `nfsj recoveryd`
shards (one, then two: the module runs once per shard count), and
`nfsj proxy --durability sync` in front of ganesha. The clients are nfs-rs
(independent of nfs-journal) and the `nfsj` commands a user types.

1. Through the proxy, an initial tree goes onto the NAS (nested directories,
   a multi-MiB file spanning several baseline pieces, small and empty
   files, a symlink, hard links); then `nfsj baseline`.
2. A seeded random workload (`RandomWorkload`; the seed is printed and
   `NFSJ_ACCEPTANCE_SEED` replays one) runs through the proxy with nfs-rs:
   creates, writes at random offsets (overwrites, appends, writes far past
   the end leaving holes), truncates that shrink and that extend, renames
   within and across directories and over existing names, removes,
   mkdir/rmdir, symlinks, hard links, chmod and utime. Calls the model
   expects to fail (a non-empty rmdir, a directory moved into its own
   subtree, ...) are made too: the journal records them as failed and
   replay must skip them. Two clients run at once, one below `w2/` and one
   on the rest of the tree, so calls overlap in the proxy and reach the LOG
   out of stamp order. (Each client's calls follow from the seed; how the
   two interleave does not, so a seed replays the calls, not the timing.)
3. `MOMENTS` times the workload pauses. The moment T is taken right after
   the pause (a stamp above every call answered so far: the proxy's clock
   reads the same wall clock), the consistent point must pass it (`nfsj
   status --json`), and the export directory (`nas.export_dir`, read only)
   is snapshotted as the truth at T, with the bytes of a few files.
4. Before the third phase a second `nfsj baseline` runs (the clients
   paused); the later moments must be restored from it. A baseline that runs
   *while* clients change what it reads is `test_a_baseline_beside_a_writing_client`.

Then, per moment:

* `nfsj restore --at T --to DIR` (T alternately as ISO-8601 and as an exact
  stamp) equals the truth exactly: paths, types, contents, sizes, modes,
  owners, symlink targets, link counts, hard-link groups, and the mtimes of
  every entry (tests/e2e/treecompare.py);
* `nfsj cat` of a few files gives the truth's bytes;

and for some moments:

* `nfsj restore --at T --to-nas --into fresh_K` writes the tree back onto
  the NAS (straight to ganesha, not through the proxy) and
  `nas.export_dir/fresh_K` equals the truth (mtimes of regular files and
  directories included);
* `nfsj export --at T` serves the tree read-only and nfs-rs walking it
  (listdir, stat, read, readlink) sees the truth.

Truth is never read through the code under test.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nfs_rs
import pytest

from e2e.proxy_fixture import ProxyProcess
from e2e.shard_fixture import ShardProcess
from e2e.test_export import ExportProcess
from e2e.treecompare import Entry, diff, hard_link_groups, snapshot
from e2e.workload import connect
from logstore.stamp import Stamp
from nfsproxy.demo.ganesha import GaneshaInstance, start_ganesha
from recoveryd.status import fetch_status, overall
from recoveryd.timespec import format_time

pytestmark = [pytest.mark.ganesha, pytest.mark.timeout(600)]

KiB, MiB = 1 << 10, 1 << 20
M32 = (1 << 32) - 1
NFSJ = [sys.executable, "-m", "nfsproxy"]
CLI_TIMEOUT_S = 180.0
PROVEN_TIMEOUT_S = 60.0

BASE_SEED = int(os.environ.get("NFSJ_ACCEPTANCE_SEED", "20250117"))
MOMENTS = 4
OPS_PER_MOMENT = 250
CAT_FILES_PER_MOMENT = 2
SECOND_ROOT = "w2"           # the second, concurrent client works below this, the first elsewhere
PUSH_MOMENTS = (1, 3)        # 0-based: pushed back onto the NAS (time: one push ~ a restore)
EXPORT_MOMENT = 2            # served by `nfsj export` and walked with nfs-rs
BASELINE_AGAIN_PHASE = 2     # a second `nfsj baseline` runs before this phase


# -- helpers ------------------------------------------------------------------------------


def nfsj(*args: str, timeout_s: float = CLI_TIMEOUT_S, text: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*NFSJ, *args], capture_output=True, timeout=timeout_s, text=text)


def now_bound() -> Stamp:
    """A stamp above every stamp the proxy handed out so far (its HLC reads the same
    wall clock, and every call made so far has been answered)."""
    time.sleep(0.02)
    bound = Stamp(time.time_ns(), M32, M32)
    time.sleep(0.02)
    return bound


def wait_proven(stack: "Stack", at: Stamp, *, cli: bool) -> Stamp:
    """Wait until the consistent point passes `at` (with `nfsj status --json` when
    `cli`, else through recoveryd.status in-process); return it."""
    deadline = time.monotonic() + PROVEN_TIMEOUT_S
    view: Any = None
    while time.monotonic() < deadline:
        if cli:
            done = nfsj("status", "--log", str(stack.proxy.log_dir), *stack.shard_args, "--json",
                        timeout_s=60)
            view = json.loads(done.stdout) if done.returncode == 0 else done.stderr
        else:
            view = overall(fetch_status(stack.addresses))
        point = view.get("consistent_point") if isinstance(view, dict) else None
        if point is not None and Stamp.parse(point["stamp"]) > at:
            return Stamp.parse(point["stamp"])
        time.sleep(0.1)
    raise AssertionError(f"the consistent point did not pass {at} in {PROVEN_TIMEOUT_S}s: {view}")


def run_baseline(proxy: ProxyProcess) -> tuple[Stamp, Stamp]:
    """`nfsj baseline`; its (BEGIN, END) stamps."""
    done = nfsj("baseline", "--log", str(proxy.log_dir), "--quiet")
    assert done.returncode == 0, f"nfsj baseline failed:\n{done.stdout}\n{done.stderr}"
    m = re.search(r"baseline (\S+) done.*restorable from (\S+)", done.stdout)
    assert m, done.stdout
    return Stamp.parse(m.group(1)), Stamp.parse(m.group(2))


def check(truth: dict[str, Entry], got: dict[str, Entry], what: str, *, mtimes: bool,
          replay: str = "") -> None:
    problems = diff(truth, got, mtimes=mtimes, names=("truth", what))
    assert not problems, f"{what} differs from the truth{replay}:\n" + "\n".join(problems[:80])


def without_mtimes(tree: dict[str, Entry], kinds: tuple[str, ...]) -> dict[str, Entry]:
    """`tree` with the mtimes of entries not of `kinds` blanked (not compared)."""
    return {rel: e if e.type in kinds else dataclasses.replace(e, mtime_ns=None)
            for rel, e in tree.items()}


# -- the randomized workload ------------------------------------------------------------------


class RandomWorkload:
    """Seeded random calls through one nfs-rs client, steered by a model of what exists.

    The model (`kinds`: export path -> "dir" | "file" | "lnk"; the root is "")
    only picks the next call; it is updated from calls that succeeded, so it
    stays what the server holds (hard links aside: renaming a name onto
    another name of the same file changes nothing, and the model may then lose
    a name; later calls on it fail, which is fine). Failures are counted by
    NFS status, never raised; anything that is not an NFS status (a transport
    failure) propagates.
    """

    MODES = (0o600, 0o640, 0o644, 0o664, 0o700, 0o750, 0o755, 0o777, 0o2755, 0o1777)
    SYMLINK_TARGETS = ("n1", "../up", "/absolute/target", "with space/x", "y" * 200, ".")

    def __init__(self, client: nfs_rs.Client, seed: int, kinds: dict[str, str], root: str = ""):
        self.c = client
        self.rng = random.Random(f"acceptance:{seed}:{root}")
        self.root = root           # never renamed or removed by this workload
        self.kinds = dict(kinds)
        self.serial = 0
        self.calls: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.writes: dict[str, int] = {}          # path -> writes since its creation
        ops = [(self.mkdir, 3), (self.create, 6), (self.write, 10), (self.truncate, 4),
               (self.chmod, 2), (self.utime, 1), (self.rename, 5), (self.link, 2),
               (self.symlink, 2), (self.remove, 3), (self.rmdir, 2)]
        self._ops = [op for op, _ in ops]
        self._weights = [w for _, w in ops]

    def steps(self, count: int) -> None:
        for _ in range(count):
            self.rng.choices(self._ops, self._weights)[0]()

    # -- picking ------------------------------------------------------------------------------

    def pick(self, kind: str | None = None, *, root: bool = True) -> str | None:
        paths = sorted(p for p, k in self.kinds.items()
                       if (kind is None or k == kind) and (root or p != self.root))
        return self.rng.choice(paths) if paths else None

    def new_name(self, parent: str | None = None) -> str:
        parent = self.pick("dir") if parent is None else parent
        self.serial += 1
        name = f"n{self.serial}"
        return f"{parent}/{name}" if parent else name

    def call(self, name: str, action) -> bool:
        self.calls[name] = self.calls.get(name, 0) + 1
        try:
            action()
        except nfs_rs.NfsError as e:
            if e.code_name is None:
                raise  # not an NFS status: a transport or client failure
            key = f"{name}:{e.code_name}"
            self.failures[key] = self.failures.get(key, 0) + 1
            return False
        return True

    def subtree(self, rel: str) -> list[str]:
        prefix = rel + "/"
        return [p for p in self.kinds if p == rel or p.startswith(prefix)]

    def children(self, rel: str) -> list[str]:
        prefix = rel + "/" if rel else ""
        return [p for p in self.kinds if p and p.startswith(prefix) and "/" not in p[len(prefix):]]

    def size_of(self, rel: str) -> int | None:
        """The file's size now (None, counted as a failure, when the model was wrong)."""
        size: list[int] = []
        return size[0] if self.call("stat", lambda: size.append(self.c.stat(rel).size)) else None

    # -- data ---------------------------------------------------------------------------------

    def write_new(self, path: str, data: bytes) -> None:
        with self.c.open(path, "wb") as f:
            for pos in range(0, len(data), MiB):
                f.write_at(data[pos:pos + MiB], pos)

    def create(self) -> None:
        rel = self.new_name()
        size = self.rng.choice([0, self.rng.randrange(1, 4 * KiB), self.rng.randrange(1, 96 * KiB)])
        data = self.rng.randbytes(size)
        if self.call("create", lambda: self.write_new(rel, data)):
            self.kinds[rel] = "file"
            self.writes[rel] = 1

    def write(self) -> None:
        rel = self.pick("file")
        if rel is None:
            return self.create()
        size = self.size_of(rel)
        if size is None:
            return
        roll = self.rng.random()
        if roll < 0.45 and size:
            offset = self.rng.randrange(0, size)                       # overwrite in place
        elif roll < 0.7:
            offset = size                                              # append
        else:
            offset = size + self.rng.randrange(1, 2 * MiB)             # past the end: a hole
        data = self.rng.randbytes(self.rng.randrange(1, 40 * KiB))

        def action() -> None:
            with self.c.open(rel, "r+b") as f:
                f.write_at(data, offset)
        if self.call("write", action):
            self.writes[rel] = self.writes.get(rel, 0) + 1

    def truncate(self) -> None:
        rel = self.pick("file")
        if rel is None:
            return self.create()
        size = self.size_of(rel)
        if size is None:
            return
        if self.rng.random() < 0.5 and size:
            new = self.rng.randrange(0, size)                          # shrink
        else:
            new = size + self.rng.randrange(1, 512 * KiB)              # extend: a hole at the end
        if self.call("truncate", lambda: self.c.truncate(rel, new)):
            self.writes[rel] = self.writes.get(rel, 0) + 1

    # -- attributes ---------------------------------------------------------------------------

    def chmod(self) -> None:
        rel = self.pick()
        if self.kinds[rel] == "lnk":
            return  # nfs-rs reports success on symlinks but changes nothing (TESTBED.md)
        mode = self.rng.choice(self.MODES)
        if self.kinds[rel] == "dir":
            mode |= 0o700
        self.call("chmod", lambda: self.c.chmod(rel or ".", mode))

    def utime(self) -> None:
        rel = self.pick(root=False)
        if rel is None or self.kinds[rel] == "lnk":
            return
        mtime_ns = self.rng.randrange(1_000_000_000, 1_700_000_000) * 10**9 + self.rng.randrange(10**9)
        self.call("utime", lambda: self.c.utime(rel, ns=(mtime_ns, mtime_ns)))

    # -- namespace ----------------------------------------------------------------------------

    def mkdir(self) -> None:
        rel = self.pick(root=False) if self.rng.random() < 0.05 else self.new_name()  # EXIST
        mode = self.rng.choice(self.MODES) | 0o700
        if self.call("mkdir", lambda: self.c.mkdir(rel, mode)):
            self.kinds[rel] = "dir"

    def rename(self) -> None:
        src = self.pick(root=False)
        if src is None:
            return
        roll = self.rng.random()
        if roll < 0.25:
            dst = self.pick(root=False)        # over an existing name (or refused)
        elif roll < 0.35:
            dst = self.new_name(src.rpartition("/")[0])  # within its directory
        else:
            dst = self.new_name()              # another directory (sometimes its own subtree)
        if self.call("rename", lambda: self.c.rename(src, dst)):
            if src == dst:
                return
            for old in self.subtree(dst):
                del self.kinds[old]
            for old in self.subtree(src):
                self.kinds[dst + old[len(src):]] = self.kinds.pop(old)
                if old in self.writes:
                    self.writes[dst + old[len(src):]] = self.writes.pop(old)

    def link(self) -> None:
        src = self.pick("file")
        if src is None:
            return self.create()
        dst = self.pick(root=False) if self.rng.random() < 0.1 else self.new_name()
        if self.call("link", lambda: self.c.link(src, dst)):
            self.kinds[dst] = "file"

    def symlink(self) -> None:
        rel = self.new_name()
        target = self.rng.choice(self.SYMLINK_TARGETS)
        if self.call("symlink", lambda: self.c.symlink(target, rel)):
            self.kinds[rel] = "lnk"

    def remove(self) -> None:
        roll = self.rng.random()
        if roll < 0.05:
            rel = self.new_name()                 # NOENT
        elif roll < 0.1:
            rel = self.pick("dir", root=False)    # a directory: refused
        else:
            rel = self.pick("file") or self.pick("lnk")
        if rel is None:
            return
        if self.call("remove", lambda: self.c.remove(rel)):
            self.kinds.pop(rel, None)
            self.writes.pop(rel, None)

    def rmdir(self) -> None:
        dirs = [p for p, k in self.kinds.items() if k == "dir" and p != self.root]
        if not dirs:
            return
        empty = sorted(d for d in dirs if not self.children(d))
        rel = (self.rng.choice(empty) if empty and self.rng.random() < 0.8
               else self.rng.choice(sorted(dirs)))   # often NOTEMPTY
        if self.call("rmdir", lambda: self.c.rmdir(rel)):
            for old in self.subtree(rel):
                del self.kinds[old]


def make_initial_tree(c: nfs_rs.Client, rng: random.Random) -> dict[str, str]:
    """The tree before the baseline; returns the model's `kinds`."""
    kinds: dict[str, str] = {"": "dir"}

    def mkdir(path: str, mode: int) -> None:
        c.mkdir(path, mode)
        kinds[path] = "dir"

    def put(path: str, data: bytes, mode: int | None = None) -> None:
        with c.open(path, "wb") as f:
            for pos in range(0, len(data), MiB):
                f.write_at(data[pos:pos + MiB], pos)
        if mode is not None:
            c.chmod(path, mode)
        kinds[path] = "file"

    for d, mode in (("docs", 0o755), ("docs/deep", 0o750), ("docs/deep/er", 0o700),
                    ("src", 0o755), ("src/lib", 0o755), ("media", 0o775), ("tmp", 0o1777)):
        mkdir(d, mode)
    put("media/big.bin", rng.randbytes(3 * MiB + 4321))          # several baseline pieces
    put("docs/readme.txt", b"read me\n" * 200, 0o644)
    put("docs/deep/er/secret", rng.randbytes(777), 0o600)
    put("docs/empty", b"")
    for i in range(12):
        put(f"src/lib/m{i:02d}.py", rng.randbytes(rng.randrange(100, 20 * KiB)))
    put("src/run.sh", b"#!/bin/sh\nexec true\n", 0o755)
    mkdir(SECOND_ROOT, 0o755)                                      # the second client's part
    for i in range(4):
        put(f"{SECOND_ROOT}/w{i}", rng.randbytes(rng.randrange(0, 50 * KiB)))
    c.symlink("../docs/readme.txt", "src/readme-link")
    kinds["src/readme-link"] = "lnk"
    c.link("src/lib/m00.py", "docs/m00-too")
    c.link("src/lib/m00.py", "tmp/m00-three")
    kinds["docs/m00-too"] = kinds["tmp/m00-three"] = "file"
    return kinds


# -- the recorded run ---------------------------------------------------------------------------


@dataclasses.dataclass
class Stack:
    nas: GaneshaInstance
    shards: list[ShardProcess]
    proxy: ProxyProcess

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.shards]

    @property
    def shard_args(self) -> list[str]:
        return [arg for a in self.addresses for arg in ("--shard", a)]

    @property
    def nas_address(self) -> str:
        return f"127.0.0.1:{self.nas.nfs_port}:{self.nas.mount_port}:/export"


@dataclasses.dataclass
class Moment:
    index: int
    at: Stamp
    at_text: str                     # what is given to --at
    truth: dict[str, Entry]          # snapshot of the export directory, mtimes included
    cat: dict[str, bytes]            # a few regular files' bytes


@dataclasses.dataclass
class Recorded:
    stack: Stack
    seed: int
    n_shards: int
    moments: list[Moment]
    tmp: Path
    workloads: list[RandomWorkload]
    baselines: list[tuple[Stamp, Stamp]]     # (BEGIN, END) of each `nfsj baseline`

    @property
    def replay(self) -> str:
        return (f" (seed {self.seed}, {self.n_shards} shard(s); NFSJ_ACCEPTANCE_SEED={BASE_SEED} "
                "replays its calls)")

    def baseline_for(self, at: Stamp) -> tuple[Stamp, Stamp]:
        """The baseline a restore at `at` must start from: the newest that ended by then."""
        return [b for b in self.baselines if b[1] <= at][-1]


def _cat_picks(workloads: list[RandomWorkload], truth: dict[str, Entry],
               rng: random.Random) -> list[str]:
    """The most-written regular file, and random other ones (all present in `truth`)."""
    writes = {p: n for w in workloads for p, n in w.writes.items()}
    files = sorted(p for p, e in truth.items() if e.type == "reg")
    if not files:
        return []
    busiest = max(files, key=lambda p: (writes.get(p, 0), truth[p].size or 0, p))
    others = [p for p in files if p != busiest]
    return [busiest] + rng.sample(others, min(len(others), CAT_FILES_PER_MOMENT - 1))


@pytest.fixture(scope="module", params=[1, 2], ids=["1shard", "2shards"])
def recorded(request, tmp_path_factory):
    n_shards = request.param
    seed = BASE_SEED + n_shards
    tmp = tmp_path_factory.mktemp(f"acceptance{n_shards}")
    nas = start_ganesha(tmp / "export", tmp / "ganesha")
    shards: list[ShardProcess] = []
    proxy: ProxyProcess | None = None
    try:
        shards = [ShardProcess(tmp / f"shard{k}", k).start() for k in range(n_shards)]
        extra = [arg for s in shards for arg in ("--shard", s.address)]
        proxy = ProxyProcess(nas, tmp / "log", durability="sync", extra=extra).start()
        stack = Stack(nas, shards, proxy)
        rng = random.Random(f"acceptance-tree:{seed}")
        with connect(proxy.url()) as c:
            kinds = make_initial_tree(c, rng)
        baselines = [run_baseline(proxy)]

        moments: list[Moment] = []
        pick_rng = random.Random(f"acceptance-cat:{seed}")
        second = {p: k for p, k in kinds.items() if p == SECOND_ROOT or p.startswith(SECOND_ROOT + "/")}
        first = {p: k for p, k in kinds.items() if p not in second}
        with connect(proxy.url()) as c1, connect(proxy.url()) as c2, \
                concurrent.futures.ThreadPoolExecutor(2) as pool:
            workloads = [RandomWorkload(c1, seed, first), RandomWorkload(c2, seed, second, SECOND_ROOT)]
            for k in range(MOMENTS):
                # Both clients at once (so records reach the LOG out of stamp order), then the pause.
                if k == BASELINE_AGAIN_PHASE:
                    baselines.append(run_baseline(proxy))
                for future in [pool.submit(w.steps, OPS_PER_MOMENT) for w in workloads]:
                    future.result()
                # Every call so far has been answered: T is above all of them.
                at = now_bound()
                at_text = format_time(at) if k % 2 == 0 else str(at)
                wait_proven(stack, at, cli=(k == 0))
                truth = snapshot(nas.export_dir, mtimes=True)
                picks = _cat_picks(workloads, truth, pick_rng)
                cat = {p: (nas.export_dir / p).read_bytes() for p in picks}
                moments.append(Moment(k, at, at_text, truth, cat))
        for w in workloads:
            print(f"\nacceptance seed {seed} ({n_shards} shard(s)), client below /{w.root}: calls "
                  f"{sorted(w.calls.items())}; failed {sorted(w.failures.items())}")
        yield Recorded(stack, seed, n_shards, moments, tmp, workloads, baselines)
    finally:
        if proxy is not None:
            proxy.stop()
        for s in shards:
            s.stop()
        nas.stop()


# -- reading a tree through nfs-rs -----------------------------------------------------------------

_NFS_RS_TYPES = {nfs_rs.FileType.FILE: "reg", nfs_rs.FileType.DIRECTORY: "dir",
                 nfs_rs.FileType.SYMLINK: "lnk", nfs_rs.FileType.FIFO: "fifo",
                 nfs_rs.FileType.SOCKET: "sock", nfs_rs.FileType.CHARACTER_DEVICE: "chr",
                 nfs_rs.FileType.BLOCK_DEVICE: "blk"}


def nfs_rs_walk(url: str) -> dict[str, Entry]:
    """What `treecompare.snapshot(root, mtimes=True)` gives, read over NFS with
    listdir, stat, read and readlink (hard-link groups from fileids)."""
    c = nfs_rs.Client.connect(url, connect_timeout=5, operation_timeout=60)
    try:
        infos: dict[str, Any] = {"": c.stat(".")}
        pending = [""]
        while pending:
            d = pending.pop()
            for name in sorted(c.listdir(d or ".")):
                if name in (".", ".."):
                    continue
                rel = f"{d}/{name}" if d else name
                infos[rel] = c.stat(rel)
                if infos[rel].type is nfs_rs.FileType.DIRECTORY:
                    pending.append(rel)
        by_fileid: dict[int, list[str]] = {}
        for rel, info in infos.items():
            if info.type is not nfs_rs.FileType.DIRECTORY:
                by_fileid.setdefault(info.fileid, []).append(rel)
        out: dict[str, Entry] = {}
        for rel, info in infos.items():
            kind = _NFS_RS_TYPES[info.type]
            fields: dict[str, Any] = dict(type=kind, mode=info.mode & 0o7777, nlink=info.nlink,
                                          uid=info.uid, gid=info.gid, mtime_ns=info.mtime)
            if kind == "reg":
                data = bytearray()
                with c.open(rel, "rb") as f:
                    while chunk := f.read_at(len(data), MiB):
                        data += chunk
                assert len(data) == info.size, f"{rel}: read {len(data)} bytes, GETATTR says {info.size}"
                fields.update(size=info.size, sha256=hashlib.sha256(data).hexdigest())
            elif kind == "lnk":
                target = c.readlink(rel)
                fields.update(size=len(target.encode()), target=target)
            if kind != "dir":
                fields.update(link_group=tuple(sorted(by_fileid[info.fileid])))
            out[rel] = Entry(**fields)
        return out
    finally:
        c.close()


# -- the checks ------------------------------------------------------------------------------------


def test_the_workload_was_rich(recorded):
    """The random run did what the test claims (else the checks below prove little)."""
    for w in recorded.workloads:
        for name in ("create", "write", "truncate", "rename", "link", "symlink", "remove",
                     "rmdir", "mkdir", "chmod"):
            assert w.calls.get(name, 0) > 0, f"/{w.root}: no {name} in {w.calls}"
        assert w.failures, f"/{w.root}: no call failed: replay of failed records goes untested"
    last = recorded.moments[-1].truth
    assert hard_link_groups(last), "no hard links at the last moment"
    assert any(e.type == "lnk" for e in last.values())
    assert any(e.type == "reg" and e.size and e.size > MiB for e in last.values())
    truths = [m.truth for m in recorded.moments]
    assert all(diff(a, b) for a, b in zip(truths, truths[1:])), "two moments are equal"


@pytest.mark.parametrize("k", range(MOMENTS))
def test_restore_to_dir_is_the_truth(recorded, k, tmp_path):
    m = recorded.moments[k]
    dest = tmp_path / f"restored-{k}"
    done = nfsj("restore", "--at", m.at_text, "--to", str(dest), "--quiet",
                *recorded.stack.shard_args)
    assert done.returncode == 0, f"nfsj restore failed:\n{done.stdout}\n{done.stderr}"
    assert f"delivered cut {m.at} " in done.stderr and "UNPROVEN" not in done.stderr, done.stderr
    begin, end = recorded.baseline_for(m.at)
    assert f"baseline {begin} ended {end} " in done.stderr, done.stderr
    check(m.truth, snapshot(dest, mtimes=True), f"restore --at T{k} --to DIR", mtimes=True,
          replay=recorded.replay)


@pytest.mark.parametrize("k", range(MOMENTS))
def test_cat_gives_the_truth_bytes(recorded, k):
    m = recorded.moments[k]
    assert m.cat, "nothing to cat"
    for path, want in m.cat.items():
        done = nfsj("cat", path, "--at", m.at_text, *recorded.stack.shard_args, text=False)
        assert done.returncode == 0, f"nfsj cat {path} failed: {done.stderr.decode()}"
        assert len(done.stdout) == len(want), (path, len(done.stdout), len(want))
        assert done.stdout == want, f"nfsj cat {path} --at T{k}: other bytes{recorded.replay}"


@pytest.mark.parametrize("k", PUSH_MOMENTS)
def test_push_to_nas_into_a_fresh_subdir_is_the_truth(recorded, k):
    m = recorded.moments[k]
    into = f"fresh_subdir_{k}"
    done = nfsj("restore", "--at", m.at_text, "--to-nas", "--nas", recorded.stack.nas_address,
                "--into", into, "--quiet", *recorded.stack.shard_args, timeout_s=300)
    assert done.returncode == 0, f"nfsj restore --to-nas failed:\n{done.stdout}\n{done.stderr}"
    assert f"delivered cut {m.at} " in done.stderr, done.stderr
    pushed = snapshot(recorded.stack.nas.export_dir / into, mtimes=True)
    # Over NFS, mtimes are compared for regular files and directories (a symlink's
    # times cannot be set through NFSv3 SETATTR on every server).
    kinds = ("reg", "dir")
    check(without_mtimes(m.truth, kinds), without_mtimes(pushed, kinds),
          f"restore --at T{k} --to-nas --into {into}", mtimes=True, replay=recorded.replay)


def test_export_of_the_past_is_the_truth(recorded, tmp_path):
    m = recorded.moments[EXPORT_MOMENT]
    export = ExportProcess(m.at_text, recorded.stack.shard_args, tmp_path / "export.stderr")
    try:
        assert f"(cut {m.at} " in export.line and "UNPROVEN" not in export.line, export.line
        got = nfs_rs_walk(export.url())
    finally:
        assert export.stop() == 0, export.stderr_text()
    # The export root's own entry is the export's directory: its mtime is compared too.
    kinds = ("reg", "dir")
    check(without_mtimes(m.truth, kinds), without_mtimes(got, kinds),
          f"nfsj export --at T{EXPORT_MOMENT} read by nfs-rs", mtimes=True, replay=recorded.replay)


# -- a baseline beside a writing client -------------------------------------------------------------
#
# A baseline reads the export while clients go on changing it (DESIGN.md: "while journaling
# goes on"; the restore must stay correct). The random workload above pauses for its second
# baseline; these two tests make the changes a running baseline is most exposed to, at a
# moment chosen so that they land mid-walk.

BESIDE_FILES = 3000          # small files that keep the baseline busy for a few seconds
BESIDE_DIRS = 40


def restore_after_a_baseline_beside(tmp_path: Path, make_tree, change) -> None:
    """`make_tree(export_dir)` straight on the NAS directory (before ganesha starts);
    start `nfsj baseline`, and a second later `change(nfs_rs_client)` through the
    proxy while it still runs; then the restore at a moment after both must equal
    the NAS."""
    make_tree(tmp_path / "export")
    nas = start_ganesha(tmp_path / "export", tmp_path / "ganesha")
    shard = proxy = None
    try:
        shard = ShardProcess(tmp_path / "shard0", 0).start()
        proxy = ProxyProcess(nas, tmp_path / "log", extra=["--shard", shard.address]).start()
        stack = Stack(nas, [shard], proxy)
        baseline = subprocess.Popen([*NFSJ, "baseline", "--log", str(proxy.log_dir), "--quiet"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        with connect(proxy.url()) as c:
            change(c)
        still_running = baseline.poll() is None
        out, err = baseline.communicate(timeout=CLI_TIMEOUT_S)
        assert baseline.returncode == 0, f"nfsj baseline failed:\n{out}\n{err}"
        assert still_running, "the baseline ended before the client's changes: nothing was tested"
        at = now_bound()
        wait_proven(stack, at, cli=False)
        truth = snapshot(nas.export_dir, mtimes=True)
        done = nfsj("restore", "--at", str(at), "--to", str(tmp_path / "restored"), "--quiet",
                    *stack.shard_args)
        assert done.returncode == 0, f"nfsj restore failed:\n{done.stdout}\n{done.stderr}"
        check(truth, snapshot(tmp_path / "restored", mtimes=True),
              "restore after a baseline beside a writing client", mtimes=True)
    finally:
        if proxy is not None:
            proxy.stop()
        if shard is not None:
            shard.stop()
        nas.stop()


def test_a_baseline_beside_a_writing_client_keeps_every_attribute(tmp_path):
    """``big/`` holds `BESIDE_FILES` small files and `BESIDE_DIRS` subdirectories. While
    the baseline reads the files one by one (it listed big/ first), a client chmods
    every subdirectory and makes a file in each (a new mtime)."""
    def make_tree(export: Path) -> None:
        big = export / "big"
        big.mkdir(parents=True)
        for i in range(BESIDE_FILES):
            (big / f"f{i:04d}").write_bytes(os.urandom(2000))
        for i in range(BESIDE_DIRS):
            (big / f"sub{i:02d}").mkdir()
            os.chmod(big / f"sub{i:02d}", 0o755)

    def change(c: nfs_rs.Client) -> None:
        for i in range(BESIDE_DIRS):
            c.chmod(f"big/sub{i:02d}", 0o700)
            with c.open(f"big/sub{i:02d}/new", "wb") as f:
                f.write_at(b"made during the baseline\n", 0)

    restore_after_a_baseline_beside(tmp_path, make_tree, change)


def test_a_file_moved_across_a_running_baseline_is_not_lost(tmp_path):
    """The walk is breadth first: ``dst/`` (depth 1) is listed at once, ``slow/x/``
    (depth 2, `BESIDE_FILES` files) keeps it busy, ``c/d/src/`` (depth 3) is listed
    last. Meanwhile a client moves ``c/d/src/f`` to ``dst/f``, and a directory with
    a file in it the same way."""
    def make_tree(export: Path) -> None:
        for d in ("dst", "slow/x", "c/d/src/dir"):
            (export / d).mkdir(parents=True)
        for i in range(BESIDE_FILES):
            (export / f"slow/x/f{i:04d}").write_bytes(os.urandom(2000))
        (export / "c/d/src/f").write_bytes(b"here before the baseline\n")
        (export / "c/d/src/dir/inside").write_bytes(b"inside a moved directory\n")

    def change(c: nfs_rs.Client) -> None:
        c.rename("c/d/src/f", "dst/f")
        c.rename("c/d/src/dir", "dst/dir")

    restore_after_a_baseline_beside(tmp_path, make_tree, change)
