"""psycopg loaders that hand each format its values ready-made, skipping a round trip.

By default psycopg parses ``jsonb`` into Python objects (which the JSON and CSV
writers then serialise again) and ``numeric`` into ``Decimal`` (which JSON can't
take without a Python callback per value). ``use_format_loaders(cursor, fmt)``
makes the cursor load them as the format needs them instead:

* ``jsonl``/``json``: ``json``/``jsonb`` and ``numeric`` as ``orjson.Fragment``,
  the server's text embedded as it is (exact numbers, no parse);
* ``csv``: ``json``/``jsonb`` and ``numeric`` as ``PgText``, the server's text
  (the CSV writer writes a ``PgText`` column as it is, with no per-value step);
* ``parquet``: ``json``/``jsonb`` as text (Parquet keeps JSON as text anyway);
  the rest unchanged (Arrow wants Python values).

NaN and infinite numerics have no JSON spelling: they load as ``null`` in JSON.

>>> orjson.dumps([_json_number(b"12.50"), _json_number(b"NaN")])
b'[12.50,null]'
"""

from __future__ import annotations

from typing import Any

import orjson
from psycopg.abc import AdaptContext
from psycopg.adapt import Loader

__all__ = ["PgText", "use_format_loaders"]

_NOT_JSON_NUMBERS = frozenset({b"NaN", b"Infinity", b"-Infinity"})


def _json_number(data: Any) -> Any:
    raw = bytes(data)
    return None if raw in _NOT_JSON_NUMBERS else orjson.Fragment(raw)


class _FragmentLoader(Loader):
    def load(self, data: Any) -> Any:
        return orjson.Fragment(bytes(data))


class _JsonNumberLoader(Loader):
    def load(self, data: Any) -> Any:
        return _json_number(data)


class PgText(str):
    """A value as the server printed it: ready to be written as text."""

    __slots__ = ()


class _TextLoader(Loader):
    def load(self, data: Any) -> Any:
        return PgText(bytes(data).decode())


def use_format_loaders(context: AdaptContext, fmt: str) -> None:
    """Register on ``context`` (a cursor or connection) the loaders ``fmt`` benefits from."""
    if fmt in ("jsonl", "json"):
        pairs: list[tuple[str, type[Loader]]] = [
            ("json", _FragmentLoader),
            ("jsonb", _FragmentLoader),
            ("numeric", _JsonNumberLoader),
        ]
    elif fmt == "csv":
        pairs = [("json", _TextLoader), ("jsonb", _TextLoader), ("numeric", _TextLoader)]
    elif fmt == "parquet":
        pairs = [("json", _TextLoader), ("jsonb", _TextLoader)]
    else:
        return
    for name, loader in pairs:
        context.adapters.register_loader(name, loader)
