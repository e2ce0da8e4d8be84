"""Seasonal robust baseline: how far a value is from the usual for its hour and weekday.

Three tests on the robust z-score ``z = (x - expected) / sigma`` against the
``SeasonalProfile``: the point itself, a fast exponentially weighted mean of
recent z (a drop of 3 sigma held for 3 steps), and a slow one (a drift of one
sigma held for an hour). Each has its own ``Calibrator``; the verdict is the
smallest calibrated probability times three (Bonferroni). A value outside
the whole range the series has shown keeps its uncalibrated point
probability, so no smoothing hides it.

>>> from datetime import UTC, datetime, timedelta
>>> det = SeasonalBaseline(series="acme|gmv||1m", grace=100)
>>> t0 = datetime(2026, 11, 16, tzinfo=UTC)
>>> import random; rng = random.Random(1)
>>> for i in range(300):
...     _ = det.update(t0 + timedelta(minutes=i), 1000.0 + rng.gauss(0, 30))
>>> s = det.update(t0 + timedelta(minutes=300), 600.0)
>>> s.score > 0.99, s.direction, s.details.novel
(True, 'down', True)
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
)
from linkpulse.online_ml.profile import LN2, SeasonalProfile
from linkpulse.online_ml.stats import SQRT2, normal_sf, t3_sf

_Z_CAP: Final = 4.0  # what one step adds to the recent means, in sigmas
# A series is heavy-tailed (one big order) when more than _WILD_RATE of its points land beyond
# _WILD_Z robust sigmas: a normal one does so about once in 3 million steps.
_WILD_Z: Final = 5.0
_WILD_RATE: Final = 1e-3


class SeasonalBaseline(ScalarDetector):
    """Hour-of-day x day-of-week robust profile with a level; see the module docstring.

    ``gap_value`` is what an empty step means for the value (0 for counts and
    sums: no events; None for ratios: undefined, the step is skipped).
    ``band_sigmas`` sets ``lower``/``upper``; ``nonnegative`` clips ``lower``
    at 0. ``point_tail="t3"`` scores the point with Student-t (3 dof) tails:
    sums of a few amounts (GMV of a small seller) are far from normal, and one
    big order is not an incident; lasting shifts still page through the means.
    """

    name: ClassVar[str] = "seasonal"
    __slots__ = (
        "_profile",
        "_gap_value",
        "_band",
        "_nonneg",
        "_af",
        "_as",
        "_fast",
        "_slow",
        "_cal",
        "_lo",
        "_hi",
        "_t3",
        "_vf",
        "_vs",
        "_a_var",
        "_wild",
    )
    STATE_VERSION = 2  # 2: the rate of wild points (_wild)

    def __init__(
        self,
        *,
        series: str = "",
        period_s: float = 60.0,
        grace: int | None = None,
        percent: bool = False,
        additive: bool = False,
        gap_value: float | None = 0.0,
        nonnegative: bool = True,
        band_sigmas: float = 3.0,
        fast_alpha: float = 0.3,
        slow_alpha: float = 0.03,
        level_half_life_days: float = 1.0,
        daily_half_life_days: float = 4.0,
        weekly_half_life_days: float = 21.0,
        clip: float = 3.0,
        point_tail: str = "normal",
    ) -> None:
        super().__init__(series=series, period_s=period_s, grace=grace, percent=percent)
        if point_tail not in ("normal", "t3"):
            msg = f"point_tail must be 'normal' or 't3' (heavy-tailed sums), got {point_tail!r}"
            raise ValueError(msg)
        self._t3 = point_tail == "t3"
        for name, a in (("fast_alpha", fast_alpha), ("slow_alpha", slow_alpha)):
            if not 0.0 < a <= 1.0:
                msg = f"{name} must be in (0, 1], got {a!r}"
                raise ValueError(msg)
        self._profile = SeasonalProfile(
            additive=additive,
            steps_per_day=self.steps_per_day,
            level_half_life_days=level_half_life_days,
            daily_half_life_days=daily_half_life_days,
            weekly_half_life_days=weekly_half_life_days,
            clip=clip,
        )
        self._gap_value = gap_value
        self._band = band_sigmas
        self._nonneg = nonnegative
        self._af = fast_alpha
        self._as = slow_alpha
        self._fast = 0.0
        self._slow = 0.0
        self._cal = (Calibrator(), Calibrator(), Calibrator())
        self._lo = math.inf
        self._hi = -math.inf
        # Empirical variances of the two means: z is neither unit-variance (skewed sums) nor
        # independent (profile errors last an hour), so the iid a / (2 - a) is only the prior.
        self._vf = fast_alpha / (2.0 - fast_alpha)
        self._vs = slow_alpha / (2.0 - slow_alpha)
        self._a_var = LN2 / max(1.0, 3.0 * self.steps_per_day)
        # how often a point lands beyond _WILD_Z robust sigmas (EW): ~1e-6 for a normal series,
        # ~1e-2 for a sum of a few log-normal orders
        self._wild = 0.0

    @property
    def profile(self) -> SeasonalProfile:
        """The learned profile (the forecaster reads it too)."""
        return self._profile

    def _value(self, x: float | None) -> float | None:
        return self._gap_value if x is None else x

    def assess(self, ts: float, x: float | None) -> Verdict:
        mu, s = self._profile.expected_and_scale(ts)
        half = self._band * s
        lower = mu - half
        if self._nonneg and lower < 0.0:
            lower = 0.0
        v = self._gap_value if x is None else x  # self._value(x), inlined (the hot path)
        if v is None or self._profile.n == 0:
            return Verdict(1.0, "none", mu, lower, mu + half, None, "value", self.name)
        z = (v - mu) / s
        zc = _Z_CAP if z > _Z_CAP else -_Z_CAP if z < -_Z_CAP else z
        af, as_ = self._af, self._as
        fast = (1.0 - af) * self._fast + af * zc
        slow = (1.0 - as_) * self._slow + as_ * zc
        zf = fast / math.sqrt(self._vf)
        zs = slow / math.sqrt(self._vs)
        c0, c1, c2 = self._cal
        # the three tails written out: 2 * t3_sf(|z|) or 2 * normal_sf(|z|), at most 1
        erfc = math.erfc
        raw_point = 2.0 * (t3_sf(abs(z)) if self._t3 else 0.5 * erfc(abs(z) / SQRT2))
        if not raw_point < 1.0:  # min(1.0, ...), NaN included
            raw_point = 1.0
        novel = self._n > 0 and (v > self._hi + s or v < self._lo - s)
        p_point = c0.calibrate(raw_point)
        if novel:
            # outside everything seen: no calibration may hide it. The point keeps its own
            # tail: a heavy-tailed sum (t3: a few log-normal orders a minute) sets a new record
            # with one big order every few days, which the normal tail paged at score 1.0
            # (12 of seed 1's 14 false GMV incidents). Only a series seen to be wild keeps the
            # t3 tail: on a smooth one, a record 20 sigmas out is an incident whatever the spec.
            if self._t3 and self._wild > _WILD_RATE:
                p_point = min(p_point, raw_point)
            else:
                p_point = min(p_point, raw_point, 2.0 * normal_sf(abs(z)))
        raw_fast = 2.0 * (0.5 * erfc(abs(zf) / SQRT2))
        if not raw_fast < 1.0:
            raw_fast = 1.0
        raw_slow = 2.0 * (0.5 * erfc(abs(zs) / SQRT2))
        if not raw_slow < 1.0:
            raw_slow = 1.0
        p_fast = c1.calibrate(raw_fast)
        p_slow = c2.calibrate(raw_slow)
        p, feature, sign = p_point, "value", z
        if p_fast < p:
            p, feature, sign = p_fast, "recent_mean", zf
        if p_slow < p:
            p, feature, sign = p_slow, "long_mean", zs
        p *= 3.0
        return Verdict(
            p if p < 1.0 else 1.0,
            "up" if sign > 0 else "down",
            mu,
            lower,
            mu + half,
            z,
            feature,
            self.name,
            novel,
            raw=(mu, s, fast, slow, raw_point, raw_fast, raw_slow),
        )

    def learn(self, ts: float, x: float | None, verdict: Verdict) -> None:
        v = self._gap_value if x is None else x
        if v is None:
            return
        prof = self._profile
        raw = verdict.raw
        if raw is not None:
            mu, s, fast, slow, p0, p1, p2 = raw
            self._fast, self._slow = fast, slow
            wild = 1.0 if abs(v - mu) > _WILD_Z * s else 0.0
            self._wild += max(1.0 / (self._n + 1000.0), self._a_var) * (wild - self._wild)
            # the means' variances learn from winsorised squares (an incident bends them
            # little); min/max written as comparisons, the same floats
            a = 1.0 / (self._n + 300.0)
            if self._a_var > a:
                a = self._a_var
            vf, vs = self._vf, self._vs
            sq = fast**2
            vf += a * ((9.0 * vf if 9.0 * vf < sq else sq) - vf)
            sq = slow**2
            vs += a * ((9.0 * vs if 9.0 * vs < sq else sq) - vs)
            low = 0.5 * (self._af / (2.0 - self._af))  # half the iid variance of each mean
            self._vf = low if low > vf else vf
            low = 0.5 * (self._as / (2.0 - self._as))
            self._vs = low if low > vs else vs
            c0, c1, c2 = self._cal
            w = ANOMALOUS_WEIGHT if verdict.p < ANOMALOUS_P else 1.0  # learn_weight
            c0.learn(p0, w)
            c1.learn(p1, w)
            c2.learn(p2, w)
        prof.learn(ts, v)
        if v < self._lo:
            self._lo = v
        if v > self._hi:
            self._hi = v
