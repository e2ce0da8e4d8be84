"""Backfill: load NDJSON or Parquet events through the writer, bad lines to dead letters.

Every line (or Parquet row) is validated like a live event; an invalid one is
reported with its line number, field and problem, written to ``dead_letters``
(source ``backfill:<file name>``, sequence = line number) and skipped, and the
load goes on.

Events older than the raw horizon (less a day's margin: ``raw_cutoff``) are
not loaded, on every tier, and are counted apart: retention would drop them,
on the full tier even while the load runs (its retention policy is a
background job), so "stored" would not be true. Their rollups can't be
loaded alone either: a rollup bucket is recomputed from the raw events, and
exact distinct users don't add up. To keep older history, raise
``LINKPULSE_STORE_RAW_RETENTION_DAYS`` before the load.

>>> list(_ndjson_lines([b'{"a": 1}\\n', b'\\n', b'x\\n']))
[(1, b'{"a": 1}'), (3, b'x')]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from linkpulse.config import get_settings
from linkpulse.errors import SchemaValidationError
from linkpulse.schemas import decode_event, validate_event
from linkpulse.schemas.events import BaseEvent
from linkpulse.schemas.outputs import DeadLetter
from linkpulse.store.writer import EventWriter

if TYPE_CHECKING:
    from linkpulse.privacy.pseudonym import Pseudonymiser

__all__ = ["HORIZON_MARGIN", "BackfillReport", "Invalid", "backfill", "raw_cutoff"]

# Events this close to the raw horizon are refused too: their chunk (or
# partition, a UTC day) would be dropped by retention within this time, which
# a long load may well outlast.
HORIZON_MARGIN = timedelta(days=1)


@dataclass(frozen=True)
class Invalid:
    """One input that was not loaded."""

    line: int
    field: str
    problem: str


@dataclass
class BackfillReport:
    """What a backfill read, stored and rejected."""

    read: int = 0
    inserted: int = 0
    invalid: list[Invalid] = field(default_factory=list)
    too_old: int = 0  # valid events older than ``cutoff``: not loaded
    cutoff: datetime | None = None


def raw_cutoff(raw_days: int, now: datetime | None = None) -> datetime:
    """The oldest event time a backfill loads: the raw horizon plus ``HORIZON_MARGIN``.

    >>> raw_cutoff(90, datetime(2026, 12, 1, tzinfo=UTC)).isoformat()
    '2026-09-03T00:00:00+00:00'
    """
    return (now or datetime.now(UTC)) - timedelta(days=raw_days) + HORIZON_MARGIN


def _ndjson_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    for no, line in enumerate(lines, start=1):
        line = line.strip()
        if line:
            yield no, line


def _parquet_rows(path: Path) -> Iterator[tuple[int, bytes | dict[str, Any]]]:
    import polars as pl

    for no, row in enumerate(pl.read_parquet(path).iter_rows(named=True), start=1):
        out = {k: v for k, v in row.items() if v is not None}
        props = out.get("properties")
        if isinstance(props, str | bytes):  # JSON text, the usual way to keep free-form maps
            try:
                out["properties"] = orjson.loads(props)
            except orjson.JSONDecodeError:
                pass  # validation names the field
        elif isinstance(props, dict):  # a struct column: keys absent from this row are null
            out["properties"] = {k: v for k, v in props.items() if v is not None}
        yield no, out


def _parse(raw: bytes | dict[str, Any]) -> BaseEvent:
    if isinstance(raw, bytes):
        return decode_event(raw)
    return validate_event(raw)


def backfill(
    path: Path,
    writer: EventWriter,
    *,
    batch_size: int = 5000,
    raw_days: int | None = None,
    now: datetime | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_invalid: Callable[[Invalid], None] | None = None,
    pseudonymiser: Pseudonymiser | None = None,
) -> BackfillReport:
    """Load ``path`` (``.ndjson``/``.jsonl``/``.json`` or ``.parquet``) into the store.

    Events before ``raw_cutoff(raw_days, now)`` are counted in ``too_old`` and
    not loaded (``raw_days`` defaults to ``LINKPULSE_STORE_RAW_RETENTION_DAYS``).
    ``on_progress(done, total)`` is called after each batch (bytes for NDJSON,
    rows for Parquet); ``on_invalid`` for each rejected line.
    """
    if not path.is_file():
        msg = f"backfill file not found: {path}"
        raise ValueError(msg)
    suffix = path.suffix.lower()
    if raw_days is None:
        raw_days = get_settings().store_raw_retention_days
    cutoff = raw_cutoff(raw_days, now)
    report = BackfillReport(cutoff=cutoff)
    source = f"backfill:{path.name}"
    events: list[BaseEvent] = []
    letters: list[DeadLetter] = []

    def flush(done: int, total: int) -> None:
        if pseudonymiser is not None:
            events[:] = pseudonymiser.events(events)
            letters[:] = pseudonymiser.letters(letters)
        if events:
            report.inserted += writer.write_events(events)
            events.clear()
        if letters:
            writer.write_dead_letters(letters)
            letters.clear()
        if on_progress:
            on_progress(done, total)

    if suffix == ".parquet":
        import polars as pl

        total = pl.scan_parquet(path).select(pl.len()).collect().item()
        rows: Iterable[tuple[int, bytes | dict[str, Any]]] = _parquet_rows(path)
        position: Callable[[int], int] = lambda no: no  # noqa: E731
    elif suffix in (".ndjson", ".jsonl", ".json"):
        total = path.stat().st_size
        handle = path.open("rb")
        offsets = {"bytes": 0}

        def counted() -> Iterator[bytes]:
            for line in handle:
                offsets["bytes"] += len(line)
                yield line

        rows = _ndjson_lines(counted())
        position = lambda _no: offsets["bytes"]  # noqa: E731
    else:
        msg = f"backfill reads .ndjson, .jsonl, .json or .parquet files, got {path.name!r}"
        raise ValueError(msg)

    for no, raw in rows:
        report.read += 1
        try:
            event = _parse(raw)
            if event.event_time < cutoff:
                report.too_old += 1
            else:
                events.append(event)
        except SchemaValidationError as e:
            bad = Invalid(no, e.field, e.problem)
            report.invalid.append(bad)
            if on_invalid:
                on_invalid(bad)
            payload = (
                raw.decode("utf-8", "replace")
                if isinstance(raw, bytes)
                else (orjson.dumps(raw, default=str).decode())
            )
            letters.append(
                DeadLetter(
                    payload=payload,
                    field=e.field,
                    problem=e.problem,
                    source=source,
                    sequence=no,
                    received_at=datetime.now(UTC),
                )
            )
        if len(events) >= batch_size or len(letters) >= batch_size:
            flush(position(no), total)
    flush(total, total)
    return report
