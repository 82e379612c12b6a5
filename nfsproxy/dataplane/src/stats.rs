//! The relay's counters: plain atomics, added to on the data path and read by
//! Python's metrics layer at scrape time (`Relay.counters()`).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Counters shared by every session of one relay.
        #[derive(Default)]
        pub struct Stats {
            $(pub $name: AtomicU64,)*
            pub by_proc: ByProc,
        }

        impl Stats {
            /// Every counter by name, as read now.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters!(
    sessions_total,
    sessions_open,
    calls_total,
    call_bytes_total,
    replies_total,
    reply_bytes_total,
    protocol_errors_total,
    backend_failures_total,
    retransmissions_absorbed_total,
    unmatched_replies_total,
    session_panics_total,
    conflict_holds_total,
    journal_failures_total,
);

/// Add one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Add `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Take one from a gauge.
pub fn drop_one(counter: &AtomicU64) {
    counter.fetch_sub(1, Ordering::Relaxed);
}

/// Upper bounds (seconds) of the latency buckets, as nfsproxy.stats.LATENCY_BUCKETS_S.
pub const LATENCY_BUCKETS_S: [f64; 17] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram: per bucket counts (the last is +Inf) and the sum.
#[derive(Clone, Default)]
pub struct Histogram {
    pub counts: [u64; 18],
    pub sum_s: f64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        // bisect_left: the first bucket whose bound is >= the value
        let i = LATENCY_BUCKETS_S.iter().position(|&b| b >= seconds).unwrap_or(LATENCY_BUCKETS_S.len());
        self.counts[i] += 1;
        self.sum_s += seconds;
    }
}

/// Counters of one (program, procedure).
#[derive(Clone, Default)]
pub struct ProcStats {
    pub calls: u64,
    pub call_bytes: u64,
    pub reply_bytes: u64,
    pub client_latency: Histogram,
    pub backend_latency: Histogram,
}

/// Per (program, procedure) counters of all sessions.
#[derive(Default)]
pub struct ByProc(std::sync::Mutex<std::collections::HashMap<(u32, u32), ProcStats>>);

impl ByProc {
    pub fn with(&self, key: (u32, u32), f: impl FnOnce(&mut ProcStats)) {
        use crate::poison::LockAnyway;
        f(self.0.lock_anyway().entry(key).or_default());
    }

    pub fn snapshot(&self) -> Vec<((u32, u32), ProcStats)> {
        use crate::poison::LockAnyway;
        self.0.lock_anyway().iter().map(|(k, v)| (*k, v.clone())).collect()
    }
}
