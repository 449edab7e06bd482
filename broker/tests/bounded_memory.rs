//! Bounded memory under a publisher much faster than its consumers, measured on the real
//! `ruuster` binary as a child process: its resident set (`VmRSS` in `/proc/<pid>/status`) is
//! sampled for the whole run.
//!
//! The run, about 30 s: one publisher pipelines 4 KiB messages as fast as its socket takes them,
//! up to the protocol's unconfirmed window (65,536 messages, 256 MiB), and ignores `Blocked`, so
//! only the broker's own backpressure can hold it. One consumer acks each delivery after a 5 ms
//! pause (about 200 per second), and a second one takes 2,000 deliveries and then never reads
//! its socket again. The queue is durable, so everything is journaled and fsynced.
//!
//! The bound on the broker's memory, and why. Queues keep message bodies in memory until they are
//! acked (see `broker/src/flow.rs`, "Known shortcoming"), so the backlog itself is what the queue
//! memory limit bounds: the test sets `queue_memory_max_bytes` to 64 MiB per shard. The resident
//! set may then grow over its size right after start-up by at most
//! - 96 MiB for the queue: its 64 MiB limit, plus what the publisher had in flight when the alarm
//!   rose, which is still stored (its 32 MiB of unconfirmed bytes and one frame); envelopes are
//!   allocated at their size, so the limit's count is the memory;
//! - 32 MiB of journal tail on the owner shard (16 MiB unsynced, in a buffer that may keep
//!   twice that as capacity);
//! - 16 MiB for the stalled consumer's send buffer (its 2,000 deliveries of 4 KiB, in a buffer
//!   that may double);
//! - 64 MiB for the allocator's retained free memory, per-thread arenas and everything not
//!   counted above.
//!
//! That is [`RSS_GROWTH_BOUND_BYTES`], 208 MiB. Measured here: 117 to 137 MiB of growth over
//! 30 s (35 MiB at start). With the memory limit lifted (a negative control run by hand, not in
//! the suite) the same run grew the broker from 35 MiB to 4,179 MiB, with 977,280 messages
//! confirmed and 5,274 acked, and the test failed.
//!
//! "Held back" for a durable queue: the disk may hold any backlog, but memory may not, so the
//! publisher's confirmed count may exceed what consumers acked by at most what the queue memory
//! limit admits plus what was already in flight when the alarm rose (see
//! [`backlog_allowance_messages`]). The test also checks that the publisher was told `Blocked`
//! with `memory-low`, that the broker's readers held (its `flow_holds_count`), and that a write of
//! the publisher waited more than a second on its socket while its window had room: the broker
//! had stopped reading it.
//!
//! Catches: any buffer that grows with the publisher's rate (a connection's receive or send
//! buffer, the append queue, rings, the journal tail, the queue itself past its limit), and an
//! alarm that never rises. Cannot catch: growth slower than the bound over 30 s, memory that is
//! not resident (untouched virtual memory), or growth that needs more shards or publishers.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{TestClient, short};
use ruuster_wire::frame::{Hello, Publish, PublishMessage};
use ruuster_wire::handshake::PlainCredentials;
use ruuster_wire::limits::{FRAME_SIZE_MAX, PROTOCOL_VERSION};
use ruuster_wire::{Durability, ErrorCode, Frame, FrameDecoder};

/// How long the publisher and consumers run.
const RUN: Duration = Duration::from_secs(30);

/// The payload of every message.
const PAYLOAD_BYTES: usize = 4096;

/// Messages per `Publish` frame: 256 KiB, well under the 1 MiB frame.
const BATCH_MESSAGES: u64 = 64;

/// The queue memory limit per shard this test configures.
const QUEUE_MEMORY_MAX_BYTES: u64 = 64 << 20;

/// The default `unconfirmed_bytes_max` and the flow module's per-pair in-flight bound.
const UNCONFIRMED_BYTES_MAX: u64 = 32 << 20;
const PUBLISH_IN_FLIGHT_BYTES: u64 = 32 << 20;

/// The stalled consumer's prefetch.
const STALLED_PREFETCH: u32 = 2000;

/// How much the broker's resident set may grow over its size after start-up (module docs).
const RSS_GROWTH_BOUND_BYTES: u64 = 208 << 20;

/// Messages the queue may hold beyond what consumers acked: what the memory limit admits (each
/// message counted at least its payload) plus what the publisher had in flight when the alarm
/// rose (its unconfirmed bytes and one frame), plus the stalled consumer's prefetch.
fn backlog_allowance_messages() -> u64 {
    let payload = PAYLOAD_BYTES as u64;
    (QUEUE_MEMORY_MAX_BYTES + UNCONFIRMED_BYTES_MAX + PUBLISH_IN_FLIGHT_BYTES) / payload
        + BATCH_MESSAGES
        + u64::from(STALLED_PREFETCH)
}

struct Broker {
    child: Child,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    /// Starts the binary with `config` and returns it with its client address.
    fn start(config: &Path) -> (Broker, SocketAddr) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ruuster"))
            .arg("--config")
            .arg(config)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn ruuster");
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[ruuster] {line}");
                let _ = sender.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let address = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .expect("the broker logs `listening`");
            if line.contains("listening") {
                let field = line
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix("client_addr="))
                    .expect("client_addr in the listening line");
                break field.parse().unwrap();
            }
        };
        (Broker { child }, address)
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the broker is running");
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .expect("VmRSS in /proc status");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|field| field.parse().ok())
            .expect("VmRSS in kB");
        kib * 1024
    }
}

/// What the publisher's reader saw.
#[derive(Default)]
struct PublisherState {
    sent: AtomicU64,
    confirmed: AtomicU64,
    blocked_memory_count: AtomicU64,
    closed: AtomicBool,
    /// When the write in progress started, in ms since `epoch`; 0 when none is.
    write_started_ms: AtomicU64,
    epoch: Option<Instant>,
}

impl PublisherState {
    fn new() -> PublisherState {
        PublisherState {
            epoch: Some(Instant::now()),
            ..PublisherState::default()
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.unwrap().elapsed().as_millis() as u64 + 1
    }
}

fn handshake(stream: &mut TcpStream, decoder: &mut FrameDecoder, buffer: &mut BytesMut) {
    let credentials = PlainCredentials {
        username: "guest".into(),
        password: "guest".into(),
    };
    let hello = Frame::Hello(Hello {
        version_min: PROTOCOL_VERSION,
        version_max: PROTOCOL_VERSION,
        client_name: short("bounded-memory"),
        mechanism: short("PLAIN"),
        credentials: credentials.encode().unwrap(),
        heartbeat_ms: 60_000,
        frame_size_max: 0,
    });
    let mut out = BytesMut::new();
    hello.encode(&mut out, FRAME_SIZE_MAX).unwrap();
    stream.write_all(&out).unwrap();
    loop {
        if let Some(frame) = decoder.decode(buffer).unwrap() {
            assert!(matches!(frame, Frame::Welcome(_)), "{frame:?}");
            return;
        }
        let mut chunk = [0u8; 4096];
        let count = stream.read(&mut chunk).unwrap();
        assert!(count > 0, "the broker closed during the handshake");
        buffer.extend_from_slice(&chunk[..count]);
    }
}

/// Reads the publisher's confirms and notices until the socket closes.
fn publisher_reader(mut stream: TcpStream, state: Arc<PublisherState>) {
    let mut decoder = FrameDecoder::new(FRAME_SIZE_MAX);
    let mut buffer = BytesMut::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        while let Some(frame) = decoder.decode(&mut buffer).unwrap() {
            match frame {
                Frame::Confirm(confirm) => {
                    assert!(
                        matches!(confirm.status, ruuster_wire::ConfirmStatus::Stored(_)),
                        "{confirm:?}"
                    );
                    state.confirmed.store(confirm.last, Ordering::SeqCst);
                }
                Frame::Blocked(blocked) => {
                    assert_eq!(blocked.code, ErrorCode::MEMORY_LOW, "{blocked:?}");
                    state.blocked_memory_count.fetch_add(1, Ordering::SeqCst);
                }
                Frame::Unblocked(_) | Frame::Heartbeat(_) => {}
                other => panic!("publisher got {other:?}"),
            }
        }
        match stream.read(&mut chunk) {
            Ok(count) if count > 0 => buffer.extend_from_slice(&chunk[..count]),
            _ => {
                state.closed.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// Writes publishes while the unconfirmed window has room, ignoring `Blocked`, until `stop`.
fn publisher_writer(
    mut stream: TcpStream,
    window: u64,
    state: Arc<PublisherState>,
    stop: Arc<AtomicBool>,
) {
    let message = PublishMessage {
        routing_key: short("bounded"),
        body: common::body(&[5u8; PAYLOAD_BYTES]),
    };
    let frame = Frame::Publish(Publish {
        exchange: short(""),
        mandatory: false,
        durability: Durability::Fsynced,
        messages: vec![message; BATCH_MESSAGES as usize],
    });
    let mut bytes = BytesMut::new();
    frame.encode(&mut bytes, FRAME_SIZE_MAX).unwrap();
    while !stop.load(Ordering::SeqCst) {
        let sent = state.sent.load(Ordering::SeqCst);
        if sent + BATCH_MESSAGES - state.confirmed.load(Ordering::SeqCst) > window {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        state
            .write_started_ms
            .store(state.now_ms(), Ordering::SeqCst);
        let written = stream.write_all(&bytes);
        state.write_started_ms.store(0, Ordering::SeqCst);
        if written.is_err() {
            return;
        }
        state.sent.fetch_add(BATCH_MESSAGES, Ordering::SeqCst);
    }
}

#[test]
fn a_fast_publisher_and_slow_consumers_keep_the_brokers_memory_bounded() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bounded-memory");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ruuster.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nshards = 2\nsegment_bytes = {}\n\
             [limits]\nqueue_memory_max_bytes = {QUEUE_MEMORY_MAX_BYTES}\n",
            dir.join("data"),
            16 << 20
        ),
    )
    .unwrap();
    let (broker, address) = Broker::start(&config);

    let mut consumer = TestClient::connect(address);
    consumer.declare_queue("bounded", true);
    let window = u64::from(consumer.welcome.unconfirmed_max);
    let rss_start_bytes = broker.rss_bytes();

    let mut stalled = TestClient::connect(address);
    stalled.consume("bounded", STALLED_PREFETCH);

    let state = Arc::new(PublisherState::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut decoder = FrameDecoder::new(FRAME_SIZE_MAX);
    let mut buffer = BytesMut::new();
    handshake(&mut stream, &mut decoder, &mut buffer);
    assert!(buffer.is_empty());
    let reader = {
        let (stream, state) = (stream.try_clone().unwrap(), state.clone());
        std::thread::spawn(move || publisher_reader(stream, state))
    };
    let writer = {
        let (stream, state, stop) = (stream.try_clone().unwrap(), state.clone(), stop.clone());
        std::thread::spawn(move || publisher_writer(stream, window, state, stop))
    };

    consumer.consume("bounded", 50);
    let started = Instant::now();
    let mut acked = 0u64;
    let mut rss_max_bytes = rss_start_bytes;
    let mut next_sample = Instant::now();
    let mut worst_backlog = 0i64;
    let mut socket_full_seen = false;
    while started.elapsed() < RUN {
        let delivery = consumer.next_delivery();
        std::thread::sleep(Duration::from_millis(5));
        consumer.ack(delivery.delivery_tag, false);
        acked += 1;
        if Instant::now() >= next_sample {
            next_sample += Duration::from_millis(100);
            rss_max_bytes = rss_max_bytes.max(broker.rss_bytes());
            let confirmed = state.confirmed.load(Ordering::SeqCst);
            worst_backlog = worst_backlog.max(confirmed as i64 - acked as i64);
            assert!(
                confirmed <= acked + backlog_allowance_messages(),
                "the publisher was not held back: {confirmed} confirmed, {acked} acked"
            );
            assert!(
                !state.closed.load(Ordering::SeqCst),
                "the broker closed the publisher"
            );
            // A write that has waited a second although the window has room waits for the
            // broker to read: its socket is full.
            let write_started_ms = state.write_started_ms.load(Ordering::SeqCst);
            let window_room =
                state.sent.load(Ordering::SeqCst) + BATCH_MESSAGES <= confirmed + window;
            if write_started_ms > 0 && state.now_ms() > write_started_ms + 1000 && window_room {
                socket_full_seen = true;
            }
        }
    }
    let rss_end_bytes = broker.rss_bytes();
    rss_max_bytes = rss_max_bytes.max(rss_end_bytes);

    let stats = consumer.stats();
    let sent = state.sent.load(Ordering::SeqCst);
    let confirmed = state.confirmed.load(Ordering::SeqCst);
    let published = stats["published_count"];
    eprintln!(
        "bounded memory: rss_start_mib={} rss_max_mib={} rss_end_mib={} bound_growth_mib={} \
         sent_count={sent} published_count={published} confirmed_count={confirmed} \
         acked_count={acked} worst_backlog_messages={worst_backlog} \
         allowance_messages={} blocked_notices_count={} queue_memory_bytes={} \
         flow_holds_count={} flow_blocked_count={} socket_full_seen={socket_full_seen}",
        rss_start_bytes >> 20,
        rss_max_bytes >> 20,
        rss_end_bytes >> 20,
        RSS_GROWTH_BOUND_BYTES >> 20,
        backlog_allowance_messages(),
        state.blocked_memory_count.load(Ordering::SeqCst),
        stats["queue_memory_bytes"],
        stats["flow_holds_count"],
        stats["flow_blocked_count"],
    );

    assert!(
        rss_max_bytes <= rss_start_bytes + RSS_GROWTH_BOUND_BYTES,
        "the broker's RSS grew from {rss_start_bytes} to {rss_max_bytes} bytes"
    );
    assert!(
        state.blocked_memory_count.load(Ordering::SeqCst) >= 1,
        "the publisher was never blocked"
    );
    assert!(stats["flow_holds_count"] >= 1);
    assert!(
        socket_full_seen,
        "the publisher's writes never waited on a full socket while its window had room"
    );

    stop.store(true, Ordering::SeqCst);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    reader.join().unwrap();
    drop(stalled);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
