//! `ruuster-segment-store`: the broker's per-shard journal. An append-only log of opaque records
//! in preallocated segment files, written with O_DIRECT through io_uring, with group commit,
//! crash recovery, live counts and reclaim.
//!
//! Module map:
//! - [`format`]: the byte layouts (segment header, record frame, checkpoint), pure.
//! - [`segment`]: sparse offset and time indexes, live sets, the record scanner, pure.
//! - [`index_file`]: the persisted index of a sealed segment, pure.
//! - [`log`]: the [`Log`]: appends, group commit, watermarks, reads, reclaim, poisoning.
//! - `tail`: the active segment's unwritten bytes in the buffers their writes send, and the
//!   rules for cutting them into writes that may be in flight together.
//! - `recovery`: opening a log (rules in that module).
//! - [`io`]: the I/O seam; [`io::uring`] is glommio's `DmaFile`, [`io::sim`] a simulated disk
//!   for tests that reorders writes, injects faults and crashes.
//! - `runtime` and `mapped`: the remaining runtime-specific and `unsafe` code (yield, timers,
//!   spawning; memory maps and `mincore`).
//!
//! # Guarantees
//!
//! - An append confirmed at [`Level::Fsynced`] survives `kill -9` and power loss; at
//!   [`Level::Written`] it survives a process crash. The level returned is the level reached.
//! - Recovery keeps every record below the durable point or refuses to open, naming the segment
//!   and offset of the damage; above it, a torn tail is cut and logged. No record is invented:
//!   every frame carries its offset, the segment epoch and a CRC.
//! - After a failed write or fdatasync the log is poisoned: nothing pending is confirmed, every
//!   later append fails with [`StoreError::Poisoned`], and reopening runs recovery.
//! - A full disk at segment preallocation returns [`StoreError::NoSpace`] and leaves the log
//!   usable.
//!
//! # Contract for live counts
//!
//! Live counts are kept in memory only. After a restart every stored record counts as live; the
//! caller replays the log ([`Log::scan`]) and calls [`Log::mark_dead`] for each record it no
//! longer needs (the broker journals acks as records, so replay knows). A caller should mark an
//! ack record dead only once the record it acknowledges is reclaimed, or the ack may vanish
//! before the message it covers.

pub mod error;
pub mod format;
pub mod index_file;
pub mod io;
pub mod log;
mod mapped;
mod recovery;
mod runtime;
pub mod segment;
mod tail;

pub use error::StoreError;
pub use log::{
    Appended, Level, Log, Options, ReadLimits, Record, RecoveryReport, Retention, RetentionReport,
    SegmentSpan, Stats, StoredRecord, SyncPolicy, Watermark,
};
