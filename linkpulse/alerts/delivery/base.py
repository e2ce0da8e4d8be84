"""What every contact point shares: the unit of delivery, its errors, and the retry schedule.

An ``Outgoing`` is one row of the notifier's outbox (table ``notifications``):
a ``Notification`` of the policy for one receiver, or the mirror of an
acknowledgement (``kind="ack"``, PagerDuty only). Its ``key`` is fixed when it
is queued, so every attempt, before and after a crash, carries the same
``Idempotency-Key`` (and the same PagerDuty ``dedup_key``s, which are the
alerts' ids).

A contact point either returns (the receiver took it) or raises
``DeliveryError``: ``retryable`` for what may pass later (a connection
refused, a timeout, 429, 5xx, an SMTP 4xx), not for what will fail the same
way every time (another 4xx, an SMTP 5xx, a payload the receiver rejects).
Alertmanager draws the same line (``notify/util.go``, ``Retrier.Check``).

>>> retryable_status(503), retryable_status(429), retryable_status(404)
(True, True, False)
>>> import random
>>> r = RetryPolicy(initial_s=1, max_s=8, multiplier=2, jitter=0.0)
>>> [r.delay(n, random.Random(1)) for n in range(1, 6)]
[1.0, 2.0, 4.0, 8.0, 8.0]
"""

from __future__ import annotations

import dataclasses
import random
from datetime import datetime
from typing import Literal, Protocol

import httpx
import msgspec

from linkpulse.alerts.policy import Notification
from linkpulse.alerts.types import AlertChange
from linkpulse.errors import AlertError

__all__ = [
    "ContactPoint",
    "DeliveryError",
    "Outgoing",
    "RetryPolicy",
    "check_response",
    "retryable_status",
]

Kind = Literal["notify", "ack"]


class Outgoing(msgspec.Struct, frozen=True, kw_only=True):
    """One notification queued for one receiver (the outbox row's payload)."""

    key: str
    receiver: str
    kind: Kind
    notification: Notification
    created_at: datetime

    @property
    def alerts(self) -> list[AlertChange]:
        """Every alert the notification is about, firing first."""
        return [*self.notification.firing, *self.notification.resolved]


class DeliveryError(AlertError):
    """A receiver did not take a notification; ``retryable`` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        self.retryable = retryable
        self.status = status
        super().__init__(message)


class ContactPoint(Protocol):
    """A way of telling someone: webhook, Slack, PagerDuty, email."""

    name: str

    @property
    def takes_acks(self) -> bool:
        """Whether acknowledgements are mirrored to it (PagerDuty's ``acknowledge``)."""
        ...

    async def deliver(self, item: Outgoing, client: httpx.AsyncClient) -> None:
        """Send ``item``; raise ``DeliveryError`` if the receiver did not take it."""
        ...


def retryable_status(status: int) -> bool:
    """429 and 5xx may pass later; any other refusal will not."""
    return status == 429 or 500 <= status <= 599


def check_response(resp: httpx.Response, receiver: str) -> None:
    """Raise ``DeliveryError`` for a non-2xx answer, with the start of its body."""
    if 200 <= resp.status_code < 300:
        return
    body = resp.text[:200].replace("\n", " ")
    msg = f"{receiver} answered {resp.status_code}: {body or '(no body)'}"
    raise DeliveryError(msg, retryable=retryable_status(resp.status_code), status=resp.status_code)


async def post_json(
    client: httpx.AsyncClient,
    receiver: str,
    url: str,
    content: bytes,
    headers: dict[str, str],
) -> httpx.Response:
    """POST a JSON body; a transport failure (refused, reset, timeout) is retryable."""
    try:
        resp = await client.post(
            url, content=content, headers={"Content-Type": "application/json", **headers}
        )
    except httpx.HTTPError as e:
        msg = f"{receiver}: could not reach {url}: {type(e).__name__}: {e}"
        raise DeliveryError(msg, retryable=True) from e
    check_response(resp, receiver)
    return resp


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, until a notification is ``max_age_s`` old.

    The n-th retry waits ``min(max_s, initial_s * multiplier**(n-1))``, spread by
    ``±jitter`` (a fraction) so receivers recovering from an outage are not hit
    by every notifier at once; ``rng`` is the caller's (seeded in tests).
    """

    initial_s: float = 1.0
    max_s: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_age_s: float = 3600.0
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("initial_s", "max_s", "max_age_s", "timeout_s"):
            if getattr(self, name) <= 0:
                msg = f"delivery.{name} must be > 0, got {getattr(self, name)}"
                raise ValueError(msg)
        if self.multiplier < 1:
            msg = f"delivery.multiplier must be >= 1, got {self.multiplier}"
            raise ValueError(msg)
        if not 0 <= self.jitter < 1:
            msg = f"delivery.jitter must be in [0, 1), got {self.jitter}"
            raise ValueError(msg)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after the ``attempt``-th failed attempt (1 = the first)."""
        base = float(min(self.max_s, self.initial_s * self.multiplier ** max(0, attempt - 1)))
        if self.jitter == 0:
            return base
        return base * (1 + rng.uniform(-self.jitter, self.jitter))
