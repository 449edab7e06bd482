//! Bad input over real TCP, with hand-made bytes on a raw socket: each case must get its
//! numbered error (PROTOCOL.md section 10) in the right frame, the connection must end where the
//! protocol says, and the broker must go on serving other clients, one already connected and
//! one that connects afterwards. Also the connection caps: connections per shard, unconfirmed
//! messages and unacked deliveries per connection.
//!
//! What these tests cannot catch: input that only some interleaving of frames makes harmful (the
//! wire crate's property tests cover the codec itself), and errors that need a slow broker.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::{TestClient, scratch, short, test_config};
use ruuster_broker::server::Broker;
use ruuster_broker::users::UserConfig;
use ruuster_wire::frame::{
    Ack, CloseOk, Consume, Hello, Publish, PublishMessage, QueueDeclare, Stats, opcode,
};
use ruuster_wire::handshake::PlainCredentials;
use ruuster_wire::limits::{FRAME_SIZE_MAX, HANDSHAKE_FRAME_SIZE_MAX, PROTOCOL_VERSION};
use ruuster_wire::{ConfirmStatus, Durability, ErrorCode, Frame, FrameDecoder, Table};

/// How long a raw socket waits for the broker before the test fails instead of hanging.
const READ_DEADLINE: Duration = Duration::from_secs(20);

/// A client socket that sends whatever bytes a test makes and decodes what comes back.
struct Raw {
    stream: TcpStream,
    decoder: FrameDecoder,
    buffer: BytesMut,
}

impl Raw {
    fn connect(address: SocketAddr) -> Raw {
        let stream = TcpStream::connect(address).expect("connect");
        stream.set_read_timeout(Some(READ_DEADLINE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            decoder: FrameDecoder::new(FRAME_SIZE_MAX),
            buffer: BytesMut::new(),
        }
    }

    /// Connects and completes a handshake as guest.
    fn open(address: SocketAddr) -> Raw {
        let mut raw = Raw::connect(address);
        raw.send(&Frame::Hello(hello("guest", "guest", 60_000)));
        match raw.next_frame() {
            Some(Frame::Welcome(_)) => raw,
            other => panic!("handshake failed: {other:?}"),
        }
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        // The broker may already have closed the socket after an earlier error; what counts is
        // what it sent back.
        let _ = self.stream.write_all(bytes);
    }

    fn send(&mut self, frame: &Frame) {
        let mut out = BytesMut::new();
        frame.encode(&mut out, FRAME_SIZE_MAX).unwrap();
        self.send_bytes(&out);
    }

    /// The next frame other than a heartbeat, or `None` once the broker closed the socket.
    fn next_frame(&mut self) -> Option<Frame> {
        let deadline = Instant::now() + READ_DEADLINE;
        loop {
            match self.decoder.decode(&mut self.buffer) {
                Ok(Some(Frame::Heartbeat(_))) => continue,
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(error) => panic!("the broker sent an invalid frame: {error}"),
            }
            assert!(Instant::now() < deadline, "nothing from the broker in time");
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(count) => self.buffer.extend_from_slice(&chunk[..count]),
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(error) => panic!("read failed: {error}"),
            }
        }
    }

    /// The broker must answer with `Close` carrying `code`. Returns its reason.
    fn expect_close(&mut self, code: ErrorCode) -> String {
        match self.next_frame() {
            Some(Frame::Close(close)) => {
                assert_eq!(close.code, code, "{close:?}");
                close.reason.as_str().to_string()
            }
            other => panic!("expected Close {code:?}, got {other:?}"),
        }
    }

    /// After its `Close`, the broker must close the socket without waiting for anything.
    fn expect_closed_socket(&mut self) {
        if let Some(frame) = self.next_frame() {
            panic!("expected the socket closed, got {frame:?}");
        }
    }
}

fn hello(user: &str, password: &str, heartbeat_ms: u32) -> Hello {
    let credentials = PlainCredentials {
        username: user.into(),
        password: password.into(),
    };
    Hello {
        version_min: PROTOCOL_VERSION,
        version_max: PROTOCOL_VERSION,
        client_name: short("bad-input-tests"),
        mechanism: short("PLAIN"),
        credentials: credentials.encode().unwrap(),
        heartbeat_ms,
        frame_size_max: 0,
    }
}

/// A frame header: payload length, opcode, flags.
fn header(length: u32, opcode: u16, flags: u16) -> Vec<u8> {
    let mut bytes = BytesMut::new();
    bytes.put_u32_le(length);
    bytes.put_u16_le(opcode);
    bytes.put_u16_le(flags);
    bytes.to_vec()
}

/// A full round trip on a fresh connection: declare, publish, confirm. Proves the broker still
/// serves after a bad client.
fn round_trip(address: SocketAddr) {
    let mut client = TestClient::connect(address);
    round_trip_on(&mut client);
}

fn round_trip_on(client: &mut TestClient) {
    client.declare_queue("alive", false);
    client.publish("", "alive", &[b"ping".to_vec()], Durability::Written);
    loop {
        if let Frame::Confirm(confirm) = client.recv() {
            assert!(
                matches!(confirm.status, ConfirmStatus::Stored(_)),
                "{confirm:?}"
            );
            return;
        }
    }
}

/// Framing errors after the handshake (a reserved flag set, a truncated payload, a length past
/// the maximum frame size, an unknown opcode, a publish of zero messages) and an oversize frame
/// before it: each gets `Close` with 100, 101 or 102 and the socket is closed, while a client
/// that was connected all along and a new one keep working. An invalid body is not a framing
/// error: it is refused in its confirm (402) and the connection stays usable. Catches: a panic,
/// a wrong code, a connection left open after lost framing, a bad frame that harms another
/// connection. Cannot catch: a payload the decoder wrongly accepts (the wire crate's tests).
#[test]
fn framing_errors_close_only_the_offending_connection_with_their_codes() {
    let _serial = common::serial();
    common::init_logs();
    let broker = Broker::start(test_config(&scratch("bad-input-framing"), 2)).unwrap();
    let address = broker.client_addr();
    let mut bystander = TestClient::connect(address);

    let mut raw = Raw::open(address);
    raw.send_bytes(&header(0, opcode::HEARTBEAT, 1));
    raw.expect_close(ErrorCode::MALFORMED_FRAME);
    raw.expect_closed_socket();

    let mut raw = Raw::open(address);
    let mut bytes = header(3, opcode::QUEUE_DECLARE, 0);
    bytes.extend_from_slice(&[1, 0, 0]);
    raw.send_bytes(&bytes);
    raw.expect_close(ErrorCode::MALFORMED_FRAME);
    raw.expect_closed_socket();

    let mut raw = Raw::open(address);
    // One byte over the default 1 MiB frame, header included; no payload follows.
    raw.send_bytes(&header((1 << 20) - 8 + 1, opcode::PUBLISH, 0));
    raw.expect_close(ErrorCode::FRAME_TOO_LARGE);
    raw.expect_closed_socket();

    let mut raw = Raw::connect(address);
    raw.send_bytes(&header(HANDSHAKE_FRAME_SIZE_MAX, opcode::HELLO, 0));
    raw.expect_close(ErrorCode::FRAME_TOO_LARGE);
    raw.expect_closed_socket();

    let mut raw = Raw::open(address);
    raw.send_bytes(&header(0, 0x7777, 0));
    raw.expect_close(ErrorCode::UNKNOWN_OPCODE);
    raw.expect_closed_socket();

    let mut raw = Raw::open(address);
    // exchange "", no flags, fsynced, a count of 0 messages (the minimum is 1).
    let mut bytes = header(5, opcode::PUBLISH, 0);
    bytes.extend_from_slice(&[0, 0, 2]);
    bytes.extend_from_slice(&0u16.to_le_bytes());
    raw.send_bytes(&bytes);
    raw.expect_close(ErrorCode::MALFORMED_FRAME);
    raw.expect_closed_socket();

    let mut raw = Raw::open(address);
    raw.send(&Frame::QueueDeclare(QueueDeclare {
        request_id: 1,
        queue: short("bodies"),
        durable: false,
        exclusive: false,
        auto_delete: false,
        passive: false,
        arguments: Table::new(),
    }));
    assert!(matches!(raw.next_frame(), Some(Frame::QueueDeclareOk(_))));
    raw.send(&Frame::Publish(Publish {
        exchange: short(""),
        mandatory: false,
        durability: Durability::Written,
        messages: vec![PublishMessage {
            routing_key: short("bodies"),
            body: Bytes::from_static(&[9, 0, 0]),
        }],
    }));
    match raw.next_frame() {
        Some(Frame::Confirm(confirm)) => {
            assert_eq!(
                confirm.status,
                ConfirmStatus::Rejected(ErrorCode::INVALID_BODY)
            );
        }
        other => panic!("expected a rejecting Confirm, got {other:?}"),
    }
    raw.send(&Frame::Stats(Stats { request_id: 2 }));
    assert!(matches!(raw.next_frame(), Some(Frame::StatsOk(_))));

    round_trip_on(&mut bystander);
    round_trip(address);
    broker.shutdown_handle().shutdown();
    broker.wait().unwrap();
}

/// Handshake refusals: a request before `Hello` (103), a wrong password and an unknown user
/// (200), an unknown mechanism (201), no common version (104), a frame size below the minimum
/// (107), the loopback-only guest from a non-loopback address (202 in `Close`, while a user allowed
/// remotely connects from there), a client silent past the handshake timeout (105) and one
/// silent past two heartbeat intervals after it (106). Each gets `Close` with its code and a
/// closed socket; the broker keeps serving, and none of them stays open inside it. Catches: a
/// panic, a wrong code, a refused client left connected, a timeout that never fires, a reader
/// left waiting for input after the timeout closed its connection. Cannot catch: timing errors
/// smaller than the timeouts themselves. The non-loopback case needs a non-loopback address on
/// this host; without one it prints a note and skips that case.
#[test]
fn handshake_refusals_and_silent_clients_get_their_codes_and_a_closed_socket() {
    let _serial = common::serial();
    common::init_logs();
    let salt = [7u8; 16];
    let mut config = test_config(&scratch("bad-input-handshake"), 2);
    config.listen = "0.0.0.0:0".into();
    config.limits.handshake_timeout_ms = 300;
    config.users = vec![
        UserConfig {
            name: "guest".into(),
            password_hash: ruuster_broker::users::hash_password("guest", salt),
            loopback_only: true,
        },
        UserConfig {
            name: "remote".into(),
            password_hash: ruuster_broker::users::hash_password("secret", salt),
            loopback_only: false,
        },
    ];
    let broker = Broker::start(config).unwrap();
    let port = broker.client_addr().port();
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut bystander = TestClient::connect(address);

    let mut raw = Raw::connect(address);
    raw.send(&Frame::Stats(Stats { request_id: 1 }));
    raw.expect_close(ErrorCode::UNEXPECTED_FRAME);
    raw.expect_closed_socket();

    for (user, password) in [("guest", "wrong"), ("nobody", "guest")] {
        let mut raw = Raw::connect(address);
        raw.send(&Frame::Hello(hello(user, password, 60_000)));
        raw.expect_close(ErrorCode::BAD_CREDENTIALS);
        raw.expect_closed_socket();
    }

    let mut raw = Raw::connect(address);
    raw.send(&Frame::Hello(Hello {
        mechanism: short("SCRAM-SHA-256"),
        ..hello("guest", "guest", 60_000)
    }));
    raw.expect_close(ErrorCode::UNSUPPORTED_MECHANISM);
    raw.expect_closed_socket();

    let mut raw = Raw::connect(address);
    raw.send(&Frame::Hello(Hello {
        version_min: PROTOCOL_VERSION + 7,
        version_max: PROTOCOL_VERSION + 9,
        ..hello("guest", "guest", 60_000)
    }));
    raw.expect_close(ErrorCode::UNSUPPORTED_VERSION);
    raw.expect_closed_socket();

    let mut raw = Raw::connect(address);
    raw.send(&Frame::Hello(Hello {
        frame_size_max: 1000,
        ..hello("guest", "guest", 60_000)
    }));
    raw.expect_close(ErrorCode::INVALID_HANDSHAKE);
    raw.expect_closed_socket();

    match non_loopback_address() {
        Some(ip) => {
            let remote = SocketAddr::new(ip, port);
            let mut raw = Raw::connect(remote);
            raw.send(&Frame::Hello(hello("guest", "guest", 60_000)));
            raw.expect_close(ErrorCode::ACCESS_REFUSED);
            raw.expect_closed_socket();
            let mut raw = Raw::connect(remote);
            raw.send(&Frame::Hello(hello("remote", "secret", 60_000)));
            assert!(matches!(raw.next_frame(), Some(Frame::Welcome(_))));
        }
        None => eprintln!(
            "note: no non-loopback IPv4 address on this host; the loopback-only check is skipped"
        ),
    }

    let mut raw = Raw::connect(address);
    let reason = raw.expect_close(ErrorCode::HANDSHAKE_TIMEOUT);
    raw.expect_closed_socket();
    assert!(!reason.is_empty());

    let mut raw = Raw::connect(address);
    raw.send(&Frame::Hello(hello("guest", "guest", 200)));
    let Some(Frame::Welcome(welcome)) = raw.next_frame() else {
        panic!("handshake failed")
    };
    assert_eq!(welcome.heartbeat_ms, 200);
    raw.expect_close(ErrorCode::MISSED_HEARTBEATS);
    raw.send(&Frame::CloseOk(CloseOk));
    raw.expect_closed_socket();

    // Every refused or expired connection is gone from the broker, including the one whose
    // client still holds its socket open after the handshake timeout: its reader was waiting
    // for input when the timeout closed the connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = bystander.stats()["connections_count"];
        if open == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} connections still open");
        std::thread::sleep(Duration::from_millis(20));
    }

    round_trip_on(&mut bystander);
    round_trip(address);
    broker.shutdown_handle().shutdown();
    broker.wait().unwrap();
}

/// The caps on one connection and one shard: a connection past `connections_per_shard_max` gets
/// `Close` 600 and room returns when another leaves; a publish past `unconfirmed_max` gets 401;
/// a consume that would let the connection hold more than `unacked_per_connection_max` unacked
/// deliveries gets `ErrorReply` 603 and the connection stays usable; an ack of a tag never
/// delivered gets `Close` 500 (not an `ErrorReply` first). Catches: a cap not enforced, a wrong
/// code or frame, a refusal that harms the others. Cannot catch: a cap enforced too early by a
/// few (only the exact values below are tried).
#[test]
fn connection_caps_are_enforced_with_numbered_errors() {
    let _serial = common::serial();
    common::init_logs();
    let mut config = test_config(&scratch("bad-input-caps"), 1);
    config.limits.connections_per_shard_max = 3;
    config.limits.unconfirmed_max = 4;
    config.limits.unacked_per_connection_max = 100;
    let broker = Broker::start(config).unwrap();
    let address = broker.client_addr();

    let mut first = TestClient::connect(address);
    let second = TestClient::connect(address);
    let third = Raw::open(address);
    let mut refused = Raw::connect(address);
    let reason = refused.expect_close(ErrorCode::TOO_MANY_CONNECTIONS);
    assert!(reason.contains('3'), "{reason}");
    refused.expect_closed_socket();
    drop(second);
    let deadline = Instant::now() + READ_DEADLINE;
    let mut replacement = loop {
        let mut raw = Raw::connect(address);
        raw.send(&Frame::Hello(hello("guest", "guest", 60_000)));
        match raw.next_frame() {
            Some(Frame::Welcome(_)) => break raw,
            Some(Frame::Close(close)) if close.code == ErrorCode::TOO_MANY_CONNECTIONS => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection's slot never returned"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(third);

    replacement.send(&Frame::QueueDeclare(QueueDeclare {
        request_id: 1,
        queue: short("caps"),
        durable: false,
        exclusive: false,
        auto_delete: false,
        passive: false,
        arguments: Table::new(),
    }));
    assert!(matches!(
        replacement.next_frame(),
        Some(Frame::QueueDeclareOk(_))
    ));
    let message = PublishMessage {
        routing_key: short("caps"),
        body: common::body(b"m"),
    };
    replacement.send(&Frame::Publish(Publish {
        exchange: short(""),
        mandatory: false,
        durability: Durability::Written,
        messages: vec![message; 5],
    }));
    replacement.expect_close(ErrorCode::TOO_MANY_UNCONFIRMED);
    replacement.expect_closed_socket();

    let mut consumer = Raw::open(address);
    let consume = |request_id: u32, prefetch: u32| {
        Frame::Consume(Consume {
            request_id,
            queue: short("caps"),
            consumer_tag: short(&format!("c{request_id}")),
            prefetch,
            exclusive: false,
            arguments: Table::new(),
        })
    };
    consumer.send(&consume(1, 60));
    assert!(matches!(consumer.next_frame(), Some(Frame::ConsumeOk(_))));
    for (request_id, prefetch) in [(2, 41), (3, 0)] {
        consumer.send(&consume(request_id, prefetch));
        match consumer.next_frame() {
            Some(Frame::ErrorReply(reply)) => {
                assert_eq!(reply.request_id, request_id);
                assert_eq!(reply.code, ErrorCode::LIMIT_EXCEEDED);
            }
            other => panic!("expected ErrorReply 603, got {other:?}"),
        }
    }
    consumer.send(&consume(4, 40));
    assert!(matches!(consumer.next_frame(), Some(Frame::ConsumeOk(_))));
    consumer.send(&Frame::Ack(Ack {
        delivery_tag: 99,
        multiple: false,
    }));
    consumer.expect_close(ErrorCode::UNKNOWN_DELIVERY_TAG);
    consumer.send(&Frame::CloseOk(CloseOk));
    consumer.expect_closed_socket();

    round_trip_on(&mut first);
    broker.shutdown_handle().shutdown();
    broker.wait().unwrap();
}

/// This host's address towards the outside, if it has one: connecting a UDP socket sends
/// nothing, it only picks the route and the source address.
fn non_loopback_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}
