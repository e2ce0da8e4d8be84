"""Benchmark: detector updates per second on one core, and bytes of state per series.

Run: ``.venv/bin/python bench/bench_online_ml.py [--steps 20000] [--rounds 3]``

For each metric kind's default ensemble (what ``detector_for_window`` builds)
it times ``update(t, x, n)`` (CPU seconds of this process, so other
work on a shared machine counts less) over a seasonal Poisson series, interleaved
round by round with a baseline in the same run: a plain rolling z-score over
the last 60 values (deque, running sums), the cheapest detector worth the
name. Also prints pickled state bytes per series after two simulated days.
Targets (issue 10): >= 20,000 updates/s for the default ensemble, <= 20 KB
of state per series.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import random
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from linkpulse.online_ml import build_detector

T0 = datetime(2026, 11, 16, tzinfo=UTC)
Step = tuple[datetime, float | None, float]


class RollingZ:
    """Baseline: |z| of the value against the mean and sd of the previous 60."""

    def __init__(self, window: int = 60) -> None:
        self._q: deque[float] = deque(maxlen=window)
        self._s = 0.0
        self._s2 = 0.0

    def update(self, t: datetime, x: float | None, n: float | None = None) -> float:
        ts = t.timestamp()  # same per-step time handling as the detectors
        del ts
        if x is None:
            return 0.0
        q = self._q
        k = len(q)
        z = 0.0
        if k > 1:
            mean = self._s / k
            var = max(self._s2 / k - mean * mean, 1e-12)
            z = abs(x - mean) / math.sqrt(var)
        if k == q.maxlen:
            old = q[0]
            self._s -= old
            self._s2 -= old * old
        q.append(x)
        self._s += x
        self._s2 += x * x
        return z


def series(steps: int, seed: int) -> list[Step]:
    rng = random.Random(seed)
    out = []
    for i in range(steps):
        lam = 20.0 * (1.0 + 0.6 * math.sin(2 * math.pi * (i % 1440) / 1440.0))
        x = max(0.0, rng.gauss(lam, math.sqrt(lam)))
        out.append((T0 + timedelta(minutes=i), float(round(x)) or None, 30.0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    data = series(args.steps, seed=1)
    ratio_data = [(t, (x or 0.0) / 30.0 if x is not None else None, n) for t, x, n in data]
    kinds: dict[str, tuple[Callable[[], Any], list[Step]]] = {
        "count": (lambda: build_detector({"kind": "count"}, series="a|orders||1m"), data),
        "sum": (lambda: build_detector({"kind": "sum"}, series="a|gmv||1m"), data),
        "ratio": (
            lambda: build_detector({"kind": "ratio"}, series="a|payment_failure_rate||1m"),
            ratio_data,
        ),
        "baseline rolling z": (RollingZ, data),
    }
    results: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for name, (make, d) in kinds.items():  # interleaved: same machine state per round
            det = make()
            update = det.update
            # CPU time of this process: the machine is shared, wall time counts others' work
            t0 = time.process_time()
            for t, x, n in d:
                update(t, x, n)
            results[name].append(len(d) / max(time.process_time() - t0, 1e-9))
    load = os.getloadavg()
    print(
        f"updates per CPU-second ({args.steps:,} steps x {args.rounds} rounds, interleaved; "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores):"
    )
    base = sorted(results["baseline rolling z"])[args.rounds // 2]
    for name, rates in results.items():
        rates.sort()
        med = rates[len(rates) // 2]
        print(
            f"  {name:20s} median {med:>9,.0f}   min {rates[0]:>9,.0f}   "
            f"baseline / this {base / med:5.1f}"
        )
    print("state bytes per series (pickle) after 2 simulated days:")
    for name in ("count", "sum", "ratio"):
        make, d = kinds[name]
        det = make()
        for t, x, n in d[: 2 * 1440]:
            det.update(t, x, n)
        print(f"  {name:20s} {len(pickle.dumps(det)):>7,} bytes")


if __name__ == "__main__":
    main()
