"""Shared helpers of the dataflow tests: a known event set, publishing, store queries."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from nats.aio.client import Client

from linkpulse.bus.stream import ensure_streams
from linkpulse.config import Settings
from linkpulse.operators import MetricsConfig

# Small config for tests: two windows keep the flow fast; same semantics.
TEST_METRICS = MetricsConfig(
    windows=("1m", "5m/10s"), dimension_windows=("1m",), emit_interval_s=1.0
)


@dataclass
class EventSet:
    """What was published: valid events by id, bad payloads, and the last sequence."""

    valid: dict[str, dict[str, object]] = field(default_factory=dict)
    bad: list[bytes] = field(default_factory=list)
    messages: list[tuple[str, bytes, str | None]] = field(default_factory=list)


def event(
    i: int, t: datetime, tenant: str, kind: str, seller: str, amount: float
) -> dict[str, object]:
    ev: dict[str, object] = {
        "type": kind,
        "event_id": f"ev-{i}",
        "event_time": t.isoformat().replace("+00:00", "Z"),
        "tenant": tenant,
        "user_id": f"u{i % 17}",
        "seller_id": seller,
        "amount": amount,
        "currency": "USD",
        "properties": {"order_id": f"o{i}"},
    }
    return ev


def build_event_set(prefix: str, n: int = 3000, seed: int = 7, late: int = 5) -> EventSet:
    """Orders and payments over ~4 minutes, shuffled locally, some late, duplicated, bad."""
    rng = random.Random(seed)
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
    out = EventSet()
    evs = []
    for i in range(n):
        t = base + timedelta(seconds=240 * i / n + rng.uniform(-3, 3))  # out of order by up to 6 s
        kind = "payment_settled" if i % 4 == 0 else "order_placed"
        evs.append(event(i, t, f"t{i % 3}", kind, f"s{i % 2}", round(rng.uniform(1, 100), 2)))
    # Late: ~3 minutes behind the newest events (inside the revision horizon),
    # followed by more on-time events, so the watermark keeps moving after them.
    late_evs = [
        event(n + j, base + timedelta(seconds=20 + j), "t0", "order_placed", "s0", 10.0)
        for j in range(late)
    ]
    cut = max(0, len(evs) - n // 10)
    evs[cut:cut] = late_evs
    for ev in evs:
        subject = f"{prefix}.events.{ev['tenant']}.{ev['type']}"
        payload = json.dumps(ev).encode()
        out.valid[str(ev["event_id"])] = ev
        out.messages.append((subject, payload, str(ev["event_id"])))
        if rng.random() < 0.02:  # a producer retry: JetStream drops it by Nats-Msg-Id
            out.messages.append((subject, payload, str(ev["event_id"])))
        if rng.random() < 0.01:
            bad = rng.choice([b"{not json", b'{"type": "order_placed"}', b'{"type": "nope"}'])
            out.bad.append(bad)
            out.messages.append((f"{prefix}.events.t9.order_placed", bad, None))
    return out


async def publish_set(nc: Client, settings: Settings, events: EventSet) -> int:
    """Publish every message; returns the stream's last sequence."""
    js = nc.jetstream()
    await ensure_streams(js, settings)
    for subject, payload, msg_id in events.messages:
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        await js.publish_async(subject, payload, headers=headers, stream=settings.stream_name)
    await js.publish_async_completed()
    info = await js.stream_info(settings.stream_name)
    return int(info.state.last_seq)


def windows_table(dsn: str) -> dict[tuple[str, ...], tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            'SELECT tenant, metric, dims_key, "window", window_start::text, count, sum, value,'
            " revision, final FROM metric_windows"
        ).fetchall()
    return {tuple(map(str, r[:5])): tuple(r[5:]) for r in rows}


def group_by_minute(dsn: str) -> dict[tuple[str, str, str], tuple[int, float]]:
    """Orders per tenant and minute, and GMV, straight from the raw events."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT tenant, CASE type WHEN 'order_placed' THEN 'orders' ELSE 'gmv' END,"
            " date_trunc('minute', event_time)::text, count(*), sum(amount)::float8"
            " FROM events GROUP BY 1, 2, 3"
        ).fetchall()
    return {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}


def test_event_set_is_deterministic() -> None:
    a, b = build_event_set("p", n=100), build_event_set("p", n=100)
    assert [m[2] for m in a.messages] == [m[2] for m in b.messages]
    assert len(a.valid) == 105
