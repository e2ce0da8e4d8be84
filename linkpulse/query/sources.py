"""Which stored source answers a query exactly, coarsest first.

The rollups (``events_1d``, ``events_1h``, ``events_1m``) answer counts and
sums of any range aligned to their width, at any step that is a multiple of
it, for dimensions they keep (a day has no hour of day). A distinct count of
users adds up across none of their rows: ``users_1h`` (one row per hour,
tenant, type, seller and user id, migration 0014) answers it exactly for
hour-aligned ranges, raw ``events`` otherwise; the flow's own measures (late
events) are in ``metric_windows``; anything else misaligned is read from raw
``events``. The response names the source.

A rollup is exact only where it is fresh: the writer's new events reach a
rollup at its next refresh (hours every 5 minutes, days every 30). So a
rollup read is split at the rollup's earliest stale bucket in range
(``analyst.rollup_stale``, migration 0015): the rollup answers before it,
the next source of ``chain`` after it (``split``), and the response names
every source that answered.

>>> from datetime import datetime, UTC
>>> day = datetime(2026, 12, 1, tzinfo=UTC)
>>> from linkpulse.query.catalog import MEASURES, DIMENSIONS
>>> choose([MEASURES["gmv"]], [], day, day.replace(day=8), 86400).name
'events_1d'
>>> choose([MEASURES["gmv"]], [DIMENSIONS["hour_of_day"]], day, day.replace(day=8), None).name
'events_1h'
>>> choose([MEASURES["gmv"]], [], day, day.replace(second=30), None).name
'events'
>>> choose([MEASURES["active_users"]], [], day, day.replace(day=2), 3600).name
'users_1h'
>>> choose([MEASURES["active_users"]], [], day, day.replace(minute=30), 60).name
'events'
>>> [s.name for s in chain(USERS)]
['users_1h', 'events']
>>> [s.name for s in chain(ROLLUPS[1])]
['events_1h', 'events_1m', 'events']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from linkpulse.query.catalog import Dimension, Measure
from linkpulse.query.timegrid import QueryError, aligned

__all__ = [
    "RAW",
    "ROLLUPS",
    "USERS",
    "WINDOWS",
    "Segment",
    "Source",
    "chain",
    "choose",
    "split",
]


@dataclass(frozen=True)
class Source:
    """A view of the ``analyst`` schema and how the compiler reads it."""

    name: str
    time_col: str
    width_s: int | None  # bucket width; None: raw rows

    @property
    def rollup(self) -> bool:
        """A table of buckets a refresh keeps up to date (so it can be stale)."""
        return self.name.startswith(("events_", "users_"))

    @property
    def users(self) -> bool:
        """Rows of user ids (``users_1h``): distinct counts only."""
        return self.name.startswith("users_")


ROLLUPS: Final = (
    Source("events_1d", "bucket", 86400),
    Source("events_1h", "bucket", 3600),
    Source("events_1m", "bucket", 60),
)
WINDOWS: Final = Source("metric_windows", "window_start", 60)  # the flow's 1-minute windows
RAW: Final = Source("events", "event_time", None)
USERS: Final = Source("users_1h", "bucket", 3600)  # distinct users: one row per user and hour


def _fits(
    source: Source,
    dimensions: Sequence[Dimension],
    start: datetime,
    end: datetime,
    grain_s: int | None,
) -> bool:
    """Whether ``source``'s buckets tile [start, end), the grain, and keep the dimensions."""
    width = source.width_s or 0
    fits_grain = grain_s is None or grain_s % width == 0
    keeps_dims = all(d.max_grain_s is None or width <= d.max_grain_s for d in dimensions)
    return fits_grain and keeps_dims and aligned(start, width) and aligned(end, width)


def choose(
    measures: Sequence[Measure],
    dimensions: Sequence[Dimension],
    start: datetime,
    end: datetime,
    grain_s: int | None,
    *,
    filtered: bool = False,
) -> Source:
    """The coarsest source answering ``measures`` by ``dimensions`` over [start, end)."""
    windowed = [m for m in measures if m.kind == "window"]
    if windowed:
        if len(windowed) != len(measures) or dimensions or filtered:
            detail = (
                f"{windowed[0].name} is read from the flow's metric windows: ask for it alone, "
                "without dimensions or filters"
            )
            raise QueryError(field="measures", detail=detail)
        if not (aligned(start, 60) and aligned(end, 60)):
            raise QueryError(
                field="start", detail=f"{windowed[0].name} needs a range on whole minutes"
            )
        return WINDOWS
    if any(m.raw_only for m in measures):
        distinct_only = all(m.kind == "distinct" for m in measures)
        return USERS if distinct_only and _fits(USERS, dimensions, start, end, grain_s) else RAW
    return next((s for s in ROLLUPS if _fits(s, dimensions, start, end, grain_s)), RAW)


# One part of a split read: ``source`` answers [start, end).
Segment = tuple[Source, datetime, datetime]


def chain(source: Source) -> tuple[Source, ...]:
    """``source`` then every finer source that answers what it answers, down to raw events.

    A finer rollup keeps every dimension a coarser one keeps and its width
    divides the coarser's, so it answers any range and grain the coarser does.
    """
    if source.users:
        return (source, RAW)
    if not source.rollup:
        return (source,)
    return (*ROLLUPS[ROLLUPS.index(source) :], RAW)


def split(
    source: Source, start: datetime, end: datetime, stale: dict[str, datetime | None]
) -> list[Segment]:
    """The parts of [start, end) each source of ``chain(source)`` answers exactly.

    ``stale``: each rollup's earliest stale bucket in range (missing or None:
    fresh throughout). A rollup answers from where the coarser one stopped up
    to its own first stale bucket; raw events answer the rest. Each boundary
    is a bucket start of the rollup before it, so every part stays aligned.

    >>> from datetime import UTC
    >>> t = lambda h, m=0: datetime(2026, 12, 1, h, m, tzinfo=UTC)
    >>> parts = split(ROLLUPS[1], t(0), t(3), {"events_1h": t(2), "events_1m": t(2, 7)})
    >>> [(s.name, a.strftime("%H:%M"), b.strftime("%H:%M")) for s, a, b in parts]
    [('events_1h', '00:00', '02:00'), ('events_1m', '02:00', '02:07'), ('events', '02:07', '03:00')]
    >>> [s.name for s, _, _ in split(ROLLUPS[1], t(0), t(3), {})]
    ['events_1h']
    """
    parts: list[Segment] = []
    at = start
    for src in chain(source):
        if at >= end:
            break
        first_stale = stale.get(src.name) if src.rollup else None
        upto = end if first_stale is None else min(end, max(at, first_stale))
        if upto > at:
            parts.append((src, at, upto))
        at = upto
    return parts
