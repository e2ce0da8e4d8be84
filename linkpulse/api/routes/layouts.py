"""Dashboard layouts: ``/v1/layouts`` (list, create), ``/v1/layouts/{id}`` (get, save, delete).

A layout is where each widget sits and what it asks (linkpulse/layouts/), saved per
principal (``Principal.id``) under its home tenant. ``shared: true`` lists it to the
tenant's other principals, who open it with their own scope: the layout holds no
data, tenant or seller, and every widget's data comes from the viewer's own key.
Only the owner changes or deletes a layout; the others (and the per-role templates,
served when a user has saved none) are read-only: ``POST`` a copy instead.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

import psycopg
from fastapi import APIRouter, Body, Path, Request, Response
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from linkpulse.api.audit import AuditEntry
from linkpulse.api.auth.roles import Principal
from linkpulse.api.problems import ProblemError, problem_responses
from linkpulse.api.routes._alerting import ReaderPrincipal, in_store
from linkpulse.layouts import (
    TEMPLATES,
    LayoutDocument,
    LayoutError,
    parse_layout,
    template_id,
    template_name_for,
)

router = APIRouter(tags=["layouts"])

MAX_PER_OWNER = 50
_EXAMPLE = {
    "name": "My operations",
    "shared": False,
    "widgets": [
        {"id": "kpis", "kind": "kpis", "x": 0, "y": 0, "w": 12, "h": 4, "options": {}},
        {
            "id": "chart-gmv",
            "kind": "chart",
            "x": 0,
            "y": 4,
            "w": 6,
            "h": 9,
            "options": {"metric": "gmv"},
        },
    ],
}
_BODY = Body(
    ...,
    description="a layout document: name, shared, widgets (kinds kpis, chart, alerts, "
    "top_sellers, heatmap on a 12-column grid); see docs/dashboard.md",
    examples=[_EXAMPLE],
)
_ID = Path(..., max_length=80, description="a layout's id (lay_...) or a template's")


class WidgetOut(BaseModel):
    """One widget: id, kind, grid position and size, options."""

    id: str
    kind: str
    x: int
    y: int
    w: int
    h: int
    options: dict[str, str | int]


class LayoutOut(BaseModel):
    """A layout as a principal sees it: ``mine`` (may change it), ``template``, ``shared``."""

    id: str
    name: str
    owner: str | None
    mine: bool
    shared: bool
    template: bool
    created_at: datetime | None
    updated_at: datetime | None
    widgets: list[WidgetOut]


class LayoutList(BaseModel):
    """The principal's layouts (newest first), the tenant's shared ones, the templates;
    ``current`` is the one the dashboard opens: the newest of its own, else its role's
    template."""

    items: list[LayoutOut]
    current: str


def _tenant(p: Principal) -> str:
    return p.tenant or ""  # the local user (auth off) has no tenant


def _template_out(name: str) -> LayoutOut:
    doc = TEMPLATES[name]
    return LayoutOut(
        id=template_id(name),
        name=doc.name,
        owner=None,
        mine=False,
        shared=True,
        template=True,
        created_at=None,
        updated_at=None,
        widgets=[WidgetOut(**w.to_json()) for w in doc.widgets],
    )


def _row_out(row: dict[str, Any], principal: Principal) -> LayoutOut:
    doc = row["document"]
    return LayoutOut(
        id=row["id"],
        name=row["name"],
        owner=row["owner"],
        mine=row["owner"] == principal.id,
        shared=row["shared"],
        template=False,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        widgets=[WidgetOut(**w) for w in doc.get("widgets", [])],
    )


def _parse(body: Any) -> LayoutDocument:
    try:
        return parse_layout(body)
    except LayoutError as e:
        raise ProblemError(
            422, "invalid-layout", "Invalid layout", e.problem, field=e.field
        ) from None


_COLUMNS = "id, owner, name, shared, document, created_at, updated_at"


async def _visible(request: Request, principal: Principal, layout_id: str) -> dict[str, Any]:
    """The stored layout ``layout_id`` if this principal may see it, else 404."""

    async def work(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM layouts WHERE id = %s AND tenant = %s "
                "AND (owner = %s OR shared)",
                (layout_id, _tenant(principal), principal.id),
            )
            return await cur.fetchone()

    row = await in_store(request, "the layout cannot be read", work)
    if row is None:
        detail = f"no layout {layout_id!r} visible to this key"
        raise ProblemError(404, "not-found", "Not found", detail, field="layout_id")
    return row


def _audit(request: Request, principal: Principal, action: str, layout_id: str) -> None:
    request.app.state.guard.audit.record(
        AuditEntry.of(principal, action, resource=layout_id, status=200)
    )


@router.get(
    "/v1/layouts",
    summary="The dashboard layouts this key may open",
    response_model=LayoutList,
    responses=problem_responses(401, 403, 429, 503),
)
async def list_layouts(request: Request, principal: ReaderPrincipal) -> LayoutList:
    """Own layouts first (newest first), then the tenant's shared ones, then the templates."""

    async def work(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM layouts WHERE tenant = %(t)s "
                "AND (owner = %(o)s OR shared) "
                "ORDER BY owner = %(o)s DESC, updated_at DESC, id LIMIT 500",
                {"t": _tenant(principal), "o": principal.id},
            )
            return await cur.fetchall()

    rows = await in_store(request, "layouts cannot be read", work)
    items = [_row_out(r, principal) for r in rows]
    items += [_template_out(name) for name in TEMPLATES]
    own = [i for i in items if i.mine]
    current = own[0].id if own else template_id(template_name_for(principal.role.value))
    return LayoutList(items=items, current=current)


@router.get(
    "/v1/layouts/{layout_id}",
    summary="One layout (own, shared in the tenant, or a template)",
    response_model=LayoutOut,
    responses=problem_responses(401, 403, 404, 422, 429, 503),
)
async def get_layout(
    request: Request, principal: ReaderPrincipal, layout_id: str = _ID
) -> LayoutOut:
    """Another tenant's layout, or another user's unshared one, is a 404."""
    for name in TEMPLATES:
        if layout_id == template_id(name):
            return _template_out(name)
    return _row_out(await _visible(request, principal, layout_id), principal)


@router.post(
    "/v1/layouts",
    summary="Save a new layout of this key's own",
    response_model=LayoutOut,
    status_code=201,
    responses=problem_responses(401, 403, 409, 422, 429, 503),
)
async def create_layout(
    request: Request, principal: ReaderPrincipal, body: Any = _BODY
) -> LayoutOut:
    """Validated (every problem names its field: ``widgets[2].w``); at most 50 per key."""
    doc = _parse(body)
    layout_id = f"lay_{secrets.token_hex(8)}"

    async def work(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            # one owner's saves are serialised, so the cap holds under concurrent requests
            await cur.execute(
                "SELECT pg_advisory_xact_lock(hashtext('layouts:' || %s))", (principal.id,)
            )
            await cur.execute(
                "SELECT count(*) AS n FROM layouts WHERE tenant = %s AND owner = %s",
                (_tenant(principal), principal.id),
            )
            counted = await cur.fetchone()
            if counted is not None and counted["n"] >= MAX_PER_OWNER:
                return None
            await cur.execute(
                f"INSERT INTO layouts (id, tenant, owner, name, shared, document) "
                f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (
                    layout_id,
                    _tenant(principal),
                    principal.id,
                    doc.name,
                    doc.shared,
                    Jsonb(doc.to_json()),
                ),
            )
            return await cur.fetchone()

    row = await in_store(request, "the layout cannot be saved", work)
    if row is None:
        detail = f"this key has {MAX_PER_OWNER} layouts already; delete one first"
        raise ProblemError(409, "too-many-layouts", "Too many layouts", detail)
    _audit(request, principal, "layout.create", layout_id)
    return _row_out(row, principal)


def _own(row: dict[str, Any], principal: Principal, layout_id: str) -> None:
    if row["owner"] != principal.id:
        detail = f"layout {layout_id} is {row['owner']}'s: only its owner may change it; "
        detail += "POST /v1/layouts saves a copy of your own"
        raise ProblemError(403, "not-owner", "Not the owner", detail, field="layout_id")


def _read_only_template(layout_id: str) -> None:
    if layout_id in {template_id(n) for n in TEMPLATES}:
        detail = "templates are read-only: POST /v1/layouts saves a copy of your own"
        raise ProblemError(403, "template", "Template", detail, field="layout_id")


@router.put(
    "/v1/layouts/{layout_id}",
    summary="Save (replace) a layout of this key's own; shared: true shares it with the tenant",
    response_model=LayoutOut,
    responses=problem_responses(401, 403, 404, 422, 429, 503),
)
async def save_layout(
    request: Request, principal: ReaderPrincipal, layout_id: str = _ID, body: Any = _BODY
) -> LayoutOut:
    """Only the owner; a template or another user's layout is a 403, an unseen one a 404."""
    _read_only_template(layout_id)
    doc = _parse(body)
    _own(await _visible(request, principal, layout_id), principal, layout_id)

    async def work(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE layouts SET name = %s, shared = %s, document = %s, updated_at = now() "
                f"WHERE id = %s AND owner = %s AND tenant = %s RETURNING {_COLUMNS}",
                (
                    doc.name,
                    doc.shared,
                    Jsonb(doc.to_json()),
                    layout_id,
                    principal.id,
                    _tenant(principal),
                ),
            )
            return await cur.fetchone()

    row = await in_store(request, "the layout cannot be saved", work)
    if row is None:  # deleted in between
        detail = f"no layout {layout_id!r} visible to this key"
        raise ProblemError(404, "not-found", "Not found", detail, field="layout_id")
    _audit(request, principal, "layout.save", layout_id)
    return _row_out(row, principal)


@router.delete(
    "/v1/layouts/{layout_id}",
    summary="Delete a layout of this key's own",
    status_code=204,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 422, 429, 503),
)
async def delete_layout(
    request: Request, principal: ReaderPrincipal, layout_id: str = _ID
) -> Response:
    """Its users fall back to their own newest layout, or their role's template."""
    _read_only_template(layout_id)
    _own(await _visible(request, principal, layout_id), principal, layout_id)

    async def work(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(
            "DELETE FROM layouts WHERE id = %s AND owner = %s AND tenant = %s",
            (layout_id, principal.id, _tenant(principal)),
        )

    await in_store(request, "the layout cannot be deleted", work)
    _audit(request, principal, "layout.delete", layout_id)
    return Response(status_code=204)
