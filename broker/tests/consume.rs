//! The consume path over real TCP: acks, nacks and rejects, requeue order, `redelivered` and the
//! delivery count, prefetch, round robin and cancel. Each test starts a two-shard broker in this
//! process on 127.0.0.1:0 and, unless it says otherwise, consumes through a connection on the
//! shard that does not own the queue, so every delivery and settlement crosses a ring.
//!
//! What none of these can catch: behaviour under a crash (the crash tests), and orders that only
//! a rare interleaving of the shards' tasks produces (each test runs one schedule).

mod common;

use std::collections::{BTreeSet, HashMap, VecDeque};

use common::{
    TestClient, eventually, index_of, other_shard, payloads, scratch, shard_address, short,
    start_broker,
};
use ruuster_wire::frame::{Cancel, Consume, Deliver};
use ruuster_wire::{Durability, ErrorCode, Frame, Table};

/// The counters the tests read, waited for because settlements reach the owner after the
/// client sent them.
fn settled_counts(client: &mut TestClient) -> (u64, u64, u64, u64, u64) {
    let stats = client.stats();
    (
        stats["acked_count"],
        stats["discarded_count"],
        stats["requeued_count"],
        stats["messages_ready_count"],
        stats["messages_unacked_count"],
    )
}

fn assert_delivery(delivery: &Deliver, index: u64, redelivered: bool, delivery_count: u32) {
    assert_eq!(
        (
            index_of(delivery),
            delivery.redelivered,
            delivery.delivery_count
        ),
        (index, redelivered, delivery_count),
        "(index, redelivered, delivery count) of tag {}",
        delivery.delivery_tag
    );
}

/// Publishes `count` indexed messages to a new durable queue and returns the queue's owner.
fn queue_with_messages(admin: &mut TestClient, queue: &str, count: u64) -> u16 {
    let owner = admin.declare_queue(queue, true);
    for chunk in payloads(0..count).chunks(500) {
        admin.publish("", queue, chunk, Durability::Fsynced);
    }
    admin.confirms_through(count);
    owner
}

/// A consumer that cancels keeps its unacked deliveries: they are not redelivered to another
/// consumer, its tags can still be acked, nacked (back to their place, redelivered) and rejected
/// (gone), and what it still holds when its connection closes returns redelivered. The passive
/// declare counts only ready messages and active consumers.
///
/// Catches: a cancel that requeues held messages at once (the broker did until this test; they
/// then reached the second consumer first), settlements after a cancel that are ignored or close
/// the connection, a connection close that forgets a cancelled consumer's messages, a cancelled
/// consumer still counted. Cannot catch: a cancel racing deliveries in flight (the next test).
#[test]
fn a_cancelled_consumer_keeps_its_unacked_deliveries_until_it_settles_them_or_closes() {
    let _serial = common::serial();
    let broker = start_broker(&scratch("cancel-keeps-unacked"), 2);
    let mut admin = TestClient::connect(shard_address(&broker, 0));
    let owner = queue_with_messages(&mut admin, "work", 6);

    let mut first = TestClient::connect(shard_address(&broker, other_shard(owner)));
    let consumer = first.consume("work", 4);
    let held: Vec<Deliver> = (0..4).map(|_| first.next_delivery()).collect();
    for (index, delivery) in held.iter().enumerate() {
        assert_delivery(delivery, index as u64, false, 1);
    }
    first.cancel(consumer);
    assert_eq!(
        admin.queue_counts("work"),
        (2, 0),
        "four messages stay with the cancelled consumer"
    );

    let mut second = TestClient::connect(shard_address(&broker, owner));
    second.consume("work", 10);
    for index in [4, 5] {
        let delivery = second.next_delivery();
        assert_delivery(&delivery, index, false, 1);
        second.ack(delivery.delivery_tag, false);
    }

    first.ack(held[0].delivery_tag, false);
    first.nack(held[1].delivery_tag, true);
    first.reject(held[2].delivery_tag, false);
    let requeued = second.next_delivery();
    assert_delivery(&requeued, 1, true, 2);
    second.ack(requeued.delivery_tag, false);

    drop(first);
    let returned = second.next_delivery();
    assert_delivery(&returned, 3, true, 2);
    second.ack(returned.delivery_tag, false);

    eventually("every message settled once", || {
        settled_counts(&mut admin) == (5, 1, 2, 0, 0)
    });
}

/// `CancelOk` is the last frame about a consumer: deliveries dispatched to it before the cancel
/// reached its queue's owner arrive before the `CancelOk`, none after it. The check after
/// `CancelOk` uses a fence: a second consume on the same queue, whose `ConsumeOk` leaves the
/// owner behind every delivery dispatched before it. Every delivery received can be acked.
///
/// Catches: a `CancelOk` sent before the owner stopped the consumer (the broker sent it at once
/// until this test, so deliveries in flight followed it). Cannot catch: a delivery dispatched
/// after the stop that the fence does not order (there is none in the runtime: one dispatcher
/// sends in order).
#[test]
fn no_delivery_for_a_consumer_follows_its_cancel_ok() {
    let _serial = common::serial();
    let broker = start_broker(&scratch("cancel-ok-last"), 2);
    let mut admin = TestClient::connect(shard_address(&broker, 0));
    let count = 2000u64;
    let owner = queue_with_messages(&mut admin, "stream", count);

    let mut client = TestClient::connect(shard_address(&broker, other_shard(owner)));
    let consumer = client.consume("stream", count as u32);
    client.send(Frame::Cancel(Cancel {
        request_id: 1000,
        consumer_id: consumer,
    }));
    let mut delivered_count = 0u64;
    let mut last_tag = 0;
    loop {
        match client.recv() {
            Frame::CancelOk(ok) if ok.request_id == 1000 => break,
            Frame::Deliver(delivery) => {
                assert_eq!(delivery.consumer_id, consumer);
                assert_eq!(index_of(&delivery), delivered_count, "in queue order");
                delivered_count += 1;
                last_tag = delivery.delivery_tag;
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    client.send(Frame::Consume(Consume {
        request_id: 1001,
        queue: short("stream"),
        consumer_tag: short("fence"),
        prefetch: 1,
        exclusive: false,
        arguments: Table::new(),
    }));
    // Nothing about the fence comes before its reply, so the next frame is the reply unless a
    // delivery for the cancelled consumer slipped in.
    match client.recv() {
        Frame::ConsumeOk(ok) if ok.request_id == 1001 => {}
        Frame::Deliver(delivery) => panic!(
            "delivery {} for consumer {} after its CancelOk",
            delivery.delivery_tag, delivery.consumer_id
        ),
        other => panic!("unexpected {other:?}"),
    }

    if last_tag > 0 {
        client.ack(last_tag, true);
    }
    eventually("the cancelled consumer's deliveries acked", || {
        admin.stats()["acked_count"] == delivered_count
    });
}

/// A single ack settles its tag only; a multiple ack settles every outstanding tag up to it and
/// skips tags already settled; a second ack of a tag closes the connection with 500 (a `Close`,
/// no `ErrorReply`), and the deliveries still held return redelivered, in queue order.
///
/// Catches: a multiple ack that misses or overreaches, acks lost between shards, a settled tag
/// accepted twice, unacked messages not returned. Cannot catch: acks lost in a crash.
#[test]
fn acks_settle_exactly_the_tags_they_name() {
    let _serial = common::serial();
    let broker = start_broker(&scratch("acks"), 2);
    let mut admin = TestClient::connect(shard_address(&broker, 0));
    let owner = queue_with_messages(&mut admin, "acks", 10);

    let mut client = TestClient::connect(shard_address(&broker, other_shard(owner)));
    client.consume("acks", 10);
    let deliveries: Vec<Deliver> = (0..10).map(|_| client.next_delivery()).collect();
    for (index, delivery) in deliveries.iter().enumerate() {
        assert_delivery(delivery, index as u64, false, 1);
        assert_eq!(delivery.delivery_tag, index as u64 + 1, "tags count from 1");
    }
    client.ack(deliveries[2].delivery_tag, false);
    client.ack(deliveries[5].delivery_tag, true);
    client.ack(deliveries[7].delivery_tag, false);

    client.ack(deliveries[2].delivery_tag, false);
    match client.recv() {
        Frame::Close(close) => assert_eq!(close.code, ErrorCode::UNKNOWN_DELIVERY_TAG),
        other => panic!("expected Close 500, got {other:?}"),
    }
    drop(client);

    let mut survivor = TestClient::connect(shard_address(&broker, other_shard(owner)));
    survivor.consume("acks", 10);
    for index in [6, 8, 9] {
        let delivery = survivor.next_delivery();
        assert_delivery(&delivery, index, true, 2);
        survivor.ack(delivery.delivery_tag, false);
    }
    eventually("ten acks and nothing left", || {
        settled_counts(&mut admin) == (10, 0, 3, 0, 0)
    });
}

/// Nack and reject, single and multiple, with and without requeue, with a prefetch of 2 and a
/// backlog behind it: a requeued message goes back to its original place, ahead of the backlog,
/// marked redelivered with its delivery count raised on each delivery; a discarded one never
/// comes back. Each step waits for the delivery it makes room for, so the order is fixed.
///
/// Catches: requeue to the tail, a lost or doubled requeue, a multiple nack that settles the
/// wrong tags, a wrong `redelivered` flag or count, discarded messages that return. Cannot
/// catch: dead-lettering (not built).
#[test]
fn nacks_and_rejects_requeue_in_place_or_discard() {
    let _serial = common::serial();
    let broker = start_broker(&scratch("nack-reject"), 2);
    let mut admin = TestClient::connect(shard_address(&broker, 0));
    let owner = queue_with_messages(&mut admin, "refuse", 6);

    let mut client = TestClient::connect(shard_address(&broker, other_shard(owner)));
    client.consume("refuse", 2);
    let zero = client.next_delivery();
    let one = client.next_delivery();
    assert_delivery(&zero, 0, false, 1);
    assert_delivery(&one, 1, false, 1);

    client.nack_multiple(one.delivery_tag, true);
    let zero = client.next_delivery();
    let one = client.next_delivery();
    assert_delivery(&zero, 0, true, 2);
    assert_delivery(&one, 1, true, 2);

    client.reject(zero.delivery_tag, true);
    let zero = client.next_delivery();
    assert_delivery(&zero, 0, true, 3);

    client.reject(zero.delivery_tag, false);
    let two = client.next_delivery();
    assert_delivery(&two, 2, false, 1);

    client.nack(one.delivery_tag, false);
    let three = client.next_delivery();
    assert_delivery(&three, 3, false, 1);

    client.nack_multiple(three.delivery_tag, false);
    let four = client.next_delivery();
    let five = client.next_delivery();
    assert_delivery(&four, 4, false, 1);
    assert_delivery(&five, 5, false, 1);
    // Tag 0 with multiple settles everything outstanding, and with nothing outstanding it is
    // no error (PROTOCOL.md, section 9).
    client.ack(0, true);
    client.ack(0, true);

    eventually("two acks, four discards, three requeues", || {
        settled_counts(&mut admin) == (2, 4, 3, 0, 0)
    });
    assert_eq!(
        client.stats()["acked_count"],
        2,
        "the connection is still open"
    );
}

/// Two consumers on one connection, prefetch 3 and 5, drain 1,500 messages while acking as late
/// as they can: a consumer settles its oldest delivery only once it holds its whole prefetch
/// (or once everything left is held), and every tenth settlement is a nack with requeue. The
/// test counts what each consumer holds after every delivery; the broker's view can only lag
/// behind the client's (settlements are in flight), so an overrun here is one in the broker.
/// Every message ends acked exactly once.
///
/// Catches: credit returned twice (a requeue or ack that frees more than one slot), credit not
/// taken for a redelivery, a window that grows with the load. Cannot catch: an overrun that
/// needs more than two consumers or many connections.
#[test]
fn a_late_acking_consumer_never_holds_more_than_its_prefetch() {
    let _serial = common::serial();
    let broker = start_broker(&scratch("prefetch"), 2);
    let mut admin = TestClient::connect(shard_address(&broker, 0));
    let count = 1500u64;
    let owner = queue_with_messages(&mut admin, "window", count);

    let mut client = TestClient::connect(shard_address(&broker, other_shard(owner)));
    let mut prefetch = HashMap::new();
    prefetch.insert(client.consume("window", 3), 3usize);
    prefetch.insert(client.consume("window", 5), 5usize);
    let mut held: HashMap<u32, VecDeque<Deliver>> = HashMap::new();
    let mut acked = BTreeSet::new();
    let mut settlement_count = 0u64;
    let mut peak: HashMap<u32, usize> = HashMap::new();

    for _ in 0..count * 3 {
        if acked.len() as u64 == count {
            break;
        }
        let delivery = client.next_delivery();
        let consumer = delivery.consumer_id;
        let window = held.entry(consumer).or_default();
        window.push_back(delivery);
        assert!(
            window.len() <= prefetch[&consumer],
            "consumer {consumer} holds {} with prefetch {}",
            window.len(),
            prefetch[&consumer]
        );
        let peak = peak.entry(consumer).or_default();
        *peak = (*peak).max(window.len());

        let held_total: usize = held.values().map(VecDeque::len).sum();
        let everything_left_is_held = acked.len() + held_total == count as usize;
        for (consumer, window) in held.iter_mut() {
            let full = window.len() == prefetch[consumer];
            while !window.is_empty() && (full || everything_left_is_held) {
                let oldest = window.pop_front().expect("not empty");
                settlement_count += 1;
                if settlement_count.is_multiple_of(10) {
                    client.nack(oldest.delivery_tag, true);
                } else {
                    assert!(acked.insert(index_of(&oldest)), "acked twice");
                    client.ack(oldest.delivery_tag, false);
                }
                if full {
                    break;
                }
            }
        }
    }
    assert_eq!(acked.len() as u64, count, "every message acked once");
    for (consumer, window) in &prefetch {
        assert_eq!(
            peak[consumer], *window,
            "consumer {consumer} used its window"
        );
    }
    eventually("nothing left", || {
        let (acked_count, _, _, ready, unacked) = settled_counts(&mut admin);
        (acked_count, ready, unacked) == (count, 0, 0)
    });
}

/// Three consumers of one queue, added before any message: deliveries go round robin, and a
/// consumer whose window is full (prefetch 1, never acks) is skipped while the others keep
/// their turns.
///
/// Catches: a dispatcher that serves one consumer until it is full, a cursor that restarts at
/// the first consumer, a full consumer that blocks the others. Cannot catch: fairness between
/// queues on one shard.
#[test]
fn consumers_of_one_queue_take_turns_and_a_full_one_is_skipped() {
    let _serial = common::serial();
    let broker = start_broker(&scratch("round-robin"), 2);
    let mut admin = TestClient::connect(shard_address(&broker, 0));
    let owner = admin.declare_queue("turns", true);

    let mut client = TestClient::connect(shard_address(&broker, other_shard(owner)));
    let first = client.consume("turns", 100);
    let second = client.consume("turns", 100);
    let third = client.consume("turns", 1);
    let count = 60u64;
    admin.publish("", "turns", &payloads(0..count), Durability::Fsynced);
    admin.confirms_through(count);

    let order: Vec<(u32, u64)> = (0..count)
        .map(|_| {
            let delivery = client.next_delivery();
            (delivery.consumer_id, index_of(&delivery))
        })
        .collect();
    let indexes: Vec<u64> = order.iter().map(|&(_, index)| index).collect();
    assert_eq!(indexes, (0..count).collect::<Vec<_>>(), "queue order");
    let consumers: Vec<u32> = order.iter().map(|&(consumer, _)| consumer).collect();
    assert_eq!(&consumers[..5], &[first, second, third, first, second]);
    for pair in consumers[3..].chunks(2) {
        assert_eq!(pair[0], first, "{consumers:?}");
        if pair.len() == 2 {
            assert_eq!(pair[1], second, "{consumers:?}");
        }
    }
}

/// A consumer whose connection dies (it replaces the shorter end-to-end test of this): here on
/// the shard that does not own the queue, after acking part of what it held and with a
/// cancelled consumer on the same connection holding more. Its unacked messages come back redelivered with their delivery
/// count raised, in their original places ahead of messages never delivered; the acked one does
/// not.
///
/// Catches: a dead connection whose acks are replayed as requeues, a cancelled consumer's
/// deliveries forgotten at close, returned messages queued behind the backlog. Cannot catch: a
/// connection that dies without the broker noticing (heartbeats, tested in the wire crate).
#[test]
fn a_dead_consumer_connection_returns_what_it_held_in_place() {
    let _serial = common::serial();
    let broker = start_broker(&scratch("dead-consumer"), 2);
    let mut admin = TestClient::connect(shard_address(&broker, 0));
    let owner = queue_with_messages(&mut admin, "jobs", 8);

    let mut doomed = TestClient::connect(shard_address(&broker, other_shard(owner)));
    let cancelled = doomed.consume("jobs", 2);
    let zero = doomed.next_delivery();
    let one = doomed.next_delivery();
    doomed.cancel(cancelled);
    doomed.consume("jobs", 3);
    let held: Vec<Deliver> = (0..3).map(|_| doomed.next_delivery()).collect();
    assert_delivery(&zero, 0, false, 1);
    assert_delivery(&one, 1, false, 1);
    for (delivery, index) in held.iter().zip(2..) {
        assert_delivery(delivery, index, false, 1);
    }
    // Acks sent before the close are read before it, and reach the owner before the release.
    // The ack of 3 frees one slot of the window, which message 5 takes: wait for it, so that
    // what the connection holds when it dies is fixed.
    doomed.ack(held[1].delivery_tag, false);
    doomed.ack(zero.delivery_tag, false);
    assert_delivery(&doomed.next_delivery(), 5, false, 1);
    drop(doomed);
    // The broker sees the close on its own time; a consumer added before that would get the
    // messages never delivered first.
    eventually("the dead connection's deliveries returned", || {
        settled_counts(&mut admin) == (2, 0, 4, 6, 0)
    });

    let mut survivor = TestClient::connect(shard_address(&broker, owner));
    survivor.consume("jobs", 10);
    let expected = [
        (1, true, 2),
        (2, true, 2),
        (4, true, 2),
        (5, true, 2),
        (6, false, 1),
        (7, false, 1),
    ];
    for (index, redelivered, delivery_count) in expected {
        let delivery = survivor.next_delivery();
        assert_delivery(&delivery, index, redelivered, delivery_count);
        survivor.ack(delivery.delivery_tag, false);
    }
    eventually("eight acks and nothing left", || {
        settled_counts(&mut admin) == (8, 0, 4, 0, 0)
    });
}

/// A consume with an empty consumer tag gets a tag generated by the broker, unique on the
/// connection: two such consumes both succeed with different, non-empty tags, and a generated
/// tag skips one the client chose in the broker's own form (`amq.ctag-<consumer id>`).
///
/// Catches: an empty tag echoed back (a second empty-tag consume was then refused with 504
/// until this test), generated tags that collide with each other or with a chosen one. Cannot
/// catch: a collision with a chosen tag in another form (none is possible: the broker checks
/// every tag it generates against the connection's tags).
#[test]
fn an_empty_consumer_tag_gets_a_generated_unique_one() {
    let _serial = common::serial();
    let broker = start_broker(&scratch("generated-tags"), 2);
    let mut client = TestClient::connect(broker.client_addr());
    client.declare_queue("tagged", false);
    let consume = |client: &mut TestClient, tag: &str| {
        let reply = client.request(|request_id| {
            Frame::Consume(Consume {
                request_id,
                queue: short("tagged"),
                consumer_tag: short(tag),
                prefetch: 1,
                exclusive: false,
                arguments: Table::new(),
            })
        });
        match reply {
            Frame::ConsumeOk(ok) => ok.consumer_tag.as_str().to_owned(),
            other => panic!("consume with tag {tag:?} failed: {other:?}"),
        }
    };
    let chosen = consume(&mut client, "amq.ctag-2");
    let first = consume(&mut client, "");
    let second = consume(&mut client, "");
    assert!(!first.is_empty() && !second.is_empty());
    assert_ne!(first, second);
    assert_ne!(first, chosen, "the chosen tag is skipped");
    assert_ne!(second, chosen);
}

/// An exclusive consume is refused (303) while the queue has another consumer, and while it
/// holds the queue every other consume is refused, from its own connection or another; once
/// it cancels, others may consume again.
///
/// Catches: the exclusive flag ignored (it was until this test: both consumers got
/// deliveries), a refusal that outlives the exclusive consumer. Cannot catch: two exclusive
/// consumes racing from two shards (each reaches the owner in some order; the owner decides).
#[test]
fn an_exclusive_consumer_keeps_the_queue_to_itself_until_it_cancels() {
    let _serial = common::serial();
    let broker = start_broker(&scratch("exclusive-consumer"), 2);
    let mut admin = TestClient::connect(shard_address(&broker, 0));
    let owner = admin.declare_queue("solo", false);
    let consume = |client: &mut TestClient, exclusive: bool| {
        client.request(|request_id| {
            Frame::Consume(Consume {
                request_id,
                queue: short("solo"),
                consumer_tag: short(""),
                prefetch: 1,
                exclusive,
                arguments: Table::new(),
            })
        })
    };

    let mut first = TestClient::connect(shard_address(&broker, other_shard(owner)));
    let plain = match consume(&mut first, false) {
        Frame::ConsumeOk(ok) => ok.consumer_id,
        other => panic!("{other:?}"),
    };
    let mut second = TestClient::connect(shard_address(&broker, owner));
    let reply = consume(&mut second, true);
    assert_eq!(common::error_code(&reply), ErrorCode::EXCLUSIVE_LOCKED);
    first.cancel(plain);

    let exclusive = match consume(&mut second, true) {
        Frame::ConsumeOk(ok) => ok.consumer_id,
        other => panic!("{other:?}"),
    };
    for client in [&mut first, &mut second] {
        for flag in [false, true] {
            let reply = consume(client, flag);
            assert_eq!(common::error_code(&reply), ErrorCode::EXCLUSIVE_LOCKED);
        }
    }
    assert_eq!(admin.queue_counts("solo"), (0, 1));
    second.cancel(exclusive);
    assert!(matches!(consume(&mut first, false), Frame::ConsumeOk(_)));
}

/// A connection may consume and cancel far more often than the number of consumers it may hold
/// at once (`CONSUMERS_PER_CONNECTION_MAX`, 4,096): consumer ids of consumers that are gone are
/// used again. A cancelled consumer that still holds deliveries keeps its id until they are
/// settled, so its tags stay unambiguous.
///
/// Catches: ids handed out once per connection lifetime (a connection's 4,096th consume was
/// refused with 603 until this test), an id reused while the old consumer's deliveries are
/// still outstanding. Cannot catch: the limit on consumers held at once (4,096 live consumers
/// cost more than this test should).
#[test]
fn consumer_ids_of_gone_consumers_are_used_again() {
    let _serial = common::serial();
    let broker = start_broker(&scratch("consumer-ids"), 2);
    let mut client = TestClient::connect(shard_address(&broker, 0));
    let owner = client.declare_queue("churn", false);
    assert_eq!(
        owner, 0,
        "the queue is on the connection's shard: no ring hop per cycle"
    );
    client.publish("", "churn", &payloads(0..1), Durability::Written);
    client.confirms_through(1);

    let holder = client.consume("churn", 1);
    let held = client.next_delivery();
    client.cancel(holder);
    for cycle in 0..4200 {
        let reply = client.consume_reply("churn", 1);
        let Frame::ConsumeOk(ok) = reply else {
            panic!("consume {cycle} refused: {reply:?}");
        };
        assert_ne!(ok.consumer_id, holder, "the holder's id is still taken");
        client.cancel(ok.consumer_id);
    }
    client.ack(held.delivery_tag, false);
    eventually("the held delivery acked", || {
        client.stats()["acked_count"] == 1
    });
}

/// A durable queue delivers only what is fsynced; a transient queue on the same shard delivers
/// what is written. The broker syncs every 60 s here, so the durable queue's messages,
/// confirmed at `written` and published first, stay undelivered while the transient queue's,
/// published after them, reach the same consumer connection.
///
/// Catches: a durable queue that delivers at `written` (a power loss could then take back what
/// a consumer saw), a shard whose dispatch of one queue waits for another's watermark. Cannot
/// catch: an early delivery the dispatcher would make only after the test's last check.
#[test]
fn a_durable_queue_delivers_only_what_is_fsynced() {
    let _serial = common::serial();
    let mut config = common::test_config(&scratch("durable-gate"), 2);
    config.fsync = ruuster_broker::config::FsyncPolicy::Interval;
    config.fsync_interval_ms = 60_000;
    let broker = common::start_broker_with(config);
    let mut admin = TestClient::connect(shard_address(&broker, 0));
    let durable_owner = admin.declare_queue("synced-only", true);
    admin.declare_queue("elsewhere", false);
    let transient_owner = admin.declare_queue("written-is-enough", false);
    assert_eq!(durable_owner, transient_owner, "both on one shard");

    let mut consumer = TestClient::connect(shard_address(&broker, other_shard(durable_owner)));
    let durable_consumer = consumer.consume("synced-only", 10);
    let transient_consumer = consumer.consume("written-is-enough", 10);
    admin.publish("", "synced-only", &payloads(0..3), Durability::Written);
    admin.confirms_through(3);
    admin.publish(
        "",
        "written-is-enough",
        &payloads(0..3),
        Durability::Written,
    );
    admin.confirms_through(6);

    for index in 0..3 {
        let delivery = consumer.next_delivery();
        assert_eq!(
            delivery.consumer_id, transient_consumer,
            "the durable queue's consumer {durable_consumer} got a delivery before a sync"
        );
        assert_delivery(&delivery, index, false, 1);
    }
    assert_eq!(admin.queue_counts("synced-only"), (3, 1));
    assert_eq!(
        admin.stats()["messages_unacked_count"],
        3,
        "only the transient ones"
    );
}
