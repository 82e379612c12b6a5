"""What the journaling proxy costs: NFSv3 writes direct to ganesha vs through it
(a script, not a test).

    python3 tests/bench/bench_proxy.py [--quick] [--rounds N] [--data-plane python|native|both]
                                       [--relay-threads N]

One fresh nfs-ganesha (FSAL VFS, loopback) serves every run. These
configurations are measured side by side in one run:

* direct - the client talks to ganesha;
* async  - through `nfsj proxy --durability async` (reply after the LOG write);
* sync   - through `nfsj proxy --durability sync` (reply after the LOG fsync);

and with `--data-plane native` (or `both`) the native relay
(`native_relay_proc.py`: nfsproxy._dataplane.Relay journaling to the native
LOG writer with the native HLC):

* n-relay  - the native relay journaling nothing (the relay's own cost);
* n-async  - every reply at once;
* n-sync   - UNSTABLE WRITE replies at once, the rest after their fsync;
* n-strict - every reply after its record's fsync.

Cases, all sequential writes to a new file:

* 4 KiB writes, 16 in flight (ops/s);
* 1 MiB writes, 16 in flight (MiB/s);
* 4 KiB writes, one at a time: p50 and p99 latency of each call.

The load comes from `libnfs_load.py` (libnfs's async C API through ctypes);
its own CPU is reported too, to show that it stays small.

Configurations are interleaved within each round (for each case: direct,
async, sync), over `--rounds` rounds (3); tables show the median. The ratio
column, proxied / direct, is the point: on a shared machine absolute figures
drift with whatever else runs, while the configurations of one round see
nearly the same machine. The `other CPU` column says how busy the machine
was with processes other than client, proxy and ganesha.

Every proxied run gets a fresh proxy and a fresh LOG, so its counters are its
own:

* proxy CPU, from /proc/PID/stat (utime + stime) before and after the load,
  per GiB and per write (clock ticks: 10 ms resolution);
* LOG records and bytes, read after the proxy has stopped by opening the LOG
  (`logstore.log.Log`);
* fsyncs: fdatasync + fsync calls of the proxy process, counted by the kernel
  (`perf stat -e syscalls:sys_enter_fdatasync,...` wrapping the proxy; in-kernel
  counting, nothing per call in userspace). Shown as `-` when perf cannot.

Before the first run a few GiB of memory are touched and freed (see
`prewarm_memory`: on a VM, never-touched guest pages make page-cache writes
several times slower the first time). After each run the file is removed
through NFS and the LOG directory deleted, so runs do not leave dirty pages
behind for the next one. There are no thresholds; every number names its
machine (benchmarks stay apart from the test run).
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from libnfs_load import (Connection, NfsTarget, library_path, write_latency_qd1,  # noqa: E402
                         write_throughput)
from logstore.log import Log  # noqa: E402
from nfsproxy.demo.ganesha import start_ganesha, stop_rpcbind_if_started  # noqa: E402

from host import dpkg_version, filesystem, git_head, host_line, prewarm_memory  # noqa: E402  (tests/bench is the script's directory)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PYTHON_CONFIGS = ("async", "sync")
NATIVE_CONFIGS = ("n-relay", "n-async", "n-sync", "n-strict")
CONFIGS = ("direct", *PYTHON_CONFIGS)  # main() sets it from --data-plane
_SERVING = re.compile(r"serving NFSv3\+MOUNT on [^ ]+:(\d+),")
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
_FSYNC_EVENTS = ("syscalls:sys_enter_fdatasync", "syscalls:sys_enter_fsync")


@dataclasses.dataclass(frozen=True)
class Case:
    key: str
    title: str
    block_bytes: int
    queue_depth: int
    total_bytes: int = 0  # throughput cases
    n: int = 0  # latency case: timed calls

    @property
    def latency(self) -> bool:
        return self.n > 0


@dataclasses.dataclass
class Run:
    """One (round, case, configuration) measurement."""

    config: str
    ops: int
    nbytes: int
    elapsed_s: float
    client_cpu_s: float
    nas_cpu_s: float
    other_cpu_s: float
    proxy_cpu_s: float | None = None
    latencies_s: list[float] | None = None
    log_records: int | None = None
    log_bytes: int | None = None
    fsyncs: int | None = None

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed_s

    @property
    def bytes_per_s(self) -> float:
        return self.nbytes / self.elapsed_s

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies_s or ())
        return lat[min(len(lat) - 1, round(q * (len(lat) - 1)))]


# --------------------------------------------------------------------------
# The machine


def machine() -> list[str]:
    return [
        host_line(),
        f"python: {platform.python_implementation()} {platform.python_version()} ({sys.executable})",
    ]


# --------------------------------------------------------------------------
# CPU accounting


def process_cpu_s(pid: int) -> float:
    """utime + stime of a whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def machine_busy_s() -> float:
    """CPU-seconds the whole machine spent not idle (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq + steal) * _TICK_S


# --------------------------------------------------------------------------
# The proxy


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


class Proxy:
    """`python -m nfsproxy proxy` with a fresh LOG, optionally under `perf stat`."""

    def __init__(self, nas, workdir: Path, durability: str, use_perf: bool, relay_threads: int = 1):
        self.log_dir = workdir / f"log-{durability}"
        shutil.rmtree(self.log_dir, ignore_errors=True)
        self.stderr_path = workdir / f"proxy-{durability}.stderr"
        self.perf_out = workdir / f"perf-{durability}.out"
        if durability.startswith("n-"):
            mode = durability.removeprefix("n-").replace("relay", "none")
            argv = [sys.executable, str(HERE / "native_relay_proc.py"), "--log", str(self.log_dir),
                    "--backend", f"127.0.0.1:{nas.nfs_port}:{nas.mount_port}", "--durability", mode,
                    "--threads", str(relay_threads)]
        else:
            argv = [sys.executable, "-m", "nfsproxy", "proxy", "--listen", "127.0.0.1:0",
                    "--backend", f"127.0.0.1:{nas.nfs_port}:{nas.mount_port}:/export",
                    "--log", str(self.log_dir), "--durability", durability]
        self.use_perf = use_perf
        if use_perf:
            argv = ["perf", "stat", "-x,", "-e", ",".join(_FSYNC_EVENTS), "-o", str(self.perf_out),
                    "--", *argv]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True,
                                         cwd=REPO)
        line = self.proc.stdout.readline()
        m = _SERVING.search(line)
        if not m:
            if use_perf and self.proc.poll() is None:  # perf's child first, by its pid
                for child in self._children():
                    os.kill(child, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"proxy did not start: {line!r}\n{self.stderr_path.read_text()[-3000:]}")
        self.port = int(m.group(1))
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

    @property
    def target(self) -> NfsTarget:
        return NfsTarget("127.0.0.1", self.port, self.port, "/export")

    def stop(self) -> tuple[int | None, int | None, int | None]:
        """SIGTERM the proxy; return (LOG records, LOG bytes, fsyncs) and delete the LOG."""
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
        if rc != 0:
            raise RuntimeError(f"the proxy exited with status {rc}:\n"
                               f"{self.stderr_path.read_text()[-3000:]}")
        fsyncs = _parse_perf(self.perf_out.read_text()) if self.use_perf else None
        if not self.log_dir.exists():  # the native relay alone journals nothing
            return 0, 0, fsyncs
        log = Log.open(self.log_dir)
        try:
            records = max(0, log.last_seq - log.first_seq + 1)
            nbytes = log.size_bytes
        finally:
            log.close()
        shutil.rmtree(self.log_dir, ignore_errors=True)
        return records, nbytes, fsyncs

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


def run_one(case: Case, config: str, rnd: int, nas, workdir: Path, use_perf: bool,
            relay_threads: int = 1) -> Run:
    direct = NfsTarget("127.0.0.1", nas.nfs_port, nas.mount_port, "/export")
    proxy = Proxy(nas, workdir, config, use_perf, relay_threads) if config != "direct" else None
    path = f"/bench-r{rnd}-{case.key}-{config}"
    try:
        target = proxy.target if proxy else direct
        p0 = process_cpu_s(proxy.pid) if proxy else 0.0
        n0, m0, c0, t0 = process_cpu_s(nas.pid), machine_busy_s(), time.process_time(), time.perf_counter()
        if case.latency:
            lat = write_latency_qd1(target, path, case.block_bytes, case.n)
            ops, client_cpu, latencies = case.n, None, lat
        else:
            res = write_throughput(target, path, case.block_bytes, case.total_bytes, case.queue_depth)
            ops, client_cpu, latencies = res.ops, res.client_cpu_s, None
        t1, c1, m1, n1 = time.perf_counter(), time.process_time(), machine_busy_s(), process_cpu_s(nas.pid)
        p1 = process_cpu_s(proxy.pid) if proxy else 0.0
        # The latency case's wall clock includes connecting and creating (it only
        # scales `other CPU`); a throughput case's is the load generator's own.
        elapsed = t1 - t0 if case.latency else res.elapsed_s
        run = Run(config, ops, ops * case.block_bytes, elapsed,
                  client_cpu if client_cpu is not None else c1 - c0, n1 - n0,
                  max(0.0, (m1 - m0) - (n1 - n0) - (p1 - p0) - (c1 - c0)),
                  proxy_cpu_s=(p1 - p0) if proxy else None, latencies_s=latencies)
        if proxy:
            run.log_records, run.log_bytes, run.fsyncs = proxy.stop()
            proxy = None
    finally:
        if proxy:
            proxy.kill()
    with Connection(direct) as conn:  # not through a proxy: no record for the cleanup
        conn.unlink(path)
    os.sync()  # start the next run with no dirty pages of this one in flight
    return run


def describe(case: Case, run: Run) -> str:
    if case.latency:
        head = f"p50 {run.pct(0.5) * 1e6:7.0f} us  p99 {run.pct(0.99) * 1e6:7.0f} us"
    else:
        head = f"{run.ops_per_s:9,.0f} op/s {run.bytes_per_s / MiB:8,.1f} MiB/s"
    extra = ""
    if run.proxy_cpu_s is not None:
        extra = (f"  proxy CPU {run.proxy_cpu_s:5.2f} s, LOG {run.log_records} records"
                 f" {run.log_bytes / MiB:.1f} MiB, fsyncs {_fmt_int(run.fsyncs)}")
    return (f"{head}  ganesha CPU {run.nas_cpu_s:5.2f} s  client CPU {run.client_cpu_s:5.2f} s"
            f"  other CPU {run.other_cpu_s / run.elapsed_s:4.2f} cores{extra}")


def _fmt_int(v: int | float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(cases: list[Case], runs: dict[tuple[str, str], list[Run]], rounds: int) -> list[str]:
    out = []
    out.append("")
    out.append(f"Median of {rounds} interleaved round(s). ratio = proxied / direct, per median "
               "(throughput: below 1 is slower; latency: above 1 is slower).")
    out.append("")
    hdr = f"{'case':<24} {'config':<8} {'median':>16} {'ratio':>6}   {'rounds':<34}"
    out.append(hdr)
    out.append("-" * len(hdr))
    for case in cases:
        metrics = ([("p50 us", lambda r: r.pct(0.5) * 1e6), ("p99 us", lambda r: r.pct(0.99) * 1e6)]
                   if case.latency else
                   [("op/s" if case.block_bytes < MiB else "MiB/s",
                     (lambda r: r.ops_per_s) if case.block_bytes < MiB else (lambda r: r.bytes_per_s / MiB))])
        for label, fn in metrics:
            title = case.title + (f" {label.split()[0]}" if case.latency else "")
            base = _median(fn(r) for r in runs[case.key, "direct"])
            for config in CONFIGS:
                vals = [fn(r) for r in runs[case.key, config]]
                med = _median(vals)
                ratio = "" if config == "direct" else f"{med / base:6.2f}"
                rnds = " ".join(f"{v:,.0f}" for v in vals)
                out.append(f"{title if config == 'direct' else '':<24} {config:<8} "
                           f"{med:>11,.0f} {label.split()[-1]:<4} {ratio:>6}   {rnds:<34}")
    out.append("")
    out.append("Cost per unit written (medians). s/GiB: CPU seconds per GiB of client data; "
               "us/write: CPU microseconds per write call.")
    out.append("")
    hdr = (f"{'case':<24} {'config':<8} {'proxy s/GiB':>11} {'us/write':>8} {'ganesha s/GiB':>13} "
           f"{'client us/write':>15} {'LOG records':>11} {'LOG MiB':>8} {'fsyncs':>7} "
           f"{'rec/fsync':>9} {'other CPU':>9}")
    out.append(hdr)
    out.append("-" * len(hdr))
    for case in cases:
        for config in CONFIGS:
            rs = runs[case.key, config]
            gib = rs[0].nbytes / GiB
            proxy = _median(r.proxy_cpu_s for r in rs)
            fsyncs = _median(r.fsyncs for r in rs)
            records = _median(r.log_records for r in rs)
            log_mib = _median(None if r.log_bytes is None else r.log_bytes / MiB for r in rs)
            per_fsync = _median(r.log_records / r.fsyncs if r.fsyncs else None for r in rs)
            out.append(
                f"{case.title if config == 'direct' else '':<24} {config:<8} "
                f"{'-' if proxy is None else f'{proxy / gib:11.2f}':>11} "
                f"{'-' if proxy is None else f'{proxy / rs[0].ops * 1e6:8.1f}':>8} "
                f"{_median(r.nas_cpu_s for r in rs) / gib:13.2f} "
                f"{_median(r.client_cpu_s for r in rs) / rs[0].ops * 1e6:15.1f} "
                f"{_fmt_int(records):>11} {'-' if log_mib is None else f'{log_mib:8.1f}':>8} "
                f"{_fmt_int(fsyncs):>7} {'-' if per_fsync is None else f'{per_fsync:9.1f}':>9} "
                f"{_median(r.other_cpu_s / r.elapsed_s for r in rs):6.2f} c")
    out.append("")
    out.append("other CPU: cores busy with anything but client, proxy and ganesha during the "
               "load (other processes, kernel threads: loopback TCP softirqs, writeback).")
    out.append("client us/write: the load generator's own CPU (Python + libnfs); for the QD1 case it "
               "includes connect, mount and create.")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="an eighth of the data (a smoke run)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median shown)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, config)")
    ap.add_argument("--data-plane", choices=("python", "native", "both"), default="python",
                    help="which relays to measure beside direct (default: python)")
    ap.add_argument("--relay-threads", type=int, default=1, help="the native relay's threads")
    args = ap.parse_args()
    global CONFIGS
    CONFIGS = ("direct", *({"python": PYTHON_CONFIGS, "native": NATIVE_CONFIGS,
                            "both": PYTHON_CONFIGS + NATIVE_CONFIGS}[args.data_plane]))
    scale = 8 if args.quick else 1
    cases = [
        Case("4k-qd16", "4 KiB write QD16", 4 * KiB, 16, total_bytes=128 * MiB // scale),
        Case("1m-qd16", "1 MiB write QD16", MiB, 16, total_bytes=512 * MiB // scale),
        Case("4k-qd1", "4 KiB write QD1", 4 * KiB, 1, n=2000 // scale),
    ]
    for line in machine():
        print(line)
    workdir = Path(tempfile.mkdtemp(prefix="nfsj-bench-"))
    use_perf = perf_works()
    print(f"software: nfs-journal {git_head(REPO)}; nfs-ganesha {dpkg_version('nfs-ganesha')} "
          f"(FSAL VFS); libnfs {dpkg_version('libnfs13')} ({library_path()}); "
          f"proxy event loop: uvloop (nfsproxy.cli.run_event_loop)")
    print(f"storage: ganesha export, LOG and work files in {workdir} ({filesystem(workdir)}); "
          f"fsync counts: {'perf stat syscall tracepoints' if use_perf else 'unavailable (no usable perf)'}")
    for case in cases:
        size = (f"{case.n} timed calls" if case.latency
                else f"{case.total_bytes // MiB} MiB = {case.total_bytes // case.block_bytes} calls")
        print(f"case: {case.title}: {size}")
    print(f"order: {args.rounds} round(s); per round, per case: {', '.join(CONFIGS)}", flush=True)

    started = time.monotonic()
    warm_bytes = (512 if args.quick else 2048) * MiB
    print(f"prewarm: touched {warm_bytes // MiB} MiB of memory in "
          f"{prewarm_memory(warm_bytes):.2f} s (slow = never-touched guest pages; see prewarm_memory)")
    nas = start_ganesha(workdir / "export", workdir / "ganesha")
    runs: dict[tuple[str, str], list[Run]] = {(c.key, cfg): [] for c in cases for cfg in CONFIGS}
    try:
        print(f"ganesha: pid {nas.pid}, NFS port {nas.nfs_port}, MOUNT port {nas.mount_port}")
        with Connection(NfsTarget("127.0.0.1", nas.nfs_port, nas.mount_port, "/export")) as c:
            print(f"ganesha wtmax: {c.writemax // KiB} KiB (1 MiB writes go as single WRITE calls "
                  f"when this is >= 1024)")
        print()
        for rnd in range(1, args.rounds + 1):
            for case in cases:
                for config in CONFIGS:
                    run = run_one(case, config, rnd, nas, workdir, use_perf, args.relay_threads)
                    runs[case.key, config].append(run)
                    print(f"round {rnd} {case.title:<17} {config:<8} {describe(case, run)}", flush=True)
    finally:
        nas.stop()
        stop_rpcbind_if_started()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    for line in summarize(cases, runs, args.rounds):
        print(line)
    print(f"\nwall time: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
