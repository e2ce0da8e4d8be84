"""The alerting branch: alert rules evaluated inside the flow, as their own stateful step.

Wiring only; the rules and the state machine are ``linkpulse.alerts``'s
(``RuleEngine``). Shapes are in the comment after each step.

* **Inputs.** Final windows and the windows step's clock (``core.timeline``:
  ``MetricWindow | RouteTick``), and the scoring branch's anomaly scores (and
  forecasts) when it runs (``core.published["scores"]``/``["forecasts"]``); so
  attach this branch after the scoring branch.
* **Keyed by tenant**: a fixed number of alert routes (``ALERT_ROUTES``), each
  with one ``RuleEngine`` in its state, snapshotted with the flow's epochs; a
  tick goes to every alert route, tagged with the windows route it came from,
  so an absence or a stale series is judged on its own route's clock (which
  follows that series' windows in a fixed order: the same on every replay).
* **Reload.** The step consults a ``RuleSetHolder`` (SIGHUP or a file change;
  a bad file keeps the old rules) and hands the engine the new rules at its
  next batch; alerts of rules that are gone resolve.
* **Outputs**: every ``AlertChange`` to the ``alerts`` table (idempotent on
  (alert_id, at, state), a higher revision replaces the details) and to the
  durable alerts subject ``<prefix>.alerts.<tenant>`` (the stream the API's
  ``/v1/stream/alerts`` and the notifier read), with a ``Nats-Msg-Id`` so a
  replayed change is dropped by JetStream.

>>> alert_route("acme") == alert_route("acme")
True
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import bytewax.operators as op
import msgspec
import nats.errors
import psycopg
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from linkpulse.alerts.engine import EngineConfig, RuleEngine
from linkpulse.alerts.reload import RuleSetHolder
from linkpulse.alerts.types import AlertChange
from linkpulse.bus.connection import connect_nats
from linkpulse.bus.live import alert_subject, ensure_live_streams
from linkpulse.config import Settings
from linkpulse.dataflows._loop import LoopThread
from linkpulse.dataflows.branch import Core, RouteTick
from linkpulse.dataflows.instrumentation import timed_sink
from linkpulse.errors import DataflowError, StoreError
from linkpulse.logging import get_logger
from linkpulse.operators import route
from linkpulse.schemas.outputs import AnomalyScore, Forecast, MetricWindow

__all__ = [
    "ALERT_ROUTES",
    "AlertLogic",
    "AlertingBranch",
    "AlertingConfig",
    "AlertingSinks",
    "AlertsNatsSink",
    "AlertsStoreSink",
    "alert_msg_id",
    "alert_route",
    "alert_rows",
]

log = get_logger(__name__)
# Tenants are spread over this many alert routes whatever the worker count;
# changing it moves rule state between routes (part of the recovery layout).
ALERT_ROUTES = 16
_KEYS = tuple(f"a{i:02d}" for i in range(ALERT_ROUTES))
_TIMEOUT_S = 10
_encoder = msgspec.json.Encoder()

# (windows route or "", item)
Tagged = tuple[str, Any]


def alert_route(tenant: str) -> str:
    """The key of the alert route holding every rule state of ``tenant``."""
    return _KEYS[route(tenant, ALERT_ROUTES)]


@dataclasses.dataclass(frozen=True)
class AlertingConfig:
    """Which rule files, and the engine's horizons; ``holder`` is made from ``rules`` (checked)."""

    rules: tuple[Path, ...]
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    # How often the step looks at the rule files' modification times.
    poll_s: float = 5.0
    holder: RuleSetHolder = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # a bad rule file refuses the start here, naming file, line and field
        object.__setattr__(self, "holder", RuleSetHolder(self.rules))


class AlertLogic(StatefulBatchLogic[Tagged, AlertChange, bytes]):
    """One alert route: a ``RuleEngine`` over its tenants' series."""

    def __init__(self, config: AlertingConfig, resume_state: bytes | None) -> None:
        self._cfg = config
        self._holder = config.holder
        self._version = self._holder.version
        self._engine = RuleEngine(self._holder.current, config.engine)
        if resume_state is not None and not self._engine.restore(resume_state):
            log.warning("alert state of an unknown version dropped: alerts start afresh")

    def on_batch(self, values: list[Tagged]) -> tuple[Iterable[AlertChange], bool]:
        out: list[AlertChange] = []
        rules = self._holder.refresh(self._cfg.poll_s)
        if self._holder.version != self._version:
            self._version = self._holder.version
            out.extend(self._engine.set_rules(rules))
        eng = self._engine
        for origin, item in values:
            if isinstance(item, MetricWindow):
                out.extend(eng.on_window(item, origin))
            elif isinstance(item, RouteTick):
                out.extend(eng.on_tick(item.at, item.route))
            elif isinstance(item, AnomalyScore):
                out.extend(eng.on_score(item))
            elif isinstance(item, Forecast):
                eng.on_forecast(item)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return self._engine.snapshot()


# -- sinks -------------------------------------------------------------------------------------

_INSERT = (
    "INSERT INTO alerts (alert_id, rule, series, state, at, tenant, details)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)"
    " ON CONFLICT (alert_id, at, state) DO UPDATE SET details = EXCLUDED.details"
    " WHERE COALESCE((alerts.details->>'revision')::int, 0)"
    " < (EXCLUDED.details->>'revision')::int"
)


def alert_rows(changes: Sequence[AlertChange]) -> list[tuple[Any, ...]]:
    """Rows of ``alerts``: one per (alert_id, at, state), the highest revision; details = JSON."""
    newest: dict[tuple[str, Any, str], AlertChange] = {}
    for c in changes:
        key = (c.alert_id, c.at, c.state.value)
        old = newest.get(key)
        if old is None or c.revision >= old.revision:
            newest[key] = c
    return [
        (c.alert_id, c.rule, c.series, c.state.value, c.at, c.tenant, _encoder.encode(c).decode())
        for c in newest.values()
    ]


def alert_msg_id(c: AlertChange) -> str:
    """The ``Nats-Msg-Id`` of a change: a replayed change is the same message."""
    return f"{c.alert_id}/{c.state.value}/{int(c.at.timestamp())}/{c.revision}"


class _StorePartition(StatelessSinkPartition[AlertChange]):
    def __init__(self, dsn: str, outage_s: float) -> None:
        from linkpulse.store.writer import retries_for  # the store loads on demand

        self._dsn = dsn
        self._retries = retries_for(outage_s)
        self._conn: psycopg.Connection[Any] | None = None

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        from linkpulse.store.partitions import insert_rows

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, connect_timeout=5)
        # plain tier: a day of the batch with no partition gets it made, once
        insert_rows(self._conn, "alerts", _INSERT, rows, {r[4].date() for r in rows})

    def write_batch(self, items: list[AlertChange]) -> None:
        from linkpulse.store.writer import backoff_s

        rows = alert_rows(items)
        if not rows:
            return
        with timed_sink("store_alerts", len(rows)):
            for attempt in range(1, self._retries + 2):
                try:
                    self._write(rows)
                    return
                except psycopg.OperationalError as e:
                    self.close()
                    if attempt > self._retries:
                        msg = f"writing {len(rows)} alert changes failed: {e}"
                        raise StoreError(msg) from e
                    time.sleep(backoff_s(attempt))
                except psycopg.Error as e:
                    self.close()
                    msg = f"writing {len(rows)} alert changes failed: {e}"
                    raise StoreError(msg) from e

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class AlertsStoreSink(DynamicSink[AlertChange]):
    """``AlertChange``s into the ``alerts`` table, idempotently (retried for ``outage_s``)."""

    def __init__(self, dsn: str, *, outage_s: float = 300.0) -> None:
        self._dsn = dsn
        self._outage_s = outage_s

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[AlertChange]:
        return _StorePartition(self._dsn, self._outage_s)


class _NatsPartition(StatelessSinkPartition[AlertChange]):
    def __init__(self, settings: Settings, worker_index: int) -> None:
        self._prefix = settings.subject_prefix
        self._loop = LoopThread(f"alerts-out-{worker_index}")
        self._nc, self._stream = self._loop.run(self._connect(settings, worker_index), _TIMEOUT_S)

    @staticmethod
    async def _connect(settings: Settings, worker_index: int) -> tuple[Any, str]:
        nc = await connect_nats(settings, name=f"linkpulse-dataflow-alerts-{worker_index}")
        streams = await ensure_live_streams(nc.jetstream(), settings)
        return nc, streams["alerts"]

    async def _publish(self, items: list[AlertChange]) -> None:
        js = self._nc.jetstream()
        acks = [
            await js.publish_async(
                alert_subject(self._prefix, c.tenant),
                _encoder.encode(c),
                headers={"Nats-Msg-Id": alert_msg_id(c)},
                stream=self._stream,
            )
            for c in items
        ]
        await asyncio.wait_for(asyncio.gather(*acks), _TIMEOUT_S)

    def write_batch(self, items: list[AlertChange]) -> None:
        if not items:
            return
        with timed_sink("nats_alerts", len(items)):
            try:
                self._loop.run(self._publish(items), _TIMEOUT_S * 2)
            except (nats.errors.Error, OSError, TimeoutError) as e:
                msg = f"{len(items)} alert changes not stored on stream {self._stream}: {e!r}"
                raise DataflowError(msg) from e

    def close(self) -> None:
        try:
            self._loop.run(self._nc.drain(), _TIMEOUT_S)
        except (nats.errors.Error, OSError, TimeoutError) as e:
            log.warning("closing the alerts publisher failed", error=repr(e))
        self._loop.stop()


class AlertsNatsSink(DynamicSink[AlertChange]):
    """``AlertChange``s onto the durable alerts stream, ``<prefix>.alerts.<tenant>``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[AlertChange]:
        return _NatsPartition(self._settings, worker_index)


@dataclasses.dataclass(frozen=True)
class AlertingSinks:
    """Where alert changes go; a ``None`` leaves that output out."""

    store: Sink[Any] | None = None
    nats: Sink[Any] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AlertingSinks:
        """Production's: the ``alerts`` table and the alerts stream."""
        return cls(
            store=AlertsStoreSink(settings.database_url, outage_s=settings.store_outage_s),
            nats=AlertsNatsSink(settings),
        )


# -- the branch --------------------------------------------------------------------------------


def _spread_timeline(item: tuple[str, MetricWindow | RouteTick]) -> list[tuple[str, Tagged]]:
    origin, value = item
    if isinstance(value, RouteTick):
        return [(k, (origin, value)) for k in _KEYS]  # every alert route hears every clock
    return [(alert_route(value.tenant), (origin, value))]


def _key_score(item: AnomalyScore | Forecast) -> tuple[str, Tagged]:
    return alert_route(item.series.split("|", 1)[0]), ("", item)


@dataclasses.dataclass(frozen=True)
class AlertingBranch:
    """Final windows, scores and the clock -> ``AlertChange``s -> store and NATS."""

    config: AlertingConfig
    sinks: AlertingSinks
    name: str = "alerts"

    def attach(self, core: Core) -> None:
        holder = self.config.holder

        def wanted_item(kv: tuple[str, MetricWindow | RouteTick]) -> bool:
            # only final windows some rule reads (the rules in force: a reload counts)
            w = kv[1]
            if isinstance(w, RouteTick):
                return True
            return w.final and bool(holder.current.for_series(w.metric, w.window))

        wanted = op.filter("alerts_input", core.timeline, wanted_item)
        # (windows route, MetricWindow final | RouteTick)
        keyed = op.flat_map("alerts_by_tenant", wanted, _spread_timeline)
        # (alert route, (windows route, MetricWindow | RouteTick))
        inputs = [keyed]
        for name in ("scores", "forecasts"):
            stream = core.published.get(name)
            if stream is not None:
                inputs.append(op.map(f"alerts_{name}_by_tenant", stream, _key_score))
                # (alert route, ("", AnomalyScore | Forecast))
        merged = op.merge("alerts_inputs", *inputs) if len(inputs) > 1 else keyed
        cfg = self.config
        evaluated = op.stateful_batch("alerts", merged, lambda s: AlertLogic(cfg, s))
        # (alert route, AlertChange)
        changes = op.key_rm("alert_changes", evaluated)
        # AlertChange
        core.published["alerts"] = changes
        if self.sinks.store is not None:
            op.output("alerts_store", changes, self.sinks.store)
        if self.sinks.nats is not None:
            op.output("alerts_nats", changes, self.sinks.nats)
