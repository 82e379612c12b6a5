//! The stamp: the one value that orders every record (`logstore/stamp.py`).
//!
//! How to call it: `Stamp { wall_ns, logical, node_id }`, compare with `<`,
//! put on the wire with `to_bytes()` (16 bytes whose byte order is the stamp
//! order), read back with `Stamp::from_bytes`.

use std::fmt;

/// `(wall_ns, logical, node_id)`, compared lexicographically; unique and
/// totally ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub wall_ns: u64,
    pub logical: u32,
    pub node_id: u32,
}

impl Stamp {
    pub const BYTES: usize = 16;
    pub const ZERO: Stamp = Stamp { wall_ns: 0, logical: 0, node_id: 0 };

    /// Big-endian `wall_ns u64 | logical u32 | node_id u32`.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.wall_ns.to_be_bytes());
        out[8..12].copy_from_slice(&self.logical.to_be_bytes());
        out[12..].copy_from_slice(&self.node_id.to_be_bytes());
        out
    }

    /// Inverse of `to_bytes`; None unless given exactly 16 bytes.
    pub fn from_bytes(data: &[u8]) -> Option<Stamp> {
        let data: &[u8; 16] = data.try_into().ok()?;
        Some(Stamp {
            wall_ns: u64::from_be_bytes(data[..8].try_into().unwrap()),
            logical: u32::from_be_bytes(data[8..12].try_into().unwrap()),
            node_id: u32::from_be_bytes(data[12..].try_into().unwrap()),
        })
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.wall_ns, self.logical, self.node_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_order_is_stamp_order() {
        let a = Stamp { wall_ns: 5, logical: u32::MAX, node_id: 9 };
        let b = Stamp { wall_ns: 6, logical: 0, node_id: 0 };
        assert!(a < b && a.to_bytes() < b.to_bytes());
        assert_eq!(Stamp::from_bytes(&a.to_bytes()), Some(a));
        assert_eq!(Stamp::from_bytes(&[0; 15]), None);
        assert_eq!(a.to_string(), "5.4294967295@9");
    }
}
