//! A scripted fake broker for the client's tests: it speaks the real protocol (the `ruuster-wire`
//! codec) over a real loopback TCP socket, and each test writes the server's side as a script of
//! `recv` and `send` steps. Every wait is bounded, so a client that misbehaves fails its test
//! instead of hanging it.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use ruuster_client::ConnectOptions;
use ruuster_wire::frame::{CloseOk, Hello, Welcome};
use ruuster_wire::limits::FRAME_SIZE_MAX;
use ruuster_wire::{Frame, FrameDecoder, ShortStr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any single step of a test may take. Loopback steps take microseconds; the margin is
/// for a machine busy compiling.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `future`, failing the test if it takes longer than [`STEP_TIMEOUT`].
pub async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} took longer than {STEP_TIMEOUT:?}"),
    }
}

/// A listening fake broker on `127.0.0.1` and an ephemeral port.
pub struct FakeServer {
    listener: TcpListener,
}

impl FakeServer {
    pub async fn bind() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        FakeServer { listener }
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    /// Client options pointing here, with the defaults otherwise.
    pub fn options(&self) -> ConnectOptions {
        ConnectOptions::new(format!("127.0.0.1:{}", self.port()))
    }

    pub async fn accept(&self) -> Peer {
        let (stream, _) = bounded("accept", self.listener.accept()).await.unwrap();
        Peer {
            stream,
            buffer: BytesMut::new(),
            decoder: FrameDecoder::new(ruuster_wire::limits::FRAME_SIZE_MAX),
        }
    }
}

/// A `Welcome` with round numbers, for a one-shard server on `port`.
pub fn welcome(port: u16) -> Welcome {
    Welcome {
        version: 1,
        heartbeat_ms: 10_000,
        frame_size_max: 1024 * 1024,
        unconfirmed_max: 1024,
        prefetch_max: 1000,
        shard_index: 0,
        shard_ports: vec![port],
        server_name: ShortStr::from_static("fake 0.0.0"),
    }
}

/// The server's end of one connection.
pub struct Peer {
    stream: TcpStream,
    buffer: BytesMut,
    decoder: FrameDecoder,
}

impl Peer {
    /// The next frame from the client, or `None` at end of stream.
    pub async fn recv_or_eof(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buffer).unwrap() {
                return Some(frame);
            }
            let read = bounded("read", self.stream.read_buf(&mut self.buffer)).await;
            if read.unwrap_or(0) == 0 {
                return None;
            }
        }
    }

    /// The next frame from the client; fails the test at end of stream.
    pub async fn recv(&mut self) -> Frame {
        self.recv_or_eof().await.expect("client closed the socket")
    }

    /// The next frame that is not a heartbeat.
    pub async fn recv_skipping_heartbeats(&mut self) -> Frame {
        loop {
            match self.recv().await {
                Frame::Heartbeat(_) => continue,
                frame => return frame,
            }
        }
    }

    /// Sends frames in one write, as a broker answering a burst would.
    pub async fn send_all(&mut self, frames: &[Frame]) {
        let mut out = BytesMut::new();
        for frame in frames {
            frame
                .encode(&mut out, ruuster_wire::limits::FRAME_SIZE_MAX)
                .unwrap();
        }
        bounded("write", self.stream.write_all(&out)).await.unwrap();
    }

    pub async fn send(&mut self, frame: impl Into<Frame>) {
        self.send_all(&[frame.into()]).await;
    }

    /// Reads the client's `Hello` and answers `welcome`.
    pub async fn handshake(&mut self, welcome: Welcome) -> Hello {
        let Frame::Hello(hello) = self.recv().await else {
            panic!("the client's first frame is not Hello");
        };
        self.send(welcome).await;
        hello
    }

    /// Reads until the client closes the socket and returns every non-heartbeat frame, answering
    /// a `Close` with `CloseOk` as a broker would (the client may already have closed the socket
    /// after an error, so that write may fail).
    pub async fn drain_until_eof(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.recv_or_eof().await {
            match frame {
                Frame::Heartbeat(_) => continue,
                Frame::Close(_) => {
                    let mut out = BytesMut::new();
                    Frame::CloseOk(CloseOk)
                        .encode(&mut out, FRAME_SIZE_MAX)
                        .unwrap();
                    let _ = bounded("write", self.stream.write_all(&out)).await;
                }
                _ => {}
            }
            frames.push(frame);
        }
        frames
    }
}
