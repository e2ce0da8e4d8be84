"""The query API (issue 13 §1; docs/queries.md): catalogue, series, KPIs, top N, ad-hoc
queries, stored anomaly scores and forecasts.

Every route admits the reading roles and reads through ``app.state.analyst_db``:
a read-only transaction as the analyst role, scoped to the principal's tenant
(an admin may name another with ``tenant``) and, for a seller key, to its
seller, enforced by the database's views. Each answer is computed by one
function of ``linkpulse.query.answers`` and recorded in the audit log
(``query.<route>``). Bad input is 422 problem+json naming the field; a seller
or tenant outside the key's scope is 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
import psycopg
import psycopg_pool
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import AwareDatetime

from linkpulse.api.analyst_db import AnalystDb
from linkpulse.api.audit import AuditEntry
from linkpulse.api.auth.guard import resource_of
from linkpulse.api.auth.roles import Principal, Role
from linkpulse.api.http_cache import cached_response, query_cache
from linkpulse.api.problems import ProblemError, problem_responses
from linkpulse.api.routes._alerting import ReaderPrincipal, tenant_scope
from linkpulse.api.routes.query_body import QueryBody, to_table
from linkpulse.query import answers
from linkpulse.query.cache import Reads
from linkpulse.query.catalog import DIMENSIONS, MEASURES, catalog_body
from linkpulse.query.compiler import Plan
from linkpulse.query.sources import chain
from linkpulse.query.timegrid import (
    EARLIEST,
    LATEST,
    PERIODS,
    STEPS,
    QueryError,
    ceil_to,
    check_range,
    kpi_period,
)

router = APIRouter(tags=["query"])
T = TypeVar("T")

_NO_NUL = r"^[^\x00]*$"
_RESPONSES = problem_responses(400, 401, 403, 422, 429, 503)
_READ = Callable[[psycopg.AsyncConnection[Any]], Awaitable[dict[str, Any]]]
_MAX_KPI_RANGE = timedelta(days=366)


def _tenant_q() -> Any:
    return Query(None, max_length=200, pattern=_NO_NUL, description="admins: another tenant")


def _seller_q() -> Any:
    return Query(None, max_length=200, pattern=_NO_NUL, description="one seller's figures")


def _invalid(e: QueryError) -> ProblemError:
    return ProblemError(e.status, "invalid-query", "Invalid query", e.detail, field=e.field)


def scope_of(
    principal: Principal, tenant: str | None, seller: str | None
) -> tuple[str, str | None]:
    """(tenant, seller) a request reads: an admin's pick or the key's own; a seller key's own.

    >>> scope_of(Principal(id="k", role=Role.SELLER, tenant="acme", seller="s1"), None, None)
    ('acme', 's1')
    """
    chosen = tenant_scope(principal, tenant) or principal.tenant
    if chosen is None:
        detail = "this principal has no tenant of its own: name one with tenant="
        raise ProblemError(422, "invalid-query", "Invalid query", detail, field="tenant")
    if principal.role is Role.SELLER:
        if seller is not None and seller != principal.seller:
            detail = f"seller {seller!r} is outside this key's scope ({principal.seller})"
            raise ProblemError(403, "forbidden", "Forbidden", detail, field="seller")
        return chosen, principal.seller
    return chosen, seller


def _name(value: str, table: dict[str, Any], field: str, what: str) -> str:
    if value not in table:
        raise QueryError(field=field, detail=f"unknown {what} {value!r}; one of {', '.join(table)}")
    return value


Span = tuple[str, datetime, datetime]  # (source, start, end) an answer reads


def spans_of(plans: Iterable[Plan]) -> list[Span]:
    """The source ranges of plans (what the cache's watermarks must cover).

    A rollup read is split where the rollup is stale (``answers.fresh``), so
    it may read every finer source down to the raw events: each of them is
    covered, and a write to any of them (new raw events before the rollup's
    refresh included) invalidates the entry.
    """
    return [(s.name, p.start, p.end) for p in plans for s in chain(p.source)]


async def _serve(
    request: Request,
    principal: Principal,
    *,
    kind: str,
    scope: tuple[str, str | None],
    params: dict[str, Any],
    spans: Sequence[Span],
    final: bool,
    read: _READ,
) -> Response:
    """The answer of ``read`` (run in a scoped session) through the query cache: Redis when
    the data it reads has not changed, else computed; audited; ETag and Cache-Control set."""
    tenant, seller = scope
    db: AnalystDb = request.app.state.analyst_db
    # the session's seller: only a seller key is confined by the database; others filter
    session_seller = principal.seller if principal.role is Role.SELLER else None
    counted = {"items": 0}

    async def compute() -> bytes:
        async with db.session(tenant=tenant, seller=session_seller) as conn:
            body = await read(conn)
        items = body.get("points") or body.get("rows") or body.get("items") or body.get("kpis")
        counted["items"] = len(items or [])
        return orjson.dumps(body)

    reads = [Reads(source, tenant, s, e) for source, s, e in spans]
    try:
        answer = await query_cache(request.app).answer(
            kind=f"query.{kind}", query={**params, "seller": seller},
            scope=(tenant, session_seller), reads=reads, compute=compute, principal=principal.id,
        )  # fmt: skip
    except QueryError as e:
        raise _invalid(e) from e
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as e:
        detail = f"the query cannot be answered: the store is unreachable ({type(e).__name__})"
        raise ProblemError(
            503, "store-unavailable", "Store unavailable", detail, headers={"Retry-After": "2"}
        ) from e
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedTable) as e:
        detail = (
            f"the store is not set up for queries ({e.diag.message_primary}): run "
            "`linkpulse db migrate` (it also sets up the analyst roles)"
        )
        raise ProblemError(503, "store-not-ready", "Store not ready", detail) from e
    request.app.state.guard.audit.record(
        AuditEntry.of(
            principal,
            f"query.{kind}",
            resource=resource_of(request),
            scope={
                "tenant": tenant,
                "seller": seller or "",
                **{k: str(v) for k, v in params.items() if v is not None},
            },  # fmt: skip
            items=counted["items"],
            status=200,
            detail="cache hit" if answer.hit else "",
        )
    )
    return cached_response(request, answer, final=final)


def _plan(make: Callable[[], T]) -> T:
    """A pure plan step: its QueryError is a 422 before any connection is taken."""
    try:
        return make()
    except QueryError as e:
        raise _invalid(e) from e


def _settled(end: datetime) -> bool:
    """Whether everything before ``end`` is final (late data can't change it any more)."""
    return end <= _now() - answers.FINAL_AFTER


def _now() -> datetime:
    return datetime.now(UTC)


def _window(
    start: datetime | None, end: datetime | None, span: timedelta, *, forward: bool = False
) -> tuple[datetime, datetime]:
    """[start, end) with defaults (``span`` back from now, or forward from ``start``);
    times outside 1970..9000 are refused before any arithmetic could overflow."""
    for name, t in (("start", start), ("end", end)):
        if t is not None and not EARLIEST <= t < LATEST:
            raise _invalid(
                QueryError(
                    field=name, detail=f"{t.isoformat()} is outside 1970-01-01 .. 9000-01-01"
                )
            )
    now = ceil_to(_now(), 60)  # whole minutes: the 1-minute rollup answers, the cache can hit
    if forward:
        s = start or (end - span if end else now)
        return s, end or s + span
    e = end or (start + span if start else now)
    return start or e - span, e


@router.get("/v1/catalog", summary="The measures, dimensions and grains a query can name",
            responses=_RESPONSES)  # fmt: skip
async def get_catalog(request: Request, principal: ReaderPrincipal) -> dict[str, Any]:
    """The catalogue ``POST /v1/query`` and ``GET /v1/series`` validate against."""
    return catalog_body()


@router.get("/v1/series", summary="One measure over a time range at a step",
            responses=_RESPONSES)  # fmt: skip
async def get_series(
    request: Request,
    principal: ReaderPrincipal,
    metric: str = Query(..., max_length=64, json_schema_extra={"enum": list(MEASURES)}),
    start: AwareDatetime | None = Query(None, description="ISO 8601 with offset; default end - 1h"),
    end: AwareDatetime | None = Query(None, description="exclusive; default now"),
    step: str = Query("1m", max_length=8, json_schema_extra={"enum": list(STEPS)}),
    tenant: str | None = _tenant_q(),
    seller: str | None = _seller_q(),
    type: str | None = Query(None, max_length=64, pattern=_NO_NUL, description="event type"),
) -> Response:
    """Points every ``step`` over [start, end) rounded out to the step; ``source`` names
    the coarsest stored source that answered exactly."""
    scope = scope_of(principal, tenant, seller)
    now = _now()
    start_t, end_t = _window(start, end, timedelta(hours=1))
    max_points = request.app.state.settings.query_max_points
    try:
        _name(metric, MEASURES, "metric", "measure")
    except QueryError as e:
        raise _invalid(e) from e
    plan = _plan(lambda: answers.series_plan(
        metric=metric, start=start_t, end=end_t, step=step, seller=scope[1], event_type=type,
        max_points=max_points,
    ))  # fmt: skip
    params = {"metric": metric, "start": plan.start, "end": plan.end, "step": step, "type": type}
    return await _serve(
        request,
        principal,
        kind="series",
        scope=scope,
        params=params,
        spans=spans_of([plan]),
        final=_settled(plan.end),
        read=lambda conn: answers.series(
            conn,
            metric=metric,
            start=start_t,
            end=end_t,
            step=step,
            tenant=scope[0],
            seller=scope[1],
            event_type=type,
            max_points=max_points,
            now=now,
        ),  # fmt: skip
    )


@router.get("/v1/kpis", summary="Headline numbers with period-over-period change",
            responses=_RESPONSES)  # fmt: skip
async def get_kpis(
    request: Request,
    principal: ReaderPrincipal,
    period: str = Query("24h", max_length=8, json_schema_extra={"enum": list(PERIODS)}),
    start: AwareDatetime | None = Query(None, description="with end: an explicit period"),
    end: AwareDatetime | None = Query(None, description="exclusive"),
    tenant: str | None = _tenant_q(),
    seller: str | None = _seller_q(),
) -> Response:
    """GMV, orders, conversion, active users, payment failure rate and refunds over the
    period, the period before it and the same period a week earlier."""
    scope = scope_of(principal, tenant, seller)
    try:
        if (start is None) != (end is None):
            raise QueryError(
                "end" if end is None else "start", "give both start and end, or neither"
            )
        if start is not None and end is not None:
            s, e = _window(start, end, timedelta(0))
            if e - s > _MAX_KPI_RANGE:
                raise QueryError(field="start", detail="a KPI period is at most 366 days")
        else:
            s, e = kpi_period(period, _now())
    except QueryError as err:
        raise _invalid(err) from err
    return await _serve(
        request,
        principal,
        kind="kpis",
        scope=scope,
        params={"start": s, "end": e},
        spans=spans_of(
            p for period in _plan(lambda: answers.kpi_plans(s, e, scope[1])) for p in period
        ),  # fmt: skip
        final=_settled(e),
        read=lambda conn: answers.kpis(conn, start=s, end=e, tenant=scope[0], seller=scope[1]),
    )


@router.get("/v1/top", summary="Top N groups of a dimension by a measure",
            responses=_RESPONSES)  # fmt: skip
async def get_top(
    request: Request,
    principal: ReaderPrincipal,
    measure: str = Query("gmv", max_length=64, json_schema_extra={"enum": list(MEASURES)}),
    dimension: str = Query(
        "seller_id", max_length=64, json_schema_extra={"enum": list(DIMENSIONS)}
    ),
    limit: int = Query(10, ge=1, le=1000),
    start: AwareDatetime | None = Query(None, description="default end - 24h"),
    end: AwareDatetime | None = Query(None, description="exclusive; default now"),
    tenant: str | None = _tenant_q(),
    seller: str | None = _seller_q(),
) -> Response:
    """The largest ``limit`` groups, largest first (top sellers by GMV)."""
    scope = scope_of(principal, tenant, seller)
    start_t, end_t = _window(start, end, timedelta(hours=24))
    try:
        _name(measure, MEASURES, "measure", "measure")
        _name(dimension, DIMENSIONS, "dimension", "dimension")
    except QueryError as e:
        raise _invalid(e) from e
    params = {"measure": measure, "dimension": dimension, "limit": limit, "start": start_t,
              "end": end_t}  # fmt: skip
    plan = _plan(lambda: answers.top_plan(
        measure=measure, dimension=dimension, limit=limit, start=start_t, end=end_t,
        seller=scope[1],
    ))  # fmt: skip
    return await _serve(
        request,
        principal,
        kind="top",
        scope=scope,
        params=params,
        spans=spans_of([plan]),
        final=_settled(end_t),
        read=lambda conn: answers.top(
            conn,
            measure=measure,
            dimension=dimension,
            limit=limit,
            start=start_t,
            end=end_t,
            tenant=scope[0],
            seller=scope[1],
        ),  # fmt: skip
    )


@router.post("/v1/query", summary="A multi-dimensional query over the catalogue",
             responses=_RESPONSES)  # fmt: skip
async def post_query(request: Request, principal: ReaderPrincipal, body: QueryBody) -> Response:
    """Measures by dimensions (and time buckets of ``grain``), filtered, ordered, paged by
    ``next_cursor``; compiled to parameterised SQL over the coarsest exact source."""
    scope = scope_of(principal, body.tenant, body.seller)
    try:
        table = to_table(body)
    except QueryError as e:
        raise _invalid(e) from e
    max_points = request.app.state.settings.query_max_points
    return await _serve(
        request,
        principal,
        kind="query",
        scope=scope,
        params={**table.normalised, "cursor": table.cursor},
        spans=spans_of(
            [_plan(lambda: answers.query_plan(table, seller=scope[1], max_points=max_points))]
        ),  # fmt: skip
        final=_settled(table.end),
        read=lambda conn: answers.query(
            conn, table, tenant=scope[0], seller=scope[1], max_points=max_points
        ),
    )


@router.get("/v1/anomalies", summary="Stored anomaly scores, newest first",
            responses=_RESPONSES)  # fmt: skip
async def get_anomalies(
    request: Request,
    principal: ReaderPrincipal,
    start: AwareDatetime | None = Query(None, description="default end - 24h"),
    end: AwareDatetime | None = Query(None, description="exclusive; default now"),
    metric: str | None = Query(None, max_length=64, pattern=_NO_NUL),
    seller: str | None = _seller_q(),
    min_score: float | None = Query(None, ge=0, le=1),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, max_length=4096, pattern=_NO_NUL),
    tenant: str | None = _tenant_q(),
) -> Response:
    """Scores of the tenant's series (a seller's: its own series), keyset-paged."""
    scope = scope_of(principal, tenant, seller)
    start_t, end_t = _window(start, end, timedelta(hours=24))
    params = {"start": start_t, "end": end_t, "metric": metric, "min_score": min_score,
              "limit": limit, "cursor": cursor}  # fmt: skip
    _plan(lambda: check_range(start_t, end_t))
    return await _serve(
        request,
        principal,
        kind="anomalies",
        scope=scope,
        params=params,
        spans=[("anomaly_scores", start_t, end_t)],
        final=False,  # a revised window is re-scored
        read=lambda conn: answers.anomalies(
            conn,
            start=start_t,
            end=end_t,
            metric=metric,
            seller=scope[1],
            min_score=min_score,
            limit=limit,
            cursor=cursor,
            tenant=scope[0],
        ),  # fmt: skip
    )


@router.get("/v1/forecasts", summary="Stored forecasts, in time order",
            responses=_RESPONSES)  # fmt: skip
async def get_forecasts(
    request: Request,
    principal: ReaderPrincipal,
    start: AwareDatetime | None = Query(None, description="default now"),
    end: AwareDatetime | None = Query(None, description="exclusive; default start + 24h"),
    metric: str | None = Query(None, max_length=64, pattern=_NO_NUL),
    seller: str | None = _seller_q(),
    limit: int = Query(500, ge=1, le=5000),
    cursor: str | None = Query(None, max_length=4096, pattern=_NO_NUL),
    tenant: str | None = _tenant_q(),
) -> Response:
    """Forecast points (mean, 80% and 95% intervals) of the tenant's series, keyset-paged."""
    scope = scope_of(principal, tenant, seller)
    start_t, end_t = _window(start, end, timedelta(hours=24), forward=True)
    params = {"start": start_t, "end": end_t, "metric": metric, "limit": limit,
              "cursor": cursor}  # fmt: skip
    _plan(lambda: check_range(start_t, end_t))
    return await _serve(
        request,
        principal,
        kind="forecasts",
        scope=scope,
        params=params,
        spans=[("forecasts", start_t, end_t)],
        final=False,  # a newer forecast replaces a point
        read=lambda conn: answers.forecasts(
            conn,
            start=start_t,
            end=end_t,
            metric=metric,
            seller=scope[1],
            limit=limit,
            cursor=cursor,
            tenant=scope[0],
        ),  # fmt: skip
    )
