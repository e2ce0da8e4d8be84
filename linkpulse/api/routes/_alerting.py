"""What the alerting routes share: who may act, the database, the alerts subject.

Reading alerts and silences is for every reading role; acknowledging, silencing
and reading the notification log is for operators (and admins). Alert changes
the API makes (an ack, a resolve from PagerDuty) are stored in ``alerts`` and
published on ``<prefix>.alerts.<tenant>``, the subject the notifier consumes
and the stream hub serves on ``/v1/stream/alerts``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

import msgspec
import nats.errors
import psycopg
import psycopg_pool
from fastapi import Depends, FastAPI, Request
from nats.aio.client import Client

from linkpulse.alerts.types import AlertChange
from linkpulse.api.auth.guard import Need
from linkpulse.api.auth.roles import STREAM_ROLES, Principal, Role
from linkpulse.api.problems import ProblemError
from linkpulse.bus.connection import connect_nats
from linkpulse.bus.live import alert_subject, ensure_live_streams
from linkpulse.config import Settings
from linkpulse.errors import IngestError
from linkpulse.notifier.store import insert_alert_change

__all__ = [
    "OPERATOR_ROLES",
    "OperatorPrincipal",
    "ReaderPrincipal",
    "alerting_lifespan",
    "in_store",
    "record_change",
    "tenant_scope",
]

OPERATOR_ROLES = frozenset({Role.ADMIN, Role.OPERATOR})
OperatorPrincipal = Annotated[Principal, Depends(Need(OPERATOR_ROLES))]
ReaderPrincipal = Annotated[Principal, Depends(Need(STREAM_ROLES))]
T = TypeVar("T")


class AlertBus:
    """A NATS connection for alert changes, opened at the first one (the API starts without)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._nc: Client | None = None
        self._lock = asyncio.Lock()

    async def publish(self, change: AlertChange) -> None:
        """Publish on the alerts subject; ``Nats-Msg-Id`` dedups a retried request."""
        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                nc = await connect_nats(self.settings, name="linkpulse-api-alerts")
                await ensure_live_streams(nc.jetstream(), self.settings)
                self._nc = nc
        msg_id = f"{change.alert_id}/{change.state.value}/{int(change.at.timestamp() * 1000)}"
        try:
            await self._nc.jetstream().publish(
                alert_subject(self.settings.subject_prefix, change.tenant),
                msgspec.json.encode(change),
                headers={"Nats-Msg-Id": msg_id},
                timeout=5,
            )
        except (nats.errors.Error, TimeoutError) as e:
            msg = f"could not publish the alert change: {e!r}"
            raise IngestError(msg) from e

    async def close(self) -> None:
        """Close the connection if one was opened."""
        if self._nc is not None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await self._nc.close()


@contextlib.asynccontextmanager
async def alerting_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Put the ``AlertBus`` on ``app.state`` for the routes; close it at shutdown."""
    bus = AlertBus(app.state.settings)
    app.state.alert_bus = bus
    try:
        yield
    finally:
        await bus.close()


def _pool(request: Request) -> psycopg_pool.AsyncConnectionPool:
    pool: psycopg_pool.AsyncConnectionPool | None = request.app.state.access.pool
    if pool is None:
        raise ProblemError(503, "store-unavailable", "Store unavailable", "no database pool yet")
    return pool


def _unavailable(what: str, e: Exception) -> ProblemError:
    detail = f"{what}: the database is unreachable ({type(e).__name__})"
    return ProblemError(
        503, "store-unavailable", "Store unavailable", detail, headers={"Retry-After": "2"}
    )


async def in_store(
    request: Request,
    what: str,
    work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
) -> T:
    """Run ``work`` on a pooled connection; a store outage is a 503 saying what failed."""
    try:
        async with _pool(request).connection(timeout=5) as conn:
            return await work(conn)
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as e:
        raise _unavailable(what, e) from e


async def record_change(request: Request, change: AlertChange) -> None:
    """Store ``change`` in ``alerts``, then publish it (the notifier and the stream follow)."""
    settings: Settings = request.app.state.settings

    def write() -> None:
        with psycopg.connect(settings.database_url, connect_timeout=5) as conn:
            insert_alert_change(conn, change)

    try:
        await asyncio.to_thread(write)
    except psycopg.OperationalError as e:
        what = "the alert change cannot be stored"
        raise _unavailable(what, e) from e
    try:
        await request.app.state.alert_bus.publish(change)
    except IngestError as e:
        detail = f"stored, but not published (NATS): {e}; retry the request"
        raise ProblemError(
            503, "broker-unavailable", "Broker unavailable", detail, headers={"Retry-After": "2"}
        ) from e


def tenant_scope(principal: Principal, tenant: str | None) -> str | None:
    """The tenant a request reads or writes: the principal's, or any for an admin."""
    if principal.all_tenants:
        return tenant
    if tenant is not None and tenant != principal.tenant:
        detail = f"tenant {tenant!r} is outside this key's scope ({principal.tenant})"
        raise ProblemError(403, "forbidden", "Forbidden", detail, field="tenant")
    return principal.tenant
