"""Every ``linkpulse`` command answers ``--help``, and bad configuration names the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

from linkpulse.cli import app


def _command_paths(cmd: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [path]
    # typer ships its own click-compatible classes, so look for sub-commands by duck typing
    for name, sub in getattr(cmd, "commands", {}).items():
        paths.extend(_command_paths(sub, (*path, name)))
    return paths


ALL_COMMANDS = _command_paths(typer.main.get_command(app))


def test_the_tool_has_the_commands_the_issues_name() -> None:
    names = {" ".join(p) for p in ALL_COMMANDS}
    assert {"config show", "config check"} <= names


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "linkpulse")
def test_help_on_every_command(path: tuple[str, ...]) -> None:
    # In process (a subprocess per command cost ~2 s of imports each); the
    # console script itself is checked once below.
    result = CliRunner().invoke(app, [*path, "--help"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    # Every command explains itself: the help has more than the usage line.
    assert len(result.output.strip().splitlines()) > 3


def test_help_through_the_installed_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "linkpulse", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_bad_setting_is_named_with_the_problem() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "linkpulse", "config", "check"],
        capture_output=True,
        text=True,
        env={"LINKPULSE_REDIS_URL": "http://nope", "PATH": ""},
        timeout=60,
    )
    assert result.returncode == 2
    assert "LINKPULSE_REDIS_URL" in result.stderr
    assert "expected redis://" in result.stderr


def test_valid_configuration_is_reported_valid() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "linkpulse", "config", "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_the_configuration_doc_lists_every_setting_with_its_default() -> None:
    from pathlib import Path

    from linkpulse.cli.config import settings_rows
    from linkpulse.config import Settings

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    for var, _, default, _ in settings_rows(Settings(_env_file=None)):  # type: ignore[call-arg]
        assert f"| `{var}` | `{default}` |" in doc, f"{var} missing or stale in the doc"


@pytest.mark.integration
def test_the_dataflow_refuses_to_start_saying_what_is_missing(pg_dsn: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = {**__import__("os").environ, "LINKPULSE_METRICS_PORT": "0"}
    cmd = [sys.executable, "-m", "linkpulse", "run", "dataflow", "--recovery-dir", str(tmp_path)]
    no_nats = subprocess.run(
        cmd,
        env={**base, "LINKPULSE_NATS_URL": "nats://127.0.0.1:1", "LINKPULSE_DATABASE_URL": pg_dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert no_nats.returncode == 1
    assert "NATS at nats://127.0.0.1:1" in no_nats.stderr
    assert "LINKPULSE_NATS_URL" in no_nats.stderr
    # an empty database: the store was never migrated
    unmigrated = subprocess.run(
        cmd, env={**base, "LINKPULSE_DATABASE_URL": pg_dsn}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert unmigrated.returncode == 1
    assert "run `linkpulse db migrate`" in unmigrated.stderr


def test_version_prints_the_package_version() -> None:
    from linkpulse import __version__

    result = subprocess.run(
        [sys.executable, "-m", "linkpulse", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"linkpulse {__version__}"
