//! nfs-journal's native data plane.
//!
//! The hot path (accept, RPC framing, XID matching, capture, stamping, record
//! encoding, LOG append with group commit) runs here on its own threads and
//! never takes the GIL per call; Python keeps the control plane and reaches
//! this crate through the `nfsproxy._dataplane` extension module.
//!
//! Modules: `stamp` (the stamp type), `hlc` (the clock), `log` (the LOG
//! writer: frame, segment, recovery, group commit, a shipper's walk;
//! logstore/FORMAT.md), `record` (the journal's Record), `shipped` (a batch of
//! shipped frames as a shard indexes it), `py` (the Python classes).
//!
//! The relay, one concept per module: `framing` (record marking), `xdr`,
//! `rpc` (message headers), `routing` (where a call goes, portmapper
//! answers), `limits` (the FSINFO clamp), `xid` (reply matching), `nfs3`,
//! and `capture` (calls and replies into records), `conflict`
//! (conflict holds), `stats`; the tokio shells `outbox` (coalesced writes),
//! `session` (one client), `link` (one NAS connection) and `server`
//! (listener and runtime); `pyrelay` (its Python classes).

pub mod hlc;
pub mod log;
pub mod record;
pub mod shipped;
mod py;
pub mod stamp;

pub mod capture;
pub mod conflict;
pub mod framing;
pub mod inflight;
pub mod intent;
pub mod journal;
pub mod limits;
pub mod link;
pub mod lru;
pub mod nfs3;
pub mod outbox;
pub mod poison;
mod pyfanout;
mod pyrelay;
pub mod routing;
pub mod rpc;
pub mod server;
pub mod session;
pub mod stats;
pub mod xdr;
pub mod xid;

#[cfg(test)]
mod testrand;

use pyo3::prelude::*;

/// The extension module `nfsproxy._dataplane`.
#[pymodule]
fn _dataplane(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    py::register(m)?;
    pyfanout::register(m)?;
    pyrelay::register(m)
}
