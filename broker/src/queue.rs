//! One queue's state machine: its messages, the deliveries its consumers hold unacked, and their
//! credit. Sans-IO and single-threaded: the shard that owns the queue calls it, journals what it
//! reports, and turns its deliveries into frames. It does no I/O and reads no clock (times come
//! from the runtime: `MessageMeta::enqueued_at_ns` now, `now_ms` arguments for the timed features
//! to come). On the hot path (enqueue, dispatch, ack) it allocates only when a list grows past its
//! capacity, and it never copies a body: a delivery clones the `Bytes` handle, a reference-count
//! increment for bodies sliced from a shared receive buffer (a `Bytes` built from a `Vec` instead
//! allocates its shared header on the first clone).
//!
//! **The invariant.** Every message the queue accepted is in exactly one place until it leaves:
//! waiting for the watermark, ready, or held unacked by exactly one consumer. It leaves through
//! exactly one [`Departure`], which carries its journal offset so the runtime can mark the record
//! dead. The waiting and ready lists together are in ascending sequence; no consumer holds more
//! than its prefetch count; no message is delivered whose journal offset is at or above the
//! watermark of the queue's [`Durability`].
//!
//! **Order.** The queue assigns each message a sequence number; queue order is sequence order, not
//! journal order. A message that is requeued (nack, reject with requeue, a dead connection) goes
//! back to its original place by sequence, marked redelivered, keeping its delivery count.
//! Requeued messages mostly land near the head, where a `VecDeque` insert is cheap. A consumer its
//! client cancelled is only stopped: what it holds stays held until settled.
//!
//! **The watermark gate.** A durable queue delivers only what the shard has fsynced (a power loss
//! must not take back a message a consumer saw); a transient queue delivers what is written to the
//! OS; a memory queue delivers at once. New messages wait in `waiting` until the watermark passes
//! them. Journal offsets grow with sequence within a queue, so only the head of `waiting` needs
//! checking; each message is still checked on its own, so an offset out of order delays it and
//! those behind it but never lets one through early. A requeued message has passed the gate once
//! already and goes straight back to `ready`.
//!
//! **Credit and fairness.** Consumers sit in a ring in the order they were added. Each delivery
//! goes to the first consumer at or after the ring's cursor that has credit, and the cursor moves
//! past it: round robin among consumers with room. [`Queue::dispatch`] hands out at most
//! [`DISPATCH_BATCH_MAX`] deliveries per call so that one busy queue cannot hog its shard.
//!
//! **Memory.** The queue does not refuse publishes for memory; the shard does. The queue reports
//! [`Queue::memory_bytes`] (bodies plus a fixed cost per entry, so a flood of empty bodies still
//! counts), and the intended policy is the shard's: sum its queues' figures against a memory
//! budget, and above a high mark stop reading from publishing connections (credit withheld, rings
//! left full) until acks, purges and expiry bring it below a low mark, while consumers and acks
//! keep flowing. Later, a queue over its share may drop bodies of ready messages it can re-read
//! from the journal (`size_bytes` is kept apart from the body for that reason). The ready list
//! hands back capacity once it is under a quarter used, so a drained backlog does not keep its
//! peak; the figure counts entries in use, not spare capacity, which stays within about four
//! times the entries in use plus a small floor.
//!
//! **How the next features fit** (none is implemented yet):
//! - *Per-message and per-queue TTL, anywhere in the queue*: `MessageMeta::expires_at_ms` is
//!   stored already (a per-queue TTL is folded into it at enqueue). An expiry index, a heap or a
//!   timer wheel of `(expires_at_ms, sequence)`, is drained by an `expire(now_ms)` step; each due
//!   sequence is found in `ready` or `waiting` by binary search, since both are sorted, and
//!   removed, or left as a tombstone swept like a consumer's settled slots when removals in the
//!   middle get costly. A held message is skipped and expires when it comes back. Each leaves as
//!   a `Departure` with reason `Expired`.
//! - *Max length and max bytes*: the counts are kept per operation already. Drop-head pops the
//!   head of `ready` (then `waiting`) with reason `MaxLength`; reject-publish is a typed error from
//!   [`Queue::enqueue`] before a sequence is assigned.
//! - *Priorities*: one ready list per priority level (`MessageMeta::priority` is stored), each in
//!   sequence order; the gate moves a message from `waiting` into its level's list, dispatch takes
//!   from the highest non-empty level, and a requeue goes back into its own level by sequence.
//! - *Delivery limit*: `delivery_count` survives requeues; a requeue that would exceed the limit
//!   becomes a departure with reason `DeliveryLimit` instead.
//! - *Single active consumer*: the ring keeps the order consumers were added; dispatch serves only
//!   its first member, and a cancel promotes the next.
//! - *Consumer timeout with lease extension*: a held slot gains a deadline; a FIFO of
//!   `(deadline, consumer, sequence)` with stale entries skipped lets a `time_out(now_ms)` step
//!   requeue expired leases without scanning, and an extension only moves the slot's deadline.
//! - *Dead-letter reasons*: [`DepartureReason`] already separates acked from rejected, purged and
//!   deleted, and gains `Expired`, `MaxLength` and `DeliveryLimit`; the departure carries the body
//!   and metadata the dead-letter path needs.

mod consumer;
#[cfg(test)]
mod model_tests;
mod recovery;

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use consumer::Consumer;
pub use recovery::QueueRecovery;

/// The most deliveries [`Queue::dispatch`] hands out per call. A shard runs many queues on one
/// executor; 64 deliveries take a few microseconds here (see `bench-results/*-queue`), short enough
/// that a busy queue yields to its neighbours often, long enough to amortise the call.
pub const DISPATCH_BATCH_MAX: usize = 64;

/// The largest prefetch count a consumer may ask for, and the one it gets when it asks for 0
/// ("unlimited"). AMQP 0-9-1 carries prefetch-count in 16 bits; the cap also bounds what one dead
/// connection can push back into a queue at once.
pub const PREFETCH_COUNT_MAX: u32 = 65_535;

/// The most consumers one queue accepts. Acks find their consumer by a linear scan of the ring and
/// a delete answers every consumer with a cancel notice, so both stay cheap below this.
pub const CONSUMERS_PER_QUEUE_MAX: usize = 1024;

/// A ready list keeps up to this many entries of capacity however short it gets (about 100 KiB);
/// below it, handing memory back costs more in reallocations than it saves.
const LIST_CAPACITY_RETAINED_MIN: usize = 1024;

/// What [`Queue::memory_bytes`] charges for each message beyond its body: the entry in its list.
pub const MESSAGE_ENTRY_BYTES: u64 = std::mem::size_of::<Message>() as u64;

/// Which watermark a queue's deliveries wait for, and whether its messages are journaled at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Delivers below the durable (fsynced) watermark: what survives power loss.
    Durable,
    /// Delivers below the written watermark: what survives a broker crash.
    Transient,
    /// Not journaled; delivers at once. Messages may come without a journal offset.
    Memory,
}

/// A consumer, named by the runtime (unique within the queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConsumerId(pub u64);

/// The metadata a message keeps beside its opaque body. Reserved fields are stored now so that
/// the features of the module doc need no change of entry layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageMeta {
    /// When the message was published: the wall clock (ns since the Unix epoch) at its decode on
    /// the publishing connection's shard.
    pub enqueued_at_ns: u64,
    /// When the message expires; `None` for never. Stored, not enforced yet.
    pub expires_at_ms: Option<u64>,
    /// The message's priority. Stored, not used yet.
    pub priority: u8,
}

/// A message in the queue. Private: the runtime sees [`Delivery`] and [`Departure`].
struct Message {
    sequence: u64,
    journal_offset: Option<u64>,
    body: Bytes,
    meta: MessageMeta,
    size_bytes: u32,
    /// How many times the message has been delivered, this one included once it is delivered.
    delivery_count: u32,
    redelivered: bool,
}

/// One message handed to one consumer by [`Queue::dispatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub consumer: ConsumerId,
    pub sequence: u64,
    pub journal_offset: Option<u64>,
    /// A reference-counted handle on the body; the queue keeps its own for redelivery.
    pub body: Bytes,
    pub meta: MessageMeta,
    pub redelivered: bool,
    /// 1 on the first delivery; requeues keep the count and each delivery adds one.
    pub delivery_count: u32,
}

/// Why a message left the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DepartureReason {
    Acked,
    /// Nacked or rejected without requeue: a dead-letter candidate.
    Rejected,
    Purged,
    Deleted,
}

/// A message that left the queue. The runtime marks `journal_offset` dead in the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Departure {
    pub reason: DepartureReason,
    pub sequence: u64,
    pub journal_offset: Option<u64>,
    pub size_bytes: u32,
    pub delivery_count: u32,
    pub meta: MessageMeta,
    /// The body, for dead-lettering; dropping it frees the queue's share of the memory.
    pub body: Bytes,
}

impl Departure {
    fn new(message: Message, reason: DepartureReason) -> Departure {
        Departure {
            reason,
            sequence: message.sequence,
            journal_offset: message.journal_offset,
            size_bytes: message.size_bytes,
            delivery_count: message.delivery_count,
            meta: message.meta,
            body: message.body,
        }
    }
}

/// The messages a purge or a delete removed, as departures, ascending by sequence. The lists are
/// taken whole, not walked, so the runtime can mark the records dead at its own pace, yielding
/// between chunks.
pub struct Departures {
    messages: std::collections::vec_deque::IntoIter<Message>,
    reason: DepartureReason,
}

impl Iterator for Departures {
    type Item = Departure;

    fn next(&mut self) -> Option<Departure> {
        let message = self.messages.next()?;
        Some(Departure::new(message, self.reason))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.messages.size_hint()
    }
}

impl ExactSizeIterator for Departures {}

/// What a deleted queue leaves behind: consumers to send a cancel notice, records to mark dead.
pub struct Deleted {
    pub consumers: Vec<ConsumerId>,
    pub departures: Departures,
}

/// The figures a passive declare and the stats report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages not delivered, including those waiting for the watermark.
    pub ready_count: usize,
    /// The part of `ready_count` the watermark has not reached yet.
    pub waiting_count: usize,
    pub unacked_count: usize,
    /// Consumers taking deliveries; stopped ones still holding messages are not counted.
    pub consumer_count: usize,
    pub ready_bytes: u64,
    pub unacked_bytes: u64,
}

/// A refused operation. The runtime maps each to a numbered wire error; none is a broker fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// An ack, nack or reject names a delivery this consumer does not hold.
    UnknownDelivery {
        consumer: ConsumerId,
        sequence: u64,
    },
    UnknownConsumer {
        consumer: ConsumerId,
    },
    ConsumerExists {
        consumer: ConsumerId,
    },
    TooManyConsumers {
        consumer_count_max: usize,
    },
    PrefetchTooLarge {
        prefetch_count: u32,
    },
    /// A journaled queue was given a message without a journal offset.
    JournalOffsetMissing {
        durability: Durability,
    },
    BodyTooLarge {
        size_bytes: usize,
    },
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::UnknownDelivery { consumer, sequence } => write!(
                f,
                "consumer {} holds no delivery with sequence {sequence}",
                consumer.0
            ),
            QueueError::UnknownConsumer { consumer } => {
                write!(f, "no consumer {} on this queue", consumer.0)
            }
            QueueError::ConsumerExists { consumer } => {
                write!(f, "consumer {} already exists on this queue", consumer.0)
            }
            QueueError::TooManyConsumers { consumer_count_max } => {
                write!(
                    f,
                    "queue already has {consumer_count_max} consumers, the most allowed"
                )
            }
            QueueError::PrefetchTooLarge { prefetch_count } => write!(
                f,
                "prefetch count {prefetch_count} is above the maximum {PREFETCH_COUNT_MAX}"
            ),
            QueueError::JournalOffsetMissing { durability } => {
                write!(
                    f,
                    "a {durability:?} queue needs a journal offset for every message"
                )
            }
            QueueError::BodyTooLarge { size_bytes } => {
                write!(f, "body of {size_bytes} bytes does not fit a 32-bit size")
            }
        }
    }
}

impl std::error::Error for QueueError {}

/// One queue's state. See the module doc for the invariant it keeps.
pub struct Queue {
    durability: Durability,
    /// Journal offsets strictly below this may be delivered. Unused by memory queues.
    watermark: u64,
    next_sequence: u64,
    /// Passed the gate, ascending by sequence; every sequence here is below any in `waiting`.
    ready: VecDeque<Message>,
    /// Not yet passed the gate, ascending by sequence.
    waiting: VecDeque<Message>,
    /// Bodies in `ready` and `waiting`.
    ready_bytes: u64,
    consumers: Vec<Consumer>,
    /// The ring position that gets the next delivery if it has credit.
    cursor: usize,
    consumers_with_credit_count: usize,
    unacked_count: usize,
    unacked_bytes: u64,
}

impl Queue {
    pub fn new(durability: Durability) -> Queue {
        Queue::with_next_sequence(durability, 0)
    }

    fn with_next_sequence(durability: Durability, next_sequence: u64) -> Queue {
        Queue {
            durability,
            watermark: 0,
            next_sequence,
            ready: VecDeque::new(),
            waiting: VecDeque::new(),
            ready_bytes: 0,
            consumers: Vec::new(),
            cursor: 0,
            consumers_with_credit_count: 0,
            unacked_count: 0,
            unacked_bytes: 0,
        }
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The sequence the next [`Queue::enqueue`] will assign.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Accepts a message and returns its sequence. The runtime reserves the journal record first
    /// (so the offset is known) and writes the returned sequence into the record's envelope before
    /// its first await; the message is delivered once the watermark passes the offset.
    pub fn enqueue(
        &mut self,
        journal_offset: Option<u64>,
        body: Bytes,
        meta: MessageMeta,
    ) -> Result<u64, QueueError> {
        if journal_offset.is_none() && self.durability != Durability::Memory {
            return Err(QueueError::JournalOffsetMissing {
                durability: self.durability,
            });
        }
        let size_bytes = u32::try_from(body.len()).map_err(|_| QueueError::BodyTooLarge {
            size_bytes: body.len(),
        })?;

        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let message = Message {
            sequence,
            journal_offset,
            body,
            meta,
            size_bytes,
            delivery_count: 0,
            redelivered: false,
        };

        self.ready_bytes += u64::from(size_bytes);
        if self.waiting.is_empty() && self.passes_gate(&message) {
            self.ready.push_back(message);
        } else {
            self.waiting.push_back(message);
        }
        Ok(sequence)
    }

    /// Tells the queue the shard's watermarks: everything below `written_offset` is in the OS,
    /// everything below `durable_offset` is fsynced. The queue follows the one its durability
    /// names. Watermarks only move forward. Costs one move per message the gate passes: what the
    /// shard published between two watermark moves, or, once after recovery, the whole queue.
    pub fn advance_watermarks(&mut self, written_offset: u64, durable_offset: u64) {
        assert!(durable_offset <= written_offset);
        let watermark = match self.durability {
            Durability::Durable => durable_offset,
            Durability::Transient => written_offset,
            Durability::Memory => self.watermark,
        };
        assert!(watermark >= self.watermark, "watermark moved backwards");
        self.watermark = watermark;

        while let Some(message) = self.waiting.front() {
            if !self.passes_gate(message) {
                break;
            }
            let message = self.waiting.pop_front().expect("front checked above");
            self.ready.push_back(message);
        }
    }

    fn passes_gate(&self, message: &Message) -> bool {
        match (self.durability, message.journal_offset) {
            (Durability::Memory, _) => true,
            (_, Some(journal_offset)) => journal_offset < self.watermark,
            // Refused by `enqueue`, and recovery always has offsets.
            (_, None) => unreachable!("a journaled queue holds a message without an offset"),
        }
    }

    /// Adds a consumer with its prefetch window; 0 means the maximum.
    pub fn add_consumer(
        &mut self,
        consumer: ConsumerId,
        prefetch_count: u32,
    ) -> Result<(), QueueError> {
        if prefetch_count > PREFETCH_COUNT_MAX {
            return Err(QueueError::PrefetchTooLarge { prefetch_count });
        }
        if self.consumers.len() >= CONSUMERS_PER_QUEUE_MAX {
            return Err(QueueError::TooManyConsumers {
                consumer_count_max: CONSUMERS_PER_QUEUE_MAX,
            });
        }
        if self.consumer_index(consumer).is_some() {
            return Err(QueueError::ConsumerExists { consumer });
        }

        let prefetch_count = if prefetch_count == 0 {
            PREFETCH_COUNT_MAX
        } else {
            prefetch_count
        };
        self.consumers.push(Consumer::new(consumer, prefetch_count));
        self.consumers_with_credit_count += 1;
        Ok(())
    }

    /// Stops a consumer its client cancelled: it gets no more deliveries, and the messages it
    /// holds stay with it, still to be acked, nacked or rejected, as in AMQP 0-9-1's basic.cancel
    /// (wire/PROTOCOL.md, `Cancel`). Once it holds nothing it leaves the queue; if its connection
    /// closes first, [`Queue::remove_consumer`] returns what it still holds. Returns how many
    /// messages it still holds.
    pub fn stop_consumer(&mut self, consumer: ConsumerId) -> Result<usize, QueueError> {
        let index = self
            .consumer_index(consumer)
            .ok_or(QueueError::UnknownConsumer { consumer })?;

        let stopping = &mut self.consumers[index];
        if stopping.has_credit() {
            self.consumers_with_credit_count -= 1;
        }
        stopping.stopped = true;
        let held_count = stopping.held_count() as usize;
        if held_count == 0 {
            self.remove_at(index);
        }
        Ok(held_count)
    }

    /// Removes a consumer whose connection closed (or that was stopped and has gone with its
    /// connection). Every message it held goes back to its original place, marked redelivered.
    /// Returns how many went back.
    pub fn remove_consumer(&mut self, consumer: ConsumerId) -> Result<usize, QueueError> {
        let index = self
            .consumer_index(consumer)
            .ok_or(QueueError::UnknownConsumer { consumer })?;
        let removed = self.remove_at(index);

        // Newest first: each message then lands in front of the ones just returned, which near
        // the head is an O(1) insert; oldest first would shift every earlier one again, which for
        // a full window of the maximum prefetch is billions of moved bytes.
        let mut requeued_count = 0;
        for mut message in removed.into_held().rev() {
            self.unacked_count -= 1;
            self.unacked_bytes -= u64::from(message.size_bytes);
            message.redelivered = true;
            self.return_to_ready(message);
            requeued_count += 1;
        }
        Ok(requeued_count)
    }

    /// Takes the consumer at `index` out of the ring, keeping the cursor on the consumer that
    /// was next.
    fn remove_at(&mut self, index: usize) -> Consumer {
        let removed = self.consumers.remove(index);
        if removed.has_credit() {
            self.consumers_with_credit_count -= 1;
        }
        if index < self.cursor {
            self.cursor -= 1;
        }
        if self.cursor >= self.consumers.len() {
            self.cursor = 0;
        }
        removed
    }

    /// Hands ready messages to consumers with credit, round robin, appending to `deliveries`, at
    /// most [`DISPATCH_BATCH_MAX`] per call. Returns how many it delivered; call again while
    /// [`Queue::can_dispatch`] holds.
    pub fn dispatch(&mut self, deliveries: &mut Vec<Delivery>) -> usize {
        let mut delivered_count = 0;
        while delivered_count < DISPATCH_BATCH_MAX && self.consumers_with_credit_count > 0 {
            let Some(mut message) = self.ready.pop_front() else {
                break;
            };
            let index = self.next_consumer_with_credit();
            self.cursor = (index + 1) % self.consumers.len();

            message.delivery_count = message.delivery_count.saturating_add(1);
            deliveries.push(Delivery {
                consumer: self.consumers[index].id,
                sequence: message.sequence,
                journal_offset: message.journal_offset,
                body: message.body.clone(),
                meta: message.meta,
                redelivered: message.redelivered,
                delivery_count: message.delivery_count,
            });

            let size_bytes = u64::from(message.size_bytes);
            self.ready_bytes -= size_bytes;
            self.unacked_bytes += size_bytes;
            self.unacked_count += 1;
            let consumer = &mut self.consumers[index];
            consumer.hold(message);
            if !consumer.has_credit() {
                self.consumers_with_credit_count -= 1;
            }
            delivered_count += 1;
        }

        release_spare_capacity(&mut self.ready);
        delivered_count
    }

    /// Whether [`Queue::dispatch`] would deliver anything now.
    pub fn can_dispatch(&self) -> bool {
        self.consumers_with_credit_count > 0 && !self.ready.is_empty()
    }

    fn next_consumer_with_credit(&self) -> usize {
        let count = self.consumers.len();
        (0..count)
            .map(|step| (self.cursor + step) % count)
            .find(|&index| self.consumers[index].has_credit())
            .expect("consumers_with_credit_count is positive")
    }

    /// Settles a delivery positively: the message leaves the queue.
    pub fn ack(&mut self, consumer: ConsumerId, sequence: u64) -> Result<Departure, QueueError> {
        let message = self.release(consumer, sequence)?;
        Ok(Departure::new(message, DepartureReason::Acked))
    }

    /// Nack or reject without requeue: the message leaves the queue as a dead-letter candidate.
    pub fn reject(&mut self, consumer: ConsumerId, sequence: u64) -> Result<Departure, QueueError> {
        let message = self.release(consumer, sequence)?;
        Ok(Departure::new(message, DepartureReason::Rejected))
    }

    /// Nack or reject with requeue: the message goes back to its original place, redelivered.
    /// For a nack of many deliveries, requeue them newest first: each then lands in front of the
    /// ones already back instead of shifting them (see the requeue figures in the benchmark).
    pub fn requeue(&mut self, consumer: ConsumerId, sequence: u64) -> Result<(), QueueError> {
        let mut message = self.release(consumer, sequence)?;
        message.redelivered = true;
        self.return_to_ready(message);
        Ok(())
    }

    fn release(&mut self, consumer: ConsumerId, sequence: u64) -> Result<Message, QueueError> {
        let index = self
            .consumer_index(consumer)
            .ok_or(QueueError::UnknownDelivery { consumer, sequence })?;
        let holder = &mut self.consumers[index];

        let had_credit = holder.has_credit();
        let message = holder
            .release(sequence)
            .ok_or(QueueError::UnknownDelivery { consumer, sequence })?;
        if !had_credit && holder.has_credit() {
            self.consumers_with_credit_count += 1;
        }
        if holder.stopped && holder.held_count() == 0 {
            self.remove_at(index);
        }
        self.unacked_count -= 1;
        self.unacked_bytes -= u64::from(message.size_bytes);
        Ok(message)
    }

    /// Puts a message that was delivered back into `ready` at its place by sequence.
    fn return_to_ready(&mut self, message: Message) {
        // It was delivered, so it passed the gate, and the gate passes messages in order.
        assert!(
            self.waiting
                .front()
                .is_none_or(|w| w.sequence > message.sequence)
        );

        self.ready_bytes += u64::from(message.size_bytes);
        let sequence = message.sequence;
        if self
            .ready
            .front()
            .is_none_or(|first| sequence < first.sequence)
        {
            // The usual case: it was delivered from the head and nothing older came back since.
            self.ready.push_front(message);
            return;
        }
        let index = self.ready.partition_point(|m| m.sequence < sequence);
        assert!(self.ready.get(index).is_none_or(|m| m.sequence != sequence));
        self.ready.insert(index, message);
    }

    fn consumer_index(&self, consumer: ConsumerId) -> Option<usize> {
        self.consumers.iter().position(|c| c.id == consumer)
    }

    /// Removes every message not delivered (ready or waiting); held ones stay with their
    /// consumers. The count is `departures.len()`.
    pub fn purge(&mut self) -> Departures {
        let mut messages = std::mem::take(&mut self.ready);
        messages.append(&mut self.waiting);
        self.ready_bytes = 0;
        Departures {
            messages: messages.into_iter(),
            reason: DepartureReason::Purged,
        }
    }

    /// Ends the queue: every consumer not stopped gets a cancel notice (a stopped one was
    /// answered already) and every message, held or not, leaves.
    pub fn delete(mut self) -> Deleted {
        let consumers = self.active_consumers().map(|c| c.id).collect();
        for consumer in std::mem::take(&mut self.consumers) {
            for message in consumer.into_held().rev() {
                self.return_to_ready(message);
            }
        }

        let mut messages = self.ready;
        messages.append(&mut self.waiting);
        Deleted {
            consumers,
            departures: Departures {
                messages: messages.into_iter(),
                reason: DepartureReason::Deleted,
            },
        }
    }

    pub fn counts(&self) -> QueueCounts {
        QueueCounts {
            ready_count: self.ready.len() + self.waiting.len(),
            waiting_count: self.waiting.len(),
            unacked_count: self.unacked_count,
            consumer_count: self.active_consumers().count(),
            ready_bytes: self.ready_bytes,
            unacked_bytes: self.unacked_bytes,
        }
    }

    /// What the shard charges this queue against its memory budget: bodies, ready and unacked,
    /// plus [`MESSAGE_ENTRY_BYTES`] per message. Bodies shared with other queues (a fanout) are
    /// charged to each, which overstates but never understates.
    pub fn memory_bytes(&self) -> u64 {
        let message_count = (self.ready.len() + self.waiting.len() + self.unacked_count) as u64;
        self.ready_bytes + self.unacked_bytes + message_count * MESSAGE_ENTRY_BYTES
    }

    /// Points the messages whose journal records compaction copied forward at their copies, given
    /// the moves as old offset to new offset; returns how many messages moved. Messages stay in
    /// their lists; the caller then advances the watermarks, which already lie past every new
    /// offset in the journal (the store syncs the copies before it reports them), so a ready
    /// message passes the gate again before anything else touches the queue. Walks the whole
    /// queue: compaction is rare.
    pub fn relocate(&mut self, moved: &HashMap<u64, u64>) -> usize {
        let mut relocated_count = 0;
        let held = self.consumers.iter_mut().flat_map(Consumer::held_mut);
        for message in self
            .ready
            .iter_mut()
            .chain(self.waiting.iter_mut())
            .chain(held)
        {
            let Some(old_offset) = message.journal_offset else {
                continue;
            };
            if let Some(&new_offset) = moved.get(&old_offset) {
                message.journal_offset = Some(new_offset);
                relocated_count += 1;
            }
        }
        relocated_count
    }

    /// The sequences not delivered, in queue order (ready, then waiting for the watermark).
    pub fn ready_sequences(&self) -> impl Iterator<Item = u64> + '_ {
        self.ready.iter().chain(&self.waiting).map(|m| m.sequence)
    }

    /// The sequences a consumer holds unacked, ascending; `None` for an unknown consumer.
    pub fn unacked_sequences(&self, consumer: ConsumerId) -> Option<impl Iterator<Item = u64>> {
        let index = self.consumer_index(consumer)?;
        Some(self.consumers[index].held_sequences())
    }

    /// The consumers in ring order, stopped ones included.
    pub fn consumer_ids(&self) -> impl Iterator<Item = ConsumerId> + '_ {
        self.consumers.iter().map(|c| c.id)
    }

    /// The consumers still taking deliveries, in ring order.
    fn active_consumers(&self) -> impl Iterator<Item = &Consumer> {
        self.consumers.iter().filter(|c| !c.stopped)
    }

    /// Every check that costs a walk of the lists; for tests.
    #[cfg(test)]
    fn check_invariants(&self) {
        let sequences: Vec<u64> = self.ready_sequences().collect();
        assert!(sequences.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(
            sequences
                .last()
                .is_none_or(|&last| last < self.next_sequence)
        );
        assert!(self.ready.iter().all(|m| self.passes_gate(m)));
        assert!(self.waiting.front().is_none_or(|m| !self.passes_gate(m)));

        let ready_bytes: u64 = self
            .ready
            .iter()
            .chain(&self.waiting)
            .map(|m| u64::from(m.size_bytes))
            .sum();
        assert_eq!(ready_bytes, self.ready_bytes);
        assert!(
            self.ready
                .iter()
                .chain(&self.waiting)
                .all(|m| { m.body.len() == m.size_bytes as usize })
        );

        let mut unacked_count = 0;
        let mut with_credit_count = 0;
        for consumer in &self.consumers {
            consumer.check_invariants();
            assert!(
                !consumer.stopped || consumer.held_count() > 0,
                "a stopped consumer that holds nothing has left"
            );
            unacked_count += consumer.held_count() as usize;
            with_credit_count += usize::from(consumer.has_credit());
        }
        assert_eq!(unacked_count, self.unacked_count);
        assert_eq!(with_credit_count, self.consumers_with_credit_count);
        assert!(self.cursor < self.consumers.len().max(1));
    }
}

/// Halves a list's capacity once it is less than a quarter used, so that a drained backlog of
/// millions does not pin its peak memory for the queue's lifetime. Halving at a quarter keeps the
/// cost amortised: the list must grow or shrink by a quarter of its capacity between two moves.
fn release_spare_capacity<T>(list: &mut VecDeque<T>) {
    let capacity = list.capacity();
    if capacity > LIST_CAPACITY_RETAINED_MIN && list.len() < capacity / 4 {
        list.shrink_to((capacity / 2).max(LIST_CAPACITY_RETAINED_MIN));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: ConsumerId = ConsumerId(1);
    const BOB: ConsumerId = ConsumerId(2);
    const CAROL: ConsumerId = ConsumerId(3);

    /// A memory queue holding `count` messages of 3 bytes each, sequences 0 to `count - 1`.
    fn memory_queue_with(count: u64) -> Queue {
        let mut queue = Queue::new(Durability::Memory);
        for _ in 0..count {
            queue
                .enqueue(None, Bytes::from_static(b"abc"), MessageMeta::default())
                .unwrap();
        }
        queue
    }

    /// Dispatches until nothing more can go, returning (consumer, sequence) pairs.
    fn dispatch_all(queue: &mut Queue) -> Vec<(ConsumerId, u64)> {
        let mut deliveries = Vec::new();
        while queue.dispatch(&mut deliveries) > 0 {}
        queue.check_invariants();
        deliveries
            .iter()
            .map(|d| (d.consumer, d.sequence))
            .collect()
    }

    fn dispatch_one_batch(queue: &mut Queue) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        queue.dispatch(&mut deliveries);
        queue.check_invariants();
        deliveries
    }

    #[test]
    fn sequences_are_assigned_in_order_and_delivered_in_order() {
        let mut queue = memory_queue_with(3);
        queue.add_consumer(ALICE, 0).unwrap();
        assert_eq!(
            dispatch_all(&mut queue),
            vec![(ALICE, 0), (ALICE, 1), (ALICE, 2)]
        );
        assert_eq!(queue.next_sequence(), 3);
    }

    #[test]
    fn a_requeued_message_returns_to_its_original_place_not_the_tail() {
        let mut queue = memory_queue_with(5);
        queue.add_consumer(ALICE, 2).unwrap();
        assert_eq!(dispatch_all(&mut queue), vec![(ALICE, 0), (ALICE, 1)]);

        queue.requeue(ALICE, 1).unwrap();
        queue.check_invariants();
        assert_eq!(
            queue.ready_sequences().collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        queue.requeue(ALICE, 0).unwrap();
        assert_eq!(
            queue.ready_sequences().collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn a_requeued_message_is_redelivered_with_its_delivery_count_kept() {
        let mut queue = memory_queue_with(1);
        queue.add_consumer(ALICE, 1).unwrap();

        let first = dispatch_one_batch(&mut queue);
        assert!(!first[0].redelivered);
        assert_eq!(first[0].delivery_count, 1);

        queue.requeue(ALICE, 0).unwrap();
        let second = dispatch_one_batch(&mut queue);
        assert!(second[0].redelivered);
        assert_eq!(second[0].delivery_count, 2);
        assert_eq!(second[0].body, first[0].body);
    }

    #[test]
    fn a_message_requeued_from_the_middle_can_go_back_to_the_same_consumer() {
        let mut queue = memory_queue_with(3);
        queue.add_consumer(ALICE, 0).unwrap();
        assert_eq!(dispatch_all(&mut queue).len(), 3);

        queue.requeue(ALICE, 1).unwrap();
        assert_eq!(dispatch_all(&mut queue), vec![(ALICE, 1)]);
        let held: Vec<u64> = queue.unacked_sequences(ALICE).unwrap().collect();
        assert_eq!(held, vec![0, 1, 2]);
    }

    #[test]
    fn a_consumer_never_holds_more_than_its_prefetch() {
        let mut queue = memory_queue_with(10);
        queue.add_consumer(ALICE, 3).unwrap();
        assert_eq!(dispatch_all(&mut queue).len(), 3);
        assert_eq!(queue.counts().unacked_count, 3);
        assert!(!queue.can_dispatch());

        queue.ack(ALICE, 1).unwrap();
        assert_eq!(dispatch_all(&mut queue), vec![(ALICE, 3)]);
    }

    #[test]
    fn a_prefetch_of_zero_means_the_named_maximum() {
        let mut queue = memory_queue_with(u64::from(PREFETCH_COUNT_MAX) + 5);
        queue.add_consumer(ALICE, 0).unwrap();
        assert_eq!(dispatch_all(&mut queue).len(), PREFETCH_COUNT_MAX as usize);
        assert_eq!(
            queue.add_consumer(BOB, PREFETCH_COUNT_MAX + 1),
            Err(QueueError::PrefetchTooLarge {
                prefetch_count: PREFETCH_COUNT_MAX + 1
            })
        );
    }

    #[test]
    fn deliveries_go_round_robin_and_skip_consumers_without_credit() {
        let mut queue = memory_queue_with(7);
        queue.add_consumer(ALICE, 1).unwrap();
        queue.add_consumer(BOB, 10).unwrap();
        queue.add_consumer(CAROL, 10).unwrap();
        let expected = vec![
            (ALICE, 0),
            (BOB, 1),
            (CAROL, 2),
            (BOB, 3),
            (CAROL, 4),
            (BOB, 5),
            (CAROL, 6),
        ];
        assert_eq!(dispatch_all(&mut queue), expected);
    }

    #[test]
    fn the_round_robin_resumes_after_the_last_consumer_served() {
        let mut queue = memory_queue_with(2);
        queue.add_consumer(ALICE, 10).unwrap();
        queue.add_consumer(BOB, 10).unwrap();
        assert_eq!(dispatch_all(&mut queue), vec![(ALICE, 0), (BOB, 1)]);

        queue
            .enqueue(None, Bytes::from_static(b"d"), MessageMeta::default())
            .unwrap();
        assert_eq!(dispatch_all(&mut queue), vec![(ALICE, 2)]);
    }

    #[test]
    fn one_dispatch_call_delivers_at_most_the_batch_limit() {
        let mut queue = memory_queue_with(DISPATCH_BATCH_MAX as u64 * 2 + 1);
        queue.add_consumer(ALICE, 0).unwrap();
        assert_eq!(dispatch_one_batch(&mut queue).len(), DISPATCH_BATCH_MAX);
        assert!(queue.can_dispatch());
        assert_eq!(dispatch_all(&mut queue).len(), DISPATCH_BATCH_MAX + 1);
    }

    #[test]
    fn a_durable_queue_delivers_only_below_the_durable_watermark() {
        let mut queue = Queue::new(Durability::Durable);
        for journal_offset in [100, 200, 300] {
            queue
                .enqueue(
                    Some(journal_offset),
                    Bytes::from_static(b"x"),
                    MessageMeta::default(),
                )
                .unwrap();
        }
        queue.add_consumer(ALICE, 0).unwrap();
        assert!(dispatch_all(&mut queue).is_empty());

        queue.advance_watermarks(1000, 200);
        assert_eq!(dispatch_all(&mut queue), vec![(ALICE, 0)]);
        assert_eq!(queue.counts().waiting_count, 2);

        queue.advance_watermarks(1000, 301);
        assert_eq!(dispatch_all(&mut queue), vec![(ALICE, 1), (ALICE, 2)]);
    }

    #[test]
    fn a_transient_queue_delivers_below_the_written_watermark() {
        let mut queue = Queue::new(Durability::Transient);
        queue
            .enqueue(Some(100), Bytes::from_static(b"x"), MessageMeta::default())
            .unwrap();
        queue.add_consumer(ALICE, 0).unwrap();
        assert!(dispatch_all(&mut queue).is_empty());

        queue.advance_watermarks(101, 0);
        assert_eq!(dispatch_all(&mut queue), vec![(ALICE, 0)]);
    }

    #[test]
    fn a_message_enqueued_below_the_watermark_is_ready_at_once() {
        let mut queue = Queue::new(Durability::Durable);
        queue.advance_watermarks(500, 500);
        queue
            .enqueue(Some(100), Bytes::from_static(b"x"), MessageMeta::default())
            .unwrap();
        assert_eq!(queue.counts().waiting_count, 0);
    }

    #[test]
    fn a_requeued_message_skips_the_gate_and_waiting_messages_stay_behind_it() {
        let mut queue = Queue::new(Durability::Durable);
        for journal_offset in [100, 200] {
            queue
                .enqueue(
                    Some(journal_offset),
                    Bytes::from_static(b"x"),
                    MessageMeta::default(),
                )
                .unwrap();
        }
        queue.add_consumer(ALICE, 0).unwrap();
        queue.advance_watermarks(150, 150);
        assert_eq!(dispatch_all(&mut queue), vec![(ALICE, 0)]);

        queue.requeue(ALICE, 0).unwrap();
        assert_eq!(dispatch_all(&mut queue), vec![(ALICE, 0)]);
        assert_eq!(queue.counts().waiting_count, 1);
    }

    #[test]
    fn a_journaled_queue_refuses_a_message_without_an_offset() {
        let mut queue = Queue::new(Durability::Durable);
        let result = queue.enqueue(None, Bytes::new(), MessageMeta::default());
        assert_eq!(
            result,
            Err(QueueError::JournalOffsetMissing {
                durability: Durability::Durable
            })
        );
        assert_eq!(queue.next_sequence(), 0);
    }

    #[test]
    fn a_stopped_consumer_gets_nothing_more_and_keeps_what_it_holds_until_settled() {
        let mut queue = memory_queue_with(6);
        queue.add_consumer(ALICE, 2).unwrap();
        queue.add_consumer(BOB, 2).unwrap();
        assert_eq!(
            dispatch_all(&mut queue),
            vec![(ALICE, 0), (BOB, 1), (ALICE, 2), (BOB, 3)]
        );

        assert_eq!(queue.stop_consumer(ALICE), Ok(2));
        queue.check_invariants();
        assert_eq!(queue.counts().consumer_count, 1);
        assert_eq!(queue.counts().unacked_count, 4);
        assert_eq!(queue.ready_sequences().collect::<Vec<_>>(), vec![4, 5]);

        queue.ack(BOB, 1).unwrap();
        queue.ack(ALICE, 0).unwrap();
        assert_eq!(
            dispatch_all(&mut queue),
            vec![(BOB, 4)],
            "none for the stopped one"
        );

        queue.requeue(ALICE, 2).unwrap();
        assert_eq!(
            queue.consumer_ids().collect::<Vec<_>>(),
            vec![BOB],
            "a stopped consumer leaves once it holds nothing"
        );
        assert_eq!(queue.ready_sequences().collect::<Vec<_>>(), vec![2, 5]);
        assert_eq!(
            queue.remove_consumer(ALICE),
            Err(QueueError::UnknownConsumer { consumer: ALICE })
        );
    }

    #[test]
    fn removing_a_stopped_consumer_returns_what_it_still_holds() {
        let mut queue = memory_queue_with(3);
        queue.add_consumer(ALICE, 3).unwrap();
        dispatch_all(&mut queue);
        queue.stop_consumer(ALICE).unwrap();
        queue.ack(ALICE, 1).unwrap();

        assert_eq!(queue.remove_consumer(ALICE), Ok(2));
        queue.check_invariants();
        assert_eq!(queue.ready_sequences().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(queue.counts().unacked_count, 0);
    }

    #[test]
    fn a_consumer_stopped_while_holding_nothing_leaves_at_once() {
        let mut queue = memory_queue_with(0);
        queue.add_consumer(ALICE, 3).unwrap();
        queue.add_consumer(BOB, 3).unwrap();
        assert_eq!(queue.stop_consumer(ALICE), Ok(0));
        queue.check_invariants();
        assert_eq!(queue.consumer_ids().collect::<Vec<_>>(), vec![BOB]);
    }

    #[test]
    fn a_deleted_queue_notifies_only_consumers_not_stopped() {
        let mut queue = memory_queue_with(2);
        queue.add_consumer(ALICE, 1).unwrap();
        queue.add_consumer(BOB, 1).unwrap();
        dispatch_all(&mut queue);
        queue.stop_consumer(ALICE).unwrap();

        let deleted = queue.delete();
        assert_eq!(deleted.consumers, vec![BOB]);
        assert_eq!(deleted.departures.len(), 2);
    }

    #[test]
    fn removing_a_consumer_returns_its_unacked_messages_in_place_marked_redelivered() {
        let mut queue = memory_queue_with(4);
        queue.add_consumer(ALICE, 2).unwrap();
        queue.add_consumer(BOB, 2).unwrap();
        assert_eq!(
            dispatch_all(&mut queue),
            vec![(ALICE, 0), (BOB, 1), (ALICE, 2), (BOB, 3)]
        );

        assert_eq!(queue.remove_consumer(ALICE), Ok(2));
        queue.check_invariants();
        assert_eq!(queue.ready_sequences().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(queue.counts().unacked_count, 2);

        queue.ack(BOB, 1).unwrap();
        let redelivered = dispatch_one_batch(&mut queue);
        assert_eq!(redelivered.len(), 1);
        assert_eq!(
            (redelivered[0].sequence, redelivered[0].redelivered),
            (0, true)
        );
    }

    #[test]
    fn acks_settle_out_of_order_and_free_credit() {
        let mut queue = memory_queue_with(200);
        queue.add_consumer(ALICE, 100).unwrap();
        assert_eq!(dispatch_all(&mut queue).len(), 100);

        for sequence in (1..100).rev().step_by(2) {
            let departure = queue.ack(ALICE, sequence).unwrap();
            assert_eq!(departure.reason, DepartureReason::Acked);
            queue.check_invariants();
        }
        let held: Vec<u64> = queue.unacked_sequences(ALICE).unwrap().collect();
        assert_eq!(held, (0..100).step_by(2).collect::<Vec<u64>>());
        assert_eq!(dispatch_all(&mut queue).len(), 50);
    }

    #[test]
    fn an_ack_for_an_unknown_delivery_is_an_error() {
        let mut queue = memory_queue_with(2);
        queue.add_consumer(ALICE, 1).unwrap();
        queue.add_consumer(BOB, 1).unwrap();
        dispatch_all(&mut queue);

        let wrong_consumer = queue.ack(BOB, 0);
        assert_eq!(
            wrong_consumer,
            Err(QueueError::UnknownDelivery {
                consumer: BOB,
                sequence: 0
            })
        );
        assert!(queue.ack(CAROL, 0).is_err());
        assert!(queue.ack(ALICE, 7).is_err());

        queue.ack(ALICE, 0).unwrap();
        assert!(queue.ack(ALICE, 0).is_err(), "a second ack of one delivery");
        assert!(queue.requeue(ALICE, 0).is_err());
        queue.check_invariants();
    }

    #[test]
    fn a_reject_without_requeue_removes_the_message_with_its_offset_and_reason() {
        let mut queue = Queue::new(Durability::Transient);
        queue
            .enqueue(
                Some(40),
                Bytes::from_static(b"body"),
                MessageMeta::default(),
            )
            .unwrap();
        queue.advance_watermarks(41, 0);
        queue.add_consumer(ALICE, 1).unwrap();
        dispatch_all(&mut queue);

        let departure = queue.reject(ALICE, 0).unwrap();
        assert_eq!(departure.reason, DepartureReason::Rejected);
        assert_eq!(departure.journal_offset, Some(40));
        assert_eq!(departure.body, Bytes::from_static(b"body"));
        assert_eq!(
            queue.counts(),
            QueueCounts {
                consumer_count: 1,
                ..QueueCounts::default()
            }
        );
    }

    #[test]
    fn purge_removes_ready_and_waiting_messages_but_keeps_unacked_ones() {
        let mut queue = Queue::new(Durability::Durable);
        for journal_offset in [10, 20, 30, 40] {
            queue
                .enqueue(
                    Some(journal_offset),
                    Bytes::from_static(b"x"),
                    MessageMeta::default(),
                )
                .unwrap();
        }
        queue.advance_watermarks(35, 35);
        queue.add_consumer(ALICE, 1).unwrap();
        dispatch_all(&mut queue);

        let departures = queue.purge();
        assert_eq!(departures.len(), 3, "purge reports how many it removed");
        let purged: Vec<Departure> = departures.collect();
        let offsets: Vec<Option<u64>> = purged.iter().map(|d| d.journal_offset).collect();
        assert_eq!(offsets, vec![Some(20), Some(30), Some(40)]);
        assert!(purged.iter().all(|d| d.reason == DepartureReason::Purged));
        queue.check_invariants();
        assert_eq!(queue.counts().ready_count, 0);
        assert_eq!(queue.counts().unacked_count, 1);
        assert_eq!(queue.ack(ALICE, 0).unwrap().journal_offset, Some(10));
    }

    /// Compaction's moves reach every message wherever it is (unacked, ready, waiting for the
    /// watermark), so that its ack, purge or delete marks the copy dead and not the original;
    /// messages whose records did not move keep their offsets.
    #[test]
    fn relocate_points_unacked_ready_and_waiting_messages_at_their_copies() {
        let mut queue = Queue::new(Durability::Durable);
        for journal_offset in [10, 20, 30, 40] {
            queue
                .enqueue(
                    Some(journal_offset),
                    Bytes::from_static(b"x"),
                    MessageMeta::default(),
                )
                .unwrap();
        }
        queue.advance_watermarks(35, 35);
        queue.add_consumer(ALICE, 1).unwrap();
        dispatch_all(&mut queue);

        let moved: HashMap<u64, u64> = [(10, 110), (30, 130), (40, 140)].into_iter().collect();
        assert_eq!(queue.relocate(&moved), 3);
        // The copies are synced before the store reports them, so the watermark passes them.
        queue.advance_watermarks(150, 150);
        queue.check_invariants();

        assert_eq!(queue.ack(ALICE, 0).unwrap().journal_offset, Some(110));
        let offsets: Vec<Option<u64>> = queue.purge().map(|d| d.journal_offset).collect();
        assert_eq!(offsets, vec![Some(20), Some(130), Some(140)]);
    }

    #[test]
    fn delete_returns_every_consumer_and_every_offset() {
        let mut queue = Queue::new(Durability::Transient);
        for journal_offset in [10, 20, 30] {
            queue
                .enqueue(
                    Some(journal_offset),
                    Bytes::from_static(b"x"),
                    MessageMeta::default(),
                )
                .unwrap();
        }
        queue.advance_watermarks(25, 0);
        queue.add_consumer(ALICE, 1).unwrap();
        queue.add_consumer(BOB, 1).unwrap();
        dispatch_all(&mut queue);

        let deleted = queue.delete();
        assert_eq!(deleted.consumers, vec![ALICE, BOB]);
        let departures: Vec<Departure> = deleted.departures.collect();
        let offsets: Vec<Option<u64>> = departures.iter().map(|d| d.journal_offset).collect();
        assert_eq!(offsets, vec![Some(10), Some(20), Some(30)]);
        assert!(
            departures
                .iter()
                .all(|d| d.reason == DepartureReason::Deleted)
        );
    }

    #[test]
    fn recovery_restores_in_sequence_order_marked_redelivered_without_settled_messages() {
        let mut recovery = QueueRecovery::new(Durability::Durable);
        let body = Bytes::from_static(b"x");
        for (sequence, journal_offset) in [(0, 100), (1, 200), (2, 300), (3, 400)] {
            let restored =
                recovery.restore(sequence, journal_offset, body.clone(), Default::default());
            assert_eq!(restored, Ok(None));
        }
        assert_eq!(recovery.forget(1), Some(200));
        assert_eq!(
            recovery.forget(9),
            None,
            "a settlement whose message record is gone"
        );
        // Compaction copied sequence 0 forward; the copy supersedes the original record.
        assert_eq!(
            recovery.restore(0, 500, body, Default::default()),
            Ok(Some(100))
        );

        let mut queue = recovery.finish();
        queue.check_invariants();
        assert_eq!(queue.next_sequence(), 10);
        assert_eq!(queue.ready_sequences().collect::<Vec<_>>(), vec![0, 2, 3]);

        queue.add_consumer(ALICE, 0).unwrap();
        queue.advance_watermarks(501, 501);
        let deliveries = dispatch_one_batch(&mut queue);
        let sequences: Vec<u64> = deliveries.iter().map(|d| d.sequence).collect();
        assert_eq!(sequences, vec![0, 2, 3]);
        assert!(
            deliveries
                .iter()
                .all(|d| d.redelivered && d.delivery_count == 1)
        );
        assert_eq!(deliveries[0].journal_offset, Some(500));
    }

    #[test]
    fn counts_and_memory_follow_bytes_ready_and_unacked() {
        let mut queue = memory_queue_with(3);
        queue.add_consumer(ALICE, 1).unwrap();
        dispatch_all(&mut queue);
        assert_eq!(
            queue.counts(),
            QueueCounts {
                ready_count: 2,
                waiting_count: 0,
                unacked_count: 1,
                consumer_count: 1,
                ready_bytes: 6,
                unacked_bytes: 3,
            }
        );
        assert_eq!(queue.memory_bytes(), 9 + 3 * MESSAGE_ENTRY_BYTES);
    }

    #[test]
    fn a_drained_backlog_hands_its_memory_back() {
        let mut queue = memory_queue_with(100_000);
        let peak_capacity = queue.ready.capacity();
        queue.add_consumer(ALICE, 0).unwrap();

        let mut deliveries = Vec::new();
        while queue.can_dispatch() {
            deliveries.clear();
            queue.dispatch(&mut deliveries);
            for delivery in &deliveries {
                queue.ack(ALICE, delivery.sequence).unwrap();
            }
        }
        queue.check_invariants();
        assert_eq!(queue.counts().ready_count, 0);
        assert!(peak_capacity >= 100_000);
        assert!(queue.ready.capacity() <= 2 * LIST_CAPACITY_RETAINED_MIN);
    }

    #[test]
    fn consumer_ids_are_unique_and_bounded() {
        let mut queue = Queue::new(Durability::Memory);
        queue.add_consumer(ALICE, 1).unwrap();
        assert_eq!(
            queue.add_consumer(ALICE, 1),
            Err(QueueError::ConsumerExists { consumer: ALICE })
        );
        for id in 2..=CONSUMERS_PER_QUEUE_MAX as u64 {
            queue.add_consumer(ConsumerId(id), 1).unwrap();
        }
        assert!(matches!(
            queue.add_consumer(ConsumerId(0), 1),
            Err(QueueError::TooManyConsumers { .. })
        ));
        assert_eq!(
            queue.remove_consumer(ConsumerId(u64::MAX)),
            Err(QueueError::UnknownConsumer {
                consumer: ConsumerId(u64::MAX)
            })
        );
    }
}
