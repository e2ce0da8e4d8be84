"""Sinks on their own, against the real services: Redis latest values, store writes, metrics."""

from __future__ import annotations

import json
import socket
import urllib.request
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis.asyncio as aioredis

from linkpulse.dataflows.instrumentation import SINK_FAILURES, start_metrics_server
from linkpulse.dataflows.redis_sink import RedisLatestSink
from linkpulse.dataflows.store_sink import PipelinedEventsSink, StoreSink
from linkpulse.errors import StoreError
from linkpulse.schemas import decode_event
from linkpulse.schemas.outputs import DeadLetter, MetricWindow
from linkpulse.store.migrate import migrate
from linkpulse.store.writer import EventWriter
from tests.fix_redis import REDIS_URL
from tests.test_dataflow_helpers import event

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def window(start: datetime, value: float, revision: int = 0) -> MetricWindow:
    return MetricWindow(
        metric="orders",
        tenant="acme",
        dims_key="",
        dimensions={},
        window="1m",
        window_start=start,
        window_end=start + timedelta(minutes=1),
        value=value,
        count=int(value),
        revision=revision,
        final=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_redis_sink_keeps_the_newest_window_per_series_with_a_ttl(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    sink = RedisLatestSink(REDIS_URL, key_prefix=redis_prefix, ttl_s=60)
    part = sink.build("redis", 0, 1)
    part.write_batch([window(T0, 1.0), window(T0 + timedelta(minutes=1), 2.0), window(T0, 9.0, 1)])
    part.close()
    raw = await redis_client.get(sink.key_for("acme|orders||1m"))
    assert json.loads(raw)["value"] == 2.0  # the later window wins over a revision of an older one
    assert 0 < await redis_client.ttl(sink.key_for("acme|orders||1m")) <= 60


def test_redis_down_is_counted_and_skipped_not_raised() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    part = RedisLatestSink(url, retry_after_s=30).build("redis", 0, 1)
    before = SINK_FAILURES.labels("redis")._value.get()
    part.write_batch([window(T0, 1.0)])  # must not raise
    part.write_batch([window(T0, 2.0)])  # skipped at once: Redis is known to be down
    assert SINK_FAILURES.labels("redis")._value.get() == before + 2


def test_pipelined_events_are_durable_at_snapshot_and_idempotent(pg_dsn: str) -> None:
    migrate(pg_dsn)
    evs = [
        decode_event(json.dumps(event(i, T0, "acme", "order_placed", "s1", 2.0)).encode())
        for i in range(3000)
    ]
    sink = PipelinedEventsSink(pg_dsn, ["p"])
    part = sink.build_part("events", "p", None)
    for i in range(0, 3000, 500):
        part.write_batch([evs[i : i + 500]])
    part.snapshot()  # returns only once everything queued is written
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (3000,)
    part.write_batch([evs[:1000]])  # a replay after a crash
    part.close()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (3000,)


def test_pipelined_write_failure_surfaces_as_store_error(pg_dsn: str) -> None:
    # No migration: the events table does not exist, every write fails.
    part = PipelinedEventsSink(pg_dsn, ["p"]).build_part("events", "p", None)
    ev = decode_event(json.dumps(event(1, T0, "acme", "order_placed", "s1", 2.0)).encode())
    part.write_batch([[ev]])
    with pytest.raises(StoreError, match="events"):
        part.snapshot()


def test_dead_letters_are_stored_once_even_when_replayed(pg_dsn: str) -> None:
    migrate(pg_dsn)
    letter = DeadLetter(
        payload="{oops",
        field="$",
        problem="malformed JSON",
        source="nats",
        received_at=T0,
        subject="lp.events.acme.order_placed",
        sequence=42,
    )
    part = StoreSink(pg_dsn, "dead_letters").build("dl", 0, 1)
    part.write_batch([[letter]])
    part.write_batch([[letter]])  # replayed
    part.close()
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT reason, sequence FROM dead_letters").fetchall()
    assert rows == [("$: malformed JSON", 42)]


def test_prometheus_endpoint_serves_the_dataflow_metrics() -> None:
    port = start_metrics_server(free_port(), addr="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    for name in (
        "linkpulse_dataflow_events_in",
        "linkpulse_dataflow_dead_letters",
        "linkpulse_dataflow_late_events",
        "linkpulse_dataflow_consumer_lag",
        "linkpulse_dataflow_watermark_delay_seconds",
        "linkpulse_dataflow_sink_seconds",
        "linkpulse_dataflow_source_batch_size",
    ):
        assert name in body


def test_pipelined_sink_stores_the_rows_write_events_stores(pg_dsn: str) -> None:
    # The sink sends canonical JSON (EventWriter.write_event_json): the stored
    # rows must be those of the row path, column for column.
    migrate(pg_dsn)
    evs = [
        decode_event(json.dumps(event(i, T0, "acme", "order_placed", "s\\1", 0.1 * i)).encode())
        for i in range(50)
    ]
    evs.append(
        decode_event(
            json.dumps(
                {
                    "type": "page_view",
                    "event_id": "pv-1",
                    "event_time": "2026-11-24T11:00:00.123456+02:00",
                    "tenant": "acme",
                    "properties": {"page": "home", "q": 'tab\t "ü" \\ 𝄞'},
                }
            ).encode()
        )
    )
    rows_sql = "SELECT (to_jsonb(e) - 'ingested_at')::text FROM events e ORDER BY event_id"
    part = PipelinedEventsSink(pg_dsn, ["p"]).build_part("events", "p", None)
    part.write_batch([evs])
    part.snapshot()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        by_sink = conn.execute(rows_sql).fetchall()
        conn.execute("TRUNCATE events")
        with EventWriter(pg_dsn) as w:
            assert w.write_events(evs) == len(evs)
        assert conn.execute(rows_sql).fetchall() == by_sink
    part.close()
    assert len(by_sink) == len(evs)


def test_settings_reach_the_sinks_only_through_build_flow() -> None:
    """No sink reads the environment behind the flow's back (issue 10 §3)."""
    import pathlib

    from linkpulse.config import Settings
    from linkpulse.dataflows import store_sink

    assert Settings().store_outage_s == store_sink.DEFAULT_OUTAGE_S
    root = pathlib.Path(store_sink.__file__).parent
    readers = sorted(
        p.name for p in root.glob("*.py") if "get_settings()" in p.read_text(encoding="utf-8")
    )
    # Only the module-level `flow` of `python -m bytewax.run ...:flow` builds settings.
    assert readers == ["live_metrics.py"]
