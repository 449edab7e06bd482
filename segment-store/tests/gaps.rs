//! Segments with skipped pads, on real files: the writer ends a write in the middle of a block,
//! zero-fills the rest and starts the next write at the next block boundary. Recovery and reads
//! must step over those gaps, and must still cut a torn tail at the last whole record.
//!
//! The log here holds three batches of seven 1,000-byte records, each appended and synced alone;
//! the first is checkpointed as durable (the log is closed after it), so the second batch is
//! appended to a resumed segment. Both later batches begin at a block boundary after a gap, and
//! the test checks that on the file before it relies on it.
//!
//! Can catch: a reader that stops at a gap (lost records), takes zeros or a stale byte for a
//! gap's end (invented records), cuts a torn tail at the wrong record, or keeps records after a
//! hole. Cannot catch: a writer that never skips (the layout check fails instead), CRC32
//! collisions.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{
    copy_dir, first_segment_path as segment_path, open_and_check, payload, poke, run, scratch_dir,
    surgery_options as options,
};
use ruuster_segment_store::format::{BLOCK_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BLOCK_BYTES};
use ruuster_segment_store::{Level, Log, Record, StoreError};

const PAYLOAD_BYTES: usize = 1000;
const FRAME_BYTES: u64 = (RECORD_HEADER_BYTES + PAYLOAD_BYTES) as u64;
const BATCH: u64 = 7;
const BATCHES: u64 = 3;

async fn append_batch(log: &Log, batch: u64) {
    let bodies: Vec<Vec<u8>> = (batch * BATCH..(batch + 1) * BATCH)
        .map(|offset| payload(offset, PAYLOAD_BYTES))
        .collect();
    let records: Vec<Record<'_>> = bodies
        .iter()
        .zip(batch * BATCH..)
        .map(|(body, offset)| Record {
            payload: body,
            timestamp_ms: offset,
            flags: 0,
        })
        .collect();
    log.append_wait(&records, Level::Fsynced).await.unwrap();
}

fn build(dir: &Path) {
    let dir = dir.to_path_buf();
    run(async move {
        let (log, _) = Log::open(&dir, options()).await.unwrap();
        append_batch(&log, 0).await;
        log.close().await.unwrap();
        let (log, _) = Log::open(&dir, options()).await.unwrap();
        for batch in 1..BATCHES {
            append_batch(&log, batch).await;
        }
        drop(log);
    });
}

/// Where each record starts: batch 0 from the header block on; batch 1 right after it (the
/// resumed tail carries the partial block); batch 2 at the block boundary after batch 1.
fn starts() -> Vec<u64> {
    let mut starts = Vec::new();
    let mut position = SEGMENT_HEADER_BLOCK_BYTES;
    for batch in 0..BATCHES {
        if batch == 2 {
            position = position.next_multiple_of(BLOCK_BYTES);
        }
        for _ in 0..BATCH {
            starts.push(position);
            position += FRAME_BYTES;
        }
    }
    starts
}

/// Checks on the file that batch 2 starts at a block boundary after a gap of zeros.
fn check_layout(path: &Path) {
    let starts = starts();
    let gap_start = starts[13] + FRAME_BYTES;
    let boundary = starts[14];
    assert!(boundary > gap_start && boundary.is_multiple_of(BLOCK_BYTES));
    let file = fs::File::open(path).unwrap();
    let mut gap = vec![1u8; (boundary - gap_start) as usize];
    file.read_exact_at(&mut gap, gap_start).unwrap();
    assert!(gap.iter().all(|&byte| byte == 0), "the gap holds zeros");
    let mut offset = [0u8; 8];
    file.read_exact_at(&mut offset, boundary + 8).unwrap();
    assert_eq!(
        u64::from_le_bytes(offset),
        14,
        "record 14 starts at the boundary"
    );
}

/// Opens the log in `dir`, checks every durable record and returns how many there are.
fn open_and_count(dir: &Path) -> Result<u64, StoreError> {
    open_and_check(dir, PAYLOAD_BYTES).map(|(_, count)| count)
}

/// Catches: records lost at a gap on open or read, and a resumed log that cannot go on after
/// one. Appends a batch after reopening and reads all of them back through a second reopen.
#[test]
fn records_after_a_gap_survive_a_reopen_and_the_log_goes_on() {
    let dir = scratch_dir("gaps-reopen");
    build(&dir);
    check_layout(&segment_path(&dir));
    assert_eq!(open_and_count(&dir).unwrap(), BATCH * BATCHES);
    let again = dir.clone();
    run(async move {
        let (log, _) = Log::open(&again, options()).await.unwrap();
        append_batch(&log, BATCHES).await;
        log.close().await.unwrap();
    });
    assert_eq!(open_and_count(&dir).unwrap(), BATCH * (BATCHES + 1));
}

/// Catches: a torn tail cut anywhere but at the last whole record when the file ends in or
/// after a gap. Truncates at the record edges, the gap edges and every 127th byte above the
/// durable point.
#[test]
fn truncation_in_and_around_a_gap_keeps_exactly_the_whole_records() {
    let base = scratch_dir("gaps-truncate");
    build(&base.join("original"));
    check_layout(&segment_path(&base.join("original")));
    let starts = starts();
    let ends: Vec<u64> = starts.iter().map(|start| start + FRAME_BYTES).collect();
    let last_end = *ends.last().unwrap();
    let mut cuts: Vec<u64> = (starts[BATCH as usize]..=last_end).step_by(127).collect();
    for &edge in starts.iter().chain(&ends).skip(BATCH as usize) {
        cuts.extend([edge - 1, edge, edge + 1]);
    }
    cuts.retain(|&cut| cut >= ends[BATCH as usize - 1] && cut <= last_end);
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts {
        let dir = base.join(format!("cut-{cut}"));
        copy_dir(&base.join("original"), &dir);
        fs::OpenOptions::new()
            .write(true)
            .open(segment_path(&dir))
            .unwrap()
            .set_len(cut)
            .unwrap();
        let count = open_and_count(&dir).unwrap_or_else(|error| panic!("cut {cut}: {error}"));
        let whole = ends.iter().filter(|&&end| end <= cut).count() as u64;
        assert_eq!(count, whole, "cut at {cut}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

/// Catches: a record taken after a gap whose boundary record is gone (a hole), or a stale byte
/// in a gap taken for padding.
#[test]
fn a_hole_at_the_boundary_or_a_byte_in_the_gap_ends_the_records_before_the_gap() {
    let base = scratch_dir("gaps-hole");
    build(&base.join("original"));
    let starts = starts();
    let gap_start = starts[13] + FRAME_BYTES;
    for (name, position, bytes) in [
        ("hole", starts[14], vec![0u8; FRAME_BYTES as usize]),
        ("stale byte", gap_start + 100, vec![7u8]),
    ] {
        let dir = base.join(name);
        copy_dir(&base.join("original"), &dir);
        poke(&segment_path(&dir), position, &bytes);
        assert_eq!(open_and_count(&dir).unwrap(), 14, "{name}");
        // The cut is permanent: nothing after the gap comes back on the next open.
        assert_eq!(open_and_count(&dir).unwrap(), 14, "{name}, reopened");
    }
}
