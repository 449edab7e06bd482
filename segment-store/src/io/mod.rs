//! The file I/O seam. The log reaches the disk only through [`Storage`] and [`StorageFile`], so
//! that tests can substitute [`sim::SimStorage`], which completes writes out of order, injects
//! failures and simulates a crash that drops any subset of unsynced writes. [`uring`] is the real
//! implementation on glommio's `DmaFile` (O_DIRECT, io_uring).
//!
//! The traits are `async fn` traits without `Send` bounds on purpose: a log lives on one executor
//! thread and its futures never cross threads.

pub mod sim;
pub mod uring;

use std::io;
use std::ops::Deref;
use std::os::fd::RawFd;
use std::path::Path;
use std::rc::Rc;

/// Memory a write can take (aligned for direct I/O where that matters).
pub trait WriteBuffer: AsRef<[u8]> + AsMut<[u8]> + 'static {
    /// Shortens the buffer to its first `len` bytes, which are all a write of it sends.
    fn shorten(&mut self, len: usize);

    /// The buffer as bytes, by a name that `Rc<Self>`'s own `AsRef` does not shadow.
    fn bytes(&self) -> &[u8] {
        self.as_ref()
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.as_mut()
    }
}

impl WriteBuffer for Vec<u8> {
    fn shorten(&mut self, len: usize) {
        assert!(len <= self.len());
        self.truncate(len);
    }
}

/// A directory-level view of a filesystem.
#[allow(async_fn_in_trait, reason = "a log and its futures stay on one thread")]
pub trait Storage: Clone + 'static {
    type File: StorageFile<Buffer = Self::Buffer>;
    type Buffer: WriteBuffer;

    /// Refuses a directory whose filesystem cannot honour O_DIRECT and fdatasync (tmpfs, ramfs).
    async fn check_directory(&self, dir: &Path) -> io::Result<()>;
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a new file for reading and writing; fails if it exists.
    async fn create_file(&self, path: &Path) -> io::Result<Self::File>;
    /// Opens an existing file for reading and writing.
    async fn open_file(&self, path: &Path) -> io::Result<Self::File>;
    async fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Gives a file a new name in the same directory, replacing any file there. Like a creation,
    /// the change becomes durable with `sync_dir`.
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// A buffer of `len` bytes that `write_at` accepts. Its contents are unspecified (recycled
    /// memory): the caller writes every byte, zeros included (trap S1).
    fn alloc_buffer(&self, len: usize) -> Self::Buffer;
}

/// One open file.
#[allow(async_fn_in_trait, reason = "a log and its futures stay on one thread")]
pub trait StorageFile: 'static {
    type Buffer: WriteBuffer;
    type ReadBuffer: Deref<Target = [u8]> + 'static;

    /// Writes the whole buffer at `position`; both are multiples of the block size. Returns the
    /// number of bytes the kernel wrote (it may be short). The buffer is shared so that the caller
    /// can keep reading it while the write runs; nothing writes through an `Rc`, so a buffer
    /// stays as it was dispatched (trap S3).
    async fn write_at(&self, buffer: Rc<Self::Buffer>, position: u64) -> io::Result<usize>;
    /// Reads up to `len` bytes at `position` (any alignment); shorter at the end of the file.
    async fn read_at(&self, position: u64, len: usize) -> io::Result<Self::ReadBuffer>;
    async fn fdatasync(&self) -> io::Result<()>;
    /// Reserves blocks up to `len` bytes and sets the file size to at least `len`.
    async fn preallocate(&self, len: u64) -> io::Result<()>;
    async fn truncate(&self, len: u64) -> io::Result<()>;
    async fn size(&self) -> io::Result<u64>;
    /// The descriptor, for memory-mapping sealed segments; `None` where there is no real file.
    fn raw_fd(&self) -> Option<RawFd>;
}
