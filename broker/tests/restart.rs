//! What a clean restart keeps, over real TCP: durable queues, exchanges and bindings with their
//! messages (acked ones gone, unacked ones back, redelivered); not transient ones, not the
//! exclusive queues of connections from before, not auto-delete queues that had a consumer.
//! Each test stops a two-shard broker in this process with its shutdown handle and starts
//! another on the same data directory.
//!
//! What none of these can catch: what a crash or a power loss keeps (the crash tests and the
//! store's fault tests); a restart only proves what was journaled and synced by a clean stop.

mod common;

use common::{
    QueueFlags, TestClient, error_code, eventually, index_of, other_shard, payloads, scratch,
    shard_address, start_broker, stop_broker,
};
use ruuster_wire::{ConfirmStatus, Durability, ErrorCode, ExchangeKind, Frame, Table};

fn passive_queue(client: &mut TestClient, name: &str) -> Frame {
    client.queue_declare_reply(name, QueueFlags::PASSIVE, Table::new())
}

/// A durable queue keeps its messages across a restart: the acked ones stay gone and the ones
/// held unacked at the stop come back first, marked redelivered, ahead of later messages. A
/// durable exchange keeps its binding to a durable queue. A transient queue and a transient
/// exchange are gone, and so are the bindings to or from them.
///
/// The delivery count restarts at 1 after a restart (counts are not journaled); the test pins
/// that. Catches: acks not journaled by a clean stop, unacked messages lost or not marked,
/// transient entities resurrected, durable bindings lost. Cannot catch: the same after a crash.
#[test]
fn a_restart_keeps_durable_queues_with_their_messages_and_drops_transient_ones() {
    let _serial = common::serial();
    let data_dir = scratch("restart-durability");
    let broker = start_broker(&data_dir, 2);
    let mut admin = TestClient::connect(shard_address(&broker, 0));
    admin.declare_exchange("durable-x", ExchangeKind::Direct);
    let reply = admin.exchange_declare_reply(
        "transient-x",
        ExchangeKind::Direct,
        false,
        false,
        Table::new(),
    );
    assert!(matches!(reply, Frame::ExchangeDeclareOk(_)), "{reply:?}");
    let owner = admin.declare_queue("durable-q", true);
    admin.declare_queue("transient-q", false);
    admin.bind("durable-q", "durable-x", "k");
    admin.bind("transient-q", "durable-x", "k");
    admin.bind("durable-q", "transient-x", "k");
    admin.publish("durable-x", "k", &payloads(0..6), Durability::Fsynced);
    admin.confirms_through(6);
    assert_eq!(admin.queue_counts("transient-q"), (6, 0));

    let mut consumer = TestClient::connect(shard_address(&broker, other_shard(owner)));
    consumer.consume("durable-q", 6);
    let deliveries: Vec<_> = (0..6).map(|_| consumer.next_delivery()).collect();
    consumer.ack(deliveries[0].delivery_tag, false);
    consumer.ack(deliveries[2].delivery_tag, true);
    consumer.nack(deliveries[3].delivery_tag, true);
    let again = consumer.next_delivery();
    assert_eq!((index_of(&again), again.redelivered), (3, true));
    eventually("three acks and a requeue reached the owner", || {
        let stats = admin.stats();
        stats["acked_count"] == 3 && stats["requeued_count"] == 1
    });
    stop_broker(broker);

    let broker = start_broker(&data_dir, 2);
    let mut admin = TestClient::connect(shard_address(&broker, 0));
    assert_eq!(
        error_code(&passive_queue(&mut admin, "transient-q")),
        ErrorCode::QUEUE_NOT_FOUND
    );
    let reply = admin.exchange_declare_reply(
        "transient-x",
        ExchangeKind::Direct,
        false,
        true,
        Table::new(),
    );
    assert_eq!(error_code(&reply), ErrorCode::EXCHANGE_NOT_FOUND);
    assert_eq!(admin.queue_counts("durable-q"), (3, 0));

    admin.publish("durable-x", "k", &payloads(100..101), Durability::Fsynced);
    let confirms = admin.confirms_through(1);
    assert_eq!(
        confirms[0].status,
        ConfirmStatus::Stored(Durability::Fsynced),
        "the durable binding routes, and only to the durable queue"
    );

    let mut consumer = TestClient::connect(shard_address(&broker, other_shard(owner)));
    consumer.consume("durable-q", 10);
    for (index, redelivered) in [(3, true), (4, true), (5, true), (100, false)] {
        let delivery = consumer.next_delivery();
        assert_eq!(
            (
                index_of(&delivery),
                delivery.redelivered,
                delivery.delivery_count
            ),
            (index, redelivered, 1)
        );
        consumer.ack(delivery.delivery_tag, false);
    }
    eventually("nothing else in the queue", || {
        let stats = admin.stats();
        stats["acked_count"] == 4 && stats["messages_ready_count"] == 0
    });
}

/// Across a restart: the exclusive queue of a connection from before is gone with its
/// messages (a namesake declared after starts empty), an auto-delete queue that had a consumer
/// at the stop is gone, one that never had a consumer stays, and a server-named durable queue
/// stays with its message while a new server-named declare gets another name.
///
/// Catches: exclusive queues resurrected without their connection, auto-delete queues kept
/// after their consumers went with the broker, a generated name handed out twice (it was until
/// this test: the counter restarted with the broker). Cannot catch: the same after a crash,
/// where the metadata file is the same but the journal may hold less.
#[test]
fn a_restart_drops_exclusive_and_used_auto_delete_queues_and_keeps_server_named_ones() {
    let _serial = common::serial();
    let data_dir = scratch("restart-lifetimes");
    let broker = start_broker(&data_dir, 2);
    let mut holder = TestClient::connect(shard_address(&broker, 0));
    let exclusive = QueueFlags {
        exclusive: true,
        ..QueueFlags::DURABLE
    };
    let auto_delete = QueueFlags {
        auto_delete: true,
        ..QueueFlags::DURABLE
    };
    holder.declare_queue_with("mine", exclusive);
    holder.declare_queue_with("used", auto_delete);
    holder.declare_queue_with("unused", auto_delete);
    let generated = holder.declare_queue_with("", QueueFlags::DURABLE).queue;
    let generated = generated.as_str().to_owned();
    holder.publish("", "mine", &payloads(0..3), Durability::Fsynced);
    holder.publish("", "used", &payloads(0..1), Durability::Fsynced);
    holder.publish("", "unused", &payloads(0..1), Durability::Fsynced);
    holder.publish("", &generated, &payloads(0..1), Durability::Fsynced);
    holder.confirms_through(6);
    holder.consume("used", 1);
    holder.next_delivery();
    // A control request after the consume reaches shard 0 after the consume's note that the
    // queue has had a consumer, so once it is answered that note is on disk.
    holder.declare_queue_with("fence", QueueFlags::DURABLE);
    stop_broker(broker);
    drop(holder);

    let broker = start_broker(&data_dir, 2);
    let mut client = TestClient::connect(shard_address(&broker, 1));
    for gone in ["mine", "used"] {
        let reply = passive_queue(&mut client, gone);
        assert_eq!(error_code(&reply), ErrorCode::QUEUE_NOT_FOUND, "{gone}");
    }
    assert_eq!(client.queue_counts("unused"), (1, 0));
    assert_eq!(
        client
            .declare_queue_with("mine", QueueFlags::DURABLE)
            .message_count,
        0,
        "the old exclusive queue's messages stay gone"
    );
    assert_eq!(client.queue_counts(&generated), (1, 0));
    let fresh = client.declare_queue_with("", QueueFlags::DURABLE);
    assert_ne!(fresh.queue.as_str(), generated);
    assert_eq!(fresh.message_count, 0);
}
