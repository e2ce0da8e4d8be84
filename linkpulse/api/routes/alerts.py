"""Alerts: ``GET /v1/alerts``, an alert's history, ``POST /v1/alerts/{id}/ack``, the
notification log, and PagerDuty's webhook (v3) acknowledging or resolving from there.

An acknowledgement is an ``acknowledged`` alert change: stored in ``alerts``,
published on the alerts subject (the notifier mirrors it to PagerDuty on the
same ``dedup_key``; ``/v1/stream/alerts`` shows it). PagerDuty's own
acknowledge and resolve come back through ``POST /v1/integrations/pagerduty``,
signed with ``LINKPULSE_PAGERDUTY_WEBHOOK_SECRET`` (``X-PagerDuty-Signature:
v1=<hex>``, HMAC-SHA256 of the body).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import AwareDatetime, BaseModel

from linkpulse.alerts.types import AlertChange, AlertState
from linkpulse.api.audit import AuditEntry
from linkpulse.api.auth.roles import Principal, Role
from linkpulse.api.problems import ProblemError, problem_responses
from linkpulse.api.routes._alerting import (
    OperatorPrincipal,
    ReaderPrincipal,
    alerting_lifespan,
    in_store,
    record_change,
    tenant_scope,
)

router = APIRouter(tags=["alerts"], lifespan=alerting_lifespan)

STATES = [s.value for s in AlertState]
# the later state wins when two changes of one alert share a timestamp; a resolve ends the
# incident even when stamped (stream time) before an ack made on the wall clock
_RANK = "array_position(ARRAY['resolved','acknowledged','firing','pending','inactive'], state)"


class AlertView(BaseModel):
    """One alert as it is now (its newest change)."""

    alert_id: str
    fingerprint: str
    rule: str
    kind: str
    tenant: str
    series: str
    state: str
    previous: str
    at: datetime
    active_at: datetime
    fired_at: datetime | None
    value: float | None
    observed: float | None
    expected: float | None
    lower: float | None
    upper: float | None
    severity: str
    labels: dict[str, str]
    summary: str
    description: str
    explanation: str
    revision: int


class AlertHistory(BaseModel):
    """An alert now, and every change it went through, oldest first."""

    alert: AlertView
    history: list[AlertView]


class AckBody(BaseModel):
    """Why (optional): kept in the audit log."""

    comment: str = ""


class NotificationRow(BaseModel):
    """One queued notification and where its delivery stands."""

    key: str
    receiver: str
    kind: str
    group_key: str
    alert_ids: list[str]
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None
    last_status: int | None
    last_error: str


def _view(c: AlertChange) -> AlertView:
    return AlertView(**msgspec.to_builtins(c))


def _decode(text: str) -> AlertChange | None:
    try:
        return msgspec.json.decode(text, type=AlertChange)
    except msgspec.DecodeError:
        return None  # a row not written from an AlertChange: not shown


_LATEST = f"""
SELECT details::text FROM (
  SELECT DISTINCT ON (alert_id) alert_id, state, at, details FROM alerts
  WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
    AND (%(rule)s::text IS NULL OR rule = %(rule)s)
    AND (%(alert_id)s::text IS NULL OR alert_id = %(alert_id)s)
  ORDER BY alert_id, state = 'resolved' DESC, at DESC, {_RANK}
) latest
WHERE (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(severity)s::text IS NULL OR details->>'severity' = %(severity)s)
  AND (%(seller)s::text IS NULL OR details->'labels'->>'seller_id' = %(seller)s)
  AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR at < %(until)s)
ORDER BY at DESC, alert_id
LIMIT %(limit)s
"""


async def _latest(request: Request, params: dict[str, Any]) -> list[AlertChange]:
    async def work(conn: psycopg.AsyncConnection[Any]) -> list[AlertChange]:
        cur = await conn.execute(_LATEST, params)
        return [c for (text,) in await cur.fetchall() if (c := _decode(text)) is not None]

    return await in_store(request, "alerts cannot be read", work)


def _filters(principal: Principal, **kw: Any) -> dict[str, Any]:
    base = {
        "tenant": None,
        "rule": None,
        "alert_id": None,
        "state": None,
        "severity": None,
        "since": None,
        "until": None,
        "limit": 1,
        "seller": principal.seller,
    }
    return {**base, **kw}


@router.get(
    "/v1/alerts",
    summary="Alerts as they are now, newest change first",
    response_model=list[AlertView],
    responses=problem_responses(400, 401, 403, 422, 429, 503),
)
async def list_alerts(
    request: Request,
    principal: ReaderPrincipal,
    state: AlertState | None = Query(None, description="the alert's current state"),
    severity: str | None = Query(None, max_length=64, description="critical, warning, ..."),
    rule: str | None = Query(None, max_length=200, description="the rule's name"),
    tenant: str | None = Query(None, max_length=200, description="admins: another tenant"),
    since: AwareDatetime | None = Query(None, description="last change at or after"),
    until: AwareDatetime | None = Query(None, description="last change before"),
    limit: int = Query(100, ge=1, le=1000),
) -> list[AlertView]:
    """Filters combine; a seller sees only the alerts of its own seller's series."""
    if since is not None and until is not None and since >= until:
        raise ProblemError(
            400, "invalid-filter", "Invalid filter", "since must be before until", field="since"
        )
    params = _filters(
        principal,
        tenant=tenant_scope(principal, tenant),
        rule=rule,
        severity=severity,
        state=state.value if state else None,
        since=since,
        until=until,
        limit=limit,
    )
    return [_view(c) for c in await _latest(request, params)]


async def _one(request: Request, principal: Principal, alert_id: str) -> AlertChange:
    params = _filters(principal, tenant=tenant_scope(principal, None), alert_id=alert_id)
    found = await _latest(request, params)
    if not found:
        detail = f"no alert {alert_id!r} in this key's scope"
        raise ProblemError(404, "not-found", "Not found", detail, field="alert_id")
    return found[0]


_ID = Path(..., max_length=200, description="the alert's id (<fingerprint>-<epoch>)")


@router.get(
    "/v1/alerts/{alert_id}",
    summary="One alert and its history",
    response_model=AlertHistory,
    responses=problem_responses(401, 403, 404, 422, 429, 503),
)
async def alert_history(
    request: Request, principal: ReaderPrincipal, alert_id: str = _ID
) -> AlertHistory:
    """Every state change of the alert (pending, firing, acknowledged, resolved), oldest first."""
    now = await _one(request, principal, alert_id)

    async def work(conn: psycopg.AsyncConnection[Any]) -> list[AlertChange]:
        cur = await conn.execute(
            f"SELECT details::text FROM alerts WHERE alert_id = %s ORDER BY at, {_RANK} DESC",
            (alert_id,),
        )
        return [c for (text,) in await cur.fetchall() if (c := _decode(text)) is not None]

    history = await in_store(request, "the alert's history cannot be read", work)
    return AlertHistory(alert=_view(now), history=[_view(c) for c in history])


def _next_change(last: AlertChange, state: AlertState) -> AlertChange:
    # never before the change it follows: the latest change must stay the latest
    at = max(datetime.now(UTC), last.at + timedelta(milliseconds=1))
    return msgspec.structs.replace(last, state=state, previous=last.state, at=at)


@router.post(
    "/v1/alerts/{alert_id}/ack",
    summary="Acknowledge a firing alert (operators)",
    response_model=AlertView,
    responses=problem_responses(401, 403, 404, 409, 422, 429, 503),
)
async def ack_alert(
    request: Request,
    principal: OperatorPrincipal,
    alert_id: str = _ID,
    body: AckBody | None = Body(None),
) -> AlertView:
    """Stored, mirrored to PagerDuty by the notifier, shown on ``/v1/stream/alerts``.

    Acknowledging an acknowledged alert again answers it as it is."""
    last = await _one(request, principal, alert_id)
    if last.state is AlertState.ACKNOWLEDGED:
        return _view(last)
    if last.state is not AlertState.FIRING:
        detail = f"alert {alert_id} is {last.state.value}: only a firing alert can be acknowledged"
        raise ProblemError(409, "not-firing", "Alert not firing", detail, field="alert_id")
    acked = _next_change(last, AlertState.ACKNOWLEDGED)
    await record_change(request, acked)
    request.app.state.guard.audit.record(
        AuditEntry.of(
            principal,
            "alert.ack",
            resource=alert_id,
            status=200,
            detail=(body.comment if body else "")[:500],
        )
    )
    return _view(acked)


@router.get(
    "/v1/notifications",
    summary="The notification log: queued, delivered and dead notifications (operators)",
    response_model=list[NotificationRow],
    responses=problem_responses(401, 403, 422, 429, 503),
)
async def list_notifications(
    request: Request,
    principal: OperatorPrincipal,
    status: str | None = Query(None, pattern="^(pending|delivered|dead)$"),
    receiver: str | None = Query(None, max_length=200),
    alert_id: str | None = Query(None, max_length=200, description="notifications about it"),
    limit: int = Query(100, ge=1, le=1000),
) -> list[NotificationRow]:
    """Newest first; ``status=dead`` lists what failed for good (also on the DLQ subject)."""
    tenant = tenant_scope(principal, None)

    async def work(conn: psycopg.AsyncConnection[Any]) -> list[NotificationRow]:
        cur = await conn.execute(
            "SELECT key, receiver, kind, group_key, alert_ids, status, attempts, created_at, "
            "next_attempt_at, delivered_at, last_status, last_error FROM notifications "
            "WHERE (%(status)s::text IS NULL OR status = %(status)s) "
            "AND (%(receiver)s::text IS NULL OR receiver = %(receiver)s) "
            "AND (%(alert)s::text IS NULL OR %(alert)s = ANY(alert_ids)) "
            "AND (%(tenant)s::text IS NULL OR payload->'notification'->'group_labels'->>'tenant'"
            " = %(tenant)s OR payload->'notification'->'firing'->0->>'tenant' = %(tenant)s "
            " OR payload->'notification'->'resolved'->0->>'tenant' = %(tenant)s) "
            "ORDER BY created_at DESC, key LIMIT %(limit)s",
            {
                "status": status,
                "receiver": receiver,
                "alert": alert_id,
                "tenant": tenant,
                "limit": limit,
            },
        )
        names = [d.name for d in cur.description or []]
        return [
            NotificationRow(**dict(zip(names, row, strict=True))) for row in await cur.fetchall()
        ]

    return await in_store(request, "the notification log cannot be read", work)


# -- PagerDuty webhook v3 ---------------------------------------------------------------------

_PD_STATES = {
    "incident.acknowledged": AlertState.ACKNOWLEDGED,
    "incident.resolved": AlertState.RESOLVED,
    "alert.acknowledged": AlertState.ACKNOWLEDGED,
    "alert.resolved": AlertState.RESOLVED,
}


class WebhookResult(BaseModel):
    """What the webhook did: ``updated``, or ``ignored`` and why."""

    result: str
    detail: str
    alert_id: str | None = None


def pagerduty_signature_ok(secret: str, body: bytes, header: str) -> bool:
    """Whether one of the header's ``v1=<hex>`` signatures is the body's HMAC-SHA256.

    >>> sig = hmac.new(b"k", b"{}", hashlib.sha256).hexdigest()
    >>> pagerduty_signature_ok("k", b"{}", f"v1=bad,v1={sig}")
    True
    >>> pagerduty_signature_ok("k", b"{}", "")
    False
    """
    want = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return any(
        hmac.compare_digest(part.strip().removeprefix("v1="), want)
        for part in header.split(",")
        if part.strip().startswith("v1=")
    )


@router.post(
    "/v1/integrations/pagerduty",
    summary="PagerDuty webhook v3: its acknowledge and resolve update the alert",
    response_model=WebhookResult,
    responses=problem_responses(400, 401, 403, 503),
)
async def pagerduty_webhook(request: Request) -> WebhookResult:
    """Authenticated by its signature (``X-PagerDuty-Signature``), not by a key."""
    secret = request.app.state.settings.pagerduty_webhook_secret
    if not secret:
        detail = "the PagerDuty webhook is off: set LINKPULSE_PAGERDUTY_WEBHOOK_SECRET"
        raise ProblemError(403, "webhook-off", "Webhook not configured", detail)
    body = await request.body()
    header = request.headers.get("X-PagerDuty-Signature", "")
    if not pagerduty_signature_ok(secret, body, header):
        detail = "X-PagerDuty-Signature does not match the body (HMAC-SHA256, v1=<hex>)"
        raise ProblemError(
            401, "bad-signature", "Bad signature", detail, field="X-PagerDuty-Signature"
        )
    try:
        doc = json.loads(body)
        event = doc["event"]
        kind = str(event["event_type"])
        data = event.get("data") or {}
    except (ValueError, KeyError, TypeError, AttributeError):
        detail = "expected a JSON object {event: {event_type, data: {...}}}"
        raise ProblemError(400, "invalid-body", "Invalid body", detail, field="event") from None
    state = _PD_STATES.get(kind)
    if state is None:
        return WebhookResult(result="ignored", detail=f"event type {kind} changes nothing here")
    key = data.get("incident_key") or data.get("alert_key") if isinstance(data, dict) else None
    if not isinstance(key, str) or not key:
        return WebhookResult(result="ignored", detail="no incident_key: not a linkpulse incident")
    # PagerDuty speaks for the incident wherever its tenant is
    admin = Principal(id="pagerduty", role=Role.ADMIN, tenant=None)
    try:
        last = await _one(request, admin, key[:200])
    except ProblemError as e:
        if e.status_code == 404:
            return WebhookResult(result="ignored", detail=f"no alert {key!r}", alert_id=key)
        raise
    if last.state is state or last.state is AlertState.RESOLVED or not last.is_active:
        return WebhookResult(
            result="ignored", detail=f"alert is {last.state.value} already", alert_id=key
        )
    await record_change(request, _next_change(last, state))
    return WebhookResult(result="updated", detail=f"alert {state.value}", alert_id=key)
