"""Email over SMTP (aiosmtplib): plain text and HTML alternatives of one notification.

The ``Message-ID`` is made from the notification's key, so a mail re-sent
after a crash is recognisably the same mail. SMTP 4xx answers (and a server
that cannot be reached) are retried, 5xx are not.

>>> from datetime import UTC, datetime
>>> from linkpulse.alerts.types import AlertState
>>> t = datetime(2026, 11, 24, 10, 3, tzinfo=UTC)
>>> a = AlertChange(alert_id="f-1", fingerprint="f", rule="r", kind="threshold", tenant="acme",
...     series="acme|orders||1m", state=AlertState.FIRING, previous=AlertState.PENDING, at=t,
...     active_at=t, summary="Orders <high>", labels={"metric": "orders"})
>>> m = email_message([a], [], key="k1", sender="lp@x", to=["oncall@x"], link_base="")
>>> m["Subject"], m["Message-ID"]
('[linkpulse FIRING:1] Orders <high>', '<k1@linkpulse>')
>>> "Orders &lt;high&gt;" in m.get_body(("html",)).get_content()
True
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from email.message import EmailMessage

import aiosmtplib
import httpx

from linkpulse.alerts.delivery.base import DeliveryError, Outgoing
from linkpulse.alerts.delivery.render import describe
from linkpulse.alerts.types import AlertChange

__all__ = ["EmailContactPoint", "email_message"]


def email_message(
    firing: Sequence[AlertChange],
    resolved: Sequence[AlertChange],
    *,
    key: str,
    sender: str,
    to: Sequence[str],
    link_base: str,
) -> EmailMessage:
    """The mail for one notification."""
    alerts = [*firing, *resolved]
    described = [describe(a, link_base) for a in alerts]
    status = f"FIRING:{len(firing)}" if firing else f"RESOLVED:{len(resolved)}"
    head = described[0].what if described else "no alerts"
    msg = EmailMessage()
    msg["Subject"] = f"[linkpulse {status}] {head}"
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Message-ID"] = f"<{key}@linkpulse>"
    msg["X-Linkpulse-Idempotency-Key"] = key
    text = []
    rows = []
    for d in described:
        text.append(
            f"{d.status}: {d.what}\n  where: {d.where}\n  value: {d.value}\n"
            + (f"  why:   {d.explanation}\n" if d.explanation else "")
            + f"  link:  {d.link}\n"
        )
        e = html.escape
        rows.append(
            f"<tr><td><b>{e(d.status)}</b></td><td>{e(d.what)}</td><td>{e(d.where)}</td>"
            f"<td>{e(d.value)}</td><td>{e(d.explanation)}</td>"
            f'<td><a href="{e(d.link, quote=True)}">open</a></td></tr>'
        )
    msg.set_content("\n".join(text) or "no alerts\n")
    msg.add_alternative(
        "<html><body><table border='1' cellpadding='4'>"
        "<tr><th>status</th><th>what</th><th>where</th><th>value</th><th>why</th><th></th></tr>"
        + "".join(rows)
        + "</table></body></html>",
        subtype="html",
    )
    return msg


@dataclasses.dataclass
class EmailContactPoint:
    """Mail ``to`` through the SMTP server at ``host:port``."""

    name: str
    to: list[str]
    sender: str
    host: str = "127.0.0.1"
    port: int = 25
    username: str = ""
    password: str = ""
    starttls: bool = False
    link_base: str = ""
    timeout_s: float = 10.0

    @property
    def takes_acks(self) -> bool:
        """Mail hears about acks in the next group notification."""
        return False

    async def deliver(self, item: Outgoing, client: httpx.AsyncClient) -> None:
        """Send the mail once; ``DeliveryError`` says whether a retry may help."""
        n = item.notification
        msg = email_message(
            n.firing,
            n.resolved,
            key=item.key,
            sender=self.sender,
            to=self.to,
            link_base=self.link_base,
        )
        try:
            await aiosmtplib.send(
                msg,
                hostname=self.host,
                port=self.port,
                username=self.username or None,
                password=self.password or None,
                start_tls=self.starttls,
                timeout=self.timeout_s,
            )
        except aiosmtplib.SMTPResponseException as e:
            text = f"{self.name}: SMTP {e.code} {e.message}"
            raise DeliveryError(text, retryable=400 <= e.code < 500, status=e.code) from e
        except (aiosmtplib.SMTPException, OSError) as e:
            text = f"{self.name}: could not mail via {self.host}:{self.port}: {e}"
            raise DeliveryError(text, retryable=True) from e
