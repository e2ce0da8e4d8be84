"""``linkpulse export``: a SQL result as CSV, JSON (lines) or Parquet, with a progress bar.

It runs locally, not through the API: it connects as the SQL endpoint's login
(``LINKPULSE_ANALYST_SQL_LOGIN``, like the API's ``AnalystDb``), takes the
scope secret with the owner's DSN (``LINKPULSE_DATABASE_URL``), and runs the
statement in the same scoped, read-only analyst session the API's exports use,
through the same stream (``linkpulse.exports.run``). Why locally: whoever holds
the owner's DSN can read everything anyway, so an API key would add a server
and a hop without adding any protection; the scope still holds (``--tenant``,
``--seller``) and the rows still stream straight to the file. The export is
watermarked as ``cli:<user>`` and written to the audit log.

    linkpulse export "SELECT * FROM analyst.events WHERE event_time >= %s" \\
        --param 2026-11-01 --tenant acme --format parquet --out events.parquet
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import psycopg
import typer
from rich import filesize
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from linkpulse.api.analyst_db import login_conninfo
from linkpulse.api.audit import AuditEntry, insert_entries
from linkpulse.cli.console import make_console
from linkpulse.config import Settings, get_settings
from linkpulse.exports.jobs import new_job_id
from linkpulse.exports.request import FORMATS
from linkpulse.exports.run import ExportInputError, ExportResult, check_statement, stream_export
from linkpulse.exports.watermark import make_watermark
from linkpulse.store import roles

__all__ = ["export_cmd", "register"]

console = make_console(stderr=True)  # stdout may be the export itself (--out -)
SESSION_TTL_S = 24 * 3600


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name (some containers)
        return "cli:unknown"


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


async def _run(
    settings: Settings,
    statement: str,
    params: list[str] | None,
    *,
    fmt: str,
    tenant: str,
    seller: str | None,
    out: BinaryIO,
    show_progress: bool,
) -> ExportResult:
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True, connect_timeout=10
    ) as owner:
        cur = await owner.execute("SELECT secret FROM lp_private.scope_secret")
        row = await cur.fetchone()
        if row is None:
            raise ExportInputError(
                field="store", detail="the store has no scope secret: run `linkpulse db migrate`"
            )
        secret = str(row[0])
        login = login_conninfo(settings.database_url, settings.analyst_sql_login)
        async with await psycopg.AsyncConnection.connect(
            login, autocommit=True, connect_timeout=10
        ) as conn:
            export_id = new_job_id()
            source = {"sql": statement, "params": params}
            who = _who()
            watermark = make_watermark(
                export_id=export_id,
                principal=who,
                role="owner",
                tenant=tenant,
                seller=seller,
                source=source,
            )
            async with roles.analyst_session_async(
                conn,
                analyst_role=settings.analyst_role,
                secret=secret,
                tenant=tenant,
                seller_id=seller,
                ttl_s=SESSION_TTL_S,
            ) as scoped:
                estimate = await check_statement(scoped, statement, params)
                with Progress(
                    TextColumn("[bold]export[/bold] {task.completed:,.0f} rows"),
                    BarColumn(),
                    TextColumn("{task.fields[size]}"),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    console=console,
                    disable=not show_progress,
                    transient=False,
                ) as bar:
                    task = bar.add_task("export", total=estimate, size="")

                    async def sink(chunk: bytes) -> None:
                        out.write(chunk)

                    async def progress(rows: int, nbytes: int) -> None:
                        total = max(estimate or 0, rows) or None
                        bar.update(task, completed=rows, total=total, size=filesize.decimal(nbytes))

                    result = await stream_export(
                        scoped,
                        statement,
                        params,
                        fmt=fmt,
                        watermark=watermark,
                        sink=sink,
                        progress=progress,
                    )
        entry = AuditEntry(
            at=datetime.now(UTC),
            principal=who,
            role=None,
            tenant=tenant,
            seller=seller,
            action="export.run",
            resource=f"export {export_id}",
            scope={"format": fmt, "tenant": tenant, "seller": seller or ""},
            items=result.rows,
            detail=statement[:2000],
        )
        await insert_entries(owner, [entry])
    return result


def export_cmd(
    sql: str | None = typer.Argument(None, help="the SELECT to export (or --file)"),
    file: Path | None = typer.Option(
        None, "--file", "-f", exists=True, dir_okay=False, help="read the SELECT from this file"
    ),
    fmt: str = typer.Option(
        "parquet", "--format", help=f"output format: {', '.join(FORMATS)}", case_sensitive=False
    ),
    out: str = typer.Option(..., "--out", "-o", help="the file to write ('-': stdout)"),
    tenant: str = typer.Option(..., help="the tenant whose data is exported"),
    seller: str | None = typer.Option(None, help="only this seller's rows"),
    param: list[str] = typer.Option(
        [], "--param", "-p", help="a value for the next %s placeholder (repeat, in order)"
    ),
) -> None:
    """Export a SQL result over the analyst views, scoped to --tenant (and --seller)."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        msg = f"--format: unknown format {fmt!r}; use one of {', '.join(FORMATS)}"
        raise _fail(msg, 2)
    if (sql is None) == (file is None):
        msg = "give the SELECT as an argument or with --file, not both"
        raise _fail(msg, 2)
    statement = sql if sql is not None else file.read_text() if file is not None else ""
    if not statement.strip():
        msg = "the statement is empty"
        raise _fail(msg, 2)
    settings = get_settings()
    to_stdout = out == "-"
    path = Path(out)
    part = path.with_name(path.name + ".part")
    try:
        handle = sys.stdout.buffer if to_stdout else part.open("wb")
        try:
            result = asyncio.run(
                _run(
                    settings,
                    statement,
                    param or None,
                    fmt=fmt,
                    tenant=tenant,
                    seller=seller,
                    out=handle,
                    show_progress=not to_stdout or console.is_terminal,
                )
            )
        finally:
            if not to_stdout:
                handle.close()
    except ExportInputError as e:
        part.unlink(missing_ok=True)
        msg = f"{e.field}: {e.detail}"
        raise _fail(msg) from e
    except (psycopg.Error, OSError) as e:
        part.unlink(missing_ok=True)
        msg = f"export failed: {' '.join(str(e).split())}"
        raise _fail(msg) from e
    if not to_stdout:
        part.replace(path)
    where = "stdout" if to_stdout else str(path)
    console.print(f"exported {result.rows:,} rows ({result.bytes:,} bytes) to {where}")


def register(app: typer.Typer) -> None:
    """Add ``export`` to the root app."""
    app.command("export")(export_cmd)
