//! The fixed-rate schedule and the thread that releases each send at its intended time.
//!
//! tokio's timer wheel ticks once a millisecond, so an async pacer at 10,000 msg/s sends bursts of
//! ten. The pacer is therefore an OS thread: it sleeps with `nanosleep` (timer slack lowered to
//! [`TIMER_SLACK_NS`] so the kernel does not defer the wake-up by its default 50 µs), wakes a
//! little early and spins the rest of the way. Intended times come from the schedule, never from
//! the clock at release, so a late release shows up as pacer lag and in the latency measured from
//! the intended time instead of silently shifting the schedule.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::clock;
use crate::latency::LatencySeries;

/// Requested timer slack for the pacer thread. 1 ns is the lowest value the kernel accepts
/// (0 means "reset to the default").
pub const TIMER_SLACK_NS: u64 = 1;
const NS_PER_SEC: u128 = 1_000_000_000;

/// Send `index` (from 0) is intended at `start_ns + index * 1e9 / rate`, computed from the index
/// each time so that rounding never accumulates into drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub start_ns: u64,
    pub rate_per_sec: u64,
}

impl Schedule {
    pub fn new(start_ns: u64, rate_per_sec: u64) -> Self {
        assert!(rate_per_sec > 0, "a schedule needs a positive rate");
        Schedule {
            start_ns,
            rate_per_sec,
        }
    }

    pub fn intended_ns(&self, index: u64) -> u64 {
        let offset_ns = u128::from(index) * NS_PER_SEC / u128::from(self.rate_per_sec);
        self.start_ns
            .saturating_add(u64::try_from(offset_ns).unwrap_or(u64::MAX))
    }

    /// How many sends fall strictly before `end_ns`.
    pub fn count_before(&self, end_ns: u64) -> u64 {
        if end_ns <= self.start_ns {
            return 0;
        }
        let span_ns = u128::from(end_ns - self.start_ns);
        let count = (span_ns * u128::from(self.rate_per_sec)).div_ceil(NS_PER_SEC);
        u64::try_from(count).unwrap_or(u64::MAX)
    }
}

/// One release: the time the schedule intended for this send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    pub intended_ns: u64,
}

#[derive(Debug, Clone)]
pub struct PacerConfig {
    pub schedule: Schedule,
    /// Total releases, across all producers.
    pub count: u64,
    /// Wake this long before the intended time and spin the rest.
    pub spin: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct PacerOutcome {
    pub released_count: u64,
    /// Timer slack read back after setting it; `None` when `/proc` did not allow it.
    pub timer_slack_ns: Option<u64>,
}

/// Lowers this thread's timer slack through `/proc/<tid>/timerslack_ns` (Linux 4.6+), which
/// needs no `prctl` call and so no unsafe code. Returns the value read back.
pub fn lower_timer_slack() -> std::io::Result<u64> {
    let link = std::fs::read_link("/proc/thread-self")?;
    let thread_id = link
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| std::io::Error::other("unexpected /proc/thread-self link"))?
        .to_owned();
    let path = format!("/proc/{thread_id}/timerslack_ns");
    std::fs::write(&path, TIMER_SLACK_NS.to_string())?;
    let text = std::fs::read_to_string(&path)?;
    text.trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("unreadable {path}")))
}

/// Starts the pacer thread. It hands ticks to the producers in turn and stops after
/// `config.count` releases, when `stop` is set, or when every producer has gone away. A producer
/// that falls behind blocks the pacer on its full channel; the schedule does not move, so the lag
/// is recorded rather than hidden.
pub fn spawn(
    config: PacerConfig,
    producers: Vec<mpsc::Sender<Tick>>,
    stop: Arc<AtomicBool>,
    lag: Arc<LatencySeries>,
) -> std::io::Result<thread::JoinHandle<PacerOutcome>> {
    assert!(!producers.is_empty(), "a pacer needs at least one producer");
    thread::Builder::new()
        .name("loadgen-pacer".into())
        .spawn(move || {
            let mut outcome = PacerOutcome {
                released_count: 0,
                timer_slack_ns: lower_timer_slack().ok(),
            };
            let spin_ns = u64::try_from(config.spin.as_nanos()).unwrap_or(u64::MAX);
            for index in 0..config.count {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let intended_ns = config.schedule.intended_ns(index);
                wait_until(intended_ns, spin_ns);
                lag.record(clock::now_ns().saturating_sub(intended_ns));

                let producer = &producers[(index % producers.len() as u64) as usize];
                if producer.blocking_send(Tick { intended_ns }).is_err() {
                    break;
                }
                outcome.released_count += 1;
            }
            outcome
        })
}

fn wait_until(intended_ns: u64, spin_ns: u64) {
    let now_ns = clock::now_ns();
    if intended_ns > now_ns.saturating_add(spin_ns) {
        thread::sleep(Duration::from_nanos(intended_ns - now_ns - spin_ns));
    }
    while clock::now_ns() < intended_ns {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_per_second_is_one_send_every_hundred_microseconds() {
        let schedule = Schedule::new(5_000, 10_000);
        assert_eq!(schedule.intended_ns(0), 5_000);
        assert_eq!(schedule.intended_ns(1), 105_000);
        assert_eq!(schedule.intended_ns(10_000), 5_000 + 1_000_000_000);
    }

    #[test]
    fn rates_that_do_not_divide_a_second_do_not_drift() {
        let schedule = Schedule::new(0, 3);
        assert_eq!(schedule.intended_ns(1), 333_333_333);
        assert_eq!(schedule.intended_ns(2), 666_666_666);
        assert_eq!(schedule.intended_ns(3_000_000), 1_000_000 * 1_000_000_000);
    }

    #[test]
    fn counting_sends_before_an_end_includes_the_one_at_the_start() {
        let schedule = Schedule::new(1_000, 10_000);
        assert_eq!(schedule.count_before(1_000), 0);
        assert_eq!(schedule.count_before(1_001), 1);
        assert_eq!(schedule.count_before(1_000 + 1_000_000_000), 10_000);
        assert_eq!(schedule.count_before(1_000 + 1_000_000_001), 10_001);
    }

    #[test]
    fn the_pacer_releases_every_tick_in_order_and_records_its_lag() {
        clock::init();
        let (sender, mut receiver) = mpsc::channel(16);
        let lag = Arc::new(LatencySeries::new("pacer_lag"));
        let config = PacerConfig {
            schedule: Schedule::new(clock::now_ns(), 20_000),
            count: 200,
            spin: Duration::from_micros(20),
        };
        let handle = spawn(
            config,
            vec![sender],
            Arc::new(AtomicBool::new(false)),
            lag.clone(),
        )
        .unwrap();
        let mut previous_ns = 0;
        let mut received = 0;
        while let Some(tick) = receiver.blocking_recv() {
            assert!(tick.intended_ns > previous_ns);
            assert!(clock::now_ns() >= tick.intended_ns);
            previous_ns = tick.intended_ns;
            received += 1;
        }
        let outcome = handle.join().unwrap();
        assert_eq!(received, 200);
        assert_eq!(outcome.released_count, 200);
        assert_eq!(lag.total().len(), 200);
    }
}
