"""The scoring sinks against real stores: plain PostgreSQL and TimescaleDB (the WASM lane).

Writes are idempotent: a replay changes nothing, a re-score (higher
revision) replaces its row and an older one never does; a newer forecast of
a window replaces the older; a day without a partition (plain tier) is made
on demand; on TimescaleDB ``forecasts`` is a hypertable like the others.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest

from linkpulse.dataflows.score_sinks import UpsertSink
from linkpulse.schemas.outputs import AnomalyScore, Explanation, Forecast, ForecastPoint
from linkpulse.store.migrate import migrate

pytestmark = [pytest.mark.integration]

T = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def score(minute: int, value: float, revision: int = 0, *, when: datetime = T) -> AnomalyScore:
    return AnomalyScore(
        series="acme|gmv||1m",
        time=when + timedelta(minutes=minute),
        score=0.5,
        raw=1.0,
        value=value,
        expected=10.0,
        lower=5.0,
        upper=15.0,
        direction="down",
        warm=True,
        model="ensemble",
        explanation="GMV below",
        details=Explanation(detector="seasonal"),
        revision=revision,
    )


def forecast(issued_minute: int, mean: float) -> Forecast:
    issued = T + timedelta(minutes=issued_minute)
    return Forecast(
        series="acme|gmv||1m",
        model="seasonal",
        issued_at=issued,
        step="1m",
        points=[
            ForecastPoint(
                time=T + timedelta(minutes=m),
                mean=mean,
                lower80=mean - 1,
                upper80=mean + 1,
                lower95=mean - 2,
                upper95=mean + 2,
            )
            for m in range(10, 13)
        ],
    )


def write(dsn: str, table: str, items: list[Any]) -> None:
    part = UpsertSink(dsn, table, outage_s=5).build("t", 0, 1)  # type: ignore[arg-type]
    try:
        part.write_batch(items)
    finally:
        part.close()


def check_idempotent_upserts(dsn: str) -> None:
    write(dsn, "anomaly_scores", [score(0, 1.0), score(1, 2.0)])
    write(dsn, "anomaly_scores", [score(0, 1.0), score(1, 2.0)])  # a replay
    write(dsn, "anomaly_scores", [score(1, 7.0, revision=2)])  # a re-score
    write(dsn, "anomaly_scores", [score(1, 2.0)])  # a stale replay of the first score
    # a day with no partition made ahead (a replayed day, long ago)
    write(dsn, "anomaly_scores", [score(0, 3.0, when=T - timedelta(days=40))])
    write(dsn, "forecasts", [forecast(9, 100.0)])
    write(dsn, "forecasts", [forecast(10, 200.0), forecast(8, 50.0)])  # newer wins, older not
    write(dsn, "forecasts", [forecast(9, 100.0)])  # a stale replay
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT time, details FROM anomaly_scores ORDER BY time").fetchall()
        got = [msgspec.convert(d, AnomalyScore) for _, d in rows]
        fc = conn.execute(
            "SELECT time, issued_at, mean, lower95, upper95, tenant, metric FROM forecasts"
            " ORDER BY time"
        ).fetchall()
    assert [(s.value, s.revision) for s in got] == [(3.0, 0), (1.0, 0), (7.0, 2)]
    assert got[2] == score(1, 7.0, revision=2)  # the whole score round-trips
    assert [r[2] for r in fc] == [200.0, 200.0, 200.0]
    assert {(r[1], r[5], r[6]) for r in fc} == {(T + timedelta(minutes=10), "acme", "gmv")}


def test_scores_and_forecasts_upsert_idempotently_on_plain_postgres(pg_dsn: str) -> None:
    migrate(pg_dsn, tier="plain")
    check_idempotent_upserts(pg_dsn)


@pytest.mark.timescale
def test_scores_and_forecasts_upsert_idempotently_on_timescaledb(timescale_dsn: str) -> None:
    migrate(timescale_dsn)
    with psycopg.connect(timescale_dsn) as conn:
        hypertables = {
            r[0]
            for r in conn.execute(
                "SELECT hypertable_name FROM timescaledb_information.hypertables"
            ).fetchall()
        }
    assert {"anomaly_scores", "forecasts"} <= hypertables
    check_idempotent_upserts(timescale_dsn)


def test_a_bad_table_or_budget_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="table"):
        UpsertSink("postgresql://x/y", "metric_windows")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outage_s"):
        UpsertSink("postgresql://x/y", "forecasts", outage_s=-1)
