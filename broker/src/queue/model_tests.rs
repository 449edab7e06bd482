//! The queue against a reference model, over random operation sequences.
//!
//! The model shares no code with the queue: one flat vector of messages indexed by sequence, each
//! with the place it is in, and every question answered by a linear scan. It is slow and obviously
//! right; the queue must agree with it after every step, delivery for delivery. proptest reports
//! the failing case (shrunk) and keeps its seed in `model_tests.regressions`, replayed first on
//! every run.
//!
//! What it cannot catch: cost (a quadratic requeue agrees with the model; the benchmark watches
//! that), journal offsets out of order within a queue and compaction copies seen twice in a replay
//! (the test journal has neither; unit tests cover the second), and limits too large to reach in
//! a short run (the prefetch and consumer maxima, 4 GiB bodies).

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use super::{
    ConsumerId, DISPATCH_BATCH_MAX, Delivery, Departure, DepartureReason, Durability, MessageMeta,
    PREFETCH_COUNT_MAX, Queue, QueueRecovery,
};

/// Consumer ids are drawn from this few so that operations often hit an existing consumer.
const CONSUMER_ID_COUNT: u8 = 4;

#[derive(Clone, Debug)]
enum Op {
    Enqueue {
        offset_gap: u64,
        size_bytes: usize,
    },
    AdvanceWatermarks {
        written_step: u64,
        durable_step: u64,
    },
    AddConsumer {
        consumer: u8,
        prefetch_count: u32,
    },
    RemoveConsumer {
        consumer: u8,
    },
    StopConsumer {
        consumer: u8,
    },
    Dispatch,
    Ack {
        consumer: u8,
        pick: usize,
    },
    Reject {
        consumer: u8,
        pick: usize,
    },
    Requeue {
        consumer: u8,
        pick: usize,
    },
    Purge,
    /// The broker restarts: the queue is rebuilt from the test's journal.
    Restart,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let consumer = 0..CONSUMER_ID_COUNT;
    prop_oneof![
        6 => (1..4u64, 0..8usize).prop_map(|(offset_gap, size_bytes)| Op::Enqueue {
            offset_gap,
            size_bytes
        }),
        3 => (0..6u64, 0..6u64).prop_map(|(written_step, durable_step)| {
            Op::AdvanceWatermarks { written_step, durable_step }
        }),
        2 => (consumer.clone(), 0..4u32).prop_map(|(consumer, prefetch_count)| {
            Op::AddConsumer { consumer, prefetch_count }
        }),
        1 => consumer.clone().prop_map(|consumer| Op::RemoveConsumer { consumer }),
        1 => consumer.clone().prop_map(|consumer| Op::StopConsumer { consumer }),
        4 => Just(Op::Dispatch),
        4 => (consumer.clone(), any::<usize>()).prop_map(|(consumer, pick)| Op::Ack {
            consumer,
            pick
        }),
        1 => (consumer.clone(), any::<usize>()).prop_map(|(consumer, pick)| Op::Reject {
            consumer,
            pick
        }),
        2 => (consumer, any::<usize>()).prop_map(|(consumer, pick)| Op::Requeue {
            consumer,
            pick
        }),
        1 => Just(Op::Purge),
        1 => Just(Op::Restart),
    ]
}

fn durability_strategy() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Durable),
        Just(Durability::Transient),
        Just(Durability::Memory),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Queued,
    Held(ConsumerId),
    Gone,
}

#[derive(Clone, Debug)]
struct ModelMessage {
    journal_offset: Option<u64>,
    size_bytes: usize,
    redelivered: bool,
    delivery_count: u32,
    place: Place,
}

#[derive(Clone, Copy, Debug)]
struct ModelConsumer {
    id: ConsumerId,
    limit: usize,
    stopped: bool,
}

/// The reference: messages indexed by sequence, consumers in ring order with their limits.
struct Model {
    durability: Durability,
    written_offset: u64,
    durable_offset: u64,
    next_journal_offset: u64,
    messages: Vec<ModelMessage>,
    consumers: Vec<ModelConsumer>,
    cursor: usize,
}

impl Model {
    fn deliverable(&self, message: &ModelMessage) -> bool {
        match (self.durability, message.journal_offset) {
            (Durability::Memory, _) => true,
            (Durability::Durable, Some(offset)) => offset < self.durable_offset,
            (Durability::Transient, Some(offset)) => offset < self.written_offset,
            (_, None) => false,
        }
    }

    fn held_by(&self, consumer: ConsumerId) -> Vec<u64> {
        (0..self.messages.len() as u64)
            .filter(|&sequence| self.messages[sequence as usize].place == Place::Held(consumer))
            .collect()
    }

    fn queued(&self) -> Vec<u64> {
        (0..self.messages.len() as u64)
            .filter(|&sequence| self.messages[sequence as usize].place == Place::Queued)
            .collect()
    }

    /// One dispatch call: the lowest queued sequence goes to the next consumer with room.
    fn dispatch(&mut self) -> Vec<(ConsumerId, u64)> {
        let mut deliveries = Vec::new();
        while deliveries.len() < DISPATCH_BATCH_MAX {
            let Some(&sequence) = self.queued().first() else {
                break;
            };
            if !self.deliverable(&self.messages[sequence as usize]) {
                break;
            }
            let count = self.consumers.len();
            let Some(index) = (0..count)
                .map(|step| (self.cursor + step) % count)
                .find(|&i| {
                    let consumer = self.consumers[i];
                    !consumer.stopped && self.held_by(consumer.id).len() < consumer.limit
                })
            else {
                break;
            };

            let consumer = self.consumers[index].id;
            self.cursor = (index + 1) % count;
            let message = &mut self.messages[sequence as usize];
            message.place = Place::Held(consumer);
            message.delivery_count += 1;
            deliveries.push((consumer, sequence));
        }
        deliveries
    }

    fn settle(&mut self, consumer: ConsumerId, sequence: u64, requeue: bool) -> bool {
        let Some(message) = self.messages.get_mut(sequence as usize) else {
            return false;
        };
        if message.place != Place::Held(consumer) {
            return false;
        }
        if requeue {
            message.place = Place::Queued;
            message.redelivered = true;
        } else {
            message.place = Place::Gone;
        }
        let stopped = self.consumers.iter().any(|c| c.id == consumer && c.stopped);
        if stopped && self.held_by(consumer).is_empty() {
            self.take_out(consumer);
        }
        true
    }

    fn take_out(&mut self, consumer: ConsumerId) -> Option<()> {
        let index = self.consumers.iter().position(|c| c.id == consumer)?;
        self.consumers.remove(index);
        if index < self.cursor {
            self.cursor -= 1;
        }
        if self.cursor >= self.consumers.len() {
            self.cursor = 0;
        }
        Some(())
    }

    fn remove_consumer(&mut self, consumer: ConsumerId) -> Option<usize> {
        self.take_out(consumer)?;
        let held = self.held_by(consumer);
        for &sequence in &held {
            let message = &mut self.messages[sequence as usize];
            message.place = Place::Queued;
            message.redelivered = true;
        }
        Some(held.len())
    }

    /// The client cancelled: no more deliveries; what it holds stays until settled.
    fn stop_consumer(&mut self, consumer: ConsumerId) -> Option<usize> {
        let entry = self.consumers.iter_mut().find(|c| c.id == consumer)?;
        entry.stopped = true;
        let held_count = self.held_by(consumer).len();
        if held_count == 0 {
            self.take_out(consumer);
        }
        Some(held_count)
    }

    fn active_consumers(&self) -> Vec<ConsumerId> {
        let active = self.consumers.iter().filter(|c| !c.stopped);
        active.map(|c| c.id).collect()
    }
}

/// The journal as the runtime would write it for this queue: message records in offset order and
/// settlement records after the messages they settle.
enum Record {
    Message {
        sequence: u64,
        journal_offset: u64,
        size_bytes: usize,
    },
    Settlement {
        sequence: u64,
    },
}

fn body_of(sequence: u64, size_bytes: usize) -> Bytes {
    Bytes::from(vec![sequence as u8; size_bytes])
}

/// Runs both sides and checks they agree after every step.
struct Harness {
    queue: Queue,
    model: Model,
    journal: Vec<Record>,
    /// How many times each sequence has departed; must never exceed one.
    departed: BTreeMap<u64, u32>,
}

impl Harness {
    fn new(durability: Durability) -> Harness {
        Harness {
            queue: Queue::new(durability),
            model: Model {
                durability,
                written_offset: 0,
                durable_offset: 0,
                next_journal_offset: 0,
                messages: Vec::new(),
                consumers: Vec::new(),
                cursor: 0,
            },
            journal: Vec::new(),
            departed: BTreeMap::new(),
        }
    }

    fn record_departure(&mut self, departure: &Departure) {
        let count = self.departed.entry(departure.sequence).or_insert(0);
        *count += 1;
        assert_eq!(*count, 1, "sequence {} departed twice", departure.sequence);

        let expected = &self.model.messages[departure.sequence as usize];
        assert_eq!(departure.journal_offset, expected.journal_offset);
        assert_eq!(departure.size_bytes as usize, expected.size_bytes);
        assert_eq!(
            departure.body,
            body_of(departure.sequence, expected.size_bytes)
        );
        self.journal.push(Record::Settlement {
            sequence: departure.sequence,
        });
    }

    fn pick_sequence(&self, consumer: ConsumerId, pick: usize) -> u64 {
        let held = self.model.held_by(consumer);
        if !held.is_empty() && !pick.is_multiple_of(4) {
            held[pick % held.len()]
        } else {
            // Often unknown to this consumer: held by another, queued, gone or never assigned.
            (pick as u64) % (self.model.messages.len() as u64 + 2)
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Enqueue {
                offset_gap,
                size_bytes,
            } => self.enqueue(offset_gap, size_bytes),
            Op::AdvanceWatermarks {
                written_step,
                durable_step,
            } => {
                let model = &mut self.model;
                model.written_offset = (model.written_offset + written_step)
                    .min(model.next_journal_offset + 1)
                    .max(model.written_offset);
                model.durable_offset =
                    (model.durable_offset + durable_step).min(model.written_offset);
                self.queue
                    .advance_watermarks(model.written_offset, model.durable_offset);
            }
            Op::AddConsumer {
                consumer,
                prefetch_count,
            } => {
                let consumer = ConsumerId(u64::from(consumer));
                let result = self.queue.add_consumer(consumer, prefetch_count);
                let exists = self.model.consumers.iter().any(|c| c.id == consumer);
                assert_eq!(result.is_ok(), !exists);
                if !exists {
                    let limit = if prefetch_count == 0 {
                        PREFETCH_COUNT_MAX
                    } else {
                        prefetch_count
                    };
                    self.model.consumers.push(ModelConsumer {
                        id: consumer,
                        limit: limit as usize,
                        stopped: false,
                    });
                }
            }
            Op::RemoveConsumer { consumer } => {
                let consumer = ConsumerId(u64::from(consumer));
                let result = self.queue.remove_consumer(consumer).ok();
                assert_eq!(result, self.model.remove_consumer(consumer));
            }
            Op::StopConsumer { consumer } => {
                let consumer = ConsumerId(u64::from(consumer));
                let result = self.queue.stop_consumer(consumer).ok();
                assert_eq!(result, self.model.stop_consumer(consumer));
            }
            Op::Dispatch => self.dispatch(),
            Op::Ack { consumer, pick } => self.settle(consumer, pick, Settle::Ack),
            Op::Reject { consumer, pick } => self.settle(consumer, pick, Settle::Reject),
            Op::Requeue { consumer, pick } => self.settle(consumer, pick, Settle::Requeue),
            Op::Purge => {
                let departures: Vec<Departure> = self.queue.purge().collect();
                let queued = self.model.queued();
                let sequences: Vec<u64> = departures.iter().map(|d| d.sequence).collect();
                assert_eq!(sequences, queued);
                for departure in &departures {
                    assert_eq!(departure.reason, DepartureReason::Purged);
                    self.record_departure(departure);
                    self.model.messages[departure.sequence as usize].place = Place::Gone;
                }
            }
            Op::Restart => self.restart(),
        }
    }

    fn enqueue(&mut self, offset_gap: u64, size_bytes: usize) {
        let sequence = self.model.messages.len() as u64;
        let journal_offset = match self.model.durability {
            Durability::Memory => None,
            Durability::Durable | Durability::Transient => {
                self.model.next_journal_offset += offset_gap;
                Some(self.model.next_journal_offset)
            }
        };
        let body = body_of(sequence, size_bytes);
        let assigned = self
            .queue
            .enqueue(journal_offset, body, MessageMeta::default())
            .unwrap();
        assert_eq!(assigned, sequence);

        self.model.messages.push(ModelMessage {
            journal_offset,
            size_bytes,
            redelivered: false,
            delivery_count: 0,
            place: Place::Queued,
        });
        if let Some(journal_offset) = journal_offset {
            self.journal.push(Record::Message {
                sequence,
                journal_offset,
                size_bytes,
            });
        }
    }

    fn dispatch(&mut self) {
        let mut deliveries: Vec<Delivery> = Vec::new();
        let count = self.queue.dispatch(&mut deliveries);
        assert_eq!(count, deliveries.len());
        let expected = self.model.dispatch();
        let actual: Vec<(ConsumerId, u64)> = deliveries
            .iter()
            .map(|d| (d.consumer, d.sequence))
            .collect();
        assert_eq!(actual, expected);

        for delivery in &deliveries {
            let message = &self.model.messages[delivery.sequence as usize];
            assert!(
                self.model.deliverable(message),
                "delivered past the watermark"
            );
            assert_eq!(delivery.journal_offset, message.journal_offset);
            assert_eq!(delivery.redelivered, message.redelivered);
            assert_eq!(delivery.delivery_count, message.delivery_count);
            assert_eq!(
                delivery.body,
                body_of(delivery.sequence, message.size_bytes)
            );
        }
    }

    fn settle(&mut self, consumer: u8, pick: usize, settle: Settle) {
        let consumer = ConsumerId(u64::from(consumer));
        let sequence = self.pick_sequence(consumer, pick);
        let departure = match settle {
            Settle::Ack => self.queue.ack(consumer, sequence).map(Some),
            Settle::Reject => self.queue.reject(consumer, sequence).map(Some),
            Settle::Requeue => self.queue.requeue(consumer, sequence).map(|()| None),
        };

        if let Ok(Some(departure)) = &departure {
            let reason = match settle {
                Settle::Ack => DepartureReason::Acked,
                _ => DepartureReason::Rejected,
            };
            assert_eq!(departure.reason, reason);
            assert_eq!(departure.sequence, sequence);
            self.record_departure(departure);
        }
        let accepted = self
            .model
            .settle(consumer, sequence, settle == Settle::Requeue);
        assert_eq!(
            departure.is_ok(),
            accepted,
            "settling {sequence} by {consumer:?}"
        );
    }

    fn restart(&mut self) {
        if self.model.durability == Durability::Memory {
            return;
        }
        let mut recovery = QueueRecovery::new(self.model.durability);
        for record in &self.journal {
            match *record {
                Record::Message {
                    sequence,
                    journal_offset,
                    size_bytes,
                } => {
                    let body = body_of(sequence, size_bytes);
                    let superseded =
                        recovery.restore(sequence, journal_offset, body, Default::default());
                    assert_eq!(superseded, Ok(None));
                }
                Record::Settlement { sequence } => {
                    assert!(recovery.forget(sequence).is_some());
                }
            }
        }
        self.queue = recovery.finish();
        let model = &mut self.model;
        self.queue
            .advance_watermarks(model.written_offset, model.durable_offset);

        model.consumers.clear();
        model.cursor = 0;
        for message in &mut model.messages {
            if message.place != Place::Gone {
                message.place = Place::Queued;
                message.redelivered = true;
                message.delivery_count = 0;
            }
        }
    }

    /// Everything the queue shows must match the model, and every message be in one place.
    fn check(&self) {
        self.queue.check_invariants();
        let model = &self.model;

        let ready: Vec<u64> = self.queue.ready_sequences().collect();
        assert_eq!(ready, model.queued());
        let consumers: Vec<ConsumerId> = self.queue.consumer_ids().collect();
        let model_consumers: Vec<ConsumerId> = model.consumers.iter().map(|c| c.id).collect();
        assert_eq!(consumers, model_consumers);

        let mut places = vec![0u32; model.messages.len()];
        for &sequence in &ready {
            places[sequence as usize] += 1;
        }
        let mut unacked_count = 0;
        let mut unacked_bytes = 0;
        for &ModelConsumer {
            id: consumer,
            limit,
            stopped,
        } in &model.consumers
        {
            let held: Vec<u64> = self.queue.unacked_sequences(consumer).unwrap().collect();
            assert_eq!(held, model.held_by(consumer));
            assert!(
                held.len() <= limit,
                "{consumer:?} holds more than its prefetch"
            );
            assert!(
                !stopped || !held.is_empty(),
                "{consumer:?} stopped and empty"
            );
            for &sequence in &held {
                places[sequence as usize] += 1;
                unacked_bytes += model.messages[sequence as usize].size_bytes as u64;
            }
            unacked_count += held.len();
        }
        for (&sequence, &count) in &self.departed {
            places[sequence as usize] += count;
            assert_eq!(model.messages[sequence as usize].place, Place::Gone);
        }
        assert!(
            places.iter().all(|&count| count == 1),
            "a message in 0 or 2 places"
        );

        let counts = self.queue.counts();
        let queued = model.queued();
        let waiting_count = queued
            .iter()
            .filter(|&&sequence| !model.deliverable(&model.messages[sequence as usize]))
            .count();
        let ready_bytes: u64 = queued
            .iter()
            .map(|&sequence| model.messages[sequence as usize].size_bytes as u64)
            .sum();
        assert_eq!(counts.ready_count, queued.len());
        assert_eq!(counts.waiting_count, waiting_count);
        assert_eq!(counts.unacked_count, unacked_count);
        assert_eq!(counts.unacked_bytes, unacked_bytes);
        assert_eq!(counts.ready_bytes, ready_bytes);
        assert_eq!(counts.consumer_count, model.active_consumers().len());
    }

    /// Deletes the queue: every consumer is named and every remaining message departs once.
    fn delete(mut self) {
        let queue = std::mem::replace(&mut self.queue, Queue::new(Durability::Memory));
        let deleted = queue.delete();
        assert_eq!(deleted.consumers, self.model.active_consumers());

        for departure in deleted.departures {
            assert_eq!(departure.reason, DepartureReason::Deleted);
            self.record_departure(&departure);
        }
        let all: Vec<u64> = (0..self.model.messages.len() as u64).collect();
        assert_eq!(self.departed.keys().copied().collect::<Vec<u64>>(), all);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Reject,
    Requeue,
}

proptest! {
    // Failing cases are kept beside this file, inside the queue module.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_queue_agrees_with_the_model_after_every_step(
        durability in durability_strategy(),
        ops in proptest::collection::vec(op_strategy(), 1..120),
    ) {
        let mut harness = Harness::new(durability);
        for op in &ops {
            harness.apply(op);
            harness.check();
        }
        harness.delete();
    }
}
