"""Headless Chromium for the dashboard's browser tests, and what they read off the page.

* :func:`launch`: Debian's ``/usr/bin/chromium`` driven by Playwright (never
  a downloaded browser), with the flags this machine's closed network needs;
  each launch starts on a new, empty profile.
* :func:`chart_points`: the points a chart draws. The chart's element carries
  only its last point (``data-last-t``, ``data-last-value``) and the count
  (``data-points``); the points themselves are read from the ``points`` prop of
  the chart's React component (the same array uPlot is given).
* :func:`save_artifact`: a screenshot into the test's folder and ``test-artifacts/``.
* :func:`watch_attribute`: records each change of an element's attribute with the
  browser's clock, so a test can tell when the page showed something.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"  # gitignored; CI keeps it
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # else it calls Google's hosts, refused here
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = (
    "Debian's chromium is not installed at /usr/bin/chromium: run `apt-get install -y chromium` "
    "(scripts/install.sh does)"
)


@contextmanager
def launch() -> Iterator[Browser]:
    """Headless Debian Chromium under Playwright; a fresh temporary profile per launch."""
    assert CHROMIUM.exists(), INSTALL_HINT
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass(frozen=True)
class Point:
    """One point of a chart: its window's start and value."""

    t: datetime
    v: float | None


_POINTS_JS = """
(el) => {
  const key = Object.keys(el).find((k) => k.startsWith("__reactFiber$"));
  for (let f = key ? el[key] : null; f; f = f.return) {
    const p = f.memoizedProps;
    if (p && Array.isArray(p.points) && typeof p.metric === "string") {
      return p.points.map((x) => [x.t, x.v]);
    }
  }
  return null;
}
"""


def chart_points(page: Page, metric: str) -> list[Point]:
    """The points the chart of ``metric`` draws, oldest first (see the module docstring)."""
    el = page.get_by_test_id(f"chart-{metric}")
    raw: list[list[Any]] | None = el.evaluate(_POINTS_JS)
    assert raw is not None, f"chart-{metric}: no React component with `points` above it"
    return [Point(datetime.fromtimestamp(t / 1000, UTC), v) for t, v in raw]


def parse_t(text: str) -> datetime:
    """A ``data-last-t`` (ISO 8601, Z) as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


_WATCH_JS = """
([sel, attr]) => {
  const el = document.querySelector(sel);
  window.__lpChanges = window.__lpChanges || {};
  const log = (window.__lpChanges[sel + "|" + attr] = []);
  new MutationObserver(() => log.push([Date.now(), el.getAttribute(attr)])).observe(el, {
    attributes: true,
    attributeFilter: [attr],
  });
}
"""


def watch_attribute(page: Page, selector: str, attr: str) -> None:
    """Start recording (browser time in ms, new value) at each change of ``attr``."""
    page.evaluate(_WATCH_JS, [selector, attr])


def attribute_changes(page: Page, selector: str, attr: str) -> list[tuple[datetime, str]]:
    raw = page.evaluate("(k) => (window.__lpChanges || {})[k] || []", f"{selector}|{attr}")
    return [(datetime.fromtimestamp(ms / 1000, UTC), value) for ms, value in raw]


def save_artifact(page: Page, folder: Path, name: str) -> Path:
    """A full-page PNG in ``folder`` and a copy in ``test-artifacts/``; the first path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy2(path, ARTIFACTS / name)
    return path
