//! NFSv3 (RFC 1813) and NFSACL v3 types, decoded as far as capture needs, sans-IO.
//!
//! Decoding is exact, as the Python codec's: a value out of its enum, a
//! length past the message, or trailing bytes are errors, and an error
//! closes the connection of whoever sent it.

use crate::record::{AclEntry, Attr, SetAttr};
use crate::xdr::{Reader, Result, XdrError};

pub const NFS3_FHSIZE: usize = 64;
pub const NFS3_OK: u32 = 0;

pub mod proc3 {
    pub const SETATTR: u32 = 2;
    pub const LOOKUP: u32 = 3;
    pub const WRITE: u32 = 7;
    pub const CREATE: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const SYMLINK: u32 = 10;
    pub const MKNOD: u32 = 11;
    pub const REMOVE: u32 = 12;
    pub const RMDIR: u32 = 13;
    pub const RENAME: u32 = 14;
    pub const LINK: u32 = 15;
    pub const READDIRPLUS: u32 = 17;
    pub const FSINFO: u32 = 19;
    pub const COMMIT: u32 = 21;
}

pub const NF3BLK: u32 = 3;
pub const NF3CHR: u32 = 4;
pub const NF3SOCK: u32 = 6;
pub const NF3FIFO: u32 = 7;
const SET_TO_SERVER_TIME: u32 = 1;
const SET_TO_CLIENT_TIME: u32 = 2;
pub const EXCLUSIVE: u32 = 2;
const NFS_ACL_MAX_ENTRIES: usize = 1024;

const NFSSTAT3: [u32; 29] = [
    0, 1, 2, 5, 6, 13, 17, 18, 19, 20, 21, 22, 27, 28, 30, 31, 63, 66, 69, 70, 71, 10001, 10002, 10003,
    10004, 10005, 10006, 10007, 10008,
];

fn enum_in(v: u32, low: u32, high: u32, what: &str) -> Result<u32> {
    if (low..=high).contains(&v) {
        Ok(v)
    } else {
        Err(XdrError(format!("{} is not a valid {what}", v as i32)))
    }
}

/// Decoders for the NFSv3 types capture reads.
pub trait Nfs3Reader<'a> {
    fn fh(&mut self) -> Result<&'a [u8]>;
    fn name(&mut self) -> Result<&'a [u8]>;
    fn nfstime_ns(&mut self) -> Result<i64>;
    fn ftype(&mut self) -> Result<u32>;
    fn nfsstat(&mut self) -> Result<u32>;
    fn fattr(&mut self) -> Result<Attr>;
    fn post_op_attr(&mut self) -> Result<Option<Attr>>;
    fn post_op_fh(&mut self) -> Result<Option<&'a [u8]>>;
    /// wcc_data: the after attributes (the before ones are checked and dropped).
    fn wcc_after(&mut self) -> Result<Option<Attr>>;
    fn sattr(&mut self) -> Result<SetAttr>;
    fn acl(&mut self) -> Result<Vec<AclEntry>>;
}

impl<'a> Nfs3Reader<'a> for Reader<'a> {
    fn fh(&mut self) -> Result<&'a [u8]> {
        self.var(NFS3_FHSIZE)
    }

    fn name(&mut self) -> Result<&'a [u8]> {
        self.var(u32::MAX as usize)
    }

    fn nfstime_ns(&mut self) -> Result<i64> {
        let (s, ns) = (self.u32()? as i64, self.u32()? as i64);
        Ok(s * 1_000_000_000 + ns)
    }

    fn ftype(&mut self) -> Result<u32> {
        enum_in(self.u32()?, 1, NF3FIFO, "Ftype3")
    }

    fn nfsstat(&mut self) -> Result<u32> {
        let v = self.u32()?;
        if NFSSTAT3.contains(&v) {
            Ok(v)
        } else {
            Err(XdrError(format!("{} is not a valid Nfsstat3", v as i32)))
        }
    }

    fn fattr(&mut self) -> Result<Attr> {
        Ok(Attr {
            r#type: self.ftype()?,
            mode: self.u32()?,
            nlink: self.u32()?,
            uid: self.u32()?,
            gid: self.u32()?,
            size: self.u64()?,
            used: self.u64()?,
            rdev_major: self.u32()?,
            rdev_minor: self.u32()?,
            fsid: self.u64()?,
            fileid: self.u64()?,
            atime_ns: self.nfstime_ns()?,
            mtime_ns: self.nfstime_ns()?,
            ctime_ns: self.nfstime_ns()?,
        })
    }

    fn post_op_attr(&mut self) -> Result<Option<Attr>> {
        if self.boolean()? {
            self.fattr().map(Some)
        } else {
            Ok(None)
        }
    }

    fn post_op_fh(&mut self) -> Result<Option<&'a [u8]>> {
        if self.boolean()? {
            self.fh().map(Some)
        } else {
            Ok(None)
        }
    }

    fn wcc_after(&mut self) -> Result<Option<Attr>> {
        if self.boolean()? {
            self.skip(24)?; // wcc_attr: size, mtime, ctime
        }
        self.post_op_attr()
    }

    fn sattr(&mut self) -> Result<SetAttr> {
        let mut s = SetAttr::default();
        if self.boolean()? {
            s.mode = Some(self.u32()?);
        }
        if self.boolean()? {
            s.uid = Some(self.u32()?);
        }
        if self.boolean()? {
            s.gid = Some(self.u32()?);
        }
        if self.boolean()? {
            s.size = Some(self.u64()?);
        }
        (s.atime_ns, s.atime_server) = set_time(self)?;
        (s.mtime_ns, s.mtime_server) = set_time(self)?;
        Ok(s)
    }

    fn acl(&mut self) -> Result<Vec<AclEntry>> {
        self.u32()?; // the count, given twice
        let n = self.u32()? as usize;
        if n > NFS_ACL_MAX_ENTRIES {
            return Err(XdrError(format!("array of {n} over maximum {NFS_ACL_MAX_ENTRIES}")));
        }
        if n * 4 > self.remaining() {
            return Err(XdrError(format!("array of {n} cannot fit in {} bytes", self.remaining())));
        }
        (0..n).map(|_| Ok(AclEntry { r#type: self.u32()?, id: self.u32()?, perm: self.u32()? })).collect()
    }
}

fn set_time(r: &mut Reader) -> Result<(Option<i64>, bool)> {
    match enum_in(r.u32()?, 0, SET_TO_CLIENT_TIME, "TimeHow")? {
        SET_TO_CLIENT_TIME => Ok((Some(r.nfstime_ns()?), false)),
        SET_TO_SERVER_TIME => Ok((None, true)),
        _ => Ok((None, false)),
    }
}

/// stable_how (0..=2) and createmode3 (0..=2) share their range.
pub fn stable_how(r: &mut Reader) -> Result<u32> {
    enum_in(r.u32()?, 0, 2, "StableHow")
}

pub fn create_mode(r: &mut Reader) -> Result<u32> {
    enum_in(r.u32()?, 0, EXCLUSIVE, "CreateMode")
}
