//! Runs the measurement core through a driver that keeps messages in memory, so the core's
//! counting, routing, windows, pacing and draining are checked without a broker, and so the
//! [`Driver`] trait is shown to take a second implementation without changes to the core.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use tokio::sync::mpsc;

use ruuster_loadgen::config::{Cli, RunConfig};
use ruuster_loadgen::driver::{
    BrokerCounter, ConfirmOutcome, ConfirmRange, ConfirmSink, ConnectionPlacement, ConnectionSpec,
    Consumer, ConsumerSpec, Delivery, Driver, DriverError, ExchangeKind, Producer, ProducerSpec,
    PublishBatch, Topology,
};
use ruuster_loadgen::metrics::Metrics;
use ruuster_loadgen::run::{self, RunOutcome};

type Inbox = mpsc::UnboundedSender<Vec<u8>>;

/// Queues by name, each with the inboxes of the consumers subscribed to it.
#[derive(Default)]
struct MemoryDriver {
    exchange_kind: Mutex<Option<ExchangeKind>>,
    subscribers: Mutex<HashMap<String, Vec<Inbox>>>,
    /// Binding key to queue name.
    bindings: Mutex<HashMap<String, String>>,
    acks: Arc<AtomicU64>,
}

struct MemoryProducer {
    fanout: bool,
    routes: HashMap<String, Vec<Inbox>>,
    all: Vec<Vec<Inbox>>,
    turn: usize,
    confirms: Option<ConfirmSink>,
}

struct MemoryConsumer {
    inbox: mpsc::UnboundedReceiver<Vec<u8>>,
    next_tag: u64,
    acks: Arc<AtomicU64>,
}

impl Driver for MemoryDriver {
    type Connection = ();
    type Producer = MemoryProducer;
    type Consumer = MemoryConsumer;

    fn name(&self) -> &'static str {
        "memory"
    }

    async fn connect(&self, _spec: &ConnectionSpec) -> Result<(), DriverError> {
        Ok(())
    }

    fn describe_connection(&self, spec: &ConnectionSpec, _: &()) -> ConnectionPlacement {
        ConnectionPlacement {
            role: spec.role,
            index: spec.index,
            address: "memory".into(),
            shard: Some(0),
        }
    }

    async fn declare(&self, _: &(), topology: &Topology) -> Result<(), DriverError> {
        *self.exchange_kind.lock().unwrap() = Some(topology.exchange_kind);
        let mut subscribers = self.subscribers.lock().unwrap();
        let mut bindings = self.bindings.lock().unwrap();
        for queue in &topology.queues {
            subscribers.insert(queue.name.clone(), Vec::new());
            bindings.insert(queue.binding_key.clone(), queue.name.clone());
        }
        Ok(())
    }

    async fn open_producer(
        &self,
        _: &(),
        spec: &ProducerSpec,
        confirms: ConfirmSink,
    ) -> Result<MemoryProducer, DriverError> {
        let subscribers = self.subscribers.lock().unwrap();
        let bindings = self.bindings.lock().unwrap();
        let routes = bindings
            .iter()
            .map(|(key, queue)| (key.clone(), subscribers[queue].clone()))
            .collect();
        Ok(MemoryProducer {
            fanout: *self.exchange_kind.lock().unwrap() == Some(ExchangeKind::Fanout),
            routes,
            all: subscribers.values().cloned().collect(),
            turn: 0,
            confirms: spec.confirms.then_some(confirms),
        })
    }

    async fn open_consumer(
        &self,
        _: &(),
        spec: &ConsumerSpec,
    ) -> Result<MemoryConsumer, DriverError> {
        let (sender, inbox) = mpsc::unbounded_channel();
        let mut subscribers = self.subscribers.lock().unwrap();
        for queue in &spec.queues {
            subscribers
                .get_mut(queue)
                .expect("declared queue")
                .push(sender.clone());
        }
        Ok(MemoryConsumer {
            inbox,
            next_tag: 1,
            acks: self.acks.clone(),
        })
    }

    async fn counters(&self, _: &(), _: &Topology) -> Result<Vec<BrokerCounter>, DriverError> {
        Ok(vec![BrokerCounter {
            name: "acks_count".into(),
            value: self.acks.load(Ordering::Relaxed) as f64,
        }])
    }

    async fn delete(&self, _: &(), _: &Topology) -> Result<(), DriverError> {
        Ok(())
    }
}

impl MemoryProducer {
    /// Round robin over a queue's subscribers, as a broker spreads one queue over consumers. A
    /// queue without subscribers keeps nothing here: no test reads it back.
    fn deliver(&mut self, inboxes: &[Inbox], payload: &[u8]) {
        if inboxes.is_empty() {
            return;
        }
        self.turn += 1;
        inboxes[self.turn % inboxes.len()]
            .send(payload.to_vec())
            .expect("consumer alive");
    }
}

impl Producer for MemoryProducer {
    async fn publish(&mut self, batch: PublishBatch<'_>) -> Result<(), DriverError> {
        for message in batch.messages {
            let targets: Vec<Vec<Inbox>> = if self.fanout {
                self.all.clone()
            } else {
                vec![self.routes[message.routing_key].clone()]
            };
            for inboxes in &targets {
                self.deliver(inboxes, message.payload);
            }
        }
        if let Some(sink) = &self.confirms {
            sink.confirm(ConfirmRange {
                first_sequence: batch.first_sequence,
                count: batch.messages.len() as u64,
                outcome: ConfirmOutcome::Ack { durability: None },
            });
        }
        Ok(())
    }
}

impl Consumer for MemoryConsumer {
    async fn next_delivery(&mut self) -> Result<Option<Delivery>, DriverError> {
        let Some(payload) = self.inbox.recv().await else {
            return Ok(None);
        };
        self.next_tag += 1;
        Ok(Some(Delivery {
            payload,
            tag: self.next_tag,
            redelivered: false,
        }))
    }

    async fn ack(&mut self, _tag: u64, _multiple: bool) -> Result<(), DriverError> {
        self.acks.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn config(arguments: &[&str]) -> RunConfig {
    let mut all = vec!["ruuster-loadgen", "--drain-timeout-secs", "10"];
    all.extend_from_slice(arguments);
    RunConfig::resolve(&Cli::try_parse_from(all).unwrap()).unwrap()
}

async fn run_in_memory(arguments: &[&str]) -> (RunOutcome, Arc<MemoryDriver>) {
    let driver = Arc::new(MemoryDriver::default());
    let outcome = run::run(driver.clone(), &config(arguments)).await.unwrap();
    (outcome, driver)
}

fn count(outcome: &RunOutcome, counter: fn(&Metrics) -> &AtomicU64) -> u64 {
    counter(&outcome.metrics).load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counted_run_publishes_confirms_and_delivers_every_message_once() {
    let arguments = [
        "--count",
        "5000",
        "--producers",
        "3",
        "--consumers",
        "2",
        "--queues",
        "4",
        "--ack",
        "single",
    ];
    let (outcome, driver) = run_in_memory(&arguments).await;

    assert!(outcome.drained);
    assert_eq!(count(&outcome, |m| &m.published_count), 5_000);
    assert_eq!(count(&outcome, |m| &m.confirmed_count), 5_000);
    assert_eq!(count(&outcome, |m| &m.delivered_count), 5_000);
    assert_eq!(count(&outcome, |m| &m.malformed_count), 0);
    assert_eq!(count(&outcome, |m| &m.error_count), 0);
    assert_eq!(count(&outcome, |m| &m.published_bytes), 5_000 * 1_024);
    assert_eq!(outcome.metrics.end_to_end.total().len(), 5_000);
    assert_eq!(outcome.metrics.publish_to_confirm.total().len(), 5_000);
    assert_eq!(driver.acks.load(Ordering::Relaxed), 5_000);
    assert_eq!(outcome.counters[0].value, 5_000.0);
    assert_eq!(outcome.placements.len(), 1 + 2 + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_fanout_run_delivers_each_message_to_every_queue_on_schedule() {
    let arguments = [
        "--count",
        "500",
        "--rate",
        "5000",
        "--exchange-type",
        "fanout",
        "--queues",
        "3",
        "--consumers",
        "3",
        "--ack",
        "every:10",
        "--prefetch",
        "100",
    ];
    let (outcome, driver) = run_in_memory(&arguments).await;

    assert!(outcome.drained);
    assert_eq!(count(&outcome, |m| &m.published_count), 500);
    assert_eq!(count(&outcome, |m| &m.delivered_count), 1_500);
    assert_eq!(outcome.pacer.as_ref().unwrap().released_count, 500);
    assert_eq!(outcome.metrics.pacer_lag.total().len(), 500);
    assert_eq!(
        outcome.metrics.end_to_end_from_intended.total().len(),
        1_500
    );
    // 500 messages at 5,000 msg/s are scheduled over 100 ms; publishing cannot end sooner.
    let publish_ns = outcome.publish_ended_ns - outcome.started_ns;
    assert!(
        publish_ns >= 99_000_000,
        "published 500 paced messages in {publish_ns} ns"
    );
    // Each of the 3 consumers acks every 10th delivery, then once for its remainder.
    let acks = driver.acks.load(Ordering::Relaxed);
    assert!((150..=153).contains(&acks), "{acks} acks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_confirms_or_consumers_still_counts_what_it_published() {
    let (outcome, _) =
        run_in_memory(&["--count", "700", "--consumers", "0", "--no-confirms"]).await;

    assert!(outcome.drained);
    assert_eq!(count(&outcome, |m| &m.published_count), 700);
    assert_eq!(count(&outcome, |m| &m.confirmed_count), 0);
    assert_eq!(outcome.expected_delivery_count, 0);
    assert_eq!(outcome.metrics.publish_to_confirm.total().len(), 0);
}
