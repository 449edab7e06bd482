//! Property tests: every frame and every body survives encode then decode unchanged, through
//! whole-frame decoding and through the incremental decoder at any split; prefixes of valid frames
//! wait or fail cleanly; arbitrary bytes never panic any decoder.

mod harness;

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use ruuster_wire::frame::*;
use ruuster_wire::limits::{FRAME_HEADER_SIZE, FRAME_SIZE_MAX};
use ruuster_wire::{
    Body, ConfirmStatus, Durability, ErrorCode, ExchangeKind, Frame, FrameDecoder, Properties,
    ShortStr, Table, Text, Value,
};

fn short_str() -> impl Strategy<Value = ShortStr> {
    prop_oneof![
        "[a-z0-9.*#_-]{0,24}".prop_map(|text| ShortStr::try_from(text).expect("short")),
        "\\PC{0,40}".prop_map(|text| ShortStr::try_from(text).expect("at most 160 bytes")),
    ]
}

fn bytes(size_max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..size_max).prop_map(Bytes::from)
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "\\PC{0,40}".prop_map(|text| Value::Str(Text::from(text))),
        bytes(40).prop_map(Value::Bytes),
        any::<i64>().prop_map(Value::Int),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>().prop_map(Value::Float),
    ]
}

fn table() -> impl Strategy<Value = Table> {
    prop::collection::vec((short_str(), value()), 0..6)
        .prop_map(|entries| entries.into_iter().collect())
}

fn properties() -> impl Strategy<Value = Properties> {
    (
        (
            prop::option::of(short_str()),
            prop::option::of(table()),
            prop::option::of(any::<u8>()),
            prop::option::of(any::<u64>()),
        ),
        (
            prop::option::of(short_str()),
            prop::option::of(short_str()),
            prop::option::of(short_str()),
            prop::option::of(any::<u64>()),
        ),
    )
        .prop_map(
            |(
                (content_type, headers, priority, expiration_ms),
                (message_id, correlation_id, reply_to, timestamp_ms),
            )| Properties {
                content_type,
                headers,
                priority,
                expiration_ms,
                message_id,
                correlation_id,
                reply_to,
                timestamp_ms,
            },
        )
}

/// A body: usually a valid one, sometimes arbitrary bytes (frames carry bodies opaquely).
fn body() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => (properties(), bytes(64))
            .prop_map(|(properties, payload)| properties.to_body(&payload).expect("encodes")),
        1 => bytes(32),
    ]
}

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Memory),
        Just(Durability::Written),
        Just(Durability::Fsynced)
    ]
}

fn code() -> impl Strategy<Value = ErrorCode> {
    any::<u16>().prop_map(ErrorCode)
}

fn connection_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            any::<(u16, u16)>(),
            short_str(),
            short_str(),
            bytes(64),
            any::<(u32, u32)>()
        )
            .prop_map(
                |(
                    versions,
                    client_name,
                    mechanism,
                    credentials,
                    (heartbeat_ms, frame_size_max),
                )| {
                    Frame::Hello(Hello {
                        version_min: versions.0,
                        version_max: versions.1,
                        client_name,
                        mechanism,
                        credentials,
                        heartbeat_ms,
                        frame_size_max,
                    })
                }
            ),
        (
            any::<(u16, u32, u32, u32, u32)>(),
            prop::collection::vec(any::<u16>(), 1..8),
            any::<prop::sample::Index>(),
            short_str()
        )
            .prop_map(|(fixed, shard_ports, index, server_name)| {
                Frame::Welcome(Welcome {
                    version: fixed.0,
                    heartbeat_ms: fixed.1,
                    frame_size_max: fixed.2,
                    unconfirmed_max: fixed.3,
                    prefetch_max: fixed.4,
                    shard_index: index.index(shard_ports.len()) as u16,
                    shard_ports,
                    server_name,
                })
            }),
        Just(Frame::Heartbeat(Heartbeat)),
        (code(), short_str()).prop_map(|(code, reason)| Frame::Close(Close { code, reason })),
        Just(Frame::CloseOk(CloseOk)),
        (any::<u32>(), code(), short_str()).prop_map(|(request_id, code, message)| {
            Frame::ErrorReply(ErrorReply {
                request_id,
                code,
                message,
            })
        }),
    ]
}

fn exchange_kind() -> impl Strategy<Value = ExchangeKind> {
    prop_oneof![
        Just(ExchangeKind::Direct),
        Just(ExchangeKind::Fanout),
        Just(ExchangeKind::Topic),
        Just(ExchangeKind::Headers),
    ]
}

fn topology_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            any::<u32>(),
            short_str(),
            exchange_kind(),
            any::<[bool; 3]>(),
            table()
        )
            .prop_map(|(request_id, exchange, kind, flags, arguments)| {
                Frame::ExchangeDeclare(ExchangeDeclare {
                    request_id,
                    exchange,
                    kind,
                    durable: flags[0],
                    auto_delete: flags[1],
                    passive: flags[2],
                    arguments,
                })
            }),
        any::<u32>()
            .prop_map(|request_id| { Frame::ExchangeDeclareOk(ExchangeDeclareOk { request_id }) }),
        (any::<u32>(), short_str(), any::<bool>()).prop_map(|(request_id, exchange, if_unused)| {
            Frame::ExchangeDelete(ExchangeDelete {
                request_id,
                exchange,
                if_unused,
            })
        }),
        any::<u32>()
            .prop_map(|request_id| Frame::ExchangeDeleteOk(ExchangeDeleteOk { request_id })),
        (any::<u32>(), short_str(), any::<[bool; 4]>(), table()).prop_map(
            |(request_id, queue, flags, arguments)| {
                Frame::QueueDeclare(QueueDeclare {
                    request_id,
                    queue,
                    durable: flags[0],
                    exclusive: flags[1],
                    auto_delete: flags[2],
                    passive: flags[3],
                    arguments,
                })
            }
        ),
        (any::<u32>(), short_str(), any::<u64>(), any::<(u32, u16)>()).prop_map(
            |(request_id, queue, message_count, (consumer_count, owner_shard))| {
                Frame::QueueDeclareOk(QueueDeclareOk {
                    request_id,
                    queue,
                    message_count,
                    consumer_count,
                    owner_shard,
                })
            }
        ),
        (any::<u32>(), short_str(), any::<[bool; 2]>()).prop_map(|(request_id, queue, flags)| {
            Frame::QueueDelete(QueueDelete {
                request_id,
                queue,
                if_unused: flags[0],
                if_empty: flags[1],
            })
        }),
        any::<(u32, u64)>().prop_map(|(request_id, message_count)| {
            Frame::QueueDeleteOk(QueueDeleteOk {
                request_id,
                message_count,
            })
        }),
        (any::<u32>(), short_str())
            .prop_map(|(request_id, queue)| Frame::QueuePurge(QueuePurge { request_id, queue })),
        any::<(u32, u64)>().prop_map(|(request_id, message_count)| {
            Frame::QueuePurgeOk(QueuePurgeOk {
                request_id,
                message_count,
            })
        }),
        (
            any::<u32>(),
            short_str(),
            short_str(),
            short_str(),
            table(),
            any::<bool>()
        )
            .prop_map(
                |(request_id, queue, exchange, routing_key, arguments, unbind)| {
                    if unbind {
                        Frame::QueueUnbind(QueueUnbind {
                            request_id,
                            queue,
                            exchange,
                            routing_key,
                            arguments,
                        })
                    } else {
                        Frame::QueueBind(QueueBind {
                            request_id,
                            queue,
                            exchange,
                            routing_key,
                            arguments,
                        })
                    }
                }
            ),
        any::<u32>().prop_map(|request_id| Frame::QueueBindOk(QueueBindOk { request_id })),
        any::<u32>().prop_map(|request_id| Frame::QueueUnbindOk(QueueUnbindOk { request_id })),
    ]
}

fn publish_frame() -> impl Strategy<Value = Frame> {
    let message =
        (short_str(), body()).prop_map(|(routing_key, body)| PublishMessage { routing_key, body });
    let status = prop_oneof![
        durability().prop_map(ConfirmStatus::Stored),
        Just(ConfirmStatus::Unroutable),
        code().prop_map(ConfirmStatus::Rejected),
    ];
    prop_oneof![
        (
            short_str(),
            any::<bool>(),
            durability(),
            prop::collection::vec(message, 1..5)
        )
            .prop_map(|(exchange, mandatory, durability, messages)| {
                Frame::Publish(Publish {
                    exchange,
                    mandatory,
                    durability,
                    messages,
                })
            }),
        (1..u64::MAX, any::<u16>(), status).prop_map(|(first, span, status)| {
            let last = first.saturating_add(u64::from(span));
            Frame::Confirm(Confirm {
                first,
                last,
                status,
            })
        }),
        (any::<u64>(), code(), short_str(), short_str(), body()).prop_map(
            |(sequence, code, exchange, routing_key, body)| {
                Frame::Return(Return {
                    sequence,
                    code,
                    exchange,
                    routing_key,
                    body,
                })
            }
        ),
        (code(), short_str()).prop_map(|(code, reason)| Frame::Blocked(Blocked { code, reason })),
        Just(Frame::Unblocked(Unblocked)),
    ]
}

fn consume_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            any::<u32>(),
            short_str(),
            short_str(),
            any::<u32>(),
            any::<bool>(),
            table()
        )
            .prop_map(
                |(request_id, queue, consumer_tag, prefetch, exclusive, arguments)| {
                    Frame::Consume(Consume {
                        request_id,
                        queue,
                        consumer_tag,
                        prefetch,
                        exclusive,
                        arguments,
                    })
                }
            ),
        (any::<(u32, u32)>(), short_str()).prop_map(|((request_id, consumer_id), consumer_tag)| {
            Frame::ConsumeOk(ConsumeOk {
                request_id,
                consumer_id,
                consumer_tag,
            })
        }),
        any::<(u32, u32)>().prop_map(|(request_id, consumer_id)| {
            Frame::Cancel(Cancel {
                request_id,
                consumer_id,
            })
        }),
        any::<(u32, u32)>().prop_map(|(request_id, consumer_id)| {
            Frame::CancelOk(CancelOk {
                request_id,
                consumer_id,
            })
        }),
        (any::<u32>(), code(), short_str()).prop_map(|(consumer_id, code, reason)| {
            Frame::CancelNotice(CancelNotice {
                consumer_id,
                code,
                reason,
            })
        }),
        (
            any::<(u32, u64, u32, bool)>(),
            short_str(),
            short_str(),
            body()
        )
            .prop_map(|(fixed, exchange, routing_key, body)| {
                Frame::Deliver(Deliver {
                    consumer_id: fixed.0,
                    delivery_tag: fixed.1,
                    delivery_count: fixed.2,
                    redelivered: fixed.3,
                    exchange,
                    routing_key,
                    body,
                })
            }),
        any::<(u64, bool)>().prop_map(|(delivery_tag, multiple)| Frame::Ack(Ack {
            delivery_tag,
            multiple
        })),
        any::<(u64, bool, bool)>().prop_map(|(delivery_tag, multiple, requeue)| {
            Frame::Nack(Nack {
                delivery_tag,
                multiple,
                requeue,
            })
        }),
        any::<(u64, bool)>().prop_map(|(delivery_tag, requeue)| Frame::Reject(Reject {
            delivery_tag,
            requeue
        })),
        any::<u32>().prop_map(|request_id| Frame::Stats(Stats { request_id })),
        (
            any::<u32>(),
            prop::collection::vec((short_str(), any::<u64>()), 0..8)
        )
            .prop_map(|(request_id, counters)| Frame::StatsOk(StatsOk {
                request_id,
                counters
            })),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        connection_frame(),
        topology_frame(),
        publish_frame(),
        consume_frame()
    ]
}

fn encode(frame: &Frame) -> Bytes {
    let mut buffer = BytesMut::new();
    frame
        .encode(&mut buffer, FRAME_SIZE_MAX)
        .expect("generated frames are within limits");
    buffer.freeze()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_frame_round_trips(frame in frame()) {
        let encoded = encode(&frame);
        let header = FrameHeader::peek(&encoded).expect("header");
        prop_assert_eq!(header.frame_size(), encoded.len() as u64);
        prop_assert_eq!(header.opcode, frame.opcode());
        prop_assert_eq!(Frame::decode(encoded), Ok(frame));
    }

    #[test]
    fn the_incremental_decoder_agrees_at_any_split(
        frames in prop::collection::vec(frame(), 1..4),
        split in any::<prop::sample::Index>(),
    ) {
        let stream: Vec<u8> = frames.iter().flat_map(|frame| encode(frame).to_vec()).collect();
        let split = split.index(stream.len() + 1);
        let mut decoder = FrameDecoder::new(FRAME_SIZE_MAX);
        let mut buffer = BytesMut::new();
        let mut decoded = Vec::new();
        for part in [&stream[..split], &stream[split..]] {
            buffer.extend_from_slice(part);
            while let Some(frame) = decoder.decode(&mut buffer).expect("valid stream") {
                decoded.push(frame);
            }
        }
        prop_assert_eq!(decoded, frames);
        prop_assert!(buffer.is_empty());
    }

    #[test]
    fn a_strict_prefix_of_a_frame_waits_or_fails_but_never_decodes(
        frame in frame(),
        cut in any::<prop::sample::Index>(),
    ) {
        let encoded = encode(&frame);
        let cut = cut.index(encoded.len());
        let mut buffer = BytesMut::from(&encoded[..cut]);
        prop_assert_eq!(FrameDecoder::new(FRAME_SIZE_MAX).decode(&mut buffer), Ok(None));
        prop_assert!(Frame::decode(encoded.slice(..cut)).is_err());
    }

    #[test]
    fn a_frame_with_its_length_shortened_is_refused(frame in frame(), cut in 1usize..16) {
        // The header says fewer bytes than the fields need: a short field inside a whole frame.
        let encoded = encode(&frame);
        let payload = encoded.len() - FRAME_HEADER_SIZE;
        prop_assume!(payload >= cut);
        let mut shortened = BytesMut::from(&encoded[..encoded.len() - cut]);
        shortened[..4].copy_from_slice(&((payload - cut) as u32).to_le_bytes());
        prop_assert!(Frame::decode(shortened.freeze()).is_err());
    }

    #[test]
    fn every_body_round_trips(properties in properties(), payload in bytes(256)) {
        let encoded = properties.to_body(&payload).expect("encodes");
        let body = Body::parse(encoded.clone()).expect("parses");
        prop_assert_eq!(body.properties(), properties);
        prop_assert_eq!(body.payload(), payload);
        prop_assert_eq!(body.as_bytes(), &encoded);
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Frame::decode(Bytes::from(data.clone()));
        let _ = Body::parse(Bytes::from(data.clone()));
        harness::decode_input(&data);
        let _ = harness::drive_connection(&data);
    }

    #[test]
    fn arbitrary_payloads_under_a_valid_header_never_panic(
        opcode in prop::sample::select(OPCODES),
        payload in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        // Random bytes rarely form a valid header; this reaches every payload decoder directly.
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&opcode.to_le_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&payload);
        if let Ok(decoded) = Frame::decode(frame.clone().freeze()) {
            prop_assert_eq!(encode(&decoded), frame.freeze());
        }
    }
}

#[test]
fn every_opcode_has_a_sample_frame_that_round_trips() {
    let samples = harness::sample_frames();
    let covered: BTreeSet<u16> = samples.iter().map(Frame::opcode).collect();
    let defined: BTreeSet<u16> = OPCODES.iter().copied().collect();
    assert_eq!(covered, defined);
    for frame in samples {
        assert_eq!(Frame::decode(encode(&frame)), Ok(frame));
    }
}
