//! Runs the measurement core with the Ruuster driver against the real broker, started in this
//! process with two shards on an ephemeral loopback port, and checks counts, not speed: every
//! message published is confirmed at the requested level and delivered once, the broker's own
//! counters agree with the loadgen's, and each connection landed on the shard that owns its
//! queues.
//!
//! It catches a driver that loses, duplicates or misattributes confirms or deliveries, maps
//! durability wrongly, acks deliveries it has not received, or places connections on the wrong
//! shard. Acks were checked by hand: passing the core's cumulative acks through on a connection
//! shared by two consumers, or without restoring tag order after merging one consumer's
//! subscriptions, fails here, as the broker closes the connection with 500 unknown-delivery-tag
//! when a later ack names a tag that an earlier cumulative ack already settled. It cannot catch a
//! measurement that is slow or skewed: timing is what the benchmark reports, not what a test
//! asserts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use clap::Parser;

use ruuster_broker::config::Config;
use ruuster_broker::server::Broker;
use ruuster_loadgen::config::{Cli, RunConfig, RuusterConfig};
use ruuster_loadgen::driver::ruuster::RuusterDriver;
use ruuster_loadgen::driver::{
    ConfirmSink, ConnectionSpec, Driver, Durability, ExchangeKind, OutgoingMessage, Producer,
    ProducerSpec, PublishBatch, QueueSpec, Role, Topology,
};
use ruuster_loadgen::metrics::Metrics;
use ruuster_loadgen::run::{self, RunOutcome};
use ruuster_loadgen::window::ProducerWindow;

/// Longest a whole run may take before the test fails instead of hanging; a run of this size
/// takes well under a second on an idle machine.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// A broker in this process, stopped (and its data directory released) when dropped.
struct TestBroker {
    broker: Option<Broker>,
}

impl TestBroker {
    /// Starts a 2-shard broker with its data under `target/`.
    fn start(name: &str) -> TestBroker {
        let data_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("loadgen-ruuster")
            .join(name);
        let _ = std::fs::remove_dir_all(&data_dir);
        let config = Config {
            data_dir,
            listen: "127.0.0.1:0".into(),
            shards: Some(2),
            // Shards share the CPUs this test may use, so a 1-CPU machine still runs 2 shards.
            cpus: None,
            segment_bytes: 4 << 20,
            ..Config::default()
        };
        TestBroker {
            broker: Some(Broker::start(config).expect("the broker starts")),
        }
    }

    fn address(&self) -> String {
        self.broker
            .as_ref()
            .expect("running")
            .client_addr()
            .to_string()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(broker) = self.broker.take() {
            broker.shutdown_handle().shutdown();
            let _ = broker.wait();
        }
    }
}

async fn run_against(broker: &TestBroker, arguments: &[&str]) -> RunOutcome {
    let address = broker.address();
    let mut all = vec!["ruuster-loadgen", "--ruuster-address", &address];
    all.extend_from_slice(arguments);
    let config = RunConfig::resolve(&Cli::try_parse_from(all).expect("flags parse"))
        .expect("the configuration is valid");
    let driver = Arc::new(RuusterDriver::new(config.ruuster.clone()));
    tokio::time::timeout(RUN_DEADLINE, run::run(driver, &config))
        .await
        .expect("the run finishes before its deadline")
        .expect("the run completes")
}

fn count(outcome: &RunOutcome, counter: fn(&Metrics) -> &AtomicU64) -> u64 {
    Metrics::load(counter(&outcome.metrics))
}

fn broker_counters(outcome: &RunOutcome) -> HashMap<String, f64> {
    assert_eq!(outcome.counters_error, None);
    outcome
        .counters
        .iter()
        .map(|counter| (counter.name.clone(), counter.value))
        .collect()
}

/// Every message of `total` published, confirmed, delivered `routing_factor` times, no errors.
fn assert_clean(outcome: &RunOutcome, total: u64, routing_factor: u64) {
    assert!(
        outcome.drained,
        "errors: {:?}",
        outcome.metrics.error_samples()
    );
    assert_eq!(count(outcome, |m| &m.error_count), 0);
    assert_eq!(count(outcome, |m| &m.published_count), total);
    assert_eq!(count(outcome, |m| &m.confirmed_count), total);
    assert_eq!(count(outcome, |m| &m.nacked_count), 0);
    assert_eq!(
        count(outcome, |m| &m.delivered_count),
        total * routing_factor
    );
    assert_eq!(count(outcome, |m| &m.malformed_count), 0);
    assert_eq!(count(outcome, |m| &m.redelivered_count), 0);
}

/// The scenarios below, in turn, on one broker: every broker start on a loaded 2-CPU machine
/// risks the start stall in the README's known issues, and costs more than a scenario.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ruuster_driver_against_the_real_broker() {
    let broker = TestBroker::start("loadgen");
    every_message_is_confirmed_and_delivered_and_the_broker_agrees(&broker).await;
    a_paced_run_delivers_every_message(&broker).await;
    an_unroutable_publish_is_a_nack_and_its_return_is_counted(&broker).await;
}

/// Two producers and two consumers over four queues at `written`: consumer 0 reads queues 0 and
/// 2 and consumer 1 reads 1 and 3 on one shared connection, so neither may ack cumulatively.
/// Then one producer fans out to three durable queues at `fsynced`, read by one consumer on a
/// connection of its own, whose merged deliveries must reach the core in tag order for its
/// cumulative acks to be right.
async fn every_message_is_confirmed_and_delivered_and_the_broker_agrees(broker: &TestBroker) {
    let total = 4_000;
    let direct = run_against(
        broker,
        &[
            "--count",
            "4000",
            "--queues",
            "4",
            "--producers",
            "2",
            "--consumers",
            "2",
            "--consumer-connections",
            "1",
            "--durability",
            "written",
            "--name-prefix",
            "direct",
        ],
    )
    .await;
    assert_clean(&direct, total, 1);
    let counters = broker_counters(&direct);
    assert_eq!(counters["published_count"], total as f64);
    assert_eq!(counters["stored_count"], total as f64);
    assert_eq!(counters["delivered_count"], total as f64);
    // The last acks travel on the consumer's connection while the counters are read on another,
    // so they may land just after; they must land.
    assert!(counters["acked_count"] <= total as f64);
    let settled = wait_until_every_delivery_is_acked(broker).await;
    assert_eq!(settled["acked_count"], total);
    assert_eq!(counters["unroutable_count"], 0.0);
    assert_eq!(counters["client_returned_count"], 0.0);
    let at_or_above_written = counters["client_confirmed_at_written_count"]
        + counters["client_confirmed_at_fsynced_count"];
    assert_eq!(at_or_above_written, total as f64);
    assert_eq!(counters["client_connections_off_owner_shard_count"], 0.0);
    assert_eq!(counters["client_blocked_notices_count"], 0.0);
    // Four queues over two shards: the broker places new queues on the emptier shard.
    assert_eq!(counters["topology_queues_owned_by_shard0_count"], 2.0);
    assert_eq!(counters["topology_queues_owned_by_shard1_count"], 2.0);
    assert!(counters.contains_key("shard0_stage_stored_count"));

    let control_and_workers = 1 + 2 + 1;
    assert_eq!(direct.placements.len(), control_and_workers);
    for placement in &direct.placements {
        assert!(
            placement.shard.is_some_and(|shard| shard < 2),
            "{placement:?}"
        );
    }
    let producers = direct
        .placements
        .iter()
        .filter(|placement| placement.role == Role::Producer)
        .count();
    assert_eq!(producers, 2);

    let fanout_total = 1_500;
    let fanout = run_against(
        broker,
        &[
            "--count",
            "1500",
            "--exchange-type",
            "fanout",
            "--queues",
            "3",
            "--consumers",
            "1",
            "--durability",
            "fsynced",
            "--name-prefix",
            "fanout",
        ],
    )
    .await;
    assert_clean(&fanout, fanout_total, 3);
    let counters = broker_counters(&fanout);
    // The broker counts a publish, and stores a record, once per shard owning a target queue.
    let owner_shards = (0..2)
        .filter(|shard| {
            let name = format!("topology_queues_owned_by_shard{shard}_count");
            counters.get(&name).is_some_and(|&queues| queues > 0.0)
        })
        .count();
    assert!(owner_shards >= 1);
    assert_eq!(
        counters["published_count"],
        (fanout_total * owner_shards as u64) as f64
    );
    assert_eq!(counters["stored_count"], counters["published_count"]);
    assert_eq!(counters["delivered_count"], (fanout_total * 3) as f64);
    assert_eq!(
        counters["client_confirmed_at_fsynced_count"],
        fanout_total as f64
    );
    assert!(counters["journal_fdatasyncs_count"] >= 1.0);
    assert!(counters["journal_records_per_fdatasync"] >= 1.0);
    assert_eq!(counters["client_connections_off_owner_shard_count"], 0.0);
}

/// At a fixed rate with one message per publish (W4's shape, shortened), every paced message
/// arrives, and `--ruuster-any-shard` keeps connections where they were accepted.
async fn a_paced_run_delivers_every_message(broker: &TestBroker) {
    let outcome = run_against(
        broker,
        &[
            "--workload",
            "W4",
            "--rate",
            "2000",
            "--duration-secs",
            "0.5",
            "--ruuster-any-shard",
            "--name-prefix",
            "paced",
        ],
    )
    .await;
    let published = count(&outcome, |m| &m.published_count);
    assert!(published > 0);
    assert_clean(&outcome, published, 1);
    let pacer = outcome.pacer.as_ref().expect("a paced run has a pacer");
    assert_eq!(pacer.released_count, published);
}

/// A publish to a routing key with no binding comes back: its confirm range is a nack (an error
/// in the report) and its return is counted, on the driver's side and the broker's. The core
/// never publishes to an unbound key, so this drives the driver directly.
async fn an_unroutable_publish_is_a_nack_and_its_return_is_counted(broker: &TestBroker) {
    ruuster_loadgen::clock::init();
    let driver = RuusterDriver::new(RuusterConfig {
        address: broker.address(),
        any_shard: false,
    });
    let topology = Topology {
        exchange_name: "returns-exchange".into(),
        exchange_kind: ExchangeKind::Direct,
        queues: vec![QueueSpec {
            name: "returns-q0".into(),
            binding_key: "bound".into(),
        }],
        durable: false,
    };
    let spec = ConnectionSpec {
        role: Role::Producer,
        index: 0,
        queues: vec!["returns-q0".into()],
    };
    let control_spec = ConnectionSpec {
        role: Role::Control,
        ..spec.clone()
    };
    let connection = within("connect", driver.connect(&control_spec))
        .await
        .unwrap();
    within("declare", driver.declare(&connection, &topology))
        .await
        .unwrap();

    let metrics = Arc::new(Metrics::default());
    let window = Arc::new(ProducerWindow::new(4));
    let sink = ConfirmSink::new(window.clone(), metrics.clone());
    let producer_spec = ProducerSpec {
        index: 0,
        exchange_name: topology.exchange_name.clone(),
        durability: Durability::Written,
        confirms: true,
    };
    let mut producer = driver
        .open_producer(&connection, &producer_spec, sink)
        .await
        .unwrap();
    window.reserve(2).await;
    let now_ns = ruuster_loadgen::clock::now_ns();
    window.record_sent(0, &[(now_ns, now_ns), (now_ns, now_ns)]);
    let payload = [0u8; 32];
    let messages = [
        OutgoingMessage {
            routing_key: "bound",
            payload: &payload,
        },
        OutgoingMessage {
            routing_key: "nowhere",
            payload: &payload,
        },
    ];
    producer
        .publish(PublishBatch {
            first_sequence: 0,
            messages: &messages,
        })
        .await
        .unwrap();

    let settled = async {
        while window.outstanding_count() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    within("the confirms", settled).await;
    assert_eq!(count_of(&metrics.confirmed_count), 1);
    assert_eq!(count_of(&metrics.nacked_count), 1);
    assert_eq!(count_of(&metrics.error_count), 1);
    assert!(
        metrics.error_samples()[0].contains("unroutable"),
        "{:?}",
        metrics.error_samples()
    );

    let counters: HashMap<String, f64> = driver
        .counters(&connection, &topology)
        .await
        .unwrap()
        .into_iter()
        .map(|counter| (counter.name, counter.value))
        .collect();
    assert_eq!(counters["client_returned_count"], 1.0);
    assert_eq!(counters["unroutable_count"], 1.0);
    assert_eq!(counters["client_confirmed_at_written_count"], 1.0);
    driver.delete(&connection, &topology).await.unwrap();
}

fn count_of(counter: &AtomicU64) -> u64 {
    Metrics::load(counter)
}

/// The broker's counters once every delivery has been acknowledged and nothing is unacked.
async fn wait_until_every_delivery_is_acked(broker: &TestBroker) -> HashMap<String, u64> {
    let options = ruuster_client::ConnectOptions::new(broker.address());
    let connection = within("connect", ruuster_client::Client::connect(&options))
        .await
        .unwrap();
    let settled = async {
        loop {
            let stats: HashMap<String, u64> =
                connection.stats().await.unwrap().into_iter().collect();
            if stats["acked_count"] == stats["delivered_count"]
                && stats["messages_unacked_count"] == 0
            {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let stats = within("every ack", settled).await;
    connection.close().await.unwrap();
    stats
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(RUN_DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {RUN_DEADLINE:?}"))
}
