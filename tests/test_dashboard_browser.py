"""The dashboard end to end in headless Chromium, against the running pipeline.

One pipeline for the module (``tests/browser_stack.py``): the dataflow, the API
(serving the dashboard at ``/``) and the simulator as real processes, on the
machine's PostgreSQL, NATS and Redis, the simulator having backfilled 40
minutes with a payment failure spike before publishing live. The browser is
Debian's Chromium under Playwright (``tests/browser_page.py``). What the page
shows is compared with the store (``metric_windows``, ``alerts``,
``anomaly_scores``), not with the API that fed it.

Screenshots (desktop and phone) go to the test's folder and ``test-artifacts/``.
The seed is printed; ``LINKPULSE_TEST_SEED`` replays it.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, FloatRect, Locator, Page, expect

from tests.browser_page import (
    attribute_changes,
    chart_points,
    launch,
    parse_t,
    save_artifact,
    watch_attribute,
)
from tests.browser_stack import SELLERS, TENANT, Pipeline, running_pipeline, seller_id
from tests.test_api_query_lanes import raw_total

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOAD_MS = 90_000  # a first paint may wait for the history queries on a loaded machine
LIVE_MS = 240_000  # long enough for the next minute's first window
DESKTOP = {"width": 1440, "height": 1000}
PHONE = {"width": 390, "height": 844}
expect.set_options(timeout=LOAD_MS)
PAYMENTS_RULE = "payment_failures_high"  # deploy/rules/payments.yaml: > 5% for 3m
SPIKE_CHART = "payment_failure_rate"
KPIS = ("gmv", "orders", "conversion", "active_users", "payment_failure_rate", "refunds")
LIVE_CHART = "gmv"  # on every role's template


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    seed = int(os.environ.get("LINKPULSE_TEST_SEED") or random.randrange(2**31))
    print(f"browser pipeline seed {seed} (LINKPULSE_TEST_SEED={seed} replays it)")
    with running_pipeline(tmp_path_factory.mktemp("pipeline"), seed) as pipe:
        yield pipe


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch() as b:
        yield b


@pytest.fixture(autouse=True)
def _pages_closed(browser: Browser) -> Iterator[None]:
    """Each test's pages closed after it: their streams count against a key's limit
    (``LINKPULSE_STREAM_MAX_PER_PRINCIPAL``), which the next test's page would meet."""
    yield
    for context in browser.contexts:
        context.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


def open_page(
    browser: Browser, pipe: Pipeline, key: str, viewport: dict[str, int] = DESKTOP
) -> Page:
    """The dashboard with ``?key=``, once it is live."""
    page = browser.new_page(viewport=viewport)  # type: ignore[arg-type]
    page.set_default_timeout(LOAD_MS)
    page.on("response", lambda r: _log_problem(pipe, r.status, r.url))
    page.goto(f"{pipe.api_url}/?key={pipe.keys[key]}")
    expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "live")
    return page


def _log_problem(pipe: Pipeline, status: int, url: str) -> None:
    """The page's failed requests, in the pipeline's folder (a failing test's first clue)."""
    if status >= 400:
        with (pipe.root / "page-errors.log").open("a") as f:
            f.write(f"{datetime.now(UTC).isoformat()} {status} {url}\n")


def ensure_chart(page: Page, metric: str) -> None:
    """The chart of ``metric`` on the page, added from the widget menu if the layout lacks it."""
    chart = page.get_by_test_id(f"chart-{metric}")
    if chart.count() == 0:
        page.get_by_test_id("add-widget").select_option(f"chart:{metric}")
    expect(chart).to_have_count(1)
    chart.scroll_into_view_if_needed()


def wait_points(page: Page, metric: str, at_least: int = 1) -> None:
    page.wait_for_function(
        "([m, n]) => Number(document.querySelector(`[data-testid=chart-${m}]`)"
        "?.getAttribute('data-points') || 0) >= n",
        arg=[metric, at_least],
    )


def store_series(
    pipe: Pipeline, metric: str, dims_key: str = "", *, final: bool = False
) -> dict[datetime, float | None]:
    """The 1-minute windows of a tenant series in the store, by window start (only the final
    ones with ``final``)."""
    with psycopg.connect(pipe.database_url) as conn:
        rows = conn.execute(
            "SELECT window_start, value FROM metric_windows WHERE tenant = %s AND metric = %s"
            " AND dims_key = %s AND \"window\" = '1m' AND (final OR NOT %s) ORDER BY 1",
            (TENANT, metric, dims_key, final),
        ).fetchall()
    return {r[0]: r[1] for r in rows}


def final_series(pipe: Pipeline, metric: str, dims_key: str = "") -> dict[datetime, float | None]:
    return store_series(pipe, metric, dims_key, final=True)


def assert_no_gap_and_matches_store(
    page: Page, pipe: Pipeline, metric: str, dims_key: str = ""
) -> list[datetime]:
    """The chart draws every minute from its first point to its last; each minute the store
    has a window for is drawn, with the store's value wherever that window is final (an open
    one may be newer in the store); a minute with no window in the store is drawn as 0 or
    empty (the query API's history fills empty minutes)."""
    points = chart_points(page, metric)
    assert len(points) >= 10, points
    times = [p.t for p in points]
    want = [times[0] + timedelta(minutes=i) for i in range(len(times))]
    missing = sorted(set(want) - set(times))
    assert times == want, f"{metric}: the chart misses minutes {missing[:5]} (of {len(times)})"
    stored = store_series(pipe, metric, dims_key)
    finals = final_series(pipe, metric, dims_key)
    # a window still open (its minute, plus the allowed lateness) may not be stored yet
    open_from = datetime.now(UTC) - timedelta(minutes=1, seconds=30)
    wrong = [
        (p.t, p.v, stored.get(p.t, "no window"))
        for p in points
        if (p.t in finals and not _close(p.v, finals[p.t]))
        or (p.t not in stored and p.v not in (0, None) and p.t < open_from)
    ]
    assert not wrong, f"{metric}: the chart differs from the store (t, chart, store): {wrong[:5]}"
    assert any(p.t in finals for p in points), f"{metric}: no final window in the chart's range"
    return times


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


# ---------------------------------------------------------------- the tests


def test_viewer_page_fills_and_follows_new_events(
    browser: Browser, pipeline: Pipeline, artifacts: Path
) -> None:
    page = open_page(browser, pipeline, "viewer")
    expect(page.get_by_test_id("scope-label")).to_contain_text(TENANT)
    expect(page.get_by_test_id("tenant-picker")).to_have_count(0)  # admins only
    for name in KPIS:  # their numbers: test_kpi_tiles_show_the_stores_numbers
        expect(page.get_by_test_id(f"kpi-{name}").get_by_test_id("kpi-value")).to_be_visible()
    ensure_chart(page, LIVE_CHART)
    wait_points(page, LIVE_CHART, 10)
    chart = page.get_by_test_id(f"chart-{LIVE_CHART}")
    before = parse_t(chart.get_attribute("data-last-t") or "")
    watch_attribute(page, f"[data-testid=chart-{LIVE_CHART}]", "data-last-t")
    # the next minute's first events: the chart's last point moves to it
    page.wait_for_function(
        "([sel, t]) => (document.querySelector(sel)?.getAttribute('data-last-t') || '') > t",
        arg=[f"[data-testid=chart-{LIVE_CHART}]", chart.get_attribute("data-last-t")],
        timeout=LIVE_MS,
    )
    changes = attribute_changes(page, f"[data-testid=chart-{LIVE_CHART}]", "data-last-t")
    assert changes, "the chart's last point moved without the observer seeing it"
    shown_at, value = changes[0]
    minute = parse_t(value)
    assert minute > before
    with psycopg.connect(pipeline.database_url) as conn:
        row = conn.execute(
            "SELECT min(event_time) FROM events WHERE tenant = %s AND type = 'payment_settled'"
            " AND event_time >= %s AND event_time < %s",
            (TENANT, minute, minute + timedelta(minutes=1)),
        ).fetchone()
    first_event = row[0] if row else None
    assert first_event is not None, f"the chart shows {minute}, the store has no payment in it"
    lag = (shown_at - first_event).total_seconds()
    print(f"{LIVE_CHART}: minute {minute:%H:%M} drawn {lag:.2f} s after its first payment's time")
    # The figure: the last point moves within 2 s of new events.
    assert lag <= 2.0, f"the chart moved {lag:.2f} s after the minute's first payment"
    save_artifact(page, artifacts, "dashboard-viewer-desktop.png")


_COMPACT = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def shown_number(text: str) -> tuple[float, float] | None:
    """A tile's number and half its last shown digit (None for "—"), as web/src/lib/format.ts
    writes them: "12,345.67", "1,234", "45.2%", "123.5K".

    >>> shown_number("45.2%"), shown_number("1,234"), shown_number("123.5K")
    ((0.452, 0.0005), (1234.0, 0.5), (123500.0, 50.0))
    """
    text = text.strip().replace(",", "")
    if text in ("—", ""):
        return None
    scale = 1.0
    if text.endswith("%"):
        text, scale = text[:-1], 0.01
    elif text[-1] in _COMPACT:
        text, scale = text[:-1], _COMPACT[text[-1]]
    decimals = len(text.partition(".")[2])
    return round(float(text) * scale, 12), round(0.5 * 10**-decimals * scale, 12)


def _shows(text: str, value: float | None) -> bool:
    shown = shown_number(text)
    return shown is not None and value is not None and abs(shown[0] - value) <= shown[1] + 1e-9


def _quiet_store(pipe: Pipeline) -> None:
    """Wait until the flow has stored everything published (the feed is stopped)."""
    seen, same = None, 0
    while same < 3:  # unchanged over three reads a second apart
        time.sleep(1)
        with psycopg.connect(pipe.database_url) as conn:
            now = conn.execute("SELECT count(*), max(ingested_at) FROM events").fetchone()
        same, seen = (same + 1, seen) if now == seen else (0, now)


def test_kpi_tiles_show_the_stores_numbers(browser: Browser, pipeline: Pipeline) -> None:
    """The tiles fill with the store's numbers before any rollup refresh reaches them.

    The live feed is paused so the store holds still; the tiles' next poll after that
    must equal aggregates of the raw events over the period /v1/kpis answered for.
    """
    page = open_page(browser, pipeline, "viewer")
    for name in KPIS:  # numbers, not "0.00" or "—" (the rollups lag the live minutes)
        tile = page.get_by_test_id(f"kpi-{name}")
        # refunds are rare in the simulator's mix: 0 in a day is a right answer
        shown = r"\d" if name == "refunds" else r"[1-9]"
        expect(tile.get_by_test_id("kpi-value")).to_have_text(re.compile(shown))
    live = pipeline.procs["live"]
    live.send_signal(signal.SIGSTOP)
    try:
        _quiet_store(pipeline)
        is_kpis = lambda r: "/v1/kpis" in r.url and r.status == 200  # noqa: E731
        with page.expect_response(is_kpis, timeout=LIVE_MS):  # in flight while the store moved
            pass
        with page.expect_response(is_kpis, timeout=LIVE_MS) as polled:  # sent after it held
            pass
        body = polled.value.json()
        start, end = (datetime.fromisoformat(body[k]) for k in ("start", "end"))
        with psycopg.connect(pipeline.database_url) as conn:
            store = {n: raw_total(conn, n, start, end, tenant=TENANT) for n in KPIS}
        answered = {k["name"]: k for k in body["kpis"]}
        for name in KPIS:
            assert store[name] is not None, (name, store)  # the feed made every kind of event
            assert answered[name]["value"] == pytest.approx(store[name], rel=1e-12), (name, body)
        for name in KPIS:  # the poll's render: the tile shows the answer, to its last digit
            tile = page.get_by_test_id(f"kpi-{name}")
            texts = [tile.get_by_test_id("kpi-value").inner_text()]
            while not _shows(texts[-1], store[name]) and len(texts) < 50:
                page.wait_for_timeout(200)
                texts.append(tile.get_by_test_id("kpi-value").inner_text())
            assert _shows(texts[-1], store[name]), (name, texts[-1], store[name])
            expect(tile).to_have_attribute("data-stale", "false")
        print(
            f"tiles over [{start:%m-%d %H:%M}, {end:%m-%d %H:%M}) from {body['sources']}: {store}"
        )
    finally:
        live.send_signal(signal.SIGCONT)


def test_injected_anomaly_is_in_the_alert_feed_and_marked_on_the_chart(
    browser: Browser, pipeline: Pipeline
) -> None:
    with psycopg.connect(pipeline.database_url) as conn:
        alert_ids = {
            r[0]
            for r in conn.execute(
                "SELECT alert_id FROM alerts WHERE rule = %s AND state = 'firing' AND series = %s",
                (PAYMENTS_RULE, f"{TENANT}|payment_failure_rate||1m"),
            ).fetchall()
        }
        marked = [
            r[0]
            for r in conn.execute(
                "SELECT time FROM anomaly_scores WHERE series = %s AND score >= 0.99 ORDER BY 1",
                (f"{TENANT}|payment_failure_rate||1m",),
            ).fetchall()
        ]
    assert alert_ids, "the spike did not fire payment_failures_high in the store"
    assert marked, "the spike has no anomaly score >= 0.99 in the store"
    page = open_page(browser, pipeline, "operator")
    feed = page.get_by_test_id("alert-feed")
    items = feed.get_by_test_id("alert-item")
    expect(items.first).to_be_visible()
    shown = {items.nth(i).get_attribute("data-alert-id") for i in range(items.count())}
    assert alert_ids & shown, f"none of {alert_ids} in the feed ({len(shown)} items)"
    ensure_chart(page, SPIKE_CHART)
    wait_points(page, SPIKE_CHART, 10)
    markers = page.get_by_test_id(f"chart-{SPIKE_CHART}").get_by_test_id("anomaly-marker")
    expect(markers.first).to_be_attached()
    times = {parse_t(markers.nth(i).get_attribute("data-t") or "") for i in range(markers.count())}
    assert times <= set(marked), f"marked {sorted(times - set(marked))[:3]} with no such score"
    label = markers.first.get_attribute("aria-label") or ""
    assert "score" in label, label  # the explanation on hover / for screen readers


def test_api_restart_shows_reconnecting_then_resumes_without_a_gap(
    browser: Browser, pipeline: Pipeline, artifacts: Path
) -> None:
    page = open_page(browser, pipeline, "viewer")
    ensure_chart(page, LIVE_CHART)
    wait_points(page, LIVE_CHART, 10)
    status = page.get_by_test_id("connection-status")
    pipeline.kill_api()
    killed_at = datetime.now(UTC)
    try:
        expect(status).not_to_have_attribute("data-state", "live")
        assert status.get_attribute("data-state") in ("reconnecting", "offline")
        save_artifact(page, artifacts, "dashboard-reconnecting.png")
    finally:
        pipeline.start_api()
    expect(status).to_have_attribute("data-state", "live", timeout=LIVE_MS)
    # resumed: a minute that began after the kill is drawn, with every minute before it
    after = (killed_at + timedelta(minutes=1)).replace(second=0, microsecond=0)
    page.wait_for_function(
        "([sel, t]) => (document.querySelector(sel)?.getAttribute('data-last-t') || '') >= t",
        arg=[f"[data-testid=chart-{LIVE_CHART}]", after.strftime("%Y-%m-%dT%H:%M:%SZ")],
        timeout=LIVE_MS,
    )
    times = assert_no_gap_and_matches_store(page, pipeline, LIVE_CHART)
    assert times[0] < killed_at < times[-1]


def test_seller_key_shows_only_that_sellers_numbers(browser: Browser, pipeline: Pipeline) -> None:
    me = seller_id(1)
    page = open_page(browser, pipeline, "seller")
    expect(page.get_by_test_id("scope-label")).to_contain_text(me)
    ensure_chart(page, LIVE_CHART)
    wait_points(page, LIVE_CHART, 5)
    dims = f"seller_id={me}"
    times = assert_no_gap_and_matches_store(page, pipeline, LIVE_CHART, dims)
    # ... and they are the seller's, not the tenant's
    mine, tenant_wide = final_series(pipeline, LIVE_CHART, dims), final_series(pipeline, LIVE_CHART)
    both = [t for t in times if t in mine and t in tenant_wide]
    assert both and any(not _close(mine[t], tenant_wide[t]) for t in both)
    text = page.locator("body").inner_text()
    others = [seller_id(i) for i in range(SELLERS) if i != 1 and seller_id(i) in text]
    assert not others, f"the seller's page names other sellers: {others}"


def test_dragged_and_resized_widget_survives_a_reload(browser: Browser, pipeline: Pipeline) -> None:
    page = open_page(browser, pipeline, "viewer")
    ensure_chart(page, LIVE_CHART)
    wid = f"widget-chart-{LIVE_CHART}"
    item = page.get_by_test_id(wid)  # the grid item: it holds the drag and the resize handle
    expect(item).to_be_visible()
    start = in_grid(page, item)

    def drag(handle_box: FloatRect, dx: float, dy: float) -> None:
        x = handle_box["x"] + handle_box["width"] / 2
        y = handle_box["y"] + handle_box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        for i in range(1, 11):  # in steps: the grid library follows mouse moves
            page.mouse.move(x + dx * i / 10, y + dy * i / 10)
        page.mouse.up()

    with page.expect_response(lambda r: "/v1/layouts" in r.url and r.request.method != "GET"):
        handle = item.locator(".widget-drag-handle").bounding_box()
        assert handle is not None
        drag(handle, 0, 420)
    with page.expect_response(lambda r: "/v1/layouts" in r.url and r.request.method != "GET"):
        corner = item.locator(".react-resizable-handle").bounding_box()
        assert corner is not None
        drag(corner, -200, 120)
    page.wait_for_timeout(500)  # the save chain has settled (a later save follows the first)
    moved = in_grid(page, item)
    assert abs(moved["y"] - start["y"]) > 100, (start, moved)
    assert abs(moved["height"] - start["height"]) > 50, (start, moved)
    assert abs(moved["width"] - start["width"]) > 50, (start, moved)
    page.reload()
    expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "live")
    item = page.get_by_test_id(wid)
    expect(item).to_be_visible()
    page.wait_for_timeout(300)  # the grid's layout transition
    again = in_grid(page, item)
    for k in ("x", "y", "width", "height"):
        assert abs(again[k] - moved[k]) <= 2, (k, moved, again)


def in_grid(page: Page, item: Locator) -> dict[str, float]:
    """The widget's box relative to the grid (a page's scroll position moves the viewport's)."""
    box = item.bounding_box()
    grid = page.locator("#widgets").bounding_box()
    assert box is not None and grid is not None
    return {
        "x": box["x"] - grid["x"],
        "y": box["y"] - grid["y"],
        "width": box["width"],
        "height": box["height"],
    }


def test_no_serious_or_critical_accessibility_violation(
    browser: Browser, pipeline: Pipeline
) -> None:
    for key in ("operator", "seller"):
        page = open_page(browser, pipeline, key)
        expect(page.get_by_test_id("kpi-gmv").get_by_test_id("kpi-value")).to_have_text(
            re.compile(r"\d"), timeout=LOAD_MS
        )
        results = Axe().run(page)
        bad = [
            (v["id"], v["impact"], len(v["nodes"]), v["help"])
            for v in results.response["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        assert not bad, f"{key}: {bad}\n{results.generate_report()}"
        page.close()


def test_desktop_and_phone_screenshots_are_saved(
    browser: Browser, pipeline: Pipeline, artifacts: Path
) -> None:
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page = open_page(browser, pipeline, "operator", viewport)
        expect(page.get_by_test_id("kpi-gmv").get_by_test_id("kpi-value")).to_have_text(
            re.compile(r"\d"), timeout=LOAD_MS
        )
        if page.get_by_test_id("chart-gmv").count():
            wait_points(page, "gmv")
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{name}: the page scrolls sideways by {overflow}px"
        path = save_artifact(page, artifacts, f"dashboard-{name}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
        page.close()
