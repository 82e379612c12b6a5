//! One LOG frame: header encoding and validation (logstore/FORMAT.md, "Frame").
//!
//! How to call it: `encode_header(seq, &routing, &parts)` gives the 40 header
//! bytes to write before the payload parts; `decode_header(version, bytes)`
//! reads one back, and `check` validates it against its payload.

/// Bytes of a version 2 frame header.
pub const HEADER_BYTES: usize = 40;
/// Bytes of a version 1 frame header.
pub const HEADER_V1_BYTES: usize = 16;
/// Where the seq sits in a frame header, in both versions; the CRC covers the
/// header from here on.
pub const SEQ_AT: usize = 8;

/// How a shipper routes a frame without parsing its payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum RouteKind {
    /// No route given: parse the record to route it.
    #[default]
    Unknown = 0,
    /// `route` is crc32c of the routing file handle; shard = route % n_shards.
    Handle = 1,
    /// The record goes to every shard.
    EveryShard = 2,
    /// A write-ahead intent: the call a record will complete, written when
    /// the call arrives so its fsync overlaps the NAS's work. It stays in
    /// this LOG (no shard gets it); recovery after an unclean stop turns an
    /// intent whose record never became durable into that record.
    Intent = 3,
}

impl RouteKind {
    pub fn from_u8(v: u8) -> Option<RouteKind> {
        match v {
            0 => Some(RouteKind::Unknown),
            1 => Some(RouteKind::Handle),
            2 => Some(RouteKind::EveryShard),
            3 => Some(RouteKind::Intent),
            _ => None,
        }
    }
}

/// The routing fields a frame header carries: the record's stamp (16 bytes,
/// all zero when none) and its route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Routing {
    pub stamp: [u8; 16],
    pub kind: RouteKind,
    pub route: u32,
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub payload_len: u32,
    pub crc: u32,
    pub seq: u64,
    /// Raw route kind byte (validated by `check`).
    pub route_kind: u8,
    pub routing: Routing,
}

/// Header bytes for a frame of format `version`.
pub fn header_bytes(version: u8) -> usize {
    if version == 1 {
        HEADER_V1_BYTES
    } else {
        HEADER_BYTES
    }
}

/// CRC32C over the covered header bytes, then the payload parts.
pub fn frame_crc(covered: &[u8], parts: &[&[u8]]) -> u32 {
    let mut crc = crc32c::crc32c(covered);
    for part in parts {
        crc = crc32c::crc32c_append(crc, part);
    }
    crc
}

/// The version 2 header of the frame `seq` whose payload is `parts` joined.
pub fn encode_header(seq: u64, routing: &Routing, parts: &[&[u8]]) -> [u8; HEADER_BYTES] {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut h = [0u8; HEADER_BYTES];
    h[0..4].copy_from_slice(&(len as u32).to_be_bytes());
    h[8..16].copy_from_slice(&seq.to_be_bytes());
    h[16..32].copy_from_slice(&routing.stamp);
    h[32..36].copy_from_slice(&routing.route.to_be_bytes());
    h[36] = routing.kind as u8;
    let crc = frame_crc(&h[SEQ_AT..], parts);
    h[4..8].copy_from_slice(&crc.to_be_bytes());
    h
}

/// Decode a header of format `version`; `bytes` holds at least `header_bytes(version)`.
pub fn decode_header(version: u8, bytes: &[u8]) -> FrameHeader {
    let be32 = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    let seq = u64::from_be_bytes(bytes[8..16].try_into().unwrap());
    if version == 1 {
        return FrameHeader {
            payload_len: be32(0),
            crc: be32(4),
            seq,
            route_kind: 0,
            routing: Routing::default(),
        };
    }
    let route_kind = bytes[36];
    FrameHeader {
        payload_len: be32(0),
        crc: be32(4),
        seq,
        route_kind,
        routing: Routing {
            stamp: bytes[16..32].try_into().unwrap(),
            kind: RouteKind::from_u8(route_kind).unwrap_or_default(),
            route: be32(32),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_crc_covers_routing() {
        let routing = Routing { stamp: [7; 16], kind: RouteKind::Handle, route: 0xdead_beef };
        let h = encode_header(42, &routing, &[b"ab", b"c"]);
        let d = decode_header(2, &h);
        assert_eq!((d.payload_len, d.seq, d.routing), (3, 42, routing));
        assert_eq!(d.crc, frame_crc(&h[SEQ_AT..], &[b"abc"]));
        let mut other = h;
        other[33] ^= 1;
        assert_ne!(frame_crc(&other[SEQ_AT..], &[b"abc"]), d.crc);
    }
}
