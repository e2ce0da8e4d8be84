"""Joint shifts: one tenant's metrics together, to catch a change no single series shows.

Each metric is first made comparable: its ``SeasonalProfile`` turns the value
into a robust z-score (so a busy metric's scale and everyone's daily curve are
gone). ``JointShift`` then learns the z-vectors' mean and covariance
(exponentially weighted) and scores the Mahalanobis distance of the step, and
of a fast moving average of steps, with a chi-square tail, calibrated like
every detector; orders up while GMV flat is far out even when both are
within their own bands. Both also watch the tenant's *funnels*
(``FUNNELS``): a metric whose events follow another's one for one (each
order is paid seconds later). Given the minute's event counts (``n``),
the share of orders followed by a settled payment is scored with the
binomial tails of ``BinomialRate``: a payment stream that stops while
orders go on pages in a minute or two, long before the payments' own series
can tell its silence from a quiet minute. ``JointHST`` feeds the same z-scores, squashed to
[0, 1] by the normal CDF, to River's ``HalfSpaceTrees`` (the issue's "properly
scaled inputs"), its score turned into a tail probability against the
score's own running mean and spread.

>>> from datetime import UTC, datetime, timedelta
>>> import random; rng = random.Random(4)
>>> det = JointShift(series="acme|joint||1m", features=("orders", "gmv"), grace=300)
>>> t0 = datetime(2026, 11, 16, tzinfo=UTC)
>>> for i in range(900):
...     o = 50 + rng.gauss(0, 5)
...     _ = det.update(t0 + timedelta(minutes=i), {"orders": o, "gmv": 40 * o + rng.gauss(0, 40)})
>>> s = det.update(t0 + timedelta(minutes=900), {"orders": 60.0, "gmv": 1650.0})
>>> s.score > 0.99, s.details.detector
(True, 'joint')

With the counts, orders that stop being paid page on the first silent minutes:

>>> det = JointShift(series="acme|joint||1m", features=("orders", "gmv"), grace=300)
>>> for i in range(900):
...     o = float(rng.randrange(2, 8))
...     paid = sum(rng.random() < 0.97 for _ in range(int(o)))
...     _ = det.update(t0 + timedelta(minutes=i), {"orders": o, "gmv": 40.0 * paid},
...                    {"orders": o, "gmv": float(paid)})
>>> s = [det.update(t0 + timedelta(minutes=900 + k), {"orders": 5.0, "gmv": None},
...                 {"orders": 5.0}) for k in range(2)][-1]
>>> s.score > 0.99, s.details.detector, s.direction
(True, 'funnel', 'down')
>>> s.explanation
'acme: settled payments for 0% of orders (0 of 5 this minute), usually 97% (funnel orders -> gmv)'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final

from river import anomaly as _anomaly

from linkpulse.online_ml.base import DAY_S, Versioned, clean, score_from_p, to_seconds
from linkpulse.online_ml.binomial import BinomialRate
from linkpulse.online_ml.core import Calibrator
from linkpulse.online_ml.explain import series_label, slot_label
from linkpulse.online_ml.profile import LN2, SeasonalProfile
from linkpulse.online_ml.stats import chi2_sf_even, normal_sf, surprise
from linkpulse.schemas.outputs import AnomalyScore, Explanation

anomaly: Any = _anomaly  # River is untyped: calls through Any keep mypy strict quiet

TENANT_FEATURES: Final = (
    "orders",
    "gmv",
    "payment_failure_rate",
    "refunds",
    "page_views",
    "active_users",
)


@dataclass(frozen=True)
class Funnel:
    """``downstream``'s events follow ``upstream``'s one for one, seconds later.

    ``upstream_events`` and ``downstream_events`` name the events in explanations.
    """

    upstream: str
    downstream: str
    upstream_events: str
    downstream_events: str


FUNNELS: Final = (Funnel("orders", "gmv", "orders", "settled payments"),)
"""The tenant funnels the joint detectors watch: every order is paid within seconds."""
# The funnel's windows: the step, the last 3 and the last 11 steps. Short, so a page clears
# within minutes of the stream coming back (a payment's lag straddles at most one boundary).
_FUNNEL_SHORT: Final = 2
_FUNNEL_LONG: Final = 10
# A feature's z is capped at 4: the joint test is for shifts spread over several features,
# and one feature far out is its own detector's page. At 6, one big order (GMV's heavy
# tail, z ~ 6) alone made a joint page: 2 of the 12 false incidents on seeds 1-4 and 10 of
# the 20 on seeds 9-12 were joint pages; at 4, 0 and 1 are left, and every label is found
# as before.
_Z_CAP: Final = 4.0
_RIDGE: Final = 0.05


def _invert(a: list[list[float]]) -> list[list[float]] | None:
    """Gauss-Jordan inverse of a small symmetric positive matrix (None if singular)."""
    n = len(a)
    m = [row[:] + [1.0 if i == j else 0.0 for j in range(n)] for i, row in enumerate(a)]
    for c in range(n):
        piv = max(range(c, n), key=lambda r: abs(m[r][c]))
        if abs(m[piv][c]) < 1e-12:
            return None
        m[c], m[piv] = m[piv], m[c]
        inv = 1.0 / m[c][c]
        m[c] = [v * inv for v in m[c]]
        for r in range(n):
            if r != c and m[r][c] != 0.0:
                f = m[r][c]
                m[r] = [v - f * w for v, w in zip(m[r], m[c], strict=True)]
    return [row[n:] for row in m]


class _JointBase(Versioned):
    """Per-feature profiles -> z-vector; the public contract around ``_assess``."""

    name: ClassVar[str] = "joint"
    STATE_VERSION = 2
    __slots__ = (
        "series",
        "_features",
        "_profiles",
        "_gap_zero",
        "_grace",
        "_n",
        "_spd",
        "_cal",
        "_funnels",
    )

    def __init__(
        self,
        *,
        series: str = "",
        features: Sequence[str] = TENANT_FEATURES,
        ratios: Sequence[str] = ("payment_failure_rate", "conversion_rate"),
        period_s: float = 60.0,
        grace: int | None = None,
        funnels: Sequence[Funnel] = FUNNELS,
    ) -> None:
        if len(features) < 2 or len(set(features)) != len(features):
            msg = f"features must name at least two distinct metrics, got {list(features)}"
            raise ValueError(msg)
        if not (period_s > 0 and math.isfinite(period_s)):
            msg = f"period_s must be a positive number of seconds, got {period_s!r}"
            raise ValueError(msg)
        self.series = series
        self._features = tuple(features)
        self._spd = DAY_S / period_s
        self._profiles = [
            SeasonalProfile(additive=f in ratios, steps_per_day=self._spd) for f in self._features
        ]
        self._gap_zero = [f not in ratios for f in self._features]
        self._grace = int(self._spd) if grace is None else int(grace)
        self._n = 0
        self._cal = (Calibrator(), Calibrator())
        # the funnels between two of the features, each with its share's binomial detector
        self._funnels = tuple(
            (f, BinomialRate(series=f"{series}|{f.upstream}>{f.downstream}", period_s=period_s,
                             grace=0, short=_FUNNEL_SHORT, long=_FUNNEL_LONG))
            for f in funnels
            if f.upstream in self._features and f.downstream in self._features
        )  # fmt: skip

    @property
    def warm(self) -> bool:
        return self._n >= self._grace

    def _funnel_steps(
        self, x: Mapping[str, float | None], n: Mapping[str, float | None] | None
    ) -> list[tuple[float | None, float | None]]:
        """Per funnel: (share of upstream events followed downstream, upstream events).

        Counts come from ``n`` (a missing downstream count with the metric in ``x``
        is an empty window: none came); an upstream count missing from ``n`` is its
        value (a count metric's value is its events). Without ``n``: nothing to test.
        """
        out: list[tuple[float | None, float | None]] = []
        for f, _ in self._funnels:
            if n is None or f.downstream not in x:
                out.append((None, None))
                continue
            up = clean(n.get(f.upstream))
            if up is None:
                up = clean(x.get(f.upstream))
            down = clean(n.get(f.downstream)) or 0.0
            if up is None or up < 1.0:
                out.append((None, None))  # nothing upstream: nothing to follow
                continue
            out.append((min(max(down, 0.0), up) / up, up))
        return out

    def _z(self, ts: float, x: Mapping[str, float | None]) -> list[float | None]:
        zs: list[float | None] = []
        for f, prof, gz in zip(self._features, self._profiles, self._gap_zero, strict=True):
            v = clean(x.get(f))
            if v is None and gz:
                v = 0.0
            if v is None or prof.n < 30:
                zs.append(None)
                continue
            mu, s = prof.expected_and_scale(ts)
            z = (v - mu) / s
            zs.append(max(-_Z_CAP, min(_Z_CAP, z)))
        return zs

    def _learn_profiles(self, ts: float, x: Mapping[str, float | None]) -> None:
        for f, prof, gz in zip(self._features, self._profiles, self._gap_zero, strict=True):
            v = clean(x.get(f))
            if v is None and gz:
                v = 0.0
            if v is not None:
                prof.learn(ts, v)

    def _assess(self, zs: list[float | None]) -> tuple[float, float, float]:
        raise NotImplementedError

    def _learn(self, zs: list[float | None], raw: tuple[float, float, float]) -> None:
        raise NotImplementedError

    def score_one(
        self,
        t: datetime,
        x: Mapping[str, float | None],
        n: Mapping[str, float | None] | None = None,
    ) -> AnomalyScore:
        ts = to_seconds(t)
        zs = self._z(ts, x)
        steps = self._funnel_steps(x, n)
        funnels = [d.score_one(t, share, m) for (_, d), (share, m) in zip(self._funnels, steps,
                                                                        strict=True)]  # fmt: skip
        return self._score(t, ts, zs, self._assess(zs), funnels, steps)

    def learn_one(
        self,
        t: datetime,
        x: Mapping[str, float | None],
        n: Mapping[str, float | None] | None = None,
    ) -> None:
        ts = to_seconds(t)
        zs = self._z(ts, x)
        self._learn(zs, self._assess(zs))
        self._learn_profiles(ts, x)
        for (_, d), (share, m) in zip(self._funnels, self._funnel_steps(x, n), strict=True):
            d.learn_one(t, share, m)
        self._n += 1

    def update(
        self,
        t: datetime,
        x: Mapping[str, float | None],
        n: Mapping[str, float | None] | None = None,
    ) -> AnomalyScore:
        """Score the step's features (and funnels, given the counts ``n``), then learn it."""
        ts = to_seconds(t)
        zs = self._z(ts, x)
        raw = self._assess(zs)
        steps = self._funnel_steps(x, n)
        funnels = [d.update(t, share, m) for (_, d), (share, m) in zip(self._funnels, steps,
                                                                     strict=True)]  # fmt: skip
        score = self._score(t, ts, zs, raw, funnels, steps)
        self._learn(zs, raw)
        self._learn_profiles(ts, x)
        self._n += 1
        return score

    def _score(
        self,
        t: datetime,
        ts: float,
        zs: list[float | None],
        raw: tuple[float, float, float],
        funnels: Sequence[AnomalyScore] = (),
        steps: Sequence[tuple[float | None, float | None]] = (),
    ) -> AnomalyScore:
        p, stat, _ = raw
        warm = self._n >= self._grace
        if funnels:
            # Bonferroni over the features' verdict and each funnel's (already calibrated)
            ps = [p] + [f.details.p_value if f.details.p_value is not None else 1.0
                        for f in funnels]  # fmt: skip
            k = min(range(len(ps)), key=ps.__getitem__)
            p = min(1.0, len(ps) * ps[k])
            if k > 0 and warm:
                return self._funnel_score(t, ts, p, self._funnels[k - 1][0], funnels[k - 1],
                                          steps[k - 1])  # fmt: skip
        score = score_from_p(p, self._spd) if warm else 0.0
        # the feature furthest from its usual value explains the shift
        k, zk = max(
            ((i, z) for i, z in enumerate(zs) if z is not None),
            key=lambda iz: abs(iz[1]),
            default=(0, 0.0),
        )
        feature = self._features[k]
        direction = ("up" if zk > 0 else "down") if score > 0.0 else "none"
        slot = slot_label(ts)
        tenant = self.series.split("|", 1)[0]
        parts = ", ".join(
            f"{f} {z:+.1f} sigma" for f, z in zip(self._features, zs, strict=True) if z is not None
        )
        label = series_label(f"{tenant}|{feature}||")
        text = (
            f"{tenant}: metrics moved together unusually for {slot} "
            f"(distance {math.sqrt(max(stat, 0.0)):.1f}; {parts}); most: {label}"
        )
        if not warm:
            text += f" (learning: {self._n} of {self._grace} steps)"
        return AnomalyScore(
            series=self.series,
            time=t,
            score=score,
            raw=surprise(p),
            value=None,
            expected=None,
            lower=None,
            upper=None,
            direction=direction,
            warm=warm,
            model=self.name,
            explanation=text,
            details=Explanation(
                detector=self.name, feature=feature, sigmas=zk, slot=slot, p_value=p
            ),
        )

    def _funnel_score(
        self,
        t: datetime,
        ts: float,
        p: float,
        funnel: Funnel,
        verdict: AnomalyScore,
        step: tuple[float | None, float | None],
    ) -> AnomalyScore:
        """The joint score when a funnel drove it: the share that came, and the usual one."""
        score = score_from_p(p, self._spd)
        share, trials = step
        tenant = self.series.split("|", 1)[0]
        usual = verdict.expected
        if share is None or trials is None:
            now = "none this minute"
        else:
            now = f"{share:.0%} of {funnel.upstream_events} ({round(share * trials)} of "
            now += f"{round(trials)} this minute)"
        text = f"{tenant}: {funnel.downstream_events} for {now}"
        if usual is not None:
            text += f", usually {usual:.0%}"
        text += f" (funnel {funnel.upstream} -> {funnel.downstream})"
        return AnomalyScore(
            series=self.series,
            time=t,
            score=score,
            raw=surprise(p),
            value=share,
            expected=usual,
            lower=verdict.lower,
            upper=verdict.upper,
            direction=verdict.direction if score > 0.0 else "none",
            warm=True,
            model=self.name,
            explanation=text,
            details=Explanation(
                detector="funnel",
                feature=funnel.downstream,
                sigmas=verdict.details.sigmas,
                slot=slot_label(ts),
                p_value=p,
            ),
        )


class JointShift(_JointBase):
    """Mahalanobis distance of the z-vector (and its fast mean) under a learned covariance."""

    name: ClassVar[str] = "joint"
    __slots__ = ("_mean", "_cov", "_inv", "_alpha", "_fast", "_af")

    def __init__(
        self,
        *,
        series: str = "",
        features: Sequence[str] = TENANT_FEATURES,
        ratios: Sequence[str] = ("payment_failure_rate", "conversion_rate"),
        period_s: float = 60.0,
        grace: int | None = None,
        half_life_days: float = 3.0,
        fast_alpha: float = 0.3,
        funnels: Sequence[Funnel] = FUNNELS,
    ) -> None:
        super().__init__(
            series=series, features=features, ratios=ratios, period_s=period_s, grace=grace,
            funnels=funnels,
        )  # fmt: skip
        k = len(self._features)
        self._mean = [0.0] * k
        self._cov = [[1.0 if i == j else 0.0 for j in range(k)] for i in range(k)]
        self._inv: list[list[float]] | None = None
        self._alpha = LN2 / max(1.0, half_life_days * self._spd)
        self._fast = [0.0] * k
        self._af = fast_alpha

    def _centred(self, zs: list[float | None]) -> list[float]:
        return [0.0 if z is None else z - m for z, m in zip(zs, self._mean, strict=True)]

    def _inverse(self) -> list[list[float]]:
        if self._inv is None:
            k = len(self._cov)
            ridge = [[v + (_RIDGE if i == j else 0.0) for j, v in enumerate(r)] for i, r in
                     enumerate(self._cov)]  # fmt: skip
            self._inv = _invert(ridge) or [[1.0 if i == j else 0.0 for j in range(k)]
                                           for i in range(k)]  # fmt: skip
        return self._inv

    def _assess(self, zs: list[float | None]) -> tuple[float, float, float]:
        if all(z is None for z in zs):
            return 1.0, 0.0, 0.0
        d = self._centred(zs)
        inv = self._inverse()
        k = len(d)
        dof = k + (k % 2)  # the closed form wants an even dof; one more is conservative
        d2 = sum(d[i] * sum(inv[i][j] * d[j] for j in range(k)) for i in range(k))
        af = self._af
        f = [(1.0 - af) * fo + af * di for fo, di in zip(self._fast, d, strict=True)]
        scale = af / (2.0 - af)
        f2 = sum(f[i] * sum(inv[i][j] * f[j] for j in range(k)) for i in range(k)) / scale
        c0, c1 = self._cal
        p0, p1 = chi2_sf_even(d2, dof), chi2_sf_even(f2, dof)
        p = min(1.0, 2.0 * min(c0.calibrate(p0), c1.calibrate(p1)))
        return p, max(d2, f2), p0

    def _learn(self, zs: list[float | None], raw: tuple[float, float, float]) -> None:
        if all(z is None for z in zs):
            return
        d = self._centred(zs)
        inv = self._inverse()
        k = len(d)
        dof = k + (k % 2)
        d2 = sum(d[i] * sum(inv[i][j] * d[j] for j in range(k)) for i in range(k))
        af = self._af
        self._fast = [(1.0 - af) * fo + af * di for fo, di in zip(self._fast, d, strict=True)]
        f2 = sum(self._fast[i] * sum(inv[i][j] * self._fast[j] for j in range(k))
                 for i in range(k)) / (af / (2.0 - af))  # fmt: skip
        self._cal[0].learn(chi2_sf_even(d2, dof))
        self._cal[1].learn(chi2_sf_even(f2, dof))
        a = max(1.0 / (self._n + 50.0), self._alpha)
        # an outlying step is shrunk to the distance of a usual one before it is learned
        w = 1.0 if d2 <= 4.0 * k else math.sqrt(4.0 * k / d2)
        dw = [v * w for v in d]
        self._mean = [m + a * v for m, v in zip(self._mean, dw, strict=True)]
        cov = self._cov
        for i in range(k):
            row = cov[i]
            for j in range(k):
                row[j] += a * (dw[i] * dw[j] - row[j])
        if self._n % 60 == 0:
            self._inv = None


class JointHST(_JointBase):
    """River ``HalfSpaceTrees`` on the normal-CDF-squashed z-vector; its score made a tail."""

    name: ClassVar[str] = "joint_hst"
    __slots__ = ("_hst", "_m", "_v", "_alpha")

    def __init__(
        self,
        *,
        series: str = "",
        features: Sequence[str] = TENANT_FEATURES,
        ratios: Sequence[str] = ("payment_failure_rate", "conversion_rate"),
        period_s: float = 60.0,
        grace: int | None = None,
        n_trees: int = 10,
        height: int = 6,
        window_size: int = 250,
        seed: int = 42,
        funnels: Sequence[Funnel] = FUNNELS,
    ) -> None:
        super().__init__(
            series=series, features=features, ratios=ratios, period_s=period_s, grace=grace,
            funnels=funnels,
        )  # fmt: skip
        limits = {f: (0.0, 1.0) for f in self._features}
        self._hst: Any = anomaly.HalfSpaceTrees(
            n_trees=n_trees, height=height, window_size=window_size, limits=limits, seed=seed
        )
        self._m = 0.0
        self._v = 0.0
        self._alpha = LN2 / max(1.0, self._spd)

    def _squash(self, zs: list[float | None]) -> dict[str, Any]:
        return {f: normal_sf(-z) for f, z in zip(self._features, zs, strict=True) if z is not None}

    def _assess(self, zs: list[float | None]) -> tuple[float, float, float]:
        feats = self._squash(zs)
        if not feats:
            return 1.0, 0.0, 0.0
        s = float(self._hst.score_one(feats))
        if self._n < 100 or self._v <= 0.0:
            return 1.0, 0.0, s
        z = (s - self._m) / math.sqrt(self._v)
        p = self._cal[0].calibrate(normal_sf(z))
        return p, z * z, s

    def _learn(self, zs: list[float | None], raw: tuple[float, float, float]) -> None:
        feats = self._squash(zs)
        if not feats:
            return
        s = raw[2]
        if self._n >= 100 and self._v > 0.0:
            self._cal[0].learn(normal_sf((s - self._m) / math.sqrt(self._v)))
        a = max(1.0 / (self._n + 1.0), self._alpha)
        d = s - self._m
        self._m += a * d
        self._v = (1.0 - a) * (self._v + a * d * d)
        self._hst.learn_one(feats)


JOINT_DETECTORS: Final[dict[str, type[_JointBase]]] = {
    JointShift.name: JointShift,
    JointHST.name: JointHST,
}


def build_joint_detector(
    tenant: str, *, detector: str = "joint", window: str = "1m", **options: Any
) -> _JointBase:
    """The joint detector of one tenant, series ``<tenant>|joint||<window>``.

    >>> build_joint_detector("acme").series
    'acme|joint||1m'
    """
    cls = JOINT_DETECTORS.get(detector)
    if cls is None:
        msg = f"unknown joint detector {detector!r}; known: {', '.join(JOINT_DETECTORS)}"
        raise ValueError(msg)
    try:
        return cls(series=f"{tenant}|joint||{window}", **options)
    except TypeError as e:
        msg = f"joint detector {detector!r}: {e}"
        raise ValueError(msg) from e
