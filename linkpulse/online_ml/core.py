"""What every scalar detector shares: the verdict, the calibration step, the score builder.

A detector's ``assess(ts, x)`` returns a ``Verdict`` (its tail probability
and band, uncalibrated) and ``learn(ts, x)`` learns; ``ScalarDetector``
turns that into the public ``score_one`` / ``learn_one`` / ``update`` with
calibration, warm-up and the explanation, so each detector is only its model.

Calibration (``Calibrator``): a detector's tail probability ``p`` is right
only if its noise model is; on a series with heavier tails than assumed,
surprises ``-ln p`` come bigger than the Exp(1) they would be. The
calibrator keeps the series' own long-run mean of (capped) surprises and
divides by it (never below 1: a discrete or conservative ``p`` is left as it
is), so equal calibrated ``p`` mean equal rarity on every series.

>>> c = Calibrator()
>>> for _ in range(2000):
...     c.learn(0.01)  # a detector that reports p = 0.01 at every step is overconfident
>>> round(c.calibrate(0.01), 3), round(c.calibrate(1e-6), 3)
(0.341, 0.04)
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import ClassVar, Final

from linkpulse.online_ml.base import DAY_S, Versioned, clean, score_from_p, to_seconds
from linkpulse.online_ml.explain import sentence, slot_label
from linkpulse.online_ml.stats import surprise
from linkpulse.schemas.outputs import AnomalyScore, Explanation

_CAP_NATS: Final = 12.0  # one anomaly moves the long-run mean by at most this much
_PRIOR_STEPS: Final = 200.0  # the Exp(1) prior counts as this many steps


class Calibrator(Versioned):
    """Rescales surprises by the series' own long-run mean surprise (see the module)."""

    __slots__ = ("_mean", "_n", "_alpha")

    def __init__(self, half_life_steps: float = 3 * 1440.0) -> None:
        self._mean = 1.0
        self._n = 0.0
        self._alpha = math.log(2.0) / max(half_life_steps, 1.0)

    @property
    def mean_surprise(self) -> float:
        """The long-run mean of ``-ln p`` (1 for a well-calibrated detector)."""
        return self._mean

    def calibrate(self, p: float) -> float:
        """The calibrated tail probability of ``p``."""
        if not p > 0.0:
            return 0.0
        m = self._mean
        return p if m <= 1.0 or p >= 1.0 else math.exp(math.log(p) / m)

    def learn(self, p: float) -> None:
        """Learn one step's uncalibrated ``p``."""
        nats = -math.log(p) if p > 0.0 else _CAP_NATS
        a = max(1.0 / (self._n + _PRIOR_STEPS), self._alpha)
        self._mean += a * (min(nats, _CAP_NATS) - self._mean)
        self._n += 1.0


class Verdict:
    """One detector's uncalibrated assessment of one step."""

    __slots__ = (
        "p",
        "direction",
        "expected",
        "lower",
        "upper",
        "sigmas",
        "feature",
        "novel",
        "gap_steps",
        "detector",
        "raw",
    )

    def __init__(
        self,
        p: float,
        direction: str,
        expected: float | None,
        lower: float | None,
        upper: float | None,
        sigmas: float | None,
        feature: str,
        detector: str,
        novel: bool = False,
        gap_steps: int = 0,
        raw: tuple[float, ...] | None = None,
    ) -> None:
        self.p = p
        self.direction = direction
        self.expected = expected
        self.lower = lower
        self.upper = upper
        self.sigmas = sigmas
        self.feature = feature
        self.detector = detector
        self.novel = novel
        self.gap_steps = gap_steps
        # what assess computed that learn needs again (so a step is tested once)
        self.raw = raw


class ScalarDetector(Versioned):
    """Base of the scalar detectors: the public contract over ``assess`` / ``learn``.

    ``n`` (optional on every call) is the number of trials behind a ratio, its
    denominator (``MetricWindow.count``); detectors that do not model it ignore it.
    ``period_s`` is the step (60 for 1-minute windows); ``grace`` the steps
    learned before the detector is ``warm`` (default: one day); while not
    warm the score is 0. ``percent`` formats values as percentages (ratios).
    """

    name: ClassVar[str] = "scalar"
    __slots__ = ("series", "_steps_per_day", "_grace", "_n", "_percent", "_cache", "_trials")

    def __init__(
        self,
        *,
        series: str = "",
        period_s: float = 60.0,
        grace: int | None = None,
        percent: bool = False,
    ) -> None:
        if not (period_s > 0 and math.isfinite(period_s)):
            msg = f"period_s must be a positive number of seconds, got {period_s!r}"
            raise ValueError(msg)
        if grace is not None and grace < 0:
            msg = f"grace must be >= 0 steps, got {grace!r}"
            raise ValueError(msg)
        self.series = series
        self._steps_per_day = DAY_S / period_s
        self._grace = int(self._steps_per_day) if grace is None else int(grace)
        self._n = 0
        self._percent = percent
        # (ts, x, n, verdict) of the last assess, so update() does not assess twice
        self._cache: tuple[float, float | None, float | None, Verdict] | None = None
        # the step's trials (a ratio's denominator), for the detectors that model them
        self._trials: float | None = None

    # -- what a detector implements -------------------------------------------------------

    def assess(self, ts: float, x: float | None) -> Verdict:
        """The calibrated verdict on ``x`` at ``ts`` (x already cleaned); learns nothing."""
        raise NotImplementedError

    def learn(self, ts: float, x: float | None, verdict: Verdict) -> None:
        """Learn ``x`` at ``ts``; ``verdict`` is what ``assess`` said of it."""
        raise NotImplementedError

    # -- the contract ---------------------------------------------------------------------

    @property
    def warm(self) -> bool:
        return self._n >= self._grace

    @property
    def steps_per_day(self) -> float:
        return self._steps_per_day

    def _verdict(self, ts: float, x: float | None) -> Verdict:
        c = self._cache
        if c is not None and c[0] == ts and c[1] == x and c[2] == self._trials:
            return c[3]
        v = self.assess(ts, x)
        self._cache = (ts, x, self._trials, v)
        return v

    def score_one(self, t: datetime, x: float | None, n: float | None = None) -> AnomalyScore:
        ts = to_seconds(t)
        xc = clean(x)
        self._trials = clean(n)
        return self.to_score(t, ts, xc, self._verdict(ts, xc))

    def learn_one(self, t: datetime, x: float | None, n: float | None = None) -> None:
        ts = to_seconds(t)
        xc = clean(x)
        self._trials = clean(n)
        v = self._verdict(ts, xc)
        self.learn(ts, xc, v)
        self._n += 1
        self._cache = None

    def update(self, t: datetime, x: float | None, n: float | None = None) -> AnomalyScore:
        ts = to_seconds(t)
        xc = clean(x)
        self._trials = clean(n)
        v = self._verdict(ts, xc)
        score = self.to_score(t, ts, xc, v)
        self.learn(ts, xc, v)
        self._n += 1
        self._cache = None
        return score

    def to_score(self, t: datetime, ts: float, x: float | None, v: Verdict) -> AnomalyScore:
        """The public ``AnomalyScore`` of a verdict."""
        warm = self._n >= self._grace
        score = score_from_p(v.p, self._steps_per_day) if warm else 0.0
        slot = slot_label(ts)
        direction = v.direction if score > 0.0 else "none"
        text = sentence(
            self.series,
            value=x,
            expected=v.expected,
            lower=v.lower,
            upper=v.upper,
            slot=slot,
            direction=direction,
            gap_steps=v.gap_steps,
            novel=v.novel,
            feature=v.feature,
            percent=self._percent,
        )
        if not warm:
            text += f" (learning: {self._n} of {self._grace} steps)"
        return AnomalyScore(
            series=self.series,
            time=t,
            score=score,
            raw=surprise(v.p),
            value=x,
            expected=v.expected,
            lower=v.lower,
            upper=v.upper,
            direction=direction,
            warm=warm,
            model=self.name,
            explanation=text,
            details=Explanation(
                detector=v.detector,
                feature=v.feature,
                sigmas=v.sigmas,
                slot=slot,
                novel=v.novel,
                gap_steps=v.gap_steps,
                p_value=v.p,
            ),
        )


class WindowSums(Versioned):
    """Sums of (a, b) pairs over the last ``short`` and the last ``long`` steps (ring buffer).

    >>> w = WindowSums(2, 3)
    >>> for k in range(5):
    ...     w.push(float(k), 1.0)
    >>> w.sums  # (a, b) over the last 2 steps, then over the last 3
    (7.0, 2.0, 9.0, 3.0)
    """

    __slots__ = ("_short", "_long", "_a", "_b", "_pos", "sums")

    def __init__(self, short: int, long: int) -> None:
        if not 1 <= short <= long <= 100_000:
            msg = f"need 1 <= short <= long steps, got short={short}, long={long}"
            raise ValueError(msg)
        self._short = short
        self._long = long
        self._a = [0.0] * long
        self._b = [0.0] * long
        self._pos = 0
        self.sums = (0.0, 0.0, 0.0, 0.0)

    def push(self, a: float, b: float) -> None:
        """Add one step's pair; the oldest leaves each window."""
        xs, ys, n = self._a, self._b, self._long
        pos = (self._pos + 1) % n
        old = (pos - self._short) % n  # leaves the short window (== pos when short == long)
        sa, sb, la, lb = self.sums
        sa += a - xs[old]
        sb += b - ys[old]
        la += a - xs[pos]
        lb += b - ys[pos]
        xs[pos] = a
        ys[pos] = b
        self._pos = pos
        if pos == 0:
            # re-add exactly once per turn, so rounding left by a huge value cannot linger
            idx = [(pos - k) % n for k in range(self._short)]
            sa, sb = sum(xs[i] for i in idx), sum(ys[i] for i in idx)
            la, lb = sum(xs), sum(ys)
        self.sums = (sa, sb, la, lb)
