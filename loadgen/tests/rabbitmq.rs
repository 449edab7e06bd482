//! Runs the loadgen binary against a real RabbitMQ started through `scripts/peers/rabbitmq.sh`
//! and checks the counts in its report, not its speed. Skipped, with a note, when
//! `rabbitmq-server` is not installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// A port of its own, so that a benchmark broker on 5672 is neither used nor disturbed.
const TEST_AMQP_PORT: u16 = 5698;
const SERVER_PATH: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadgen sits in the repo")
        .to_owned()
}

fn script(command: &str) -> std::process::Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/peers/rabbitmq.sh"))
        .arg(command)
        .env("AMQP_PORT", TEST_AMQP_PORT.to_string())
        .output()
        .expect("bash runs")
}

/// Stops the test broker however the test ends.
struct Broker {
    pid: u32,
}

impl Broker {
    fn start() -> Broker {
        let output = script("start");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "rabbitmq.sh start failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        let pid = stdout
            .trim()
            .lines()
            .last()
            .and_then(|line| line.parse().ok());
        Broker {
            pid: pid.expect("rabbitmq.sh start prints the broker pid"),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let output = script("stop");
        if !output.status.success() {
            eprintln!(
                "rabbitmq.sh stop: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

fn run_loadgen(label: &str, broker: &Broker, arguments: &[&str]) -> Value {
    let results_dir = repo_root().join("target/loadgen-test-results");
    let uri = format!("amqp://127.0.0.1:{TEST_AMQP_PORT}/%2f");
    let pid = broker.pid.to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_ruuster-loadgen"))
        .args([
            "--driver",
            "amqp",
            "--amqp-uri",
            &uri,
            "--broker-pid",
            &pid,
            "--label",
            label,
            "--overwrite",
        ])
        .arg("--results-dir")
        .arg(&results_dir)
        .args(["--drain-timeout-secs", "30", "--name-prefix", label])
        .args(arguments)
        .output()
        .expect("the loadgen binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "loadgen {label} failed ({:?}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let folder = stdout
        .lines()
        .find_map(|line| line.strip_prefix("results: "))
        .expect("the loadgen names its results folder");
    let folder = Path::new(folder);
    for file in ["report.json", "end_to_end.hgrm", "latency-percentiles.svg"] {
        assert!(
            folder.join(file).is_file(),
            "{} lacks {file}",
            folder.display()
        );
    }
    let text = std::fs::read_to_string(folder.join("report.json")).expect("report.json reads");
    serde_json::from_str(&text).expect("report.json parses")
}

fn count(report: &Value, field: &str) -> u64 {
    report["results"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("results.{field} is missing"))
}

#[test]
fn the_loadgen_delivers_every_confirmed_message_through_rabbitmq() {
    if !Path::new(SERVER_PATH).exists() {
        eprintln!(
            "NOTE: skipping the RabbitMQ loadgen test: rabbitmq-server is not installed \
             ({SERVER_PATH} is missing; `apt-get install rabbitmq-server` enables it)"
        );
        return;
    }
    let broker = Broker::start();

    let direct = run_loadgen(
        "it-direct",
        &broker,
        &[
            "--count",
            "3000",
            "--producers",
            "2",
            "--consumers",
            "2",
            "--queues",
            "2",
        ],
    );
    assert_eq!(count(&direct, "published_count"), 3_000);
    assert_eq!(count(&direct, "confirmed_count"), 3_000);
    assert_eq!(count(&direct, "delivered_count"), 3_000);
    assert_eq!(count(&direct, "nacked_count"), 0);
    assert_eq!(count(&direct, "error_count"), 0);
    assert_eq!(count(&direct, "malformed_count"), 0);
    assert_eq!(
        direct["results"]["latency"]["end_to_end"]["count"].as_u64(),
        Some(3_000)
    );
    assert_eq!(
        direct["results"]["latency"]["publish_to_confirm"]["count"].as_u64(),
        Some(3_000)
    );
    assert!(direct["results"]["broker_cpu_ns"].as_u64().is_some());

    let fanout = run_loadgen(
        "it-fanout-paced",
        &broker,
        &[
            "--count",
            "1000",
            "--rate",
            "2000",
            "--exchange-type",
            "fanout",
            "--queues",
            "3",
            "--consumers",
            "3",
            "--durability",
            "fsynced",
            "--ack",
            "single",
        ],
    );
    assert_eq!(count(&fanout, "published_count"), 1_000);
    assert_eq!(count(&fanout, "confirmed_count"), 1_000);
    assert_eq!(count(&fanout, "delivered_count"), 3_000);
    assert_eq!(count(&fanout, "pacer_released_count"), 1_000);
    assert_eq!(
        fanout["results"]["latency"]["pacer_lag"]["count"].as_u64(),
        Some(1_000)
    );
    assert_eq!(count(&fanout, "error_count"), 0);

    // One consumer over three queues on one channel: its merged deliveries must reach the core
    // in tag order, or a cumulative ack settles deliveries still buffered and RabbitMQ closes
    // the channel when their own ack names an unknown tag.
    let merged = run_loadgen(
        "it-merged-consumer",
        &broker,
        &[
            "--count",
            "3000",
            "--exchange-type",
            "fanout",
            "--queues",
            "3",
            "--consumers",
            "1",
        ],
    );
    assert_eq!(count(&merged, "confirmed_count"), 3_000);
    assert_eq!(count(&merged, "delivered_count"), 9_000);
    assert_eq!(count(&merged, "error_count"), 0);
}
