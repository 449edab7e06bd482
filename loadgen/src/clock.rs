//! One monotonic clock for the whole process, in nanoseconds since the first reading.
//!
//! Producers, consumers and the pacer run on different threads, and end-to-end latency subtracts a
//! send time stamped by one from a receive time read by another. Both therefore come from the same
//! `Instant` epoch (CLOCK_MONOTONIC), never from wall-clock time, which can step.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Fixes the epoch. Calling it at start keeps the first measured reading from paying for it.
pub fn init() {
    EPOCH.get_or_init(Instant::now);
}

/// Nanoseconds since the epoch. Saturates after about 584 years.
pub fn now_ns() -> u64 {
    let elapsed = EPOCH.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_never_go_backwards() {
        init();
        let mut previous_ns = now_ns();
        for _ in 0..1_000 {
            let current_ns = now_ns();
            assert!(current_ns >= previous_ns);
            previous_ns = current_ns;
        }
    }
}
