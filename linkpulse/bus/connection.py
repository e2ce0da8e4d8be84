"""Opening the NATS connection every linkpulse process uses.

The first connection attempt fails fast with an ``IngestError`` naming the
URL (a user should learn at once that NATS is not running); once connected,
the client reconnects forever, because a broker restart must not kill a
long-running API or dataflow.
"""

from __future__ import annotations

from typing import Any

import nats
import nats.errors
from nats.aio.client import Client

from linkpulse.config import Settings
from linkpulse.errors import IngestError
from linkpulse.logging import get_logger
from linkpulse.nats_auth import nats_py_auth

__all__ = ["connect_nats", "nats_servers"]

log = get_logger(__name__)


def nats_servers(settings: Settings) -> list[str]:
    """The server URLs of ``settings.nats_url`` (comma-separated for a cluster).

    >>> nats_servers(Settings(nats_url="nats://a:4222, nats://b:4222"))
    ['nats://a:4222', 'nats://b:4222']
    """
    return [url.strip() for url in settings.nats_url.split(",") if url.strip()]


async def connect_nats(
    settings: Settings, *, name: str = "linkpulse", connect_timeout: float = 2.0
) -> Client:
    """Connect to NATS or raise ``IngestError`` saying where and how to start it."""

    client: list[Client] = []  # set once connected, for the callbacks below
    first_errors: list[Exception] = []

    async def on_error(e: Exception) -> None:
        if not client:  # still connecting: the IngestError below reports it
            first_errors.append(e)
            return
        log.warning("nats error", error=repr(e))

    async def on_disconnect() -> None:
        # A close we asked for (drain/close) is routine; anything else is news.
        if client and (client[0].is_closed or client[0].is_draining):
            log.info("nats connection closed", url=settings.nats_url)
        else:
            log.warning("nats disconnected", url=settings.nats_url)

    async def on_reconnect() -> None:
        log.info("nats reconnected", url=settings.nats_url)

    options: dict[str, Any] = {
        "servers": nats_servers(settings),
        "name": name,
        "connect_timeout": connect_timeout,
        # Fail fast on the first attempt (see module docstring): one retry per
        # server, 0.2 s apart ...
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.2,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        # Credentials decoded from the URL (nats-py would send them encoded).
        **nats_py_auth(nats_servers(settings)),
    }
    try:
        nc = await nats.connect(**options)
    except (OSError, nats.errors.Error) as e:  # refused, DNS, timeout, no servers
        cause = first_errors[-1] if first_errors else e
        msg = (
            f"cannot reach NATS at {settings.nats_url}: {cause}; is it running? "
            "Start it with 'linkpulse up' or set LINKPULSE_NATS_URL"
        )
        raise IngestError(msg) from e
    client.append(nc)
    # ... then reconnect forever. nats-py reads these options at reconnect
    # time, and offers no separate setting for the first attempt.
    nc.options["allow_reconnect"] = True
    nc.options["max_reconnect_attempts"] = -1
    nc.options["reconnect_time_wait"] = 1
    return nc
