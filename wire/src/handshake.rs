//! Handshake negotiation (what the server answers to a `Hello`) and the `PLAIN` credentials
//! format.
//!
//! The server side calls [`negotiate`] with the client's [`Hello`] and its own
//! [`ServerSettings`]; the result is the [`Welcome`] to send or the error code to close with.
//! Checking the credentials themselves is the broker's job: this module only parses them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ErrorCode;
use crate::frame::{Hello, Welcome};
use crate::limits::{
    CREDENTIALS_SIZE_MAX, FRAME_SIZE_MAX, FRAME_SIZE_MIN, HEARTBEAT_INTERVAL_DEFAULT,
    HEARTBEAT_INTERVAL_MAX, HEARTBEAT_INTERVAL_MIN, PROTOCOL_VERSION,
};
use crate::text::ShortStr;

/// The mechanism name of username-and-password authentication.
pub const MECHANISM_PLAIN: &str = "PLAIN";

/// What a server offers in a handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// The largest frame the server accepts (capped at [`FRAME_SIZE_MAX`]).
    pub frame_size_max: u32,
    /// The heartbeat interval in milliseconds when the client asks for the default.
    pub heartbeat_default_ms: u32,
    /// Published messages that may await a confirm at once, per connection.
    pub unconfirmed_max: u32,
    /// The largest prefetch a consumer may ask for.
    pub prefetch_max: u32,
    /// The shard accepting this connection.
    pub shard_index: u16,
    /// One port per shard.
    pub shard_ports: Vec<u16>,
    /// The server's name and version.
    pub server_name: ShortStr,
}

/// Answers `hello`: the [`Welcome`] to send, or the code to close the connection with.
///
/// The version is the highest common to both ranges. A heartbeat of `0` takes the server's
/// default; any other value is clamped to the protocol's bounds, because heartbeats cannot be
/// disabled. A maximum frame size of `0` takes the server's; any other is the smaller of the two,
/// and one below [`FRAME_SIZE_MIN`] is refused.
pub fn negotiate(hello: &Hello, settings: &ServerSettings) -> Result<Welcome, ErrorCode> {
    if hello.version_min > hello.version_max {
        return Err(ErrorCode::INVALID_HANDSHAKE);
    }
    if !(hello.version_min..=hello.version_max).contains(&PROTOCOL_VERSION) {
        return Err(ErrorCode::UNSUPPORTED_VERSION);
    }

    let heartbeat_min_ms = HEARTBEAT_INTERVAL_MIN.as_millis() as u32;
    let heartbeat_max_ms = HEARTBEAT_INTERVAL_MAX.as_millis() as u32;
    let heartbeat_ms = match hello.heartbeat_ms {
        0 => settings.heartbeat_default_ms,
        requested => requested,
    }
    .clamp(heartbeat_min_ms, heartbeat_max_ms);

    let server_frame_size_max = settings
        .frame_size_max
        .clamp(FRAME_SIZE_MIN, FRAME_SIZE_MAX);
    let frame_size_max = match hello.frame_size_max {
        0 => server_frame_size_max,
        requested if requested < FRAME_SIZE_MIN => return Err(ErrorCode::INVALID_HANDSHAKE),
        requested => requested.min(server_frame_size_max),
    };

    if usize::from(settings.shard_index) >= settings.shard_ports.len() {
        return Err(ErrorCode::INTERNAL_ERROR);
    }
    Ok(Welcome {
        version: PROTOCOL_VERSION,
        heartbeat_ms,
        frame_size_max,
        unconfirmed_max: settings.unconfirmed_max,
        prefetch_max: settings.prefetch_max,
        shard_index: settings.shard_index,
        shard_ports: settings.shard_ports.clone(),
        server_name: settings.server_name.clone(),
    })
}

impl Default for ServerSettings {
    /// One shard on port 5680 with the protocol's default limits.
    fn default() -> ServerSettings {
        ServerSettings {
            frame_size_max: crate::limits::FRAME_SIZE_DEFAULT,
            heartbeat_default_ms: HEARTBEAT_INTERVAL_DEFAULT.as_millis() as u32,
            unconfirmed_max: 65_536,
            prefetch_max: 65_535,
            shard_index: 0,
            shard_ports: vec![5680],
            server_name: ShortStr::from_static("ruuster"),
        }
    }
}

/// `PLAIN` credentials (RFC 4616 without an authorization identity): `0x00`, username, `0x00`,
/// password, both UTF-8 and neither containing `0x00`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainCredentials {
    /// The username.
    pub username: String,
    /// The password.
    pub password: String,
}

impl PlainCredentials {
    /// Encodes the credentials for a `Hello`, or `None` if a part contains `0x00` or the whole
    /// exceeds [`CREDENTIALS_SIZE_MAX`].
    pub fn encode(&self) -> Option<Bytes> {
        let parts = [self.username.as_bytes(), self.password.as_bytes()];
        if parts.iter().any(|part| part.contains(&0)) {
            return None;
        }
        let size = 2 + parts[0].len() + parts[1].len();
        if size > CREDENTIALS_SIZE_MAX {
            return None;
        }
        let mut credentials = BytesMut::with_capacity(size);
        for part in parts {
            credentials.put_u8(0);
            credentials.put_slice(part);
        }
        Some(credentials.freeze())
    }

    /// Parses `PLAIN` credentials, or `None` if they are not in that format (the server answers
    /// with [`ErrorCode::BAD_CREDENTIALS`]).
    pub fn parse(credentials: &[u8]) -> Option<PlainCredentials> {
        let rest = credentials.strip_prefix(&[0])?;
        let separator = rest.iter().position(|byte| *byte == 0)?;
        let (username, password) = (&rest[..separator], &rest[separator + 1..]);
        if password.contains(&0) {
            return None;
        }
        Some(PlainCredentials {
            username: std::str::from_utf8(username).ok()?.to_owned(),
            password: std::str::from_utf8(password).ok()?.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            version_min: 1,
            version_max: 1,
            client_name: ShortStr::from_static("test"),
            mechanism: ShortStr::from_static(MECHANISM_PLAIN),
            credentials: Bytes::new(),
            heartbeat_ms: 0,
            frame_size_max: 0,
        }
    }

    #[test]
    fn zero_requests_take_the_server_defaults() {
        let welcome = negotiate(&hello(), &ServerSettings::default()).unwrap();
        assert_eq!(welcome.heartbeat_ms, 10_000);
        assert_eq!(welcome.frame_size_max, crate::limits::FRAME_SIZE_DEFAULT);
    }

    #[test]
    fn the_smaller_frame_size_wins_and_tiny_ones_are_refused() {
        let settings = ServerSettings::default();
        let welcome = negotiate(
            &Hello {
                frame_size_max: 8192,
                ..hello()
            },
            &settings,
        )
        .unwrap();
        assert_eq!(welcome.frame_size_max, 8192);
        let tiny = Hello {
            frame_size_max: 100,
            ..hello()
        };
        assert_eq!(
            negotiate(&tiny, &settings),
            Err(ErrorCode::INVALID_HANDSHAKE)
        );
    }

    #[test]
    fn a_heartbeat_below_the_minimum_is_raised_to_it() {
        let welcome = negotiate(
            &Hello {
                heartbeat_ms: 1,
                ..hello()
            },
            &ServerSettings::default(),
        )
        .unwrap();
        assert_eq!(welcome.heartbeat_ms, 100);
    }

    #[test]
    fn a_version_range_without_version_one_is_unsupported() {
        let future = Hello {
            version_min: 2,
            version_max: 5,
            ..hello()
        };
        assert_eq!(
            negotiate(&future, &ServerSettings::default()),
            Err(ErrorCode::UNSUPPORTED_VERSION)
        );
    }

    #[test]
    fn plain_credentials_round_trip_and_reject_malformed_input() {
        let credentials = PlainCredentials {
            username: "guest".to_owned(),
            password: "secret".to_owned(),
        };
        let encoded = credentials.encode().unwrap();
        assert_eq!(&encoded[..], b"\0guest\0secret");
        assert_eq!(PlainCredentials::parse(&encoded), Some(credentials));
        assert_eq!(PlainCredentials::parse(b"guest\0secret"), None);
        assert_eq!(PlainCredentials::parse(b"\0guest"), None);
        assert_eq!(PlainCredentials::parse(b"\0a\0b\0c"), None);
    }
}
