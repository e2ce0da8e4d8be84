"""Sparse counts: Poisson tail probabilities against the seasonal rate.

Per-seller series have 0-3 events a minute, where a Gaussian z-score pages
on noise. Here the expected count ``lam`` comes from a ``SeasonalProfile``
of the counts, over-dispersion ``phi`` (variance / mean, at least 1) is
learned, and ``x / phi`` is taken as Poisson with mean ``lam / phi``
(quasi-Poisson). Two tests: a scan of the step alone and of the step plus
the last 1, 2, 3 and ``short`` steps, the smallest of the five tails (a
change that began two minutes ago is tested on its own minutes); and the
step plus the ``long`` steps before it (a seller that stopped selling shows
no single unlikely minute, but an hour without its usual 40 orders is). Each
is calibrated (the scan's calibrator learns how much more often the smallest
of five tails is small); the verdict is the smallest times two.
Once a step is scored anomalous the detector follows the incident: when the
step with the last ``CLEAR_STEPS`` (15) no longer leans its way, the long
window forgets the steps before them, so a 15-minute spike stops paging
about a quarter of an hour after it ended, not an hour.

>>> from datetime import UTC, datetime, timedelta
>>> import random; rng = random.Random(3)
>>> det = SparseCounts(series="acme|orders|seller_id=s-1|1m", grace=200)
>>> t0 = datetime(2026, 11, 16, tzinfo=UTC)
>>> def poisson(lam):
...     k, p, u = 0, 2.718281828 ** -lam, rng.random()
...     while u > p: u -= p; k += 1; p *= lam / k
...     return k
>>> scores = [det.update(t0 + timedelta(minutes=i), poisson(1.5) or None).score
...           for i in range(1500)]
>>> max(scores[200:]) < 0.99
True
>>> det.update(t0 + timedelta(minutes=1500), 14.0).score > 0.99
True
"""

from __future__ import annotations

import math
from typing import ClassVar, Final

from linkpulse.online_ml.core import (
    ANOMALOUS_P,
    ANOMALOUS_WEIGHT,
    CLEAR_STEPS,
    Calibrator,
    ScalarDetector,
    Scan,
    Verdict,
    WindowSums,
    follow_incident,
    learn_scan_or_long,
    scan_or_long,
)
from linkpulse.online_ml.profile import LN2, SeasonalProfile
from linkpulse.online_ml.stats import poisson_two_sided

_PHI_MAX: Final = 50.0


class SparseCounts(ScalarDetector):
    """Quasi-Poisson tails of the step and of recent sums; see the module docstring."""

    name: ClassVar[str] = "poisson"
    __slots__ = (
        "_profile",
        "_phi",
        "_a_phi",
        "_windows",
        "_phi_w",
        "_cal",
        "_band",
        "_scan",
        "_incident",
    )
    # 2: the scan over the last steps; 3: the incident it follows; 4: the step in the scan
    STATE_VERSION = 4

    def __init__(
        self,
        *,
        series: str = "",
        period_s: float = 60.0,
        grace: int | None = None,
        percent: bool = False,
        short: int = 5,
        long: int = 60,
        band_sigmas: float = 3.0,
        level_half_life_days: float = 1.0,
        daily_half_life_days: float = 4.0,
        weekly_half_life_days: float = 21.0,
        dispersion_half_life_days: float = 3.0,
    ) -> None:
        super().__init__(series=series, period_s=period_s, grace=grace, percent=percent)
        self._windows = WindowSums(short, long, min(CLEAR_STEPS, long))  # (counts, rates)
        self._incident = ""  # the direction of the incident under way, if any (CLEAR_STEPS)
        self._scan = Scan(short)  # the scan's (counts, rates) of the last steps
        # dispersion of the window sums: rate errors last longer than a step, so sums spread
        # more than phi alone says
        self._phi_w = [1.0, 1.0]
        self._profile = SeasonalProfile(
            steps_per_day=self.steps_per_day,
            level_half_life_days=level_half_life_days,
            daily_half_life_days=daily_half_life_days,
            weekly_half_life_days=weekly_half_life_days,
            # counts of 0-3 have a tiny MAD: winsorising at a few of them would learn every
            # event as a fraction of one and bias the rate low
            clip=30.0,
        )
        self._phi = 1.0
        self._a_phi = LN2 / max(1.0, dispersion_half_life_days * self.steps_per_day)
        self._cal = (Calibrator(), Calibrator())  # the scan's (the step's too), the long's
        self._band = band_sigmas

    @property
    def profile(self) -> SeasonalProfile:
        return self._profile

    def _rate(self, ts: float) -> float:
        """The expected count: the seasonal profile, floored at a fifth of the mean rate.

        An hour in which a sparse series happened to see nothing would otherwise
        expect 0, and its first event would look impossible.
        """
        prof = self._profile
        # max(expected, 0.2 * level, 1e-4), written out (the hot path)
        lam = prof.expected(ts)
        low = 0.2 * prof.level
        if low > lam:
            lam = low
        return 1e-4 if 1e-4 > lam else lam

    def _tests(self, ts: float, x: float) -> tuple[float, float, float, float, str, str, str]:
        lam = self._rate(ts)
        phi = self._phi
        p0, d0 = poisson_two_sided(x, lam, phi)
        _, _, lx, ll = self._windows.sums
        pw0, pw1 = self._phi_w
        # the short window's dispersion for all of the scan's (shorter windows spread less)
        phi_s = pw0 if pw0 > phi else phi
        p1, d1 = 1.0, "none"
        for sx, sl in self._scan.sums(x, lam):
            e = sx - sl
            if e * e < phi_s * sl:  # within a sigma: a tail above 0.05 (see binomial's scan)
                continue
            q, d = poisson_two_sided(sx, sl, phi_s)
            if q < p1:
                p1, d1 = q, d
        p2, d2 = poisson_two_sided(lx + x, ll + lam, pw1 if pw1 > phi else phi)
        return lam, p0, p1, p2, d0, d1, d2

    def assess(self, ts: float, x: float | None) -> Verdict:
        v = 0.0 if x is None else (0.0 if 0.0 > x else x)  # max(x, 0.0)
        lam, p0, p1, p2, d0, d1, d2 = self._tests(ts, v)
        sd = math.sqrt(self._phi * lam) if lam > 0.0 else 0.0
        lower = lam - self._band * sd
        if not lower > 0.0:  # max(0.0, lower)
            lower = 0.0
        upper = lam + self._band * sd
        if self._profile.n == 0:
            return Verdict(1.0, "none", lam, lower, upper, None, "value", self.name)
        p, d, feature = scan_or_long(self._cal, p0, p1, p2, d0, d1, d2)
        sigmas = (v - lam) / sd if sd > 0.0 else None
        raw = (lam, p0, p1, p2)
        return Verdict(p, d, lam, lower, upper, sigmas, feature, self.name, raw=raw)

    def learn(self, ts: float, x: float | None, verdict: Verdict) -> None:
        v = 0.0 if x is None else (0.0 if 0.0 > x else x)  # max(x, 0.0)
        prof = self._profile
        if prof.n > 0:
            if verdict.raw is not None:
                lam, p0, p1, p2 = verdict.raw
            else:
                lam, p0, p1, p2, _, _, _ = self._tests(ts, v)
            w = ANOMALOUS_WEIGHT if verdict.p < ANOMALOUS_P else 1.0  # learn_weight
            learn_scan_or_long(self._cal, p0, p1, p2, w)
            if lam > 0.05:
                phi = self._phi
                ratio = (v - lam) ** 2 / lam
                # winsorised, so one burst does not make every later step look normal
                cap = 4.0 * phi + 4.0
                if cap < ratio:
                    ratio = cap
                a = 1.0 / (prof.n + 10.0)
                if self._a_phi > a:
                    a = self._a_phi
                self._phi = _bounded(phi + a * (ratio - phi))
                sx, sl, lx, ll = self._windows.sums
                phi_w = self._phi_w
                phi_w[0] = _window_dispersion(phi_w[0], sx + v, sl + lam, a)
                phi_w[1] = _window_dispersion(phi_w[1], lx + v, ll + lam, a)
        else:
            lam = v
        lam = 0.0 if 0.0 > lam else lam
        self._windows.push(v, lam)
        self._scan.push(v, lam)
        anomalous = verdict.p < ANOMALOUS_P
        if self._incident or anomalous:
            mx, ml = self._windows.mid_sums
            phi_s = max(self._phi_w[0], self._phi)  # as the scan's, in _tests
            way = self._incident or verdict.direction
            self._incident = follow_incident(self._windows, way, mx - ml, phi_s * ml)
        if prof.n > 0 and anomalous:
            # an anomalous step teaches the profile its band's edge, not its value: a burst
            # would leave the rate high for hours and page "down" once it has passed
            edge = self._band * math.sqrt(self._phi * lam)
            v = min(max(v, lam - edge), lam + edge)
        prof.learn(ts, v)


def _window_dispersion(pw: float, count: float, expected: float, a: float) -> float:
    """A window sum's dispersion ``pw`` after learning ``count`` against ``expected`` at rate ``a``.

    Winsorised like the step's; a window expecting half an event or less teaches nothing.
    """
    if not expected > 0.5:
        return pw
    r = (count - expected) ** 2 / expected
    cap = 4.0 * pw + 4.0
    return _bounded(pw + a * ((cap if cap < r else r) - pw))


def _bounded(phi: float) -> float:
    """``min(_PHI_MAX, max(1.0, phi))``: a dispersion between 1 and ``_PHI_MAX``."""
    if not phi > 1.0:
        phi = 1.0
    return phi if phi < _PHI_MAX else _PHI_MAX
