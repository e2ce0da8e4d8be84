"""Batches of rows made into Arrow columns: one conversion per column, not one per value.

A batch of rows (tuples, as a cursor gives them) is transposed into columns
and each column becomes one Arrow array in one call into pyarrow's C++:

* values the cursor loaded as **PostgreSQL's text** (``loaders.use_format_loaders``
  loads ``numeric``, ``timestamptz``, ``date``, ``uuid``, JSON... as ``str``
  for Parquet: psycopg's C text loader, no Python object per value) are
  parsed by Arrow's own casts (``'2026-11-30 12:00:00.5+00'`` to
  ``timestamp[us, UTC]``, ``'10.50'`` to ``decimal128(12,2)`` or, for a bare
  ``numeric``, to ``float64``; ``bool`` from ``t``/``f``);
* Python values of the column's type (``int``, ``datetime``, ``Decimal`` for
  ``numeric(p,s)``, lists for arrays...) go to ``pa.array`` as they are;
* anything else (``Decimal`` for a bare ``numeric``, ``UUID`` objects, parsed
  JSON) falls back to the per-value conversion of ``Column.to_arrow_value``.

A value Arrow can't hold raises ``pyarrow.ArrowInvalid`` (a ``ValueError``),
as the per-value path does.

>>> from linkpulse.formats.columns import Column
>>> cols = [Column("at", "timestamptz"), Column("gmv", "numeric"), Column("ok", "bool")]
>>> b = record_batch(cols, [("2026-11-30 12:00:00.5+00", "10.50", "t"), (None, None, None)])
>>> b.column(0).type, b.column(1).to_pylist(), b.column(2).to_pylist()
(TimestampType(timestamp[us, tz=UTC]), [10.5, None], [True, None])
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from linkpulse.formats.columns import Column

__all__ = ["column_array", "record_batch"]


def _first(values: Sequence[Any]) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


def column_array(col: Column, values: Sequence[Any]) -> pa.Array:
    """The Arrow array of one column's values (see the module's docstring for the paths)."""
    t = col.arrow_type
    first = _first(values)
    if first is None:
        return pa.nulls(len(values), t)
    if isinstance(first, str) and not col.is_array:
        text = pa.array(values, pa.string())
        if pa.types.is_string(t):
            return text
        if pa.types.is_boolean(t):  # PostgreSQL prints t / f
            return pc.equal(text, "t")
        return text.cast(t)
    try:
        if isinstance(first, Decimal) and pa.types.is_floating(t):
            # a bare numeric: Arrow infers a decimal wide enough; through its text, as
            # the decimal -> float cast is not correctly rounded
            return pa.array(values).cast(pa.string()).cast(t)
        return pa.array(values, type=t)
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        conv = col.to_arrow_value()  # Decimal -> float, UUID -> str, dict -> JSON text...
        return pa.array([conv(v) for v in values], type=t)


def record_batch(
    columns: Sequence[Column], rows: Sequence[Sequence[Any]], *, schema: pa.Schema | None = None
) -> pa.RecordBatch:
    """``rows`` (tuples in column order) as one Arrow record batch of ``columns``' fields
    (or of ``schema``, the same fields with the writer's metadata)."""
    if schema is None:
        schema = pa.schema([c.arrow_field for c in columns])
    if not rows:
        return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)
    cols = list(zip(*rows, strict=True))
    return pa.RecordBatch.from_arrays(
        [column_array(c, v) for c, v in zip(columns, cols, strict=True)], schema=schema
    )
