//! Conflict holds: conflicting mutations reach the NAS one at a time, in
//! arrival order (sans-IO; nfsproxy/conflict.py's rules).
//!
//! Restore replays records in stamp order, so for two mutations whose order
//! changes the result, stamp order must be the order in which the NAS applied
//! them. Two calls in flight at once may be applied in either order, so a
//! mutation that conflicts with one still in flight is sent only after the
//! earlier one's reply is back, and is stamped then.
//!
//! What conflicts: on one file handle, WRITEs with overlapping byte ranges, a
//! size change against any WRITE or size change, and two SETACLs of the same
//! ACL; any two calls naming the same directory entry. A call waits for every
//! earlier call it conflicts with that is still in the table (in flight or
//! itself waiting), so waits point back in arrival order: no cycle, FIFO per
//! conflict.

use std::collections::{HashMap, HashSet};

use crate::capture::BindingCache;
use crate::nfs3::proc3;
use crate::capture::{op, OpOf};
use crate::record::Record;

pub type Entry = (Vec<u8>, Vec<u8>);
pub type Token = u64;

/// What one mutation touches: a file's bytes, size or ACLs, and directory entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub fh: Option<Vec<u8>>,
    /// [start, end) a WRITE changes (may be empty).
    pub written: Option<(u64, u64)>,
    pub size: bool,
    pub entries: Vec<Entry>,
    /// The ACLs a SETACL replaces (NFSACL mask bits).
    pub acl: u32,
}

impl Claims {
    pub fn is_empty(&self) -> bool {
        self.written.is_none() && !self.size && self.entries.is_empty() && self.acl == 0
    }

    fn claims_fh(&self) -> bool {
        self.fh.is_some() && (self.written.is_some() || self.size || self.acl != 0)
    }

    /// True when the NAS's result depends on the order of the two calls.
    pub fn conflicts(&self, other: &Claims) -> bool {
        if self.entries.iter().any(|e| other.entries.contains(e)) {
            return true;
        }
        if self.fh.is_none() || self.fh != other.fh {
            return false;
        }
        if self.acl & other.acl != 0 {
            return true;
        }
        if self.size {
            return other.size || other.written.is_some();
        }
        if other.size {
            return self.written.is_some();
        }
        match (self.written, other.written) {
            (Some((a0, a1)), Some((b0, b1))) => a0 < b1 && b0 < a1,
            _ => false,
        }
    }

    /// The claims of a mutation's record as capture builds it when the call
    /// arrives; `bindings` names the file an UNCHECKED CREATE with a size
    /// would truncate, if the name exists.
    pub fn of(record: &Record, bindings: Option<&BindingCache>) -> Claims {
        let entry = |d: &[u8], n: &[u8]| (d.to_vec(), n.to_vec());
        let sets_size = record.set.as_ref().is_some_and(|s| s.size.is_some());
        match record.op3() {
            proc3::WRITE => Claims {
                fh: Some(record.fh.clone()),
                written: Some((record.offset, record.offset.saturating_add(record.count as u64))),
                ..Default::default()
            },
            proc3::SETATTR if sets_size => Claims { fh: Some(record.fh.clone()), size: true, ..Default::default() },
            proc3::SETATTR => Claims::default(),
            proc3::CREATE if record.create_mode == 0 && sets_size && bindings.is_some() => {
                match bindings.unwrap().handle_of(&record.dir_fh, &record.name) {
                    Some(existing) => Claims {
                        fh: Some(existing.to_vec()),
                        size: true,
                        entries: vec![entry(&record.dir_fh, &record.name)],
                        ..Default::default()
                    },
                    None => Claims { entries: vec![entry(&record.dir_fh, &record.name)], ..Default::default() },
                }
            }
            proc3::CREATE | proc3::MKDIR | proc3::SYMLINK | proc3::MKNOD | proc3::REMOVE | proc3::RMDIR => {
                Claims { entries: vec![entry(&record.dir_fh, &record.name)], ..Default::default() }
            }
            proc3::RENAME => Claims {
                entries: vec![entry(&record.dir_fh, &record.name), entry(&record.to_dir_fh, &record.to_name)],
                ..Default::default()
            },
            proc3::LINK => Claims { entries: vec![entry(&record.to_dir_fh, &record.to_name)], ..Default::default() },
            op::SETACL if record.acl_mask != 0 => {
                Claims { fh: Some(record.fh.clone()), acl: record.acl_mask, ..Default::default() }
            }
            _ => Claims::default(),
        }
    }
}

struct Call {
    seq: u64,
    claims: Claims,
    waits_for: HashSet<Token>,
    blocks: Vec<Token>,
}

/// The mutations of all client sessions of one relay that are in flight or held.
#[derive(Default)]
pub struct ConflictTable {
    calls: HashMap<Token, Call>,
    by_fh: HashMap<Vec<u8>, HashSet<Token>>,
    by_entry: HashMap<Entry, HashSet<Token>>,
    seq: u64,
    pub holds_total: u64,
    pub held_now: u64,
}

impl ConflictTable {
    /// Register a mutation about to go to the NAS: true if it may go now,
    /// false if it must wait (a later `release` hands it back).
    pub fn admit(&mut self, token: Token, claims: Claims) -> bool {
        assert!(!self.calls.contains_key(&token), "token {token} is already in the table");
        if claims.is_empty() {
            return true; // touches nothing another call could reorder
        }
        let mut earlier: HashSet<Token> = HashSet::new();
        if claims.claims_fh() {
            if let Some(t) = self.by_fh.get(claims.fh.as_ref().unwrap()) {
                earlier.extend(t);
            }
        }
        for e in &claims.entries {
            if let Some(t) = self.by_entry.get(e) {
                earlier.extend(t);
            }
        }
        let waits_for: HashSet<Token> =
            earlier.into_iter().filter(|t| claims.conflicts(&self.calls[t].claims)).collect();
        for t in &waits_for {
            self.calls.get_mut(t).unwrap().blocks.push(token);
        }
        if claims.claims_fh() {
            self.by_fh.entry(claims.fh.clone().unwrap()).or_default().insert(token);
        }
        for e in &claims.entries {
            self.by_entry.entry(e.clone()).or_default().insert(token);
        }
        self.seq += 1;
        let held = !waits_for.is_empty();
        self.calls.insert(token, Call { seq: self.seq, claims, waits_for, blocks: Vec::new() });
        if held {
            self.holds_total += 1;
            self.held_now += 1;
        }
        !held
    }

    /// Forget a call (replied, or abandoned whether sent or still held); the
    /// held calls that may go now, in arrival order. Unknown tokens are ignored.
    pub fn release(&mut self, token: Token) -> Vec<Token> {
        let Some(call) = self.calls.remove(&token) else { return Vec::new() };
        self.unindex(token, &call.claims);
        if !call.waits_for.is_empty() {
            self.held_now -= 1; // abandoned while held
            for t in &call.waits_for {
                self.calls.get_mut(t).unwrap().blocks.retain(|&b| b != token);
            }
        }
        let mut freed: Vec<(u64, Token)> = Vec::new();
        for t in call.blocks {
            let later = self.calls.get_mut(&t).unwrap();
            later.waits_for.remove(&token);
            if later.waits_for.is_empty() {
                freed.push((later.seq, t));
            }
        }
        self.held_now -= freed.len() as u64;
        freed.sort_unstable();
        freed.into_iter().map(|(_, t)| t).collect()
    }

    /// True while `token` waits for an earlier conflicting call.
    pub fn is_held(&self, token: Token) -> bool {
        self.calls.get(&token).is_some_and(|c| !c.waits_for.is_empty())
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    fn unindex(&mut self, token: Token, claims: &Claims) {
        for e in &claims.entries {
            if let Some(set) = self.by_entry.get_mut(e) {
                set.remove(&token);
                if set.is_empty() {
                    self.by_entry.remove(e);
                }
            }
        }
        if claims.claims_fh() {
            let fh = claims.fh.as_ref().unwrap();
            if let Some(set) = self.by_fh.get_mut(fh) {
                set.remove(&token);
                if set.is_empty() {
                    self.by_fh.remove(fh);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testrand::Rng;

    fn write(fh: u8, start: u64, len: u64) -> Claims {
        Claims { fh: Some(vec![fh]), written: Some((start, start + len)), ..Default::default() }
    }

    #[test]
    fn only_real_conflicts_wait_and_they_leave_in_arrival_order() {
        let mut t = ConflictTable::default();
        assert!(t.admit(1, write(1, 0, 10)));
        assert!(t.admit(2, write(1, 10, 10))); // adjacent: no overlap
        assert!(!t.admit(3, write(1, 5, 10)));
        assert!(!t.admit(4, Claims { fh: Some(vec![1]), size: true, ..Default::default() }));
        assert!(t.admit(5, write(2, 0, 10)));
        assert_eq!(t.release(1), Vec::<Token>::new());
        assert_eq!(t.release(2), vec![3]);
        assert_eq!(t.release(3), vec![4]);
        assert_eq!(t.held_now, 0);
    }

    /// Under any interleaving: a call goes only when no earlier conflicting
    /// call is left, and every call goes once the calls before it are gone.
    #[test]
    fn the_table_agrees_with_a_model() {
        let mut rng = Rng::new(9);
        for _ in 0..300 {
            let mut t = ConflictTable::default();
            let mut live: Vec<(Token, Claims)> = Vec::new(); // arrival order
            let mut out: HashSet<Token> = HashSet::new();
            for token in 0..40u64 {
                if rng.below(3) > 0 || live.is_empty() {
                    let claims = match rng.below(3) {
                        0 => write(rng.below(2) as u8, rng.below(20), rng.below(8)),
                        1 => Claims { fh: Some(vec![rng.below(2) as u8]), size: true, ..Default::default() },
                        _ => Claims { entries: vec![(vec![0], vec![rng.below(3) as u8])], ..Default::default() },
                    };
                    let blocked = live.iter().any(|(_, c)| c.conflicts(&claims));
                    assert_eq!(t.admit(token, claims.clone()), !blocked);
                    if !blocked {
                        out.insert(token);
                    }
                    live.push((token, claims));
                } else {
                    // Only calls that went out get replies; a held one may be abandoned.
                    let i = rng.below(live.len() as u64) as usize;
                    let (gone, _) = live.remove(i);
                    out.remove(&gone);
                    for freed in t.release(gone) {
                        let at = live.iter().position(|(t, _)| *t == freed).unwrap();
                        assert!(!live[..at].iter().any(|(_, c)| c.conflicts(&live[at].1)));
                        out.insert(freed);
                    }
                }
                for (i, (token, claims)) in live.iter().enumerate() {
                    let free = !live[..i].iter().any(|(_, c)| c.conflicts(claims));
                    assert_eq!(out.contains(token), free, "token {token}");
                    assert_eq!(t.is_held(*token), !free);
                }
            }
        }
    }
}
