//! Stamps in flight: taken when a mutation is stamped, released once its
//! record is in the LOG (or will never be). The stable stamp is below all of
//! them; `wait_settled` lets the baseline wait until every call stamped below
//! a stamp has its reply. Every path that takes a stamp releases it (reply,
//! disconnect, abandoned held call, gap written).

use crate::poison::LockAnyway;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::stamp::Stamp;

#[derive(Default)]
pub struct InFlight {
    stamps: Mutex<HashMap<u64, [u8; 16]>>,
    released: Condvar,
    /// Threads in `wait_settled` (changed under `stamps`' lock): a release
    /// notifies only when one waits, since every notify is a system call.
    waiters: AtomicUsize,
}

impl InFlight {
    /// Hold `stamp` (or an older one already held) under `token`.
    pub fn hold(&self, token: u64, stamp: [u8; 16]) {
        let mut s = self.stamps.lock_anyway();
        let held = s.entry(token).or_insert(stamp);
        *held = (*held).min(stamp);
    }

    pub fn release(&self, token: u64) {
        let mut s = self.stamps.lock_anyway();
        if s.remove(&token).is_some() && self.waiters.load(Ordering::Relaxed) > 0 {
            drop(s);
            self.released.notify_all();
        }
    }

    pub fn len(&self) -> usize {
        self.stamps.lock_anyway().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lowest stamp held, if any.
    pub fn lowest(&self) -> Option<Stamp> {
        self.stamps.lock_anyway().values().min().and_then(|s| Stamp::from_bytes(s))
    }

    /// A stamp below every stamp held; `now` when none is.
    pub fn stable(&self, now: Stamp) -> Stamp {
        match self.lowest() {
            None => now,
            Some(low) if low.logical > 0 => Stamp { logical: low.logical - 1, ..low },
            Some(low) => Stamp { wall_ns: low.wall_ns - 1, logical: u32::MAX, node_id: low.node_id },
        }
    }

    /// Run `f` holding the lock (a test poisons it).
    #[cfg(test)]
    pub(crate) fn with_lock<R>(&self, f: impl FnOnce() -> R) -> R {
        let _stamps = self.stamps.lock_anyway();
        f()
    }

    /// Block until no stamp below `below` is held (but `own`'s): true, or
    /// false after `timeout`.
    pub fn wait_settled(&self, below: [u8; 16], own: Option<u64>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.stamps.lock_anyway();
        loop {
            if !s.iter().any(|(t, st)| *st < below && Some(*t) != own) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.waiters.fetch_add(1, Ordering::Relaxed);
            s = self.released.wait_timeout(s, left).unwrap_or_else(|p| p.into_inner()).0;
            self.waiters.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(wall: u64, logical: u32) -> [u8; 16] {
        Stamp { wall_ns: wall, logical, node_id: 1 }.to_bytes()
    }

    #[test]
    fn the_stable_stamp_stays_below_every_held_one() {
        let f = InFlight::default();
        let now = Stamp { wall_ns: 100, logical: 0, node_id: 1 };
        assert_eq!(f.stable(now), now);
        f.hold(1, st(50, 0));
        f.hold(2, st(40, 3));
        assert_eq!(f.stable(now), Stamp { wall_ns: 40, logical: 2, node_id: 1 });
        f.release(2);
        assert_eq!(f.stable(now), Stamp { wall_ns: 49, logical: u32::MAX, node_id: 1 });
        f.hold(1, st(60, 0)); // an older stamp stays held
        assert_eq!(f.lowest().unwrap().wall_ns, 50);
    }

    #[test]
    fn settling_waits_for_the_release_of_lower_stamps_only() {
        let f = std::sync::Arc::new(InFlight::default());
        f.hold(1, st(10, 0));
        f.hold(2, st(30, 0));
        assert!(!f.wait_settled(st(20, 0), None, Duration::from_millis(10)));
        assert!(f.wait_settled(st(20, 0), Some(1), Duration::from_millis(10)));
        let g = f.clone();
        let t = std::thread::spawn(move || g.wait_settled(st(20, 0), None, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        f.release(1);
        assert!(t.join().unwrap());
    }
}
