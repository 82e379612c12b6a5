//! nfs-journal's native data plane.
//!
//! The hot path (accept, RPC framing, XID matching, capture, stamping, record
//! encoding, LOG append with group commit) runs here on its own threads and
//! never takes the GIL per call; Python keeps the control plane and reaches
//! this crate through the `nfsproxy._dataplane` extension module.
//!
//! Modules: `stamp` (the stamp type), `hlc` (the clock), `log` (the LOG
//! writer: frame, segment, recovery, group commit; logstore/FORMAT.md), `py`
//! (the Python classes).

pub mod hlc;
pub mod log;
pub mod record;
mod py;
pub mod stamp;

use pyo3::prelude::*;

/// The extension module `nfsproxy._dataplane`.
#[pymodule]
fn _dataplane(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    py::register(m)
}
