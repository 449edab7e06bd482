//! The orchestrator: sets up the topology and connections through a [`Driver`], runs producers,
//! consumers and the pacer, prints progress every second, drains, and collects the outcome.
//!
//! Every wait is bounded: publishing by the duration or count, draining by
//! `drain_timeout_secs`, and a producer waiting for window room gives up when the run aborts.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::clock;
use crate::config::{AckMode, RunConfig};
use crate::driver::{
    BrokerCounter, ConfirmSink, ConnectionPlacement, ConnectionSpec, Consumer, ConsumerSpec,
    Driver, DriverError, Durability, ExchangeKind, OutgoingMessage, Producer, ProducerSpec,
    PublishBatch, QueueSpec, Role, Topology,
};
use crate::latency::LatencySummary;
use crate::metrics::Metrics;
use crate::pacer::{self, PacerConfig, PacerOutcome, Schedule, Tick};
use crate::payload::Stamp;
use crate::size::SizeSampler;
use crate::system;
use crate::window::ProducerWindow;

const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
const DRAIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Latencies a consumer collects before taking the series lock, and the longest it holds them,
/// so that the progress line is never more than this stale.
const LATENCY_FLUSH_COUNT: usize = 64;
const LATENCY_FLUSH_INTERVAL_NS: u64 = 100_000_000;
/// A run bounded only by `--count` that is still publishing after this is stuck (a broker that
/// stopped confirming, say); it is aborted and reported rather than left to hang.
const COUNT_RUN_PUBLISH_LIMIT: Duration = Duration::from_secs(600);
/// Grace after the drain deadline for tasks to notice the stop and return.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const NS_PER_SEC: f64 = 1e9;

#[derive(Debug)]
pub enum RunError {
    Driver {
        step: &'static str,
        source: DriverError,
    },
    Pacer(std::io::Error),
}

impl fmt::Display for RunError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Driver { step, source } => write!(formatter, "{step}: {source}"),
            RunError::Pacer(error) => write!(formatter, "starting the pacer thread: {error}"),
        }
    }
}

impl std::error::Error for RunError {}

fn at(step: &'static str) -> impl FnOnce(DriverError) -> RunError {
    move |source| RunError::Driver { step, source }
}

/// One progress line, kept for the report as well as printed.
#[derive(Debug, Clone, Serialize)]
pub struct ProgressSample {
    pub elapsed_secs: f64,
    pub published_msgs_per_sec: f64,
    pub confirmed_msgs_per_sec: f64,
    pub delivered_msgs_per_sec: f64,
    pub end_to_end_p50_ns: u64,
    pub end_to_end_p99_ns: u64,
    pub publish_to_confirm_p50_ns: u64,
    pub publish_to_confirm_p99_ns: u64,
    pub error_count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuSample {
    pub loadgen_cpu_ns: u64,
    pub broker_cpu_ns: Option<u64>,
}

impl CpuSample {
    fn read(broker_pid: Option<u32>) -> CpuSample {
        CpuSample {
            loadgen_cpu_ns: system::process_cpu_ns(std::process::id()).unwrap_or(0),
            broker_cpu_ns: broker_pid.and_then(|pid| system::process_cpu_ns(pid).ok()),
        }
    }
}

#[derive(Debug)]
pub struct RunOutcome {
    pub driver_name: &'static str,
    pub topology: Topology,
    pub metrics: Arc<Metrics>,
    pub started_ns: u64,
    pub publish_ended_ns: u64,
    pub finished_ns: u64,
    pub expected_delivery_count: u64,
    /// Every expected delivery arrived and every publish was settled before the drain timeout.
    pub drained: bool,
    pub placements: Vec<ConnectionPlacement>,
    pub counters: Vec<BrokerCounter>,
    pub counters_error: Option<String>,
    pub pacer: Option<PacerOutcome>,
    pub progress: Vec<ProgressSample>,
    pub cpu_start: CpuSample,
    pub cpu_end: CpuSample,
}

pub fn topology_of(config: &RunConfig) -> Topology {
    let queues = (0..config.queue_count)
        .map(|index| {
            let name = format!("{}-q{index}", config.name_prefix);
            QueueSpec {
                binding_key: name.clone(),
                name,
            }
        })
        .collect();
    Topology {
        exchange_name: format!("{}-exchange", config.name_prefix),
        exchange_kind: config.exchange_kind,
        queues,
        durable: config.durability == Durability::Fsynced,
    }
}

/// Splits `total` into `parts` shares that differ by at most one.
pub fn share_of(total: u64, parts: usize, index: usize) -> u64 {
    let parts = parts as u64;
    total / parts + u64::from((index as u64) < total % parts)
}

struct ProducerContext {
    index: usize,
    routing_keys: Vec<String>,
    window: Option<Arc<ProducerWindow>>,
    metrics: Arc<Metrics>,
    sampler: SizeSampler,
    batch_messages: usize,
    quota: Option<u64>,
    deadline_ns: Option<u64>,
    ticks: Option<mpsc::Receiver<Tick>>,
    abort: watch::Receiver<bool>,
}

/// Publishes until the quota, deadline or pacer ends, then hands the producer back: dropping it
/// would close its channel and turn the confirms still in flight into errors.
async fn produce<P: Producer>(mut producer: P, mut context: ProducerContext) -> P {
    let mut sequence = 0u64;
    let mut buffers: Vec<Vec<u8>> = vec![Vec::new(); context.batch_messages];
    let mut intended_ns: Vec<u64> = Vec::with_capacity(context.batch_messages);
    let mut times: Vec<(u64, u64)> = Vec::with_capacity(context.batch_messages);

    loop {
        intended_ns.clear();
        let count = if let Some(ticks) = &mut context.ticks {
            let Some(first) = ticks.recv().await else {
                break;
            };
            intended_ns.push(first.intended_ns);
            while intended_ns.len() < context.batch_messages {
                let Ok(tick) = ticks.try_recv() else { break };
                intended_ns.push(tick.intended_ns);
            }
            intended_ns.len()
        } else {
            let remaining = context.quota.map_or(u64::MAX, |quota| quota - sequence);
            let past_deadline = context
                .deadline_ns
                .is_some_and(|end_ns| clock::now_ns() >= end_ns);
            if remaining == 0 || past_deadline {
                break;
            }
            remaining.min(context.batch_messages as u64) as usize
        };

        if let Some(window) = &context.window {
            tokio::select! {
                biased;
                _ = context.abort.wait_for(|aborted| *aborted) => break,
                () = window.reserve(count) => {}
            }
        }

        let send_ns = clock::now_ns();
        times.clear();
        let mut batch_bytes = 0u64;
        for (offset, buffer) in buffers.iter_mut().take(count).enumerate() {
            let intended = intended_ns.get(offset).copied().unwrap_or(send_ns);
            let stamp = Stamp {
                send_ns,
                intended_ns: intended,
                sequence: Stamp::sequence_of(context.index, sequence + offset as u64),
            };
            buffer.resize(context.sampler.next_size_bytes(), 0);
            stamp.write(buffer).expect("sizes are at least the stamp");
            batch_bytes += buffer.len() as u64;
            times.push((send_ns, intended));
        }
        if let Some(window) = &context.window {
            window.record_sent(sequence, &times);
        }
        let messages: Vec<OutgoingMessage<'_>> = buffers[..count]
            .iter()
            .enumerate()
            .map(|(offset, buffer)| {
                let key_index = (sequence as usize + offset) % context.routing_keys.len();
                OutgoingMessage {
                    routing_key: &context.routing_keys[key_index],
                    payload: buffer,
                }
            })
            .collect();

        context.metrics.mark_publish(send_ns);
        let batch = PublishBatch {
            first_sequence: sequence,
            messages: &messages,
        };
        if let Err(error) = producer.publish(batch).await {
            context
                .metrics
                .record_error(format_args!("producer {}: {error}", context.index));
            break;
        }
        context
            .metrics
            .published_count
            .fetch_add(count as u64, Ordering::Relaxed);
        context
            .metrics
            .published_bytes
            .fetch_add(batch_bytes, Ordering::Relaxed);
        sequence += count as u64;
    }
    producer
}

struct LatencyBuffer {
    from_send_ns: Vec<u64>,
    from_intended_ns: Vec<u64>,
    flushed_ns: u64,
}

impl LatencyBuffer {
    fn flush(&mut self, metrics: &Metrics) {
        metrics.end_to_end.record_all(&self.from_send_ns);
        metrics
            .end_to_end_from_intended
            .record_all(&self.from_intended_ns);
        self.from_send_ns.clear();
        self.from_intended_ns.clear();
    }
}

async fn consume<C: Consumer>(
    mut consumer: C,
    index: usize,
    ack: AckMode,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut latencies = LatencyBuffer {
        from_send_ns: Vec::with_capacity(LATENCY_FLUSH_COUNT),
        from_intended_ns: Vec::with_capacity(LATENCY_FLUSH_COUNT),
        flushed_ns: clock::now_ns(),
    };
    let mut unacked_count = 0u32;
    let mut last_tag = None;

    loop {
        let next = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break,
            next = consumer.next_delivery() => next,
        };
        let delivery = match next {
            Ok(Some(delivery)) => delivery,
            Ok(None) => break,
            Err(error) => {
                metrics.record_error(format_args!("consumer {index}: {error}"));
                break;
            }
        };
        let now_ns = clock::now_ns();

        match Stamp::read(&delivery.payload) {
            Ok(stamp) => {
                latencies
                    .from_send_ns
                    .push(now_ns.saturating_sub(stamp.send_ns));
                latencies
                    .from_intended_ns
                    .push(now_ns.saturating_sub(stamp.intended_ns));
            }
            Err(_) => {
                metrics.malformed_count.fetch_add(1, Ordering::Relaxed);
            }
        }
        metrics.delivered_count.fetch_add(1, Ordering::Relaxed);
        metrics
            .delivered_bytes
            .fetch_add(delivery.payload.len() as u64, Ordering::Relaxed);
        metrics
            .last_delivery_ns
            .fetch_max(now_ns, Ordering::Relaxed);
        if delivery.redelivered {
            metrics.redelivered_count.fetch_add(1, Ordering::Relaxed);
        }
        if latencies.from_send_ns.len() >= LATENCY_FLUSH_COUNT
            || now_ns.saturating_sub(latencies.flushed_ns) >= LATENCY_FLUSH_INTERVAL_NS
        {
            latencies.flush(&metrics);
            latencies.flushed_ns = now_ns;
        }

        let acked = match ack {
            AckMode::Auto => Ok(()),
            AckMode::Single => consumer.ack(delivery.tag, false).await,
            AckMode::Every { messages } => {
                unacked_count += 1;
                last_tag = Some(delivery.tag);
                if unacked_count >= messages {
                    unacked_count = 0;
                    last_tag = None;
                    consumer.ack(delivery.tag, true).await
                } else {
                    Ok(())
                }
            }
        };
        if let Err(error) = acked {
            metrics.record_error(format_args!("consumer {index}: {error}"));
            break;
        }
    }

    latencies.flush(&metrics);
    if let Some(tag) = last_tag
        && let Err(error) = consumer.ack(tag, true).await
    {
        metrics.record_error(format_args!("consumer {index} final ack: {error}"));
    }
}

fn progress_sample(
    metrics: &Metrics,
    elapsed_secs: f64,
    previous: &mut [u64; 3],
) -> ProgressSample {
    let current = [
        Metrics::load(&metrics.published_count),
        Metrics::load(&metrics.confirmed_count),
        Metrics::load(&metrics.delivered_count),
    ];
    let per_sec =
        |slot: usize| (current[slot] - previous[slot]) as f64 / PROGRESS_INTERVAL.as_secs_f64();
    let end_to_end = LatencySummary::of(&metrics.end_to_end.take_interval());
    let confirm = LatencySummary::of(&metrics.publish_to_confirm.take_interval());
    let sample = ProgressSample {
        elapsed_secs,
        published_msgs_per_sec: per_sec(0),
        confirmed_msgs_per_sec: per_sec(1),
        delivered_msgs_per_sec: per_sec(2),
        end_to_end_p50_ns: end_to_end.p50_ns,
        end_to_end_p99_ns: end_to_end.p99_ns,
        publish_to_confirm_p50_ns: confirm.p50_ns,
        publish_to_confirm_p99_ns: confirm.p99_ns,
        error_count: Metrics::load(&metrics.error_count),
    };
    *previous = current;
    sample
}

fn print_progress(sample: &ProgressSample) {
    let us = |ns: u64| ns as f64 / 1_000.0;
    eprintln!(
        "[{:6.1}s] pub {:>9.0}/s  conf {:>9.0}/s  dlv {:>9.0}/s | e2e p50 {:>9.1} us p99 {:>9.1} \
         us | confirm p50 {:>9.1} us p99 {:>9.1} us | errors {}",
        sample.elapsed_secs,
        sample.published_msgs_per_sec,
        sample.confirmed_msgs_per_sec,
        sample.delivered_msgs_per_sec,
        us(sample.end_to_end_p50_ns),
        us(sample.end_to_end_p99_ns),
        us(sample.publish_to_confirm_p50_ns),
        us(sample.publish_to_confirm_p99_ns),
        sample.error_count,
    );
}

struct Progress {
    started_ns: u64,
    previous: [u64; 3],
    samples: Vec<ProgressSample>,
    next_ns: u64,
}

impl Progress {
    fn tick_if_due(&mut self, metrics: &Metrics) {
        let now_ns = clock::now_ns();
        if now_ns < self.next_ns {
            return;
        }
        self.next_ns += PROGRESS_INTERVAL.as_nanos() as u64;
        let elapsed_secs = (now_ns - self.started_ns) as f64 / NS_PER_SEC;
        let sample = progress_sample(metrics, elapsed_secs, &mut self.previous);
        print_progress(&sample);
        self.samples.push(sample);
    }
}

/// Connects `count` connections of `role`, where connection `index` carries the workers whose
/// index is congruent to it, and opens nothing on them yet.
async fn connect_all<D: Driver>(
    driver: &D,
    role: Role,
    count: usize,
    worker_count: usize,
    queues_of: impl Fn(usize) -> Vec<usize>,
    topology: &Topology,
    placements: &mut Vec<ConnectionPlacement>,
) -> Result<Vec<D::Connection>, RunError> {
    let mut connections = Vec::with_capacity(count);
    for index in 0..count {
        let mut queues: Vec<usize> = (index..worker_count)
            .step_by(count)
            .flat_map(&queues_of)
            .collect();
        queues.sort_unstable();
        queues.dedup();
        let spec = ConnectionSpec {
            role,
            index,
            queues: queues
                .iter()
                .map(|&queue| topology.queues[queue].name.clone())
                .collect(),
        };
        let connection = driver.connect(&spec).await.map_err(at("connect"))?;
        placements.push(driver.describe_connection(&spec, &connection));
        connections.push(connection);
    }
    Ok(connections)
}

async fn open_consumers<D: Driver>(
    driver: &D,
    config: &RunConfig,
    topology: &Topology,
    placements: &mut Vec<ConnectionPlacement>,
) -> Result<Vec<D::Consumer>, RunError> {
    let connections = connect_all(
        driver,
        Role::Consumer,
        config.consumer_connection_count.min(config.consumer_count),
        config.consumer_count,
        |index| config.consumer_queues(index),
        topology,
        placements,
    )
    .await?;
    let mut consumers = Vec::with_capacity(config.consumer_count);
    for index in 0..config.consumer_count {
        let queues = config.consumer_queues(index);
        let spec = ConsumerSpec {
            index,
            queues: queues
                .iter()
                .map(|&queue| topology.queues[queue].name.clone())
                .collect(),
            prefetch: config.prefetch_messages,
            auto_ack: config.ack == AckMode::Auto,
        };
        let connection = &connections[index % connections.len()];
        let consumer = driver.open_consumer(connection, &spec).await;
        consumers.push(consumer.map_err(at("open consumer"))?);
    }
    Ok(consumers)
}

type ProducersAndWindows<P> = (Vec<P>, Vec<Option<Arc<ProducerWindow>>>);

async fn open_producers<D: Driver>(
    driver: &D,
    config: &RunConfig,
    topology: &Topology,
    metrics: &Arc<Metrics>,
    placements: &mut Vec<ConnectionPlacement>,
) -> Result<ProducersAndWindows<D::Producer>, RunError> {
    let connections = connect_all(
        driver,
        Role::Producer,
        config.producer_connection_count,
        config.producer_count,
        |index| config.producer_queues(index),
        topology,
        placements,
    )
    .await?;
    let mut producers = Vec::with_capacity(config.producer_count);
    let mut windows = Vec::with_capacity(config.producer_count);
    for index in 0..config.producer_count {
        let window = Arc::new(ProducerWindow::new(config.window_messages));
        let spec = ProducerSpec {
            index,
            exchange_name: topology.exchange_name.clone(),
            durability: config.durability,
            confirms: config.confirms,
        };
        let sink = ConfirmSink::new(window.clone(), metrics.clone());
        let connection = &connections[index % connections.len()];
        let producer = driver.open_producer(connection, &spec, sink).await;
        producers.push(producer.map_err(at("open producer"))?);
        windows.push(config.confirms.then_some(window));
    }
    Ok((producers, windows))
}

type PacerStart = (
    Option<std::thread::JoinHandle<PacerOutcome>>,
    Vec<Option<mpsc::Receiver<Tick>>>,
);

/// Starts the pacer for a fixed-rate run and gives each producer its tick channel, whose
/// capacity (one window) is how far the pacer may run ahead of a slow producer before it blocks.
fn start_pacer(
    config: &RunConfig,
    started_ns: u64,
    deadline_ns: Option<u64>,
    stop: &Arc<AtomicBool>,
    metrics: &Metrics,
) -> Result<PacerStart, RunError> {
    let mut receivers: Vec<Option<mpsc::Receiver<Tick>>> =
        (0..config.producer_count).map(|_| None).collect();
    let Some(rate) = config.rate_msgs_per_sec else {
        return Ok((None, receivers));
    };
    let schedule = Schedule::new(started_ns, rate);
    let by_time = deadline_ns.map_or(u64::MAX, |end_ns| schedule.count_before(end_ns));
    let count = config.message_count.unwrap_or(u64::MAX).min(by_time);
    let mut senders = Vec::with_capacity(config.producer_count);
    for receiver in &mut receivers {
        let (sender, ticks) = mpsc::channel(config.window_messages);
        senders.push(sender);
        *receiver = Some(ticks);
    }
    let pacer_config = PacerConfig {
        schedule,
        count,
        spin: Duration::from_micros(config.pacer_spin_us),
    };
    let handle = pacer::spawn(
        pacer_config,
        senders,
        stop.clone(),
        metrics.pacer_lag.clone(),
    )
    .map_err(RunError::Pacer)?;
    Ok((Some(handle), receivers))
}

pub async fn run<D: Driver>(driver: Arc<D>, config: &RunConfig) -> Result<RunOutcome, RunError> {
    clock::init();
    let topology = topology_of(config);
    let metrics = Arc::new(Metrics::default());
    let mut placements = Vec::new();

    let control_spec = ConnectionSpec {
        role: Role::Control,
        index: 0,
        queues: topology
            .queues
            .iter()
            .map(|queue| queue.name.clone())
            .collect(),
    };
    let control = driver
        .connect(&control_spec)
        .await
        .map_err(at("connect control"))?;
    placements.push(driver.describe_connection(&control_spec, &control));
    driver
        .declare(&control, &topology)
        .await
        .map_err(at("declare topology"))?;

    let consumers = open_consumers(&*driver, config, &topology, &mut placements).await?;
    let (producers, windows) =
        open_producers(&*driver, config, &topology, &metrics, &mut placements).await?;

    let (stop_consumers, stop_receiver) = watch::channel(false);
    let (abort_producers, abort_receiver) = watch::channel(false);
    let cpu_start = CpuSample::read(config.broker_pid);
    let started_ns = clock::now_ns();
    let deadline_ns = config
        .duration_secs
        .map(|secs| started_ns + Duration::from_secs_f64(secs).as_nanos() as u64);

    let mut consumer_tasks = JoinSet::new();
    for (index, consumer) in consumers.into_iter().enumerate() {
        consumer_tasks.spawn(consume(
            consumer,
            index,
            config.ack,
            metrics.clone(),
            stop_receiver.clone(),
        ));
    }

    let pacer_stop = Arc::new(AtomicBool::new(false));
    let (pacer_handle, tick_receivers) =
        start_pacer(config, started_ns, deadline_ns, &pacer_stop, &metrics)?;

    let mut producer_tasks = JoinSet::new();
    for (index, (producer, ticks)) in producers.into_iter().zip(tick_receivers).enumerate() {
        let queues = config.producer_queues(index);
        let routing_keys = match topology.exchange_kind {
            ExchangeKind::Fanout => vec![String::new()],
            ExchangeKind::Direct | ExchangeKind::Topic => queues
                .iter()
                .map(|&queue| topology.queues[queue].binding_key.clone())
                .collect(),
        };
        let context = ProducerContext {
            index,
            routing_keys,
            window: windows[index].clone(),
            metrics: metrics.clone(),
            sampler: SizeSampler::new(config.size.clone(), config.seed.wrapping_add(index as u64)),
            batch_messages: config.batch_messages,
            quota: config
                .message_count
                .map(|total| share_of(total, config.producer_count, index)),
            deadline_ns,
            ticks,
            abort: abort_receiver.clone(),
        };
        producer_tasks.spawn(produce(producer, context));
    }

    let mut progress = Progress {
        started_ns,
        previous: [0; 3],
        samples: Vec::new(),
        next_ns: started_ns,
    };
    progress.next_ns += PROGRESS_INTERVAL.as_nanos() as u64;
    let publish_end_ns =
        deadline_ns.unwrap_or(started_ns + COUNT_RUN_PUBLISH_LIMIT.as_nanos() as u64);
    let publish_limit_ns = publish_end_ns + SHUTDOWN_GRACE.as_nanos() as u64;
    let mut finished_producers = Vec::with_capacity(config.producer_count);
    while !producer_tasks.is_empty() {
        match tokio::time::timeout(DRAIN_POLL_INTERVAL, producer_tasks.join_next()).await {
            Ok(Some(Ok(producer))) => finished_producers.push(producer),
            Ok(Some(Err(error))) => metrics.record_error(format_args!("producer task: {error}")),
            Ok(None) => {}
            Err(_elapsed) => {}
        }
        progress.tick_if_due(&metrics);
        if clock::now_ns() >= publish_limit_ns {
            pacer_stop.store(true, Ordering::Relaxed);
            let _ = abort_producers.send(true);
        }
    }
    let publish_ended_ns = clock::now_ns();
    let pacer = pacer_handle.map(|handle| handle.join().unwrap_or_default());

    let drain_deadline_ns =
        publish_ended_ns + Duration::from_secs_f64(config.drain_timeout_secs).as_nanos() as u64;
    let settled = || {
        windows
            .iter()
            .flatten()
            .all(|window| window.outstanding_count() == 0)
    };
    let expected = || {
        if config.consumer_count == 0 {
            return 0;
        }
        let sent = if config.confirms {
            Metrics::load(&metrics.confirmed_count)
        } else {
            Metrics::load(&metrics.published_count)
        };
        sent * topology.routing_factor()
    };
    let drained = loop {
        if settled() && Metrics::load(&metrics.delivered_count) >= expected() {
            break true;
        }
        if clock::now_ns() >= drain_deadline_ns {
            break false;
        }
        tokio::time::sleep(DRAIN_POLL_INTERVAL).await;
        progress.tick_if_due(&metrics);
    };
    let _ = abort_producers.send(true);
    let _ = stop_consumers.send(true);
    let consumer_deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while let Ok(Some(joined)) =
        tokio::time::timeout_at(consumer_deadline, consumer_tasks.join_next()).await
    {
        if let Err(error) = joined {
            metrics.record_error(format_args!("consumer task: {error}"));
        }
    }
    consumer_tasks.abort_all();
    drop(finished_producers);
    let finished_ns = clock::now_ns();
    let cpu_end = CpuSample::read(config.broker_pid);

    let (counters, counters_error) = match driver.counters(&control, &topology).await {
        Ok(counters) => (counters, None),
        Err(error) => (Vec::new(), Some(error.to_string())),
    };
    if let Err(error) = driver.delete(&control, &topology).await {
        metrics.record_error(format_args!("deleting the topology: {error}"));
    }

    Ok(RunOutcome {
        driver_name: driver.name(),
        expected_delivery_count: expected(),
        topology,
        metrics,
        started_ns,
        publish_ended_ns,
        finished_ns,
        drained,
        placements,
        counters,
        counters_error,
        pacer,
        progress: progress.samples,
        cpu_start,
        cpu_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_total_and_differ_by_at_most_one() {
        let shares: Vec<u64> = (0..3).map(|index| share_of(10, 3, index)).collect();
        assert_eq!(shares, vec![4, 3, 3]);
        assert_eq!(
            (0..64)
                .map(|index| share_of(1_000_000, 64, index))
                .sum::<u64>(),
            1_000_000
        );
    }
}
