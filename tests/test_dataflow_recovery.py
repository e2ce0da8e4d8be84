"""Crash recovery: SIGKILL the running flow at random points, restart, compare to a clean run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from nats.aio.client import Client

from linkpulse.config import Settings
from linkpulse.store.migrate import migrate
from tests.fix_db import admin_connect, dsn_with_dbname
from tests.test_dataflow_helpers import build_event_set, publish_set

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def url_dsn(dsn: str) -> str:
    """A key=value DSN as the postgresql:// URL the settings accept."""
    p = psycopg.conninfo.conninfo_to_dict(dsn)
    user = p.get("user", "postgres")
    return f"postgresql://{user}@{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}/{p['dbname']}"


def flow_command(
    settings: Settings, dsn: str, recovery: Path, stop_at: int, *extra: str
) -> tuple[list[str], dict[str, str]]:
    env = {
        **os.environ,
        "LINKPULSE_DATABASE_URL": url_dsn(dsn),
        "LINKPULSE_NATS_URL": settings.nats_url,
        "LINKPULSE_STREAM_NAME": settings.stream_name,
        "LINKPULSE_SUBJECT_PREFIX": settings.subject_prefix,
        "LINKPULSE_METRICS_PORT": "0",
        "LINKPULSE_LOG_LEVEL": "WARNING",
    }
    cmd = [
        sys.executable,
        "-m",
        "linkpulse",
        "run",
        "dataflow",
        "--recovery-dir",
        str(recovery),
        "--snapshot-interval",
        "0.3",
        "--stop-at-seq",
        str(stop_at),
        "--redis-prefix",
        f"lpt:{settings.subject_prefix}:",
        *extra,
    ]
    return cmd, env


def run_to_end(cmd: list[str], env: dict[str, str], timeout: float = 120) -> None:
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


def store_state(dsn: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]], object]:
    with psycopg.connect(dsn) as conn:
        events = conn.execute(
            "SELECT tenant, event_id, event_time FROM events ORDER BY 2"
        ).fetchall()
        windows = conn.execute(
            'SELECT tenant, metric, dims_key, "window", window_start, value, count, sum, min, max,'
            ' mean, "distinct", p50, p95, p99, revision, final FROM metric_windows'
            " ORDER BY 1, 2, 3, 4, 5"
        ).fetchall()
        sums = conn.execute(
            "SELECT count(*), sum(amount) FROM events UNION ALL"
            " SELECT count(*), NULL FROM dead_letters"
        ).fetchall()
    return events, windows, sums


@pytest.fixture
def second_dsn() -> object:
    """A second fresh database for the crashed run."""
    name = f"lp_test_crash_{os.getpid()}_{random.randrange(10**9)}"
    with admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn_with_dbname(
            os.environ.get(
                "LINKPULSE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
            ),
            name,
        )
    finally:
        with admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_sigkill_three_times_then_resume_equals_one_clean_run(
    nc: Client, nats_settings: Settings, pg_dsn: str, second_dsn: str, tmp_path: Path
) -> None:
    migrate(pg_dsn)
    migrate(second_dsn)
    events = build_event_set(nats_settings.subject_prefix, n=30_000, seed=11, late=20)
    last = await publish_set(nc, nats_settings, events)

    clean_cmd, clean_env = flow_command(nats_settings, pg_dsn, tmp_path / "clean", last)
    run_to_end(clean_cmd, clean_env)

    # Kill the flow when the store has seen random fractions of the events, so
    # each SIGKILL lands mid-stream (between snapshots, mid-write, ...).
    cmd, env = flow_command(nats_settings, second_dsn, tmp_path / "crashy", last)
    # Seeded: LINKPULSE_TEST_SEED replays a run; the seed is printed (shown on failure).
    seed = int(os.environ.get("LINKPULSE_TEST_SEED", random.SystemRandom().randrange(2**32)))
    print(f"kill-point seed {seed} (replay with LINKPULSE_TEST_SEED={seed})")
    rng = random.Random(seed)
    thresholds = sorted(rng.uniform(0.1, 0.85) * len(events.valid) for _ in range(3))
    kills = 0
    with psycopg.connect(second_dsn, autocommit=True) as conn:
        for threshold in thresholds:
            proc = subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                (stored,) = conn.execute("SELECT count(*) FROM events").fetchone()  # type: ignore[misc]
                if stored >= threshold:
                    time.sleep(rng.uniform(0, 0.2))
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "the flow ended before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
    assert kills == 3
    run_to_end(cmd, env)

    clean = store_state(pg_dsn)
    crashed = store_state(second_dsn)
    assert len(clean[0]) == len(events.valid)
    assert crashed[0] == clean[0]  # events: exactly once
    assert crashed[2] == clean[2]  # counts and sums, dead letters included
    only_crashed = sorted(set(crashed[1]) - set(clean[1]))
    only_clean = sorted(set(clean[1]) - set(crashed[1]))
    assert not only_crashed and not only_clean, (only_crashed[:3], only_clean[:3])
    assert crashed[1] == clean[1]  # every window, value, revision and final flag
