//! Memory maps of sealed segments. A sealed segment is complete, synced and never written or
//! truncated again while the log runs, which is what makes mapping it sound (trap S6). A page
//! fault on a cold map would stall every task of the shard, so readers ask [`is_resident`] first
//! and fall back to a direct read for cold ranges.

use std::io;
use std::os::fd::RawFd;

use memmap2::{Mmap, MmapOptions};

/// Maps the first `len` bytes of a sealed segment read-only.
pub fn map_sealed(fd: RawFd, len: u64) -> io::Result<Mmap> {
    let len = usize::try_from(len).map_err(|_| io::Error::other("segment too large to map"))?;
    // SAFETY: the caller maps only sealed segments, which the log never writes, truncates or
    // resizes while it is open; the data directory belongs to one log. A file changed behind the
    // log's back by another process is outside that contract and could show torn bytes, which
    // readers still catch through the CRC of every record.
    unsafe { MmapOptions::new().len(len).map(fd) }
}

fn page_bytes() -> usize {
    // SAFETY: sysconf with a valid name only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&size| size > 0)
        .unwrap_or(4096)
}

/// True when every page of `map[start..start + len]` is in memory, so reading it cannot block on
/// the disk.
pub fn is_resident(map: &Mmap, start: usize, len: usize) -> bool {
    if len == 0 {
        return true;
    }
    let page = page_bytes();
    let first = start / page * page;
    let end = (start + len).min(map.len());
    if first >= end {
        return true;
    }
    let pages_count = (end - first).div_ceil(page);
    let mut residency = vec![0u8; pages_count];
    // SAFETY: `map.as_ptr() + first` is page aligned (the map starts on a page and `first` is a
    // multiple of the page size), the range lies within the mapping, and `residency` has one byte
    // per page of that range as mincore requires.
    let status = unsafe {
        libc::mincore(
            map.as_ptr().add(first) as *mut libc::c_void,
            end - first,
            residency.as_mut_ptr(),
        )
    };
    status == 0 && residency.iter().all(|&flags| flags & 1 == 1)
}
