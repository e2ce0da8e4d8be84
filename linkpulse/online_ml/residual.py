"""Forecast residual: River's time-series forecaster, residuals on a running robust scale.

River's ``anomaly.PredictiveAnomalyDetection`` wraps a forecaster (here
``time_series.HoltWinters`` with a daily season, or ``SNARIMAX``) and learns
it; its own ``score_one`` updates its error statistics while scoring and
squashes the squared error linearly, so this detector reads the forecast
from it and normalises the residual itself: by an exponentially weighted
mean absolute residual (winsorised, so an anomaly does not widen it), then a
normal tail and the ``Calibrator``, like every other detector.

>>> from datetime import UTC, datetime, timedelta
>>> import random; rng = random.Random(2)
>>> det = ForecastResidual(series="acme|orders||1m", season=60, grace=200)
>>> t0 = datetime(2026, 11, 16, tzinfo=UTC)
>>> for i in range(600):
...     _ = det.update(t0 + timedelta(minutes=i), 100.0 + 10 * (i % 60 < 30) + rng.gauss(0, 2))
>>> det.update(t0 + timedelta(minutes=600), 160.0).score > 0.99
True
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from river import anomaly as _anomaly
from river import time_series as _time_series

from linkpulse.online_ml.core import Calibrator, ScalarDetector, Verdict
from linkpulse.online_ml.profile import MAD_TO_SIGMA
from linkpulse.online_ml.stats import normal_sf

# River's classes are untyped: reach them through Any so mypy strict accepts the calls.
anomaly: Any = _anomaly
time_series: Any = _time_series


class ForecastResidual(ScalarDetector):
    """Residual of a River forecaster's one-step forecast, robustly scaled and calibrated.

    ``model`` is ``"holtwinters"`` (additive, season ``season`` steps,
    default one day) or ``"snarimax"`` (``p``/``d``/``q`` small, seasonal
    part of period ``season``). ``gap_value`` as for the seasonal baseline.
    """

    name: ClassVar[str] = "forecast"
    __slots__ = ("_pad", "_mad", "_mad_n", "_gap_value", "_cal", "_band", "_alpha", "_last")

    def __init__(
        self,
        *,
        series: str = "",
        period_s: float = 60.0,
        grace: int | None = None,
        percent: bool = False,
        model: str = "holtwinters",
        season: int | None = None,
        gap_value: float | None = 0.0,
        band_sigmas: float = 3.0,
        scale_half_life_days: float = 2.0,
    ) -> None:
        super().__init__(series=series, period_s=period_s, grace=grace, percent=percent)
        m = int(self.steps_per_day) if season is None else int(season)
        if m < 2:
            msg = f"season must be >= 2 steps, got {season!r}"
            raise ValueError(msg)
        forecaster: Any
        if model == "holtwinters":
            forecaster = time_series.HoltWinters(alpha=0.1, beta=0.001, gamma=0.2, seasonality=m)
        elif model == "snarimax":
            forecaster = time_series.SNARIMAX(p=2, d=0, q=1, m=m, sp=1)
        else:
            msg = f"model must be 'holtwinters' or 'snarimax', got {model!r}"
            raise ValueError(msg)
        self._pad: Any = anomaly.PredictiveAnomalyDetection(forecaster, horizon=1, warmup_period=m)
        self._mad = 0.0
        self._mad_n = 0
        self._gap_value = gap_value
        self._cal = Calibrator()
        self._band = band_sigmas
        self._alpha = math.log(2.0) / max(1.0, scale_half_life_days * self.steps_per_day)
        self._last: float | None = None

    def _forecast(self) -> float | None:
        if self._pad.iter < self._pad.warmup_period:
            return self._last  # the forecaster has no season yet: persistence
        try:
            y = float(self._pad.predictive_model.forecast(horizon=1)[0])
        except (ZeroDivisionError, ValueError, IndexError, OverflowError):
            return self._last
        return y if math.isfinite(y) else self._last

    def _value(self, x: float | None) -> float | None:
        return self._gap_value if x is None else x

    def assess(self, ts: float, x: float | None) -> Verdict:
        mu = self._forecast()
        v = self._value(x)
        if mu is None:
            return Verdict(1.0, "none", None, None, None, None, "residual", self.name)
        s = max(self._mad * MAD_TO_SIGMA, 1e-9 * max(1.0, abs(mu)))
        lower, upper = mu - self._band * s, mu + self._band * s
        if v is None or self._mad_n < 10:
            return Verdict(1.0, "none", mu, lower, upper, None, "residual", self.name)
        z = (v - mu) / s
        p = self._cal.calibrate(min(1.0, 2.0 * normal_sf(abs(z))))
        return Verdict(p, "up" if z > 0 else "down", mu, lower, upper, z, "residual", self.name)

    def learn(self, ts: float, x: float | None, verdict: Verdict) -> None:
        v = self._value(x)
        if v is None:
            return
        # Huge values would overflow the forecaster's sums: clip to a range it can carry.
        v = max(-1e12, min(1e12, v))
        mu = verdict.expected
        if mu is not None:
            err = abs(v - mu)
            if self._mad_n > 30:
                err = min(err, 4.0 * self._mad * MAD_TO_SIGMA)
            a = max(1.0 / (self._mad_n + 1.0), self._alpha)
            self._mad += a * (err - self._mad)
            self._mad_n += 1
            if self._mad_n > 10 and verdict.sigmas is not None:
                self._cal.learn(min(1.0, 2.0 * normal_sf(abs(verdict.sigmas))))
        self._pad.learn_one(None, float(v))
        self._last = v
