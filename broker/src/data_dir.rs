//! The data directory: its lock and its metadata file.
//!
//! Layout:
//!
//! ```text
//! <data_dir>/LOCK            flock(2)-held while a broker runs; holds that broker's pid
//! <data_dir>/broker.meta     format version and shard count, replaced atomically
//! ```
//!
//! The metadata file is text so an operator can read it:
//!
//! ```text
//! format_version = 1
//! shard_count = 2
//! ```
//!
//! Starting with another shard count than the stored one is refused: every queue's owner and
//! every journal are per shard, so a different count would misplace them.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The version of `broker.meta` this broker writes and understands.
pub const META_FORMAT_VERSION: u32 = 1;

const LOCK_FILE_NAME: &str = "LOCK";
const META_FILE_NAME: &str = "broker.meta";

/// A metadata file larger than this is not ours; refuse it instead of reading it whole.
const META_FILE_BYTES_MAX: u64 = 4096;

/// A data directory problem, with the path it concerns.
#[derive(Debug)]
pub enum DataDirError {
    Io {
        operation: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    Locked {
        path: PathBuf,
        holder: String,
    },
    MetaInvalid {
        path: PathBuf,
        message: String,
    },
    MetaVersion {
        path: PathBuf,
        found: u32,
    },
    ShardCountMismatch {
        path: PathBuf,
        stored: usize,
        configured: usize,
    },
}

impl std::fmt::Display for DataDirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataDirError::Io {
                operation,
                path,
                source,
            } => {
                write!(f, "{operation} {}: {source}", path.display())
            }
            DataDirError::Locked { path, holder } => write!(
                f,
                "data directory {} is in use by another broker (pid {holder})",
                path.display()
            ),
            DataDirError::MetaInvalid { path, message } => {
                write!(
                    f,
                    "{} is not a valid broker metadata file: {message}",
                    path.display()
                )
            }
            DataDirError::MetaVersion { path, found } => write!(
                f,
                "{} has format version {found}; this broker reads version {META_FORMAT_VERSION}",
                path.display()
            ),
            DataDirError::ShardCountMismatch {
                path,
                stored,
                configured,
            } => write!(
                f,
                "data directory {} was created with {stored} shards and the configuration asks \
                 for {configured}; start with `--shards {stored}` (remapping is not supported)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for DataDirError {}

/// An open, locked data directory. The lock is released when this is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory if needed and takes its lock without waiting.
    pub fn lock(path: &Path) -> Result<DataDir, DataDirError> {
        let io = |operation, source| DataDirError::Io {
            operation,
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(path).map_err(|source| io("create directory", source))?;
        let path = path
            .canonicalize()
            .map_err(|source| io("resolve", source))?;
        let lock_path = path.join(LOCK_FILE_NAME);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|source| io("open lock file", source))?;

        // SAFETY: the fd belongs to `lock`, which is open for the duration of the call.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            let holder = if holder.trim().is_empty() {
                "unknown".into()
            } else {
                holder
            };
            return Err(DataDirError::Locked {
                path,
                holder: holder.trim().to_string(),
            });
        }

        let pid = std::process::id().to_string();
        let written = lock
            .set_len(0)
            .and_then(|_| lock.seek(SeekFrom::Start(0)))
            .and_then(|_| lock.write_all(pid.as_bytes()));
        written.map_err(|source| io("write lock file", source))?;
        Ok(DataDir { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the stored shard count, or stores `configured` on a fresh directory. Refuses a
    /// directory created with another count or by a newer format.
    pub fn check_shard_count(&self, configured: usize) -> Result<(), DataDirError> {
        let meta_path = self.path.join(META_FILE_NAME);
        match read_meta(&meta_path)? {
            Some(stored) if stored == configured => Ok(()),
            Some(stored) => Err(DataDirError::ShardCountMismatch {
                path: self.path.clone(),
                stored,
                configured,
            }),
            None => {
                let text =
                    format!("format_version = {META_FORMAT_VERSION}\nshard_count = {configured}\n");
                write_atomically(&self.path, META_FILE_NAME, text.as_bytes())
            }
        }
    }
}

/// The shard count from `path`, or `None` when the file does not exist yet.
fn read_meta(path: &Path) -> Result<Option<usize>, DataDirError> {
    let invalid = |message: String| DataDirError::MetaInvalid {
        path: path.to_path_buf(),
        message,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DataDirError::Io {
                operation: "open",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut text = String::new();
    let read = (&mut file)
        .take(META_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text);
    read.map_err(|source| DataDirError::Io {
        operation: "read",
        path: path.to_path_buf(),
        source,
    })?;
    if text.len() as u64 > META_FILE_BYTES_MAX {
        return Err(invalid(format!("longer than {META_FILE_BYTES_MAX} bytes")));
    }

    let mut version = None;
    let mut shard_count = None;
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let Some((key, value)) = line.split_once('=') else {
            return Err(invalid(format!("line {line:?} is not `key = value`")));
        };
        let value = value.trim();
        match key.trim() {
            "format_version" => version = value.parse::<u32>().ok(),
            "shard_count" => shard_count = value.parse::<usize>().ok(),
            other => return Err(invalid(format!("unknown key {other:?}"))),
        }
    }
    let version = version.ok_or_else(|| invalid("no valid format_version".into()))?;
    if version != META_FORMAT_VERSION {
        return Err(DataDirError::MetaVersion {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let shard_count = shard_count.ok_or_else(|| invalid("no valid shard_count".into()))?;
    Ok(Some(shard_count))
}

/// Replaces `dir/name` with `bytes` so that a crash leaves either the old file or the new one:
/// write a temporary file, fsync it, rename it over the old one, then fsync the directory so the
/// rename itself is durable.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DataDirError> {
    let target = dir.join(name);
    let temporary = dir.join(format!("{name}.tmp"));
    let io = |operation, path: &Path, source| DataDirError::Io {
        operation,
        path: path.to_path_buf(),
        source,
    };

    let mut file = File::create(&temporary).map_err(|e| io("create", &temporary, e))?;
    file.write_all(bytes)
        .map_err(|e| io("write", &temporary, e))?;
    file.sync_all().map_err(|e| io("fsync", &temporary, e))?;
    drop(file);
    std::fs::rename(&temporary, &target).map_err(|e| io("rename", &target, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        // Unit tests run from target/<profile>/deps/; scratch space goes beside them in target/,
        // which is on a real disk (never tmpfs, where O_DIRECT is silently ignored).
        let exe = std::env::current_exe().unwrap();
        let target = exe.ancestors().nth(3).unwrap();
        let path = target.join("tmp").join("data-dir").join(name);
        let _ = std::fs::remove_dir_all(&path);
        path
    }

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_with_the_holder_pid() {
        let path = scratch("double-lock");
        let first = DataDir::lock(&path).unwrap();
        let error = DataDir::lock(&path).unwrap_err();
        let DataDirError::Locked { holder, .. } = &error else {
            panic!("got {error}")
        };
        assert_eq!(holder, &std::process::id().to_string());
        drop(first);
        DataDir::lock(&path).unwrap();
    }

    #[test]
    fn the_shard_count_is_stored_once_and_then_enforced() {
        let path = scratch("shard-count");
        let dir = DataDir::lock(&path).unwrap();
        dir.check_shard_count(2).unwrap();
        dir.check_shard_count(2).unwrap();
        let error = dir.check_shard_count(3).unwrap_err();
        assert!(matches!(
            error,
            DataDirError::ShardCountMismatch {
                stored: 2,
                configured: 3,
                ..
            }
        ));
    }

    #[test]
    fn a_newer_format_version_is_refused_not_misread() {
        let path = scratch("newer-version");
        let dir = DataDir::lock(&path).unwrap();
        std::fs::write(
            path.join(META_FILE_NAME),
            "format_version = 9\nshard_count = 2\n",
        )
        .unwrap();
        let error = dir.check_shard_count(2).unwrap_err();
        assert!(matches!(error, DataDirError::MetaVersion { found: 9, .. }));
    }

    #[test]
    fn garbage_in_the_metadata_file_is_refused() {
        let path = scratch("garbage");
        let dir = DataDir::lock(&path).unwrap();
        std::fs::write(path.join(META_FILE_NAME), "\u{0}\u{1}binary").unwrap();
        assert!(matches!(
            dir.check_shard_count(2),
            Err(DataDirError::MetaInvalid { .. })
        ));
        std::fs::write(path.join(META_FILE_NAME), "x".repeat(10_000)).unwrap();
        assert!(matches!(
            dir.check_shard_count(2),
            Err(DataDirError::MetaInvalid { .. })
        ));
    }
}
