//! Latency series: an HDR histogram for the whole run and one for the current progress interval.
//!
//! Every value is in nanoseconds. A value above [`LATENCY_MAX_NS`] is recorded as that maximum
//! (and so still counted) rather than dropped: a run that stalls for minutes must not look clean.

use std::fmt::Write as _;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram tracks exactly; longer stalls saturate here.
pub const LATENCY_MAX_NS: u64 = 600 * 1_000_000_000;
/// Three significant digits: 0.1 % relative error at every magnitude.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Rows per halving of the distance to 100 % in the percentile text, as the HDR tools print.
const PERCENTILE_TICKS_PER_HALF_DISTANCE: u32 = 5;
const NS_PER_US: f64 = 1_000.0;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

#[derive(Debug)]
struct SeriesState {
    total: Histogram<u64>,
    interval: Histogram<u64>,
}

/// One named latency series, shared by the tasks that record into it.
#[derive(Debug)]
pub struct LatencySeries {
    pub name: &'static str,
    state: Mutex<SeriesState>,
}

impl LatencySeries {
    pub fn new(name: &'static str) -> Self {
        let state = SeriesState {
            total: new_histogram(),
            interval: new_histogram(),
        };
        LatencySeries {
            name,
            state: Mutex::new(state),
        }
    }

    pub fn record(&self, value_ns: u64) {
        let mut state = self.state.lock().expect("latency series lock poisoned");
        state.total.saturating_record(value_ns);
        state.interval.saturating_record(value_ns);
    }

    /// Records a batch under one lock; callers on the hot path collect values first.
    pub fn record_all(&self, values_ns: &[u64]) {
        let mut state = self.state.lock().expect("latency series lock poisoned");
        for &value_ns in values_ns {
            state.total.saturating_record(value_ns);
            state.interval.saturating_record(value_ns);
        }
    }

    /// Returns the values recorded since the previous call and starts a new interval.
    pub fn take_interval(&self) -> Histogram<u64> {
        let mut state = self.state.lock().expect("latency series lock poisoned");
        let interval = state.interval.clone();
        state.interval.reset();
        interval
    }

    pub fn total(&self) -> Histogram<u64> {
        self.state
            .lock()
            .expect("latency series lock poisoned")
            .total
            .clone()
    }
}

/// The figures every report gives for a latency series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ns: u64,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p99_9_ns: u64,
    pub p99_99_ns: u64,
    pub max_ns: u64,
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary {
                count: 0,
                min_ns: 0,
                mean_ns: 0.0,
                p50_ns: 0,
                p90_ns: 0,
                p99_ns: 0,
                p99_9_ns: 0,
                p99_99_ns: 0,
                max_ns: 0,
            };
        }
        LatencySummary {
            count: histogram.len(),
            min_ns: histogram.min(),
            mean_ns: histogram.mean(),
            p50_ns: histogram.value_at_quantile(0.50),
            p90_ns: histogram.value_at_quantile(0.90),
            p99_ns: histogram.value_at_quantile(0.99),
            p99_9_ns: histogram.value_at_quantile(0.999),
            p99_99_ns: histogram.value_at_quantile(0.9999),
            max_ns: histogram.max(),
        }
    }
}

/// Sub-buckets per bucket for [`SIGNIFICANT_DIGITS`]: the power of two that resolves
/// 2 * 10^digits distinct values, as the HDR layout defines it (2048 for 3 digits).
fn sub_bucket_count() -> u64 {
    (2 * 10u64.pow(u32::from(SIGNIFICANT_DIGITS))).next_power_of_two()
}

/// The percentile distribution in the plain-text layout of the HDR tools (`.hgrm`), with values
/// in microseconds. Plotting tools for HDR output read this layout.
pub fn percentile_text(histogram: &Histogram<u64>) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total_count = 0u64;
    for step in histogram.iter_quantiles(PERCENTILE_TICKS_PER_HALF_DISTANCE) {
        total_count += step.count_since_last_iteration();
        let value_us = step.value_iterated_to() as f64 / NS_PER_US;
        let quantile = step.quantile_iterated_to();
        if quantile < 1.0 {
            let inverse = 1.0 / (1.0 - quantile);
            let _ = writeln!(
                text,
                "{value_us:12.3} {quantile:2.12} {total_count:10} {inverse:14.2}"
            );
        } else {
            let _ = writeln!(text, "{value_us:12.3} {quantile:2.12} {total_count:10}");
        }
    }
    let mean_us = histogram.mean() / NS_PER_US;
    let deviation_us = histogram.stdev() / NS_PER_US;
    let max_us = histogram.max() as f64 / NS_PER_US;
    let _ = writeln!(
        text,
        "#[Mean    = {mean_us:12.3}, StdDeviation   = {deviation_us:12.3}]"
    );
    let _ = writeln!(
        text,
        "#[Max     = {max_us:12.3}, Total count    = {:12}]",
        histogram.len()
    );
    let _ = writeln!(
        text,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        sub_bucket_count()
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_of_one_to_a_thousand_microseconds_has_the_expected_percentiles() {
        let series = LatencySeries::new("test");
        for value_us in 1..=1_000u64 {
            series.record(value_us * 1_000);
        }
        let summary = LatencySummary::of(&series.total());
        assert_eq!(summary.count, 1_000);
        let near =
            |value_ns: u64, expected_ns: u64| value_ns.abs_diff(expected_ns) <= expected_ns / 500;
        assert!(near(summary.p50_ns, 500_000), "{summary:?}");
        assert!(near(summary.p90_ns, 900_000), "{summary:?}");
        assert!(near(summary.p99_ns, 990_000), "{summary:?}");
        assert!(near(summary.max_ns, 1_000_000), "{summary:?}");
    }

    #[test]
    fn taking_an_interval_empties_it_but_keeps_the_total() {
        let series = LatencySeries::new("test");
        series.record_all(&[10, 20, 30]);
        assert_eq!(series.take_interval().len(), 3);
        series.record(40);
        assert_eq!(series.take_interval().len(), 1);
        assert_eq!(series.total().len(), 4);
    }

    #[test]
    fn values_beyond_the_maximum_are_counted_at_the_maximum() {
        let series = LatencySeries::new("test");
        series.record(u64::MAX);
        let total = series.total();
        assert_eq!(total.len(), 1);
        assert!(total.max() >= LATENCY_MAX_NS);
    }

    #[test]
    fn the_percentile_text_ends_at_the_total_count_and_the_maximum() {
        let series = LatencySeries::new("test");
        for value_ns in [1_000u64, 2_000, 3_000, 100_000] {
            series.record(value_ns);
        }
        let text = percentile_text(&series.total());
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        let last_row = text.lines().rfind(|line| !line.starts_with('#')).unwrap();
        let columns: Vec<&str> = last_row.split_whitespace().collect();
        assert_eq!(columns[1], "1.000000000000");
        assert_eq!(columns[2], "4");
        assert!(
            (columns[0].parse::<f64>().unwrap() - 100.0).abs() < 0.2,
            "{last_row}"
        );
        assert!(text.contains("Total count    =            4"));
        assert!(text.contains("SubBuckets     =         2048"));
    }

    #[test]
    fn an_empty_series_summarises_to_zeros() {
        assert_eq!(LatencySummary::of(&new_histogram()).count, 0);
    }
}
