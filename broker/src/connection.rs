//! One client connection on a shard: the handshake, frames in and out, confirms in order, and the
//! delivery tags of its consumers.
//!
//! Three tasks serve a connection. The reader decodes frames and acts on them; before each frame
//! it holds while a bound of [`crate::flow`] is reached (frames queued for the client, requests
//! in progress, and for a `Publish` the unconfirmed bytes or a blocking alarm), and while a
//! publish waits for room towards its owner shard it stops reading too, so backpressure reaches
//! the client's socket. The writer sends whatever the other parts queued in the connection's
//! send buffer, one `write` per wake-up however many frames it holds. The ticker enforces the handshake deadline
//! and heartbeats, with times from the wire crate's state machine.
//!
//! Every frame passes [`ruuster_wire::Connection`] before it is handled or sent, which keeps the
//! legal order of frames and the publish sequence numbers. Confirms leave in sequence order:
//! [`Confirms`] holds each message until all its target shards have answered and every earlier
//! message is confirmed, then merges neighbours with the same outcome into one range.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::{AsyncRead, AsyncWrite};
use ruuster_wire::frame::{
    Blocked, Cancel, CancelNotice, CancelOk, Close, CloseOk, Confirm, Consume, ConsumeOk, Deliver,
    ErrorReply, ExchangeDeclare, ExchangeDeclareOk, ExchangeDelete, ExchangeDeleteOk, Heartbeat,
    Publish, QueueBindOk, QueueDeclare, QueueDeclareOk, QueueDelete, QueueDeleteOk, QueuePurge,
    QueuePurgeOk, QueueUnbindOk, Return, StatsOk, Unblocked,
};
use ruuster_wire::handshake::{PlainCredentials, ServerSettings, negotiate};
use ruuster_wire::{
    Body, ConfirmStatus, Durability, ErrorCode, Frame, FrameDecoder, Inbound, Role, ShortStr,
    Table, Tick, Value,
};
use tracing::{debug, warn};

use crate::control::{ControlOp, ControlReply, ControlRequest};
use crate::envelope::{Envelope, StoredEnvelope, flags};
use crate::metadata::{self, ArgumentValue, Arguments, ConnectionId, ExchangeKind, ShardId};
use crate::routing::{HeaderValue, MessageHeaders, QueueId, RouteTargets};
use crate::runtime::{
    CONSUMERS_PER_CONNECTION_MAX, ConnectionSink, Core, Query, QueryReply, Settle, ShardMessage,
    consumer_id, now_ns,
};
use crate::stages::Stage;
use crate::users::Users;

/// Bytes read from the socket per read call; frames larger than this are read in several.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Settings every connection of the broker shares.
#[derive(Debug)]
pub struct ConnectionSettings {
    pub handshake_timeout: Duration,
    pub server: ServerSettings,
    pub users: Users,
    /// Bytes of unconfirmed publishes above which the reader holds.
    pub unconfirmed_bytes_max: u64,
    /// Deliveries the connection's consumers may hold unacked together (by their prefetch).
    pub unacked_max: u32,
}

/// How often a held reader looks again at what holds it, besides being woken: it also notices a
/// closing connection this way.
const HOLD_RECHECK_INTERVAL: Duration = Duration::from_millis(100);

/// What the connection's consumer holds on one delivery tag.
#[derive(Clone, Copy, Debug)]
struct Held {
    owner: u16,
    queue: QueueId,
    consumer: u32,
    sequence: u64,
}

#[derive(Debug)]
struct Consumer {
    tag: ShortStr,
    queue: QueueId,
    owner: u16,
    /// The prefetch the queue applies (0 asked for the largest).
    prefetch: u32,
}

/// A consumer the client cancelled. Its id stays taken until no frame about it can come any
/// more and none of its deliveries is outstanding, so that a tag or a `CancelOk` is never
/// taken for a later consumer's with the same id.
#[derive(Debug)]
struct Cancelled {
    consumer: Consumer,
    /// Its deliveries not settled yet.
    held_count: usize,
    /// The owner stopped it and `CancelOk` went out.
    answered: bool,
}

/// One message's confirm, waiting for its targets and for the messages before it.
#[derive(Clone, Copy, Debug)]
struct Pending {
    targets_left: u16,
    status: ConfirmStatus,
    /// The message's body size, counted against `unconfirmed_bytes_max` until it is confirmed.
    size_bytes: u32,
}

/// Confirms in publish-sequence order.
#[derive(Debug)]
struct Confirms {
    /// The sequence of `pending[0]`.
    first: u64,
    pending: VecDeque<Pending>,
    /// The sum of `size_bytes` over `pending`.
    pending_bytes: u64,
}

impl Confirms {
    fn new() -> Confirms {
        Confirms {
            first: 1,
            pending: VecDeque::new(),
            pending_bytes: 0,
        }
    }

    fn push(&mut self, sequence: u64, targets: u16, status: ConfirmStatus, size_bytes: u32) {
        assert_eq!(
            sequence,
            self.first + self.pending.len() as u64,
            "sequences are consecutive"
        );
        self.pending.push_back(Pending {
            targets_left: targets,
            status,
            size_bytes,
        });
        self.pending_bytes += u64::from(size_bytes);
    }

    /// Records one target shard's outcome for `sequence`.
    fn answer(&mut self, sequence: u64, outcome: Result<Durability, ErrorCode>) {
        let Some(index) = sequence.checked_sub(self.first) else {
            return;
        };
        let Some(pending) = self.pending.get_mut(index as usize) else {
            return;
        };
        assert!(pending.targets_left > 0, "an answer for a settled message");
        pending.targets_left -= 1;
        pending.status = match (pending.status, outcome) {
            (ConfirmStatus::Rejected(code), _) => ConfirmStatus::Rejected(code),
            (_, Err(code)) => ConfirmStatus::Rejected(code),
            (ConfirmStatus::Stored(level), Ok(reached)) => {
                ConfirmStatus::Stored(level.min(reached))
            }
            (status, Ok(_)) => status,
        };
    }

    /// Takes the confirms that are ready, as ranges of equal status.
    fn ready(&mut self, out: &mut Vec<Confirm>) {
        while let Some(front) = self.pending.front() {
            if front.targets_left > 0 {
                break;
            }
            let status = front.status;
            let first = self.first;
            let mut last = first;
            self.pending_bytes -= u64::from(front.size_bytes);
            self.pending.pop_front();
            self.first += 1;
            while let Some(next) = self.pending.front() {
                if next.targets_left > 0 || next.status != status {
                    break;
                }
                self.pending_bytes -= u64::from(next.size_bytes);
                self.pending.pop_front();
                last = self.first;
                self.first += 1;
            }
            out.push(Confirm {
                first,
                last,
                status,
            });
        }
    }
}

/// The state shared by a connection's tasks and the shard runtime.
struct Shared {
    core: Rc<Core>,
    settings: Rc<ConnectionSettings>,
    serial: Cell<u64>,
    peer: SocketAddr,
    wire: RefCell<ruuster_wire::Connection>,
    outbound: RefCell<BytesMut>,
    /// When the oldest frame in `outbound` was queued, for [`Stage::Send`].
    outbound_since: Cell<Option<Instant>>,
    write_bell: (flume::Sender<()>, flume::Receiver<()>),
    closing: Cell<bool>,
    /// Rung when `closing` is set, for a reader waiting for input.
    close_bell: (flume::Sender<()>, flume::Receiver<()>),
    confirms: RefCell<Confirms>,
    confirm_scratch: RefCell<Vec<Confirm>>,
    next_delivery_tag: Cell<u64>,
    held: RefCell<BTreeMap<u64, Held>>,
    consumers: RefCell<HashMap<u32, Consumer>>,
    /// Consumers the client cancelled. Their owners keep what they hold unacked until it is
    /// settled; when the connection closes, those messages return to their queues.
    cancelled: RefCell<HashMap<u32, Cancelled>>,
    pending_consumes: RefCell<HashMap<u32, (u32, ShortStr)>>,
    /// Where the search for a free consumer id starts: ids go round before one is used again.
    next_consumer: Cell<u32>,
    queries: RefCell<HashMap<u64, flume::Sender<QueryReply>>>,
    next_query: Cell<u64>,
    owns_exclusive_queues: Cell<bool>,
    /// The connection has sent a `Publish`: it is told when publishers are blocked.
    publisher: Cell<bool>,
    /// A `Blocked` was sent and no `Unblocked` since.
    blocked_notice: Cell<bool>,
    /// Rung when something that may hold the reader changed.
    resume_bell: (flume::Sender<()>, flume::Receiver<()>),
    requests_in_flight: Cell<u32>,
}

impl Shared {
    fn connection_id(&self) -> ConnectionId {
        ConnectionId {
            shard: ShardId(self.core.index as u16),
            serial: self.serial.get(),
        }
    }

    /// Queues `frame` for the writer. A frame the state machine refuses is a broker bug for
    /// replies, so it is logged and dropped rather than sent out of order.
    fn send(&self, frame: Frame) {
        if let Err(error) = self.wire.borrow_mut().on_send(&frame, Instant::now()) {
            debug!(%error, opcode = frame.opcode(), "frame not sent in this state");
            return;
        }
        let frame_size_max = self.wire.borrow().frame_size_max();
        let mut outbound = self.outbound.borrow_mut();
        if let Err(error) = frame.encode(&mut outbound, frame_size_max) {
            warn!(%error, "reply does not fit the negotiated frame size; dropped");
            return;
        }
        drop(outbound);
        if self.outbound_since.get().is_none() {
            self.outbound_since.set(Some(Instant::now()));
        }
        let _ = self.write_bell.0.try_send(());
    }

    /// Answers a failed request: `ErrorReply`, or `Close` alone for a code that ends the
    /// connection (PROTOCOL.md section 10: the frame, not the code, says whether it ends).
    fn error_reply(&self, request_id: u32, code: ErrorCode, message: &str) {
        if code.closes_connection() {
            self.close(code, message);
            return;
        }
        let message = short(message);
        self.send(Frame::ErrorReply(ErrorReply {
            request_id,
            code,
            message,
        }));
    }

    /// Marks the connection closing and wakes its reader; returns whether it already was.
    fn set_closing(&self) -> bool {
        let was = self.closing.replace(true);
        let _ = self.close_bell.0.try_send(());
        was
    }

    fn close(&self, code: ErrorCode, reason: &str) {
        if self.set_closing() {
            return;
        }
        self.send(Frame::Close(Close {
            code,
            reason: short(reason),
        }));
        let _ = self.write_bell.0.try_send(());
    }

    /// A consumer id no consumer of this connection has (active, or cancelled and not yet done
    /// with), searched from after the last one given; `None` when every id is taken.
    fn free_consumer_id(&self) -> Option<u32> {
        let consumers = self.consumers.borrow();
        let cancelled = self.cancelled.borrow();
        let id_count = CONSUMERS_PER_CONNECTION_MAX - 1;
        let start = self.next_consumer.get();
        let id = (0..id_count)
            .map(|step| 1 + (start - 1 + step) % id_count)
            .find(|id| !consumers.contains_key(id) && !cancelled.contains_key(id))?;
        self.next_consumer.set(id % id_count + 1);
        Some(id)
    }

    fn flush_confirms(&self) {
        let mut scratch = self.confirm_scratch.borrow_mut();
        self.confirms.borrow_mut().ready(&mut scratch);
        if !scratch.is_empty() {
            self.resume();
        }
        for confirm in scratch.drain(..) {
            self.send(Frame::Confirm(confirm));
        }
    }

    fn resume(&self) {
        let _ = self.resume_bell.0.try_send(());
    }

    /// Sends `Blocked` or `Unblocked` if a publishing connection's notice differs from the
    /// shard's blocking state.
    fn sync_blocked_notice(&self) {
        if !self.publisher.get() {
            return;
        }
        let blocking = self.core.flow.blocking();
        match (blocking, self.blocked_notice.get()) {
            (Some(blocking), false) => {
                self.blocked_notice.set(true);
                self.send(Frame::Blocked(Blocked {
                    code: blocking.code,
                    reason: short(&blocking.reason),
                }));
            }
            (None, true) => {
                self.blocked_notice.set(false);
                self.send(Frame::Unblocked(Unblocked));
            }
            _ => {}
        }
    }

    async fn query(&self, owner: usize, queue: QueueId, query: Query) -> Option<QueryReply> {
        let token = self.next_query.get();
        self.next_query.set(token + 1);
        let (sender, receiver) = flume::bounded(1);
        self.queries.borrow_mut().insert(token, sender);
        let message = ShardMessage::Query {
            queue,
            connection: self.serial.get(),
            token,
            query,
        };
        self.core.send_control_now(owner, message);
        receiver.recv_async().await.ok()
    }

    async fn control(&self, op: ControlOp) -> ControlReply {
        let (reply, answer) = flume::bounded(1);
        if self
            .core
            .control
            .send_async(ControlRequest { op, reply })
            .await
            .is_err()
        {
            return ControlReply::Failed("the control plane stopped".into());
        }
        answer
            .recv_async()
            .await
            .unwrap_or(ControlReply::Failed("no control reply".into()))
    }
}

impl ConnectionSink for Shared {
    fn stored(&self, sequence: u64, outcome: Result<Durability, ErrorCode>) {
        self.confirms.borrow_mut().answer(sequence, outcome);
        self.flush_confirms();
    }

    fn deliver(&self, delivery: crate::runtime::Deliver) {
        let envelope = match StoredEnvelope::validate(delivery.envelope) {
            Ok(envelope) => envelope,
            Err(error) => {
                warn!(%error, "delivery with an invalid envelope dropped");
                return;
            }
        };
        let tag = self.next_delivery_tag.get();
        self.next_delivery_tag.set(tag + 1);
        let held = Held {
            owner: delivery.owner,
            queue: delivery.queue,
            consumer: delivery.consumer,
            sequence: delivery.sequence,
        };
        self.held.borrow_mut().insert(tag, held);
        if let Some(cancelled) = self.cancelled.borrow_mut().get_mut(&delivery.consumer)
            && cancelled.consumer.queue == delivery.queue
        {
            cancelled.held_count += 1;
        }
        let archived = envelope.archived();
        let bytes = envelope.bytes();
        let frame = Deliver {
            consumer_id: delivery.consumer,
            delivery_tag: tag,
            delivery_count: delivery.delivery_count,
            redelivered: delivery.redelivered,
            exchange: shared_short(bytes, archived.exchange()),
            routing_key: shared_short(bytes, archived.routing_key()),
            body: envelope.body(),
        };
        self.send(Frame::Deliver(frame));
    }

    fn consume_result(&self, request_id: u32, consumer: u32, refused: Option<ErrorCode>) {
        let pending = self.pending_consumes.borrow_mut().remove(&consumer);
        let Some((_, tag)) = pending else {
            return;
        };
        match refused {
            None => self.send(Frame::ConsumeOk(ConsumeOk {
                request_id,
                consumer_id: consumer,
                consumer_tag: tag,
            })),
            Some(code) => {
                self.consumers.borrow_mut().remove(&consumer);
                self.error_reply(request_id, code, "consumer refused by the queue");
            }
        }
    }

    fn cancelled(&self, request_id: u32, consumer: u32) {
        self.send(Frame::CancelOk(CancelOk {
            request_id,
            consumer_id: consumer,
        }));
        let mut cancelled = self.cancelled.borrow_mut();
        if let Some(entry) = cancelled.get_mut(&consumer) {
            entry.answered = true;
            if entry.held_count == 0 {
                cancelled.remove(&consumer);
            }
        }
    }

    fn cancel_notice(&self, consumer: u32, code: ErrorCode) {
        if self.consumers.borrow_mut().remove(&consumer).is_some() {
            let reason = short("queue deleted");
            self.send(Frame::CancelNotice(CancelNotice {
                consumer_id: consumer,
                code,
                reason,
            }));
        }
    }

    fn reply(&self, token: u64, reply: QueryReply) {
        if let Some(sender) = self.queries.borrow_mut().remove(&token) {
            let _ = sender.send(reply);
        }
    }

    fn flow_changed(&self) {
        if self.wire.borrow().state() == ruuster_wire::State::Open {
            self.sync_blocked_notice();
        }
        self.resume();
    }
}

/// Serves one accepted connection until it closes.
pub async fn serve<S>(core: Rc<Core>, stream: S, peer: SocketAddr, settings: Rc<ConnectionSettings>)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let now = Instant::now();
    let shared = Rc::new(Shared {
        core: core.clone(),
        settings: settings.clone(),
        serial: Cell::new(0),
        peer,
        wire: RefCell::new(ruuster_wire::Connection::new(
            Role::Server,
            now,
            settings.handshake_timeout,
        )),
        outbound: RefCell::new(BytesMut::with_capacity(READ_CHUNK_BYTES)),
        outbound_since: Cell::new(None),
        write_bell: flume::bounded(1),
        closing: Cell::new(false),
        close_bell: flume::bounded(1),
        confirms: RefCell::new(Confirms::new()),
        confirm_scratch: RefCell::new(Vec::new()),
        next_delivery_tag: Cell::new(1),
        held: RefCell::new(BTreeMap::new()),
        consumers: RefCell::new(HashMap::new()),
        cancelled: RefCell::new(HashMap::new()),
        pending_consumes: RefCell::new(HashMap::new()),
        next_consumer: Cell::new(1),
        queries: RefCell::new(HashMap::new()),
        next_query: Cell::new(1),
        owns_exclusive_queues: Cell::new(false),
        publisher: Cell::new(false),
        blocked_notice: Cell::new(false),
        resume_bell: flume::bounded(1),
        requests_in_flight: Cell::new(0),
    });
    let serial = core.add_connection(shared.clone());
    shared.serial.set(serial);
    let span = tracing::debug_span!("connection", serial, %peer);
    let _entered = span.enter();
    debug!("connection opened");

    let (reader, writer) = futures_lite::io::split(stream);
    let writer_task = glommio::spawn_local(write_loop(shared.clone(), writer));
    let ticker_task = glommio::spawn_local(tick_loop(shared.clone()));
    read_loop(&shared, reader).await;

    // Whatever ended the reader, the connection is over: return what its consumers held.
    shared.set_closing();
    release(&shared).await;
    let _ = shared.write_bell.0.try_send(());
    writer_task.await;
    drop(ticker_task);
    core.remove_connection(serial);
    debug!("connection closed");
}

async fn write_loop<W: AsyncWrite + Unpin>(shared: Rc<Shared>, mut writer: W) {
    let mut spare = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        let pending = {
            let mut outbound = shared.outbound.borrow_mut();
            std::mem::swap(&mut *outbound, &mut spare);
            !spare.is_empty()
        };
        let queued_at = shared.outbound_since.take();
        if pending {
            if writer.write_all(&spare).await.is_err() {
                shared.set_closing();
                shared.resume();
                return;
            }
            spare.clear();
            if let Some(queued_at) = queued_at {
                shared
                    .core
                    .stages
                    .record_duration(Stage::Send, queued_at.elapsed());
            }
            shared.resume();
            continue;
        }
        if shared.closing.get() {
            let _ = writer.flush().await;
            let _ = writer.close().await;
            return;
        }
        let _ = shared.write_bell.1.recv_async().await;
    }
}

async fn tick_loop(shared: Rc<Shared>) {
    loop {
        let Some(deadline) = shared.wire.borrow().next_deadline() else {
            return;
        };
        let now = Instant::now();
        if deadline > now {
            glommio::timer::sleep(deadline - now).await;
        }
        let tick = shared.wire.borrow_mut().on_tick(Instant::now());
        match tick {
            Tick::Idle => {}
            Tick::SendHeartbeat => shared.send(Frame::Heartbeat(Heartbeat)),
            Tick::Expired(error) => {
                debug!(%error, "connection expired");
                shared.close(error.code(), &error.to_string());
                shared.set_closing();
                let _ = shared.write_bell.0.try_send(());
                return;
            }
            Tick::CloseSocket => {
                shared.set_closing();
                let _ = shared.write_bell.0.try_send(());
                return;
            }
        }
    }
}

/// Published messages a reader hands on before it lets the shard's other tasks run, so that the
/// journal starts writing the first of a large read while the rest is still being decoded.
const MESSAGES_PER_YIELD: usize = 64;

async fn read_loop<R: AsyncRead + Unpin>(shared: &Rc<Shared>, mut reader: R) {
    let mut buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut decoder = FrameDecoder::new(shared.wire.borrow().frame_size_max());
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut messages_since_yield = 0usize;
    loop {
        loop {
            decoder.set_frame_size_max(shared.wire.borrow().frame_size_max());
            match decoder.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    let published = match &frame {
                        Frame::Publish(publish) => publish.messages.len(),
                        _ => 0,
                    };
                    hold(shared, published > 0).await;
                    if !handle(shared, frame).await {
                        return;
                    }
                    messages_since_yield += published;
                    if messages_since_yield >= MESSAGES_PER_YIELD {
                        messages_since_yield = 0;
                        futures_lite::future::yield_now().await;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    // Framing is lost: nothing after this point can be trusted to be a frame.
                    debug!(%error, "malformed input");
                    shared.close(error.code(), &error.to_string());
                    return;
                }
            }
        }
        if shared.closing.get() && shared.wire.borrow().state() == ruuster_wire::State::Closed {
            return;
        }
        // The ticker may close the connection (a timeout) while the reader waits: stop waiting
        // then. A bell rather than a timer: a timer armed and cancelled around every read costs
        // two io_uring operations per read.
        let read = futures_lite::future::or(async { reader.read(&mut chunk).await.ok() }, async {
            if !shared.closing.get() {
                let _ = shared.close_bell.1.recv_async().await;
            }
            None
        })
        .await;
        match read {
            Some(0) | None => return,
            Some(count) => buffer.extend_from_slice(&chunk[..count]),
        }
    }
}

/// What holds a reader before its next frame, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// The client does not read what it asked for: its frames wait in the send buffer.
    ClientNotReading,
    /// The broker is slow: requests in progress, unconfirmed bytes, or a blocking alarm.
    Broker,
}

fn hold_reason(shared: &Shared, publish: bool) -> Option<Hold> {
    if shared.outbound.borrow().len() >= crate::flow::OUTBOUND_HOLD_BYTES {
        return Some(Hold::ClientNotReading);
    }
    if shared.requests_in_flight.get() >= crate::flow::REQUESTS_IN_FLIGHT_MAX {
        return Some(Hold::Broker);
    }
    if publish
        && (shared.core.flow.blocking().is_some()
            || shared.confirms.borrow().pending_bytes >= shared.settings.unconfirmed_bytes_max)
    {
        return Some(Hold::Broker);
    }
    None
}

/// Waits until the reader may handle its next frame (`publish`: a `Publish`). A closing
/// connection is not held: its state machine discards what arrives until `CloseOk`. While the
/// broker holds the reader, the client's silence is not counted: its heartbeats wait unread in
/// the socket. While the client is what holds it (it does not read), its silence counts as
/// usual.
async fn hold(shared: &Rc<Shared>, publish: bool) {
    if publish && !shared.publisher.replace(true) {
        shared.sync_blocked_notice();
    }
    let mut held = false;
    loop {
        if shared.closing.get() {
            return;
        }
        if publish {
            shared.sync_blocked_notice();
        }
        let Some(reason) = hold_reason(shared, publish) else {
            return;
        };
        if !held {
            held = true;
            shared.core.flow.count_hold();
            tracing::trace!(?reason, "reader holds");
        }
        let bell = shared.resume_bell.1.recv_async();
        futures_lite::future::or(
            async {
                let _ = bell.await;
            },
            glommio::timer::sleep(HOLD_RECHECK_INTERVAL),
        )
        .await;
        if reason == Hold::Broker {
            shared.wire.borrow_mut().defer_silence(Instant::now());
        }
    }
}

/// Handles one frame. Returns false when the connection must stop reading.
async fn handle(shared: &Rc<Shared>, frame: Frame) -> bool {
    let first_sequence = shared.wire.borrow().next_sequence();
    let inbound = shared.wire.borrow_mut().on_receive(&frame, Instant::now());
    match inbound {
        Ok(Inbound::Handle) => {}
        Ok(Inbound::Ignore) => return true,
        Err(error) => {
            debug!(%error, "protocol violation");
            shared.close(error.code(), &error.to_string());
            return false;
        }
    }

    match frame {
        Frame::Hello(hello) => {
            let welcome = match authenticate(shared, &hello) {
                Ok(()) => negotiate(&hello, &shared.settings.server),
                Err(code) => Err(code),
            };
            match welcome {
                Ok(welcome) => shared.send(Frame::Welcome(welcome)),
                Err(code) => {
                    shared.close(code, code.name().unwrap_or("handshake refused"));
                    return false;
                }
            }
        }
        Frame::Heartbeat(_) => {}
        Frame::Close(_) => {
            shared.send(Frame::CloseOk(CloseOk));
            shared.set_closing();
            return false;
        }
        Frame::CloseOk(_) => return false,
        Frame::Publish(publish) => publish_frame(shared, first_sequence, publish).await,
        Frame::Ack(ack) => settle(shared, ack.delivery_tag, ack.multiple, Settle::Ack),
        Frame::Nack(nack) => {
            let action = if nack.requeue {
                Settle::Requeue
            } else {
                Settle::Discard
            };
            settle(shared, nack.delivery_tag, nack.multiple, action)
        }
        Frame::Reject(reject) => {
            let action = if reject.requeue {
                Settle::Requeue
            } else {
                Settle::Discard
            };
            settle(shared, reject.delivery_tag, false, action)
        }
        Frame::Consume(consume) => consume_frame(shared, consume),
        Frame::Cancel(cancel) => cancel_frame(shared, cancel),
        other => {
            // Topology and stats requests go to their own task so that a client may pipeline
            // them; their replies carry the request id.
            let shared = shared.clone();
            shared
                .requests_in_flight
                .set(shared.requests_in_flight.get() + 1);
            glommio::spawn_local(async move {
                request(&shared, other).await;
                shared
                    .requests_in_flight
                    .set(shared.requests_in_flight.get() - 1);
                shared.resume();
            })
            .detach();
        }
    }
    true
}

fn authenticate(shared: &Shared, hello: &ruuster_wire::frame::Hello) -> Result<(), ErrorCode> {
    if hello.mechanism.as_str() != "PLAIN" {
        return Err(ErrorCode::UNSUPPORTED_MECHANISM);
    }
    let credentials =
        PlainCredentials::parse(&hello.credentials).ok_or(ErrorCode::BAD_CREDENTIALS)?;
    shared.settings.users.check(
        &credentials.username,
        &credentials.password,
        shared.peer.ip(),
    )
}

async fn publish_frame(shared: &Rc<Shared>, first_sequence: u64, publish: Publish) {
    let core = shared.core.clone();
    let snapshot = core.snapshot();
    let connection = shared.serial.get();
    let mut targets = RouteTargets::new();
    let mut queue_ids: Vec<u32> = Vec::new();
    let published_at_ns = now_ns();

    for (index, message) in publish.messages.into_iter().enumerate() {
        let sequence = first_sequence + index as u64;
        let body = match Body::parse(message.body.clone()) {
            Ok(body) => body,
            Err(_) => {
                reject(shared, sequence, ErrorCode::INVALID_BODY);
                continue;
            }
        };
        let headers = BodyHeaders::of(&body);
        let routed = snapshot.routing.route(
            publish.exchange.as_str(),
            message.routing_key.as_str(),
            &headers,
            &mut targets,
        );
        if routed.is_err() {
            reject(shared, sequence, ErrorCode::EXCHANGE_NOT_FOUND);
            continue;
        }
        if targets.is_empty() {
            core.count_unroutable();
            if publish.mandatory {
                let returned = Return {
                    sequence,
                    code: ErrorCode::UNROUTABLE,
                    exchange: publish.exchange.clone(),
                    routing_key: message.routing_key.clone(),
                    body: message.body.clone(),
                };
                shared.send(Frame::Return(returned));
            }
            shared
                .confirms
                .borrow_mut()
                .push(sequence, 0, ConfirmStatus::Unroutable, 0);
            shared.flush_confirms();
            continue;
        }

        let shard_groups: Vec<(usize, Vec<u32>)> = targets
            .by_shard()
            .map(|(shard, queues)| {
                queue_ids.clear();
                queue_ids.extend(queues.iter().map(|queue| queue.0));
                queue_ids.sort_unstable();
                (usize::from(shard.0), queue_ids.clone())
            })
            .collect();
        let persistent = shard_groups.iter().flat_map(|(_, ids)| ids).any(|id| {
            snapshot
                .queues
                .values()
                .any(|queue| queue.id.0 == *id && queue.durable)
        });
        let mut envelope_flags = if persistent { flags::PERSISTENT } else { 0 };
        if publish.mandatory {
            envelope_flags |= flags::MANDATORY;
        }
        shared.confirms.borrow_mut().push(
            sequence,
            shard_groups.len() as u16,
            ConfirmStatus::Stored(Durability::Fsynced),
            message.body.len() as u32,
        );
        for (shard, ids) in shard_groups {
            let envelope = Envelope {
                queues: &ids,
                exchange: publish.exchange.as_str(),
                routing_key: message.routing_key.as_str(),
                published_at_ns,
                flags: envelope_flags,
                body: &message.body,
            }
            .encode();
            core.publish(shard, connection, sequence, publish.durability, envelope)
                .await;
        }
    }
}

fn reject(shared: &Shared, sequence: u64, code: ErrorCode) {
    shared
        .confirms
        .borrow_mut()
        .push(sequence, 0, ConfirmStatus::Rejected(code), 0);
    shared.flush_confirms();
}

fn settle(shared: &Rc<Shared>, tag: u64, multiple: bool, action: Settle) {
    let mut held = shared.held.borrow_mut();
    let settled: Vec<Held> = if multiple {
        let keys: Vec<u64> = if tag == 0 {
            held.keys().copied().collect()
        } else {
            held.range(..=tag).map(|(key, _)| *key).collect()
        };
        keys.iter().filter_map(|key| held.remove(key)).collect()
    } else {
        held.remove(&tag).into_iter().collect()
    };
    drop(held);
    forget_settled(shared, &settled);
    if settled.is_empty() && !(multiple && tag == 0) {
        shared.error_reply(
            0,
            ErrorCode::UNKNOWN_DELIVERY_TAG,
            "no delivery has this tag",
        );
        return;
    }

    let mut groups: BTreeMap<(u16, QueueId, u32), Vec<u64>> = BTreeMap::new();
    for held in settled {
        groups
            .entry((held.owner, held.queue, held.consumer))
            .or_default()
            .push(held.sequence);
    }
    let shard = shared.core.index as u16;
    for ((owner, queue, consumer), sequences) in groups {
        let consumer = consumer_id(shard, shared.serial.get(), consumer);
        let message = ShardMessage::Settle {
            queue,
            consumer,
            sequences,
            action,
        };
        shared.core.send_control_now(usize::from(owner), message);
    }
}

/// Counts settled deliveries off the cancelled consumers that held them, and lets go of a
/// cancelled consumer that holds nothing more once its `CancelOk` went out.
fn forget_settled(shared: &Shared, settled: &[Held]) {
    let mut cancelled = shared.cancelled.borrow_mut();
    if cancelled.is_empty() {
        return;
    }
    for held in settled {
        let Some(entry) = cancelled.get_mut(&held.consumer) else {
            continue;
        };
        // An id freed by a queue's deletion may be in use again by a consumer of another
        // queue; the old consumer's tags are not the new one's.
        if entry.consumer.queue != held.queue {
            continue;
        }
        entry.held_count = entry.held_count.saturating_sub(1);
        if entry.answered && entry.held_count == 0 {
            cancelled.remove(&held.consumer);
        }
    }
}

fn consume_frame(shared: &Rc<Shared>, consume: Consume) {
    let snapshot = shared.core.snapshot();
    let Some(queue) = snapshot.queues.get(consume.queue.as_str()) else {
        shared.error_reply(
            consume.request_id,
            ErrorCode::QUEUE_NOT_FOUND,
            "no such queue",
        );
        return;
    };
    if queue
        .exclusive_to
        .is_some_and(|owner| owner != shared.connection_id())
    {
        shared.error_reply(
            consume.request_id,
            ErrorCode::EXCLUSIVE_LOCKED,
            "exclusive queue",
        );
        return;
    }
    if consume.prefetch > shared.settings.server.prefetch_max {
        shared.error_reply(
            consume.request_id,
            ErrorCode::PREFETCH_TOO_LARGE,
            "prefetch too large",
        );
        return;
    }
    let consumers = shared.consumers.borrow();
    let tag_in_use = |tag: &ShortStr| consumers.values().any(|consumer| consumer.tag == *tag);
    if !consume.consumer_tag.is_empty() && tag_in_use(&consume.consumer_tag) {
        drop(consumers);
        shared.error_reply(
            consume.request_id,
            ErrorCode::CONSUMER_TAG_IN_USE,
            "tag in use",
        );
        return;
    }
    let prefetch = if consume.prefetch == 0 {
        crate::queue::PREFETCH_COUNT_MAX
    } else {
        consume.prefetch
    };
    let unacked_max = u64::from(shared.settings.unacked_max);
    if unacked_bound(shared, &consumers) + u64::from(prefetch) > unacked_max {
        drop(consumers);
        shared.error_reply(
            consume.request_id,
            ErrorCode::LIMIT_EXCEEDED,
            &format!("the connection's consumers would hold more than {unacked_max} unacked"),
        );
        return;
    }
    drop(consumers);
    let Some(id) = shared.free_consumer_id() else {
        shared.error_reply(
            consume.request_id,
            ErrorCode::LIMIT_EXCEEDED,
            "too many consumers",
        );
        return;
    };
    let mut consumers = shared.consumers.borrow_mut();
    let tag_in_use = |tag: &ShortStr| consumers.values().any(|consumer| consumer.tag == *tag);
    // An empty tag asks the broker for one (PROTOCOL.md, `Consume`). A client may have picked
    // the same form itself, so a taken one is skipped (at most one step per consumer).
    let tag = if consume.consumer_tag.is_empty() {
        (0..)
            .map(|attempt| match attempt {
                0 => short(&format!("amq.ctag-{id}")),
                _ => short(&format!("amq.ctag-{id}-{attempt}")),
            })
            .find(|tag| !tag_in_use(tag))
            .expect("fewer consumers than attempts")
    } else {
        consume.consumer_tag
    };
    let owner = queue.owner.0;
    consumers.insert(
        id,
        Consumer {
            tag: tag.clone(),
            queue: queue.id,
            owner,
            prefetch,
        },
    );
    drop(consumers);
    shared
        .pending_consumes
        .borrow_mut()
        .insert(id, (consume.request_id, tag));

    if queue.auto_delete && !queue.had_consumer {
        let (reply, _) = flume::bounded(1);
        let op = ControlOp::ConsumerAttached {
            queue: queue.name.clone(),
        };
        let _ = shared.core.control.send(ControlRequest { op, reply });
    }
    let consumer = consumer_id(shared.core.index as u16, shared.serial.get(), id);
    let message = ShardMessage::Consume {
        queue: queue.id,
        consumer,
        request_id: consume.request_id,
        prefetch: consume.prefetch,
        exclusive: consume.exclusive,
    };
    shared.core.send_control_now(usize::from(owner), message);
}

/// The most deliveries the connection can come to hold unacked with its current consumers: each
/// active consumer's prefetch, plus what cancelled consumers still hold.
fn unacked_bound(shared: &Shared, consumers: &HashMap<u32, Consumer>) -> u64 {
    let active: u64 = consumers
        .values()
        .map(|consumer| u64::from(consumer.prefetch))
        .sum();
    let orphaned = shared
        .held
        .borrow()
        .values()
        .filter(|held| !consumers.contains_key(&held.consumer))
        .count() as u64;
    active + orphaned
}

fn cancel_frame(shared: &Rc<Shared>, cancel: Cancel) {
    let Some(consumer) = shared.consumers.borrow_mut().remove(&cancel.consumer_id) else {
        shared.error_reply(
            cancel.request_id,
            ErrorCode::UNKNOWN_CONSUMER,
            "no such consumer",
        );
        return;
    };
    // The owner stops the consumer and answers behind the deliveries it already dispatched to
    // it, so the `CancelOk` sent on that answer is the last frame about the consumer. What the
    // consumer holds stays outstanding: its tags can still be acked, nacked or rejected here.
    let id = consumer_id(
        shared.core.index as u16,
        shared.serial.get(),
        cancel.consumer_id,
    );
    let message = ShardMessage::Cancel {
        queue: consumer.queue,
        consumer: id,
        request_id: cancel.request_id,
    };
    let owner = usize::from(consumer.owner);
    let held_count = shared
        .held
        .borrow()
        .values()
        .filter(|held| held.consumer == cancel.consumer_id && held.queue == consumer.queue)
        .count();
    let cancelled = Cancelled {
        consumer,
        held_count,
        answered: false,
    };
    shared
        .cancelled
        .borrow_mut()
        .insert(cancel.consumer_id, cancelled);
    shared.core.send_control_now(owner, message);
}

/// Returns every consumer's unacked deliveries, cancelled consumers' included, and drops
/// exclusive queues.
async fn release(shared: &Rc<Shared>) {
    let mut consumers: Vec<(u32, Consumer)> = shared.consumers.borrow_mut().drain().collect();
    let cancelled = shared.cancelled.borrow_mut().drain().collect::<Vec<_>>();
    consumers.extend(
        cancelled
            .into_iter()
            .map(|(id, entry)| (id, entry.consumer)),
    );
    let shard = shared.core.index as u16;
    for (id, consumer) in consumers {
        let consumer_id = consumer_id(shard, shared.serial.get(), id);
        let message = ShardMessage::Release {
            queue: consumer.queue,
            consumer: consumer_id,
        };
        shared
            .core
            .send_control_now(usize::from(consumer.owner), message);
    }
    if shared.owns_exclusive_queues.get() {
        let _ = shared
            .control(ControlOp::ConnectionClosed(shared.connection_id()))
            .await;
    }
}

async fn request(shared: &Rc<Shared>, frame: Frame) {
    let request_id = frame.request_id().unwrap_or(0);
    let reply = match frame {
        Frame::ExchangeDeclare(declare) => exchange_declare(shared, declare).await,
        Frame::ExchangeDelete(delete) => exchange_delete(shared, delete).await,
        Frame::QueueDeclare(declare) => queue_declare(shared, declare).await,
        Frame::QueueDelete(delete) => queue_delete(shared, delete).await,
        Frame::QueuePurge(purge) => queue_purge(shared, purge).await,
        Frame::QueueBind(bind) => {
            let binding = binding_of(
                &bind.queue,
                &bind.exchange,
                &bind.routing_key,
                &bind.arguments,
            );
            let op = ControlOp::Bind {
                binding,
                connection: shared.connection_id(),
            };
            control_reply(shared.control(op).await)
                .map(|_| Frame::QueueBindOk(QueueBindOk { request_id }))
        }
        Frame::QueueUnbind(unbind) => {
            let binding = binding_of(
                &unbind.queue,
                &unbind.exchange,
                &unbind.routing_key,
                &unbind.arguments,
            );
            let op = ControlOp::Unbind {
                binding,
                connection: shared.connection_id(),
            };
            control_reply(shared.control(op).await)
                .map(|_| Frame::QueueUnbindOk(QueueUnbindOk { request_id }))
        }
        Frame::Stats(_) => stats(shared, request_id).await,
        other => {
            // The state machine passed it, so it is a frame the server may receive that this
            // broker does not act on.
            let name = ruuster_wire::frame::name_of(other.opcode()).unwrap_or("frame");
            Err((ErrorCode::NOT_IMPLEMENTED, format!("{name} is not handled")))
        }
    };
    match reply {
        Ok(frame) => shared.send(frame),
        Err((code, message)) => shared.error_reply(request_id, code, &message),
    }
}

type Reply = Result<Frame, (ErrorCode, String)>;

/// A control reply that succeeded: the version, the declared queue, the deleted queues.
type Applied = (u64, Option<metadata::Queue>, Vec<metadata::Queue>);

fn control_reply(reply: ControlReply) -> Result<Applied, (ErrorCode, String)> {
    match reply {
        ControlReply::Done {
            version,
            queue,
            deleted,
        } => Ok((version, queue, deleted)),
        ControlReply::Refused(refusal) => Err((topology_code(&refusal), refusal.to_string())),
        ControlReply::Failed(message) => Err((ErrorCode::INTERNAL_ERROR, message)),
    }
}

fn topology_code(error: &metadata::TopologyError) -> ErrorCode {
    use metadata::TopologyError as E;
    match error {
        E::ExchangeNotFound { .. } => ErrorCode::EXCHANGE_NOT_FOUND,
        E::QueueNotFound { .. } => ErrorCode::QUEUE_NOT_FOUND,
        E::NotEquivalent { .. } => ErrorCode::PRECONDITION_FAILED,
        E::Reserved { .. } => ErrorCode::ACCESS_REFUSED,
        E::InvalidName { .. } => ErrorCode::INVALID_NAME,
        E::ExclusiveLocked { .. } => ErrorCode::EXCLUSIVE_LOCKED,
        E::LimitReached { .. } => ErrorCode::LIMIT_EXCEEDED,
        E::InvalidArgument { .. } => ErrorCode::INVALID_ARGUMENT,
    }
}

async fn exchange_declare(shared: &Rc<Shared>, declare: ExchangeDeclare) -> Reply {
    let request_id = declare.request_id;
    let kind = match declare.kind {
        ruuster_wire::ExchangeKind::Direct => ExchangeKind::Direct,
        ruuster_wire::ExchangeKind::Fanout => ExchangeKind::Fanout,
        ruuster_wire::ExchangeKind::Topic => ExchangeKind::Topic,
        ruuster_wire::ExchangeKind::Headers => ExchangeKind::Headers,
    };
    let op = ControlOp::DeclareExchange(metadata::ExchangeDeclare {
        name: declare.exchange.as_str().to_string(),
        kind,
        durable: declare.durable,
        auto_delete: declare.auto_delete,
        internal: false,
        passive: declare.passive,
        arguments: arguments_of(&declare.arguments),
    });
    control_reply(shared.control(op).await)?;
    Ok(Frame::ExchangeDeclareOk(ExchangeDeclareOk { request_id }))
}

async fn exchange_delete(shared: &Rc<Shared>, delete: ExchangeDelete) -> Reply {
    let op = ControlOp::DeleteExchange {
        name: delete.exchange.as_str().to_string(),
        if_unused: delete.if_unused,
    };
    control_reply(shared.control(op).await)?;
    Ok(Frame::ExchangeDeleteOk(ExchangeDeleteOk {
        request_id: delete.request_id,
    }))
}

async fn queue_declare(shared: &Rc<Shared>, declare: QueueDeclare) -> Reply {
    let op = ControlOp::DeclareQueue(metadata::QueueDeclare {
        name: declare.queue.as_str().to_string(),
        durable: declare.durable,
        exclusive: declare.exclusive,
        auto_delete: declare.auto_delete,
        passive: declare.passive,
        arguments: arguments_of(&declare.arguments),
        connection: shared.connection_id(),
    });
    let (_, queue, _) = control_reply(shared.control(op).await)?;
    let queue = queue.ok_or((
        ErrorCode::INTERNAL_ERROR,
        "declare without a queue".to_string(),
    ))?;
    if declare.exclusive {
        shared.owns_exclusive_queues.set(true);
    }
    let owner = usize::from(queue.owner.0);
    let (message_count, consumer_count) = match shared.query(owner, queue.id, Query::Counts).await {
        Some(QueryReply::Counts {
            message_count,
            consumer_count,
        }) => (message_count, consumer_count),
        _ => (0, 0),
    };
    Ok(Frame::QueueDeclareOk(QueueDeclareOk {
        request_id: declare.request_id,
        queue: short(&queue.name),
        message_count,
        consumer_count,
        owner_shard: queue.owner.0,
    }))
}

async fn queue_delete(shared: &Rc<Shared>, delete: QueueDelete) -> Reply {
    let snapshot = shared.core.snapshot();
    let Some(queue) = snapshot.queues.get(delete.queue.as_str()) else {
        return Err((
            ErrorCode::QUEUE_NOT_FOUND,
            format!("no queue {:?}", delete.queue.as_str()),
        ));
    };
    // Before the conditions: another connection learns nothing about an exclusive queue.
    if queue
        .exclusive_to
        .is_some_and(|owner| owner != shared.connection_id())
    {
        return Err((ErrorCode::EXCLUSIVE_LOCKED, "exclusive queue".into()));
    }
    let owner = usize::from(queue.owner.0);
    let counts = shared.query(owner, queue.id, Query::Counts).await;
    let (message_count, consumer_count) = match counts {
        Some(QueryReply::Counts {
            message_count,
            consumer_count,
        }) => (message_count, consumer_count),
        _ => (0, 0),
    };
    if delete.if_unused && consumer_count > 0 {
        return Err((
            ErrorCode::PRECONDITION_FAILED,
            "the queue has consumers".into(),
        ));
    }
    if delete.if_empty && message_count > 0 {
        return Err((
            ErrorCode::PRECONDITION_FAILED,
            "the queue is not empty".into(),
        ));
    }
    let op = ControlOp::DeleteQueue {
        name: delete.queue.as_str().to_string(),
        connection: shared.connection_id(),
    };
    control_reply(shared.control(op).await)?;
    Ok(Frame::QueueDeleteOk(QueueDeleteOk {
        request_id: delete.request_id,
        message_count,
    }))
}

async fn queue_purge(shared: &Rc<Shared>, purge: QueuePurge) -> Reply {
    let snapshot = shared.core.snapshot();
    let Some(queue) = snapshot.queues.get(purge.queue.as_str()) else {
        return Err((
            ErrorCode::QUEUE_NOT_FOUND,
            format!("no queue {:?}", purge.queue.as_str()),
        ));
    };
    if queue
        .exclusive_to
        .is_some_and(|owner| owner != shared.connection_id())
    {
        return Err((ErrorCode::EXCLUSIVE_LOCKED, "exclusive queue".into()));
    }
    match shared
        .query(usize::from(queue.owner.0), queue.id, Query::Purge)
        .await
    {
        Some(QueryReply::Purged { message_count }) => Ok(Frame::QueuePurgeOk(QueuePurgeOk {
            request_id: purge.request_id,
            message_count,
        })),
        _ => Err((ErrorCode::QUEUE_NOT_FOUND, "the queue is gone".into())),
    }
}

async fn stats(shared: &Rc<Shared>, request_id: u32) -> Reply {
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for shard in 0..shared.core.shard_count {
        if let Some(QueryReply::Stats(counters, per_shard)) =
            shared.query(shard, QueryId::NONE, Query::Stats).await
        {
            for (name, value) in counters {
                *totals.entry(name.to_owned()).or_default() += value;
            }
            totals.extend(per_shard);
        }
    }
    totals.insert("shards_count".to_owned(), shared.core.shard_count as u64);
    let counters = totals
        .into_iter()
        .map(|(name, value)| (short(&name), value))
        .collect();
    Ok(Frame::StatsOk(StatsOk {
        request_id,
        counters,
    }))
}

/// The queue id a stats query carries; the owner answers for the whole shard.
struct QueryId;

impl QueryId {
    const NONE: QueueId = QueueId(0);
}

fn binding_of(
    queue: &ShortStr,
    exchange: &ShortStr,
    key: &ShortStr,
    arguments: &Table,
) -> metadata::Binding {
    metadata::Binding {
        exchange: exchange.as_str().to_string(),
        queue: queue.as_str().to_string(),
        key: key.as_str().to_string(),
        arguments: arguments_of(arguments),
    }
}

fn arguments_of(table: &Table) -> Arguments {
    table
        .iter()
        .map(|(key, value)| {
            let value = match value {
                Value::Str(text) => ArgumentValue::Str(text.as_str().to_string()),
                Value::Bytes(bytes) => ArgumentValue::Bytes(bytes.to_vec()),
                Value::Int(number) => ArgumentValue::Int(*number),
                Value::Bool(flag) => ArgumentValue::Bool(*flag),
                Value::Float(number) => ArgumentValue::Float(*number),
            };
            (key.as_str().to_string(), value)
        })
        .collect()
}

/// A message's headers as the routing table asks for them. Collected once per message, and only
/// for messages that have headers.
struct BodyHeaders {
    entries: Vec<(ShortStr, Value)>,
}

impl BodyHeaders {
    fn of(body: &Body) -> BodyHeaders {
        let entries = if body.has_headers() {
            body.headers().collect()
        } else {
            Vec::new()
        };
        BodyHeaders { entries }
    }
}

impl MessageHeaders for BodyHeaders {
    fn get(&self, key: &str) -> Option<HeaderValue<'_>> {
        let (_, value) = self.entries.iter().find(|(name, _)| name.as_str() == key)?;
        Some(match value {
            Value::Str(text) => HeaderValue::Str(text.as_str()),
            Value::Bytes(bytes) => HeaderValue::Bytes(bytes),
            Value::Int(number) => HeaderValue::Int(*number),
            Value::Bool(flag) => HeaderValue::Bool(*flag),
            Value::Float(number) => HeaderValue::Float(*number),
        })
    }
}

/// A short string for a reply, cut at 255 bytes on a character boundary.
fn short(text: &str) -> ShortStr {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortStr::from_utf8(Bytes::copy_from_slice(&text.as_bytes()[..end]))
        .expect("at most 255 bytes of valid UTF-8")
}

/// A short string sharing the envelope's memory.
fn shared_short(bytes: &Bytes, text: &str) -> ShortStr {
    ShortStr::from_utf8(bytes.slice_ref(text.as_bytes())).unwrap_or_else(|_| short(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_leave_in_order_merged_by_status() {
        let mut confirms = Confirms::new();
        confirms.push(1, 1, ConfirmStatus::Stored(Durability::Fsynced), 1);
        confirms.push(2, 2, ConfirmStatus::Stored(Durability::Fsynced), 1);
        confirms.push(3, 0, ConfirmStatus::Unroutable, 1);
        confirms.push(4, 1, ConfirmStatus::Stored(Durability::Fsynced), 1);
        let mut out = Vec::new();

        confirms.answer(2, Ok(Durability::Written));
        confirms.answer(4, Ok(Durability::Fsynced));
        confirms.ready(&mut out);
        assert!(
            out.is_empty(),
            "nothing passes the unanswered first message"
        );

        confirms.answer(1, Ok(Durability::Fsynced));
        confirms.ready(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].first, out[0].last), (1, 1));
        out.clear();

        confirms.answer(2, Ok(Durability::Fsynced));
        confirms.ready(&mut out);
        let ranges: Vec<(u64, u64, ConfirmStatus)> =
            out.iter().map(|c| (c.first, c.last, c.status)).collect();
        assert_eq!(
            ranges,
            vec![
                (2, 2, ConfirmStatus::Stored(Durability::Written)),
                (3, 3, ConfirmStatus::Unroutable),
                (4, 4, ConfirmStatus::Stored(Durability::Fsynced)),
            ]
        );
    }

    #[test]
    fn one_failed_target_makes_the_confirm_negative() {
        let mut confirms = Confirms::new();
        confirms.push(1, 2, ConfirmStatus::Stored(Durability::Fsynced), 1);
        confirms.push(2, 1, ConfirmStatus::Stored(Durability::Fsynced), 1);
        confirms.answer(1, Err(ErrorCode::STORAGE_FAILED));
        confirms.answer(1, Ok(Durability::Fsynced));
        confirms.answer(2, Ok(Durability::Fsynced));
        let mut out = Vec::new();
        confirms.ready(&mut out);
        assert_eq!(
            out[0].status,
            ConfirmStatus::Rejected(ErrorCode::STORAGE_FAILED)
        );
        assert_eq!((out[1].first, out[1].last), (2, 2));
    }

    #[test]
    fn equal_outcomes_merge_into_one_range() {
        let mut confirms = Confirms::new();
        for sequence in 1..=100 {
            confirms.push(sequence, 1, ConfirmStatus::Stored(Durability::Fsynced), 1);
        }
        assert_eq!(confirms.pending_bytes, 100, "each message counted its size");
        for sequence in (1..=100).rev() {
            confirms.answer(sequence, Ok(Durability::Fsynced));
        }
        let mut out = Vec::new();
        confirms.ready(&mut out);
        assert_eq!(
            confirms.pending_bytes, 0,
            "confirmed messages release their bytes"
        );
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].first, out[0].last), (1, 100));
    }
}
