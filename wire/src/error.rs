//! The numbered error codes of the protocol and the crate's one error type.
//!
//! [`ErrorCode`] is what travels on the wire (in `ErrorReply`, `Close`, `Confirm`, `Return`,
//! `Blocked` and `CancelNotice` frames). Codes are fixed numbers grouped by hundreds and never
//! reused; a retired code stays reserved. A peer must accept codes it does not know: [`ErrorCode`]
//! is an open newtype, not a closed enum, so an older client still decodes a newer broker's frames
//! and can fall back on the group ([`ErrorCode::group`]).
//!
//! [`Error`] is what this crate returns: every decode failure carries the byte offset (from the
//! start of the frame, or of the message body for body errors) and the field that was expected, so
//! a log line points at the exact byte. [`Error::code`] maps each failure to the code to send.

use std::fmt;

/// A protocol error code: a fixed `u16` listed in `PROTOCOL.md` section "Error codes".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u16);

/// One row of the code table: the code, its name, and whether the connection is closed.
struct CodeInfo {
    code: ErrorCode,
    name: &'static str,
    closes_connection: bool,
}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $constant:ident = $value:literal, $name:literal, $closes:literal; )*) => {
        impl ErrorCode {
            $( $(#[$doc])* pub const $constant: ErrorCode = ErrorCode($value); )*
        }

        /// Every code this version defines, in ascending order (checked by a unit test).
        const CODE_TABLE: &[CodeInfo] = &[
            $( CodeInfo { code: ErrorCode($value), name: $name, closes_connection: $closes }, )*
        ];
    };
}

error_codes! {
    /// Orderly close: not an error. Used only in `Close`.
    NORMAL_CLOSE = 0, "normal-close", true;

    /// A frame could not be decoded (short field, bad length, bad value, trailing bytes).
    MALFORMED_FRAME = 100, "malformed-frame", true;
    /// A frame's length exceeds the negotiated (or pre-handshake) maximum frame size.
    FRAME_TOO_LARGE = 101, "frame-too-large", true;
    /// The opcode is not defined by the negotiated protocol version.
    UNKNOWN_OPCODE = 102, "unknown-opcode", true;
    /// A known frame arrived in a state that does not allow it (for example before the handshake,
    /// or a server-to-client frame sent by a client).
    UNEXPECTED_FRAME = 103, "unexpected-frame", true;
    /// No protocol version is common to the client's range and the server's.
    UNSUPPORTED_VERSION = 104, "unsupported-version", true;
    /// The client did not complete the handshake in time.
    HANDSHAKE_TIMEOUT = 105, "handshake-timeout", true;
    /// Nothing arrived from the peer for the missed-heartbeat limit.
    MISSED_HEARTBEATS = 106, "missed-heartbeats", true;
    /// A requested handshake value is outside what the server accepts.
    INVALID_HANDSHAKE = 107, "invalid-handshake", true;

    /// The credentials were rejected.
    BAD_CREDENTIALS = 200, "bad-credentials", true;
    /// The authentication mechanism is not offered by the server.
    UNSUPPORTED_MECHANISM = 201, "unsupported-mechanism", true;
    /// The authenticated user may not perform this operation on this resource.
    ACCESS_REFUSED = 202, "access-refused", false;

    /// The named exchange does not exist.
    EXCHANGE_NOT_FOUND = 300, "exchange-not-found", false;
    /// The named queue does not exist.
    QUEUE_NOT_FOUND = 301, "queue-not-found", false;
    /// A redeclare differs from the existing entity, or an `if-unused` / `if-empty` condition
    /// failed.
    PRECONDITION_FAILED = 302, "precondition-failed", false;
    /// The queue is exclusive to another connection.
    EXCLUSIVE_LOCKED = 303, "exclusive-locked", false;
    /// A name is empty where a name is required, uses a reserved prefix, or is otherwise invalid.
    INVALID_NAME = 304, "invalid-name", false;
    /// An argument table entry has an unknown key, a wrong type or a value out of range.
    INVALID_ARGUMENT = 305, "invalid-argument", false;

    /// A mandatory message matched no queue (`Return` reason).
    UNROUTABLE = 400, "unroutable", false;
    /// The client published past the negotiated maximum of unconfirmed messages.
    TOO_MANY_UNCONFIRMED = 401, "too-many-unconfirmed", true;
    /// A message body failed validation (`Confirm` rejection reason).
    INVALID_BODY = 402, "invalid-body", false;
    /// The journal failed to store the message (`Confirm` rejection reason).
    STORAGE_FAILED = 403, "storage-failed", false;
    /// A target queue refused the message, for example at its maximum length (`Confirm` rejection
    /// reason).
    QUEUE_REFUSED = 404, "queue-refused", false;

    /// An ack, nack or reject named a delivery tag that is not outstanding.
    UNKNOWN_DELIVERY_TAG = 500, "unknown-delivery-tag", true;
    /// A cancel named a consumer that does not exist on this connection.
    UNKNOWN_CONSUMER = 501, "unknown-consumer", false;
    /// A consume asked for more prefetch than the server's maximum.
    PREFETCH_TOO_LARGE = 502, "prefetch-too-large", false;
    /// The queue a consumer was reading was deleted (`CancelNotice` reason).
    QUEUE_DELETED = 503, "queue-deleted", false;
    /// The consumer tag is already used on this connection.
    CONSUMER_TAG_IN_USE = 504, "consumer-tag-in-use", false;

    /// The server refuses more connections.
    TOO_MANY_CONNECTIONS = 600, "too-many-connections", true;
    /// Free disk space is below the server's limit (`Blocked` and rejection reason).
    DISK_LOW = 601, "disk-low", false;
    /// Memory use is above the server's limit (`Blocked` reason).
    MEMORY_LOW = 602, "memory-low", false;
    /// A server-side count limit (queues, consumers, bindings) was reached.
    LIMIT_EXCEEDED = 603, "limit-exceeded", false;

    /// A bug or an unexpected failure in the server.
    INTERNAL_ERROR = 900, "internal-error", true;
    /// The server is shutting down.
    SHUTTING_DOWN = 901, "shutting-down", true;
    /// The operation is defined by the protocol but not implemented by this server.
    NOT_IMPLEMENTED = 902, "not-implemented", false;
}

impl ErrorCode {
    fn info(self) -> Option<&'static CodeInfo> {
        CODE_TABLE.iter().find(|info| info.code == self)
    }

    /// The kebab-case name from the spec, or `None` for a code this version does not define.
    pub fn name(self) -> Option<&'static str> {
        self.info().map(|info| info.name)
    }

    /// Whether this version of the protocol defines the code.
    pub fn is_known(self) -> bool {
        self.info().is_some()
    }

    /// Whether the server closes the connection after reporting this code. An unknown code is
    /// treated as closing, the safe reading for a peer that cannot tell.
    pub fn closes_connection(self) -> bool {
        self.info().is_none_or(|info| info.closes_connection)
    }

    /// The hundreds group (`1` framing and handshake, `2` authentication, `3` topology, `4`
    /// publish, `5` consume, `6` resources, `9` internal).
    pub fn group(self) -> u16 {
        self.0 / 100
    }

    /// Every code this version defines, ascending.
    pub fn all() -> impl Iterator<Item = ErrorCode> {
        CODE_TABLE.iter().map(|info| info.code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{} ({name})", self.0),
            None => write!(f, "{} (unknown)", self.0),
        }
    }
}

/// Which side of a connection a [`crate::connection::Connection`] plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The application side: sends `Hello`, publishes, consumes.
    Client,
    /// The broker side: answers `Hello` with `Welcome`, confirms, delivers.
    Server,
}

/// Everything that can go wrong in this crate: decoding, encoding, and protocol state.
///
/// The fields mean the same in every variant: `offset` is the byte offset of the failing field
/// from the start of the frame (or body), `field` names what was expected there, `length` and
/// `limit` are the value read and its bound, `needed` and `available` are byte counts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[allow(missing_docs, reason = "the fields are described once, above")]
pub enum Error {
    /// The input ended inside `field`.
    Truncated {
        offset: usize,
        field: &'static str,
        needed: usize,
        available: usize,
    },
    /// A length field is larger than the limit for `field`; nothing was allocated for it.
    LengthOverLimit {
        offset: usize,
        field: &'static str,
        length: u64,
        limit: u64,
    },
    /// A frame header announces more bytes than the maximum frame size allows.
    FrameTooLarge { size: u64, limit: u32 },
    /// The frame header carries an opcode this version does not define.
    UnknownOpcode { offset: usize, opcode: u16 },
    /// An enumerated field, boolean or flag byte holds a value outside its defined set.
    BadValue {
        offset: usize,
        field: &'static str,
        value: u64,
    },
    /// A text field is not valid UTF-8.
    InvalidUtf8 { offset: usize, field: &'static str },
    /// A frame or body has bytes after its last field.
    TrailingBytes { offset: usize, count: usize },
    /// A value cannot be encoded because it exceeds the limit of its field.
    EncodeOverLimit {
        field: &'static str,
        length: u64,
        limit: u64,
    },
    /// A frame is not allowed in the connection's current state or direction.
    UnexpectedFrame {
        role: Role,
        state: &'static str,
        opcode: u16,
        sending: bool,
    },
    /// The handshake did not complete before its deadline.
    HandshakeTimeout,
    /// Nothing arrived from the peer within the missed-heartbeat limit.
    MissedHeartbeats,
    /// A confirm or return does not fit the publish sequence numbers handed out so far.
    SequenceMismatch {
        first: u64,
        last: u64,
        confirmed: u64,
        published: u64,
    },
    /// Publishing `count` more messages would exceed the negotiated unconfirmed limit.
    TooManyUnconfirmed {
        unconfirmed: u64,
        count: u64,
        limit: u32,
    },
    /// The handshake could not be completed; the code says why.
    Handshake { code: ErrorCode },
}

impl Error {
    /// The wire code to report this error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Truncated { .. }
            | Error::LengthOverLimit { .. }
            | Error::BadValue { .. }
            | Error::InvalidUtf8 { .. }
            | Error::TrailingBytes { .. }
            | Error::EncodeOverLimit { .. }
            | Error::SequenceMismatch { .. } => ErrorCode::MALFORMED_FRAME,
            Error::FrameTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            Error::UnknownOpcode { .. } => ErrorCode::UNKNOWN_OPCODE,
            Error::UnexpectedFrame { .. } => ErrorCode::UNEXPECTED_FRAME,
            Error::HandshakeTimeout => ErrorCode::HANDSHAKE_TIMEOUT,
            Error::MissedHeartbeats => ErrorCode::MISSED_HEARTBEATS,
            Error::TooManyUnconfirmed { .. } => ErrorCode::TOO_MANY_UNCONFIRMED,
            Error::Handshake { code } => *code,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated {
                offset,
                field,
                needed,
                available,
            } => write!(
                f,
                "truncated {field} at offset {offset}: needed {needed} bytes, {available} left"
            ),
            Error::LengthOverLimit {
                offset,
                field,
                length,
                limit,
            } => write!(
                f,
                "{field} length {length} at offset {offset} exceeds the limit of {limit}"
            ),
            Error::FrameTooLarge { size, limit } => {
                write!(
                    f,
                    "frame of {size} bytes exceeds the maximum frame size of {limit}"
                )
            }
            Error::UnknownOpcode { offset, opcode } => {
                write!(f, "unknown opcode {opcode:#06x} at offset {offset}")
            }
            Error::BadValue {
                offset,
                field,
                value,
            } => {
                write!(f, "bad value {value} for {field} at offset {offset}")
            }
            Error::InvalidUtf8 { offset, field } => {
                write!(f, "{field} at offset {offset} is not valid utf-8")
            }
            Error::TrailingBytes { offset, count } => {
                write!(f, "{count} trailing bytes at offset {offset}")
            }
            Error::EncodeOverLimit {
                field,
                length,
                limit,
            } => {
                write!(
                    f,
                    "cannot encode {field}: {length} exceeds the limit of {limit}"
                )
            }
            Error::UnexpectedFrame {
                role,
                state,
                opcode,
                sending,
            } => {
                let verb = if *sending { "send" } else { "receive" };
                write!(
                    f,
                    "{role:?} may not {verb} opcode {opcode:#06x} in state {state}"
                )
            }
            Error::HandshakeTimeout => write!(f, "handshake not completed before its deadline"),
            Error::MissedHeartbeats => write!(f, "peer silent past the missed-heartbeat limit"),
            Error::SequenceMismatch {
                first,
                last,
                confirmed,
                published,
            } => write!(
                f,
                "sequence range {first}..={last} does not follow confirmed {confirmed} \
                 within published {published}"
            ),
            Error::TooManyUnconfirmed {
                unconfirmed,
                count,
                limit,
            } => write!(
                f,
                "{unconfirmed} unconfirmed plus {count} new exceeds the limit of {limit}"
            ),
            Error::Handshake { code } => write!(f, "handshake failed: {code}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_ascending_and_unique() {
        let codes: Vec<u16> = ErrorCode::all().map(|code| code.0).collect();
        assert!(codes.windows(2).all(|pair| pair[0] < pair[1]), "{codes:?}");
    }

    #[test]
    fn every_code_sits_in_a_documented_group() {
        for code in ErrorCode::all() {
            assert!([0, 1, 2, 3, 4, 5, 6, 9].contains(&code.group()), "{code}");
        }
    }

    #[test]
    fn unknown_codes_are_treated_as_closing() {
        let unknown = ErrorCode(777);
        assert!(!unknown.is_known());
        assert!(unknown.closes_connection());
        assert_eq!(unknown.to_string(), "777 (unknown)");
    }

    #[test]
    fn request_level_codes_keep_the_connection_open() {
        assert!(!ErrorCode::QUEUE_NOT_FOUND.closes_connection());
        assert!(ErrorCode::MALFORMED_FRAME.closes_connection());
    }
}
