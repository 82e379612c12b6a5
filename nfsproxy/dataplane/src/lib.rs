//! nfs-journal's native data plane.
//!
//! The hot path (accept, RPC framing, XID matching, capture, stamping, record
//! encoding, LOG append with group commit) runs here on its own threads and
//! never takes the GIL per call; Python keeps the control plane and reaches
//! this crate through the `nfsproxy._dataplane` extension module.
//!
//! One concept per module: `framing` (record marking), `xdr`, `rpc` (message
//! headers), `routing` (where a call goes, portmapper answers), `limits`
//! (the FSINFO clamp), `xid` (reply matching), `stats`; the tokio shells
//! `outbox` (coalesced writes), `session` (one client), `link` (one NAS
//! connection) and `server` (listener and runtime).

use std::sync::Mutex;

use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

pub mod framing;
pub mod limits;
pub mod link;
pub mod outbox;
pub mod routing;
pub mod rpc;
pub mod server;
pub mod session;
pub mod stats;
pub mod xdr;
pub mod xid;

#[cfg(test)]
mod testrand;

/// The native relay: one port serving NFSv3, MOUNT and portmapper answers in
/// front of a NAS, on its own threads.
#[pyclass(module = "nfsproxy._dataplane", frozen)]
struct Relay {
    server: Mutex<Option<server::Server>>,
    port: u16,
    stats: std::sync::Arc<stats::Stats>,
}

#[pymethods]
impl Relay {
    /// Start relaying `listen` (HOST:PORT, port 0 picks one) to the NAS at
    /// `backend_host` (NFS on `nfs_port`, MOUNT on `mount_port`).
    #[new]
    #[pyo3(signature = (backend_host, nfs_port, mount_port, listen="127.0.0.1:0", threads=1, max_payload_bytes=4 << 20))]
    fn new(
        py: Python<'_>,
        backend_host: String,
        nfs_port: u16,
        mount_port: u16,
        listen: &str,
        threads: usize,
        max_payload_bytes: u32,
    ) -> PyResult<Self> {
        let config = server::Config {
            listen: listen.to_string(),
            backend: server::Backend { host: backend_host, nfs_port, mount_port },
            threads,
            max_payload_bytes,
        };
        let server = py
            .detach(|| server::Server::start(config))
            .map_err(|e| PyOSError::new_err(format!("cannot listen on {listen}: {e}")))?;
        Ok(Relay { port: server.port, stats: server.stats.clone(), server: Mutex::new(Some(server)) })
    }

    /// The port clients connect to.
    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// Every counter of the relay by name (read at scrape time).
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (name, value) in self.stats.snapshot() {
            out.set_item(name, value)?;
        }
        Ok(out)
    }

    /// Stop accepting and close every connection; idempotent.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let server = self.server.lock().map_err(|_| PyRuntimeError::new_err("relay lock poisoned"))?.take();
        if let Some(mut server) = server {
            py.detach(move || server.stop());
        }
        Ok(())
    }
}

/// The extension module `nfsproxy._dataplane`.
#[pymodule]
fn _dataplane(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Relay>()?;
    Ok(())
}
