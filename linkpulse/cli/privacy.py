"""CLI commands: ``linkpulse privacy erase|export``, a person's data removed or handed over.

Both take the user id as the person knows it; when ``user_id`` is a PII field
(``LINKPULSE_PRIVACY_PII_FIELDS``) it is hashed with the current and previous
keys to find the rows. Both are written to the audit log as done by
``cli:<os user>``, naming the person by pseudonym. See docs/privacy.md.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors
import psycopg
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

from linkpulse.api.audit import AuditEntry, insert_entries
from linkpulse.cli.console import make_console
from linkpulse.cli.keys import _who
from linkpulse.config import Settings, get_settings
from linkpulse.errors import LinkpulseError
from linkpulse.privacy.person import Person, person_of

privacy_app = typer.Typer(
    help="A person's data: erase it everywhere it is stored, or export it (subject access).",
    no_args_is_help=True,
)
err = make_console(stderr=True)

USER_HELP = "the person's user id, as the producers send it (hashed when user_id is PII)"
TENANT_HELP = "only this tenant's rows (default: every tenant)"
# What erase cannot reach, said after every run (docs/privacy.md).
UNREACHED = (
    "not touched, by design: metric_windows, anomaly scores and alerts (aggregates with no "
    "user id), rollup buckets older than the raw retention; out of reach: Parquet archives "
    "and exports already written, database backups, consumers that copied the streams"
)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _person(user: str, tenant: str | None, settings: Settings) -> Person:
    try:
        return person_of(user, tenant, settings)
    except ValueError as e:
        msg = f"privacy: {e}"
        raise _fail(msg) from e


def _connect(dsn: str) -> psycopg.Connection:
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        msg = f"cannot reach the database at {dsn}: {e}; is it running (linkpulse up)?"
        raise _fail(msg, 1) from e


def _audit(dsn: str, action: str, who: Person, items: int, outcome: str, detail: str) -> None:
    entry = AuditEntry(
        at=datetime.now(UTC),
        principal=_who(),
        role=None,
        tenant=who.tenant,
        seller=None,
        action=action,
        resource=f"user:{who.label}",
        scope={"tenant": who.tenant},
        outcome=outcome,
        items=items,
        detail=detail,
    )

    async def write() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await insert_entries(conn, [entry])

    asyncio.run(write())


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
    )


@privacy_app.command("erase")
def erase(
    user: str = typer.Option(..., "--user", help=USER_HELP),
    tenant: str | None = typer.Option(None, "--tenant", help=TENANT_HELP),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="count what would be erased, change nothing"
    ),
    skip_streams: bool = typer.Option(
        False,
        "--skip-streams",
        help="leave the JetStream streams alone (their messages then age out at "
        "LINKPULSE_STREAM_MAX_AGE_S)",
    ),
) -> None:
    """Remove a person's events and dead letters from the store and streams; fix the rollups.

    Every place a raw event is stored is searched (plain partitions, TimescaleDB
    chunks, compressed ones included, dead letters, the JetStream streams); the
    rollups the events were in are recomputed, and the erasure goes to the audit log.
    """
    from linkpulse.privacy.erase import erase_store
    from linkpulse.privacy.streams import erase_streams
    from linkpulse.query.watermarks import WatermarkTarget

    settings = get_settings()
    # the query cache forgets answers that counted the person (docs/caching.md)
    watermarks = WatermarkTarget.from_settings(settings).bumper()
    who = _person(user, tenant, settings)
    verb = "would delete" if dry_run else "deleted"
    problems: list[str] = []
    with _progress() as progress:
        task = progress.add_task("store", total=None)
        with _connect(settings.database_url) as conn:
            try:
                store = erase_store(
                    conn,
                    who,
                    dry_run=dry_run,
                    step=lambda text: progress.update(task, description=text),
                    watermarks=watermarks,
                )
            except (LinkpulseError, psycopg.Error) as e:
                msg = f"privacy erase: the store failed: {e}"
                raise _fail(msg, 1) from e
            finally:
                watermarks.close()  # what was touched is sent before the command ends
        progress.remove_task(task)
        streams = None
        if not skip_streams:
            bars: dict[str, Any] = {}

            def on_read(stream: str, read: int, total: int) -> None:
                if stream not in bars:
                    bars[stream] = progress.add_task(f"reading {stream}", total=total)
                progress.update(bars[stream], completed=read, total=total)

            try:
                streams = asyncio.run(
                    erase_streams(settings, who, dry_run=dry_run, progress=on_read)
                )
            except (LinkpulseError, nats.errors.Error, OSError) as e:
                problems.append(f"streams not reached: {e}")
    lines = [
        f"events: {verb} {store.events}"
        + (f" in tenants {', '.join(store.tenants)}" if store.tenants else "")
        + (
            f" (some in compressed chunk(s) {', '.join(store.compressed_chunks)}"
            + (", decompressed and compressed again)" if store.decompressed else ")")
            if store.compressed_chunks
            else ""
        ),
        f"dead letters: {verb} {store.dead_letters}",
        f"rollups: {store.buckets} touched minute(s) "
        + ("would be recomputed" if dry_run else "recomputed"),
    ]
    if streams is not None:
        lines += [
            f"stream {name}: {verb} {streams.deleted[name]} of {streams.read[name]} message(s) read"
            for name in streams.read
        ]
    elif skip_streams:
        problems.append(
            "streams skipped (--skip-streams): the person's messages stay in them until "
            f"LINKPULSE_STREAM_MAX_AGE_S ({settings.stream_max_age_s:g} s)"
        )
    total = store.events + store.dead_letters + sum((streams.deleted if streams else {}).values())
    if total == 0:
        lines.insert(0, f"0 rows: nothing stored for user {user!r}")
    detail = "; ".join(lines + problems)
    action = "privacy.erase.dry_run" if dry_run else "privacy.erase"
    _audit(
        settings.database_url, action, who, store.events, "partial" if problems else "ok", detail
    )
    for text in lines:
        typer.echo(text)
    typer.echo(UNREACHED)
    for text in problems:
        typer.secho(text, fg=typer.colors.YELLOW, err=True)
    if problems and not skip_streams:
        raise typer.Exit(1)


@privacy_app.command("export")
def export(
    user: str = typer.Option(..., "--user", help=USER_HELP),
    tenant: str | None = typer.Option(None, "--tenant", help=TENANT_HELP),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="write to this file (default: standard output)"
    ),
) -> None:
    """Print a person's stored events and the dead letters about them, as JSON lines.

    Subject access: one object per line, "table" naming where it was stored;
    the export is recorded in the audit log.
    """
    from linkpulse.privacy.subject import line, subject_rows

    settings = get_settings()
    who = _person(user, tenant, settings)
    if output is not None and output.is_dir():
        msg = f"privacy export: --output {output} is a directory; give a file name"
        raise _fail(msg)
    counts = {"events": 0, "dead_letters": 0}
    try:
        sink = output.open("wb") if output is not None else sys.stdout.buffer
    except OSError as e:
        msg = f"privacy export: cannot write {output}: {e}"
        raise _fail(msg) from e
    try:
        with _progress() as progress, _connect(settings.database_url) as conn:
            task = progress.add_task("exporting", total=None)
            try:
                for row in subject_rows(conn, who):
                    sink.write(line(row))
                    counts[row["table"]] += 1
                    progress.advance(task)
            except (LinkpulseError, psycopg.Error) as e:
                msg = f"privacy export: the store failed: {e}"
                raise _fail(msg, 1) from e
    finally:
        if output is not None:
            sink.close()
        else:
            sink.flush()
    detail = f"{counts['events']} event(s), {counts['dead_letters']} dead letter(s)"
    _audit(settings.database_url, "privacy.export", who, sum(counts.values()), "ok", detail)
    summary = detail if sum(counts.values()) else f"0 rows: nothing stored for user {user!r}"
    err.print(summary + (f", written to {output}" if output else ""), highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``privacy`` group to the root app."""
    app.add_typer(privacy_app, name="privacy")
