//! Frames: the fixed header, every opcode with its fields, and their encoding and decoding.
//!
//! A frame is an 8-byte header followed by a payload whose layout the opcode selects:
//!
//! | Offset                | Size | Field   | Notes                                           |
//! |-----------------------|------|---------|-------------------------------------------------|
//! | `FRAME_LENGTH_OFFSET` | 4    | length  | `u32`, payload bytes after the header            |
//! | `FRAME_OPCODE_OFFSET` | 2    | opcode  | `u16`, selects the payload layout               |
//! | `FRAME_FLAGS_OFFSET`  | 2    | flags   | `u16`, reserved, must be zero                   |
//!
//! Every integer is little-endian. The payload layouts are listed field by field on each frame
//! struct below and, with byte tables, in `PROTOCOL.md`. Decoding takes a [`Bytes`] holding exactly
//! one frame and returns a [`Frame`] whose strings and bodies are slices of it. A payload must be
//! consumed exactly: trailing bytes are an error, so every frame has one encoding.
//!
//! Opcodes are grouped by their high byte: `0x00` connection, `0x01` topology, `0x02` publish,
//! `0x03` consume, `0x04` stats. Each opcode has one sender ([`Sender`]); the connection state
//! machine ([`crate::connection`]) refuses a frame from the wrong side.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Reader, capacity_for, put_bool, put_count, put_long_bytes, put_short_str};
use crate::error::{Error, ErrorCode};
use crate::limits::{
    CREDENTIALS_SIZE_MAX, FRAME_HEADER_SIZE, PUBLISH_BATCH_COUNT_MAX, SHARD_COUNT_MAX,
    STATS_ENTRY_COUNT_MAX,
};
use crate::table::Table;
use crate::text::ShortStr;

/// Offset of the `u32` payload length in the frame header.
pub const FRAME_LENGTH_OFFSET: usize = 0;
/// Offset of the `u16` opcode in the frame header.
pub const FRAME_OPCODE_OFFSET: usize = FRAME_LENGTH_OFFSET + 4;
/// Offset of the `u16` reserved flags in the frame header.
pub const FRAME_FLAGS_OFFSET: usize = FRAME_OPCODE_OFFSET + 2;

const _: () = assert!(FRAME_FLAGS_OFFSET + 2 == FRAME_HEADER_SIZE);
const _: () = assert!(FRAME_HEADER_SIZE == 8);

/// The fixed header at the start of every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload bytes after the header.
    pub length: u32,
    /// The frame's opcode (see [`opcode`]).
    pub opcode: u16,
    /// Reserved; zero in this version.
    pub flags: u16,
}

impl FrameHeader {
    /// Reads a header from the first [`FRAME_HEADER_SIZE`] bytes of `bytes`, or `None` if fewer
    /// are present.
    pub fn peek(bytes: &[u8]) -> Option<FrameHeader> {
        let header: &[u8; FRAME_HEADER_SIZE] = bytes.get(..FRAME_HEADER_SIZE)?.try_into().ok()?;
        let field = |offset: usize| [header[offset], header[offset + 1]];
        Some(FrameHeader {
            length: u32::from_le_bytes([header[0], header[1], header[2], header[3]]),
            opcode: u16::from_le_bytes(field(FRAME_OPCODE_OFFSET)),
            flags: u16::from_le_bytes(field(FRAME_FLAGS_OFFSET)),
        })
    }

    /// The whole frame's size: header plus payload.
    pub fn frame_size(&self) -> u64 {
        FRAME_HEADER_SIZE as u64 + u64::from(self.length)
    }
}

/// Which side of a connection may send a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// Only the client sends it.
    Client,
    /// Only the server sends it.
    Server,
    /// Either side sends it (heartbeat and close).
    Either,
}

/// Durability a publisher asks for and a confirm reports, weakest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Durability {
    /// In the broker's memory: lost if the broker process dies.
    Memory = 0,
    /// Written to the operating system: survives a broker crash, not a power loss.
    Written = 1,
    /// Synced to the device: survives a power loss.
    #[default]
    Fsynced = 2,
}

impl Durability {
    fn from_wire(value: u64, offset: usize, field: &'static str) -> Result<Durability, Error> {
        match value {
            0 => Ok(Durability::Memory),
            1 => Ok(Durability::Written),
            2 => Ok(Durability::Fsynced),
            _ => Err(Error::BadValue {
                offset,
                field,
                value,
            }),
        }
    }
}

/// The routing algorithm of an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// Routing key equals the binding key.
    Direct = 1,
    /// Every bound queue.
    Fanout = 2,
    /// Dot-separated words; `*` matches one word, `#` zero or more.
    Topic = 3,
    /// Message headers against binding arguments, with `x-match` `all` or `any`.
    Headers = 4,
}

/// What a confirm says about its range of publish sequence numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfirmStatus {
    /// Every target queue holds the messages; the level is the lowest reached over the targets.
    Stored(Durability),
    /// The messages matched no queue and were dropped (they were not mandatory).
    Unroutable,
    /// At least one target failed; the code says why. A message may still exist on another target.
    Rejected(ErrorCode),
}

const CONFIRM_STORED: u8 = 0;
const CONFIRM_UNROUTABLE: u8 = 1;
const CONFIRM_REJECTED: u8 = 2;

macro_rules! frames {
    ($( $(#[$doc:meta])* $variant:ident = $opcode:literal, $constant:ident, $sender:ident; )*) => {
        /// Opcode numbers, one per frame type.
        pub mod opcode {
            $( #[doc = concat!("Opcode of [`crate::frame::", stringify!($variant), "`].")]
               pub const $constant: u16 = $opcode; )*
        }

        /// Any frame of the protocol.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Frame {
            $( $(#[$doc])* $variant($variant), )*
        }

        impl Frame {
            /// The opcode of this frame.
            pub fn opcode(&self) -> u16 {
                match self { $( Frame::$variant(_) => $opcode, )* }
            }

            fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
                match self { $( Frame::$variant(frame) => frame.encode_payload(dst), )* }
            }

            fn decode_payload(opcode: u16, reader: &mut Reader) -> Result<Frame, Error> {
                match opcode {
                    $( $opcode => $variant::decode_payload(reader).map(Frame::$variant), )*
                    _ => Err(Error::UnknownOpcode { offset: FRAME_OPCODE_OFFSET, opcode }),
                }
            }
        }

        /// Which side sends frames with `opcode`, or `None` for an unknown opcode.
        pub fn sender_of(opcode: u16) -> Option<Sender> {
            match opcode { $( $opcode => Some(Sender::$sender), )* _ => None }
        }

        /// The frame name of `opcode` as the spec writes it, or `None` for an unknown opcode.
        pub fn name_of(opcode: u16) -> Option<&'static str> {
            match opcode { $( $opcode => Some(stringify!($variant)), )* _ => None }
        }

        /// Every opcode this version defines, in the order of the spec.
        pub const OPCODES: &[u16] = &[ $( $opcode, )* ];

        $( impl From<$variant> for Frame {
            fn from(frame: $variant) -> Frame { Frame::$variant(frame) }
        } )*
    };
}

frames! {
    /// Client opens the handshake.
    Hello = 0x0001, HELLO, Client;
    /// Server accepts the handshake and states the connection's parameters.
    Welcome = 0x0002, WELCOME, Server;
    /// Liveness signal when a side has sent nothing for a heartbeat interval.
    Heartbeat = 0x0003, HEARTBEAT, Either;
    /// Orderly close, or a fatal error, with a code and a reason.
    Close = 0x0004, CLOSE, Either;
    /// Acknowledges a `Close`; the socket is closed after it.
    CloseOk = 0x0005, CLOSE_OK, Either;
    /// A request failed; the connection stays open.
    ErrorReply = 0x0006, ERROR, Server;

    /// Creates an exchange, or checks one (passive).
    ExchangeDeclare = 0x0101, EXCHANGE_DECLARE, Client;
    /// Reply to `ExchangeDeclare`.
    ExchangeDeclareOk = 0x0102, EXCHANGE_DECLARE_OK, Server;
    /// Deletes an exchange.
    ExchangeDelete = 0x0103, EXCHANGE_DELETE, Client;
    /// Reply to `ExchangeDelete`.
    ExchangeDeleteOk = 0x0104, EXCHANGE_DELETE_OK, Server;
    /// Creates a queue, or checks one (passive).
    QueueDeclare = 0x0111, QUEUE_DECLARE, Client;
    /// Reply to `QueueDeclare` with the queue's name and counts.
    QueueDeclareOk = 0x0112, QUEUE_DECLARE_OK, Server;
    /// Deletes a queue.
    QueueDelete = 0x0113, QUEUE_DELETE, Client;
    /// Reply to `QueueDelete` with the number of messages deleted.
    QueueDeleteOk = 0x0114, QUEUE_DELETE_OK, Server;
    /// Removes every ready message of a queue.
    QueuePurge = 0x0115, QUEUE_PURGE, Client;
    /// Reply to `QueuePurge` with the number of messages removed.
    QueuePurgeOk = 0x0116, QUEUE_PURGE_OK, Server;
    /// Binds a queue to an exchange.
    QueueBind = 0x0121, QUEUE_BIND, Client;
    /// Reply to `QueueBind`.
    QueueBindOk = 0x0122, QUEUE_BIND_OK, Server;
    /// Removes a binding.
    QueueUnbind = 0x0123, QUEUE_UNBIND, Client;
    /// Reply to `QueueUnbind`.
    QueueUnbindOk = 0x0124, QUEUE_UNBIND_OK, Server;

    /// A batch of messages to one exchange.
    Publish = 0x0201, PUBLISH, Client;
    /// Outcome of a contiguous range of published messages.
    Confirm = 0x0202, CONFIRM, Server;
    /// An unroutable mandatory message, sent back.
    Return = 0x0203, RETURN, Server;
    /// The server stops reading publishes (backpressure) until `Unblocked`.
    Blocked = 0x0204, BLOCKED, Server;
    /// The condition behind `Blocked` has cleared.
    Unblocked = 0x0205, UNBLOCKED, Server;

    /// Subscribes to a queue.
    Consume = 0x0301, CONSUME, Client;
    /// Reply to `Consume` with the consumer's id.
    ConsumeOk = 0x0302, CONSUME_OK, Server;
    /// Ends a subscription.
    Cancel = 0x0303, CANCEL, Client;
    /// Reply to `Cancel`.
    CancelOk = 0x0304, CANCEL_OK, Server;
    /// The server ended a subscription (for example, its queue was deleted).
    CancelNotice = 0x0305, CANCEL_NOTICE, Server;
    /// A message for a consumer.
    Deliver = 0x0306, DELIVER, Server;
    /// Acknowledges one delivery, or every delivery up to a tag.
    Ack = 0x0307, ACK, Client;
    /// Negatively acknowledges one or many deliveries, with a requeue choice.
    Nack = 0x0308, NACK, Client;
    /// Negatively acknowledges one delivery, with a requeue choice.
    Reject = 0x0309, REJECT, Client;

    /// Asks for the broker's counters.
    Stats = 0x0401, STATS, Client;
    /// The broker's counters.
    StatsOk = 0x0402, STATS_OK, Server;
}

impl Frame {
    /// Appends this frame to `dst` and returns its size. Fails, leaving `dst` as it was, if a
    /// field exceeds its limit or the frame would exceed `frame_size_max` (the peer's negotiated
    /// maximum, or [`crate::limits::HANDSHAKE_FRAME_SIZE_MAX`] before the handshake).
    pub fn encode(&self, dst: &mut BytesMut, frame_size_max: u32) -> Result<usize, Error> {
        let start = dst.len();
        dst.put_u32_le(0);
        dst.put_u16_le(self.opcode());
        dst.put_u16_le(0);

        if let Err(error) = self.encode_payload(dst) {
            dst.truncate(start);
            return Err(error);
        }

        let size = dst.len() - start;
        if size as u64 > u64::from(frame_size_max) {
            dst.truncate(start);
            return Err(Error::FrameTooLarge {
                size: size as u64,
                limit: frame_size_max,
            });
        }
        let length = (size - FRAME_HEADER_SIZE) as u32;
        dst[start + FRAME_LENGTH_OFFSET..start + FRAME_OPCODE_OFFSET]
            .copy_from_slice(&length.to_le_bytes());

        // Formats are checked twice: what the encoder wrote must read back as the same frame.
        // Debug builds only, as it copies the frame.
        debug_assert_eq!(
            Frame::decode(Bytes::copy_from_slice(&dst[start..])).as_ref(),
            Ok(self),
            "an encoded frame does not decode to itself"
        );
        Ok(size)
    }

    /// Decodes `frame`, which must hold exactly one whole frame (header included). The result
    /// shares `frame`'s memory. Size limits are the framing layer's job
    /// ([`crate::framing::FrameDecoder`]), which checks them before the bytes are buffered.
    pub fn decode(frame: Bytes) -> Result<Frame, Error> {
        let Some(header) = FrameHeader::peek(&frame) else {
            return Err(Error::Truncated {
                offset: 0,
                field: "frame header",
                needed: FRAME_HEADER_SIZE,
                available: frame.len(),
            });
        };
        let payload_size = frame.len() - FRAME_HEADER_SIZE;
        if u64::from(header.length) > payload_size as u64 {
            return Err(Error::Truncated {
                offset: FRAME_HEADER_SIZE,
                field: "frame payload",
                needed: header.length as usize,
                available: payload_size,
            });
        }
        if header.flags != 0 {
            return Err(Error::BadValue {
                offset: FRAME_FLAGS_OFFSET,
                field: "frame flags",
                value: u64::from(header.flags),
            });
        }

        // Bytes after the announced length are refused before decoding, so that a payload
        // decoder can never read past its own frame.
        let end = FRAME_HEADER_SIZE + header.length as usize;
        if frame.len() > end {
            return Err(Error::TrailingBytes {
                offset: end,
                count: frame.len() - end,
            });
        }
        let mut reader = Reader::new(frame, FRAME_HEADER_SIZE);
        let decoded = Frame::decode_payload(header.opcode, &mut reader)?;
        reader.finish()?;
        Ok(decoded)
    }

    /// The request id of a control request, its reply, or an error reply.
    pub fn request_id(&self) -> Option<u32> {
        let id = match self {
            Frame::ErrorReply(frame) => frame.request_id,
            Frame::ExchangeDeclare(frame) => frame.request_id,
            Frame::ExchangeDeclareOk(frame) => frame.request_id,
            Frame::ExchangeDelete(frame) => frame.request_id,
            Frame::ExchangeDeleteOk(frame) => frame.request_id,
            Frame::QueueDeclare(frame) => frame.request_id,
            Frame::QueueDeclareOk(frame) => frame.request_id,
            Frame::QueueDelete(frame) => frame.request_id,
            Frame::QueueDeleteOk(frame) => frame.request_id,
            Frame::QueuePurge(frame) => frame.request_id,
            Frame::QueuePurgeOk(frame) => frame.request_id,
            Frame::QueueBind(frame) => frame.request_id,
            Frame::QueueUnbind(frame) => frame.request_id,
            Frame::QueueBindOk(frame) => frame.request_id,
            Frame::QueueUnbindOk(frame) => frame.request_id,
            Frame::Consume(frame) => frame.request_id,
            Frame::ConsumeOk(frame) => frame.request_id,
            Frame::Cancel(frame) => frame.request_id,
            Frame::CancelOk(frame) => frame.request_id,
            Frame::Stats(frame) => frame.request_id,
            Frame::StatsOk(frame) => frame.request_id,
            _ => return None,
        };
        Some(id)
    }
}

/// A frame payload's encoding, implemented by each frame struct.
trait Payload: Sized {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error>;
    fn decode_payload(reader: &mut Reader) -> Result<Self, Error>;
}

/// Declares a frame whose payload is empty.
macro_rules! empty_frame {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name;

        impl Payload for $name {
            fn encode_payload(&self, _dst: &mut BytesMut) -> Result<(), Error> {
                Ok(())
            }

            fn decode_payload(_reader: &mut Reader) -> Result<Self, Error> {
                Ok($name)
            }
        }
    };
}

/// Declares a frame whose payload is only a `u32` request id.
macro_rules! request_id_frame {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            /// The request id being answered or carried.
            pub request_id: u32,
        }

        impl Payload for $name {
            fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
                dst.put_u32_le(self.request_id);
                Ok(())
            }

            fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
                Ok($name { request_id: reader.u32("request id")? })
            }
        }
    };
}

// Connection frames.

/// `Hello`: `u16` min version, `u16` max version, short-string client name, short-string
/// mechanism, `u32`-prefixed credentials, `u32` heartbeat ms, `u32` max frame size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The lowest protocol version the client speaks.
    pub version_min: u16,
    /// The highest protocol version the client speaks.
    pub version_max: u16,
    /// A free-form name for logs and the management view.
    pub client_name: ShortStr,
    /// The authentication mechanism, for example `PLAIN`.
    pub mechanism: ShortStr,
    /// Mechanism-specific credentials (`PLAIN`: `\0user\0password`).
    pub credentials: Bytes,
    /// Requested heartbeat interval in milliseconds; `0` asks for the server's default.
    pub heartbeat_ms: u32,
    /// Largest frame the client accepts; `0` accepts the server's maximum.
    pub frame_size_max: u32,
}

impl Payload for Hello {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u16_le(self.version_min);
        dst.put_u16_le(self.version_max);
        put_short_str(dst, &self.client_name);
        put_short_str(dst, &self.mechanism);
        put_long_bytes(dst, &self.credentials, "credentials", CREDENTIALS_SIZE_MAX)?;
        dst.put_u32_le(self.heartbeat_ms);
        dst.put_u32_le(self.frame_size_max);
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        Ok(Hello {
            version_min: reader.u16("min version")?,
            version_max: reader.u16("max version")?,
            client_name: reader.short_str("client name")?,
            mechanism: reader.short_str("mechanism")?,
            credentials: reader.long_bytes("credentials", CREDENTIALS_SIZE_MAX)?,
            heartbeat_ms: reader.u32("heartbeat")?,
            frame_size_max: reader.u32("max frame size")?,
        })
    }
}

/// `Welcome`: `u16` version, `u32` heartbeat ms, `u32` max frame size, `u32` max unconfirmed,
/// `u32` max prefetch, `u16` shard index, `u16` shard count and one `u16` port per shard,
/// short-string server name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The negotiated protocol version.
    pub version: u16,
    /// The negotiated heartbeat interval in milliseconds.
    pub heartbeat_ms: u32,
    /// The negotiated maximum frame size, binding on both sides.
    pub frame_size_max: u32,
    /// Published messages that may await a confirm at once.
    pub unconfirmed_max: u32,
    /// The largest prefetch a consumer may ask for.
    pub prefetch_max: u32,
    /// The shard this connection landed on, an index into `shard_ports`.
    pub shard_index: u16,
    /// One port per shard: connecting to `shard_ports[i]` lands on shard `i`.
    pub shard_ports: Vec<u16>,
    /// The server's name and version, for logs.
    pub server_name: ShortStr,
}

impl Payload for Welcome {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        if usize::from(self.shard_index) >= self.shard_ports.len() {
            return Err(Error::EncodeOverLimit {
                field: "shard index",
                length: u64::from(self.shard_index),
                limit: self.shard_ports.len() as u64,
            });
        }
        dst.put_u16_le(self.version);
        dst.put_u32_le(self.heartbeat_ms);
        dst.put_u32_le(self.frame_size_max);
        dst.put_u32_le(self.unconfirmed_max);
        dst.put_u32_le(self.prefetch_max);
        dst.put_u16_le(self.shard_index);
        put_count(dst, self.shard_ports.len(), "shard count", SHARD_COUNT_MAX)?;
        for port in &self.shard_ports {
            dst.put_u16_le(*port);
        }
        put_short_str(dst, &self.server_name);
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        let version = reader.u16("version")?;
        let heartbeat_ms = reader.u32("heartbeat")?;
        let frame_size_max = reader.u32("max frame size")?;
        let unconfirmed_max = reader.u32("max unconfirmed")?;
        let prefetch_max = reader.u32("max prefetch")?;
        let shard_index_offset = reader.position();
        let shard_index = reader.u16("shard index")?;
        let shard_count = reader.count("shard count", SHARD_COUNT_MAX)?;
        if usize::from(shard_index) >= shard_count {
            return Err(Error::BadValue {
                offset: shard_index_offset,
                field: "shard index",
                value: u64::from(shard_index),
            });
        }
        let mut shard_ports = Vec::with_capacity(capacity_for(shard_count, reader, 2));
        for _ in 0..shard_count {
            shard_ports.push(reader.u16("shard port")?);
        }
        Ok(Welcome {
            version,
            heartbeat_ms,
            frame_size_max,
            unconfirmed_max,
            prefetch_max,
            shard_index,
            shard_ports,
            server_name: reader.short_str("server name")?,
        })
    }
}

empty_frame!(
    /// `Heartbeat`: empty payload.
    Heartbeat
);

/// `Close`: `u16` code, short-string reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    /// [`ErrorCode::NORMAL_CLOSE`] for an orderly close, otherwise the fatal error.
    pub code: ErrorCode,
    /// Human-readable detail for logs.
    pub reason: ShortStr,
}

impl Payload for Close {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u16_le(self.code.0);
        put_short_str(dst, &self.reason);
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        Ok(Close {
            code: ErrorCode(reader.u16("code")?),
            reason: reader.short_str("reason")?,
        })
    }
}

empty_frame!(
    /// `CloseOk`: empty payload.
    CloseOk
);

/// `Error`: `u32` request id (`0` when the failed frame carries none), `u16` code, short-string
/// message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// The failed request's id, or `0` for a frame without one (ack, nack, reject).
    pub request_id: u32,
    /// Why it failed.
    pub code: ErrorCode,
    /// Human-readable detail, naming the entity and the values involved.
    pub message: ShortStr,
}

impl Payload for ErrorReply {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u32_le(self.request_id);
        dst.put_u16_le(self.code.0);
        put_short_str(dst, &self.message);
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        Ok(ErrorReply {
            request_id: reader.u32("request id")?,
            code: ErrorCode(reader.u16("code")?),
            message: reader.short_str("message")?,
        })
    }
}

// Topology frames.

const EXCHANGE_DURABLE: u8 = 1 << 0;
const EXCHANGE_AUTO_DELETE: u8 = 1 << 1;
const EXCHANGE_PASSIVE: u8 = 1 << 2;

/// `ExchangeDeclare`: `u32` request id, short-string exchange, `u8` kind, `u8` flags (bit 0
/// durable, bit 1 auto-delete, bit 2 passive), argument table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeDeclare {
    /// Echoed in the reply.
    pub request_id: u32,
    /// The exchange's name.
    pub exchange: ShortStr,
    /// The routing algorithm.
    pub kind: ExchangeKind,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Only check that the exchange exists (other fields are ignored).
    pub passive: bool,
    /// Extension arguments; compared for declare-equivalence.
    pub arguments: Table,
}

impl Payload for ExchangeDeclare {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u32_le(self.request_id);
        put_short_str(dst, &self.exchange);
        dst.put_u8(self.kind as u8);
        let mut flags = 0;
        flags |= if self.durable { EXCHANGE_DURABLE } else { 0 };
        flags |= if self.auto_delete {
            EXCHANGE_AUTO_DELETE
        } else {
            0
        };
        flags |= if self.passive { EXCHANGE_PASSIVE } else { 0 };
        dst.put_u8(flags);
        self.arguments.encode(dst)
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        let request_id = reader.u32("request id")?;
        let exchange = reader.short_str("exchange")?;
        let kind_offset = reader.position();
        let kind = match reader.u8("exchange kind")? {
            1 => ExchangeKind::Direct,
            2 => ExchangeKind::Fanout,
            3 => ExchangeKind::Topic,
            4 => ExchangeKind::Headers,
            value => {
                let value = u64::from(value);
                return Err(Error::BadValue {
                    offset: kind_offset,
                    field: "exchange kind",
                    value,
                });
            }
        };
        let flags = reader.flags(
            "exchange flags",
            EXCHANGE_DURABLE | EXCHANGE_AUTO_DELETE | EXCHANGE_PASSIVE,
        )?;
        Ok(ExchangeDeclare {
            request_id,
            exchange,
            kind,
            durable: flags & EXCHANGE_DURABLE != 0,
            auto_delete: flags & EXCHANGE_AUTO_DELETE != 0,
            passive: flags & EXCHANGE_PASSIVE != 0,
            arguments: Table::decode(reader)?,
        })
    }
}

request_id_frame!(
    /// `ExchangeDeclareOk`: `u32` request id.
    ExchangeDeclareOk
);

/// `ExchangeDelete`: `u32` request id, short-string exchange, `bool` if-unused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeDelete {
    /// Echoed in the reply.
    pub request_id: u32,
    /// The exchange's name.
    pub exchange: ShortStr,
    /// Fail with precondition-failed if the exchange has bindings.
    pub if_unused: bool,
}

impl Payload for ExchangeDelete {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u32_le(self.request_id);
        put_short_str(dst, &self.exchange);
        put_bool(dst, self.if_unused);
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        Ok(ExchangeDelete {
            request_id: reader.u32("request id")?,
            exchange: reader.short_str("exchange")?,
            if_unused: reader.bool("if-unused")?,
        })
    }
}

request_id_frame!(
    /// `ExchangeDeleteOk`: `u32` request id.
    ExchangeDeleteOk
);

const QUEUE_DURABLE: u8 = 1 << 0;
const QUEUE_EXCLUSIVE: u8 = 1 << 1;
const QUEUE_AUTO_DELETE: u8 = 1 << 2;
const QUEUE_PASSIVE: u8 = 1 << 3;

/// `QueueDeclare`: `u32` request id, short-string queue (empty: the server picks a name), `u8`
/// flags (bit 0 durable, bit 1 exclusive, bit 2 auto-delete, bit 3 passive), argument table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDeclare {
    /// Echoed in the reply.
    pub request_id: u32,
    /// The queue's name; empty asks the server to generate one.
    pub queue: ShortStr,
    /// Survives a broker restart; its messages are journaled.
    pub durable: bool,
    /// Usable only by this connection and deleted when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer cancels.
    pub auto_delete: bool,
    /// Only check that the queue exists and return its counts.
    pub passive: bool,
    /// Queue features (`x-max-length`, `x-message-ttl`, `x-dead-letter-exchange`, ...); compared
    /// for declare-equivalence.
    pub arguments: Table,
}

impl Payload for QueueDeclare {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u32_le(self.request_id);
        put_short_str(dst, &self.queue);
        let mut flags = 0;
        flags |= if self.durable { QUEUE_DURABLE } else { 0 };
        flags |= if self.exclusive { QUEUE_EXCLUSIVE } else { 0 };
        flags |= if self.auto_delete {
            QUEUE_AUTO_DELETE
        } else {
            0
        };
        flags |= if self.passive { QUEUE_PASSIVE } else { 0 };
        dst.put_u8(flags);
        self.arguments.encode(dst)
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        let request_id = reader.u32("request id")?;
        let queue = reader.short_str("queue")?;
        let defined = QUEUE_DURABLE | QUEUE_EXCLUSIVE | QUEUE_AUTO_DELETE | QUEUE_PASSIVE;
        let flags = reader.flags("queue flags", defined)?;
        Ok(QueueDeclare {
            request_id,
            queue,
            durable: flags & QUEUE_DURABLE != 0,
            exclusive: flags & QUEUE_EXCLUSIVE != 0,
            auto_delete: flags & QUEUE_AUTO_DELETE != 0,
            passive: flags & QUEUE_PASSIVE != 0,
            arguments: Table::decode(reader)?,
        })
    }
}

/// `QueueDeclareOk`: `u32` request id, short-string queue, `u64` message count, `u32` consumer
/// count, `u16` owner shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDeclareOk {
    /// The request being answered.
    pub request_id: u32,
    /// The queue's name (the generated one if the request left it empty).
    pub queue: ShortStr,
    /// Messages ready for delivery.
    pub message_count: u64,
    /// Active consumers.
    pub consumer_count: u32,
    /// The shard that owns the queue: a client that connects to that shard's port
    /// ([`Welcome::shard_ports`]) publishes to and consumes from the queue without a cross-shard
    /// hop.
    pub owner_shard: u16,
}

impl Payload for QueueDeclareOk {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u32_le(self.request_id);
        put_short_str(dst, &self.queue);
        dst.put_u64_le(self.message_count);
        dst.put_u32_le(self.consumer_count);
        dst.put_u16_le(self.owner_shard);
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        Ok(QueueDeclareOk {
            request_id: reader.u32("request id")?,
            queue: reader.short_str("queue")?,
            message_count: reader.u64("message count")?,
            consumer_count: reader.u32("consumer count")?,
            owner_shard: reader.u16("owner shard")?,
        })
    }
}

const QUEUE_DELETE_IF_UNUSED: u8 = 1 << 0;
const QUEUE_DELETE_IF_EMPTY: u8 = 1 << 1;

/// `QueueDelete`: `u32` request id, short-string queue, `u8` flags (bit 0 if-unused, bit 1
/// if-empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDelete {
    /// Echoed in the reply.
    pub request_id: u32,
    /// The queue's name.
    pub queue: ShortStr,
    /// Fail with precondition-failed if the queue has consumers.
    pub if_unused: bool,
    /// Fail with precondition-failed if the queue has messages.
    pub if_empty: bool,
}

impl Payload for QueueDelete {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u32_le(self.request_id);
        put_short_str(dst, &self.queue);
        let mut flags = 0;
        flags |= if self.if_unused {
            QUEUE_DELETE_IF_UNUSED
        } else {
            0
        };
        flags |= if self.if_empty {
            QUEUE_DELETE_IF_EMPTY
        } else {
            0
        };
        dst.put_u8(flags);
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        let request_id = reader.u32("request id")?;
        let queue = reader.short_str("queue")?;
        let defined = QUEUE_DELETE_IF_UNUSED | QUEUE_DELETE_IF_EMPTY;
        let flags = reader.flags("queue delete flags", defined)?;
        Ok(QueueDelete {
            request_id,
            queue,
            if_unused: flags & QUEUE_DELETE_IF_UNUSED != 0,
            if_empty: flags & QUEUE_DELETE_IF_EMPTY != 0,
        })
    }
}

/// `QueueDeleteOk` and `QueuePurgeOk` share this layout: `u32` request id, `u64` message count.
macro_rules! count_reply_frame {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            /// The request being answered.
            pub request_id: u32,
            /// Messages removed.
            pub message_count: u64,
        }

        impl Payload for $name {
            fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
                dst.put_u32_le(self.request_id);
                dst.put_u64_le(self.message_count);
                Ok(())
            }

            fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
                Ok($name {
                    request_id: reader.u32("request id")?,
                    message_count: reader.u64("message count")?,
                })
            }
        }
    };
}

count_reply_frame!(
    /// `QueueDeleteOk`: `u32` request id, `u64` messages deleted with the queue.
    QueueDeleteOk
);

/// `QueuePurge`: `u32` request id, short-string queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuePurge {
    /// Echoed in the reply.
    pub request_id: u32,
    /// The queue's name.
    pub queue: ShortStr,
}

impl Payload for QueuePurge {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u32_le(self.request_id);
        put_short_str(dst, &self.queue);
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        Ok(QueuePurge {
            request_id: reader.u32("request id")?,
            queue: reader.short_str("queue")?,
        })
    }
}

count_reply_frame!(
    /// `QueuePurgeOk`: `u32` request id, `u64` messages purged.
    QueuePurgeOk
);

/// Declares a binding frame: `u32` request id, short-string queue, short-string exchange,
/// short-string routing key, argument table. `QueueBind` and `QueueUnbind` share it; an unbind
/// names the binding by all four fields.
macro_rules! binding_frame {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $name {
            /// Echoed in the reply.
            pub request_id: u32,
            /// The bound queue.
            pub queue: ShortStr,
            /// The exchange routing into it.
            pub exchange: ShortStr,
            /// The binding key (direct, topic); ignored by fanout and headers exchanges.
            pub routing_key: ShortStr,
            /// Headers-exchange match arguments (`x-match` and the header values), or
            /// extensions.
            pub arguments: Table,
        }

        impl Payload for $name {
            fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
                dst.put_u32_le(self.request_id);
                put_short_str(dst, &self.queue);
                put_short_str(dst, &self.exchange);
                put_short_str(dst, &self.routing_key);
                self.arguments.encode(dst)
            }

            fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
                Ok($name {
                    request_id: reader.u32("request id")?,
                    queue: reader.short_str("queue")?,
                    exchange: reader.short_str("exchange")?,
                    routing_key: reader.short_str("routing key")?,
                    arguments: Table::decode(reader)?,
                })
            }
        }
    };
}

binding_frame!(
    /// `QueueBind`: `u32` request id, short-string queue, short-string exchange, short-string
    /// routing key, argument table.
    QueueBind
);

binding_frame!(
    /// `QueueUnbind`: the same fields as `QueueBind`.
    QueueUnbind
);

request_id_frame!(
    /// `QueueBindOk`: `u32` request id.
    QueueBindOk
);

request_id_frame!(
    /// `QueueUnbindOk`: `u32` request id.
    QueueUnbindOk
);

// Publish frames.

const PUBLISH_MANDATORY: u8 = 1 << 0;

/// The smallest encoded message in a batch: an empty routing key and an empty body prefix.
const PUBLISH_MESSAGE_SIZE_MIN: usize = 1 + 4;

/// One message of a [`Publish`] batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishMessage {
    /// The routing key.
    pub routing_key: ShortStr,
    /// The encoded body ([`crate::body`]), validated by the broker with
    /// [`crate::body::Body::parse`].
    pub body: Bytes,
}

/// `Publish`: short-string exchange, `u8` flags (bit 0 mandatory), `u8` durability, `u16` count,
/// then per message a short-string routing key and a `u32`-prefixed body. The messages take the
/// connection's next sequence numbers in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// The target exchange; empty is the default exchange (routes by queue name).
    pub exchange: ShortStr,
    /// Return messages that match no queue instead of dropping them.
    pub mandatory: bool,
    /// The durability the confirm waits for.
    pub durability: Durability,
    /// At least one, at most [`PUBLISH_BATCH_COUNT_MAX`] messages.
    pub messages: Vec<PublishMessage>,
}

impl Payload for Publish {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        if self.messages.is_empty() {
            return Err(Error::EncodeOverLimit {
                field: "publish batch",
                length: 0,
                limit: 1,
            });
        }
        put_short_str(dst, &self.exchange);
        dst.put_u8(if self.mandatory { PUBLISH_MANDATORY } else { 0 });
        dst.put_u8(self.durability as u8);
        put_count(
            dst,
            self.messages.len(),
            "publish batch count",
            PUBLISH_BATCH_COUNT_MAX,
        )?;
        for message in &self.messages {
            put_short_str(dst, &message.routing_key);
            put_long_bytes(dst, &message.body, "body", usize::MAX)?;
        }
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        let exchange = reader.short_str("exchange")?;
        let mandatory = reader.flags("publish flags", PUBLISH_MANDATORY)? & PUBLISH_MANDATORY != 0;
        let durability_offset = reader.position();
        let durability = reader.u8("durability")?;
        let durability = Durability::from_wire(durability.into(), durability_offset, "durability")?;
        let count_offset = reader.position();
        let count = reader.count("publish batch count", PUBLISH_BATCH_COUNT_MAX)?;
        if count == 0 {
            return Err(Error::BadValue {
                offset: count_offset,
                field: "publish batch count",
                value: 0,
            });
        }
        let mut messages =
            Vec::with_capacity(capacity_for(count, reader, PUBLISH_MESSAGE_SIZE_MIN));
        for _ in 0..count {
            messages.push(PublishMessage {
                routing_key: reader.short_str("routing key")?,
                body: reader.long_bytes("body", usize::MAX)?,
            });
        }
        Ok(Publish {
            exchange,
            mandatory,
            durability,
            messages,
        })
    }
}

/// `Confirm`: `u64` first sequence, `u64` last sequence, `u8` status (`0` stored, `1`
/// unroutable, `2` rejected), `u16` detail (stored: the durability reached; unroutable: `0`;
/// rejected: an error code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confirm {
    /// First sequence number covered.
    pub first: u64,
    /// Last sequence number covered (inclusive, `first <= last`).
    pub last: u64,
    /// The outcome for every message in the range.
    pub status: ConfirmStatus,
}

impl Payload for Confirm {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        if self.first == 0 || self.first > self.last {
            return Err(Error::EncodeOverLimit {
                field: "confirm first sequence",
                length: self.first,
                limit: self.last,
            });
        }
        dst.put_u64_le(self.first);
        dst.put_u64_le(self.last);
        let (status, detail) = match self.status {
            ConfirmStatus::Stored(level) => (CONFIRM_STORED, level as u16),
            ConfirmStatus::Unroutable => (CONFIRM_UNROUTABLE, 0),
            ConfirmStatus::Rejected(code) => (CONFIRM_REJECTED, code.0),
        };
        dst.put_u8(status);
        dst.put_u16_le(detail);
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        let first_offset = reader.position();
        let first = reader.u64("first sequence")?;
        let last = reader.u64("last sequence")?;
        if first == 0 || first > last {
            return Err(Error::BadValue {
                offset: first_offset,
                field: "first sequence",
                value: first,
            });
        }
        let status_offset = reader.position();
        let status = reader.u8("confirm status")?;
        let detail_offset = reader.position();
        let detail = reader.u16("confirm detail")?;
        let status = match status {
            CONFIRM_STORED => ConfirmStatus::Stored(Durability::from_wire(
                detail.into(),
                detail_offset,
                "confirm durability",
            )?),
            CONFIRM_UNROUTABLE if detail == 0 => ConfirmStatus::Unroutable,
            CONFIRM_UNROUTABLE => {
                let value = u64::from(detail);
                return Err(Error::BadValue {
                    offset: detail_offset,
                    field: "confirm detail",
                    value,
                });
            }
            CONFIRM_REJECTED => ConfirmStatus::Rejected(ErrorCode(detail)),
            value => {
                let value = u64::from(value);
                return Err(Error::BadValue {
                    offset: status_offset,
                    field: "confirm status",
                    value,
                });
            }
        };
        Ok(Confirm {
            first,
            last,
            status,
        })
    }
}

/// `Return`: `u64` sequence, `u16` code, short-string exchange, short-string routing key,
/// `u32`-prefixed body. Sent before the `Confirm` that covers the same sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Return {
    /// The returned message's publish sequence number.
    pub sequence: u64,
    /// Why it came back ([`ErrorCode::UNROUTABLE`]).
    pub code: ErrorCode,
    /// The exchange it was published to.
    pub exchange: ShortStr,
    /// Its routing key.
    pub routing_key: ShortStr,
    /// Its body, unchanged.
    pub body: Bytes,
}

impl Payload for Return {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u64_le(self.sequence);
        dst.put_u16_le(self.code.0);
        put_short_str(dst, &self.exchange);
        put_short_str(dst, &self.routing_key);
        put_long_bytes(dst, &self.body, "body", usize::MAX)
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        Ok(Return {
            sequence: reader.u64("sequence")?,
            code: ErrorCode(reader.u16("code")?),
            exchange: reader.short_str("exchange")?,
            routing_key: reader.short_str("routing key")?,
            body: reader.long_bytes("body", usize::MAX)?,
        })
    }
}

/// `Blocked`: `u16` code (why), short-string reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// The resource condition, for example [`ErrorCode::DISK_LOW`].
    pub code: ErrorCode,
    /// Human-readable detail.
    pub reason: ShortStr,
}

impl Payload for Blocked {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u16_le(self.code.0);
        put_short_str(dst, &self.reason);
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        Ok(Blocked {
            code: ErrorCode(reader.u16("code")?),
            reason: reader.short_str("reason")?,
        })
    }
}

empty_frame!(
    /// `Unblocked`: empty payload.
    Unblocked
);

// Consume frames.

const CONSUME_EXCLUSIVE: u8 = 1 << 0;

/// `Consume`: `u32` request id, short-string queue, short-string consumer tag (empty: the server
/// generates one), `u32` prefetch (`0`: the server's maximum), `u8` flags (bit 0 exclusive),
/// argument table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consume {
    /// Echoed in the reply.
    pub request_id: u32,
    /// The queue to read.
    pub queue: ShortStr,
    /// The client's label for this consumer, unique on the connection.
    pub consumer_tag: ShortStr,
    /// Deliveries that may await an ack at once.
    pub prefetch: u32,
    /// Refuse other consumers on the queue while this one exists.
    pub exclusive: bool,
    /// Extension arguments (consumer priority, ...).
    pub arguments: Table,
}

impl Payload for Consume {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u32_le(self.request_id);
        put_short_str(dst, &self.queue);
        put_short_str(dst, &self.consumer_tag);
        dst.put_u32_le(self.prefetch);
        dst.put_u8(if self.exclusive { CONSUME_EXCLUSIVE } else { 0 });
        self.arguments.encode(dst)
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        Ok(Consume {
            request_id: reader.u32("request id")?,
            queue: reader.short_str("queue")?,
            consumer_tag: reader.short_str("consumer tag")?,
            prefetch: reader.u32("prefetch")?,
            exclusive: reader.flags("consume flags", CONSUME_EXCLUSIVE)? != 0,
            arguments: Table::decode(reader)?,
        })
    }
}

/// `ConsumeOk`: `u32` request id, `u32` consumer id, short-string consumer tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumeOk {
    /// The request being answered.
    pub request_id: u32,
    /// The id deliveries carry; unique on the connection while the consumer lives.
    pub consumer_id: u32,
    /// The tag (the generated one if the request left it empty).
    pub consumer_tag: ShortStr,
}

impl Payload for ConsumeOk {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u32_le(self.request_id);
        dst.put_u32_le(self.consumer_id);
        put_short_str(dst, &self.consumer_tag);
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        Ok(ConsumeOk {
            request_id: reader.u32("request id")?,
            consumer_id: reader.u32("consumer id")?,
            consumer_tag: reader.short_str("consumer tag")?,
        })
    }
}

/// `Cancel` and `CancelOk` share this layout: `u32` request id, `u32` consumer id.
macro_rules! consumer_request_frame {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            /// The request id.
            pub request_id: u32,
            /// The consumer concerned.
            pub consumer_id: u32,
        }

        impl Payload for $name {
            fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
                dst.put_u32_le(self.request_id);
                dst.put_u32_le(self.consumer_id);
                Ok(())
            }

            fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
                Ok($name {
                    request_id: reader.u32("request id")?,
                    consumer_id: reader.u32("consumer id")?,
                })
            }
        }
    };
}

consumer_request_frame!(
    /// `Cancel`: `u32` request id, `u32` consumer id. Unacked deliveries stay outstanding.
    Cancel
);

consumer_request_frame!(
    /// `CancelOk`: `u32` request id, `u32` consumer id. No delivery for it follows.
    CancelOk
);

/// `CancelNotice`: `u32` consumer id, `u16` code, short-string reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelNotice {
    /// The consumer the server ended.
    pub consumer_id: u32,
    /// Why, for example [`ErrorCode::QUEUE_DELETED`].
    pub code: ErrorCode,
    /// Human-readable detail.
    pub reason: ShortStr,
}

impl Payload for CancelNotice {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u32_le(self.consumer_id);
        dst.put_u16_le(self.code.0);
        put_short_str(dst, &self.reason);
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        Ok(CancelNotice {
            consumer_id: reader.u32("consumer id")?,
            code: ErrorCode(reader.u16("code")?),
            reason: reader.short_str("reason")?,
        })
    }
}

const DELIVER_REDELIVERED: u8 = 1 << 0;

/// The fixed fields of `Deliver` before its names: consumer id, tag, count and flags.
const DELIVER_FIXED_SIZE: usize = 4 + 8 + 4 + 1;

/// `Deliver`: `u32` consumer id, `u64` delivery tag, `u32` delivery count, `u8` flags (bit 0
/// redelivered), short-string exchange, short-string routing key, `u32`-prefixed body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deliver {
    /// The consumer this delivery is for.
    pub consumer_id: u32,
    /// Connection-scoped, increasing from 1; named by acks.
    pub delivery_tag: u64,
    /// How many times this message has been delivered, this delivery included.
    pub delivery_count: u32,
    /// The message was delivered before (requeued, or its consumer's connection died).
    pub redelivered: bool,
    /// The exchange it was published to.
    pub exchange: ShortStr,
    /// Its routing key.
    pub routing_key: ShortStr,
    /// The body exactly as published.
    pub body: Bytes,
}

impl Payload for Deliver {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u32_le(self.consumer_id);
        dst.put_u64_le(self.delivery_tag);
        dst.put_u32_le(self.delivery_count);
        dst.put_u8(if self.redelivered {
            DELIVER_REDELIVERED
        } else {
            0
        });
        put_short_str(dst, &self.exchange);
        put_short_str(dst, &self.routing_key);
        put_long_bytes(dst, &self.body, "body", usize::MAX)
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        Ok(Deliver {
            consumer_id: reader.u32("consumer id")?,
            delivery_tag: reader.u64("delivery tag")?,
            delivery_count: reader.u32("delivery count")?,
            redelivered: reader.flags("deliver flags", DELIVER_REDELIVERED)? != 0,
            exchange: reader.short_str("exchange")?,
            routing_key: reader.short_str("routing key")?,
            body: reader.long_bytes("body", usize::MAX)?,
        })
    }
}

impl Deliver {
    /// Appends this frame without its body bytes: the header and every field up to and including
    /// the body's length prefix, and returns the whole frame's size. Writing these bytes and then
    /// [`Deliver::body`] (with vectored I/O, for example) puts exactly [`Frame::encode`]'s bytes
    /// on the wire without copying the body into the send buffer.
    pub fn encode_head(&self, dst: &mut BytesMut, frame_size_max: u32) -> Result<usize, Error> {
        let names_size = 1 + self.exchange.len() + 1 + self.routing_key.len();
        let head_size = FRAME_HEADER_SIZE + DELIVER_FIXED_SIZE + names_size + 4;
        let frame_size = head_size as u64 + self.body.len() as u64;
        if frame_size > u64::from(frame_size_max) {
            return Err(Error::FrameTooLarge {
                size: frame_size,
                limit: frame_size_max,
            });
        }

        dst.put_u32_le((frame_size - FRAME_HEADER_SIZE as u64) as u32);
        dst.put_u16_le(opcode::DELIVER);
        dst.put_u16_le(0);
        dst.put_u32_le(self.consumer_id);
        dst.put_u64_le(self.delivery_tag);
        dst.put_u32_le(self.delivery_count);
        dst.put_u8(if self.redelivered {
            DELIVER_REDELIVERED
        } else {
            0
        });
        put_short_str(dst, &self.exchange);
        put_short_str(dst, &self.routing_key);
        dst.put_u32_le(self.body.len() as u32);
        Ok(frame_size as usize)
    }
}

const ACK_MULTIPLE: u8 = 1 << 0;
const NACK_REQUEUE: u8 = 1 << 1;

/// `Ack`: `u64` delivery tag, `u8` flags (bit 0 multiple: every outstanding tag up to this one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The delivery acknowledged.
    pub delivery_tag: u64,
    /// Also acknowledge every outstanding delivery with a smaller tag.
    pub multiple: bool,
}

impl Payload for Ack {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u64_le(self.delivery_tag);
        dst.put_u8(if self.multiple { ACK_MULTIPLE } else { 0 });
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        Ok(Ack {
            delivery_tag: reader.u64("delivery tag")?,
            multiple: reader.flags("ack flags", ACK_MULTIPLE)? != 0,
        })
    }
}

/// `Nack`: `u64` delivery tag, `u8` flags (bit 0 multiple, bit 1 requeue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nack {
    /// The delivery refused.
    pub delivery_tag: u64,
    /// Also refuse every outstanding delivery with a smaller tag.
    pub multiple: bool,
    /// Put the messages back in their original place; otherwise drop or dead-letter them.
    pub requeue: bool,
}

impl Payload for Nack {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u64_le(self.delivery_tag);
        let mut flags = 0;
        flags |= if self.multiple { ACK_MULTIPLE } else { 0 };
        flags |= if self.requeue { NACK_REQUEUE } else { 0 };
        dst.put_u8(flags);
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        let delivery_tag = reader.u64("delivery tag")?;
        let flags = reader.flags("nack flags", ACK_MULTIPLE | NACK_REQUEUE)?;
        Ok(Nack {
            delivery_tag,
            multiple: flags & ACK_MULTIPLE != 0,
            requeue: flags & NACK_REQUEUE != 0,
        })
    }
}

/// `Reject`: `u64` delivery tag, `u8` flags (bit 1 requeue; bit 0 is reserved because a reject
/// is always single, and the requeue bit sits where `Nack` has it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The delivery refused.
    pub delivery_tag: u64,
    /// Put the message back in its original place; otherwise drop or dead-letter it.
    pub requeue: bool,
}

impl Payload for Reject {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u64_le(self.delivery_tag);
        dst.put_u8(if self.requeue { NACK_REQUEUE } else { 0 });
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        Ok(Reject {
            delivery_tag: reader.u64("delivery tag")?,
            requeue: reader.flags("reject flags", NACK_REQUEUE)? != 0,
        })
    }
}

// Stats frames.

request_id_frame!(
    /// `Stats`: `u32` request id.
    Stats
);

/// `StatsOk`: `u32` request id, `u16` count, then per counter a short-string name and a `u64`
/// value. Counter names are the broker's (documented in its README); the protocol fixes only the
/// shape, so adding a counter never changes the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsOk {
    /// The request being answered.
    pub request_id: u32,
    /// Counter name and value pairs.
    pub counters: Vec<(ShortStr, u64)>,
}

impl Payload for StatsOk {
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<(), Error> {
        dst.put_u32_le(self.request_id);
        put_count(
            dst,
            self.counters.len(),
            "counter count",
            STATS_ENTRY_COUNT_MAX,
        )?;
        for (name, value) in &self.counters {
            put_short_str(dst, name);
            dst.put_u64_le(*value);
        }
        Ok(())
    }

    fn decode_payload(reader: &mut Reader) -> Result<Self, Error> {
        let request_id = reader.u32("request id")?;
        let count = reader.count("counter count", STATS_ENTRY_COUNT_MAX)?;
        let mut counters = Vec::with_capacity(capacity_for(count, reader, 1 + 8));
        for _ in 0..count {
            counters.push((
                reader.short_str("counter name")?,
                reader.u64("counter value")?,
            ));
        }
        Ok(StatsOk {
            request_id,
            counters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(body: &'static [u8]) -> Deliver {
        Deliver {
            consumer_id: 3,
            delivery_tag: 99,
            delivery_count: 2,
            redelivered: true,
            exchange: ShortStr::from_static("orders"),
            routing_key: ShortStr::from_static("order.eu.created"),
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn a_delivery_head_followed_by_its_body_is_the_whole_frame() {
        let deliver = deliver(b"\x01\x00\x00payload");
        let mut head = BytesMut::new();
        let size = deliver.encode_head(&mut head, u32::MAX).unwrap();
        head.extend_from_slice(&deliver.body);
        let mut whole = BytesMut::new();
        assert_eq!(
            Frame::Deliver(deliver).encode(&mut whole, u32::MAX),
            Ok(size)
        );
        assert_eq!(head, whole);
    }

    #[test]
    fn a_delivery_head_counts_the_body_against_the_frame_limit() {
        let deliver = deliver(&[0; 100]);
        let mut head = BytesMut::new();
        let error = deliver.encode_head(&mut head, 100).unwrap_err();
        assert!(matches!(error, Error::FrameTooLarge { limit: 100, .. }));
        assert!(head.is_empty());
    }

    #[test]
    fn the_peek_of_a_short_buffer_is_none() {
        assert_eq!(FrameHeader::peek(&[1, 0, 0, 0, 3, 0, 0]), None);
        let header = FrameHeader::peek(&[1, 0, 0, 0, 3, 0, 0, 0]).unwrap();
        assert_eq!(
            header,
            FrameHeader {
                length: 1,
                opcode: opcode::HEARTBEAT,
                flags: 0
            }
        );
        assert_eq!(header.frame_size(), 9);
    }
}
