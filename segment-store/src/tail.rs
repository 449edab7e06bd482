//! The in-memory tail of the active segment: appended frames not yet known to be written, held in
//! the buffers their writes send, and the plan of those writes.
//!
//! Frames are copied once, from the caller's payload into direct-I/O buffers of `write_bytes_max`
//! bytes ("chunks"). A write sends a chunk's buffer as it is, shared with the tail so that reads
//! of data in flight still find it; nothing writes through the shared `Rc`, so a dispatched buffer
//! never changes (trap S3). A chunk is cut off for a write ("sealed") in one of three ways:
//!
//! - *full*, while an append fills it; its write starts as soon as the pipeline has room;
//! - *at whole blocks*, when other writes are in flight: the bytes of its last partial block move
//!   to the next chunk, so that consecutive writes share no block and can run together;
//! - *padded and skipped*, in a segment whose format allows gaps (see `crate::format`): the last
//!   partial block is zero-filled and written now, and the next chunk starts at the next block
//!   boundary. Readers step over the zeros. Consecutive writes share no block, so the newest
//!   records go out at once even while earlier writes are in flight. Not done when fewer than
//!   [`PADDING_SKIP_MIN_BYTES`] would be left (the zeros must hold a whole record header, which
//!   is how readers tell padding from a record) nor when the pad is more than a quarter of the
//!   write (the gaps would waste file space);
//! - *padded and carried*, otherwise, when no write is in flight: the last partial block is
//!   zero-filled and written now, so that the newest records do not wait for more appends. Its
//!   bytes move to the next chunk as well, whose write rewrites that block and may start only
//!   once this one has completed.
//!
//! Hence at most one write is in flight per 4 KiB block, at most `writes_in_flight_max` writes are
//! in flight, and a chunk can be written while earlier ones are still in flight and appenders fill
//! the next. Writes complete in any order; the written position is the end of the contiguous
//! prefix of completed writes, and the written offset moves only past whole batches below it.
//!
//! Cost: a chunk cut short keeps its whole `write_bytes_max` allocation until its write completes
//! (at most `writes_in_flight_max` of them at a time), and each cut allocates the next chunk.

use std::collections::VecDeque;
use std::rc::Rc;

use crate::format::{BLOCK_BYTES, RECORD_HEADER_BYTES, SEGMENT_VERSION, align_down, align_up};
use crate::io::WriteBuffer;

/// Fewest zero bytes a skipped pad may leave before the next block: one all-zero record header,
/// which no record has (epochs start at 1).
pub(crate) const PADDING_SKIP_MIN_BYTES: u64 = RECORD_HEADER_BYTES as u64;

/// A pad is skipped only when it is at most this fraction (1/n) of its write, which bounds the
/// file space gaps take. A small write, as a lone record at a low rate sends, carries its block.
const SKIPPED_PAD_SHARE_MAX: u64 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteState {
    Waiting,
    InFlight(u64),
    Done,
}

/// A chunk cut off for a write: `buffer` goes to `position` in the file.
struct Sealed<B> {
    position: u64,
    /// End of the record bytes; the buffer runs on with zeros to the next block boundary.
    data_end: u64,
    buffer: Rc<B>,
    write: WriteState,
}

impl<B: WriteBuffer> Sealed<B> {
    fn block_end(&self) -> u64 {
        self.position + self.buffer.bytes().len() as u64
    }

    fn data(&self) -> &[u8] {
        &self.buffer.bytes()[..(self.data_end - self.position) as usize]
    }
}

/// The chunk appends go into: `len` bytes from `position`, room for `capacity_bytes`.
struct Filling<B> {
    position: u64,
    buffer: B,
    len: usize,
}

/// A write to run: the whole of `buffer` at `position`.
pub(crate) struct ChunkWrite<B> {
    pub id: u64,
    pub position: u64,
    pub buffer: Rc<B>,
    /// The write leaves the rest of its last block as a gap.
    pub skips_pad: bool,
}

enum Plan {
    /// Submit the sealed chunk at this index.
    Sealed(usize),
    /// Seal the filling chunk with its record bytes ending at `cut`, then submit it; `skips_pad`:
    /// the next chunk starts at the next block boundary instead of carrying the partial block.
    Cut { cut: u64, skips_pad: bool },
}

pub(crate) struct Tail<B> {
    /// Chunks cut off for writes, in file order, until they and every one before are written.
    sealed: VecDeque<Sealed<B>>,
    filling: Filling<B>,
    capacity_bytes: usize,
    in_flight_count: usize,
    /// Record bytes before this position belong to a write already submitted.
    submitted_position: u64,
    /// End of the contiguous prefix of completed writes.
    pub written_position: u64,
    /// (end position, next offset) of appended batches not yet written.
    batch_ends: VecDeque<(u64, u64)>,
    /// End position of the last batch that is fully written.
    pub written_boundary_position: u64,
    pub durable_position: u64,
    /// The segment's format lets a padded write's next chunk start at the next block.
    skips_padding: bool,
}

impl<B: WriteBuffer> Tail<B> {
    /// A tail whose file already holds everything before `end_position`, of which the last
    /// partial block is `partial_block`. `buffer` is the first chunk; its length is the chunk
    /// capacity (`write_bytes_max`), a positive multiple of the block size. Pads are skipped only
    /// in a segment of `segment_version` [`SEGMENT_VERSION`], whose format allows gaps.
    pub(crate) fn resume(
        end_position: u64,
        partial_block: &[u8],
        mut buffer: B,
        segment_version: u32,
    ) -> Self {
        let position = align_down(end_position);
        assert_eq!(partial_block.len() as u64, end_position - position);
        let capacity_bytes = buffer.bytes().len();
        assert!(capacity_bytes as u64 >= BLOCK_BYTES);
        assert!((capacity_bytes as u64).is_multiple_of(BLOCK_BYTES));
        buffer.bytes_mut()[..partial_block.len()].copy_from_slice(partial_block);
        Tail {
            sealed: VecDeque::new(),
            filling: Filling {
                position,
                buffer,
                len: partial_block.len(),
            },
            capacity_bytes,
            in_flight_count: 0,
            submitted_position: end_position,
            written_position: end_position,
            batch_ends: VecDeque::new(),
            written_boundary_position: end_position,
            durable_position: end_position,
            skips_padding: segment_version == SEGMENT_VERSION,
        }
    }

    /// Position after the last appended byte.
    pub(crate) fn end_position(&self) -> u64 {
        self.filling.position + self.filling.len as u64
    }

    /// First position the tail holds; everything before it is written.
    pub(crate) fn start_position(&self) -> u64 {
        self.sealed
            .front()
            .map_or(self.filling.position, |chunk| chunk.position)
    }

    /// Copies `bytes` to the end of the tail, sealing each chunk it fills. `allocate` returns a
    /// fresh chunk buffer of the capacity.
    pub(crate) fn append(&mut self, mut bytes: &[u8], mut allocate: impl FnMut() -> B) {
        while !bytes.is_empty() {
            let len = self.filling.len;
            let taken = (self.capacity_bytes - len).min(bytes.len());
            self.filling.buffer.bytes_mut()[len..len + taken].copy_from_slice(&bytes[..taken]);
            self.filling.len += taken;
            bytes = &bytes[taken..];
            if self.filling.len == self.capacity_bytes {
                let next_position = self.filling.position + self.capacity_bytes as u64;
                let fresh = self.fresh_filling(next_position, &mut allocate);
                let full = std::mem::replace(&mut self.filling, fresh);
                self.sealed.push_back(Sealed {
                    position: full.position,
                    data_end: next_position,
                    buffer: Rc::new(full.buffer),
                    write: WriteState::Waiting,
                });
            }
        }
    }

    fn fresh_filling(&self, position: u64, allocate: &mut impl FnMut() -> B) -> Filling<B> {
        let buffer = allocate();
        assert_eq!(buffer.bytes().len(), self.capacity_bytes);
        Filling {
            position,
            buffer,
            len: 0,
        }
    }

    /// Records that a batch ends at the current end, with `next_offset` after it.
    pub(crate) fn push_batch_end(&mut self, next_offset: u64) {
        let end_position = self.end_position();
        self.batch_ends.push_back((end_position, next_offset));
    }

    pub(crate) fn writes_in_flight(&self) -> usize {
        self.in_flight_count
    }

    /// True when a write in flight covers the block that starts at `position`.
    fn block_busy(&self, position: u64) -> bool {
        self.sealed.iter().any(|chunk| {
            matches!(chunk.write, WriteState::InFlight(_))
                && chunk.position <= position
                && position < chunk.block_end()
        })
    }

    fn plan(&self, writes_in_flight_max: usize) -> Option<Plan> {
        if self.in_flight_count >= writes_in_flight_max {
            return None;
        }
        if let Some(index) = self
            .sealed
            .iter()
            .position(|chunk| chunk.write == WriteState::Waiting)
        {
            let position = self.sealed[index].position;
            return (!self.block_busy(position)).then_some(Plan::Sealed(index));
        }
        let end = self.end_position();
        if self.submitted_position >= end || self.block_busy(self.filling.position) {
            return None;
        }
        let skips_pad = self.skips_padding_at(end);
        let cut = if self.in_flight_count == 0 || skips_pad {
            end
        } else {
            align_down(end)
        };
        (cut > self.filling.position).then_some(Plan::Cut { cut, skips_pad })
    }

    /// True when a write of the filling chunk whose records end at `end` leaves the rest of its
    /// last block as a gap.
    fn skips_padding_at(&self, end: u64) -> bool {
        let pad = align_up(end) - end;
        let write_len = align_up(end) - self.filling.position;
        self.skips_padding
            && pad >= PADDING_SKIP_MIN_BYTES
            && pad * SKIPPED_PAD_SHARE_MAX <= write_len
    }

    /// True when [`Tail::next_write`] would return a write.
    pub(crate) fn can_write(&self, writes_in_flight_max: usize) -> bool {
        self.plan(writes_in_flight_max).is_some()
    }

    /// The next write to submit, if the rules above allow one now; it counts as in flight from
    /// here on. `allocate` is called when the filling chunk is sealed.
    pub(crate) fn next_write(
        &mut self,
        id: u64,
        writes_in_flight_max: usize,
        mut allocate: impl FnMut() -> B,
    ) -> Option<ChunkWrite<B>> {
        let (index, skips_pad) = match self.plan(writes_in_flight_max)? {
            Plan::Sealed(index) => (index, false),
            Plan::Cut { cut, skips_pad } => {
                self.cut_filling(cut, skips_pad, &mut allocate);
                (self.sealed.len() - 1, skips_pad)
            }
        };
        let chunk = &mut self.sealed[index];
        chunk.write = WriteState::InFlight(id);
        self.in_flight_count += 1;
        self.submitted_position = self.submitted_position.max(chunk.data_end);
        Some(ChunkWrite {
            id,
            position: chunk.position,
            buffer: chunk.buffer.clone(),
            skips_pad,
        })
    }

    /// Seals the filling chunk with its record bytes ending at `cut` (its end, or the last block
    /// boundary before it). The next chunk starts at the next block boundary when `skips_pad`,
    /// else the bytes of the end's partial block start it.
    fn cut_filling(&mut self, cut: u64, skips_pad: bool, allocate: &mut impl FnMut() -> B) {
        let end = self.end_position();
        let next_position = if skips_pad {
            align_up(end)
        } else {
            align_down(end)
        };
        let mut next = self.fresh_filling(next_position, allocate);
        let carry_from = ((next_position - self.filling.position) as usize).min(self.filling.len);
        let carried = &self.filling.buffer.bytes()[carry_from..self.filling.len];
        next.buffer.bytes_mut()[..carried.len()].copy_from_slice(carried);
        next.len = carried.len();

        let old = std::mem::replace(&mut self.filling, next);
        let mut buffer = old.buffer;
        let data_len = (cut - old.position) as usize;
        let write_len = (align_up(cut) - old.position) as usize;
        buffer.bytes_mut()[data_len..write_len].fill(0);
        buffer.shorten(write_len);
        self.sealed.push_back(Sealed {
            position: old.position,
            data_end: cut,
            buffer: Rc::new(buffer),
            write: WriteState::Waiting,
        });
    }

    /// Marks write `id` complete. Returns the next offset of the last batch that became fully
    /// written, if any did.
    pub(crate) fn complete(&mut self, id: u64) -> Option<u64> {
        let chunk = self
            .sealed
            .iter_mut()
            .find(|chunk| chunk.write == WriteState::InFlight(id))?;
        chunk.write = WriteState::Done;
        self.in_flight_count -= 1;
        while let Some(front) = self.sealed.front() {
            if front.write != WriteState::Done {
                break;
            }
            self.written_position = self.written_position.max(front.data_end);
            self.sealed.pop_front();
        }
        let mut written_offset = None;
        while let Some(&(end_position, next_offset)) = self.batch_ends.front() {
            if end_position > self.written_position {
                break;
            }
            self.written_boundary_position = end_position;
            written_offset = Some(next_offset);
            self.batch_ends.pop_front();
        }
        written_offset
    }

    /// The record bytes of chunk `index` (the sealed ones, then the filling one) with its
    /// position.
    fn piece(&self, index: usize) -> (u64, &[u8]) {
        match self.sealed.get(index) {
            Some(chunk) => (chunk.position, chunk.data()),
            None => (
                self.filling.position,
                &self.filling.buffer.bytes()[..self.filling.len],
            ),
        }
    }

    /// Bytes `[position, position + len)`, cut at the end, or `None` when the tail no longer
    /// holds `position` (it is on disk).
    pub(crate) fn read(&self, position: u64, len: usize) -> Option<Vec<u8>> {
        if position < self.start_position() {
            return None;
        }
        let end = (position + len as u64).min(self.end_position());
        let mut bytes = Vec::with_capacity(end.saturating_sub(position) as usize);
        let mut cursor = position;
        let pieces_count = self.sealed.len() + 1;
        for index in 0..pieces_count {
            if cursor >= end {
                break;
            }
            let (start, data) = self.piece(index);
            let data_end = start + data.len() as u64;
            // Where two chunks share a block, the later one holds the same bytes and more; where
            // a skipped pad lies between them, the gap reads as the zeros the file holds.
            let own_end = if index + 1 < pieces_count {
                self.piece(index + 1).0
            } else {
                data_end
            };
            if cursor < start || cursor >= own_end {
                continue;
            }
            let until = own_end.min(end);
            let data_until = until.min(data_end);
            if cursor < data_until {
                bytes.extend_from_slice(
                    &data[(cursor - start) as usize..(data_until - start) as usize],
                );
                cursor = data_until;
            }
            bytes.resize(bytes.len() + (until - cursor) as usize, 0);
            cursor = until;
        }
        Some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::SEGMENT_VERSION_GAPLESS;
    use crate::io::sim::SimRng;

    const BLOCK: usize = BLOCK_BYTES as usize;

    /// A tail in a segment without gaps: every padded block is carried.
    fn tail(capacity_bytes: usize) -> Tail<Vec<u8>> {
        Tail::resume(
            BLOCK_BYTES,
            &[],
            vec![0xA5; capacity_bytes],
            SEGMENT_VERSION_GAPLESS,
        )
    }

    fn allocator(capacity_bytes: usize) -> impl FnMut() -> Vec<u8> {
        move || vec![0xA5; capacity_bytes]
    }

    #[test]
    fn a_full_chunk_is_sealed_as_it_fills_and_written_whole() {
        let mut tail = tail(2 * BLOCK);
        tail.append(&[7u8; 2 * BLOCK + 100], allocator(2 * BLOCK));
        tail.push_batch_end(1);
        let write = tail.next_write(0, 4, allocator(2 * BLOCK)).unwrap();
        assert_eq!(write.position, BLOCK_BYTES);
        assert_eq!(*write.buffer, vec![7u8; 2 * BLOCK]);
        // 100 bytes remain: with a write in flight there is no whole block to cut.
        assert!(!tail.can_write(4));
        assert_eq!(tail.complete(0), None);
        // Nothing in flight: the last partial block goes out padded with zeros.
        let padded = tail.next_write(1, 4, allocator(2 * BLOCK)).unwrap();
        assert_eq!(padded.position, 3 * BLOCK_BYTES);
        assert_eq!(&padded.buffer[..100], &[7u8; 100][..]);
        assert!(padded.buffer[100..].iter().all(|&byte| byte == 0));
        assert_eq!(padded.buffer.len(), BLOCK);
        assert_eq!(tail.complete(1), Some(1));
        assert_eq!(tail.written_position, 3 * BLOCK_BYTES + 100);
    }

    #[test]
    fn with_a_write_in_flight_the_filling_chunk_is_cut_at_whole_blocks() {
        let mut tail = tail(4 * BLOCK);
        tail.append(&[1u8; 4 * BLOCK], allocator(4 * BLOCK));
        let first = tail.next_write(0, 4, allocator(4 * BLOCK)).unwrap();
        tail.append(&[2u8; BLOCK + 10], allocator(4 * BLOCK));
        let second = tail.next_write(1, 4, allocator(4 * BLOCK)).unwrap();
        assert_eq!(second.position, first.position + 4 * BLOCK_BYTES);
        assert_eq!(*second.buffer, vec![2u8; BLOCK]);
        // The 10 bytes after the cut stay in the tail and are readable.
        assert_eq!(
            tail.read(second.position + BLOCK_BYTES, 100),
            Some(vec![2u8; 10])
        );
    }

    #[test]
    fn a_padded_write_in_flight_holds_back_every_write_of_its_block() {
        let mut tail = tail(4 * BLOCK);
        tail.append(&[3u8; 10], allocator(4 * BLOCK));
        let padded = tail.next_write(0, 4, allocator(4 * BLOCK)).unwrap();
        tail.append(&[4u8; 4 * BLOCK], allocator(4 * BLOCK));
        // The filling chunk started in the padded block and is full now, but must wait.
        assert!(!tail.can_write(4));
        assert!(tail.next_write(1, 4, allocator(4 * BLOCK)).is_none());
        tail.complete(0);
        let rewrite = tail.next_write(1, 4, allocator(4 * BLOCK)).unwrap();
        assert_eq!(rewrite.position, padded.position);
        assert_eq!(&rewrite.buffer[..10], &[3u8; 10][..]);
        assert_eq!(&rewrite.buffer[10..], &vec![4u8; 4 * BLOCK - 10][..]);
    }

    #[test]
    fn a_skipped_pad_lets_the_next_write_start_while_it_is_in_flight() {
        let mut tail = Tail::resume(BLOCK_BYTES, &[], vec![0xA5; 8 * BLOCK], SEGMENT_VERSION);
        let first_len = 3 * BLOCK + 10;
        tail.append(&vec![3u8; first_len], allocator(8 * BLOCK));
        tail.push_batch_end(1);
        let padded = tail.next_write(0, 4, allocator(8 * BLOCK)).unwrap();
        assert!(padded.skips_pad);
        let expected = [vec![3u8; first_len], vec![0u8; BLOCK - 10]].concat();
        assert!(
            *padded.buffer == expected,
            "records, then zeros to the block end"
        );
        assert_eq!(tail.end_position(), 5 * BLOCK_BYTES);
        let second_len = 3 * BLOCK + 20;
        tail.append(&vec![4u8; second_len], allocator(8 * BLOCK));
        tail.push_batch_end(2);
        let next = tail.next_write(1, 4, allocator(8 * BLOCK)).unwrap();
        assert_eq!(next.position, 5 * BLOCK_BYTES);
        assert!(next.buffer[..second_len] == vec![4u8; second_len]);
        // The gap reads as zeros, as it does from the file.
        let read = tail.read(4 * BLOCK_BYTES + 5, BLOCK + 5).unwrap();
        let expected = [vec![3u8; 5], vec![0u8; BLOCK - 10], vec![4u8; 10]].concat();
        assert!(read == expected, "a read across the gap");
        assert_eq!(tail.complete(1), None);
        assert_eq!(tail.complete(0), Some(2));
        assert_eq!(tail.written_position, 8 * BLOCK_BYTES + 20);
    }

    #[test]
    fn a_pad_too_short_for_a_header_or_too_large_for_its_write_is_carried() {
        let short = 4 * BLOCK - PADDING_SKIP_MIN_BYTES as usize + 1;
        let large = BLOCK + 10;
        for len in [short, large] {
            let mut tail = Tail::resume(BLOCK_BYTES, &[], vec![0xA5; 8 * BLOCK], SEGMENT_VERSION);
            tail.append(&vec![5u8; len], allocator(8 * BLOCK));
            let padded = tail.next_write(0, 4, allocator(8 * BLOCK)).unwrap();
            assert!(!padded.skips_pad);
            assert_eq!(padded.buffer.len() as u64, align_up(len as u64));
            assert_eq!(tail.end_position(), BLOCK_BYTES + len as u64);
            tail.append(&[6u8; 8], allocator(8 * BLOCK));
            assert!(!tail.can_write(4), "{len}: the carried block is busy");
            tail.complete(0);
            let rewrite = tail.next_write(1, 4, allocator(8 * BLOCK)).unwrap();
            assert_eq!(rewrite.position, BLOCK_BYTES + align_down(len as u64));
        }
    }

    #[test]
    fn the_written_offset_waits_for_the_contiguous_prefix() {
        let mut tail = tail(BLOCK);
        tail.append(&[5u8; BLOCK], allocator(BLOCK));
        tail.push_batch_end(1);
        tail.append(&[6u8; BLOCK], allocator(BLOCK));
        tail.push_batch_end(2);
        let first = tail.next_write(0, 4, allocator(BLOCK)).unwrap();
        let second = tail.next_write(1, 4, allocator(BLOCK)).unwrap();
        assert!(second.position > first.position);
        assert_eq!(tail.complete(1), None);
        assert_eq!(tail.written_position, BLOCK_BYTES);
        assert_eq!(tail.complete(0), Some(2));
        assert_eq!(tail.written_position, 3 * BLOCK_BYTES);
    }

    #[test]
    fn the_cap_on_writes_in_flight_holds() {
        let mut tail = tail(BLOCK);
        tail.append(&[8u8; 3 * BLOCK], allocator(BLOCK));
        assert!(tail.next_write(0, 2, allocator(BLOCK)).is_some());
        assert!(tail.next_write(1, 2, allocator(BLOCK)).is_some());
        assert!(tail.next_write(2, 2, allocator(BLOCK)).is_none());
        tail.complete(0);
        assert!(tail.next_write(2, 2, allocator(BLOCK)).is_some());
    }

    /// Random appends, submissions and out-of-order completions against a byte model of the
    /// file. Catches: two writes in flight over one block, more writes in flight than the cap,
    /// a write whose bytes differ from what was appended at its position or whose padding is not
    /// zero, a written position beyond the completed prefix, reads of the tail that differ from
    /// the appended bytes, and bytes that never get written. Cannot catch: anything of the log
    /// around the tail (batching, syncs, rolls); the model test covers those.
    #[test]
    fn random_appends_and_completions_write_exactly_what_was_appended() {
        for seed in 0..100u64 {
            let mut rng = SimRng::new(seed);
            let capacity = BLOCK * (1 + rng.below(4) as usize);
            let writes_max = 1 + rng.below(4) as usize;
            let start = BLOCK_BYTES + rng.below(BLOCK_BYTES);
            let partial: Vec<u8> = (0..start % BLOCK_BYTES).map(|i| i as u8 | 1).collect();
            let version = [SEGMENT_VERSION, SEGMENT_VERSION_GAPLESS][rng.below(2) as usize];
            let skips_padding = version == SEGMENT_VERSION;
            let mut tail = Tail::resume(start, &partial, vec![0xA5; capacity], version);
            let mut appended: Vec<u8> = vec![0; BLOCK];
            appended.extend_from_slice(&partial);
            let mut disk: Vec<u8> = appended.clone();
            // `appended` holds the file image: records, and the zeros of skipped pads.
            let mut data_end = appended.len();
            // Each write in flight with the appended length when it was submitted.
            let mut in_flight: Vec<(ChunkWrite<Vec<u8>>, usize)> = Vec::new();
            let mut next_id = 0;
            let mut checked_position = 0;
            for step in 0..400 {
                match rng.below(3) {
                    0 => {
                        let len = 1 + rng.below(3 * BLOCK_BYTES) as usize;
                        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8 | 1).collect();
                        tail.append(&bytes, allocator(capacity));
                        appended.extend_from_slice(&bytes);
                        data_end = appended.len();
                        tail.push_batch_end(step);
                    }
                    1 => {
                        while let Some(write) =
                            tail.next_write(next_id, writes_max, allocator(capacity))
                        {
                            next_id += 1;
                            let end = write.position + write.buffer.len() as u64;
                            for (other, _) in &in_flight {
                                let other_end = other.position + other.buffer.len() as u64;
                                assert!(
                                    end <= other.position || other_end <= write.position,
                                    "seed {seed}: overlapping writes in flight"
                                );
                            }
                            in_flight.push((write, appended.len()));
                            assert!(in_flight.len() <= writes_max, "seed {seed}: over the cap");
                        }
                        assert!(skips_padding || tail.end_position() == appended.len() as u64);
                        appended.resize(tail.end_position() as usize, 0);
                    }
                    _ if !in_flight.is_empty() => {
                        let index = rng.below(in_flight.len() as u64) as usize;
                        let (write, appended_len) = in_flight.swap_remove(index);
                        let position = write.position as usize;
                        let write_end = position + write.buffer.len();
                        let data_end = appended_len.min(write_end);
                        assert_eq!(
                            &write.buffer[..data_end - position],
                            &appended[position..data_end],
                            "seed {seed}: written bytes differ from appended ones"
                        );
                        assert!(
                            write.buffer[data_end - position..]
                                .iter()
                                .all(|&byte| byte == 0),
                            "seed {seed}: padding not zero"
                        );
                        if disk.len() < write_end {
                            disk.resize(write_end, 0);
                        }
                        disk[position..write_end].copy_from_slice(&write.buffer);
                        tail.complete(write.id);
                    }
                    _ => {}
                }
                // Below the last check only an overlapping write could change the disk, and the
                // overlap check above catches that.
                let written = tail.written_position as usize;
                assert!(
                    written <= disk.len(),
                    "seed {seed}: written beyond any write"
                );
                assert_eq!(
                    &disk[checked_position..written],
                    &appended[checked_position..written],
                    "seed {seed}: written position {written} ahead of the completed prefix"
                );
                checked_position = written;
                let from = BLOCK_BYTES + rng.below(appended.len() as u64 - BLOCK_BYTES + 1);
                let len = rng.below(2 * capacity as u64) as usize;
                match tail.read(from, len) {
                    Some(read) => {
                        let end = appended.len().min(from as usize + len);
                        assert_eq!(
                            read,
                            &appended[from as usize..end],
                            "seed {seed}: tail read"
                        );
                    }
                    None => assert!(from < tail.start_position()),
                }
            }
            // Drain: everything appended ends up written.
            loop {
                while let Some(write) = tail.next_write(next_id, writes_max, allocator(capacity)) {
                    next_id += 1;
                    in_flight.push((write, appended.len()));
                }
                appended.resize(tail.end_position() as usize, 0);
                let Some((write, _)) = in_flight.pop() else {
                    break;
                };
                let position = write.position as usize;
                let write_end = position + write.buffer.len();
                if disk.len() < write_end {
                    disk.resize(write_end, 0);
                }
                disk[position..write_end].copy_from_slice(&write.buffer);
                tail.complete(write.id);
            }
            assert_eq!(tail.written_position, data_end as u64, "seed {seed}: drain");
            assert_eq!(
                &disk[..appended.len()],
                &appended[..],
                "seed {seed}: final disk"
            );
            assert!(
                disk[appended.len()..].iter().all(|&byte| byte == 0),
                "seed {seed}"
            );
        }
    }
}
