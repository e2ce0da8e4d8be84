"""What every scalar detector shares: the verdict, the calibration step, the score builder.

A detector's ``assess(ts, x)`` returns a ``Verdict`` (its tail probability
and band, uncalibrated) and ``learn(ts, x)`` learns; ``ScalarDetector``
turns that into the public ``score_one`` / ``learn_one`` / ``update`` with
calibration, warm-up and the explanation, so each detector is only its model.

Calibration (``Calibrator``): a detector's tail probability ``p`` is right
only if its noise model is; on a series with heavier tails than assumed,
surprises ``-ln p`` come bigger than the Exp(1) they would be, and what
matters for paging is the far tail, not the bulk. The calibrator is a
peaks-over-threshold model of the series' own surprises: how often they
exceed ``u = 3`` nats (``p < 0.05``; ``e^-3`` for an honest ``p``) and their
mean excess over ``u`` (1 for an honest ``p``, since Exp(1) has no memory).
The calibrated tail of a surprise ``s > u`` is ``rate * exp(-(s - u) /
excess)``. Neither is let below the honest value (a discrete or
conservative ``p`` is left as it is), so equal calibrated ``p`` mean equal
rarity on every series. Excesses are winsorised, and an hour of anomaly
moves the excess little: it learns with the memory of its own count.

>>> c = Calibrator()
>>> for _ in range(2000):
...     c.learn(0.01)  # a detector that reports p = 0.01 at every step is overconfident
>>> round(c.calibrate(0.01), 3), round(c.calibrate(1e-6), 3)
(0.336, 0.001)
>>> honest = Calibrator()
>>> import random; rng = random.Random(1)
>>> for _ in range(5000):
...     honest.learn(rng.random())
>>> 0.5e-6 < honest.calibrate(1e-6) < 2e-6
True
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import ClassVar, Final

from linkpulse.online_ml.base import DAY_S, Versioned, clean, to_seconds
from linkpulse.online_ml.explain import sentence, slot_label
from linkpulse.online_ml.stats import TINY
from linkpulse.schemas.outputs import AnomalyScore, Explanation

_log, _exp = math.log, math.exp
_U: Final = 3.0  # nats: the threshold of the tail model (p = 0.05)
_HONEST_RATE: Final = math.exp(-_U)
_CAP_EXCESS: Final = 4.0  # an excess counts as at most this many mean excesses
_PRIOR_STEPS: Final = 200.0  # the honest prior counts as this many steps
_PRIOR_EXCEEDANCES: Final = 50.0  # ... and as this many exceedances for the excess


class Calibrator(Versioned):
    """Peaks-over-threshold calibration of a detector's surprises (see the module)."""

    __slots__ = ("_rate", "_excess", "_n", "_n_exc", "_alpha", "_alpha_exc")
    STATE_VERSION = 2

    def __init__(self, half_life_steps: float = 3 * 1440.0) -> None:
        self._rate = _HONEST_RATE
        self._excess = 1.0
        self._n = 0.0
        self._n_exc = 0.0
        self._alpha = math.log(2.0) / max(half_life_steps, 1.0)
        # the excess's memory in exceedances: as long as the rate's in steps, for honest p
        self._alpha_exc = min(1.0, self._alpha / _HONEST_RATE)

    @property
    def rate(self) -> float:
        """How often the surprise exceeds 3 nats (``e^-3`` for a well-calibrated detector)."""
        return self._rate

    @property
    def excess(self) -> float:
        """The mean excess of the surprise over 3 nats (1 for a well-calibrated detector)."""
        return self._excess

    def calibrate(self, p: float) -> float:
        """The calibrated tail probability of ``p``."""
        # written out (no min/max calls): every detector calls this three times per step
        if not p > 0.0:
            return 0.0
        if p >= 1.0:
            return p
        rate = self._rate
        inflate = rate / _HONEST_RATE
        s = -_log(p)
        if s <= _U:
            if inflate > 1.0:
                q = p * inflate
                return q if q < 1.0 else 1.0
            return p
        if not inflate > 1.0:
            rate = _HONEST_RATE
        b = self._excess
        if not b > 1.0:
            b = 1.0
        return rate * _exp(-(s - _U) / b)

    def learn(self, p: float, weight: float = 1.0) -> None:
        """Learn one step's uncalibrated ``p`` (``weight`` < 1: a step scored as anomalous).

        Detectors learn the steps their verdict found anomalous at a tenth of
        the weight, so an incident does not teach its own series that
        incidents are usual (its later steps would score lower and lower).
        """
        s = -_log(p) if p > 0.0 else 700.0
        n = self._n
        a = 1.0 / (n + _PRIOR_STEPS)
        if self._alpha > a:
            a = self._alpha
        a *= weight
        self._n = n + weight
        if s <= _U:
            self._rate -= a * self._rate
            return
        self._rate += a * (1.0 - self._rate)
        b = self._excess
        ae = 1.0 / (self._n_exc + _PRIOR_EXCEEDANCES)
        if self._alpha_exc > ae:
            ae = self._alpha_exc
        ae *= weight
        e = s - _U
        if _CAP_EXCESS * b < e:
            e = _CAP_EXCESS * b
        self._excess = b + ae * (e - b)
        self._n_exc += weight


ANOMALOUS_P: Final = 1e-4
"""A verdict below this is an anomalous step: learned at ``ANOMALOUS_WEIGHT`` of its weight."""
ANOMALOUS_WEIGHT: Final = 0.1


def learn_weight(p: float) -> float:
    """The weight a step with verdict ``p`` is learned with (see ``ANOMALOUS_P``).

    >>> learn_weight(0.3), learn_weight(1e-9)
    (1.0, 0.1)
    """
    return ANOMALOUS_WEIGHT if p < ANOMALOUS_P else 1.0


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
        p = v.p
        # score_from_p(p, steps_per_day) and surprise(p) written out (once per step per series)
        score = 0.0
        if warm:
            score = math.exp(-self._steps_per_day * (1.0 if 1.0 < p else p)) if p > 0.0 else 1.0
        q = p if p > TINY else TINY
        raw = 0.0 if q >= 1.0 else -math.log10(q)
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
            raw=raw,
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
    """Sums of (a, b) pairs over the last ``short``, the last ``long`` and the last ``mid`` steps.

    A ring buffer; ``mid`` (0: none) is the window that tells an incident is over
    (see ``CLEAR_STEPS`` and ``follow_incident``).

    >>> w = WindowSums(2, 4, mid=3)
    >>> for k in range(5):
    ...     w.push(float(k), 1.0)
    >>> w.sums, w.mid_sums  # (a, b) over the last 2 steps, the last 4; the last 3
    ((7.0, 2.0, 10.0, 4.0), (9.0, 3.0))
    >>> w.forget_before_mid(); w.sums  # the long window keeps the last 3 steps only
    (7.0, 2.0, 9.0, 3.0)
    """

    STATE_VERSION = 2  # 2: the mid window
    __slots__ = ("_short", "_long", "_mid", "_a", "_b", "_pos", "sums", "mid_sums")

    def __init__(self, short: int, long: int, mid: int = 0) -> None:
        if not 1 <= short <= long <= 100_000:
            msg = f"need 1 <= short <= long steps, got short={short}, long={long}"
            raise ValueError(msg)
        if not 0 <= mid <= long:
            msg = f"need 0 <= mid <= long steps, got mid={mid}, long={long}"
            raise ValueError(msg)
        self._short = short
        self._long = long
        self._mid = mid
        self._a = [0.0] * long
        self._b = [0.0] * long
        self._pos = 0
        self.sums = (0.0, 0.0, 0.0, 0.0)
        self.mid_sums = (0.0, 0.0)

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
        mid = self._mid
        if mid:
            ma, mb = self.mid_sums
            gone = (pos - mid) % n  # leaves the mid window
            ma += a - xs[gone]
            mb += b - ys[gone]
        xs[pos] = a
        ys[pos] = b
        self._pos = pos
        if pos == 0:
            # re-add exactly once per turn, so rounding left by a huge value cannot linger
            sa, sb = self._last(self._short)
            la, lb = sum(xs), sum(ys)
            if mid:
                ma, mb = self._last(mid)
        self.sums = (sa, sb, la, lb)
        if mid:
            self.mid_sums = (ma, mb)

    def _last(self, k: int) -> tuple[float, float]:
        """The sums of the last ``k`` steps' pairs, added afresh."""
        xs, ys, n, pos = self._a, self._b, self._long, self._pos
        idx = [(pos - j) % n for j in range(k)]
        return sum(xs[i] for i in idx), sum(ys[i] for i in idx)

    def forget_before_mid(self) -> None:
        """Drop every step older than the last ``mid``: what is left is only the recent steps."""
        xs, ys, n, pos = self._a, self._b, self._long, self._pos
        for k in range(self._mid, n):
            i = (pos - k) % n
            xs[i] = ys[i] = 0.0
        self.sums = (*self._last(self._short), sum(xs), sum(ys))


CLEAR_STEPS: Final = 15
"""The steps that tell a count or ratio detector that an incident is over.

A long window holds an incident's minutes for ``long`` steps after it ended,
so its test alone would keep paging for most of an hour after the series
came back. Once a detector has scored a step anomalous, it watches the step
with the last ``CLEAR_STEPS`` steps: when they no longer deviate the incident's
way by ``CLEAR_Z`` sigmas, the long window forgets the steps before them.
"""
CLEAR_Z: Final = 1.2816


def follow_incident(windows: WindowSums, way: str, excess: float, variance: float) -> str:
    """The incident's direction after a step: ``way`` while the mid window's ``excess`` (with
    its ``variance``) still leans that way, else ``""``, and ``windows`` forgets its old steps.

    >>> w = WindowSums(1, 4, mid=2)
    >>> for x in (9.0, 9.0, 0.0, 0.0):
    ...     w.push(x, 1.0)
    >>> follow_incident(w, "up", -2.0, 2.0), w.sums  # over: only the last 2 steps are left
    ('', (0.0, 1.0, 0.0, 2.0))
    """
    if leans(excess, variance, way):
        return way
    # the incident is over: its steps leave the long window now, not ``long`` steps later
    windows.forget_before_mid()
    return ""


def leans(excess: float, variance: float, direction: str) -> bool:
    """Whether a window ``excess`` over its expectation leans ``direction`` by ``CLEAR_Z`` sigmas.

    >>> leans(-6.0, 9.0, "down"), leans(-6.0, 9.0, "up"), leans(-3.0, 9.0, "down")
    (True, False, False)
    """
    if excess * excess <= CLEAR_Z * CLEAR_Z * variance:
        return False
    return direction == ("up" if excess > 0.0 else "down")


def scan_or_long(
    cal: tuple[Calibrator, Calibrator],
    p0: float,
    p1: float,
    p2: float,
    d0: str,
    d1: str,
    d2: str,
) -> tuple[float, str, str]:
    """A count or ratio detector's verdict ``(p, direction, feature)`` of its two tests.

    ``p0``: the step alone, ``p1``: the scan's smallest tail (the step with the last
    ``SCAN_STEPS`` and ``short`` steps), ``p2``: the long window, with their directions.
    The step is the scan's shortest window, so the two share the scan's calibrator
    (``cal[0]``; ``cal[1]`` is the long window's); the verdict is the smaller calibrated
    tail times two (Bonferroni over the two tests).

    >>> honest = (Calibrator(), Calibrator())
    >>> p, direction, feature = scan_or_long(honest, 1e-6, 1e-3, 0.5, "up", "up", "none")
    >>> round(p, 12), direction, feature  # the step's tail, an honest one, times two
    (2e-06, 'up', 'value')
    >>> scan_or_long(honest, 0.2, 1e-3, 1e-5, "up", "up", "down")[1:]
    ('down', 'long_mean')
    """
    scan, long = cal
    if p0 <= p1:
        q, d, feature = scan.calibrate(p0), d0, "value"
    else:
        q, d, feature = scan.calibrate(p1), d1, "recent_mean"
    q2 = long.calibrate(p2)
    if q2 < q:
        q, d, feature = q2, d2, "long_mean"
    q *= 2.0
    return (q if q < 1.0 else 1.0), d, feature


def learn_scan_or_long(
    cal: tuple[Calibrator, Calibrator], p0: float, p1: float, p2: float, weight: float
) -> None:
    """Teach ``scan_or_long``'s calibrators one step's tails (the scan's: the step's too)."""
    cal[0].learn(p0 if p0 < p1 else p1, weight)
    cal[1].learn(p2, weight)


SCAN_STEPS: Final = (1, 2, 3)
"""The scans' window lengths in steps before the step, besides the detector's ``short``."""


class Scan(Versioned):
    """The last steps' (a, b) pairs, newest first, and their sums with the step's at scan lengths.

    A detector that tests "the step plus the last j steps" for a few ``j`` and
    keeps the smallest tail tests a change on its own steps, whenever it began.

    >>> s = Scan(5)
    >>> s.lengths
    (1, 2, 3, 5)
    >>> for k in range(6):
    ...     s.push(float(k), 1.0)
    >>> s.sums(10.0, 1.0)  # (a, b) of the step with the last 1, 2, 3 and 5 steps
    [(15.0, 2.0), (19.0, 3.0), (22.0, 4.0), (25.0, 6.0)]
    """

    __slots__ = ("lengths", "_recent")

    def __init__(self, short: int) -> None:
        if short < 1:
            msg = f"short must be >= 1 step, got {short}"
            raise ValueError(msg)
        self.lengths = tuple(sorted({j for j in SCAN_STEPS if j < short} | {short}))
        self._recent: list[tuple[float, float]] = []

    def push(self, a: float, b: float) -> None:
        """Add one step's pair; the oldest beyond the longest scan leaves."""
        recent = self._recent
        recent.insert(0, (a, b))
        if len(recent) > self.lengths[-1]:
            recent.pop()

    def sums(self, a: float, b: float) -> list[tuple[float, float]]:
        """The step's ``(a, b)`` plus the last j steps', for each scan length j seen so far."""
        out = []
        lengths = self.lengths
        j = 0
        for ra, rb in self._recent:
            a += ra
            b += rb
            j += 1
            if j in lengths:
                out.append((a, b))
        return out
