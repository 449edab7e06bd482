//! Micro-benchmark of the queue state machine alone: no journal, no sockets, one thread.
//!
//! Scenarios, each repeated and reported as median, minimum and maximum because the machine is
//! shared with other work:
//! - `cycle`: publish, dispatch and ack in rounds of one dispatch batch, with consumers kept at
//!   their prefetch window, as a shard would drive a queue with steady traffic. Run for a memory
//!   queue and for a durable queue whose watermark advances every round.
//! - `requeue`: a consumer's whole window is requeued (nack with requeue) in front of a deep
//!   backlog and delivered again, oldest first and newest first; the figure is the cost of one
//!   requeue call.
//!
//! Usage: `cargo run --release -p ruuster-broker --example queue_bench -- --out DIR`
//! [--messages N] [--repetitions N] [--body-bytes N] [--backlog N]. Writes `DIR/report.json`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use ruuster_broker::queue::{
    ConsumerId, DISPATCH_BATCH_MAX, Delivery, Durability, MessageMeta, Queue,
};
use serde_json::{Value, json};

struct Parameters {
    out: PathBuf,
    messages: u64,
    repetitions: usize,
    body_bytes: usize,
    backlog: u64,
}

fn parse_arguments() -> Parameters {
    let mut parameters = Parameters {
        out: PathBuf::new(),
        messages: 2_000_000,
        repetitions: 5,
        body_bytes: 256,
        backlog: 100_000,
    };
    let mut arguments = std::env::args().skip(1);
    while let Some(flag) = arguments.next() {
        let value = arguments
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => parameters.out = PathBuf::from(value),
            "--messages" => parameters.messages = value.parse().expect("--messages"),
            "--repetitions" => parameters.repetitions = value.parse().expect("--repetitions"),
            "--body-bytes" => parameters.body_bytes = value.parse().expect("--body-bytes"),
            "--backlog" => parameters.backlog = value.parse().expect("--backlog"),
            _ => panic!("unknown flag {flag}"),
        }
    }
    assert!(
        !parameters.out.as_os_str().is_empty(),
        "--out DIR is required"
    );
    assert!(parameters.repetitions > 0 && parameters.messages > 0);
    parameters
}

/// Bodies sliced from one frozen buffer, as the runtime slices them from a receive buffer: each
/// clone is a reference-count increment, not a copy.
fn bodies(count: usize, body_bytes: usize) -> Vec<Bytes> {
    let mut buffer = BytesMut::with_capacity(count * body_bytes);
    buffer.resize(count * body_bytes, 0xab);
    let buffer = buffer.freeze();
    (0..count)
        .map(|index| buffer.slice(index * body_bytes..(index + 1) * body_bytes))
        .collect()
}

/// Publishes, dispatches and acks `messages` messages; returns acked messages per second.
fn run_cycle(
    durability: Durability,
    consumer_count: u64,
    prefetch_count: u32,
    messages: u64,
    body: &[Bytes],
) -> f64 {
    let mut queue = Queue::new(durability);
    for id in 0..consumer_count {
        queue.add_consumer(ConsumerId(id), prefetch_count).unwrap();
    }
    let window_max = (consumer_count * u64::from(prefetch_count)) as usize;
    let mut deliveries: Vec<Delivery> = Vec::with_capacity(DISPATCH_BATCH_MAX);
    let mut outstanding: VecDeque<(ConsumerId, u64)> = VecDeque::with_capacity(window_max);
    let mut published = 0u64;
    let mut acked = 0u64;
    let mut journal_offset = 0u64;
    let round = DISPATCH_BATCH_MAX as u64;

    let started = Instant::now();
    while acked < messages {
        let publish_count = round.min(messages - published);
        for _ in 0..publish_count {
            let body = body[(published % body.len() as u64) as usize].clone();
            journal_offset += body.len() as u64 + 1;
            let offset = (durability != Durability::Memory).then_some(journal_offset);
            queue.enqueue(offset, body, MessageMeta::default()).unwrap();
            published += 1;
        }
        queue.advance_watermarks(journal_offset + 1, journal_offset + 1);

        while queue.can_dispatch() {
            deliveries.clear();
            queue.dispatch(&mut deliveries);
            outstanding.extend(deliveries.iter().map(|d| (d.consumer, d.sequence)));
        }
        assert!(
            outstanding.len() <= window_max,
            "a prefetch window was exceeded"
        );
        if published > window_max as u64 && published < messages {
            assert_eq!(
                outstanding.len(),
                window_max,
                "the windows are not kept full"
            );
        }

        // Keep the windows full while publishing: settle oldest first only what the next
        // round needs, so consumers run at their prefetch limit as slow consumers do.
        let settle_count = if published == messages {
            outstanding.len()
        } else {
            let keep_count = window_max.saturating_sub(round as usize);
            outstanding.len().saturating_sub(keep_count)
        };
        for (consumer, sequence) in outstanding.drain(..settle_count) {
            black_box(queue.ack(consumer, sequence).unwrap());
            acked += 1;
        }
    }
    let elapsed = started.elapsed();

    let counts = queue.counts();
    assert_eq!((counts.ready_count, counts.unacked_count), (0, 0));
    assert_eq!(queue.next_sequence(), messages);
    messages as f64 / elapsed.as_secs_f64()
}

/// Requeues a full window in front of `backlog` ready messages, `rounds` times; returns
/// nanoseconds per requeue call.
fn run_requeue(
    prefetch_count: u32,
    newest_first: bool,
    backlog: u64,
    rounds: u64,
    body: &[Bytes],
) -> f64 {
    let mut queue = Queue::new(Durability::Memory);
    for index in 0..backlog {
        let body = body[(index % body.len() as u64) as usize].clone();
        queue.enqueue(None, body, MessageMeta::default()).unwrap();
    }
    queue.add_consumer(ConsumerId(0), prefetch_count).unwrap();
    let mut deliveries: Vec<Delivery> = Vec::with_capacity(prefetch_count as usize);
    let mut requeue_nanoseconds = 0u128;
    let mut requeue_count = 0u64;

    for _ in 0..rounds {
        deliveries.clear();
        while queue.can_dispatch() {
            queue.dispatch(&mut deliveries);
        }
        assert_eq!(deliveries.len(), prefetch_count as usize);
        if newest_first {
            deliveries.reverse();
        }

        let started = Instant::now();
        for delivery in &deliveries {
            queue.requeue(delivery.consumer, delivery.sequence).unwrap();
        }
        requeue_nanoseconds += started.elapsed().as_nanos();
        requeue_count += deliveries.len() as u64;
    }

    assert_eq!(queue.counts().ready_count as u64, backlog);
    requeue_nanoseconds as f64 / requeue_count as f64
}

/// Median, minimum and maximum of the repetitions, under names carrying the unit.
fn summary(name: &str, unit: &str, mut samples: Vec<f64>) -> serde_json::Map<String, Value> {
    samples.sort_by(f64::total_cmp);
    let rounded: Vec<f64> = samples.iter().map(|sample| sample.round()).collect();
    let mut figure = serde_json::Map::new();
    figure.insert(
        format!("{name}_{unit}_median"),
        json!(rounded[rounded.len() / 2]),
    );
    figure.insert(format!("{name}_{unit}_min"), json!(rounded[0]));
    figure.insert(
        format!("{name}_{unit}_max"),
        json!(rounded[rounded.len() - 1]),
    );
    figure.insert(format!("{name}_{unit}_samples"), json!(rounded));
    figure
}

fn command_output(program: &str, arguments: &[&str]) -> String {
    Command::new(program)
        .args(arguments)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    json!({
        "cpu_model": cpu_model,
        "cpu_count_online": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        "rustc": command_output("rustc", &["--version"]),
    })
}

fn main() {
    let parameters = parse_arguments();
    let body = bodies(4096, parameters.body_bytes);
    let uptime_before = command_output("uptime", &[]);
    let started_at = command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);

    let scenarios: [(&str, Durability, u64, u32); 4] = [
        (
            "cycle_memory_1_consumer_prefetch_256",
            Durability::Memory,
            1,
            256,
        ),
        (
            "cycle_durable_1_consumer_prefetch_256",
            Durability::Durable,
            1,
            256,
        ),
        (
            "cycle_memory_8_consumers_prefetch_256",
            Durability::Memory,
            8,
            256,
        ),
        (
            "cycle_memory_8_consumers_prefetch_32",
            Durability::Memory,
            8,
            32,
        ),
    ];
    let mut figures = serde_json::Map::new();
    for (name, durability, consumer_count, prefetch_count) in scenarios {
        // One discarded run first, so that list growth and page faults are not measured.
        run_cycle(
            durability,
            consumer_count,
            prefetch_count,
            parameters.messages,
            &body,
        );
        let samples: Vec<f64> = (0..parameters.repetitions)
            .map(|_| {
                let messages = parameters.messages;
                run_cycle(durability, consumer_count, prefetch_count, messages, &body)
            })
            .collect();
        let figure = summary(name, "messages_per_second", samples);
        println!("{}", Value::Object(figure.clone()));
        figures.extend(figure);
    }

    let requeue_rounds = (parameters.messages / 256).max(1);
    for (name, newest_first) in [
        ("requeue_window_256_at_head_oldest_first", false),
        ("requeue_window_256_at_head_newest_first", true),
    ] {
        let samples: Vec<f64> = (0..parameters.repetitions)
            .map(|_| run_requeue(256, newest_first, parameters.backlog, requeue_rounds, &body))
            .collect();
        let figure = summary(name, "nanoseconds_per_requeue", samples);
        println!("{}", Value::Object(figure.clone()));
        figures.extend(figure);
    }

    let argv: Vec<String> = std::env::args().collect();
    let report = json!({
        "benchmark": "queue state machine (broker/src/queue.rs), single thread, no I/O",
        "started_at_utc": started_at,
        "git_revision": command_output("git", &["rev-parse", "HEAD"]),
        "git_dirty": !command_output("git", &["status", "--porcelain", "--untracked-files=no"])
            .is_empty(),
        "command": format!(
            "cargo run --release -p ruuster-broker --example queue_bench -- {}",
            argv[1..].join(" ")
        ),
        "argv": argv,
        "machine": machine(),
        "uptime_before": uptime_before,
        "uptime_after": command_output("uptime", &[]),
        "parameters": {
            "messages_per_repetition": parameters.messages,
            "repetitions": parameters.repetitions,
            "body_bytes": parameters.body_bytes,
            "requeue_backlog_messages": parameters.backlog,
            "requeue_rounds": requeue_rounds,
            "dispatch_batch_max": DISPATCH_BATCH_MAX,
            "publish_and_ack_round_messages": DISPATCH_BATCH_MAX,
        },
        "figures": figures,
    });

    std::fs::create_dir_all(&parameters.out).expect("create the output directory");
    let path = parameters.out.join("report.json");
    let text = serde_json::to_string_pretty(&report).expect("serialize the report");
    std::fs::write(&path, text + "\n").expect("write report.json");
    println!("wrote {}", path.display());
}
