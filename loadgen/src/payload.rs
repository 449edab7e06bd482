//! The stamp at the front of every payload, from which the consumer computes latency.
//!
//! | offset | size | field         | meaning                                                    |
//! |-------:|-----:|---------------|------------------------------------------------------------|
//! | 0      | 8    | `send_ns`     | [`crate::clock`] time when the batch was handed to a driver |
//! | 8      | 8    | `intended_ns` | time the schedule meant it to be sent (= `send_ns` unpaced) |
//! | 16     | 8    | `sequence`    | producer index in the top 16 bits, its own count below      |
//!
//! All little-endian. The rest of the payload is zero filler up to the sampled size. Latency from
//! `intended_ns` is what keeps coordinated omission visible: a stalled producer delays `send_ns`
//! along with the stall, but not `intended_ns`.

use std::fmt;

/// Bytes taken by the stamp; the smallest payload the loadgen can send.
pub const STAMP_BYTES: usize = 24;
const SEND_OFFSET: usize = 0;
const INTENDED_OFFSET: usize = 8;
const SEQUENCE_OFFSET: usize = 16;
const FIELD_BYTES: usize = 8;
const _: () = assert!(SEQUENCE_OFFSET + FIELD_BYTES == STAMP_BYTES);

/// Bits of [`Stamp::sequence`] below the producer index: 2^48 messages per producer.
pub const PRODUCER_SHIFT: u32 = 48;
/// Producers addressable in a sequence number.
pub const PRODUCER_COUNT_MAX: usize = 1 << (64 - PRODUCER_SHIFT);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub send_ns: u64,
    pub intended_ns: u64,
    pub sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    TooShort { length_bytes: usize },
}

impl fmt::Display for PayloadError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::TooShort { length_bytes } => write!(
                formatter,
                "payload of {length_bytes} bytes is shorter than the {STAMP_BYTES}-byte stamp"
            ),
        }
    }
}

impl std::error::Error for PayloadError {}

impl Stamp {
    /// Packs a producer index and that producer's own message count into one sequence number.
    pub fn sequence_of(producer_index: usize, producer_sequence: u64) -> u64 {
        assert!(producer_index < PRODUCER_COUNT_MAX);
        assert!(producer_sequence < 1 << PRODUCER_SHIFT);
        ((producer_index as u64) << PRODUCER_SHIFT) | producer_sequence
    }

    pub fn producer_index(&self) -> usize {
        (self.sequence >> PRODUCER_SHIFT) as usize
    }

    pub fn write(&self, payload: &mut [u8]) -> Result<(), PayloadError> {
        if payload.len() < STAMP_BYTES {
            return Err(PayloadError::TooShort {
                length_bytes: payload.len(),
            });
        }
        payload[SEND_OFFSET..INTENDED_OFFSET].copy_from_slice(&self.send_ns.to_le_bytes());
        payload[INTENDED_OFFSET..SEQUENCE_OFFSET].copy_from_slice(&self.intended_ns.to_le_bytes());
        payload[SEQUENCE_OFFSET..STAMP_BYTES].copy_from_slice(&self.sequence.to_le_bytes());
        Ok(())
    }

    pub fn read(payload: &[u8]) -> Result<Stamp, PayloadError> {
        if payload.len() < STAMP_BYTES {
            return Err(PayloadError::TooShort {
                length_bytes: payload.len(),
            });
        }
        let field = |offset: usize| {
            let mut bytes = [0u8; FIELD_BYTES];
            bytes.copy_from_slice(&payload[offset..offset + FIELD_BYTES]);
            u64::from_le_bytes(bytes)
        };
        Ok(Stamp {
            send_ns: field(SEND_OFFSET),
            intended_ns: field(INTENDED_OFFSET),
            sequence: field(SEQUENCE_OFFSET),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_stamp_reads_back_unchanged() {
        let stamp = Stamp {
            send_ns: 0x0102_0304_0506_0708,
            intended_ns: u64::MAX - 1,
            sequence: Stamp::sequence_of(7, 123_456),
        };
        let mut payload = vec![0xAA; 1024];
        stamp.write(&mut payload).unwrap();
        assert_eq!(Stamp::read(&payload).unwrap(), stamp);
        assert_eq!(Stamp::read(&payload).unwrap().producer_index(), 7);
        assert!(payload[STAMP_BYTES..].iter().all(|&byte| byte == 0xAA));
    }

    #[test]
    fn the_stamp_layout_is_little_endian_at_fixed_offsets() {
        let stamp = Stamp {
            send_ns: 1,
            intended_ns: 2,
            sequence: 3,
        };
        let mut payload = [0u8; STAMP_BYTES];
        stamp.write(&mut payload).unwrap();
        assert_eq!(payload[0], 1);
        assert_eq!(payload[8], 2);
        assert_eq!(payload[16], 3);
        assert!(payload.iter().filter(|&&byte| byte != 0).count() == 3);
    }

    #[test]
    fn a_payload_shorter_than_the_stamp_is_refused_both_ways() {
        let stamp = Stamp {
            send_ns: 1,
            intended_ns: 2,
            sequence: 3,
        };
        let mut short = [0u8; STAMP_BYTES - 1];
        assert_eq!(
            stamp.write(&mut short),
            Err(PayloadError::TooShort { length_bytes: 23 })
        );
        assert_eq!(
            Stamp::read(&short),
            Err(PayloadError::TooShort { length_bytes: 23 })
        );
    }
}
