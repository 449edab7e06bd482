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
