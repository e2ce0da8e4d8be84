"""Refuse a NUL character in a request's path or query parameters, as a 400 naming it.

PostgreSQL text can't hold NUL: a filter such as ``?rule=a%00b`` reached the
database driver and came back as a 500 (found by schemathesis,
tests/test_api_schema.py). No route has a use for NUL in a path or a query
parameter, so this pure ASGI middleware refuses it once, for every route,
before any of them runs.

>>> _nul_param(b"a=1&rule=x%00y"), _nul_param(b"a=1"), _nul_param(b"%00k=1")
('rule', None, '%00k')
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from linkpulse.api.problems import PROBLEM_MEDIA_TYPE, ProblemError, problem_body

__all__ = ["RejectNul"]


def _nul_param(query: bytes) -> str | None:
    """The name of the first query parameter holding a NUL (escaped or raw), if any."""
    for part in query.split(b"&"):
        if b"%00" in part.lower() or b"\x00" in part:
            return part.partition(b"=")[0].decode("latin-1")[:80]
    return None


class RejectNul:
    """ASGI middleware answering 400 ``invalid-request`` to a NUL in path or query."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
            field = "path" if b"%00" in raw_path.lower() or "\x00" in scope["path"] else None
            field = field or _nul_param(scope.get("query_string", b""))
            if field is not None:
                await _refuse(scope, send, field)
                return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, field: str) -> None:
    detail = f"{field!r} holds a NUL character (\\u0000), which no parameter accepts"
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get(
        "extensions", {}
    ):  # a server that can't answer an upgrade with HTTP: refuse it this way
        await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
        return
    problem = ProblemError(400, "invalid-request", "Invalid request", detail, field=field)
    body = orjson.dumps(problem_body(problem))
    prefix = "websocket." if scope["type"] == "websocket" else ""
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": f"{prefix}http.response.start", "status": 400, "headers": headers})
    await send({"type": f"{prefix}http.response.body", "body": body})
