"""Dependencies for route handlers, as ``Annotated`` aliases.

Everything a handler needs lives on ``app.state`` (set up once in the
lifespan); these aliases hand it over, so handlers declare what they use.
They are ``async def`` although they never await: FastAPI runs a plain
``def`` dependency in its thread pool, a thread hop per dependency per request.

    async def handler(settings: SettingsDep, broker: BrokerDep) -> ...
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from linkpulse.api.broker import BrokerLink
from linkpulse.api.metrics import ApiMetrics
from linkpulse.bus import EventPublisher
from linkpulse.config import Settings

__all__ = ["BrokerDep", "MetricsDep", "PublisherDep", "SettingsDep"]


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _broker(request: Request) -> BrokerLink:
    broker: BrokerLink = request.app.state.broker
    return broker


async def _publisher(request: Request) -> EventPublisher:
    # IngestError when NATS is down; the problem handler makes it a 503.
    broker: BrokerLink = request.app.state.broker
    return broker.require()


async def _metrics(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(_settings)]
BrokerDep = Annotated[BrokerLink, Depends(_broker)]
PublisherDep = Annotated[EventPublisher, Depends(_publisher)]
MetricsDep = Annotated[ApiMetrics, Depends(_metrics)]
