//! An async Rust client (tokio) for the Ruuster broker, speaking the protocol in
//! `wire/PROTOCOL.md` through the sans-IO `ruuster-wire` crate.
//!
//! ```no_run
//! # async fn example() -> Result<(), ruuster_client::ClientError> {
//! use ruuster_client::{Client, ConnectOptions, PublishOptions, QueueOptions};
//!
//! let connection = Client::connect(&ConnectOptions::new("127.0.0.1:5690")).await?;
//! connection.queue_declare("jobs", &QueueOptions::default()).await?;
//! let confirm = connection
//!     .publish("", "jobs", ruuster_client::body(b"hello"), &PublishOptions::default())
//!     .await?;
//! let confirmation = confirm.await?;
//! assert!(confirmation.stored().is_some());
//! connection.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! | Module          | Role                                                                     |
//! |-----------------|--------------------------------------------------------------------------|
//! | `connection`    | [`Client`], [`Connection`]: handshake, the socket's reader and writer    |
//! |                 | tasks, control requests, acks, heartbeats, close                         |
//! | `publish`       | [`Connection::publish_batch`], the window, [`PendingConfirm`]            |
//! | `consumer`      | [`Connection::consume`], [`Consumer`], [`Delivery`]                      |
//! | `options`       | [`ConnectOptions`] and the per-operation options                         |
//! | `error`         | [`ClientError`], the crate's one error type, and [`ServerError`]         |
//!
//! How results are awaited: a control request (declare, bind, consume, ...) is an `async fn`
//! resolving to its reply or to [`ClientError::Server`] with the server's code; requests from
//! concurrent tasks pipeline on the connection. A publish resolves once its frames are queued
//! and yields a [`PendingConfirm`], itself a future resolving to the batch's [`Confirmation`].
//! A consumer is read with [`Consumer::recv`]; deliveries are settled with [`Delivery::ack`] and
//! friends, or by tag on the connection.
//!
//! Cancellation: a control request whose future is dropped after it was sent still takes effect
//! on the server; its reply is discarded (and a consumer nobody waits for is cancelled at once).
//! A publish dropped before it returns publishes nothing.
//!
//! Cost: the client's own CPU time per published 1 KiB message in batches of 64, measured by
//! `cargo run --release -p ruuster-client --example self_bench`, is in the crate's README.md.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod connection;
mod consumer;
mod error;
mod options;
mod publish;

use bytes::Bytes;

pub use connection::{Client, Connection, QueueInfo};
pub use consumer::{Consumer, ConsumerEnd, Delivery};
pub use error::{ClientError, ServerError};
pub use options::{
    CONNECT_TIMEOUT_DEFAULT, ConnectOptions, ConsumeOptions, DEFAULT_ADDRESS, ExchangeOptions,
    HANDSHAKE_TIMEOUT_DEFAULT, PUBLISH_WINDOW_DEFAULT, PublishOptions, QueueOptions,
};
pub use publish::{ConfirmRange, Confirmation, PendingConfirm, ReturnedMessage, RoutingKey};
pub use ruuster_wire::{
    Body, ConfirmStatus, Durability, ErrorCode, ExchangeKind, Properties, ShortStr, Table, Value,
};

/// An encoded message body with no properties around `payload`; use
/// [`Properties::to_body`] to set content type, headers, ids and the rest.
pub fn body(payload: &[u8]) -> Bytes {
    let mut body = bytes::BytesMut::with_capacity(3 + payload.len());
    // No property can fail to encode when there are none, so this cannot fail.
    Properties::default()
        .encode_body(payload, &mut body)
        .expect("an empty property set always encodes");
    body.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_and_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    /// The handles an application spreads over tasks are `Send` (and `Sync` where shared).
    #[test]
    fn handles_can_move_between_tasks_and_threads() {
        send_and_sync::<Connection>();
        send_and_sync::<Delivery>();
        send_and_sync::<ClientError>();
        send_and_sync::<Confirmation>();
        send::<Consumer>();
        send::<PendingConfirm>();
    }

    /// `body` encodes the three-byte prefix (version 1, no properties), then the payload.
    #[test]
    fn a_bare_body_is_the_three_byte_prefix_and_the_payload() {
        let encoded = body(b"hi");
        assert_eq!(&encoded[..], &[1, 0, 0, b'h', b'i']);
        assert_eq!(&Body::parse(encoded).unwrap().payload()[..], b"hi");
    }
}
