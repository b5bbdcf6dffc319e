"""Do workflow triggers slow the webhook down? ``bench/ingest.py`` with triggers off and on, in one run.

    .venv/bin/python -m bench.triggers [--rounds 3] [--mode http|stream] [--items 3000] [--json FILE]

Each round runs the ingest benchmark twice, each time on fresh embedded stores: triggers off
(no target on the channel) and on (every customer message gets a job that the dispatcher
delivers — over HTTP to a receiver process, or to the Redis Stream — while the load runs).
The order alternates between rounds so that a drift in the machine's load favours neither
side. Prints the median throughput and p99 of each side, their on/off ratios (aim: within
10 %), the same ratio normalised by each run's own floor (which cancels most of the drift on
a shared machine), and how long the dispatcher took to deliver what was still pending when
the load ended.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

from bench import ingest


def _median(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(float(value))
    return statistics.median(values)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"off": [], args.mode: []}
    for round_no in range(args.rounds):
        order = ["off", args.mode] if round_no % 2 == 0 else [args.mode, "off"]
        for mode in order:
            print(f"\n== round {round_no + 1}/{args.rounds}, triggers {mode} ==", flush=True)
            ingest_args = ingest.parse_args(
                [
                    "--items",
                    str(args.items),
                    "--concurrency",
                    str(args.concurrency),
                    "--customers",
                    str(args.customers),
                    "--rt-items",
                    str(args.rt_items),
                    "--triggers",
                    mode,
                ]
            )
            runs[mode].append(await ingest.main(ingest_args))

    off, on = runs["off"], runs[args.mode]
    summary = {
        "mode": args.mode,
        "rounds": args.rounds,
        "items": args.items,
        "off": {
            "rate": _median(off, "igsync", "rate"),
            "p99_ms": _median(off, "igsync", "p99_ms"),
            "ratio_to_floor": _median(off, "ratio"),
        },
        "on": {
            "rate": _median(on, "igsync", "rate"),
            "p99_ms": _median(on, "igsync", "p99_ms"),
            "ratio_to_floor": _median(on, "ratio"),
            "pending_at_end_of_load": _median(on, "triggers", "drain", "pending_at_end_of_load"),
            "drain_secs": _median(on, "triggers", "drain", "drain_secs"),
            "delivered": _median(on, "triggers", "drain", "delivered"),
        },
    }
    summary["throughput_on_vs_off"] = summary["on"]["rate"] / summary["off"]["rate"]
    summary["p99_on_vs_off"] = summary["on"]["p99_ms"] / summary["off"]["p99_ms"]
    summary["floor_normalised_on_vs_off"] = summary["on"]["ratio_to_floor"] / summary["off"]["ratio_to_floor"]

    print(f"\n== triggers off vs {args.mode}: medians of {args.rounds} rounds, {args.items} webhooks each ==")
    for side in ("off", "on"):
        s = summary[side]
        print(
            f"triggers {side:3}: {s['rate']:7.0f} req/s, p99 {s['p99_ms']:6.1f} ms, "
            f"igsync/floor {s['ratio_to_floor']:.2f}"
        )
    print(f"throughput on/off: {summary['throughput_on_vs_off']:.2f}   (aim >= 0.90)")
    print(f"p99 on/off:        {summary['p99_on_vs_off']:.2f}   (aim <= 1.10)")
    print(
        f"igsync/floor on vs off: {summary['floor_normalised_on_vs_off']:.2f}  (same, normalised by each run's floor)"
    )
    print(
        f"dispatcher: {summary['on']['pending_at_end_of_load']:.0f} jobs pending when the load ended, "
        f"all delivered {summary['on']['drain_secs']:.2f}s later ({summary['on']['delivered']:.0f} delivered per run)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))  # noqa: ASYNC240
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="off+on pairs, order alternating")
    parser.add_argument("--mode", choices=("http", "stream"), default="http", help="the 'on' side's target")
    parser.add_argument("--items", type=int, default=3000, help="webhooks in each measured load")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--rt-items", type=int, default=100, help="items in each round-trip phase of ingest")
    parser.add_argument("--json", help="also write the figures (summary and every run) to this file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
