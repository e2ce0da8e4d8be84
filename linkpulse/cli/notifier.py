"""CLI commands: ``linkpulse run notifier`` and ``linkpulse silences add|list|expire``.

The notifier reads its policy, receivers and retry schedule from one YAML file
(``--config``, see docs/notifications.md); a bad file is refused before
anything starts, every problem named with its field.
"""

from __future__ import annotations

import asyncio
import getpass
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import typer
from rich.console import Console
from rich.table import Table

from linkpulse.alerts.durations import parse_duration
from linkpulse.alerts.policy import PolicyError, Silence
from linkpulse.config import get_settings
from linkpulse.logging import get_logger

log = get_logger(__name__)
silences_app = typer.Typer(
    help="Silences: mute alerts matching labels for a while.", no_args_is_help=True
)
console = Console()


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def notifier(
    config: Path = typer.Option(..., "--config", "-c", help="Notifier YAML: route, receivers."),
    name: str = typer.Option("notifier", help="Durable consumer and state name."),
    check: bool = typer.Option(False, "--check", help="Validate the file and exit."),
) -> None:
    """Run the notifier: alert changes from JetStream, notifications to the receivers."""
    from linkpulse.alerts.delivery.config import load_config_file
    from linkpulse.notifier.service import Notifier

    try:
        cfg = load_config_file(config)
    except PolicyError as e:
        for field, problem in e.problems:
            typer.secho(f"{field}: {problem}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from e
    if check:
        typer.echo(f"{config}: ok ({len(cfg.contact_points)} receivers)")
        return
    service = Notifier(get_settings(), cfg, name=name)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await service.run(stop)

    try:
        asyncio.run(main())
    except Exception as e:  # a start-up failure (NATS, store) is one line, not a trace
        msg = f"notifier failed: {e}"
        raise _fail(msg, 1) from e


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


async def _conn() -> psycopg.AsyncConnection[Any]:
    dsn = get_settings().database_url
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        msg = f"cannot reach the store at {dsn}: {e}"
        raise _fail(msg, 1) from e


@silences_app.command("add")
def add(
    matchers: list[str] = typer.Argument(..., help="Label matchers, e.g. 'severity=\"warning\"'."),
    duration: str = typer.Option("2h", "--for", help="How long, from --start (e.g. 30m, 2h)."),
    start: datetime | None = typer.Option(None, help="Start (UTC unless a zone is given)."),
    end: datetime | None = typer.Option(None, help="End instead of --for."),
    comment: str = typer.Option(..., "--comment", "-m", help="Why (required)."),
    tenant: str = typer.Option("", help="Tenant the silence belongs to (adds tenant=...)."),
    author: str | None = typer.Option(None, help="Who (default cli:<os user>)."),
) -> None:
    """Create a silence; prints its id."""
    from linkpulse.notifier import store

    starts = _aware(start) if start else datetime.now(UTC)
    try:
        ends = _aware(end) if end else starts + timedelta(seconds=parse_duration(duration))
    except ValueError as e:
        msg = f"--for: {e}"
        raise _fail(msg) from e
    wanted = list(matchers)
    if tenant and not any(m.replace(" ", "").startswith("tenant=") for m in wanted):
        wanted.append(f'tenant="{tenant}"')
    s = Silence(
        id="",
        matchers=wanted,
        starts_at=starts,
        ends_at=ends,
        created_by=author or _who(),
        comment=comment,
    )
    try:
        s.validate()
    except PolicyError as e:
        raise _fail("; ".join(f"{f}: {m}" for f, m in e.problems)) from e

    async def go() -> dict[str, Any]:
        async with await _conn() as conn:
            return await store.create_silence(conn, s, tenant)

    row = asyncio.run(go())
    typer.echo(row["id"])


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@silences_app.command("list")
def list_(
    all_: bool = typer.Option(False, "--all", help="Include expired silences."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """The silences, newest first (active and pending by default)."""
    from linkpulse.notifier import store

    async def go() -> list[dict[str, Any]]:
        async with await _conn() as conn:
            return await store.list_silences(conn, include_expired=all_)

    rows = asyncio.run(go())
    if as_json:
        typer.echo(msgspec.json.encode(rows).decode())
        return
    table = Table("id", "matchers", "starts", "ends", "by", "comment")
    for r in rows:
        table.add_row(
            r["id"],
            ", ".join(r["matchers"]),
            f"{r['starts_at']:%Y-%m-%d %H:%M}",
            f"{r['ends_at']:%Y-%m-%d %H:%M}",
            r["created_by"],
            r["comment"],
        )
    console.print(table)


@silences_app.command("expire")
def expire(silence_id: str = typer.Argument(..., help="The silence's id.")) -> None:
    """End a silence now."""
    from linkpulse.notifier import store

    async def go() -> dict[str, Any] | None:
        async with await _conn() as conn:
            return await store.expire_silence(conn, silence_id, datetime.now(UTC))

    if asyncio.run(go()) is None:
        msg = f"no silence {silence_id!r}"
        raise _fail(msg, 1)
    typer.echo(f"expired {silence_id}")


def register(app: typer.Typer) -> None:
    """Add ``run notifier`` (to the ``run`` group) and the ``silences`` group."""
    from linkpulse.cli.run import run_app

    run_app.command("notifier")(notifier)
    app.add_typer(silences_app, name="silences")
