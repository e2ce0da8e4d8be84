"""Streaming result formats shared by the SQL endpoint and the exports.

``open_writer(fmt, columns, watermark=...)`` gives a ``RowWriter``:
``write(rows) -> bytes`` per batch, ``close(summary=...) -> bytes`` at the
end, in constant memory whatever the number of rows. Formats: ``jsonl``,
``csv``, ``json`` and ``parquet`` (see ``writers`` and ``parquet`` for where
the column types, the watermark and the summary go; docs/sql-endpoint.md).

>>> w = open_writer("csv", [Column("seller", "text"), Column("gmv", "numeric(12,2)")])
>>> from decimal import Decimal
>>> (w.write([("s1", Decimal("10.50"))]) + w.close()).decode().splitlines()[1:]
['seller,gmv', 's1,10.50']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from linkpulse.formats.columns import Column, columns_from_description
from linkpulse.formats.negotiate import DEFAULT_FORMAT, FORMATS, media_type, negotiate
from linkpulse.formats.parquet import ParquetRowWriter
from linkpulse.formats.writers import CsvWriter, JsonLinesWriter, JsonWriter, RowWriter

__all__ = [
    "DEFAULT_FORMAT",
    "FORMATS",
    "Column",
    "RowWriter",
    "columns_from_description",
    "media_type",
    "negotiate",
    "open_writer",
]

_WRITERS: dict[str, type[RowWriter]] = {
    "jsonl": JsonLinesWriter,
    "csv": CsvWriter,
    "json": JsonWriter,
    "parquet": ParquetRowWriter,
}


def open_writer(
    fmt: str, columns: Sequence[Column], *, watermark: Mapping[str, str] | None = None
) -> RowWriter:
    """A writer of ``fmt`` for rows of ``columns`` (``ValueError`` for an unknown format)."""
    try:
        cls = _WRITERS[fmt]
    except KeyError:
        msg = f"unknown format {fmt!r}: use one of {', '.join(_WRITERS)}"
        raise ValueError(msg) from None
    return cls(columns, watermark=watermark)
