"""The publishing loop: pace the generator (or not), batch, send, report.

In live mode simulated time is the wall clock: each event waits until its
time has come and is stamped with ``now_getter()``. In backfill mode the
generator runs over its range as fast as the sink takes the events.

>>> import asyncio
>>> from datetime import UTC, datetime
>>> from linkpulse.simulator.sinks import NullSink
>>> plan = RunPlan(TrafficConfig(rate=20, duration=60,
...     start=datetime(2026, 11, 20, 12, tzinfo=UTC).timestamp()))
>>> summary = asyncio.run(run(plan, NullSink()))
>>> summary.events == sum(summary.counts.values()) > 0
True
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from linkpulse.schemas.events import BaseEvent
from linkpulse.simulator.anomalies import Anomaly, write_labels
from linkpulse.simulator.generator import TrafficConfig, generate
from linkpulse.simulator.model import build_marketplace
from linkpulse.simulator.sinks import EventSink


def utcnow() -> datetime:
    """The default clock: aware UTC now."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class RunPlan:
    """One simulation run: traffic, resolved anomalies, live or backfill, labels path."""

    traffic: TrafficConfig
    anomalies: tuple[Anomaly, ...] = ()
    live: bool = False
    labels_path: Path | None = None
    batch_size: int = 1000

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            msg = f"batch_size must be >= 1, got {self.batch_size}"
            raise ValueError(msg)


@dataclass
class RunSummary:
    """What a run did; ``rate`` is events per wall-clock second."""

    counts: Counter[str] = field(default_factory=Counter)
    events: int = 0
    wall_seconds: float = 0.0
    sim_start: float = 0.0
    sim_end: float = 0.0
    anomalies: tuple[Anomaly, ...] = ()
    labels_path: Path | None = None
    destination: str = ""
    interrupted: bool = False

    @property
    def rate(self) -> float:
        """Events per wall-clock second achieved."""
        return self.events / self.wall_seconds if self.wall_seconds > 0 else 0.0


def clip_anomalies(anomalies: tuple[Anomaly, ...], until: float) -> tuple[Anomaly, ...]:
    """The anomalies that began before ``until``, their windows cut at ``until``.

    >>> a = Anomaly("failure_spike", 100.0, 200.0, "acme", 0.3)
    >>> clip_anomalies((a,), 150.0)[0].end, clip_anomalies((a,), 50.0)
    (150.0, ())
    """
    return tuple(replace(a, end=min(a.end, until)) for a in anomalies if a.start < until)


async def run(
    plan: RunPlan,
    sink: EventSink,
    *,
    now_getter: Callable[[], datetime] = utcnow,
    stop: asyncio.Event | None = None,
    console: Console | None = None,
) -> RunSummary:
    """Run the plan into the sink; returns the summary. The sink is closed at the end.

    Setting ``stop`` (e.g. from a Ctrl-C handler) ends the run cleanly: the
    current batch is sent and the labels are cut at the time reached.
    """
    traffic = plan.traffic
    summary = RunSummary(
        sim_start=traffic.start,
        anomalies=plan.anomalies,
        labels_path=plan.labels_path,
        destination=sink.describe(),
    )
    stop = stop or asyncio.Event()
    if plan.labels_path is not None:
        # Written before the first event, so a detector started alongside can read it.
        write_labels(plan.labels_path, list(plan.anomalies))
    events = generate(traffic, build_marketplace(traffic.market), plan.anomalies)
    progress = _progress(console, traffic)
    task = progress.add_task("simulating", total=traffic.duration, events=0, rate=0.0)
    by_class: Counter[type[BaseEvent]] = Counter()
    batch: list[BaseEvent] = []
    sim_t = traffic.start
    t0 = time.perf_counter()

    async def flush() -> None:
        nonlocal batch
        if batch:
            await sink.send(batch)
            by_class.update(map(type, batch))  # type(ev) is ~10x cheaper than ev.type
            summary.events += len(batch)
            batch = []
        elapsed = time.perf_counter() - t0
        progress.update(
            task,
            completed=sim_t - traffic.start,
            events=summary.events,
            rate=summary.events / elapsed if elapsed > 0 else 0.0,
        )

    try:
        with progress, fewer_gc_passes():
            for ev in events:
                if stop.is_set():
                    summary.interrupted = True
                    break
                if plan.live:
                    ev = await _pace(ev, now_getter, stop, flush if batch else None)
                    if stop.is_set():
                        summary.interrupted = True
                        break
                    sim_t = ev.event_time.timestamp()
                batch.append(ev)
                if len(batch) >= plan.batch_size:
                    if not plan.live:
                        sim_t = ev.event_time.timestamp()
                    await flush()
                    # Yield to the loop so a Ctrl-C handler can run during long backfills.
                    await asyncio.sleep(0)
            if batch:
                sim_t = batch[-1].event_time.timestamp()
            if not summary.interrupted and math.isfinite(traffic.end):
                sim_t = traffic.end
            await flush()
    finally:
        await sink.close()
    summary.wall_seconds = time.perf_counter() - t0
    summary.counts.update({str(cls.__struct_config__.tag): n for cls, n in by_class.items()})
    summary.sim_end = sim_t
    if summary.interrupted:
        summary.anomalies = clip_anomalies(plan.anomalies, sim_t)
        if plan.labels_path is not None:
            write_labels(plan.labels_path, list(summary.anomalies))
    return summary


async def _pace(
    ev: BaseEvent,
    now_getter: Callable[[], datetime],
    stop: asyncio.Event,
    flush: Callable[[], object] | None,
) -> BaseEvent:
    """Wait until the event's simulated time has come; stamp it with the clock's now."""
    due = ev.event_time.timestamp()
    wait = due - now_getter().timestamp()
    if wait > 0:
        if flush is not None:
            # Send what is ready before sleeping, so live events are never held back.
            await flush()  # type: ignore[misc]
            wait = due - now_getter().timestamp()
        if wait > 0:
            try:
                await asyncio.wait_for(stop.wait(), timeout=wait)
            except TimeoutError:
                pass
    return msgspec.structs.replace(ev, event_time=now_getter())


# Generation allocates millions of small acyclic objects (events, their property dicts,
# schedule entries) and keeps ~100k of them pending; with the default gen-0 threshold
# (700) the cyclic GC re-scans them so often that it took half the CPU time.
_GC_GEN0_THRESHOLD = 100_000


@contextlib.contextmanager
def fewer_gc_passes() -> Iterator[None]:
    """Raise the gen-0 GC threshold for the run, and restore it after.

    >>> before = gc.get_threshold()
    >>> with fewer_gc_passes():
    ...     gc.get_threshold()[0] >= 100_000
    True
    >>> gc.get_threshold() == before
    True
    """
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], _GC_GEN0_THRESHOLD), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _progress(console: Console | None, traffic: TrafficConfig) -> Progress:
    """A rich progress bar over simulated time; disabled without a console."""
    span = (
        "{task.completed:,.0f}/{task.total:,.0f} sim s"
        if traffic.duration is not None
        else "{task.completed:,.0f} s (Ctrl-C stops)"
    )
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn(span),
        TextColumn("{task.fields[events]:,} events"),
        TextColumn("{task.fields[rate]:,.0f} ev/s"),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
        transient=False,
    )
