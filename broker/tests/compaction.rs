//! Compaction over real TCP: a segment pinned by a few unacked messages is copied forward and
//! deleted, and what the copies hold survives a restart exactly as the originals would have.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{TestClient, scratch, start_broker};
use ruuster_wire::{Durability, Frame};

/// How long the test waits for compaction before it fails instead of hanging.
const COMPACTION_DEADLINE: Duration = Duration::from_secs(30);

/// Messages that flow through (published, consumed, acked) to fill segments behind the stuck
/// ones: 12,000 of 1 KiB is about three of the test broker's 4 MiB segments.
const FLOW_MESSAGES_COUNT: u64 = 12_000;
const FLOW_BATCH_COUNT: u64 = 500;

fn stats(client: &mut TestClient) -> HashMap<String, u64> {
    let reply =
        client.request(|request_id| Frame::Stats(ruuster_wire::frame::Stats { request_id }));
    let Frame::StatsOk(ok) = reply else {
        panic!("stats failed: {reply:?}")
    };
    ok.counters
        .into_iter()
        .map(|(name, value)| (name.as_str().to_owned(), value))
        .collect()
}

fn message_count(client: &mut TestClient, queue: &str) -> u64 {
    let reply = client.request(|request_id| {
        Frame::QueueDeclare(ruuster_wire::frame::QueueDeclare {
            request_id,
            queue: common::short(queue),
            durable: true,
            exclusive: false,
            auto_delete: false,
            passive: true,
            arguments: ruuster_wire::Table::new(),
        })
    });
    let Frame::QueueDeclareOk(ok) = reply else {
        panic!("passive declare of {queue} failed: {reply:?}")
    };
    ok.message_count
}

/// Two messages held unacked by a consumer pin the first segment of their shard's journal while
/// 12,000 others flow through and are acked. The settler must copy the two forward and delete
/// the segment; then one is acked (its settlement must hit the copy) and the broker restarts:
/// exactly the unacked one comes back, redelivered, and none of the 12,000 does.
///
/// Catches: a compaction that never runs, a copy that loses the pinned messages, acks that
/// settle the old offset instead of the copy (the acked message would return), and copies that
/// resurrect acked flow messages. Cannot catch: a crash between the copy's sync and the
/// deletion of the old segment (the store's model test and the replay's duplicate handling
/// cover that).
#[test]
fn a_segment_pinned_by_unacked_messages_is_compacted_and_its_messages_survive_a_restart() {
    let _serial = common::serial();
    let data_dir = scratch("compaction");
    let flow = {
        let broker = start_broker(&data_dir, 2);
        let mut holder = TestClient::connect(broker.client_addr());
        let stuck_owner = holder.declare_queue("stuck", true);
        // The flow must share the stuck queue's journal, so pick a name its shard owns.
        let flow = (0..64)
            .map(|index| format!("flow-{index}"))
            .find(|name| holder.declare_queue(name, true) == stuck_owner)
            .expect("some queue lands on the same shard");

        holder.publish(
            "",
            "stuck",
            &[b"acked later".to_vec(), b"kept".to_vec()],
            Durability::Fsynced,
        );
        holder.confirms_through(2);
        holder.consume("stuck", 2);
        let first = holder.next_delivery();
        let second = holder.next_delivery();
        assert_eq!(TestClient::payload(&first), b"acked later");
        assert_eq!(TestClient::payload(&second), b"kept");

        let mut flow_client = TestClient::connect(broker.client_addr());
        let payload = vec![7u8; 1024];
        let mut published = 0;
        while published < FLOW_MESSAGES_COUNT {
            let batch = vec![payload.clone(); FLOW_BATCH_COUNT as usize];
            flow_client.publish("", &flow, &batch, Durability::Fsynced);
            published += FLOW_BATCH_COUNT;
            flow_client.confirms_through(published);
        }
        flow_client.consume(&flow, 1000);
        for _ in 0..FLOW_MESSAGES_COUNT {
            let delivery = flow_client.next_delivery();
            flow_client.ack(delivery.delivery_tag, false);
        }

        let started = Instant::now();
        let counters = loop {
            let counters = stats(&mut flow_client);
            if counters["journal_segments_compacted_count"] >= 1 {
                break counters;
            }
            assert!(
                started.elapsed() < COMPACTION_DEADLINE,
                "no segment compacted within {COMPACTION_DEADLINE:?}: {counters:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            counters["journal_records_copied_count"] >= 2,
            "{counters:?}"
        );
        assert!(
            counters["journal_segments_deleted_count"] >= 1,
            "{counters:?}"
        );

        holder.ack(first.delivery_tag, false);
        // The settlement is journaled by the settler; a stats round trip after the ack and a
        // pause let it reach the journal before the orderly stop.
        stats(&mut holder);
        std::thread::sleep(Duration::from_millis(200));
        broker.shutdown_handle().shutdown();
        broker.wait().unwrap();
        flow
    };

    let broker = start_broker(&data_dir, 2);
    let mut client = TestClient::connect(broker.client_addr());
    assert_eq!(
        message_count(&mut client, &flow),
        0,
        "acked flow messages stay gone"
    );
    assert_eq!(message_count(&mut client, "stuck"), 1);
    client.consume("stuck", 10);
    let delivery = client.next_delivery();
    assert_eq!(TestClient::payload(&delivery), b"kept");
    assert!(delivery.redelivered);
}
