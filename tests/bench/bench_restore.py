"""How fast the past comes back (a script, not a test).

    python3 tests/bench/bench_restore.py [--quick] [--shards N] [--workdir DIR] [--keep]

What runs, on one disk (everything lives under one work directory):

1. A tree of `--bytes` (default 1 GiB) in `--files` (default 10,000) regular
   files, sizes drawn log-normally, 100 files per directory, two directory
   levels, random (incompressible) content, varied modes and mtimes, is
   written straight into the directory ganesha will export, BEFORE ganesha
   starts (the proxy never sees it made). `--quick`: 100 MiB in 1,000 files.
2. nfs-ganesha serves it; `--shards` (default 2) `nfsj recoveryd` shards and
   `nfsj proxy --durability sync` start; `nfsj baseline` journals the whole
   tree (the baseline reads it over NFS into the proxy's LOG, which ships it
   to the shards). Timed: the baseline command, and until the consistent
   point passes its end (everything durable in the shards' RocksDB).
3. Whole-tree restore: `nfsj restore --at T1 --to DIR` of that moment,
   timed as a user runs it (CLI start-up included), then `sync`. The
   reference: `cp -a` of the same tree (the export directory) to the same
   disk, in the same run, then `sync`. Run as restore, cp, cp, restore
   (the first writer on the disk pays for cold file-system metadata), and
   the ratio is of the means. Both start after a `sync`; the source
   tree and the shards' files are in the page cache for both (nothing drops
   caches: this machine is shared). Right before each timed run, twice the
   tree's size of memory (at least 2 GiB, at most half the free memory) is
   touched and freed (`prewarm_memory`): on a VM that hands freed guest
   memory back to its host (free page reporting), the first touch of such a
   page is a host fault, and measured here that made `cp -a` of 1 GiB take anywhere from
   0.42 to 3.1 s depending on what had been freed before it, so the ratio
   measured the VM. Warmed, `cp -a` copies at page-cache speed, as on a
   machine without that feature. The restored tree is then compared with
   the source (paths, types, contents, modes, mtimes), untimed. Then the
   same restore with its contents read through gRPC (`--no-bulk`) next to
   it through the shards' bulk ports, in both orders, with the shards' CPU.
   Then the same moment pushed back onto the NAS (`nfsj restore --to-nas
   --into pushed`, through ganesha), and read through `nfsj export` (every
   file read whole with our own NFS client, 1 MiB READs), each next to the
   same reads of the NAS itself, in the same run.
4. A file with 10,000 records: `hot/hot.bin`, made through the proxy after
   the baseline and written 10,000 times (small writes at varying offsets,
   our own NFS client). Time to first byte of `nfsj cat hot/hot.bin --at T2`
   (from process start to the first byte on stdout, median of 3), next to
   the same for a one-record file of the tree and to bare CLI start-up
   (`nfsj cat --help`); and in-process with a fresh `RestoreClient`: the
   cut, the tree, the first `read` (which rebuilds the file from its
   records), a second `read` (cached).

Rates: MB/s are 10^6 bytes of file content per second; files/s count
regular files. There are no thresholds; every number names its
machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import grpc  # noqa: E402

from e2e.proxy_fixture import ProxyProcess  # noqa: E402
from e2e.shard_fixture import ShardProcess  # noqa: E402
from e2e.treecompare import diff, snapshot  # noqa: E402
from logstore.stamp import Stamp  # noqa: E402
from nfsproxy.nas.client import NfsClient, created_fh  # noqa: E402
from nfsproxy.demo.ganesha import start_ganesha  # noqa: E402
from nfsproxy.wire.nfs3 import Ftype3, StableHow  # noqa: E402
from recoveryd.restore import RestoreClient, Shards  # noqa: E402
from recoveryd.status import fetch_status, overall  # noqa: E402

from host import (dist_version, dpkg_version, filesystem, git_head, host_line,  # noqa: E402  (tests/bench is the script's directory)
                  prewarm_memory, process_cpu_s)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
M32 = (1 << 32) - 1
NFSJ = [sys.executable, "-m", "nfsproxy"]
FILES_PER_DIR = 100
HOT_WRITES = 10_000
TTFB_RUNS = 3
HANG_S = 1800.0
READ_BYTES = 1 * MiB


# -- the machine --------------------------------------------------------------------------


def machine(workdir: Path) -> list[str]:
    free = shutil.disk_usage(workdir).free / GiB
    return [
        host_line(),
        f"disk: {workdir} on {filesystem(workdir)}; {free:.0f} GiB free",
        f"python: {platform.python_implementation()} {platform.python_version()}; "
        f"rocksdict {dist_version('rocksdict')}; grpcio {grpc.__version__}; "
        f"protobuf {dist_version('protobuf')}; ganesha {dpkg_version('nfs-ganesha')}",
        f"code: {git_head(REPO)}",
    ]


# -- helpers ----------------------------------------------------------------------------------


def say(text: str) -> None:
    print(text, flush=True)


def nfsj(*args: str, timeout_s: float = HANG_S) -> subprocess.CompletedProcess:
    done = subprocess.run([*NFSJ, *args], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise SystemExit(f"nfsj {args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def now_bound() -> Stamp:
    """A stamp above every stamp handed out so far (the proxy's HLC reads this clock)."""
    time.sleep(0.02)
    bound = Stamp(time.time_ns(), M32, M32)
    time.sleep(0.02)
    return bound


def wait_proven(addresses: list[str], at: Stamp, timeout_s: float = HANG_S) -> Stamp:
    deadline = time.monotonic() + timeout_s
    while True:
        point = overall(fetch_status(addresses))["consistent_point"]
        if point is not None and Stamp.parse(point["stamp"]) > at:
            return Stamp.parse(point["stamp"])
        if time.monotonic() > deadline:
            raise SystemExit(f"the consistent point did not pass {at} in {timeout_s:g}s")
        time.sleep(0.1)


def timed(fn, *args, **kw) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def sync() -> float:
    t, _ = timed(os.sync)
    return t


# -- the tree ---------------------------------------------------------------------------------


def make_tree(root: Path, total_bytes: int, files: int, seed: int = 1) -> tuple[int, int, str]:
    """`files` regular files of `total_bytes` in all under `root`; returns
    (files, bytes, a path of a small file, relative to the export)."""
    rng = random.Random(seed)
    weights = [rng.lognormvariate(0, 1.5) for _ in range(files)]
    scale = total_bytes / sum(weights)
    sizes = [max(0, int(w * scale)) for w in weights]
    sizes[0] += total_bytes - sum(sizes)
    pool = os.urandom(64 * MiB + 1 * MiB)          # random: no compression flatters anyone
    modes = (0o644, 0o600, 0o640, 0o755, 0o664)
    small = ""
    n_dirs = (files + FILES_PER_DIR - 1) // FILES_PER_DIR
    for d in range(n_dirs):
        directory = root / f"d{d // 10:02d}" / f"s{d % 10}"
        directory.mkdir(parents=True, exist_ok=True)
        for i in range(d * FILES_PER_DIR, min(files, (d + 1) * FILES_PER_DIR)):
            path = directory / f"f{i:05d}.bin"
            size = sizes[i]
            with open(path, "wb") as f:
                pos = 0
                while pos < size:
                    n = min(size - pos, 64 * MiB)
                    start = rng.randrange(0, len(pool) - n + 1)
                    f.write(memoryview(pool)[start:start + n])
                    pos += n
            os.chmod(path, rng.choice(modes))
            mtime_ns = rng.randrange(1_500_000_000, 1_700_000_000) * 10**9 + rng.randrange(10**9)
            os.utime(path, ns=(mtime_ns, mtime_ns))
            if not small and 4 * KiB <= size <= 64 * KiB:
                small = str(path.relative_to(root.parent))
    return files, sum(sizes), small


# -- the measurements ---------------------------------------------------------------------------


def cat_ttfb(path: str, at: Stamp, shard_args: list[str], expect_bytes: int | None) -> tuple[float, float]:
    """(seconds to the first byte on stdout, seconds to exit) of `nfsj cat`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([*NFSJ, "cat", path, "--at", str(at), *shard_args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.read(1)
    t_first = time.perf_counter() - t0
    rest = proc.stdout.read()
    err = proc.stderr.read()
    proc.wait()
    t_all = time.perf_counter() - t0
    if proc.returncode != 0 or not first:
        raise SystemExit(f"nfsj cat {path} failed: {err.decode()}")
    if expect_bytes is not None and len(first) + len(rest) != expect_bytes:
        raise SystemExit(f"nfsj cat {path}: {len(first) + len(rest)} bytes, expected {expect_bytes}")
    return t_first, t_all


def read_tree(nfs_port: int, mount_port: int, top: str) -> int:
    """Read every regular file under `top` of an NFS export whole; returns the bytes read."""
    total = 0
    with NfsClient("127.0.0.1", nfs_port, mount_port, "/export", timeout_s=120) as c:
        c.mount()
        stack = [c.lookup_path(top)]
        while stack:
            directory = stack.pop()
            for entry in c.readdirplus(directory):
                if entry.name in (b".", b".."):
                    continue
                fh = entry.name_handle or c.lookup(directory, entry.name).object
                attrs = entry.name_attributes or c.getattr(fh).obj_attributes
                if attrs.type is Ftype3.NF3DIR:
                    stack.append(fh)
                elif attrs.type is Ftype3.NF3REG:
                    offset = 0
                    while True:
                        res = c.read(fh, offset, READ_BYTES)
                        offset += len(res.data)
                        if res.eof or not res.data:
                            break
                    total += offset
    return total


def cli_startup() -> float:
    t0 = time.perf_counter()
    subprocess.run([*NFSJ, "cat", "--help"], capture_output=True, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100 MiB in 1,000 files")
    ap.add_argument("--bytes", type=int, default=None, help="tree size in bytes (default 1 GiB)")
    ap.add_argument("--files", type=int, default=None, help="regular files (default 10,000)")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--hot-writes", type=int, default=HOT_WRITES)
    ap.add_argument("--workdir", default=None, help="where everything goes (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    total = args.bytes or (100 * MiB if args.quick else 1 * GiB)
    files = args.files or (1_000 if args.quick else 10_000)

    base = Path(args.workdir) if args.workdir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nfsj-bench-restore-", dir=base))
    for line in machine(work):
        say(line)
    say(f"tree: {total / MiB:.0f} MiB in {files} files ({'--quick' if args.quick else 'full size'}); "
        f"{args.shards} shard(s); proxy --durability sync; work dir {work}")
    say("")

    nas = shards = proxy = None
    try:
        export = work / "export"
        t_make, (n_files, n_bytes, small) = timed(make_tree, export / "data", total, files)
        say(f"tree written straight into the export dir (before ganesha starts): "
            f"{n_files} files, {n_bytes} bytes in {t_make:.1f}s")
        nas = start_ganesha(export, work / "ganesha")
        shards = [ShardProcess(work / f"shard{k}", k).start() for k in range(args.shards)]
        addresses = [s.address for s in shards]
        shard_args = [a for addr in addresses for a in ("--shard", addr)]
        proxy = ProxyProcess(nas, work / "log", durability="sync",
                             extra=[*shard_args, "--log-retain", "1h"]).start()

        # -- baseline -----------------------------------------------------------------------------
        t0 = time.perf_counter()
        done = nfsj("baseline", "--log", str(proxy.log_dir), "--quiet")
        t_baseline = time.perf_counter() - t0
        m = re.search(r"restorable from (\S+)", done.stdout)
        end = Stamp.parse(m.group(1))
        t1 = now_bound()
        wait_proven(addresses, max(end, t1))
        t_shipped = time.perf_counter() - t0
        say(f"baseline: nfsj baseline {t_baseline:.1f}s ({n_bytes / 1e6 / t_baseline:.1f} MB/s); "
            f"durable in the shards (consistent point past its end) after {t_shipped:.1f}s "
            f"({n_bytes / 1e6 / t_shipped:.1f} MB/s)")

        # -- whole-tree restore vs cp -a ------------------------------------------------------------
        # Twice, in both orders: the first to write a tree onto this disk pays
        # for cold file-system metadata (block groups, inode tables) that the
        # second finds warm, so one order alone favours whichever goes second.
        free_bytes = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        warm_bytes = min(max(2 * GiB, 2 * n_bytes), free_bytes // 2)
        warmed: list[float] = []

        def ready() -> None:
            sync()
            warmed.append(prewarm_memory(warm_bytes))

        def restore(dest: Path, *flags: str) -> tuple[float, float]:
            ready()
            t, _ = timed(nfsj, "restore", "--at", str(t1), "--to", str(dest), "--quiet", *flags,
                         *shard_args)
            return t, sync()

        def shards_cpu() -> float:
            return sum(process_cpu_s(s.proc.pid) for s in shards)

        def copy(dest: Path) -> tuple[float, float]:
            ready()
            t, _ = timed(subprocess.run, ["cp", "-a", str(export), str(dest)], check=True)
            return t, sync()

        dest = work / "restored"
        runs = {"restore": [restore(dest)], "cp": [copy(work / "copied")]}
        runs["cp"].append(copy(work / "copied2"))
        runs["restore"].append(restore(work / "restored2"))
        shutil.rmtree(work / "copied2")
        shutil.rmtree(work / "restored2")

        problems = diff(snapshot(export / "data", mtimes=True), snapshot(dest / "data", mtimes=True),
                        mtimes=True, names=("source", "restore"))
        if problems:
            raise SystemExit("the restored tree differs from the source:\n" + "\n".join(problems[:40]))

        def rates(seconds: float) -> str:
            return (f"{seconds:7.2f}s  {n_bytes / 1e6 / seconds:8.1f} MB/s  "
                    f"{n_files / seconds:8.0f} files/s")

        say("")
        say(f"whole-tree restore of {n_bytes / MiB:.0f} MiB in {n_files} files (verified equal to the source);")
        say(f"run restore, cp, cp, restore (each into a new directory), each right after touching "
            f"{warm_bytes / GiB:.0f} GiB of memory ({', '.join(f'{t:.1f}' for t in warmed)} s):")
        for k in range(2):
            (t_r, s_r), (t_c, s_c) = runs["restore"][k], runs["cp"][k]
            say(f"  nfsj restore --to DIR       {rates(t_r)}   (+ sync {s_r:.2f}s)")
            say(f"  cp -a (same tree, same disk) {rates(t_c)}   (+ sync {s_c:.2f}s)")
        t_restore = sum(t for t, _ in runs["restore"]) / 2
        t_cp = sum(t for t, _ in runs["cp"]) / 2
        with_sync = (sum(t + s for t, s in runs["cp"]) / sum(t + s for t, s in runs["restore"]))
        say(f"  ratio restore / cp -a (mean of both orders): throughput {t_cp / t_restore:.3f}x "
            f"(with sync: {with_sync:.3f}x); restore first: "
            f"{runs['cp'][0][0] / runs['restore'][0][0]:.3f}x, restore second: "
            f"{runs['cp'][1][0] / runs['restore'][1][0]:.3f}x")

        # The same restore with contents read through gRPC instead of the
        # shards' bulk ports, in both orders: what the bulk port buys.
        paths: dict[str, list[tuple[float, float]]] = {"bulk port": [], "gRPC": []}
        for k, order in enumerate((("gRPC", "bulk port"), ("bulk port", "gRPC"))):
            for how in order:
                before = shards_cpu()
                t, _ = restore(work / f"via-{how.replace(' ', '-')}-{k}",
                               *(["--no-bulk"] if how == "gRPC" else []))
                paths[how].append((t, shards_cpu() - before))
        for how, done in paths.items():
            say(f"  nfsj restore, contents via {how:9s} {', '.join(f'{t:.2f}s' for t, _ in done)}; "
                f"shards' CPU {', '.join(f'{c:.2f}s' for _, c in done)}")
        bulk_t, grpc_t = (sum(t for t, _ in paths[h]) / 2 for h in ("bulk port", "gRPC"))
        say(f"  bulk port / gRPC: throughput {grpc_t / bulk_t:.3f}x")

        # -- push-back and export reads ----------------------------------------------------------
        t0 = time.perf_counter()
        nfsj("restore", "--at", str(t1), "--to-nas", "--nas",
             f"127.0.0.1:{nas.nfs_port}:{nas.mount_port}:/export", "--into", "pushed", "--quiet",
             *shard_args)
        t_push = time.perf_counter() - t0
        t_nas_read, nas_bytes = timed(read_tree, nas.nfs_port, nas.mount_port, "data")
        exporting = subprocess.Popen([*NFSJ, "export", "--at", str(t1), "--listen", "127.0.0.1:0",
                                      *shard_args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        try:
            t0 = time.perf_counter()
            line = exporting.stdout.readline()
            m = re.search(r" on [^ ]+:(\d+)$", line.strip())
            if not m:
                raise SystemExit(f"nfsj export did not start: {line!r} {exporting.stderr.read()}")
            t_export_up = time.perf_counter() - t0
            port = int(m.group(1))
            t_export_read, export_bytes = timed(read_tree, port, port, "data")
        finally:
            exporting.terminate()
            exporting.wait(timeout=60)
        if nas_bytes != n_bytes or export_bytes != n_bytes:
            raise SystemExit(f"read {nas_bytes} bytes from the NAS and {export_bytes} from the export, "
                             f"expected {n_bytes}")
        say(f"  nfsj restore --to-nas       {rates(t_push)}   (ratio to cp -a {t_cp / t_push:.3f}x)")
        say(f"  read of the NAS (NFS, ours) {rates(t_nas_read)}")
        say(f"  read of nfsj export         {rates(t_export_read)}   (ratio to the NAS "
            f"{t_nas_read / t_export_read:.3f}x; the export started in {t_export_up:.2f}s)")

        # -- a file with 10,000 records ----------------------------------------------------------------
        rng = random.Random(2)
        size = 0
        t0 = time.perf_counter()
        with NfsClient("127.0.0.1", proxy.port, proxy.port, "/export", timeout_s=30) as c:
            c.mount()
            hot_dir = created_fh(c, c.mkdir(c.root, "hot", 0o755), c.root, "hot")
            hot = created_fh(c, c.create(hot_dir, "hot.bin", 0o644), hot_dir, "hot.bin")
            for _ in range(args.hot_writes - 1):
                offset = rng.randrange(0, 200 * KiB)
                data = rng.randbytes(rng.randrange(1, 256))
                c.write(hot, offset, data, StableHow.UNSTABLE)
                size = max(size, offset + len(data))
            c.commit(hot)
        t_hot = time.perf_counter() - t0
        t2 = now_bound()
        wait_proven(addresses, t2)
        say("")
        say(f"hot/hot.bin: CREATE + {args.hot_writes - 1} WRITEs + COMMIT through the proxy in {t_hot:.1f}s "
            f"({size} bytes)")
        startup = statistics.median(cli_startup() for _ in range(TTFB_RUNS))
        hot_runs = [cat_ttfb("hot/hot.bin", t2, shard_args, size) for _ in range(TTFB_RUNS)]
        small_size = (export / small).stat().st_size
        small_runs = [cat_ttfb(small, t2, shard_args, small_size) for _ in range(TTFB_RUNS)]
        say(f"  nfsj cat, time to first byte (median of {TTFB_RUNS}; process start to first byte):")
        say(f"    hot/hot.bin ({args.hot_writes} records)     "
            f"{statistics.median(r[0] for r in hot_runs):6.3f}s  (exit {statistics.median(r[1] for r in hot_runs):.3f}s)")
        say(f"    {small} (1 record)  {statistics.median(r[0] for r in small_runs):6.3f}s  "
            f"(exit {statistics.median(r[1] for r in small_runs):.3f}s)")
        say(f"    for reference, `nfsj cat --help` (CLI start-up): {startup:.3f}s")

        with Shards(addresses) as sh, RestoreClient(sh) as client:
            t_cut, cut = timed(client.cut, t2)
            t_tree, tree = timed(client.tree, cut)
            fh = tree.lookup("hot/hot.bin")
            t_read1, first = timed(client.read, cut, fh, 0, 64 * KiB)
            t_read2, again = timed(client.read, cut, fh, 0, 64 * KiB)
            if first != again or not first:
                raise SystemExit("RestoreClient.read gave different bytes twice")
            small_fh = tree.lookup(small)
            t_small, _ = timed(client.read, cut, small_fh, 0, 64 * KiB)
        n_entries = len(tree.nodes)
        say(f"  RestoreClient in-process (fresh client): cut {t_cut * 1e3:.0f} ms; "
            f"tree ({n_entries} objects) {t_tree * 1e3:.0f} ms;")
        say(f"    read of hot/hot.bin: first (rebuilds from {args.hot_writes} records) "
            f"{t_read1 * 1e3:.0f} ms, again (cached) {t_read2 * 1e3:.2f} ms; "
            f"first byte after cut = {(t_cut + t_tree + t_read1) * 1e3:.0f} ms")
        say(f"    read of {small} (1 record): first {t_small * 1e3:.1f} ms")
    finally:
        if proxy is not None:
            proxy.stop()
        for s in shards or []:
            s.stop()
        if nas is not None:
            nas.stop()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
