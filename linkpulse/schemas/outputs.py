"""Output types shared by the dataflow, the store, NATS subjects and the API.

``MetricWindow`` is one window's aggregate of one metric for one series;
``DeadLetter`` is one input that could not be used, with the reason.

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
