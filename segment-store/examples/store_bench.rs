//! Benchmark of the segment store against the raw limits of the same disk, measured by fio in
//! the same run with the store's write size, queue depth and file layout (preallocated space).
//!
//! Usage: `cargo run --release -p ruuster-segment-store --example store_bench -- <report-dir>
//! [seconds-per-case]`. Writes `<report-dir>/bench.json`.
//! Scratch files go under `target/bench-scratch` (same disk as the repository, never tmpfs).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ruuster_segment_store::{Level, Log, Options, Record, RecoveryReport, Stats, SyncPolicy};
use serde_json::{Value, json};

const RECORD_SIZES_BYTES: [usize; 3] = [100, 1024, 16 * 1024];
const APPENDER_COUNTS: [usize; 3] = [1, 8, 64];
/// Appenders used for the throughput cases.
const THROUGHPUT_APPENDERS: usize = 64;
const SEGMENT_BYTES: u64 = 256 * 1024 * 1024;
/// Alternations of store and fio per comparison.
const REPEATS: usize = 3;
/// Alternations for the `os` bandwidth comparison, the noisiest on this shared virtual disk.
const OS_REPEATS: usize = 5;

struct CaseResult {
    records_count: u64,
    elapsed: Duration,
    /// CPU time of the whole process (executor thread and io_uring workers) while appending.
    cpu: Duration,
    stats: Stats,
    latency_us: Histogram<u64>,
    level: Level,
    recovery: RecoveryReport,
}

fn options_for(policy: SyncPolicy) -> Options {
    Options {
        segment_bytes: SEGMENT_BYTES,
        max_payload_bytes: 64 * 1024,
        sync_policy: policy,
        ..Options::default()
    }
}

fn policy_name(policy: SyncPolicy) -> String {
    match policy {
        SyncPolicy::Always => "always".into(),
        SyncPolicy::Interval(period) => format!("interval-{}ms", period.as_millis()),
        SyncPolicy::Os => "os".into(),
    }
}

fn executor() -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("executor")
}

fn run_case(
    dir: &Path,
    options: Options,
    record_bytes: usize,
    appenders: usize,
    duration: Duration,
) -> CaseResult {
    let _ = std::fs::remove_dir_all(dir);
    let dir = dir.to_path_buf();
    let policy = options.sync_policy;
    executor().run(async move {
        let (log, _) = Log::open(&dir, options.clone()).await.expect("open");
        let log = Rc::new(log);
        let level = match policy {
            SyncPolicy::Os => Level::Written,
            _ => Level::Fsynced,
        };
        let histogram = Rc::new(RefCell::new(Histogram::<u64>::new(3).unwrap()));
        let started = Instant::now();
        let cpu_before = process_cpu();
        let stats_before = log.stats();
        let mut tasks = Vec::new();
        for task in 0..appenders {
            let log = log.clone();
            let histogram = histogram.clone();
            tasks.push(glommio::spawn_local(async move {
                let body = vec![task as u8; record_bytes];
                let mut count = 0u64;
                let mut reached = Level::Fsynced;
                while started.elapsed() < duration {
                    let record = Record {
                        payload: &body,
                        timestamp_ms: count,
                        flags: 0,
                    };
                    let begin = Instant::now();
                    let (_, level) = log.append_wait(&[record], level).await.expect("append");
                    let latency = begin.elapsed().as_micros() as u64;
                    histogram.borrow_mut().record(latency.max(1)).unwrap();
                    reached = reached.min(level);
                    count += 1;
                }
                (count, reached)
            }));
        }
        let mut records_count = 0;
        let mut reached = Level::Fsynced;
        for task in tasks {
            let (count, level) = task.await;
            records_count += count;
            reached = reached.min(level);
        }
        let elapsed = started.elapsed();
        let cpu = process_cpu().saturating_sub(cpu_before);
        let after = log.stats();
        let stats = Stats {
            writes_count: after.writes_count - stats_before.writes_count,
            written_bytes: after.written_bytes - stats_before.written_bytes,
            writes_in_flight_sum: after.writes_in_flight_sum - stats_before.writes_in_flight_sum,
            syncs_count: after.syncs_count - stats_before.syncs_count,
            synced_records_count: after.synced_records_count - stats_before.synced_records_count,
            ..after
        };
        let latency_us = histogram.borrow().clone();
        drop(log);
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let (log, recovery) = Log::open(&dir, options).await.expect("reopen");
        drop(log);
        glommio::timer::sleep(Duration::from_millis(20)).await;
        CaseResult {
            records_count,
            elapsed,
            cpu,
            stats,
            latency_us,
            level: reached,
            recovery,
        }
    })
}

/// What a fio run measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FioMode {
    /// Each write followed by an fdatasync (psync engine), over a 1 GiB preallocated file.
    WriteSync,
    /// Sequential O_DIRECT writes with io_uring into preallocated space that is never written
    /// twice, like the store's fresh segments: the file is large enough that fio stops at the
    /// runtime before it would wrap (a rewrite of written blocks costs the disk less).
    FreshSequential,
}

/// Runs fio on a preallocated file in `dir`; returns its JSON report.
fn fio(
    dir: &Path,
    name: &str,
    mode: FioMode,
    block_bytes: u64,
    iodepth: u32,
    seconds: u64,
) -> Value {
    let _ = std::fs::create_dir_all(dir);
    let file = dir.join(format!("fio-{name}"));
    let _ = std::fs::remove_file(&file);
    let mut command = Command::new("fio");
    command.args([
        "--name",
        name,
        "--filename",
        file.to_str().unwrap(),
        "--rw=write",
        "--direct=1",
        "--fallocate=native",
        &format!("--runtime={seconds}"),
        &format!("--bs={block_bytes}"),
        &format!("--iodepth={iodepth}"),
        "--output-format=json",
    ]);
    match mode {
        FioMode::WriteSync => {
            command.args([
                "--size=1g",
                "--time_based",
                "--ioengine=psync",
                "--fdatasync=1",
            ]);
        }
        FioMode::FreshSequential => {
            // 4 GiB per second of runtime: more than this disk writes.
            let size_gib = (4 * seconds).max(1);
            command.args([&format!("--size={size_gib}g"), "--ioengine=io_uring"]);
        }
    }
    let output = command.output().expect("fio runs (apt-get install -y fio)");
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&output.stdout);
    let start = text.find('{').unwrap_or(0);
    let mut report: Value = serde_json::from_str(&text[start..]).expect("fio json");
    report["command"] = json!(format!("{command:?}"));
    report
}

fn fio_summary(report: &Value) -> Value {
    let job = &report["jobs"][0];
    let write = &job["write"];
    let write_p50_us = write["clat_ns"]["percentile"]["50.000000"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e3;
    let sync_p50_us = job["sync"]["lat_ns"]["percentile"]["50.000000"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e3;
    json!({
        "write_iops": write["iops"].as_f64().unwrap_or(0.0),
        "write_bandwidth_mib_per_s": write["bw_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        "write_clat_p50_us": write_p50_us,
        "sync_lat_p50_us": sync_p50_us,
        "write_plus_sync_p50_us": write_p50_us + sync_p50_us,
        "command": report["command"],
    })
}

/// User plus system CPU time of this process so far (all threads, io_uring workers included),
/// from `/proc/self/stat` in clock ticks.
fn process_cpu() -> Duration {
    thread_local! {
        static TICKS_PER_S: u64 = shell("getconf CLK_TCK").parse().unwrap_or(100);
    }
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&index| fields.get(index)?.parse::<u64>().ok())
        .sum();
    TICKS_PER_S.with(|per_s| Duration::from_secs_f64(ticks as f64 / *per_s as f64))
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

fn shell(command: &str) -> String {
    Command::new("sh")
        .args(["-c", command])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_default()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(histogram: &Histogram<u64>, quantile: f64) -> u64 {
    histogram.value_at_quantile(quantile)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let report_dir = PathBuf::from(
        args.get(1)
            .expect("usage: store_bench <report-dir> [seconds]"),
    );
    let seconds: u64 = args
        .get(2)
        .and_then(|value| value.parse().ok())
        .unwrap_or(3);
    let duration = Duration::from_secs(seconds);
    std::fs::create_dir_all(&report_dir).unwrap();
    let scratch = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let load_before = shell("uptime");
    // Profiling aid: `STORE_BENCH_ONLY_APPENDERS=<n>` runs only one case with n appenders and
    // prints its figures, without fio and without writing a report. The case is `fsync always`
    // with 1 KiB records and default options unless `STORE_BENCH_ONLY_POLICY` (`os`, `always`,
    // `interval`), `STORE_BENCH_ONLY_RECORD_BYTES`, `STORE_BENCH_ONLY_WRITE_BYTES`,
    // `STORE_BENCH_ONLY_WRITES_IN_FLIGHT`, `STORE_BENCH_ONLY_SEGMENT_BYTES` and
    // `STORE_BENCH_ONLY_ZERO_FILL` (0 or 1) say otherwise.
    if let Some(appenders) = std::env::var("STORE_BENCH_ONLY_APPENDERS")
        .ok()
        .and_then(|value| value.parse().ok())
    {
        let policy = match std::env::var("STORE_BENCH_ONLY_POLICY").as_deref() {
            Ok("os") => SyncPolicy::Os,
            Ok("interval") => SyncPolicy::Interval(Duration::from_millis(10)),
            Ok("always") | Err(_) => SyncPolicy::Always,
            Ok(other) => panic!("STORE_BENCH_ONLY_POLICY={other}: expected os, always or interval"),
        };
        let record_bytes = std::env::var("STORE_BENCH_ONLY_RECORD_BYTES")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(1024);
        let mut options = options_for(policy);
        if let Some(bytes) = env_number("STORE_BENCH_ONLY_WRITE_BYTES") {
            options.write_bytes_max = bytes;
        }
        if let Some(count) = env_number("STORE_BENCH_ONLY_WRITES_IN_FLIGHT") {
            options.writes_in_flight_max = count as usize;
        }
        if let Some(bytes) = env_number("STORE_BENCH_ONLY_SEGMENT_BYTES") {
            options.segment_bytes = bytes;
        }
        if let Some(flag) = env_number("STORE_BENCH_ONLY_ZERO_FILL") {
            options.zero_fill_segments = flag != 0;
        }
        let result = run_case(
            &scratch.join("log"),
            options,
            record_bytes,
            appenders,
            duration,
        );
        let seconds = result.elapsed.as_secs_f64();
        let stats = result.stats;
        println!(
            "policy={} record_bytes={record_bytes} appenders={appenders} records_per_s={:.0} \
             disk_write_mib_per_s={:.0} cpu_us_per_written_mib={:.0} mean_write_bytes={:.0} \
             mean_writes_in_flight={:.2} \
             syncs_per_s={:.0} records_per_sync={:.1} p50_us={} p99_us={}",
            policy_name(policy),
            result.records_count as f64 / seconds,
            stats.written_bytes as f64 / seconds / 1048576.0,
            result.cpu.as_secs_f64() * 1e6 / (stats.written_bytes as f64 / 1048576.0).max(1e-9),
            stats.written_bytes as f64 / stats.writes_count.max(1) as f64,
            stats.writes_in_flight_sum as f64 / stats.writes_count.max(1) as f64,
            stats.syncs_count as f64 / seconds,
            stats.synced_records_count as f64 / stats.syncs_count.max(1) as f64,
            percentile(&result.latency_us, 0.5),
            percentile(&result.latency_us, 0.99),
        );
        return;
    }

    let mut throughput = Vec::new();
    let policies = [
        SyncPolicy::Os,
        SyncPolicy::Interval(Duration::from_millis(10)),
        SyncPolicy::Always,
    ];
    for policy in policies {
        for record_bytes in RECORD_SIZES_BYTES {
            let result = run_case(
                &scratch.join("log"),
                options_for(policy),
                record_bytes,
                THROUGHPUT_APPENDERS,
                duration,
            );
            let seconds = result.elapsed.as_secs_f64();
            let level_requested = if policy == SyncPolicy::Os {
                Level::Written
            } else {
                Level::Fsynced
            };
            let payload_bytes = result.records_count as f64 * record_bytes as f64;
            let records_per_sync =
                result.stats.synced_records_count as f64 / result.stats.syncs_count.max(1) as f64;
            let mean_write_bytes =
                result.stats.written_bytes as f64 / result.stats.writes_count.max(1) as f64;
            let entry = json!({
                "policy": policy_name(policy),
                "record_payload_bytes": record_bytes,
                "appenders_count": THROUGHPUT_APPENDERS,
                "level_requested": format!("{level_requested:?}"),
                "level_reached": format!("{:?}", result.level),
                "records_per_s": result.records_count as f64 / seconds,
                "payload_mib_per_s": payload_bytes / seconds / 1048576.0,
                "disk_write_mib_per_s": result.stats.written_bytes as f64 / seconds / 1048576.0,
                "mean_write_bytes": mean_write_bytes,
                "mean_writes_in_flight":
                    result.stats.writes_in_flight_sum as f64
                        / result.stats.writes_count.max(1) as f64,
                "cpu_us_per_written_mib": result.cpu.as_secs_f64() * 1e6
                    / (result.stats.written_bytes as f64 / 1048576.0).max(1e-9),
                "syncs_per_s": result.stats.syncs_count as f64 / seconds,
                "records_per_sync": records_per_sync,
                "elapsed_s": seconds,
                "recovery_records_count": result.recovery.records_count,
                "recovery_segments_count": result.recovery.segments_count,
                "recovery_ms": result.recovery.elapsed.as_secs_f64() * 1e3,
            });
            println!("{entry}");
            throughput.push(entry);
        }
    }

    // The virtual disk's speed drifts from second to second, so each comparison alternates the
    // store and fio REPEATS times and compares medians.
    let mut latency = Vec::new();
    for appenders in APPENDER_COUNTS {
        let record_bytes = 1024;
        let mut merged = Histogram::<u64>::new(3).unwrap();
        let (mut store_rates, mut fio_rates) = (Vec::new(), Vec::new());
        let (mut fio_p50s, mut groups) = (Vec::new(), Vec::new());
        let mut block = 0;
        let mut fio_runs = Vec::new();
        for _ in 0..REPEATS {
            let log_dir = scratch.join("log");
            let result = run_case(
                &log_dir,
                options_for(SyncPolicy::Always),
                record_bytes,
                appenders,
                duration,
            );
            let seconds = result.elapsed.as_secs_f64();
            let stats = result.stats;
            groups.push(stats.synced_records_count as f64 / stats.syncs_count.max(1) as f64);
            if block == 0 {
                let group_bytes = stats.written_bytes as f64 / stats.writes_count.max(1) as f64;
                block = ((group_bytes / 4096.0).round().max(1.0) as u64) * 4096;
            }
            store_rates.push(stats.syncs_count as f64 / seconds);
            merged.add(&result.latency_us).unwrap();
            let name = format!("sync-{appenders}");
            let fio = fio_summary(&fio(
                &scratch,
                &name,
                FioMode::WriteSync,
                block,
                1,
                duration.as_secs(),
            ));
            fio_rates.push(fio["write_iops"].as_f64().unwrap_or(0.0));
            fio_p50s.push(fio["write_plus_sync_p50_us"].as_f64().unwrap_or(0.0));
            fio_runs.push(fio);
        }
        let syncs_per_s = median(&store_rates);
        let fio_syncs_per_s = median(&fio_rates);
        let group = median(&groups);
        let p50 = percentile(&merged, 0.5);
        let fio_p50_us = median(&fio_p50s);
        let entry = json!({
            "policy": "always",
            "record_payload_bytes": record_bytes,
            "appenders_count": appenders,
            "repeats_count": REPEATS,
            "latency_p50_us": p50,
            "latency_p99_us": percentile(&merged, 0.99),
            "latency_p999_us": percentile(&merged, 0.999),
            "latency_max_us": merged.max(),
            "syncs_per_s_median": syncs_per_s,
            "syncs_per_s_runs": store_rates,
            "records_per_sync_median": group,
            "fio_block_bytes": block,
            "fio_syncs_per_s_median": fio_syncs_per_s,
            "fio_syncs_per_s_runs": fio_rates,
            "fio_write_plus_sync_p50_us_median": fio_p50_us,
            "fio_runs": fio_runs,
            "ratio_syncs_per_s_vs_fio": syncs_per_s / fio_syncs_per_s.max(1e-9),
            "ratio_mean_group_vs_appenders": group / appenders as f64,
            "p50_minus_fio_write_plus_sync_p50_us": p50 as f64 - fio_p50_us,
        });
        println!("{entry}");
        latency.push(entry);
    }

    // Sequential bandwidth, `os` policy, 16 KiB records, against fio at the store's mean write size
    // on fresh preallocated space, at queue depth 1, at the store's cap on writes in flight (the
    // target's comparison) and at twice that; and, for reference, fio with 1 MiB writes. Alternated
    // like above: the virtual disk drifts.
    let os_options = options_for(SyncPolicy::Os);
    let store_depth = os_options.writes_in_flight_max as u32;
    let mut fio_depths = vec![1, store_depth, 2 * store_depth];
    fio_depths.dedup();
    let reference_depths = [1u32, 2];
    let mut store_mibs = Vec::new();
    let mut unfilled_mibs = Vec::new();
    let mut store_cpu_us_per_mib = Vec::new();
    let mut store_depths = Vec::new();
    let mut fio_mibs: Vec<Vec<f64>> = vec![Vec::new(); fio_depths.len()];
    let mut reference_mibs: Vec<Vec<f64>> = vec![Vec::new(); reference_depths.len()];
    let mut fio_commands = Vec::new();
    let mut store_block = 0;
    for _ in 0..OS_REPEATS {
        let result = run_case(
            &scratch.join("log"),
            os_options.clone(),
            16 * 1024,
            THROUGHPUT_APPENDERS,
            duration,
        );
        let stats = result.stats;
        let written_mib = stats.written_bytes as f64 / 1048576.0;
        store_mibs.push(written_mib / result.elapsed.as_secs_f64());
        store_cpu_us_per_mib.push(result.cpu.as_secs_f64() * 1e6 / written_mib.max(1e-9));
        store_depths.push(stats.writes_in_flight_sum as f64 / stats.writes_count.max(1) as f64);
        if store_block == 0 {
            let mean = stats.written_bytes as f64 / stats.writes_count.max(1) as f64;
            store_block = ((mean / 4096.0).round().max(1.0) as u64) * 4096;
        }
        // The same case with segments only preallocated: the zero-filling of spares writes every
        // segment twice, which costs bandwidth when the disk is the limit.
        let unfilled = run_case(
            &scratch.join("log"),
            Options {
                zero_fill_segments: false,
                ..os_options.clone()
            },
            16 * 1024,
            THROUGHPUT_APPENDERS,
            duration,
        );
        unfilled_mibs
            .push(unfilled.stats.written_bytes as f64 / 1048576.0 / unfilled.elapsed.as_secs_f64());
        let seconds = duration.as_secs();
        for (index, &depth) in fio_depths.iter().enumerate() {
            let name = format!("seq-qd{depth}");
            let mode = FioMode::FreshSequential;
            let report = fio(&scratch, &name, mode, store_block, depth, seconds);
            let summary = fio_summary(&report);
            fio_mibs[index].push(summary["write_bandwidth_mib_per_s"].as_f64().unwrap_or(0.0));
            fio_commands.push(summary["command"].clone());
        }
        for (index, &depth) in reference_depths.iter().enumerate() {
            let name = format!("seq-1mib-qd{depth}");
            let mode = FioMode::FreshSequential;
            let report = fio(&scratch, &name, mode, 1024 * 1024, depth, seconds);
            let summary = fio_summary(&report);
            reference_mibs[index]
                .push(summary["write_bandwidth_mib_per_s"].as_f64().unwrap_or(0.0));
        }
    }
    let store_mib = median(&store_mibs);
    let unfilled_mib = median(&unfilled_mibs);
    let fio_medians: Vec<f64> = fio_mibs.iter().map(|runs| median(runs)).collect();
    let same_depth_index = fio_depths
        .iter()
        .position(|&depth| depth == store_depth)
        .unwrap();
    let fio_same_depth_mib = fio_medians[same_depth_index];
    let fio_best_mib = fio_medians.iter().copied().fold(0.0, f64::max);
    let fio_by_depth: Vec<Value> = fio_depths
        .iter()
        .zip(&fio_mibs)
        .zip(&fio_medians)
        .map(|((depth, runs), median)| {
            json!({ "iodepth": depth, "mib_per_s_median": median, "mib_per_s_runs": runs })
        })
        .collect();
    let reference_by_depth: Vec<Value> = reference_depths
        .iter()
        .zip(&reference_mibs)
        .map(|(depth, runs)| {
            json!({
                "iodepth": depth,
                "block_bytes": 1024 * 1024,
                "mib_per_s_median": median(runs),
                "mib_per_s_runs": runs,
            })
        })
        .collect();

    let revision =
        shell("git -C \"$(dirname $0)\" rev-parse HEAD 2>/dev/null || git rev-parse HEAD");
    let report = json!({
        "benchmark": "ruuster-segment-store store_bench",
        "command": args.join(" "),
        "git_revision": revision,
        "git_dirty": !shell("git status --porcelain -- segment-store").is_empty(),
        "machine": {
            "uname": shell("uname -a"),
            "cpu_model": shell("grep -m1 'model name' /proc/cpuinfo"),
            "cpus_count": shell("nproc"),
            "memory": shell("grep MemTotal /proc/meminfo"),
            "disk": shell("lsblk -d -o NAME,MODEL,SIZE,ROTA,LOG-SEC,PHY-SEC"),
            "filesystem": shell(&format!("df -T {} | tail -1", scratch.display())),
            "fio_version": shell("fio --version"),
            "uptime_before": load_before,
            "uptime_after": shell("uptime"),
            "placement": "one glommio executor, Placement::Unbound, 2-vCPU VM shared",
        },
        "seconds_per_case": seconds,
        "throughput": throughput,
        "durable_latency": latency,
        "os_16k_vs_fio": {
            "repeats_count": OS_REPEATS,
            "appenders_count": THROUGHPUT_APPENDERS,
            "store_write_bytes_max": os_options.write_bytes_max,
            "store_writes_in_flight_max": store_depth,
            "store_disk_write_mib_per_s_median": store_mib,
            "store_disk_write_mib_per_s_runs": store_mibs,
            "store_mean_writes_in_flight_runs": store_depths,
            "store_cpu_us_per_written_mib_runs": store_cpu_us_per_mib,
            "fio_block_bytes": store_block,
            "fio_by_iodepth": fio_by_depth,
            "fio_same_depth_mib_per_s_median": fio_same_depth_mib,
            "fio_best_depth_mib_per_s_median": fio_best_mib,
            "fio_1mib_reference": reference_by_depth,
            "fio_commands": fio_commands,
            "ratio_vs_fio_same_size_and_depth": store_mib / fio_same_depth_mib.max(1e-9),
            "ratio_vs_fio_same_size_best_depth": store_mib / fio_best_mib.max(1e-9),
            "store_unfilled_disk_write_mib_per_s_median": unfilled_mib,
            "store_unfilled_disk_write_mib_per_s_runs": unfilled_mibs,
            "ratio_unfilled_vs_fio_same_size_and_depth": unfilled_mib / fio_same_depth_mib.max(1e-9),
        },
    });
    std::fs::write(
        report_dir.join("bench.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    println!(
        "report written to {}",
        report_dir.join("bench.json").display()
    );
}
