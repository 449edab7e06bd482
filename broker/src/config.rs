//! Broker configuration: a TOML file, command-line flags that override it, and defaults that
//! start a broker with no file at all.
//!
//! Every limit here has a default chosen for a single host and is checked once at start, so the
//! rest of the broker can rely on it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the broker listens unless told otherwise. Loopback only: a broker must be opened to the
/// network on purpose.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:5690";

/// The data directory used when none is configured, relative to the working directory.
pub const DATA_DIR_DEFAULT: &str = "ruuster-data";

/// The most shards a broker runs. Each ordered pair of shards gets a ring, so the ring count grows
/// with the square of this; 256 keeps that at 65,280 rings.
pub const SHARD_COUNT_MAX: usize = 256;

/// glommio's default `io_memory` is 10 MiB per executor, which is more locked memory than the
/// default 8 MiB memlock limit allows even for one shard. We never ask for more than this.
pub const IO_MEMORY_BYTES_MAX: usize = 10 << 20;

/// Below this, registered buffers stop paying for themselves; glommio itself needs 512 KiB.
pub const IO_MEMORY_BYTES_MIN: usize = 512 << 10;

/// The shortest free-space check period: a `statvfs` costs microseconds, but checking more often
/// than this only burns wake-ups.
pub const DISK_CHECK_INTERVAL_MS_MIN: u64 = 10;

/// When the journal calls fdatasync (see README, "Guarantees").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Publishes asking for `fsynced` wait for a shared fdatasync (group commit). The default.
    Always,
    /// A background fdatasync every `fsync_interval_ms`; `fsynced` publishes wait for it.
    Interval,
    /// Never fdatasync: confirms report `written` at most.
    Os,
}

/// Limits a client meets on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections one shard serves at once; more are refused with `too-many-connections`.
    pub connections_per_shard_max: usize,
    /// Published messages awaiting a confirm per connection; the client must wait above it.
    pub unconfirmed_max: u32,
    /// The largest prefetch a consumer may ask for.
    pub prefetch_max: u32,
    /// The largest frame, header included, offered in the handshake.
    pub frame_size_max: u32,
    /// Heartbeat interval offered to clients that ask for the default.
    pub heartbeat_ms: u32,
    /// A client must complete its handshake within this.
    pub handshake_timeout_ms: u64,
    /// Bytes of published messages awaiting a confirm per connection. Above it the broker stops
    /// reading the connection's socket until confirms bring it below: `unconfirmed_max` alone
    /// would let one connection hold 64 GiB of 1 MiB messages.
    pub unconfirmed_bytes_max: u64,
    /// Deliveries one connection may hold unacked, over all its consumers: a consume whose
    /// prefetch would take the connection past it is refused with `limit-exceeded`. Two
    /// consumers at the largest prefetch fit the default.
    pub unacked_per_connection_max: u32,
    /// Bytes of messages the queues of one shard may hold in memory (bodies plus a fixed cost
    /// per message, ready and unacked). Above it every publishing connection is blocked with
    /// `memory-low` until acks bring the shard below 7/8 of it.
    pub queue_memory_max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_per_shard_max: 10_000,
            unconfirmed_max: 65_536,
            prefetch_max: 65_535,
            frame_size_max: 1 << 20,
            heartbeat_ms: 10_000,
            handshake_timeout_ms: 10_000,
            unconfirmed_bytes_max: 32 << 20,
            unacked_per_connection_max: 131_072,
            queue_memory_max_bytes: 1 << 30,
        }
    }
}

/// The broker's configuration, after defaults are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The directory that holds the journal segments and the metadata. Locked while in use.
    pub data_dir: PathBuf,
    /// The client address every shard accepts on.
    pub listen: String,
    /// The first per-shard port: shard `i` also listens alone on `shard_port_base + i`, so that a
    /// client can reach the shard that owns its queue. `None` means `listen` port + 1, or
    /// ephemeral ports when `listen` uses port 0.
    pub shard_port_base: Option<u16>,
    /// How many shards to run. `None` means one per CPU this process may run on.
    pub shards: Option<usize>,
    /// The CPUs shards are pinned to, in order; shard `i` runs on `cpus[i % cpus.len()]`. `None`
    /// means the CPUs of this process's affinity mask.
    pub cpus: Option<Vec<usize>>,
    pub fsync: FsyncPolicy,
    pub fsync_interval_ms: u64,
    /// Journal segment files are preallocated to this size and rolled when full.
    pub segment_bytes: u64,
    pub limits: Limits,
    pub users: Vec<crate::users::UserConfig>,
    /// NEGATIVE CONTROL FOR CRASH TESTS ONLY; a broker with it loses messages it confirmed.
    /// Each publish is confirmed at the level it asked for as soon as its owner shard's appender
    /// takes it, before the journal append, and the append is then held back for
    /// [`crate::runtime::CONFIRM_BEFORE_APPEND_DELAY`], so a `kill -9` in between loses confirmed
    /// messages, which a crash test's checker must report. Only the hidden flag
    /// `--unsafe-confirm-before-append-for-crash-tests` sets it (the TOML file cannot), and the
    /// broker says so at `error` level when it starts.
    pub unsafe_confirm_before_append: bool,
    /// Below this many free bytes on the data directory's filesystem, every publishing
    /// connection is blocked with `disk-low`; 0 disables the check.
    pub disk_free_limit_bytes: u64,
    /// How often the free space is measured (one `statvfs`, off the shards' executors).
    pub disk_check_interval_ms: u64,
}

/// The default free-space limit. Each shard keeps a zero-filled spare journal segment (64 MiB by
/// default) for its next roll and writes a new one after each roll, and while publishers are
/// blocked the journals still need room: for publishes already accepted, for the settlement
/// records that acks write (acks are what frees space), and for compaction's copies. 1 GiB is 16
/// default segments, two rolls for each of 8 shards; RabbitMQ's 50 MB would not hold one
/// segment. Start-up warns when the limit is below two segments per shard.
pub const DISK_FREE_LIMIT_BYTES_DEFAULT: u64 = 1 << 30;

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            listen: LISTEN_DEFAULT.to_string(),
            shard_port_base: None,
            shards: None,
            cpus: None,
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: 5,
            segment_bytes: 64 << 20,
            limits: Limits::default(),
            users: Vec::new(),
            unsafe_confirm_before_append: false,
            disk_free_limit_bytes: DISK_FREE_LIMIT_BYTES_DEFAULT,
            disk_check_interval_ms: 500,
        }
    }
}

/// The TOML file's shape. Every field is optional; a missing one keeps the default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub shard_port_base: Option<u16>,
    pub shards: Option<usize>,
    pub cpus: Option<Vec<usize>>,
    pub fsync: Option<FsyncPolicy>,
    pub fsync_interval_ms: Option<u64>,
    pub segment_bytes: Option<u64>,
    pub limits: Option<Limits>,
    pub users: Option<Vec<crate::users::UserConfig>>,
    pub disk_free_limit_bytes: Option<u64>,
    pub disk_check_interval_ms: Option<u64>,
}

/// A configuration that cannot be used, with the reason.
#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Parse {
        path: PathBuf,
        message: String,
    },
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read config file {}: {source}", path.display())
            }
            ConfigError::Parse { path, message } => {
                write!(f, "config file {} is not valid: {message}", path.display())
            }
            ConfigError::Invalid { field, message } => write!(f, "config `{field}`: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads `path` and applies it over the defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ConfigFile = toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
        let mut config = Config::default();
        config.apply(file);
        Ok(config)
    }

    /// Overrides every field that `file` sets.
    pub fn apply(&mut self, file: ConfigFile) {
        if let Some(data_dir) = file.data_dir {
            self.data_dir = data_dir;
        }
        if let Some(listen) = file.listen {
            self.listen = listen;
        }
        if file.shard_port_base.is_some() {
            self.shard_port_base = file.shard_port_base;
        }
        if file.shards.is_some() {
            self.shards = file.shards;
        }
        if file.cpus.is_some() {
            self.cpus = file.cpus;
        }
        if let Some(fsync) = file.fsync {
            self.fsync = fsync;
        }
        if let Some(interval) = file.fsync_interval_ms {
            self.fsync_interval_ms = interval;
        }
        if let Some(segment_bytes) = file.segment_bytes {
            self.segment_bytes = segment_bytes;
        }
        if let Some(limits) = file.limits {
            self.limits = limits;
        }
        if let Some(users) = file.users {
            self.users = users;
        }
        if let Some(limit) = file.disk_free_limit_bytes {
            self.disk_free_limit_bytes = limit;
        }
        if let Some(interval) = file.disk_check_interval_ms {
            self.disk_check_interval_ms = interval;
        }
    }

    /// Checks what can be checked without touching the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(shards) = self.shards
            && (shards == 0 || shards > SHARD_COUNT_MAX)
        {
            return Err(ConfigError::Invalid {
                field: "shards",
                message: format!("{shards} is outside 1..={SHARD_COUNT_MAX}"),
            });
        }
        if self.cpus.as_ref().is_some_and(|cpus| cpus.is_empty()) {
            return Err(ConfigError::Invalid {
                field: "cpus",
                message: "the list is empty".to_string(),
            });
        }
        if self.disk_check_interval_ms < DISK_CHECK_INTERVAL_MS_MIN {
            return Err(ConfigError::Invalid {
                field: "disk_check_interval_ms",
                message: format!(
                    "{} is below {DISK_CHECK_INTERVAL_MS_MIN}",
                    self.disk_check_interval_ms
                ),
            });
        }
        if self.listen.parse::<SocketAddr>().is_err() && !self.listen.contains(':') {
            return Err(ConfigError::Invalid {
                field: "listen",
                message: format!("{:?} is not host:port", self.listen),
            });
        }
        // The handshake promises this prefetch; a queue refuses any above its own maximum.
        let prefetch_max = self.limits.prefetch_max;
        if prefetch_max == 0 || prefetch_max > crate::queue::PREFETCH_COUNT_MAX {
            return Err(ConfigError::Invalid {
                field: "limits.prefetch_max",
                message: format!(
                    "{prefetch_max} is outside 1..={}",
                    crate::queue::PREFETCH_COUNT_MAX
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefetch_maximum_above_what_a_queue_takes_is_refused() {
        let mut config = Config::default();
        assert!(config.validate().is_ok());
        for prefetch_max in [0, crate::queue::PREFETCH_COUNT_MAX + 1] {
            config.limits.prefetch_max = prefetch_max;
            assert!(config.validate().is_err(), "{prefetch_max}");
        }
    }

    #[test]
    fn an_empty_file_keeps_every_default() {
        let file: ConfigFile = toml::from_str("").unwrap();
        let mut config = Config::default();
        config.apply(file);
        assert_eq!(config, Config::default());
    }

    #[test]
    fn a_file_overrides_only_what_it_sets() {
        let file: ConfigFile = toml::from_str("shards = 3\nlisten = \"0.0.0.0:7000\"").unwrap();
        let mut config = Config::default();
        config.apply(file);
        assert_eq!(config.shards, Some(3));
        assert_eq!(config.listen, "0.0.0.0:7000");
        assert_eq!(config.data_dir, PathBuf::from(DATA_DIR_DEFAULT));
    }

    #[test]
    fn the_free_space_and_flow_limits_are_read_from_the_file() {
        let text = "disk_free_limit_bytes = 0\ndisk_check_interval_ms = 50\n[limits]\n\
                    queue_memory_max_bytes = 1024\nunconfirmed_bytes_max = 2048\n\
                    unacked_per_connection_max = 7\n";
        let file: ConfigFile = toml::from_str(text).unwrap();
        let mut config = Config::default();
        config.apply(file);
        assert_eq!(config.disk_free_limit_bytes, 0);
        assert_eq!(config.disk_check_interval_ms, 50);
        assert_eq!(config.limits.queue_memory_max_bytes, 1024);
        assert_eq!(config.limits.unconfirmed_bytes_max, 2048);
        assert_eq!(config.limits.unacked_per_connection_max, 7);
        assert_eq!(config.limits.prefetch_max, Limits::default().prefetch_max);
        assert_eq!(
            Config::default().disk_free_limit_bytes,
            DISK_FREE_LIMIT_BYTES_DEFAULT
        );
        let too_often = Config {
            disk_check_interval_ms: DISK_CHECK_INTERVAL_MS_MIN - 1,
            ..Config::default()
        };
        assert!(too_often.validate().is_err());
    }

    #[test]
    fn an_unknown_key_is_refused_rather_than_ignored() {
        let result: Result<ConfigFile, _> = toml::from_str("shard = 2");
        assert!(result.is_err());
    }

    #[test]
    fn zero_shards_and_an_empty_cpu_list_are_invalid() {
        let config = Config {
            shards: Some(0),
            ..Config::default()
        };
        assert!(config.validate().is_err());
        let config = Config {
            cpus: Some(vec![]),
            ..Config::default()
        };
        assert!(config.validate().is_err());
        let config = Config {
            shards: Some(SHARD_COUNT_MAX + 1),
            ..Config::default()
        };
        assert!(config.validate().is_err());
        assert!(Config::default().validate().is_ok());
    }
}
