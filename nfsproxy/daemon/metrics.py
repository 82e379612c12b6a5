"""Prometheus metrics of the proxy, built at scrape time from plain counters.

Nothing on the data path calls Prometheus: the relay, the LOG, the clock and
the shippers keep ints, and `ProxyCollector.collect()` reads them when
`/metrics` is scraped. Every name starts with `nfsj_` and ends in its unit.
"""

from __future__ import annotations

import time
from typing import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from recoveryd.metrics import serve_metrics
from recoveryd.verify import read_result

from nfsproxy.wire.nlm import NLM_PROGRAM, NSM_PROGRAM, PROCEDURE_NAMES
from nfsproxy.wire.programs import lookup

__all__ = ["ProxyCollector", "serve_metrics"]


def procedure_name(prog: int, proc: int) -> tuple[str, str]:
    """(program, procedure) labels for a call key."""
    known = lookup(prog, 3, proc) or lookup(prog, 2, proc)
    program = {100003: "nfs", 100005: "mount", 100000: "portmap", NLM_PROGRAM: "nlm",
               NSM_PROGRAM: "nsm"}.get(prog, str(prog))
    name = known.name if known else PROCEDURE_NAMES.get((prog, proc), str(proc))
    return program, name


class ProxyCollector(Collector):
    """Everything `nfsj proxy` exports; `running` is a `nfsproxy.daemon.proxyd.RunningProxy`."""

    def __init__(self, running):
        self.running = running

    def collect(self) -> Iterator:
        yield from self._relay()
        yield from self._log()
        yield from self._shipping()
        yield from self._clock()
        yield from self._verify()
        yield from self._heal()

    def _relay(self) -> Iterator:
        stats = self.running.proxy.stats
        calls = CounterMetricFamily("nfsj_proxy_calls", "RPC calls from clients", labels=["program", "procedure"])
        call_bytes = CounterMetricFamily("nfsj_proxy_call_bytes", "RPC call bytes from clients",
                                         labels=["program", "procedure"])
        reply_bytes = CounterMetricFamily("nfsj_proxy_reply_bytes", "RPC reply bytes from the NAS",
                                          labels=["program", "procedure"])
        for key, n in list(stats.calls_total.items()):
            calls.add_metric(procedure_name(*key), n)
            call_bytes.add_metric(procedure_name(*key), stats.call_bytes_total.get(key, 0))
        for key, n in list(stats.reply_bytes_total.items()):
            reply_bytes.add_metric(procedure_name(*key), n)
        callbacks = CounterMetricFamily(
            "nfsj_proxy_lock_callbacks", "Lock calls of the NAS to a client (NLM callbacks, SM_NOTIFY), "
            "by outcome: passed on, failed, unrouted (no client asked for that lock)",
            labels=["program", "procedure", "outcome"])
        for (prog, proc, outcome), n in list(stats.lock_callbacks_total.items()):
            callbacks.add_metric([*procedure_name(prog, proc), outcome], n)
        yield from (calls, call_bytes, reply_bytes, callbacks)
        yield _histogram("nfsj_proxy_client_latency_seconds",
                         "Call arrival to reply sent to the client (includes the journal's fsync in sync mode)",
                         stats.client_latency)
        yield _histogram("nfsj_proxy_backend_latency_seconds", "Call arrival to the NAS's reply",
                         stats.backend_latency)
        proxy = self.running.proxy
        stable_age_s = max(0.0, (time.time_ns() - proxy.stable_stamp().wall_ns) / 1e9)
        for name, doc, value in (
                ("nfsj_proxy_sessions_open", "Client connections open", stats.sessions_open),
                ("nfsj_proxy_conflict_held_calls", "Mutations waiting now for a conflicting call's reply",
                 proxy.conflicts.held_now),
                ("nfsj_proxy_stamps_in_flight", "Stamps taken and not yet released (calls awaiting "
                 "their reply or their LOG write)", proxy.stamps_in_flight()),
                ("nfsj_proxy_stable_age_seconds", "How far the proxy's stable stamp trails the clock "
                 "(grows while a stamp stays in flight)", stable_age_s)):
            yield GaugeMetricFamily(name, doc, value=value)
        for name, doc, value in (
                ("nfsj_proxy_sessions", "Client connections accepted", stats.sessions_total),
                ("nfsj_proxy_protocol_errors", "Client connections closed for breaking the RPC protocol",
                 stats.protocol_errors_total),
                ("nfsj_proxy_backend_failures", "Client connections closed because the NAS connection ended",
                 stats.backend_failures_total),
                ("nfsj_proxy_conflict_holds", "Mutations held until an earlier conflicting call's reply was back",
                 stats.conflict_holds_total),
                ("nfsj_proxy_retransmissions_absorbed", "Calls identical to one in flight, answered by its reply",
                 stats.retransmissions_absorbed_total),
                ("nfsj_proxy_unmatched_replies", "NAS replies that answered no call in flight (dropped)",
                 stats.unmatched_replies_total),
                ("nfsj_proxy_connection_panics", "Client connections closed by a bug (a panic in the "
                 "native relay); other connections go on", stats.session_panics_total),
                ("nfsj_proxy_lock_reboot_unlocks", "Locks released on the NAS because their client "
                 "rebooted (its SM_NOTIFY)", stats.reboot_unlocks_total),
                ("nfsj_journal_records", "Records journaled (mutations, bindings, baseline pieces)",
                 self.running.proxy.journal.records_total),
                ("nfsj_journal_failed_mutations", "Mutations the NAS refused (journaled as failed)",
                 stats.failed_mutations_total),
                ("nfsj_journal_dropped_records", "Records NOT journaled under the passthrough quota policy",
                 self.running.proxy.journal.dropped_total),
                ("nfsj_journal_gap_records", "GAP records written to the LOG",
                 self.running.proxy.journal.gap_records_total),
                ("nfsj_journal_intents", "Write-ahead intents appended (sync durability: a reply "
                 "that promises anything waits for its intent's fsync, not its record's)",
                 self.running.proxy.journal.intents_total),
                ("nfsj_journal_intents_rebuilt", "Records rebuilt at start from write-ahead intents "
                 "an unclean stop left without one (outcome unknown, replayed as applied)",
                 self.running.proxy.journal.intents_rebuilt)):
            yield CounterMetricFamily(name, doc, value=value)
        journal = self.running.proxy.journal
        gaps = CounterMetricFamily("nfsj_journal_gaps", "Records that may be missing from the journal, by cause "
                                   "(log_write_failed, quota_drop, torn_tail, no_reply, unclean_stop)",
                                   labels=["cause"])
        for cause in ("log_write_failed", "quota_drop", "torn_tail", "no_reply", "unclean_stop"):
            gaps.add_metric([cause], journal.gaps_total.get(cause, 0))
        yield gaps
        yield GaugeMetricFamily("nfsj_journal_unmarked_gaps",
                                "1 while a gap waits for its GAP record to reach the LOG (e.g. the disk is full)",
                                value=journal.unmarked_gaps)

    def _log(self) -> Iterator:
        committer, log, journal = self.running.committer, self.running.log, self.running.proxy.journal
        acked = [s.acked_seq for s in self.running.shippers]
        backlog = log.last_seq - min(acked) if acked else 0
        quota = committer.quota_bytes or 0
        for name, doc, value in (
                ("nfsj_log_appends", "Records appended to the LOG", committer.appends_total),
                ("nfsj_log_fsyncs", "LOG fsyncs (group commits)", committer.fsyncs_total),
                ("nfsj_log_appended_bytes", "Bytes appended to the LOG", committer.appended_bytes_total),
                ("nfsj_log_recycled_segments", "New LOG segments written over spares instead of "
                 "new files", log.recycled_segments)):
            yield CounterMetricFamily(name, doc, value=value)
        for name, doc, value in (
                ("nfsj_log_size_bytes", "Bytes the LOG holds on disk", log.size_bytes),
                ("nfsj_log_spare_segments", "Trimmed LOG segments kept, pages cached, to write new "
                 "segments over (not in nfsj_log_size_bytes)", log.spare_segments),
                ("nfsj_log_quota_bytes", "The LOG's disk quota (0: none)", quota),
                ("nfsj_log_quota_used_ratio", "LOG size / quota (0 without a quota)",
                 log.size_bytes / quota if quota else 0.0),
                ("nfsj_log_backlog_records", "Records in the LOG not yet durable on every shard", backlog),
                ("nfsj_log_unsynced_records", "Records written but not yet fsynced", committer.unsynced_records),
                ("nfsj_log_unsynced_bytes", "Bytes written but not yet fsynced", committer.unsynced_bytes),
                ("nfsj_log_unsynced_age_seconds",
                 "Age of the oldest record not yet fsynced: the local RPO in async durability",
                 committer.oldest_unsynced_age_s),
                ("nfsj_journal_passthrough_active",
                 "1 while the LOG is over quota under the passthrough policy (records are being dropped)",
                 1 if journal.passthrough_active else 0),
                ("nfsj_journal_blocked_calls", "Calls held under the block quota policy", journal.blocked_now),
                ("nfsj_journal_intents_kept", "Write-ahead intents whose records are not known durable "
                 "yet; retention keeps the LOG from the oldest (a value that stays up: a NAS call "
                 "that never ends)", journal.intents_kept)):
            yield GaugeMetricFamily(name, doc, value=value)

    def _shipping(self) -> Iterator:
        now_s = time.time()
        gauges = {
            "connected": GaugeMetricFamily("nfsj_shipping_connected", "1 while the shard's stream is up",
                                           labels=["shard"]),
            "lag_records": GaugeMetricFamily("nfsj_shipping_lag_records",
                                             "LOG records the shard has not made durable yet",
                                             labels=["shard"]),
            "undurable": GaugeMetricFamily("nfsj_shipping_undurable_records",
                                           "Records the shard holds but has not flushed yet (it does "
                                           "within a second; a crash before it: resent from the LOG)",
                                           labels=["shard"]),
            "frontier_age": GaugeMetricFamily("nfsj_frontier_age_seconds",
                                              "Now minus the shard's frontier for this proxy (per-shard RPO)",
                                              labels=["shard"]),
        }
        counters = {
            "bytes_sent_total": CounterMetricFamily("nfsj_shipping_sent_bytes", "Record bytes shipped",
                                                    labels=["shard"]),
            "records_sent_total": CounterMetricFamily("nfsj_shipping_sent_records", "Records shipped",
                                                      labels=["shard"]),
            "gaps_total": CounterMetricFamily("nfsj_shipping_gaps", "LOG ranges a shard needed that were trimmed",
                                              labels=["shard"]),
            "reconnects_total": CounterMetricFamily("nfsj_shipping_reconnects", "Stream reconnects",
                                                    labels=["shard"]),
            "rewinds_total": CounterMetricFamily("nfsj_shipping_rewinds",
                                                 "Resends after a shard refused a batch or lost data",
                                                 labels=["shard"]),
        }
        oldest = None
        for shipper in self.running.shippers:
            st = shipper.state()
            label = [str(st.shard_id)]
            age = max(0.0, now_s - st.frontier.wall_ns / 1e9) if st.frontier.wall_ns else float("inf")
            oldest = age if oldest is None else max(oldest, age)
            gauges["connected"].add_metric(label, 1 if st.connected else 0)
            gauges["lag_records"].add_metric(label, st.lag_records)
            gauges["undurable"].add_metric(label, max(0, st.applied_seq - st.acked_seq))
            gauges["frontier_age"].add_metric(label, age)
            for field, family in counters.items():
                family.add_metric(label, getattr(st, field))
        yield from gauges.values()
        yield from counters.values()
        yield from self._shared_reader()
        if oldest is not None:
            yield GaugeMetricFamily("nfsj_consistent_point_age_seconds",
                                    "Now minus the oldest shard frontier this proxy has seen: the effective RPO",
                                    value=oldest)

    def _shared_reader(self) -> Iterator:
        fanout = self.running.fanout
        if fanout is None:
            return
        served = GaugeMetricFamily("nfsj_shipping_shared_reader",
                                   "1 while the shard's batches come from the shippers' shared LOG "
                                   "reader (0: its shipper reads that part of the LOG alone)",
                                   labels=["shard"])
        for shipper in self.running.shippers:
            served.add_metric([str(shipper.shard_id)], 1 if fanout.is_served(shipper.shard_id) else 0)
        yield served
        stats = fanout.stats()
        yield CounterMetricFamily("nfsj_shipping_shared_reads", "LOG regions the shared reader read "
                                  "and walked once for every shard", value=stats["reads_total"])
        yield CounterMetricFamily("nfsj_shipping_shared_evictions", "Shard queues the shared reader "
                                  "emptied because the frames kept passed its memory cap",
                                  value=stats["evictions_total"])
        yield GaugeMetricFamily("nfsj_shipping_shared_kept_bytes", "Bytes of LOG regions the shared "
                                "reader keeps for shards that have not taken their frames yet",
                                value=stats["kept_bytes"])
        yield CounterMetricFamily("nfsj_shipping_shared_buffers_allocated", "Read buffers the shared "
                                  "reader allocated: fresh memory; it keeps up to its cap's worth "
                                  "and uses them again", value=stats["buffers_allocated_total"])

    def _clock(self) -> Iterator:
        clock = self.running.proxy.clock
        yield GaugeMetricFamily("nfsj_hlc_offset_seconds", "HLC wall time minus the physical clock",
                                value=clock.offset_ns / 1e9)
        for name, doc, value in (
                ("nfsj_hlc_rejections", "Remote stamps refused for being beyond max offset", clock.rejections_total),
                ("nfsj_hlc_backward_jumps", "Backward jumps of the physical clock", clock.backward_jumps_total),
                ("nfsj_hlc_forward_jumps", "Forward jumps of the physical clock beyond the threshold",
                 clock.forward_jumps_total)):
            yield CounterMetricFamily(name, doc, value=value)

    def _verify(self) -> Iterator:
        """The last `nfsj verify --log DIR` of this LOG (no samples until one has run)."""
        result = read_result(self.running.log.directory) or {}
        for name, doc, key, scale in (
                ("nfsj_verify_last_run_timestamp_seconds", "When the last `nfsj verify` finished (Unix time)",
                 "finished_unix_ns", 1e-9),
                ("nfsj_verify_checked_files", "Paths the last `nfsj verify` compared with the NAS",
                 "checked", 1),
                ("nfsj_verify_skipped_files", "Paths the last `nfsj verify` left out (changed after its cut)",
                 "skipped", 1),
                ("nfsj_verify_differences", "Differences between the journal and the NAS the last "
                 "`nfsj verify` found (0: none)", "differences", 1)):
            family = GaugeMetricFamily(name, doc)
            value = result.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                family.add_metric([], value * scale)
            yield family

    def _heal(self) -> Iterator:
        """The proxy's own baselines after gaps (nfsproxy.daemon.heal); none without shards."""
        healer = self.running.healer
        if healer is None:
            return
        yield GaugeMetricFamily("nfsj_heal_owed", "1 while a gap this proxy saw waits for a baseline "
                                "begun after it (restores past the gap are unproven until it ends)",
                                value=1 if healer.plan.owed else 0)
        yield CounterMetricFamily("nfsj_heal_baselines", "Baselines this proxy began on its own to heal gaps",
                                  value=healer.baselines_total)
        yield CounterMetricFamily("nfsj_heal_failures", "Of those, the ones that failed (tried again later)",
                                  value=healer.failures_total)


def _histogram(name: str, doc: str, table) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["program", "procedure"])
    for key, h in list(table.items()):
        family.add_metric(procedure_name(*key), h.cumulative(), sum_value=h.sum_s)
    return family

