"""The ensemble: several calibrated detectors of one series combined into one score.

Each member's verdict is already calibrated (see ``core.Calibrator``); the
ensemble takes the smallest probability times the number of members
(Bonferroni, so adding a member never raises the false-page rate), and
explains with the member that drove it. The band comes from the first
member that has one (the value model), whoever drove the score.

>>> from datetime import UTC, datetime, timedelta
>>> from linkpulse.online_ml.seasonal import SeasonalBaseline
>>> from linkpulse.online_ml.silence import SilentStream
>>> ens = Ensemble([SeasonalBaseline(grace=0, gap_value=None), SilentStream(grace=0)],
...                series="acme|order_value||1m", grace=120)
>>> t0 = datetime(2026, 11, 16, tzinfo=UTC)
>>> for i in range(600):
...     _ = ens.update(t0 + timedelta(minutes=i), 500.0 + (i % 7))
>>> [(s.details.detector, round(s.score, 2)) for s in
...  [ens.update(t0 + timedelta(minutes=600 + k), None) for k in range(3)]]
[('silence', 0.0), ('silence', 0.0), ('silence', 0.39)]
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar

from linkpulse.online_ml.base import clean, to_seconds
from linkpulse.online_ml.core import ScalarDetector, Verdict
from linkpulse.schemas.outputs import AnomalyScore


class Ensemble(ScalarDetector):
    """Bonferroni-combined calibrated members; see the module docstring."""

    name: ClassVar[str] = "ensemble"
    __slots__ = ("_members",)

    def __init__(
        self,
        members: Sequence[ScalarDetector],
        *,
        series: str = "",
        period_s: float = 60.0,
        grace: int | None = None,
        percent: bool = False,
    ) -> None:
        super().__init__(series=series, period_s=period_s, grace=grace, percent=percent)
        if not members:
            msg = "an ensemble needs at least one member detector"
            raise ValueError(msg)
        self._members = tuple(members)
        for m in self._members:
            m.series = series

    @property
    def members(self) -> tuple[ScalarDetector, ...]:
        return self._members

    def assess(self, ts: float, x: float | None) -> Verdict:
        trials = self._trials
        verdicts = []
        for m in self._members:
            m._trials = trials
            verdicts.append(m._verdict(ts, x))
        return self._combine(verdicts)

    def _combine(self, verdicts: list[Verdict]) -> Verdict:
        """The ensemble's verdict of its members' (in member order)."""
        best = verdicts[0]
        band = best if best.expected is not None else None
        gap = best.gap_steps if best.gap_steps > 0 else 0
        for v in verdicts[1:]:
            if v.gap_steps > gap:
                gap = v.gap_steps
            if v.p < best.p:
                best = v
            if band is None and v.expected is not None:
                band = v
        if band is None:
            band = best
        p = len(verdicts) * best.p
        return Verdict(
            p if p < 1.0 else 1.0,
            best.direction,
            band.expected,
            band.lower,
            band.upper,
            best.sigmas if best.sigmas is not None else band.sigmas,
            best.feature,
            best.detector,
            best.novel or band.novel,
            gap,
        )

    def learn(self, ts: float, x: float | None, verdict: Verdict) -> None:
        for m in self._members:
            m._trials = self._trials
            m.learn(ts, x, m._verdict(ts, x))
            m._n += 1
            m._cache = None

    def update(self, t: datetime, x: float | None, n: float | None = None) -> AnomalyScore:
        """``score_one`` then ``learn_one``, each member assessed once (the flow's hot path).

        The same as the base class's, without the members' verdict caches: unless
        ``score_one`` of this very step came first (then the caches hold the verdicts),
        each member's ``assess`` result goes straight to its ``learn``.
        """
        ts = to_seconds(t)
        xc = clean(x)
        trials = self._trials = clean(n)
        c = self._cache
        cached = c is not None and c[0] == ts and c[1] == xc and c[2] == trials
        verdicts = []
        for m in self._members:
            m._trials = trials
            verdicts.append(m._verdict(ts, xc) if cached else m.assess(ts, xc))
        v = c[3] if c is not None and cached else self._combine(verdicts)
        score = self.to_score(t, ts, xc, v)
        for m, mv in zip(self._members, verdicts, strict=True):
            m.learn(ts, xc, mv)
            m._n += 1
            m._cache = None
        self._n += 1
        self._cache = None
        return score
