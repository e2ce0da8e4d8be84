"""The README's main job, end to end on the real services: ``linkpulse demo``.

simulator → NATS JetStream → dataflow → store/Redis/NATS, checked by the demo
itself (every published event stored once, closed windows equal a GROUP BY)
and again here from the database; open-ended, it prints the dashboard's URL
with a viewer key and runs until Ctrl-C, then checks the same.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import psutil
import psycopg
import pytest

from linkpulse.cli.live_panel import tile_rows
from linkpulse.config import Settings
from tests.proc_helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _demo_env(pg_dsn: str, nats_settings: Settings, state: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LINKPULSE_DATABASE_URL": pg_dsn,
        "LINKPULSE_NATS_URL": nats_settings.nats_url,
        "LINKPULSE_STREAM_NAME": nats_settings.stream_name,
        "LINKPULSE_SUBJECT_PREFIX": nats_settings.subject_prefix,
        "LINKPULSE_STATE_DIR": str(state),
        "LINKPULSE_METRICS_PORT": "0",
    }


def test_demo_runs_the_whole_pipeline(
    pg_dsn: str, nats_settings: Settings, nc: object, redis_client: object, tmp_path: Path
) -> None:
    env = _demo_env(pg_dsn, nats_settings, tmp_path / "state")
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


def test_demo_opens_on_the_dashboard_and_runs_until_ctrl_c(
    pg_dsn: str, nats_settings: Settings, nc: object, redis_client: object, tmp_path: Path
) -> None:
    env = _demo_env(pg_dsn, nats_settings, tmp_path / "state")
    out = tmp_path / "demo.out"
    cmd = [sys.executable, "-m", "linkpulse", "demo", "--no-stack", "--rate", "150"]
    with out.open("wb") as sink:
        proc = subprocess.Popen([*cmd, "--drain", "1"], env=env, stdout=sink, stderr=sink)
    try:
        found: list[str] = []

        def dashboard_line() -> bool:
            found[:] = re.findall(r"Dashboard: (\S+)", out.read_text(errors="replace"))
            return bool(found) or proc.poll() is not None

        assert wait_until(dashboard_line, 120, 0.2), out.read_text()[-3000:]
        assert found, out.read_text()[-3000:]
        url = urlsplit(found[0])
        (key,) = parse_qs(url.query)["key"]
        base = f"{url.scheme}://{url.netloc}"
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, timeout=10) as client:
            assert wait_until(lambda: _answers(client), 60, 0.2), out.read_text()[-3000:]
            page = client.get(url.path or "/")
            assert page.status_code == 200, page.text[:500]
            assert "text/html" in page.headers["content-type"]

            # the URL's key is a viewer's: it reads the streams (once the API's stream hub is
            # subscribed: 503 with Retry-After until then), it may not acknowledge alerts
            def stream_opens() -> bool:
                with client.stream("GET", "/v1/stream/alerts", headers=headers) as resp:
                    assert resp.status_code in (200, 503), resp.status_code
                    return resp.status_code == 200

            assert wait_until(stream_opens, 60, 0.5), out.read_text()[-3000:]
            ack = client.post("/v1/alerts/nope/ack", headers=headers)
            assert ack.status_code == 403, ack.text

        def stored_some() -> bool:
            with psycopg.connect(pg_dsn) as conn:
                row = conn.execute("select count(*) from events").fetchone()
            return bool(row and row[0] > 300)

        assert wait_until(stored_some, 120, 0.5), out.read_text()[-3000:]
        assert proc.poll() is None, "open-ended, the demo keeps running: " + out.read_text()[-3000:]
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(300) == 0, out.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            # its children run in their own session (Ctrl-C reaches the demo first): a failed
            # run must not leave them behind
            for child in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            proc.kill()
            proc.wait()
    text = out.read_text()
    assert "every published event was stored exactly once; windows match" in text, text[-3000:]
    with psycopg.connect(pg_dsn) as conn:
        stored = conn.execute("select count(*), count(distinct (tenant, event_id)) from events")
        total, distinct = stored.fetchone() or (0, 0)
    published = re.search(r"published ([\d,]+) events; stored ([\d,]+)", text)
    assert published, text[-3000:]
    assert int(published[1].replace(",", "")) == int(published[2].replace(",", "")) == total
    assert total == distinct


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


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
