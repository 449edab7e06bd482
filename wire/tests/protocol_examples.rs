//! Keeps `PROTOCOL.md` and the code in step: every hex dump in the document decodes to the frame
//! its caption names, re-encodes to the same bytes, and carries valid bodies; every opcode heading,
//! every error code row and every limits row match the code.
//!
//! Hex dump format (documented in the spec): a fenced block tagged `hex` holds one frame; its first
//! line is `# <Frame name>, <client|server> to <server|client>`; on the other lines, text after
//! `#` is a comment and the rest are two-digit hexadecimal bytes separated by spaces.

use std::collections::BTreeSet;

use bytes::Bytes;
use ruuster_wire::frame::{OPCODES, Sender, name_of, sender_of};
use ruuster_wire::{Body, ErrorCode, Frame};

fn spec() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md");
    std::fs::read_to_string(path).expect("PROTOCOL.md is readable")
}

struct Dump {
    caption: String,
    bytes: Vec<u8>,
    line: usize,
}

fn hex_dumps(spec: &str) -> Vec<Dump> {
    let mut dumps = Vec::new();
    let mut current: Option<Dump> = None;
    for (index, line) in spec.lines().enumerate() {
        let line_number = index + 1;
        match (&mut current, line.trim_end()) {
            (None, "```hex") => {
                current = Some(Dump {
                    caption: String::new(),
                    bytes: Vec::new(),
                    line: line_number,
                })
            }
            (None, _) => {}
            (Some(_), "```") => dumps.push(current.take().expect("inside a block")),
            (Some(dump), text) if dump.caption.is_empty() => {
                let caption = text.strip_prefix("# ");
                dump.caption = caption
                    .unwrap_or_else(|| panic!("line {line_number}: a dump starts with '# <name>'"))
                    .to_owned();
            }
            (Some(dump), text) => {
                let data = text.split('#').next().unwrap_or_default();
                for token in data.split_whitespace() {
                    assert_eq!(
                        token.len(),
                        2,
                        "line {line_number}: '{token}' is not one byte"
                    );
                    let byte = u8::from_str_radix(token, 16)
                        .unwrap_or_else(|_| panic!("line {line_number}: '{token}' is not hex"));
                    dump.bytes.push(byte);
                }
            }
        }
    }
    assert!(current.is_none(), "unterminated hex block");
    dumps
}

#[test]
fn every_hex_dump_in_the_spec_decodes_to_the_frame_its_caption_names() {
    let spec = spec();
    let dumps = hex_dumps(&spec);
    let mut shown = BTreeSet::new();
    for dump in &dumps {
        let (name, direction) = dump
            .caption
            .split_once(", ")
            .expect("caption: name, direction");
        let frame = Frame::decode(Bytes::from(dump.bytes.clone()))
            .unwrap_or_else(|error| panic!("dump at line {}: {error}", dump.line));
        assert_eq!(
            name_of(frame.opcode()),
            Some(name),
            "dump at line {}",
            dump.line
        );

        let sender = sender_of(frame.opcode()).expect("known opcode");
        let expected = match direction {
            "client to server" => [Sender::Client, Sender::Either],
            "server to client" => [Sender::Server, Sender::Either],
            other => panic!("dump at line {}: unknown direction '{other}'", dump.line),
        };
        assert!(
            expected.contains(&sender),
            "dump at line {}: wrong direction",
            dump.line
        );

        let mut encoded = bytes::BytesMut::new();
        frame.encode(&mut encoded, u32::MAX).expect("re-encodes");
        assert_eq!(&encoded[..], &dump.bytes[..], "dump at line {}", dump.line);

        let bodies = match &frame {
            Frame::Publish(publish) => publish.messages.iter().map(|m| m.body.clone()).collect(),
            Frame::Deliver(deliver) => vec![deliver.body.clone()],
            Frame::Return(returned) => vec![returned.body.clone()],
            _ => Vec::new(),
        };
        for body in bodies {
            Body::parse(body).unwrap_or_else(|error| panic!("dump at line {}: {error}", dump.line));
        }
        shown.insert(name.to_owned());
    }

    // The worked examples the spec promises (handshake, declare, publish with its confirm and a
    // return, delivery with its ack, an error, heartbeat and close), and beyond them one dump of
    // every frame, so that every layout in the document is checked against the code.
    let every: BTreeSet<String> = OPCODES
        .iter()
        .map(|opcode| name_of(*opcode).expect("named").to_owned())
        .collect();
    assert_eq!(shown, every);
}

#[test]
fn every_opcode_has_a_heading_with_its_number_and_no_other_does() {
    let spec = spec();
    let mut documented = BTreeSet::new();
    for line in spec.lines().filter(|line| line.starts_with("#### `")) {
        let Some((name, rest)) = line["#### `".len()..].split_once("` — opcode `0x") else {
            continue;
        };
        let number = u16::from_str_radix(&rest[..4], 16).expect("four hex digits");
        assert_eq!(name_of(number), Some(name), "heading: {line}");
        documented.insert(number);
    }
    assert_eq!(documented, OPCODES.iter().copied().collect());
}

#[test]
fn the_error_code_table_lists_every_code_with_its_name_and_closing_rule() {
    let spec = spec();
    for code in ErrorCode::all() {
        let name = code.name().expect("known");
        let closes = if code.closes_connection() {
            "yes"
        } else {
            "no"
        };
        let row = format!("| {} | `{name}` | {closes} |", code.0);
        assert!(spec.contains(&row), "spec lacks the row starting '{row}'");
    }
}

#[test]
fn the_limits_table_states_the_values_of_the_code() {
    use ruuster_wire::limits::*;

    let spec = spec();
    let heartbeat = format!(
        "| heartbeat interval | {} ms to {} s; default {} s |",
        HEARTBEAT_INTERVAL_MIN.as_millis(),
        HEARTBEAT_INTERVAL_MAX.as_secs(),
        HEARTBEAT_INTERVAL_DEFAULT.as_secs()
    );
    let handshake_timeout_s = HANDSHAKE_TIMEOUT_DEFAULT.as_secs();
    let rows = [
        format!("| frame size before the handshake | {HANDSHAKE_FRAME_SIZE_MAX} bytes |"),
        format!(
            "| negotiated max frame size | {FRAME_SIZE_MIN} to {FRAME_SIZE_MAX} bytes; \
             server default {FRAME_SIZE_DEFAULT} |"
        ),
        format!("| short string (`sstr`) | {SHORT_STR_SIZE_MAX} bytes |"),
        format!("| table entries | {TABLE_ENTRY_COUNT_MAX} |"),
        format!("| messages per `Publish` | 1 to {PUBLISH_BATCH_COUNT_MAX} |"),
        format!("| credentials | {CREDENTIALS_SIZE_MAX} bytes |"),
        format!("| shards in `Welcome` | 1 to {SHARD_COUNT_MAX} |"),
        format!("| counters in `StatsOk` | {STATS_ENTRY_COUNT_MAX} |"),
        heartbeat,
        format!("| missed heartbeats | {MISSED_HEARTBEATS_MAX} intervals of silence |"),
        format!("| handshake timeout | server setting; default {handshake_timeout_s} s |"),
    ];
    for row in rows {
        assert!(
            spec.contains(&row),
            "spec lacks the limits row starting '{row}'"
        );
    }
}
