//! The log: appends, group commit, watermarks, reads, reclaim and poisoning.
//!
//! # Write path
//!
//! An append reserves its offsets and copies its frames into the in-memory tail of the active
//! segment before its first await, so concurrent appenders on one executor get consecutive offsets
//! in call order. Waiting for a level then *drives* the pipeline: a waiter submits a write of the
//! tail, or an fdatasync, or waits for someone else's. The tail (`crate::tail`) holds the frames in
//! the direct-I/O buffers that the writes send, so a payload is copied once, and a dispatched
//! buffer is shared and never modified (trap S3). A new write may not start in a block that a
//! write in flight still covers, which keeps one write per block. Full buffers, and the whole
//! blocks of the one being filled, are written while earlier writes are still in flight (up to
//! `writes_in_flight_max`), so appenders refill the tail while the device works. A write that ends
//! in a partial block either leaves the rest of the block as a gap of zeros, so the next write
//! starts in a fresh block and need not wait, or (for a short write, where the gap would waste
//! most of it) carries the block into the next write; `crate::format` says how readers tell a gap
//! from the end. Writes complete in any order, and the written watermark is the contiguous
//! prefix of completed writes, counted in whole batches.
//!
//! An fdatasync starts only when no other is in flight and covers the written watermark taken
//! when it starts (trap S4). Appenders that arrive while it runs are covered by the next one: that
//! is the group commit, with no timer. A failed write or fdatasync poisons the log.
//!
//! # Levels
//!
//! [`Level::Memory`] is reached at once. [`Level::Written`] means the write completed: the data is
//! in the device and survives a process crash. [`Level::Fsynced`] means an fdatasync covering it
//! returned: it survives power loss. Under [`SyncPolicy::Os`] a request for `Fsynced` is answered
//! with `Written` (the store never syncs on its own under that policy; call [`Log::sync`]). Under
//! [`SyncPolicy::Interval`] it waits for the next periodic sync.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use memmap2::Mmap;
use tracing::{debug, error, info, warn};

use crate::error::StoreError;
use crate::format::{
    self, BLOCK_BYTES, CHECKPOINT_SLOT_BYTES, Checkpoint, RecordHeader, SEGMENT_HEADER_BLOCK_BYTES,
    Seal, SegmentHeader, frame_bytes,
};
use crate::index_file::{self, IndexOwner};
use crate::io::{Storage, StorageFile, WriteBuffer, uring::UringStorage};
use crate::mapped;
use crate::runtime;
use crate::segment::{LiveSet, Scanner, SegmentIndex};
use crate::tail::{ChunkWrite, Tail};

/// Largest segment: positions in the index and in the frames' arithmetic stay far from overflow.
pub const SEGMENT_BYTES_LIMIT: u64 = 1 << 32;
/// Smallest segment: a header block and room for at least a few records.
pub const SEGMENT_BYTES_MIN: u64 = 4 * BLOCK_BYTES;
/// A read asks the disk for at least this much at a time, so small records are not read one by one.
const READ_WINDOW_BYTES_MIN: usize = 64 * 1024;
/// Records per read step of [`Log::scan`]; the scan yields between steps.
const SCAN_STEP_RECORDS: usize = 1024;
/// Payload budget of each read compaction makes, which also sizes its window.
const COPY_READ_BYTES: usize = 256 * 1024;
/// Live runs closer than this many records are read as one.
const COPY_RUN_GAP_MAX: u64 = 32;
/// Largest `write_bytes_max`: every tail buffer is this large, and several may be in flight.
pub const WRITE_BYTES_LIMIT: u64 = 64 * 1024 * 1024;
/// Largest `writes_in_flight_max`: far beyond the depth at which a disk's bandwidth stops growing.
pub const WRITES_IN_FLIGHT_LIMIT: usize = 64;

/// When the store calls fdatasync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every append that asks for `Fsynced` waits for a covering fdatasync; concurrent appends
    /// share one (group commit).
    Always,
    /// A background task syncs at this period; `Fsynced` waits for it.
    Interval(Duration),
    /// Never sync on our own: data is on the device once written but a power loss may drop it.
    Os,
}

/// How far an append has come. Ordered: `Memory < Written < Fsynced`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// In the tail buffer; lost if the process dies.
    Memory,
    /// Write completed (O_DIRECT): survives a process crash, not a power loss.
    Written,
    /// Covered by a completed fdatasync: survives power loss.
    Fsynced,
}

/// Which watermark bounds a read or a wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watermark {
    Written,
    Durable,
}

/// Configuration of one log.
#[derive(Clone, Debug)]
pub struct Options {
    /// Size each segment file is preallocated to; a segment rolls when the next batch would not
    /// fit.
    pub segment_bytes: u64,
    /// Largest payload accepted on append and trusted on read (at most
    /// [`format::MAX_PAYLOAD_BYTES_LIMIT`]).
    pub max_payload_bytes: usize,
    pub sync_policy: SyncPolicy,
    /// Bytes appended but not yet durable (not yet written under `Os`). Appends wait above it. It
    /// bounds the tail memory and how far past the durable point a crash can leave holes.
    pub unsynced_bytes_max: u64,
    /// Largest single write, and the size of each tail buffer: appends fill a buffer of this size,
    /// which is written as soon as it is full while the next one fills. Smaller writes let a
    /// closed loop of appenders refill the tail while earlier writes run; larger ones cost the
    /// device less per byte.
    pub write_bytes_max: u64,
    /// Writes in flight at once. With one, each write waits for the previous to complete.
    pub writes_in_flight_max: usize,
    /// The synced offset is checkpointed each time durable data grows by this much (and at each
    /// roll and close). Below the checkpoint, damage refuses the open instead of being truncated.
    pub checkpoint_every_bytes: u64,
    /// New segments get an epoch of at least this value (and above every epoch seen on disk).
    pub epoch_floor: u32,
    /// Period of the background task that writes `Memory`-level appends nobody waits for and, under
    /// `Interval`, syncs. `None` runs no background task.
    pub background_period: Option<Duration>,
    /// Scan and CRC-check every sealed segment on open (slow for large logs, catches damage
    /// before the first read). With `false`, a sealed segment with a valid index file is trusted
    /// and damage shows at read time as `Corrupt`.
    pub verify_sealed_on_open: bool,
    /// Write zeros over each segment before records go in: the first at creation, later ones as
    /// spares prepared in the background while the active segment fills (see
    /// `recovery::zero_fill`). Appends then overwrite written blocks, which ext4 takes inline and
    /// whose fdatasync journals no extent conversion; the cost is a second write of every
    /// segment, which takes bandwidth from records when the disk is the limit (the segment-store
    /// README has the figures). With `false`, segments are only preallocated.
    pub zero_fill_segments: bool,
    /// NEGATIVE CONTROL FOR TESTS ONLY: report every append at the requested level as soon as it is
    /// in the tail buffer. Crash checkers must detect the resulting loss.
    #[doc(hidden)]
    pub confirm_before_durable_for_tests: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 64 * 1024 * 1024,
            max_payload_bytes: 1024 * 1024,
            sync_policy: SyncPolicy::Always,
            unsynced_bytes_max: 16 * 1024 * 1024,
            write_bytes_max: 256 * 1024,
            writes_in_flight_max: 4,
            checkpoint_every_bytes: 8 * 1024 * 1024,
            epoch_floor: 1,
            background_period: Some(Duration::from_millis(5)),
            verify_sealed_on_open: true,
            zero_fill_segments: true,
            confirm_before_durable_for_tests: false,
        }
    }
}

impl Options {
    fn validate(&self) -> Result<(), StoreError> {
        let invalid = |reason: String| Err(StoreError::InvalidOptions { reason });
        if !self.segment_bytes.is_multiple_of(BLOCK_BYTES)
            || !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_LIMIT).contains(&self.segment_bytes)
        {
            return invalid(format!(
                "segment_bytes {} must be a multiple of {BLOCK_BYTES} in \
                 {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_LIMIT}",
                self.segment_bytes
            ));
        }
        if self.max_payload_bytes > format::MAX_PAYLOAD_BYTES_LIMIT
            || frame_bytes(self.max_payload_bytes) > self.segment_capacity_bytes()
        {
            return invalid(format!(
                "max_payload_bytes {} exceeds the limit {} or one segment",
                self.max_payload_bytes,
                format::MAX_PAYLOAD_BYTES_LIMIT
            ));
        }
        if self.write_bytes_max < BLOCK_BYTES
            || self.write_bytes_max > WRITE_BYTES_LIMIT
            || !self.write_bytes_max.is_multiple_of(BLOCK_BYTES)
        {
            return invalid(format!(
                "write_bytes_max {} must be a positive multiple of {BLOCK_BYTES} up to \
                 {WRITE_BYTES_LIMIT}",
                self.write_bytes_max
            ));
        }
        if !(1..=WRITES_IN_FLIGHT_LIMIT).contains(&self.writes_in_flight_max) {
            return invalid(format!(
                "writes_in_flight_max {} must be in 1..={WRITES_IN_FLIGHT_LIMIT}",
                self.writes_in_flight_max
            ));
        }
        if self.unsynced_bytes_max < frame_bytes(self.max_payload_bytes) {
            return invalid("unsynced_bytes_max must hold at least one largest record".into());
        }
        if self.epoch_floor == 0 {
            return invalid("epoch_floor starts at 1; epoch 0 marks zeroed bytes".into());
        }
        Ok(())
    }

    fn segment_capacity_bytes(&self) -> u64 {
        self.segment_bytes - SEGMENT_HEADER_BLOCK_BYTES
    }
}

/// One record to append. The store does not look inside the payload.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub payload: &'a [u8],
    pub timestamp_ms: u64,
    pub flags: u32,
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    pub timestamp_ms: u64,
    pub flags: u32,
    pub payload: Vec<u8>,
}

/// Budget of one read. At least one record is returned when one is available, even if it alone
/// exceeds `bytes_max`, so that a reader always makes progress.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    pub records_max: usize,
    pub bytes_max: usize,
}

/// Offsets assigned to an appended batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    pub offsets: Range<u64>,
}

/// What recovery found and did.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub segments_count: usize,
    pub records_count: u64,
    pub first_offset: u64,
    pub next_offset: u64,
    /// Durable offset read from the checkpoint (0 without one).
    pub checkpoint_offset: u64,
    /// Non-zero bytes cut after the last valid record of the last segment.
    pub truncated_bytes: u64,
    /// Where the torn tail started: segment path, first missing offset, byte position.
    pub truncated_at: Option<(PathBuf, u64, u64)>,
    /// Segment files created but never started, removed by recovery.
    pub removed_files: Vec<PathBuf>,
    /// Index files of sealed segments found missing, short, stale or ahead, and rewritten.
    pub indexes_rebuilt_count: u64,
    pub elapsed: Duration,
}

/// Counters of the write path since open.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub writes_count: u64,
    pub written_bytes: u64,
    /// Writes in flight just after each write was submitted (itself included), summed over
    /// writes; divided by `writes_count` it is the mean queue depth the writes met.
    pub writes_in_flight_sum: u64,
    pub syncs_count: u64,
    /// Records newly made durable, summed over syncs; divided by `syncs_count` it is the mean
    /// group size.
    pub synced_records_count: u64,
    pub checkpoints_count: u64,
    pub segments_rolled_count: u64,
    pub segments_deleted_count: u64,
    /// Rolls that found no zero-filled spare ready (under `Options::zero_fill_segments`) and
    /// created their segment unfilled: its writes are slower (see `recovery::zero_fill`).
    /// Non-zero means segments fill faster than the disk writes a spare's zeros, or a spare
    /// failed (logged).
    pub spare_misses_count: u64,
    /// Writes that left the rest of their last block as a gap so that the next write could start
    /// at once (see `crate::tail`).
    pub pad_skips_count: u64,
}

/// A sealed segment's extent and live records, from [`Log::sealed_segment_spans`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSpan {
    pub base_offset: u64,
    /// One past its last record.
    pub end_offset: u64,
    pub live_count: u64,
}

impl SegmentSpan {
    pub fn records_count(&self) -> u64 {
        self.end_offset - self.base_offset
    }
}

/// Retention rules for streams; each deletes whole sealed segments from the front.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retention {
    /// Delete segments whose records all lie below this offset.
    pub offset_min: Option<u64>,
    /// Delete the oldest segments while the log is larger than this.
    pub total_bytes_max: Option<u64>,
    /// Delete segments whose newest record is older than this.
    pub age_max: Option<Duration>,
}

/// What [`Log::apply_retention`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted_count: u64,
    pub bytes_deleted: u64,
}

/// A waker list with a generation counter: waiters sleep until the generation moves.
#[derive(Debug, Default)]
struct Notify {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    fn generation(&self) -> u64 {
        self.generation.get()
    }

    fn notify(&self) {
        self.generation.set(self.generation.get() + 1);
        for waker in self.wakers.take() {
            waker.wake();
        }
    }

    async fn changed_since(&self, seen: u64) {
        poll_fn(|context| {
            if self.generation.get() != seen {
                return Poll::Ready(());
            }
            self.wakers.borrow_mut().push(context.waker().clone());
            Poll::Pending
        })
        .await
    }
}

pub(crate) struct Segment<F> {
    pub base_offset: u64,
    /// Segment format version ([`format::SEGMENT_VERSION`] for every segment this code creates).
    pub version: u32,
    pub epoch: u32,
    pub path: PathBuf,
    pub file: Rc<F>,
    pub created_ms: u64,
    pub record_count: u64,
    pub end_position: u64,
    pub timestamp_ms_max: u64,
    pub index: SegmentIndex,
    pub live: LiveSet,
    pub map: Option<Rc<Mmap>>,
}

impl<F> Segment<F> {
    fn end_offset(&self) -> u64 {
        self.base_offset + self.record_count
    }

    fn live_count(&self) -> u64 {
        self.record_count - self.live.dead_count()
    }
}

struct CheckpointState<F> {
    file: Rc<F>,
    path: PathBuf,
    sequence: u64,
    durable_position: u64,
    segment_base_offset: u64,
    in_flight: bool,
}

struct State<S: Storage> {
    sealed: BTreeMap<u64, Segment<S::File>>,
    active: Segment<S::File>,
    tail: Tail<S::Buffer>,
    next_offset: u64,
    written_offset: u64,
    durable_offset: u64,
    epoch_current: u32,
    poisoned: Option<String>,
    rolling: bool,
    roll_sequence: u64,
    /// The roll that failed for lack of space, so that its waiters can report it.
    roll_no_space: Option<(u64, PathBuf, u64)>,
    /// A zero-filled segment file for the next roll, and whether one is being prepared.
    spare: Option<(PathBuf, S::File)>,
    spare_preparing: bool,
    /// Largest offset end that a waiter wants fsynced; completions keep syncing up to it.
    fsync_wanted_offset: u64,
    /// A writer task is spawned and has not yet picked its range.
    writer_scheduled: bool,
    sync_in_flight: bool,
    write_id_next: u64,
    checkpoint: CheckpointState<S::File>,
    stats: Stats,
}

/// The part of a roll that runs after appenders are released.
struct RollFinish {
    owner: IndexOwner,
    index: SegmentIndex,
    old_path: PathBuf,
    emptied: Option<u64>,
}

struct Shared<S: Storage> {
    storage: S,
    dir: PathBuf,
    options: Options,
    state: RefCell<State<S>>,
    /// Rolls, poisoning and other rare changes.
    changed: Notify,
    /// The written watermark moved (or a writer gave up).
    written_changed: Notify,
    /// The durable watermark moved. Separate from the others so that a group of appenders
    /// waiting for a sync is woken once per sync, not once per write as well.
    durable_changed: Notify,
}

/// An append-only journal of opaque records in one directory. Not `Send`: it lives on one
/// executor, and its methods take `&self` so that many tasks of that executor can share it.
pub struct Log<S: Storage = UringStorage> {
    shared: Rc<Shared<S>>,
}

impl<S: Storage> std::fmt::Debug for Log<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

struct WriteJob<F, B> {
    file: Rc<F>,
    path: PathBuf,
    segment_base_offset: u64,
    chunk: ChunkWrite<B>,
}

#[derive(Clone, Copy, Debug)]
struct SyncTarget {
    segment_base_offset: u64,
    position: u64,
    offset: u64,
}

enum Step {
    Done(Level),
    SpawnWriter,
    SpawnSync,
    WaitWritten(u64),
    WaitDurable(u64),
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// Everything recovery hands over to a running log.
pub(crate) struct Recovered<F, B> {
    pub sealed: BTreeMap<u64, Segment<F>>,
    pub active: Segment<F>,
    pub tail: Tail<B>,
    pub epoch_current: u32,
    pub checkpoint_file: Rc<F>,
    pub checkpoint_path: PathBuf,
    pub checkpoint_sequence: u64,
}

impl Log<UringStorage> {
    /// Opens (creating if needed) the log in `dir` on the real disk, running recovery. Refuses
    /// tmpfs and filesystems without O_DIRECT.
    pub async fn open(
        dir: impl AsRef<Path>,
        options: Options,
    ) -> Result<(Log, RecoveryReport), StoreError> {
        Self::open_with(UringStorage, dir, options).await
    }
}

impl<S: Storage> Log<S> {
    /// Opens the log through a given storage seam.
    pub async fn open_with(
        storage: S,
        dir: impl AsRef<Path>,
        options: Options,
    ) -> Result<(Log<S>, RecoveryReport), StoreError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let (recovered, report) = crate::recovery::recover(&storage, &dir, &options).await?;
        let next_offset = recovered.active.end_offset();
        let state = State {
            sealed: recovered.sealed,
            next_offset,
            written_offset: next_offset,
            durable_offset: next_offset,
            epoch_current: recovered.epoch_current,
            poisoned: None,
            rolling: false,
            roll_sequence: 0,
            roll_no_space: None,
            spare: None,
            spare_preparing: false,
            fsync_wanted_offset: 0,
            writer_scheduled: false,
            sync_in_flight: false,
            write_id_next: 0,
            checkpoint: CheckpointState {
                file: recovered.checkpoint_file,
                path: recovered.checkpoint_path,
                sequence: recovered.checkpoint_sequence,
                durable_position: recovered.tail.durable_position,
                segment_base_offset: recovered.active.base_offset,
                in_flight: false,
            },
            active: recovered.active,
            tail: recovered.tail,
            stats: Stats::default(),
        };
        let shared = Rc::new(Shared {
            storage,
            dir,
            options: options.clone(),
            state: RefCell::new(state),
            changed: Notify::default(),
            written_changed: Notify::default(),
            durable_changed: Notify::default(),
        });
        let log = Log { shared };
        log.shared.write_checkpoint().await?;
        log.shared.start_spare();
        if let Some(period) = options.background_period {
            let weak = Rc::downgrade(&log.shared);
            runtime::spawn_detached(background(weak, period));
        }
        info!(
            dir = %log.shared.dir.display(),
            next_offset,
            elapsed_us = report.elapsed.as_micros() as u64,
            "log opened"
        );
        Ok((log, report))
    }

    /// Appends a batch and returns its offsets once they are reserved and the frames are in the
    /// tail buffer. It awaits only before reserving: for room under `unsynced_bytes_max` or for
    /// a segment roll. A batch goes into one segment.
    pub async fn append(&self, records: &[Record<'_>]) -> Result<Appended, StoreError> {
        self.shared.append(records).await
    }

    /// Waits until the batch reaches `level` (or the highest level the policy gives) and returns
    /// the level reached.
    pub async fn wait(&self, appended: &Appended, level: Level) -> Result<Level, StoreError> {
        self.shared.drive(appended.offsets.end, level, false).await
    }

    /// Appends and waits in one call.
    pub async fn append_wait(
        &self,
        records: &[Record<'_>],
        level: Level,
    ) -> Result<(Appended, Level), StoreError> {
        let appended = self.append(records).await?;
        let reached = self.wait(&appended, level).await?;
        Ok((appended, reached))
    }

    /// Writes and fdatasyncs everything appended so far, whatever the policy.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let end = self.shared.state.borrow().next_offset;
        self.shared
            .drive(end, Level::Fsynced, true)
            .await
            .map(|_| ())
    }

    /// Syncs, checkpoints and drops the log. Dropping a log without closing it loses only what
    /// was not yet durable.
    pub async fn close(self) -> Result<(), StoreError> {
        self.sync().await?;
        self.shared.write_checkpoint().await?;
        let spare = self.shared.state.borrow_mut().spare.take();
        if let Some((path, file)) = spare {
            // Only zeros; an open removes a leftover spare anyway.
            drop(file);
            if let Err(error) = self.shared.storage.remove_file(&path).await {
                warn!(spare = %path.display(), %error, "spare segment not removed");
            }
        }
        Ok(())
    }

    /// Offset the next append gets.
    pub fn next_offset(&self) -> u64 {
        self.shared.state.borrow().next_offset
    }

    /// Every offset below this is written (survives a process crash).
    pub fn written_offset(&self) -> u64 {
        self.shared.state.borrow().written_offset
    }

    /// Every offset below this is fsynced (survives power loss).
    pub fn durable_offset(&self) -> u64 {
        self.shared.state.borrow().durable_offset
    }

    /// Lowest offset still stored.
    pub fn first_offset(&self) -> u64 {
        let state = self.shared.state.borrow();
        state
            .sealed
            .values()
            .next()
            .map_or(state.active.base_offset, |segment| segment.base_offset)
    }

    pub fn stats(&self) -> Stats {
        self.shared.state.borrow().stats
    }

    /// The reason the log is poisoned, if it is.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.state.borrow().poisoned.clone()
    }

    /// Waits until `offset` lies below the chosen watermark. It does not drive writes itself.
    pub async fn wait_for(&self, offset: u64, watermark: Watermark) -> Result<(), StoreError> {
        let notify = match watermark {
            Watermark::Written => &self.shared.written_changed,
            Watermark::Durable => &self.shared.durable_changed,
        };
        loop {
            let seen = notify.generation();
            {
                let state = self.shared.state.borrow();
                if let Some(cause) = &state.poisoned {
                    return Err(StoreError::Poisoned {
                        cause: cause.clone(),
                    });
                }
                let mark = match watermark {
                    Watermark::Written => state.written_offset,
                    Watermark::Durable => state.durable_offset,
                };
                if offset < mark {
                    return Ok(());
                }
            }
            notify.changed_since(seen).await;
        }
    }

    /// Reads records from `from` upwards, below the chosen watermark, within the budget. Gaps
    /// left by deleted segments are skipped: the returned offsets say where each record is.
    pub async fn read(
        &self,
        from: u64,
        limits: ReadLimits,
        bound: Watermark,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        self.shared.read(from, limits, bound).await
    }

    /// Visits every record from the start up to the chosen watermark, in offset order, yielding
    /// to other tasks between steps. For the broker's replay after a restart.
    pub async fn scan(
        &self,
        bound: Watermark,
        mut visit: impl FnMut(&StoredRecord),
    ) -> Result<u64, StoreError> {
        let mut cursor = self.first_offset();
        let mut visited_count = 0u64;
        let limits = ReadLimits {
            records_max: SCAN_STEP_RECORDS,
            bytes_max: 4 * 1024 * 1024,
        };
        loop {
            let records = self.read(cursor, limits, bound).await?;
            let Some(last) = records.last() else {
                return Ok(visited_count);
            };
            cursor = last.offset + 1;
            for record in &records {
                visit(record);
            }
            visited_count += records.len() as u64;
            runtime::yield_if_needed().await;
        }
    }

    /// The first offset whose record may carry a timestamp at or after `timestamp_ms`, from the
    /// time index: a starting point for a read by time (records before it are older).
    pub fn offset_before_time(&self, timestamp_ms: u64) -> u64 {
        let state = self.shared.state.borrow();
        let mut start = state
            .sealed
            .values()
            .next()
            .map_or(state.active.base_offset, |s| s.base_offset);
        for segment in state.sealed.values().chain(std::iter::once(&state.active)) {
            if segment.record_count > 0 && segment.timestamp_ms_max < timestamp_ms {
                start = segment.end_offset();
                continue;
            }
            let indexed = segment.index.offset_before_time(timestamp_ms);
            return indexed.unwrap_or(segment.base_offset).max(start);
        }
        start
    }

    /// Marks a record as no longer needed. A sealed segment whose records are all dead is deleted
    /// (file removed, directory synced) before this returns; returns true when that happened.
    /// Marking twice is harmless. Live counts are kept in memory only: after a restart every
    /// record is live again and the caller re-marks during replay.
    pub async fn mark_dead(&self, offset: u64) -> Result<bool, StoreError> {
        let deletable = {
            let mut state = self.shared.state.borrow_mut();
            let state = &mut *state;
            if offset >= state.active.base_offset && offset < state.next_offset {
                state
                    .active
                    .live
                    .mark_dead(offset - state.active.base_offset);
                None
            } else {
                let segment = state
                    .sealed
                    .range_mut(..=offset)
                    .next_back()
                    .map(|(_, segment)| segment)
                    .filter(|segment| offset < segment.end_offset());
                match segment {
                    None => None,
                    Some(segment) => {
                        segment.live.mark_dead(offset - segment.base_offset);
                        (segment.live_count() == 0).then_some(segment.base_offset)
                    }
                }
            }
        };
        match deletable {
            Some(base_offset) => self.shared.delete_segment(base_offset).await.map(|_| true),
            None => Ok(false),
        }
    }

    /// Live records of the segment with this base offset, or `None` if it is not stored.
    pub fn live_count(&self, base_offset: u64) -> Option<u64> {
        let state = self.shared.state.borrow();
        if state.active.base_offset == base_offset {
            return Some(state.active.live_count());
        }
        state.sealed.get(&base_offset).map(Segment::live_count)
    }

    /// Base offsets and live counts of the sealed segments, oldest first.
    pub fn sealed_segments(&self) -> Vec<(u64, u64)> {
        let state = self.shared.state.borrow();
        state
            .sealed
            .values()
            .map(|segment| (segment.base_offset, segment.live_count()))
            .collect()
    }

    /// The sealed segments, oldest first, with the offsets they span and how many of their records
    /// are live: what a caller needs to choose segments for [`Log::copy_forward`].
    pub fn sealed_segment_spans(&self) -> Vec<SegmentSpan> {
        let state = self.shared.state.borrow();
        state
            .sealed
            .values()
            .map(|segment| SegmentSpan {
                base_offset: segment.base_offset,
                end_offset: segment.end_offset(),
                live_count: segment.live_count(),
            })
            .collect()
    }

    /// Copies the live records of a sealed segment to the head of the log, syncs the copies,
    /// then marks the originals dead so the segment is deleted. Returns (old, new) offsets. The
    /// caller must redirect its references; after a crash between the sync and the deletion
    /// both copies exist, so a replaying caller must tolerate duplicates (the broker dedupes by
    /// its per-queue sequence).
    pub async fn copy_forward(&self, base_offset: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        let end_offset = {
            let state = self.shared.state.borrow();
            let segment = state
                .sealed
                .get(&base_offset)
                .ok_or(StoreError::SegmentNotSealed { base_offset })?;
            segment.end_offset()
        };
        // Only the runs of live records are read: each read starts at the index entry before
        // its run, so a mostly dead segment costs a few blocks per run, not a scan of the file.
        let mut live = Vec::new();
        for run in self.live_runs(base_offset, end_offset) {
            let mut cursor = run.start;
            while cursor < run.end {
                // The budget sizes the read window as well: small, as runs are often short.
                let limits = ReadLimits {
                    records_max: ((run.end - cursor) as usize).min(SCAN_STEP_RECORDS),
                    bytes_max: COPY_READ_BYTES,
                };
                let records = self.read(cursor, limits, Watermark::Written).await?;
                let Some(last) = records.last() else { break };
                cursor = last.offset + 1;
                let state = self.shared.state.borrow();
                let Some(segment) = state.sealed.get(&base_offset) else {
                    return Ok(Vec::new());
                };
                for record in records {
                    if record.offset < run.end && !segment.live.is_dead(record.offset - base_offset)
                    {
                        live.push(record);
                    }
                }
            }
        }
        let mut moved = Vec::with_capacity(live.len());
        let capacity = self.shared.options.segment_capacity_bytes() / 2;
        let mut start = 0;
        while start < live.len() {
            let mut batch_bytes = 0u64;
            let mut end = start;
            while end < live.len()
                && (end == start || batch_bytes + frame_bytes(live[end].payload.len()) <= capacity)
            {
                batch_bytes += frame_bytes(live[end].payload.len());
                end += 1;
            }
            let batch: Vec<Record<'_>> = live[start..end]
                .iter()
                .map(|record| Record {
                    payload: &record.payload,
                    timestamp_ms: record.timestamp_ms,
                    flags: record.flags,
                })
                .collect();
            let appended = self.append(&batch).await?;
            for (record, new_offset) in live[start..end].iter().zip(appended.offsets.clone()) {
                moved.push((record.offset, new_offset));
            }
            start = end;
        }
        self.sync().await?;
        for &(old_offset, _) in &moved {
            self.mark_dead(old_offset).await?;
        }
        if self.shared.state.borrow().sealed.contains_key(&base_offset) {
            // Nothing was live (or all marks were repeats): the segment goes now.
            self.shared.delete_segment(base_offset).await?;
        }
        Ok(moved)
    }

    /// The runs of live offsets of a sealed segment, as its live set stands now. Runs less than
    /// [`COPY_RUN_GAP_MAX`] records apart are merged (their dead records are read and skipped),
    /// so that scattered live records do not cost a read each.
    fn live_runs(&self, base_offset: u64, end_offset: u64) -> Vec<Range<u64>> {
        let state = self.shared.state.borrow();
        let Some(segment) = state.sealed.get(&base_offset) else {
            return Vec::new();
        };
        let mut runs: Vec<Range<u64>> = Vec::new();
        for offset in base_offset..end_offset {
            if segment.live.is_dead(offset - base_offset) {
                continue;
            }
            match runs.last_mut() {
                Some(run) if offset - run.end < COPY_RUN_GAP_MAX => run.end = offset + 1,
                _ => runs.push(offset..offset + 1),
            }
        }
        runs
    }

    /// Deletes whole sealed segments from the front as the rules demand. The active segment is
    /// never deleted.
    pub async fn apply_retention(
        &self,
        retention: &Retention,
        now_ms: u64,
    ) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        loop {
            let victim = {
                let state = self.shared.state.borrow();
                let total_bytes: u64 = state
                    .sealed
                    .values()
                    .map(|segment| segment.end_position)
                    .sum::<u64>()
                    + state.tail.end_position();
                state.sealed.values().next().and_then(|oldest| {
                    let below = retention
                        .offset_min
                        .is_some_and(|min| oldest.end_offset() <= min);
                    let large = retention
                        .total_bytes_max
                        .is_some_and(|max| total_bytes > max);
                    let old = retention.age_max.is_some_and(|age| {
                        oldest
                            .timestamp_ms_max
                            .saturating_add(age.as_millis() as u64)
                            < now_ms
                    });
                    (below || large || old).then_some((oldest.base_offset, oldest.end_position))
                })
            };
            let Some((base_offset, bytes)) = victim else {
                return Ok(report);
            };
            self.shared.delete_segment(base_offset).await?;
            report.segments_deleted_count += 1;
            report.bytes_deleted += bytes;
        }
    }
}

/// Writes what nobody waits for every `period` and, under `Interval`, syncs once the interval
/// has passed since its last sync; between syncs it only writes.
async fn background<S: Storage>(weak: Weak<Shared<S>>, period: Duration) {
    let interval = match weak.upgrade().map(|shared| shared.options.sync_policy) {
        Some(SyncPolicy::Interval(interval)) => Some(interval),
        _ => None,
    };
    let period = interval.map_or(period, |interval| interval.min(period));
    let mut synced_at = std::time::Instant::now();
    loop {
        runtime::sleep(period).await;
        let Some(shared) = weak.upgrade() else { return };
        let end = {
            let state = shared.state.borrow();
            if state.poisoned.is_some() {
                return;
            }
            state.next_offset
        };
        let now = std::time::Instant::now();
        let sync_due = interval.is_some_and(|interval| now >= synced_at + interval);
        let level = if sync_due {
            synced_at = now;
            Level::Fsynced
        } else {
            Level::Written
        };
        // Errors poison the log inside `drive`; waiters see them.
        let _ = shared.drive(end, level, sync_due).await;
    }
}

impl<S: Storage> Shared<S> {
    fn poison(&self, cause: String) {
        let mut state = self.state.borrow_mut();
        if state.poisoned.is_none() {
            error!(dir = %self.dir.display(), cause = %cause, "log poisoned");
            state.poisoned = Some(cause);
        }
        drop(state);
        self.notify_all();
    }

    fn notify_all(&self) {
        self.changed.notify();
        self.written_changed.notify();
        self.durable_changed.notify();
    }

    fn check_poisoned(&self) -> Result<(), StoreError> {
        match &self.state.borrow().poisoned {
            Some(cause) => Err(StoreError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    async fn append(self: &Rc<Self>, records: &[Record<'_>]) -> Result<Appended, StoreError> {
        if records.is_empty() {
            return Err(StoreError::EmptyBatch);
        }
        let mut batch_bytes = 0u64;
        for record in records {
            if record.payload.len() > self.options.max_payload_bytes {
                return Err(StoreError::RecordTooLarge {
                    payload_bytes: record.payload.len(),
                    max_payload_bytes: self.options.max_payload_bytes,
                });
            }
            batch_bytes += frame_bytes(record.payload.len());
        }
        let capacity_bytes = self.options.segment_capacity_bytes();
        if batch_bytes > capacity_bytes {
            return Err(StoreError::BatchTooLarge {
                batch_bytes,
                capacity_bytes,
            });
        }
        loop {
            self.check_poisoned()?;
            let seen = self.changed.generation();
            let (fits, unsynced_bytes, rolling, next_offset) = {
                let state = self.state.borrow();
                let end = state.tail.end_position();
                let settled = match self.options.sync_policy {
                    SyncPolicy::Os => state.tail.written_position,
                    _ => state.tail.durable_position,
                };
                (
                    end + batch_bytes <= self.options.segment_bytes,
                    end - settled.min(end),
                    state.rolling,
                    state.next_offset,
                )
            };
            if rolling {
                self.changed.changed_since(seen).await;
                continue;
            }
            if unsynced_bytes > 0 && unsynced_bytes + batch_bytes > self.options.unsynced_bytes_max
            {
                let level = match self.options.sync_policy {
                    SyncPolicy::Os => Level::Written,
                    _ => Level::Fsynced,
                };
                self.drive(next_offset, level, level == Level::Fsynced)
                    .await?;
                continue;
            }
            if !fits {
                self.roll_and_wait().await?;
                continue;
            }
            return Ok(self.reserve(records));
        }
    }

    /// Assigns offsets and encodes frames into the tail. No await: this is the reservation.
    fn reserve(&self, records: &[Record<'_>]) -> Appended {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let first_offset = state.next_offset;
        let mut position = state.tail.end_position();
        let chunk_bytes = self.options.write_bytes_max as usize;
        let mut allocate = || self.storage.alloc_buffer(chunk_bytes);
        for record in records {
            let header = RecordHeader {
                payload_bytes: record.payload.len() as u32,
                offset: state.next_offset,
                epoch: state.active.epoch,
                flags: record.flags,
                timestamp_ms: record.timestamp_ms,
            };
            let header_bytes = format::encode_record_header(&header, record.payload);
            state.tail.append(&header_bytes, &mut allocate);
            state.tail.append(record.payload, &mut allocate);
            state
                .active
                .index
                .observe(state.next_offset, position, record.timestamp_ms);
            state.active.timestamp_ms_max = state.active.timestamp_ms_max.max(record.timestamp_ms);
            position += frame_bytes(record.payload.len());
            state.next_offset += 1;
        }
        state.active.record_count = state.next_offset - state.active.base_offset;
        state.active.end_position = position;
        debug_assert_eq!(position, state.tail.end_position());
        state.tail.push_batch_end(state.next_offset);
        Appended {
            offsets: first_offset..state.next_offset,
        }
    }

    /// Moves the pipeline until `end_offset` reaches `level` (or what the policy gives).
    /// `force_sync` syncs even under `Os` and `Interval`.
    async fn drive(
        self: &Rc<Self>,
        end_offset: u64,
        level: Level,
        force_sync: bool,
    ) -> Result<Level, StoreError> {
        if self.options.confirm_before_durable_for_tests && !force_sync {
            self.check_poisoned()?;
            return Ok(level);
        }
        loop {
            let step = self.next_step(end_offset, level, force_sync)?;
            match step {
                Step::Done(reached) => return Ok(reached),
                // I/O runs in its own task: a waiter that is dropped mid-way (a closed connection)
                // must not leave a write or sync that nobody completes.
                // The task decides what to write (or up to where to sync) only when it runs,
                // after the tasks woken with this one have appended: that batches a burst of
                // appenders into one write and one sync.
                Step::SpawnWriter => {
                    let shared = self.clone();
                    runtime::spawn_detached(async move { shared.writer_task().await });
                }
                Step::SpawnSync => {
                    let shared = self.clone();
                    runtime::spawn_detached(async move { shared.sync_task().await });
                }
                Step::WaitWritten(seen) => self.written_changed.changed_since(seen).await,
                Step::WaitDurable(seen) => self.durable_changed.changed_since(seen).await,
            }
        }
    }

    fn next_step(
        &self,
        end_offset: u64,
        level: Level,
        force_sync: bool,
    ) -> Result<Step, StoreError> {
        let written_seen = self.written_changed.generation();
        let durable_seen = self.durable_changed.generation();
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        if let Some(cause) = &state.poisoned {
            return Err(StoreError::Poisoned {
                cause: cause.clone(),
            });
        }
        if level == Level::Memory {
            return Ok(Step::Done(Level::Memory));
        }
        if state.durable_offset >= end_offset {
            return Ok(Step::Done(level));
        }
        let wants_sync = level == Level::Fsynced
            && (force_sync || self.options.sync_policy == SyncPolicy::Always);
        if wants_sync {
            // Completions start the next write and sync for this offset from now on, so this
            // waiter needs to wake only when the durable watermark moves.
            state.fsync_wanted_offset = state.fsync_wanted_offset.max(end_offset);
        }
        if state.written_offset < end_offset {
            if state.writer_scheduled || !state.tail.can_write(self.options.writes_in_flight_max) {
                return Ok(if wants_sync {
                    Step::WaitDurable(durable_seen)
                } else {
                    Step::WaitWritten(written_seen)
                });
            }
            state.writer_scheduled = true;
            return Ok(Step::SpawnWriter);
        }
        if level == Level::Written {
            return Ok(Step::Done(Level::Written));
        }
        match self.options.sync_policy {
            SyncPolicy::Os if !force_sync => return Ok(Step::Done(Level::Written)),
            SyncPolicy::Interval(_) if !force_sync => return Ok(Step::WaitDurable(durable_seen)),
            _ => {}
        }
        if state.sync_in_flight {
            return Ok(Step::WaitDurable(durable_seen));
        }
        state.sync_in_flight = true;
        Ok(Step::SpawnSync)
    }

    async fn writer_task(self: Rc<Self>) {
        // Go to the back of the run queue once, behind the appenders woken with the spawner.
        futures_lite::future::yield_now().await;
        let mut jobs = Vec::new();
        {
            let mut state = self.state.borrow_mut();
            state.writer_scheduled = false;
            if state.poisoned.is_none() {
                while let Some(job) = self.try_submit_write(&mut state) {
                    jobs.push(job);
                }
            }
        }
        let Some(last) = jobs.pop() else {
            self.notify_all();
            return;
        };
        // Each write runs in a task of its own so that they are in flight together.
        for job in jobs {
            let shared = self.clone();
            runtime::spawn_detached(async move { shared.run_write(job).await });
        }
        self.run_write(last).await
    }

    async fn sync_task(self: Rc<Self>) {
        let (file, target) = {
            let state = self.state.borrow();
            let target = SyncTarget {
                segment_base_offset: state.active.base_offset,
                position: state.tail.written_boundary_position,
                offset: state.written_offset,
            };
            (state.active.file.clone(), target)
        };
        self.run_sync(file, target).await
    }

    /// Takes the next write the tail allows (see `crate::tail`), if any.
    fn try_submit_write(&self, state: &mut State<S>) -> Option<WriteJob<S::File, S::Buffer>> {
        let id = state.write_id_next;
        let chunk_bytes = self.options.write_bytes_max as usize;
        let chunk = state
            .tail
            .next_write(id, self.options.writes_in_flight_max, || {
                self.storage.alloc_buffer(chunk_bytes)
            })?;
        state.write_id_next += 1;
        state.stats.writes_in_flight_sum += state.tail.writes_in_flight() as u64;
        state.stats.pad_skips_count += u64::from(chunk.skips_pad);
        Some(WriteJob {
            file: state.active.file.clone(),
            path: state.active.path.clone(),
            segment_base_offset: state.active.base_offset,
            chunk,
        })
    }

    async fn run_write(self: &Rc<Self>, job: WriteJob<S::File, S::Buffer>) {
        let mut position = job.chunk.position;
        let mut buffer = job.chunk.buffer.clone();
        let bytes = buffer.bytes().len() as u64;
        let result = loop {
            let len = buffer.bytes().len() as u64;
            match job.file.write_at(buffer.clone(), position).await {
                Ok(written) if written as u64 == len => break Ok(()),
                Ok(written) if written > 0 && (written as u64).is_multiple_of(BLOCK_BYTES) => {
                    debug!(position, written, "short direct write continued");
                    position += written as u64;
                    let mut rest = self.storage.alloc_buffer(len as usize - written);
                    rest.bytes_mut().copy_from_slice(&buffer.bytes()[written..]);
                    buffer = Rc::new(rest);
                }
                Ok(written) => {
                    break Err(io::Error::other(format!(
                        "short write of {written} bytes out of {len}"
                    )));
                }
                Err(error) => break Err(error),
            }
        };
        match result {
            Ok(()) => self.complete_write(&job, bytes),
            Err(error) => {
                self.poison(StoreError::io("write", &job.path, Some(position), error).to_string())
            }
        }
    }

    fn complete_write(self: &Rc<Self>, job: &WriteJob<S::File, S::Buffer>, bytes: u64) {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        state.stats.writes_count += 1;
        state.stats.written_bytes += bytes;
        if state.active.base_offset != job.segment_base_offset {
            return;
        }
        if let Some(written_offset) = state.tail.complete(job.chunk.id) {
            state.written_offset = written_offset;
        }
        let follow_up = self.follow_up(state);
        drop(guard);
        self.written_changed.notify();
        self.spawn_follow_up(follow_up);
    }

    /// After a write or sync completes: start the next write if tail bytes wait for one, and the
    /// next sync if someone wants a sync beyond the durable watermark and it is written.
    fn follow_up(&self, state: &mut State<S>) -> (bool, bool) {
        if state.poisoned.is_some() {
            return (false, false);
        }
        let write =
            !state.writer_scheduled && state.tail.can_write(self.options.writes_in_flight_max);
        if write {
            state.writer_scheduled = true;
        }
        let sync = !state.sync_in_flight
            && state.fsync_wanted_offset > state.durable_offset
            && state.written_offset > state.durable_offset;
        if sync {
            state.sync_in_flight = true;
        }
        (write, sync)
    }

    fn spawn_follow_up(self: &Rc<Self>, (write, sync): (bool, bool)) {
        if write {
            let shared = self.clone();
            runtime::spawn_detached(async move { shared.writer_task().await });
        }
        if sync {
            let shared = self.clone();
            runtime::spawn_detached(async move { shared.sync_task().await });
        }
    }

    async fn run_sync(self: &Rc<Self>, file: Rc<S::File>, target: SyncTarget) {
        let result = file.fdatasync().await;
        let (checkpoint_due, follow_up) = {
            let mut guard = self.state.borrow_mut();
            let state = &mut *guard;
            state.sync_in_flight = false;
            if let Err(error) = result {
                let path = if state.active.base_offset == target.segment_base_offset {
                    state.active.path.clone()
                } else {
                    self.dir.clone()
                };
                drop(guard);
                self.poison(StoreError::io("fdatasync", path, None, error).to_string());
                return;
            }
            if state.poisoned.is_some() {
                (false, (false, false))
            } else {
                state.stats.syncs_count += 1;
                if target.offset > state.durable_offset {
                    state.stats.synced_records_count += target.offset - state.durable_offset;
                    state.durable_offset = target.offset;
                }
                if state.active.base_offset == target.segment_base_offset {
                    state.tail.durable_position = state.tail.durable_position.max(target.position);
                }
                let checkpoint = &state.checkpoint;
                let due = checkpoint.segment_base_offset != state.active.base_offset
                    || state.tail.durable_position
                        >= checkpoint.durable_position + self.options.checkpoint_every_bytes;
                (due, self.follow_up(state))
            }
        };
        self.durable_changed.notify();
        self.spawn_follow_up(follow_up);
        if checkpoint_due {
            // A failure poisons the log; the waiters of this sync were already answered.
            let _ = self.write_checkpoint().await;
        }
    }

    /// Records the durable offset in the checkpoint file (alternating slots) and syncs it.
    async fn write_checkpoint(&self) -> Result<(), StoreError> {
        let (file, path, buffer, slot_position, checkpoint) = {
            let mut state = self.state.borrow_mut();
            if state.checkpoint.in_flight {
                return Ok(());
            }
            if let Some(cause) = &state.poisoned {
                return Err(StoreError::Poisoned {
                    cause: cause.clone(),
                });
            }
            state.checkpoint.in_flight = true;
            let checkpoint = Checkpoint {
                epoch_max: state.epoch_current,
                sequence: state.checkpoint.sequence + 1,
                durable_offset: state.durable_offset,
                segment_base_offset: state.active.base_offset,
                position: state.tail.durable_position,
            };
            let mut buffer = self.storage.alloc_buffer(CHECKPOINT_SLOT_BYTES as usize);
            buffer.bytes_mut().fill(0);
            format::encode_checkpoint(&checkpoint, buffer.bytes_mut());
            let slot_position = (checkpoint.sequence % 2) * CHECKPOINT_SLOT_BYTES;
            (
                state.checkpoint.file.clone(),
                state.checkpoint.path.clone(),
                buffer,
                slot_position,
                checkpoint,
            )
        };
        let result = match file.write_at(Rc::new(buffer), slot_position).await {
            Ok(written) if written as u64 == CHECKPOINT_SLOT_BYTES => file.fdatasync().await,
            Ok(written) => Err(io::Error::other(format!(
                "short checkpoint write of {written}"
            ))),
            Err(error) => Err(error),
        };
        let mut state = self.state.borrow_mut();
        state.checkpoint.in_flight = false;
        match result {
            Ok(()) => {
                state.checkpoint.sequence = checkpoint.sequence;
                state.checkpoint.durable_position = checkpoint.position;
                state.checkpoint.segment_base_offset = checkpoint.segment_base_offset;
                state.stats.checkpoints_count += 1;
                Ok(())
            }
            Err(error) => {
                drop(state);
                let error = StoreError::io("checkpoint", path, Some(slot_position), error);
                self.poison(error.to_string());
                Err(error)
            }
        }
    }

    /// Seals the active segment and starts a new one. Appenders wait until the new segment is
    /// the active one. The new file (the zero-filled spare, renamed, or else a new preallocated
    /// file) is started first, so that a full disk fails cleanly with the old segment still
    /// active; then the old segment is written, synced and sealed, and the directory synced.
    /// The index file, the checkpoint and the deletion of an emptied segment come after the
    /// appenders are released.
    async fn roll_and_wait(self: &Rc<Self>) -> Result<(), StoreError> {
        let (sequence, start) = {
            let mut state = self.state.borrow_mut();
            let start = !state.rolling;
            if start {
                state.rolling = true;
                state.roll_sequence += 1;
            }
            (state.roll_sequence, start)
        };
        if start {
            // The roll runs in its own task so that a dropped appender cannot leave the log
            // rolling forever. glommio may run a spawned task at once: no borrow is held here.
            let shared = self.clone();
            runtime::spawn_detached(async move { shared.roll_task(sequence).await });
        }
        loop {
            let seen = self.changed.generation();
            {
                let state = self.state.borrow();
                if let Some(cause) = &state.poisoned {
                    return Err(StoreError::Poisoned {
                        cause: cause.clone(),
                    });
                }
                if !state.rolling || state.roll_sequence != sequence {
                    return match &state.roll_no_space {
                        Some((failed, path, requested_bytes)) if *failed == sequence => {
                            Err(StoreError::NoSpace {
                                path: path.clone(),
                                requested_bytes: *requested_bytes,
                            })
                        }
                        _ => Ok(()),
                    };
                }
            }
            self.changed.changed_since(seen).await;
        }
    }

    async fn roll_task(self: Rc<Self>, sequence: u64) {
        let result = self.roll_inner().await;
        let finish = {
            let mut state = self.state.borrow_mut();
            state.rolling = false;
            match result {
                Ok(finish) => Some(finish),
                Err(StoreError::NoSpace {
                    path,
                    requested_bytes,
                }) => {
                    state.roll_no_space = Some((sequence, path, requested_bytes));
                    None
                }
                Err(error) => {
                    drop(state);
                    self.poison(error.to_string());
                    None
                }
            }
        };
        // Appenders go on into the new segment while the rest of the roll runs.
        self.notify_all();
        if let Some(finish) = finish
            && let Err(error) = self.finish_roll(finish).await
        {
            self.poison(error.to_string());
            self.notify_all();
        }
    }

    /// Starts preparing a zero-filled spare segment for the next roll, unless one is ready or on
    /// its way. It runs beside appends; a failure (a full disk, say) is logged and leaves the next
    /// roll to create its segment unfilled.
    fn start_spare(self: &Rc<Self>) {
        {
            let mut state = self.state.borrow_mut();
            if !self.options.zero_fill_segments
                || state.spare.is_some()
                || state.spare_preparing
                || state.poisoned.is_some()
            {
                return;
            }
            state.spare_preparing = true;
        }
        let weak = Rc::downgrade(self);
        let (storage, dir, options) =
            (self.storage.clone(), self.dir.clone(), self.options.clone());
        runtime::spawn_detached(async move {
            let prepared = crate::recovery::prepare_spare(&storage, &dir, &options).await;
            // A log dropped meanwhile leaves the file for its next open to remove.
            let Some(shared) = weak.upgrade() else { return };
            let mut state = shared.state.borrow_mut();
            state.spare_preparing = false;
            match prepared {
                Ok(spare) => state.spare = Some(spare),
                Err(error) => warn!(dir = %dir.display(), %error, "no spare segment prepared"),
            }
        });
    }

    /// The new segment for a roll: the spare renamed and started, or a new file if no spare is
    /// ready.
    async fn next_segment(
        self: &Rc<Self>,
        path: &Path,
        epoch: u32,
        base_offset: u64,
    ) -> Result<(S::File, u64), StoreError> {
        let spare = self.state.borrow_mut().spare.take();
        let created = match spare {
            Some((spare_path, file)) => match self.storage.rename(&spare_path, path).await {
                Ok(()) => {
                    let created_ms = crate::recovery::start_segment(
                        &self.storage,
                        &file,
                        path,
                        epoch,
                        base_offset,
                    )
                    .await?;
                    Some((file, created_ms))
                }
                Err(error) => {
                    warn!(spare = %spare_path.display(), %error, "spare segment not renamed");
                    drop(file);
                    let _ = self.storage.remove_file(&spare_path).await;
                    None
                }
            },
            None => None,
        };
        let created = match created {
            Some(created) => created,
            None => {
                if self.options.zero_fill_segments {
                    self.state.borrow_mut().stats.spare_misses_count += 1;
                }
                crate::recovery::create_started_segment(
                    &self.storage,
                    path,
                    &self.options,
                    epoch,
                    base_offset,
                )
                .await?
            }
        };
        self.start_spare();
        Ok(created)
    }

    async fn roll_inner(self: &Rc<Self>) -> Result<RollFinish, StoreError> {
        let started = Instant::now();
        let (base_offset, epoch) = {
            let state = self.state.borrow();
            (state.next_offset, state.epoch_current)
        };
        let path = self.dir.join(format::segment_file_name(base_offset));
        let (file, created_ms) = self.next_segment(&path, epoch, base_offset).await?;

        self.drive(base_offset, Level::Fsynced, true).await?;
        let (old_file, old_path, seal_header) = {
            let state = self.state.borrow();
            let active = &state.active;
            let header = SegmentHeader {
                version: active.version,
                epoch: active.epoch,
                base_offset: active.base_offset,
                created_ms: active.created_ms,
                seal: Some(Seal {
                    record_count: active.record_count,
                    end_position: active.end_position,
                    timestamp_ms_max: active.timestamp_ms_max,
                }),
            };
            (active.file.clone(), active.path.clone(), header)
        };
        let mut block = self
            .storage
            .alloc_buffer(SEGMENT_HEADER_BLOCK_BYTES as usize);
        block.bytes_mut().fill(0);
        format::encode_segment_header(&seal_header, block.bytes_mut());
        let sealed = match old_file.write_at(Rc::new(block), 0).await {
            Ok(written) if written as u64 == SEGMENT_HEADER_BLOCK_BYTES => {
                old_file.fdatasync().await
            }
            Ok(written) => Err(io::Error::other(format!("short seal write of {written}"))),
            Err(error) => Err(error),
        };
        if let Err(error) = sealed {
            let error = StoreError::io("seal", &old_path, Some(0), error);
            self.poison(error.to_string());
            return Err(error);
        }
        let owner = IndexOwner {
            epoch: seal_header.epoch,
            base_offset: seal_header.base_offset,
            seal: seal_header.seal.expect("built sealed above"),
        };
        let index = self.state.borrow().active.index.clone();
        if let Err(error) = self.storage.sync_dir(&self.dir).await {
            let error = StoreError::io("directory fsync", &self.dir, None, error);
            self.poison(error.to_string());
            return Err(error);
        }

        let emptied = {
            let mut state = self.state.borrow_mut();
            let state = &mut *state;
            // The header block is on disk already; records start after it.
            let chunk = self
                .storage
                .alloc_buffer(self.options.write_bytes_max as usize);
            state.tail = Tail::resume(
                SEGMENT_HEADER_BLOCK_BYTES,
                &[],
                chunk,
                format::SEGMENT_VERSION,
            );
            let new_active = Segment {
                base_offset,
                version: format::SEGMENT_VERSION,
                epoch,
                path: path.clone(),
                file: Rc::new(file),
                created_ms,
                record_count: 0,
                end_position: SEGMENT_HEADER_BLOCK_BYTES,
                timestamp_ms_max: 0,
                index: SegmentIndex::default(),
                live: LiveSet::default(),
                map: None,
            };
            // Its end position is the end of its last record, which a skipped pad may leave
            // short of where its tail ended.
            let mut old = std::mem::replace(&mut state.active, new_active);
            old.map = old
                .file
                .raw_fd()
                .and_then(|fd| mapped::map_sealed(fd, old.end_position).ok())
                .map(Rc::new);
            state.stats.segments_rolled_count += 1;
            let emptied = (old.live_count() == 0).then_some(old.base_offset);
            state.sealed.insert(old.base_offset, old);
            emptied
        };
        info!(
            segment = %path.display(),
            base_offset,
            appenders_held_us = started.elapsed().as_micros() as u64,
            "segment rolled"
        );
        Ok(RollFinish {
            owner,
            index,
            old_path,
            emptied,
        })
    }

    /// What a roll does after appenders have moved on: the sealed segment's index file (derived
    /// data, which the next open rebuilds if it is missing), the checkpoint, and the deletion of
    /// a sealed segment with no live record.
    async fn finish_roll(self: &Rc<Self>, finish: RollFinish) -> Result<(), StoreError> {
        let RollFinish {
            owner,
            index,
            old_path,
            emptied,
        } = finish;
        if let Err(error) =
            crate::recovery::write_index(&self.storage, &self.dir, &owner, &index).await
        {
            warn!(segment = %old_path.display(), error = %error, "index file not written");
        }
        self.write_checkpoint().await?;
        if let Some(base_offset) = emptied {
            self.delete_segment(base_offset).await?;
        }
        Ok(())
    }

    /// Removes a sealed segment: forget it, unlink it, sync the directory. Idempotent: a file
    /// that is already gone counts as removed.
    async fn delete_segment(&self, base_offset: u64) -> Result<(), StoreError> {
        let segment = self.state.borrow_mut().sealed.remove(&base_offset);
        let Some(segment) = segment else {
            return Ok(());
        };
        let path = segment.path.clone();
        drop(segment);
        let index_path = self.dir.join(index_file::index_file_name(base_offset));
        for path in [&path, &index_path] {
            match self.storage.remove_file(path).await {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(StoreError::io("remove segment", path, None, error)),
            }
        }
        self.storage
            .sync_dir(&self.dir)
            .await
            .map_err(|error| StoreError::io("directory fsync", &self.dir, None, error))?;
        self.state.borrow_mut().stats.segments_deleted_count += 1;
        info!(segment = %path.display(), base_offset, "segment deleted");
        Ok(())
    }

    async fn read(
        &self,
        from: u64,
        limits: ReadLimits,
        bound: Watermark,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let mut records = Vec::new();
        let mut bytes_total = 0usize;
        let mut cursor = from;
        loop {
            let plan = {
                let state = self.state.borrow();
                let upper = match bound {
                    Watermark::Written => state.written_offset,
                    Watermark::Durable => state.durable_offset,
                };
                let budget_left = records.len() < limits.records_max
                    && (records.is_empty() || bytes_total < limits.bytes_max);
                if cursor >= upper || !budget_left {
                    return Ok(records);
                }
                match locate(&state, cursor) {
                    None => return Ok(records),
                    Some(plan) => ReadPlan {
                        end_offset: plan.end_offset.min(upper),
                        ..plan
                    },
                }
            };
            cursor = cursor.max(plan.base_offset);
            if cursor >= plan.end_offset {
                cursor = plan.segment_end_offset;
                continue;
            }
            let next = self
                .read_segment(&plan, cursor, limits, &mut records, &mut bytes_total)
                .await?;
            cursor = next;
            if cursor < plan.end_offset {
                // Budget exhausted inside this segment.
                return Ok(records);
            }
            if plan.end_offset < plan.segment_end_offset {
                // The watermark stops us inside this segment.
                return Ok(records);
            }
        }
    }

    /// Reads records `cursor..plan.end_offset` of one segment into `records` within the budget.
    /// Returns the next offset to read.
    async fn read_segment(
        &self,
        plan: &ReadPlan,
        cursor: u64,
        limits: ReadLimits,
        records: &mut Vec<StoredRecord>,
        bytes_total: &mut usize,
    ) -> Result<u64, StoreError> {
        let mut scanner = Scanner::new(
            plan.start_offset,
            plan.epoch,
            self.options.max_payload_bytes,
            plan.start_position,
        );
        let mut want = READ_WINDOW_BYTES_MIN.max(limits.bytes_max.min(4 * 1024 * 1024));
        loop {
            let position = scanner.position();
            let Some(window) = self.fetch(plan.base_offset, position, want).await? else {
                return Ok(plan.segment_end_offset);
            };
            let mut done = false;
            let need = scanner.feed(&window, |scanned, payload| {
                let offset = scanned.header.offset;
                if done || offset >= plan.end_offset {
                    done = true;
                    return;
                }
                if offset < cursor {
                    return;
                }
                let budget_left = records.len() < limits.records_max
                    && (records.is_empty() || *bytes_total < limits.bytes_max);
                if !budget_left {
                    done = true;
                    return;
                }
                *bytes_total += payload.len();
                records.push(StoredRecord {
                    offset,
                    timestamp_ms: scanned.header.timestamp_ms,
                    flags: scanned.header.flags,
                    payload: payload.to_vec(),
                });
            });
            let next = records
                .last()
                .map_or(cursor, |record| (record.offset + 1).max(cursor));
            if done {
                return Ok(next);
            }
            if scanner.next_offset() >= plan.end_offset {
                return Ok(plan.end_offset.max(next));
            }
            match need {
                None => {
                    let fault = scanner
                        .fault()
                        .map_or("unknown".to_string(), |f| f.describe());
                    let (offset, at) = (scanner.next_offset(), scanner.position());
                    return Err(self.corrupt(plan, offset, at, &fault));
                }
                Some(_) if scanner.position() > position => {
                    want = READ_WINDOW_BYTES_MIN.max(limits.bytes_max.min(4 * 1024 * 1024));
                }
                Some(frame_bytes) => {
                    // No whole frame in the window: it was too small, or the data ends.
                    if position + frame_bytes as u64 > plan.data_end_position || want >= frame_bytes
                    {
                        let offset = scanner.next_offset();
                        let reason = "record runs past the end of the data";
                        return Err(self.corrupt(plan, offset, position, reason));
                    }
                    want = frame_bytes;
                }
            }
        }
    }

    fn corrupt(&self, plan: &ReadPlan, offset: u64, position: u64, reason: &str) -> StoreError {
        warn!(segment = %plan.path.display(), offset, position, reason, "read found a bad record");
        StoreError::Corrupt {
            segment: plan.path.clone(),
            offset: Some(offset),
            position,
            reason: reason.to_string(),
        }
    }

    /// Bytes `[position, position + len)` of a segment, clamped to its data. Active-segment bytes
    /// in the tail come from memory; resident pages of a sealed map from the map; the rest from a
    /// direct read. `None` when the segment is gone.
    async fn fetch(
        &self,
        base_offset: u64,
        position: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (file, path, len) = {
            let state = self.state.borrow();
            let (segment, tail) = if state.active.base_offset == base_offset {
                (&state.active, Some(&state.tail))
            } else {
                match state.sealed.get(&base_offset) {
                    Some(segment) => (segment, None),
                    None => return Ok(None),
                }
            };
            let end = match tail {
                Some(tail) => tail.end_position(),
                None => segment.end_position,
            };
            let len = (len as u64).min(end.saturating_sub(position)) as usize;
            if let Some(bytes) = tail.and_then(|tail| tail.read(position, len)) {
                return Ok(Some(bytes));
            }
            if let Some(map) = &segment.map
                && mapped::is_resident(map, position as usize, len)
            {
                return Ok(Some(
                    map[position as usize..position as usize + len].to_vec(),
                ));
            }
            (segment.file.clone(), segment.path.clone(), len)
        };
        let bytes = file
            .read_at(position, len)
            .await
            .map_err(|error| StoreError::io("read", path, Some(position), error))?;
        Ok(Some(bytes.to_vec()))
    }
}

/// Where a read of one segment starts and stops.
struct ReadPlan {
    base_offset: u64,
    epoch: u32,
    path: PathBuf,
    start_offset: u64,
    start_position: u64,
    /// Read below this offset (segment end or watermark).
    end_offset: u64,
    segment_end_offset: u64,
    data_end_position: u64,
}

/// Picks the segment holding `offset`, or the next one after a gap.
fn locate<S: Storage>(state: &State<S>, offset: u64) -> Option<ReadPlan> {
    let in_sealed = state
        .sealed
        .range(..=offset)
        .next_back()
        .map(|(_, segment)| segment)
        .filter(|segment| offset < segment.end_offset());
    let after = || {
        state
            .sealed
            .range(offset..)
            .map(|(_, segment)| segment)
            .find(|segment| segment.record_count > 0)
    };
    let (segment, data_end_position) = match in_sealed.or_else(after) {
        Some(segment) => (segment, segment.end_position),
        None if offset < state.active.end_offset() => (&state.active, state.tail.end_position()),
        None => return None,
    };
    let target = offset.max(segment.base_offset);
    let (start_offset, start_position) = segment
        .index
        .floor(target)
        .unwrap_or((segment.base_offset, SEGMENT_HEADER_BLOCK_BYTES));
    Some(ReadPlan {
        base_offset: segment.base_offset,
        epoch: segment.epoch,
        path: segment.path.clone(),
        start_offset,
        start_position,
        end_offset: segment.end_offset(),
        segment_end_offset: segment.end_offset(),
        data_end_position,
    })
}
