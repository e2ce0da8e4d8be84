"""Mergeable window accumulators: moments, ratio, distinct (HLL), quantiles (DDSketch).

Every accumulator is a small mutable object with ``add(x)``, ``merge(other)``,
``copy()`` and ``fields()`` (the ``MetricWindow`` columns it fills). Partials
built on different workers or batches merge into the same result as one
accumulator fed everything (exactly for moments and ratios; for the sketches the
merged sketch equals the sketch of the union). Each family has a ``state_key``
naming its algorithm, version and parameters: state saved under another key is
never reused (see ``aggregator.WindowAggregator.restore``).

Input rules (documented, tested): ``None``, NaN and +-inf values are ignored
(they neither count nor move min/max); any other float is accepted.

>>> m = Moments()
>>> for x in (2.0, None, 5.0, float("nan")):
...     m.add(x)
>>> m.count, m.sum, m.min, m.max, m.mean
(2, 7.0, 2.0, 5.0, 3.5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final, Protocol

_isfinite = math.isfinite

QUANTILES: Final = (0.5, 0.95, 0.99)


class Accumulator(Protocol):
    """What the pre-aggregator and the window aggregator need from a state."""

    @property
    def state_key(self) -> str: ...

    def add(self, x: Any) -> None: ...
    def extend(self, xs: Sequence[Any]) -> None: ...
    def merge(self, other: Any) -> None: ...
    def copy(self) -> Accumulator: ...
    def fields(self) -> dict[str, Any]: ...


class Moments:
    """Exact count, sum, min, max and mean of finite floats.

    ``sum`` is a plain float sum: merge order changes it only by rounding
    (at most ``n * 2**-52 * sum(|x|)``).

    >>> a, b = Moments(), Moments()
    >>> a.add(1.0); b.add(3.0); a.merge(b)
    >>> a.fields()["mean"], a == Moments.of([1.0, 3.0])
    (2.0, True)
    """

    __slots__ = ("count", "max", "min", "sum")
    state_key: Final = "moments/v1"

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    @classmethod
    def of(cls, xs: Any) -> Moments:
        """An accumulator fed every value of ``xs``."""
        m = cls()
        for x in xs:
            m.add(x)
        return m

    def add(self, x: float | None) -> None:
        if x is None or not _isfinite(x):
            return
        self.count += 1
        self.sum += x
        if x < self.min:
            self.min = x
        if x > self.max:
            self.max = x

    def extend(self, xs: Sequence[float | None]) -> None:
        """Add many values at once (C-level min/max/sum over the batch)."""
        ok = [x for x in xs if x is not None and _isfinite(x)]
        if not ok:
            return
        self.count += len(ok)
        self.sum += sum(ok)
        lo, hi = min(ok), max(ok)
        if lo < self.min:
            self.min = lo
        if hi > self.max:
            self.max = hi

    def add_one(self) -> None:
        """Count one occurrence (value 1.0); the fast path for counters."""
        self.count += 1
        self.sum += 1.0
        if self.min > 1.0:
            self.min = 1.0
        if self.max < 1.0:
            self.max = 1.0

    def merge(self, other: Moments) -> None:
        self.count += other.count
        self.sum += other.sum
        if other.min < self.min:
            self.min = other.min
        if other.max > self.max:
            self.max = other.max

    def copy(self) -> Moments:
        m = Moments()
        m.count, m.sum, m.min, m.max = self.count, self.sum, self.min, self.max
        return m

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def fields(self) -> dict[str, Any]:
        n = self.count
        return {
            "count": n,
            "sum": self.sum,
            "min": self.min if n else None,
            "max": self.max if n else None,
            "mean": self.sum / n if n else None,
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Moments):
            return NotImplemented
        return (self.count, self.sum, self.min, self.max) == (
            other.count,
            other.sum,
            other.min,
            other.max,
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_moments, (self.count, self.sum, self.min, self.max))

    def __repr__(self) -> str:
        return f"Moments(count={self.count}, sum={self.sum}, min={self.min}, max={self.max})"


def _moments(count: int, total: float, lo: float, hi: float) -> Moments:
    m = Moments()
    m.count, m.sum, m.min, m.max = count, total, lo, hi
    return m


class Ratio:
    """Two counters, ``numerator / denominator`` (e.g. failed / attempted payments).

    ``fields()`` reports the numerator as ``sum`` and the denominator as
    ``count``; the value is ``None`` while the denominator is 0.

    >>> r = Ratio()
    >>> r.add_num(); r.add_den(); r.add_den()
    >>> r.value, r.fields()["count"]
    (0.5, 2)
    """

    __slots__ = ("den", "num")
    state_key: Final = "ratio/v1"

    def __init__(self) -> None:
        self.num = 0
        self.den = 0

    def add_num(self) -> None:
        self.num += 1

    def add_den(self) -> None:
        self.den += 1

    def add(self, x: Any) -> None:
        """``x`` truthy counts toward the numerator, anything counts toward the denominator."""
        self.den += 1
        if x:
            self.num += 1

    def extend(self, xs: Sequence[Any]) -> None:
        for x in xs:
            self.add(x)

    def merge(self, other: Ratio) -> None:
        self.num += other.num
        self.den += other.den

    def copy(self) -> Ratio:
        r = Ratio()
        r.num, r.den = self.num, self.den
        return r

    @property
    def value(self) -> float | None:
        return self.num / self.den if self.den else None

    def fields(self) -> dict[str, Any]:
        v = self.value
        return {"count": self.den, "sum": float(self.num), "mean": v}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ratio):
            return NotImplemented
        return (self.num, self.den) == (other.num, other.den)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_ratio, (self.num, self.den))


def _ratio(num: int, den: int) -> Ratio:
    r = Ratio()
    r.num, r.den = num, den
    return r


# The sketch families live in their own module; re-exported for one import path.
from linkpulse.operators.sketches import (  # noqa: E402
    Distinct,
    DistinctSpec,
    Quantiles,
    QuantileSpec,
)

__all__ = [
    "QUANTILES",
    "Accumulator",
    "Distinct",
    "DistinctSpec",
    "Moments",
    "QuantileSpec",
    "Quantiles",
    "Ratio",
]
