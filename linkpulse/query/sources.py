"""Which stored source answers a query exactly, coarsest first.

The rollups (``events_1d``, ``events_1h``, ``events_1m``) answer counts and
sums of any range aligned to their width, at any step that is a multiple of
it, for dimensions they keep (a day has no hour of day). A distinct count of
users adds up across nothing, so raw ``events`` answer it; the flow's own
measures (late events) are in ``metric_windows``; anything else misaligned is
read from raw ``events``. The response names the source.

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
'events'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from linkpulse.query.catalog import Dimension, Measure
from linkpulse.query.timegrid import QueryError, aligned

__all__ = ["RAW", "ROLLUPS", "WINDOWS", "Source", "choose"]


@dataclass(frozen=True)
class Source:
    """A view of the ``analyst`` schema and how the compiler reads it."""

    name: str
    time_col: str
    width_s: int | None  # bucket width; None: raw rows

    @property
    def rollup(self) -> bool:
        return self.name.startswith("events_")


ROLLUPS: Final = (
    Source("events_1d", "bucket", 86400),
    Source("events_1h", "bucket", 3600),
    Source("events_1m", "bucket", 60),
)
WINDOWS: Final = Source("metric_windows", "window_start", 60)  # the flow's 1-minute windows
RAW: Final = Source("events", "event_time", None)


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
        return RAW
    for source in ROLLUPS:
        width = source.width_s or 0
        fits_grain = grain_s is None or grain_s % width == 0
        keeps_dims = all(d.max_grain_s is None or width <= d.max_grain_s for d in dimensions)
        if fits_grain and keeps_dims and aligned(start, width) and aligned(end, width):
            return source
    return RAW
