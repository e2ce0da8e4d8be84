"""Backtest on a user's own series: ``timestamp,value[,label]`` in, scores out.

The same detectors as the flow (``build_detector``), one step per row; the
step is the most common gap between rows, and a missing row (a hole in the
timestamps) is fed as an empty step, like the flow does. An empty ``value``
cell is an empty step too. Bad files are refused with the line:

>>> import io
>>> read_series(io.StringIO("timestamp,value\\n2026-11-24T10:00:00Z,3\\nnoon,4\\n"))
Traceback (most recent call last):
...
ValueError: line 3: timestamp: expected ISO 8601 like 2026-11-24T10:00:00Z, got 'noon'
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from linkpulse.online_ml.spec import build_detector
from linkpulse.schemas.outputs import AnomalyScore

OUT_COLUMNS = ("timestamp", "value", "score", "expected", "lower", "upper", "explanation")


@dataclass(frozen=True)
class Row:
    """One input row: its line number in the file (header = 1), time, value and label."""

    line: int
    time: datetime
    value: float | None
    label: int | None


def _parse_time(text: str, line: int) -> datetime:
    s = text.strip()
    try:
        if s.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(s), UTC)
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        msg = f"line {line}: timestamp: expected ISO 8601 like 2026-11-24T10:00:00Z, got {text!r}"
        raise ValueError(msg) from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def read_series(f: IO[str]) -> list[Row]:
    """Parse and check a ``timestamp,value[,label]`` CSV (see the module docstring)."""
    reader = csv.reader(f)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        msg = "line 1: the file is empty; expected a header 'timestamp,value[,label]'"
        raise ValueError(msg) from None
    missing = [c for c in ("timestamp", "value") if c not in header]
    if missing:
        msg = (
            f"line 1: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            f"expected a header 'timestamp,value[,label]', got {','.join(header)!r}"
        )
        raise ValueError(msg)
    it, iv = header.index("timestamp"), header.index("value")
    il = header.index("label") if "label" in header else None
    rows: list[Row] = []
    for n, cells in enumerate(reader, start=2):
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) < len(header):
            msg = f"line {n}: expected {len(header)} columns ({','.join(header)}), got {len(cells)}"
            raise ValueError(msg)
        t = _parse_time(cells[it], n)
        if rows and t <= rows[-1].time:
            msg = (
                f"line {n}: timestamp {cells[it].strip()} is not after the previous row's "
                f"({rows[-1].time.isoformat()}); sort the file by time, one row per time"
            )
            raise ValueError(msg)
        raw = cells[iv].strip()
        value: float | None = None
        if raw:
            try:
                value = float(raw)
            except ValueError:
                msg = f"line {n}: value: expected a number (or nothing for no data), got {raw!r}"
                raise ValueError(msg) from None
            if math.isnan(value):
                msg = f"line {n}: value: NaN is not a value; leave the cell empty for no data"
                raise ValueError(msg)
        label = None
        if il is not None and cells[il].strip():
            try:
                label = int(cells[il].strip())
            except ValueError:
                msg = f"line {n}: label: expected 0 or 1, got {cells[il].strip()!r}"
                raise ValueError(msg) from None
        rows.append(Row(n, t, value, label))
    if len(rows) < 3:
        msg = f"the file has {len(rows)} data rows; at least 3 are needed to find the step"
        raise ValueError(msg)
    return rows


def step_of(rows: list[Row]) -> float:
    """The series' step in seconds: the median gap between consecutive rows."""
    gaps = [(b.time - a.time).total_seconds() for a, b in zip(rows, rows[1:], strict=False)]
    return float(statistics.median(gaps))


def score_rows(
    rows: list[Row],
    spec: Mapping[str, Any] | None = None,
    *,
    series: str = "csv|value||csv",
    grace: int | None = None,
) -> list[tuple[Row | None, AnomalyScore]]:
    """Score every step (holes filled with empty steps: their row is None)."""
    step = step_of(rows)
    s = dict(spec or {"kind": "sum"})
    if grace is None:
        grace = min(int(86400.0 / step), max(1, len(rows) // 5))
    s.setdefault("grace", grace)
    s.setdefault("period_s", step)
    det = build_detector(s, series=series)
    out: list[tuple[Row | None, AnomalyScore]] = []
    prev: datetime | None = None
    for row in rows:
        if prev is not None:
            missing = round((row.time - prev).total_seconds() / step) - 1
            for k in range(1, min(missing, 100_000) + 1):
                t = datetime.fromtimestamp(prev.timestamp() + k * step, UTC)
                out.append((None, det.update(t, None)))
        out.append((row, det.update(row.time, row.value)))
        prev = row.time
    return out


def write_scores(f: IO[str], scored: Iterable[tuple[Row | None, AnomalyScore]]) -> None:
    """Write ``timestamp,value,score,expected,lower,upper,explanation``."""
    w = csv.writer(f)
    w.writerow(OUT_COLUMNS)

    def num(v: float | None) -> str:
        return "" if v is None else f"{v:.6g}"

    for _, s in scored:
        w.writerow(
            [
                s.time.isoformat().replace("+00:00", "Z"),
                num(s.value),
                f"{s.score:.6f}",
                num(s.expected),
                num(s.lower),
                num(s.upper),
                s.explanation,
            ]
        )
