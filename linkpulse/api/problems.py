"""Errors as RFC 9457 problem details (``application/problem+json``).

Route code raises ``ProblemError`` (or lets a domain error through); the one
handler installed by ``install_problem_handler`` turns every error into the
same JSON shape: ``type``, ``title``, ``status``, ``detail`` and, when one
input is at fault, ``field``. Nothing reaches a client as a bare 500 page.

>>> p = ProblemError(413, "too-many-events", "Too many events", "2000 > 1000", field="$")
>>> problem_body(p)["type"]
'https://linkpulse.dev/problems/too-many-events'
>>> _as_problem(EventTooLargeError("big", "lp.events.acme.page_view", "over 1048576")).status_code
413
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from linkpulse.bus.publisher import EventTooLargeError
from linkpulse.errors import BackpressureError, IngestError, LinkpulseError, SchemaValidationError
from linkpulse.logging import get_logger

__all__ = [
    "PROBLEM_BASE",
    "PROBLEM_MEDIA_TYPE",
    "Problem",
    "ProblemError",
    "install_problem_handler",
    "problem_body",
    "problem_responses",
]

log = get_logger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://linkpulse.dev/problems/"
# Seconds a client should wait before retrying when NATS is down.
RETRY_AFTER_S = 2


class Problem(BaseModel):
    """An RFC 9457 problem document (schema for the OpenAPI docs)."""

    type: str = Field(description="URI naming the kind of problem")
    title: str = Field(description="short summary of the kind of problem")
    status: int = Field(description="the HTTP status code")
    detail: str = Field(description="what went wrong this time, and how to fix it")
    field: str | None = Field(
        default=None, description="the input at fault ('$' is the whole body)"
    )


class ProblemError(HTTPException):
    """An HTTP error with a problem type slug, a title and optionally a field."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.slug = slug
        self.title = title
        self.field = field


def problem_body(exc: ProblemError) -> dict[str, Any]:
    """The JSON document for a ProblemError (``field`` left out when None)."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + exc.slug,
        "title": exc.title,
        "status": exc.status_code,
        "detail": str(exc.detail),
    }
    if exc.field is not None:
        body["field"] = exc.field
    return body


def _as_problem(exc: Exception) -> ProblemError:
    """Map any exception to a ProblemError: domain errors by type, the rest as 500."""
    if isinstance(exc, ProblemError):
        return exc
    if isinstance(exc, SchemaValidationError):
        return ProblemError(400, "invalid-body", "Invalid request body", str(exc), field=exc.field)
    if isinstance(exc, EventTooLargeError):
        # Normally set aside per event before publishing; this is the race where the
        # server's limit shrank in between (a reconnect to another server). Not
        # "retry": the event must be made smaller.
        return ProblemError(413, "event-too-large", "Event too large", exc.problem, field="$")
    if isinstance(exc, IngestError | BackpressureError):
        return ProblemError(
            503,
            "broker-unavailable",
            "Event broker unavailable",
            f"{exc}. Nothing was lost: retry the same request (already stored events "
            "are recognised by event_id and reported as duplicates).",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())) or "$"
        return ProblemError(
            422, "invalid-request", "Invalid request", str(first.get("msg", exc)), field=field
        )
    if isinstance(exc, StarletteHTTPException):
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        headers = dict(exc.headers) if exc.headers else None
        return ProblemError(exc.status_code, slug, title, str(exc.detail), headers=headers)
    kind = "linkpulse error" if isinstance(exc, LinkpulseError) else "unexpected error"
    return ProblemError(500, "internal", "Internal server error", f"{kind}: {exc}")


async def problem_handler(request: Request, exc: Exception) -> Response:
    """The one exception handler: every error becomes application/problem+json."""
    problem = _as_problem(exc)
    if problem.status_code >= 500:
        log.error("request failed", path=request.url.path, error=repr(exc))
    return Response(
        orjson.dumps(problem_body(problem)),
        status_code=problem.status_code,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )


def install_problem_handler(app: FastAPI) -> None:
    """Register ``problem_handler`` for every error a request can raise."""
    for exc_class in (
        StarletteHTTPException,
        RequestValidationError,
        LinkpulseError,
        Exception,
    ):
        app.add_exception_handler(exc_class, problem_handler)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem+json for the given statuses."""
    return {
        status: {
            "model": Problem,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
