"""Output types shared by the dataflow, the store, NATS subjects and the API.

``MetricWindow`` is one window's aggregate of one metric for one series;
``DeadLetter`` is one input that could not be used, with the reason;
``AnomalyScore`` is one detector's verdict on one step of one series (see
``docs/anomaly-detection.md``); ``Forecast`` is one series' forecast from one time on.

>>> from datetime import UTC, datetime
>>> w = MetricWindow(metric="orders", tenant="acme", dims_key="", dimensions={}, window="1m",
...     window_start=datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
...     window_end=datetime(2026, 11, 24, 10, 1, tzinfo=UTC), value=3.0, count=3, sum=3.0)
>>> w.series_key
'acme|orders||1m'
"""

from __future__ import annotations

from datetime import datetime

import msgspec


class MetricWindow(msgspec.Struct, frozen=True, kw_only=True):
    """The aggregate of one metric over one window for one series.

    A series is (tenant, metric, dimensions, window); ``dims_key`` is the
    canonical text of ``dimensions`` (``"seller_id=s1"``, keys sorted, ``""``
    for none) so it can be part of a primary key. ``window`` names the window
    spec: ``"1m"``, ``"5m"``, ``"15m"``, ``"1h"`` tumbling, ``"5m/10s"``,
    ``"15m/10s"`` sliding (size/step). ``value`` is the metric's headline
    number (a count, a sum, a rate); the other fields are the accumulators.
    ``revision`` starts at 0 and grows each time the window is republished
    (late data); ``final`` is true once the watermark passed ``window_end``.
    """

    metric: str
    tenant: str
    dims_key: str
    dimensions: dict[str, str]
    window: str
    window_start: datetime
    window_end: datetime
    value: float | None
    count: int = 0
    sum: float = 0.0
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    distinct: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    revision: int = 0
    final: bool = False

    @property
    def series_key(self) -> str:
        """A stable string naming the series (used for Redis keys and routing)."""
        return f"{self.tenant}|{self.metric}|{self.dims_key}|{self.window}"


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """An input that could not be used: the original bytes and why.

    ``payload`` is the original message as text (undecodable bytes replaced);
    ``field`` and ``problem`` come from the validation error; ``source`` says
    where it came from (``"http"``, ``"nats"``, a subject) and ``sequence`` its
    JetStream stream sequence when it has one.
    """

    payload: str
    field: str
    problem: str
    source: str
    received_at: datetime
    subject: str | None = None
    sequence: int | None = None

    @property
    def reason(self) -> str:
        """``field: problem``, the one-line reason shown to users."""
        return f"{self.field}: {self.problem}"


class Contributor(msgspec.Struct, frozen=True, kw_only=True):
    """One dimension value's part in a tenant-level deviation (root cause).

    ``delta`` is its own actual minus expected; ``share`` the fraction of the
    tenant's deviation it accounts for (same sign as the deviation: > 0).
    """

    dimension: str
    value: str
    delta: float
    share: float
    expected: float | None = None
    actual: float | None = None


class Explanation(msgspec.Struct, frozen=True, kw_only=True):
    """Why a score is what it is, structured (the sentence is ``AnomalyScore.explanation``).

    ``detector`` names the member that drove the score (``"seasonal"``,
    ``"poisson"``, ``"silence"``, ...), ``feature`` what it looked at
    (``"value"``, ``"recent_mean"``, ``"gap"``, ``"range"``, a metric name for
    joint detectors); ``sigmas`` is the deviation in robust sigmas (signed),
    ``slot`` the seasonal slot compared with (``"Tue 14:00"``), ``novel`` true
    when the value lies outside everything the series has shown, ``gap_steps``
    the length of the current run of empty steps, ``contributors`` the top
    dimension values when a root cause was ranked.
    """

    detector: str
    feature: str = "value"
    sigmas: float | None = None
    slot: str | None = None
    novel: bool = False
    gap_steps: int = 0
    p_value: float | None = None
    contributors: list[Contributor] = []


class AnomalyScore(msgspec.Struct, frozen=True, kw_only=True):
    """One detector's score for one step of one series.

    ``score`` is in [0, 1] and calibrated the same way on every series: it is
    the probability that a normal day of this series (``steps_per_day``
    steps) shows nothing as rare, so ``1 - score`` is the chance of a false
    page per series per day at threshold ``score`` (0.99: about one in 100
    days). ``raw`` is the detector's own surprise (``-log10`` of its tail
    probability, unbounded). ``expected``/``lower``/``upper`` give the usual
    value and its band (None when the detector has none); ``direction`` is
    ``"up"``, ``"down"`` or ``"none"``; ``warm`` is false until the series has
    enough history to page on (the score is then 0). ``value`` is the observed
    value (None for an empty step). ``revision`` mirrors the window's revision.
    """

    series: str
    time: datetime
    score: float
    raw: float
    value: float | None
    expected: float | None
    lower: float | None
    upper: float | None
    direction: str
    warm: bool
    model: str
    explanation: str
    details: Explanation
    revision: int = 0


class ForecastPoint(msgspec.Struct, frozen=True, kw_only=True):
    """One forecast step: the window starting at ``time`` and its 80% / 95% intervals."""

    time: datetime
    mean: float
    lower80: float
    upper80: float
    lower95: float
    upper95: float


class Forecast(msgspec.Struct, frozen=True, kw_only=True):
    """A series' forecast issued at ``issued_at``: ``points`` at ``step`` (``"1m"``/``"1h"``)."""

    series: str
    model: str
    issued_at: datetime
    step: str
    points: list[ForecastPoint]
