//! The Python face of the native core: `nfsproxy._dataplane.NativeLog`,
//! `NativeCommitter` and `HLC`. Python wrappers (nfsproxy/native.py,
//! nfsproxy/hlc.py) give them the interfaces of logstore's `Log`,
//! `GroupCommitter` and `HLC`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::buffer::PyUntypedBuffer;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::hlc::{Hlc, HlcError, HlcOptions};
use crate::log::segment::BadFrame;
use crate::log::select::{select, Stop, Want};
use crate::log::{Durability, GroupCommitter, Log, LogError, LogOptions, RouteKind, Routing};
use crate::stamp::Stamp;

create_exception!(_dataplane, NativeLogError, PyException, "A native LOG failure.");
create_exception!(_dataplane, NativeLogClosedError, NativeLogError, "The LOG is closed or failed.");
create_exception!(
    _dataplane,
    NativeLogCorruptError,
    NativeLogError,
    "args: (path, offset, reason, discontinuity)"
);
create_exception!(
    _dataplane,
    NativeUntrustworthyStamp,
    PyException,
    "args: (remote (wall_ns, logical, node_id), physical_ns, offset_ns, max_offset_ns)"
);

fn log_err(e: LogError) -> PyErr {
    match e {
        LogError::Io { context, source } => match source.raw_os_error() {
            Some(errno) => PyOSError::new_err((errno, format!("{context}: {source}"))),
            None => PyOSError::new_err(format!("{context}: {source}")),
        },
        LogError::Corrupt { path, offset, reason, discontinuity } => {
            NativeLogCorruptError::new_err((path.to_string_lossy().into_owned(), offset, reason, discontinuity))
        }
        LogError::Closed(why) => NativeLogClosedError::new_err(why),
        LogError::Invalid(why) => PyValueError::new_err(why),
        LogError::Busy(why) => NativeLogError::new_err(why),
    }
}

fn hlc_err(e: HlcError) -> PyErr {
    match e {
        HlcError::Untrustworthy { remote, physical_ns, offset_ns, max_offset_ns } => NativeUntrustworthyStamp::new_err((
            (remote.wall_ns, remote.logical, remote.node_id),
            physical_ns,
            offset_ns,
            max_offset_ns,
        )),
        HlcError::Persist { ref source, .. } => {
            let msg = e.to_string();
            match source.raw_os_error() {
                Some(errno) => PyOSError::new_err((errno, msg)),
                None => PyOSError::new_err(msg),
            }
        }
        HlcError::CorruptBound { .. } | HlcError::Invalid(_) => PyValueError::new_err(e.to_string()),
        HlcError::Clock(why) => PyException::new_err(why),
    }
}

/// Buffers of a payload given as one bytes-like object or a list/tuple of them.
fn payload_buffers(payload: &Bound<'_, PyAny>) -> PyResult<Vec<PyUntypedBuffer>> {
    let one = |obj: &Bound<'_, PyAny>| -> PyResult<PyUntypedBuffer> {
        let buf = PyUntypedBuffer::get(obj)?;
        if !buf.is_c_contiguous() {
            return Err(PyValueError::new_err("payload buffers must be contiguous"));
        }
        Ok(buf)
    };
    if let Ok(list) = payload.cast::<PyList>() {
        return list.iter().map(|o| one(&o)).collect();
    }
    if let Ok(tuple) = payload.cast::<PyTuple>() {
        return tuple.iter().map(|o| one(&o)).collect();
    }
    Ok(vec![one(payload)?])
}

fn slices(buffers: &[PyUntypedBuffer]) -> Vec<&[u8]> {
    buffers
        .iter()
        // SAFETY: the buffer export keeps the memory alive and unmoved while
        // `buffers` lives; we only read it.
        .map(|b| unsafe { std::slice::from_raw_parts(b.buf_ptr() as *const u8, b.len_bytes()) })
        .collect()
}

fn routing(stamp: &[u8], route_kind: u8, route: u32) -> PyResult<Routing> {
    let stamp: [u8; 16] = match stamp.len() {
        0 => [0; 16],
        16 => stamp.try_into().unwrap(),
        n => return Err(PyValueError::new_err(format!("a frame's stamp is 16 bytes, got {n}"))),
    };
    let kind = RouteKind::from_u8(route_kind).ok_or_else(|| PyValueError::new_err(format!("unknown route_kind {route_kind}")))?;
    Ok(Routing { stamp, kind, route })
}

/// Payloads this large are written with the GIL released.
const DETACH_BYTES: usize = 64 << 10;

/// The native LOG writer (`crate::log::Log`).
#[pyclass(module = "nfsproxy._dataplane", frozen)]
pub struct NativeLog {
    log: Arc<Log>,
}

impl NativeLog {
    /// The LOG itself, for native code (the relay) that appends to it.
    pub fn shared(&self) -> Arc<Log> {
        self.log.clone()
    }
}

#[pymethods]
impl NativeLog {
    #[new]
    #[pyo3(signature = (directory, *, segment_bytes=crate::log::DEFAULT_SEGMENT_BYTES, max_record_bytes=crate::log::DEFAULT_MAX_RECORD_BYTES, mark_interval_s=1.0, spare_segments=crate::log::DEFAULT_SPARE_SEGMENTS))]
    fn new(
        py: Python<'_>,
        directory: PathBuf,
        segment_bytes: u64,
        max_record_bytes: u32,
        mark_interval_s: f64,
        spare_segments: usize,
    ) -> PyResult<Self> {
        if mark_interval_s < 0.0 || !mark_interval_s.is_finite() {
            return Err(PyValueError::new_err(format!("mark_interval_s must be >= 0, got {mark_interval_s}")));
        }
        let mark_interval = Duration::from_secs_f64(mark_interval_s);
        let opts = LogOptions { segment_bytes, max_record_bytes, mark_interval, spare_segments };
        let log = py.detach(|| Log::open(&directory, opts)).map_err(log_err)?;
        Ok(NativeLog { log: Arc::new(log) })
    }

    /// Append one record; returns its seq.
    #[pyo3(signature = (payload, stamp=&[][..], route_kind=0, route=0))]
    fn append(&self, py: Python<'_>, payload: &Bound<'_, PyAny>, stamp: &[u8], route_kind: u8, route: u32) -> PyResult<u64> {
        let routing = routing(stamp, route_kind, route)?;
        let buffers = payload_buffers(payload)?;
        let parts = slices(&buffers);
        let nbytes: usize = parts.iter().map(|p| p.len()).sum();
        if nbytes >= DETACH_BYTES {
            py.detach(|| self.log.append(&parts, &routing)).map_err(log_err)
        } else {
            self.log.append(&parts, &routing).map_err(log_err)
        }
    }

    fn sync(&self, py: Python<'_>) -> PyResult<u64> {
        py.detach(|| self.log.sync()).map_err(log_err)
    }

    fn trim(&self, py: Python<'_>, below_seq: u64) -> PyResult<usize> {
        py.detach(|| self.log.trim(below_seq)).map_err(log_err)
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.log.close()).map_err(log_err)
    }

    /// Append one marker per noted torn tail: `markers` is a list of
    /// `(payload, stamp, route_kind, route)`, one per `torn_tails` entry.
    fn mark_torn_tails(&self, py: Python<'_>, markers: Vec<(Vec<u8>, Vec<u8>, u8, u32)>) -> PyResult<()> {
        if markers.len() != self.log.torn_tails().len() {
            return Err(PyValueError::new_err("one marker per torn tail"));
        }
        let markers = markers
            .into_iter()
            .map(|(p, s, k, r)| Ok((p, routing(&s, k, r)?)))
            .collect::<PyResult<Vec<_>>>()?;
        py.detach(|| {
            let it = std::sync::Mutex::new(markers.into_iter());
            self.log.mark_torn_tails(|_| it.lock().unwrap().next().unwrap())
        })
        .map_err(log_err)
    }

    /// `[(seq, stamp, payload)]` of every write-ahead intent from `from_seq`
    /// on that no record followed, in LOG order (an unclean stop's orphans;
    /// `log::orphans`).
    #[allow(clippy::type_complexity)]
    fn orphan_intents<'py>(&self, py: Python<'py>, from_seq: u64) -> PyResult<Vec<(u64, Bound<'py, PyBytes>, Bound<'py, PyBytes>)>> {
        let found = py.detach(|| crate::log::orphans::orphans(&self.log, from_seq)).map_err(log_err)?;
        Ok(found.into_iter().map(|o| (o.seq, PyBytes::new(py, &o.stamp), PyBytes::new(py, &o.payload))).collect())
    }

    /// `[(path, first_seq, last_seq, size_bytes, active, version)]`, oldest first.
    fn segments(&self, py: Python<'_>) -> Vec<(String, u64, u64, u64, bool, u8)> {
        // GIL released: the state lock is held across an append's pwritev.
        py.detach(|| self.log.segments())
            .into_iter()
            .map(|s| (s.path.to_string_lossy().into_owned(), s.first_seq, s.last_seq, s.size_bytes, s.active, s.version))
            .collect()
    }

    /// `(path, base_seq, version, offset, start_seq)` from which a reader
    /// reaches `seq`, or None if the LOG does not hold it.
    fn locate(&self, py: Python<'_>, seq: u64) -> Option<(String, u64, u8, u64, u64)> {
        py.detach(|| self.log.locate(seq))
            .map(|(s, offset, start)| (s.path.to_string_lossy().into_owned(), s.first_seq, s.version, offset, start))
    }

    /// `(readable end, sealed)` of the segment starting at `base_seq`; None once trimmed.
    fn extent(&self, py: Python<'_>, base_seq: u64) -> Option<(u64, bool)> {
        py.detach(|| self.log.extent(base_seq))
    }

    /// `[(segment path, offset, truncated_bytes, after_seq)]` noted at open.
    #[getter]
    fn torn_tails(&self) -> Vec<(String, u64, u64, u64)> {
        self.log
            .torn_tails()
            .iter()
            .map(|t| (t.segment.to_string_lossy().into_owned(), t.offset, t.truncated_bytes, t.after_seq))
            .collect()
    }

    #[getter]
    fn first_seq(&self) -> u64 {
        self.log.first_seq()
    }
    #[getter]
    fn last_seq(&self) -> u64 {
        self.log.last_seq()
    }
    #[getter]
    fn synced_seq(&self) -> u64 {
        self.log.synced_seq()
    }
    #[getter]
    fn size_bytes(&self) -> u64 {
        self.log.size_bytes()
    }
    #[getter]
    fn recovered_truncated_bytes(&self) -> u64 {
        self.log.recovered_truncated_bytes()
    }
    #[getter]
    fn spare_segments(&self) -> u64 {
        self.log.spare_segments()
    }
    #[getter]
    fn recycled_segments(&self) -> u64 {
        self.log.recycled_segments()
    }
    #[getter]
    fn log_id(&self) -> String {
        self.log.log_id().to_string()
    }
    #[getter]
    fn closed(&self) -> bool {
        self.log.is_closed()
    }
    #[getter]
    fn failure(&self) -> Option<String> {
        self.log.failure()
    }
}

/// The native group committer (`crate::log::GroupCommitter`).
#[pyclass(module = "nfsproxy._dataplane", frozen)]
pub struct NativeCommitter {
    committer: Arc<GroupCommitter>,
}

impl NativeCommitter {
    /// The committer itself, for native code (the relay) that journals through it.
    pub fn shared(&self) -> Arc<GroupCommitter> {
        self.committer.clone()
    }
}

#[pymethods]
impl NativeCommitter {
    #[new]
    #[pyo3(signature = (log, durability="sync", flush_interval_s=0.01))]
    fn new(log: &NativeLog, durability: &str, flush_interval_s: f64) -> PyResult<Self> {
        let durability = match durability {
            "sync" => Durability::Sync,
            "async" => Durability::Async,
            other => return Err(PyValueError::new_err(format!("durability must be 'sync' or 'async', got {other:?}"))),
        };
        if flush_interval_s < 0.0 || !flush_interval_s.is_finite() {
            return Err(PyValueError::new_err(format!("flush_interval_s must be >= 0, got {flush_interval_s}")));
        }
        let committer = GroupCommitter::start(log.log.clone(), durability, Duration::from_secs_f64(flush_interval_s))
            .map_err(log_err)?;
        Ok(NativeCommitter { committer: Arc::new(committer) })
    }

    /// Append one record now; returns its seq. `urgent`: fsync at once
    /// (always, in sync durability).
    #[pyo3(signature = (payload, stamp=&[][..], route_kind=0, route=0, urgent=false))]
    fn append(&self, py: Python<'_>, payload: &Bound<'_, PyAny>, stamp: &[u8], route_kind: u8, route: u32, urgent: bool) -> PyResult<u64> {
        let routing = routing(stamp, route_kind, route)?;
        let buffers = payload_buffers(payload)?;
        let parts = slices(&buffers);
        let nbytes: usize = parts.iter().map(|p| p.len()).sum();
        if nbytes >= DETACH_BYTES {
            py.detach(|| self.committer.append(&parts, &routing, urgent)).map_err(log_err)
        } else {
            self.committer.append(&parts, &routing, urgent).map_err(log_err)
        }
    }

    fn request_sync(&self) {
        self.committer.request_sync();
    }

    /// Block (GIL released) until `seq` is durable: True, or False after `timeout_s`.
    #[pyo3(signature = (seq, timeout_s=None))]
    fn wait_synced(&self, py: Python<'_>, seq: u64, timeout_s: Option<f64>) -> PyResult<bool> {
        let timeout = timeout_s.map(|t| Duration::from_secs_f64(t.max(0.0)));
        py.detach(|| self.committer.wait_synced(seq, timeout)).map_err(log_err)
    }

    /// An eventfd bumped after every fsync round: `loop.add_reader` it.
    fn notify_fd(&self) -> i32 {
        self.committer.notify_fd()
    }

    /// `(records, bytes, oldest age in seconds)` not yet known durable.
    fn unsynced(&self) -> (u64, u64, f64) {
        let (n, b, age) = self.committer.unsynced();
        (n, b, age.as_secs_f64())
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.committer.close()).map_err(log_err)
    }

    #[getter]
    fn synced_seq(&self) -> u64 {
        self.committer.synced_seq()
    }
    #[getter]
    fn appends_total(&self) -> u64 {
        self.committer.appends_total()
    }
    #[getter]
    fn appended_bytes_total(&self) -> u64 {
        self.committer.appended_bytes_total()
    }
    #[getter]
    fn fsyncs_total(&self) -> u64 {
        self.committer.fsyncs_total()
    }
    #[getter]
    fn failure(&self) -> Option<String> {
        self.committer.failure()
    }
    #[getter]
    fn get_quota_bytes(&self) -> Option<u64> {
        self.committer.quota_bytes()
    }
    #[setter]
    fn set_quota_bytes(&self, quota: Option<u64>) {
        self.committer.set_quota_bytes(quota);
    }
    #[getter]
    fn over_quota(&self) -> bool {
        self.committer.over_quota()
    }
}

/// The native hybrid logical clock (`crate::hlc::Hlc`); stamps are
/// `(wall_ns, logical, node_id)` tuples.
#[pyclass(module = "nfsproxy._dataplane", frozen, name = "HLC")]
pub struct NativeHlc {
    hlc: Arc<Hlc>,
}

impl NativeHlc {
    /// The clock itself, for native code (the relay) that stamps with it.
    pub fn shared(&self) -> Arc<Hlc> {
        self.hlc.clone()
    }
}

#[pymethods]
impl NativeHlc {
    #[new]
    #[pyo3(signature = (node_id, *, physical_clock=None, max_offset_ns=crate::hlc::DEFAULT_MAX_OFFSET_NS as i64, persist_path=None, persist_interval_ns=crate::hlc::DEFAULT_PERSIST_INTERVAL_NS as i64, forward_jump_threshold_ns=None))]
    fn new(
        node_id: i64,
        physical_clock: Option<Py<PyAny>>,
        max_offset_ns: i64,
        persist_path: Option<PathBuf>,
        persist_interval_ns: i64,
        forward_jump_threshold_ns: Option<i64>,
    ) -> PyResult<Self> {
        let node_id = u32::try_from(node_id).map_err(|_| PyValueError::new_err(format!("node_id {node_id} does not fit in u32")))?;
        let positive = |name: &str, v: i64| -> PyResult<u64> {
            if v <= 0 {
                return Err(PyValueError::new_err(format!("{name} must be > 0, got {v}")));
            }
            Ok(v as u64)
        };
        let physical: crate::hlc::PhysicalClock = match physical_clock {
            None => Box::new(crate::hlc::system_clock),
            // A Python clock (tests drive the clock by hand); the GIL is taken per reading.
            Some(f) => Box::new(move || {
                Python::attach(|py| {
                    f.call0(py)
                        .and_then(|v| v.extract::<u64>(py))
                        .map_err(|e| format!("the physical clock failed: {e}"))
                })
            }),
        };
        let opts = HlcOptions {
            physical_clock: physical,
            max_offset_ns: positive("max_offset_ns", max_offset_ns)?,
            persist_path,
            persist_interval_ns: positive("persist_interval_ns", persist_interval_ns)?,
            forward_jump_threshold_ns: forward_jump_threshold_ns.map(|v| positive("forward_jump_threshold_ns", v)).transpose()?,
        };
        Ok(NativeHlc { hlc: Arc::new(Hlc::new(node_id, opts).map_err(hlc_err)?) })
    }

    fn now(&self) -> PyResult<(u64, u32, u32)> {
        let s = self.hlc.now().map_err(hlc_err)?;
        Ok((s.wall_ns, s.logical, s.node_id))
    }

    fn update(&self, wall_ns: u64, logical: u32, node_id: u32) -> PyResult<()> {
        self.hlc.update(Stamp { wall_ns, logical, node_id }).map_err(hlc_err)
    }

    fn check_physical(&self) -> PyResult<()> {
        self.hlc.check_physical().map_err(hlc_err)
    }

    #[getter]
    fn node_id(&self) -> u32 {
        self.hlc.node_id()
    }
    #[getter]
    fn max_offset_ns(&self) -> u64 {
        self.hlc.max_offset_ns()
    }
    #[getter]
    fn offset_ns(&self) -> u64 {
        self.hlc.offset_ns()
    }
    #[getter]
    fn rejections_total(&self) -> u64 {
        self.hlc.rejections_total()
    }
    #[getter]
    fn backward_jumps_total(&self) -> u64 {
        self.hlc.backward_jumps_total()
    }
    #[getter]
    fn max_backward_jump_ns(&self) -> u64 {
        self.hlc.max_backward_jump_ns()
    }
    #[getter]
    fn forward_jumps_total(&self) -> u64 {
        self.hlc.forward_jumps_total()
    }
    #[getter]
    fn persisted_bound_ns(&self) -> Option<u64> {
        self.hlc.persisted_bound_ns()
    }
}

/// Decode a serialized Record natively and encode it again (tests check
/// that the Rust encoding parses in Python to the same Record).
#[pyfunction]
fn reencode_record(payload: &[u8]) -> PyResult<Vec<u8>> {
    let record = crate::record::decode(payload).map_err(|e| PyValueError::new_err(format!("not a Record: {e}")))?;
    Ok(crate::record::encode(&record))
}

/// The LOG frame's routing fields `(stamp, route_kind, route)` of a
/// serialized Record, as the native writer computes them.
#[pyfunction]
fn record_routing(payload: &[u8]) -> PyResult<(Vec<u8>, u8, u32)> {
    let record = crate::record::decode(payload).map_err(|e| PyValueError::new_err(format!("not a Record: {e}")))?;
    let r = crate::record::routing(&record);
    Ok((r.stamp.to_vec(), r.kind as u8, r.route))
}

/// What `select_shard_frames` returns (its docstring names the fields).
type SelectedFrames = (Py<PyBytes>, u32, u64, u64, u64, u64, Py<PyBytes>, &'static str, u64);

/// Bytes read from a segment per step of `select_shard_frames`.
const SELECT_READ_BYTES: u64 = 4 << 20;

/// One shard's frames from a LOG segment (log::select): the frames of the
/// segment open as `fd` (named `path` in errors) between `offset` and `end`
/// (its readable end), from the frame that must carry `expect_seq`. The
/// descriptor, not the path: a trim may have unlinked a segment its reader
/// still finishes. Returns `(frames, records, nbytes,
/// offset, next_seq, through_seq, newest, stop, blocked_by)`: the position
/// after the frames consumed, and why it stopped ("done", "budget" with the
/// size of the frame that did not fit, "unrouted"). Damage raises
/// NativeLogCorruptError. Runs without the GIL.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (fd, path, offset, end, expect_seq, from_seq, limit_seq, shard_id, n_shards, budget, max_records, allow_oversize))]
fn select_shard_frames(
    py: Python<'_>,
    fd: i32,
    path: PathBuf,
    offset: u64,
    end: u64,
    expect_seq: u64,
    from_seq: u64,
    limit_seq: u64,
    shard_id: u32,
    n_shards: u32,
    budget: u64,
    max_records: u32,
    allow_oversize: bool,
) -> PyResult<SelectedFrames> {
    let want = Want { from_seq, limit_seq, shard_id, n_shards, budget, max_records, allow_oversize };
    // Same thread before and after `detach`: the frames picked still lie in its READ_BUFFER.
    let got = py.detach(|| select_from_file(fd, offset, end, expect_seq, want));
    let got = got.map_err(|e| match e {
        Ok(bad) => NativeLogCorruptError::new_err((path.to_string_lossy().into_owned(), bad.offset, bad.reason, bad.discontinuity)),
        Err(io) => PyOSError::new_err(format!("{}: {io}", path.display())),
    })?;
    let (stop, blocked_by) = match got.stop {
        Stop::Budget(size) => ("budget", size),
        Stop::Unrouted => ("unrouted", 0),
        _ => ("done", 0),
    };
    let newest = if got.newest == [0; 16] { &[][..] } else { &got.newest[..] };
    let len = got.gathered.as_ref().map_or(0, Vec::len) + got.spans.iter().map(|r| r.len()).sum::<usize>();
    let frames = bytes_filled(py, len, |out| {
        READ_BUFFER.with_borrow(|buffer| join_frames(out, got.gathered.as_ref(), buffer, &got.spans));
    })?;
    READ_BUFFER.with_borrow_mut(|buffer| {
        if buffer.len() as u64 > 2 * SELECT_READ_BYTES {
            *buffer = Vec::new(); // a huge frame was read: do not keep its buffer
        }
    });
    Ok((
        frames.unbind(),
        got.records,
        got.nbytes,
        got.offset,
        got.next_seq,
        got.through_seq,
        PyBytes::new(py, newest).unbind(),
        stop,
        blocked_by,
    ))
}

thread_local! {
    /// Where `select_from_file` reads a segment: kept, so that the bytes are
    /// not zeroed again for every batch, and so the frames it picked are
    /// copied once, straight into the batch's bytes.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A bytes object of `len` bytes that `fill` writes, in memory not zeroed
/// first. Allocated before `fill` runs, so a collection the allocation
/// triggers never runs while `fill` holds a borrow.
pub(crate) fn bytes_filled<'py>(py: Python<'py>, len: usize, fill: impl FnOnce(&mut [u8])) -> PyResult<Bound<'py, PyBytes>> {
    // SAFETY: PyBytes_FromStringAndSize(NULL, n) makes a bytes object whose
    // n bytes its maker must fill before anyone else sees it. `fill` gets
    // them as one slice and must write all of it (`join_frames` asserts
    // so); if it panics, the object is dropped unseen.
    unsafe {
        let ptr = pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), len as pyo3::ffi::Py_ssize_t);
        let bytes = Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked::<PyBytes>();
        let data = pyo3::ffi::PyBytes_AsString(ptr) as *mut u8;
        fill(std::slice::from_raw_parts_mut(data, len));
        Ok(bytes)
    }
}

/// `gathered` and then `spans` of `buffer`, back to back, into `out` (their exact length).
fn join_frames(out: &mut [u8], gathered: Option<&Vec<u8>>, buffer: &[u8], spans: &[std::ops::Range<usize>]) {
    let mut at = 0;
    for part in gathered.map(Vec::as_slice).into_iter().chain(spans.iter().map(|r| &buffer[r.clone()])) {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    assert_eq!(at, out.len(), "the frames picked fill the batch exactly");
}

/// What `select_from_file` found: the position and counts, and the frames,
/// in `gathered` (copied out of earlier reads) and then at `spans` of this
/// thread's READ_BUFFER.
struct FileSelection {
    spans: Vec<std::ops::Range<usize>>,
    gathered: Option<Vec<u8>>,
    records: u32,
    nbytes: u64,
    offset: u64,
    next_seq: u64,
    through_seq: u64,
    newest: [u8; 16],
    stop: Stop,
}

/// `log::select` over a file, a few MiB at a time; Err(Ok) for damage.
fn select_from_file(fd: i32, offset: u64, end: u64, expect_seq: u64, mut want: Want) -> Result<FileSelection, Result<BadFrame, std::io::Error>> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::FromRawFd;
    if fd < 0 {
        return Err(Err(std::io::Error::from_raw_os_error(libc::EBADF)));
    }
    // Borrowed: the caller's reader owns the descriptor and closes it.
    let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let mut total = FileSelection { spans: Vec::new(), gathered: None, records: 0, nbytes: 0, offset, next_seq: expect_seq, through_seq: 0, newest: [0; 16], stop: Stop::Done };
    let mut need = 0u64;
    READ_BUFFER.with_borrow_mut(|buffer| {
        while total.offset < end {
            let len = (end - total.offset).min(SELECT_READ_BYTES.max(need)) as usize;
            if !total.spans.is_empty() {
                // The usual batch takes one read; a longer one moves what the
                // last read picked out of the buffer before it is read over.
                let gathered = total.gathered.get_or_insert_with(Vec::new);
                for r in total.spans.drain(..) {
                    gathered.extend_from_slice(&buffer[r]);
                }
            }
            if buffer.len() < len {
                buffer.resize(len, 0);
            }
            let data = &mut buffer[..len];
            file.read_exact_at(data, total.offset).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => Ok(BadFrame {
                    offset: total.offset,
                    reason: format!("file ends before the end of data this LOG wrote ({end})"),
                    discontinuity: false,
                }),
                _ => Err(e),
            })?;
            let at_end = total.offset + len as u64 == end;
            let step = select(data, total.offset, at_end, total.next_seq, &want);
            let before = total.offset;
            total.spans = step.spans;
            total.records += step.records;
            total.nbytes += step.nbytes;
            total.offset = step.offset;
            total.next_seq = step.next_seq;
            total.through_seq = total.through_seq.max(step.through_seq);
            total.newest = total.newest.max(step.newest);
            want.budget = want.budget.saturating_sub(step.nbytes);
            want.max_records = want.max_records.saturating_sub(step.records);
            want.allow_oversize &= total.records == 0;
            match step.stop {
                Stop::Bad(bad) => return Err(Ok(bad)),
                Stop::Partial(more) => need = if step.offset == before { more } else { 0 },
                Stop::Done if at_end || want.max_records == 0 || total.next_seq > want.limit_seq => return Ok(()),
                Stop::Done => need = 0,
                stop => {
                    total.stop = stop;
                    return Ok(());
                }
            }
        }
        Ok(())
    })?;
    Ok(total)
}

/// One record of a shard's batch as `index_shipped_frames` gives it:
/// `(seq, stamp, record, head_len, op, handles, gap)`.
type IndexedRecord = (u64, Py<PyBytes>, Py<PyBytes>, usize, i32, Py<PyTuple>, Option<(String, String)>);

/// The records of a batch of shipped frames as a shard indexes them
/// (crate::shipped): per record `(seq, stamp, record, head_len, op,
/// handles, gap)`, where `record[:head_len]` is the record without its data
/// and `gap` is `(cause, reason)` for GAP records; None when anything is
/// unusual (the caller's reference path decides then).
#[pyfunction]
fn index_shipped_frames(py: Python<'_>, frames: &Bound<'_, PyAny>, after_seq: u64, through_seq: u64, node_id: u32) -> PyResult<Option<Vec<IndexedRecord>>> {
    let buffers = payload_buffers(frames)?;
    let [data] = slices(&buffers)[..] else {
        return Err(PyValueError::new_err("frames must be one bytes-like object"));
    };
    let Some(records) = crate::shipped::index(data, after_seq, through_seq, node_id) else {
        return Ok(None);
    };
    records
        .into_iter()
        .map(|r| {
            let handles = PyTuple::new(py, r.handles.iter().map(|h| PyBytes::new(py, h)))?.unbind();
            Ok((r.seq, PyBytes::new(py, &r.stamp).unbind(), PyBytes::new(py, r.raw).unbind(), r.head_len, r.op, handles, r.gap))
        })
        .collect::<PyResult<Vec<_>>>()
        .map(Some)
}

/// Tests only: call `observer(fd)` after every fsync the native LOG makes
/// (None: stop). The power-cut tests build crash images from it.
#[pyfunction]
#[pyo3(signature = (observer))]
fn _set_fsync_observer(observer: Option<Py<PyAny>>) {
    crate::log::durable::set_observer(observer.map(|f| {
        Box::new(move |fd: i32| {
            Python::attach(|py| {
                if let Err(e) = f.call1(py, (fd,)) {
                    e.print(py);
                }
            })
        }) as Box<dyn Fn(i32) + Send + Sync>
    }));
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_set_fsync_observer, m)?)?;
    m.add_function(wrap_pyfunction!(reencode_record, m)?)?;
    m.add_function(wrap_pyfunction!(record_routing, m)?)?;
    m.add_function(wrap_pyfunction!(select_shard_frames, m)?)?;
    m.add_function(wrap_pyfunction!(index_shipped_frames, m)?)?;
    let py = m.py();
    m.add_class::<NativeLog>()?;
    m.add_class::<NativeCommitter>()?;
    m.add_class::<NativeHlc>()?;
    m.add("DEFAULT_SPARE_SEGMENTS", crate::log::DEFAULT_SPARE_SEGMENTS)?;
    m.add("NativeLogError", py.get_type::<NativeLogError>())?;
    m.add("NativeLogClosedError", py.get_type::<NativeLogClosedError>())?;
    m.add("NativeLogCorruptError", py.get_type::<NativeLogCorruptError>())?;
    m.add("NativeUntrustworthyStamp", py.get_type::<NativeUntrustworthyStamp>())?;
    Ok(())
}
