"""A seller principal receives its own anomalies and alerts, and never another seller's.

Anomaly scores and alerts name their series with the window series key
(``tenant|metric|dims_key|window``); reading it as a three-part key once gave
seller ``s1|1m``, so a seller saw none of its own scores. And the hub's
fan-out by filter key gives each client exactly what its filter matches; its
tick wakes due streams and cancels stuck sends. Pure: no service.
"""

from __future__ import annotations

import asyncio
import random
import time

import msgspec
import pytest

from linkpulse.api.auth.roles import Principal, Role
from linkpulse.api.hub import SEND_TIMEOUT_S, StreamHub
from linkpulse.api.stream_filter import StreamFilter, Update, parse_update, scoped_filter
from linkpulse.config import Settings


def _update(kind: str, series: str) -> bytes:
    return msgspec.json.encode({"series": series, "score": 0.999})


@pytest.mark.parametrize("kind", ["anomalies", "alerts"])
def test_a_seller_sees_its_own_series_and_not_another_sellers(kind: str) -> None:
    seller = Principal(id="lp_test", role=Role.SELLER, tenant="acme", seller="s1")
    flt = scoped_filter(seller, kind)
    own = parse_update(kind, "acme", 1, _update(kind, "acme|gmv|seller_id=s1|1m"))
    other = parse_update(kind, "acme", 2, _update(kind, "acme|gmv|seller_id=s2|1m"))
    tenant_wide = parse_update(kind, "acme", 3, _update(kind, "acme|gmv||1m"))
    assert flt.matches(own)
    assert not flt.matches(other)
    assert not flt.matches(tenant_wide)


def test_a_metric_filter_matches_tenant_level_scores() -> None:
    viewer = Principal(id="lp_view", role=Role.VIEWER, tenant="acme")
    flt = scoped_filter(viewer, "anomalies", metric="gmv")
    assert flt.matches(parse_update("anomalies", "acme", 1, _update("anomalies", "acme|gmv||1m")))
    assert not flt.matches(
        parse_update("anomalies", "acme", 2, _update("anomalies", "acme|orders||1m"))
    )


def test_the_hubs_filter_index_delivers_exactly_what_the_filters_match() -> None:
    """The hub finds an update's clients by filter key, not by testing each filter:
    the same clients as ``StreamFilter.matches`` over random filters and updates."""
    seed = random.randrange(2**32)
    rnd = random.Random(seed)
    hub = StreamHub(Settings(stream_queue_size=10_000), guard=None, redis=None)  # type: ignore[arg-type]
    tenants, sellers = ["acme", "beta"], ["s1", "s2", None]
    metrics, windows = ["gmv", "orders", None], ["1m", "5m", None]
    p = Principal(id="k", role=Role.ADMIN, tenant="acme")
    clients = [
        hub.register(
            p,
            StreamFilter(
                "metrics",
                rnd.choice([*tenants, None]),
                rnd.choice(sellers),
                rnd.choice(metrics),
                rnd.choice(windows),
            ),
        )
        for _ in range(200)
    ]
    for seq in range(1, 301):
        u = Update(
            seq,
            rnd.choice(tenants),
            rnd.choice(sellers),
            rnd.choice(metrics),
            rnd.choice(windows),
            b"{}",
        )
        hub.dispatch("metrics", u)
        hub.dispatch("anomalies", u)  # another channel's clients: none here
        for c in clients:
            got = [] if c.queue.empty() else [c.queue.get_nowait()]
            assert got == ([u] if c.filter.matches(u) else []), (seed, c.filter, u)
    for c in clients:
        hub.unregister(c)
    assert hub.stats()["clients"] == 0 and not hub._index["metrics"], seed


async def test_the_hub_tick_wakes_due_streams_and_cancels_stuck_sends() -> None:
    hub = StreamHub(Settings(), guard=None, redis=None)  # type: ignore[arg-type]
    p = Principal(id="k", role=Role.VIEWER, tenant="acme")
    due, idle, stuck = (hub.register(p, StreamFilter("alerts", "acme")) for _ in range(3))
    now = time.monotonic()
    due.due, idle.due = now - 1, now + 60
    stuck.send_since = now - SEND_TIMEOUT_S - 1
    stuck.sender = asyncio.create_task(asyncio.sleep(3600))
    waits = {c: asyncio.create_task(c.queue.wait()) for c in (due, idle)}
    await asyncio.sleep(0)
    hub.tick(now)
    await asyncio.sleep(0)
    assert waits[due].done() and not waits[idle].done()
    assert stuck.sender.cancelled() or stuck.sender.cancelling()
    assert hub.stats()["send_timeouts"] == 1
    waits[idle].cancel()
    await asyncio.gather(stuck.sender, waits[idle], return_exceptions=True)
