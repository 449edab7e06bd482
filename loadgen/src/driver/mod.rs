//! The broker abstraction: what the measurement core asks of a broker, and nothing about how.
//!
//! The core owns pacing, stamping, the bound on unconfirmed messages, timing and the report. A
//! driver owns the protocol: it connects, declares the topology, publishes batches that the core
//! has already stamped, reports confirms back as contiguous sequence ranges through the
//! [`ConfirmSink`] it was given, and yields deliveries that the core acknowledges through it.
//!
//! Two implementations: [`ruuster`], whose `connect` moves each connection to the shard that owns
//! [`ConnectionSpec::queues`] through the handshake's per-shard ports and whose cumulative confirms
//! arrive as the ranges and durability levels that [`ConfirmRange`] carries; and [`amqp`], for
//! RabbitMQ.

pub mod amqp;
pub mod reorder;
pub mod ruuster;

use std::fmt;
use std::future::Future;

use serde::Serialize;

pub use crate::window::ConfirmSink;

/// The durability a publish asks for, in Ruuster's terms (DESIGN.md, "Publisher confirms").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Confirmed once the broker holds it in memory.
    Memory,
    /// Confirmed once it is in the OS: survives a broker crash.
    Written,
    /// Confirmed once it is fsynced: survives power loss.
    Fsynced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueSpec {
    pub name: String,
    /// Binding key from the run's exchange to this queue (unused by a fanout exchange).
    pub binding_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub exchange_name: String,
    pub exchange_kind: ExchangeKind,
    pub queues: Vec<QueueSpec>,
    /// Whether queues and exchange survive a broker restart; true for `fsynced` runs.
    pub durable: bool,
}

impl Topology {
    /// How many queues one published message reaches: every bound queue for fanout, one
    /// otherwise (each queue has its own binding key, and producers publish to those keys).
    pub fn routing_factor(&self) -> u64 {
        match self.exchange_kind {
            ExchangeKind::Fanout => self.queues.len() as u64,
            ExchangeKind::Direct | ExchangeKind::Topic => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Declares the topology and reads counters; carries no messages.
    Control,
    Producer,
    Consumer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSpec {
    pub role: Role,
    pub index: usize,
    /// Queues that the producers or consumers on this connection will touch, so that a
    /// shard-aware driver can connect to the shard that owns them.
    pub queues: Vec<String>,
}

/// Where a connection landed, as far as the driver can tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionPlacement {
    pub role: Role,
    pub index: usize,
    pub address: String,
    /// Broker-side owner of the connection (a Ruuster shard); `None` when the broker has no
    /// such notion or does not say.
    pub shard: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSpec {
    pub index: usize,
    pub exchange_name: String,
    pub durability: Durability,
    /// Whether the broker confirms publishes. Without confirms the core does not bound
    /// unconfirmed messages and measures no publish-to-confirm latency.
    pub confirms: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub index: usize,
    pub queues: Vec<String>,
    /// Unacknowledged deliveries the broker may push per queue subscription.
    pub prefetch: u16,
    /// The broker considers a delivery acknowledged when it sends it.
    pub auto_ack: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct OutgoingMessage<'a> {
    pub routing_key: &'a str,
    /// Stamped payload, including its filler.
    pub payload: &'a [u8],
}

/// Messages with contiguous producer-local sequence numbers starting at `first_sequence`.
#[derive(Debug, Clone, Copy)]
pub struct PublishBatch<'a> {
    pub first_sequence: u64,
    pub messages: &'a [OutgoingMessage<'a>],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmOutcome {
    /// Accepted. `durability` is the level the broker says it reached, if its protocol says.
    Ack {
        durability: Option<Durability>,
    },
    Nack {
        reason: String,
    },
}

/// A confirm for `count` messages with contiguous sequence numbers from `first_sequence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmRange {
    pub first_sequence: u64,
    pub count: u64,
    pub outcome: ConfirmOutcome,
}

#[derive(Debug)]
pub struct Delivery {
    pub payload: Vec<u8>,
    /// Identifies the delivery in `ack`; increases in delivery order on one consumer.
    pub tag: u64,
    pub redelivered: bool,
}

/// A figure read from the broker, named with its unit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokerCounter {
    pub name: String,
    pub value: f64,
}

#[derive(Debug)]
pub enum DriverError {
    Connect {
        address: String,
        detail: String,
    },
    Protocol {
        operation: &'static str,
        detail: String,
    },
    Closed {
        operation: &'static str,
    },
}

impl fmt::Display for DriverError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Connect { address, detail } => {
                write!(formatter, "connecting to {address} failed: {detail}")
            }
            DriverError::Protocol { operation, detail } => {
                write!(formatter, "{operation} failed: {detail}")
            }
            DriverError::Closed { operation } => {
                write!(
                    formatter,
                    "{operation} failed: the connection or channel is closed"
                )
            }
        }
    }
}

impl std::error::Error for DriverError {}

/// A broker, as the measurement core sees it. Methods take `&self` so that one driver value
/// serves every connection; per-connection state lives in [`Driver::Connection`].
pub trait Driver: Send + Sync + 'static {
    type Connection: Send + Sync + 'static;
    type Producer: Producer;
    type Consumer: Consumer;

    /// Short name for the report, e.g. `amqp`.
    fn name(&self) -> &'static str;

    fn connect(
        &self,
        spec: &ConnectionSpec,
    ) -> impl Future<Output = Result<Self::Connection, DriverError>> + Send;

    fn describe_connection(
        &self,
        spec: &ConnectionSpec,
        connection: &Self::Connection,
    ) -> ConnectionPlacement;

    /// Removes what an earlier run left under the same names, then declares the topology.
    fn declare(
        &self,
        connection: &Self::Connection,
        topology: &Topology,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Opens a producer. With confirms on, the driver reports every published sequence exactly
    /// once to `confirms`, as ack or nack.
    fn open_producer(
        &self,
        connection: &Self::Connection,
        spec: &ProducerSpec,
        confirms: ConfirmSink,
    ) -> impl Future<Output = Result<Self::Producer, DriverError>> + Send;

    fn open_consumer(
        &self,
        connection: &Self::Connection,
        spec: &ConsumerSpec,
    ) -> impl Future<Output = Result<Self::Consumer, DriverError>> + Send;

    /// Broker figures the driver can read (queue depths, broker statistics); may be empty.
    fn counters(
        &self,
        connection: &Self::Connection,
        topology: &Topology,
    ) -> impl Future<Output = Result<Vec<BrokerCounter>, DriverError>> + Send;

    /// Deletes the run's queues and exchange so that they do not hold memory or disk afterwards.
    fn delete(
        &self,
        connection: &Self::Connection,
        topology: &Topology,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;
}

pub trait Producer: Send + 'static {
    /// Hands a batch to the broker concurrently and returns once it is sent, not confirmed.
    fn publish(
        &mut self,
        batch: PublishBatch<'_>,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;
}

pub trait Consumer: Send + 'static {
    /// The next delivery, or `None` once the subscription has ended.
    fn next_delivery(
        &mut self,
    ) -> impl Future<Output = Result<Option<Delivery>, DriverError>> + Send;

    /// Acknowledges `tag`, and with `multiple` every earlier delivery of this consumer too.
    fn ack(
        &mut self,
        tag: u64,
        multiple: bool,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;
}
