//! The publish path over real TCP: the level a confirm states over several target queues, and a
//! publish whose targets on two shards do not all store it. Each test starts a two-shard broker
//! in this process on 127.0.0.1:0. Publishing on one shard to queues owned by every shard, with
//! consumers on the other shard, is `end_to_end.rs`'s first test.
//!
//! What none of these can catch: loss at a crash (the crash tests), or a storage failure that
//! the filesystem reports differently from a refused write (EIO from a device, ENOSPC).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TestClient, index_of, payloads, scratch, shard_address, start_broker, stop_broker};
use ruuster_wire::{ConfirmStatus, Durability, ErrorCode, ExchangeKind};

/// The status of the one confirm covering the next publish of one message.
fn publish_one(
    client: &mut TestClient,
    exchange: &str,
    key: &str,
    level: Durability,
) -> ConfirmStatus {
    client.publish(exchange, key, &payloads(0..1), level);
    let confirms = client.confirms_through(client.published_count());
    assert_eq!(confirms.len(), 1, "{confirms:?}");
    confirms[0].status
}

/// A confirm states the lowest level its target queues reached: `fsynced` for a durable queue,
/// `written` at most for a transient one (it is not replayed after a restart, so a power loss
/// or a crash takes it anyway), `written` for a publish to both, on two shards; it never waits
/// for more than the targets can reach, and may report more than was asked.
///
/// Catches: a transient queue's message confirmed `fsynced` (the broker did until this test),
/// the level of one shard's target reported for a publish to two, a level below the one asked
/// for. Cannot catch: whether `fsynced` is true on the device (the store's crash tests).
#[test]
fn a_confirm_states_the_lowest_level_its_targets_reached() {
    let _serial = common::serial();
    let broker = start_broker(&scratch("confirm-levels"), 2);
    let mut client = TestClient::connect(shard_address(&broker, 0));
    let durable_owner = client.declare_queue("durable", true);
    let transient_owner = client.declare_queue("transient", false);
    assert_ne!(durable_owner, transient_owner, "one queue on each shard");
    client.declare_exchange("both", ExchangeKind::Fanout);
    client.bind("durable", "both", "");
    client.bind("transient", "both", "");

    let stored = ConfirmStatus::Stored;
    let cases = [
        (
            "",
            "durable",
            Durability::Fsynced,
            vec![stored(Durability::Fsynced)],
        ),
        (
            "",
            "transient",
            Durability::Fsynced,
            vec![stored(Durability::Written)],
        ),
        (
            "both",
            "",
            Durability::Fsynced,
            vec![stored(Durability::Written)],
        ),
        (
            "",
            "durable",
            Durability::Written,
            vec![stored(Durability::Written), stored(Durability::Fsynced)],
        ),
        (
            "",
            "transient",
            Durability::Memory,
            vec![stored(Durability::Memory), stored(Durability::Written)],
        ),
    ];
    for (exchange, key, level, allowed) in cases {
        let status = publish_one(&mut client, exchange, key, level);
        assert!(
            allowed.contains(&status),
            "{exchange:?}/{key:?} at {level:?}: {status:?}, allowed {allowed:?}"
        );
    }
    assert_eq!(client.queue_counts("durable"), (3, 0));
    assert_eq!(client.queue_counts("transient"), (3, 0));
}

/// Publishes to a transient queue are journaled but never synced on their own account: the
/// queue delivers at `written` and is not replayed, so an fdatasync would only add a device flush
/// in front of the next write. A publish to a durable queue is synced even when its publisher
/// asked only for `written`, because the queue delivers below the durable watermark.
///
/// Catches: an fdatasync per append for transient queues (the broker did that until this test),
/// and a durable queue's append left unsynced when nobody asked for `fsynced` (its consumer would
/// wait forever). Cannot catch: whether the sync reaches the device (the store's crash tests).
#[test]
fn only_appends_for_durable_queues_are_synced() {
    let _serial = common::serial();
    let broker = start_broker(&scratch("sync-for-durable"), 1);
    let mut client = TestClient::connect(shard_address(&broker, 0));
    client.declare_queue("transient", false);
    client.declare_queue("durable", true);
    let syncs = |client: &mut TestClient| client.stats()["journal_fdatasyncs_count"];

    let before = syncs(&mut client);
    for round in 0..20u64 {
        client.publish(
            "",
            "transient",
            &payloads(round * 10..round * 10 + 10),
            Durability::Written,
        );
        client.confirms_through(client.published_count());
    }
    assert_eq!(syncs(&mut client), before, "transient appends were synced");
    assert_eq!(client.queue_counts("transient"), (200, 0));

    client.publish("", "durable", &payloads(0..1), Durability::Written);
    client.confirms_through(client.published_count());
    let mut consumer = TestClient::connect(shard_address(&broker, 0));
    consumer.consume("durable", 10);
    let delivery = consumer.next_delivery();
    assert_eq!(TestClient::payload(&delivery), payloads(0..1)[0]);
    assert!(
        syncs(&mut client) > before,
        "a durable queue's append was not synced"
    );
}

/// Makes files immutable (`chattr +i`) and clears the flag again when dropped. ext4 and xfs then
/// refuse writes to them with EPERM, also through file descriptors opened before, which is how
/// a journal sees a failing disk: its write completes with an error.
struct Immutable {
    paths: Vec<PathBuf>,
}

impl Immutable {
    fn set(paths: Vec<PathBuf>) -> Immutable {
        let guard = Immutable { paths };
        for path in &guard.paths {
            let status = Command::new("chattr").arg("+i").arg(path).status();
            assert!(
                status.is_ok_and(|status| status.success()),
                "chattr +i {} failed: this test needs chattr and CAP_LINUX_IMMUTABLE (root) on \
                 an ext4 or xfs data directory",
                path.display()
            );
        }
        guard
    }

    /// Clears the flag under `dir` left by a run that did not finish.
    fn clear_under(dir: &Path) {
        let _ = Command::new("chattr")
            .arg("-R")
            .arg("-i")
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for path in &self.paths {
            let _ = Command::new("chattr").arg("-i").arg(path).status();
        }
    }
}

/// A publish routed to queues on two shards, one of whose journals refuses writes (its files are
/// made immutable while the broker runs), gets a negative confirm with 403 storage-failed; the
/// message is still delivered from the other shard's queue (at-least-once, as the protocol
/// warns), that shard keeps confirming publishes of its own, and every later publish to the
/// failed shard is refused too (its journal is poisoned until a restart).
///
/// Catches: a confirm that takes the healthy target's level and ignores the failed one, a failed
/// journal that confirms later publishes, a failure that spreads to the other shard. Cannot
/// catch: failures the filesystem reports another way (EIO, ENOSPC at a segment roll), or a
/// failure between the write and the fdatasync. Needs root for chattr (CAP_LINUX_IMMUTABLE).
#[test]
fn a_publish_whose_target_on_one_shard_fails_gets_a_negative_confirm() {
    let _serial = common::serial();
    let data_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("broker")
        .join("failing-target");
    Immutable::clear_under(&data_dir);
    let data_dir = scratch("failing-target");
    let broker = start_broker(&data_dir, 2);
    let mut publisher = TestClient::connect(shard_address(&broker, 0));
    let healthy = publisher.declare_queue("healthy", true);
    let failing = publisher.declare_queue("failing", true);
    assert_ne!(healthy, failing, "one queue on each shard");
    publisher.declare_exchange("both", ExchangeKind::Fanout);
    publisher.bind("healthy", "both", "");
    publisher.bind("failing", "both", "");
    assert_eq!(
        publish_one(&mut publisher, "both", "", Durability::Fsynced),
        ConfirmStatus::Stored(Durability::Fsynced),
        "both shards store before the fault"
    );

    let journal = data_dir.join("shards").join(failing.to_string());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&journal)
        .expect("the failing shard's journal directory")
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.push(journal);
    let immutable = Immutable::set(files);

    let refused = ConfirmStatus::Rejected(ErrorCode::STORAGE_FAILED);
    assert_eq!(
        publish_one(&mut publisher, "both", "", Durability::Fsynced),
        refused
    );
    assert_eq!(
        publish_one(&mut publisher, "", "healthy", Durability::Fsynced),
        ConfirmStatus::Stored(Durability::Fsynced)
    );
    assert_eq!(
        publish_one(&mut publisher, "", "failing", Durability::Fsynced),
        refused
    );
    assert_eq!(
        publish_one(&mut publisher, "both", "", Durability::Written),
        refused
    );

    let mut consumer = TestClient::connect(shard_address(&broker, failing));
    consumer.consume("healthy", 10);
    for _ in 0..4 {
        let delivery = consumer.next_delivery();
        assert_eq!(index_of(&delivery), 0);
        consumer.ack(delivery.delivery_tag, false);
    }
    stop_broker(broker);
    drop(immutable);
}
