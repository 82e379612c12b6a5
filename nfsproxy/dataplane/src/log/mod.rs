//! The durable LOG, native writer side: append with routing fields, segment
//! roll, sync marks, recovery of a torn tail, trim; the format is
//! logstore/FORMAT.md, the same bytes the Python reader (`logstore.log`) reads.
//!
//! How to call it:
//! ```ignore
//! let log = Arc::new(Log::open("/var/lib/nfsj/log", LogOptions::default())?);
//! let seq = log.append(&[head, data], &Routing { stamp, kind: RouteKind::Handle, route })?;
//! log.sync()?;                               // or let a GroupCommitter do it
//! let mut rx = log.subscribe_synced();       // tokio watch of SyncState
//! ```
//! `Log` is `Sync`: any thread may append while another syncs. Only one
//! process may have a LOG open (flock).

mod cache;
pub mod commit;
pub mod durable;
pub mod fanout;
pub mod frame;
mod mark;
pub mod orphans;
mod recover;
pub mod segment;
pub mod select;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use commit::{Durability, GroupCommitter};
pub use frame::{RouteKind, Routing, HEADER_BYTES};
use segment::{data_start, segment_header, segment_name, spare_name, FORMAT_VERSION, SEGMENT_HEADER_BYTES};

pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Trimmed segments kept to be written over (`LogOptions::spare_segments`).
pub const DEFAULT_SPARE_SEGMENTS: usize = 4;
/// NFSv3 WRITEs are at most a few MiB; a record much larger is a bug upstream.
pub const DEFAULT_MAX_RECORD_BYTES: u32 = 16 << 20;
/// A frame's payload is written from at most this many buffers (pwritev takes
/// IOV_MAX = 1024, one is the header).
pub const MAX_PARTS: usize = 1000;

/// pwritev's limit on buffers per call.
const IOV_MAX: usize = 1024;

/// One record for `Log::append_all`: its payload parts (joined, never
/// copied) and its frame's routing fields.
#[derive(Clone, Copy)]
pub struct Append<'a> {
    pub parts: &'a [&'a [u8]],
    pub routing: Routing,
}

/// Frames gathered for one pwritev.
#[derive(Default)]
struct Run<'a> {
    frames: Vec<([u8; HEADER_BYTES], &'a [&'a [u8]])>,
    iov_count: usize,
    bytes: u64,
}

impl<'a> Run<'a> {
    fn push(&mut self, seq: u64, record: &Append<'a>, nbytes: u64) {
        self.frames.push((frame::encode_header(seq, &record.routing, record.parts), record.parts));
        self.iov_count += 1 + record.parts.len();
        self.bytes += nbytes;
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.iov_count = 0;
        self.bytes = 0;
    }
}

/// Every LOG failure.
#[derive(Debug)]
pub enum LogError {
    Io { context: String, source: io::Error },
    /// The LOG on disk is not what a writer of this format wrote, where a
    /// crash cannot explain it.
    Corrupt { path: PathBuf, offset: u64, reason: String, discontinuity: bool },
    /// Closed, or failed (an fsync error) and must be reopened.
    Closed(String),
    /// A bad argument (record too large, too many parts, ...).
    Invalid(String),
    /// Another process (or this one) has the LOG open.
    Busy(String),
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Io { context, source } => write!(f, "{context}: {source}"),
            LogError::Corrupt { path, offset, reason, .. } => write!(
                f,
                "{}: corrupt LOG frame at byte offset {offset}: {reason}",
                path.display()
            ),
            LogError::Closed(why) | LogError::Invalid(why) | LogError::Busy(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for LogError {}

pub type Result<T> = std::result::Result<T, LogError>;

pub(crate) fn io_err(context: impl fmt::Display) -> impl FnOnce(io::Error) -> LogError {
    let context = context.to_string();
    move |source| LogError::Io { context, source }
}

/// How a LOG is opened.
#[derive(Clone, Debug)]
pub struct LogOptions {
    pub segment_bytes: u64,
    pub max_record_bytes: u32,
    /// How often the sync mark is fsynced (zero: with every sync).
    pub mark_interval: Duration,
    /// How many trimmed segments to keep as spares, which new segments are
    /// then written over instead of growing new files (as databases recycle
    /// their WAL files): the writes land in pages the page cache already
    /// holds, and an fdatasync has no file size to log. Zero: trim deletes.
    pub spare_segments: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            mark_interval: Duration::from_secs(1),
            spare_segments: DEFAULT_SPARE_SEGMENTS,
        }
    }
}

/// A torn tail that recovery cut from the newest segment: records appended
/// after `after_seq` that were never reported synced, and are now gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    pub offset: u64,
    pub truncated_bytes: u64,
    pub after_seq: u64,
}

/// One segment as listed by `Log::segments`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub first_seq: u64,
    /// `first_seq - 1` when empty.
    pub last_seq: u64,
    pub size_bytes: u64,
    pub active: bool,
    pub version: u8,
}

/// What the durability signal carries: the highest seq known durable, and
/// whether the LOG failed (then no more seqs will become durable). Read it
/// from `Log::subscribe_synced()`: `rx.wait_for(|s| s.synced_seq >= seq || s.failed)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncState {
    pub synced_seq: u64,
    pub failed: bool,
}

struct Segment {
    path: PathBuf,
    base_seq: u64,
    /// Counts only complete frames: readers never read past it.
    size: u64,
    version: u8,
    file: Option<File>,
    /// Sparse `(seq, offset)` index of frames written or scanned in this process.
    index: Vec<(u64, u64)>,
    /// The file may hold an older segment's bytes past `size` (it is a
    /// spare written over): they are cut before the segment is sealed.
    stale_tail: bool,
}

impl Segment {
    fn create(dir: &Path, base_seq: u64) -> Result<Segment> {
        let path = dir.join(segment_name(base_seq));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_CLOEXEC)
            .mode(0o644)
            .open(&path)
            .map_err(io_err(format!("creating {}", path.display())))?;
        Segment::headed(path, base_seq, file, false)
    }

    /// The segment starting at `base_seq`, made from the spare file `spare`:
    /// renamed, its header written again, its old frames left to be written over.
    fn recycle(dir: &Path, spare: &Path, base_seq: u64) -> Result<Segment> {
        let path = dir.join(segment_name(base_seq));
        std::fs::rename(spare, &path)
            .map_err(io_err(format!("renaming {} to {}", spare.display(), path.display())))?;
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        Segment::headed(path, base_seq, file, true)
    }

    /// A new active segment in `file`, once its segment header is written.
    fn headed(path: PathBuf, base_seq: u64, file: File, stale_tail: bool) -> Result<Segment> {
        file.write_all_at(&segment_header(), 0)
            .map_err(io_err(format!("writing {}", path.display())))?;
        Ok(Segment {
            path,
            base_seq,
            size: SEGMENT_HEADER_BYTES as u64,
            version: FORMAT_VERSION,
            file: Some(file),
            index: Vec::new(),
            stale_tail,
        })
    }

    fn has_frames(&self) -> bool {
        self.size > data_start(self.version)
    }
}


struct State {
    /// Ordered by base seq; the last one is active.
    segments: Vec<Segment>,
    /// Spare files, oldest first (`LogOptions::spare_segments`).
    spares: Vec<PathBuf>,
    last_seq: u64,
    size_bytes: u64,
    /// A segment was created since the last directory fsync.
    dir_dirty: bool,
    closed: bool,
    failure: Option<String>,
}

/// What readers of the LOG's extent ask most often (the shipper on every
/// batch, the status writer every second), copied out of `State` after each
/// change. An append holds the state lock across its pwritev, and a roll
/// across an fsync: a reader that took that lock while holding Python's GIL
/// stalled every Python thread of the proxy meanwhile.
#[derive(Default)]
struct Published {
    first_seq: AtomicU64,
    last_seq: AtomicU64,
    size_bytes: AtomicU64,
    closed: AtomicBool,
    spares: AtomicU64,
}

impl Published {
    fn of(st: &State) -> Published {
        let published = Published::default();
        published.update(st);
        published
    }

    fn update(&self, st: &State) {
        self.first_seq.store(st.segments[0].base_seq, Ordering::Release);
        self.last_seq.store(st.last_seq, Ordering::Release);
        self.size_bytes.store(st.size_bytes, Ordering::Release);
        self.spares.store(st.spares.len() as u64, Ordering::Release);
        self.closed.store(st.closed, Ordering::Release);
    }
}

/// An append-only, crash-safe LOG of payloads with routing fields.
///
/// How to call it: `Log::open(dir, LogOptions::default())?` (recovers a torn
/// tail; `torn_tails()` lists what it cut, `mark_torn_tails` appends their
/// GAP records), then `append(&parts, &routing)` from any thread, `sync()` or
/// a `GroupCommitter` for durability, `subscribe_synced()` to wait for it,
/// `trim(below_seq)` for retention, `close()` at a clean stop.
pub struct Log {
    dir: PathBuf,
    opts: LogOptions,
    dir_file: File,
    lock_file: Mutex<Option<File>>,
    mark_file: File,
    state: Mutex<State>,
    published: Published,
    /// One sync at a time; holds when the mark was last fsynced.
    sync_lock: Mutex<Option<Instant>>,
    synced: watch::Sender<SyncState>,
    trims: watch::Sender<u64>,
    /// New segments made from spares, since open.
    recycled: AtomicU64,
    log_id: String,
    torn_tails: Vec<TornTail>,
    recovered_truncated_bytes: u64,
}

impl Log {
    /// Open (creating if needed) the LOG in `dir` and recover it: a torn tail
    /// of the newest segment is cut (and noted in TORN), damage a crash
    /// cannot explain is `LogError::Corrupt` (logstore/FORMAT.md).
    pub fn open(dir: impl AsRef<Path>, opts: LogOptions) -> Result<Log> {
        recover::open(dir.as_ref(), opts)
    }

    /// Write one record (not yet durable; see `sync`) and return its seq.
    /// `parts` joined form the payload; they are written with one pwritev,
    /// never joined in memory.
    pub fn append(&self, parts: &[&[u8]], routing: &Routing) -> Result<u64> {
        self.append_all(&[Append { parts, routing: *routing }])
    }

    /// Write `records` in order, with one pwritev for as many of them as fit
    /// (several records written together touch each page cache page once
    /// instead of once per record); return the seq of the last, so record
    /// `i` has seq `last - (len - 1) + i`. An error may come after some of
    /// them were written: those stay, as complete frames.
    pub fn append_all(&self, records: &[Append]) -> Result<u64> {
        for record in records {
            self.check_record(record.parts)?;
        }
        let mut st = self.state.lock().unwrap();
        self.check_usable(&st)?;
        let mut run = Run::default();
        for record in records {
            let nbytes = HEADER_BYTES as u64 + record.parts.iter().map(|p| p.len() as u64).sum::<u64>();
            let active = st.segments.last().unwrap();
            let size = active.size + run.bytes;
            let full = active.has_frames() || run.bytes > 0;
            if full && size + nbytes > self.opts.segment_bytes {
                self.write_run(&mut st, &mut run)?;
                self.roll(&mut st)?;
            } else if run.iov_count + record.parts.len() + 1 > IOV_MAX {
                self.write_run(&mut st, &mut run)?;
            }
            run.push(st.last_seq + run.frames.len() as u64 + 1, record, nbytes);
        }
        self.write_run(&mut st, &mut run)?;
        Ok(st.last_seq)
    }

    fn check_record(&self, parts: &[&[u8]]) -> Result<()> {
        if parts.len() > MAX_PARTS {
            return Err(LogError::Invalid(format!(
                "a payload has at most {MAX_PARTS} parts, got {}",
                parts.len()
            )));
        }
        let nbytes: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if nbytes > self.opts.max_record_bytes as u64 {
            return Err(LogError::Invalid(format!(
                "record of {nbytes} bytes exceeds max_record_bytes ({})",
                self.opts.max_record_bytes
            )));
        }
        Ok(())
    }

    /// Write the frames gathered in `run` at the end of the active segment.
    fn write_run(&self, st: &mut State, run: &mut Run) -> Result<()> {
        if run.frames.is_empty() {
            return Ok(());
        }
        let active = st.segments.last_mut().unwrap();
        let file = active.file.as_ref().unwrap();
        let mut buffers: Vec<&[u8]> = Vec::with_capacity(run.iov_count);
        for (header, parts) in &run.frames {
            buffers.push(header);
            buffers.extend_from_slice(parts);
        }
        if let Err(e) = pwritev_all(file, &buffers, active.size) {
            // Cut back to the last complete frame, so the next append does not
            // land behind a partial one.
            let _ = file.set_len(active.size);
            run.clear();
            return Err(LogError::Io { context: format!("appending to {}", active.path.display()), source: e });
        }
        let mut offset = active.size;
        for (i, (_, parts)) in run.frames.iter().enumerate() {
            if active.index.last().is_none_or(|&(_, o)| offset - o >= segment::INDEX_INTERVAL_BYTES) {
                active.index.push((st.last_seq + 1 + i as u64, offset));
            }
            offset += HEADER_BYTES as u64 + parts.iter().map(|p| p.len() as u64).sum::<u64>();
        }
        active.size += run.bytes;
        st.size_bytes += run.bytes;
        st.last_seq += run.frames.len() as u64;
        self.published.update(st);
        run.clear();
        Ok(())
    }

    fn roll(&self, st: &mut State) -> Result<()> {
        // Fsync the old segment before its successor exists: recovery then
        // only ever has to repair the newest segment.
        let old = st.segments.last().unwrap();
        let (old_base, old_size) = (old.base_seq, old.size);
        let file = old.file.as_ref().unwrap();
        let synced = if old.stale_tail {
            // A sealed segment ends at its last frame; its new size must be
            // durable before a successor exists.
            file.set_len(old_size).and_then(|()| durable::sync_all(file))
        } else {
            durable::sync_data(file)
        };
        self.durably(st, synced, "fsync of the active segment")?;
        if st.dir_dirty {
            // The old segment may be new itself: its records count as synced
            // only once its directory entry is durable too.
            let synced = durable::sync_all(&self.dir_file);
            self.durably(st, synced, "fsync of the LOG directory")?;
            st.dir_dirty = false;
        }
        let new = match self.take_spare(st)? {
            Some(spare) => {
                self.recycled.fetch_add(1, Ordering::Relaxed);
                Segment::recycle(&self.dir, &spare, st.last_seq + 1)?
            }
            None => Segment::create(&self.dir, st.last_seq + 1)?,
        };
        let sealed = st.segments.last_mut().unwrap();
        sealed.file = None; // sealed only now
        sealed.stale_tail = false;
        self.write_mark(old_base, old_size, st.last_seq, false);
        self.publish_synced(st.last_seq);
        st.size_bytes += new.size;
        st.segments.push(new);
        st.dir_dirty = true;
        self.published.update(st);
        Ok(())
    }

    /// The oldest spare still worth writing over (its pages cached); spares
    /// no longer cached are deleted.
    fn take_spare(&self, st: &mut State) -> Result<Option<PathBuf>> {
        while !st.spares.is_empty() {
            let spare = st.spares.remove(0);
            if cache::mostly_cached(&spare) {
                return Ok(Some(spare));
            }
            std::fs::remove_file(&spare).map_err(io_err(format!("removing {}", spare.display())))?;
        }
        Ok(None)
    }

    /// Make every record appended so far durable; return the synced seq.
    /// Blocks for an fsync; appends from other threads go on meanwhile (the
    /// next sync covers them). After a failed fsync the LOG refuses further
    /// use: the kernel may have dropped the dirty pages.
    pub fn sync(&self) -> Result<u64> {
        let mut mark_synced_at = self.sync_lock.lock().unwrap();
        let (file, position, dir_dirty) = {
            let mut st = self.state.lock().unwrap();
            self.check_usable(&st)?;
            let target = st.last_seq;
            if target <= self.synced_seq() && !st.dir_dirty {
                return Ok(self.synced_seq());
            }
            // A private fd: a concurrent roll may close the segment's own.
            let active = st.segments.last().unwrap();
            let file = active.file.as_ref().unwrap().try_clone()
                .map_err(io_err("dup of the active segment"))?;
            let position = (active.base_seq, active.size, target);
            let dir_dirty = std::mem::take(&mut st.dir_dirty);
            (file, position, dir_dirty)
        };
        self.durably_unlocked(durable::sync_data(&file), "fdatasync of the active segment")?;
        if dir_dirty {
            self.durably_unlocked(durable::sync_all(&self.dir_file), "fsync of the LOG directory")?;
        }
        let target = position.2;
        if target >= self.synced_seq() {
            let _st = self.state.lock().unwrap();
            self.write_mark(position.0, position.1, position.2, false);
        }
        let due = mark_synced_at.is_none_or(|at| at.elapsed() >= self.opts.mark_interval);
        if due {
            *mark_synced_at = Some(Instant::now());
            self.durably_unlocked(durable::sync_data(&self.mark_file), "fdatasync of the sync mark")?;
        }
        self.publish_synced(target);
        Ok(self.synced_seq())
    }

    fn write_mark(&self, base_seq: u64, offset: u64, seq: u64, closed: bool) {
        // Only positions already durable are written, so whatever version of
        // the mark survives a crash is a lower bound of what was synced. A
        // failed write leaves an older, still true, mark.
        let _ = self.mark_file.write_all_at(&mark::encode(base_seq, offset, seq, closed), 0);
    }

    fn publish_synced(&self, seq: u64) {
        self.synced.send_if_modified(|s| {
            let moved = seq > s.synced_seq;
            s.synced_seq = s.synced_seq.max(seq);
            moved
        });
    }

    fn durably(&self, st: &mut State, r: io::Result<()>, what: &str) -> Result<()> {
        r.map_err(|e| {
            let why = format!("{}: {what} failed; the LOG must be reopened: {e}", self.dir.display());
            st.failure = Some(why.clone());
            self.synced.send_modify(|s| s.failed = true);
            LogError::Closed(why)
        })
    }

    fn durably_unlocked(&self, r: io::Result<()>, what: &str) -> Result<()> {
        if r.is_err() {
            let mut st = self.state.lock().unwrap();
            return self.durably(&mut st, r, what);
        }
        Ok(())
    }

    fn check_usable(&self, st: &State) -> Result<()> {
        if st.closed {
            return Err(LogError::Closed(format!("{}: the LOG is closed", self.dir.display())));
        }
        if let Some(why) = &st.failure {
            return Err(LogError::Closed(format!("the LOG failed and must be reopened: {why}")));
        }
        Ok(())
    }

    /// Append (and sync) one GAP payload per torn tail noted by recovery,
    /// then forget the notes. Until then they survive any number of crashes.
    pub fn mark_torn_tails(&self, marker: impl Fn(&TornTail) -> (Vec<u8>, Routing)) -> Result<()> {
        if self.torn_tails.is_empty() {
            return Ok(());
        }
        for torn in &self.torn_tails {
            let (payload, routing) = marker(torn);
            self.append(&[&payload], &routing)?;
        }
        self.sync()?;
        mark::forget_torn(&self.dir, &self.dir_file)
    }

    /// Drop whole sealed segments whose records are all below `below_seq`;
    /// never the active one. Each is deleted, or kept as a spare while fewer
    /// than `spare_segments` are and its pages are cached. Returns how many
    /// were dropped.
    pub fn trim(&self, below_seq: u64) -> Result<usize> {
        let mut st = self.state.lock().unwrap();
        if st.closed {
            return Err(LogError::Closed(format!("{}: the LOG is closed", self.dir.display())));
        }
        let mut deleted = 0;
        while st.segments.len() > 1 && st.segments[1].base_seq <= below_seq {
            let victim = st.segments.remove(0);
            let keep = st.spares.len() < self.opts.spare_segments && victim.version == FORMAT_VERSION;
            if keep && cache::mostly_cached(&victim.path) {
                let spare = self.dir.join(spare_name(victim.base_seq));
                std::fs::rename(&victim.path, &spare)
                    .map_err(io_err(format!("renaming {} to {}", victim.path.display(), spare.display())))?;
                st.spares.push(spare);
            } else {
                std::fs::remove_file(&victim.path)
                    .map_err(io_err(format!("removing {}", victim.path.display())))?;
            }
            st.size_bytes -= victim.size;
            deleted += 1;
            self.published.update(&st);
        }
        if deleted > 0 {
            // A power cut must not bring back a segment whose successor was
            // trimmed: the LOG would have a hole.
            durable::sync_all(&self.dir_file).map_err(io_err("fsync of the LOG directory"))?;
            drop(st);
            self.trims.send_modify(|n| *n += 1);
        }
        Ok(deleted)
    }

    /// Sync what was appended (unless the LOG failed), leave an exact mark,
    /// release the directory. Idempotent.
    pub fn close(&self) -> Result<()> {
        let failed = {
            let st = self.state.lock().unwrap();
            if st.closed {
                return Ok(());
            }
            st.failure.is_some()
        };
        let result = if failed {
            Ok(())
        } else {
            self.sync().and_then(|_| {
                let st = self.state.lock().unwrap();
                let active = st.segments.last().unwrap();
                // A clean stop leaves an exact close mark: then any damage is
                // corruption, and a spare's older bytes past it are no torn tail.
                self.write_mark(active.base_seq, active.size, st.last_seq, true);
                drop(st);
                durable::sync_data(&self.mark_file).map_err(io_err("fdatasync of the sync mark"))
            })
        };
        let _sync = self.sync_lock.lock().unwrap();
        let mut st = self.state.lock().unwrap();
        st.closed = true;
        self.published.update(&st);
        if let Some(active) = st.segments.last_mut() {
            active.file = None;
        }
        self.lock_file.lock().unwrap().take(); // releases the flock
        result
    }

    /// A tokio watch of the durability state: wait on it for a seq to be
    /// durable without polling (`rx.wait_for(|s| s.synced_seq >= seq || s.failed)`).
    pub fn subscribe_synced(&self) -> watch::Receiver<SyncState> {
        self.synced.subscribe()
    }

    /// A tokio watch that changes after every trim that deleted segments.
    pub fn subscribe_trims(&self) -> watch::Receiver<u64> {
        self.trims.subscribe()
    }

    pub fn directory(&self) -> &Path {
        &self.dir
    }
    /// Lowest seq still held; equals `next_seq` when the LOG holds none.
    pub fn first_seq(&self) -> u64 {
        self.published.first_seq.load(Ordering::Acquire)
    }
    /// Highest seq appended (0 for a fresh LOG).
    pub fn last_seq(&self) -> u64 {
        self.published.last_seq.load(Ordering::Acquire)
    }
    /// Highest seq known durable.
    pub fn synced_seq(&self) -> u64 {
        self.synced.borrow().synced_seq
    }
    /// Total bytes of all segment files.
    pub fn size_bytes(&self) -> u64 {
        self.published.size_bytes.load(Ordering::Acquire)
    }

    /// Spare files kept to write new segments over (not in `size_bytes`).
    pub fn spare_segments(&self) -> u64 {
        self.published.spares.load(Ordering::Acquire)
    }

    /// New segments written over spares since open.
    pub fn recycled_segments(&self) -> u64 {
        self.recycled.load(Ordering::Relaxed)
    }
    pub fn recovered_truncated_bytes(&self) -> u64 {
        self.recovered_truncated_bytes
    }
    /// The LOG's identity (LOG_ID), made when it was created.
    pub fn log_id(&self) -> &str {
        &self.log_id
    }
    /// The torn tails recovery found noted (and not yet marked) at open.
    pub fn torn_tails(&self) -> &[TornTail] {
        &self.torn_tails
    }
    pub fn is_closed(&self) -> bool {
        self.published.closed.load(Ordering::Acquire)
    }
    /// Why the LOG failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.state.lock().unwrap().failure.clone()
    }

    /// Where a reader starts to reach `seq`: the segment holding it and the
    /// indexed frame nearest below it, `(segment, offset, start_seq)`; None if
    /// the LOG does not hold `seq` (trimmed, or beyond the next seq).
    pub fn locate(&self, seq: u64) -> Option<(SegmentInfo, u64, u64)> {
        let st = self.state.lock().unwrap();
        let first = st.segments[0].base_seq;
        if seq < first || seq > st.last_seq + 1 {
            return None;
        }
        let i = st.segments.partition_point(|s| s.base_seq <= seq) - 1;
        let s = &st.segments[i];
        let info = self.info(&st, i);
        if seq == st.last_seq + 1 && i + 1 == st.segments.len() {
            return Some((info, s.size, seq));
        }
        let j = s.index.partition_point(|&(q, _)| q <= seq);
        let (start_seq, offset) = if j > 0 { s.index[j - 1] } else { (s.base_seq, data_start(s.version)) };
        Some((info, offset, start_seq))
    }

    /// `(readable end, sealed)` of the segment starting at `base_seq`, as one
    /// snapshot; None once it was trimmed.
    pub fn extent(&self, base_seq: u64) -> Option<(u64, bool)> {
        let st = self.state.lock().unwrap();
        let i = st.segments.binary_search_by_key(&base_seq, |s| s.base_seq).ok()?;
        Some((st.segments[i].size, i + 1 < st.segments.len() || st.closed))
    }

    fn info(&self, st: &State, i: usize) -> SegmentInfo {
        let s = &st.segments[i];
        let n = st.segments.len();
        SegmentInfo {
            path: s.path.clone(),
            first_seq: s.base_seq,
            last_seq: if i + 1 < n { st.segments[i + 1].base_seq - 1 } else { st.last_seq },
            size_bytes: s.size,
            active: i + 1 == n,
            version: s.version,
        }
    }

    /// The segments on disk, oldest first; the last one is active.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let st = self.state.lock().unwrap();
        (0..st.segments.len()).map(|i| self.info(&st, i)).collect()
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// One vectored positional write of every buffer, looping on short writes.
fn pwritev_all(file: &File, buffers: &[&[u8]], mut offset: u64) -> io::Result<()> {
    let mut iov: Vec<libc::iovec> = buffers
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() })
        .collect();
    let mut first = 0;
    while first < iov.len() {
        let rest = &iov[first..];
        // SAFETY: every iovec points into a live borrowed slice of its length.
        let n = unsafe {
            libc::pwritev(file.as_raw_fd(), rest.as_ptr(), rest.len() as libc::c_int, offset as libc::off_t)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, format!("pwritev wrote nothing at offset {offset}")));
        }
        offset += n as u64;
        let mut written = n as usize;
        while first < iov.len() && written >= iov[first].iov_len {
            written -= iov[first].iov_len;
            first += 1;
        }
        if written > 0 {
            let v = &mut iov[first];
            // SAFETY: still inside the same slice.
            v.iov_base = unsafe { (v.iov_base as *mut u8).add(written) } as *mut libc::c_void;
            v.iov_len -= written;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testrand::Rng;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nfsj-log-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Frames as (seq, stamp's first byte, payload).
    type Frames = Vec<(u64, u8, Vec<u8>)>;

    /// Every frame on disk, in seq order.
    fn frames_on_disk(log: &Log) -> Frames {
        let mut out = Vec::new();
        for s in log.segments() {
            let data = std::fs::read(&s.path).unwrap();
            let (found, bad) = segment::frames(&data[..s.size_bytes as usize], s.version, s.first_seq);
            assert!(bad.is_none(), "{bad:?}");
            out.extend(found.into_iter().map(|f| (f.seq, f.routing.stamp[0], f.payload)));
        }
        out
    }

    #[test]
    fn its_extent_is_read_while_an_append_or_a_roll_holds_the_state() {
        let dir = scratch("extent");
        let log = std::sync::Arc::new(Log::open(&dir, LogOptions::default()).unwrap());
        log.append(&[b"one"], &Routing::default()).unwrap();
        log.append(&[b"two"], &Routing::default()).unwrap();
        let held = log.state.lock().unwrap(); // as during a pwritev, or a roll's fsync
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = log.clone();
        std::thread::spawn(move || {
            let _ = tx.send((reader.first_seq(), reader.last_seq(), reader.size_bytes(), reader.is_closed()));
        });
        let seen = rx.recv_timeout(Duration::from_secs(30));
        let size = held.size_bytes;
        drop(held);
        assert_eq!(seen, Ok((1, 2, size, false)), "the reader waited for the state lock");
        log.close().unwrap();
        assert!(log.is_closed());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn records_appended_together_are_the_records_appended_one_by_one() {
        let dir = scratch("together");
        let opts = LogOptions { segment_bytes: 64 << 10, ..LogOptions::default() };
        let log = Log::open(&dir, opts.clone()).unwrap();
        let mut rng = Rng::new(3);
        let mut expect = Vec::new();
        while expect.len() < 600 {
            let batch: Vec<Vec<Vec<u8>>> = (0..rng.below(40) + 1)
                .map(|_| (0..rng.below(3) + 1).map(|_| rng.some_bytes(5000)).collect())
                .collect();
            let parts: Vec<Vec<&[u8]>> = batch.iter().map(|r| r.iter().map(Vec::as_slice).collect()).collect();
            let appends: Vec<Append> = parts
                .iter()
                .enumerate()
                .map(|(i, p)| Append { parts: p, routing: Routing { stamp: [i as u8; 16], ..Routing::default() } })
                .collect();
            let last = log.append_all(&appends).unwrap();
            let first = last + 1 - batch.len() as u64;
            assert_eq!(first, expect.len() as u64 + 1);
            expect.extend(batch.iter().enumerate().map(|(i, r)| (first + i as u64, i as u8, r.concat())));
        }
        assert_eq!(frames_on_disk(&log), expect);
        let segments = log.segments();
        assert!(segments.len() > 10);
        assert!(segments.iter().all(|s| s.size_bytes <= 64 << 10), "a batch never overfills a segment");
        for seq in 1..=expect.len() as u64 {
            let (segment, _, start) = log.locate(seq).unwrap();
            assert!(segment.first_seq <= start && start <= seq && seq <= segment.last_seq);
        }
        log.close().unwrap();
        let log = Log::open(&dir, opts).unwrap();
        assert_eq!(log.last_seq(), expect.len() as u64);
        assert_eq!(frames_on_disk(&log), expect);
        log.close().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn inode(path: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
    }

    /// Appends 300-byte records up to `last` (seqs from `log.last_seq() + 1`).
    fn fill(log: &Log, last: u64, expect: &mut Frames) {
        while log.last_seq() < last {
            let seq = log.last_seq() + 1;
            let payload = vec![seq as u8; 300];
            assert_eq!(log.append(&[&payload], &Routing::default()).unwrap(), seq);
            expect.push((seq, 0, payload));
        }
    }

    /// A LOG of small segments with one spare: 40 records, segments 1-3
    /// trimmed (one kept as a spare), then written on until a new segment
    /// reuses the spare's file. Returns the LOG, its options, the frames it
    /// holds, and the spare's inode.
    fn log_over_a_spare(dir: &Path) -> (Log, LogOptions, Frames, u64) {
        let opts = LogOptions { segment_bytes: 4096, spare_segments: 1, ..LogOptions::default() };
        let log = Log::open(dir, opts.clone()).unwrap();
        let mut expect = Vec::new();
        fill(&log, 40, &mut expect);
        log.sync().unwrap();
        let segments = log.segments();
        assert!(segments.len() >= 4, "{segments:?}");
        let victim = &segments[0];
        let spare = dir.join(spare_name(victim.first_seq));
        let spare_inode = inode(&victim.path);
        assert_eq!(log.trim(segments[3].first_seq).unwrap(), 3);
        assert!(!segments[1].path.exists() && !segments[2].path.exists(), "only one spare is kept");
        assert_eq!(inode(&spare), spare_inode, "the first trimmed segment became the spare");
        expect.retain(|&(seq, ..)| seq >= segments[3].first_seq);
        let before = log.segments().len();
        fill(&log, 52, &mut expect);
        while log.segments().len() == before {
            fill(&log, log.last_seq() + 1, &mut expect);
        }
        let newest = log.segments().pop().unwrap();
        assert_eq!(inode(&newest.path), spare_inode, "the new segment is the spare, written over");
        assert!(!spare.exists());
        fill(&log, newest.first_seq + 1, &mut expect); // part of the old bytes written over
        assert!(std::fs::metadata(&newest.path).unwrap().len() > newest.size_bytes + 300);
        (log, opts, expect, spare_inode)
    }

    #[test]
    fn a_trimmed_segment_is_written_over_by_a_new_one_and_cut_to_its_frames_when_sealed() {
        let dir = scratch("spare");
        let (log, opts, mut expect, _) = log_over_a_spare(&dir);
        assert_eq!(frames_on_disk(&log), expect);
        let over = log.segments().pop().unwrap();
        let before = log.segments().len();
        while log.segments().len() == before {
            fill(&log, log.last_seq() + 1, &mut expect);
        }
        let sealed = log.segments().into_iter().find(|s| s.first_seq == over.first_seq).unwrap();
        assert_eq!(std::fs::metadata(&sealed.path).unwrap().len(), sealed.size_bytes);
        log.close().unwrap();
        let log = Log::open(&dir, opts).unwrap();
        assert_eq!(frames_on_disk(&log), expect);
        assert!(log.torn_tails().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn after_a_clean_close_the_older_bytes_are_no_torn_tail_and_are_written_over() {
        let dir = scratch("spare-close");
        let (log, opts, mut expect, spare_inode) = log_over_a_spare(&dir);
        log.close().unwrap();
        drop(log);
        let log = Log::open(&dir, opts.clone()).unwrap();
        assert!(log.torn_tails().is_empty(), "{:?}", log.torn_tails());
        assert_eq!(log.recovered_truncated_bytes(), 0);
        assert_eq!(frames_on_disk(&log), expect);
        let newest = log.segments().pop().unwrap();
        assert_eq!(inode(&newest.path), spare_inode);
        assert!(std::fs::metadata(&newest.path).unwrap().len() > newest.size_bytes, "kept to write over");
        fill(&log, log.last_seq() + 2, &mut expect);
        drop(log); // as a clean stop
        let log = Log::open(&dir, opts).unwrap();
        assert!(log.torn_tails().is_empty());
        assert_eq!(frames_on_disk(&log), expect);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_crash_in_a_spare_written_over_is_a_torn_tail_never_corruption() {
        let dir = scratch("spare-crash");
        let (log, opts, expect, _) = log_over_a_spare(&dir);
        log.sync().unwrap();
        // What a kill -9 leaves: the files as they are, with no close.
        let image = scratch("spare-crash-image");
        std::fs::create_dir_all(&image).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), image.join(entry.file_name())).unwrap();
        }
        log.close().unwrap();
        let reopened = Log::open(&image, opts).unwrap();
        let newest = reopened.segments().pop().unwrap();
        let torn = reopened.torn_tails().to_vec();
        assert_eq!(torn.len(), 1, "an unclean stop in a spare is noted: a gap, never a silent pass");
        assert_eq!((torn[0].offset, torn[0].after_seq), (newest.size_bytes, expect.last().unwrap().0));
        assert_eq!(frames_on_disk(&reopened), expect);
        assert_eq!(std::fs::metadata(&newest.path).unwrap().len(), newest.size_bytes);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&image);
    }
}
