"""The dashboard's first render on loopback, in headless Chromium, against the real API.

    python -m bench.bench_dashboard [--runs 5]

Starts ``linkpulse serve`` on its own database ``lp_bench_dashboard`` of the local
PostgreSQL (the tests' Redis and NATS, its own subject prefix), makes a viewer key,
and opens ``/?key=...`` ``--runs`` times, each in a new browser context (nothing
cached), then once more in the last context (assets cached). Timed on the browser's
clock from the navigation's start:

* ``fcp``: first contentful paint (the page's shell);
* ``render``: the layout and the six KPI tiles are in the page (the first render:
  ``/v1/me`` and ``/v1/layouts`` answered, the grid drawn);
* ``tiles``: the tiles hold ``/v1/kpis``'s answer (``data-stale="false"``);
* ``live``: the three SSE streams are open (``connection-status`` is ``live``).

Baseline, in the same run and browser: loading ``/healthz`` (one small JSON
document; its ``loadEventEnd``). Also printed: the bundle's size, raw and gzipped.
Needs the bundle built (``bash scripts/install.sh``) and Debian's chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import statistics
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, sync_playwright

from bench.bench_sse import wait_up
from linkpulse.api.auth.keys import KeyStore
from linkpulse.api.auth.roles import Role
from linkpulse.api.routes.dashboard import BUNDLE
from linkpulse.config import Settings
from linkpulse.stack.urls import free_port
from linkpulse.store import roles
from linkpulse.store.migrate import migrate
from tests.browser_page import CHROMIUM, CHROMIUM_ARGS

ADMIN_DSN = os.environ.get(
    "LINKPULSE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
NATS_URL = os.environ.get("LINKPULSE_TEST_NATS_URL", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("LINKPULSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DB = "lp_bench_dashboard"


def _dsn() -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{DB}"


async def _viewer_key() -> str:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", (DB,)).fetchone():
            conn.execute(f"create database {DB}")
    migrate(_dsn())
    with psycopg.connect(_dsn(), autocommit=True) as conn:  # the query routes read as them
        defaults = Settings()
        roles.setup(conn, analyst_role=defaults.analyst_role, sql_login=defaults.analyst_sql_login)
    async with await psycopg.AsyncConnection.connect(_dsn(), autocommit=True) as conn:
        key, _ = await KeyStore(conn).create(
            role=Role.VIEWER,
            tenant="acme",
            name="bench",
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
    return key.secret


def _serve(port: int, prefix: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LINKPULSE_DATABASE_URL": _dsn(),
        "LINKPULSE_NATS_URL": NATS_URL,
        "LINKPULSE_REDIS_URL": REDIS_URL,
        "LINKPULSE_REDIS_KEY_PREFIX": f"{prefix}:",
        "LINKPULSE_SUBJECT_PREFIX": prefix,
        "LINKPULSE_STREAM_NAME": prefix.upper(),
        "LINKPULSE_LOG_LEVEL": "WARNING",
        "LINKPULSE_RATE_LIMITS": "viewer=100000/100000",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "linkpulse", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _bundle_sizes() -> tuple[int, int]:
    files = [p for p in (BUNDLE / "assets").iterdir() if p.suffix in {".js", ".css"}]
    files.append(BUNDLE / "index.html")
    raw = sum(p.stat().st_size for p in files)
    zipped = sum(len(gzip.compress(p.read_bytes(), 9)) for p in files)
    return raw, zipped


def _until(page: Page, selector: str) -> float:
    """Milliseconds from the navigation's start until ``selector`` is in the page."""
    try:
        handle = page.wait_for_function(
            f"() => document.querySelector({selector!r}) ? performance.now() : null",
            polling="raf",
            timeout=60_000,
        )
    except PlaywrightError as e:
        msg = f"{selector} never appeared: {e}"
        raise SystemExit(msg) from e
    return float(handle.json_value())


def _load(page: Page, url: str) -> dict[str, float]:
    page.goto(url, wait_until="commit")
    render = _until(page, '[data-testid="kpi-refunds"]')
    tiles = _until(page, '[data-testid="kpi-gmv"][data-stale="false"]')
    live = _until(page, '[data-testid="connection-status"][data-state="live"]')
    fcp = page.evaluate(
        "() => performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? NaN"
    )
    return {"fcp": float(fcp), "render": render, "tiles": tiles, "live": live}


def _baseline(page: Page, url: str) -> float:
    page.goto(f"{url}/healthz", wait_until="load")
    return float(page.evaluate("() => performance.getEntriesByType('navigation')[0].loadEventEnd"))


def _table(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="cold loads (new browser contexts)")
    warm: dict[str, float] = {}
    args = ap.parse_args()
    if not (BUNDLE / "index.html").is_file():
        msg = "the dashboard is not built: bash scripts/install.sh"
        raise SystemExit(msg)
    if not CHROMIUM.exists():
        msg = "Debian's chromium is missing: apt-get install -y chromium"
        raise SystemExit(msg)
    raw, zipped = _bundle_sizes()
    key = asyncio.run(_viewer_key())
    port = free_port()
    prefix = f"lpbd{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{port}"
    proc = _serve(port, prefix)
    try:
        wait_up(url, key)
        cold: list[dict[str, float]] = []
        base: list[float] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            for i in range(args.runs):
                # one context at a time: a key may hold 10 streams (the page opens 3)
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                base.append(_baseline(context.new_page(), url))
                page = context.new_page()
                cold.append(_load(page, f"{url}/?key={key}"))
                if i == args.runs - 1:
                    page.goto("about:blank")  # its streams end
                    warm = _load(page, f"{url}/?key={key}")  # the same context: assets cached
                context.close()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(20)
    load = os.getloadavg()
    c = _table(cold)
    b = statistics.median(base)
    print(
        f"bundle: {raw / 1024:.0f} KiB raw, {zipped / 1024:.0f} KiB gzipped (index.html, JS, CSS)"
    )
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (2 cores)")
    print(f"baseline /healthz load: {b:.0f} ms (median of {len(base)})")
    print(f"{'ms from navigation':<22}{'cold (median)':>14}{'warm':>8}{'cold / baseline':>17}")
    for k in ("fcp", "render", "tiles", "live"):
        print(f"{k:<22}{c[k]:>14.0f}{warm[k]:>8.0f}{c[k] / b:>16.1f}x")


if __name__ == "__main__":
    main()
