//! The Ruuster driver, through `ruuster-client` on the tokio runtime.
//!
//! Placement: the handshake lists one port per shard. A connection that serves one queue goes to
//! the shard that owns it through [`Client::connect_to_queue_owner`]; one that serves several
//! (a fanout producer, a W6 producer over 16 queues, a consumer over 100) goes to the shard that
//! owns most of them, as the declare reported, since a connection lands on exactly one shard.
//! `--ruuster-any-shard` turns this off: every connection then stays on whichever shard accepted
//! it on the client port. [`Driver::describe_connection`] reports the shard each one landed on.
//!
//! Publishing: `publish_batch` returns once the batch is queued on the socket and hands back a
//! future of its confirm, so batches pipeline up to the core's window; a per-producer task awaits
//! those futures in publish order and reports each confirmed range with the durability the broker
//! reached. A range stored below the requested level, unroutable or rejected is a nack, which the
//! core counts as an error. Publishes are mandatory, so a message that matches no queue also comes
//! back as a return (counted in `client_returned_count`).
//!
//! Acknowledging: delivery tags are per connection, and a cumulative ack settles every earlier
//! delivery on the connection, including ones the core has not received yet. Their own acks then
//! name settled tags, which the broker answers by closing the connection (500
//! unknown-delivery-tag). A consumer whose subscriptions are all of its connection's therefore
//! gets its deliveries in tag order (put back in order after merging several subscriptions, see
//! [`super::reorder`]) and its cumulative acks pass through. A consumer that shares its connection
//! with other consumers (`--consumer-connections` below `--consumers`) never sees their tags, so
//! the driver acks each delivery it received up to the tag, one frame each (the client's writer
//! still sends them in one write).
//!
//! Backpressure: the client holds publishes while the broker says `Blocked`; a task per producer
//! connection counts those notices and the time until `Unblocked`
//! (`client_blocked_notices_count`, `client_blocked_duration_ms`), so that a run slowed by
//! backpressure says so.
//!
//! Counters: the broker's stats are read after the declare and again after the drain. Totals
//! (published, stored, delivered, acked, fdatasyncs, synced records, ...) are reported as the
//! difference, so they cover the run; gauges are the values at the end (`..._at_end_count`); the
//! per-shard stage percentiles (`shard<i>_stage_...`) are the broker's own since it started,
//! which is the run when the broker was started fresh for it, as `scripts/bench-suite.sh` does.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use ruuster_client::{
    Client, ClientError, ConfirmStatus, ConnectOptions, Connection, ConsumeOptions, ConsumerEnd,
    ErrorCode, ExchangeOptions, PendingConfirm, PublishOptions, QueueOptions, ServerError,
    ShortStr, Table,
};
use tokio::sync::{mpsc, watch};

use super::reorder::TagOrder;
use super::{
    BrokerCounter, ConfirmOutcome, ConfirmRange, ConfirmSink, ConnectionPlacement, ConnectionSpec,
    Consumer, ConsumerSpec, Delivery, Driver, DriverError, Durability, ExchangeKind, Producer,
    ProducerSpec, PublishBatch, Role, Topology,
};
use crate::config::RuusterConfig;

/// Broker counters that are levels, not totals: reported as read at the end, not as a difference.
const GAUGES: [&str; 5] = [
    "connections_count",
    "queues_count",
    "shards_count",
    "messages_ready_count",
    "messages_unacked_count",
];
/// Prefix of the broker's per-shard stage histograms, which are reported as the broker gives them.
const PER_SHARD_PREFIX: &str = "shard";
/// Deliveries buffered between the subscriptions of a consumer that reads several queues and the
/// consumer itself; each subscription's prefetch already bounds what the broker sends, this only
/// bounds the merged buffer when the prefetch times the queue count is larger.
const MERGED_DELIVERY_BUFFER_MAX: usize = 65_536;

fn failed(operation: &'static str) -> impl FnOnce(ClientError) -> DriverError {
    move |error| DriverError::Protocol {
        operation,
        detail: error.to_string(),
    }
}

pub fn wire_durability(durability: Durability) -> ruuster_client::Durability {
    match durability {
        Durability::Memory => ruuster_client::Durability::Memory,
        Durability::Written => ruuster_client::Durability::Written,
        Durability::Fsynced => ruuster_client::Durability::Fsynced,
    }
}

pub fn loadgen_durability(durability: ruuster_client::Durability) -> Durability {
    match durability {
        ruuster_client::Durability::Memory => Durability::Memory,
        ruuster_client::Durability::Written => Durability::Written,
        ruuster_client::Durability::Fsynced => Durability::Fsynced,
    }
}

fn wire_exchange_kind(kind: ExchangeKind) -> ruuster_client::ExchangeKind {
    match kind {
        ExchangeKind::Direct => ruuster_client::ExchangeKind::Direct,
        ExchangeKind::Fanout => ruuster_client::ExchangeKind::Fanout,
        ExchangeKind::Topic => ruuster_client::ExchangeKind::Topic,
    }
}

/// A confirm status as the core counts it: stored at or above the requested level is an ack,
/// anything else a nack with the reason.
pub fn outcome_of(status: ConfirmStatus, requested: Durability) -> ConfirmOutcome {
    match status {
        ConfirmStatus::Stored(level) => {
            let reached = loadgen_durability(level);
            if reached >= requested {
                ConfirmOutcome::Ack {
                    durability: Some(reached),
                }
            } else {
                ConfirmOutcome::Nack {
                    reason: format!("stored at {reached:?}, below the requested {requested:?}"),
                }
            }
        }
        ConfirmStatus::Unroutable => ConfirmOutcome::Nack {
            reason: "unroutable".into(),
        },
        ConfirmStatus::Rejected(code) => ConfirmOutcome::Nack {
            reason: format!("rejected: {} {}", code.0, code.name().unwrap_or("unknown")),
        },
    }
}

/// The shard owning most of `queues`, ties to the lowest index; `None` if none is known.
fn majority_owner(owners: &HashMap<String, u16>, queues: &[String]) -> Option<u16> {
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for queue in queues {
        if let Some(&owner) = owners.get(queue) {
            *counts.entry(owner).or_default() += 1;
        }
    }
    let most = counts.values().copied().max()?;
    counts
        .into_iter()
        .find(|&(_, count)| count == most)
        .map(|(shard, _)| shard)
}

/// What the declare learned, for placing the connections opened after it.
#[derive(Debug, Default)]
struct Declared {
    /// Queue name to owner shard, from each queue's declare.
    owners: HashMap<String, u16>,
    /// The control connection's view of the broker: its host and one port per shard.
    host: Option<IpAddr>,
    shard_ports: Vec<u16>,
    /// The broker's counters right after the declare.
    stats_before: HashMap<String, u64>,
}

/// Counts the driver keeps itself, reported with the broker's counters.
#[derive(Debug, Default)]
struct ClientCounts {
    /// Messages confirmed at memory, written and fsynced.
    confirmed_at: [AtomicU64; 3],
    returned_count: AtomicU64,
    /// Connections that landed on a shard other than the owner of (most of) their queues.
    off_owner_count: AtomicU64,
    blocked_notices_count: AtomicU64,
    blocked_ns: AtomicU64,
}

#[derive(Debug)]
pub struct RuusterDriver {
    config: RuusterConfig,
    declared: Mutex<Declared>,
    counts: Arc<ClientCounts>,
}

impl RuusterDriver {
    pub fn new(config: RuusterConfig) -> Self {
        RuusterDriver {
            config,
            declared: Mutex::new(Declared::default()),
            counts: Arc::new(ClientCounts::default()),
        }
    }

    fn options(&self, address: String) -> ConnectOptions {
        ConnectOptions {
            address,
            client_name: "ruuster-loadgen".into(),
            // The core bounds unconfirmed messages per producer; the connection's own bound is
            // only the broker's `max unconfirmed`, so it never adds a wait of its own below it.
            publish_window: u32::MAX,
            ..ConnectOptions::default()
        }
    }

    fn declared(&self) -> std::sync::MutexGuard<'_, Declared> {
        self.declared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The shard a connection serving `queues` belongs on, if known.
    fn owner_of(&self, queues: &[String]) -> Option<u16> {
        majority_owner(&self.declared().owners, queues)
    }

    /// The address of shard `shard`'s own port, as the control connection's handshake listed it.
    fn shard_address(&self, shard: u16) -> Option<String> {
        let declared = self.declared();
        let port = *declared.shard_ports.get(usize::from(shard))?;
        Some(SocketAddr::new(declared.host?, port).to_string())
    }
}

#[derive(Debug)]
pub struct RuusterConnection {
    connection: Connection,
    /// Subscriptions opened on this connection, to decide whether a cumulative ack is safe.
    subscriptions: Arc<AtomicUsize>,
}

impl Driver for RuusterDriver {
    type Connection = RuusterConnection;
    type Producer = RuusterProducer;
    type Consumer = RuusterConsumer;

    fn name(&self) -> &'static str {
        "ruuster"
    }

    async fn connect(&self, spec: &ConnectionSpec) -> Result<RuusterConnection, DriverError> {
        let placed = !self.config.any_shard && spec.role != Role::Control;
        let shard_address = match spec.queues.as_slice() {
            [_, _, ..] if placed => self
                .owner_of(&spec.queues)
                .and_then(|shard| self.shard_address(shard)),
            _ => None,
        };
        let address = shard_address
            .clone()
            .unwrap_or_else(|| self.config.address.clone());
        let options = self.options(address.clone());
        let connected = match spec.queues.as_slice() {
            [queue] if placed && shard_address.is_none() => {
                Client::connect_to_queue_owner(&options, queue).await
            }
            _ => Client::connect(&options).await,
        };
        let connection = connected.map_err(|error| DriverError::Connect {
            address,
            detail: error.to_string(),
        })?;
        if let Some(owner) = self.owner_of(&spec.queues)
            && owner != connection.shard_index()
            && spec.role != Role::Control
        {
            self.counts.off_owner_count.fetch_add(1, Ordering::Relaxed);
        }
        if spec.role == Role::Producer {
            tokio::spawn(count_blocked(connection.blocked(), self.counts.clone()));
        }
        Ok(RuusterConnection {
            connection,
            subscriptions: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn describe_connection(
        &self,
        spec: &ConnectionSpec,
        connection: &RuusterConnection,
    ) -> ConnectionPlacement {
        ConnectionPlacement {
            role: spec.role,
            index: spec.index,
            address: connection.connection.peer_address().to_string(),
            shard: Some(u32::from(connection.connection.shard_index())),
        }
    }

    async fn declare(
        &self,
        control: &RuusterConnection,
        topology: &Topology,
    ) -> Result<(), DriverError> {
        let connection = &control.connection;
        remove(connection, topology).await?;

        let exchange_options = ExchangeOptions {
            durable: topology.durable,
            ..ExchangeOptions::default()
        };
        let kind = wire_exchange_kind(topology.exchange_kind);
        connection
            .exchange_declare(&topology.exchange_name, kind, &exchange_options)
            .await
            .map_err(failed("exchange declare"))?;

        let queue_options = QueueOptions {
            durable: topology.durable,
            ..QueueOptions::default()
        };
        let declares = topology
            .queues
            .iter()
            .map(|queue| connection.queue_declare(&queue.name, &queue_options));
        let mut owners = HashMap::with_capacity(topology.queues.len());
        for (queue, declared) in topology.queues.iter().zip(join_all(declares).await) {
            let info = declared.map_err(failed("queue declare"))?;
            owners.insert(queue.name.clone(), info.owner_shard);
        }
        let no_arguments = Table::new();
        let binds = topology.queues.iter().map(|queue| {
            connection.queue_bind(
                &queue.name,
                &topology.exchange_name,
                &queue.binding_key,
                &no_arguments,
            )
        });
        for bound in join_all(binds).await {
            bound.map_err(failed("queue bind"))?;
        }

        let stats_before = connection
            .stats()
            .await
            .map_err(failed("stats"))?
            .into_iter()
            .collect();
        *self.declared() = Declared {
            owners,
            host: Some(connection.peer_address().ip()),
            shard_ports: connection.shard_ports().to_vec(),
            stats_before,
        };
        Ok(())
    }

    async fn open_producer(
        &self,
        connection: &RuusterConnection,
        spec: &ProducerSpec,
        confirms: ConfirmSink,
    ) -> Result<RuusterProducer, DriverError> {
        // Ruuster confirms every publish; without confirms the outcomes are simply not awaited.
        let pending = spec.confirms.then(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(report_confirms(
                receiver,
                confirms,
                spec.durability,
                self.counts.clone(),
            ));
            sender
        });
        Ok(RuusterProducer {
            connection: connection.connection.clone(),
            exchange: spec.exchange_name.clone(),
            options: PublishOptions {
                mandatory: true,
                durability: wire_durability(spec.durability),
            },
            keys: HashMap::new(),
            messages: Vec::new(),
            pending,
        })
    }

    async fn open_consumer(
        &self,
        connection: &RuusterConnection,
        spec: &ConsumerSpec,
    ) -> Result<RuusterConsumer, DriverError> {
        if spec.auto_ack {
            return Err(DriverError::Protocol {
                operation: "consume",
                detail: "Ruuster has no automatic acknowledgement; use --ack single or every:N"
                    .into(),
            });
        }
        let options = ConsumeOptions::default();
        let mut subscriptions = Vec::with_capacity(spec.queues.len());
        for (position, queue) in spec.queues.iter().enumerate() {
            let tag = format!("loadgen-consumer-{}-{position}", spec.index);
            let subscription = connection
                .connection
                .consume(queue, &tag, u32::from(spec.prefetch), &options)
                .await
                .map_err(failed("consume"))?;
            subscriptions.push(subscription);
        }
        let own_subscriptions = subscriptions.len();
        connection
            .subscriptions
            .fetch_add(own_subscriptions, Ordering::Relaxed);

        let unacked_max = usize::from(spec.prefetch).saturating_mul(own_subscriptions);
        let source = if subscriptions.len() == 1 {
            DeliverySource::Single(subscriptions.pop().expect("one subscription"))
        } else {
            let capacity = unacked_max.clamp(1, MERGED_DELIVERY_BUFFER_MAX);
            let (sender, receiver) = mpsc::channel(capacity);
            for subscription in subscriptions {
                tokio::spawn(forward(subscription, sender.clone()));
            }
            DeliverySource::Merged(receiver)
        };
        Ok(RuusterConsumer {
            connection: connection.connection.clone(),
            connection_subscriptions: connection.subscriptions.clone(),
            own_subscriptions,
            owns_connection: None,
            source,
            order: TagOrder::new(unacked_max),
            unacked_tags: VecDeque::new(),
        })
    }

    async fn counters(
        &self,
        control: &RuusterConnection,
        topology: &Topology,
    ) -> Result<Vec<BrokerCounter>, DriverError> {
        let after = control.connection.stats().await.map_err(failed("stats"))?;
        let declared = self.declared();
        let mut counters = broker_counters(&declared.stats_before, &after);

        let mut queues_per_shard: BTreeMap<u16, usize> = BTreeMap::new();
        for queue in &topology.queues {
            if let Some(&owner) = declared.owners.get(&queue.name) {
                *queues_per_shard.entry(owner).or_default() += 1;
            }
        }
        for (shard, count) in queues_per_shard {
            counters.push(counter(
                format!("topology_queues_owned_by_shard{shard}_count"),
                count as u64,
            ));
        }
        let counts = &self.counts;
        for (level, name) in ["memory", "written", "fsynced"].iter().enumerate() {
            counters.push(counter(
                format!("client_confirmed_at_{name}_count"),
                counts.confirmed_at[level].load(Ordering::Relaxed),
            ));
        }
        counters.push(counter(
            "client_returned_count".into(),
            counts.returned_count.load(Ordering::Relaxed),
        ));
        counters.push(counter(
            "client_connections_off_owner_shard_count".into(),
            counts.off_owner_count.load(Ordering::Relaxed),
        ));
        counters.push(counter(
            "client_blocked_notices_count".into(),
            counts.blocked_notices_count.load(Ordering::Relaxed),
        ));
        let blocked = Duration::from_nanos(counts.blocked_ns.load(Ordering::Relaxed));
        counters.push(BrokerCounter {
            name: "client_blocked_duration_ms".into(),
            value: blocked.as_secs_f64() * 1e3,
        });
        Ok(counters)
    }

    async fn delete(
        &self,
        control: &RuusterConnection,
        topology: &Topology,
    ) -> Result<(), DriverError> {
        remove(&control.connection, topology).await
    }
}

fn counter(name: String, value: u64) -> BrokerCounter {
    BrokerCounter {
        name,
        value: value as f64,
    }
}

/// The broker's counters over the run: totals as differences, gauges and per-shard stage figures
/// as read at the end, and records per fdatasync from the differences.
pub fn broker_counters(
    before: &HashMap<String, u64>,
    after: &[(String, u64)],
) -> Vec<BrokerCounter> {
    let mut counters = Vec::with_capacity(after.len() + 1);
    let mut delta_of = HashMap::new();
    for (name, value) in after {
        if name.starts_with(PER_SHARD_PREFIX) {
            counters.push(counter(name.clone(), *value));
        } else if GAUGES.contains(&name.as_str()) {
            let stem = name.strip_suffix("_count").unwrap_or(name);
            counters.push(counter(format!("{stem}_at_end_count"), *value));
        } else {
            let delta = value.saturating_sub(before.get(name).copied().unwrap_or(0));
            delta_of.insert(name.as_str(), delta);
            counters.push(counter(name.clone(), delta));
        }
    }
    let syncs = delta_of.get("journal_fdatasyncs_count").copied();
    let records = delta_of.get("journal_synced_records_count").copied();
    if let (Some(syncs @ 1..), Some(records)) = (syncs, records) {
        counters.push(BrokerCounter {
            name: "journal_records_per_fdatasync".into(),
            value: records as f64 / syncs as f64,
        });
    }
    counters
}

/// Deletes the run's queues and exchange; ones that do not exist are fine.
async fn remove(connection: &Connection, topology: &Topology) -> Result<(), DriverError> {
    let deletes = topology
        .queues
        .iter()
        .map(|queue| connection.queue_delete(&queue.name, false, false));
    for deleted in join_all(deletes).await {
        match deleted {
            Ok(_) => {}
            Err(error) if error.code() == Some(ErrorCode::QUEUE_NOT_FOUND) => {}
            Err(error) => return Err(failed("queue delete")(error)),
        }
    }
    match connection
        .exchange_delete(&topology.exchange_name, false)
        .await
    {
        Ok(()) => Ok(()),
        Err(error) if error.code() == Some(ErrorCode::EXCHANGE_NOT_FOUND) => Ok(()),
        Err(error) => Err(failed("exchange delete")(error)),
    }
}

type PendingBatch = (u64, PendingConfirm);

#[derive(Debug)]
pub struct RuusterProducer {
    connection: Connection,
    exchange: String,
    options: PublishOptions,
    /// Routing keys already converted, so each publish clones a short string instead of checking
    /// and copying the key again.
    keys: HashMap<String, ShortStr>,
    /// Reused between batches.
    messages: Vec<(ShortStr, Bytes)>,
    /// Confirm futures on their way to [`report_confirms`]; `None` without confirms. Unbounded
    /// because the core's window already bounds unconfirmed messages.
    pending: Option<mpsc::UnboundedSender<PendingBatch>>,
}

impl Producer for RuusterProducer {
    async fn publish(&mut self, batch: PublishBatch<'_>) -> Result<(), DriverError> {
        self.messages.clear();
        for message in batch.messages {
            let key = match self.keys.get(message.routing_key) {
                Some(key) => key.clone(),
                None => {
                    let key = ShortStr::try_from(message.routing_key).map_err(|error| {
                        DriverError::Protocol {
                            operation: "publish",
                            detail: format!("routing key: {error}"),
                        }
                    })?;
                    self.keys
                        .insert(message.routing_key.to_owned(), key.clone());
                    key
                }
            };
            self.messages
                .push((key, ruuster_client::body(message.payload)));
        }
        let confirm = self
            .connection
            .publish_batch(&self.exchange, &self.messages, &self.options)
            .await
            .map_err(failed("publish"))?;
        if let Some(pending) = &self.pending {
            pending
                .send((batch.first_sequence, confirm))
                .map_err(|_| DriverError::Closed {
                    operation: "confirm reporting",
                })?;
        }
        Ok(())
    }
}

/// Awaits each batch's confirm in publish order and reports its ranges, translated from the
/// connection's sequence numbers to the producer's.
async fn report_confirms(
    mut batches: mpsc::UnboundedReceiver<PendingBatch>,
    sink: ConfirmSink,
    requested: Durability,
    counts: Arc<ClientCounts>,
) {
    while let Some((first_sequence, pending)) = batches.recv().await {
        let count = pending.last() - pending.first() + 1;
        let confirmation = match pending.await {
            Ok(confirmation) => confirmation,
            Err(error) => {
                sink.confirm(ConfirmRange {
                    first_sequence,
                    count,
                    outcome: ConfirmOutcome::Nack {
                        reason: error.to_string(),
                    },
                });
                continue;
            }
        };
        counts
            .returned_count
            .fetch_add(confirmation.returned().len() as u64, Ordering::Relaxed);
        for range in confirmation.ranges() {
            let range_count = range.last - range.first + 1;
            if let ConfirmStatus::Stored(level) = range.status {
                counts.confirmed_at[level as usize].fetch_add(range_count, Ordering::Relaxed);
            }
            sink.confirm(ConfirmRange {
                first_sequence: first_sequence + (range.first - confirmation.first()),
                count: range_count,
                outcome: outcome_of(range.status, requested),
            });
        }
    }
}

/// Counts the broker's `Blocked` notices on one connection and how long each lasted, until the
/// connection is gone. A notice followed by `Unblocked` before this task runs is not seen, so
/// the count is a lower bound; one still in force when the counters are read is not in the
/// duration yet.
async fn count_blocked(
    mut blocked: watch::Receiver<Option<ServerError>>,
    counts: Arc<ClientCounts>,
) {
    loop {
        if blocked.wait_for(Option::is_some).await.is_err() {
            return;
        }
        counts.blocked_notices_count.fetch_add(1, Ordering::Relaxed);
        let since = Instant::now();
        let gone = blocked.wait_for(Option::is_none).await.is_err();
        let elapsed_ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counts.blocked_ns.fetch_add(elapsed_ns, Ordering::Relaxed);
        if gone {
            return;
        }
    }
}

/// Moves one subscription's deliveries into a consumer's merged buffer until either ends.
async fn forward(
    mut subscription: ruuster_client::Consumer,
    sender: mpsc::Sender<Result<ruuster_client::Delivery, ConsumerEnd>>,
) {
    loop {
        let next = tokio::select! {
            () = sender.closed() => break,
            next = subscription.recv() => next,
        };
        let ended = next.is_err();
        if sender.send(next).await.is_err() || ended {
            break;
        }
    }
}

#[derive(Debug)]
enum DeliverySource {
    Single(ruuster_client::Consumer),
    Merged(mpsc::Receiver<Result<ruuster_client::Delivery, ConsumerEnd>>),
}

#[derive(Debug)]
pub struct RuusterConsumer {
    connection: Connection,
    /// Subscriptions on the connection, of every consumer on it; and this consumer's.
    connection_subscriptions: Arc<AtomicUsize>,
    own_subscriptions: usize,
    /// Whether every subscription of the connection is this consumer's, so that every tag on it
    /// comes here. Decided at the first delivery: the core opens every consumer before any runs.
    owns_connection: Option<bool>,
    source: DeliverySource,
    /// Merged deliveries waiting for an earlier tag, when the connection is this consumer's.
    order: TagOrder<ruuster_client::Delivery>,
    /// When the connection is shared: tags received and not yet acknowledged, in the order
    /// received; at most the prefetch of each subscription, as the broker sends no more.
    unacked_tags: VecDeque<u64>,
}

impl Consumer for RuusterConsumer {
    async fn next_delivery(&mut self) -> Result<Option<Delivery>, DriverError> {
        let owns_connection = *self.owns_connection.get_or_insert_with(|| {
            self.connection_subscriptions.load(Ordering::Relaxed) == self.own_subscriptions
        });
        let next = match &mut self.source {
            DeliverySource::Single(subscription) => subscription.recv().await,
            DeliverySource::Merged(receiver) if !owns_connection => match receiver.recv().await {
                Some(next) => next,
                None => Err(ConsumerEnd::Cancelled),
            },
            DeliverySource::Merged(receiver) => loop {
                if let Some(delivery) = self.order.pop() {
                    break Ok(delivery);
                }
                match receiver.recv().await {
                    Some(Ok(delivery)) => self
                        .order
                        .push(delivery.delivery_tag, delivery)
                        .map_err(|detail| DriverError::Protocol {
                            operation: "deliver",
                            detail,
                        })?,
                    Some(Err(end)) => break Err(end),
                    None => break Err(ConsumerEnd::Cancelled),
                }
            },
        };
        match next {
            Ok(delivery) => {
                if !owns_connection {
                    self.unacked_tags.push_back(delivery.delivery_tag);
                }
                Ok(Some(Delivery {
                    payload: delivery.body.payload().to_vec(),
                    tag: delivery.delivery_tag,
                    redelivered: delivery.redelivered,
                }))
            }
            Err(ConsumerEnd::Cancelled) => Ok(None),
            Err(ConsumerEnd::CancelledByServer(error)) => Err(DriverError::Protocol {
                operation: "deliver",
                detail: format!("cancelled by the broker: {error}"),
            }),
            Err(ConsumerEnd::ConnectionClosed(error)) => Err(failed("deliver")(error)),
        }
    }

    async fn ack(&mut self, tag: u64, multiple: bool) -> Result<(), DriverError> {
        if self.owns_connection == Some(true) {
            return self.connection.ack(tag, multiple).map_err(failed("ack"));
        }
        let position = self
            .unacked_tags
            .iter()
            .rposition(|&unacked| unacked == tag);
        let Some(position) = position else {
            return Err(DriverError::Protocol {
                operation: "ack",
                detail: format!("delivery tag {tag} was not received or is already acked"),
            });
        };
        if !multiple {
            self.unacked_tags.remove(position);
            return self.connection.ack(tag, false).map_err(failed("ack"));
        }
        for unacked in self.unacked_tags.drain(..=position) {
            self.connection.ack(unacked, false).map_err(failed("ack"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a blocked episode missed or counted twice, and one whose time is not added; it
    /// cannot catch how a real broker sends the notices (it sends none yet).
    #[tokio::test]
    async fn each_blocked_episode_is_counted_with_its_duration() {
        let (sender, receiver) = watch::channel(None);
        let counts = Arc::new(ClientCounts::default());
        let task = tokio::spawn(count_blocked(receiver, counts.clone()));
        let disk_low = ServerError {
            code: ErrorCode(601),
            message: "disk low".into(),
        };
        for _ in 0..2 {
            sender.send_replace(Some(disk_low.clone()));
            tokio::time::sleep(Duration::from_millis(2)).await;
            sender.send_replace(None);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(sender);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the task ends with its connection")
            .unwrap();
        assert_eq!(counts.blocked_notices_count.load(Ordering::Relaxed), 2);
        // Each episode lasts at least most of a 2 ms sleep; half the sum is a safe floor.
        assert!(counts.blocked_ns.load(Ordering::Relaxed) >= 2_000_000);
    }

    /// Catches a wrong mapping of confirm statuses to acks and nacks; the broker's side is
    /// `tests/ruuster.rs`.
    #[test]
    fn a_confirm_below_the_requested_level_is_a_nack_and_above_it_an_ack() {
        let written = ConfirmStatus::Stored(ruuster_client::Durability::Written);
        assert_eq!(
            outcome_of(written, Durability::Memory),
            ConfirmOutcome::Ack {
                durability: Some(Durability::Written)
            }
        );
        assert!(matches!(
            outcome_of(written, Durability::Fsynced),
            ConfirmOutcome::Nack { .. }
        ));
        assert!(matches!(
            outcome_of(ConfirmStatus::Unroutable, Durability::Memory),
            ConfirmOutcome::Nack { .. }
        ));
        let rejected = ConfirmStatus::Rejected(ErrorCode::QUEUE_NOT_FOUND);
        let ConfirmOutcome::Nack { reason } = outcome_of(rejected, Durability::Memory) else {
            panic!("a rejected range is a nack");
        };
        assert!(reason.contains("301"), "{reason}");
    }

    /// Catches a level mapped to another one in either direction.
    #[test]
    fn durability_levels_convert_both_ways() {
        for level in [Durability::Memory, Durability::Written, Durability::Fsynced] {
            assert_eq!(loadgen_durability(wire_durability(level)), level);
        }
    }

    /// Catches a wrong choice of shard for a connection serving several queues, and a tie broken
    /// differently from run to run (a `HashMap` order would do that).
    #[test]
    fn a_connection_over_many_queues_goes_to_the_shard_owning_most_of_them() {
        let owners: HashMap<String, u16> = [("a", 1), ("b", 0), ("c", 1), ("d", 0), ("e", 1)]
            .into_iter()
            .map(|(name, shard)| (name.to_owned(), shard))
            .collect();
        let all: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        assert_eq!(majority_owner(&owners, &all), Some(1));
        let tied: Vec<String> = ["a", "b"].map(String::from).to_vec();
        assert_eq!(majority_owner(&owners, &tied), Some(0));
        assert_eq!(majority_owner(&owners, &["z".to_owned()]), None);
    }

    /// Catches a total reported since the broker's start instead of over the run, a gauge
    /// differenced, or records per fdatasync computed from the wrong figures; the names the
    /// broker really sends are checked in `tests/ruuster.rs`.
    #[test]
    fn totals_are_differences_gauges_are_final_and_records_per_sync_is_derived() {
        let before: HashMap<String, u64> = [
            ("published_count", 10),
            ("journal_fdatasyncs_count", 5),
            ("journal_synced_records_count", 50),
            ("queues_count", 1),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        let after: Vec<(String, u64)> = [
            ("published_count", 110),
            ("journal_fdatasyncs_count", 9),
            ("journal_synced_records_count", 450),
            ("queues_count", 3),
            ("shard0_stage_fsynced_p99_ns", 7000),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        let counters: HashMap<String, f64> = broker_counters(&before, &after)
            .into_iter()
            .map(|counter| (counter.name, counter.value))
            .collect();
        assert_eq!(counters["published_count"], 100.0);
        assert_eq!(counters["journal_fdatasyncs_count"], 4.0);
        assert_eq!(counters["journal_records_per_fdatasync"], 100.0);
        assert_eq!(counters["queues_at_end_count"], 3.0);
        assert_eq!(counters["shard0_stage_fsynced_p99_ns"], 7000.0);
        assert!(!counters.contains_key("queues_count"));
    }
}
