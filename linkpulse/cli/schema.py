"""CLI commands: ``linkpulse schema export`` and ``linkpulse schema validate``."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import typer

from linkpulse.schemas import event_json_schema
from linkpulse.schemas.filecheck import check_document

schema_app = typer.Typer(
    help="The event JSON Schema: export it for producers, or check a file of events against it.",
    no_args_is_help=True,
)


@schema_app.command("export")
def export(
    output: Path | None = typer.Option(
        None, "--output", "-o", help="write to this file instead of standard output"
    ),
) -> None:
    """Print the JSON Schema (2020-12) of one event of any type."""
    text = json.dumps(event_json_schema(), indent=2, sort_keys=False) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        typer.secho(f"cannot write {output}: {e.strerror}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from e
    typer.echo(f"wrote the event schema to {output}", err=True)


@schema_app.command("validate")
def validate(
    file: str = typer.Argument(
        ..., help="NDJSON (one event per line), a JSON array, or one JSON event; '-' for stdin"
    ),
    clock_check: bool = typer.Option(
        True,
        "--clock-check/--no-clock-check",
        help="reject events more than 5 minutes in the future (as ingestion does)",
    ),
) -> None:
    """Check every event in FILE; print each bad one as FILE:LINE: field: problem.

    Exits 0 when all events are valid, 1 when any is not, 2 when the file
    can't be read.
    """
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as e:
        typer.secho(f"cannot read {file}: {e.strerror}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from e
    report = check_document(data, now=datetime.now(UTC) if clock_check else None)
    name = "<stdin>" if file == "-" else file
    for f in report.findings:
        typer.echo(f"{name}:{f.line}: {f.field}: {f.problem}")
    summary = f"{name}: {report.total} event(s) ({report.format}): {report.valid} valid"
    if report.findings:
        typer.secho(f"{summary}, {len(report.findings)} invalid", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    if report.total == 0:
        typer.secho(f"{name}: no events found", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.secho(summary, fg=typer.colors.GREEN, err=True)


def register(app: typer.Typer) -> None:
    """Add the ``schema`` command group to the root app."""
    app.add_typer(schema_app, name="schema")
