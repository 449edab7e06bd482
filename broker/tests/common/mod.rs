//! A small blocking client for the broker's integration tests, built directly on the wire codec
//! so that the tests see exactly the frames the broker sends. Applications use `ruuster-client`.

#![allow(dead_code)]

pub mod process;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ruuster_broker::config::Config;
use ruuster_broker::server::Broker;
use ruuster_wire::frame::{
    Ack, Cancel, Confirm, Consume, Deliver, ExchangeDeclare, ExchangeDelete, Hello, Nack, Publish,
    PublishMessage, QueueBind, QueueDeclare, QueueDeclareOk, QueueDelete, QueuePurge, QueueUnbind,
    Reject, Stats, Welcome,
};
use ruuster_wire::handshake::PlainCredentials;
use ruuster_wire::limits::PROTOCOL_VERSION;
use ruuster_wire::{
    Durability, ErrorCode, ExchangeKind, Frame, FrameDecoder, Properties, ShortStr, Table,
};

/// How long a test waits for any one frame before it fails instead of hanging.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(20);

pub fn scratch(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("broker")
        .join(name);
    let _ = std::fs::remove_dir_all(&path);
    path
}

/// Sends the broker's logs to the test's output (shown for failing tests); `RUST_LOG` filters.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Brokers in one test process run one at a time: each pins two shards to the same CPUs, and
/// several at once oversubscribe a 2-CPU machine (a shard was once seen stalled in its journal's
/// first checkpoint write under such load; see the README's known issues).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts a broker in this process on an ephemeral port with `shards` shards.
pub fn start_broker(data_dir: &Path, shards: usize) -> Broker {
    start_broker_with(test_config(data_dir, shards))
}

/// The configuration [`start_broker`] uses, for tests that change a field.
pub fn test_config(data_dir: &Path, shards: usize) -> Config {
    Config {
        data_dir: data_dir.to_path_buf(),
        listen: "127.0.0.1:0".into(),
        shards: Some(shards),
        // Shards share the CPUs this test may use, so a 1-CPU machine still runs 2 shards.
        cpus: None,
        segment_bytes: 4 << 20,
        ..Config::default()
    }
}

pub fn start_broker_with(config: Config) -> Broker {
    init_logs();
    Broker::start(config).expect("broker starts")
}

/// Stops a broker cleanly and waits for its shards.
pub fn stop_broker(broker: Broker) {
    broker.shutdown_handle().shutdown();
    broker.wait().expect("the broker stops cleanly");
}

/// The broker's address that lands on `shard`.
pub fn shard_address(broker: &Broker, shard: u16) -> SocketAddr {
    broker.shard_addrs()[usize::from(shard)]
}

/// The other shard of a two-shard broker.
pub fn other_shard(shard: u16) -> u16 {
    1 - shard
}

/// The payload of a message published by [`payloads`]: its index.
pub fn index_of(delivery: &Deliver) -> u64 {
    u64::from_le_bytes(TestClient::payload(delivery).try_into().expect("8 bytes"))
}

/// Payloads holding the indexes `range`, as little-endian `u64`.
pub fn payloads(range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    range.map(|index| index.to_le_bytes().to_vec()).collect()
}

/// Options of a queue declare.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueFlags {
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub passive: bool,
}

impl QueueFlags {
    pub const DURABLE: QueueFlags = QueueFlags {
        durable: true,
        exclusive: false,
        auto_delete: false,
        passive: false,
    };
    pub const TRANSIENT: QueueFlags = QueueFlags {
        durable: false,
        exclusive: false,
        auto_delete: false,
        passive: false,
    };
    pub const PASSIVE: QueueFlags = QueueFlags {
        durable: false,
        exclusive: false,
        auto_delete: false,
        passive: true,
    };
}

pub fn short(text: &str) -> ShortStr {
    ShortStr::from_utf8(Bytes::copy_from_slice(text.as_bytes())).unwrap()
}

pub fn body(payload: &[u8]) -> Bytes {
    Properties::default().to_body(payload).unwrap()
}

pub struct TestClient {
    stream: TcpStream,
    decoder: FrameDecoder,
    buffer: BytesMut,
    pending: VecDeque<Frame>,
    next_request: u32,
    /// Messages published so far: the last publish sequence number used.
    published_count: u64,
    pub welcome: Welcome,
}

impl TestClient {
    pub fn connect(address: SocketAddr) -> TestClient {
        Self::connect_as(address, "guest", "guest").expect("handshake succeeds")
    }

    /// Connects and runs the handshake; returns the broker's first frame on refusal.
    pub fn connect_as(
        address: SocketAddr,
        user: &str,
        password: &str,
    ) -> Result<TestClient, Box<Frame>> {
        let stream = TcpStream::connect(address).expect("connect");
        stream.set_read_timeout(Some(FRAME_DEADLINE)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut client = TestClient {
            stream,
            decoder: FrameDecoder::new(ruuster_wire::limits::FRAME_SIZE_MAX),
            buffer: BytesMut::new(),
            pending: VecDeque::new(),
            next_request: 1,
            published_count: 0,
            welcome: Welcome {
                version: 0,
                heartbeat_ms: 0,
                frame_size_max: 0,
                unconfirmed_max: 0,
                prefetch_max: 0,
                shard_index: 0,
                shard_ports: Vec::new(),
                server_name: short(""),
            },
        };
        let credentials = PlainCredentials {
            username: user.into(),
            password: password.into(),
        };
        client.send(Frame::Hello(Hello {
            version_min: PROTOCOL_VERSION,
            version_max: PROTOCOL_VERSION,
            client_name: short("broker-tests"),
            mechanism: short("PLAIN"),
            credentials: credentials.encode().unwrap(),
            heartbeat_ms: 60_000,
            frame_size_max: 0,
        }));
        match client.recv() {
            Frame::Welcome(welcome) => {
                client.welcome = welcome;
                Ok(client)
            }
            other => Err(Box::new(other)),
        }
    }

    pub fn send(&mut self, frame: Frame) {
        if let Frame::Publish(publish) = &frame {
            self.published_count += publish.messages.len() as u64;
        }
        let mut out = BytesMut::new();
        frame
            .encode(&mut out, ruuster_wire::limits::FRAME_SIZE_MAX)
            .unwrap();
        self.stream.write_all(&out).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next frame, skipping heartbeats.
    pub fn recv(&mut self) -> Frame {
        if let Some(frame) = self.pending.pop_front() {
            return frame;
        }
        self.recv_socket().expect("a frame before the deadline")
    }

    /// The next frame from the socket, or `None` once the broker closed it.
    pub fn recv_socket(&mut self) -> Option<Frame> {
        let deadline = Instant::now() + FRAME_DEADLINE;
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buffer).expect("valid frames") {
                if matches!(frame, Frame::Heartbeat(_)) {
                    continue;
                }
                return Some(frame);
            }
            assert!(
                Instant::now() < deadline,
                "no frame within {FRAME_DEADLINE:?}"
            );
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(count) => self.buffer.extend_from_slice(&chunk[..count]),
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(error) => panic!("read failed: {error}"),
            }
        }
    }

    /// Sends a request and returns its reply (or error reply), keeping other frames for later.
    pub fn request(&mut self, make: impl FnOnce(u32) -> Frame) -> Frame {
        let request_id = self.next_request;
        self.next_request += 1;
        self.send(make(request_id));
        let mut skipped = VecDeque::new();
        let reply = loop {
            let frame = self.pending.pop_front().unwrap_or_else(|| {
                self.recv_socket()
                    .expect("a reply before the connection closed")
            });
            if frame.request_id() == Some(request_id) {
                break frame;
            }
            skipped.push_back(frame);
        };
        skipped.extend(self.pending.drain(..));
        self.pending = skipped;
        reply
    }

    pub fn declare_exchange(&mut self, name: &str, kind: ExchangeKind) {
        let reply = self.request(|request_id| {
            Frame::ExchangeDeclare(ExchangeDeclare {
                request_id,
                exchange: short(name),
                kind,
                durable: true,
                auto_delete: false,
                passive: false,
                arguments: Table::new(),
            })
        });
        assert!(matches!(reply, Frame::ExchangeDeclareOk(_)), "{reply:?}");
    }

    /// Declares a queue and returns its owner shard.
    pub fn declare_queue(&mut self, name: &str, durable: bool) -> u16 {
        let flags = if durable {
            QueueFlags::DURABLE
        } else {
            QueueFlags::TRANSIENT
        };
        self.declare_queue_with(name, flags).owner_shard
    }

    pub fn bind(&mut self, queue: &str, exchange: &str, key: &str) {
        let reply = self.bind_reply(queue, exchange, key);
        assert!(matches!(reply, Frame::QueueBindOk(_)), "{reply:?}");
    }

    pub fn publish(&mut self, exchange: &str, key: &str, payloads: &[Vec<u8>], level: Durability) {
        let messages = payloads
            .iter()
            .map(|payload| PublishMessage {
                routing_key: short(key),
                body: body(payload),
            })
            .collect();
        self.send(Frame::Publish(Publish {
            exchange: short(exchange),
            mandatory: false,
            durability: level,
            messages,
        }));
    }

    /// The sequence number of the last message published on this connection.
    pub fn published_count(&self) -> u64 {
        self.published_count
    }

    /// Collects confirms until sequence `last` is covered.
    pub fn confirms_through(&mut self, last: u64) -> Vec<Confirm> {
        let mut confirms = Vec::new();
        let mut skipped = VecDeque::new();
        while confirms
            .last()
            .is_none_or(|confirm: &Confirm| confirm.last < last)
        {
            match self.recv() {
                Frame::Confirm(confirm) => confirms.push(confirm),
                other => skipped.push_back(other),
            }
        }
        skipped.extend(self.pending.drain(..));
        self.pending = skipped;
        confirms
    }

    pub fn consume(&mut self, queue: &str, prefetch: u32) -> u32 {
        let reply = self.consume_reply(queue, prefetch);
        let Frame::ConsumeOk(ok) = reply else {
            panic!("consume failed: {reply:?}")
        };
        ok.consumer_id
    }

    pub fn next_delivery(&mut self) -> Deliver {
        let mut skipped = VecDeque::new();
        let delivery = loop {
            match self.recv() {
                Frame::Deliver(delivery) => break delivery,
                other => skipped.push_back(other),
            }
        };
        skipped.extend(self.pending.drain(..));
        self.pending = skipped;
        delivery
    }

    pub fn ack(&mut self, delivery_tag: u64, multiple: bool) {
        self.send(Frame::Ack(Ack {
            delivery_tag,
            multiple,
        }));
    }

    pub fn nack(&mut self, delivery_tag: u64, requeue: bool) {
        self.send(Frame::Nack(Nack {
            delivery_tag,
            multiple: false,
            requeue,
        }));
    }

    pub fn nack_multiple(&mut self, delivery_tag: u64, requeue: bool) {
        self.send(Frame::Nack(Nack {
            delivery_tag,
            multiple: true,
            requeue,
        }));
    }

    pub fn reject(&mut self, delivery_tag: u64, requeue: bool) {
        self.send(Frame::Reject(Reject {
            delivery_tag,
            requeue,
        }));
    }

    /// Sends a queue declare and returns the reply frame, whatever it is.
    pub fn queue_declare_reply(
        &mut self,
        name: &str,
        flags: QueueFlags,
        arguments: Table,
    ) -> Frame {
        self.request(|request_id| {
            Frame::QueueDeclare(QueueDeclare {
                request_id,
                queue: short(name),
                durable: flags.durable,
                exclusive: flags.exclusive,
                auto_delete: flags.auto_delete,
                passive: flags.passive,
                arguments,
            })
        })
    }

    /// Declares a queue with `flags` and returns the broker's answer, failing on an error.
    pub fn declare_queue_with(&mut self, name: &str, flags: QueueFlags) -> QueueDeclareOk {
        match self.queue_declare_reply(name, flags, Table::new()) {
            Frame::QueueDeclareOk(ok) => ok,
            other => panic!("declare of {name:?} failed: {other:?}"),
        }
    }

    /// A passive declare: the queue's ready message count and consumer count.
    pub fn queue_counts(&mut self, name: &str) -> (u64, u32) {
        let ok = self.declare_queue_with(name, QueueFlags::PASSIVE);
        (ok.message_count, ok.consumer_count)
    }

    /// Sends an exchange declare and returns the reply frame, whatever it is.
    pub fn exchange_declare_reply(
        &mut self,
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        passive: bool,
        arguments: Table,
    ) -> Frame {
        self.request(|request_id| {
            Frame::ExchangeDeclare(ExchangeDeclare {
                request_id,
                exchange: short(name),
                kind,
                durable,
                auto_delete: false,
                passive,
                arguments,
            })
        })
    }

    pub fn exchange_delete_reply(&mut self, name: &str, if_unused: bool) -> Frame {
        self.request(|request_id| {
            Frame::ExchangeDelete(ExchangeDelete {
                request_id,
                exchange: short(name),
                if_unused,
            })
        })
    }

    pub fn queue_delete_reply(&mut self, name: &str, if_unused: bool, if_empty: bool) -> Frame {
        self.request(|request_id| {
            Frame::QueueDelete(QueueDelete {
                request_id,
                queue: short(name),
                if_unused,
                if_empty,
            })
        })
    }

    pub fn queue_purge_reply(&mut self, name: &str) -> Frame {
        self.request(|request_id| {
            Frame::QueuePurge(QueuePurge {
                request_id,
                queue: short(name),
            })
        })
    }

    pub fn bind_reply(&mut self, queue: &str, exchange: &str, key: &str) -> Frame {
        self.request(|request_id| {
            Frame::QueueBind(QueueBind {
                request_id,
                queue: short(queue),
                exchange: short(exchange),
                routing_key: short(key),
                arguments: Table::new(),
            })
        })
    }

    pub fn unbind_reply(&mut self, queue: &str, exchange: &str, key: &str) -> Frame {
        self.request(|request_id| {
            Frame::QueueUnbind(QueueUnbind {
                request_id,
                queue: short(queue),
                exchange: short(exchange),
                routing_key: short(key),
                arguments: Table::new(),
            })
        })
    }

    pub fn consume_reply(&mut self, queue: &str, prefetch: u32) -> Frame {
        self.request(|request_id| {
            Frame::Consume(Consume {
                request_id,
                queue: short(queue),
                consumer_tag: short(&format!("tag-{queue}-{request_id}")),
                prefetch,
                exclusive: false,
                arguments: Table::new(),
            })
        })
    }

    pub fn cancel_reply(&mut self, consumer_id: u32) -> Frame {
        self.request(|request_id| {
            Frame::Cancel(Cancel {
                request_id,
                consumer_id,
            })
        })
    }

    /// Cancels a consumer and waits for its `CancelOk`.
    pub fn cancel(&mut self, consumer_id: u32) {
        let reply = self.cancel_reply(consumer_id);
        assert!(
            matches!(reply, Frame::CancelOk(ref ok) if ok.consumer_id == consumer_id),
            "{reply:?}"
        );
    }

    /// The broker's counters by name.
    pub fn stats(&mut self) -> std::collections::HashMap<String, u64> {
        match self.request(|request_id| Frame::Stats(Stats { request_id })) {
            Frame::StatsOk(ok) => ok
                .counters
                .into_iter()
                .map(|(name, value)| (name.as_str().to_string(), value))
                .collect(),
            other => panic!("stats failed: {other:?}"),
        }
    }

    /// Reads frames until the broker closes the connection with `Close`; returns its code.
    pub fn expect_close(&mut self) -> ErrorCode {
        loop {
            let frame = match self.pending.pop_front() {
                Some(frame) => frame,
                None => self
                    .recv_socket()
                    .expect("a Close before the socket closed"),
            };
            if let Frame::Close(close) = frame {
                return close.code;
            }
        }
    }

    /// Keeps a frame read out of turn, to be returned by the next `recv`.
    pub fn push_back(&mut self, frame: Frame) {
        self.pending.push_back(frame);
    }

    /// The payload of a delivered body.
    pub fn payload(delivery: &Deliver) -> Vec<u8> {
        ruuster_wire::Body::parse(delivery.body.clone())
            .unwrap()
            .payload()
            .to_vec()
    }
}

/// The code of an `ErrorReply`; fails on any other frame.
pub fn error_code(frame: &Frame) -> ErrorCode {
    match frame {
        Frame::ErrorReply(reply) => reply.code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Asks `condition` up to 200 times, 25 ms apart (5 s in all), for effects the broker applies
/// after its reply (a connection's close seen by the broker, an auto-delete); fails with `what`.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("not within 5 s: {what}");
}
