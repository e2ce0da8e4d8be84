"""Slack incoming webhooks: one message per notification, in readable blocks.

Each alert is a section with what fired, where, its value against the
expected band, the detector's explanation, and a link to it in linkpulse.

>>> from datetime import UTC, datetime
>>> t = datetime(2026, 11, 24, 10, 3, tzinfo=UTC)
>>> a = AlertChange(alert_id="f-1", fingerprint="f", rule="r", kind="threshold", tenant="acme",
...     series="acme|orders||1m", state=AlertState.FIRING, previous=AlertState.PENDING, at=t,
...     active_at=t, value=12.0, upper=10.0, summary="Orders high", labels={"metric": "orders"})
>>> m = slack_message([a], [], "")
>>> m["text"]
'FIRING: Orders high'
>>> m["blocks"][1]["text"]["text"].splitlines()[0]
'*:red_circle: FIRING — Orders high*'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import httpx
import msgspec

from linkpulse.alerts.delivery.base import Outgoing, post_json
from linkpulse.alerts.delivery.render import describe
from linkpulse.alerts.types import AlertChange, AlertState

__all__ = ["SlackContactPoint", "slack_message"]

_EMOJI = {"FIRING": ":red_circle:", "ACKNOWLEDGED": ":large_yellow_circle:"}
_MAX_BLOCKS = 48  # Slack takes 50 blocks per message: header + sections + an overflow note


def _section(a: AlertChange, link_base: str) -> dict[str, Any]:
    d = describe(a, link_base)
    lines = [
        f"*{_EMOJI.get(d.status, ':white_check_mark:')} {d.status} — {d.what}*",
        f"*Where:* {d.where}",
        f"*Value:* {d.value}",
    ]
    if d.explanation:
        lines.append(f"*Why:* {d.explanation}")
    lines.append(f"<{d.link}|Open in linkpulse>")
    return {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:3000]}}


def slack_message(
    firing: Sequence[AlertChange], resolved: Sequence[AlertChange], link_base: str
) -> dict[str, Any]:
    """The incoming-webhook body: a plain ``text`` fallback and the blocks."""
    alerts = [*firing, *resolved]
    head = describe(alerts[0], link_base) if alerts else None
    status = "FIRING" if firing else "RESOLVED"
    if firing and all(a.state is AlertState.ACKNOWLEDGED for a in firing):
        status = "ACKNOWLEDGED"
    title = f"{status}: {head.what if head else 'no alerts'}"
    if len(alerts) > 1:
        title += f" (+{len(alerts) - 1} more)"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}}
    ]
    blocks += [_section(a, link_base) for a in alerts[:_MAX_BLOCKS]]
    if len(alerts) > _MAX_BLOCKS:
        more = len(alerts) - _MAX_BLOCKS
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"…and {more} more"}]}
        )
    return {"text": title, "blocks": blocks}


@dataclasses.dataclass
class SlackContactPoint:
    """POST the message to a Slack incoming-webhook ``url``."""

    name: str
    url: str
    link_base: str = ""

    @property
    def takes_acks(self) -> bool:
        """Slack hears about acks in the next group notification, not as a mirror."""
        return False

    async def deliver(self, item: Outgoing, client: httpx.AsyncClient) -> None:
        """POST once (Slack has no idempotency key: the header is sent for proxies' sake)."""
        n = item.notification
        body = msgspec.json.encode(slack_message(n.firing, n.resolved, self.link_base))
        await post_json(client, self.name, self.url, body, {"Idempotency-Key": item.key})
