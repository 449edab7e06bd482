//! The broker over real TCP: topology, publish with confirms, consume with acks, across shards.
//! Each test starts a broker in this process on 127.0.0.1:0 with two shards.

mod common;

use std::net::SocketAddr;

use common::{TestClient, scratch, start_broker};
use ruuster_wire::{ConfirmStatus, Durability, ExchangeKind, Frame};

fn shard_address(broker: &ruuster_broker::server::Broker, shard: usize) -> SocketAddr {
    broker.shard_addrs()[shard]
}

/// Publishes on shard 0 to a fanout of queues owned by both shards, consumes from a connection
/// on shard 1, and checks every message arrives once, in order, within the prefetch window.
/// Catches: lost or duplicated messages on the ring path, confirms before storage, prefetch
/// overrun, reordering. Cannot catch: loss at a crash (see the crash test).
#[test]
fn publishing_on_one_shard_reaches_queues_on_every_shard_in_order() {
    let _serial = common::serial();
    let broker = start_broker(&scratch("fanout-across-shards"), 2);
    let mut publisher = TestClient::connect(shard_address(&broker, 0));
    assert_eq!(publisher.welcome.shard_index, 0);
    publisher.declare_exchange("spread", ExchangeKind::Fanout);
    let mut owners = Vec::new();
    for queue in ["q0", "q1", "q2", "q3"] {
        owners.push(publisher.declare_queue(queue, true));
        publisher.bind(queue, "spread", "");
    }
    assert!(
        owners.contains(&0) && owners.contains(&1),
        "queues spread over both shards: {owners:?}"
    );

    let count = 200u64;
    let payloads: Vec<Vec<u8>> = (0..count).map(|i| i.to_le_bytes().to_vec()).collect();
    for chunk in payloads.chunks(50) {
        publisher.publish("spread", "", chunk, Durability::Fsynced);
    }
    let confirms = publisher.confirms_through(count);
    for confirm in &confirms {
        assert_eq!(
            confirm.status,
            ConfirmStatus::Stored(Durability::Fsynced),
            "{confirm:?}"
        );
    }
    assert_eq!(confirms.first().unwrap().first, 1);

    let mut consumer = TestClient::connect(shard_address(&broker, 1));
    let prefetch = 16u32;
    for queue in ["q0", "q1", "q2", "q3"] {
        consumer.consume(queue, prefetch);
    }
    // Delivery tags are scoped to the connection, so a multiple ack covers every consumer's
    // deliveries up to that tag: count what each consumer holds and release all of it at once.
    let mut next = std::collections::HashMap::<u32, u64>::new();
    let mut outstanding = std::collections::HashMap::<u32, u32>::new();
    for received in 1..=count * 4 {
        let delivery = consumer.next_delivery();
        let value = u64::from_le_bytes(TestClient::payload(&delivery).try_into().unwrap());
        let expected = next.entry(delivery.consumer_id).or_default();
        assert_eq!(value, *expected, "in order per queue");
        *expected += 1;
        assert!(!delivery.redelivered);
        let held = outstanding.entry(delivery.consumer_id).or_default();
        *held += 1;
        assert!(*held <= prefetch, "prefetch exceeded");
        if received % 8 == 0 || received == count * 4 {
            consumer.ack(delivery.delivery_tag, true);
            outstanding.clear();
        }
    }
    assert!(next.values().all(|&n| n == count));
}

/// A nacked message with requeue comes back first, marked redelivered, with its count raised;
/// one rejected without requeue never comes back.
#[test]
fn a_requeued_message_returns_to_its_place_and_a_discarded_one_does_not() {
    let _serial = common::serial();
    let broker = start_broker(&scratch("requeue"), 2);
    let mut client = TestClient::connect(broker.client_addr());
    client.declare_queue("work", true);
    let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i]).collect();
    client.publish("", "work", &payloads, Durability::Fsynced);
    client.confirms_through(5);

    client.consume("work", 2);
    let first = client.next_delivery();
    let second = client.next_delivery();
    assert_eq!(TestClient::payload(&first), vec![0]);
    assert_eq!(TestClient::payload(&second), vec![1]);
    client.nack(first.delivery_tag, true);
    client.nack(second.delivery_tag, false);

    let again = client.next_delivery();
    assert_eq!(
        TestClient::payload(&again),
        vec![0],
        "requeued to its original place"
    );
    assert!(again.redelivered);
    assert_eq!(again.delivery_count, 2);
    let rest: Vec<u8> = (0..3)
        .map(|_| {
            let delivery = client.next_delivery();
            client.ack(delivery.delivery_tag, false);
            TestClient::payload(&delivery)[0]
        })
        .collect();
    assert_eq!(rest, vec![2, 3, 4], "the discarded message 1 is gone");
    client.ack(again.delivery_tag, false);
}

/// A mandatory message that matches no queue comes back as a Return and is confirmed as
/// unroutable; a non-mandatory one is only confirmed as unroutable.
#[test]
fn unroutable_messages_are_returned_when_mandatory_and_confirmed_as_such() {
    let _serial = common::serial();
    let broker = start_broker(&scratch("unroutable"), 2);
    let mut client = TestClient::connect(broker.client_addr());
    client.declare_exchange("nowhere", ExchangeKind::Direct);
    client.send(Frame::Publish(ruuster_wire::frame::Publish {
        exchange: common::short("nowhere"),
        mandatory: true,
        durability: Durability::Fsynced,
        messages: vec![ruuster_wire::frame::PublishMessage {
            routing_key: common::short("k"),
            body: common::body(b"lost"),
        }],
    }));
    let Frame::Return(returned) = client.recv() else {
        panic!("expected a return")
    };
    assert_eq!(returned.sequence, 1);
    assert_eq!(returned.code, ruuster_wire::ErrorCode::UNROUTABLE);
    let confirms = client.confirms_through(1);
    assert_eq!(confirms[0].status, ConfirmStatus::Unroutable);

    client.publish(
        "no-such-exchange",
        "k",
        &[b"x".to_vec()],
        Durability::Fsynced,
    );
    let confirms = client.confirms_through(2);
    assert_eq!(
        confirms[0].status,
        ConfirmStatus::Rejected(ruuster_wire::ErrorCode::EXCHANGE_NOT_FOUND)
    );
}

/// Durable messages confirmed before a clean stop are delivered after a restart, marked
/// redelivered; acked ones do not come back.
#[test]
fn durable_messages_survive_a_restart_and_acked_ones_stay_gone() {
    let _serial = common::serial();
    let data_dir = scratch("restart");
    {
        let broker = start_broker(&data_dir, 2);
        let mut client = TestClient::connect(broker.client_addr());
        client.declare_queue("keep", true);
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i]).collect();
        client.publish("", "keep", &payloads, Durability::Fsynced);
        client.confirms_through(10);
        client.consume("keep", 4);
        for _ in 0..4 {
            let delivery = client.next_delivery();
            client.ack(delivery.delivery_tag, false);
        }
        // Let the settlement reach the journal (written by the store's background flush).
        let mut probe = TestClient::connect(broker.client_addr());
        let reply =
            probe.request(|request_id| Frame::Stats(ruuster_wire::frame::Stats { request_id }));
        assert!(matches!(reply, Frame::StatsOk(_)));
        std::thread::sleep(std::time::Duration::from_millis(200));
        broker.shutdown_handle().shutdown();
        broker.wait().unwrap();
    }
    let broker = start_broker(&data_dir, 2);
    let mut client = TestClient::connect(broker.client_addr());
    client.consume("keep", 20);
    let values: Vec<(u8, bool)> = (0..6)
        .map(|_| {
            let delivery = client.next_delivery();
            (TestClient::payload(&delivery)[0], delivery.redelivered)
        })
        .collect();
    assert_eq!(values, (4..10).map(|i| (i, true)).collect::<Vec<_>>());
}
