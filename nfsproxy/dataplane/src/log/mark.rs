//! The sync mark (`SYNCED`) and the torn-tail notes (`TORN`): logstore/FORMAT.md.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{durable, io_err, Result, TornTail};

pub const MARK_NAME: &str = "SYNCED";
pub const TORN_NAME: &str = "TORN";
const MAGIC: &[u8; 4] = b"NJSM";
/// A clean close's mark: nothing was appended after its position.
const CLOSE_MAGIC: &[u8; 4] = b"NJSC";
const MARK_BYTES: usize = 32;

/// The 32 bytes of a mark for `(base_seq, offset, seq)`; `closed` for the
/// mark a clean close leaves.
pub fn encode(base_seq: u64, offset: u64, seq: u64, closed: bool) -> [u8; MARK_BYTES] {
    let mut m = [0u8; MARK_BYTES];
    m[..4].copy_from_slice(if closed { CLOSE_MAGIC } else { MAGIC });
    m[4..12].copy_from_slice(&base_seq.to_be_bytes());
    m[12..20].copy_from_slice(&offset.to_be_bytes());
    m[20..28].copy_from_slice(&seq.to_be_bytes());
    let crc = crc32c::crc32c(&m[..28]);
    m[28..].copy_from_slice(&crc.to_be_bytes());
    m
}

/// What the mark file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// No file: a LOG from before marks (recovery keeps the stricter rule).
    Missing,
    /// `(base_seq, offset, seq)`; `(0, 0, 0)` when empty or damaged (nothing
    /// in the newest segment is trusted as synced).
    At(u64, u64, u64),
    /// `(base_seq, offset, seq)` left by a clean close: the LOG ends exactly there.
    Closed(u64, u64, u64),
}

pub fn read(dir: &Path) -> Result<Mark> {
    let raw = match std::fs::read(dir.join(MARK_NAME)) {
        Ok(raw) => raw,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Mark::Missing),
        Err(e) => return Err(io_err("reading the sync mark")(e)),
    };
    if raw.is_empty() {
        return Ok(Mark::At(0, 0, 0));
    }
    let mut m = [0u8; MARK_BYTES];
    let n = raw.len().min(MARK_BYTES);
    m[..n].copy_from_slice(&raw[..n]);
    let crc = u32::from_be_bytes(m[28..].try_into().unwrap());
    let closed = &m[..4] == CLOSE_MAGIC;
    if (&m[..4] != MAGIC && !closed) || crc != crc32c::crc32c(&m[..28]) {
        return Ok(Mark::At(0, 0, 0));
    }
    let be64 = |at: usize| u64::from_be_bytes(m[at..at + 8].try_into().unwrap());
    let (base, offset, seq) = (be64(4), be64(12), be64(20));
    Ok(if closed { Mark::Closed(base, offset, seq) } else { Mark::At(base, offset, seq) })
}

/// Durably note a torn tail before it is cut.
pub fn note_torn(dir: &Path, dir_file: &File, torn: &TornTail) -> Result<()> {
    let line = serde_json::json!({
        "segment": torn.segment.to_string_lossy(),
        "offset": torn.offset,
        "truncated_bytes": torn.truncated_bytes,
        "after_seq": torn.after_seq,
    });
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(dir.join(TORN_NAME))
        .map_err(io_err("opening TORN"))?;
    f.write_all(format!("{line}\n").as_bytes()).map_err(io_err("writing TORN"))?;
    durable::sync_all(&f).map_err(io_err("fsync of TORN"))?;
    durable::sync_all(dir_file).map_err(io_err("fsync of the LOG directory"))
}

/// The torn tails noted and not yet marked; lines a crash tore are skipped
/// (their tail is noted again).
pub fn read_torn(dir: &Path) -> Result<Vec<TornTail>> {
    let raw = match std::fs::read(dir.join(TORN_NAME)) {
        Ok(raw) => raw,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("reading TORN")(e)),
    };
    let mut out = Vec::new();
    for line in raw.split(|&b| b == b'\n') {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
        let (Some(segment), Some(offset), Some(truncated_bytes), Some(after_seq)) = (
            v["segment"].as_str(),
            v["offset"].as_u64(),
            v["truncated_bytes"].as_u64(),
            v["after_seq"].as_u64(),
        ) else {
            continue;
        };
        out.push(TornTail { segment: PathBuf::from(segment), offset, truncated_bytes, after_seq });
    }
    Ok(out)
}

/// Forget the notes once their markers are durable.
pub fn forget_torn(dir: &Path, dir_file: &File) -> Result<()> {
    match std::fs::remove_file(dir.join(TORN_NAME)) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("removing TORN")(e)),
    }
    durable::sync_all(dir_file).map_err(io_err("fsync of the LOG directory"))
}
