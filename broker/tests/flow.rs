//! Publishers blocked by the free-space limit and by the queue memory limit, over real TCP against
//! a broker in this process, while consumers and other connections keep working.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{TestClient, scratch, test_config};
use ruuster_broker::server::{Broker, Hooks};
use ruuster_wire::{ConfirmStatus, Durability, ErrorCode, Frame};

/// How long a test polls the broker's counters for a state before it fails.
const POLL_DEADLINE: Duration = Duration::from_secs(20);

/// Polls the counters until `ready` holds for them; fails the test after [`POLL_DEADLINE`].
fn wait_for_stats(
    client: &mut TestClient,
    what: &str,
    ready: impl Fn(&std::collections::HashMap<String, u64>) -> bool,
) -> std::collections::HashMap<String, u64> {
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        let stats = client.stats();
        if ready(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "never saw {what}: {stats:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn expect_blocked(client: &mut TestClient, code: ErrorCode) -> String {
    match client.recv() {
        Frame::Blocked(blocked) => {
            assert_eq!(blocked.code, code, "{blocked:?}");
            blocked.reason.as_str().to_string()
        }
        other => panic!("expected Blocked {code:?}, got {other:?}"),
    }
}

fn expect_unblocked(client: &mut TestClient) {
    match client.recv() {
        Frame::Unblocked(_) => {}
        other => panic!("expected Unblocked, got {other:?}"),
    }
}

fn assert_stored(confirms: &[ruuster_wire::frame::Confirm]) {
    for confirm in confirms {
        assert!(
            matches!(confirm.status, ConfirmStatus::Stored(_)),
            "{confirm:?}"
        );
    }
}

/// Free space below the limit (from an injected source, as the real disk cannot be filled here)
/// blocks every connection that publishes: one that published before is told at once, one that
/// publishes for the first time is told then; both readers stop at their `Publish`. Meanwhile a
/// consumer receives, acks and declares, and a third connection gets its stats. When space
/// returns both are unblocked and their held publishes are stored and delivered.
/// Catches: a publish stored while blocked (the counters would show it), a consumer or a
/// non-publishing connection held, a missing Blocked / Unblocked, a held publish lost after
/// the unblock. Cannot catch: what the real `statvfs` returns (the next test covers that path).
#[test]
fn free_space_below_the_limit_blocks_publishers_while_consumers_keep_acking() {
    let _serial = common::serial();
    common::init_logs();
    let free_bytes = Arc::new(AtomicU64::new(1 << 40));
    let source = free_bytes.clone();
    let config = ruuster_broker::config::Config {
        disk_free_limit_bytes: 1 << 30,
        disk_check_interval_ms: 20,
        ..test_config(&scratch("flow-disk-low"), 2)
    };
    let hooks = Hooks {
        free_space: Some(Arc::new(move |_| Ok(source.load(Ordering::SeqCst)))),
    };
    let broker = Broker::start_with(config, hooks).expect("broker starts");

    let mut publisher = TestClient::connect(broker.client_addr());
    publisher.declare_queue("disk-q", true);
    let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100]).collect();
    publisher.publish("", "disk-q", &payloads, Durability::Fsynced);
    assert_stored(&publisher.confirms_through(10));

    let mut consumer = TestClient::connect(broker.client_addr());
    consumer.consume("disk-q", 5);
    let first: Vec<_> = (0..5).map(|_| consumer.next_delivery()).collect();

    free_bytes.store(100 << 20, Ordering::SeqCst);
    let reason = expect_blocked(&mut publisher, ErrorCode::DISK_LOW);
    assert!(reason.contains("free disk"), "{reason}");
    publisher.publish("", "disk-q", &[b"late".to_vec()], Durability::Fsynced);
    let mut newcomer = TestClient::connect(broker.client_addr());
    newcomer.publish("", "disk-q", &[b"new".to_vec()], Durability::Fsynced);
    expect_blocked(&mut newcomer, ErrorCode::DISK_LOW);

    let mut observer = TestClient::connect(broker.client_addr());
    let stats = wait_for_stats(&mut observer, "both publishers held", |stats| {
        stats["flow_holds_count"] >= 2
    });
    assert_eq!(
        stats["published_count"], 10,
        "nothing published while blocked"
    );

    consumer.ack(first.last().unwrap().delivery_tag, true);
    for _ in 0..5 {
        let delivery = consumer.next_delivery();
        consumer.ack(delivery.delivery_tag, false);
    }
    consumer.declare_queue("side-q", false);
    wait_for_stats(&mut observer, "every ack", |stats| {
        stats["acked_count"] == 10
    });
    let stats = observer.stats();
    assert_eq!(stats["published_count"], 10, "still nothing published");

    free_bytes.store(1 << 40, Ordering::SeqCst);
    expect_unblocked(&mut publisher);
    assert_stored(&publisher.confirms_through(11));
    expect_unblocked(&mut newcomer);
    assert_stored(&newcomer.confirms_through(1));
    let mut late: Vec<Vec<u8>> = (0..2)
        .map(|_| TestClient::payload(&consumer.next_delivery()))
        .collect();
    late.sort();
    assert_eq!(late, vec![b"late".to_vec(), b"new".to_vec()]);

    broker.shutdown_handle().shutdown();
    broker.wait().unwrap();
}

/// A limit above any real free space makes the broker's own `statvfs` measurement report the
/// disk as low: the real source, not an injected one, blocks publishers. Catches: a monitor
/// that never runs, never reaches the shards, or measures nothing. Cannot catch: a wrong figure
/// that is still below `u64::MAX`.
#[test]
fn a_limit_above_the_real_free_space_blocks_publishers_through_statvfs() {
    let _serial = common::serial();
    common::init_logs();
    let config = ruuster_broker::config::Config {
        disk_free_limit_bytes: u64::MAX,
        disk_check_interval_ms: 20,
        ..test_config(&scratch("flow-statvfs"), 2)
    };
    let broker = Broker::start(config).expect("broker starts");
    let mut publisher = TestClient::connect(broker.client_addr());
    publisher.declare_queue("statvfs-q", true);
    wait_for_stats(&mut publisher, "both shards blocked", |stats| {
        stats["flow_blocked_count"] >= 2
    });
    publisher.publish("", "statvfs-q", &[b"x".to_vec()], Durability::Fsynced);
    expect_blocked(&mut publisher, ErrorCode::DISK_LOW);

    broker.shutdown_handle().shutdown();
    broker.wait().unwrap();
}

/// Queue memory above its limit on shard 1 blocks a publisher on shard 0 with `memory-low`; a
/// consumer draining the queue clears the alarm below 7/8 of the limit, and the publish held
/// meanwhile goes through. Catches: an alarm that does not cross shards, a publish stored past
/// the limit, an alarm that never clears. Cannot catch: memory that the queues do not count
/// (the bounded-memory test measures the process).
#[test]
fn queue_memory_above_its_limit_blocks_publishers_until_a_consumer_drains_it() {
    let _serial = common::serial();
    common::init_logs();
    let mut config = test_config(&scratch("flow-memory"), 2);
    config.limits.queue_memory_max_bytes = 1 << 20;
    let broker = Broker::start(config).expect("broker starts");

    let mut consumer = TestClient::connect(broker.shard_addrs()[1]);
    assert_eq!(
        consumer.declare_queue("memory-q", false),
        1,
        "owned by shard 1"
    );
    let mut publisher = TestClient::connect(broker.shard_addrs()[0]);
    // Four frames of 8 messages of 32 KiB: after three the queue holds about 770 KiB, after
    // the fourth just over 1 MiB, so the alarm rises only after the last of them was read.
    let payloads: Vec<Vec<u8>> = (0..8).map(|_| vec![7u8; 32 << 10]).collect();
    for _ in 0..4 {
        publisher.publish("", "memory-q", &payloads, Durability::Written);
    }
    assert_stored(&publisher.confirms_through(32));
    let reason = expect_blocked(&mut publisher, ErrorCode::MEMORY_LOW);
    assert!(reason.contains("shard 1"), "{reason}");

    publisher.publish("", "memory-q", &[b"held".to_vec()], Durability::Written);
    let stats = wait_for_stats(&mut consumer, "the publisher held", |stats| {
        stats["flow_holds_count"] >= 1
    });
    assert_eq!(stats["published_count"], 32);
    assert!(stats["queue_memory_bytes"] >= 1 << 20, "{stats:?}");

    consumer.consume("memory-q", 4);
    for _ in 0..32 {
        let delivery = consumer.next_delivery();
        consumer.ack(delivery.delivery_tag, false);
    }
    expect_unblocked(&mut publisher);
    assert_stored(&publisher.confirms_through(33));
    let delivery = consumer.next_delivery();
    assert_eq!(TestClient::payload(&delivery), b"held".to_vec());

    broker.shutdown_handle().shutdown();
    broker.wait().unwrap();
}

/// A publisher that pipelines far more than its connection's unconfirmed bytes allow (40 frames
/// of 64 KiB against a 64 KiB cap, all written before the first fdatasync can finish) is held
/// at its socket: the broker's reader stops after each frame until the journal confirms it,
/// and every message is still stored. Catches: an unconfirmed-bytes cap that is not enforced
/// (no hold would be counted), a hold that loses or reorders publishes. Cannot catch: a hold
/// that is released early by a little (the count only shows that readers held).
#[test]
fn a_publisher_faster_than_the_journal_is_held_at_its_unconfirmed_bytes() {
    let _serial = common::serial();
    common::init_logs();
    let mut config = test_config(&scratch("flow-unconfirmed-bytes"), 2);
    config.limits.unconfirmed_bytes_max = 64 << 10;
    let broker = Broker::start(config).expect("broker starts");
    let mut publisher = TestClient::connect(broker.client_addr());
    publisher.declare_queue("fast-q", true);
    let payloads: Vec<Vec<u8>> = (0..16).map(|_| vec![3u8; 4 << 10]).collect();
    for _ in 0..40 {
        publisher.publish("", "fast-q", &payloads, Durability::Fsynced);
    }
    let confirms = publisher.confirms_through(640);
    assert_stored(&confirms);
    assert_eq!(confirms.last().unwrap().last, 640);
    let stats = publisher.stats();
    assert!(stats["flow_holds_count"] >= 1, "{stats:?}");
    assert_eq!(stats["stored_count"], 640);

    broker.shutdown_handle().shutdown();
    broker.wait().unwrap();
}
