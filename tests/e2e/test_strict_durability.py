"""`--durability strict`: every mutation's reply, an UNSTABLE WRITE's too, leaves
only after its record's fsync, on either data plane.

One client writes one block at a time, so nothing else is in flight: each
reply the client holds must find the LOG synced up to its record. The proxy's
own metrics say so after every reply (`nfsj_log_unsynced_records` is 0), and
since every write then needs an fsync of its own (none can share the next
one's: the next call is sent only after this reply), the LOG counts at least
one fsync per write. The LOG holds every write with its bytes.
"""

from __future__ import annotations

import random

import pytest

from e2e.proxy_fixture import read_log
from e2e.test_metrics import _free_port, scrape, value
from logstore.record import Op
from nfsproxy.nas.client import NfsClient, created_fh
from nfsproxy.wire.nfs3 import StableHow

pytestmark = pytest.mark.ganesha

BLOCK = 4096
WRITES = 40


@pytest.mark.parametrize("plane", ["python", "native"])
def test_strict_replies_after_the_records_fsync(nas, proxy_factory, plane):
    metrics = _free_port()
    proxy = proxy_factory(durability="strict",
                          extra=["--data-plane", plane, "--metrics", f"127.0.0.1:{metrics}"])
    blocks = [random.Random(i).randbytes(BLOCK) for i in range(WRITES)]
    with NfsClient("127.0.0.1", proxy.port, proxy.port, "/export", machine_name="nfsj-strict") as c:
        root = c.mount()
        fh = created_fh(c, c.create(root, "strict.bin", 0o644), root, "strict.bin")
        before = scrape(metrics)
        for i, block in enumerate(blocks):
            c.write(fh, i * BLOCK, block, StableHow.UNSTABLE)
            unsynced = value(scrape(metrics), "nfsj_log_unsynced_records")
            assert unsynced == 0, f"write {i} was answered with {unsynced:.0f} records not yet fsynced"
        after = scrape(metrics)
    fsyncs = value(after, "nfsj_log_fsyncs_total") - value(before, "nfsj_log_fsyncs_total")
    assert fsyncs >= WRITES, f"{WRITES} writes answered one at a time after only {fsyncs:.0f} fsyncs"
    assert proxy.stop() == 0, proxy.stderr_text()
    journaled = {(r.offset, bytes(r.data)) for _, r in read_log(proxy.log_dir)
                 if r.op == Op.WRITE and bytes(r.fh) == fh}
    assert journaled == {(i * BLOCK, b) for i, b in enumerate(blocks)}


def test_sync_does_not_fsync_for_each_unstable_write(nas, proxy_factory):
    """`sync` on the native plane: an UNSTABLE WRITE's reply promises nothing,
    so its record joins the next group commit instead of forcing an fsync of
    its own; the COMMIT that makes the writes stable is answered only once
    they are durable."""
    metrics = _free_port()
    proxy = proxy_factory(durability="sync",
                          extra=["--data-plane", "native", "--metrics", f"127.0.0.1:{metrics}"])
    blocks = [random.Random(i).randbytes(BLOCK) for i in range(WRITES)]
    with NfsClient("127.0.0.1", proxy.port, proxy.port, "/export", machine_name="nfsj-sync") as c:
        root = c.mount()
        fh = created_fh(c, c.create(root, "sync.bin", 0o644), root, "sync.bin")
        before = scrape(metrics)
        for i, block in enumerate(blocks):
            c.write(fh, i * BLOCK, block, StableHow.UNSTABLE)
        during = scrape(metrics)
        c.commit(fh)
        # The COMMIT is written ahead: answered once its intent, appended after
        # every write's record, is durable. Its own record follows at the reply
        # and may be the one record not synced yet; the LOG syncs in order.
        assert value(scrape(metrics), "nfsj_log_unsynced_records") <= 1, "COMMIT answered before the writes were durable"
    fsyncs = value(during, "nfsj_log_fsyncs_total") - value(before, "nfsj_log_fsyncs_total")
    assert fsyncs <= WRITES * 3 // 4, f"{WRITES} UNSTABLE writes cost {fsyncs:.0f} fsyncs"
    assert proxy.stop() == 0, proxy.stderr_text()
    journaled = {(r.offset, bytes(r.data)) for _, r in read_log(proxy.log_dir)
                 if r.op == Op.WRITE and bytes(r.fh) == fh}
    assert journaled == {(i * BLOCK, b) for i, b in enumerate(blocks)}
