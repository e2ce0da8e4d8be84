"""The notifier's tables (migration 0009) on both store lanes: plain PostgreSQL and the WASM
TimescaleDB. One connection at a time (the WASM server serves one)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from linkpulse.alerts.policy import Dispatcher, Silence, load_policy
from linkpulse.alerts.types import AlertState
from linkpulse.notifier import store
from linkpulse.notifier.service import ack_item, notify_item
from linkpulse.store.migrate import migrate
from tests.fix_notifier import change

pytestmark = pytest.mark.integration


async def test_state_outbox_silences_and_alert_rows_on_every_tier(lane_dsn: str) -> None:
    migrate(lane_dsn)
    policy = load_policy({"route": {"receiver": "pd", "group_wait": "0s"}})
    d = Dispatcher(policy)
    now = datetime(2026, 11, 24, 10, 5, tzinfo=UTC)
    firing = change()
    d.ingest(firing, now)
    (n,) = d.due(now)
    item = notify_item(n)
    async with await psycopg.AsyncConnection.connect(lane_dsn) as conn:
        assert await store.load_state(conn, "t") is None
        assert await store.queue(conn, "t", [item, item]) == 1  # a key is queued once
        d.delivered(n)
        await store.save_state(conn, "t", d.state)
        await conn.commit()
        restored = await store.load_state(conn, "t")
        assert restored is not None and list(restored.log) == list(d.state.log)
        pending = await store.next_pending(conn, "t", "pd")
        assert pending is not None and pending.item == item and pending.attempts == 0
        await store.mark_attempt(
            conn,
            item.key,
            status="pending",
            now=now,
            next_attempt_at=now + timedelta(seconds=2),
            error="503",
        )
        await store.mark_attempt(conn, item.key, status="delivered", now=now)
        assert await store.next_pending(conn, "t", "pd") is None
        acked = change(state=AlertState.ACKNOWLEDGED)
        ack = ack_item("pd", "0", n.group_key, acked)
        assert ack.key == ack_item("pd", "0", n.group_key, acked).key  # fixed by the alert
        await store.queue(conn, "t", [ack])
        await conn.commit()
        s = Silence(
            id="",
            matchers=['severity="warning"'],
            starts_at=now,
            ends_at=now + timedelta(hours=1),
            created_by="ops",
            comment="deploy",
        )
        row = await store.create_silence(conn, s, "acme")
        active = await store.list_silences(conn, active_at=now + timedelta(minutes=1))
        assert [r["id"] for r in active] == [row["id"]]
        assert store.silence_of(active[0]).mutes({"severity": "warning"}, now)
        gone = await store.expire_silence(conn, row["id"], now + timedelta(minutes=2))
        assert gone is not None and gone["ends_at"] == now + timedelta(minutes=2)
        assert await store.list_silences(conn, active_at=now + timedelta(minutes=3)) == []
        assert await store.expire_silence(conn, "nope", now) is None
        await conn.commit()
    with psycopg.connect(lane_dsn) as conn:
        store.insert_alert_change(conn, firing)
        store.insert_alert_change(conn, firing)  # a replay is stored once
        later = change(state=AlertState.ACKNOWLEDGED, at=datetime.now(UTC))
        store.insert_alert_change(conn, later)  # a day no partition was made for
        rows = conn.execute("SELECT state FROM alerts ORDER BY at").fetchall()
    assert [r[0] for r in rows] == ["firing", "acknowledged"]
