"""Benchmark: how fast the simulator makes events in backfill mode.

Run: ``.venv/bin/python bench/bench_simulator.py [--minutes 5] [--rate 2000]``

Prints events/s for generation alone (with Python's default GC thresholds and
with the higher one the runner sets), generation + NDJSON to a file through
the runner (what ``linkpulse simulate --start ... --output`` does), and a
baseline measured in the same run: building and encoding one fixed PageView
per event, the least any generator of these structs must spend.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from linkpulse.schemas import PageView
from linkpulse.simulator import TrafficConfig, build_marketplace, generate, parse_anomaly, resolve
from linkpulse.simulator.runner import RunPlan, fewer_gc_passes, run
from linkpulse.simulator.sinks import FileSink

START = datetime(2026, 11, 20, 12, tzinfo=UTC)


def baseline(n: int) -> float:
    """Events/s for constructing and encoding a fixed page view n times."""
    enc = msgspec.json.Encoder()
    t0 = time.perf_counter()
    batch = []
    for i in range(n):
        batch.append(
            PageView(
                event_id=f"{i:032x}",
                event_time=START,
                tenant="acme",
                user_id="acme-u0000001",
                properties={"page": "home"},
            )
        )
        if len(batch) == 1000:
            enc.encode_lines(batch)
            batch = []
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="simulated minutes")
    parser.add_argument("--rate", type=float, default=2000.0, help="mean events/s")
    args = parser.parse_args()
    traffic = TrafficConfig(rate=args.rate, start=START.timestamp(), duration=args.minutes * 60)
    market = build_marketplace(traffic.market)
    anomalies = tuple(
        resolve(parse_anomaly(s), traffic.start, traffic.duration, market)
        for s in ("failure_spike:acme", "traffic_surge:globex", "silent_stream:initech")
    )

    t0 = time.perf_counter()
    n = sum(1 for _ in generate(traffic, market, anomalies))
    gen_rate = n / (time.perf_counter() - t0)
    with fewer_gc_passes():  # what the runner does around a run
        t0 = time.perf_counter()
        sum(1 for _ in generate(traffic, market, anomalies))
        gen_tuned = n / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "events.ndjson"
        summary = asyncio.run(run(RunPlan(traffic, anomalies), FileSink(out)))
        size = out.stat().st_size
    base = baseline(n)

    print(f"events: {n:,} ({args.minutes:g} simulated min at --rate {args.rate:g}, 3 anomalies)")
    print(f"baseline (build + encode one fixed PageView): {base:>12,.0f} events/s")
    print(
        f"generate only, default GC thresholds:         {gen_rate:>12,.0f} events/s "
        f"({gen_rate / base:.2f}x baseline)"
    )
    print(
        f"generate only, the runner's GC threshold:     {gen_tuned:>12,.0f} events/s "
        f"({gen_tuned / base:.2f}x baseline, {gen_tuned / gen_rate:.1f}x default GC)"
    )
    print(
        f"backfill to NDJSON file (runner):             {summary.rate:>12,.0f} events/s "
        f"({summary.rate / base:.2f}x baseline, {size / summary.events:.0f} B/event)"
    )
    target = 50_000
    verdict = "meets" if summary.rate >= target else "MISSES"
    print(f"target {target:,} events/s to file: {verdict} ({summary.rate / target:.1f}x)")


if __name__ == "__main__":
    main()
