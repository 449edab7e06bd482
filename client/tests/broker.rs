//! The client against the real broker, in this process on an ephemeral loopback port with two
//! shards: the operations an application uses, and the four examples run as child processes.
//!
//! These catch disagreements between the client and the broker that the scripted fake broker of
//! `client.rs` cannot (both sides there use the same reading of the spec, written by the test).
//! They cannot catch what the broker's own tests are for: crash recovery, or timing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ruuster_broker::config::Config;
use ruuster_broker::server::{Broker, Hooks};
use ruuster_client::{
    Client, ConfirmStatus, ConnectOptions, ConsumeOptions, Durability, ExchangeKind,
    ExchangeOptions, PublishOptions, QueueOptions, body,
};

/// How long a test waits for any one thing before it fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(30);

/// A broker under test, stopped (and its data directory released) when dropped.
struct TestBroker {
    broker: Option<Broker>,
    _serial: MutexGuard<'static, ()>,
}

impl TestBroker {
    /// Starts a 2-shard broker with its data under `target/`. Brokers in this process run one at
    /// a time: each pins two shards, and several at once oversubscribe a 2-CPU machine.
    fn start(name: &str) -> TestBroker {
        Self::start_with(name, |config| config, Hooks::default())
    }

    /// [`TestBroker::start`] with a changed configuration and hooks.
    fn start_with(
        name: &str,
        configure: impl FnOnce(Config) -> Config,
        hooks: Hooks,
    ) -> TestBroker {
        static SERIAL: Mutex<()> = Mutex::new(());
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let data_dir = scratch(name);
        let config = Config {
            data_dir,
            listen: "127.0.0.1:0".into(),
            shards: Some(2),
            cpus: None,
            segment_bytes: 4 << 20,
            ..Config::default()
        };
        let broker = Broker::start_with(configure(config), hooks).expect("the broker starts");
        TestBroker {
            broker: Some(broker),
            _serial: serial,
        }
    }

    fn address(&self) -> String {
        self.broker().client_addr().to_string()
    }

    fn broker(&self) -> &Broker {
        self.broker.as_ref().expect("running")
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

fn scratch(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("client-broker")
        .join(name);
    let _ = std::fs::remove_dir_all(&path);
    path
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {DEADLINE:?}"))
}

/// A durable queue's publishes are confirmed at the level asked for (or higher), delivered in
/// order starting at tag 1, and a requeued delivery comes back first (prefetch 1, so nothing
/// else is in flight), flagged, counted twice.
#[tokio::test]
async fn publish_confirm_consume_and_requeue_against_the_broker() {
    let broker = TestBroker::start("round-trip");
    let connection = within(
        "connect",
        Client::connect(&ConnectOptions::new(broker.address())),
    )
    .await
    .unwrap();
    let durable = QueueOptions {
        durable: true,
        ..QueueOptions::default()
    };
    within("declare", connection.queue_declare("orders", &durable))
        .await
        .unwrap();

    let mut sequence_next = None;
    for level in [Durability::Memory, Durability::Written, Durability::Fsynced] {
        let messages: Vec<_> = (0..50)
            .map(|index| ("orders", body(format!("{level:?}-{index}").as_bytes())))
            .collect();
        let options = PublishOptions {
            durability: level,
            ..PublishOptions::default()
        };
        let pending = connection
            .publish_batch("", &messages, &options)
            .await
            .unwrap();
        // Sequence numbers run on across batches without a gap.
        if let Some(expected) = sequence_next {
            assert_eq!(pending.first(), expected);
        }
        sequence_next = Some(pending.last() + 1);
        let confirmation = within("confirm", pending).await.unwrap();
        let stored = confirmation.stored().expect("every message is stored");
        assert!(stored >= level, "asked for {level:?}, got {stored:?}");
    }

    let info = within(
        "passive declare",
        connection.queue_declare_passive("orders"),
    )
    .await
    .unwrap();
    assert_eq!(info.message_count, 150);

    let mut consumer = within(
        "consume",
        connection.consume("orders", "reader", 1, &ConsumeOptions::default()),
    )
    .await
    .unwrap();
    let first = within("first delivery", consumer.recv()).await.unwrap();
    assert_eq!(first.delivery_tag, 1);
    assert_eq!(&first.body.payload()[..], b"Memory-0");
    assert!(!first.redelivered);
    first.nack(true).unwrap();

    let mut payloads = Vec::new();
    let mut requeued_seen = false;
    while payloads.len() < 150 {
        let delivery = within("delivery", consumer.recv()).await.unwrap();
        if delivery.redelivered {
            assert_eq!(&delivery.body.payload()[..], b"Memory-0");
            assert_eq!(delivery.delivery_count, 2);
            requeued_seen = true;
        }
        payloads.push(String::from_utf8(delivery.body.payload().to_vec()).unwrap());
        delivery.ack().unwrap();
    }
    assert!(requeued_seen, "the requeued message came back");
    assert_eq!(
        payloads[0], "Memory-0",
        "a requeued message keeps its place"
    );
    let expected: Vec<String> = ["Memory", "Written", "Fsynced"]
        .iter()
        .flat_map(|level| (0..50).map(move |index| format!("{level}-{index}")))
        .collect();
    assert_eq!(payloads, expected);

    within("cancel", consumer.cancel()).await.unwrap();
    within("close", connection.close()).await.unwrap();
}

/// A cancelled consumer's deliveries stay the application's to settle, through the client's
/// API: after `Consumer::cancel` the stream ends with `Cancelled`, a delivery received before
/// can still be acked or nacked, another consumer does not get the held ones meanwhile, and what
/// is still unsettled when the connection closes comes back, redelivered. Consumes with empty
/// tags get distinct tags from the broker.
///
/// Catches: a broker that requeues at the cancel (the second consumer would get 0 first), a
/// client that refuses to settle a cancelled consumer's deliveries, a broker that echoes empty
/// tags. Cannot catch: the order of frames around the cancel (the broker's consume tests).
#[tokio::test]
async fn a_cancelled_consumers_deliveries_stay_outstanding_until_settled() {
    let broker = TestBroker::start("cancel-outstanding");
    let options = ConnectOptions::new(broker.address());
    let first = within("connect", Client::connect(&options)).await.unwrap();
    let second = within("connect", Client::connect(&options)).await.unwrap();
    within(
        "declare",
        first.queue_declare("tasks", &QueueOptions::default()),
    )
    .await
    .unwrap();
    within(
        "declare",
        first.queue_declare("idle", &QueueOptions::default()),
    )
    .await
    .unwrap();
    let messages: Vec<_> = (0..4u8).map(|index| ("tasks", body(&[index]))).collect();
    let pending = first
        .publish_batch("", &messages, &PublishOptions::default())
        .await
        .unwrap();
    within("confirm", pending).await.unwrap();

    let plain = ConsumeOptions::default();
    let idle_a = within("consume", first.consume("idle", "", 1, &plain))
        .await
        .unwrap();
    let idle_b = within("consume", first.consume("idle", "", 1, &plain))
        .await
        .unwrap();
    assert!(!idle_a.tag().is_empty() && idle_a.tag() != idle_b.tag());

    let mut cancelled = within("consume", first.consume("tasks", "", 3, &plain))
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(within("delivery", cancelled.recv()).await.unwrap());
    }
    within("cancel", cancelled.cancel()).await.unwrap();
    assert!(matches!(
        within("end", cancelled.recv()).await,
        Err(ruuster_client::ConsumerEnd::Cancelled)
    ));

    let mut other = within("consume", second.consume("tasks", "", 10, &plain))
        .await
        .unwrap();
    let next = within("delivery", other.recv()).await.unwrap();
    assert_eq!(
        (&next.body.payload()[..], next.redelivered),
        (&[3u8][..], false)
    );
    next.ack().unwrap();

    held[0].ack().unwrap();
    held[1].nack(true).unwrap();
    let requeued = within("delivery", other.recv()).await.unwrap();
    assert_eq!(&requeued.body.payload()[..], &[1u8]);
    assert_eq!((requeued.redelivered, requeued.delivery_count), (true, 2));
    requeued.ack().unwrap();

    within("close", first.close()).await.unwrap();
    let returned = within("delivery", other.recv()).await.unwrap();
    assert_eq!(&returned.body.payload()[..], &[2u8]);
    assert!(returned.redelivered);
    returned.ack().unwrap();
    within("close", second.close()).await.unwrap();
}

/// `connect_to_queue_owner` lands on the shard the broker placed the queue on, for queues on
/// both shards, and a topic exchange routes a mandatory publish to the matching queues while
/// an unmatched one comes back as returned.
#[tokio::test]
async fn owner_shard_connections_and_topic_routing_with_returns() {
    let broker = TestBroker::start("owner-topic");
    let options = ConnectOptions::new(broker.address());
    let control = within("connect", Client::connect(&options)).await.unwrap();
    within(
        "exchange",
        control.exchange_declare("logs", ExchangeKind::Topic, &ExchangeOptions::default()),
    )
    .await
    .unwrap();

    let mut owners = Vec::new();
    for index in 0..4 {
        let queue = format!("logs-{index}");
        let info = within(
            "declare",
            control.queue_declare(&queue, &QueueOptions::default()),
        )
        .await
        .unwrap();
        owners.push(info.owner_shard);
        let pattern = if index % 2 == 0 {
            "app.*.error"
        } else {
            "app.#"
        };
        within(
            "bind",
            control.queue_bind(&queue, "logs", pattern, &Default::default()),
        )
        .await
        .unwrap();

        let on_owner = within(
            "owner connect",
            Client::connect_to_queue_owner(&options, &queue),
        )
        .await
        .unwrap();
        assert_eq!(on_owner.shard_index(), info.owner_shard, "{queue}");
        // Either the shared port's hash already led to the owner, or the owner's own port did.
        let owner_port = broker.broker().shard_addrs()[usize::from(info.owner_shard)];
        let peer = on_owner.peer_address();
        assert!(
            peer == owner_port || peer == broker.broker().client_addr(),
            "{queue}: {peer}"
        );
        within("close", on_owner.close()).await.unwrap();
    }
    assert!(
        owners.contains(&0) && owners.contains(&1),
        "four queues are spread over both shards: {owners:?}"
    );

    let mandatory = PublishOptions {
        mandatory: true,
        ..PublishOptions::default()
    };
    let messages = [
        ("app.db.error", body(b"both")),
        ("app.db.info", body(b"odd queues only")),
        ("other.db.error", body(b"nobody")),
    ];
    let pending = control
        .publish_batch("logs", &messages, &mandatory)
        .await
        .unwrap();
    let confirmation = within("confirm", pending).await.unwrap();
    let returned: Vec<_> = confirmation
        .returned()
        .iter()
        .map(|message| message.routing_key.as_str().to_owned())
        .collect();
    assert_eq!(returned, ["other.db.error"]);
    assert!(matches!(
        confirmation.status_of(confirmation.first()),
        Some(ConfirmStatus::Stored(_))
    ));

    for (index, expected) in [
        (0, vec!["app.db.error"]),
        (1, vec!["app.db.error", "app.db.info"]),
    ] {
        let queue = format!("logs-{index}");
        let info = within("counts", control.queue_declare_passive(&queue))
            .await
            .unwrap();
        assert_eq!(info.message_count, expected.len() as u64, "{queue}");
        let mut consumer = within(
            "consume",
            control.consume(&queue, "", 10, &ConsumeOptions::default()),
        )
        .await
        .unwrap();
        for key in expected {
            let delivery = within("delivery", consumer.recv()).await.unwrap();
            assert_eq!(delivery.routing_key.as_str(), key, "{queue}");
            delivery.ack().unwrap();
        }
        within("cancel", consumer.cancel()).await.unwrap();
    }

    let stats: std::collections::HashMap<String, u64> = within("stats", control.stats())
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(stats["shards_count"], 2);
    // Each shard times its own stages; the published messages went through the append, written
    // and stored stages of whichever shards own their queues, and were delivered once. The
    // queues are transient, so nothing waited for an fdatasync.
    let stage_count = |stage: &str| -> u64 {
        (0..2)
            .map(|shard| stats[&format!("shard{shard}_stage_{stage}_count")])
            .sum()
    };
    // One record per routed message and owner shard, however the queues were placed.
    assert_eq!(stage_count("stored"), stats["stored_count"], "{stats:?}");
    assert!(stats["stored_count"] >= 2, "{stats:?}");
    assert!(stage_count("append") >= 1, "{stats:?}");
    assert!(stage_count("written") >= 1, "{stats:?}");
    assert_eq!(stage_count("deliver"), 3, "{stats:?}");
    // Every reply, confirm and delivery left through a socket write that the send stage timed.
    assert!(stage_count("send") >= 3, "{stats:?}");
    within("close", control.close()).await.unwrap();
}

/// The README's examples, run as they are against the broker: `publish` then `consume` (ten
/// messages each way), `work_queue` and `topic_routing`, each exiting 0 with its expected output.
/// `cargo test` builds the examples beside this test; run through `cargo test` so they exist.
#[test]
fn the_examples_run_against_the_broker() {
    let broker = TestBroker::start("examples");
    let address = broker.address();

    let published = run_example("publish", &address);
    let confirmed = published
        .lines()
        .filter(|line| line.contains("Stored(Fsynced)"))
        .count();
    assert_eq!(confirmed, 10, "publish output:\n{published}");

    let consumed = run_example("consume", &address);
    for index in 0..10 {
        assert!(
            consumed.contains(&format!("hello number {index}")),
            "consume output lacks message {index}:\n{consumed}"
        );
    }

    let work = run_example("work_queue", &address);
    assert!(work.contains(" did "), "work_queue output:\n{work}");

    let topics = run_example("topic_routing", &address);
    assert!(
        topics.contains("no queue for"),
        "topic_routing output:\n{topics}"
    );
    assert!(topics.contains(" got "), "topic_routing output:\n{topics}");
}

/// Runs a built example with the broker's address; returns its standard output.
fn run_example(name: &str, address: &str) -> String {
    let path = example_path(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples, run this test through it",
        path.display()
    );
    let mut child = Command::new(&path)
        .arg(address)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("example {name} did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "example {name} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Examples land in `target/<profile>/examples/`, beside the `deps/` folder holding this test.
fn example_path(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().unwrap();
    let profile_dir: &Path = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    profile_dir.join("examples").join(name)
}

/// The broker's `Blocked` reaches `Connection::blocked()`, a publish made meanwhile waits in the
/// client, and after `Unblocked` it goes out and is stored. The free space comes from an injected
/// source. Catches: a client and broker that disagree on the notices or their code. Cannot
/// catch: a publish sent early and held by the broker instead (the broker's tests cover that).
#[tokio::test]
async fn a_publisher_is_blocked_by_the_free_space_limit_and_resumes_after() {
    let free_bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1 << 40));
    let source = free_bytes.clone();
    let hooks = Hooks {
        free_space: Some(std::sync::Arc::new(move |_| {
            Ok(source.load(std::sync::atomic::Ordering::SeqCst))
        })),
    };
    let broker = TestBroker::start_with(
        "blocked",
        |config| Config {
            disk_free_limit_bytes: 1 << 30,
            disk_check_interval_ms: 20,
            ..config
        },
        hooks,
    );
    let connection = within(
        "connect",
        Client::connect(&ConnectOptions::new(broker.address())),
    )
    .await
    .unwrap();
    within(
        "declare",
        connection.queue_declare("held", &QueueOptions::default()),
    )
    .await
    .unwrap();
    let options = PublishOptions::default();
    let pending = connection
        .publish("", "held", body(b"before"), &options)
        .await
        .unwrap();
    within("confirm", pending).await.unwrap();

    let mut blocked = connection.blocked();
    free_bytes.store(1 << 20, std::sync::atomic::Ordering::SeqCst);
    let reason = within("Blocked", blocked.wait_for(Option::is_some))
        .await
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(reason.code, ruuster_wire::ErrorCode::DISK_LOW, "{reason:?}");

    let publisher = connection.clone();
    let mut publish = tokio::spawn(async move {
        let pending = publisher
            .publish("", "held", body(b"during"), &PublishOptions::default())
            .await
            .unwrap();
        pending.await.unwrap()
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut publish)
            .await
            .is_err(),
        "a publish went through while blocked"
    );

    free_bytes.store(1 << 40, std::sync::atomic::Ordering::SeqCst);
    within("Unblocked", blocked.wait_for(Option::is_none))
        .await
        .unwrap();
    let confirmation = within("the held publish", publish).await.unwrap();
    assert!(confirmation.stored().is_some(), "{confirmation:?}");
    within("close", connection.close()).await.unwrap();
}
