"""Scale of history: one file written 10,000 times among many files with history,
rebuilt at several moments, reading only its own records.

Real processes: nfs-ganesha, two `nfsj recoveryd` shards, `nfsj proxy` in front
of ganesha. Writes go through the proxy with our own `nfsproxy.nas.client.NfsClient`
(fast, and the point here is the store, not interop):

* before `nfsj baseline`: ``a/hot.bin`` (64 KiB) and the other files, in two
  subtrees ``a/`` and ``b/``;
* after it, `HOT_WRITES` small writes to ``a/hot.bin`` at varying offsets (a
  few far past the end, leaving holes), one call at a time and mirrored in a
  local model; meanwhile two threads write the other files of ``a/`` and
  ``b/`` (`OTHER_WRITES` each), so the hot file's records are interleaved in
  stamp order with everyone else's;
* moments T_before (no hot write yet), T_middle, T_end, each a stamp above
  every hot write answered so far and below every later one (T_end also
  after every write of the other files).

The proxy is then stopped and its LOG read directly (logstore): that gives,
independently of the shards, every record and which file it names.

Checks:

* `RestoreClient` rebuilds ``a/hot.bin`` at each moment equal to the model,
  and `nfsj cat` gives the same bytes at T_end;
* a rebuild of one file reads only its own records: counting what the shards
  stream (`CountingShards`, a `Shards` that counts every record each shard's
  Restore API sends), the file's FileRecords are exactly the LOG records that
  name it, and the rest is the namespace scan (namespace ops and baseline
  pieces, no data and no WRITE of anyone); a cold file's rebuild reads none
  of the hot file's 10,000 records;
* `restore_to_dir(path="b")` asks for the records of b's files only, and no
  record of an ``a/`` file's data is served;
* the shards' own counter, `nfsj_restore_served_records_total` (summed over
  their /metrics), rises by exactly what the counting client saw; for
  `nfsj cat` (another process) it rises by the file's own records plus
  those of the directories on its path, never by the whole namespace.
"""

from __future__ import annotations

import dataclasses
import random
import re
import tempfile
import threading
import time
import urllib.request
from typing import Iterator

import pytest

from e2e.proxy_fixture import ProxyProcess, read_log
from e2e.shard_fixture import ShardProcess
from e2e.test_acceptance import nfsj, now_bound, wait_proven
from logstore.pb.journal_pb2 import FileRequest, Op, Record, ScanRequest
from logstore.stamp import Stamp
from nfsproxy.nas.client import NfsClient, created_fh
from nfsproxy.demo.ganesha import GaneshaInstance, start_ganesha
from nfsproxy.wire.nfs3 import StableHow
from recoveryd.restore import TREE_OPS, Cut, RestoreClient, Shards

pytestmark = [pytest.mark.ganesha, pytest.mark.timeout(900)]

KiB, MiB = 1 << 10, 1 << 20
HOT = "a/hot.bin"
HOT_INITIAL_BYTES = 64 * KiB
HOT_WRITES = 10_000
HOT_MOMENTS = {"before": 0, "middle": HOT_WRITES // 2, "end": HOT_WRITES}
OTHER_FILES = 40                 # per subtree
OTHER_WRITES = 3_000             # per subtree, spread over its files
N_SHARDS = 2
SEED = 7


# -- the stack ------------------------------------------------------------------------------


class MeteredShard(ShardProcess):
    """A ShardProcess that remembers where its /metrics are."""

    metrics_url = ""

    def _spawn(self, timeout_s: float) -> str:
        line = super()._spawn(timeout_s)
        m = re.search(r"metrics (http://\S+/metrics)", line)
        if m:
            self.metrics_url = m.group(1)
        return line


def served_metric(shards: list[MeteredShard]) -> int:
    """The sum over shards of nfsj_restore_served_records_total."""
    total, seen = 0, False
    for shard in shards:
        with urllib.request.urlopen(shard.metrics_url, timeout=10) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith("nfsj_restore_served_records_total{"):
                total += int(float(line.rsplit(" ", 1)[1]))
                seen = True
    assert seen, f"no nfsj_restore_served_records_total in {[s.metrics_url for s in shards]}"
    return total


class CountingShards(Shards):
    """`Shards` that keeps every record any shard's Restore API streamed to it,
    by call kind ("scan" or "file") and by shard, before merging (so each
    record is counted as often as a shard sent it, as a server-side counter
    would)."""

    def __init__(self, addresses):
        super().__init__(addresses)
        self.served: list[tuple[str, int, Record]] = []
        self.file_requests: list[bytes] = []
        self._served_lock = threading.Lock()

    def _chunked(self, k, chunked, plain, request, doing, **kw) -> Iterator[Record]:
        if isinstance(request, ScanRequest):
            return self._counted("scan", k, super()._chunked(k, chunked, plain, request, doing, **kw))
        if k == 0:
            self.file_requests.extend([request.fh] if isinstance(request, FileRequest) else request.fhs)
        return self._counted("file", k, super()._chunked(k, chunked, plain, request, doing, **kw))

    def _counted(self, kind, k, inner) -> Iterator[Record]:
        try:
            for record in inner:
                with self._served_lock:  # a bulk reader's items are (record, data)
                    self.served.append((kind, k, record if isinstance(record, Record) else record[0]))
                yield record
        finally:
            inner.close()

    def take(self) -> list[tuple[str, int, Record]]:
        with self._served_lock:
            out, self.served = self.served, []
            self.file_requests = []
        return out


def names(record: Record) -> set[bytes]:
    return {h for h in (record.fh, record.dir_fh, record.to_dir_fh, record.object_fh) if h}


@dataclasses.dataclass
class History:
    nas: GaneshaInstance
    shards: list[MeteredShard]
    addresses: list[str]
    moments: dict[str, Stamp]
    expected: dict[str, bytes]          # hot.bin's content at each moment
    fhs: dict[str, bytes]               # path -> handle
    log: list[Record]                   # every LOG record, LOG order

    @property
    def shard_args(self) -> list[str]:
        return [arg for a in self.addresses for arg in ("--shard", a)]

    def naming(self, fh: bytes, cut: Cut) -> list[Record]:
        """The LOG's records naming `fh` in the cut's window (what FileRecords must serve;
        pieces of other baselines are served and skipped by the client)."""
        lo, hi = cut.baseline_id.to_bytes(), cut.at.to_bytes()
        return [r for r in self.log if lo <= r.stamp <= hi and fh in names(r)]

    def namespace(self, cut: Cut) -> int:
        """How many records a tree rebuild at `cut` must be served, summed over shards:
        the LOG's namespace records in the window, the baseline markers once per shard."""
        lo, hi = cut.baseline_id.to_bytes(), cut.at.to_bytes()
        n = 0
        for r in self.log:
            if lo <= r.stamp <= hi and r.op in TREE_OPS:
                n += len(self.addresses) if r.op in (Op.BASELINE_BEGIN, Op.BASELINE_END) else 1
        return n


def _apply(model: bytearray, offset: int, data: bytes) -> None:
    if offset > len(model):
        model.extend(bytes(offset - len(model)))
    model[offset:offset + len(data)] = data


def _other_writer(port: int, files: list[bytes], seed: str, count: int, errors: list) -> None:
    rng = random.Random(seed)
    try:
        with NfsClient("127.0.0.1", port, port, "/export", timeout_s=30) as c:
            c.mount()
            for _ in range(count):
                fh = rng.choice(files)
                c.write(fh, rng.randrange(0, 32 * KiB), rng.randbytes(rng.randrange(1, 2 * KiB)),
                        StableHow.UNSTABLE)
    except BaseException as e:  # noqa: BLE001  reported by the main thread
        errors.append(e)


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Iterator[History]:
    tmp = tmp_path_factory.mktemp("history")
    nas = start_ganesha(tmp / "export", tmp / "ganesha")
    shards: list[MeteredShard] = []
    proxy: ProxyProcess | None = None
    try:
        shards = [MeteredShard(tmp / f"shard{k}", k).start() for k in range(N_SHARDS)]
        addresses = [s.address for s in shards]
        proxy = ProxyProcess(nas, tmp / "log", durability="sync",
                             extra=[a for s in addresses for a in ("--shard", s)]).start()
        rng = random.Random(SEED)
        fhs: dict[str, bytes] = {}
        model = bytearray(rng.randbytes(HOT_INITIAL_BYTES))
        with NfsClient("127.0.0.1", proxy.port, proxy.port, "/export", timeout_s=30) as c:
            c.mount()
            for d in ("a", "b"):
                fhs[d] = created_fh(c, c.mkdir(c.root, d, 0o755), c.root, d)
            fhs[HOT] = created_fh(c, c.create(fhs["a"], "hot.bin", 0o644), fhs["a"], "hot.bin")
            c.write_all(fhs[HOT], model)
            for d in ("a", "b"):
                for i in range(OTHER_FILES):
                    path = f"{d}/f{i:03d}"
                    fhs[path] = created_fh(c, c.create(fhs[d], f"f{i:03d}", 0o644), fhs[d], f"f{i:03d}")
                    c.write_all(fhs[path], rng.randbytes(rng.randrange(0, 8 * KiB)))
        done = nfsj("baseline", "--log", str(proxy.log_dir), "--quiet")
        assert done.returncode == 0, f"nfsj baseline failed:\n{done.stdout}\n{done.stderr}"

        moments: dict[str, Stamp] = {}
        expected: dict[str, bytes] = {}
        errors: list[BaseException] = []
        writers = [threading.Thread(target=_other_writer, daemon=True,
                                    args=(proxy.port, [fhs[f"{d}/f{i:03d}"] for i in range(OTHER_FILES)],
                                          f"{SEED}:{d}", OTHER_WRITES, errors))
                   for d in ("a", "b")]
        started = time.monotonic()
        with NfsClient("127.0.0.1", proxy.port, proxy.port, "/export", timeout_s=30) as c:
            c.mount()
            hot = fhs[HOT]
            for w in writers:
                w.start()
            for n in range(HOT_WRITES + 1):
                if n == HOT_WRITES:
                    for w in writers:  # T_end is after every write of every file
                        w.join(timeout=600)
                for name, at_n in HOT_MOMENTS.items():
                    if n == at_n:
                        moments[name] = now_bound()
                        expected[name] = bytes(model)
                if n == HOT_WRITES:
                    break
                if rng.random() < 0.01:
                    offset = rng.randrange(256 * KiB, 1 * MiB)        # far past the end: a hole
                else:
                    offset = rng.randrange(0, 200 * KiB)
                data = rng.randbytes(rng.randrange(1, 256))
                resok = c.write(hot, offset, data, StableHow.UNSTABLE)
                assert resok.count == len(data)
                _apply(model, offset, data)
            c.commit(hot)
        assert not errors, errors
        assert not any(w.is_alive() for w in writers), "the other writers hang"
        print(f"\n{HOT_WRITES} hot writes + {2 * OTHER_WRITES} others through the proxy in "
              f"{time.monotonic() - started:.1f}s")
        wait_proven(_Addresses(addresses), max(moments.values()), cli=False)
        proxy.stop()   # the LOG is locked while the proxy runs
        log = [r for _, r in read_log(proxy.log_dir)]
        yield History(nas, shards, addresses, moments, expected, fhs, log)
    finally:
        if proxy is not None:
            proxy.stop()
        for s in shards:
            s.stop()
        nas.stop()


@dataclasses.dataclass
class _Addresses:
    """What `wait_proven` needs of a stack."""

    addresses: list[str]


# -- the tests ------------------------------------------------------------------------------------


def test_the_log_holds_the_history_the_test_claims(history):
    ops_naming_hot = [r.op for r in history.log if history.fhs[HOT] in names(r)]
    assert ops_naming_hot.count(Op.WRITE) > HOT_WRITES      # + the initial content
    others = sum(1 for r in history.log if r.op == Op.WRITE and history.fhs[HOT] not in names(r))
    assert others >= 2 * OTHER_WRITES
    assert len(history.log) > HOT_WRITES + 2 * OTHER_WRITES


@pytest.mark.parametrize("moment", list(HOT_MOMENTS))
def test_restore_client_rebuilds_the_hot_file_reading_only_its_records(history, moment):
    h = history
    hot = h.fhs[HOT]
    want = h.expected[moment]
    with CountingShards(h.addresses) as shards, RestoreClient(shards) as client:
        cut = client.cut(h.moments[moment])
        shards.take()
        before = served_metric(h.shards)
        # What `nfsj cat` does: the tree, then the one file's records.
        assert client.tree(cut).lookup(HOT) == hot
        got = client.read(cut, hot, 0, len(want) + 4096)
        served = shards.take()
        after = served_metric(h.shards)
        with tempfile.TemporaryFile() as tmp:
            assert client.replay_file(cut, hot, tmp.fileno())[1].size == len(want)
    assert len(got) == len(want)
    assert got == want, f"{HOT} at T_{moment}: other bytes than the model"

    file_served = [r for kind, _, r in served if kind == "file"]
    scan_served = [r for kind, _, r in served if kind == "scan"]
    own = h.naming(hot, cut)
    # FileRecords: exactly the LOG's records naming the file, nothing else.
    assert all(hot in names(r) for r in file_served)
    assert sorted(r.stamp for r in file_served) == sorted(r.stamp for r in own)
    assert sum(r.op == Op.WRITE for r in file_served) == HOT_MOMENTS[moment]
    # The tree: namespace and baseline pieces only, without data.
    assert all(r.op in TREE_OPS and not r.data for r in scan_served)
    assert len(scan_served) == h.namespace(cut)
    # So: its own records plus the namespace, and none of the other files' data.
    total = len(served)
    assert total == len(own) + h.namespace(cut)
    assert not [r for r in scan_served + file_served if r.op == Op.WRITE and r.fh != hot]
    window = [r for r in h.log if cut.baseline_id.to_bytes() <= r.stamp <= cut.at.to_bytes()]
    others = sum(1 for r in window if r.op == Op.WRITE and r.fh != hot)
    print(f"\nT_{moment}: served {total} records ({len(own)} naming {HOT}, "
          f"{len(scan_served)} namespace); the window holds {len(window)}, "
          f"{others} of them other files' WRITEs; {len(h.log)} in the LOG")
    if moment != "before":
        assert others > 0
    assert after - before == total, "the shards' counter disagrees with what the client received"


def test_a_cold_files_rebuild_reads_none_of_the_hot_records(history):
    h = history
    cold = h.fhs["b/f007"]
    with CountingShards(h.addresses) as shards, RestoreClient(shards) as client:
        cut = client.cut(h.moments["end"])
        shards.take()
        before = served_metric(h.shards)
        client.tree(cut)
        with tempfile.TemporaryFile() as f:
            size = client.write_file(cut, cold, f.fileno())
            f.seek(0)
            content = f.read()
        served = shards.take()
        after = served_metric(h.shards)
    assert content == (h.nas.export_dir / "b/f007").read_bytes() and size == len(content)
    own = h.naming(cold, cut)
    assert len(served) == len(own) + h.namespace(cut)
    assert not [r for _, _, r in served if r.op == Op.WRITE and r.fh == h.fhs[HOT]]
    assert len(served) < HOT_WRITES // 4
    assert after - before == len(served), "the shards' counter disagrees with what the client received"


def test_restoring_one_subtree_reads_no_record_of_the_other(history, tmp_path):
    h = history
    a_files = {fh for path, fh in h.fhs.items() if path.startswith("a/")}
    b_files = {fh for path, fh in h.fhs.items() if path.startswith("b/")}
    with CountingShards(h.addresses) as shards, RestoreClient(shards) as client:
        cut = client.cut(h.moments["end"])
        shards.take()
        before = served_metric(h.shards)
        client.tree(cut)
        scan_only = len(shards.served)
        requested_during_tree = list(shards.file_requests)
        summary = client.restore_to_dir(cut, tmp_path / "b", path="b")
        requested = set(shards.file_requests)
        served = shards.take()
        after = served_metric(h.shards)
    assert not requested_during_tree
    assert summary.files == OTHER_FILES
    assert requested == b_files, "restore --path b asked for the records of files outside b/"
    file_served = [r for kind, _, r in served if kind == "file"]
    assert not [r for r in file_served if names(r) & a_files]
    assert not [r for _, _, r in served if r.op == Op.WRITE and r.fh in a_files]
    want = sum(len(h.naming(fh, cut)) for fh in b_files)
    assert len(file_served) == want
    # The tree was cached from the first call: the restore itself scanned nothing more.
    assert len(served) - scan_only == want
    # Content, from the NAS (b/ has not changed since T_end).
    for i in range(OTHER_FILES):
        rel = f"f{i:03d}"
        assert (tmp_path / "b" / rel).read_bytes() == (h.nas.export_dir / "b" / rel).read_bytes(), rel
    assert after - before == len(served), "the shards' counter disagrees with what the client received"


def test_nfsj_cat_of_the_hot_file(history):
    h = history
    before = served_metric(h.shards)
    done = nfsj("cat", HOT, "--at", str(h.moments["end"]), *h.shard_args, text=False)
    after = served_metric(h.shards)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == h.expected["end"]
    # The CLI is another process: only the shards' counter can say what it read.
    with Shards(h.addresses) as shards, RestoreClient(shards) as client:
        cut = client.cut(h.moments["end"])
        root = client.tree(cut).root
    own, namespace = len(h.naming(h.fhs[HOT], cut)), h.namespace(cut)
    # Its own records, the records of the directories on its path (the root and
    # a/), and the root's baseline piece (a Scan of at most one record per
    # shard): never the whole namespace.
    on_the_way = len(h.naming(root, cut)) + len(h.naming(h.fhs["a"], cut))
    served = after - before
    assert own + on_the_way <= served <= own + on_the_way + len(h.addresses), (
        served, own, on_the_way, namespace)
    assert served < own + namespace


