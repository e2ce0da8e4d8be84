"""One worker and two workers compute the same windows (and store the same events)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from bytewax.testing import cluster_main, run_main
from nats.aio.client import Client

from linkpulse.config import Settings
from linkpulse.dataflows.live_metrics import FlowOptions, build_flow
from linkpulse.store.migrate import migrate
from tests.fix_db import fresh_database
from tests.test_dataflow_helpers import TEST_METRICS, build_event_set, publish_set, windows_table

pytestmark = pytest.mark.integration


@pytest.fixture
def other_dsn() -> Iterator[str]:
    with fresh_database("w2_") as dsn:
        yield dsn


async def test_two_workers_give_the_same_windows_as_one(
    nc: Client, nats_settings: Settings, pg_dsn: str, other_dsn: str, redis_prefix: str
) -> None:
    migrate(pg_dsn)
    migrate(other_dsn)
    events = build_event_set(nats_settings.subject_prefix, n=4000, seed=3)
    last = await publish_set(nc, nats_settings, events)
    opts = FlowOptions(metrics=TEST_METRICS, stop_at_seq=last, redis_key_prefix=redis_prefix)

    one = nats_settings.model_copy(update={"database_url": pg_dsn})
    await asyncio.to_thread(run_main, build_flow(one, opts))
    two = nats_settings.model_copy(update={"database_url": other_dsn})
    await asyncio.to_thread(cluster_main, build_flow(two, opts), [], 0, worker_count_per_proc=2)

    w1, w2 = windows_table(pg_dsn), windows_table(other_dsn)
    assert len(w1) > 100
    assert w2 == w1
