"""Streaming row writers for JSON lines, JSON and CSV: bytes out per batch, nothing kept.

Each writer turns batches of rows (tuples in column order) into the bytes to
send now; ``close`` gives the rest. What a reader needs to know besides the
rows travels in-band, the same way in every format:

* a **header**: the columns with their PostgreSQL types and the watermark
  (who exported what, when), when one is given;
* an optional **summary** passed to ``close`` (the SQL endpoint sends
  ``{"rows": n, "truncated": false}``, a cut result ``truncated: true``).

JSON lines: the first line is ``{"@linkpulse": {"columns": [...], "watermark": {...}}}``,
then one object per row, then, if a summary is given,
``{"@linkpulse": {"summary": {...}}}``. JSON: one object
``{"columns": [...], "watermark": {...}, "rows": [...], "summary": {...}}``.
CSV: a ``# linkpulse {...}`` comment line with the header, the column names,
the rows, and a trailing ``# linkpulse {"summary": ...}`` comment line.

>>> w = JsonLinesWriter([Column("n", "int8")])
>>> w.write([(1,), (2,)]).decode().splitlines()[1:]
['{"n":1}', '{"n":2}']
>>> w.close(summary={"truncated": False})
b'{"@linkpulse":{"summary":{"rows":2,"truncated":false}}}\\n'
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from linkpulse.formats.columns import Column, json_default

__all__ = ["CsvWriter", "JsonLinesWriter", "JsonWriter", "RowWriter", "unique_names"]

META_KEY = "@linkpulse"


def unique_names(columns: Sequence[Column]) -> list[Column]:
    """Columns with repeated names suffixed ``_2``, ``_3``... (``SELECT 1, 1`` names both
    ``?column?``; an object per row would otherwise drop one).

    >>> [c.name for c in unique_names([Column("a", "int4"), Column("a", "int4")])]
    ['a', 'a_2']
    """
    seen: set[str] = set()
    out: list[Column] = []
    for c in columns:
        name, k = c.name, 1
        while name in seen:
            k += 1
            name = f"{c.name}_{k}"
        seen.add(name)
        out.append(c if name == c.name else Column(name, c.pg_type))
    return out


class RowWriter:
    """Base of the writers: ``write(rows) -> bytes`` per batch, ``close() -> bytes`` once."""

    def __init__(
        self, columns: Sequence[Column], *, watermark: Mapping[str, str] | None = None
    ) -> None:
        self.columns = unique_names(columns)
        self.watermark = dict(watermark) if watermark is not None else None
        self.rows_written = 0
        self._started = False
        self._closed = False

    def header(self) -> dict[str, Any]:
        """The in-band header: the columns with their types, and the watermark if any."""
        head: dict[str, Any] = {
            "columns": [{"name": c.name, "type": c.pg_type} for c in self.columns]
        }
        if self.watermark is not None:
            head["watermark"] = self.watermark
        return head

    def write(self, rows: Sequence[Sequence[Any]]) -> bytes:
        """The bytes for ``rows`` (the header too on the first call)."""
        if self._closed:
            msg = "write after close"
            raise ValueError(msg)
        out = b"" if self._started else self._start()
        self._started = True
        self.rows_written += len(rows)
        return out + self._rows(rows) if rows else out

    def close(self, *, summary: Mapping[str, Any] | None = None) -> bytes:
        """The remaining bytes; ``summary`` (with ``rows`` added) ends the stream in-band."""
        out = b"" if self._started else self._start()
        self._started = self._closed = True
        full = None if summary is None else {"rows": self.rows_written, **summary}
        return out + self._end(full)

    def _start(self) -> bytes:
        raise NotImplementedError

    def _rows(self, rows: Sequence[Sequence[Any]]) -> bytes:
        raise NotImplementedError

    def _end(self, summary: dict[str, Any] | None) -> bytes:
        raise NotImplementedError


def _dumps(v: Any) -> bytes:
    return orjson.dumps(v, default=json_default)


class JsonLinesWriter(RowWriter):
    """JSON lines (``application/x-ndjson``): one object per row, header and summary lines."""

    def _start(self) -> bytes:
        return _dumps({META_KEY: self.header()}) + b"\n"

    def _rows(self, rows: Sequence[Sequence[Any]]) -> bytes:
        names = [c.name for c in self.columns]
        return b"".join(
            orjson.dumps(dict(zip(names, r, strict=True)), default=json_default) + b"\n"
            for r in rows
        )

    def _end(self, summary: dict[str, Any] | None) -> bytes:
        return b"" if summary is None else _dumps({META_KEY: {"summary": summary}}) + b"\n"


class JsonWriter(RowWriter):
    """One JSON document streamed: ``{"columns", "watermark", "rows": [...], "summary"}``."""

    def _start(self) -> bytes:
        return _dumps(self.header())[:-1] + b',"rows":['

    def _rows(self, rows: Sequence[Sequence[Any]]) -> bytes:
        names = [c.name for c in self.columns]
        body = b",".join(_dumps(dict(zip(names, r, strict=True))) for r in rows)
        return (b"," + body) if self.rows_written > len(rows) else body

    def _end(self, summary: dict[str, Any] | None) -> bytes:
        return b"]" + (b"" if summary is None else b',"summary":' + _dumps(summary)) + b"}"


def _csv_text(v: Any) -> Any:
    """One value as CSV text: exact numerics, ISO times, JSON for structures."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(v)).decode()
    if isinstance(v, dict | list):
        return orjson.dumps(v, default=json_default).decode()
    return v


def _csv_converter(col: Column) -> Callable[[Any], Any] | None:
    """The per-value conversion of a column of Python values (None: written as they are)."""
    if col.base in ("json", "jsonb") or col.is_array:
        return lambda v: v if v is None or isinstance(v, str) else _csv_text(v)
    if col.base in ("text", "varchar", "bpchar", "name", "int2", "int4", "int8", "float8"):
        return None  # csv writes these as they are
    return lambda v: None if v is None else _csv_text(v)


_BOOL_TEXT = {"t": "true", "f": "false"}


def _iso_times(values: Sequence[Any], *, zoned: bool) -> list[Any]:
    """PostgreSQL's ``2026-11-30 12:00:00.5+00`` as ISO 8601 ``2026-11-30T12:00:00.5+00:00``,
    the column at once in Arrow."""
    # (infinity stays infinity: only a date followed by a time gets its T)
    text = pc.replace_substring_regex(
        pa.array(values, pa.string()), r"^(\d{4,}-\d\d-\d\d) ", r"\1T", max_replacements=1
    )
    if zoned:  # +HH -> +HH:MM (+05:30 stays)
        text = pc.replace_substring_regex(text, r"(\d[+-]\d\d)$", r"\1:00")
    return text.to_pylist()  # type: ignore[no-any-return]


def _csv_column(col: Column, values: Sequence[Any]) -> Sequence[Any]:
    """One column of a batch as the CSV writer takes it.

    Values loaded as the server's text (``loaders.use_format_loaders``) are
    written as they are, but times (ISO 8601, as ``datetime.isoformat`` spells
    them) and booleans (``true``/``false``); Python values are converted one by one.
    """
    first = next((v for v in values if v is not None), None)
    if first is None:
        return values
    if isinstance(first, str):
        if col.is_array:
            return values
        if col.base == "bool":
            return list(map(_BOOL_TEXT.get, values))
        if col.base in ("timestamptz", "timestamp"):
            return _iso_times(values, zoned=col.base == "timestamptz")
        return values
    conv = _csv_converter(col)
    return values if conv is None else [conv(v) for v in values]


class CsvWriter(RowWriter):
    """CSV (RFC 4180, ``text/csv``): header and summary as ``# linkpulse {...}`` comment lines.

    NULL is an empty field; so is an empty text (Python 3.11's csv module can't
    tell them apart; readers such as polars read both as null). Use JSON lines or
    Parquet when that difference matters. Batches are converted column by column.
    """

    def __init__(
        self, columns: Sequence[Column], *, watermark: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(columns, watermark=watermark)
        self._buf = io.StringIO()
        self._csv = csv.writer(self._buf, lineterminator="\n")

    def _take(self) -> bytes:
        text = self._buf.getvalue()
        self._buf.seek(0)
        self._buf.truncate()
        return text.encode()

    def _start(self) -> bytes:
        self._csv.writerow([c.name for c in self.columns])
        return b"# linkpulse " + _dumps(self.header()) + b"\n" + self._take()

    def _rows(self, rows: Sequence[Sequence[Any]]) -> bytes:
        cols = [
            _csv_column(c, v) for c, v in zip(self.columns, zip(*rows, strict=True), strict=True)
        ]
        self._csv.writerows(zip(*cols, strict=True))
        return self._take()

    def _end(self, summary: dict[str, Any] | None) -> bytes:
        return b"" if summary is None else b"# linkpulse " + _dumps({"summary": summary}) + b"\n"
