"""Bytewax sinks publishing to NATS: live window updates and dead letters.

``MetricUpdatesSink`` publishes every ``MetricWindow`` update on core NATS at
``metric_subject(prefix, metric, tenant, window)`` (``{prefix}.metrics.<metric>.
<tenant>.<window>``) for the SSE endpoints; it is a live feed, so a failed
publish is counted and skipped rather than stopping the flow (the store and
Redis hold the durable state, and the next update supersedes the missed one).

``DeadLetterNatsSink`` stores each dead letter on the durable dead-letter
stream (``{prefix}.deadletters.nats``), with ``Nats-Msg-Id`` naming its
events-stream sequence, so a replay inside the duplicate window is dropped by
JetStream; a failure there stops the flow (a restart resumes from the last
snapshot), because dead letters must not be lost.

>>> MetricUpdatesSink(Settings(subject_prefix="lp")).subject_for("gmv", "acme", "5m/10s")
'lp.metrics.gmv.acme.5m_10s'
"""

from __future__ import annotations

import asyncio

import msgspec
import nats.errors
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from nats.aio.client import Client

from linkpulse.bus.connection import connect_nats
from linkpulse.bus.stream import dead_letter_stream_name, ensure_streams
from linkpulse.bus.subjects import dead_letter_subject, metric_subject
from linkpulse.config import Settings
from linkpulse.dataflows._loop import LoopThread
from linkpulse.dataflows.decode import DEAD_LETTER_SOURCE
from linkpulse.dataflows.instrumentation import SINK_FAILURES, WINDOW_UPDATES, timed_sink
from linkpulse.errors import DataflowError
from linkpulse.logging import get_logger
from linkpulse.schemas.outputs import DeadLetter, MetricWindow

__all__ = ["DeadLetterNatsSink", "MetricUpdatesSink"]

log = get_logger(__name__)
_encoder = msgspec.json.Encoder()
_TIMEOUT_S = 10


class _MetricUpdatesPartition(StatelessSinkPartition[MetricWindow]):
    def __init__(self, settings: Settings, worker_index: int) -> None:
        self._prefix = settings.subject_prefix
        self._loop = LoopThread(f"metrics-out-{worker_index}")
        self._nc: Client = self._loop.run(
            connect_nats(settings, name=f"linkpulse-dataflow-metrics-{worker_index}"), _TIMEOUT_S
        )
        self._subjects: dict[tuple[str, str, str], str] = {}

    def _subject(self, w: MetricWindow) -> str:
        key = (w.metric, w.tenant, w.window)
        subject = self._subjects.get(key)
        if subject is None:
            subject = self._subjects[key] = metric_subject(self._prefix, *key)
        return subject

    async def _publish(self, messages: list[tuple[str, bytes]]) -> None:
        for subject, payload in messages:
            await self._nc.publish(subject, payload)
        await self._nc.flush(timeout=_TIMEOUT_S)

    def write_batch(self, items: list[MetricWindow]) -> None:
        if not items:
            return
        messages = [(self._subject(w), _encoder.encode(w)) for w in items]
        try:
            with timed_sink("nats_metrics", len(items)):
                self._loop.run(self._publish(messages), _TIMEOUT_S + 1)
        except (nats.errors.Error, OSError, TimeoutError) as e:
            SINK_FAILURES.labels("nats_metrics").inc()
            log.warning("metric updates not published", error=repr(e), count=len(items))
            return
        for w in items:
            WINDOW_UPDATES.labels(w.window).inc()

    def close(self) -> None:
        try:
            self._loop.run(self._nc.drain(), _TIMEOUT_S)
        except (nats.errors.Error, OSError, TimeoutError) as e:
            log.warning("closing the metrics publisher failed", error=repr(e))
        self._loop.stop()


class MetricUpdatesSink(DynamicSink[MetricWindow]):
    """Every window update to its NATS metric subject (core NATS, for SSE)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def subject_for(self, metric: str, tenant: str, window: str) -> str:
        """The subject a window update of this series is published on."""
        return metric_subject(self._settings.subject_prefix, metric, tenant, window)

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[MetricWindow]:
        return _MetricUpdatesPartition(self._settings, worker_index)


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, settings: Settings, worker_index: int) -> None:
        self._stream = dead_letter_stream_name(settings)
        self._subject = dead_letter_subject(settings.subject_prefix, DEAD_LETTER_SOURCE)
        self._events_stream = settings.stream_name
        self._loop = LoopThread(f"deadletters-out-{worker_index}")
        self._nc: Client = self._loop.run(self._connect(settings, worker_index), _TIMEOUT_S)

    @staticmethod
    async def _connect(settings: Settings, worker_index: int) -> Client:
        nc = await connect_nats(settings, name=f"linkpulse-dataflow-dlq-{worker_index}")
        await ensure_streams(nc.jetstream(), settings)
        return nc

    def _msg_id(self, letter: DeadLetter) -> str:
        # The message's place in the events stream names it: a replay is
        # dropped by JetStream, two bad messages with the same bytes are not.
        return f"dl-{self._events_stream}-{letter.sequence}"

    async def _publish(self, letters: list[DeadLetter]) -> None:
        js = self._nc.jetstream()
        acks = [
            await js.publish_async(
                self._subject,
                _encoder.encode(letter),
                headers={"Nats-Msg-Id": self._msg_id(letter)},
                stream=self._stream,
            )
            for letter in letters
        ]
        await asyncio.wait_for(asyncio.gather(*acks), _TIMEOUT_S)

    def write_batch(self, items: list[DeadLetter]) -> None:
        if not items:
            return
        with timed_sink("nats_dead_letters", len(items)):
            try:
                self._loop.run(self._publish(items), _TIMEOUT_S * 2)
            except (nats.errors.Error, OSError, TimeoutError) as e:
                msg = f"dead letters not stored on {self._subject}: {e!r}"
                raise DataflowError(msg) from e

    def close(self) -> None:
        try:
            self._loop.run(self._nc.drain(), _TIMEOUT_S)
        except (nats.errors.Error, OSError, TimeoutError) as e:
            log.warning("closing the dead-letter publisher failed", error=repr(e))
        self._loop.stop()


class DeadLetterNatsSink(DynamicSink[DeadLetter]):
    """Dead letters onto the durable dead-letter stream (``{prefix}.deadletters.nats``)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[DeadLetter]:
        return _DeadLetterPartition(self._settings, worker_index)
