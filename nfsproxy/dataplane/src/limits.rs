//! Transfer-size limits the relay advertises (sans-IO).
//!
//! The relay holds each RPC message whole, so it caps message size. A NAS may
//! advertise transfers far larger (ganesha offers 64 MiB), and clients size
//! their READs and WRITEs from FSINFO. So the FSINFO reply is clamped to what
//! the relay accepts, the one reply it changes: clients then never send a call,
//! or ask for a reply, that the relay would have to refuse.

use crate::rpc::RpcError;
use crate::xdr::Reader;

/// Room for the RPC header, credentials and arguments around a payload.
pub const HEADER_ROOM_BYTES: usize = 64 << 10;

pub fn max_message_bytes(max_payload_bytes: usize) -> usize {
    max_payload_bytes + HEADER_ROOM_BYTES
}

const FATTR3_BYTES: usize = 84;
const NF3FIFO: u32 = 7;

/// Clamp rtmax, rtpref, wtmax, wtpref and dtpref of a successful FSINFO reply
/// in place (`body` is where the results start). A failed FSINFO is left as is.
pub fn clamp_fsinfo(message: &mut [u8], body: usize, max_payload: u32) -> Result<(), RpcError> {
    let mut r = Reader::new(&message[body..]);
    if r.u32()? != 0 {
        return Ok(());
    }
    if r.boolean()? {
        let ftype = r.u32()?;
        if !(1..=NF3FIFO).contains(&ftype) {
            return Err(RpcError(format!("{ftype} is not a valid Ftype3")));
        }
        r.skip(FATTR3_BYTES - 4)?;
    }
    let sizes = body + r.pos;
    r.skip(7 * 4)?;
    r.u64()?;
    r.skip(3 * 4)?;
    r.done()?;
    // rtmax rtpref rtmult wtmax wtpref wtmult dtpref: all but the two *mult
    for field in [0, 1, 3, 4, 6] {
        let at = sizes + 4 * field;
        let v = u32::from_be_bytes(message[at..at + 4].try_into().unwrap());
        message[at..at + 4].copy_from_slice(&v.min(max_payload).to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fsinfo_ok(with_attr: bool, sizes: [u32; 7]) -> Vec<u8> {
        let mut m = vec![0u8; 4];
        m.extend_from_slice(&(with_attr as u32).to_be_bytes());
        if with_attr {
            m.extend_from_slice(&1u32.to_be_bytes());
            m.extend_from_slice(&[0u8; FATTR3_BYTES - 4]);
        }
        sizes.iter().for_each(|v| m.extend_from_slice(&v.to_be_bytes()));
        m.extend_from_slice(&[0u8; 20]);
        m
    }

    #[test]
    fn large_sizes_are_clamped_and_multiples_kept() {
        for attr in [false, true] {
            let mut m = fsinfo_ok(attr, [64 << 20, 64 << 20, 4096, 64 << 20, 1 << 20, 4096, 64 << 20]);
            clamp_fsinfo(&mut m, 0, 1 << 20).unwrap();
            assert_eq!(m, fsinfo_ok(attr, [1 << 20, 1 << 20, 4096, 1 << 20, 1 << 20, 4096, 1 << 20]));
        }
    }

    #[test]
    fn a_truncated_or_padded_reply_is_an_error() {
        let m = fsinfo_ok(true, [1; 7]);
        assert!(clamp_fsinfo(&mut m[..m.len() - 1].to_vec(), 0, 1).is_err());
        let mut longer = m.clone();
        longer.extend_from_slice(&[0; 4]);
        assert!(clamp_fsinfo(&mut longer, 0, 1).is_err());
    }
}
