//! Options for connecting, declaring, publishing and consuming, each with defaults that work
//! against a broker started with no configuration.

use std::time::Duration;

use ruuster_wire::{Durability, Table};

/// The broker's client port when nothing else is configured.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:5690";

/// How long a TCP connect may take. A loopback or LAN broker answers in microseconds; a few
/// seconds covers a SYN retransmit without hiding a dead host for a minute.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// How long the handshake may take once connected; the server's own limit is 10 s.
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Unconfirmed messages a connection allows itself when the options do not say: the server's
/// `max unconfirmed` still bounds it. 4096 keeps a 1 KiB-message publisher at 4 MiB in flight,
/// enough to cover a group commit of a few milliseconds at a million messages per second.
pub const PUBLISH_WINDOW_DEFAULT: u32 = 4096;

/// How to reach and log in to a broker. Its `Debug` output hides the password.
#[derive(Clone)]
pub struct ConnectOptions {
    /// `host:port` of the broker's client port (or of one shard's port).
    pub address: String,
    /// PLAIN username.
    pub username: String,
    /// PLAIN password.
    pub password: String,
    /// A name for the broker's logs and management view (cut to 255 bytes).
    pub client_name: String,
    /// Requested heartbeat interval; zero takes the server's default (10 s). The server clamps
    /// it to 100 ms .. 600 s.
    pub heartbeat: Duration,
    /// Largest frame this client accepts, header included; `0` takes the server's maximum.
    pub frame_size_max: u32,
    /// Client-side bound on unconfirmed messages; the negotiated `max unconfirmed` caps it.
    pub publish_window: u32,
    /// Bound on the TCP connect.
    pub connect_timeout: Duration,
    /// Bound on the handshake after the TCP connect.
    pub handshake_timeout: Duration,
}

impl ConnectOptions {
    /// Defaults for the broker at `address`.
    pub fn new(address: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            address: address.into(),
            ..ConnectOptions::default()
        }
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("client_name", &self.client_name)
            .field("heartbeat", &self.heartbeat)
            .field("frame_size_max", &self.frame_size_max)
            .field("publish_window", &self.publish_window)
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

impl Default for ConnectOptions {
    /// `127.0.0.1:5690` as `guest`/`guest`, server-chosen heartbeat and frame size.
    fn default() -> ConnectOptions {
        ConnectOptions {
            address: DEFAULT_ADDRESS.to_owned(),
            username: "guest".to_owned(),
            password: "guest".to_owned(),
            client_name: "ruuster-client".to_owned(),
            heartbeat: Duration::ZERO,
            frame_size_max: 0,
            publish_window: PUBLISH_WINDOW_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            handshake_timeout: HANDSHAKE_TIMEOUT_DEFAULT,
        }
    }
}

/// How a batch of messages is published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Return messages that match no queue (in [`crate::Confirmation::returned`]) instead of
    /// dropping them.
    pub mandatory: bool,
    /// The level the confirm waits for; [`Durability::Fsynced`] unless set.
    pub durability: Durability,
}

/// How a queue is declared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueOptions {
    /// Survives a broker restart; its messages are journaled.
    pub durable: bool,
    /// Usable only by this connection and deleted when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer cancels.
    pub auto_delete: bool,
    /// Queue features (`x-max-length`, ...); the server refuses keys it does not implement.
    pub arguments: Table,
}

/// How an exchange is declared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExchangeOptions {
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Extension arguments.
    pub arguments: Table,
}

/// How a consumer subscribes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// Refuse other consumers on the queue while this one exists.
    pub exclusive: bool,
    /// Extension arguments (consumer priority, ...).
    pub arguments: Table,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logging the options with `{:?}` shows the username but not the password.
    #[test]
    fn debug_output_never_shows_the_password() {
        let options = ConnectOptions {
            password: "s3cret-value".to_owned(),
            ..ConnectOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("s3cret-value"), "{shown}");
        assert!(shown.contains("guest"), "the username is shown: {shown}");
    }
}
