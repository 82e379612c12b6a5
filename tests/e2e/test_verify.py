"""`nfsj verify` end to end: real ganesha, two real `nfsj recoveryd` shards, a real
`nfsj proxy`, and the command a user types.

Each test builds its own stack: files go onto the NAS through the proxy
(nfs-rs), `nfsj baseline` reads them, more changes go through the proxy (so
the shards hold WRITEs, renames and attribute changes besides baseline
pieces), and the consistent point passes them. Then:

* a clean stack verifies clean (exit 0), and the proxy's /metrics says when
  and what (`nfsj_verify_*`);
* a write straight to ganesha with a second client that bypasses the proxy,
  and a file created that way, are reported with their paths (exit 1);
* a shard that lost records (stopped, some RocksDB keys of one file deleted
  with rocksdict, restarted) is reported;
* files a client keeps changing through the proxy while verify runs (after
  its cut) are skipped, not reported;
* `--sample N` checks N files; `--path` one subtree.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

import pytest

from e2e.journal_cli import M32, nfsj, wait_proven
from e2e.proxy_fixture import ProxyProcess
from e2e.shard_fixture import ShardProcess
from e2e.workload import connect
from logstore.pb.journal_pb2 import Op, Record
from logstore.stamp import Stamp
from recoveryd.status import read_proxy_status

pytestmark = [pytest.mark.ganesha, pytest.mark.timeout(600)]

NFSJ = [sys.executable, "-m", "nfsproxy"]

N_SHARDS = 2
FILES = 12
REWRITTEN = b"rewritten after the baseline\n" * 50   # docs/f01's one WRITE


@dataclasses.dataclass
class Stack:
    nas: Any
    shards: list[ShardProcess]
    proxy: ProxyProcess

    @property
    def shard_args(self) -> list[str]:
        return [a for s in self.shards for a in ("--shard", s.address)]

    def verify(self, *extra: str) -> tuple[int, dict]:
        """`nfsj verify --log DIR --json`: (exit code, the report)."""
        done = nfsj("verify", "--log", str(self.proxy.log_dir), *self.shard_args, "--json", "--quiet",
                    *extra, timeout_s=300)
        assert done.returncode in (0, 1) and done.stdout, \
            f"nfsj verify failed ({done.returncode}):\n{done.stderr}"
        return done.returncode, json.loads(done.stdout)

    def proven_now(self) -> None:
        time.sleep(0.05)
        wait_proven(self.shard_args, Stamp(time.time_ns(), M32, M32))

    def metrics(self) -> dict[str, float]:
        address = read_proxy_status(self.proxy.log_dir)["metrics"]
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
            text = r.read().decode()
        return {m.group(1): float(m.group(2))
                for m in re.finditer(r"^(nfsj_verify_\w+) (\S+)$", text, re.MULTILINE)}


def on_a_terminal(argv: list[str]) -> str:
    """Run `argv` with stderr on a pseudo-terminal; what it showed there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.wait(timeout=300) == 0, shown.decode(errors="replace")
    return shown.decode(errors="replace")


def _write(c, path: str, data: bytes, mode: str = "wb") -> None:
    with c.open(path, mode) as f:
        f.write_at(data, 0)


@pytest.fixture
def stack(nas, shard_factory, proxy_factory) -> Stack:
    """ganesha, two shards, a sync proxy; a tree made through it, a baseline, more changes, proven."""
    shards = [shard_factory(k) for k in range(N_SHARDS)]
    extra = ["--metrics", "127.0.0.1:0"]
    for shard in shards:
        extra += ["--shard", shard.address]
    proxy = proxy_factory(durability="sync", extra=extra)
    stack = Stack(nas, shards, proxy)
    c = connect(proxy.url())
    try:
        c.mkdir("docs", 0o755)
        c.mkdir("docs/deep", 0o750)
        for i in range(FILES):
            _write(c, f"docs/f{i:02d}", bytes([i]) * (1000 + 97 * i))
        _write(c, "docs/deep/note", b"a note\n")
        c.symlink("../f00", "docs/deep/to-f00")
        c.mkdir("busy", 0o755)
        _write(c, "busy/counter", b"0")
    finally:
        c.close()
    done = nfsj("baseline", "--log", str(proxy.log_dir), "--quiet")
    assert done.returncode == 0, done.stderr
    c = connect(proxy.url())
    try:  # after the baseline: records the journal replays on top of it
        _write(c, "docs/f01", REWRITTEN)
        _write(c, "docs/f02", b"X" * 10, mode="r+b")
        c.chmod("docs/f03", 0o600)
        c.rename("docs/f04", "docs/deep/f04-moved")
        c.link("docs/f05", "docs/f05-link")
        c.truncate("docs/f06", 10)
        _write(c, "docs/new", b"made after the baseline\n")
    finally:
        c.close()
    stack.proven_now()
    return stack


def test_a_clean_stack_verifies_clean_and_the_metric_says_so(stack, monkeypatch):
    assert stack.metrics() == {}, "no verify has run: the nfsj_verify_* gauges have no samples"
    before_ns = time.time_ns()
    code, report = stack.verify()
    assert code == 0, report["differences"]
    assert report["ok"] and report["differences"] == []
    # / docs busy docs/deep + 12 files - the moved one + f05-link + new + note + symlink + moved + counter
    assert report["checked"] >= FILES + 7
    assert Stamp.parse(report["cut"]["at"]["stamp"]) > Stamp(before_ns - 120 * 10**9, 0, 0)
    metrics = stack.metrics()
    assert metrics["nfsj_verify_last_run_timestamp_seconds"] >= before_ns / 1e9
    assert metrics["nfsj_verify_checked_files"] == report["checked"]
    assert metrics["nfsj_verify_differences"] == 0
    # The plain form: a summary line, exit 0; progress as plain lines when stderr is no
    # terminal (one per update here: NFSJ_PROGRESS_INTERVAL=0), and a final "done" line.
    monkeypatch.setenv("NFSJ_PROGRESS_INTERVAL", "0")
    done = nfsj("verify", "--log", str(stack.proxy.log_dir), *stack.shard_args)
    assert done.returncode == 0, done.stderr
    assert "no differences" in done.stdout and "DIFFERS" not in done.stdout
    assert "verify (nas):" in done.stderr and "verify (content):" in done.stderr, done.stderr
    assert "verify: done: " in done.stderr, done.stderr
    # On a terminal: a progress bar, redrawn in place; no plain lines.
    shown = on_a_terminal([*NFSJ, "verify", "--log", str(stack.proxy.log_dir), *stack.shard_args])
    assert re.search(r"verify \((tree|nas|journal|content|window|done)\)", shown), shown
    assert "\x1b[" in shown and "verify: done" not in shown


def test_a_write_that_bypassed_the_proxy_is_reported(stack):
    direct = connect(stack.nas.url(version=3))  # straight to ganesha: the proxy never sees it
    try:
        _write(direct, "docs/f07", b"\xee" * 100, mode="r+b")   # same size, other bytes
        _write(direct, "docs/rogue", b"nobody journaled me\n")
        direct.chmod("docs/f08", 0o611)
    finally:
        direct.close()
    stack.proven_now()
    code, report = stack.verify("--nas", stack.proxy.backend)
    assert code == 1
    by_path = {d["path"]: d["what"] for d in report["differences"]}
    assert set(by_path) == {"/docs/f07", "/docs/rogue", "/docs/f08", "/docs"}, by_path
    assert "content differs" in by_path["/docs/f07"] and "mtime" in by_path["/docs/f07"]
    assert by_path["/docs/rogue"] == "reg on the NAS but not in the journal"
    assert re.match(r"mode 0\d{3} in the journal, 0611 on the NAS", by_path["/docs/f08"])
    assert "mtime" in by_path["/docs"]  # the rogue entry moved its directory's mtime
    assert stack.metrics()["nfsj_verify_differences"] == 4
    done = nfsj("verify", "--log", str(stack.proxy.log_dir), *stack.shard_args, "--quiet")
    assert done.returncode == 1
    assert "DIFFERS /docs/rogue: reg on the NAS but not in the journal" in done.stdout.splitlines()


def test_a_shard_that_lost_records_is_reported(stack):
    from rocksdict import Rdict
    lost = 0
    for shard in stack.shards:
        shard.stop()
        db = Rdict(str(shard.store_dir))
        records = db.get_column_family("records")
        try:
            doomed = [key for key, value in records.items(from_key=b"r/")
                      if key.startswith(b"r/") and _is_write_of(value, REWRITTEN)]
            for key in doomed:
                del records[key]
            lost += len(doomed)
        finally:
            records.close()
            del records
            db.close()
        shard.start()
    assert lost, "no WRITE of docs/f01 found on any shard"
    stack.proven_now()
    code, report = stack.verify()
    assert code == 1
    assert [d["path"] for d in report["differences"]] == ["/docs/f01"], report["differences"]
    assert "content differs" in report["differences"][0]["what"]


def _is_write_of(value: bytes, data: bytes) -> bool:
    record = Record.FromString(value)
    return record.op == Op.WRITE and record.data == data


def test_changes_after_the_consistent_point_are_skipped_not_reported(stack):
    stop = threading.Event()
    writes = [0]

    def busy() -> None:
        c = connect(stack.proxy.url())
        try:
            while not stop.is_set():
                n = writes[0]
                _write(c, "busy/counter", str(n).encode(), mode="r+b")
                _write(c, f"busy/n{n % 5}", str(n).encode() * 10)
                if n % 7 == 3:
                    c.rename(f"busy/n{n % 5}", f"busy/m{n % 3}")
                writes[0] += 1
                time.sleep(0.01)
        finally:
            c.close()

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    try:
        while writes[0] < 5:
            time.sleep(0.05)
        code, report = stack.verify()
    finally:
        stop.set()
        thread.join(timeout=60)
    assert code == 0, report["differences"]
    assert report["skipped"] >= 1 and report["window_records"] >= 1
    assert report["checked"] >= FILES


def test_sample_checks_n_files_and_path_one_subtree(stack):
    code, report = stack.verify("--sample", "5")
    assert code == 0, report["differences"]
    assert report["sample"] == 5 and report["checked"] + report["skipped"] == 5
    code, report = stack.verify("--path", "docs/deep")
    assert code == 0, report["differences"]
    assert report["path"] == "/docs/deep"
    assert report["checked"] == 4  # the directory, note, the symlink, the moved file
    # A sample large enough to hold every file finds a bypassing write.
    direct = connect(stack.nas.url(version=3))
    try:
        _write(direct, "docs/f09", b"\x01" * 50, mode="r+b")
    finally:
        direct.close()
    stack.proven_now()
    code, report = stack.verify("--sample", "1000")
    assert code == 1
    assert [d["path"] for d in report["differences"]] == ["/docs/f09"]


def test_usage_errors_are_one_line(stack):
    done = nfsj("verify", "--log", str(stack.proxy.log_dir))
    assert done.returncode == 2 and done.stderr.startswith("nfsj: error: no shards given")
    done = nfsj("verify", *stack.shard_args)
    assert done.returncode == 2 and done.stderr.startswith("nfsj: error: name the NAS")
    done = nfsj("verify", "--log", str(stack.proxy.log_dir), *stack.shard_args, "--path", "no/such")
    assert done.returncode == 2 and "exists neither" in done.stderr, done.stderr
    stack.shards[1].stop()  # a shard down: nothing can be proven, so nothing is compared
    done = nfsj("verify", "--log", str(stack.proxy.log_dir), *stack.shard_args)
    assert done.returncode == 2 and done.stderr.startswith("nfsj: error: shard 1 ("), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
