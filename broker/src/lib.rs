//! The Ruuster broker: thread-per-core shards that route, store and deliver messages.
//!
//! One glommio executor runs per shard, pinned to a CPU; a shard's state is touched only by its
//! own executor. The modules map to the broker's roles:
//!
//! - [`config`]: the TOML configuration, its defaults and the limits it names.
//! - [`requirements`]: what the host must offer (kernel, io_uring, memlock, O_DIRECT) and the
//!   checks that refuse or warn at start.
//! - [`data_dir`]: the data directory's lock and its metadata file (format version, shard count).
//! - [`metadata`]: the topology (exchanges, queues, bindings, placement) and its file; shard 0
//!   is its only writer.
//! - [`envelope`]: the rkyv archive around a message body on the rings and in the journal.
//! - [`mesh`]: the rings between shards, in a data and a control lane, with outbox tasks.
//! - [`routing`]: exchange types and the immutable routing table each shard reads.
//! - [`control`]: shard 0's control task, which applies topology requests, persists them and
//!   publishes versioned snapshots to every shard.
//! - [`listeners`]: client sockets made with socket2, so that a second broker cannot silently
//!   share the port (glommio's own `bind` always sets `SO_REUSEPORT`).
//! - [`journal`]: the message and settlement records each shard writes to its journal.
//! - [`flow`]: the bounds on every buffer, backpressure, and the memory and free-space alarms
//!   that block publishers.
//! - [`queue`]: one queue's state machine (ready list, unacked deliveries, consumer credit).
//! - [`connection`]: one client connection: handshake, frames, confirms in order, delivery
//!   tags.
//! - [`runtime`]: a shard's data plane: owned queues, journal appends with group commit,
//!   confirms, dispatch to consumers, settlements and replay.
//! - [`users`]: users and salted password hashes for the `PLAIN` handshake.
//! - [`stages`]: per-stage latency histograms (append, written, fsynced, stored, deliver,
//!   settle), reported through the stats request.
//! - [`shard`]: the glommio-specific part: executors, pinning and each shard's accept loop.
//! - [`server`]: start-up order and shutdown, usable in-process by tests.

pub mod config;
pub mod connection;
pub mod control;
pub mod data_dir;
pub mod envelope;
pub mod flow;
pub mod journal;
pub mod listeners;
pub mod mesh;
pub mod metadata;
pub mod queue;
pub mod requirements;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod shard;
pub mod stages;
pub mod users;
