"""The dashboard: its built bundle at ``/`` and ``/assets/...``, and ``GET /v1/me``.

The bundle is built from ``web/`` by ``bash scripts/install.sh`` (``npm ci && npm run
build`` there) into ``linkpulse/api/static/dashboard/``, which the Python package ships.
When it is missing, ``/`` answers 503 with a page (or problem+json, for a client that
does not ask for HTML) saying how to build it. The page itself is public: everything
it shows comes from the public API with the user's own key (docs/dashboard.md).
``/v1/me`` tells the page whose key it holds, so it can say whose data it shows.

>>> _inside(Path("/a/b"), Path("/a/b/c.js")), _inside(Path("/a/b"), Path("/a/x.js"))
(True, False)
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel

from linkpulse.api.problems import ProblemError, problem_responses
from linkpulse.api.routes._alerting import ReaderPrincipal, in_store

router = APIRouter(tags=["dashboard"])

BUNDLE = Path(__file__).resolve().parents[1] / "static" / "dashboard"
BUILD_HINT = "bash scripts/install.sh (or: cd web && npm ci && npm run build)"
_MISSING_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>linkpulse: dashboard not built</title></head>
<body><main><h1>The dashboard is not built</h1>
<p>This API serves the dashboard from <code>{path}</code>, which has no
<code>index.html</code>. Build it from a clone of the repository with</p>
<pre>{hint}</pre>
<p>(Node.js 20 and npm are needed), then reload this page. The API itself works without it:
see <a href="/docs">/docs</a>.</p></main></body></html>
"""


def _bundle(request: Request) -> Path:
    # tests point app.state.dashboard_dir at a bundle of their own
    found: Path | None = getattr(request.app.state, "dashboard_dir", None)
    return found if found is not None else BUNDLE


def _inside(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


@router.get("/", include_in_schema=False)
async def dashboard(request: Request) -> Response:
    """The page (never cached: it names the hashed assets of the current build)."""
    root = _bundle(request)
    index = root / "index.html"
    if not index.is_file():
        if "text/html" in request.headers.get("accept", ""):
            page = _MISSING_PAGE.format(path=root, hint=BUILD_HINT)
            return HTMLResponse(page, status_code=503, headers={"Cache-Control": "no-store"})
        detail = f"the dashboard bundle is missing ({index}); build it: {BUILD_HINT}"
        raise ProblemError(503, "dashboard-not-built", "Dashboard not built", detail)
    return FileResponse(
        index, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"}
    )


@router.get("/assets/{name:path}", include_in_schema=False)
async def asset(request: Request, name: str) -> Response:
    """A built asset; its name carries its content hash, so it is cached for good."""
    root = (_bundle(request) / "assets").resolve()
    path = (root / name).resolve()
    if not _inside(root, path) or not path.is_file():
        raise ProblemError(404, "not-found", "Not found", f"no dashboard asset {name!r}")
    return FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable"})


class Me(BaseModel):
    """Who a key is: the page shows whose data it holds (``acme — seller s-17``)."""

    id: str
    role: str
    tenant: str | None
    seller: str | None
    kind: str
    expires_at: datetime | None
    tenants: list[str]  # admins: the tenants it may pick (from the keys); others: its own


@router.get(
    "/v1/me",
    summary="The caller's principal: id, role, tenant, seller",
    response_model=Me,
    responses=problem_responses(401, 403, 429, 503),
)
async def me(request: Request, principal: ReaderPrincipal) -> Me:
    """For an admin, ``tenants`` lists the tenants its keys name (the tenant picker)."""
    tenants = [principal.tenant] if principal.tenant else []
    if principal.all_tenants:

        async def work(conn: psycopg.AsyncConnection[Any]) -> list[str]:
            cur = await conn.execute(
                "SELECT DISTINCT tenant FROM api_keys WHERE revoked_at IS NULL "
                "ORDER BY tenant LIMIT 1000"
            )
            return [t for (t,) in await cur.fetchall()]

        tenants = sorted(set(tenants) | set(await in_store(request, "keys cannot be read", work)))
    return Me(
        id=principal.id,
        role=principal.role.value,
        tenant=principal.tenant,
        seller=principal.seller,
        kind=principal.kind,
        expires_at=principal.expires_at,
        tenants=tenants,
    )
