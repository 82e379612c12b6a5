//! A LOG segment image as a crash may leave it: the segment header, every
//! frame's validation (scan and frames), the torn-tail search, the records
//! the frames hold, and a shipper's walk of them (select), which must stop
//! where scan stops, and the shared reader's walk for every shard at once
//! (walk), which must find for each shard what its own walk finds. Input: 1
//! byte of base seq, then the image.
#![no_main]
use libfuzzer_sys::fuzz_target;

use _dataplane::log::segment::{data_start, find_valid_frame, frames, scan};
use _dataplane::log::select::{select, walk as walk_all, Stop, Want};
use _dataplane::log::RouteKind;
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
        if version == 2 {
            let intents = found.iter().filter(|f| f.routing.kind == RouteKind::Intent).count() as u64;
            walk(image, base_seq, &s, intents);
        }
    }
});

/// One shard of one takes every routed frame but the `intents` (never
/// shipped): the walk ends where scan ended, at the same damage, unless a
/// frame without a route stops it first.
fn walk(image: &[u8], base_seq: u64, s: &_dataplane::log::segment::Scan, intents: u64) {
    let start = data_start(2) as usize;
    if image.len() < start {
        return;
    }
    let want = Want {
        from_seq: base_seq,
        limit_seq: u64::MAX,
        shard_id: 0,
        n_shards: 1,
        budget: u64::MAX,
        max_records: u32::MAX,
        allow_oversize: true,
    };
    let sel = select(&image[start..], start as u64, true, base_seq, &want);
    assert!(sel.offset <= s.valid_end && sel.records as u64 <= s.records);
    // The ranges hold exactly the frames selected, headers and payloads.
    let header = _dataplane::log::frame::header_bytes(2) as u64;
    assert_eq!(sel.frames(&image[start..]).len() as u64, sel.nbytes + sel.records as u64 * header);
    match &sel.stop {
        Stop::Done => assert_eq!((sel.offset, sel.records as u64 + intents, s.bad.is_none()), (s.valid_end, s.records, true)),
        Stop::Bad(bad) => assert_eq!((sel.offset, Some(bad.offset)), (s.valid_end, s.bad.as_ref().map(|b| b.offset))),
        Stop::Unrouted => {}
        other => panic!("an unlimited walk stopped for {other:?}"),
    }
    every_shard(&image[start..], start as u64, base_seq);
}

/// The walk for every shard of three stops where each shard's own walk
/// stops, and gives each shard the same frames.
fn every_shard(data: &[u8], offset: u64, base_seq: u64) {
    let all = walk_all(data, offset, true, base_seq, base_seq, u64::MAX, 3);
    for shard_id in 0..3 {
        let want = Want { from_seq: base_seq, limit_seq: u64::MAX, shard_id, n_shards: 3, budget: u64::MAX, max_records: u32::MAX, allow_oversize: true };
        let own = select(data, offset, true, base_seq, &want);
        assert_eq!((own.offset, own.next_seq, &own.stop), (all.offset, all.next_seq, &all.stop));
        let mine: Vec<u8> = all.frames.iter().filter(|f| f.route.includes(shard_id)).flat_map(|f| data[f.span.clone()].to_vec()).collect();
        assert_eq!(mine, own.frames(data));
    }
}
