"""`nfsj export --at T`: the tree as it was at T, served read-only over NFSv3, end to end.

Real processes throughout: nfs-ganesha, two `nfsj recoveryd` shards and
`nfsj proxy --shard A --shard B` in front of ganesha. Through the proxy,
nfs-rs makes a tree (nested directories, symlinks, hard links, a multi-MiB
file, 300 small files), partly before `nfsj baseline` and partly after it
(so the export has to replay journaled changes on top of the baseline:
files grown and shrunk by WRITE and SETATTR, renames, removes, new links).
Right after, the proxy names a stamp T above everything so far, and the
test copies the truth: a snapshot (`treecompare.snapshot`) of ganesha's
export directory. Then the tree changes again, after T. Once the
consistent point has passed T, `nfsj export --at T` serves it and the test
reads the whole tree back with two independent clients, nfs-rs and
libnfs-utils (`nfs-ls -R`, `nfs-cat`): it must be the truth at T (paths,
types, contents, sizes, modes, owners, symlink targets, link counts, which
names are one file), not the tree as it is now. Writing through the export
gets NFS3ERR_ROFS.

`tests/e2e/test_pushback.py` reuses this module's stack (`restorable`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import nfs_rs
import pytest

from e2e.proxy_fixture import ProxyProcess
from e2e.shard_fixture import ShardProcess
from e2e.treecompare import Entry, diff, hard_link_groups, snapshot
from e2e.workload import connect
from logstore.stamp import Stamp
from nfsproxy.nas.client import NfsClient, NfsError, sattr3
from nfsproxy.wire.nfs3 import Ftype3, Nfsstat3, StableHow
from recoveryd.status import read_proxy_status
from recoveryd.timespec import format_time

pytestmark = [pytest.mark.ganesha, pytest.mark.timeout(900)]

MiB = 1 << 20
OTHER_UID = OTHER_GID = 4242
N_SHARDS = 2
N_SMALL = 300
BIG_BYTES = 5 * MiB + 12345
HANG_S = 240.0
POLL_S = 0.2
CLI_TIMEOUT_S = 120.0
T = TypeVar("T")


# -- the stack -------------------------------------------------------------------------


@dataclasses.dataclass
class Stack:
    nas: Any
    shards: list[ShardProcess]
    proxy: ProxyProcess

    @property
    def shard_args(self) -> list[str]:
        return [arg for s in self.shards for arg in ("--shard", s.address)]


@dataclasses.dataclass
class Restorable:
    """A stack whose journal can restore `at`, and the truth at that moment."""

    stack: Stack
    at: Stamp
    truth: dict[str, Entry]       # snapshot of the export directory at `at`
    truth_mtimes: dict[str, int]  # regular files' mtimes at `at`
    later: dict[str, Entry]       # snapshot after the changes made after `at`


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = HANG_S) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"hang: still waiting, after {timeout_s:g}s, for {what}")
        time.sleep(POLL_S)


def nfsj(*args: str, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nfsproxy", *args], capture_output=True,
                          text=True, timeout=timeout_s)


def proxy_newest_after(proxy: ProxyProcess, after_ns: int) -> Stamp:
    """`newest` from the first status.json the proxy writes after `after_ns`: a stamp
    its clock gave after every call answered before `after_ns`."""
    def probe():
        try:
            st = read_proxy_status(proxy.log_dir)
        except Exception:  # noqa: BLE001  not written yet, or being replaced
            return None
        return st if st.get("written_unix_ns", 0) > after_ns else None
    return Stamp.parse(wait_for("a fresh status.json", probe)["newest"])


def wait_until_proven(stack: Stack, at: Stamp) -> Stamp:
    """Wait until the consistent point passes `at`; return it."""
    def probe():
        done = nfsj("status", "--log", str(stack.proxy.log_dir), "--json", timeout_s=60)
        if done.returncode != 0:
            return None
        point = json.loads(done.stdout)["consistent_point"]
        if point is not None and Stamp.parse(point["stamp"]) > at:
            return Stamp.parse(point["stamp"])
        return None
    return wait_for(f"the consistent point to pass {at}", probe)


def run_baseline(stack: Stack) -> None:
    done = nfsj("baseline", "--log", str(stack.proxy.log_dir), "--quiet")
    assert done.returncode == 0, f"nfsj baseline failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture
def stack(nas, shard_factory, proxy_factory) -> Stack:
    """ganesha, two shards, and a sync proxy shipping to them."""
    shards = [shard_factory(k) for k in range(N_SHARDS)]
    extra = ["--log-retain", "1h"]
    for shard in shards:
        extra += ["--shard", shard.address]
    return Stack(nas, shards, proxy_factory(durability="sync", extra=extra))


# -- the tree ---------------------------------------------------------------------------


def _write(c: nfs_rs.Client, path: str, data: bytes, mode: int | None = None) -> None:
    with c.open(path, "wb") as f:
        for pos in range(0, len(data), MiB):
            f.write_at(data[pos:pos + MiB], pos)
    if mode is not None:
        c.chmod(path, mode)


def make_before_baseline(c: nfs_rs.Client, rng: random.Random) -> None:
    c.mkdir("tree", 0o755)
    c.mkdir("tree/a", 0o750)
    c.mkdir("tree/a/b", 0o700)
    c.mkdir("tree/a/b/c", 0o755)
    c.mkdir("tree/x", 0o711)
    c.mkdir("big", 0o755)
    c.mkdir("changed", 0o755)
    _write(c, "tree/a/one", rng.randbytes(3000), 0o644)
    _write(c, "tree/a/b/c/deep", rng.randbytes(777), 0o600)
    _write(c, "tree/x/exec.sh", b"#!/bin/sh\necho restored\n", 0o755)
    _write(c, "tree/a/linked", rng.randbytes(4321), 0o644)
    _write(c, "tree/x/doomed", b"removed after the baseline\n", 0o644)
    _write(c, "tree/empty", b"", 0o640)
    c.symlink("one", "tree/a/to-one")
    c.symlink("../../nowhere/at all", "tree/x/dangling")
    c.symlink("a/b", "tree/to-dir")
    c.link("tree/a/linked", "tree/x/linked-2")
    _write(c, "big/big.bin", rng.randbytes(BIG_BYTES), 0o644)
    _write(c, "changed/grows", rng.randbytes(1000), 0o644)
    _write(c, "changed/shrinks", rng.randbytes(100_000), 0o644)
    _write(c, "changed/rewritten", rng.randbytes(2 * MiB), 0o644)


def make_after_baseline(c: nfs_rs.Client, rng: random.Random, proxy: ProxyProcess) -> None:
    """Changes the journal must replay on top of the baseline."""
    c.mkdir("many", 0o755)
    for i in range(N_SMALL):
        _write(c, f"many/f{i:03d}", rng.randbytes(rng.randrange(0, 3000)))
    with c.open("changed/grows", "r+b") as f:
        f.write_at(rng.randbytes(MiB), 1000)
        f.write_at(rng.randbytes(MiB + 17), 1000 + MiB)
    c.truncate("changed/shrinks", 777)
    with c.open("changed/rewritten", "r+b") as f:
        f.write_at(rng.randbytes(MiB), MiB // 2)
    c.chmod("changed/rewritten", 0o604)
    c.rename("tree/a/b/c/deep", "tree/a/b/deep-moved")
    c.remove("tree/x/doomed")
    c.link("tree/a/linked", "tree/x/linked-3")
    c.link("many/f007", "tree/a/many-7")
    c.chmod("tree/a/linked", 0o640)
    c.mkdir("tree/a/b/new-dir", 0o750)
    c.symlink("../many/f000", "tree/to-f000")
    c.mkdir("gone", 0o751)
    c.mkdir("gone/sub", 0o705)
    _write(c, "gone/sub/file", b"its directories go after T\n", 0o604)
    c.chown("tree/a/b/deep-moved", OTHER_UID, OTHER_GID)
    c.utime("tree/a/one", ns=(1_500_000_000_123_456_789, 1_500_000_000_987_654_321))
    # nfs-rs has no mknod: a FIFO through the proxy with our own client.
    with NfsClient("127.0.0.1", proxy.port, proxy.port, "/export") as ours:
        ours.mount()
        ours.mknod(ours.lookup_path("tree/x"), "pipe", Ftype3.NF3FIFO, 0o640)


def make_after_t(c: nfs_rs.Client, rng: random.Random) -> None:
    """Changes after T, which no view of T may show."""
    c.remove("many/f001")
    with c.open("big/big.bin", "r+b") as f:
        f.write_at(b"\xff" * MiB, 0)
    with c.open("changed/grows", "r+b") as f:
        f.write_at(b"later", 5 * MiB)
    c.chmod("tree", 0o700)
    c.mkdir("later", 0o755)
    _write(c, "later/file", b"only after T\n")
    c.rename("tree/a/one", "tree/a/uno")
    c.remove("tree/x/linked-2")
    c.remove("gone/sub/file")
    c.rmdir("gone/sub")
    c.rmdir("gone")


def regular_mtimes(root: Path) -> dict[str, int]:
    return {rel: e.mtime_ns for rel, e in snapshot(root, mtimes=True).items() if e.type == "reg"}


@pytest.fixture
def restorable(stack: Stack) -> Restorable:
    """The stack, with a tree whose moment `at` is proven, and the truth at `at`."""
    rng = random.Random(20240501)
    url = stack.proxy.url()
    with connect(url) as c:
        make_before_baseline(c, rng)
    run_baseline(stack)
    with connect(url) as c:
        make_after_baseline(c, rng, stack.proxy)
    at = proxy_newest_after(stack.proxy, time.time_ns())
    truth = snapshot(stack.nas.export_dir)
    truth_mtimes = regular_mtimes(stack.nas.export_dir)
    with connect(url) as c:
        make_after_t(c, rng)
    later = snapshot(stack.nas.export_dir)
    assert diff(truth, later), "the changes after T changed nothing"
    assert hard_link_groups(truth) and len(truth) > N_SMALL + 20
    wait_until_proven(stack, at)
    return Restorable(stack, at, truth, truth_mtimes, later)


# -- the export process --------------------------------------------------------------------

_SERVING = re.compile(r"^nfsj export: serving (\S+) \((cut .*)\) on [^ ]+:(\d+)$")


class ExportProcess:
    """`nfsj export --at T --listen 127.0.0.1:0 --shard ...` as a user runs it."""

    def __init__(self, at: str, shard_args: list[str], stderr_path: Path, extra: list[str] = ()):
        argv = [sys.executable, "-m", "nfsproxy", "export", "--at", at, "--listen", "127.0.0.1:0",
                *shard_args, *extra]
        self.stderr_path = stderr_path
        self.stderr = open(stderr_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        line = self.proc.stdout.readline()
        m = _SERVING.match(line.strip())
        if not m:
            self.stop()
            raise RuntimeError(f"nfsj export did not start: {line!r}\n{self.stderr_text()}")
        self.line = line.strip()
        self.cut = m.group(2)
        self.port = int(m.group(3))

    def url(self, path: str = "") -> str:
        sub = "/" + path.lstrip("/") if path else ""
        return f"nfs://127.0.0.1/export{sub}?version=3&nfsport={self.port}&mountport={self.port}"

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()
        return self.proc.returncode


@pytest.fixture
def exported(restorable: Restorable, tmp_path: Path):
    export = ExportProcess(str(restorable.at), restorable.stack.shard_args,
                           tmp_path / "export.stderr")
    try:
        yield restorable, export
    finally:
        assert export.stop() == 0, export.stderr_text()


# -- reading a tree over NFS ------------------------------------------------------------------

_TYPES = {nfs_rs.FileType.FILE: "reg", nfs_rs.FileType.DIRECTORY: "dir",
          nfs_rs.FileType.SYMLINK: "lnk", nfs_rs.FileType.FIFO: "fifo",
          nfs_rs.FileType.SOCKET: "sock", nfs_rs.FileType.CHARACTER_DEVICE: "chr",
          nfs_rs.FileType.BLOCK_DEVICE: "blk"}


def _read_all(c: nfs_rs.Client, path: str, size: int) -> bytes:
    out = bytearray()
    with c.open(path, "rb") as f:
        while chunk := f.read_at(len(out), MiB):
            out += chunk
    assert len(out) == size, f"{path}: read {len(out)} bytes, GETATTR says {size}"
    return bytes(out)


def nfs_rs_snapshot(url: str, **connect_kw) -> tuple[dict[str, Entry], dict[str, int]]:
    """What treecompare.snapshot gives for a local tree, read through nfs-rs; and the
    regular files' mtimes."""
    c = nfs_rs.Client.connect(url, connect_timeout=5, operation_timeout=60, **connect_kw)
    try:
        root = c.stat(".")
        raw: dict[str, Any] = {"": root}
        stack = [""]
        while stack:
            d = stack.pop()
            for e in c.scandir(d or "."):
                if e.name in (".", ".."):
                    continue
                rel = f"{d}/{e.name}" if d else e.name
                raw[rel] = e.info
                if e.info.type is nfs_rs.FileType.DIRECTORY:
                    stack.append(rel)
        by_fileid: dict[int, list[str]] = {}
        for rel, info in raw.items():
            if info.type is not nfs_rs.FileType.DIRECTORY:
                by_fileid.setdefault(info.fileid, []).append(rel)
        out, mtimes = {}, {}
        for rel, info in raw.items():
            kind = _TYPES[info.type]
            fields: dict[str, Any] = dict(type=kind, mode=info.mode & 0o7777, nlink=info.nlink,
                                          uid=info.uid, gid=info.gid)
            if kind == "reg":
                data = _read_all(c, rel, info.size)
                fields.update(size=info.size, sha256=hashlib.sha256(data).hexdigest())
                mtimes[rel] = info.mtime
            elif kind == "lnk":
                fields.update(size=info.size, target=c.readlink(rel))
            if kind != "dir":
                fields.update(link_group=tuple(sorted(by_fileid[info.fileid])))
            out[rel] = Entry(**fields)
        return out, mtimes
    finally:
        c.close()


_NFS_LS = re.compile(r"^([-dl])?([-rwxsStT]{9})\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(.*)$")
# nfs-ls prints a type letter only for these; other types get none.
_LS_TYPES = {"-": "reg", "d": "dir", "l": "lnk", None: "special"}


def _ls_mode(bits: str) -> int:
    mode = 0
    for i, ch in enumerate(bits):
        if ch not in "-ST":
            mode |= 1 << (8 - i)
    special = {2: (0o4000, "sS"), 5: (0o2000, "sS"), 8: (0o1000, "tT")}
    for i, (bit, chars) in special.items():
        if bits[i] in chars:
            mode |= bit
    return mode


def libnfs_listing(url: str) -> dict[str, tuple[str, int, int, int, int, int | None]]:
    """`nfs-ls -R`: path -> (type, mode, nlink, uid, gid, size or None for directories)."""
    done = subprocess.run(["nfs-ls", "-R", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"nfs-ls -R failed:\n{done.stdout}\n{done.stderr}"
    out = {}
    for line in done.stdout.splitlines():
        m = _NFS_LS.match(line)
        assert m, f"unexpected nfs-ls line {line!r}"
        kind = _LS_TYPES[m.group(1)]
        out[m.group(7)] = (kind, _ls_mode(m.group(2)), int(m.group(3)), int(m.group(4)),
                           int(m.group(5)), None if kind == "dir" else int(m.group(6)))
    return out


def expected_listing(truth: dict[str, Entry]):
    def kind(e: Entry) -> str:
        return e.type if e.type in ("reg", "dir", "lnk") else "special"
    return {rel: (kind(e), e.mode, e.nlink, e.uid, e.gid,
                  None if e.type == "dir" else (e.size or 0))
            for rel, e in truth.items() if rel}


def nfs_cat(url: str) -> bytes:
    done = subprocess.run(["nfs-cat", url], capture_output=True, timeout=120)
    assert done.returncode == 0, f"nfs-cat {url} failed: {done.stderr!r}"
    return done.stdout


def check_same(truth: dict[str, Entry], got: dict[str, Entry], what: str) -> None:
    problems = diff(truth, got, names=("the truth at T", what))
    assert not problems, f"{what} differs from the truth at T:\n" + "\n".join(problems[:60])


# -- the tests ----------------------------------------------------------------------------------


def test_export_serves_the_tree_as_it_was_at_t(exported):
    r, export = exported
    assert export.line.startswith(f"nfsj export: serving {r.at} (cut {r.at} ")
    assert "proven" in export.cut and "UNPROVEN" not in export.cut

    # nfs-rs, with its default directory reply size (one READDIRPLUS for 300 names)...
    got, mtimes = nfs_rs_snapshot(export.url())
    check_same(r.truth, got, "the export read with nfs-rs")
    assert mtimes == r.truth_mtimes
    # ... and with small replies, so the 300-name directory comes in many pages.
    paged, _ = nfs_rs_snapshot(export.url(), readdir_buffer=(512, 2048))
    check_same(r.truth, paged, "the export read with nfs-rs in small pages")
    # Not the tree as it is now.
    assert diff(r.later, got)

    # libnfs-utils: the listing, and every regular file's bytes.
    listing = libnfs_listing(export.url())
    assert listing == expected_listing(r.truth)
    for rel, e in r.truth.items():
        if e.type == "reg":
            data = nfs_cat(export.url(rel))
            assert (len(data), hashlib.sha256(data).hexdigest()) == (e.size, e.sha256), rel

    assert export.alive()


def test_export_is_read_only(exported, tmp_path):
    r, export = exported
    with nfs_rs.Client.connect(export.url(), connect_timeout=5, operation_timeout=30) as c:
        with pytest.raises(nfs_rs.NfsError) as e:
            c.mkdir("tree/new-dir", 0o755)
        assert e.value.code_name == "NFS3ERR_ROFS"
        with pytest.raises(nfs_rs.NfsError) as e:
            with c.open("many/f000", "r+b") as f:
                f.write_at(b"overwrite", 0)
        assert e.value.code_name in ("NFS3ERR_ROFS", "NFS3ERR_ACCES"), e.value.code_name
        with pytest.raises(nfs_rs.NfsError) as e:
            c.remove("many/f000")
        assert e.value.code_name == "NFS3ERR_ROFS"

    # The protocol itself, below any client-side permission check.
    with NfsClient("127.0.0.1", export.port, export.port, "/export") as c:
        c.mount()
        fh = c.lookup_path("many/f000")
        for call in (lambda: c.write(fh, 0, b"x" * 4096, StableHow.FILE_SYNC),
                     lambda: c.mkdir(c.root, "nope"),
                     lambda: c.create(c.root, "nope"),
                     lambda: c.setattr(fh, sattr3(mode=0o777)),
                     lambda: c.rename(c.root, "many", c.root, "renamed"),
                     lambda: c.link(fh, c.root, "again"),
                     lambda: c.commit(fh)):
            with pytest.raises(NfsError) as e:
                call()
            assert e.value.status is Nfsstat3.NFS3ERR_ROFS

    # And nothing happened: the NAS's tree still is what it was after the later changes.
    assert not diff(r.later, snapshot(r.stack.nas.export_dir))
    cp = subprocess.run(["nfs-cp", str(Path(__file__)), export.url("copied.py")],
                        capture_output=True, timeout=60)
    assert cp.returncode != 0


def test_export_of_an_unproven_moment_is_refused(restorable):
    # An hour ahead: "now" can be proven by the time the cut is checked (the
    # shards' frontiers pass it with the proxy's next heartbeat).
    future = format_time(Stamp(time.time_ns() + 3600 * 10**9, 0, 0))
    done = nfsj("export", "--at", future, "--listen", "127.0.0.1:0",
                *restorable.stack.shard_args, timeout_s=60)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nfsj: error: "), done.stderr
    assert "consistent point" in lines[0] and "--allow-unproven" in lines[0]
