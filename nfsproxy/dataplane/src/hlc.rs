//! The hybrid logical clock: the source of every stamp. The specification
//! is logstore/hlc.py's docstring (Kulkarni et al. 2014, CockroachDB's
//! pkg/util/hlc); this is the same clock, with the same persisted-upper-bound
//! file, so the native relay and the Python baseline take stamps from one.
//!
//! How to call it:
//! ```ignore
//! let clock = Hlc::new(node_id, HlcOptions { persist_path: Some(path), ..Default::default() })?;
//! let stamp = clock.now()?;                 // stamp a call on arrival
//! clock.update(ack_stamp)?;                 // a shard's clock reading (never a query bound)
//! clock.check_physical();                   // from a timer, for jump counting
//! ```
//! Thread-safe; `now()` takes one short lock (and, once per persist
//! interval, writes and fsyncs the bound under it).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::stamp::Stamp;

pub const DEFAULT_MAX_OFFSET_NS: u64 = 500_000_000;
pub const DEFAULT_PERSIST_INTERVAL_NS: u64 = 1_000_000_000;

/// A physical clock: nanoseconds since the epoch, or why it could not be read.
pub type PhysicalClock = Box<dyn Fn() -> Result<u64, String> + Send + Sync>;

/// The system's real-time clock.
pub fn system_clock() -> Result<u64, String> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .map_err(|e| format!("the system clock is before 1970: {e}"))
}

#[derive(Debug)]
pub enum HlcError {
    /// A remote stamp more than `max_offset_ns` ahead of our physical clock;
    /// the clock was not moved (and the refusal was counted).
    Untrustworthy { remote: Stamp, physical_ns: u64, offset_ns: u64, max_offset_ns: u64 },
    /// The upper bound could not be persisted; no stamp was handed out.
    Persist { bound_ns: u64, path: PathBuf, source: std::io::Error },
    /// The bound file exists but does not hold a bound.
    CorruptBound { path: PathBuf, content: Vec<u8> },
    Clock(String),
    Invalid(String),
}

impl std::fmt::Display for HlcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HlcError::Untrustworthy { remote, physical_ns, offset_ns, max_offset_ns } => write!(
                f,
                "remote stamp {remote} is {offset_ns} ns ahead of the physical clock ({physical_ns}); \
                 more than max_offset {max_offset_ns} ns is too far to be trustworthy"
            ),
            HlcError::Persist { bound_ns, path, source } => {
                write!(f, "{source} (persisting HLC upper bound {bound_ns} to {})", path.display())
            }
            HlcError::CorruptBound { path, content } => write!(
                f,
                "HLC upper bound file {} is corrupt: {:?}",
                path.display(),
                String::from_utf8_lossy(&content[..content.len().min(64)])
            ),
            HlcError::Clock(why) | HlcError::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for HlcError {}

/// How a clock is made.
pub struct HlcOptions {
    pub physical_clock: PhysicalClock,
    pub max_offset_ns: u64,
    pub persist_path: Option<PathBuf>,
    pub persist_interval_ns: u64,
    /// Default: `max_offset_ns`.
    pub forward_jump_threshold_ns: Option<u64>,
}

impl Default for HlcOptions {
    fn default() -> Self {
        HlcOptions {
            physical_clock: Box::new(system_clock),
            max_offset_ns: DEFAULT_MAX_OFFSET_NS,
            persist_path: None,
            persist_interval_ns: DEFAULT_PERSIST_INTERVAL_NS,
            forward_jump_threshold_ns: None,
        }
    }
}

#[derive(Default)]
struct State {
    // The paper's (l, c). Not itself a handed-out stamp: now() ticks it first.
    wall_ns: u64,
    logical: u32,
    last_physical_ns: Option<u64>,
    offset_ns: u64,
    rejections_total: u64,
    backward_jumps_total: u64,
    max_backward_jump_ns: u64,
    forward_jumps_total: u64,
    /// Every stamp handed out has wall_ns below it; 0 before the first write.
    persisted_bound_ns: Option<u64>,
}

/// A hybrid logical clock for one node; see the module doc.
pub struct Hlc {
    node_id: u32,
    physical_clock: PhysicalClock,
    max_offset_ns: u64,
    persist_path: Option<PathBuf>,
    persist_interval_ns: u64,
    forward_jump_threshold_ns: u64,
    state: Mutex<State>,
}

impl Hlc {
    /// A clock for `node_id`. With a persist path the clock starts at the
    /// bound on disk; `CorruptBound` if the file holds none.
    pub fn new(node_id: u32, opts: HlcOptions) -> Result<Hlc, HlcError> {
        if opts.max_offset_ns == 0 {
            return Err(HlcError::Invalid("max_offset_ns must be > 0, got 0".into()));
        }
        if opts.persist_interval_ns == 0 {
            return Err(HlcError::Invalid("persist_interval_ns must be > 0, got 0".into()));
        }
        let forward = opts.forward_jump_threshold_ns.unwrap_or(opts.max_offset_ns);
        if forward == 0 {
            return Err(HlcError::Invalid("forward_jump_threshold_ns must be > 0, got 0".into()));
        }
        let mut state = State::default();
        if let Some(path) = &opts.persist_path {
            let bound = read_bound(path)?.unwrap_or(0);
            state.persisted_bound_ns = Some(bound);
            // Older stamps all had wall_ns < bound, so (bound, 0) is above them.
            state.wall_ns = bound;
        }
        Ok(Hlc {
            node_id,
            physical_clock: opts.physical_clock,
            max_offset_ns: opts.max_offset_ns,
            persist_path: opts.persist_path,
            persist_interval_ns: opts.persist_interval_ns,
            forward_jump_threshold_ns: forward,
            state: Mutex::new(state),
        })
    }

    /// Stamp a local or send event: strictly greater than every stamp this
    /// clock handed out before (with a persist path, before a restart too).
    pub fn now(&self) -> Result<Stamp, HlcError> {
        let mut st = self.state.lock().unwrap();
        let pt = self.read_physical(&mut st)?;
        let (mut wall_ns, mut logical) = (pt, 0u32);
        if st.wall_ns >= pt {
            wall_ns = st.wall_ns;
            match st.logical.checked_add(1) {
                Some(l) => logical = l,
                // Carry into the wall rather than outgrow the u32 wire field.
                None => wall_ns += 1,
            }
        }
        if let Some(bound) = st.persisted_bound_ns {
            if wall_ns >= bound {
                // Durable before handed out. Measured from pt, not wall_ns:
                // right after a restart wall_ns *is* the old bound.
                let new_bound = (pt + self.persist_interval_ns).max(wall_ns + 1);
                self.persist(new_bound)?;
                st.persisted_bound_ns = Some(new_bound);
            }
        }
        st.wall_ns = wall_ns;
        st.logical = logical;
        st.offset_ns = wall_ns - pt;
        Ok(Stamp { wall_ns, logical, node_id: self.node_id })
    }

    /// Receive rule: merge a peer's clock reading (never a query bound or a
    /// stable stamp), so the next `now()` is greater than `remote`.
    pub fn update(&self, remote: Stamp) -> Result<(), HlcError> {
        let mut st = self.state.lock().unwrap();
        let pt = self.read_physical(&mut st)?;
        if remote.wall_ns > pt && remote.wall_ns - pt > self.max_offset_ns {
            st.rejections_total += 1;
            return Err(HlcError::Untrustworthy {
                remote,
                physical_ns: pt,
                offset_ns: remote.wall_ns - pt,
                max_offset_ns: self.max_offset_ns,
            });
        }
        if (remote.wall_ns, remote.logical) > (st.wall_ns, st.logical) {
            st.wall_ns = remote.wall_ns;
            st.logical = remote.logical;
        }
        // Also take pt, as the paper's receive rule does, so l >= pt holds
        // for the state too and offset_ns never goes negative.
        if pt > st.wall_ns {
            st.wall_ns = pt;
            st.logical = 0;
        }
        st.offset_ns = st.wall_ns - pt;
        Ok(())
    }

    /// Read the physical clock for jump detection and `offset_ns` only; call
    /// from a timer so an idle spell is not taken for a forward jump.
    pub fn check_physical(&self) -> Result<(), HlcError> {
        let mut st = self.state.lock().unwrap();
        let pt = self.read_physical(&mut st)?;
        st.offset_ns = st.wall_ns.saturating_sub(pt);
        Ok(())
    }

    pub fn node_id(&self) -> u32 {
        self.node_id
    }
    pub fn max_offset_ns(&self) -> u64 {
        self.max_offset_ns
    }
    /// How far logical time ran ahead of physical time at the last reading.
    pub fn offset_ns(&self) -> u64 {
        self.state.lock().unwrap().offset_ns
    }
    pub fn rejections_total(&self) -> u64 {
        self.state.lock().unwrap().rejections_total
    }
    pub fn backward_jumps_total(&self) -> u64 {
        self.state.lock().unwrap().backward_jumps_total
    }
    pub fn max_backward_jump_ns(&self) -> u64 {
        self.state.lock().unwrap().max_backward_jump_ns
    }
    pub fn forward_jumps_total(&self) -> u64 {
        self.state.lock().unwrap().forward_jumps_total
    }
    /// None without a persist path, 0 before the first write.
    pub fn persisted_bound_ns(&self) -> Option<u64> {
        self.state.lock().unwrap().persisted_bound_ns
    }

    fn read_physical(&self, st: &mut State) -> Result<u64, HlcError> {
        // Read under the lock: readings from racing threads would otherwise
        // reach the jump check out of order and look like backward jumps.
        let pt = (self.physical_clock)().map_err(HlcError::Clock)?;
        if let Some(last) = st.last_physical_ns {
            if pt < last {
                st.backward_jumps_total += 1;
                st.max_backward_jump_ns = st.max_backward_jump_ns.max(last - pt);
            } else if pt - last > self.forward_jump_threshold_ns {
                st.forward_jumps_total += 1;
            }
        }
        st.last_physical_ns = Some(pt);
        Ok(pt)
    }

    fn persist(&self, bound_ns: u64) -> Result<(), HlcError> {
        let path = self.persist_path.as_ref().expect("persist only with a path");
        write_bound(path, bound_ns).map_err(|source| HlcError::Persist { bound_ns, path: path.clone(), source })
    }
}

fn read_bound(path: &Path) -> Result<Option<u64>, HlcError> {
    let raw = match std::fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(HlcError::Persist { bound_ns: 0, path: path.to_path_buf(), source }),
    };
    // Written only by rename after fsync, so never torn by a crash. Guessing
    // would risk repeating stamps; refuse and say why.
    std::str::from_utf8(&raw)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| HlcError::CorruptBound { path: path.to_path_buf(), content: raw.clone() })
}

fn write_bound(path: &Path, bound_ns: u64) -> std::io::Result<()> {
    // One writer per path: a fixed temp name is enough.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(format!("{bound_ns}\n").as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename itself must survive a crash too.
    let dir = std::path::absolute(path)?.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn manual(t: &Arc<AtomicU64>) -> PhysicalClock {
        let t = t.clone();
        Box::new(move || Ok(t.load(Ordering::SeqCst)))
    }

    #[test]
    fn monotonic_counts_jumps_and_refuses_far_stamps() {
        let t = Arc::new(AtomicU64::new(1_000_000_000_000));
        let c = Hlc::new(3, HlcOptions { physical_clock: manual(&t), ..Default::default() }).unwrap();
        let a = c.now().unwrap();
        t.fetch_sub(10, Ordering::SeqCst);
        let b = c.now().unwrap();
        assert!(b > a && b.logical == 1 && c.backward_jumps_total() == 1);
        let far = Stamp { wall_ns: t.load(Ordering::SeqCst) + DEFAULT_MAX_OFFSET_NS + 1, logical: 0, node_id: 9 };
        assert!(matches!(c.update(far), Err(HlcError::Untrustworthy { .. })));
        assert_eq!(c.rejections_total(), 1);
        let near = Stamp { wall_ns: t.load(Ordering::SeqCst) + 1000, logical: 5, node_id: 9 };
        c.update(near).unwrap();
        assert!(c.now().unwrap() > near);
    }

    #[test]
    fn a_restart_starts_above_every_stamp_before_it() {
        let dir = std::env::temp_dir().join(format!("nfsj-hlc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hlc");
        let t = Arc::new(AtomicU64::new(5_000_000_000));
        let opts = |t: &Arc<AtomicU64>| HlcOptions { physical_clock: manual(t), persist_path: Some(path.clone()), ..Default::default() };
        let before = Hlc::new(1, opts(&t)).unwrap().now().unwrap();
        t.store(1_000, Ordering::SeqCst); // stepped far back
        let after = Hlc::new(1, opts(&t)).unwrap().now().unwrap();
        assert!(after > before);
        std::fs::write(&path, b"junk").unwrap();
        assert!(matches!(Hlc::new(1, opts(&t)), Err(HlcError::CorruptBound { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
