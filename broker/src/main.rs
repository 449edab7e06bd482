//! The `ruuster` binary: configuration from a TOML file and flags, logging, signals.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use ruuster_broker::config::{Config, ConfigFile, FsyncPolicy};
use ruuster_broker::server::Broker;
use signal_hook::consts::{SIGINT, SIGTERM};
use tracing::{error, info, warn};

/// The Ruuster message broker. Every flag overrides the same setting of the config file; with
/// neither, the broker starts on 127.0.0.1:5690 with one shard per CPU and its data in
/// ./ruuster-data.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    /// A TOML config file; see README.md for its keys.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The directory for journals and metadata (locked while the broker runs).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The client address, host:port. Every shard accepts on it.
    #[arg(long)]
    listen: Option<String>,
    /// The first per-shard port (shard i listens alone on base + i). Default: listen port + 1.
    #[arg(long)]
    shard_port_base: Option<u16>,
    /// How many shards (pinned executors) to run. Default: one per available CPU.
    #[arg(long)]
    shards: Option<usize>,
    /// The CPUs to pin shards to, comma-separated; shard i runs on cpus[i % len].
    #[arg(long, value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// When the journal fdatasyncs: always (group commit, the default), interval, or os.
    #[arg(long, value_parser = parse_fsync)]
    fsync: Option<FsyncPolicy>,
    /// Block publishers when the data directory's filesystem has fewer free bytes than this
    /// (0 disables the check). Default: 1 GiB.
    #[arg(long)]
    disk_free_limit_bytes: Option<u64>,
    /// Print a password_hash for the config's [[users]] and exit.
    #[arg(long, value_name = "PASSWORD")]
    hash_password: Option<String>,
    /// Hidden: the crash tests' negative control. Confirms publishes before they are stored
    /// and so loses confirmed messages on a crash (see `Config::unsafe_confirm_before_append`).
    #[arg(long, hide = true)]
    unsafe_confirm_before_append_for_crash_tests: bool,
}

fn parse_fsync(text: &str) -> Result<FsyncPolicy, String> {
    match text {
        "always" => Ok(FsyncPolicy::Always),
        "interval" => Ok(FsyncPolicy::Interval),
        "os" => Ok(FsyncPolicy::Os),
        other => Err(format!("{other:?} is not always, interval or os")),
    }
}

fn main() {
    init_logging();
    if let Err(error) = run() {
        error!("{error:#}");
        eprintln!("ruuster: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let flags = Flags::parse();
    if let Some(password) = &flags.hash_password {
        let mut salt = [0u8; 16];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?,
            &mut salt,
        )
        .context("reading a salt")?;
        println!("{}", ruuster_broker::users::hash_password(password, salt));
        return Ok(());
    }
    let mut config = match &flags.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply(ConfigFile {
        data_dir: flags.data_dir,
        listen: flags.listen,
        shard_port_base: flags.shard_port_base,
        shards: flags.shards,
        cpus: flags.cpus,
        fsync: flags.fsync,
        disk_free_limit_bytes: flags.disk_free_limit_bytes,
        ..ConfigFile::default()
    });
    config.unsafe_confirm_before_append = flags.unsafe_confirm_before_append_for_crash_tests;
    info!(?config, "configuration");

    // Signals are taken by a plain thread: nothing on a shard may block waiting for them.
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("installing handlers")?;
    let broker = Broker::start(config)?;
    let shutdown = broker.shutdown_handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut received = signals.forever();
            if let Some(signal) = received.next() {
                info!(signal, "shutting down");
                shutdown.shutdown();
            }
            if let Some(signal) = received.next() {
                warn!(signal, "second signal: exiting without a clean shutdown");
                std::process::exit(130);
            }
        })
        .context("starting the signal thread")?;
    broker.wait()
}

/// Logs go to stderr; `RUST_LOG` filters them (default `info`). glommio logs through the `log`
/// crate, which is bridged here so its warnings (such as failed buffer registration) are seen.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
