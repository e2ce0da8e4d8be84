"""CLI commands: ``linkpulse up``, ``down`` and ``doctor`` — the local stack.

Rendering only; the decisions live in :mod:`linkpulse.stack.lifecycle`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from linkpulse.cli.console import make_console
from linkpulse.config import Settings, load_settings
from linkpulse.errors import ConfigError, StackError
from linkpulse.stack import DoctorRow, ServiceUse, StopResult, doctor, down, up
from linkpulse.stack.embedded import DEFAULT_START_TIMEOUT
from linkpulse.stack.state import ENV_FILE
from linkpulse.stack.urls import redact
from linkpulse.store.jobs import JobsReport, Level

STATE_DIR_HELP = (
    "state folder for embedded servers' data and URLs (default: LINKPULSE_STATE_DIR or .linkpulse)"
)
LABELS = {"nats": "NATS (JetStream)", "redis": "Redis", "postgres": "PostgreSQL"}

console = make_console()
err_console = make_console(stderr=True)
LEVEL_STYLE = {Level.OK: "green", Level.WARN: "yellow", Level.FAIL: "red"}
JSON_HELP = "print one JSON document on stdout instead of tables (for scripts and CI)"


def _settings(state_dir: Path | None, *, with_env_file: bool) -> Settings:
    """Settings for a stack command; ``with_env_file`` adds the URLs an earlier `up` wrote."""
    overrides: dict[str, object] = {} if state_dir is None else {"state_dir": state_dir}
    try:
        base = load_settings(**overrides, _env_file=None)
        if not with_env_file:
            return base
        return load_settings(**overrides, _env_file=base.state_dir / ENV_FILE)
    except ConfigError as e:
        _fail(f"configuration error: {e}", "fix the environment variable(s) named above")


def _fail(message: str, hint: str = "", *, as_json: bool = False) -> NoReturn:
    """Print the error (and, for ``--json``, ``{"ok": false, "error": ...}`` on stdout); exit 1."""
    if as_json:
        _print_json({"ok": False, "error": message, "hint": hint})
    _say_error(message, hint)
    raise typer.Exit(1)


def _say_error(message: str, hint: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    if hint:
        err_console.print(escape(hint), highlight=False)


def _json_value(value: object) -> object:
    """``json.dumps`` default: times as ISO 8601, durations in seconds.

    >>> json.dumps({"every": timedelta(minutes=1)}, default=_json_value)
    '{"every": 60.0}'
    """
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    msg = f"not JSON serializable: {type(value).__name__}"
    raise TypeError(msg)


def _print_json(body: dict[str, Any]) -> None:
    # Plain print, not rich: nothing may be wrapped, styled or highlighted.
    print(json.dumps(body, default=_json_value, indent=2))


class PlainProgress:
    """Progress as plain lines, for output that is not a terminal (no spinner to update).

    A message is printed when it changes; the repeated "waiting ... (Ns)" of a
    slow server only every ``every_s`` seconds of its wait.

    >>> lines = []
    >>> say = PlainProgress(lines.append, every_s=5)
    >>> for msg in ["starting embedded nats", "waiting for embedded nats (0s)",
    ...             "waiting for embedded nats (1s)", "waiting for embedded nats (5s)"]:
    ...     say(msg)
    >>> lines
    ['starting embedded nats', 'waiting for embedded nats (0s)', 'waiting for embedded nats (5s)']
    """

    def __init__(self, emit: Callable[[str], None], every_s: float = 5.0) -> None:
        self._emit = emit
        self._every_s = every_s
        self._last_topic = ""
        self._last_seconds = 0.0

    def __call__(self, message: str) -> None:
        topic, seconds = _split_wait(message)
        if topic == self._last_topic and seconds - self._last_seconds < self._every_s:
            return
        self._last_topic, self._last_seconds = topic, seconds
        self._emit(message)


def _split_wait(message: str) -> tuple[str, float]:
    """``"waiting for x (12s)"`` -> ``("waiting for x", 12.0)``; other messages -> (message, 0)."""
    head, _, tail = message.rpartition(" (")
    if head and tail.endswith("s)") and tail[:-2].isdigit():
        return head, float(tail[:-2])
    return message, 0.0


def up_table(uses: list[ServiceUse]) -> Table:
    """The table ``linkpulse up`` prints."""
    table = Table(title="linkpulse local stack")
    for col in ("service", "source", "URL", "version", "status", "pid"):
        # fold, never truncate: the URL is meant to be copied
        table.add_column(col, overflow="fold")
    for use in uses:
        pid = "-" if use.pid is None else str(use.pid)
        table.add_row(
            LABELS[use.service], use.source, escape(redact(use.url)), use.version, use.action, pid
        )
    return table


def doctor_table(rows: list[DoctorRow]) -> Table:
    """The table ``linkpulse doctor`` prints."""
    table = Table(title="linkpulse doctor")
    for col in ("service", "source", "URL", "status", "version", "details", "what to do"):
        table.add_column(col, overflow="fold")
    for row in rows:
        p = row.probe
        style = "red" if not p.ok else ("yellow" if p.degraded else "green")
        details = "; ".join(f"{k}: {v}" for k, v in p.details.items())
        table.add_row(
            LABELS[p.service],
            row.source,
            escape(p.url),
            f"[{style}]{escape(p.summary)}[/]",
            p.version or "-",
            escape(details) or "-",
            escape(row.hint) or "-",
        )
    return table


def ago(then: datetime | None, now: datetime) -> str:
    """A time as UTC to the second plus how long ago, for the jobs table.

    >>> now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    >>> ago(datetime(2026, 12, 1, 11, 55, 30, tzinfo=UTC), now)
    '2026-12-01 11:55:30Z (4 min ago)'
    >>> ago(datetime(2026, 12, 1, 12, 0, 20, tzinfo=UTC), now)
    '2026-12-01 12:00:20Z (in 20 s)'
    >>> ago(None, now)
    '-'
    """
    if then is None:
        return "-"
    seconds = (now - then).total_seconds()
    when = then.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{when} ({span(seconds)} ago)" if seconds >= 0 else f"{when} (in {span(seconds)})"


def span(seconds: float) -> str:
    """A duration in the largest unit that keeps it readable (rounded).

    >>> [span(s) for s in (45, 300, 43200, 86400, -90)]
    ['45 s', '5 min', '12 h', '24 h', '90 s']
    """
    size = abs(seconds)
    if size < 120:
        return f"{size:.0f} s"
    if size < 7200:
        return f"{size / 60:.0f} min"
    if size < 172800:
        return f"{size / 3600:.0f} h"
    return f"{size / 86400:.0f} d"


def jobs_table(report: JobsReport, now: datetime) -> Table:
    """The store's scheduled jobs ``linkpulse doctor`` prints under the services."""
    table = Table(title="store scheduled jobs")
    for col in ("job", "source", "every", "last run", "status", "runs", "failures", "next run"):
        table.add_column(col, overflow="fold")
    table.add_column("error / what to do", overflow="fold")
    for job, health in report.jobs:
        style = LEVEL_STYLE[health.level]
        every = span(job.schedule.total_seconds()) if job.schedule is not None else "-"
        table.add_row(
            escape(job.name),
            job.source,
            every,
            ago(job.last_start, now),
            f"[{style}]{escape(health.status)}[/]",
            str(job.runs),
            str(job.failures),
            ago(job.next_start, now),
            escape(health.hint) or "-",
        )
    return table


def stop_table(results: list[StopResult]) -> Table:
    """The table ``linkpulse down`` prints."""
    table = Table(title="linkpulse down")
    for col in ("service", "pid", "port", "result"):
        table.add_column(col)
    for r in results:
        table.add_row(LABELS[r.service], str(r.pid), str(r.port), r.outcome)
    return table


def up_command(
    state_dir: Path | None = typer.Option(None, "--state-dir", help=STATE_DIR_HELP),
    timeout: float = typer.Option(
        DEFAULT_START_TIMEOUT, "--timeout", min=1, help="seconds to wait for each server"
    ),
    new_ports: bool = typer.Option(
        False,
        "--new-ports",
        help="start embedded servers on new free ports instead of the ones they used before",
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Make NATS (JetStream), Redis and PostgreSQL available.

    Uses each configured server (LINKPULSE_NATS_URL, LINKPULSE_REDIS_URL,
    LINKPULSE_DATABASE_URL) that answers; starts the others from the embedded
    extras on loopback ports, with data in the state folder. Running it again
    reuses what is running; a server that died is started again on the port it
    had (so running clients reconnect). Writes <state-dir>/env for other shells.
    """
    settings = _settings(state_dir, with_env_file=False)
    out = err_console if as_json else console
    try:
        with out.status("starting the local stack...") as status:
            # A spinner on a terminal; plain lines under a pipe, where it shows nothing.
            say: Callable[[str], None] = (
                (lambda msg: status.update(f"{msg}..."))
                if out.is_terminal
                else PlainProgress(lambda msg: out.print(f"{escape(msg)}...", highlight=False))
            )
            uses = up(
                settings,
                settings.state_dir,
                timeout=timeout,
                progress=say,
                new_ports=new_ports,
            )
    except StackError as e:
        _fail(
            str(e),
            "after fixing it, run `linkpulse up` again (`linkpulse down` cleans up)",
            as_json=as_json,
        )
    embedded_used = any(u.source == "embedded" for u in uses)
    env_file = settings.state_dir / ENV_FILE
    if as_json:
        services = [asdict(u) | {"url": redact(u.url)} for u in uses]
        _print_json(
            {"ok": True, "services": services, "env_file": str(env_file) if embedded_used else None}
        )
        return
    console.print(up_table(uses))
    if embedded_used:
        console.print(
            f"embedded URLs are in {env_file}; linkpulse commands run from this folder "
            f"read it, other shells: [bold]source {env_file}[/]",
            highlight=False,
        )


def down_command(
    state_dir: Path | None = typer.Option(None, "--state-dir", help=STATE_DIR_HELP),
    purge: bool = typer.Option(False, "--purge", help="also delete the embedded servers' data"),
) -> None:
    """Stop the servers `linkpulse up` started (never configured or system servers)."""
    settings = _settings(state_dir, with_env_file=False)
    try:
        with console.status("stopping embedded servers..."):
            results = down(settings.state_dir, purge=purge)
    except StackError as e:
        _fail(str(e))
    if not results:
        console.print(f"nothing to stop: no embedded servers recorded in {settings.state_dir}")
        return
    console.print(stop_table(results))


def doctor_problems(rows: list[DoctorRow]) -> list[tuple[str, str]]:
    """What makes ``doctor`` exit 1: (message, what to do) pairs, empty when all is well."""
    problems = []
    failed = [LABELS[r.probe.service] for r in rows if r.failed]
    if failed:
        problems.append(
            (
                f"not usable: {', '.join(failed)}",
                "run `linkpulse up` to start what is missing, then `linkpulse doctor` again",
            )
        )
    failing = [job for r in rows for job in r.failing_jobs]
    if failing:
        problems.append(
            (
                "failing scheduled jobs: "
                + "; ".join(f"{j.name}: {j.last_error or 'see the server log'}" for j in failing),
                "the store answers, but its upkeep (rollup refresh, compression, retention) is "
                "failing: fix the error shown; each job is retried on its schedule",
            )
        )
    return problems


def doctor_json(rows: list[DoctorRow], problems: list[tuple[str, str]]) -> dict[str, Any]:
    """The document ``linkpulse doctor --json`` prints."""
    services = []
    jobs: list[dict[str, Any]] = []
    notes = []
    for row in rows:
        p = row.probe
        services.append(
            {
                "service": p.service,
                "label": LABELS[p.service],
                "source": row.source,
                "url": p.url,
                "ok": p.ok and not p.degraded,
                "status": p.summary,
                "version": p.version,
                "error": p.error,
                "details": p.details,
                "hint": row.hint,
            }
        )
        if row.jobs is not None:
            jobs += [
                asdict(job) | {"internal": job.internal} | {"health": asdict(health)}
                for job, health in row.jobs.jobs
            ]
            if row.jobs.note:
                notes.append(row.jobs.note)
    return {
        "ok": not problems,
        "services": services,
        "jobs": jobs,
        "jobs_note": "; ".join(notes),
        "problems": [{"message": m, "hint": h} for m, h in problems],
    }


def doctor_command(
    state_dir: Path | None = typer.Option(None, "--state-dir", help=STATE_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Check each service: reachable, version, JetStream, TimescaleDB tier, what to do.

    Also lists the store's scheduled jobs (TimescaleDB policies, `linkpulse db
    maintain`): last run, runs, failures, the last error. Exits 1 when a
    required service is unreachable, NATS lacks JetStream, or a job's last run failed.
    """
    settings = _settings(state_dir, with_env_file=True)
    try:
        with (err_console if as_json else console).status("checking services..."):
            rows = doctor(settings, settings.state_dir)
    except StackError as e:
        _fail(str(e), as_json=as_json)
    problems = doctor_problems(rows)
    if as_json:
        _print_json(doctor_json(rows, problems))
    else:
        console.print(doctor_table(rows))
        for row in rows:
            if row.jobs is not None:
                if row.jobs.jobs:
                    console.print(jobs_table(row.jobs, datetime.now(UTC)))
                if row.jobs.note:
                    console.print(f"scheduled jobs: {escape(row.jobs.note)}", highlight=False)
    for message, hint in problems:
        _say_error(message, hint)
    if problems:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``up``, ``down`` and ``doctor`` to the root app."""
    app.command("up")(up_command)
    app.command("down")(down_command)
    app.command("doctor")(doctor_command)
