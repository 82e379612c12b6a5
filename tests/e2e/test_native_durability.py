"""`sync` durability on the native plane follows NFS's own contract (RFC 1813, 3.3.7).

UNSTABLE WRITE replies go out at once, before their records are durable; in
exchange the write verifier clients see is made from the NAS's and the
proxy's incarnation. A kill -9 of the proxy may lose those records, and the
restarted proxy's verifier differs: a client's COMMIT shows it, and the
client resends its uncommitted writes, as it would after a NAS reboot. The
LOG then holds every resent write, and a restore past the (healed) restart
equals the NAS.
"""

from __future__ import annotations

import random

import pytest

from e2e.proxy_fixture import read_log
from e2e.test_gaps import GapStack, now_bound
from logstore.record import Op
from nfsproxy.wire.nfs3 import StableHow

pytestmark = pytest.mark.ganesha

BLOCK = 4096
N_BLOCKS = 64


@pytest.fixture
def shard(shard_factory):
    return shard_factory(0)


def test_a_restart_makes_clients_resend_uncommitted_writes(nas, shard, proxy_factory, tmp_path):
    log_dir = tmp_path / "log"
    stack = GapStack(nas, shard, proxy_factory, extra=["--data-plane", "native"], log_dir=log_dir)
    stack.write_file("before", b"before the restart\n")
    stack.baseline()
    blocks = [random.Random(i).randbytes(BLOCK) for i in range(N_BLOCKS)]
    c = stack.client()
    fh = bytes(c.create(c.mount(), "unstable.bin", 0o644).obj)
    verifiers = {bytes(c.write(fh, i * BLOCK, b, StableHow.UNSTABLE).verf) for i, b in enumerate(blocks)}
    assert len(verifiers) == 1
    stack.proxy.kill()  # -9, the writes uncommitted: their records may never have reached the disk
    c.close()

    stack.proxy = proxy_factory(extra=stack.extra, log_dir=log_dir)
    assert "did not stop cleanly" in stack.proxy.stderr_text()
    with stack.client() as c:
        after_restart = bytes(c.commit(fh).verf)
        assert after_restart not in verifiers, "the restart must change the verifier"
        # What an NFS client does when a COMMIT's verifier changed: resend, commit again.
        resent = {bytes(c.write(fh, i * BLOCK, b, StableHow.UNSTABLE).verf) for i, b in enumerate(blocks)}
        assert resent == {after_restart}
        assert bytes(c.commit(fh).verf) == after_restart
    assert (nas.export_dir / "unstable.bin").read_bytes() == b"".join(blocks)

    # The baseline heals the restart's gap; past it, a restore equals the NAS.
    _, end = stack.baseline()
    later = now_bound(past=end)
    stack.proven_past(later)
    assert stack.restore(later, tmp_path / "restored").returncode == 0
    assert (tmp_path / "restored" / "unstable.bin").read_bytes() == b"".join(blocks)
    stack.proxy.stop()
    writes = [r for _, r in read_log(log_dir) if r.op == Op.WRITE and bytes(r.fh) == fh]
    journaled = {(r.offset, bytes(r.data)) for r in writes}
    assert {(i * BLOCK, b) for i, b in enumerate(blocks)} <= journaled
