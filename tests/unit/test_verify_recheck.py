"""nfsproxy.nas.verify's second look, against a fake NAS and fake shards.

A difference found on the first read is read again after a later window:
a record that now explains it skips it, a NAS that now equals the journal
drops it, and a NAS that changed with no record is reported, marked
"changed during verify". The real stack is tests/e2e/test_verify.py; here
the NAS changes at exactly the moment each case needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from types import SimpleNamespace

import pytest

from logstore.pb.journal_pb2 import Attr, BaselineInfo, Op, Record
from logstore.stamp import Stamp
from nfsproxy.nas import verify as verify_module
from nfsproxy.wire.nfs3 import Fattr3, Ftype3, Nfstime3, Specdata3
from recoveryd.restore import Cut
from recoveryd.tree import DIR, REG, Tree

ROOT = b"fh-root"
MTIME_NS = 1_700_000_000_000_000_000
POINT = Stamp(1_000, 0, 1)


@dataclasses.dataclass
class File:
    fh: bytes
    data: bytes
    mode: int = 0o644
    mtime_ns: int = MTIME_NS


class FakeNas:
    """The NfsClient calls verify makes, over a dict of files in the root. ``on_read``
    runs before every READ (it may change the NAS)."""

    def __init__(self, files: dict[bytes, File]):
        self.files = files
        self.root = self.root_fh = ROOT
        self.reads: dict[bytes, int] = {}
        self.on_read = lambda name, n: None

    def mount(self) -> bytes:
        return ROOT

    def _attr(self, f: File | None) -> Fattr3:
        kind, size, mode, mtime = ((Ftype3.NF3DIR, 4096, 0o755, MTIME_NS) if f is None
                                   else (Ftype3.NF3REG, len(f.data), f.mode, f.mtime_ns))
        t = Nfstime3(mtime // 10**9, mtime % 10**9)
        return Fattr3(kind, mode, 1, 0, 0, size, size, Specdata3(0, 0), 1, 1, t, t, t)

    def getattr(self, fh: bytes):
        return SimpleNamespace(obj_attributes=self._attr(self._by_fh(fh)))

    def _by_fh(self, fh: bytes) -> File | None:
        return None if fh == ROOT else next(f for f in self.files.values() if f.fh == fh)

    def lookup(self, dir_fh: bytes, name: bytes):
        f = self.files.get(name)
        if f is None:
            raise verify_module.NfsError(verify_module.Nfsstat3.NFS3ERR_NOENT, 3)
        return SimpleNamespace(object=f.fh, obj_attributes=self._attr(f))

    def readdirplus(self, dir_fh: bytes):
        return [SimpleNamespace(name=n, name_handle=f.fh, name_attributes=self._attr(f))
                for n, f in sorted(self.files.items())]

    def read(self, fh: bytes, offset: int, count: int):
        name = next(n for n, f in self.files.items() if f.fh == fh)
        self.reads[name] = self.reads.get(name, 0) + 1
        self.on_read(name, self.reads[name])
        data = self.files[name].data[offset:offset + count]
        return SimpleNamespace(data=data, count=len(data), eof=offset + len(data) >= len(self.files[name].data))


class FakeClient:
    """The RestoreClient calls verify makes: the journal holds ``files`` at the cut;
    each window scan returns the next list of ``windows``."""

    def __init__(self, files: dict[bytes, File], windows: list[list[Record]]):
        self.files = files
        self.windows = list(windows)
        self.shards = SimpleNamespace(scan=lambda request: iter(self.windows.pop(0)))
        self.tree_ = Tree()
        stamps = iter(range(1, 1000))

        def piece(**kw):
            attr = kw.pop("attr")
            r = Record(op=Op.BASELINE, ok=True, baseline_first=True,
                       stamp=Stamp(next(stamps), 0, 1).to_bytes(), **kw)
            r.attr.CopyFrom(attr)
            self.tree_.apply(r)

        piece(fh=ROOT, attr=Attr(type=DIR, mode=0o755, mtime_ns=MTIME_NS))
        for name, f in files.items():
            piece(fh=f.fh, dir_fh=ROOT, name=name, attr=self._attr(f))

    @staticmethod
    def _attr(f: File) -> Attr:
        return Attr(type=REG, mode=f.mode, size=len(f.data), mtime_ns=f.mtime_ns)

    def cut(self, at: Stamp) -> Cut:
        return Cut(at, BaselineInfo(), POINT, {})

    def tree(self, cut: Cut) -> Tree:
        return self.tree_

    def replay_file(self, cut: Cut, fh: bytes, fd: int):
        f = next(f for f in self.files.values() if f.fh == fh)
        os.write(fd, f.data)
        return len(f.data), self._attr(f)

    def file_records(self, cut: Cut, fh: bytes):
        """The file as one WRITE with its attributes (what a bulk fill replays)."""
        f = next(f for f in self.files.values() if f.fh == fh)
        r = Record(op=Op.WRITE, ok=True, fh=fh, offset=0, data=f.data, stamp=Stamp(2000, 0, 1).to_bytes())
        r.attr.CopyFrom(self._attr(f))
        return iter([r])


@pytest.fixture(autouse=True)
def proven(monkeypatch):
    """The consistent point: POINT when the cut is taken, far ahead afterwards."""
    calls = []

    def point(client):
        calls.append(1)
        return (POINT if len(calls) == 1 else Stamp((1 << 63) - 1, 0, 0)), ""

    monkeypatch.setattr(verify_module, "consistent_point", point)


def journal_files() -> dict[bytes, File]:
    return {b"a": File(b"fh-a", b"alpha"), b"b": File(b"fh-b", b"bravo")}


def run(nas: FakeNas, client: FakeClient, **kw):
    return verify_module.verify(client, nas, margin_ns=0, wait_s=5, **kw)


def test_equal_sides_verify_clean_with_one_window():
    client = FakeClient(journal_files(), [[]])
    report = run(FakeNas(journal_files()), client)
    assert report.ok and report.checked == 3 and report.skipped == 0 and client.windows == []


def test_a_difference_a_later_record_explains_is_skipped():
    nas_files = journal_files()
    nas_files[b"a"] = dataclasses.replace(nas_files[b"a"], data=b"ALPHA", mtime_ns=MTIME_NS + 1)
    late = Record(op=Op.WRITE, fh=b"fh-a", ok=True)  # reached the shards only after the first window
    report = run(FakeNas(nas_files), FakeClient(journal_files(), [[], [late]]))
    assert report.ok and report.skipped == 1 and report.checked == 2 and report.rechecked == 0


def test_a_passing_state_equal_on_the_second_read_is_not_reported():
    nas = FakeNas(journal_files())
    original = nas.files[b"b"]
    nas.files[b"b"] = dataclasses.replace(original, data=b"BRAVO")

    def restore_on_second_read(name: bytes, n: int) -> None:
        if name == b"b" and n == 2:
            nas.files[b"b"] = original

    nas.on_read = restore_on_second_read
    report = run(nas, FakeClient(journal_files(), [[], []]))
    assert report.ok and report.rechecked == 1 and report.checked == 3


def test_a_change_without_a_record_during_verify_is_reported_and_marked():
    nas = FakeNas(journal_files())

    def bypass_after_first_read(name: bytes, n: int) -> None:
        if name == b"b" and n == 1:
            nas.files[b"b"] = dataclasses.replace(nas.files[b"b"], data=b"bypass", mtime_ns=MTIME_NS + 5)

    nas.on_read = bypass_after_first_read
    report = run(nas, FakeClient(journal_files(), [[], []]))
    (difference,) = report.differences
    assert difference.path == b"b" and "size 5 in the journal, 6 on the NAS" in difference.what
    assert difference.what.endswith("(changed on the NAS during verify, with no record of the change)")


def test_a_steady_difference_is_reported_plainly():
    nas_files = journal_files()
    nas_files[b"a"] = dataclasses.replace(nas_files[b"a"], data=b"ALPHA")
    nas_files[b"rogue"] = File(b"fh-r", b"x")
    report = run(FakeNas(nas_files), FakeClient(journal_files(), [[], []]))
    sha = {data: hashlib.sha256(data).hexdigest()[:16] for data in (b"alpha", b"ALPHA")}
    assert [str(d) for d in report.differences] == [
        f"/a: content differs (SHA-256 {sha[b'alpha']}... in the journal, {sha[b'ALPHA']}... on the NAS)",
        "/rogue: reg on the NAS but not in the journal"]
    assert report.rechecked == 0


def test_sample_reads_only_the_sampled_files():
    nas = FakeNas(journal_files())
    report = run(nas, FakeClient(journal_files(), [[]]), sample=1, rng=random.Random(1))
    assert report.ok and report.checked == 1 and sum(nas.reads.values()) == 1


def test_the_journals_side_replays_small_files_in_memory_fills_and_large_ones_alone(monkeypatch):
    """Files up to FILL_BYTES come through bulk fills (replayed in memory from
    their records), not through a replay each; a larger one is replayed alone.
    A content difference is found either way."""
    def files() -> dict[bytes, File]:
        return {b"a": File(b"fh-a", b"alpha"), b"b": File(b"fh-b", b"bravo, a longer one")}

    monkeypatch.setattr(verify_module, "FILL_BYTES", len(b"alpha"))   # "b" is over it
    client = FakeClient(files(), [[], []])
    alone: list[bytes] = []
    real_replay = client.replay_file
    client.replay_file = lambda cut, fh, fd: alone.append(fh) or real_replay(cut, fh, fd)
    nas_files = files()
    nas_files[b"a"] = dataclasses.replace(nas_files[b"a"], data=b"ALPHA")
    report = run(FakeNas(nas_files), client)
    assert set(alone) == {b"fh-b"}, alone
    assert [d.path for d in report.differences] == [b"a"]
