"""Benchmark: detector updates per CPU-second on one core, and bytes of state per series.

Run: ``.venv/bin/python bench/bench_online_ml.py [--steps 5000] [--rounds 5] [--base TREE]``

Each metric kind's default ensemble (``build_detector({"kind": k})``, what
``detector_for_window`` builds, default grace) is fed the seeded series of
``tests/online_ml_golden.py`` (realistic per kind: tenant and seller counts,
GMV with its order counts, failure rates with their trials, distinct users,
mean order value; anomalies, gaps and odd values included) and
``update(t, x, n)`` is timed in CPU seconds of the process (others' work on a
shared machine counts less than in wall time), interleaved round by round
with a baseline: a plain rolling z-score over the last 60 values (deque,
running sums), the cheapest detector worth the name. ``all 8, one t`` steps
the eight series together, each step with one datetime object, as the flow
does (a step's seconds, hour slot and label are then shared by its series).

``--base TREE`` compares two versions of the code in one run: each round runs
the benchmark once in a child process with ``PYTHONPATH=TREE`` (e.g. a git
worktree of an older commit: ``git worktree add --detach /tmp/base <commit>``)
and once with this tree, alternating, and prints the medians of both and
their ratio. Also prints pickled state bytes per series after two simulated
days. Targets (issue 10): >= 20,000 updates/s for the default ensemble,
<= 20 KB of state per series.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pickle
import subprocess
import sys
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _golden() -> ModuleType:
    """``tests/online_ml_golden.py`` by path: under ``--base`` the tree's own tests may lack it."""
    spec = importlib.util.spec_from_file_location(
        "online_ml_golden", ROOT / "tests/online_ml_golden.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


class RollingZ:
    """Baseline: |z| of the value against the mean and sd of the previous 60."""

    def __init__(self, window: int = 60) -> None:
        self._q: deque[float] = deque(maxlen=window)
        self._s = 0.0
        self._s2 = 0.0

    def update(self, t: datetime, x: float | None, n: float | None = None) -> float:
        ts = t.timestamp()  # same per-step time handling as the detectors
        del ts
        if x is None or not math.isfinite(x):
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


BASELINE = "baseline rolling z"
MIX = "all 8, one t"


def run_rounds(steps: int, rounds: int) -> dict[str, Any]:
    """Updates per CPU-second per case (a list per round), and state bytes after two days."""
    from linkpulse.online_ml import build_detector

    cases = _golden().cases(steps)
    rates: dict[str, list[float]] = {c.name: [] for c in cases}
    rates[BASELINE] = []
    for _ in range(rounds):
        for c in [*cases, None]:  # interleaved: every case sees the same machine state per round
            steps_ = (c or cases[0]).steps
            det: Any = build_detector({"kind": c.kind}, series=c.series) if c else RollingZ()
            update = det.update
            t0 = time.process_time()
            for t, x, n in steps_:
                update(t, x, n)
            rates[c.name if c else BASELINE].append(
                len(steps_) / max(time.process_time() - t0, 1e-9)
            )
        # the flow's pattern: every series stepped at each step with the same t object (one
        # tenant's mix of kinds), so what a step shares (seconds, slot, label) is shared
        dets = [build_detector({"kind": c.kind}, series=c.series) for c in cases]
        ups = [d.update for d in dets]
        cols = list(zip(*(c.steps for c in cases), strict=True))
        t0 = time.process_time()
        for row in cols:
            t = row[0][0]
            for up, (_, x, n) in zip(ups, row, strict=True):
                up(t, x, n)
        rates.setdefault(MIX, []).append(
            len(cols) * len(cases) / max(time.process_time() - t0, 1e-9)
        )
    state: dict[str, int] = {}
    for c in cases:
        det = build_detector({"kind": c.kind}, series=c.series)
        for t, x, n in c.steps[: 2 * 1440]:
            det.update(t, x, n)
        state[c.name] = len(pickle.dumps(det))
    kinds = {c.name: c.kind for c in cases} | {MIX: "mix"}
    return {"rates": rates, "state": state, "kinds": kinds}


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2.0


def _load() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.1f} {b:.1f} {c:.1f} on {os.cpu_count()} cores"


def single(args: argparse.Namespace) -> None:
    got = run_rounds(args.steps, args.rounds)
    rates = got["rates"]
    print(
        f"updates per CPU-second ({args.steps:,} steps x {args.rounds} rounds, interleaved; "
        f"{_load()}):"
    )
    base = _median(rates[BASELINE])
    for name, r in rates.items():
        med = _median(r)
        kind = got["kinds"].get(name, "")
        print(
            f"  {name:20s} {kind:10s} median {med:>9,.0f}   min {min(r):>9,.0f}   "
            f"baseline / this {base / med:5.1f}"
        )
    print("state bytes per series (pickle) after 2 simulated days:")
    for name, b in got["state"].items():
        print(f"  {name:20s} {b:>7,} bytes")


def compare(args: argparse.Namespace) -> None:
    """Alternate child runs of the base tree and this one; medians and ratios per case."""
    sides = {"base": str(Path(args.base).resolve()), "this": str(ROOT)}
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "this": []}
    cmd = [sys.executable, __file__, "--child", "--steps", str(args.steps), "--rounds", "1"]
    loads = [_load()]
    for r in range(args.rounds):
        order = ("base", "this") if r % 2 == 0 else ("this", "base")  # neither always goes first
        for side in order:
            env = {**os.environ, "PYTHONPATH": sides[side]}
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            runs[side].append(json.loads(out))
    loads.append(_load())
    print(
        f"updates per CPU-second, {args.steps:,} steps, {args.rounds} alternating rounds per side "
        f"(base = {sides['base']}); {loads[0]} at the start, {loads[1].split(' on ')[0]} at the end"
    )
    first = runs["this"][0]
    print(
        f"  {'series':14s} {'kind':10s} {'base':>9s} {'this':>9s}  this/base   base min / this min"
    )
    for name in first["rates"]:
        med = {s: _median([run["rates"][name][0] for run in runs[s]]) for s in runs}
        low = {s: min(run["rates"][name][0] for run in runs[s]) for s in runs}
        kind = first["kinds"].get(name, "")
        print(
            f"  {name:14s} {kind:10s} {med['base']:>9,.0f} {med['this']:>9,.0f}"
            f"  {med['this'] / med['base']:8.2f}x   {low['base']:>9,.0f} / {low['this']:,.0f}"
        )
    print("state bytes per series (pickle) after 2 simulated days, base / this:")
    for name, b in first["state"].items():
        print(f"  {name:14s} {runs['base'][0]['state'][name]:>7,} / {b:,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--base", help="another tree of the code to compare with (alternating runs)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_rounds(args.steps, args.rounds)))
    elif args.base:
        compare(args)
    else:
        single(args)


if __name__ == "__main__":
    main()
