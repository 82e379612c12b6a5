//! One segment file's layout: name, segment header, frame scanning and the
//! torn-tail search (logstore/FORMAT.md, "Segment" and "Recovery at open").
//!
//! How to call it: `scan(&bytes, base_seq)` validates a whole segment image
//! and says where the first bad frame is; `frames(&bytes, version, base_seq)`
//! lists the valid frames (readers, tests); `find_valid_frame` tells a torn
//! tail from corruption in a LOG without a sync mark.

use super::frame::{decode_header, frame_crc, header_bytes, FrameHeader, RouteKind, Routing, SEQ_AT};

pub const SEGMENT_MAGIC: &[u8; 8] = b"NJLOGSEG";
/// The format version this crate writes.
pub const FORMAT_VERSION: u8 = 2;
pub const SEGMENT_HEADER_BYTES: usize = 16;

/// The 16-byte header every version 2 segment starts with.
pub fn segment_header() -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..10].copy_from_slice(&(FORMAT_VERSION as u16).to_be_bytes());
    h[10..12].copy_from_slice(&(super::frame::HEADER_BYTES as u16).to_be_bytes());
    h
}

/// File name of the segment whose first seq is `base_seq`; sorts in seq order.
pub fn segment_name(base_seq: u64) -> String {
    format!("{base_seq:020}.seg")
}

/// Base seq encoded in a segment file name, or None if `name` is not a segment.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// File name a trimmed segment keeps while it waits, as a spare, to be
/// written over by a new segment; not a segment name, so no reader lists it.
pub fn spare_name(base_seq: u64) -> String {
    format!("{base_seq:020}.spare")
}

/// Base seq in a spare's file name, or None if `name` is not a spare.
pub fn parse_spare_name(name: &str) -> Option<u64> {
    parse_segment_name(&format!("{}.seg", name.strip_suffix(".spare")?))
}

/// The seq field of the frame header at `offset` (the caller knows a whole
/// header lies there).
pub fn frame_seq(data: &[u8], offset: usize, version: u8) -> u64 {
    decode_header(version, &data[offset..offset + header_bytes(version)]).seq
}

/// Offset of the first frame in a segment of format `version`.
pub fn data_start(version: u8) -> u64 {
    if version == 1 {
        0
    } else {
        SEGMENT_HEADER_BYTES as u64
    }
}

/// A frame that failed validation at `offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadFrame {
    pub offset: u64,
    pub reason: String,
    /// A well-formed frame with the wrong seq: never a torn write.
    pub discontinuity: bool,
}

/// The format version from a segment's first bytes: `Ok(None)` for a torn
/// version 2 header (empty, or a strict prefix of the header), `Ok(Some(1))`
/// when the file does not start with the magic. `Err` for a header that
/// starts with the magic but cannot be read.
pub fn segment_version(head: &[u8]) -> Result<Option<u8>, String> {
    let header = segment_header();
    if head.len() < SEGMENT_HEADER_BYTES && header.starts_with(head) {
        return Ok(None);
    }
    if !head.starts_with(SEGMENT_MAGIC) {
        return Ok(Some(1));
    }
    if head.len() < SEGMENT_HEADER_BYTES {
        return Err(format!("segment header cut at {} bytes", head.len()));
    }
    let version = u16::from_be_bytes([head[8], head[9]]);
    if version != FORMAT_VERSION as u16 {
        return Err(format!("unsupported LOG format version {version}"));
    }
    if head[..SEGMENT_HEADER_BYTES] != header {
        return Err(format!(
            "segment header does not match format version {version}: {}",
            hex(&head[..SEGMENT_HEADER_BYTES])
        ));
    }
    Ok(Some(2))
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// The frame at `pos` of a segment image, validated; `Ok(None)` at `end`.
/// Returns the header and the payload's offset.
pub fn next_frame(
    data: &[u8],
    pos: usize,
    end: usize,
    version: u8,
    expect_seq: u64,
) -> Result<Option<(FrameHeader, usize)>, BadFrame> {
    if pos >= end {
        return Ok(None);
    }
    let size = header_bytes(version);
    let bad = |reason: String| BadFrame { offset: pos as u64, reason, discontinuity: false };
    if end - pos < size {
        return Err(bad(format!("{} bytes left, less than a frame header", end - pos)));
    }
    let header = &data[pos..pos + size];
    if header.iter().all(|&b| b == 0) {
        return Err(bad("zeroed frame header".into()));
    }
    let h = decode_header(version, header);
    let payload_at = pos + size;
    if payload_at as u64 + h.payload_len as u64 > end as u64 {
        return Err(bad(format!(
            "frame of {} payload bytes runs past the end of data at {end}",
            h.payload_len
        )));
    }
    let payload = &data[payload_at..payload_at + h.payload_len as usize];
    let actual = frame_crc(&header[SEQ_AT..], &[payload]);
    if actual != h.crc {
        return Err(bad(format!("CRC mismatch (stored {:#010x}, computed {actual:#010x})", h.crc)));
    }
    if version != 1 && RouteKind::from_u8(h.route_kind).is_none() {
        return Err(bad(format!("unknown route kind {}", h.route_kind)));
    }
    if h.seq != expect_seq {
        return Err(BadFrame {
            offset: pos as u64,
            reason: format!("seq discontinuity: expected seq {expect_seq}, found {}", h.seq),
            discontinuity: true,
        });
    }
    Ok(Some((h, payload_at)))
}

/// One valid frame of a segment image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    pub offset: u64,
    pub routing: Routing,
    pub payload: Vec<u8>,
}

/// Every valid frame of a segment image from its data start, and the first
/// bad frame if one stops the list.
pub fn frames(data: &[u8], version: u8, base_seq: u64) -> (Vec<Frame>, Option<BadFrame>) {
    let mut out = Vec::new();
    let mut pos = data_start(version) as usize;
    let mut expect = base_seq;
    loop {
        match next_frame(data, pos, data.len(), version, expect) {
            Ok(None) => return (out, None),
            Err(bad) => return (out, Some(bad)),
            Ok(Some((h, at))) => {
                out.push(Frame {
                    seq: h.seq,
                    offset: pos as u64,
                    routing: h.routing,
                    payload: data[at..at + h.payload_len as usize].to_vec(),
                });
                pos = at + h.payload_len as usize;
                expect = h.seq + 1;
            }
        }
    }
}

/// What a full scan of one segment image found.
#[derive(Clone, Debug)]
pub struct Scan {
    pub file_size: u64,
    /// Offset just past the last good frame (or the segment header).
    pub valid_end: u64,
    /// `base_seq - 1` if no good frame.
    pub last_seq: u64,
    pub records: u64,
    /// None: the segment header itself is torn.
    pub version: Option<u8>,
    pub bad: Option<BadFrame>,
    /// Sparse `(seq, offset)` index, one entry per `INDEX_INTERVAL_BYTES`.
    pub index: Vec<(u64, u64)>,
}

/// A sparse seq -> offset index lets a reader start near its seq instead of at 0.
pub const INDEX_INTERVAL_BYTES: u64 = 64 << 10;

/// Validate every frame of a segment image, stopping at the first bad one.
pub fn scan(data: &[u8], base_seq: u64) -> Scan {
    let torn = |bad: Option<BadFrame>| Scan {
        file_size: data.len() as u64,
        valid_end: 0,
        last_seq: base_seq - 1,
        records: 0,
        version: None,
        bad,
        index: Vec::new(),
    };
    let head = &data[..data.len().min(SEGMENT_HEADER_BYTES)];
    let version = match segment_version(head) {
        Err(reason) => return torn(Some(BadFrame { offset: 0, reason, discontinuity: false })),
        Ok(None) => None,
        // No header and no version 1 frame either: a header never written back.
        Ok(Some(1)) if !matches!(next_frame(data, 0, data.len(), 1, base_seq), Ok(Some(_))) => None,
        Ok(v) => v,
    };
    let Some(version) = version else {
        let bad = (!data.is_empty()).then(|| BadFrame {
            offset: 0,
            reason: "torn segment header".into(),
            discontinuity: false,
        });
        return torn(bad);
    };
    let mut result = Scan {
        file_size: data.len() as u64,
        valid_end: data_start(version),
        last_seq: base_seq - 1,
        records: 0,
        version: Some(version),
        bad: None,
        index: Vec::new(),
    };
    loop {
        match next_frame(data, result.valid_end as usize, data.len(), version, result.last_seq + 1) {
            Ok(None) => return result,
            Err(bad) => {
                result.bad = Some(bad);
                return result;
            }
            Ok(Some((h, at))) => {
                if result.index.last().is_none_or(|&(_, o)| result.valid_end - o >= INDEX_INTERVAL_BYTES) {
                    result.index.push((h.seq, result.valid_end));
                }
                result.valid_end = (at + h.payload_len as usize) as u64;
                result.last_seq = h.seq;
                result.records += 1;
            }
        }
    }
}

/// First `(offset, seq)` at or after `start` holding a well-formed frame with
/// `seq >= min_seq`, or None. Considers every byte offset, because damage may
/// have destroyed the frame lengths.
pub fn find_valid_frame(data: &[u8], start: usize, min_seq: u64, version: u8) -> Option<(u64, u64)> {
    find_frame_between(data, start, (min_seq, min_seq), version)
}

/// First `(offset, seq)` at or after `start` holding a well-formed frame with
/// a seq from `lowest` up to `next` plus the number of frames that fit after
/// `start` (the highest seq a frame there could carry, were the frames
/// before it written in sequence), or None.
pub fn find_frame_between(data: &[u8], start: usize, (lowest, next): (u64, u64), version: u8) -> Option<(u64, u64)> {
    let size = header_bytes(version);
    let min_seq = lowest;
    // Saturating: a segment named near the end of the seq space must not wrap the range empty.
    let max_seq = next.saturating_add((data.len().saturating_sub(start) / size) as u64);
    let mut o = start;
    while o + size <= data.len() {
        let h = decode_header(version, &data[o..o + size]);
        if (min_seq..=max_seq).contains(&h.seq) {
            let end = o as u64 + size as u64 + h.payload_len as u64;
            if end <= data.len() as u64
                && frame_crc(&data[o + SEQ_AT..o + size], &[&data[o + size..end as usize]]) == h.crc
            {
                return Some((o as u64, h.seq));
            }
        }
        o += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::frame::encode_header;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_name(4097), "00000000000000004097.seg");
        assert_eq!(parse_segment_name("00000000000000004097.seg"), Some(4097));
        assert_eq!(parse_segment_name("4097.seg"), None);
        assert_eq!(parse_segment_name("00000000000000004097.seg.tmp"), None);
        assert_eq!(spare_name(4097), "00000000000000004097.spare");
        assert_eq!(parse_spare_name("00000000000000004097.spare"), Some(4097));
        assert_eq!(parse_spare_name("00000000000000004097.seg"), None);
        assert_eq!(parse_segment_name("00000000000000004097.spare"), None);
    }

    /// Found by fuzzing (target log_segment): near the end of the seq space
    /// the search's upper seq overflowed (a panic with overflow checks; in
    /// release it wrapped, so a valid frame after damage went unseen and the
    /// damage passed for a torn tail).
    #[test]
    fn the_torn_tail_search_near_the_last_seq_sees_a_valid_frame() {
        let mut data = segment_header().to_vec();
        data.extend_from_slice(&[0xff; 7]);
        let at = data.len() as u64;
        data.extend_from_slice(&encode_header(u64::MAX - 1, &Routing::default(), &[b"xy"]));
        data.extend_from_slice(b"xy");
        data.extend_from_slice(&[0xff; 100]);
        assert_eq!(find_valid_frame(&data, 16, u64::MAX - 2, 2), Some((at, u64::MAX - 1)));
    }

    #[test]
    fn scan_stops_at_a_torn_tail() {
        let mut data = segment_header().to_vec();
        for seq in 1..=3u64 {
            data.extend_from_slice(&encode_header(seq, &Routing::default(), &[b"xy"]));
            data.extend_from_slice(b"xy");
        }
        let good = data.len() as u64;
        data.extend_from_slice(&[0u8; 50]);
        let s = scan(&data, 1);
        assert_eq!((s.valid_end, s.last_seq, s.records, s.version), (good, 3, 3, Some(2)));
        assert_eq!(s.bad.unwrap().offset, good);
        assert_eq!(find_valid_frame(&data, good as usize + 1, 4, 2), None);
    }
}
