"""The FastAPI application: ``create_app(settings)``.

One NATS connection is opened in the lifespan (and retried in the background
if NATS is down at start); routers come from ``linkpulse.api.routes``; every
error leaves as problem+json through one handler.

>>> app = create_app(Settings())
>>> sorted(app.openapi()["paths"])  # doctest: +NORMALIZE_WHITESPACE
['/healthz', '/metrics', '/readyz', '/v1/alerts', '/v1/alerts/{alert_id}',
 '/v1/alerts/{alert_id}/ack', '/v1/anomalies', '/v1/audit', '/v1/catalog', '/v1/events',
 '/v1/exports', '/v1/exports/{export_id}', '/v1/exports/{export_id}/download',
 '/v1/exports/{export_id}/events', '/v1/forecasts', '/v1/integrations/pagerduty', '/v1/kpis',
 '/v1/layouts', '/v1/layouts/{layout_id}', '/v1/me', '/v1/notifications', '/v1/query',
 '/v1/series', '/v1/silences', '/v1/silences/{silence_id}', '/v1/sql', '/v1/sql/explain',
 '/v1/stream/alerts', '/v1/stream/anomalies', '/v1/stream/metrics', '/v1/top']
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from linkpulse import __version__
from linkpulse.api.access import AccessLayer
from linkpulse.api.broker import BrokerLink
from linkpulse.api.cache_warmer import CacheWarmer
from linkpulse.api.metrics import ApiMetrics, LatencyMiddleware
from linkpulse.api.nul_guard import RejectNul
from linkpulse.api.openapi import install_openapi
from linkpulse.api.problems import install_problem_handler
from linkpulse.api.routes import (
    alerts,
    audit,
    dashboard,
    exports,
    health,
    ingest,
    layouts,
    query,
    silences,
    sql,
    stream,
)
from linkpulse.config import Settings

__all__ = ["create_app"]

DESCRIPTION = """\
Ingest marketplace events into linkpulse's NATS JetStream stream.

Errors are [RFC 9457](https://www.rfc-editor.org/rfc/rfc9457) problem details
(`application/problem+json`) naming the field at fault.
"""


def create_app(settings: Settings) -> FastAPI:
    """Build the API for ``settings``; nothing connects until the lifespan starts."""
    metrics = ApiMetrics()
    access = AccessLayer(settings)  # principals, audit log, stream hub (docs/api-access.md)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        broker = BrokerLink(settings)
        app.state.broker = broker
        await broker.start()
        await access.start(app)
        warmer = CacheWarmer(app, settings, metrics=metrics)  # dashboard queries, after refreshes
        if settings.query_cache_warm:  # off: no LISTEN connection held (LINKPULSE_QUERY_CACHE_WARM)
            warmer.start()
        try:
            yield
        finally:
            await warmer.stop()
            await access.stop()
            await broker.stop()

    app = FastAPI(
        title="linkpulse",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.access = access
    app.add_middleware(RejectNul)  # a NUL in path or query: 400, never a database error
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    install_problem_handler(app)
    app.include_router(ingest.router)
    app.include_router(health.router)
    app.include_router(stream.router)
    app.include_router(audit.router)
    app.include_router(alerts.router)
    app.include_router(silences.router)
    app.include_router(exports.router)
    app.include_router(layouts.router)
    app.include_router(query.router)
    app.include_router(sql.router)  # the SQL endpoint (docs/sql-endpoint.md)
    app.include_router(dashboard.router)  # the page at / and its assets (docs/dashboard.md)
    install_openapi(app, max_batch=settings.ingest_max_batch)
    return app
