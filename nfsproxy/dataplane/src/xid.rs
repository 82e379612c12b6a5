//! Matching the NAS's replies to one client's calls, sans-IO.
//!
//! A client may reuse an XID while its first call is still in flight (a
//! retransmission, a buggy or a hostile client), and a NAS's duplicate
//! request cache would then drop the second call or answer it from the cache
//! without running it. So the NAS never sees a client's XID: every call gets
//! its own NAS XID, unique among the calls in flight and taken from a
//! proxy-wide counter, and a reply is matched by that XID alone.
//!
//! What the DRC did for the client is then the relay's job: a byte-identical
//! retransmission of a call still in flight is absorbed (the original's reply
//! answers it). One exception: an RPCSEC_GSS call's verifier covers its XID,
//! so it keeps it (`keep_xid`), and may not reuse one still in flight.

use std::collections::hash_map::{HashMap, RandomState};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::capture::Pending;
use crate::routing::Route;

/// One client call on its way to the NAS, or waiting for its reply.
#[derive(Debug)]
pub struct Call {
    pub client_xid: u32,
    pub nas_xid: u32,
    pub message: Bytes,
    pub route: Route,
    pub clamp_fsinfo: bool,
    pub retransmissions: u32,
    /// What capture must complete (None: not watched), and its journal token.
    pub pending: Option<Pending>,
    pub token: u64,
    /// Handed to the NAS link (a held mutation is not, yet).
    pub sent: bool,
    /// The LOG seq of its write-ahead intent: its reply waits for that fsync.
    pub intent_seq: Option<u64>,
    /// (program, procedure), for the per-procedure counters.
    pub proc_key: (u32, u32),
    pub arrival: std::time::Instant,
}

/// How a call is relayed: its route, and what the relay does with it.
pub struct Admission {
    pub route: Route,
    pub clamp_fsinfo: bool,
    pub keep_xid: bool,
    pub pending: Option<Pending>,
    pub token: u64,
    pub proc_key: (u32, u32),
}

/// What `admit` made of a call.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted {
    /// A new call: send it to the NAS under this XID.
    New(u32),
    /// A byte-identical copy of a call still in flight: absorbed.
    Retransmission,
}

/// A call that must keep its XID reuses one in flight: close that client.
#[derive(Debug, PartialEq, Eq)]
pub struct XidInUse(pub u32);

/// The proxy-wide source of NAS XIDs. It starts at a random point so that a
/// restarted proxy, whose new NAS connection may reuse an old source port,
/// does not replay old XIDs into the NAS's DRC.
#[derive(Clone)]
pub struct NasXids(Arc<AtomicU32>);

impl NasXids {
    pub fn new() -> Self {
        NasXids::starting_at(RandomState::new().hash_one(0u8) as u32)
    }

    pub fn starting_at(first: u32) -> Self {
        NasXids(Arc::new(AtomicU32::new(first)))
    }

    fn next(&self) -> u32 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

impl Default for NasXids {
    fn default() -> Self {
        NasXids::new()
    }
}

/// The calls in flight under one client XID.
enum SameXid {
    Lone(u32),
    /// By a keyed hash of the message (a client cannot choose collisions), then NAS XID.
    Several(HashMap<u64, Vec<u32>>),
}

/// The calls of one client connection that the NAS has not answered yet.
pub struct XidTable {
    nas_xids: NasXids,
    by_nas: HashMap<u32, Call>,
    by_client: HashMap<u32, SameXid>,
    hasher: RandomState,
}

impl XidTable {
    pub fn new(nas_xids: NasXids) -> Self {
        XidTable { nas_xids, by_nas: HashMap::new(), by_client: HashMap::new(), hasher: RandomState::new() }
    }

    /// Take a call in. Anything but a byte-identical copy of a call in flight
    /// (the same XID included) is a new call with a NAS XID of its own.
    pub fn admit(&mut self, client_xid: u32, message: Bytes, how: Admission) -> Result<Admitted, XidInUse> {
        let Admission { route, clamp_fsinfo, keep_xid, pending, token, proc_key } = how;
        let mut hash = None;
        if let Some(same) = self.by_client.get(&client_xid) {
            let h = self.hasher.hash_one(&message[..]);
            hash = Some(h);
            let candidates: &[u32] = match same {
                SameXid::Lone(x) => std::slice::from_ref(x),
                SameXid::Several(m) => m.get(&h).map(Vec::as_slice).unwrap_or(&[]),
            };
            for x in candidates {
                let earlier = self.by_nas.get_mut(x).expect("indexed call in flight");
                if earlier.message == message {
                    earlier.retransmissions += 1;
                    return Ok(Admitted::Retransmission);
                }
            }
        }
        let nas_xid = if keep_xid {
            if self.by_nas.contains_key(&client_xid) {
                return Err(XidInUse(client_xid));
            }
            client_xid
        } else {
            let mut x = self.nas_xids.next();
            while self.by_nas.contains_key(&x) {
                x = self.nas_xids.next(); // after 2^32 calls, or a kept XID in the way
            }
            x
        };
        match (self.by_client.remove(&client_xid), hash) {
            (None, _) => {
                self.by_client.insert(client_xid, SameXid::Lone(nas_xid));
            }
            (Some(SameXid::Lone(alone)), Some(h)) => {
                let alone_hash = self.hasher.hash_one(&self.by_nas[&alone].message[..]);
                let mut m: HashMap<u64, Vec<u32>> = HashMap::new();
                m.entry(alone_hash).or_default().push(alone);
                m.entry(h).or_default().push(nas_xid);
                self.by_client.insert(client_xid, SameXid::Several(m));
            }
            (Some(SameXid::Several(mut m)), Some(h)) => {
                m.entry(h).or_default().push(nas_xid);
                self.by_client.insert(client_xid, SameXid::Several(m));
            }
            (Some(_), None) => unreachable!("hashed whenever the XID is in flight"),
        }
        let call = Call {
            client_xid,
            nas_xid,
            message,
            route,
            clamp_fsinfo,
            retransmissions: 0,
            pending,
            token,
            sent: false,
            intent_seq: None,
            proc_key,
            arrival: std::time::Instant::now(),
        };
        self.by_nas.insert(nas_xid, call);
        Ok(Admitted::New(nas_xid))
    }

    pub fn get_mut(&mut self, nas_xid: u32) -> Option<&mut Call> {
        self.by_nas.get_mut(&nas_xid)
    }

    pub fn get(&self, nas_xid: u32) -> Option<&Call> {
        self.by_nas.get(&nas_xid)
    }

    /// Every call in flight, by NAS XID.
    pub fn nas_xids(&self) -> Vec<u32> {
        self.by_nas.keys().copied().collect()
    }

    /// The call a NAS reply answers, taken out of the table.
    pub fn take(&mut self, nas_xid: u32) -> Option<Call> {
        let call = self.by_nas.remove(&nas_xid)?;
        let emptied = match self.by_client.get_mut(&call.client_xid) {
            Some(SameXid::Lone(_)) | None => true,
            Some(SameXid::Several(m)) => {
                m.retain(|_, xids| {
                    xids.retain(|&x| x != nas_xid);
                    !xids.is_empty()
                });
                m.is_empty()
            }
        };
        if emptied {
            self.by_client.remove(&call.client_xid);
        }
        Some(call)
    }

    pub fn len(&self) -> usize {
        self.by_nas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_nas.is_empty()
    }

    /// Distinct client XIDs in flight (never above `len`).
    pub fn client_xids(&self) -> usize {
        self.by_client.len()
    }

    /// Forget every call (the session is over); returns them.
    pub fn clear(&mut self) -> Vec<Call> {
        self.by_client.clear();
        self.by_nas.drain().map(|(_, c)| c).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testrand::Rng;

    fn table() -> XidTable {
        XidTable::new(NasXids::starting_at(0xFFFF_FFF0))
    }

    fn how(keep_xid: bool) -> Admission {
        Admission { route: Route::Nfs, clamp_fsinfo: false, keep_xid, pending: None, token: 0, proc_key: (0, 0) }
    }

    fn admit(t: &mut XidTable, xid: u32, body: &[u8]) -> Admitted {
        t.admit(xid, Bytes::copy_from_slice(body), how(false)).unwrap()
    }

    #[test]
    fn an_identical_copy_in_flight_is_absorbed_a_different_call_is_not() {
        let mut t = table();
        let Admitted::New(a) = admit(&mut t, 7, b"write 1") else { panic!() };
        assert_eq!(admit(&mut t, 7, b"write 1"), Admitted::Retransmission);
        let Admitted::New(b) = admit(&mut t, 7, b"write 2") else { panic!() };
        assert_ne!(a, b);
        assert_eq!(admit(&mut t, 7, b"write 2"), Admitted::Retransmission);
        assert_eq!(t.take(a).unwrap().retransmissions, 1);
        assert!(matches!(admit(&mut t, 7, b"write 1"), Admitted::New(_)));
        assert_eq!(t.take(b).unwrap().message, Bytes::from_static(b"write 2"));
    }

    #[test]
    fn a_kept_xid_in_flight_is_refused() {
        let mut t = table();
        t.admit(9, Bytes::from_static(b"a"), how(true)).unwrap();
        assert_eq!(t.admit(9, Bytes::from_static(b"b"), how(true)), Err(XidInUse(9)));
        assert_eq!(t.admit(9, Bytes::from_static(b"a"), how(true)), Ok(Admitted::Retransmission));
    }

    #[test]
    fn the_table_agrees_with_a_model_under_any_interleaving() {
        let mut rng = Rng::new(5);
        for _ in 0..200 {
            let mut t = table();
            let mut model: Vec<(u32, u32, Vec<u8>)> = Vec::new(); // (nas, client, message)
            for _ in 0..60 {
                if rng.below(3) > 0 || model.is_empty() {
                    let (xid, body) = (rng.below(4) as u32, vec![rng.below(3) as u8]);
                    let copy = model.iter().any(|(_, c, m)| *c == xid && *m == body);
                    match admit(&mut t, xid, &body) {
                        Admitted::Retransmission => assert!(copy),
                        Admitted::New(nas) => {
                            assert!(!copy);
                            assert!(model.iter().all(|(n, _, _)| *n != nas));
                            model.push((nas, xid, body));
                        }
                    }
                } else {
                    let (nas, xid, body) = model.remove(rng.below(model.len() as u64) as usize);
                    let call = t.take(nas).unwrap();
                    assert_eq!((call.client_xid, &call.message[..]), (xid, &body[..]));
                    assert!(t.take(nas).is_none());
                }
                assert_eq!(t.len(), model.len());
                assert!(t.client_xids() <= t.len());
            }
        }
    }
}
