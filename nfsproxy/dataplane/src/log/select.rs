//! One shard's frames out of a region of a LOG segment, for its shipper
//! (nfsproxy/ship/shipper.py): every frame validated as a reader validates
//! it, routed by its header alone, and the shard's ones named as byte
//! ranges of the region, so the caller copies them once, back to back as an
//! ingest batch carries them (logstore/shipped.py).
//!
//! How to call it: `select(&data, offset, at_end, expect_seq, &want)` walks
//! `data`, the bytes of a segment from `offset` on, and says how far it got
//! and why it stopped. It does no I/O; `py.rs` reads the file around it.
//!
//! A frame without routing fields (no stamp, or route kind Unknown) stops
//! the walk before it: only a parse of the record can route it, and the
//! shipper does that in Python, one frame, then calls again.

use std::ops::Range;

use super::frame::{header_bytes, FrameHeader, RouteKind, Routing};
use super::segment::{next_frame, BadFrame};

/// What the shipper wants from the region.
#[derive(Clone, Copy, Debug)]
pub struct Want {
    /// Frames below it are validated and passed over (the reader started at
    /// an index point before it).
    pub from_seq: u64,
    /// The last seq the batch may cover.
    pub limit_seq: u64,
    pub shard_id: u32,
    pub n_shards: u32,
    /// Payload bytes the batch may hold.
    pub budget: u64,
    /// Records the batch may hold.
    pub max_records: u32,
    /// The batch may hold one frame larger than the budget when it is its first.
    pub allow_oversize: bool,
}

/// Why the walk stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// At the region's end, the limit seq or the record count.
    Done,
    /// The next frame lies partly past the bytes given: give at least this
    /// many bytes from `offset` (never at the region's end).
    Partial(u64),
    /// The shard's next frame does not fit the budget: its payload size.
    Budget(u64),
    /// The next frame carries no route: parse it to route it.
    Unrouted,
    /// The frame at `offset` is damaged or out of sequence.
    Bad(BadFrame),
}

/// How far a walk got: the frames selected and the position after them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// Where the shard's frames, header and payload, lie in the `data`
    /// walked; adjacent frames are one range.
    pub spans: Vec<Range<usize>>,
    pub records: u32,
    /// Payload bytes of the selected frames.
    pub nbytes: u64,
    /// The segment offset of the first frame not consumed.
    pub offset: u64,
    /// The seq that frame must carry.
    pub next_seq: u64,
    /// The last seq at or above `from_seq` consumed (0: none).
    pub through_seq: u64,
    /// The highest stamp among the frames consumed (zeros: none).
    pub newest: [u8; 16],
    pub stop: Stop,
}

impl Selection {
    /// The selected frames of `data` (the bytes walked), back to back.
    pub fn frames(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.spans.iter().map(|r| r.len()).sum());
        for r in &self.spans {
            out.extend_from_slice(&data[r.clone()]);
        }
        out
    }
}

const NO_STAMP: [u8; 16] = [0; 16];

/// Which shards a frame belongs to, from its header alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Shard(u32),
    EveryShard,
    /// A write-ahead intent: never shipped.
    Nowhere,
}

impl Route {
    /// None: the frame carries no route (or no stamp); only a parse of its
    /// record can route it.
    pub fn of(routing: &Routing, n_shards: u32) -> Option<Route> {
        match routing.kind {
            RouteKind::Intent => Some(Route::Nowhere),
            _ if routing.stamp == NO_STAMP => None,
            RouteKind::Handle => Some(Route::Shard(routing.route % n_shards.max(1))),
            RouteKind::EveryShard => Some(Route::EveryShard),
            RouteKind::Unknown => None,
        }
    }

    pub fn includes(self, shard_id: u32) -> bool {
        match self {
            Route::Shard(s) => s == shard_id,
            Route::EveryShard => true,
            Route::Nowhere => false,
        }
    }
}

/// A frame a walk for every shard found (`walk`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walked {
    /// Header and payload, in the `data` walked.
    pub span: Range<usize>,
    pub seq: u64,
    pub payload_len: u64,
    pub stamp: [u8; 16],
    pub route: Route,
}

/// How far a walk for every shard got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walk {
    /// Every frame at or above `from_seq` consumed, in LOG order.
    pub frames: Vec<Walked>,
    /// The segment offset of the first frame not consumed.
    pub offset: u64,
    /// The seq that frame must carry.
    pub next_seq: u64,
    /// Never `Budget`: a walk for every shard has none.
    pub stop: Stop,
}

/// Walk the version 2 frames in `data` (segment bytes from `offset`) for
/// every shard at once, up to `limit_seq`: `select` with no shard, budget
/// or record count. Frames below `from_seq` are validated and passed over.
pub fn walk(data: &[u8], offset: u64, at_end: bool, expect_seq: u64, from_seq: u64, limit_seq: u64, n_shards: u32) -> Walk {
    let mut out = Walk { frames: Vec::new(), offset, next_seq: expect_seq, stop: Stop::Done };
    let mut pos = 0usize;
    while pos < data.len() && out.next_seq <= limit_seq {
        let (h, end) = match frame_at(data, pos, offset, at_end, out.next_seq) {
            Ok(Some(found)) => found,
            Ok(None) => break,
            Err(stop) => {
                out.stop = stop;
                return out;
            }
        };
        if h.seq >= from_seq {
            let Some(route) = Route::of(&h.routing, n_shards) else {
                out.stop = Stop::Unrouted;
                return out;
            };
            if route != Route::Nowhere {
                out.frames.push(Walked { span: pos..end, seq: h.seq, payload_len: h.payload_len as u64, stamp: h.routing.stamp, route });
            }
        }
        pos = end;
        out.offset = offset + pos as u64;
        out.next_seq = h.seq + 1;
    }
    out
}

/// Walk the version 2 frames in `data` (segment bytes from `offset`);
/// `at_end` says `data` reaches the region's end, so a frame cut short
/// there is damage rather than a short read.
pub fn select(data: &[u8], offset: u64, at_end: bool, expect_seq: u64, want: &Want) -> Selection {
    let mut out = Selection {
        spans: Vec::new(),
        records: 0,
        nbytes: 0,
        offset,
        next_seq: expect_seq,
        through_seq: 0,
        newest: NO_STAMP,
        stop: Stop::Done,
    };
    let mut pos = 0usize;
    while pos < data.len() {
        if out.records >= want.max_records || out.next_seq > want.limit_seq {
            return out;
        }
        let (h, end) = match frame_at(data, pos, offset, at_end, out.next_seq) {
            Ok(Some(found)) => found,
            Ok(None) => break,
            Err(stop) => {
                out.stop = stop;
                return out;
            }
        };
        if h.seq >= want.from_seq {
            let stamp = h.routing.stamp;
            let Some(route) = Route::of(&h.routing, want.n_shards) else {
                out.stop = Stop::Unrouted;
                return out;
            };
            let mine = route.includes(want.shard_id);
            if mine {
                let len = h.payload_len as u64;
                if out.nbytes + len > want.budget && !(want.allow_oversize && out.records == 0) {
                    out.stop = Stop::Budget(len);
                    return out;
                }
                match out.spans.last_mut() {
                    Some(last) if last.end == pos => last.end = end,
                    _ => out.spans.push(pos..end),
                }
                out.records += 1;
                out.nbytes += len;
            }
            if stamp > out.newest && route != Route::Nowhere {
                out.newest = stamp;
            }
            out.through_seq = h.seq;
        }
        pos = end;
        out.offset = offset + pos as u64;
        out.next_seq = h.seq + 1;
    }
    out
}

/// The version 2 frame at `pos` of `data` (segment bytes from `offset`),
/// which must carry `expect_seq`: its header and where it ends; None past
/// the last frame; or why a walk stops there (cut short by the read, or damaged).
fn frame_at(data: &[u8], pos: usize, offset: u64, at_end: bool, expect_seq: u64) -> Result<Option<(FrameHeader, usize)>, Stop> {
    if !at_end {
        if let Some(need) = cut_short(&data[pos..], header_bytes(2)) {
            return Err(Stop::Partial(need));
        }
    }
    match next_frame(data, pos, data.len(), 2, expect_seq) {
        Ok(Some((h, payload_at))) => Ok(Some((h, payload_at + h.payload_len as usize))),
        Ok(None) => Ok(None),
        Err(mut bad) => {
            bad.offset += offset;
            Err(Stop::Bad(bad))
        }
    }
}

/// Bytes needed for the whole frame at the start of `rest` when `rest`
/// holds less of it; None when the frame is whole.
fn cut_short(rest: &[u8], header: usize) -> Option<u64> {
    if rest.len() < header {
        return Some(header as u64);
    }
    let len = u32::from_be_bytes(rest[0..4].try_into().unwrap()) as u64;
    let whole = header as u64 + len;
    (whole > rest.len() as u64).then_some(whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::frame::encode_header;

    fn frame(seq: u64, kind: RouteKind, route: u32, stamp: u8, payload: &[u8]) -> Vec<u8> {
        let routing = Routing { stamp: [stamp; 16], kind, route };
        let mut f = encode_header(seq, &routing, &[payload]).to_vec();
        f.extend_from_slice(payload);
        f
    }

    fn want(shard_id: u32) -> Want {
        Want {
            from_seq: 1,
            limit_seq: u64::MAX,
            shard_id,
            n_shards: 2,
            budget: 1 << 20,
            max_records: 1000,
            allow_oversize: false,
        }
    }

    fn region() -> (Vec<u8>, Vec<Vec<u8>>) {
        let frames = vec![
            frame(1, RouteKind::Handle, 4, 1, b"even"),
            frame(2, RouteKind::Handle, 5, 2, b"odd"),
            frame(3, RouteKind::EveryShard, 0, 3, b"all"),
            frame(4, RouteKind::Handle, 6, 4, b"even again"),
        ];
        (frames.concat(), frames)
    }

    #[test]
    fn each_shard_gets_its_frames_and_every_shard_the_common_ones() {
        let (data, frames) = region();
        let even = select(&data, 16, true, 1, &want(0));
        assert_eq!(even.frames(&data), [&frames[0][..], &frames[2], &frames[3]].concat());
        assert_eq!(even.spans.len(), 2, "frames 3 and 4 lie side by side: one range");
        assert_eq!((even.records, even.nbytes, even.through_seq, even.next_seq), (3, 17, 4, 5));
        assert_eq!((even.offset, even.newest, even.stop), (16 + data.len() as u64, [4; 16], Stop::Done));
        let odd = select(&data, 16, true, 1, &want(1));
        assert_eq!(odd.frames(&data), [&frames[1][..], &frames[2]].concat());
        assert_eq!((odd.through_seq, odd.newest), (4, [4; 16]));
    }

    #[test]
    fn the_budget_stops_before_the_frame_that_does_not_fit() {
        let (data, frames) = region();
        let small = Want { budget: 5, ..want(0) };
        let got = select(&data, 0, true, 1, &small);
        assert_eq!((got.frames(&data), got.stop), (frames[0].clone(), Stop::Budget(3)));
        assert_eq!((got.through_seq, got.next_seq, got.offset), (2, 3, (frames[0].len() + frames[1].len()) as u64));
        let first = select(&data, 0, true, 1, &Want { budget: 1, allow_oversize: true, ..want(0) });
        assert_eq!((first.records, first.stop), (1, Stop::Budget(3)));
    }

    #[test]
    fn limits_and_index_points_are_kept() {
        let (data, frames) = region();
        let got = select(&data, 0, true, 1, &Want { from_seq: 2, limit_seq: 3, ..want(0) });
        assert_eq!(got.frames(&data), frames[2]); // seq 1 passed over, seq 4 past the limit
        assert_eq!((got.through_seq, got.next_seq, got.stop), (3, 4, Stop::Done));
        let few = select(&data, 0, true, 1, &Want { max_records: 1, ..want(0) });
        assert_eq!((few.records, few.next_seq), (1, 2));
    }

    #[test]
    fn a_walk_for_every_shard_names_each_frame_and_its_route() {
        let (data, frames) = region();
        let got = walk(&data, 16, true, 1, 2, 3, 2);
        let routes: Vec<_> = got.frames.iter().map(|f| (f.seq, f.route)).collect();
        assert_eq!(routes, [(2, Route::Shard(1)), (3, Route::EveryShard)], "seq 1 passed over, seq 4 past the limit");
        assert_eq!(&data[got.frames[0].span.clone()], &frames[1][..]);
        assert_eq!((got.offset, got.next_seq, got.stop), (16 + (frames[0].len() + frames[1].len() + frames[2].len()) as u64, 4, Stop::Done));
        let cut = walk(&data[..frames[0].len() + 41], 0, false, 1, 1, u64::MAX, 2);
        assert_eq!((cut.frames.len(), cut.stop), (1, Stop::Partial(frames[1].len() as u64)));
        let unrouted = [frame(1, RouteKind::Handle, 4, 1, b"a"), frame(2, RouteKind::Unknown, 0, 2, b"b")].concat();
        let got = walk(&unrouted, 0, true, 1, 1, u64::MAX, 2);
        assert_eq!((got.frames.len(), got.next_seq, got.stop), (1, 2, Stop::Unrouted));
    }

    #[test]
    fn an_unrouted_frame_stops_the_walk_before_it() {
        let data = [frame(1, RouteKind::Handle, 4, 1, b"a"), frame(2, RouteKind::Unknown, 0, 2, b"b")].concat();
        let got = select(&data, 0, true, 1, &want(0));
        assert_eq!((got.records, got.next_seq, got.stop), (1, 2, Stop::Unrouted));
        let stampless = frame(1, RouteKind::Handle, 4, 0, b"c");
        assert_eq!(select(&stampless, 0, true, 1, &want(0)).stop, Stop::Unrouted);
    }

    #[test]
    fn a_short_read_asks_for_more_and_damage_is_named() {
        let (data, frames) = region();
        let cut = frames[0].len() + 41;
        let got = select(&data[..cut], 100, false, 1, &want(0));
        assert_eq!((got.records, got.stop), (1, Stop::Partial(frames[1].len() as u64)));
        let at_end = select(&data[..cut], 100, true, 1, &want(0));
        assert!(matches!(at_end.stop, Stop::Bad(ref b) if b.offset == 100 + frames[0].len() as u64));
        let mut bad = data.clone();
        bad[42] ^= 1;
        assert!(matches!(select(&bad, 0, true, 1, &want(0)).stop, Stop::Bad(ref b) if b.reason.contains("CRC")));
        let gap = select(&data, 0, true, 2, &want(0));
        assert!(matches!(gap.stop, Stop::Bad(ref b) if b.discontinuity));
    }
}
