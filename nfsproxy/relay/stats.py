"""Plain counters and latency histograms of the relay, read by the metrics layer.

The relay only adds to ints and buckets here; nothing on the data path
knows about Prometheus. `nfsproxy.daemon.metrics` turns these into metric families
at scrape time.
"""

from __future__ import annotations

import bisect

__all__ = ["LatencyHistogram", "RelayStats", "LATENCY_BUCKETS_S"]

#: Upper bounds (seconds): loopback round trips are ~40-100 us, fsyncs ~0.2-5 ms.
LATENCY_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                     0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LatencyHistogram:
    """Cumulative-at-read histogram with fixed buckets (one bisect per observation)."""

    __slots__ = ("counts", "sum_s", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.sum_s = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.sum_s += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """Buckets as Prometheus wants them: (le, count of observations <= le)."""
        out, running = [], 0
        for bound, n in zip((*map(str, LATENCY_BUCKETS_S), "+Inf"), self.counts):
            running += n
            out.append((bound, running))
        return out


class RelayStats:
    """Counters keyed by (program, procedure) where it matters."""

    def __init__(self) -> None:
        self.sessions_total = 0
        self.sessions_open = 0
        self.protocol_errors_total = 0
        self.backend_failures_total = 0
        self.retransmissions_absorbed_total = 0
        self.unmatched_replies_total = 0
        # The native plane's count of connection tasks that panicked (each closed
        # its connection alone); the Python plane's errors end a session without one.
        self.session_panics_total = 0
        self.failed_mutations_total = 0
        self.conflict_holds_total = 0  # mutations held behind a conflicting call in flight
        self.calls_total: dict[tuple[int, int], int] = {}
        self.call_bytes_total: dict[tuple[int, int], int] = {}
        self.reply_bytes_total: dict[tuple[int, int], int] = {}
        self.client_latency: dict[tuple[int, int], LatencyHistogram] = {}
        self.backend_latency: dict[tuple[int, int], LatencyHistogram] = {}
        #: NAS-to-client lock calls (NLM callbacks, SM_NOTIFY), by (program, procedure, outcome).
        self.lock_callbacks_total: dict[tuple[int, int, str], int] = {}
        self.reboot_unlocks_total = 0  # locks of rebooted clients released on the NAS

    def call(self, key: tuple[int, int], nbytes: int) -> None:
        self.calls_total[key] = self.calls_total.get(key, 0) + 1
        self.call_bytes_total[key] = self.call_bytes_total.get(key, 0) + nbytes

    def lock_callback(self, prog: int, proc: int, outcome: str) -> None:
        key = (prog, proc, outcome)
        self.lock_callbacks_total[key] = self.lock_callbacks_total.get(key, 0) + 1

    def backend_reply(self, key: tuple[int, int], nbytes: int, seconds: float) -> None:
        self.reply_bytes_total[key] = self.reply_bytes_total.get(key, 0) + nbytes
        _histogram(self.backend_latency, key).observe(seconds)

    def client_reply(self, key: tuple[int, int], seconds: float) -> None:
        _histogram(self.client_latency, key).observe(seconds)


def _histogram(table: dict[tuple[int, int], LatencyHistogram], key: tuple[int, int]) -> LatencyHistogram:
    h = table.get(key)
    if h is None:
        h = table[key] = LatencyHistogram()
    return h
