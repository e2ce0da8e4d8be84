"""The live channels the API streams: window updates, anomalies, alerts.

Each channel is a subject family kept on a JetStream stream, so an SSE client
can resume from a stream sequence. The dataflow publishes window updates on
core NATS (``{prefix}.metrics.<metric>.<tenant>.<window>``); a JetStream
stream with short retention (``LINKPULSE_UPDATES_MAX_AGE_S``, default 15
minutes) captures those subjects, so nothing in the dataflow changes. The
anomalies (``{prefix}.anomalies.<tenant>``) and alerts
(``{prefix}.alerts.<tenant>``) subjects keep the events stream's retention.
Anomalies live on the scoring flow's ``<name>_SCORES`` stream (with the
forecasts): whichever process starts first creates it, with the configuration
of ``linkpulse.dataflows.score_sinks``. If another stream already holds a
channel's subjects, that stream is used as it is.

>>> [(c.kind, c.stream, c.subjects) for c in live_channels(Settings(stream_name="EV",
...     subject_prefix="lp"))]  # doctest: +NORMALIZE_WHITESPACE
[('metrics', 'EV_UPDATES', 'lp.metrics.>'), ('anomalies', 'EV_SCORES', 'lp.anomalies.>'),
 ('alerts', 'EV_ALERTS', 'lp.alerts.>')]
>>> tenant_of_subject("lp", "metrics", "lp.metrics.gmv.acme.5m_10s")
'acme'
>>> tenant_of_subject("lp", "anomalies", "lp.anomalies.acme")
'acme'
"""

from __future__ import annotations

from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from linkpulse.config import Settings
from linkpulse.errors import IngestError
from linkpulse.logging import get_logger

__all__ = [
    "KINDS",
    "Channel",
    "alert_subject",
    "anomaly_subject",
    "ensure_live_streams",
    "live_channels",
    "tenant_of_subject",
]

log = get_logger(__name__)
KINDS = ("metrics", "anomalies", "alerts")
# Which token after "{prefix}.{kind}." is the tenant: metrics put the metric first.
_TENANT_TOKEN = {"metrics": 1, "anomalies": 0, "alerts": 0}


@dataclass(frozen=True)
class Channel:
    """One live channel: its kind, the stream linkpulse makes for it, its subjects."""

    kind: str
    stream: str
    subjects: str
    max_age_s: float
    also: tuple[str, ...] = ()  # other subjects of the same stream (the scores' forecasts)


def live_channels(settings: Settings) -> tuple[Channel, ...]:
    """The three channels for these settings."""
    p, name = settings.subject_prefix, settings.stream_name
    return (
        Channel("metrics", f"{name}_UPDATES", f"{p}.metrics.>", settings.updates_max_age_s),
        Channel(
            "anomalies",
            f"{name}_SCORES",
            f"{p}.anomalies.>",
            settings.stream_max_age_s,
            also=(f"{p}.forecasts.>",),
        ),
        Channel("alerts", f"{name}_ALERTS", f"{p}.alerts.>", settings.stream_max_age_s),
    )


def anomaly_subject(prefix: str, tenant: str) -> str:
    """Where the scoring flow publishes a tenant's anomaly scores."""
    return f"{prefix}.anomalies.{tenant}"


def alert_subject(prefix: str, tenant: str) -> str:
    """Where alert state changes of a tenant are published."""
    return f"{prefix}.alerts.{tenant}"


def tenant_of_subject(prefix: str, kind: str, subject: str) -> str | None:
    """The tenant token of a channel subject, or None if the subject is not shaped right."""
    head = f"{prefix}.{kind}."
    if not subject.startswith(head):
        return None
    tokens = subject[len(head) :].split(".")
    index = _TENANT_TOKEN[kind]
    return tokens[index] if len(tokens) > index else None


async def _stream_holding(js: JetStreamContext, subject: str) -> str | None:
    try:
        return await js.find_stream_name_by_subject(subject)
    except nats.js.errors.NotFoundError:
        return None


async def ensure_live_streams(js: JetStreamContext, settings: Settings) -> dict[str, str]:
    """Make sure each channel's subjects are on a stream; return kind -> stream name."""
    found: dict[str, str] = {}
    for ch in live_channels(settings):
        probe = ch.subjects.replace(">", "probe")
        try:
            name = await _stream_holding(js, probe)
            if name is None:
                await js.add_stream(
                    StreamConfig(
                        name=ch.stream,
                        description=f"linkpulse live {ch.kind}, kept for SSE resume",
                        subjects=[ch.subjects, *ch.also],
                        retention=RetentionPolicy.LIMITS,
                        storage=StorageType.FILE,
                        max_age=ch.max_age_s,
                        max_bytes=settings.stream_max_bytes,
                        duplicate_window=min(settings.stream_duplicate_window_s, ch.max_age_s),
                        discard=DiscardPolicy.OLD,
                    )
                )
                log.info("live stream created", stream=ch.stream, subjects=ch.subjects)
                name = ch.stream
        except (nats.errors.Error, TimeoutError) as e:
            msg = f"could not find or create the JetStream stream for {ch.subjects}: {e!r}"
            raise IngestError(msg) from e
        found[ch.kind] = name
    return found
