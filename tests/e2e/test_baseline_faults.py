"""A baseline that meets faults leaves no stamp in flight, and never runs twice at once.

Real processes throughout: ganesha, `nfsj recoveryd`, `nfsj proxy`, the
`nfsj baseline` CLI, and an nfs-rs client through the proxy. Each case ends
by showing the consistent point (`nfsj status --json`, one shard) passing a
moment taken after the fault: a stamp left in flight by the baseline would
hold the proxy's stable stamp, and so every heartbeat, back for good.

* A file removed between the baseline's listing and its READ: a second
  client removes the files of a large directory from the end while the
  baseline reads them from the start (a race, made certain by its size: the
  test checks that the proxy counted skipped files). The baseline completes,
  and a restore afterwards equals the NAS.
* A READ that fails: ganesha is stopped while the baseline reads; the
  baseline fails with a clear error.
* A cancelled baseline (Ctrl-C or kill -9 of `nfsj baseline` mid-scan): the
  proxy stops its scan, and a second baseline then runs alone: no piece of
  the first is stamped after the second began, and the first has no END.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from e2e.proxy_fixture import ProxyProcess, read_log
from e2e.shard_fixture import ShardProcess
from e2e.treecompare import diff, snapshot
from e2e.workload import connect
from logstore.record import Op
from logstore.stamp import Stamp
from nfsproxy.demo.ganesha import start_ganesha
from recoveryd.restore import Shards

pytestmark = [pytest.mark.ganesha, pytest.mark.timeout(600)]

NFSJ = [sys.executable, "-m", "nfsproxy"]
CLI_TIMEOUT_S = 180.0
WAIT_S = 60.0
M32 = (1 << 32) - 1
MANY_FILES = 3000            # small files: the baseline reads them for a few seconds


def nfsj(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NFSJ, *args], capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def now_bound() -> Stamp:
    """A stamp above every stamp the proxy handed out so far (its clock reads the same wall clock)."""
    time.sleep(0.02)
    bound = Stamp(time.time_ns(), M32, M32)
    time.sleep(0.02)
    return bound


class Stack:
    """ganesha over `export` (filled by `make_tree` before it starts), one shard, one proxy."""

    def __init__(self, tmp_path: Path, make_tree):
        self.tmp = tmp_path
        make_tree(tmp_path / "export")
        self.nas = start_ganesha(tmp_path / "export", tmp_path / "ganesha")
        self.shard = ShardProcess(tmp_path / "shard0", 0).start()
        self.proxy = ProxyProcess(self.nas, tmp_path / "log", extra=["--shard", self.shard.address]).start()

    def close(self) -> None:
        self.proxy.stop()
        self.shard.stop()
        self.nas.stop()

    def start_baseline(self) -> subprocess.Popen:
        # Ctrl-C as in a terminal: a suite run in the background (`pytest &`)
        # ignores SIGINT, and a child Python that inherits that ignores Ctrl-C.
        return subprocess.Popen([*NFSJ, "baseline", "--log", str(self.proxy.log_dir), "--quiet"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def wait_baseline_begun(self, known: int = 0) -> None:
        """Until the shard holds the BEGIN of baseline number `known + 1`."""
        deadline = time.monotonic() + WAIT_S
        with Shards([self.shard.address]) as shards:
            while time.monotonic() < deadline:
                if len(shards.baselines()[0]) > known:
                    return
                time.sleep(0.005)
        raise AssertionError("the baseline never began")

    def status(self) -> dict:
        done = nfsj("status", "--log", str(self.proxy.log_dir), "--shard", self.shard.address, "--json")
        assert done.returncode == 0, f"nfsj status failed:\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout)

    def wait_proven(self, at: Stamp) -> Stamp:
        """Until `nfsj status --json` shows the consistent point past `at`; returns it."""
        deadline = time.monotonic() + WAIT_S
        view = None
        while time.monotonic() < deadline:
            view = self.status()
            point = view["consistent_point"]
            if point is not None and Stamp.parse(point["stamp"]) > at:
                return Stamp.parse(point["stamp"])
            time.sleep(0.2)
        raise AssertionError(f"the consistent point stays below {at}: a stamp is still in flight\n"
                             f"{json.dumps(view, indent=1)[:3000]}\n{self.proxy.stderr_text()[-3000:]}")


@pytest.fixture
def stack_of(tmp_path):
    made: list[Stack] = []

    def make(make_tree) -> Stack:
        made.append(Stack(tmp_path, make_tree))
        return made[-1]

    yield make
    for stack in made:
        stack.close()


def many_files(export: Path) -> None:
    big = export / "big"
    big.mkdir(parents=True)
    for i in range(MANY_FILES):
        (big / f"f{i:04d}").write_bytes(os.urandom(2000))


def test_a_file_removed_between_listing_and_read_is_skipped(stack_of, tmp_path):
    stack = stack_of(many_files)
    baseline = stack.start_baseline()
    stack.wait_baseline_begun()
    removed = 0
    with connect(stack.proxy.url()) as c:
        # From the end, while the baseline reads from the start: they meet in
        # the middle, past files the baseline listed and has not read yet.
        for i in reversed(range(MANY_FILES)):
            if baseline.poll() is not None:
                break
            c.remove(f"big/f{i:04d}")
            removed += 1
    out, err = baseline.communicate(timeout=CLI_TIMEOUT_S)
    assert baseline.returncode == 0, f"nfsj baseline failed:\n{out}\n{err}"
    skipped = re.search(r"baseline done: .*, (\d+) objects removed before they were read",
                        stack.proxy.stderr_text())
    assert skipped, stack.proxy.stderr_text()[-3000:]
    assert int(skipped.group(1)) > 0, f"no file was removed between listing and READ ({removed} removed)"
    at = now_bound()
    stack.wait_proven(at)
    truth = snapshot(stack.nas.export_dir)
    done = nfsj("restore", "--at", str(at), "--to", str(tmp_path / "restored"), "--quiet",
                "--shard", stack.shard.address)
    assert done.returncode == 0, f"nfsj restore failed:\n{done.stdout}\n{done.stderr}"
    problems = diff(truth, snapshot(tmp_path / "restored"), names=("NAS", "restore"))
    assert not problems, "\n".join(problems[:40])


def test_a_failing_read_releases_its_stamp(stack_of):
    stack = stack_of(many_files)
    baseline = stack.start_baseline()
    stack.wait_baseline_begun()
    time.sleep(0.2)  # into the files of big/: every call now is a READ
    stack.nas.stop()
    out, err = baseline.communicate(timeout=CLI_TIMEOUT_S)
    assert baseline.returncode != 0, f"the baseline finished although its NAS stopped:\n{out}"
    assert "baseline failed" in err, err
    stack.wait_proven(now_bound())


def pieces_by_baseline(log_dir: Path) -> dict[bytes, list]:
    """Every BASELINE_BEGIN/BASELINE/BASELINE_END record of a LOG, by baseline id."""
    by_id: dict[bytes, list] = defaultdict(list)
    for _, record in read_log(log_dir):
        if record.op in (Op.BASELINE_BEGIN, Op.BASELINE, Op.BASELINE_END):
            by_id[record.baseline_id].append(record)
    return by_id


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_a_cancelled_baseline_stops_and_the_next_runs_alone(stack_of, how):
    stack = stack_of(many_files)
    first = stack.start_baseline()
    stack.wait_baseline_begun()
    time.sleep(0.5)  # into the files of big/
    first.send_signal(how)
    first.communicate(timeout=CLI_TIMEOUT_S)
    assert first.returncode != 0, "the first baseline ended before it was cancelled: nothing was tested"
    second = nfsj("baseline", "--log", str(stack.proxy.log_dir), "--quiet")
    assert second.returncode == 0, f"the second nfsj baseline failed:\n{second.stdout}\n{second.stderr}"
    stack.wait_proven(now_bound())
    stack.proxy.stop()

    baselines = pieces_by_baseline(stack.proxy.log_dir)
    assert len(baselines) == 2, sorted(baselines)
    cancelled, later = sorted(baselines.items())
    later_begun = min(r.stamp for r in later[1])
    assert [r for r in cancelled[1] if r.op == Op.BASELINE_END] == [], "the cancelled baseline went on to its END"
    overlapping = [r for r in cancelled[1] if r.stamp > later_begun]
    assert not overlapping, f"{len(overlapping)} pieces of the cancelled baseline were read during the next one"
    assert [r.op for r in later[1]].count(Op.BASELINE_END) == 1
    assert "baseline cancelled by its caller" in stack.proxy.stderr_text()


def test_a_second_baseline_waits_for_the_running_one(stack_of):
    stack = stack_of(many_files)
    first = stack.start_baseline()
    stack.wait_baseline_begun()
    second = nfsj("baseline", "--log", str(stack.proxy.log_dir), "--quiet")
    out, err = first.communicate(timeout=CLI_TIMEOUT_S)
    assert first.returncode == 0, f"nfsj baseline failed:\n{out}\n{err}"
    assert second.returncode == 0, f"the second nfsj baseline failed:\n{second.stdout}\n{second.stderr}"
    assert "waiting: another baseline is running on this proxy" in second.stderr, second.stderr
    stack.proxy.stop()
    (_, first_pieces), (_, second_pieces) = sorted(pieces_by_baseline(stack.proxy.log_dir).items())
    first_end = max(r.stamp for r in first_pieces)
    assert first_end < min(r.stamp for r in second_pieces), "the two baselines overlapped"
