//! The journal's `Record` (proto/journal.proto) as capture fills it, and its
//! protobuf encoding.
//!
//! The encoding is the one Python's protobuf runtime gives for the same
//! values: fields in field-number order, proto3 defaults left out, a
//! sub-message present (even empty) once any of its fields was set, packed
//! repeated scalars. So a record captured here and one captured by the Python
//! relay are the same bytes (tests/unit/test_native_capture.py checks it).
//! A WRITE's data is not part of the head: `encode_with_data` appends it as a
//! second occurrence of field 33, as logstore.record.record_parts does.

use crate::log::{RouteKind, Routing};

/// Post-op attributes (message Attr).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attr {
    pub ftype: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub used: u64,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    pub fsid: u64,
    pub fileid: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

/// Attributes a call sets (message SetAttr).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime_ns: Option<i64>,
    pub atime_server: bool,
    pub mtime_ns: Option<i64>,
    pub mtime_server: bool,
}

/// One POSIX ACL entry (message AclEntry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclEntry {
    pub tag: u32,
    pub id: u32,
    pub perm: u32,
}

/// Op numbers (enum Op): NFSv3 procedure numbers for journaled calls.
pub mod op {
    pub const BIND: u32 = 100;
    pub const GAP: u32 = 104;
    pub const SETACL: u32 = 120;
}

/// One journal record, as far as the relay fills it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub stamp: Vec<u8>,
    pub op: u32,
    pub ok: bool,
    pub status: u32,
    pub client: String,
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
    pub machine_name: Vec<u8>,
    pub xid: u32,
    pub fh: Vec<u8>,
    pub dir_fh: Vec<u8>,
    pub name: Vec<u8>,
    pub to_dir_fh: Vec<u8>,
    pub to_name: Vec<u8>,
    pub offset: u64,
    pub count: u32,
    pub stable: u32,
    pub set: Option<SetAttr>,
    pub create_mode: u32,
    pub verifier: Vec<u8>,
    pub symlink_target: Vec<u8>,
    pub mknod_type: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    pub guard_ctime_ns: Option<i64>,
    pub attr: Option<Attr>,
    pub dir_attr: Option<Attr>,
    pub to_dir_attr: Option<Attr>,
    pub reply_count: u32,
    pub object_fh: Vec<u8>,
    pub acl: Vec<AclEntry>,
    pub default_acl: Vec<AclEntry>,
    pub acl_mask: u32,
    pub gap_from: Vec<u8>,
    pub gap_cause: String,
    pub gap_reason: String,
}

const VARINT: u32 = 0;
const LEN: u32 = 2;
const DATA_FIELD: u32 = 33;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v > 0x7F {
        out.push((v as u8 & 0x7F) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, (field << 3 | wire) as u64);
}

/// A scalar with explicit presence (proto3 `optional`): written even when 0.
fn present(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, VARINT);
    varint(out, v);
}

/// A plain proto3 scalar: left out when 0.
fn scalar(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        present(out, field, v);
    }
}

fn bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
    if !v.is_empty() {
        nested(out, field, v);
    }
}

fn nested(out: &mut Vec<u8>, field: u32, v: &[u8]) {
    key(out, field, LEN);
    varint(out, v.len() as u64);
    out.extend_from_slice(v);
}

impl Attr {
    fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(64);
        for (f, v) in [(1, self.ftype), (2, self.mode), (3, self.nlink), (4, self.uid), (5, self.gid)] {
            scalar(&mut o, f, v as u64);
        }
        scalar(&mut o, 6, self.size);
        scalar(&mut o, 7, self.used);
        scalar(&mut o, 8, self.rdev_major as u64);
        scalar(&mut o, 9, self.rdev_minor as u64);
        scalar(&mut o, 10, self.fsid);
        scalar(&mut o, 11, self.fileid);
        scalar(&mut o, 12, self.atime_ns as u64);
        scalar(&mut o, 13, self.mtime_ns as u64);
        scalar(&mut o, 14, self.ctime_ns as u64);
        o
    }
}

impl SetAttr {
    fn encode(&self) -> Vec<u8> {
        let mut o = Vec::new();
        let opt = |o: &mut Vec<u8>, f, v: Option<u64>| {
            if let Some(v) = v {
                present(o, f, v)
            }
        };
        opt(&mut o, 1, self.mode.map(u64::from));
        opt(&mut o, 2, self.uid.map(u64::from));
        opt(&mut o, 3, self.gid.map(u64::from));
        opt(&mut o, 4, self.size);
        opt(&mut o, 5, self.atime_ns.map(|v| v as u64));
        scalar(&mut o, 6, self.atime_server as u64);
        opt(&mut o, 7, self.mtime_ns.map(|v| v as u64));
        scalar(&mut o, 8, self.mtime_server as u64);
        o
    }
}

impl AclEntry {
    fn encode(&self) -> Vec<u8> {
        let mut o = Vec::new();
        scalar(&mut o, 1, self.tag as u64);
        scalar(&mut o, 2, self.id as u64);
        scalar(&mut o, 3, self.perm as u64);
        o
    }
}

impl Record {
    /// The record's protobuf encoding (without a WRITE's data).
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(256);
        bytes(&mut o, 1, &self.stamp);
        scalar(&mut o, 2, self.op as u64);
        scalar(&mut o, 3, self.ok as u64);
        scalar(&mut o, 4, self.status as u64);
        bytes(&mut o, 10, self.client.as_bytes());
        scalar(&mut o, 11, self.uid as u64);
        scalar(&mut o, 12, self.gid as u64);
        if !self.gids.is_empty() {
            let mut packed = Vec::new();
            self.gids.iter().for_each(|&g| varint(&mut packed, g as u64));
            nested(&mut o, 13, &packed);
        }
        bytes(&mut o, 14, &self.machine_name);
        scalar(&mut o, 15, self.xid as u64);
        bytes(&mut o, 20, &self.fh);
        bytes(&mut o, 21, &self.dir_fh);
        bytes(&mut o, 22, &self.name);
        bytes(&mut o, 23, &self.to_dir_fh);
        bytes(&mut o, 24, &self.to_name);
        scalar(&mut o, 30, self.offset);
        scalar(&mut o, 31, self.count as u64);
        scalar(&mut o, 32, self.stable as u64);
        if let Some(set) = &self.set {
            nested(&mut o, 34, &set.encode());
        }
        scalar(&mut o, 35, self.create_mode as u64);
        bytes(&mut o, 36, &self.verifier);
        bytes(&mut o, 37, &self.symlink_target);
        scalar(&mut o, 38, self.mknod_type as u64);
        scalar(&mut o, 39, self.rdev_major as u64);
        scalar(&mut o, 40, self.rdev_minor as u64);
        if let Some(g) = self.guard_ctime_ns {
            present(&mut o, 41, g as u64);
        }
        for (f, a) in [(50, &self.attr), (51, &self.dir_attr), (52, &self.to_dir_attr)] {
            if let Some(a) = a {
                nested(&mut o, f, &a.encode());
            }
        }
        scalar(&mut o, 53, self.reply_count as u64);
        bytes(&mut o, 64, &self.object_fh);
        bytes(&mut o, 65, &self.gap_from);
        bytes(&mut o, 66, self.gap_cause.as_bytes());
        bytes(&mut o, 67, self.gap_reason.as_bytes());
        for (f, list) in [(90, &self.acl), (91, &self.default_acl)] {
            for e in list {
                nested(&mut o, f, &e.encode());
            }
        }
        scalar(&mut o, 92, self.acl_mask as u64);
        o
    }

    /// The LOG frame's routing fields (nfsproxy/sharding.py's frame_route):
    /// data and attribute records go by the object's handle, namespace
    /// records by the directory's, GAP records to every shard.
    pub fn routing(&self) -> Routing {
        let stamp: [u8; 16] = self.stamp.as_slice().try_into().unwrap_or([0; 16]);
        let handle: Option<&[u8]> = match self.op {
            2 | 7 | 21 | op::SETACL | 101 => Some(&self.fh),
            8..=14 | op::BIND => Some(&self.dir_fh),
            15 => Some(&self.to_dir_fh),
            _ => None,
        };
        match handle {
            Some(h) => Routing { stamp, kind: RouteKind::Handle, route: crc32c::crc32c(h) },
            None if matches!(self.op, op::GAP | 102 | 103) => Routing { stamp, kind: RouteKind::EveryShard, route: 0 },
            None => Routing { stamp, kind: RouteKind::Unknown, route: 0 },
        }
    }

    /// The LOG payload: the encoding, then `data` (when not empty) as field 33.
    pub fn encode_with_data(&self, data: &[u8]) -> Vec<u8> {
        let mut o = self.encode();
        if !data.is_empty() {
            o.reserve(data.len() + 8);
            key(&mut o, DATA_FIELD, LEN);
            varint(&mut o, data.len() as u64);
            o.extend_from_slice(data);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_follows_protobuf() {
        let r = Record { set: Some(SetAttr::default()), attr: Some(Attr::default()), ..Default::default() };
        assert_eq!(r.encode(), vec![0x92, 0x02, 0x00, 0x92, 0x03, 0x00]);
        let r = Record { gids: vec![1, 2], guard_ctime_ns: Some(0), ..Default::default() };
        assert_eq!(r.encode(), vec![0x6a, 0x02, 0x01, 0x02, 0xc8, 0x02, 0x00]);
        let r = Record { set: Some(SetAttr { atime_ns: Some(-5), ..Default::default() }), ..Default::default() };
        assert_eq!(r.encode()[..4], [0x92, 0x02, 0x0b, 0x28]);
    }
}
