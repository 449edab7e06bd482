//! Shards: one pinned glommio executor each. This is one of the few modules that know glommio
//! (DESIGN.md, "Runtime boundary"); the rest of the broker sees plain futures and sockets.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::Duration;

use futures_lite::future;
use glommio::net::TcpListener;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use socket2::Socket;
use tracing::{Instrument, debug, info, warn};

/// How often a long-running task is interrupted so that others on the shard get their turn.
/// glommio's default of 100 ms would let one busy connection stall every other for that long.
const PREEMPT_INTERVAL: Duration = Duration::from_millis(1);

/// What one shard needs to start.
#[derive(Debug)]
pub struct ShardSpec {
    pub index: usize,
    pub cpu: usize,
    pub io_memory_bytes: usize,
    /// This shard's `SO_REUSEPORT` socket on the shared client port.
    pub client_listener: Socket,
    /// This shard's own port.
    pub shard_listener: Socket,
    /// Receives once when the broker shuts down.
    pub shutdown: flume::Receiver<()>,
}

/// Starts the shard's executor on its CPU. The handle resolves when the shard has stopped.
pub fn spawn(spec: ShardSpec) -> glommio::Result<ExecutorJoinHandle<()>, ()> {
    let name = format!("shard-{}", spec.index);
    LocalExecutorBuilder::new(Placement::Fixed(spec.cpu))
        .name(&name)
        .io_memory(spec.io_memory_bytes)
        .preempt_timer(PREEMPT_INTERVAL)
        .spawn(move || {
            let span = tracing::info_span!("shard", index = spec.index, cpu = spec.cpu);
            run(spec).instrument(span)
        })
}

async fn run(spec: ShardSpec) {
    let client = into_glommio(spec.client_listener);
    let own = into_glommio(spec.shard_listener);
    info!("shard started");

    let accepting = future::or(
        accept_loop(&client, "client port"),
        accept_loop(&own, "shard port"),
    );
    future::or(accepting, async {
        // A closed channel means the broker is gone too; both end the shard.
        let _ = spec.shutdown.recv_async().await;
    })
    .await;

    info!("shard stopped");
}

async fn accept_loop(listener: &TcpListener, port: &'static str) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let peer = stream.peer_addr().ok();
                // The wire protocol is not served yet: the connection is accepted and closed, so
                // that clients see a prompt end instead of a hang.
                debug!(?peer, port, "connection closed: protocol not served");
                drop(stream);
            }
            Err(error) => {
                // EMFILE and friends are transient; back off instead of spinning on them.
                warn!(port, %error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn into_glommio(socket: Socket) -> TcpListener {
    let fd = socket.into_raw_fd();
    // SAFETY: `fd` is a bound, listening TCP socket whose ownership `into_raw_fd` gave up, so the
    // listener becomes its only owner and closes it exactly once. This runs on the executor that
    // will poll it, as glommio's `from_raw_fd` requires.
    unsafe { TcpListener::from_raw_fd(fd) }
}

/// The CPUs this process may run on, in ascending order.
pub fn affinity_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is writable and its size is passed; pid 0 is this thread.
    let result = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if result != 0 {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        return (0..count).collect();
    }
    // SAFETY: `set` was filled by sched_getaffinity; CPU_ISSET reads it within CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}
