"""Bytewax sink keeping the latest value of every live series in Redis.

One key per series, ``{key_prefix}latest:{series_key}``, holding the JSON of
the newest ``MetricWindow`` of that series, with a TTL so idle series vanish.
Dashboards read these for their first paint, then follow NATS/SSE. The same
sink with ``kind="score"`` keeps the newest ``AnomalyScore`` of each series at
``{key_prefix}score:{series}`` (newest by time, then revision).

Redis is a cache here: when it is down the flow goes on. A failed write is
counted (``linkpulse_dataflow_sink_failures{sink="redis"}``) and skipped, and
the sink stops trying for ``retry_after_s`` so a dead Redis costs no time per
batch; the next update of each series overwrites whatever was missed.

>>> RedisLatestSink("redis://127.0.0.1:6379/0", key_prefix="lp:").key_for("acme|orders||1m")
'lp:latest:acme|orders||1m'
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, TypeVar

import msgspec
import redis
import redis.exceptions
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from linkpulse.dataflows.instrumentation import SINK_FAILURES, timed_sink
from linkpulse.logging import get_logger
from linkpulse.schemas.outputs import AnomalyScore, MetricWindow

__all__ = ["RedisLatestSink", "latest_per_series"]

log = get_logger(__name__)
_encoder = msgspec.json.Encoder()
T = TypeVar("T", MetricWindow, AnomalyScore)


def _order(item: MetricWindow | AnomalyScore) -> tuple[datetime, int]:
    if isinstance(item, MetricWindow):
        return item.window_start, item.revision
    return item.time, item.revision


def _key(item: MetricWindow | AnomalyScore) -> str:
    return item.series_key if isinstance(item, MetricWindow) else item.series


def latest_per_series(windows: Sequence[T]) -> dict[str, T]:
    """The newest window of each series in a batch (later start, then later revision).

    >>> from datetime import UTC, datetime, timedelta
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> def w(start, rev):
    ...     return MetricWindow(metric="m", tenant="a", dims_key="", dimensions={}, window="1m",
    ...         window_start=start, window_end=start + timedelta(minutes=1), value=1.0,
    ...         revision=rev)
    >>> got = latest_per_series([w(t, 0), w(t + timedelta(minutes=1), 0), w(t, 3)])
    >>> got["a|m||1m"].window_start == t + timedelta(minutes=1)
    True
    """
    out: dict[str, T] = {}
    for w in windows:
        key = _key(w)
        old = out.get(key)
        if old is None or _order(w) >= _order(old):
            out[key] = w
    return out


class _RedisPartition(StatelessSinkPartition[Any]):
    def __init__(self, url: str, key_prefix: str, ttl_s: int, retry_after_s: float) -> None:
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=0.5, socket_timeout=0.5, health_check_interval=10
        )
        self._prefix = key_prefix
        self._ttl_s = ttl_s
        self._retry_after_s = retry_after_s
        self._down_until = 0.0

    def write_batch(self, items: list[Any]) -> None:
        if not items:
            return
        if time.monotonic() < self._down_until:
            SINK_FAILURES.labels("redis").inc()
            return
        latest = latest_per_series(items)
        try:
            with timed_sink("redis", len(latest)):
                pipe = self._client.pipeline(transaction=False)
                for key, item in latest.items():
                    pipe.set(f"{self._prefix}{key}", _encoder.encode(item), ex=self._ttl_s)
                pipe.execute()
        except redis.exceptions.RedisError as e:
            SINK_FAILURES.labels("redis").inc()
            self._down_until = time.monotonic() + self._retry_after_s
            log.warning("redis write skipped", error=repr(e), series=len(latest))

    def close(self) -> None:
        self._client.close()


class RedisLatestSink(DynamicSink[Any]):
    """The newest window (or score) per series into Redis, with a TTL; never stops the flow."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "linkpulse:",
        ttl_s: int = 2 * 3600,
        retry_after_s: float = 1.0,
        kind: Literal["latest", "score"] = "latest",
    ) -> None:
        if ttl_s <= 0:
            msg = f"ttl_s must be a positive number of seconds, got {ttl_s}"
            raise ValueError(msg)
        if kind not in ("latest", "score"):
            msg = f"kind must be 'latest' (windows) or 'score' (anomaly scores), got {kind!r}"
            raise ValueError(msg)
        self._url = url
        self._prefix = f"{key_prefix}{kind}:"
        self._ttl_s = ttl_s
        self._retry_after_s = retry_after_s

    def key_for(self, series_key: str) -> str:
        """The Redis key holding the latest window (or score) of a series."""
        return f"{self._prefix}{series_key}"

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Any]:
        return _RedisPartition(self._url, self._prefix, self._ttl_s, self._retry_after_s)
