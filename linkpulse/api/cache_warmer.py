"""Warm the dashboard's standard queries after each rollup refresh.

``rollups.refresh`` ends with ``NOTIFY linkpulse_rollups`` naming the rollups
and tenants it changed (``linkpulse.query.watermarks.after_refresh``). The
warmer LISTENs on its own connection and, a moment later (``debounce_s``, so a
burst of refreshes warms once), runs for each of those tenants the queries a
dashboard opens with, through the query routes themselves so the entries are
exactly the ones a dashboard's requests find: the KPIs of the last 24 h, and
the series of the dashboard's charts over its history (the last hour at 1
minute) and over the last 24 h at 1 hour. A refresh naming no tenants (the
full tier without watermarks) warms the tenants with data in the last day.

The warmer reads as its own admin principal ``cache-warmer`` (its reads are
audited like any other). It never stops the API: a lost connection is
retried with backoff, a failed query is logged.

>>> dashboard_range(datetime(2026, 12, 1, 10, 0, 30, tzinfo=UTC))
('2026-12-01T09:02:00Z', '2026-12-01T10:02:00Z')
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
import psycopg
from fastapi import FastAPI
from starlette.requests import Request

from linkpulse.aio import cancel_and_wait
from linkpulse.api.auth.roles import Principal, Role
from linkpulse.api.metrics import ApiMetrics
from linkpulse.config import Settings
from linkpulse.logging import get_logger
from linkpulse.query.watermarks import NOTIFY_CHANNEL

__all__ = ["WARMER", "CacheWarmer", "dashboard_range", "warm_tenant"]

log = get_logger(__name__)

WARMER: Final = Principal(id="cache-warmer", role=Role.ADMIN, tenant=None, kind="local")
CHART_METRICS: Final = ("gmv", "orders", "page_views")  # the dashboard's default charts
_RECENT_TENANTS = "SELECT DISTINCT tenant FROM events_1h WHERE bucket >= now() - interval '1 day'"


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def dashboard_range(now: datetime) -> tuple[str, str]:
    """The dashboard's history range at ``now`` (web/src/App.tsx): an hour up to the next
    minute but one."""
    minute = 60
    end = datetime.fromtimestamp(-(-now.timestamp() // minute) * minute + minute, tz=UTC)
    return _iso(end - timedelta(hours=1)), _iso(end)


def _request(app: FastAPI, path: str) -> Request:
    """A request of the warmer's own (the routes read ``request.app`` and its path)."""
    scope = {"type": "http", "app": app, "method": "GET", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": [], "client": ("127.0.0.1", 0)}  # fmt: skip
    return Request(scope)


async def warm_tenant(app: FastAPI, tenant: str, now: datetime | None = None) -> int:
    """Run the dashboard's standard queries for ``tenant``; return how many answered."""
    from linkpulse.api.routes import query as routes  # the query API, loaded with the app

    now = now or datetime.now(UTC)
    start, end = (datetime.fromisoformat(t) for t in dashboard_range(now))
    day_end = datetime.fromtimestamp(-(-now.timestamp() // 3600) * 3600, tz=UTC)
    kpis = {"period": "24h", "start": None, "end": None, "tenant": tenant, "seller": None}
    jobs: list[tuple[Callable[..., Awaitable[Any]], str, dict[str, Any]]] = [
        (routes.get_kpis, "/v1/kpis", kpis)
    ]
    for metric in CHART_METRICS:
        for s, e, step in ((start, end, "1m"), (day_end - timedelta(days=1), day_end, "1h")):
            series = {"metric": metric, "start": s, "end": e, "step": step}
            jobs.append(
                (
                    routes.get_series,
                    "/v1/series",
                    {**series, "tenant": tenant, "seller": None, "type": None},
                )
            )
    done = 0
    for route, path, params in jobs:
        try:
            await route(_request(app, path), WARMER, **params)
            done += 1
        except Exception as e:  # noqa: BLE001 - warming is best effort; the next refresh retries
            log.warning("cache warming: a query failed", tenant=tenant, path=path, error=repr(e))
    return done


def tenants_of(payloads: Iterable[str]) -> set[str] | None:
    """The tenants NOTIFY payloads name; None if any of them says "any tenant".

    >>> sorted(tenants_of(['{"rollups":[],"tenants":["a"]}', '{"tenants":["b"]}']))
    ['a', 'b']
    >>> tenants_of(['{"rollups":[],"tenants":null}']) is None
    True
    """
    out: set[str] = set()
    for raw in payloads:
        try:
            names = msgspec.json.decode(raw).get("tenants")
        except (msgspec.DecodeError, AttributeError):
            names = None
        if names is None:
            return None
        out.update(str(n) for n in names)
    return out


class CacheWarmer:
    """LISTENs for rollup refreshes and warms the dashboard's queries; see the module doc."""

    def __init__(
        self,
        app: FastAPI,
        settings: Settings,
        *,
        debounce_s: float = 1.0,
        warm: Callable[[FastAPI, str], Awaitable[int]] = warm_tenant,
        metrics: ApiMetrics | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.dsn = settings.database_url
        self.debounce_s = debounce_s
        self._warm = warm
        self._task: asyncio.Task[None] | None = None
        self.warmed = 0  # queries answered, for tests and logs
        self.rounds = 0

    def start(self) -> None:
        """Listen in the background (from the app's lifespan)."""
        self._task = asyncio.create_task(self._run(), name="lp-cache-warmer")

    async def stop(self) -> None:
        """Stop listening."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    backoff = 1.0
                    await self._listen(conn)
            except (psycopg.Error, OSError) as e:
                log.warning("cache warmer: no listening connection", error=str(e), retry_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            payloads = [n.payload async for n in conn.notifies(stop_after=1)]
            # A burst of refreshes (a pass refreshes each rollup) warms once.
            payloads += [n.payload async for n in conn.notifies(timeout=self.debounce_s)]
            tenants = tenants_of(payloads)
            if tenants is None:
                rows = await (await conn.execute(_RECENT_TENANTS)).fetchall()
                tenants = {r[0] for r in rows}
            for tenant in sorted(tenants):
                n = await self._warm(self.app, tenant)
                self.warmed += n
                if self.metrics is not None:
                    self.metrics.cache_warmed.inc(n)
            self.rounds += 1
            log.info("cache warmed", tenants=len(tenants), queries=self.warmed)
