//! Every class of malformed input, built byte by byte: short buffers, lengths over their limits,
//! unknown opcodes, values outside their enumerations, invalid UTF-8 and trailing bytes. Each test
//! checks the exact error, offset included, and the code it maps to.

use bytes::{BufMut, Bytes, BytesMut};
use ruuster_wire::frame::{Ack, Frame, opcode};
use ruuster_wire::limits::{FRAME_SIZE_MIN, HANDSHAKE_FRAME_SIZE_MAX};
use ruuster_wire::{Body, Error, ErrorCode, FrameDecoder};

/// A frame with a correct header around `payload`.
fn frame(opcode: u16, payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::new();
    frame.put_u32_le(payload.len() as u32);
    frame.put_u16_le(opcode);
    frame.put_u16_le(0);
    frame.put_slice(payload);
    frame.freeze()
}

fn decode(opcode: u16, payload: &[u8]) -> Error {
    Frame::decode(frame(opcode, payload)).expect_err("malformed input must not decode")
}

// Short buffers.

#[test]
fn a_buffer_shorter_than_the_header_is_truncated() {
    let error = Frame::decode(Bytes::from_static(&[4, 0, 0])).unwrap_err();
    assert_eq!(
        error,
        Error::Truncated {
            offset: 0,
            field: "frame header",
            needed: 8,
            available: 3
        }
    );
    assert_eq!(error.code(), ErrorCode::MALFORMED_FRAME);
}

#[test]
fn a_payload_shorter_than_its_length_is_truncated() {
    let mut bytes = BytesMut::from(&frame(opcode::ACK, &[0; 9])[..]);
    bytes.truncate(12);
    let error = Frame::decode(bytes.freeze()).unwrap_err();
    assert_eq!(
        error,
        Error::Truncated {
            offset: 8,
            field: "frame payload",
            needed: 9,
            available: 4
        }
    );
}

#[test]
fn a_field_cut_short_reports_its_offset_and_name() {
    assert_eq!(
        decode(opcode::ACK, &[1, 0, 0, 0]),
        Error::Truncated {
            offset: 8,
            field: "delivery tag",
            needed: 8,
            available: 4
        }
    );
}

#[test]
fn a_short_string_running_past_the_payload_is_truncated() {
    let payload = [1, 0, 0, 0, 10, b'a', b'b', b'c'];
    assert_eq!(
        decode(opcode::QUEUE_PURGE, &payload),
        Error::Truncated {
            offset: 13,
            field: "queue",
            needed: 10,
            available: 3
        }
    );
}

#[test]
fn a_body_length_beyond_the_frame_is_truncated() {
    // Deliver: consumer id, tag, count, flags, empty exchange, empty routing key, body of 100.
    let mut payload = vec![0; 4 + 8 + 4 + 1 + 1 + 1];
    payload.extend_from_slice(&100u32.to_le_bytes());
    payload.extend_from_slice(&[1, 0, 0]);
    assert_eq!(
        decode(opcode::DELIVER, &payload),
        Error::Truncated {
            offset: 31,
            field: "body",
            needed: 100,
            available: 3
        }
    );
}

// Lengths and counts over their limits.

#[test]
fn a_frame_over_the_negotiated_size_is_refused_from_its_length_alone() {
    let mut decoder = FrameDecoder::new(FRAME_SIZE_MIN);
    let mut buffer = BytesMut::from(&5000u32.to_le_bytes()[..]);
    let error = decoder.decode(&mut buffer).unwrap_err();
    assert_eq!(
        error,
        Error::FrameTooLarge {
            size: 5008,
            limit: FRAME_SIZE_MIN
        }
    );
    assert_eq!(error.code(), ErrorCode::FRAME_TOO_LARGE);
}

#[test]
fn a_frame_of_exactly_the_limit_is_accepted_and_one_byte_more_is_not() {
    // An Ack frame is 17 bytes: the 8-byte header, an 8-byte tag and a flag byte.
    let ack = frame(opcode::ACK, &[7, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut buffer = BytesMut::from(&ack[..]);
    let error = FrameDecoder::new(16).decode(&mut buffer).unwrap_err();
    assert_eq!(
        error,
        Error::FrameTooLarge {
            size: 17,
            limit: 16
        }
    );
    let mut buffer = BytesMut::from(&ack[..]);
    let decoded = FrameDecoder::new(17).decode(&mut buffer).unwrap();
    assert_eq!(
        decoded,
        Some(Frame::Ack(Ack {
            delivery_tag: 7,
            multiple: false
        }))
    );
}

#[test]
fn credentials_over_their_limit_are_refused_before_reading_them() {
    // Hello: versions, empty client name, empty mechanism, credentials length 4097.
    let mut payload = vec![1, 0, 1, 0, 0, 0];
    payload.extend_from_slice(&4097u32.to_le_bytes());
    assert_eq!(
        decode(opcode::HELLO, &payload),
        Error::LengthOverLimit {
            offset: 14,
            field: "credentials",
            length: 4097,
            limit: 4096
        }
    );
}

#[test]
fn a_publish_batch_over_its_limit_is_refused() {
    // Publish: empty exchange, flags, durability, count 4097.
    let payload = [0, 0, 2, 0x01, 0x10];
    assert_eq!(
        decode(opcode::PUBLISH, &payload),
        Error::LengthOverLimit {
            offset: 11,
            field: "publish batch count",
            length: 4097,
            limit: 4096
        }
    );
}

#[test]
fn a_table_over_its_entry_limit_is_refused() {
    // QueueDeclare: request id, empty name, flags, table count 0xffff.
    let payload = [1, 0, 0, 0, 0, 0, 0xff, 0xff];
    assert_eq!(
        decode(opcode::QUEUE_DECLARE, &payload),
        Error::LengthOverLimit {
            offset: 14,
            field: "table entry count",
            length: 65535,
            limit: 256
        }
    );
}

#[test]
fn a_shard_count_over_its_limit_is_refused() {
    let mut payload = vec![0; 2 + 4 * 4 + 2];
    payload.extend_from_slice(&2000u16.to_le_bytes());
    assert_eq!(
        decode(opcode::WELCOME, &payload),
        Error::LengthOverLimit {
            offset: 28,
            field: "shard count",
            length: 2000,
            limit: 1024
        }
    );
}

#[test]
fn encoding_past_the_peer_limit_fails_and_leaves_the_buffer_as_it_was() {
    let mut buffer = BytesMut::from(&b"earlier"[..]);
    let ack = Frame::Ack(Ack {
        delivery_tag: 1,
        multiple: false,
    });
    assert_eq!(
        ack.encode(&mut buffer, 10),
        Err(Error::FrameTooLarge {
            size: 17,
            limit: 10
        })
    );
    assert_eq!(&buffer[..], b"earlier");
}

// Unknown opcodes.

#[test]
fn an_unknown_opcode_is_refused_with_its_offset() {
    let error = decode(0x0999, &[]);
    assert_eq!(
        error,
        Error::UnknownOpcode {
            offset: 4,
            opcode: 0x0999
        }
    );
    assert_eq!(error.code(), ErrorCode::UNKNOWN_OPCODE);
}

#[test]
fn the_incremental_decoder_refuses_an_unknown_opcode_too() {
    let mut buffer = BytesMut::from(&frame(0x7fff, &[1, 2, 3])[..]);
    let error = FrameDecoder::new(HANDSHAKE_FRAME_SIZE_MAX)
        .decode(&mut buffer)
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::UNKNOWN_OPCODE);
}

// Values outside their enumerations.

fn bad_value(opcode: u16, payload: &[u8]) -> (usize, &'static str, u64) {
    match decode(opcode, payload) {
        Error::BadValue {
            offset,
            field,
            value,
        } => (offset, field, value),
        other => panic!("expected a bad value, got {other:?}"),
    }
}

#[test]
fn an_unknown_exchange_kind_is_a_bad_value() {
    let payload = [1, 0, 0, 0, 1, b'x', 5, 0, 0, 0];
    assert_eq!(
        bad_value(opcode::EXCHANGE_DECLARE, &payload),
        (14, "exchange kind", 5)
    );
    let payload = [1, 0, 0, 0, 1, b'x', 0, 0, 0, 0];
    assert_eq!(
        bad_value(opcode::EXCHANGE_DECLARE, &payload),
        (14, "exchange kind", 0)
    );
}

#[test]
fn an_unknown_durability_is_a_bad_value() {
    assert_eq!(
        bad_value(opcode::PUBLISH, &[0, 0, 3, 1, 0]),
        (10, "durability", 3)
    );
}

#[test]
fn an_unknown_confirm_status_or_level_is_a_bad_value() {
    let confirm = |status: u8, detail: u16| {
        let mut payload = Vec::new();
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.extend_from_slice(&2u64.to_le_bytes());
        payload.push(status);
        payload.extend_from_slice(&detail.to_le_bytes());
        payload
    };
    assert_eq!(
        bad_value(opcode::CONFIRM, &confirm(3, 0)),
        (24, "confirm status", 3)
    );
    assert_eq!(
        bad_value(opcode::CONFIRM, &confirm(0, 7)),
        (25, "confirm durability", 7)
    );
    assert_eq!(
        bad_value(opcode::CONFIRM, &confirm(1, 2)),
        (25, "confirm detail", 2)
    );
}

#[test]
fn a_confirm_range_that_runs_backwards_or_starts_at_zero_is_a_bad_value() {
    let mut payload = Vec::new();
    payload.extend_from_slice(&5u64.to_le_bytes());
    payload.extend_from_slice(&4u64.to_le_bytes());
    payload.extend_from_slice(&[0, 2, 0]);
    assert_eq!(
        bad_value(opcode::CONFIRM, &payload),
        (8, "first sequence", 5)
    );
    payload[..8].copy_from_slice(&0u64.to_le_bytes());
    assert_eq!(
        bad_value(opcode::CONFIRM, &payload),
        (8, "first sequence", 0)
    );
}

#[test]
fn a_boolean_other_than_zero_or_one_is_a_bad_value() {
    let payload = [1, 0, 0, 0, 1, b'x', 2];
    assert_eq!(
        bad_value(opcode::EXCHANGE_DELETE, &payload),
        (14, "if-unused", 2)
    );
}

#[test]
fn undefined_flag_bits_are_a_bad_value() {
    let payload = [1, 0, 0, 0, 0, 0x10, 0, 0];
    assert_eq!(
        bad_value(opcode::QUEUE_DECLARE, &payload),
        (13, "queue flags", 0x10)
    );
    assert_eq!(
        bad_value(opcode::ACK, &[1, 0, 0, 0, 0, 0, 0, 0, 2]),
        (16, "ack flags", 2)
    );
}

#[test]
fn nonzero_header_flags_are_a_bad_value() {
    let mut bytes = BytesMut::from(&frame(opcode::HEARTBEAT, &[])[..]);
    bytes[6] = 1;
    let error = Frame::decode(bytes.freeze()).unwrap_err();
    assert_eq!(
        error,
        Error::BadValue {
            offset: 6,
            field: "frame flags",
            value: 1
        }
    );
}

#[test]
fn an_unknown_table_value_type_is_a_bad_value() {
    let payload = [1, 0, 0, 0, 0, 0, 1, 0, 1, b'k', 0x06];
    assert_eq!(
        bad_value(opcode::QUEUE_DECLARE, &payload),
        (18, "value type", 6)
    );
}

#[test]
fn a_shard_index_outside_the_port_list_is_a_bad_value() {
    let mut payload = vec![0; 2 + 4 * 4];
    payload.extend_from_slice(&[2, 0, 2, 0, 0x28, 0x16, 0x29, 0x16, 0]);
    assert_eq!(bad_value(opcode::WELCOME, &payload), (26, "shard index", 2));
}

#[test]
fn an_empty_publish_batch_is_a_bad_value() {
    assert_eq!(
        bad_value(opcode::PUBLISH, &[0, 0, 2, 0, 0]),
        (11, "publish batch count", 0)
    );
}

// Invalid UTF-8 in names.

#[test]
fn invalid_utf8_in_a_queue_name_is_refused_with_its_offset() {
    let payload = [1, 0, 0, 0, 3, b'a', 0xff, b'b'];
    let error = decode(opcode::QUEUE_PURGE, &payload);
    assert_eq!(
        error,
        Error::InvalidUtf8 {
            offset: 13,
            field: "queue"
        }
    );
    assert_eq!(error.code(), ErrorCode::MALFORMED_FRAME);
}

#[test]
fn invalid_utf8_in_a_routing_key_is_refused() {
    // Publish: empty exchange, no flags, fsynced, one message with a 2-byte routing key.
    let payload = [0, 0, 2, 1, 0, 2, 0xc3, 0x28, 0, 0, 0, 0];
    let error = decode(opcode::PUBLISH, &payload);
    assert_eq!(
        error,
        Error::InvalidUtf8 {
            offset: 14,
            field: "routing key"
        }
    );
}

#[test]
fn invalid_utf8_in_a_table_key_or_string_value_is_refused() {
    let key = [1, 0, 0, 0, 0, 0, 1, 0, 1, 0x80, 4, 1];
    assert_eq!(
        decode(opcode::QUEUE_DECLARE, &key),
        Error::InvalidUtf8 {
            offset: 17,
            field: "table key"
        }
    );
    let value = [1, 0, 0, 0, 0, 0, 1, 0, 1, b'k', 1, 1, 0, 0, 0, 0xfe];
    assert_eq!(
        decode(opcode::QUEUE_DECLARE, &value),
        Error::InvalidUtf8 {
            offset: 23,
            field: "string value"
        }
    );
}

#[test]
fn invalid_utf8_in_a_body_property_is_refused_with_its_body_offset() {
    let error = Body::parse(Bytes::from_static(&[1, 0x10, 0, 2, b'm', 0xff])).unwrap_err();
    assert_eq!(
        error,
        Error::InvalidUtf8 {
            offset: 4,
            field: "message id"
        }
    );
}

// Trailing bytes.

#[test]
fn bytes_after_the_last_field_are_refused() {
    assert_eq!(
        decode(opcode::HEARTBEAT, &[0]),
        Error::TrailingBytes {
            offset: 8,
            count: 1
        }
    );
    let ack = [1, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9];
    assert_eq!(
        decode(opcode::ACK, &ack),
        Error::TrailingBytes {
            offset: 17,
            count: 2
        }
    );
}

#[test]
fn error_messages_are_lowercase_and_give_the_numbers() {
    let error = Error::LengthOverLimit {
        offset: 14,
        field: "credentials",
        length: 4097,
        limit: 4096,
    };
    assert_eq!(
        error.to_string(),
        "credentials length 4097 at offset 14 exceeds the limit of 4096"
    );
}

#[test]
fn a_buffer_longer_than_the_announced_frame_is_refused_before_the_payload_is_read() {
    // The header announces 4 payload bytes; the 9 present would make a valid Ack if read.
    let mut bytes = BytesMut::from(&frame(opcode::ACK, &[1, 0, 0, 0, 0, 0, 0, 0, 0])[..]);
    bytes[..4].copy_from_slice(&4u32.to_le_bytes());
    let error = Frame::decode(bytes.freeze()).unwrap_err();
    assert_eq!(
        error,
        Error::TrailingBytes {
            offset: 12,
            count: 5
        }
    );
}
