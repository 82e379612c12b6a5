"""The native relay journals what the Python relay journals.

One scripted sequence of calls (every mutation kind, failures, names and
binds, pipelined WRITEs) runs through a real `nfsj proxy` (the Python data
plane) into one directory, and through the native relay, journaling to a
native LOG with the native HLC, into another. The two LOGs, read back with
the Python reader, must hold the same records once what differs by nature
is set aside: stamps, XIDs, client addresses, file handles (compared by
which earlier handle they are), the root directory's name, and times.
"""

from __future__ import annotations

import pytest

from e2e.proxy_fixture import read_log
from e2e.test_conflict_order import CASES, race
from logstore.record import Op
from logstore.stamp import Stamp
from nfsproxy import _dataplane
from nfsproxy.nas.client import NfsClient, created_fh, sattr3
from nfsproxy.wire.nfs3 import (CREATE3args, Createhow3, CreateMode, Diropargs3, StableHow, TimeHow,
                           WRITE3args, Proc3)

pytestmark = pytest.mark.ganesha

KiB = 1 << 10


class NativeJournaling:
    """A native relay journaling to a native LOG in `log_dir`."""

    def __init__(self, nas, log_dir, durability: str = "sync"):
        self.log_dir = log_dir
        self.log = _dataplane.NativeLog(str(log_dir))
        self.committer = _dataplane.NativeCommitter(self.log, "async")
        self.clock = _dataplane.HLC(7)
        self.relay = _dataplane.Relay("127.0.0.1", nas.nfs_port, nas.mount_port, threads=2,
                                      committer=self.committer, clock=self.clock,
                                      durability=durability, drain_timeout_s=5.0)
        self.port = self.relay.port

    def stop(self) -> None:
        self.relay.stop()
        self.committer.close()
        self.log.close()


def script(c: NfsClient, root: str, export_dir) -> None:
    """Every watched kind of call, in one order; nothing here depends on timing."""
    # Made behind the NAS server's back, before it ever listed them: LOOKUP and
    # READDIRPLUS teach the relay their handles (BIND records).
    (export_dir / f"{root}-pre").mkdir()
    (export_dir / f"{root}-pre" / "outside").write_bytes(b"made on the NAS")
    pre = c.lookup(c.root, f"{root}-pre").object
    c.readdirplus(pre)
    top = c.mkdir(c.root, root).obj
    f = created_fh(c, c.create(top, "f", 0o644), top, "f")
    c.send_messages([c.call_message(Proc3.WRITE, WRITE3args(f, i * 4 * KiB, 4 * KiB, StableHow.UNSTABLE,
                                                            bytes([i]) * 4 * KiB)) for i in range(8)])
    for _ in range(8):
        c.receive_reply()
    c.write(f, 32 * KiB, b"tail", stable=StableHow.FILE_SYNC)
    c.commit(f)
    c.setattr(f, sattr3(mode=0o600, size=10 * KiB))
    c.setattr(f, sattr3(atime=TimeHow.SET_TO_SERVER_TIME, mtime=1_600_000_000_000_000_000))
    c.symlink(top, "s", b"f")
    sub = c.mkdir(top, b"d\xff").obj
    c.link(f, sub, "hard")
    c.rename(top, "f", sub, "g")
    c._call(Proc3.CREATE, CREATE3args(Diropargs3(top, "x"), Createhow3(CreateMode.EXCLUSIVE, b"12345678")))
    for failing in (lambda: c.remove(top, "missing"), lambda: c.rmdir(top, b"d\xff"),
                    lambda: c.mkdir(top, "s")):
        with pytest.raises(Exception):
            failing()
    c.readdirplus(sub)
    c.lookup(sub, "g")
    c.remove(sub, "hard")


def normalized(log_dir, root: str) -> list[tuple]:
    """The records of one LOG with what differs by nature set aside."""
    handles: dict[bytes, int] = {}

    def h(fh: bytes):
        return handles.setdefault(bytes(fh), len(handles)) if fh else None

    out = []
    for _, r in read_log(log_dir):
        if r.op == Op.GAP:
            continue
        name = bytes(r.name).replace(root.encode(), b"ROOT", 1)
        out.append((Op.Name(r.op), r.ok, r.status, name, bytes(r.to_name), h(r.fh), h(r.dir_fh),
                    h(r.to_dir_fh), h(r.object_fh), r.offset, r.count, r.stable, bytes(r.data),
                    r.set.SerializeToString(deterministic=True) if r.HasField("set") else None,
                    r.create_mode, bytes(r.verifier), bytes(r.symlink_target), r.uid, r.gid,
                    bytes(r.machine_name), r.HasField("attr"),
                    # the size after a pipelined WRITE depends on the NAS's order
                    None if r.op == Op.WRITE and r.stable == StableHow.UNSTABLE else r.attr.size, r.attr.mode,
                    r.HasField("dir_attr"), r.HasField("to_dir_attr"), r.reply_count))
    return out


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_the_native_relay_journals_the_python_relays_records(nas, proxy_factory, tmp_path, durability):
    python = proxy_factory(durability=durability)
    with NfsClient("127.0.0.1", python.port, python.port, "/export", machine_name="nfsj-same",
                   timeout_s=30.0) as c:
        c.mount()
        script(c, "py", nas.export_dir)
    assert python.stop() == 0, python.stderr_text()

    native = NativeJournaling(nas, tmp_path / "native-log", durability)
    try:
        with NfsClient("127.0.0.1", native.port, native.port, "/export", machine_name="nfsj-same",
                       timeout_s=30.0) as c:
            c.mount()
            script(c, "rs", nas.export_dir)
        counters = native.relay.counters()
        assert native.relay.stamps_in_flight() == 0
    finally:
        native.stop()
    want, got = normalized(python.log_dir, "py"), normalized(tmp_path / "native-log", "rs")
    assert {r[0] for r in got} >= {"MKDIR", "CREATE", "WRITE", "SETATTR", "SYMLINK", "LINK", "RENAME",
                                   "REMOVE", "RMDIR", "BIND"}
    # The pipelined WRITEs are journaled as their replies come: in any order among themselves.
    assert sorted(got, key=repr) == sorted(want, key=repr)
    unordered = lambda rs: [r for r in rs if not (r[0] == "WRITE" and r[11] == StableHow.UNSTABLE)]  # noqa: E731
    assert unordered(got) == unordered(want)
    assert counters["records_total"] == len(got)
    assert counters["protocol_errors_total"] == 0
    # Stamps come from the native HLC (node 7), unique, and in LOG order for one client's calls.
    stamps = [Stamp.from_bytes(r.stamp) for _, r in read_log(tmp_path / "native-log")]
    assert {s.node_id for s in stamps} == {7}
    assert len(set(stamps)) == len(stamps)


@pytest.fixture
def native(nas, tmp_path):
    journaling = NativeJournaling(nas, tmp_path / "native-log")
    yield journaling
    journaling.stop()


def test_conflicting_calls_keep_the_nas_order(nas, native):
    """Two clients race conflicting calls (test_conflict_order's cases); whichever
    the NAS applied first (the tree says which) has the lower stamp."""
    trials = 20
    race(native.port, native.port, nas.export_dir, trials=trials)
    assert native.relay.counters()["conflict_holds_total"] > 0
    native.stop()
    records = [r for _, r in read_log(native.log_dir)]
    dirs = {bytes(r.name).decode(): bytes(r.fh) for r in records if r.op == Op.MKDIR and r.ok}
    files = {(bytes(r.dir_fh), bytes(r.name)): bytes(r.fh) for r in records if r.op == Op.CREATE and r.ok}
    stamps: dict[tuple, dict[bytes, Stamp]] = {}
    for r in records:
        if r.machine_name in (b"client-a", b"client-b"):
            if r.op in (Op.WRITE, Op.SETATTR):
                key = ("data", bytes(r.fh))
            elif r.op == Op.RENAME:
                key = ("entry", bytes(r.to_dir_fh), bytes(r.to_name))
            else:
                key = ("entry", bytes(r.dir_fh), bytes(r.name))
            stamps.setdefault(key, {})[bytes(r.machine_name)] = Stamp.from_bytes(r.stamp)
    for case in CASES:
        d = dirs[case.name]
        for i in range(trials):
            key = (("data", files[d, f"f{i}".encode()]) if case.name.startswith("write")
                   else ("entry", d, f"x{i}".encode()))
            a_first = stamps[key][b"client-a"] < stamps[key][b"client-b"]
            assert a_first == case.in_order(nas.export_dir / case.name, i), (case.name, i)


def test_sync_rewrites_write_verifiers_per_incarnation(nas, tmp_path):
    """In sync durability, WRITE and COMMIT replies carry a verifier made from the
    NAS's and the relay's incarnation: a new relay (a restart that may have lost
    unsynced records) gives another one, so clients resend uncommitted writes."""
    verifiers = []
    for run in range(2):
        native = NativeJournaling(nas, tmp_path / f"log{run}", "sync")
        try:
            with NfsClient("127.0.0.1", native.port, native.port, "/export", timeout_s=30.0) as c:
                c.mount()
                fh = created_fh(c, c.create(c.root, f"v{run}", 0o644), c.root, f"v{run}")
                unstable = c.write(fh, 0, b"x" * 4096, stable=StableHow.UNSTABLE)
                committed = c.commit(fh)
                verifiers.append((bytes(unstable.verf), bytes(committed.verf)))
        finally:
            native.stop()
    with NfsClient(nas.host, nas.nfs_port, nas.mount_port, nas.export_path, timeout_s=30.0) as direct:
        direct.mount()
        fh = direct.lookup(direct.root_fh, "v0").object
        nas_verf = bytes(direct.write(fh, 0, b"y", stable=StableHow.UNSTABLE).verf)
    (w0, c0), (w1, c1) = verifiers
    assert w0 == c0 and w1 == c1, "one incarnation, one verifier: COMMIT confirms the WRITEs"
    assert w0 != w1, "a new incarnation changes the verifier"
    assert nas_verf not in (w0, w1)
