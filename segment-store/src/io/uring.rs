//! The real seam: glommio's `DmaFile` (O_DIRECT through io_uring) and `Directory`.
//!
//! glommio quietly falls back to buffered I/O when `fcntl(O_DIRECT)` fails (trap S7), which would
//! turn every durability claim into a claim about the page cache. Every file this module opens is
//! therefore checked for the O_DIRECT flag, and directories on tmpfs or ramfs are refused up front.
//!
//! Listing a directory and creating one use blocking calls; they run once, when a log opens.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::rc::Rc;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};

use super::{Storage, StorageFile, WriteBuffer};
use crate::format::{BLOCK_BYTES, align_down, align_up};

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Files on the local filesystem through glommio.
#[derive(Clone, Debug, Default)]
pub struct UringStorage;

/// An open `DmaFile`.
#[derive(Debug)]
pub struct UringFile {
    file: DmaFile,
}

impl WriteBuffer for DmaBuffer {
    fn shorten(&mut self, len: usize) {
        self.trim_to_size(len);
    }
}

/// The caller's range of an aligned direct read.
#[derive(Debug)]
pub struct ReadSlice {
    result: ReadResult,
    skip: usize,
    len: usize,
}

impl std::ops::Deref for ReadSlice {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.result[self.skip..self.skip + self.len]
    }
}

fn glommio_error(error: glommio::GlommioError<()>) -> io::Error {
    io::Error::from(error)
}

fn require_direct_io(file: &DmaFile) -> io::Result<()> {
    // SAFETY: `fcntl(F_GETFL)` only reads the flags of a descriptor that `file` keeps open for the
    // duration of the call.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_DIRECT == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the filesystem refused O_DIRECT; glommio fell back to buffered I/O",
        ));
    }
    Ok(())
}

/// Opens a one-block file with O_DIRECT to prove the filesystem honours it.
///
/// The probe file holds data on purpose: glommio decides once per block device whether reads may
/// use the io_uring poll ring, by reading block 0 of the first file it opens. An empty file answers
/// that read with success even on devices without polling (virtio, here), after which every read
/// on that device fails with EOPNOTSUPP. A real block forces the probe to see the device's answer.
async fn probe_direct_io(dir: &Path) -> io::Result<()> {
    let path = dir.join(".direct-io-probe");
    std::fs::write(&path, [0u8; BLOCK_BYTES as usize])?;
    let opened = DmaFile::open(&path).await.map_err(glommio_error);
    let checked = match opened {
        Ok(file) => {
            let checked = require_direct_io(&file);
            let _ = file.close().await;
            checked
        }
        Err(error) => Err(error),
    };
    std::fs::remove_file(&path)?;
    checked
}

impl Storage for UringStorage {
    type File = UringFile;
    type Buffer = DmaBuffer;

    async fn check_directory(&self, dir: &Path) -> io::Result<()> {
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
        let mut stats = std::mem::MaybeUninit::<libc::statfs>::zeroed();
        // SAFETY: `path` is a NUL-terminated string that outlives the call and `stats` points to
        // writable memory of the size `statfs` fills.
        let status = unsafe { libc::statfs(path.as_ptr(), stats.as_mut_ptr()) };
        if status != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `statfs` returned 0, so it initialised the whole struct.
        let stats = unsafe { stats.assume_init() };
        #[allow(clippy::unnecessary_cast, reason = "f_type is not i64 on every target")]
        let magic = stats.f_type as i64;
        if magic == TMPFS_MAGIC || magic == RAMFS_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "tmpfs and ramfs have no O_DIRECT and lose everything on power loss",
            ));
        }
        probe_direct_io(dir).await
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    async fn create_file(&self, path: &Path) -> io::Result<UringFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .dma_open(path)
            .await
            .map_err(glommio_error)?;
        require_direct_io(&file)?;
        Ok(UringFile { file })
    }

    async fn open_file(&self, path: &Path) -> io::Result<UringFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(path)
            .await
            .map_err(glommio_error)?;
        require_direct_io(&file)?;
        Ok(UringFile { file })
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        glommio::io::remove(path).await.map_err(glommio_error)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        glommio::io::rename(from, to).await.map_err(glommio_error)
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let directory = glommio::io::Directory::open(dir)
            .await
            .map_err(glommio_error)?;
        directory.sync().await.map_err(glommio_error)?;
        directory.close().await.map_err(glommio_error)
    }

    fn alloc_buffer(&self, len: usize) -> DmaBuffer {
        glommio::allocate_dma_buffer(len)
    }
}

impl StorageFile for UringFile {
    type Buffer = DmaBuffer;
    type ReadBuffer = ReadSlice;

    async fn write_at(&self, buffer: Rc<DmaBuffer>, position: u64) -> io::Result<usize> {
        self.file
            .write_rc_at(buffer, position)
            .await
            .map_err(glommio_error)
    }

    async fn read_at(&self, position: u64, len: usize) -> io::Result<ReadSlice> {
        // Whole 4 KiB blocks, like the writes (trap S2); the caller gets its range back.
        let start = align_down(position);
        let end = align_up(position + len as u64);
        let result = self
            .file
            .read_at_aligned(start, (end - start) as usize)
            .await
            .map_err(glommio_error)?;
        let skip = ((position - start) as usize).min(result.len());
        let len = len.min(result.len() - skip);
        Ok(ReadSlice { result, skip, len })
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(glommio_error)
    }

    async fn preallocate(&self, len: u64) -> io::Result<()> {
        self.file
            .pre_allocate(len, false)
            .await
            .map_err(glommio_error)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await.map_err(glommio_error)
    }

    async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(glommio_error)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
}
