//! Every fsync the LOG makes goes through here, so that a test can watch
//! them: the power-cut tests (tests/unit/test_log_power_cut.py) snapshot what
//! each fsync made durable and build the disk a power cut could leave.
//!
//! How to call it: `durable::sync_data(&file)` / `durable::sync_all(&file)`
//! instead of `File::sync_data` / `File::sync_all`; `set_observer` (tests
//! only) installs a function called with the fd after each successful one.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::RwLock;

type Observer = Box<dyn Fn(RawFd) + Send + Sync>;

static OBSERVER: RwLock<Option<Observer>> = RwLock::new(None);

/// Install (or with None remove) the process-wide fsync observer.
pub fn set_observer(observer: Option<Observer>) {
    *OBSERVER.write().unwrap() = observer;
}

fn observed(file: &File, r: io::Result<()>) -> io::Result<()> {
    if r.is_ok() {
        if let Some(observer) = OBSERVER.read().unwrap().as_ref() {
            observer(file.as_raw_fd());
        }
    }
    r
}

/// fdatasync.
pub fn sync_data(file: &File) -> io::Result<()> {
    observed(file, file.sync_data())
}

/// fsync (files whose metadata matters, and directories).
pub fn sync_all(file: &File) -> io::Result<()> {
    observed(file, file.sync_all())
}
