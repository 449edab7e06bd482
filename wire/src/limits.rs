//! Named limits of the protocol, each with the reason for its value.
//!
//! Every length and count read from the network is checked against one of these (or against the
//! bytes actually present, whichever is smaller) before anything is allocated for it. The values
//! are part of the protocol: `PROTOCOL.md` section "Limits" lists them, and a peer that exceeds one
//! gets a numbered error, never a panic or unbounded growth.

use std::time::Duration;

/// The protocol version this crate speaks. A `Hello` offers a range; see `PROTOCOL.md`.
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest string with a `u8` length prefix: names, routing keys, tags, short properties.
/// AMQP 0-9-1 uses the same bound, so names move between the two systems unchanged.
pub const SHORT_STR_SIZE_MAX: usize = u8::MAX as usize;

/// Entries in one argument or header table. Bounds the work of a headers-exchange match, which
/// scans the message's headers for every binding, and the size of a table a peer makes us walk.
pub const TABLE_ENTRY_COUNT_MAX: usize = 256;

/// Messages in one `Publish` frame. Bounds the work one frame costs the connection's shard before
/// it reads the next frame, and keeps a batch well inside the unconfirmed limit.
pub const PUBLISH_BATCH_COUNT_MAX: usize = 4096;

/// Shards a `Welcome` may announce. Far above any machine we target (one shard per core) while
/// keeping the port list a client must parse small.
pub const SHARD_COUNT_MAX: usize = 1024;

/// Counters in one `StatsReply`. The broker's counter set is a few dozen names per shard.
pub const STATS_ENTRY_COUNT_MAX: usize = 4096;

/// Credentials in a `Hello`. PLAIN needs two short strings; SCRAM-style messages stay far below.
pub const CREDENTIALS_SIZE_MAX: usize = 4096;

/// The size of the frame header: `u32` length, `u16` opcode, `u16` flags.
pub const FRAME_HEADER_SIZE: usize = 8;

/// The largest frame, header included, either side accepts before the handshake completes. It
/// bounds what an unauthenticated peer can make the server buffer, and fits the largest `Hello`
/// (four short strings and the maximum credentials) and the largest `Welcome` (every shard port).
pub const HANDSHAKE_FRAME_SIZE_MAX: u32 = 16 * 1024;

/// The smallest maximum frame size a connection may negotiate: every control frame with
/// maximum-length names and a small argument table fits in it, so a peer cannot negotiate a size
/// that makes ordinary requests impossible.
pub const FRAME_SIZE_MIN: u32 = 4096;

/// The largest maximum frame size a connection may negotiate. The receive buffer of a connection
/// grows up to this, so it bounds per-connection memory (16 MiB on the machines we target).
pub const FRAME_SIZE_MAX: u32 = 16 * 1024 * 1024;

/// The maximum frame size a server offers when configured with nothing else: room for a batch of
/// small messages or one large message without splitting.
pub const FRAME_SIZE_DEFAULT: u32 = 1024 * 1024;

/// The shortest heartbeat interval a server accepts. Shorter intervals cost more in wakeups than
/// they buy in detection time, and heartbeats cannot be disabled (a silent peer must be detected).
pub const HEARTBEAT_INTERVAL_MIN: Duration = Duration::from_millis(100);

/// The longest heartbeat interval a server accepts: a dead peer is detected within two of them.
pub const HEARTBEAT_INTERVAL_MAX: Duration = Duration::from_secs(600);

/// The heartbeat interval when the client asks for the server's default (`0`).
pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_secs(10);

/// How many heartbeat intervals of silence from the peer close the connection. Two, as AMQP: one
/// interval of slack for a heartbeat delayed behind a large frame or a busy scheduler.
pub const MISSED_HEARTBEATS_MAX: u32 = 2;

/// How long a server waits from accept to a completed handshake. Bounds the time an idle or slow
/// unauthenticated socket holds a connection slot.
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// The longest handshake timeout a [`crate::connection::Connection`] accepts; longer values are
/// clamped to it. Waiting longer only holds a connection slot, and the bound keeps the deadline
/// arithmetic far from `Instant` overflow.
pub const HANDSHAKE_TIMEOUT_MAX: Duration = Duration::from_secs(600);
