//! The relay's Python classes: `Relay` (the native relay, started and
//! stopped from Python) and `Capture` (sans-IO capture, for cross-checks).

use std::sync::Mutex;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::{capture, rpc, server, stats};

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

/// Capture, sans-IO, for checking it against the Python relay's: `begin`
/// takes a whole call message and gives a token (None: not watched),
/// `complete` takes the token and the whole reply message and gives the LOG
/// payloads of the records to journal. Bad arguments raise ValueError, as
/// they close the sender's connection in the relay.
#[pyclass(module = "nfsproxy._dataplane", frozen)]
struct Capture {
    capture: capture::Capture,
    pending: Mutex<(u64, std::collections::HashMap<u64, (capture::Pending, Vec<u8>)>)>,
}

#[pymethods]
impl Capture {
    #[new]
    #[pyo3(signature = (capacity=1 << 20))]
    fn new(capacity: usize) -> Self {
        Capture { capture: capture::Capture::new(capacity), pending: Mutex::new((0, Default::default())) }
    }

    fn begin(&self, message: &[u8], client: &str, stamp: &[u8]) -> PyResult<Option<u64>> {
        let call = match rpc::parse(message) {
            Ok(rpc::Header::Call(call)) => call,
            Ok(_) => return Err(PyValueError::new_err("not a call")),
            Err(e) => return Err(PyValueError::new_err(e.0)),
        };
        let Some(mut pending) = self.capture.begin(&call, message, client).map_err(|e| PyValueError::new_err(e.0))? else {
            return Ok(None);
        };
        if let Some(record) = pending.record_mut() {
            record.stamp = stamp.to_vec();
        }
        let mut guard = self.pending.lock().unwrap();
        guard.0 += 1;
        let token = guard.0;
        guard.1.insert(token, (pending, message.to_vec()));
        Ok(Some(token))
    }

    fn complete(&self, token: u64, reply: &[u8], bind_stamp: &[u8]) -> PyResult<Vec<Vec<u8>>> {
        let (pending, call) = self.pending.lock().unwrap().1.remove(&token)
            .ok_or_else(|| PyValueError::new_err("unknown token"))?;
        let header = match rpc::parse(reply) {
            Ok(rpc::Header::Reply(header)) => header,
            Ok(_) => return Err(PyValueError::new_err("not a reply")),
            Err(e) => return Err(PyValueError::new_err(e.0)),
        };
        let records = self.capture.complete(pending, &header, reply, &mut || bind_stamp.to_vec())
            .map_err(|e| PyValueError::new_err(e.0))?;
        Ok(records.into_iter().map(|(r, data)| r.encode_with_data(data.map(|d| &call[d]).unwrap_or(&[]))).collect())
    }
}

/// Add the relay's classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Relay>()?;
    m.add_class::<Capture>()?;
    Ok(())
}
