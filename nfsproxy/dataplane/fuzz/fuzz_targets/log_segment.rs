//! A LOG segment image as a crash may leave it: the segment header, every
//! frame's validation (scan and frames), the torn-tail search, and the
//! records the frames hold. Input: 1 byte of base seq, then the image.
#![no_main]
use libfuzzer_sys::fuzz_target;

use _dataplane::log::segment::{find_valid_frame, frames, scan};
use _dataplane::record;

fuzz_target!(|data: &[u8]| {
    let Some((&base, image)) = data.split_first() else { return };
    // Segment names start at seq 1 (recovery refuses a 0); a high base tests the seq arithmetic.
    let base_seq = match base {
        0xff => u64::MAX - 2,
        b => b as u64 + 1,
    };
    let s = scan(image, base_seq);
    assert!(s.valid_end <= s.file_size || s.version.is_none());
    if let Some(version) = s.version {
        let (found, bad) = frames(image, version, base_seq);
        assert_eq!(found.len() as u64, s.records);
        assert_eq!(bad.as_ref().map(|b| b.offset), s.bad.as_ref().map(|b| b.offset));
        for f in &found {
            let _ = record::decode(&f.payload);
        }
        if let Some(bad) = &s.bad {
            let _ = find_valid_frame(image, bad.offset as usize + 1, s.last_seq.wrapping_add(1), version);
        }
    }
});
