//! Shards: one pinned glommio executor each. This is one of the few modules that know glommio
//! (DESIGN.md, "Runtime boundary"); the rest of the broker sees plain futures and sockets.
//!
//! A shard starts in this order: open its journal (the store runs recovery), replay the journal
//! into the queues it owns, connect its rings to every other shard, start its data-plane tasks and
//! its snapshot installer (and, on shard 0, the control task), report ready, and only then accept
//! connections. On shutdown it stops accepting, syncs its journal and returns; connections still
//! open are dropped without confirms for what was not confirmed.
//!
//! [`nudge`] works around shards that stay parked after their wake-up was lost.

mod nudge;

pub use nudge::{NUDGE_INTERVAL, NudgeHandle, Nudger};

use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use ruuster_segment_store::{Log, Options, SyncPolicy};
use socket2::Socket;
use tracing::{Instrument, debug, error, info, warn};

use bytes::{Bytes, BytesMut};
use futures_lite::AsyncWriteExt;
use ruuster_wire::frame::Close;
use ruuster_wire::{ErrorCode, Frame, ShortStr};

use crate::connection::{self, ConnectionSettings};
use crate::control::{self, ControlRequest, Installers, Snapshot};
use crate::flow::FlowLimits;
use crate::mesh::ShardLinks;
use crate::metadata::Metadata;
use crate::runtime::{self, Core, ShardMessage};

/// How often a long-running task is interrupted so that others on the shard get their turn.
/// glommio's default of 100 ms would let one busy connection stall every other for that long.
const PREEMPT_INTERVAL: Duration = Duration::from_millis(1);

/// What only shard 0 runs: the control task and its inputs.
#[derive(Debug)]
pub struct ControlSpec {
    pub metadata: Metadata,
    pub data_dir: PathBuf,
    pub requests: flume::Receiver<ControlRequest>,
    pub installers: Installers,
}

/// What one shard needs to start.
#[derive(Debug)]
pub struct ShardSpec {
    pub index: usize,
    pub shard_count: usize,
    pub cpu: usize,
    pub io_memory_bytes: usize,
    /// This shard's `SO_REUSEPORT` socket on the shared client port.
    pub client_listener: Socket,
    /// This shard's own port.
    pub shard_listener: Socket,
    /// Receives once when the broker shuts down.
    pub shutdown: flume::Receiver<()>,
    pub journal_dir: PathBuf,
    pub journal_options: Options,
    pub links: ShardLinks<ShardMessage>,
    pub snapshot: Arc<Snapshot>,
    pub snapshots: flume::Receiver<Arc<Snapshot>>,
    pub installed: flume::Sender<(usize, u64)>,
    pub control: flume::Sender<ControlRequest>,
    pub control_task: Option<ControlSpec>,
    pub settings: ConnectionSettings,
    pub connections_max: usize,
    /// Registers the executor thread with the broker's [`Nudger`].
    pub nudge: NudgeHandle,
    /// The crash tests' negative control (`Config::unsafe_confirm_before_append`).
    pub unsafe_confirm_before_append: bool,
    pub flow_limits: FlowLimits,
    /// The free bytes of the data directory's filesystem, from the disk monitor.
    pub disk_free: flume::Receiver<u64>,
    /// Told once the shard serves, or why it could not start.
    pub ready: flume::Sender<Result<(), String>>,
}

/// A shard's thread. [`ShardHandle::join`] returns once the shard has stopped.
#[derive(Debug)]
pub struct ShardHandle(std::thread::JoinHandle<glommio::Result<(), ()>>);

impl ShardHandle {
    pub fn join(self) -> Result<(), String> {
        match self.0.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("the shard's thread panicked".to_string()),
        }
    }
}

/// Starts the shard's executor on its CPU, on a thread of our own rather than through
/// `LocalExecutorBuilder::spawn`, so that the thread is registered with the [`Nudger`] before
/// glommio builds the executor: glommio was seen parked, its wake-up lost, before it first polled
/// the shard's future.
pub fn spawn(spec: ShardSpec) -> std::io::Result<ShardHandle> {
    let name = format!("shard-{}", spec.index);
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let nudge = spec.nudge.clone();
            let _nudged = nudge.register_current_thread();
            let executor = LocalExecutorBuilder::new(Placement::Fixed(spec.cpu))
                .name(&name)
                .io_memory(spec.io_memory_bytes)
                .preempt_timer(PREEMPT_INTERVAL)
                .make()?;
            let span = tracing::info_span!("shard", index = spec.index, cpu = spec.cpu);
            executor.run(run(spec).instrument(span));
            Ok(())
        })?;
    Ok(ShardHandle(thread))
}

async fn run(spec: ShardSpec) {
    let ready = spec.ready.clone();
    let (log, recovery) = match Log::open(&spec.journal_dir, spec.journal_options.clone()).await {
        Ok(opened) => opened,
        Err(error) => {
            error!(%error, "journal does not open");
            let _ = ready.send(Err(format!("shard {}: {error}", spec.index)));
            return;
        }
    };
    info!(
        segments = recovery.segments_count,
        records = recovery.records_count,
        truncated_bytes = recovery.truncated_bytes,
        elapsed_ms = recovery.elapsed.as_millis() as u64,
        "journal recovered"
    );

    let sync_policy = spec.journal_options.sync_policy;
    let core = Rc::new(Core::new(
        spec.index,
        spec.shard_count,
        log,
        sync_policy,
        spec.control.clone(),
        spec.snapshot.clone(),
    ));
    core.flow.configure(spec.shard_count, spec.flow_limits);
    match core.replay().await {
        Ok(report) => runtime::log_replay(spec.index, &report),
        Err(error) => {
            error!(%error, "journal replay failed");
            let _ = ready.send(Err(format!("shard {} replay: {error}", spec.index)));
            return;
        }
    }
    core.install(spec.snapshot.clone());
    if spec.unsafe_confirm_before_append {
        core.confirm_before_append_for_crash_tests();
    }

    let handler = core.clone();
    let mesh = spec
        .links
        .connect(move |from, _lane, message| handler.handle(from, message))
        .await;
    core.set_mesh(mesh);
    core.start_tasks();

    let monitored = core.clone();
    let disk_free = spec.disk_free.clone();
    glommio::spawn_local(async move {
        while let Ok(free_bytes) = disk_free.recv_async().await {
            monitored.set_disk_free(free_bytes);
        }
    })
    .detach();

    let installer = core.clone();
    let snapshots = spec.snapshots.clone();
    let installed = spec.installed.clone();
    glommio::spawn_local(async move {
        while let Ok(snapshot) = snapshots.recv_async().await {
            let version = snapshot.version;
            installer.install(snapshot);
            let _ = installed.send((installer.index, version));
        }
    })
    .detach();
    if let Some(control) = spec.control_task {
        let task = control::run(
            control.metadata,
            control.data_dir,
            control.requests,
            control.installers,
        );
        glommio::spawn_local(task).detach();
    }

    let client = into_glommio(spec.client_listener);
    let own = into_glommio(spec.shard_listener);
    let settings = Rc::new(spec.settings);
    let _ = ready.send(Ok(()));
    info!("shard serving");

    let accepting = future::or(
        accept_loop(
            &core,
            &client,
            "client port",
            &settings,
            spec.connections_max,
        ),
        accept_loop(&core, &own, "shard port", &settings, spec.connections_max),
    );
    future::or(accepting, async {
        // A closed channel means the broker is gone too; both end the shard.
        let _ = spec.shutdown.recv_async().await;
    })
    .await;

    drop(client);
    drop(own);
    if let Err(error) = core.log.sync().await {
        warn!(%error, "final journal sync failed");
    }
    info!("shard stopped");
}

async fn accept_loop(
    core: &Rc<Core>,
    listener: &TcpListener,
    port: &'static str,
    settings: &Rc<ConnectionSettings>,
    connections_max: usize,
) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let Ok(peer) = stream.peer_addr() else {
                    continue;
                };
                if core.connection_count() >= connections_max {
                    debug!(%peer, port, connections_max, "connection refused: too many");
                    glommio::spawn_local(refuse(stream, connections_max)).detach();
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let task = connection::serve(core.clone(), stream, peer, settings.clone());
                glommio::spawn_local(task).detach();
            }
            Err(error) => {
                // EMFILE and friends are transient; back off instead of spinning on them.
                warn!(port, %error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// How long a refused connection may take to accept its `Close` before the socket is dropped.
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Tells a connection over the limit why it is refused (600, before the handshake, as the
/// protocol allows) and closes it. The frame is tens of bytes, so the write fits the socket's
/// buffer; the timeout only guards against a peer that is gone.
async fn refuse(mut stream: glommio::net::TcpStream, connections_max: usize) {
    let close = Frame::Close(Close {
        code: ErrorCode::TOO_MANY_CONNECTIONS,
        reason: ShortStr::from_utf8(Bytes::from(format!(
            "this shard serves at most {connections_max} connections"
        )))
        .unwrap_or_default(),
    });
    let mut bytes = BytesMut::new();
    if close
        .encode(&mut bytes, ruuster_wire::limits::HANDSHAKE_FRAME_SIZE_MAX)
        .is_err()
    {
        return;
    }
    let _ = future::or(
        async {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.close().await;
        },
        async { glommio::timer::sleep(REFUSE_WRITE_TIMEOUT).await },
    )
    .await;
}

fn into_glommio(socket: Socket) -> TcpListener {
    let fd = socket.into_raw_fd();
    // SAFETY: `fd` is a bound, listening TCP socket whose ownership `into_raw_fd` gave up, so the
    // listener becomes its only owner and closes it exactly once. This runs on the executor that
    // will poll it, as glommio's `from_raw_fd` requires.
    unsafe { TcpListener::from_raw_fd(fd) }
}

/// The store's sync policy for the broker's fsync setting.
pub fn sync_policy(fsync: crate::config::FsyncPolicy, interval_ms: u64) -> SyncPolicy {
    match fsync {
        crate::config::FsyncPolicy::Always => SyncPolicy::Always,
        crate::config::FsyncPolicy::Interval => {
            SyncPolicy::Interval(Duration::from_millis(interval_ms.max(1)))
        }
        crate::config::FsyncPolicy::Os => SyncPolicy::Os,
    }
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
