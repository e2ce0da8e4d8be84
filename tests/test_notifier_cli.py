"""The notifier's CLI: ``run notifier --check`` on the shipped config and a bad one, and
``silences add/list/expire`` against a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from linkpulse.store.migrate import migrate

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "notifier" / "notifier.yaml"
SECRETS = {"PD_ROUTING_KEY": "k", "SLACK_WEBHOOK_URL": "http://127.0.0.1:9/s", "HOOK_SECRET": "s"}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "linkpulse", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_shipped_config_checks_and_a_bad_one_names_its_fields(tmp_path: Path) -> None:
    ok = _cli(SECRETS, "run", "notifier", "--config", str(EXAMPLE), "--check")
    assert ok.returncode == 0, ok.stderr
    assert "3 receivers" in ok.stdout
    unset = _cli({}, "run", "notifier", "--config", str(EXAMPLE), "--check")
    assert unset.returncode == 2 and "PD_ROUTING_KEY is not set" in unset.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("route: {receiver: pd, group_wait: soon}\nreceivers: [{name: pd, fax: {}}]\n")
    got = _cli({}, "run", "notifier", "--config", str(bad), "--check")
    assert got.returncode == 2
    assert "route.group_wait" in got.stderr and "receivers[0]" in got.stderr


@pytest.mark.integration
def test_silences_add_list_expire(pg_dsn: str) -> None:
    migrate(pg_dsn)
    env = {"LINKPULSE_DATABASE_URL": pg_dsn}
    backwards = _cli(
        env,
        "silences",
        "add",
        'severity="warning"',
        "--start",
        "2026-11-24T10:00:00",
        "--end",
        "2026-11-24T09:00:00",
        "-m",
        "oops",
    )
    assert backwards.returncode == 2 and "ends_at" in backwards.stderr
    bad = _cli(env, "silences", "add", "severity", "-m", "x")
    assert bad.returncode == 2 and "matchers[0]" in bad.stderr
    made = _cli(
        env,
        "silences",
        "add",
        'severity="warning"',
        "--for",
        "2h",
        "-m",
        "deploy",
        "--tenant",
        "acme",
    )
    assert made.returncode == 0, made.stderr
    sid = made.stdout.strip()
    listed = json.loads(_cli(env, "silences", "list", "--json").stdout)
    assert [s["id"] for s in listed] == [sid]
    assert 'tenant="acme"' in listed[0]["matchers"]
    assert _cli(env, "silences", "expire", sid).returncode == 0
    assert json.loads(_cli(env, "silences", "list", "--json").stdout) == []
    assert len(json.loads(_cli(env, "silences", "list", "--all", "--json").stdout)) == 1
    missing = _cli(env, "silences", "expire", "nope")
    assert missing.returncode == 1 and "no silence" in missing.stderr
