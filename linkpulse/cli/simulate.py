"""CLI command: ``linkpulse simulate``, marketplace traffic with labeled anomalies.

Options are turned into a ``RunPlan`` by ``build_plan`` (pure, testable), then
the runner sends the events to NATS, a file, or nowhere.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import datetime, timedelta
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from linkpulse.config import Settings, get_settings
from linkpulse.errors import LinkpulseError
from linkpulse.schemas.codec import MAX_FUTURE_SKEW
from linkpulse.simulator.anomalies import (
    KINDS,
    AnomalySpec,
    load_anomaly_file,
    parse_anomaly,
    parse_duration,
    parse_time,
    resolve,
)
from linkpulse.simulator.generator import BASE_FAILURE_RATE, TrafficConfig
from linkpulse.simulator.model import MarketConfig, build_marketplace
from linkpulse.simulator.report import render_summary
from linkpulse.simulator.runner import RunPlan, RunSummary, run, utcnow
from linkpulse.simulator.sinks import EventSink, FileSink, NatsSink, NullSink


def build_plan(
    *,
    rate: float,
    duration: str | None,
    start: str | None,
    tenants: int,
    sellers: int,
    seed: int,
    anomaly: list[str],
    anomalies_file: Path | None,
    labels: Path | None,
    seasonality: bool,
    failure_rate: float,
    to_nats: bool,
    dry_run: bool,
    now: datetime,
) -> RunPlan:
    """Validate the options and build the run; ValueError names the bad option.

    >>> from datetime import UTC
    >>> build_plan(rate=-3, duration="10m", start=None, tenants=3, sellers=10, seed=1,
    ...     anomaly=[], anomalies_file=None, labels=None, seasonality=True,
    ...     failure_rate=0.025, to_nats=False, dry_run=True, now=datetime.now(UTC))
    Traceback (most recent call last):
    ...
    ValueError: --rate must be > 0, got -3
    """
    span = parse_duration(duration) if duration is not None else None
    if start is not None:
        if span is None:
            msg = "--duration is required with --start (how much time to backfill)"
            raise ValueError(msg)
        begin = parse_time(start)
        if to_nats and begin + timedelta(seconds=span) > now + MAX_FUTURE_SKEW:
            msg = (
                f"--start: {begin.isoformat()} + --duration {duration} ends in the future; "
                "the pipeline rejects future events, so backfill a past range"
            )
            raise ValueError(msg)
        live = False
    else:
        if dry_run and span is None:
            msg = "--dry-run needs --duration (how much traffic to generate)"
            raise ValueError(msg)
        begin, live = now, not dry_run
    market = MarketConfig(tenants=tenants, sellers=sellers, seed=seed)
    traffic = TrafficConfig(
        rate=rate,
        start=begin.timestamp(),
        duration=span,
        seed=seed,
        seasonality=seasonality,
        failure_rate=failure_rate,
        market=market,
    )
    specs: list[AnomalySpec] = [parse_anomaly(text) for text in anomaly]
    if anomalies_file is not None:
        specs.extend(load_anomaly_file(anomalies_file))
    marketplace = build_marketplace(market)
    resolved = tuple(resolve(s, traffic.start, span, marketplace) for s in specs)
    return RunPlan(
        traffic=traffic,
        anomalies=resolved,
        live=live,
        labels_path=None if dry_run else labels,
        batch_size=200 if live else 1000,
    )


async def _execute(
    plan: RunPlan, sink_kind: str, output: Path | None, settings: Settings, console: Console | None
) -> RunSummary:
    sink: EventSink
    if sink_kind == "file":
        assert output is not None
        sink = FileSink(output)
    elif sink_kind == "nats":
        sink = await NatsSink.connect(settings)
    else:
        sink = NullSink()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_interrupt() -> None:
        stop.set()
        # A second Ctrl-C gets the default behaviour (stop at once).
        loop.remove_signal_handler(signal.SIGINT)

    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        return await run(plan, sink, stop=stop, console=console)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def register(app: typer.Typer) -> None:
    """Add ``simulate`` to the root app."""

    @app.command()
    def simulate(
        rate: float = typer.Option(100.0, help="mean events/s before seasonality"),
        duration: str | None = typer.Option(
            None, help="how long, e.g. 90s, 10m, 1h30m (live: until Ctrl-C if omitted)"
        ),
        start: str | None = typer.Option(
            None, help="ISO time: backfill [start, start+duration) as fast as possible"
        ),
        tenants: int = typer.Option(3, help="number of tenants"),
        sellers: int = typer.Option(200, help="sellers per tenant (Zipf-sized)"),
        seed: int = typer.Option(42, help="random seed; same seed and options, same events"),
        anomaly: list[str] = typer.Option(
            [],
            "--anomaly",
            # escaped: rich would take [@START+DURATION] for markup and drop it
            help=escape(
                f"KIND[@START+DURATION][:TARGET][=MAGNITUDE], repeatable; KIND in "
                f"{', '.join(KINDS)}; e.g. failure_spike@30m+10m:acme=0.4"
            ),
        ),
        anomalies: Path | None = typer.Option(
            None, "--anomalies", help="JSON file: a list of anomaly specs"
        ),
        labels: Path | None = typer.Option(
            None, help="where to write the anomaly labels [default: <state_dir>/labels.json]"
        ),
        output: Path | None = typer.Option(
            None, help="write NDJSON to this file instead of publishing to NATS"
        ),
        dry_run: bool = typer.Option(False, "--dry-run", help="generate and count only"),
        seasonality: bool = typer.Option(
            True, "--seasonality/--no-seasonality", help="daily and weekly rate curves"
        ),
        failure_rate: float = typer.Option(BASE_FAILURE_RATE, help="base payment failure rate"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    ) -> None:
        """Generate realistic marketplace traffic, with labeled anomalies, into NATS or a file."""
        settings = get_settings()
        sink_kind = "null" if dry_run else "file" if output is not None else "nats"
        try:
            plan = build_plan(
                rate=rate,
                duration=duration,
                start=start,
                tenants=tenants,
                sellers=sellers,
                seed=seed,
                anomaly=anomaly,
                anomalies_file=anomalies,
                labels=labels or settings.state_dir / "labels.json",
                seasonality=seasonality,
                failure_rate=failure_rate,
                to_nats=sink_kind == "nats",
                dry_run=dry_run,
                now=utcnow(),
            )
        except ValueError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from e
        err = Console(stderr=True)
        try:
            summary = asyncio.run(
                _execute(plan, sink_kind, output, settings, None if quiet else err)
            )
        except (LinkpulseError, ValueError) as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from e
        render_summary(summary, Console())
