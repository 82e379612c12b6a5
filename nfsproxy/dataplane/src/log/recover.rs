//! Opening a LOG: lock, identity, segment list, recovery of the newest
//! segment's tail (logstore/FORMAT.md, "Recovery at open").

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::watch;

use super::mark::{self, Mark};
use super::segment::{
    self, parse_segment_name, parse_spare_name, segment_header, segment_name, FORMAT_VERSION, SEGMENT_HEADER_BYTES,
};
use super::{durable, io_err, Log, LogError, LogOptions, Published, Result, Segment, State, SyncState, TornTail, HEADER_BYTES};

const LOCK_NAME: &str = "LOCK";
const ID_NAME: &str = "LOG_ID";

pub(super) fn open(dir: &Path, opts: LogOptions) -> Result<Log> {
    if opts.segment_bytes <= HEADER_BYTES as u64 {
        return Err(LogError::Invalid(format!(
            "segment_bytes must exceed {HEADER_BYTES}, got {}",
            opts.segment_bytes
        )));
    }
    make_durable_directory(dir)?;
    let dir_file = File::open(dir).map_err(io_err(format!("opening {}", dir.display())))?;
    let lock_file = lock_directory(dir)?;
    let log_id = log_identity(dir, &dir_file)?;
    let mark = mark::read(dir)?;
    let (segments, spares, last_seq, truncated) = recover(dir, &dir_file, mark, opts.spare_segments)?;
    let mark_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_CLOEXEC)
        .mode(0o644)
        .open(dir.join(mark::MARK_NAME))
        .map_err(io_err("opening the sync mark"))?;
    // What survived recovery is durable. A close mark must not outlive this
    // open: appends after it would pass for an older segment's bytes.
    let newest = segments.last().unwrap();
    let exact = mark::encode(newest.base_seq, newest.size, last_seq, false);
    mark_file.write_all_at(&exact, 0).map_err(io_err("writing the sync mark"))?;
    durable::sync_data(&mark_file).map_err(io_err("fdatasync of the sync mark"))?;
    durable::sync_all(&dir_file).map_err(io_err("fsync of the LOG directory"))?; // the mark's entry
    let torn_tails = mark::read_torn(dir)?;
    let size_bytes = segments.iter().map(|s| s.size).sum();
    let state = State { segments, spares, last_seq, size_bytes, dir_dirty: false, closed: false, failure: None };
    Ok(Log {
        dir: dir.to_path_buf(),
        opts,
        dir_file,
        lock_file: Mutex::new(Some(lock_file)),
        mark_file,
        published: Published::of(&state),
        state: Mutex::new(state),
        sync_lock: Mutex::new(None),
        // Whatever survived recovery is durable.
        synced: watch::channel(SyncState { synced_seq: last_seq, failed: false }).0,
        trims: watch::channel(0).0,
        recycled: Default::default(),
        log_id,
        torn_tails,
        recovered_truncated_bytes: truncated,
    })
}

fn make_durable_directory(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    // The new directory's own entry must survive a crash too.
    let parent = std::path::absolute(dir).ok().and_then(|p| p.parent().map(Path::to_path_buf));
    if let Some(parent) = parent {
        File::open(&parent).and_then(|f| durable::sync_all(&f)).map_err(io_err("fsync of the LOG's parent"))?;
    }
    Ok(())
}

fn lock_directory(dir: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_CLOEXEC)
        .mode(0o644)
        .open(dir.join(LOCK_NAME))
        .map_err(io_err("opening LOCK"))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(LogError::Busy(format!(
            "{}: the LOG is already open (by this or another process)",
            dir.display()
        )));
    }
    Ok(file)
}

fn log_identity(dir: &Path, dir_file: &File) -> Result<String> {
    let path = dir.join(ID_NAME);
    match std::fs::read_to_string(&path) {
        Ok(id) => return Ok(id.trim().to_string()),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("reading LOG_ID")(e)),
    }
    let mut raw = [0u8; 16];
    // SAFETY: getrandom into a local buffer of its length.
    let n = unsafe { libc::getrandom(raw.as_mut_ptr() as *mut libc::c_void, raw.len(), 0) };
    if n != raw.len() as isize {
        return Err(io_err("getrandom for LOG_ID")(std::io::Error::last_os_error()));
    }
    raw[6] = (raw[6] & 0x0f) | 0x40; // a version 4 uuid, as Python's uuid4
    raw[8] = (raw[8] & 0x3f) | 0x80;
    let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!("{ID_NAME}.tmp"));
    std::fs::write(&tmp, format!("{id}\n")).map_err(io_err("writing LOG_ID"))?;
    File::open(&tmp).and_then(|f| durable::sync_all(&f)).map_err(io_err("fsync of LOG_ID"))?;
    std::fs::rename(&tmp, &path).map_err(io_err("renaming LOG_ID"))?;
    durable::sync_all(dir_file).map_err(io_err("fsync of the LOG directory"))?;
    Ok(id)
}

fn corrupt(path: &Path, offset: u64, reason: String) -> LogError {
    LogError::Corrupt { path: path.to_path_buf(), offset, reason, discontinuity: false }
}

/// The segment list with the newest segment repaired, and the spare files:
/// `(segments, spares, last_seq, truncated_bytes)`. Creates segment 1 in an
/// empty directory.
fn recover(dir: &Path, dir_file: &File, mark: Mark, keep_spares: usize) -> Result<(Vec<Segment>, Vec<PathBuf>, u64, u64)> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_err(format!("listing {}", dir.display())))?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .collect();
    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    bases.sort_unstable();
    let spares = keep_some_spares(dir, &names, keep_spares)?;
    let Some(&newest) = bases.last() else {
        let segment = Segment::create(dir, 1)?;
        durable::sync_data(segment.file.as_ref().unwrap()).map_err(io_err("fdatasync of a new segment"))?;
        durable::sync_all(dir_file).map_err(io_err("fsync of the LOG directory"))?;
        return Ok((vec![segment], spares, 0, 0));
    };
    if bases[0] < 1 {
        return Err(corrupt(&dir.join(segment_name(bases[0])), 0, "segment names start at seq 1".into()));
    }
    let mut segments = bases[..bases.len() - 1].iter().map(|&b| sealed_segment(dir, b)).collect::<Result<Vec<_>>>()?;
    let (synced_offset, closed) = match mark {
        Mark::Missing => (None, false),
        Mark::At(base, offset, seq) | Mark::Closed(base, offset, seq) => {
            if base > newest {
                return Err(corrupt(
                    &dir.join(segment_name(base)),
                    offset,
                    format!("segment missing, yet the LOG had synced it through seq {seq}"),
                ));
            }
            let here = base == newest;
            (Some(if here { offset } else { 0 }), here && matches!(mark, Mark::Closed(..)))
        }
    };
    let (active, last_seq, truncated) = recover_newest(dir, dir_file, newest, synced_offset, closed)?;
    segments.push(active);
    if segments.last().unwrap().version != FORMAT_VERSION {
        // Only the current version is written: an older LOG goes on in a new
        // segment, and its old segments stay readable.
        segments.last_mut().unwrap().file = None;
        let new = Segment::create(dir, last_seq + 1)?;
        durable::sync_data(new.file.as_ref().unwrap()).map_err(io_err("fdatasync of a new segment"))?;
        segments.push(new);
    }
    durable::sync_all(dir_file).map_err(io_err("fsync of the LOG directory"))?;
    Ok((segments, spares, last_seq, truncated))
}

/// The spare files to write new segments over, oldest first; deletes those
/// beyond `keep` (the option may have been lowered since they were kept).
fn keep_some_spares(dir: &Path, names: &[String], keep: usize) -> Result<Vec<PathBuf>> {
    let mut spares: Vec<(u64, PathBuf)> =
        names.iter().filter_map(|n| parse_spare_name(n).map(|b| (b, dir.join(n)))).collect();
    spares.sort_unstable();
    for (_, extra) in spares.drain(keep.min(spares.len())..) {
        std::fs::remove_file(&extra).map_err(io_err(format!("removing {}", extra.display())))?;
    }
    Ok(spares.into_iter().map(|(_, p)| p).collect())
}

fn read_head(path: &Path) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut head = vec![0u8; SEGMENT_HEADER_BYTES];
    let mut n = 0;
    while n < head.len() {
        match file.read_at(&mut head[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        }
    }
    head.truncate(n);
    Ok(head)
}

fn sealed_segment(dir: &Path, base: u64) -> Result<Segment> {
    let path = dir.join(segment_name(base));
    let size = std::fs::metadata(&path).map_err(io_err(format!("stat {}", path.display())))?.len();
    let version = segment::segment_version(&read_head(&path)?).map_err(|why| corrupt(&path, 0, why))?;
    match version {
        Some(v) if size > segment::data_start(v) => {
            Ok(Segment { path, base_seq: base, size, version: v, file: None, index: Vec::new(), stale_tail: false })
        }
        // The newest segment is the only one a crash can leave without frames.
        _ => Err(corrupt(&path, 0, "sealed segment holds no frame".into())),
    }
}

/// Repairs the newest segment. `closed`: the mark is a clean close's, in
/// this segment at `synced_offset`.
fn recover_newest(
    dir: &Path,
    dir_file: &File,
    base: u64,
    synced_offset: Option<u64>,
    closed: bool,
) -> Result<(Segment, u64, u64)> {
    let path = dir.join(segment_name(base));
    let data = std::fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
    let scan = segment::scan(&data, base);
    if let Some(l) = synced_offset {
        if scan.file_size < l {
            return Err(corrupt(
                &path,
                scan.file_size,
                format!("the file ends here, but the LOG had synced it through offset {l}"),
            ));
        }
    }
    let mut truncated = 0;
    let mut size = scan.valid_end;
    match (&scan.version, &scan.bad) {
        (None, bad) => {
            // The segment's header never reached the disk: nothing in it was synced.
            if let Some(l) = synced_offset.filter(|&l| l > 0) {
                let why = bad.as_ref().map_or("empty".to_string(), |b| b.reason.clone());
                return Err(corrupt(&path, 0, format!("{why}, yet the LOG had synced it through offset {l}")));
            }
            size = SEGMENT_HEADER_BYTES as u64;
            if scan.file_size > SEGMENT_HEADER_BYTES as u64 {
                // Frames may have been appended behind it.
                truncated = scan.file_size;
                let torn = TornTail { segment: path.clone(), offset: 0, truncated_bytes: truncated, after_seq: scan.last_seq };
                mark::note_torn(dir, dir_file, &torn)?;
            }
        }
        (Some(version), Some(bad)) => {
            let end = MarkedEnd { synced_offset, closed };
            if !judge_bad_frame(&path, &data, bad, (base, scan.last_seq + 1), end, *version)? {
                // A spare's older bytes past a clean close: kept, to be written over.
                return finish_newest(path, base, scan, size, 0);
            }
            truncated = scan.file_size - scan.valid_end;
            let torn = TornTail { segment: path.clone(), offset: scan.valid_end, truncated_bytes: truncated, after_seq: scan.last_seq };
            mark::note_torn(dir, dir_file, &torn)?;
        }
        (Some(_), None) => {}
    }
    finish_newest(path, base, scan, size, truncated)
}

/// Opens the newest segment for appending at `size`, after `truncated` bytes
/// were cut from its end, and makes what is left durable.
fn finish_newest(path: PathBuf, base: u64, scan: segment::Scan, size: u64, truncated: u64) -> Result<(Segment, u64, u64)> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    if truncated > 0 {
        file.set_len(scan.file_size - truncated).map_err(io_err(format!("truncating {}", path.display())))?;
    }
    if scan.version.is_none() {
        file.write_all_at(&segment_header(), 0).map_err(io_err(format!("writing {}", path.display())))?;
    }
    // Whatever survived is now durable, so the synced seq may start at last_seq.
    durable::sync_all(&file).map_err(io_err(format!("fsync of {}", path.display())))?;
    let version = scan.version.unwrap_or(FORMAT_VERSION);
    let stale_tail = scan.file_size - truncated > size;
    let segment = Segment { path, base_seq: base, size, version, file: Some(file), index: scan.index, stale_tail };
    Ok((segment, scan.last_seq, truncated))
}

/// Where the sync mark says the newest segment's durable part ends.
#[derive(Clone, Copy)]
struct MarkedEnd {
    /// None: no mark file (a LOG from before marks).
    synced_offset: Option<u64>,
    /// The mark is a clean close's, in this segment.
    closed: bool,
}

/// Ok(true) if `bad` starts a torn tail: damage past the sync mark, or (no
/// mark) damage with nothing valid after it; Ok(false) if it starts a spare's
/// older bytes right where a clean close ended the LOG; Err for corruption.
/// A frame of an older segment (a seq below the segment's base, left in a
/// spare) counts as damage, not as a discontinuity: no crash writes a wrong
/// seq, but a crash can stop the writer before it wrote over the old bytes.
fn judge_bad_frame(
    path: &Path,
    data: &[u8],
    bad: &segment::BadFrame,
    (base, expect_seq): (u64, u64),
    MarkedEnd { synced_offset, closed }: MarkedEnd,
    version: u8,
) -> Result<bool> {
    let stale = bad.discontinuity && segment::frame_seq(data, bad.offset as usize, version) < base;
    let err = |reason: String| LogError::Corrupt {
        path: path.to_path_buf(),
        offset: bad.offset,
        reason,
        discontinuity: bad.discontinuity && !stale,
    };
    if bad.discontinuity && !stale {
        return Err(err(bad.reason.clone()));
    }
    match synced_offset {
        Some(l) if bad.offset < l => Err(err(format!(
            "{}, inside the region the LOG had synced (through offset {l})",
            bad.reason
        ))),
        Some(l) if closed && bad.offset == l => match segment::find_frame_between(data, l as usize, (base, expect_seq), version) {
            // A spare's frames are all older: this one was never written over.
            // (Frames with seqs past the range could only ever be reached as
            // discontinuities: corruption, found by a later open.)
            Some((offset, seq)) => Err(err(format!(
                "a frame of this segment (seq {seq}, at offset {offset}) lies past the clean close at offset {l}"
            ))),
            None => Ok(false),
        },
        Some(_) => Ok(true),
        None => match segment::find_valid_frame(data, bad.offset as usize + 1, expect_seq, version) {
            Some((offset, seq)) => Err(err(format!(
                "{}, yet a valid frame (seq {seq}) follows at offset {offset}",
                bad.reason
            ))),
            None => Ok(true),
        },
    }
}
