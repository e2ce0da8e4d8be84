"""Steps, grains, time ranges and KPI periods: parsed, aligned and bounded.

Every bucket is anchored at ``ORIGIN`` (2000-01-01 UTC, the rollups' own
origin), so a step's buckets are the rollups' buckets. A bad input raises
``QueryError`` naming the field (the routes answer 422 problem+json).

>>> step_seconds("15m"), step_seconds("1d")
(900, 86400)
>>> from datetime import datetime, UTC
>>> t = datetime(2026, 12, 1, 10, 7, 30, tzinfo=UTC)
>>> floor_to(t, 300).isoformat(), ceil_to(t, 300).isoformat()
('2026-12-01T10:05:00+00:00', '2026-12-01T10:10:00+00:00')
>>> check_points(t, ceil_to(t, 86400), 60, max_points=10, field="step")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
linkpulse.query.timegrid.QueryError: step: 833 points at 60 s over this range; at most 10 ...
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = [
    "EARLIEST",
    "LATEST",
    "ORIGIN",
    "PERIODS",
    "STEPS",
    "QueryError",
    "aligned",
    "ceil_to",
    "check_points",
    "check_range",
    "floor_to",
    "kpi_period",
    "step_seconds",
]

ORIGIN: Final = datetime(2000, 1, 1, tzinfo=UTC)
# Times outside these bounds are refused: far dates overflow a period's arithmetic
# (a week earlier, the previous period) and hold no data anyway.
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(9000, 1, 1, tzinfo=UTC)
STEPS: Final = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400}
# KPI periods and the grain their end is rounded up to (an exact rollup answers).
PERIODS: Final = {"1h": (3600, 60), "24h": (86400, 3600), "7d": (7 * 86400, 3600),
                  "30d": (30 * 86400, 86400)}  # fmt: skip


class QueryError(ValueError):
    """A query input that can't be answered: ``field`` names it, ``detail`` says why."""

    def __init__(self, field: str, detail: str, status: int = 422) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail
        self.status = status


def step_seconds(step: str, field: str = "step") -> int:
    """Seconds of a step name (``1m``, ``5m``, ``15m``, ``1h``, ``1d``)."""
    try:
        return STEPS[step]
    except KeyError:
        raise QueryError(
            field=field, detail=f"unknown step {step!r}; one of {', '.join(STEPS)}"
        ) from None


def floor_to(t: datetime, seconds: int) -> datetime:
    """The start of the ``seconds``-wide bucket holding ``t``."""
    offset = (t - ORIGIN) // timedelta(seconds=seconds)
    return ORIGIN + offset * timedelta(seconds=seconds)


def ceil_to(t: datetime, seconds: int) -> datetime:
    """The first bucket boundary at or after ``t``."""
    down = floor_to(t, seconds)
    return down if down == t else down + timedelta(seconds=seconds)


def aligned(t: datetime, seconds: int) -> bool:
    """Whether ``t`` is a boundary of ``seconds``-wide buckets."""
    return floor_to(t, seconds) == t


def check_range(start: datetime, end: datetime) -> None:
    """``start`` before ``end``, both with a zone and inside [1970, 9000)."""
    for name, t in (("start", start), ("end", end)):
        if t.tzinfo is None:
            raise QueryError(
                field=name, detail="needs a UTC offset (ISO 8601, e.g. 2026-12-01T10:00:00Z)"
            )
        if not EARLIEST <= t < LATEST:
            raise QueryError(
                field=name, detail=f"{t.isoformat()} is outside 1970-01-01 .. 9000-01-01"
            )
    if end <= start:
        raise QueryError(
            field="end", detail=f"end ({end.isoformat()}) must be after start ({start.isoformat()})"
        )


def check_points(
    start: datetime, end: datetime, seconds: int, *, max_points: int, field: str
) -> int:
    """The number of ``seconds``-buckets in [start, end); too many raises naming ``field``."""
    points = math.ceil((end - start) / timedelta(seconds=seconds))
    if points > max_points:
        raise QueryError(
            field=field,
            detail=f"{points} points at {seconds} s over this range; at most {max_points} "
            "(use a larger step or a shorter range)",
        )
    return points


def kpi_period(period: str, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of a named period ending at ``now`` rounded up to the period's grain."""
    try:
        length, grain = PERIODS[period]
    except KeyError:
        raise QueryError(
            field="period", detail=f"unknown period {period!r}; one of {', '.join(PERIODS)}"
        ) from None
    end = ceil_to(now, grain)
    return end - timedelta(seconds=length), end
