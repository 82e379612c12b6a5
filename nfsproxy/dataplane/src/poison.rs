//! Locks shared by every session of a relay are taken whether or not a
//! panicking session poisoned them: a panic in one connection's task must
//! close that connection only, not every later one that takes the lock.
//! (What such a panic left half-done is bounded by the lock's critical
//! sections, each of which leaves its table consistent at every step but
//! its last.)

use std::sync::{Mutex, MutexGuard};

pub trait LockAnyway<T> {
    fn lock_anyway(&self) -> MutexGuard<'_, T>;
}

impl<T> LockAnyway<T> for Mutex<T> {
    fn lock_anyway(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
