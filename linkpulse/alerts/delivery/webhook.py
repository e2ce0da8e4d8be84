"""Generic webhook: the notification as JSON, signed with HMAC-SHA256, with an ``Idempotency-Key``.

The body is the same shape for every notification (``kind`` "notify" or
"ack"); receivers dedup on ``Idempotency-Key`` (one per queued notification,
unchanged across retries and restarts). The signature header is
``X-Linkpulse-Signature: v1=<hex>``, the HMAC-SHA256 with the shared secret of
``<X-Linkpulse-Timestamp>.<body>``, so a receiver can refuse replays of old
bodies; ``verify_signature`` is the receiver's check.

>>> body = b'{"x":1}'
>>> sig = sign(b"s3cret", "1795514580", body)
>>> verify_signature(b"s3cret", "1795514580", body, sig)
True
>>> verify_signature(b"other", "1795514580", body, sig)
False
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import time
from typing import Any

import httpx
import msgspec

from linkpulse.alerts.delivery.base import Outgoing, post_json
from linkpulse.alerts.delivery.render import describe
from linkpulse.alerts.types import AlertChange

__all__ = ["WebhookContactPoint", "alert_json", "sign", "verify_signature", "webhook_body"]

SIGNATURE_HEADER = "X-Linkpulse-Signature"
TIMESTAMP_HEADER = "X-Linkpulse-Timestamp"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def verify_signature(secret: bytes, timestamp: str, body: bytes, header: str) -> bool:
    """Whether ``header`` is a valid signature of ``body`` (constant-time compare)."""
    return hmac.compare_digest(sign(secret, timestamp, body), header.strip())


def alert_json(a: AlertChange, link_base: str) -> dict[str, Any]:
    """One alert as the webhook (and PagerDuty's custom details) show it."""
    d = describe(a, link_base)
    return {
        "alert_id": a.alert_id,
        "fingerprint": a.fingerprint,
        "state": a.state.value,
        "rule": a.rule,
        "kind": a.kind,
        "severity": a.severity,
        "tenant": a.tenant,
        "series": a.series,
        "labels": a.labels,
        "summary": d.what,
        "where": d.where,
        "value": a.value,
        "observed": a.observed,
        "expected": a.expected,
        "lower": a.lower,
        "upper": a.upper,
        "value_text": d.value,
        "description": a.description,
        "explanation": a.explanation,
        "at": a.at.isoformat(),
        "active_at": a.active_at.isoformat(),
        "fired_at": a.fired_at.isoformat() if a.fired_at else None,
        "link": d.link,
    }


def webhook_body(item: Outgoing, link_base: str) -> dict[str, Any]:
    """The JSON document posted for ``item``."""
    n = item.notification
    return {
        "version": "1",
        "kind": item.kind,
        "idempotency_key": item.key,
        "receiver": item.receiver,
        "status": "firing" if n.firing else "resolved",
        "group_key": n.group_key,
        "group_labels": n.group_labels,
        "alerts": [alert_json(a, link_base) for a in item.alerts],
    }


@dataclasses.dataclass
class WebhookContactPoint:
    """POST the notification to ``url``, signed with ``secret`` when one is set."""

    name: str
    url: str
    secret: str = ""
    link_base: str = ""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    send_acks: bool = False

    @property
    def takes_acks(self) -> bool:
        """Only when asked (``send_acks: true``)."""
        return self.send_acks

    async def deliver(self, item: Outgoing, client: httpx.AsyncClient) -> None:
        """POST once; ``DeliveryError`` says whether a retry may help."""
        body = msgspec.json.encode(webhook_body(item, self.link_base))
        ts = str(int(time.time()))
        headers = {**self.headers, "Idempotency-Key": item.key, TIMESTAMP_HEADER: ts}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret.encode(), ts, body)
        await post_json(client, self.name, self.url, body, headers)
