"""A query-API JSON query (the body of ``POST /v1/query``) as the SQL an export runs.

The query is checked and compiled exactly as ``POST /v1/query`` does it
(``QueryBody``, ``to_table``, ``answers.query_plan``, ``compile_plan``), except
that an export has no page: the plan's limit is dropped, so every row comes.
The statement's bound values are then inlined by the driver
(``ClientCursor.mogrify``, each value quoted and typed by psycopg, never by
string concatenation), so the job stores one self-contained statement.

>>> field_of(("measures", 1))
'query.measures.1'
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import psycopg
from pydantic import ValidationError

from linkpulse.query.timegrid import QueryError

if TYPE_CHECKING:
    from linkpulse.api.routes.query_body import QueryBody

__all__ = ["QueryExportError", "compile_query", "field_of"]


class QueryExportError(ValueError):
    """The JSON query is invalid: ``field`` (under ``query.``) names where, ``status`` 4xx."""

    def __init__(self, field: str, detail: str, status: int = 422) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail
        self.status = status


def field_of(loc: tuple[Any, ...]) -> str:
    """The export body's field for a location inside its ``query``."""
    return ".".join(["query", *(str(p) for p in loc)])


def parse(query: dict[str, Any]) -> QueryBody:
    """The query, validated as ``POST /v1/query`` validates its body."""
    # imported here: the API package imports this module's caller (routes/exports.py)
    from linkpulse.api.routes.query_body import QueryBody

    try:
        return QueryBody.model_validate(query)
    except ValidationError as e:
        first = e.errors()[0]
        raise QueryExportError(field_of(tuple(first["loc"])), first["msg"]) from e


def compile_query(
    conn: psycopg.AsyncConnection[Any],
    body: QueryBody,
    *,
    seller: str | None,
    max_points: int,
) -> str:
    """The whole result of ``body`` (no page limit) as one SQL statement, values inlined."""
    from linkpulse.api.routes.query_body import to_table
    from linkpulse.query.answers import query_plan
    from linkpulse.query.compiler import compile_plan

    try:
        plan = replace(query_plan(to_table(body), seller=seller, max_points=max_points), limit=None)
    except QueryError as e:
        raise QueryExportError(field_of((e.field,)), e.detail, e.status) from e
    compiled = compile_plan(plan)
    return psycopg.AsyncClientCursor(conn).mogrify(compiled.statement, compiled.params)
