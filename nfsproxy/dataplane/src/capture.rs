//! Capture: an NFSv3 (or NFSACL v3 SETACL) call and the NAS's reply become
//! journal records, sans-IO; the same records, field for field, as the
//! Python relay's nfsproxy/capture.py makes.
//!
//! `begin` decodes a call worth watching when it arrives (bad arguments are
//! an error: the client broke the protocol); `complete` finishes it with the
//! reply and gives the records to journal. Mutations (the 11 NFSv3 kinds and
//! SETACL) make one record each; LOOKUP and READDIRPLUS replies, and
//! successful creations, teach `BindingCache` which handle a name holds, and
//! a binding that is news is journaled as a BIND record. Nothing here reads a
//! socket or a clock: stamps come from the caller.

use crate::poison::LockAnyway;
use std::ops::Range;
use std::sync::Mutex;

use crate::lru::Lru;
use crate::nfs3::{self, proc3, Nfs3Reader, NF3BLK, NF3CHR, NF3FIFO, NF3SOCK, NFS3_OK};
use crate::record::{self, AclEntry, Attr, Record};
use crate::routing::{NFSACL_PROGRAM, NFSACL_VERSION, NFS_PROGRAM, NFS_VERSION};
use crate::rpc::{AuthSys, CallHeader, ReplyHeader, RpcError};
use crate::xdr::Reader;

/// Op numbers (enum Op in proto/journal.proto) beside the NFSv3 procedure
/// numbers the mutations use.
pub mod op {
    pub const BIND: u32 = 100;
    pub const GAP: u32 = 104;
    pub const SETACL: u32 = 120;
}

/// A record's op as a procedure number (the prost field is the enum's i32).
pub trait OpOf {
    fn op3(&self) -> u32;
}

impl OpOf for Record {
    fn op3(&self) -> u32 {
        self.op as u32
    }
}

/// The LOG payload of a record: its encoding, then `data` (when not empty)
/// as a second occurrence of the data field, as logstore.record.record_parts writes it.
pub fn payload(record: &Record, data: &[u8]) -> Vec<u8> {
    let mut out = record::encode(record);
    if !data.is_empty() {
        out.extend_from_slice(&record::data_field_prefix(data.len()));
        out.extend_from_slice(data);
    }
    out
}

/// Record.status for replies the RPC layer refused: base + accept_stat (or + 0x100 + reject_stat).
pub const RPC_FAILURE_BASE: u32 = 0x10000;
const SETACL: u32 = 2;
const NFS_ACL: u32 = 0x1;
const NFS_DFACL: u32 = 0x4;
const NFS_ACL_DEFAULT: u32 = 0x1000;

/// Is this call a mutation capture journals (for the conflict table and durability)?
pub fn is_mutation(prog: u32, vers: u32, proc_: u32) -> bool {
    (prog == NFS_PROGRAM && vers == NFS_VERSION && MUTATIONS.contains(&proc_))
        || (prog == NFSACL_PROGRAM && vers == NFSACL_VERSION && proc_ == SETACL)
}

const MUTATIONS: [u32; 11] = [
    proc3::SETATTR, proc3::WRITE, proc3::CREATE, proc3::MKDIR, proc3::SYMLINK, proc3::MKNOD,
    proc3::REMOVE, proc3::RMDIR, proc3::RENAME, proc3::LINK, proc3::COMMIT,
];

/// A name a reply taught: (handle, directory handle, name, its attributes).
type Binding = (Vec<u8>, Vec<u8>, Vec<u8>, Option<Attr>);

/// What a watched call's reply must complete.
#[derive(Debug)]
pub enum Pending {
    /// A mutation: its record (stamped by the caller), and where a WRITE's data lies in the call.
    /// Boxed: a Record is large, and most calls in flight are not mutations.
    Mutation { proc_: u32, record: Box<Record>, data: Option<Range<usize>> },
    Lookup { dir: Vec<u8>, name: Vec<u8> },
    ReaddirPlus { dir: Vec<u8> },
}

impl Pending {
    pub fn record(&self) -> Option<&Record> {
        match self {
            Pending::Mutation { record, .. } => Some(&**record),
            _ => None,
        }
    }

    pub fn record_mut(&mut self) -> Option<&mut Record> {
        match self {
            Pending::Mutation { record, .. } => Some(&mut **record),
            _ => None,
        }
    }
}

/// A record to journal, and the range of the call message that is its data.
pub type Captured = (Record, Option<Range<usize>>);

/// Builds records from calls and replies; one per relay, shared by its sessions.
#[derive(Default)]
pub struct Capture {
    pub bindings: Mutex<BindingCache>,
}

fn bad(e: crate::xdr::XdrError) -> RpcError {
    RpcError(e.0)
}

impl Capture {
    pub fn new(capacity: usize) -> Self {
        Capture { bindings: Mutex::new(BindingCache::new(capacity)) }
    }

    /// Decode a call worth watching; None for calls that neither mutate nor teach names.
    pub fn begin(&self, call: &CallHeader, message: &[u8], client: &str) -> Result<Option<Pending>, RpcError> {
        let body = &message[call.body..];
        if call.prog == NFSACL_PROGRAM && call.vers == NFSACL_VERSION && call.proc_ == SETACL {
            let mut record = new_record(call, message, op::SETACL, client);
            let mut r = Reader::new(body);
            record.fh = r.fh().map_err(bad)?.to_vec();
            let mask = r.u32().map_err(bad)?;
            let acl = r.acl().map_err(bad)?;
            let default_acl = r.acl().map_err(bad)?;
            r.done().map_err(bad)?;
            set_acl_fields(&mut record, mask, acl, default_acl);
            return Ok(Some(Pending::Mutation { proc_: SETACL, record: Box::new(record), data: None }));
        }
        if call.prog != NFS_PROGRAM || call.vers != NFS_VERSION {
            return Ok(None);
        }
        let mut r = Reader::new(body);
        let pending = match call.proc_ {
            proc3::LOOKUP => {
                let (dir, name) = (r.fh().map_err(bad)?.to_vec(), r.name().map_err(bad)?.to_vec());
                Pending::Lookup { dir, name }
            }
            proc3::READDIRPLUS => {
                let dir = r.fh().map_err(bad)?.to_vec();
                r.skip(8 + 8 + 4 + 4).map_err(bad)?; // cookie, cookieverf, dircount, maxcount
                Pending::ReaddirPlus { dir }
            }
            p if MUTATIONS.contains(&p) => {
                let mut record = new_record(call, message, p, client);
                let data = call_fields(&mut record, p, &mut r).map_err(bad)?;
                let data = data.map(|d| call.body + d.start..call.body + d.end);
                if matches!(p, proc3::REMOVE | proc3::RMDIR | proc3::RENAME) {
                    // Lets one object's history (per-file index) include its renames and removal.
                    let bindings = self.bindings.lock_anyway();
                    if let Some(named) = bindings.handle_of(&record.dir_fh, &record.name) {
                        record.object_fh = named.to_vec();
                    }
                }
                Pending::Mutation { proc_: p, record: Box::new(record), data }
            }
            _ => return Ok(None),
        };
        r.done().map_err(bad)?;
        Ok(Some(pending))
    }

    /// Finish a pending call with its reply: the records to journal, in order.
    /// `stamp` is called once per BIND record (bindings are learned when the reply arrives).
    pub fn complete(
        &self,
        pending: Pending,
        reply: &ReplyHeader,
        message: &[u8],
        stamp: &mut dyn FnMut() -> Vec<u8>,
    ) -> Result<Vec<Captured>, RpcError> {
        if !reply.success {
            return Ok(match pending {
                Pending::Mutation { mut record, .. } => {
                    record.ok = false;
                    record.status = RPC_FAILURE_BASE + reply.failure;
                    vec![(*record, None)]
                }
                _ => vec![],
            });
        }
        // Decode the whole reply before acting on it: a reply that turns out
        // bad must not have taught the binding cache anything.
        let mut r = Reader::new(&message[reply.body..]);
        match pending {
            Pending::Mutation { proc_, mut record, data } => {
                reply_fields(&mut record, proc_, &mut r).map_err(bad)?;
                r.done().map_err(bad)?;
                let data = if record.ok { data } else { None };
                self.learn_from_mutation(&record);
                Ok(vec![(*record, data)])
            }
            Pending::Lookup { dir, name } => {
                let mut found = Vec::new();
                if r.nfsstat().map_err(bad)? == NFS3_OK {
                    let fh = r.fh().map_err(bad)?.to_vec();
                    let attr = r.post_op_attr().map_err(bad)?;
                    r.post_op_attr().map_err(bad)?;
                    found.push((fh, dir, name, attr));
                } else {
                    r.post_op_attr().map_err(bad)?;
                }
                r.done().map_err(bad)?;
                Ok(self.bind(found, stamp))
            }
            Pending::ReaddirPlus { dir } => {
                let found = readdirplus_entries(&mut r, &dir).map_err(bad)?;
                r.done().map_err(bad)?;
                Ok(self.bind(found, stamp))
            }
        }
    }

    fn bind(&self, found: Vec<Binding>, stamp: &mut dyn FnMut() -> Vec<u8>) -> Vec<Captured> {
        let mut bindings = self.bindings.lock_anyway();
        let mut out = Vec::new();
        for (fh, dir_fh, name, attr) in found {
            if bindings.learn(&fh, &dir_fh, &name) {
                let record = Record { stamp: stamp(), op: op::BIND as i32, ok: true, fh, dir_fh, name, attr, ..Default::default() };
                out.push((record, None));
            }
        }
        out
    }

    fn learn_from_mutation(&self, r: &Record) {
        // The mutation record itself carries the binding; only keep the cache
        // current so a later LOOKUP of the same name is not journaled again.
        if !r.ok {
            return;
        }
        let mut b = self.bindings.lock_anyway();
        let created = matches!(r.op3(), proc3::CREATE | proc3::MKDIR | proc3::SYMLINK | proc3::MKNOD);
        if matches!(r.op3(), proc3::REMOVE | proc3::RMDIR | proc3::RENAME) {
            b.unbind(&r.dir_fh, &r.name);
        }
        if created && !r.fh.is_empty() {
            b.learn(&r.fh, &r.dir_fh, &r.name);
        } else if r.op3() == proc3::LINK {
            b.learn(&r.fh, &r.to_dir_fh, &r.to_name);
        } else if r.op3() == proc3::RENAME && !r.object_fh.is_empty() {
            b.learn(&r.object_fh, &r.to_dir_fh, &r.to_name);
        }
    }
}

fn new_record(call: &CallHeader, message: &[u8], op: u32, client: &str) -> Record {
    let mut record = Record { op: op as i32, client: client.to_string(), xid: call.xid, ..Default::default() };
    if let Some(a) = AuthSys::of(call, message) {
        record.uid = a.uid;
        record.gid = a.gid;
        record.machine_name = a.machine_name.to_vec();
        record.gids = a.gids;
    }
    record
}

fn set_acl_fields(record: &mut Record, mask: u32, acl: Vec<AclEntry>, default_acl: Vec<AclEntry>) {
    record.acl_mask = mask & (NFS_ACL | NFS_DFACL);
    if mask & NFS_ACL != 0 {
        record.acl = acl;
    }
    if mask & NFS_DFACL != 0 {
        // Linux marks default entries with NFS_ACL_DEFAULT on the wire; the list says it already.
        record.default_acl = default_acl
            .into_iter()
            .map(|mut e| {
                e.r#type &= !NFS_ACL_DEFAULT;
                e
            })
            .collect();
    }
}

/// Fill a mutation's record from its arguments; the range of a WRITE's data in `r`.
fn call_fields(rec: &mut Record, proc_: u32, r: &mut Reader) -> crate::xdr::Result<Option<Range<usize>>> {
    let where_ = |rec: &mut Record, r: &mut Reader| -> crate::xdr::Result<()> {
        rec.dir_fh = r.fh()?.to_vec();
        rec.name = r.name()?.to_vec();
        Ok(())
    };
    match proc_ {
        proc3::SETATTR => {
            rec.fh = r.fh()?.to_vec();
            rec.set = Some(r.sattr()?);
            if r.boolean()? {
                rec.guard_ctime_ns = Some(r.nfstime_ns()?);
            }
        }
        proc3::WRITE => {
            rec.fh = r.fh()?.to_vec();
            rec.offset = r.u64()?;
            rec.count = r.u32()?;
            rec.stable = nfs3::stable_how(r)?;
            let data = r.var(u32::MAX as usize)?;
            let end = r.pos - (4 - data.len() % 4) % 4;
            return Ok(Some(end - data.len()..end));
        }
        proc3::CREATE => {
            where_(rec, r)?;
            rec.create_mode = nfs3::create_mode(r)?;
            if rec.create_mode == nfs3::EXCLUSIVE {
                rec.verifier = r.fixed(8)?.to_vec();
            } else {
                rec.set = Some(r.sattr()?);
            }
        }
        proc3::MKDIR => {
            where_(rec, r)?;
            rec.set = Some(r.sattr()?);
        }
        proc3::SYMLINK => {
            where_(rec, r)?;
            rec.set = Some(r.sattr()?);
            rec.symlink_target = r.name()?.to_vec();
        }
        proc3::MKNOD => {
            where_(rec, r)?;
            rec.mknod_type = r.ftype()?;
            if matches!(rec.mknod_type, NF3CHR | NF3BLK) {
                rec.set = Some(r.sattr()?);
                rec.rdev_major = r.u32()?;
                rec.rdev_minor = r.u32()?;
            } else if matches!(rec.mknod_type, NF3SOCK | NF3FIFO) {
                rec.set = Some(r.sattr()?);
            }
        }
        proc3::REMOVE | proc3::RMDIR => where_(rec, r)?,
        proc3::RENAME => {
            where_(rec, r)?;
            rec.to_dir_fh = r.fh()?.to_vec();
            rec.to_name = r.name()?.to_vec();
        }
        proc3::LINK => {
            rec.fh = r.fh()?.to_vec();
            rec.to_dir_fh = r.fh()?.to_vec();
            rec.to_name = r.name()?.to_vec();
        }
        proc3::COMMIT => {
            rec.fh = r.fh()?.to_vec();
            rec.offset = r.u64()?;
            rec.count = r.u32()?;
        }
        _ => unreachable!("not a mutation"),
    }
    Ok(None)
}

/// Complete a mutation's record from its (successful RPC) reply: status and post-op attributes.
fn reply_fields(rec: &mut Record, proc_: u32, r: &mut Reader) -> crate::xdr::Result<()> {
    let status = r.nfsstat()?;
    rec.status = status;
    rec.ok = status == NFS3_OK;
    let ok = rec.ok;
    fn after(slot: &mut Option<Attr>, a: Option<Attr>) {
        if a.is_some() {
            *slot = a;
        }
    }
    if rec.op3() == op::SETACL {
        // Post-op attributes either way; a failed reply may carry nothing at all (ganesha).
        if ok || r.remaining() > 0 {
            let a = r.post_op_attr()?;
            after(&mut rec.attr, a);
        }
        return Ok(());
    }
    match proc_ {
        proc3::SETATTR => {
            let a = r.wcc_after()?;
            after(&mut rec.attr, a);
        }
        proc3::WRITE => {
            let a = r.wcc_after()?;
            after(&mut rec.attr, a);
            if ok {
                rec.reply_count = r.u32()?;
                nfs3::stable_how(r)?;
                r.fixed(8)?; // the write verifier
            }
        }
        proc3::CREATE | proc3::MKDIR | proc3::SYMLINK | proc3::MKNOD => {
            if ok {
                let fh = r.post_op_fh()?.map(<[u8]>::to_vec);
                let attr = r.post_op_attr()?;
                let dir = r.wcc_after()?;
                after(&mut rec.dir_attr, dir);
                if let Some(fh) = fh {
                    rec.fh = fh;
                }
                after(&mut rec.attr, attr);
            } else {
                let dir = r.wcc_after()?;
                after(&mut rec.dir_attr, dir);
            }
        }
        proc3::REMOVE | proc3::RMDIR => {
            let a = r.wcc_after()?;
            after(&mut rec.dir_attr, a);
        }
        proc3::RENAME => {
            let from = r.wcc_after()?;
            let to = r.wcc_after()?;
            after(&mut rec.dir_attr, from);
            after(&mut rec.to_dir_attr, to);
        }
        proc3::LINK => {
            let a = r.post_op_attr()?;
            let to = r.wcc_after()?;
            after(&mut rec.attr, a);
            after(&mut rec.to_dir_attr, to);
        }
        proc3::COMMIT => {
            let a = r.wcc_after()?;
            after(&mut rec.attr, a);
            if ok {
                r.fixed(8)?;
            }
        }
        _ => unreachable!("not a mutation"),
    }
    Ok(())
}

type Found = Vec<Binding>;

fn readdirplus_entries(r: &mut Reader, dir: &[u8]) -> crate::xdr::Result<Found> {
    let mut found = Vec::new();
    if r.nfsstat()? != NFS3_OK {
        r.post_op_attr()?;
        return Ok(found);
    }
    r.post_op_attr()?;
    r.fixed(8)?; // cookieverf
    while r.boolean()? {
        r.u64()?; // fileid
        let name = r.name()?;
        r.u64()?; // cookie
        let attr = r.post_op_attr()?;
        let fh = r.post_op_fh()?;
        if let Some(fh) = fh {
            if name != b"." && name != b".." {
                found.push((fh.to_vec(), dir.to_vec(), name.to_vec(), attr));
            }
        }
    }
    r.boolean()?; // eof
    Ok(found)
}

/// Which name each file handle was last seen under, bounded (LRU), as
/// nfsproxy.capture.BindingCache: a BIND is journaled only when a binding is
/// new or changed, so a client listing the same directory all day adds
/// nothing to the LOG; both directions hold at most `capacity` bindings.
pub struct BindingCache {
    capacity: usize,
    names: Lru<Vec<u8>, (Vec<u8>, Vec<u8>)>,
    handles: Lru<(Vec<u8>, Vec<u8>), Vec<u8>>,
}

impl Default for BindingCache {
    fn default() -> Self {
        BindingCache::new(1 << 20)
    }
}

impl BindingCache {
    pub fn new(capacity: usize) -> Self {
        BindingCache { capacity, names: Lru::default(), handles: Lru::default() }
    }

    /// Remember fh's name; true when it is news worth journaling.
    pub fn learn(&mut self, fh: &[u8], dir_fh: &[u8], name: &[u8]) -> bool {
        let key = (dir_fh.to_vec(), name.to_vec());
        if let Some(replaced) = self.handles.get(&key).cloned() {
            if replaced != fh && self.names.get(&replaced) == Some(&key) {
                self.names.remove(&replaced); // that handle lost this name: seeing it here again is news
            }
        }
        self.handles.put_newest(key.clone(), fh.to_vec());
        if self.handles.len() > self.capacity {
            if let Some((old_key, old_fh)) = self.handles.pop_oldest() {
                self.evict(&old_key, &old_fh);
            }
        }
        let fh = fh.to_vec();
        if self.names.get(&fh) == Some(&key) {
            self.names.touch(&fh);
            return false;
        }
        self.names.put(fh, key);
        if self.names.len() > self.capacity {
            if let Some((old_fh, old_key)) = self.names.pop_oldest() {
                if self.handles.get(&old_key) == Some(&old_fh) {
                    self.handles.remove(&old_key);
                }
            }
        }
        true
    }

    fn evict(&mut self, key: &(Vec<u8>, Vec<u8>), fh: &Vec<u8>) {
        if self.names.get(fh) == Some(key) {
            self.names.remove(fh);
        }
    }

    /// The name is gone (removed, or renamed away): forget what it named.
    pub fn unbind(&mut self, dir_fh: &[u8], name: &[u8]) {
        let key = (dir_fh.to_vec(), name.to_vec());
        if let Some(fh) = self.handles.remove(&key) {
            self.evict(&key, &fh);
        }
    }

    /// The handle last seen under `name` in `dir_fh`, if any.
    pub fn handle_of(&self, dir_fh: &[u8], name: &[u8]) -> Option<&[u8]> {
        self.handles.get(&(dir_fh.to_vec(), name.to_vec())).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_is_news_once_and_again_after_it_changes() {
        let mut b = BindingCache::new(4);
        assert!(b.learn(b"f1", b"d", b"a"));
        assert!(!b.learn(b"f1", b"d", b"a"));
        assert!(b.learn(b"f2", b"d", b"a"));
        assert!(b.learn(b"f1", b"d", b"a"));
        b.unbind(b"d", b"a");
        assert_eq!(b.handle_of(b"d", b"a"), None);
        assert!(b.learn(b"f1", b"d", b"a"));
    }

    /// Random bodies behind valid headers, for every watched procedure: an
    /// error or records, never a panic (the relay's own fuzzing; the damage
    /// test in tests/e2e/test_native_capture.py compares with Python's).
    #[test]
    fn random_calls_and_replies_never_panic() {
        use crate::rpc::{self, tests::call, Header};
        use crate::testrand::Rng;
        let capture = Capture::default();
        let mut rng = Rng::new(1813);
        let procs: Vec<(u32, u32)> = MUTATIONS.iter().chain(&[proc3::LOOKUP, proc3::READDIRPLUS])
            .map(|&p| (NFS_PROGRAM, p)).chain([(NFSACL_PROGRAM, SETACL)]).collect();
        for _ in 0..20_000 {
            let (prog, p) = procs[rng.below(procs.len() as u64) as usize];
            let mut body = rng.some_bytes(200);
            // Mostly small numbers, as real lengths and enums are.
            for b in body.iter_mut().step_by(4) {
                if rng.below(4) > 0 {
                    *b = 0;
                }
            }
            let message = call(7, prog, 3, p, &body);
            let Header::Call(header) = rpc::parse(&message).unwrap() else { panic!() };
            let Ok(Some(pending)) = capture.begin(&header, &message, "c") else { continue };
            let mut reply = Vec::new();
            rpc::accepted(7, 0, &mut reply);
            let mut res = rng.some_bytes(300);
            for b in res.iter_mut().step_by(4) {
                if rng.below(4) > 0 {
                    *b = 0;
                }
            }
            reply.extend_from_slice(&res);
            let Header::Reply(rh) = rpc::parse(&reply).unwrap() else { panic!() };
            let _ = capture.complete(pending, &rh, &reply, &mut || vec![0; 16]);
        }
    }

    #[test]
    fn both_directions_stay_bounded() {
        let mut b = BindingCache::new(3);
        for i in 0..50u8 {
            b.learn(&[i], b"d", &[i % 7]);
            assert!(b.len() <= 3 && b.handles.len() <= 3);
        }
    }
}
