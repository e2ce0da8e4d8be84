"""CLI commands: ``linkpulse config`` shows every setting, its variable and value."""

from __future__ import annotations

import re

import typer
from rich.console import Console
from rich.table import Table

from linkpulse.config import Settings, get_settings

config_app = typer.Typer(help="Inspect the configuration (LINKPULSE_* environment variables).")

_PASSWORD = re.compile(r"(://[^:/@]+:)[^@]+@")


def mask_secrets(value: str) -> str:
    """Hide the password part of a URL.

    >>> mask_secrets("postgresql://app:s3cret@db:5432/x")
    'postgresql://app:***@db:5432/x'
    """
    return _PASSWORD.sub(r"\1***@", value)


def settings_rows(settings: Settings) -> list[tuple[str, str, str, str]]:
    """(variable, current value, default, description) for every setting."""
    rows = []
    for name, field in Settings.model_fields.items():
        rows.append(
            (
                f"LINKPULSE_{name.upper()}",
                mask_secrets(str(getattr(settings, name))),
                mask_secrets(str(field.default)),
                field.description or "",
            )
        )
    return rows


@config_app.command("show")
def show(
    markdown: bool = typer.Option(False, "--markdown", help="print a Markdown table (for docs)"),
) -> None:
    """Print every setting: its environment variable, current value, default and meaning."""
    rows = settings_rows(get_settings())
    if markdown:
        typer.echo("| variable | default | meaning |\n| --- | --- | --- |")
        for var, _, default, desc in rows:
            typer.echo(f"| `{var}` | `{default}` | {desc} |")
        return
    table = Table(title="linkpulse configuration")
    for col in ("variable", "value", "default", "meaning"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@config_app.command("check")
def check() -> None:
    """Validate the environment and exit 0, or name each bad variable and exit 2."""
    get_settings()  # the root callback already validated; reaching here means it is valid
    typer.echo("configuration is valid")


def register(app: typer.Typer) -> None:
    """Add the ``config`` group to the root app."""
    app.add_typer(config_app, name="config")
