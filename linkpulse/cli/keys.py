"""CLI commands: ``linkpulse keys create|list|revoke``, the API keys of the database.

``create`` prints the key once (only its hash is stored); every create and
revoke is written to the audit log as done by ``cli:<os user>``.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from datetime import UTC, datetime, timedelta

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from linkpulse.api.audit import AuditEntry, insert_entries
from linkpulse.api.auth.keys import KeyRecord, KeyStore
from linkpulse.api.auth.roles import parse_role
from linkpulse.config import get_settings
from linkpulse.operators.windows import parse_duration

keys_app = typer.Typer(help="API keys: create (printed once), list, revoke.", no_args_is_help=True)
console = Console()


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name (some containers)
        return "cli:unknown"


def _audit_entry(action: str, record: KeyRecord) -> AuditEntry:
    return AuditEntry(
        at=datetime.now(UTC),
        principal=_who(),
        role=None,
        tenant=record.tenant,
        seller=record.seller,
        action=action,
        resource=record.key_id,
        scope={"role": record.role, "tenant": record.tenant, "seller": record.seller},
        status=None,
        outcome="ok",
    )


async def _connect() -> psycopg.AsyncConnection:
    dsn = get_settings().database_url
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        msg = f"cannot reach the database at {dsn}: {e}; is it running (linkpulse up)?"
        raise _fail(msg, 1) from e


async def _create(
    role: str, tenant: str, seller: str | None, expires: str | None, name: str
) -> tuple[str, KeyRecord]:
    try:
        parsed_role = parse_role(role)
        expires_at = (
            datetime.now(UTC) + timedelta(seconds=parse_duration(expires)) if expires else None
        )
    except ValueError as e:
        msg = f"keys create: {e}"
        raise _fail(msg) from e
    async with await _connect() as conn:
        try:
            key, record = await KeyStore(conn).create(
                role=parsed_role, tenant=tenant, seller=seller, name=name, expires_at=expires_at
            )
        except ValueError as e:
            msg = f"keys create: {e}"
            raise _fail(msg) from e
        except psycopg.errors.UndefinedTable as e:
            msg = "the api_keys table is missing: run `linkpulse db migrate` first"
            raise _fail(msg, 1) from e
        await insert_entries(conn, [_audit_entry("key.create", record)])
    return key.secret, record


@keys_app.command("create")
def create(
    role: str = typer.Option(..., help="admin, operator, analyst, viewer, ingest or seller"),
    tenant: str = typer.Option(..., help="the tenant the key belongs to"),
    seller: str | None = typer.Option(None, help="for --role seller: the one seller it sees"),
    expires: str | None = typer.Option(None, help="lifetime, e.g. 12h, 30d (default: none)"),
    name: str = typer.Option("", help="a label for `keys list`"),
    quiet: bool = typer.Option(False, "--quiet", help="print only the key (for scripts)"),
) -> None:
    """Create a key and print it once: store it now, it cannot be shown again."""
    secret, record = asyncio.run(_create(role, tenant, seller, expires, name))
    if quiet:
        typer.echo(secret)
        return
    typer.echo(secret)
    scope = f"tenant {record.tenant}" + (f", seller {record.seller}" if record.seller else "")
    until = f", expires {record.expires_at:%Y-%m-%d %H:%M} UTC" if record.expires_at else ""
    typer.secho(
        f"key {record.key_id}: role {record.role}, {scope}{until}. It is shown only now.",
        err=True,
    )


@keys_app.command("list")
def list_keys(tenant: str | None = typer.Option(None, help="only this tenant's keys")) -> None:
    """List keys (ids and scope, never the keys themselves); tab-separated when piped."""

    async def run() -> list[KeyRecord]:
        async with await _connect() as conn:
            return await KeyStore(conn).list(tenant)

    records = asyncio.run(run())
    now = datetime.now(UTC)
    header = ("id", "name", "role", "tenant", "seller", "created", "expires", "state")
    rows = [
        (
            r.key_id,
            r.name,
            r.role,
            r.tenant,
            r.seller or "",
            f"{r.created_at:%Y-%m-%d %H:%M}",
            f"{r.expires_at:%Y-%m-%d %H:%M}" if r.expires_at else "",
            r.state(now),
        )
        for r in records
    ]
    if not sys.stdout.isatty():  # scripts read whole fields, never a squeezed table
        for row in (header, *rows):
            typer.echo("\t".join(row))
        return
    table = Table(*header)
    for row in rows:
        table.add_row(*row)
    console.print(table)


@keys_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="the key's id (lp_xxxxxxxx), see `keys list`"),
) -> None:
    """Revoke a key: refused from then on, its open streams closed within 30 s."""

    async def run() -> KeyRecord | None:
        async with await _connect() as conn:
            record = await KeyStore(conn).revoke(key_id)
            if record is not None:
                await insert_entries(conn, [_audit_entry("key.revoke", record)])
            return record

    record = asyncio.run(run())
    if record is None:
        msg = f"keys revoke: no key {key_id!r} (see `linkpulse keys list`)"
        raise _fail(msg, 1)
    typer.echo(f"revoked {record.key_id} at {record.revoked_at:%Y-%m-%d %H:%M:%S} UTC")


def register(app: typer.Typer) -> None:
    """Add ``keys`` to the root app."""
    app.add_typer(keys_app, name="keys")
