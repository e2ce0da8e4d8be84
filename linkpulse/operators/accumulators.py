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
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import datasketches
from ddsketch import LogCollapsingLowestDenseDDSketch

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


@dataclass(frozen=True)
class DistinctSpec:
    """Parameters of the HyperLogLog distinct counter (datasketches ``hll_sketch``).

    Relative standard error is about ``1.04 / sqrt(2**lg_k)`` (1.6 % at
    ``lg_k=12``); ``error_bound(3)`` gives the 3-sigma bound the tests use.
    """

    lg_k: int = 12

    def __post_init__(self) -> None:
        if not 4 <= self.lg_k <= 21:
            msg = f"lg_k must be between 4 and 21 (datasketches HLL), got {self.lg_k}"
            raise ValueError(msg)

    @property
    def state_key(self) -> str:
        return f"hll8/v1/lg_k={self.lg_k}"

    def error_bound(self, sigmas: int = 3) -> float:
        """Relative error bound at ``sigmas`` standard deviations (estimation mode)."""
        rel_err = datasketches.hll_sketch.get_rel_err
        # datasketches returns signed bounds (upper < 0 means the estimate may be high)
        return max(abs(float(rel_err(up, True, self.lg_k, sigmas))) for up in (True, False))

    def initialize(self) -> Distinct:
        return Distinct(self.lg_k)


class Distinct:
    """Approximate count of distinct non-empty strings (HyperLogLog, HLL_8).

    ``count`` is how many values were added (with repeats); ``distinct`` the
    estimate. ``None`` and ``""`` are ignored.

    >>> d = Distinct(12)
    >>> for u in ("u1", "u2", "u1", None):
    ...     d.add(u)
    >>> d.count, round(d.estimate)
    (3, 2)
    """

    __slots__ = ("count", "lg_k", "sketch")

    def __init__(self, lg_k: int = 12) -> None:
        self.lg_k = lg_k
        self.count = 0
        self.sketch = datasketches.hll_sketch(lg_k, datasketches.HLL_8)

    @property
    def state_key(self) -> str:
        return f"hll8/v1/lg_k={self.lg_k}"

    def add(self, x: str | None) -> None:
        if x:
            self.count += 1
            self.sketch.update(x)

    def extend(self, xs: Sequence[str | None]) -> None:
        """Add many values; repeats within the batch are hashed once."""
        ok = [x for x in xs if x]
        self.count += len(ok)
        update = self.sketch.update
        for x in set(ok):
            update(x)

    def merge(self, other: Distinct) -> None:
        if other.lg_k != self.lg_k:
            msg = f"cannot merge HLL sketches with lg_k {self.lg_k} and {other.lg_k}"
            raise ValueError(msg)
        if other.count == 0:
            return
        self.count += other.count
        union = datasketches.hll_union(self.lg_k)
        union.update(self.sketch)
        union.update(other.sketch)
        self.sketch = union.get_result(datasketches.HLL_8)

    def copy(self) -> Distinct:
        return _distinct(self.lg_k, self.count, self.sketch.serialize_compact())

    @property
    def estimate(self) -> float:
        return float(self.sketch.get_estimate())

    def fields(self) -> dict[str, Any]:
        return {"count": self.count, "distinct": self.estimate if self.count else None}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Distinct):
            return NotImplemented
        return (self.lg_k, self.count, self.estimate) == (other.lg_k, other.count, other.estimate)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        # datasketches objects don't pickle; their compact serialization does.
        return (_distinct, (self.lg_k, self.count, self.sketch.serialize_compact()))


def _distinct(lg_k: int, count: int, blob: bytes) -> Distinct:
    d = Distinct.__new__(Distinct)
    d.lg_k, d.count = lg_k, count
    d.sketch = datasketches.hll_sketch.deserialize(blob)
    return d


@dataclass(frozen=True)
class QuantileSpec:
    """Parameters of the quantile sketch (DDSketch, relative *value* error).

    Any reported quantile ``q`` is within ``relative_accuracy`` of the exact
    value at rank ``floor(q * (n - 1))`` as long as the positive values span
    less than ``gamma ** bin_limit`` (about 4e17 at the defaults, so any
    money amount from 0.01 to 1e12); beyond that the lowest values are
    collapsed and only the upper quantiles keep the guarantee.
    """

    relative_accuracy: float = 0.01
    bin_limit: int = 2048

    def __post_init__(self) -> None:
        if not 0.0 < self.relative_accuracy < 1.0:
            msg = f"relative_accuracy must be in (0, 1), got {self.relative_accuracy}"
            raise ValueError(msg)
        if self.bin_limit < 16:
            msg = f"bin_limit must be at least 16, got {self.bin_limit}"
            raise ValueError(msg)

    @property
    def state_key(self) -> str:
        return f"ddsketch/v1/alpha={self.relative_accuracy}/bins={self.bin_limit}"

    def initialize(self) -> Quantiles:
        return Quantiles(self.relative_accuracy, self.bin_limit)


class Quantiles:
    """Exact moments plus p50/p95/p99 from a DDSketch (mergeable, deterministic).

    Up to ``SMALL`` values are kept as a plain list (quantiles exact, and no
    sketch to build for the many tiny per-pane partials); past that they move
    into the sketch. Both modes answer quantile ``q`` with the value at rank
    ``floor(q * (n - 1))``, the sketch within its relative accuracy.

    >>> q = Quantiles()
    >>> for x in range(1, 101):
    ...     q.add(float(x))
    >>> f = q.fields()
    >>> f["count"], abs(f["p50"] - 50) <= 0.5, abs(f["p99"] - 99) <= 0.99
    (100, True, True)
    """

    __slots__ = ("alpha", "bin_limit", "moments", "sketch", "values")
    SMALL: Final = 32

    def __init__(self, relative_accuracy: float = 0.01, bin_limit: int = 2048) -> None:
        self.alpha = relative_accuracy
        self.bin_limit = bin_limit
        self.moments = Moments()
        self.values: list[float] = []
        self.sketch: LogCollapsingLowestDenseDDSketch | None = None

    @property
    def state_key(self) -> str:
        return f"ddsketch/v1/alpha={self.alpha}/bins={self.bin_limit}"

    def _spill(self) -> LogCollapsingLowestDenseDDSketch:
        sketch = LogCollapsingLowestDenseDDSketch(self.alpha, bin_limit=self.bin_limit)
        for v in self.values:
            sketch.add(v)
        self.values = []
        self.sketch = sketch
        return sketch

    def add(self, x: float | None) -> None:
        if x is None or not _isfinite(x):
            return
        self.moments.add(x)
        if self.sketch is None:
            self.values.append(x)
            if len(self.values) > self.SMALL:
                self._spill()
        else:
            self.sketch.add(x)

    def extend(self, xs: Sequence[float | None]) -> None:
        ok = [x for x in xs if x is not None and _isfinite(x)]
        if not ok:
            return
        self.moments.extend(ok)
        if self.sketch is None:
            self.values.extend(ok)
            if len(self.values) > self.SMALL:
                self._spill()
        else:
            add = self.sketch.add
            for x in ok:
                add(x)

    def merge(self, other: Quantiles) -> None:
        if other.alpha != self.alpha or other.bin_limit != self.bin_limit:
            msg = f"cannot merge quantile sketches {self.state_key} and {other.state_key}"
            raise ValueError(msg)
        self.moments.merge(other.moments)
        if other.sketch is None:
            if self.sketch is None:
                self.values.extend(other.values)
                if len(self.values) > self.SMALL:
                    self._spill()
            else:
                for v in other.values:
                    self.sketch.add(v)
        else:
            sketch = self.sketch if self.sketch is not None else self._spill()
            sketch.merge(other.sketch)

    def copy(self) -> Quantiles:
        q = Quantiles(self.alpha, self.bin_limit)
        q.merge(self)
        return q

    def quantile(self, q: float) -> float | None:
        if self.sketch is not None:
            v = self.sketch.get_quantile_value(q)
            return None if v is None else float(v)
        if not self.values:
            return None
        return sorted(self.values)[int(q * (len(self.values) - 1))]

    def fields(self) -> dict[str, Any]:
        f = self.moments.fields()
        f["p50"], f["p95"], f["p99"] = (self.quantile(q) for q in QUANTILES)
        return f

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Quantiles):
            return NotImplemented
        return self.state_key == other.state_key and self.fields() == other.fields()

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        # The sketch is plain Python; pickle it as a blob so the state key travels with it.
        blob = None if self.sketch is None else pickle.dumps(self.sketch)
        return (_quantiles, (self.alpha, self.bin_limit, self.moments, self.values, blob))


def _quantiles(
    alpha: float, bin_limit: int, moments: Moments, values: list[float], blob: bytes | None
) -> Quantiles:
    q = Quantiles.__new__(Quantiles)
    q.alpha, q.bin_limit, q.moments, q.values = alpha, bin_limit, moments, values
    q.sketch = None if blob is None else pickle.loads(blob)  # noqa: S301 - our own snapshot
    return q
