//! Where each incoming RPC call goes, and the replies the relay makes itself (sans-IO).
//!
//! One proxy port serves NFS, MOUNT and a portmapper answer; the NAS has NFS
//! and MOUNT on separate ports. MOUNT goes to the NAS's MOUNT port; NFSv3 and
//! programs the journal does not watch (NLM, NFSACL, ...) go to its NFS port
//! untouched; NFS versions other than 3 are refused with PROG_MISMATCH(3, 3)
//! (relaying them would let mutations past the journal); portmapper v2 is
//! answered here, pointing NFS, MOUNT and NFSACL v3 at this port.

use crate::rpc::{self, CallHeader, RpcError};
use crate::xdr::Reader;

pub const NFS_PROGRAM: u32 = 100003;
pub const NFS_VERSION: u32 = 3;
pub const MOUNT_PROGRAM: u32 = 100005;
pub const MOUNT_VERSIONS: [u32; 2] = [1, 3];
pub const NFSACL_PROGRAM: u32 = 100227;
pub const NFSACL_VERSION: u32 = 3;
pub const PMAP_PROGRAM: u32 = 100000;
pub const PMAP_VERSION: u32 = 2;
const IPPROTO_TCP: u32 = 6;

const PMAP_NULL: u32 = 0;
const PMAP_SET: u32 = 1;
const PMAP_UNSET: u32 = 2;
const PMAP_GETPORT: u32 = 3;
const PMAP_DUMP: u32 = 4;

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Nfs,
    Mount,
    Portmap,
    Reject,
}

pub fn route(call: &CallHeader) -> Route {
    if call.rpcvers != rpc::RPC_VERSION {
        return Route::Reject;
    }
    match call.prog {
        MOUNT_PROGRAM => Route::Mount,
        PMAP_PROGRAM if call.vers == PMAP_VERSION => Route::Portmap,
        PMAP_PROGRAM => Route::Reject,
        NFS_PROGRAM if call.vers != NFS_VERSION => Route::Reject,
        _ => Route::Nfs,
    }
}

/// The RPC-level refusal for a call that `route` sent to `Reject`.
pub fn reject(call: &CallHeader) -> Vec<u8> {
    if call.rpcvers != rpc::RPC_VERSION {
        rpc::rpc_mismatch(call.xid)
    } else if call.prog == PMAP_PROGRAM {
        rpc::prog_mismatch(call.xid, PMAP_VERSION, PMAP_VERSION)
    } else {
        rpc::prog_mismatch(call.xid, NFS_VERSION, NFS_VERSION)
    }
}

fn mappings(port: u32) -> Vec<[u32; 4]> {
    let mut out = vec![[PMAP_PROGRAM, PMAP_VERSION, IPPROTO_TCP, port], [NFS_PROGRAM, NFS_VERSION, IPPROTO_TCP, port]];
    out.extend(MOUNT_VERSIONS.iter().map(|&v| [MOUNT_PROGRAM, v, IPPROTO_TCP, port]));
    out.push([NFSACL_PROGRAM, NFSACL_VERSION, IPPROTO_TCP, port]);
    out
}

fn mapping(body: &[u8]) -> Result<[u32; 4], RpcError> {
    let mut r = Reader::new(body);
    let m = [r.u32()?, r.u32()?, r.u32()?, r.u32()?];
    r.done()?;
    Ok(m)
}

/// Answer a portmapper v2 call: NFS v3, MOUNT and NFSACL v3 over TCP live on `port`.
pub fn answer_portmap(call: &CallHeader, body: &[u8], port: u16) -> Result<Vec<u8>, RpcError> {
    let port = port as u32;
    let mut out = Vec::with_capacity(128);
    let put = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_be_bytes());
    match call.proc_ {
        PMAP_NULL => {
            Reader::new(body).done()?;
            rpc::accepted(call.xid, 0, &mut out);
        }
        PMAP_GETPORT => {
            let want = mapping(body)?;
            let found = mappings(port).iter().any(|m| m[..3] == want[..3]);
            rpc::accepted(call.xid, 0, &mut out);
            put(&mut out, if found { port } else { 0 });
        }
        PMAP_DUMP => {
            rpc::accepted(call.xid, 0, &mut out);
            for m in mappings(port) {
                put(&mut out, 1);
                m.iter().for_each(|&v| put(&mut out, v));
            }
            put(&mut out, 0);
        }
        PMAP_SET | PMAP_UNSET => {
            mapping(body)?;
            rpc::accepted(call.xid, 0, &mut out);
            put(&mut out, 0); // registrations belong to the host's own portmapper
        }
        _ => rpc::accepted(call.xid, rpc::PROC_UNAVAIL, &mut out),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{parse, tests::call, Header};

    fn header(m: &[u8]) -> CallHeader {
        match parse(m).unwrap() {
            Header::Call(c) => c,
            h => panic!("{h:?}"),
        }
    }

    #[test]
    fn calls_go_where_the_nas_serves_them() {
        assert_eq!(route(&header(&call(1, MOUNT_PROGRAM, 3, 1, b""))), Route::Mount);
        assert_eq!(route(&header(&call(1, NFS_PROGRAM, 3, 1, b""))), Route::Nfs);
        assert_eq!(route(&header(&call(1, NFS_PROGRAM, 4, 1, b""))), Route::Reject);
        assert_eq!(route(&header(&call(1, NFSACL_PROGRAM, 3, 1, b""))), Route::Nfs);
        assert_eq!(route(&header(&call(1, PMAP_PROGRAM, 2, 3, b""))), Route::Portmap);
        assert_eq!(route(&header(&call(1, PMAP_PROGRAM, 3, 3, b""))), Route::Reject);
    }

    #[test]
    fn getport_answers_this_port_for_what_it_serves() {
        let args: Vec<u8> = [NFS_PROGRAM, 3, 6, 0].iter().flat_map(|v| v.to_be_bytes()).collect();
        let c = header(&call(5, PMAP_PROGRAM, 2, PMAP_GETPORT, &args));
        let reply = answer_portmap(&c, &args, 2049).unwrap();
        assert_eq!(&reply[24..], &2049u32.to_be_bytes());
        let args: Vec<u8> = [NFS_PROGRAM, 4, 6, 0].iter().flat_map(|v| v.to_be_bytes()).collect();
        assert_eq!(&answer_portmap(&c, &args, 2049).unwrap()[24..], &0u32.to_be_bytes());
        assert!(answer_portmap(&c, &args[..12], 2049).is_err());
    }
}
