"""The detector contract: River-shaped ``score_one`` / ``learn_one`` / ``update`` on (time, value).

Every detector scores one step of one series: ``x`` is the step's value, or
``None`` for a step with no data (a gap; not the same as ``0.0``).
``score_one`` scores against what was learned so far, ``learn_one`` learns,
``update`` does both in that order (progressive validation) and is what a
flow calls once per final window. Scores are calibrated the same way
everywhere (see ``score_from_p`` and ``AnomalyScore``), and a detector is
plain picklable Python whose state carries its ``STATE_VERSION``.

>>> from datetime import UTC, datetime, timedelta
>>> from linkpulse.online_ml import build_detector
>>> det = build_detector({"kind": "count"}, series="acme|orders||1m")
>>> isinstance(det, Detector)
True
>>> t0 = datetime(2026, 11, 16, tzinfo=UTC)
>>> s = det.update(t0, 3.0)
>>> (s.score, s.warm, s.model)
(0.0, False, 'ensemble')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Final, Protocol, runtime_checkable

from linkpulse.schemas.outputs import AnomalyScore

PAGE_THRESHOLD: Final = 0.99
"""The score at which the default alert rule pages: one false page per ~100 series-days."""

DAY_S: Final = 86400.0


@runtime_checkable
class Detector(Protocol):
    """One series' online anomaly detector (scalar values)."""

    name: ClassVar[str]
    series: str

    @property
    def warm(self) -> bool:
        """True once the series has enough history to page on."""
        ...

    def score_one(self, t: datetime, x: float | None, n: float | None = None) -> AnomalyScore:
        """Score the step at ``t`` against what was learned before it; learns nothing.

        ``n`` is the number of trials behind a ratio (its denominator), else None.
        """
        ...

    def learn_one(self, t: datetime, x: float | None, n: float | None = None) -> None:
        """Learn the step at ``t``; steps must come in time order, one per period."""
        ...

    def update(self, t: datetime, x: float | None, n: float | None = None) -> AnomalyScore:
        """``score_one`` then ``learn_one``: the progressive-validation step."""
        ...


@runtime_checkable
class JointDetector(Protocol):
    """A detector over several series of one entity (a tenant's metrics) at once."""

    name: ClassVar[str]
    series: str

    @property
    def warm(self) -> bool: ...

    def score_one(
        self,
        t: datetime,
        x: Mapping[str, float | None],
        n: Mapping[str, float | None] | None = None,
    ) -> AnomalyScore:
        """Score the step: ``x`` maps features to values, ``n`` to their events (optional)."""
        ...

    def learn_one(
        self,
        t: datetime,
        x: Mapping[str, float | None],
        n: Mapping[str, float | None] | None = None,
    ) -> None: ...

    def update(
        self,
        t: datetime,
        x: Mapping[str, float | None],
        n: Mapping[str, float | None] | None = None,
    ) -> AnomalyScore: ...


def to_seconds(t: datetime) -> float:
    """Unix seconds of an aware datetime; a naive one is refused by name.

    The flow steps every series with the same ``t`` object, so the last one's
    seconds are kept (datetimes are immutable: the same object, the same seconds).
    """
    global _last
    last = _last  # one tuple, read and written whole: safe with several worker threads
    if t is last[0]:
        return last[1]
    if t.tzinfo is None:
        msg = f"t must be an aware datetime (UTC), got naive {t.isoformat()}"
        raise ValueError(msg)
    ts = t.timestamp()
    _last = (t, ts)
    return ts


_last: tuple[datetime | None, float] = (None, 0.0)


LIMIT: Final = 1e15  # |x| beyond this is clamped: its square still fits a float


def clean(x: float | None) -> float | None:
    """A usable finite float, or None for a gap or a value no model can use (NaN, inf).

    Values beyond +-1e15 are clamped there (still far outside any usual band).

    >>> clean(2), clean(float("nan")), clean(None), clean(-float("inf")), clean(1e300)
    (2.0, None, None, None, 1000000000000000.0)
    """
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return x if -LIMIT <= x <= LIMIT else math.copysign(LIMIT, x)


def score_from_p(p: float, steps_per_day: float) -> float:
    """The calibrated score of a per-step tail probability ``p``.

    The chance that a normal day of ``steps_per_day`` independent steps shows
    nothing this rare is ``(1 - p) ** steps_per_day ~ exp(-steps_per_day * p)``;
    that is the score, so a threshold means the same false-page rate per series
    and day on every series whatever its step.

    >>> round(score_from_p(1e-6, 1440), 4), round(score_from_p(0.5, 1440), 4)
    (0.9986, 0.0)
    """
    if not p > 0.0:  # also NaN: treat as the strongest evidence we can represent
        return 1.0
    return math.exp(-steps_per_day * min(p, 1.0))


class Versioned:
    """Pickling by slots with a ``STATE_VERSION``: an old state is refused, never misread.

    Subclasses list their learned state in ``__slots__``; a version bump
    makes ``pickle.loads`` of an older snapshot raise ``ValueError`` (the flow
    then starts the series afresh instead of scoring with a misread model).
    """

    __slots__ = ()
    STATE_VERSION: ClassVar[int] = 1

    @classmethod
    def _slot_names(cls) -> tuple[str, ...]:
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            for name in getattr(klass, "__slots__", ()):
                if name not in names:
                    names.append(name)
        return tuple(names)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "version": self.STATE_VERSION,
            "state": {n: getattr(self, n) for n in self._slot_names() if hasattr(self, n)},
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        version = state.get("version")
        if state.get("class") != type(self).__name__ or version != self.STATE_VERSION:
            msg = (
                f"{type(self).__name__}: snapshot is {state.get('class')} state version "
                f"{version}, this code reads version {self.STATE_VERSION}; start the series afresh"
            )
            raise ValueError(msg)
        for name, value in state["state"].items():
            object.__setattr__(self, name, value)
