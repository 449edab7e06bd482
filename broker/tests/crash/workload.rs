//! The crash test's workload, run through `ruuster-client` on a tokio runtime: the topology,
//! producers publishing with confirms at `fsynced`, one consumer per queue acking (sometimes
//! several deliveries at once, sometimes a nack with requeue), each recording into the
//! [`History`] what it did and saw.
//!
//! The topology spans both shards: each pair of queues below is placed on two shards (the
//! placement policy gives a new queue to the shard with the fewest, and the test checks the
//! result), so a fanout publish and a direct publish with key `both` land on both shards in one
//! confirm, and default-exchange publishes go to one queue at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ruuster_client::{
    Client, ConfirmStatus, ConnectOptions, ConsumeOptions, Delivery, ExchangeKind, ExchangeOptions,
    PendingConfirm, PublishOptions, QueueOptions, Table,
};
use tokio::sync::{mpsc, watch};

use crate::history::{Event, History, MessageId};

pub const FANOUT: &str = "crash-fanout";
pub const DIRECT: &str = "crash-direct";
pub const QUEUE_NAMES: [&str; 6] = [
    "crash-fanout-a",
    "crash-fanout-b",
    "crash-direct-a",
    "crash-direct-b",
    "crash-plain-a",
    "crash-plain-b",
];
/// Producers 0 and 3 publish to the fanout exchange, 1 to the direct one, 2 to the default one.
pub const PRODUCERS_COUNT: u32 = 4;

/// Unconfirmed messages one producer keeps in flight.
const PUBLISH_WINDOW: u32 = 64;
/// Messages in one publish batch: 1 to this.
const BATCH_MAX: u64 = 8;
const PREFETCH: u32 = 64;
/// A consumer sends the acks it holds back once no delivery came for this long.
const ACK_IDLE: Duration = Duration::from_millis(20);
/// One delivery in this many is nacked with requeue (outside the final drain).
const REQUEUE_ONE_IN: u64 = 40;
/// Payloads start with this, then the producer and the sequence.
const MAGIC: u32 = 0x5443_5552;
const HEADER_BYTES: usize = 4 + 4 + 8;
/// Filler after the header: 8 to 8 + this many bytes, derived from the message id.
const FILLER_SPREAD_BYTES: u64 = 240;

/// A small deterministic generator (splitmix64): the test must replay from its printed seed and
/// needs no crate for that.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

/// The exchange, routing key and target queues (indexes into [`QUEUE_NAMES`]) of a message:
/// the routing model the checker trusts.
pub fn route(id: MessageId) -> (&'static str, &'static str, &'static [usize]) {
    match id.producer % PRODUCERS_COUNT {
        0 | 3 => (FANOUT, "", &[0, 1]),
        1 => match id.sequence % 3 {
            0 => (DIRECT, "both", &[2, 3]),
            1 => (DIRECT, "left", &[2]),
            _ => (DIRECT, "right", &[3]),
        },
        _ => match id.sequence % 2 {
            0 => ("", QUEUE_NAMES[4], &[4]),
            _ => ("", QUEUE_NAMES[5], &[5]),
        },
    }
}

pub fn targets(id: MessageId) -> Vec<usize> {
    route(id).2.to_vec()
}

/// The payload of a message: magic, producer, sequence, then filler derived from both, so that a
/// payload that is truncated, altered or mixed up with another fails [`parse`].
pub fn payload(id: MessageId) -> Vec<u8> {
    let mut rng = Rng::new(u64::from(id.producer) << 48 ^ id.sequence);
    let filler_bytes = 8 + rng.below(FILLER_SPREAD_BYTES) as usize;
    let mut bytes = Vec::with_capacity(HEADER_BYTES + filler_bytes);
    bytes.extend_from_slice(&MAGIC.to_le_bytes());
    bytes.extend_from_slice(&id.producer.to_le_bytes());
    bytes.extend_from_slice(&id.sequence.to_le_bytes());
    while bytes.len() < HEADER_BYTES + filler_bytes {
        bytes.push(rng.next_u64() as u8);
    }
    bytes
}

/// The id of a payload built by [`payload`], or `None` for anything else.
pub fn parse(bytes: &[u8]) -> Option<MessageId> {
    if bytes.len() < HEADER_BYTES || bytes[..4] != MAGIC.to_le_bytes() {
        return None;
    }
    let id = MessageId {
        producer: u32::from_le_bytes(bytes[4..8].try_into().ok()?),
        sequence: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
    };
    (payload(id) == bytes).then_some(id)
}

/// Counters the controller reads while the workload runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Messages confirmed since the counter was last reset.
    pub confirmed: AtomicU64,
    /// Messages published whose confirm (or failure) has not arrived.
    pub in_flight: AtomicU64,
}

fn connect_options(address: String, client_name: String) -> ConnectOptions {
    ConnectOptions {
        client_name,
        publish_window: PUBLISH_WINDOW,
        // Short enough that a consumer notices a dead broker even if no RST arrives.
        heartbeat: Duration::from_secs(2),
        ..ConnectOptions::new(address)
    }
}

/// Declares the exchanges, queues and bindings (all durable) and checks that each pair of queues
/// spans both shards. Returns each queue's owner shard.
pub async fn declare_topology(address: String) -> Vec<u16> {
    let connection = Client::connect(&connect_options(address, "crash-setup".into()))
        .await
        .expect("setup connects");
    let durable = ExchangeOptions {
        durable: true,
        ..ExchangeOptions::default()
    };
    connection
        .exchange_declare(FANOUT, ExchangeKind::Fanout, &durable)
        .await
        .unwrap();
    connection
        .exchange_declare(DIRECT, ExchangeKind::Direct, &durable)
        .await
        .unwrap();
    let mut owners = Vec::new();
    for name in QUEUE_NAMES {
        let options = QueueOptions {
            durable: true,
            ..QueueOptions::default()
        };
        owners.push(
            connection
                .queue_declare(name, &options)
                .await
                .unwrap()
                .owner_shard,
        );
    }
    let bindings = [
        (0, FANOUT, ""),
        (1, FANOUT, ""),
        (2, DIRECT, "both"),
        (2, DIRECT, "left"),
        (3, DIRECT, "both"),
        (3, DIRECT, "right"),
    ];
    for (queue, exchange, key) in bindings {
        connection
            .queue_bind(QUEUE_NAMES[queue], exchange, key, &Table::new())
            .await
            .unwrap();
    }
    for pair in owners.chunks(2) {
        assert_ne!(
            pair[0], pair[1],
            "each pair of queues spans both shards: {owners:?}"
        );
    }
    connection.close().await.unwrap();
    owners
}

/// Publishes batches of `producer`'s messages from `next_sequence` on until its connection ends
/// (the broker is killed); returns the next unused sequence. Confirms are awaited in order by a
/// second task so that publishing never waits for them beyond the window.
pub async fn produce(
    history: Arc<History>,
    progress: Arc<Progress>,
    address: String,
    producer: u32,
    mut next_sequence: u64,
    cycle: u32,
    seed: u64,
) -> u64 {
    let name = format!("crash-producer-{producer}");
    let Ok(connection) = Client::connect(&connect_options(address, name)).await else {
        return next_sequence;
    };
    let (sender, receiver) = mpsc::unbounded_channel();
    let collector = tokio::spawn(collect_confirms(
        history.clone(),
        progress.clone(),
        receiver,
    ));
    let mut rng = Rng::new(seed);
    let options = PublishOptions {
        mandatory: false,
        durability: ruuster_client::Durability::Fsynced,
    };
    loop {
        let count = 1 + rng.below(BATCH_MAX);
        let ids: Vec<MessageId> = (next_sequence..next_sequence + count)
            .map(|sequence| MessageId { producer, sequence })
            .collect();
        let exchange = route(ids[0]).0;
        let messages: Vec<(&str, Bytes)> = ids
            .iter()
            .map(|&id| (route(id).1, ruuster_client::body(&payload(id))))
            .collect();
        let Ok(pending) = connection
            .publish_batch(exchange, &messages, &options)
            .await
        else {
            break;
        };
        history.record_all(ids.iter().map(|&id| Event::Published { id, cycle }));
        progress.in_flight.fetch_add(count, Ordering::SeqCst);
        next_sequence += count;
        if sender.send((ids, pending)).is_err() {
            break;
        }
    }
    drop(sender);
    let _ = collector.await;
    next_sequence
}

async fn collect_confirms(
    history: Arc<History>,
    progress: Arc<Progress>,
    mut receiver: mpsc::UnboundedReceiver<(Vec<MessageId>, PendingConfirm)>,
) {
    while let Some((ids, pending)) = receiver.recv().await {
        let first = pending.first();
        let outcome = pending.await;
        let count = ids.len() as u64;
        if let Ok(confirmation) = outcome {
            let mut confirmed = 0;
            let events = ids.iter().enumerate().map(|(index, &id)| {
                match confirmation.status_of(first + index as u64) {
                    Some(ConfirmStatus::Stored(level)) => {
                        confirmed += 1;
                        Event::Confirmed { id, level }
                    }
                    _ => Event::Refused { id },
                }
            });
            let events: Vec<Event> = events.collect();
            history.record_all(events);
            progress.confirmed.fetch_add(confirmed, Ordering::SeqCst);
        }
        // A failed batch (the connection ended) has no outcome: it may or may not be stored.
        progress.in_flight.fetch_sub(count, Ordering::SeqCst);
    }
}

/// What a consumer does with the deliveries it holds.
struct Settler {
    queue: usize,
    cycle: u32,
    rng: Rng,
    requeue: bool,
    held: Vec<(Delivery, MessageId)>,
    ack_after: usize,
}

impl Settler {
    fn take(&mut self, history: &History, delivery: Delivery) {
        let Some(id) = parse(&delivery.body.payload()) else {
            history.record(Event::Invalid {
                queue: self.queue,
                cycle: self.cycle,
            });
            // Settle it, or it would come back for ever; the checker has counted it.
            let _ = delivery.ack();
            return;
        };
        history.record(Event::Delivered {
            queue: self.queue,
            id,
            redelivered: delivery.redelivered,
            delivery_count: delivery.delivery_count,
            cycle: self.cycle,
        });
        if self.requeue && self.rng.below(REQUEUE_ONE_IN) == 0 {
            if delivery.nack(true).is_ok() {
                history.record(Event::Requeued {
                    queue: self.queue,
                    id,
                    cycle: self.cycle,
                });
            }
            return;
        }
        self.held.push((delivery, id));
        if self.held.len() >= self.ack_after {
            self.flush(history);
        }
    }

    /// Acks every held delivery: one ack with `multiple` covers them all, since this consumer is
    /// alone on its connection and the nacked ones are no longer outstanding.
    fn flush(&mut self, history: &History) {
        let Some((last, _)) = self.held.last() else {
            return;
        };
        let sent = if self.held.len() == 1 {
            last.ack()
        } else {
            last.ack_multiple()
        };
        if sent.is_ok() {
            history.record_all(self.held.iter().map(|&(_, id)| Event::Acked {
                queue: self.queue,
                id,
                cycle: self.cycle,
            }));
        }
        self.held.clear();
        self.ack_after = 1 + self.rng.below(8) as usize;
    }
}

/// Consumes queue `queue` on a connection to `address` (the controller alternates each queue
/// between its owner's port and the other shard's across runs) until the connection ends or
/// `stop` turns true (or its sender goes). `requeue` enables the occasional nack with requeue.
pub async fn consume(
    history: Arc<History>,
    address: String,
    queue: usize,
    cycle: u32,
    seed: u64,
    requeue: bool,
    mut stop: watch::Receiver<bool>,
) {
    let name = format!("crash-consumer-{queue}");
    let Ok(connection) = Client::connect(&connect_options(address, name)).await else {
        return;
    };
    let tag = format!("crash-{queue}");
    let options = ConsumeOptions::default();
    let Ok(mut consumer) = connection
        .consume(QUEUE_NAMES[queue], &tag, PREFETCH, &options)
        .await
    else {
        return;
    };
    let mut settler = Settler {
        queue,
        cycle,
        rng: Rng::new(seed),
        requeue,
        held: Vec::new(),
        ack_after: 1,
    };
    loop {
        tokio::select! {
            _ = async { stop.wait_for(|stop| *stop).await.is_ok() } => {
                settler.flush(&history);
                let _ = connection.close().await;
                return;
            }
            received = tokio::time::timeout(ACK_IDLE, consumer.recv()) => match received {
                Err(_idle) => settler.flush(&history),
                Ok(Ok(delivery)) => settler.take(&history, delivery),
                Ok(Err(_end)) => return,
            },
        }
    }
}

/// Whether every queue is empty (no message ready or waiting) and no delivery is unacked.
pub async fn drained(address: String) -> bool {
    let Ok(connection) = Client::connect(&connect_options(address, "crash-drain".into())).await
    else {
        return false;
    };
    let mut empty = true;
    for name in QUEUE_NAMES {
        match connection.queue_declare_passive(name).await {
            Ok(info) => empty &= info.message_count == 0,
            Err(_) => empty = false,
        }
    }
    if let Ok(stats) = connection.stats().await {
        let unacked = stats
            .iter()
            .find(|(name, _)| name == "messages_unacked_count")
            .map_or(1, |(_, value)| *value);
        empty &= unacked == 0;
    } else {
        empty = false;
    }
    let _ = connection.close().await;
    empty
}

/// Messages ready or waiting in all the workload's queues.
pub async fn messages_left(address: String) -> u64 {
    let connection = Client::connect(&connect_options(address, "crash-count".into()))
        .await
        .expect("the restarted broker accepts");
    let mut left = 0;
    for name in QUEUE_NAMES {
        left += connection
            .queue_declare_passive(name)
            .await
            .expect("the queue survived")
            .message_count;
    }
    let _ = connection.close().await;
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_parses_back_to_its_id_and_an_altered_one_does_not() {
        let id = MessageId {
            producer: 3,
            sequence: 123_456,
        };
        let mut bytes = payload(id);
        assert_eq!(parse(&bytes), Some(id));
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(parse(&bytes), None);
        assert_eq!(parse(&payload(id)[..HEADER_BYTES]), None);
    }

    #[test]
    fn every_route_names_a_bound_queue() {
        for producer in 0..PRODUCERS_COUNT {
            for sequence in 0..6 {
                let (exchange, key, queues) = route(MessageId { producer, sequence });
                assert!(!queues.is_empty());
                if exchange.is_empty() {
                    assert_eq!(
                        queues,
                        &[QUEUE_NAMES.iter().position(|q| *q == key).unwrap()]
                    );
                }
            }
        }
    }
}
