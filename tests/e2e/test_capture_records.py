"""What the proxy journals: the LOG after a known workload, read back record by record.

One run per durability (a module fixture): ganesha, a few names made
straight on ganesha (so the proxy has never seen them), then through a
running `nfsj proxy`:

1. the shared workload (`workload.run_workload`, nfs-rs and libnfs-utils,
   with provoked failures and a seeded random part);
2. nfs-rs listing one of the unseen directories twice (READDIRPLUS) and
   looking up a path in the other (LOOKUP), which must yield BIND records;
3. our own client (`nfsproxy.nas.client.NfsClient`), for what nfs-rs cannot
   send: MKNOD of a FIFO (and a failing one), an EXCLUSIVE CREATE, an
   UNSTABLE WRITE and an explicit COMMIT, a failing WRITE and a failing
   guarded SETATTR, under a credential of its own.

The proxy is then stopped (the LOG is locked while it runs) and every test
reads the records. Ground truth is the export's local directory and what
the workload is known to do; nothing is checked against the proxy's own
codecs.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import stat
import time
from pathlib import Path

import pytest

from e2e.proxy_fixture import ProxyProcess, read_log
from e2e.workload import (BIG_CHUNK_BYTES, BIG_FILE_BYTES, BIG_FILES, LIBNFS_IN, SCRIPTED_ERRORS,
                          SMALL_FILE_COUNT, ProvokedError, connect, run_workload)
from logstore.record import Op, Record, record_stamp
from nfsproxy.nas.client import NfsClient, NfsError, created_fh, nfstime3, sattr3
from nfsproxy.demo.ganesha import start_ganesha
from nfsproxy.wire.nfs3 import CreateMode, Ftype3, Nfsstat3, StableHow

pytestmark = pytest.mark.ganesha

ROOT = "w"
SEED = 5
RANDOM_OPS = 150
LISTED = tuple(f"l{i}" for i in range(5))
OUR_UID, OUR_GID, OUR_GIDS = 0, 0, (0, 4242)
OUR_MACHINE = "capture-test"
OUR_VERIFIER = b"nfsj-vf!"
OUR_DATA = b"unstable bytes, then a COMMIT"
BAD_GUARD_CTIME_NS = 1_000_000_000_123_456_789
MiB = 1 << 20

MUTATIONS = {Op.SETATTR, Op.WRITE, Op.CREATE, Op.MKDIR, Op.SYMLINK, Op.MKNOD, Op.REMOVE,
             Op.RMDIR, Op.RENAME, Op.LINK, Op.COMMIT}
CREATING = {Op.CREATE: Ftype3.NF3REG, Op.MKDIR: Ftype3.NF3DIR, Op.SYMLINK: Ftype3.NF3LNK}
# The procedure an nfs-rs call's failure is journaled under, when the call
# itself (not a LOOKUP before it) fails.
CALL_OPS = {"mkdir": Op.MKDIR, "rmdir": Op.RMDIR, "rename": Op.RENAME, "link": Op.LINK,
            "remove": Op.REMOVE, "symlink": Op.SYMLINK, "create": Op.CREATE, "write": Op.WRITE,
            "truncate": Op.SETATTR, "chmod": Op.SETATTR}
NAMED = {Op.CREATE, Op.MKDIR, Op.SYMLINK, Op.MKNOD, Op.REMOVE, Op.RMDIR, Op.RENAME, Op.LINK}


@dataclasses.dataclass
class Captured:
    """One proxied run and its LOG."""

    durability: str
    export: Path
    records: list[Record]  # LOG order
    errors: list[ProvokedError]
    ours: dict[str, bytes]  # handles our client made: "fifo", "ours.bin", "excl.bin"
    window_ns: tuple[int, int]  # wall clock before the proxy started, after it stopped

    def local(self, rel: str) -> Path:
        return self.export / ROOT / rel

    def ok(self, op: int, **fields) -> list[Record]:
        return [r for r in self.records
                if r.op == op and r.ok and all(getattr(r, k) == v for k, v in fields.items())]

    def created(self, rel: str) -> Record:
        """The record that made the object now at `rel` (workload-relative), matched by
        name and inode (inode numbers are reused, so the last match counts)."""
        ino = os.lstat(self.local(rel)).st_ino
        name = rel.rsplit("/", 1)[-1].encode()
        found = [r for r in self.records if r.ok and r.op in (*CREATING, Op.MKNOD)
                 and r.name == name and r.attr.fileid == ino]
        assert found, f"no creating record for {rel} (inode {ino})"
        return found[-1]

    def of(self, fh: bytes) -> list[Record]:
        """Records about the object `fh` (not those naming it as a directory)."""
        return [r for r in self.records if r.fh == fh]

    @property
    def root_fh(self) -> bytes:
        (mkdir,) = self.ok(Op.MKDIR, name=ROOT.encode())
        return mkdir.fh

    @property
    def libnfs_client(self) -> str:
        return self.created(LIBNFS_IN).client


def _drive_our_client(port: int) -> dict[str, bytes]:
    with NfsClient("127.0.0.1", port, port, "/export", uid=OUR_UID, gid=OUR_GID, gids=OUR_GIDS,
                   machine_name=OUR_MACHINE, timeout_s=15.0) as c:
        c.mount()
        root = c.lookup_path(ROOT)
        fifo = created_fh(c, c.mknod(root, "fifo", Ftype3.NF3FIFO, 0o640), root, "fifo")
        with pytest.raises(NfsError) as failed:
            c.mknod(root, "fifo", Ftype3.NF3FIFO, 0o640)
        assert failed.value.status is Nfsstat3.NFS3ERR_EXIST
        made = c.create(root, "excl.bin", how=CreateMode.EXCLUSIVE, verf=OUR_VERIFIER)
        excl = created_fh(c, made, root, "excl.bin")
        ours = created_fh(c, c.create(root, "ours.bin", 0o600), root, "ours.bin")
        c.write(ours, 0, OUR_DATA, StableHow.UNSTABLE)
        c.commit(ours, 0, 0)
        # Data calls that fail: a WRITE to a directory, a SETATTR whose guard
        # (the expected ctime) does not match.
        with pytest.raises(NfsError):
            c.write(root, 0, b"not into a directory")
        with pytest.raises(NfsError) as failed:
            c.setattr(ours, sattr3(mode=0o644), guard=nfstime3(BAD_GUARD_CTIME_NS))
        assert failed.value.status is Nfsstat3.NFS3ERR_NOT_SYNC
        return {"fifo": fifo, "excl.bin": excl, "ours.bin": ours}


@pytest.fixture(scope="module", params=["sync", "async"])
def captured(request, tmp_path_factory) -> Captured:
    durability = request.param
    tmp = tmp_path_factory.mktemp(f"capture-{durability}")
    nas = start_ganesha(tmp / "export", tmp / "ganesha")
    proxy = None
    try:
        with connect(nas.url()) as c:  # straight to ganesha: names the proxy never sees made
            for d in ("pre", "pre/listed", "pre/looked"):
                c.mkdir(d, 0o755)
            for name in (*(f"pre/listed/{n}" for n in LISTED), "pre/looked/file"):
                with c.open(name, "wb") as f:
                    f.write(name.encode())
        started_ns = time.time_ns()
        proxy = ProxyProcess(nas, tmp / "log", durability=durability).start()
        errors = run_workload(proxy.url(), ROOT, SEED, random_ops=RANDOM_OPS, tmp_dir=tmp)
        with connect(proxy.url()) as c:
            for _ in range(2):  # the second listing teaches the proxy nothing new
                assert sorted(e.name for e in c.scandir("pre/listed")) == list(LISTED)
            c.stat("pre/looked/file")
        ours = _drive_our_client(proxy.port)
        assert proxy.stop() == 0, proxy.stderr_text()
        stopped_ns = time.time_ns()
        records = [r for _, r in read_log(proxy.log_dir)]
        yield Captured(durability, nas.export_dir, records, errors, ours, (started_ns, stopped_ns))
    finally:
        if proxy is not None:
            proxy.stop()
        nas.stop()


# --------------------------------------------------------------------------
# What was journaled


def test_every_kind_of_mutation_is_journaled(captured):
    c = captured
    assert {r.op for r in c.records if r.ok} >= MUTATIONS | {Op.BIND}

    # mkdir (nested, with modes), create, symlink
    assert c.created("tree/a").set.mode == 0o750
    assert c.created("tree/a/b").set.mode == 0o700
    assert c.created("tree/a/b").dir_fh == c.created("tree/a").fh
    many = c.created("many")
    creates = c.ok(Op.CREATE, dir_fh=many.fh)
    assert sorted(r.name for r in creates) == [b"f%03d" % i for i in range(SMALL_FILE_COUNT)]
    targets = {r.name: r.symlink_target for r in c.ok(Op.SYMLINK)}
    assert {b"to-one": b"one", b"dangling": b"../../nowhere/at all",
            b"absolute": b"/absolute/target", b"to-dir": b"a/b"}.items() <= targets.items()

    # link, rename (within, across, over a target, a directory), remove, rmdir
    linked = c.created("tree/a/linked")
    links = c.ok(Op.LINK, fh=linked.fh)
    assert [(r.to_name, r.attr.nlink) for r in links][:2] == [(b"linked-2", 2), (b"linked-3", 3)]
    assert links[1].to_dir_fh == c.created("tree/x").fh
    renames = {(r.name, r.to_name): r for r in c.ok(Op.RENAME)}
    for pair in ((b"linked-3", b"linked-renamed"), (b"one", b"uno"), (b"two", b"two"),
                 (b"three", b"victim"), (b"moving", b"moved")):
        assert pair in renames, pair
    assert renames[b"two", b"two"].dir_fh == c.created("tree/a").fh
    assert renames[b"two", b"two"].to_dir_fh == c.created("tree/a/b/c").fh
    removed = sorted(r.name for r in c.ok(Op.REMOVE, dir_fh=many.fh))
    assert removed == [b"f%03d" % i for i in range(0, SMALL_FILE_COUNT, 4)]
    assert c.ok(Op.REMOVE, name=b"doomed", dir_fh=c.created("tree/x").fh)
    assert c.ok(Op.RMDIR, name=b"empty-then-gone", dir_fh=c.created("tree/x").fh)

    # setattr: mode, owner, times, size (shrink and extend)
    attrs = c.of(c.created("data/attrs.bin").fh)
    assert any(r.op == Op.SETATTR and r.set.mode == 0o640 and r.set.HasField("mode")
               for r in attrs)
    assert any(r.op == Op.SETATTR and r.set.uid == 1234 and r.set.gid == 5678
               and r.attr.uid == 1234 and r.attr.gid == 5678 for r in attrs)
    (utime,) = [r for r in attrs if r.set.HasField("mtime_ns")]
    assert (utime.set.atime_ns, utime.set.mtime_ns) == (1_600_000_000_123_456_789,
                                                        1_600_000_001_987_654_321)
    assert utime.attr.mtime_ns == 1_600_000_001_987_654_321
    (group_only,) = [r for r in c.of(c.created("data/setgid.bin").fh)
                     if r.set.HasField("gid")]
    assert not group_only.set.HasField("uid") and group_only.set.gid == 4321
    sizes = [r.set.size for r in c.of(c.created("data/shrink-grow.bin").fh)
             if r.op == Op.SETATTR and r.set.HasField("size")]
    assert sizes[-2:] == [123_457, 2 * MiB + 1]


def test_provoked_failures_are_journaled_as_failed(captured):
    c = captured
    failed = [r for r in c.records if not r.ok]
    assert failed and all(r.op in MUTATIONS for r in failed)

    def key(op: int, status: int, name: str) -> tuple[int, int, str]:
        return (op, status, name if op in NAMED else "")

    def record_key(r: Record) -> tuple[int, int, str]:
        return key(r.op, r.status, (r.to_name if r.op == Op.LINK else r.name).decode())

    journaled = collections.Counter(record_key(r) for r in failed)

    # Each scripted failure of a mutation is there, failed, with its nfsstat3.
    scripted = c.errors[:len(SCRIPTED_ERRORS)]
    assert [(e.call, e.path, e.proc, e.code_name) for e in scripted] == list(SCRIPTED_ERRORS)
    for e in scripted:
        if e.proc == "LOOKUP":
            continue  # not a mutation: nothing to journal
        k = key(Op.Value(e.proc), Nfsstat3[e.code_name].value, e.path.rsplit("/", 1)[-1])
        assert journaled[k] >= 1, f"{e} is not in the LOG as a failed {e.proc}"

    # Every failed record is a failure the clients saw (none made up, none
    # journaled twice): the random part's failures, and our failing MKNOD.
    seen = collections.Counter()
    for e in c.errors:
        if e.proc == "LOOKUP":
            continue
        op = Op.Value(e.proc) if e.proc else CALL_OPS[e.call]
        if op in MUTATIONS:
            seen[key(op, Nfsstat3[e.code_name].value, e.path.rsplit("/", 1)[-1])] += 1
    seen[key(Op.MKNOD, Nfsstat3.NFS3ERR_EXIST.value, "fifo")] += 1
    (bad_write,) = [r for r in failed if r.op == Op.WRITE]
    assert bad_write.fh == c.root_fh and not bad_write.data
    seen[key(Op.WRITE, bad_write.status, "")] += 1
    seen[key(Op.SETATTR, Nfsstat3.NFS3ERR_NOT_SYNC.value, "")] += 1
    assert not journaled - seen, f"failed records no client saw fail: {journaled - seen}"
    # Random calls failing at their own procedure (not at a LOOKUP before
    # it) are most of them; every kind that failed on purpose shows up.
    assert {op for op, _, _ in journaled} >= {Op.MKDIR, Op.REMOVE, Op.RMDIR, Op.RENAME, Op.LINK,
                                              Op.MKNOD, Op.WRITE, Op.SETATTR}
    (guarded,) = [r for r in failed if r.op == Op.SETATTR and r.status == Nfsstat3.NFS3ERR_NOT_SYNC]
    assert guarded.fh == c.ours["ours.bin"] and guarded.guard_ctime_ns == BAD_GUARD_CTIME_NS
    assert guarded.set.mode == 0o644

    # A failed record carries no data and the NAS's post-op attributes where sent.
    for r in failed:
        assert r.status != 0 and not r.data


def _replay_writes(records: list[Record]) -> bytearray:
    out = bytearray()
    for r in records:
        end = r.offset + len(r.data)
        if len(out) < end:
            out.extend(bytes(end - len(out)))
        out[r.offset:end] = r.data
    return out


@pytest.mark.parametrize("rel", [*BIG_FILES, "data/sparse.bin", LIBNFS_IN])
def test_write_records_carry_the_exact_bytes(captured, rel):
    """Files only ever written by WRITE after their creation: replaying the
    journaled WRITEs gives the file's content on the NAS."""
    c = captured
    fh = c.created(rel).fh
    mine = c.of(fh)
    writes = [r for r in mine if r.op == Op.WRITE]
    assert writes and all(r.ok for r in writes)
    first_write = mine.index(writes[0])
    # Nothing after the first WRITE changed the size behind the WRITEs' back
    # ("wb" opens truncate to 0 before them).
    assert all(not r.set.HasField("size") or (r.set.size == 0 and i < first_write)
               for i, r in enumerate(mine) if r.op == Op.SETATTR)
    for r in writes:
        assert r.count == len(r.data) == r.reply_count
        assert r.attr.size >= r.offset + r.count
    assert _replay_writes(writes) == c.local(rel).read_bytes()

    if rel in BIG_FILES:
        # nfs-rs, one call at a time: four 1 MiB WRITEs, each one's post-op
        # size is the file's size right after it.
        assert sorted(r.offset for r in writes) == list(range(0, BIG_FILE_BYTES, BIG_CHUNK_BYTES))
        size = 0
        for r in writes:
            size = max(size, r.offset + r.count)
            assert r.attr.size == size


def test_records_say_who_and_carry_post_op_attributes(captured):
    c = captured
    mutations = [r for r in c.records if r.op != Op.BIND]
    for r in mutations:
        assert re.fullmatch(r"127\.0\.0\.1:\d+", r.client), r
        assert (r.uid, r.gid) == (os.getuid(), os.getgid()) == (0, 0), r
    # nfs-rs (two connections), libnfs, our client: distinct connections.
    assert len({r.client for r in mutations}) >= 3
    assert c.libnfs_client != c.created(BIG_FILES[0]).client
    ours = [r for r in mutations if r.machine_name == OUR_MACHINE.encode()]
    assert len(ours) == 8  # MKNOD x2, CREATE x2, WRITE x2, COMMIT, SETATTR
    assert all(list(r.gids) == list(OUR_GIDS) for r in ours)
    assert len({r.client for r in ours}) == 1

    for r in (r for r in mutations if r.ok):
        if r.op in CREATING or r.op == Op.MKNOD:
            kind = CREATING.get(r.op) or r.mknod_type
            assert r.fh and r.attr.type == kind and r.attr.fileid, r
            assert r.dir_attr.type == Ftype3.NF3DIR, r
        elif r.op == Op.WRITE:
            assert r.attr.type == Ftype3.NF3REG and r.attr.size >= r.offset + r.count, r
        elif r.op == Op.SETATTR:
            assert r.attr.fileid, r
            if r.set.HasField("mode"):
                assert r.attr.mode & 0o7777 == r.set.mode, r
            if r.set.HasField("size"):
                assert r.attr.size == r.set.size, r
            if r.set.HasField("uid"):
                assert r.attr.uid == r.set.uid, r
            if r.set.HasField("gid"):
                assert r.attr.gid == r.set.gid, r
            if r.set.HasField("mtime_ns"):
                assert r.attr.mtime_ns == r.set.mtime_ns, r
        elif r.op in (Op.REMOVE, Op.RMDIR):
            assert r.dir_fh and r.dir_attr.type == Ftype3.NF3DIR, r
        elif r.op == Op.RENAME:
            assert r.dir_attr.type == r.to_dir_attr.type == Ftype3.NF3DIR, r
        elif r.op == Op.LINK:
            assert r.attr.nlink >= 2 and r.to_dir_attr.type == Ftype3.NF3DIR, r
        elif r.op == Op.COMMIT:
            assert r.attr.type == Ftype3.NF3REG, r

    # The files now on the NAS: the last record about each carries its size.
    for rel in (*BIG_FILES, LIBNFS_IN, "data/sparse.bin", "many/f001"):
        last = [r for r in c.of(c.created(rel).fh) if r.ok][-1]
        assert last.attr.size == c.local(rel).stat().st_size, rel


def test_stamps_are_unique_and_ordered_per_handle(captured):
    c = captured
    stamps = [r.stamp for r in c.records]
    assert all(len(s) == 16 for s in stamps)
    assert len(set(stamps)) == len(stamps), "duplicate stamps"
    assert len({record_stamp(r).node_id for r in c.records}) == 1
    low, high = c.window_ns
    assert all(low <= record_stamp(r).wall_ns <= high for r in c.records)

    # nfs-rs and our client send one call at a time, so for each handle the
    # LOG holds its records in stamp order. (nfs-cp keeps several WRITEs in
    # flight: its records are left out.)
    by_handle: dict[bytes, list[Record]] = collections.defaultdict(list)
    libnfs_client = c.libnfs_client
    for r in c.records:
        if r.client == libnfs_client:
            continue
        for fh in {r.fh, r.dir_fh, r.to_dir_fh} - {b""}:
            by_handle[fh].append(r)
    assert len(by_handle) > SMALL_FILE_COUNT
    for fh, records in by_handle.items():
        for a, b in zip(records, records[1:]):
            assert a.stamp < b.stamp, (
                f"handle {fh.hex()}: {Op.Name(a.op)} {record_stamp(a)} is in the LOG before "
                f"{Op.Name(b.op)} {record_stamp(b)}")


def test_bind_records_name_what_lookup_and_readdirplus_taught(captured):
    c = captured
    binds = [r for r in c.records if r.op == Op.BIND]
    assert all(r.ok and r.fh and r.dir_fh and r.name not in (b"", b".", b"..") for r in binds)
    by_name = collections.defaultdict(list)
    for r in binds:
        by_name[r.name.decode()].append(r)
    export_root = c.ok(Op.MKDIR, name=ROOT.encode())[0].dir_fh

    def only(name: str) -> Record:
        assert len(by_name[name]) == 1, f"{len(by_name[name])} BIND records for {name!r}"
        return by_name[name][0]

    def check(rel: str, bind: Record, dir_bind_fh: bytes, kind: Ftype3) -> None:
        assert bind.dir_fh == dir_bind_fh, rel
        assert bind.attr.type == kind, rel
        assert bind.attr.fileid == os.lstat(c.export / rel).st_ino, rel

    # LOOKUP taught pre, pre/listed, pre/looked, pre/looked/file.
    pre = only("pre")
    check("pre", pre, export_root, Ftype3.NF3DIR)
    check("pre/listed", only("listed"), pre.fh, Ftype3.NF3DIR)
    check("pre/looked", only("looked"), pre.fh, Ftype3.NF3DIR)
    check("pre/looked/file", only("file"), only("looked").fh, Ftype3.NF3REG)
    # READDIRPLUS taught the listed names, once although listed twice.
    for name in LISTED:
        check(f"pre/listed/{name}", only(name), only("listed").fh, Ftype3.NF3REG)


def test_mknod_exclusive_create_and_commit_from_our_client(captured):
    c = captured
    fifo = c.local("fifo")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    mknods = [r for r in c.records if r.op == Op.MKNOD]
    assert [(r.ok, r.status) for r in mknods] == [(True, 0), (False, Nfsstat3.NFS3ERR_EXIST)]
    made, refused = mknods
    for r in mknods:
        assert (r.name, r.dir_fh, r.mknod_type) == (b"fifo", c.root_fh, Ftype3.NF3FIFO)
        assert r.set.mode == 0o640
    assert made.fh == c.ours["fifo"]
    assert made.attr.type == Ftype3.NF3FIFO and made.attr.fileid == os.lstat(fifo).st_ino
    assert made.attr.mode & 0o7777 == 0o640
    assert not refused.fh

    (excl,) = c.ok(Op.CREATE, name=b"excl.bin")
    assert excl.create_mode == CreateMode.EXCLUSIVE and excl.verifier == OUR_VERIFIER
    assert excl.fh == c.ours["excl.bin"]

    ours = c.of(c.ours["ours.bin"])
    assert [(Op.Name(r.op), r.ok) for r in ours] == [
        ("CREATE", True), ("WRITE", True), ("COMMIT", True), ("SETATTR", False)]
    create, write, commit, _ = ours
    assert create.create_mode == CreateMode.GUARDED and create.set.mode == 0o600
    assert (write.offset, write.stable, write.data) == (0, StableHow.UNSTABLE, OUR_DATA)
    assert commit.ok and (commit.offset, commit.count) == (0, 0)
    assert commit.attr.size == len(OUR_DATA)
