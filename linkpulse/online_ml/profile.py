"""The seasonal profile: level x hour-of-day x day-of-week, with a robust scale per hour.

``expected(ts) = level * daily(hour) * weekly(weekday)`` (``multiplicative``,
for counts and sums) or ``level + daily + weekly`` (``additive``, for ratios).
The daily curve is interpolated between the hours' centres so a rate that
moves within the hour leaves no steps in the band. All three parts learn by
exponentially weighted means (1/n at first, so the first day already gives a
usable curve); the value is winsorised at ``clip`` robust sigmas before it is
learned, so an anomaly bends the profile little. The scale is the
exponentially weighted mean absolute residual of each hour, times 1.2533 (the
sigma of a normal with that mean absolute deviation).

>>> p = SeasonalProfile()
>>> for minute in range(3 * 1440):
...     ts = 1_763_251_200.0 + 60.0 * minute  # a Sunday, 00:00 UTC
...     p.learn(ts, 100.0 if (ts // 3600) % 24 >= 12 else 50.0)
>>> day4 = 1_763_251_200.0 + 3 * 86400
>>> abs(p.expected(day4 + 18 * 3600) - 100) < 2, abs(p.expected(day4 + 6 * 3600) - 50) < 2
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from linkpulse.online_ml.base import DAY_S, Versioned

HOUR_S: Final = 3600.0
LN2: Final = math.log(2.0)
MAD_TO_SIGMA: Final = 1.2533  # sigma / mean absolute deviation for a normal


def slot_of(ts: float) -> tuple[int, int, float]:
    """(weekday 0=Monday, left hour slot, weight of the right slot) for Unix seconds ``ts``.

    >>> slot_of(0.0)  # 1970-01-01 00:00 UTC, a Thursday: between 23:30 and 00:30
    (3, 23, 0.5)
    """
    global _last
    last = _last  # one tuple, written whole: a thread switch cannot pair one ts with another slot
    if ts == last[0]:  # every detector of a step asks for the same slot, several times
        return last[1]
    day, sec = divmod(ts, DAY_S)
    weekday = (int(day) + 3) % 7
    h = sec / HOUR_S - 0.5
    left = math.floor(h)
    slot = (weekday, left % 24, h - left)
    _last = (ts, slot)
    return slot


_last: tuple[float, tuple[int, int, float]] = (math.nan, (0, 0, 0.0))


class SeasonalProfile(Versioned):
    """Robust EW level, daily and weekly factors and per-hour scale of one series."""

    STATE_VERSION = 2  # 2: the weekday factors' prior weight is state
    __slots__ = (
        "_add",
        "_clip",
        "_a_level",
        "_a_daily",
        "_a_weekly",
        "_level",
        "_n",
        "_daily",
        "_daily_n",
        "_weekly",
        "_weekly_n",
        "_scale",
        "_last_hour",
        "_floor",
        "_spd",
        "_week_prior",
    )

    def __init__(
        self,
        *,
        additive: bool = False,
        steps_per_day: float = 1440.0,
        level_half_life_days: float = 1.0,
        daily_half_life_days: float = 4.0,
        weekly_half_life_days: float = 21.0,
        clip: float = 3.0,
        scale_floor: float = 1e-9,
        weekly_prior_days: float = 1.0,
    ) -> None:
        per_hour = steps_per_day / 24.0
        self._add = additive
        self._clip = clip
        # Half-lives in days -> per-update rates (each hour slot sees per_hour updates a day,
        # each weekday slot steps_per_day updates a week).
        self._a_level = LN2 / max(1.0, level_half_life_days * steps_per_day)
        self._a_daily = LN2 / max(1.0, daily_half_life_days * per_hour)
        self._a_weekly = LN2 / max(1.0, weekly_half_life_days / 7.0 * steps_per_day)
        self._level = 0.0
        self._n = 0
        base = 0.0 if additive else 1.0
        self._daily = [base] * 24
        self._daily_n = [0.0] * 24
        self._weekly = [base] * 7
        self._weekly_n = [0.0] * 7
        self._scale = [0.0] * 24
        self._last_hour = -1
        self._floor = scale_floor
        self._spd = steps_per_day
        # the weekday factors' prior weight (at 1): a day's worth holds them back while the
        # daily curve is young, less lets a forecaster learn the weekday steps in one week
        self._week_prior = max(1.0, weekly_prior_days * steps_per_day)

    @property
    def n(self) -> int:
        """Values learned so far."""
        return self._n

    @property
    def level(self) -> float:
        """The deseasonalised level (the mean for a multiplicative profile)."""
        return self._level

    def expected(self, ts: float) -> float:
        """The usual value at ``ts`` (level constant from now on)."""
        wd, i, f = slot_of(ts)
        daily = self._daily
        d = daily[i] * (1.0 - f) + daily[(i + 1) % 24] * f
        w = self._weekly[wd]
        return self._level + d + w if self._add else self._level * d * w

    def scale(self, ts: float) -> float:
        """The robust sigma of one step at ``ts``."""
        _, i, f = slot_of(ts)
        s = self._scale[i] * (1.0 - f) + self._scale[(i + 1) % 24] * f
        return max(s * MAD_TO_SIGMA, self._floor)

    def expected_and_scale(self, ts: float) -> tuple[float, float]:
        """``(expected(ts), scale(ts))`` in one slot lookup (the hot path)."""
        wd, i, f = slot_of(ts)
        j = (i + 1) % 24
        g = 1.0 - f
        daily = self._daily
        sc = self._scale
        d = daily[i] * g + daily[j] * f
        w = self._weekly[wd]
        s = (sc[i] * g + sc[j] * f) * MAD_TO_SIGMA
        mu = self._level + d + w if self._add else self._level * d * w
        return mu, (self._floor if self._floor > s else s)

    def learn(self, ts: float, x: float) -> None:
        """Learn the finite value ``x`` at ``ts`` (winsorised at ``clip`` sigmas)."""
        # written out (every scored series learns once a step): the same operations in the
        # same order as the loop over the two hour slots it replaced, each slot's rate once
        wd, i, f = slot_of(ts)
        j = (i + 1) % 24
        g = 1.0 - f
        daily = self._daily
        sc = self._scale
        dn = self._daily_n
        d = daily[i] * g + daily[j] * f
        w = self._weekly[wd]
        n = self._n
        add = self._add
        if n == 0:
            self._level = x if add else max(x, 0.0)
        level = self._level
        mu = level + d + w if add else level * d * w
        s = (sc[i] * g + sc[j] * f) * MAD_TO_SIGMA
        err = x - mu
        if n > 30 and s > 0.0:
            lim = self._clip * s
            if err > lim:
                err = lim
            elif err < -lim:
                err = -lim
        # scale first (on the winsorised residual, so one outlier moves it by at most `clip`)
        ae = abs(err)
        a_daily = self._a_daily
        ai = aj = 0.0  # the two slots' rates (a slot with no weight is not touched)
        if g > 0.0:
            ai = g / (dn[i] + 1.0)
            if a_daily * g > ai:
                ai = a_daily * g
            sc[i] += ai * (ae - sc[i])
        if f > 0.0:
            aj = f / (dn[j] + 1.0)
            if a_daily * f > aj:
                aj = a_daily * f
            sc[j] += aj * (ae - sc[j])
        xc = mu + err
        a_level = 1.0 / (n + 1.0)
        if self._a_level > a_level:
            a_level = self._a_level
        # The weekday factors wait for a whole day of daily profile (else they soak up its
        # errors) and start with `weekly_prior_days` of prior weight at 1.
        learn_week = n >= self._spd
        a_week = 0.0
        if learn_week:
            a_week = 1.0 / (self._weekly_n[wd] + self._week_prior)
            if self._a_weekly > a_week:
                a_week = self._a_weekly
        if add:
            self._level += a_level * (xc - mu)
            if g > 0.0:
                daily[i] += ai * (xc - mu)
            if f > 0.0:
                daily[j] += aj * (xc - mu)
            self._weekly[wd] += a_week * (xc - mu)
        elif level > 0.0 and d > 0.0 and w > 0.0:
            # The level and the weekday learn the residual as a share of the mean step
            # (factor 1), not of this step's: a step the hour's curve expects little of says
            # little about the day. Divided by this step's tiny `d`, one event in an hour a
            # sparse series had never seen busy would multiply the level and the weekday
            # hundreds of times over (what ratio-of-sums estimators avoid; same fixed point).
            resid = xc - mu
            self._level += a_level * resid
            if g > 0.0:
                daily[i] += ai * (xc / (level * w) - daily[i])
            if f > 0.0:
                daily[j] += aj * (xc / (level * w) - daily[j])
            self._weekly[wd] += a_week * resid / level
        else:
            self._level += a_level * (max(xc, 0.0) - level)
        dn[i] += g
        dn[j] += f
        if learn_week:
            self._weekly_n[wd] += 1.0
        self._n = n + 1
        hour = int(ts // HOUR_S)
        if hour != self._last_hour:
            self._last_hour = hour
            self._normalise()

    def _normalise(self) -> None:
        """Keep the daily and weekly factors centred (mean 1, or 0), the level carrying the rest."""
        # Slots not seen yet stay at the neutral value (the mean) instead of being rescaled.
        base = 0.0 if self._add else 1.0
        dm = _mean_seen(self._daily, self._daily_n, base)
        wm = _mean_seen(self._weekly, self._weekly_n, base)
        if self._add:
            self._daily = _rescaled(self._daily, self._daily_n, base, lambda v: v - dm)
            self._weekly = _rescaled(self._weekly, self._weekly_n, base, lambda v: v - wm)
            self._level += dm + wm
        elif dm > 0.0 and wm > 0.0:
            self._daily = _rescaled(self._daily, self._daily_n, base, lambda v: v / dm)
            self._weekly = _rescaled(self._weekly, self._weekly_n, base, lambda v: v / wm)
            self._level *= dm * wm


def _rescaled(
    values: list[float], counts: list[float], base: float, f: Callable[[float], float]
) -> list[float]:
    return [f(v) if c > 0.0 else base for v, c in zip(values, counts, strict=True)]


def _mean_seen(values: list[float], counts: list[float], base: float) -> float:
    seen = [v for v, c in zip(values, counts, strict=True) if c > 0.0]
    return sum(seen) / len(seen) if seen else base
