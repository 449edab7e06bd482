//! Index files: the sparse offset index and the time index of a sealed segment, persisted next to
//! it as `<base offset>.idx` so that an open can skip scanning sealed segments
//! (`Options::verify_sealed_on_open = false`). Indexes are derived data: a file that is missing,
//! short, stale (another epoch, other counts) or ahead of its segment (entries past its end) is
//! ignored, the index is rebuilt from the records and the file written again. No index file ever
//! stops a log from opening.
//!
//! | Offset       | Size   | Field                                               |
//! |-------------:|-------:|-----------------------------------------------------|
//! |            0 |      8 | magic `RUUSTIDX`                                    |
//! |            8 |      4 | format version                                      |
//! |           12 |      4 | segment epoch                                       |
//! |           16 |      8 | segment base offset                                 |
//! |           24 |      8 | segment record count                                |
//! |           32 |      8 | segment end position                                |
//! |           40 |      4 | n: offset entries                                   |
//! |           44 |      4 | m: time entries                                     |
//! |           48 |   16 n | (offset u64, position u64), both increasing         |
//! |   48 + 16 n  |   16 m | (timestamp ms u64, offset u64), both increasing     |
//! | 48 + 16(n+m) |      4 | CRC32 of everything before                          |
//!
//! The file is zero-padded to whole blocks for direct I/O; the padding is not covered.

use crate::format::{FORMAT_VERSION, SEGMENT_HEADER_BLOCK_BYTES, Seal};
use crate::segment::SegmentIndex;

const INDEX_MAGIC: [u8; 8] = *b"RUUSTIDX";
pub const INDEX_HEADER_BYTES: usize = 48;
const ENTRY_BYTES: usize = 16;
/// Entries per kind an index file may declare; far above what a 4 GiB segment indexed every
/// 4 KiB needs, and a bound on what a damaged count can make the reader allocate.
pub const INDEX_ENTRIES_MAX: usize = 1 << 21;

const _: () = assert!(INDEX_HEADER_BYTES == 8 + 4 + 4 + 8 + 8 + 8 + 4 + 4);

pub fn index_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.idx")
}

/// What the index must agree with.
#[derive(Clone, Copy, Debug)]
pub struct IndexOwner {
    pub epoch: u32,
    pub base_offset: u64,
    pub seal: Seal,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

/// Encodes the index of a sealed segment (unpadded).
pub fn encode_index(owner: &IndexOwner, index: &SegmentIndex) -> Vec<u8> {
    let offsets = index.offset_entries();
    let times = index.time_entries();
    let mut bytes =
        Vec::with_capacity(INDEX_HEADER_BYTES + ENTRY_BYTES * (offsets.len() + times.len()) + 4);
    bytes.extend_from_slice(&INDEX_MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&owner.epoch.to_le_bytes());
    bytes.extend_from_slice(&owner.base_offset.to_le_bytes());
    bytes.extend_from_slice(&owner.seal.record_count.to_le_bytes());
    bytes.extend_from_slice(&owner.seal.end_position.to_le_bytes());
    bytes.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(times.len() as u32).to_le_bytes());
    for &(offset, position) in offsets {
        bytes.extend_from_slice(&offset.to_le_bytes());
        bytes.extend_from_slice(&position.to_le_bytes());
    }
    for &(timestamp_ms, offset) in times {
        bytes.extend_from_slice(&timestamp_ms.to_le_bytes());
        bytes.extend_from_slice(&offset.to_le_bytes());
    }
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Why an index file was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexFault {
    Short,
    BadMagicOrVersion,
    BadCrc,
    /// Written for another life of the segment (epoch, counts or end differ).
    Stale,
    /// Entries out of order or beyond the segment's records.
    Ahead,
}

/// Decodes and checks an index file against the segment it claims to describe.
pub fn decode_index(bytes: &[u8], owner: &IndexOwner) -> Result<SegmentIndex, IndexFault> {
    if bytes.len() < INDEX_HEADER_BYTES + 4 {
        return Err(IndexFault::Short);
    }
    if bytes[0..8] != INDEX_MAGIC || u32_at(bytes, 8) != FORMAT_VERSION {
        return Err(IndexFault::BadMagicOrVersion);
    }
    let offsets_count = u32_at(bytes, 40) as usize;
    let times_count = u32_at(bytes, 44) as usize;
    if offsets_count > INDEX_ENTRIES_MAX || times_count > INDEX_ENTRIES_MAX {
        return Err(IndexFault::Ahead);
    }
    let body_end = INDEX_HEADER_BYTES + ENTRY_BYTES * (offsets_count + times_count);
    if bytes.len() < body_end + 4 {
        return Err(IndexFault::Short);
    }
    if crc32fast::hash(&bytes[..body_end]) != u32_at(bytes, body_end) {
        return Err(IndexFault::BadCrc);
    }
    let fresh = u32_at(bytes, 12) == owner.epoch
        && u64_at(bytes, 16) == owner.base_offset
        && u64_at(bytes, 24) == owner.seal.record_count
        && u64_at(bytes, 32) == owner.seal.end_position;
    if !fresh {
        return Err(IndexFault::Stale);
    }
    let end_offset = owner.base_offset + owner.seal.record_count;
    let mut offsets = Vec::with_capacity(offsets_count);
    let mut times = Vec::with_capacity(times_count);
    for entry in 0..offsets_count {
        let at = INDEX_HEADER_BYTES + ENTRY_BYTES * entry;
        let (offset, position) = (u64_at(bytes, at), u64_at(bytes, at + 8));
        let in_range = offset >= owner.base_offset
            && offset < end_offset
            && position >= SEGMENT_HEADER_BLOCK_BYTES
            && position < owner.seal.end_position;
        let ordered = offsets.last().is_none_or(|&(last_offset, last_position)| {
            offset > last_offset && position > last_position
        });
        if !in_range || !ordered {
            return Err(IndexFault::Ahead);
        }
        offsets.push((offset, position));
    }
    for entry in 0..times_count {
        let at = INDEX_HEADER_BYTES + ENTRY_BYTES * (offsets_count + entry);
        let (timestamp_ms, offset) = (u64_at(bytes, at), u64_at(bytes, at + 8));
        let ordered = times.last().is_none_or(|&(last_time, last_offset)| {
            timestamp_ms > last_time && offset > last_offset
        });
        if offset < owner.base_offset || offset >= end_offset || !ordered {
            return Err(IndexFault::Ahead);
        }
        times.push((timestamp_ms, offset));
    }
    Ok(SegmentIndex::from_entries(offsets, times))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> IndexOwner {
        IndexOwner {
            epoch: 2,
            base_offset: 100,
            seal: Seal {
                record_count: 50,
                end_position: 4096 + 50 * 200,
                timestamp_ms_max: 0,
            },
        }
    }

    fn sample() -> SegmentIndex {
        let mut index = SegmentIndex::default();
        for record in 0..50u64 {
            index.observe(100 + record, 4096 + record * 200, 1_000 + record);
        }
        index
    }

    #[test]
    fn an_index_file_round_trips() {
        let bytes = encode_index(&owner(), &sample());
        let decoded = decode_index(&bytes, &owner()).unwrap();
        assert_eq!(decoded.offset_entries(), sample().offset_entries());
        assert_eq!(decoded.time_entries(), sample().time_entries());
    }

    #[test]
    fn short_stale_and_ahead_index_files_are_rejected() {
        let bytes = encode_index(&owner(), &sample());
        for cut in [0, 10, INDEX_HEADER_BYTES, bytes.len() - 1] {
            assert!(
                decode_index(&bytes[..cut], &owner()).is_err(),
                "cut at {cut}"
            );
        }
        let other_life = IndexOwner {
            epoch: 3,
            ..owner()
        };
        assert_eq!(
            decode_index(&bytes, &other_life).err(),
            Some(IndexFault::Stale)
        );
        let shorter = IndexOwner {
            seal: Seal {
                record_count: 10,
                end_position: 4096 + 2000,
                timestamp_ms_max: 0,
            },
            ..owner()
        };
        let ahead = encode_index(&shorter, &sample());
        assert_eq!(
            decode_index(&ahead, &shorter).err(),
            Some(IndexFault::Ahead)
        );
        let mut damaged = bytes.clone();
        damaged[INDEX_HEADER_BYTES + 3] ^= 1;
        assert_eq!(
            decode_index(&damaged, &owner()).err(),
            Some(IndexFault::BadCrc)
        );
        let mut huge = bytes;
        huge[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_index(&huge, &owner()).err(), Some(IndexFault::Ahead));
    }
}
