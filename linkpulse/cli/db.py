"""CLI commands: ``linkpulse db migrate | status | maintain | backfill | roles |
restore-archive``."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import typer
from rich import filesize
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

# doctor's and up's --json conventions (one document on stdout, same help text).
from linkpulse.cli.console import make_console
from linkpulse.cli.stack import JSON_HELP
from linkpulse.cli.stack import _fail as fail_json
from linkpulse.cli.stack import _print_json as print_json
from linkpulse.config import get_settings
from linkpulse.errors import LinkpulseError

db_app = typer.Typer(
    help="The time-series store: migrations, maintenance, backfill, roles.", no_args_is_help=True
)
console = make_console()  # tables stay one row per line when piped
_DAY_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]


def _fail(e: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {e}")
    return typer.Exit(1)


@db_app.command("migrate")
def migrate_cmd(
    directory: Path | None = typer.Option(None, "--dir", help="migrations folder (tests)"),
    tier: str | None = typer.Option(None, help="force a lower tier (default: setting)"),
    with_roles: bool = typer.Option(
        True,
        "--roles/--no-roles",
        help="also set up the analyst roles the API's queries and SQL endpoint read through "
        "(`linkpulse db roles` without logins; needs CREATEROLE)",
    ),
) -> None:
    """Apply pending migrations (safe to run from several processes at once)."""
    from linkpulse.store import roles
    from linkpulse.store.archive import archiver_of
    from linkpulse.store.migrate import migrate
    from linkpulse.store.tiers import apply_policies

    s = get_settings()
    try:
        done = migrate(s.database_url, directory=directory, tier=tier or s.store_tier)
        with psycopg.connect(s.database_url, autocommit=True) as conn:
            from linkpulse.store.migrate import stored_tier

            t = stored_tier(conn)
            if t is not None:
                apply_policies(
                    conn,
                    t,
                    raw_days=s.store_raw_retention_days,
                    rollup_days=s.store_rollup_retention_days,
                    compress_after_days=s.store_compress_after_days,
                    # archived tables: chunks dropped by `db maintain` once archived, not by policy
                    archived=archiver.tables if (archiver := archiver_of(s)) else (),
                )
            if with_roles:
                roles.setup(conn, analyst_role=s.analyst_role, sql_login=s.analyst_sql_login)
    except (LinkpulseError, psycopg.Error) as e:
        raise _fail(e) from e
    for m in done:
        console.print(f"applied {m.version:04d}_{m.name}")
    console.print(f"{len(done)} migration(s) applied; tier {t.value if t else '?'}")


@db_app.command("status")
def status_cmd(
    directory: Path | None = typer.Option(None, "--dir", help="migrations folder (tests)"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List migrations (applied or pending, checksum, applied_at), the tier and table sizes."""
    from linkpulse.store.capabilities import server_tier
    from linkpulse.store.migrate import status, stored_tier, table_sizes

    s = get_settings()
    try:
        with psycopg.connect(s.database_url, autocommit=True, connect_timeout=10) as conn:
            rows = status(conn, directory)
            stored, best = stored_tier(conn), server_tier(conn)
            tables = table_sizes(conn)
    except (LinkpulseError, psycopg.Error) as e:
        if as_json:
            # One document on stdout, the message on stderr, exit 1 (as doctor --json).
            hint = "is LINKPULSE_DATABASE_URL right? (`linkpulse doctor` checks it)"
            fail_json(" ".join(str(e).split()), hint, as_json=True)
        raise _fail(e) from e
    if as_json:
        print_json(
            {
                "ok": True,
                "tier": stored.value if stored else None,
                "server_tier": best.value,
                "migrations": [
                    {
                        "version": r.version,
                        "name": r.name,
                        "state": r.state,
                        "checksum": r.checksum,
                        "applied_at": r.applied_at,
                    }
                    for r in rows
                ],
                "applied": sum(1 for r in rows if r.applied_at),
                "pending": sum(1 for r in rows if not r.applied_at),
                "changed": sum(1 for r in rows if r.changed),
                "tables": [asdict(t) for t in tables],
            }
        )
        return
    table = Table("version", "name", "state", "checksum", "applied_at")
    for r in rows:
        table.add_row(
            f"{r.version:04d}",
            r.name,
            r.state,
            r.checksum[:12],
            r.applied_at.isoformat() if r.applied_at else "",
        )
    console.print(table)
    if tables:
        sizes = Table("table", "kind", "parts", "size")
        for t in tables:
            sizes.add_row(t.name, t.kind, str(t.parts or ""), filesize.decimal(t.bytes))
        console.print(sizes)
    console.print(
        f"tier in use: {stored.value if stored else '(not migrated)'}; server offers: {best.value}"
    )


@db_app.command("maintain")
def maintain_cmd(
    loop: bool = typer.Option(False, help="keep running every LINKPULSE_STORE_MAINTAIN_INTERVAL_S"),
) -> None:
    """Refresh rollups, make partitions ahead and apply retention (once, or in a loop)."""
    from linkpulse.store.maintain import run_forever, run_once

    s = get_settings()
    try:
        if loop:
            run_forever(s.database_url, s)
            return
        r = run_once(s.database_url, s)
    except (LinkpulseError, psycopg.Error) as e:
        raise _fail(e) from e
    refreshed = r.refresh.buckets if r.refresh else {}
    console.print(
        f"tier {r.tier}: refreshed {refreshed}, {r.partitions_made} partition(s) made, "
        f"{r.chunks_compressed} chunk(s) compressed, "
        f"{len(r.retention.dropped)} partition(s)/chunk(s) dropped, "
        f"{r.retention.rollup_rows_deleted} rollup row(s) deleted "
        f"in {r.seconds:.2f}s"
    )


@db_app.command("backfill")
def backfill_cmd(
    file: Path = typer.Argument(..., help=".ndjson/.jsonl or .parquet file of events"),
    batch_size: int = typer.Option(5000, min=1, max=100_000),
) -> None:
    """Load events from a file through the writer; invalid lines go to dead_letters."""
    from linkpulse.privacy import pseudonymiser_for
    from linkpulse.query.watermarks import WatermarkTarget
    from linkpulse.store.backfill import Invalid, backfill
    from linkpulse.store.writer import EventWriter

    s = get_settings()
    shown = 0
    watermarks = WatermarkTarget.from_settings(s).bumper()  # what it loads, for the query cache

    def show(bad: Invalid) -> None:
        nonlocal shown
        shown += 1
        if shown <= 50:
            progress.console.print(f"[yellow]line {bad.line}[/yellow]: {bad.field}: {bad.problem}")

    try:
        with (
            EventWriter(s.database_url, batch_size=batch_size, watermarks=watermarks) as writer,
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeRemainingColumn(),
                console=console,
            ) as progress,
        ):
            task = progress.add_task(f"loading {file.name}", total=None)
            report = backfill(
                file,
                writer,
                batch_size=batch_size,
                raw_days=s.store_raw_retention_days,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
                on_invalid=show,
                pseudonymiser=pseudonymiser_for(s),  # PII never stored raw, as at ingest
            )
    except (LinkpulseError, ValueError, psycopg.Error) as e:
        raise _fail(e) from e
    if shown > 50:
        console.print(f"... and {shown - 50} more invalid line(s) (see dead_letters)")
    console.print(
        f"read {report.read}, stored {report.inserted} new, "
        f"{len(report.invalid)} invalid (written to dead_letters)"
    )
    if report.too_old and report.cutoff is not None:
        console.print(
            f"[yellow]{report.too_old} event(s) before {report.cutoff.isoformat()} "
            "not loaded[/yellow]: older than the raw horizon (LINKPULSE_STORE_RAW_RETENTION_DAYS="
            f"{s.store_raw_retention_days}, less a day), so retention would drop them; "
            "raise it before the load to keep them"
        )


@db_app.command("roles")
def roles_cmd(
    login: str | None = typer.Option(None, help="also make this analyst psql login"),
    tenant: str | None = typer.Option(None, help="the login's tenant"),
    seller: str | None = typer.Option(None, help="the login's seller (seller-scoped)"),
    password: str | None = typer.Option(None, help="the login's password"),
) -> None:
    """Create the analyst role and SQL endpoint login, grant the views (idempotent)."""
    from linkpulse.store import roles

    s = get_settings()
    if login and not tenant:
        raise _fail(ValueError("--tenant is required with --login"))
    try:
        with psycopg.connect(s.database_url, autocommit=True) as conn:
            roles.setup(conn, analyst_role=s.analyst_role, sql_login=s.analyst_sql_login)
            if login and tenant:
                roles.create_analyst_login(
                    conn,
                    login,
                    analyst_role=s.analyst_role,
                    tenant=tenant,
                    seller_id=seller,
                    password=password,
                )
    except (LinkpulseError, ValueError, psycopg.Error) as e:
        raise _fail(e) from e
    console.print(
        f"role {s.analyst_role} and login {s.analyst_sql_login} ready"
        + (f"; login {login} scoped to {tenant}/{seller or '*'}" if login else "")
    )


@db_app.command("restore-archive")
def restore_archive_cmd(
    table: str = typer.Option("events", help="the archived table to load back"),
    since: datetime | None = typer.Option(
        None, "--from", formats=_DAY_FORMATS, help="only pieces ending after this (UTC)"
    ),
    until: datetime | None = typer.Option(
        None, "--to", formats=_DAY_FORMATS, help="only pieces starting before this (UTC)"
    ),
    target: str | None = typer.Option(
        None, help="the archive's location (default: LINKPULSE_ARCHIVE_TARGET)"
    ),
) -> None:
    """Load archived partitions/chunks back from Parquet (idempotent: the table's key
    de-duplicates). The next `db maintain` archives and drops them again if they are
    still past retention: raise LINKPULSE_STORE_RAW_RETENTION_DAYS to keep them."""
    from linkpulse.store.archive import ArchiveTarget, restore
    from linkpulse.store.migrate import stored_tier

    s = get_settings()
    where = target or s.archive_target
    if not where.strip():
        raise _fail(ValueError("no archive: pass --target or set LINKPULSE_ARCHIVE_TARGET"))
    start, end = (t.replace(tzinfo=t.tzinfo or UTC) if t else None for t in (since, until))
    if start and end and end <= start:
        raise _fail(ValueError("--to must be after --from"))
    try:
        with (
            psycopg.connect(s.database_url, autocommit=True) as conn,
            Progress(
                TextColumn("restore {task.completed:,.0f} rows"),
                BarColumn(),
                TimeRemainingColumn(),
                console=console,
            ) as bar,
        ):
            tier = stored_tier(conn)
            if tier is None:
                raise _fail(ValueError("the store has no schema: run `linkpulse db migrate`"))
            task = bar.add_task("restore", total=None)
            report = restore(
                conn,
                ArchiveTarget(where),
                table,
                tier,
                start=start,
                end=end,
                progress=lambda n: bar.advance(task, n),
            )
    except (LinkpulseError, OSError, psycopg.Error) as e:
        raise _fail(e) from e
    console.print(
        f"{len(report.pieces)} piece(s) of {table} read: {report.rows_read:,} row(s), "
        f"{report.rows_inserted:,} inserted, {report.rows_read - report.rows_inserted:,} "
        "already present"
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(db_app, name="db")
