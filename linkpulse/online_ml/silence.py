"""Silent stream (dead man's switch): a series that normally has data and has none.

A window exists only if an event contributed to it, so the flow tells the
detector about each empty step with ``x=None`` (and, for counts and sums,
a 0 is empty too). Per hour of day the detector learns how often a step has
data (``presence``, exponentially weighted, with a prior that keeps it below
1); a run of empty steps has probability the product of ``1 - presence``
over the run. A series that always has data pages on its second or
third empty minute; one present half the time needs some twenty.

>>> from datetime import UTC, datetime, timedelta
>>> det = SilentStream(series="acme|gmv||1h", period_s=3600, grace=24)
>>> t0 = datetime(2026, 11, 16, tzinfo=UTC)
>>> for i in range(24 * 28):
...     _ = det.update(t0 + timedelta(hours=i), 100.0)
>>> [round(det.update(t0 + timedelta(hours=24 * 28 + k), None).score, 3) for k in range(3)]
[0.124, 0.688, 0.914]
"""

from __future__ import annotations

import math
from typing import ClassVar, Final

from linkpulse.online_ml.core import ScalarDetector, Verdict
from linkpulse.online_ml.profile import LN2, slot_of


class SilentStream(ScalarDetector):
    """Probability of the current run of empty steps given the hour's usual presence."""

    name: ClassVar[str] = "silence"
    __slots__ = ("_hits", "_misses", "_keep", "_run_log", "_run", "_zero_is_empty")

    def __init__(
        self,
        *,
        series: str = "",
        period_s: float = 60.0,
        grace: int | None = None,
        percent: bool = False,
        zero_is_empty: bool = True,
        half_life_days: float = 7.0,
    ) -> None:
        super().__init__(series=series, period_s=period_s, grace=grace, percent=percent)
        # per hour of day: exponentially weighted counts of steps with and without data
        self._hits = [0.0] * 24
        self._misses = [0.0] * 24
        self._keep = 1.0 - LN2 / max(1.0, half_life_days * self.steps_per_day / 24.0)
        self._run_log = 0.0  # log P(the current run of empty steps)
        self._run = 0
        self._zero_is_empty = zero_is_empty

    def _empty(self, x: float | None) -> bool:
        return x is None or (self._zero_is_empty and x == 0.0)

    def _log_next_absent(self, ts: float) -> float:
        """log P(this step is empty | the run so far), Beta(1 + hits, 1 + misses) predictive.

        The posterior predictive of a run (a Polya urn) is less extreme than
        ``(1 - presence) ** run``: a presence estimated from a few days cannot
        claim more certainty than those days give.
        """
        _, i, f = slot_of(ts)
        j = (i + 1) % 24
        a = 1.0 + self._hits[i] * (1.0 - f) + self._hits[j] * f
        b = 1.0 + self._misses[i] * (1.0 - f) + self._misses[j] * f
        k = self._run
        return math.log((b + k) / (a + b + k))

    def assess(self, ts: float, x: float | None) -> Verdict:
        if not (x is None or (self._zero_is_empty and x == 0.0)):  # not self._empty(x)
            return _PRESENT
        step = self._log_next_absent(ts)
        log_p = self._run_log + step
        run = self._run + 1
        return Verdict(
            math.exp(log_p), "down", None, None, None, None, "gap", self.name, False, run, (step,)
        )

    def learn(self, ts: float, x: float | None, verdict: Verdict) -> None:
        empty = x is None or (self._zero_is_empty and x == 0.0)
        if empty:
            raw = verdict.raw
            # assess's log P of this empty step (nothing learned since), else afresh
            self._run_log += raw[0] if raw is not None else self._log_next_absent(ts)
            self._run += 1
        else:
            self._run_log = 0.0
            self._run = 0
        _, i, f = slot_of(ts)
        # both hour slots written out (every series learns once a step); a slot decays as
        # much as it is updated
        hits, misses = self._hits, self._misses
        rate = 1.0 - self._keep
        wi = 1.0 - f
        if wi > 0.0:
            d = 1.0 - rate * wi
            hits[i] = hits[i] * d + (0.0 if empty else wi)
            misses[i] = misses[i] * d + (wi if empty else 0.0)
        if f > 0.0:
            j = (i + 1) % 24
            d = 1.0 - rate * f
            hits[j] = hits[j] * d + (0.0 if empty else f)
            misses[j] = misses[j] * d + (f if empty else 0.0)


_PRESENT: Final = Verdict(1.0, "none", None, None, None, None, "gap", SilentStream.name)
"""The verdict on a step with data (nothing silent about it)."""
