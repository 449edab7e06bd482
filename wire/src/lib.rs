//! The Ruuster wire protocol: a sans-IO codec for the binary protocol specified in `PROTOCOL.md`.
//!
//! Nothing here touches a socket, spawns a task or reads a clock. Callers (the broker and the
//! client) own the I/O: they feed received bytes to a [`FrameDecoder`], pass frames through a
//! [`Connection`] to check that they are legal in the current state, encode replies into their own
//! [`bytes::BytesMut`] send buffers, and pass the current `Instant` in for deadlines.
//!
//! | Module         | Role                                                                      |
//! |----------------|---------------------------------------------------------------------------|
//! | [`frame`]      | the frame header, every opcode's struct, `Frame::encode` / `Frame::decode` |
//! | [`framing`]    | [`FrameDecoder`]: whole frames out of a receive buffer, size-checked first |
//! | [`connection`] | [`Connection`]: legal frames per state and side, deadlines, sequences     |
//! | [`handshake`]  | server-side negotiation of a `Hello`, `PLAIN` credentials                 |
//! | [`body`]       | the message body: [`Properties`] to build one, [`Body`] to validate/view  |
//! | [`table`]      | typed argument and header tables                                          |
//! | [`text`]       | UTF-8 strings sharing the receive buffer ([`ShortStr`], [`Text`])         |
//! | [`error`]      | numbered [`ErrorCode`]s and the crate's one [`Error`] type                |
//! | [`limits`]     | every named limit, with its reason                                        |
//!
//! Decoding never copies a payload: strings and bodies in a decoded [`Frame`] are slices of the
//! received [`bytes::Bytes`]. Every length read is checked against its limit before anything is
//! allocated, and malformed input returns an [`Error`] with the offset and the expected field; the
//! decoder does not panic on any input (property tests and a fuzz target check this).
//!
//! Copies per message, as far as this crate is concerned: decoding a `Publish` or a `Deliver`
//! copies nothing (bodies are slices of the receive buffer); [`Frame::encode`] copies each body
//! once into the send buffer, which [`frame::Deliver::encode_head`] avoids for deliveries by
//! leaving the body to a vectored write.
//!
//! A client's handshake and first publish, with the socket left out (the server side mirrors it
//! with [`Role::Server`] and [`handshake::negotiate`]):
//!
//! ```
//! use std::time::{Duration, Instant};
//!
//! use bytes::BytesMut;
//! use ruuster_wire::frame::{Hello, Publish, PublishMessage};
//! use ruuster_wire::handshake::{PlainCredentials, ServerSettings, negotiate};
//! use ruuster_wire::{Connection, Durability, Frame, FrameDecoder, Properties, Role, ShortStr};
//!
//! let now = Instant::now();
//! let mut connection = Connection::new(Role::Client, now, Duration::from_secs(10));
//! let mut decoder = FrameDecoder::default();
//! let mut send_buffer = BytesMut::new();
//!
//! let credentials = PlainCredentials { username: "guest".into(), password: "guest".into() };
//! let hello = Frame::Hello(Hello {
//!     version_min: 1,
//!     version_max: 1,
//!     client_name: ShortStr::from_static("example"),
//!     mechanism: ShortStr::from_static("PLAIN"),
//!     credentials: credentials.encode().expect("short credentials"),
//!     heartbeat_ms: 0,
//!     frame_size_max: 0,
//! });
//! connection.on_send(&hello, now)?;
//! hello.encode(&mut send_buffer, connection.frame_size_max())?;
//! // ... write `send_buffer` to the socket; here the server's answer is made up locally.
//! # let Frame::Hello(hello_sent) = &hello else { unreachable!() };
//! # let mut receive_buffer = BytesMut::new();
//! # let welcome = Frame::Welcome(negotiate(hello_sent, &ServerSettings::default()).unwrap());
//! # welcome.encode(&mut receive_buffer, u32::MAX)?;
//!
//! // Bytes read from the socket go to the decoder; each whole frame goes to the state machine.
//! while let Some(frame) = decoder.decode(&mut receive_buffer)? {
//!     connection.on_receive(&frame, now)?;
//! }
//! decoder.set_frame_size_max(connection.frame_size_max());
//!
//! let content_type = Some(ShortStr::from_static("text/plain"));
//! let properties = Properties { content_type, ..Properties::default() };
//! let body = properties.to_body(b"hello")?;
//! let publish = Frame::Publish(Publish {
//!     exchange: ShortStr::default(),
//!     mandatory: false,
//!     durability: Durability::Fsynced,
//!     messages: vec![PublishMessage { routing_key: ShortStr::from_static("greetings"), body }],
//! });
//! let sequence = connection.next_sequence();
//! connection.on_send(&publish, now)?;
//! publish.encode(&mut send_buffer, connection.frame_size_max())?;
//! assert_eq!(sequence, 1); // the Confirm covering 1 will report this message's outcome
//! # Ok::<(), ruuster_wire::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
mod codec;
pub mod connection;
pub mod error;
pub mod frame;
pub mod framing;
pub mod handshake;
pub mod limits;
pub mod table;
pub mod text;

pub use body::{Body, Properties};
pub use connection::{Connection, Inbound, State, Tick};
pub use error::{Error, ErrorCode, Role};
pub use frame::{ConfirmStatus, Durability, ExchangeKind, Frame};
pub use framing::FrameDecoder;
pub use table::{Table, Value};
pub use text::{ShortStr, Text};
