"""What a branch of the live-metrics flow gets: the core's streams, and the clock.

The flow has one core (decode, pre-aggregate, windows) and any number of
*branches* hanging off it: the metrics branch stores dead letters, raw events
and windows; the scoring branch scores the final 1-minute windows; alert rules
will be another. A branch is anything with ``attach(core)`` that adds steps and
outputs to ``core.flow``; it gets its sinks in its constructor, so a test can
give it Bytewax's ``TestingSink`` and run it in process (``run_main``).

``RouteTick`` is the stream's clock, for branches that must act on time passing
without data (the empty steps of the scoring branch): after the windows step of
a route has emitted every window final at watermark ``w``, it emits
``RouteTick(route, floor(w / tick_s) * tick_s)`` once per new value, on the
same keyed stream and after those windows, so a downstream step that sees the
tick from every route knows every window ending at or before it has arrived.

>>> RouteTick("r03", 120.0).at
120.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from bytewax.dataflow import Dataflow, Stream

from linkpulse.schemas.outputs import MetricWindow

__all__ = ["Branch", "Core", "RouteTick", "TimelineItem"]


class RouteTick(NamedTuple):
    """Every window of ``route`` ending at or before ``at`` (epoch seconds) was emitted."""

    route: str
    at: float


TimelineItem = MetricWindow | RouteTick


@dataclasses.dataclass(frozen=True)
class Core:
    """The streams of the flow's core, for branches to read (and to add to).

    ``timeline`` is the windows step's output, keyed by route: every window
    update and the ``RouteTick`` that follows the windows a watermark closed;
    ``updates`` is the same without the key and the ticks. ``routes`` names the
    windows step's routes (every one of them emits ticks), ``window_route``
    gives the route a window comes from, ``parts`` the
    source's partitions. ``published`` lets a branch hand a stream to the
    branches attached after it (scores to alert rules, say).
    """

    flow: Dataflow
    decoded: Stream[Any]
    timeline: Stream[tuple[str, TimelineItem]]
    updates: Stream[MetricWindow]
    routes: tuple[str, ...]
    window_route: Callable[[MetricWindow], str]
    parts: tuple[str, ...]
    published: dict[str, Stream[Any]] = dataclasses.field(default_factory=dict)


class Branch(Protocol):
    """A part of the flow downstream of the core; its sinks come in its constructor."""

    @property
    def name(self) -> str:
        """Names the branch (distinct per flow; its step ids start with it)."""
        ...

    def attach(self, core: Core) -> None:
        """Add this branch's steps and outputs to ``core.flow``."""
        ...
