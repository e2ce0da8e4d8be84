"""The export stream: a statement's rows through a server-side cursor into a format's writer.

Memory stays constant: rows come ``batch_rows`` at a time from a named (server
side) cursor, each batch is encoded by the format's writer (in a thread: the
encoding is CPU work the event loop should not wait on) and handed to the sink
as bytes, then dropped. The API's jobs and ``linkpulse export`` both use it,
on a connection already in a scoped analyst session
(``AnalystDb.session`` / ``roles.analyst_session_async``).

>>> explain_estimate([{"Plan": {"Node Type": "Seq Scan", "Plan Rows": 42}}])
42
>>> input_error(psycopg.errors.SyntaxError("syntax error at or near \\"SELEC\\"")).field
'sql'
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from linkpulse.errors import LinkpulseError
from linkpulse.formats import Column, columns_from_description, open_writer
from linkpulse.formats.loaders import use_format_loaders
from linkpulse.sqlapi.catalogue import refuse_volatile
from linkpulse.sqlapi.check import SqlRefused, dollar_placeholders
from linkpulse.sqlapi.check import check_statement as check_select

__all__ = [
    "BATCH_ROWS",
    "ExportInputError",
    "ExportResult",
    "check_statement",
    "explain_estimate",
    "input_error",
    "stream_export",
]

BATCH_ROWS = 10_000
CHECK_TIMEOUT_MS = 10_000  # planning a statement (EXPLAIN, no execution) takes no longer
# What a statement an analyst wrote can fail with (syntax, names, privileges, types,
# writes, placeholders vs params: psycopg's own ProgrammingError is the same class).
ANALYST_MISTAKES = (
    psycopg.ProgrammingError,
    psycopg.DataError,
    psycopg.NotSupportedError,
    psycopg.errors.ReadOnlySqlTransaction,
)
Sink = Callable[[bytes], Awaitable[None]]
Progress = Callable[[int, int], Awaitable[None]]


class ExportInputError(LinkpulseError, ValueError):
    """The statement or its parameters are wrong; ``field`` names which (``sql``, ``params``)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.detail = detail


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    rows: int
    bytes: int
    columns: list[Column]


_EXPLAIN = "EXPLAIN (FORMAT JSON) "


def input_error(e: psycopg.Error, *, offset: int = 0) -> ExportInputError:
    """The analyst's mistake in ``e`` as an input error naming the field, with the position.

    ``offset``: characters put before the analyst's statement (an ``EXPLAIN`` prefix).
    """
    diag = getattr(e, "diag", None)
    message = (diag.message_primary if diag is not None else None) or str(e).strip()
    where = ""
    if diag is not None and diag.statement_position:
        where = f" (at character {int(diag.statement_position) - offset} of the statement)"
    hint = f"; {diag.message_hint}" if diag is not None and diag.message_hint else ""
    if isinstance(e, psycopg.ProgrammingError) and "placeholder" in str(e):
        return ExportInputError("params", f"{message}")
    if "multiple commands" in message:
        return ExportInputError("sql", "one statement only: remove what follows the first ';'")
    if isinstance(e, psycopg.errors.InsufficientPrivilege):
        hint = "; exports read the analyst views (analyst.events, analyst.events_1h, ...)"
    return ExportInputError("sql", f"{message}{where}{hint}")


def explain_estimate(plan: Any) -> int | None:
    """The planner's row estimate from ``EXPLAIN (FORMAT JSON)`` output, if it gave one."""
    try:
        return int(plan[0]["Plan"]["Plan Rows"])
    except (LookupError, TypeError, ValueError):
        return None


async def check_statement(
    conn: psycopg.AsyncConnection, statement: str, params: Any | None
) -> int | None:
    """Plan ``statement`` without running it; return the row estimate or raise ExportInputError.

    ``conn`` is in an analyst session. First the SQL endpoint's fences (one
    SELECT by PostgreSQL's parse tree, no volatile function: linkpulse.sqlapi);
    then the plan. Binary results force the extended protocol, which refuses
    more than one statement, as the export's cursor does.
    """
    as_parsed = dollar_placeholders(statement)
    try:
        checked = check_select(as_parsed)
        await refuse_volatile(conn, checked.functions)
    except SqlRefused as e:
        where = ""  # positions of the parsed text are the statement's unless placeholders moved
        if e.position is not None and as_parsed == statement:
            where = f" (at character {e.position} of the statement)"
        raise ExportInputError(field="sql", detail=f"{e.problem}{where}") from e
    try:
        async with conn.transaction():  # a savepoint: a failure leaves the session usable
            await conn.execute(f"SET LOCAL statement_timeout = {CHECK_TIMEOUT_MS}")
            cur = await conn.cursor().execute(_EXPLAIN + statement, params, binary=True)
            row = await cur.fetchone()
    except psycopg.errors.QueryCanceled as e:
        raise ExportInputError(field="sql", detail="the statement took too long to plan") from e
    except ANALYST_MISTAKES as e:
        raise input_error(e, offset=len(_EXPLAIN)) from e
    return explain_estimate(row[0] if row else None)


async def stream_export(
    conn: psycopg.AsyncConnection,
    statement: str,
    params: Any | None,
    *,
    fmt: str,
    watermark: dict[str, str],
    sink: Sink,
    progress: Progress | None = None,
    batch_rows: int = BATCH_ROWS,
) -> ExportResult:
    """Run ``statement`` in ``conn``'s analyst session and write it to ``sink`` as ``fmt``.

    Rows come ``batch_rows`` at a time from a server-side cursor, loaded as the
    format wants them (``use_format_loaders``: for CSV and Parquet most types
    as the server's text, no Python object per value); each batch is encoded
    column by column in a thread while the next one is fetched, so the server
    and the encoding work at the same time.
    """
    rows = nbytes = 0
    try:
        async with conn.cursor(name="lp_export") as cur:
            use_format_loaders(cur, fmt)  # JSON, numeric, times as the format wants them
            await cur.execute(statement, params)
            columns = columns_from_description(cur.description or [], conn.adapters.types)
            writer = open_writer(fmt, columns, watermark=watermark)
            fetch = asyncio.ensure_future(cur.fetchmany(batch_rows))
            try:
                while batch := await fetch:
                    fetch = asyncio.ensure_future(cur.fetchmany(batch_rows))
                    chunk = await asyncio.to_thread(writer.write, batch)
                    if chunk:
                        await sink(chunk)
                    rows += len(batch)
                    nbytes += len(chunk)
                    if progress is not None:
                        await progress(rows, nbytes)
            finally:
                if not fetch.done():
                    # a failure while the next batch was on its way: let it land, so the
                    # cursor closes on an idle connection
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await asyncio.shield(fetch)
            tail = writer.close()
    except ANALYST_MISTAKES as e:
        raise input_error(e) from e
    if tail:
        await sink(tail)
        nbytes += len(tail)
    if progress is not None:
        await progress(rows, nbytes)
    return ExportResult(rows=rows, bytes=nbytes, columns=columns)
