"""The FastAPI side of access: ``Need(roles)``, the dependency every route declares.

``Need`` reads the credentials (``Authorization: Bearer`` or ``X-API-Key``;
``WsNeed``, the WebSocket route's, also a ``token`` query parameter, since a
browser's ``WebSocket`` can't set headers),
resolves the principal, checks its role against the route's, takes a token
from its rate-limit bucket, and hands the ``Principal`` to the handler. Each
refusal is problem+json (401 with ``WWW-Authenticate``, 403, 429 with
``Retry-After``, 503 when keys can't be checked) and is written to the audit
log. The aliases below are what routes use:

    async def handler(principal: IngestPrincipal) -> ...

>>> sorted(r.value for r in Need(INGEST_ROLES).roles)
['admin', 'ingest']
>>> resource_of(Request({"type": "http", "method": "GET", "path": "/v1/x", "headers": []}))
'GET /v1/x'

"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, NoReturn

from fastapi import Depends, Request, WebSocket
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from linkpulse.api.audit import AuditEntry, AuditLog
from linkpulse.api.auth.authenticator import LOCAL_PRINCIPAL, Authenticator, AuthError
from linkpulse.api.auth.ratelimit import RateLimiter
from linkpulse.api.auth.roles import AUDIT_ROLES, INGEST_ROLES, STREAM_ROLES, Principal, Role
from linkpulse.api.problems import ProblemError

__all__ = [
    "AdminPrincipal",
    "Guard",
    "IngestPrincipal",
    "Need",
    "StreamPrincipal",
    "WsNeed",
    "WsStreamPrincipal",
    "request_token",
    "resource_of",
]

_bearer = HTTPBearer(auto_error=False, description="an API key or a JWT")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")
_query_token = APIKeyQuery(
    name="token",
    auto_error=False,
    description="an API key or a JWT (WebSocket only: browsers can't set headers there)",
)


@dataclass
class Guard:
    """What ``Need`` works with, kept on ``app.state.guard`` by the access layer."""

    authenticator: Authenticator
    limiter: RateLimiter | None
    audit: AuditLog
    auth_on: bool = True

    async def principal(self, token: str | None) -> Principal:
        """The principal of ``token`` (the local admin when auth is off)."""
        if not self.auth_on:
            return LOCAL_PRINCIPAL
        return await self.authenticator.authenticate(token)


def request_token(bearer: HTTPAuthorizationCredentials | None, api_key: str | None) -> str | None:
    """The credential a request carries: the bearer token, else the X-API-Key header."""
    if bearer is not None and bearer.credentials:
        return bearer.credentials.strip()
    return api_key.strip() if api_key else None


def resource_of(conn: HTTPConnection) -> str:
    """How the audit log names a request: method and path (``WS`` for a WebSocket)."""
    return f"{conn.scope.get('method', 'WS')} {conn.url.path}"


def _refuse(
    guard: Guard, request: HTTPConnection, principal: Principal | None, exc: ProblemError
) -> NoReturn:
    guard.audit.record(
        AuditEntry.of(
            principal,
            "refused",
            resource=resource_of(request),
            outcome="refused",
            status=exc.status_code,
            detail=str(exc.detail),
        )
    )
    raise exc


class Need:
    """Dependency admitting only principals whose role is in ``roles``."""

    def __init__(self, roles: frozenset[Role]) -> None:
        self.roles = roles

    async def __call__(
        self,
        request: Request,
        bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
        api_key: str | None = Depends(_api_key),
    ) -> Principal:
        return await self.check(request, request_token(bearer, api_key))

    async def check(self, request: HTTPConnection, token: str | None) -> Principal:
        """Resolve ``token``, check role and rate limit; refuse (and audit) otherwise."""
        guard: Guard = request.app.state.guard
        try:
            principal = await guard.principal(token)
        except AuthError as e:
            headers = {"WWW-Authenticate": 'Bearer realm="linkpulse"'}
            if e.status == 503:
                headers = {"Retry-After": "2"}
            title = "Authentication unavailable" if e.status == 503 else "Unauthenticated"
            _refuse(
                guard,
                request,
                None,
                ProblemError(
                    e.status, e.slug, title, e.detail, field="Authorization", headers=headers
                ),
            )
        if not principal.may(self.roles):
            allowed = ", ".join(sorted(r.value for r in self.roles))
            detail = (
                f"role {principal.role.value} may not use this route; it needs one of {allowed}"
            )
            _refuse(guard, request, principal, ProblemError(403, "forbidden", "Forbidden", detail))
        if guard.limiter is not None and guard.auth_on:
            wait = await guard.limiter.check(principal)
            if wait > 0:
                detail = (
                    f"rate limit of role {principal.role.value} reached for {principal.id}; "
                    f"retry in {wait:.2f} s (LINKPULSE_RATE_LIMITS)"
                )
                headers = {"Retry-After": str(max(1, math.ceil(wait)))}
                _refuse(
                    guard,
                    request,
                    principal,
                    ProblemError(429, "rate-limited", "Too many requests", detail, headers=headers),
                )
        request.state.principal = principal
        return principal


class WsNeed(Need):
    """``Need`` for a WebSocket route: the same checks, and a ``token`` query parameter
    is accepted when no header carries credentials. Refusals happen before the
    upgrade, as problem+json HTTP responses."""

    async def __call__(  # type: ignore[override]
        self,
        websocket: WebSocket,
        bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
        api_key: str | None = Depends(_api_key),
        token: str | None = Depends(_query_token),
    ) -> Principal:
        found = request_token(bearer, api_key) or (token.strip() if token else None)
        return await self.check(websocket, found)


IngestPrincipal = Annotated[Principal, Depends(Need(INGEST_ROLES))]
StreamPrincipal = Annotated[Principal, Depends(Need(STREAM_ROLES))]
AdminPrincipal = Annotated[Principal, Depends(Need(AUDIT_ROLES))]
WsStreamPrincipal = Annotated[Principal, Depends(WsNeed(STREAM_ROLES))]
