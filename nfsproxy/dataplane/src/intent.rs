//! Write-ahead intents the LOG must keep.
//!
//! In sync durability a mutation that promises anything is written ahead:
//! its intent (the record as the call made it) is appended when the call
//! is sent, and its reply waits for the intent's fsync, not the record's.
//! Until the record itself is durable, the intent is what recovery after an
//! unclean stop rebuilds it from (`log::orphans`), so no trim may drop it,
//! however long the NAS takes to answer. `Intents` tracks which are needed
//! and says the lowest one (`floor`); it does no I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::conflict::Token;
use crate::poison::LockAnyway;

#[derive(Default)]
pub struct Intents {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The intent seq of each mutation whose record is not yet appended.
    by_token: HashMap<Token, u64>,
    /// Intent seq → its record's seq once appended; needed until that is durable.
    needed: BTreeMap<u64, Option<u64>>,
}

impl Intents {
    /// `token`'s intent is in the LOG at `seq`.
    pub fn written(&self, token: Token, seq: u64) {
        let mut inner = self.inner.lock_anyway();
        inner.by_token.insert(token, seq);
        inner.needed.insert(seq, None);
    }

    /// `token`'s record is in the LOG at `record_seq`: its intent is needed
    /// until that is durable. The LOG is durable through `synced_seq`: the
    /// oldest intents no longer needed go now, so that the set stays small
    /// whether or not anyone asks for the floor (a proxy with no shards
    /// never trims).
    pub fn recorded(&self, token: Token, record_seq: u64, synced_seq: u64) {
        let mut inner = self.inner.lock_anyway();
        if let Some(seq) = inner.by_token.remove(&token) {
            inner.needed.insert(seq, Some(record_seq));
        }
        while let Some(entry) = inner.needed.first_entry() {
            if !entry.get().is_some_and(|r| r <= synced_seq) {
                break;
            }
            entry.remove();
        }
    }

    /// `token` gets no record: it never reached the NAS, or it is a marked
    /// gap; either way its client saw no reply that relied on the intent.
    pub fn forget(&self, token: Token) {
        let mut inner = self.inner.lock_anyway();
        if let Some(seq) = inner.by_token.remove(&token) {
            inner.needed.remove(&seq);
        }
    }

    /// How many intents are kept: those whose records are not known durable yet.
    pub fn kept(&self) -> usize {
        self.inner.lock_anyway().needed.len()
    }

    /// The lowest intent seq the LOG must keep, given that it is durable
    /// through `synced_seq`; None when it need keep none.
    pub fn floor(&self, synced_seq: u64) -> Option<u64> {
        let mut inner = self.inner.lock_anyway();
        inner.needed.retain(|_, record| !record.is_some_and(|r| r <= synced_seq));
        inner.needed.keys().next().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intent_is_needed_until_its_record_is_durable() {
        let intents = Intents::default();
        intents.written(1, 10);
        intents.written(2, 11);
        assert_eq!(intents.floor(0), Some(10));
        intents.recorded(1, 15, 0);
        assert_eq!(intents.floor(14), Some(10), "its record is not durable yet");
        assert_eq!(intents.floor(15), Some(11));
        intents.forget(2);
        assert_eq!(intents.floor(15), None);
    }

    #[test]
    fn a_slow_call_holds_the_floor_while_later_ones_pass() {
        let intents = Intents::default();
        intents.written(1, 5);
        for (token, seq) in (2..100).zip(6..) {
            intents.written(token, seq);
            intents.recorded(token, seq + 1000, 0);
        }
        assert_eq!(intents.floor(u64::MAX), Some(5));
        intents.recorded(1, 2000, 0);
        assert_eq!(intents.floor(1999), Some(5));
        assert_eq!(intents.floor(2000), None);
    }

    #[test]
    fn intents_whose_records_are_durable_do_not_pile_up_unasked() {
        let intents = Intents::default();
        for token in 0..10_000u64 {
            let seq = 2 * token + 1;
            intents.written(token, seq);
            // Each record lands after its intent; the one before it is durable by then.
            intents.recorded(token, seq + 1, seq.saturating_sub(1));
        }
        assert!(intents.kept() <= 2, "{} intents kept", intents.kept());
    }

    #[test]
    fn unknown_tokens_change_nothing() {
        let intents = Intents::default();
        intents.recorded(7, 3, 0);
        intents.forget(8);
        assert_eq!(intents.floor(0), None);
    }
}
