"""How fast `nfsj` starts and `nfsj cat` gives its first byte (a script, not a test).

    python3 tests/bench/bench_cli.py [--records N] [--shards N] [--runs N]

What runs: nfs-ganesha with a small tree, `--shards` (default 2) shards and
a proxy; `nfsj baseline`; then `hot/hot.bin` is made through the proxy and
written `--records` times (default 4,000; 4 KiB writes, mostly appending,
some overwriting) with our own NFS client, and the consistent point is
waited for. Measured, each the median of `--runs` (default 7) processes:

* CLI start-up: `nfsj --help`, `nfsj status --help`, and `nfsj status`
  against the running shards (wall time of the whole process), next to
  `python -c pass` on the same interpreter;
* `nfsj cat hot/hot.bin --at T`: process start to the first byte on
  stdout, and to exit (the bytes are checked against the NAS);
* in-process, a fresh `RestoreClient`: the cut, resolving the path, and
  rebuilding the file from its records.

No thresholds; every figure names the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from e2e.proxy_fixture import ProxyProcess  # noqa: E402
from e2e.shard_fixture import ShardProcess  # noqa: E402
from logstore.stamp import Stamp  # noqa: E402
from nfsproxy.nas.client import NfsClient, created_fh  # noqa: E402
from nfsproxy.demo.ganesha import start_ganesha  # noqa: E402
from nfsproxy.wire.nfs3 import StableHow  # noqa: E402
from recoveryd.restore import RestoreClient, Shards  # noqa: E402

from bench_restore import now_bound, say, wait_proven  # noqa: E402  (tests/bench is the script's directory)
from host import git_head, host_line  # noqa: E402

# Bytecode cached (outside the repository), as an installed nfsj has it: with
# PYTHONDONTWRITEBYTECODE every run would compile the project's modules again.
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
       "PYTHONPATH": str(REPO),
       "PYTHONPYCACHEPREFIX": os.path.join(tempfile.gettempdir(), "nfsj-bench-pycache")}
NFSJ = [sys.executable, "-m", "nfsproxy"]


def wall(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    # cwd: `python -m` looks there first, before PYTHONPATH.
    subprocess.run(argv, capture_output=True, env=env, check=False, cwd=env["PYTHONPATH"])
    return time.perf_counter() - t0


def median_ms(argv: list[str], runs: int, envs: list[dict]) -> str:
    """Median wall time per checkout, runs interleaved so load hits them alike."""
    times: list[list[float]] = [[] for _ in envs]
    for env in envs:
        wall(argv, env)  # warm the page cache and .pyc files
    for _ in range(runs):
        for k, env in enumerate(envs):
            times[k].append(wall(argv, env))
    return "  vs  ".join(f"{statistics.median(t) * 1e3:6.0f} ms (min {min(t) * 1e3:.0f})" for t in times)


def cat_ttfb(argv: list[str], expect: bytes, env: dict = ENV) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=env["PYTHONPATH"])
    first = proc.stdout.read(1)
    t_first = time.perf_counter() - t0
    rest = proc.stdout.read()
    err = proc.stderr.read()
    proc.wait()
    t_all = time.perf_counter() - t0
    if proc.returncode != 0 or first + rest != expect:
        raise SystemExit(f"nfsj cat failed or gave other bytes: {err.decode()}")
    return t_first, t_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=4000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--profile", action="store_true", help="cProfile the in-process cat (top 25)")
    ap.add_argument("--compare", metavar="CHECKOUT", default=None,
                    help="also run the CLI figures with the nfsj of another checkout (e.g. the "
                         "main branch), against the same stack, interleaved")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nfsj-bench-cli-"))
    say(host_line())
    say(f"code: {git_head(REPO)}; python {sys.version.split()[0]}; {args.shards} shard(s)")
    nas = proxy = None
    shards: list[ShardProcess] = []
    try:
        export = work / "export"
        for d in range(10):
            (export / f"d{d}").mkdir(parents=True)
            for f in range(100):
                (export / f"d{d}" / f"f{f}").write_bytes(os.urandom(1000))
        nas = start_ganesha(export, work / "ganesha")
        shards = [ShardProcess(work / f"shard{k}", k).start() for k in range(args.shards)]
        addresses = [s.address for s in shards]
        shard_args = [a for addr in addresses for a in ("--shard", addr)]
        proxy = ProxyProcess(nas, work / "log", extra=shard_args).start()
        subprocess.run([*NFSJ, "baseline", "--log", str(proxy.log_dir), "--quiet"], check=True,
                       capture_output=True, env=ENV)

        t0 = time.perf_counter()
        with NfsClient("127.0.0.1", proxy.port, proxy.port, "/export", timeout_s=30) as c:
            c.mount()
            hot_dir = created_fh(c, c.mkdir(c.root, "hot", 0o755), c.root, "hot")
            hot = created_fh(c, c.create(hot_dir, "hot.bin", 0o644), hot_dir, "hot.bin")
            size = 0
            for k in range(args.records - 2):
                offset = size if k % 10 else (k * 7919 % max(size, 1)) // 4096 * 4096
                data = os.urandom(4096)
                c.write(hot, offset, data, StableHow.UNSTABLE)
                size = max(size, offset + len(data))
            c.commit(hot)
        t_hot = time.perf_counter() - t0
        at = now_bound()
        wait_proven(addresses, at)
        expect = (export / "hot" / "hot.bin").read_bytes()
        say(f"hot/hot.bin: CREATE + {args.records - 2} WRITEs + COMMIT ({len(expect)} bytes) "
            f"through the proxy in {t_hot:.1f}s")
        envs = [ENV] + ([{**ENV, "PYTHONPATH": os.path.abspath(args.compare)}] if args.compare else [])
        say("")
        say(f"CLI start-up, wall time of the whole process (median of {args.runs}"
            + (f"; this checkout vs {args.compare}" if args.compare else "") + "):")
        say(f"  python -c pass            {median_ms([sys.executable, '-c', 'pass'], args.runs, [ENV])}")
        say(f"  nfsj --help               {median_ms([*NFSJ, '--help'], args.runs, envs)}")
        say(f"  nfsj status --help        {median_ms([*NFSJ, 'status', '--help'], args.runs, envs)}")
        say(f"  nfsj status (live shards) {median_ms([*NFSJ, 'status', *shard_args], args.runs, envs)}")

        argv = [*NFSJ, "cat", "hot/hot.bin", "--at", str(at), *shard_args]
        for env in envs:
            cat_ttfb(argv, expect, env)
        runs: list[list[tuple[float, float]]] = [[] for _ in envs]
        for _ in range(args.runs):
            for k, env in enumerate(envs):
                runs[k].append(cat_ttfb(argv, expect, env))
        for k, env in enumerate(envs):
            say(f"nfsj cat hot/hot.bin ({args.records} records), {env['PYTHONPATH']}: first byte "
                f"{statistics.median(r[0] for r in runs[k]) * 1e3:.0f} ms, exit "
                f"{statistics.median(r[1] for r in runs[k]) * 1e3:.0f} ms (median of {args.runs})")

        with Shards(addresses) as sh, RestoreClient(sh) as client:
            t0 = time.perf_counter()
            cut = client.cut(at)
            t1 = time.perf_counter()
            fh, _ = client.resolve(cut, "hot/hot.bin")
            t2 = time.perf_counter()
            with tempfile.TemporaryFile() as tmp:
                client.write_file(cut, fh, tmp.fileno())
            t3 = time.perf_counter()
        say(f"  in-process: cut {(t1 - t0) * 1e3:.0f} ms, resolve {(t2 - t1) * 1e3:.0f} ms, "
            f"rebuild from {args.records} records {(t3 - t2) * 1e3:.0f} ms")
        if args.profile:
            import cProfile
            import pstats
            with Shards(addresses) as sh, RestoreClient(sh) as client, \
                    tempfile.TemporaryFile() as tmp, cProfile.Profile() as prof:
                cut = client.cut(at)
                client.write_file(cut, client.resolve(cut, "hot/hot.bin")[0], tmp.fileno())
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    finally:
        if proxy is not None:
            proxy.stop()
        for s in shards:
            s.stop()
        if nas is not None:
            nas.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
