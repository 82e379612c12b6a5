"""Every path through a baseline scan releases its stamps, made deterministic.

The scan (`nfsproxy.nas.baseline.run_baseline`) runs in-process against the real
ganesha, with a real proxy of each data plane (its clock and in-flight stamps)
and a real LOG. Its NFS client is our own, with one hook: just before a chosen call on
a chosen object, the test acts on the NAS through a second client (removes
the object) or makes the call fail. That puts the removal exactly between
the listing and the read, which a racing client (test_baseline_faults.py)
only makes likely.

After each case the proxy holds no stamp in flight: its stable stamp (what
heartbeats carry, and so the consistent point) passes a stamp taken after
the scan ended.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from nfsproxy.native.log import NativeCommitter as GroupCommitter
from nfsproxy.native.log import NativeLog
from logstore.log import Log
from logstore.record import Op, parse_record
from nfsproxy.nas.baseline import run_baseline
from nfsproxy.nas.client import NfsClient, NfsError
from logstore.hlc import HLC
from nfsproxy.native.clock import HLC as NativeHLC
from nfsproxy.relay.journal import Journal
from nfsproxy.relay.native import NativeProxy
from nfsproxy.wire.nfs3 import Nfsstat3, Proc3
from nfsproxy.relay.session import BackendAddress, Proxy

pytestmark = pytest.mark.ganesha

MiB = 1 << 20


class HookedClient(NfsClient):
    """Our NFS client; `hook(op, fh, args)` runs before each watched call."""

    hook = staticmethod(lambda op, fh, args: None)

    def read(self, fh, offset, count):
        self.hook("read", fh, (offset,))
        return super().read(fh, offset, count)

    def getattr(self, fh):
        self.hook("getattr", fh, ())
        return super().getattr(fh)

    def readlink(self, fh):
        self.hook("readlink", fh, ())
        return super().readlink(fh)

    def readdirplus(self, fh, **kw):
        self.hook("readdirplus", fh, ())
        return super().readdirplus(fh, **kw)


class Rig:
    """ganesha with a small tree, a second client on it, and a proxy's clock and LOG."""

    def __init__(self, nas, tmp_path: Path, data_plane: str):
        self.nas = nas
        self.data_plane = data_plane
        self.log_dir = tmp_path / "log"
        self.nfs = NfsClient("127.0.0.1", nas.nfs_port, nas.mount_port, "/export")
        root = self.nfs.mount()
        self.nfs.create(root, "f")
        self.nfs.write_all(self.nfs.lookup_path("f"), b"small file\n")
        self.nfs.create(root, "big")
        self.nfs.write_all(self.nfs.lookup_path("big"), bytes(range(256)) * (3 * MiB // 256))
        self.nfs.mkdir(root, "d")
        self.nfs.symlink(root, "l", "f")
        self.root = root
        self.fh = {name: self.nfs.lookup_path(name) for name in ("f", "big", "d", "l")}
        self.hook = lambda op, fh, args: None

    def client(self) -> HookedClient:
        c = HookedClient("127.0.0.1", self.nas.nfs_port, self.nas.mount_port, "/export",
                         machine_name="nfsj-baseline")
        c.hook = lambda op, fh, args: self.hook(op, fh, args)
        return c

    def when(self, op: str, name: str, action, *, offset: int | None = None) -> None:
        """Run `action()` once, just before the scan's first `op` on `name` (at `offset`)."""
        target, done = self.fh[name], []

        def hook(o, fh, args):
            if o == op and fh == target and not done and (offset is None or args[0] == offset):
                done.append(True)
                action()
        self.hook = hook

    def remove(self, name: str):
        return lambda: (self.nfs.rmdir if name == "d" else self.nfs.remove)(self.root, name)

    async def scan(self, *, cancel_when: threading.Event | None = None):
        """Run a baseline; returns its outcome once the LOG is closed;
        `nothing_in_flight` says whether the scan released every stamp it took."""
        log = NativeLog.open(str(self.log_dir))
        committer = GroupCommitter(log)
        backend = BackendAddress("127.0.0.1", self.nas.nfs_port, self.nas.mount_port, "/export")
        if self.data_plane == "python":
            proxy = Proxy(backend, Journal(committer), HLC(7))
        else:
            proxy = NativeProxy(backend, Journal(committer), NativeHLC(7), committer, durability="sync")
            await proxy.start("127.0.0.1", 0)
        task = asyncio.create_task(run_baseline(proxy, self.client, chunk_bytes=MiB))
        try:
            if cancel_when is not None:
                await asyncio.to_thread(cancel_when.wait)
                task.cancel()
            outcome = (await asyncio.gather(task, return_exceptions=True))[0]
            after = proxy.clock.now().to_stamp()
            # The stable stamp (what heartbeats carry) passes a stamp taken after the scan.
            self.nothing_in_flight = proxy.stable_stamp() > after
        finally:
            await proxy.close()
            await committer.close()
            log.close()
        return outcome

    def records(self):
        log = Log.open(str(self.log_dir))
        try:
            return [parse_record(payload, seq) for seq, payload in log.read(log.first_seq)]
        finally:
            log.close()


@pytest.fixture(params=["native", "python"])
def rig(nas, tmp_path, request):
    r = Rig(nas, tmp_path, request.param)
    yield r
    r.nfs.close()


def assert_nothing_in_flight(rig: Rig) -> None:
    assert rig.nothing_in_flight, "a stamp of the baseline is still in flight"


def pieces_of(records, fh: bytes):
    return [r for r in records if r.op == Op.BASELINE and r.fh == fh]


@pytest.mark.parametrize("op, name, offset", [
    ("read", "f", None),          # removed before its only READ
    ("read", "big", MiB),         # removed between its first and second READ
    ("getattr", "l", None),       # removed before the attributes of its piece are read again
    ("readlink", "l", None),      # removed between GETATTR and READLINK
    ("readdirplus", "d", None),   # removed between its piece and its listing
])
def test_an_object_removed_before_it_is_read_is_skipped(rig, op, name, offset):
    rig.when(op, name, rig.remove(name), offset=offset)
    outcome = asyncio.run(rig.scan())
    assert not isinstance(outcome, BaseException), f"the baseline failed: {outcome!r}"
    assert outcome.done and outcome.vanished == 1
    assert_nothing_in_flight(rig)
    records = rig.records()
    assert [r.op for r in records].count(Op.BASELINE_END) == 1
    kept = pieces_of(records, rig.fh[name])
    if name == "big":
        assert [r.offset for r in kept] == [0]  # the piece read before it went stays
    elif name == "d":
        assert len(kept) == 1                    # its piece came before its listing
    else:
        assert kept == []


@pytest.mark.parametrize("failure", [
    NfsError(Nfsstat3.NFS3ERR_IO, Proc3.READ),
    ConnectionError("the NAS closed the connection mid-call"),
], ids=["NFS3ERR_IO", "connection"])
@pytest.mark.parametrize("offset", [0, MiB], ids=["first-read", "later-read"])
def test_a_failing_read_fails_the_baseline_and_releases_every_stamp(rig, failure, offset):
    def fail():
        raise failure
    rig.when("read", "big", fail, offset=offset)
    outcome = asyncio.run(rig.scan())
    assert outcome is failure
    assert_nothing_in_flight(rig)
    assert Op.BASELINE_END not in [r.op for r in rig.records()]


def test_a_cancelled_baseline_waits_for_its_nfs_call_and_releases_every_stamp(rig):
    inside, go_on = threading.Event(), threading.Event()
    state = {}

    def block():
        inside.set()
        go_on.wait()

    rig.when("read", "big", block, offset=MiB)

    async def scenario():
        scan = asyncio.create_task(rig.scan(cancel_when=inside))
        await asyncio.to_thread(inside.wait)
        await asyncio.sleep(0.2)
        # Cancelled, but its READ is still running in a thread: the scan must
        # not close the client (and its socket) under it.
        state["done_before_read_ended"] = scan.done()
        go_on.set()
        return await scan

    outcome = asyncio.run(scenario())
    assert isinstance(outcome, asyncio.CancelledError), outcome
    assert not state["done_before_read_ended"], "the cancelled scan closed its client under a running call"
    assert_nothing_in_flight(rig)
    assert Op.BASELINE_END not in [r.op for r in rig.records()]
