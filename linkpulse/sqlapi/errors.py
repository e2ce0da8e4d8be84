"""PostgreSQL's errors as the SQL endpoint's answers: a 4xx naming the problem and where.

Everything the database raises while running an analyst's statement is the
statement's fault, so it is a 4xx, never a 500: a syntax or name error is 400
with its position, a privilege error 403, the statement timeout 422 saying the
limit and how to stay under it. Only a lost or refused connection (class 08,
server shutdown) is the store's: 503.

>>> p = sql_problem("42703", 'column "x" does not exist', position=15, hint=None)
>>> p.status, p.slug, p.detail
(400, 'sql-error', 'column "x" does not exist (at position 15 of sql)')
>>> sql_problem("57014", "canceling statement due to statement timeout", timeout_s=30).status
422
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SqlProblem", "refused_problem", "sql_problem"]

_VIEWS_HINT = (
    "the SQL endpoint reads the analyst views only: analyst.events, analyst.events_1m, "
    "analyst.events_1h, analyst.events_1d, analyst.metric_windows, analyst.anomaly_scores, "
    "analyst.forecasts (docs/analyst-sql.md)"
)


@dataclass(frozen=True)
class SqlProblem:
    """What to answer: an HTTP status, a problem slug and title, a detail, the field."""

    status: int
    slug: str
    title: str
    detail: str
    field: str = "sql"


def _where(position: int | None) -> str:
    return f" (at position {position} of sql)" if position else ""


def refused_problem(slug: str, problem: str, position: int | None) -> SqlProblem:
    """A statement refused before it ran (``check.SqlRefused``)."""
    title = "SQL syntax error" if slug == "sql-syntax" else "SQL statement not allowed"
    return SqlProblem(400, slug, title, problem + _where(position))


def sql_problem(
    sqlstate: str | None,
    message: str,
    *,
    position: int | None = None,
    hint: str | None = None,
    timeout_s: float | None = None,
) -> SqlProblem:
    """The answer to an error PostgreSQL raised for a statement (``sqlstate`` from diag)."""
    detail = message + _where(position) + (f"; {hint}" if hint else "")
    code = sqlstate or ""
    if code == "57014":
        limit = f"the {timeout_s:g} s " if timeout_s is not None else "the "
        return SqlProblem(
            422,
            "statement-timeout",
            "Statement timeout",
            f"the query ran longer than {limit}limit of this role (LINKPULSE_SQL_LIMITS): "
            "filter on the time column, read a rollup (analyst.events_1h...), or ask for "
            "less; POST /v1/sql/explain shows the plan",
        )
    if code.startswith("08") or code in ("57P01", "57P02", "57P03", "") or code.startswith("40"):
        return SqlProblem(503, "store-unavailable", "The store is not available", detail, field="$")
    if code == "42501":
        return SqlProblem(
            403, "sql-permission-denied", "Permission denied", f"{detail}; {_VIEWS_HINT}"
        )
    if code == "25006":
        return SqlProblem(
            403, "sql-read-only", "Read-only", f"{detail}: the SQL endpoint only reads"
        )
    if code.startswith("53") or code.startswith("54"):
        return SqlProblem(422, "sql-too-costly", "Query too costly", detail)
    if code == "42P01":
        detail += f"; {_VIEWS_HINT}"
    return SqlProblem(400, "sql-error", "SQL error", detail)
