"""kill -9 of the proxy at any moment loses no acknowledged record (DESIGN.md).

A sequential writer (our `NfsClient`, in the test process) writes distinct
4 KiB blocks through a `--durability sync` (or `strict`) proxy, on either
data plane, and notes every WRITE whose
reply it saw. At a random moment (seeded) the proxy gets SIGKILL. Once the
writer has seen the failure, the LOG is reopened and checked:

* it opens cleanly and every frame verifies (a torn tail may be cut: that is
  a write nobody was told about);
* every acknowledged WRITE is there, at its offset, with its exact bytes;
* every WRITE that is there is one the client sent, with the bytes it sent;
* for this one sequential client, LOG order is stamp order, and stamps keep
  increasing across restarts.

Then the proxy restarts on the same LOG (a new port), the writer reconnects,
retries the write that failed, and goes on; five rounds.
"""

from __future__ import annotations

import random
import struct
import threading
from pathlib import Path

import pytest

from e2e.proxy_fixture import read_log
from logstore.log import Log
from logstore.record import Op, Record
from logstore.stamp import Stamp
from nfsproxy.nas.client import ClientError, NfsClient, created_fh
from nfsproxy.wire.nfs3 import StableHow

pytestmark = pytest.mark.ganesha

SEED = 0x5EEDC0DE
ROUNDS = 5
BLOCK = 4096
KILL_AFTER_S = (0.05, 0.6)
CLIENT_TIMEOUT_S = 20.0  # detects a hang; a killed proxy fails the call at once
FILE_NAME = "crash.bin"


def payload(i: int) -> bytes:
    """Block i: its counter, then bytes no other block has."""
    return struct.pack(">Q", i) + random.Random(i * 7919 + SEED).randbytes(BLOCK - 8)


def check_log(log_dir: Path, fh: bytes, sent: set[int], acked: list[int]) -> list[tuple[int, Record]]:
    """Every assertion about a LOG after a crash; returns its records."""
    with Log.open(log_dir, verify_all=True) as log:  # recovers a torn tail, then checks every frame
        assert log.verify() == log.last_seq - log.first_seq + 1
    entries = read_log(log_dir)
    seqs = [seq for seq, _ in entries]
    assert seqs == list(range(1, len(entries) + 1)), "the LOG's seqs are not contiguous"

    stamps = [Stamp.from_bytes(r.stamp) for _, r in entries]
    out_of_order = [(a, b) for a, b in zip(stamps, stamps[1:]) if not a < b]
    assert not out_of_order, f"stamps not increasing in LOG order: {out_of_order[:3]}"

    writes = [r for _, r in entries if r.op == Op.WRITE]
    blocks = []
    for r in writes:
        i, rest = divmod(r.offset, BLOCK)
        assert rest == 0 and i in sent, f"a WRITE nobody sent: offset {r.offset}"
        assert r.fh == fh and r.ok and r.count == BLOCK and r.reply_count == BLOCK
        assert r.data == payload(i), f"block {i}: journaled bytes differ from the bytes sent"
        blocks.append(i)
    # A sequential writer: blocks in order (a retried block may appear twice in a row).
    assert blocks == sorted(blocks)
    missing = sorted(set(acked) - set(blocks))
    assert not missing, f"acknowledged WRITEs lost by kill -9: blocks {missing[:10]} ({len(missing)})"
    return entries


# The Python plane holds every reply for its record's fsync in sync and strict
# alike; the native plane does in strict (its sync answers UNSTABLE writes at
# once, test_native_durability.py).
@pytest.mark.parametrize("durability,plane", [("sync", "python"), ("strict", "python"),
                                              ("strict", "native")])
def test_kill_9_loses_no_acknowledged_write(nas, proxy_factory, durability, plane):
    rng = random.Random(SEED)
    proxy = proxy_factory(durability=durability, extra=["--data-plane", plane])
    sent: set[int] = set()
    acked: list[int] = []
    next_block = 0
    fh: bytes | None = None
    last_stamp: Stamp | None = None

    for round_no in range(ROUNDS):
        if round_no:
            proxy.start()  # the same LOG directory, a new port
        client = NfsClient("127.0.0.1", proxy.port, proxy.port, "/export",
                           machine_name="nfsj-crash", timeout_s=CLIENT_TIMEOUT_S)
        root = client.mount()
        if fh is None:
            fh = created_fh(client, client.create(root, FILE_NAME, 0o644), root, FILE_NAME)

        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proxy.kill()  # SIGKILL

        killer = threading.Timer(rng.uniform(*KILL_AFTER_S), kill)
        killer.start()
        failure: BaseException | None = None
        try:
            while True:
                i = next_block  # after a failure, the same block is tried again next round
                sent.add(i)
                client.write(fh, i * BLOCK, payload(i), StableHow.UNSTABLE)
                acked.append(i)
                next_block += 1
        except (OSError, ClientError) as e:
            failure = e
        finally:
            killer.join()
            client.close()
        assert killed.is_set() and not proxy.alive()
        assert not isinstance(failure, TimeoutError), "the writer hung instead of seeing the kill"

        entries = check_log(proxy.log_dir, fh, sent, acked)
        print(f"round {round_no}: {len(acked)} acked, failed at block {next_block} ({failure!r}), "
              f"{len(entries)} records, last WRITE block "
              f"{max((r.offset // BLOCK for _, r in entries if r.op == Op.WRITE), default=None)}")
        round_stamps = [Stamp.from_bytes(r.stamp) for _, r in entries]
        if last_stamp is not None:
            new = [s for s in round_stamps if s > last_stamp]
            assert new, f"round {round_no}: nothing journaled after the restart"
            # Strictly after the previous round's last stamp, in LOG order too.
            assert round_stamps[len(round_stamps) - len(new):] == new
        last_stamp = round_stamps[-1]

    # One more restart: the writer finishes, the proxy stops cleanly.
    proxy.start()
    with NfsClient("127.0.0.1", proxy.port, proxy.port, "/export", machine_name="nfsj-crash",
                   timeout_s=CLIENT_TIMEOUT_S) as client:
        client.mount()
        sent.add(next_block)
        client.write(fh, next_block * BLOCK, payload(next_block), StableHow.FILE_SYNC)
        acked.append(next_block)
    assert proxy.stop() == 0, proxy.stderr_text()
    entries = check_log(proxy.log_dir, fh, sent, acked)
    assert Stamp.from_bytes(entries[-1][1].stamp) > last_stamp
    assert len(acked) > ROUNDS, "the writer barely wrote; the kills proved little"

    # The NAS has every acknowledged block too.
    data = (nas.export_dir / FILE_NAME).read_bytes()
    for i in acked:
        assert data[i * BLOCK:(i + 1) * BLOCK] == payload(i), f"block {i} on the NAS"
