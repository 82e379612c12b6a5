"""No silent gap: every way a record can go missing is marked, refused, and healed.

Real ganesha, a real recoveryd shard, a real `nfsj proxy`, and the `nfsj`
commands a user types. Each test makes records go missing one way:

* a LOG write that fails with ENOSPC (the LOG on a small tmpfs, filled up:
  a real full disk, not an injected error);
* a drop under the passthrough quota policy;
* an async proxy's tail lost at a crash: the proxy is killed -9 and its LOG
  is then made into a copy of what a power cut leaves (the sync mark where
  the shard's acks ended, zeros over the page after it, the frames behind
  them never synced), and the proxy restarts on it;
* a mutation relayed to a NAS that never replies (ganesha SIGSTOPped, the
  client gives up and disconnects, the proxy's --drain-timeout runs out).

Each then shows the gap in `nfsj status --json` (holding the consistent
point back, with its cause), in the proxy's `nfsj_journal_gaps_total`
metric, a restore past it refused without `--allow-unproven` (and done with
it), and, after a new baseline, the stream proven again from that
baseline's end while a moment inside the gap stays refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import crc32c
import pytest

from e2e.proxy_fixture import ProxyProcess
from logstore.segment import HEADER, HEADER_BYTES, SEGMENT_HEADER_BYTES, scan_segment
from logstore.stamp import Stamp
from nfsproxy.nas.client import NfsClient
from nfsproxy.wire.nfs3 import StableHow
from recoveryd.status import read_proxy_status

pytestmark = pytest.mark.ganesha

NFSJ = [sys.executable, "-m", "nfsproxy"]
M32 = (1 << 32) - 1
KiB, MiB = 1 << 10, 1 << 20
HANG_S = float(os.environ.get("NFSJ_TEST_HANG_S", "90"))


# -- helpers ---------------------------------------------------------------------------------


def nfsj(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([*NFSJ, *args], capture_output=True, text=True, timeout=timeout_s)


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float = HANG_S,
             describe: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"hang: still waiting, after {timeout_s:g}s, for {what}\n{describe()}")
        time.sleep(0.1)


def now_bound(past: Stamp | None = None) -> Stamp:
    """A stamp above every stamp handed out so far (the proxy's HLC reads the same clock).

    A proxy restarted after a kill starts its clock at the bound it had
    persisted, up to a second ahead of the wall clock (logstore.hlc); pass
    ``past``, a stamp it handed out since (a baseline's end), to wait until the
    wall clock has passed that too."""
    while past is not None and time.time_ns() <= past.wall_ns:
        time.sleep(0.05)
    time.sleep(0.05)
    bound = Stamp(time.time_ns(), M32, M32)
    time.sleep(0.05)
    return bound


class GapStack:
    """ganesha, one shard and a proxy shipping to it."""

    def __init__(self, nas, shard, proxy_factory, *, durability: str = "sync",
                 extra: list[str] = (), log_dir: Path | None = None, log_retain: str = "1h"):
        self.nas, self.shard = nas, shard
        self.extra = ["--shard", shard.address, "--log-retain", log_retain, *extra]
        self.durability = durability
        self.proxy: ProxyProcess = proxy_factory(durability=durability, extra=self.extra,
                                                 log_dir=log_dir)

    def client(self, timeout_s: float = 10.0) -> NfsClient:
        c = NfsClient("127.0.0.1", self.proxy.port, self.proxy.port, "/export",
                      machine_name="nfsj-gaps", timeout_s=timeout_s)
        c.mount()
        return c

    def write_file(self, name: str, data: bytes, timeout_s: float = 10.0) -> None:
        with self.client(timeout_s) as c:
            fh = c.create(c.mount(), name, 0o644).obj
            for pos in range(0, len(data), 256 * KiB):
                c.write(bytes(fh), pos, data[pos:pos + 256 * KiB], StableHow.FILE_SYNC)

    def baseline(self) -> tuple[Stamp, Stamp]:
        done = nfsj("baseline", "--log", str(self.proxy.log_dir), "--quiet")
        assert done.returncode == 0, done.stderr + self.proxy.stderr_text()[-3000:]
        m = re.search(r"baseline (\S+) done.*restorable from (\S+)", done.stdout)
        assert m, done.stdout
        return Stamp.parse(m.group(1)), Stamp.parse(m.group(2))

    def status(self) -> dict[str, Any]:
        done = nfsj("status", "--log", str(self.proxy.log_dir), "--shard", self.shard.address,
                    "--json")
        assert done.returncode in (0, 1), done.stderr
        return json.loads(done.stdout)

    def metric(self, name: str, labels: str = "") -> float:
        address = read_proxy_status(self.proxy.log_dir)["metrics"]
        text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
        where = rf"\{{{re.escape(labels)}\}}" if labels else ""
        m = re.search(rf"^{re.escape(name)}{where} (\S+)$", text, re.M)
        assert m, f"{name}{{{labels}}} not in /metrics"
        return float(m.group(1))

    def restore(self, at: Stamp, dest: Path, *, allow_unproven: bool = False) -> subprocess.CompletedProcess:
        args = ["restore", "--at", str(at), "--to", str(dest), "--shard", self.shard.address, "--quiet"]
        if allow_unproven:
            args.append("--allow-unproven")
        return nfsj(*args)

    def proven_past(self, moment: Stamp) -> dict[str, Any]:
        def probe():
            view = self.last_view = self.status()
            point = view["consistent_point"]
            return view if point and Stamp.parse(point["stamp"]) > moment else None
        return wait_for(f"a consistent point past {moment}", probe,
                        describe=lambda: json.dumps(self.last_view, indent=1)[:6000])

    def gap_shown(self, cause: str) -> dict[str, Any]:
        def probe():
            view = self.status()
            gaps = [g for g in view["gaps"] if g["cause"] == cause]
            return (view, gaps[0]) if gaps else None
        return wait_for(f"a {cause} gap in `nfsj status`", probe)


@contextlib.contextmanager
def frozen(nas):
    """The NAS stopped (SIGSTOP) for the block: calls relayed to it get no reply."""
    os.kill(nas.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(nas.pid, signal.SIGCONT)


def check_gap_lifecycle(stack: GapStack, cause: str, before_gap: Stamp, tmp_path: Path) -> None:
    """The common second half: status, metric, refusal, healing by a new baseline."""
    view, gap = stack.gap_shown(cause)
    assert gap["healed_by"] is None and gap["reason"]
    gap_from, gap_through = Stamp.parse(gap["from"]["stamp"]), Stamp.parse(gap["through"]["stamp"])
    assert gap_from <= gap_through and gap_through > before_gap
    # The consistent point is held at the gap's start, and says why.
    after_gap = now_bound()
    view = stack.status()
    point = Stamp.parse(view["consistent_point"]["stamp"])
    assert point <= gap_from < after_gap
    assert view["held_back_by"]["gap"]["cause"] == cause
    assert "gap" in view["consistent_point_reason"] and "baseline" in view["consistent_point_reason"]
    human = nfsj("status", "--log", str(stack.proxy.log_dir), "--shard", stack.shard.address)
    assert f"{cause}" in human.stdout and "UNHEALED" in human.stdout, human.stdout
    assert stack.metric("nfsj_journal_gaps_total", f'cause="{cause}"') >= 1

    # A restore past the gap is refused, unless forced.
    refused = stack.restore(after_gap, tmp_path / "refused")
    assert refused.returncode != 0 and "--allow-unproven" in refused.stderr, refused.stderr
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
    forced = stack.restore(after_gap, tmp_path / "forced", allow_unproven=True)
    assert forced.returncode == 0, forced.stderr
    assert "UNPROVEN" in forced.stderr + forced.stdout

    # A baseline taken after the gap makes the stream proven again from its end.
    begin, end = stack.baseline()
    assert begin > gap_through
    view = stack.proven_past(end)
    (healed,) = [g for g in view["gaps"] if g["cause"] == cause][:1]
    assert healed["healed_by"]["stamp"] == str(end)
    assert view["held_back_by"] is None or view["held_back_by"]["gap"] is None
    later = now_bound(past=end)
    stack.proven_past(later)
    done = stack.restore(later, tmp_path / "healed")
    assert done.returncode == 0, done.stderr
    # A moment inside the gap stays unproven.
    inside = stack.restore(after_gap, tmp_path / "inside")
    assert inside.returncode != 0 and "gap" in inside.stderr, inside.stderr


@pytest.fixture
def shard(shard_factory):
    return shard_factory(0)


# -- the ways a record goes missing -----------------------------------------------------------


def test_a_passthrough_quota_drop_is_a_gap(nas, shard, proxy_factory, tmp_path):
    stack = GapStack(nas, shard, proxy_factory, log_retain="0",
                     extra=["--quota", "1M", "--quota-policy", "passthrough", "--segment-size", "256K"])
    stack.write_file("before", b"before the gap\n")
    stack.baseline()
    stack.proven_past(now_bound())
    before_gap = now_bound()
    # The shard is away, so the LOG cannot be trimmed and runs past its quota.
    shard.stop()
    stack.write_file("big", os.urandom(3 * MiB))
    assert stack.metric("nfsj_journal_passthrough_active") == 1
    # A baseline now would have its records dropped: it fails and says why,
    # rather than end as if the journal held the image.
    dropped = nfsj("baseline", "--log", str(stack.proxy.log_dir), "--quiet")
    assert dropped.returncode != 0 and "over its quota" in dropped.stdout + dropped.stderr, \
        dropped.stdout + dropped.stderr
    shard.start()
    # Back under the quota once retention trims what the shard acked.
    wait_for("the LOG back under its quota", lambda: stack.metric("nfsj_log_quota_used_ratio") < 1)
    with stack.client() as c:  # so that the baseline that heals the gap fits in the quota
        c.remove(c.mount(), "big")
    check_gap_lifecycle(stack, "quota_drop", before_gap, tmp_path)


# strict: the record's write fails after the NAS applied the call, a gap. sync
# (native): the call's write-ahead intent fails first, so the call never
# reaches the NAS and there is nothing to mark.
@pytest.mark.parametrize("durability", ["strict", "sync"])
def test_a_failed_log_write_enospc_is_a_gap_or_keeps_the_call_from_the_nas(nas, shard, proxy_factory, tmp_path,
                                                                        durability):
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    stack = None
    try:
        stack = GapStack(nas, shard, proxy_factory, durability=durability,
                         extra=["--segment-size", "256K", "--data-plane", "native"], log_dir=mount / "log")
        stack.write_file("before", b"before the gap\n")
        stack.baseline()
        stack.proven_past(now_bound())
        before_gap = now_bound()
        # Fill the disk until only a little is left: the WRITE's record (strict)
        # or intent (sync: at most 64 KiB are written ahead) no longer fits,
        # a gap record does.
        room, size = (256 * KiB, MiB) if durability == "strict" else (16 * KiB, 64 * KiB)
        filler = mount / "filler"
        with open(filler, "wb") as f:
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\xff" * 64 * KiB)
                    f.flush()
        os.truncate(filler, filler.stat().st_size - room)
        with pytest.raises(Exception):  # the proxy closes the client: no reply without a record
            with stack.client(timeout_s=10.0) as c:
                fh = c.create(c.mount(), "lost", 0o644).obj
                c.write(bytes(fh), 0, os.urandom(size), StableHow.FILE_SYNC)
        assert stack.proxy.alive(), stack.proxy.stderr_text()
        filler.unlink()  # room again, for the baseline that heals the gap
        if durability == "sync":
            assert (nas.export_dir / "lost").stat().st_size == 0, "the WRITE reached the NAS unjournaled"
            assert stack.metric("nfsj_journal_gaps_total", 'cause="log_write_failed"') == 0
            stack.write_file("after", b"journaled again\n")
            return
        check_gap_lifecycle(stack, "log_write_failed", before_gap, tmp_path)
    finally:
        if stack is not None:
            stack.proxy.stop()
        subprocess.run(["umount", "-l", str(mount)])


def test_an_async_tail_lost_at_a_power_cut_is_a_gap(nas, shard, proxy_factory, tmp_path):
    log_dir = tmp_path / "log-async"
    stack = GapStack(nas, shard, proxy_factory, durability="async", log_dir=log_dir)
    stack.write_file("before", b"before the gap\n")
    stack.baseline()
    stack.proven_past(now_bound())
    before_gap = now_bound()
    acked = stack.status()["shards"][0]["streams"][0]["durable_seq"]  # idle: it stays put
    # The shard goes away; the async proxy answers writes at once, then dies.
    shard.stop()
    stack.write_file("answered-then-lost", os.urandom(512 * KiB))
    stack.proxy.kill()
    # Make the LOG what a power cut leaves when the last sync was where the shard's acks
    # ended: the sync mark there, zeros over the page after it, later frames never synced.
    segment = sorted(log_dir.glob("*.seg"))[-1]
    base = int(segment.stem)
    data = bytearray(segment.read_bytes())
    pos, seq = SEGMENT_HEADER_BYTES, base
    while seq <= acked:
        pos += HEADER_BYTES + HEADER.unpack_from(data, pos)[0]
        seq += 1
    assert pos < len(data), "nothing was written after the shard's last ack"
    data[pos:pos + 4096] = bytes(min(4096, len(data) - pos))
    segment.write_bytes(bytes(data))
    from logstore.log import _MARK, _MARK_MAGIC  # the sync mark's format (logstore/log.py)
    body = _MARK.pack(_MARK_MAGIC, base, pos, acked, 0)[:-4]
    (log_dir / "SYNCED").write_bytes(body + crc32c.crc32c(body).to_bytes(4, "big"))
    shard.start()
    stack.proxy = proxy_factory(durability="async", extra=stack.extra, log_dir=log_dir)
    assert "torn tail" in stack.proxy.stderr_text()
    check_gap_lifecycle(stack, "torn_tail", before_gap, tmp_path)


def test_a_mutation_whose_nas_reply_never_came_is_a_gap(nas, shard, proxy_factory, tmp_path):
    stack = GapStack(nas, shard, proxy_factory, extra=["--drain-timeout", "1"])
    stack.write_file("before", b"before the gap\n")
    stack.baseline()
    stack.proven_past(now_bound())
    before_gap = now_bound()
    c = stack.client(timeout_s=2.0)
    root = c.mount()
    with frozen(nas):
        with pytest.raises(Exception):  # the NAS is frozen: no reply
            c.create(root, "unanswered", 0o644)
        c.close()  # the client gives up; the proxy waits --drain-timeout, then marks the gap
        stack.gap_shown("no_reply")
    check_gap_lifecycle(stack, "no_reply", before_gap, tmp_path)


def test_a_proxy_killed_with_a_call_at_the_nas_is_a_gap(nas, shard, proxy_factory, tmp_path):
    # kill -9 while a REMOVE sits at the (frozen) NAS: the NAS may apply it after the
    # proxy is gone, and no record of it will ever reach the LOG. The next start of
    # that LOG marks the gap; without it the restore past the kill would call itself
    # proven while showing a file the NAS no longer has.
    log_dir = tmp_path / "log-killed"
    stack = GapStack(nas, shard, proxy_factory, log_dir=log_dir)
    stack.write_file("victim", b"removed behind the journal's back\n")
    stack.baseline()
    stack.proven_past(now_bound())
    before_gap = now_bound()
    with stack.client(timeout_s=2.0) as c:
        root = c.mount()
        with frozen(nas):
            with pytest.raises(Exception):  # the NAS is frozen: no reply
                c.remove(root, "victim")
            stack.proxy.kill()  # SIGKILL, with the REMOVE relayed and unanswered
    stack.proxy = proxy_factory(extra=stack.extra, log_dir=log_dir)
    assert "did not stop cleanly" in stack.proxy.stderr_text()
    check_gap_lifecycle(stack, "unclean_stop", before_gap, tmp_path)
    # Healed by the baseline: a restore now shows what the NAS holds, whatever it did.
    later = now_bound()
    stack.proven_past(later)
    assert stack.restore(later, tmp_path / "after").returncode == 0
    assert (tmp_path / "after" / "victim").exists() == (nas.export_dir / "victim").exists()


SPARES = ["--segment-size", "256K", "--log-spares", "2"]


def write_over_a_spare(stack: GapStack, log_dir: Path, *, older_bytes_past_the_end: bool = False) -> None:
    """Write through the proxy until its newest segment is a trimmed one's
    file written over (the LOG trimmed as soon as the shard acks); with
    ``older_bytes_past_the_end``, until the spare's older frames also lie
    past the newest frame (whether they do depends on the frames' sizes)."""
    spares: set[int] = set()
    sizes = random.Random(len(str(log_dir)))

    def newest_is_a_spare() -> bool:
        spares.update(p.stat().st_ino for p in log_dir.glob("*.spare"))
        # Files of varied sizes: frames of one size could make every segment
        # end where the spare under it ended.
        size = sizes.randrange(40, 300) * KiB if older_bytes_past_the_end else 300 * KiB
        stack.write_file(f"fill-{len(spares)}-{time.monotonic_ns()}", os.urandom(size))
        spares.update(p.stat().st_ino for p in log_dir.glob("*.spare"))
        newest = sorted(log_dir.glob("*.seg"))[-1]
        if newest.stat().st_ino not in spares:
            return False
        return (not older_bytes_past_the_end
                or scan_segment(str(newest), int(newest.stem)).valid_end < newest.stat().st_size)
    wait_for("the newest LOG segment to be a spare written over", newest_is_a_spare)


def same_tree(restored: Path, export: Path) -> None:
    names = sorted(p.name for p in export.iterdir())
    assert sorted(p.name for p in restored.iterdir()) == names
    for name in names:
        assert (restored / name).read_bytes() == (export / name).read_bytes(), name


def test_a_proxy_killed_while_writing_over_a_spare_is_a_gap(nas, shard, proxy_factory, tmp_path):
    # The spare's older frames lie past the last record written: recovery
    # cannot tell where the kill stopped the writer, so it notes a torn tail.
    log_dir = tmp_path / "log-spare-killed"
    stack = GapStack(nas, shard, proxy_factory, log_dir=log_dir, log_retain="0", extra=SPARES)
    stack.write_file("first", b"before\n")
    stack.baseline()
    stack.proven_past(now_bound())
    before_gap = now_bound()
    write_over_a_spare(stack, log_dir, older_bytes_past_the_end=True)
    stack.proxy.kill()
    stack.proxy = proxy_factory(extra=stack.extra, log_dir=log_dir)
    assert "torn tail" in stack.proxy.stderr_text()
    check_gap_lifecycle(stack, "torn_tail", before_gap, tmp_path)
    later = now_bound()
    stack.proven_past(later)
    assert stack.restore(later, tmp_path / "after").returncode == 0
    same_tree(tmp_path / "after", nas.export_dir)


def test_a_clean_stop_over_a_spare_marks_no_gap(nas, shard, proxy_factory, tmp_path):
    log_dir = tmp_path / "log-spare-clean"
    stack = GapStack(nas, shard, proxy_factory, log_dir=log_dir, log_retain="0", extra=SPARES)
    stack.write_file("first", b"before\n")
    stack.baseline()
    write_over_a_spare(stack, log_dir)
    assert stack.metric("nfsj_log_recycled_segments_total") >= 1
    assert stack.proxy.stop() == 0
    stack.proxy = proxy_factory(extra=stack.extra, log_dir=log_dir)
    write_over_a_spare(stack, log_dir)  # and on, over the older bytes kept past the close
    # The restarted clock may run up to a second ahead of the wall clock (logstore.hlc).
    later = now_bound(past=Stamp.parse(stack.status()["proxy"]["newest"]))
    view = stack.proven_past(later)
    assert view["gaps"] == [], view["gaps"]
    assert "torn tail" not in stack.proxy.stderr_text()
    assert stack.restore(later, tmp_path / "restored").returncode == 0
    same_tree(tmp_path / "restored", nas.export_dir)


def test_a_clean_stop_marks_no_gap(nas, shard, proxy_factory, tmp_path):
    log_dir = tmp_path / "log-clean"
    stack = GapStack(nas, shard, proxy_factory, log_dir=log_dir)
    stack.write_file("f", b"x\n")
    assert stack.proxy.stop() == 0
    stack.proxy = proxy_factory(extra=stack.extra, log_dir=log_dir)
    stack.write_file("g", b"y\n")
    stack.proven_past(now_bound())
    assert stack.status()["gaps"] == []
    assert "did not stop cleanly" not in stack.proxy.stderr_text()
