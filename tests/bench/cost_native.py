"""What the native data plane costs per write, in counts that load does not
change (a script, not a test).

    python3 tests/bench/cost_native.py [--durability async sync ...] [--case 4k 1m]
                                       [--writes N] [--proxy nfsj|relay] [--record DIR]
                                       [--tree NAME=DIR ...]

Starts one nfs-ganesha, then for each (case, durability) a fresh proxy
(`nfsj proxy --data-plane native`, or with `--proxy relay` the bare
`native_relay_proc.py`), writes a warm-up, then `--writes` sequential
writes at 16 in flight through it (libnfs_load), and reports per write:

* CPU: the proxy's threads' run time from /proc/PID/task/*/schedstat (ns,
  not clock ticks), split into user and system from /proc/PID/stat;
* syscalls by type, context switches and CPU migrations, counted in the
  kernel by `perf stat -p PID` over exactly the measured writes (nothing is
  added per call in userspace);
* for 1 MiB writes, CPU-s per GiB.

On a 2-core machine shared with others, throughput figures are noise; these
counts are not (CPU time per write varies a little with cache pressure).
Each proxy gets two measured passes: CPU time with nothing attached, then
the counts with `perf stat` attached (its tracepoints cost a little CPU).
`--record DIR` also runs `perf record -g` over the counted pass and leaves
`perf report`'s top entries in DIR. `--tree NAME=DIR` (repeatable) runs the
proxy from another checkout (its own built extension), interleaved with this
one per case, to compare two builds on the same machine state.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from host import prewarm_memory  # noqa: E402
from libnfs_load import Connection, NfsTarget  # noqa: E402
from nfsproxy.demo.ganesha import start_ganesha, stop_rpcbind_if_started  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
_SERVING = re.compile(r"serving NFSv3\+MOUNT on [^ ]+:(\d+)")
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
SYSCALLS = ("read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
            "pwrite64", "pwritev", "pwritev2", "fdatasync", "fsync", "futex", "epoll_wait",
            "epoll_pwait", "epoll_ctl", "sched_yield", "mmap", "munmap", "madvise", "mprotect",
            "brk", "clock_nanosleep", "poll", "ppoll", "getrandom")
EVENTS = ("raw_syscalls:sys_enter", "context-switches", "cpu-migrations", "page-faults",
          *(f"syscalls:sys_enter_{s}" for s in SYSCALLS))


def threads_cpu_ns(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass
    return total


def user_sys_s(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) * _TICK_S, int(fields[12]) * _TICK_S


class Proxy:
    def __init__(self, kind: str, nas, workdir: Path, durability: str, threads: int, tree: Path = REPO):
        self.log_dir = workdir / f"log-{durability}"
        shutil.rmtree(self.log_dir, ignore_errors=True)
        backend = f"127.0.0.1:{nas.nfs_port}:{nas.mount_port}"
        if kind == "relay":
            argv = [sys.executable, str(tree / "tests/bench/native_relay_proc.py"), "--log", str(self.log_dir),
                    "--backend", backend, "--durability", durability, "--threads", str(threads)]
        else:
            argv = [sys.executable, "-m", "nfsproxy", "proxy", "--data-plane", "native",
                    "--listen", "127.0.0.1:0", "--backend", backend + ":/export",
                    "--log", str(self.log_dir), "--durability", durability,
                    "--relay-threads", str(threads)]
        self.stderr = open(workdir / f"proxy-{durability}.stderr", "wb")
        env = dict(os.environ, PYTHONPATH=str(tree))
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     cwd=tree, env=env)
        for _ in range(50):
            line = self.proc.stdout.readline()
            m = _SERVING.search(line)
            if m or not line:
                break
        if not m:
            self.stop()
            raise RuntimeError(f"the proxy did not start: {line!r}")
        self.port = int(m.group(1))
        self.pid = self.proc.pid

    @property
    def target(self) -> NfsTarget:
        return NfsTarget("127.0.0.1", self.port, self.port, "/export")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        shutil.rmtree(self.log_dir, ignore_errors=True)


def parse_perf(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) >= 3 and parts[0].strip().isdigit():
            out[parts[2].replace("syscalls:sys_enter_", "")] = int(parts[0])
    return out


def measure(proxy: Proxy, block: int, writes: int, record: Path | None, label: str,
            event: str | None = None) -> dict:
    with Connection(proxy.target) as conn:
        fh = conn.creat(f"/cost-{label}")
        try:
            conn.pwrite_stream(fh, block, max(200, writes // 10), 16)  # warm-up
            cpu0, (u0, s0) = threads_cpu_ns(proxy.pid), user_sys_s(proxy.pid)
            elapsed, client_cpu = conn.pwrite_stream(fh, block, writes, 16)
            cpu1, (u1, s1) = threads_cpu_ns(proxy.pid), user_sys_s(proxy.pid)
            perf_out = Path(tempfile.mktemp(prefix="perf-stat-"))
            perf = subprocess.Popen(["perf", "stat", "-x,", "-o", str(perf_out), "-e", ",".join(EVENTS),
                                     "-p", str(proxy.pid)], stderr=subprocess.DEVNULL)
            rec = None
            if record is not None:
                rec = subprocess.Popen(["perf", "record", "-g", "-o", str(record / f"{label}.data"),
                                        *(["-e", event] if event else []), "-p", str(proxy.pid)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # both attached
            conn.pwrite_stream(fh, block, writes, 16)
            for p in (perf, rec):
                if p is not None:
                    p.send_signal(signal.SIGINT)
                    p.wait()
            counts = parse_perf(perf_out.read_text())
            perf_out.unlink()
        finally:
            conn.close_file(fh)
        conn.unlink(f"/cost-{label}")
    if record is not None:
        report = subprocess.run(["perf", "report", "-i", str(record / f"{label}.data"), "--no-children",
                                 "--percent-limit", "0.7", "--stdio", "-g", "none", "--sort", "dso,sym"],
                                capture_output=True, text=True)
        (record / f"{label}.report.txt").write_text(report.stdout)
    return dict(writes=writes, block=block, elapsed=elapsed, client_cpu=client_cpu,
                cpu_s=(cpu1 - cpu0) / 1e9, user_s=u1 - u0, sys_s=s1 - s0, counts=counts)


def show(label: str, m: dict) -> list[str]:
    n = m["writes"]
    c = m["counts"]
    head = (f"{label}: {n} writes of {m['block'] // KiB} KiB, {n / m['elapsed']:,.0f} op/s; proxy "
            f"{m['cpu_s'] / n * 1e6:.1f} us CPU/write (user {m['user_s'] / n * 1e6:.1f}, sys "
            f"{m['sys_s'] / n * 1e6:.1f}, ticks)")
    if m["block"] >= MiB:
        head += f", {m['cpu_s'] / (n * m['block'] / GiB):.2f} CPU-s/GiB"
    lines = [head]
    per = {k: v / n for k, v in c.items() if v}
    order = ["raw_syscalls:sys_enter", "context-switches", "cpu-migrations", "page-faults"]
    lines.append("  " + ", ".join(f"{k.replace('raw_syscalls:sys_enter', 'syscalls')} {per.get(k, 0):.2f}"
                                  for k in order) + " per write")
    lines.append("  " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1])
                                  if k not in order))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--durability", nargs="+", default=["async", "sync"])
    ap.add_argument("--case", nargs="+", default=["4k", "1m"])
    ap.add_argument("--writes", type=int, default=0, help="default: 20000 (4 KiB), 1024 (1 MiB)")
    ap.add_argument("--proxy", choices=("nfsj", "relay"), default="nfsj")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--record", type=Path)
    ap.add_argument("--record-event", help="what perf record samples (default: CPU time), e.g. "
                    "syscalls:sys_enter_futex to see who makes those calls")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                    help="also measure the proxy of another checkout")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    trees = [("this", REPO)] + [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.tree]
    print(f"prewarm: {prewarm_memory(2 << 30):.1f} s; load average {os.getloadavg()}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="nfsj-cost-"))
    nas = start_ganesha(workdir / "export", workdir / "ganesha")
    try:
        for rnd in range(args.rounds):
            for case in args.case:
                block = 4 * KiB if case == "4k" else MiB
                writes = args.writes or (20000 if case == "4k" else 1024)
                for durability in args.durability:
                    for name, tree in trees:
                        label = f"{case}-{durability}" + ("" if name == "this" else f"-{name}")
                        record = None
                        if args.record:
                            record = args.record / name
                            record.mkdir(parents=True, exist_ok=True)
                        proxy = Proxy(args.proxy, nas, workdir, durability, args.threads, tree)
                        try:
                            m = measure(proxy, block, writes, record, label, args.record_event)
                        finally:
                            proxy.stop()
                        print("\n".join(show(label, m)), flush=True)
    finally:
        nas.stop()
        stop_rpcbind_if_started()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
