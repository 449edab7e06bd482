//! The publish path over real TCP: the level a confirm states over several target queues, and a
//! publish whose targets on two shards do not all store it. Each test starts a two-shard broker
//! in this process on 127.0.0.1:0. Publishing on one shard to queues owned by every shard, with
//! consumers on the other shard, is `end_to_end.rs`'s first test.
//!
//! What none of these can catch: loss at a crash (the crash tests), or a storage failure that
//! the filesystem reports differently from a refused write (EIO from a device, ENOSPC).

mod common;

use common::{TestClient, payloads, scratch, shard_address, start_broker};
use ruuster_wire::{ConfirmStatus, Durability, ExchangeKind};

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
