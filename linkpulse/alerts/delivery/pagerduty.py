"""PagerDuty Events API v2: one event per alert, on the alert's own ``dedup_key``.

``dedup_key`` is the incident's ``alert_id`` (``<fingerprint>-<epoch>``), the
same in the trigger, the acknowledge and the resolve, and the same when a
notification is re-sent after a crash, so PagerDuty keeps one incident per
alert. A firing alert is a ``trigger`` (with ``payload``: summary, source,
severity, component, group, class, custom details holding the explanation),
an acknowledged one an ``acknowledge``, a resolved one a ``resolve`` (those
two need only ``routing_key``, ``event_action`` and ``dedup_key``).

>>> from datetime import UTC, datetime
>>> t = datetime(2026, 11, 24, 10, 3, tzinfo=UTC)
>>> a = AlertChange(alert_id="f-1", fingerprint="f", rule="r", kind="threshold", tenant="acme",
...     series="acme|orders||1m", state=AlertState.FIRING, previous=AlertState.PENDING, at=t,
...     active_at=t, severity="critical", labels={"alertname": "r", "metric": "orders"})
>>> e = pagerduty_event(a, "KEY", "")
>>> e["event_action"], e["dedup_key"], e["payload"]["severity"], e["payload"]["source"]
('trigger', 'f-1', 'critical', 'linkpulse/acme')
>>> sorted(pagerduty_event(a, "KEY", "", action="resolve"))
['dedup_key', 'event_action', 'routing_key']
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import msgspec

from linkpulse.alerts.delivery.base import Outgoing, post_json
from linkpulse.alerts.delivery.render import describe
from linkpulse.alerts.delivery.webhook import alert_json
from linkpulse.alerts.types import AlertChange, AlertState

__all__ = ["EVENTS_URL", "PagerDutyContactPoint", "action_of", "pagerduty_event"]

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SEVERITIES = ("critical", "error", "warning", "info")


def action_of(a: AlertChange) -> str:
    """The Events v2 action an alert's state calls for."""
    if a.state is AlertState.ACKNOWLEDGED:
        return "acknowledge"
    return "trigger" if a.is_active else "resolve"


def pagerduty_event(
    a: AlertChange, routing_key: str, link_base: str, *, action: str | None = None
) -> dict[str, Any]:
    """The Events v2 body for alert ``a`` (``action`` defaults to the state's)."""
    action = action or action_of(a)
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": a.alert_id,
    }
    if action != "trigger":
        return event
    d = describe(a, link_base)
    severity = a.severity if a.severity in SEVERITIES else "warning"
    summary = f"{d.what} — {d.where}: {d.value}"
    event.update(
        payload={
            "summary": summary[:1024],  # Events v2 caps the summary at 1024 characters
            "source": f"linkpulse/{a.tenant}",
            "severity": severity,
            "timestamp": (a.fired_at or a.at).isoformat(),
            "component": a.labels.get("metric", a.series),
            "group": a.tenant,
            "class": a.kind,
            "custom_details": {
                "explanation": d.explanation,
                "value": d.value,
                "where": d.where,
                "alert": alert_json(a, link_base),
            },
        },
        client="linkpulse",
        client_url=d.link,
        links=[{"href": d.link, "text": "alert in linkpulse"}],
    )
    return event


@dataclasses.dataclass
class PagerDutyContactPoint:
    """Send each alert of a notification as an Events v2 event to ``url``."""

    name: str
    routing_key: str
    url: str = EVENTS_URL
    link_base: str = ""

    @property
    def takes_acks(self) -> bool:
        """Acknowledgements in linkpulse become ``acknowledge`` events."""
        return True

    async def deliver(self, item: Outgoing, client: httpx.AsyncClient) -> None:
        """One POST per alert; a retry re-sends them all (PagerDuty dedups on dedup_key)."""
        for a in item.alerts:
            body = msgspec.json.encode(pagerduty_event(a, self.routing_key, self.link_base))
            await post_json(client, self.name, self.url, body, {})
