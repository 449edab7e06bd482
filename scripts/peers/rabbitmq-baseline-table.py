#!/usr/bin/env python3
"""Prints a Markdown table of RabbitMQ baseline runs against their reference figures.

Usage: scripts/peers/rabbitmq-baseline-table.py bench-results/2026-12-03-rabbitmq-*/report.json
Reads only what the loadgen wrote in each report.json; computes nothing but formatting.
"""
import json
import sys


def microseconds(summary, key):
    return summary[key] / 1000.0 if summary else None


def main(paths):
    print("| run | placement | load 1m at start | delivered msg/s | e2e p50 / p99 / p99.9 µs "
          "| confirm p50 / p99 µs | CPU broker / loadgen % | reference | ratio | within 20 % |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        with open(path) as file:
            report = json.load(file)
        results = report["results"]
        latency = results["latency"]
        e2e = latency.get("end_to_end")
        confirm = latency.get("publish_to_confirm")
        label = report["label"]
        placement = "pinned" if "-pinned" in label else "default"
        check = report.get("reference_check")
        if check:
            reference = "; ".join(f"{f['name']} {f['reference']:,.0f}" for f in check["figures"])
            ratio = "; ".join(f"{f['measured_to_reference_ratio']:.2f}" for f in check["figures"])
            within = "yes" if check["reproduced"] else "**no**"
        else:
            reference, ratio, within = "–", "–", "–"
        e2e_text = (f"{microseconds(e2e, 'p50_ns'):,.0f} / {microseconds(e2e, 'p99_ns'):,.0f} / "
                    f"{microseconds(e2e, 'p99_9_ns'):,.0f}") if e2e else "–"
        confirm_text = (f"{microseconds(confirm, 'p50_ns'):,.0f} / "
                        f"{microseconds(confirm, 'p99_ns'):,.0f}") if confirm else "–"
        broker_cpu = results.get("broker_cpu_percent_of_one_core")
        cpu_text = (f"{broker_cpu:.0f} / " if broker_cpu is not None else "– / ") + \
            f"{results['loadgen_cpu_percent_of_one_core']:.0f}"
        load = report.get("load_average_at_start") or ["?"]
        if "-nice10" in label:
            placement += ", nice -10"
        print(f"| {label} | {placement} | {load[0]} | "
              f"{results['delivery_throughput_msgs_per_sec']:,.0f} | {e2e_text} | {confirm_text} | "
              f"{cpu_text} | {reference} | {ratio} | {within} |")


if __name__ == "__main__":
    main(sys.argv[1:])
