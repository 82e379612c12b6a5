"""Point-in-time restore end to end: real ganesha, two real recoveryd shards,
a real `nfsj proxy`, and the `nfsj` commands a user types.

The scenario (one per module, `scenario` fixture):

1. files are put straight on the NAS (the proxy never sees them made): a
   multi-MiB file (several baseline pieces), hard links across directories,
   a symlink, an empty file, nested directories;
2. the proxy starts, shipping to both shards, and `nfsj baseline` reads the
   export;
3. phase 1, through the proxy with nfs-rs (and our own client for a FIFO):
   writes at offsets leaving holes, truncate and extend, chmod, chown, utime,
   renames across directories and over an existing name, a symlink, hard
   links, mkdir/rmdir, remove, writes under another uid;
   then T1 is taken, `status` must prove it (consistent point above T1), and
   the export directory is snapshotted as truth 1;
4. phase 2: more of the same, on the same and on new names; T2, truth 2;
5. a second baseline, phase 3 on top of it; T3, truth 3.

Then: `nfsj restore --at T1/T2/T3` give truths 1/2/3 (content, sizes,
modes, owners, symlink targets, link counts and hard-link groups, and the
mtimes of every entry), T3 from the second baseline and a moment inside the
second baseline from the first; `nfsj cat` gives a file's bytes at T1;
restores before the first baseline and after the consistent point are
refused with one line (and forced with --allow-unproven); `--path` restores
a subtree and reads no other file's records; `nfsj history` lists a file's
writes with client and uid.

Truth is read from the export's local directory (tests/e2e/treecompare.py),
never through the code under test. The last tests check the Restore
service's contract (Scan, FileRecords, Baselines) on real shards fed
hand-made records, without a NAS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from e2e.proxy_fixture import ProxyProcess
from e2e.treecompare import diff, snapshot
from e2e.workload import connect
from logstore.pb.journal_pb2 import (Attr, FileRequest, IngestBatch, Op, Record, ScanRequest,
                                     ShardStatusRequest, ShippedRecord, StreamId)
from logstore.pb.journal_pb2_grpc import JournalStub, RestoreStub
from logstore.stamp import Stamp
from nfsproxy.nas.client import NfsClient
from nfsproxy.demo.ganesha import start_ganesha
from nfsproxy.wire.nfs3 import Ftype3
from recoveryd.restore import RestoreClient, RestoreRefused, ShardError, Shards
from recoveryd.status import fetch_status, overall
from recoveryd.timespec import format_time
from recoveryd.tree import REG, Tree

ganesha = pytest.mark.ganesha  # the scenario's tests; the service contract tests need no NAS

MiB = 1 << 20
M32 = (1 << 32) - 1
OTHER_UID = OTHER_GID = 4242
_SERVING = re.compile(r"shard (\d+) serving on [^ ]+:(\d+),")
NFSJ = [sys.executable, "-m", "nfsproxy"]


# -- processes ----------------------------------------------------------------------------


class ShardProcess:
    """`nfsj recoveryd` as a user runs it."""

    def __init__(self, data: Path, shard_id: int):
        self.data = data
        self.shard_id = shard_id
        self.stderr_path = data.parent / f"{data.name}.stderr"
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [*NFSJ, "recoveryd", "--listen", "127.0.0.1:0", "--data", str(data),
             "--shard-id", str(shard_id)], stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        line = self.proc.stdout.readline()
        m = _SERVING.search(line)
        if not m:
            self.stop()
            raise RuntimeError(f"recoveryd did not start: {line!r}\n{self.stderr_path.read_text()}")
        self.address = f"127.0.0.1:{m.group(2)}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def nfsj(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([*NFSJ, *args], capture_output=True, timeout=timeout_s)


def shard_args(addresses: list[str]) -> list[str]:
    return [a for address in addresses for a in ("--shard", address)]


def now_bound() -> Stamp:
    """A bound above every stamp handed out so far (the proxy's HLC reads the same clock)."""
    time.sleep(0.05)
    bound = Stamp(time.time_ns(), M32, M32)
    time.sleep(0.05)
    return bound


def wait_proven(addresses: list[str], moment: Stamp, timeout_s: float = 30.0) -> Stamp:
    """Wait until the consistent point passes `moment`; return it."""
    deadline = time.monotonic() + timeout_s
    view = None
    while time.monotonic() < deadline:
        view = overall(fetch_status(addresses))
        point = view["consistent_point"]
        if point is not None and Stamp.parse(point["stamp"]) > moment:
            return Stamp.parse(point["stamp"])
        time.sleep(0.1)
    raise AssertionError(f"the consistent point did not pass {moment} in {timeout_s}s: {view}")


# -- the scenario ---------------------------------------------------------------------------


def _data(seed: int, n: int) -> bytes:
    import random
    return random.Random(seed).randbytes(n)


def _write(c, path: str, data: bytes, offset: int = 0, mode: str = "r+b") -> None:
    with c.open(path, mode) as f:
        for pos in range(0, len(data), MiB):
            f.write_at(data[pos:pos + MiB], offset + pos)


def _on_the_nas(c) -> None:
    """Straight on ganesha, before the proxy exists."""
    for d in ("docs", "docs/deep", "docs/deep/er", "old", "keep", "keep/sub"):
        c.mkdir(d, 0o755)
    _write(c, "docs/big.bin", _data(1, 2 * MiB + 12345), mode="wb")   # three baseline pieces
    _write(c, "docs/a.txt", b"alpha\n" * 100, mode="wb")
    _write(c, "docs/deep/er/note", b"deep note\n", mode="wb")
    _write(c, "old/shared", b"one inode, two names\n", mode="wb")
    c.link("old/shared", "docs/shared-too")
    c.symlink("a.txt", "docs/to-a")
    c.touch("docs/empty")
    _write(c, "keep/k1", _data(2, 5000), mode="wb")
    _write(c, "keep/sub/k2", _data(3, 70000), mode="wb")
    c.chmod("keep/k1", 0o600)
    c.utime("keep/k1", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    c.mkdir("shared", 0o777)
    c.chmod("shared", 0o777)


def _phase1(c, other, port: int) -> None:
    # Writes at offsets with holes, overwriting a baseline file in place.
    _write(c, "docs/big.bin", b"\xaa" * 3000, offset=MiB - 1000)   # across a piece boundary
    c.mkdir("data", 0o755)
    with c.open("data/sparse.bin", "wb") as f:
        f.write_at(_data(4, 4096), 0)
        f.write_at(_data(5, 5000), MiB + 7)
    _write(c, "data/sparse.bin", b"\xff" * 300, offset=MiB)
    # Truncate and extend.
    _write(c, "data/grow.bin", _data(6, 300_000), mode="wb")
    c.truncate("data/grow.bin", 123_457)
    c.truncate("data/grow.bin", 2 * MiB + 1)
    _write(c, "data/grow.bin", b"end", offset=2 * MiB - 2)
    c.truncate("docs/a.txt", 50)
    # Attributes.
    c.chmod("docs/big.bin", 0o640)
    c.chown("docs/a.txt", 1234, 5678)
    c.utime("data/grow.bin", ns=(1_700_000_000_111_111_111, 1_700_000_000_222_222_222))
    c.chmod("docs/deep", 0o711)
    # Renames: across directories (a file and a directory with content), over an existing name.
    c.rename("docs/deep/er/note", "old/note-moved")
    c.rename("docs/deep/er", "old/er-moved")
    _write(c, "data/victim", b"to be replaced\n", mode="wb")
    _write(c, "data/winner", b"the winner\n", mode="wb")
    c.rename("data/winner", "data/victim")
    # Symlinks, hard links.
    c.symlink("../docs/big.bin", "data/to-big")
    c.symlink("/nowhere/at/all", "data/dangling")
    c.link("data/sparse.bin", "docs/sparse-link")
    c.link("old/shared", "data/shared-3")
    # mkdir/rmdir, remove.
    c.mkdir("data/gone", 0o755)
    c.rmdir("data/gone")
    _write(c, "data/doomed", b"short-lived\n", mode="wb")
    c.remove("data/doomed")
    c.remove("docs/empty")
    # Another uid writes in a directory anyone may write.
    _write(other, "shared/theirs.bin", _data(7, 9000), mode="wb")
    _write(other, "shared/theirs.bin", b"patched", offset=100)
    # A FIFO (nfs-rs cannot send MKNOD).
    with NfsClient("127.0.0.1", port, port, "/export", timeout_s=15.0) as ours:
        ours.mount()
        data_fh = ours.lookup_path("data")
        ours.mknod(data_fh, "fifo", Ftype3.NF3FIFO, 0o640)


def _phase2(c, other) -> None:
    _write(c, "data/sparse.bin", b"second phase", offset=3 * MiB)       # extends with a hole
    c.truncate("docs/big.bin", MiB // 2)                                 # shrinks a baseline file
    _write(c, "docs/big.bin", b"tail", offset=MiB // 2 - 2)
    c.remove("docs/sparse-link")
    c.rename("data/victim", "old/victim")
    c.rename("old/shared", "keep-no-more")                               # to the root
    c.chmod("data/grow.bin", 0o2755)
    c.mkdir("new", 0o750)
    _write(c, "new/fresh.txt", b"made in phase 2\n", mode="wb")
    c.link("new/fresh.txt", "new/fresh-link")
    c.symlink("fresh.txt", "new/to-fresh")
    c.rename("data/to-big", "new/to-big")
    _write(other, "shared/theirs.bin", b"again", offset=9000)           # extends
    c.remove("data/fifo")
    c.rmdir("docs/deep")                                                 # emptied in phase 1


def _phase3(c) -> None:
    """After a second baseline: changes on top of it."""
    _write(c, "keep-no-more", b"rewritten after the second baseline\n", mode="wb")
    c.rename("new/fresh-link", "data/fresh-link-moved")
    c.chmod("keep/sub", 0o700)
    _write(c, "data/sparse.bin", b"3", offset=10)


def run_baseline(log_dir: Path) -> tuple[Stamp, Stamp]:
    """`nfsj baseline`; returns its (BEGIN, END) stamps."""
    done = nfsj("baseline", "--log", str(log_dir), "--quiet")
    assert done.returncode == 0, done.stderr.decode()
    m = re.search(rb"baseline (\S+) done.*restorable from (\S+)", done.stdout)
    assert m, done.stdout
    return Stamp.parse(m.group(1).decode()), Stamp.parse(m.group(2).decode())


@dataclasses.dataclass
class Scenario:
    tmp: Path
    export: Path
    shards: list[str]
    log_dir: Path
    before_baseline: Stamp
    baseline_end: Stamp
    t1: Stamp
    t2: Stamp
    truth1: dict
    truth2: dict
    cat_truth1: bytes
    baseline2: tuple[Stamp, Stamp]   # BEGIN, END of the second baseline (after T2)
    t3: Stamp
    truth3: dict


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("restore")
    nas = start_ganesha(tmp / "export", tmp / "ganesha")
    shards: list[ShardProcess] = []
    proxy = None
    try:
        with connect(nas.url(version=3)) as c:
            _on_the_nas(c)
        shards = [ShardProcess(tmp / f"shard{k}", k) for k in range(2)]
        addresses = [s.address for s in shards]
        proxy = ProxyProcess(nas, tmp / "log", extra=shard_args(addresses)).start()
        before_baseline = now_bound()
        _, baseline_end = run_baseline(proxy.log_dir)

        with connect(proxy.url()) as c, connect_as(proxy.url(), OTHER_UID, OTHER_GID) as other:
            _phase1(c, other, proxy.port)
            t1 = now_bound()
            wait_proven(addresses, t1)
            truth1 = snapshot(nas.export_dir, mtimes=True)
            cat_truth1 = (nas.export_dir / "data/sparse.bin").read_bytes()
            _phase2(c, other)
            t2 = now_bound()
            wait_proven(addresses, t2)
            truth2 = snapshot(nas.export_dir, mtimes=True)
            baseline2 = run_baseline(proxy.log_dir)
            _phase3(c)
            t3 = now_bound()
            wait_proven(addresses, t3)
            truth3 = snapshot(nas.export_dir, mtimes=True)
        yield Scenario(tmp, nas.export_dir, addresses, proxy.log_dir, before_baseline,
                       baseline_end, t1, t2, truth1, truth2, cat_truth1, baseline2, t3, truth3)
    finally:
        if proxy is not None:
            proxy.stop()
        for s in shards:
            s.stop()
        nas.stop()


def connect_as(url: str, uid: int, gid: int):
    import nfs_rs
    return nfs_rs.Client.connect(url, uid=uid, gid=gid, connect_timeout=5.0, operation_timeout=30.0)


def compare(truth: dict, restored_dir: Path) -> None:
    """Everything treecompare compares, mtimes included (of every type, not only
    regular files: directories' come from the post-op attributes of the calls
    that changed their entries)."""
    problems = diff(truth, snapshot(restored_dir, mtimes=True), mtimes=True,
                    names=("truth", "restore"))
    assert not problems, "\n".join(problems)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    err = done.stderr.decode()
    assert done.returncode == 2, (done.returncode, err)
    assert err.startswith("nfsj: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# -- the tests ---------------------------------------------------------------------------------


@ganesha
@pytest.mark.parametrize("moment", ["t1", "t2"])
def test_restore_gives_the_tree_as_it_was(scenario, moment, tmp_path):
    s = scenario
    at = getattr(s, moment)
    truth = getattr(s, f"truth{moment[1]}")
    dest = tmp_path / f"restored-{moment}"
    # T1 as ISO-8601 with nanoseconds, T2 as an exact stamp: both forms users type.
    text = format_time(at) if moment == "t1" else str(at)
    done = nfsj("restore", "--at", text, "--to", str(dest), *shard_args(s.shards))
    err = done.stderr.decode()
    assert done.returncode == 0, err
    compare(truth, dest)
    # The cut it delivered, with its proof.
    m = re.search(r"delivered cut (\S+) .*baseline (\S+) ended (\S+).*consistent point (\S+) .*; proven",
                  err)
    assert m, err
    assert Stamp.parse(m.group(1)) == at
    assert Stamp.parse(m.group(3)) == s.baseline_end
    assert Stamp.parse(m.group(4)) > at
    assert "UNPROVEN" not in err
    assert not list(tmp_path.glob("*.nfsj-tmp-*"))


@ganesha
def test_restore_starts_from_the_newest_baseline_that_ended(scenario, tmp_path):
    s = scenario
    begin2, end2 = s.baseline2
    done = nfsj("restore", "--at", str(s.t3), "--to", str(tmp_path / "t3"), *shard_args(s.shards))
    assert done.returncode == 0, done.stderr.decode()
    compare(s.truth3, tmp_path / "t3")
    assert f"baseline {begin2} ended {end2}" in done.stderr.decode()
    # Just before the second baseline's END: still from the first one, whose
    # replay passes over the second one's pieces without applying them.
    just_before = Stamp(end2.wall_ns, end2.logical, end2.node_id - 1)
    done = nfsj("restore", "--at", str(just_before), "--to", str(tmp_path / "mid"),
                *shard_args(s.shards))
    assert done.returncode == 0, done.stderr.decode()
    compare(s.truth2, tmp_path / "mid")
    assert f"ended {s.baseline_end}" in done.stderr.decode()


@ganesha
def test_restore_into_an_empty_directory_and_never_over_content(scenario, tmp_path):
    s = scenario
    empty = tmp_path / "empty"
    empty.mkdir()
    done = nfsj("restore", "--at", str(s.t1), "--to", str(empty), "--quiet", *shard_args(s.shards))
    assert done.returncode == 0, done.stderr.decode()
    compare(s.truth1, empty)
    # Now it has content: refused, and nothing is touched.
    before = snapshot(empty, mtimes=True)
    err = one_line_error(nfsj("restore", "--at", str(s.t1), "--to", str(empty), *shard_args(s.shards)))
    assert "not empty" in err and "never overwrites" in err
    assert snapshot(empty, mtimes=True) == before
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    err = one_line_error(nfsj("restore", "--at", str(s.t1), "--to", str(a_file), *shard_args(s.shards)))
    assert "not a directory" in err and a_file.read_text() == "mine"


@ganesha
def test_restore_prints_plain_progress_lines_when_not_on_a_terminal(scenario, tmp_path):
    s = scenario
    dest = tmp_path / "restored"
    done = subprocess.run([*NFSJ, "restore", "--at", str(s.t1), "--to", str(dest),
                           *shard_args(s.shards)], capture_output=True, timeout=120,
                          env={**os.environ, "NFSJ_PROGRESS_INTERVAL": "0"})
    err = done.stderr.decode()
    assert done.returncode == 0, err
    lines = err.splitlines()
    assert any(line.startswith("restore (files): ") for line in lines), err
    assert "\r" not in err and "\x1b" not in err  # lines for a log, no bar drawing
    restored = re.search(r"^restored (\d+) files \((\d+) bytes\)", err, re.M)
    final = [line for line in lines if line.startswith("restore: done: ")]
    assert restored and len(final) == 1, err
    assert final[0].startswith(f"restore: done: {restored.group(1)} files ({restored.group(2)} bytes)")
    assert str(dest) in final[0]
    compare(s.truth1, dest)


@ganesha
def test_cat_gives_the_bytes_at_t1(scenario):
    s = scenario
    done = nfsj("cat", "data/sparse.bin", "--at", format_time(s.t1), *shard_args(s.shards))
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == s.cat_truth1
    assert len(done.stdout) == MiB + 7 + 5000
    assert "delivered cut" in done.stderr.decode()
    # A path that did not exist, and one that is no regular file.
    assert "did not exist" in one_line_error(nfsj("cat", "new/fresh.txt", "--at", str(s.t1),
                                                  *shard_args(s.shards)))
    assert "not a regular file" in one_line_error(nfsj("cat", "data", "--at", str(s.t1),
                                                       *shard_args(s.shards)))


@ganesha
@pytest.mark.parametrize("moment", ["t1", "t2", "t3"])
def test_a_path_resolves_as_of_the_cut_without_the_whole_tree(scenario, moment, tmp_path):
    """`resolve` walks only the directories on the way; through renames across
    directories, renames over a name, removes and re-creations it finds what
    the whole tree finds, and nothing that existed only earlier or later."""
    s = scenario
    at = getattr(s, moment)
    truth = getattr(s, f"truth{moment[1]}")
    every_path = set(s.truth1) | set(s.truth2) | set(s.truth3)
    with Shards(s.shards) as shards, RestoreClient(shards) as walker, \
            Shards(s.shards) as shards2, RestoreClient(shards2) as whole:
        cut = walker.cut(at)
        tree = whole.tree(whole.cut(at))
        for path in sorted(every_path):
            found = walker.resolve(cut, path)
            if path not in truth:
                assert found is None, f"{path} resolved at {moment}, where it did not exist"
                continue
            assert found is not None, f"{path} did not resolve at {moment}"
            assert found[0] == tree.lookup(path), path
            assert found[1] in (0, tree.nodes[found[0]].type), path
            if truth[path].type == "reg":
                with open(tmp_path / "f", "w+b") as f:
                    walker.write_file(cut, found[0], f.fileno())
                    f.seek(0)
                    assert hashlib.sha256(f.read()).hexdigest() == truth[path].sha256, path
        assert walker._trees == {}  # resolved without rebuilding the whole tree


@ganesha
def test_cat_follows_renames_and_replacements_in_the_window(scenario):
    s = scenario
    cases = [("t1", "old/note-moved"), ("t1", "data/victim"), ("t2", "old/victim"),
             ("t2", "keep-no-more"), ("t3", "keep-no-more"), ("t3", "data/fresh-link-moved")]
    for moment, path in cases:
        truth = getattr(s, f"truth{moment[1]}")
        done = nfsj("cat", path, "--at", str(getattr(s, moment)), *shard_args(s.shards))
        assert done.returncode == 0, done.stderr.decode()
        assert hashlib.sha256(done.stdout).hexdigest() == truth[path].sha256, (moment, path)
    for moment, path in [("t2", "data/victim"), ("t1", "keep-no-more"), ("t2", "docs/sparse-link")]:
        assert "did not exist" in one_line_error(
            nfsj("cat", path, "--at", str(getattr(s, moment)), *shard_args(s.shards)))


@ganesha
def test_refused_before_the_first_baseline(scenario, tmp_path):
    s = scenario
    err = one_line_error(nfsj("restore", "--at", "-1h", "--to", str(tmp_path / "x"),
                              *shard_args(s.shards)))
    assert "before the earliest restorable moment" in err
    err = one_line_error(nfsj("restore", "--at", str(s.before_baseline), "--to", str(tmp_path / "x"),
                              *shard_args(s.shards)))
    assert "before the earliest restorable moment" in err
    assert "valid range: " in err and str(s.baseline_end) in err
    assert not (tmp_path / "x").exists()
    # The earliest moment printed in the message is itself accepted.
    earliest = re.search(r"valid range: (\S+) \.\. (\S+)", err).group(1)
    done = nfsj("restore", "--at", earliest, "--to", str(tmp_path / "earliest"), "--quiet",
                *shard_args(s.shards))
    assert done.returncode == 0, done.stderr.decode()


@ganesha
def test_refused_after_the_consistent_point_unless_allowed(scenario, tmp_path):
    s = scenario
    future = format_time(Stamp(time.time_ns() + 3600 * 10**9, 0, 0))
    err = one_line_error(nfsj("restore", "--at", future, "--to", str(tmp_path / "x"),
                              *shard_args(s.shards)))
    assert "consistent point" in err and "valid range: " in err and "--allow-unproven" in err
    assert not (tmp_path / "x").exists()
    # Forced: delivered, and said loudly.
    done = nfsj("restore", "--at", future, "--to", str(tmp_path / "forced"), "--path", "keep",
                "--allow-unproven", *shard_args(s.shards))
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert "UNPROVEN" in err
    assert (tmp_path / "forced" / "k1").read_bytes() == (s.export / "keep/k1").read_bytes()


@ganesha
def test_usage_errors_are_one_line(scenario, tmp_path):
    s = scenario
    err = one_line_error(nfsj("restore", "--at", "yesterday", "--to", str(tmp_path / "x"),
                              *shard_args(s.shards)))
    assert "ISO-8601" in err and "-10m" in err
    err = one_line_error(nfsj("restore", "--at", "now", "--to", str(tmp_path / "x")))
    assert "--shard" in err
    err = one_line_error(nfsj("restore", "--at", str(s.t1), "--to", str(tmp_path / "x"),
                              "--shard", s.shards[0], "--shard", "127.0.0.1:1"))
    assert "127.0.0.1:1" in err and "shard 1" in err
    err = one_line_error(nfsj("restore", "--at", str(s.t1), "--to", str(tmp_path / "x"),
                              "--path", "no/such/dir", *shard_args(s.shards)))
    assert "did not exist" in err


@ganesha
def test_path_restores_a_subtree_reading_only_its_files(scenario, tmp_path):
    s = scenario
    dest = tmp_path / "sub"
    done = nfsj("restore", "--at", str(s.t2), "--to", str(dest), "--path", "/keep",
                *shard_args(s.shards))
    assert done.returncode == 0, done.stderr.decode()
    def below(rel: str) -> str:
        return rel[len("keep/"):] if rel != "keep" else ""

    truth = {below(rel): dataclasses.replace(e, link_group=tuple(below(p) for p in e.link_group))
             for rel, e in s.truth2.items() if rel == "keep" or rel.startswith("keep/")}
    compare(truth, dest)

    # Through the library: which files' records did it read?
    with Shards(s.shards) as shards, RestoreClient(shards) as client:
        cut = client.cut(s.t2)
        tree = client.tree(cut)
        read: list[bytes] = []
        real = client.file_records

        def spy(cut_, fh, **kw):
            read.append(fh)
            return real(cut_, fh, **kw)

        client.file_records = spy  # type: ignore[method-assign]
        summary = client.restore_to_dir(cut, tmp_path / "lib", path="keep")
    assert sorted(read) == sorted({tree.lookup("keep/k1"), tree.lookup("keep/sub/k2")})
    assert summary.files == 2 and summary.dirs == 2


class CallCounting(Shards):
    """`Shards` that counts the Restore calls it makes, by method."""

    def __init__(self, addresses):
        super().__init__(addresses)
        self.calls: list[str] = []
        self.callers: list[str] = []   # the thread that made each call

    def _chunked(self, k, chunked, plain, request, doing, **kw):
        self.calls.append(chunked)
        self.callers.append(threading.current_thread().name)
        return super()._chunked(k, chunked, plain, request, doing, **kw)


@ganesha
def test_a_whole_tree_restore_streams_every_file_in_bulk(scenario, tmp_path):
    # A few large streams per shard, however many files: not a call per file.
    s = scenario
    with CallCounting(s.shards) as shards, RestoreClient(shards) as client:
        cut = client.cut(s.t2)
        summary = client.restore_to_dir(cut, tmp_path / "all")
        calls = shards.calls
    compare(s.truth2, tmp_path / "all")
    assert summary.files > 1
    assert calls == ["ScanChunks"] * (2 * len(s.shards)), calls  # the tree, then the contents


@ganesha
@pytest.mark.parametrize("bulk", [True, False], ids=["bulk-port", "grpc"])
def test_contents_come_from_the_bulk_port_or_through_grpc_alike(scenario, bulk, tmp_path):
    # The bulk port is the fast path; gRPC is what a client that cannot reach
    # it falls back to. Both must give the NAS's tree, and with the port
    # reachable no shard may have been read the slow way.
    s = scenario
    with Shards(s.shards, bulk=bulk) as shards, RestoreClient(shards) as client:
        cut = client.cut(s.t2)
        client.restore_to_dir(cut, tmp_path / "all")
        subtree = client.restore_to_dir(cut, tmp_path / "data", path=b"data")
        fell_back = shards.bulk_status()
    compare(s.truth2, tmp_path / "all")
    assert subtree.files > 1
    assert fell_back == {}, fell_back


@ganesha
@pytest.mark.parametrize("flags", [[], ["--no-bulk"]], ids=["bulk-port", "no-bulk"])
def test_the_cli_restores_through_the_bulk_port_or_without_it(scenario, flags, tmp_path):
    s = scenario
    done = nfsj("restore", "--at", str(s.t1), "--to", str(tmp_path / "r"), *flags,
                *shard_args(s.shards))
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert "reading through gRPC" not in err, err
    compare(s.truth1, tmp_path / "r")


@ganesha
def test_prefetch_fills_the_read_cache_in_one_stream(scenario):
    s = scenario
    with CallCounting(s.shards) as shards, RestoreClient(shards) as client:
        cut = client.cut(s.t1)
        tree = client.tree(cut)
        files = {rel: fh for rel, fh, node in tree.walk() if node.type == REG}
        before = len(shards.calls)
        assert client.prefetch(cut, files.values()) == len(set(files.values()))
        contents = {rel: client.read(cut, fh, 0, 1 << 30) for rel, fh in files.items()}
        calls = shards.calls[before:]
    assert calls == ["ScanChunks"] * len(s.shards), calls
    assert contents[b"data/sparse.bin"] == s.cat_truth1


@ganesha
def test_a_read_the_cache_lacks_brings_its_directorys_files_along(scenario):
    s = scenario
    with CallCounting(s.shards) as shards, RestoreClient(shards) as client:
        cut = client.cut(s.t1)
        tree = client.tree(cut)
        by_dir: dict[bytes, list[tuple[bytes, bytes]]] = {}
        for rel, fh, node in tree.walk():
            if node.type == REG:
                by_dir.setdefault(rel.rpartition(b"/")[0], []).append((rel, fh))
        directory, files = max(by_dir.items(), key=lambda item: len(item[1]))
        assert len(files) > 1, "the scenario has a directory of several files"
        before = len(shards.calls)
        (first_rel, first_fh), *rest = files
        contents = {first_rel: client.read(cut, first_fh, 0, 1 << 30, neighbours=True)}
        contents.update({rel: client.read(cut, fh, 0, 1 << 30, neighbours=True) for rel, fh in rest})
        calls, callers = shards.calls[before:], shards.callers[before:]
    # The first file was asked for by the read, once per shard; the rest
    # followed it in a fill (the small-group path asks per file, several at
    # once), each once, none of them by a read.
    reader = threading.current_thread().name
    assert calls == ["FileRecordChunks"] * (len(files) * len(s.shards)), calls
    assert callers.count(reader) == len(s.shards), callers
    assert {rel: hashlib.sha256(data).hexdigest() for rel, data in contents.items()} == \
        {rel: s.truth1[os.fsdecode(rel)].sha256 for rel, _ in files}


@ganesha
def test_a_prefetch_budget_is_spent_on_files_not_cached_yet(scenario):
    """Files cached (or on their way) already are left out before they count
    against the budget: a directory larger than one fill is fetched fill by
    fill, not file by file once the first fill is in."""
    s = scenario
    with CallCounting(s.shards) as shards, RestoreClient(shards) as client:
        cut = client.cut(s.t1)
        tree = client.tree(cut)
        big, small = tree.lookup("data/grow.bin"), tree.lookup("data/sparse.bin")
        assert tree.nodes[big].attr.size > tree.nodes[small].attr.size > 0
        assert client.prefetch(cut, [big]) == 1
        assert client.prefetch(cut, [big, small], budget=tree.nodes[small].attr.size) == 1
        assert client.holds(cut, small)
        assert client.read(cut, small, 0, 1 << 30) == s.cat_truth1


@ganesha
def test_reading_a_tree_file_by_file_walks_the_tree_once_not_once_per_directory(scenario, monkeypatch):
    """Each directory's first read claims its neighbours for a fill, which
    asks whether that is every file of the cut: answered from the tree's
    regular files, found once (a walk per directory was quadratic)."""
    s = scenario
    walks = []
    real_walk = Tree.walk

    def counted(tree, fh=None, prefix=b""):
        walks.append(fh)
        return real_walk(tree, fh, prefix)

    with Shards(s.shards) as shards, RestoreClient(shards) as client:
        cut = client.cut(s.t1)
        files = [(rel, fh) for rel, fh, node in client.tree(cut).walk() if node.type == REG]
        directories = {rel.rpartition(b"/")[0] for rel, _ in files}
        assert len(directories) >= 3, "the scenario has files in several directories"
        monkeypatch.setattr(Tree, "walk", counted)
        contents = {rel: client.read(cut, fh, 0, 1 << 30, neighbours=True) for rel, fh in files}
    whole_tree = [fh for fh in walks if fh is None]
    assert len(whole_tree) <= 1, \
        f"{len(whole_tree)} walks of the whole tree for {len(directories)} directories"
    assert {rel: hashlib.sha256(data).hexdigest() for rel, data in contents.items()} == \
        {rel: s.truth1[os.fsdecode(rel)].sha256 for rel, _ in files}


@ganesha
def test_library_read_serves_byte_ranges(scenario):
    s = scenario
    with Shards(s.shards) as shards, RestoreClient(shards) as client:
        cut = client.cut(s.t1)
        fh = client.tree(cut).lookup("data/sparse.bin")
        assert client.read(cut, fh, 0, 100) == s.cat_truth1[:100]
        assert client.read(cut, fh, MiB - 10, 400) == s.cat_truth1[MiB - 10:MiB + 390]
        assert client.read(cut, fh, len(s.cat_truth1) - 5, 100) == s.cat_truth1[-5:]
        assert client.read(cut, fh, 10 * MiB, 100) == b""
        with tempfile.TemporaryFile() as tmp:
            _, attr = client.replay_file(cut, fh, tmp.fileno())
        assert attr.size == len(s.cat_truth1)
        assert attr.mtime_ns == s.truth1["data/sparse.bin"].mtime_ns


@ganesha
def test_history_lists_writes_with_client_and_uid(scenario):
    s = scenario
    done = nfsj("history", "shared/theirs.bin", "--json", *shard_args(s.shards))
    assert done.returncode == 0, done.stderr.decode()
    entries = [json.loads(line) for line in done.stdout.decode().splitlines()]
    writes = [e for e in entries if e["op"] == "WRITE"]
    assert [w["details"] for w in writes] == ["offset=0 count=9000", "offset=100 count=7",
                                              "offset=9000 count=5"]
    for w in writes:
        assert w["uid"] == OTHER_UID and w["gid"] == OTHER_GID and w["ok"]
        assert re.fullmatch(r"127\.0\.0\.1:\d+", w["client"]), w
    assert entries[0]["op"] == "CREATE" and entries[0]["uid"] == OTHER_UID
    stamps = [Stamp.parse(e["stamp"]) for e in entries]
    assert stamps == sorted(stamps)

    # --since/--until bound it: only phase 1's writes.
    done = nfsj("history", "shared/theirs.bin", "--json", "--until", str(s.t1), *shard_args(s.shards))
    assert done.returncode == 0, done.stderr.decode()
    entries = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [e["details"] for e in entries if e["op"] == "WRITE"] == ["offset=0 count=9000",
                                                                     "offset=100 count=7"]
    done = nfsj("history", "shared/theirs.bin", "--json", "--since", str(s.t1), *shard_args(s.shards))
    entries = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [e["details"] for e in entries if e["op"] == "WRITE"] == ["offset=9000 count=5"]

    # The table form, and a rename seen in another file's history.
    done = nfsj("history", "old/victim", *shard_args(s.shards))
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "RENAME" in out and "/data/winner -> /data/victim" in out
    assert "/data/victim -> /old/victim" in out


# -- the Restore service contract (real shards, hand-made records, no NAS) ---------------------


def _stamp(wall: int, node: int = 7) -> bytes:
    return Stamp(wall, 0, node).to_bytes()


def ingest(address: str, batches: list[IngestBatch]) -> None:
    import grpc
    with grpc.insecure_channel(address) as channel:
        acks = list(JournalStub(channel).Ingest(iter(batches), timeout=30))
    assert [a.error for a in acks] == [""] * len(batches), acks


def shipped(after: int, records: list[Record], stable_wall: int | None, *, node: int = 7,
            log_id: str = "L") -> IngestBatch:
    b = IngestBatch(stream=StreamId(node_id=node, log_id=log_id), after_seq=after,
                    through_seq=after + max(len(records), 1),
                    records=[ShippedRecord(seq=after + i + 1, record=r.SerializeToString())
                             for i, r in enumerate(records)],
                    sent_stamp=Stamp(time.time_ns(), 0, node).to_bytes())
    if stable_wall is not None:
        b.stable = _stamp(stable_wall, 0)
    return b


@pytest.fixture
def two_shards(tmp_path):
    shards = [ShardProcess(tmp_path / f"shard{k}", k) for k in range(2)]
    try:
        yield [s.address for s in shards]
    finally:
        for s in shards:
            s.stop()


def test_scan_file_records_and_baselines_contract(two_shards):
    import grpc
    a0, a1 = two_shards
    begin = Record(stamp=_stamp(100), op=Op.BASELINE_BEGIN, ok=True, baseline_id=_stamp(100))
    root = Record(stamp=_stamp(110), op=Op.BASELINE, ok=True, fh=b"R", baseline_id=_stamp(100),
                  baseline_first=True, attr=Attr(type=2, mode=0o755))
    piece = Record(stamp=_stamp(120), op=Op.BASELINE, ok=True, fh=b"F", dir_fh=b"R", name=b"f",
                   baseline_id=_stamp(100), baseline_first=True, data=b"base",
                   attr=Attr(type=1, size=4))
    end = Record(stamp=_stamp(130), op=Op.BASELINE_END, ok=True, baseline_id=_stamp(100),
                 baseline_files=1, baseline_bytes=4)
    write = Record(stamp=_stamp(140), op=Op.WRITE, ok=True, fh=b"F", offset=2, count=3, data=b"XYZ",
                   reply_count=3, attr=Attr(type=1, size=5))
    rename = Record(stamp=_stamp(150), op=Op.RENAME, ok=True, dir_fh=b"R", name=b"f", to_dir_fh=b"R",
                    to_name=b"g", object_fh=b"F")
    # Shard 0 holds the root's records and BEGIN; shard 1 the file's. END comes later.
    ingest(a0, [shipped(0, [begin, root, rename], None)])
    # (A stable stamp is a promise: nothing stamped below it comes later, so END's 130 is above it.)
    ingest(a1, [shipped(0, [begin, piece, write], 125)])
    with grpc.insecure_channel(a0) as c0, grpc.insecure_channel(a1) as c1:
        s0, s1 = RestoreStub(c0), RestoreStub(c1)
        got = list(s1.Scan(ScanRequest()))
        assert [r.stamp for r in got] == [begin.stamp, piece.stamp, write.stamp]
        assert [r.data for r in got] == [b"", b"", b""]  # no data unless asked
        got = list(s1.Scan(ScanRequest(after=piece.stamp, until=write.stamp, with_data=True)))
        assert [(r.stamp, r.data) for r in got] == [(write.stamp, b"XYZ")]  # after exclusive, until inclusive
        got = list(s1.Scan(ScanRequest(ops=[Op.BASELINE], with_data=True)))
        assert [(r.op, r.data) for r in got] == [(Op.BASELINE, b"base")]
        # Every record naming F, as fh or object_fh, on its own shard.
        assert [r.op for r in s0.FileRecords(FileRequest(fh=b"F"))] == [Op.RENAME]
        assert [r.data for r in s1.FileRecords(FileRequest(fh=b"F", with_data=True))] == [b"base", b"XYZ"]
        assert [r.op for r in s1.FileRecords(FileRequest(fh=b"F", until=piece.stamp))] == [Op.BASELINE]
        # The same records in chunks: serialized as stored, data only when asked.
        for request in (FileRequest(fh=b"F", with_data=True), FileRequest(fh=b"F"),
                        FileRequest(fh=b"F", after=piece.stamp, with_data=True)):
            chunked = [Record.FromString(raw) for chunk in s1.FileRecordChunks(request)
                       for raw in chunk.records]
            assert chunked == list(s1.FileRecords(request))
        assert [r.data for r in s1.FileRecords(FileRequest(fh=b"F"))] == [b"", b""]
        with pytest.raises(grpc.RpcError) as bad:
            list(s1.FileRecordChunks(FileRequest(fh=b"")))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A limit stops the scan early.
        assert [r.stamp for r in s1.Scan(ScanRequest(limit=2))] == [begin.stamp, piece.stamp]
        assert [r.stamp for r in s1.Scan(ScanRequest(ops=[Op.WRITE], limit=1))] == [write.stamp]
        with pytest.raises(grpc.RpcError) as bad:
            list(s0.Scan(ScanRequest(after=b"short")))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # BEGIN held, END not yet: listed without an end.
        assert [(b.baseline_id, b.end) for b in s0.Baselines(ShardStatusRequest()).baselines] == [
            (begin.stamp, b"")]

        with Shards([a0, a1]) as shards, RestoreClient(shards) as client:
            with pytest.raises(RestoreRefused, match="no baseline is complete yet"):
                client.cut(Stamp(1000, 0, 0), allow_unproven=True)
            # Merged from both shards in stamp order; BEGIN (on both) once.
            assert [r.stamp for r in shards.scan(ScanRequest())] == [
                begin.stamp, root.stamp, piece.stamp, write.stamp, rename.stamp]

            # END reaches shard 1 only: still incomplete, and the message names shard 0.
            ingest(a1, [shipped(3, [end], 500)])
            assert [b.end for b in s1.Baselines(ShardStatusRequest()).baselines] == [end.stamp]
            with pytest.raises(RestoreRefused, match=r"shard 0 \("):
                client.cut(Stamp(1000, 0, 0), allow_unproven=True)
            ingest(a0, [shipped(3, [end], 500)])
            assert [b.end for b in s0.Baselines(ShardStatusRequest()).baselines] == [end.stamp]

            # Complete now. Before its END: refused; past the consistent point: refused unless allowed.
            with pytest.raises(RestoreRefused, match="before the earliest restorable moment"):
                client.cut(Stamp(125, 0, 0))
            with pytest.raises(RestoreRefused, match="consistent point"):
                client.cut(Stamp(600, 0, 0))
            cut = client.cut(Stamp(145, 0, 0))
            assert cut.baseline.end == end.stamp and not cut.unproven
            assert cut.consistent_point == Stamp(500, 0, 0)
            # The path walk, from the root piece through R's own records.
            assert client.resolve(cut, "f") == (b"F", 1) and client.resolve(cut, "g") is None
            assert client.resolve(cut, "") == (b"R", 2) and client.resolve(cut, "f/x") is None
            tree = client.tree(cut)
            assert tree.lookup("f") == b"F" and tree.lookup("g") is None
            assert client.read(cut, b"F", 0, 100) == b"baXYZ"
            later = client.cut(Stamp(600, 0, 0), allow_unproven=True)
            assert later.unproven and "UNPROVEN" in str(later)
            assert client.tree(later).lookup("g") == b"F"
            assert [e.op for e in client.history("g")] == ["BASELINE", "WRITE", "RENAME"]

        # A new stream bringing an old BEGIN is found (the index rescans).
        old_begin = Record(stamp=_stamp(50, 9), op=Op.BASELINE_BEGIN, ok=True, baseline_id=_stamp(50, 9))
        ingest(a0, [shipped(0, [old_begin], 600, node=9, log_id="M")])
        assert [b.baseline_id for b in s0.Baselines(ShardStatusRequest()).baselines] == [
            old_begin.stamp, begin.stamp]


def test_a_shard_that_does_not_answer_is_named(two_shards):
    with Shards([two_shards[0], "127.0.0.1:1"]) as shards, RestoreClient(shards) as client:
        with pytest.raises(ShardError, match=r"shard 1 \(127\.0\.0\.1:1\) does not answer"):
            client.cut(Stamp(1, 0, 0))
        with pytest.raises(ShardError, match=r"shard 1 \(127\.0\.0\.1:1\)"):
            list(shards.scan(ScanRequest()))
