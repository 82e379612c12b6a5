//! Write-ahead intents whose record never reached the LOG
//! (logstore/FORMAT.md, "Intents").
//!
//! A reply that waits for its intent may reach the client before its record
//! is durable; a crash then leaves the intent alone. After an unclean stop
//! the proxy turns each such orphan into its record before it serves
//! (nfsproxy/daemon/proxyd.py). A record always follows its intent in the
//! LOG, under the same stamp, and the relay's trims keep every intent whose
//! record is not durable (`crate::intent`), so one pass over what the LOG
//! holds finds them all.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::segment::{data_start, next_frame};
use super::{io_err, Log, LogError, Result, RouteKind};

/// An intent with no record after it: its seq, stamp and payload (the record
/// as the call made it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orphan {
    pub seq: u64,
    pub stamp: [u8; 16],
    pub payload: Vec<u8>,
}

/// Every intent at or after `from_seq` in `log` that no later frame with
/// its stamp answers, in LOG order. A proxy passes the seq its last run
/// started at: orphans of runs before were settled when the next one started.
pub fn orphans(log: &Log, from_seq: u64) -> Result<Vec<Orphan>> {
    let mut open: HashMap<[u8; 16], Orphan> = HashMap::new();
    for segment in log.segments() {
        if segment.version < 2 || segment.last_seq < from_seq {
            continue; // written before intents existed, or before that run
        }
        let file = File::open(&segment.path).map_err(io_err(format!("opening {}", segment.path.display())))?;
        let mut data = vec![0u8; segment.size_bytes as usize];
        file.read_exact_at(&mut data, 0).map_err(io_err(format!("reading {}", segment.path.display())))?;
        let mut pos = data_start(segment.version) as usize;
        let mut expect = segment.first_seq;
        let corrupt = |bad: super::segment::BadFrame| LogError::Corrupt {
            path: segment.path.clone(),
            offset: bad.offset,
            reason: bad.reason,
            discontinuity: bad.discontinuity,
        };
        while let Some((h, at)) = next_frame(&data, pos, data.len(), segment.version, expect).map_err(corrupt)? {
            let end = at + h.payload_len as usize;
            if h.routing.kind == RouteKind::Intent && h.seq >= from_seq {
                let payload = data[at..end].to_vec();
                open.insert(h.routing.stamp, Orphan { seq: h.seq, stamp: h.routing.stamp, payload });
            } else if h.routing.kind != RouteKind::Intent {
                open.remove(&h.routing.stamp);
            }
            pos = end;
            expect = h.seq + 1;
        }
    }
    let mut found: Vec<Orphan> = open.into_values().collect();
    found.sort_by_key(|o| o.seq);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogOptions, Routing};

    fn routing(stamp: u8, kind: RouteKind) -> Routing {
        Routing { stamp: [stamp; 16], kind, route: 0 }
    }

    #[test]
    fn an_intent_is_an_orphan_until_a_frame_with_its_stamp_follows() {
        let dir = std::env::temp_dir().join(format!("nfsj-orphans-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let opts = LogOptions { segment_bytes: 200, ..LogOptions::default() };
        let log = Log::open(&dir, opts).unwrap();
        log.append(&[b"intent one"], &routing(1, RouteKind::Intent)).unwrap();
        log.append(&[b"intent two"], &routing(2, RouteKind::Intent)).unwrap();
        log.append(&[b"record one"], &routing(1, RouteKind::Handle)).unwrap();
        for i in 0..5 {
            log.append(&[b"filler spanning segments"], &routing(10 + i, RouteKind::Handle)).unwrap();
        }
        log.append(&[b"intent three"], &routing(3, RouteKind::Intent)).unwrap();
        log.append(&[b"gap for three"], &routing(3, RouteKind::EveryShard)).unwrap();
        assert!(log.segments().len() > 1, "the test spans segments");
        let found = orphans(&log, 0).unwrap();
        assert_eq!(found, vec![Orphan { seq: 2, stamp: [2; 16], payload: b"intent two".to_vec() }]);
        assert_eq!(orphans(&log, 3).unwrap(), vec![], "intents before `from_seq` were settled");
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
