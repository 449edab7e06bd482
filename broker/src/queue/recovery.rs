//! Rebuilding a queue from its shard's journal after a restart.
//!
//! The runtime replays the journal in offset order and feeds this queue's records to it: each
//! message record to [`QueueRecovery::restore`], each settlement record (ack, reject, purge) to
//! [`QueueRecovery::forget`]. A settlement always follows the record it settles, because a message
//! is delivered only after it is written. What remains when the replay ends comes back in sequence
//! order, every message marked redelivered: a consumer may have seen it before the crash, and its
//! ack was not journaled (at-least-once, never lost).
//!
//! Replay is not the hot path, so the messages sit in a `BTreeMap` while records arrive in any
//! sequence order; compaction may have copied an old message forward, so a sequence can be
//! restored twice, and the later copy wins.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{Durability, Message, MessageMeta, Queue, QueueError};

/// A queue being rebuilt from a journal replay.
pub struct QueueRecovery {
    durability: Durability,
    messages: BTreeMap<u64, Message>,
    /// One past the highest sequence any record named, settled or not: a new message must never
    /// reuse a sequence that an old settlement record in the journal could still refer to.
    next_sequence: u64,
}

impl QueueRecovery {
    pub fn new(durability: Durability) -> QueueRecovery {
        QueueRecovery {
            durability,
            messages: BTreeMap::new(),
            next_sequence: 0,
        }
    }

    /// Restores a message record. Returns the journal offset of an earlier copy of the same
    /// message that this one supersedes (its record can be marked dead), if there was one.
    pub fn restore(
        &mut self,
        sequence: u64,
        journal_offset: u64,
        body: Bytes,
        meta: MessageMeta,
    ) -> Result<Option<u64>, QueueError> {
        let size_bytes = u32::try_from(body.len()).map_err(|_| QueueError::BodyTooLarge {
            size_bytes: body.len(),
        })?;

        self.next_sequence = self.next_sequence.max(sequence.saturating_add(1));
        let message = Message {
            sequence,
            journal_offset: Some(journal_offset),
            body,
            meta,
            size_bytes,
            // Deliveries are not journaled, so the count restarts; the flag says it may be a
            // repeat.
            delivery_count: 0,
            redelivered: true,
        };
        let superseded = self.messages.insert(sequence, message);
        Ok(superseded.and_then(|m| m.journal_offset))
    }

    /// Applies a settlement record. Returns the journal offset of the message it removed; `None`
    /// when the message's own record is already gone (its segment was deleted once every record
    /// in it was dead), which is expected and harmless.
    pub fn forget(&mut self, sequence: u64) -> Option<u64> {
        self.next_sequence = self.next_sequence.max(sequence.saturating_add(1));
        self.messages.remove(&sequence)?.journal_offset
    }

    /// How many messages the replay has left so far.
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }

    /// Ends the replay. The messages wait for the watermark like new ones: the runtime advances
    /// it once the recovered journal is known to be durable.
    pub fn finish(self) -> Queue {
        let mut queue = Queue::with_next_sequence(self.durability, self.next_sequence);
        for message in self.messages.into_values() {
            queue.ready_bytes += u64::from(message.size_bytes);
            queue.waiting.push_back(message);
        }
        // A memory queue has no watermark to wait for.
        queue.advance_watermarks(0, 0);
        queue
    }
}
