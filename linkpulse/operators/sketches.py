"""The sketch accumulators: distinct (HyperLogLog) and quantiles (DDSketch).

Both follow the ``Accumulator`` contract of ``accumulators`` and pickle
through ``__reduce__`` (datasketches objects do not pickle by themselves).

>>> d, q = DistinctSpec().initialize(), QuantileSpec().initialize()
>>> d.extend(["u1", "u2", "u1"]); q.extend([10.0, 20.0, 30.0])
>>> round(d.estimate), q.quantile(0.5)
(2, 20.0)
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import datasketches
from ddsketch import LogCollapsingLowestDenseDDSketch

from linkpulse.operators.accumulators import QUANTILES, Moments

_isfinite = math.isfinite


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
