"""The live-metrics dataflow: JetStream in, events and window updates out.

Run it with ``linkpulse run dataflow`` (or ``python -m bytewax.run
linkpulse.dataflows.live_metrics:flow``). Shapes, step by step, are in the
comment after each step. ``build_flow`` builds the core (decode,
pre-aggregate, windows) and then attaches *branches* to it (``branch.py``):
``MetricsBranch`` stores dead letters, raw events and windows; the scoring
branch (``scoring.py``) scores the final 1-minute windows. Source and
branches (with their sinks) are arguments, so a test runs any branch in
process on Bytewax's ``TestingSource``/``TestingSink``.

Exactly once *in effect*: the source re-reads from the sequence after the
last snapshot, every stateful step restores the state snapshotted at the same
epoch, and every sink writes idempotently, so a crash and restart end in the
same store as one clean run (see docs/dataflow.md).

Determinism is what makes the windows of a replay equal those of the first
run: the stateful steps see the stream in chunks cut by a rule of the stream
alone (``chunks``), their clock is the chunk's stream time, and series are
spread over a fixed number of routes (``ROUTES``), not over workers, so one
or many workers compute the same windows.

>>> from linkpulse.config import Settings
>>> build_flow(Settings(), FlowOptions(raw_events=False)).flow_id
'live_metrics'
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from linkpulse.config import Settings, get_settings
from linkpulse.dataflows import instrumentation as metrics
from linkpulse.dataflows.alerting import AlertingBranch, AlertingConfig, AlertingSinks
from linkpulse.dataflows.branch import Branch, Core, RouteTick, TimelineItem
from linkpulse.dataflows.chunks import Chunk
from linkpulse.dataflows.decode import decode_message, stream_time
from linkpulse.dataflows.jetstream_source import JetStreamSource
from linkpulse.dataflows.nats_sink import DeadLetterNatsSink, MetricUpdatesSink
from linkpulse.dataflows.redis_sink import RedisLatestSink
from linkpulse.dataflows.scoring import ScoringBranch, ScoringConfig, ScoringSinks
from linkpulse.dataflows.store_sink import PipelinedEventsSink, StoreSink, Writer
from linkpulse.operators import MetricsConfig, route, series_key, split_by_route
from linkpulse.operators.aggregator import WindowAggregator
from linkpulse.operators.pipeline import PreAggregator
from linkpulse.privacy import Pseudonymiser, pseudonymiser_for
from linkpulse.query.watermarks import WatermarkTarget
from linkpulse.schemas import BaseEvent
from linkpulse.schemas.outputs import DeadLetter, MetricWindow

__all__ = [
    "ROUTES",
    "FlowOptions",
    "MetricsBranch",
    "MetricsSinks",
    "build_flow",
    "default_branches",
    "window_route",
]  # and ``flow``, built on access

# Series are spread over this many keyed aggregators whatever the worker
# count; changing it re-routes series, so it is part of the recovery layout.
ROUTES = 16
_ROUTE_KEYS = [f"r{i:02d}" for i in range(ROUTES)]


def window_route(w: MetricWindow) -> str:
    """The route (windows step key) whose aggregator emits ``w``'s series.

    >>> from datetime import UTC, datetime
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> w = MetricWindow(metric="gmv", tenant="acme", dims_key="", dimensions={}, window="1m",
    ...     window_start=t, window_end=t, value=1.0)
    >>> window_route(w) in _ROUTE_KEYS
    True
    """
    return _ROUTE_KEYS[route(series_key(w.tenant, w.metric, w.dims_key), ROUTES)]


@dataclasses.dataclass(frozen=True)
class FlowOptions:
    """How to build the flow (beyond ``Settings``); the defaults are production's."""

    raw_events: bool = True
    start_seq: int = 1
    stop_at_seq: int | None = None
    filter_subjects: tuple[str, ...] | None = None
    batch_size: int = 1000
    redis_key_prefix: str = "linkpulse:"
    redis_ttl_s: int = 2 * 3600
    # Live updates twice a second: publish-to-tile p99 stays under 2 s on a
    # loaded 2-core machine (at 1 s it does not); finals are unaffected.
    metrics: MetricsConfig = dataclasses.field(
        default_factory=lambda: MetricsConfig(emit_interval_s=0.5)
    )
    # The scoring branch (anomaly scores and forecasts of the final 1m windows);
    # None leaves it out.
    scoring: ScoringConfig | None = dataclasses.field(default_factory=ScoringConfig)
    # The alerting branch (rules on windows and scores, after scoring); None leaves it out.
    alerting: AlertingConfig | None = None
    # Granularity of the stream clock the windows step hands to branches
    # (``RouteTick``): the finest window a branch steps on.
    tick_s: float = 60.0

    def __post_init__(self) -> None:
        if not (self.tick_s > 0 and math.isfinite(self.tick_s)):
            msg = f"tick_s must be a positive number of seconds, got {self.tick_s!r}"
            raise ValueError(msg)


class DecodedChunk(NamedTuple):
    """One chunk after validation: its events, its dead letters, and its clock."""

    part: str
    now_ns: int
    events: list[BaseEvent]
    letters: list[DeadLetter]


class RouteBatch(NamedTuple):
    """What one route's aggregator gets from one chunk."""

    partials: dict[Any, Any]
    max_event_time: float
    now_ns: int
    route: str = ""


def decode_chunk(chunk: Chunk, privacy: Pseudonymiser | None = None) -> DecodedChunk:
    """Split a chunk into valid events and dead letters (never raises on bad input).

    With ``privacy``, their PII fields are pseudonymised here, before any
    branch sees them (producers publishing to NATS send them raw).
    """
    events: list[BaseEvent] = []
    letters: list[DeadLetter] = []
    now = stream_time(chunk.now_ns)  # the chunk's clock, for the future-skew rule
    for msg in chunk.messages:
        out = decode_message(msg, now)
        if isinstance(out, DeadLetter):
            letters.append(out)
            metrics.DEAD_LETTERS.labels(out.field).inc()
        else:
            events.append(out)
    if privacy is not None:
        events, letters = privacy.events(events), privacy.letters(letters)
    return DecodedChunk(chunk.part, chunk.now_ns, events, letters)


class _Clock:
    """The injected ``now_getter``: the stream time of the chunk being processed."""

    def __init__(self) -> None:
        self.now = datetime.fromtimestamp(0, UTC)

    def set_ns(self, now_ns: int) -> None:
        self.now = datetime.fromtimestamp(now_ns / 1e9, UTC)

    def __call__(self) -> datetime:
        return self.now


class PreAggregateLogic(StatefulBatchLogic[DecodedChunk, tuple[str, RouteBatch], bytes]):
    """Per input partition: events -> pane partials split by route, plus the watermark."""

    def __init__(self, config: MetricsConfig, resume_state: bytes | None) -> None:
        self._clock = _Clock()
        self._pre = PreAggregator(dataclasses.replace(config, now_getter=self._clock), resume_state)
        # Until an event is seen the watermark is -inf, and a clock tick must not
        # reach the aggregators (they cannot place a pane at -inf).
        self._seen_events = math.isfinite(self._pre.watermark)

    def on_batch(self, values: list[DecodedChunk]) -> tuple[Iterable[tuple[str, RouteBatch]], bool]:
        out: list[tuple[str, RouteBatch]] = []
        for chunk in values:
            if not chunk.events and not self._seen_events:
                continue  # a clock tick before any event moves no watermark
            self._seen_events = True
            self._clock.set_ns(chunk.now_ns)
            batch = self._pre.process(chunk.events)
            if batch.late:
                metrics.LATE_EVENTS.inc(batch.late)
            # Every route hears every chunk, so every watermark and clock moves together.
            for key, partials in zip(
                _ROUTE_KEYS, split_by_route(batch.partials, ROUTES), strict=True
            ):
                out.append((key, RouteBatch(partials, batch.max_event_time, chunk.now_ns, key)))
        wm = self._pre.watermark
        if math.isfinite(wm):
            metrics.WATERMARK_DELAY.set(time.time() - wm)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return self._pre.snapshot()


class WindowLogic(StatefulBatchLogic[RouteBatch, TimelineItem, bytes]):
    """Per route: pane partials -> ``MetricWindow`` updates (live, final, revised) and ticks.

    After the windows a batch closed, a ``RouteTick`` says how far this route's
    watermark got (floored to ``tick_s``), once per new value, so branches can
    act on time passing without data (see ``branch.RouteTick``). The tick is
    derived from the restored watermark, so it needs no state of its own: a
    resumed route repeats its last tick, which means nothing new downstream.
    """

    def __init__(
        self, config: MetricsConfig, resume_state: bytes | None, *, tick_s: float = 60.0
    ) -> None:
        self._clock = _Clock()
        cfg = dataclasses.replace(config, now_getter=self._clock)
        self._agg: WindowAggregator = cfg.build_aggregator(resume_state)
        self._tick_s = tick_s
        self._route = ""
        self._last_tick = -math.inf

    def _tick(self, out: list[TimelineItem]) -> None:
        wm = self._agg.watermark
        if not math.isfinite(wm) or not self._route:
            return  # no event yet, or resumed and not yet told which route it is
        at = math.floor(wm / self._tick_s) * self._tick_s
        if at > self._last_tick:
            self._last_tick = at
            out.append(RouteTick(self._route, at))

    def on_batch(self, values: list[RouteBatch]) -> tuple[Iterable[TimelineItem], bool]:
        out: list[TimelineItem] = []
        for rb in values:
            self._route = rb.route
            self._clock.set_ns(rb.now_ns)
            out.extend(self._agg.add(rb.partials, rb.max_event_time))
            # after every chunk, not every call: how many chunks one call gets
            # depends on timing, and a late window must land on the same side
            # of the tick in every run
            self._tick(out)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[TimelineItem], bool]:
        # End of a bounded run: emit what is due by the last chunk's clock, but
        # do not force windows final (a later run may continue the stream).
        out: list[TimelineItem] = list(self._agg.tick())
        self._tick(out)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return self._agg.snapshot()


@dataclasses.dataclass(frozen=True)
class MetricsSinks:
    """Where the metrics branch writes; a ``None`` leaves that output out.

    ``from_settings`` gives production's; a test passes ``TestingSink``s.
    ``events_store`` gets ``(partition, [BaseEvent])`` items, the window sinks
    ``MetricWindow``s (``windows_store`` only final ones), the dead-letter
    sinks ``DeadLetter``s (``dead_letters_store`` one list per chunk).
    """

    dead_letters_store: Sink[Any] | None = None
    dead_letters_nats: Sink[Any] | None = None
    events_store: Sink[Any] | None = None
    windows_store: Sink[Any] | None = None
    windows_redis: Sink[Any] | None = None
    windows_nats: Sink[Any] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, options: FlowOptions, parts: Sequence[str]
    ) -> MetricsSinks:
        """Production's sinks: the store, Redis and NATS of ``settings``."""
        dsn = settings.database_url
        # Writers touch what they store for the query cache (linkpulse/query/watermarks.py).
        wm = WatermarkTarget.from_settings(settings, options.redis_key_prefix)
        writer = functools.partial(_store_writer, outage_s=settings.store_outage_s, watermarks=wm)
        return cls(
            dead_letters_store=StoreSink(dsn, "dead_letters", writer_factory=writer),
            dead_letters_nats=DeadLetterNatsSink(settings),
            events_store=(
                PipelinedEventsSink(
                    dsn,
                    list(parts),
                    outage_s=settings.store_outage_s,
                    log_level=settings.log_level,
                    log_json=settings.log_json,
                    watermarks=wm,
                )
                if options.raw_events
                else None
            ),
            windows_store=StoreSink(dsn, "metric_windows", writer_factory=writer),
            windows_redis=RedisLatestSink(
                settings.redis_url, key_prefix=options.redis_key_prefix, ttl_s=options.redis_ttl_s
            ),
            windows_nats=MetricUpdatesSink(settings),
        )


def _store_writer(
    dsn: str, *, outage_s: float, watermarks: WatermarkTarget | None = None
) -> Writer:
    from linkpulse.store.writer import EventWriter, retries_for  # the store loads on demand

    bumper = watermarks.bumper() if watermarks is not None else None
    return EventWriter(dsn, max_retries=retries_for(outage_s), watermarks=bumper)


@dataclasses.dataclass(frozen=True)
class MetricsBranch:
    """Dead letters, raw events and window updates to their sinks."""

    sinks: MetricsSinks
    name: str = "metrics"

    def attach(self, core: Core) -> None:
        s = self.sinks
        letters = op.filter_map("dead_letters", core.decoded, lambda d: d.letters or None)
        # list[DeadLetter], one per chunk that had any
        if s.dead_letters_store is not None:
            op.output("dead_letters_store", letters, s.dead_letters_store)
        if s.dead_letters_nats is not None:
            op.output(
                "dead_letters_nats", op.flat_map("dl_each", letters, _same), s.dead_letters_nats
            )
        if s.events_store is not None:
            events = op.filter_map(
                "events", core.decoded, lambda d: (d.part, d.events) if d.events else None
            )
            # (partition, list[BaseEvent]), one per chunk
            op.output("events_store", events, s.events_store)
        if s.windows_store is not None:
            closed = op.filter("closed_windows", core.updates, lambda w: w.final)
            # MetricWindow, final (closed, or revised by late data): the store keeps
            # closed windows; live values go to Redis and NATS only
            op.output("windows_store", closed, s.windows_store)
        if s.windows_redis is not None:
            op.output("windows_redis", core.updates, s.windows_redis)
        if s.windows_nats is not None:
            op.output("windows_nats", core.updates, s.windows_nats)


def default_branches(
    settings: Settings, options: FlowOptions, parts: Sequence[str]
) -> list[Branch]:
    """Production's branches for ``settings``: metrics, and scoring unless turned off."""
    branches: list[Branch] = [MetricsBranch(MetricsSinks.from_settings(settings, options, parts))]
    if options.scoring is not None:
        sinks = ScoringSinks.from_settings(
            settings, redis_key_prefix=options.redis_key_prefix, redis_ttl_s=options.redis_ttl_s
        )
        branches.append(ScoringBranch(options.scoring, sinks))
    if options.alerting is not None:
        branches.append(AlertingBranch(options.alerting, AlertingSinks.from_settings(settings)))
    return branches


def build_flow(
    settings: Settings,
    options: FlowOptions | None = None,
    *,
    source: Source[Chunk] | None = None,
    branches: Sequence[Branch] | None = None,
) -> Dataflow:
    """The live-metrics flow: the core, then each branch; nothing connects until it runs.

    ``settings`` is the one way configuration reaches the flow: the default
    ``source`` (JetStream) and ``branches`` (``default_branches``) are built
    from it. A test passes its own: a ``TestingSource`` of ``Chunk``s and
    branches whose sinks are ``TestingSink``s, and runs it with ``run_main``.
    """
    opts = options or FlowOptions()
    cfg = opts.metrics
    if source is None:
        source = JetStreamSource(
            settings,
            filter_subjects=list(opts.filter_subjects) if opts.filter_subjects else None,
            batch_size=opts.batch_size,
            start_seq=opts.start_seq,
            stop_at_seq=opts.stop_at_seq,
        )
    parts = tuple(source.list_parts()) if isinstance(source, FixedPartitionedSource) else ()
    if branches is None:
        branches = default_branches(settings, opts, parts)
    names = [b.name for b in branches]
    if len(set(names)) != len(names):
        msg = f"branch names must be distinct, got {names}"
        raise ValueError(msg)
    flow = Dataflow("live_metrics")
    chunks = op.input("jetstream", flow, source)
    # Chunk(part, now_ns, messages=[(payload, subject, seq, stream_ns)])
    privacy = pseudonymiser_for(settings)  # None: no PII field configured, no extra step
    decode = decode_chunk if privacy is None else functools.partial(decode_chunk, privacy=privacy)
    decoded = op.map("decode", chunks, decode)
    # DecodedChunk(part, now_ns, events, letters)
    by_part = op.key_on("by_partition", decoded, lambda d: d.part)
    # (partition, DecodedChunk)
    routed = op.stateful_batch("preaggregate", by_part, lambda s: PreAggregateLogic(cfg, s))
    # (partition, (route, RouteBatch))
    by_route = op.key_rm("by_route", routed)
    # (route, RouteBatch): already a keyed stream
    tick_s = opts.tick_s
    timeline = op.stateful_batch("windows", by_route, lambda s: WindowLogic(cfg, s, tick_s=tick_s))
    # (route, MetricWindow | RouteTick)
    updates = op.filter_map("updates", timeline, _window_only)
    # MetricWindow
    core = Core(flow, decoded, timeline, updates, tuple(_ROUTE_KEYS), window_route, parts)
    for branch in branches:
        branch.attach(core)
    return flow


def _window_only(item: tuple[str, TimelineItem]) -> MetricWindow | None:
    value = item[1]
    return value if isinstance(value, MetricWindow) else None


def _same(items: list[DeadLetter]) -> list[DeadLetter]:
    return items


def __getattr__(name: str) -> Any:
    # ``flow`` for ``python -m bytewax.run linkpulse.dataflows.live_metrics:flow``,
    # built on first access so importing this module reads no environment.
    if name == "flow":
        return build_flow(get_settings())
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
