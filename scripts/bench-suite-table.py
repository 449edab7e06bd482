#!/usr/bin/env python3
"""Writes the README of a bench-suite.sh run: Ruuster and RabbitMQ side by side, with ratios.

Usage: scripts/bench-suite-table.py bench-results/<date>-suite<tag>   (prints Markdown)
Reads the suite's suite.txt and runs.tsv and each run's report.json, as the loadgen wrote it;
computes nothing but ratios and formatting. A ratio is Ruuster divided by RabbitMQ: above 1 is
more messages per second, or a longer latency.
"""
import json
import os
import sys

PLACEMENTS = {
    "default": "Ruuster with 2 shards, which the broker pins to CPUs 0 and 1 (its default); "
               "RabbitMQ and the loadgen unrestricted",
    "pinned": "Ruuster with 1 shard on CPU 0 (`taskset -c 0 ruuster --shards 1 --cpus 0`), "
              "RabbitMQ under `taskset -c 0`, the loadgen under `taskset -c 1`",
}
RUNS = {
    "w1": ("W1", "1 KiB, 1 producer, 1 consumer, as fast as confirms allow, `written`",
           "transient classic queue, confirms"),
    "w2": ("W2", "as W1 at `fsynced`", "durable classic queue, persistent messages"),
    "w2-quorum": ("W2", "as W1 at `fsynced` (Ruuster's W2 figures)", "quorum queue"),
    "w3": ("W3", "100 B, as fast as confirms allow, `written`",
           "transient classic queue, confirms"),
    "w4-written": ("W4", "1 KiB at 10,000 msg/s, 1 per publish, `written`",
                   "transient classic queue, confirms"),
    "w4-fsynced": ("W4", "1 KiB at 10,000 msg/s, 1 per publish, `fsynced`",
                   "durable classic queue, persistent messages"),
    "w5": ("W5", "fanout to 8 queues, 1 consumer each, 1 KiB, `fsynced`",
           "durable classic queues, persistent messages"),
    "w6": ("W6", "64 producers, 1,000 queues by routing key, 10 consumers, `fsynced`",
           "durable classic queues, persistent messages"),
}


def read_suite(folder):
    meta = {}
    with open(os.path.join(folder, "suite.txt")) as file:
        for line in file:
            key, _, value = line.rstrip("\n").partition("=")
            meta[key] = value
    runs = []
    with open(os.path.join(folder, "runs.tsv")) as file:
        header = file.readline().rstrip("\n").split("\t")
        for line in file:
            runs.append(dict(zip(header, line.rstrip("\n").split("\t"))))
    for run in runs:
        run["report"] = None
        path = os.path.join(run["folder"], "report.json")
        if run["folder"] != "-" and os.path.isfile(path):
            with open(path) as file:
                run["report"] = json.load(file)
    return meta, runs


def latency_us(report, series, key):
    summary = report["results"]["latency"].get(series) if report else None
    return summary[key] / 1000.0 if summary else None


def throughput(report):
    return report["results"]["delivery_throughput_msgs_per_sec"] if report else None


def number(value, digits=0):
    return "–" if value is None else f"{value:,.{digits}f}"


def ratio(ruuster, rabbitmq):
    if ruuster is None or rabbitmq is None or rabbitmq == 0:
        return "–"
    return f"{ruuster / rabbitmq:.2f}"


def triple(ruuster, rabbitmq, digits=0):
    return f"{number(ruuster, digits)} / {number(rabbitmq, digits)} / {ratio(ruuster, rabbitmq)}"


def clean(run):
    """'ok', or what went wrong, from the exit status and the report."""
    if run is None:
        return "not run"
    report = run["report"]
    if report is None:
        return f"no report (exit {run['exit_status']})"
    results = report["results"]
    problems = []
    if results["error_count"]:
        problems.append(f"{results['error_count']} errors")
    if results["missing_delivery_count"]:
        problems.append(f"{results['missing_delivery_count']} missing")
    if not results["drained"]:
        problems.append("not drained")
    return ", ".join(problems) or "ok"


def load(run):
    if run is None:
        return "–"
    start = (run["report"] or {}).get("load_average_at_start")
    return f"{start[0]:.2f}" if start else run["load_average_before"].split(" ")[0]


def counter(report, name):
    for item in report["results"]["broker_counters"] if report else []:
        if item["name"] == name:
            return item["value"]
    return None


def shards(report):
    if not report:
        return "–"
    placed = [c for c in report["placement"]["connections"] if c["role"] != "control"]
    landed = sorted({c["shard"] for c in placed if c["shard"] is not None})
    off_owner = counter(report, "client_connections_off_owner_shard_count")
    text = ", ".join(str(shard) for shard in landed) or "–"
    return f"{text} ({number(off_owner)} off their queues' owner)"


def cpu(report, key):
    return number(report["results"].get(key)) if report else "–"


def main(folder):
    meta, runs = read_suite(folder)
    by_key = {(r["system"], r["placement"], r["run"]): r for r in runs}
    reports = [r["report"] for r in runs if r["report"]]
    first = reports[0] if reports else None
    date = meta.get("started_utc", "")[:10]

    print(f"# Benchmark suite {date}: Ruuster and RabbitMQ side by side\n")
    if meta.get("note"):
        print(f"**{meta['note']}**\n")
    if first:
        machine = first["machine"]
        print(f"- Machine: {machine['cpu_model']}, {machine['cpu_count_machine']} CPUs, "
              f"Linux {machine['kernel_release']}, "
              f"{(machine.get('memory_total_kib') or 0) / 1048576:.1f} GiB.")
    dirty = " with uncommitted changes" if meta.get("git_dirty") == "true" else ""
    print(f"- Revision: `{meta.get('git_commit', '?')}`{dirty}.")
    print(f"- From {meta.get('started_utc')} to {meta.get('finished_utc', '(unfinished)')}, "
          f"with:\n\n  ```sh\n  {meta.get('command')}\n  ```")
    print(f"- Load: each run waited up to {meta.get('load_wait_s')} s for the 1-minute load "
          f"average to fall below {meta.get('load_below')}; the tables give the load it started "
          "under. Above 1 means other processes competed for the 2 CPUs.")
    print("- Every run: window 256 unconfirmed messages per producer, batches of 64 (W4: one "
          "message per publish at a fixed 10,000 msg/s), prefetch 1000, one cumulative ack per "
          f"100 deliveries, {meta.get('duration_s')} s of publishing, then a drain of at most "
          "10 s. Each run's folder holds the exact command line, the broker's command, the "
          "CPU affinities and every figure with its unit.")
    print("- Order: within a placement, the Ruuster runs (a fresh broker and data directory for "
          "each), then the RabbitMQ runs (one scratch broker for the placement).\n")
    print("Cells are `Ruuster / RabbitMQ / ratio`, the ratio being Ruuster ÷ RabbitMQ. msg/s is "
          "deliveries per second (a fanout delivers each message to every queue); latencies are "
          "microseconds, end to end from the send time stamped in the payload, and publish to "
          "confirm. In as-fast-as-possible runs latency is mostly time queued behind the "
          "window.\n")

    placements = meta.get("placements", "").split()
    run_names = meta.get("runs", "").split()
    for placement in placements:
        print(f"## Placement `{placement}`\n")
        print(f"{PLACEMENTS[placement]}.\n")
        print("| run | workload | RabbitMQ ran | delivered msg/s | e2e p50 µs | e2e p99 µs "
              "| confirm p50 µs | confirm p99 µs | load 1m | outcome |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name in run_names:
            workload, description, peer = RUNS[name]
            ruuster_name = "w2" if name == "w2-quorum" else name
            ours = by_key.get(("ruuster", placement, ruuster_name))
            theirs = by_key.get(("rabbitmq", placement, name))
            a = ours["report"] if ours else None
            b = theirs["report"] if theirs else None
            cells = [
                triple(throughput(a), throughput(b)),
                triple(latency_us(a, "end_to_end", "p50_ns"),
                       latency_us(b, "end_to_end", "p50_ns")),
                triple(latency_us(a, "end_to_end", "p99_ns"),
                       latency_us(b, "end_to_end", "p99_ns")),
                triple(latency_us(a, "publish_to_confirm", "p50_ns"),
                       latency_us(b, "publish_to_confirm", "p50_ns")),
                triple(latency_us(a, "publish_to_confirm", "p99_ns"),
                       latency_us(b, "publish_to_confirm", "p99_ns")),
                f"{load(ours)} / {load(theirs)}",
                f"{clean(ours)} / {clean(theirs)}",
            ]
            print(f"| {name} | {workload}: {description} | {peer} | " + " | ".join(cells) + " |")
        print()
        print("CPU (100 % is one core, schedstat time of the broker's and the loadgen's threads "
              "over the run) and Ruuster's own counters over the run:\n")
        print("| run | Ruuster CPU broker / loadgen % | RabbitMQ CPU broker / loadgen % "
              "| Ruuster fdatasyncs | records per fdatasync | shards the connections landed on |")
        print("|---|---|---|---|---|---|")
        for name in run_names:
            ruuster_name = "w2" if name == "w2-quorum" else name
            ours = by_key.get(("ruuster", placement, ruuster_name))
            theirs = by_key.get(("rabbitmq", placement, name))
            a = ours["report"] if ours else None
            b = theirs["report"] if theirs else None
            if name == "w2-quorum":
                a = None
            print(f"| {name} | {cpu(a, 'broker_cpu_percent_of_one_core')} / "
                  f"{cpu(a, 'loadgen_cpu_percent_of_one_core')} | "
                  f"{cpu(b, 'broker_cpu_percent_of_one_core')} / "
                  f"{cpu(b, 'loadgen_cpu_percent_of_one_core')} | "
                  f"{number(counter(a, 'journal_fdatasyncs_count'))} | "
                  f"{number(counter(a, 'journal_records_per_fdatasync'), 1)} | {shards(a)} |")
        print()

    print("## Runs\n")
    print("| system | placement | run | folder | exit status |")
    print("|---|---|---|---|---|")
    for run in runs:
        folder_name = os.path.basename(run["folder"]) if run["folder"] != "-" else "–"
        link = f"[{folder_name}](../{folder_name}/)" if run["report"] else folder_name
        kept_log = f"broker-start-failed-{run['system']}-{run['run']}-{run['placement']}.log"
        if os.path.isfile(os.path.join(folder, kept_log)):
            link = f"[broker log]({kept_log})"
        print(f"| {run['system']} | {run['placement']} | {run['run']} | {link} "
              f"| {run['exit_status']} |")
    if any(run["exit_status"] == "broker-start-failed" for run in runs):
        print("\nA broker did not become ready for the runs marked broker-start-failed. For "
              "Ruuster the broker's log is kept beside this file; compare the README's known "
              "issue of a shard stalled in its journal's first checkpoint write.")
    problems = [(run, run["report"]["results"]["error_samples"]) for run in runs
                if run["report"] and run["report"]["results"]["error_samples"]]
    if problems:
        print("\n## Errors reported by the runs\n")
        for run, samples in problems:
            print(f"- {run['system']} {run['run']} {run['placement']}: " + "; ".join(samples[:3]))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
