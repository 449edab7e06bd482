//! The client's one error type, [`ClientError`], and [`ServerError`], the code and message a server
//! sends when it refuses a request or closes the connection.
//!
//! Errors are `Clone`: when a connection dies, every request, confirm and consumer waiting on it
//! receives the same cause, so an I/O error is shared behind an [`Arc`].

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use ruuster_wire::{Error as WireError, ErrorCode};

/// A numbered error sent by the server, in `ErrorReply`, `Close` or `CancelNotice`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    /// The protocol's fixed number (PROTOCOL.md section 10); unknown codes are kept as sent.
    pub code: ErrorCode,
    /// The server's human-readable detail.
    pub message: String,
}

impl ServerError {
    /// The code's name as the specification writes it, or `"unknown"` for a code this client
    /// version does not know (codes are an open set).
    pub fn name(&self) -> &'static str {
        self.code.name().unwrap_or("unknown")
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.code.0, self.name(), self.message)
    }
}

/// Everything that can go wrong on a connection.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The server refused one request with `ErrorReply`; the connection stays open.
    Server(ServerError),
    /// The server closed the connection with `Close`: a refused handshake (bad credentials,
    /// unsupported version, ...), a fatal error, or an orderly close (code 0) it started.
    ClosedByServer(ServerError),
    /// A socket operation failed, or the server closed the socket without `Close`.
    Io {
        /// What the client was doing: `"connect"`, `"read"`, `"write"`.
        operation: &'static str,
        /// The operating system's error.
        source: Arc<io::Error>,
    },
    /// The server sent something the protocol forbids, as the wire crate detected it.
    Protocol(WireError),
    /// The server broke a rule above the wire crate's checks (a reply of the wrong type, a
    /// delivery past the consumer's prefetch, an unknown request id, ...).
    Violation(String),
    /// A frame could not be encoded (a field or the frame over its limit); nothing was sent and
    /// the connection is unaffected.
    Encode(WireError),
    /// An argument the client refuses before sending anything.
    InvalidInput {
        /// The argument.
        field: &'static str,
        /// Why, with the numbers.
        reason: String,
    },
    /// An operation did not finish in time.
    Timeout {
        /// The operation: `"connect"`, `"handshake"`, `"close"`.
        operation: &'static str,
        /// The bound that passed.
        after: Duration,
    },
    /// The server sent nothing for the missed-heartbeat limit (two intervals).
    MissedHeartbeats {
        /// The negotiated heartbeat interval.
        interval: Duration,
    },
    /// The connection was closed by this client ([`crate::Connection::close`] or the last handle
    /// dropped).
    Closed,
}

impl ClientError {
    /// The server's error code, if the server sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(error) | ClientError::ClosedByServer(error) => Some(error.code),
            _ => None,
        }
    }

    pub(crate) fn io(operation: &'static str, source: io::Error) -> ClientError {
        ClientError::Io {
            operation,
            source: Arc::new(source),
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> ClientError {
        ClientError::InvalidInput {
            field,
            reason: reason.into(),
        }
    }

    /// The code to put in the `Close` frame this client sends because of this error, if any.
    pub(crate) fn close_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Protocol(error) => Some(error.code()),
            ClientError::Violation(_) => Some(ErrorCode::UNEXPECTED_FRAME),
            ClientError::MissedHeartbeats { .. } => Some(ErrorCode::MISSED_HEARTBEATS),
            ClientError::Closed => Some(ErrorCode::NORMAL_CLOSE),
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Server(error) => write!(f, "server refused the request: {error}"),
            ClientError::ClosedByServer(error) => {
                write!(f, "server closed the connection: {error}")
            }
            ClientError::Io { operation, source } => write!(f, "{operation} failed: {source}"),
            ClientError::Protocol(error) => write!(f, "protocol violation by the server: {error}"),
            ClientError::Violation(detail) => {
                write!(f, "protocol violation by the server: {detail}")
            }
            ClientError::Encode(error) => write!(f, "cannot encode the frame: {error}"),
            ClientError::InvalidInput { field, reason } => write!(f, "invalid {field}: {reason}"),
            ClientError::Timeout { operation, after } => {
                write!(
                    f,
                    "{operation} did not complete within {} ms",
                    after.as_millis()
                )
            }
            ClientError::MissedHeartbeats { interval } => write!(
                f,
                "server silent for two heartbeat intervals of {} ms",
                interval.as_millis()
            ),
            ClientError::Closed => write!(f, "connection closed by the client"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io { source, .. } => Some(source.as_ref()),
            ClientError::Protocol(error) | ClientError::Encode(error) => Some(error),
            _ => None,
        }
    }
}
