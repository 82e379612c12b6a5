//! ONC-RPC version 2 message headers (RFC 5531), sans-IO.
//!
//! The relay parses only the header of each message; the procedure body is
//! passed on untouched (`body` is where it starts). A header that does not
//! parse is the peer breaking the protocol.

use crate::xdr::{Reader, XdrError};

pub const RPC_VERSION: u32 = 2;
pub const MAX_AUTH_BYTES: usize = 400;
pub const AUTH_NONE: u32 = 0;
pub const AUTH_SYS: u32 = 1;
pub const RPCSEC_GSS: u32 = 6;

const CALL: u32 = 0;
const REPLY: u32 = 1;
const MSG_ACCEPTED: u32 = 0;
const MSG_DENIED: u32 = 1;
const RPC_MISMATCH: u32 = 0;
const AUTH_ERROR: u32 = 1;
const SUCCESS: u32 = 0;
pub const PROG_MISMATCH: u32 = 2;
pub const PROC_UNAVAIL: u32 = 3;
const MAX_ACCEPT_STAT: u32 = 5; // SYSTEM_ERR
const MAX_AUTH_STAT: u32 = 14; // RPCSEC_GSS_CTXPROBLEM

/// The peer sent something that is not a well-formed RPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError(pub String);

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<XdrError> for RpcError {
    fn from(e: XdrError) -> Self {
        RpcError(format!("bad RPC header: {e}"))
    }
}

/// A call header; the arguments start at `body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallHeader {
    pub xid: u32,
    pub rpcvers: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    pub cred_flavor: u32,
    /// Where the credential's body lies in the message.
    pub cred: std::ops::Range<usize>,
    pub body: usize,
}

/// A reply header; the results start at `body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyHeader {
    pub xid: u32,
    /// MSG_ACCEPTED with SUCCESS: `body` holds the procedure's results.
    pub success: bool,
    /// Otherwise the accept_stat, or 0x100 + the reject_stat of a denied call.
    pub failure: u32,
    pub body: usize,
}

/// An RPC message header, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    Call(CallHeader),
    Reply(ReplyHeader),
}

/// Parse the header of one RPC message.
pub fn parse(message: &[u8]) -> Result<Header, RpcError> {
    let mut r = Reader::new(message);
    let xid = r.u32()?;
    match r.u32()? {
        CALL => parse_call(&mut r, xid).map(Header::Call),
        REPLY => parse_reply(&mut r, xid).map(Header::Reply),
        v => Err(RpcError(format!("{v} is not a valid MsgType"))),
    }
}

fn parse_call(r: &mut Reader, xid: u32) -> Result<CallHeader, RpcError> {
    let (rpcvers, prog, vers, proc_) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
    let cred_flavor = r.u32()?;
    let cred_start = r.pos + 4;
    let cred = r.var(MAX_AUTH_BYTES)?;
    let cred_range = cred_start..cred_start + cred.len();
    r.u32()?; // verifier flavor
    r.var(MAX_AUTH_BYTES)?;
    if cred_flavor == AUTH_SYS {
        check_auth_sys(cred)?;
    }
    Ok(CallHeader { xid, rpcvers, prog, vers, proc_, cred_flavor, cred: cred_range, body: r.pos })
}

/// AUTH_SYS credentials (RFC 5531 appendix A) must decode exactly: the
/// journal reads uid, gid and machine name from them.
fn check_auth_sys(cred: &[u8]) -> Result<(), RpcError> {
    AuthSys::parse(cred).map(|_| ())
}

/// AUTH_SYS credentials: who made a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSys<'a> {
    pub machine_name: &'a [u8],
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

impl<'a> AuthSys<'a> {
    fn parse(cred: &'a [u8]) -> Result<Self, RpcError> {
        let mut r = Reader::new(cred);
        r.u32()?; // stamp
        let machine_name = r.var(255)?;
        let (uid, gid) = (r.u32()?, r.u32()?);
        let n = r.u32()? as usize;
        if n > 16 {
            return Err(RpcError(format!("bad RPC header: array of {n} over maximum 16")));
        }
        let gids = (0..n).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
        r.done()?;
        Ok(AuthSys { machine_name, uid, gid, gids })
    }

    /// The AUTH_SYS credentials of a parsed call, if it has them.
    pub fn of(call: &CallHeader, message: &'a [u8]) -> Option<Self> {
        if call.cred_flavor != AUTH_SYS {
            return None;
        }
        AuthSys::parse(&message[call.cred.clone()]).ok()
    }
}

fn parse_reply(r: &mut Reader, xid: u32) -> Result<ReplyHeader, RpcError> {
    match r.u32()? {
        MSG_DENIED => {
            let reject_stat = r.u32()?;
            match reject_stat {
                RPC_MISMATCH => {
                    r.u32()?;
                    r.u32()?;
                }
                AUTH_ERROR => {
                    let stat = r.u32()?;
                    if stat > MAX_AUTH_STAT {
                        return Err(RpcError(format!("{stat} is not a valid AuthStat")));
                    }
                }
                v => return Err(RpcError(format!("{v} is not a valid RejectStat"))),
            }
            Ok(ReplyHeader { xid, success: false, failure: 0x100 + reject_stat, body: r.pos })
        }
        MSG_ACCEPTED => {
            r.u32()?;
            r.var(MAX_AUTH_BYTES)?;
            let stat = r.u32()?;
            if stat > MAX_ACCEPT_STAT {
                return Err(RpcError(format!("{stat} is not a valid AcceptStat")));
            }
            if stat == PROG_MISMATCH {
                r.u32()?;
                r.u32()?;
            }
            Ok(ReplyHeader { xid, success: stat == SUCCESS, failure: stat, body: r.pos })
        }
        v => Err(RpcError(format!("{v} is not a valid ReplyStat"))),
    }
}

/// An accepted reply's header with an AUTH_NONE verifier; results follow.
pub fn accepted(xid: u32, accept_stat: u32, out: &mut Vec<u8>) {
    for v in [xid, REPLY, MSG_ACCEPTED, AUTH_NONE, 0, accept_stat] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// PROG_MISMATCH: the program is here, only versions `low..=high`.
pub fn prog_mismatch(xid: u32, low: u32, high: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    accepted(xid, PROG_MISMATCH, &mut out);
    out.extend_from_slice(&low.to_be_bytes());
    out.extend_from_slice(&high.to_be_bytes());
    out
}

/// MSG_DENIED with RPC_MISMATCH: only RPC version 2 is spoken here.
pub fn rpc_mismatch(xid: u32) -> Vec<u8> {
    [xid, REPLY, MSG_DENIED, RPC_MISMATCH, RPC_VERSION, RPC_VERSION]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::testrand::Rng;

    /// A call header with AUTH_SYS credentials, as clients send it.
    pub fn call(xid: u32, prog: u32, vers: u32, proc_: u32, body: &[u8]) -> Vec<u8> {
        let mut cred = Vec::new();
        for v in [7u32, 4] {
            cred.extend_from_slice(&v.to_be_bytes());
        }
        cred.extend_from_slice(b"host");
        for v in [1000u32, 1000, 1, 1000] {
            cred.extend_from_slice(&v.to_be_bytes());
        }
        let mut out = Vec::new();
        for v in [xid, CALL, RPC_VERSION, prog, vers, proc_, AUTH_SYS, cred.len() as u32] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&cred);
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_call_header_parses_and_its_body_follows() {
        let m = call(0x1234, 100003, 3, 7, b"ARGS");
        match parse(&m).unwrap() {
            Header::Call(c) => {
                assert_eq!((c.xid, c.prog, c.vers, c.proc_, c.cred_flavor), (0x1234, 100003, 3, 7, AUTH_SYS));
                assert_eq!(&m[c.body..], b"ARGS");
            }
            h => panic!("{h:?}"),
        }
    }

    #[test]
    fn a_reply_header_parses() {
        let mut m = Vec::new();
        accepted(9, 0, &mut m);
        m.extend_from_slice(b"RES!");
        assert_eq!(parse(&m).unwrap(), Header::Reply(ReplyHeader { xid: 9, success: true, failure: 0, body: 24 }));
        assert_eq!(
            parse(&prog_mismatch(9, 3, 3)).unwrap(),
            Header::Reply(ReplyHeader { xid: 9, success: false, failure: 2, body: 32 })
        );
        assert_eq!(parse(&rpc_mismatch(9)).unwrap(), Header::Reply(ReplyHeader { xid: 9, success: false, failure: 0x100, body: 24 }));
    }

    #[test]
    fn bad_auth_sys_is_refused() {
        let mut m = call(1, 100003, 3, 0, b"");
        m[39] = 200; // machine name length past the credential
        assert!(parse(&m).is_err());
    }

    #[test]
    fn every_truncation_and_random_corruption_is_an_error_or_a_header_never_a_panic() {
        let m = call(1, 100003, 3, 7, b"xyz0");
        for n in 0..m.len() {
            let _ = parse(&m[..n]);
        }
        let mut rng = Rng::new(3);
        for _ in 0..5000 {
            let mut c = m.clone();
            for _ in 0..rng.below(4) + 1 {
                let i = rng.below(c.len() as u64) as usize;
                c[i] = rng.next() as u8;
            }
            if let Ok(Header::Call(h)) = parse(&c) {
                assert!(h.body <= c.len());
            }
            let _ = parse(&rng.some_bytes(80));
        }
    }
}
