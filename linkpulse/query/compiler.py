"""A validated query plan to parameterised SQL over one ``analyst`` view.

Every name in the SQL comes from the catalogue or the chosen ``Source``
(composed with ``psycopg.sql``); every value the caller sent (times, sellers,
filter values, cursor keys) is a bound parameter with an explicit type. The
shape is one grouped ``SELECT`` (time bucket, dimensions, measures) over the
chosen view or, for a read split at a rollup's first stale bucket
(``Plan.segments``, ``sources.split``), over the ``UNION ALL`` of each part's
rows in the rollups' shape (a raw event is a row of one event), each part
with its own time bounds and filters so its indexes still serve; wrapped
when paged: ``SELECT * FROM (...) q WHERE <after the cursor's key> ORDER BY
<key> LIMIT n``. The sort key is the requested order followed by every group
column, so it is unique and a keyset cursor is exact.

>>> from datetime import datetime, UTC
>>> from linkpulse.query.catalog import MEASURES
>>> from dataclasses import replace
>>> from linkpulse.query.sources import RAW, ROLLUPS
>>> day = datetime(2026, 12, 1, tzinfo=UTC)
>>> plan = Plan([MEASURES["orders"]], [], day, day.replace(day=2), ROLLUPS[1], grain_s=3600)
>>> c = compile_plan(plan)
>>> [col.name for col in c.columns], len(c.params)
(['time', 'orders'], 4)
>>> parts = [(ROLLUPS[1], day, day.replace(hour=5)), (RAW, day.replace(hour=5), day.replace(day=2))]
>>> c = compile_plan(replace(plan, segments=parts))
>>> [col.name for col in c.columns], len(c.params), "UNION ALL" in c.statement.as_string(None)
(['time', 'orders'], 6, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final

from psycopg import sql

from linkpulse.query.catalog import Dimension, Measure
from linkpulse.query.sources import Segment, Source
from linkpulse.query.timegrid import ORIGIN

__all__ = ["Column", "Compiled", "Filter", "Plan", "compile_plan"]

_SQL_TYPE: Final = {"text": "text", "int": "bigint", "float": "float8", "time": "timestamptz"}


@dataclass(frozen=True)
class Filter:
    """``dimension op values`` (op: eq, ne, in), values already typed for the dimension."""

    dimension: Dimension
    op: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Plan:
    """What to read: measures by dimensions (and time buckets of ``grain_s``) over a range."""

    measures: Sequence[Measure]
    dimensions: Sequence[Dimension]
    start: datetime
    end: datetime
    source: Source
    grain_s: int | None = None
    seller: str | None = None
    filters: Sequence[Filter] = ()
    order: Sequence[tuple[str, bool]] = ()  # (column name, descending)
    limit: int | None = None
    after: Sequence[Any] | None = None  # the sort key of the previous page's last row
    # The parts of a split read (sources.split); empty: ``source`` answers all of it.
    segments: Sequence[Segment] = ()

    @property
    def reads(self) -> list[Segment]:
        """The (source, start, end) parts it reads."""
        return list(self.segments) or [(self.source, self.start, self.end)]


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # text, int, float, time


@dataclass(frozen=True)
class Compiled:
    statement: sql.Composed
    params: list[Any]
    columns: list[Column]
    key: list[tuple[Column, bool]] = field(default_factory=list)  # sort key, descending

    @property
    def key_kinds(self) -> list[str]:
        return [c.kind for c, _ in self.key]

    def key_of(self, row: Sequence[Any]) -> list[Any]:
        """The sort key of a result row (for the next page's cursor)."""
        index = {c.name: i for i, c in enumerate(self.columns)}
        return [row[index[c.name]] for c, _ in self.key]


def _types(types: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Literal(t) for t in types)


def _count(source: Source, types: Sequence[str]) -> sql.Composable:
    base: sql.Composable = sql.SQL("sum(events)" if source.rollup else "count(*)")
    if types:
        base = sql.SQL("{} FILTER (WHERE type IN ({}))").format(base, _types(types))
    return sql.SQL("coalesce({}, 0)").format(base)


def _measure(m: Measure, source: Source) -> sql.Composable:
    if m.kind == "count":
        return sql.SQL("{}::bigint").format(_count(source, m.types))
    if m.kind == "sum":
        col = sql.SQL("revenue" if source.rollup else "amount")
        return sql.SQL("coalesce(sum({}) FILTER (WHERE type IN ({})), 0)::float8").format(
            col, _types(m.types)
        )
    if m.kind == "ratio":
        return sql.SQL("({})::float8 / nullif({}, 0)").format(
            _count(source, m.numerator), _count(source, m.denominator)
        )
    if m.kind == "distinct":
        return sql.SQL("count(DISTINCT user_id)::bigint")
    return sql.SQL("coalesce(sum(value), 0)::bigint")  # window: the flow's counts add up


def _dimension(d: Dimension, time_col: sql.Composable) -> sql.Composable:
    if d.name == "hour_of_day":
        return sql.SQL("extract(hour FROM {} AT TIME ZONE 'UTC')::int").format(time_col)
    if d.name == "day_of_week":
        return sql.SQL("extract(dow FROM {} AT TIME ZONE 'UTC')::int").format(time_col)
    return sql.Identifier(d.name)


def _where(plan: Plan, time_col: sql.Composable, params: list[Any]) -> list[sql.Composable]:
    conds: list[sql.Composable] = [
        sql.SQL("{} >= %s::timestamptz").format(time_col),
        sql.SQL("{} < %s::timestamptz").format(time_col),
    ]
    params += [plan.start, plan.end]
    source = plan.source
    if source.name == "metric_windows":
        metric = plan.measures[0].window_metric or ""
        conds.append(
            sql.SQL("metric = {} AND \"window\" = '1m' AND dims_key = ''").format(
                sql.Literal(metric)
            )
        )
        return conds
    types = [m.all_types for m in plan.measures]
    if all(types):  # every measure names its types: the (tenant, type, time) index serves
        conds.append(
            sql.SQL("type IN ({})").format(_types(sorted({t for ts in types for t in ts})))
        )
    if plan.seller is not None:
        conds.append(sql.SQL("seller_id = %s::text"))
        params.append(plan.seller)
    for f in plan.filters:
        expr = _dimension(f.dimension, time_col)
        cast = sql.SQL(_SQL_TYPE[f.dimension.type])
        if f.op == "eq":
            conds.append(sql.SQL("{} = %s::{}").format(expr, cast))
            params.append(f.values[0])
        elif f.op == "ne":
            conds.append(sql.SQL("{} IS DISTINCT FROM %s::{}").format(expr, cast))
            params.append(f.values[0])
        else:
            conds.append(sql.SQL("{} = ANY(%s::{}[])").format(expr, cast))
            params.append(list(f.values))
    return conds


def _after(
    key: Sequence[tuple[Column, bool]], values: Sequence[Any], params: list[Any]
) -> sql.Composable:
    """Rows strictly after ``values`` in the key's order (NULLs sort last either way)."""
    alternatives: list[sql.Composable] = []
    for i, ((col, desc), value) in enumerate(zip(key, values, strict=True)):
        if value is None:
            continue  # nothing sorts after NULL in this column: only ties go on
        parts: list[sql.Composable] = []
        for prev, prev_value in zip(key[:i], values[:i], strict=True):
            pcol = prev[0]
            parts.append(
                sql.SQL("{} IS NOT DISTINCT FROM %s::{}").format(
                    sql.Identifier(pcol.name), sql.SQL(_SQL_TYPE[pcol.kind])
                )
            )
            params.append(prev_value)
        op = sql.SQL("<" if desc else ">")
        parts.append(
            sql.SQL("({c} {op} %s::{t} OR {c} IS NULL)").format(
                c=sql.Identifier(col.name), op=op, t=sql.SQL(_SQL_TYPE[col.kind])
            )
        )
        params.append(value)
        alternatives.append(sql.SQL("(") + sql.SQL(" AND ").join(parts) + sql.SQL(")"))
    if not alternatives:
        return sql.SQL("false")
    return sql.SQL(" OR ").join(alternatives)


# A split read's rows, whatever part they come from: the rollups' columns.
_UNION: Final = Source("events_split", "bucket", None)


def _part(plan: Plan, part: Segment, params: list[Any]) -> sql.Composable:
    """One part's rows of a split read, in the rollups' shape (raw: one event per row);
    of a distinct count, in ``users_1h``'s (a user id per row)."""
    source, start, end = part
    sub = replace(plan, source=source, start=start, end=end, segments=())
    time_col = sql.Identifier(source.time_col)
    if plan.source.users:
        rows = "user_id"
    else:
        rows = "events, revenue" if source.rollup else "1::bigint AS events, amount AS revenue"
    return sql.SQL("SELECT {} AS bucket, type, seller_id, {} FROM {} WHERE {}").format(
        time_col,
        sql.SQL(rows),
        sql.Identifier("analyst", source.name),
        sql.SQL(" AND ").join(_where(sub, time_col, params)),
    )


def compile_plan(plan: Plan) -> Compiled:
    """The statement, its parameters, its columns and its sort key."""
    reads = plan.reads
    if len(reads) == 1:  # one source: read its view directly
        plan = replace(plan, source=reads[0][0], start=reads[0][1], end=reads[0][2], segments=())
    source = plan.source if len(reads) == 1 else _UNION
    time_col = sql.Identifier(source.time_col)
    params: list[Any] = []
    select: list[sql.Composable] = []
    columns: list[Column] = []
    if plan.grain_s is not None:
        select.append(
            sql.SQL("date_bin(%s::interval, {}, %s::timestamptz) AS {}").format(
                time_col, sql.Identifier("time")
            )
        )
        params += [timedelta(seconds=plan.grain_s), ORIGIN]
        columns.append(Column("time", "time"))
    for d in plan.dimensions:
        select.append(sql.SQL("{} AS {}").format(_dimension(d, time_col), sql.Identifier(d.name)))
        columns.append(Column(d.name, d.type))
    groups = len(columns)
    for m in plan.measures:
        select.append(sql.SQL("{} AS {}").format(_measure(m, source), sql.Identifier(m.name)))
        columns.append(Column(m.name, m.value_type))
    if len(reads) == 1:
        rows: sql.Composable = sql.SQL("{} WHERE {}").format(
            sql.Identifier("analyst", source.name),
            sql.SQL(" AND ").join(_where(plan, time_col, params)),
        )
    else:
        rows = sql.SQL("({}) u").format(
            sql.SQL(" UNION ALL ").join(_part(plan, part, params) for part in reads)
        )
    if not groups and [m.kind for m in plan.measures] == ["distinct"]:
        # count(DISTINCT) always sorts its input; a DISTINCT subquery may hash, about twice as
        # fast over a day of users_1h (count(user_id): the NULL user is no user, as there)
        distinct = "SELECT count(user_id)::bigint AS {} FROM (SELECT DISTINCT user_id FROM {}) d"
        inner: sql.Composable = sql.SQL(distinct).format(
            sql.Identifier(plan.measures[0].name), rows
        )
    else:
        inner = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(select), rows)
    if groups:
        inner += sql.SQL(" GROUP BY ") + sql.SQL(", ").join(
            sql.SQL(str(i + 1)) for i in range(groups)
        )
    by_name = {c.name: c for c in columns}
    key = [(by_name[name], desc) for name, desc in plan.order]
    named = {c.name for c, _ in key}
    key += [(c, False) for c in columns[:groups] if c.name not in named]
    outer = sql.SQL("SELECT * FROM ({}) q").format(inner)
    if plan.after is not None:
        outer += sql.SQL(" WHERE ") + _after(key, plan.after, params)
    if key:
        outer += sql.SQL(" ORDER BY ") + sql.SQL(", ").join(
            sql.SQL("{} {} NULLS LAST").format(
                sql.Identifier(c.name), sql.SQL("DESC" if desc else "ASC")
            )
            for c, desc in key
        )
    if plan.limit is not None:
        outer += sql.SQL(" LIMIT %s::bigint")
        params.append(plan.limit)
    return Compiled(outer, params, columns, key)
