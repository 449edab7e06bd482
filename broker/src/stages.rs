//! Where a shard's time goes: one HDR histogram per stage of the publish, deliver and settle
//! paths, read through the stats request as per-shard percentiles.
//!
//! Only the shard's own executor records into its histograms, so they sit in `RefCell`s that are
//! borrowed for one `record` call and never across an await. Recording costs one histogram
//! update (a few nanoseconds); the stages are per batch or per message, never per byte.
//!
//! Clocks: stages measured within this shard use `Instant`. The two stages that start on the
//! publishing connection's shard (`stored`, `deliver`) start from the envelope's
//! `published_at_ns`, the wall clock when that connection decoded the message; both shards read
//! the same system clock, so the difference is meaningful unless the clock is stepped (a step
//! shows as a value clamped to 0 or an outlier at the maximum).

use std::cell::RefCell;
use std::time::Duration;

use hdrhistogram::Histogram;

/// The longest latency a histogram holds; longer values are clamped to it. A stage that takes
/// a minute is a stall to investigate, not a figure to resolve finely.
const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// Significant figures kept: 3 gives 0.1% resolution at about 30 KiB per histogram.
const SIGNIFICANT_FIGURES: u8 = 3;

/// The largest batch the `append_batch_records` histogram resolves (the appender's batch bound
/// and the settler's are both far below).
const RECORDS_MAX: u64 = 1 << 20;

/// A stage of a shard's work, each with its own histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// One `Log::append` call of the appender: encoding into the journal's tail and, when the
    /// in-flight cap is reached, waiting for room. Nanoseconds per call.
    Append,
    /// Records in one appender batch (a count, not a latency).
    AppendBatchRecords,
    /// From the append's return to the `written` level (the O_DIRECT write completed).
    Written,
    /// From the append's return to the `fsynced` level (an fdatasync covering it completed).
    Fsynced,
    /// From the decode on the publishing connection's shard to the owner's outcome report, at
    /// the level the publish asked for: the owner's share of publish-to-confirm.
    Stored,
    /// From the decode on the publishing connection's shard to the message's first delivery
    /// leaving the owner: includes waiting for the durable watermark and for consumer credit.
    Deliver,
    /// One settlement record appended by the settler (acks, rejects, purges).
    Settle,
    /// From the first frame queued on a connection with nothing waiting to be sent to the end
    /// of the socket write that carried it: the broker's share of the way back to a client (a
    /// confirm, a delivery, a reply), on the connection's shard.
    Send,
}

impl Stage {
    const ALL: [Stage; 8] = [
        Stage::Append,
        Stage::AppendBatchRecords,
        Stage::Written,
        Stage::Fsynced,
        Stage::Stored,
        Stage::Deliver,
        Stage::Settle,
        Stage::Send,
    ];

    fn name(self) -> &'static str {
        match self {
            Stage::Append => "append",
            Stage::AppendBatchRecords => "append_batch",
            Stage::Written => "written",
            Stage::Fsynced => "fsynced",
            Stage::Stored => "stored",
            Stage::Deliver => "deliver",
            Stage::Settle => "settle",
            Stage::Send => "send",
        }
    }

    /// The unit written after each percentile's name.
    fn unit(self) -> &'static str {
        match self {
            Stage::AppendBatchRecords => "records",
            _ => "ns",
        }
    }

    fn index(self) -> usize {
        Stage::ALL
            .iter()
            .position(|stage| *stage == self)
            .expect("every stage is in ALL")
    }
}

/// The percentiles reported per stage, with the suffix of their counter names.
const PERCENTILES: [(f64, &str); 4] =
    [(50.0, "p50"), (99.0, "p99"), (99.9, "p999"), (100.0, "max")];

/// One shard's stage histograms.
#[derive(Debug)]
pub struct Stages {
    histograms: Vec<RefCell<Histogram<u64>>>,
}

impl Default for Stages {
    fn default() -> Stages {
        let histograms = Stage::ALL
            .iter()
            .map(|stage| {
                let high = match stage {
                    Stage::AppendBatchRecords => RECORDS_MAX,
                    _ => LATENCY_MAX_NS,
                };
                let histogram = Histogram::new_with_bounds(1, high, SIGNIFICANT_FIGURES)
                    .expect("the bounds are valid constants");
                RefCell::new(histogram)
            })
            .collect();
        Stages { histograms }
    }
}

impl Stages {
    /// Records one value (nanoseconds, or records for [`Stage::AppendBatchRecords`]).
    pub fn record(&self, stage: Stage, value: u64) {
        self.histograms[stage.index()]
            .borrow_mut()
            .saturating_record(value.max(1));
    }

    pub fn record_duration(&self, stage: Stage, elapsed: Duration) {
        self.record(stage, u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records the time since `since_ns` on the wall clock ([`crate::runtime::now_ns`]).
    pub fn record_since_ns(&self, stage: Stage, since_ns: u64, now_ns: u64) {
        self.record(stage, now_ns.saturating_sub(since_ns));
    }

    /// Counters for the stats reply, named `shard<i>_stage_<stage>_<percentile>_<unit>` plus
    /// `..._count`: percentiles do not add up across shards, so each shard reports its own.
    pub fn counters(&self, shard: usize) -> Vec<(String, u64)> {
        let mut counters = Vec::with_capacity(Stage::ALL.len() * (PERCENTILES.len() + 1));
        for stage in Stage::ALL {
            let histogram = self.histograms[stage.index()].borrow();
            let prefix = format!("shard{shard}_stage_{}", stage.name());
            counters.push((format!("{prefix}_count"), histogram.len()));
            if histogram.is_empty() {
                continue;
            }
            for (quantile, suffix) in PERCENTILES {
                let value = histogram.value_at_percentile(quantile);
                counters.push((format!("{prefix}_{suffix}_{}", stage.unit()), value));
            }
        }
        counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each stage's counters come out under its own name, with the count, the percentiles of
    /// what was recorded (within the histogram's 0.1% resolution) and the right unit.
    #[test]
    fn counters_name_each_stage_with_its_percentiles_and_unit() {
        let stages = Stages::default();
        for value in 1..=1000 {
            stages.record(Stage::Append, value * 1000);
        }
        stages.record(Stage::AppendBatchRecords, 64);
        let counters: std::collections::HashMap<String, u64> =
            stages.counters(1).into_iter().collect();

        assert_eq!(counters["shard1_stage_append_count"], 1000);
        let p50 = counters["shard1_stage_append_p50_ns"];
        assert!((499_000..=501_000).contains(&p50), "{p50}");
        let max = counters["shard1_stage_append_max_ns"];
        assert!((999_000..=1_001_000).contains(&max), "{max}");
        assert_eq!(counters["shard1_stage_append_batch_p50_records"], 64);
        assert_eq!(counters["shard1_stage_fsynced_count"], 0);
        assert!(!counters.contains_key("shard1_stage_fsynced_p50_ns"));
    }

    /// A wall-clock start later than the end (a stepped clock) records as the minimum instead
    /// of wrapping around to an absurd latency.
    #[test]
    fn a_start_after_the_end_is_clamped() {
        let stages = Stages::default();
        stages.record_since_ns(Stage::Stored, 2_000, 1_000);
        let counters: std::collections::HashMap<String, u64> =
            stages.counters(0).into_iter().collect();
        assert_eq!(counters["shard0_stage_stored_max_ns"], 1);
    }
}
