"""Plain-language advice on a query and its plan (``EXPLAIN (FORMAT JSON)``).

Three things cost analysts most on this store, and each is read from the parse
tree or the plan, never guessed from the text:

* ``no-time-filter``: a time-partitioned view read without a condition on its
  time column, so every partition (plain PostgreSQL) or chunk (TimescaleDB)
  is scanned;
* ``use-rollup``: raw ``analyst.events`` grouped by ``date_trunc`` of
  ``event_time`` at minute/hour/day (or coarser) with only counts and
  ``sum(amount)``, which ``analyst.events_1m``/``_1h``/``_1d`` already hold;
* ``seq-scan``: a sequential scan of a relation the catalogue says is large.

The time-filter check is syntactic: a condition that mentions the time column
counts, even one that filters nothing (``event_time IS NOT NULL``).

>>> from linkpulse.sqlapi.check import check_statement
>>> q = check_statement(
...     "SELECT date_trunc('hour', event_time) AS h, count(*) FROM analyst.events GROUP BY 1"
... )
>>> [a.code for a in advise(q, [{"Plan": {"Node Type": "Result"}}], {})]
['no-time-filter', 'use-rollup']
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pglast import ast

from linkpulse.sqlapi.check import CheckedStatement, walk

__all__ = ["LARGE_ROWS", "TIME_COLUMNS", "Advice", "advise", "plan_nodes", "scanned_relations"]

# The time column of each partitioned (or chunked) analyst view.
TIME_COLUMNS: Final = {
    "events": "event_time",
    "events_1m": "bucket",
    "events_1h": "bucket",
    "events_1d": "bucket",
    "metric_windows": "window_start",
    "anomaly_scores": "time",
}
LARGE_ROWS: Final = 100_000  # a sequential scan of a relation this large is worth a word
_GRAIN_ROLLUP: Final = {
    "minute": "events_1m",
    "hour": "events_1h",
    "day": "events_1d",
    "week": "events_1d",
    "month": "events_1d",
    "quarter": "events_1d",
    "year": "events_1d",
}
_ROLLUP_DIMS: Final = frozenset({"type", "seller_id", "tenant"})


@dataclass(frozen=True)
class Advice:
    """One piece of advice: ``code`` for programs, ``message`` for people."""

    code: str
    message: str


def plan_nodes(plan: Any) -> Iterator[dict[str, Any]]:
    """Every node of an ``EXPLAIN (FORMAT JSON)`` plan (the list, its item, or a node)."""
    if isinstance(plan, list):
        for p in plan:
            yield from plan_nodes(p)
        return
    if not isinstance(plan, dict):
        return
    node = plan.get("Plan", plan)
    yield node
    for child in node.get("Plans", ()):
        yield from plan_nodes(child)


def scanned_relations(plan: Any) -> set[str]:
    """Names of the relations the plan scans sequentially (to look their sizes up)."""
    return {
        str(n["Relation Name"])
        for n in plan_nodes(plan)
        if n.get("Node Type") == "Seq Scan" and "Relation Name" in n
    }


def _colname(node: Any) -> str | None:
    if isinstance(node, ast.ColumnRef) and node.fields:
        last = node.fields[-1]
        return str(last.sval) if isinstance(last, ast.String) else None
    return None


def _views(select: Any) -> list[str]:
    """The analyst views named directly in this SELECT's FROM (joins included)."""
    found: list[str] = []
    for item in select.fromClause or ():
        stack: list[Any] = [item]
        while stack:
            n = stack.pop()
            if isinstance(n, ast.RangeVar) and n.schemaname in (None, "analyst"):
                found.append(str(n.relname))
            elif isinstance(n, ast.JoinExpr):
                stack += [n.larg, n.rarg]
    return found


def _quals(select: Any) -> list[Any]:
    quals: list[Any] = [select.whereClause, select.havingClause]
    for item in select.fromClause or ():
        quals += [n.quals for n in walk(item) if isinstance(n, ast.JoinExpr)]
    return [q for q in quals if q is not None]


def _mentions(nodes: list[Any], column: str) -> bool:
    return any(_colname(n) == column for q in nodes for n in walk(q))


def _time_filter_advice(tree: Any, cte_names: set[str]) -> list[Advice]:
    out: list[Advice] = []
    for select in (n for n in walk(tree) if isinstance(n, ast.SelectStmt)):
        for view in _views(select):
            col = TIME_COLUMNS.get(view)
            if col is None or view in cte_names or _mentions(_quals(select), col):
                continue
            out.append(
                Advice(
                    "no-time-filter",
                    f"analyst.{view} is read without a condition on {col}: every "
                    f"partition/chunk is scanned. Add e.g. WHERE {col} >= now() - "
                    "interval '7 days' to read only the recent ones.",
                )
            )
    return out


def _grain(node: Any) -> str | None:
    """``'hour'`` for ``date_trunc('hour', event_time)`` (or ``time_bucket('1 hour', ...)``)."""
    if not isinstance(node, ast.FuncCall) or len(node.args or ()) < 2:
        return None
    name = _fname(node)
    first, second = list(node.args or ())[:2]
    if _colname(second) != "event_time" or not isinstance(first, ast.A_Const):
        return None
    text = getattr(first.val, "sval", None)
    if not isinstance(text, str):
        return None
    text = text.strip().lower()
    if name == "time_bucket":
        text = text.removeprefix("1 ").removesuffix("s")
    return text if name in ("date_trunc", "time_bucket") and text in _GRAIN_ROLLUP else None


def _fname(node: Any) -> str:
    return str(node.funcname[-1].sval).lower()


def _aggregate_ok(node: Any) -> bool:
    name = _fname(node)
    if node.agg_distinct or node.agg_filter is not None or node.over is not None:
        return False
    if name == "count":
        return True
    return name == "sum" and len(node.args or ()) == 1 and _colname(node.args[0]) == "amount"


def _rollup_advice(tree: Any) -> list[Advice]:
    if _views(tree) != ["events"] or not tree.groupClause:
        return []
    targets = [t.val for t in tree.targetList or () if isinstance(t, ast.ResTarget)]
    grains: list[str] = []
    for g in tree.groupClause:
        if isinstance(g, ast.A_Const) and isinstance(g.val, ast.Integer):
            k = int(g.val.ival or 0)
            g = targets[k - 1] if 0 < k <= len(targets) else g  # GROUP BY 1
        if (grain := _grain(g)) is not None:
            grains.append(grain)
        elif _colname(g) not in _ROLLUP_DIMS:
            return []
    if len(grains) != 1:
        return []
    for t in targets:
        for n in walk(t):
            if (
                isinstance(n, ast.FuncCall)
                and _grain(n) is None
                and _fname(n) in ("count", "sum", "avg", "min", "max", "string_agg", "array_agg")
                and not _aggregate_ok(n)
            ):
                return []
            if _colname(n) not in (None, "event_time", "amount", *_ROLLUP_DIMS):
                return []
    if any(
        _colname(n) not in (None, "event_time", *_ROLLUP_DIMS)
        for q in _quals(tree)
        for n in walk(q)
    ):
        return []
    rollup = _GRAIN_ROLLUP[grains[0]]
    return [
        Advice(
            "use-rollup",
            f"this groups raw events by {grains[0]}: analyst.{rollup} already has one row per "
            f"{rollup.removeprefix('events_')} bucket x type x seller_id with events (= count(*)) "
            "and revenue (= sum(amount)). Read it instead: group by "
            f"date_trunc('{grains[0]}', bucket) and use sum(events), sum(revenue) (exact when "
            "the time filter falls on bucket boundaries).",
        )
    ]


def _seq_scan_advice(plan: Any, relation_rows: Mapping[str, float], large: int) -> list[Advice]:
    out = []
    for rel in sorted(scanned_relations(plan)):
        rows = relation_rows.get(rel, 0.0)
        if rows >= large:
            out.append(
                Advice(
                    "seq-scan",
                    f"sequential scan of {rel} (about {rows:,.0f} rows): filter on its time "
                    "column or another indexed column (tenant, type, seller_id) so an index "
                    "or partition pruning can be used.",
                )
            )
    return out


def advise(
    stmt: CheckedStatement,
    plan: Any,
    relation_rows: Mapping[str, float],
    *,
    large_rows: int = LARGE_ROWS,
) -> list[Advice]:
    """Advice on ``stmt`` given its plan and ``relation_rows`` (``pg_class.reltuples``)."""
    cte_names: set[str] = set()
    for n in walk(stmt.tree):
        if isinstance(n, ast.CommonTableExpr):
            cte_names.add(str(n.ctename))
    return (
        _time_filter_advice(stmt.tree, cte_names)
        + _rollup_advice(stmt.tree)
        + _seq_scan_advice(plan, relation_rows, large_rows)
    )
