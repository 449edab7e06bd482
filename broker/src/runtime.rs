//! A shard's data plane: the queues it owns, its journal, and the traffic with other shards.
//!
//! Everything here runs on the shard's own executor and is reached through an `Rc<Core>`. State
//! lives in `RefCell`s that are borrowed only between awaits, never across one.
//!
//! Four long-lived tasks do the shard's work, each alone in its role so that ordering holds
//! without locks:
//!
//! - the **appender** takes the publishes that arrived (from local connections and over the
//!   rings), gives each target queue's next sequence to the message, appends the batch to the
//!   journal in one call, enqueues each message with its journal offset, and hands the batch to a
//!   confirm task that waits for the requested levels (group commit: concurrent waits share one
//!   fdatasync);
//! - the **dispatcher** is the only task that sends to consumers' connections, so deliveries to
//!   one consumer leave in queue order, after the consume reply that announced the consumer;
//! - the **settler** journals settlements (acks, rejects, purges) at `written` and marks records
//!   dead, which lets the store delete segments nobody needs;
//! - the mesh's inbound handler ([`Core::handle`]) is synchronous: it only updates state and rings
//!   the bell of one of the tasks above, so a task that drains a ring never awaits a send.
//!
//! A message record may serve several queues on this shard (fanout stores the body once). The
//! record is dead when every queue it was enqueued in has let the message go: `references` counts
//! the queues still holding each such record.
//!
//! A settlement record must outlive the message records it settles, or a replay would bring the
//! messages back. It is marked dead once every message it settles lies below the journal's first
//! offset, that is, once their segments are gone.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ruuster_segment_store::{Appended, Level, Log, Record, StoreError, SyncPolicy};
use ruuster_wire::{Durability, ErrorCode};
use tracing::{debug, error, info, warn};

use crate::control::{ControlOp, ControlReply, ControlRequest, Snapshot};
use crate::envelope::StoredEnvelope;
use crate::flow::Flow;
use crate::journal::{self, Decoded, RECORD_MESSAGE, RECORD_SETTLEMENT, Target};
use crate::mesh::{Lane, Mesh};
use crate::queue::{self, ConsumerId, Delivery, Departure, MessageMeta, Queue, QueueRecovery};
use crate::routing::QueueId;
use crate::stages::{Stage, Stages};

/// Publishes appended to the journal in one call. Bounds the batch's record buffers.
pub const APPEND_BATCH_MAX: usize = 1024;

/// A sealed segment is compacted once at most 1 / this of its records are live (12.5%): low
/// enough that copying rarely repeats for the same records, high enough that a handful of
/// stuck messages never keeps a segment.
pub const COMPACTION_LIVE_DIVISOR: u64 = 8;

/// Consumers one connection may hold; their ids fit the 16 low bits of a [`ConsumerId`].
pub const CONSUMERS_PER_CONNECTION_MAX: u32 = 4096;

/// How long the crash tests' negative control holds each append back after confirming it
/// (`Config::unsafe_confirm_before_append`). Without the delay the window between the early
/// confirm and the write is a fraction of a millisecond and a kill rarely lands in it; with it,
/// a kill at any moment of a busy run finds confirmed messages not yet appended. The appender
/// still takes up to [`APPEND_BATCH_MAX`] publishes per delay, about 50,000 a second per shard.
pub const CONFIRM_BEFORE_APPEND_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// What shards send each other over the mesh.
#[derive(Debug)]
pub enum ShardMessage {
    // Data lane.
    /// A message for queues on the receiving shard, from a connection on the sending shard.
    Publish {
        connection: u64,
        sequence: u64,
        level: Durability,
        envelope: StoredEnvelope,
    },
    /// A delivery for a consumer of a connection on the receiving shard.
    Deliver(Deliver),
    /// A consumer was added (or refused) on the owner; sent on the data lane so that it reaches
    /// the connection before the consumer's first delivery.
    ConsumeResult {
        connection: u64,
        request_id: u32,
        consumer: u32,
        refused: Option<ErrorCode>,
    },
    /// A consumer's queue is gone.
    CancelNotice {
        connection: u64,
        consumer: u32,
        code: ErrorCode,
    },
    /// A cancelled consumer is stopped on the owner; sent on the data lane, after every delivery
    /// dispatched to it, so that the connection's `CancelOk` is the last frame about it.
    Cancelled {
        connection: u64,
        request_id: u32,
        consumer: u32,
    },

    // Control lane.
    /// The outcome of one publish on this shard's queues, back to the publishing connection.
    Stored {
        connection: u64,
        sequence: u64,
        outcome: Result<Durability, ErrorCode>,
        /// The envelope's size, which the publishing shard counted as in flight to this one.
        size_bytes: u32,
    },
    /// The sending shard's queue memory crossed its limit (raised) or fell back below it.
    MemoryAlarm { raised: bool },
    Consume {
        queue: QueueId,
        consumer: ConsumerId,
        request_id: u32,
        prefetch: u32,
        /// The consumer must be the queue's only one while it takes deliveries.
        exclusive: bool,
    },
    /// The client cancelled the consumer: it gets no more deliveries, and what it holds stays
    /// unacked until settled or until its connection closes. Answered with
    /// [`ShardMessage::Cancelled`].
    Cancel {
        queue: QueueId,
        consumer: ConsumerId,
        request_id: u32,
    },
    /// The consumer's connection closed: the consumer goes, stopped or not, and its unacked
    /// messages return to the queue.
    Release {
        queue: QueueId,
        consumer: ConsumerId,
    },
    Settle {
        queue: QueueId,
        consumer: ConsumerId,
        sequences: Vec<u64>,
        action: Settle,
    },
    /// A request for counts or a purge of an owned queue, answered with [`ShardMessage::Reply`].
    Query {
        queue: QueueId,
        connection: u64,
        token: u64,
        query: Query,
    },
    Reply {
        connection: u64,
        token: u64,
        reply: QueryReply,
    },
}

/// How a consumer let go of deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Nack or reject without requeue: the message leaves the queue.
    Discard,
    /// Nack or reject with requeue: back to its original place.
    Requeue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    Counts,
    Purge,
    Stats,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryReply {
    Counts {
        message_count: u64,
        consumer_count: u32,
    },
    Purged {
        message_count: u64,
    },
    /// The shard's counters, summed over shards by the connection, and its per-shard figures
    /// (stage percentiles), passed on as they are.
    Stats(Vec<(&'static str, u64)>, Vec<(String, u64)>),
    NotFound,
}

/// A delivery on its way to a connection. The envelope is checked there, once.
#[derive(Debug)]
pub struct Deliver {
    pub connection: u64,
    pub consumer: u32,
    pub owner: u16,
    pub queue: QueueId,
    pub sequence: u64,
    pub redelivered: bool,
    pub delivery_count: u32,
    pub envelope: Bytes,
}

/// What a connection on this shard receives from the runtime. Implemented by the connection
/// module; every method is synchronous and must not block.
pub trait ConnectionSink {
    fn stored(&self, sequence: u64, outcome: Result<Durability, ErrorCode>);
    fn deliver(&self, delivery: Deliver);
    fn consume_result(&self, request_id: u32, consumer: u32, refused: Option<ErrorCode>);
    fn cancelled(&self, request_id: u32, consumer: u32);
    fn cancel_notice(&self, consumer: u32, code: ErrorCode);
    fn reply(&self, token: u64, reply: QueryReply);
    /// The shard's blocking state changed (see [`crate::flow`]).
    fn flow_changed(&self);
}

/// A consumer's identity on its queue's owner: the connection's shard and serial and the
/// connection-scoped consumer id, packed so the owner can route deliveries without a table.
pub fn consumer_id(shard: u16, connection: u64, consumer: u32) -> ConsumerId {
    assert!(consumer < CONSUMERS_PER_CONNECTION_MAX && connection < (1 << 40) && shard < 256);
    ConsumerId((u64::from(shard) << 56) | (connection << 16) | u64::from(consumer))
}

fn consumer_parts(id: ConsumerId) -> (u16, u64, u32) {
    (
        (id.0 >> 56) as u16,
        (id.0 >> 16) & ((1 << 40) - 1),
        (id.0 & 0xFFFF) as u32,
    )
}

/// One queue this shard owns.
struct OwnedQueue {
    name: String,
    auto_delete: bool,
    queue: Queue,
    /// A consumer that asked to be the only one; cleared when it stops or goes.
    exclusive_consumer: Option<ConsumerId>,
}

/// A publish waiting for the appender.
struct PendingPublish {
    origin: usize,
    connection: u64,
    sequence: u64,
    level: Durability,
    envelope: StoredEnvelope,
}

/// Counters for the stats request. Only this shard's executor touches them.
#[derive(Debug, Default)]
pub struct Counters {
    pub published_count: Cell<u64>,
    pub stored_count: Cell<u64>,
    pub delivered_count: Cell<u64>,
    pub acked_count: Cell<u64>,
    pub requeued_count: Cell<u64>,
    pub discarded_count: Cell<u64>,
    pub unroutable_count: Cell<u64>,
    pub connections_accepted_count: Cell<u64>,
    pub settlement_records_count: Cell<u64>,
    pub segments_compacted_count: Cell<u64>,
    pub records_copied_count: Cell<u64>,
}

fn bump(counter: &Cell<u64>, by: u64) {
    counter.set(counter.get() + by);
}

/// A bell: a task sleeps on it until another rings. Ringing a bell that rings already is free.
#[derive(Debug)]
struct Bell {
    sender: flume::Sender<()>,
    receiver: flume::Receiver<()>,
}

impl Bell {
    fn new() -> Bell {
        let (sender, receiver) = flume::bounded(1);
        Bell { sender, receiver }
    }

    fn ring(&self) {
        let _ = self.sender.try_send(());
    }

    async fn wait(&self) {
        let _ = self.receiver.recv_async().await;
    }
}

/// One shard's data plane.
pub struct Core {
    pub index: usize,
    pub shard_count: usize,
    pub log: Log,
    pub sync_policy: SyncPolicy,
    pub control: flume::Sender<ControlRequest>,
    pub counters: Counters,
    pub stages: Stages,
    pub flow: Flow,
    mesh: std::cell::OnceCell<Mesh<ShardMessage>>,
    snapshot: RefCell<Arc<Snapshot>>,
    queues: RefCell<HashMap<QueueId, OwnedQueue>>,
    connections: RefCell<HashMap<u64, Rc<dyn ConnectionSink>>>,
    next_connection: Cell<u64>,

    appends: RefCell<Vec<PendingPublish>>,
    append_bell: Bell,

    outgoing: RefCell<VecDeque<(usize, ShardMessage)>>,
    dirty: RefCell<BTreeSet<QueueId>>,
    dispatch_bell: Bell,

    settled: RefCell<Vec<(Target, Option<u64>)>>,
    dead: RefCell<Vec<u64>>,
    settle_bell: Bell,
    /// The crash tests' negative control: confirm before the append (see
    /// [`CONFIRM_BEFORE_APPEND_DELAY`]).
    confirm_before_append: Cell<bool>,
    /// Journal offset of a message record that more than one queue holds → queues still holding.
    references: RefCell<HashMap<u64, u16>>,
    /// Settlement records waiting for their messages' segments to go: (highest message offset,
    /// settlement offset).
    settlement_watch: RefCell<VecDeque<(u64, u64)>>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Core {
    pub fn new(
        index: usize,
        shard_count: usize,
        log: Log,
        sync_policy: SyncPolicy,
        control: flume::Sender<ControlRequest>,
        snapshot: Arc<Snapshot>,
    ) -> Core {
        Core {
            index,
            shard_count,
            log,
            sync_policy,
            control,
            counters: Counters::default(),
            stages: Stages::default(),
            flow: Flow::default(),
            mesh: std::cell::OnceCell::new(),
            snapshot: RefCell::new(snapshot),
            queues: RefCell::new(HashMap::new()),
            connections: RefCell::new(HashMap::new()),
            next_connection: Cell::new(1),
            appends: RefCell::new(Vec::new()),
            append_bell: Bell::new(),
            outgoing: RefCell::new(VecDeque::new()),
            dirty: RefCell::new(BTreeSet::new()),
            dispatch_bell: Bell::new(),
            settled: RefCell::new(Vec::new()),
            dead: RefCell::new(Vec::new()),
            settle_bell: Bell::new(),
            confirm_before_append: Cell::new(false),
            references: RefCell::new(HashMap::new()),
            settlement_watch: RefCell::new(VecDeque::new()),
        }
    }

    /// Turns on the crash tests' negative control: from now on this shard confirms each publish
    /// before appending it, and appends it [`CONFIRM_BEFORE_APPEND_DELAY`] later. It loses
    /// confirmed messages on a crash; nothing but `Config::unsafe_confirm_before_append` calls it.
    pub fn confirm_before_append_for_crash_tests(&self) {
        self.confirm_before_append.set(true);
    }

    pub fn set_mesh(&self, mesh: Mesh<ShardMessage>) {
        assert!(self.mesh.set(mesh).is_ok(), "the mesh is set once");
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Registers a connection; returns its serial on this shard.
    pub fn add_connection(&self, sink: Rc<dyn ConnectionSink>) -> u64 {
        let serial = self.next_connection.get();
        self.next_connection.set(serial + 1);
        self.connections.borrow_mut().insert(serial, sink);
        bump(&self.counters.connections_accepted_count, 1);
        serial
    }

    pub fn remove_connection(&self, serial: u64) {
        self.connections.borrow_mut().remove(&serial);
    }

    pub fn connection_count(&self) -> usize {
        self.connections.borrow().len()
    }

    /// Sends `message` to `shard`, or handles it here when it is this shard. Data-lane messages
    /// wait for room in the outbox (backpressure); control-lane ones never wait.
    pub async fn send(self: &Rc<Self>, shard: usize, message: ShardMessage) {
        if shard == self.index {
            self.handle(shard, message);
            return;
        }
        let mesh = self
            .mesh
            .get()
            .expect("the mesh is connected before connections start");
        let result = match lane_of(&message) {
            Lane::Data => mesh.send_data(shard, message).await,
            Lane::Control => mesh.send_control(shard, message),
        };
        if let Err(message) = result {
            warn!(shard, ?message, "peer shard gone; message dropped");
        }
    }

    /// Handles a message from `from` (possibly this shard). Never awaits.
    pub fn handle(self: &Rc<Self>, from: usize, message: ShardMessage) {
        match message {
            ShardMessage::Publish {
                connection,
                sequence,
                level,
                envelope,
            } => {
                let publish = PendingPublish {
                    origin: from,
                    connection,
                    sequence,
                    level,
                    envelope,
                };
                self.appends.borrow_mut().push(publish);
                self.append_bell.ring();
            }
            ShardMessage::Deliver(delivery) => {
                if let Some(sink) = self.sink(delivery.connection) {
                    sink.deliver(delivery);
                } else {
                    // The connection closed; its consumer's cancel is on its way to the owner,
                    // which requeues this delivery with the others it holds.
                    debug!(
                        connection = delivery.connection,
                        "delivery for a closed connection"
                    );
                }
            }
            ShardMessage::ConsumeResult {
                connection,
                request_id,
                consumer,
                refused,
            } => {
                if let Some(sink) = self.sink(connection) {
                    sink.consume_result(request_id, consumer, refused);
                }
            }
            ShardMessage::CancelNotice {
                connection,
                consumer,
                code,
            } => {
                if let Some(sink) = self.sink(connection) {
                    sink.cancel_notice(consumer, code);
                }
            }
            ShardMessage::Cancelled {
                connection,
                request_id,
                consumer,
            } => {
                if let Some(sink) = self.sink(connection) {
                    sink.cancelled(request_id, consumer);
                }
            }
            ShardMessage::Stored {
                connection,
                sequence,
                outcome,
                size_bytes,
            } => {
                self.publish_answered(from, u64::from(size_bytes));
                if let Some(sink) = self.sink(connection) {
                    sink.stored(sequence, outcome);
                }
            }
            ShardMessage::Consume {
                queue,
                consumer,
                request_id,
                prefetch,
                exclusive,
            } => self.consume(queue, consumer, request_id, prefetch, exclusive),
            ShardMessage::Cancel {
                queue,
                consumer,
                request_id,
            } => self.cancel(queue, consumer, request_id),
            ShardMessage::Release { queue, consumer } => self.release(queue, consumer),
            ShardMessage::MemoryAlarm { raised } => self.set_memory_alarm(from, raised),
            ShardMessage::Settle {
                queue,
                consumer,
                sequences,
                action,
            } => self.settle(queue, consumer, &sequences, action),
            ShardMessage::Query {
                queue,
                connection,
                token,
                query,
            } => {
                let reply = self.query(queue, query);
                let message = ShardMessage::Reply {
                    connection,
                    token,
                    reply,
                };
                self.send_control_now(from, message);
            }
            ShardMessage::Reply {
                connection,
                token,
                reply,
            } => {
                if let Some(sink) = self.sink(connection) {
                    sink.reply(token, reply);
                }
            }
        }
    }

    fn sink(&self, connection: u64) -> Option<Rc<dyn ConnectionSink>> {
        self.connections.borrow().get(&connection).cloned()
    }

    /// Every connection on this shard.
    pub(crate) fn sinks(&self) -> Vec<Rc<dyn ConnectionSink>> {
        self.connections.borrow().values().cloned().collect()
    }

    /// What this shard's queues charge against the memory limit (see [`Queue::memory_bytes`]).
    pub(crate) fn owned_queue_memory_bytes(&self) -> u64 {
        let queues = self.queues.borrow();
        queues
            .values()
            .map(|owned| owned.queue.memory_bytes())
            .sum()
    }

    /// Sends a control-lane message without awaiting (control sends never wait).
    pub fn send_control_now(self: &Rc<Self>, shard: usize, message: ShardMessage) {
        assert_eq!(lane_of(&message), Lane::Control);
        if shard == self.index {
            self.handle(shard, message);
            return;
        }
        let mesh = self.mesh.get().expect("the mesh is connected");
        if let Err(message) = mesh.send_control(shard, message) {
            warn!(shard, ?message, "peer shard gone; control message dropped");
        }
    }

    /// Queues a data-lane message to be sent by the dispatcher, in order with deliveries.
    fn send_ordered(&self, shard: usize, message: ShardMessage) {
        self.outgoing.borrow_mut().push_back((shard, message));
        self.dispatch_bell.ring();
    }

    fn consume(
        self: &Rc<Self>,
        queue: QueueId,
        consumer: ConsumerId,
        request_id: u32,
        prefetch: u32,
        exclusive: bool,
    ) {
        let (shard, connection, local_consumer) = consumer_parts(consumer);
        let refused = match self.queues.borrow_mut().get_mut(&queue) {
            None => Some(ErrorCode::QUEUE_NOT_FOUND),
            Some(owned)
                if owned.exclusive_consumer.is_some()
                    || (exclusive && owned.queue.counts().consumer_count > 0) =>
            {
                Some(ErrorCode::EXCLUSIVE_LOCKED)
            }
            Some(owned) => match owned.queue.add_consumer(consumer, prefetch) {
                Ok(()) => {
                    if exclusive {
                        owned.exclusive_consumer = Some(consumer);
                    }
                    None
                }
                Err(queue::QueueError::PrefetchTooLarge { .. }) => {
                    Some(ErrorCode::PREFETCH_TOO_LARGE)
                }
                Err(queue::QueueError::ConsumerExists { .. }) => {
                    Some(ErrorCode::CONSUMER_TAG_IN_USE)
                }
                Err(_) => Some(ErrorCode::LIMIT_EXCEEDED),
            },
        };
        let result = ShardMessage::ConsumeResult {
            connection,
            request_id,
            consumer: local_consumer,
            refused,
        };
        self.send_ordered(shard as usize, result);
        if refused.is_none() {
            self.mark_dirty(queue);
        }
    }

    /// Stops a consumer its client cancelled, then answers on the data lane, behind the
    /// deliveries already dispatched to it.
    fn cancel(self: &Rc<Self>, queue: QueueId, consumer: ConsumerId, request_id: u32) {
        let (shard, connection, local_consumer) = consumer_parts(consumer);
        let answer = ShardMessage::Cancelled {
            connection,
            request_id,
            consumer: local_consumer,
        };
        let mut queues = self.queues.borrow_mut();
        let Some(owned) = queues.get_mut(&queue) else {
            drop(queues);
            self.send_ordered(shard as usize, answer);
            return;
        };
        let active_before = owned.queue.counts().consumer_count;
        if owned.exclusive_consumer == Some(consumer) {
            owned.exclusive_consumer = None;
        }
        if let Err(error) = owned.queue.stop_consumer(consumer) {
            debug!(%error, "cancel of an unknown consumer");
        }
        drop(queues);
        match self.after_consumer_left(queue, active_before) {
            None => self.send_ordered(shard as usize, answer),
            Some(deleted) => {
                // The last consumer of an auto-delete queue: answer once the queue is gone on
                // every shard, so that nothing the client does after `CancelOk` finds it. The
                // consumer is stopped, so no delivery can come after the answer.
                let core = self.clone();
                glommio::spawn_local(async move {
                    let _ = deleted.recv_async().await;
                    core.send_ordered(shard as usize, answer);
                })
                .detach();
            }
        }
    }

    /// Removes a consumer whose connection closed; what it held goes back to the queue.
    fn release(self: &Rc<Self>, queue: QueueId, consumer: ConsumerId) {
        let mut queues = self.queues.borrow_mut();
        let Some(owned) = queues.get_mut(&queue) else {
            return;
        };
        let active_before = owned.queue.counts().consumer_count;
        if owned.exclusive_consumer == Some(consumer) {
            owned.exclusive_consumer = None;
        }
        match owned.queue.remove_consumer(consumer) {
            Ok(requeued) => bump(&self.counters.requeued_count, requeued as u64),
            Err(error) => debug!(%error, "release of an unknown consumer"),
        }
        drop(queues);
        // Nobody waits for the deletion: the connection is gone.
        let _ = self.after_consumer_left(queue, active_before);
    }

    /// Asks for the deletion of an auto-delete queue whose last active consumer just left (a
    /// stopped consumer that goes with its connection later changes nothing), and lets the
    /// queue dispatch again. Returns where the control plane answers the deletion, if asked.
    fn after_consumer_left(
        self: &Rc<Self>,
        queue: QueueId,
        active_before: usize,
    ) -> Option<flume::Receiver<ControlReply>> {
        let queues = self.queues.borrow();
        let owned = queues.get(&queue)?;
        let last_gone =
            owned.auto_delete && active_before > 0 && owned.queue.counts().consumer_count == 0;
        let name = owned.name.clone();
        drop(queues);
        self.mark_dirty(queue);
        if !last_gone {
            return None;
        }
        // The control task deletes the queue, and the snapshot that no longer has it removes
        // its state here; it answers once every shard has installed that snapshot.
        let (reply, answer) = flume::bounded(1);
        let request = ControlRequest {
            op: ControlOp::LastConsumerGone { queue: name },
            reply,
        };
        let _ = self.control.send(request);
        Some(answer)
    }

    fn settle(
        self: &Rc<Self>,
        queue: QueueId,
        consumer: ConsumerId,
        sequences: &[u64],
        action: Settle,
    ) {
        let mut queues = self.queues.borrow_mut();
        let Some(owned) = queues.get_mut(&queue) else {
            return;
        };
        let mut departures = Vec::new();
        for &sequence in sequences {
            let result = match action {
                Settle::Ack => owned.queue.ack(consumer, sequence).map(Some),
                Settle::Discard => owned.queue.reject(consumer, sequence).map(Some),
                Settle::Requeue => owned.queue.requeue(consumer, sequence).map(|()| None),
            };
            match result {
                Ok(Some(departure)) => departures.push(departure),
                Ok(None) => bump(&self.counters.requeued_count, 1),
                // The connection checked the tag and a cancelled consumer keeps what it holds,
                // so a miss is not the client's doing; it leaves the queue as it is.
                Err(error) => debug!(%error, "settlement of a delivery no longer held"),
            }
        }
        drop(queues);
        match action {
            Settle::Ack => bump(&self.counters.acked_count, departures.len() as u64),
            Settle::Discard => bump(&self.counters.discarded_count, departures.len() as u64),
            Settle::Requeue => {}
        }
        self.depart(queue, departures);
        self.mark_dirty(queue);
    }

    /// Journals the departures' settlement and releases their records.
    fn depart(&self, queue: QueueId, departures: Vec<Departure>) {
        if departures.is_empty() {
            return;
        }
        let mut settled = self.settled.borrow_mut();
        for departure in departures {
            let target = Target {
                queue,
                sequence: departure.sequence,
            };
            settled.push((target, departure.journal_offset));
        }
        drop(settled);
        self.settle_bell.ring();
    }

    fn query(self: &Rc<Self>, queue: QueueId, query: Query) -> QueryReply {
        if query == Query::Stats {
            return QueryReply::Stats(self.stats(), self.stages.counters(self.index));
        }
        let mut queues = self.queues.borrow_mut();
        let Some(owned) = queues.get_mut(&queue) else {
            return QueryReply::NotFound;
        };
        match query {
            Query::Counts => {
                let counts = owned.queue.counts();
                QueryReply::Counts {
                    // `ready_count` includes the messages waiting for the watermark.
                    message_count: counts.ready_count as u64,
                    consumer_count: counts.consumer_count as u32,
                }
            }
            Query::Purge => {
                let departures: Vec<Departure> = owned.queue.purge().collect();
                drop(queues);
                let message_count = departures.len() as u64;
                self.depart(queue, departures);
                QueryReply::Purged { message_count }
            }
            Query::Stats => unreachable!("answered above"),
        }
    }

    /// This shard's counters, named for the stats reply.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let counters = &self.counters;
        let store = self.log.stats();
        let queues = self.queues.borrow();
        let (mut ready, mut unacked) = (0u64, 0u64);
        for owned in queues.values() {
            let counts = owned.queue.counts();
            ready += counts.ready_count as u64;
            unacked += counts.unacked_count as u64;
        }
        vec![
            ("published_count", counters.published_count.get()),
            ("stored_count", counters.stored_count.get()),
            ("unroutable_count", counters.unroutable_count.get()),
            ("delivered_count", counters.delivered_count.get()),
            ("acked_count", counters.acked_count.get()),
            ("requeued_count", counters.requeued_count.get()),
            ("discarded_count", counters.discarded_count.get()),
            ("connections_count", self.connections.borrow().len() as u64),
            (
                "connections_accepted_count",
                counters.connections_accepted_count.get(),
            ),
            ("queues_count", queues.len() as u64),
            ("messages_ready_count", ready),
            ("messages_unacked_count", unacked),
            ("journal_writes_count", store.writes_count),
            ("journal_pad_skips_count", store.pad_skips_count),
            ("journal_written_bytes", store.written_bytes),
            ("journal_fdatasyncs_count", store.syncs_count),
            ("journal_synced_records_count", store.synced_records_count),
            (
                "journal_segments_deleted_count",
                store.segments_deleted_count,
            ),
            (
                "settlement_records_count",
                counters.settlement_records_count.get(),
            ),
            (
                "journal_segments_compacted_count",
                counters.segments_compacted_count.get(),
            ),
            (
                "journal_records_copied_count",
                counters.records_copied_count.get(),
            ),
            ("queue_memory_bytes", self.flow.queue_memory_bytes()),
            ("flow_holds_count", self.flow.holds_count.get()),
            ("flow_blocked_count", self.flow.blocked_count.get()),
        ]
    }

    fn mark_dirty(&self, queue: QueueId) {
        self.dirty.borrow_mut().insert(queue);
        self.dispatch_bell.ring();
    }

    /// Installs a new snapshot: creates state for new owned queues and drains deleted ones.
    pub fn install(self: &Rc<Self>, snapshot: Arc<Snapshot>) {
        let owned_now: HashMap<QueueId, &crate::metadata::Queue> = snapshot
            .queues
            .values()
            .filter(|queue| usize::from(queue.owner.0) == self.index)
            .map(|queue| (queue.id, queue))
            .collect();

        let mut queues = self.queues.borrow_mut();
        let gone: Vec<QueueId> = queues
            .keys()
            .filter(|id| !owned_now.contains_key(id))
            .copied()
            .collect();
        let mut drained = Vec::new();
        for id in gone {
            let owned = queues.remove(&id).expect("listed above");
            drained.push((id, owned.queue.delete()));
        }
        for (id, queue) in &owned_now {
            queues.entry(*id).or_insert_with(|| OwnedQueue {
                name: queue.name.clone(),
                auto_delete: queue.auto_delete,
                queue: Queue::new(durability_of(queue.durable)),
                exclusive_consumer: None,
            });
        }
        drop(queues);
        *self.snapshot.borrow_mut() = snapshot;

        for (id, deleted) in drained {
            for consumer in deleted.consumers {
                let (shard, connection, local) = consumer_parts(consumer);
                let notice = ShardMessage::CancelNotice {
                    connection,
                    consumer: local,
                    code: ErrorCode::QUEUE_DELETED,
                };
                self.send_ordered(shard as usize, notice);
            }
            self.depart(id, deleted.departures.collect());
        }
    }

    /// Publishes from a connection on this shard: one envelope per target shard.
    pub async fn publish(
        self: &Rc<Self>,
        shard: usize,
        connection: u64,
        sequence: u64,
        level: Durability,
        envelope: StoredEnvelope,
    ) {
        bump(&self.counters.published_count, 1);
        self.reserve_publish(shard, envelope.bytes().len() as u64)
            .await;
        self.send(
            shard,
            ShardMessage::Publish {
                connection,
                sequence,
                level,
                envelope,
            },
        )
        .await;
    }

    pub fn count_unroutable(&self) {
        bump(&self.counters.unroutable_count, 1);
    }

    /// Starts the appender, dispatcher and settler tasks.
    pub fn start_tasks(self: &Rc<Self>) {
        glommio::spawn_local(appender(self.clone())).detach();
        glommio::spawn_local(dispatcher(self.clone())).detach();
        glommio::spawn_local(settler(self.clone())).detach();
        glommio::spawn_local(crate::flow::memory_ticker(self.clone())).detach();
    }

    /// Rebuilds the owned queues from the journal. Runs before the shard serves anything.
    pub async fn replay(self: &Rc<Self>) -> Result<ReplayReport, StoreError> {
        let started = std::time::Instant::now();
        let snapshot = self.snapshot();
        let owned: HashMap<QueueId, &crate::metadata::Queue> = snapshot
            .queues
            .values()
            .filter(|queue| usize::from(queue.owner.0) == self.index && queue.durable)
            .map(|queue| (queue.id, queue))
            .collect();

        let mut recoveries: HashMap<QueueId, QueueRecovery> = owned
            .keys()
            .map(|&id| (id, QueueRecovery::new(queue::Durability::Durable)))
            .collect();
        let mut references: HashMap<u64, u16> = HashMap::new();
        let mut dead: Vec<u64> = Vec::new();
        let mut settlements: Vec<(u64, Vec<u64>)> = Vec::new();
        let mut report = ReplayReport::default();

        self.log
            .scan(ruuster_segment_store::Watermark::Written, |record| {
                report.records_count += 1;
                let payload = Bytes::copy_from_slice(&record.payload);
                match journal::decode(record.flags, payload) {
                    Ok(Decoded::Message { targets, envelope }) => {
                        let meta = meta_of(&envelope);
                        let mut held = 0u16;
                        for target in targets {
                            let Some(recovery) = recoveries.get_mut(&target.queue) else {
                                continue;
                            };
                            let body = envelope.bytes().clone();
                            match recovery.restore(target.sequence, record.offset, body, meta) {
                                Ok(superseded) => {
                                    held += 1;
                                    if let Some(old) = superseded {
                                        release(&mut references, &mut dead, old);
                                    }
                                }
                                Err(error) => {
                                    warn!(%error, offset = record.offset, "record skipped")
                                }
                            }
                        }
                        if held == 0 {
                            dead.push(record.offset);
                        } else {
                            references.insert(record.offset, held);
                        }
                    }
                    Ok(Decoded::Settlement { settled }) => {
                        let mut offsets = Vec::new();
                        for target in settled {
                            if let Some(recovery) = recoveries.get_mut(&target.queue)
                                && let Some(offset) = recovery.forget(target.sequence)
                            {
                                offsets.push(offset);
                                release(&mut references, &mut dead, offset);
                            }
                        }
                        settlements.push((record.offset, offsets));
                    }
                    Err(error) => {
                        // The store's CRC passed, so the bytes are what we wrote: a record this
                        // version cannot read. Keep it (never delete what we do not understand)
                        // and say so.
                        report.unreadable_count += 1;
                        error!(offset = record.offset, %error, "journal record not understood");
                    }
                }
            })
            .await?;

        let mut restored_count = 0u64;
        {
            let mut queues = self.queues.borrow_mut();
            for (id, recovery) in recoveries {
                restored_count += recovery.message_count() as u64;
                let queue = owned[&id];
                queues.insert(
                    id,
                    OwnedQueue {
                        name: queue.name.clone(),
                        auto_delete: queue.auto_delete,
                        queue: recovery.finish(),
                        exclusive_consumer: None,
                    },
                );
            }
        }
        report.messages_restored_count = restored_count;
        *self.references.borrow_mut() = references;

        // What was in the journal is made durable before anything is delivered from it: a record
        // that was written but not synced before the crash must not reach a consumer and then
        // vanish in a power loss.
        self.log.sync().await?;
        self.advance_watermarks();

        for offset in dead {
            self.log.mark_dead(offset).await?;
            report.records_released_count += 1;
        }
        let first_offset = self.log.first_offset();
        let mut dead_settlements = Vec::new();
        {
            let mut watch = self.settlement_watch.borrow_mut();
            for (settlement_offset, offsets) in settlements {
                match offsets.iter().max() {
                    Some(&highest) if highest >= first_offset => {
                        watch.push_back((highest, settlement_offset))
                    }
                    _ => dead_settlements.push(settlement_offset),
                }
            }
        }
        for offset in dead_settlements {
            self.log.mark_dead(offset).await?;
            report.records_released_count += 1;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Moves every owned queue's watermark to the journal's and marks queues that can deliver.
    fn advance_watermarks(&self) {
        let written = self.log.written_offset();
        let durable = match self.sync_policy {
            // Without fsyncs of our own, written is as durable as this policy makes anything.
            SyncPolicy::Os => written,
            SyncPolicy::Always | SyncPolicy::Interval(_) => self.log.durable_offset(),
        };
        let mut queues = self.queues.borrow_mut();
        let mut dirty = self.dirty.borrow_mut();
        for (id, owned) in queues.iter_mut() {
            owned.queue.advance_watermarks(written, durable);
            if owned.queue.can_dispatch() {
                dirty.insert(*id);
            }
        }
        if !dirty.is_empty() {
            self.dispatch_bell.ring();
        }
    }
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub records_count: u64,
    pub messages_restored_count: u64,
    pub records_released_count: u64,
    pub unreadable_count: u64,
    pub elapsed: std::time::Duration,
}

fn release(references: &mut HashMap<u64, u16>, dead: &mut Vec<u64>, offset: u64) {
    if let Some(count) = references.get_mut(&offset) {
        *count -= 1;
        if *count == 0 {
            references.remove(&offset);
            dead.push(offset);
        }
    }
}

fn durability_of(durable: bool) -> queue::Durability {
    if durable {
        queue::Durability::Durable
    } else {
        queue::Durability::Transient
    }
}

fn meta_of(envelope: &StoredEnvelope) -> MessageMeta {
    MessageMeta {
        enqueued_at_ns: envelope.archived().published_at_ns(),
        expires_at_ms: None,
        priority: 0,
    }
}

fn lane_of(message: &ShardMessage) -> Lane {
    match message {
        ShardMessage::Publish { .. }
        | ShardMessage::Deliver(_)
        | ShardMessage::ConsumeResult { .. }
        | ShardMessage::CancelNotice { .. }
        | ShardMessage::Cancelled { .. } => Lane::Data,
        _ => Lane::Control,
    }
}

/// The highest level a message in a queue of this durability can be confirmed at.
fn level_cap(durability: queue::Durability) -> Durability {
    match durability {
        queue::Durability::Durable => Durability::Fsynced,
        queue::Durability::Transient => Durability::Written,
        queue::Durability::Memory => Durability::Memory,
    }
}

fn store_level(level: Durability) -> Level {
    match level {
        Durability::Memory => Level::Memory,
        Durability::Written => Level::Written,
        Durability::Fsynced => Level::Fsynced,
    }
}

fn wire_level(level: Level) -> Durability {
    match level {
        Level::Memory => Durability::Memory,
        Level::Written => Durability::Written,
        Level::Fsynced => Durability::Fsynced,
    }
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

/// A publish the appender has placed in the journal, waiting for its level.
struct Placed {
    origin: usize,
    connection: u64,
    sequence: u64,
    /// The level asked for, lowered to `cap`: the confirm waits for no more than the target
    /// queues can reach.
    level: Durability,
    /// The highest level this shard's target queues can reach: a transient queue is not
    /// replayed after a restart, so its messages count as `written` at most (wire/PROTOCOL.md,
    /// section 8) even when the journal synced them.
    cap: Durability,
    /// False when every target queue was deleted before the append: nothing to wait for.
    stored: bool,
    /// The envelope's publish time, for [`Stage::Stored`].
    published_at_ns: u64,
    /// Confirmed before the append (the crash tests' negative control): report nothing more.
    confirmed_early: bool,
    /// The envelope's size, answered back to the publishing shard's flow control.
    size_bytes: u32,
}

async fn appender(core: Rc<Core>) {
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    loop {
        core.append_bell.wait().await;
        loop {
            let batch: Vec<PendingPublish> = {
                let mut appends = core.appends.borrow_mut();
                let take = appends.len().min(APPEND_BATCH_MAX);
                appends.drain(..take).collect()
            };
            if batch.is_empty() {
                break;
            }
            append_batch(&core, batch, &mut payloads).await;
        }
    }
}

async fn append_batch(core: &Rc<Core>, batch: Vec<PendingPublish>, payloads: &mut Vec<Vec<u8>>) {
    let confirmed_early = core.confirm_before_append.get();
    if confirmed_early {
        for publish in &batch {
            let message = ShardMessage::Stored {
                connection: publish.connection,
                sequence: publish.sequence,
                outcome: Ok(publish.level),
                size_bytes: publish.envelope.bytes().len() as u32,
            };
            core.send_control_now(publish.origin, message);
        }
        glommio::timer::sleep(CONFIRM_BEFORE_APPEND_DELAY).await;
    }

    // Sequences are chosen before the append's await and the messages enqueued right after it;
    // only this task enqueues, so nothing can take a sequence in between.
    let mut planned: HashMap<QueueId, u64> = HashMap::new();
    let mut targets_per_publish: Vec<Vec<Target>> = Vec::with_capacity(batch.len());
    let mut caps: Vec<Durability> = Vec::with_capacity(batch.len());
    // A durable target delivers below the durable watermark, so the append must be synced even
    // when no publisher asked for it.
    let mut durable_target = false;
    {
        let queues = core.queues.borrow();
        for publish in &batch {
            let mut targets = Vec::new();
            let mut cap = Durability::Fsynced;
            for id in publish.envelope.archived().queue_ids().map(QueueId) {
                let Some(owned) = queues.get(&id) else {
                    continue;
                };
                cap = cap.min(level_cap(owned.queue.durability()));
                durable_target |= owned.queue.durability() == queue::Durability::Durable;
                let next = planned
                    .entry(id)
                    .or_insert_with(|| owned.queue.next_sequence());
                targets.push(Target {
                    queue: id,
                    sequence: *next,
                });
                *next += 1;
            }
            targets_per_publish.push(targets);
            caps.push(cap);
        }
    }

    payloads.resize_with(batch.len(), Vec::new);
    let mut record_indexes = Vec::with_capacity(batch.len());
    for (index, (publish, targets)) in batch.iter().zip(&targets_per_publish).enumerate() {
        if targets.is_empty() {
            continue;
        }
        journal::encode_message(targets, &publish.envelope, &mut payloads[index]);
        record_indexes.push(index);
    }
    let timestamp_ms = now_ns() / 1_000_000;
    let records: Vec<Record<'_>> = record_indexes
        .iter()
        .map(|&index| Record {
            payload: &payloads[index],
            timestamp_ms,
            flags: RECORD_MESSAGE,
        })
        .collect();

    let appended = if records.is_empty() {
        None
    } else {
        let started = std::time::Instant::now();
        let appended = core.log.append(&records).await;
        core.stages
            .record_duration(Stage::Append, started.elapsed());
        core.stages
            .record(Stage::AppendBatchRecords, records.len() as u64);
        Some(appended)
    };
    drop(records);

    let mut placed = Vec::with_capacity(batch.len());
    let mut record_offset = match &appended {
        Some(Ok(appended)) => appended.offsets.start,
        _ => 0,
    };
    let mut enqueued_bytes = 0u64;
    for ((publish, targets), cap) in batch.into_iter().zip(targets_per_publish).zip(caps) {
        let stored = !targets.is_empty();
        if stored && let Some(Ok(_)) = &appended {
            enqueue(core, record_offset, &targets, &publish.envelope);
            record_offset += 1;
            enqueued_bytes += (publish.envelope.bytes().len() as u64 + queue::MESSAGE_ENTRY_BYTES)
                * targets.len() as u64;
        }
        placed.push(Placed {
            origin: publish.origin,
            connection: publish.connection,
            sequence: publish.sequence,
            level: publish.level.min(cap),
            cap,
            stored,
            published_at_ns: publish.envelope.archived().published_at_ns(),
            confirmed_early,
            size_bytes: publish.envelope.bytes().len() as u32,
        });
    }
    core.note_enqueued(enqueued_bytes);

    match appended {
        None => confirm(core, &placed, |_| Ok(Durability::Fsynced)),
        Some(Err(error)) if error.is_no_space() => {
            // A full disk is an operating condition: the log stays usable, and the publishes
            // are refused with the reason a client can act on.
            warn!(%error, "journal has no space; publishes are refused");
            confirm(core, &placed, |_| Err(ErrorCode::DISK_LOW));
        }
        Some(Err(error)) => {
            error!(%error, "journal append failed; publishes are refused");
            confirm(core, &placed, |_| Err(ErrorCode::STORAGE_FAILED));
        }
        Some(Ok(appended)) => {
            let core = core.clone();
            glommio::spawn_local(await_levels(core, appended, placed, durable_target)).detach();
        }
    }
}

fn enqueue(core: &Rc<Core>, offset: u64, targets: &[Target], envelope: &StoredEnvelope) {
    let meta = meta_of(envelope);
    let mut queues = core.queues.borrow_mut();
    let mut held = 0u16;
    for target in targets {
        let Some(owned) = queues.get_mut(&target.queue) else {
            continue;
        };
        match owned
            .queue
            .enqueue(Some(offset), envelope.bytes().clone(), meta)
        {
            Ok(sequence) => {
                assert_eq!(
                    sequence, target.sequence,
                    "a sequence was taken during the append"
                );
                held += 1;
            }
            Err(error) => error!(%error, "enqueue refused"),
        }
    }
    drop(queues);
    bump(&core.counters.stored_count, 1);
    if held > 1 {
        core.references.borrow_mut().insert(offset, held);
    }
}

/// Waits for each requested level in turn, lowest first, confirming the publishes that asked
/// for it as soon as it is reached.
async fn await_levels(core: Rc<Core>, appended: Appended, placed: Vec<Placed>, sync: bool) {
    let mut levels: Vec<Durability> = placed.iter().map(|p| p.level).collect();
    levels.sort();
    levels.dedup();
    // Durable queues deliver only below the durable watermark; `sync` (the batch has a durable
    // target) makes sure it moves even when no publisher asked for fsynced, unless the policy
    // never syncs. Transient queues deliver at `written` and are not replayed, so an append for
    // them alone is never synced for its own sake (a later sync covers it anyway).
    if sync && core.sync_policy != SyncPolicy::Os && !levels.contains(&Durability::Fsynced) {
        levels.push(Durability::Fsynced);
    }
    let appended_at = std::time::Instant::now();
    for level in levels {
        let reached = core.log.wait(&appended, store_level(level)).await;
        core.advance_watermarks();
        match level {
            Durability::Memory => {}
            Durability::Written => core
                .stages
                .record_duration(Stage::Written, appended_at.elapsed()),
            Durability::Fsynced => core
                .stages
                .record_duration(Stage::Fsynced, appended_at.elapsed()),
        }
        let asked: Vec<&Placed> = placed.iter().filter(|p| p.level == level).collect();
        match reached {
            Ok(reached) => {
                let reached = wire_level(reached);
                let now = now_ns();
                for publish in asked {
                    core.stages
                        .record_since_ns(Stage::Stored, publish.published_at_ns, now);
                    let outcome = if publish.stored {
                        Ok(reached.min(publish.cap))
                    } else {
                        Ok(publish.level)
                    };
                    report(&core, publish, outcome);
                }
            }
            Err(error) => {
                error!(%error, "journal wait failed; publishes are refused");
                for publish in placed.iter().filter(|p| p.level >= level) {
                    report(&core, publish, Err(ErrorCode::STORAGE_FAILED));
                }
                return;
            }
        }
    }
}

fn confirm(
    core: &Rc<Core>,
    placed: &[Placed],
    outcome: impl Fn(&Placed) -> Result<Durability, ErrorCode>,
) {
    for publish in placed {
        report(core, publish, outcome(publish));
    }
}

fn report(core: &Rc<Core>, publish: &Placed, outcome: Result<Durability, ErrorCode>) {
    if publish.confirmed_early {
        return;
    }
    let message = ShardMessage::Stored {
        connection: publish.connection,
        sequence: publish.sequence,
        outcome,
        size_bytes: publish.size_bytes,
    };
    core.send_control_now(publish.origin, message);
}

async fn dispatcher(core: Rc<Core>) {
    let mut deliveries: Vec<Delivery> = Vec::new();
    loop {
        core.dispatch_bell.wait().await;
        loop {
            let next = core.outgoing.borrow_mut().pop_front();
            if let Some((shard, message)) = next {
                core.send(shard, message).await;
                continue;
            }
            let Some(queue_id) = core.dirty.borrow_mut().pop_first() else {
                break;
            };
            deliveries.clear();
            {
                let mut queues = core.queues.borrow_mut();
                let Some(owned) = queues.get_mut(&queue_id) else {
                    continue;
                };
                owned.queue.dispatch(&mut deliveries);
                if owned.queue.can_dispatch() {
                    core.dirty.borrow_mut().insert(queue_id);
                }
            }
            bump(&core.counters.delivered_count, deliveries.len() as u64);
            let now = now_ns();
            for delivery in deliveries.drain(..) {
                if delivery.delivery_count == 1 {
                    core.stages
                        .record_since_ns(Stage::Deliver, delivery.meta.enqueued_at_ns, now);
                }
                let (shard, connection, consumer) = consumer_parts(delivery.consumer);
                let message = ShardMessage::Deliver(Deliver {
                    connection,
                    consumer,
                    owner: core.index as u16,
                    queue: queue_id,
                    sequence: delivery.sequence,
                    redelivered: delivery.redelivered,
                    delivery_count: delivery.delivery_count,
                    envelope: delivery.body,
                });
                core.send(shard as usize, message).await;
            }
            glommio::yield_if_needed().await;
        }
    }
}

async fn settler(core: Rc<Core>) {
    let mut payload = Vec::new();
    loop {
        core.settle_bell.wait().await;
        loop {
            let settled: Vec<(Target, Option<u64>)> = {
                let mut settled = core.settled.borrow_mut();
                let take = settled.len().min(journal::SETTLEMENTS_MAX);
                settled.drain(..take).collect()
            };
            if settled.is_empty() {
                break;
            }
            let targets: Vec<Target> = settled.iter().map(|(target, _)| *target).collect();
            journal::encode_settlement(&targets, &mut payload);
            let record = Record {
                payload: &payload,
                timestamp_ms: now_ns() / 1_000_000,
                flags: RECORD_SETTLEMENT,
            };
            // Settlements are journaled at `written` by the store's background flush; nobody
            // waits for them (DESIGN.md: acks are not synced per ack).
            let started = std::time::Instant::now();
            let appended = core.log.append(&[record]).await;
            core.stages
                .record_duration(Stage::Settle, started.elapsed());
            let appended = match appended {
                Ok(appended) => appended,
                Err(error) => {
                    error!(%error, "settlement not journaled; the messages come back after a restart");
                    continue;
                }
            };
            bump(&core.counters.settlement_records_count, 1);

            let mut highest = None;
            {
                let mut references = core.references.borrow_mut();
                let mut dead = core.dead.borrow_mut();
                for (_, offset) in &settled {
                    let Some(offset) = *offset else { continue };
                    highest = highest.max(Some(offset));
                    match references.get_mut(&offset) {
                        Some(count) if *count > 1 => *count -= 1,
                        Some(_) => {
                            references.remove(&offset);
                            dead.push(offset);
                        }
                        None => dead.push(offset),
                    }
                }
            }
            let settlement_offset = appended.offsets.start;
            match highest {
                Some(highest) => core
                    .settlement_watch
                    .borrow_mut()
                    .push_back((highest, settlement_offset)),
                None => core.dead.borrow_mut().push(settlement_offset),
            }
            release_dead(&core).await;
            compact(&core).await;
        }
    }
}

async fn release_dead(core: &Rc<Core>) {
    let dead: Vec<u64> = std::mem::take(&mut *core.dead.borrow_mut());
    for offset in dead {
        if let Err(error) = core.log.mark_dead(offset).await {
            warn!(offset, %error, "record not released");
        }
    }
    let first_offset = core.log.first_offset();
    let mut released = Vec::new();
    {
        let mut watch = core.settlement_watch.borrow_mut();
        while let Some(&(highest, settlement)) = watch.front() {
            if highest >= first_offset {
                break;
            }
            watch.pop_front();
            released.push(settlement);
        }
    }
    for offset in released {
        if let Err(error) = core.log.mark_dead(offset).await {
            warn!(offset, %error, "settlement record not released");
        }
    }
}

/// Compacts at most one sealed segment: the oldest whose live records are at most
/// 1 / [`COMPACTION_LIVE_DIVISOR`] of its records, so that a few old unacked messages cannot pin
/// a whole segment's disk space. Copying costs at most that fraction of a segment's bytes per
/// segment freed.
///
/// Runs in the settler, between settlement batches, and that placement is what keeps it correct:
/// the settler is the only task that journals settlements and marks records dead, so no
/// settlement record can land between the store's scan of live records and their copies (a
/// settlement written before a copy would let the copy bring an acked message back on replay).
/// Acks that arrive meanwhile wait in `settled` with their old offsets, which are remapped here
/// before the settler journals them after the copies.
async fn compact(core: &Rc<Core>) {
    let Some(span) = core.log.sealed_segment_spans().into_iter().find(|span| {
        span.live_count > 0 && span.live_count * COMPACTION_LIVE_DIVISOR <= span.records_count()
    }) else {
        return;
    };
    let moved = match core.log.copy_forward(span.base_offset).await {
        Ok(moved) => moved,
        Err(error) => {
            warn!(segment = span.base_offset, %error, "compaction failed; the segment stays");
            return;
        }
    };
    let moved: HashMap<u64, u64> = moved.into_iter().collect();

    let mut relocated_count = 0;
    for owned in core.queues.borrow_mut().values_mut() {
        relocated_count += owned.queue.relocate(&moved);
    }
    for (_, offset) in core.settled.borrow_mut().iter_mut() {
        if let Some(new_offset) = offset.and_then(|old| moved.get(&old)) {
            *offset = Some(*new_offset);
        }
    }
    {
        let mut references = core.references.borrow_mut();
        for (old_offset, new_offset) in &moved {
            if let Some(count) = references.remove(old_offset) {
                references.insert(*new_offset, count);
            }
        }
    }
    for (_, settlement) in core.settlement_watch.borrow_mut().iter_mut() {
        if let Some(new_offset) = moved.get(settlement) {
            *settlement = *new_offset;
        }
    }
    core.advance_watermarks();
    bump(&core.counters.segments_compacted_count, 1);
    bump(&core.counters.records_copied_count, moved.len() as u64);
    debug!(
        shard = core.index,
        segment = span.base_offset,
        records = span.records_count(),
        copied = moved.len(),
        relocated_count,
        "segment compacted"
    );
}

/// Logs a replay's figures.
pub fn log_replay(shard: usize, report: &ReplayReport) {
    info!(
        shard,
        records = report.records_count,
        messages_restored = report.messages_restored_count,
        records_released = report.records_released_count,
        unreadable = report.unreadable_count,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "journal replayed"
    );
}
