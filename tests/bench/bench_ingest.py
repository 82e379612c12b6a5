"""How fast recovery shards ingest the LOG, end to end over gRPC (a script, not a test).

    python3 tests/bench/bench_ingest.py [--records N] [--rounds R] [--profile]

The records: N WRITE records with 4 KiB of data each (random bytes, so
compression does not flatter anyone), a new file handle every 100 records,
increasing stamps. They are written once into a real proxy LOG
(`logstore.log.Log`) and fsynced before anything is timed.

Configurations, measured in the same run on the same disk and interleaved
within each of `--rounds` rounds (tables show the median):

* plain       - a rocksdict loop: the same serialized records put under
                `r/<stamp16>` keys, 4 MiB per WriteBatch (the shipper's batch
                size), no fsync; the shard's RocksDB options, plus WAL file
                recycling (the shard skips the WAL for large writes instead).
* plain+sync  - the same with each WriteBatch fsynced (as the shard does):
                the reference the target is stated against.
* 1 shard     - one real `nfsj recoveryd` subprocess, fed by the real
                `nfsproxy.ship.shipper.Shipper` reading the LOG, with its
                production defaults.
* 2 shards    - two of them, one shipper each, sharing one reader of the LOG
                (`nfsproxy.ship.fanout`) as a proxy's shippers do; each sends
                its shard's half. `--alone`: each shipper reads the whole LOG.

End to end is timed from the shippers' start until every shipper's
`acked_seq` reaches the LOG's end: every record is then fsynced in a shard's
RocksDB. Each run gets fresh shard data directories. After each run the
shards' record counts are checked against N.

Rates are LOG records per second and MB/s (10^6 bytes of serialized records
per second); ratios are against `plain` and `plain+sync` of the same round.
Target (issue 13): a shard ingests at >= 0.7 x plain+sync.

`--profile` adds one more 1-shard run with py-spy sampling the shard process
(with native frames: RocksDB, gRPC core, libc; this pauses it per sample, so
that run is slower) and this process (the shipper side; Python frames only),
and prints where the time goes: per thread, the share of wall time it was
busy rather than waiting and its busiest leaf frames; and what the time
inside `ShardStore.ingest`, `Shipper._read_range` and `Shipper._send` went to.

There are no thresholds; every number names its machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import grpc  # noqa: E402
from rocksdict import Rdict, WriteBatch, WriteOptions  # noqa: E402

from e2e.shard_fixture import ShardProcess  # noqa: E402
from logstore.hlc import HLC  # noqa: E402
from logstore.log import Log  # noqa: E402
from logstore.record import Op, Record, record_parts  # noqa: E402
from nfsproxy.relay.journal import frame_fields  # noqa: E402
from logstore.stamp import Stamp  # noqa: E402
from nfsproxy.ship.fanout import shared_reader  # noqa: E402
from nfsproxy.ship.shipper import Shipper, ShipperOptions  # noqa: E402
from recoveryd.status import fetch_status  # noqa: E402
from recoveryd.store import store_options  # noqa: E402

from host import (dist_version, filesystem, git_head, host_line, prewarm_memory,  # noqa: E402  (tests/bench is the script's directory)
                  process_cpu_s)

MiB = 1 << 20
DATA_BYTES = 4096
RECORDS_PER_FH = 100
PLAIN_BATCH_BYTES = ShipperOptions().max_batch_bytes  # the shipper's batches are sized by bytes
NODE_ID = 0x0B0E
HANG_S = 600.0


# --------------------------------------------------------------------------
# The machine


def machine(workdir: Path) -> list[str]:
    return [
        host_line(),
        f"disk: {workdir} on {filesystem(workdir)}",
        f"python: {platform.python_implementation()} {platform.python_version()}; "
        f"rocksdict {dist_version('rocksdict')}; grpcio {grpc.__version__}; "
        f"protobuf {dist_version('protobuf')}",
        f"code: {git_head(REPO)}",
    ]


# --------------------------------------------------------------------------
# The records


def write_log(log_dir: Path, n: int) -> tuple[list[tuple[bytes, bytes]], Stamp]:
    """Write the N records into a fresh LOG; returns (key, serialized record) pairs
    for the plain loop, and a stamp above every record."""
    rng = random.Random(4096)
    pool = rng.randbytes(8 * MiB)
    base_ns = time.time_ns()
    rows = []
    with Log.open(log_dir) as log:
        for i in range(n):
            stamp = Stamp(base_ns + i * 1000, 0, NODE_ID)
            start = rng.randrange(0, len(pool) - DATA_BYTES)
            record = Record(stamp=stamp.to_bytes(), op=Op.WRITE, ok=True, status=0,
                            client="127.0.0.1:900", uid=1000, gid=1000, xid=i,
                            fh=(i // RECORDS_PER_FH).to_bytes(8, "big") * 4,
                            offset=(i % RECORDS_PER_FH) * DATA_BYTES, count=DATA_BYTES, stable=0,
                            data=pool[start:start + DATA_BYTES], reply_count=DATA_BYTES)
            # As the proxy journals it: data last, routing fields in the frame header.
            data, record.data = record.data, b""
            payload = b"".join(record_parts(record, data))
            seq = log.append(payload, **frame_fields(record))
            assert seq == i + 1
            rows.append((b"r/" + stamp.to_bytes(), payload))
        log.sync()
    return rows, Stamp(base_ns + n * 1000, 0, NODE_ID)


# --------------------------------------------------------------------------
# The configurations


def run_plain(rows: list[tuple[bytes, bytes]], db_dir: Path, sync: bool) -> float:
    """Batched puts of the records into a fresh rocksdict; returns seconds."""
    options = store_options(db_dir)  # the shard store's database options, one column family
    # ... plus WAL recycling, which a loop that writes only through the WAL
    # can have and the shard gave up for its unlogged writes: the faster reference.
    options.set_recycle_log_file_num(4)
    write_opts = WriteOptions()
    write_opts.sync = sync
    db = Rdict(str(db_dir), options)
    try:
        t0 = time.perf_counter()
        wb, nbytes = WriteBatch(raw_mode=True), 0
        for key, value in rows:
            if nbytes + len(value) > PLAIN_BATCH_BYTES and nbytes:
                db.write(wb, write_opts)
                wb, nbytes = WriteBatch(raw_mode=True), 0
            wb.put(key, value)
            nbytes += len(value)
        db.write(wb, write_opts)
        return time.perf_counter() - t0
    finally:
        db.close()


async def _ship(log: Log, addresses: list[str], top: Stamp, shared: bool) -> float:
    clock = HLC(NODE_ID)
    fanout = shared_reader(log, len(addresses)) if shared else None
    shippers = [Shipper(a, shard_id=k, n_shards=len(addresses), log=log, clock=clock,
                        stable_stamp=lambda: top, fanout=fanout) for k, a in enumerate(addresses)]
    end = log.last_seq
    t0 = time.perf_counter()
    for s in shippers:
        s.start()
    try:
        while any(s.acked_seq < end for s in shippers):
            if time.perf_counter() - t0 > HANG_S:
                raise RuntimeError(f"hang: shippers at {[s.acked_seq for s in shippers]} of {end} "
                                   f"after {HANG_S:g}s: {[s.state().last_error for s in shippers]}")
            await asyncio.sleep(0.002)
        return time.perf_counter() - t0
    finally:
        for s in shippers:
            await s.stop()
        if fanout is not None:
            fanout.close()


def run_shards(log: Log, n_shards: int, workdir: Path, top: Stamp, n_records: int,
               profile_dir: Path | None = None, shared: bool = True) -> tuple[float, float, float]:
    """Ship the LOG to `n_shards` fresh `nfsj recoveryd`; returns (seconds, shard CPU-seconds,
    this process's CPU-seconds: the shippers, the LOG reads, gRPC's client side)."""
    shards = [ShardProcess(workdir / f"shard{k}", k) for k in range(n_shards)]
    spies: list[subprocess.Popen] = []
    try:
        for shard in shards:
            shard.start()
        cpu0 = [process_cpu_s(s.proc.pid) for s in shards]
        own0 = process_cpu_s(os.getpid())
        if profile_dir is not None:
            spies = [start_py_spy(shards[0].proc.pid, profile_dir / "shard.txt", native=True),
                     start_py_spy(os.getpid(), profile_dir / "shipper.txt", native=False)]
            time.sleep(1.0)  # py-spy attaches
        elapsed = asyncio.run(_ship(log, [s.address for s in shards], top, shared))
        cpu = sum(process_cpu_s(s.proc.pid) - c for s, c in zip(shards, cpu0))
        own = process_cpu_s(os.getpid()) - own0
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            spy.wait(timeout=60)
        held = sum(r.status.records for r in fetch_status([s.address for s in shards], 10.0))
        if held != n_records:
            raise RuntimeError(f"the shards hold {held} records, not {n_records}")
        return elapsed, cpu, own
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.kill()
        for shard in shards:
            shard.stop()
            shutil.rmtree(shard.data_dir, ignore_errors=True)


# --------------------------------------------------------------------------
# Profiling (py-spy)


def start_py_spy(pid: int, out: Path, native: bool) -> subprocess.Popen:
    """py-spy sampling every thread of `pid`, waiting ones too (--idle). `native` adds
    native frames (RocksDB, gRPC core, libc) but pauses `pid` for every sample."""
    exe = shutil.which("py-spy")
    if exe is None:
        raise SystemExit("--profile needs py-spy (python3 -m pip install py-spy)")
    mode = ["--native", "--rate", "100"] if native else ["--nonblocking", "--rate", "250"]
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--threads",
                             "--idle", *mode, "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Leaf frames of a thread that waits rather than works.
_WAITING = re.compile(r"^(epoll_wait|epoll_pwait|poll|ppoll|select|pselect6?|pthread_cond_\w*wait|"
                      r"__futex_abstimed_wait_common\w*|futex_wait|syscall|sem_\w*wait|"
                      r"clock_nanosleep|nanosleep|__GI___\w*wait\w*|accept4?|read|recvmsg|"
                      r"do_futex_wait\w*)$")
_PY_FRAME = re.compile(r"\((?:[^()]*\.py|<[^<>]+>):\d+\)$")  # "func (dir/x.py:12)"


def summarize_profile(path: Path, title: str, focus: tuple[str, ...], top: int = 8) -> list[str]:
    """Where one process's threads spent the sampled wall time (py-spy raw output:
    one `thread;frame;...;leaf count` line per distinct stack, outermost first)."""
    if not path.exists() or not path.stat().st_size:
        return [f"{title}: py-spy wrote no profile ({path})"]
    threads: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    inside: dict[str, collections.Counter[str]] = {f: collections.Counter() for f in focus}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\):?\s*", "", frames[0]) or "?"
        thread = re.sub(r"_\d+$", "", thread)  # executor threads: one line per pool
        totals[thread] += n
        leaf = _name(frames[-1])
        if _waiting(frames):
            continue
        threads[thread][leaf] += n
        for f in focus:
            marks = [i for i, fr in enumerate(frames) if fr.startswith(f + " (")]
            if marks:
                below = frames[marks[-1] + 1:]
                step = next((fr for fr in below if not _PY_FRAME.search(fr)), None) if below else None
                inside[f][_name(below[0]) if below and _PY_FRAME.search(below[0])
                          else (_name(step) if step else f"{f} itself (Python)")] += n
    out = [f"{title}: threads, share of wall time busy (not waiting), and the busiest leaves:"]
    for thread, total in totals.most_common():
        busy = sum(threads[thread].values())
        if total < 0.05 * max(totals.values()) or not busy:
            continue
        leaves = ", ".join(f"{_short(k)} {100 * v / busy:.0f}%"
                           for k, v in threads[thread].most_common(4))
        out.append(f"  {thread or 'main'}: busy {100 * busy / total:.0f}% of {total} samples; {leaves}")
    for f, counter in inside.items():
        n = sum(counter.values())
        if not n:
            continue
        out.append(f"  inside {f} ({n} busy samples), by the first call below it:")
        for k, v in counter.most_common(top):
            out.append(f"    {100 * v / n:5.1f}%  {_short(k)}")
    return out


def _name(frame: str) -> str:
    name, _, where = frame.strip().partition(" (")
    if name.startswith("0x"):  # no symbol: name the library ("libc.so.6:?")
        return where.rstrip(")").rsplit("/", 1)[-1] + ":?"
    return name


def _waiting(frames: list[str]) -> bool:
    """Whether a sample shows its thread waiting (for work, I/O readiness, a lock)."""
    if _WAITING.match(_name(frames[-1])):
        return True
    py = [f for f in frames if _PY_FRAME.search(f)]
    return bool(py) and _name(py[-1]) in _WAITING_PY


# Python functions that, as the innermost Python frame, mean "blocked in C waiting".
_WAITING_PY = {"_worker", "EpollSelector.select", "select", "Condition.wait", "Event.wait",
               "_poll_wrapper", "Thread.run", "serve_forever",
               "run_shards", "Popen._wait"}  # this script waiting for py-spy


def _short(name: str) -> str:
    name = re.sub(r"<[^<>]*(<[^<>]*>[^<>]*)*>", "<>", name)  # C++ template arguments
    return name if len(name) <= 70 else name[:67] + "..."


# --------------------------------------------------------------------------
# main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=40_000, help="records in the LOG (40000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of all configurations (3)")
    ap.add_argument("--dir", type=Path, default=None,
                    help="work directory (default: a new one under $TMPDIR); it is deleted after")
    ap.add_argument("--alone", action="store_true",
                    help="each shipper reads the whole LOG itself (no shared reader)")
    ap.add_argument("--profile", action="store_true",
                    help="one more 1-shard run under py-spy: where the time goes")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="nfsj-bench-ingest-", dir=args.dir))
    for line in machine(workdir):
        print(line)
    try:
        prewarm_memory(2 << 30)
        rows, top = write_log(workdir / "log", args.records)
        nbytes = sum(len(v) for _, v in rows)
        print(f"LOG: {args.records} WRITE records, {DATA_BYTES} B of data each, "
              f"{nbytes / args.records:.0f} B serialized on average, {nbytes / 1e6:.1f} MB; "
              f"a new fh every {RECORDS_PER_FH} records; shipper defaults: "
              f"{ShipperOptions().max_batch_bytes >> 20} MiB/batch, "
              f"{ShipperOptions().max_inflight_bytes >> 20} MiB in flight")
        print()
        log = Log.open(workdir / "log")
        configs = ["plain", "plain+sync", "1 shard", "2 shards"]
        times: dict[str, list[float]] = {c: [] for c in configs}
        ratios: dict[str, list[float]] = {c: [] for c in configs}
        sync_ratios: dict[str, list[float]] = {c: [] for c in configs}
        cpus: dict[str, list[float]] = {c: [] for c in configs}
        own_cpus: dict[str, list[float]] = {c: [] for c in configs}
        try:
            for rnd in range(args.rounds):
                plain = run_plain(rows, workdir / "plain", sync=False)
                shutil.rmtree(workdir / "plain")
                got = {"plain": plain}
                got["plain+sync"] = run_plain(rows, workdir / "plain", sync=True)
                shutil.rmtree(workdir / "plain")
                for n in (1, 2):
                    name = f"{n} shard{'s' if n > 1 else ''}"
                    got[name], cpu, own = run_shards(log, n, workdir, top, args.records, shared=not args.alone)
                    cpus[name].append(cpu)
                    own_cpus[name].append(own)
                for c in configs:
                    times[c].append(got[c])
                    ratios[c].append(plain / got[c])
                    sync_ratios[c].append(got["plain+sync"] / got[c])
                print(f"round {rnd + 1}: " + ", ".join(
                    f"{c} {args.records / got[c]:,.0f} rec/s" for c in configs), flush=True)
            print()
            print(f"median of {args.rounds} round(s), {args.records} records, "
                  f"{nbytes / 1e6:.1f} MB each:")
            print(f"  {'configuration':<14}{'records/s':>12}{'MB/s':>9}{'x plain':>9}{'x sync':>8}"
                  f"{'seconds':>9}{'shard CPU-s':>13}{'shipper CPU-s':>15}")
            for c in configs:
                t = statistics.median(times[c])
                cpu = f"{statistics.median(cpus[c]):.2f}" if cpus[c] else "-"
                own = f"{statistics.median(own_cpus[c]):.2f}" if own_cpus[c] else "-"
                print(f"  {c:<14}{args.records / t:>12,.0f}{nbytes / t / 1e6:>9.1f}"
                      f"{statistics.median(ratios[c]):>9.2f}{statistics.median(sync_ratios[c]):>8.2f}"
                      f"{t:>9.2f}{cpu:>13}{own:>15}")
            for c in ("1 shard", "2 shards"):
                got_ratio = statistics.median(sync_ratios[c])
                print(f"target: {c} >= 0.70 x plain+sync: "
                      f"{'met' if got_ratio >= 0.7 else 'NOT met'} ({got_ratio:.2f})")

            if args.profile:
                profile_dir = workdir / "profile"
                profile_dir.mkdir()
                t, _, _ = run_shards(log, 1, workdir, top, args.records, profile_dir)
                print()
                print(f"profile: one more 1-shard run under py-spy ({args.records / t:,.0f} rec/s "
                      "while sampled)")
                for name, title, focus in (
                        ("shard.txt", "shard process (nfsj recoveryd)",
                         ("ShardStore.ingest", "_parse_batch")),
                        ("shipper.txt", "this process (the shipper, LOG reads, gRPC client)",
                         ("Shipper._read_range", "Shipper._send"))):
                    for line in summarize_profile(profile_dir / name, title, focus):
                        print(line)
        finally:
            log.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
