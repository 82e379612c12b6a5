//! A batch of shipped LOG frames as a shard indexes it (recoveryd/store.py,
//! logstore/shipped.py): each frame checked end to end, its record split at
//! the data field so only the head is parsed, and what the shard's indexes
//! need read from the head.
//!
//! How to call it: `index(&frames, after_seq, through_seq, node_id)` gives
//! every record, or None when anything is unusual (damage, a record that
//! does not split, a stamp of another node, a frame made for a version 1
//! record). None is not a verdict: the shard then runs its Python reference
//! path, which names the fault or accepts the batch, so both paths agree on
//! every batch by construction and this one only has to be right on the
//! batches it accepts.

use prost::Message;

use crate::log::frame::{decode_header, frame_crc, HEADER_BYTES, SEQ_AT};
use crate::record::pb::{Op, Record};

/// The `data` field's tag: field 33, wire type 2 (logstore/record.py's `_DATA_TAG`).
const DATA_TAG: [u8; 2] = [0x8a, 0x02];

/// One record of a batch, as the shard's indexes take it.
#[derive(Debug, PartialEq, Eq)]
pub struct Indexed<'a> {
    pub seq: u64,
    pub stamp: [u8; 16],
    /// The serialized record (its frame's payload).
    pub raw: &'a [u8],
    /// `raw[..head_len]` is the record without its data (the operation index's value).
    pub head_len: usize,
    pub op: i32,
    /// The distinct non-empty handles it names (the per-file index).
    pub handles: Vec<Vec<u8>>,
    /// GAP records: (cause, reason).
    pub gap: Option<(String, String)>,
}

/// Every record of `frames` (see the module doc), or None.
pub fn index(frames: &[u8], after_seq: u64, through_seq: u64, node_id: u32) -> Option<Vec<Indexed<'_>>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut last = after_seq;
    while pos < frames.len() {
        let header = frames.get(pos..pos + HEADER_BYTES)?;
        let h = decode_header(2, header);
        let start = pos + HEADER_BYTES;
        let end = start.checked_add(h.payload_len as usize)?;
        let raw = frames.get(start..end)?;
        if frame_crc(&header[SEQ_AT..], &[raw]) != h.crc || h.seq <= last || h.seq > through_seq {
            return None;
        }
        let stamp = h.routing.stamp;
        if stamp == [0; 16] || stamp[12..] != node_id.to_be_bytes() {
            return None;
        }
        let (head_len, record) = split(raw)?;
        if record.stamp != stamp {
            return None;
        }
        out.push(Indexed {
            seq: h.seq,
            stamp,
            raw,
            head_len,
            op: record.op,
            handles: handles(&record),
            gap: (record.op == Op::Gap as i32).then(|| (record.gap_cause.clone(), record.gap_reason.clone())),
        });
        last = h.seq;
        pos = end;
    }
    Some(out)
}

/// `(head length, head parsed)` where the data field that ends `raw` starts
/// (logstore/record.py's `split_data`): the first tag whose field runs
/// exactly to the end and whose head parses without data. A record with no
/// data at all is its own head.
fn split(raw: &[u8]) -> Option<(usize, Record)> {
    let mut from = 0;
    while let Some(found) = raw[from..].windows(2).position(|w| w == DATA_TAG) {
        let at = from + found;
        if is_data_tail(&raw[at..]) {
            if let Ok(head) = Record::decode(&raw[..at]) {
                if head.data.is_empty() {
                    return Some((at, head));
                }
            }
        }
        from = at + 1;
    }
    let whole = Record::decode(raw).ok()?;
    whole.data.is_empty().then_some((raw.len(), whole))
}

/// Whether `tail` is exactly one `data` field: its tag, a length, that many bytes.
fn is_data_tail(tail: &[u8]) -> bool {
    let mut rest = &tail[DATA_TAG.len()..];
    match prost::encoding::decode_varint(&mut rest) {
        Ok(len) => len == rest.len() as u64,
        Err(_) => false,
    }
}

fn handles(record: &Record) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(2);
    for h in [&record.fh, &record.dir_fh, &record.to_dir_fh, &record.object_fh] {
        if !h.is_empty() && !out.contains(h) {
            out.push(h.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::frame::{encode_header, RouteKind, Routing};
    use crate::record::{data_field_prefix, encode};

    const NODE: u32 = 7;

    fn stamp(i: u8) -> [u8; 16] {
        let mut s = [0u8; 16];
        s[7] = i;
        s[12..].copy_from_slice(&NODE.to_be_bytes());
        s
    }

    /// A frame as the LOG writer makes it: head, data prefix, data.
    fn frame(seq: u64, record: &Record, data: &[u8]) -> Vec<u8> {
        let head = encode(record);
        let prefix = if data.is_empty() { Vec::new() } else { data_field_prefix(data.len()) };
        let routing = Routing { stamp: record.stamp.as_slice().try_into().unwrap_or([0; 16]), kind: RouteKind::Handle, route: 1 };
        let mut f = encode_header(seq, &routing, &[&head, &prefix, data]).to_vec();
        f.extend_from_slice(&head);
        f.extend_from_slice(&prefix);
        f.extend_from_slice(data);
        f
    }

    fn write(i: u8) -> Record {
        Record { stamp: stamp(i).to_vec(), op: Op::Write as i32, ok: true, fh: b"F".to_vec(), ..Default::default() }
    }

    #[test]
    fn records_split_at_their_data_and_name_their_handles() {
        // The data holds the tag itself: only the real field ends the record.
        let data = [&DATA_TAG[..], b"\x05tricky data"].concat();
        let rename = Record { stamp: stamp(2).to_vec(), op: Op::Rename as i32, dir_fh: b"D".to_vec(), to_dir_fh: b"D".to_vec(), object_fh: b"O".to_vec(), ..Default::default() };
        let gap = Record { stamp: stamp(3).to_vec(), op: Op::Gap as i32, gap_cause: "torn_tail".into(), gap_reason: "why".into(), ..Default::default() };
        let frames = [frame(5, &write(1), &data), frame(6, &rename, b""), frame(8, &gap, b"")].concat();
        let got = index(&frames, 4, 8, NODE).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 6, 8]);
        assert_eq!(&got[0].raw[..got[0].head_len], &encode(&write(1))[..]);
        assert_eq!(got[0].handles, [b"F".to_vec()]);
        assert_eq!((got[1].head_len, got[1].raw.len()), (got[1].raw.len(), encode(&rename).len()));
        assert_eq!(got[1].handles, [b"D".to_vec(), b"O".to_vec()]);
        assert_eq!(got[2].gap, Some(("torn_tail".into(), "why".into())));
    }

    #[test]
    fn anything_unusual_is_left_to_the_reference_path() {
        let good = frame(1, &write(1), b"data");
        assert!(index(&good, 0, 1, NODE).is_some());
        assert!(index(&good, 1, 1, NODE).is_none()); // seq does not rise
        assert!(index(&good, 0, 0, NODE).is_none()); // past through
        assert!(index(&good, 0, 1, NODE + 1).is_none()); // another node's stamp
        assert!(index(&good[..good.len() - 1], 0, 1, NODE).is_none()); // cut short
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(index(&bad, 0, 1, NODE).is_none()); // CRC
        let mut other = write(1);
        other.stamp = stamp(9).to_vec();
        let mut lying = frame(1, &other, b"");
        lying[16..32].copy_from_slice(&stamp(1)); // header stamp is not the record's
        let routing = Routing { stamp: stamp(1), kind: RouteKind::Handle, route: 1 };
        let head = encode(&other);
        lying[..HEADER_BYTES].copy_from_slice(&encode_header(1, &routing, &[&head]));
        assert!(index(&lying, 0, 1, NODE).is_none());
        assert!(index(b"", 0, 1, NODE).unwrap().is_empty());
    }
}
