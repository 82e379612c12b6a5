"""Every daemon's /metrics moves as it should after a real workload."""

from __future__ import annotations

import socket
import time
import urllib.request

import nfs_rs
from prometheus_client.parser import text_string_to_metric_families


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples, name: str, **labels) -> float:
    want = tuple(sorted(labels.items()))
    matching = [v for (n, ls), v in samples.items() if n == name and all(item in ls for item in want)]
    assert matching, f"{name}{labels} is not exported"
    return sum(matching)


def test_metrics_move_with_a_workload(nas, shard_factory, proxy_factory):
    shard_ports = [_free_port(), _free_port()]
    shards = [shard_factory(k, extra=["--metrics", f"127.0.0.1:{shard_ports[k]}"]) for k in range(2)]
    proxy_port = _free_port()
    extra = ["--metrics", f"127.0.0.1:{proxy_port}"]
    for shard in shards:
        extra += ["--shard", shard.address]
    proxy = proxy_factory(extra=extra)
    before = scrape(proxy_port)
    assert value(before, "nfsj_log_appends_total") == 0

    client = nfs_rs.Client.connect(proxy.url())
    client.mkdir("/m")
    payload = b"m" * 65536
    for i in range(20):
        with client.open(f"/m/f{i}", "w+b") as f:
            f.write_at(payload, 0)

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = scrape(proxy_port)
        if value(after, "nfsj_log_backlog_records") == 0 and value(after, "nfsj_shipping_lag_records") == 0:
            break
        time.sleep(0.2)
    assert value(after, "nfsj_proxy_calls_total", procedure="WRITE") >= 20
    assert value(after, "nfsj_proxy_call_bytes_total", procedure="WRITE") >= 20 * len(payload)
    assert value(after, "nfsj_proxy_client_latency_seconds_count", procedure="WRITE") >= 20
    assert value(after, "nfsj_proxy_backend_latency_seconds_count", procedure="CREATE") >= 20
    assert value(after, "nfsj_log_appends_total") >= 41  # 20 CREATE + 20 WRITE + MKDIR (+ COMMITs)
    assert value(after, "nfsj_log_fsyncs_total") >= 1
    assert value(after, "nfsj_log_appended_bytes_total") >= 20 * len(payload)
    # The LOG is retained for an hour: nothing trimmed, so no spares yet.
    assert value(after, "nfsj_log_spare_segments") == 0
    assert value(after, "nfsj_log_recycled_segments_total") == 0
    assert value(after, "nfsj_journal_records_total") >= 41
    assert value(after, "nfsj_shipping_sent_records_total") >= 41
    assert value(after, "nfsj_shipping_connected") == 2
    # Two shards: their shippers share one reader of the LOG, which served them.
    assert value(after, "nfsj_shipping_shared_reads_total") >= 1
    assert value(after, "nfsj_shipping_shared_reader") >= 1  # a shard that fell behind once reads alone until the next write
    assert value(after, "nfsj_shipping_shared_evictions_total") == 0
    assert value(after, "nfsj_shipping_shared_kept_bytes") >= 0
    assert value(after, "nfsj_shipping_shared_buffers_allocated_total") <= 16  # at most the cap's worth (small writes: none)
    assert value(after, "nfsj_log_backlog_records") == 0
    assert value(after, "nfsj_shipping_undurable_records") == 0  # once durable, nothing waits
    assert 0 <= value(after, "nfsj_consistent_point_age_seconds") < 3600
    assert value(after, "nfsj_hlc_rejections_total") == 0

    held = sum(value(scrape(p), "nfsj_shard_records") for p in shard_ports)
    ingested = sum(value(scrape(p), "nfsj_shard_ingested_records_total") for p in shard_ports)
    assert held >= 41 and ingested >= held
    for port in shard_ports:
        s = scrape(port)
        assert value(s, "nfsj_shard_streams_open") == 1
        assert value(s, "nfsj_frontier_age_seconds") < 3600
        # the proxy's backlog is 0: every shard made what it holds durable
        assert value(s, "nfsj_shard_durable_seq") == value(s, "nfsj_shard_held_seq") > 0
        assert value(s, "nfsj_shard_flushes_total") >= 0


def test_every_log_append_is_counted_once_as_a_journal_record(nas, proxy_factory):
    """nfsj_journal_records_total counts relayed mutations, bindings AND baseline
    pieces: every LOG append is a journal record or a GAP record, once."""
    from e2e.journal_cli import baseline

    for i in range(12):
        (nas.export_dir / f"pre{i}").write_bytes(b"b" * (1000 + i))
    port = _free_port()
    proxy = proxy_factory(extra=["--metrics", f"127.0.0.1:{port}"])
    client = nfs_rs.Client.connect(proxy.url())
    client.mkdir("/m")
    with client.open("/m/f", "w+b") as f:
        f.write_at(b"x" * 4096, 0)
    baseline(proxy.log_dir)

    after = scrape(port)
    appends = value(after, "nfsj_log_appends_total")
    assert appends >= 3 + 12  # MKDIR, CREATE, WRITE, then at least one baseline piece per file
    assert (value(after, "nfsj_journal_records_total") + value(after, "nfsj_journal_gap_records_total")
            + value(after, "nfsj_journal_intents_total")) == appends
    assert value(after, "nfsj_journal_intents_total") >= 2, "MKDIR and CREATE are written ahead (sync durability)"
    assert value(after, "nfsj_journal_intents_rebuilt_total") == 0
    assert value(after, "nfsj_journal_intents_kept") == 0, "every record is durable: no intent is kept"
