//! `ruuster-loadgen`: parses the flags, runs the chosen driver and writes the results folder.
//!
//! Exit status: 0 when the run completed cleanly, 2 when it completed but with errors or missing
//! deliveries (the report is still written), 1 when it could not run.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Parser;

use ruuster_loadgen::config::{Cli, DriverKind, RunConfig};
use ruuster_loadgen::driver::amqp::AmqpDriver;
use ruuster_loadgen::driver::ruuster::RuusterDriver;
use ruuster_loadgen::report::{self, Context};
use ruuster_loadgen::{clock, run, system};

const EXIT_INCOMPLETE: u8 = 2;

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ruuster-loadgen: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    clock::init();
    let cli = Cli::parse();
    let config = RunConfig::resolve(&cli)?;
    let command_line: Vec<String> = std::env::args()
        .map(|argument| system::shell_quote(&argument))
        .collect();
    let mut context = Context::gather_before(command_line.join(" "), config.broker_pid);

    let folder = report::results_folder(&cli.results_dir, context.started_unix_secs, &config.label);
    if folder.exists() && !cli.overwrite {
        bail!(
            "{} exists; choose another --label or pass --overwrite",
            folder.display()
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let outcome = match config.driver {
        DriverKind::Ruuster => {
            let driver = Arc::new(RuusterDriver::new(config.ruuster.clone()));
            runtime.block_on(run::run(driver, &config))?
        }
        DriverKind::Amqp => {
            let driver = Arc::new(AmqpDriver::new(config.amqp.clone()));
            runtime.block_on(run::run(driver, &config))?
        }
    };
    context.load_average_at_end = system::load_average();

    let mut report = report::build(&config, &outcome, &context);
    report::write(&folder, &mut report, &outcome.metrics)
        .with_context(|| format!("writing {}", folder.display()))?;
    print_summary(&report, &folder);

    let results = &report.results;
    let clean = results.error_count == 0 && results.missing_delivery_count == 0 && results.drained;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INCOMPLETE)
    })
}

fn print_summary(report: &report::Report, folder: &std::path::Path) {
    let results = &report.results;
    let us = |ns: u64| ns as f64 / 1_000.0;
    println!("results: {}", folder.display());
    println!(
        "published {} confirmed {} nacked {} delivered {} (expected {}) errors {}",
        results.published_count,
        results.confirmed_count,
        results.nacked_count,
        results.delivered_count,
        results.expected_delivery_count,
        results.error_count
    );
    println!(
        "throughput: publish {:.0} msg/s, delivery {:.0} msg/s ({:.1} MB/s)",
        results.publish_throughput_msgs_per_sec,
        results.delivery_throughput_msgs_per_sec,
        results.delivery_throughput_megabytes_per_sec
    );
    for (name, summary) in &results.latency {
        println!(
            "{name:<34} p50 {:>10.1} p90 {:>10.1} p99 {:>10.1} p99.9 {:>10.1} p99.99 {:>10.1} \
             max {:>10.1} us",
            us(summary.p50_ns),
            us(summary.p90_ns),
            us(summary.p99_ns),
            us(summary.p99_9_ns),
            us(summary.p99_99_ns),
            us(summary.max_ns)
        );
    }
    let broker_cpu = results
        .broker_cpu_percent_of_one_core
        .map_or_else(|| "unknown".to_owned(), |percent| format!("{percent:.0} %"));
    println!(
        "cpu: loadgen {:.0} %, broker {broker_cpu} (100 % = one core)",
        results.loadgen_cpu_percent_of_one_core
    );
    if let Some(check) = &report.reference_check {
        println!(
            "reference ({}): {}",
            check.reference.description, check.verdict
        );
    }
    for error in &results.error_samples {
        println!("error: {error}");
    }
}
