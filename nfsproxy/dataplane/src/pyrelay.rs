//! The relay's Python classes: `Relay` (the native relay, started and
//! stopped from Python) and `Capture` (sans-IO capture, for cross-checks).

use crate::poison::LockAnyway;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::journal::{Durability, Journal, QuotaPolicy};
use crate::py::{NativeCommitter, NativeHlc};
use crate::{capture, rpc, server, stats};

/// A gap the relay found: (token, stamp, cause, reason), as Python's Journal marks it.
type GapRow<'py> = (u64, Bound<'py, PyBytes>, String, String);
/// Calls begun through the binding and not yet completed, by ticket.
type PendingCalls = std::collections::HashMap<u64, (capture::Pending, Vec<u8>)>;

/// The native relay: one port serving NFSv3, MOUNT and portmapper answers in
/// front of a NAS, on its own threads.
#[pyclass(module = "nfsproxy._dataplane", frozen)]
struct Relay {
    server: Mutex<Option<server::Server>>,
    port: u16,
    stats: Arc<stats::Stats>,
    journal: Option<Arc<Journal>>,
}

#[pymethods]
impl Relay {
    /// Start relaying `listen` (HOST:PORT, port 0 picks one) to the NAS at
    /// `backend_host` (NFS on `nfs_port`, MOUNT on `mount_port`). With a
    /// `committer` and a `clock` (the control plane's `NativeCommitter` and
    /// `HLC`), mutations are journaled to that LOG with `durability`
    /// ("async", "sync" or "strict"; the committer itself should run in
    /// "async" mode, the relay says per record which ones are urgent).
    #[new]
    #[pyo3(signature = (backend_host, nfs_port, mount_port, listen="127.0.0.1:0", threads=1,
                        max_payload_bytes=4 << 20, committer=None, clock=None, durability="sync",
                        drain_timeout_s=30.0, quota_policy="block"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        backend_host: String,
        nfs_port: u16,
        mount_port: u16,
        listen: &str,
        threads: usize,
        max_payload_bytes: u32,
        committer: Option<PyRef<'_, NativeCommitter>>,
        clock: Option<PyRef<'_, NativeHlc>>,
        durability: &str,
        drain_timeout_s: f64,
        quota_policy: &str,
    ) -> PyResult<Self> {
        let quota_policy = match quota_policy {
            "block" => QuotaPolicy::Block,
            "passthrough" => QuotaPolicy::Passthrough,
            other => return Err(PyValueError::new_err(format!("quota_policy must be block or passthrough, got {other:?}"))),
        };
        let durability = Durability::parse(durability)
            .ok_or_else(|| PyValueError::new_err(format!("durability must be async, sync or strict, got {durability:?}")))?;
        let journal = match (committer, clock) {
            (Some(c), Some(h)) => {
                let mut journal = Journal::new(c.shared(), h.shared(), durability, incarnation());
                journal.quota_policy = quota_policy;
                Some(Arc::new(journal))
            }
            (None, None) => None,
            _ => return Err(PyValueError::new_err("journaling needs both a committer and a clock")),
        };
        let config = server::Config {
            listen: listen.to_string(),
            backend: server::Backend { host: backend_host, nfs_port, mount_port },
            threads,
            max_payload_bytes,
            journal: journal.clone(),
            drain_timeout: Duration::from_secs_f64(drain_timeout_s.max(0.0)),
        };
        let server = py
            .detach(|| server::Server::start(config))
            .map_err(|e| match e.raw_os_error() {
                Some(errno) => PyOSError::new_err((errno, format!("cannot listen on {listen}: {e}"))),
                None => PyOSError::new_err(format!("cannot listen on {listen}: {e}")),
            })?;
        Ok(Relay { port: server.port, stats: server.stats.clone(), server: Mutex::new(Some(server)), journal })
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
        if let Some(j) = &self.journal {
            out.set_item("records_total", j.records_total.load(Ordering::Relaxed))?;
            out.set_item("intents_total", j.intents_total.load(Ordering::Relaxed))?;
            j.intent_floor(); // lets go of the intents the LOG's syncs settled
            out.set_item("intents_kept", j.intents.kept())?;
            out.set_item("failed_mutations_total", j.failed_mutations_total.load(Ordering::Relaxed))?;
            out.set_item("gaps_total", j.gaps_total.load(Ordering::Relaxed))?;
            out.set_item("dropped_total", j.dropped_total.load(Ordering::Relaxed))?;
            out.set_item("blocked_now", j.blocked_now.load(Ordering::Relaxed))?;
            out.set_item("passthrough_active", j.passthrough_active.load(Ordering::Relaxed) as u64)?;
            out.set_item("conflicts_held_now", j.conflicts.lock_anyway().held_now)?;
            out.set_item("bindings_known", j.capture.bindings.lock_anyway().len())?;
        }
        Ok(out)
    }

    /// Per (program, procedure): (program, procedure, calls, call bytes, reply
    /// bytes, client latency bucket counts, their sum in seconds, backend
    /// latency bucket counts, their sum); buckets as nfsproxy.stats's.
    #[allow(clippy::type_complexity)]
    fn proc_stats(&self) -> Vec<(u32, u32, u64, u64, u64, Vec<u64>, f64, Vec<u64>, f64)> {
        self.stats.by_proc.snapshot().into_iter()
            .map(|((prog, proc_), s)| (prog, proc_, s.calls, s.call_bytes, s.reply_bytes,
                s.client_latency.counts.to_vec(), s.client_latency.sum_s,
                s.backend_latency.counts.to_vec(), s.backend_latency.sum_s))
            .collect()
    }

    /// The lowest LOG seq a trim must keep: a write-ahead intent whose
    /// record is not durable yet (`intent`); None when there is none.
    fn intent_floor(&self) -> PyResult<Option<u64>> {
        Ok(self.journal()?.intent_floor())
    }

    /// How many stamps are taken and not yet in the LOG.
    fn stamps_in_flight(&self) -> usize {
        self.journal.as_ref().map_or(0, |j| j.inflight.len())
    }

    /// A stamp (16 bytes) below every stamp not yet in the LOG: heartbeats may carry it.
    fn stable_stamp<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let j = self.journal()?;
        let now = j.hlc.now().map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(PyBytes::new(py, &j.inflight.stable(now).to_bytes()))
    }

    /// Block (GIL released) until every call stamped below `stamp` (but the
    /// one held under `own`) has its record in the LOG; False after `timeout_s`.
    #[pyo3(signature = (stamp, own=None, timeout_s=3600.0))]
    fn wait_settled(&self, py: Python<'_>, stamp: &[u8], own: Option<u64>, timeout_s: f64) -> PyResult<bool> {
        let j = self.journal()?.clone();
        let below: [u8; 16] = stamp.try_into().map_err(|_| PyValueError::new_err("a stamp is 16 bytes"))?;
        Ok(py.detach(|| j.inflight.wait_settled(below, own, Duration::from_secs_f64(timeout_s.max(0.0)))))
    }

    /// Hold `stamp` in flight under `key` (the control plane's own keys: a
    /// baseline's read, a gap not yet written); `release_stamp` lets it go.
    fn hold_stamp(&self, key: u64, stamp: &[u8]) -> PyResult<()> {
        let stamp: [u8; 16] = stamp.try_into().map_err(|_| PyValueError::new_err("a stamp is 16 bytes"))?;
        self.journal()?.inflight.hold(key | PYTHON_KEYS, stamp);
        Ok(())
    }

    fn release_stamp(&self, key: u64) -> PyResult<()> {
        self.journal()?.inflight.release(key | PYTHON_KEYS);
        Ok(())
    }

    /// Gaps the relay found (mutations whose reply never came), as
    /// `(token, stamp, cause, reason)`; each stamp stays in flight until
    /// `release_gap(token)`, once the control plane has marked the gap.
    fn take_gaps<'py>(&self, py: Python<'py>) -> PyResult<Vec<GapRow<'py>>> {
        Ok(self.journal()?.take_gaps().into_iter()
            .map(|g| (g.token, PyBytes::new(py, &g.stamp), g.cause, g.reason))
            .collect())
    }

    /// Start or stop noting where successful RENAMEs and LINKs put names (a baseline runs).
    fn watch_moves(&self, on: bool) -> PyResult<()> {
        self.journal()?.watching_moves.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// `(to_dir_fh, to_name)` of the RENAMEs and LINKs journaled since the last call.
    fn take_moves<'py>(&self, py: Python<'py>) -> PyResult<Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>> {
        Ok(self.journal()?.take_moves().into_iter()
            .map(|(d, n)| (PyBytes::new(py, &d), PyBytes::new(py, &n)))
            .collect())
    }

    fn release_gap(&self, token: u64) -> PyResult<()> {
        self.journal()?.inflight.release(token);
        Ok(())
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

impl Relay {
    fn journal(&self) -> PyResult<&Arc<Journal>> {
        self.journal.as_ref().ok_or_else(|| PyRuntimeError::new_err("this relay journals nothing"))
    }
}

/// The control plane's keys for held stamps never meet the relay's tokens.
const PYTHON_KEYS: u64 = 1 << 63;

/// This run's incarnation: a restart that may have lost unsynced records
/// gives clients other write verifiers.
fn incarnation() -> [u8; 8] {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    seed.to_be_bytes()
}

/// Capture, sans-IO, for checking it against the Python relay's: `begin`
/// takes a whole call message and gives a token (None: not watched),
/// `complete` takes the token and the whole reply message and gives the LOG
/// payloads of the records to journal. Bad arguments raise ValueError, as
/// they close the sender's connection in the relay.
#[pyclass(module = "nfsproxy._dataplane", frozen)]
struct Capture {
    capture: capture::Capture,
    pending: Mutex<(u64, PendingCalls)>,
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
        let mut guard = self.pending.lock_anyway();
        guard.0 += 1;
        let token = guard.0;
        guard.1.insert(token, (pending, message.to_vec()));
        Ok(Some(token))
    }

    fn complete(&self, token: u64, reply: &[u8], bind_stamp: &[u8]) -> PyResult<Vec<Vec<u8>>> {
        let (pending, call) = self.pending.lock_anyway().1.remove(&token)
            .ok_or_else(|| PyValueError::new_err("unknown token"))?;
        let header = match rpc::parse(reply) {
            Ok(rpc::Header::Reply(header)) => header,
            Ok(_) => return Err(PyValueError::new_err("not a reply")),
            Err(e) => return Err(PyValueError::new_err(e.0)),
        };
        let records = self.capture.complete(pending, &header, reply, &mut || bind_stamp.to_vec())
            .map_err(|e| PyValueError::new_err(e.0))?;
        Ok(records.into_iter().map(|(r, data)| capture::payload(&r, data.map(|d| &call[d]).unwrap_or(&[]))).collect())
    }
}

/// Add the relay's classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Relay>()?;
    m.add_class::<Capture>()?;
    Ok(())
}
