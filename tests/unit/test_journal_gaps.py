"""The proxy's journal marks gaps: a stamp that may be missing stays in flight until a
GAP record stands for it in the LOG (nfsproxy/journal.py)."""

from __future__ import annotations

import asyncio
import errno

from logstore.hlc import HLC
from logstore.record import Op, Record, parse_record
from logstore.stamp import Stamp
from nfsproxy.journal import Journal, QuotaPolicy
from nfsproxy.native_log import NativeCommitter as GroupCommitter
from nfsproxy.native_log import NativeLog as Log
from nfsproxy.relay import BackendAddress, Proxy


def last_records(log: Log, n: int) -> list[Record]:
    with log.read(log.first_seq) as cursor:
        return [parse_record(p, seq) for seq, p in cursor][-n:]


def make(tmp_path, **journal_args):
    log = Log.open(tmp_path / "log")
    committer = GroupCommitter(log, durability="async", flush_interval_s=0.001)
    journal = Journal(committer, **journal_args)
    proxy = Proxy(BackendAddress("127.0.0.1", 1, 1, "/export"), journal, HLC(7))
    journal.attach(proxy)
    return log, committer, journal, proxy


def test_a_gap_holds_its_stamp_until_its_gap_record_is_in_the_log(tmp_path):
    async def main():
        log, committer, journal, proxy = make(tmp_path, gap_interval_s=0.01)
        lost = proxy.clock.now().to_bytes()
        journal.mark_gap(lost, "no_reply", "a WRITE got no reply")
        assert proxy.stable_stamp() < Stamp.from_bytes(lost)  # no heartbeat may claim past it
        assert journal.unmarked_gaps == 1
        for _ in range(100):
            if not journal.unmarked_gaps:
                break
            await asyncio.sleep(0.005)
        (gap,) = last_records(log, 1)
        assert gap.op == Op.GAP and gap.gap_cause == "no_reply" and gap.gap_from == lost
        assert gap.stamp > lost and gap.gap_reason == "a WRITE got no reply"
        assert proxy.stable_stamp() > Stamp.from_bytes(gap.stamp)  # released once written
        assert journal.gaps_total["no_reply"] == 1 and journal.gap_records_total == 1
        await journal.close()
        await committer.close()
        log.close()
    asyncio.run(main())


def test_a_gap_record_that_cannot_be_written_is_retried_and_the_stamp_stays_held(tmp_path):
    async def main():
        log, committer, journal, proxy = make(tmp_path, gap_interval_s=0.01)
        real = committer.append_nowait
        failures = [OSError(errno.ENOSPC, "No space left on device")] * 3

        def append_nowait(payload, **routing):
            if failures:
                raise failures.pop()
            return real(payload, **routing)

        committer.append_nowait = append_nowait
        record = Record(op=Op.WRITE, ok=True, fh=b"f", stamp=proxy.clock.now().to_bytes())
        try:
            journal.append_nowait(record)
        except OSError:
            pass
        else:
            raise AssertionError("the failed append must reach the caller")
        assert journal.gaps_total["log_write_failed"] == 1
        assert proxy.stable_stamp() < Stamp.from_bytes(record.stamp)
        for _ in range(400):
            if not journal.unmarked_gaps:
                break
            await asyncio.sleep(0.01)
        assert not failures and journal.unmarked_gaps == 0
        (gap,) = last_records(log, 1)
        assert gap.op == Op.GAP and gap.gap_cause == "log_write_failed" and gap.gap_from == record.stamp
        assert "No space left" in gap.gap_reason
        await journal.close()
        await committer.close()
        log.close()
    asyncio.run(main())


def test_passthrough_drops_close_together_share_one_gap_record(tmp_path):
    async def main():
        log, committer, journal, proxy = make(tmp_path, policy=QuotaPolicy.PASSTHROUGH,
                                              gap_interval_s=60.0)
        committer.quota_bytes = log.size_bytes  # the empty LOG: the next record goes over
        await journal.append(Record(op=Op.WRITE, ok=True, fh=b"f", stamp=proxy.clock.now().to_bytes()))
        stamps = [proxy.clock.now().to_bytes() for _ in range(5)]
        for i, stamp in enumerate(stamps):
            assert await journal.append(Record(op=Op.WRITE, ok=True, fh=b"f", stamp=stamp)) is None
            if i == 0:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        # The first drop's record is written at once; the next four wait for one more.
        assert journal.gap_records_total == 1 and journal.unmarked_gaps == 1
        assert proxy.stable_stamp() < Stamp.from_bytes(stamps[1])
        await journal.close()  # a clean stop writes what is open
        gaps = [r for r in last_records(log, 3) if r.op == Op.GAP]
        assert [g.gap_from for g in gaps] == [stamps[0], stamps[1]]
        assert "4 more" not in gaps[1].gap_reason and "3 more" in gaps[1].gap_reason
        assert journal.gaps_total["quota_drop"] == 5
        await committer.close()
        log.close()
    asyncio.run(main())
