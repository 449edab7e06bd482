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
use glommio::ExecutorJoinHandle;
use tracing::info;

use crate::config::Config;
use crate::data_dir::DataDir;
use crate::shard::{self, ShardSpec};
use crate::{listeners, requirements};

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    client_addr: SocketAddr,
    shard_addrs: Vec<SocketAddr>,
    shutdown: ShutdownHandle,
    shards: Vec<ExecutorJoinHandle<()>>,
    _data_dir: DataDir,
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

        let listeners = listeners::bind(&config.listen, shard_count, config.shard_port_base)?;
        let client_addr = listeners.client_addr;
        let shard_addrs = listeners.shard_addrs();

        let mut senders = Vec::with_capacity(shard_count);
        let mut shards = Vec::with_capacity(shard_count);
        let sockets = listeners.shared.into_iter().zip(listeners.per_shard);
        for (index, (client_listener, shard_listener)) in sockets.enumerate() {
            let (sender, receiver) = flume::bounded(1);
            senders.push(sender);
            let spec = ShardSpec {
                index,
                cpu: cpus[index % cpus.len()],
                io_memory_bytes,
                client_listener,
                shard_listener,
                shutdown: receiver,
            };
            let handle = shard::spawn(spec)
                .map_err(|error| anyhow::anyhow!("starting shard {index}: {error}"))?;
            shards.push(handle);
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
            _data_dir: data_dir,
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
