//! The client against a scripted fake broker over real loopback TCP: each test runs the server's
//! side as a task that decodes what the client sent with the real codec and answers with real
//! frames, then checks both what the client returned and what the server saw.

mod fake;

use std::time::Duration;

use bytes::Bytes;
use fake::{FakeServer, bounded, welcome};
use ruuster_client::{
    Client, ClientError, ConfirmStatus, ConsumeOptions, ConsumerEnd, Durability, ErrorCode,
    ExchangeKind, ExchangeOptions, Properties, PublishOptions, QueueOptions, ShortStr,
};
use ruuster_wire::frame::{
    Ack, Blocked, CancelNotice, CancelOk, Close, CloseOk, Confirm, ConsumeOk, Deliver, ErrorReply,
    ExchangeDeclareOk, Heartbeat, Nack, QueueDeclareOk, QueuePurgeOk, Reject, Return, Unblocked,
};
use ruuster_wire::{Body, Frame};

/// How long a test waits to be sure something does not happen (a publish held back).
const QUIET_PERIOD: Duration = Duration::from_millis(200);

fn close(code: ErrorCode, reason: &'static str) -> Close {
    Close {
        code,
        reason: ShortStr::from_static(reason),
    }
}

fn stored(first: u64, last: u64) -> Confirm {
    Confirm {
        first,
        last,
        status: ConfirmStatus::Stored(Durability::Fsynced),
    }
}

/// Asserts the next frame is a `Publish` and returns its messages' routing keys.
fn publish_keys(frame: Frame) -> Vec<String> {
    let Frame::Publish(publish) = frame else {
        panic!("expected Publish, got {frame:?}");
    };
    let keys = publish.messages.iter().map(|m| m.routing_key.to_string());
    keys.collect()
}

/// A successful handshake sends PLAIN guest/guest and exposes what the Welcome announced.
#[tokio::test]
async fn a_handshake_sends_plain_credentials_and_exposes_the_welcome() {
    let server = FakeServer::bind().await;
    let options = server.options();
    let port = server.port();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        let welcome = ruuster_wire::frame::Welcome {
            shard_index: 1,
            shard_ports: vec![port, port + 1],
            ..welcome(port)
        };
        let hello = peer.handshake(welcome).await;
        assert_eq!(peer.drain_until_eof().await.len(), 1, "only the Close");
        hello
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    assert_eq!(connection.shard_index(), 1);
    assert_eq!(connection.shard_ports(), &[port, port + 1]);
    assert_eq!(connection.server_name(), "fake 0.0.0");
    assert_eq!(connection.heartbeat(), Duration::from_secs(10));
    assert_eq!(
        connection.publish_window(),
        1024,
        "the server's limit caps the 4096 asked"
    );
    drop(connection);

    let hello = bounded("script", script).await.unwrap();
    assert_eq!(hello.mechanism, "PLAIN");
    assert_eq!(&hello.credentials[..], b"\0guest\0guest");
    assert_eq!(hello.client_name, "ruuster-client");
    assert_eq!((hello.version_min, hello.version_max), (1, 1));
    assert_eq!((hello.heartbeat_ms, hello.frame_size_max), (0, 0));
}

/// Every refusal a server can send during the handshake becomes `ClosedByServer` with its code,
/// and the client answers the server's `Close` with `CloseOk`.
#[tokio::test]
async fn each_handshake_refusal_becomes_a_typed_error_answered_with_close_ok() {
    let codes = [
        ErrorCode::UNSUPPORTED_VERSION,
        ErrorCode::INVALID_HANDSHAKE,
        ErrorCode::BAD_CREDENTIALS,
        ErrorCode::UNSUPPORTED_MECHANISM,
        ErrorCode::TOO_MANY_CONNECTIONS,
        ErrorCode::SHUTTING_DOWN,
    ];
    let server = FakeServer::bind().await;
    let options = server.options();
    let script = tokio::spawn(async move {
        for code in codes {
            let mut peer = server.accept().await;
            assert!(matches!(peer.recv().await, Frame::Hello(_)));
            peer.send(close(code, "refused")).await;
            assert_eq!(peer.drain_until_eof().await, vec![Frame::CloseOk(CloseOk)]);
        }
    });

    for code in codes {
        let error = bounded("connect", Client::connect(&options))
            .await
            .unwrap_err();
        match error {
            ClientError::ClosedByServer(error) => {
                assert_eq!(error.code, code);
                assert_eq!(error.message, "refused");
                assert_eq!(Some(error.name()), code.name());
            }
            other => panic!("expected ClosedByServer({code}), got {other:?}"),
        }
    }
    bounded("script", script).await.unwrap();
}

/// A Welcome whose heartbeat is below the protocol's minimum is refused with 107.
#[tokio::test]
async fn a_welcome_outside_the_protocol_limits_is_refused_with_invalid_handshake() {
    let server = FakeServer::bind().await;
    let options = server.options();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        let port = server.port();
        peer.handshake(ruuster_wire::frame::Welcome {
            heartbeat_ms: 10,
            ..welcome(port)
        })
        .await;
        peer.drain_until_eof().await
    });

    let error = bounded("connect", Client::connect(&options))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClientError::Protocol(ref e) if e.code() == ErrorCode::INVALID_HANDSHAKE)
    );
    let frames = bounded("script", script).await.unwrap();
    assert!(matches!(&frames[..], [Frame::Close(c)] if c.code == ErrorCode::INVALID_HANDSHAKE));
}

/// Three requests in flight at once get their replies by request id although the server answers
/// in reverse order, and an `ErrorReply` fails only its own request.
#[tokio::test]
async fn pipelined_requests_are_matched_by_id_when_replies_arrive_out_of_order() {
    let server = FakeServer::bind().await;
    let options = server.options();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        peer.handshake(welcome(server.port())).await;
        let mut requests = Vec::new();
        for _ in 0..3 {
            requests.push(peer.recv_skipping_heartbeats().await);
        }
        let mut replies = Vec::new();
        for request in requests.iter().rev() {
            let request_id = request.request_id().unwrap();
            replies.push(match request {
                Frame::QueueDeclare(declare) => Frame::QueueDeclareOk(QueueDeclareOk {
                    request_id,
                    queue: declare.queue.clone(),
                    message_count: 7,
                    consumer_count: 2,
                    owner_shard: 0,
                }),
                Frame::ExchangeDeclare(_) => Frame::ErrorReply(ErrorReply {
                    request_id,
                    code: ErrorCode::PRECONDITION_FAILED,
                    message: ShortStr::from_static("exchange 'orders' differs"),
                }),
                Frame::QueuePurge(_) => Frame::QueuePurgeOk(QueuePurgeOk {
                    request_id,
                    message_count: 3,
                }),
                other => panic!("unexpected request {other:?}"),
            });
        }
        peer.send_all(&replies).await;
        // The connection stays usable after the error: one more request.
        let Frame::ExchangeDeclare(declare) = peer.recv_skipping_heartbeats().await else {
            panic!("expected a second exchange declare");
        };
        let request_id = declare.request_id;
        peer.send(ExchangeDeclareOk { request_id }).await;
        peer.drain_until_eof().await;
        requests
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    let exchange_options = ExchangeOptions::default();
    let queue_options = QueueOptions::default();
    let (declared, exchange, purged) = bounded("requests", async {
        tokio::join!(
            connection.queue_declare("jobs", &queue_options),
            connection.exchange_declare("orders", ExchangeKind::Topic, &exchange_options),
            connection.queue_purge("jobs"),
        )
    })
    .await;
    let declared = declared.unwrap();
    assert_eq!(
        (declared.name.as_str(), declared.message_count),
        ("jobs", 7)
    );
    assert_eq!(declared.consumer_count, 2);
    assert_eq!(purged.unwrap(), 3);
    let error = exchange.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::PRECONDITION_FAILED));
    assert!(matches!(error, ClientError::Server(ref e) if e.name() == "precondition-failed"));

    let again = connection.exchange_declare("orders", ExchangeKind::Topic, &exchange_options);
    bounded("second declare", again).await.unwrap();
    drop(connection);
    let requests = bounded("script", script).await.unwrap();
    let mut ids: Vec<u32> = requests.iter().map(|r| r.request_id().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "request ids are distinct");
}

/// Confirms that span batch boundaries resolve each batch with its own ranges: one stored range
/// covering batch 1 and half of batch 2, a rejection for the rest of batch 2, and an unroutable
/// range for batch 3.
#[tokio::test]
async fn confirms_spanning_batches_resolve_each_batch_with_its_outcomes() {
    let server = FakeServer::bind().await;
    let options = server.options();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        peer.handshake(welcome(server.port())).await;
        let mut keys = Vec::new();
        for _ in 0..3 {
            let frame = peer.recv_skipping_heartbeats().await;
            if let Frame::Publish(publish) = &frame {
                assert_eq!(publish.exchange, "events");
                assert_eq!(publish.durability, Durability::Written);
                for message in &publish.messages {
                    let body = Body::parse(message.body.clone()).unwrap();
                    assert_eq!(&body.payload()[..], message.routing_key.as_bytes());
                }
            }
            keys.extend(publish_keys(frame));
        }
        let rejected = ConfirmStatus::Rejected(ErrorCode::STORAGE_FAILED);
        peer.send_all(&[
            Frame::Confirm(stored(1, 4)),
            Frame::Confirm(Confirm {
                first: 5,
                last: 5,
                status: rejected,
            }),
            Frame::Confirm(Confirm {
                first: 6,
                last: 7,
                status: ConfirmStatus::Unroutable,
            }),
        ])
        .await;
        peer.drain_until_eof().await;
        keys
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    let publish_options = PublishOptions {
        durability: Durability::Written,
        ..PublishOptions::default()
    };
    let batch = |keys: &[&'static str]| -> Vec<(&'static str, Bytes)> {
        keys.iter()
            .map(|key| (*key, ruuster_client::body(key.as_bytes())))
            .collect()
    };
    let mut pending = Vec::new();
    for keys in [&["a", "b", "c"][..], &["d", "e"], &["f", "g"]] {
        let messages = batch(keys);
        let published = connection.publish_batch("events", &messages, &publish_options);
        pending.push(bounded("publish", published).await.unwrap());
    }
    let sequences: Vec<(u64, u64)> = pending.iter().map(|p| (p.first(), p.last())).collect();
    assert_eq!(sequences, vec![(1, 3), (4, 5), (6, 7)]);

    let mut confirmations = Vec::new();
    for confirm in pending {
        confirmations.push(bounded("confirm", confirm).await.unwrap());
    }
    assert_eq!(confirmations[0].stored(), Some(Durability::Fsynced));
    assert_eq!(confirmations[1].stored(), None);
    assert_eq!(
        confirmations[1].status_of(4),
        Some(ConfirmStatus::Stored(Durability::Fsynced))
    );
    assert_eq!(
        confirmations[1].status_of(5),
        Some(ConfirmStatus::Rejected(ErrorCode::STORAGE_FAILED))
    );
    assert_eq!(confirmations[2].ranges().len(), 1);
    assert_eq!(
        confirmations[2].status_of(7),
        Some(ConfirmStatus::Unroutable)
    );
    assert_eq!(connection.unconfirmed(), 0);
    drop(connection);
    let keys = bounded("script", script).await.unwrap();
    assert_eq!(keys, ["a", "b", "c", "d", "e", "f", "g"]);
}

/// With a window of 4, a batch of 2 after a batch of 3 waits until a confirm frees room, and the
/// server sees it only after sending that confirm.
#[tokio::test]
async fn a_publish_waits_while_the_window_is_full_and_resumes_on_confirm() {
    let server = FakeServer::bind().await;
    let options = server.options();
    let (confirm_sent, confirm_sent_rx) = tokio::sync::oneshot::channel();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        let port = server.port();
        peer.handshake(ruuster_wire::frame::Welcome {
            unconfirmed_max: 4,
            ..welcome(port)
        })
        .await;
        assert_eq!(publish_keys(peer.recv_skipping_heartbeats().await).len(), 3);
        // Nothing else may arrive while the window is full.
        let early = tokio::time::timeout(QUIET_PERIOD, peer.recv_skipping_heartbeats()).await;
        assert!(
            early.is_err(),
            "the client published past its window: {early:?}"
        );
        peer.send(stored(1, 1)).await;
        confirm_sent.send(()).unwrap();
        assert_eq!(publish_keys(peer.recv_skipping_heartbeats().await).len(), 2);
        peer.send(stored(2, 5)).await;
        peer.drain_until_eof().await;
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    assert_eq!(connection.publish_window(), 4);
    let messages = |count: usize| vec![("q", ruuster_client::body(b"m")); count];
    let defaults = PublishOptions::default();
    let (three, two, five) = (messages(3), messages(2), messages(5));
    let first = connection.publish_batch("", &three, &defaults);
    let first = bounded("first publish", first).await.unwrap();
    assert_eq!(connection.unconfirmed(), 3);

    let second = connection.publish_batch("", &two, &defaults);
    let second = bounded("second publish", second).await.unwrap();
    bounded("confirm sent", confirm_sent_rx).await.unwrap();
    assert_eq!((second.first(), second.last()), (4, 5));
    bounded("first confirm", first).await.unwrap();
    bounded("second confirm", second).await.unwrap();

    let too_large = connection.publish_batch("", &five, &defaults);
    let error = bounded("oversized batch", too_large).await.unwrap_err();
    assert!(matches!(
        error,
        ClientError::InvalidInput { field: "batch", .. }
    ));
    drop(connection);
    bounded("script", script).await.unwrap();
}

/// A mandatory message that matches nothing comes back in a `Return` attached to its batch's
/// confirmation, with its body, before the unroutable confirm; the returns stream has it too.
#[tokio::test]
async fn a_returned_mandatory_message_is_attached_to_its_confirmation() {
    let server = FakeServer::bind().await;
    let options = server.options();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        peer.handshake(welcome(server.port())).await;
        let Frame::Publish(publish) = peer.recv_skipping_heartbeats().await else {
            panic!("expected Publish");
        };
        assert!(publish.mandatory);
        let returned = &publish.messages[1];
        peer.send_all(&[
            Frame::Return(Return {
                sequence: 2,
                code: ErrorCode::UNROUTABLE,
                exchange: publish.exchange.clone(),
                routing_key: returned.routing_key.clone(),
                body: returned.body.clone(),
            }),
            Frame::Confirm(stored(1, 1)),
            Frame::Confirm(Confirm {
                first: 2,
                last: 2,
                status: ConfirmStatus::Unroutable,
            }),
        ])
        .await;
        peer.drain_until_eof().await;
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    let mut returns = connection.returns();
    let properties = Properties {
        message_id: Some(ShortStr::from_static("m-2")),
        ..Properties::default()
    };
    let messages = [
        ("order.eu", ruuster_client::body(b"one")),
        ("order.us", properties.to_body(b"two").unwrap()),
    ];
    let mandatory = PublishOptions {
        mandatory: true,
        ..PublishOptions::default()
    };
    let pending = bounded(
        "publish",
        connection.publish_batch("orders", &messages, &mandatory),
    );
    let confirmation = bounded("confirm", pending.await.unwrap()).await.unwrap();
    let [returned] = confirmation.returned() else {
        panic!("expected one returned message: {confirmation:?}");
    };
    assert_eq!(
        (returned.sequence, returned.code),
        (2, ErrorCode::UNROUTABLE)
    );
    assert_eq!(
        (returned.exchange.as_str(), returned.routing_key.as_str()),
        ("orders", "order.us")
    );
    let body = Body::parse(returned.body.clone()).unwrap();
    assert_eq!(body.message_id().map(|id| id.as_str()), Some("m-2"));
    assert_eq!(&body.payload()[..], b"two");
    assert_eq!(confirmation.status_of(2), Some(ConfirmStatus::Unroutable));
    let streamed = bounded("returns stream", returns.recv()).await.unwrap();
    assert_eq!(
        &streamed, returned,
        "the stream carries the same returned message"
    );
    drop(connection);
    bounded("script", script).await.unwrap();
}

/// `Blocked` shows in the blocked watch and holds publishes back until `Unblocked`.
#[tokio::test]
async fn publishing_waits_while_the_server_has_blocked_the_connection() {
    let server = FakeServer::bind().await;
    let options = server.options();
    let (unblocked_sent, unblocked_sent_rx) = tokio::sync::oneshot::channel();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        peer.handshake(welcome(server.port())).await;
        peer.send(Blocked {
            code: ErrorCode::DISK_LOW,
            reason: ShortStr::from_static("free disk below 5%"),
        })
        .await;
        let early = tokio::time::timeout(QUIET_PERIOD * 2, peer.recv_skipping_heartbeats()).await;
        assert!(
            early.is_err(),
            "the client published while blocked: {early:?}"
        );
        peer.send(Unblocked).await;
        unblocked_sent.send(()).unwrap();
        assert_eq!(publish_keys(peer.recv_skipping_heartbeats().await), ["k"]);
        peer.send(stored(1, 1)).await;
        peer.drain_until_eof().await;
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    let mut blocked = connection.blocked();
    let notice = bounded("blocked", blocked.wait_for(Option::is_some))
        .await
        .unwrap()
        .clone();
    assert_eq!(notice.unwrap().code, ErrorCode::DISK_LOW);

    let body = ruuster_client::body(b"x");
    let defaults = PublishOptions::default();
    let publish = connection.publish("", "k", body, &defaults);
    let pending = bounded("publish", publish).await.unwrap();
    assert!(
        unblocked_sent_rx.await.is_ok(),
        "the publish returned only after Unblocked"
    );
    assert!(connection.blocked().borrow().is_none());
    bounded("confirm", pending).await.unwrap();
    drop(connection);
    bounded("script", script).await.unwrap();
}

/// Deliveries pushed after `ConsumeOk` (in the same write) reach the consumer with their fields
/// and body, and ack, nack and reject arrive at the server as the frames the protocol defines.
#[tokio::test]
async fn deliveries_reach_the_consumer_and_settlements_reach_the_server() {
    let server = FakeServer::bind().await;
    let options = server.options();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        peer.handshake(welcome(server.port())).await;
        let Frame::Consume(consume) = peer.recv_skipping_heartbeats().await else {
            panic!("expected Consume");
        };
        assert_eq!(
            (consume.queue.as_str(), consume.consumer_tag.as_str()),
            ("jobs", "w1")
        );
        assert_eq!(consume.prefetch, 3);
        let properties = Properties {
            content_type: Some(ShortStr::from_static("text/plain")),
            ..Properties::default()
        };
        let deliver = |tag: u64| {
            Frame::Deliver(Deliver {
                consumer_id: 9,
                delivery_tag: tag,
                delivery_count: tag as u32,
                redelivered: tag > 1,
                exchange: ShortStr::from_static("ex"),
                routing_key: ShortStr::from_static("jobs"),
                body: properties.to_body(format!("job {tag}").as_bytes()).unwrap(),
            })
        };
        let consume_ok = Frame::ConsumeOk(ConsumeOk {
            request_id: consume.request_id,
            consumer_id: 9,
            consumer_tag: consume.consumer_tag.clone(),
        });
        peer.send_all(&[consume_ok, deliver(1), deliver(2), deliver(3)])
            .await;
        let mut settlements = Vec::new();
        for _ in 0..4 {
            settlements.push(peer.recv_skipping_heartbeats().await);
        }
        peer.drain_until_eof().await;
        settlements
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    let consume_options = ConsumeOptions::default();
    let consume = connection.consume("jobs", "w1", 3, &consume_options);
    let mut consumer = bounded("consume", consume).await.unwrap();
    assert_eq!((consumer.tag(), consumer.prefetch()), ("w1", 3));
    let mut deliveries = Vec::new();
    for _ in 0..3 {
        deliveries.push(bounded("recv", consumer.recv()).await.unwrap());
    }
    let tags: Vec<u64> = deliveries.iter().map(|d| d.delivery_tag).collect();
    assert_eq!(tags, [1, 2, 3]);
    let second = &deliveries[1];
    assert!(second.redelivered && second.delivery_count == 2);
    assert_eq!(
        (second.exchange.as_str(), second.routing_key.as_str()),
        ("ex", "jobs")
    );
    assert_eq!(second.consumer_tag, "w1");
    assert_eq!(
        second.body.content_type().map(|c| c.as_str()),
        Some("text/plain")
    );
    assert_eq!(&second.body.payload()[..], b"job 2");

    deliveries[0].ack().unwrap();
    deliveries[1].nack(true).unwrap();
    deliveries[2].reject(false).unwrap();
    connection.ack(3, true).unwrap();
    drop((deliveries, consumer, connection));

    let settlements = bounded("script", script).await.unwrap();
    assert_eq!(
        settlements,
        [
            Frame::Ack(Ack {
                delivery_tag: 1,
                multiple: false
            }),
            Frame::Nack(Nack {
                delivery_tag: 2,
                multiple: false,
                requeue: true
            }),
            Frame::Reject(Reject {
                delivery_tag: 3,
                requeue: false
            }),
            Frame::Ack(Ack {
                delivery_tag: 3,
                multiple: true
            }),
        ]
    );
}

/// A `CancelNotice` ends the stream with the server's code after the deliveries before it; a
/// client `cancel` waits for `CancelOk` and ends its stream with `Cancelled`.
#[tokio::test]
async fn cancel_notices_and_cancels_end_the_stream_with_a_typed_reason() {
    let server = FakeServer::bind().await;
    let options = server.options();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        peer.handshake(welcome(server.port())).await;
        for consumer_id in [1, 2] {
            let Frame::Consume(consume) = peer.recv_skipping_heartbeats().await else {
                panic!("expected Consume");
            };
            peer.send(ConsumeOk {
                request_id: consume.request_id,
                consumer_id,
                consumer_tag: consume.consumer_tag,
            })
            .await;
        }
        let deliver = Frame::Deliver(Deliver {
            consumer_id: 1,
            delivery_tag: 1,
            delivery_count: 1,
            redelivered: false,
            exchange: ShortStr::default(),
            routing_key: ShortStr::from_static("doomed"),
            body: ruuster_client::body(b"last"),
        });
        let notice = Frame::CancelNotice(CancelNotice {
            consumer_id: 1,
            code: ErrorCode::QUEUE_DELETED,
            reason: ShortStr::from_static("queue 'doomed' deleted"),
        });
        peer.send_all(&[deliver, notice]).await;
        let Frame::Cancel(cancel) = peer.recv_skipping_heartbeats().await else {
            panic!("expected Cancel");
        };
        assert_eq!(cancel.consumer_id, 2);
        let request_id = cancel.request_id;
        peer.send(CancelOk {
            request_id,
            consumer_id: 2,
        })
        .await;
        peer.drain_until_eof().await;
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    let consume_options = ConsumeOptions::default();
    let first = connection.consume("doomed", "", 10, &consume_options);
    let mut first = bounded("consume", first).await.unwrap();
    let second = connection.consume("other", "", 10, &consume_options);
    let mut second = bounded("consume", second).await.unwrap();

    assert_eq!(bounded("recv", first.recv()).await.unwrap().delivery_tag, 1);
    match bounded("recv", first.recv()).await {
        Err(ConsumerEnd::CancelledByServer(reason)) => {
            assert_eq!(reason.code, ErrorCode::QUEUE_DELETED);
        }
        other => panic!("expected the server's cancel, got {other:?}"),
    }
    assert!(matches!(
        first.recv().await,
        Err(ConsumerEnd::CancelledByServer(_))
    ));

    bounded("cancel", second.cancel()).await.unwrap();
    assert!(matches!(
        bounded("recv", second.recv()).await,
        Err(ConsumerEnd::Cancelled)
    ));
    drop((first, second, connection));
    bounded("script", script).await.unwrap();
}

/// An idle client sends `Heartbeat` after each heartbeat interval without sending, not sooner.
#[tokio::test]
async fn an_idle_client_sends_heartbeats() {
    let server = FakeServer::bind().await;
    let options = server.options();
    // Taken before the client connects: its first heartbeat is due 100 ms after its Hello, the
    // third 300 ms after, so however the two tasks are scheduled the third cannot arrive sooner.
    let started = tokio::time::Instant::now();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        let port = server.port();
        let hello = peer
            .handshake(ruuster_wire::frame::Welcome {
                heartbeat_ms: 100,
                ..welcome(port)
            })
            .await;
        assert_eq!(hello.heartbeat_ms, 100);
        for _ in 0..3 {
            assert_eq!(peer.recv().await, Frame::Heartbeat(Heartbeat));
            // Keep the client from declaring us dead.
            peer.send(Heartbeat).await;
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(300),
            "heartbeats came too fast: {elapsed:?}"
        );
        // Now silent: the client gives up on us after two intervals.
        peer.drain_until_eof().await;
    });

    let options = ruuster_client::ConnectOptions {
        heartbeat: Duration::from_millis(100),
        ..options
    };
    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    bounded("script", script).await.unwrap();
    let ended = connection.ended();
    assert!(
        matches!(ended, Some(ClientError::MissedHeartbeats { .. })),
        "{ended:?}"
    );
}

/// A server that sends nothing for two heartbeat intervals is declared dead: the client ends
/// with `MissedHeartbeats`, sends `Close` 106 and closes the socket.
#[tokio::test]
async fn a_silent_server_is_detected_after_two_heartbeat_intervals() {
    let server = FakeServer::bind().await;
    let options = server.options();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        let port = server.port();
        peer.handshake(ruuster_wire::frame::Welcome {
            heartbeat_ms: 100,
            ..welcome(port)
        })
        .await;
        peer.drain_until_eof().await
    });

    // Started before the connect, so that the interval measured can only be longer than the
    // client's (its clock starts at the Welcome), however late this task is scheduled.
    let started = tokio::time::Instant::now();
    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    let error = bounded("silence detected", connection.wait_ended()).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(error, ClientError::MissedHeartbeats { interval } if interval.as_millis() == 100)
    );
    assert!(
        elapsed >= Duration::from_millis(200),
        "declared dead too early: {elapsed:?}"
    );
    let frames = bounded("script", script).await.unwrap();
    assert!(matches!(&frames[..], [Frame::Close(c)] if c.code == ErrorCode::MISSED_HEARTBEATS));
    let defaults = PublishOptions::default();
    let publish = connection.publish("", "q", ruuster_client::body(b""), &defaults);
    assert!(matches!(
        publish.await,
        Err(ClientError::MissedHeartbeats { .. })
    ));
}

/// `close` sends `Close` 0 with the caller's reason, returns once `CloseOk` arrives, and fails an
/// unconfirmed publish.
#[tokio::test]
async fn close_waits_for_close_ok_and_fails_what_was_unconfirmed() {
    let server = FakeServer::bind().await;
    let options = server.options();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        peer.handshake(welcome(server.port())).await;
        assert!(matches!(
            peer.recv_skipping_heartbeats().await,
            Frame::Publish(_)
        ));
        let Frame::Close(close) = peer.recv_skipping_heartbeats().await else {
            panic!("expected Close");
        };
        assert_eq!(close.code, ErrorCode::NORMAL_CLOSE);
        assert_eq!(close.reason, "shutting down the app");
        peer.send(CloseOk).await;
        peer.drain_until_eof().await
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    let defaults = PublishOptions::default();
    let publish = connection.publish("", "q", ruuster_client::body(b"m"), &defaults);
    let pending = bounded("publish", publish).await.unwrap();
    let close = connection.close_with_reason("shutting down the app");
    bounded("close", close).await.unwrap();
    assert!(matches!(pending.await, Err(ClientError::Closed)));
    assert!(matches!(connection.ack(1, false), Err(ClientError::Closed)));
    assert!(
        bounded("script", script).await.unwrap().is_empty(),
        "nothing after Close"
    );
}

/// A confirm that skips a sequence number is a protocol violation: the client ends the connection
/// with the wire error and tells the server with `Close` 100.
#[tokio::test]
async fn a_confirm_out_of_sequence_ends_the_connection_as_a_protocol_violation() {
    let server = FakeServer::bind().await;
    let options = server.options();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        peer.handshake(welcome(server.port())).await;
        assert!(matches!(
            peer.recv_skipping_heartbeats().await,
            Frame::Publish(_)
        ));
        peer.send(stored(2, 2)).await;
        peer.drain_until_eof().await
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    let messages = [
        ("q", ruuster_client::body(b"1")),
        ("q", ruuster_client::body(b"2")),
    ];
    let defaults = PublishOptions::default();
    let publish = connection.publish_batch("", &messages, &defaults);
    let pending = bounded("publish", publish).await.unwrap();
    let error = bounded("confirm", pending).await.unwrap_err();
    assert!(matches!(
        error,
        ClientError::Protocol(ruuster_wire::Error::SequenceMismatch { .. })
    ));
    let frames = bounded("script", script).await.unwrap();
    assert!(matches!(&frames[..], [Frame::Close(c)] if c.code == ErrorCode::MALFORMED_FRAME));
}

/// `connect_to_queue_owner` asks the first shard who owns the queue and reconnects to the owner's
/// announced port, landing on that shard.
#[tokio::test]
async fn connect_to_queue_owner_reconnects_to_the_owners_shard_port() {
    let shard0 = FakeServer::bind().await;
    let shard1 = FakeServer::bind().await;
    let options = shard0.options();
    let ports = vec![shard0.port(), shard1.port()];
    let script = tokio::spawn(async move {
        let mut first = shard0.accept().await;
        first
            .handshake(ruuster_wire::frame::Welcome {
                shard_ports: ports.clone(),
                ..welcome(ports[0])
            })
            .await;
        let Frame::QueueDeclare(declare) = first.recv_skipping_heartbeats().await else {
            panic!("expected a passive QueueDeclare");
        };
        assert!(declare.passive);
        first
            .send(QueueDeclareOk {
                request_id: declare.request_id,
                queue: declare.queue,
                message_count: 0,
                consumer_count: 0,
                owner_shard: 1,
            })
            .await;
        assert!(matches!(
            first.recv_skipping_heartbeats().await,
            Frame::Close(_)
        ));
        first.send(CloseOk).await;
        first.drain_until_eof().await;

        let mut second = shard1.accept().await;
        second
            .handshake(ruuster_wire::frame::Welcome {
                shard_index: 1,
                shard_ports: ports.clone(),
                ..welcome(ports[0])
            })
            .await;
        second.drain_until_eof().await;
    });

    let connect = Client::connect_to_queue_owner(&options, "orders.eu");
    let connection = bounded("connect to owner", connect).await.unwrap();
    assert_eq!(connection.shard_index(), 1);
    assert_eq!(
        connection.peer_address().port(),
        connection.shard_ports()[1]
    );
    drop(connection);
    bounded("script", script).await.unwrap();
}

/// Every error code a server may send in `ErrorReply` reaches the caller as
/// `ClientError::Server` with that code and its name, and the connection stays open.
#[tokio::test]
async fn every_request_level_error_code_becomes_a_typed_server_error() {
    let codes: Vec<ErrorCode> = ErrorCode::all()
        .filter(|code| !code.closes_connection())
        .collect();
    let count = codes.len();
    let server = FakeServer::bind().await;
    let options = server.options();
    let replies = codes.clone();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        peer.handshake(welcome(server.port())).await;
        for code in replies {
            let request = peer.recv_skipping_heartbeats().await;
            let request_id = request.request_id().unwrap();
            let message = ShortStr::try_from(format!("code {}", code.0)).unwrap();
            peer.send(ErrorReply {
                request_id,
                code,
                message,
            })
            .await;
        }
        peer.drain_until_eof().await
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    for code in codes {
        let error = bounded("purge", connection.queue_purge("q"))
            .await
            .unwrap_err();
        let ClientError::Server(server_error) = error else {
            panic!("expected a server error for {code}, got {error:?}");
        };
        assert_eq!(server_error.code, code);
        assert_eq!(Some(server_error.name()), code.name());
        assert_eq!(server_error.message, format!("code {}", code.0));
    }
    assert!(connection.ended().is_none());
    assert!(
        count >= 15,
        "the spec lists at least 15 request-level codes, found {count}"
    );
    drop(connection);
    let frames = bounded("script", script).await.unwrap();
    assert!(matches!(&frames[..], [Frame::Close(c)] if c.code == ErrorCode::NORMAL_CLOSE));
}

/// A fatal `Close` from the server mid-session is answered with `CloseOk` and fails every waiter
/// (a request, a confirm, a consumer) with `ClosedByServer` and the server's code.
#[tokio::test]
async fn a_fatal_close_from_the_server_fails_every_waiter_with_its_code() {
    let server = FakeServer::bind().await;
    let options = server.options();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        peer.handshake(welcome(server.port())).await;
        let Frame::Consume(consume) = peer.recv_skipping_heartbeats().await else {
            panic!("expected Consume");
        };
        peer.send(ConsumeOk {
            request_id: consume.request_id,
            consumer_id: 1,
            consumer_tag: ShortStr::from_static("c"),
        })
        .await;
        assert!(matches!(
            peer.recv_skipping_heartbeats().await,
            Frame::Publish(_)
        ));
        assert!(matches!(
            peer.recv_skipping_heartbeats().await,
            Frame::Stats(_)
        ));
        peer.send(close(ErrorCode::INTERNAL_ERROR, "shard 1 failed"))
            .await;
        peer.drain_until_eof().await
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    let consume_options = ConsumeOptions::default();
    let consume = connection.consume("q", "c", 5, &consume_options);
    let mut consumer = bounded("consume", consume).await.unwrap();
    let defaults = PublishOptions::default();
    let publish = connection.publish("", "q", ruuster_client::body(b"m"), &defaults);
    let pending = bounded("publish", publish).await.unwrap();
    let stats = bounded("stats", connection.stats()).await.unwrap_err();

    let internal = |error: &ClientError| error.code() == Some(ErrorCode::INTERNAL_ERROR);
    assert!(
        internal(&stats) && matches!(stats, ClientError::ClosedByServer(_)),
        "{stats:?}"
    );
    assert!(internal(&bounded("confirm", pending).await.unwrap_err()));
    match bounded("recv", consumer.recv()).await {
        Err(ConsumerEnd::ConnectionClosed(error)) => assert!(internal(&error)),
        other => panic!("expected the connection's end, got {other:?}"),
    }
    let frames = bounded("script", script).await.unwrap();
    assert_eq!(frames, [Frame::CloseOk(CloseOk)]);
}

/// A server that delivers more than the prefetch to a consumer breaks the protocol: the client
/// ends the connection instead of buffering without bound.
#[tokio::test]
async fn deliveries_past_the_prefetch_end_the_connection_as_a_violation() {
    let server = FakeServer::bind().await;
    let options = server.options();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        peer.handshake(welcome(server.port())).await;
        let Frame::Consume(consume) = peer.recv_skipping_heartbeats().await else {
            panic!("expected Consume");
        };
        let mut frames = vec![Frame::ConsumeOk(ConsumeOk {
            request_id: consume.request_id,
            consumer_id: 1,
            consumer_tag: ShortStr::from_static("c"),
        })];
        for delivery_tag in 1..=3 {
            frames.push(Frame::Deliver(Deliver {
                consumer_id: 1,
                delivery_tag,
                delivery_count: 1,
                redelivered: false,
                exchange: ShortStr::default(),
                routing_key: ShortStr::from_static("q"),
                body: ruuster_client::body(b"m"),
            }));
        }
        peer.send_all(&frames).await;
        peer.drain_until_eof().await
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    let consume_options = ConsumeOptions::default();
    let consume = connection.consume("q", "c", 2, &consume_options);
    let mut consumer = bounded("consume", consume).await.unwrap();
    let error = bounded("violation", connection.wait_ended()).await;
    assert!(matches!(error, ClientError::Violation(ref detail) if detail.contains("prefetch")));
    for tag in [1, 2] {
        assert_eq!(
            bounded("recv", consumer.recv()).await.unwrap().delivery_tag,
            tag
        );
    }
    assert!(matches!(
        consumer.recv().await,
        Err(ConsumerEnd::ConnectionClosed(_))
    ));
    let frames = bounded("script", script).await.unwrap();
    assert!(matches!(&frames[..], [Frame::Close(c)] if c.code == ErrorCode::UNEXPECTED_FRAME));
}

/// Dropping a consumer sends `Cancel` without waiting, and a delivery that arrives before the
/// server's `CancelOk` is handed back with a requeueing `Reject`.
#[tokio::test]
async fn dropping_a_consumer_cancels_it_and_requeues_what_arrives_after() {
    let server = FakeServer::bind().await;
    let options = server.options();
    let (settled, settled_rx) = tokio::sync::oneshot::channel();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        peer.handshake(welcome(server.port())).await;
        let Frame::Consume(consume) = peer.recv_skipping_heartbeats().await else {
            panic!("expected Consume");
        };
        peer.send(ConsumeOk {
            request_id: consume.request_id,
            consumer_id: 4,
            consumer_tag: ShortStr::from_static("c"),
        })
        .await;
        let Frame::Cancel(cancel) = peer.recv_skipping_heartbeats().await else {
            panic!("expected Cancel");
        };
        assert_eq!(cancel.consumer_id, 4);
        let deliver = Frame::Deliver(Deliver {
            consumer_id: 4,
            delivery_tag: 1,
            delivery_count: 1,
            redelivered: false,
            exchange: ShortStr::default(),
            routing_key: ShortStr::from_static("q"),
            body: ruuster_client::body(b"late"),
        });
        let cancel_ok = Frame::CancelOk(CancelOk {
            request_id: cancel.request_id,
            consumer_id: 4,
        });
        peer.send_all(&[deliver, cancel_ok]).await;
        settled.send(peer.recv_skipping_heartbeats().await).unwrap();
        peer.drain_until_eof().await
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    let consume_options = ConsumeOptions::default();
    let consume = connection.consume("q", "c", 5, &consume_options);
    drop(bounded("consume", consume).await.unwrap());
    let requeue = bounded("requeue", settled_rx).await.unwrap();
    assert_eq!(
        requeue,
        Frame::Reject(Reject {
            delivery_tag: 1,
            requeue: true
        })
    );
    bounded("close", connection.close()).await.unwrap();
    let rest = bounded("script", script).await.unwrap();
    assert!(matches!(&rest[..], [Frame::Close(_)]), "{rest:?}");
}

/// A server that accepts but never answers `Hello` fails the connect with a handshake timeout
/// after the configured bound, not the server's 10 s.
#[tokio::test]
async fn a_server_that_never_answers_hello_times_out_the_handshake() {
    let server = FakeServer::bind().await;
    let options = ruuster_client::ConnectOptions {
        handshake_timeout: Duration::from_millis(200),
        ..server.options()
    };
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        assert!(matches!(peer.recv().await, Frame::Hello(_)));
        peer.drain_until_eof().await
    });

    let started = tokio::time::Instant::now();
    let error = bounded("connect", Client::connect(&options))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Timeout {
                operation: "handshake",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(bounded("script", script).await.unwrap().is_empty());
}

/// A server that stops reading and falls silent is still detected after two heartbeat intervals
/// while the client's writer is stuck behind full socket buffers.
#[tokio::test]
async fn a_silent_server_that_stopped_reading_is_detected_despite_a_stuck_writer() {
    let server = FakeServer::bind().await;
    let options = server.options();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        let port = server.port();
        peer.handshake(ruuster_wire::frame::Welcome {
            heartbeat_ms: 100,
            ..welcome(port)
        })
        .await;
        // Hold the socket open without reading until the client has given up.
        let _ = bounded("release", released).await;
        drop(peer);
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    // 256 messages of 60 KiB: 15 MiB, far beyond what loopback socket buffers hold.
    let body = ruuster_client::body(&vec![7u8; 60 * 1024]);
    let defaults = PublishOptions::default();
    for _ in 0..256 {
        let publish = connection.publish("", "q", body.clone(), &defaults);
        drop(bounded("publish", publish).await.unwrap());
    }
    let started = tokio::time::Instant::now();
    let error = bounded("silence detected", connection.wait_ended()).await;
    assert!(
        matches!(error, ClientError::MissedHeartbeats { .. }),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    release.send(()).unwrap();
    bounded("script", script).await.unwrap();
}

/// With a 4096-byte frame size, a batch of ten 1000-byte messages goes out as three `Publish`
/// frames (4, 4 and 2 messages) with consecutive sequence numbers, and one confirm for all ten
/// resolves the batch.
#[tokio::test]
async fn a_batch_larger_than_a_frame_is_split_across_frames_and_confirmed_as_one() {
    let server = FakeServer::bind().await;
    let options = ruuster_client::ConnectOptions {
        frame_size_max: 4096,
        ..server.options()
    };
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        let port = server.port();
        let hello = peer
            .handshake(ruuster_wire::frame::Welcome {
                frame_size_max: 4096,
                ..welcome(port)
            })
            .await;
        assert_eq!(hello.frame_size_max, 4096);
        let mut counts = Vec::new();
        while counts.iter().sum::<usize>() < 10 {
            counts.push(publish_keys(peer.recv_skipping_heartbeats().await).len());
        }
        peer.send(stored(1, 10)).await;
        peer.drain_until_eof().await;
        counts
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    let body = ruuster_client::body(&[0u8; 997]);
    let messages = vec![("k", body); 10];
    let defaults = PublishOptions::default();
    let publish = connection.publish_batch("", &messages, &defaults);
    let pending = bounded("publish", publish).await.unwrap();
    assert_eq!((pending.first(), pending.last()), (1, 10));
    let confirmation = bounded("confirm", pending).await.unwrap();
    assert_eq!(confirmation.stored(), Some(Durability::Fsynced));
    drop(connection);
    assert_eq!(bounded("script", script).await.unwrap(), [4, 4, 2]);
}

/// Eight tasks publishing at once on a multi-threaded runtime get disjoint sequence ranges that
/// together cover every message, and every batch resolves from the server's cumulative confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_get_disjoint_ranges_that_cover_every_message() {
    const TASKS: usize = 8;
    const BATCHES_PER_TASK: usize = 50;
    const BATCH: usize = 3;
    let total = (TASKS * BATCHES_PER_TASK * BATCH) as u64;

    let server = FakeServer::bind().await;
    let options = server.options();
    let script = tokio::spawn(async move {
        let mut peer = server.accept().await;
        let port = server.port();
        peer.handshake(ruuster_wire::frame::Welcome {
            unconfirmed_max: 64,
            ..welcome(port)
        })
        .await;
        let mut confirmed = 0;
        while confirmed < total {
            let published = publish_keys(peer.recv_skipping_heartbeats().await).len() as u64;
            peer.send(stored(confirmed + 1, confirmed + published))
                .await;
            confirmed += published;
        }
        peer.drain_until_eof().await;
    });

    let connection = bounded("connect", Client::connect(&options)).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let connection = connection.clone();
        tasks.push(tokio::spawn(async move {
            let messages = vec![("k", ruuster_client::body(b"m")); BATCH];
            let defaults = PublishOptions::default();
            let mut ranges = Vec::new();
            for _ in 0..BATCHES_PER_TASK {
                let pending = connection
                    .publish_batch("", &messages, &defaults)
                    .await
                    .unwrap();
                let confirmation = pending.await.unwrap();
                assert_eq!(confirmation.stored(), Some(Durability::Fsynced));
                ranges.push((confirmation.first(), confirmation.last()));
            }
            ranges
        }));
    }
    let mut ranges = Vec::new();
    for task in tasks {
        ranges.extend(bounded("publisher", task).await.unwrap());
    }
    ranges.sort();
    let mut next = 1;
    for (first, last) in ranges {
        assert_eq!((first, last), (next, next + BATCH as u64 - 1));
        next = last + 1;
    }
    assert_eq!(next, total + 1);
    drop(connection);
    bounded("script", script).await.unwrap();
}
