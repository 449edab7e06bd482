//! The connection state machine, sans-IO: which frames each side may send and receive in each
//! state, the handshake deadline, heartbeats, and publish sequence numbers.
//!
//! Both the broker and the client drive a [`Connection`]: they call [`Connection::on_receive`]
//! with every decoded frame and [`Connection::on_send`] before encoding every frame, and
//! [`Connection::on_tick`] when [`Connection::next_deadline`] passes. Time is an input: every call
//! takes the current [`Instant`], and nothing here reads a clock, so tests and fuzzers drive time
//! explicitly.
//!
//! ```text
//!   AwaitingHello --Hello--> AwaitingWelcome --Welcome--> Open
//!         |                        |                       |
//!         +------ Close sent ------+-----------------------+--> CloseSent --CloseOk--> Closed
//!         +------ Close received --+-----------------------+--> CloseReceived --CloseOk--> Closed
//! ```
//!
//! Invariants kept: nothing but `Hello` (and `Close`) before the handshake; nothing but `Welcome`
//! (and `Close`) until it completes; each opcode only from its sender; publish sequence numbers
//! are 1, 2, 3, ... across batches and a confirm always starts right after the last one
//! ([`Error::SequenceMismatch`] otherwise), so the count of unconfirmed messages is exact and
//! bounded by the negotiated maximum.

use std::time::{Duration, Instant};

use crate::error::{Error, ErrorCode, Role};
use crate::frame::{Frame, Hello, Sender, Welcome, sender_of};
use crate::limits::{
    FRAME_SIZE_MAX, FRAME_SIZE_MIN, HANDSHAKE_FRAME_SIZE_MAX, HANDSHAKE_TIMEOUT_MAX,
    HEARTBEAT_INTERVAL_MAX, HEARTBEAT_INTERVAL_MIN, MISSED_HEARTBEATS_MAX,
};

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Nothing exchanged yet: the client must send `Hello`.
    AwaitingHello,
    /// `Hello` sent or received: the server must answer `Welcome` (or `Close`).
    AwaitingWelcome,
    /// Handshake complete: requests, publishes and deliveries flow.
    Open,
    /// This side sent `Close`; it ignores everything but `Close` and `CloseOk`.
    CloseSent,
    /// The peer sent `Close`; this side may send only `CloseOk`.
    CloseReceived,
    /// Done: the socket should be closed.
    Closed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::AwaitingHello => "awaiting-hello",
            State::AwaitingWelcome => "awaiting-welcome",
            State::Open => "open",
            State::CloseSent => "close-sent",
            State::CloseReceived => "close-received",
            State::Closed => "closed",
        }
    }
}

/// What to do with a frame [`Connection::on_receive`] accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Act on it.
    Handle,
    /// Drop it: this side is closing and the frame no longer matters.
    Ignore,
}

/// What [`Connection::on_tick`] asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tick {
    /// Nothing is due.
    Idle,
    /// This side has been silent for a heartbeat interval: send a `Heartbeat`.
    SendHeartbeat,
    /// A deadline passed ([`Error::HandshakeTimeout`] or [`Error::MissedHeartbeats`]): send
    /// `Close` with the error's code if the state allows, then close the socket.
    Expired(Error),
    /// This side sent `Close` and the peer did not answer `CloseOk` in time: close the socket.
    CloseSocket,
}

/// Parameters fixed by the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Protocol version.
    pub version: u16,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Largest frame either side may send, header included.
    pub frame_size_max: u32,
    /// Published messages that may await a confirm at once.
    pub unconfirmed_max: u32,
    /// The largest prefetch a consumer may ask for.
    pub prefetch_max: u32,
}

/// One side of one connection.
#[derive(Clone, Debug)]
pub struct Connection {
    role: Role,
    state: State,
    handshake_deadline: Instant,
    close_deadline: Option<Instant>,
    offered: Option<(u16, u16, u32)>,
    negotiated: Option<Negotiated>,
    last_sent: Instant,
    last_received: Instant,
    published: u64,
    confirmed: u64,
}

impl Connection {
    /// A connection that started at `now` (connect or accept) and must complete its handshake
    /// within `handshake_timeout` (at most [`HANDSHAKE_TIMEOUT_MAX`]).
    pub fn new(role: Role, now: Instant, handshake_timeout: Duration) -> Connection {
        let handshake_timeout = handshake_timeout.min(HANDSHAKE_TIMEOUT_MAX);
        Connection {
            role,
            state: State::AwaitingHello,
            handshake_deadline: now + handshake_timeout,
            close_deadline: None,
            offered: None,
            negotiated: None,
            last_sent: now,
            last_received: now,
            published: 0,
            confirmed: 0,
        }
    }

    /// The side this connection plays.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The handshake's result, once `Welcome` has passed.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// The largest frame to accept and send now: the negotiated size once the handshake
    /// completed, [`HANDSHAKE_FRAME_SIZE_MAX`] before.
    pub fn frame_size_max(&self) -> u32 {
        self.negotiated
            .map_or(HANDSHAKE_FRAME_SIZE_MAX, |negotiated| {
                negotiated.frame_size_max
            })
    }

    /// The sequence number the next published message will take.
    pub fn next_sequence(&self) -> u64 {
        self.published + 1
    }

    /// Published messages not yet confirmed.
    pub fn unconfirmed(&self) -> u64 {
        self.published - self.confirmed
    }

    /// Checks that this side may send `frame` now and records its effects. Call it before
    /// writing the frame; on error, do not send it.
    pub fn on_send(&mut self, frame: &Frame, now: Instant) -> Result<(), Error> {
        let opcode = frame.opcode();
        let unexpected = |state: State| Error::UnexpectedFrame {
            role: self.role,
            state: state.name(),
            opcode,
            sending: true,
        };
        if !self.may_send(opcode) {
            return Err(unexpected(self.state));
        }

        match (self.state, frame) {
            (State::AwaitingHello | State::AwaitingWelcome | State::Open, Frame::Close(_)) => {
                self.close_deadline = Some(self.close_deadline(now));
                self.state = State::CloseSent;
            }
            (State::CloseReceived, Frame::CloseOk(_)) => self.state = State::Closed,
            (State::AwaitingHello, Frame::Hello(hello)) => {
                self.offer(hello);
                self.state = State::AwaitingWelcome;
            }
            (State::AwaitingWelcome, Frame::Welcome(welcome)) => self.accept(welcome)?,
            (State::Open, Frame::Hello(_) | Frame::Welcome(_) | Frame::CloseOk(_)) => {
                return Err(unexpected(self.state));
            }
            (State::Open, Frame::Publish(publish)) => self.publish(publish.messages.len())?,
            (State::Open, Frame::Confirm(confirm)) => self.confirm(confirm.first, confirm.last)?,
            (State::Open, Frame::Return(returned)) => self.check_return(returned.sequence)?,
            (State::Open, _) => {}
            (state, _) => return Err(unexpected(state)),
        }
        self.last_sent = now;
        Ok(())
    }

    /// Checks that the peer may send `frame` now and records its effects. An error is fatal:
    /// close the connection with [`Error::code`].
    pub fn on_receive(&mut self, frame: &Frame, now: Instant) -> Result<Inbound, Error> {
        let opcode = frame.opcode();
        let unexpected = Error::UnexpectedFrame {
            role: self.role,
            state: self.state.name(),
            opcode,
            sending: false,
        };
        let from_peer = match sender_of(opcode) {
            Some(Sender::Either) => true,
            Some(Sender::Client) => self.role == Role::Server,
            Some(Sender::Server) => self.role == Role::Client,
            None => false,
        };
        if !from_peer {
            return Err(unexpected);
        }
        self.last_received = now;

        let inbound = match (self.state, frame) {
            (State::Closed, _) | (State::CloseReceived, _) => return Err(unexpected),
            (State::CloseSent, Frame::CloseOk(_)) => {
                self.state = State::Closed;
                Inbound::Handle
            }
            (State::CloseSent, Frame::Close(_)) => {
                self.state = State::CloseReceived;
                Inbound::Handle
            }
            (State::CloseSent, _) => Inbound::Ignore,
            (_, Frame::Close(_)) => {
                self.state = State::CloseReceived;
                Inbound::Handle
            }
            (State::AwaitingHello, Frame::Hello(hello)) => {
                self.offer(hello);
                self.state = State::AwaitingWelcome;
                Inbound::Handle
            }
            (State::AwaitingWelcome, Frame::Welcome(welcome)) => {
                self.accept(welcome)?;
                Inbound::Handle
            }
            (State::Open, Frame::Hello(_) | Frame::Welcome(_) | Frame::CloseOk(_)) => {
                return Err(unexpected);
            }
            (State::Open, Frame::Publish(publish)) => {
                self.publish(publish.messages.len())?;
                Inbound::Handle
            }
            (State::Open, Frame::Confirm(confirm)) => {
                self.confirm(confirm.first, confirm.last)?;
                Inbound::Handle
            }
            (State::Open, Frame::Return(returned)) => {
                self.check_return(returned.sequence)?;
                Inbound::Handle
            }
            (State::Open, _) => Inbound::Handle,
            (State::AwaitingHello | State::AwaitingWelcome, _) => return Err(unexpected),
        };
        Ok(inbound)
    }

    /// Checks the deadlines at `now`.
    pub fn on_tick(&mut self, now: Instant) -> Tick {
        match (self.state, self.negotiated) {
            (State::Closed, _) => Tick::Idle,
            (State::CloseSent, _) if self.close_deadline.is_some_and(|end| now >= end) => {
                Tick::CloseSocket
            }
            (State::CloseSent, _) => Tick::Idle,
            (_, None) if now >= self.handshake_deadline => Tick::Expired(Error::HandshakeTimeout),
            (_, None) => Tick::Idle,
            (state, Some(negotiated)) => {
                if now >= self.last_received + negotiated.heartbeat * MISSED_HEARTBEATS_MAX {
                    Tick::Expired(Error::MissedHeartbeats)
                } else if state == State::Open && now >= self.last_sent + negotiated.heartbeat {
                    Tick::SendHeartbeat
                } else {
                    Tick::Idle
                }
            }
        }
    }

    /// Restarts the peer-silence clock at `now`. For a receiver that leaves the peer's frames
    /// unread on purpose (backpressure): whatever waits in its socket may be the peer's
    /// heartbeats, so its own pause must not count as the peer's silence. A peer that is really
    /// gone is found again once reading resumes.
    pub fn defer_silence(&mut self, now: Instant) {
        self.last_received = self.last_received.max(now);
    }

    /// The earliest instant at which [`Connection::on_tick`] may return something other than
    /// [`Tick::Idle`], or `None` once closed.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.state, self.negotiated) {
            (State::Closed, _) => None,
            (State::CloseSent, _) => self.close_deadline,
            (_, None) => Some(self.handshake_deadline),
            (state, Some(negotiated)) => {
                let silence = self.last_received + negotiated.heartbeat * MISSED_HEARTBEATS_MAX;
                if state == State::Open {
                    Some(silence.min(self.last_sent + negotiated.heartbeat))
                } else {
                    Some(silence)
                }
            }
        }
    }

    /// How long a side that sent `Close` waits for `CloseOk`: the missed-heartbeat limit once
    /// negotiated, the handshake deadline before. Fixed when `Close` is sent, so a peer that keeps
    /// sending other frames cannot hold the connection open.
    fn close_deadline(&self, now: Instant) -> Instant {
        match self.negotiated {
            Some(negotiated) => now + negotiated.heartbeat * MISSED_HEARTBEATS_MAX,
            None => self.handshake_deadline.max(now),
        }
    }

    fn may_send(&self, opcode: u16) -> bool {
        match sender_of(opcode) {
            Some(Sender::Either) => true,
            Some(Sender::Client) => self.role == Role::Client,
            Some(Sender::Server) => self.role == Role::Server,
            None => false,
        }
    }

    fn offer(&mut self, hello: &Hello) {
        self.offered = Some((hello.version_min, hello.version_max, hello.frame_size_max));
    }

    /// Validates a `Welcome` against the `Hello` it answers; both sides run this, so a server
    /// cannot send a `Welcome` its client would refuse.
    fn accept(&mut self, welcome: &Welcome) -> Result<(), Error> {
        let invalid = Error::Handshake {
            code: ErrorCode::INVALID_HANDSHAKE,
        };
        let Some((version_min, version_max, frame_size_requested)) = self.offered else {
            return Err(invalid);
        };
        if !(version_min..=version_max).contains(&welcome.version) {
            return Err(Error::Handshake {
                code: ErrorCode::UNSUPPORTED_VERSION,
            });
        }
        let heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_ms));
        if !(HEARTBEAT_INTERVAL_MIN..=HEARTBEAT_INTERVAL_MAX).contains(&heartbeat) {
            return Err(invalid);
        }
        let frame_size_limit = match frame_size_requested {
            0 => FRAME_SIZE_MAX,
            requested => requested.min(FRAME_SIZE_MAX),
        };
        if !(FRAME_SIZE_MIN..=frame_size_limit).contains(&welcome.frame_size_max) {
            return Err(invalid);
        }
        if welcome.unconfirmed_max == 0 {
            return Err(invalid);
        }

        self.negotiated = Some(Negotiated {
            version: welcome.version,
            heartbeat,
            frame_size_max: welcome.frame_size_max,
            unconfirmed_max: welcome.unconfirmed_max,
            prefetch_max: welcome.prefetch_max,
        });
        self.state = State::Open;
        Ok(())
    }

    fn publish(&mut self, count: usize) -> Result<(), Error> {
        let limit = self
            .negotiated
            .map_or(0, |negotiated| negotiated.unconfirmed_max);
        let count = count as u64;
        if self.unconfirmed() + count > u64::from(limit) {
            return Err(Error::TooManyUnconfirmed {
                unconfirmed: self.unconfirmed(),
                count,
                limit,
            });
        }
        self.published += count;
        Ok(())
    }

    fn confirm(&mut self, first: u64, last: u64) -> Result<(), Error> {
        if first != self.confirmed + 1 || last < first || last > self.published {
            return Err(Error::SequenceMismatch {
                first,
                last,
                confirmed: self.confirmed,
                published: self.published,
            });
        }
        self.confirmed = last;
        Ok(())
    }

    fn check_return(&self, sequence: u64) -> Result<(), Error> {
        if sequence <= self.confirmed || sequence > self.published {
            return Err(Error::SequenceMismatch {
                first: sequence,
                last: sequence,
                confirmed: self.confirmed,
                published: self.published,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::frame::{
        Close, CloseOk, Confirm, ConfirmStatus, Durability, Heartbeat, Publish, PublishMessage,
        QueuePurge, Return, Stats,
    };
    use crate::handshake::{ServerSettings, negotiate};
    use crate::text::ShortStr;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn hello() -> Hello {
        Hello {
            version_min: 1,
            version_max: 1,
            client_name: ShortStr::from_static("test"),
            mechanism: ShortStr::from_static("PLAIN"),
            credentials: Bytes::from_static(b"\0guest\0guest"),
            heartbeat_ms: 1000,
            frame_size_max: 0,
        }
    }

    fn welcome() -> Welcome {
        let settings = ServerSettings {
            unconfirmed_max: 10,
            ..ServerSettings::default()
        };
        negotiate(&hello(), &settings).unwrap()
    }

    /// A client and a server that completed the handshake at `start`.
    fn open_pair(start: Instant) -> (Connection, Connection) {
        let mut client = Connection::new(Role::Client, start, TIMEOUT);
        let mut server = Connection::new(Role::Server, start, TIMEOUT);
        for (frame, sender_is_client) in [
            (Frame::Hello(hello()), true),
            (Frame::Welcome(welcome()), false),
        ] {
            let (sender, receiver) = if sender_is_client {
                (&mut client, &mut server)
            } else {
                (&mut server, &mut client)
            };
            sender.on_send(&frame, start).unwrap();
            assert_eq!(receiver.on_receive(&frame, start).unwrap(), Inbound::Handle);
        }
        assert_eq!(client.state(), State::Open);
        assert_eq!(server.state(), State::Open);
        (client, server)
    }

    fn publish(count: usize) -> Frame {
        let message = PublishMessage {
            routing_key: ShortStr::from_static("k"),
            body: Bytes::new(),
        };
        Frame::Publish(Publish {
            exchange: ShortStr::default(),
            mandatory: false,
            durability: Durability::Fsynced,
            messages: vec![message; count],
        })
    }

    fn confirm(first: u64, last: u64) -> Frame {
        Frame::Confirm(Confirm {
            first,
            last,
            status: ConfirmStatus::Stored(Durability::Fsynced),
        })
    }

    #[test]
    fn a_request_before_the_handshake_is_refused_with_unexpected_frame() {
        let mut server = Connection::new(Role::Server, Instant::now(), TIMEOUT);
        let error = server.on_receive(&Frame::Stats(Stats { request_id: 1 }), Instant::now());
        assert_eq!(error.unwrap_err().code(), ErrorCode::UNEXPECTED_FRAME);
    }

    #[test]
    fn a_server_frame_sent_by_a_client_is_refused() {
        let (_, mut server) = open_pair(Instant::now());
        let error = server
            .on_receive(&confirm(1, 1), Instant::now())
            .unwrap_err();
        assert!(matches!(
            error,
            Error::UnexpectedFrame { sending: false, .. }
        ));
    }

    #[test]
    fn a_client_cannot_send_hello_twice() {
        let (mut client, _) = open_pair(Instant::now());
        assert!(
            client
                .on_send(&Frame::Hello(hello()), Instant::now())
                .is_err()
        );
    }

    #[test]
    fn the_handshake_expires_at_its_deadline_and_not_before() {
        let start = Instant::now();
        let mut server = Connection::new(Role::Server, start, TIMEOUT);
        assert_eq!(server.next_deadline(), Some(start + TIMEOUT));
        assert_eq!(
            server.on_tick(start + TIMEOUT - Duration::from_millis(1)),
            Tick::Idle
        );
        assert_eq!(
            server.on_tick(start + TIMEOUT),
            Tick::Expired(Error::HandshakeTimeout)
        );
    }

    #[test]
    fn an_unbounded_handshake_timeout_is_clamped_rather_than_overflowing() {
        let start = Instant::now();
        let connection = Connection::new(Role::Server, start, Duration::MAX);
        assert_eq!(
            connection.next_deadline(),
            Some(start + HANDSHAKE_TIMEOUT_MAX)
        );
    }

    #[test]
    fn a_silent_side_is_asked_to_heartbeat_and_a_silent_peer_expires() {
        let start = Instant::now();
        let (mut client, _) = open_pair(start);
        let interval = Duration::from_millis(1000);
        assert_eq!(client.on_tick(start + interval / 2), Tick::Idle);
        assert_eq!(client.on_tick(start + interval), Tick::SendHeartbeat);
        client
            .on_send(&Frame::Heartbeat(Heartbeat), start + interval)
            .unwrap();
        assert_eq!(client.on_tick(start + interval), Tick::Idle);
        assert_eq!(
            client.on_tick(start + interval * 2),
            Tick::Expired(Error::MissedHeartbeats)
        );
    }

    #[test]
    fn a_receiver_holding_frames_unread_defers_the_silence_deadline() {
        let start = Instant::now();
        let (_, mut server) = open_pair(start);
        let interval = Duration::from_millis(1000);
        server.defer_silence(start + interval * 3 / 2);
        assert_ne!(
            server.on_tick(start + interval * 2),
            Tick::Expired(Error::MissedHeartbeats)
        );
        assert_eq!(
            server.on_tick(start + interval * 7 / 2),
            Tick::Expired(Error::MissedHeartbeats)
        );
    }

    #[test]
    fn any_received_frame_counts_as_life() {
        let start = Instant::now();
        let (mut client, _) = open_pair(start);
        let later = start + Duration::from_millis(1500);
        let frame = Frame::QueuePurge(QueuePurge {
            request_id: 1,
            queue: ShortStr::default(),
        });
        client.on_send(&frame, later).unwrap();
        client
            .on_receive(&Frame::Heartbeat(Heartbeat), later)
            .unwrap();
        assert_eq!(
            client.on_tick(start + Duration::from_millis(2400)),
            Tick::Idle
        );
    }

    #[test]
    fn publishing_past_the_unconfirmed_limit_is_refused_on_both_sides() {
        let now = Instant::now();
        let (mut client, mut server) = open_pair(now);
        client.on_send(&publish(8), now).unwrap();
        server.on_receive(&publish(8), now).unwrap();
        assert!(matches!(
            client.on_send(&publish(3), now),
            Err(Error::TooManyUnconfirmed {
                unconfirmed: 8,
                count: 3,
                limit: 10
            })
        ));
        let error = server.on_receive(&publish(3), now).unwrap_err();
        assert_eq!(error.code(), ErrorCode::TOO_MANY_UNCONFIRMED);
    }

    #[test]
    fn confirms_must_continue_the_confirmed_prefix() {
        let now = Instant::now();
        let (mut client, mut server) = open_pair(now);
        client.on_send(&publish(5), now).unwrap();
        server.on_receive(&publish(5), now).unwrap();
        assert!(server.on_send(&confirm(2, 3), now).is_err(), "gap before 2");
        server.on_send(&confirm(1, 3), now).unwrap();
        client.on_receive(&confirm(1, 3), now).unwrap();
        assert_eq!(client.unconfirmed(), 2);
        assert!(
            client.on_receive(&confirm(4, 6), now).is_err(),
            "6 was never published"
        );
        assert_eq!(client.next_sequence(), 6);
    }

    #[test]
    fn a_return_must_name_an_unconfirmed_sequence() {
        let now = Instant::now();
        let (mut client, _) = open_pair(now);
        client.on_send(&publish(2), now).unwrap();
        let returned = |sequence| {
            Frame::Return(Return {
                sequence,
                code: ErrorCode::UNROUTABLE,
                exchange: ShortStr::default(),
                routing_key: ShortStr::default(),
                body: Bytes::new(),
            })
        };
        client.on_receive(&returned(2), now).unwrap();
        assert!(client.on_receive(&returned(3), now).is_err());
    }

    #[test]
    fn after_sending_close_other_frames_are_ignored_until_close_ok() {
        let now = Instant::now();
        let (mut client, _) = open_pair(now);
        let close = Frame::Close(Close {
            code: ErrorCode::NORMAL_CLOSE,
            reason: ShortStr::default(),
        });
        client.on_send(&close, now).unwrap();
        assert_eq!(client.on_receive(&confirm(1, 1), now), Ok(Inbound::Ignore));
        assert!(client.on_send(&publish(1), now).is_err());
        client.on_receive(&Frame::CloseOk(CloseOk), now).unwrap();
        assert_eq!(client.state(), State::Closed);
        assert_eq!(client.next_deadline(), None);
    }

    #[test]
    fn a_peer_that_never_answers_close_is_dropped_even_if_it_keeps_talking() {
        let start = Instant::now();
        let (mut client, _) = open_pair(start);
        let close = Frame::Close(Close {
            code: ErrorCode::NORMAL_CLOSE,
            reason: ShortStr::default(),
        });
        client.on_send(&close, start).unwrap();
        let interval = Duration::from_millis(1000);
        for step in 1..4 {
            let now = start + interval / 2 * step;
            assert_eq!(
                client.on_receive(&Frame::Heartbeat(Heartbeat), now),
                Ok(Inbound::Ignore)
            );
            assert_eq!(client.on_tick(now), Tick::Idle);
        }
        assert_eq!(client.next_deadline(), Some(start + interval * 2));
        assert_eq!(client.on_tick(start + interval * 2), Tick::CloseSocket);
    }

    #[test]
    fn after_receiving_close_only_close_ok_may_be_sent() {
        let now = Instant::now();
        let (_, mut server) = open_pair(now);
        let close = Frame::Close(Close {
            code: ErrorCode::NORMAL_CLOSE,
            reason: ShortStr::default(),
        });
        server.on_receive(&close, now).unwrap();
        assert!(server.on_send(&Frame::Heartbeat(Heartbeat), now).is_err());
        server.on_send(&Frame::CloseOk(CloseOk), now).unwrap();
        assert_eq!(server.state(), State::Closed);
    }

    #[test]
    fn a_welcome_outside_the_offered_versions_is_refused_by_the_client() {
        let now = Instant::now();
        let mut client = Connection::new(Role::Client, now, TIMEOUT);
        client.on_send(&Frame::Hello(hello()), now).unwrap();
        let bad = Frame::Welcome(Welcome {
            version: 2,
            ..welcome()
        });
        let error = client.on_receive(&bad, now).unwrap_err();
        assert_eq!(error.code(), ErrorCode::UNSUPPORTED_VERSION);
    }
}
