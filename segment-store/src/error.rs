//! The store's one error type. Every variant carries the context an operator needs to act on it:
//! the file, the segment base offset, the byte position and the operation that failed.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the store.
#[derive(Debug)]
pub enum StoreError {
    /// A file operation failed. `operation` names the step ("write", "fdatasync", "open", ...).
    Io {
        operation: &'static str,
        path: PathBuf,
        position: Option<u64>,
        source: io::Error,
    },
    /// The directory's filesystem cannot give the durability the store promises.
    Unsupported { path: PathBuf, reason: String },
    /// Bytes below the last durable point do not decode. The log refuses to open.
    Corrupt {
        segment: PathBuf,
        offset: Option<u64>,
        position: u64,
        reason: String,
    },
    /// An earlier write or fsync failed; nothing more is confirmed until the log is reopened.
    Poisoned { cause: String },
    /// Preallocating a new segment hit a full disk. The log stays usable.
    NoSpace { path: PathBuf, requested_bytes: u64 },
    /// A record is larger than the configured maximum.
    RecordTooLarge {
        payload_bytes: usize,
        max_payload_bytes: usize,
    },
    /// A batch does not fit into one empty segment.
    BatchTooLarge {
        batch_bytes: u64,
        capacity_bytes: u64,
    },
    /// A batch with no record.
    EmptyBatch,
    /// Options that contradict each other or exceed a limit.
    InvalidOptions { reason: String },
    /// An offset outside what the log holds.
    OffsetOutOfRange {
        offset: u64,
        first_offset: u64,
        next_offset: u64,
    },
    /// The operation needs a sealed segment and got the active one (or none).
    SegmentNotSealed { base_offset: u64 },
}

impl StoreError {
    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
        position: Option<u64>,
        source: io::Error,
    ) -> Self {
        StoreError::Io {
            operation,
            path: path.into(),
            position,
            source,
        }
    }

    /// True for a clean out-of-space condition that leaves the log usable.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StoreError::NoSpace { .. })
    }

    /// True once the log refuses all further appends until it is reopened.
    pub fn is_poisoned(&self) -> bool {
        matches!(self, StoreError::Poisoned { .. })
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io {
                operation,
                path,
                position,
                source,
            } => match position {
                Some(position) => write!(
                    f,
                    "{operation} failed on {} at byte {position}: {source}",
                    path.display()
                ),
                None => write!(f, "{operation} failed on {}: {source}", path.display()),
            },
            StoreError::Unsupported { path, reason } => {
                write!(f, "unsupported storage at {}: {reason}", path.display())
            }
            StoreError::Corrupt {
                segment,
                offset,
                position,
                reason,
            } => match offset {
                Some(offset) => write!(
                    f,
                    "corrupt record in segment {} at byte {position} (offset {offset}): {reason}",
                    segment.display()
                ),
                None => write!(
                    f,
                    "corrupt data in segment {} at byte {position}: {reason}",
                    segment.display()
                ),
            },
            StoreError::Poisoned { cause } => {
                write!(
                    f,
                    "log is poisoned by an earlier failure, reopen to recover: {cause}"
                )
            }
            StoreError::NoSpace {
                path,
                requested_bytes,
            } => write!(
                f,
                "no space to preallocate {requested_bytes} bytes for {}",
                path.display()
            ),
            StoreError::RecordTooLarge {
                payload_bytes,
                max_payload_bytes,
            } => write!(
                f,
                "record payload of {payload_bytes} bytes exceeds the maximum of {max_payload_bytes}"
            ),
            StoreError::BatchTooLarge {
                batch_bytes,
                capacity_bytes,
            } => write!(
                f,
                "batch of {batch_bytes} bytes exceeds the segment capacity of {capacity_bytes}"
            ),
            StoreError::EmptyBatch => write!(f, "batch holds no record"),
            StoreError::InvalidOptions { reason } => write!(f, "invalid options: {reason}"),
            StoreError::OffsetOutOfRange {
                offset,
                first_offset,
                next_offset,
            } => write!(
                f,
                "offset {offset} outside the log's range {first_offset}..{next_offset}"
            ),
            StoreError::SegmentNotSealed { base_offset } => {
                write!(
                    f,
                    "segment {base_offset} is not a sealed segment of this log"
                )
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
