"""The live-metrics dataflow: JetStream in, events and window updates out.

Run it with ``linkpulse run dataflow`` (or ``python -m bytewax.run
linkpulse.dataflows.live_metrics:flow``). Shapes, step by step, are in the
comment after each step. Exactly once *in effect*: the source re-reads from
the sequence after the last snapshot, both stateful steps restore the state
snapshotted at the same epoch, and every sink writes idempotently, so a crash
and restart end in the same store as one clean run (see docs/dataflow.md).

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
import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from linkpulse.config import Settings, get_settings
from linkpulse.dataflows import instrumentation as metrics
from linkpulse.dataflows.chunks import Chunk
from linkpulse.dataflows.decode import decode_message, stream_time
from linkpulse.dataflows.jetstream_source import JetStreamSource
from linkpulse.dataflows.nats_sink import DeadLetterNatsSink, MetricUpdatesSink
from linkpulse.dataflows.redis_sink import RedisLatestSink
from linkpulse.dataflows.store_sink import PipelinedEventsSink, StoreSink
from linkpulse.operators import MetricsConfig, split_by_route
from linkpulse.operators.aggregator import WindowAggregator
from linkpulse.operators.pipeline import PreAggregator
from linkpulse.schemas import BaseEvent
from linkpulse.schemas.outputs import DeadLetter, MetricWindow

__all__ = ["ROUTES", "FlowOptions", "build_flow"]  # and ``flow``, built on access

# Series are spread over this many keyed aggregators whatever the worker
# count; changing it re-routes series, so it is part of the recovery layout.
ROUTES = 16
_ROUTE_KEYS = [f"r{i:02d}" for i in range(ROUTES)]


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


def decode_chunk(chunk: Chunk) -> DecodedChunk:
    """Split a chunk into valid events and dead letters (never raises on bad input)."""
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
                out.append((key, RouteBatch(partials, batch.max_event_time, chunk.now_ns)))
        wm = self._pre.watermark
        if math.isfinite(wm):
            metrics.WATERMARK_DELAY.set(time.time() - wm)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return self._pre.snapshot()


class WindowLogic(StatefulBatchLogic[RouteBatch, MetricWindow, bytes]):
    """Per route: pane partials -> ``MetricWindow`` updates (live, final, revised)."""

    def __init__(self, config: MetricsConfig, resume_state: bytes | None) -> None:
        self._clock = _Clock()
        cfg = dataclasses.replace(config, now_getter=self._clock)
        self._agg: WindowAggregator = cfg.build_aggregator(resume_state)

    def on_batch(self, values: list[RouteBatch]) -> tuple[Iterable[MetricWindow], bool]:
        out: list[MetricWindow] = []
        for rb in values:
            self._clock.set_ns(rb.now_ns)
            out.extend(self._agg.add(rb.partials, rb.max_event_time))
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[MetricWindow], bool]:
        # End of a bounded run: emit what is due by the last chunk's clock, but
        # do not force windows final (a later run may continue the stream).
        return self._agg.tick(), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return self._agg.snapshot()


def build_flow(settings: Settings, options: FlowOptions | None = None) -> Dataflow:
    """The live-metrics flow for ``settings``; nothing connects until it runs."""
    opts = options or FlowOptions()
    cfg = opts.metrics
    dsn = settings.database_url
    source = JetStreamSource(
        settings,
        filter_subjects=list(opts.filter_subjects) if opts.filter_subjects else None,
        batch_size=opts.batch_size,
        start_seq=opts.start_seq,
        stop_at_seq=opts.stop_at_seq,
    )
    flow = Dataflow("live_metrics")
    chunks = op.input("jetstream", flow, source)
    # Chunk(part, now_ns, messages=[(payload, subject, seq, stream_ns)])
    decoded = op.map("decode", chunks, decode_chunk)
    # DecodedChunk(part, now_ns, events, letters)
    letters = op.filter_map("dead_letters", decoded, lambda d: d.letters or None)
    # list[DeadLetter], one per chunk that had any
    op.output("dead_letters_store", letters, StoreSink(dsn, "dead_letters"))
    op.output(
        "dead_letters_nats", op.flat_map("dl_each", letters, _same), DeadLetterNatsSink(settings)
    )
    if opts.raw_events:
        events = op.filter_map(
            "events", decoded, lambda d: (d.part, d.events) if d.events else None
        )
        # (partition, list[BaseEvent]), one per chunk
        op.output("events_store", events, PipelinedEventsSink(dsn, source.list_parts()))
    by_part = op.key_on("by_partition", decoded, lambda d: d.part)
    # (partition, DecodedChunk)
    routed = op.stateful_batch("preaggregate", by_part, lambda s: PreAggregateLogic(cfg, s))
    # (partition, (route, RouteBatch))
    by_route = op.key_rm("by_route", routed)
    # (route, RouteBatch): already a keyed stream
    windows = op.stateful_batch("windows", by_route, lambda s: WindowLogic(cfg, s))
    # (route, MetricWindow)
    updates = op.key_rm("updates", windows)
    # MetricWindow
    closed = op.filter("closed_windows", updates, lambda w: w.final)
    # MetricWindow, final (closed, or revised by late data): the store keeps
    # closed windows; live values go to Redis and NATS only
    op.output("windows_store", closed, StoreSink(dsn, "metric_windows"))
    op.output(
        "windows_redis",
        updates,
        RedisLatestSink(
            settings.redis_url, key_prefix=opts.redis_key_prefix, ttl_s=opts.redis_ttl_s
        ),
    )
    op.output("windows_nats", updates, MetricUpdatesSink(settings))
    return flow


def _same(items: list[DeadLetter]) -> list[DeadLetter]:
    return items


def __getattr__(name: str) -> Any:
    # ``flow`` for ``python -m bytewax.run linkpulse.dataflows.live_metrics:flow``,
    # built on first access so importing this module reads no environment.
    if name == "flow":
        return build_flow(get_settings())
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
