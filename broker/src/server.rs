//! Start-up and shutdown. [`Broker::start`] runs the whole start-up sequence and returns once
//! every shard accepts; tests use it in-process on `127.0.0.1:0`, and `main` wraps it with
//! signal handling.
//!
//! Order matters: the cheap host checks come first so that a misconfigured host fails before
//! anything is created; the data directory is locked before its metadata is read, and the sockets
//! are bound before any shard starts so that a busy port refuses the start instead of leaving a
//! half-started broker.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::bail;
use tracing::{error, info, warn};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ruuster_segment_store::Options;
use ruuster_wire::ShortStr;
use ruuster_wire::handshake::ServerSettings;

use crate::config::Config;
use crate::connection::ConnectionSettings;
use crate::control::{Installers, Snapshot};
use crate::data_dir::DataDir;
use crate::flow::{FlowLimits, FreeSpaceSource, spawn_disk_monitor, statvfs_free_bytes};
use crate::metadata::Metadata;
use crate::shard::{self, ControlSpec as ShardControl, ShardSpec};
use crate::users::Users;
use crate::{listeners, mesh, requirements};

/// How long start-up waits for every shard to open and replay its journal.
const SHARD_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The name and version the handshake announces.
const SERVER_NAME: &str = concat!("ruuster ", env!("CARGO_PKG_VERSION"));

/// What a journal record adds around a message body: the target header and the envelope's
/// fields (names, keys, timestamps). A publish frame of the largest size always fits a record.
const JOURNAL_RECORD_OVERHEAD_BYTES: usize = 64 * 1024;

/// What a broker takes from its embedder besides the configuration. The default is what the
/// binary uses.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Where free space is measured; `None` is `statvfs` on the data directory. Tests pass a
    /// source they control, to block and unblock publishers without filling a disk.
    pub free_space: Option<FreeSpaceSource>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("free_space", &self.free_space.is_some())
            .finish()
    }
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    client_addr: SocketAddr,
    shard_addrs: Vec<SocketAddr>,
    shutdown: ShutdownHandle,
    shards: Vec<shard::ShardHandle>,
    /// Dropped after the shards have stopped (see [`shard::Nudger`]).
    _nudger: shard::Nudger,
    _data_dir: DataDir,
    /// Dropping it stops the free-space monitor.
    _disk_monitor_stop: flume::Sender<()>,
}

/// Asks every shard to stop. Cloneable and `Send`, for signal handlers and tests.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    senders: Vec<flume::Sender<()>>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        for sender in &self.senders {
            // A shard that is already gone has dropped its receiver; nothing to tell it.
            let _ = sender.try_send(());
        }
    }
}

impl Broker {
    /// Checks the host, locks the data directory, binds the sockets and starts the shards.
    pub fn start(config: Config) -> anyhow::Result<Broker> {
        Self::start_with(config, Hooks::default())
    }

    /// [`Broker::start`] with hooks.
    pub fn start_with(config: Config, hooks: Hooks) -> anyhow::Result<Broker> {
        let started = Instant::now();
        config.validate()?;

        let kernel = requirements::check_kernel()?;
        requirements::check_io_uring()?;
        let data_dir = DataDir::lock(&config.data_dir)?;
        let filesystem_magic = requirements::check_data_dir(data_dir.path())?;

        let cpus = match &config.cpus {
            Some(cpus) => cpus.clone(),
            None => shard::affinity_cpus(),
        };
        let shard_count = config.shards.unwrap_or(cpus.len());
        if cpus.is_empty() {
            bail!("no CPU is available to pin shards to");
        }
        data_dir.check_shard_count(shard_count)?;

        let memlock_limit_bytes = requirements::raise_memlock_limit();
        let io_memory_bytes = requirements::io_memory_per_shard(memlock_limit_bytes, shard_count)?;
        info!(
            kernel,
            data_dir = %data_dir.path().display(),
            filesystem_magic = format_args!("{filesystem_magic:#x}"),
            shard_count,
            ?cpus,
            memlock_limit_bytes = memlock_limit_bytes.map_or("unlimited".into(), |b| b.to_string()),
            io_memory_bytes,
            "starting"
        );

        if config.unsafe_confirm_before_append {
            error!(
                delay_ms = crate::runtime::CONFIRM_BEFORE_APPEND_DELAY.as_millis() as u64,
                "UNSAFE: confirming publishes before they are stored \
                 (--unsafe-confirm-before-append-for-crash-tests); a crash loses confirmed \
                 messages. This switch exists only as the crash tests' negative control"
            );
        }

        let (metadata, dropped) = Metadata::load(data_dir.path(), shard_count as u16)?;
        if !dropped.is_empty() {
            info!(
                queues = dropped.len(),
                "auto-delete queues whose consumers left at the stop"
            );
            metadata.save(data_dir.path())?;
        }
        let snapshot = Arc::new(Snapshot::build(&metadata).map_err(anyhow::Error::msg)?);
        let users = Users::from_config(&config.users).map_err(anyhow::Error::msg)?;

        let listeners = listeners::bind(&config.listen, shard_count, config.shard_port_base)?;
        let client_addr = listeners.client_addr;
        let shard_addrs = listeners.shard_addrs();
        let shard_ports: Vec<u16> = shard_addrs.iter().map(|address| address.port()).collect();

        let (control_sender, control_requests) = flume::unbounded();
        let (installed_sender, installed) = flume::unbounded();
        let mut snapshot_senders = Vec::with_capacity(shard_count);
        let mut snapshot_receivers = Vec::with_capacity(shard_count);
        for _ in 0..shard_count {
            let (sender, receiver) = flume::unbounded();
            snapshot_senders.push(sender);
            snapshot_receivers.push(receiver);
        }
        let mut control_task = Some(ShardControl {
            metadata,
            data_dir: data_dir.path().to_path_buf(),
            requests: control_requests,
            installers: Installers {
                snapshots: snapshot_senders,
                installed,
            },
        });
        let journal_options = Options {
            segment_bytes: config.segment_bytes,
            sync_policy: shard::sync_policy(config.fsync, config.fsync_interval_ms),
            max_payload_bytes: config.limits.frame_size_max as usize
                + JOURNAL_RECORD_OVERHEAD_BYTES,
            ..Options::default()
        };

        let nudger = shard::Nudger::start()?;
        let segments_bytes_min = 2 * shard_count as u64 * config.segment_bytes;
        if config.disk_free_limit_bytes > 0 && config.disk_free_limit_bytes < segments_bytes_min {
            warn!(
                disk_free_limit_bytes = config.disk_free_limit_bytes,
                segments_bytes_min,
                "the free-space limit is below two journal segments per shard: a full disk may \
                 fail publishes before the limit blocks them"
            );
        }
        let flow_limits = FlowLimits {
            queue_memory_max_bytes: config.limits.queue_memory_max_bytes,
            disk_free_limit_bytes: config.disk_free_limit_bytes,
        };
        let mut disk_free_senders = Vec::with_capacity(shard_count);

        let (ready_sender, ready) = flume::unbounded();
        let mut senders = Vec::with_capacity(shard_count);
        let mut shards = Vec::with_capacity(shard_count);
        let links = mesh::build(shard_count);
        let sockets = listeners.shared.into_iter().zip(listeners.per_shard);
        let per_shard = sockets.zip(links).zip(snapshot_receivers);
        for (index, (((client_listener, shard_listener), links), snapshots)) in
            per_shard.enumerate()
        {
            let (sender, receiver) = flume::bounded(1);
            senders.push(sender);
            let (disk_free_sender, disk_free) = flume::bounded(1);
            disk_free_senders.push(disk_free_sender);
            let server = ServerSettings {
                frame_size_max: config.limits.frame_size_max,
                heartbeat_default_ms: config.limits.heartbeat_ms,
                unconfirmed_max: config.limits.unconfirmed_max,
                prefetch_max: config.limits.prefetch_max,
                shard_index: index as u16,
                shard_ports: shard_ports.clone(),
                server_name: ShortStr::from_utf8(Bytes::from_static(SERVER_NAME.as_bytes()))
                    .expect("the server name is a short string"),
            };
            let spec = ShardSpec {
                index,
                shard_count,
                cpu: cpus[index % cpus.len()],
                io_memory_bytes,
                client_listener,
                shard_listener,
                shutdown: receiver,
                journal_dir: data_dir.path().join("shards").join(index.to_string()),
                journal_options: journal_options.clone(),
                links,
                snapshot: snapshot.clone(),
                snapshots,
                installed: installed_sender.clone(),
                control: control_sender.clone(),
                control_task: if index == 0 {
                    control_task.take()
                } else {
                    None
                },
                settings: ConnectionSettings {
                    handshake_timeout: Duration::from_millis(config.limits.handshake_timeout_ms),
                    server,
                    users: users.clone(),
                    unconfirmed_bytes_max: config.limits.unconfirmed_bytes_max,
                    unacked_max: config.limits.unacked_per_connection_max,
                },
                connections_max: config.limits.connections_per_shard_max,
                nudge: nudger.handle(),
                unsafe_confirm_before_append: config.unsafe_confirm_before_append,
                flow_limits,
                disk_free,
                ready: ready_sender.clone(),
            };
            let handle = shard::spawn(spec)
                .map_err(|error| anyhow::anyhow!("starting shard {index}: {error}"))?;
            shards.push(handle);
        }
        drop(ready_sender);
        let (disk_monitor_stop, stop) = flume::bounded(1);
        if config.disk_free_limit_bytes > 0 {
            let source = hooks
                .free_space
                .clone()
                .unwrap_or_else(|| Arc::new(statvfs_free_bytes));
            spawn_disk_monitor(
                data_dir.path().to_path_buf(),
                Duration::from_millis(config.disk_check_interval_ms),
                source,
                disk_free_senders,
                stop,
            )?;
        }
        for _ in 0..shard_count {
            // A shard that neither serves nor fails within this is stuck: refuse to start
            // rather than hang.
            match ready.recv_timeout(SHARD_READY_TIMEOUT) {
                Ok(Ok(())) => {}
                Ok(Err(message)) => {
                    ShutdownHandle { senders }.shutdown();
                    bail!("{message}");
                }
                Err(_) => {
                    ShutdownHandle { senders }.shutdown();
                    bail!("a shard stopped, or was not ready within {SHARD_READY_TIMEOUT:?}")
                }
            }
        }

        info!(
            %client_addr,
            shard_ports = ?shard_addrs.iter().map(|a| a.port()).collect::<Vec<_>>(),
            startup_ms = started.elapsed().as_millis() as u64,
            "listening"
        );
        Ok(Broker {
            client_addr,
            shard_addrs,
            shutdown: ShutdownHandle { senders },
            shards,
            _nudger: nudger,
            _data_dir: data_dir,
            _disk_monitor_stop: disk_monitor_stop,
        })
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    pub fn shard_addrs(&self) -> &[SocketAddr] {
        &self.shard_addrs
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Waits until every shard has stopped, then releases the data directory.
    pub fn wait(self) -> anyhow::Result<()> {
        for (index, handle) in self.shards.into_iter().enumerate() {
            handle
                .join()
                .map_err(|error| anyhow::anyhow!("shard {index} failed: {error}"))?;
        }
        info!("stopped");
        Ok(())
    }
}
