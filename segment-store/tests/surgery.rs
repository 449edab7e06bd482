//! Byte surgery on real segment files between a close and an open. Every log here has three
//! records below the checkpointed durable point and three above it (appended and synced after the
//! last checkpoint), so each edit lands on a known side of the rule: above, recovery cuts and
//! logs; below, it refuses and names the segment and offset.
//!
//! Can catch: a recovery that panics, allocates from a damaged length, invents a record from
//! padding or stale bytes, keeps records after a hole, or accepts damage below the durable
//! point. Cannot catch: damage that a CRC32 collides with (one in four billion per record).

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{
    copy_dir, first_segment_path as segment_path, open_and_check, payload, poke, run, scratch_dir,
    surgery_options as options,
};
use ruuster_segment_store::format::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BLOCK_BYTES};
use ruuster_segment_store::{Level, Log, Record, RecoveryReport, StoreError};

const PAYLOAD_BYTES: usize = 60;
const FRAME_BYTES: u64 = (RECORD_HEADER_BYTES + PAYLOAD_BYTES) as u64;
const DURABLE_COUNT: u64 = 3;
const ALL_COUNT: u64 = 6;

/// Byte position of record `offset` in the first segment.
fn position(offset: u64) -> u64 {
    SEGMENT_HEADER_BLOCK_BYTES + offset * FRAME_BYTES
}

/// Builds the log: records 0..3 checkpointed as durable, 3..6 synced after the checkpoint.
fn build(dir: &Path) {
    let dir = dir.to_path_buf();
    run(async move {
        let (log, _) = Log::open(&dir, options()).await.unwrap();
        for offset in 0..DURABLE_COUNT {
            let body = payload(offset, PAYLOAD_BYTES);
            let record = Record {
                payload: &body,
                timestamp_ms: offset,
                flags: 0,
            };
            log.append_wait(&[record], Level::Fsynced).await.unwrap();
        }
        log.close().await.unwrap();
        let (log, _) = Log::open(&dir, options()).await.unwrap();
        for offset in DURABLE_COUNT..ALL_COUNT {
            let body = payload(offset, PAYLOAD_BYTES);
            let record = Record {
                payload: &body,
                timestamp_ms: offset,
                flags: 0,
            };
            log.append_wait(&[record], Level::Fsynced).await.unwrap();
        }
        drop(log);
    });
}

/// Opens the copy in `dir` and checks every record it returns.
fn open_and_check_all(dir: &Path) -> Result<(RecoveryReport, u64), StoreError> {
    open_and_check(dir, PAYLOAD_BYTES)
}

fn corrupt_offset(result: Result<(RecoveryReport, u64), StoreError>) -> (PathBuf, Option<u64>) {
    match result {
        Err(StoreError::Corrupt {
            segment, offset, ..
        }) => (segment, offset),
        other => panic!("expected a refused open, got {other:?}"),
    }
}

/// Catches: a torn tail cut at the wrong record, a partial record kept, a refusal above the
/// durable point. Truncates at every byte of the three records above the durable point.
#[test]
fn truncation_at_every_byte_above_the_durable_point_keeps_the_whole_records() {
    let base = scratch_dir("surgery-truncate");
    build(&base.join("original"));
    for cut in position(DURABLE_COUNT)..=position(ALL_COUNT) {
        let dir = base.join(format!("cut-{cut}"));
        copy_dir(&base.join("original"), &dir);
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(&dir))
            .unwrap();
        file.set_len(cut).unwrap();
        drop(file);
        let (_, count) =
            open_and_check_all(&dir).unwrap_or_else(|error| panic!("cut {cut}: {error}"));
        assert_eq!(
            count,
            (cut - SEGMENT_HEADER_BLOCK_BYTES) / FRAME_BYTES,
            "cut at {cut}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

/// Catches: zeros read as records, or a refusal of a zero-filled tail above the durable point.
#[test]
fn a_zero_filled_tail_is_cut() {
    let base = scratch_dir("surgery-zero");
    build(&base);
    let zeros = vec![0u8; (2 * FRAME_BYTES) as usize];
    poke(&segment_path(&base), position(ALL_COUNT - 2), &zeros);
    let (report, count) = open_and_check_all(&base).unwrap();
    assert_eq!(count, ALL_COUNT - 2);
    assert_eq!(report.truncated_bytes, 0, "zeros are not dropped bytes");
}

/// Catches: damage below the durable point taken for a torn tail (silent loss of confirmed data).
#[test]
fn one_flipped_bit_below_the_durable_point_refuses_the_open_naming_segment_and_offset() {
    let base = scratch_dir("surgery-flip");
    build(&base);
    let path = segment_path(&base);
    let at = position(1) + RECORD_HEADER_BYTES as u64 + 7;
    let mut byte = [0u8];
    fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut byte, at)
        .unwrap();
    poke(&path, at, &[byte[0] ^ 0x08]);
    let (segment, offset) = corrupt_offset(open_and_check_all(&base));
    assert_eq!(segment, path);
    assert_eq!(offset, Some(1));
}

/// Catches: a huge length trusted (allocation, panic), above and below the durable point.
#[test]
fn a_huge_length_field_is_cut_above_and_refused_below_the_durable_point() {
    let above = scratch_dir("surgery-length-above");
    build(&above);
    poke(&segment_path(&above), position(4), &u32::MAX.to_le_bytes());
    let (report, count) = open_and_check_all(&above).unwrap();
    assert_eq!(count, 4);
    assert!(report.truncated_bytes > 0);

    let below = scratch_dir("surgery-length-below");
    build(&below);
    poke(
        &segment_path(&below),
        position(2),
        &(u32::MAX - 1).to_le_bytes(),
    );
    let (_, offset) = corrupt_offset(open_and_check_all(&below));
    assert_eq!(offset, Some(2));
}

/// Catches: valid records after a hole kept (they were never durable and would make the log
/// non-contiguous), and a silent cut (the dropped bytes must be reported).
#[test]
fn a_hole_before_valid_records_above_the_durable_point_drops_everything_after_it() {
    let base = scratch_dir("surgery-hole");
    build(&base);
    let zeros = vec![0u8; FRAME_BYTES as usize];
    poke(&segment_path(&base), position(3), &zeros);
    let (report, count) = open_and_check_all(&base).unwrap();
    assert_eq!(count, 3);
    // The span from the hole to the last non-zero byte: the hole and the two records after it.
    assert!(report.truncated_bytes > 2 * FRAME_BYTES && report.truncated_bytes <= 3 * FRAME_BYTES);
    let (path, offset, at) = report.truncated_at.unwrap();
    assert_eq!((path, offset, at), (segment_path(&base), 3, position(3)));
    // The cut is permanent: the dropped records do not come back on the next open.
    let (report, count) = open_and_check_all(&base).unwrap();
    assert_eq!((count, report.truncated_bytes), (3, 0));
}
