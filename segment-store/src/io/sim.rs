//! A simulated disk for tests: an in-memory filesystem that keeps what reads see apart from what
//! would survive a power loss, completes writes out of order, injects failures, and crashes by
//! dropping **any subset** of the writes not yet covered by an fdatasync, block by block.
//!
//! Model rules, and what they leave out:
//! - A write is *submitted* when `write_at` is first polled and *completes* after a random number
//!   of yields, so concurrent writes complete in any order. Reads see completed writes only. A
//!   write that overlaps another still in flight panics: the two could land in either order.
//! - `fdatasync` covers the writes completed when it was called, never those completing later.
//! - A crash keeps each 4 KiB block of each uncovered write (completed or still in flight) with
//!   probability one half, applied in submission order over the durable image.
//! - A created, renamed or removed name becomes durable with `sync_dir`; a crash keeps or undoes
//!   each undurable name change at random, name by name: a rename may leave both names or
//!   neither, which is harsher than a journalling filesystem.
//! - Not modelled: size changes by `preallocate` and `truncate` are durable at once (ext4 journals
//!   them); a 4 KiB block is written atomically; the page cache is not modelled separately.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::{Storage, StorageFile};
use crate::format::BLOCK_BYTES;

/// Upper bound of yields before a simulated I/O completes; enough to reorder a few dozen writes.
const COMPLETION_YIELDS_MAX: u64 = 8;

/// A small deterministic generator (xorshift64*), so that a seed replays a whole run.
#[derive(Clone, Debug)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    pub fn new(seed: u64) -> Self {
        SimRng {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next_u64() % bound
    }

    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }
}

#[derive(Debug)]
struct Pending {
    sequence: u64,
    position: u64,
    /// The caller's buffer, read when the write completes and again by a crash, as a device
    /// reads it by DMA at any time until completion.
    buffer: Rc<Vec<u8>>,
    /// Bytes of `buffer` that still count (a truncate can cut a pending write short).
    len: usize,
    completed: bool,
}

impl Pending {
    fn data(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

#[derive(Debug, Default)]
struct Inode {
    /// What a crash starts from.
    durable: Vec<u8>,
    /// What reads see.
    visible: Vec<u8>,
    /// Writes submitted and not yet covered by an fdatasync, in submission order.
    pending: Vec<Pending>,
}

/// Failures to inject, counted from the moment they are armed.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimFaults {
    /// Fail the write after this many more successful writes.
    pub fail_write_after: Option<u64>,
    /// Fail the fdatasync after this many more successful ones.
    pub fail_sync_after: Option<u64>,
    /// Every preallocation fails with ENOSPC.
    pub no_space: bool,
}

#[derive(Debug)]
struct Disk {
    rng: SimRng,
    visible_names: BTreeMap<PathBuf, Rc<RefCell<Inode>>>,
    durable_names: BTreeMap<PathBuf, Rc<RefCell<Inode>>>,
    directories: Vec<PathBuf>,
    faults: SimFaults,
    sequence: u64,
    writes_count: u64,
    syncs_count: u64,
    /// Crashes so far. Handles from before the last crash belong to a dead process.
    generation: u64,
}

/// The simulated filesystem. Clones share one disk. A handle works only in the generation (the
/// time between two crashes) it was made for: tasks of a "dead" log that still run after a
/// simulated crash get errors instead of writing into the next life.
#[derive(Clone, Debug)]
pub struct SimStorage {
    disk: Rc<RefCell<Disk>>,
    session: u64,
}

/// An open simulated file. It keeps its inode alive after removal, like a real descriptor.
#[derive(Debug)]
pub struct SimFile {
    disk: Rc<RefCell<Disk>>,
    inode: Rc<RefCell<Inode>>,
    session: u64,
}

fn stale() -> io::Error {
    io::Error::other("handle from before a simulated crash")
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} failure"))
}

impl SimStorage {
    pub fn new(seed: u64) -> Self {
        let disk = Disk {
            rng: SimRng::new(seed),
            visible_names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            directories: Vec::new(),
            faults: SimFaults::default(),
            sequence: 0,
            writes_count: 0,
            syncs_count: 0,
            generation: 0,
        };
        SimStorage {
            disk: Rc::new(RefCell::new(disk)),
            session: 0,
        }
    }

    /// A handle for the current generation; open each log with a fresh one.
    pub fn session(&self) -> SimStorage {
        let generation = self.disk.borrow().generation;
        SimStorage {
            disk: self.disk.clone(),
            session: generation,
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.disk.borrow().generation != self.session {
            return Err(stale());
        }
        Ok(())
    }

    pub fn set_faults(&self, faults: SimFaults) {
        self.disk.borrow_mut().faults = faults;
    }

    /// Writes and fdatasyncs that completed successfully so far.
    pub fn counts(&self) -> (u64, u64) {
        let disk = self.disk.borrow();
        (disk.writes_count, disk.syncs_count)
    }

    /// Power loss: every file falls back to its durable image plus a random subset of the blocks
    /// of its uncovered writes; every undurable name change is kept or undone at random. Open
    /// `SimFile`s of the old world must not be used afterwards.
    pub fn crash(&self) {
        let mut disk = self.disk.borrow_mut();
        let disk = &mut *disk;
        let mut names: BTreeMap<PathBuf, Rc<RefCell<Inode>>> = BTreeMap::new();
        let all_paths: Vec<PathBuf> = disk
            .visible_names
            .keys()
            .chain(disk.durable_names.keys())
            .cloned()
            .collect();
        for path in all_paths {
            let visible = disk.visible_names.get(&path).cloned();
            let durable = disk.durable_names.get(&path).cloned();
            let same = match (&visible, &durable) {
                (Some(a), Some(b)) => Rc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            let chosen = if same || disk.rng.chance(1, 2) {
                durable
            } else {
                visible
            };
            if let Some(inode) = chosen {
                names.insert(path, inode);
            }
        }
        let mut seen: Vec<*const RefCell<Inode>> = Vec::new();
        for inode in disk
            .visible_names
            .values()
            .chain(disk.durable_names.values())
        {
            let key = Rc::as_ptr(inode);
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let mut inode = inode.borrow_mut();
            let mut image = inode.durable.clone();
            for pending in std::mem::take(&mut inode.pending) {
                let mut start = 0usize;
                while start < pending.len {
                    let end = (start + BLOCK_BYTES as usize).min(pending.len);
                    if disk.rng.chance(1, 2) {
                        write_into(
                            &mut image,
                            pending.position + start as u64,
                            &pending.data()[start..end],
                        );
                    }
                    start = end;
                }
            }
            inode.visible = image.clone();
            inode.durable = image;
        }
        disk.visible_names = names.clone();
        disk.durable_names = names;
        disk.generation += 1;
    }

    /// Overwrites bytes of a file in place, durable at once: for byte-surgery tests.
    pub fn poke(&self, path: &Path, position: u64, bytes: &[u8]) {
        let disk = self.disk.borrow();
        let inode = disk.visible_names.get(path).expect("poked file exists");
        let mut inode = inode.borrow_mut();
        write_into(&mut inode.visible, position, bytes);
        write_into(&mut inode.durable, position, bytes);
    }

    /// A copy of what reads of a file see now.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let disk = self.disk.borrow();
        disk.visible_names
            .get(path)
            .map(|inode| inode.borrow().visible.clone())
    }

    fn completion_yields(&self) -> u64 {
        self.disk.borrow_mut().rng.below(COMPLETION_YIELDS_MAX + 1)
    }
}

fn write_into(image: &mut Vec<u8>, position: u64, bytes: &[u8]) {
    let start = position as usize;
    let end = start + bytes.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[start..end].copy_from_slice(bytes);
}

async fn yield_times(count: u64) {
    for _ in 0..count {
        futures_lite::future::yield_now().await;
    }
}

impl Storage for SimStorage {
    type File = SimFile;
    type Buffer = Vec<u8>;

    async fn check_directory(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.check()?;
        let mut disk = self.disk.borrow_mut();
        if !disk.directories.iter().any(|known| known == dir) {
            disk.directories.push(dir.to_path_buf());
        }
        Ok(())
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.check()?;
        let disk = self.disk.borrow();
        Ok(disk
            .visible_names
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    async fn create_file(&self, path: &Path) -> io::Result<SimFile> {
        self.check()?;
        let mut disk = self.disk.borrow_mut();
        if disk.visible_names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let inode = Rc::new(RefCell::new(Inode::default()));
        disk.visible_names.insert(path.to_path_buf(), inode.clone());
        Ok(SimFile {
            disk: self.disk.clone(),
            inode,
            session: self.session,
        })
    }

    async fn open_file(&self, path: &Path) -> io::Result<SimFile> {
        self.check()?;
        let disk = self.disk.borrow();
        let inode = disk
            .visible_names
            .get(path)
            .cloned()
            .ok_or(io::ErrorKind::NotFound)?;
        Ok(SimFile {
            disk: self.disk.clone(),
            inode,
            session: self.session,
        })
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check()?;
        let mut disk = self.disk.borrow_mut();
        disk.visible_names
            .remove(path)
            .map(|_| ())
            .ok_or(io::ErrorKind::NotFound.into())
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check()?;
        let mut disk = self.disk.borrow_mut();
        let inode = disk
            .visible_names
            .remove(from)
            .ok_or(io::ErrorKind::NotFound)?;
        disk.visible_names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check()?;
        yield_times(self.completion_yields()).await;
        self.check()?;
        let mut disk = self.disk.borrow_mut();
        let disk = &mut *disk;
        disk.durable_names
            .retain(|path, _| path.parent() != Some(dir));
        for (path, inode) in &disk.visible_names {
            if path.parent() == Some(dir) {
                disk.durable_names.insert(path.clone(), inode.clone());
            }
        }
        Ok(())
    }

    fn alloc_buffer(&self, len: usize) -> Vec<u8> {
        // Not zero, so that a caller that forgets to zero its padding writes visible garbage.
        vec![0xA5; len]
    }
}

impl SimFile {
    fn check(&self) -> io::Result<()> {
        if self.disk.borrow().generation != self.session {
            return Err(stale());
        }
        Ok(())
    }
}

impl StorageFile for SimFile {
    type Buffer = Vec<u8>;
    type ReadBuffer = Vec<u8>;

    async fn write_at(&self, buffer: Rc<Vec<u8>>, position: u64) -> io::Result<usize> {
        self.check()?;
        assert_eq!(position % BLOCK_BYTES, 0, "direct writes start on a block");
        assert_eq!(
            buffer.len() as u64 % BLOCK_BYTES,
            0,
            "direct writes cover whole blocks"
        );
        let sequence = {
            let mut disk = self.disk.borrow_mut();
            if let Some(remaining) = disk.faults.fail_write_after.as_mut() {
                if *remaining == 0 {
                    return Err(injected("write"));
                }
                *remaining -= 1;
            }
            disk.sequence += 1;
            disk.sequence
        };
        let len = buffer.len();
        // Two writes in flight over one block may land in either order, so the older content
        // could win after both were reported complete: the log must never do that.
        let end = position + len as u64;
        let overlapping = self.inode.borrow().pending.iter().any(|pending| {
            !pending.completed
                && pending.position < end
                && position < pending.position + pending.len as u64
        });
        assert!(
            !overlapping,
            "a write at {position}..{end} overlaps a write still in flight"
        );
        self.inode.borrow_mut().pending.push(Pending {
            sequence,
            position,
            len,
            buffer,
            completed: false,
        });
        let yields = self.disk.borrow_mut().rng.below(COMPLETION_YIELDS_MAX + 1);
        yield_times(yields).await;
        self.check()?;
        let mut inode = self.inode.borrow_mut();
        let inode = &mut *inode;
        // The pending entry is gone if a crash happened meanwhile; the write then simply vanished.
        if let Some(pending) = inode
            .pending
            .iter_mut()
            .find(|pending| pending.sequence == sequence)
        {
            pending.completed = true;
            write_into(&mut inode.visible, pending.position, pending.data());
        }
        self.disk.borrow_mut().writes_count += 1;
        Ok(len)
    }

    async fn read_at(&self, position: u64, len: usize) -> io::Result<Vec<u8>> {
        self.check()?;
        let inode = self.inode.borrow();
        let start = (position as usize).min(inode.visible.len());
        let end = (start + len).min(inode.visible.len());
        Ok(inode.visible[start..end].to_vec())
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.check()?;
        let covered: Vec<u64> = self
            .inode
            .borrow()
            .pending
            .iter()
            .filter(|pending| pending.completed)
            .map(|pending| pending.sequence)
            .collect();
        let yields = self.disk.borrow_mut().rng.below(COMPLETION_YIELDS_MAX + 1);
        yield_times(yields).await;
        self.check()?;
        {
            let mut disk = self.disk.borrow_mut();
            if let Some(remaining) = disk.faults.fail_sync_after.as_mut() {
                if *remaining == 0 {
                    return Err(injected("fdatasync"));
                }
                *remaining -= 1;
            }
            disk.syncs_count += 1;
        }
        let mut inode = self.inode.borrow_mut();
        let inode = &mut *inode;
        let mut kept = Vec::new();
        for pending in std::mem::take(&mut inode.pending) {
            if covered.contains(&pending.sequence) {
                write_into(&mut inode.durable, pending.position, pending.data());
            } else {
                kept.push(pending);
            }
        }
        inode.pending = kept;
        Ok(())
    }

    async fn preallocate(&self, len: u64) -> io::Result<()> {
        self.check()?;
        if self.disk.borrow().faults.no_space {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let mut inode = self.inode.borrow_mut();
        let len = len as usize;
        if inode.visible.len() < len {
            inode.visible.resize(len, 0);
        }
        if inode.durable.len() < len {
            inode.durable.resize(len, 0);
        }
        Ok(())
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.check()?;
        let mut inode = self.inode.borrow_mut();
        let len = len as usize;
        inode.visible.resize(len, 0);
        inode.durable.resize(len, 0);
        for pending in &mut inode.pending {
            let start = pending.position as usize;
            pending.len = len.saturating_sub(start).min(pending.len);
        }
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        self.check()?;
        Ok(self.inode.borrow().visible.len() as u64)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
}

/// The paths a sim holds, for tests that pick files to damage.
pub fn sim_paths(storage: &SimStorage) -> Vec<PathBuf> {
    storage
        .disk
        .borrow()
        .visible_names
        .keys()
        .cloned()
        .collect()
}
