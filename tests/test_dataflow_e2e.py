"""End to end on the real services: NATS in; PostgreSQL, Redis and NATS out."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import msgspec
import psycopg
import pytest
import redis.asyncio as aioredis
from bytewax.testing import cluster_main, run_main
from nats.aio.client import Client

from linkpulse.bus.stream import dead_letter_stream_name
from linkpulse.config import Settings
from linkpulse.dataflows.live_metrics import FlowOptions, build_flow
from linkpulse.schemas.outputs import DeadLetter, MetricWindow
from linkpulse.store.migrate import migrate
from tests.test_dataflow_helpers import (
    TEST_METRICS,
    build_event_set,
    group_by_minute,
    publish_set,
    windows_table,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("workers", [1, 2])
async def test_end_to_end_exact_store_windows_dead_letters_and_live_outputs(
    workers: int,
    nc: Client,
    nats_settings: Settings,
    pg_dsn: str,
    redis_client: aioredis.Redis,
    redis_prefix: str,
) -> None:
    migrate(pg_dsn)
    settings = nats_settings.model_copy(update={"database_url": pg_dsn})
    events = build_event_set(settings.subject_prefix, n=3000)
    last_seq = await publish_set(nc, settings, events)

    updates: list[MetricWindow] = []

    async def on_update(msg: object) -> None:
        updates.append(msgspec.json.decode(msg.data, type=MetricWindow))  # type: ignore[attr-defined]

    await nc.subscribe(f"{settings.subject_prefix}.metrics.>", cb=on_update)
    opts = FlowOptions(metrics=TEST_METRICS, stop_at_seq=last_seq, redis_key_prefix=redis_prefix)
    flow = build_flow(settings, opts)
    if workers == 1:
        await asyncio.to_thread(run_main, flow)
    else:
        await asyncio.to_thread(cluster_main, flow, [], 0, worker_count_per_proc=workers)
    await nc.flush()
    await asyncio.sleep(0.3)

    with psycopg.connect(pg_dsn) as conn:
        ids = [r[0] for r in conn.execute("SELECT event_id FROM events").fetchall()]
        letters = conn.execute(
            "SELECT payload, field, problem, reason, subject, sequence FROM dead_letters"
        ).fetchall()
    # every valid event exactly once (duplicates were published too)
    assert sorted(ids) == sorted(events.valid)
    # every bad message is a dead letter with its reason, subject and sequence
    assert sorted(r[0] for r in letters) == sorted(b.decode() for b in events.bad)
    assert all(r[3] and r[4].endswith(".t9.order_placed") and r[5] > 0 for r in letters)

    # ... and on the durable dead-letter stream, one message per bad input
    dlq = dead_letter_stream_name(settings)
    info = await nc.jetstream().stream_info(dlq)
    assert info.state.messages == len(events.bad)
    first = await nc.jetstream().get_msg(dlq, info.state.first_seq)
    letter = msgspec.json.decode(first.data, type=DeadLetter)
    assert letter.problem and letter.sequence and letter.subject

    # every final 1-minute window equals a GROUP BY over the raw events
    table = windows_table(pg_dsn)
    truth = group_by_minute(pg_dsn)
    finals = {k: v for k, v in table.items() if k[3] == "1m" and k[2] == "" and v[4]}
    checked = 0
    for (tenant, metric, _, _, start), (count, total, value, _rev, _final) in finals.items():
        if metric not in ("orders", "gmv"):
            continue
        want_count, want_sum = truth[(tenant, metric, start)]
        assert count == want_count, (tenant, metric, start)
        if metric == "gmv":
            assert total == pytest.approx(want_sum, rel=1e-9, abs=1e-6)
        assert value == pytest.approx(want_count if metric == "orders" else want_sum)
        checked += 1
    assert checked >= 3 * 2 * 3  # 3 tenants x 2 metrics x at least 3 closed minutes

    # the late events revised their (already final) minute: revision 1, corrected values
    late_minute = [k for k in finals if k[0] == "t0" and k[1] == "orders" and finals[k][3] > 0]
    assert late_minute, "the late events should have produced a revision"
    revised = [u for u in updates if u.revision > 0 and u.metric == "orders" and u.tenant == "t0"]
    assert any(u.window == "1m" and u.dims_key == "" for u in revised)  # published on NATS
    # Redis holds the latest window of live series for the first paint
    keys = [k async for k in redis_client.scan_iter(match=f"{redis_prefix}latest:*")]
    assert any(b"t0|orders||1m" in k for k in keys)
    raw = await redis_client.get(f"{redis_prefix}latest:t0|orders||1m")
    latest = json.loads(raw)
    assert datetime.fromisoformat(latest["window_start"]) <= datetime.now(UTC)
    assert await redis_client.ttl(f"{redis_prefix}latest:t0|orders||1m") > 0
