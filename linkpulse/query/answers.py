"""The query API's answers: one async function per route, reading one scoped session.

Each takes an open analyst session (``AnalystDb.session``: read-only, the
analyst role, the principal's tenant and seller enforced by the views) and
validated inputs, and returns the response body as a dict. Nothing here
aggregates what the store already has: the SQL is compiled for the coarsest
source that answers exactly (``sources.choose``) and the body names it.

A rollup answers only its fresh buckets: ``fresh`` asks the store (in the
same scoped session, one pipelined round trip for every plan of an answer)
where each rollup's first stale bucket in range is, and splits the read there
(``sources.split``), so an answer always equals the raw events, even minutes
before the next refresh. ``source`` names the coarsest source that answered,
``sources`` every one.

>>> _fill([(datetime(2026, 12, 1, 0, 1, tzinfo=UTC), 4)], datetime(2026, 12, 1, tzinfo=UTC),
...       datetime(2026, 12, 1, 0, 2, tzinfo=UTC), 60, 0)
[{'t': '2026-12-01T00:00:00Z', 'value': 0}, {'t': '2026-12-01T00:01:00Z', 'value': 4}]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from linkpulse.operators.metrics import dims_key
from linkpulse.query import cursor as cursors
from linkpulse.query.catalog import DIMENSIONS, KPI_NAMES, MEASURES, Measure
from linkpulse.query.compiler import Compiled, Filter, Plan, compile_plan
from linkpulse.query.sources import RAW, choose, split
from linkpulse.query.timegrid import (
    QueryError,
    ceil_to,
    check_points,
    check_range,
    floor_to,
    step_seconds,
)

__all__ = [
    "FINAL_AFTER",
    "fresh",
    "kpi_plans",
    "query_plan",
    "series_plan",
    "top_plan",
    "Table",
    "anomalies",
    "forecasts",
    "iso",
    "kpis",
    "query",
    "series",
    "top",
]

# Late events revise a bucket for about this long after it closes; a period that
# ended earlier than this is final (``final_before``: cacheable for good).
FINAL_AFTER = timedelta(hours=1)


def iso(t: datetime) -> str:
    """ISO 8601 in UTC with ``Z``."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _num(v: Any) -> Any:
    if v is None or isinstance(v, int | float | str):
        return v
    if isinstance(v, datetime):
        return iso(v)
    return float(v)


async def _rows(conn: psycopg.AsyncConnection[Any], compiled: Compiled) -> list[tuple[Any, ...]]:
    cur = await conn.execute(compiled.statement, compiled.params)
    return list(await cur.fetchall())


_STALE = "SELECT rollup, stale_from FROM analyst.rollup_stale(%s::timestamptz, %s::timestamptz)"


async def fresh(conn: psycopg.AsyncConnection[Any], plans: Sequence[Plan]) -> list[Plan]:
    """``plans`` with every rollup read split where the rollup stops being fresh.

    One round trip for all of them (pipelined). A plan reading no rollup is
    returned as it is.
    """
    asks = [p for p in plans if p.source.rollup]
    if not asks:
        return list(plans)
    async with conn.pipeline():
        curs = [await conn.execute(_STALE, (p.start, p.end)) for p in asks]
    stale = {id(p): dict(await cur.fetchall()) for p, cur in zip(asks, curs, strict=True)}
    return [
        replace(p, segments=split(p.source, p.start, p.end, stale[id(p)])) if id(p) in stale else p
        for p in plans
    ]


def source_names(plan: Plan) -> list[str]:
    """The sources a plan reads, coarsest first."""
    return [source.name for source, _, _ in plan.reads]


def _fill(
    rows: Sequence[tuple[Any, ...]], start: datetime, end: datetime, step_s: int, empty: Any
) -> list[dict[str, Any]]:
    """Every bucket of [start, end), ``empty`` where the source has no row."""
    found = {t: v for t, v in rows}
    out, t, step = [], start, timedelta(seconds=step_s)
    while t < end:
        out.append({"t": iso(t), "value": _num(found.get(t, empty))})
        t += step
    return out


def _empty(m: Measure) -> Any:
    return None if m.kind == "ratio" else 0


def final_before(end: datetime, step_s: int, now: datetime) -> datetime:
    """Buckets starting before this are closed for good (late data can no longer land)."""
    return min(end, floor_to(now - FINAL_AFTER, step_s))


def _type_filter(event_type: str | None) -> list[Filter]:
    return [Filter(DIMENSIONS["type"], "eq", (event_type,))] if event_type else []


def series_plan(
    *,
    metric: str,
    start: datetime,
    end: datetime,
    step: str,
    seller: str | None,
    event_type: str | None,
    max_points: int,
) -> Plan:
    """What ``series`` reads: [start, end) rounded out to the step, on the coarsest source."""
    step_s = step_seconds(step)
    check_range(start, end)
    start, end = floor_to(start, step_s), ceil_to(end, step_s)
    check_points(start, end, step_s, max_points=max_points, field="step")
    m = MEASURES[metric]
    filters = _type_filter(event_type)
    source = choose([m], [], start, end, step_s, filtered=bool(filters or seller))
    return Plan([m], [], start, end, source, grain_s=step_s, seller=seller, filters=filters)


async def series(
    conn: psycopg.AsyncConnection[Any],
    *,
    metric: str,
    start: datetime,
    end: datetime,
    step: str,
    tenant: str,
    seller: str | None,
    event_type: str | None,
    max_points: int,
    now: datetime,
) -> dict[str, Any]:
    """``GET /v1/series``: one measure per step over [start, end) rounded out to the step."""
    plan = series_plan(
        metric=metric, start=start, end=end, step=step, seller=seller, event_type=event_type,
        max_points=max_points,
    )  # fmt: skip
    step_s = plan.grain_s or 60
    (plan,) = await fresh(conn, [plan])
    rows = await _rows(conn, compile_plan(plan))
    names = source_names(plan)
    return {
        "metric": metric,
        "tenant": tenant,
        "seller": seller,
        "type": event_type,
        "step": step,
        "source": names[0],
        "sources": names,
        "start": iso(plan.start),
        "end": iso(plan.end),
        "points": _fill(rows, plan.start, plan.end, step_s, _empty(plan.measures[0])),
        "final_before": iso(final_before(plan.end, step_s, now)),
    }


def _change(value: Any, base: Any) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return float(value) / float(base) - 1


def _period_plans(start: datetime, end: datetime, seller: str | None) -> list[Plan]:
    """The KPIs of [start, end): the additive ones from one rollup, users from raw events."""
    groups: dict[bool, list[Measure]] = {}
    for name in KPI_NAMES:
        m = MEASURES[name]
        groups.setdefault(m.raw_only, []).append(m)
    return [
        Plan(ms, [], start, end, choose(ms, [], start, end, None, filtered=seller is not None),
             seller=seller)
        for ms in groups.values()
    ]  # fmt: skip


def kpi_plans(start: datetime, end: datetime, seller: str | None) -> list[list[Plan]]:
    """What ``kpis`` reads: the period, the one before it, and the same a week earlier."""
    check_range(start, end)
    length, week = end - start, timedelta(days=7)
    periods = ((start, end), (start - length, start), (start - week, end - week))
    return [_period_plans(s, e, seller) for s, e in periods]


async def _period_values(
    conn: psycopg.AsyncConnection[Any], periods: list[list[Plan]]
) -> list[tuple[dict[str, Any], dict[str, list[str]]]]:
    """Each period's KPI values and sources; the statements are pipelined (one round trip)."""
    flat = await fresh(conn, [p for plans in periods for p in plans])
    it = iter(flat)
    periods = [[next(it) for _ in plans] for plans in periods]
    async with conn.pipeline():
        cursors_ = [
            [(plan, await conn.execute(c.statement, c.params))
             for plan, c in ((p, compile_plan(p)) for p in plans)]
            for plans in periods
        ]  # fmt: skip
    out = []
    for period in cursors_:
        values: dict[str, Any] = {}
        sources: dict[str, list[str]] = {}
        for plan, cur in period:
            row = await cur.fetchone()
            for m, v in zip(plan.measures, row or (), strict=True):
                values[m.name], sources[m.name] = _num(v), source_names(plan)
        out.append((values, sources))
    return out


async def kpis(
    conn: psycopg.AsyncConnection[Any],
    *,
    start: datetime,
    end: datetime,
    tenant: str,
    seller: str | None,
) -> dict[str, Any]:
    """``GET /v1/kpis``: the headline numbers, against the period before and a week before."""
    (cur, cur_src), (prev, _), (ago, _) = await _period_values(conn, kpi_plans(start, end, seller))
    items = []
    for name in KPI_NAMES:
        m = MEASURES[name]
        items.append(
            {
                "name": name,
                "label": m.label,
                "unit": m.unit,
                "value": cur[name],
                "previous": prev[name],
                "change": _change(cur[name], prev[name]),
                "week_ago": ago[name],
                "change_week": _change(cur[name], ago[name]),
                "source": cur_src[name][0],
                "sources": cur_src[name],
            }
        )
    rollup = next((s[0] for s in cur_src.values() if s[0] != RAW.name), RAW.name)
    return {
        "tenant": tenant,
        "seller": seller,
        "start": iso(start),
        "end": iso(end),
        "source": rollup,
        "sources": sorted({s for names in cur_src.values() for s in names}),
        "kpis": items,
    }


def top_plan(
    *, measure: str, dimension: str, limit: int, start: datetime, end: datetime, seller: str | None
) -> Plan:
    """What ``top`` reads."""
    check_range(start, end)
    m, d = MEASURES[measure], DIMENSIONS[dimension]
    source = choose([m], [d], start, end, None, filtered=seller is not None)
    return Plan([m], [d], start, end, source, seller=seller, order=[(m.name, True)], limit=limit)


async def top(
    conn: psycopg.AsyncConnection[Any],
    *,
    measure: str,
    dimension: str,
    limit: int,
    start: datetime,
    end: datetime,
    tenant: str,
    seller: str | None,
) -> dict[str, Any]:
    """``GET /v1/top``: the ``limit`` largest groups of ``dimension`` by ``measure``."""
    plan = top_plan(measure=measure, dimension=dimension, limit=limit, start=start, end=end,
                    seller=seller)  # fmt: skip
    (plan,) = await fresh(conn, [plan])
    names = source_names(plan)
    rows = await _rows(conn, compile_plan(plan))
    return {
        "measure": measure,
        "dimension": dimension,
        "tenant": tenant,
        "seller": seller,
        "start": iso(start),
        "end": iso(end),
        "source": names[0],
        "sources": names,
        "rows": [{"key": _num(k), "value": _num(v)} for k, v in rows],
    }


@dataclass(frozen=True)
class Table:
    """A validated ``POST /v1/query`` (names checked against the catalogue)."""

    measures: list[str]
    dimensions: list[str]
    filters: list[Filter]
    start: datetime
    end: datetime
    grain: str | None
    order: list[tuple[str, bool]]
    limit: int
    cursor: str | None = None
    normalised: dict[str, Any] = field(default_factory=dict)  # for the cursor's fingerprint


def query_plan(q: Table, *, seller: str | None, max_points: int) -> Plan:
    """What ``query`` reads (the first page: no cursor key yet)."""
    check_range(q.start, q.end)
    grain_s = step_seconds(q.grain, "grain") if q.grain else None
    if grain_s is not None:
        check_points(q.start, q.end, grain_s, max_points=max_points, field="grain")
    measures = [MEASURES[n] for n in q.measures]
    dims = [DIMENSIONS[n] for n in q.dimensions]
    source = choose(measures, dims, q.start, q.end, grain_s, filtered=bool(q.filters or seller))
    return Plan(
        measures,
        dims,
        q.start,
        q.end,
        source,
        grain_s=grain_s,
        seller=seller,
        filters=q.filters,
        order=q.order,
        limit=q.limit + 1,  # one more tells whether there is a next page
    )


async def query(
    conn: psycopg.AsyncConnection[Any],
    q: Table,
    *,
    tenant: str,
    seller: str | None,
    max_points: int,
) -> dict[str, Any]:
    """``POST /v1/query``: measures by dimensions (and time), one keyset page at a time."""
    (base,) = await fresh(conn, [query_plan(q, seller=seller, max_points=max_points)])
    names = source_names(base)
    fp = cursors.fingerprint({**q.normalised, "tenant": tenant, "seller": seller})
    after = None
    if q.cursor is not None:
        after = cursors.decode(q.cursor, fp, compile_plan(base).key_kinds)
    compiled = compile_plan(replace(base, after=after))
    rows = await _rows(conn, compiled)
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    next_cursor = cursors.encode(fp, compiled.key_of(rows[-1])) if more and rows else None
    return {
        "columns": [{"name": c.name, "type": c.kind} for c in compiled.columns],
        "rows": [[_num(v) for v in row] for row in rows],
        "source": names[0],
        "sources": names,
        "tenant": tenant,
        "seller": seller,
        "next_cursor": next_cursor,
    }


_ANOMALIES = """
SELECT series, time, score, model, details FROM analyst.anomaly_scores
WHERE time >= %(start)s::timestamptz AND time < %(end)s::timestamptz
  AND (%(metric)s::text IS NULL OR split_part(series, '|', 2) = %(metric)s::text)
  AND (%(dims)s::text IS NULL OR split_part(series, '|', 3) = %(dims)s::text)
  AND (%(min_score)s::float8 IS NULL OR score >= %(min_score)s::float8)
  AND (%(after_time)s::timestamptz IS NULL OR (time, series, model)
       < (%(after_time)s::timestamptz, %(after_series)s::text, %(after_model)s::text))
ORDER BY time DESC, series DESC, model DESC
LIMIT %(limit)s::bigint
"""

_FORECASTS = """
SELECT series, model, step, time, issued_at, metric, mean, lower80, upper80, lower95, upper95
FROM analyst.forecasts
WHERE time >= %(start)s::timestamptz AND time < %(end)s::timestamptz
  AND (%(metric)s::text IS NULL OR metric = %(metric)s::text)
  AND (%(dims)s::text IS NULL OR split_part(series, '|', 3) = %(dims)s::text)
  AND (%(after_time)s::timestamptz IS NULL OR (time, series, model, step)
       > (%(after_time)s::timestamptz, %(after_series)s::text, %(after_model)s::text,
          %(after_step)s::text))
ORDER BY time, series, model, step
LIMIT %(limit)s::bigint
"""


def _listing_params(
    kind: str,
    fp_query: dict[str, Any],
    cursor: str | None,
    key_names: Sequence[str],
) -> tuple[str, dict[str, Any]]:
    fp = cursors.fingerprint({"kind": kind, **fp_query})
    kinds = ["time", *["text"] * (len(key_names) - 1)]
    key = cursors.decode(cursor, fp, kinds) if cursor else [None] * len(key_names)
    if cursor and any(v is None for v in key):
        raise QueryError(
            field="cursor", detail="the cursor's key is incomplete: it was altered", status=400
        )
    return fp, {f"after_{n}": v for n, v in zip(key_names, key, strict=True)}


def _seller_dims(seller: str | None) -> str | None:
    return dims_key({"seller_id": seller}) if seller is not None else None


async def anomalies(
    conn: psycopg.AsyncConnection[Any],
    *,
    start: datetime,
    end: datetime,
    metric: str | None,
    seller: str | None,
    min_score: float | None,
    limit: int,
    cursor: str | None,
    tenant: str,
) -> dict[str, Any]:
    """``GET /v1/anomalies``: stored scores, newest first, keyset-paged."""
    check_range(start, end)
    fp_query = {"start": iso(start), "end": iso(end), "metric": metric, "seller": seller,
                "min_score": min_score, "limit": limit, "tenant": tenant}  # fmt: skip
    names = ("time", "series", "model")
    fp, after = _listing_params("anomalies", fp_query, cursor, names)
    params = {"start": start, "end": end, "metric": metric, "dims": _seller_dims(seller),
              "min_score": min_score, "limit": limit + 1, **after}  # fmt: skip
    cur = await conn.execute(_ANOMALIES, params)
    rows = await cur.fetchall()
    more, rows = len(rows) > limit, rows[:limit]
    items = []
    for series_key, time, score, model, details in rows:
        d = details if isinstance(details, dict) else {}
        items.append(
            {
                "series": series_key,
                "metric": series_key.split("|")[1] if series_key.count("|") >= 1 else None,
                "time": iso(time),
                "score": score,
                "raw_score": d.get("raw"),
                "value": d.get("value"),
                "expected": d.get("expected"),
                "lower": d.get("lower"),
                "upper": d.get("upper"),
                "direction": d.get("direction"),
                "warm": d.get("warm"),
                "model": model,
                "explanation": d.get("explanation"),
                "details": d.get("details") if isinstance(d.get("details"), dict) else {},
            }
        )
    last = rows[-1] if rows else None
    next_cursor = cursors.encode(fp, [last[1], last[0], last[3]]) if more and last else None
    return {"tenant": tenant, "seller": seller, "source": "anomaly_scores", "items": items,
            "next_cursor": next_cursor}  # fmt: skip


async def forecasts(
    conn: psycopg.AsyncConnection[Any],
    *,
    start: datetime,
    end: datetime,
    metric: str | None,
    seller: str | None,
    limit: int,
    cursor: str | None,
    tenant: str,
) -> dict[str, Any]:
    """``GET /v1/forecasts``: stored forecast points, in time order, keyset-paged."""
    check_range(start, end)
    fp_query = {"start": iso(start), "end": iso(end), "metric": metric, "seller": seller,
                "limit": limit, "tenant": tenant}  # fmt: skip
    names = ("time", "series", "model", "step")
    fp, after = _listing_params("forecasts", fp_query, cursor, names)
    params = {"start": start, "end": end, "metric": metric, "dims": _seller_dims(seller),
              "limit": limit + 1, **after}  # fmt: skip
    cur = await conn.execute(_FORECASTS, params)
    rows = await cur.fetchall()
    more, rows = len(rows) > limit, rows[:limit]
    items = [
        {
            "series": r[0],
            "model": r[1],
            "step": r[2],
            "time": iso(r[3]),
            "issued_at": iso(r[4]),
            "metric": r[5],
            "value": r[6],
            "lower": r[7],
            "upper": r[8],
            "lower95": r[9],
            "upper95": r[10],
        }
        for r in rows
    ]
    last = rows[-1] if rows else None
    next_cursor = (
        cursors.encode(fp, [last[3], last[0], last[1], last[2]]) if more and last else None
    )
    return {"tenant": tenant, "seller": seller, "source": "forecasts", "items": items,
            "next_cursor": next_cursor}  # fmt: skip
