"""Sinks of the scoring branch: anomaly scores and forecasts to the store and to NATS.

Delivery is at least once (a resumed flow replays from its last snapshot), so
every write is idempotent:

* ``UpsertSink`` upserts ``anomaly_scores`` on (series, model, time), replacing
  a row only with a higher revision (a re-score of a revised window), and
  ``forecasts`` on (series, model, step, time), replacing only with a forecast
  issued no earlier. A partition missing on the plain-PostgreSQL tier (a
  replayed day, a forecast past the days made ahead) is made on demand; a store
  that does not answer is retried for the outage budget, then stops the flow.
* ``ScoresNatsSink`` publishes on the durable scores stream
  (``scores_stream_config``: ``{prefix}.anomalies.<tenant>`` and
  ``{prefix}.forecasts.<tenant>``) with a ``Nats-Msg-Id`` naming the item, so
  a replay inside the duplicate window is dropped by JetStream; a failure
  stops the flow (the API replays this stream, it must not have holes).

>>> scores_stream_config(Settings(stream_name="EV", subject_prefix="lp")).subjects
['lp.anomalies.>', 'lp.forecasts.>']
>>> UpsertSink("postgresql://postgres@127.0.0.1/test", "anomaly_scores").table
'anomaly_scores'
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any, Literal

import msgspec
import nats.errors
import nats.js.errors
import psycopg
import psycopg.errors
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from linkpulse.bus.connection import connect_nats
from linkpulse.bus.subjects import anomaly_subject, forecast_subject
from linkpulse.config import Settings
from linkpulse.dataflows._loop import LoopThread
from linkpulse.dataflows.instrumentation import timed_sink
from linkpulse.errors import DataflowError, StoreError
from linkpulse.logging import get_logger
from linkpulse.query.watermarks import WatermarkTarget
from linkpulse.schemas.outputs import AnomalyScore, Forecast

__all__ = [
    "ScoresNatsSink",
    "UpsertSink",
    "ensure_scores_stream",
    "score_msg_id",
    "scores_stream_config",
    "scores_stream_name",
]

log = get_logger(__name__)
_encoder = msgspec.json.Encoder()
_TIMEOUT_S = 10

Table = Literal["anomaly_scores", "forecasts"]

_UPSERT: dict[str, str] = {
    "anomaly_scores": (
        "INSERT INTO anomaly_scores (series, time, score, model, tenant, details)"
        " VALUES (%s, %s, %s, %s, %s, %s::jsonb)"
        " ON CONFLICT (series, model, time) DO UPDATE SET score = EXCLUDED.score,"
        " tenant = EXCLUDED.tenant, details = EXCLUDED.details"
        " WHERE COALESCE((anomaly_scores.details->>'revision')::int, 0)"
        " < (EXCLUDED.details->>'revision')::int"
    ),
    "forecasts": (
        "INSERT INTO forecasts (series, model, step, time, issued_at, tenant, metric,"
        " mean, lower80, upper80, lower95, upper95)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (series, model, step, time) DO UPDATE SET issued_at = EXCLUDED.issued_at,"
        " mean = EXCLUDED.mean, lower80 = EXCLUDED.lower80, upper80 = EXCLUDED.upper80,"
        " lower95 = EXCLUDED.lower95, upper95 = EXCLUDED.upper95"
        " WHERE forecasts.issued_at < EXCLUDED.issued_at"
    ),
}


def _tenant_metric(series: str) -> tuple[str, str]:
    parts = series.split("|")
    return parts[0], parts[1] if len(parts) > 1 else ""


def _json(item: Any) -> str:
    return _encoder.encode(item).decode()


def score_rows(scores: Sequence[AnomalyScore]) -> list[tuple[Any, ...]]:
    """Rows of ``anomaly_scores``: the newest revision per key; details hold the whole score."""
    newest: dict[tuple[str, str, Any], AnomalyScore] = {}
    for s in scores:
        key = (s.series, s.model, s.time)
        old = newest.get(key)
        if old is None or s.revision >= old.revision:
            newest[key] = s
    return [
        (s.series, s.time, s.score, s.model, _tenant_metric(s.series)[0], _json(s))
        for s in newest.values()
    ]


def forecast_rows(forecasts: Sequence[Forecast]) -> list[tuple[Any, ...]]:
    """Rows of ``forecasts``: one per point; the newest issue wins within a batch too."""
    newest: dict[tuple[str, str, str, Any], tuple[Any, ...]] = {}
    for f in sorted(forecasts, key=lambda f: f.issued_at):
        tenant, metric = _tenant_metric(f.series)
        for p in f.points:
            newest[(f.series, f.model, f.step, p.time)] = (
                f.series,
                f.model,
                f.step,
                p.time,
                f.issued_at,
                tenant,
                metric,
                p.mean,
                p.lower80,
                p.upper80,
                p.lower95,
                p.upper95,
            )
    return list(newest.values())


_ROWS: dict[str, tuple[Callable[[Sequence[Any]], list[tuple[Any, ...]]], int]] = {
    # table -> (rows of a batch, index of the partition column in a row)
    "anomaly_scores": (score_rows, 1),
    "forecasts": (forecast_rows, 3),
}
_TENANT_COL = {"anomaly_scores": 4, "forecasts": 5}  # for the query cache's watermarks


class _UpsertPartition(StatelessSinkPartition[Any]):
    def __init__(
        self, dsn: str, table: Table, outage_s: float, watermarks: WatermarkTarget | None = None
    ) -> None:
        from linkpulse.store.writer import retries_for  # the store loads on demand

        self._dsn = dsn
        self._table = table
        self._sql = _UPSERT[table]
        self._rows, self._time_col = _ROWS[table]
        self._retries = retries_for(outage_s)
        self._conn: psycopg.Connection[Any] | None = None
        self._bumper = watermarks.bumper() if watermarks is not None else None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, connect_timeout=5)
        return self._conn

    def _days(self, rows: list[tuple[Any, ...]]) -> set[date]:
        return {r[self._time_col].date() for r in rows}

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        from linkpulse.store.partitions import ensure_partitions

        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(self._sql, rows)
        except psycopg.errors.CheckViolation:
            # plain tier: no partition for some day of the batch; make it, once
            with conn.transaction():
                ensure_partitions(conn, self._table, self._days(rows))
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(self._sql, rows)

    def write_batch(self, items: list[Any]) -> None:
        from linkpulse.store.writer import backoff_s

        rows = self._rows(items)
        if not rows:
            return
        with timed_sink(f"store_{self._table}", len(rows)):
            for attempt in range(1, self._retries + 2):
                try:
                    self._write(rows)
                    if self._bumper is not None:  # after the commit; fire and forget
                        tenant, at = _TENANT_COL[self._table], self._time_col
                        self._bumper.touch_rows([self._table], rows, tenant=tenant, at=at)
                    return
                except psycopg.OperationalError as e:
                    self.close()
                    if attempt > self._retries:
                        msg = f"writing {len(rows)} rows to {self._table} failed: {e}"
                        raise StoreError(msg) from e
                    time.sleep(backoff_s(attempt))
                except psycopg.Error as e:
                    self.close()
                    msg = f"writing {len(rows)} rows to {self._table} failed: {e}"
                    raise StoreError(msg) from e

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._bumper is not None:
            self._bumper.close()


class UpsertSink(DynamicSink[Any]):
    """``AnomalyScore``s into ``anomaly_scores`` or ``Forecast``s into ``forecasts``, idempotently.

    ``outage_s`` is how long an unreachable store is retried before the flow stops;
    ``watermarks`` is where each write touches what it stored (the query cache).
    """

    def __init__(
        self,
        dsn: str,
        table: Table,
        *,
        outage_s: float = 300.0,
        watermarks: WatermarkTarget | None = None,
    ) -> None:
        if table not in _UPSERT:
            msg = f"table must be anomaly_scores or forecasts, got {table!r}"
            raise ValueError(msg)
        if not outage_s >= 0:
            msg = f"outage_s must be 0 or more seconds, got {outage_s!r}"
            raise ValueError(msg)
        self._dsn = dsn
        self.table: Table = table
        self._outage_s = outage_s
        self._watermarks = watermarks

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Any]:
        return _UpsertPartition(self._dsn, self.table, self._outage_s, self._watermarks)


def scores_stream_name(settings: Settings) -> str:
    """The scores stream's name: the events stream's name plus ``_SCORES``.

    >>> scores_stream_name(Settings(stream_name="EV"))
    'EV_SCORES'
    """
    return f"{settings.stream_name}_SCORES"


def scores_stream_config(settings: Settings) -> StreamConfig:
    """The durable stream of anomaly scores and forecasts (limits like the events stream)."""
    prefix = settings.subject_prefix
    return StreamConfig(
        name=scores_stream_name(settings),
        description="linkpulse anomaly scores and forecasts, per tenant",
        subjects=[f"{prefix}.anomalies.>", f"{prefix}.forecasts.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=settings.stream_max_age_s,
        max_bytes=settings.stream_max_bytes,
        duplicate_window=min(settings.stream_duplicate_window_s, settings.stream_max_age_s),
        discard=DiscardPolicy.OLD,
    )


async def ensure_scores_stream(js: JetStreamContext, settings: Settings) -> None:
    """Create the scores stream if missing, or bring its subjects and limits to the settings."""
    wanted = scores_stream_config(settings)
    try:
        try:
            info = await js.stream_info(wanted.name)  # type: ignore[arg-type]
        except nats.js.errors.NotFoundError:
            await js.add_stream(wanted)
            log.info("stream created", stream=wanted.name, subjects=wanted.subjects)
            return
        have = info.config
        if (have.subjects, have.max_age, have.max_bytes) != (
            wanted.subjects,
            wanted.max_age,
            wanted.max_bytes,
        ):
            await js.update_stream(
                have.evolve(
                    subjects=wanted.subjects, max_age=wanted.max_age, max_bytes=wanted.max_bytes
                )
            )
    except (nats.errors.Error, TimeoutError) as e:
        msg = f"could not create or update JetStream stream {wanted.name}: {e!r}"
        raise DataflowError(msg) from e


def score_msg_id(item: AnomalyScore | Forecast) -> str:
    """The ``Nats-Msg-Id`` of an item: a replay of it is the same message.

    >>> from datetime import UTC, datetime
    >>> f = Forecast(series="acme|gmv||1m", model="hw", step="1m", points=[],
    ...     issued_at=datetime(2026, 11, 24, 10, 0, tzinfo=UTC))
    >>> score_msg_id(f)
    'f|acme|gmv||1m|hw|1m|1795514400'
    """
    if isinstance(item, Forecast):
        return f"f|{item.series}|{item.model}|{item.step}|{int(item.issued_at.timestamp())}"
    return f"a|{item.series}|{item.model}|{int(item.time.timestamp())}|{item.revision}"


class _ScoresNatsPartition(StatelessSinkPartition[Any]):
    def __init__(self, settings: Settings, worker_index: int) -> None:
        self._prefix = settings.subject_prefix
        self._stream = scores_stream_name(settings)
        self._subjects: dict[tuple[bool, str], str] = {}
        self._loop = LoopThread(f"scores-out-{worker_index}")
        self._nc: Client = self._loop.run(self._connect(settings, worker_index), _TIMEOUT_S)

    @staticmethod
    async def _connect(settings: Settings, worker_index: int) -> Client:
        nc = await connect_nats(settings, name=f"linkpulse-dataflow-scores-{worker_index}")
        await ensure_scores_stream(nc.jetstream(), settings)
        return nc

    def _subject(self, item: AnomalyScore | Forecast) -> str:
        is_forecast = isinstance(item, Forecast)
        tenant = item.series.split("|", 1)[0]
        subject = self._subjects.get((is_forecast, tenant))
        if subject is None:
            make = forecast_subject if is_forecast else anomaly_subject
            subject = self._subjects[(is_forecast, tenant)] = make(self._prefix, tenant)
        return subject

    async def _publish(self, items: list[Any]) -> None:
        js = self._nc.jetstream()
        acks = [
            await js.publish_async(
                self._subject(item),
                _encoder.encode(item),
                headers={"Nats-Msg-Id": score_msg_id(item)},
                stream=self._stream,
            )
            for item in items
        ]
        await asyncio.wait_for(asyncio.gather(*acks), _TIMEOUT_S)

    def write_batch(self, items: list[Any]) -> None:
        if not items:
            return
        with timed_sink("nats_scores", len(items)):
            try:
                self._loop.run(self._publish(items), _TIMEOUT_S * 2)
            except (nats.errors.Error, OSError, TimeoutError) as e:
                msg = f"{len(items)} scores not stored on stream {self._stream}: {e!r}"
                raise DataflowError(msg) from e

    def close(self) -> None:
        try:
            self._loop.run(self._nc.drain(), _TIMEOUT_S)
        except (nats.errors.Error, OSError, TimeoutError) as e:
            log.warning("closing the scores publisher failed", error=repr(e))
        self._loop.stop()


class ScoresNatsSink(DynamicSink[Any]):
    """``AnomalyScore``s and ``Forecast``s onto the durable scores stream, per tenant."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Any]:
        return _ScoresNatsPartition(self._settings, worker_index)
