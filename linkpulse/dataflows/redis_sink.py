"""Bytewax sink keeping the latest value of every live series in Redis.

One key per series, ``{key_prefix}latest:{series_key}``, holding the JSON of
the newest ``MetricWindow`` of that series, with a TTL so idle series vanish.
Dashboards read these for their first paint, then follow NATS/SSE.

Redis is a cache here: when it is down the flow goes on. A failed write is
counted (``linkpulse_dataflow_sink_failures{sink="redis"}``) and skipped, and
the sink stops trying for ``retry_after_s`` so a dead Redis costs no time per
batch; the next update of each series overwrites whatever was missed.

>>> RedisLatestSink("redis://127.0.0.1:6379/0", key_prefix="lp:").key_for("acme|orders||1m")
'lp:latest:acme|orders||1m'
"""

from __future__ import annotations

import time

import msgspec
import redis
import redis.exceptions
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from linkpulse.dataflows.instrumentation import SINK_FAILURES, timed_sink
from linkpulse.logging import get_logger
from linkpulse.schemas.outputs import MetricWindow

__all__ = ["RedisLatestSink", "latest_per_series"]

log = get_logger(__name__)
_encoder = msgspec.json.Encoder()


def latest_per_series(windows: list[MetricWindow]) -> dict[str, MetricWindow]:
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
    out: dict[str, MetricWindow] = {}
    for w in windows:
        key = w.series_key
        old = out.get(key)
        if old is None or (w.window_start, w.revision) >= (old.window_start, old.revision):
            out[key] = w
    return out


class _RedisPartition(StatelessSinkPartition[MetricWindow]):
    def __init__(self, url: str, key_prefix: str, ttl_s: int, retry_after_s: float) -> None:
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=0.5, socket_timeout=0.5, health_check_interval=10
        )
        self._prefix = key_prefix
        self._ttl_s = ttl_s
        self._retry_after_s = retry_after_s
        self._down_until = 0.0

    def write_batch(self, items: list[MetricWindow]) -> None:
        if not items:
            return
        if time.monotonic() < self._down_until:
            SINK_FAILURES.labels("redis").inc()
            return
        latest = latest_per_series(items)
        try:
            with timed_sink("redis", len(latest)):
                pipe = self._client.pipeline(transaction=False)
                for key, window in latest.items():
                    pipe.set(f"{self._prefix}latest:{key}", _encoder.encode(window), ex=self._ttl_s)
                pipe.execute()
        except redis.exceptions.RedisError as e:
            SINK_FAILURES.labels("redis").inc()
            self._down_until = time.monotonic() + self._retry_after_s
            log.warning("redis write skipped", error=repr(e), series=len(latest))

    def close(self) -> None:
        self._client.close()


class RedisLatestSink(DynamicSink[MetricWindow]):
    """The newest window per series into Redis, with a TTL; never stops the flow."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "linkpulse:",
        ttl_s: int = 2 * 3600,
        retry_after_s: float = 1.0,
    ) -> None:
        if ttl_s <= 0:
            msg = f"ttl_s must be a positive number of seconds, got {ttl_s}"
            raise ValueError(msg)
        self._url = url
        self._prefix = key_prefix
        self._ttl_s = ttl_s
        self._retry_after_s = retry_after_s

    def key_for(self, series_key: str) -> str:
        """The Redis key holding the latest window of a series."""
        return f"{self._prefix}latest:{series_key}"

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[MetricWindow]:
        return _RedisPartition(self._url, self._prefix, self._ttl_s, self._retry_after_s)
