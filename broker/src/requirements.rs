//! What the host must offer the broker, checked once at start.
//!
//! glommio degrades quietly where it should fail loudly: it falls back to buffered I/O where
//! O_DIRECT is refused (tmpfs) and only logs a warning when its registered buffers exceed the
//! memlock limit. These checks turn both into a clear refusal or a sized-down configuration, and
//! log what they found so an operator can read the host's state from the first lines.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::config::{IO_MEMORY_BYTES_MAX, IO_MEMORY_BYTES_MIN};

/// glommio 0.9 uses io_uring operations that Linux added in 5.8.
pub const KERNEL_VERSION_MIN: (u32, u32) = (5, 8);

/// Locked memory left for io_uring rings and everything else, outside the registered buffers.
const MEMLOCK_HEADROOM_BYTES: u64 = 1 << 20;

/// glommio 0.9 registers each executor's `io_memory` with three rings (main, poll and latency,
/// `sys/uring.rs`), and the kernel charges every registration to the memlock limit, so a shard
/// locks three times its `io_memory`. When any registration fails glommio only logs a warning and
/// runs without registered buffers.
const REGISTRATIONS_PER_SHARD: u64 = 3;

// statfs(2) magic numbers of filesystems that keep files in memory: O_DIRECT there is at best a
// no-op, so nothing written can be trusted to reach a device.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// A requirement the host does not meet, with what to do about it.
#[derive(Debug)]
pub enum RequirementError {
    KernelTooOld {
        release: String,
    },
    IoUringDisabled {
        setting: String,
    },
    MemlockTooLow {
        limit_bytes: u64,
        needed_bytes: u64,
    },
    DataDirInMemory {
        path: String,
        filesystem: &'static str,
    },
    DataDirNoDirectIo {
        path: String,
        source: std::io::Error,
    },
}

impl std::fmt::Display for RequirementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequirementError::KernelTooOld { release } => write!(
                f,
                "kernel {release} is older than {}.{}, which io_uring as used here needs",
                KERNEL_VERSION_MIN.0, KERNEL_VERSION_MIN.1
            ),
            RequirementError::IoUringDisabled { setting } => write!(
                f,
                "io_uring is disabled (kernel.io_uring_disabled = {setting}); set it to 0 with \
                 `sysctl kernel.io_uring_disabled=0`"
            ),
            RequirementError::MemlockTooLow {
                limit_bytes,
                needed_bytes,
            } => write!(
                f,
                "the memlock limit is {limit_bytes} bytes and the shards need at least \
                 {needed_bytes}; raise it with `ulimit -l` (as root) or LimitMEMLOCK= in the \
                 systemd unit, or run fewer shards"
            ),
            RequirementError::DataDirInMemory { path, filesystem } => write!(
                f,
                "data directory {path} is on {filesystem}, which has no durable storage and \
                 silently ignores O_DIRECT; use a directory on a disk filesystem such as ext4 or xfs"
            ),
            RequirementError::DataDirNoDirectIo { path, source } => write!(
                f,
                "data directory {path} does not support O_DIRECT ({source}); use ext4 or xfs"
            ),
        }
    }
}

impl std::error::Error for RequirementError {}

/// Checks the running kernel's version against [`KERNEL_VERSION_MIN`]. Returns the release.
pub fn check_kernel() -> Result<String, RequirementError> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    match (major, minor) {
        (Some(major), Some(minor)) if (major, minor) >= KERNEL_VERSION_MIN => Ok(release),
        _ => Err(RequirementError::KernelTooOld { release }),
    }
}

/// Checks `kernel.io_uring_disabled`: 0 allows everyone, 1 allows privileged processes (root
/// here passes), 2 forbids io_uring. Kernels before 6.6 have no such setting and allow it.
pub fn check_io_uring() -> Result<(), RequirementError> {
    let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") else {
        return Ok(());
    };
    let setting = text.trim().to_string();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    match setting.as_str() {
        "0" => Ok(()),
        "1" if is_root => Ok(()),
        _ => Err(RequirementError::IoUringDisabled { setting }),
    }
}

/// The memlock limit after trying to raise the soft limit to the hard one. `None` is unlimited.
pub fn raise_memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit that outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Some(0);
    }
    if limit.rlim_cur != limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit that outlives the call; failure leaves the old one.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
            limit = raised;
        }
    }
    // A process with CAP_IPC_LOCK (root, usually) is not held to the limit at all.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    if limit.rlim_cur == libc::RLIM_INFINITY || is_root {
        None
    } else {
        Some(limit.rlim_cur)
    }
}

/// The `io_memory` each of `shard_count` executors may register under `memlock_limit_bytes`.
pub fn io_memory_per_shard(
    memlock_limit_bytes: Option<u64>,
    shard_count: usize,
) -> Result<usize, RequirementError> {
    assert!(shard_count > 0);
    let Some(limit_bytes) = memlock_limit_bytes else {
        return Ok(IO_MEMORY_BYTES_MAX);
    };
    let usable_bytes = limit_bytes.saturating_sub(MEMLOCK_HEADROOM_BYTES);
    let per_shard_bytes = (usable_bytes / (shard_count as u64 * REGISTRATIONS_PER_SHARD)) as usize;
    // Round down to whole 64 KiB so that glommio's buffer arena divides evenly.
    let per_shard_bytes = per_shard_bytes.min(IO_MEMORY_BYTES_MAX) & !((64 << 10) - 1);
    if per_shard_bytes < IO_MEMORY_BYTES_MIN {
        let needed_bytes = IO_MEMORY_BYTES_MIN as u64 * shard_count as u64 + MEMLOCK_HEADROOM_BYTES;
        return Err(RequirementError::MemlockTooLow {
            limit_bytes,
            needed_bytes,
        });
    }
    Ok(per_shard_bytes)
}

/// Refuses a data directory in memory or on a filesystem that refuses O_DIRECT. Returns the
/// filesystem's statfs magic number for the start-up log.
pub fn check_data_dir(path: &Path) -> Result<i64, RequirementError> {
    let display = path.display().to_string();
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        RequirementError::DataDirNoDirectIo {
            path: display.clone(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        }
    })?;
    // SAFETY: an all-zero statfs is a valid value of a plain C struct.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `stats` is writable; both outlive the call.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stats) } != 0 {
        let source = std::io::Error::last_os_error();
        return Err(RequirementError::DataDirNoDirectIo {
            path: display,
            source,
        });
    }
    let magic = stats.f_type as i64;
    let filesystem = match magic {
        TMPFS_MAGIC => Some("tmpfs"),
        RAMFS_MAGIC => Some("ramfs"),
        _ => None,
    };
    if let Some(filesystem) = filesystem {
        return Err(RequirementError::DataDirInMemory {
            path: display,
            filesystem,
        });
    }

    let probe = path.join(".odirect-probe");
    let opened = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    let _ = std::fs::remove_file(&probe);
    match opened {
        Ok(_) => Ok(magic),
        Err(source) => Err(RequirementError::DataDirNoDirectIo {
            path: display,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_memlock_gives_every_shard_the_full_io_memory() {
        assert_eq!(io_memory_per_shard(None, 4).unwrap(), IO_MEMORY_BYTES_MAX);
    }

    #[test]
    fn the_default_eight_mebibyte_limit_is_shared_between_shards() {
        let per_shard = io_memory_per_shard(Some(8 << 20), 2).unwrap();
        let locked = per_shard * 2 * REGISTRATIONS_PER_SHARD as usize;
        assert!(locked + MEMLOCK_HEADROOM_BYTES as usize <= 8 << 20);
        assert!(per_shard >= IO_MEMORY_BYTES_MIN);
        assert_eq!(per_shard % (64 << 10), 0);
    }

    #[test]
    fn a_limit_too_small_for_the_shard_count_is_refused_with_the_need() {
        let error = io_memory_per_shard(Some(2 << 20), 8).unwrap_err();
        let RequirementError::MemlockTooLow { needed_bytes, .. } = error else {
            panic!("expected MemlockTooLow, got {error}");
        };
        assert_eq!(
            needed_bytes,
            8 * IO_MEMORY_BYTES_MIN as u64 + MEMLOCK_HEADROOM_BYTES
        );
    }

    #[test]
    fn this_host_passes_the_kernel_and_io_uring_checks() {
        // CI and development machines run Linux 6.x with io_uring enabled; a failure here means
        // the host changed, and the broker would refuse to start on it.
        check_kernel().unwrap();
        check_io_uring().unwrap();
    }

    #[test]
    fn a_tmpfs_data_dir_is_refused() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            eprintln!("skipped: /dev/shm does not exist on this host");
            return;
        }
        match check_data_dir(shm) {
            Err(RequirementError::DataDirInMemory { filesystem, .. }) => {
                assert_eq!(filesystem, "tmpfs")
            }
            other => panic!("expected a tmpfs refusal, got {other:?}"),
        }
    }
}
