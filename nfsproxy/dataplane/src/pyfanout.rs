//! The shared LOG reader's Python class, `ShardFanout` (log::fanout): a
//! proxy's shippers take their batches from it, and `fill` reads a region
//! of a segment once for all of them (nfsproxy/ship/fanout.py drives it).

use std::os::unix::fs::FileExt;
use std::os::unix::io::FromRawFd;
use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::log::fanout::{Fanout, Take};
use crate::log::segment::BadFrame;
use crate::log::select::{walk, Stop, Walk, Want};
use crate::poison::LockAnyway;
use crate::py::bytes_filled;

/// One reader of a LOG for the shippers of `n_shards` shards, keeping at
/// most about `cap_bytes` of read regions for shards that have not taken
/// their frames yet.
#[pyclass(module = "nfsproxy._dataplane", frozen)]
struct ShardFanout {
    n_shards: u32,
    state: Mutex<Fanout>,
}

#[pymethods]
impl ShardFanout {
    #[new]
    fn new(n_shards: u32, cap_bytes: u64) -> Self {
        let fanout = Fanout::new(n_shards, cap_bytes);
        ShardFanout { n_shards: fanout.n_shards(), state: Mutex::new(fanout) }
    }

    /// The next batch of shard `shard_id` from LOG seq `from_seq` on, as
    /// `select_shard_frames` would give it: `("batch", (frames, records,
    /// nbytes, through_seq, newest, blocked_by))`; `("fill", seq)`: call
    /// `fill` from that seq, then ask again (`may_fill` false: the last
    /// fill could not read further, serve what is there); `("alone",
    /// until)`: read the LOG yourself, up to seq `until` at most.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (shard_id, from_seq, limit_seq, budget, max_records, allow_oversize, may_fill))]
    fn take<'py>(
        &self,
        py: Python<'py>,
        shard_id: u32,
        from_seq: u64,
        limit_seq: u64,
        budget: u64,
        max_records: u32,
        allow_oversize: bool,
        may_fill: bool,
    ) -> PyResult<(&'static str, Bound<'py, PyAny>)> {
        let want = Want { from_seq, limit_seq, shard_id, n_shards: self.n_shards, budget, max_records, allow_oversize };
        let taken = self.state.lock_anyway().take(&want, may_fill);
        let batch = match taken {
            Take::Alone(until) => return Ok(("alone", until.into_bound_py_any(py)?)),
            Take::Fill(seq) => return Ok(("fill", seq.into_bound_py_any(py)?)),
            Take::Batch(batch) => batch,
        };
        // Copied outside the lock: the regions stay alive through the Arcs.
        let frames = bytes_filled(py, batch.len(), |out| {
            let mut at = 0;
            for (chunk, span) in &batch.parts {
                out[at..at + span.len()].copy_from_slice(&chunk[span.clone()]);
                at += span.len();
            }
        })?;
        let newest = if batch.newest == [0; 16] { &[][..] } else { &batch.newest[..] };
        let fields = (frames, batch.records, batch.nbytes, batch.through_seq, PyBytes::new(py, newest), batch.blocked_by);
        Ok(("batch", PyTuple::new(py, fields.into_pyobject(py)?)?.into_any()))
    }

    /// For shard `reader`'s ask: read the frames of the segment open as `fd`
    /// (named `path` in errors) between `offset` and `end`, the first
    /// carrying `expect_seq`, and queue those from `from_seq` up to
    /// `limit_seq` for the shards they belong to.
    /// Returns `(offset, next_seq, stop)`: the position after the frames
    /// walked, and "done", or "stuck" when the reader cannot go on from
    /// there (a frame it cannot route, or damage: the shards' own reads meet
    /// it). An I/O error raises OSError, and the reader is stuck too. Runs
    /// without the GIL.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (reader, fd, path, offset, end, expect_seq, from_seq, limit_seq))]
    fn fill(&self, py: Python<'_>, reader: u32, fd: i32, path: PathBuf, offset: u64, end: u64, expect_seq: u64, from_seq: u64, limit_seq: u64) -> PyResult<(u64, u64, &'static str)> {
        let (buffer, read_bytes) = {
            let mut state = self.state.lock_anyway();
            let read_bytes = state.read_bytes();
            (state.buffer(end.saturating_sub(offset).min(read_bytes) as usize), read_bytes)
        };
        let n_shards = self.n_shards;
        let region = (offset, end, read_bytes);
        let read = py.detach(|| read_and_walk(fd, buffer, region, expect_seq, from_seq, limit_seq, n_shards));
        let mut state = self.state.lock_anyway();
        let (buffer, walked) = match read {
            Ok(read) => read,
            Err(e) => {
                state.stuck_at(from_seq);
                return Err(PyOSError::new_err(format!("{}: {e}", path.display())));
            }
        };
        let stop = match walked.stop {
            Stop::Unrouted | Stop::Bad(_) => "stuck",
            _ => "done",
        };
        let (offset, next_seq) = (walked.offset, walked.next_seq);
        state.push(reader, from_seq, buffer, &walked);
        if stop == "stuck" {
            state.stuck_at(next_seq.max(from_seq));
        }
        Ok((offset, next_seq, stop))
    }

    /// The next seq the reader reads (None: no shard has asked yet).
    fn position(&self) -> Option<u64> {
        self.state.lock_anyway().position()
    }

    /// The reader cannot read on at `seq` (a segment it cannot walk).
    fn stuck_at(&self, seq: u64) {
        self.state.lock_anyway().stuck_at(seq);
    }

    /// Whether shard `shard_id`'s last batch came from this reader.
    fn is_served(&self, shard_id: u32) -> bool {
        self.state.lock_anyway().is_served(shard_id)
    }

    /// Forget every queue; the next ask starts the reader again.
    fn reset(&self) {
        self.state.lock_anyway().reset();
    }

    /// `(served, kept_bytes, fills, batches, evictions, buffers_allocated)`:
    /// shards whose last batch it served, bytes of regions kept for them,
    /// regions read, batches served, queues emptied for holding past
    /// `cap_bytes`, and large read buffers allocated (not reused).
    fn stats(&self) -> (u32, u64, u64, u64, u64, u64) {
        let s = self.state.lock_anyway().stats();
        (s.served, s.kept_bytes, s.fills, s.batches, s.evictions, s.buffers_allocated)
    }
}

/// Read up to `read_bytes` of the region `offset..end` into `buffer` and
/// walk it; a frame larger than that is read whole. A file shorter than
/// `end` is damage (a `Bad` stop).
fn read_and_walk(fd: i32, mut buffer: Vec<u8>, (offset, end, read_bytes): (u64, u64, u64), expect_seq: u64, from_seq: u64, limit_seq: u64, n_shards: u32) -> std::io::Result<(Vec<u8>, Walk)> {
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EBADF));
    }
    // Borrowed: the caller's cursor owns the descriptor and closes it.
    let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let mut len = end.saturating_sub(offset).min(read_bytes) as usize;
    loop {
        // A reused buffer keeps its length: its stale bytes past `len` are
        // never read, and zeroing them again for every read costs a memset.
        if buffer.len() < len {
            buffer.resize(len, 0);
        }
        if let Err(e) = file.read_exact_at(&mut buffer[..len], offset) {
            if e.kind() != std::io::ErrorKind::UnexpectedEof {
                return Err(e);
            }
            let reason = format!("file ends before the end of data this LOG wrote ({end})");
            let stop = Stop::Bad(BadFrame { offset, reason, discontinuity: false });
            return Ok((buffer, Walk { frames: Vec::new(), offset, next_seq: expect_seq, stop }));
        }
        let at_end = offset + len as u64 == end;
        let walked = walk(&buffer[..len], offset, at_end, expect_seq, from_seq, limit_seq, n_shards);
        match walked.stop {
            Stop::Partial(need) if walked.offset == offset => len = need.min(end - offset) as usize,
            _ => return Ok((buffer, walked)),
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ShardFanout>()
}
