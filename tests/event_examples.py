"""One valid example event per type, as JSON-ready dicts, for tests to build on."""

from __future__ import annotations

import copy
from typing import Any

EVENT_TIME = "2026-11-24T10:00:00Z"

_MONEY = {"user_id": "u1", "seller_id": "s1", "amount": 25.5, "currency": "USD"}

_EXAMPLES: dict[str, dict[str, Any]] = {
    "user_signup": {"user_id": "u1", "properties": {"referrer": "ad"}},
    "page_view": {"user_id": "u1", "properties": {"page": "product"}},
    "listing_created": {"seller_id": "s1", "properties": {"listing_id": "l1"}},
    "order_placed": {**_MONEY, "properties": {"order_id": "o1"}},
    "payment_settled": {**_MONEY, "properties": {"order_id": "o1"}},
    "payment_failed": {**_MONEY, "properties": {"order_id": "o1", "reason": "declined"}},
    "refund_issued": {**_MONEY, "properties": {"order_id": "o1"}},
    "review_posted": {"user_id": "u1", "seller_id": "s1", "properties": {"rating": 4}},
    "wallet_connected": {"user_id": "u1", "properties": {"provider": "paypal"}},
}


def example(event_type: str, **overrides: Any) -> dict[str, Any]:
    """A valid event of ``event_type`` as a dict; ``overrides`` replace top-level fields."""
    ev: dict[str, Any] = {
        "type": event_type,
        "event_id": f"ev-{event_type}",
        "tenant": "acme",
        "event_time": EVENT_TIME,
        **copy.deepcopy(_EXAMPLES[event_type]),
    }
    ev.update(overrides)
    return ev


def all_examples() -> list[dict[str, Any]]:
    """One valid example of every event type."""
    return [example(t) for t in _EXAMPLES]
