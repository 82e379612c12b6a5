"""Prometheus metrics of a recovery shard, built at scrape time.

Also home of `serve_metrics`, shared by every daemon (recoveryd sits below
nfsproxy, so the proxy imports it from here).
"""

from __future__ import annotations

import time
from typing import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from logstore.stamp import Stamp

from .frontier import healed_by

__all__ = ["ShardCollector", "serve_metrics"]


class ShardCollector(Collector):
    """Everything `nfsj recoveryd` exports; `running` is a `recoveryd.shard.RunningShard`."""

    def __init__(self, running):
        self.running = running

    def collect(self) -> Iterator:
        store, servicer = self.running.store, self.running.server.servicer
        c = servicer.counters
        shard = str(store.shard_id)
        for name, doc, value in (
                ("nfsj_shard_ingested_batches", "Batches applied", c.batches_total),
                ("nfsj_shard_ingested_records", "Records received in applied batches (resends included)",
                 c.records_total),
                ("nfsj_shard_ingested_bytes", "Record bytes received in applied batches", c.bytes_total),
                ("nfsj_shard_refused_batches", "Batches refused (not continuing their stream, or malformed)",
                 c.refusals_total),
                ("nfsj_hlc_rejections", "Batches refused because the sender's clock was beyond max offset",
                 c.clock_refusals_total),
                ("nfsj_shard_ingest_refused_calls",
                 "Ingest calls refused: no valid credential, another node's stream, not a member",
                 c.auth_refusals_total),
                ("nfsj_shard_conflicting_records",
                 "Records refused because their stamp is held with other bytes", store.conflicts_total),
                ("nfsj_shard_foreign_stamp_batches",
                 "Batches refused because a record is stamped by another node than its stream's",
                 store.node_refusals_total),
                ("nfsj_shard_flushes",
                 "Flushes that made writes without the WAL durable (deferred or large groups)",
                 store.flushes_total)):
            yield _one(CounterMetricFamily(name, doc, labels=["shard"]), shard, value)
        for name, doc, value in (
                ("nfsj_shard_records", "Records held", store.records_total),
                ("nfsj_shard_bytes", "Record bytes held", store.bytes_total),
                ("nfsj_shard_streams_open", "Ingest streams connected", c.streams_open)):
            yield _one(GaugeMetricFamily(name, doc, labels=["shard"]), shard, value)
        yield from self._streams(shard)
        restore = getattr(self.running.server, "restore_counters", None)
        if restore is not None:
            for name, doc, value in (
                    ("nfsj_restore_served_records", "Records streamed to restore clients", restore.records_total),
                    ("nfsj_restore_served_bytes", "Record bytes streamed to restore clients", restore.bytes_total)):
                yield _one(CounterMetricFamily(name, doc, labels=["shard"]), shard, value)
        bulk = getattr(self.running.server, "bulk", None)
        if bulk is not None:
            yield _one(GaugeMetricFamily("nfsj_restore_bulk_streams", "Bulk streams being served now",
                                         labels=["shard"]), shard, bulk.streams)
        auth = getattr(self.running.server, "restore_auth", None)
        if auth is not None:  # Restore needs credentials (recoveryd/security.py)
            refused = CounterMetricFamily("nfsj_restore_refused_calls",
                                          "Restore calls refused as UNAUTHENTICATED, by reason",
                                          labels=["shard", "reason"])
            for reason in ("missing credentials", "wrong token", "expired token"):
                refused.add_metric([shard, reason], auth.counters.refused_total.get(reason, 0))
            yield refused
            yield _one(CounterMetricFamily("nfsj_restore_admitted_calls",
                                           "Restore calls admitted with a client certificate or token",
                                           labels=["shard"]), shard, auth.counters.admitted_total)

    def _streams(self, shard: str) -> Iterator:
        now_s = time.time()
        age = GaugeMetricFamily("nfsj_frontier_age_seconds",
                                "Now minus this shard's frontier for a proxy stream (the stream's RPO here)",
                                labels=["shard", "stream"])
        durable = GaugeMetricFamily("nfsj_shard_durable_seq", "A stream's durable LOG position here",
                                    labels=["shard", "stream"])
        held = GaugeMetricFamily("nfsj_shard_held_seq",
                                 "A stream's LOG position here, durable or waiting for a flush",
                                 labels=["shard", "stream"])
        gaps = GaugeMetricFamily("nfsj_shard_gaps",
                                 "Gaps in a stream: stretches where the proxy LOG may lack records",
                                 labels=["shard", "stream"])
        unhealed = GaugeMetricFamily("nfsj_shard_unhealed_gaps",
                                     "Gaps no baseline held here has healed yet (cuts past them are unproven)",
                                     labels=["shard", "stream"])
        listing = getattr(self.running.server.servicer, "baselines", None)
        baselines = [(Stamp.from_bytes(b.baseline_id), Stamp.from_bytes(b.end))
                     for b in (listing().baselines if listing else []) if b.end]
        for key, state in self.running.store.streams().items():
            labels = [shard, str(key)]
            wall = state.frontier.wall_ns
            age.add_metric(labels, max(0.0, now_s - wall / 1e9) if wall else float("inf"))
            durable.add_metric(labels, min(state.durable_seq, self.running.store.durable_seq(key)))
            held.add_metric(labels, state.durable_seq)
            gaps.add_metric(labels, len(state.gaps))
            unhealed.add_metric(labels, sum(1 for g in state.gaps if healed_by(g, baselines) is None))
        yield from (age, durable, held, gaps, unhealed)


def _one(family, label: str, value):
    family.add_metric([label], value)
    return family


def serve_metrics(collector: Collector, host: str, port: int) -> int:
    """Serve /metrics for `collector` on host:port (0: a free port); returns the port."""
    registry = CollectorRegistry()
    registry.register(collector)
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server.server_address[1]
