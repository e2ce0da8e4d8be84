"""Value per event: a sum's mean amount (``x / n``) on a log scale, counts set aside.

GMV is a sum of a few heavy-tailed amounts a minute: its own spread hides a
drop in what each order is worth (a price bug, a currency mix-up, a 60%
discount) while the number of orders stays the same. Given the step's event
count ``n`` (``MetricWindow.count``, which the flow passes for every window),
the log of the mean amount ``y = ln(x / n)`` is close to normal with
variance ``v / n`` (``v``: the spread of one event's log amount, learned), so
the test is as sharp as the count of events allows and ignores how many
there were. Three tests, as for counts: the step, and the amounts of the
last ``short`` and ``long`` steps pooled (``ln(sum x / sum n)`` over them),
each with its own learned spread and ``Calibrator``; the verdict is the
smallest times three. Steps without events, or without ``n``, are not
tested. A step scored as anomalous is learned at a tenth of its weight, so
an incident bends the usual amount little.

>>> from datetime import UTC, datetime, timedelta
>>> import random; rng = random.Random(2)
>>> det = UnitValue(series="acme|gmv||1m", grace=600)
>>> t0 = datetime(2026, 11, 16, tzinfo=UTC)
>>> def step(i, keep=1.0):
...     n = 1 + int(rng.random() * 6)
...     x = sum(40.0 * rng.lognormvariate(0.0, 0.7) for _ in range(n)) * keep
...     return det.update(t0 + timedelta(minutes=i), x, n)
>>> max(step(i).score for i in range(2000)) < 0.99
True
>>> first_two = [step(2000 + i, keep=0.1) for i in range(2)]  # amounts cut by 90%
>>> [(s.score > 0.99, s.direction, s.details.feature) for s in first_two][0]
(True, 'down', 'unit_value')
"""

from __future__ import annotations

import math
from typing import ClassVar, Final

from linkpulse.online_ml.core import (
    ANOMALOUS_P,
    ANOMALOUS_WEIGHT,
    Calibrator,
    ScalarDetector,
    Verdict,
    WindowSums,
)
from linkpulse.online_ml.profile import LN2
from linkpulse.online_ml.stats import normal_sf

_PRIOR_V: Final = 1.0  # one event's log-amount variance before any is seen (log-normal-ish)


class UnitValue(ScalarDetector):
    """Log mean amount per event of a sum, step and pooled windows; see the module docstring."""

    name: ClassVar[str] = "unit_value"
    __slots__ = ("_mu", "_w", "_v", "_alpha", "_windows", "_cal")

    def __init__(
        self,
        *,
        series: str = "",
        period_s: float = 60.0,
        grace: int | None = None,
        percent: bool = False,
        short: int = 5,
        long: int = 30,
        half_life_days: float = 1.0,
    ) -> None:
        super().__init__(series=series, period_s=period_s, grace=grace, percent=percent)
        # per test: EW mean of its y (a pooled mean of many events sits above a single one's
        # log: Jensen), and the usable steps learned so far
        self._mu = [0.0, 0.0, 0.0]
        self._w = 0.0
        # per test (step, short, long): EW variance of y times its events (one event's spread)
        self._v = [_PRIOR_V, _PRIOR_V, _PRIOR_V]
        self._alpha = LN2 / max(1.0, half_life_days * self.steps_per_day)
        self._windows = WindowSums(short, long)  # (amounts, events) of the recent steps
        self._cal = (Calibrator(), Calibrator(), Calibrator())

    def _pairs(self, x: float, n: float) -> tuple[tuple[float, float], ...]:
        sx, sn, lx, ln = self._windows.sums
        return ((x, n), (sx + x, sn + n), (lx + x, ln + n))

    def _zs(self, x: float, n: float) -> list[float]:
        out = []
        for (a, b), v, mu in zip(self._pairs(x, n), self._v, self._mu, strict=True):
            out.append((math.log(a / b) - mu) * math.sqrt(b / v) if a > 0.0 else -40.0)
        return out

    def _usable(self, x: float | None) -> tuple[float, float] | None:
        n = self._trials
        if x is None or n is None or n < 1.0 or x <= 0.0:
            return None
        return x, n

    def assess(self, ts: float, x: float | None) -> Verdict:
        got = self._usable(x)
        if got is None or self._w <= 0.0:
            return Verdict(1.0, "none", None, None, None, None, "unit_value", self.name)
        zs = self._zs(*got)
        best, z = 1.0, 0.0
        raws = []
        for c, zi in zip(self._cal, zs, strict=True):
            raw = min(1.0, 2.0 * normal_sf(abs(zi)))
            raws.append(raw)
            q = c.calibrate(raw)
            if q < best:
                best, z = q, zi
        return Verdict(
            min(1.0, 3.0 * best),
            "up" if z > 0 else "down",
            None,
            None,
            None,
            z,
            "unit_value",
            self.name,
            raw=tuple(raws),
        )

    def learn(self, ts: float, x: float | None, verdict: Verdict) -> None:
        got = self._usable(x)
        if got is None:
            # no events (or no count): the windows still move on, with nothing in this step
            self._windows.push(0.0, 0.0)
            return
        xv, n = got
        anomalous = verdict.p < ANOMALOUS_P
        pairs = self._pairs(xv, n)
        if self._w > 0.0:
            raws = verdict.raw if verdict.raw is not None else (1.0, 1.0, 1.0)
            a = max(1.0 / (self._w + 20.0), self._alpha)
            w = ANOMALOUS_WEIGHT if anomalous else 1.0
            for k, ((sa, sb), c, raw) in enumerate(zip(pairs, self._cal, raws, strict=True)):
                c.learn(raw, w)
                if sa <= 0.0:
                    continue
                d = math.log(sa / sb) - self._mu[k]
                if not anomalous:
                    # winsorised at 3 sigma: a burst of big orders does not widen it for days
                    r = min(d * d * sb, 9.0 * self._v[k])
                    self._v[k] += a * (r - self._v[k])
                self._mu[k] += w * a * d
        else:
            self._mu = [math.log(sa / sb) for sa, sb in pairs]
        self._w += 1.0
        self._windows.push(xv, n)
