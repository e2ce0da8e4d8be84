"""CLI command: ``linkpulse eval anomalies`` measures the detectors' quality.

Without ``--csv``: for each seed, simulate ``--days`` of traffic as a
backfill with labeled anomalies of every kind (``simulator.backfill``),
window it with the project's operators, score every series with the same
detectors the flow builds, and report per kind incident-level precision,
recall, F1, detection delay and false pages per tenant-day
(``online_ml.quality``). Seeds in ``--tune-seeds`` are where thresholds and
defaults were chosen; the headline figures are those of ``--seeds``. Writes
a JSON report and, with ``--plot``, a PNG of a few labeled series.

With ``--csv FILE``: score the user's own ``timestamp,value[,label]`` series
and write ``timestamp,value,score,expected,lower,upper,explanation``.
"""

from __future__ import annotations

import json
import multiprocessing
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from linkpulse.online_ml import PAGE_THRESHOLD, evaluate_forecaster, load_spec
from linkpulse.online_ml.csvscore import read_series, score_rows, write_scores
from linkpulse.online_ml.quality import (
    Label,
    evaluate_scores,
    merge_reports,
    oracle_rate_delay,
    score_series,
)
from linkpulse.simulator.anomalies import KINDS, parse_time
from linkpulse.simulator.backfill import Backfill, BackfillConfig, backfill, eval_schedule
from linkpulse.simulator.generator import BASE_FAILURE_RATE
from linkpulse.simulator.model import MarketConfig, build_marketplace

console = Console(stderr=True)
DEFAULT_START = "2026-11-02T00:00:00Z"  # a Monday
FORECAST_METRICS = ("gmv", "orders", "page_views")
SELLERS_SCORED = 3  # per tenant: the biggest sellers' series are scored (anomalies target them)


def _parse_seeds(text: str, option: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        msg = f"{option}: expected comma-separated integers like 3,4, got {text!r}"
        raise typer.BadParameter(msg) from None
    return seeds


def dataset(
    seed: int,
    *,
    start: float,
    days: int,
    rate: float,
    tenants: int,
    sellers: int,
    warmup_days: int,
    per_kind: int,
    kinds: Sequence[str],
    cache: Path | None,
) -> Backfill:
    """One seed's labeled backfill, from ``cache`` when it was made before with these options."""
    key = f"s{seed}-t{start:.0f}-d{days}-r{rate:g}-n{tenants}x{sellers}-w{warmup_days}-k{per_kind}"
    key += "-" + "+".join(kinds)
    path = cache / f"{key}.pkl" if cache is not None else None
    if path is not None and path.exists():
        with path.open("rb") as f:
            data: Backfill = pickle.load(f)  # noqa: S301 - our own cache file
            return data
    market = build_marketplace(MarketConfig(tenants=tenants, sellers=sellers, seed=seed))
    sched = eval_schedule(seed, start, days, market, per_kind=per_kind, warmup_days=warmup_days,
                          kinds=kinds)  # fmt: skip
    cfg = BackfillConfig(start=start, minutes=days * 1440, rate=rate, seed=seed, tenants=tenants,
                         sellers=sellers, anomalies=sched)  # fmt: skip
    data = backfill(cfg)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            pickle.dump(data, f)
        tmp.replace(path)
    return data


def scored_series(data: Backfill, sellers_scored: int = SELLERS_SCORED) -> dict[str, Any]:
    """The series the evaluation scores: every tenant-level one, and the biggest sellers'."""
    keep = {f"s{j:04d}" for j in range(sellers_scored)}
    out = {}
    for key, values in data.series.items():
        dims = key.split("|")[2]
        if not dims or dims.rsplit("-", 1)[-1] in keep:
            out[key] = values
    return out


def event_counts(data: Backfill) -> dict[str, list[float | None]]:
    """Each minute's ``n`` per series: the ratios' trials, and the GMV series' payment counts.

    The flow passes every window's event count (``MetricWindow.count``) to its
    detector; the backfill keeps it only for ratios. GMV sums the settled
    payments, which are the failure rate's trials less its failures, so their
    count is ``trials * (1 - rate)`` of the same tenant or seller and minute.
    """
    out = dict(data.trials)
    for key, rate in data.series.items():
        tenant, metric, dims, window = key.split("|")
        trials = data.trials.get(key)
        gmv = f"{tenant}|gmv|{dims}|{window}"
        if metric != "payment_failure_rate" or trials is None or gmv not in data.series:
            continue
        out[gmv] = [
            None if n is None or r is None else float(round(n * (1.0 - r)))
            for n, r in zip(trials, rate, strict=True)
        ]
    return out


def labels_of(data: Backfill) -> list[Label]:
    """The backfill's anomalies as minute-indexed labels."""
    return [
        Label(
            kind=a.kind,
            tenant=a.tenant,
            start=int((a.start - data.start) // 60),
            end=int((a.end - data.start) // 60),
            seller_id=a.seller_id,
        )
        for a in data.anomalies
    ]


def evaluate_seed(
    data: Backfill,
    *,
    threshold: float,
    specs: dict[str, Any] | None,
    warmup_days: int,
    keep_bands: Sequence[str] = (),
) -> tuple[dict[str, Any], Any]:
    """Score one backfill and evaluate it; returns (report, Scored)."""
    series = scored_series(data)
    t0 = time.perf_counter()
    scored = score_series(
        data.start, series, specs=specs, keep_bands=keep_bands, trials=event_counts(data)
    )
    seconds = time.perf_counter() - t0
    report = evaluate_scores(
        scored.scores,
        labels_of(data),
        minutes=data.minutes,
        threshold=threshold,
        from_minute=min(warmup_days, data.minutes // 1440 - 1) * 1440,
    )
    add_oracle_delays(report, data, threshold)
    steps = sum(len(v) for v in series.values())
    report["scoring"] = {"series": len(series) + 3, "steps": steps, "seconds": seconds}
    report["events"] = data.events
    return report, scored


def add_oracle_delays(report: dict[str, Any], data: Backfill, threshold: float) -> None:
    """Give the failure spikes of ``report`` their oracle's delays, in label order.

    The oracle knows the simulator's usual failure rate (a backfill runs at
    ``BASE_FAILURE_RATE``) and when each spike began (``quality.oracle_rate_delay``):
    the earliest the data let any detector page, beside which the detectors'
    delays can be judged.
    """
    kind = report["kinds"].get("failure_spike")
    if kind is None:
        return
    delays = []
    for lab in labels_of(data):
        if lab.kind == "failure_spike":
            key = f"{lab.tenant}|payment_failure_rate||1m"
            rates, trials = data.series[key], data.trials[key]
            delays.append(oracle_rate_delay(rates, trials, lab, BASE_FAILURE_RATE,
                                            threshold=threshold))  # fmt: skip
    kind["oracle_delays"] = delays


def forecast_quality(data: Backfill, warmup_days: int) -> dict[str, Any]:
    """Progressive-validation forecast figures for the tenant-level forecast metrics."""
    out: dict[str, Any] = {}
    for key, values in data.series.items():
        tenant, metric, dims, _ = key.split("|")
        if dims or metric not in FORECAST_METRICS:
            continue
        kind = "count" if metric != "gmv" else "sum"
        minutes, hours = evaluate_forecaster(
            data.start, values, kind=kind, warmup_days=max(2.0, warmup_days - 1.0)
        )
        out[f"{tenant}|{metric}"] = {"1m": minutes.as_dict(), "1h": hours.as_dict()}
    return out


def _pool_forecasts(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    pooled: dict[str, Any] = {}
    for step in ("1m", "1h"):
        rows = [v[step] for fq in per_seed for v in fq.values() if v[step]["points"]]
        if not rows:
            continue
        pooled[step] = {
            "series": len(rows),
            "mase_median": sorted(r["mase"] for r in rows)[len(rows) // 2],
            "mase_max": max(r["mase"] for r in rows),
            "coverage80_mean": sum(r["coverage80"] for r in rows) / len(rows),
            "coverage95_mean": sum(r["coverage95"] for r in rows) / len(rows),
        }
    return pooled


def run_seed(
    seed: int, group: str, options: dict[str, Any], plot_wanted: bool
) -> tuple[int, str, dict[str, Any], tuple[Any, Backfill] | None, float]:
    """One seed's whole evaluation: (seed, group, report, (scored, data) to plot, seconds).

    A module-level function so ``--jobs`` can run seeds in worker processes.
    """
    t1 = time.perf_counter()
    data = dataset(seed, **options["dataset"])
    keep = [f"{a.tenant}|{_plot_metric(a.kind)}||1m" for a in data.anomalies]
    report, scored = evaluate_seed(
        data, threshold=options["threshold"], specs=options["specs"],
        warmup_days=options["dataset"]["warmup_days"], keep_bands=keep,
    )  # fmt: skip
    last = None
    if group == "report":
        report["forecasts"] = forecast_quality(data, options["dataset"]["warmup_days"])
        if plot_wanted:
            last = (scored, data)
    report["labels"] = [asdict(lab) for lab in labels_of(data)]
    return seed, group, report, last, time.perf_counter() - t1


def _run_seed_star(args: tuple[int, str, dict[str, Any], bool]) -> Any:
    return run_seed(*args)


def plot(scored: Any, data: Backfill, path: Path, threshold: float) -> None:
    """PNG: a few labeled series around their anomaly, with band and score."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        msg = "--plot needs matplotlib: pip install 'linkpulse[eval]'"
        raise typer.BadParameter(msg) from e
    panels: list[tuple[str, str, Label]] = []
    for lab in labels_of(data):
        key = f"{lab.tenant}|{_plot_metric(lab.kind)}||1m"
        if key in scored.bands and all(p[1] != lab.kind for p in panels):
            panels.append((key, lab.kind, lab))
        if len(panels) == 4:
            break
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.8 * len(panels)), squeeze=False)
    for ax, (key, kind, lab) in zip(axes[:, 0], panels, strict=True):
        lo = max(0, lab.start - 360)
        hi = min(data.minutes, lab.end + 360)
        xs = list(range(lo, hi))
        vals = [data.series[key][i] for i in xs]
        band = scored.bands[key]
        ax.fill_between(xs, [band[i][1] or 0 for i in xs], [band[i][2] or 0 for i in xs],
                        color="tab:blue", alpha=0.2, label="band")  # fmt: skip
        ax.plot(xs, [band[i][0] for i in xs], color="tab:blue", lw=0.8, label="expected")
        ax.plot(xs, [v if v is not None else 0 for v in vals], color="k", lw=0.6, label="value")
        ax.axvspan(lab.start, lab.end, color="tab:red", alpha=0.15, label=kind)
        ax2 = ax.twinx()
        ax2.plot(xs, [scored.scores[key][i] for i in xs], color="tab:red", lw=0.8)
        ax2.axhline(threshold, color="tab:red", ls=":", lw=0.8)
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("score")
        ax.set_title(f"{key} — {kind}", fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_metric(kind: str) -> str:
    return {
        "revenue_drop": "gmv",
        "failure_spike": "payment_failure_rate",
        "traffic_surge": "page_views",
        "refund_burst": "refunds",
        "silent_stream": "gmv",
        "gradual_drift": "page_views",
        "seller_shift": "orders",
        "pattern_change": "page_views",
    }.get(kind, "orders")


def _summary_table(title: str, report: dict[str, Any]) -> Table:
    t = Table(
        title=title,
        caption="delay: windows from the start to the first page; oracle: the same for an "
        "oracle that knows the usual rate and the start; cleared: from the end to the last page "
        "(medians)",
    )
    for col in ("kind", "labels", "recall", "precision", "F1", "delay", "oracle", "cleared"):
        t.add_column(col)
    rows = [*report["kinds"].items(), ("all", report["overall"])]
    fields = ("median_delay", "median_oracle_delay", "median_clear_delay")
    for kind, k in rows:
        delay, oracle, clear = ("-" if k.get(f) is None else f"{k[f]:g}" for f in fields)
        t.add_row(kind, str(k["labels"]), f"{k['recall']:.2f}", f"{k['precision']:.2f}",
                  f"{k['f1']:.2f}", delay, oracle, clear)  # fmt: skip
    return t


def run_csv(path: Path, out: Path | None, spec: dict[str, Any] | None, grace: int | None) -> None:
    """Score ``path`` and write the scores to ``out`` (stdout if None)."""
    try:
        with path.open(newline="") as f:
            rows = read_series(f)
    except OSError as e:
        msg = f"--csv: cannot read {path}: {e.strerror}"
        raise typer.BadParameter(msg) from e
    except UnicodeDecodeError as e:
        msg = f"--csv: {path} is not UTF-8 text"
        raise typer.BadParameter(msg) from e
    except ValueError as e:
        msg = f"--csv {path}: {e}"
        raise typer.BadParameter(msg) from e
    scored = score_rows(rows, spec, series=f"csv|{path.stem}||csv", grace=grace)
    if out is None:
        write_scores(sys.stdout, scored)
    else:
        with out.open("w", newline="") as f:
            write_scores(f, scored)
    labeled = [(r, s) for r, s in scored if r is not None and r.label is not None]
    if labeled:
        hits = sum(1 for r, s in labeled if r.label and s.score >= PAGE_THRESHOLD)
        pages = sum(1 for _, s in scored if s.score >= PAGE_THRESHOLD)
        positives = sum(1 for r, _ in labeled if r.label)
        console.print(f"labeled anomalies paged: {hits}/{positives}; pages in all: {pages}")


def register(app: typer.Typer) -> None:
    """Add ``eval anomalies`` to the root app."""
    group = typer.Typer(help="Measure the quality of the anomaly detectors.", no_args_is_help=True)
    app.add_typer(group, name="eval")

    @group.command("anomalies")
    def anomalies(
        csv: Path | None = typer.Option(
            None, "--csv", help="score your own timestamp,value[,label] CSV"),
        csv_out: Path | None = typer.Option(
            None, "--csv-out", help="where --csv scores go (default: stdout)"),
        days: int = typer.Option(14, help="simulated days per seed (>= warm-up + 1)"),
        rate: float = typer.Option(10.0, help="mean events/s of the simulated marketplace"),
        tenants: int = typer.Option(3, help="tenants"),
        sellers: int = typer.Option(50, help="sellers per tenant"),
        seeds: str = typer.Option("5,6,7,8", help="seeds the figures are reported on"),
        tune_seeds: str = typer.Option("1,2,3,4", help="seeds used for tuning (reported apart)"),
        warmup_days: int = typer.Option(3, help="days before the first anomaly (not scored)"),
        per_kind: int = typer.Option(2, help="anomalies of each kind per seed"),
        kinds: str = typer.Option(",".join(KINDS), help="anomaly kinds to inject"),
        threshold: float = typer.Option(PAGE_THRESHOLD, help="paging score"),
        spec: Path | None = typer.Option(
            None, help="YAML: detector spec per metric (or, with --csv, one spec)"),
        grace: int | None = typer.Option(None, help="--csv: steps before scores count"),
        start: str = typer.Option(DEFAULT_START, help="ISO start of the simulated days"),
        out: Path = typer.Option(Path("anomaly-eval.json"), help="JSON report"),
        plot_path: Path | None = typer.Option(None, "--plot", help="PNG of a few series"),
        cache: Path | None = typer.Option(None, help="folder caching the simulated windows"),
        jobs: int = typer.Option(1, help="seeds evaluated at once, in worker processes"),
    ) -> None:  # fmt: skip
        """Report detection quality on simulated traffic (or score --csv FILE)."""
        spec_dict = None
        if spec is not None:
            try:
                spec_dict = load_spec(spec.read_text())
            except (OSError, ValueError) as e:
                msg = f"--spec {spec}: {e}"
                raise typer.BadParameter(msg) from e
        if csv is not None:
            run_csv(csv, csv_out, spec_dict, grace)
            return
        kind_list = [k.strip() for k in kinds.split(",") if k.strip()]
        bad = [k for k in kind_list if k not in KINDS]
        if bad or not kind_list:
            msg = f"--kinds: unknown {bad}; expected some of {', '.join(KINDS)}"
            raise typer.BadParameter(msg)
        if days <= warmup_days:
            msg = f"--days must be more than --warmup-days ({warmup_days}), got {days}"
            raise typer.BadParameter(msg)
        try:
            t0 = parse_time(start, "--start").timestamp()
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
        if jobs < 1:
            msg = f"--jobs must be >= 1, got {jobs}"
            raise typer.BadParameter(msg)
        report_seeds = _parse_seeds(seeds, "--seeds")
        tune = _parse_seeds(tune_seeds, "--tune-seeds")
        if not report_seeds:
            msg = "--seeds: name at least one seed"
            raise typer.BadParameter(msg)
        full: dict[str, Any] = {
            "config": {
                "days": days, "rate": rate, "tenants": tenants, "sellers": sellers,
                "seeds": report_seeds, "tune_seeds": tune, "warmup_days": warmup_days,
                "per_kind": per_kind, "kinds": kind_list, "threshold": threshold, "start": start,
                "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            "seeds": {},
        }  # fmt: skip
        groups: dict[str, list[dict[str, Any]]] = {"tune": [], "report": []}
        options: dict[str, Any] = {
            "dataset": {
                "start": t0, "days": days, "rate": rate, "tenants": tenants, "sellers": sellers,
                "warmup_days": warmup_days, "per_kind": per_kind, "kinds": kind_list,
                "cache": cache,
            },
            "threshold": threshold,
            "specs": spec_dict,
        }  # fmt: skip
        last_report = report_seeds[-1]
        work = [(s, "tune", options, False) for s in tune] + [
            (s, "report", options, plot_path is not None and s == last_report) for s in report_seeds
        ]
        try:
            if jobs == 1 or len(work) == 1:
                results = [run_seed(*w) for w in work]
            else:
                # fork: the workers share the imported detectors; each seed is independent
                ctx = multiprocessing.get_context("fork")
                with ctx.Pool(min(jobs, len(work))) as pool:
                    results = pool.map(_run_seed_star, work, chunksize=1)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
        forecasts: list[dict[str, Any]] = []
        last: tuple[Any, Backfill] | None = None
        for seed, group_name, report, plotted, seconds in results:
            if group_name == "report":
                forecasts.append(report["forecasts"])
            if plotted is not None:
                last = plotted
            full["seeds"][str(seed)] = {"group": group_name, **report}
            groups[group_name].append(report)
            console.print(
                f"seed {seed} ({group_name}): {report['events']:,} events, "
                f"F1 {report['overall']['f1']:.2f}, "
                f"{report['overall']['false_pages_per_tenant_day']:.2f} false pages/tenant-day "
                f"({seconds:.0f} s)"
            )
        for group_name, reports in groups.items():
            if reports:
                full[group_name] = merge_reports(reports)
                console.print(_summary_table(f"{group_name} seeds", full[group_name]))
        full["forecasts"] = _pool_forecasts(forecasts)
        out.write_text(json.dumps(full, indent=2, default=str) + "\n")
        console.print(f"report: {out}")
        if plot_path is not None and last is not None:
            plot(last[0], last[1], plot_path, threshold)
            console.print(f"plot: {plot_path}")
