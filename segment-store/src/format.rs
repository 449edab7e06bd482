//! On-disk formats: the segment header block, the record frame and the checkpoint slot. This
//! module is pure (no I/O): it encodes into and decodes from byte slices, and every decoder checks
//! lengths against named limits before it trusts them. All integers are little-endian.
//!
//! # Segment file
//!
//! A segment file is named by its base offset (`00000000000000000000.seg`) and preallocated to the
//! configured segment size. Block 0 holds the segment header and nothing else, so that sealing can
//! rewrite it without touching a record. Records follow back to back from byte
//! [`SEGMENT_HEADER_BLOCK_BYTES`]; after the last record the file is zero.
//!
//! In a segment of version [`SEGMENT_VERSION`] records may also stop short of a block boundary
//! and go on at the boundary, with zeros between: the writer pads a partial block and starts the
//! next write in a fresh block, so that the two writes share no block and can be in flight
//! together. The gap is at least [`RECORD_HEADER_BYTES`] long, so it begins with an all-zero
//! header, which no record has; a reader that meets one before a boundary steps to the boundary
//! and expects the same record there. In a segment of version [`SEGMENT_VERSION_GAPLESS`] records
//! follow back to back without gaps; both are read, and a gapless segment stays gapless when a
//! later run appends to it.
//!
//! | Offset | Size | Field                                                       |
//! |-------:|-----:|-------------------------------------------------------------|
//! |      0 |    8 | magic `RUUSTSEG`                                            |
//! |      8 |    4 | segment format version (below)                              |
//! |     12 |    4 | epoch: every record in the file carries the same value      |
//! |     16 |    8 | base offset: offset of the first record                     |
//! |     24 |    8 | creation time, ms since the Unix epoch                      |
//! |     32 |    4 | sealed: 1 once the segment is complete and synced, else 0   |
//! |     36 |    4 | reserved, zero                                              |
//! |     40 |    8 | record count (sealed only)                                  |
//! |     48 |    8 | end position: byte after the last record (sealed only)      |
//! |     56 |    8 | largest record timestamp in ms (sealed only)                |
//! |     64 |    4 | CRC32 of bytes 0..64                                        |
//! |     68 | 4028 | zero                                                        |
//!
//! # Record frame
//!
//! | Offset | Size | Field                                                       |
//! |-------:|-----:|-------------------------------------------------------------|
//! |      0 |    4 | payload length in bytes, at most the log's maximum          |
//! |      4 |    4 | CRC32 of bytes 0..4, bytes 8..32 and the payload            |
//! |      8 |    8 | offset: the record's position in the log, counted from 0    |
//! |     16 |    4 | epoch: equal to the segment header's epoch                  |
//! |     20 |    4 | flags, owned by the caller                                  |
//! |     24 |    8 | timestamp, ms since the Unix epoch, given by the caller     |
//! |     32 |    n | payload, opaque                                             |
//!
//! The offset and the epoch make stale or recycled bytes fail validation even when their CRC is
//! intact: a record left over from before a truncation carries an offset or epoch that the reader
//! does not expect. An all-zero header never validates because epochs start at 1.
//!
//! # Checkpoint file
//!
//! `checkpoint` holds two 4 KiB slots written alternately, so a torn write of one slot leaves the
//! other readable. The slot with the larger valid sequence wins.
//!
//! | Offset | Size | Field                                                       |
//! |-------:|-----:|-------------------------------------------------------------|
//! |      0 |    8 | magic `RUUSTCKP`                                            |
//! |      8 |    4 | format version                                              |
//! |     12 |    4 | largest epoch handed out so far                             |
//! |     16 |    8 | sequence, +1 per checkpoint                                 |
//! |     24 |    8 | durable offset: every record below it was fdatasync'ed     |
//! |     32 |    8 | base offset of the segment that holds the durable offset    |
//! |     40 |    8 | byte position of the durable offset in that segment         |
//! |     48 |    4 | CRC32 of bytes 0..48                                        |

/// Version written into every checkpoint and index file; readers refuse any other.
pub const FORMAT_VERSION: u32 = 1;

/// Version of new segments: records may skip to a block boundary.
pub const SEGMENT_VERSION: u32 = 2;

/// Version of segments whose records follow back to back; read and appended to as such.
pub const SEGMENT_VERSION_GAPLESS: u32 = 1;

/// Direct I/O unit. ext4 serialises and zero-fills direct writes smaller than its 4 KiB block even
/// though the device reports 512-byte logical sectors (trap S2), so every write is 4 KiB aligned.
pub const BLOCK_BYTES: u64 = 4096;

/// Block 0 of a segment belongs to the header alone.
pub const SEGMENT_HEADER_BLOCK_BYTES: u64 = BLOCK_BYTES;

/// Bytes of the segment header that carry meaning (the rest of the block is zero).
pub const SEGMENT_HEADER_BYTES: usize = 68;

/// Fixed record header in front of every payload.
pub const RECORD_HEADER_BYTES: usize = 32;

/// Hard ceiling for the configurable maximum payload. A length field above it is damage, so a
/// reader never allocates more than this for one record, whatever the disk says.
pub const MAX_PAYLOAD_BYTES_LIMIT: usize = 64 * 1024 * 1024;

/// One checkpoint slot; two slots make the file.
pub const CHECKPOINT_SLOT_BYTES: u64 = BLOCK_BYTES;
pub const CHECKPOINT_FILE_BYTES: u64 = 2 * CHECKPOINT_SLOT_BYTES;
pub const CHECKPOINT_BYTES: usize = 52;

const SEGMENT_MAGIC: [u8; 8] = *b"RUUSTSEG";
const CHECKPOINT_MAGIC: [u8; 8] = *b"RUUSTCKP";

const _: () = assert!(RECORD_HEADER_BYTES == 4 + 4 + 8 + 4 + 4 + 8);
const _: () = assert!(SEGMENT_HEADER_BYTES == 8 + 4 + 4 + 8 + 8 + 4 + 4 + 8 + 8 + 8 + 4);
const _: () = assert!(SEGMENT_HEADER_BYTES as u64 <= SEGMENT_HEADER_BLOCK_BYTES);
const _: () = assert!(CHECKPOINT_BYTES == 8 + 4 + 4 + 8 + 8 + 8 + 8 + 4);
const _: () = assert!(CHECKPOINT_BYTES as u64 <= CHECKPOINT_SLOT_BYTES);
const _: () = assert!(MAX_PAYLOAD_BYTES_LIMIT <= u32::MAX as usize);
const _: () = assert!(BLOCK_BYTES.is_power_of_two());

/// Rounds a byte position down to its block.
pub const fn align_down(position: u64) -> u64 {
    position & !(BLOCK_BYTES - 1)
}

/// Rounds a byte position up to the next block boundary.
pub const fn align_up(position: u64) -> u64 {
    align_down(position + BLOCK_BYTES - 1)
}

/// The file name of the segment with this base offset. Twenty digits sort like the numbers.
pub fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.seg")
}

/// Parses a segment file name back into its base offset.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// [`SEGMENT_VERSION`] or [`SEGMENT_VERSION_GAPLESS`].
    pub version: u32,
    pub epoch: u32,
    pub base_offset: u64,
    pub created_ms: u64,
    pub seal: Option<Seal>,
}

/// What a sealed segment states about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seal {
    pub record_count: u64,
    pub end_position: u64,
    pub timestamp_ms_max: u64,
}

/// Why a header or record failed to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every byte of the header is zero: the usual end of data in a preallocated file.
    Zero,
    /// Fewer bytes than the frame needs.
    Short,
    BadMagic,
    BadVersion(u32),
    BadCrc,
    TooLarge(u32),
    WrongOffset(u64),
    WrongEpoch(u32),
    BadField,
}

impl Fault {
    pub fn describe(self) -> String {
        match self {
            Fault::Zero => "zero-filled header".to_string(),
            Fault::Short => "frame runs past the end of the data".to_string(),
            Fault::BadMagic => "bad magic".to_string(),
            Fault::BadVersion(version) => format!("unknown format version {version}"),
            Fault::BadCrc => "crc mismatch".to_string(),
            Fault::TooLarge(length) => format!("length field {length} exceeds the maximum"),
            Fault::WrongOffset(offset) => format!("record carries offset {offset}"),
            Fault::WrongEpoch(epoch) => format!("record carries epoch {epoch}"),
            Fault::BadField => "inconsistent header field".to_string(),
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("slice of four bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("slice of eight bytes"))
}

/// Writes the segment header into the first [`SEGMENT_HEADER_BYTES`] of `target`.
pub fn encode_segment_header(header: &SegmentHeader, target: &mut [u8]) {
    assert!(target.len() >= SEGMENT_HEADER_BYTES);
    assert!(
        header.epoch >= 1,
        "epochs start at 1 so that zeros never validate"
    );
    assert!(header.version == SEGMENT_VERSION || header.version == SEGMENT_VERSION_GAPLESS);
    let seal = header.seal.unwrap_or(Seal {
        record_count: 0,
        end_position: 0,
        timestamp_ms_max: 0,
    });
    target[..SEGMENT_HEADER_BYTES].fill(0);
    target[0..8].copy_from_slice(&SEGMENT_MAGIC);
    target[8..12].copy_from_slice(&header.version.to_le_bytes());
    target[12..16].copy_from_slice(&header.epoch.to_le_bytes());
    target[16..24].copy_from_slice(&header.base_offset.to_le_bytes());
    target[24..32].copy_from_slice(&header.created_ms.to_le_bytes());
    target[32..36].copy_from_slice(&u32::from(header.seal.is_some()).to_le_bytes());
    target[40..48].copy_from_slice(&seal.record_count.to_le_bytes());
    target[48..56].copy_from_slice(&seal.end_position.to_le_bytes());
    target[56..64].copy_from_slice(&seal.timestamp_ms_max.to_le_bytes());
    let crc = crc32fast::hash(&target[0..64]);
    target[64..68].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes and checks a segment header.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, Fault> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(Fault::Short);
    }
    let bytes = &bytes[..SEGMENT_HEADER_BYTES];
    if bytes.iter().all(|&byte| byte == 0) {
        return Err(Fault::Zero);
    }
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err(Fault::BadMagic);
    }
    if crc32fast::hash(&bytes[0..64]) != u32_at(bytes, 64) {
        return Err(Fault::BadCrc);
    }
    let version = u32_at(bytes, 8);
    if version != SEGMENT_VERSION && version != SEGMENT_VERSION_GAPLESS {
        return Err(Fault::BadVersion(version));
    }
    let epoch = u32_at(bytes, 12);
    let sealed = u32_at(bytes, 32);
    if epoch == 0 || sealed > 1 || u32_at(bytes, 36) != 0 {
        return Err(Fault::BadField);
    }
    let seal = (sealed == 1).then(|| Seal {
        record_count: u64_at(bytes, 40),
        end_position: u64_at(bytes, 48),
        timestamp_ms_max: u64_at(bytes, 56),
    });
    if let Some(seal) = seal
        && seal.end_position < SEGMENT_HEADER_BLOCK_BYTES
    {
        return Err(Fault::BadField);
    }
    Ok(SegmentHeader {
        version,
        epoch,
        base_offset: u64_at(bytes, 16),
        created_ms: u64_at(bytes, 24),
        seal,
    })
}

/// The caller's view of a record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub payload_bytes: u32,
    pub offset: u64,
    pub epoch: u32,
    pub flags: u32,
    pub timestamp_ms: u64,
}

/// Total frame size of a record with this payload.
pub const fn frame_bytes(payload_bytes: usize) -> u64 {
    (RECORD_HEADER_BYTES + payload_bytes) as u64
}

/// Appends one record frame to `target`.
pub fn encode_record(header: &RecordHeader, payload: &[u8], target: &mut Vec<u8>) {
    target.extend_from_slice(&encode_record_header(header, payload));
    target.extend_from_slice(payload);
}

/// The header of the frame of `payload`, CRC included: a frame is these bytes followed by the
/// payload. The log copies both straight into its write buffers, so the payload is copied once.
pub fn encode_record_header(header: &RecordHeader, payload: &[u8]) -> [u8; RECORD_HEADER_BYTES] {
    assert_eq!(header.payload_bytes as usize, payload.len());
    assert!(payload.len() <= MAX_PAYLOAD_BYTES_LIMIT);
    let mut bytes = [0u8; RECORD_HEADER_BYTES];
    bytes[0..4].copy_from_slice(&header.payload_bytes.to_le_bytes());
    bytes[8..16].copy_from_slice(&header.offset.to_le_bytes());
    bytes[16..20].copy_from_slice(&header.epoch.to_le_bytes());
    bytes[20..24].copy_from_slice(&header.flags.to_le_bytes());
    bytes[24..32].copy_from_slice(&header.timestamp_ms.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[0..4]);
    hasher.update(&bytes[8..]);
    hasher.update(payload);
    bytes[4..8].copy_from_slice(&hasher.finalize().to_le_bytes());
    bytes
}

fn record_crc(frame: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame[0..4]);
    hasher.update(&frame[8..]);
    hasher.finalize()
}

/// What the reader expects of the next record.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    pub offset: u64,
    pub epoch: u32,
    pub max_payload_bytes: usize,
}

/// Decodes only the header at the start of `bytes` and checks its length field against the limit,
/// so the caller knows how much to read before it allocates. The CRC is not checked here.
pub fn peek_record(bytes: &[u8], expect: &Expect) -> Result<RecordHeader, Fault> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(Fault::Short);
    }
    let header_bytes = &bytes[..RECORD_HEADER_BYTES];
    if header_bytes.iter().all(|&byte| byte == 0) {
        return Err(Fault::Zero);
    }
    let payload_bytes = u32_at(header_bytes, 0);
    if payload_bytes as usize > expect.max_payload_bytes.min(MAX_PAYLOAD_BYTES_LIMIT) {
        return Err(Fault::TooLarge(payload_bytes));
    }
    Ok(RecordHeader {
        payload_bytes,
        offset: u64_at(header_bytes, 8),
        epoch: u32_at(header_bytes, 16),
        flags: u32_at(header_bytes, 20),
        timestamp_ms: u64_at(header_bytes, 24),
    })
}

/// Decodes and fully checks the record at the start of `bytes`: length limit, CRC, offset and
/// epoch. Returns the header; the payload is `bytes[RECORD_HEADER_BYTES..][..payload_bytes]`.
pub fn decode_record(bytes: &[u8], expect: &Expect) -> Result<RecordHeader, Fault> {
    let header = peek_record(bytes, expect)?;
    let frame_end = RECORD_HEADER_BYTES + header.payload_bytes as usize;
    if bytes.len() < frame_end {
        return Err(Fault::Short);
    }
    if record_crc(&bytes[..frame_end]) != u32_at(bytes, 4) {
        return Err(Fault::BadCrc);
    }
    if header.offset != expect.offset {
        return Err(Fault::WrongOffset(header.offset));
    }
    if header.epoch != expect.epoch {
        return Err(Fault::WrongEpoch(header.epoch));
    }
    Ok(header)
}

/// Decoded checkpoint slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub epoch_max: u32,
    pub sequence: u64,
    pub durable_offset: u64,
    pub segment_base_offset: u64,
    pub position: u64,
}

pub fn encode_checkpoint(checkpoint: &Checkpoint, target: &mut [u8]) {
    assert!(target.len() >= CHECKPOINT_BYTES);
    target[..CHECKPOINT_BYTES].fill(0);
    target[0..8].copy_from_slice(&CHECKPOINT_MAGIC);
    target[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    target[12..16].copy_from_slice(&checkpoint.epoch_max.to_le_bytes());
    target[16..24].copy_from_slice(&checkpoint.sequence.to_le_bytes());
    target[24..32].copy_from_slice(&checkpoint.durable_offset.to_le_bytes());
    target[32..40].copy_from_slice(&checkpoint.segment_base_offset.to_le_bytes());
    target[40..48].copy_from_slice(&checkpoint.position.to_le_bytes());
    let crc = crc32fast::hash(&target[0..48]);
    target[48..52].copy_from_slice(&crc.to_le_bytes());
}

pub fn decode_checkpoint(bytes: &[u8]) -> Result<Checkpoint, Fault> {
    if bytes.len() < CHECKPOINT_BYTES {
        return Err(Fault::Short);
    }
    if bytes[..CHECKPOINT_BYTES].iter().all(|&byte| byte == 0) {
        return Err(Fault::Zero);
    }
    if bytes[0..8] != CHECKPOINT_MAGIC {
        return Err(Fault::BadMagic);
    }
    if crc32fast::hash(&bytes[0..48]) != u32_at(bytes, 48) {
        return Err(Fault::BadCrc);
    }
    let version = u32_at(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(Fault::BadVersion(version));
    }
    Ok(Checkpoint {
        epoch_max: u32_at(bytes, 12),
        sequence: u64_at(bytes, 16),
        durable_offset: u64_at(bytes, 24),
        segment_base_offset: u64_at(bytes, 32),
        position: u64_at(bytes, 40),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(offset: u64) -> Expect {
        Expect {
            offset,
            epoch: 3,
            max_payload_bytes: 1024,
        }
    }

    fn frame(offset: u64, payload: &[u8]) -> Vec<u8> {
        let header = RecordHeader {
            payload_bytes: payload.len() as u32,
            offset,
            epoch: 3,
            flags: 0xA5,
            timestamp_ms: 1_700_000_000_123,
        };
        let mut bytes = Vec::new();
        encode_record(&header, payload, &mut bytes);
        bytes
    }

    #[test]
    fn a_record_round_trips_with_all_its_fields() {
        let bytes = frame(42, b"hello");
        assert_eq!(bytes.len() as u64, frame_bytes(5));
        let header = decode_record(&bytes, &expect(42)).unwrap();
        assert_eq!(header.offset, 42);
        assert_eq!(header.flags, 0xA5);
        assert_eq!(header.timestamp_ms, 1_700_000_000_123);
        assert_eq!(&bytes[RECORD_HEADER_BYTES..], b"hello");
    }

    #[test]
    fn every_single_bit_flip_in_a_record_is_rejected() {
        let bytes = frame(7, b"payload bytes");
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_record(&damaged, &expect(7)).is_err(),
                "bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn a_record_with_the_wrong_offset_or_epoch_is_rejected_despite_a_valid_crc() {
        let bytes = frame(7, b"x");
        assert_eq!(
            decode_record(&bytes, &expect(8)),
            Err(Fault::WrongOffset(7))
        );
        let other_epoch = Expect {
            epoch: 4,
            ..expect(7)
        };
        assert_eq!(
            decode_record(&bytes, &other_epoch),
            Err(Fault::WrongEpoch(3))
        );
    }

    #[test]
    fn a_huge_length_field_is_rejected_before_the_payload_is_needed() {
        let mut bytes = frame(7, b"x");
        bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            peek_record(&bytes, &expect(7)),
            Err(Fault::TooLarge(u32::MAX))
        );
    }

    #[test]
    fn zeros_and_short_input_are_reported_as_such() {
        assert_eq!(decode_record(&[0; 64], &expect(0)), Err(Fault::Zero));
        assert_eq!(decode_record(&[1; 10], &expect(0)), Err(Fault::Short));
        let bytes = frame(0, b"abcdef");
        assert_eq!(
            decode_record(&bytes[..bytes.len() - 1], &expect(0)),
            Err(Fault::Short)
        );
    }

    #[test]
    fn segment_headers_round_trip_sealed_and_unsealed() {
        let mut block = vec![0u8; SEGMENT_HEADER_BLOCK_BYTES as usize];
        let open = SegmentHeader {
            version: SEGMENT_VERSION,
            epoch: 2,
            base_offset: 99,
            created_ms: 5,
            seal: None,
        };
        encode_segment_header(&open, &mut block);
        assert_eq!(decode_segment_header(&block), Ok(open));
        let seal = Seal {
            record_count: 3,
            end_position: 5000,
            timestamp_ms_max: 9,
        };
        let sealed = SegmentHeader {
            seal: Some(seal),
            ..open
        };
        encode_segment_header(&sealed, &mut block);
        assert_eq!(decode_segment_header(&block), Ok(sealed));
        let gapless = SegmentHeader {
            version: SEGMENT_VERSION_GAPLESS,
            ..sealed
        };
        encode_segment_header(&gapless, &mut block);
        assert_eq!(decode_segment_header(&block), Ok(gapless));
        block[20] ^= 1;
        assert_eq!(decode_segment_header(&block), Err(Fault::BadCrc));
        block[20] ^= 1;
        block[8] = 3;
        let crc = crc32fast::hash(&block[0..64]);
        block[64..68].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_segment_header(&block), Err(Fault::BadVersion(3)));
    }

    #[test]
    fn checkpoints_round_trip_and_reject_damage() {
        let checkpoint = Checkpoint {
            epoch_max: 4,
            sequence: 10,
            durable_offset: 1000,
            segment_base_offset: 900,
            position: 8192,
        };
        let mut slot = vec![0u8; CHECKPOINT_SLOT_BYTES as usize];
        encode_checkpoint(&checkpoint, &mut slot);
        assert_eq!(decode_checkpoint(&slot), Ok(checkpoint));
        slot[30] ^= 0x10;
        assert_eq!(decode_checkpoint(&slot), Err(Fault::BadCrc));
        assert_eq!(decode_checkpoint(&[0; 64]), Err(Fault::Zero));
    }

    #[test]
    fn segment_names_parse_only_in_their_exact_form() {
        assert_eq!(
            parse_segment_file_name(&segment_file_name(12345)),
            Some(12345)
        );
        assert_eq!(parse_segment_file_name("12345.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000x.seg"), None);
        assert_eq!(parse_segment_file_name("00000000000000012345.idx"), None);
    }

    proptest::proptest! {
        /// Any payload, offset, flags and timestamp survive encoding, and a frame cut anywhere
        /// never decodes.
        #[test]
        fn any_record_round_trips_and_no_prefix_decodes(
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            offset in 0u64..u64::MAX,
            flags in proptest::num::u32::ANY,
            timestamp_ms in proptest::num::u64::ANY,
            cut in 0usize..632,
        ) {
            let header = RecordHeader {
                payload_bytes: payload.len() as u32,
                offset,
                epoch: 9,
                flags,
                timestamp_ms,
            };
            let mut bytes = Vec::new();
            encode_record(&header, &payload, &mut bytes);
            let expect = Expect { offset, epoch: 9, max_payload_bytes: 1024 };
            proptest::prop_assert_eq!(decode_record(&bytes, &expect), Ok(header));
            proptest::prop_assert_eq!(&bytes[RECORD_HEADER_BYTES..], &payload[..]);
            if cut < bytes.len() {
                proptest::prop_assert!(decode_record(&bytes[..cut], &expect).is_err());
            }
        }
    }

    #[test]
    fn alignment_helpers_round_to_blocks() {
        assert_eq!(align_down(4095), 0);
        assert_eq!(align_down(4096), 4096);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_up(0), 0);
    }
}
