//! Measures the client's own CPU time per published message.
//!
//! A discard broker runs on its own thread (and its own runtime): it completes the handshake,
//! decodes every `Publish` and confirms everything it has read after each read. The client runs on
//! a current-thread runtime on the main thread, so every cycle its tasks spend (API calls, the
//! writer, the reader, confirm dispatch) is charged to that one thread, read from
//! `/proc/thread-self/schedstat` before and after. That figure includes the kernel's work for the
//! client's `write` and `read` calls; over loopback it also includes part of the receive path that
//! the kernel runs in the sender's context, so it overstates the client's cost against a remote
//! broker.
//!
//! ```text
//! cargo run --release -p ruuster-client --example self_bench -- \
//!     [messages] [payload_bytes] [batch] [publish|consume]
//! ```
//! Defaults: 200000 messages of 1024 bytes, publish mode. Publish mode publishes in batches of
//! `batch` with a window of 4096. Consume mode consumes with a prefetch of 1024 from a broker that
//! keeps the prefetch full, acknowledging with `multiple` every `batch` deliveries (1: one ack per
//! delivery).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ruuster_client::{Client, ConnectOptions, ConsumeOptions, PublishOptions, ShortStr};
use ruuster_wire::frame::{CloseOk, Confirm, ConsumeOk, Deliver, Welcome};
use ruuster_wire::{ConfirmStatus, Durability, Frame, FrameDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The window the bench publishes with: the loadgen's default order of magnitude.
const WINDOW: u32 = 4096;

/// Confirms the bench keeps awaiting at once before it awaits the oldest: enough to keep the
/// window full.
const PENDING_CONFIRMS_MAX: usize = 256;

/// The consumer's prefetch in consume mode: deep enough that the broker never waits for an ack.
const PREFETCH: u32 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Publish,
    Consume,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |index: usize, default: usize| {
        args.get(index)
            .map_or(default, |a| a.parse().expect("a number"))
    };
    let (messages, payload_bytes, batch) = (number(0, 200_000), number(1, 1024), number(2, 64));
    let mode = match args.get(3).map(String::as_str) {
        None | Some("publish") => Mode::Publish,
        Some("consume") => Mode::Consume,
        Some(other) => panic!("mode is publish or consume, not {other}"),
    };
    assert!(
        batch >= 1 && batch <= WINDOW as usize,
        "batch must be 1 to {WINDOW}"
    );

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    // Named, so that a profiler can tell the broker's samples from the client's.
    let server = std::thread::Builder::new()
        .name("discard-broker".to_owned())
        .spawn(move || discard_broker(listener, messages, payload_bytes))
        .unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ticks_start = thread_cpu_ticks();
    let (cpu_ns, wall) = match mode {
        Mode::Publish => runtime.block_on(publish_all(address, messages, payload_bytes, batch)),
        Mode::Consume => runtime.block_on(consume_all(address, messages, batch)),
    };
    let ticks_end = thread_cpu_ticks();
    server.join().unwrap();

    let per_message_ns = cpu_ns as f64 / messages as f64;
    println!(
        "mode={mode:?} messages={messages} payload_bytes={payload_bytes} batch={batch} \
         wall_ms={} rate_msgs_per_s={:.0} client_cpu_ms={:.1} client_cpu_ns_per_msg={:.0} \
         client_user_ticks={} client_system_ticks={}",
        wall.as_millis(),
        messages as f64 / wall.as_secs_f64(),
        cpu_ns as f64 / 1e6,
        per_message_ns,
        ticks_end.0 - ticks_start.0,
        ticks_end.1 - ticks_start.1,
    );
}

/// Publishes `messages` and waits for every confirm; returns this thread's CPU time in ns and the
/// wall time.
async fn publish_all(
    address: std::net::SocketAddr,
    messages: usize,
    payload_bytes: usize,
    batch: usize,
) -> (u64, Duration) {
    let options = ConnectOptions {
        publish_window: WINDOW,
        ..ConnectOptions::new(address.to_string())
    };
    let connection = Client::connect(&options).await.unwrap();
    let key = ShortStr::from_static("bench");
    let body = ruuster_client::body(&vec![b'x'; payload_bytes]);
    let batch_messages: Vec<(ShortStr, Bytes)> = vec![(key, body); batch];
    let publish_options = PublishOptions::default();

    let cpu_start = thread_cpu_ns();
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    let mut published = 0;
    while published < messages {
        let count = batch.min(messages - published);
        let confirm = connection
            .publish_batch("", &batch_messages[..count], &publish_options)
            .await
            .unwrap();
        pending.push_back(confirm);
        if pending.len() > PENDING_CONFIRMS_MAX {
            pending.pop_front().unwrap().await.unwrap();
        }
        published += count;
    }
    for confirm in pending {
        confirm.await.unwrap();
    }
    let wall = started.elapsed();
    let cpu_ns = thread_cpu_ns() - cpu_start;
    connection.close().await.unwrap();
    (cpu_ns, wall)
}

/// Consumes `messages` deliveries, acknowledging every `batch` with `multiple`; returns this
/// thread's CPU time in ns and the wall time.
async fn consume_all(
    address: std::net::SocketAddr,
    messages: usize,
    batch: usize,
) -> (u64, Duration) {
    let connection = Client::connect(&ConnectOptions::new(address.to_string()))
        .await
        .unwrap();
    let cpu_start = thread_cpu_ns();
    let started = Instant::now();
    let mut consumer = connection
        .consume("bench", "bench", PREFETCH, &ConsumeOptions::default())
        .await
        .unwrap();
    for received in 1..=messages {
        let delivery = consumer.recv().await.unwrap();
        assert_eq!(delivery.delivery_tag, received as u64);
        if received % batch == 0 || received == messages {
            delivery.ack_multiple().unwrap();
        }
    }
    let wall = started.elapsed();
    let cpu_ns = thread_cpu_ns() - cpu_start;
    drop(consumer);
    connection.close().await.unwrap();
    (cpu_ns, wall)
}

/// CPU time of the calling thread in ns: the first field of `/proc/thread-self/schedstat`.
fn thread_cpu_ns() -> u64 {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    schedstat
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// User and system CPU time of the calling thread in clock ticks (usually 10 ms): fields 14 and
/// 15 of `/proc/thread-self/stat`, counted after the parenthesised command name. Coarse, but it
/// says how the schedstat total splits between the client's code and the kernel.
fn thread_cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name, field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    (fields[11].parse().unwrap(), fields[12].parse().unwrap())
}

/// A broker that accepts one connection and plays both roles: it confirms every published message
/// as fsynced, and it feeds a consumer `messages` deliveries of `payload_bytes`, keeping its
/// prefetch full as acks arrive. It answers `Close` and exits.
fn discard_broker(listener: std::net::TcpListener, messages: usize, payload_bytes: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut decoder = FrameDecoder::default();
        let mut input = BytesMut::with_capacity(1 << 20);
        let mut output = BytesMut::new();
        let (mut published, mut confirmed) = (0u64, 0u64);
        let body = ruuster_client::body(&vec![b'x'; payload_bytes]);
        // (consumer prefetch, deliveries sent, deliveries acknowledged)
        let mut consumer: Option<(u64, u64, u64)> = None;
        loop {
            if stream.read_buf(&mut input).await.unwrap() == 0 {
                return;
            }
            let mut closing = false;
            while let Some(frame) = decoder.decode(&mut input).unwrap() {
                match frame {
                    Frame::Hello(_) => {
                        let welcome = Welcome {
                            version: 1,
                            heartbeat_ms: 10_000,
                            frame_size_max: 1 << 20,
                            unconfirmed_max: 65_536,
                            prefetch_max: 1000,
                            shard_index: 0,
                            shard_ports: vec![0],
                            server_name: ShortStr::from_static("discard"),
                        };
                        Frame::Welcome(welcome)
                            .encode(&mut output, 1 << 14)
                            .unwrap();
                        decoder.set_frame_size_max(1 << 20);
                    }
                    Frame::Publish(publish) => published += publish.messages.len() as u64,
                    Frame::Consume(consume) => {
                        let ok = ConsumeOk {
                            request_id: consume.request_id,
                            consumer_id: 1,
                            consumer_tag: consume.consumer_tag,
                        };
                        Frame::ConsumeOk(ok).encode(&mut output, 1 << 20).unwrap();
                        consumer = Some((u64::from(consume.prefetch), 0, 0));
                    }
                    Frame::Ack(ack) => {
                        if let Some((_, _, acknowledged)) = consumer.as_mut() {
                            *acknowledged = if ack.multiple {
                                ack.delivery_tag
                            } else {
                                *acknowledged + 1
                            };
                        }
                    }
                    Frame::Close(_) => {
                        Frame::CloseOk(CloseOk)
                            .encode(&mut output, 1 << 20)
                            .unwrap();
                        closing = true;
                    }
                    _ => {}
                }
            }
            if let Some((prefetch, sent, acknowledged)) = consumer.as_mut() {
                while *sent < messages as u64 && *sent - *acknowledged < *prefetch {
                    *sent += 1;
                    let deliver = Deliver {
                        consumer_id: 1,
                        delivery_tag: *sent,
                        delivery_count: 1,
                        redelivered: false,
                        exchange: ShortStr::default(),
                        routing_key: ShortStr::from_static("bench"),
                        body: body.clone(),
                    };
                    Frame::Deliver(deliver)
                        .encode(&mut output, 1 << 20)
                        .unwrap();
                }
            }
            if published > confirmed {
                let confirm = Confirm {
                    first: confirmed + 1,
                    last: published,
                    status: ConfirmStatus::Stored(Durability::Fsynced),
                };
                Frame::Confirm(confirm)
                    .encode(&mut output, 1 << 20)
                    .unwrap();
                confirmed = published;
            }
            if !output.is_empty() {
                stream.write_all(&output).await.unwrap();
                output.clear();
            }
            if closing {
                return;
            }
        }
    });
}
