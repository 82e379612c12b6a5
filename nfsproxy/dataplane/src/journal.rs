//! The relay's side of journaling: stamps, conflict holds, LOG appends and
//! which replies wait for durability.
//!
//! One `Journal` per relay, shared by its sessions. A watched call gets a
//! token when it arrives; a mutation is stamped then (from the one HLC the
//! Python control plane shares) unless it conflicts with one in flight, in
//! which case it is held and stamped when released. Its records are appended
//! to the native group committer when the reply is back, and the stamp is
//! released once they are in the LOG. Durability says which replies wait for
//! their record's fsync:
//!
//! * `Async`: none;
//! * `Sync`: every reply but an UNSTABLE WRITE's (it promises nothing) and a
//!   LOOKUP's or READDIRPLUS's (they change nothing), written ahead: the
//!   call's intent is appended (and its fsync asked for) when it is sent, and
//!   the reply waits for the intent, so the fsync overlaps the NAS's work; the
//!   record follows at the reply, fsynced a moment later (`crate::intent`,
//!   `log::orphans`). WRITE and COMMIT replies carry a verifier made from the
//!   NAS's and this run's incarnation, so a restart that may have lost
//!   unsynced records makes clients resend their uncommitted writes (RFC
//!   1813, 3.3.7);
//! * `Strict`: every reply, for its record itself.
//!
//! A mutation whose reply never comes is handed to Python as a gap
//! (`take_gaps`), its stamp held until Python has marked it.

use crate::poison::LockAnyway;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::capture::{Capture, Captured};
use crate::conflict::{ConflictTable, Token};
use crate::hlc::Hlc;
use crate::inflight::InFlight;
use crate::intent::Intents;
use bytes::Bytes;

use crate::log::{Append, GroupCommitter, LogError, RouteKind, Routing};
use crate::nfs3::proc3;
use crate::outbox::Outgoing;
use crate::capture::{op, OpOf};
use crate::record::{self, Record};
use crate::xid::XidTable;

/// The largest WRITE written ahead. Its intent holds its data, written to
/// the LOG a second time with its record: measured on 1 MiB FILE_SYNC writes
/// at 16 in flight, that cost 0.46 CPU-s per GiB and a quarter of the
/// throughput, where the overlap saves one fsync's latency per call.
pub const WRITE_AHEAD_MAX_DATA: usize = 64 << 10;

/// Which replies wait for their record to be durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    Async,
    Sync,
    Strict,
}

impl Durability {
    pub fn parse(text: &str) -> Option<Durability> {
        match text {
            "async" => Some(Durability::Async),
            "sync" => Some(Durability::Sync),
            "strict" => Some(Durability::Strict),
            _ => None,
        }
    }
}

/// What happens to mutations while the LOG is over its quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaPolicy {
    /// A mutation waits before reaching the NAS until the LOG is under quota (fail closed).
    Block,
    /// Mutations go on unjournaled; each dropped record is a gap.
    Passthrough,
}

/// A mutation held behind a conflicting one: where it goes once released.
pub struct Held {
    pub table: Arc<Mutex<XidTable>>,
    pub nas_xid: u32,
    pub link: tokio::sync::mpsc::Sender<Outgoing>,
    pub out: Outgoing,
}

/// One reply's records, gathered to be appended with the others read with it.
pub struct Entry {
    pub token: Token,
    pub records: Vec<Captured>,
    /// The call the records' data ranges point into.
    pub call: Bytes,
    /// Its reply waits for the records' fsync.
    pub waits: bool,
}

/// A record that may be missing, for Python to mark as a gap.
pub struct Gap {
    pub token: Token,
    pub stamp: [u8; 16],
    pub cause: String,
    pub reason: String,
}

pub struct Journal {
    pub capture: Capture,
    pub conflicts: Mutex<ConflictTable>,
    held: Mutex<HashMap<Token, Held>>,
    pub inflight: InFlight,
    /// Write-ahead intents whose records are not yet durable: the LOG keeps them.
    pub intents: Intents,
    pub committer: Arc<GroupCommitter>,
    pub hlc: Arc<Hlc>,
    pub durability: Durability,
    pub quota_policy: QuotaPolicy,
    incarnation: [u8; 8],
    next_token: AtomicU64,
    gaps: Mutex<Vec<Gap>>,
    pub records_total: AtomicU64,
    /// Write-ahead intents appended (`append_intent`).
    pub intents_total: AtomicU64,
    pub failed_mutations_total: AtomicU64,
    pub gaps_total: AtomicU64,
    pub dropped_total: AtomicU64,
    /// Mutations waiting now under the block policy (`wait_under_quota`).
    pub blocked_now: AtomicU64,
    /// Over quota under the passthrough policy: records are being dropped.
    pub passthrough_active: AtomicBool,
    /// While a baseline runs: where successful RENAMEs and LINKs put a name.
    pub watching_moves: AtomicBool,
    moves: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl Journal {
    pub fn new(committer: Arc<GroupCommitter>, hlc: Arc<Hlc>, durability: Durability, incarnation: [u8; 8]) -> Self {
        Journal {
            capture: Capture::default(),
            conflicts: Mutex::new(ConflictTable::default()),
            held: Mutex::new(HashMap::new()),
            inflight: InFlight::default(),
            intents: Intents::default(),
            committer,
            hlc,
            durability,
            quota_policy: QuotaPolicy::Block,
            incarnation,
            next_token: AtomicU64::new(1),
            gaps: Mutex::new(Vec::new()),
            records_total: AtomicU64::new(0),
            intents_total: AtomicU64::new(0),
            failed_mutations_total: AtomicU64::new(0),
            gaps_total: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            blocked_now: AtomicU64::new(0),
            passthrough_active: AtomicBool::new(false),
            watching_moves: AtomicBool::new(false),
            moves: Mutex::new(Vec::new()),
        }
    }

    pub fn token(&self) -> Token {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// A stamp from the clock, held in flight under `token`.
    pub fn stamp(&self, token: Token) -> Result<[u8; 16], String> {
        let stamp = self.hlc.now().map_err(|e| e.to_string())?.to_bytes();
        self.inflight.hold(token, stamp);
        Ok(stamp)
    }

    /// Keep a conflicting mutation until `release_conflicts` frees it.
    pub fn hold_back(&self, token: Token, held: Held) {
        self.held.lock_anyway().insert(token, held);
    }

    /// `token`'s reply is back (or it is abandoned): the held calls that may go now, in order.
    pub fn release_conflicts(&self, token: Token) -> Vec<(Token, Held)> {
        let freed = self.conflicts.lock_anyway().release(token);
        let mut held = self.held.lock_anyway();
        held.remove(&token); // abandoned while held
        freed.into_iter().filter_map(|t| held.remove(&t).map(|h| (t, h))).collect()
    }

    /// Does this mutation's reply wait for its record's fsync?
    pub fn waits(&self, records: &[Captured]) -> bool {
        match self.durability {
            Durability::Async => false,
            Durability::Strict => !records.is_empty(),
            Durability::Sync => records.iter().any(|(r, _)| promises(r)),
        }
    }

    /// Does this mutation, as its call made it (`data_len` bytes of WRITE
    /// data), get a write-ahead intent? In sync durability a reply that
    /// promises anything waits for its intent's fsync instead of its
    /// record's, so the fsync overlaps the NAS's work. Strict waits for the
    /// record itself, so it writes none; nor does passthrough over quota,
    /// which journals nothing; nor a WRITE of more than `WRITE_AHEAD_MAX_DATA`,
    /// whose data would cost the LOG twice more than the overlap saves.
    pub fn writes_ahead(&self, record: &Record, data_len: usize) -> bool {
        self.durability == Durability::Sync
            && promises(record)
            && data_len <= WRITE_AHEAD_MAX_DATA
            && !(self.quota_policy == QuotaPolicy::Passthrough && self.committer.over_quota())
    }

    /// Append a stamped mutation's intent (its record as the call made it,
    /// `data` a WRITE's) and ask for its fsync now; its seq.
    pub fn append_intent(&self, token: Token, record: &Record, data: &[u8]) -> Result<u64, LogError> {
        let head = record::encode(record);
        let prefix = record::data_field_prefix(data.len());
        let parts = [&head[..], &prefix[..], data];
        let parts = if data.is_empty() { &parts[..1] } else { &parts[..] };
        let routing = Routing { stamp: record::routing(record).stamp, kind: RouteKind::Intent, route: 0 };
        let seq = self.committer.append(parts, &routing, true)?;
        self.intents.written(token, seq);
        self.intents_total.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    /// Whether WRITE and COMMIT replies carry the rewritten verifier.
    pub fn rewrites_verifier(&self) -> bool {
        self.durability == Durability::Sync
    }

    /// The verifier clients see: the NAS's, changed by this run's incarnation.
    pub fn verifier(&self, nas: &mut [u8]) {
        for (b, i) in nas.iter_mut().zip(self.incarnation) {
            *b ^= i;
        }
    }

    /// Append the records of several replies with one LOG write (their
    /// fsync is asked for at once if any reply waits); the seq of each
    /// entry's last record, in order.
    pub fn append_batch(&self, entries: &[Entry]) -> Result<Vec<u64>, LogError> {
        let records: Vec<(&Record, &[u8])> = entries
            .iter()
            .flat_map(|e| e.records.iter().map(move |(r, d)| (r, d.clone().map_or(&[][..], |d| &e.call[d]))))
            .collect();
        let heads: Vec<(Vec<u8>, Vec<u8>)> =
            records.iter().map(|(r, data)| (record::encode(r), record::data_field_prefix(data.len()))).collect();
        let parts: Vec<[&[u8]; 3]> =
            records.iter().zip(&heads).map(|((_, data), (head, prefix))| [&head[..], &prefix[..], data]).collect();
        let appends: Vec<Append> = records
            .iter()
            .zip(&parts)
            .map(|((r, data), parts)| Append {
                parts: if data.is_empty() { &parts[..1] } else { &parts[..] },
                routing: record::routing(r),
            })
            .collect();
        let urgent = entries.iter().any(|e| e.waits);
        let last = self.committer.append_all(&appends, urgent)?;
        let mut seq = last - appends.len() as u64;
        let mut seqs = Vec::with_capacity(entries.len());
        let synced = self.committer.synced_seq();
        for e in entries {
            seq += e.records.len() as u64;
            seqs.push(seq);
            self.intents.recorded(e.token, seq, synced);
            self.records_total.fetch_add(e.records.len() as u64, Ordering::Relaxed);
            let failed = e.records.iter().filter(|(r, _)| !r.ok && r.op3() != op::BIND).count();
            self.failed_mutations_total.fetch_add(failed as u64, Ordering::Relaxed);
        }
        Ok(seqs)
    }

    /// A relayed mutation's outcome is unknown: a gap for Python to mark;
    /// its stamp stays held until Python has (`release_gap`).
    pub fn lost(&self, token: Token, record: &Record, client: &str) {
        let reason = format!(
            "a {} from client {client} was relayed to the NAS, but its reply never came: its outcome is unknown",
            op_name(record.op3())
        );
        self.gap(token, record, "no_reply", reason);
    }

    /// Under the passthrough policy, over quota: the records are not
    /// journaled (a gap); true when that is so and `records` were dropped.
    pub fn drop_over_quota(&self, token: Token, records: &[Captured]) -> bool {
        if self.quota_policy != QuotaPolicy::Passthrough || !self.committer.over_quota() {
            self.passthrough_active.store(false, Ordering::Relaxed);
            return false;
        }
        self.passthrough_active.store(true, Ordering::Relaxed);
        self.dropped_total.fetch_add(records.len() as u64, Ordering::Relaxed);
        let reason = "the LOG was over its quota (passthrough policy): records were not journaled";
        match records.iter().map(|(r, _)| r).find(|r| r.stamp.len() == 16) {
            Some(record) => self.gap(token, record, "quota_drop", reason.into()),
            None => {
                self.intents.forget(token);
                self.inflight.release(token);
            }
        }
        true
    }

    /// A record the LOG could not write (ENOSPC, a failed LOG): a gap.
    pub fn write_failed(&self, token: Token, record: &Record, error: &LogError) {
        let reason = format!("the LOG could not write a {} record: {error}", op_name(record.op3()));
        self.gap(token, record, "log_write_failed", reason);
    }

    /// Under the block policy, over quota: a mutation must wait before it reaches the NAS.
    fn must_hold(&self) -> bool {
        self.quota_policy == QuotaPolicy::Block && self.committer.over_quota()
    }

    /// Return once a mutation may reach the NAS: at once, or under the block
    /// policy when the LOG is back under quota; counted in `blocked_now`
    /// while it waits (also if its session ends meanwhile).
    pub async fn wait_under_quota(&self) {
        if !self.must_hold() {
            return;
        }
        let _waiting = Blocked::count(&self.blocked_now);
        while self.must_hold() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    fn gap(&self, token: Token, record: &Record, cause: &str, reason: String) {
        self.intents.forget(token);
        let Ok(stamp) = <[u8; 16]>::try_from(record.stamp.as_slice()) else {
            self.inflight.release(token);
            return;
        };
        self.inflight.hold(token, stamp);
        self.gaps_total.fetch_add(1, Ordering::Relaxed);
        self.gaps.lock_anyway().push(Gap { token, stamp, cause: cause.into(), reason });
    }

    /// Note the names successful RENAMEs and LINKs made, while a baseline watches.
    pub fn note_moves(&self, records: &[Captured]) {
        if !self.watching_moves.load(Ordering::Relaxed) {
            return;
        }
        let mut moves = self.moves.lock_anyway();
        for (r, _) in records {
            if r.ok && matches!(r.op3(), proc3::RENAME | proc3::LINK) {
                moves.push((r.to_dir_fh.clone(), r.to_name.clone()));
            }
        }
    }

    pub fn take_moves(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        std::mem::take(&mut *self.moves.lock_anyway())
    }

    pub fn take_gaps(&self) -> Vec<Gap> {
        std::mem::take(&mut *self.gaps.lock_anyway())
    }

    /// The lowest seq a trim must keep for write-ahead intents; None: no bound.
    pub fn intent_floor(&self) -> Option<u64> {
        self.intents.floor(self.committer.synced_seq())
    }

    /// Run `f` holding every lock of the journal (a test poisons them all).
    #[cfg(test)]
    pub(crate) fn with_every_lock<R>(&self, f: impl FnOnce() -> R) -> R {
        let _locks = (
            self.capture.bindings.lock_anyway(),
            self.conflicts.lock_anyway(),
            self.held.lock_anyway(),
            self.gaps.lock_anyway(),
            self.moves.lock_anyway(),
        );
        self.inflight.with_lock(f)
    }
}

/// Does a successful reply with this record promise stability?
fn promises(r: &Record) -> bool {
    match r.op3() {
        op::BIND => false,
        proc3::WRITE => r.stable != 0,
        _ => true,
    }
}

fn op_name(op: u32) -> &'static str {
    match op {
        proc3::SETATTR => "SETATTR",
        proc3::WRITE => "WRITE",
        proc3::CREATE => "CREATE",
        proc3::MKDIR => "MKDIR",
        proc3::SYMLINK => "SYMLINK",
        proc3::MKNOD => "MKNOD",
        proc3::REMOVE => "REMOVE",
        proc3::RMDIR => "RMDIR",
        proc3::RENAME => "RENAME",
        proc3::LINK => "LINK",
        proc3::COMMIT => "COMMIT",
        op::SETACL => "SETACL",
        _ => "call",
    }
}

/// One mutation held by the block policy, counted while it lives.
struct Blocked<'a>(&'a AtomicU64);

impl<'a> Blocked<'a> {
    fn count(now: &'a AtomicU64) -> Self {
        now.fetch_add(1, Ordering::Relaxed);
        Blocked(now)
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
