//! Benchmark of the segment store against the raw limits of the same disk, measured by fio in
//! the same run with the store's write size, queue depth and file layout (preallocated).
//!
//! Usage: `cargo run --release -p ruuster-segment-store --example store_bench -- <report-dir>
//! [seconds-per-case]`. Writes `<report-dir>/bench.json` and `<report-dir>/bench.md`.
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

struct CaseResult {
    records_count: u64,
    elapsed: Duration,
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
    policy: SyncPolicy,
    record_bytes: usize,
    appenders: usize,
    duration: Duration,
) -> CaseResult {
    let _ = std::fs::remove_dir_all(dir);
    let dir = dir.to_path_buf();
    executor().run(async move {
        let (log, _) = Log::open(&dir, options_for(policy)).await.expect("open");
        let log = Rc::new(log);
        let level = match policy {
            SyncPolicy::Os => Level::Written,
            _ => Level::Fsynced,
        };
        let histogram = Rc::new(RefCell::new(Histogram::<u64>::new(3).unwrap()));
        let started = Instant::now();
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
        let after = log.stats();
        let stats = Stats {
            writes_count: after.writes_count - stats_before.writes_count,
            written_bytes: after.written_bytes - stats_before.written_bytes,
            syncs_count: after.syncs_count - stats_before.syncs_count,
            synced_records_count: after.synced_records_count - stats_before.synced_records_count,
            ..after
        };
        let latency_us = histogram.borrow().clone();
        drop(log);
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let (log, recovery) = Log::open(&dir, options_for(policy)).await.expect("reopen");
        drop(log);
        glommio::timer::sleep(Duration::from_millis(20)).await;
        CaseResult {
            records_count,
            elapsed,
            stats,
            latency_us,
            level: reached,
            recovery,
        }
    })
}

/// Runs fio on a preallocated file in `dir`; returns its JSON report.
fn fio(
    dir: &Path,
    name: &str,
    block_bytes: u64,
    iodepth: u32,
    fdatasync: bool,
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
        "--size=1g",
        "--time_based",
        &format!("--runtime={seconds}"),
        &format!("--bs={block_bytes}"),
        &format!("--iodepth={iodepth}"),
        "--output-format=json",
    ]);
    if fdatasync {
        command.args(["--ioengine=psync", "--fdatasync=1"]);
    } else {
        command.arg("--ioengine=io_uring");
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
    // Profiling aid: `STORE_BENCH_ONLY_APPENDERS=<n>` runs only the durable-latency case with n
    // appenders and prints its figures, without fio and without writing a report.
    if let Some(appenders) = std::env::var("STORE_BENCH_ONLY_APPENDERS")
        .ok()
        .and_then(|value| value.parse().ok())
    {
        let result = run_case(
            &scratch.join("log"),
            SyncPolicy::Always,
            1024,
            appenders,
            duration,
        );
        let seconds = result.elapsed.as_secs_f64();
        println!(
            "appenders={appenders} syncs_per_s={:.0} records_per_sync={:.1} p50_us={} p99_us={}",
            result.stats.syncs_count as f64 / seconds,
            result.stats.synced_records_count as f64 / result.stats.syncs_count.max(1) as f64,
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
                policy,
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
                SyncPolicy::Always,
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
            let fio = fio_summary(&fio(&scratch, &name, block, 1, true, duration.as_secs()));
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

    // Sequential bandwidth, `os` policy, 16 KiB records, against fio at the store's write size and
    // queue depth 1 (and 2 for reference), alternated like above.
    let (mut store_mibs, mut fio_mibs, mut fio_qd2_mibs) = (Vec::new(), Vec::new(), Vec::new());
    let mut store_block = 0;
    for _ in 0..REPEATS {
        let result = run_case(
            &scratch.join("log"),
            SyncPolicy::Os,
            16 * 1024,
            64,
            duration,
        );
        let stats = result.stats;
        store_mibs.push(stats.written_bytes as f64 / result.elapsed.as_secs_f64() / 1048576.0);
        if store_block == 0 {
            let mean = stats.written_bytes as f64 / stats.writes_count.max(1) as f64;
            store_block = ((mean / 4096.0).round().max(1.0) as u64) * 4096;
        }
        let seconds = duration.as_secs();
        let qd1 = fio_summary(&fio(&scratch, "seq-qd1", store_block, 1, false, seconds));
        fio_mibs.push(qd1["write_bandwidth_mib_per_s"].as_f64().unwrap_or(0.0));
        let qd2 = fio_summary(&fio(&scratch, "seq-qd2", store_block, 2, false, seconds));
        fio_qd2_mibs.push(qd2["write_bandwidth_mib_per_s"].as_f64().unwrap_or(0.0));
    }
    let store_mib = median(&store_mibs);
    let fio_mib = median(&fio_mibs);

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
            "repeats_count": REPEATS,
            "store_disk_write_mib_per_s_median": store_mib,
            "store_disk_write_mib_per_s_runs": store_mibs,
            "fio_block_bytes": store_block,
            "fio_qd1_mib_per_s_median": fio_mib,
            "fio_qd1_mib_per_s_runs": fio_mibs,
            "fio_qd2_mib_per_s_median": median(&fio_qd2_mibs),
            "ratio_vs_fio_qd1": store_mib / fio_mib.max(1e-9),
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
