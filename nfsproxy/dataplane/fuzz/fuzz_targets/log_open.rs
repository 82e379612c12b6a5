//! Recovery at open on what a crash may leave: the newest segment's bytes
//! (a sealed segment before it, or not) and a sync mark, through `Log::open`.
//! Whatever recovery accepts must take an append and reopen cleanly with
//! every record it kept; whatever it refuses must be an error, never a panic.
//! Input: a flags byte, 2 bytes of the mark's offset, then the newest segment
//! (which may hold an older segment's frames past its own, as a spare does).
#![no_main]
use libfuzzer_sys::fuzz_target;

use std::path::PathBuf;
use std::sync::OnceLock;

use _dataplane::log::segment::{segment_header, segment_name};
use _dataplane::log::frame::encode_header;
use _dataplane::log::{Log, LogOptions, Routing};

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        base.join(format!("nfsj-fuzz-log-open-{}", std::process::id()))
    })
}

fn mark(base_seq: u64, offset: u64, seq: u64, closed: bool) -> Vec<u8> {
    let mut m = if closed { b"NJSC".to_vec() } else { b"NJSM".to_vec() };
    for v in [base_seq, offset, seq] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    let crc = crc32c::crc32c(&m);
    m.extend_from_slice(&crc.to_be_bytes());
    m
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (flags, offset, image) = (data[0], u16::from_be_bytes([data[1], data[2]]) as u64, &data[3..]);
    let dir = scratch();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    // flags bit 4: the LOG starts 8 seqs later (trimmed), so frames with seqs
    // below the newest segment's (a spare's older frames) can be in the input.
    let first = if flags & 16 != 0 { 9 } else { 1 };
    // bit 0: a sealed segment (two records) before the newest.
    let newest = if flags & 1 != 0 {
        let mut sealed = segment_header().to_vec();
        for seq in first..first + 2 {
            sealed.extend_from_slice(&encode_header(seq, &Routing::default(), &[b"rec"]));
            sealed.extend_from_slice(b"rec");
        }
        std::fs::write(dir.join(segment_name(first)), sealed).unwrap();
        first + 2
    } else {
        first
    };
    std::fs::write(dir.join(segment_name(newest)), image).unwrap();
    // bits 1-2: no mark, an empty one, one at `offset` of the newest, one naming a
    // later segment; bit 3: a close mark.
    let closed = flags & 8 != 0;
    match (flags >> 1) & 3 {
        0 => {}
        1 => std::fs::write(dir.join("SYNCED"), b"").unwrap(),
        2 => std::fs::write(dir.join("SYNCED"), mark(newest, offset, newest + 1, closed)).unwrap(),
        _ => std::fs::write(dir.join("SYNCED"), mark(newest + 1, offset, 0, closed)).unwrap(),
    }
    let opts = || LogOptions { segment_bytes: 1 << 20, ..LogOptions::default() };
    let Ok(log) = Log::open(dir, opts()) else { return };
    let kept = log.last_seq();
    let appended = log.append(&[b"after recovery"], &Routing::default());
    log.close().unwrap();
    drop(log);
    let again = Log::open(dir, opts()).expect("a LOG recovery accepted reopens");
    assert!(again.torn_tails().len() <= 1, "a clean reopen cut nothing more");
    match appended {
        Ok(seq) => assert_eq!((seq, again.last_seq()), (kept + 1, kept + 1)),
        Err(_) => assert_eq!(again.last_seq(), kept),
    }
    again.close().unwrap();
});
