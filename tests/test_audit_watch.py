"""The audit log's volumes scored like any other series: a key that suddenly reads far
more than it usually does raises an anomaly (pure scorer, then the watch on PostgreSQL)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg
import psycopg_pool
import pytest

from linkpulse.api.audit_watch import AuditWatch, Volume, VolumeScorer, volume_series
from linkpulse.config import Settings
from linkpulse.online_ml import PAGE_THRESHOLD
from linkpulse.schemas.outputs import AnomalyScore
from linkpulse.store.migrate import migrate

SEED = 20261201
T0 = datetime(2026, 11, 28, 0, 0, tzinfo=UTC)
KEY = "lp_0a1b2c3d"


def usual(rng: random.Random) -> Volume:
    """A dashboard key: a few requests a minute, a few hundred rows, no refusals."""
    requests = rng.randint(2, 6)
    return Volume("acme", KEY, requests, requests * rng.randint(80, 120), 0)


def test_a_key_reading_far_more_than_usual_raises_an_anomaly() -> None:
    rng = random.Random(SEED)
    scorer = VolumeScorer()
    minutes = 2 * 24 * 60
    calm: list[AnomalyScore] = []
    for i in range(minutes):
        calm += scorer.feed(T0 + timedelta(minutes=i), [usual(rng)])
    burst_at = T0 + timedelta(minutes=minutes)
    burst = scorer.feed(burst_at, [Volume("acme", KEY, 6, 40_000, 0)])  # 60x the rows
    by_series = {s.series: s for s in burst}
    items = by_series[volume_series("acme", "audit_items", KEY)]
    assert items.warm, f"seed {SEED}"
    assert items.score >= PAGE_THRESHOLD and items.direction == "up", (SEED, items)
    assert items.time == burst_at and items.value == 40_000
    # the usual traffic of the last day, once warm, does not page
    warm_calm = [s for s in calm if s.warm and s.time >= T0 + timedelta(days=1)]
    paged = [s for s in warm_calm if s.score >= PAGE_THRESHOLD]
    assert warm_calm and len(paged) <= 2, (SEED, [(s.series, s.time, s.score) for s in paged])


def test_absent_minutes_count_zero_and_silent_keys_are_forgotten() -> None:
    scorer = VolumeScorer()
    first = scorer.feed(T0, [Volume("acme", KEY, 1, 10, 1)])
    assert [s.value for s in first] == [1.0, 10.0, 1.0]
    second = scorer.feed(T0 + timedelta(minutes=1), [])  # nothing logged: zeros, not gaps
    assert [s.value for s in second] == [0.0, 0.0, 0.0]
    assert scorer.principals == 1
    assert scorer.feed(T0 + timedelta(days=3), []) == []  # silent over two days: forgotten
    assert scorer.principals == 0
    with pytest.raises(ValueError, match="is not after"):
        scorer.feed(T0, [])


@pytest.mark.integration
async def test_the_watch_scores_closed_minutes_of_the_audit_log(pg_dsn: str) -> None:
    migrate(pg_dsn)
    rng = random.Random(SEED)
    now = datetime.now(UTC).replace(second=30, microsecond=0)
    start = now.replace(second=0) - timedelta(days=2)
    rows = []
    for i in range(2 * 24 * 60 - 1):
        v = usual(rng)
        at = start + timedelta(minutes=i, seconds=1)
        rows += [(at, KEY, "viewer", "acme", "query.series", "ok", v.items // v.requests)] * (
            v.requests
        )
    last = now.replace(second=0) - timedelta(minutes=1)  # the last closed minute: a burst
    rows += [(last + timedelta(seconds=2), KEY, "viewer", "acme", "sql", "ok", 10_000)] * 4
    rows += [(last + timedelta(seconds=3), "anonymous", None, None, "sql", "refused", 0)]
    with psycopg.connect(pg_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO audit_log (at, principal, role, tenant, action, outcome, items)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            rows,
        )
    published: list[tuple[str, AnomalyScore, str]] = []

    async def publish(subject: str, payload: bytes, msg_id: str) -> None:
        published.append((subject, msgspec.json.decode(payload, type=AnomalyScore), msg_id))

    pool = psycopg_pool.AsyncConnectionPool(pg_dsn, min_size=1, open=False)
    await pool.open()
    try:
        watch = AuditWatch(Settings(database_url=pg_dsn), pool, publish, history=timedelta(days=2))
        written = await watch.step(now=now)
        assert written == 3 * 10  # three volumes, the replay's last ten minutes written
        assert await watch.step(now=now) == 0  # nothing new closed
    finally:
        await pool.close()
    series = volume_series("acme", "audit_items", KEY)
    with psycopg.connect(pg_dsn) as conn:
        stored = conn.execute(
            "SELECT time, score, tenant FROM anomaly_scores WHERE series = %s ORDER BY time",
            (series,),
        ).fetchall()
    assert len(stored) == 10 and {t for *_, t in stored} == {"acme"}
    assert stored[-1][0] == last and stored[-1][1] >= PAGE_THRESHOLD, (SEED, stored[-1])
    assert max(score for _, score, _ in stored[:-1]) < PAGE_THRESHOLD, SEED
    burst = [p for p in published if p[1].series == series and p[1].time == last]
    assert burst and burst[0][0].endswith(".anomalies.acme")
