//! The bound on unconfirmed messages of one producer, and publish-to-confirm timing.
//!
//! A producer reserves room for a batch before it stamps it; a confirm gives the room back. The
//! send times of unconfirmed messages sit in a ring indexed by sequence modulo the window, which
//! is exact because no more than a window's worth of sequences is ever unconfirmed at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::clock;
use crate::driver::{ConfirmOutcome, ConfirmRange};
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, Default)]
struct SendTimes {
    send_ns: u64,
    intended_ns: u64,
}

#[derive(Debug)]
pub struct ProducerWindow {
    capacity: usize,
    permits: Semaphore,
    send_times: Mutex<Vec<SendTimes>>,
    /// Sequences below this have been handed to the driver.
    sent_count: AtomicU64,
    settled_count: AtomicU64,
}

impl ProducerWindow {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "a window needs room for at least one message");
        ProducerWindow {
            capacity,
            permits: Semaphore::new(capacity),
            send_times: Mutex::new(vec![SendTimes::default(); capacity]),
            sent_count: AtomicU64::new(0),
            settled_count: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Waits for room for `count` more unconfirmed messages.
    pub async fn reserve(&self, count: usize) {
        assert!(
            count <= self.capacity,
            "a batch of {count} exceeds the window of {}",
            self.capacity
        );
        let permits = self
            .permits
            .acquire_many(count as u32)
            .await
            .expect("window never closes");
        permits.forget();
    }

    /// Remembers the send times of the batch starting at `first_sequence`. Must follow
    /// [`Self::reserve`] for the same count and precede the publish.
    pub fn record_sent(&self, first_sequence: u64, times: &[(u64, u64)]) {
        assert_eq!(
            first_sequence,
            self.sent_count.load(Ordering::Relaxed),
            "sequence gap"
        );
        let mut ring = self.send_times.lock().expect("window lock poisoned");
        for (offset, &(send_ns, intended_ns)) in times.iter().enumerate() {
            let slot = ((first_sequence + offset as u64) % self.capacity as u64) as usize;
            ring[slot] = SendTimes {
                send_ns,
                intended_ns,
            };
        }
        self.sent_count
            .fetch_add(times.len() as u64, Ordering::Release);
    }

    pub fn outstanding_count(&self) -> u64 {
        let sent = self.sent_count.load(Ordering::Acquire);
        sent - self.settled_count.load(Ordering::Acquire)
    }

    fn settle(&self, range: &ConfirmRange, metrics: &Metrics) {
        let now_ns = clock::now_ns();
        let end = range.first_sequence + range.count;
        assert!(
            end <= self.sent_count.load(Ordering::Acquire),
            "confirm beyond what was sent"
        );

        match &range.outcome {
            ConfirmOutcome::Ack { .. } => {
                let mut from_send_ns = Vec::with_capacity(range.count as usize);
                let mut from_intended_ns = Vec::with_capacity(range.count as usize);
                {
                    let ring = self.send_times.lock().expect("window lock poisoned");
                    for sequence in range.first_sequence..end {
                        let times = ring[(sequence % self.capacity as u64) as usize];
                        from_send_ns.push(now_ns.saturating_sub(times.send_ns));
                        from_intended_ns.push(now_ns.saturating_sub(times.intended_ns));
                    }
                }
                metrics.publish_to_confirm.record_all(&from_send_ns);
                metrics
                    .publish_to_confirm_from_intended
                    .record_all(&from_intended_ns);
                metrics
                    .confirmed_count
                    .fetch_add(range.count, Ordering::Relaxed);
            }
            ConfirmOutcome::Nack { reason } => {
                metrics
                    .nacked_count
                    .fetch_add(range.count, Ordering::Relaxed);
                metrics.record_error(format_args!("{} messages nacked: {reason}", range.count));
            }
        }
        metrics.last_confirm_ns.fetch_max(now_ns, Ordering::Relaxed);
        self.settled_count.fetch_add(range.count, Ordering::Release);
        self.permits.add_permits(range.count as usize);
    }
}

/// Where a driver reports confirms. Cloning is cheap; every clone reports into the same window.
#[derive(Debug, Clone)]
pub struct ConfirmSink {
    window: Arc<ProducerWindow>,
    metrics: Arc<Metrics>,
}

impl ConfirmSink {
    pub fn new(window: Arc<ProducerWindow>, metrics: Arc<Metrics>) -> Self {
        ConfirmSink { window, metrics }
    }

    pub fn confirm(&self, range: ConfirmRange) {
        self.window.settle(&range, &self.metrics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(first_sequence: u64, count: u64) -> ConfirmRange {
        ConfirmRange {
            first_sequence,
            count,
            outcome: ConfirmOutcome::Ack { durability: None },
        }
    }

    #[tokio::test]
    async fn confirms_return_room_and_record_one_latency_per_message() {
        clock::init();
        let metrics = Arc::new(Metrics::default());
        let window = Arc::new(ProducerWindow::new(4));
        let sink = ConfirmSink::new(window.clone(), metrics.clone());

        window.reserve(4).await;
        window.record_sent(0, &[(1, 1), (2, 1), (3, 1), (4, 1)]);
        assert_eq!(window.outstanding_count(), 4);
        assert!(window.permits.try_acquire().is_err());

        sink.confirm(ack(0, 3));
        assert_eq!(window.outstanding_count(), 1);
        assert_eq!(window.permits.available_permits(), 3);
        assert_eq!(metrics.publish_to_confirm.total().len(), 3);
        assert_eq!(Metrics::load(&metrics.confirmed_count), 3);
    }

    #[tokio::test]
    async fn a_nack_frees_room_and_counts_an_error_but_no_latency() {
        clock::init();
        let metrics = Arc::new(Metrics::default());
        let window = Arc::new(ProducerWindow::new(2));
        let sink = ConfirmSink::new(window.clone(), metrics.clone());

        window.reserve(2).await;
        window.record_sent(0, &[(1, 1), (2, 2)]);
        sink.confirm(ConfirmRange {
            first_sequence: 0,
            count: 2,
            outcome: ConfirmOutcome::Nack {
                reason: "queue full".into(),
            },
        });
        assert_eq!(Metrics::load(&metrics.nacked_count), 2);
        assert_eq!(Metrics::load(&metrics.error_count), 1);
        assert_eq!(metrics.publish_to_confirm.total().len(), 0);
        assert_eq!(window.outstanding_count(), 0);
    }

    #[tokio::test]
    async fn sequences_wrap_around_the_ring_without_mixing_send_times() {
        clock::init();
        let metrics = Arc::new(Metrics::default());
        let window = Arc::new(ProducerWindow::new(2));
        let sink = ConfirmSink::new(window.clone(), metrics.clone());
        window.reserve(2).await;
        window.record_sent(0, &[(1, 1), (1, 1)]);
        sink.confirm(ack(0, 2));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let now_ns = clock::now_ns();
        window.reserve(2).await;
        window.record_sent(2, &[(now_ns, now_ns), (now_ns, now_ns)]);
        metrics.publish_to_confirm.take_interval();
        sink.confirm(ack(2, 2));

        let recent = metrics.publish_to_confirm.take_interval();
        assert_eq!(recent.len(), 2);
        let stale_bound_ns = 10_000_000;
        assert!(
            recent.max() < stale_bound_ns,
            "a send time from sequence 0 leaked into 2"
        );
    }

    #[test]
    #[should_panic(expected = "confirm beyond what was sent")]
    fn a_confirm_for_an_unsent_sequence_is_a_driver_bug() {
        let metrics = Arc::new(Metrics::default());
        let window = Arc::new(ProducerWindow::new(2));
        ConfirmSink::new(window, metrics).confirm(ack(0, 1));
    }
}
