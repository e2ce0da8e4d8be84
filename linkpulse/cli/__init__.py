"""The ``linkpulse`` command-line tool.

Each command group lives in its own module exposing ``register(app)``; this
module only assembles them, so adding a command never touches another's file.
"""

from __future__ import annotations

import importlib

import typer

from linkpulse import __version__
from linkpulse.config import get_settings
from linkpulse.errors import ConfigError
from linkpulse.logging import configure_logging

app = typer.Typer(
    name="linkpulse",
    help="Real-time analytics and anomaly alerting for a marketplace's event stream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Modules under linkpulse.cli that each add their commands to `app`.
COMMAND_MODULES = (
    "config",
    "stack",
    "schema",
    "serve",
    "simulate",
    "db",
    "run",
    "demo",
    "keys",
    "eval",
    "notifier",
    "alerts",
    "export",
    "privacy",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"linkpulse {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    """Validate the configuration once and set up logging before any command."""
    try:
        settings = get_settings()
    except ConfigError as e:
        typer.secho(f"configuration error: {e}", fg=typer.colors.RED, err=True)
        typer.secho(
            "fix the environment variable(s) named above; see docs/configuration.md",
            err=True,
        )
        raise typer.Exit(2) from e
    configure_logging(settings.log_level, settings.log_json)


for _name in COMMAND_MODULES:
    importlib.import_module(f"linkpulse.cli.{_name}").register(app)


def main() -> None:
    """Entry point of the ``linkpulse`` console script."""
    app()
