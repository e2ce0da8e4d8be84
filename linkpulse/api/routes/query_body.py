"""The body of ``POST /v1/query`` and its check against the catalogue.

The model documents the shape (OpenAPI, with the catalogue's names as enums);
``to_table`` checks what a schema can't: names against the catalogue, filter
values against their dimension's type, orders naming a selected column. Each
refusal is a ``QueryError`` naming the field (``measures[1]``,
``filters[0].value``), which the route answers as 422 problem+json.

>>> body = QueryBody.model_validate({"measures": ["events"], "dimensions": ["hour_of_day"],
...     "start": "2026-12-01T00:00:00Z", "end": "2026-12-02T00:00:00Z"})
>>> to_table(body).dimensions
['hour_of_day']
>>> to_table(body.model_copy(update={"measures": ["events", "nope"]}))
Traceback (most recent call last):
...
linkpulse.query.timegrid.QueryError: measures[1]: unknown measure 'nope'; see GET /v1/catalog
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from linkpulse.query.answers import Table
from linkpulse.query.catalog import DIMENSIONS, MEASURES
from linkpulse.query.compiler import Filter
from linkpulse.query.timegrid import QueryError

__all__ = ["FilterIn", "OrderIn", "QueryBody", "to_table"]

_NO_NUL = r"^[^\x00]*$"  # PostgreSQL text holds no NUL
Scalar = str | int


class FilterIn(BaseModel):
    """``dimension op value``: eq and ne take one value, in a list of them."""

    model_config = ConfigDict(extra="forbid")
    dimension: str = Field(max_length=64, json_schema_extra={"enum": list(DIMENSIONS)})
    op: Literal["eq", "ne", "in"] = "eq"
    value: Scalar | list[Scalar] = Field(description="a value, or a list of them for 'in'")


class OrderIn(BaseModel):
    """Sort by a selected measure, dimension or ``time``."""

    model_config = ConfigDict(extra="forbid")
    by: str = Field(max_length=64)
    desc: bool = False


class QueryBody(BaseModel):
    """A multi-dimensional query (the names are in ``GET /v1/catalog``)."""

    model_config = ConfigDict(extra="forbid")
    measures: list[str] = Field(
        min_length=1, max_length=16, json_schema_extra={"items": {"enum": list(MEASURES)}}
    )
    dimensions: list[str] = Field(
        default_factory=list,
        max_length=4,
        json_schema_extra={"items": {"enum": list(DIMENSIONS)}},
    )
    filters: list[FilterIn] = Field(default_factory=list, max_length=16)
    start: AwareDatetime
    end: AwareDatetime
    grain: Literal["1m", "5m", "15m", "1h", "1d"] | None = Field(
        None, description="time buckets (a 'time' column); none: the whole range"
    )
    order: list[OrderIn] = Field(default_factory=list, max_length=8)
    limit: int = Field(1000, ge=1, le=10_000)
    cursor: str | None = Field(None, max_length=4096, description="next_cursor of the last page")
    tenant: str | None = Field(None, max_length=200, pattern=_NO_NUL, description="admins")
    seller: str | None = Field(None, max_length=200, pattern=_NO_NUL)


def _value(dim: str, value: Any, field: str) -> Scalar:
    kind = DIMENSIONS[dim].type
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**31:
            return value
        raise QueryError(field=field, detail=f"{dim} takes an integer, got {value!r}")
    if isinstance(value, str) and "\x00" not in value and len(value) <= 200:
        return value
    raise QueryError(
        field=field, detail=f"{dim} takes a text value (no NUL, at most 200 characters)"
    )


def _filter(i: int, f: FilterIn) -> Filter:
    field = f"filters[{i}]"
    if f.dimension not in DIMENSIONS:
        detail = f"unknown dimension {f.dimension!r}; one of {', '.join(DIMENSIONS)}"
        raise QueryError(field=f"{field}.dimension", detail=detail)
    many = isinstance(f.value, list)
    if many != (f.op == "in"):
        raise QueryError(
            field=f"{field}.value", detail="'in' takes a list; 'eq' and 'ne' one value"
        )
    values = f.value if isinstance(f.value, list) else [f.value]
    if not 1 <= len(values) <= 100:
        raise QueryError(field=f"{field}.value", detail="'in' takes 1 to 100 values")
    typed = tuple(_value(f.dimension, v, f"{field}.value") for v in values)
    return Filter(DIMENSIONS[f.dimension], f.op, typed)


def to_table(body: QueryBody) -> Table:
    """The checked query (or a ``QueryError`` naming the first field at fault)."""
    for i, name in enumerate(body.measures):
        if name not in MEASURES:
            raise QueryError(
                field=f"measures[{i}]", detail=f"unknown measure {name!r}; see GET /v1/catalog"
            )
    for i, name in enumerate(body.dimensions):
        if name not in DIMENSIONS:
            raise QueryError(
                field=f"dimensions[{i}]", detail=f"unknown dimension {name!r}; see GET /v1/catalog"
            )
    for field, names in (("measures", body.measures), ("dimensions", body.dimensions)):
        if len(set(names)) != len(names):
            raise QueryError(field=field, detail="names a column twice")
    selected = {*body.measures, *body.dimensions, *(["time"] if body.grain else [])}
    order: list[tuple[str, bool]] = []
    for i, o in enumerate(body.order):
        if o.by not in selected or o.by in {n for n, _ in order}:
            detail = f"order by {o.by!r}: not a selected column (or named twice); selected: "
            raise QueryError(field=f"order[{i}].by", detail=detail + ", ".join(sorted(selected)))
        order.append((o.by, o.desc))
    normalised = body.model_dump(mode="json", exclude={"cursor"})
    return Table(
        measures=list(body.measures),
        dimensions=list(body.dimensions),
        filters=[_filter(i, f) for i, f in enumerate(body.filters)],
        start=body.start,
        end=body.end,
        grain=body.grain,
        order=order,
        limit=body.limit,
        cursor=body.cursor,
        normalised=normalised,
    )
