//! Group commit: appends from any thread share fsyncs run by one flusher thread.
//!
//! How to call it (the relay, per record):
//! ```ignore
//! // Async: only urgent appends start an fsync at once; the rest within 10 ms.
//! let committer = GroupCommitter::start(log.clone(), Durability::Async, Duration::from_millis(10))?;
//! // Write-ahead: when the call arrives, before forwarding it to the NAS.
//! let seq = committer.append(&[&head, &prefix, &data], &routing, reply_waits)?;
//! // ... the NAS works while the flusher fsyncs ...
//! committer.durable(seq).await?;   // when the reply is back: release it once durable
//! ```
//! `reply_waits` is the durability mode's word on this reply: `strict`: all;
//! `sync`: FILE_SYNC/DATA_SYNC WRITE, COMMIT, namespace and attribute calls,
//! not UNSTABLE WRITE; `async`: none (then nobody awaits `durable`).
//! `durable` waits on a tokio watch of the synced seq (`subscribe()`), never
//! polls; `Durability::Sync` makes every append urgent (the Python proxy).
//! From Python, `notify_fd()` is an eventfd the flusher bumps after every
//! fsync round, for `loop.add_reader` (`nfsproxy._dataplane.NativeCommitter`).
//!
//! The flusher fsyncs as soon as one append is urgent, and every record
//! written while that fsync runs waits for the next one, so under load one
//! fsync covers a whole batch. Non-urgent records (async durability, or
//! replies that promise nothing) are fsynced `flush_interval` after the first.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Append, Log, LogError, Result, Routing, SyncState};

/// When an append counts as done: after its fsync, or after its write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every append is urgent: its caller waits for the fsync.
    Sync,
    /// Appends are fsynced in the background, `flush_interval` after the first.
    Async,
}

struct Flush {
    pending: bool,
    urgent: bool,
    /// The flusher waits on `wake` (idle, or gathering a window): only then
    /// does an append need to wake it, and only when it changes its plan.
    waiting: bool,
    closing: bool,
    failure: Option<String>,
    /// (seq, bytes, appended at) of each record not yet known durable, oldest first.
    unsynced: VecDeque<(u64, u64, Instant)>,
    unsynced_bytes: u64,
}

struct Shared {
    log: Arc<Log>,
    flush: Mutex<Flush>,
    wake: Condvar,
    /// Notified after every fsync round (and on failure).
    done: Condvar,
    flush_interval: Duration,
    durability: Durability,
    notify: OwnedFd,
    appends_total: AtomicU64,
    appended_bytes_total: AtomicU64,
    fsyncs_total: AtomicU64,
    /// Times an append woke the flusher (a futex wake and a context switch each).
    wakes_total: AtomicU64,
    /// u64::MAX: no quota.
    quota_bytes: AtomicU64,
}

/// Group commit in front of a `Log`, with RPO accounting and a quota.
///
/// How to call it: `GroupCommitter::start(log, Durability::Async, interval)?`,
/// then per record `append(&parts, &routing, reply_waits)?` when the call
/// arrives and `durable(seq).await?` before releasing a reply that waits
/// (module doc). Does not own the LOG: `close()` syncs and stops the
/// flusher, the caller closes the LOG after.
pub struct GroupCommitter {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommitter {
    /// Start the flusher thread for `log`.
    pub fn start(log: Arc<Log>, durability: Durability, flush_interval: Duration) -> Result<GroupCommitter> {
        // SAFETY: eventfd returns a new descriptor we then own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(super::io_err("eventfd")(std::io::Error::last_os_error()));
        }
        let shared = Arc::new(Shared {
            log,
            flush: Mutex::new(Flush {
                pending: false,
                urgent: false,
                waiting: false,
                closing: false,
                failure: None,
                unsynced: VecDeque::new(),
                unsynced_bytes: 0,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            flush_interval,
            durability,
            // SAFETY: fd is valid and owned by nobody else.
            notify: unsafe { OwnedFd::from_raw_fd(fd) },
            appends_total: AtomicU64::new(0),
            appended_bytes_total: AtomicU64::new(0),
            fsyncs_total: AtomicU64::new(0),
            wakes_total: AtomicU64::new(0),
            quota_bytes: AtomicU64::new(u64::MAX),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("nfsj-fsync".into())
            .spawn(move || worker.run())
            .map_err(super::io_err("starting the fsync thread"))?;
        Ok(GroupCommitter { shared, thread: Mutex::new(Some(thread)) })
    }

    /// Append one record now and return its seq. `urgent` asks for an fsync
    /// at once (its reply waits for it); in `Sync` durability every append is.
    pub fn append(&self, parts: &[&[u8]], routing: &Routing, urgent: bool) -> Result<u64> {
        self.append_all(&[Append { parts, routing: *routing }], urgent)
    }

    /// Append `records` now, written together (`Log::append_all`); the seq
    /// of the last. `urgent` as for `append`, for the whole batch.
    pub fn append_all(&self, records: &[Append], urgent: bool) -> Result<u64> {
        let s = &self.shared;
        if records.is_empty() {
            return Ok(s.log.last_seq());
        }
        {
            let f = s.flush.lock().unwrap();
            if let Some(why) = &f.failure {
                return Err(LogError::Closed(format!("group commit failed earlier: {why}")));
            }
            if f.closing {
                return Err(LogError::Closed("the group committer is closed".into()));
            }
        }
        let last = s.log.append_all(records)?;
        let now = Instant::now();
        let mut f = s.flush.lock().unwrap();
        let first = last + 1 - records.len() as u64;
        let mut total = 0;
        for (i, record) in records.iter().enumerate() {
            let nbytes: u64 = record.parts.iter().map(|p| p.len() as u64).sum();
            f.unsynced.push_back((first + i as u64, nbytes, now));
            total += nbytes;
        }
        f.unsynced_bytes += total;
        let urgent = urgent || s.durability == Durability::Sync;
        // Wake the flusher only to start a window or to cut one short: a
        // busy flusher looks again when its fsync is done, and one already
        // gathering a window flushes this record with it.
        let wake = f.waiting && (!f.pending || (urgent && !f.urgent));
        f.pending = true;
        f.urgent |= urgent;
        drop(f);
        s.appends_total.fetch_add(records.len() as u64, Ordering::Relaxed);
        s.appended_bytes_total.fetch_add(total, Ordering::Relaxed);
        if wake {
            s.wakes_total.fetch_add(1, Ordering::Relaxed);
            s.wake.notify_one();
        }
        Ok(last)
    }

    /// Ask for an fsync of everything appended so far, now (without waiting).
    pub fn request_sync(&self) {
        let mut f = self.shared.flush.lock().unwrap();
        f.pending = true;
        f.urgent = true;
        drop(f);
        self.shared.wake.notify_one();
    }

    /// Block until `seq` is durable (true), the LOG fails (Err) or `timeout`
    /// passes (false). For threads; async code waits on `subscribe()`.
    pub fn wait_synced(&self, seq: u64, timeout: Option<Duration>) -> Result<bool> {
        let s = &self.shared;
        if s.log.synced_seq() >= seq {
            return Ok(true);
        }
        self.request_sync();
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut f = s.flush.lock().unwrap();
        loop {
            if s.log.synced_seq() >= seq {
                return Ok(true);
            }
            if let Some(why) = &f.failure {
                return Err(LogError::Closed(format!("group commit failed: {why}")));
            }
            f = match deadline {
                None => s.done.wait(f).unwrap(),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    s.done.wait_timeout(f, left).unwrap().0
                }
            };
        }
    }

    /// Resolves once `seq` is durable; `Err` if the LOG failed first. Asks
    /// for an fsync at once if none is under way for it (a record appended
    /// non-urgent whose reply turned out to wait).
    pub async fn durable(&self, seq: u64) -> Result<()> {
        let mut rx = self.shared.log.subscribe_synced();
        if rx.borrow().synced_seq >= seq {
            return Ok(());
        }
        self.request_sync();
        let reached = rx.wait_for(|s| s.synced_seq >= seq || s.failed).await.map(|s| s.synced_seq >= seq);
        match reached {
            Ok(true) => Ok(()),
            _ => Err(LogError::Closed(self.failure().unwrap_or_else(|| "the LOG failed".into()))),
        }
    }

    /// The durability signal: a tokio watch of the synced seq (and failure).
    pub fn subscribe(&self) -> watch::Receiver<SyncState> {
        self.shared.log.subscribe_synced()
    }

    /// An eventfd (non-blocking) the flusher adds 1 to after every fsync
    /// round and on failure; read it to reset, then look at `synced_seq`.
    pub fn notify_fd(&self) -> i32 {
        self.shared.notify.as_raw_fd()
    }

    pub fn log(&self) -> &Arc<Log> {
        &self.shared.log
    }
    pub fn durability(&self) -> Durability {
        self.shared.durability
    }
    pub fn synced_seq(&self) -> u64 {
        self.shared.log.synced_seq()
    }
    pub fn appends_total(&self) -> u64 {
        self.shared.appends_total.load(Ordering::Relaxed)
    }
    pub fn appended_bytes_total(&self) -> u64 {
        self.shared.appended_bytes_total.load(Ordering::Relaxed)
    }
    pub fn fsyncs_total(&self) -> u64 {
        self.shared.fsyncs_total.load(Ordering::Relaxed)
    }
    pub fn failure(&self) -> Option<String> {
        self.shared.flush.lock().unwrap().failure.clone()
    }
    /// Times an append woke the flusher thread.
    pub fn wakes_total(&self) -> u64 {
        self.shared.wakes_total.load(Ordering::Relaxed)
    }

    /// `(records, bytes, age of the oldest)` appended but not known durable:
    /// the RPO window.
    pub fn unsynced(&self) -> (u64, u64, Duration) {
        let synced = self.shared.log.synced_seq();
        let mut f = self.shared.flush.lock().unwrap();
        forget_synced(&mut f, synced);
        let age = f.unsynced.front().map_or(Duration::ZERO, |u| u.2.elapsed());
        (f.unsynced.len() as u64, f.unsynced_bytes, age)
    }

    /// None: no quota.
    pub fn set_quota_bytes(&self, quota: Option<u64>) {
        self.shared.quota_bytes.store(quota.unwrap_or(u64::MAX), Ordering::Relaxed);
    }
    pub fn quota_bytes(&self) -> Option<u64> {
        Some(self.shared.quota_bytes.load(Ordering::Relaxed)).filter(|&q| q != u64::MAX)
    }
    /// The LOG's size on disk exceeds the quota. The policy is the caller's.
    pub fn over_quota(&self) -> bool {
        self.shared.log.size_bytes() > self.shared.quota_bytes.load(Ordering::Relaxed)
    }

    /// Refuse new appends, fsync everything appended, stop the flusher. Does
    /// not close the LOG. Returns the flusher's failure, if it had one.
    pub fn close(&self) -> Result<()> {
        {
            let mut f = self.shared.flush.lock().unwrap();
            f.closing = true;
            f.pending = true;
            f.urgent = true;
        }
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.lock().unwrap().take() {
            let _ = thread.join();
        }
        match self.failure() {
            Some(why) => Err(LogError::Closed(format!("group commit failed: {why}"))),
            None => Ok(()),
        }
    }
}

impl Drop for GroupCommitter {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn forget_synced(f: &mut Flush, synced: u64) {
    while f.unsynced.front().is_some_and(|u| u.0 <= synced) {
        f.unsynced_bytes -= f.unsynced.pop_front().unwrap().1;
    }
}

impl Shared {
    fn run(&self) {
        loop {
            let mut f = self.flush.lock().unwrap();
            f.waiting = true;
            while !f.pending && !f.closing {
                f = self.wake.wait(f).unwrap();
            }
            if !f.urgent && !f.closing {
                // Let a window of non-urgent records gather first.
                f = self.wake.wait_timeout_while(f, self.flush_interval, |f| !f.urgent && !f.closing).unwrap().0;
            }
            f.waiting = false;
            f.pending = false;
            f.urgent = false;
            let closing = f.closing;
            drop(f);
            let result = if self.log.synced_seq() < self.log.last_seq() || self.log.is_closed() {
                self.log.sync().map(|_| self.fsyncs_total.fetch_add(1, Ordering::Relaxed))
            } else {
                Ok(0)
            };
            let synced = self.log.synced_seq();
            let mut f = self.flush.lock().unwrap();
            forget_synced(&mut f, synced);
            let failed = result.is_err();
            if let Err(e) = result {
                f.failure = Some(e.to_string());
            }
            self.done.notify_all();
            drop(f);
            self.bump();
            if failed || (closing && synced >= self.log.last_seq()) {
                return;
            }
        }
    }

    fn bump(&self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write from a local to our eventfd.
        unsafe { libc::write(self.notify.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogOptions;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("nfsj-commit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn one_fsync_covers_records_from_many_threads() {
        let dir = scratch("many");
        let log = Arc::new(Log::open(&dir, LogOptions::default()).unwrap());
        let c = Arc::new(GroupCommitter::start(log.clone(), Durability::Sync, Duration::from_millis(10)).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let seq = c.append(&[format!("{t}-{i}").as_bytes()], &Routing::default(), true).unwrap();
                        assert!(c.wait_synced(seq, None).unwrap());
                        assert!(c.synced_seq() >= seq);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(c.appends_total(), 400);
        assert!(c.fsyncs_total() < 400, "fsyncs {}", c.fsyncs_total());
        assert_eq!(c.unsynced().0, 0);
        c.close().unwrap();
        log.close().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn write_ahead_appends_at_arrival_and_replies_wait_on_the_watch() {
        let dir = scratch("ahead");
        let log = Arc::new(Log::open(&dir, LogOptions::default()).unwrap());
        let c = Arc::new(GroupCommitter::start(log.clone(), Durability::Async, Duration::from_secs(3600)).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let calls: Vec<_> = (0..64u32)
                .map(|i| {
                    let c = c.clone();
                    tokio::spawn(async move {
                        let reply_waits = i % 2 == 0; // e.g. FILE_SYNC vs UNSTABLE
                        let seq = c.append(&[&i.to_be_bytes()], &Routing::default(), reply_waits).unwrap();
                        tokio::task::yield_now().await; // the NAS round trip
                        if reply_waits {
                            c.durable(seq).await.unwrap();
                            assert!(c.synced_seq() >= seq);
                        }
                        seq
                    })
                })
                .collect();
            for call in calls {
                call.await.unwrap();
            }
        });
        assert_eq!(c.appends_total(), 64);
        c.close().unwrap();
        assert_eq!(log.synced_seq(), 64); // close flushed the non-urgent rest
        log.close().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn appends_wake_the_flusher_only_to_start_or_cut_short_a_window() {
        let dir = scratch("wakes");
        let log = Arc::new(Log::open(&dir, LogOptions::default()).unwrap());
        let c = GroupCommitter::start(log.clone(), Durability::Async, Duration::from_secs(3600)).unwrap();
        while !c.shared.flush.lock().unwrap().waiting {
            std::thread::yield_now();
        }
        for i in 0..100u32 {
            c.append(&[&i.to_be_bytes()], &Routing::default(), false).unwrap();
        }
        assert_eq!(c.wakes_total(), 1, "the first record starts the window; the rest join it");
        let seq = c.append(&[b"urgent"], &Routing::default(), true).unwrap();
        assert_eq!(c.wakes_total(), 2, "an urgent record cuts the window short");
        assert!(c.wait_synced(seq, None).unwrap());
        assert_eq!(log.synced_seq(), 101);
        c.close().unwrap();
        log.close().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn async_records_are_flushed_in_the_background() {
        let dir = scratch("async");
        let log = Arc::new(Log::open(&dir, LogOptions::default()).unwrap());
        let c = GroupCommitter::start(log.clone(), Durability::Async, Duration::from_millis(5)).unwrap();
        let seq = c.append(&[b"x"], &Routing::default(), false).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut rx = c.subscribe();
        rt.block_on(async { rx.wait_for(|s| s.synced_seq >= seq).await.unwrap(); });
        c.set_quota_bytes(Some(0));
        assert!(c.over_quota());
        c.close().unwrap();
        assert!(c.append(&[b"y"], &Routing::default(), false).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
