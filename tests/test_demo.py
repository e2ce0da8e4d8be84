"""The README's main job, end to end on the real services: ``linkpulse demo``.

simulator → NATS JetStream → dataflow → store/Redis/NATS, checked by the demo
itself (every published event stored once, closed windows equal a GROUP BY)
and again here from the database.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from linkpulse.cli.live_panel import tile_rows
from linkpulse.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_the_whole_pipeline(
    pg_dsn: str, nats_settings: Settings, nc: object, redis_client: object, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "LINKPULSE_DATABASE_URL": pg_dsn,
        "LINKPULSE_NATS_URL": nats_settings.nats_url,
        "LINKPULSE_STREAM_NAME": nats_settings.stream_name,
        "LINKPULSE_SUBJECT_PREFIX": nats_settings.subject_prefix,
        "LINKPULSE_STATE_DIR": str(tmp_path / "state"),
        "LINKPULSE_METRICS_PORT": "0",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "linkpulse",
            "demo",
            "--no-stack",
            "--duration",
            "12s",
            "--rate",
            "150",
            "--drain",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "every published event was stored exactly once; windows match" in done.stdout
    # Piped, the demo shows its progress as plain lines while it runs (not a final panel only).
    progress = [line for line in done.stdout.splitlines() if line.startswith("demo ")]
    assert len(progress) >= 2, done.stdout[-3000:]
    assert "stored" in progress[-1]
    with psycopg.connect(pg_dsn) as conn:
        stored = conn.execute("select count(*), count(distinct (tenant, event_id)) from events")
        total, distinct = stored.fetchone() or (0, 0)
        assert total == distinct > 500  # 12 s at 150/s, stored once each
        finals = conn.execute(
            "select count(*) from metric_windows where \"window\" = '1m' and final"
        ).fetchone()
        assert finals and finals[0] > 0
    labels = (tmp_path / "state" / "labels.json").read_text()
    assert "failure_spike" in labels


def test_tiles_pick_the_newest_tenant_wide_value() -> None:
    from datetime import UTC, datetime, timedelta

    from linkpulse.schemas.outputs import MetricWindow

    t = datetime(2026, 11, 24, 10, tzinfo=UTC)

    def w(metric: str, value: float, start: datetime, dims: str = "", rev: int = 0) -> MetricWindow:
        return MetricWindow(
            metric=metric,
            tenant="acme",
            dims_key=dims,
            dimensions={},
            window="5m/10s",
            window_start=start,
            window_end=start + timedelta(minutes=5),
            value=value,
            revision=rev,
        )

    rows = tile_rows(
        [
            w("orders", 3, t),
            w("orders", 5, t + timedelta(seconds=10)),
            w("orders", 99, t + timedelta(seconds=20), dims="seller_id=s1"),
            w("payment_failure_rate", 0.25, t),
            w("payment_failure_rate", 0.5, t, rev=1),
        ],
        window="5m/10s",
    )
    assert rows == [("acme", {"orders": "5", "payment_failure_rate": "50.0%"})]


def test_tiles_ignore_windows_left_by_an_earlier_run() -> None:
    from datetime import UTC, datetime, timedelta

    from linkpulse.schemas.outputs import MetricWindow

    t = datetime(2026, 11, 24, 10, tzinfo=UTC)
    old = MetricWindow(metric="orders", tenant="old", dims_key="", dimensions={},
                       window="5m/10s", window_start=t, window_end=t + timedelta(minutes=5),
                       value=7.0)  # fmt: skip
    assert tile_rows([old], window="5m/10s", not_before=t + timedelta(minutes=6)) == []
    assert tile_rows([old], window="5m/10s", not_before=t + timedelta(minutes=4)) != []
