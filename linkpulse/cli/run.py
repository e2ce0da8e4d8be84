"""CLI commands: ``linkpulse run dataflow`` runs the live-metrics Bytewax flow."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import psycopg
import typer

from linkpulse.config import Settings, get_settings
from linkpulse.errors import LinkpulseError
from linkpulse.logging import get_logger

log = get_logger(__name__)

run_app = typer.Typer(help="Run linkpulse's long-running processes.", no_args_is_help=True)


@run_app.command("dataflow")
def dataflow(
    workers: int = typer.Option(1, "-w", "--workers", min=1, help="Worker threads per process."),
    processes: int = typer.Option(
        1, "-p", "--processes", min=1, help="Processes to start on this machine, as one cluster."
    ),
    addresses: str | None = typer.Option(
        None,
        "-a",
        "--addresses",
        help="host:port of every process of a multi-machine cluster, ';'-separated (with -i).",
    ),
    process_id: int | None = typer.Option(
        None, "-i", "--process-id", min=0, help="This process's index in --addresses."
    ),
    recovery_dir: Path | None = typer.Option(
        None,
        "--recovery-dir",
        help="Bytewax recovery store, created on first run (default: <state_dir>/recovery); "
        "'' disables recovery.",
    ),
    snapshot_interval: float = typer.Option(
        5.0, "-s", "--snapshot-interval", min=0.1, help="Seconds between state snapshots."
    ),
    from_start: bool = typer.Option(
        False, "--from-start", help="Discard the recovery store and re-read the whole stream."
    ),
    stop_at_seq: int | None = typer.Option(
        None, "--stop-at-seq", min=1, help="Exit once this stream sequence is processed."
    ),
    start_seq: int = typer.Option(
        1, "--start-seq", min=1, help="Without recovery state, start at this stream sequence."
    ),
    raw_events: bool = typer.Option(
        True, "--raw-events/--no-raw-events", help="Store raw events (off: metrics only)."
    ),
    redis_prefix: str | None = typer.Option(
        None,
        help="Prefix of the Redis keys (latest values, query-cache watermarks); default "
        "LINKPULSE_REDIS_KEY_PREFIX, which the API reads too: keep them equal.",
    ),
    scoring: bool = typer.Option(
        True, "--scoring/--no-scoring", help="Score every final 1m window (anomaly detection)."
    ),
    detectors: Path | None = typer.Option(
        None,
        "--detectors",
        help="YAML mapping metric -> detector spec (see docs/anomaly-detection.md); "
        "metrics not named get their kind's defaults.",
    ),
    idle_expiry: float = typer.Option(
        6 * 3600.0,
        "--scoring-idle-expiry",
        min=1.0,
        help="Seconds without a window after which a series' detector is forgotten.",
    ),
    alert_rules: list[Path] | None = typer.Option(
        None,
        "--alert-rules",
        help="Alert rule file or directory (repeatable; see docs/alerting.md); none: no alerting.",
    ),
    alerts: bool = typer.Option(True, "--alerts/--no-alerts", help="Evaluate the alert rules."),
) -> None:
    """Run the live-metrics dataflow: JetStream in; store, Redis and NATS out.

    Resumes from the recovery store after a crash or restart (exactly once in
    effect). Prometheus metrics are served on LINKPULSE_METRICS_PORT.
    """
    # Imported here so `linkpulse --help` does not load Bytewax.
    from linkpulse.alerts.reload import install_sighup
    from linkpulse.dataflows.alerting import AlertingConfig
    from linkpulse.dataflows.live_metrics import FlowOptions, build_flow
    from linkpulse.dataflows.runner import prepare_recovery, run_flow, spawn_local_cluster
    from linkpulse.dataflows.scoring import scoring_config

    if recovery_dir is None:
        recovery_dir = get_settings().state_dir / "recovery"
    rec = recovery_dir if str(recovery_dir) not in ("", ".") else None
    if processes > 1:
        if addresses or process_id is not None:
            typer.secho("use either -p (local processes) or -a/-i (a cluster)", err=True)
            raise typer.Exit(2)
        if rec is not None:
            # Made here, once, before any process looks for it.
            prepare_recovery(rec, workers * processes, from_start=from_start)
        argv = _without(sys.argv[1:], ("-p", "--processes"))
        argv = [a for a in argv if a != "--from-start"]
        raise typer.Exit(spawn_local_cluster(processes, argv))
    settings = get_settings()
    problems = preflight(settings)
    if problems:
        for problem in problems:
            typer.secho(f"cannot start the dataflow: {problem}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    try:
        opts = FlowOptions(
            raw_events=raw_events,
            start_seq=start_seq,
            stop_at_seq=stop_at_seq,
            redis_key_prefix=settings.redis_key_prefix if redis_prefix is None else redis_prefix,
            scoring=scoring_config(detectors, idle_expiry) if scoring else None,
            # a bad rule file stops the start here, naming file, line and field
            alerting=AlertingConfig(tuple(alert_rules)) if alerts and alert_rules else None,
        )
        if opts.alerting is not None:
            install_sighup([opts.alerting.holder])  # SIGHUP reloads; a bad file keeps the old
        run_flow(
            build_flow(settings, opts),
            workers=workers,
            process_id=process_id,
            addresses=addresses.split(";") if addresses else None,
            recovery_dir=rec,
            snapshot_interval=timedelta(seconds=snapshot_interval),
            from_start=from_start,
            metrics_port=settings.metrics_port,
        )
    except (LinkpulseError, ValueError) as e:
        typer.secho(f"dataflow failed: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from e


def preflight(settings: Settings) -> list[str]:
    """What stops the flow from starting, each with what to do (empty: go).

    Checked before Bytewax starts, because a connector failing inside it surfaces
    as a Rust panic wrapped around the real reason. Redis is optional (the flow
    runs without it and catches up), NATS and the store are not.
    """
    from linkpulse.stack.probes import probe_nats, probe_postgres, probe_redis

    problems = []
    nats = probe_nats(settings.nats_url)
    if not nats.ok or nats.degraded:
        problems.append(
            f"NATS at {nats.url}: {nats.error or 'JetStream is not enabled'}; "
            "start it (with -js) or run `linkpulse up`, or set LINKPULSE_NATS_URL"
        )
    pg = probe_postgres(settings.database_url)
    if not pg.ok:
        problems.append(
            f"PostgreSQL at {pg.url}: {pg.error}; run `linkpulse up` or set LINKPULSE_DATABASE_URL"
        )
    elif not _migrated(settings.database_url):
        problems.append(f"the store at {pg.url} has no `events` table; run `linkpulse db migrate`")
    redis = probe_redis(settings.redis_url)
    if not redis.ok:
        log.warning(
            "redis unreachable: live values will be skipped until it answers",
            url=redis.url,
            error=redis.error,
        )
    return problems


def _migrated(dsn: str) -> bool:
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        row = conn.execute("select to_regclass('events') is not null").fetchone()
    return bool(row and row[0])


def _without(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` minus an option and its value (``-p 2``, ``--processes=2``).

    >>> _without(["run", "dataflow", "-p", "2", "-w", "2"], ("-p", "--processes"))
    ['run', 'dataflow', '-w', '2']
    """
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in names:
            skip = True
            continue
        if any(arg.startswith(f"{n}=") for n in names):
            continue
        out.append(arg)
    return out


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(run_app, name="run")
