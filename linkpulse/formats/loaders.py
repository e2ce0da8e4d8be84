"""psycopg loaders that hand each format its values ready-made, skipping a round trip.

By default psycopg parses ``jsonb`` into Python objects (which the JSON and CSV
writers then serialise again), ``numeric`` into ``Decimal`` (which JSON can't
take without a Python callback per value) and times into ``datetime`` (which
Parquet then converts back). ``use_format_loaders(cursor, fmt)`` makes the
cursor load them as the format needs them instead:

* ``jsonl``/``json``: ``json``/``jsonb`` and ``numeric`` as ``orjson.Fragment``,
  the server's text embedded as it is (exact numbers, no parse);
* ``csv`` and ``parquet``: ``json``/``jsonb``, ``numeric``, ``uuid``, ``date``,
  ``timestamp``, ``timestamptz`` and ``bool`` as the server's text, with
  psycopg's C text loader (no Python object but the ``str``): the CSV writer
  writes that text (times made ISO 8601, booleans ``true``/``false``), the
  Parquet writer has Arrow parse each column at once
  (``linkpulse.formats.columnar``).

NaN and infinite numerics have no JSON spelling: they load as ``null`` in JSON.

>>> orjson.dumps([_json_number(b"12.50"), _json_number(b"NaN")])
b'[12.50,null]'
"""

from __future__ import annotations

from typing import Any

import orjson
from psycopg.abc import AdaptContext
from psycopg.adapt import Loader
from psycopg.types.string import TextLoader

__all__ = ["TEXT_LOADED", "use_format_loaders"]

_NOT_JSON_NUMBERS = frozenset({b"NaN", b"Infinity", b"-Infinity"})
# Types the CSV and Parquet writers take as PostgreSQL's text (see the docstring).
TEXT_LOADED = ("json", "jsonb", "numeric", "uuid", "date", "timestamp", "timestamptz", "bool")


def _json_number(data: Any) -> Any:
    raw = bytes(data)
    return None if raw in _NOT_JSON_NUMBERS else orjson.Fragment(raw)


class _FragmentLoader(Loader):
    def load(self, data: Any) -> Any:
        return orjson.Fragment(bytes(data))


class _JsonNumberLoader(Loader):
    def load(self, data: Any) -> Any:
        return _json_number(data)


def use_format_loaders(context: AdaptContext, fmt: str) -> None:
    """Register on ``context`` (a cursor or connection) the loaders ``fmt`` benefits from."""
    if fmt in ("jsonl", "json"):
        pairs: list[tuple[str, type[Loader]]] = [
            ("json", _FragmentLoader),
            ("jsonb", _FragmentLoader),
            ("numeric", _JsonNumberLoader),
        ]
    elif fmt in ("csv", "parquet"):
        pairs = [(name, TextLoader) for name in TEXT_LOADED]
    else:
        return
    for name, loader in pairs:
        context.adapters.register_loader(name, loader)
