//! What the broker writes into its shard's journal (one `segment-store` log per shard), and how
//! a replay reads it back.
//!
//! Two kinds of record, told apart by the store's record flags:
//!
//! **Message** (`RECORD_MESSAGE`): one published message stored once for every target queue on
//! this shard, whatever their number (a fanout to 8 queues on one shard writes the body once).
//!
//! | offset        | size     | field                                                    |
//! |---------------|----------|----------------------------------------------------------|
//! | 0             | 2        | `target_count` n, little-endian, 1..=`TARGET_QUEUES_MAX` |
//! | 2             | 12 * n   | n times (queue id u32, queue sequence u64), LE           |
//! | 2 + 12n       | the rest | the envelope: an rkyv archive ([`crate::envelope`])      |
//!
//! The queue sequences are in the record because queue order comes from them, not from journal
//! order: a message that compaction copied forward keeps its place in its queue.
//!
//! **Settlement** (`RECORD_SETTLEMENT`): messages that left their queues (acked, rejected, purged,
//! deleted), written at `written` level, never synced on their own (DESIGN.md, "Acks are
//! journaled").
//!
//! | offset | size    | field                                           |
//! |--------|---------|-------------------------------------------------|
//! | 0      | 4       | `count` n, little-endian, 1..=`SETTLEMENTS_MAX` |
//! | 4      | 12 * n  | n times (queue id u32, queue sequence u64), LE  |
//!
//! After a crash, every message whose settlement was not written comes back, marked redelivered:
//! at-least-once, never lost.

use bytes::Bytes;

use crate::envelope::{EnvelopeError, StoredEnvelope, TARGET_QUEUES_MAX};
use crate::routing::QueueId;

/// Store record flag of a message record.
pub const RECORD_MESSAGE: u32 = 1;
/// Store record flag of a settlement record.
pub const RECORD_SETTLEMENT: u32 = 2;

const TARGET_COUNT_BYTES: usize = 2;
const COUNT_BYTES: usize = 4;
/// One (queue id, sequence) pair.
const TARGET_BYTES: usize = 4 + 8;

/// Settlements in one record. Bounds the record at 12 * 8192 + 4 bytes, well under the store's
/// record limit, while covering a full ack batch of a busy shard.
pub const SETTLEMENTS_MAX: usize = 8192;

/// A target of a message record: a queue and the sequence the queue gave the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub queue: QueueId,
    pub sequence: u64,
}

/// A record that is not what its flags say.
#[derive(Debug)]
pub enum RecordError {
    Short {
        kind: &'static str,
        needed: usize,
        available: usize,
    },
    Count {
        kind: &'static str,
        count: usize,
    },
    Envelope(EnvelopeError),
    UnknownFlags(u32),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Short {
                kind,
                needed,
                available,
            } => {
                write!(f, "{kind} record needs {needed} bytes, has {available}")
            }
            RecordError::Count { kind, count } => write!(f, "{kind} record counts {count} entries"),
            RecordError::Envelope(error) => write!(f, "message record: {error}"),
            RecordError::UnknownFlags(flags) => write!(f, "unknown record flags {flags:#x}"),
        }
    }
}

impl std::error::Error for RecordError {}

/// Appends the payload of a message record to `out` (cleared first).
pub fn encode_message(targets: &[Target], envelope: &StoredEnvelope, out: &mut Vec<u8>) {
    assert!(!targets.is_empty() && targets.len() <= TARGET_QUEUES_MAX);
    out.clear();
    out.reserve(TARGET_COUNT_BYTES + targets.len() * TARGET_BYTES + envelope.bytes().len());
    out.extend_from_slice(&(targets.len() as u16).to_le_bytes());
    for target in targets {
        out.extend_from_slice(&target.queue.0.to_le_bytes());
        out.extend_from_slice(&target.sequence.to_le_bytes());
    }
    out.extend_from_slice(envelope.bytes());
}

/// Appends the payload of a settlement record to `out` (cleared first).
pub fn encode_settlement(settled: &[Target], out: &mut Vec<u8>) {
    assert!(!settled.is_empty() && settled.len() <= SETTLEMENTS_MAX);
    out.clear();
    out.reserve(COUNT_BYTES + settled.len() * TARGET_BYTES);
    out.extend_from_slice(&(settled.len() as u32).to_le_bytes());
    for target in settled {
        out.extend_from_slice(&target.queue.0.to_le_bytes());
        out.extend_from_slice(&target.sequence.to_le_bytes());
    }
}

/// A record read back from the journal.
#[derive(Debug)]
pub enum Decoded {
    Message {
        targets: Vec<Target>,
        envelope: StoredEnvelope,
    },
    Settlement {
        settled: Vec<Target>,
    },
}

/// Decodes a record payload. Checks every count against its limit before allocating, and the
/// envelope with rkyv's validator: bytes on disk are not trusted.
pub fn decode(flags: u32, payload: Bytes) -> Result<Decoded, RecordError> {
    match flags {
        RECORD_MESSAGE => {
            let count = read_count(&payload, TARGET_COUNT_BYTES, "message")?;
            if count == 0 || count > TARGET_QUEUES_MAX {
                return Err(RecordError::Count {
                    kind: "message",
                    count,
                });
            }
            let targets_end = TARGET_COUNT_BYTES + count * TARGET_BYTES;
            let targets = read_targets(&payload, TARGET_COUNT_BYTES, count, "message")?;
            let envelope = StoredEnvelope::validate(payload.slice(targets_end..))
                .map_err(RecordError::Envelope)?;
            Ok(Decoded::Message { targets, envelope })
        }
        RECORD_SETTLEMENT => {
            let count = read_count(&payload, COUNT_BYTES, "settlement")?;
            if count == 0 || count > SETTLEMENTS_MAX {
                return Err(RecordError::Count {
                    kind: "settlement",
                    count,
                });
            }
            let settled = read_targets(&payload, COUNT_BYTES, count, "settlement")?;
            if payload.len() != COUNT_BYTES + count * TARGET_BYTES {
                let needed = COUNT_BYTES + count * TARGET_BYTES;
                return Err(RecordError::Short {
                    kind: "settlement",
                    needed,
                    available: payload.len(),
                });
            }
            Ok(Decoded::Settlement { settled })
        }
        other => Err(RecordError::UnknownFlags(other)),
    }
}

fn read_count(payload: &[u8], width: usize, kind: &'static str) -> Result<usize, RecordError> {
    let Some(bytes) = payload.get(..width) else {
        return Err(RecordError::Short {
            kind,
            needed: width,
            available: payload.len(),
        });
    };
    Ok(match width {
        2 => u16::from_le_bytes([bytes[0], bytes[1]]) as usize,
        _ => u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize,
    })
}

fn read_targets(
    payload: &[u8],
    start: usize,
    count: usize,
    kind: &'static str,
) -> Result<Vec<Target>, RecordError> {
    let end = start + count * TARGET_BYTES;
    let Some(bytes) = payload.get(start..end) else {
        return Err(RecordError::Short {
            kind,
            needed: end,
            available: payload.len(),
        });
    };
    Ok(bytes
        .chunks_exact(TARGET_BYTES)
        .map(|chunk| Target {
            queue: QueueId(u32::from_le_bytes(chunk[..4].try_into().expect("4 bytes"))),
            sequence: u64::from_le_bytes(chunk[4..].try_into().expect("8 bytes")),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;

    fn envelope() -> StoredEnvelope {
        Envelope {
            queues: &[4, 9],
            exchange: "x",
            routing_key: "k",
            published_at_ns: 77,
            flags: 0,
            body: b"payload",
        }
        .encode()
    }

    #[test]
    fn a_message_record_round_trips_with_its_queue_sequences() {
        let targets = [
            Target {
                queue: QueueId(4),
                sequence: 10,
            },
            Target {
                queue: QueueId(9),
                sequence: 3,
            },
        ];
        let mut payload = Vec::new();
        encode_message(&targets, &envelope(), &mut payload);
        let Decoded::Message {
            targets: decoded,
            envelope,
        } = decode(RECORD_MESSAGE, Bytes::from(payload)).unwrap()
        else {
            panic!("not a message record");
        };
        assert_eq!(decoded, targets);
        assert_eq!(&envelope.body()[..], b"payload");
    }

    #[test]
    fn a_settlement_record_round_trips() {
        let settled = [Target {
            queue: QueueId(1),
            sequence: u64::MAX,
        }];
        let mut payload = Vec::new();
        encode_settlement(&settled, &mut payload);
        let Decoded::Settlement { settled: decoded } =
            decode(RECORD_SETTLEMENT, Bytes::from(payload)).unwrap()
        else {
            panic!("not a settlement record");
        };
        assert_eq!(decoded, settled);
    }

    #[test]
    fn short_oversized_and_unknown_records_are_refused() {
        assert!(matches!(
            decode(RECORD_MESSAGE, Bytes::new()),
            Err(RecordError::Short { .. })
        ));
        let huge = Bytes::from_static(&[0xFF, 0xFF, 0, 0]);
        assert!(matches!(
            decode(RECORD_MESSAGE, huge.clone()),
            Err(RecordError::Count { .. })
        ));
        assert!(matches!(
            decode(RECORD_SETTLEMENT, huge),
            Err(RecordError::Count { .. })
        ));
        let zero = Bytes::from_static(&[0, 0, 0, 0]);
        assert!(matches!(
            decode(RECORD_SETTLEMENT, zero),
            Err(RecordError::Count { .. })
        ));
        let truncated = Bytes::from_static(&[1, 0, 0, 0, 1]);
        assert!(matches!(
            decode(RECORD_SETTLEMENT, truncated),
            Err(RecordError::Short { .. })
        ));
        assert!(matches!(
            decode(7, Bytes::new()),
            Err(RecordError::UnknownFlags(7))
        ));

        let mut payload = Vec::new();
        encode_message(
            &[Target {
                queue: QueueId(1),
                sequence: 1,
            }],
            &envelope(),
            &mut payload,
        );
        payload.truncate(payload.len() - 3);
        assert!(matches!(
            decode(RECORD_MESSAGE, Bytes::from(payload)),
            Err(RecordError::Envelope(_))
        ));
    }
}
