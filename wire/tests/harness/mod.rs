//! Shared by the fuzz targets (`wire/fuzz`) and the fuzz smoke test (`tests/fuzz_smoke.rs`): the
//! two input interpreters and the invariants they check. Any panic here is a finding.
//!
//! - [`decode_input`]: arbitrary bytes through the framing decoder; every frame that decodes must
//!   re-encode to the same bytes and decode to the same value, every body must validate or be
//!   refused without a panic, and a client and a server state machine are handed each frame
//!   whatever their state (they may refuse it, but must not panic).
//! - [`drive_connection`]: bytes as a script of frames sent between a client and a server state
//!   machine, with time advancing; a frame one side may send must be accepted by the other, and
//!   both sides must agree on publish sequence numbers.

#![allow(dead_code, reason = "each including crate uses a different part")]

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ruuster_wire::body::Body;
use ruuster_wire::connection::{Connection, Inbound, State, Tick};
use ruuster_wire::frame::*;
use ruuster_wire::handshake::{ServerSettings, negotiate};
use ruuster_wire::limits::{FRAME_SIZE_MAX, HANDSHAKE_FRAME_SIZE_MAX};
use ruuster_wire::{
    ConfirmStatus, Durability, ErrorCode, ExchangeKind, Frame, FrameDecoder, Properties, Role,
    ShortStr, Table, Text, Value,
};

/// Feeds `data` to a frame decoder in chunks whose sizes come from the data itself, so partial
/// frames are exercised too. The first byte picks the decoder's limit.
pub fn decode_input(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let limit = if selector & 1 == 0 {
        HANDSHAKE_FRAME_SIZE_MAX
    } else {
        FRAME_SIZE_MAX
    };
    let mut decoder = FrameDecoder::new(limit);
    let mut buffer = BytesMut::new();
    let chunk = usize::from(selector >> 1) + 1;
    let start = Instant::now();
    let mut sides = [
        Connection::new(Role::Client, start, Duration::from_secs(1)),
        Connection::new(Role::Server, start, Duration::from_secs(1)),
    ];
    let mut frame_count = 0u32;

    // Bounded: every iteration either consumes input or ends the loop.
    for piece in rest.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    check_frame(&frame);
                    // Any frame, legal or not, in whatever state the sides reached: the state
                    // machines may refuse it but must not panic or break their invariants.
                    frame_count += 1;
                    let now = start + Duration::from_millis(u64::from(frame_count) * 300);
                    for side in &mut sides {
                        let _ = side.on_receive(&frame, now);
                        let _ = side.on_send(&frame, now);
                        check_tick(side, now);
                        assert!(side.unconfirmed() < side.next_sequence());
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    let _ = error.to_string();
                    let _ = error.code();
                    return;
                }
            }
        }
    }

    // A whole-buffer decode must agree with itself too (and never panic).
    let _ = Frame::decode(Bytes::copy_from_slice(rest));
}

fn check_frame(frame: &Frame) {
    let mut encoded = BytesMut::new();
    frame
        .encode(&mut encoded, FRAME_SIZE_MAX)
        .expect("a decoded frame re-encodes");
    let decoded = Frame::decode(encoded.clone().freeze()).expect("a re-encoded frame decodes");
    assert_eq!(&decoded, frame, "decode(encode(frame)) differs");

    let bodies: Vec<&Bytes> = match frame {
        Frame::Publish(publish) => publish
            .messages
            .iter()
            .map(|message| &message.body)
            .collect(),
        Frame::Deliver(deliver) => vec![&deliver.body],
        Frame::Return(returned) => vec![&returned.body],
        _ => Vec::new(),
    };
    for body in bodies {
        check_body(body);
    }
}

/// A body either fails to parse, or parses into a view whose properties rebuild the same bytes.
pub fn check_body(bytes: &Bytes) {
    let Ok(body) = Body::parse(bytes.clone()) else {
        return;
    };
    let properties = body.properties();
    let rebuilt = properties
        .to_body(&body.payload())
        .expect("a parsed body re-encodes");
    assert_eq!(
        &rebuilt, bytes,
        "a parsed body re-encodes to different bytes"
    );
    let _ = body.headers().count();
}

/// Drives a client and a server [`Connection`] with a script read from `data`.
///
/// Each step reads two bytes: `op` and `parameter`. `op & 0x0f` picks a frame template, bit 4
/// picks the sender (client or server), bits 5-7 advance the clock. The frame is offered to the
/// sender's `on_send`; if accepted, it must round-trip through the codec and be accepted by the
/// receiver's `on_receive`.
pub fn drive_connection(data: &[u8]) -> Summary {
    let start = Instant::now();
    let mut now = start;
    let timeout = Duration::from_secs(10);
    let mut client = Connection::new(Role::Client, start, timeout);
    let mut server = Connection::new(Role::Server, start, timeout);
    let mut summary = Summary::default();

    for step in data.chunks_exact(2) {
        let (op, parameter) = (step[0], step[1]);
        now += Duration::from_millis(u64::from(op >> 5) * 250);
        for side in [&mut client, &mut server] {
            check_tick(side, now);
        }

        let client_sends = op & 0x10 == 0;
        let (sender, receiver) = if client_sends {
            (&mut client, &mut server)
        } else {
            (&mut server, &mut client)
        };
        let frame = template(op & 0x0f, parameter, sender);
        if sender.on_send(&frame, now).is_err() {
            continue;
        }

        let mut encoded = BytesMut::new();
        let frame_size_max = sender.frame_size_max().max(HANDSHAKE_FRAME_SIZE_MAX);
        frame
            .encode(&mut encoded, frame_size_max)
            .expect("a template frame encodes");
        assert_eq!(Frame::decode(encoded.freeze()).as_ref(), Ok(&frame));

        let receiver_state = receiver.state();
        match receiver.on_receive(&frame, now) {
            Ok(Inbound::Handle) => {}
            Ok(Inbound::Ignore) => assert_eq!(receiver_state, State::CloseSent),
            Err(error) => panic!("{frame:?} accepted by its sender, refused: {error}"),
        }

        summary.frames += 1;
        if client.state() == State::Open && server.state() == State::Open {
            summary.opened = true;
            summary.published = client.next_sequence() - 1;
            assert_eq!(client.next_sequence(), server.next_sequence());
            assert_eq!(client.unconfirmed(), server.unconfirmed());
            let limit = client.negotiated().expect("open").unconfirmed_max;
            assert!(client.unconfirmed() <= u64::from(limit));
        }
        if client.state() == State::Closed {
            assert!(matches!(
                server.state(),
                State::Closed | State::CloseReceived
            ));
        }
    }
    summary.final_states = Some((client.state(), server.state()));
    summary
}

/// What a [`drive_connection`] run reached.
#[derive(Debug, Default)]
pub struct Summary {
    /// Frames accepted by both sides.
    pub frames: usize,
    /// Both sides were open at some point.
    pub opened: bool,
    /// Messages published while both sides were open.
    pub published: u64,
    /// Client and server states at the end.
    pub final_states: Option<(State, State)>,
}

fn check_tick(connection: &mut Connection, now: Instant) {
    let deadline = connection.next_deadline();
    match connection.on_tick(now) {
        Tick::Idle => {}
        Tick::SendHeartbeat | Tick::Expired(_) | Tick::CloseSocket => {
            let deadline = deadline.expect("a tick fired, so a deadline existed");
            assert!(deadline <= now, "tick fired before its deadline");
        }
    }
}

fn short(text: &'static str) -> ShortStr {
    ShortStr::from_static(text)
}

/// A frame of the kind `selector` names, with values from `parameter` and, for confirms and
/// returns, near the sender's current sequence numbers so that valid ones are common.
fn template(selector: u8, parameter: u8, sender: &Connection) -> Frame {
    let small = u64::from(parameter % 8);
    let confirmed = sender.next_sequence() - 1 - sender.unconfirmed();
    match selector {
        0 => Frame::Hello(Hello {
            version_min: u16::from(parameter % 3),
            version_max: u16::from(parameter % 3 + (parameter >> 2) % 3),
            client_name: short("fuzz"),
            mechanism: short("PLAIN"),
            credentials: Bytes::from_static(b"\0guest\0guest"),
            heartbeat_ms: u32::from(parameter) * 8,
            frame_size_max: if parameter & 0x80 == 0 {
                0
            } else {
                2048 * u32::from(parameter)
            },
        }),
        1 => {
            let settings = ServerSettings {
                unconfirmed_max: u32::from(parameter % 16) + 1,
                frame_size_max: 4096 * (u32::from(parameter) + 1),
                ..ServerSettings::default()
            };
            let hello = Hello {
                version_min: 1,
                version_max: 1 + u16::from(parameter & 1),
                client_name: short("fuzz"),
                mechanism: short("PLAIN"),
                credentials: Bytes::new(),
                heartbeat_ms: u32::from(parameter) * 8,
                frame_size_max: 0,
            };
            let mut welcome = negotiate(&hello, &settings).expect("a valid hello negotiates");
            if parameter & 0x40 != 0 {
                welcome.version = u16::from(parameter % 4);
            }
            Frame::Welcome(welcome)
        }
        2 => Frame::Heartbeat(Heartbeat),
        3 => Frame::Close(Close {
            code: ErrorCode(u16::from(parameter)),
            reason: short("bye"),
        }),
        4 => Frame::CloseOk(CloseOk),
        5 => Frame::Publish(Publish {
            exchange: short("amq.direct"),
            mandatory: parameter & 1 == 1,
            durability: Durability::Written,
            messages: vec![
                PublishMessage {
                    routing_key: short("key"),
                    body: Properties::default().to_body(b"x").expect("encodes"),
                };
                small as usize + 1
            ],
        }),
        6 => {
            let first = if parameter & 0x80 == 0 {
                confirmed + 1
            } else {
                small
            };
            let last = first + u64::from((parameter >> 3) % 4);
            let status = match parameter % 3 {
                0 => ConfirmStatus::Stored(Durability::Fsynced),
                1 => ConfirmStatus::Unroutable,
                _ => ConfirmStatus::Rejected(ErrorCode::DISK_LOW),
            };
            Frame::Confirm(Confirm {
                first: first.max(1),
                last: last.max(1),
                status,
            })
        }
        7 => Frame::Return(Return {
            sequence: confirmed + small,
            code: ErrorCode::UNROUTABLE,
            exchange: short("amq.direct"),
            routing_key: short("nowhere"),
            body: Bytes::from_static(&[1, 0, 0]),
        }),
        8 => Frame::QueueDeclare(QueueDeclare {
            request_id: u32::from(parameter),
            queue: short("orders"),
            durable: true,
            exclusive: false,
            auto_delete: false,
            passive: parameter & 1 == 1,
            arguments: Table::new(),
        }),
        9 => Frame::QueueDeclareOk(QueueDeclareOk {
            request_id: u32::from(parameter),
            queue: short("orders"),
            message_count: small,
            consumer_count: 0,
            owner_shard: u16::from(parameter % 2),
        }),
        10 => Frame::Deliver(Deliver {
            consumer_id: 1,
            delivery_tag: small,
            delivery_count: 1,
            redelivered: false,
            exchange: short(""),
            routing_key: short("orders"),
            body: Bytes::from_static(&[1, 0, 0]),
        }),
        11 => Frame::Ack(Ack {
            delivery_tag: small,
            multiple: parameter & 1 == 1,
        }),
        12 => Frame::ErrorReply(ErrorReply {
            request_id: u32::from(parameter),
            code: ErrorCode::QUEUE_NOT_FOUND,
            message: short("no queue"),
        }),
        13 => Frame::Blocked(Blocked {
            code: ErrorCode::DISK_LOW,
            reason: short("disk"),
        }),
        14 => Frame::Stats(Stats {
            request_id: u32::from(parameter),
        }),
        _ => Frame::ExchangeDeclare(ExchangeDeclare {
            request_id: u32::from(parameter),
            exchange: short("events"),
            kind: ExchangeKind::Topic,
            durable: true,
            auto_delete: false,
            passive: false,
            arguments: [(short("alternate-exchange"), Value::Str(Text::from("spill")))]
                .into_iter()
                .collect(),
        }),
    }
}

/// One frame of every opcode with representative values: seeds for fuzzing and the smoke test.
pub fn sample_frames() -> Vec<Frame> {
    let body = Properties {
        content_type: Some(short("text/plain")),
        headers: Some([(short("n"), Value::Int(1))].into_iter().collect()),
        ..Properties::default()
    }
    .to_body(b"hi")
    .expect("encodes");
    let welcome = negotiate(
        &Hello {
            version_min: 1,
            version_max: 1,
            client_name: short("c"),
            mechanism: short("PLAIN"),
            credentials: Bytes::new(),
            heartbeat_ms: 0,
            frame_size_max: 0,
        },
        &ServerSettings {
            shard_ports: vec![5680, 5681],
            ..ServerSettings::default()
        },
    )
    .expect("negotiates");
    let mut frames: Vec<Frame> = (0..16)
        .map(|selector| template(selector, 3, &dummy()))
        .collect();
    frames.extend([
        Frame::Welcome(welcome),
        Frame::ExchangeDeclareOk(ExchangeDeclareOk { request_id: 1 }),
        Frame::ExchangeDelete(ExchangeDelete {
            request_id: 2,
            exchange: short("events"),
            if_unused: true,
        }),
        Frame::ExchangeDeleteOk(ExchangeDeleteOk { request_id: 2 }),
        Frame::QueueDelete(QueueDelete {
            request_id: 3,
            queue: short("orders"),
            if_unused: false,
            if_empty: true,
        }),
        Frame::QueueDeleteOk(QueueDeleteOk {
            request_id: 3,
            message_count: 4,
        }),
        Frame::QueuePurge(QueuePurge {
            request_id: 4,
            queue: short("orders"),
        }),
        Frame::QueuePurgeOk(QueuePurgeOk {
            request_id: 4,
            message_count: 0,
        }),
        Frame::QueueBind(QueueBind {
            request_id: 5,
            queue: short("orders"),
            exchange: short("events"),
            routing_key: short("order.*"),
            arguments: [(short("x-match"), Value::Str(Text::from("all")))]
                .into_iter()
                .collect(),
        }),
        Frame::QueueBindOk(QueueBindOk { request_id: 5 }),
        Frame::QueueUnbind(QueueUnbind {
            request_id: 6,
            queue: short("orders"),
            exchange: short("events"),
            routing_key: short("order.*"),
            arguments: Table::new(),
        }),
        Frame::QueueUnbindOk(QueueUnbindOk { request_id: 6 }),
        Frame::Publish(Publish {
            exchange: short(""),
            mandatory: true,
            durability: Durability::Fsynced,
            messages: vec![PublishMessage {
                routing_key: short("orders"),
                body: body.clone(),
            }],
        }),
        Frame::Unblocked(Unblocked),
        Frame::Consume(Consume {
            request_id: 7,
            queue: short("orders"),
            consumer_tag: short("worker-1"),
            prefetch: 100,
            exclusive: false,
            arguments: Table::new(),
        }),
        Frame::ConsumeOk(ConsumeOk {
            request_id: 7,
            consumer_id: 1,
            consumer_tag: short("w"),
        }),
        Frame::Cancel(Cancel {
            request_id: 8,
            consumer_id: 1,
        }),
        Frame::CancelOk(CancelOk {
            request_id: 8,
            consumer_id: 1,
        }),
        Frame::CancelNotice(CancelNotice {
            consumer_id: 1,
            code: ErrorCode::QUEUE_DELETED,
            reason: short("queue deleted"),
        }),
        Frame::Deliver(Deliver {
            consumer_id: 1,
            delivery_tag: 9,
            delivery_count: 2,
            redelivered: true,
            exchange: short(""),
            routing_key: short("orders"),
            body,
        }),
        Frame::Nack(Nack {
            delivery_tag: 9,
            multiple: true,
            requeue: true,
        }),
        Frame::Reject(Reject {
            delivery_tag: 9,
            requeue: false,
        }),
        Frame::StatsOk(StatsOk {
            request_id: 10,
            counters: vec![(short("published"), 12), (short("confirmed"), 11)],
        }),
    ]);
    frames
}

fn dummy() -> Connection {
    Connection::new(Role::Client, Instant::now(), Duration::from_secs(1))
}

/// A script that completes a handshake, publishes, confirms and closes: a seed that reaches the
/// open state, which random bytes alone rarely do.
pub fn sample_script() -> Vec<u8> {
    vec![
        0x00, 0x04, // client: Hello (versions 1..=2)
        0x11, 0x05, // server: Welcome
        0x05, 0x02, // client: Publish 3
        0x16, 0x08, // server: Confirm from the next sequence
        0x17, 0x01, // server: Return
        0x62, 0x00, // time passes; client: Heartbeat
        0x08, 0x01, // client: QueueDeclare
        0x19, 0x01, // server: QueueDeclareOk
        0x03, 0x00, // client: Close
        0x14, 0x00, // server: CloseOk
    ]
}
