"""Write-ahead in `sync` durability (README.md, "Durability modes";
logstore/FORMAT.md, "Intents").

On the native plane a mutation that promises anything is written ahead:
its intent reaches the LOG when the call goes to the NAS, and the reply
waits for the intent's fsync, not its record's. So a power cut may take a
record whose reply the client saw. These tests make the LOG what such a cut
leaves and show the restarted proxy rebuilding the record: a restore at a
moment after the acknowledged writes has every byte of them.
"""

from __future__ import annotations

import random

import crc32c
import pytest

from e2e.proxy_fixture import read_log
from e2e.test_gaps import GapStack, now_bound
from logstore.record import Op
from logstore.segment import HEADER, HEADER_BYTES, ROUTE_INTENT, SEGMENT_HEADER_BYTES
from nfsproxy.daemon.intents import OUTCOME_UNKNOWN
from nfsproxy.wire.nfs3 import StableHow

pytestmark = pytest.mark.ganesha

BLOCK = 4096
N_BLOCKS = 24


@pytest.fixture
def shard(shard_factory):
    return shard_factory(0)


def cut_after_last_intent(log_dir) -> int:
    """Make the LOG what a power cut leaves when its last fsync ended with the
    newest intent: every frame after it gone, the sync mark there. Returns
    how many frames were cut."""
    segment = sorted(log_dir.glob("*.seg"))[-1]
    base = int(segment.stem)
    data = segment.read_bytes()
    pos, seq, frames = SEGMENT_HEADER_BYTES, base, []
    while pos + HEADER_BYTES <= len(data):
        length, _crc, frame_seq, _stamp, _route, kind = HEADER.unpack_from(data, pos)
        if length == 0 and frame_seq == 0:
            break
        pos += HEADER_BYTES + length
        frames.append((frame_seq, kind, pos))
    last = max(i for i, (_, kind, _) in enumerate(frames) if kind == ROUTE_INTENT)
    seq, _, end = frames[last]
    segment.write_bytes(data[:end])
    from logstore.log import _MARK, _MARK_MAGIC  # the sync mark's format (logstore/log.py)
    body = _MARK.pack(_MARK_MAGIC, base, end, seq, 0)[:-4]
    (log_dir / "SYNCED").write_bytes(body + crc32c.crc32c(body).to_bytes(4, "big"))
    return len(frames) - last - 1


def test_a_power_cut_after_the_reply_loses_no_acknowledged_write(nas, shard, proxy_factory, tmp_path):
    log_dir = tmp_path / "log"
    stack = GapStack(nas, shard, proxy_factory, extra=["--data-plane", "native"], log_dir=log_dir)
    stack.write_file("before", b"before the writes\n")
    stack.baseline()
    # Nothing shipped from here on: the cut must not take what a shard holds.
    shard.stop()
    blocks = [random.Random(i).randbytes(BLOCK) for i in range(N_BLOCKS)]
    with stack.client() as c:
        fh = bytes(c.create(c.mount(), "ahead.bin", 0o644).obj)
        for i, block in enumerate(blocks):
            c.write(fh, i * BLOCK, block, StableHow.FILE_SYNC)  # each reply seen: acknowledged
    after_writes = now_bound()
    stack.proxy.kill()
    intents = [r for _, r in read_log(log_dir, intents=True) if r.op == Op.WRITE and bytes(r.fh) == fh]
    assert len(intents) == N_BLOCKS, "every FILE_SYNC WRITE is written ahead"
    assert cut_after_last_intent(log_dir) >= 1, "the last WRITE's record came after its intent"
    written = [r for _, r in read_log(log_dir) if r.op == Op.WRITE and bytes(r.fh) == fh]
    assert len(written) == N_BLOCKS - 1, "the cut took the last acknowledged WRITE's record"

    shard.start()
    stack.proxy = proxy_factory(extra=stack.extra, log_dir=log_dir)
    assert "did not stop cleanly" in stack.proxy.stderr_text()
    assert stack.metric("nfsj_journal_intents_rebuilt_total") == 1
    stack.gap_shown("unclean_stop")
    # Inside the unclean stop's gap, so only with --allow-unproven; every
    # acknowledged byte is there.
    restored = stack.restore(after_writes, tmp_path / "restored", allow_unproven=True)
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "restored" / "ahead.bin").read_bytes() == b"".join(blocks)
    assert (nas.export_dir / "ahead.bin").read_bytes() == b"".join(blocks)

    stack.proxy.stop()
    (rebuilt,) = [r for _, r in read_log(log_dir) if r.status == OUTCOME_UNKNOWN]
    assert (rebuilt.op, bytes(rebuilt.fh), rebuilt.offset) == (Op.WRITE, fh, (N_BLOCKS - 1) * BLOCK)
    assert rebuilt.ok and bytes(rebuilt.data) == blocks[-1]
    # A clean stop settles them: the next start rebuilds nothing again.
    stack.proxy = proxy_factory(extra=stack.extra, log_dir=log_dir)
    assert stack.metric("nfsj_journal_gaps_total", 'cause="unclean_stop"') == 0
    assert stack.metric("nfsj_journal_intents_rebuilt_total") == 0
    stack.proxy.stop()


def test_strict_and_async_write_nothing_ahead(nas, proxy_factory):
    for durability in ("strict", "async"):
        proxy = proxy_factory(durability=durability, extra=["--data-plane", "native"])
        from nfsproxy.nas.client import NfsClient
        with NfsClient("127.0.0.1", proxy.port, proxy.port, "/export") as c:
            fh = bytes(c.create(c.mount(), f"{durability}.bin", 0o644).obj)
            c.write(fh, 0, b"x" * BLOCK, StableHow.FILE_SYNC)
        proxy.stop()
        assert read_log(proxy.log_dir, intents=True) == [], durability
        assert [r.op for _, r in read_log(proxy.log_dir) if r.op in (Op.CREATE, Op.WRITE)] == [Op.CREATE, Op.WRITE]


def test_a_large_file_sync_write_is_not_written_ahead(nas, proxy_factory):
    """A WRITE's intent holds its data, so a large one would reach the LOG
    twice: past 64 KiB its reply waits for its record instead, as in strict."""
    from nfsproxy.nas.client import NfsClient
    proxy = proxy_factory(extra=["--data-plane", "native"])
    with NfsClient("127.0.0.1", proxy.port, proxy.port, "/export") as c:
        fh = bytes(c.create(c.mount(), "large.bin", 0o644).obj)
        c.write(fh, 0, b"s" * (64 * 1024), StableHow.FILE_SYNC)
        c.write(fh, 64 * 1024, b"L" * (64 * 1024 + 1), StableHow.FILE_SYNC)
    proxy.stop()
    ahead = [(r.offset, len(r.data)) for _, r in read_log(proxy.log_dir, intents=True) if r.op == Op.WRITE]
    assert ahead == [(0, 64 * 1024)]
    written = [(r.offset, len(r.data)) for _, r in read_log(proxy.log_dir) if r.op == Op.WRITE]
    assert written == [(0, 64 * 1024), (64 * 1024, 64 * 1024 + 1)]
