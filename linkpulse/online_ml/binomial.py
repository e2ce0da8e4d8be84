"""Ratios of counts (failure rate, conversion): binomial tails against the usual rate.

A ratio of small counts is not Gaussian: a seller with two payments a
minute shows 0%, 50% or 100% failures. Given the step's trials ``n`` (the
ratio's denominator, ``MetricWindow.count``), the step has ``k = x * n``
successes; the usual rate is the exponentially weighted share of successes
in all trials (half-life ``half_life_days``), over-dispersion ``phi`` is
learned as for counts, and ``k / phi`` out of ``n / phi`` is scored with a
binomial tail. Two tests: a scan of the step alone and of the step plus the
last 1, 2, 3 and ``short`` steps, the smallest of the five tails (a spike
that began two minutes ago is tested on its own minutes, not diluted by
normal ones); and the step plus the ``long`` steps before it. Each is
calibrated (the scan's calibrator learns how much more often the smallest of
five tails is small, so the scan's windows cost what they cost on this
series, not a Bonferroni factor each); the verdict is the smallest times two.
Without ``n`` a step counts as one trial.
Once a step is scored anomalous the detector follows the incident: when the
step with the last ``CLEAR_STEPS`` (15) no longer leans its way, the long
window forgets the steps before them, so a 15-minute spike stops paging
about a quarter of an hour after it ended, not an hour.

>>> from datetime import UTC, datetime, timedelta
>>> import random; rng = random.Random(6)
>>> det = BinomialRate(series="acme|payment_failure_rate||1m", grace=300)
>>> t0 = datetime(2026, 11, 16, tzinfo=UTC)
>>> def step(i, p):
...     n = 3 + int(rng.random() * 4)
...     k = sum(rng.random() < p for _ in range(n))
...     return det.update(t0 + timedelta(minutes=i), k / n, n)
>>> max(step(i, 0.025).score for i in range(2000)) < 0.99
True
>>> [step(2000 + i, 0.5).score for i in range(3)][-1] > 0.99  # three minutes at 50%
True
"""

from __future__ import annotations

import math
from typing import ClassVar, Final

from linkpulse.online_ml.core import (
    ANOMALOUS_P,
    CLEAR_STEPS,
    Calibrator,
    ScalarDetector,
    Scan,
    Verdict,
    WindowSums,
    follow_incident,
    learn_scan_or_long,
    learn_weight,
    scan_or_long,
)
from linkpulse.online_ml.profile import LN2
from linkpulse.online_ml.stats import binom_two_sided

_PHI_MAX: Final = 20.0


def _two_sided(
    k: float, n: float, p: float, phi: float, log_p: float, log_q: float
) -> tuple[float, str]:
    """Quasi-binomial two-sided tail of ``k`` successes in ``n`` trials at rate ``p``.

    ``log_p``, ``log_q``: ``log(p)`` and ``log1p(-p)``, taken once for the step's tests.
    """
    if n <= 0.0:
        return 1.0, "none"
    kk, nn = k / phi, n / phi
    ni = round(nn)
    if ni < 1:
        ni = 1
    ki = round(kk * ni / nn)
    if ki < 0:
        ki = 0
    elif ki > ni:
        ki = ni
    return binom_two_sided(ki, ni, p, log_p, log_q)


class BinomialRate(ScalarDetector):
    """Quasi-binomial tails of a ratio's step and recent windows; see the module docstring."""

    name: ClassVar[str] = "binomial"
    # 2: the scan over the last steps; 3: the incident it follows; 4: the step in the scan
    STATE_VERSION = 4
    __slots__ = ("_k", "_m", "_alpha", "_phi", "_windows", "_cal", "_band", "_scan", "_incident")

    def __init__(
        self,
        *,
        series: str = "",
        period_s: float = 60.0,
        grace: int | None = None,
        percent: bool = True,
        short: int = 5,
        long: int = 60,
        band_sigmas: float = 3.0,
        half_life_days: float = 1.0,
    ) -> None:
        super().__init__(series=series, period_s=period_s, grace=grace, percent=percent)
        self._k = 0.0  # EW sums of successes and trials
        self._m = 0.0
        self._alpha = LN2 / max(1.0, half_life_days * self.steps_per_day)
        self._phi = 1.0
        self._windows = WindowSums(short, long, min(CLEAR_STEPS, long))  # (successes, trials)
        self._incident = ""  # the direction of the incident under way, if any (CLEAR_STEPS)
        self._scan = Scan(short)  # the scan's (successes, trials) of the last steps
        self._cal = (Calibrator(), Calibrator())  # the scan's (the step's too), the long's
        self._band = band_sigmas

    def _rate(self) -> float:
        # a weak prior (one success in 40 trials) keeps the rate off 0 and 1 early on
        return (self._k + 0.025) / (self._m + 1.0)

    def _trials_of(self) -> float:
        n = self._trials
        return 1.0 if n is None or n <= 0.0 else n

    def _tests(self, k: float, n: float, p: float) -> tuple[float, float, float, str, str, str]:
        """The step's, the scan's (smallest) and the long window's two-sided tails (and
        directions) of ``k`` successes in ``n`` trials against the rate ``p`` (off 0 and 1)."""
        _, _, lk, ln = self._windows.sums
        phi = self._phi
        lp, lq = math.log(p), math.log1p(-p)
        p0, d0 = _two_sided(k, n, p, phi, lp, lq)
        p1, d1 = 1.0, "none"
        spread = phi * p * (1.0 - p)
        for sk, sn in self._scan.sums(k, n):
            # within a sigma of its expectation a window's two-sided tail is above 0.05, so
            # it cannot page nor count as an exceedance for the calibrator: not worth a tail
            e = sk - sn * p
            if e * e < spread * sn:
                continue
            q, d = _two_sided(sk, sn, p, phi, lp, lq)
            if q < p1:
                p1, d1 = q, d
        p2, d2 = _two_sided(lk + k, ln + n, p, phi, lp, lq)
        return p0, p1, p2, d0, d1, d2

    def assess(self, ts: float, x: float | None) -> Verdict:
        # _trials_of and _rate written out (once per step of every ratio series);
        # min/max as comparisons, the same floats
        n = self._trials
        if n is None or n <= 0.0:
            n = 1.0
        p = (self._k + 0.025) / (self._m + 1.0)
        sd = math.sqrt(self._phi * p * (1.0 - p) / n)
        lower = p - self._band * sd
        if not lower > 0.0:
            lower = 0.0
        upper = p + self._band * sd
        if not upper < 1.0:
            upper = 1.0
        if x is None or self._m <= 0.0:
            return Verdict(1.0, "none", p, lower, upper, None, "value", self.name)
        if 1e-6 > p:
            p = 1e-6
        if 1.0 - 1e-6 < p:
            p = 1.0 - 1e-6
        share = 0.0 if 0.0 > x else x
        k = (1.0 if 1.0 < share else share) * n
        p0, p1, p2, d0, d1, d2 = self._tests(k, n, p)
        q, d, feature = scan_or_long(self._cal, p0, p1, p2, d0, d1, d2)
        sigmas = (x - p) / sd if sd > 0.0 else None
        raw = (p, p0, p1, p2)
        return Verdict(q, d, p, lower, upper, sigmas, feature, self.name, raw=raw)

    def learn(self, ts: float, x: float | None, verdict: Verdict) -> None:
        if x is None:
            return
        n = self._trials_of()
        k = min(max(x, 0.0), 1.0) * n
        w = 1.0
        if self._m > 0.0:
            if verdict.raw is not None:
                p, p0, p1, p2 = verdict.raw
            else:
                p = min(max(self._rate(), 1e-6), 1.0 - 1e-6)
                p0, p1, p2, _, _, _ = self._tests(k, n, p)
            # an anomalous step is learned at a tenth of its weight, so a burst bends the
            # rate and the calibration little while a lasting change is still followed
            w = learn_weight(verdict.p)
            learn_scan_or_long(self._cal, p0, p1, p2, w)
            var = n * p * (1.0 - p)
            if var > 0.0:
                ratio = min((k - n * p) ** 2 / var, 4.0 * self._phi + 4.0)
                a = max(1.0 / (self._m + 10.0), self._alpha)
                self._phi = min(_PHI_MAX, max(1.0, self._phi + a * (ratio - self._phi)))
        decay = 1.0 - self._alpha
        self._k = self._k * decay + w * k
        self._m = self._m * decay + w * n
        self._windows.push(k, n)
        self._scan.push(k, n)
        if self._incident or verdict.p < ANOMALOUS_P:
            mk, mn = self._windows.mid_sums
            p = min(max(self._rate(), 1e-6), 1.0 - 1e-6)
            way = self._incident or verdict.direction
            spread = self._phi * p * (1.0 - p)
            self._incident = follow_incident(self._windows, way, mk - mn * p, spread * mn)
