"""The FastAPI application: ``create_app(settings)``.

One NATS connection is opened in the lifespan (and retried in the background
if NATS is down at start); routers come from ``linkpulse.api.routes``; every
error leaves as problem+json through one handler.

>>> app = create_app(Settings())
>>> sorted(app.openapi()["paths"])
['/healthz', '/metrics', '/readyz', '/v1/events']
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from linkpulse import __version__
from linkpulse.api.broker import BrokerLink
from linkpulse.api.metrics import ApiMetrics, LatencyMiddleware
from linkpulse.api.openapi import install_openapi
from linkpulse.api.problems import install_problem_handler
from linkpulse.api.routes import health, ingest
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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        broker = BrokerLink(settings)
        app.state.broker = broker
        await broker.start()
        try:
            yield
        finally:
            await broker.stop()

    app = FastAPI(
        title="linkpulse",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    install_problem_handler(app)
    app.include_router(ingest.router)
    app.include_router(health.router)
    install_openapi(app, max_batch=settings.ingest_max_batch)
    return app
