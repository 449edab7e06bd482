//! Routing benchmark: nanoseconds per route through a [`RoutingTable`] beside a naive matcher
//! (a linear scan over bindings with a recursive topic matcher, sharing no code with the table),
//! for topic, direct and headers exchanges at 100, 1,000 and 10,000 bindings.
//!
//! Run with `cargo bench -p ruuster-broker --bench routing`. It writes
//! `bench-results/<YYYY-MM-DD>-routing/report.json` and `README.md` at the workspace root, with
//! the machine, the git revision, the load average (other work shares this machine) and every
//! parameter. Before timing, it checks on a sample of keys that both matchers reach the same
//! queues, so a wrong or unplugged parameter fails loudly instead of timing nothing.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ruuster_broker::routing::{
    ArgumentValue, BindingArgument, BindingSpec, ExchangeKind, ExchangeSpec, HeaderValue,
    MessageHeaders, NoHeaders, QueueId, QueueSpec, RouteTargets, RoutingMetadata, RoutingTable,
    ShardId,
};
use serde_json::{Value, json};

/// Timed runs per measurement; the report gives their median.
const RUN_COUNT: usize = 5;

/// Each run is cut into this many equal batches; the report gives the 99th percentile over all
/// batches of all runs, which shows stalls (another agent's compile) that a median hides.
const BATCH_COUNT_PER_RUN: usize = 200;

/// Routes per run for matchers whose cost does not grow with the binding count.
const ROUTES_PER_RUN_MAX: usize = 1_000_000;

/// Binding checks per run for linear matchers: routes per run is this over the binding count, so
/// that a naive run at 10,000 bindings stays around a second.
const LINEAR_CHECKS_PER_RUN: usize = 20_000_000;

/// Distinct routing keys (and header sets) drawn before timing, cycled through by every run.
const KEY_POOL_SIZE: usize = 1 << 16;

/// Keys checked for equal results between the two matchers before timing.
const AGREEMENT_SAMPLE_SIZE: usize = 4_096;

const BINDING_COUNTS: [usize; 3] = [100, 1_000, 10_000];

/// Queues alternate between this many owning shards, as on the 2-core development machine.
const SHARD_COUNT: u16 = 2;

const REGION_COUNT: u64 = 16;
const SERVICE_COUNT: u64 = 100;
const METRIC_NAMES: [&str; 8] = [
    "temp", "humidity", "pressure", "co2", "noise", "lux", "pm25", "v",
];
const LEVEL_NAMES: [&str; 4] = ["debug", "info", "warn", "error"];
const ALARM_ZONE_COUNT: u64 = 200;
const FORMAT_NAMES: [&str; 8] = ["pdf", "png", "csv", "json", "xml", "txt", "jpg", "avro"];

const SEED: u64 = 0x0052_4f55_5449_4e47;

/// Messages checked for agreement, and no timing, when the binary runs without `--bench` (as
/// `cargo test --all-targets` runs it, unoptimised): a smoke test of both matchers.
const SMOKE_SAMPLE_SIZE: usize = 256;

fn main() {
    if !std::env::args().any(|argument| argument == "--bench") {
        smoke_test();
        return;
    }

    let load_at_start = read_load_average();
    let uptime_at_start = command_output("uptime", &[]);
    let mut results = Vec::new();

    for &binding_count in &BINDING_COUNTS {
        for kind in [Workload::Topic, Workload::Direct, Workload::Headers] {
            let result = measure(kind, binding_count);
            eprintln!("{}", serde_json::to_string(&result).expect("json"));
            results.push(result);
        }
    }

    let report = json!({
        "benchmark": "routing",
        "date_utc": today_utc(),
        "git_revision": command_output("git", &["rev-parse", "HEAD"]),
        // Earlier reports under bench-results/ do not change the code being measured.
        "git_changes_outside_bench_results": command_output(
            "git",
            &["status", "--porcelain", "--", ":(top,exclude)bench-results"],
        ),
        "command": "cargo bench -p ruuster-broker --bench routing",
        "binary_arguments": std::env::args().collect::<Vec<_>>(),
        "profile": "bench (inherits release: opt-level 3, panic abort)",
        "machine": {
            "cpu_model": cpu_model(),
            "core_count": std::thread::available_parallelism().map_or(0, |count| count.get()),
            "kernel": command_output("uname", &["-sr"]),
            "uptime_at_start": uptime_at_start,
            "uptime_at_end": command_output("uptime", &[]),
            "load_average_1m_5m_15m_at_start": load_at_start,
            "load_average_1m_5m_15m_at_end": read_load_average(),
        },
        "parameters": {
            "run_count": RUN_COUNT,
            "batch_count_per_run": BATCH_COUNT_PER_RUN,
            "routes_per_run_max": ROUTES_PER_RUN_MAX,
            "linear_binding_checks_per_run": LINEAR_CHECKS_PER_RUN,
            "key_pool_size": KEY_POOL_SIZE,
            "agreement_sample_size": AGREEMENT_SAMPLE_SIZE,
            "binding_counts": BINDING_COUNTS,
            "shard_count": SHARD_COUNT,
            "seed": SEED,
            "topic_binding_mix": TOPIC_BINDING_MIX,
            "topic_key_mix": TOPIC_KEY_MIX,
            "direct_workload": "binding i: key order.<i> to queue i; keys order.<k>, k uniform \
                                in 0..1.1 x bindings (about 90% hit)",
            "headers_workload": "binding i: x-match all (even i) or any (odd i) on format and \
                                 region (strings); messages carry format, region and size (int)",
        },
        "results": results,
    });
    write_report(&report);
}

const TOPIC_BINDING_MIX: &str = "60% region.<r>.sensor.<id>.*, 10% region.<r>.sensor.*.<metric>, \
    10% logs.<service>.#, 10% #.alarm.<zone>, 5% region.<r>.#.<metric>, 5% *.<service>.*.error; \
    r < 16, id < bindings/4, service < 100, zone < 200, 8 metrics";
const TOPIC_KEY_MIX: &str = "60% region.<r>.sensor.<id>.<metric> with id skewed toward 0 \
    (square of a uniform), 20% logs.<service>.<level>.<component>, \
    10% region.<r>.sensor.<id>.alarm.<zone>, 10% metrics.<a>.<b> (matches nothing)";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Workload {
    Topic,
    Direct,
    Headers,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Topic => "topic",
            Workload::Direct => "direct",
            Workload::Headers => "headers",
        }
    }

    fn kind(self) -> ExchangeKind {
        match self {
            Workload::Topic => ExchangeKind::Topic,
            Workload::Direct => ExchangeKind::Direct,
            Workload::Headers => ExchangeKind::Headers,
        }
    }
}

/// One message to route: a routing key and, for headers exchanges, three headers.
struct Message {
    routing_key: String,
    format: &'static str,
    region: String,
    size: i64,
}

/// The message's headers as the table reads them.
struct BenchHeaders<'a>(&'a Message);

impl MessageHeaders for BenchHeaders<'_> {
    fn get(&self, key: &str) -> Option<HeaderValue<'_>> {
        match key {
            "format" => Some(HeaderValue::Str(self.0.format)),
            "region" => Some(HeaderValue::Str(&self.0.region)),
            "size" => Some(HeaderValue::Int(self.0.size)),
            _ => None,
        }
    }
}

/// Checks that both matchers agree on every workload, without timing or writing a report.
fn smoke_test() {
    for &binding_count in &BINDING_COUNTS {
        for workload in [Workload::Topic, Workload::Direct, Workload::Headers] {
            let (metadata, messages) = workload_data(workload, binding_count, SMOKE_SAMPLE_SIZE);
            let table = RoutingTable::build(1, &metadata).expect("benchmark metadata is valid");
            let naive = NaiveExchange::new(&metadata);
            let (matched_share, _) = check_agreement(workload, &table, &naive, &messages);
            println!(
                "{} at {binding_count} bindings: both matchers agree on {SMOKE_SAMPLE_SIZE} \
                 messages, {matched_share:.2} of them routed",
                workload.name()
            );
        }
    }
    println!("smoke run only: pass --bench (cargo bench) to time and write the report");
}

fn workload_data(
    workload: Workload,
    binding_count: usize,
    message_count: usize,
) -> (RoutingMetadata, Vec<Message>) {
    let mut random = SplitMix64(SEED ^ binding_count as u64 ^ workload as u64);
    let metadata = metadata(workload, binding_count, &mut random);
    let messages = (0..message_count)
        .map(|_| message(workload, binding_count, &mut random))
        .collect();
    (metadata, messages)
}

fn measure(workload: Workload, binding_count: usize) -> Value {
    let (metadata, messages) = workload_data(workload, binding_count, KEY_POOL_SIZE);

    let build_started = Instant::now();
    let table = RoutingTable::build(1, &metadata).expect("benchmark metadata is valid");
    let table_build_duration = build_started.elapsed();
    let naive = NaiveExchange::new(&metadata);

    let (matched_share, targets_per_route_mean) =
        check_agreement(workload, &table, &naive, &messages[..AGREEMENT_SAMPLE_SIZE]);

    let real_routes_per_run = if workload == Workload::Headers {
        linear_routes_per_run(binding_count)
    } else {
        ROUTES_PER_RUN_MAX
    };
    let mut out = RouteTargets::new();
    let real = time_runs(real_routes_per_run, &messages, |message| {
        route_real(workload, &table, message, &mut out);
        out.len()
    });
    let mut naive_out = Vec::new();
    let naive_timing = time_runs(linear_routes_per_run(binding_count), &messages, |message| {
        naive.route(message, &mut naive_out);
        naive_out.len()
    });

    json!({
        "exchange_kind": workload.name(),
        "binding_count": binding_count,
        "queue_count": metadata.queues.len(),
        "table_build_duration_ms": table_build_duration.as_secs_f64() * 1e3,
        "matched_share_of_routes": matched_share,
        "targets_per_route_mean": targets_per_route_mean,
        "real": real.to_json(),
        "naive": naive_timing.to_json(),
        "ratio_naive_over_real_ns_per_route_median":
            naive_timing.ns_per_route_median() / real.ns_per_route_median(),
    })
}

fn linear_routes_per_run(binding_count: usize) -> usize {
    (LINEAR_CHECKS_PER_RUN / binding_count).clamp(BATCH_COUNT_PER_RUN, ROUTES_PER_RUN_MAX)
}

fn route_real(workload: Workload, table: &RoutingTable, message: &Message, out: &mut RouteTargets) {
    let result = if workload == Workload::Headers {
        table.route("x", &message.routing_key, &BenchHeaders(message), out)
    } else {
        table.route("x", &message.routing_key, &NoHeaders, out)
    };
    result.expect("the benchmark exchange exists");
}

/// Asserts that both matchers reach the same queues on a sample of messages, and returns the
/// share of routes that reach any queue and the mean number of queues reached.
fn check_agreement(
    workload: Workload,
    table: &RoutingTable,
    naive: &NaiveExchange,
    messages: &[Message],
) -> (f64, f64) {
    let mut out = RouteTargets::new();
    let mut naive_out = Vec::new();
    let mut matched_count = 0_usize;
    let mut target_count = 0_usize;
    for message in messages {
        route_real(workload, table, message, &mut out);
        naive.route(message, &mut naive_out);
        let mut real: Vec<QueueId> = out.queues().to_vec();
        real.sort_unstable();
        let mut expected: Vec<QueueId> = naive_out.iter().map(|&(id, _)| id).collect();
        expected.sort_unstable();
        assert_eq!(
            real,
            expected,
            "{} key {:?}",
            workload.name(),
            message.routing_key
        );
        for (shard, queues) in out.by_shard() {
            assert!(queues.iter().all(|id| naive_out.contains(&(*id, shard))));
        }
        matched_count += usize::from(!real.is_empty());
        target_count += real.len();
    }
    let sample = messages.len() as f64;
    (matched_count as f64 / sample, target_count as f64 / sample)
}

struct Timing {
    routes_per_run: usize,
    routes_per_batch: usize,
    ns_per_route_by_run: Vec<f64>,
    ns_per_route_by_batch: Vec<f64>,
    targets_total: usize,
}

impl Timing {
    fn ns_per_route_median(&self) -> f64 {
        let mut sorted = self.ns_per_route_by_run.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }

    fn to_json(&self) -> Value {
        let mut batches = self.ns_per_route_by_batch.clone();
        batches.sort_by(f64::total_cmp);
        let p99_index = ((batches.len() as f64) * 0.99).ceil() as usize - 1;
        json!({
            "routes_per_run": self.routes_per_run,
            "routes_per_batch": self.routes_per_batch,
            "ns_per_route_median": self.ns_per_route_median(),
            "ns_per_route_by_run": self.ns_per_route_by_run,
            "ns_per_route_batch_p50": batches[batches.len() / 2],
            "ns_per_route_batch_p99": batches[p99_index],
            "ns_per_route_batch_max": batches[batches.len() - 1],
            "targets_total": self.targets_total,
        })
    }
}

/// Times `RUN_COUNT` runs of `routes_per_run` routes, cycling through `messages`, after one
/// untimed batch that warms caches and grows the output buffers.
fn time_runs(
    routes_per_run: usize,
    messages: &[Message],
    mut route: impl FnMut(&Message) -> usize,
) -> Timing {
    assert!(
        messages.len().is_power_of_two(),
        "the key pool is cycled with a mask"
    );
    let mask = messages.len() - 1;
    let routes_per_batch = routes_per_run / BATCH_COUNT_PER_RUN;
    let mut cursor = 0_usize;
    let mut targets_total = 0_usize;

    for _ in 0..routes_per_batch {
        targets_total += route(black_box(&messages[cursor & mask]));
        cursor += 1;
    }

    let mut ns_per_route_by_run = Vec::with_capacity(RUN_COUNT);
    let mut ns_per_route_by_batch = Vec::with_capacity(RUN_COUNT * BATCH_COUNT_PER_RUN);
    for _ in 0..RUN_COUNT {
        let mut run_elapsed = Duration::ZERO;
        for _ in 0..BATCH_COUNT_PER_RUN {
            let started = Instant::now();
            for _ in 0..routes_per_batch {
                targets_total += route(black_box(&messages[cursor & mask]));
                cursor += 1;
            }
            let elapsed = started.elapsed();
            run_elapsed += elapsed;
            ns_per_route_by_batch.push(elapsed.as_nanos() as f64 / routes_per_batch as f64);
        }
        let routes = (routes_per_batch * BATCH_COUNT_PER_RUN) as f64;
        ns_per_route_by_run.push(run_elapsed.as_nanos() as f64 / routes);
    }
    Timing {
        routes_per_run: routes_per_batch * BATCH_COUNT_PER_RUN,
        routes_per_batch,
        ns_per_route_by_run,
        ns_per_route_by_batch,
        targets_total: black_box(targets_total),
    }
}

fn metadata(workload: Workload, binding_count: usize, random: &mut SplitMix64) -> RoutingMetadata {
    let queues = (0..binding_count)
        .map(|index| QueueSpec {
            name: format!("queue-{index}"),
            id: QueueId(index as u32),
            owner: ShardId(index as u16 % SHARD_COUNT),
        })
        .collect();
    let bindings = (0..binding_count)
        .map(|index| {
            let (key, arguments) = match workload {
                Workload::Topic => (topic_binding_key(binding_count, random), Vec::new()),
                Workload::Direct => (format!("order.{index}"), Vec::new()),
                Workload::Headers => (String::new(), headers_arguments(index, random)),
            };
            BindingSpec {
                exchange: "x".to_owned(),
                queue: format!("queue-{index}"),
                key,
                arguments,
            }
        })
        .collect();
    RoutingMetadata {
        exchanges: vec![ExchangeSpec {
            name: "x".to_owned(),
            kind: workload.kind(),
        }],
        queues,
        bindings,
    }
}

fn topic_binding_key(binding_count: usize, random: &mut SplitMix64) -> String {
    let sensor_count = (binding_count as u64 / 4).max(1);
    let region = random.below(REGION_COUNT);
    let metric = METRIC_NAMES[random.below(METRIC_NAMES.len() as u64) as usize];
    match random.below(100) {
        0..60 => format!("region.{region}.sensor.{}.*", random.below(sensor_count)),
        60..70 => format!("region.{region}.sensor.*.{metric}"),
        70..80 => format!("logs.service-{}.#", random.below(SERVICE_COUNT)),
        80..90 => format!("#.alarm.{}", random.below(ALARM_ZONE_COUNT)),
        90..95 => format!("region.{region}.#.{metric}"),
        _ => format!("*.service-{}.*.error", random.below(SERVICE_COUNT)),
    }
}

fn headers_arguments(index: usize, random: &mut SplitMix64) -> Vec<BindingArgument> {
    let mode = if index.is_multiple_of(2) {
        "all"
    } else {
        "any"
    };
    let format = FORMAT_NAMES[random.below(FORMAT_NAMES.len() as u64) as usize];
    let region = format!("region-{}", random.below(REGION_COUNT));
    vec![
        BindingArgument {
            key: "x-match".to_owned(),
            value: ArgumentValue::Str(mode.to_owned()),
        },
        BindingArgument {
            key: "format".to_owned(),
            value: ArgumentValue::Str(format.to_owned()),
        },
        BindingArgument {
            key: "region".to_owned(),
            value: ArgumentValue::Str(region),
        },
    ]
}

fn message(workload: Workload, binding_count: usize, random: &mut SplitMix64) -> Message {
    let routing_key = match workload {
        Workload::Topic => topic_routing_key(binding_count, random),
        Workload::Direct => {
            format!("order.{}", random.below(binding_count as u64 * 11 / 10))
        }
        Workload::Headers => String::new(),
    };
    Message {
        routing_key,
        format: FORMAT_NAMES[random.below(FORMAT_NAMES.len() as u64) as usize],
        region: format!("region-{}", random.below(REGION_COUNT)),
        size: random.below(1 << 20) as i64,
    }
}

fn topic_routing_key(binding_count: usize, random: &mut SplitMix64) -> String {
    let sensor_count = (binding_count as u64 / 4).max(1);
    let uniform = random.unit();
    let sensor = ((uniform * uniform) * sensor_count as f64) as u64;
    let region = random.below(REGION_COUNT);
    let metric = METRIC_NAMES[random.below(METRIC_NAMES.len() as u64) as usize];
    match random.below(100) {
        0..60 => format!("region.{region}.sensor.{sensor}.{metric}"),
        60..80 => format!(
            "logs.service-{}.{}.component-{}",
            random.below(SERVICE_COUNT),
            LEVEL_NAMES[random.below(LEVEL_NAMES.len() as u64) as usize],
            random.below(10)
        ),
        80..90 => format!(
            "region.{region}.sensor.{sensor}.alarm.{}",
            random.below(ALARM_ZONE_COUNT)
        ),
        _ => format!("metrics.{}.{}", random.below(1000), random.below(1000)),
    }
}

/// The naive matcher: every binding checked on every route, topics matched by recursion over the
/// words, repeats removed by a linear search of the output.
struct NaiveExchange {
    kind: ExchangeKind,
    bindings: Vec<NaiveBinding>,
}

struct NaiveBinding {
    pattern_words: Vec<String>,
    key: String,
    all: bool,
    conditions: Vec<(String, String)>,
    queue: QueueId,
    shard: ShardId,
}

impl NaiveExchange {
    fn new(metadata: &RoutingMetadata) -> Self {
        let bindings = metadata
            .bindings
            .iter()
            .map(|binding| {
                let queue = metadata
                    .queues
                    .iter()
                    .find(|queue| queue.name == binding.queue)
                    .unwrap();
                let mut all = true;
                let mut conditions = Vec::new();
                for argument in &binding.arguments {
                    let ArgumentValue::Str(value) = &argument.value else {
                        panic!("the benchmark binds only string arguments")
                    };
                    if argument.key == "x-match" {
                        all = value == "all";
                    } else {
                        conditions.push((argument.key.clone(), value.clone()));
                    }
                }
                NaiveBinding {
                    pattern_words: binding.key.split('.').map(str::to_owned).collect(),
                    key: binding.key.clone(),
                    all,
                    conditions,
                    queue: queue.id,
                    shard: queue.owner,
                }
            })
            .collect();
        NaiveExchange {
            kind: metadata.exchanges[0].kind,
            bindings,
        }
    }

    fn route(&self, message: &Message, out: &mut Vec<(QueueId, ShardId)>) {
        out.clear();
        let words: Vec<&str> = message.routing_key.split('.').collect();
        for binding in &self.bindings {
            let matched = match self.kind {
                ExchangeKind::Topic => naive_topic_matches(&binding.pattern_words, &words),
                ExchangeKind::Direct => binding.key == message.routing_key,
                ExchangeKind::Headers => naive_headers_match(binding, message),
                ExchangeKind::Fanout => true,
            };
            if matched && !out.iter().any(|&(queue, _)| queue == binding.queue) {
                out.push((binding.queue, binding.shard));
            }
        }
    }
}

fn naive_topic_matches(pattern: &[String], words: &[&str]) -> bool {
    let Some((first, rest)) = pattern.split_first() else {
        return words.is_empty();
    };
    match first.as_str() {
        "#" => (0..=words.len()).any(|skip| naive_topic_matches(rest, &words[skip..])),
        "*" => !words.is_empty() && naive_topic_matches(rest, &words[1..]),
        literal => words.first() == Some(&literal) && naive_topic_matches(rest, &words[1..]),
    }
}

fn naive_headers_match(binding: &NaiveBinding, message: &Message) -> bool {
    let holds = |(key, value): &(String, String)| match key.as_str() {
        "format" => message.format == value,
        "region" => message.region == *value,
        _ => false,
    };
    if binding.all {
        binding.conditions.iter().all(holds)
    } else {
        binding.conditions.iter().any(holds)
    }
}

/// A small deterministic generator (SplitMix64), so every run routes the same keys.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1_u64 << 53) as f64
    }
}

fn read_load_average() -> Vec<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .filter_map(|field| field.parse().ok())
        .collect()
}

fn cpu_model() -> String {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    text.lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map_or_else(
            || "unknown".to_owned(),
            |(_, model)| model.trim().to_owned(),
        )
}

fn command_output(program: &str, arguments: &[&str]) -> String {
    Command::new(program)
        .args(arguments)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|error| format!("unavailable: {error}"))
}

/// Today's UTC date as YYYY-MM-DD, from the days since the epoch (the civil-from-days method).
fn today_utc() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let days = (seconds / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn write_report(report: &Value) {
    let directory = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("bench-results")
        .join(format!(
            "{}-routing",
            report["date_utc"].as_str().expect("date")
        ));
    std::fs::create_dir_all(&directory).expect("create the report directory");
    let json = serde_json::to_string_pretty(report).expect("json");
    std::fs::write(directory.join("report.json"), json + "\n").expect("write report.json");
    std::fs::write(directory.join("README.md"), readme(report)).expect("write README.md");
    println!("wrote {}", directory.display());
}

fn readme(report: &Value) -> String {
    let machine = &report["machine"];
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# Routing benchmark, {}\n",
        report["date_utc"].as_str().unwrap()
    );
    let _ = writeln!(
        text,
        "`{}` at `{}` on {} ({} cores), {}. Load average at start {}, at end {}: other agents \
         were compiling on the same two cores, so treat single figures as noisy and compare \
         within this run.\n",
        report["command"].as_str().unwrap(),
        report["git_revision"].as_str().unwrap(),
        machine["cpu_model"].as_str().unwrap(),
        machine["core_count"],
        machine["kernel"].as_str().unwrap(),
        machine["load_average_1m_5m_15m_at_start"],
        machine["load_average_1m_5m_15m_at_end"],
    );
    let _ = writeln!(
        text,
        "ns per route: median of {RUN_COUNT} runs, and the 99th percentile of per-batch means \
         ({BATCH_COUNT_PER_RUN} batches per run). The naive matcher scans every binding and \
         matches topics by recursion. Parameters and every run are in `report.json`.\n"
    );
    text.push_str(
        "| exchange | bindings | real median ns | real p99 batch ns | naive median ns | \
         naive p99 batch ns | naive / real | matched share | targets per route | build ms |\n",
    );
    text.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for result in report["results"].as_array().unwrap() {
        let _ = writeln!(
            text,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} |",
            result["exchange_kind"].as_str().unwrap(),
            result["binding_count"],
            result["real"]["ns_per_route_median"].as_f64().unwrap(),
            result["real"]["ns_per_route_batch_p99"].as_f64().unwrap(),
            result["naive"]["ns_per_route_median"].as_f64().unwrap(),
            result["naive"]["ns_per_route_batch_p99"].as_f64().unwrap(),
            result["ratio_naive_over_real_ns_per_route_median"]
                .as_f64()
                .unwrap(),
            result["matched_share_of_routes"].as_f64().unwrap(),
            result["targets_per_route_mean"].as_f64().unwrap(),
            result["table_build_duration_ms"].as_f64().unwrap(),
        );
    }
    text
}
