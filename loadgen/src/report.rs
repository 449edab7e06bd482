//! The run's record: `report.json`, one `.hgrm` file per latency series and the SVG plot, in
//! `bench-results/<date>-<label>/`.
//!
//! Every figure carries its unit in its field name. Throughputs are measured from the first
//! publish: publish throughput to the end of publishing, confirm throughput to the last confirm,
//! delivery throughput to the last delivery. Megabytes are 10^6 bytes of payload.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::{REFERENCE_TOLERANCE_RATIO, ReferenceFigures, RunConfig, reference_for};
use crate::driver::{BrokerCounter, ConnectionPlacement, Topology};
use crate::latency::{LatencySummary, percentile_text};
use crate::metrics::Metrics;
use crate::plot::percentile_svg;
use crate::run::{ProgressSample, RunOutcome};
use crate::system::{self, GitRevision, MachineInfo};

/// Bumped whenever a field changes meaning or name.
pub const REPORT_FORMAT_VERSION: u32 = 1;
const BYTES_PER_MEGABYTE: f64 = 1e6;
const NS_PER_SEC: f64 = 1e9;
const NS_PER_US: f64 = 1e3;
/// Above this 1-minute load average the machine was busy with other work during the run.
const LOAD_AVERAGE_BUSY: f64 = 1.0;
pub const PLOT_FILE_NAME: &str = "latency-percentiles.svg";
pub const REPORT_FILE_NAME: &str = "report.json";

/// Facts gathered around the run that the orchestrator does not know.
#[derive(Debug, Clone)]
pub struct Context {
    pub command_line: String,
    pub started_unix_secs: u64,
    pub load_average_at_start: Option<[f64; 3]>,
    pub load_average_at_end: Option<[f64; 3]>,
    pub loadgen_cpu_affinity: Vec<String>,
    pub broker_cpu_affinity: Option<Vec<String>>,
    pub broker_command: Option<String>,
}

impl Context {
    pub fn gather_before(command_line: String, broker_pid: Option<u32>) -> Context {
        let started_unix_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        Context {
            command_line,
            started_unix_secs,
            load_average_at_start: system::load_average(),
            load_average_at_end: None,
            loadgen_cpu_affinity: system::process_affinity(std::process::id()).unwrap_or_default(),
            broker_cpu_affinity: broker_pid.and_then(|pid| system::process_affinity(pid).ok()),
            broker_command: broker_pid.and_then(system::process_command),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    pub loadgen_pid: u32,
    pub loadgen_cpu_affinity: Vec<String>,
    pub broker_pid: Option<u32>,
    pub broker_command: Option<String>,
    pub broker_cpu_affinity: Option<Vec<String>>,
    pub connections: Vec<ConnectionPlacement>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub run_duration_secs: f64,
    pub publish_duration_secs: f64,
    pub published_count: u64,
    pub published_bytes: u64,
    pub confirmed_count: u64,
    pub nacked_count: u64,
    pub delivered_count: u64,
    pub delivered_bytes: u64,
    pub expected_delivery_count: u64,
    pub missing_delivery_count: u64,
    pub redelivered_count: u64,
    pub malformed_count: u64,
    pub error_count: u64,
    pub error_samples: Vec<String>,
    pub drained: bool,
    pub publish_throughput_msgs_per_sec: f64,
    pub publish_throughput_megabytes_per_sec: f64,
    pub confirm_throughput_msgs_per_sec: f64,
    pub delivery_throughput_msgs_per_sec: f64,
    pub delivery_throughput_megabytes_per_sec: f64,
    pub latency: BTreeMap<&'static str, LatencySummary>,
    pub loadgen_cpu_ns: u64,
    pub loadgen_cpu_percent_of_one_core: f64,
    pub broker_cpu_ns: Option<u64>,
    pub broker_cpu_percent_of_one_core: Option<f64>,
    pub pacer_released_count: Option<u64>,
    pub pacer_timer_slack_ns: Option<u64>,
    pub broker_counters: Vec<BrokerCounter>,
    pub broker_counters_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FigureCheck {
    pub name: &'static str,
    pub reference: f64,
    pub measured: f64,
    pub measured_to_reference_ratio: f64,
    pub within_tolerance: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReferenceCheck {
    pub reference: ReferenceFigures,
    pub tolerance_ratio: f64,
    pub figures: Vec<FigureCheck>,
    pub reproduced: bool,
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub report_format_version: u32,
    pub loadgen_version: &'static str,
    pub label: String,
    pub created_utc: String,
    pub git: GitRevision,
    pub command_line: String,
    pub machine: MachineInfo,
    pub load_average_at_start: Option<[f64; 3]>,
    pub load_average_at_end: Option<[f64; 3]>,
    pub placement: Placement,
    pub driver: &'static str,
    pub parameters: RunConfig,
    pub topology: Topology,
    pub results: Results,
    pub reference_check: Option<ReferenceCheck>,
    pub progress: Vec<ProgressSample>,
    pub notes: Vec<String>,
    pub files: Vec<String>,
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), after Howard Hinnant's
/// published `civil_from_days` algorithm.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub fn utc_date(unix_secs: u64) -> String {
    let (year, month, day) = civil_from_days((unix_secs / 86_400) as i64);
    format!("{year:04}-{month:02}-{day:02}")
}

pub fn utc_timestamp(unix_secs: u64) -> String {
    let seconds_of_day = unix_secs % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        utc_date(unix_secs),
        seconds_of_day / 3_600,
        seconds_of_day % 3_600 / 60,
        seconds_of_day % 60
    )
}

pub fn results_folder(results_dir: &Path, unix_secs: u64, label: &str) -> PathBuf {
    results_dir.join(format!("{}-{label}", utc_date(unix_secs)))
}

fn rate(count: u64, from_ns: u64, to_ns: u64) -> f64 {
    if to_ns <= from_ns {
        return 0.0;
    }
    count as f64 * NS_PER_SEC / (to_ns - from_ns) as f64
}

/// "Within 20 %" both ways: a figure much better than the reference also means the run did not
/// measure the same thing, so it is not counted as reproduced either.
fn figure(name: &'static str, reference: f64, measured: f64) -> FigureCheck {
    let ratio = measured / reference;
    let within_tolerance =
        (1.0 - REFERENCE_TOLERANCE_RATIO..=1.0 + REFERENCE_TOLERANCE_RATIO).contains(&ratio);
    FigureCheck {
        name,
        reference,
        measured,
        measured_to_reference_ratio: ratio,
        within_tolerance,
    }
}

pub fn check_reference(reference: ReferenceFigures, results: &Results) -> ReferenceCheck {
    let mut figures = Vec::new();
    if let Some(expected) = reference.throughput_msgs_per_sec {
        figures.push(figure(
            "delivery_throughput_msgs_per_sec",
            expected,
            results.delivery_throughput_msgs_per_sec,
        ));
    }
    let end_to_end = results.latency.get("end_to_end");
    if let (Some(expected), Some(summary)) = (reference.end_to_end_p50_us, end_to_end) {
        figures.push(figure(
            "end_to_end_p50_us",
            expected,
            summary.p50_ns as f64 / NS_PER_US,
        ));
    }
    if let (Some(expected), Some(summary)) = (reference.end_to_end_p99_us, end_to_end) {
        figures.push(figure(
            "end_to_end_p99_us",
            expected,
            summary.p99_ns as f64 / NS_PER_US,
        ));
    }
    let reproduced = !figures.is_empty() && figures.iter().all(|figure| figure.within_tolerance);
    let verdict = if reproduced {
        format!(
            "reproduces the reference within {:.0} %",
            REFERENCE_TOLERANCE_RATIO * 100.0
        )
    } else {
        let misses: Vec<String> = figures
            .iter()
            .filter(|figure| !figure.within_tolerance)
            .map(|figure| {
                format!(
                    "{} measured {:.0} against {:.0} (ratio {:.2})",
                    figure.name,
                    figure.measured,
                    figure.reference,
                    figure.measured_to_reference_ratio
                )
            })
            .collect();
        format!(
            "does NOT reproduce the reference within {:.0} %: {}",
            REFERENCE_TOLERANCE_RATIO * 100.0,
            misses.join("; ")
        )
    };
    ReferenceCheck {
        reference,
        tolerance_ratio: REFERENCE_TOLERANCE_RATIO,
        figures,
        reproduced,
        verdict,
    }
}

fn cpu_percent(start_ns: u64, end_ns: u64, wall_ns: u64) -> f64 {
    if wall_ns == 0 {
        return 0.0;
    }
    end_ns.saturating_sub(start_ns) as f64 * 100.0 / wall_ns as f64
}

/// The series worth reporting. Without a pacer the intended time is the send time, so the
/// `_from_intended` series would only repeat the others.
fn series_of(metrics: &Metrics, paced: bool) -> Vec<(&'static str, Histogram<u64>)> {
    let mut series = vec![
        (metrics.end_to_end.name, metrics.end_to_end.total()),
        (
            metrics.publish_to_confirm.name,
            metrics.publish_to_confirm.total(),
        ),
    ];
    if paced {
        let from_intended = &metrics.end_to_end_from_intended;
        series.push((from_intended.name, from_intended.total()));
        let confirm_from_intended = &metrics.publish_to_confirm_from_intended;
        series.push((confirm_from_intended.name, confirm_from_intended.total()));
        series.push((metrics.pacer_lag.name, metrics.pacer_lag.total()));
    }
    series
}

pub fn build(config: &RunConfig, outcome: &RunOutcome, context: &Context) -> Report {
    let metrics = &outcome.metrics;
    let load = Metrics::load;
    let first_publish_ns = load(&metrics.first_publish_ns);
    let published_bytes = load(&metrics.published_bytes);
    let delivered_bytes = load(&metrics.delivered_bytes);
    let delivered_count = load(&metrics.delivered_count);
    let wall_ns = outcome.finished_ns - outcome.started_ns;
    let publish_seconds = rate(1, first_publish_ns, outcome.publish_ended_ns);
    let delivery_seconds = rate(1, first_publish_ns, load(&metrics.last_delivery_ns));

    let series = series_of(metrics, config.rate_msgs_per_sec.is_some());
    let latency = series
        .iter()
        .filter(|(_, histogram)| !histogram.is_empty())
        .map(|(name, histogram)| (*name, LatencySummary::of(histogram)))
        .collect();

    let results = Results {
        run_duration_secs: wall_ns as f64 / NS_PER_SEC,
        publish_duration_secs: outcome.publish_ended_ns.saturating_sub(first_publish_ns) as f64
            / NS_PER_SEC,
        published_count: load(&metrics.published_count),
        published_bytes,
        confirmed_count: load(&metrics.confirmed_count),
        nacked_count: load(&metrics.nacked_count),
        delivered_count,
        delivered_bytes,
        expected_delivery_count: outcome.expected_delivery_count,
        missing_delivery_count: outcome
            .expected_delivery_count
            .saturating_sub(delivered_count),
        redelivered_count: load(&metrics.redelivered_count),
        malformed_count: load(&metrics.malformed_count),
        error_count: load(&metrics.error_count),
        error_samples: metrics.error_samples(),
        drained: outcome.drained,
        publish_throughput_msgs_per_sec: rate(
            load(&metrics.published_count),
            first_publish_ns,
            outcome.publish_ended_ns,
        ),
        publish_throughput_megabytes_per_sec: publish_seconds * published_bytes as f64
            / BYTES_PER_MEGABYTE,
        confirm_throughput_msgs_per_sec: rate(
            load(&metrics.confirmed_count),
            first_publish_ns,
            load(&metrics.last_confirm_ns),
        ),
        delivery_throughput_msgs_per_sec: rate(
            delivered_count,
            first_publish_ns,
            load(&metrics.last_delivery_ns),
        ),
        delivery_throughput_megabytes_per_sec: delivery_seconds * delivered_bytes as f64
            / BYTES_PER_MEGABYTE,
        latency,
        loadgen_cpu_ns: outcome.cpu_end.loadgen_cpu_ns - outcome.cpu_start.loadgen_cpu_ns,
        loadgen_cpu_percent_of_one_core: cpu_percent(
            outcome.cpu_start.loadgen_cpu_ns,
            outcome.cpu_end.loadgen_cpu_ns,
            wall_ns,
        ),
        broker_cpu_ns: outcome
            .cpu_start
            .broker_cpu_ns
            .zip(outcome.cpu_end.broker_cpu_ns)
            .map(|(start, end)| end.saturating_sub(start)),
        broker_cpu_percent_of_one_core: outcome
            .cpu_start
            .broker_cpu_ns
            .zip(outcome.cpu_end.broker_cpu_ns)
            .map(|(start, end)| cpu_percent(start, end, wall_ns)),
        pacer_released_count: outcome.pacer.as_ref().map(|pacer| pacer.released_count),
        pacer_timer_slack_ns: outcome
            .pacer
            .as_ref()
            .and_then(|pacer| pacer.timer_slack_ns),
        broker_counters: outcome.counters.clone(),
        broker_counters_error: outcome.counters_error.clone(),
    };

    let reference_check =
        reference_for(config).map(|reference| check_reference(reference, &results));
    let notes = notes_for(config, outcome, context, &results);
    Report {
        report_format_version: REPORT_FORMAT_VERSION,
        loadgen_version: env!("CARGO_PKG_VERSION"),
        label: config.label.clone(),
        created_utc: utc_timestamp(context.started_unix_secs),
        git: GitRevision::read(),
        command_line: context.command_line.clone(),
        machine: MachineInfo::read(),
        load_average_at_start: context.load_average_at_start,
        load_average_at_end: context.load_average_at_end,
        placement: Placement {
            loadgen_pid: std::process::id(),
            loadgen_cpu_affinity: context.loadgen_cpu_affinity.clone(),
            broker_pid: config.broker_pid,
            broker_command: context.broker_command.clone(),
            broker_cpu_affinity: context.broker_cpu_affinity.clone(),
            connections: outcome.placements.clone(),
        },
        driver: outcome.driver_name,
        parameters: config.clone(),
        topology: outcome.topology.clone(),
        results,
        reference_check,
        progress: outcome.progress.clone(),
        notes,
        files: Vec::new(),
    }
}

fn notes_for(
    config: &RunConfig,
    outcome: &RunOutcome,
    context: &Context,
    results: &Results,
) -> Vec<String> {
    let mut notes = vec![
        "CPU figures are schedstat on-CPU time of the live threads over the run's wall time; \
         100 % is one core. Threads that exited during the run are not counted."
            .to_owned(),
    ];
    if outcome.driver_name == "amqp" {
        notes.push(
            "AMQP has no `written` level: memory and written use transient queues and messages \
             (delivery mode 1); fsynced uses durable queues and persistent messages."
                .to_owned(),
        );
    }
    if outcome.driver_name == "ruuster" {
        notes.push(
            "broker_counters: totals (published, stored, delivered, acked, journal fdatasyncs and \
             synced records, ...) are differences between the broker's stats read after the \
             declare and after the drain; `_at_end_count` figures are levels at the end; \
             shard<i>_stage_* figures are the broker's own histograms since it started. \
             client_* figures are counted by the driver. The consumers' last acks travel on \
             their own connections and may land after the counters are read, so acked_count \
             can fall short of delivered_count by up to one ack interval per consumer."
                .to_owned(),
        );
    }
    if config.rate_msgs_per_sec.is_none() {
        notes.push(
            "As-fast-as-possible run: latency is mostly time queued behind the window and the \
             broker's backlog, not service time."
                .to_owned(),
        );
    }
    if let Some([one_minute, ..]) = context.load_average_at_start
        && one_minute > LOAD_AVERAGE_BUSY
    {
        notes.push(format!(
            "The 1-minute load average was {one_minute:.2} at the start: other processes \
             competed for the cores, so figures are noisier than on an idle machine."
        ));
    }
    if !outcome.drained {
        notes.push(format!(
            "The drain timed out: {} deliveries missing, {} publishes unsettled at the end.",
            results.missing_delivery_count,
            results
                .published_count
                .saturating_sub(results.confirmed_count + results.nacked_count)
        ));
    }
    if config.broker_pid.is_none() {
        notes.push("No --broker-pid: broker CPU and affinity were not read.".to_owned());
    }
    notes
}

/// Writes the folder's files; `report.json` last, so that its presence means the run is whole.
pub fn write(folder: &Path, report: &mut Report, metrics: &Metrics) -> io::Result<()> {
    fs::create_dir_all(folder)?;
    let series = series_of(metrics, report.parameters.rate_msgs_per_sec.is_some());
    for (name, histogram) in &series {
        if histogram.is_empty() {
            continue;
        }
        let file_name = format!("{name}.hgrm");
        fs::write(folder.join(&file_name), percentile_text(histogram))?;
        report.files.push(file_name);
    }
    let plotted: Vec<(&str, &Histogram<u64>)> = series
        .iter()
        .filter(|(name, _)| *name != "pacer_lag")
        .map(|(name, histogram)| (*name, histogram))
        .collect();
    let title = format!(
        "{}: {} ({})",
        report.label, report.driver, report.created_utc
    );
    if let Some(svg) = percentile_svg(&title, &plotted) {
        fs::write(folder.join(PLOT_FILE_NAME), svg)?;
        report.files.push(PLOT_FILE_NAME.to_owned());
    }
    report.files.push(REPORT_FILE_NAME.to_owned());
    let json = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
    fs::write(folder.join(REPORT_FILE_NAME), json + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_come_out_right_across_leap_years_and_epochs() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_709_164_800), "2024-02-29");
        assert_eq!(utc_timestamp(1_796_319_045), "2026-12-03T17:30:45Z");
    }

    #[test]
    fn a_throughput_twenty_five_percent_low_is_reported_as_not_reproduced() {
        let reference = ReferenceFigures {
            description: "test",
            throughput_msgs_per_sec: Some(100.0),
            end_to_end_p50_us: None,
            end_to_end_p99_us: None,
        };
        let mut results = sample_results();
        results.delivery_throughput_msgs_per_sec = 75.0;
        let check = check_reference(reference.clone(), &results);
        assert!(!check.reproduced);
        assert!(
            check.verdict.contains("does NOT reproduce"),
            "{}",
            check.verdict
        );
        results.delivery_throughput_msgs_per_sec = 85.0;
        assert!(check_reference(reference, &results).reproduced);
    }

    #[test]
    fn latency_references_compare_the_end_to_end_percentiles() {
        let reference = ReferenceFigures {
            description: "test",
            throughput_msgs_per_sec: None,
            end_to_end_p50_us: Some(100.0),
            end_to_end_p99_us: Some(1_000.0),
        };
        let mut results = sample_results();
        let mut summary = LatencySummary::of(&crate::latency::new_histogram());
        summary.p50_ns = 110_000;
        summary.p99_ns = 1_300_000;
        results.latency.insert("end_to_end", summary);
        let check = check_reference(reference, &results);
        assert_eq!(check.figures.len(), 2);
        assert!(check.figures[0].within_tolerance);
        assert!(!check.figures[1].within_tolerance);
        assert!(!check.reproduced);
    }

    #[test]
    fn a_report_serialises_with_units_in_its_field_names() {
        let json = serde_json::to_value(sample_results()).unwrap();
        let object = json.as_object().unwrap();
        assert!(object.contains_key("delivery_throughput_msgs_per_sec"));
        assert!(object.contains_key("loadgen_cpu_percent_of_one_core"));
        assert!(object.contains_key("publish_throughput_megabytes_per_sec"));
    }

    fn sample_results() -> Results {
        Results {
            run_duration_secs: 1.0,
            publish_duration_secs: 1.0,
            published_count: 0,
            published_bytes: 0,
            confirmed_count: 0,
            nacked_count: 0,
            delivered_count: 0,
            delivered_bytes: 0,
            expected_delivery_count: 0,
            missing_delivery_count: 0,
            redelivered_count: 0,
            malformed_count: 0,
            error_count: 0,
            error_samples: Vec::new(),
            drained: true,
            publish_throughput_msgs_per_sec: 0.0,
            publish_throughput_megabytes_per_sec: 0.0,
            confirm_throughput_msgs_per_sec: 0.0,
            delivery_throughput_msgs_per_sec: 0.0,
            delivery_throughput_megabytes_per_sec: 0.0,
            latency: BTreeMap::new(),
            loadgen_cpu_ns: 0,
            loadgen_cpu_percent_of_one_core: 0.0,
            broker_cpu_ns: None,
            broker_cpu_percent_of_one_core: None,
            pacer_released_count: None,
            pacer_timer_slack_ns: None,
            broker_counters: Vec::new(),
            broker_counters_error: None,
        }
    }
}
