"""Result columns: a PostgreSQL type name, its Arrow type, and how values are made portable.

A column is described by its name and its PostgreSQL type as PostgreSQL
prints it (``numeric(12,2)``, ``timestamptz``, ``text[]``...). Every writer
(JSON lines, CSV, JSON, Parquet) reads the same description, so a column has
one meaning whatever the format.

The Arrow mapping is faithful where Arrow has the type and says so where it
has not: ``numeric(p,s)`` becomes ``decimal128(p,s)`` (exact); a bare
``numeric`` (no precision, e.g. ``sum(amount)``) becomes ``float64``, because
its scale can differ row to row and Arrow decimals have one scale per column:
cast in the SQL (``sum(amount)::numeric(18,2)``) to keep it exact. ``json`` /
``jsonb``, ``uuid``, ``inet`` and unknown types are strings (JSON text, the
canonical spelling); ``interval`` is a ``duration[us]`` (months count 30 days,
as psycopg reads them); one-dimensional arrays are Arrow lists.

>>> Column("total", "numeric(12,2)").arrow_type
Decimal128Type(decimal128(12, 2))
>>> Column("gmv", "numeric").arrow_type
DataType(double)
>>> Column("tags", "text[]").arrow_type
ListType(list<item: string>)
>>> Column("at", "timestamp with time zone").base
'timestamptz'
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from typing import Any

import orjson
import pyarrow as pa

__all__ = ["Column", "columns_from_description", "json_default"]

# PostgreSQL's spellings of the same type -> the canonical (pg_type.typname) name.
_ALIASES = {
    "boolean": "bool",
    "smallint": "int2",
    "integer": "int4",
    "int": "int4",
    "bigint": "int8",
    "real": "float4",
    "double precision": "float8",
    "decimal": "numeric",
    "character varying": "varchar",
    "character": "bpchar",
    "char": "bpchar",
    "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamp",
    "time without time zone": "time",
    "time with time zone": "timetz",
}

_SCALARS: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "oid": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "numeric": pa.float64(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "timestamp": pa.timestamp("us"),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "interval": pa.duration("us"),
    "bytea": pa.binary(),
}

_TYPMOD = re.compile(r"^(?P<base>[a-z ]+?)\s*(?:\((?P<mods>[0-9, ]+)\))?(?P<array>(\[\])*)$")


def _parse(pg_type: str) -> tuple[str, tuple[int, ...], int]:
    """``'numeric(12,2)[]'`` -> ``('numeric', (12, 2), 1)``: base name, modifiers, array depth."""
    text = pg_type.strip().lower()
    depth = 0
    if text.startswith("_"):  # the internal array spelling, _text
        text, depth = text[1:], 1
    m = _TYPMOD.match(text)
    if m is None:
        return text, (), depth
    mods = tuple(int(x) for x in m["mods"].split(",")) if m["mods"] else ()
    base = _ALIASES.get(m["base"], m["base"])
    return base, mods, depth + len(m["array"]) // 2


@dataclass(frozen=True)
class Column:
    """One result column: ``name`` and its PostgreSQL type as PostgreSQL spells it."""

    name: str
    pg_type: str

    @cached_property
    def _parsed(self) -> tuple[str, tuple[int, ...], int]:
        return _parse(self.pg_type)

    @property
    def base(self) -> str:
        """The canonical element type name (``timestamptz``, ``int8``, ``text``...)."""
        return self._parsed[0]

    @property
    def is_array(self) -> bool:
        return self._parsed[2] > 0

    @property
    def element_arrow_type(self) -> pa.DataType:
        base, mods, _ = self._parsed
        if base == "numeric" and mods:
            precision, scale = mods[0], (mods[1] if len(mods) > 1 else 0)
            return (
                pa.decimal128(precision, scale)
                if precision <= 38
                else pa.decimal256(precision, scale)
            )
        return _SCALARS.get(base, pa.string())

    @cached_property
    def arrow_type(self) -> pa.DataType:
        """The Arrow type of this column (a list for arrays, nested per dimension)."""
        t = self.element_arrow_type
        for _ in range(self._parsed[2]):
            t = pa.list_(t)
        return t

    @cached_property
    def arrow_field(self) -> pa.Field:
        """The Arrow field, carrying the PostgreSQL type as field metadata ``pg_type``."""
        return pa.field(self.name, self.arrow_type, metadata={"pg_type": self.pg_type})

    def to_arrow_value(self) -> Callable[[Any], Any]:
        """A function making one Python value of this column acceptable to ``pa.array``."""
        leaf = _arrow_leaf(self)
        if leaf is None:
            return _identity
        depth = self._parsed[2]
        if depth == 0:
            return lambda v: None if v is None else leaf(v)
        return lambda v: _map_nested(v, leaf, depth)


def _identity(v: Any) -> Any:
    return v


def _map_nested(v: Any, f: Callable[[Any], Any], depth: int) -> Any:
    if v is None:
        return None
    if depth == 0:
        return f(v)
    return [_map_nested(x, f, depth - 1) for x in v]


def _json_text(v: Any) -> str:
    return v if isinstance(v, str) else orjson.dumps(v).decode()


def _arrow_leaf(col: Column) -> Callable[[Any], Any] | None:
    """The element conversion pyarrow needs, or None when it takes the value as it is."""
    t = col.element_arrow_type
    if col.base in ("json", "jsonb"):
        return _json_text
    if pa.types.is_floating(t):
        return float  # Decimal (bare numeric) -> float; float stays float
    if pa.types.is_string(t):
        return lambda v: v if isinstance(v, str) else str(v)  # uuid, inet, enums
    return None


def json_default(v: Any) -> Any:
    """orjson's fallback for what it can't encode: numbers stay numbers, bytes base64.

    >>> orjson.dumps([Decimal("1.50"), dt.timedelta(minutes=1)], default=json_default)
    b'[1.5,60.0]'
    """
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(v)).decode()
    return str(v)  # ipaddress, Range, ... : their canonical text


def columns_from_description(description: Sequence[Any], types: Any) -> list[Column]:
    """Columns of a psycopg cursor's ``description``, typed with ``conn.adapters.types``.

    Unknown type oids (enums, domains without a TypeInfo) are described as ``text``.
    """
    out: list[Column] = []
    for d in description:
        info = types.get(d.type_code)
        if info is None:
            out.append(Column(d.name, "text"))
            continue
        name = info.name
        if name == "numeric" and d.precision is not None:
            name = f"numeric({d.precision},{d.scale or 0})"
        out.append(Column(d.name, name + ("[]" if d.type_code == info.array_oid else "")))
    return out
