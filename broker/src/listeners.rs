//! Client listening sockets, made with socket2 before any shard starts.
//!
//! Every shard accepts on the client address through its own `SO_REUSEPORT` socket, and the kernel
//! spreads connections between them. glommio's `TcpListener::bind` would do this too, but it sets
//! `SO_REUSEPORT` unconditionally and panics on an address it cannot resolve: a stale broker or a
//! parallel test on the same port would silently take half of the connections. So the address is
//! resolved and validated here, probed by one bind *without* `SO_REUSEPORT` (which fails if any
//! other socket holds the port), and only then bound once per shard on the resolved port.
//!
//! Each shard also listens alone on a port of its own, which the handshake announces, so that a
//! client can connect straight to the shard that owns its queue.

use std::net::{SocketAddr, ToSocketAddrs};

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel queues per socket before the shard accepts them.
const LISTEN_BACKLOG: i32 = 1024;

/// The sockets of every shard, bound and listening.
#[derive(Debug)]
pub struct Listeners {
    /// The client address after resolution, with the port actually bound.
    pub client_addr: SocketAddr,
    /// One `SO_REUSEPORT` socket per shard on `client_addr`.
    pub shared: Vec<Socket>,
    /// One exclusive socket per shard, on that shard's own port.
    pub per_shard: Vec<Socket>,
}

impl Listeners {
    /// Each shard's own address, in shard order.
    pub fn shard_addrs(&self) -> Vec<SocketAddr> {
        self.per_shard
            .iter()
            .map(|socket| local_addr(socket).expect("a bound socket has a local address"))
            .collect()
    }
}

/// A listening socket that could not be made.
#[derive(Debug)]
pub enum ListenError {
    Resolve {
        address: String,
        message: String,
    },
    Bind {
        address: SocketAddr,
        purpose: &'static str,
        source: std::io::Error,
    },
}

impl std::fmt::Display for ListenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenError::Resolve { address, message } => {
                write!(f, "listen address {address:?} does not resolve: {message}")
            }
            ListenError::Bind {
                address,
                purpose,
                source,
            } => write!(
                f,
                "cannot listen on {address} ({purpose}): {source}; is another broker running?"
            ),
        }
    }
}

impl std::error::Error for ListenError {}

/// Resolves `listen` and binds the client sockets of `shard_count` shards. Shard `i`'s own port
/// is `shard_port_base + i`; without a base it is the client port + 1 + i, or an ephemeral port
/// when the client port is ephemeral.
pub fn bind(
    listen: &str,
    shard_count: usize,
    shard_port_base: Option<u16>,
) -> Result<Listeners, ListenError> {
    assert!(shard_count > 0);
    let resolve_error = |message: String| ListenError::Resolve {
        address: listen.into(),
        message,
    };
    let requested = listen
        .to_socket_addrs()
        .map_err(|error| resolve_error(error.to_string()))?
        .next()
        .ok_or_else(|| resolve_error("no addresses".into()))?;

    let probe = open(requested, false, "probe without SO_REUSEPORT")?;
    let client_addr = local_addr(&probe).map_err(|source| ListenError::Bind {
        address: requested,
        purpose: "probe",
        source,
    })?;
    drop(probe);

    let shared = (0..shard_count)
        .map(|_| open(client_addr, true, "client port"))
        .collect::<Result<Vec<_>, _>>()?;

    let base = first_shard_port(requested.port(), client_addr.port(), shard_port_base).ok_or_else(
        || resolve_error("the client port is 65535, leaving no room for shard ports".into()),
    )?;
    let mut per_shard = Vec::with_capacity(shard_count);
    for shard in 0..shard_count {
        let port = match base {
            None => 0,
            Some(base) => u16::try_from(base as usize + shard)
                .map_err(|_| resolve_error(format!("shard port {base} + {shard} exceeds 65535")))?,
        };
        per_shard.push(open(
            SocketAddr::new(client_addr.ip(), port),
            false,
            "shard port",
        )?);
    }
    Ok(Listeners {
        client_addr,
        shared,
        per_shard,
    })
}

/// The first shard's port: the configured base; else, when the client port was asked for
/// explicitly, the port after it; else `Some(None)`: ephemeral shard ports, since the ports after
/// one the kernel picked may be held by anything (an outgoing connection, another broker).
/// `None` when the client port is 65535 and leaves no room.
fn first_shard_port(
    requested_port: u16,
    client_port: u16,
    configured: Option<u16>,
) -> Option<Option<u16>> {
    match configured {
        Some(base) => Some(Some(base)),
        None if requested_port == 0 => Some(None),
        None => client_port.checked_add(1).map(Some),
    }
}

fn open(
    address: SocketAddr,
    reuse_port: bool,
    purpose: &'static str,
) -> Result<Socket, ListenError> {
    let bind_error = |source| ListenError::Bind {
        address,
        purpose,
        source,
    };
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(bind_error)?;
    // SO_REUSEADDR only lets a restarted broker bind over connections in TIME_WAIT; on Linux it
    // never lets two listeners share a port.
    socket.set_reuse_address(true).map_err(bind_error)?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(bind_error)?;
    }
    socket.set_tcp_nodelay(true).map_err(bind_error)?;
    socket.bind(&address.into()).map_err(bind_error)?;
    socket.listen(LISTEN_BACKLOG).map_err(bind_error)?;
    Ok(socket)
}

fn local_addr(socket: &Socket) -> std::io::Result<SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("not an inet socket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_shares_one_resolved_client_port_and_has_its_own() {
        let listeners = bind("127.0.0.1:0", 3, None).unwrap();
        assert_ne!(listeners.client_addr.port(), 0);
        for socket in &listeners.shared {
            assert_eq!(local_addr(socket).unwrap(), listeners.client_addr);
        }
        let shard_ports: Vec<u16> = listeners.shard_addrs().iter().map(|a| a.port()).collect();
        assert_eq!(shard_ports.len(), 3);
        assert!(
            shard_ports
                .iter()
                .all(|&port| port != 0 && port != listeners.client_addr.port())
        );
    }

    #[test]
    fn an_ephemeral_client_port_gets_ephemeral_shard_ports() {
        assert_eq!(first_shard_port(0, 40_000, None), Some(None));
        assert_eq!(first_shard_port(5690, 5690, None), Some(Some(5691)));
        assert_eq!(first_shard_port(0, 40_000, Some(7000)), Some(Some(7000)));
        assert_eq!(first_shard_port(65_535, 65_535, None), None);
    }

    #[test]
    fn a_port_already_held_with_reuse_port_is_refused() {
        let first = bind("127.0.0.1:0", 2, None).unwrap();
        let address = first.client_addr.to_string();
        let error = bind(&address, 2, None).unwrap_err();
        assert!(matches!(
            error,
            ListenError::Bind {
                purpose: "probe without SO_REUSEPORT",
                ..
            }
        ));
    }

    #[test]
    fn an_unresolvable_address_is_an_error_not_a_panic() {
        assert!(matches!(
            bind("127.0.0.1:not-a-port", 1, None),
            Err(ListenError::Resolve { .. })
        ));
        assert!(matches!(
            bind("127.0.0.1", 1, None),
            Err(ListenError::Resolve { .. })
        ));
    }
}
