//! Per-segment bookkeeping that does not depend on the runtime: the sparse offset index, the time
//! index, the live-record set, and the scanner that walks a segment's records during recovery.
//!
//! Indexes are derived data. They are built while appending and rebuilt by scanning on open, so a
//! wrong index can cost a longer read, never a refused log.

use crate::format::{self, Expect, Fault, RECORD_HEADER_BYTES, RecordHeader, align_up};

/// A sparse offset index entry is added at most once per this many bytes of records.
pub const INDEX_EVERY_BYTES: u64 = 4096;

/// Sparse maps from offset to byte position and from timestamp to offset.
#[derive(Clone, Debug, Default)]
pub struct SegmentIndex {
    /// (offset, position), increasing in both.
    offsets: Vec<(u64, u64)>,
    /// (timestamp_ms, offset): an entry only when the timestamp exceeds every earlier entry.
    times: Vec<(u64, u64)>,
    last_indexed_position: Option<u64>,
}

impl SegmentIndex {
    /// Notes a record that starts at `position`.
    pub fn observe(&mut self, offset: u64, position: u64, timestamp_ms: u64) {
        let due = match self.last_indexed_position {
            None => true,
            Some(last) => position >= last + INDEX_EVERY_BYTES,
        };
        if !due {
            return;
        }
        self.last_indexed_position = Some(position);
        debug_assert!(self.offsets.last().is_none_or(|&(last, _)| last < offset));
        self.offsets.push((offset, position));
        if self
            .times
            .last()
            .is_none_or(|&(last, _)| timestamp_ms > last)
        {
            self.times.push((timestamp_ms, offset));
        }
    }

    /// The indexed record at or before `offset`: where a reader may start to find `offset`.
    pub fn floor(&self, offset: u64) -> Option<(u64, u64)> {
        let at = self
            .offsets
            .partition_point(|&(indexed, _)| indexed <= offset);
        at.checked_sub(1).map(|at| self.offsets[at])
    }

    /// An offset at or before the first record whose timestamp may be at least `timestamp_ms`.
    pub fn offset_before_time(&self, timestamp_ms: u64) -> Option<u64> {
        let at = self.times.partition_point(|&(time, _)| time < timestamp_ms);
        at.checked_sub(1).map(|at| self.times[at].1)
    }

    pub fn entries_count(&self) -> usize {
        self.offsets.len()
    }

    /// (offset, position) entries, for persisting.
    pub fn offset_entries(&self) -> &[(u64, u64)] {
        &self.offsets
    }

    /// (timestamp_ms, offset) entries, for persisting.
    pub fn time_entries(&self) -> &[(u64, u64)] {
        &self.times
    }

    /// An index from entries that `index_file` has checked for order and range.
    pub fn from_entries(offsets: Vec<(u64, u64)>, times: Vec<(u64, u64)>) -> Self {
        let last_indexed_position = offsets.last().map(|&(_, position)| position);
        SegmentIndex {
            offsets,
            times,
            last_indexed_position,
        }
    }
}

/// Which records of a segment the caller still needs. Counts live only in memory; after a restart
/// the caller re-marks dead records while it replays (see the crate docs).
#[derive(Clone, Debug, Default)]
pub struct LiveSet {
    dead_bits: Vec<u64>,
    dead_count: u64,
}

impl LiveSet {
    /// Marks the record at `index` (offset minus base) dead. Returns false if it already was.
    pub fn mark_dead(&mut self, index: u64) -> bool {
        let word = (index / 64) as usize;
        let bit = 1u64 << (index % 64);
        if self.dead_bits.len() <= word {
            self.dead_bits.resize(word + 1, 0);
        }
        if self.dead_bits[word] & bit != 0 {
            return false;
        }
        self.dead_bits[word] |= bit;
        self.dead_count += 1;
        true
    }

    pub fn is_dead(&self, index: u64) -> bool {
        let word = (index / 64) as usize;
        self.dead_bits
            .get(word)
            .is_some_and(|bits| bits & (1u64 << (index % 64)) != 0)
    }

    pub fn dead_count(&self) -> u64 {
        self.dead_count
    }
}

/// One record found by a scan.
#[derive(Clone, Copy, Debug)]
pub struct Scanned {
    pub header: RecordHeader,
    pub position: u64,
}

/// What a window holds at one place.
enum Frame {
    /// A whole, valid record of this many bytes.
    Valid(RecordHeader, usize),
    /// The window must reach this many bytes from its start to tell.
    Needs(usize),
    Bad(Fault),
}

/// Incremental record parser over a byte window of a segment. The caller feeds the bytes from
/// `position()` onwards; the scanner never asks for more than one frame beyond what it has.
#[derive(Debug)]
pub struct Scanner {
    expect: Expect,
    position: u64,
    fault: Option<Fault>,
}

impl Scanner {
    pub fn new(first_offset: u64, epoch: u32, max_payload_bytes: usize, position: u64) -> Self {
        Scanner {
            expect: Expect {
                offset: first_offset,
                epoch,
                max_payload_bytes,
            },
            position,
            fault: None,
        }
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn next_offset(&self) -> u64 {
        self.expect.offset
    }

    pub fn fault(&self) -> Option<Fault> {
        self.fault
    }

    /// Parses records from `window`, which starts at `position()`. Stops at the first fault or
    /// when the window holds no whole frame. Returns how many bytes the next frame needs when the
    /// window was too short for it (`None` after a fault or when nothing is missing).
    ///
    /// Where an all-zero record header stands at least [`RECORD_HEADER_BYTES`] before a block
    /// boundary and zeros run up to it, the writer may have skipped the rest of the block (see
    /// `crate::format`): the next record is looked for at the boundary. The gap is taken only
    /// together with a valid record after it, so at the end of the data the position stays at the
    /// end of the last record.
    pub fn feed(&mut self, window: &[u8], mut visit: impl FnMut(&Scanned, &[u8])) -> Option<usize> {
        let mut consumed = 0usize;
        loop {
            let rest = &window[consumed..];
            let (gap, header, frame_bytes) = match self.frame_at(rest, 0) {
                Frame::Valid(header, frame_bytes) => (0, header, frame_bytes),
                Frame::Needs(bytes) => return Some(bytes),
                Frame::Bad(Fault::Zero) => {
                    let gap = (align_up(self.position) - self.position) as usize;
                    if gap < RECORD_HEADER_BYTES {
                        self.fault = Some(Fault::Zero);
                        return None;
                    }
                    if rest.len() < gap {
                        return Some(gap + RECORD_HEADER_BYTES);
                    }
                    if rest[..gap].iter().any(|&byte| byte != 0) {
                        self.fault = Some(Fault::Zero);
                        return None;
                    }
                    match self.frame_at(rest, gap) {
                        Frame::Valid(header, frame_bytes) => (gap, header, frame_bytes),
                        Frame::Needs(bytes) => return Some(bytes),
                        // Zeros past the boundary as well, or bytes that do not follow on: the
                        // records end before the gap.
                        Frame::Bad(_) => {
                            self.fault = Some(Fault::Zero);
                            return None;
                        }
                    }
                }
                Frame::Bad(fault) => {
                    self.fault = Some(fault);
                    return None;
                }
            };
            let start = gap + RECORD_HEADER_BYTES;
            let scanned = Scanned {
                header,
                position: self.position + gap as u64,
            };
            visit(&scanned, &rest[start..gap + frame_bytes]);
            self.position += (gap + frame_bytes) as u64;
            self.expect.offset += 1;
            consumed += gap + frame_bytes;
        }
    }

    /// The expected record `at` bytes into `rest`.
    fn frame_at(&self, rest: &[u8], at: usize) -> Frame {
        let bytes = &rest[at..];
        match format::peek_record(bytes, &self.expect) {
            Err(Fault::Short) => Frame::Needs(at + RECORD_HEADER_BYTES),
            Err(fault) => Frame::Bad(fault),
            Ok(peeked) => {
                let frame_bytes = RECORD_HEADER_BYTES + peeked.payload_bytes as usize;
                if bytes.len() < frame_bytes {
                    return Frame::Needs(at + frame_bytes);
                }
                match format::decode_record(bytes, &self.expect) {
                    Ok(header) => Frame::Valid(header, frame_bytes),
                    Err(fault) => Frame::Bad(fault),
                }
            }
        }
    }

    /// Marks the scan as ended by the end of the data rather than a bad frame.
    pub fn end_of_data(&mut self) {
        if self.fault.is_none() {
            self.fault = Some(Fault::Short);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{BLOCK_BYTES, encode_record};

    const BLOCK: usize = BLOCK_BYTES as usize;

    fn records(first_offset: u64, count: u64, payload_bytes: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for offset in first_offset..first_offset + count {
            let header = RecordHeader {
                payload_bytes: payload_bytes as u32,
                offset,
                epoch: 1,
                flags: 0,
                timestamp_ms: offset * 10,
            };
            encode_record(&header, &vec![offset as u8; payload_bytes], &mut bytes);
        }
        bytes
    }

    #[test]
    fn the_scanner_finds_every_record_and_asks_for_the_rest_of_a_split_frame() {
        let bytes = records(5, 10, 100);
        let mut scanner = Scanner::new(5, 1, 1024, 4096);
        let mut seen = Vec::new();
        let need = scanner.feed(&bytes[..300], |record, _| seen.push(record.header.offset));
        assert_eq!(seen, vec![5, 6]);
        assert_eq!(need, Some(132));
        let consumed = (scanner.position() - 4096) as usize;
        scanner.feed(&bytes[consumed..], |record, _| {
            seen.push(record.header.offset)
        });
        assert_eq!(seen, (5..15).collect::<Vec<_>>());
        assert_eq!(scanner.next_offset(), 15);
    }

    #[test]
    fn the_scanner_stops_at_zeros_and_at_damage() {
        let mut bytes = records(0, 3, 10);
        bytes.extend_from_slice(&[0; 64]);
        let mut scanner = Scanner::new(0, 1, 1024, 0);
        // Zeros before a block boundary may be a skipped pad: it asks for the boundary.
        assert_eq!(scanner.feed(&bytes, |_, _| {}), Some(BLOCK - 126 + 32));
        bytes.resize(2 * BLOCK, 0);
        let mut scanner = Scanner::new(0, 1, 1024, 0);
        assert_eq!(scanner.feed(&bytes, |_, _| {}), None);
        assert_eq!(scanner.fault(), Some(Fault::Zero));
        assert_eq!(scanner.next_offset(), 3);
        assert_eq!(
            scanner.position(),
            126,
            "the end of the last record, not the boundary"
        );

        let mut damaged = records(0, 3, 10);
        damaged[42 + 35] ^= 4;
        let mut scanner = Scanner::new(0, 1, 1024, 0);
        scanner.feed(&damaged, |_, _| {});
        assert_eq!(scanner.fault(), Some(Fault::BadCrc));
        assert_eq!(scanner.next_offset(), 1);
    }

    /// `count` records of `payload_bytes` from `first_offset`, each batch of `per_block` of them
    /// starting at a block boundary, as the writer lays them out when it skips pads.
    fn records_with_gaps(first_offset: u64, count: u64, per_block: u64, payload: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut offset = first_offset;
        while offset < first_offset + count {
            let batch = per_block.min(first_offset + count - offset);
            bytes.extend_from_slice(&records(offset, batch, payload));
            bytes.resize(bytes.len().next_multiple_of(BLOCK), 0);
            offset += batch;
        }
        bytes
    }

    #[test]
    fn the_scanner_steps_over_a_skipped_pad_to_the_record_at_the_boundary() {
        let bytes = records_with_gaps(7, 12, 5, 300);
        for split in [0, 1, 1600, 1700, BLOCK - 1, BLOCK, BLOCK + 40, bytes.len()] {
            let mut scanner = Scanner::new(7, 1, 1024, 0);
            let mut seen = Vec::new();
            let mut fed = 0;
            for window_end in [split, bytes.len()] {
                if window_end < fed {
                    continue;
                }
                let start = scanner.position() as usize;
                scanner.feed(&bytes[start..window_end], |record, payload| {
                    assert_eq!(payload, &vec![record.header.offset as u8; 300][..]);
                    seen.push((record.header.offset, record.position));
                });
                fed = window_end;
            }
            scanner.end_of_data();
            let offsets: Vec<u64> = seen.iter().map(|&(offset, _)| offset).collect();
            assert_eq!(offsets, (7..19).collect::<Vec<_>>(), "split {split}");
            assert_eq!(
                seen[5].1, BLOCK as u64,
                "the sixth record starts the second block"
            );
            assert_eq!(seen[10].1, 2 * BLOCK as u64);
            assert_eq!(scanner.position(), 2 * BLOCK as u64 + 2 * 332);
        }
    }

    #[test]
    fn a_gap_is_taken_only_when_zeros_fill_it_and_the_expected_record_follows() {
        let clean = records_with_gaps(0, 10, 5, 300);
        let first_end = 5 * 332;
        // Bytes in the gap, a record with the wrong offset after it, a pad too short for a
        // header: each ends the records at the last good one.
        let mut stale = clean.clone();
        stale[BLOCK - 1] = 9;
        let mut wrong = records_with_gaps(0, 5, 5, 300);
        wrong.extend_from_slice(&records_with_gaps(6, 5, 5, 300));
        for (name, bytes) in [("stale byte", stale), ("wrong offset", wrong)] {
            let mut scanner = Scanner::new(0, 1, 1024, 0);
            scanner.feed(&bytes, |_, _| {});
            assert_eq!(scanner.fault(), Some(Fault::Zero), "{name}");
            assert_eq!(
                (scanner.next_offset(), scanner.position()),
                (5, first_end as u64)
            );
        }
        let payload = BLOCK - RECORD_HEADER_BYTES - 10;
        let mut short = records(0, 1, payload);
        short.resize(BLOCK, 0);
        short.extend_from_slice(&records(1, 1, 10));
        let mut scanner = Scanner::new(0, 1, BLOCK, 0);
        scanner.feed(&short, |_, _| {});
        assert!(scanner.fault().is_some());
        assert_eq!(
            scanner.next_offset(),
            1,
            "a pad under a header's size is never skipped"
        );
        assert_eq!(scanner.position(), BLOCK as u64 - 10);
    }

    #[test]
    fn the_sparse_index_finds_a_start_at_or_before_any_offset() {
        let mut index = SegmentIndex::default();
        for offset in 0..1000u64 {
            index.observe(offset, 4096 + offset * 100, offset);
        }
        assert!(
            index.entries_count() < 40,
            "index is sparse: {}",
            index.entries_count()
        );
        for offset in 0..1000u64 {
            let (found, position) = index.floor(offset).unwrap();
            assert!(found <= offset);
            assert_eq!(position, 4096 + found * 100);
            assert!(offset - found <= 41);
        }
        assert_eq!(index.offset_before_time(0), None);
        assert!(index.offset_before_time(500).unwrap() <= 500);
    }

    #[test]
    fn marking_a_record_dead_twice_counts_once() {
        let mut live = LiveSet::default();
        assert!(live.mark_dead(130));
        assert!(!live.mark_dead(130));
        assert!(live.is_dead(130));
        assert!(!live.is_dead(129));
        assert_eq!(live.dead_count(), 1);
    }
}
