//! A batch of shipped frames as a shard receives it from the network
//! (IngestBatch.frames) through the native indexer. Input: 1 byte of
//! after_seq, 4 bytes of node id, then the frames.
#![no_main]
use libfuzzer_sys::fuzz_target;

use _dataplane::shipped::index;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let after = data[0] as u64;
    let node = u32::from_be_bytes(data[1..5].try_into().unwrap());
    let frames = &data[5..];
    let Some(records) = index(frames, after, after + 64, node) else { return };
    let mut last = after;
    for r in &records {
        assert!(r.seq > last && r.seq <= after + 64);
        assert!(r.head_len <= r.raw.len() && r.stamp[12..] == node.to_be_bytes());
        last = r.seq;
    }
});
