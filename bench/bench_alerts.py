"""Alert rules benchmark: evaluation cost per window update, and the flow with rules on/off.

Run: ``.venv/bin/python -m bench.bench_alerts [--windows 20000] [--events 200000] [--runs 3]
[--baseline REV]``

No services: everything runs in process.

1. ``RuleEngine.on_window`` per final window update with 100 rules, three
   shapes: every rule reads the window's metric (100 evaluations per update,
   the worst case), the 100 rules spread over the registry's metrics (about 9
   per update), and no rule reading it (the index lookup alone). Windows cycle
   over ``--series`` series of one tenant with values that cross the
   thresholds, so state machines move (pending, firing, resolved); the
   figure is the mean cost per update, and per rule evaluation. With
   ``--baseline REV`` (a git revision), ``linkpulse/alerts/engine.py`` as it was
   at REV runs in the same process too, interleaved with the current one
   (before/after in one run), and the two must emit the same changes.
2. The whole flow in process (Bytewax ``run_main`` on a ``TestingSource`` of
   chunks, decode + every metric and window, outputs discarded), the same
   backlog with the alerting branch off and on (100 rules spread over the
   metrics, every tenant series), interleaved ``--runs`` rounds; events/s;
   with ``--baseline``, a third configuration runs the alert step with the
   engine at REV.
   The backlog's event times span ``--span-min`` minutes, so the flow closes
   that many minutes of windows: a replay far faster than real time, hence
   far more window updates per event than live traffic at 50,000 events/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSink, TestingSource, run_main

from bench.bench_dataflow import KINDS, make_event
from linkpulse.alerts.engine import RuleEngine
from linkpulse.alerts.rules import parse_rules
from linkpulse.config import Settings
from linkpulse.dataflows import alerting as alerting_step
from linkpulse.dataflows.alerting import AlertingBranch, AlertingConfig, AlertingSinks
from linkpulse.dataflows.chunks import Chunk
from linkpulse.dataflows.live_metrics import FlowOptions, MetricsBranch, MetricsSinks, build_flow
from linkpulse.operators.metrics import REGISTRY
from linkpulse.schemas.outputs import MetricWindow

T0 = datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
N_RULES = 100


def rules_yaml(metrics: list[str]) -> str:
    """100 rules cycling over ``metrics``: thresholds (with for/hysteresis), rates, anomalies."""
    lines = ["rules:"]
    for i in range(N_RULES):
        m = metrics[i % len(metrics)]
        kind = ("threshold", "threshold", "rate_of_change", "threshold")[i % 4]
        if kind == "threshold":
            lines.append(
                f"  - {{name: r{i}, kind: threshold, metric: {m}, op: '>', threshold: {5 + i % 7},"
                f" recovery: {3 + i % 2}, for: {i % 3}m, keep_firing_for: 1m,"
                f" summary: '{{{{ tenant }}}} {{{{ value }}}}'}}"
            )
        else:
            lines.append(
                f"  - {{name: r{i}, kind: rate_of_change, metric: {m}, op: '>', threshold: 0.5}}"
            )
    return "\n".join(lines) + "\n"


def windows(n: int, series: int, metric: str) -> list[MetricWindow]:
    out = []
    for i in range(n):
        step, s = divmod(i, series)
        start = T0 + timedelta(minutes=step)
        seller = f"s{s}"
        out.append(
            MetricWindow(
                metric=metric,
                tenant="acme",
                dims_key=f"seller_id={seller}",
                dimensions={"seller_id": seller},
                window="1m",
                window_start=start,
                window_end=start + timedelta(minutes=1),
                # quiet (2) with a burst above every threshold for 3 of every 30 steps
                value=12.0 if (step + s) % 30 < 3 else 2.0,
                count=10,
                final=True,
            )
        )
    return out


def engine_at(rev: str) -> ModuleType:
    """``linkpulse/alerts/engine.py`` as it was at git revision ``rev``, as its own module."""
    src = subprocess.run(
        ["git", "show", f"{rev}:linkpulse/alerts/engine.py"],  # noqa: S607 - the repository's git
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    with tempfile.TemporaryDirectory() as d:  # compiled on load: the file can go after
        path = Path(d) / f"engine_{rev.replace('/', '_')}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(f"_baseline_engine_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up by name
        spec.loader.exec_module(mod)
    return mod


def engine_cost(n: int, series: int, baseline: str | None = None) -> None:
    metrics = [m.name for m in REGISTRY]
    shapes = {
        "100 rules read the window's metric": rules_yaml(["orders"]),
        "100 rules spread over the metrics": rules_yaml(metrics),
        "no rule reads it": rules_yaml([m for m in metrics if m != "orders"][:1]),
    }
    ws = windows(n, series, "orders")
    engines: dict[str, type[RuleEngine]] = {"current": RuleEngine}
    if baseline is not None:
        engines = {f"at {baseline}": engine_at(baseline).RuleEngine, **engines}
    print(f"1. RuleEngine.on_window, {n:,} final window updates over {series} series")
    for label, text in shapes.items():
        rules = parse_rules(text)
        per_update = len(rules.for_series("orders", "1m"))
        best: dict[str, list[float]] = {name: [] for name in engines}
        emitted: dict[str, list[tuple[str, str, float, int]]] = {}
        for _ in range(3):
            for name, cls in engines.items():  # interleaved: a slow spell hits both
                eng = cls(rules)
                t = time.perf_counter()
                changes = [c for w in ws for c in eng.on_window(w)]
                best[name].append(time.perf_counter() - t)
                emitted[name] = [
                    (c.alert_id, c.state.value, c.at.timestamp(), c.revision) for c in changes
                ]
        first = next(iter(emitted.values()))
        if any(e != first for e in emitted.values()):
            msg = f"{label}: the engines emitted different changes"
            raise AssertionError(msg)
        print(f"   {label}: {per_update} evaluations/update, {len(first):,} state changes")
        for name in engines:
            dt = min(best[name])
            us = dt / n * 1e6
            per_rule = f", {us / per_update:.2f} µs per rule evaluation" if per_update else ""
            print(f"     {name:<16} {us:8.2f} µs per update{per_rule}; {n / dt:>10,.0f} updates/s")
        if baseline is not None:
            before, after = (min(best[name]) for name in engines)
            print(f"     current vs at {baseline}: {after / before:.2f}x the time per update")


def chunks(n: int, span_min: float, tenants: int) -> list[Chunk]:
    ns = 1_000_000_000
    out: list[Chunk] = []
    msgs: list[tuple[bytes, str, int, int]] = []
    span_s = span_min * 60
    for i in range(n):
        tenant = f"t{i % tenants}"
        kind = KINDS[i % len(KINDS)]
        t = T0 + timedelta(seconds=span_s * i / n)
        t_ns = int(t.timestamp() * ns)
        msgs.append((make_event(i, t, tenant, kind), f"b.events.{tenant}.{kind}", i + 1, t_ns))
        if len(msgs) == 1000:
            out.append(Chunk("p0", t_ns, msgs))
            msgs = []
    if msgs:
        out.append(Chunk("p0", msgs[-1][3], msgs))
    return out


class _Count(StatelessSinkPartition[MetricWindow]):
    finals = 0

    def write_batch(self, items: list[MetricWindow]) -> None:
        _Count.finals += sum(1 for w in items if w.final)


class Discard(DynamicSink[MetricWindow]):
    """Counts final window updates and drops everything (the same output in both runs)."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Count:
        return _Count()


def flow_rate(
    source: list[Chunk],
    n: int,
    alerting: AlertingConfig | None,
    engine: type[RuleEngine] | None = None,
) -> tuple[float, int]:
    """events/s of the flow over ``source``, and its alert changes; ``engine``: the step's."""
    changes: list[object] = []
    _Count.finals = 0
    branches: list = [MetricsBranch(MetricsSinks(windows_nats=Discard()))]
    if alerting is not None:
        branches.append(AlertingBranch(alerting, AlertingSinks(store=TestingSink(changes))))
    flow = build_flow(
        Settings(),
        FlowOptions(raw_events=False, scoring=None),
        source=TestingSource(source),
        branches=branches,
    )
    # the alert step makes its engine by this module-level name: swapped for the run
    saved = alerting_step.RuleEngine
    alerting_step.RuleEngine = engine or saved  # type: ignore[misc]
    try:
        t = time.perf_counter()
        run_main(flow)
        return n / (time.perf_counter() - t), len(changes)
    finally:
        alerting_step.RuleEngine = saved  # type: ignore[misc]


def flow_cost(
    n: int, runs: int, span_min: float, tenants: int, baseline: str | None = None
) -> None:
    metrics = [m.name for m in REGISTRY]
    configs: dict[str, type[RuleEngine] | None] = {"alerts off": None}
    if baseline is not None:
        configs[f"alerts on, engine at {baseline}"] = engine_at(baseline).RuleEngine
    configs["alerts on (100 rules)"] = RuleEngine
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rules.yaml"
        path.write_text(rules_yaml(metrics))
        cfg = AlertingConfig(rules=(path,), poll_s=-1.0)
        source = chunks(n, span_min, tenants)
        print(
            f"2. the flow in process, {n:,} events over {span_min:g} min of stream time,"
            f" {tenants} tenants, {runs} interleaved rounds"
        )
        rates: dict[str, list[float]] = {label: [] for label in configs}
        n_changes = 0
        for _ in range(runs):
            for label, engine in configs.items():
                rate, got = flow_rate(source, n, None if engine is None else cfg, engine)
                rates[label].append(rate)
                n_changes = max(n_changes, got)
        off = statistics.median(rates["alerts off"])
        for label, xs in rates.items():
            print(
                f"   {label:<34} median {statistics.median(xs):>9,.0f} events/s"
                f" (range {min(xs):,.0f}-{max(xs):,.0f}), {statistics.median(xs) / off:.2f}x off"
            )
        print(f"   final window updates per run: {_Count.finals:,}; alert changes: {n_changes:,}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", type=int, default=20_000)
    p.add_argument("--series", type=int, default=200)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--span-min", type=float, default=30.0)
    p.add_argument("--tenants", type=int, default=10)
    p.add_argument("--skip-flow", action="store_true")
    p.add_argument("--baseline", help="git revision whose engine.py runs beside the current one")
    args = p.parse_args()
    engine_cost(args.windows, args.series, args.baseline)
    if not args.skip_flow:
        flow_cost(args.events, args.runs, args.span_min, args.tenants, args.baseline)


if __name__ == "__main__":
    main()
