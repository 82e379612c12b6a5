"""A proxy moving megabytes keeps using the memory it has, not fresh pages.

Each 1 MiB WRITE is read into a buffer, and each shipped batch reads MiBs of
LOG frames and hands them to gRPC. Memory that the allocator gives back
after every call or batch has to be faulted in (and zeroed) again for the
next one: on the test VM that cost the relay a sixth and the shippers half
of their CPU per GiB. Counted here as the proxy process's minor page
faults per MiB written and shipped, once its first batches have grown the
heap.
"""

from __future__ import annotations

import pytest

from e2e.test_membership import wait_shipped
from e2e.test_metrics import _free_port, scrape, value
from nfsproxy.nas.client import NfsClient, created_fh
from nfsproxy.ship.fanout import DEFAULT_FANOUT_BYTES
from nfsproxy.wire.nfs3 import StableHow

pytestmark = pytest.mark.ganesha

MiB = 1 << 20
PAGES_PER_MiB = MiB // 4096
#: The shared LOG reader's read size at its default cap (``Fanout::read_bytes``).
READER_BUFFER_BYTES = 4 * MiB


def reader_buffers(metrics_port: int, n_shards: int) -> int:
    """Read buffers the shared LOG reader has allocated (no reader with one shard)."""
    if n_shards < 2:
        return 0
    return int(value(scrape(metrics_port), "nfsj_shipping_shared_buffers_allocated_total"))


def minor_faults(pid: int) -> int:
    # /proc/PID/stat: the command name may hold spaces, so count from its ')'.
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[7])  # minflt, the 10th field of the whole line


@pytest.mark.parametrize("n_shards", [1, 2])
def test_megabytes_written_and_shipped_fault_in_few_pages(nas, shard_factory, proxy_factory,
                                                           n_shards):
    """With two shards the shippers share one reader of the LOG, which keeps
    what it read for both: its regions must be memory used again too. It
    keeps as many read buffers as the shards were ever apart, up to its cap
    (64 MiB): how far they drift apart depends on timing, so a buffer it
    allocates for the first time in the measured part is counted apart, and
    only up to the cap's worth may be."""
    shards = [shard_factory(k) for k in range(n_shards)]
    metrics = _free_port()
    proxy = proxy_factory(extra=[*(a for s in shards for a in ("--shard", s.address)),
                                 "--metrics", f"127.0.0.1:{metrics}"])
    block = bytes(range(256)) * (MiB // 256)
    with NfsClient("127.0.0.1", proxy.port, proxy.port, "/export", machine_name="nfsj-memory") as c:
        root = c.mount()
        fh = created_fh(c, c.create(root, "big.bin", 0o644), root, "big.bin")
        offset = 0

        def write(mib: int) -> None:
            nonlocal offset
            for _ in range(mib):
                c.write(fh, offset, block, StableHow.UNSTABLE)
                offset += MiB
            c.commit(fh)
            wait_shipped(proxy)

        # The first calls and batches grow the heap to what the load needs; with
        # two shards, so do the shared reader's regions, kept for reuse (up to
        # 64 MiB of them: as many as the shards were ever apart).
        write(64)
        before, buffers = minor_faults(proxy.proc.pid), reader_buffers(metrics, n_shards)
        write(128)
        faults = minor_faults(proxy.proc.pid) - before
        grown = reader_buffers(metrics, n_shards) - buffers
    # The shared reader's buffers are READER_BUFFER_BYTES each, at most the cap's worth kept.
    assert grown <= DEFAULT_FANOUT_BYTES // READER_BUFFER_BYTES, f"{grown} new read buffers"
    faults -= grown * (READER_BUFFER_BYTES // 4096)
    # Fresh memory per call or batch is at least one fault per page moved;
    # memory kept and used again is a handful per MiB.
    assert faults < 128 * PAGES_PER_MiB // 8, f"{faults} minor faults for 128 MiB ({grown} new read buffers apart)"
    assert (nas.export_dir / "big.bin").stat().st_size == 192 * MiB
