//! Counters and latency series shared by the producers, consumers, pacer and progress printer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::latency::LatencySeries;

/// Errors kept verbatim for the report; later ones are only counted.
pub const ERROR_SAMPLES_MAX: usize = 20;

#[derive(Debug)]
pub struct Metrics {
    pub published_count: AtomicU64,
    pub published_bytes: AtomicU64,
    pub confirmed_count: AtomicU64,
    pub nacked_count: AtomicU64,
    pub delivered_count: AtomicU64,
    pub delivered_bytes: AtomicU64,
    pub redelivered_count: AtomicU64,
    pub malformed_count: AtomicU64,
    pub error_count: AtomicU64,
    /// Clock times of the first publish and of the latest publish, confirm and delivery; 0 while
    /// none has happened.
    pub first_publish_ns: AtomicU64,
    pub last_publish_ns: AtomicU64,
    pub last_confirm_ns: AtomicU64,
    pub last_delivery_ns: AtomicU64,
    pub end_to_end: LatencySeries,
    pub end_to_end_from_intended: LatencySeries,
    pub publish_to_confirm: LatencySeries,
    pub publish_to_confirm_from_intended: LatencySeries,
    pub pacer_lag: Arc<LatencySeries>,
    error_samples: Mutex<Vec<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            published_count: AtomicU64::new(0),
            published_bytes: AtomicU64::new(0),
            confirmed_count: AtomicU64::new(0),
            nacked_count: AtomicU64::new(0),
            delivered_count: AtomicU64::new(0),
            delivered_bytes: AtomicU64::new(0),
            redelivered_count: AtomicU64::new(0),
            malformed_count: AtomicU64::new(0),
            error_count: AtomicU64::new(0),
            first_publish_ns: AtomicU64::new(0),
            last_publish_ns: AtomicU64::new(0),
            last_confirm_ns: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            end_to_end: LatencySeries::new("end_to_end"),
            end_to_end_from_intended: LatencySeries::new("end_to_end_from_intended"),
            publish_to_confirm: LatencySeries::new("publish_to_confirm"),
            publish_to_confirm_from_intended: LatencySeries::new(
                "publish_to_confirm_from_intended",
            ),
            pacer_lag: Arc::new(LatencySeries::new("pacer_lag")),
            error_samples: Mutex::new(Vec::new()),
        }
    }
}

impl Metrics {
    pub fn record_error(&self, error: impl std::fmt::Display) {
        self.error_count.fetch_add(1, Ordering::Relaxed);
        let mut samples = self
            .error_samples
            .lock()
            .expect("error samples lock poisoned");
        if samples.len() < ERROR_SAMPLES_MAX {
            samples.push(error.to_string());
        }
    }

    pub fn error_samples(&self) -> Vec<String> {
        self.error_samples
            .lock()
            .expect("error samples lock poisoned")
            .clone()
    }

    pub fn mark_publish(&self, now_ns: u64) {
        let _ =
            self.first_publish_ns
                .compare_exchange(0, now_ns, Ordering::Relaxed, Ordering::Relaxed);
        self.last_publish_ns.fetch_max(now_ns, Ordering::Relaxed);
    }

    pub fn load(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
