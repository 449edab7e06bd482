//! Command-line flags, the W1–W6 presets, and the resolved parameters of one run.
//!
//! A preset fills in every workload parameter; any flag given explicitly overrides it. The
//! resolved [`RunConfig`] is what the orchestrator runs and what the report records, so a
//! parameter that is not in it cannot silently fail to reach the code being measured.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::driver::{Durability, ExchangeKind};
use crate::payload::PRODUCER_COUNT_MAX;
use crate::size::SizeDistribution;

/// Unconfirmed messages per producer when neither preset nor flag says.
pub const WINDOW_DEFAULT_MESSAGES: usize = 256;
/// Messages per publish call in the as-fast-as-possible mode.
pub const BATCH_DEFAULT_MESSAGES: usize = 64;
/// Prefetch per subscription; above the ack interval so that acking every 100 never stalls.
pub const PREFETCH_DEFAULT_MESSAGES: u16 = 1_000;
pub const ACK_EVERY_DEFAULT_MESSAGES: u32 = 100;
pub const DURATION_DEFAULT_SECS: f64 = 15.0;
/// Connections are real sockets and broker processes; more than this is a typo on 2 cores.
pub const CONNECTION_COUNT_MAX: usize = 1_024;
pub const QUEUE_COUNT_MAX: usize = 100_000;
/// Tolerance for comparing with reference figures, as the issue asks (within 20 %).
pub const REFERENCE_TOLERANCE_RATIO: f64 = 0.20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DriverKind {
    /// Ruuster through `ruuster-client`, each connection on the shard that owns its queues.
    Ruuster,
    /// AMQP 0-9-1 through lapin (RabbitMQ).
    Amqp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
pub enum Workload {
    /// 1 producer, 1 consumer, 1 queue, 1 KiB, as fast as confirms allow, `written`.
    W1,
    /// As W1 at `fsynced` (RabbitMQ: durable classic queue, or quorum with --amqp-queue-type).
    W2,
    /// 100 B, 1 producer, 1 consumer, as fast as possible, `written`.
    W3,
    /// 1 KiB at a fixed 10,000 msg/s, one message per publish, `written` (or --durability).
    W4,
    /// Fanout to 8 queues, 1 consumer each, 1 KiB, `fsynced`.
    W5,
    /// 64 producers over 1,000 queues by routing key, 1 consumer per 100 queues, `fsynced`.
    W6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AmqpQueueType {
    Classic,
    Quorum,
    Stream,
}

/// How consumers acknowledge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum AckMode {
    /// The broker treats a delivery as acknowledged when it sends it.
    Auto,
    /// One ack per delivery.
    Single,
    /// One cumulative ack every `messages` deliveries (and one for the rest at the end).
    Every { messages: u32 },
}

impl FromStr for AckMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(AckMode::Auto),
            "single" => Ok(AckMode::Single),
            _ => {
                let count = text
                    .strip_prefix("every:")
                    .and_then(|count| count.parse::<u32>().ok())
                    .filter(|&count| count > 0)
                    .ok_or_else(|| format!("'{text}' is not auto, single or every:N (N > 0)"))?;
                Ok(AckMode::Every { messages: count })
            }
        }
    }
}

impl fmt::Display for AckMode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AckMode::Auto => formatter.write_str("auto"),
            AckMode::Single => formatter.write_str("single"),
            AckMode::Every { messages } => write!(formatter, "every:{messages}"),
        }
    }
}

/// Benchmark a message broker: latency and throughput under a chosen topology and load.
///
/// Latency is end to end (publish to delivery, from a timestamp carried in each payload) and
/// publish to confirm. At a fixed rate both are also measured from the intended send time, so
/// that a stalled producer cannot hide the stall (coordinated omission). A progress line prints
/// every second; at the end the run writes bench-results/<date>-<label>/ with report.json, one
/// .hgrm percentile file per latency series and latency-percentiles.svg.
///
/// Examples: ruuster-loadgen --workload W1 --ruuster-address 127.0.0.1:5690 --label w1
///           ruuster-loadgen --driver amqp --workload W1 --amqp-uri amqp://127.0.0.1:5672/%2f
#[derive(Debug, Clone, Parser)]
#[command(name = "ruuster-loadgen", version, verbatim_doc_comment)]
pub struct Cli {
    /// Broker driver: `ruuster` (through ruuster-client) or `amqp` (RabbitMQ, through lapin).
    #[arg(long, value_enum, default_value_t = DriverKind::Ruuster)]
    pub driver: DriverKind,

    /// Preset for the standard workloads; flags given explicitly override its values.
    #[arg(long, value_enum, ignore_case = true)]
    pub workload: Option<Workload>,

    /// Ruuster broker's client address, host:port. Connections then move to the port of the
    /// shard that owns their queues, which the handshake lists.
    #[arg(long, default_value = "127.0.0.1:5690")]
    pub ruuster_address: String,

    /// Keep every Ruuster connection on the shard that accepted it on --ruuster-address instead
    /// of moving it to the shard that owns its queues.
    #[arg(long)]
    pub ruuster_any_shard: bool,

    /// AMQP URI of the broker (loopback only in this project's benchmarks).
    #[arg(long, default_value = "amqp://127.0.0.1:5672/%2f")]
    pub amqp_uri: String,

    /// AMQP queue type (x-queue-type). Quorum and stream queues are always durable.
    #[arg(long, value_enum, default_value_t = AmqpQueueType::Classic)]
    pub amqp_queue_type: AmqpQueueType,

    /// Exchange type. Each queue is bound with its own key; producers publish to those keys.
    /// [default: direct]
    #[arg(long, value_enum)]
    pub exchange_type: Option<ExchangeKind>,

    /// Number of queues. [default: 1]
    #[arg(long)]
    pub queues: Option<usize>,

    /// Number of producers, each with its own channel and window. [default: 1]
    #[arg(long)]
    pub producers: Option<usize>,

    /// Number of consumers. With fewer consumers than queues each consumer takes every C-th
    /// queue; with more, consumers share queues. 0 runs publish-only. [default: 1]
    #[arg(long)]
    pub consumers: Option<usize>,

    /// Connections the producers are spread over, round robin. [default: one per producer]
    #[arg(long)]
    pub producer_connections: Option<usize>,

    /// Connections the consumers are spread over, round robin. [default: one per consumer]
    #[arg(long)]
    pub consumer_connections: Option<usize>,

    /// Payload size in bytes, at least 24 (the stamp): `1024`, `uniform:MIN-MAX` or
    /// `choice:A,B,C`. [default: 1024]
    #[arg(long)]
    pub size: Option<SizeDistribution>,

    /// Open-loop publish rate in messages per second over all producers, paced from the
    /// intended send times. Without it producers publish as fast as the window allows.
    #[arg(long)]
    pub rate: Option<u64>,

    /// Most unconfirmed messages per producer; publishing waits for confirms beyond it.
    /// [default: 256]
    #[arg(long)]
    pub window: Option<usize>,

    /// Messages per publish call; at a fixed rate, the most that a late producer catches up
    /// with at once. [default: 64, or 1 with --rate]
    #[arg(long)]
    pub batch: Option<usize>,

    /// How long producers publish, in seconds. [default: 15 unless --count is given]
    #[arg(long)]
    pub duration_secs: Option<f64>,

    /// Messages to publish over all producers; with --duration-secs, whichever ends first.
    #[arg(long)]
    pub count: Option<u64>,

    /// Requested durability. AMQP maps memory and written to transient queues and messages,
    /// and fsynced to durable queues with persistent messages. [default: from the workload,
    /// else written]
    #[arg(long, value_enum)]
    pub durability: Option<Durability>,

    /// Publish without publisher confirms (fire and forget): no window, no confirm latency.
    #[arg(long)]
    pub no_confirms: bool,

    /// Unacknowledged deliveries the broker may push per subscription. [default: 1000]
    #[arg(long)]
    pub prefetch: Option<u16>,

    /// Acknowledgement mode: `auto`, `single` or `every:N` (one cumulative ack per N
    /// deliveries; N must not exceed --prefetch). [default: every:100]
    #[arg(long)]
    pub ack: Option<AckMode>,

    /// PID of the broker, to report its CPU time (schedstat) and CPU affinity.
    #[arg(long)]
    pub broker_pid: Option<u32>,

    /// Name of the result folder, bench-results/<date>-<label>/. [default: the workload, or
    /// `custom`]
    #[arg(long)]
    pub label: Option<String>,

    /// Folder that holds the dated result folders.
    #[arg(long, default_value = "bench-results")]
    pub results_dir: PathBuf,

    /// Replace an existing result folder of the same date and label.
    #[arg(long)]
    pub overwrite: bool,

    /// The pacer wakes this many microseconds early and spins the rest of the way.
    #[arg(long, default_value_t = 20)]
    pub pacer_spin_us: u64,

    /// After publishing ends, how long to wait for outstanding confirms and deliveries.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout_secs: f64,

    /// Seed for the size distribution.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// tokio worker threads for producers and consumers (the pacer has its own thread).
    #[arg(long, default_value_t = 2)]
    pub worker_threads: usize,

    /// Prefix of the exchange and queue names; an earlier run's queues under it are deleted.
    #[arg(long, default_value = "loadgen")]
    pub name_prefix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuusterConfig {
    pub address: String,
    /// Connections stay where they were accepted instead of moving to their queues' owner.
    pub any_shard: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AmqpConfig {
    pub uri: String,
    pub queue_type: AmqpQueueType,
}

/// Every parameter of a run after presets and flags are combined.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    pub driver: DriverKind,
    pub workload: Option<Workload>,
    pub label: String,
    pub exchange_kind: ExchangeKind,
    pub queue_count: usize,
    pub producer_count: usize,
    pub consumer_count: usize,
    pub producer_connection_count: usize,
    pub consumer_connection_count: usize,
    pub size: SizeDistribution,
    /// `None`: as fast as the window allows.
    pub rate_msgs_per_sec: Option<u64>,
    pub window_messages: usize,
    pub batch_messages: usize,
    pub duration_secs: Option<f64>,
    pub message_count: Option<u64>,
    pub durability: Durability,
    pub confirms: bool,
    pub prefetch_messages: u16,
    pub ack: AckMode,
    pub ruuster: RuusterConfig,
    pub amqp: AmqpConfig,
    pub broker_pid: Option<u32>,
    pub pacer_spin_us: u64,
    pub drain_timeout_secs: f64,
    pub seed: u64,
    pub worker_threads: usize,
    pub name_prefix: String,
}

#[derive(Debug, Clone, Copy)]
struct Preset {
    producers: usize,
    consumers: usize,
    queues: usize,
    exchange_kind: ExchangeKind,
    size_bytes: usize,
    rate_msgs_per_sec: Option<u64>,
    batch_messages: usize,
    durability: Durability,
}

fn preset(workload: Workload) -> Preset {
    let w1 = Preset {
        producers: 1,
        consumers: 1,
        queues: 1,
        exchange_kind: ExchangeKind::Direct,
        size_bytes: 1024,
        rate_msgs_per_sec: None,
        batch_messages: BATCH_DEFAULT_MESSAGES,
        durability: Durability::Written,
    };
    match workload {
        Workload::W1 => w1,
        Workload::W2 => Preset {
            durability: Durability::Fsynced,
            ..w1
        },
        Workload::W3 => Preset {
            size_bytes: 100,
            ..w1
        },
        Workload::W4 => Preset {
            rate_msgs_per_sec: Some(10_000),
            batch_messages: 1,
            ..w1
        },
        Workload::W5 => Preset {
            consumers: 8,
            queues: 8,
            exchange_kind: ExchangeKind::Fanout,
            durability: Durability::Fsynced,
            ..w1
        },
        Workload::W6 => Preset {
            producers: 64,
            consumers: 10,
            queues: 1_000,
            durability: Durability::Fsynced,
            ..w1
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn check(condition: bool, message: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if condition {
        Ok(())
    } else {
        Err(ConfigError(message()))
    }
}

impl RunConfig {
    pub fn resolve(cli: &Cli) -> Result<RunConfig, ConfigError> {
        let base = cli.workload.map(preset).unwrap_or(Preset {
            producers: 1,
            consumers: 1,
            queues: 1,
            exchange_kind: ExchangeKind::Direct,
            size_bytes: 1024,
            rate_msgs_per_sec: None,
            batch_messages: BATCH_DEFAULT_MESSAGES,
            durability: Durability::Written,
        });
        let rate_msgs_per_sec = cli.rate.or(base.rate_msgs_per_sec);
        let paced_batch = if rate_msgs_per_sec.is_some() && cli.workload.is_none() {
            1
        } else {
            base.batch_messages
        };
        let producer_count = cli.producers.unwrap_or(base.producers);
        let consumer_count = cli.consumers.unwrap_or(base.consumers);
        let duration_secs = match (cli.duration_secs, cli.count) {
            (None, None) => Some(DURATION_DEFAULT_SECS),
            (duration, _) => duration,
        };
        let label = cli.label.clone().unwrap_or_else(|| match cli.workload {
            Some(workload) => format!("{workload:?}").to_lowercase(),
            None => "custom".to_owned(),
        });

        let config = RunConfig {
            driver: cli.driver,
            workload: cli.workload,
            label,
            exchange_kind: cli.exchange_type.unwrap_or(base.exchange_kind),
            queue_count: cli.queues.unwrap_or(base.queues),
            producer_count,
            consumer_count,
            producer_connection_count: cli.producer_connections.unwrap_or(producer_count),
            consumer_connection_count: cli.consumer_connections.unwrap_or(consumer_count),
            size: cli.size.clone().unwrap_or(SizeDistribution::Fixed {
                size_bytes: base.size_bytes,
            }),
            rate_msgs_per_sec,
            window_messages: cli.window.unwrap_or(WINDOW_DEFAULT_MESSAGES),
            batch_messages: cli.batch.unwrap_or(paced_batch),
            duration_secs,
            message_count: cli.count,
            durability: cli.durability.unwrap_or(base.durability),
            confirms: !cli.no_confirms,
            prefetch_messages: cli.prefetch.unwrap_or(PREFETCH_DEFAULT_MESSAGES),
            ack: cli.ack.unwrap_or(AckMode::Every {
                messages: ACK_EVERY_DEFAULT_MESSAGES,
            }),
            ruuster: RuusterConfig {
                address: cli.ruuster_address.clone(),
                any_shard: cli.ruuster_any_shard,
            },
            amqp: AmqpConfig {
                uri: cli.amqp_uri.clone(),
                queue_type: cli.amqp_queue_type,
            },
            broker_pid: cli.broker_pid,
            pacer_spin_us: cli.pacer_spin_us,
            drain_timeout_secs: cli.drain_timeout_secs,
            seed: cli.seed,
            worker_threads: cli.worker_threads,
            name_prefix: cli.name_prefix.clone(),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check((1..=QUEUE_COUNT_MAX).contains(&self.queue_count), || {
            format!(
                "--queues {} is outside 1..={QUEUE_COUNT_MAX}",
                self.queue_count
            )
        })?;
        check(
            (1..PRODUCER_COUNT_MAX).contains(&self.producer_count),
            || {
                format!(
                    "--producers {} is outside 1..{PRODUCER_COUNT_MAX}",
                    self.producer_count
                )
            },
        )?;
        check(
            (1..=self.producer_count.min(CONNECTION_COUNT_MAX))
                .contains(&self.producer_connection_count),
            || {
                format!(
                    "--producer-connections {} must be 1..=min(producers, {CONNECTION_COUNT_MAX})",
                    self.producer_connection_count
                )
            },
        )?;
        if self.consumer_count > 0 {
            check(
                (1..=self.consumer_count.min(CONNECTION_COUNT_MAX))
                    .contains(&self.consumer_connection_count),
                || {
                    format!(
                        "--consumer-connections {} must be 1..=min(consumers, {})",
                        self.consumer_connection_count, CONNECTION_COUNT_MAX
                    )
                },
            )?;
        }
        check(
            self.window_messages >= 1 && self.window_messages <= u32::MAX as usize,
            || "--window must be at least 1".to_owned(),
        )?;
        check(
            self.batch_messages >= 1 && self.batch_messages <= self.window_messages,
            || {
                format!(
                    "--batch {} must be 1..=window {}",
                    self.batch_messages, self.window_messages
                )
            },
        )?;
        check(self.rate_msgs_per_sec != Some(0), || {
            "--rate must be positive".to_owned()
        })?;
        check(
            self.duration_secs
                .is_none_or(|secs| secs > 0.0 && secs.is_finite()),
            || "--duration-secs must be a positive number".to_owned(),
        )?;
        check(self.message_count != Some(0), || {
            "--count must be positive".to_owned()
        })?;
        check(self.prefetch_messages >= 1, || {
            "--prefetch must be at least 1".to_owned()
        })?;
        if let AckMode::Every { messages } = self.ack {
            check(messages <= u32::from(self.prefetch_messages), || {
                format!(
                    "--ack every:{messages} exceeds --prefetch {}: it would never fire",
                    self.prefetch_messages
                )
            })?;
        }
        check(
            self.drain_timeout_secs >= 0.0 && self.drain_timeout_secs.is_finite(),
            || "--drain-timeout-secs must be a non-negative number".to_owned(),
        )?;
        check(self.worker_threads >= 1, || {
            "--worker-threads must be at least 1".to_owned()
        })?;
        check(
            !self.label.is_empty()
                && self
                    .label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            || {
                format!(
                    "--label '{}' must be letters, digits, '-' or '_'",
                    self.label
                )
            },
        )?;
        Ok(())
    }

    /// Queues that producer `index` publishes to, in turn.
    pub fn producer_queues(&self, index: usize) -> Vec<usize> {
        spread(index, self.producer_count, self.queue_count)
    }

    /// Queues that consumer `index` subscribes to.
    pub fn consumer_queues(&self, index: usize) -> Vec<usize> {
        spread(index, self.consumer_count, self.queue_count)
    }
}

/// With fewer workers than queues, worker `index` takes every `worker_count`-th queue; with
/// more, workers take one queue each, round robin.
fn spread(index: usize, worker_count: usize, queue_count: usize) -> Vec<usize> {
    if worker_count <= queue_count {
        (index..queue_count).step_by(worker_count).collect()
    } else {
        vec![index % queue_count]
    }
}

/// Independently measured figures that a run of this shape should reproduce.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReferenceFigures {
    pub description: &'static str,
    pub throughput_msgs_per_sec: Option<f64>,
    pub end_to_end_p50_us: Option<f64>,
    pub end_to_end_p99_us: Option<f64>,
}

/// RabbitMQ 3.10.8 figures measured on this kind of machine (shared/research/
/// anchors-performance.md, window 256, batches of 64, 1 producer, 1 consumer, 1 KiB). They
/// apply only when the run has exactly that shape.
pub fn reference_for(config: &RunConfig) -> Option<ReferenceFigures> {
    let shape_matches = config.driver == DriverKind::Amqp
        && config.size == SizeDistribution::Fixed { size_bytes: 1024 }
        && config.producer_count == 1
        && config.consumer_count == 1
        && config.queue_count == 1
        && config.window_messages == WINDOW_DEFAULT_MESSAGES;
    if !shape_matches {
        return None;
    }
    let classic = config.amqp.queue_type == AmqpQueueType::Classic;
    let max_rate = config.rate_msgs_per_sec.is_none() && config.batch_messages == 64;
    let throughput = |description, msgs_per_sec| ReferenceFigures {
        description,
        throughput_msgs_per_sec: Some(msgs_per_sec),
        end_to_end_p50_us: None,
        end_to_end_p99_us: None,
    };
    match (config.workload?, config.durability, config.amqp.queue_type) {
        (Workload::W1, Durability::Memory | Durability::Written, AmqpQueueType::Classic)
            if max_rate =>
        {
            Some(if config.confirms {
                throughput(
                    "RabbitMQ 3.10.8 transient classic queue (issue: with confirms)",
                    90_000.0,
                )
            } else {
                throughput(
                    "RabbitMQ 3.10.8 transient classic queue, no confirms",
                    90_000.0,
                )
            })
        }
        (Workload::W2, Durability::Fsynced, AmqpQueueType::Classic) if max_rate => {
            Some(throughput(
                "RabbitMQ 3.10.8 durable classic queue, persistent, confirms",
                26_500.0,
            ))
        }
        (Workload::W2, Durability::Fsynced, AmqpQueueType::Quorum) if max_rate => Some(throughput(
            "RabbitMQ 3.10.8 quorum queue, confirms",
            36_000.0,
        )),
        (Workload::W4, Durability::Memory | Durability::Written, _)
            if classic && config.rate_msgs_per_sec == Some(10_000) =>
        {
            Some(ReferenceFigures {
                description: "RabbitMQ 3.10.8 transient classic queue at 10,000 msg/s",
                throughput_msgs_per_sec: None,
                end_to_end_p50_us: Some(174.0),
                end_to_end_p99_us: Some(873.0),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(arguments: &[&str]) -> Result<RunConfig, ConfigError> {
        let mut all = vec!["ruuster-loadgen"];
        all.extend_from_slice(arguments);
        RunConfig::resolve(&Cli::try_parse_from(all).unwrap())
    }

    #[test]
    fn w4_sets_a_fixed_rate_of_single_message_publishes() {
        let config = resolve(&["--workload", "W4"]).unwrap();
        assert_eq!(config.rate_msgs_per_sec, Some(10_000));
        assert_eq!(config.batch_messages, 1);
        assert_eq!(config.durability, Durability::Written);
        assert_eq!(config.label, "w4");
    }

    #[test]
    fn explicit_flags_override_the_preset() {
        let config = resolve(&[
            "--workload",
            "W2",
            "--durability",
            "written",
            "--size",
            "100",
        ])
        .unwrap();
        assert_eq!(config.durability, Durability::Written);
        assert_eq!(config.size, SizeDistribution::Fixed { size_bytes: 100 });
        assert_eq!(config.window_messages, 256);
    }

    #[test]
    fn w6_spreads_a_thousand_queues_over_sixty_four_producers_and_ten_consumers() {
        let config = resolve(&["--workload", "W6"]).unwrap();
        assert_eq!(config.producer_queues(0).len(), 16);
        assert_eq!(config.producer_queues(63).len(), 15);
        let total: usize = (0..64)
            .map(|index| config.producer_queues(index).len())
            .sum();
        assert_eq!(total, 1_000);
        for index in 0..10 {
            assert_eq!(config.consumer_queues(index).len(), 100);
        }
    }

    #[test]
    fn more_consumers_than_queues_share_queues_round_robin() {
        let config = resolve(&["--queues", "2", "--consumers", "5"]).unwrap();
        let queues: Vec<Vec<usize>> = (0..5).map(|index| config.consumer_queues(index)).collect();
        assert_eq!(queues, vec![vec![0], vec![1], vec![0], vec![1], vec![0]]);
    }

    #[test]
    fn an_ack_interval_beyond_the_prefetch_is_refused() {
        let error = resolve(&["--prefetch", "50", "--ack", "every:100"]).unwrap_err();
        assert!(error.0.contains("never fire"), "{error}");
    }

    #[test]
    fn a_batch_larger_than_the_window_is_refused() {
        assert!(resolve(&["--window", "8", "--batch", "16"]).is_err());
    }

    #[test]
    fn ack_modes_parse_and_print_back() {
        for text in ["auto", "single", "every:64"] {
            assert_eq!(text.parse::<AckMode>().unwrap().to_string(), text);
        }
        assert!("every:0".parse::<AckMode>().is_err());
        assert!("sometimes".parse::<AckMode>().is_err());
    }

    #[test]
    fn references_apply_only_to_the_shapes_they_were_measured_with() {
        let w2_quorum = resolve(&[
            "--driver",
            "amqp",
            "--workload",
            "W2",
            "--amqp-queue-type",
            "quorum",
        ])
        .unwrap();
        assert_eq!(
            reference_for(&w2_quorum).unwrap().throughput_msgs_per_sec,
            Some(36_000.0)
        );
        let w4 = resolve(&["--driver", "amqp", "--workload", "W4"]).unwrap();
        assert_eq!(reference_for(&w4).unwrap().end_to_end_p99_us, Some(873.0));
        let ruuster_w4 = resolve(&["--workload", "W4"]).unwrap();
        assert_eq!(reference_for(&ruuster_w4), None);
        let bigger = resolve(&["--workload", "W1", "--size", "2048"]).unwrap();
        assert_eq!(reference_for(&bigger), None);
        let w3 = resolve(&["--workload", "W3"]).unwrap();
        assert_eq!(reference_for(&w3), None);
    }

    #[test]
    fn without_duration_or_count_a_run_lasts_the_default_duration() {
        let config = resolve(&[]).unwrap();
        assert_eq!(config.duration_secs, Some(DURATION_DEFAULT_SECS));
        let counted = resolve(&["--count", "500"]).unwrap();
        assert_eq!(counted.duration_secs, None);
        assert_eq!(counted.message_count, Some(500));
    }
}
