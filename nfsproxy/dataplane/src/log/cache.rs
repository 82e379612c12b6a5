//! Whether a file's pages are in the page cache. A spare is worth writing
//! over only while they are: writing part of a page that is not cached reads
//! it from disk first, where an append past the end of a file reads nothing.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// At least this share of a spare's pages (in sixteenths) must be cached.
const CACHED_SIXTEENTHS: usize = 15;

/// True when nearly every page of the file at `path` is in the page cache
/// (mincore); false for an empty or unreadable file.
pub fn mostly_cached(path: &Path) -> bool {
    let Ok(file) = File::open(path) else { return false };
    let Ok(len) = file.metadata().map(|m| m.len() as usize) else { return false };
    if len == 0 {
        return false;
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let mut resident = vec![0u8; len.div_ceil(page)];
    // SAFETY: a read-only shared map of the file's length, unmapped below;
    // nothing is read through it, so no page is faulted in.
    let addr = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0)
    };
    if addr == libc::MAP_FAILED {
        return false;
    }
    // SAFETY: `resident` has one byte per page of the mapping.
    let r = unsafe { libc::mincore(addr, len, resident.as_mut_ptr()) };
    // SAFETY: the mapping made above, of that length.
    unsafe { libc::munmap(addr, len) };
    let cached = resident.iter().filter(|&&b| b & 1 != 0).count();
    r == 0 && cached * 16 >= resident.len() * CACHED_SIXTEENTHS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn written_pages_are_cached_and_dropped_ones_are_not() {
        let path = std::env::temp_dir().join(format!("nfsj-cache-{}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        assert!(mostly_cached(&path));
        // SAFETY: advice on a descriptor we own.
        assert_eq!(unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
        assert!(!mostly_cached(&path));
        assert!(!mostly_cached(&path.with_extension("missing")));
        let _ = std::fs::remove_file(&path);
    }
}
