"""Contact points and the delivery machinery of the notifier (``linkpulse run notifier``).

Webhook (signed JSON), Slack, PagerDuty Events v2, email; each takes an
``Outgoing`` (one queued notification) and either returns or raises
``DeliveryError`` saying whether a retry may help. See docs/notifications.md.
"""

from __future__ import annotations

from linkpulse.alerts.delivery.base import (
    ContactPoint,
    DeliveryError,
    Outgoing,
    RetryPolicy,
    retryable_status,
)
from linkpulse.alerts.delivery.config import NotifierConfig, load_config, load_config_file

__all__ = [
    "ContactPoint",
    "DeliveryError",
    "NotifierConfig",
    "Outgoing",
    "RetryPolicy",
    "load_config",
    "load_config_file",
    "retryable_status",
]
