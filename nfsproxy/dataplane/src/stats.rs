//! The relay's counters: plain atomics, added to on the data path and read by
//! Python's metrics layer at scrape time (`Relay.counters()`).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Counters shared by every session of one relay.
        #[derive(Default)]
        pub struct Stats {
            $(pub $name: AtomicU64,)*
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
