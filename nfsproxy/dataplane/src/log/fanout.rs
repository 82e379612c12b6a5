//! One reader of the LOG for every shard's shipper: a region is read and
//! walked once, and each frame is queued for the shards it belongs to, so N
//! shippers cost one walk instead of N (nfsproxy/ship/fanout.py drives it).
//!
//! Each shard's queue holds every one of its frames from a seq (`start`) up
//! to the reader's position (`pos`). A shipper asks for its batch from the
//! seq its stream needs next. Within its queue's window, it is served from
//! the queue; below it (it rewound, reconnected, or was let go), it reads
//! the LOG alone up to the window, as it did before this reader existed,
//! and is served from there on. So the queues are an optimisation only:
//! what a shard is sent never depends on them.
//!
//! Memory: queued frames hold the regions read (`Chunk`s) they lie in; when
//! the regions kept pass `cap_bytes`, the queue whose oldest frame is oldest
//! (a shard that is down, or slower than the rest) is emptied, and its
//! window starts at the reader's position; and a shard asking for its batch
//! is served what it has rather than read for. So what is kept stays under
//! the cap plus one read (and a frame larger than a read).
//!
//! How to call it (sans-IO; `pyfanout.rs` reads the file):
//! ```ignore
//! loop {
//!     match fanout.take(&want, may_fill) {
//!         Take::Alone(until) => break walk_alone(until),
//!         Take::Fill(pos) => { /* read from seq pos */ fanout.push(want.shard_id, pos, chunk, &walk) }
//!         Take::Batch(batch) => break send(batch),
//!     }
//! }
//! ```

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use super::select::{Route, Walk, Want};

/// A region of a segment as read: frames queued for shards point into it.
pub type Chunk = Arc<Vec<u8>>;

/// What `take` gives a shard's shipper.
#[derive(Debug)]
pub enum Take {
    /// Read the LOG yourself, up to this seq at most: the shared reader
    /// does not hold what you ask for. Below the queue's window, this is
    /// the seq before it, from where you are served again.
    Alone(u64),
    /// Read the LOG from this seq for every shard (`push`), then ask again.
    Fill(u64),
    /// The next batch.
    Batch(Batch),
}

/// A shard's batch out of its queue: `select`'s answer, without the walk.
#[derive(Debug, Default)]
pub struct Batch {
    /// The frames, back to back in this order.
    pub parts: Vec<(Chunk, Range<usize>)>,
    pub records: u32,
    /// Payload bytes.
    pub nbytes: u64,
    /// The batch covers the LOG range up to here.
    pub through_seq: u64,
    /// A lower bound of the newest stamp in the range (zeros: none known).
    pub newest: [u8; 16],
    /// The payload size of the shard's next frame, which did not fit the budget (0: none).
    pub blocked_by: u64,
}

impl Batch {
    /// Bytes of its frames.
    pub fn len(&self) -> usize {
        self.parts.iter().map(|(_, r)| r.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

#[derive(Debug)]
struct Queued {
    chunk: Chunk,
    span: Range<usize>,
    seq: u64,
    payload_len: u64,
    /// The newest stamp of every frame walked up to this one.
    newest: [u8; 16],
}

#[derive(Debug, Default)]
struct Queue {
    /// Every frame of the shard from this seq up to the reader's position is queued.
    start: u64,
    frames: VecDeque<Queued>,
    nbytes: u64,
    /// Its last batch came from the queue.
    served: bool,
}

impl Queue {
    /// Empty, with its window starting at `seq`.
    fn restart(&mut self, seq: u64) {
        self.frames.clear();
        self.nbytes = 0;
        self.start = seq;
    }

    /// Drop the frames below `seq`: the shard asks from there.
    fn skip_to(&mut self, seq: u64) {
        while self.frames.front().is_some_and(|f| f.seq < seq) {
            let f = self.frames.pop_front().expect("front exists");
            self.nbytes -= f.payload_len;
        }
        self.start = seq;
    }
}

/// Counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanoutStats {
    /// Shards whose last batch came from their queue.
    pub served: u32,
    pub kept_bytes: u64,
    /// Regions read and walked for every shard.
    pub fills: u64,
    /// Batches with records served from a queue.
    pub batches: u64,
    /// Queues emptied for holding frames too long (the memory cap).
    pub evictions: u64,
    /// Large read buffers allocated (fresh memory; reused ones are not counted).
    pub buffers_allocated: u64,
}

/// The shared reader's state (see the module docs).
#[derive(Debug)]
pub struct Fanout {
    n_shards: u32,
    cap_bytes: u64,
    /// The next seq the reader walks; None until a shard asks.
    pos: Option<u64>,
    /// The reader cannot walk past this seq (a frame there needs a parse to
    /// route, or lies in a version 1 segment, or is damaged): shards there
    /// read alone, and the reader starts again past it.
    stuck: Option<u64>,
    /// Running newest stamp of every frame walked.
    newest: [u8; 16],
    queues: Vec<Queue>,
    /// Regions that frames in queues still point into, oldest first.
    chunks: VecDeque<Chunk>,
    kept_bytes: u64,
    /// Read buffers no longer pointed into, for the next reads.
    spare: Vec<Vec<u8>>,
    stats: FanoutStats,
}

/// Read buffers kept for reuse, at least: a buffer new to the process
/// faults its pages in, which costs more than the read. Up to as many as
/// fill the cap are kept, so once the reader has needed that many at once
/// (shards apart by that much), it never faults a page in again.
const SPARE_BUFFERS: usize = 4;
/// How far past the reader a shard may ask before the reader starts again there.
const JUMP_RECORDS: u64 = 8192;
/// Bytes per read (`read_bytes`), larger for a larger cap; a frame larger is read whole.
const MIN_READ_BYTES: u64 = 64 << 10;
const MAX_READ_BYTES: u64 = 4 << 20;
/// Reads below this get a buffer of their own size.
const SMALL_READ_BYTES: usize = 256 << 10;
/// A buffer larger than this (a huge frame was read) is not kept.
const SPARE_BUFFER_BYTES: usize = 8 << 20;

impl Fanout {
    pub fn new(n_shards: u32, cap_bytes: u64) -> Fanout {
        Fanout {
            n_shards: n_shards.max(1),
            cap_bytes,
            pos: None,
            stuck: None,
            newest: [0; 16],
            queues: (0..n_shards.max(1)).map(|_| Queue::default()).collect(),
            chunks: VecDeque::new(),
            kept_bytes: 0,
            spare: Vec::new(),
            stats: FanoutStats::default(),
        }
    }

    pub fn n_shards(&self) -> u32 {
        self.n_shards
    }

    /// Bytes to read per region: a few regions fit under the cap, so one
    /// read alone does not empty queues.
    pub fn read_bytes(&self) -> u64 {
        (self.cap_bytes / 4).clamp(MIN_READ_BYTES, MAX_READ_BYTES)
    }

    /// The next seq the reader walks (None: no shard has asked yet).
    pub fn position(&self) -> Option<u64> {
        self.pos
    }

    pub fn stats(&self) -> FanoutStats {
        FanoutStats {
            served: self.queues.iter().filter(|q| q.served).count() as u32,
            kept_bytes: self.kept_bytes,
            ..self.stats
        }
    }

    /// Whether `shard`'s last batch came from its queue.
    pub fn is_served(&self, shard: u32) -> bool {
        self.queues.get(shard as usize).is_some_and(|q| q.served)
    }

    /// The batch `want` asks for (its `shard_id` names the shard; its
    /// `n_shards` is ignored). `may_fill` false: serve what is queued even
    /// if the reader could read further (it just tried and could not).
    pub fn take(&mut self, want: &Want, may_fill: bool) -> Take {
        let (shard, from) = (want.shard_id as usize, want.from_seq);
        if shard >= self.queues.len() || from == 0 {
            return Take::Alone(u64::MAX);
        }
        let pos = match self.pos {
            // Far ahead of the reader (a caught-up shard while another works
            // through a backlog): walking the backlog first would keep this
            // shard waiting for records it does not need; the reader starts
            // again here, and the others read alone up to here.
            Some(pos) if from > pos.saturating_add(JUMP_RECORDS) => self.start_at(from),
            Some(pos) if self.stuck != Some(pos) || from <= pos => pos,
            _ => self.start_at(from), // first ask, or past where the reader is stuck
        };
        let q = &mut self.queues[shard];
        if from < q.start {
            q.served = false;
            return Take::Alone(q.start - 1);
        }
        if from > pos {
            q.restart(from); // ahead of the reader: the others need what lies between
        } else {
            q.skip_to(from);
        }
        if q.frames.is_empty() && self.stuck == Some(pos) && from >= pos {
            q.served = false;
            return Take::Alone(u64::MAX);
        }
        q.served = true;
        // Its frames hold the regions they lie in: a shard whose frames are
        // sparse (a few small records between another shard's large ones)
        // would hold region after region for one batch. So past the cap it
        // takes what it has, unless it has nothing.
        let room = q.nbytes <= want.budget
            && (q.frames.len() as u64) < want.max_records as u64
            && (self.kept_bytes < self.cap_bytes || q.frames.is_empty());
        if may_fill && pos <= want.limit_seq && room && self.stuck != Some(pos) {
            return Take::Fill(pos);
        }
        let batch = self.serve(shard, want, pos - 1);
        self.release();
        Take::Batch(batch)
    }

    /// The shard's queued frames for `want`; the reader has walked through `covered`.
    fn serve(&mut self, shard: usize, want: &Want, covered: u64) -> Batch {
        let q = &mut self.queues[shard];
        let mut batch = Batch { through_seq: want.from_seq - 1, ..Batch::default() };
        let mut cut = false;
        while let Some(f) = q.frames.front() {
            if f.seq > want.limit_seq {
                break;
            }
            if batch.records >= want.max_records {
                cut = true;
                break;
            }
            if batch.nbytes + f.payload_len > want.budget && !(want.allow_oversize && batch.records == 0) {
                batch.blocked_by = f.payload_len;
                batch.through_seq = f.seq - 1;
                cut = true;
                break;
            }
            let f = q.frames.pop_front().expect("front exists");
            q.nbytes -= f.payload_len;
            batch.records += 1;
            batch.nbytes += f.payload_len;
            batch.through_seq = f.seq;
            batch.newest = f.newest;
            batch.parts.push((f.chunk, f.span));
        }
        if !cut {
            let through = want.limit_seq.min(covered);
            if through > batch.through_seq {
                batch.through_seq = through;
                if through == covered {
                    batch.newest = self.newest;
                }
            }
        }
        q.start = q.start.max(batch.through_seq + 1);
        if batch.records > 0 {
            self.stats.batches += 1;
        }
        batch
    }

    /// A buffer to read `len` bytes into: for a large read, one of
    /// `read_bytes` (all alike, so any fits the next), no longer pointed into
    /// when there is one (its bytes are stale, not zeroed).
    pub fn buffer(&mut self, len: usize) -> Vec<u8> {
        if len < SMALL_READ_BYTES {
            return Vec::with_capacity(len); // a small region should not pin a large buffer
        }
        if let Some(buffer) = self.spare.pop() {
            return buffer;
        }
        self.stats.buffers_allocated += 1;
        vec![0; len.max(self.read_bytes() as usize)]
    }

    /// The region read from seq `read_from` for shard `reader`'s ask
    /// (`chunk`, the bytes walked) and its walk: queue each frame for the
    /// shards it belongs to, and move the reader to the walk's end. A stale
    /// read (the reader started again meanwhile) is dropped.
    pub fn push(&mut self, reader: u32, read_from: u64, chunk: Vec<u8>, walk: &Walk) {
        if self.pos != Some(read_from) || walk.frames.is_empty() && walk.next_seq <= read_from {
            self.recycle(chunk);
            return;
        }
        let chunk = Arc::new(chunk);
        for f in &walk.frames {
            self.newest = self.newest.max(f.stamp);
            let newest = self.newest;
            let queue_for = |q: &mut Queue| {
                if f.seq >= q.start {
                    q.frames.push_back(Queued { chunk: chunk.clone(), span: f.span.clone(), seq: f.seq, payload_len: f.payload_len, newest });
                    q.nbytes += f.payload_len;
                }
            };
            match f.route {
                Route::Shard(s) => {
                    if let Some(q) = self.queues.get_mut(s as usize) {
                        queue_for(q);
                    }
                }
                Route::EveryShard => self.queues.iter_mut().for_each(queue_for),
                Route::Nowhere => {}
            }
        }
        self.pos = Some(walk.next_seq);
        if self.stuck.is_some_and(|s| walk.next_seq > s) {
            self.stuck = None;
        }
        self.stats.fills += 1;
        if Arc::strong_count(&chunk) > 1 {
            self.kept_bytes += chunk.capacity() as u64;
            self.chunks.push_back(chunk);
        } else if let Ok(buffer) = Arc::try_unwrap(chunk) {
            self.recycle(buffer);
        }
        self.release(); // batches sent since the last call let go of their regions
        self.evict_over_cap(reader as usize);
    }

    /// The reader cannot walk past `seq` (see `stuck`): shards that need it read alone.
    pub fn stuck_at(&mut self, seq: u64) {
        if self.pos == Some(seq) {
            self.stuck = Some(seq);
        }
    }

    /// Forget every queue; the next ask starts the reader again.
    pub fn reset(&mut self) {
        self.queues.iter_mut().for_each(|q| {
            q.restart(0);
            q.served = false;
        });
        self.pos = None;
        self.stuck = None;
        self.newest = [0; 16];
        self.release();
    }

    /// The reader starts at `seq`, every window with it; returns `seq`.
    fn start_at(&mut self, seq: u64) -> u64 {
        self.queues.iter_mut().for_each(|q| q.restart(seq));
        self.pos = Some(seq);
        self.release();
        seq
    }

    /// Drop the oldest regions no queued frame points into any more.
    fn release(&mut self) {
        while self.chunks.front().is_some_and(|c| Arc::strong_count(c) == 1) {
            let chunk = self.chunks.pop_front().expect("front exists");
            self.kept_bytes -= chunk.capacity() as u64;
            if let Ok(buffer) = Arc::try_unwrap(chunk) {
                self.recycle(buffer);
            }
        }
    }

    fn recycle(&mut self, buffer: Vec<u8>) {
        let keep = SPARE_BUFFERS.max((self.cap_bytes / self.read_bytes()) as usize);
        if self.spare.len() < keep && (SMALL_READ_BYTES..=SPARE_BUFFER_BYTES).contains(&buffer.capacity()) {
            self.spare.push(buffer);
        }
    }

    /// Empty the queue holding the oldest frame until the kept regions fit
    /// the cap again; never the reading shard's (it takes what it has once
    /// past the cap, see `take`), nor one whose frames are all newer than
    /// its: emptying that one would free no region.
    fn evict_over_cap(&mut self, reader: usize) {
        let pos = self.pos.unwrap_or(0);
        let readers_oldest = self.queues[reader].frames.front().map_or(u64::MAX, |f| f.seq);
        while self.kept_bytes > self.cap_bytes {
            let oldest = (0..self.queues.len())
                .filter(|&s| s != reader)
                .filter_map(|s| self.queues[s].frames.front().map(|f| (f.seq, s)))
                .min();
            let Some((seq, shard)) = oldest else { break };
            if seq > readers_oldest {
                break;
            }
            self.queues[shard].restart(pos);
            self.stats.evictions += 1;
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::frame::{encode_header, RouteKind, Routing};
    use crate::log::select::{select, walk, Selection, Stop};

    /// A region of frames seq `first..first+n`, each routed to `route(seq)`.
    fn region(first: u64, n: u64, route: impl Fn(u64) -> (RouteKind, u32)) -> Vec<u8> {
        let mut out = Vec::new();
        for seq in first..first + n {
            let (kind, route) = route(seq);
            let payload = vec![seq as u8; 10 + (seq % 7) as usize];
            let routing = Routing { stamp: (seq as u128).to_be_bytes(), kind, route };
            out.extend_from_slice(&encode_header(seq, &routing, &[&payload]));
            out.extend_from_slice(&payload);
        }
        out
    }

    fn by_handle(seq: u64) -> (RouteKind, u32) {
        if seq.is_multiple_of(10) { (RouteKind::EveryShard, 0) } else { (RouteKind::Handle, (seq * 7 % 5) as u32) }
    }

    fn want(shard_id: u32, from_seq: u64) -> Want {
        Want { from_seq, limit_seq: u64::MAX, shard_id, n_shards: 3, budget: 1 << 20, max_records: 1000, allow_oversize: true }
    }

    fn joined(b: &Batch) -> Vec<u8> {
        b.parts.iter().flat_map(|(c, r)| c[r.clone()].to_vec()).collect()
    }

    /// Take for `want`, filling from `data` (seqs 1.. from offset 0) whenever
    /// asked; Err: read alone up to this seq.
    fn take_filling(fanout: &mut Fanout, data: &[u8], want: &Want) -> Result<Batch, u64> {
        take_reading(fanout, data, want, None)
    }

    fn alone(data: &[u8], want: &Want) -> Selection {
        select(data, 0, true, 1, &Want { n_shards: 3, ..*want })
    }

    /// `got` holds what the shard's own walk of the same range finds.
    fn check(data: &[u8], want: &Want, got: &Batch) {
        let own = alone(data, &Want { limit_seq: got.through_seq, budget: u64::MAX, max_records: u32::MAX, ..*want });
        assert_eq!(joined(got), own.frames(data), "shard {} from {}", want.shard_id, want.from_seq);
        assert_eq!((got.records, got.nbytes), (own.records, own.nbytes));
        assert!(got.nbytes <= want.budget || got.records == 1 && want.allow_oversize);
        assert!(got.records <= want.max_records && got.through_seq <= want.limit_seq);
        // Stamps here are seqs: the newest stamp claimed lies within what the batch covers.
        assert!(got.newest <= (got.through_seq as u128).to_be_bytes(), "newest past seq {}", got.through_seq);
    }

    #[test]
    fn a_buffer_used_again_is_not_counted_as_allocated() {
        let mut fanout = Fanout::new(2, 64 << 20);
        let len = fanout.read_bytes() as usize;
        let first = fanout.buffer(len);
        assert_eq!(fanout.stats().buffers_allocated, 1);
        fanout.recycle(first);
        let again = fanout.buffer(len);
        assert_eq!(fanout.stats().buffers_allocated, 1, "the spare was used again");
        let second = fanout.buffer(len);
        assert_eq!(fanout.stats().buffers_allocated, 2, "none spare: a new one");
        drop((again, second));
        let _small = fanout.buffer(SMALL_READ_BYTES - 1);
        assert_eq!(fanout.stats().buffers_allocated, 2, "small reads are not pooled or counted");
    }

    #[test]
    fn every_shard_gets_what_its_own_walk_would_from_one_walk() {
        let data = region(1, 200, by_handle);
        let mut fanout = Fanout::new(3, 64 << 20);
        for round in 0..3u64 {
            fanout.reset();
            let mut from = [1u64; 3];
            while from.iter().any(|&f| f <= 200 - round) {
                for shard in 0..3u32 {
                    let w = Want { budget: 300 + 100 * round, max_records: 5 + round as u32, limit_seq: 200 - round, ..want(shard, from[shard as usize]) };
                    if w.from_seq > w.limit_seq {
                        continue;
                    }
                    let got = take_filling(&mut fanout, &data, &w).expect("served");
                    check(&data, &w, &got);
                    let own = alone(&data, &w);
                    let blocked = if let Stop::Budget(n) = own.stop { n } else { 0 };
                    assert_eq!(got.blocked_by, blocked);
                    assert!(got.through_seq >= w.from_seq, "progress");
                    from[shard as usize] = got.through_seq + 1;
                }
            }
        }
        let stats = fanout.stats();
        assert_eq!((stats.fills, stats.evictions), (3, 0), "one walk of the region per round, not one per shard");
    }

    #[test]
    fn a_shard_below_its_window_reads_alone_up_to_it_and_is_served_from_there() {
        let data = region(1, 50, by_handle);
        let mut fanout = Fanout::new(3, 64 << 20);
        let first = take_filling(&mut fanout, &data, &Want { limit_seq: 20, ..want(0, 1) }).unwrap();
        assert_eq!((first.through_seq, fanout.position()), (20, Some(21)));
        let w = Want { limit_seq: 30, ..want(1, 5) };
        check(&data, &w, &take_filling(&mut fanout, &data, &w).unwrap());
        assert_eq!(take_filling(&mut fanout, &data, &want(0, 3)).unwrap_err(), 20, "a rewind below the window: alone up to it");
        assert!(!fanout.is_served(0));
        check(&data, &want(0, 21), &take_filling(&mut fanout, &data, &want(0, 21)).unwrap());
        assert!(fanout.is_served(0));
        let ahead = Want { limit_seq: 70, ..want(2, 60) };
        let got = take_filling(&mut fanout, &data, &ahead).unwrap();
        assert_eq!((got.records, got.through_seq), (0, 59), "past the LOG's end: nothing yet");
    }

    #[test]
    fn a_queue_left_untaken_is_emptied_at_the_cap_and_its_regions_freed() {
        let data = region(1, 100, by_handle);
        let cap = data.len() as u64 * 3 / 2;
        let mut fanout = Fanout::new(3, cap);
        for round in 0..3u64 {
            // Each read here keeps a copy of the whole region: shards 1 and 2 never take theirs.
            let w = Want { from_seq: round * 30 + 1, limit_seq: round * 30 + 30, ..want(0, 0) };
            assert!(take_filling(&mut fanout, &data, &w).is_ok(), "round {round}");
        }
        let stats = fanout.stats();
        assert_eq!(stats.evictions, 2, "{stats:?}");
        assert!(stats.kept_bytes <= cap, "{stats:?}");
        assert_eq!(take_filling(&mut fanout, &data, &want(1, 1)).unwrap_err(), 60, "emptied in round 1: alone up to where its queue starts");
    }

    #[test]
    fn the_reading_shard_is_never_emptied_even_past_the_cap() {
        let data = region(1, 100, by_handle);
        let mut fanout = Fanout::new(3, 1);
        let mut from = 1;
        while from <= 100 {
            let got = take_filling(&mut fanout, &data, &want(0, from)).expect("served");
            check(&data, &want(0, from), &got);
            from = got.through_seq + 1;
        }
        assert!(fanout.is_served(0));
    }

    #[test]
    fn a_frame_the_reader_cannot_route_sends_shards_there_to_read_alone() {
        let data = region(1, 10, by_handle);
        let mut fanout = Fanout::new(3, 64 << 20);
        assert!(take_filling(&mut fanout, &data, &Want { limit_seq: 5, ..want(0, 1) }).is_ok());
        fanout.reset();
        assert!(matches!(fanout.take(&want(0, 6), true), Take::Fill(6)));
        fanout.stuck_at(6);
        assert_eq!(take_filling(&mut fanout, &data, &want(0, 6)).unwrap_err(), u64::MAX, "the reader cannot pass seq 6");
        assert_eq!(take_filling(&mut fanout, &data, &want(1, 6)).unwrap_err(), u64::MAX);
        let past = take_filling(&mut fanout, &data, &want(1, 7)).expect("past it: the reader starts again there");
        check(&data, &want(1, 7), &past);
    }

    /// Random interleavings of three shards with random budgets, limits,
    /// rewinds, reads of random length and a small cap: every batch is what
    /// the shard's own walk of its range finds, and every shard gets to the end.
    #[test]
    fn any_interleaving_gives_each_shard_its_own_frames() {
        let data = region(1, 300, by_handle);
        for seed in 0..200 {
            let mut rng = crate::testrand::Rng::new(seed);
            let mut fanout = Fanout::new(3, [1, 2_000, 20_000, 1 << 30][rng.below(4) as usize]);
            let mut from = [1u64; 3];
            let mut steps = 0;
            while from.iter().any(|&f| f <= 300) {
                steps += 1;
                assert!(steps < 100_000, "seed {seed}: no progress");
                let shard = rng.below(3) as usize;
                if from[shard] > 300 {
                    continue;
                }
                if rng.below(50) == 0 {
                    from[shard] = 1 + rng.below(from[shard]); // a rewind
                }
                let w = Want {
                    budget: [1, 100, 1_000, 1 << 20][rng.below(4) as usize],
                    max_records: 1 + rng.below(20) as u32,
                    limit_seq: (from[shard] + rng.below(60)).min(300),
                    allow_oversize: rng.below(2) == 0,
                    ..want(shard as u32, from[shard])
                };
                let got = match take_in_pieces(&mut fanout, &data, &w, &mut rng) {
                    Ok(got) => got,
                    Err(until) => {
                        assert!(until >= w.from_seq, "seed {seed}");
                        let own = alone(&data, &Want { limit_seq: w.limit_seq.min(until), ..w });
                        from[shard] = own.through_seq.max(own.next_seq - 1).max(w.from_seq - 1) + 1;
                        continue;
                    }
                };
                check(&data, &w, &got);
                if got.through_seq < w.from_seq {
                    assert!(got.blocked_by > w.budget && !w.allow_oversize, "seed {seed}: {got:?} for {w:?}");
                }
                from[shard] = got.through_seq + 1;
            }
        }
    }

    /// `take_filling`, but each read walks a random part of the region and
    /// some reads find the reader stuck.
    fn take_in_pieces(fanout: &mut Fanout, data: &[u8], want: &Want, rng: &mut crate::testrand::Rng) -> Result<Batch, u64> {
        take_reading(fanout, data, want, Some(rng))
    }

    /// `take_filling`, and with `rng`, `take_in_pieces`.
    fn take_reading(fanout: &mut Fanout, data: &[u8], want: &Want, mut rng: Option<&mut crate::testrand::Rng>) -> Result<Batch, u64> {
        let mut may_fill = true;
        loop {
            match fanout.take(want, may_fill) {
                Take::Alone(until) => return Err(until),
                Take::Batch(b) => return Ok(b),
                Take::Fill(pos) => {
                    let mut limit = want.limit_seq;
                    if let Some(rng) = rng.as_deref_mut() {
                        if rng.below(40) == 0 {
                            fanout.stuck_at(pos);
                            may_fill = false;
                            continue;
                        }
                        limit = limit.min(pos + rng.below(30));
                    }
                    let w = walk(data, 0, true, 1, pos, limit, fanout.n_shards());
                    may_fill = w.next_seq > pos;
                    fanout.push(want.shard_id, pos, data.to_vec(), &w);
                }
            }
        }
    }

    #[test]
    fn a_shard_with_sparse_frames_does_not_hold_region_after_region() {
        // Shard 1 has one small frame in every 20; each read here keeps a whole copy of the region.
        let data = region(1, 200, |seq| if seq % 20 == 0 { (RouteKind::Handle, 1) } else { (RouteKind::Handle, 0) });
        let cap = data.len() as u64;
        let mut fanout = Fanout::new(2, cap);
        let mut rng = crate::testrand::Rng::new(7);
        let w = Want { n_shards: 2, ..want(1, 1) };
        let got = take_in_pieces(&mut fanout, &data, &w, &mut rng).expect("served");
        assert!(got.records >= 1);
        assert!(fanout.stats().kept_bytes <= cap + data.len() as u64, "{:?}", fanout.stats());
    }

    #[test]
    fn a_shard_far_ahead_of_the_reader_starts_it_again_where_it_asks() {
        let data = region(1, 50, by_handle);
        let mut fanout = Fanout::new(3, 64 << 20);
        assert!(take_filling(&mut fanout, &data, &Want { limit_seq: 20, ..want(0, 1) }).is_ok());
        let far = 21 + JUMP_RECORDS + 1;
        assert!(matches!(fanout.take(&want(1, far), true), Take::Fill(seq) if seq == far), "no walk of what lies between");
        assert_eq!(take_filling(&mut fanout, &data, &want(0, 21)).unwrap_err(), far - 1, "the one behind reads alone up to it");
    }

    #[test]
    fn a_stale_read_is_dropped() {
        let data = region(1, 10, by_handle);
        let mut fanout = Fanout::new(3, 64 << 20);
        let Take::Fill(pos) = fanout.take(&want(0, 1), true) else { panic!("a fill is due") };
        fanout.reset();
        fanout.push(0, pos, data.clone(), &walk(&data, 0, true, 1, pos, u64::MAX, 3));
        assert_eq!((fanout.position(), fanout.stats().fills), (None, 0));
    }
}
