"""A late event inside the revision horizon republishes its window with revision + 1."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main
from nats.aio.client import Client

from linkpulse.config import Settings
from linkpulse.dataflows.live_metrics import FlowOptions, build_flow
from linkpulse.dataflows.runner import prepare_recovery
from linkpulse.schemas.outputs import MetricWindow
from linkpulse.store.migrate import migrate
from tests.test_dataflow_helpers import (
    TEST_METRICS,
    build_event_set,
    event,
    publish_set,
    windows_table,
)

pytestmark = pytest.mark.integration


async def test_late_event_revises_the_window_on_nats_and_in_the_store(
    nc: Client, nats_settings: Settings, pg_dsn: str, redis_prefix: str, tmp_path: Path
) -> None:
    migrate(pg_dsn)
    settings = nats_settings.model_copy(update={"database_url": pg_dsn})
    events = build_event_set(settings.subject_prefix, n=1500, seed=5, late=0)
    last = await publish_set(nc, settings, events)
    prepare_recovery(tmp_path / "rec", 1)
    recovery = RecoveryConfig(str(tmp_path / "rec"))

    def run(stop: int) -> None:
        opts = FlowOptions(metrics=TEST_METRICS, stop_at_seq=stop, redis_key_prefix=redis_prefix)
        run_main(
            build_flow(settings, opts),
            epoch_interval=timedelta(milliseconds=200),
            recovery_config=recovery,
        )

    await asyncio.to_thread(run, last)
    first_minute = min(
        str(ev["event_time"])[:16] for ev in events.valid.values() if ev["tenant"] == "t1"
    )
    key = ("t1", "orders", "", "1m", f"{first_minute.replace('T', ' ')}:00+00")
    before = windows_table(pg_dsn)[key]
    assert before[3:] == (0, True)  # revision 0, final

    updates: list[MetricWindow] = []

    async def on_update(msg: object) -> None:
        updates.append(msgspec.json.decode(msg.data, type=MetricWindow))  # type: ignore[attr-defined]

    await nc.subscribe(f"{settings.subject_prefix}.metrics.orders.t1.1m", cb=on_update)
    late = event(99_999, events_time(first_minute), "t1", "order_placed", "s1", 5.0)
    # Updates are emitted at most once per emit interval (1 s) of stream time:
    # let the late event arrive a little later than that.
    await asyncio.sleep(TEST_METRICS.emit_interval_s * 1.2)
    js = nc.jetstream()
    ack = await js.publish(
        f"{settings.subject_prefix}.events.t1.order_placed",
        json.dumps(late).encode(),
        stream=settings.stream_name,
    )
    await asyncio.to_thread(run, ack.seq)  # resumes from the recovery store
    await nc.flush()
    await asyncio.sleep(0.3)

    after = windows_table(pg_dsn)[key]
    assert after[0] == before[0] + 1  # count corrected
    assert after[3:] == (1, True)  # revision 1, still final
    revised = [u for u in updates if u.dims_key == "" and u.revision == 1]
    assert len(revised) == 1
    assert revised[0].count == before[0] + 1 and revised[0].final


def events_time(minute: str) -> datetime:
    """Half past ``minute`` (``YYYY-MM-DDTHH:MM``), aware UTC."""
    return datetime.fromisoformat(minute + ":30+00:00")
