"""CLI commands: ``linkpulse alerts check FILE...`` and ``linkpulse alerts test FILE...``.

``check`` validates rule files (or directories of them) and prints every
problem as ``file:line: field: message``; exit 1 if there is any. ``test``
runs rule unit tests written in YAML (``linkpulse.alerts.ruletest``, like
``promtool test rules``); exit 1 on any failure.
"""

from __future__ import annotations

from pathlib import Path

import typer

from linkpulse.alerts.rules import check_rule_files, rule_files
from linkpulse.alerts.ruletest import run_rule_tests

alerts_app = typer.Typer(
    help="Alert rules: check files, run rule unit tests.", no_args_is_help=True
)


@alerts_app.command("check")
def check(
    files: list[Path] = typer.Argument(
        ..., help="Rule files, or directories of *.yaml rule files."
    ),
) -> None:
    """Validate rule files; print every problem with its file, line and field."""
    missing = [f for f in files if not f.exists()]
    for f in missing:
        typer.secho(f"{f}:0: (file): no such file or directory", fg=typer.colors.RED, err=True)
    rules, problems = check_rule_files([f for f in files if f.exists()])
    for p in problems:
        typer.secho(str(p), fg=typer.colors.RED, err=True)
    if problems or missing:
        n = len(problems) + len(missing)
        typer.secho(f"{n} problem{'s' if n != 1 else ''} found", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    n_files = len(rule_files([f for f in files if f.exists()]))
    typer.echo(f"ok: {len(rules.rules)} rules in {n_files} file{'s' if n_files != 1 else ''}")


@alerts_app.command("test")
def run_tests(
    files: list[Path] = typer.Argument(..., help="Rule test files (YAML: rule_files, tests)."),
) -> None:
    """Run rule unit tests: input series and scores, expected alerts at given times."""
    failed = False
    for f in files:
        result = run_rule_tests(f)
        for p in result.problems:
            typer.secho(str(p), fg=typer.colors.RED, err=True)
        for failure in result.failures:
            typer.secho(f"FAILED {f}: {failure}", fg=typer.colors.RED, err=True)
        status = "ok" if result.ok else "FAILED"
        typer.echo(f"{status}: {f}: {result.passed} passed, {len(result.failures)} failed")
        failed = failed or not result.ok
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``alerts`` to the root app."""
    app.add_typer(alerts_app, name="alerts")
