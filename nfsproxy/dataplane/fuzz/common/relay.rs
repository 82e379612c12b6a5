//! What one relay session does with a client's calls and the NAS's replies,
//! without sockets, tasks or a LOG: the same crate functions, in the same
//! order, as `session::Session::on_call`/`relay` and `link::answer`/
//! `journal_reply` call them. An `Err` is where the session would close the
//! connection; a panic anywhere is a finding.

use bytes::Bytes;

use _dataplane::capture::{self, Capture, OpOf};
use _dataplane::conflict::{Claims, ConflictTable};
use _dataplane::framing::RecordReader;
use _dataplane::limits::{clamp_fsinfo, max_message_bytes};
use _dataplane::nfs3::proc3;
use _dataplane::outbox::Outgoing;
use _dataplane::record;
use _dataplane::routing::{self, Route, NFS_PROGRAM};
use _dataplane::rpc::{self, Header, RPCSEC_GSS};
use _dataplane::xid::{Admission, Admitted, NasXids, XidTable};

/// The relay's FSINFO clamp and message limit, small so that fuzz inputs reach it.
pub const MAX_PAYLOAD: u32 = 64 << 10;
/// NAS XIDs start here, so seeds can answer their calls.
pub const FIRST_NAS_XID: u32 = 1;

pub struct Relay {
    capture: Capture,
    table: XidTable,
    conflicts: ConflictTable,
    next_token: u64,
    stamps: u64,
    pub client: RecordReader,
    pub nas: RecordReader,
}

impl Relay {
    pub fn new() -> Self {
        Relay {
            // Small, so that eviction runs too.
            capture: Capture::new(16),
            table: XidTable::new(NasXids::starting_at(FIRST_NAS_XID)),
            conflicts: ConflictTable::default(),
            next_token: 1,
            stamps: 0,
            client: RecordReader::new(max_message_bytes(MAX_PAYLOAD as usize)),
            nas: RecordReader::new(max_message_bytes(MAX_PAYLOAD as usize)),
        }
    }

    fn stamp(&mut self) -> Vec<u8> {
        self.stamps += 1;
        let mut s = vec![0u8; 16];
        s[..8].copy_from_slice(&self.stamps.to_be_bytes());
        s
    }

    /// Feed client bytes in chunks as reads would deliver them; Err closes the session.
    pub fn from_client(&mut self, stream: &[u8], chunk: usize) -> Result<(), String> {
        for part in stream.chunks(chunk.max(1)) {
            self.client.receive(part);
            while let Some(message) = self.client.next_message().map_err(|e| e.to_string())? {
                self.on_call(message)?;
            }
        }
        Ok(())
    }

    /// Feed NAS bytes in chunks; Err ends the link (and the session).
    pub fn from_nas(&mut self, stream: &[u8], chunk: usize) -> Result<(), String> {
        for part in stream.chunks(chunk.max(1)) {
            self.nas.receive(part);
            while let Some(message) = self.nas.next_message().map_err(|e| e.to_string())? {
                self.on_reply(message)?;
            }
        }
        Ok(())
    }

    /// `Session::on_call`.
    fn on_call(&mut self, message: Bytes) -> Result<(), String> {
        let call = match rpc::parse(&message).map_err(|e| e.to_string())? {
            Header::Call(call) => call,
            Header::Reply(_) => return Err("a client sent a REPLY".into()),
        };
        assert!(call.body <= message.len() && call.cred.end <= call.body);
        let route = routing::route(&call);
        let out = match route {
            Route::Reject => routing::reject(&call),
            Route::Portmap => {
                routing::answer_portmap(&call, &message[call.body..], 2049).map_err(|e| e.to_string())?
            }
            Route::Nfs | Route::Mount => return self.relay(route, &call, message),
        };
        // What the relay answers itself must be a reply to that very call.
        match rpc::parse(&out) {
            Ok(Header::Reply(r)) => assert_eq!(r.xid, call.xid),
            other => panic!("the relay's own answer does not parse as a reply: {other:?}"),
        }
        let _ = Outgoing::whole(out);
        Ok(())
    }

    /// `Session::relay`, up to the NAS link.
    fn relay(&mut self, route: Route, call: &rpc::CallHeader, message: Bytes) -> Result<(), String> {
        let pending = self.capture.begin(call, &message, "192.0.2.1:700").map_err(|e| e.0)?;
        let mutation = pending.as_ref().is_some_and(|p| p.record().is_some());
        let token = if pending.is_some() {
            self.next_token += 1;
            self.next_token
        } else {
            0
        };
        let how = Admission {
            route,
            clamp_fsinfo: call.prog == NFS_PROGRAM && call.proc_ == proc3::FSINFO,
            keep_xid: call.cred_flavor == RPCSEC_GSS,
            pending,
            token,
            proc_key: (call.prog, call.proc_),
        };
        let nas_xid = match self.table.admit(call.xid, message.clone(), how) {
            Ok(Admitted::New(x)) => x,
            Ok(Admitted::Retransmission) => return Ok(()),
            Err(in_use) => return Err(format!("XID {:#x} in flight", in_use.0)),
        };
        let _ = Outgoing::with_xid(&message, nas_xid);
        if mutation {
            let claims = {
                let record = self.table.get(nas_xid).and_then(|c| c.pending.as_ref()).and_then(|p| p.record());
                let bindings = self.capture.bindings.lock().unwrap();
                record.map(|r| Claims::of(r, Some(&bindings))).unwrap_or_default()
            };
            if !self.conflicts.admit(token, claims) {
                return Ok(()); // held: sent (and stamped) when released
            }
            self.send(nas_xid);
        } else if let Some(c) = self.table.get_mut(nas_xid) {
            c.sent = true;
        }
        Ok(())
    }

    /// `stamp_for_sending`.
    fn send(&mut self, nas_xid: u32) {
        let stamp = self.stamp();
        if let Some(call) = self.table.get_mut(nas_xid) {
            if let Some(record) = call.pending.as_mut().and_then(|p| p.record_mut()) {
                record.stamp = stamp;
            }
            call.sent = true;
        }
    }

    /// `link::answer` and `journal_reply`, the LOG append replaced by the bytes it would write.
    fn on_reply(&mut self, message: Bytes) -> Result<(), String> {
        let reply = match rpc::parse(&message).map_err(|e| e.to_string())? {
            Header::Reply(reply) => reply,
            Header::Call(_) => return Err("the NAS sent a CALL".into()),
        };
        assert!(reply.body <= message.len());
        let Some(mut call) = self.table.take(reply.xid) else { return Ok(()) };
        let mut message = message;
        if let Some(pending) = call.pending.take() {
            for t in self.conflicts.release(call.token) {
                // A held call goes now; the fuzz table has its NAS XID by token.
                let held = self
                    .table
                    .nas_xids()
                    .into_iter()
                    .find(|&x| self.table.get(x).is_some_and(|c| c.token == t));
                if let Some(x) = held {
                    self.send(x);
                }
            }
            let mut stamps = self.stamps;
            let mut bind_stamp = || {
                stamps += 1;
                stamps.to_be_bytes().repeat(2)
            };
            let records = self.capture.complete(pending, &reply, &message, &mut bind_stamp).map_err(|e| e.0)?;
            self.stamps = stamps;
            for (record, data) in &records {
                // `Journal::append`: the record, its data sliced from the call.
                let head = record::encode(record);
                let data = data.clone().map(|d| &call.message[d]).unwrap_or(&[]);
                let _ = record::data_field_prefix(data.len());
                let _ = record::routing(record);
                let back = record::decode(&capture::payload(record, data)).expect("a record we encoded decodes");
                assert_eq!(back.op, record.op);
                assert_eq!(back.data.len(), data.len());
                assert!(!head.is_empty() || record.op == 0);
            }
            if let Some((record, _)) = records.first() {
                if record.ok && matches!(record.op3(), proc3::WRITE | proc3::COMMIT) {
                    // `Journal::verifier`: the reply ends with the verifier.
                    let mut copy = message.to_vec();
                    let at = copy.len() - 8;
                    for b in &mut copy[at..] {
                        *b ^= 0x5a;
                    }
                    message = Bytes::from(copy);
                }
            }
        }
        if call.clamp_fsinfo && reply.success {
            let mut copy = message.to_vec();
            clamp_fsinfo(&mut copy, reply.body, MAX_PAYLOAD).map_err(|e| e.0)?;
            message = Bytes::from(copy);
        }
        let _ = Outgoing::with_xid(&message, call.client_xid);
        Ok(())
    }
}

/// An input split at a 2-byte big-endian length: (first part, rest).
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (&[], data);
    }
    let n = (u16::from_be_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    data[2..].split_at(n)
}
