"""``POST /v1/sql`` and ``POST /v1/sql/explain``: an analyst's SELECT, scoped, capped, streamed.

A statement goes through three fences, each stricter than needed on its own:

1. **the parse tree** (``linkpulse.sqlapi.check``): one SELECT, no writing CTE,
   no ``SELECT INTO``/row locks, no function that changes settings or runs SQL
   from a string; syntax errors answer 400 with their position;
2. **the catalogue**: the functions called must not be volatile (a volatile
   function may write or change the session) unless known harmless;
3. **the database**, the real wall: a read-only transaction as the analyst
   role, scoped by the signed token of ``AnalystDb.session`` (docs/analyst-sql.md),
   ``search_path`` = ``analyst``, a statement timeout and an idle timeout.

Rows come from a server-side cursor ``fetch_rows`` at a time and are encoded
by ``linkpulse.formats`` (JSON lines, CSV, JSON or Parquet; ``format=`` or
``Accept``). The first batch is fetched before the answer starts, so an error
of the statement (or a timeout while it produces its first rows) is a 4xx
problem. Later errors, the row cap and the database-time limit end the stream
with its summary (``truncated``, ``complete``, ``error``). Every request,
answered or refused, is in the audit log (``sql.query``, ``sql.explain``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Annotated, Any

import anyio
import psycopg
import pyarrow as pa
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from linkpulse.api.analyst_db import AnalystDb
from linkpulse.api.audit import AuditEntry
from linkpulse.api.auth.guard import Need, resource_of
from linkpulse.api.auth.roles import Principal, Role
from linkpulse.api.problems import ProblemError, problem_responses
from linkpulse.api.routes._alerting import tenant_scope
from linkpulse.config import Settings
from linkpulse.formats import FORMATS, RowWriter, columns_from_description, media_type, negotiate
from linkpulse.formats import open_writer as open_format_writer
from linkpulse.formats.loaders import use_format_loaders
from linkpulse.sqlapi.advice import advise, plan_nodes, scanned_relations
from linkpulse.sqlapi.catalogue import refuse_volatile
from linkpulse.sqlapi.check import CheckedStatement, SqlRefused, check_statement
from linkpulse.sqlapi.errors import SqlProblem, refused_problem, sql_problem
from linkpulse.sqlapi.limits import SQL_ROLE_NAMES, SqlLimit, limit_for, parse_sql_limits

__all__ = ["router"]

router = APIRouter(tags=["sql"])
SQL_ROLES = frozenset(Role(name) for name in SQL_ROLE_NAMES)
SqlPrincipal = Annotated[Principal, Depends(Need(SQL_ROLES))]

MAX_SQL_CHARS = 100_000
CURSOR = "lp_sql"
_DECLARE = f"DECLARE {CURSOR} NO SCROLL CURSOR FOR "
_EXPLAIN = "EXPLAIN (FORMAT JSON) "
_EXPLAIN_TIMEOUT_S = 10.0  # planning only: no statement takes longer to plan
_NO_NUL = r"^[^\x00]*$"
_RELATION_ROWS = (
    "SELECT c.relname, greatest(c.reltuples, 0)::float8 FROM pg_catalog.pg_class c "
    "WHERE c.relname = ANY(%s)"
)

Param = Annotated[str, Field(max_length=10_000, pattern=_NO_NUL)] | int | float | bool | None


class SqlBody(BaseModel):
    """One statement over the analyst views, with its parameters."""

    model_config = ConfigDict(extra="forbid")

    sql: str = Field(
        min_length=1,
        max_length=MAX_SQL_CHARS,
        pattern=_NO_NUL,
        description="one SELECT (VALUES, WITH ... SELECT) over the analyst views "
        "(docs/analyst-sql.md); parameters are $1, $2, ... (PostgreSQL's own placeholders)",
        examples=["SELECT type, count(*) FROM events WHERE event_time >= $1 GROUP BY 1"],
    )
    params: list[Param] = Field(
        default_factory=list, max_length=100, description="values of $1, $2, ... in order"
    )
    tenant: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=_NO_NUL,
        description="admins: the tenant to read (others always read their own)",
    )


class AdviceItem(BaseModel):
    code: str = Field(description="no-time-filter, use-rollup or seq-scan")
    message: str


class ExplainAnswer(BaseModel):
    """The plan of a statement (``EXPLAIN (FORMAT JSON)``, never executed) and advice on it."""

    plan: list[dict[str, Any]]
    estimated_rows: float | None = Field(description="the planner's estimate of the result")
    estimated_cost: float | None = Field(description="the planner's total cost")
    advice: list[AdviceItem]


def _limits(settings: Settings) -> dict[str, SqlLimit]:
    return parse_sql_limits(settings.sql_limits)  # validated with the settings at start


def _problem(p: SqlProblem) -> ProblemError:
    headers = {"Retry-After": "2"} if p.status == 503 else None
    return ProblemError(p.status, p.slug, p.title, p.detail, field=p.field, headers=headers)


def _db_problem(e: psycopg.Error, *, offset: int, limit: SqlLimit) -> SqlProblem:
    """The answer to ``e``, with the position made relative to the analyst's own text."""
    diag = e.diag
    position = None
    if diag.statement_position:
        pos = int(diag.statement_position) - offset
        position = pos if pos > 0 else None
    message = diag.message_primary or str(e).strip() or type(e).__name__
    return sql_problem(
        diag.sqlstate, message, position=position, hint=diag.message_hint, timeout_s=limit.timeout_s
    )


class _Audit:
    """The audit entry of one request, written once whatever way it ends."""

    def __init__(self, request: Request, principal: Principal, action: str, sql: str) -> None:
        self.request, self.principal, self.action, self.sql = request, principal, action, sql
        self.scope: dict[str, Any] = {}

    def record(self, outcome: str, status: int, items: int = 0, **scope: Any) -> None:
        self.request.app.state.guard.audit.record(
            AuditEntry.of(
                self.principal,
                self.action,
                resource=resource_of(self.request),
                scope={**self.scope, **{k: str(v) for k, v in scope.items()}},
                outcome=outcome,
                status=status,
                items=items,
                detail=self.sql,
            )
        )

    def refuse(self, p: SqlProblem) -> ProblemError:
        self.record("refused", p.status, problem=p.slug)
        return _problem(p)


def _checked(body: SqlBody, audit: _Audit) -> CheckedStatement:
    try:
        stmt = check_statement(body.sql)
    except SqlRefused as e:
        raise audit.refuse(refused_problem(e.slug, e.problem, e.position)) from e
    if stmt.params != len(body.params):
        detail = f"the statement uses {stmt.params} parameter(s) ($1...), {len(body.params)} given"
        raise audit.refuse(SqlProblem(400, "sql-params", "Wrong parameters", detail, "params"))
    return stmt


def _scope(principal: Principal, tenant: str | None) -> tuple[str, str | None]:
    chosen = tenant_scope(principal, tenant) or principal.tenant
    if chosen is None:
        detail = "this principal has no tenant of its own: name one with tenant"
        raise ProblemError(400, "sql-tenant", "No tenant", detail, field="tenant")
    return chosen, principal.seller if principal.role is Role.SELLER else None


async def _prepare(
    conn: psycopg.AsyncConnection[Any], stmt: CheckedStatement, timeout_s: float, idle_s: float
) -> None:
    """Limits, the analyst's search_path, and the catalogue check of the functions called."""
    await conn.execute(
        f"SET LOCAL statement_timeout = {max(1, int(timeout_s * 1000))}; "
        f"SET LOCAL idle_in_transaction_session_timeout = {max(1, int(idle_s * 1000))}; "
        "SET LOCAL search_path = analyst"
    )
    await refuse_volatile(conn, stmt.functions)


async def _fetch(
    conn: psycopg.AsyncConnection[Any], n: int, timeout_s: float, fmt: str
) -> tuple[list[Any], Any]:
    """The next ``n`` rows of the cursor and its description, within ``timeout_s``."""
    cur = conn.cursor()
    use_format_loaders(cur, fmt)  # jsonb and numeric as the format wants them
    await cur.execute(f"SET LOCAL statement_timeout = {max(1, int(timeout_s * 1000))}")
    await cur.execute(f"FETCH FORWARD {int(n)} FROM {CURSOR}")
    return await cur.fetchall(), cur.description


class _Result:
    """A declared cursor's rows, streamed through a writer under the role's limits."""

    def __init__(
        self, conn: psycopg.AsyncConnection[Any], limit: SqlLimit, fetch_rows: int, fmt: str
    ) -> None:
        self.conn, self.limit, self.fetch_rows, self.fmt = conn, limit, fetch_rows, fmt
        self.used_s = 0.0  # database time spent fetching
        self.rows = 0
        self.truncated = False
        self.done = False
        self.error: SqlProblem | None = None

    async def next_batch(self) -> tuple[list[Any], Any]:
        """The next batch (cut at the row cap), timing the database's work.

        Once the role's database time is spent, the result ends with a timeout error.
        """
        remaining_s = self.limit.timeout_s - self.used_s
        if remaining_s <= 0:
            self.error = sql_problem("57014", "time limit", timeout_s=self.limit.timeout_s)
            self.done = True
            return [], None
        want = min(self.fetch_rows, self.limit.max_rows - self.rows + 1)  # +1: is there more?
        t0 = time.monotonic()
        batch, description = await _fetch(self.conn, want, remaining_s, self.fmt)
        self.used_s += time.monotonic() - t0
        if len(batch) < want:
            self.done = True
        if self.rows + len(batch) > self.limit.max_rows:
            batch = batch[: self.limit.max_rows - self.rows]
            self.truncated = self.done = True
        self.rows += len(batch)
        return batch, description

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "truncated": self.truncated,
            "row_cap": self.limit.max_rows,
            "complete": self.error is None and not self.truncated,
        }
        if self.error is not None:
            out["error"] = {"status": self.error.status, "type": self.error.slug}
            out["error"]["detail"] = self.error.detail
        return out


_RESULT_CONTENT = {
    "application/x-ndjson": {"schema": {"type": "string"}},
    "text/csv": {"schema": {"type": "string"}},
    "application/json": {"schema": {"type": "object"}},
    "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
}


@router.post(
    "/v1/sql",
    summary="Run one SELECT over the analyst views, streamed (JSON lines, CSV, JSON, Parquet)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "the rows, with a header (columns and their PostgreSQL types) and a "
            "summary (rows, truncated, complete) in-band; see docs/sql-endpoint.md",
            "content": _RESULT_CONTENT,
        },
        **problem_responses(400, 401, 403, 406, 422, 429, 503),
    },
)
async def run_sql(
    request: Request,
    body: SqlBody,
    principal: SqlPrincipal,
    format: str | None = Query(  # noqa: A002 (the parameter's public name)
        None,
        max_length=20,
        pattern=_NO_NUL,
        description=f"{', '.join(FORMATS)}; default from Accept, else jsonl",
    ),
) -> Response:
    settings: Settings = request.app.state.settings
    audit = _Audit(request, principal, "sql.query", body.sql)
    fmt = negotiate(request.headers.get("accept"), format)
    stmt = _checked(body, audit)
    tenant, seller = _scope(principal, body.tenant)
    limit = limit_for(_limits(settings), principal.role.value)
    audit.scope = {"tenant": tenant, "seller": seller or "", "format": fmt}
    db: AnalystDb = request.app.state.analyst_db
    stack = AsyncExitStack()
    try:
        conn = await stack.enter_async_context(
            db.session(tenant=tenant, seller=seller, ttl_s=int(limit.timeout_s) + 300)
        )
        await _prepare(conn, stmt, limit.timeout_s, settings.sql_idle_timeout_s)
        await psycopg.AsyncRawCursor(conn).execute(_DECLARE + stmt.text, body.params or None)
        result = _Result(conn, limit, settings.sql_fetch_rows, fmt)
        first, description = await result.next_batch()
        columns = columns_from_description(description or [], conn.adapters.types)
        writer = open_format_writer(fmt, columns)
        head = await _encode(writer, first)
    except SqlRefused as e:
        await stack.aclose()
        raise audit.refuse(refused_problem(e.slug, e.problem, e.position)) from e
    except psycopg.Error as e:
        await stack.aclose()
        raise audit.refuse(_db_problem(e, offset=len(_DECLARE), limit=limit)) from e
    except _Unencodable as e:
        await stack.aclose()
        raise audit.refuse(e.problem) from e
    except BaseException:
        await stack.aclose()
        raise
    headers = {
        "Linkpulse-Row-Cap": str(limit.max_rows),
        "Linkpulse-Statement-Timeout": f"{limit.timeout_s:g}",
        "Cache-Control": "no-store",
    }
    return StreamingResponse(
        _stream(result, writer, head, stack, audit),
        media_type=media_type(fmt),
        headers=headers,
    )


async def _stream(
    result: _Result, writer: RowWriter, head: bytes, stack: AsyncExitStack, audit: _Audit
) -> AsyncIterator[bytes]:
    """The answer's bytes: the first batch (encoded already), the rest as fetched, the summary."""
    outcome = "aborted"  # the client went away before the end
    # The next batch is fetched while this one is encoded and sent: the server and the
    # encoding (in a thread) work at the same time.
    fetch = None if result.done else asyncio.ensure_future(result.next_batch())
    try:
        if head:
            yield head
        while fetch is not None:
            try:
                batch, _ = await fetch
                fetch = None if result.done else asyncio.ensure_future(result.next_batch())
                chunk = await _encode(writer, batch)
            except psycopg.Error as e:
                result.error = _db_problem(e, offset=0, limit=result.limit)
                break
            except _Unencodable as e:
                result.error = e.problem
                break
            if chunk:
                yield chunk
        yield writer.close(summary=result.summary())
        outcome = "error" if result.error else ("truncated" if result.truncated else "ok")
    finally:
        with anyio.CancelScope(shield=True):  # give the connection back even when cancelled
            if fetch is not None and not fetch.done():
                # the client left (or a batch failed) while the next one was on its way:
                # let it land, so the session ends on an idle connection
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await fetch
            await stack.aclose()
            status = result.error.status if result.error else 200
            audit.record(outcome, status, result.rows, db_time_s=round(result.used_s, 3))


class _Unencodable(Exception):  # noqa: N818 (carries the problem to answer)
    def __init__(self, problem: SqlProblem) -> None:
        super().__init__(problem.detail)
        self.problem = problem


async def _encode(writer: RowWriter, rows: list[Any]) -> bytes:
    """``writer.write(rows)`` in a thread (CPU work); a value the format can't hold is a 422."""
    try:
        return await asyncio.to_thread(writer.write, rows)
    except (pa.ArrowException, ValueError, TypeError, OverflowError) as e:
        detail = f"a value of the result can't be written in this format ({e}); cast it in the SQL"
        raise _Unencodable(SqlProblem(422, "sql-unencodable", "Value not encodable", detail)) from e


@router.post(
    "/v1/sql/explain",
    summary="The plan of one SELECT (never executed), with plain-language advice",
    response_model=ExplainAnswer,
    responses=problem_responses(400, 401, 403, 422, 429, 503),
)
async def explain_sql(request: Request, body: SqlBody, principal: SqlPrincipal) -> ExplainAnswer:
    settings: Settings = request.app.state.settings
    audit = _Audit(request, principal, "sql.explain", body.sql)
    stmt = _checked(body, audit)
    tenant, seller = _scope(principal, body.tenant)
    limit = limit_for(_limits(settings), principal.role.value)
    audit.scope = {"tenant": tenant, "seller": seller or ""}
    db: AnalystDb = request.app.state.analyst_db
    timeout_s = min(limit.timeout_s, _EXPLAIN_TIMEOUT_S)
    try:
        async with db.session(tenant=tenant, seller=seller) as conn:
            await _prepare(conn, stmt, timeout_s, settings.sql_idle_timeout_s)
            cur = await psycopg.AsyncRawCursor(conn).execute(
                _EXPLAIN + stmt.text, body.params or None
            )
            row = await cur.fetchone()
            plan = row[0] if row else []
            names = sorted(scanned_relations(plan))
            sizes: dict[str, float] = {}
            if names:
                cur2 = await conn.execute(_RELATION_ROWS, [names])
                sizes = {str(r[0]): float(r[1]) for r in await cur2.fetchall()}
    except SqlRefused as e:
        raise audit.refuse(refused_problem(e.slug, e.problem, e.position)) from e
    except psycopg.Error as e:
        raise audit.refuse(_db_problem(e, offset=len(_EXPLAIN), limit=limit)) from e
    for node in plan_nodes(plan):  # the planner's own estimate counts too (no statistics yet)
        if node.get("Node Type") == "Seq Scan" and "Relation Name" in node:
            rel = str(node["Relation Name"])
            sizes[rel] = max(sizes.get(rel, 0.0), float(node.get("Plan Rows", 0)))
    top = plan[0]["Plan"] if plan and isinstance(plan[0], dict) and "Plan" in plan[0] else {}
    advice = [AdviceItem(code=a.code, message=a.message) for a in advise(stmt, plan, sizes)]
    audit.record("ok", 200, len(advice))
    return ExplainAnswer(
        plan=plan,
        estimated_rows=top.get("Plan Rows"),
        estimated_cost=top.get("Total Cost"),
        advice=advice,
    )
