"""Shipping the LOG to recovery shards, end to end, with real processes (DESIGN.md,
"Data path" step 4, and "What bad input and faults get").

Every test runs real nfs-ganesha, two `nfsj recoveryd` shards and
`nfsj proxy --shard A --shard B` in front of ganesha; clients (nfs-rs,
libnfs-utils, through `e2e.workload`) talk to the proxy. Faults:

* kill -9 of a shard mid-workload, and a restart on the same data directory
  and port;
* a shard that loses its disk (killed, data directory deleted, restarted
  empty on the same port): the shipper rewinds and rebuilds it from the LOG;
* both shards down: the proxy keeps serving, the LOG grows, `nfsj status`
  shows the lag growing; once they return, everything drains.

Each ends the same way (`drain` then `check_shards_hold_log`): once the
workload is over, wait until the consistent point passes a stamp the proxy
handed out after the last call, stop everything, and check that the shards
together hold exactly the records of the LOG, each on the shard(s) the
sharding rule names, nothing lost, nothing doubled.

Timeouts only detect hangs; no assertion is about speed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any, Callable, TypeVar

import pytest

from e2e.proxy_fixture import ProxyProcess, read_log
from e2e.shard_fixture import ShardProcess
from e2e.workload import connect, run_workload
from logstore.record import Op, Record
from logstore.stamp import Stamp
from logstore.sharding import EVERY_SHARD, ROUTING_FIELD, shards_of
from recoveryd.status import read_proxy_status

pytestmark = [pytest.mark.ganesha, pytest.mark.timeout(900)]

N_SHARDS = 2
HANG_S = 240.0          # a wait longer than this is a hang, not slowness
POLL_S = 0.2
CLI_TIMEOUT_S = 60.0

T = TypeVar("T")


# -- the stack -----------------------------------------------------------------


@dataclasses.dataclass
class Stack:
    nas: Any
    shards: list[ShardProcess]
    proxy: ProxyProcess


@pytest.fixture
def stack(nas, shard_factory, proxy_factory) -> Stack:
    """ganesha, two shards, and a sync proxy shipping to them."""
    shards = [shard_factory(k) for k in range(N_SHARDS)]
    extra = ["--log-retain", "1h"]
    for shard in shards:
        extra += ["--shard", shard.address]
    proxy = proxy_factory(durability="sync", extra=extra)
    return Stack(nas, shards, proxy)


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = HANG_S) -> T:
    """Poll `probe` until it returns something truthy; fail (a hang) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"hang: still waiting, after {timeout_s:g}s, for {what}")
        time.sleep(POLL_S)


def nfsj(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nfsproxy", *args], capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S)


def status_json(proxy: ProxyProcess) -> tuple[int, dict[str, Any]]:
    """`nfsj status --log DIR --json`: (exit code, the parsed view)."""
    done = nfsj("status", "--log", str(proxy.log_dir), "--json")
    assert done.returncode in (0, 1), f"nfsj status failed:\n{done.stdout}\n{done.stderr}"
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError as e:
        pytest.fail(f"nfsj status --json printed no JSON ({e}):\n{done.stdout}\n{done.stderr}")


def proxy_status_after(proxy: ProxyProcess, after_ns: int) -> dict[str, Any]:
    """The first status.json the proxy writes after `after_ns` (time.time_ns())."""
    def probe():
        try:
            st = read_proxy_status(proxy.log_dir)
        except Exception:  # noqa: BLE001  not written yet, or being replaced
            return None
        return st if st.get("written_unix_ns", 0) > after_ns else None
    assert proxy.alive(), proxy.stderr_text()
    return wait_for("a fresh status.json", probe)


def drain(stack: Stack) -> tuple[Stamp, dict[str, Any]]:
    """Wait until the shards prove everything the proxy journaled so far.

    Call it once no client is active. A status.json written after this call
    names `newest`, a stamp the proxy's clock gave after every record so far
    was stamped. Waits until `nfsj status` shows every shard up, every
    shipper with lag_records 0, and a consistent point above that stamp.
    Returns (the consistent point, the status view).
    """
    last = Stamp.parse(proxy_status_after(stack.proxy, time.time_ns())["newest"])

    def probe():
        rc, view = status_json(stack.proxy)
        point = view["consistent_point"]
        shippers = (view["proxy"] or {}).get("shards") or []
        if (rc == 0 and point is not None and Stamp.parse(point["stamp"]) > last
                and len(shippers) == N_SHARDS
                and all(s["lag_records"] == 0 and s["connected"] for s in shippers)):
            return Stamp.parse(point["stamp"]), view
        return None
    return wait_for(f"the consistent point to pass {last} with nothing left to ship", probe)


# -- the check: the shards hold exactly the LOG ------------------------------------


def canonical(record: Record) -> bytes:
    """A record's bytes minus the LOG's `seq` (which only the LOG knows)."""
    r = Record()
    r.CopyFrom(record)
    r.ClearField("seq")
    return r.SerializeToString(deterministic=True)


def digest(rows: dict[bytes, bytes]) -> str:
    """sha256 over (stamp, canonical record) in stamp order."""
    h = hashlib.sha256()
    for stamp in sorted(rows):
        h.update(stamp)
        h.update(len(rows[stamp]).to_bytes(8, "big"))
        h.update(rows[stamp])
    return h.hexdigest()


def check_shards_hold_log(stack: Stack, point: Stamp) -> dict[str, int]:
    """Stop everything; the shards together hold exactly the LOG's records.

    Each record is on exactly the shards `sharding.shards_of` names: one, or
    every shard for BASELINE_BEGIN/BASELINE_END. Returns counts for the report.
    """
    assert stack.proxy.stop() == 0, stack.proxy.stderr_text()[-4000:]
    for shard in stack.shards:
        assert shard.stop() == 0, shard.stderr_text()[-4000:]

    log_rows: dict[bytes, bytes] = {}
    expected: list[set[bytes]] = [set() for _ in stack.shards]
    ops = Counter()
    for seq, record in read_log(stack.proxy.log_dir):
        assert len(record.stamp) == Stamp.BYTES, f"LOG seq {seq} has no stamp"
        assert record.stamp not in log_rows, f"LOG seq {seq}: stamp {Stamp.from_bytes(record.stamp)} twice"
        log_rows[record.stamp] = canonical(record)
        ops[Op.Name(record.op)] += 1
        for k in shards_of(record, N_SHARDS):
            expected[k].add(record.stamp)
    assert log_rows, "the LOG is empty: the test proved nothing"
    newest = Stamp.from_bytes(max(log_rows))
    assert newest < point, f"the consistent point {point} does not cover the LOG's newest stamp {newest}"

    merged: dict[bytes, bytes] = {}
    held_by: Counter[bytes] = Counter()
    shard_counts = []
    for k, shard in enumerate(stack.shards):
        with shard.open_store() as store:
            rows = {}
            for record in store.records():
                rows[record.stamp] = canonical(record)
                assert k in shards_of(record, N_SHARDS), (
                    f"shard {k} holds {Op.Name(record.op)} {Stamp.from_bytes(record.stamp)}, "
                    f"which belongs on shard(s) {list(shards_of(record, N_SHARDS))}")
            assert store.records_total == len(rows), (
                f"shard {k} counts {store.records_total} records but holds {len(rows)}")
        missing = expected[k] - rows.keys()
        extra = rows.keys() - expected[k]
        assert not missing, (f"shard {k} lacks {len(missing)} of the LOG's records, e.g. "
                             f"{[str(Stamp.from_bytes(s)) for s in sorted(missing)[:5]]}")
        assert not extra, (f"shard {k} holds {len(extra)} records the LOG does not, e.g. "
                           f"{[str(Stamp.from_bytes(s)) for s in sorted(extra)[:5]]}")
        for stamp, body in rows.items():
            if stamp in merged:
                assert merged[stamp] == body, f"stamp {Stamp.from_bytes(stamp)} differs between shards"
            merged[stamp] = body
            held_by[stamp] += 1
        shard_counts.append(len(rows))

    every_shard = {op for op, field in ROUTING_FIELD.items() if field == EVERY_SHARD}
    n_every = sum(ops[Op.Name(op)] for op in every_shard)
    assert len(merged) == len(log_rows)
    assert merged.keys() == log_rows.keys()
    assert sum(shard_counts) == len(log_rows) + (N_SHARDS - 1) * n_every
    assert digest(merged) == digest(log_rows), "the shards' records differ from the LOG's"
    assert all(n == 1 or Record.FromString(merged[s]).op in every_shard
               for s, n in held_by.items())
    print(f"LOG {len(log_rows)} records {dict(ops)}; shards hold {shard_counts}; "
          f"consistent point {point}")
    return {"log": len(log_rows), **{f"shard{k}": n for k, n in enumerate(shard_counts)}}


# -- helpers for the scenarios --------------------------------------------------------


class Background:
    """Run `fn` in a thread; `join()` re-raises what it raised."""

    def __init__(self, fn: Callable[[], object]):
        self.error: BaseException | None = None
        self.result: object = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn):
        try:
            self.result = fn()
        except BaseException as e:  # noqa: BLE001  handed to join()
            self.error = e

    def running(self) -> bool:
        return self._thread.is_alive()

    def check(self) -> bool:
        """True while it runs or ended well; raises what it raised."""
        if self.error is not None:
            raise self.error
        return True

    def join(self, timeout_s: float = HANG_S * 2):
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            pytest.fail(f"hang: the workload still runs after {timeout_s:g}s")
        if self.error is not None:
            raise self.error
        return self.result


def shipper(stack: Stack, k: int) -> dict[str, Any]:
    st = read_proxy_status(stack.proxy.log_dir)
    return st["shards"][k]


def log_last_seq(stack: Stack) -> int:
    return read_proxy_status(stack.proxy.log_dir)["last_seq"]


def write_files(url: str, prefix: str, count: int, size: int) -> None:
    """`count` new files of `size` bytes below the new directory `prefix`, via nfs-rs."""
    with connect(url) as client:
        client.mkdir(prefix, 0o755)
        for i in range(count):
            path = f"{prefix}/f{i:04d}"
            with client.open(path, "w+b") as f:
                f.write_at(bytes([i % 251]) * size, 0)


def run_baseline(stack: Stack) -> None:
    done = nfsj("baseline", "--log", str(stack.proxy.log_dir), "--quiet")
    assert done.returncode == 0, f"nfsj baseline failed:\n{done.stdout}\n{done.stderr}"


# -- the scenarios ---------------------------------------------------------------


def test_kill_9_shard_mid_workload(stack: Stack):
    """kill -9 of shard 1 while clients write, twice, each time restarted on the same
    directory and port; the LOG reaches the shards whole."""
    shard = stack.shards[1]
    stop_writing = threading.Event()
    work = Background(lambda: run_workload(stack.proxy.url(), root="w", seed=11, random_ops=600))
    # A writer that keeps going until told: the LOG grows through every kill.
    steady = Background(lambda: write_until(stack.proxy.url(), "steady", stop_writing))
    caught_up_to = 0
    for round_no in range(3):
        # Mid-workload: shard 1 has acked past the previous kill (so it came back
        # and caught up), and the LOG is still growing.
        acked = wait_for(f"shard 1 to ack past seq {caught_up_to}",
                         lambda: (a := shipper(stack, 1)["acked_seq"]) > caught_up_to and a)
        shard.kill()
        seq_at_kill = log_last_seq(stack)
        # While it is down the proxy keeps journaling: clients are not held up.
        seq_down = wait_for("the LOG to grow while shard 1 is down",
                            lambda: steady.check() and (n := log_last_seq(stack)) > seq_at_kill and n)
        shard.start()  # the same data directory, the same port
        print(f"round {round_no}: killed shard 1 at acked seq {acked}, LOG seq {seq_at_kill}; "
              f"LOG at seq {seq_down} when restarted on {shard.address}"
              f"{'' if work.running() else ' (workload done)'}")
        assert shard.starts == round_no + 2
        caught_up_to = seq_down
    work.join()
    stop_writing.set()
    steady.join()
    point, _ = drain(stack)
    check_shards_hold_log(stack, point)


def test_a_shard_killed_before_its_flush_gets_what_it_lost_from_the_log(stack: Stack):
    """The shard acks batches once it holds them and makes them durable up
    to a second later (IngestBatch.defer_durable). kill -9 it in
    between, while a client writes: what it held but had not made durable is
    gone from its disk, the proxy's LOG still has it (it trims only below
    what shards made durable), and the shipper resends it after the
    restart; nothing is lost, nothing doubled, no gap."""
    shard = stack.shards[0]
    stop_writing = threading.Event()
    # Batches of 256 KiB or more are deferred (smaller ones alone take the WAL).
    steady = Background(lambda: write_fast_until(stack.proxy.url(), "fast", stop_writing))
    durable = 0
    for round_no in range(3):
        durable = wait_for(f"shard 0 to make records past seq {durable} durable",
                           lambda: steady.check() and (a := shipper(stack, 0)["acked_seq"]) > durable and a)
        time.sleep(0.1 + 0.3 * round_no)  # somewhere in its flush cycle
        shard.kill()
        with shard.open_store() as store:
            [state] = store.streams().values()
        assert state.durable_seq >= durable, "the shard lost records it had acked durable"
        shard.start()
        durable = wait_for("shard 0 to make records durable again after its restart",
                           lambda: steady.check() and (a := shipper(stack, 0)["acked_seq"]) > state.durable_seq and a)
    resent = re.findall(r"shard 0 restarted before seqs (\d+)\.\.(\d+) were durable there",
                        stack.proxy.stderr_text())
    print(f"resent after a kill -9 before the flush: {resent}")
    assert resent, "no kill caught shard 0 holding records it had not made durable yet"
    stop_writing.set()
    steady.join()
    point, _ = drain(stack)
    assert shipper(stack, 0)["gaps_total"] == 0
    check_shards_hold_log(stack, point)


def write_until(url: str, prefix: str, stop: threading.Event) -> int:
    """Write 4 KiB blocks into one file, via nfs-rs, until `stop` is set; returns the count."""
    with connect(url) as client:
        client.mkdir(prefix, 0o755)
        n = 0
        with client.open(f"{prefix}/blocks", "w+b") as f:
            while not stop.is_set():
                f.write_at(n.to_bytes(8, "big") * 512, n * 4096 % (8 << 20))
                n += 1
                time.sleep(0.002)
        return n


def write_fast_until(url: str, prefix: str, stop: threading.Event, files: int = 8) -> int:
    """Write 64 KiB blocks, without pause, round robin into `files` files (so
    every shard gets some), via nfs-rs, until `stop` is set; returns the count."""
    with connect(url) as client:
        client.mkdir(prefix, 0o755)
        handles = [client.open(f"{prefix}/f{k}", "w+b") for k in range(files)]
        n = 0
        try:
            while not stop.is_set():
                handles[n % files].write_at(n.to_bytes(8, "big") * 8192, n // files * 65536 % (4 << 20))
                n += 1
        finally:
            for f in handles:
                f.close()
        return n


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_wiped_shard_is_rebuilt_from_the_log(stack: Stack, how: str):
    """A shard that loses its data directory comes back empty on the same port; the
    shipper rewinds to seq 1 and resends, while clients keep writing."""
    run_workload(stack.proxy.url(), root="w", seed=22, libnfs=False)
    run_baseline(stack)  # BASELINE_BEGIN/END go to every shard: the rebuild must bring them too
    drain(stack)
    _, before = status_json(stack.proxy)
    old = before["shards"][0]
    assert old["records"] > 0

    more = Background(lambda: write_files(stack.proxy.url(), "during-wipe", 200, 8192))
    victim = stack.shards[0]
    getattr(victim, how)()  # kill -9, or a clean stop
    victim.wipe()
    assert not victim.data_dir.exists()
    victim.start()  # empty, on the same port
    more.join()

    point, after = drain(stack)
    new = after["shards"][0]
    assert new["data_id"] != old["data_id"], "the wiped shard came back with its old data"
    assert new["records"] > old["records"], "the rebuilt shard holds less than before the wipe"
    check_shards_hold_log(stack, point)


def test_both_shards_down_back_pressure_not_loss(stack: Stack):
    """With every shard down the proxy keeps serving and the LOG grows; `nfsj status`
    shows the lag growing; when the shards return, everything drains."""
    write_files(stack.proxy.url(), "before", 20, 4096)
    drain(stack)
    for shard in stack.shards:
        shard.kill()

    # Client writes succeed with no shard up.
    run_workload(stack.proxy.url(), root="down1", seed=33, libnfs=False)
    rc1, view1 = wait_for("a status showing the first writes",
                          lambda: (r := status_after_writes(stack)) and r)
    write_files(stack.proxy.url(), "down2", 100, 16384)
    rc2, view2 = wait_for("a status showing the second writes",
                          lambda: (r := status_after_writes(stack)) and r)

    for rc, view in ((rc1, view1), (rc2, view2)):
        assert rc == 1, "nfsj status must exit 1 while shards are down"
        assert view["shards_down"] == N_SHARDS and view["shards_up"] == 0
        assert all(not s["up"] and s["error"] for s in view["shards"])
        assert view["consistent_point"] is None
        assert "down" in view["consistent_point_reason"]
        assert all(not s["connected"] for s in view["proxy"]["shards"])
    p1, p2 = view1["proxy"], view2["proxy"]
    assert p2["last_seq"] > p1["last_seq"], "the LOG did not grow while the shards were down"
    assert p2["log_bytes"] > p1["log_bytes"]
    for k in range(N_SHARDS):
        lag1, lag2 = p1["shards"][k]["lag_records"], p2["shards"][k]["lag_records"]
        assert 0 < lag1 < lag2, f"shipper {k}: lag_records {lag1} then {lag2}, not growing"
        assert p2["shards"][k]["acked_seq"] == p1["shards"][k]["acked_seq"]
    human = nfsj("status", "--log", str(stack.proxy.log_dir))
    assert human.returncode == 1
    assert human.stdout.startswith("consistent point: none"), human.stdout
    assert sum(" DOWN " in line for line in human.stdout.splitlines()) == N_SHARDS, human.stdout

    for shard in stack.shards:
        shard.start()
    point, view = drain(stack)
    assert all(s["lag_records"] == 0 for s in view["proxy"]["shards"])
    check_shards_hold_log(stack, point)


def status_after_writes(stack: Stack) -> tuple[int, dict[str, Any]]:
    """`nfsj status --json` over a status.json written after the writes so far."""
    proxy_status_after(stack.proxy, time.time_ns())
    return status_json(stack.proxy)


def test_status_shows_frontiers_records_bytes_lag_and_consistent_point(stack: Stack):
    write_files(stack.proxy.url(), "status", 30, 4096)
    run_baseline(stack)
    point, view = drain(stack)

    done = nfsj("status", "--log", str(stack.proxy.log_dir))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    print(text)
    m = re.search(r"^consistent point: (\S+)  (\S+)$", text, re.MULTILINE)
    assert m, f"no consistent point in:\n{text}"
    assert Stamp.parse(m.group(1)) >= point  # heartbeats keep moving it on
    header = next(line for line in text.splitlines() if line.startswith("SHARD"))
    columns = header.replace("FRONTIER TIME", "FRONTIER_TIME").split()
    for column in ("FRONTIER", "RECORDS", "BYTES", "LAG"):
        assert column in columns, f"no {column} column in {header!r}"
    for shard_view in view["shards"]:
        row = next((line for line in text.splitlines()
                    if line.split()[1:2] == [shard_view["address"]]), None)
        assert row is not None, f"no row for shard {shard_view['address']} in:\n{text}"
        cells = row.split()
        assert len(cells) == len(columns), (columns, cells)
        cell = dict(zip(columns, cells))
        assert cell["SHARD"] == str(shard_view["shard_id"])
        assert cell["STATE"] == "up"
        assert Stamp.parse(cell["FRONTIER"]) >= Stamp.parse(shard_view["frontier"]["stamp"])
        assert int(cell["RECORDS"]) == shard_view["records"] > 0
        value, unit = parse_size(cell["BYTES"])
        assert abs(value * unit - shard_view["bytes"]) <= 0.05 * unit, (cell["BYTES"], shard_view["bytes"])
        assert re.fullmatch(r"\d+\.\ds", cell["LAG"]), cell["LAG"]
    # The shippers' table: both connected, nothing to ship.
    shipper_rows = [line for line in text.splitlines()
                    if any(line.startswith(s.address) for s in stack.shards)]
    assert len(shipper_rows) == N_SHARDS, text
    for line in shipper_rows:
        address, connected, _durable, _held, _frontier, lag_records, *_ = line.split()
        assert connected == "yes" and lag_records == "0", line

    rc, parsed = status_json(stack.proxy)  # --json parses (status_json checks)
    assert rc == 0 and parsed["consistent_point"] is not None
    assert {s["address"] for s in parsed["shards"]} == {s.address for s in stack.shards}
    check_shards_hold_log(stack, point)


def parse_size(text: str) -> tuple[float, int]:
    """`nfsj status`'s size cell ("512B", "1.2MiB") as (number, bytes per unit)."""
    m = re.fullmatch(r"([\d.]+)(B|KiB|MiB|GiB|TiB)", text)
    assert m, f"not a size: {text!r}"
    return float(m.group(1)), 1024 ** ("B", "KiB", "MiB", "GiB", "TiB").index(m.group(2))
