//! One TCP connection to a broker: the [`Connection`] handle and the two background tasks that own
//! its socket.
//!
//! Every API call and both tasks share one [`Core`] behind a `std::sync::Mutex` that is never held
//! across an `.await`. An API call checks its frame with the sans-IO state machine
//! ([`ruuster_wire::Connection`]), encodes it straight into the core's outbound buffer and wakes
//! the writer; the writer swaps that buffer for an empty one and writes everything queued since
//! its last wakeup with one `write_all`, so a burst of publishes and acks costs one syscall, not
//! one per frame. The reader decodes every whole frame in its buffer under one lock and dispatches
//! it: replies by request id, confirms to the pending-batch queue, deliveries to their consumer's
//! channel.
//!
//! Invariant: the state machine sees every frame in the order it is queued or received, so publish
//! sequence numbers and confirm ranges stay exact; once the connection has ended (`Core::ended` is
//! set), nothing more is queued and every waiter has been given the cause.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ruuster_wire::connection::Negotiated;
use ruuster_wire::frame::{
    Ack, Cancel, Close, CloseOk, ExchangeDeclare, ExchangeDelete, Heartbeat, Hello, Nack,
    QueueBind, QueueDeclare, QueueDelete, QueuePurge, QueueUnbind, Reject, Stats, opcode,
};
use ruuster_wire::handshake::{MECHANISM_PLAIN, PlainCredentials};
use ruuster_wire::limits::{MISSED_HEARTBEATS_MAX, PROTOCOL_VERSION, SHORT_STR_SIZE_MAX};
use ruuster_wire::{
    ErrorCode, ExchangeKind, Frame, FrameDecoder, Inbound, Role, ShortStr, State, Table, Tick,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, Semaphore, broadcast, oneshot, watch};
use tracing::{debug, warn};

use crate::consumer::{ConsumerEnd, ConsumerSlot};
use crate::error::{ClientError, ServerError};
use crate::options::{ConnectOptions, ExchangeOptions, QueueOptions};
use crate::publish::{ConfirmQueue, ReturnedMessage};

/// Bytes kept free in the receive buffer before each read. 64 KiB takes a whole batch of small
/// deliveries in one `read`; a larger frame makes the decoder reserve exactly what it lacks.
const READ_BUFFER_RESERVE: usize = 64 * 1024;

/// Capacity the writer keeps between wakeups. A buffer that grew past it for one large burst is
/// dropped rather than kept, so an idle connection does not pin a burst's worth of memory.
const WRITE_BUFFER_RETAINED_MAX: usize = 1024 * 1024;

/// Control requests (declare, bind, consume, ...) awaiting their reply at once. Pipelining more
/// than this gains nothing (the broker applies topology changes in order on shard 0), and the
/// bound keeps the reply map small; further requests wait for a slot.
const REQUESTS_IN_FLIGHT_MAX: usize = 1024;

/// Returned messages a [`Connection::returns`] subscriber may fall behind by before it misses
/// some (and is told how many): returns are rare (mandatory publishes that match nothing), and each
/// batch's confirmation carries its own regardless, so this only bounds the side channel.
const RETURNS_BUFFERED_MAX: usize = 1024;

/// How long the client keeps trying to deliver its last frames (`Close`, `CloseOk`) once a
/// connection has ended or a handshake failed. They are a courtesy to the server's logs; a peer
/// that stopped reading must not hold a task, or the caller's error, any longer.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_millis(500);

/// The entry point: opens connections.
#[derive(Debug)]
pub struct Client;

impl Client {
    /// Connects to `options.address`, logs in and completes the handshake.
    pub async fn connect(options: &ConnectOptions) -> Result<Connection, ClientError> {
        let address = resolve(&options.address).await?;
        open(options, address).await
    }

    /// Connects to the shard that owns `queue`: connects as [`Client::connect`] does,
    /// passive-declares the queue and, if another shard owns it, closes that connection and
    /// connects to the owner's port (from `Welcome`) on the same host. The queue must exist.
    pub async fn connect_to_queue_owner(
        options: &ConnectOptions,
        queue: &str,
    ) -> Result<Connection, ClientError> {
        let first = Client::connect(options).await?;
        let owner = first.queue_declare_passive(queue).await?.owner_shard;
        if owner == first.shard_index() {
            return Ok(first);
        }
        let Some(port) = first.shard_ports().get(usize::from(owner)).copied() else {
            return Err(ClientError::Violation(format!(
                "queue {queue} is owned by shard {owner} but the server announced {} shards",
                first.shard_ports().len()
            )));
        };
        let address = SocketAddr::new(first.peer_address().ip(), port);
        // The first connection is only a directory lookup; a failed close does not affect the
        // connection the caller gets.
        if let Err(error) = first.close().await {
            debug!(%error, "closing the lookup connection failed");
        }
        let owner_connection = open(options, address).await?;
        if owner_connection.shard_index() != owner {
            warn!(
                queue,
                owner,
                landed = owner_connection.shard_index(),
                "the owner shard's port led to another shard"
            );
        }
        Ok(owner_connection)
    }
}

/// A handle to one connection: cheap to clone, `Send + Sync`. The connection closes (with an
/// orderly `Close`) when the last handle and [`crate::Consumer`] are dropped, or explicitly with
/// [`Connection::close`]. A [`crate::Delivery`] does not keep it open (it holds no handle, so
/// that an unsettled delivery cannot pin a connection the application has let go): settle
/// deliveries before dropping the last handle.
#[derive(Clone)]
pub struct Connection {
    handle: Arc<Handle>,
}

/// Closes the connection when the last [`Connection`] clone goes away. The background tasks hold
/// [`Shared`], not this, so they do not keep an abandoned connection alive.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.begin_close("client dropped the connection");
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.shared().info.peer)
            .field("shard_index", &self.shared().info.shard_index)
            .finish_non_exhaustive()
    }
}

/// What the handshake fixed; never changes afterwards.
#[derive(Debug)]
pub(crate) struct Info {
    pub(crate) peer: SocketAddr,
    pub(crate) negotiated: Negotiated,
    pub(crate) prefetch_max: u32,
    pub(crate) shard_index: u16,
    pub(crate) shard_ports: Vec<u16>,
    pub(crate) server_name: String,
    pub(crate) publish_window: u32,
}

/// State shared by the handles and the two tasks.
pub(crate) struct Shared {
    core: Mutex<Core>,
    writer_wake: Notify,
    /// Set once the connection ended; the reader stops and `close` returns.
    ended: watch::Sender<bool>,
    /// Permits for unconfirmed messages: a publish takes one per message, a confirm returns them.
    pub(crate) window: Semaphore,
    requests: Semaphore,
    blocked: watch::Sender<Option<ServerError>>,
    /// Every returned message, for [`Connection::returns`] subscribers; each batch's
    /// [`crate::Confirmation`] carries its own as well.
    returns: broadcast::Sender<ReturnedMessage>,
    pub(crate) info: Info,
}

/// Everything the mutex guards.
pub(crate) struct Core {
    pub(crate) machine: ruuster_wire::Connection,
    /// Frames queued since the writer's last wakeup. It has no limit of its own because what
    /// fills it is bounded elsewhere: publishes by the window, settlements by the consumers'
    /// prefetch, requests by [`REQUESTS_IN_FLIGHT_MAX`], heartbeats by the clock.
    pub(crate) outbound: BytesMut,
    next_request_id: u32,
    requests: HashMap<u32, PendingRequest>,
    pub(crate) confirms: ConfirmQueue,
    pub(crate) consumers: HashMap<u32, ConsumerSlot>,
    /// Why the connection ended; set once.
    pub(crate) ended: Option<ClientError>,
}

/// A control request awaiting its reply.
struct PendingRequest {
    reply_opcode: u16,
    /// `None` for a request nobody waits for (the cancel sent when a consumer is dropped).
    reply: Option<oneshot::Sender<Result<Frame, ClientError>>>,
    /// A consume's channel, installed when `ConsumeOk` arrives so that deliveries following it in
    /// the same read find their consumer.
    consumer: Option<ConsumerSlot>,
}

/// Facts a passive or active queue declare returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    /// The queue's name (generated by the server if the declare left it empty).
    pub name: String,
    /// Messages ready for delivery.
    pub message_count: u64,
    /// Active consumers.
    pub consumer_count: u32,
    /// The shard that owns the queue.
    pub owner_shard: u16,
}

impl Core {
    /// Fails unless API calls may queue frames: the connection is open and has not ended.
    pub(crate) fn check_open(&self) -> Result<(), ClientError> {
        if let Some(error) = &self.ended {
            return Err(error.clone());
        }
        if self.machine.state() != State::Open {
            return Err(ClientError::Closed);
        }
        Ok(())
    }

    /// Encodes `frame` into the outbound buffer and records it in the state machine. Encoding
    /// comes first because it can fail on user input and leaves the buffer unchanged when it does,
    /// while the state machine's effects (sequence numbers) cannot be undone.
    pub(crate) fn send(&mut self, frame: &Frame) -> Result<(), ClientError> {
        let start = self.outbound.len();
        frame
            .encode(&mut self.outbound, self.machine.frame_size_max())
            .map_err(ClientError::Encode)?;
        if let Err(error) = self.machine.on_send(frame, Instant::now()) {
            self.outbound.truncate(start);
            return Err(ClientError::Protocol(error));
        }
        Ok(())
    }

    fn allocate_request_id(&mut self) -> u32 {
        // At most REQUESTS_IN_FLIGHT_MAX ids are taken, so this finds a free one within that many
        // steps. Id 0 is reserved for errors about frames without an id.
        loop {
            let id = self.next_request_id;
            self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
            if !self.requests.contains_key(&id) {
                return id;
            }
        }
    }

    /// Queues a `Cancel` that nobody awaits, for a consumer dropped without cancelling.
    pub(crate) fn send_detached_cancel(&mut self, consumer_id: u32) {
        if self.check_open().is_err() || !self.consumers.contains_key(&consumer_id) {
            return;
        }
        let request_id = self.allocate_request_id();
        let cancel = Frame::Cancel(Cancel {
            request_id,
            consumer_id,
        });
        if self.send(&cancel).is_ok() {
            let pending = PendingRequest {
                reply_opcode: opcode::CANCEL_OK,
                reply: None,
                consumer: None,
            };
            self.requests.insert(request_id, pending);
        }
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock would be a bug in this crate; the guard's data is still
        // consistent enough to fail every waiter, so poisoning is ignored.
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn wake_writer(&self) {
        self.writer_wake.notify_one();
    }

    /// Why the connection ended, or [`ClientError::Closed`] if it has not (a waiter lost its
    /// sender without being told, which `end` never does).
    pub(crate) fn ended_reason(&self) -> ClientError {
        self.lock().ended.clone().unwrap_or(ClientError::Closed)
    }

    /// Queues one frame from an API call and wakes the writer.
    pub(crate) fn send_now(&self, frame: &Frame) -> Result<(), ClientError> {
        {
            let mut core = self.lock();
            core.check_open()?;
            core.send(frame)?;
        }
        self.wake_writer();
        Ok(())
    }

    /// Waits while the server has blocked publishing. `end` clears the flag, so a dead connection
    /// never leaves a publisher waiting here.
    pub(crate) async fn wait_unblocked(&self) {
        if self.blocked.borrow().is_none() {
            return;
        }
        let mut blocked = self.blocked.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we borrow it.
        let _ = blocked.wait_for(Option::is_none).await;
    }

    /// Starts an orderly close if the connection is open; the tasks finish it.
    fn begin_close(&self, reason: &str) {
        let mut core = self.lock();
        if core.check_open().is_err() {
            return;
        }
        let close = Frame::Close(Close {
            code: ErrorCode::NORMAL_CLOSE,
            reason: short_lossy(reason),
        });
        if let Err(error) = core.send(&close) {
            self.end(&mut core, error);
        }
        drop(core);
        self.wake_writer();
    }

    /// Ends the connection with `error`: sends `Close` if the error calls for one and the state
    /// allows it, then hands the cause to every waiter. Idempotent: the first cause wins.
    pub(crate) fn end(&self, core: &mut Core, error: ClientError) {
        if core.ended.is_some() {
            return;
        }
        let may_close = matches!(
            core.machine.state(),
            State::AwaitingHello | State::AwaitingWelcome | State::Open
        );
        if let (Some(code), true) = (error.close_code(), may_close) {
            let close = Frame::Close(Close {
                code,
                reason: short_lossy(&error.to_string()),
            });
            if let Err(close_error) = core.send(&close) {
                debug!(%close_error, "could not queue the closing frame");
            }
        }
        debug!(%error, "connection ended");
        core.ended = Some(error.clone());

        for (_, request) in core.requests.drain() {
            if let Some(reply) = request.reply {
                let _ = reply.send(Err(error.clone()));
            }
        }
        core.confirms.fail_all(&error);
        for (_, slot) in core.consumers.drain() {
            slot.end(ConsumerEnd::ConnectionClosed(error.clone()));
        }
        self.window.close();
        self.requests.close();
        self.blocked.send_replace(None);
        self.ended.send_replace(true);
        self.wake_writer();
    }

    fn end_now(&self, error: ClientError) {
        let mut core = self.lock();
        self.end(&mut core, error);
    }

    /// Sends a control request and waits for its reply (or `ErrorReply`). Requests pipeline: any
    /// number up to [`REQUESTS_IN_FLIGHT_MAX`] may wait at once, replies in any order.
    pub(crate) async fn request(
        &self,
        frame_for: impl FnOnce(u32) -> Frame,
        reply_opcode: u16,
        consumer: Option<ConsumerSlot>,
    ) -> Result<Frame, ClientError> {
        let _slot = self
            .requests
            .acquire()
            .await
            .map_err(|_| self.ended_reason())?;
        let (reply, receiver) = oneshot::channel();
        {
            let mut core = self.lock();
            core.check_open()?;
            let request_id = core.allocate_request_id();
            core.send(&frame_for(request_id))?;
            let pending = PendingRequest {
                reply_opcode,
                reply: Some(reply),
                consumer,
            };
            core.requests.insert(request_id, pending);
        }
        self.wake_writer();
        receiver.await.unwrap_or_else(|_| Err(self.ended_reason()))
    }

    /// Runs the heartbeat and silence deadlines; called by the writer at every wakeup.
    fn tick(&self, core: &mut Core) {
        if core.ended.is_some() {
            return;
        }
        match core.machine.on_tick(Instant::now()) {
            Tick::Idle => {}
            Tick::SendHeartbeat => {
                if let Err(error) = core.send(&Frame::Heartbeat(Heartbeat)) {
                    self.end(core, error);
                }
            }
            Tick::Expired(_) => {
                let interval = self.info.negotiated.heartbeat;
                self.end(core, ClientError::MissedHeartbeats { interval });
            }
            // Our Close went unanswered for the wire crate's close timeout: give up on CloseOk.
            Tick::CloseSocket => self.end(core, ClientError::Closed),
        }
    }
}

/// Frame handling on the reader's side.
impl Shared {
    /// Decodes and dispatches every whole frame in `buffer`. Returns the state machine's next
    /// deadline, or `None` once the connection has ended.
    fn receive(
        self: &Arc<Self>,
        buffer: &mut BytesMut,
        decoder: &mut FrameDecoder,
    ) -> Option<Instant> {
        let mut core = self.lock();
        let queued_before = core.outbound.len();
        // One clock read for the whole read: the frames arrived together, and liveness needs
        // no finer time than a heartbeat interval.
        let now = Instant::now();
        let open = loop {
            if core.ended.is_some() {
                break false;
            }
            match decoder.decode(buffer) {
                Ok(Some(frame)) => self.dispatch(&mut core, frame, now),
                Ok(None) => break true,
                Err(error) => self.end(&mut core, ClientError::Protocol(error)),
            }
        };
        // `None` only once closed, which ends the connection; an hour stands in for "never".
        let deadline = core
            .machine
            .next_deadline()
            .unwrap_or(now + Duration::from_secs(3600));
        let queued = core.outbound.len() != queued_before;
        drop(core);
        if queued {
            self.wake_writer();
        }
        open.then_some(deadline)
    }

    /// Runs the deadlines from the reader's side and wakes the writer if that queued a frame.
    fn tick_from_reader(&self) {
        let mut core = self.lock();
        let queued_before = core.outbound.len();
        self.tick(&mut core);
        let queued = core.outbound.len() != queued_before;
        drop(core);
        if queued {
            self.wake_writer();
        }
    }

    fn dispatch(self: &Arc<Self>, core: &mut Core, frame: Frame, now: Instant) {
        let closing = core.machine.state() == State::CloseSent;
        match core.machine.on_receive(&frame, now) {
            Err(error) => return self.end(core, ClientError::Protocol(error)),
            Ok(Inbound::Ignore) => return,
            Ok(Inbound::Handle) => {}
        }

        match frame {
            Frame::Heartbeat(_) => {}
            Frame::Close(close) => {
                if let Err(error) = core.send(&Frame::CloseOk(CloseOk)) {
                    debug!(%error, "could not queue CloseOk");
                }
                let error = if closing && close.code == ErrorCode::NORMAL_CLOSE {
                    ClientError::Closed
                } else {
                    ClientError::ClosedByServer(server_error(close.code, &close.reason))
                };
                self.end(core, error);
            }
            Frame::CloseOk(_) => self.end(core, ClientError::Closed),
            Frame::ErrorReply(reply) if reply.request_id == 0 => {
                // Errors about acks are fatal and arrive in `Close`; an id-0 reply is only logged.
                warn!(code = reply.code.0, message = %reply.message, "error without request id");
            }
            Frame::ErrorReply(reply) => {
                let error = ClientError::Server(server_error(reply.code, &reply.message));
                if let Some(pending) = self.take_request(core, reply.request_id, None) {
                    if let Some(slot) = pending.consumer {
                        slot.end(ConsumerEnd::ConnectionClosed(error.clone()));
                    }
                    if let Some(sender) = pending.reply {
                        let _ = sender.send(Err(error));
                    }
                }
            }
            Frame::Confirm(confirm) => {
                let count = core.confirms.confirm(&confirm);
                self.window.add_permits(count as usize);
            }
            Frame::Return(returned) => {
                let returned = ReturnedMessage {
                    sequence: returned.sequence,
                    code: returned.code,
                    exchange: returned.exchange,
                    routing_key: returned.routing_key,
                    body: returned.body,
                };
                if self.returns.receiver_count() > 0 {
                    // Fails only without receivers, checked just above.
                    let _ = self.returns.send(returned.clone());
                }
                if !core.confirms.attach_return(returned) {
                    let violation = ClientError::Violation("return for no pending batch".into());
                    self.end(core, violation);
                }
            }
            Frame::Blocked(blocked) => {
                let notice = server_error(blocked.code, &blocked.reason);
                self.blocked.send_replace(Some(notice));
            }
            Frame::Unblocked(_) => {
                self.blocked.send_replace(None);
            }
            Frame::Deliver(deliver) => self.deliver(core, deliver),
            Frame::CancelNotice(notice) => {
                // A notice can cross a client `Cancel`; the consumer is then already gone.
                if let Some(slot) = core.consumers.remove(&notice.consumer_id) {
                    let reason = server_error(notice.code, &notice.reason);
                    slot.end(ConsumerEnd::CancelledByServer(reason));
                }
            }
            Frame::ConsumeOk(ok) => {
                let Some(pending) =
                    self.take_request(core, ok.request_id, Some(opcode::CONSUME_OK))
                else {
                    return;
                };
                let Some(mut slot) = pending.consumer else {
                    return self.end(
                        core,
                        ClientError::Violation("ConsumeOk for no consume".into()),
                    );
                };
                slot.tag = ok.consumer_tag.clone();
                core.consumers.insert(ok.consumer_id, slot);
                let abandoned = match pending.reply {
                    Some(sender) => sender.send(Ok(Frame::ConsumeOk(ok.clone()))).is_err(),
                    None => true,
                };
                if abandoned {
                    // The caller stopped waiting for its consumer; nobody would ever read it.
                    core.send_detached_cancel(ok.consumer_id);
                }
            }
            Frame::CancelOk(ok) => {
                if let Some(slot) = core.consumers.remove(&ok.consumer_id) {
                    slot.end(ConsumerEnd::Cancelled);
                }
                self.complete(core, ok.request_id, opcode::CANCEL_OK, Frame::CancelOk(ok));
            }
            reply => match reply.request_id() {
                Some(request_id) => self.complete(core, request_id, reply.opcode(), reply),
                None => {
                    let detail = format!("unhandled frame {:#06x}", reply.opcode());
                    self.end(core, ClientError::Violation(detail));
                }
            },
        }
    }

    /// Removes the request `request_id` if its reply may have `opcode` (`None`: `ErrorReply`,
    /// which answers any request). Ends the connection on an unknown id or a mismatched reply.
    fn take_request(
        &self,
        core: &mut Core,
        request_id: u32,
        opcode: Option<u16>,
    ) -> Option<PendingRequest> {
        let matches = match core.requests.get(&request_id) {
            None => false,
            Some(pending) => opcode.is_none_or(|opcode| opcode == pending.reply_opcode),
        };
        if !matches {
            let detail = format!("reply for request {request_id} does not match a request");
            self.end(core, ClientError::Violation(detail));
            return None;
        }
        core.requests.remove(&request_id)
    }

    fn complete(&self, core: &mut Core, request_id: u32, opcode: u16, reply: Frame) {
        if let Some(PendingRequest {
            reply: Some(sender),
            ..
        }) = self.take_request(core, request_id, Some(opcode))
        {
            let _ = sender.send(Ok(reply));
        }
    }
}

/// Handshake and the two tasks.
async fn resolve(address: &str) -> Result<SocketAddr, ClientError> {
    let mut addresses = tokio::net::lookup_host(address)
        .await
        .map_err(|error| ClientError::io("resolve", error))?;
    addresses
        .next()
        .ok_or_else(|| ClientError::invalid("address", format!("{address} resolves to nothing")))
}

async fn open(options: &ConnectOptions, address: SocketAddr) -> Result<Connection, ClientError> {
    let connect = TcpStream::connect(address);
    let stream = match tokio::time::timeout(options.connect_timeout, connect).await {
        Err(_) => {
            let after = options.connect_timeout;
            return Err(ClientError::Timeout {
                operation: "connect",
                after,
            });
        }
        Ok(result) => result.map_err(|error| ClientError::io("connect", error))?,
    };
    // Frames are batched by the writer already; Nagle would only add latency to the last one.
    stream
        .set_nodelay(true)
        .map_err(|error| ClientError::io("set TCP_NODELAY", error))?;
    let (mut reader, mut writer) = stream.into_split();

    let deadline = tokio::time::Instant::now() + options.handshake_timeout;
    let handshake = handshake(options, &mut reader, &mut writer);
    let (machine, welcome, buffer, decoder) =
        match tokio::time::timeout_at(deadline, handshake).await {
            Err(_) => {
                let after = options.handshake_timeout;
                return Err(ClientError::Timeout {
                    operation: "handshake",
                    after,
                });
            }
            Ok(result) => result?,
        };

    let Some(negotiated) = machine.negotiated() else {
        return Err(ClientError::Violation(
            "handshake left nothing negotiated".into(),
        ));
    };
    let publish_window = options.publish_window.clamp(1, negotiated.unconfirmed_max);
    let info = Info {
        peer: address,
        negotiated,
        prefetch_max: welcome.prefetch_max,
        shard_index: welcome.shard_index,
        shard_ports: welcome.shard_ports,
        server_name: welcome.server_name.as_str().to_owned(),
        publish_window,
    };
    debug!(peer = %address, shard = info.shard_index, server = %info.server_name, "connected");
    let shared = Arc::new(Shared {
        core: Mutex::new(Core {
            machine,
            outbound: BytesMut::with_capacity(READ_BUFFER_RESERVE),
            next_request_id: 1,
            requests: HashMap::new(),
            confirms: ConfirmQueue::default(),
            consumers: HashMap::new(),
            ended: None,
        }),
        writer_wake: Notify::new(),
        ended: watch::Sender::new(false),
        window: Semaphore::new(publish_window as usize),
        requests: Semaphore::new(REQUESTS_IN_FLIGHT_MAX),
        blocked: watch::Sender::new(None),
        returns: broadcast::Sender::new(RETURNS_BUFFERED_MAX),
        info,
    });
    tokio::spawn(read_loop(shared.clone(), reader, buffer, decoder));
    tokio::spawn(write_loop(shared.clone(), writer));
    Ok(Connection {
        handle: Arc::new(Handle { shared }),
    })
}

/// Sends `Hello` and reads up to `Welcome`. Returns the machine, the welcome, and whatever was
/// read past it (the reader task decodes that first).
async fn handshake(
    options: &ConnectOptions,
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
) -> Result<
    (
        ruuster_wire::Connection,
        ruuster_wire::frame::Welcome,
        BytesMut,
        FrameDecoder,
    ),
    ClientError,
> {
    let credentials = PlainCredentials {
        username: options.username.clone(),
        password: options.password.clone(),
    };
    let Some(credentials) = credentials.encode() else {
        let reason = "PLAIN credentials must not contain NUL and must fit in 4096 bytes";
        return Err(ClientError::invalid("credentials", reason));
    };
    let heartbeat_ms = u32::try_from(options.heartbeat.as_millis()).unwrap_or(u32::MAX);
    let hello = Frame::Hello(Hello {
        version_min: PROTOCOL_VERSION,
        version_max: PROTOCOL_VERSION,
        client_name: short_lossy(&options.client_name),
        mechanism: ShortStr::from_static(MECHANISM_PLAIN),
        credentials,
        heartbeat_ms,
        frame_size_max: options.frame_size_max,
    });
    let mut machine =
        ruuster_wire::Connection::new(Role::Client, Instant::now(), options.handshake_timeout);
    let mut outbound = BytesMut::new();
    hello
        .encode(&mut outbound, machine.frame_size_max())
        .map_err(ClientError::Encode)?;
    machine
        .on_send(&hello, Instant::now())
        .map_err(ClientError::Protocol)?;
    writer
        .write_all(&outbound)
        .await
        .map_err(|error| ClientError::io("write", error))?;

    let mut buffer = BytesMut::with_capacity(READ_BUFFER_RESERVE);
    let mut decoder = FrameDecoder::default();
    loop {
        let frame = match decoder.decode(&mut buffer) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                let read = reader.read_buf(&mut buffer).await;
                match read {
                    Ok(0) => {
                        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
                        return Err(ClientError::io("read", eof));
                    }
                    Ok(_) => continue,
                    Err(error) => return Err(ClientError::io("read", error)),
                }
            }
            Err(error) => {
                let close = close_frame(error.code(), &error.to_string());
                send_best_effort(writer, &mut machine, close).await;
                return Err(ClientError::Protocol(error));
            }
        };
        if let Err(error) = machine.on_receive(&frame, Instant::now()) {
            let close = close_frame(error.code(), &error.to_string());
            send_best_effort(writer, &mut machine, close).await;
            return Err(ClientError::Protocol(error));
        }
        match frame {
            Frame::Welcome(welcome) => {
                decoder.set_frame_size_max(machine.frame_size_max());
                return Ok((machine, welcome, buffer, decoder));
            }
            Frame::Close(close) => {
                send_best_effort(writer, &mut machine, Frame::CloseOk(CloseOk)).await;
                let error = server_error(close.code, &close.reason);
                return Err(ClientError::ClosedByServer(error));
            }
            other => {
                let detail = format!("frame {:#06x} during the handshake", other.opcode());
                return Err(ClientError::Violation(detail));
            }
        }
    }
}

async fn send_best_effort(
    writer: &mut OwnedWriteHalf,
    machine: &mut ruuster_wire::Connection,
    frame: Frame,
) {
    let mut outbound = BytesMut::new();
    let encoded = frame.encode(&mut outbound, machine.frame_size_max());
    if encoded.is_err() || machine.on_send(&frame, Instant::now()).is_err() {
        return;
    }
    let write = writer.write_all(&outbound);
    let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, write).await;
}

async fn read_loop(
    shared: Arc<Shared>,
    mut socket: OwnedReadHalf,
    mut buffer: BytesMut,
    mut decoder: FrameDecoder,
) {
    let mut ended = shared.ended.subscribe();
    loop {
        let Some(deadline) = shared.receive(&mut buffer, &mut decoder) else {
            return;
        };
        buffer.reserve(READ_BUFFER_RESERVE);
        // The writer runs the deadlines too, but it can be stuck in a write to a server that
        // stopped reading, which is exactly when the silence deadline matters; reads never wait
        // on writes, so the reader runs them as well.
        let deadline = tokio::time::Instant::from_std(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => shared.tick_from_reader(),
            result = socket.read_buf(&mut buffer) => match result {
                Ok(0) => {
                    let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
                    return shared.end_now(ClientError::io("read", eof));
                }
                Ok(_) => {}
                Err(error) => return shared.end_now(ClientError::io("read", error)),
            },
            _ = ended.wait_for(|ended| *ended) => return,
        }
    }
}

async fn write_loop(shared: Arc<Shared>, mut socket: OwnedWriteHalf) {
    let mut batch = BytesMut::with_capacity(READ_BUFFER_RESERVE);
    let mut ended = shared.ended.subscribe();
    loop {
        let (deadline, finished) = {
            let mut core = shared.lock();
            shared.tick(&mut core);
            std::mem::swap(&mut core.outbound, &mut batch);
            (core.machine.next_deadline(), core.ended.is_some())
        };
        if !batch.is_empty() {
            let write = socket.write_all(&batch);
            let written = if finished {
                tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, write).await
            } else {
                // A write to a server that stopped reading never completes; once the connection
                // ends (the reader saw the silence), finishing it gets a bounded grace period.
                let mut write = std::pin::pin!(write);
                tokio::select! {
                    result = &mut write => Ok(result),
                    // The async block drops the watch's read guard before the next await.
                    () = async { drop(ended.wait_for(|ended| *ended).await) } => {
                        tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, write).await
                    }
                }
            };
            match written {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    shared.end_now(ClientError::io("write", error));
                    break;
                }
                Err(_) => break,
            }
            batch.clear();
            if batch.capacity() > WRITE_BUFFER_RETAINED_MAX {
                batch = BytesMut::with_capacity(READ_BUFFER_RESERVE);
            }
        }
        if finished {
            break;
        }
        match deadline {
            Some(deadline) => {
                let deadline = tokio::time::Instant::from_std(deadline);
                tokio::select! {
                    _ = shared.writer_wake.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
            None => shared.writer_wake.notified().await,
        }
    }
    let _ = socket.shutdown().await;
}

/// A server error from a code and its text.
pub(crate) fn server_error(code: ErrorCode, message: &ShortStr) -> ServerError {
    ServerError {
        code,
        message: message.as_str().to_owned(),
    }
}

fn close_frame(code: ErrorCode, reason: &str) -> Frame {
    Frame::Close(Close {
        code,
        reason: short_lossy(reason),
    })
}

/// `text` as a short string, cut at a character boundary if it is too long: for reasons and
/// names in logs, where a shortened text beats a refused frame.
pub(crate) fn short_lossy(text: &str) -> ShortStr {
    let mut end = text.len().min(SHORT_STR_SIZE_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortStr::try_from(&text[..end]).unwrap_or_default()
}

/// `text` as a short string, refused if it does not fit.
pub(crate) fn short(field: &'static str, text: &str) -> Result<ShortStr, ClientError> {
    ShortStr::try_from(text).map_err(|error| ClientError::invalid(field, error.to_string()))
}

/// Connection facts and control requests.
impl Connection {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The shard this connection landed on.
    pub fn shard_index(&self) -> u16 {
        self.shared().info.shard_index
    }

    /// One port per shard, as the server announced: connecting to `shard_ports()[i]` lands on
    /// shard `i`.
    pub fn shard_ports(&self) -> &[u16] {
        &self.shared().info.shard_ports
    }

    /// The address this connection reached.
    pub fn peer_address(&self) -> SocketAddr {
        self.shared().info.peer
    }

    /// The server's name and version.
    pub fn server_name(&self) -> &str {
        &self.shared().info.server_name
    }

    /// The negotiated heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        self.shared().info.negotiated.heartbeat
    }

    /// The negotiated maximum frame size, header included.
    pub fn frame_size_max(&self) -> u32 {
        self.shared().info.negotiated.frame_size_max
    }

    /// The largest prefetch the server allows a consumer.
    pub fn prefetch_max(&self) -> u32 {
        self.shared().info.prefetch_max
    }

    /// The bound on unconfirmed messages this connection keeps: the smaller of
    /// [`ConnectOptions::publish_window`] and the server's `max unconfirmed`.
    pub fn publish_window(&self) -> u32 {
        self.shared().info.publish_window
    }

    /// Published messages not yet confirmed.
    pub fn unconfirmed(&self) -> u64 {
        self.shared().lock().machine.unconfirmed()
    }

    /// The server's backpressure state: `Some` (with the reason, e.g. 601 disk-low) between
    /// `Blocked` and `Unblocked`. Publishes wait while it is `Some`.
    pub fn blocked(&self) -> watch::Receiver<Option<ServerError>> {
        self.shared().blocked.subscribe()
    }

    /// Every mandatory message returned from now on, across all batches. A subscriber more than
    /// 1024 messages (`RETURNS_BUFFERED_MAX`) behind gets `Lagged` with the number it missed;
    /// each batch's [`crate::Confirmation::returned`] has its own returns in any case.
    pub fn returns(&self) -> broadcast::Receiver<ReturnedMessage> {
        self.shared().returns.subscribe()
    }

    /// Why the connection ended, or `None` while it is usable.
    pub fn ended(&self) -> Option<ClientError> {
        self.shared().lock().ended.clone()
    }

    /// Waits until the connection ends and returns why.
    pub async fn wait_ended(&self) -> ClientError {
        let mut ended = self.shared().ended.subscribe();
        let _ = ended.wait_for(|ended| *ended).await;
        self.shared().ended_reason()
    }

    /// Closes the connection in order: sends `Close` (code 0) and waits for `CloseOk`, at most two
    /// heartbeat intervals as the protocol allows. Unconfirmed publishes fail with
    /// [`ClientError::Closed`] (they may or may not have been stored).
    pub async fn close(&self) -> Result<(), ClientError> {
        self.close_with_reason("closed by the client").await
    }

    /// [`Connection::close`] with a reason for the server's logs (cut to 255 bytes).
    pub async fn close_with_reason(&self, reason: &str) -> Result<(), ClientError> {
        let shared = self.shared();
        shared.begin_close(reason);
        let bound = shared.info.negotiated.heartbeat * MISSED_HEARTBEATS_MAX;
        let mut ended = shared.ended.subscribe();
        if tokio::time::timeout(bound, ended.wait_for(|ended| *ended))
            .await
            .is_err()
        {
            let operation = "close";
            shared.end_now(ClientError::Timeout {
                operation,
                after: bound,
            });
        }
        match shared.ended_reason() {
            ClientError::Closed => Ok(()),
            ClientError::ClosedByServer(error) if error.code == ErrorCode::NORMAL_CLOSE => Ok(()),
            error => Err(error),
        }
    }

    /// Acknowledges delivery `delivery_tag`, or with `multiple` every outstanding delivery up to
    /// it. Queued, not awaited: acks have no reply.
    pub fn ack(&self, delivery_tag: u64, multiple: bool) -> Result<(), ClientError> {
        let ack = Frame::Ack(Ack {
            delivery_tag,
            multiple,
        });
        self.shared().send_now(&ack)
    }

    /// Refuses delivery `delivery_tag` (or with `multiple` every outstanding one up to it);
    /// `requeue` puts the messages back in their original place.
    pub fn nack(
        &self,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), ClientError> {
        let nack = Frame::Nack(Nack {
            delivery_tag,
            multiple,
            requeue,
        });
        self.shared().send_now(&nack)
    }

    /// Refuses one delivery; `requeue` puts it back in its original place.
    pub fn reject(&self, delivery_tag: u64, requeue: bool) -> Result<(), ClientError> {
        let reject = Frame::Reject(Reject {
            delivery_tag,
            requeue,
        });
        self.shared().send_now(&reject)
    }

    /// Declares an exchange (creates it, or checks that an existing one is equivalent).
    pub async fn exchange_declare(
        &self,
        exchange: &str,
        kind: ExchangeKind,
        options: &ExchangeOptions,
    ) -> Result<(), ClientError> {
        let exchange = short("exchange", exchange)?;
        let frame_for = |request_id| {
            Frame::ExchangeDeclare(ExchangeDeclare {
                request_id,
                exchange,
                kind,
                durable: options.durable,
                auto_delete: options.auto_delete,
                passive: false,
                arguments: options.arguments.clone(),
            })
        };
        let reply = opcode::EXCHANGE_DECLARE_OK;
        self.shared().request(frame_for, reply, None).await?;
        Ok(())
    }

    /// Checks that an exchange exists (300 exchange-not-found otherwise).
    pub async fn exchange_declare_passive(&self, exchange: &str) -> Result<(), ClientError> {
        let exchange = short("exchange", exchange)?;
        let frame_for = |request_id| {
            Frame::ExchangeDeclare(ExchangeDeclare {
                request_id,
                exchange,
                kind: ExchangeKind::Direct,
                durable: false,
                auto_delete: false,
                passive: true,
                arguments: Table::new(),
            })
        };
        let reply = opcode::EXCHANGE_DECLARE_OK;
        self.shared().request(frame_for, reply, None).await?;
        Ok(())
    }

    /// Deletes an exchange and its bindings; with `if_unused`, only if it has no bindings.
    pub async fn exchange_delete(
        &self,
        exchange: &str,
        if_unused: bool,
    ) -> Result<(), ClientError> {
        let exchange = short("exchange", exchange)?;
        let frame_for = |request_id| {
            Frame::ExchangeDelete(ExchangeDelete {
                request_id,
                exchange,
                if_unused,
            })
        };
        let reply = opcode::EXCHANGE_DELETE_OK;
        self.shared().request(frame_for, reply, None).await?;
        Ok(())
    }

    /// Declares a queue; an empty name asks the server to generate one ([`QueueInfo::name`]).
    pub async fn queue_declare(
        &self,
        queue: &str,
        options: &QueueOptions,
    ) -> Result<QueueInfo, ClientError> {
        let queue = short("queue", queue)?;
        let frame_for = |request_id| {
            Frame::QueueDeclare(QueueDeclare {
                request_id,
                queue,
                durable: options.durable,
                exclusive: options.exclusive,
                auto_delete: options.auto_delete,
                passive: false,
                arguments: options.arguments.clone(),
            })
        };
        self.queue_declare_frame(frame_for).await
    }

    /// Returns an existing queue's counts and owner shard (301 queue-not-found otherwise).
    pub async fn queue_declare_passive(&self, queue: &str) -> Result<QueueInfo, ClientError> {
        let queue = short("queue", queue)?;
        let frame_for = |request_id| {
            Frame::QueueDeclare(QueueDeclare {
                request_id,
                queue,
                durable: false,
                exclusive: false,
                auto_delete: false,
                passive: true,
                arguments: Table::new(),
            })
        };
        self.queue_declare_frame(frame_for).await
    }

    async fn queue_declare_frame(
        &self,
        frame_for: impl FnOnce(u32) -> Frame,
    ) -> Result<QueueInfo, ClientError> {
        let reply = opcode::QUEUE_DECLARE_OK;
        match self.shared().request(frame_for, reply, None).await? {
            Frame::QueueDeclareOk(ok) => Ok(QueueInfo {
                name: ok.queue.as_str().to_owned(),
                message_count: ok.message_count,
                consumer_count: ok.consumer_count,
                owner_shard: ok.owner_shard,
            }),
            other => Err(unexpected_reply(&other)),
        }
    }

    /// Deletes a queue and returns how many messages went with it.
    pub async fn queue_delete(
        &self,
        queue: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u64, ClientError> {
        let queue = short("queue", queue)?;
        let frame_for = |request_id| {
            Frame::QueueDelete(QueueDelete {
                request_id,
                queue,
                if_unused,
                if_empty,
            })
        };
        match self
            .shared()
            .request(frame_for, opcode::QUEUE_DELETE_OK, None)
            .await?
        {
            Frame::QueueDeleteOk(ok) => Ok(ok.message_count),
            other => Err(unexpected_reply(&other)),
        }
    }

    /// Removes every ready message of a queue and returns how many.
    pub async fn queue_purge(&self, queue: &str) -> Result<u64, ClientError> {
        let queue = short("queue", queue)?;
        let frame_for = |request_id| Frame::QueuePurge(QueuePurge { request_id, queue });
        match self
            .shared()
            .request(frame_for, opcode::QUEUE_PURGE_OK, None)
            .await?
        {
            Frame::QueuePurgeOk(ok) => Ok(ok.message_count),
            other => Err(unexpected_reply(&other)),
        }
    }

    /// Binds `queue` to `exchange` with a binding key (and, for headers exchanges, arguments).
    pub async fn queue_bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &Table,
    ) -> Result<(), ClientError> {
        let (queue, exchange) = (short("queue", queue)?, short("exchange", exchange)?);
        let routing_key = short("routing key", routing_key)?;
        let frame_for = |request_id| {
            Frame::QueueBind(QueueBind {
                request_id,
                queue,
                exchange,
                routing_key,
                arguments: arguments.clone(),
            })
        };
        let reply = opcode::QUEUE_BIND_OK;
        self.shared().request(frame_for, reply, None).await?;
        Ok(())
    }

    /// Removes the binding named by all four fields.
    pub async fn queue_unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &Table,
    ) -> Result<(), ClientError> {
        let (queue, exchange) = (short("queue", queue)?, short("exchange", exchange)?);
        let routing_key = short("routing key", routing_key)?;
        let frame_for = |request_id| {
            Frame::QueueUnbind(QueueUnbind {
                request_id,
                queue,
                exchange,
                routing_key,
                arguments: arguments.clone(),
            })
        };
        let reply = opcode::QUEUE_UNBIND_OK;
        self.shared().request(frame_for, reply, None).await?;
        Ok(())
    }

    /// The broker's counters, by name.
    pub async fn stats(&self) -> Result<Vec<(String, u64)>, ClientError> {
        let frame_for = |request_id| Frame::Stats(Stats { request_id });
        match self
            .shared()
            .request(frame_for, opcode::STATS_OK, None)
            .await?
        {
            Frame::StatsOk(ok) => Ok(ok
                .counters
                .into_iter()
                .map(|(name, value)| (name.as_str().to_owned(), value))
                .collect()),
            other => Err(unexpected_reply(&other)),
        }
    }
}

/// A reply whose type `take_request` already matched but whose variant the caller did not
/// expect: only reachable if the wire crate maps an opcode to another variant.
pub(crate) fn unexpected_reply(frame: &Frame) -> ClientError {
    ClientError::Violation(format!("unexpected reply {:#06x}", frame.opcode()))
}
