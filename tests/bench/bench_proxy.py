"""What the journaling proxy costs in its deployment's shape: NFSv3 direct to
ganesha vs through `nfsj proxy` shipping to 2 live shards, beside a bare byte
relay (a script, not a test).

    python3 tests/bench/bench_proxy.py [--quick] [--rounds N] [--data-plane native|python|both]
                                       [--cases KEY,...] [--fresh-log] [--log-spares N] [--keep]

One fresh nfs-ganesha (FSAL VFS, loopback) serves every run, and two
`nfsj recoveryd` shards run for the whole benchmark: every proxied run ships
its LOG to both, as in every real deployment. Configurations, measured side
by side in one run:

* direct    - the client talks to ganesha;
* bare      - through `bare_relay.c` (compiled here with gcc into the work
  directory): one thread, epoll, non-blocking sockets, one NAS connection per
  client connection, no parsing and no journal. It is the floor any relay
  has on this host (two more loopback hops and a process in between). It
  forwards ganesha's MOUNT port on a port of its own as well, so the client
  mounts through it too: every byte of the run crosses the relay, as with
  the proxy, which serves MOUNT on its NFS port;
* n-async, n-sync, n-strict - `nfsj proxy --data-plane native --durability
  D --relay-threads 1 --shard S0 --shard S1`; n-sync-2t the same with
  `--relay-threads 2`;
* with `--data-plane python` or `both`: p-async, p-sync, p-strict, the same
  with `--data-plane python` (whose sync holds every reply, like strict).

Cases (each writes a new file; the metadata mix leaves none):

* 4 KiB UNSTABLE writes, 16 in flight (ops/s);
* 4 KiB FILE_SYNC writes, 16 in flight (ops/s);
* 4 KiB UNSTABLE writes, one at a time: p50 and p99 of each call;
* 4 KiB FILE_SYNC writes, one at a time: the same (in `sync` a reply waits
  for its write-ahead intent's fsync, which overlaps the NAS's work; in
  `strict` for its record's, after it);
* 1 MiB UNSTABLE writes, 16 in flight (MiB/s);
* 1 MiB FILE_SYNC writes, 16 in flight (MiB/s): too large to be written
  ahead (an intent holds its WRITE's data), so `sync` answers them as `strict`;
* metadata mix: CREATE, SETATTR (chmod) and REMOVE of one file after the
  other, 16 files under way (calls/s);
* 4 KiB UNSTABLE writes on 2 connections, 16 in flight on each (ops/s): a
  native relay thread serves a connection, so this is where 2 relay threads
  could beat 1 (on this 2-core host the client, ganesha and the shards share
  those cores).

The load comes from `libnfs_load.py` (libnfs's async C API through ctypes);
its own CPU is reported too, to show that it stays small.

Configurations are interleaved within each round (for each case: every
configuration in turn, in reverse order in even rounds), over `--rounds`
rounds; tables show the median. The ratios are the point: on a shared
machine absolute figures drift with whatever else runs, while the
configurations of one round see nearly the same machine. The `other CPU`
column says how busy the machine was with processes other than client,
relay, shards and ganesha.

Every proxied run gets a fresh proxy process. Each configuration keeps its
LOG from run to run, as a restarted proxy does, and trims it as soon as the
shards have acked it (`--log-retain 0`): so its proxy writes new segments
over the ones it trimmed (spares, `--log-spares`), as a deployment past its
retention window does, where every segment written replaces one trimmed.
Before the first round each proxy configuration writes 320 MiB through
itself, untimed, to reach that state. With `--fresh-log` every run gets a
new LOG instead (the first minutes of a deployment). A run's window is the load plus the drain after it: the time until
the shards have acked every record (`nfsj_log_backlog_records` = 0; shown as
`drain`), so the shipping of every record is inside its CPU figures. CPU is
read per thread (/proc/PID/task/*/schedstat, nanoseconds) and split by
thread name:

* relay  - the native relay's threads (`nfsj-relay`), or the bare relay;
* fsync  - the group committer's fsync thread (`nfsj-fsync`);
* main   - the proxy's Python event loop: shipping and control on the native
  plane; on the Python plane the relay and journal too (one loop: no split);
* ship   - the proxy's other threads: gRPC's and the shipper's LOG readers.

`data plane` = relay + fsync on the native plane (main + fsync on the
Python plane), per write and per GiB; `shipper` = main + ship on the
native plane. fsyncs are the proxy process's fdatasync + fsync calls,
counted in the kernel by `perf stat` around it (`-` without perf).

The targets (issue 12) are printed beside the ratios; the last lines turn
the measured data-plane CPU per write into what one 16-core proxy host
would carry (cost per core times cores). Before the first run a few GiB of
memory are touched and freed (see `prewarm_memory`). After each run the
files are removed through NFS (direct).
Before each run the machine's dirty pages are written back (`sync`), so no
run pays for the one before it. There are no thresholds; every number names
its machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(HERE))

from e2e.shard_fixture import ShardProcess  # noqa: E402
from libnfs_load import (Connection, NfsTarget, library_path, metadata_mix,  # noqa: E402
                         write_latency_qd1, write_throughput)
from nfsproxy.demo.ganesha import start_ganesha, stop_rpcbind_if_started  # noqa: E402

from host import (dpkg_version, filesystem, git_head, host_line, prewarm_memory,  # noqa: E402  (tests/bench is the script's directory)
                  process_cpu_s)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
N_SHARDS = 2
_SERVING = re.compile(r"serving NFSv3\+MOUNT on [^ ]+:(\d+),.* metrics (http://\S+)")
_BARE = re.compile(r"bare relay: (\d+) -> (\d+)")
_BACKLOG = re.compile(r"^nfsj_log_backlog_records (\S+)$", re.M)
_APPENDS = re.compile(r"^nfsj_log_appends(?:_total)? (\S+)$", re.M)
PRIME_BYTES = 320 * MiB
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
_FSYNC_EVENTS = ("syscalls:sys_enter_fdatasync", "syscalls:sys_enter_fsync")
DRAIN_TIMEOUT_S = 300.0


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    kind: str  # direct | bare | proxy
    plane: str = ""
    durability: str = ""
    relay_threads: int = 1


@dataclasses.dataclass(frozen=True)
class Case:
    key: str
    title: str
    block_bytes: int
    queue_depth: int
    total_bytes: int = 0  # write cases
    n: int = 0  # latency case: timed calls
    file_sync: bool = False
    connections: int = 1
    files: int = 0  # metadata mix

    @property
    def latency(self) -> bool:
        return self.n > 0

    @property
    def metadata(self) -> bool:
        return self.files > 0

    @property
    def unit(self) -> str:
        return "MiB/s" if self.block_bytes >= MiB else "op/s"


@dataclasses.dataclass
class Run:
    """One (round, case, configuration) measurement."""

    config: str
    ops: int
    nbytes: int
    elapsed_s: float  # the load's own clock
    window_s: float  # load + drain: what the CPU figures cover
    client_cpu_s: float
    nas_cpu_s: float
    shards_cpu_s: float
    other_cpu_s: float
    threads: dict[str, float] = dataclasses.field(default_factory=dict)  # category -> CPU s
    drain_s: float | None = None
    latencies_s: list[float] | None = None
    log_records: int | None = None
    fsyncs: int | None = None

    @property
    def rate(self) -> float:
        return self.nbytes / MiB / self.elapsed_s if self.nbytes >= self.ops * MiB else self.ops / self.elapsed_s

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies_s or ())
        return lat[min(len(lat) - 1, round(q * (len(lat) - 1)))]

    @property
    def relay_cpu_s(self) -> float | None:
        return self.threads.get("relay") if self.threads else None

    @property
    def data_plane_cpu_s(self) -> float | None:
        """The reply path: relay + fsync threads (native), event loop + fsync (Python)."""
        if not self.threads:
            return None
        t = self.threads
        if "relay" in t and t["relay"] > 0 and "main" not in t:  # the bare relay
            return t["relay"]
        if t.get("relay", 0.0) > 0:
            return t["relay"] + t.get("fsync", 0.0)
        return t.get("main", 0.0) + t.get("fsync", 0.0)

    @property
    def shipper_cpu_s(self) -> float | None:
        """Shipping and control (native plane); None where it shares the relay's loop."""
        t = self.threads
        if not t or "main" not in t or t.get("relay", 0.0) <= 0:
            return None
        return t["main"] + t.get("ship", 0.0)

    @property
    def proxy_cpu_s(self) -> float | None:
        return sum(self.threads.values()) if self.threads else None


# --------------------------------------------------------------------------
# The machine


def machine() -> list[str]:
    return [
        host_line(),
        f"python: {platform.python_implementation()} {platform.python_version()} ({sys.executable})",
    ]


# --------------------------------------------------------------------------
# CPU accounting


def thread_cpu_s(pid: int) -> dict[int, tuple[str, float]]:
    """Each live thread of `pid`: (name, CPU seconds on the CPU), from schedstat (ns)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            on_cpu_ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
        out[int(task.name)] = (name, on_cpu_ns / 1e9)
    return out


def thread_category(pid: int, tid: int, name: str) -> str:
    if name.startswith("nfsj-relay"):
        return "relay"
    if name.startswith("nfsj-fsync"):
        return "fsync"
    return "main" if tid == pid else "ship"


def split_cpu(pid: int, before: dict[int, tuple[str, float]],
              after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU spent between two `thread_cpu_s` samples, by category (threads that
    ended in between are lost: the proxy's threads live as long as it does)."""
    out = {"relay": 0.0, "fsync": 0.0, "main": 0.0, "ship": 0.0}
    for tid, (name, cpu) in after.items():
        out[thread_category(pid, tid, name)] += cpu - before.get(tid, (name, 0.0))[1]
    return out


def machine_busy_s() -> float:
    """CPU-seconds the whole machine spent not idle (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq + steal) * _TICK_S


# --------------------------------------------------------------------------
# fsync counting


def perf_works() -> bool:
    """True when `perf stat` can count the fsync syscall tracepoints here."""
    perf = shutil.which("perf")
    if perf is None:
        return False
    try:
        done = subprocess.run([perf, "stat", "-x,", "-e", ",".join(_FSYNC_EVENTS), "--", "true"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and _parse_perf(done.stderr) is not None


def _parse_perf(text: str) -> int | None:
    total, seen = 0, 0
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) >= 3 and parts[2] in _FSYNC_EVENTS:
            if not parts[0].strip().isdigit():
                return None
            total += int(parts[0])
            seen += 1
    return total if seen == len(_FSYNC_EVENTS) else None


# --------------------------------------------------------------------------
# The relays


class Relay:
    """A relay process in front of the NAS: `target` is where clients go."""

    pid: int
    target: NfsTarget

    def drain(self) -> float | None:
        """Wait until everything journaled is shipped; the seconds it took."""
        return None

    def stop(self) -> tuple[int | None, int | None]:
        """Stop; (LOG records, fsyncs)."""
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError


def build_bare_relay(workdir: Path) -> Path:
    exe = workdir / "bare_relay"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe),
                    str(HERE / "bare_relay.c")], check=True)
    return exe


class BareRelay(Relay):
    def __init__(self, exe: Path, nas, workdir: Path):
        self.stderr_path = workdir / "bare.stderr"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([str(exe), "127.0.0.1", str(nas.nfs_port), str(nas.mount_port)],
                                         stdout=subprocess.PIPE, stderr=err, text=True)
        ports = {}
        for line in self.proc.stdout:
            if m := _BARE.match(line):
                ports[int(m.group(2))] = int(m.group(1))
            if line.startswith("bare relay: ready"):
                break
        if set(ports) != {nas.nfs_port, nas.mount_port}:
            self.kill()
            raise RuntimeError(f"the bare relay did not start: {self.stderr_path.read_text()}")
        self.pid = self.proc.pid
        self.target = NfsTarget("127.0.0.1", ports[nas.nfs_port], ports[nas.mount_port], "/export")

    def stop(self) -> tuple[int | None, int | None]:
        self.proc.terminate()
        self.proc.communicate(timeout=30)
        return None, None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


class Proxy(Relay):
    """`python -m nfsproxy proxy` with a fresh LOG, shipping to the shards,
    optionally under `perf stat`."""

    def __init__(self, nas, workdir: Path, config: Config, shards: list[str], use_perf: bool,
                 fresh_log: bool, log_args: list[str]):
        self.log_dir = workdir / f"log-{config.name}"
        self.fresh_log = fresh_log
        if fresh_log:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        self.stderr_path = workdir / f"proxy-{config.name}.stderr"
        self.perf_out = workdir / f"perf-{config.name}.out"
        argv = [sys.executable, "-m", "nfsproxy", "proxy", "--listen", "127.0.0.1:0",
                "--backend", f"127.0.0.1:{nas.nfs_port}:{nas.mount_port}:/export",
                "--log", str(self.log_dir), "--durability", config.durability,
                "--data-plane", config.plane, "--relay-threads", str(config.relay_threads),
                "--control", "127.0.0.1:0", "--metrics", "127.0.0.1:0", *log_args]
        for shard in shards:
            argv += ["--shard", shard]
        self.use_perf = use_perf
        if use_perf:
            argv = ["perf", "stat", "-x,", "-e", ",".join(_FSYNC_EVENTS), "-o", str(self.perf_out),
                    "--", *argv]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True,
                                         cwd=REPO, env=env)
        line = self.proc.stdout.readline()
        m = _SERVING.search(line)
        if not m:
            if use_perf and self.proc.poll() is None:  # perf's child first, by its pid
                for child in self._children():
                    os.kill(child, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"proxy did not start: {line!r}\n{self.stderr_path.read_text()[-3000:]}")
        self.target = NfsTarget("127.0.0.1", int(m.group(1)), int(m.group(1)), "/export")
        self.metrics_url = m.group(2)
        self.pid = self._proxy_pid()

    def _proxy_pid(self) -> int:
        if not self.use_perf:
            return self.proc.pid
        children = self._children()
        if len(children) != 1:
            raise RuntimeError(f"perf stat has children {children}, expected the proxy alone")
        return int(children[0])

    def _children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except OSError:
            return []

    def metric(self, pattern: re.Pattern[str]) -> float:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            m = pattern.search(r.read().decode())
        if not m:
            raise RuntimeError(f"the proxy's metrics lack {pattern.pattern}")
        return float(m.group(1))

    def backlog(self) -> float:
        return self.metric(_BACKLOG)

    def drain(self) -> float:
        t0 = time.perf_counter()
        deadline = t0 + DRAIN_TIMEOUT_S
        while self.backlog() > 0:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the shards did not catch up within {DRAIN_TIMEOUT_S:.0f} s")
            time.sleep(0.02)
        return time.perf_counter() - t0

    def stop(self) -> tuple[int | None, int | None]:
        """SIGTERM the proxy; return (LOG records, fsyncs); delete a fresh LOG."""
        records = int(self.metric(_APPENDS))
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("the proxy did not stop within 30 s of SIGTERM")
        self.proc.stdout.close()
        if rc != 0:
            raise RuntimeError(f"the proxy exited with status {rc}:\n"
                               f"{self.stderr_path.read_text()[-3000:]}")
        fsyncs = _parse_perf(self.perf_out.read_text()) if self.use_perf else None
        if self.fresh_log:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        return records, fsyncs

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------
# Running


@dataclasses.dataclass
class Bench:
    nas: object
    shards: list[ShardProcess]
    workdir: Path
    bare_exe: Path
    use_perf: bool
    fresh_log: bool  # a new LOG for every run
    log_args: list[str]  # the proxies' LOG options

    @property
    def direct(self) -> NfsTarget:
        return NfsTarget("127.0.0.1", self.nas.nfs_port, self.nas.mount_port, "/export")

    def relay(self, config: Config) -> Relay | None:
        if config.kind == "direct":
            return None
        if config.kind == "bare":
            return BareRelay(self.bare_exe, self.nas, self.workdir)
        return Proxy(self.nas, self.workdir, config, [s.address for s in self.shards], self.use_perf,
                     self.fresh_log, self.log_args)

    def prime(self, config: Config) -> float:
        """Write PRIME_BYTES through the proxy of `config`, untimed, so its
        LOG holds spares; returns the seconds it took."""
        relay = self.relay(config)
        t0 = time.perf_counter()
        try:
            write_throughput(relay.target, f"/prime-{config.name}", MiB, PRIME_BYTES, 16)
            relay.drain()
            relay.stop()
            relay = None
        finally:
            if relay:
                relay.kill()
        with Connection(self.direct) as conn:
            conn.unlink(f"/prime-{config.name}")
        return time.perf_counter() - t0

    def shards_cpu_s(self) -> float:
        return sum(process_cpu_s(s.proc.pid) for s in self.shards)


def load(case: Case, target: NfsTarget, path: str):
    """(ops, bytes, elapsed s, client CPU s, latencies or None)."""
    if case.latency:
        c0, t0 = time.process_time(), time.perf_counter()
        lat = write_latency_qd1(target, path, case.block_bytes, case.n, file_sync=case.file_sync)
        return case.n, case.n * case.block_bytes, time.perf_counter() - t0, time.process_time() - c0, lat
    if case.metadata:
        res = metadata_mix(target, path, case.files, case.queue_depth)
        return res.ops, 0, res.elapsed_s, res.client_cpu_s, None
    res = write_throughput(target, path, case.block_bytes, case.total_bytes, case.queue_depth,
                           file_sync=case.file_sync, connections=case.connections)
    return res.ops, res.ops * case.block_bytes, res.elapsed_s, res.client_cpu_s, None


def cleanup(bench: Bench, case: Case, path: str) -> None:
    if case.metadata:
        return  # the mix removes what it creates
    names = [path] if case.connections == 1 else [f"{path}-{k}" for k in range(case.connections)]
    with Connection(bench.direct) as conn:  # not through a proxy: no record for the cleanup
        for name in names:
            conn.unlink(name)


def run_one(bench: Bench, case: Case, config: Config, rnd: int) -> Run:
    # The previous run's dirty pages (its file on the NAS, its LOG, the shards'
    # files) are written back now, not inside this run's window: otherwise
    # whichever configuration comes next pays for them (measured: the relay's
    # CPU per 1 MiB write 30-50% higher right after the direct run).
    os.sync()
    relay = bench.relay(config)
    path = f"/bench-r{rnd}-{case.key}-{config.name}"
    try:
        target = relay.target if relay else bench.direct
        pid = relay.pid if relay else None
        th0 = thread_cpu_s(pid) if relay else {}
        p0 = process_cpu_s(pid) if relay else 0.0
        n0, s0, m0, w0 = (process_cpu_s(bench.nas.pid), bench.shards_cpu_s(), machine_busy_s(),
                          time.perf_counter())
        ops, nbytes, elapsed, client_cpu, latencies = load(case, target, path)
        drain = relay.drain() if relay else None
        w1, m1, s1, n1 = time.perf_counter(), machine_busy_s(), bench.shards_cpu_s(), process_cpu_s(bench.nas.pid)
        p1 = process_cpu_s(pid) if relay else 0.0
        threads = {}
        if relay:
            th1 = thread_cpu_s(pid)
            threads = split_cpu(pid, th0, th1)
            if isinstance(relay, BareRelay):  # one thread: all of it is the relay
                threads = {"relay": sum(threads.values())}
        # Machine-wide busy time in the window less what this process (client:
        # process_time covers the load's own thread), ganesha, the shards and the relay used.
        other = (m1 - m0) - (n1 - n0) - (s1 - s0) - (p1 - p0) - client_cpu
        run = Run(config.name, ops, nbytes, elapsed, w1 - w0, client_cpu, n1 - n0, s1 - s0,
                  max(0.0, other), threads=threads, drain_s=drain, latencies_s=latencies)
        if relay:
            run.log_records, run.fsyncs = relay.stop()
            relay = None
    finally:
        if relay:
            relay.kill()
    cleanup(bench, case, path)
    os.sync()  # start the next run with no dirty pages of this one in flight
    return run


def describe(case: Case, run: Run) -> str:
    if case.latency:
        head = f"p50 {run.pct(0.5) * 1e6:7.0f} us  p99 {run.pct(0.99) * 1e6:7.0f} us"
    else:
        head = f"{run.rate:9,.0f} {case.unit:<5}"
    extra = ""
    if run.threads:
        cats = " ".join(f"{k} {v:.2f}" for k, v in run.threads.items() if v)
        extra = f"  relay process CPU s: {cats}"
        if run.drain_s is not None:
            extra += (f"; drain {run.drain_s:.2f} s, LOG {run.log_records} records, "
                      f"fsyncs {_fmt_int(run.fsyncs)}")
    return (f"{head}  ganesha CPU {run.nas_cpu_s:5.2f} s  shards CPU {run.shards_cpu_s:5.2f} s"
            f"  client CPU {run.client_cpu_s:5.2f} s"
            f"  other CPU {run.other_cpu_s / run.window_s:4.2f} cores{extra}")


def _fmt_int(v: int | float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(v: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:{width}{spec}}"


# --------------------------------------------------------------------------
# Targets (issue 12): (case key, metric, durabilities, what)


def targets_for(case: Case, config: Config) -> list[tuple[str, str, float]]:
    """(metric, against, bound): metric/against >= bound, or <= for latency."""
    d = config.durability
    if config.kind != "proxy":
        return []
    if case.key == "4k-qd16" and d in ("async", "sync"):
        return [("rate", "direct", 0.90 if d == "async" else 0.85)]
    if case.key == "4k-fsync-qd16" and d == "sync":
        return [("rate", "direct", 0.85)]
    if case.key == "4k-qd1" and d in ("async", "sync"):
        return [("p50", "bare", 1.10 if d == "async" else 1.25)]
    if case.key == "1m-qd16" and d in ("async", "sync"):
        return [("rate", "direct-or-bare", 0.80)]
    if case.key == "meta-qd16" and d == "sync":
        return [("rate", "direct", 0.80)]
    return []


def summarize(cases: list[Case], configs: list[Config], runs: dict, rounds: int) -> list[str]:
    out = ["", f"Median of {rounds} interleaved round(s). ×direct = config / direct; ×bare = config / "
           "bare relay (throughput: below 1 is slower; latency: above 1 is slower). target: the "
           "issue's bound and whether this run met it.", ""]
    hdr = (f"{'case':<26} {'config':<10} {'median':>12} {'unit':<5} {'×direct':>7} {'×bare':>6}  "
           f"{'target':<22} {'rounds':<24}")
    out += [hdr, "-" * len(hdr)]
    for case in cases:
        metrics = ([("p50", "us", lambda r: r.pct(0.5) * 1e6), ("p99", "us", lambda r: r.pct(0.99) * 1e6)]
                   if case.latency else [("rate", case.unit, lambda r: r.rate)])
        for metric, unit, fn in metrics:
            title = case.title + (f" {metric}" if case.latency else "")
            direct = _median(fn(r) for r in runs[case.key, "direct"])
            bare = _median(fn(r) for r in runs[case.key, "bare"])
            for i, config in enumerate(configs):
                vals = [fn(r) for r in runs[case.key, config.name]]
                med = _median(vals)
                x_direct = "" if config.kind == "direct" else f"{med / direct:7.2f}"
                x_bare = "" if config.kind != "proxy" else f"{med / bare:6.2f}"
                verdict = ""
                for t_metric, against, bound in targets_for(case, config):
                    if t_metric != metric:
                        continue
                    if against == "bare":
                        ok = med / bare <= bound
                        verdict = f"≤{bound:.2f}×bare {'met' if ok else 'MISSED'}"
                    elif against == "direct-or-bare":
                        ok = med / direct >= bound or med / bare >= 0.95
                        verdict = f"≥{bound:.2f}×d|≥.95×bare {'met' if ok else 'MISSED'}"
                    else:
                        ok = med / direct >= bound
                        verdict = f"≥{bound:.2f}×direct {'met' if ok else 'MISSED'}"
                rnds = " ".join(f"{v:,.0f}" for v in vals)
                out.append(f"{title if i == 0 else '':<26} {config.name:<10} {med:>12,.0f} {unit:<5} "
                           f"{x_direct:>7} {x_bare:>6}  {verdict:<22} {rnds:<24}")
    out += ["", "CPU per unit (medians; the window is the load plus the drain until the shards "
            "acked everything). us/op: CPU microseconds per call; s/GiB: CPU seconds per GiB written.",
            "data plane = relay + fsync threads (native; the bare relay's process; the Python plane: "
            "its event loop + fsync, which also ships). shipper = the native proxy's event loop + other "
            "threads (gRPC, LOG reads).", ""]
    hdr = (f"{'case':<26} {'config':<10} {'data us/op':>10} {'s/GiB':>6} {'relay':>6} {'fsync':>6} "
           f"{'shipper':>7} {'proxy':>6} {'ganesha':>7} {'shards':>6} {'client':>6} {'LOG rec':>8} "
           f"{'fsyncs':>7} {'drain s':>7} {'other':>6}")
    out += [hdr, "(us/op unless s/GiB)".rjust(len(hdr)), "-" * len(hdr)]
    for case in cases:
        for i, config in enumerate(configs):
            rs = runs[case.key, config.name]
            ops = rs[0].ops
            gib = rs[0].nbytes / GiB

            def per_op(fn):
                v = _median(fn(r) for r in rs)
                return None if v is None else v / ops * 1e6

            data = _median(r.data_plane_cpu_s for r in rs)
            out.append(
                f"{case.title if i == 0 else '':<26} {config.name:<10} "
                f"{_fmt(per_op(lambda r: r.data_plane_cpu_s), '.1f', 10)} "
                f"{_fmt(None if data is None or not gib else data / gib, '.2f', 6)} "
                f"{_fmt(per_op(lambda r: r.threads.get('relay') if r.threads else None), '.1f', 6)} "
                f"{_fmt(per_op(lambda r: r.threads.get('fsync') if r.threads else None), '.1f', 6)} "
                f"{_fmt(per_op(lambda r: r.shipper_cpu_s), '.1f', 7)} "
                f"{_fmt(per_op(lambda r: r.proxy_cpu_s), '.1f', 6)} "
                f"{_fmt(per_op(lambda r: r.nas_cpu_s), '.1f', 7)} "
                f"{_fmt(per_op(lambda r: r.shards_cpu_s), '.1f', 6)} "
                f"{_fmt(per_op(lambda r: r.client_cpu_s), '.1f', 6)} "
                f"{_fmt_int(_median(r.log_records for r in rs)):>8} "
                f"{_fmt_int(_median(r.fsyncs for r in rs)):>7} "
                f"{_fmt(_median(r.drain_s for r in rs), '.2f', 7)} "
                f"{_median(r.other_cpu_s / r.window_s for r in rs):5.2f}c")
    out += ["", "other: cores busy with anything but client, relay, shards and ganesha in the window "
            "(other processes, kernel threads: loopback TCP softirqs, writeback).",
            "client: the load generator's own CPU (Python + libnfs); for the QD1 case it includes "
            "connect, mount and create."]
    out += cpu_targets(cases, configs, runs)
    return out


def cpu_targets(cases: list[Case], configs: list[Config], runs: dict) -> list[str]:
    """The CPU bounds and the 16-core arithmetic, from the medians."""
    by_key = {c.key: c for c in cases}
    out = ["", "Proxy CPU targets: data plane ≤ 10 us per 4 KiB write (4 KiB UNSTABLE QD16), "
           "≤ 0.3 CPU-s per GiB (1 MiB QD16); shipper apart. One 16-core proxy host: 16 × what one "
           "core carries at the measured data-plane cost (+ shipper where it is apart); the NIC's "
           "and the kernel's softirq work outside the process are not in it.", ""]
    for config in configs:
        if config.kind != "proxy":
            continue
        small = runs.get(("4k-qd16", config.name))
        big = runs.get(("1m-qd16", config.name))
        parts = []
        if small:
            us = _median(r.data_plane_cpu_s for r in small) / small[0].ops * 1e6
            ship = _median(r.shipper_cpu_s for r in small)
            ship_us = None if ship is None else ship / small[0].ops * 1e6
            total = us + (ship_us or 0.0)
            per_core = 1e6 / total
            parts.append(f"4 KiB: {us:.1f} us/write {'met' if us <= 10 else 'MISSED'} (shipper "
                         f"{'-' if ship_us is None else f'{ship_us:.1f}'} us) -> "
                         f"{per_core:,.0f} writes/s per core, ×16 = {16 * per_core:,.0f} writes/s "
                         f"({16 * per_core * 4 * KiB / MiB:,.0f} MiB/s)")
        if big and "1m-qd16" in by_key:
            gib = big[0].nbytes / GiB
            s_gib = _median(r.data_plane_cpu_s for r in big) / gib
            ship = _median(r.shipper_cpu_s for r in big)
            ship_gib = None if ship is None else ship / gib
            parts.append(f"1 MiB: {s_gib:.2f} CPU-s/GiB {'met' if s_gib <= 0.3 else 'MISSED'} "
                         f"(shipper {'-' if ship_gib is None else f'{ship_gib:.2f}'}) -> ×16 = "
                         f"{16 / (s_gib + (ship_gib or 0.0)):,.1f} GiB/s")
        if parts:
            out.append(f"{config.name:<10} " + "; ".join(parts))
    return out


# --------------------------------------------------------------------------


def configurations(data_plane: str) -> list[Config]:
    configs = [Config("direct", "direct"), Config("bare", "bare")]
    if data_plane in ("native", "both"):
        configs += [Config(f"n-{d}", "proxy", "native", d) for d in ("async", "sync", "strict")]
        configs.append(Config("n-sync-2t", "proxy", "native", "sync", relay_threads=2))
    if data_plane in ("python", "both"):
        configs += [Config(f"p-{d}", "proxy", "python", d) for d in ("async", "sync", "strict")]
    return configs


def bench_cases(scale: int) -> list[Case]:
    return [
        Case("4k-qd16", "4 KiB UNSTABLE QD16", 4 * KiB, 16, total_bytes=128 * MiB // scale),
        Case("4k-fsync-qd16", "4 KiB FILE_SYNC QD16", 4 * KiB, 16, total_bytes=32 * MiB // scale,
             file_sync=True),
        Case("4k-qd1", "4 KiB UNSTABLE QD1", 4 * KiB, 1, n=2000 // scale),
        Case("4k-fsync-qd1", "4 KiB FILE_SYNC QD1", 4 * KiB, 1, n=1000 // scale, file_sync=True),
        Case("1m-qd16", "1 MiB UNSTABLE QD16", MiB, 16, total_bytes=512 * MiB // scale),
        Case("1m-fsync-qd16", "1 MiB FILE_SYNC QD16", MiB, 16, total_bytes=256 * MiB // scale,
             file_sync=True),
        Case("meta-qd16", "meta CREATE+SETATTR+REMOVE", 0, 16, files=3000 // scale),
        Case("4k-2conn", "4 KiB UNSTABLE 2 conn×QD16", 4 * KiB, 16, total_bytes=128 * MiB // scale,
             connections=2),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="an eighth of the data (a smoke run)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median shown)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, config)")
    ap.add_argument("--data-plane", choices=("python", "native", "both"), default="native",
                    help="which proxies to measure beside direct and the bare relay (default: native)")
    ap.add_argument("--cases", default="", help="comma-separated case keys (default: all)")
    ap.add_argument("--fresh-log", action="store_true",
                    help="a new LOG for every proxied run (default: each configuration keeps its "
                    "LOG, trimmed once acked, and writes new segments over trimmed ones)")
    ap.add_argument("--log-spares", type=int, default=None,
                    help="the proxies' --log-spares (default: theirs)")
    args = ap.parse_args()
    log_args = [] if args.fresh_log else ["--log-retain", "0"]
    if args.log_spares is not None:
        log_args += ["--log-spares", str(args.log_spares)]
    configs = configurations(args.data_plane)
    cases = bench_cases(8 if args.quick else 1)
    if args.cases:
        cases = [c for c in cases if c.key in args.cases.split(",")]
    for line in machine():
        print(line)
    workdir = Path(tempfile.mkdtemp(prefix="nfsj-bench-"))
    use_perf = perf_works()
    print(f"software: nfs-journal {git_head(REPO)}; nfs-ganesha {dpkg_version('nfs-ganesha')} "
          f"(FSAL VFS); libnfs {dpkg_version('libnfs13')} ({library_path()}); "
          f"gcc {dpkg_version('gcc')} for the bare relay")
    print(f"storage: ganesha export, LOG, shards and work files in {workdir} ({filesystem(workdir)}); "
          f"fsync counts: {'perf stat syscall tracepoints' if use_perf else 'unavailable (no usable perf)'}")
    for case in cases:
        size = (f"{case.n} timed calls" if case.latency else
                f"{case.files} files = {3 * case.files} calls" if case.metadata else
                f"{case.total_bytes // MiB} MiB = {case.total_bytes // case.block_bytes} calls")
        print(f"case: {case.title}: {size}")
    print(f"order: {args.rounds} round(s); per round, per case: {', '.join(c.name for c in configs)} "
          f"(reversed in even rounds)", flush=True)
    print("LOG: " + ("a new one for every proxied run" if args.fresh_log else
                     f"one per configuration, kept from run to run, proxies run with "
                     f"{' '.join(log_args)}; each written with {PRIME_BYTES // MiB} MiB before "
                     f"round 1 (untimed), so new segments are written over trimmed ones"))

    started = time.monotonic()
    warm_bytes = (512 if args.quick else 2048) * MiB
    print(f"prewarm: touched {warm_bytes // MiB} MiB of memory in "
          f"{prewarm_memory(warm_bytes):.2f} s (slow = never-touched guest pages; see prewarm_memory)")
    bare_exe = build_bare_relay(workdir)
    nas = start_ganesha(workdir / "export", workdir / "ganesha")
    shards = [ShardProcess(workdir / f"shard{k}", k) for k in range(N_SHARDS)]
    runs: dict[tuple[str, str], list[Run]] = {(c.key, cfg.name): [] for c in cases for cfg in configs}
    try:
        for shard in shards:
            shard.start()
        print(f"ganesha: pid {nas.pid}, NFS port {nas.nfs_port}, MOUNT port {nas.mount_port}; "
              f"shards: {', '.join(f'{s.address} (pid {s.proc.pid})' for s in shards)}")
        bench = Bench(nas, shards, workdir, bare_exe, use_perf, args.fresh_log, log_args)
        with Connection(bench.direct) as c:
            print(f"ganesha wtmax: {c.writemax // KiB} KiB (1 MiB writes go as single WRITE calls "
                  f"when this is >= 1024)")
        if not args.fresh_log:
            for config in configs:
                if config.kind == "proxy":
                    print(f"prime {config.name}: {bench.prime(config):.1f} s", flush=True)
        print()
        for rnd in range(1, args.rounds + 1):
            # Even rounds reverse the order, so a median of 2 rounds sees each
            # configuration early and late in its case: on a VM that reports
            # free pages to its host, a run writing into pages freed long ago
            # pays a host fault per page (1 MiB direct: 149 MiB/s first in
            # its case, 1,678 MiB/s last, in one run).
            order = configs if rnd % 2 else configs[::-1]
            for case in cases:
                for config in order:
                    run = run_one(bench, case, config, rnd)
                    runs[case.key, config.name].append(run)
                    print(f"round {rnd} {case.title:<26} {config.name:<10} {describe(case, run)}",
                          flush=True)
    finally:
        for shard in shards:
            shard.stop()
        nas.stop()
        stop_rpcbind_if_started()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    for line in summarize(cases, configs, runs, args.rounds):
        print(line)
    print(f"\nwall time: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
