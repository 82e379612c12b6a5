"""Replies matched to calls when a client reuses XIDs, and no stamp left in flight.

Real ganesha, a real `nfsj proxy --shard` and a real `nfsj recoveryd`; the
client is our codec client's raw layer (`call_message`, `send_messages`,
`receive_reply`), which sends calls with any XID, several at once, on one
connection. Each test checks two things:

* the LOG tells the truth: every call the NAS ran is journaled once, with
  the outcome the NAS gave it (read back with `read_log`);
* nothing stays in flight: the consistent point (the proxy's stable stamp
  as the shard holds it) passes a moment taken after the last reply.

Timeouts only detect hangs; no assertion is about speed.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.proxy_fixture import ProxyProcess, read_log
from e2e.shard_fixture import ShardProcess
from logstore.record import Op
from logstore.stamp import Stamp
from nfsproxy.nas.client import ClientError, NfsClient, created_fh, sattr3
from nfsproxy.wire.nfs3 import (CREATE3args, Createhow3, CreateMode, Diropargs3, FSINFO3args,
                           GETATTR3args, Nfsstat3, Proc3, REMOVE3args, StableHow, WRITE3args)
from recoveryd.status import fetch_status, overall

pytestmark = [pytest.mark.ganesha, pytest.mark.timeout(600)]

HANG_S = 90.0   # the consistent point moves every heartbeat; far longer than this is a hang
M32 = 0xFFFFFFFF
XID = 0x0BADC0DE


@dataclasses.dataclass
class Stack:
    nas: Any
    shard: ShardProcess
    proxy: ProxyProcess

    def client(self, name: str = "nfsj-xid") -> NfsClient:
        c = NfsClient("127.0.0.1", self.proxy.port, self.proxy.port, "/export",
                      machine_name=name, timeout_s=30.0)
        c.mount()
        return c


@pytest.fixture
def stack(nas, shard_factory, proxy_factory) -> Stack:
    shard = shard_factory(0)
    proxy = proxy_factory(durability="sync", extra=["--shard", shard.address, "--log-retain", "1h"])
    return Stack(nas, shard, proxy)


def moment_after_now() -> Stamp:
    """A stamp above every stamp handed out so far (the proxy's HLC reads this clock)."""
    time.sleep(0.01)
    return Stamp(time.time_ns(), M32, M32)


def assert_point_passes(stack: Stack, moment: Stamp) -> Stamp:
    """Wait until the consistent point passes `moment`: nothing below it is still in flight."""
    deadline = time.monotonic() + HANG_S
    view = None
    while time.monotonic() < deadline:
        view = overall(fetch_status([stack.shard.address]))
        point = view["consistent_point"]
        if point is not None and Stamp.parse(point["stamp"]) > moment:
            return Stamp.parse(point["stamp"])
        time.sleep(0.2)
    raise AssertionError(f"hang: the consistent point did not pass {moment} in {HANG_S:g}s "
                         f"(a stamp stays in flight): {view}\n{stack.proxy.stderr_text()[-3000:]}")


def replies(client: NfsClient, n: int) -> list[tuple[int, memoryview]]:
    """The next `n` replies on the connection: (xid, raw body), in arrival order."""
    out = []
    for _ in range(n):
        header, body = client.receive_reply()
        assert header.success, header
        out.append((header.xid, body))
    return out


def replies_until(client: NfsClient, fence_xid: int, want: Counter) -> list[tuple[int, memoryview]]:
    """Replies until the fence's and at least `want[xid]` of each other xid have come."""
    got: list[tuple[int, memoryview]] = []
    seen: Counter = Counter()
    while seen[fence_xid] < 1 or any(seen[x] < k for x, k in want.items()):
        header, body = client.receive_reply()
        assert header.success, header
        got.append((header.xid, body))
        seen[header.xid] += 1
    return got


def remove(c: NfsClient, name: str, xid: int) -> bytes:
    return c.call_message(Proc3.REMOVE, REMOVE3args(Diropargs3(c.root, name)), xid)


def create(c: NfsClient, name: str, xid: int) -> bytes:
    how = Createhow3(CreateMode.UNCHECKED, sattr3(mode=0o644))
    return c.call_message(Proc3.CREATE, CREATE3args(Diropargs3(c.root, name), how), xid)


def records(stack: Stack, op: int, xid: int | None = None):
    stack.proxy.stop()
    return [r for _, r in read_log(stack.proxy.log_dir)
            if r.op == op and (xid is None or r.xid == xid)]


def name_of(record) -> str:
    name = record.name
    return name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name


# -- tests ------------------------------------------------------------------------------


def test_two_different_calls_under_one_xid_are_each_journaled_with_their_own_outcome(stack):
    """REMOVE of a missing name and REMOVE of a present one, same XID, both in flight:
    the LOG holds a failed REMOVE of the first and a successful REMOVE of the second."""
    with stack.client() as c:
        c.create(c.root, "present")
        c.send_messages([remove(c, "absent", XID), remove(c, "present", XID)])
        got = replies(c, 2)
        assert [x for x, _ in got] == [XID, XID]
        statuses = Counter(c.decode_reply(Proc3.REMOVE, body).status for _, body in got)
        assert statuses == Counter({Nfsstat3.NFS3ERR_NOENT: 1, Nfsstat3.NFS3_OK: 1})
    assert not (stack.nas.export_dir / "present").exists()
    assert_point_passes(stack, moment_after_now())
    outcomes = {name_of(r): (r.ok, r.status) for r in records(stack, Op.REMOVE, XID)}
    assert outcomes == {"absent": (False, Nfsstat3.NFS3ERR_NOENT), "present": (True, Nfsstat3.NFS3_OK)}


def test_a_retransmission_in_flight_runs_once_and_is_answered(stack):
    """The same REMOVE twice, byte for byte, while the first is in flight: the NAS
    runs it once, the client gets only successes for that XID, and the LOG holds
    one successful REMOVE."""
    fence = XID + 1
    with stack.client() as c:
        c.create(c.root, "victim")
        call = remove(c, "victim", XID)
        c.send_messages([call, call, c.call_message(Proc3.GETATTR, GETATTR3args(c.root), fence)])
        got = replies_until(c, fence, Counter({XID: 1}))
        for xid, body in got:
            if xid == XID:
                assert c.decode_reply(Proc3.REMOVE, body).status is Nfsstat3.NFS3_OK
        c.null()  # a second answer to the retransmission, if any, came before this one
    assert not (stack.nas.export_dir / "victim").exists()
    assert_point_passes(stack, moment_after_now())
    removes = records(stack, Op.REMOVE, XID)
    assert [(name_of(r), r.ok) for r in removes] == [("victim", True)]


def test_many_calls_under_one_xid_are_all_journaled(stack):
    """A burst of CREATEs and REMOVEs, all under one XID: each is journaled with the
    outcome the client saw, and the LOG agrees with the export."""
    names = [f"f{i:02d}" for i in range(24)]
    with stack.client() as c:
        for name in names[::2]:
            c.create(c.root, name)
        burst = [remove(c, n, XID) for n in names[::2]] + [create(c, n, XID) for n in names[1::2]]
        c.send_messages(burst)
        got = replies(c, len(burst))
        assert {x for x, _ in got} == {XID}
    assert_point_passes(stack, moment_after_now())
    left = sorted(p.name for p in stack.nas.export_dir.iterdir())
    assert left == names[1::2]
    removed = sorted(name_of(r) for r in records(stack, Op.REMOVE, XID) if r.ok)
    made = sorted(name_of(r) for _, r in read_log(stack.proxy.log_dir)
                  if r.op == Op.CREATE and r.xid == XID and r.ok and r.fh)
    assert removed == names[::2]
    assert made == names[1::2]


def test_fsinfo_and_getattr_under_one_xid_each_get_their_own_reply(stack):
    """The FSINFO clamp applies to the FSINFO reply only, however the replies interleave."""
    with stack.client() as c:
        # GETATTR first: its reply tends to come first, and must not be taken for FSINFO's.
        c.send_messages([c.call_message(Proc3.GETATTR, GETATTR3args(c.root), XID),
                         c.call_message(Proc3.FSINFO, FSINFO3args(c.root), XID)])
        got = replies(c, 2)
        kinds = Counter()
        for _, body in got:
            for proc in (Proc3.FSINFO, Proc3.GETATTR):
                try:
                    res = c.decode_reply(proc, body)
                except Exception:  # noqa: BLE001  the other procedure's reply
                    continue
                assert res.status is Nfsstat3.NFS3_OK
                if proc is Proc3.FSINFO:
                    assert 0 < res.body.wtmax <= 4 << 20, "the proxy clamps wtmax to what it relays"
                kinds[proc] += 1
                break
        assert kinds == Counter({Proc3.FSINFO: 1, Proc3.GETATTR: 1})
        assert c.getattr(c.root).obj_attributes.type  # the connection is still good
    assert_point_passes(stack, moment_after_now())


def test_a_client_gone_with_mutations_in_flight_leaves_no_stamp_behind(stack):
    """The client sends WRITEs and CREATEs and hangs up at once: every one that the
    NAS ran is journaled with its outcome, and the consistent point moves on."""
    names = [f"gone{i}" for i in range(8)]
    with stack.client() as c:
        fh = created_fh(c, c.create(c.root, "target"), c.root, "target")
        burst = [c.call_message(Proc3.WRITE, WRITE3args(fh, i * 65536, 65536, StableHow.FILE_SYNC,
                                                        bytes([i]) * 65536), XID + i)
                 for i in range(8)]
        burst += [create(c, n, XID + 100 + i) for i, n in enumerate(names)]
        c.send_messages(burst)
        c._nfs._sock.shutdown(socket.SHUT_RDWR)  # gone before any reply
    assert_point_passes(stack, moment_after_now())
    writes = records(stack, Op.WRITE)
    log = read_log(stack.proxy.log_dir)
    creates = {name_of(r) for _, r in log if r.op == Op.CREATE and r.ok and name_of(r) in names}
    on_nas = {p.name for p in stack.nas.export_dir.iterdir()} - {"target"}
    assert creates == on_nas, "a CREATE the NAS ran is missing from the LOG, or the other way round"
    size = (stack.nas.export_dir / "target").stat().st_size
    assert size == 65536 * (1 + max((w.offset // 65536 for w in writes if w.ok), default=-1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stamps_in_flight(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "nfsj_proxy_stamps_in_flight":
                return sample.value
    raise AssertionError("nfsj_proxy_stamps_in_flight is not exported")


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs: a LOG on it runs out of space (ENOSPC) mid-workload."""
    where = tmp_path / "small-disk"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_failed_log_write_leaves_no_stamp_in_flight(nas, proxy_factory, small_disk):
    """The LOG's disk fills up: the writes that cannot be journaled fail (the client is
    disconnected), and afterwards no stamp is left in flight (the proxy's gauge)."""
    metrics_port = _free_port()
    proxy = proxy_factory(extra=["--metrics", f"127.0.0.1:{metrics_port}", "--segment-size", "1M"],
                          log_dir=small_disk / "log")
    try:
        chunk = b"z" * 65536
        failed = None
        with NfsClient("127.0.0.1", proxy.port, proxy.port, "/export", timeout_s=30.0) as c:
            c.mount()
            fh = created_fh(c, c.create(c.root, "big"), c.root, "big")
            for i in range(256):  # 16 MiB, far past the disk
                try:
                    c.write(fh, i * len(chunk), chunk, StableHow.FILE_SYNC)
                except (OSError, ClientError) as e:
                    failed = e
                    break
        assert failed is not None, "16 MiB were journaled on a 3 MiB disk"
        deadline = time.monotonic() + HANG_S
        while (left := stamps_in_flight(metrics_port)) != 0:
            assert time.monotonic() < deadline, f"hang: {left:g} stamp(s) stay in flight"
            time.sleep(0.2)
        assert proxy.alive(), proxy.stderr_text()[-3000:]
    finally:
        proxy.stop()
