//! Opening a log: find the segments, check every record, cut a torn tail, refuse damage.
//!
//! The rules, with the last durable point read from the checkpoint:
//! - A sealed segment must hold exactly the records its header promises, all valid: it was synced
//!   before it was sealed, so anything else is damage and refuses the open.
//! - Only the last segment may be unsealed. Its records are read until the first frame that does
//!   not validate (zeros, a torn or stale frame, a hole). If that point lies below the durable
//!   offset, the open is refused with the segment and offset; above it, the rest of the file is
//!   cut (truncated and preallocated again, so no stale byte survives) and the number of non-zero
//!   bytes dropped is logged. Valid records after a hole are dropped with it: none of them was
//!   ever confirmed durable, because the durable watermark is a contiguous prefix.
//! - A last segment whose header never reached the disk holds no durable record; it is removed.
//! - Fewer records than the checkpoint says are durable refuses the open.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tracing::{info, warn};

use crate::error::StoreError;
use crate::format::{
    self, BLOCK_BYTES, CHECKPOINT_FILE_BYTES, CHECKPOINT_SLOT_BYTES, Checkpoint, Fault,
    SEGMENT_HEADER_BLOCK_BYTES, SegmentHeader, align_down, align_up,
};
use crate::index_file::{self, IndexOwner};
use crate::io::{Storage, StorageFile, WriteBuffer};
use crate::log::{Options, Recovered, RecoveryReport, Segment, now_ms};
use crate::mapped;
use crate::runtime;
use crate::segment::{LiveSet, Scanner, SegmentIndex};
use crate::tail::Tail;

/// Recovery reads segments in pieces of this size.
const SCAN_CHUNK_BYTES: usize = 1024 * 1024;
const CHECKPOINT_FILE_NAME: &str = "checkpoint";
/// Spare segments are named `spare-<pid>-<n>.zeroed`; an open removes any it finds.
const SPARE_FILE_PREFIX: &str = "spare-";
const SPARE_FILE_SUFFIX: &str = ".zeroed";

/// Creates and preallocates a segment file. A full disk removes the file again and reports
/// `NoSpace`, which does not poison the log.
pub(crate) async fn create_segment_file<S: Storage>(
    storage: &S,
    path: &Path,
    options: &Options,
) -> Result<S::File, StoreError> {
    let file = storage
        .create_file(path)
        .await
        .map_err(|error| StoreError::io("create segment", path, None, error))?;
    if let Err(error) = file.preallocate(options.segment_bytes).await {
        drop(file);
        let _ = storage.remove_file(path).await;
        let no_space = error.raw_os_error() == Some(libc::ENOSPC)
            || error.kind() == io::ErrorKind::StorageFull;
        if no_space {
            warn!(segment = %path.display(), bytes = options.segment_bytes, "no space for segment");
            return Err(StoreError::NoSpace {
                path: path.to_path_buf(),
                requested_bytes: options.segment_bytes,
            });
        }
        return Err(StoreError::io("preallocate", path, None, error));
    }
    Ok(file)
}

/// Zero writes at an open or a torn-tail cut, where nothing else waits on the device.
const ZERO_FILL_CHUNK_BYTES: u64 = 1024 * 1024;

/// Zero writes of a spare beside a live log, one at a time: an append's write queues behind at
/// most one of them.
const SPARE_ZERO_FILL_CHUNK_BYTES: u64 = 128 * 1024;

/// Writes zeros over `[from, to)` (whole blocks) and syncs, so that the range holds written
/// blocks instead of fallocated (unwritten) ones. A later direct write into written blocks is a
/// plain overwrite: ext4 takes it under the shared inode lock without blocking, and its fdatasync
/// has no extent conversion to journal. A write that covers a block already written and one still
/// unwritten (as each rewrite of a partial tail block does) cannot go inline: io_uring hands it to
/// a worker thread, which costs a wake-up on the shard's own core and milliseconds of tail latency.
pub(crate) async fn zero_fill<S: Storage>(
    storage: &S,
    file: &S::File,
    path: &Path,
    from: u64,
    to: u64,
    chunk_bytes: u64,
) -> Result<(), StoreError> {
    debug_assert!(from.is_multiple_of(BLOCK_BYTES) && to.is_multiple_of(BLOCK_BYTES));
    let mut full: Option<Rc<S::Buffer>> = None;
    let mut position = from;
    while position < to {
        let len = chunk_bytes.min(to - position);
        let buffer = if len == chunk_bytes {
            full.get_or_insert_with(|| {
                let mut buffer = storage.alloc_buffer(chunk_bytes as usize);
                buffer.bytes_mut().fill(0);
                Rc::new(buffer)
            })
            .clone()
        } else {
            let mut buffer = storage.alloc_buffer(len as usize);
            buffer.bytes_mut().fill(0);
            Rc::new(buffer)
        };
        let written = file
            .write_at(buffer, position)
            .await
            .map_err(|error| StoreError::io("zero-fill", path, Some(position), error))?;
        let written = align_down(written as u64);
        if written == 0 {
            let error = io::Error::other("zero-fill write made no progress");
            return Err(StoreError::io("zero-fill", path, Some(position), error));
        }
        // A short write is picked up again at the block it stopped in.
        position += written;
    }
    file.fdatasync()
        .await
        .map_err(|error| StoreError::io("fdatasync", path, None, error))
}

/// Creates, preallocates and starts a segment: its header is written and synced before any record
/// goes in. A started segment keeps the log's next offset across a crash even when every segment
/// before it was deleted (all records dead), so offsets are never handed out twice.
pub(crate) async fn create_started_segment<S: Storage>(
    storage: &S,
    path: &Path,
    options: &Options,
    epoch: u32,
    base_offset: u64,
) -> Result<(S::File, u64), StoreError> {
    let file = create_segment_file(storage, path, options).await?;
    let created_ms = start_segment(storage, &file, path, epoch, base_offset).await?;
    Ok((file, created_ms))
}

/// Writes a new segment's header and syncs it; returns its creation time.
pub(crate) async fn start_segment<S: Storage>(
    storage: &S,
    file: &S::File,
    path: &Path,
    epoch: u32,
    base_offset: u64,
) -> Result<u64, StoreError> {
    let created_ms = now_ms();
    let header = SegmentHeader {
        version: format::SEGMENT_VERSION,
        epoch,
        base_offset,
        created_ms,
        seal: None,
    };
    let mut block = storage.alloc_buffer(SEGMENT_HEADER_BLOCK_BYTES as usize);
    block.bytes_mut().fill(0);
    format::encode_segment_header(&header, block.bytes_mut());
    let written = file
        .write_at(Rc::new(block), 0)
        .await
        .map_err(|error| StoreError::io("write", path, Some(0), error))?;
    if written as u64 != SEGMENT_HEADER_BLOCK_BYTES {
        let error = io::Error::other(format!("short header write of {written}"));
        return Err(StoreError::io("write", path, Some(0), error));
    }
    file.fdatasync()
        .await
        .map_err(|error| StoreError::io("fdatasync", path, None, error))?;
    Ok(created_ms)
}

/// Whether a directory entry is a spare segment (see [`prepare_spare`]).
pub(crate) fn is_spare_file_name(name: &str) -> bool {
    name.starts_with(SPARE_FILE_PREFIX) && name.ends_with(SPARE_FILE_SUFFIX)
}

/// Creates a zero-filled, synced segment file under a name of its own in `dir`, for a later
/// roll to rename and start, so that no segment's records go into unwritten blocks (see
/// [`zero_fill`]) and the roll does not wait for the zeros. The name is new for each spare: a
/// task of a log that was dropped while preparing one can never touch another log's spare. A
/// failure removes the file again.
pub(crate) async fn prepare_spare<S: Storage>(
    storage: &S,
    dir: &Path,
    options: &Options,
) -> Result<(PathBuf, S::File), StoreError> {
    static SPARES_COUNT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{SPARE_FILE_PREFIX}{}-{}{SPARE_FILE_SUFFIX}",
        std::process::id(),
        SPARES_COUNT.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.join(name);
    let file = create_segment_file(storage, &path, options).await?;
    let (end, chunk_bytes) = (options.segment_bytes, SPARE_ZERO_FILL_CHUNK_BYTES);
    if let Err(error) = zero_fill(storage, &file, &path, 0, end, chunk_bytes).await {
        drop(file);
        let _ = storage.remove_file(&path).await;
        return Err(error);
    }
    Ok((path, file))
}

struct ScanOutcome {
    next_offset: u64,
    end_position: u64,
    fault: Fault,
    index: SegmentIndex,
    timestamp_ms_max: u64,
}

/// Reads records from the first record position up to `limit_position`.
async fn scan_segment<F: StorageFile>(
    file: &F,
    path: &Path,
    header: &SegmentHeader,
    limit_position: u64,
    options: &Options,
) -> Result<ScanOutcome, StoreError> {
    let mut scanner = Scanner::new(
        header.base_offset,
        header.epoch,
        options.max_payload_bytes,
        SEGMENT_HEADER_BLOCK_BYTES,
    );
    let mut index = SegmentIndex::default();
    let mut timestamp_ms_max = 0u64;
    let mut carry: Vec<u8> = Vec::new();
    let mut read_position = SEGMENT_HEADER_BLOCK_BYTES;
    loop {
        if read_position >= limit_position {
            scanner.end_of_data();
            break;
        }
        let len = (SCAN_CHUNK_BYTES as u64).min(limit_position - read_position) as usize;
        let chunk = file
            .read_at(read_position, len)
            .await
            .map_err(|error| StoreError::io("read", path, Some(read_position), error))?;
        if chunk.is_empty() {
            scanner.end_of_data();
            break;
        }
        read_position += chunk.len() as u64;
        carry.extend_from_slice(&chunk);
        let window_start = scanner.position();
        scanner.feed(&carry, |scanned, _| {
            index.observe(
                scanned.header.offset,
                scanned.position,
                scanned.header.timestamp_ms,
            );
            timestamp_ms_max = timestamp_ms_max.max(scanned.header.timestamp_ms);
        });
        if scanner.fault().is_some() {
            break;
        }
        carry.drain(..(scanner.position() - window_start) as usize);
        runtime::yield_if_needed().await;
    }
    Ok(ScanOutcome {
        next_offset: scanner.next_offset(),
        end_position: scanner.position(),
        fault: scanner.fault().unwrap_or(Fault::Short),
        index,
        timestamp_ms_max,
    })
}

fn corrupt(path: &Path, offset: Option<u64>, position: u64, reason: String) -> StoreError {
    StoreError::Corrupt {
        segment: path.to_path_buf(),
        offset,
        position,
        reason,
    }
}

async fn open_checkpoint<S: Storage>(
    storage: &S,
    dir: &Path,
) -> Result<(S::File, PathBuf, Option<Checkpoint>), StoreError> {
    let path = dir.join(CHECKPOINT_FILE_NAME);
    let names = storage
        .list_dir(dir)
        .await
        .map_err(|error| StoreError::io("list directory", dir, None, error))?;
    if !names.iter().any(|name| name == CHECKPOINT_FILE_NAME) {
        let file = storage
            .create_file(&path)
            .await
            .map_err(|error| StoreError::io("create checkpoint", &path, None, error))?;
        file.preallocate(CHECKPOINT_FILE_BYTES)
            .await
            .map_err(|error| StoreError::io("preallocate", &path, None, error))?;
        storage
            .sync_dir(dir)
            .await
            .map_err(|error| StoreError::io("directory fsync", dir, None, error))?;
        return Ok((file, path, None));
    }
    let file = storage
        .open_file(&path)
        .await
        .map_err(|error| StoreError::io("open checkpoint", &path, None, error))?;
    let bytes = file
        .read_at(0, CHECKPOINT_FILE_BYTES as usize)
        .await
        .map_err(|error| StoreError::io("read checkpoint", &path, Some(0), error))?;
    let mut best: Option<Checkpoint> = None;
    for slot in 0..2u64 {
        let start = (slot * CHECKPOINT_SLOT_BYTES) as usize;
        let end = (start + CHECKPOINT_SLOT_BYTES as usize).min(bytes.len());
        if start >= end {
            continue;
        }
        match format::decode_checkpoint(&bytes[start..end]) {
            Ok(checkpoint) => {
                if best.is_none_or(|best| checkpoint.sequence > best.sequence) {
                    best = Some(checkpoint);
                }
            }
            Err(Fault::Zero) => {}
            Err(fault) => {
                let fault = fault.describe();
                warn!(path = %path.display(), slot, fault = %fault, "checkpoint slot unreadable");
            }
        }
    }
    Ok((file, path, best))
}

/// Reads and checks the index file of a sealed segment; the error says why it cannot be used.
async fn load_index<S: Storage>(
    storage: &S,
    dir: &Path,
    owner: &IndexOwner,
) -> Result<crate::segment::SegmentIndex, String> {
    let path = dir.join(index_file::index_file_name(owner.base_offset));
    let file = storage
        .open_file(&path)
        .await
        .map_err(|error| format!("missing: {error}"))?;
    let size = file.size().await.map_err(|error| error.to_string())?;
    let limit = (index_file::INDEX_HEADER_BYTES
        + 2 * 16 * index_file::INDEX_ENTRIES_MAX
        + BLOCK_BYTES as usize) as u64;
    if size > limit {
        return Err(format!("file of {size} bytes exceeds {limit}"));
    }
    let bytes = file
        .read_at(0, size as usize)
        .await
        .map_err(|error| error.to_string())?;
    index_file::decode_index(&bytes, owner).map_err(|fault| format!("{fault:?}"))
}

/// Writes the index file of a sealed segment (block-padded, fdatasync'ed). Index files are
/// derived data: no directory sync, a lost one is rebuilt on the next open.
pub(crate) async fn write_index<S: Storage>(
    storage: &S,
    dir: &Path,
    owner: &IndexOwner,
    index: &crate::segment::SegmentIndex,
) -> Result<(), StoreError> {
    let path = dir.join(index_file::index_file_name(owner.base_offset));
    match storage.remove_file(&path).await {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(StoreError::io("remove index", &path, None, error)),
    }
    let encoded = index_file::encode_index(owner, index);
    let padded = format::align_up(encoded.len() as u64) as usize;
    let mut buffer = storage.alloc_buffer(padded);
    buffer.bytes_mut()[..encoded.len()].copy_from_slice(&encoded);
    buffer.bytes_mut()[encoded.len()..].fill(0);
    let file = storage
        .create_file(&path)
        .await
        .map_err(|error| StoreError::io("create index", &path, None, error))?;
    let written = file
        .write_at(Rc::new(buffer), 0)
        .await
        .map_err(|error| StoreError::io("write index", &path, Some(0), error))?;
    if written != padded {
        let error = io::Error::other(format!("short index write of {written}"));
        return Err(StoreError::io("write index", &path, Some(0), error));
    }
    file.fdatasync()
        .await
        .map_err(|error| StoreError::io("fdatasync", &path, None, error))
}

/// The segment appends go to, with its tail.
type ActiveSegment<S> = (Segment<<S as Storage>::File>, Tail<<S as Storage>::Buffer>);

/// Runs recovery on `dir` and returns the state a log starts from.
pub(crate) async fn recover<S: Storage>(
    storage: &S,
    dir: &Path,
    options: &Options,
) -> Result<(Recovered<S::File, S::Buffer>, RecoveryReport), StoreError> {
    let started = Instant::now();
    storage
        .create_dir_all(dir)
        .await
        .map_err(|error| StoreError::io("create directory", dir, None, error))?;
    storage
        .check_directory(dir)
        .await
        .map_err(|error| StoreError::Unsupported {
            path: dir.to_path_buf(),
            reason: error.to_string(),
        })?;
    let (checkpoint_file, checkpoint_path, checkpoint) = open_checkpoint(storage, dir).await?;
    let durable_offset = checkpoint.map_or(0, |checkpoint| checkpoint.durable_offset);
    let mut report = RecoveryReport {
        checkpoint_offset: durable_offset,
        ..Default::default()
    };

    let names = storage
        .list_dir(dir)
        .await
        .map_err(|error| StoreError::io("list directory", dir, None, error))?;
    let mut bases: Vec<u64> = names
        .iter()
        .filter_map(|name| format::parse_segment_file_name(name))
        .collect();
    bases.sort_unstable();
    for name in names.iter().filter(|name| is_spare_file_name(name)) {
        // A spare prepared by an earlier run: zeros only, never part of the log.
        let path = dir.join(name);
        match storage.remove_file(&path).await {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(StoreError::io("remove spare", &path, None, error)),
        }
    }
    for name in &names {
        let orphan = name
            .strip_suffix(".idx")
            .and_then(|digits| format::parse_segment_file_name(&format!("{digits}.seg")))
            .is_some_and(|base| bases.binary_search(&base).is_err());
        if orphan {
            // The index of a segment whose deletion finished before the index's did.
            let path = dir.join(name);
            match storage.remove_file(&path).await {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(StoreError::io("remove index", &path, None, error)),
            }
        }
    }

    let mut epoch_max = checkpoint.map_or(0, |checkpoint| checkpoint.epoch_max);
    let mut sealed: BTreeMap<u64, Segment<S::File>> = BTreeMap::new();
    let mut active: Option<ActiveSegment<S>> = None;
    let mut next_offset = 0u64;
    // Headers first: files at the end whose header never reached the disk were created by a roll
    // that did not finish (the new file is created before the old one is sealed). They hold no
    // durable record and go before the rules below look at the segment they follow.
    let mut opened = Vec::with_capacity(bases.len());
    for &base_offset in &bases {
        let path = dir.join(format::segment_file_name(base_offset));
        let file = storage
            .open_file(&path)
            .await
            .map_err(|error| StoreError::io("open segment", &path, None, error))?;
        let file_bytes = file
            .size()
            .await
            .map_err(|error| StoreError::io("stat", &path, None, error))?;
        let header_bytes = file
            .read_at(0, SEGMENT_HEADER_BLOCK_BYTES as usize)
            .await
            .map_err(|error| StoreError::io("read", &path, Some(0), error))?;
        let header = format::decode_segment_header(&header_bytes);
        opened.push((base_offset, path, file, file_bytes, header));
    }
    while let Some((base_offset, path, file, _, header)) = opened.last() {
        if *base_offset < durable_offset {
            break;
        }
        let reason = match header {
            Err(fault) => fault.describe(),
            Ok(header) if header.seal.is_none() && opened.len() >= 2 => {
                // A roll starts the new segment before it seals the old one. An empty started
                // segment after an unsealed one is such an interrupted roll; the unsealed one is
                // the real end of the log.
                let previous_unsealed =
                    matches!(&opened[opened.len() - 2].4, Ok(previous) if previous.seal.is_none());
                let first_record = file
                    .read_at(SEGMENT_HEADER_BLOCK_BYTES, format::RECORD_HEADER_BYTES)
                    .await
                    .map_err(|error| StoreError::io("read", path, Some(0), error))?;
                let empty = first_record.iter().all(|&byte| byte == 0);
                if !(previous_unsealed && empty) {
                    break;
                }
                "empty segment of an interrupted roll".to_string()
            }
            Ok(_) => break,
        };
        let (_, path, file, _, _) = opened.pop().expect("checked above");
        warn!(segment = %path.display(), reason = %reason, "unstarted segment removed");
        drop(file);
        storage
            .remove_file(&path)
            .await
            .map_err(|error| StoreError::io("remove segment", &path, None, error))?;
        storage
            .sync_dir(dir)
            .await
            .map_err(|error| StoreError::io("directory fsync", dir, None, error))?;
        report.removed_files.push(path);
    }
    let opened_count = opened.len();
    for (position_in_list, (base_offset, path, file, file_bytes, header)) in
        opened.into_iter().enumerate()
    {
        let last = position_in_list + 1 == opened_count;
        let header = match header {
            Ok(header) => header,
            Err(fault) => {
                let reason = format!("segment header: {}", fault.describe());
                return Err(corrupt(&path, None, 0, reason));
            }
        };
        if header.base_offset != base_offset {
            let reason = format!("header names base offset {}", header.base_offset);
            return Err(corrupt(&path, None, 0, reason));
        }
        if base_offset < next_offset {
            let reason = format!("overlaps the previous segment, which ends at {next_offset}");
            return Err(corrupt(&path, Some(base_offset), 0, reason));
        }
        epoch_max = epoch_max.max(header.epoch);

        if let Some(seal) = header.seal {
            if seal.end_position > file_bytes {
                let reason = format!(
                    "sealed end {} beyond file size {file_bytes}",
                    seal.end_position
                );
                return Err(corrupt(&path, None, 0, reason));
            }
            let owner = IndexOwner {
                epoch: header.epoch,
                base_offset,
                seal,
            };
            let loaded = load_index(storage, dir, &owner).await;
            let expected_end = base_offset + seal.record_count;
            if !options.verify_sealed_on_open
                && let Ok(index) = loaded
            {
                // Trusted: the seal was written after the data was synced, and every read checks
                // each record's CRC.
                let map = file
                    .raw_fd()
                    .and_then(|fd| mapped::map_sealed(fd, seal.end_position).ok())
                    .map(Rc::new);
                report.records_count += seal.record_count;
                next_offset = expected_end;
                sealed.insert(
                    base_offset,
                    Segment {
                        base_offset,
                        version: header.version,
                        epoch: header.epoch,
                        path,
                        file: Rc::new(file),
                        created_ms: header.created_ms,
                        record_count: seal.record_count,
                        end_position: seal.end_position,
                        timestamp_ms_max: seal.timestamp_ms_max,
                        index,
                        live: LiveSet::default(),
                        map,
                    },
                );
                continue;
            }
            let scan = scan_segment(&file, &path, &header, seal.end_position, options).await?;
            if scan.next_offset != expected_end || scan.end_position != seal.end_position {
                let reason = format!(
                    "sealed segment promises offsets up to {expected_end} ending at byte {}; \
                     found a {} there",
                    seal.end_position,
                    scan.fault.describe()
                );
                return Err(corrupt(
                    &path,
                    Some(scan.next_offset),
                    scan.end_position,
                    reason,
                ));
            }
            if let Err(reason) = loaded {
                warn!(segment = %path.display(), reason = %reason, "segment index rebuilt");
                report.indexes_rebuilt_count += 1;
                write_index(storage, dir, &owner, &scan.index).await?;
            }
            let map = file
                .raw_fd()
                .and_then(|fd| mapped::map_sealed(fd, seal.end_position).ok())
                .map(Rc::new);
            report.records_count += seal.record_count;
            next_offset = expected_end;
            sealed.insert(
                base_offset,
                Segment {
                    base_offset,
                    version: header.version,
                    epoch: header.epoch,
                    path,
                    file: Rc::new(file),
                    created_ms: header.created_ms,
                    record_count: seal.record_count,
                    end_position: seal.end_position,
                    timestamp_ms_max: seal.timestamp_ms_max.max(scan.timestamp_ms_max),
                    index: scan.index,
                    live: LiveSet::default(),
                    map,
                },
            );
            continue;
        }

        if !last {
            return Err(corrupt(
                &path,
                None,
                0,
                "unsealed segment followed by another".into(),
            ));
        }
        let scan = scan_segment(&file, &path, &header, file_bytes, options).await?;
        if scan.next_offset < durable_offset {
            let reason = format!(
                "{} below the durable offset {durable_offset}",
                scan.fault.describe()
            );
            let (offset, position) = (scan.next_offset, scan.end_position);
            warn!(segment = %path.display(), offset, position,
                  "damage below the durable point");
            return Err(corrupt(
                &path,
                Some(scan.next_offset),
                scan.end_position,
                reason,
            ));
        }
        let dropped_bytes = cut_torn_tail(
            storage,
            &file,
            &path,
            scan.end_position,
            file_bytes,
            options,
        )
        .await?;
        if dropped_bytes > 0 {
            warn!(
                segment = %path.display(),
                offset = scan.next_offset,
                position = scan.end_position,
                dropped_bytes,
                "torn tail truncated"
            );
            report.truncated_bytes = dropped_bytes;
            report.truncated_at = Some((path.clone(), scan.next_offset, scan.end_position));
        }
        let block_start = align_down(scan.end_position);
        let partial = file
            .read_at(block_start, (scan.end_position - block_start) as usize)
            .await
            .map_err(|error| StoreError::io("read", &path, Some(block_start), error))?;
        if partial.len() as u64 != scan.end_position - block_start {
            return Err(corrupt(
                &path,
                None,
                block_start,
                "short read of the tail block".into(),
            ));
        }
        let chunk = storage.alloc_buffer(options.write_bytes_max as usize);
        let tail = Tail::resume(scan.end_position, &partial, chunk, header.version);
        report.records_count += scan.next_offset - base_offset;
        next_offset = scan.next_offset;
        let segment = Segment {
            base_offset,
            version: header.version,
            epoch: header.epoch,
            path,
            file: Rc::new(file),
            created_ms: header.created_ms,
            record_count: scan.next_offset - base_offset,
            end_position: scan.end_position,
            timestamp_ms_max: scan.timestamp_ms_max,
            index: scan.index,
            live: LiveSet::default(),
            map: None,
        };
        active = Some((segment, tail));
    }

    if next_offset < durable_offset {
        let path = bases.last().map_or(dir.to_path_buf(), |&base| {
            dir.join(format::segment_file_name(base))
        });
        let reason = format!(
            "log ends at {next_offset} but offsets below {durable_offset} were confirmed durable"
        );
        return Err(corrupt(&path, Some(next_offset), 0, reason));
    }
    let epoch_current = epoch_max.saturating_add(1).max(options.epoch_floor);
    let (active, tail) = match active {
        Some(active) => active,
        None => new_segment(storage, dir, next_offset, epoch_current, options).await?,
    };
    // What recovery read may still sit in the device's volatile cache; make it durable before the
    // log reports it as such.
    active
        .file
        .fdatasync()
        .await
        .map_err(|error| StoreError::io("fdatasync", &active.path, None, error))?;

    report.segments_count = sealed.len() + 1;
    report.first_offset = sealed
        .values()
        .next()
        .map_or(active.base_offset, |s| s.base_offset);
    report.next_offset = active.base_offset + active.record_count;
    report.elapsed = started.elapsed();
    info!(
        dir = %dir.display(),
        segments = report.segments_count,
        records = report.records_count,
        truncated_bytes = report.truncated_bytes,
        elapsed_us = report.elapsed.as_micros() as u64,
        "recovery finished"
    );
    let recovered = Recovered {
        sealed,
        active,
        tail,
        epoch_current,
        checkpoint_file: Rc::new(checkpoint_file),
        checkpoint_path,
        checkpoint_sequence: checkpoint.map_or(0, |checkpoint| checkpoint.sequence),
    };
    Ok((recovered, report))
}

/// Counts the non-zero bytes after `end_position` that a crash can have left (at most the
/// unsynced window plus one write past it), and if there are any, truncates the file at
/// `end_position`, preallocates it again so they read as zeros from now on, and (under
/// `Options::zero_fill_segments`) writes those zeros so that the blocks are written ones again
/// (see [`zero_fill`]).
async fn cut_torn_tail<S: Storage>(
    storage: &S,
    file: &S::File,
    path: &Path,
    end_position: u64,
    file_bytes: u64,
    options: &Options,
) -> Result<u64, StoreError> {
    let window_end = file_bytes
        .min(end_position + options.unsynced_bytes_max + options.write_bytes_max + BLOCK_BYTES);
    let mut last_nonzero: Option<u64> = None;
    let mut position = end_position;
    while position < window_end {
        let len = (SCAN_CHUNK_BYTES as u64).min(window_end - position) as usize;
        let bytes = file
            .read_at(position, len)
            .await
            .map_err(|error| StoreError::io("read", path, Some(position), error))?;
        if bytes.is_empty() {
            break;
        }
        if let Some(at) = bytes.iter().rposition(|&byte| byte != 0) {
            last_nonzero = Some(position + at as u64);
        }
        position += bytes.len() as u64;
        runtime::yield_if_needed().await;
    }
    let Some(last_nonzero) = last_nonzero else {
        return Ok(0);
    };
    file.truncate(end_position)
        .await
        .map_err(|error| StoreError::io("truncate", path, Some(end_position), error))?;
    let file_bytes = options.segment_bytes.max(file_bytes);
    file.preallocate(file_bytes)
        .await
        .map_err(|error| StoreError::io("preallocate", path, None, error))?;
    if options.zero_fill_segments {
        // Syncs as well.
        zero_fill(
            storage,
            file,
            path,
            align_up(end_position),
            align_down(file_bytes),
            ZERO_FILL_CHUNK_BYTES,
        )
        .await?;
    } else {
        file.fdatasync()
            .await
            .map_err(|error| StoreError::io("fdatasync", path, None, error))?;
    }
    Ok(last_nonzero + 1 - end_position)
}

async fn new_segment<S: Storage>(
    storage: &S,
    dir: &Path,
    base_offset: u64,
    epoch: u32,
    options: &Options,
) -> Result<ActiveSegment<S>, StoreError> {
    let path = dir.join(format::segment_file_name(base_offset));
    let file = create_segment_file(storage, &path, options).await?;
    if options.zero_fill_segments {
        let (end, chunk_bytes) = (options.segment_bytes, ZERO_FILL_CHUNK_BYTES);
        zero_fill(storage, &file, &path, 0, end, chunk_bytes).await?;
    }
    let created_ms = start_segment(storage, &file, &path, epoch, base_offset).await?;
    storage
        .sync_dir(dir)
        .await
        .map_err(|error| StoreError::io("directory fsync", dir, None, error))?;
    info!(segment = %path.display(), base_offset, epoch, "segment created");
    let segment = Segment {
        base_offset,
        version: format::SEGMENT_VERSION,
        epoch,
        path,
        file: Rc::new(file),
        created_ms,
        record_count: 0,
        end_position: SEGMENT_HEADER_BLOCK_BYTES,
        timestamp_ms_max: 0,
        index: SegmentIndex::default(),
        live: LiveSet::default(),
        map: None,
    };
    Ok((
        segment,
        Tail::resume(
            SEGMENT_HEADER_BLOCK_BYTES,
            &[],
            storage.alloc_buffer(options.write_bytes_max as usize),
            format::SEGMENT_VERSION,
        ),
    ))
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;
    use crate::format::{Seal, encode_checkpoint, encode_segment_header, segment_file_name};
    use crate::io::sim::SimStorage;
    use crate::log::{Level, Log, Record};

    const DIR: &str = "/sim/recovery";

    fn run<T: 'static>(future: impl Future<Output = T> + 'static) -> T {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("glommio executor starts")
            .run(future)
    }

    fn options() -> Options {
        Options {
            segment_bytes: 16 * 1024,
            max_payload_bytes: 1024,
            background_period: None,
            ..Options::default()
        }
    }

    /// 60 records of 500 bytes: several sealed segments and an active one, closed cleanly.
    fn build() -> SimStorage {
        let storage = SimStorage::new(1);
        let session = storage.session();
        run(async move {
            let (log, _) = Log::open_with(session, DIR, options()).await.unwrap();
            for tag in 0..60u8 {
                let body = [tag; 500];
                let record = Record {
                    payload: &body,
                    timestamp_ms: 1,
                    flags: 0,
                };
                log.append_wait(&[record], Level::Fsynced).await.unwrap();
            }
            assert!(log.sealed_segments().len() >= 2);
            log.close().await.unwrap();
        });
        storage
    }

    fn open(storage: &SimStorage) -> Result<RecoveryReport, StoreError> {
        let session = storage.session();
        run(async move {
            Log::open_with(session, DIR, options())
                .await
                .map(|(_, report)| report)
        })
    }

    fn segment(base_offset: u64) -> PathBuf {
        Path::new(DIR).join(segment_file_name(base_offset))
    }

    fn bases(storage: &SimStorage) -> Vec<u64> {
        let mut bases: Vec<u64> = crate::io::sim::sim_paths(storage)
            .iter()
            .filter_map(|path| format::parse_segment_file_name(path.file_name()?.to_str()?))
            .collect();
        bases.sort_unstable();
        bases
    }

    #[test]
    fn a_clean_log_reopens_with_every_record() {
        let storage = build();
        let report = open(&storage).unwrap();
        assert_eq!((report.next_offset, report.records_count), (60, 60));
        assert_eq!(report.truncated_bytes, 0);
    }

    #[test]
    fn a_trailing_segment_whose_header_never_landed_is_removed() {
        let storage = build();
        let path = segment(60);
        let session = storage.session();
        let created = path.clone();
        run(async move {
            let file = session.create_file(&created).await.unwrap();
            file.preallocate(16 * 1024).await.unwrap();
            session.sync_dir(Path::new(DIR)).await.unwrap();
        });
        let report = open(&storage).unwrap();
        assert_eq!(report.removed_files, vec![path]);
        assert!(!bases(&storage).contains(&60));
        assert_eq!(report.next_offset, 60);
    }

    #[test]
    fn an_empty_started_segment_after_an_unsealed_one_is_an_interrupted_roll_and_is_removed() {
        let storage = build();
        let path = segment(60);
        let (session, created) = (storage.session(), path.clone());
        run(async move {
            let (file, _) = create_started_segment(&session, &created, &options(), 9, 60)
                .await
                .unwrap();
            drop(file);
            session.sync_dir(Path::new(DIR)).await.unwrap();
        });
        let report = open(&storage).unwrap();
        assert_eq!(report.removed_files, vec![path]);
        assert_eq!(report.next_offset, 60);
    }

    #[test]
    fn an_unsealed_segment_followed_by_another_refuses_the_open() {
        let storage = build();
        let first = bases(&storage)[0];
        let header = SegmentHeader {
            version: format::SEGMENT_VERSION,
            epoch: 1,
            base_offset: first,
            created_ms: 0,
            seal: None,
        };
        let mut block = vec![0u8; SEGMENT_HEADER_BLOCK_BYTES as usize];
        encode_segment_header(&header, &mut block);
        storage.poke(&segment(first), 0, &block);
        let error = open(&storage).unwrap_err();
        assert!(matches!(&error, StoreError::Corrupt { segment: at, .. } if *at == segment(first)));
    }

    #[test]
    fn a_sealed_segment_missing_a_promised_record_refuses_the_open_naming_the_offset() {
        let storage = build();
        let first = bases(&storage)[0];
        let third_record = SEGMENT_HEADER_BLOCK_BYTES + 2 * (RECORD_HEADER + 500);
        storage.poke(&segment(first), third_record, &[0u8; 40]);
        match open(&storage) {
            Err(StoreError::Corrupt { offset, .. }) => assert_eq!(offset, Some(first + 2)),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn a_sealed_header_promising_more_records_than_present_refuses_the_open() {
        let storage = build();
        let first = bases(&storage)[0];
        let contents = storage.contents(&segment(first)).unwrap();
        let header = format::decode_segment_header(&contents).unwrap();
        let seal = header.seal.unwrap();
        let inflated = Seal {
            record_count: seal.record_count + 1,
            ..seal
        };
        let mut block = vec![0u8; SEGMENT_HEADER_BLOCK_BYTES as usize];
        encode_segment_header(
            &SegmentHeader {
                seal: Some(inflated),
                ..header
            },
            &mut block,
        );
        storage.poke(&segment(first), 0, &block);
        assert!(matches!(open(&storage), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn a_checkpoint_beyond_the_stored_records_refuses_the_open() {
        let storage = build();
        let checkpoint = Checkpoint {
            epoch_max: 1,
            sequence: 1_000,
            durable_offset: 70,
            segment_base_offset: 0,
            position: SEGMENT_HEADER_BLOCK_BYTES,
        };
        let mut slot = vec![0u8; CHECKPOINT_SLOT_BYTES as usize];
        encode_checkpoint(&checkpoint, &mut slot);
        storage.poke(&Path::new(DIR).join(CHECKPOINT_FILE_NAME), 0, &slot);
        match open(&storage) {
            Err(StoreError::Corrupt { reason, .. }) => {
                assert!(reason.contains("durable offset 70"))
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    const RECORD_HEADER: u64 = format::RECORD_HEADER_BYTES as u64;
}
